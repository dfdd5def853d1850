//! Handshake admission on byte streams: which connections get to run a handshake, for how
//! long, and what is recorded when one is refused.
//!
//! A connection goes through, in order:
//!
//! 1. the per-source rate limit ([`crate::limits::RateLimiter`]);
//! 2. the half-open table (`max_half_open` entries). When it is full, the new
//!    connection is not refused: the **oldest connection still waiting for its first frame**
//!    is evicted to make room (or, if every entry has sent its HELLO, the oldest entry). An
//!    honest device sends its HELLO at once and leaves the waiting state within one round
//!    trip, so connections that hold a slot without speaking (half-open floods, slowloris
//!    writers) are always the first to go, and a new device is never locked out by them;
//! 3. the first-frame deadline (`hello_timeout`, default 2 s): the HELLO must be complete
//!    by then, however slowly its bytes trickle in;
//! 4. the handshake deadline (`handshake_timeout`).
//!
//! Every refusal records a security event carrying the connection's source address: the rate
//! limit and eviction (`limit_exceeded`), the deadlines (`timer_expired`), a bad frame length
//! (`limit_exceeded` `frame_too_large` above 1024 bytes, `handshake_failed` for a zero
//! length), a stream that ends before the handshake finishes (`truncated`), and whatever the
//! handshake itself reports (`unknown_peer`, `revoked_peer`, `handshake_failed`). The host's
//! [`vitalwire::EventAggregator`] keeps a flood of them from one source to a few lines.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::{timeout, timeout_at};
use tokio_util::codec::Framed;
use vitalwire::{DecodeError, Error, EventKind, Handshake, Incoming, Limit, Session, Timer};

use crate::codec::{FrameCodec, LinkError};
use crate::host::Shared;

/// The table of handshakes in progress, bounded, evicting under pressure. Its size is
/// mirrored in a gauge (the host's `half_open` counter), exactly: an evicted entry leaves the
/// count when it is evicted, not when its connection gets round to closing.
#[derive(Debug)]
pub(crate) struct HalfOpen {
    max: usize,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    /// Every entry, by admission order; dropping the sender tells its connection to stop.
    entries: BTreeMap<u64, oneshot::Sender<()>>,
    /// The entries that have not delivered their first frame yet, by admission order.
    waiting: BTreeSet<u64>,
}

/// A connection's place in the half-open table; leaving it (drop) frees the slot.
pub(crate) struct Ticket<'a> {
    half_open: &'a HalfOpen,
    gauge: &'a AtomicUsize,
    id: u64,
    evicted: Option<oneshot::Receiver<()>>,
}

