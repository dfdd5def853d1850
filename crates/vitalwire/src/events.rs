//! Security events: a structured record of everything a monitoring system should know about a
//! session (spec/PROTOCOL.md §12), with no secrets and no payload.
//!
//! Handshakes and sessions queue events as they happen; the caller drains them with
//! `poll_event(now)`, which stamps each with the caller-supplied time (the core has no clock,
//! so poll right after each call that feeds input). The queue is bounded: when it is full the
//! oldest event is dropped and counted in [`SecurityCounters::events_dropped`]. Cumulative
//! counters survive draining.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use core::net::IpAddr;

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
    /// An [`EventAggregator`] held back repeated events of one kind from one source during one
    /// interval; this summary counts them.
    EventsSuppressed {
        /// What was held back: the `event` name, with the limit or timer for `limit_exceeded`
        /// and `timer_expired` ([`EventKind::detailed_name`]: `"unknown_peer"`,
        /// `"limit_exceeded/handshake_rate"`, ...).
        of: &'static str,
        /// How many were held back.
        count: u64,
    },
}

/// The timers that end sessions and handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Timer {
    /// The handshake did not finish in time.
    Handshake,
    /// A host: the first frame (the HELLO) of a new connection did not arrive in time.
    Hello,
    /// The peer was silent too long.
    DeadPeer,
    /// The session reached its maximum lifetime.
    Lifetime,
}

impl EventKind {
    /// Every event name, in declaration order: [`EventKind::name`] of each kind. A test that
    /// claims to cover every kind compares what it saw with this list.
    pub const NAMES: [&'static str; 15] = [
        "session_established",
        "session_closed",
        "handshake_failed",
        "unknown_peer",
        "revoked_peer",
        "authentication_failure",
        "protocol_violation",
        "unknown_frame_kind",
        "truncated",
        "rekeyed",
        "limit_exceeded",
        "replay_rejected",
        "timer_expired",
        "fragment_dropped",
        "events_suppressed",
    ];

    /// The kind's place in [`EventKind::NAMES`]. The match is exhaustive: a new kind does not
    /// compile until it has a place, and a place past the end of `NAMES` fails every test that
    /// names it.
    const fn ordinal(&self) -> usize {
        match self {
            EventKind::SessionEstablished { .. } => 0,
            EventKind::SessionClosed { .. } => 1,
            EventKind::HandshakeFailed { .. } => 2,
            EventKind::UnknownPeer => 3,
            EventKind::RevokedPeer => 4,
            EventKind::AuthenticationFailure => 5,
            EventKind::ProtocolViolation { .. } => 6,
            EventKind::UnknownFrameKind { .. } => 7,
            EventKind::Truncated => 8,
            EventKind::Rekeyed { .. } => 9,
            EventKind::LimitExceeded { .. } => 10,
            EventKind::ReplayRejected { .. } => 11,
            EventKind::TimerExpired { .. } => 12,
            EventKind::FragmentDropped => 13,
            EventKind::EventsSuppressed { .. } => 14,
        }
    }

    /// The event's name as it appears in JSON (`"unknown_peer"`, ...).
    pub const fn name(&self) -> &'static str {
        Self::NAMES[self.ordinal()]
    }

    /// The name with the limit or timer for `limit_exceeded` and `timer_expired`
    /// (`"limit_exceeded/handshake_rate"`, `"timer_expired/hello"`), else [`EventKind::name`]:
    /// what an [`EventAggregator`] groups by and names in its summaries.
    pub const fn detailed_name(&self) -> &'static str {
        match self {
            EventKind::LimitExceeded { limit } => match limit {
                Limit::FrameTooLarge => "limit_exceeded/frame_too_large",
                Limit::PayloadTooLarge => "limit_exceeded/payload_too_large",
                Limit::NonceExhausted => "limit_exceeded/nonce_exhausted",
                Limit::HalfOpenHandshakes => "limit_exceeded/half_open_handshakes",
                Limit::Sessions => "limit_exceeded/sessions",
                Limit::MessageTooLarge => "limit_exceeded/message_too_large",
                Limit::HandshakeRate => "limit_exceeded/handshake_rate",
                Limit::WriteTimeout => "limit_exceeded/write_timeout",
            },
            EventKind::TimerExpired { timer } => match timer {
                Timer::Handshake => "timer_expired/handshake",
                Timer::Hello => "timer_expired/hello",
                Timer::DeadPeer => "timer_expired/dead_peer",
                Timer::Lifetime => "timer_expired/lifetime",
            },
            other => other.name(),
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
            EventKind::LimitExceeded { .. }
            | EventKind::FragmentDropped
            | EventKind::EventsSuppressed { .. } => Severity::Warning,
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
    /// The network address the connection or packet came from, when the IO adapter knows it
    /// (serialized as `"source":"192.0.2.7"`; `null` for a serial or BLE link). Filled by the
    /// adapter with [`SecurityEvent::from_source`]: the core never sees addresses.
    #[cfg_attr(feature = "serde", serde(serialize_with = "ser_opt_display"))]
    pub source: Option<IpAddr>,
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
        SecurityEvent { time, severity: kind.severity(), kind, peer, device_id, source: None }
    }

    /// The same event, attributed to the network address `source`.
    pub fn from_source(mut self, source: Option<IpAddr>) -> Self {
        self.source = source;
        self
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
            source: None,
        })
    }
}

