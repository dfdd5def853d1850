//! Datagram mode on a deterministic simulated link (seeded loss, duplication, reordering and
//! delay, simulated time), small-MTU fragmentation, timers, and hostile input.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::BytesMut;
use common::*;
use vitalwire::datagram::*;
use vitalwire::fragment::ReassemblyLimits;
use vitalwire::*;

/// xorshift64*: deterministic randomness for the link.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A one-way lossy link: each packet is lost with `loss`, duplicated with `dup`, and delayed
/// by `delay` plus up to `jitter` ms (so packets overtake each other).
struct Link {
    rng: Rng,
    loss: f64,
    dup: f64,
    delay: u64,
    jitter: u64,
    queue: Vec<(u64, u64, Vec<u8>)>,
    seq: u64,
    /// Chance that an attacker on the link sends, just ahead of a packet, a copy of it with
    /// one bit of its payload flipped (past the first `tamper_from` bytes).
    tamper: f64,
    tamper_from: usize,
}

impl Link {
    fn new(seed: u64, loss: f64, dup: f64, jitter: u64) -> Self {
        Link {
            rng: Rng(seed),
            loss,
            dup,
            delay: 5,
            jitter,
            queue: Vec::new(),
            seq: 0,
            tamper: 0.0,
            tamper_from: 0,
        }
    }
    fn tampered(mut self, chance: f64, from: usize) -> Self {
        self.tamper = chance;
        self.tamper_from = from;
        self
    }
    fn perfect() -> Self {
        Self::new(1, 0.0, 0.0, 0)
    }
    fn send(&mut self, now: u64, packet: Vec<u8>) {
        if packet.len() > self.tamper_from && self.rng.chance(self.tamper) {
            let mut forged = packet.clone();
            let at = self.tamper_from + self.rng.below((packet.len() - self.tamper_from) as u64) as usize;
            forged[at] ^= 1 << self.rng.below(8);
            self.seq += 1;
            self.queue.push((now + self.delay, self.seq, forged));
        }
        if self.rng.chance(self.loss) {
            return;
        }
        let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let at = now + self.delay + self.rng.below(self.jitter + 1);
            self.seq += 1;
            self.queue.push((at, self.seq, packet.clone()));
        }
    }
    fn due(&mut self, now: u64) -> Vec<Vec<u8>> {
        self.queue.sort();
        let n = self.queue.iter().take_while(|(at, _, _)| *at <= now).count();
        self.queue.drain(..n).map(|(_, _, p)| p).collect()
    }
}

fn host_keys() -> Keypair {
    keys().host
}

fn dconfig() -> DatagramConfig {
    DatagramConfig {
        timers: TimerConfig {
            keepalive_ms: Some(1_000),
            dead_peer_ms: Some(30_000),
            rekey_after_ms: None,
            max_lifetime_ms: None,
        },
        ..DatagramConfig::default()
    }
}

fn host(params: SessionParams, config: DatagramConfig) -> DatagramHost<u8> {
    let k = keys();
    let trust = trust(&k);
    let psks = psks(&k);
    DatagramHost::new(
        Box::new(move || {
            ResponderConfig::new(host_keys(), trust.clone()).params(params).psk_directory(psks.clone())
        }),
        config,
        HostLimits::default(),
        Box::new(OsEntropy),
    )
}

fn client(profile: Profile, config: DatagramConfig, now: u64) -> DatagramClient {
    let k = keys();
    DatagramClient::new(
        initiator_config(profile, CipherSuite::default(), &k),
        0x0D0D_0001,
        config,
        Timestamp(now),
    )
    .unwrap()
}

/// What a run delivered.
#[derive(Default)]
struct Outcome {
    delivered: Vec<u32>,
    forged: usize,
    time: u64,
}

/// An attacker on the link who reads every datagram and injects forgeries next to it (just
/// before the genuine one, as if it won the race): tampered copies (one bit flipped in the
/// authenticated part), copies with a spoofed receiver index, and REJECTs. It records what
/// each forgery did to its target.
struct Forger {
    rng: Rng,
    /// Chance of a forgery next to a datagram to the host, to the device.
    rate: [f64; 2],
    device_index: u32,
    /// Per side (0: to the host, 1: to the device): forgeries injected, and those the
    /// target must have recorded as a security event (authentication failure or replay).
    injected: [u64; 2],
    must_count: [u64; 2],
    /// Every result a forgery got, for the report on failure.
    results: BTreeMap<String, u64>,
}

impl Forger {
    fn new(seed: u64, rate: [f64; 2]) -> Self {
        Forger {
            rng: Rng(seed),
            rate,
            device_index: 0x0D0D_0001,
            injected: [0; 2],
            must_count: [0; 2],
            results: BTreeMap::new(),
        }
    }

    /// Forgeries to deliver next to `genuine`, which is headed `to_device` or to the host:
    /// every kind next to each handshake packet, one at random next to some transport ones.
    fn forge(&mut self, genuine: &[u8], to_device: bool) -> Vec<(&'static str, Vec<u8>)> {
        if matches!(genuine[0], TYPE_RESPONSE | TYPE_FINISH) {
            return (0..3).flat_map(|kind| self.forge_one(genuine, to_device, kind)).collect();
        }
        if !self.rng.chance(self.rate[to_device as usize]) {
            return Vec::new();
        }
        let kind = self.rng.below(3);
        self.forge_one(genuine, to_device, kind)
    }

    fn forge_one(&mut self, genuine: &[u8], to_device: bool, kind: u64) -> Vec<(&'static str, Vec<u8>)> {
        // Where the authenticated bytes start, and where the receiver index sits.
        let (auth_from, index_at) = match genuine[0] {
            TYPE_RESPONSE => (10, 5),
            TYPE_FINISH => (6, 1),
            TYPE_TRANSPORT => (TRANSPORT_HEADER_LEN, 1),
            _ => return Vec::new(), // HELLOs are anyone's to send: nothing to forge.
        };
        let mut out = Vec::new();
        match kind {
            0 => {
                let mut p = genuine.to_vec();
                let at = auth_from + self.rng.below((p.len() - auth_from) as u64) as usize;
                p[at] ^= 1 << self.rng.below(8);
                out.push(("tampered", p));
            }
            1 => {
                let mut p = genuine.to_vec();
                let spoofed = (self.rng.next() as u32) | 0x8000_0000;
                p[index_at..index_at + 4].copy_from_slice(&spoofed.to_be_bytes());
                out.push(("spoofed index", p));
            }
            _ if to_device => {
                let mut p = vec![TYPE_RESPONSE, 0, 0, 0, 0];
                p.extend_from_slice(&self.device_index.to_be_bytes());
                p.extend_from_slice(&[0x03, 0x01, 0x04]);
                out.push(("reject", p));
            }
            _ => {
                let mut p = genuine.to_vec();
                let at = auth_from + self.rng.below((p.len() - auth_from) as u64) as usize;
                p[at] = p[at].wrapping_add(1);
                out.push(("tampered", p));
            }
        }
        out
    }

    /// Records what a forgery of `kind` got.
    fn note(&mut self, kind: &str, to_device: bool, result: Result<(), Error>) {
        let side = to_device as usize;
        self.injected[side] += 1;
        *self.results.entry(format!("{kind}: {result:?}")).or_default() += 1;
        assert!(result.is_err(), "a forgery ({kind}) was accepted");
        match (kind, result) {
            ("spoofed index", r) => {
                assert_eq!(
                    r,
                    Err(Error::Dropped(DropReason::UnknownIndex)),
                    "a spoofed index reached a session"
                )
            }
            (
                _,
                Err(Error::Dropped(
                    DropReason::AuthenticationFailed | DropReason::Replay | DropReason::TooOld,
                )),
            ) => self.must_count[side] += 1,
            // A REJECT while handshaking is a hint, counted once an authenticated RESPONSE
            // contradicts it.
            ("reject", Err(Error::Handshake(HandshakeError::Rejected(_)))) => self.must_count[side] += 1,
            // Dropped before any key was tried: for a session that is gone or not there yet
            // (the same as a stale genuine packet), or a key epoch no longer kept.
            (
                _,
                Err(Error::Dropped(
                    DropReason::UnknownIndex | DropReason::UnexpectedHandshake | DropReason::StaleKey,
                )),
            ) => {}
            (kind, r) => panic!("unexpected result for a forgery ({kind}): {r:?}"),
        }
    }
}

