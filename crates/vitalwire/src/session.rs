//! An established session: sealing and opening transport frames, in-band rekeying, PING/PONG
//! and CLOSE (spec/PROTOCOL.md §5-§7).
//!
//! ```text
//!  seal_data(ch, payload, out)                      open(frame) -> Incoming
//!    out: [len][kind flags ch | payload][tag]         frame: BytesMut from StreamDecoder
//!          ^ header and payload sealed in place        decrypted in place; the payload is
//!                                                      handed back as Bytes sliced from it
//! ```
//!
//! Stream frames use implicit nonces: each direction counts its frames from 0, so a dropped,
//! replayed, reordered or altered frame fails authentication and the session fails closed.
//! Fatal errors stick: every later call returns the same error, and a CLOSE with the matching
//! reason is queued for the peer (see [`Session::poll_transmit`]).

use alloc::vec::Vec;

use bytes::{Buf, Bytes, BytesMut};

use crate::cipher::TransportCipher;
use crate::error::{DecodeError, Error, HandshakeError, ProtocolError};
use crate::events::{
    Direction, EventKind, EventQueue, Limit, SecurityCounters, SecurityEvent, Timer, Timestamp,
};
use crate::fragment::{self, Reassembled, Reassembler, ReassemblyLimits, FRAGMENT_HEADER_LEN};
use crate::frame::FLAG_FRAGMENT;
use crate::frame::{CloseCode, FrameHeader, FrameKind, FRAME_OVERHEAD, HEADER_LEN, PING_LEN, TAG_LEN};
use crate::handshake::Role;
use crate::keys::PublicKey;
use crate::noise::Finished;
use crate::pairing::PairingCode;
use crate::payload::{DeviceIdentity, SessionParams};
use crate::profile::{CipherSuite, Profile};
use crate::stream::LENGTH_PREFIX_LEN;
use crate::timers::{TimerConfig, TimerState};
use crate::trust::{TrustDecision, TrustPolicy};

/// What an opened frame meant.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incoming {
    /// Application data on a channel. The payload shares the receive buffer (no copy).
    Data {
        /// Channel number.
        channel: u8,
        /// The decrypted payload.
        payload: Bytes,
    },
    /// The peer pinged; a PONG is queued ([`Session::poll_transmit`]).
    Ping,
    /// The answer to one of our PINGs.
    Pong([u8; PING_LEN]),
    /// The peer switched its sending key; ours for receiving followed.
    Rekeyed,
    /// The peer closed the session. A CLOSE answer is queued if we had not sent one.
    Closed(CloseCode),
    /// One piece of a fragmented message arrived; the message follows when complete.
    Fragment,
}

/// What an opened frame meant, the payload borrowed from the caller's buffer
/// ([`Session::open_in_place`]): the receive path without `BytesMut`/`Bytes`, for fixed
/// buffers (firmware) and the lowest per-frame cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IncomingRef<'a> {
    /// Application data on a channel: a slice of the frame buffer (or, for the last piece
    /// of a fragmented message, of the session's reassembly buffer).
    Data {
        /// Channel number.
        channel: u8,
        /// The decrypted payload.
        payload: &'a [u8],
    },
    /// The peer pinged; a PONG is queued ([`Session::poll_transmit`]).
    Ping,
    /// The answer to one of our PINGs.
    Pong([u8; PING_LEN]),
    /// The peer switched its sending key; ours for receiving followed.
    Rekeyed,
    /// The peer closed the session. A CLOSE answer is queued if we had not sent one.
    Closed(CloseCode),
    /// One piece of a fragmented message arrived; the message follows when complete.
    Fragment,
}

/// The outcome of opening a frame body, before the payload is handed out (as `Bytes` or as
/// a borrowed slice).
enum Opened {
    /// DATA whose payload is `body[HEADER_LEN..HEADER_LEN + len]`.
    Data {
        channel: u8,
        len: usize,
    },
    /// A reassembled message, waiting in `Session::completed`.
    Message {
        channel: u8,
    },
    Ping,
    Pong([u8; PING_LEN]),
    Rekeyed,
    Closed(CloseCode),
    Fragment,
}

