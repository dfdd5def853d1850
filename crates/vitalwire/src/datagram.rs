//! Datagram mode: sessions over lossy links (UDP, BLE GATT) where packets may be lost,
//! duplicated or reordered (spec/PROTOCOL.md §13).
//!
//! ```text
//! HELLO      = 0x21 | sender_index u32 | HELLO body (§4.2)
//! RESPONSE   = 0x22 | sender_index u32 | receiver_index u32 | HANDSHAKE or REJECT body
//! FINISH     = 0x23 | receiver_index u32 | HANDSHAKE body (XX, XXpsk3 message 3)
//! TRANSPORT  = 0x24 | receiver_index u32 | counter u64 | AEAD(k_epoch, counter, ad = these 13
//!              bytes, kind | flags | channel | payload)
//! ```
//!
//! - Each transport packet carries its counter (the nonce) in the clear; the receiver keeps a
//!   sliding [`ReplayWindow`]: any order within the window, each counter once, and only an
//!   authenticated packet moves the window.
//! - Keys roll by epoch: the key for counter `c` is the `c / rekey_interval`-th `REKEY()` of
//!   the split key. A sender rekeys (by count, by time or on demand) by moving its counter to
//!   the next epoch; the receiver derives the new key when a packet of that epoch
//!   authenticates, and keeps the previous key for a grace period for packets still in flight.
//! - Handshake packets are retransmitted with exponential backoff until answered; duplicates
//!   are answered from a cache, never processed twice.
//! - Nothing a forged or stale packet does is fatal (§13.3): it is dropped with an event. In
//!   the handshake too: a RESPONSE or FINISH that fails authentication leaves the handshake
//!   as it was (the Noise state is rebuilt where snow cannot undo a failed read), a REJECT is
//!   only a hint until the deadline, and an XX message 2 refused after authenticating (a key
//!   that is not pinned) is undone.
//! - A refused XX device gets an authenticated CLOSE `UNAUTHORIZED` (the host's first
//!   transport packet), answered again to a repeated FINISH. Pairing works as over streams:
//!   both sides show the code and a pairing session carries no DATA.
//!
//! [`DatagramClient`] drives a device's side; [`DatagramHost`] serves many devices on one
//! socket, told apart by their session index, at O(log n) per packet and per timer. Both are
//! sans-IO: packets and the time in, packets, data and events out.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;

use bytes::{Buf, BufMut, BytesMut};
use sha2::{Digest, Sha256};

use crate::cipher::TransportCipher;
use crate::error::{DecodeError, DropReason, Error, HandshakeError, ProtocolError, RejectReason};
use crate::events::{
    Direction, EventKind, EventQueue, Limit, SecurityCounters, SecurityEvent, Timer, Timestamp,
};
use crate::frame::{CloseCode, FrameHeader, FrameKind, HEADER_LEN, PING_LEN, TAG_LEN};
use crate::handshake::{Handshake, InitiatorConfig, ResponderConfig, Role};
use crate::keys::{EntropySource, PublicKey};
use crate::pairing::PairingCode;
use crate::payload::DeviceIdentity;
use crate::replay::{ReplayVerdict, ReplayWindow, DEFAULT_WINDOW};
use crate::session::{Incoming, SessionSetup};
use crate::stream;
use crate::timers::{TimerConfig, TimerState};

/// Packet type: the initiator's HELLO.
pub const TYPE_HELLO: u8 = 0x21;
/// Packet type: the responder's answer (message 2 or REJECT).
pub const TYPE_RESPONSE: u8 = 0x22;
/// Packet type: XX/XXpsk3 message 3.
pub const TYPE_FINISH: u8 = 0x23;
/// Packet type: a transport packet.
pub const TYPE_TRANSPORT: u8 = 0x24;
/// Bytes of the cleartext transport header.
pub const TRANSPORT_HEADER_LEN: usize = 13;
/// Bytes a transport packet adds around its payload.
pub const TRANSPORT_OVERHEAD: usize = TRANSPORT_HEADER_LEN + HEADER_LEN + TAG_LEN;

/// A parsed datagram (its cleartext part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// The initiator's HELLO.
    Hello {
        /// The initiator's session index.
        sender: u32,
        /// The HELLO body of §4.2.
        body: &'a [u8],
    },
    /// The responder's answer.
    Response {
        /// The responder's session index (0 with a REJECT).
        sender: u32,
        /// The initiator's session index.
        receiver: u32,
        /// A HANDSHAKE or REJECT body.
        body: &'a [u8],
    },
    /// XX/XXpsk3 message 3.
    Finish {
        /// The responder's session index.
        receiver: u32,
        /// A HANDSHAKE body.
        body: &'a [u8],
    },
    /// A transport packet.
    Transport {
        /// The receiver's session index.
        receiver: u32,
        /// The counter (nonce).
        counter: u64,
    },
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl<'a> Packet<'a> {
    /// Parses the cleartext part of a datagram.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let short = |min| DecodeError::FrameTooShort { len: bytes.len(), min };
        match bytes.first() {
            None => Err(DecodeError::EmptyFrame),
            Some(&TYPE_HELLO) if bytes.len() > 5 => {
                Ok(Packet::Hello { sender: be32(&bytes[1..]), body: &bytes[5..] })
            }
            Some(&TYPE_RESPONSE) if bytes.len() > 9 => Ok(Packet::Response {
                sender: be32(&bytes[1..]),
                receiver: be32(&bytes[5..]),
                body: &bytes[9..],
            }),
            Some(&TYPE_FINISH) if bytes.len() > 5 => {
                Ok(Packet::Finish { receiver: be32(&bytes[1..]), body: &bytes[5..] })
            }
            Some(&TYPE_TRANSPORT) if bytes.len() >= TRANSPORT_OVERHEAD => {
                let counter = u64::from_be_bytes(bytes[5..13].try_into().map_err(|_| short(13))?);
                Ok(Packet::Transport { receiver: be32(&bytes[1..]), counter })
            }
            Some(&TYPE_HELLO | &TYPE_FINISH) => Err(short(6)),
            Some(&TYPE_RESPONSE) => Err(short(10)),
            Some(&TYPE_TRANSPORT) => Err(short(TRANSPORT_OVERHEAD)),
            Some(&other) => Err(DecodeError::UnknownHandshakeFrame(other)),
        }
    }
}

/// Settings of datagram mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramConfig {
    /// Replay window, in packets (rounded up to a multiple of 64).
    pub replay_window: u32,
    /// How long the previous receiving key is kept after a rekey.
    pub key_grace_ms: u64,
    /// How many epochs ahead a packet may be (bounds the work a forged counter causes).
    pub max_epoch_skip: u64,
    /// First handshake retransmission timeout.
    pub initial_rto_ms: u64,
    /// Largest handshake retransmission timeout (the backoff doubles up to it).
    pub max_rto_ms: u64,
    /// Time allowed for a handshake, retransmissions included.
    pub handshake_timeout_ms: u64,
    /// Session timers.
    pub timers: TimerConfig,
}

impl Default for DatagramConfig {
    fn default() -> Self {
        DatagramConfig {
            replay_window: DEFAULT_WINDOW,
            key_grace_ms: 5_000,
            max_epoch_skip: 64,
            initial_rto_ms: 500,
            max_rto_ms: 8_000,
            handshake_timeout_ms: 30_000,
            timers: TimerConfig::default(),
        }
    }
}

/// A packet to resend until something proves the peer got it.
#[derive(Debug, Clone)]
struct Retransmit {
    packet: Vec<u8>,
    at: Timestamp,
    rto: u64,
    give_up: Timestamp,
    due: bool,
}

impl Retransmit {
    fn new(packet: Vec<u8>, now: Timestamp, config: &DatagramConfig) -> Self {
        Retransmit {
            packet,
            at: Timestamp(now.0.saturating_add(config.initial_rto_ms)),
            rto: config.initial_rto_ms,
            give_up: Timestamp(now.0.saturating_add(config.handshake_timeout_ms)),
            due: false,
        }
    }

