//! The tokio host and device client on loopback: telemetry, refusal of unknown devices,
//! revocation of a live session, reconnection with backoff, graceful shutdown, UDP with
//! cookies, every refusal recorded with its source address and aggregated, honest devices
//! admitted within a second during half-open and slowloris floods from many addresses, and a
//! load-and-attack test with the default limits.
//!
//! Loopback gives a test many source addresses: client sockets are bound to 127.x.y.z before
//! connecting, so each simulated device or attacker has its own address, as on a real network.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::codec::Framed;
use vitalwire::datagram::DatagramConfig;
use vitalwire::hello::MAX_HANDSHAKE_FRAME_LEN;
use vitalwire::*;
use vitalwire_tokio::udp::{serve_udp, UdpDevice};
use vitalwire_tokio::*;

fn host_keys() -> Keypair {
    Keypair::from_private(PrivateKey::from_bytes([0x11; 32]))
}

fn device_keys(n: u32) -> Keypair {
    let mut b = [0x40u8; 32];
    b[..4].copy_from_slice(&n.to_be_bytes());
    Keypair::from_private(PrivateKey::from_bytes(b))
}

fn trusted(devices: u32) -> Arc<TrustStore> {
    let mut list = TrustList::new();
    for n in 0..devices {
        list.add(*device_keys(n).public(), &format!("PM-{n}"), "", 0);
    }
    Arc::new(TrustStore::in_memory(list))
}

fn host_config(trust: Arc<TrustStore>) -> HostConfig {
    let policy: Arc<dyn TrustPolicy> = trust.clone();
    let mut c = HostConfig::new(move || ResponderConfig::new(host_keys(), policy.clone()));
    c.trust = Some(trust);
    c
}

async fn start_tcp(
    config: HostConfig,
) -> (Host, SocketAddr, mpsc::Receiver<Telemetry>, mpsc::Receiver<SecurityEvent>) {
    let (host, telemetry, events) = Host::new(config);
    let listener = vitalwire_tokio::host::listen_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let h = host.clone();
    tokio::spawn(async move { h.serve_tcp(listener).await });
    (host, addr, telemetry, events)
}

fn client_config(addr: SocketAddr, n: u32) -> ClientConfig {
    let host_public = *host_keys().public();
    let mut c = ClientConfig::new(addr.to_string(), move || {
        InitiatorConfig::new(Profile::Ik, device_keys(n), DeviceIdentity::new(format!("PM-{n}")))
            .host_key(host_public)
    });
    c.initial_backoff = Duration::from_millis(20);
    c.max_backoff = Duration::from_millis(200);
    c
}

/// The tests that load the machine (floods, 1,000 devices) take turns: each measures its own
/// promise (latency, memory), not the others' load.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A loopback address of its own for simulated machine `n` of group `group` (1..=250).
fn loopback(group: u8, n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, group, (n / 250) as u8, (n % 250) as u8 + 1))
}

/// A TCP connection from `from` (any 127.x.y.z address).
async fn connect_from(from: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

type Link = Framed<TcpStream, FrameCodec>;

/// One IK handshake as device `n`, from address `from`: the device side, written out so that
/// the test controls the source address.
async fn honest_handshake(addr: SocketAddr, from: IpAddr, n: u32) -> Result<(Link, Session), String> {
    let stream = connect_from(from, addr).await.map_err(|e| format!("connect: {e}"))?;
    let mut link = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_LEN));
    let config = InitiatorConfig::new(Profile::Ik, device_keys(n), DeviceIdentity::new(format!("PM-{n}")))
        .host_key(*host_keys().public());
    let mut hs = Handshake::initiator(config).map_err(|e| e.to_string())?;
    let mut out = BytesMut::new();
    loop {
        while hs.wants_write() {
            hs.write_message(&mut out).map_err(|e| e.to_string())?;
            link.send(out.split().freeze()).await.map_err(|e| format!("send: {e}"))?;
        }
        if hs.is_finished() {
            break;
        }
        match link.next().await {
            Some(Ok(frame)) => hs.read_message(&frame).map_err(|e| e.to_string())?,
            Some(Err(e)) => return Err(format!("link: {e}")),
            None => return Err("closed by the host".into()),
        }
    }
    let session = hs.into_session().map_err(|e| e.to_string())?;
    Ok((link, session))
}