/// Runs a device sending `frames` numbered frames (one per ms) through lossy links to a
/// host; returns what the host received.
#[allow(clippy::too_many_arguments)]
fn run(
    profile: Profile,
    frames: u32,
    up: &mut Link,
    down: &mut Link,
    params: SessionParams,
    config: DatagramConfig,
    mtu: Option<usize>,
    max_ms: u64,
    mut forger: Option<&mut Forger>,
) -> (Outcome, DatagramClient, DatagramHost<u8>) {
    let mut now = 0u64;
    let mut dev = client(profile, config, now);
    let mut h = host(params, config);
    // One datagram per millisecond over a jittery link keeps many datagrams in flight.
    let limits = ReassemblyLimits { max_in_flight: 32, timeout_ms: 2_000, ..ReassemblyLimits::default() };
    let mut frag_up =
        mtu.map(|m| (FragmentLink::new(m, limits).unwrap(), FragmentLink::new(m, limits).unwrap()));
    let mut frag_down =
        mtu.map(|m| (FragmentLink::new(m, limits).unwrap(), FragmentLink::new(m, limits).unwrap()));
    let mut out = Outcome::default();
    let mut next_frame = 0u32;
    let send_link =
        |link: &mut Link, frag: &mut Option<(FragmentLink, FragmentLink)>, now: u64, p: Vec<u8>| match frag {
            Some((tx, _)) => {
                for piece in tx.split(&p).unwrap() {
                    assert!(piece.len() <= mtu.unwrap());
                    link.send(now, piece);
                }
            }
            None => link.send(now, p),
        };
    let recv_link =
        |frag: &mut Option<(FragmentLink, FragmentLink)>, now: u64, p: Vec<u8>| -> Option<BytesMut> {
            match frag {
                Some((_, rx)) => rx.receive(&p, Timestamp(now)).ok().flatten(),
                None => Some(BytesMut::from(&p[..])),
            }
        };
    while now < max_ms {
        // Device: send the next frame once the session is confirmed (XX: until the host's
        // first packet proves FINISH arrived, data may be lost with it).
        if dev.session().is_some_and(|s| s.is_confirmed()) && next_frame < frames {
            let payload = format!("frame {next_frame}");
            dev.send(1, payload.as_bytes(), Timestamp(now)).unwrap();
            next_frame += 1;
        }
        while let Some(p) = dev.poll_transmit(Timestamp(now)) {
            send_link(up, &mut frag_up, now, p);
        }
        // Host.
        for p in up.due(now) {
            if let Some(d) = recv_link(&mut frag_up, now, p) {
                if let Some(f) = forger.as_deref_mut() {
                    for (kind, forged) in f.forge(&d, false) {
                        let r = h.handle_packet(9, BytesMut::from(&forged[..]), Timestamp(now));
                        f.note(kind, false, r);
                    }
                }
                let _ = h.handle_packet(7, d, Timestamp(now));
            }
        }
        while let Some(inc) = h.poll_incoming() {
            if let Incoming::Data { payload, .. } = inc.incoming {
                let text = String::from_utf8(payload.to_vec()).unwrap();
                match text.strip_prefix("frame ").and_then(|n| n.parse::<u32>().ok()) {
                    Some(n) => {
                        out.delivered.push(n);
                        // Under attack the host answers every tenth frame, so that the
                        // forger has traffic to the device to work with too.
                        if forger.is_some() && n % 10 == 0 {
                            h.send(inc.index, 1, b"ack", Timestamp(now)).unwrap();
                        }
                    }
                    None => out.forged += 1,
                }
            }
        }
        if h.poll_timeout().is_some_and(|t| t.0 <= now) {
            h.handle_timeout(Timestamp(now));
        }
        while let Some((_, p)) = h.poll_transmit() {
            send_link(down, &mut frag_down, now, p);
        }
        // Device receives.
        for p in down.due(now) {
            if let Some(d) = recv_link(&mut frag_down, now, p) {
                if let Some(f) = forger.as_deref_mut() {
                    for (kind, forged) in f.forge(&d, true) {
                        let r = dev.handle_packet(BytesMut::from(&forged[..]), Timestamp(now));
                        f.note(kind, true, r);
                    }
                }
                let _ = dev.handle_packet(d, Timestamp(now));
            }
        }
        if dev.poll_timeout().is_some_and(|t| t.0 <= now) {
            let _ = dev.handle_timeout(Timestamp(now));
        }
        if frames > 0 && next_frame == frames && up.queue.is_empty() && down.queue.is_empty() && now > 100 {
            break;
        }
        now += 1;
    }
    out.time = now;
    (out, dev, h)
}

fn params(rekey_interval: u32) -> SessionParams {
    SessionParams { max_frame_len: 1024, rekey_interval, ..SessionParams::default() }
}

#[test]
fn perfect_link_delivers_everything_in_order_for_every_profile() {
    for profile in Profile::ALL {
        let (out, dev, mut h) = run(
            profile,
            500,
            &mut Link::perfect(),
            &mut Link::perfect(),
            params(100),
            dconfig(),
            None,
            10_000,
            None,
        );
        assert_eq!(out.delivered, (0..500).collect::<Vec<_>>(), "{profile}");
        assert_eq!(out.forged, 0);
        let s = dev.session().unwrap();
        assert!(s.tx_epoch() >= 4, "{profile}: rekeyed by count");
        assert_eq!(h.session_count(), 1);
        assert!(s.is_confirmed());
        let events: Vec<_> = std::iter::from_fn(|| h.poll_event()).collect();
        assert!(events.iter().any(|e| matches!(e.kind, EventKind::SessionEstablished { .. })));
    }
}

#[test]
fn lossy_link_delivers_at_most_once_authentic_frames_across_rekeys() {
    for (seed, profile) in [(11u64, Profile::Ik), (12, Profile::Xx)] {
        let mut up = Link::new(seed, 0.20, 0.10, 40);
        let mut down = Link::new(seed + 100, 0.20, 0.10, 40);
        let (out, dev, h) =
            run(profile, 10_000, &mut up, &mut down, params(500), dconfig(), None, 60_000, None);
        let unique: BTreeSet<u32> = out.delivered.iter().copied().collect();
        assert_eq!(unique.len(), out.delivered.len(), "{profile}: a frame was delivered twice");
        assert_eq!(out.forged, 0, "every delivered frame is authentic");
        assert!(unique.iter().all(|n| *n < 10_000));
        // About 80% arrive; the rest were lost on the link, not refused.
        assert!(
            out.delivered.len() > 7_500 && out.delivered.len() < 8_500,
            "{profile}: {}",
            out.delivered.len()
        );
        let s = dev.session().expect("the session survived");
        assert!(s.error().is_none());
        assert!(s.tx_epoch() >= 15, "{profile}: several rekeys ({})", s.tx_epoch());
        let c = h.security_counters();
        assert!(c.replays > 100, "{profile}: duplicates were refused by the window ({})", c.replays);
        assert_eq!(c.authentication_failures, 0);
    }
}

#[test]
fn handshake_and_data_over_a_20_byte_mtu() {
    for profile in [Profile::Xx, Profile::Ik, Profile::XxPsk3] {
        let (out, dev, _) = run(
            profile,
            200,
            &mut Link::perfect(),
            &mut Link::perfect(),
            params(1000),
            dconfig(),
            Some(20),
            20_000,
            None,
        );
        assert!(dev.is_established(), "{profile}");
        assert_eq!(out.delivered, (0..200).collect::<Vec<_>>(), "{profile}");
    }
    // And with loss on the small MTU: whole datagrams are lost when a fragment is, the
    // handshake still completes by retransmission, and nothing arrives twice.
    let mut up = Link::new(5, 0.05, 0.05, 10);
    let mut down = Link::new(6, 0.05, 0.05, 10);
    let (out, dev, _) =
        run(Profile::Ik, 300, &mut up, &mut down, params(1000), dconfig(), Some(20), 60_000, None);
    assert!(dev.is_established());
    let unique: BTreeSet<u32> = out.delivered.iter().copied().collect();
    assert_eq!(unique.len(), out.delivered.len());
    assert!(out.delivered.len() > 100);
    // And with an attacker racing tampered fragments (fragments are not authenticated,
    // §13.6): a spoiled datagram is either dropped by the reassembler (a conflicting piece)
    // or reassembled and refused by its AEAD; either way it is no worse than a loss.
    for profile in [Profile::Ik, Profile::Xx] {
        let mut up = Link::new(7, 0.02, 0.0, 10).tampered(0.05, 4);
        let mut down = Link::new(8, 0.02, 0.0, 10).tampered(0.05, 4);
        let (out, dev, h) =
            run(profile, 300, &mut up, &mut down, params(1000), dconfig(), Some(20), 60_000, None);
        assert!(dev.is_established(), "{profile}");
        assert!(dev.session().unwrap().error().is_none(), "{profile}");
        let unique: BTreeSet<u32> = out.delivered.iter().copied().collect();
        assert_eq!(unique.len(), out.delivered.len(), "{profile}");
        assert_eq!(out.forged, 0, "{profile}");
        assert!(out.delivered.len() > 100, "{profile}: {}", out.delivered.len());
        let refused =
            h.security_counters().authentication_failures + dev.security_counters().authentication_failures;
        assert!(refused > 0, "{profile}: some tampered datagrams were reassembled and refused");
    }
}