    /// Marks the packet due if its time has come and schedules the next try.
    fn tick(&mut self, now: Timestamp, max_rto: u64) {
        if now >= self.at {
            self.due = true;
            self.rto = self.rto.saturating_mul(2).min(max_rto);
            self.at = Timestamp(now.0.saturating_add(self.rto));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// This side closed.
    Closed,
    /// The peer's CLOSE arrived, with its code.
    ClosedByPeer(CloseCode),
    Failed(Error),
}

/// An established datagram-mode session.
pub struct DatagramSession {
    setup: SessionSetup,
    config: DatagramConfig,
    local_index: u32,
    remote_index: u32,
    interval: u64,
    tx: TransportCipher,
    tx_counter: u64,
    tx_epoch: u64,
    rx: TransportCipher,
    rx_epoch: u64,
    rx_prev: Option<(TransportCipher, Timestamp)>,
    replay: ReplayWindow,
    handshake_hash: [u8; 32],
    remote_static: PublicKey,
    events: EventQueue,
    state: State,
    timers: TimerState,
    pending_pong: Option<[u8; PING_LEN]>,
    pending_ping: bool,
    pending_close: Option<CloseCode>,
    /// XX initiator: FINISH, resent until the responder proves it has the session.
    unconfirmed: Option<Retransmit>,
    /// Responder: the digest of the HELLO it answered and the answer, for duplicates.
    response_cache: Option<([u8; 32], Vec<u8>)>,
    /// Whether `session_established` was reported: at an IK/KK responder only once the
    /// device's first packet authenticates (key confirmation, spec §4.8).
    established: bool,
    /// IK/KK responder: the handshake deadline, by which the device's first packet must have
    /// authenticated, or the session fails (spec §4.8).
    confirm_by: Option<Timestamp>,
    resend_response: bool,
    /// Digests of the peer's handshake packets this side accepted: the HELLO (responder) or
    /// the RESPONSE (initiator), and the FINISH (XX responder). A later handshake packet
    /// with another digest cannot be the peer's: it is forged (§13.3).
    accepted: [Option<[u8; 32]>; 2],
    packets_sent: u64,
    packets_received: u64,
}

impl core::fmt::Debug for DatagramSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DatagramSession")
            .field("role", &self.setup.role)
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("tx_epoch", &self.tx_epoch)
            .field("rx_epoch", &self.rx_epoch)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl DatagramSession {
    fn new(
        hs: Handshake,
        local_index: u32,
        remote_index: u32,
        config: DatagramConfig,
        now: Timestamp,
    ) -> Result<Self, Error> {
        let (setup, finished, events) = hs.into_parts()?;
        let mut timers = TimerState::new(config.timers);
        timers.start(now);
        Ok(DatagramSession {
            established: setup.confirmed(),
            confirm_by: None,
            interval: setup.rekey_interval as u64,
            setup,
            config,
            local_index,
            remote_index,
            tx: finished.tx,
            tx_counter: 0,
            tx_epoch: 0,
            rx: finished.rx,
            rx_epoch: 0,
            rx_prev: None,
            replay: ReplayWindow::new(config.replay_window),
            handshake_hash: finished.handshake_hash,
            remote_static: finished.remote_static,
            events,
            state: State::Open,
            timers,
            pending_pong: None,
            pending_ping: false,
            pending_close: None,
            unconfirmed: None,
            response_cache: None,
            resend_response: false,
            accepted: [None, None],
            packets_sent: 0,
            packets_received: 0,
        })
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.setup.role
    }
    /// This side's session index (the receiver index of packets addressed to it).
    pub fn local_index(&self) -> u32 {
        self.local_index
    }
    /// The peer's session index.
    pub fn remote_index(&self) -> u32 {
        self.remote_index
    }
    /// The peer's authenticated static key.
    pub fn remote_static(&self) -> &PublicKey {
        &self.remote_static
    }
    /// The Noise handshake hash.
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }
    /// The device's identity (host side).
    pub fn peer_identity(&self) -> Option<&DeviceIdentity> {
        self.setup.peer_identity.as_ref()
    }
    /// The sending key epoch.
    pub fn tx_epoch(&self) -> u64 {
        self.tx_epoch
    }
    /// The receiving key epoch.
    pub fn rx_epoch(&self) -> u64 {
        self.rx_epoch
    }
    /// In a pairing session: the 6-digit code to compare with the peer's display (§12.4).
    pub fn pairing_code(&self) -> Option<PairingCode> {
        self.setup.pairing_code
    }
    /// Whether this is a pairing session: it carries no DATA in either direction (§12.4).
    pub fn is_pairing(&self) -> bool {
        self.setup.pairing_code.is_some()
    }
    /// Packets sealed and packets opened.
    pub fn packet_counts(&self) -> (u64, u64) {
        (self.packets_sent, self.packets_received)
    }
    /// Largest DATA payload per packet the peer accepts.
    pub fn max_payload_len(&self) -> usize {
        (self.setup.peer_max_frame_len as usize).saturating_sub(TRANSPORT_OVERHEAD)
    }
    /// Whether the peer has proven it holds the session (XX initiator: an authenticated packet
    /// from the responder arrived). Until then, data may be lost if FINISH was.
    pub fn is_confirmed(&self) -> bool {
        self.unconfirmed.is_none()
    }
    /// Whether the peer has proven it holds the keys: at an IK/KK responder, once the device's
    /// first packet has authenticated (spec §4.8; until then the HELLO may have been a replay);
    /// always true elsewhere.
    pub fn is_key_confirmed(&self) -> bool {
        self.established
    }
    /// The error that ended the session, if any.
    pub fn error(&self) -> Option<Error> {
        match self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }
    /// The code of the peer's CLOSE, if the peer ended the session (a refused XX device
    /// learns `UNAUTHORIZED` this way, authenticated).
    pub fn closed_by_peer(&self) -> Option<CloseCode> {
        match self.state {
            State::ClosedByPeer(code) => Some(code),
            _ => None,
        }
    }
    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.state != State::Open
    }
    /// The next security event, stamped with `now`.
    pub fn poll_event(&mut self, now: Timestamp) -> Option<SecurityEvent> {
        self.events.poll(now)
    }
    /// Cumulative security counters.
    pub fn security_counters(&self) -> SecurityCounters {
        self.events.counters
    }

    fn fail(&mut self, e: Error) -> Error {
        if let State::Failed(first) = self.state {
            return first;
        }
        match e {
            Error::Protocol(error) => self.events.push(EventKind::ProtocolViolation { error }),
            Error::DeadPeer => self.events.push(EventKind::TimerExpired { timer: Timer::DeadPeer }),
            Error::SessionExpired => self.events.push(EventKind::TimerExpired { timer: Timer::Lifetime }),
            Error::NonceExhausted => {
                self.events.push(EventKind::LimitExceeded { limit: Limit::NonceExhausted })
            }
            Error::Handshake(HandshakeError::Timeout) => {
                self.events.push(EventKind::TimerExpired { timer: Timer::Handshake })
            }
            _ => {}
        }
        self.pending_close = e.close_code();
        self.state = State::Failed(e);
        e
    }

    fn drop_packet(&mut self, reason: DropReason) -> Error {
        match reason {
            DropReason::AuthenticationFailed => self.events.push(EventKind::AuthenticationFailure),
            DropReason::Replay => self.events.push(EventKind::ReplayRejected { duplicate: true }),
            DropReason::TooOld => self.events.push(EventKind::ReplayRejected { duplicate: false }),
            _ => {}
        }
        Error::Dropped(reason)
    }

    /// Seals a DATA packet into `out` (one datagram: send `out` as one packet).
    pub fn seal_data(
        &mut self,
        channel: u8,
        payload: &[u8],
        now: Timestamp,
        out: &mut BytesMut,
    ) -> Result<(), Error> {
        self.check_can_send()?;
        if self.is_pairing() {
            return Err(Error::PairingSession);
        }
        let max = self.max_payload_len();
        if payload.len() > max {
            self.events.push(EventKind::LimitExceeded { limit: Limit::PayloadTooLarge });
            return Err(Error::PayloadTooLarge { len: payload.len(), max });
        }
        self.seal(FrameHeader::new(FrameKind::DATA, channel), payload, now, out)
    }

    /// Seals a frame with an arbitrary header (reserved flags, DATA in a pairing session), to
    /// test how a peer handles authentic packets that break the rules.
    #[doc(hidden)]
    pub fn seal_raw_for_testing_only(
        &mut self,
        kind: u8,
        flags: u8,
        channel: u8,
        payload: &[u8],
        now: Timestamp,
        out: &mut BytesMut,
    ) -> Result<(), Error> {
        self.check_can_send()?;
        self.seal(FrameHeader { kind: FrameKind(kind), flags, channel }, payload, now, out)
    }

    /// Rolls the sending key now: the next packet starts a new epoch.
    pub fn rekey(&mut self) -> Result<(), Error> {
        self.check_can_send()?;
        self.jump_to_next_epoch()
    }

    /// Closes the session and seals a CLOSE packet into `out` (best effort on a lossy link).
    pub fn close(&mut self, code: CloseCode, now: Timestamp, out: &mut BytesMut) -> Result<(), Error> {
        self.check_can_send()?;
        self.seal(FrameHeader::new(FrameKind::CLOSE, 0), &code.0.to_be_bytes(), now, out)?;
        self.events.push(EventKind::SessionClosed { code, by_peer: false });
        self.state = State::Closed;
        Ok(())
    }