/// Session state (spec §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// We sent CLOSE; we may still receive until the peer's CLOSE.
    LocalClosed,
    /// The peer sent CLOSE.
    RemoteClosed(CloseCode),
    /// Both CLOSEs seen.
    Closed(CloseCode),
    Failed(Error),
}

pub(crate) struct SessionSetup {
    pub role: Role,
    pub profile: Profile,
    pub suite: CipherSuite,
    pub local_max_frame_len: u16,
    pub peer_max_frame_len: u16,
    pub rekey_interval: u32,
    pub peer_identity: Option<DeviceIdentity>,
    pub params: SessionParams,
    pub pairing_code: Option<PairingCode>,
    /// Responder, IK/KK: when the device's first transport frame must have arrived (key
    /// confirmation, spec §4.8); `None` until a clock has been seen.
    pub confirm_deadline: Option<Timestamp>,
    /// Responder, IK/KK: the time allowed for key confirmation when no deadline was set.
    pub confirm_timeout_ms: u64,
}

impl SessionSetup {
    /// Whether the session is confirmed from the start: everywhere except at an IK/KK
    /// responder, which has seen only message 1 (replayable) and waits for the device's first
    /// authenticated transport frame (spec §4.8).
    pub fn confirmed(&self) -> bool {
        !(self.role == Role::Responder && self.profile.message_count() == 2)
    }

    /// Whether this side must send a transport frame at once to confirm the session to the
    /// peer: the IK/KK initiator (spec §4.8).
    pub fn owes_confirmation(&self) -> bool {
        self.role == Role::Initiator && self.profile.message_count() == 2
    }

    /// The `session_established` event of this session.
    pub fn established_event(&self) -> EventKind {
        EventKind::SessionEstablished {
            role: self.role,
            profile: self.profile,
            suite: self.suite,
            pairing: self.pairing_code.is_some(),
        }
    }
}

/// Counters of a session's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Frames sealed (all kinds).
    pub frames_sent: u64,
    /// Frames opened successfully (all kinds).
    pub frames_received: u64,
    /// Rekeys of the sending key.
    pub rekeys_sent: u64,
    /// Rekeys of the receiving key.
    pub rekeys_received: u64,
}

