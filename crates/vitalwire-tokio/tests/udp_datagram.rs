//! Datagram mode on real UDP sockets: forgeries from another socket, a REJECT that is only a
//! hint (the device gets in once it is admitted at run time), and the authenticated refusal
//! of an XX device (spec §13.3).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::timeout;
use vitalwire::datagram::{DatagramConfig, TYPE_FINISH, TYPE_TRANSPORT};
use vitalwire::*;
use vitalwire_tokio::udp::{serve_udp, UdpDevice};
use vitalwire_tokio::*;

fn host_keys() -> Keypair {
    Keypair::from_private(PrivateKey::from_bytes([0x11; 32]))
}

fn device_keys() -> Keypair {
    Keypair::from_private(PrivateKey::from_bytes([0x42; 32]))
}

async fn start(
    trust: Arc<TrustStore>,
) -> (Host, SocketAddr, mpsc::Receiver<Telemetry>, mpsc::Receiver<SecurityEvent>) {
    let policy: Arc<dyn TrustPolicy> = trust.clone();
    let mut config = HostConfig::new(move || ResponderConfig::new(host_keys(), policy.clone()));
    config.trust = Some(trust);
    // Every forgery is counted one by one here (the aggregation of repeated events per
    // source is tested in tests/host.rs).
    config.events_per_interval = 1_000;
    let (host, telemetry, events) = Host::new(config);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let h = host.clone();
    tokio::spawn(async move { serve_udp(&h, socket).await });
    (host, addr, telemetry, events)
}

fn admitted() -> Arc<TrustStore> {
    let mut list = TrustList::new();
    list.add(*device_keys().public(), "PM-1", "", 0);
    Arc::new(TrustStore::in_memory(list))
}