/// Events one `(source, kind)` may log per interval before an [`EventAggregator`] holds the
/// rest back (default).
pub const AGGREGATE_PER_INTERVAL: u32 = 10;
/// The aggregation interval, in milliseconds (default).
pub const AGGREGATE_INTERVAL_MS: u64 = 10_000;
/// Most `(source, kind)` pairs an [`EventAggregator`] tracks at once (default).
pub const AGGREGATE_MAX_TRACKED: usize = 4_096;
/// Most lines (events and per-source summaries) an [`EventAggregator`] passes per interval,
/// all sources together (default): a flood from many sources cannot flood the log either.
pub const AGGREGATE_MAX_LINES: u64 = 1_000;

/// Source address, event name and the peer's key: devices behind one address (a NAT, a
/// gateway) get a budget each, so one device's alerts never hide another's.
type AggregateKey = (Option<IpAddr>, &'static str, Option<Fingerprint>);

#[derive(Debug)]
struct Window {
    start: Timestamp,
    seen: u64,
    suppressed: u64,
}

/// Rate-limits the security events of a host so that one source cannot flood the log, while
/// every occurrence stays counted (sans-IO: time comes from the events' own stamps and from
/// the caller).
///
/// Events are grouped by `(source, kind)`, the kind being [`EventKind::detailed_name`]. Within an interval that starts at the first
/// event of a group, the first `per_interval` events pass [`EventAggregator::admit`]; the rest
/// are held back and counted. When the interval ends, [`EventAggregator::poll_summary`]
/// yields one [`EventKind::EventsSuppressed`] event for the group (with its source and the
/// count), and the group is forgotten. `info` events (sessions established, rekeys, normal
/// closes: only a trusted, authenticated peer causes them) always pass.
///
/// Memory is bounded: at most `max_tracked` groups. An event of a new group while the table
/// is full is held back and counted per kind in one overflow summary per interval, with
/// `"source": null`. Summaries waiting to be polled are bounded the same way.
///
/// The log is bounded too: at most `max_lines` events and per-source summaries pass per
/// interval, all sources together ([`EventAggregator::max_lines_per_interval`], default
/// [`AGGREGATE_MAX_LINES`]); beyond that, events and summaries are folded into the overflow
/// summaries. So a flood from many sources costs at most `max_lines` lines plus one line per
/// kind per interval, and every occurrence is still counted.
#[derive(Debug)]
pub struct EventAggregator {
    per_interval: u64,
    interval_ms: u64,
    max_tracked: usize,
    now: Timestamp,
    windows: BTreeMap<AggregateKey, Window>,
    /// Window ends in time order (windows open in time order and all last one interval).
    order: VecDeque<(Timestamp, AggregateKey)>,
    overflow: BTreeMap<&'static str, u64>,
    overflow_end: Option<Timestamp>,
    ready: VecDeque<SecurityEvent>,
    suppressed_total: u64,
    max_lines: u64,
    lines_used: u64,
    lines_end: Option<Timestamp>,
}

impl Default for EventAggregator {
    fn default() -> Self {
        EventAggregator::new(AGGREGATE_PER_INTERVAL, AGGREGATE_INTERVAL_MS, AGGREGATE_MAX_TRACKED)
    }
}

impl EventAggregator {
    /// An aggregator passing `per_interval` events per `(source, kind)` per `interval_ms`,
    /// tracking at most `max_tracked` groups (each at least 1).
    pub fn new(per_interval: u32, interval_ms: u64, max_tracked: usize) -> Self {
        EventAggregator {
            per_interval: u64::from(per_interval),
            interval_ms: interval_ms.max(1),
            max_tracked: max_tracked.max(1),
            now: Timestamp(0),
            windows: BTreeMap::new(),
            order: VecDeque::new(),
            overflow: BTreeMap::new(),
            overflow_end: None,
            ready: VecDeque::new(),
            suppressed_total: 0,
            max_lines: AGGREGATE_MAX_LINES,
            lines_used: 0,
            lines_end: None,
        }
    }

    /// Sets the most lines passed per interval, all sources together (default
    /// [`AGGREGATE_MAX_LINES`]).
    pub fn max_lines_per_interval(mut self, max_lines: u64) -> Self {
        self.max_lines = max_lines;
        self
    }

    /// Takes one line from this interval's budget; `false` once it is spent.
    fn take_line(&mut self) -> bool {
        if self.lines_end.is_none_or(|end| end <= self.now) {
            self.lines_end = Some(Timestamp(self.now.0.saturating_add(self.interval_ms)));
            self.lines_used = 0;
        }
        if self.lines_used < self.max_lines {
            self.lines_used += 1;
            true
        } else {
            false
        }
    }

    /// Returns the event if it should be logged now, `None` if it is held back (and counted
    /// for a later summary). O(log n) in the groups tracked.
    pub fn admit(&mut self, event: SecurityEvent) -> Option<SecurityEvent> {
        self.advance(event.time);
        if event.severity == Severity::Info {
            return Some(event);
        }
        let key = (event.source, event.kind.detailed_name(), event.peer);
        if let Some(w) = self.windows.get_mut(&key) {
            w.seen += 1;
            if w.seen > self.per_interval {
                w.suppressed += 1;
                self.suppressed_total += 1;
                return None;
            }
            return self.within_budget(event, key.1);
        }
        if self.windows.len() >= self.max_tracked {
            self.hold_in_overflow(key.1, 1);
            self.suppressed_total += 1;
            return None;
        }
        let start = self.now;
        self.order.push_back((Timestamp(start.0.saturating_add(self.interval_ms)), key));
        self.windows.insert(key, Window { start, seen: 1, suppressed: 0 });
        if self.per_interval >= 1 {
            self.within_budget(event, key.1)
        } else {
            let w = self.windows.get_mut(&key).expect("just inserted");
            w.suppressed = 1;
            self.suppressed_total += 1;
            None
        }
    }

    /// The event if the interval's line budget allows, else counted in the overflow summary.
    fn within_budget(&mut self, event: SecurityEvent, of: &'static str) -> Option<SecurityEvent> {
        if self.take_line() {
            return Some(event);
        }
        self.hold_in_overflow(of, 1);
        self.suppressed_total += 1;
        None
    }

    /// The next summary due at `now`, if any (poll until `None`).
    pub fn poll_summary(&mut self, now: Timestamp) -> Option<SecurityEvent> {
        self.advance(now);
        self.ready.pop_front()
    }

    /// When the next interval ends (call [`EventAggregator::poll_summary`] then), or `None`.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if !self.ready.is_empty() {
            return Some(self.now);
        }
        let window = self.order.front().map(|(end, _)| *end);
        match (window, self.overflow_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends every interval now (a host shutting down): afterwards `poll_summary` yields a
    /// summary for every group that held events back.
    pub fn flush(&mut self, now: Timestamp) {
        self.advance(now);
        while let Some((_, key)) = self.order.pop_front() {
            self.close_window(key, now);
        }
        self.close_overflow(now);
    }

    /// Groups tracked now (at most `max_tracked`).
    pub fn tracked(&self) -> usize {
        self.windows.len()
    }

    /// Events held back since this aggregator was made (each also counted in a summary).
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total
    }

    fn advance(&mut self, now: Timestamp) {
        // Events from several tasks may be stamped slightly out of order: time never goes
        // back here, so windows keep opening in order.
        self.now = self.now.max(now);
        while let Some(&(end, key)) = self.order.front() {
            if end > self.now {
                break;
            }
            self.order.pop_front();
            self.close_window(key, end);
        }
        if self.overflow_end.is_some_and(|end| end <= self.now) {
            self.close_overflow(self.now);
        }
    }

    fn close_window(&mut self, key: AggregateKey, at: Timestamp) {
        let Some(w) = self.windows.remove(&key) else { return };
        if w.suppressed == 0 {
            return;
        }
        debug_assert!(w.start <= at);
        if self.ready.len() >= self.max_tracked || !self.take_line() {
            // Over the line budget, or nobody is draining summaries: fold this one into the
            // overflow summary.
            self.hold_in_overflow(key.1, w.suppressed);
            return;
        }
        self.ready.push_back(Self::summary(key, w.suppressed, at));
    }

    fn hold_in_overflow(&mut self, of: &'static str, count: u64) {
        *self.overflow.entry(of).or_insert(0) += count;
        if self.overflow_end.is_none() {
            self.overflow_end = Some(Timestamp(self.now.0.saturating_add(self.interval_ms)));
        }
    }

    fn close_overflow(&mut self, at: Timestamp) {
        self.overflow_end = None;
        // At most one summary per event name: bounded by the number of kinds.
        for (of, count) in core::mem::take(&mut self.overflow) {
            self.ready.push_back(Self::summary((None, of, None), count, at));
        }
    }

    fn summary(key: AggregateKey, count: u64, at: Timestamp) -> SecurityEvent {
        SecurityEvent::new(EventKind::EventsSuppressed { of: key.1, count }, at, key.2, None)
            .from_source(key.0)
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
        assert_eq!(v["source"], serde_json::Value::Null);
        let from = SecurityEvent::new(EventKind::UnknownPeer, Timestamp(2), None, None)
            .from_source(Some(core::net::IpAddr::from([192, 0, 2, 7])));
        let v: serde_json::Value = serde_json::from_str(&from.to_json_line()).unwrap();
        assert_eq!((v["event"].as_str(), v["source"].as_str()), (Some("unknown_peer"), Some("192.0.2.7")));
        let sum = EventKind::EventsSuppressed { of: "limit_exceeded", count: 5 };
        let v: serde_json::Value =
            serde_json::from_str(&SecurityEvent::new(sum, Timestamp(3), None, None).to_json_line()).unwrap();
        assert_eq!(
            (v["event"].as_str(), v["of"].as_str(), v["count"].as_u64()),
            (Some("events_suppressed"), Some("limit_exceeded"), Some(5))
        );
        let v: serde_json::Value =
            serde_json::from_str(&q.poll(Timestamp(1)).unwrap().to_json_line()).unwrap();
        assert_eq!((v["event"].as_str(), v["direction"].as_str()), (Some("rekeyed"), Some("inbound")));
    }
}