    fn check_can_send(&self) -> Result<(), Error> {
        match self.state {
            State::Open => Ok(()),
            State::Closed => Err(Error::Closed),
            State::ClosedByPeer(code) => Err(Error::ClosedByPeer(code)),
            State::Failed(e) => Err(e),
        }
    }

    fn jump_to_next_epoch(&mut self) -> Result<(), Error> {
        let next = (self.tx_epoch + 1).checked_mul(self.interval).filter(|c| *c < u64::MAX);
        match next {
            Some(c) if c > self.tx_counter => {
                self.tx_counter = c;
                Ok(())
            }
            Some(_) => Ok(()),
            None => Err(self.fail(Error::NonceExhausted)),
        }
    }

    fn seal(
        &mut self,
        header: FrameHeader,
        payload: &[u8],
        now: Timestamp,
        out: &mut BytesMut,
    ) -> Result<(), Error> {
        if self.tx_counter == u64::MAX {
            return Err(self.fail(Error::NonceExhausted));
        }
        let epoch = self.tx_counter / self.interval;
        while self.tx_epoch < epoch {
            self.tx.rekey();
            self.tx_epoch += 1;
            self.timers.rekeyed_at(now);
            self.events.push(EventKind::Rekeyed { direction: Direction::Outbound });
        }
        let start = out.len();
        out.reserve(TRANSPORT_OVERHEAD + payload.len());
        out.put_u8(TYPE_TRANSPORT);
        out.put_u32(self.remote_index);
        out.put_u64(self.tx_counter);
        out.put_slice(&header.encode());
        out.put_slice(payload);
        let (ad, body) = out[start..].split_at_mut(TRANSPORT_HEADER_LEN);
        let tag = self.tx.seal_at(self.tx_counter, ad, body);
        out.put_slice(&tag);
        self.tx_counter += 1;
        self.packets_sent += 1;
        self.timers.sent_at(now);
        Ok(())
    }

    /// Opens one transport packet (the whole datagram). Dropped packets return
    /// [`Error::Dropped`] and leave the session as it was.
    pub fn open(&mut self, mut packet: BytesMut, now: Timestamp) -> Result<Incoming, Error> {
        match self.state {
            State::Failed(e) => return Err(e),
            State::Closed => return Err(Error::Closed),
            State::ClosedByPeer(code) => return Err(Error::ClosedByPeer(code)),
            State::Open => {}
        }
        let (receiver, counter) = match Packet::decode(&packet) {
            Ok(Packet::Transport { receiver, counter }) => (receiver, counter),
            _ => return Err(self.drop_packet(DropReason::Malformed)),
        };
        if receiver != self.local_index {
            return Err(self.drop_packet(DropReason::UnknownIndex));
        }
        if counter == u64::MAX {
            return Err(self.drop_packet(DropReason::Malformed));
        }
        match self.replay.check(counter) {
            Ok(()) => {}
            Err(ReplayVerdict::Duplicate) => return Err(self.drop_packet(DropReason::Replay)),
            Err(ReplayVerdict::TooOld) => return Err(self.drop_packet(DropReason::TooOld)),
        }
        self.expire_previous_key(now);
        let epoch = counter / self.interval;
        // Pick the key of the packet's epoch; a later epoch's key is derived but only kept if
        // the packet authenticates.
        let mut advanced: Option<(TransportCipher, Option<TransportCipher>)> = None;
        let opened = {
            let (ad, body) = packet.split_at_mut(TRANSPORT_HEADER_LEN);
            if epoch == self.rx_epoch {
                self.rx.open_at(counter, ad, body)
            } else if epoch + 1 == self.rx_epoch {
                match &self.rx_prev {
                    Some((prev, _)) => prev.open_at(counter, ad, body),
                    None => return Err(self.drop_packet(DropReason::StaleKey)),
                }
            } else if epoch > self.rx_epoch && epoch - self.rx_epoch <= self.config.max_epoch_skip {
                let mut before = None;
                let mut k = self.rx.next_epoch();
                for _ in self.rx_epoch + 1..epoch {
                    let next = k.next_epoch();
                    before = Some(k);
                    k = next;
                }
                let r = k.open_at(counter, ad, body);
                advanced = Some((k, before));
                r
            } else {
                return Err(self.drop_packet(DropReason::StaleKey));
            }
        };
        let plain_len = match opened {
            Ok(n) => n,
            Err(_) => return Err(self.drop_packet(DropReason::AuthenticationFailed)),
        };
        // Authenticated: now, and only now, the window moves and keys advance.
        self.replay.accept(counter);
        if let Some((new_rx, before)) = advanced {
            let previous = before.unwrap_or_else(|| core::mem::replace(&mut self.rx, new_rx.next_epoch()));
            // `before` is the key of epoch-1 when we skipped; otherwise the old current key.
            self.rx = new_rx;
            self.rx_prev = Some((previous, Timestamp(now.0.saturating_add(self.config.key_grace_ms))));
            while self.rx_epoch < epoch {
                self.rx_epoch += 1;
                self.events.push(EventKind::Rekeyed { direction: Direction::Inbound });
            }
        }
        self.packets_received += 1;
        self.timers.received_at(now);
        self.unconfirmed = None;
        self.response_cache = None;
        if !core::mem::replace(&mut self.established, true) {
            self.events.push(self.setup.established_event());
        }
        packet.truncate(TRANSPORT_HEADER_LEN + plain_len);
        packet.advance(TRANSPORT_HEADER_LEN);
        let header = match FrameHeader::decode([packet[0], packet[1], packet[2]]) {
            Ok(h) => h,
            Err(e) => return Err(self.fail(e.into())),
        };
        packet.advance(HEADER_LEN);
        match header.kind {
            // §13.2: fragmentation happens below the datagram; a FRAGMENT flag ends the session.
            FrameKind::DATA if header.flags != 0 => {
                Err(self.fail(ProtocolError::ReservedFlags(header.flags).into()))
            }
            // §12.4: a pairing session carries no DATA.
            FrameKind::DATA if self.is_pairing() => {
                Err(self.fail(ProtocolError::DataInPairingSession.into()))
            }
            FrameKind::DATA => Ok(Incoming::Data { channel: header.channel, payload: packet.freeze() }),
            FrameKind::PING => match <[u8; PING_LEN]>::try_from(&packet[..]) {
                Ok(p) => {
                    self.pending_pong = Some(p);
                    Ok(Incoming::Ping)
                }
                Err(_) => Err(self.fail(ProtocolError::BadControlPayload(FrameKind::PING.0).into())),
            },
            FrameKind::PONG => match <[u8; PING_LEN]>::try_from(&packet[..]) {
                Ok(p) => Ok(Incoming::Pong(p)),
                Err(_) => Err(self.fail(ProtocolError::BadControlPayload(FrameKind::PONG.0).into())),
            },
            FrameKind::CLOSE => match <[u8; 2]>::try_from(&packet[..]) {
                Ok(c) => {
                    let code = CloseCode(u16::from_be_bytes(c));
                    self.events.push(EventKind::SessionClosed { code, by_peer: true });
                    self.state = State::ClosedByPeer(code);
                    Ok(Incoming::Closed(code))
                }
                Err(_) => Err(self.fail(ProtocolError::BadControlPayload(FrameKind::CLOSE.0).into())),
            },
            // Datagram mode rolls keys by epoch: an in-band REKEY frame has no meaning here.
            FrameKind::REKEY => Err(self.fail(ProtocolError::BadControlPayload(FrameKind::REKEY.0).into())),
            FrameKind(kind) => {
                self.events.push(EventKind::UnknownFrameKind { kind });
                Err(Error::UnknownFrameKind(kind))
            }
        }
    }

    fn expire_previous_key(&mut self, now: Timestamp) {
        if self.rx_prev.as_ref().is_some_and(|(_, until)| now >= *until) {
            self.rx_prev = None;
        }
    }

