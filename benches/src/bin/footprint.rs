//! Bytes on the wire and memory, measured (not timed): `cargo run -p vitalwire-benches
//! --release --bin footprint`. Prints a markdown table.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use bytes::BytesMut;
use vitalwire::{CipherSuite, Profile, StreamDecoder};
use vitalwire_benches::*;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn main() {
    let trust = trust_store();
    println!("| handshake | vitalwire bytes | snow (bare Noise) bytes | overhead of vitalwire |");
    println!("|---|---|---|---|");
    for (profile, pattern) in [(Profile::Xx, "XX"), (Profile::Ik, "IK"), (Profile::Kk, "KK")] {
        let (_, _, v) =
            vitalwire_handshake(profile, CipherSuite::ChaChaPolyBlake2s, trust.clone(), Default::default());
        let (i, r) = snow_states(pattern, false);
        let s = snow_handshake(i, r).2;
        println!("| {pattern} | {v} | {s} | {} (framing, HELLO header, identity and parameters) |", v - s);
    }
    let setup = tls_setup();
    let (_, _, tls) = tls_handshake(&setup);
    let (_, _, ik) =
        vitalwire_handshake(Profile::Ik, CipherSuite::ChaChaPolyBlake2s, trust.clone(), Default::default());
    println!();
    println!("| handshake, both directions | bytes | ratio to vitalwire IK |");
    println!("|---|---|---|");
    println!("| vitalwire IK (identity + parameters included) | {ik} | 1.00 |");
    println!(
        "| TLS 1.3, mutual auth, ECDSA P-256 chains of 2 (rustls, measured) | {tls} | {:.2} |",
        tls as f64 / ik as f64
    );
    println!("| WireGuard (published: 148 + 92) | 240 | {:.2} |", 240.0 / ik as f64);
    println!();
    println!("| per-frame overhead | bytes |");
    println!("|---|---|");
    println!("| vitalwire stream (length 2 + header 3 + tag 16) | 21 |");
    println!("| vitalwire datagram (type, index, counter 13 + header 3 + tag 16) | 32 |");
    println!("| TLS 1.3 record (header 5 + content type 1 + tag 16) | 22 |");
    println!("| WireGuard transport (published: 16 header + 16 tag) | 32 |");

    // Memory.
    let before = live();
    let (a, b) = vitalwire_pair(CipherSuite::ChaChaPolyBlake2s);
    let pair = live() - before;
    drop((a, b));
    let before = live();
    let (i, mut r) =
        vitalwire_handshakes(Profile::Xx, CipherSuite::ChaChaPolyBlake2s, trust.clone(), Default::default());
    let mut wire = BytesMut::new();
    let mut i = i;
    i.write_message(&mut wire).unwrap();
    let f = StreamDecoder::new(1024).decode(&mut wire).unwrap().unwrap();
    r.read_message(&f).unwrap();
    drop(f);
    let in_progress = live() - before;
    drop((i, r, wire));
    // Allocations per frame after warm-up.
    let (mut a, mut b) = vitalwire_pair(CipherSuite::ChaChaPolyBlake2s);
    let mut dec = StreamDecoder::new(65535);
    let mut buf = BytesMut::with_capacity(4096);
    let payload = [0u8; 256];
    for _ in 0..100 {
        stream_round_trip(&mut a, &mut b, &mut dec, &mut buf, &payload);
    }
    let allocs = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..10_000 {
        stream_round_trip(&mut a, &mut b, &mut dec, &mut buf, &payload);
    }
    let per_frame = (ALLOCS.load(Ordering::Relaxed) - allocs) as f64 / 10_000.0;
    println!();
    println!("| memory (counting allocator) | value |");
    println!("|---|---|");
    println!("| heap per established stream session (one side) | {} bytes |", pair / 2);
    println!("| heap per handshake in progress (XX, both sides after message 1) | {in_progress} bytes |");
    println!("| heap allocations per frame after warm-up (seal + open, 256 B) | {per_frame} |");
}
