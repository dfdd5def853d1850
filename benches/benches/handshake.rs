//! Complete handshakes in memory, both sides, side by side in one run.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vitalwire::x25519::Backend;
use vitalwire::{CipherSuite, Profile};
use vitalwire_benches::*;

fn handshakes(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3)).sample_size(20);
    let trust = trust_store();
    for (profile, pattern) in [(Profile::Xx, "XX"), (Profile::Ik, "IK"), (Profile::Kk, "KK")] {
        g.bench_function(BenchmarkId::new("vitalwire", pattern), |b| {
            b.iter(|| {
                vitalwire_handshake(
                    profile,
                    CipherSuite::ChaChaPolyBlake2s,
                    trust.clone(),
                    Backend::default(),
                )
            })
        });
        g.bench_function(BenchmarkId::new("vitalwire_portable_x25519", pattern), |b| {
            b.iter(|| {
                vitalwire_handshake(profile, CipherSuite::ChaChaPolyBlake2s, trust.clone(), Backend::Portable)
            })
        });
        g.bench_function(BenchmarkId::new("snow", pattern), |b| {
            b.iter(|| {
                let (i, r) = snow_states(pattern, false);
                snow_handshake(i, r)
            })
        });
    }
    let setup = tls_setup();
    g.bench_function(BenchmarkId::new("rustls_tls13_mutual", "ECDSA-P256"), |b| {
        b.iter(|| tls_handshake(&setup))
    });
    g.finish();
}

criterion_group!(benches, handshakes);
criterion_main!(benches);