#[test]
fn timers_fire_in_simulated_time() {
    // Keepalive: an idle device pings every second; the host answers.
    let config = DatagramConfig {
        timers: TimerConfig {
            keepalive_ms: Some(1_000),
            dead_peer_ms: Some(5_000),
            rekey_after_ms: Some(2_000),
            max_lifetime_ms: None,
        },
        ..DatagramConfig::default()
    };
    let (_, dev, _) = run(
        Profile::Ik,
        0,
        &mut Link::perfect(),
        &mut Link::perfect(),
        params(1 << 20),
        config,
        None,
        4_500,
        None,
    );
    let s = dev.session().unwrap();
    let (sent, received) = s.packet_counts();
    assert!(sent >= 4, "keepalive PINGs ({sent})");
    assert!(received >= 4, "PONGs back ({received})");
    assert!(s.tx_epoch() >= 2, "rekey by time ({})", s.tx_epoch());
    assert!(s.error().is_none(), "the keepalives keep the session alive");

    // Dead peer: the host vanishes after the handshake.
    let mut now = 0;
    let mut dev = client(Profile::Ik, config, now);
    let mut h = host(params(1 << 20), config);
    let hello = dev.poll_transmit(Timestamp(now)).unwrap();
    h.handle_packet(1, BytesMut::from(&hello[..]), Timestamp(now)).unwrap();
    let (_, resp) = h.poll_transmit().unwrap();
    dev.handle_packet(BytesMut::from(&resp[..]), Timestamp(now)).unwrap();
    assert!(dev.is_established());
    while dev.error().is_none() && now < 10_000 {
        now = dev.poll_timeout().unwrap().0;
        let _ = dev.handle_timeout(Timestamp(now));
        while dev.poll_transmit(Timestamp(now)).is_some() {}
    }
    assert_eq!(dev.error(), Some(Error::DeadPeer));
    assert_eq!(now, 5_000, "exactly the dead-peer timeout after the last packet");
    let events: Vec<_> = std::iter::from_fn(|| dev.poll_event(Timestamp(now))).collect();
    assert!(events.iter().any(|e| e.kind == EventKind::TimerExpired { timer: Timer::DeadPeer }));

    // Lifetime: the session ends at its maximum age even while traffic flows.
    let config = DatagramConfig {
        timers: TimerConfig {
            keepalive_ms: Some(100),
            dead_peer_ms: None,
            rekey_after_ms: None,
            max_lifetime_ms: Some(3_000),
        },
        ..DatagramConfig::default()
    };
    let (_, mut dev, _) = run(
        Profile::Ik,
        0,
        &mut Link::perfect(),
        &mut Link::perfect(),
        params(1 << 20),
        config,
        None,
        4_000,
        None,
    );
    // Both ends reach the limit at 3 s; whichever acts first closes, the other hears why.
    assert!(dev.session().unwrap().is_closed());
    let events: Vec<_> = std::iter::from_fn(|| dev.poll_event(Timestamp(4_000))).map(|e| e.kind).collect();
    assert!(
        events.contains(&EventKind::TimerExpired { timer: Timer::Lifetime })
            || events.contains(&EventKind::SessionClosed { code: CloseCode::SESSION_EXPIRED, by_peer: true }),
        "{events:?}"
    );

    // Handshake timeout: nobody answers; the HELLO is retransmitted with backoff, then the
    // client gives up at the deadline.
    let config =
        DatagramConfig { handshake_timeout_ms: 10_000, initial_rto_ms: 500, max_rto_ms: 4_000, ..dconfig() };
    let mut dev = client(Profile::Xx, config, 0);
    let mut sends = Vec::new();
    let mut now = 0;
    while dev.error().is_none() {
        while dev.poll_transmit(Timestamp(now)).is_some() {
            sends.push(now);
        }
        now = dev.poll_timeout().unwrap().0;
        let _ = dev.handle_timeout(Timestamp(now));
    }
    assert_eq!(sends, vec![0, 500, 1_500, 3_500, 7_500], "exponential backoff");
    assert_eq!(now, 10_000);
    assert_eq!(dev.error(), Some(Error::Handshake(HandshakeError::Timeout)));
}

/// Seals DATA on the client and takes the packet.
trait SendNow {
    fn send_now(&mut self, channel: u8, payload: &[u8], now: Timestamp) -> Vec<u8>;
}

impl SendNow for DatagramClient {
    fn send_now(&mut self, channel: u8, payload: &[u8], now: Timestamp) -> Vec<u8> {
        self.send(channel, payload, now).unwrap();
        let mut last = None;
        while let Some(p) = self.poll_transmit(now) {
            last = Some(p);
        }
        last.unwrap()
    }
}

fn established() -> (DatagramClient, DatagramHost<u8>, u32) {
    let mut dev = client(Profile::Ik, dconfig(), 0);
    let mut h = host(params(100), dconfig());
    let hello = dev.poll_transmit(Timestamp(0)).unwrap();
    h.handle_packet(1, BytesMut::from(&hello[..]), Timestamp(0)).unwrap();
    let (_, resp) = h.poll_transmit().unwrap();
    dev.handle_packet(BytesMut::from(&resp[..]), Timestamp(0)).unwrap();
    let index = dev.session().unwrap().remote_index();
    (dev, h, index)
}

#[test]
fn replays_forgeries_and_stale_packets_are_dropped_and_traffic_continues() {
    let (mut dev, mut h, _) = established();
    let p1 = dev.send_now(1, b"one", Timestamp(1));
    let p2 = dev.send_now(1, b"two", Timestamp(1));
    assert!(h.handle_packet(1, BytesMut::from(&p2[..]), Timestamp(2)).is_ok());
    assert!(h.handle_packet(1, BytesMut::from(&p1[..]), Timestamp(2)).is_ok(), "reordered within the window");
    assert_eq!(
        h.handle_packet(1, BytesMut::from(&p1[..]), Timestamp(2)),
        Err(Error::Dropped(DropReason::Replay))
    );
    // A forged packet with a far-ahead counter does not move the window or the keys.
    let mut forged = p2.clone();
    forged[5..13].copy_from_slice(&(5_000u64).to_be_bytes());
    assert_eq!(
        h.handle_packet(1, BytesMut::from(&forged[..]), Timestamp(3)),
        Err(Error::Dropped(DropReason::AuthenticationFailed))
    );
    let mut far = p2.clone();
    far[5..13].copy_from_slice(&(u64::MAX - 5).to_be_bytes());
    assert_eq!(
        h.handle_packet(1, BytesMut::from(&far[..]), Timestamp(3)),
        Err(Error::Dropped(DropReason::StaleKey))
    );
    let mut flipped = dev.send_now(1, b"tampered", Timestamp(3));
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_eq!(
        h.handle_packet(1, BytesMut::from(&flipped[..]), Timestamp(3)),
        Err(Error::Dropped(DropReason::AuthenticationFailed))
    );
    // Unknown index, garbage, truncation.
    let mut other = p2.clone();
    other[1] ^= 0xFF;
    assert_eq!(
        h.handle_packet(1, BytesMut::from(&other[..]), Timestamp(3)),
        Err(Error::Dropped(DropReason::UnknownIndex))
    );
    for cut in 0..p2.len() {
        let _ = h.handle_packet(1, BytesMut::from(&p2[..cut]), Timestamp(3));
    }
    assert!(h.handle_packet(1, BytesMut::from(&b"\xff garbage"[..]), Timestamp(3)).is_err());
    // Legitimate traffic still flows.
    let p3 = dev.send_now(1, b"three", Timestamp(4));
    h.handle_packet(1, BytesMut::from(&p3[..]), Timestamp(4)).unwrap();
    let got: Vec<_> = std::iter::from_fn(|| h.poll_incoming()).map(|i| i.incoming).collect();
    assert_eq!(got.len(), 3, "one, two, three; nothing forged or replayed");
    let c = h.security_counters();
    // The replay, and the truncated copies of an accepted packet long enough to parse
    // (refused by the window before any decryption work); shorter ones do not parse.
    assert_eq!(c.replays, 1 + (p2.len() - TRANSPORT_OVERHEAD) as u64);
    // The far-ahead counter and the flipped tag; the far epoch is refused before any key.
    assert_eq!(c.authentication_failures, 2);
    // Too old for the window.
    let (mut dev, mut h, _) = established();
    let old = dev.send_now(1, b"old", Timestamp(1));
    for i in 0..1100 {
        let p = dev.send_now(1, format!("{i}").as_bytes(), Timestamp(1));
        h.handle_packet(1, BytesMut::from(&p[..]), Timestamp(1)).unwrap();
    }
    assert!(matches!(
        h.handle_packet(1, BytesMut::from(&old[..]), Timestamp(2)),
        Err(Error::Dropped(DropReason::TooOld | DropReason::StaleKey))
    ));
}