fn ik() -> InitiatorConfig {
    InitiatorConfig::new(Profile::Ik, device_keys(), DeviceIdentity::new("PM-1"))
        .host_key(*host_keys().public())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgeries_from_another_socket_are_counted_and_do_not_disturb_the_session() {
    let (host, addr, mut telemetry, mut events) = start(admitted()).await;
    let mut dev =
        UdpDevice::connect(addr, ik(), DatagramConfig::default(), Duration::from_secs(10)).await.unwrap();
    let index = dev.client().session().unwrap().remote_index();
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..5 {
        dev.send(1, format!("genuine {i}").as_bytes()).await.unwrap();
    }
    // The attacker knows the session index (it is in the clear) but not the keys.
    let mut forged = 0;
    for n in 0..20u64 {
        let mut p = vec![TYPE_TRANSPORT];
        p.extend(index.to_be_bytes());
        p.extend((1_000 + n).to_be_bytes());
        p.extend([0xA5; 40]);
        attacker.send_to(&p, addr).await.unwrap();
        forged += 1;
    }
    let mut finish = vec![TYPE_FINISH];
    finish.extend(index.to_be_bytes());
    finish.push(0x02);
    finish.extend([0x5A; 100]);
    attacker.send_to(&finish, addr).await.unwrap();
    forged += 1;
    // Spoofed indices and garbage reach no session.
    for n in 0..20u32 {
        let mut p = vec![TYPE_TRANSPORT];
        p.extend((index ^ (n + 1)).to_be_bytes());
        p.extend([0u8; 40]);
        attacker.send_to(&p, addr).await.unwrap();
        attacker.send_to(b"\x24short", addr).await.unwrap();
    }
    for i in 5..10 {
        dev.send(1, format!("genuine {i}").as_bytes()).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 10 {
        let t = timeout(Duration::from_secs(5), telemetry.recv()).await.unwrap().unwrap();
        got.push(String::from_utf8(t.payload.to_vec()).unwrap());
    }
    got.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("genuine {i}")).collect();
    expected.sort();
    assert_eq!(got, expected);
    let mut failures = 0;
    while failures < forged {
        let e = timeout(Duration::from_secs(5), events.recv()).await.expect("an event per forgery").unwrap();
        if e.kind == EventKind::AuthenticationFailure {
            failures += 1;
        }
    }
    // Nothing else was delivered, and the session goes on.
    assert!(timeout(Duration::from_millis(300), telemetry.recv()).await.is_err());
    dev.send(1, b"still here").await.unwrap();
    let t = timeout(Duration::from_secs(5), telemetry.recv()).await.unwrap().unwrap();
    assert_eq!(&t.payload[..], b"still here");
    assert!(dev.client().error().is_none());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_device_keeps_trying_and_gets_in_once_admitted_at_run_time() {
    let store = Arc::new(TrustStore::in_memory(TrustList::new()));
    let (host, addr, mut telemetry, _events) = start(store.clone()).await;
    // Nobody admits it: after the deadline the device reports the host's refusal.
    let refused = UdpDevice::connect(addr, ik(), DatagramConfig::default(), Duration::from_secs(3)).await;
    assert_eq!(
        refused.err(),
        Some(Error::Handshake(HandshakeError::Rejected(RejectReason::UnknownCredential)))
    );
    // Admitted while it is retrying: a retransmitted HELLO gets through.
    let connecting = tokio::spawn(async move {
        UdpDevice::connect(addr, ik(), DatagramConfig::default(), Duration::from_secs(20)).await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    store.add(*device_keys().public(), "PM-1", "admitted late").unwrap();
    let mut dev = connecting.await.unwrap().expect("admitted after the first REJECTs");
    dev.send(1, b"admitted").await.unwrap();
    let t = timeout(Duration::from_secs(5), telemetry.recv()).await.unwrap().unwrap();
    assert_eq!(&t.payload[..], b"admitted");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_xx_device_learns_it_is_unauthorized() {
    let (host, addr, mut telemetry, _events) = start(Arc::new(TrustStore::in_memory(TrustList::new()))).await;
    let config = InitiatorConfig::new(Profile::Xx, device_keys(), DeviceIdentity::new("ROGUE"))
        .pin_host_keys([*host_keys().public()]);
    // XX: the device's part of the handshake is done once it sends FINISH.
    let mut dev =
        UdpDevice::connect(addr, config, DatagramConfig::default(), Duration::from_secs(10)).await.unwrap();
    let _ = dev.send(1, b"should not arrive").await;
    let r = dev.run_for(Duration::from_secs(3)).await;
    assert_eq!(r.err(), Some(Error::ClosedByPeer(CloseCode::UNAUTHORIZED)));
    assert!(timeout(Duration::from_millis(300), telemetry.recv()).await.is_err(), "nothing delivered");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pairing_open_an_unregistered_devices_data_never_becomes_telemetry() {
    let store = Arc::new(TrustStore::in_memory(TrustList::new()));
    let policy: Arc<dyn TrustPolicy> = store.clone();
    let mut config =
        HostConfig::new(move || ResponderConfig::new(host_keys(), policy.clone()).allow_pairing(true));
    config.trust = Some(store);
    let (host, mut telemetry, mut events) = Host::new(config);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let h = host.clone();
    tokio::spawn(async move { serve_udp(&h, socket).await });
    let pairing = InitiatorConfig::new(Profile::Xx, device_keys(), DeviceIdentity::new("NEW-1"))
        .pin_host_keys([*host_keys().public()])
        .request_pairing();
    let mut dev =
        UdpDevice::connect(addr, pairing, DatagramConfig::default(), Duration::from_secs(10)).await.unwrap();
    let code = dev.client().pairing_code().expect("a pairing session shows its code");
    assert_eq!(code.to_string().len(), 6);
    assert_eq!(dev.send(1, b"telemetry").await, Err(Error::PairingSession));
    // A device that sends DATA anyway: the host ends the session and delivers nothing.
    dev.client()
        .send_raw_for_testing_only(0x01, 0, 1, b"sneaked in", vitalwire_tokio::clock::monotonic())
        .unwrap();
    let r = dev.run_for(Duration::from_secs(2)).await;
    assert_eq!(r.err(), Some(Error::ClosedByPeer(CloseCode::PROTOCOL_ERROR)));
    assert!(timeout(Duration::from_millis(300), telemetry.recv()).await.is_err(), "no telemetry");
    let mut seen = Vec::new();
    while let Ok(Some(e)) = timeout(Duration::from_millis(500), events.recv()).await {
        seen.push(e.kind);
    }
    assert!(
        seen.iter().any(|k| matches!(k, EventKind::SessionEstablished { pairing: true, .. })),
        "{seen:?}"
    );
    assert!(
        seen.contains(&EventKind::ProtocolViolation { error: ProtocolError::DataInPairingSession }),
        "{seen:?}"
    );
    host.shutdown().await;
}
