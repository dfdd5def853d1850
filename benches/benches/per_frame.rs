//! Seal + open of one frame, every implementation side by side in one run.

use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vitalwire::{CipherSuite, StreamDecoder};
use vitalwire_benches::*;

fn per_frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal_open");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(30);
    for size in SIZES {
        let payload = vec![0xA5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        let mut floor = Floor::new(&ring::aead::CHACHA20_POLY1305);
        let mut v = Vec::with_capacity(size + 3 + 16);
        g.bench_with_input(BenchmarkId::new("floor_ring_chacha", size), &payload, |b, p| {
            b.iter(|| floor.round_trip(&mut v, p))
        });
        let mut floor = Floor::new(&ring::aead::AES_256_GCM);
        g.bench_with_input(BenchmarkId::new("floor_ring_aesgcm", size), &payload, |b, p| {
            b.iter(|| floor.round_trip(&mut v, p))
        });
        // The floor on the payload plus the 3 header bytes vitalwire encrypts with it: splits
        // vitalwire's overhead into the AEAD's cost of the header and everything else.
        let with_header = vec![0xA5u8; size + 3];
        let mut floor = Floor::new(&ring::aead::CHACHA20_POLY1305);
        g.bench_with_input(BenchmarkId::new("floor_ring_chacha_plus_header", size), &with_header, |b, p| {
            b.iter(|| floor.round_trip(&mut v, p))
        });
        let mut floor = Floor::new(&ring::aead::AES_256_GCM);
        g.bench_with_input(BenchmarkId::new("floor_ring_aesgcm_plus_header", size), &with_header, |b, p| {
            b.iter(|| floor.round_trip(&mut v, p))
        });
        for (name, suite) in [
            ("vitalwire_stream_chacha", CipherSuite::ChaChaPolyBlake2s),
            ("vitalwire_stream_aesgcm", CipherSuite::AesGcmSha256),
        ] {
            let (mut a, mut bb) = vitalwire_pair(suite);
            let mut dec = StreamDecoder::new(65535);
            let mut buf = BytesMut::with_capacity(2 * size + 64);
            g.bench_with_input(BenchmarkId::new(name, size), &payload, |b, p| {
                b.iter(|| stream_round_trip(&mut a, &mut bb, &mut dec, &mut buf, p))
            });
        }
        for (name, suite) in [
            ("vitalwire_stream_in_place_chacha", CipherSuite::ChaChaPolyBlake2s),
            ("vitalwire_stream_in_place_aesgcm", CipherSuite::AesGcmSha256),
        ] {
            let (mut a, mut bb) = vitalwire_pair(suite);
            let dec = StreamDecoder::new(65535);
            let mut buf = BytesMut::with_capacity(2 * size + 64);
            g.bench_with_input(BenchmarkId::new(name, size), &payload, |b, p| {
                b.iter(|| stream_round_trip_in_place(&mut a, &mut bb, &dec, &mut buf, p))
            });
        }
        // The pure-Rust path (what a no_std build runs), against its own floor.
        let mut floor = PortableFloor::default();
        g.bench_with_input(BenchmarkId::new("floor_rustcrypto_chacha", size), &payload, |b, p| {
            b.iter(|| floor.round_trip(&mut v, p))
        });
        let (mut a, mut bb) = vitalwire_portable_pair(CipherSuite::ChaChaPolyBlake2s);
        let dec = StreamDecoder::new(65535);
        let mut buf = BytesMut::with_capacity(2 * size + 64);
        g.bench_with_input(
            BenchmarkId::new("vitalwire_stream_in_place_portable_chacha", size),
            &payload,
            |b, p| b.iter(|| stream_round_trip_in_place(&mut a, &mut bb, &dec, &mut buf, p)),
        );
        let (mut a, mut bb) = datagram_pair(CipherSuite::ChaChaPolyBlake2s);
        let mut buf = BytesMut::with_capacity(2 * size + 64);
        g.bench_with_input(BenchmarkId::new("vitalwire_datagram_chacha", size), &payload, |b, p| {
            b.iter(|| datagram_round_trip(&mut a, &mut bb, &mut buf, p))
        });
        for (name, ring) in [("snow_default", false), ("snow_ring", true)] {
            let (i, r) = snow_states("IK", ring);
            let (mut a, mut bb, _) = snow_handshake(i, r);
            let mut buf = vec![0u8; 65535];
            let mut out = vec![0u8; 65535];
            g.bench_with_input(BenchmarkId::new(name, size), &payload, |b, p| {
                b.iter(|| snow_round_trip(&mut a, &mut bb, &mut buf, &mut out, p))
            });
        }
        let setup = tls_setup();
        let (mut client, mut server, _) = tls_handshake(&setup);
        let mut wire = Vec::with_capacity(size + 64);
        let mut out = vec![0u8; size];
        g.bench_with_input(BenchmarkId::new("rustls_tls13", size), &payload, |b, p| {
            b.iter(|| tls_round_trip(&mut client, &mut server, &mut wire, &mut out, p))
        });
    }
    g.finish();
}

criterion_group!(benches, per_frame);
criterion_main!(benches);
