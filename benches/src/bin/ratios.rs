//! Interleaved ratios: the comparisons of the criterion benches, run round-robin so that every
//! implementation and its reference share the same moments of the machine.
//!
//! Criterion measures one implementation after the other, a few seconds each; on a shared
//! virtual machine a slow phase that hits one of them skews its ratio by tens of percent.
//! Here each round runs one short batch of every implementation in turn, the ratio to the
//! reference is taken within the round, and the median over all rounds is reported.
//!
//! `cargo run --release -p vitalwire-benches --bin ratios` (part of `scripts/bench.sh`).

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use vitalwire::{x25519, CipherSuite, Profile, StreamDecoder};
use vitalwire_benches::*;

type Job<'a> = (&'static str, Box<dyn FnMut() -> usize + 'a>);

/// Runs `jobs` round-robin for `rounds` rounds of `batch` calls each; returns, per job, the
/// median time per call and the median per-round ratio to job `reference`.
fn interleave(jobs: &mut [Job<'_>], batch: usize, rounds: usize, reference: &[usize]) -> Vec<(f64, f64)> {
    let n = jobs.len();
    let mut times = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for k in 0..n {
            // Rotate the order so no job always follows the same neighbour.
            let j = (k + round) % n;
            let f = &mut jobs[j].1;
            let start = Instant::now();
            for _ in 0..batch {
                black_box(f());
            }
            times[j].push(start.elapsed().as_nanos() as f64 / batch as f64);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (0..n)
        .map(|j| {
            let r = reference[j];
            let ratios = (0..rounds).map(|i| times[j][i] / times[r][i]).collect();
            (median(times[j].clone()), median(ratios))
        })
        .collect()
}

fn per_frame(size: usize) -> Vec<(&'static str, f64, f64, &'static str)> {
    let payload = vec![0xA5u8; size];
    let with_header = vec![0xA5u8; size + 3];
    let (mut fc, mut fa, mut fch, mut fah) = (
        Floor::new(&ring::aead::CHACHA20_POLY1305),
        Floor::new(&ring::aead::AES_256_GCM),
        Floor::new(&ring::aead::CHACHA20_POLY1305),
        Floor::new(&ring::aead::AES_256_GCM),
    );
    let mut bufs: Vec<Vec<u8>> = (0..4).map(|_| Vec::with_capacity(size + 32)).collect();
    let [b0, b1, b2, b3] = &mut bufs[..] else { unreachable!() };
    let (mut sc_a, mut sc_b) = vitalwire_pair(CipherSuite::ChaChaPolyBlake2s);
    let (mut sa_a, mut sa_b) = vitalwire_pair(CipherSuite::AesGcmSha256);
    let (mut ic_a, mut ic_b) = vitalwire_pair(CipherSuite::ChaChaPolyBlake2s);
    let (mut ia_a, mut ia_b) = vitalwire_pair(CipherSuite::AesGcmSha256);
    let (mut dec1, mut dec2) = (StreamDecoder::new(65535), StreamDecoder::new(65535));
    let dec3 = StreamDecoder::new(65535);
    let mut wires: Vec<BytesMut> = (0..4).map(|_| BytesMut::with_capacity(2 * size + 64)).collect();
    let [w0, w1, w2, w3] = &mut wires[..] else { unreachable!() };
    let (mut sn_a, mut sn_b, _) = {
        let (i, r) = snow_states("IK", true);
        snow_handshake(i, r)
    };
    let (mut sbuf, mut sout) = (vec![0u8; 65535], vec![0u8; 65535]);
    let setup = tls_setup();
    let (mut tc, mut ts, _) = tls_handshake(&setup);
    let (mut twire, mut tout) = (Vec::with_capacity(size + 64), vec![0u8; size]);
    let p = &payload;
    let h = &with_header;
    let mut jobs: Vec<Job<'_>> = vec![
        ("floor_ring_chacha", Box::new(|| fc.round_trip(b0, p))),
        ("floor_ring_aesgcm", Box::new(|| fa.round_trip(b1, p))),
        ("floor_ring_chacha_plus_header", Box::new(|| fch.round_trip(b2, h))),
        ("floor_ring_aesgcm_plus_header", Box::new(|| fah.round_trip(b3, h))),
        ("vitalwire_stream_chacha", Box::new(|| stream_round_trip(&mut sc_a, &mut sc_b, &mut dec1, w0, p))),
        ("vitalwire_stream_aesgcm", Box::new(|| stream_round_trip(&mut sa_a, &mut sa_b, &mut dec2, w1, p))),
        (
            "vitalwire_stream_in_place_chacha",
            Box::new(|| stream_round_trip_in_place(&mut ic_a, &mut ic_b, &dec3, w2, p)),
        ),
        (
            "vitalwire_stream_in_place_aesgcm",
            Box::new(|| stream_round_trip_in_place(&mut ia_a, &mut ia_b, &dec3, w3, p)),
        ),
        ("snow_ring", Box::new(|| snow_round_trip(&mut sn_a, &mut sn_b, &mut sbuf, &mut sout, p))),
        ("rustls_tls13", Box::new(|| tls_round_trip(&mut tc, &mut ts, &mut twire, &mut tout, p))),
    ];
    // References: the floor of the same cipher (snow: ChaCha; rustls: AES-256-GCM).
    let reference = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1];
    let batch = (200_000 / (size + 200)).max(4);
    let results = interleave(&mut jobs, batch, 1000, &reference);
    let name = |j: usize| if reference[j] == j { "" } else { jobs[reference[j]].0 };
    results.into_iter().enumerate().map(|(j, (t, r))| (jobs[j].0, t, r, name(j))).collect()
}