    /// When to call [`DatagramSession::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.state != State::Open {
            return None;
        }
        [
            self.timers.next_deadline(),
            self.confirm_by.filter(|_| !self.established),
            self.unconfirmed.as_ref().map(|r| r.at),
            self.rx_prev.as_ref().map(|p| p.1),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the timers: keepalive, dead peer, rekey by time, lifetime, the handshake
    /// retransmission of an unconfirmed session, and the expiry of the previous key.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Result<(), Error> {
        match self.state {
            State::Failed(e) => return Err(e),
            // An ended session has no timers (a late dead-peer timer must not replace the
            // peer's CLOSE code).
            State::Closed | State::ClosedByPeer(_) => return Ok(()),
            State::Open => {}
        }
        self.expire_previous_key(now);
        if !self.established && self.confirm_by.is_some_and(|d| now >= d) {
            // A replayed HELLO (or a device that never sent): never a session (spec §4.8).
            let e = Error::Handshake(HandshakeError::NotConfirmed);
            self.events.push(EventKind::TimerExpired { timer: Timer::Handshake });
            self.events.push(EventKind::HandshakeFailed { reason: e });
            return Err(self.fail(e));
        }
        if let Some(r) = &mut self.unconfirmed {
            if now >= r.give_up {
                return Err(self.fail(HandshakeError::Timeout.into()));
            }
            r.tick(now, self.config.max_rto_ms);
        }
        let actions = self.timers.check(now);
        if actions.expired {
            return Err(self.fail(Error::SessionExpired));
        }
        if actions.dead_peer {
            return Err(self.fail(Error::DeadPeer));
        }
        if actions.rekey && self.state == State::Open {
            self.jump_to_next_epoch()?;
        }
        if actions.keepalive {
            self.pending_ping = true;
        }
        Ok(())
    }

    /// Writes the next queued packet (a handshake retransmission, a CLOSE, a PONG, a
    /// keepalive PING) into `out`. Returns false when nothing is queued. Call it until false.
    pub fn poll_transmit(&mut self, now: Timestamp, out: &mut BytesMut) -> bool {
        if let Some(r) = &mut self.unconfirmed {
            if core::mem::take(&mut r.due) {
                out.extend_from_slice(&r.packet);
                return true;
            }
        }
        if core::mem::take(&mut self.resend_response) {
            if let Some((_, packet)) = &self.response_cache {
                out.extend_from_slice(packet);
                return true;
            }
        }
        if let Some(code) = self.pending_close.take() {
            if let State::Failed(_) = self.state {
                // Best effort: tell the peer why, if a nonce is left.
                return self
                    .seal(FrameHeader::new(FrameKind::CLOSE, 0), &code.0.to_be_bytes(), now, out)
                    .is_ok();
            }
        }
        if self.state != State::Open {
            return false;
        }
        if let Some(p) = self.pending_pong.take() {
            return self.seal(FrameHeader::new(FrameKind::PONG, 0), &p, now, out).is_ok();
        }
        if core::mem::take(&mut self.pending_ping) {
            let opaque = self.tx_counter.to_be_bytes();
            return self.seal(FrameHeader::new(FrameKind::PING, 0), &opaque, now, out).is_ok();
        }
        false
    }

    /// A handshake packet arrived after the session started. A duplicate of one this side
    /// accepted is answered again if the peer may not have our answer (the cached RESPONSE;
    /// a PING for a repeated FINISH) or dropped; any other one is forged: dropped with an
    /// `authentication_failure` event (§13.3).
    fn handle_duplicate_handshake(&mut self, digest: &[u8; 32]) -> Result<(), Error> {
        if self.response_cache.as_ref().is_some_and(|(d, _)| d == digest) {
            self.resend_response = true;
            return Ok(());
        }
        if self.accepted[1] == Some(*digest) && self.state == State::Open {
            // XX responder: a repeated FINISH; a PING proves we have the session.
            self.pending_ping = true;
            return Ok(());
        }
        if self.accepted[0] == Some(*digest) {
            return Err(Error::Dropped(DropReason::UnexpectedHandshake));
        }
        Err(self.drop_packet(DropReason::AuthenticationFailed))
    }
}

/// The responder's first transport packet when it refuses an XX/XXpsk3 device after message
/// 3 (§12.2, §13.3): a CLOSE with `code` sealed under its first sending key at counter 0.
pub(crate) fn seal_first_close(tx: &TransportCipher, receiver: u32, code: CloseCode) -> Vec<u8> {
    let mut packet = Vec::with_capacity(TRANSPORT_OVERHEAD + 2);
    packet.push(TYPE_TRANSPORT);
    packet.extend_from_slice(&receiver.to_be_bytes());
    packet.extend_from_slice(&0u64.to_be_bytes());
    packet.extend_from_slice(&FrameHeader::new(FrameKind::CLOSE, 0).encode());
    packet.extend_from_slice(&code.0.to_be_bytes());
    let (ad, body) = packet.split_at_mut(TRANSPORT_HEADER_LEN);
    let tag = tx.seal_at(0, ad, body);
    packet.extend_from_slice(&tag);
    packet
}

/// A HELLO the host refused: why, the REJECT packet to send back (if the refusal has a
/// reason to give), and the security events.
#[derive(Debug)]
pub struct RefusedHello {
    /// Why.
    pub error: Error,
    /// The RESPONSE packet carrying a REJECT.
    pub reject: Option<Vec<u8>>,
    /// The handshake's events, stamped.
    pub events: Vec<SecurityEvent>,
}

/// One side of a handshake over datagrams, with retransmission.
pub struct DatagramHandshake {
    hs: Handshake,
    config: DatagramConfig,
    local_index: u32,
    remote_index: Option<u32>,
    outbox: Option<Vec<u8>>,
    retransmit: Option<Retransmit>,
    deadline: Timestamp,
    /// Responder: digest of the HELLO answered.
    hello_digest: Option<[u8; 32]>,
    last_response: Option<Vec<u8>>,
    /// Initiator: the FINISH packet (XX), to keep resending after the handshake.
    finish: Option<Vec<u8>>,
    /// Digest of the peer's packet that completed this side's part (initiator: RESPONSE;
    /// XX responder: FINISH), so the session can tell its duplicates from forgeries.
    completing: Option<[u8; 32]>,
    /// Initiator: the reason of the last REJECT addressed to it, and how many arrived. A
    /// REJECT is unauthenticated, so it is only a hint until the deadline (§13.3).
    rejected: Option<(RejectReason, u64)>,
    /// Initiator (XX): why the last authenticated RESPONSE was refused (a host key that is
    /// not pinned, bad parameters); it may have been forged, so this too is a hint.
    refused_response: Option<Error>,
    /// Responder, XX device refused after FINISH: the FINISH's digest and the CLOSE
    /// UNAUTHORIZED packet, answered again to a repeated FINISH until the deadline.
    refusal: Option<([u8; 32], Vec<u8>)>,
}

impl core::fmt::Debug for DatagramHandshake {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DatagramHandshake")
            .field("handshake", &self.hs)
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .finish_non_exhaustive()
    }
}

fn digest(packet: &[u8]) -> [u8; 32] {
    Sha256::digest(packet).into()
}

/// Writes the handshake's next frame and returns its body (without the stream length prefix).
fn next_body(hs: &mut Handshake) -> Result<Vec<u8>, Error> {
    let mut buf = BytesMut::new();
    hs.write_message(&mut buf)?;
    buf.advance(stream::LENGTH_PREFIX_LEN);
    Ok(buf.to_vec())
}

impl DatagramHandshake {
    fn with(hs: Handshake, config: DatagramConfig, local_index: u32, now: Timestamp) -> Self {
        DatagramHandshake {
            hs,
            config,
            local_index,
            remote_index: None,
            outbox: None,
            retransmit: None,
            deadline: Timestamp(now.0.saturating_add(config.handshake_timeout_ms)),
            hello_digest: None,
            last_response: None,
            finish: None,
            completing: None,
            rejected: None,
            refused_response: None,
            refusal: None,
        }
    }

    /// Starts the device's side and queues its HELLO.
    pub fn initiator(
        config: InitiatorConfig,
        local_index: u32,
        dconfig: DatagramConfig,
        now: Timestamp,
    ) -> Result<Self, Error> {
        if local_index == 0 {
            return Err(Error::Config("a session index is never 0"));
        }
        let mut hs = Handshake::initiator(config)?.for_datagrams(0);
        let body = next_body(&mut hs)?;
        let mut packet = Vec::with_capacity(5 + body.len());
        packet.push(TYPE_HELLO);
        packet.extend_from_slice(&local_index.to_be_bytes());
        packet.extend_from_slice(&body);
        let mut h = Self::with(hs, dconfig, local_index, now);
        h.outbox = Some(packet.clone());
        h.retransmit = Some(Retransmit::new(packet, now, &dconfig));
        Ok(h)
    }

