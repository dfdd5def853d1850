//! Fragmentation and bounded reassembly (spec/PROTOCOL.md §13.6).
//!
//! A message too large for one link packet (datagram mode over a small MTU) or for one frame
//! (a large application message on a stream) is cut into pieces, each behind a 4-byte header:
//!
//! ```text
//! +----------------+-----------+-----------+----------------------+
//! | message_id u16 | index u8  | count u8  | piece                |
//! +----------------+-----------+-----------+----------------------+
//! ```
//!
//! `index` runs from 0 to `count - 1`; every piece but the last has the same length. The
//! [`Reassembler`] keeps at most `max_in_flight` partial messages of at most
//! `max_message_len` bytes each, drops a partial message after `timeout_ms`, and drops (never
//! buffers) a fragment that overlaps differently, lies about its count, does not fit, or
//! belongs to a message it just delivered.

use alloc::vec;
use alloc::vec::Vec;

use crate::events::Timestamp;

/// Bytes of the fragment header.
pub const FRAGMENT_HEADER_LEN: usize = 4;
/// Most pieces in one message.
pub const MAX_FRAGMENTS: usize = 255;

/// The header in front of each piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentHeader {
    /// Which message (wraps at 65536).
    pub message_id: u16,
    /// This piece's position.
    pub index: u8,
    /// Number of pieces (1 to 255).
    pub count: u8,
}

impl FragmentHeader {
    /// The 4 header bytes.
    pub fn encode(&self) -> [u8; FRAGMENT_HEADER_LEN] {
        let id = self.message_id.to_be_bytes();
        [id[0], id[1], self.index, self.count]
    }

    /// Splits a fragment into header and piece. `None` if too short or inconsistent
    /// (count 0, index not below count).
    pub fn decode(bytes: &[u8]) -> Option<(Self, &[u8])> {
        let [a, b, index, count, piece @ ..] = bytes else { return None };
        if *count == 0 || index >= count {
            return None;
        }
        Some((
            FragmentHeader { message_id: u16::from_be_bytes([*a, *b]), index: *index, count: *count },
            piece,
        ))
    }
}

/// Cuts `message` into pieces of at most `max_piece` bytes, each with its header. `None` if
/// it would take more than 255 pieces (or `max_piece` is 0).
pub fn split(message: &[u8], max_piece: usize, message_id: u16) -> Option<Vec<Vec<u8>>> {
    if max_piece == 0 {
        return None;
    }
    let count = message.len().div_ceil(max_piece).max(1);
    if count > MAX_FRAGMENTS {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for index in 0..count {
        let piece =
            &message[(index * max_piece).min(message.len())..((index + 1) * max_piece).min(message.len())];
        let mut packet = Vec::with_capacity(FRAGMENT_HEADER_LEN + piece.len());
        packet.extend_from_slice(
            &FragmentHeader { message_id, index: index as u8, count: count as u8 }.encode(),
        );
        packet.extend_from_slice(piece);
        out.push(packet);
    }
    Some(out)
}

/// Bounds of a [`Reassembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Largest message accepted.
    pub max_message_len: usize,
    /// Most partial messages kept at once.
    pub max_in_flight: usize,
    /// A partial message is dropped this long after its first piece.
    pub timeout_ms: u64,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        ReassemblyLimits { max_message_len: 64 * 1024, max_in_flight: 4, timeout_ms: 10_000 }
    }
}

impl ReassemblyLimits {
    /// The most bytes a reassembler with these limits ever buffers.
    pub fn memory_bound(&self) -> usize {
        self.max_message_len * self.max_in_flight
    }
}

/// Why a fragment was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FragmentDrop {
    /// Header unreadable.
    Malformed,
    /// The message would exceed the maximum size.
    TooLarge,
    /// Too many partial messages: the oldest was evicted to make room (on a lossy link the
    /// newest data is the most useful; memory stays bounded either way).
    Evicted,
    /// Same index with different bytes, or a piece length inconsistent with the others: the
    /// whole partial message is discarded.
    Overlap,
    /// A different count than earlier pieces of the same message: discarded.
    CountMismatch,
    /// A piece of a message delivered recently.
    AlreadyDelivered,
    /// A partial message timed out.
    Expired,
}

/// The result of [`Reassembler::push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reassembled {
    /// More pieces are needed (or the piece was a harmless duplicate).
    Pending,
    /// The whole message.
    Complete(Vec<u8>),
    /// The fragment was dropped.
    Dropped(FragmentDrop),
}

#[derive(Debug)]
struct Partial {
    id: u16,
    count: u8,
    /// Length of every piece but the last, once known.
    piece_len: Option<usize>,
    /// Length of the last piece, once received.
    last_len: Option<usize>,
    pieces: Vec<Option<Vec<u8>>>,
    bytes: usize,
    started: Timestamp,
}

