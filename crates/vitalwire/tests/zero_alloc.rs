//! After warm-up, sealing and opening make no heap allocation: proven with a counting global
//! allocator that counts the allocations of the measuring thread only (the test harness's own
//! thread allocates while it waits for the result, which made a whole-process count flaky).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use common::*;
use vitalwire::*;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations are counted (a `const` thread-local: reading it
    /// never allocates).
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTED.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One exchange as an IO loop would run it: seal into the send buffer, "transmit" into the
/// receive buffer, split frames out and open them, drop the payloads.
fn exchange(
    tx: &mut Session,
    rx: &mut Session,
    dec: &mut StreamDecoder,
    send_buf: &mut BytesMut,
    recv_buf: &mut BytesMut,
    payload: &[u8],
) -> usize {
    send_buf.clear();
    tx.seal_data(1, payload, send_buf).unwrap();
    recv_buf.extend_from_slice(send_buf);
    let mut delivered = 0;
    while let Some(frame) = dec.decode(recv_buf).unwrap() {
        match rx.open(frame).unwrap() {
            Incoming::Data { payload, .. } => delivered += payload.len(),
            Incoming::Rekeyed => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    delivered
}

#[test]
fn seal_and_open_allocate_nothing_after_warm_up() {
    COUNTED.with(|c| c.set(true));
    for suite in CipherSuite::ALL {
        // A short rekey interval so automatic rekeys happen inside the measured loop too.
        let params =
            SessionParams { max_frame_len: 16 * 1024 + 64, rekey_interval: 16, ..SessionParams::default() };
        let (mut dev, mut host) = session_pair_with(Profile::Ik, suite, params);
        let mut dec = StreamDecoder::new(host.max_frame_len());
        let mut send_buf = BytesMut::with_capacity(32 * 1024);
        let mut recv_buf = BytesMut::with_capacity(32 * 1024);
        let sizes = [64usize, 256, 1024, 16 * 1024];
        let payload = vec![0xA5u8; 16 * 1024];
        for _ in 0..4 {
            for &n in &sizes {
                exchange(&mut dev, &mut host, &mut dec, &mut send_buf, &mut recv_buf, &payload[..n]);
            }
        }
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        assert!(before > 0, "the counting allocator is installed");
        let mut delivered = 0;
        for _ in 0..250 {
            for &n in &sizes {
                delivered +=
                    exchange(&mut dev, &mut host, &mut dec, &mut send_buf, &mut recv_buf, &payload[..n]);
            }
        }
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        assert_eq!(delivered, 250 * sizes.iter().sum::<usize>());
        assert!(host.stats().rekeys_received > 50, "rekeys happened during the measurement");
        assert_eq!(after - before, 0, "{suite}: {} allocations in 1000 seal+open", after - before);
    }
}