    /// Starts the host's side from a HELLO packet and queues the answer (message 2 or a
    /// REJECT). A refused HELLO still queues its REJECT and returns the error.
    pub fn responder(
        config: ResponderConfig,
        local_index: u32,
        dconfig: DatagramConfig,
        hello: &[u8],
        now: Timestamp,
    ) -> Result<Self, RefusedHello> {
        let refused = |error, reject, hs: Option<&mut Handshake>| {
            let events =
                hs.map(|hs| core::iter::from_fn(|| hs.poll_event(now)).collect()).unwrap_or_default();
            RefusedHello { error, reject, events }
        };
        let Ok(Packet::Hello { sender, body }) = Packet::decode(hello) else {
            return Err(refused(Error::Dropped(DropReason::Malformed), None, None));
        };
        if sender == 0 {
            return Err(refused(Error::Dropped(DropReason::Malformed), None, None));
        }
        let mut hs = Handshake::responder(config).map_err(|e| refused(e, None, None))?.for_datagrams(sender);
        let answer = |hs: &mut Handshake, index: u32| -> Option<Vec<u8>> {
            let body = next_body(hs).ok()?;
            let mut packet = Vec::with_capacity(9 + body.len());
            packet.push(TYPE_RESPONSE);
            packet.extend_from_slice(&index.to_be_bytes());
            packet.extend_from_slice(&sender.to_be_bytes());
            packet.extend_from_slice(&body);
            Some(packet)
        };
        if let Err(e) = hs.read_message(body) {
            let reject = if hs.wants_write() { answer(&mut hs, 0) } else { None };
            return Err(refused(e, reject, Some(&mut hs)));
        }
        let Some(response) = answer(&mut hs, local_index) else {
            let e = hs.error().unwrap_or(Error::Handshake(HandshakeError::Noise));
            return Err(refused(e, None, Some(&mut hs)));
        };
        let mut h = Self::with(hs, dconfig, local_index, now);
        h.remote_index = Some(sender);
        h.outbox = Some(response.clone());
        h.hello_digest = Some(digest(hello));
        h.last_response = Some(response);
        Ok(h)
    }

    /// This side's session index.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// Whether the handshake is done (call [`DatagramHandshake::into_session`]).
    pub fn is_finished(&self) -> bool {
        self.hs.is_finished()
    }

    /// The error that ended the handshake.
    pub fn error(&self) -> Option<Error> {
        self.hs.error()
    }

    /// Initiator: the reason of a REJECT that arrived for this handshake. A REJECT is not
    /// authenticated, so the handshake goes on (HELLO retransmitted) until a RESPONSE
    /// authenticates or the deadline passes, and then fails with
    /// [`HandshakeError::Rejected`] (spec §13.3).
    pub fn rejected(&self) -> Option<RejectReason> {
        self.rejected.map(|(r, _)| r)
    }

    /// Responder: whether this refused handshake is kept until its deadline to answer a
    /// repeated FINISH with the same CLOSE UNAUTHORIZED (the first one may be lost).
    pub fn lingers(&self, now: Timestamp) -> bool {
        self.refusal.is_some() && now < self.deadline
    }

    /// The next security event.
    pub fn poll_event(&mut self, now: Timestamp) -> Option<SecurityEvent> {
        self.hs.poll_event(now)
    }

    /// Takes one handshake packet addressed to this handshake. Forged, tampered and
    /// duplicated packets are dropped ([`Error::Dropped`], with an event for the forged ones)
    /// and leave the handshake as it was; a REJECT returns [`HandshakeError::Rejected`] as a
    /// hint and leaves it going (spec §13.3).
    pub fn handle_packet(&mut self, packet: &[u8], _now: Timestamp) -> Result<(), Error> {
        if let Some(e) = self.hs.error() {
            return match (&self.refusal, Packet::decode(packet)) {
                (Some((d, close)), Ok(Packet::Finish { .. })) if *d == digest(packet) => {
                    self.outbox = Some(close.clone());
                    Ok(())
                }
                (Some(_), Ok(Packet::Finish { .. })) => {
                    self.hs.record(EventKind::AuthenticationFailure);
                    Err(Error::Dropped(DropReason::AuthenticationFailed))
                }
                _ => Err(e),
            };
        }
        match (Packet::decode(packet), self.hs.role()) {
            (Ok(Packet::Response { sender, receiver, body }), Role::Initiator)
                if receiver == self.local_index =>
            {
                if self.remote_index.is_some() {
                    return Err(Error::Dropped(DropReason::UnexpectedHandshake));
                }
                if sender == 0 && body.first() != Some(&crate::hello::TYPE_REJECT) {
                    // Only a REJECT comes from index 0: this RESPONSE is not the host's.
                    self.hs.record(EventKind::AuthenticationFailure);
                    return Err(Error::Dropped(DropReason::Malformed));
                }
                match self.hs.read_datagram_message(body) {
                    Ok(()) => {}
                    Err(Error::Handshake(HandshakeError::Rejected(reason))) => {
                        let seen = self.rejected.map_or(0, |(_, n)| n);
                        self.rejected = Some((reason, seen + 1));
                        return Err(HandshakeError::Rejected(reason).into());
                    }
                    Err(e @ Error::Dropped(_)) => return Err(e),
                    Err(e) if self.hs.error().is_none() => {
                        // Authenticated but refused, and undone: a hint until the deadline.
                        self.refused_response = Some(e);
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                }
                // REJECTs contradicted by an authenticated answer were forged (or stale).
                for _ in 0..self.rejected.take().map_or(0, |(_, n)| n) {
                    self.hs.record(EventKind::AuthenticationFailure);
                }
                self.remote_index = Some(sender);
                self.retransmit = None;
                self.completing = Some(digest(packet));
                if self.hs.wants_write() {
                    let body = next_body(&mut self.hs)?;
                    let mut finish = Vec::with_capacity(5 + body.len());
                    finish.push(TYPE_FINISH);
                    finish.extend_from_slice(&sender.to_be_bytes());
                    finish.extend_from_slice(&body);
                    self.finish = Some(finish);
                }
                Ok(())
            }
            (Ok(Packet::Finish { receiver, body }), Role::Responder) if receiver == self.local_index => {
                if self.hs.is_finished() {
                    return Err(Error::Dropped(DropReason::UnexpectedHandshake));
                }
                match self.hs.read_datagram_message(body) {
                    Ok(()) => {
                        self.completing = Some(digest(packet));
                        Ok(())
                    }
                    Err(e @ Error::Dropped(_)) => Err(e),
                    Err(e) => {
                        // Refused after authentication (XX): the CLOSE UNAUTHORIZED packet.
                        if self.hs.wants_write() {
                            if let Ok(close) = next_body(&mut self.hs) {
                                self.outbox = Some(close.clone());
                                self.refusal = Some((digest(packet), close));
                            }
                        }
                        Err(e)
                    }
                }
            }
            (Ok(Packet::Hello { .. }), Role::Responder) if self.hello_digest == Some(digest(packet)) => {
                // Our answer was lost: send it again.
                self.outbox = self.last_response.clone();
                Ok(())
            }
            (Err(_), _) => Err(Error::Dropped(DropReason::Malformed)),
            _ => Err(Error::Dropped(DropReason::UnexpectedHandshake)),
        }
    }

    /// The next packet to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if let Some(p) = self.outbox.take() {
            return Some(p);
        }
        if self.hs.error().is_some() {
            return None;
        }
        let r = self.retransmit.as_mut()?;
        core::mem::take(&mut r.due).then(|| r.packet.clone())
    }

    /// When to call [`DatagramHandshake::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.hs.error().is_some() {
            // A refusal kept to answer repeats ends at the deadline.
            return self.refusal.as_ref().map(|_| self.deadline);
        }
        Some(self.retransmit.as_ref().map_or(self.deadline, |r| r.at.min(self.deadline)))
    }

    /// Retransmits on schedule; fails at the deadline with [`HandshakeError::Timeout`], or
    /// with [`HandshakeError::Rejected`] if a REJECT was the only answer.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Result<(), Error> {
        if let Some(e) = self.hs.error() {
            return Err(e);
        }
        if now >= self.deadline && !self.hs.is_finished() {
            return Err(match (self.refused_response, self.rejected) {
                (Some(e), _) => self.hs.fail_at_deadline(e),
                (None, Some((reason, _))) => {
                    self.hs.fail_at_deadline(HandshakeError::Rejected(reason).into())
                }
                (None, None) => self.hs.expire(),
            });
        }
        if let Some(r) = &mut self.retransmit {
            r.tick(now, self.config.max_rto_ms);
        }
        Ok(())
    }

    /// Consumes the finished handshake into a session.
    pub fn into_session(self, now: Timestamp) -> Result<DatagramSession, Error> {
        let remote = self.remote_index.ok_or(HandshakeError::UnexpectedMessage)?;
        let role = self.hs.role();
        let mut s = DatagramSession::new(self.hs, self.local_index, remote, self.config, now)?;
        match role {
            Role::Initiator => {
                s.accepted[0] = self.completing;
                // XX: FINISH goes out now and again until the responder proves it has the
                // session with an authenticated packet.
                if let Some(finish) = self.finish {
                    let mut r = Retransmit::new(finish, now, &self.config);
                    r.due = true;
                    s.unconfirmed = Some(r);
                }
            }
            Role::Responder if s.setup.profile.message_count() == 2 => {
                s.accepted[0] = self.hello_digest;
                // IK, KK: our message 2 may be lost; answer a repeated HELLO from this cache
                // until the device's first authenticated packet arrives.
                s.response_cache = self.hello_digest.zip(self.last_response);
                s.confirm_by = Some(self.deadline);
            }
            // XX: confirm to the device at once that its FINISH arrived.
            Role::Responder => {
                s.accepted = [self.hello_digest, self.completing];
                s.pending_ping = true;
            }
        }
        Ok(s)
    }
}