type Rows = Vec<(&'static str, f64, f64)>;

fn handshakes() -> (Rows, Rows) {
    let trust = trust_store();
    let setup = tls_setup();
    let t = &trust;
    let hs = |profile: Profile| {
        move || {
            vitalwire_handshake(
                profile,
                CipherSuite::ChaChaPolyBlake2s,
                t.clone(),
                x25519::Backend::default(),
            )
            .2
        }
    };
    let cold = |profile: Profile| {
        move || {
            vitalwire_handshake_cold(
                profile,
                CipherSuite::ChaChaPolyBlake2s,
                t.clone(),
                x25519::Backend::default(),
            )
            .2
        }
    };
    let snow = |pattern: &'static str| {
        move || {
            let (i, r) = snow_states_on(pattern, SnowBackend::AwsLcX25519);
            snow_handshake(i, r).2
        }
    };
    let mut jobs: Vec<Job<'_>> = vec![
        ("rustls_tls13_mutual_full", Box::new(|| tls_handshake(&setup).2)),
        ("vitalwire_XX", Box::new(hs(Profile::Xx))),
        ("vitalwire_IK (warm static-static cache)", Box::new(hs(Profile::Ik))),
        ("vitalwire_KK (warm static-static cache)", Box::new(hs(Profile::Kk))),
        ("vitalwire_IK (cold cache: first contact)", Box::new(cold(Profile::Ik))),
        ("vitalwire_KK (cold cache: first contact)", Box::new(cold(Profile::Kk))),
    ];
    let results = interleave(&mut jobs, 2, 500, &[0; 6]);
    // Report TLS's time over vitalwire's: above 1 means vitalwire is faster.
    let tls = jobs.iter().zip(results).map(|(j, (t, r))| (j.0, t, 1.0 / r)).collect();
    // Against snow's bare handshake on the same X25519 (aws-lc): this / snow.
    let mut jobs: Vec<Job<'_>> = vec![
        ("snow_XX (aws-lc X25519)", Box::new(snow("XX"))),
        ("vitalwire_XX", Box::new(hs(Profile::Xx))),
        ("snow_IK (aws-lc X25519)", Box::new(snow("IK"))),
        ("vitalwire_IK (warm cache)", Box::new(hs(Profile::Ik))),
        ("vitalwire_IK (cold cache)", Box::new(cold(Profile::Ik))),
        ("snow_KK (aws-lc X25519)", Box::new(snow("KK"))),
        ("vitalwire_KK (warm cache)", Box::new(hs(Profile::Kk))),
        ("vitalwire_KK (cold cache)", Box::new(cold(Profile::Kk))),
    ];
    let results = interleave(&mut jobs, 2, 500, &[0, 0, 2, 2, 2, 5, 5, 5]);
    let snow = jobs.iter().zip(results).map(|(j, (t, r))| (j.0, t, r)).collect();
    (tls, snow)
}

fn main() {
    // `--handshakes`: only the handshake tables (a quick check).
    if std::env::args().any(|a| a == "--handshakes") {
        return print_handshakes();
    }
    println!("### Interleaved ratios (median of per-round ratios; `--bin ratios`)\n");
    println!("| implementation | reference | {} |", SIZES.map(|s| format!("{s} B")).join(" | "));
    println!("|---|---|{}", "---|".repeat(SIZES.len()));
    let columns: Vec<_> = SIZES.iter().map(|&s| per_frame(s)).collect();
    for row in 0..columns[0].len() {
        let (name, _, _, reference) = columns[0][row];
        if reference.is_empty() {
            let cells: Vec<String> = columns.iter().map(|c| format!("{:.0} ns", c[row].1)).collect();
            println!("| {name} | | {} |", cells.join(" | "));
        } else {
            let cells: Vec<String> =
                columns.iter().map(|c| format!("{:.0} ns ({:.2}x)", c[row].1, c[row].2)).collect();
            println!("| {name} | {reference} | {} |", cells.join(" | "));
        }
    }
    print_handshakes();
}

fn print_handshakes() {
    let (tls, snow) = handshakes();
    println!("\n| handshake (both sides, in memory) | time | TLS 1.3 mutual (full) / this |");
    println!("|---|---|---|");
    for (name, t, r) in tls {
        println!("| {name} | {:.1} µs | {r:.2}x |", t / 1e3);
    }
    println!("\n| handshake, same X25519 (aws-lc) | time | this / snow's bare handshake |");
    println!("|---|---|---|");
    for (name, t, r) in snow {
        println!("| {name} | {:.1} µs | {r:.2}x |", t / 1e3);
    }
}
