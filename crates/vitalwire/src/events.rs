//! Security events: a structured record of everything a monitoring system should know about a
//! session (spec/PROTOCOL.md §12), with no secrets and no payload.
//!
//! Handshakes and sessions queue events as they happen; the caller drains them with
//! `poll_event(now)`, which stamps each with the caller-supplied time (the core has no clock,
//! so poll right after each call that feeds input). The queue is bounded: when it is full the
//! oldest event is dropped and counted in [`SecurityCounters::events_dropped`]. Cumulative
//! counters survive draining.

use alloc::collections::VecDeque;
use alloc::string::String;

use crate::error::{Error, HandshakeError, ProtocolError};
use crate::frame::CloseCode;
use crate::handshake::Role;
use crate::keys::Fingerprint;
use crate::profile::{CipherSuite, Profile};

/// A caller-supplied point in time: milliseconds since the Unix epoch by convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Timestamp(pub u64);

/// Which direction a key or frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "snake_case"))]
pub enum Direction {
    /// Sent by this side.
    Outbound,
    /// Received from the peer.
    Inbound,
}

/// A limit that was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Limit {
    /// A received frame longer than this side accepts.
    FrameTooLarge,
    /// A payload too large for the peer's frame limit (refused locally).
    PayloadTooLarge,
    /// The 2^64-1 nonces of a direction are used up.
    NonceExhausted,
    /// Too many handshakes in progress at a host.
    HalfOpenHandshakes,
    /// Too many sessions at a host.
    Sessions,
    /// A message too large to reassemble.
    MessageTooLarge,
    /// A source started handshakes faster than its rate limit.
    HandshakeRate,
    /// A peer did not read what the host wrote in time (slow reader).
    WriteTimeout,
}

/// How urgent an event is for an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "snake_case"))]
pub enum Severity {
    /// Normal operation.
    Info,
    /// Unusual, possibly benign.
    Warning,
    /// Evidence of an attack or of tampering.
    Alert,
}

impl Severity {
    /// `"info"`, `"warning"` or `"alert"`.
    pub const fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Alert => "alert",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(tag = "event", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum EventKind {
    /// A handshake completed; the session is established.
    SessionEstablished {
        /// This side's role.
        #[cfg_attr(feature = "serde", serde(serialize_with = "ser_debug"))]
        role: Role,
        /// Profile used.
        #[cfg_attr(feature = "serde", serde(serialize_with = "ser_display"))]
        profile: Profile,
        /// Suite used.
        #[cfg_attr(feature = "serde", serde(serialize_with = "ser_display"))]
        suite: CipherSuite,
        /// Whether this is a pairing session (data refused until re-established).
        pairing: bool,
    },
    /// The session ended with a CLOSE.
    SessionClosed {
        /// The reason code.
        #[cfg_attr(feature = "serde", serde(serialize_with = "ser_display"))]
        code: CloseCode,
        /// Whether the peer closed first.
        by_peer: bool,
    },
    /// A handshake failed.
    HandshakeFailed {
        /// Why.
        #[cfg_attr(feature = "serde", serde(serialize_with = "ser_display"))]
        reason: Error,
    },
    /// A peer authenticated with a key the trust policy does not know.
    UnknownPeer,
    /// A peer authenticated with a revoked key (or was revoked during its session).
    RevokedPeer,
    /// A transport frame failed authentication (tag mismatch: forged, corrupted, replayed or
    /// reordered).
    AuthenticationFailure,
    /// An authenticated frame broke the protocol's rules.
    ProtocolViolation {
        /// Which rule.
        #[cfg_attr(feature = "serde", serde(serialize_with = "ser_display"))]
        error: ProtocolError,
    },
    /// A frame of unknown kind was discarded.
    UnknownFrameKind {
        /// Its kind byte.
        kind: u8,
    },
    /// The stream ended without an authenticated CLOSE.
    Truncated,
    /// A key was rolled forward with REKEY().
    Rekeyed {
        /// Which direction's key.
        direction: Direction,
    },
    /// A limit was hit.
    LimitExceeded {
        /// Which limit.
        limit: Limit,
    },
    /// Datagram mode: a datagram with a counter seen before, or older than the window.
    ReplayRejected {
        /// Whether it was a duplicate (else: older than the window).
        duplicate: bool,
    },
    /// A timer ended the session or the handshake.
    TimerExpired {
        /// Which one.
        timer: Timer,
    },
    /// Datagram mode: a fragment was dropped.
    FragmentDropped,
}

/// The timers that end sessions and handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Timer {
    /// The handshake did not finish in time.
    Handshake,
    /// The peer was silent too long.
    DeadPeer,
    /// The session reached its maximum lifetime.
    Lifetime,
}

impl EventKind {
    /// The event's name as it appears in JSON (`"unknown_peer"`, ...).
    pub const fn name(&self) -> &'static str {
        match self {
            EventKind::SessionEstablished { .. } => "session_established",
            EventKind::SessionClosed { .. } => "session_closed",
            EventKind::HandshakeFailed { .. } => "handshake_failed",
            EventKind::UnknownPeer => "unknown_peer",
            EventKind::RevokedPeer => "revoked_peer",
            EventKind::AuthenticationFailure => "authentication_failure",
            EventKind::ProtocolViolation { .. } => "protocol_violation",
            EventKind::UnknownFrameKind { .. } => "unknown_frame_kind",
            EventKind::Truncated => "truncated",
            EventKind::Rekeyed { .. } => "rekeyed",
            EventKind::LimitExceeded { .. } => "limit_exceeded",
            EventKind::ReplayRejected { .. } => "replay_rejected",
            EventKind::TimerExpired { .. } => "timer_expired",
            EventKind::FragmentDropped => "fragment_dropped",
        }
    }