#[test]
fn previous_key_is_kept_for_the_grace_period_then_erased() {
    let (mut dev, mut h, _) = established();
    // rekey_interval is 100: packets 0..99 are epoch 0.
    let late = dev.send_now(1, b"late", Timestamp(0));
    dev_rekey(&mut dev);
    let newer = dev.send_now(1, b"new epoch", Timestamp(1));
    h.handle_packet(1, BytesMut::from(&newer[..]), Timestamp(1)).unwrap();
    // Within the grace period the in-flight packet of the old epoch still opens.
    let copy = late.clone();
    h.handle_packet(1, BytesMut::from(&late[..]), Timestamp(1_000)).unwrap();
    // After it, the old key is gone.
    let (mut dev, mut h, _) = established();
    let late = dev.send_now(1, b"late", Timestamp(0));
    dev_rekey(&mut dev);
    let newer = dev.send_now(1, b"new", Timestamp(1));
    h.handle_packet(1, BytesMut::from(&newer[..]), Timestamp(1)).unwrap();
    assert_eq!(
        h.handle_packet(1, BytesMut::from(&late[..]), Timestamp(6_000)),
        Err(Error::Dropped(DropReason::StaleKey))
    );
    drop(copy);
}

/// Moves the client's sending key to the next epoch by sending through the interval.
fn dev_rekey(dev: &mut DatagramClient) {
    let epoch = dev.session().unwrap().tx_epoch();
    while dev.session().unwrap().tx_epoch() == epoch {
        let _ = dev.send_now(2, b"filler", Timestamp(0));
    }
}

#[test]
fn handshake_duplicates_are_harmless_and_floods_are_bounded() {
    let mut dev = client(Profile::Ik, dconfig(), 0);
    let mut h = host(params(100), dconfig());
    let hello = dev.poll_transmit(Timestamp(0)).unwrap();
    for _ in 0..5 {
        h.handle_packet(1, BytesMut::from(&hello[..]), Timestamp(0)).unwrap();
    }
    assert_eq!(h.session_count() + h.half_open_count(), 1, "one HELLO, one session");
    let answers: Vec<_> = std::iter::from_fn(|| h.poll_transmit()).collect();
    assert_eq!(answers.len(), 5, "each duplicate is answered from the cache");
    assert!(answers.windows(2).all(|w| w[0].1 == w[1].1), "with the same bytes");
    for (_, a) in &answers {
        let _ = dev.handle_packet(BytesMut::from(&a[..]), Timestamp(1));
    }
    assert!(dev.is_established());

    // A flood of distinct HELLOs (each a real XX message 1) fills at most max_half_open slots.
    let limits = HostLimits { max_half_open: 16, max_sessions: 100 };
    let k = keys();
    let trust = trust(&k);
    let mut h: DatagramHost<u8> = DatagramHost::new(
        Box::new(move || ResponderConfig::new(host_keys(), trust.clone())),
        dconfig(),
        limits,
        Box::new(OsEntropy),
    );
    let mut refused = 0;
    for i in 0..200u32 {
        let c = DatagramClient::new(
            InitiatorConfig::new(Profile::Xx, Keypair::generate().unwrap(), DeviceIdentity::new("x")),
            i + 1,
            dconfig(),
            Timestamp(0),
        );
        let mut c = c.unwrap();
        let p = c.poll_transmit(Timestamp(0)).unwrap();
        if h.handle_packet(2, BytesMut::from(&p[..]), Timestamp(0)) == Err(Error::Dropped(DropReason::Limit))
        {
            refused += 1;
        }
        assert!(h.half_open_count() <= 16);
    }
    assert_eq!(refused, 184);
    assert!(std::iter::from_fn(|| h.poll_event())
        .any(|e| e.kind == EventKind::LimitExceeded { limit: Limit::HalfOpenHandshakes }));
    // Half-open handshakes time out and free their slots.
    h.handle_timeout(Timestamp(31_000));
    assert_eq!(h.half_open_count(), 0);
}

#[test]
fn fragment_flood_stays_within_the_reassembly_bound() {
    let limits = ReassemblyLimits { max_message_len: 2048, max_in_flight: 4, timeout_ms: 1_000 };
    let mut link = FragmentLink::new(20, limits).unwrap();
    let mut rng = Rng(99);
    let mut peak = 0;
    for i in 0..50_000u64 {
        // Random headers: first pieces of many messages, lies about counts, overlaps.
        let id = rng.below(300) as u16;
        let count = 1 + rng.below(255) as u8;
        let index = rng.below(count as u64) as u8;
        let mut p = vec![(id >> 8) as u8, id as u8, index, count];
        p.extend((0..rng.below(17)).map(|_| rng.next() as u8));
        let _ = link.receive(&p, Timestamp(i / 10));
        peak = peak.max(link.buffered_bytes());
        assert!(link.buffered_bytes() <= limits.memory_bound());
    }
    assert!(peak > 0, "the flood did reach the reassembler");
    link.handle_timeout(Timestamp(1_000_000));
    assert_eq!(link.buffered_bytes(), 0);
    // Legitimate traffic still reassembles after the flood.
    let mut tx = FragmentLink::new(20, limits).unwrap();
    let msg = vec![7u8; 300];
    let mut got = None;
    for p in tx.split(&msg).unwrap() {
        if let Ok(Some(d)) = link.receive(&p, Timestamp(1_000_001)) {
            got = Some(d);
        }
    }
    assert_eq!(got.unwrap().to_vec(), msg);
}

#[test]
fn host_serves_many_devices_on_one_socket_and_follows_roaming() {
    let k = keys();
    let mut list = TrustList::new();
    let devices: Vec<Keypair> =
        (0..20u8).map(|i| Keypair::from_private(PrivateKey::from_bytes([0x80 + i; 32]))).collect();
    for d in &devices {
        list.add(*d.public(), "", "", 0);
    }
    let trust: Arc<dyn TrustPolicy> = Arc::new(TrustStore::in_memory(list));
    let host_public = *k.host.public();
    let mut h: DatagramHost<u8> = DatagramHost::new(
        Box::new(move || ResponderConfig::new(host_keys(), trust.clone())),
        dconfig(),
        HostLimits::default(),
        Box::new(OsEntropy),
    );
    let mut clients: Vec<DatagramClient> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            DatagramClient::new(
                InitiatorConfig::new(Profile::Ik, d.clone(), DeviceIdentity::new(format!("PM-{i}")))
                    .host_key(host_public),
                i as u32 + 1,
                dconfig(),
                Timestamp(0),
            )
            .unwrap()
        })
        .collect();
    // Handshakes: address = client number.
    for (i, c) in clients.iter_mut().enumerate() {
        let p = c.poll_transmit(Timestamp(0)).unwrap();
        h.handle_packet(i as u8, BytesMut::from(&p[..]), Timestamp(0)).unwrap();
    }
    while let Some((addr, p)) = h.poll_transmit() {
        clients[addr as usize].handle_packet(BytesMut::from(&p[..]), Timestamp(0)).unwrap();
    }
    // IK: each session counts once its device's first packet confirms it (spec §4.8).
    assert_eq!((h.session_count(), h.half_open_count()), (0, 20));
    let mut by_peer: BTreeMap<PublicKey, Vec<String>> = BTreeMap::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let p = c.send_now(1, format!("hello from {i}").as_bytes(), Timestamp(1));
        // Device 3 moved to a new address: its session follows the authenticated packet.
        let addr = if i == 3 { 200 } else { i as u8 };
        h.handle_packet(addr, BytesMut::from(&p[..]), Timestamp(1)).unwrap();
    }
    while let Some(inc) = h.poll_incoming() {
        if let Incoming::Data { payload, .. } = inc.incoming {
            by_peer.entry(inc.peer).or_default().push(String::from_utf8(payload.to_vec()).unwrap());
        }
    }
    for (i, d) in devices.iter().enumerate() {
        assert_eq!(by_peer[d.public()], vec![format!("hello from {i}")]);
    }
    assert_eq!((h.session_count(), h.half_open_count()), (20, 0));
    let index3 = clients[3].session().unwrap().remote_index();
    h.send(index3, 9, b"to device 3", Timestamp(2)).unwrap();
    let (addr, _) = h.poll_transmit().unwrap();
    assert_eq!(addr, 200, "replies go to the device's latest authenticated address");
}

#[test]
fn stream_sessions_carry_a_one_mebibyte_message_in_fragments() {
    let (mut dev, mut host) = session_pair();
    let dump: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    let mut wire = BytesMut::new();
    dev.seal_message(2, &dump, &mut wire).unwrap();
    let got = open_all(&mut host, &mut wire);
    let data: Vec<_> = got
        .into_iter()
        .filter_map(|r| match r.unwrap() {
            Incoming::Data { channel, payload } => Some((channel, payload)),
            Incoming::Fragment => None,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].0, 2);
    assert_eq!(&data[0].1[..], &dump[..]);
    // Small messages still go in one frame; too large ones are refused before sending.
    dev.seal_message(1, b"small", &mut wire).unwrap();
    assert_eq!(open_all(&mut host, &mut wire).len(), 1);
    let too_big = vec![0u8; (4 << 20) + 1];
    assert!(matches!(dev.seal_message(1, &too_big, &mut wire), Err(Error::PayloadTooLarge { .. })));
    assert!(wire.is_empty());
}

