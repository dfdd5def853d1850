//! A plain loop of seal+open for profilers (callgrind, perf):
//! `cargo build --release -p vitalwire-benches --example round_trips` then
//! `valgrind --tool=callgrind target/release/examples/round_trips 64 chacha vitalwire`.
//!
//! Arguments: payload size (default 64), suite `chacha` | `aes`, and what to run:
//! `vitalwire` (stream seal_data + decode + open), `in-place` (seal_data + frame_len +
//! open_in_place), `floor` (ring's AEAD on the payload) or
//! `floor+header` (ring's AEAD on the payload plus the 3 header bytes vitalwire encrypts).
use bytes::BytesMut;
use vitalwire::{CipherSuite, StreamDecoder};
use vitalwire_benches::*;

const ROUNDS: usize = 100_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    let aes = args.get(2).is_some_and(|s| s == "aes");
    let what = args.get(3).map(String::as_str).unwrap_or("vitalwire");
    let payload = vec![0xA5u8; size];
    let mut total = 0;
    match what {
        "floor" | "floor+header" => {
            let alg = if aes { &ring::aead::AES_256_GCM } else { &ring::aead::CHACHA20_POLY1305 };
            let mut floor = Floor::new(alg);
            let payload = vec![0xA5u8; if what == "floor" { size } else { size + 3 }];
            let mut v = Vec::with_capacity(payload.len() + 16);
            for _ in 0..ROUNDS {
                total += floor.round_trip(&mut v, &payload);
            }
        }
        "in-place" => {
            let suite = if aes { CipherSuite::AesGcmSha256 } else { CipherSuite::ChaChaPolyBlake2s };
            let (mut a, mut b) = vitalwire_pair(suite);
            let dec = StreamDecoder::new(65535);
            let mut buf = BytesMut::with_capacity(4 * size + 64);
            for _ in 0..ROUNDS {
                total += stream_round_trip_in_place(&mut a, &mut b, &dec, &mut buf, &payload);
            }
        }
        _ => {
            let suite = if aes { CipherSuite::AesGcmSha256 } else { CipherSuite::ChaChaPolyBlake2s };
            let (mut a, mut b) = vitalwire_pair(suite);
            let mut dec = StreamDecoder::new(65535);
            let mut buf = BytesMut::with_capacity(4 * size + 64);
            for _ in 0..ROUNDS {
                total += stream_round_trip(&mut a, &mut b, &mut dec, &mut buf, &payload);
            }
        }
    }
    println!("{total}");
}
