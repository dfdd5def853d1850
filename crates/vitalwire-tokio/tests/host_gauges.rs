//! The host's gauges and deadlines with TCP and UDP served together, in process:
//!
//! - a stray UDP datagram must not corrupt the TCP session gauge (the UDP loop used to store
//!   its own count into it; a TCP session ending then wrapped it and every later TCP device
//!   was refused with `limit_exceeded: sessions`);
//! - timers set to "never" (the largest values) must not panic the adapters' deadline
//!   arithmetic (`Instant + Duration` overflows; issue #14.12).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::timeout;
use vitalwire::datagram::DatagramConfig;
use vitalwire::*;
use vitalwire_tokio::udp::{serve_udp, UdpDevice};
use vitalwire_tokio::*;

fn host_keys() -> Keypair {
    Keypair::from_private(PrivateKey::from_bytes([0x11; 32]))
}

fn device(n: u8) -> InitiatorConfig {
    let keys = Keypair::from_private(PrivateKey::from_bytes([0x40 + n; 32]));
    InitiatorConfig::new(Profile::Ik, keys, DeviceIdentity::new(format!("PM-{n}")))
        .host_key(*host_keys().public())
}

/// A host on loopback TCP and UDP admitting any device.
async fn start(timers: TimerConfig) -> (Host, SocketAddr, SocketAddr, mpsc::Receiver<Telemetry>) {
    let mut config = HostConfig::new(|| ResponderConfig::new(host_keys(), Arc::new(AllowAnyPeerInsecure)));
    config.timers = timers;
    let (host, telemetry, mut events) = Host::new(config);
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = listener.local_addr().unwrap();
    let h = host.clone();
    tokio::spawn(async move { h.serve_tcp(listener).await });
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp = socket.local_addr().unwrap();
    let h = host.clone();
    tokio::spawn(async move { serve_udp(&h, socket).await });
    (host, tcp, udp, telemetry)
}

/// Connects a TCP device, sends one message and waits until the host delivers it.
async fn tcp_device_delivers(
    addr: SocketAddr,
    n: u8,
    telemetry: &mut mpsc::Receiver<Telemetry>,
) -> Result<DeviceClient, String> {
    let mut config = ClientConfig::new(addr.to_string(), move || device(n));
    config.max_attempts = Some(1);
    let mut client = DeviceClient::start(config);
    loop {
        match timeout(Duration::from_secs(10), client.next_event()).await.map_err(|_| "no event in time")? {
            Some(ClientEvent::Connected { .. }) => break,
            Some(ClientEvent::Security(_)) => {}
            other => return Err(format!("{other:?}")),
        }
    }
    client.send(1, b"hr=72".to_vec()).await.map_err(|e| e.to_string())?;
    let id = format!("PM-{n}");
    timeout(Duration::from_secs(10), async {
        while let Some(t) = telemetry.recv().await {
            if t.device_id == id {
                return Ok(());
            }
        }
        Err("telemetry ended".to_string())
    })
    .await
    .map_err(|_| format!("{id}: nothing delivered"))??;
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_udp_datagram_leaves_the_tcp_gauge_alone() {
    let (host, tcp, udp, mut telemetry) = start(TimerConfig::default()).await;
    let first = tcp_device_delivers(tcp, 1, &mut telemetry).await.expect("first device");
    assert_eq!(host.stats().sessions, 1);
    let stray = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    stray.send_to(&[0x99; 40], udp).unwrap();
    // The UDP loop has handled the datagram once it answered nothing and counted nothing;
    // give it the time to run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(host.stats().sessions, 1, "the stray datagram changed the session count");
    first.close().await;
    let gone = timeout(Duration::from_secs(10), async {
        while host.stats().sessions != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "sessions after the device left: {}", host.stats().sessions);
    let second = tcp_device_delivers(tcp, 2, &mut telemetry).await;
    assert!(second.is_ok(), "a new TCP device was refused: {:?} ({:?})", second.err(), host.stats());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_deadlines_do_not_panic_the_host() {
    // Every timer at the largest value: the core's deadlines saturate at u64::MAX.
    let never = TimerConfig {
        keepalive_ms: Some(u64::MAX),
        dead_peer_ms: Some(u64::MAX),
        rekey_after_ms: Some(u64::MAX),
        max_lifetime_ms: Some(u64::MAX),
    };
    let (host, tcp, udp, mut telemetry) = start(never).await;
    let client = tcp_device_delivers(tcp, 3, &mut telemetry).await.expect("TCP session with never-timers");
    let mut dev = UdpDevice::connect(
        udp,
        device(4),
        DatagramConfig { timers: never, ..Default::default() },
        Duration::from_secs(10),
    )
    .await
    .expect("UDP session with never-timers");
    dev.send(1, b"spo2=98").await.unwrap();
    let got = timeout(Duration::from_secs(10), async {
        while let Some(t) = telemetry.recv().await {
            if t.device_id == "PM-4" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "the UDP host loop stopped");
    // The TCP session task is still there (a panic would have dropped the connection).
    client.send(1, b"hr=73".to_vec()).await.unwrap();
    let got = timeout(Duration::from_secs(10), telemetry.recv()).await;
    assert!(matches!(got, Ok(Some(ref t)) if t.device_id == "PM-3"), "{got:?}");
    assert_eq!(host.stats().sessions, 2);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_even_when_nobody_drains_the_telemetry() {
    let mut config = HostConfig::new(|| ResponderConfig::new(host_keys(), Arc::new(AllowAnyPeerInsecure)));
    config.telemetry_buffer = 1;
    let (host, telemetry, mut events) = Host::new(config);
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h = host.clone();
    tokio::spawn(async move { h.serve_tcp(listener).await });
    let mut config = ClientConfig::new(addr.to_string(), move || device(5));
    config.max_attempts = Some(1);
    let mut client = DeviceClient::start(config);
    loop {
        match timeout(Duration::from_secs(10), client.next_event()).await.expect("connected in time") {
            Some(ClientEvent::Connected { .. }) => break,
            Some(ClientEvent::Security(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    for i in 0..10u8 {
        client.send(1, vec![i; 8]).await.unwrap();
    }
    // The buffer (1) is full and the connection task waits for room that never comes.
    let stuck = timeout(Duration::from_secs(10), async {
        while host.stats().bytes < 16 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(stuck.is_ok(), "{:?}", host.stats());
    // Shutdown waits at most STOP_GRACE for it, then counts what it gave up on.
    let ended = timeout(host::STOP_GRACE * 5, host.shutdown()).await;
    assert!(ended.is_ok(), "shutdown hung on a full telemetry buffer: {:?}", host.stats());
    let s = host.stats();
    assert_eq!(s.frames, 1, "{s:?}");
    assert!(s.undelivered >= 1, "{s:?}");
    drop(telemetry);
}