#[test]
fn stream_fragment_abuse_is_a_protocol_violation() {
    use vitalwire::fragment::FragmentHeader;
    let (mut dev, mut host) = session_pair();
    let mut wire = BytesMut::new();
    let piece = |id: u16, index: u8, count: u8, len: usize| {
        [&FragmentHeader { message_id: id, index, count }.encode()[..], &vec![1u8; len]].concat()
    };
    dev.seal_raw_for_testing_only(1, 1, 1, &piece(0, 0, 3, 100), &mut wire).unwrap();
    dev.seal_data(1, b"interleaved", &mut wire).unwrap();
    let got = open_all(&mut host, &mut wire);
    assert_eq!(got[1], Err(Error::Protocol(ProtocolError::InterleavedFragments)));
    let (mut dev, mut host) = session_pair();
    dev.seal_raw_for_testing_only(1, 1, 1, &piece(0, 0, 3, 100), &mut wire).unwrap();
    dev.seal_raw_for_testing_only(1, 1, 1, &piece(0, 0, 3, 99), &mut wire).unwrap();
    assert_eq!(open_all(&mut host, &mut wire)[1], Err(Error::Protocol(ProtocolError::BadFragment)));
}

#[test]
fn stream_session_timers() {
    let (mut dev, mut host) = session_pair();
    let cfg = TimerConfig {
        keepalive_ms: Some(100),
        dead_peer_ms: Some(1_000),
        rekey_after_ms: Some(500),
        max_lifetime_ms: Some(10_000),
    };
    dev.set_timers(cfg);
    host.set_timers(cfg);
    dev.handle_timeout(Timestamp(0)).unwrap();
    host.handle_timeout(Timestamp(0)).unwrap();
    let mut wire = BytesMut::new();
    let mut back = BytesMut::new();
    let mut now = 0;
    // Both alive: keepalives and time-based rekeys flow, nothing fails.
    while now < 3_000 {
        now = dev.poll_timeout().unwrap().0.min(host.poll_timeout().unwrap().0);
        dev.handle_timeout(Timestamp(now)).unwrap();
        host.handle_timeout(Timestamp(now)).unwrap();
        dev.poll_transmit(&mut wire);
        host.poll_transmit(&mut back);
        let _ = open_all(&mut host, &mut wire);
        let _ = open_all(&mut dev, &mut back);
        host.poll_transmit(&mut back);
        let _ = open_all(&mut dev, &mut back);
    }
    assert!(dev.stats().rekeys_sent >= 5, "rekey by time ({})", dev.stats().rekeys_sent);
    assert!(host.stats().frames_received >= 20, "keepalives");
    // The host goes silent: the device declares it dead after 1 s and says why.
    let start = now;
    while dev.error().is_none() {
        now = dev.poll_timeout().unwrap().0;
        let _ = dev.handle_timeout(Timestamp(now));
        dev.poll_transmit(&mut wire);
    }
    assert_eq!(dev.error(), Some(Error::DeadPeer));
    assert!(now - start <= 1_000 + 100, "within one keepalive interval of the timeout");
    let got = open_all(&mut host, &mut wire);
    assert_eq!(got.last().unwrap(), &Ok(Incoming::Closed(CloseCode::IDLE_TIMEOUT)));
    // Lifetime.
    let (mut dev, _) = session_pair();
    dev.set_timers(TimerConfig { max_lifetime_ms: Some(1_000), ..TimerConfig::DISABLED });
    dev.handle_timeout(Timestamp(5)).unwrap();
    assert!(dev.poll_transmit(&mut BytesMut::new()), "IK: the confirming PING first (spec §4.8)");
    assert_eq!(dev.poll_timeout(), Some(Timestamp(1_005)));
    assert_eq!(dev.handle_timeout(Timestamp(1_005)), Err(Error::SessionExpired));
    let mut out = BytesMut::new();
    assert!(dev.poll_transmit(&mut out), "a CLOSE SESSION_EXPIRED is queued");
    // Handshake timeout (stream).
    let k = keys();
    let mut hs = Handshake::initiator(initiator_config(Profile::Xx, CipherSuite::default(), &k))
        .unwrap()
        .with_timeout_ms(2_000);
    hs.handle_timeout(Timestamp(100)).unwrap();
    assert_eq!(hs.poll_timeout(), Some(Timestamp(2_100)));
    assert_eq!(hs.handle_timeout(Timestamp(2_100)), Err(Error::Handshake(HandshakeError::Timeout)));
}

#[test]
fn forgeries_on_a_lossy_link_are_dropped_counted_and_genuine_data_still_flows() {
    // No duplication on the link: every replay the peers see is a forgery's.
    for (seed, profile) in [(21u64, Profile::Ik), (22, Profile::Xx), (23, Profile::XxPsk3)] {
        let mut up = Link::new(seed, 0.10, 0.0, 40);
        let mut down = Link::new(seed + 100, 0.10, 0.0, 40);
        let mut forger = Forger::new(seed + 200, [0.05, 0.3]);
        let (out, dev, h) =
            run(profile, 5_000, &mut up, &mut down, params(500), dconfig(), None, 60_000, Some(&mut forger));
        let report = format!("{profile}: {:?}", forger.results);
        eprintln!("{report}; injected {:?}, counted {:?}", forger.injected, forger.must_count);
        let unique: BTreeSet<u32> = out.delivered.iter().copied().collect();
        assert_eq!(unique.len(), out.delivered.len(), "{report}: a frame was delivered twice");
        assert_eq!(out.forged, 0, "{report}: only authentic frames are delivered");
        assert!(out.delivered.len() > 4_000, "{report}: {} delivered", out.delivered.len());
        let s = dev.session().expect("the session survived");
        assert!(s.error().is_none() && !s.is_closed(), "{report}");
        assert_eq!(h.session_count(), 1, "{report}");
        // The forger was busy on both sides, and every forgery that reached a session or a
        // handshake was recorded as exactly one event by its target.
        assert!(forger.injected[0] > 200 && forger.injected[1] > 50, "{report}: {:?}", forger.injected);
        assert!(forger.must_count[0] > 100 && forger.must_count[1] > 30, "{report}: {:?}", forger.must_count);
        let hc = h.security_counters();
        let dc = dev.security_counters();
        assert_eq!(hc.authentication_failures + hc.replays, forger.must_count[0], "{report}: host {hc:?}");
        assert_eq!(dc.authentication_failures + dc.replays, forger.must_count[1], "{report}: device {dc:?}");
    }
}

fn flip(p: &[u8], at: usize) -> BytesMut {
    let mut v = p.to_vec();
    v[at] ^= 0x01;
    BytesMut::from(&v[..])
}

