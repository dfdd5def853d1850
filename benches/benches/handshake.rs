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
        if profile != Profile::Xx {
            // The first handshake between two keys: no cached static-static result.
            g.bench_function(BenchmarkId::new("vitalwire_cold_cache", pattern), |b| {
                b.iter(|| {
                    vitalwire_handshake_cold(
                        profile,
                        CipherSuite::ChaChaPolyBlake2s,
                        trust.clone(),
                        Backend::default(),
                    )
                })
            });
        }
        g.bench_function(BenchmarkId::new("snow", pattern), |b| {
            b.iter(|| {
                let (i, r) = snow_states(pattern, false);
                snow_handshake(i, r)
            })
        });
        // snow on vitalwire's default X25519 (aws-lc): the same primitive on both sides.
        g.bench_function(BenchmarkId::new("snow_aws_lc_x25519", pattern), |b| {
            b.iter(|| {
                let (i, r) = snow_states_on(pattern, SnowBackend::AwsLcX25519);
                snow_handshake(i, r)
            })
        });
    }
    let setup = tls_setup();
    g.bench_function(BenchmarkId::new("rustls_tls13_mutual", "ECDSA-P256"), |b| {
        b.iter(|| tls_handshake(&setup))
    });
    // For reference: a resumed TLS 1.3 handshake (PSK with X25519, no certificates).
    let resumable = tls_setup_resumable();
    tls_handshake(&resumable);
    g.bench_function(BenchmarkId::new("rustls_tls13_resumed", "PSK-DHE"), |b| {
        b.iter(|| tls_handshake(&resumable))
    });
    g.finish();
}

/// The public-key operations the handshakes are made of, alone: X25519 (aws-lc, and the
/// portable curve25519-dalek) for Noise; P-256 ECDH and ECDSA (ring, as rustls uses them) for
/// TLS. They put a floor under each handshake (benches/README.md).
fn primitives(c: &mut Criterion) {
    use ring::signature::{
        EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING,
    };
    let mut g = c.benchmark_group("primitive");
    g.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2)).sample_size(30);
    let private = [0x42u8; 32];
    let peer = curve25519_dalek::MontgomeryPoint::mul_base_clamped([0x24; 32]).to_bytes();
    {
        use aws_lc_rs::agreement::{agree, PrivateKey, UnparsedPublicKey as Peer, X25519};
        let key = PrivateKey::from_private_key(&X25519, &private).unwrap();
        g.bench_function("x25519_dh_aws_lc", |b| {
            b.iter(|| agree(&key, Peer::new(&X25519, &peer[..]), (), |s| Ok(s[0])).unwrap())
        });
        g.bench_function("x25519_keygen_aws_lc", |b| {
            b.iter(|| {
                let k = PrivateKey::from_private_key(&X25519, std::hint::black_box(&private)).unwrap();
                k.compute_public_key().unwrap().as_ref()[0]
            })
        });
    }
    g.bench_function("x25519_dh_dalek", |b| {
        b.iter(|| curve25519_dalek::MontgomeryPoint(peer).mul_clamped(std::hint::black_box(private)))
    });
    g.bench_function("x25519_keygen_dalek", |b| {
        b.iter(|| curve25519_dalek::MontgomeryPoint::mul_base_clamped(std::hint::black_box(private)))
    });
    let rng = ring::rand::SystemRandom::new();
    let peer_p256 = ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::ECDH_P256, &rng)
        .unwrap()
        .compute_public_key()
        .unwrap();
    g.bench_function("p256_ecdhe_ring", |b| {
        b.iter(|| {
            let k =
                ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::ECDH_P256, &rng).unwrap();
            let _public = k.compute_public_key().unwrap();
            ring::agreement::agree_ephemeral(
                k,
                &ring::agreement::UnparsedPublicKey::new(&ring::agreement::ECDH_P256, peer_p256.as_ref()),
                |s| s[0],
            )
            .unwrap()
        })
    });
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let message = [0x5au8; 130];
    let signature = signer.sign(&rng, &message).unwrap();
    let verifier = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, signer.public_key().as_ref().to_vec());
    g.bench_function("p256_ecdsa_sign_ring", |b| b.iter(|| signer.sign(&rng, &message).unwrap()));
    g.bench_function("p256_ecdsa_verify_ring", |b| {
        b.iter(|| verifier.verify(&message, signature.as_ref()).unwrap())
    });
    g.finish();
}

criterion_group!(benches, handshakes, primitives);
criterion_main!(benches);