enum ClientState {
    Handshaking(Box<DatagramHandshake>),
    Established(Box<DatagramSession>),
    Failed(Error),
}

/// The device's side of datagram mode: handshake, retransmission, session.
pub struct DatagramClient {
    state: ClientState,
    local_index: u32,
    outbox: VecDeque<Vec<u8>>,
    incoming: VecDeque<Incoming>,
    events: EventQueue,
    scratch: BytesMut,
}

impl core::fmt::Debug for DatagramClient {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DatagramClient").field("established", &self.is_established()).finish_non_exhaustive()
    }
}

impl DatagramClient {
    /// Starts a handshake; the HELLO is ready in [`DatagramClient::poll_transmit`].
    pub fn new(
        config: InitiatorConfig,
        local_index: u32,
        dconfig: DatagramConfig,
        now: Timestamp,
    ) -> Result<Self, Error> {
        Ok(DatagramClient {
            state: ClientState::Handshaking(Box::new(DatagramHandshake::initiator(
                config,
                local_index,
                dconfig,
                now,
            )?)),
            local_index,
            outbox: VecDeque::new(),
            incoming: VecDeque::new(),
            events: EventQueue::default(),
            scratch: BytesMut::new(),
        })
    }

    /// Whether the session is up.
    pub fn is_established(&self) -> bool {
        matches!(self.state, ClientState::Established(_))
    }

    /// The session, once up.
    pub fn session(&self) -> Option<&DatagramSession> {
        match &self.state {
            ClientState::Established(s) => Some(s),
            _ => None,
        }
    }

    /// In a pairing session: the 6-digit code to show for comparison (§12.4).
    pub fn pairing_code(&self) -> Option<PairingCode> {
        self.session().and_then(|s| s.pairing_code())
    }

    /// While handshaking: the reason of a REJECT the host (or a forger) sent. The handshake
    /// goes on until its deadline, then fails with [`HandshakeError::Rejected`].
    pub fn rejected(&self) -> Option<RejectReason> {
        match &self.state {
            ClientState::Handshaking(h) => h.rejected(),
            _ => None,
        }
    }

    /// The error that ended the client; [`Error::ClosedByPeer`] once the host closed the
    /// session (e.g. `UNAUTHORIZED` for a refused XX device).
    pub fn error(&self) -> Option<Error> {
        match &self.state {
            ClientState::Failed(e) => Some(*e),
            ClientState::Established(s) => s.error().or(s.closed_by_peer().map(Error::ClosedByPeer)),
            ClientState::Handshaking(h) => h.error(),
        }
    }

    /// Cumulative security counters (the handshake's included).
    pub fn security_counters(&self) -> SecurityCounters {
        match &self.state {
            ClientState::Handshaking(h) => h.hs.security_counters(),
            // The session carries the handshake's counters on.
            ClientState::Established(s) => s.security_counters(),
            ClientState::Failed(_) => self.events.counters,
        }
    }

    /// Takes one packet from the link. Drops return [`Error::Dropped`] (not fatal); a
    /// REJECT while handshaking returns [`HandshakeError::Rejected`] and is not fatal either
    /// (see [`DatagramClient::rejected`]).
    pub fn handle_packet(&mut self, packet: BytesMut, now: Timestamp) -> Result<(), Error> {
        match Packet::decode(&packet) {
            Ok(Packet::Response { receiver, .. } | Packet::Transport { receiver, .. })
                if receiver != self.local_index =>
            {
                return Err(Error::Dropped(DropReason::UnknownIndex));
            }
            Ok(Packet::Hello { .. } | Packet::Finish { .. }) => {
                return Err(Error::Dropped(DropReason::UnexpectedHandshake));
            }
            Ok(_) => {}
            Err(_) => return Err(Error::Dropped(DropReason::Malformed)),
        }
        let result = match &mut self.state {
            ClientState::Failed(e) => Err(*e),
            ClientState::Handshaking(h) => {
                let r = h.handle_packet(&packet, now);
                self.advance(now);
                r
            }
            ClientState::Established(s) => match Packet::decode(&packet) {
                Ok(Packet::Transport { .. }) => s.open(packet, now).map(|i| self.incoming.push_back(i)),
                // A duplicate RESPONSE is harmless; any other one is forged.
                _ => s.handle_duplicate_handshake(&digest(&packet)),
            },
        };
        self.collect(now);
        result
    }

    fn advance(&mut self, now: Timestamp) {
        let ClientState::Handshaking(h) = &mut self.state else { return };
        if let Some(e) = h.error() {
            while let Some(ev) = h.poll_event(now) {
                self.events.peer = ev.peer;
                self.events.push(ev.kind);
            }
            self.state = ClientState::Failed(e);
            return;
        }
        if h.is_finished() {
            let ClientState::Handshaking(h) =
                core::mem::replace(&mut self.state, ClientState::Failed(Error::Closed))
            else {
                return;
            };
            self.state = match h.into_session(now) {
                Ok(s) => ClientState::Established(Box::new(s)),
                Err(e) => ClientState::Failed(e),
            };
        }
    }

    fn collect(&mut self, now: Timestamp) {
        if let ClientState::Established(s) = &mut self.state {
            while let Some(e) = s.poll_event(now) {
                self.events.peer = e.peer;
                self.events.device_id = e.device_id.clone();
                self.events.push(e.kind);
            }
        }
    }

    /// The next packet to send: handshake and control packets first (so an XX FINISH
    /// precedes the data sealed after it), then queued data.
    pub fn poll_transmit(&mut self, now: Timestamp) -> Option<Vec<u8>> {
        match &mut self.state {
            ClientState::Handshaking(h) => h.poll_transmit(),
            ClientState::Established(s) => {
                self.scratch.clear();
                if s.poll_transmit(now, &mut self.scratch) {
                    Some(self.scratch.to_vec())
                } else {
                    self.outbox.pop_front()
                }
            }
            ClientState::Failed(_) => None,
        }
    }

    /// The next received message.
    pub fn poll_incoming(&mut self) -> Option<Incoming> {
        self.incoming.pop_front()
    }

    /// Seals DATA and queues the packet for [`DatagramClient::poll_transmit`].
    pub fn send(&mut self, channel: u8, payload: &[u8], now: Timestamp) -> Result<(), Error> {
        self.send_with(now, |s, now, out| s.seal_data(channel, payload, now, out))
    }

    /// Seals a frame with an arbitrary header and queues it (see
    /// [`DatagramSession::seal_raw_for_testing_only`]).
    #[doc(hidden)]
    pub fn send_raw_for_testing_only(
        &mut self,
        kind: u8,
        flags: u8,
        channel: u8,
        payload: &[u8],
        now: Timestamp,
    ) -> Result<(), Error> {
        self.send_with(now, |s, now, out| {
            s.seal_raw_for_testing_only(kind, flags, channel, payload, now, out)
        })
    }

    fn send_with(
        &mut self,
        now: Timestamp,
        seal: impl FnOnce(&mut DatagramSession, Timestamp, &mut BytesMut) -> Result<(), Error>,
    ) -> Result<(), Error> {
        match &mut self.state {
            ClientState::Established(s) => {
                self.scratch.clear();
                let r = seal(s, now, &mut self.scratch);
                if r.is_ok() {
                    self.outbox.push_back(self.scratch.to_vec());
                }
                self.collect(now);
                r
            }
            ClientState::Handshaking(_) => Err(Error::Config("the session is not established yet")),
            ClientState::Failed(e) => Err(*e),
        }
    }

    /// When to call [`DatagramClient::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match &self.state {
            ClientState::Handshaking(h) => h.poll_timeout(),
            ClientState::Established(s) => s.poll_timeout(),
            ClientState::Failed(_) => None,
        }
    }

    /// Runs timers.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Result<(), Error> {
        let r = match &mut self.state {
            ClientState::Handshaking(h) => {
                let r = h.handle_timeout(now);
                self.advance(now);
                r
            }
            ClientState::Established(s) => s.handle_timeout(now),
            ClientState::Failed(e) => Err(*e),
        };
        self.collect(now);
        r
    }

    /// The next security event.
    pub fn poll_event(&mut self, now: Timestamp) -> Option<SecurityEvent> {
        self.collect(now);
        self.events.poll(now)
    }
}

/// Limits of a [`DatagramHost`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// Most handshakes in progress at once.
    pub max_half_open: usize,
    /// Most established sessions.
    pub max_sessions: usize,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits { max_half_open: 256, max_sessions: 4096 }
    }
}

enum Conn {
    Handshaking(Box<DatagramHandshake>),
    Established(Box<DatagramSession>),
    /// Only while a handshake turns into a session.
    Moving,
}