#[cfg(test)]
mod aggregator_tests {
    use super::*;

    fn refusal(ip: [u8; 4], t: u64) -> SecurityEvent {
        SecurityEvent::new(EventKind::LimitExceeded { limit: Limit::HandshakeRate }, Timestamp(t), None, None)
            .from_source(Some(IpAddr::from(ip)))
    }

    fn drain(a: &mut EventAggregator, now: u64) -> alloc::vec::Vec<SecurityEvent> {
        core::iter::from_fn(|| a.poll_summary(Timestamp(now))).collect()
    }

    #[test]
    fn devices_behind_one_address_each_get_their_own_budget() {
        let mut a = EventAggregator::new(3, 1_000, 16);
        let from = Some(IpAddr::from([192, 0, 2, 9]));
        let alert = |peer: u8, t: u64| {
            SecurityEvent::new(
                EventKind::AuthenticationFailure,
                Timestamp(t),
                Some(Fingerprint([peer; 10])),
                None,
            )
            .from_source(from)
        };
        // Device 1 floods: its own alerts are held back after 3 ...
        let passed = (0..50).filter(|i| a.admit(alert(1, 10 + i)).is_some()).count();
        assert_eq!(passed, 3);
        // ... but device 2 behind the same address is still heard, by name.
        let other = a.admit(alert(2, 100)).expect("another device's alert passes");
        assert_eq!(other.peer, Some(Fingerprint([2; 10])));
        // The summary names the device whose alerts it counts.
        let s = drain(&mut a, 2_000);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].peer, Some(Fingerprint([1; 10])));
        assert_eq!(s[0].kind, EventKind::EventsSuppressed { of: "authentication_failure", count: 47 });
    }

    #[test]
    fn a_flooding_source_logs_its_first_events_then_one_count_per_interval() {
        let mut a = EventAggregator::new(3, 1_000, 16);
        let passed = (0..1_000).filter(|i| a.admit(refusal([192, 0, 2, 1], 10 + i / 10)).is_some()).count();
        assert_eq!(passed, 3);
        // Another source and another kind from the same source are not held back.
        assert!(a.admit(refusal([192, 0, 2, 2], 50)).is_some());
        let other = SecurityEvent::new(EventKind::UnknownPeer, Timestamp(60), None, None)
            .from_source(Some(IpAddr::from([192, 0, 2, 1])));
        assert!(a.admit(other).is_some());
        let other_limit = SecurityEvent::new(
            EventKind::LimitExceeded { limit: Limit::FrameTooLarge },
            Timestamp(70),
            None,
            None,
        )
        .from_source(Some(IpAddr::from([192, 0, 2, 1])));
        assert!(a.admit(other_limit).is_some(), "another limit is another group");
        assert!(drain(&mut a, 999).is_empty(), "the interval has not ended");
        assert_eq!(a.poll_timeout(), Some(Timestamp(1_010)));
        let summaries = drain(&mut a, 1_010);
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        let s = &summaries[0];
        assert_eq!(s.kind, EventKind::EventsSuppressed { of: "limit_exceeded/handshake_rate", count: 997 });
        assert_eq!(s.source, Some(IpAddr::from([192, 0, 2, 1])));
        assert_eq!(s.time, Timestamp(1_010));
        assert_eq!(s.severity, Severity::Warning);
        assert_eq!(a.suppressed_total(), 997);
        // Quiet groups expire without a summary; a new interval starts afresh.
        assert!(drain(&mut a, 5_000).is_empty());
        assert_eq!(a.tracked(), 0);
        assert!(a.admit(refusal([192, 0, 2, 1], 5_001)).is_some());
    }

    #[test]
    fn memory_is_bounded_and_overflow_is_counted_not_lost() {
        let mut a = EventAggregator::new(1, 1_000, 8);
        let mut passed = 0;
        for i in 0..10_000u32 {
            let b = i.to_be_bytes();
            passed += usize::from(a.admit(refusal([10, b[1], b[2], b[3]], 100)).is_some());
            assert!(a.tracked() <= 8);
        }
        assert_eq!(passed, 8, "the first event of each tracked source");
        let summaries = drain(&mut a, 1_100);
        assert_eq!(summaries.len(), 1);
        assert_eq!(
            summaries[0].kind,
            EventKind::EventsSuppressed { of: "limit_exceeded/handshake_rate", count: 9_992 }
        );
        assert_eq!(summaries[0].source, None);
        assert_eq!(passed as u64 + a.suppressed_total(), 10_000, "every event is logged or counted");
    }

    #[test]
    fn a_flood_from_many_sources_is_bounded_by_the_line_budget() {
        let mut a = EventAggregator::new(10, 1_000, 4_096).max_lines_per_interval(50);
        let mut lines = 0u64;
        for round in 0..5u64 {
            for i in 0..2_000u32 {
                let b = i.to_be_bytes();
                lines += u64::from(a.admit(refusal([10, b[1], b[2], b[3]], 10 + round)).is_some());
            }
        }
        assert_eq!(lines, 50, "the budget of the interval");
        let summaries = drain(&mut a, 2_000);
        let counted: u64 = summaries
            .iter()
            .map(|s| match s.kind {
                EventKind::EventsSuppressed { count, .. } => count,
                _ => 0,
            })
            .sum();
        assert!(summaries.len() <= 2, "per-source summaries fold into one overflow line: {summaries:?}");
        assert_eq!(lines + counted, 10_000, "every event is logged or counted");
        // The next interval has a fresh budget.
        assert!(a.admit(refusal([10, 0, 0, 1], 2_001)).is_some());
    }

    #[test]
    fn info_events_always_pass_and_flush_ends_every_interval() {
        let mut a = EventAggregator::new(0, 60_000, 4);
        let ok = SecurityEvent::new(
            EventKind::Rekeyed { direction: Direction::Inbound },
            Timestamp(1),
            None,
            None,
        );
        assert!((0..100).all(|_| a.admit(ok.clone()).is_some()));
        assert!(a.admit(refusal([192, 0, 2, 9], 2)).is_none());
        // Stamps slightly out of order (several tasks) are fine.
        assert!(a.admit(refusal([192, 0, 2, 9], 1)).is_none());
        a.flush(Timestamp(3));
        let s = drain(&mut a, 3);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].kind, EventKind::EventsSuppressed { of: "limit_exceeded/handshake_rate", count: 2 });
        assert_eq!(a.poll_timeout(), None);
    }
}
