//! The adapters' clocks.
//!
//! The core takes time as an argument ([`Timestamp`], milliseconds) and uses it for two
//! things: its timers (keepalive, dead peer, handshake timeout, rekey by time, lifetime), which
//! need a clock that never jumps, and the stamps on security events, which an operator reads as
//! wall-clock time. [`monotonic`] serves both: it is the wall clock read once, when the process
//! first asks, plus the time elapsed on the monotonic clock since then. A wall-clock step (NTP,
//! an operator, a virtual machine resumed) therefore neither fires nor freezes any timer; event
//! stamps stay close to the wall clock and drift from it only by the steps it took.
//! [`wall`] is the wall clock itself, for records that must carry it (telemetry lines).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vitalwire::Timestamp;

fn origin() -> &'static (Instant, u64) {
    static ORIGIN: OnceLock<(Instant, u64)> = OnceLock::new();
    ORIGIN.get_or_init(|| (Instant::now(), wall().0))
}

/// A simulated step of the wall clock, in milliseconds (tests only; 0 otherwise).
static WALL_STEP_MS: AtomicI64 = AtomicI64::new(0);

/// The wall clock now, in milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn wall() -> Timestamp {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let step = WALL_STEP_MS.load(Ordering::Relaxed);
    Timestamp(if step >= 0 { ms.saturating_add(step as u64) } else { ms.saturating_sub(step.unsigned_abs()) })
}

/// Steps what [`wall`] returns by `ms` milliseconds (negative: backwards), as NTP or an
/// operator stepping the system clock would, for the whole process. For tests of clock steps
/// only; [`monotonic`] is not affected once it has been read.
#[doc(hidden)]
pub fn step_wall_clock_for_testing_only(ms: i64) {
    WALL_STEP_MS.fetch_add(ms, Ordering::Relaxed);
}

/// A clock that never goes backwards or jumps: the time to pass to the core.
pub fn monotonic() -> Timestamp {
    let (start, base) = *origin();
    let elapsed = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    Timestamp(base.saturating_add(elapsed))
}

/// The tokio instant at which the core's deadline `at` (a [`monotonic`] timestamp) falls,
/// given `now` on the same clock. Deadlines in the past are "now"; a deadline too far ahead to
/// represent (the core's "never") is capped one day ahead, so no `Instant` arithmetic can
/// overflow.
pub fn deadline(now: Timestamp, at: Timestamp) -> tokio::time::Instant {
    const CAP: Duration = Duration::from_secs(86_400);
    let wait = Duration::from_millis(at.0.saturating_sub(now.0)).min(CAP);
    tokio::time::Instant::now() + wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back_and_tracks_elapsed_time() {
        let a = monotonic();
        std::thread::sleep(Duration::from_millis(30));
        let b = monotonic();
        assert!(b.0 >= a.0 + 30, "{a:?} {b:?}");
        assert!(b.0 < a.0 + 5_000);
        // Starts at the wall clock.
        assert!(wall().0.abs_diff(monotonic().0) < 60_000);
    }

    #[test]
    fn deadlines_are_clamped() {
        let now = Timestamp(1_000);
        let soon = tokio::time::Instant::now();
        assert!(deadline(now, Timestamp(0)) >= soon);
        assert!(deadline(now, Timestamp(0)) <= tokio::time::Instant::now() + Duration::from_millis(50));
        let never = deadline(now, Timestamp(u64::MAX));
        assert!(never <= tokio::time::Instant::now() + Duration::from_secs(86_401));
    }
}