#[test]
fn forged_and_tampered_handshake_packets_are_dropped_and_the_handshake_completes() {
    let auth_failed = Err(Error::Dropped(DropReason::AuthenticationFailed));
    let cases = Profile::ALL.into_iter().flat_map(|p| [(p, false), (p, true)]);
    for (profile, fixed_ephemeral) in cases {
        let mut dev = client(profile, dconfig(), 0);
        let mut h = if fixed_ephemeral {
            // As the test vectors run it: the responder's ephemeral key given, not drawn.
            let k = keys();
            let (trust, psks) = (trust(&k), psks(&k));
            DatagramHost::new(
                Box::new(move || {
                    ResponderConfig::new(host_keys(), trust.clone())
                        .params(params(100))
                        .psk_directory(psks.clone())
                        .fixed_ephemeral_for_testing_only(PrivateKey::from_bytes([0x70; 32]))
                }),
                dconfig(),
                HostLimits::default(),
                Box::new(OsEntropy),
            )
        } else {
            host(params(100), dconfig())
        };
        let hello = dev.poll_transmit(Timestamp(0)).unwrap();
        h.handle_packet(1, BytesMut::from(&hello[..]), Timestamp(0)).unwrap();
        let (_, resp) = h.poll_transmit().unwrap();
        let device_index = 0x0D0D_0001u32;
        let host_index = u32::from_be_bytes(resp[1..5].try_into().unwrap());
        let t = Timestamp(1);
        // At the device, before the genuine RESPONSE: a garbage one, the genuine one with a
        // bit flipped (in the ephemeral key; in the last tag), one from index 0, a REJECT.
        let mut garbage = vec![TYPE_RESPONSE];
        garbage.extend(host_index.to_be_bytes());
        garbage.extend(device_index.to_be_bytes());
        garbage.push(0x02);
        garbage.extend([0x5A; 96]);
        assert_eq!(dev.handle_packet(BytesMut::from(&garbage[..]), t), auth_failed, "{profile}");
        assert_eq!(dev.handle_packet(flip(&resp, 12), t), auth_failed, "{profile}");
        assert_eq!(dev.handle_packet(flip(&resp, resp.len() - 1), t), auth_failed, "{profile}");
        let mut from_zero = resp.clone();
        from_zero[1..5].fill(0);
        assert_eq!(
            dev.handle_packet(BytesMut::from(&from_zero[..]), t),
            Err(Error::Dropped(DropReason::Malformed))
        );
        let mut reject = vec![TYPE_RESPONSE, 0, 0, 0, 0];
        reject.extend(device_index.to_be_bytes());
        reject.extend([0x03, 0x01, 0x04]);
        assert_eq!(
            dev.handle_packet(BytesMut::from(&reject[..]), t),
            Err(Error::Handshake(HandshakeError::Rejected(RejectReason::UnknownCredential)))
        );
        assert_eq!(dev.error(), None, "{profile}: no forgery ends the handshake");
        assert_eq!(dev.rejected(), Some(RejectReason::UnknownCredential));
        // The genuine RESPONSE still completes it; the REJECT it contradicts was forged.
        dev.handle_packet(BytesMut::from(&resp[..]), t).unwrap();
        assert!(dev.is_established(), "{profile}");
        assert_eq!(dev.security_counters().authentication_failures, 5, "{profile}");
        // After the handshake: a duplicate RESPONSE is harmless, a tampered one is forged.
        assert_eq!(
            dev.handle_packet(BytesMut::from(&resp[..]), t),
            Err(Error::Dropped(DropReason::UnexpectedHandshake))
        );
        assert_eq!(dev.handle_packet(flip(&resp, resp.len() - 1), t), auth_failed);
        assert_eq!(dev.security_counters().authentication_failures, 6);

        let mut to_host: Vec<Vec<u8>> = std::iter::from_fn(|| dev.poll_transmit(t)).collect();
        let mut finish = vec![TYPE_FINISH];
        finish.extend(host_index.to_be_bytes());
        finish.push(0x02);
        finish.extend([0x5A; 120]);
        if profile.message_count() == 3 {
            // At the host, before the genuine FINISH: a garbage one, and the genuine one
            // with a bit flipped in the encrypted static key, and in the last tag (its key
            // decrypts, then its payload fails: snow's cipher is left re-keyed and the host
            // must rebuild its state for the genuine FINISH to open).
            finish = to_host.remove(0);
            assert_eq!(finish[0], TYPE_FINISH);
            let mut garbage = vec![TYPE_FINISH];
            garbage.extend(host_index.to_be_bytes());
            garbage.push(0x02);
            garbage.extend([0x5A; 120]);
            assert_eq!(h.handle_packet(1, BytesMut::from(&garbage[..]), t), auth_failed, "{profile}");
            assert_eq!(h.handle_packet(1, flip(&finish, 12), t), auth_failed, "{profile}");
            for _ in 0..2 {
                assert_eq!(h.handle_packet(1, flip(&finish, finish.len() - 1), t), auth_failed, "{profile}");
            }
            assert_eq!((h.half_open_count(), h.session_count()), (1, 0), "{profile}: still handshaking");
            h.handle_packet(1, BytesMut::from(&finish[..]), t).unwrap();
            assert_eq!(h.session_count(), 1, "{profile}: the genuine FINISH completes it");
            assert_eq!(h.security_counters().authentication_failures, 4, "{profile}");
            h.handle_packet(1, BytesMut::from(&finish[..]), t).unwrap();
        }
        // A FINISH that is not the one the session came from is forged, at any time.
        let before = h.security_counters().authentication_failures;
        let forged_finish = if profile.message_count() == 3 {
            flip(&finish, finish.len() - 1)
        } else {
            BytesMut::from(&finish[..])
        };
        assert_eq!(h.handle_packet(1, forged_finish, t), auth_failed, "{profile}");
        assert_eq!(h.security_counters().authentication_failures, before + 1);
        // Data flows both ways.
        for p in to_host.into_iter().chain(std::iter::from_fn(|| dev.poll_transmit(t))) {
            let _ = h.handle_packet(1, BytesMut::from(&p[..]), t);
        }
        dev.send(1, b"after the forgeries", t).unwrap();
        while let Some(p) = dev.poll_transmit(t) {
            h.handle_packet(1, BytesMut::from(&p[..]), t).unwrap();
        }
        let got: Vec<_> = std::iter::from_fn(|| h.poll_incoming())
            .filter_map(|i| match i.incoming {
                Incoming::Data { payload, .. } => Some(payload.to_vec()),
                _ => None,
            })
            .collect();
        assert_eq!(got, vec![b"after the forgeries".to_vec()], "{profile}");
        let index = dev.session().unwrap().remote_index();
        h.send(index, 2, b"to the device", t).unwrap();
        while let Some((_, p)) = h.poll_transmit() {
            let _ = dev.handle_packet(BytesMut::from(&p[..]), t);
        }
        assert!(std::iter::from_fn(|| dev.poll_incoming())
            .any(|i| matches!(i, Incoming::Data { payload, .. } if &payload[..] == b"to the device")));
    }
}

/// One millisecond of a device and a host on a perfect link; returns what the device got
/// back from `handle_packet` for each packet from the host.
fn tick(dev: &mut DatagramClient, h: &mut DatagramHost<u8>, now: u64) -> Vec<Result<(), Error>> {
    let t = Timestamp(now);
    while let Some(p) = dev.poll_transmit(t) {
        let _ = h.handle_packet(1, BytesMut::from(&p[..]), t);
    }
    let mut results = Vec::new();
    while let Some((_, p)) = h.poll_transmit() {
        results.push(dev.handle_packet(BytesMut::from(&p[..]), t));
    }
    if h.poll_timeout().is_some_and(|d| d <= t) {
        h.handle_timeout(t);
    }
    if dev.poll_timeout().is_some_and(|d| d <= t) {
        let _ = dev.handle_timeout(t);
    }
    results
}

fn host_with(policy: Arc<dyn TrustPolicy>, pairing: bool) -> DatagramHost<u8> {
    DatagramHost::new(
        Box::new(move || ResponderConfig::new(host_keys(), policy.clone()).allow_pairing(pairing)),
        dconfig(),
        HostLimits::default(),
        Box::new(OsEntropy),
    )
}

#[test]
fn a_reject_is_a_hint_the_device_retries_until_admitted_or_the_deadline() {
    // An IK device the host does not know: the host answers each HELLO with REJECT.
    let k = keys();
    let store = Arc::new(TrustStore::in_memory(TrustList::new()));
    let mut h = host_with(store.clone(), false);
    let mut dev = client(Profile::Ik, dconfig(), 0);
    let mut rejects = 0;
    for now in 0..3_000 {
        rejects += tick(&mut dev, &mut h, now)
            .iter()
            .filter(|r| {
                **r == Err(Error::Handshake(HandshakeError::Rejected(RejectReason::UnknownCredential)))
            })
            .count();
    }
    assert_eq!(rejects, 3, "HELLO at 0, 500 and 1500 ms, each refused");
    assert_eq!(dev.error(), None, "an unauthenticated REJECT does not end the handshake");
    assert_eq!(dev.rejected(), Some(RejectReason::UnknownCredential));
    // The operator admits the device at run time: a retransmitted HELLO gets through.
    store.add(*k.device.public(), "PM-0001", "admitted late").unwrap();
    let mut now = 3_000;
    loop {
        tick(&mut dev, &mut h, now);
        if dev.is_established() || now > 20_000 {
            break;
        }
        now += 1;
    }
    assert!(dev.is_established());
    assert_eq!(now, 3_501, "the HELLO retransmission due at 3.5 s, sent on the next tick");
    dev.send(1, b"admitted", Timestamp(now)).unwrap();
    tick(&mut dev, &mut h, now);
    assert!(matches!(h.poll_incoming().map(|i| i.incoming), Some(Incoming::Data { .. })));

    // Nobody admits it: at the deadline the handshake fails with the host's reason.
    let mut h = host_with(Arc::new(TrustStore::in_memory(TrustList::new())), false);
    let config = DatagramConfig { handshake_timeout_ms: 5_000, ..dconfig() };
    let mut dev = client(Profile::Ik, config, 0);
    let mut now = 0;
    loop {
        tick(&mut dev, &mut h, now);
        if dev.error().is_some() || now > 10_000 {
            break;
        }
        now += 1;
    }
    assert_eq!(
        dev.error(),
        Some(Error::Handshake(HandshakeError::Rejected(RejectReason::UnknownCredential)))
    );
    assert_eq!(now, 5_000, "at the deadline, not at the first REJECT");
    let events: Vec<_> = std::iter::from_fn(|| dev.poll_event(Timestamp(now))).map(|e| e.kind).collect();
    assert!(events.contains(&EventKind::HandshakeFailed {
        reason: Error::Handshake(HandshakeError::Rejected(RejectReason::UnknownCredential))
    }));
}