/// An established, mutually authenticated session.
pub struct Session {
    setup: SessionSetup,
    tx: TransportCipher,
    rx: TransportCipher,
    handshake_hash: [u8; 32],
    remote_static: PublicKey,
    state: State,
    tx_under_key: u32,
    rx_under_key: u32,
    pending_pong: Option<[u8; PING_LEN]>,
    pending_close: Option<CloseCode>,
    stats: SessionStats,
    events: EventQueue,
    timers: TimerState,
    pending_ping: bool,
    pending_rekey: bool,
    /// Responder, IK/KK: no transport frame from the device has authenticated yet (spec §4.8).
    unconfirmed: bool,
    /// Initiator, IK/KK: the confirming first frame has not been sent yet (spec §4.8).
    owes_confirmation: bool,
    /// The fragmented message being received, if any (fragments arrive contiguously).
    reassembly: Option<Reassembler>,
    /// The last reassembled message, until it is handed out.
    completed: Option<Vec<u8>>,
    next_message_id: u16,
    /// The `message_id` the peer's next fragmented message must carry (spec §5.4).
    rx_message_id: u16,
    /// The fragmented message being received: its count, the next index expected, its channel.
    rx_fragment: Option<(u8, u8, u8)>,
}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.setup.role)
            .field("profile", &self.setup.profile)
            .field("suite", &self.setup.suite)
            .field("remote_static", &self.remote_static)
            .field("state", &self.state)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(setup: SessionSetup, finished: Finished, events: EventQueue) -> Self {
        Session {
            unconfirmed: !setup.confirmed(),
            owes_confirmation: setup.owes_confirmation(),
            setup,
            tx: finished.tx,
            rx: finished.rx,
            handshake_hash: finished.handshake_hash,
            remote_static: finished.remote_static,
            state: State::Open,
            tx_under_key: 0,
            rx_under_key: 0,
            pending_pong: None,
            pending_close: None,
            stats: SessionStats::default(),
            events,
            timers: TimerState::new(TimerConfig::default()),
            pending_ping: false,
            pending_rekey: false,
            reassembly: None,
            completed: None,
            next_message_id: 0,
            rx_message_id: 0,
            rx_fragment: None,
        }
    }

    /// Replaces the timer settings (keepalive, dead peer, rekey by time, lifetime).
    pub fn set_timers(&mut self, config: TimerConfig) {
        self.timers.config = config;
    }

    /// When to call [`Session::handle_timeout`] next (after the first call, which starts the
    /// clocks). An IK/KK initiator that has sent nothing yet is due at once: its
    /// [`Session::handle_timeout`] queues the key-confirming PING of spec §4.8, which
    /// [`Session::poll_transmit`] writes. At an unconfirmed IK/KK responder the handshake
    /// deadline is included.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match self.state {
            State::Open if self.owes_confirmation && self.stats.frames_sent == 0 => {
                // Due now: the confirming PING (spec §4.8).
                Some(Timestamp(0))
            }
            State::Open | State::LocalClosed | State::RemoteClosed(_) => {
                let timers = self.timers.next_deadline();
                match (self.unconfirmed, self.setup.confirm_deadline) {
                    (true, Some(d)) => Some(timers.map_or(d, |t| t.min(d))),
                    _ => timers,
                }
            }
            _ => None,
        }
    }

    /// Whether the peer has proven it holds this session's keys. Always true except at an
    /// IK/KK responder until the device's first transport frame authenticates (spec §4.8):
    /// until then the HELLO may have been a replay, and the session is neither reported
    /// (`session_established`) nor to be counted as one.
    pub fn is_confirmed(&self) -> bool {
        !self.unconfirmed
    }

    /// Runs the timers (spec §7.4): queues a keepalive PING or a REKEY for
    /// [`Session::poll_transmit`], or fails the session when the peer has been silent too
    /// long ([`Error::DeadPeer`]) or the session is too old ([`Error::SessionExpired`]); a
    /// CLOSE with the reason is then queued. Call it first when the session starts.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Result<(), Error> {
        match self.state {
            State::Failed(e) => return Err(e),
            State::Closed(_) => return Ok(()),
            _ => {}
        }
        if self.unconfirmed {
            let deadline = *self
                .setup
                .confirm_deadline
                .get_or_insert(Timestamp(now.0.saturating_add(self.setup.confirm_timeout_ms)));
            if now >= deadline {
                // A replayed HELLO, or a device too slow to finish: never a session (§4.8).
                let e = Error::Handshake(HandshakeError::NotConfirmed);
                self.events.push(EventKind::TimerExpired { timer: Timer::Handshake });
                self.events.push(EventKind::HandshakeFailed { reason: e });
                return Err(self.fail(e));
            }
        }
        // Until a frame has gone out, `poll_timeout` says "now" and the PING stays queued.
        self.pending_ping |= self.owes_confirmation && self.stats.frames_sent == 0;
        let actions = self.timers.check(now);
        if actions.expired {
            return Err(self.fail(Error::SessionExpired));
        }
        if actions.dead_peer {
            return Err(self.fail(Error::DeadPeer));
        }
        self.pending_rekey |= actions.rekey;
        self.pending_ping |= actions.keepalive;
        Ok(())
    }

    /// Sends an application message of any size up to the negotiated `max_message_len`: in
    /// one DATA frame if it fits, else as DATA frames flagged FRAGMENT (spec §5.4), appended to
    /// `out` back to back.
    pub fn seal_message(&mut self, channel: u8, message: &[u8], out: &mut BytesMut) -> Result<(), Error> {
        if message.len() <= self.max_payload_len() {
            return self.seal_data(channel, message, out);
        }
        self.check_can_send()?;
        if self.is_pairing() {
            return Err(Error::PairingSession);
        }
        let max = self.setup.params.max_message_len as usize;
        let piece = self.max_payload_len().saturating_sub(FRAGMENT_HEADER_LEN);
        let pieces = match fragment::split(message, piece, self.next_message_id) {
            Some(p) if message.len() <= max => p,
            _ => {
                self.events.push(EventKind::LimitExceeded { limit: Limit::MessageTooLarge });
                let max = max.min(piece * fragment::MAX_FRAGMENTS);
                return Err(Error::PayloadTooLarge { len: message.len(), max });
            }
        };
        self.next_message_id = self.next_message_id.wrapping_add(1);
        let start = out.len();
        for p in pieces {
            let header = FrameHeader { kind: FrameKind::DATA, flags: FLAG_FRAGMENT, channel };
            if let Err(e) = self.seal_frame(header, &p, out) {
                out.truncate(start);
                return Err(e);
            }
        }
        Ok(())
    }

    /// The next queued security event, stamped with `now` (poll after each call that feeds
    /// input; the core has no clock).
    pub fn poll_event(&mut self, now: Timestamp) -> Option<SecurityEvent> {
        self.events.poll(now)
    }

    /// Cumulative security counters (the handshake's included).
    pub fn security_counters(&self) -> SecurityCounters {
        self.events.counters
    }

    /// In a pairing session: the 6-digit code to compare with the peer's display.
    pub fn pairing_code(&self) -> Option<PairingCode> {
        self.setup.pairing_code
    }

    /// Whether this is a pairing session (no application data; spec §12.4).
    pub fn is_pairing(&self) -> bool {
        self.setup.pairing_code.is_some()
    }

    /// Asks the trust policy again about the peer (after a revocation, say). If the peer is
    /// no longer trusted the session fails with [`Error::Unauthorized`] and a CLOSE
    /// `UNAUTHORIZED` is queued ([`Session::poll_transmit`]). Pairing sessions are not
    /// re-checked (the device is not in the store yet) unless it was revoked.
    pub fn recheck(&mut self, policy: &dyn TrustPolicy) -> Result<(), Error> {
        if let State::Failed(e) = self.state {
            return Err(e);
        }
        match policy.check(&self.remote_static, self.setup.peer_identity.as_ref()) {
            TrustDecision::Trusted => Ok(()),
            TrustDecision::Unknown if self.is_pairing() => Ok(()),
            decision => {
                self.events.push(if decision == TrustDecision::Revoked {
                    EventKind::RevokedPeer
                } else {
                    EventKind::UnknownPeer
                });
                Err(self.fail(Error::Unauthorized))
            }
        }
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.setup.role
    }
    /// The handshake profile used.
    pub fn profile(&self) -> Profile {
        self.setup.profile
    }
    /// The cipher suite used.
    pub fn suite(&self) -> CipherSuite {
        self.setup.suite
    }
    /// The peer's authenticated static key.
    pub fn remote_static(&self) -> &PublicKey {
        &self.remote_static
    }
    /// The Noise handshake hash: unique to this session, equal on both ends (the basis of
    /// channel binding and pairing codes).
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }
    /// The device's identity (on the host's side).
    pub fn peer_identity(&self) -> Option<&DeviceIdentity> {
        self.setup.peer_identity.as_ref()
    }
    /// The session parameters the host chose.
    pub fn params(&self) -> &SessionParams {
        &self.setup.params
    }
    /// Largest frame body this side accepts (configure the [`crate::StreamDecoder`] with it).
    pub fn max_frame_len(&self) -> usize {
        self.setup.local_max_frame_len as usize
    }
    /// Largest DATA payload the peer accepts in one frame.
    pub fn max_payload_len(&self) -> usize {
        (self.setup.peer_max_frame_len as usize).saturating_sub(FRAME_OVERHEAD)
    }
    /// Traffic counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }
    /// The error that ended the session, if one did.
    pub fn error(&self) -> Option<Error> {
        match self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }
    /// Whether the session can still send DATA.
    pub fn can_send(&self) -> bool {
        matches!(self.state, State::Open)
    }
    /// Whether both sides have closed (or the session failed).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed(_) | State::Failed(_))
    }

    /// Seals a DATA frame on `channel` and appends it, length prefix included, to `out`. The
    /// payload is copied once into `out` and encrypted there. If the rekey interval is due, a
    /// REKEY frame is appended first.
    pub fn seal_data(&mut self, channel: u8, payload: &[u8], out: &mut BytesMut) -> Result<(), Error> {
        self.check_can_send()?;
        if self.is_pairing() {
            return Err(Error::PairingSession);
        }
        let max = self.max_payload_len();
        if payload.len() > max {
            self.events.push(EventKind::LimitExceeded { limit: Limit::PayloadTooLarge });
            return Err(Error::PayloadTooLarge { len: payload.len(), max });
        }
        self.seal_frame(FrameHeader::new(FrameKind::DATA, channel), payload, out)
    }

    /// Sends a PING carrying 8 opaque bytes (echoed in the PONG).
    pub fn send_ping(&mut self, opaque: [u8; PING_LEN], out: &mut BytesMut) -> Result<(), Error> {
        self.check_can_send()?;
        self.seal_frame(FrameHeader::new(FrameKind::PING, 0), &opaque, out)
    }

    /// Rekeys the sending direction now: appends a REKEY frame, then switches keys.
    pub fn rekey(&mut self, out: &mut BytesMut) -> Result<(), Error> {
        self.check_can_send()?;
        self.seal_rekey(out)
    }

    /// Closes the session with `code`: appends a CLOSE frame. The session can still receive
    /// until the peer's CLOSE arrives.
    pub fn close(&mut self, code: CloseCode, out: &mut BytesMut) -> Result<(), Error> {
        match self.state {
            State::Failed(e) => return Err(e),
            State::Open | State::RemoteClosed(_) => {}
            State::LocalClosed | State::Closed(_) => return Err(Error::Closed),
        }
        self.pending_close = None;
        self.seal_frame(FrameHeader::new(FrameKind::CLOSE, 0), &code.0.to_be_bytes(), out)?;
        self.state = match self.state {
            State::RemoteClosed(c) => State::Closed(c),
            _ => {
                self.events.push(EventKind::SessionClosed { code, by_peer: false });
                State::LocalClosed
            }
        };
        Ok(())
    }

    /// Appends queued control frames (a PONG, a CLOSE answering the peer's or reporting a
    /// fatal error) to `out`. Returns whether anything was written. Call it after
    /// [`Session::open`].
    pub fn poll_transmit(&mut self, out: &mut BytesMut) -> bool {
        let mut wrote = false;
        if matches!(self.state, State::Open) {
            self.pending_ping |= self.owes_confirmation && self.stats.frames_sent == 0;
            if core::mem::take(&mut self.pending_rekey) {
                wrote |= self.seal_rekey(out).is_ok();
            }
            if core::mem::take(&mut self.pending_ping) {
                let opaque = self.stats.frames_sent.to_be_bytes();
                wrote |= self.seal_frame(FrameHeader::new(FrameKind::PING, 0), &opaque, out).is_ok();
            }
        }
        if let Some(opaque) = self.pending_pong.take() {
            // Not after our own CLOSE (spec §7.2: nothing follows it), e.g. for a PING that
            // crossed it in flight.
            if matches!(self.state, State::Open | State::RemoteClosed(_)) {
                wrote |= self.seal_frame(FrameHeader::new(FrameKind::PONG, 0), &opaque, out).is_ok();
            }
        }
        if let Some(code) = self.pending_close.take() {
            match self.state {
                State::RemoteClosed(_) => wrote |= self.close(code, out).is_ok(),
                State::Failed(_) => {
                    // Best effort: the session is dead, but the peer deserves to know why.
                    wrote |= self
                        .seal_frame(FrameHeader::new(FrameKind::CLOSE, 0), &code.0.to_be_bytes(), out)
                        .is_ok();
                }
                _ => {}
            }
        }
        wrote
    }

    /// Opens one transport frame body (as split out by the [`crate::StreamDecoder`]).
    ///
    /// Any failure of authentication or of the protocol's rules is fatal and sticks; a frame
    /// of unknown kind is discarded with [`Error::UnknownFrameKind`] and the session goes on.
    pub fn open(&mut self, mut frame: BytesMut) -> Result<Incoming, Error> {
        Ok(match self.open_body(&mut frame[..])? {
            Opened::Data { channel, len } => {
                frame.truncate(HEADER_LEN + len);
                frame.advance(HEADER_LEN);
                Incoming::Data { channel, payload: frame.freeze() }
            }
            Opened::Message { channel } => {
                Incoming::Data { channel, payload: Bytes::from(self.completed.take().unwrap_or_default()) }
            }
            Opened::Ping => Incoming::Ping,
            Opened::Pong(opaque) => Incoming::Pong(opaque),
            Opened::Rekeyed => Incoming::Rekeyed,
            Opened::Closed(code) => Incoming::Closed(code),
            Opened::Fragment => Incoming::Fragment,
        })
    }

    /// Opens one transport frame body in place, in the caller's buffer (see
    /// [`crate::StreamDecoder::frame_len`] to find it): the same rules as [`Session::open`],
    /// without `BytesMut` or `Bytes`. The buffer holds the plaintext afterwards, and garbage
    /// if opening failed.
    pub fn open_in_place<'a>(&'a mut self, frame: &'a mut [u8]) -> Result<IncomingRef<'a>, Error> {
        Ok(match self.open_body(frame)? {
            Opened::Data { channel, len } => {
                IncomingRef::Data { channel, payload: &frame[HEADER_LEN..HEADER_LEN + len] }
            }
            Opened::Message { channel } => {
                IncomingRef::Data { channel, payload: self.completed.as_deref().unwrap_or_default() }
            }
            Opened::Ping => IncomingRef::Ping,
            Opened::Pong(opaque) => IncomingRef::Pong(opaque),
            Opened::Rekeyed => IncomingRef::Rekeyed,
            Opened::Closed(code) => IncomingRef::Closed(code),
            Opened::Fragment => IncomingRef::Fragment,
        })
    }

    /// Decrypts `body` in place and applies the receiver rules (spec §5.3).
    fn open_body(&mut self, body: &mut [u8]) -> Result<Opened, Error> {
        match self.state {
            State::Open | State::LocalClosed => {}
            State::Failed(e) => return Err(e),
            State::RemoteClosed(_) | State::Closed(_) => {
                return Err(self.fail(ProtocolError::FrameAfterClose.into()));
            }
        }
        if body.len() > self.max_frame_len() {
            self.events.push(EventKind::LimitExceeded { limit: Limit::FrameTooLarge });
            return Err(self.fail(ProtocolError::FrameTooLarge.into()));
        }
        if body.len() < FRAME_OVERHEAD {
            return Err(self.fail(DecodeError::FrameTooShort { len: body.len(), min: FRAME_OVERHEAD }.into()));
        }
        let plain_len = match self.rx.open_in_place(&[], body) {
            Ok(n) => n,
            Err(e) => return Err(self.fail(e)),
        };
        let header = match FrameHeader::decode([body[0], body[1], body[2]]) {
            Ok(h) => h,
            Err(e) => return Err(self.fail(e.into())),
        };
        let payload = &body[HEADER_LEN..plain_len];
        if core::mem::take(&mut self.unconfirmed) {
            // Key confirmation (spec §4.8): only the holder of the device's ephemeral key can
            // seal this frame, so the HELLO was fresh.
            self.events.push(self.setup.established_event());
        }
        self.stats.frames_received += 1;
        self.timers.received();
        self.rx_under_key += 1;
        // spec §6.3: at most `rekey_interval` frames under one key, the last being REKEY.
        if self.rx_under_key >= self.setup.rekey_interval && header.kind != FrameKind::REKEY {
            return Err(self.fail(ProtocolError::RekeyOverdue.into()));
        }
        match header.kind {
            FrameKind::DATA if header.flags == 0 && self.reassembly.is_none() && !self.is_pairing() => {
                // The common case, checked first.
                Ok(Opened::Data { channel: header.channel, len: payload.len() })
            }
            FrameKind::DATA if self.is_pairing() => {
                Err(self.fail(ProtocolError::DataInPairingSession.into()))
            }
            FrameKind::DATA if header.flags & FLAG_FRAGMENT != 0 => {
                let channel = header.channel;
                self.reassemble(channel, &body[HEADER_LEN..plain_len])
            }
            FrameKind::DATA if self.reassembly.as_ref().is_some_and(|r| r.in_flight() > 0) => {
                // spec §5.4: the pieces of a message travel back to back.
                Err(self.fail(ProtocolError::InterleavedFragments.into()))
            }
            FrameKind::DATA => Ok(Opened::Data { channel: header.channel, len: payload.len() }),
            FrameKind::PING => {
                let opaque = self.control_payload::<PING_LEN>(FrameKind::PING, payload)?;
                self.pending_pong = Some(opaque);
                Ok(Opened::Ping)
            }
            FrameKind::PONG => Ok(Opened::Pong(self.control_payload::<PING_LEN>(FrameKind::PONG, payload)?)),
            FrameKind::REKEY => {
                self.control_payload::<0>(FrameKind::REKEY, payload)?;
                self.rx.rekey();
                self.rx_under_key = 0;
                self.stats.rekeys_received += 1;
                self.events.push(EventKind::Rekeyed { direction: Direction::Inbound });
                Ok(Opened::Rekeyed)
            }
            FrameKind::CLOSE => {
                let code =
                    CloseCode(u16::from_be_bytes(self.control_payload::<2>(FrameKind::CLOSE, payload)?));
                self.state = match self.state {
                    State::LocalClosed => State::Closed(code),
                    _ => {
                        self.events.push(EventKind::SessionClosed { code, by_peer: true });
                        self.pending_close = Some(CloseCode::NORMAL);
                        State::RemoteClosed(code)
                    }
                };
                Ok(Opened::Closed(code))
            }
            FrameKind(kind) => {
                self.events.push(EventKind::UnknownFrameKind { kind });
                Err(Error::UnknownFrameKind(kind))
            }
        }
    }

    /// Tells the session the stream has ended. `Ok` only if the peer's CLOSE was received;
    /// otherwise the session fails with [`Error::Truncated`]: data may have been cut off.
    pub fn handle_eof(&mut self) -> Result<(), Error> {
        match self.state {
            State::RemoteClosed(_) | State::Closed(_) => {
                self.state = State::Closed(match self.state {
                    State::RemoteClosed(c) | State::Closed(c) => c,
                    _ => CloseCode::NORMAL,
                });
                Ok(())
            }
            State::Failed(e) => Err(e),
            State::Open | State::LocalClosed => {
                self.pending_close = None;
                self.events.push(EventKind::Truncated);
                self.state = State::Failed(Error::Truncated);
                Err(Error::Truncated)
            }
        }
    }

    /// Seals a frame with an arbitrary header (unknown kinds, reserved flags), to test how a
    /// peer handles authentic frames that break the rules.
    #[doc(hidden)]
    pub fn seal_raw_for_testing_only(
        &mut self,
        kind: u8,
        flags: u8,
        channel: u8,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), Error> {
        self.seal_one(FrameHeader { kind: FrameKind(kind), flags, channel }, payload, out)
    }

    fn reassemble(&mut self, channel: u8, piece: &[u8]) -> Result<Opened, Error> {
        let limits = ReassemblyLimits {
            max_message_len: self.setup.params.max_message_len as usize,
            max_in_flight: 1,
            timeout_ms: u64::MAX / 2,
        };
        // spec §5.4: on a stream the pieces come in order, numbered by message, at least two.
        let expected = match self.rx_fragment {
            Some((count, next, channel)) => (next, Some((count, channel))),
            None => (0, None),
        };
        let in_order = fragment::FragmentHeader::decode(piece).is_some_and(|(h, bytes)| {
            h.message_id == self.rx_message_id
                && h.count >= 2
                && !bytes.is_empty()
                && h.index == expected.0
                && expected.1.is_none_or(|(count, ch)| count == h.count && ch == channel)
        });
        if !in_order {
            self.events.push(EventKind::FragmentDropped);
            return Err(self.fail(ProtocolError::BadFragment.into()));
        }
        let r = self.reassembly.get_or_insert_with(|| Reassembler::new(limits));
        match r.push(piece, Timestamp(0)) {
            Reassembled::Pending => {
                let count = piece[3];
                self.rx_fragment = Some((count, expected.0 + 1, channel));
                Ok(Opened::Fragment)
            }
            Reassembled::Complete(message) => {
                self.rx_fragment = None;
                self.rx_message_id = self.rx_message_id.wrapping_add(1);
                self.completed = Some(message);
                Ok(Opened::Message { channel })
            }
            Reassembled::Dropped(_) => {
                // On a reliable, authenticated stream a bad fragment is the peer's fault.
                self.events.push(EventKind::FragmentDropped);
                Err(self.fail(ProtocolError::BadFragment.into()))
            }
        }
    }

    /// Tells the session the stream decoder rejected the input (a length above the limit, a
    /// zero length, a stream cut inside a frame): the session fails with that error, records
    /// the event and queues the CLOSE it maps to. A stream cut inside a frame is reported as
    /// [`Error::Truncated`] with a `truncated` event, like [`Session::handle_eof`].
    pub fn handle_decode_error(&mut self, e: DecodeError) -> Error {
        if let (DecodeError::IncompleteFrame { .. }, State::Open | State::LocalClosed) = (e, self.state) {
            // §2, §7.3: a stream that ends inside a frame is truncated, not malformed.
            return self.handle_eof().err().unwrap_or(Error::Truncated);
        }
        if let DecodeError::FrameTooLarge { .. } = e {
            self.events.push(EventKind::LimitExceeded { limit: Limit::FrameTooLarge });
        }
        self.fail(Error::Decode(e))
    }

    #[doc(hidden)]
    pub fn set_send_nonce_for_testing_only(&mut self, nonce: u64) {
        self.tx.set_nonce_for_testing_only(nonce);
    }

    fn control_payload<const N: usize>(&mut self, kind: FrameKind, payload: &[u8]) -> Result<[u8; N], Error> {
        match payload.try_into() {
            Ok(arr) => Ok(arr),
            Err(_) => Err(self.fail(ProtocolError::BadControlPayload(kind.0).into())),
        }
    }

    fn check_can_send(&self) -> Result<(), Error> {
        match self.state {
            State::Open => Ok(()),
            State::Failed(e) => Err(e),
            State::RemoteClosed(c) => Err(Error::ClosedByPeer(c)),
            State::LocalClosed | State::Closed(_) => Err(Error::Closed),
        }
    }

    /// Records a fatal error, queues the CLOSE it maps to, and returns it.
    fn fail(&mut self, e: Error) -> Error {
        if let State::Failed(first) = self.state {
            return first;
        }
        self.pending_pong = None;
        self.pending_close = e.close_code();
        self.state = State::Failed(e);
        match e {
            Error::AuthenticationFailed => self.events.push(EventKind::AuthenticationFailure),
            Error::Protocol(error) => self.events.push(EventKind::ProtocolViolation { error }),
            Error::Decode(_) => {
                self.events.push(EventKind::ProtocolViolation { error: ProtocolError::Malformed })
            }
            Error::NonceExhausted => {
                self.events.push(EventKind::LimitExceeded { limit: Limit::NonceExhausted })
            }
            Error::DeadPeer => self.events.push(EventKind::TimerExpired { timer: Timer::DeadPeer }),
            Error::SessionExpired => self.events.push(EventKind::TimerExpired { timer: Timer::Lifetime }),
            _ => {}
        }
        e
    }

    fn seal_rekey(&mut self, out: &mut BytesMut) -> Result<(), Error> {
        self.seal_one(FrameHeader::new(FrameKind::REKEY, 0), &[], out)?;
        self.tx.rekey();
        self.tx_under_key = 0;
        self.stats.rekeys_sent += 1;
        self.events.push(EventKind::Rekeyed { direction: Direction::Outbound });
        Ok(())
    }

    /// Seals one frame, rekeying first when the interval requires it (spec §6.3).
    fn seal_frame(&mut self, header: FrameHeader, payload: &[u8], out: &mut BytesMut) -> Result<(), Error> {
        if self.tx_under_key + 1 >= self.setup.rekey_interval {
            self.seal_rekey(out)?;
        }
        self.seal_one(header, payload, out)
    }

    /// Writes `len || seal(header || payload)` to `out`, encrypting in place.
    fn seal_one(&mut self, header: FrameHeader, payload: &[u8], out: &mut BytesMut) -> Result<(), Error> {
        let body_len = HEADER_LEN + payload.len() + TAG_LEN;
        let len = u16::try_from(body_len).map_err(|_| Error::PayloadTooLarge {
            len: payload.len(),
            max: u16::MAX as usize - FRAME_OVERHEAD,
        })?;
        out.reserve(LENGTH_PREFIX_LEN + body_len);
        let start = out.len();
        let [len_hi, len_lo] = len.to_be_bytes();
        let [kind, flags, channel] = header.encode();
        out.extend_from_slice(&[len_hi, len_lo, kind, flags, channel]);
        out.extend_from_slice(payload);
        let sealed = self.tx.seal_in_place(&[], &mut out[start + LENGTH_PREFIX_LEN..]);
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                self.timers.sent();
                self.tx_under_key += 1;
                self.stats.frames_sent += 1;
                Ok(())
            }
            Err(e) => {
                // Nothing half-written leaves this function.
                out.truncate(start);
                Err(self.fail(e))
            }
        }
    }
}