/// One index's state at a host.
struct Slot<A> {
    conn: Conn,
    /// Where packets for it go: the handshake's source, then the session's latest
    /// authenticated source.
    addr: A,
    /// The digest of the HELLO it came from (the key of `DatagramHost::hellos`).
    hello: [u8; 32],
    /// Its entry in `DatagramHost::timers`.
    deadline: Option<Timestamp>,
    /// Whether it is counted in `DatagramHost::confirmed` (a session's key may be confirmed
    /// by a packet between two settles: the count follows at the next settle).
    counted: bool,
}

impl<A> Slot<A> {
    /// Whether this slot holds a session whose key is confirmed.
    fn is_confirmed_session(&self) -> bool {
        matches!(&self.conn, Conn::Established(session) if session.is_key_confirmed())
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        match &self.conn {
            Conn::Handshaking(hs) => hs.poll_timeout(),
            Conn::Established(s) => s.poll_timeout(),
            Conn::Moving => None,
        }
    }
}

/// Received data at a host: which session, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIncoming {
    /// The session's local index.
    pub index: u32,
    /// The device's static key.
    pub peer: PublicKey,
    /// What arrived.
    pub incoming: Incoming,
}

/// Most host-level events kept undrained.
const HOST_EVENT_CAPACITY: usize = 1024;

/// Draws of the entropy source allowed to find a free session index. A working source
/// finds one at the first draw unless billions of indices are taken; a broken one (failing,
/// or repeating a value) must not hang the host.
pub const INDEX_ATTEMPTS: usize = 16;

/// A host serving many devices on one datagram socket. `A` is the link address type (a
/// `SocketAddr` for UDP); a session's address follows its last authenticated packet.
///
/// Each packet costs O(log n) in the number of sessions: sessions are found by index in a
/// map, and timers sit in one ordered set of deadlines, so neither a packet nor a timer
/// walks the other sessions.
pub struct DatagramHost<A> {
    make_config: Box<dyn Fn() -> ResponderConfig + Send + Sync>,
    config: DatagramConfig,
    limits: HostLimits,
    conns: BTreeMap<u32, Slot<A>>,
    hellos: BTreeMap<[u8; 32], u32>,
    /// (deadline, index) of every slot that has one.
    timers: BTreeSet<(Timestamp, u32)>,
    established: usize,
    /// Of those, the ones whose key is confirmed (spec §4.8): what `session_count` reports.
    confirmed: usize,
    entropy: Box<dyn EntropySource>,
    outbox: VecDeque<(A, Vec<u8>)>,
    incoming: VecDeque<HostIncoming>,
    events: VecDeque<SecurityEvent>,
    counters: SecurityCounters,
    scratch: BytesMut,
    /// Slots settled so far: the per-packet and per-timer work, for tests of its bound.
    visits: u64,
}

impl<A: Clone + PartialEq> DatagramHost<A> {
    /// A host; `make_config` builds the responder configuration for each new handshake.
    pub fn new(
        make_config: Box<dyn Fn() -> ResponderConfig + Send + Sync>,
        config: DatagramConfig,
        limits: HostLimits,
        entropy: Box<dyn EntropySource>,
    ) -> Self {
        DatagramHost {
            make_config,
            config,
            limits,
            conns: BTreeMap::new(),
            hellos: BTreeMap::new(),
            timers: BTreeSet::new(),
            established: 0,
            confirmed: 0,
            entropy,
            outbox: VecDeque::new(),
            incoming: VecDeque::new(),
            events: VecDeque::new(),
            counters: SecurityCounters::default(),
            scratch: BytesMut::new(),
            visits: 0,
        }
    }

    /// How many times a session or handshake was visited (settled after a packet, a send or
    /// a timer): shows that one packet or one due timer visits one slot, whatever the number
    /// of sessions.
    #[doc(hidden)]
    pub fn slots_visited_for_testing_only(&self) -> u64 {
        self.visits
    }

    /// Established sessions (an IK/KK session counts once the device's first packet has
    /// authenticated, spec §4.8).
    pub fn session_count(&self) -> usize {
        self.confirmed
    }

    /// Handshakes in progress (IK/KK sessions still waiting for key confirmation, and refused
    /// XX handshakes kept to answer repeats, included).
    pub fn half_open_count(&self) -> usize {
        self.conns.len() - self.confirmed
    }

    /// A session by index.
    pub fn session(&self, index: u32) -> Option<&DatagramSession> {
        match self.conns.get(&index).map(|s| &s.conn) {
            Some(Conn::Established(session)) => Some(session),
            _ => None,
        }
    }

    /// Cumulative counters over every session and handshake so far.
    pub fn security_counters(&self) -> SecurityCounters {
        self.counters
    }

    fn record(&mut self, e: SecurityEvent) {
        self.counters.count(&e.kind);
        if self.events.len() >= HOST_EVENT_CAPACITY {
            self.events.pop_front();
            self.counters.events_dropped += 1;
        }
        self.events.push_back(e);
    }

    fn host_event(&mut self, kind: EventKind, now: Timestamp) {
        self.record(SecurityEvent::new(kind, now, None, None));
    }

    /// A random session index, not 0 and not in use; [`HandshakeError::NoEntropy`] if the
    /// entropy source fails or does not give a free one in [`INDEX_ATTEMPTS`] draws.
    fn fresh_index(&mut self) -> Result<u32, Error> {
        for _ in 0..INDEX_ATTEMPTS {
            let mut b = [0u8; 4];
            self.entropy.fill(&mut b).map_err(|_| HandshakeError::NoEntropy)?;
            let index = u32::from_be_bytes(b);
            if index != 0 && !self.conns.contains_key(&index) {
                return Ok(index);
            }
        }
        Err(HandshakeError::NoEntropy.into())
    }

    /// Takes one datagram from `from`. Returns an error for a dropped packet (not fatal).
    pub fn handle_packet(&mut self, from: A, packet: BytesMut, now: Timestamp) -> Result<(), Error> {
        let parsed = Packet::decode(&packet).map_err(|_| Error::Dropped(DropReason::Malformed))?;
        match parsed {
            Packet::Hello { .. } => self.handle_hello(from, &packet, now),
            Packet::Finish { receiver, .. } | Packet::Transport { receiver, .. } => {
                self.handle_for(receiver, from, packet, now)
            }
            Packet::Response { .. } => Err(Error::Dropped(DropReason::UnexpectedHandshake)),
        }
    }

    fn handle_hello(&mut self, from: A, packet: &[u8], now: Timestamp) -> Result<(), Error> {
        let d = digest(packet);
        if let Some(&index) = self.hellos.get(&d) {
            // A retransmitted HELLO: answer from the cache.
            let result = match self.conns.get_mut(&index).map(|s| &mut s.conn) {
                Some(Conn::Handshaking(hs)) => hs.handle_packet(packet, now),
                Some(Conn::Established(session)) => session.handle_duplicate_handshake(&d),
                _ => Err(Error::Dropped(DropReason::UnknownIndex)),
            };
            self.settle(index, now);
            return result;
        }
        if self.half_open_count() >= self.limits.max_half_open {
            self.host_event(EventKind::LimitExceeded { limit: Limit::HalfOpenHandshakes }, now);
            return Err(Error::Dropped(DropReason::Limit));
        }
        if self.session_count() >= self.limits.max_sessions {
            self.host_event(EventKind::LimitExceeded { limit: Limit::Sessions }, now);
            return Err(Error::Dropped(DropReason::Limit));
        }
        let index = match self.fresh_index() {
            Ok(index) => index,
            Err(e) => {
                self.host_event(EventKind::HandshakeFailed { reason: e }, now);
                return Err(e);
            }
        };
        match DatagramHandshake::responder((self.make_config)(), index, self.config, packet, now) {
            Ok(hs) => {
                self.hellos.insert(d, index);
                let slot = Slot {
                    conn: Conn::Handshaking(Box::new(hs)),
                    addr: from,
                    hello: d,
                    deadline: None,
                    counted: false,
                };
                self.conns.insert(index, slot);
                self.settle(index, now);
                Ok(())
            }
            Err(refused) => {
                if let Some(r) = refused.reject {
                    self.outbox.push_back((from, r));
                }
                for ev in refused.events {
                    self.record(ev);
                }
                Err(refused.error)
            }
        }
    }