/// Connects device `n` from `from`, retrying (20 ms apart) until it is in or `limit` passes;
/// returns the time from the first attempt to the finished handshake, and the attempts.
async fn connect_honest(
    addr: SocketAddr,
    from: IpAddr,
    n: u32,
    limit: Duration,
) -> (Duration, u32, Link, Session) {
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = limit.saturating_sub(start.elapsed());
        match timeout(left, honest_handshake(addr, from, n)).await {
            Ok(Ok((link, session))) => return (start.elapsed(), attempts, link, session),
            Ok(Err(_)) if start.elapsed() < limit => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(Err(e)) => panic!("device {n} not admitted in {limit:?} ({attempts} attempts): {e}"),
            Err(_) => panic!("device {n} not admitted in {limit:?} ({attempts} attempts)"),
        }
    }
}

/// The flood `sources * per_source` if this process may open `fds_each` descriptors per
/// attacking connection (raising its soft limit if it can), else a flood sized down to what it
/// may (said on stdout); never below 600 connections, enough to fill the host's 256 slots.
fn size_to_fd_limit(sources: u32, per_source: u32, fds_each: u64) -> (u32, u32) {
    let want = u64::from(sources * per_source);
    let fds = raise_fd_limit(want * fds_each + 1_000);
    let fit = fds.saturating_sub(1_000) / fds_each;
    if fit >= want {
        return (sources, per_source);
    }
    assert!(fit >= 600, "fd limit {fds}: too low for any meaningful flood");
    let per_source = per_source.min((fit / u64::from(sources)).max(1) as u32);
    let sources = sources.min((fit / u64::from(per_source)) as u32);
    println!("fd limit {fds}: flood sized down to {sources} sources x {per_source} connections");
    (sources, per_source)
}

/// Raises this process's soft file-descriptor limit to `want` (or the hard limit) and
/// returns the soft limit now in force.
fn raise_fd_limit(want: u64) -> u64 {
    let read = || -> Option<(u64, u64)> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        let mut f = line.split_whitespace().skip(3);
        let soft = f.next()?.parse().ok()?;
        let hard = f.next()?.parse().unwrap_or(u64::MAX);
        Some((soft, hard))
    };
    let Some((soft, hard)) = read() else { return 1024 };
    if soft >= want {
        return soft;
    }
    let target = want.min(hard);
    // No libc here: prlimit(1) on our own PID does it.
    let _ = std::process::Command::new("prlimit")
        .args([format!("--pid={}", std::process::id()), format!("--nofile={target}:{hard}")])
        .status();
    read().map_or(soft, |(s, _)| s)
}