/// Bounded reassembly of fragments from one sender.
#[derive(Debug)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    partial: Vec<Partial>,
    /// Recently completed message ids and when, to refuse late pieces.
    recent: Vec<(u16, Timestamp)>,
    drops: u64,
}

const RECENT: usize = 32;

impl Reassembler {
    /// An empty reassembler.
    pub fn new(limits: ReassemblyLimits) -> Self {
        Reassembler { limits, partial: Vec::new(), recent: Vec::new(), drops: 0 }
    }

    /// Bytes currently buffered (never above [`ReassemblyLimits::memory_bound`]).
    pub fn buffered_bytes(&self) -> usize {
        self.partial.iter().map(|p| p.bytes).sum()
    }

    /// Partial messages currently held.
    pub fn in_flight(&self) -> usize {
        self.partial.len()
    }

    /// Fragments dropped so far.
    pub fn drops(&self) -> u64 {
        self.drops
    }

    /// When the oldest partial message expires.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.partial.iter().map(|p| Timestamp(p.started.0.saturating_add(self.limits.timeout_ms))).min()
    }

    /// Drops partial messages older than the timeout; returns how many.
    pub fn handle_timeout(&mut self, now: Timestamp) -> usize {
        let timeout = self.limits.timeout_ms;
        let before = self.partial.len();
        self.partial.retain(|p| now.0 < p.started.0.saturating_add(timeout));
        self.recent.retain(|(_, t)| now.0 < t.0.saturating_add(timeout));
        let expired = before - self.partial.len();
        self.drops += expired as u64;
        expired
    }

    fn drop_with(&mut self, reason: FragmentDrop) -> Reassembled {
        self.drops += 1;
        Reassembled::Dropped(reason)
    }

    /// Takes one fragment (header and piece, as received).
    pub fn push(&mut self, fragment: &[u8], now: Timestamp) -> Reassembled {
        self.handle_timeout(now);
        let Some((h, piece)) = FragmentHeader::decode(fragment) else {
            return self.drop_with(FragmentDrop::Malformed);
        };
        if self.recent.iter().any(|(id, _)| *id == h.message_id) {
            return self.drop_with(FragmentDrop::AlreadyDelivered);
        }
        // A piece that is not the last tells the piece length, hence a lower bound on the
        // total: refuse a message that cannot fit before buffering anything.
        let max = self.limits.max_message_len;
        if piece.len() > max
            || (h.index + 1 < h.count && piece.len().saturating_mul(h.count as usize - 1) >= max)
        {
            return self.drop_with(FragmentDrop::TooLarge);
        }
        if h.count == 1 {
            self.remember(h.message_id, now);
            return Reassembled::Complete(piece.to_vec());
        }
        let slot = match self.partial.iter().position(|p| p.id == h.message_id) {
            Some(i) => i,
            None => {
                if self.partial.len() >= self.limits.max_in_flight {
                    if self.limits.max_in_flight == 0 {
                        return self.drop_with(FragmentDrop::Evicted);
                    }
                    let oldest =
                        (0..self.partial.len()).min_by_key(|i| self.partial[*i].started).unwrap_or(0);
                    self.partial.remove(oldest);
                    self.drops += 1;
                }
                self.partial.push(Partial {
                    id: h.message_id,
                    count: h.count,
                    piece_len: None,
                    last_len: None,
                    pieces: vec![None; h.count as usize],
                    bytes: 0,
                    started: now,
                });
                self.partial.len() - 1
            }
        };
        let p = &mut self.partial[slot];
        if p.count != h.count {
            self.partial.swap_remove(slot);
            return self.drop_with(FragmentDrop::CountMismatch);
        }
        let is_last = h.index + 1 == h.count;
        // Every piece but the last has one length; the last is no longer.
        let consistent = if is_last {
            p.piece_len.is_none_or(|len| piece.len() <= len)
        } else {
            p.piece_len.is_none_or(|len| piece.len() == len)
                && p.last_len.is_none_or(|last| last <= piece.len())
        };
        match &p.pieces[h.index as usize] {
            Some(existing) if existing[..] == piece[..] => return Reassembled::Pending,
            Some(_) => {
                self.partial.swap_remove(slot);
                return self.drop_with(FragmentDrop::Overlap);
            }
            None if !consistent => {
                self.partial.swap_remove(slot);
                return self.drop_with(FragmentDrop::Overlap);
            }
            None => {}
        }
        if p.bytes + piece.len() > max {
            self.partial.swap_remove(slot);
            return self.drop_with(FragmentDrop::TooLarge);
        }
        if is_last {
            p.last_len = Some(piece.len());
        } else {
            p.piece_len = Some(piece.len());
        }
        p.bytes += piece.len();
        p.pieces[h.index as usize] = Some(piece.to_vec());
        if p.pieces.iter().all(Option::is_some) {
            let p = self.partial.swap_remove(slot);
            let mut message = Vec::with_capacity(p.bytes);
            for piece in p.pieces.into_iter().flatten() {
                message.extend_from_slice(&piece);
            }
            self.remember(p.id, now);
            return Reassembled::Complete(message);
        }
        Reassembled::Pending
    }

    fn remember(&mut self, id: u16, now: Timestamp) {
        if self.recent.len() >= RECENT {
            self.recent.remove(0);
        }
        self.recent.push((id, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ReassemblyLimits {
        ReassemblyLimits { max_message_len: 1000, max_in_flight: 2, timeout_ms: 100 }
    }

    #[test]
    fn split_and_reassemble_in_any_order_with_duplicates() {
        let msg: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        let mut pieces = split(&msg, 16, 7).unwrap();
        assert_eq!(pieces.len(), 16);
        assert!(pieces.iter().all(|p| p.len() <= 20));
        pieces.reverse();
        let dup = pieces[3].clone();
        pieces.insert(5, dup);
        let mut r = Reassembler::new(limits());
        let mut done = None;
        for p in &pieces {
            if let Reassembled::Complete(m) = r.push(p, Timestamp(0)) {
                done = Some(m);
            }
        }
        assert_eq!(done.unwrap(), msg);
        assert_eq!(r.buffered_bytes(), 0);
        // A late piece of the delivered message is refused.
        assert_eq!(r.push(&pieces[0], Timestamp(1)), Reassembled::Dropped(FragmentDrop::AlreadyDelivered));
        assert_eq!(split(&[], 16, 1).unwrap().len(), 1);
        assert!(split(&[0; 300], 1, 1).is_none());
    }

    #[test]
    fn lies_overlaps_and_floods_are_dropped_within_bounds() {
        let mut r = Reassembler::new(limits());
        // Claims 255 pieces of 16 bytes: cannot fit in 1000 bytes.
        let liar = [&FragmentHeader { message_id: 1, index: 0, count: 255 }.encode()[..], &[0; 16]].concat();
        assert_eq!(r.push(&liar, Timestamp(0)), Reassembled::Dropped(FragmentDrop::TooLarge));
        // Overlap: same index, different bytes.
        let a = [&FragmentHeader { message_id: 2, index: 0, count: 3 }.encode()[..], &[1; 10]].concat();
        let b = [&FragmentHeader { message_id: 2, index: 0, count: 3 }.encode()[..], &[2; 10]].concat();
        assert_eq!(r.push(&a, Timestamp(0)), Reassembled::Pending);
        assert_eq!(r.push(&b, Timestamp(0)), Reassembled::Dropped(FragmentDrop::Overlap));
        assert_eq!(r.in_flight(), 0);
        // Count mismatch.
        let c = [&FragmentHeader { message_id: 3, index: 0, count: 3 }.encode()[..], &[1; 10]].concat();
        let d = [&FragmentHeader { message_id: 3, index: 1, count: 4 }.encode()[..], &[1; 10]].concat();
        assert_eq!(r.push(&c, Timestamp(0)), Reassembled::Pending);
        assert_eq!(r.push(&d, Timestamp(0)), Reassembled::Dropped(FragmentDrop::CountMismatch));
        // Inconsistent piece lengths.
        let e = [&FragmentHeader { message_id: 4, index: 0, count: 3 }.encode()[..], &[1; 10]].concat();
        let f = [&FragmentHeader { message_id: 4, index: 1, count: 3 }.encode()[..], &[1; 12]].concat();
        assert_eq!(r.push(&e, Timestamp(0)), Reassembled::Pending);
        assert_eq!(r.push(&f, Timestamp(0)), Reassembled::Dropped(FragmentDrop::Overlap));
        // Flood of first pieces: at most two in flight (the newest), and they expire.
        for id in 10..100u16 {
            let g = [&FragmentHeader { message_id: id, index: 0, count: 5 }.encode()[..], &[9; 100]].concat();
            let _ = r.push(&g, Timestamp(id as u64 / 50));
            assert!(r.buffered_bytes() <= limits().memory_bound());
            assert!(r.in_flight() <= 2);
        }
        assert_eq!(r.poll_timeout(), Some(Timestamp(101)), "the survivors arrived at t=1");
        assert_eq!(r.handle_timeout(Timestamp(101)), 2);
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.push(&[1, 2, 3], Timestamp(200)), Reassembled::Dropped(FragmentDrop::Malformed));
        assert_eq!(r.push(&[0, 1, 3, 3, 0], Timestamp(200)), Reassembled::Dropped(FragmentDrop::Malformed));
    }
}