    fn handle_for(&mut self, index: u32, from: A, packet: BytesMut, now: Timestamp) -> Result<(), Error> {
        let Some(slot) = self.conns.get_mut(&index) else {
            return Err(Error::Dropped(DropReason::UnknownIndex));
        };
        let result = match &mut slot.conn {
            Conn::Moving => Err(Error::Dropped(DropReason::UnknownIndex)),
            Conn::Handshaking(hs) => hs.handle_packet(&packet, now),
            Conn::Established(session) => match Packet::decode(&packet) {
                Ok(Packet::Transport { .. }) => match session.open(packet, now) {
                    Ok(incoming) => {
                        // Roaming: the session follows its last authenticated packet.
                        slot.addr = from;
                        let peer = *session.remote_static();
                        self.incoming.push_back(HostIncoming { index, peer, incoming });
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Ok(Packet::Finish { .. }) => session.handle_duplicate_handshake(&digest(&packet)),
                _ => Err(Error::Dropped(DropReason::UnexpectedHandshake)),
            },
        };
        self.settle(index, now);
        result
    }

    /// After anything touched the slot at `index`: turns a finished handshake into a
    /// session, drains the slot's events and packets, and either reschedules its timer or,
    /// if it has ended, removes it. Touches no other slot.
    fn settle(&mut self, index: u32, now: Timestamp) {
        let Some(mut slot) = self.conns.remove(&index) else { return };
        self.visits += 1;
        // Taken out of the count now, put back below if it is still there and confirmed.
        if core::mem::take(&mut slot.counted) {
            self.confirmed -= 1;
        }
        if let Some(d) = slot.deadline.take() {
            self.timers.remove(&(d, index));
        }
        if let Conn::Handshaking(hs) = &mut slot.conn {
            while let Some(e) = hs.poll_event(now) {
                self.record(e);
            }
            if let Some(p) = hs.poll_transmit() {
                self.outbox.push_back((slot.addr.clone(), p));
            }
            if hs.is_finished() {
                let Conn::Handshaking(hs) = core::mem::replace(&mut slot.conn, Conn::Moving) else {
                    return;
                };
                match hs.into_session(now) {
                    Ok(session) => {
                        slot.conn = Conn::Established(Box::new(session));
                        self.established += 1;
                    }
                    Err(e) => self.host_event(EventKind::HandshakeFailed { reason: e }, now),
                }
            }
        }
        let alive = match &mut slot.conn {
            Conn::Moving => false,
            Conn::Handshaking(hs) => {
                while let Some(e) = hs.poll_event(now) {
                    self.record(e);
                }
                hs.error().is_none() || hs.lingers(now)
            }
            Conn::Established(session) => {
                while let Some(e) = session.poll_event(now) {
                    self.record(e);
                }
                loop {
                    self.scratch.clear();
                    if !session.poll_transmit(now, &mut self.scratch) {
                        break;
                    }
                    self.outbox.push_back((slot.addr.clone(), self.scratch.to_vec()));
                }
                !session.is_closed()
            }
        };
        if !alive {
            if let Conn::Established(_) = slot.conn {
                self.established -= 1;
            }
            self.hellos.remove(&slot.hello);
            return;
        }
        slot.deadline = slot.poll_timeout();
        if let Some(d) = slot.deadline {
            self.timers.insert((d, index));
        }
        if slot.is_confirmed_session() {
            slot.counted = true;
            self.confirmed += 1;
        }
        self.conns.insert(index, slot);
    }

    /// The indices of the established sessions.
    pub fn session_indices(&self) -> Vec<u32> {
        self.conns.iter().filter(|(_, s)| matches!(s.conn, Conn::Established(_))).map(|(i, _)| *i).collect()
    }

    /// Asks the trust policy again about every session (after a revocation); closes the ones
    /// no longer trusted with CLOSE `UNAUTHORIZED`. A pairing session stays while its device
    /// is merely unknown (it is not in the store yet), as in stream mode. Returns how many
    /// were closed.
    pub fn recheck(&mut self, policy: &dyn crate::trust::TrustPolicy, now: Timestamp) -> usize {
        use crate::trust::TrustDecision;
        let mut refused = Vec::new();
        for (index, slot) in &self.conns {
            if let Conn::Established(session) = &slot.conn {
                match policy.check(session.remote_static(), session.peer_identity()) {
                    TrustDecision::Trusted => {}
                    TrustDecision::Unknown if session.is_pairing() => {}
                    decision => refused.push((*index, decision)),
                }
            }
        }
        for (index, decision) in &refused {
            if let Some(Conn::Established(session)) = self.conns.get_mut(index).map(|s| &mut s.conn) {
                session.events.push(if *decision == TrustDecision::Revoked {
                    EventKind::RevokedPeer
                } else {
                    EventKind::UnknownPeer
                });
            }
            let _ = self.close(*index, CloseCode::UNAUTHORIZED, now);
        }
        refused.len()
    }

    /// Sends DATA to a session.
    pub fn send(&mut self, index: u32, channel: u8, payload: &[u8], now: Timestamp) -> Result<(), Error> {
        let Some(Slot { conn: Conn::Established(session), addr, .. }) = self.conns.get_mut(&index) else {
            return Err(Error::Dropped(DropReason::UnknownIndex));
        };
        self.scratch.clear();
        let result = session.seal_data(channel, payload, now, &mut self.scratch);
        if result.is_ok() {
            self.outbox.push_back((addr.clone(), self.scratch.to_vec()));
        }
        self.settle(index, now);
        result
    }

    /// Closes a session (e.g. after its key was revoked), queueing a CLOSE.
    pub fn close(&mut self, index: u32, code: CloseCode, now: Timestamp) -> Result<(), Error> {
        let Some(Slot { conn: Conn::Established(session), addr, .. }) = self.conns.get_mut(&index) else {
            return Err(Error::Dropped(DropReason::UnknownIndex));
        };
        self.scratch.clear();
        let result = session.close(code, now, &mut self.scratch);
        if result.is_ok() {
            self.outbox.push_back((addr.clone(), self.scratch.to_vec()));
        }
        self.settle(index, now);
        result
    }

    /// The next datagram to send, with its destination.
    pub fn poll_transmit(&mut self) -> Option<(A, Vec<u8>)> {
        self.outbox.pop_front()
    }

    /// The next received message.
    pub fn poll_incoming(&mut self) -> Option<HostIncoming> {
        self.incoming.pop_front()
    }

    /// The next security event (already stamped).
    pub fn poll_event(&mut self) -> Option<SecurityEvent> {
        self.events.pop_front()
    }

    /// When to call [`DatagramHost::handle_timeout`]: the earliest deadline of any session
    /// or handshake.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Runs the timers that are due (only those: the others are not visited); removes the
    /// sessions and handshakes that ended.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let due: Vec<u32> = self.timers.iter().take_while(|(t, _)| *t <= now).map(|(_, i)| *i).collect();
        for index in due {
            if let Some(slot) = self.conns.get_mut(&index) {
                let _ = match &mut slot.conn {
                    Conn::Handshaking(hs) => hs.handle_timeout(now),
                    Conn::Established(session) => session.handle_timeout(now),
                    Conn::Moving => Ok(()),
                };
            }
            self.settle(index, now);
        }
    }
}

/// Splits datagrams into link packets of at most `mtu` bytes and reassembles them on the
/// other side (spec §13.6): a point-to-point adapter for links like BLE GATT.
#[derive(Debug)]
pub struct FragmentLink {
    mtu: usize,
    next_id: u16,
    reassembler: crate::fragment::Reassembler,
}

impl FragmentLink {
    /// An adapter for a link MTU (at least 5 bytes: a 4-byte fragment header and 1 byte).
    pub fn new(mtu: usize, limits: crate::fragment::ReassemblyLimits) -> Result<Self, Error> {
        if mtu <= crate::fragment::FRAGMENT_HEADER_LEN {
            return Err(Error::Config("the link MTU must exceed the 4-byte fragment header"));
        }
        Ok(FragmentLink { mtu, next_id: 0, reassembler: crate::fragment::Reassembler::new(limits) })
    }

    /// The link packets for one datagram.
    pub fn split(&mut self, datagram: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        self.next_id = self.next_id.wrapping_add(1);
        crate::fragment::split(datagram, self.mtu - crate::fragment::FRAGMENT_HEADER_LEN, self.next_id)
            .ok_or(Error::PayloadTooLarge { len: datagram.len(), max: 255 * (self.mtu - 4) })
    }

    /// Takes one link packet; returns a datagram when one is complete.
    pub fn receive(
        &mut self,
        link_packet: &[u8],
        now: Timestamp,
    ) -> Result<Option<BytesMut>, crate::fragment::FragmentDrop> {
        match self.reassembler.push(link_packet, now) {
            crate::fragment::Reassembled::Pending => Ok(None),
            crate::fragment::Reassembled::Complete(d) => Ok(Some(BytesMut::from(&d[..]))),
            crate::fragment::Reassembled::Dropped(r) => Err(r),
        }
    }

    /// Bytes held in partial datagrams.
    pub fn buffered_bytes(&self) -> usize {
        self.reassembler.buffered_bytes()
    }

    /// Expires partial datagrams.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.reassembler.handle_timeout(now);
    }
}