    /// The event's severity.
    pub fn severity(&self) -> Severity {
        match self {
            EventKind::SessionEstablished { .. } | EventKind::Rekeyed { .. } => Severity::Info,
            EventKind::SessionClosed { code, .. }
                if *code == CloseCode::NORMAL || *code == CloseCode::GOING_AWAY =>
            {
                Severity::Info
            }
            EventKind::SessionClosed { .. } | EventKind::UnknownFrameKind { .. } | EventKind::Truncated => {
                Severity::Warning
            }
            EventKind::LimitExceeded { .. } | EventKind::FragmentDropped => Severity::Warning,
            EventKind::TimerExpired { timer: Timer::Lifetime } => Severity::Info,
            EventKind::TimerExpired { .. } => Severity::Warning,
            EventKind::ReplayRejected { .. } => Severity::Alert,
            EventKind::HandshakeFailed { reason } => match reason {
                Error::Handshake(
                    HandshakeError::AuthenticationFailed
                    | HandshakeError::UnexpectedPeerKey
                    | HandshakeError::UnknownPeer
                    | HandshakeError::RevokedPeer
                    | HandshakeError::PairingCommitmentMismatch,
                ) => Severity::Alert,
                _ => Severity::Warning,
            },
            EventKind::UnknownPeer
            | EventKind::RevokedPeer
            | EventKind::AuthenticationFailure
            | EventKind::ProtocolViolation { .. } => Severity::Alert,
        }
    }
}

#[cfg(feature = "serde")]
fn ser_display<T: core::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[cfg(feature = "serde")]
fn ser_debug<T: core::fmt::Debug, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&alloc::format!("{v:?}").to_lowercase())
}

/// One security event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SecurityEvent {
    /// When (the time passed to `poll_event`).
    pub time: Timestamp,
    /// How urgent.
    pub severity: Severity,
    /// What happened.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub kind: EventKind,
    /// The peer's key fingerprint, when known.
    #[cfg_attr(feature = "serde", serde(serialize_with = "ser_opt_display"))]
    pub peer: Option<Fingerprint>,
    /// The device id the peer claimed in the handshake, when known.
    pub device_id: Option<String>,
}

#[cfg(feature = "serde")]
fn ser_opt_display<T: core::fmt::Display, S: serde::Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

impl SecurityEvent {
    /// An event raised outside a handshake or session (by an IO adapter: rate limits,
    /// connection limits), with the caller's time.
    pub fn new(
        kind: EventKind,
        time: Timestamp,
        peer: Option<Fingerprint>,
        device_id: Option<String>,
    ) -> Self {
        SecurityEvent { time, severity: kind.severity(), kind, peer, device_id }
    }
}

#[cfg(feature = "serde")]
impl SecurityEvent {
    /// The event as one line of JSON (for JSON Lines logs), without a trailing newline.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"event\":\"unserializable\"}"))
    }
}

/// Cumulative counts of security-relevant occurrences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SecurityCounters {
    /// Handshakes that failed.
    pub handshakes_failed: u64,
    /// Peers rejected as unknown.
    pub unknown_peers: u64,
    /// Peers rejected as revoked.
    pub revoked_peers: u64,
    /// Transport frames that failed authentication.
    pub authentication_failures: u64,
    /// Protocol violations.
    pub protocol_violations: u64,
    /// Truncated streams.
    pub truncations: u64,
    /// Rekeys, both directions.
    pub rekeys: u64,
    /// Limits hit.
    pub limits_exceeded: u64,
    /// Datagrams refused as replays.
    pub replays: u64,
    /// Fragments dropped.
    pub fragments_dropped: u64,
    /// Events dropped because the queue was full.
    pub events_dropped: u64,
}

