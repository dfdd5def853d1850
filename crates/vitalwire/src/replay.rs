//! The sliding replay window of datagram mode (spec/PROTOCOL.md §13.4).
//!
//! ```text
//!            window (size W bits)
//!   ... [ max-W+1 ............................ max ]  max+1 ...
//!        too old  |  accepted once each (bitmap)    | new: slides the window
//! ```
//!
//! [`ReplayWindow::check`] says whether a counter *could* be accepted without changing
//! anything; [`ReplayWindow::accept`] records it and is called only after the frame
//! authenticated, so a forged frame never moves the window.

use alloc::vec;
use alloc::vec::Vec;

/// Default window size in frames.
pub const DEFAULT_WINDOW: u32 = 1024;

/// Why a counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayVerdict {
    /// Seen before.
    Duplicate,
    /// Older than the window.
    TooOld,
}

/// A bitmap over the last `size` counters below the highest accepted one.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    bits: Vec<u64>,
    size: u64,
    /// Highest counter accepted so far, if any.
    max: Option<u64>,
}

impl ReplayWindow {
    /// A window of `size` frames (rounded up to a multiple of 64, at least 64).
    pub fn new(size: u32) -> Self {
        let words = (size.max(64) as usize).div_ceil(64);
        ReplayWindow { bits: vec![0; words], size: (words * 64) as u64, max: None }
    }

    /// The window size in frames.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Highest counter accepted.
    pub fn max(&self) -> Option<u64> {
        self.max
    }

    fn bit(&self, counter: u64) -> (usize, u64) {
        let slot = counter % self.size;
        ((slot / 64) as usize, 1u64 << (slot % 64))
    }

    /// Whether `counter` would be accepted. Changes nothing.
    pub fn check(&self, counter: u64) -> Result<(), ReplayVerdict> {
        let Some(max) = self.max else { return Ok(()) };
        if counter > max {
            return Ok(());
        }
        if max - counter >= self.size {
            return Err(ReplayVerdict::TooOld);
        }
        let (word, mask) = self.bit(counter);
        if self.bits[word] & mask != 0 {
            Err(ReplayVerdict::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Records an authenticated counter (after [`ReplayWindow::check`] passed).
    pub fn accept(&mut self, counter: u64) {
        match self.max {
            Some(max) if counter <= max => {}
            Some(max) => {
                // Clear the slots the window slides over.
                let advance = counter - max;
                if advance >= self.size {
                    self.bits.iter_mut().for_each(|w| *w = 0);
                } else {
                    for c in max + 1..=counter {
                        let (word, mask) = self.bit(c);
                        self.bits[word] &= !mask;
                    }
                }
                self.max = Some(counter);
            }
            None => self.max = Some(counter),
        }
        let (word, mask) = self.bit(counter);
        self.bits[word] |= mask;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_window_any_order_once_each() {
        let mut w = ReplayWindow::new(128);
        for c in [5u64, 3, 9, 4, 100, 0] {
            assert_eq!(w.check(c), Ok(()), "{c}");
            w.accept(c);
            assert_eq!(w.check(c), Err(ReplayVerdict::Duplicate));
        }
        assert_eq!(w.check(1), Ok(()));
        w.accept(300);
        assert_eq!(w.check(100), Err(ReplayVerdict::TooOld));
        assert_eq!(w.check(173), Ok(()));
        assert_eq!(w.check(172), Err(ReplayVerdict::TooOld));
        w.accept(10_000);
        assert_eq!(w.check(300), Err(ReplayVerdict::TooOld));
        assert_eq!(w.check(9_999), Ok(()));
        assert_eq!(w.check(10_000), Err(ReplayVerdict::Duplicate));
    }

    /// Counters at the ends of the range: no overflow, the window still slides and refuses.
    #[test]
    fn extreme_counters() {
        let mut w = ReplayWindow::new(64);
        w.accept(0);
        assert_eq!(w.check(u64::MAX), Ok(()));
        w.accept(u64::MAX);
        assert_eq!(w.check(u64::MAX), Err(ReplayVerdict::Duplicate));
        assert_eq!(w.check(0), Err(ReplayVerdict::TooOld));
        assert_eq!(w.check(u64::MAX - 63), Ok(()));
        assert_eq!(w.check(u64::MAX - 64), Err(ReplayVerdict::TooOld));
        w.accept(u64::MAX - 63);
        assert_eq!(w.check(u64::MAX - 63), Err(ReplayVerdict::Duplicate));
        let mut w = ReplayWindow::new(128);
        w.accept(u64::MAX - 1);
        w.accept(u64::MAX);
        assert_eq!(w.check(u64::MAX - 1), Err(ReplayVerdict::Duplicate));
        assert_eq!(w.max(), Some(u64::MAX));
    }

    #[test]
    fn sizes_round_up() {
        assert_eq!(ReplayWindow::new(1).size(), 64);
        assert_eq!(ReplayWindow::new(1000).size(), 1024);
    }

    proptest! {
        /// Against a model: a counter is accepted iff it is new and within the window.
        #[test]
        fn matches_a_model(counters in proptest::collection::vec(0u64..3000, 1..400)) {
            let mut w = ReplayWindow::new(256);
            let mut seen = std::collections::BTreeSet::new();
            let mut max: Option<u64> = None;
            for c in counters {
                let expected = if seen.contains(&c) {
                    Err(ReplayVerdict::Duplicate)
                } else if max.is_some_and(|m| c + 256 <= m) {
                    Err(ReplayVerdict::TooOld)
                } else {
                    Ok(())
                };
                // A duplicate that has also fallen out of the window may report either.
                let got = w.check(c);
                if seen.contains(&c) {
                    prop_assert!(got.is_err());
                } else {
                    prop_assert_eq!(got, expected);
                }
                if got.is_ok() {
                    w.accept(c);
                    seen.insert(c);
                    max = Some(max.map_or(c, |m| m.max(c)));
                }
            }
        }
    }
}