async fn wait_connected(c: &mut DeviceClient) {
    loop {
        match timeout(Duration::from_secs(10), c.next_event()).await.expect("in time") {
            Some(ClientEvent::Connected { .. }) => return,
            Some(ClientEvent::Stopped { reason }) => panic!("stopped: {reason}"),
            Some(_) => {}
            None => panic!("client ended"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_flows_and_shutdown_closes_every_session() {
    let (host, addr, mut telemetry, _events) = start_tcp(host_config(trusted(3))).await;
    let mut clients = Vec::new();
    for n in 0..3 {
        let mut c = DeviceClient::start(client_config(addr, n));
        wait_connected(&mut c).await;
        clients.push(c);
    }
    for (n, c) in clients.iter().enumerate() {
        for i in 0..10 {
            c.send(1, format!("{n}:{i}")).await.unwrap();
        }
    }
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while got.values().map(Vec::len).sum::<usize>() < 30 {
        let t = timeout(Duration::from_secs(10), telemetry.recv()).await.unwrap().unwrap();
        got.entry(t.device_id).or_default().push(String::from_utf8(t.payload.to_vec()).unwrap());
    }
    for n in 0..3 {
        let expected: Vec<String> = (0..10).map(|i| format!("{n}:{i}")).collect();
        assert_eq!(got[&format!("PM-{n}")], expected, "in order, exactly once");
    }
    assert_eq!(host.stats().sessions, 3);
    host.shutdown().await;
    for mut c in clients {
        let mut saw_close = false;
        while let Ok(Some(e)) = timeout(Duration::from_secs(5), c.next_event()).await {
            if let ClientEvent::Disconnected { reason, .. } = &e {
                assert!(reason.contains("going away"), "{reason}");
                saw_close = true;
                break;
            }
        }
        assert!(saw_close, "every device got a CLOSE GOING_AWAY");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_devices_are_refused_and_revoked_ones_cut_off() {
    let trust = trusted(1);
    let (host, addr, mut telemetry, mut events) = start_tcp(host_config(trust.clone())).await;
    // An unknown key.
    let mut rogue = DeviceClient::start(ClientConfig { max_attempts: Some(1), ..client_config(addr, 99) });
    match timeout(Duration::from_secs(5), rogue.next_event()).await.unwrap() {
        Some(ClientEvent::Security(_))
        | Some(ClientEvent::Stopped { .. })
        | Some(ClientEvent::Disconnected { .. }) => {}
        other => panic!("{other:?}"),
    }
    let e = timeout(Duration::from_secs(5), async {
        loop {
            let e = events.recv().await.unwrap();
            if e.kind == EventKind::UnknownPeer {
                return e;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(e.device_id.as_deref(), Some("PM-99"));
    // A trusted device, then revoked while connected.
    let mut dev = DeviceClient::start(client_config(addr, 0));
    wait_connected(&mut dev).await;
    dev.send(1, "before").await.unwrap();
    assert_eq!(timeout(Duration::from_secs(5), telemetry.recv()).await.unwrap().unwrap().payload, "before");
    trust.revoke(device_keys(0).public()).unwrap();
    host.trust_changed();
    let reason = timeout(Duration::from_secs(5), async {
        loop {
            // An authenticated CLOSE UNAUTHORIZED stops the client for good.
            match dev.next_event().await {
                Some(ClientEvent::Stopped { reason }) | Some(ClientEvent::Disconnected { reason, .. }) => {
                    return reason
                }
                Some(_) => {}
                None => panic!("client ended without a reason"),
            }
        }
    })
    .await
    .unwrap();
    assert!(reason.contains("unauthorized"), "{reason}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_with_backoff() {
    // Reserve a port, start the client before the host exists.
    let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let mut dev = DeviceClient::start(client_config(addr, 0));
    let mut delays = Vec::new();
    while delays.len() < 3 {
        if let Some(ClientEvent::Disconnected { retry_in, .. }) =
            timeout(Duration::from_secs(5), dev.next_event()).await.unwrap()
        {
            delays.push(retry_in);
        }
    }
    assert!(delays.iter().all(|d| *d <= Duration::from_millis(200)));
    // Now the host comes up on that port.
    let (host, _t, _e) = Host::new(host_config(trusted(1)));
    let listener = TcpListener::bind(addr).await.unwrap();
    let h = host.clone();
    tokio::spawn(async move { h.serve_tcp(listener).await });
    wait_connected(&mut dev).await;
    dev.close().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_devices_with_and_without_cookies() {
    for threshold in [64, 0] {
        let mut config = host_config(trusted(2));
        config.cookie_threshold = threshold; // 0: every HELLO must carry a cookie
        let (host, mut telemetry, _events) = Host::new(config);
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let h = host.clone();
        tokio::spawn(async move { serve_udp(&h, socket).await });
        let host_public = *host_keys().public();
        let mut dev = UdpDevice::connect(
            addr,
            InitiatorConfig::new(Profile::Ik, device_keys(1), DeviceIdentity::new("PM-1"))
                .host_key(host_public),
            DatagramConfig::default(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        for i in 0..20 {
            dev.send(2, format!("udp {i}").as_bytes()).await.unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 20 {
            let t = timeout(Duration::from_secs(5), telemetry.recv()).await.unwrap().unwrap();
            assert_eq!(t.device_id, "PM-1");
            got.push(String::from_utf8(t.payload.to_vec()).unwrap());
        }
        got.sort();
        let mut expected: Vec<String> = (0..20).map(|i| format!("udp {i}")).collect();
        expected.sort();
        assert_eq!(got, expected, "threshold {threshold}");
        host.shutdown().await;
    }
}

/// RSS of this process, in KiB (Linux).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_and_attack_every_honest_frame_arrives_once_in_order() {
    const DEVICES: u32 = 1_000;
    const FRAMES: u32 = 20;
    let _turn = HEAVY.lock().await;
    raise_fd_limit(4 * u64::from(DEVICES) + 2_000);
    // The default limits: 256 half-open, 20 handshakes at once and 10/s per source, 5 s per
    // handshake, 2 s for the HELLO. Each device has its own address, as on a ward network.
    let (host, addr, mut telemetry, mut events) = start_tcp(host_config(trusted(DEVICES))).await;
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let rss_before = rss_kib();

    // The rogue, from 300 addresses of its own: garbage, oversized lengths, half-open
    // handshakes that never finish and slowloris writers, all while the devices work; and one
    // address that hammers the rate limit.
    let rogue = tokio::spawn(async move {
        let mut held = Vec::new();
        for i in 0..300u32 {
            let Ok(mut s) = connect_from(loopback(4, i), addr).await else { continue };
            match i % 3 {
                0 => {
                    let _ = s.write_all(b"\x00\x10garbage garbage garbage").await;
                }
                1 => {
                    let _ = s.write_all(&[0xFF, 0xFF]).await; // a 65535-byte frame announced
                }
                _ => {
                    let _ = s.write_all(&[0x00]).await; // half a length prefix, then silence
                }
            }
            held.push(s);
        }
        for _ in 0..100 {
            if let Ok(s) = connect_from(loopback(5, 0), addr).await {
                held.push(s);
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(held);
    });

    let mut tasks = Vec::new();
    for n in 0..DEVICES {
        tasks.push(tokio::spawn(async move {
            // Refused or evicted handshakes are retried; frames go out only on a session.
            let (_, _, mut link, mut session) =
                connect_honest(addr, loopback(3, n), n, Duration::from_secs(60)).await;
            let mut out = BytesMut::new();
            for i in 0..FRAMES {
                session.seal_data(1, format!("{n}:{i}").as_bytes(), &mut out).unwrap();
                link.send(out.split().freeze()).await.expect("the session stays up");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            session.close(CloseCode::NORMAL, &mut out).unwrap();
            let _ = link.send(out.split().freeze()).await;
            // Wait for the host's CLOSE, so that every frame was read before we go.
            let _ = timeout(Duration::from_secs(10), async { while let Some(Ok(_)) = link.next().await {} })
                .await;
        }));
    }
    let mut per_device: BTreeMap<String, u32> = BTreeMap::new();
    let mut total = 0;
    let mut max_sessions = 0;
    while total < DEVICES * FRAMES {
        let t = timeout(Duration::from_secs(60), telemetry.recv())
            .await
            .expect("honest frames keep arriving")
            .unwrap();
        let text = String::from_utf8(t.payload.to_vec()).unwrap();
        let (dev, i) = text.split_once(':').unwrap();
        assert_eq!(t.device_id, format!("PM-{dev}"));
        let next = per_device.entry(dev.to_string()).or_insert(0);
        assert_eq!(i.parse::<u32>().unwrap(), *next, "device {dev}: in order, none lost, none twice");
        *next += 1;
        total += 1;
        max_sessions = max_sessions.max(host.stats().sessions);
    }
    for t in tasks {
        t.await.unwrap();
    }
    rogue.await.unwrap();
    assert_eq!(per_device.len(), DEVICES as usize);
    assert!(per_device.values().all(|n| *n == FRAMES));
    // Nothing more arrives: no frame twice.
    assert!(timeout(Duration::from_millis(300), telemetry.recv()).await.is_err(), "no extra frames");
    let stats = host.stats();
    println!("load and attack: {stats:?}, at most {max_sessions} sessions at once");
    assert!(stats.rejected >= 200, "the rogue's connections were refused ({})", stats.rejected);
    assert!(stats.half_open <= 256);
    assert!(max_sessions <= DEVICES as usize);
    if let (Some(a), Some(b)) = (rss_before, rss_kib()) {
        // Bounded: well under 64 KiB per session of growth for 1,000 sessions.
        assert!(b.saturating_sub(a) < 64 * 1024, "RSS grew by {} KiB", b - a);
    }
    host.shutdown().await;
}

/// Collects events until `done` says all expected ones arrived (at most `limit`).
async fn collect_events(
    events: &mut mpsc::Receiver<SecurityEvent>,
    limit: Duration,
    mut done: impl FnMut(&[SecurityEvent]) -> bool,
) -> Vec<SecurityEvent> {
    let mut seen = Vec::new();
    let _ = timeout(limit, async {
        while !done(&seen) {
            match events.recv().await {
                Some(e) => seen.push(e),
                None => break,
            }
        }
    })
    .await;
    seen
}

/// Writes `bytes` (then ends the write side when `finish`), and waits for the host to close.
async fn attack_once(from: IpAddr, addr: SocketAddr, bytes: &[u8], finish: bool) {
    let mut s = connect_from(from, addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if finish {
        s.shutdown().await.unwrap();
    }
    let mut sink = Vec::new();
    let closed = timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the host closed the connection after {bytes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_recorded_with_its_source_address() {
    let mut config = host_config(trusted(1));
    config.hello_timeout = Duration::from_millis(300);
    config.max_half_open = 2;
    let (host, addr, _telemetry, mut events) = start_tcp(config).await;
    let from = loopback(9, 1);
    // Bad lengths: 0, 1025 (above the handshake limit), 0xffff; a stream cut inside a frame;
    // a connection that never speaks.
    attack_once(from, addr, b"\x00\x00", false).await;
    attack_once(from, addr, b"\x04\x01", false).await;
    attack_once(from, addr, b"\xff\xff", false).await;
    attack_once(from, addr, b"\x00\x10abc", true).await;
    attack_once(from, addr, b"", false).await;
    // An unknown device.
    assert!(honest_handshake(addr, from, 7).await.is_err());
    // The half-open table (2 here) is full of silent connections: the oldest is evicted.
    let evictor = loopback(9, 2);
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(connect_from(evictor, addr).await.unwrap());
    }
    // A source over its rate limit (burst 20, 10/s).
    let flooder = loopback(9, 3);
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(connect_from(flooder, addr).await.unwrap());
    }
    // A trusted device whose established session is cut inside a frame: truncated (§2, §7.3).
    let device = loopback(9, 4);
    let (link, _session) = honest_handshake(addr, device, 0).await.unwrap();
    let mut stream = link.into_inner();
    stream.write_all(b"\x00\x40only part of the frame").await.unwrap();
    stream.shutdown().await.unwrap();

    let has = |seen: &[SecurityEvent], src: IpAddr, name: &str, f: &dyn Fn(&SecurityEvent) -> bool| {
        seen.iter().any(|e| e.source == Some(src) && e.kind.name() == name && f(e))
    };
    let too_large = |e: &SecurityEvent| e.kind == EventKind::LimitExceeded { limit: Limit::FrameTooLarge };
    let checks = move |seen: &[SecurityEvent]| {
        let frame_too_large = seen.iter().filter(|e| e.source == Some(from) && too_large(e)).count();
        [
            frame_too_large == 2,
            has(seen, from, "handshake_failed", &|e| {
                matches!(
                    e.kind,
                    EventKind::HandshakeFailed { reason: Error::Decode(DecodeError::EmptyFrame) }
                )
            }),
            has(seen, from, "truncated", &|e| e.peer.is_none()),
            has(seen, from, "timer_expired", &|e| e.kind == EventKind::TimerExpired { timer: Timer::Hello }),
            has(seen, from, "unknown_peer", &|e| e.device_id.as_deref() == Some("PM-7")),
            has(seen, evictor, "limit_exceeded", &|e| {
                e.kind == EventKind::LimitExceeded { limit: Limit::HalfOpenHandshakes }
            }),
            has(seen, flooder, "limit_exceeded", &|e| {
                e.kind == EventKind::LimitExceeded { limit: Limit::HandshakeRate }
            }),
            has(seen, device, "truncated", &|e| e.peer == Some(device_keys(0).public().fingerprint())),
        ]
    };
    let seen = collect_events(&mut events, Duration::from_secs(15), |s| checks(s).iter().all(|ok| *ok)).await;
    let missing = checks(&seen);
    assert!(missing.iter().all(|ok| *ok), "checks {missing:?} in {seen:#?}");
    assert!(
        !seen.iter().any(|e| e.source == Some(device) && e.kind.name() == "protocol_violation"),
        "a cut stream is not a protocol violation: {seen:#?}"
    );
    assert!(seen.iter().all(|e| e.source.is_some()), "every event names its source: {seen:#?}");
    drop((silent, held));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_source_becomes_a_few_lines_and_a_count() {
    const CONNECTIONS: u64 = 600;
    let mut config = host_config(trusted(1));
    config.event_interval = Duration::from_secs(600); // the whole test is one interval
    let (host, addr, _telemetry, mut events) = start_tcp(config).await;
    let from = loopback(10, 1);
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        // Each connection is refused once: by the rate limit, or for its frame length.
        let mut s = connect_from(from, addr).await.unwrap();
        let _ = s.write_all(b"\xff\xff").await;
        held.push(s);
    }
    // Wait until the host has judged every connection (each produces exactly one event).
    let judged = timeout(Duration::from_secs(20), async {
        while host.stats().rejected < CONNECTIONS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(judged.is_ok(), "rejected {} of {CONNECTIONS}", host.stats().rejected);
    host.shutdown().await; // ends the interval: the summaries come out
    drop(held);
    let mut lines = Vec::new();
    while let Ok(e) = events.try_recv() {
        lines.push(e);
    }
    let logged =
        lines.iter().filter(|e| !matches!(e.kind, EventKind::EventsSuppressed { .. })).count() as u64;
    let suppressed: u64 = lines
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::EventsSuppressed { count, .. } => Some(count),
            _ => None,
        })
        .sum();
    println!(
        "{CONNECTIONS} refusals from one source: {} lines ({logged} events, {suppressed} counted)",
        lines.len()
    );
    assert_eq!(logged + suppressed, CONNECTIONS, "every refusal is logged or counted: {lines:#?}");
    // Two kinds (rate limit, frame too large), each at most 10 lines and one summary.
    assert!(lines.len() <= 22, "{} lines: {lines:#?}", lines.len());
    assert!(lines.iter().all(|e| e.source == Some(from)));
    assert!(suppressed > 0);
    assert_eq!(host.stats().events_dropped, 0);
}

/// Starts `sources * per_source` attacking connections, each from one of `sources` addresses,
/// each reopened as soon as the host closes it: silent ones, or slowloris writers. They run
/// on a runtime of their own (one thread), as attackers run on machines of their own: the
/// host's runtime is not theirs to starve. Returns the thread; it ends when `stop` is set,
/// with the number of connections opened.
fn start_flood(
    addr: SocketAddr,
    group: u8,
    sources: u32,
    per_source: u32,
    slowloris: bool,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut opened = 0;
            for t in flood_tasks(addr, group, sources, per_source, slowloris, stop) {
                opened += t.await.unwrap();
            }
            opened
        })
    })
}

fn flood_tasks(
    addr: SocketAddr,
    group: u8,
    sources: u32,
    per_source: u32,
    slowloris: bool,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    let mut tasks = Vec::new();
    for i in 0..sources * per_source {
        let stop = stop.clone();
        let from = loopback(group, i % sources);
        tasks.push(tokio::spawn(async move {
            let mut opened = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = connect_from(from, addr).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                opened += 1;
                let mut buf = [0u8; 64];
                if slowloris {
                    // A length prefix for 1023 bytes, then one byte every 200 ms.
                    let _ = s.write_all(b"\x03\xff").await;
                    while !stop.load(Ordering::Relaxed) {
                        if s.write_all(b"x").await.is_err() {
                            break;
                        }
                        match timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            _ => {}
                        }
                    }
                } else {
                    // Silence until the host gives up on us.
                    while !stop.load(Ordering::Relaxed) {
                        match timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            _ => {}
                        }
                    }
                }
                // Reconnect as soon as reasonable (rate-limited per source by the host anyway).
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            opened
        }));
    }
    tasks
}

/// During a flood, honest devices (one after another, each from its own address) connect;
/// returns their handshake latencies.
async fn honest_latencies_during_flood(slowloris: bool, sources: u32, per_source: u32) -> Vec<Duration> {
    let _turn = HEAVY.lock().await;
    // Both ends of every attacking connection live in this process.
    let (sources, per_source) = size_to_fd_limit(sources, per_source, 2);
    let (host, addr, _telemetry, mut events) = start_tcp(host_config(trusted(8))).await;
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let stop = Arc::new(AtomicBool::new(false));
    let group = if slowloris { 30 } else { 40 };
    let flood = start_flood(addr, group, sources, per_source, slowloris, stop.clone());
    // Let the flood fill the half-open table.
    let full = timeout(Duration::from_secs(30), async {
        while host.stats().half_open < 256 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(full.is_ok(), "the flood filled the table ({:?})", host.stats());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::new();
    for n in 0..8 {
        let (latency, attempts, mut link, mut session) = connect_honest(
            addr,
            loopback(2, n + if slowloris { 0 } else { 100 }),
            n,
            Duration::from_secs(10),
        )
        .await;
        let mut out = BytesMut::new();
        session.close(CloseCode::NORMAL, &mut out).unwrap();
        let _ = link.send(out.split().freeze()).await;
        println!(
            "{} flood, device {n}: handshake in {latency:?} ({attempts} attempt(s)), host {:?}",
            if slowloris { "slowloris" } else { "half-open" },
            host.stats()
        );
        latencies.push(latency);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = host.stats();
    stop.store(true, Ordering::Relaxed);
    let opened = tokio::task::spawn_blocking(move || flood.join().unwrap()).await.unwrap();
    println!("attack connections opened: {opened}; host {stats:?}");
    assert!(stats.half_open <= 256);
    assert!(opened >= u64::from(sources * per_source), "the flood ran");
    host.shutdown().await;
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_devices_get_in_within_a_second_during_a_half_open_flood() {
    // 2,000 half-open connections, each from its own address, reopened as soon as closed.
    let latencies = honest_latencies_during_flood(false, 2_000, 1).await;
    assert!(latencies.iter().all(|l| *l < Duration::from_secs(1)), "{latencies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_devices_get_in_within_a_second_during_a_slowloris_flood() {
    // 500 addresses, 4 slowloris connections each (2,000), reopened as soon as closed.
    let latencies = honest_latencies_during_flood(true, 500, 4).await;
    assert!(latencies.iter().all(|l| *l < Duration::from_secs(1)), "{latencies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_refusals_name_their_source() {
    let mut config = host_config(trusted(1));
    config.cookie_threshold = 0; // every HELLO must carry a cookie
    let (host, _telemetry, mut events) = Host::new(config);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let h = host.clone();
    tokio::spawn(async move { serve_udp(&h, socket).await });
    // An unknown device (the handshake fails in the core: the adapter names the source).
    let unknown = UdpDevice::connect(
        addr,
        InitiatorConfig::new(Profile::Ik, device_keys(9), DeviceIdentity::new("PM-9"))
            .host_key(*host_keys().public()),
        DatagramConfig::default(),
        Duration::from_secs(2),
    )
    .await;
    assert!(unknown.is_err());
    // A forged cookie from another address.
    let forger = UdpSocket::bind("127.9.9.9:0").await.unwrap();
    let mut forged = vec![0x26u8];
    forged.extend_from_slice(&[0xAB; 16]);
    forged.extend_from_slice(b"\x21 not a real hello");
    forger.send_to(&forged, addr).await.unwrap();
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let forger_ip: IpAddr = "127.9.9.9".parse().unwrap();
    let seen = collect_events(&mut events, Duration::from_secs(10), |s| {
        s.iter().any(|e| e.kind == EventKind::UnknownPeer && e.source == Some(local))
            && s.iter().any(|e| e.kind.name() == "handshake_failed" && e.source == Some(forger_ip))
    })
    .await;
    assert!(seen.iter().any(|e| e.kind == EventKind::UnknownPeer && e.source == Some(local)), "{seen:#?}");
    assert!(
        seen.iter().any(|e| e.kind.name() == "handshake_failed" && e.source == Some(forger_ip)),
        "the forged cookie is recorded with its address: {seen:#?}"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_comes_out_when_the_interval_ends_while_the_host_runs() {
    let mut config = host_config(trusted(1));
    config.event_interval = Duration::from_millis(300);
    config.events_per_interval = 2;
    let (host, addr, _telemetry, mut events) = start_tcp(config).await;
    let from = loopback(11, 1);
    for _ in 0..8 {
        attack_once(from, addr, b"\x00\x00", false).await;
    }
    // No shutdown: the host's ticker ends the interval.
    let seen = collect_events(&mut events, Duration::from_secs(10), |s| {
        s.iter().any(|e| matches!(e.kind, EventKind::EventsSuppressed { .. }))
    })
    .await;
    let summary = seen.iter().find(|e| matches!(e.kind, EventKind::EventsSuppressed { .. }));
    let logged = seen.iter().filter(|e| e.kind.name() == "handshake_failed").count();
    let Some(EventKind::EventsSuppressed { of, count }) = summary.map(|e| e.kind) else {
        panic!("no summary: {seen:#?}")
    };
    assert_eq!(of, "handshake_failed");
    assert_eq!(summary.unwrap().source, Some(from));
    // 8 refusals: 2 logged, the rest counted (in this summary, or a later interval's lines).
    assert!(logged >= 2 && count >= 1 && logged as u64 + count <= 8, "{seen:#?}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_hello_is_cut_at_the_first_frame_deadline() {
    let mut config = host_config(trusted(1));
    config.hello_timeout = Duration::from_millis(500);
    let (host, addr, _telemetry, mut events) = start_tcp(config).await;
    let from = loopback(12, 1);
    let mut s = connect_from(from, addr).await.unwrap();
    let start = Instant::now();
    s.write_all(b"\x03\xff").await.unwrap(); // a 1023-byte HELLO announced...
    let mut buf = [0u8; 16];
    let cut = timeout(Duration::from_secs(4), async {
        loop {
            // ...and one byte of it every 100 ms: progress, but never a frame.
            if s.write_all(b"x").await.is_err() {
                return;
            }
            if let Ok(Ok(0) | Err(_)) = timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                return;
            }
        }
    })
    .await;
    let held = start.elapsed();
    assert!(cut.is_ok(), "the host still held the connection after {held:?} (handshake timeout is 5 s)");
    assert!(held >= Duration::from_millis(450), "cut at the deadline, not before: {held:?}");
    let seen = collect_events(&mut events, Duration::from_secs(5), |s| {
        s.iter().any(|e| e.kind == EventKind::TimerExpired { timer: Timer::Hello })
    })
    .await;
    let e = seen.iter().find(|e| e.kind == EventKind::TimerExpired { timer: Timer::Hello });
    assert_eq!(e.map(|e| e.source), Some(Some(from)), "{seen:#?}");
    host.shutdown().await;
}
