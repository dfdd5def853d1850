//! A plain loop of stream seal+open for profilers (callgrind, perf):
//! `cargo build --release -p vitalwire-benches --example round_trips` then
//! `valgrind --tool=callgrind target/release/examples/round_trips 64`.
use bytes::BytesMut;
use vitalwire::{CipherSuite, StreamDecoder};
use vitalwire_benches::*;

fn main() {
    let size: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    let (mut a, mut b) = vitalwire_pair(CipherSuite::ChaChaPolyBlake2s);
    let mut dec = StreamDecoder::new(65535);
    let mut buf = BytesMut::with_capacity(4 * size + 64);
    let payload = vec![0xA5u8; size];
    let mut total = 0;
    for _ in 0..100_000 {
        total += stream_round_trip(&mut a, &mut b, &mut dec, &mut buf, &payload);
    }
    println!("{total}");
}
