//! The device client's retry rules against real sockets: an injected REJECT does not stop it,
//! an authenticated CLOSE UNAUTHORIZED does, a configuration that can never work stops it at
//! once, `close` is prompt whatever the link does, a "never" timer deadline does not panic, and
//! pairing through a host's pairing hook admits the device for its next normal session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::codec::Framed;
use vitalwire::*;
use vitalwire_tokio::*;

fn host_keys() -> Keypair {
    Keypair::from_private(PrivateKey::from_bytes([0x21; 32]))
}

fn device_keys(n: u8) -> Keypair {
    Keypair::from_private(PrivateKey::from_bytes([0x50 + n; 32]))
}

fn store(devices: &[u8]) -> Arc<TrustStore> {
    let mut list = TrustList::new();
    for &n in devices {
        list.add(*device_keys(n).public(), &format!("PM-{n}"), "", 0);
    }
    Arc::new(TrustStore::in_memory(list))
}

async fn start_host(
    trust: Arc<TrustStore>,
    pairing: Option<PairingHook>,
) -> (Host, SocketAddr, mpsc::Receiver<Telemetry>, mpsc::Receiver<SecurityEvent>) {
    let policy: Arc<dyn TrustPolicy> = trust.clone();
    let allow_pairing = pairing.is_some();
    let mut config = HostConfig::new(move || {
        ResponderConfig::new(host_keys(), policy.clone()).allow_pairing(allow_pairing)
    });
    config.trust = Some(trust);
    config.pairing = pairing;
    let (host, telemetry, events) = Host::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h = host.clone();
    tokio::spawn(async move { h.serve_tcp(listener).await });
    (host, addr, telemetry, events)
}

fn ik_client(addr: SocketAddr, n: u8, id: String) -> ClientConfig {
    let host_public = *host_keys().public();
    let mut c = ClientConfig::new(addr.to_string(), move || {
        InitiatorConfig::new(Profile::Ik, device_keys(n), DeviceIdentity::new(id.clone()))
            .host_key(host_public)
    });
    c.initial_backoff = Duration::from_millis(20);
    c.max_backoff = Duration::from_millis(200);
    c
}

/// Collects events until `done` says so (or the bound passes); returns them.
async fn events_until(
    c: &mut DeviceClient,
    limit: Duration,
    mut done: impl FnMut(&ClientEvent) -> bool,
) -> Vec<ClientEvent> {
    let mut seen = Vec::new();
    let _ = timeout(limit, async {
        while let Some(e) = c.next_event().await {
            let stop = done(&e);
            seen.push(e);
            if stop {
                return;
            }
        }
    })
    .await;
    seen
}

