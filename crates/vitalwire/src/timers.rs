//! Session timers, sans-IO (spec/PROTOCOL.md §7.4): the core never reads a clock. The caller
//! asks [`TimerState::next_deadline`] (through the session's `poll_timeout`) when to call back and
//! passes the current time to `handle_timeout(now)`.
//!
//! | timer | after | effect |
//! |---|---|---|
//! | keepalive | nothing sent for `keepalive_ms` | a PING is queued |
//! | dead peer | nothing received for `dead_peer_ms` | the session fails (`IDLE_TIMEOUT`) |
//! | rekey by time | a sending key older than `rekey_after_ms` | the sending key is rolled |
//! | lifetime | `max_lifetime_ms` since the session started | the session ends (`SESSION_EXPIRED`) |
//!
//! Stream sessions do not take the time on every frame: they flag activity, and the next
//! `handle_timeout(now)` stamps it. A deadline computed from an older stamp only makes the
//! caller check early; it never fires a timer that activity has reset.

use crate::events::Timestamp;

/// Timer settings; `None` disables a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// Send a PING when nothing was sent for this long.
    pub keepalive_ms: Option<u64>,
    /// Fail the session when nothing was received for this long.
    pub dead_peer_ms: Option<u64>,
    /// Roll the sending key when it is this old.
    pub rekey_after_ms: Option<u64>,
    /// End the session this long after it started.
    pub max_lifetime_ms: Option<u64>,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            keepalive_ms: Some(15_000),
            dead_peer_ms: Some(60_000),
            rekey_after_ms: Some(120_000),
            max_lifetime_ms: Some(24 * 3600 * 1000),
        }
    }
}

impl TimerConfig {
    /// Every timer off.
    pub const DISABLED: TimerConfig =
        TimerConfig { keepalive_ms: None, dead_peer_ms: None, rekey_after_ms: None, max_lifetime_ms: None };
}

/// What a timer check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimerActions {
    /// Queue a PING.
    pub keepalive: bool,
    /// Roll the sending key.
    pub rekey: bool,
    /// The peer is silent: fail.
    pub dead_peer: bool,
    /// The session is too old: end it.
    pub expired: bool,
}

/// The clock stamps of one session.
#[derive(Debug, Clone)]
pub(crate) struct TimerState {
    pub config: TimerConfig,
    started: Option<Timestamp>,
    last_rx: Timestamp,
    last_tx: Timestamp,
    key_since: Timestamp,
    rx_activity: bool,
    tx_activity: bool,
}

impl TimerState {
    pub fn new(config: TimerConfig) -> Self {
        TimerState {
            config,
            started: None,
            last_rx: Timestamp(0),
            last_tx: Timestamp(0),
            key_since: Timestamp(0),
            rx_activity: false,
            tx_activity: false,
        }
    }

    /// Starts the clocks (idempotent).
    pub fn start(&mut self, now: Timestamp) {
        if self.started.is_none() {
            self.started = Some(now);
            self.last_rx = now;
            self.last_tx = now;
            self.key_since = now;
        }
    }

    pub fn received(&mut self) {
        self.rx_activity = true;
    }

    pub fn sent(&mut self) {
        self.tx_activity = true;
    }

    pub fn received_at(&mut self, now: Timestamp) {
        self.start(now);
        self.last_rx = now;
    }

    pub fn sent_at(&mut self, now: Timestamp) {
        self.start(now);
        self.last_tx = now;
    }

    pub fn rekeyed_at(&mut self, now: Timestamp) {
        self.key_since = now;
    }

    /// The earliest moment a timer may fire.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let started = self.started?;
        let c = &self.config;
        [
            c.keepalive_ms.map(|d| self.last_tx.0.saturating_add(d)),
            c.dead_peer_ms.map(|d| self.last_rx.0.saturating_add(d)),
            c.rekey_after_ms.map(|d| self.key_since.0.saturating_add(d)),
            c.max_lifetime_ms.map(|d| started.0.saturating_add(d)),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(Timestamp)
    }

