//! The tokio host and device client on loopback: telemetry, refusal of unknown devices,
//! revocation of a live session, reconnection with backoff, graceful shutdown, UDP with
//! cookies, and a bounded load-and-attack test.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::timeout;
use vitalwire::datagram::DatagramConfig;
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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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
    let mut config = host_config(trusted(DEVICES));
    config.handshake_burst = 2_000; // every device comes from 127.0.0.1
    config.handshake_rate = 2_000.0;
    config.handshake_timeout = Duration::from_secs(2);
    config.max_half_open = 512;
    config.timers =
        TimerConfig { keepalive_ms: Some(1_000), dead_peer_ms: Some(5_000), ..TimerConfig::default() };
    let (host, addr, mut telemetry, mut events) = start_tcp(config).await;
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let rss_before = rss_kib();

    // The rogue: garbage, oversized lengths, half-open handshakes that never finish, and
    // slowloris writers, all while the devices work.
    let rogue = tokio::spawn(async move {
        let mut held = Vec::new();
        for i in 0..300u32 {
            let Ok(mut s) = TcpStream::connect(addr).await else { continue };
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
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(held);
    });

    let mut tasks = Vec::new();
    for n in 0..DEVICES {
        tasks.push(tokio::spawn(async move {
            let mut c = DeviceClient::start(client_config(addr, n));
            wait_connected(&mut c).await;
            for i in 0..FRAMES {
                c.send(1, format!("{n}:{i}")).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            c.close().await;
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
    let stats = host.stats();
    assert!(stats.rejected >= 200, "the rogue's connections were refused ({})", stats.rejected);
    assert!(stats.half_open <= 512);
    assert!(max_sessions <= DEVICES as usize);
    if let (Some(a), Some(b)) = (rss_before, rss_kib()) {
        // Bounded: well under 64 KiB per session of growth for 1,000 sessions.
        assert!(b.saturating_sub(a) < 64 * 1024, "RSS grew by {} KiB", b - a);
    }
    host.shutdown().await;
}