impl HalfOpen {
    /// A table of at most `max` entries (0: every handshake is refused).
    pub(crate) fn new(max: usize) -> Self {
        HalfOpen { max, table: Mutex::new(Table::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection, evicting the oldest waiting (else the oldest) entry when
    /// the table is full. `None` only when `max` is 0. O(log n). `gauge` counts the entries
    /// (always the same gauge for one table).
    pub(crate) fn admit<'a>(&'a self, gauge: &'a AtomicUsize) -> Option<Ticket<'a>> {
        if self.max == 0 {
            return None;
        }
        let mut t = self.lock();
        if t.entries.len() >= self.max {
            let victim = t.waiting.first().copied().or_else(|| t.entries.keys().next().copied());
            if let Some(victim) = victim {
                t.waiting.remove(&victim);
                // Dropping the sender wakes the victim's `evicted` future.
                t.entries.remove(&victim);
                gauge.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        let (tx, rx) = oneshot::channel();
        t.entries.insert(id, tx);
        t.waiting.insert(id);
        gauge.fetch_add(1, Ordering::Relaxed);
        Some(Ticket { half_open: self, gauge, id, evicted: Some(rx) })
    }

    /// Entries now (handshakes in progress).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

impl Ticket<'_> {
    /// The connection delivered its first frame: it is no longer the first to be evicted.
    fn hello_received(&self) {
        self.half_open.lock().waiting.remove(&self.id);
    }

    /// Resolves when a newer connection took this slot (once; later calls never resolve).
    fn eviction_signal(&mut self) -> impl std::future::Future<Output = ()> + Unpin {
        let rx = self.evicted.take();
        Box::pin(async move {
            match rx {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending().await,
            }
        })
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut t = self.half_open.lock();
        t.waiting.remove(&self.id);
        if t.entries.remove(&self.id).is_some() {
            self.gauge.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Why a handshake did not finish, as the adapter saw it.
enum Failure {
    /// The handshake itself failed (it has recorded its own events).
    Handshake,
    /// The link broke or its framing was invalid (the handshake never saw it).
    Link(LinkError),
    /// The stream ended.
    Eof,
    /// No complete first frame in time.
    HelloTimeout,
}

/// Runs the responder side of a handshake on `framed` under the admission rules above.
/// Returns the finished handshake, or `None` after recording why it was refused.
pub(crate) async fn handshake<S>(
    shared: &Shared,
    framed: &mut Framed<S, FrameCodec>,
    source: Option<IpAddr>,
) -> Option<(Session, Option<Result<Incoming, Error>>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !shared.allow_handshake(source) {
        return None;
    }
    let Some(mut ticket) = shared.half_open.admit(&shared.counters.half_open) else {
        refuse(shared, EventKind::LimitExceeded { limit: Limit::HalfOpenHandshakes }, source);
        return None;
    };
    let Ok(mut hs) = Handshake::responder((shared.config.responder)()) else {
        shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let mut evicted = ticket.eviction_signal();
    // One deadline for the handshake and, in IK/KK, its key confirmation (spec §4.8).
    let deadline = tokio::time::Instant::now() + shared.config.handshake_timeout;
    let result = tokio::select! {
        r = timeout_at(deadline, drive(shared, framed, &mut hs, &ticket)) => match r {
            Ok(r) => r,
            Err(_) => Err(Some(EventKind::TimerExpired { timer: Timer::Handshake })),
        },
        _ = &mut evicted => Err(Some(EventKind::LimitExceeded { limit: Limit::HalfOpenHandshakes })),
    };
    while let Some(e) = hs.poll_event(crate::host::now_ts()) {
        shared.event(e.from_source(source));
    }
    match result {
        Ok(()) => {}
        Err(Some(kind)) => {
            refuse(shared, kind, source);
            return None;
        }
        // The handshake recorded why it failed.
        Err(None) => {
            shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    }
    let Ok(mut session) = hs.into_session() else {
        shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    // The Diffie-Hellman work is done: the slot is free for the next handshake. Until its key
    // is confirmed (spec §4.8) the session is no session (no event, no session slot) and
    // lives at most until the handshake deadline, so a replayed HELLO holds nothing beyond
    // it; an honest device confirms within a round trip and is never evicted for it.
    drop(ticket);
    // Still shown among the handshakes in progress (`HostStats::half_open`, the status line).
    let _confirming = crate::host::Gauge::up(&shared.counters.half_open);
    let confirmed = crate::host::confirm(shared, framed, &mut session, deadline, source).await;
    confirmed.ok().map(|first| (session, first))
}

/// Counts a refused connection and records why.
fn refuse(shared: &Shared, kind: EventKind, source: Option<IpAddr>) {
    shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
    shared.source_event(kind, source);
}

/// The handshake loop; `Err(Some(..))` carries the event the adapter must record, `Err(None)`
/// means the handshake has recorded its own.
async fn drive<S>(
    shared: &Shared,
    framed: &mut Framed<S, FrameCodec>,
    hs: &mut Handshake,
    ticket: &Ticket<'_>,
) -> Result<(), Option<EventKind>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    exchange(shared, framed, hs, ticket).await.map_err(|f| match f {
        Failure::Handshake => None,
        Failure::HelloTimeout => Some(EventKind::TimerExpired { timer: Timer::Hello }),
        Failure::Eof | Failure::Link(LinkError::Io(_)) => Some(EventKind::Truncated),
        Failure::Link(LinkError::Protocol(e)) => Some(link_event(e)),
    })
}

/// The event for a framing error during the handshake (§2).
fn link_event(e: Error) -> EventKind {
    match e {
        Error::Decode(DecodeError::FrameTooLarge { .. }) => {
            EventKind::LimitExceeded { limit: Limit::FrameTooLarge }
        }
        Error::Decode(DecodeError::IncompleteFrame { .. }) => EventKind::Truncated,
        reason => EventKind::HandshakeFailed { reason },
    }
}

async fn exchange<S>(
    shared: &Shared,
    framed: &mut Framed<S, FrameCodec>,
    hs: &mut Handshake,
    ticket: &Ticket<'_>,
) -> Result<(), Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    let mut first = true;
    loop {
        while hs.wants_write() {
            let r = hs.write_message(&mut out);
            let _ = framed.send(out.split().freeze()).await;
            r.map_err(|_| Failure::Handshake)?;
            if hs.error().is_some() {
                return Err(Failure::Handshake);
            }
        }
        if hs.is_finished() {
            return Ok(());
        }
        let next = if first {
            timeout(shared.config.hello_timeout, framed.next()).await.map_err(|_| Failure::HelloTimeout)?
        } else {
            framed.next().await
        };
        match next {
            Some(Ok(frame)) => {
                if first {
                    first = false;
                    ticket.hello_received();
                }
                if hs.read_message(&frame).is_err() {
                    if hs.wants_write() {
                        let _ = hs.write_message(&mut out);
                        let _ = framed.send(out.split().freeze()).await;
                    }
                    return Err(Failure::Handshake);
                }
            }
            Some(Err(e)) => return Err(Failure::Link(e)),
            None => return Err(Failure::Eof),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_evicts_the_oldest_silent_connection_first() {
        let gauge = AtomicUsize::new(0);
        let h = HalfOpen::new(3);
        let a = h.admit(&gauge).unwrap();
        let b = h.admit(&gauge).unwrap();
        let c = h.admit(&gauge).unwrap();
        a.hello_received(); // a is the oldest but has spoken: b goes first
        let mut b = b;
        let d = h.admit(&gauge).unwrap();
        assert_eq!((h.len(), gauge.load(Ordering::Relaxed)), (3, 3));
        assert!(
            matches!(b.evicted.as_mut().unwrap().try_recv(), Err(oneshot::error::TryRecvError::Closed)),
            "b was told"
        );
        let mut a = a;
        assert!(
            matches!(a.evicted.as_mut().unwrap().try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "a kept its slot"
        );
        // Then c (waiting), then d; only when nobody is waiting does the oldest go.
        d.hello_received();
        let _e = h.admit(&gauge).unwrap();
        assert!(!h.lock().entries.contains_key(&c.id));
        _e.hello_received();
        let _f = h.admit(&gauge).unwrap();
        assert!(!h.lock().entries.contains_key(&a.id), "everyone spoke: the oldest goes");
        drop((a, b, c, d));
        assert_eq!((h.len(), gauge.load(Ordering::Relaxed)), (2, 2));
        assert!(HalfOpen::new(0).admit(&gauge).is_none());
    }
}
