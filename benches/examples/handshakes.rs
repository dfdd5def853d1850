//! A plain loop of complete in-memory handshakes for profilers (callgrind, perf):
//! `cargo build --release -p vitalwire-benches --example handshakes` then
//! `valgrind --tool=callgrind target/release/examples/handshakes XX`.
use vitalwire::{CipherSuite, Profile};
use vitalwire_benches::*;

fn main() {
    let profile = match std::env::args().nth(1).as_deref() {
        Some("IK") => Profile::Ik,
        Some("KK") => Profile::Kk,
        _ => Profile::Xx,
    };
    let rounds: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let trust = trust_store();
    let mut bytes = 0;
    for _ in 0..rounds {
        bytes +=
            vitalwire_handshake(profile, CipherSuite::ChaChaPolyBlake2s, trust.clone(), Default::default()).2;
    }
    println!("{bytes}");
}
