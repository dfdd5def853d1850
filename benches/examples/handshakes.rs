//! A plain loop of complete in-memory handshakes for profilers (callgrind, perf):
//! `cargo build --release -p vitalwire-benches --example handshakes` then
//! `valgrind --tool=callgrind target/release/examples/handshakes XX` (or IK, KK, TLS).
use vitalwire::{CipherSuite, Profile};
use vitalwire_benches::*;

fn main() {
    let rounds: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let profile = match std::env::args().nth(1).as_deref() {
        Some("IK") => Profile::Ik,
        Some("KK") => Profile::Kk,
        Some("TLS") => {
            // rustls TLS 1.3 with mutual authentication, the comparison of benches/README.md.
            let setup = tls_setup();
            let bytes: usize = (0..rounds).map(|_| tls_handshake(&setup).2).sum();
            println!("{bytes}");
            return;
        }
        _ => Profile::Xx,
    };
    let trust = trust_store();
    let mut bytes = 0;
    for _ in 0..rounds {
        bytes +=
            vitalwire_handshake(profile, CipherSuite::ChaChaPolyBlake2s, trust.clone(), Default::default()).2;
    }
    println!("{bytes}");
}