#[test]
fn a_refused_xx_device_gets_an_authenticated_close_unauthorized_even_if_the_first_is_lost() {
    let store = Arc::new(TrustStore::in_memory(TrustList::new()));
    let mut h = host_with(store, false);
    let mut dev = client(Profile::Xx, dconfig(), 0);
    let t = Timestamp(0);
    let hello = dev.poll_transmit(t).unwrap();
    h.handle_packet(1, BytesMut::from(&hello[..]), t).unwrap();
    let (_, resp) = h.poll_transmit().unwrap();
    dev.handle_packet(BytesMut::from(&resp[..]), t).unwrap();
    let finish = dev.poll_transmit(t).unwrap();
    assert_eq!(
        h.handle_packet(1, BytesMut::from(&finish[..]), t),
        Err(Error::Handshake(HandshakeError::UnknownPeer))
    );
    let (_, close) = h.poll_transmit().expect("the host tells the device");
    assert_eq!(close[0], TYPE_TRANSPORT);
    assert_eq!(close[1..5], 0x0D0D_0001u32.to_be_bytes());
    assert_eq!(close[5..13], 0u64.to_be_bytes(), "its first transport packet");
    assert_eq!(h.session_count(), 0);
    // That CLOSE is lost. A forged FINISH changes nothing; the device's retransmitted
    // FINISH gets the same CLOSE again.
    let mut forged = finish.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(
        h.handle_packet(1, BytesMut::from(&forged[..]), Timestamp(10)),
        Err(Error::Dropped(DropReason::AuthenticationFailed))
    );
    assert!(h.poll_transmit().is_none());
    let mut now = 0;
    let again = loop {
        now += 1;
        let _ = dev.handle_timeout(Timestamp(now));
        if let Some(p) = dev.poll_transmit(Timestamp(now)) {
            break p;
        }
    };
    assert_eq!((again[0], now), (TYPE_FINISH, 500));
    h.handle_packet(1, BytesMut::from(&again[..]), Timestamp(now)).unwrap();
    let (_, close2) = h.poll_transmit().unwrap();
    assert_eq!(close2, close, "the same bytes");
    dev.handle_packet(BytesMut::from(&close2[..]), Timestamp(now)).unwrap();
    assert_eq!(dev.poll_incoming(), Some(Incoming::Closed(CloseCode::UNAUTHORIZED)));
    assert!(dev.session().unwrap().is_closed());
    assert_eq!(dev.error(), Some(Error::ClosedByPeer(CloseCode::UNAUTHORIZED)), "refusal, not loss");
    assert_eq!(dev.send(1, b"x", Timestamp(now)), Err(Error::ClosedByPeer(CloseCode::UNAUTHORIZED)));
    assert_eq!(dev.handle_timeout(Timestamp(60_000)), Ok(()), "no timer replaces the peer's code");
    assert_eq!(dev.error(), Some(Error::ClosedByPeer(CloseCode::UNAUTHORIZED)));
    let events: Vec<_> = std::iter::from_fn(|| h.poll_event()).map(|e| e.kind).collect();
    assert!(events.contains(&EventKind::UnknownPeer), "{events:?}");
    // The host keeps the refusal only until the handshake deadline.
    assert_eq!(h.half_open_count(), 1);
    h.handle_timeout(Timestamp(30_000));
    assert_eq!(h.half_open_count(), 0);
    assert_eq!(h.poll_timeout(), None);
}

#[test]
fn a_fragment_flag_in_datagram_mode_ends_the_session() {
    let (mut dev, mut h, _) = established();
    let p = {
        dev.send_raw_for_testing_only(0x01, 0x01, 1, b"a piece", Timestamp(1)).unwrap();
        std::iter::from_fn(|| dev.poll_transmit(Timestamp(1))).last().unwrap()
    };
    assert_eq!(
        h.handle_packet(1, BytesMut::from(&p[..]), Timestamp(1)),
        Err(Error::Protocol(ProtocolError::ReservedFlags(0x01)))
    );
    assert!(h.poll_incoming().is_none(), "nothing delivered");
    assert_eq!(h.session_count(), 0);
    let (_, close) = h.poll_transmit().expect("a CLOSE tells the device why");
    dev.handle_packet(BytesMut::from(&close[..]), Timestamp(1)).unwrap();
    assert_eq!(dev.poll_incoming(), Some(Incoming::Closed(CloseCode::PROTOCOL_ERROR)));
}

#[test]
fn pairing_over_datagrams_shows_codes_and_carries_no_data() {
    let store = Arc::new(TrustStore::in_memory(TrustList::new()));
    let mut h = host_with(store.clone(), true);
    let new_device = Keypair::from_private(PrivateKey::from_bytes([0x44; 32]));
    let mut dev = DatagramClient::new(
        InitiatorConfig::new(Profile::Xx, new_device.clone(), DeviceIdentity::new("NEW-1")).request_pairing(),
        0x0D0D_0001,
        dconfig(),
        Timestamp(0),
    )
    .unwrap();
    let mut now = 0;
    while h.session_count() == 0 && now < 1_000 {
        tick(&mut dev, &mut h, now);
        now += 1;
    }
    let index = dev.session().unwrap().remote_index();
    let session = h.session(index).expect("the unknown device is admitted for pairing");
    assert!(session.is_pairing(), "the host knows it is a pairing session");
    let code = session.pairing_code().unwrap();
    assert_eq!(dev.pairing_code(), Some(code), "both ends show the same code");
    assert!(std::iter::from_fn(|| h.poll_event())
        .any(|e| matches!(e.kind, EventKind::SessionEstablished { pairing: true, .. })));
    // No DATA either way.
    assert_eq!(dev.send(1, b"telemetry", Timestamp(now)), Err(Error::PairingSession));
    assert_eq!(h.send(index, 1, b"command", Timestamp(now)), Err(Error::PairingSession));
    // A trust change does not end it while the device is merely unknown...
    assert_eq!(h.recheck(store.as_ref(), Timestamp(now)), 0);
    assert_eq!(h.session_count(), 1);
    // ...and a DATA packet sealed anyway ends it (§12.4) without reaching the application.
    dev.send_raw_for_testing_only(0x01, 0, 1, b"sneaked", Timestamp(now)).unwrap();
    let p = std::iter::from_fn(|| dev.poll_transmit(Timestamp(now))).last().unwrap();
    assert_eq!(
        h.handle_packet(1, BytesMut::from(&p[..]), Timestamp(now)),
        Err(Error::Protocol(ProtocolError::DataInPairingSession))
    );
    assert!(h.poll_incoming().is_none());
    assert_eq!(h.session_count(), 0);
    let (_, close) = h.poll_transmit().unwrap();
    dev.handle_packet(BytesMut::from(&close[..]), Timestamp(now)).unwrap();
    let got: Vec<_> = std::iter::from_fn(|| dev.poll_incoming()).collect();
    assert_eq!(got.last(), Some(&Incoming::Closed(CloseCode::PROTOCOL_ERROR)));
    assert!(!got.iter().any(|i| matches!(i, Incoming::Data { .. })));
    // A revoked key ends a pairing session too.
    let mut dev = DatagramClient::new(
        InitiatorConfig::new(Profile::Xx, new_device.clone(), DeviceIdentity::new("NEW-1")).request_pairing(),
        0x0D0D_0002,
        dconfig(),
        Timestamp(now),
    )
    .unwrap();
    while h.session_count() == 0 && now < 2_000 {
        tick(&mut dev, &mut h, now);
        now += 1;
    }
    store.add(*new_device.public(), "NEW-1", "").unwrap();
    store.revoke(new_device.public()).unwrap();
    assert_eq!(h.recheck(store.as_ref(), Timestamp(now)), 1);
    // A host that does not pair answers with a REJECT (a hint to the device).
    let mut h = host_with(store, false);
    let mut dev = DatagramClient::new(
        InitiatorConfig::new(Profile::Xx, Keypair::generate().unwrap(), DeviceIdentity::new("NEW-2"))
            .request_pairing(),
        0x0D0D_0003,
        dconfig(),
        Timestamp(0),
    )
    .unwrap();
    let results = tick(&mut dev, &mut h, 0);
    assert_eq!(
        results,
        vec![Err(Error::Handshake(HandshakeError::Rejected(RejectReason::PairingNotAllowed)))]
    );
}

#[test]
fn one_packet_or_one_due_timer_visits_one_session_whatever_their_number() {
    let mut h = host(params(1 << 20), dconfig());
    let k = keys();
    let mut clients = Vec::new();
    // 300 sessions, established one millisecond apart so their timers differ.
    for i in 0..300u64 {
        let mut c = DatagramClient::new(
            initiator_config(Profile::Ik, CipherSuite::default(), &k),
            i as u32 + 1,
            dconfig(),
            Timestamp(i),
        )
        .unwrap();
        let hello = c.poll_transmit(Timestamp(i)).unwrap();
        h.handle_packet(i as u8, BytesMut::from(&hello[..]), Timestamp(i)).unwrap();
        let (_, resp) = h.poll_transmit().unwrap();
        c.handle_packet(BytesMut::from(&resp[..]), Timestamp(i)).unwrap();
        // The device's first packet confirms its key (spec §4.8); until then the session
        // counts as a handshake in progress.
        let first = c.send_now(1, b"first", Timestamp(i));
        h.handle_packet(i as u8, BytesMut::from(&first[..]), Timestamp(i)).unwrap();
        while h.poll_transmit().is_some() {}
        while h.poll_incoming().is_some() {}
        clients.push(c);
    }
    assert_eq!(h.session_count(), 300);
    assert_eq!(h.half_open_count(), 0);
    let before = h.slots_visited_for_testing_only();
    let p = clients[150].send_now(1, b"one packet", Timestamp(400));
    h.handle_packet(150, BytesMut::from(&p[..]), Timestamp(400)).unwrap();
    assert_eq!(h.slots_visited_for_testing_only() - before, 1, "one packet, one session visited");
    // The earliest timer is the first session's keepalive; running it visits that session
    // only, and it pings its device.
    let due = h.poll_timeout().unwrap();
    assert_eq!(due, Timestamp(1_000));
    let before = h.slots_visited_for_testing_only();
    h.handle_timeout(due);
    assert_eq!(h.slots_visited_for_testing_only() - before, 1, "one due timer, one session visited");
    let sent: Vec<_> = std::iter::from_fn(|| h.poll_transmit()).map(|(addr, _)| addr).collect();
    assert_eq!(sent, vec![0], "the keepalive PING of session 0");
    assert_eq!(h.poll_timeout(), Some(Timestamp(1_001)));
}