impl SecurityCounters {
    /// Counts one event.
    pub fn count(&mut self, kind: &EventKind) {
        match kind {
            EventKind::HandshakeFailed { .. } => self.handshakes_failed += 1,
            EventKind::UnknownPeer => self.unknown_peers += 1,
            EventKind::RevokedPeer => self.revoked_peers += 1,
            EventKind::AuthenticationFailure => self.authentication_failures += 1,
            EventKind::ProtocolViolation { .. } => self.protocol_violations += 1,
            EventKind::Truncated => self.truncations += 1,
            EventKind::Rekeyed { .. } => self.rekeys += 1,
            EventKind::LimitExceeded { .. } => self.limits_exceeded += 1,
            EventKind::ReplayRejected { .. } => self.replays += 1,
            EventKind::FragmentDropped => self.fragments_dropped += 1,
            _ => {}
        }
    }

    /// Adds another set of counters (a host summing over sessions).
    pub fn add(&mut self, other: &SecurityCounters) {
        self.handshakes_failed += other.handshakes_failed;
        self.unknown_peers += other.unknown_peers;
        self.revoked_peers += other.revoked_peers;
        self.authentication_failures += other.authentication_failures;
        self.protocol_violations += other.protocol_violations;
        self.truncations += other.truncations;
        self.rekeys += other.rekeys;
        self.limits_exceeded += other.limits_exceeded;
        self.replays += other.replays;
        self.fragments_dropped += other.fragments_dropped;
        self.events_dropped += other.events_dropped;
    }
}

/// Most events kept undrained per handshake or session.
pub const EVENT_QUEUE_CAPACITY: usize = 64;

/// The bounded queue of a handshake or session.
#[derive(Debug)]
pub(crate) struct EventQueue {
    queue: VecDeque<EventKind>,
    pub(crate) counters: SecurityCounters,
    pub(crate) peer: Option<Fingerprint>,
    pub(crate) device_id: Option<String>,
}

impl Default for EventQueue {
    fn default() -> Self {
        EventQueue {
            // Allocated once up front so that recording an event never allocates later.
            queue: VecDeque::with_capacity(EVENT_QUEUE_CAPACITY),
            counters: SecurityCounters::default(),
            peer: None,
            device_id: None,
        }
    }
}

impl EventQueue {
    pub(crate) fn push(&mut self, kind: EventKind) {
        self.counters.count(&kind);
        if self.queue.len() >= EVENT_QUEUE_CAPACITY {
            self.queue.pop_front();
            self.counters.events_dropped += 1;
        }
        self.queue.push_back(kind);
    }

    pub(crate) fn poll(&mut self, now: Timestamp) -> Option<SecurityEvent> {
        let kind = self.queue.pop_front()?;
        Some(SecurityEvent {
            time: now,
            severity: kind.severity(),
            kind,
            peer: self.peer,
            device_id: self.device_id.clone(),
        })
    }
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;
    use crate::keys::PublicKey;

    #[test]
    fn events_serialize_to_one_json_line() {
        let mut q = EventQueue {
            peer: Some(PublicKey::from_bytes([1; 32]).fingerprint()),
            device_id: Some("PM-0001".into()),
            ..EventQueue::default()
        };
        q.push(EventKind::SessionClosed { code: CloseCode::UNAUTHORIZED, by_peer: true });
        q.push(EventKind::Rekeyed { direction: Direction::Inbound });
        let line = q.poll(Timestamp(1_700_000_000_000)).unwrap().to_json_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(v["event"], "session_closed");
        assert_eq!(
            EventKind::SessionClosed { code: CloseCode::NORMAL, by_peer: true }.name(),
            "session_closed"
        );
        assert_eq!(v["code"], "unauthorized (0x0005)");
        assert_eq!(v["by_peer"], true);
        assert_eq!(v["severity"], "warning");
        assert_eq!(v["time"], 1_700_000_000_000u64);
        assert_eq!(v["device_id"], "PM-0001");
        assert_eq!(v["peer"].as_str().unwrap().len(), 19);
        let v: serde_json::Value =
            serde_json::from_str(&q.poll(Timestamp(1)).unwrap().to_json_line()).unwrap();
        assert_eq!((v["event"].as_str(), v["direction"].as_str()), (Some("rekeyed"), Some("inbound")));
    }
}