    /// Stamps flagged activity and says which timers fire at `now`.
    pub fn check(&mut self, now: Timestamp) -> TimerActions {
        self.start(now);
        if core::mem::take(&mut self.rx_activity) {
            self.last_rx = now;
        }
        if core::mem::take(&mut self.tx_activity) {
            self.last_tx = now;
        }
        let c = self.config;
        let due = |since: Timestamp, d: Option<u64>| d.is_some_and(|d| now.0 >= since.0.saturating_add(d));
        let actions = TimerActions {
            keepalive: due(self.last_tx, c.keepalive_ms),
            rekey: due(self.key_since, c.rekey_after_ms),
            dead_peer: due(self.last_rx, c.dead_peer_ms),
            expired: self.started.is_some_and(|s| due(s, c.max_lifetime_ms)),
        };
        if actions.keepalive {
            self.last_tx = now;
        }
        if actions.rekey {
            self.key_since = now;
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_on_schedule_and_activity_resets_them() {
        let cfg = TimerConfig {
            keepalive_ms: Some(10),
            dead_peer_ms: Some(30),
            rekey_after_ms: Some(25),
            max_lifetime_ms: Some(100),
        };
        let mut t = TimerState::new(cfg);
        assert_eq!(t.next_deadline(), None, "not started");
        t.start(Timestamp(0));
        assert_eq!(t.next_deadline(), Some(Timestamp(10)));
        assert_eq!(t.check(Timestamp(5)), TimerActions::default());
        let a = t.check(Timestamp(10));
        assert!(a.keepalive && !a.dead_peer);
        t.received();
        let a = t.check(Timestamp(29));
        assert!(!a.dead_peer, "activity stamped at 29");
        assert!(a.rekey, "the key is 29 ms old");
        assert!(!t.check(Timestamp(30)).rekey, "rolled at 29");
        assert!(!t.check(Timestamp(58)).dead_peer);
        assert!(t.check(Timestamp(59)).dead_peer);
        assert!(t.check(Timestamp(100)).expired);
        let off = TimerState::new(TimerConfig::DISABLED);
        assert_eq!(off.next_deadline(), None);
    }

    /// Any caller-supplied times and durations, the extremes included and a clock that jumps
    /// back, are taken without overflow; deadlines saturate at the end of time.
    #[test]
    fn extreme_times_and_durations_saturate() {
        for d in [Some(0), Some(1), Some(u64::MAX - 1), Some(u64::MAX), None] {
            let cfg = TimerConfig { keepalive_ms: d, dead_peer_ms: d, rekey_after_ms: d, max_lifetime_ms: d };
            for times in
                [[0, u64::MAX, 0, u64::MAX], [u64::MAX, 0, 1, u64::MAX], [u64::MAX - 1, u64::MAX, 0, 0]]
            {
                let mut t = TimerState::new(cfg);
                let mut latest = 0;
                for now in times {
                    let forward = now >= latest;
                    latest = latest.max(now);
                    t.received();
                    t.sent();
                    let a = t.check(Timestamp(now));
                    let _ = t.next_deadline();
                    match d {
                        None => assert_eq!(a, TimerActions::default()),
                        Some(0) if forward => assert!(a.keepalive && a.rekey && a.dead_peer && a.expired),
                        Some(_) => {}
                    }
                }
            }
        }
        let mut t = TimerState::new(TimerConfig { max_lifetime_ms: Some(u64::MAX), ..TimerConfig::DISABLED });
        t.start(Timestamp(u64::MAX));
        assert_eq!(t.next_deadline(), Some(Timestamp(u64::MAX)), "saturated, not wrapped");
        assert!(t.check(Timestamp(u64::MAX)).expired);
        assert!(!t.check(Timestamp(0)).expired, "a clock that jumps back fires nothing early");
    }
}