/// An entropy source that always fails.
struct Broken;
impl EntropySource for Broken {
    fn fill(&mut self, _: &mut [u8]) -> Result<(), EntropyError> {
        Err(EntropyError)
    }
}

/// An entropy source stuck on one value.
struct Stuck;
impl EntropySource for Stuck {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        dest.fill(7);
        Ok(())
    }
}

#[test]
fn a_broken_entropy_source_gives_a_typed_error_not_a_hang() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let k = keys();
        let trust = trust(&k);
        let hello = |index| {
            let mut c = DatagramClient::new(
                initiator_config(Profile::Ik, CipherSuite::default(), &k),
                index,
                dconfig(),
                Timestamp(0),
            )
            .unwrap();
            c.poll_transmit(Timestamp(0)).unwrap()
        };
        let mut results = Vec::new();
        for entropy in [Box::new(Broken) as Box<dyn EntropySource>, Box::new(Stuck)] {
            let policy = trust.clone();
            let mut h: DatagramHost<u8> = DatagramHost::new(
                Box::new(move || ResponderConfig::new(host_keys(), policy.clone())),
                dconfig(),
                HostLimits::default(),
                entropy,
            );
            // Stuck: the first index is free, the second draw repeats it (as does every
            // later one).
            for i in 1..=2 {
                results.push(h.handle_packet(1, BytesMut::from(&hello(i)[..]), Timestamp(0)));
            }
            let events: Vec<_> = std::iter::from_fn(|| h.poll_event()).map(|e| e.kind).collect();
            results.push(Ok(()));
            assert!(events.contains(&EventKind::HandshakeFailed { reason: HandshakeError::NoEntropy.into() }));
        }
        // The responder's ephemeral key comes from its configured source too.
        let policy = trust.clone();
        let mut h: DatagramHost<u8> = DatagramHost::new(
            Box::new(move || ResponderConfig::new(host_keys(), policy.clone()).entropy(Box::new(Broken))),
            dconfig(),
            HostLimits::default(),
            Box::new(OsEntropy),
        );
        results.push(h.handle_packet(1, BytesMut::from(&hello(3)[..]), Timestamp(0)));
        let _ = tx.send(results);
    });
    let results = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the host hung");
    let no_entropy = Err(Error::Handshake(HandshakeError::NoEntropy));
    assert_eq!(results, vec![no_entropy, no_entropy, Ok(()), Ok(()), no_entropy, Ok(()), no_entropy]);
}

#[test]
fn a_forged_but_valid_xx_message_2_is_undone_and_the_genuine_one_completes() {
    let k = keys();
    for profile in [Profile::Xx, Profile::XxPsk3] {
        let config = initiator_config(profile, CipherSuite::default(), &k).pin_host_keys([*k.host.public()]);
        let mut dev = DatagramClient::new(config, 0x0D0D_0001, dconfig(), Timestamp(0)).unwrap();
        let mut h = host(params(100), dconfig());
        let t = Timestamp(0);
        let hello = dev.poll_transmit(t).unwrap();
        // An attacker who saw the HELLO answers first, as itself: its message 2 is valid
        // Noise (XX authenticates whoever answers; XXpsk3 mixes the PSK in only at message 3,
        // so any PSK will do), and only the pinned host key tells it apart.
        let mallory = Keypair::from_private(PrivateKey::from_bytes([0x66; 32]));
        let mut any_psk = StaticPskDirectory::new();
        any_psk.add(PSK_ID, Psk::from_bytes([0x99; 32]));
        for _ in 0..2 {
            let mut m = Handshake::responder(
                ResponderConfig::new(mallory.clone(), trust(&k)).psk_directory(Arc::new(any_psk.clone())),
            )
            .unwrap();
            m.read_message(&hello[5..]).unwrap();
            let mut buf = BytesMut::new();
            m.write_message(&mut buf).unwrap();
            let mut forged = vec![TYPE_RESPONSE];
            forged.extend(0x6666_6666u32.to_be_bytes());
            forged.extend(0x0D0D_0001u32.to_be_bytes());
            forged.extend(&buf[2..]);
            assert_eq!(
                dev.handle_packet(BytesMut::from(&forged[..]), t),
                Err(Error::Handshake(HandshakeError::UnexpectedPeerKey)),
                "{profile}"
            );
            assert_eq!(dev.error(), None, "{profile}: undone, not fatal");
        }
        h.handle_packet(1, BytesMut::from(&hello[..]), t).unwrap();
        let (_, resp) = h.poll_transmit().unwrap();
        dev.handle_packet(BytesMut::from(&resp[..]), t).unwrap();
        assert!(dev.is_established(), "{profile}");
        assert_eq!(dev.session().unwrap().remote_static(), k.host.public());
        assert_eq!(dev.security_counters().authentication_failures, 2);
        let finish = dev.poll_transmit(t).unwrap();
        h.handle_packet(1, BytesMut::from(&finish[..]), t).unwrap();
        assert_eq!(h.session_count(), 1, "{profile}: the host accepts the FINISH");
        dev.send(1, b"through", t).unwrap();
        while let Some(p) = dev.poll_transmit(t) {
            let _ = h.handle_packet(1, BytesMut::from(&p[..]), t);
        }
        assert!(std::iter::from_fn(|| h.poll_incoming())
            .any(|i| matches!(i.incoming, Incoming::Data { payload, .. } if &payload[..] == b"through")));
    }
    // A genuine host whose key the device does not pin (rotated without updating the
    // device): the device reports that at its deadline, not a bare timeout.
    let config =
        initiator_config(Profile::Xx, CipherSuite::default(), &k).pin_host_keys([*k.device.public()]);
    let dconfig = DatagramConfig { handshake_timeout_ms: 5_000, ..dconfig() };
    let mut dev = DatagramClient::new(config, 0x0D0D_0001, dconfig, Timestamp(0)).unwrap();
    let mut h = host(params(100), dconfig);
    let mut now = 0;
    loop {
        tick(&mut dev, &mut h, now);
        if dev.error().is_some() || now > 10_000 {
            break;
        }
        now += 1;
    }
    assert_eq!((dev.error(), now), (Some(Error::Handshake(HandshakeError::UnexpectedPeerKey)), 5_000));
}

/// Times are the caller's: the largest and the smallest never panic and never wrap (a wrapped
/// deadline would fire every timer at once or none), in the client, the host and reassembly.
#[test]
fn extreme_times_never_panic_in_datagram_mode() {
    let k = keys();
    for start in [Timestamp(0), Timestamp(u64::MAX - 1), Timestamp(u64::MAX)] {
        let mut h = host(params(1 << 20), dconfig());
        let mut c = DatagramClient::new(
            initiator_config(Profile::Ik, CipherSuite::default(), &k),
            7,
            dconfig(),
            start,
        )
        .unwrap();
        // Deadlines saturate at the end of time rather than wrap to the past.
        if let Some(t) = c.poll_timeout() {
            assert!(t >= start, "{start:?}: deadline {t:?} before now");
        }
        let hello = c.poll_transmit(start).unwrap();
        let _ = h.handle_packet(1, BytesMut::from(&hello[..]), start);
        if let Some((_, resp)) = h.poll_transmit() {
            let _ = c.handle_packet(BytesMut::from(&resp[..]), start);
        }
        let _ = c.handle_timeout(start);
        h.handle_timeout(start);
        let _ = c.handle_timeout(Timestamp(u64::MAX));
        h.handle_timeout(Timestamp(u64::MAX));
        let mut r = vitalwire::fragment::Reassembler::new(ReassemblyLimits::default());
        let pieces = vitalwire::fragment::split(&[7u8; 100], 40, 1).unwrap();
        let _ = r.push(&pieces[0], start);
        assert!(r.poll_timeout().unwrap() >= start);
        if start < Timestamp(u64::MAX) {
            // (At the very last instant every deadline has come: nothing later exists.)
            assert_eq!(r.handle_timeout(start), 0, "{start:?}: a partial message expired at once");
        }
        r.handle_timeout(Timestamp(u64::MAX));
    }
}