/// A "host" on the path that answers the first `rejects` HELLOs with a forged REJECT
/// (unknown credential) and forwards every later connection to `real`.
async fn rejecting_proxy(real: SocketAddr, rejects: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut left = rejects;
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else { return };
            if left > 0 {
                left -= 1;
                let mut framed = Framed::new(inbound, FrameCodec::new(4096));
                let _hello = framed.next().await;
                let body = vitalwire::hello::reject(1, RejectReason::UnknownCredential);
                let mut frame = bytes::BytesMut::new();
                frame.extend_from_slice(&(body.len() as u16).to_be_bytes());
                frame.extend_from_slice(&body);
                let _ = framed.send(frame.freeze()).await;
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(real).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_rejects_do_not_stop_the_device_and_each_is_reported() {
    let (host, real, mut telemetry, _events) = start_host(store(&[0]), None).await;
    let addr = rejecting_proxy(real, 3).await;
    let mut dev = DeviceClient::start(ik_client(addr, 0, "PM-0".into()));
    let seen = events_until(&mut dev, Duration::from_secs(20), |e| {
        matches!(e, ClientEvent::Connected { .. } | ClientEvent::Stopped { .. })
    })
    .await;
    let refusals: Vec<_> = seen.iter().filter(|e| matches!(e, ClientEvent::Refused { .. })).collect();
    assert_eq!(refusals.len(), 3, "{seen:?}");
    assert!(refusals
        .iter()
        .all(|e| matches!(e, ClientEvent::Refused { reason: RejectReason::UnknownCredential, .. })));
    // Each refusal also shows as the handshake's security event.
    let failed = seen
        .iter()
        .filter(
            |e| matches!(e, ClientEvent::Security(s) if matches!(s.kind, EventKind::HandshakeFailed { .. })),
        )
        .count();
    assert_eq!(failed, 3, "{seen:?}");
    assert!(matches!(seen.last(), Some(ClientEvent::Connected { attempt: 4 })), "{seen:?}");
    dev.send(1, "after three forged refusals").await.unwrap();
    let t = timeout(Duration::from_secs(10), telemetry.recv()).await.unwrap().unwrap();
    assert_eq!(t.payload, "after three forged refusals");
    dev.close().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_refusal_is_retried_until_the_operator_admits_the_device() {
    // IK refusals are REJECTs: the device keeps trying, and gets in once it is trusted.
    let trust = store(&[]);
    let (host, addr, mut telemetry, _events) = start_host(trust.clone(), None).await;
    let mut dev = DeviceClient::start(ik_client(addr, 1, "PM-1".into()));
    let seen = events_until(&mut dev, Duration::from_secs(20), |e| {
        matches!(e, ClientEvent::Refused { .. } | ClientEvent::Stopped { .. })
    })
    .await;
    assert!(matches!(seen.last(), Some(ClientEvent::Refused { .. })), "{seen:?}");
    trust.add(*device_keys(1).public(), "PM-1", "").unwrap();
    let seen = events_until(&mut dev, Duration::from_secs(20), |e| {
        matches!(e, ClientEvent::Connected { .. } | ClientEvent::Stopped { .. })
    })
    .await;
    assert!(matches!(seen.last(), Some(ClientEvent::Connected { .. })), "{seen:?}");
    dev.send(1, "admitted").await.unwrap();
    assert_eq!(
        timeout(Duration::from_secs(10), telemetry.recv()).await.unwrap().unwrap().payload,
        "admitted"
    );
    dev.close().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_unauthorized_close_stops_the_device_for_good() {
    // XX: the handshake completes, then the host refuses the unknown device with an encrypted
    // CLOSE UNAUTHORIZED (spec §12.2).
    let (host, addr, _telemetry, _events) = start_host(store(&[]), None).await;
    let host_public = *host_keys().public();
    let mut c = ClientConfig::new(addr.to_string(), move || {
        InitiatorConfig::new(Profile::Xx, device_keys(2), DeviceIdentity::new("PM-2"))
            .pin_host_keys([host_public])
    });
    c.initial_backoff = Duration::from_millis(20);
    let mut dev = DeviceClient::start(c);
    let seen =
        events_until(&mut dev, Duration::from_secs(20), |e| matches!(e, ClientEvent::Stopped { .. })).await;
    match seen.last() {
        Some(ClientEvent::Stopped { reason }) => assert!(reason.contains("unauthorized"), "{reason}"),
        other => panic!("{other:?} in {seen:?}"),
    }
    assert_eq!(seen.iter().filter(|e| matches!(e, ClientEvent::Connected { .. })).count(), 1, "{seen:?}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpinned_xx_device_keeps_trying_after_a_close_it_cannot_attribute() {
    // Without pinned host keys, whoever answered could be anyone: its CLOSE UNAUTHORIZED is
    // not the host's word, so the device retries (and gets in once it is admitted).
    let trust = store(&[]);
    let (host, addr, mut telemetry, _events) = start_host(trust.clone(), None).await;
    let mut c = ClientConfig::new(addr.to_string(), move || {
        InitiatorConfig::new(Profile::Xx, device_keys(8), DeviceIdentity::new("PM-8"))
    });
    c.initial_backoff = Duration::from_millis(20);
    c.max_backoff = Duration::from_millis(200);
    let mut dev = DeviceClient::start(c);
    let seen = events_until(&mut dev, Duration::from_secs(20), |e| {
        matches!(e, ClientEvent::Disconnected { .. } | ClientEvent::Stopped { .. })
    })
    .await;
    match seen.last() {
        Some(ClientEvent::Disconnected { reason, .. }) => {
            assert!(reason.contains("unauthorized"), "{reason}")
        }
        other => panic!("{other:?} in {seen:?}"),
    }
    trust.add(*device_keys(8).public(), "PM-8", "").unwrap();
    let seen = events_until(&mut dev, Duration::from_secs(20), |e| {
        matches!(e, ClientEvent::Connected { .. } | ClientEvent::Stopped { .. })
    })
    .await;
    assert!(matches!(seen.last(), Some(ClientEvent::Connected { .. })), "{seen:?}");
    dev.send(1, "xx").await.unwrap();
    assert_eq!(timeout(Duration::from_secs(10), telemetry.recv()).await.unwrap().unwrap().payload, "xx");
    dev.close().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_that_can_never_work_stops_at_once() {
    let (host, addr, _telemetry, _events) = start_host(store(&[3]), None).await;
    for id in [String::new(), "X".repeat(65)] {
        let mut dev = DeviceClient::start(ik_client(addr, 3, id.clone()));
        let seen =
            events_until(&mut dev, Duration::from_secs(10), |e| matches!(e, ClientEvent::Stopped { .. }))
                .await;
        match seen.last() {
            Some(ClientEvent::Stopped { reason }) => {
                assert!(reason.contains("invalid configuration"), "{reason}")
            }
            other => panic!("id of {} bytes: {other:?} in {seen:?}", id.len()),
        }
        assert!(!seen.iter().any(|e| matches!(e, ClientEvent::Disconnected { .. })), "{seen:?}");
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_prompt_while_the_host_is_a_black_hole_or_unreachable() {
    // A listener that accepts and never answers: the client sits in its handshake.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let black_hole = silent.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = probe.local_addr().unwrap();
    drop(probe);
    for addr in [black_hole, closed_port] {
        let mut c = ik_client(addr, 0, "PM-0".into());
        c.handshake_timeout = Duration::from_secs(60);
        c.initial_backoff = Duration::from_secs(60);
        c.max_backoff = Duration::from_secs(60);
        c.queue = 4;
        let dev = DeviceClient::start(c);
        // Fill the queue: close must not wait behind it.
        for _ in 0..4 {
            dev.send(1, "queued").await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = Instant::now();
        let reason = dev.close().await;
        let took = start.elapsed();
        // The four queued messages could not be sent, and close says so.
        assert!(reason.contains("4 queued messages not sent"), "{addr}: {reason}");
        // The promise: at most CLOSE_GRACE (+1 s of slack built into close itself).
        assert!(took <= client::CLOSE_GRACE + Duration::from_secs(1), "{addr}: close took {took:?}");
    }
}

/// Forwards to `real`, but stops reading from the device once it has passed `budget` bytes
/// on (a host that hangs with the connection open). Host-to-device bytes keep flowing.
async fn stalling_proxy(real: SocketAddr, budget: usize) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(real).await else { continue };
            let (mut din, mut dout) = inbound.into_split();
            let (mut hin, mut hout) = outbound.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut hin, &mut dout).await;
            });
            tokio::spawn(async move {
                let mut passed = 0;
                let mut buf = vec![0u8; 4096];
                while passed < budget {
                    let want = (budget - passed).min(buf.len());
                    match din.read(&mut buf[..want]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            passed += n;
                            if hout.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                // Stop reading; keep both halves open.
                std::future::pending::<()>().await;
                drop((din, hout));
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_stops_reading_is_a_lost_session_not_a_hang() {
    let (host, real, _telemetry, _events) = start_host(store(&[7]), None).await;
    let addr = stalling_proxy(real, 64 * 1024).await;
    let mut c = ik_client(addr, 7, "PM-7".into());
    c.write_timeout = Duration::from_secs(1);
    c.queue = 100_000;
    let mut dev = DeviceClient::start(c);
    let seen =
        events_until(&mut dev, Duration::from_secs(10), |e| matches!(e, ClientEvent::Connected { .. })).await;
    assert!(matches!(seen.last(), Some(ClientEvent::Connected { .. })), "{seen:?}");
    // Far more than the socket buffers hold (loopback autotunes to a few MiB).
    let block = vec![0x5a; 32 * 1024];
    for _ in 0..2_000 {
        dev.send(2, block.clone()).await.unwrap();
    }
    let seen = events_until(&mut dev, Duration::from_secs(60), |e| {
        matches!(e, ClientEvent::Disconnected { .. } | ClientEvent::Stopped { .. })
    })
    .await;
    match seen.last() {
        Some(ClientEvent::Disconnected { reason, .. }) => {
            assert!(reason.contains("write timed out"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let _ = dev.close().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_deadline_does_not_panic_the_client() {
    let (host, addr, mut telemetry, _events) = start_host(store(&[4]), None).await;
    let mut c = ik_client(addr, 4, "PM-4".into());
    // Only a lifetime so far ahead that its deadline saturates to the end of time.
    c.timers = TimerConfig { max_lifetime_ms: Some(u64::MAX), ..TimerConfig::DISABLED };
    let mut dev = DeviceClient::start(c);
    let seen =
        events_until(&mut dev, Duration::from_secs(10), |e| matches!(e, ClientEvent::Connected { .. })).await;
    assert!(matches!(seen.last(), Some(ClientEvent::Connected { .. })), "{seen:?}");
    for i in 0..3 {
        dev.send(1, format!("m{i}")).await.unwrap();
    }
    for i in 0..3 {
        let t = timeout(Duration::from_secs(10), telemetry.recv()).await.expect("client alive").unwrap();
        assert_eq!(t.payload, format!("m{i}").into_bytes());
    }
    dev.close().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_through_the_host_hook_admits_the_device_for_its_next_session() {
    let trust = store(&[]);
    let (requests_tx, mut requests) = mpsc::unbounded_channel::<PairingRequest>();
    let hook: PairingHook = Arc::new(move |r| {
        let _ = requests_tx.send(r);
    });
    let (host, addr, mut telemetry, _events) = start_host(trust.clone(), Some(hook)).await;
    let host_public = *host_keys().public();
    let xx = InitiatorConfig::new(Profile::Xx, device_keys(5), DeviceIdentity::new("PM-5"));
    let pairing = PairingSession::start(&addr.to_string(), xx, Duration::from_secs(10)).await.unwrap();
    assert_eq!(pairing.host_key(), host_public);
    let device_code = pairing.code();
    let request = timeout(Duration::from_secs(10), requests.recv()).await.unwrap().unwrap();
    assert_eq!(request.code, device_code);
    assert_eq!(request.device_id, "PM-5");
    assert_eq!(request.key, *device_keys(5).public());
    // The host operator confirms: the key goes into the store, then the decision.
    trust.add(request.key, &request.device_id, "paired").unwrap();
    request.decide(true);
    let outcome = pairing.confirm(async { true }).await.unwrap();
    assert_eq!(outcome, PairingOutcome::Paired);
    // The next, normal session streams telemetry.
    let mut dev = DeviceClient::start(ik_client(addr, 5, "PM-5".into()));
    let seen = events_until(&mut dev, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::Connected { .. } | ClientEvent::Stopped { .. })
    })
    .await;
    assert!(matches!(seen.last(), Some(ClientEvent::Connected { .. })), "{seen:?}");
    dev.send(1, "paired telemetry").await.unwrap();
    assert_eq!(
        timeout(Duration::from_secs(10), telemetry.recv()).await.unwrap().unwrap().payload,
        "paired telemetry"
    );
    dev.close().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_unconfirmed_pairing_stores_nothing() {
    let trust = store(&[]);
    let (requests_tx, mut requests) = mpsc::unbounded_channel::<PairingRequest>();
    let hook: PairingHook = Arc::new(move |r| {
        let _ = requests_tx.send(r);
    });
    let (host, addr, _telemetry, _events) = start_host(trust.clone(), Some(hook)).await;
    let xx = || InitiatorConfig::new(Profile::Xx, device_keys(6), DeviceIdentity::new("PM-6"));
    // The host operator refuses.
    let pairing = PairingSession::start(&addr.to_string(), xx(), Duration::from_secs(10)).await.unwrap();
    let request = timeout(Duration::from_secs(10), requests.recv()).await.unwrap().unwrap();
    request.decide(false);
    let outcome = pairing.confirm(std::future::pending()).await.unwrap();
    assert_eq!(outcome, PairingOutcome::RefusedByHost(CloseCode::UNAUTHORIZED));
    // The device operator says the codes differ: the host learns it as the session's end.
    let pairing = PairingSession::start(&addr.to_string(), xx(), Duration::from_secs(10)).await.unwrap();
    let request = timeout(Duration::from_secs(10), requests.recv()).await.unwrap().unwrap();
    let outcome = pairing.confirm(async { false }).await.unwrap();
    assert_eq!(outcome, PairingOutcome::NotConfirmed { host_admitted: false });
    let gone = timeout(Duration::from_secs(10), async {
        while request.is_open() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the host kept the pairing session after the device refused");
    assert!(trust.snapshot().is_empty());
    // The host operator confirms first; the device operator, later, says the codes differ:
    // the device is not paired, and learns that the host admitted it (to be revoked there).
    let pairing = PairingSession::start(&addr.to_string(), xx(), Duration::from_secs(10)).await.unwrap();
    let request = timeout(Duration::from_secs(10), requests.recv()).await.unwrap().unwrap();
    request.decide(true);
    // (Generous: the host's CLOSE needs one loopback round trip to arrive first.)
    let later = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        false
    };
    let outcome = pairing.confirm(later).await.unwrap();
    assert_eq!(outcome, PairingOutcome::NotConfirmed { host_admitted: true });
    host.shutdown().await;
}
