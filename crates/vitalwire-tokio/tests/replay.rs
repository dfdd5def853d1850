//! A captured IK HELLO replayed to the TCP host (spec §4.8, key confirmation): the host answers
//! it, but reports no `session_established` under the device's identity, counts no session,
//! and drops the connection at the handshake deadline; the genuine device, idle after
//! connecting, is confirmed by its first frame and stays connected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use vitalwire::*;
use vitalwire_tokio::*;

fn host_keys() -> Keypair {
    Keypair::from_private(PrivateKey::from_bytes([0x11; 32]))
}

fn device_keys() -> Keypair {
    Keypair::from_private(PrivateKey::from_bytes([0x42; 32]))
}

fn initiator(profile: Profile) -> InitiatorConfig {
    InitiatorConfig::new(profile, device_keys(), DeviceIdentity::new("PM-7")).host_key(*host_keys().public())
}

async fn start_host() -> (Host, SocketAddr, mpsc::Receiver<Telemetry>, mpsc::Receiver<SecurityEvent>) {
    let mut list = TrustList::new();
    list.add(*device_keys().public(), "PM-7", "", 0);
    let trust = Arc::new(TrustStore::in_memory(list));
    let policy: Arc<dyn TrustPolicy> = trust.clone();
    let mut config = HostConfig::new(move || ResponderConfig::new(host_keys(), policy.clone()));
    config.trust = Some(trust);
    config.handshake_timeout = Duration::from_millis(1_500);
    let (host, telemetry, events) = Host::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h = host.clone();
    tokio::spawn(async move { h.serve_tcp(listener).await });
    (host, addr, telemetry, events)
}

/// Reads one whole frame (length prefix included) from a raw stream.
async fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).await.unwrap();
    [&len[..], &body].concat()
}

fn drain(events: &mut mpsc::Receiver<SecurityEvent>) -> Vec<SecurityEvent> {
    core::iter::from_fn(|| events.try_recv().ok()).collect()
}

fn is_established(e: &SecurityEvent) -> bool {
    matches!(e.kind, EventKind::SessionEstablished { .. })
}

/// The genuine device over a raw socket, so the test can record its HELLO byte for byte.
async fn genuine_session(addr: SocketAddr, profile: Profile) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut hs = Handshake::initiator(initiator(profile)).unwrap();
    let mut out = BytesMut::new();
    hs.write_message(&mut out).unwrap();
    let hello = out.to_vec();
    stream.write_all(&out.split()).await.unwrap();
    let mut answer = BytesMut::from(&read_frame(&mut stream).await[..]);
    let body = StreamDecoder::new(1024).decode(&mut answer).unwrap().unwrap();
    hs.read_message(&body).unwrap();
    let mut session = hs.into_session().unwrap();
    // The confirming first frame is larger than any handshake frame (1024 bytes).
    session.seal_data(2, &[0x5a; 3000], &mut out).unwrap();
    session.seal_data(1, b"HR=72", &mut out).unwrap();
    session.close(CloseCode::NORMAL, &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    // The host's CLOSE answer, then the end of the stream.
    let _ = timeout(Duration::from_secs(10), read_frame(&mut stream)).await.expect("CLOSE answer");
    hello
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_hello_is_never_a_session_and_the_device_still_connects() {
    for profile in [Profile::Ik, Profile::Kk] {
        let (host, addr, mut telemetry, mut events) = start_host().await;
        let hello = genuine_session(addr, profile).await;
        let item = timeout(Duration::from_secs(10), telemetry.recv()).await.unwrap().unwrap();
        assert_eq!((item.device_id.as_str(), item.payload.len()), ("PM-7", 3000), "{profile}");
        let item = timeout(Duration::from_secs(10), telemetry.recv()).await.unwrap().unwrap();
        assert_eq!((item.device_id.as_str(), &item.payload[..]), ("PM-7", &b"HR=72"[..]));
        // Wait until the genuine session has ended on the host.
        timeout(Duration::from_secs(10), async {
            while host.stats().sessions != 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the genuine session ends");
        let genuine = drain(&mut events);
        assert_eq!(genuine.iter().filter(|e| is_established(e)).count(), 1, "{profile}: {genuine:?}");

        // The attacker replays the recorded HELLO: the host answers with a message 2...
        let mut attacker = TcpStream::connect(addr).await.unwrap();
        attacker.write_all(&hello).await.unwrap();
        let message2 = timeout(Duration::from_secs(10), read_frame(&mut attacker)).await.expect("answered");
        assert_eq!(message2[2], 0x02, "{profile}: a HANDSHAKE frame");
        // ... but counts no session while it waits for a transport frame that cannot come.
        assert_eq!(host.stats().sessions, 0, "{profile}");
        assert_eq!(host.stats().sessions_total, 1, "{profile}");
        // The host ends the connection at its handshake deadline (1.5 s; bounded wait).
        let mut rest = Vec::new();
        let closed = timeout(Duration::from_secs(10), attacker.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{profile}: closed without a reply");
        timeout(Duration::from_secs(10), async {
            while host.stats().half_open != 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the half-open slot is released");
        let replayed = drain(&mut events);
        assert!(!replayed.iter().any(is_established), "{profile}: the log is not fooled: {replayed:?}");
        assert!(
            replayed.iter().any(|e| e.kind
                == EventKind::HandshakeFailed { reason: Error::Handshake(HandshakeError::NotConfirmed) }),
            "{profile}: {replayed:?}"
        );
        assert_eq!(host.stats().sessions_total, 1, "{profile}: no session was counted");

        // The genuine device, idle after connecting (no data queued), is confirmed at once by
        // its first frame and outlives the handshake deadline.
        let mut config = ClientConfig::new(addr.to_string(), move || initiator(profile));
        config.max_attempts = Some(1);
        let mut client = DeviceClient::start(config);
        loop {
            match timeout(Duration::from_secs(10), client.next_event()).await.expect("in time") {
                Some(ClientEvent::Connected { .. }) => break,
                Some(ClientEvent::Stopped { reason }) => panic!("stopped: {reason}"),
                _ => {}
            }
        }
        let confirmed = timeout(Duration::from_secs(10), async {
            loop {
                if let Some(e) = events.recv().await {
                    if is_established(&e) {
                        return e;
                    }
                }
            }
        })
        .await
        .expect("session_established for the genuine device");
        assert_eq!(confirmed.device_id.as_deref(), Some("PM-7"));
        // Past the 1.5 s deadline the session is still up on both ends.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(host.stats().sessions, 1, "{profile}");
        while let Ok(Some(e)) = timeout(Duration::from_millis(50), client.next_event()).await {
            assert!(!matches!(e, ClientEvent::Disconnected { .. } | ClientEvent::Stopped { .. }), "{e:?}");
        }
        client.send(2, &b"SpO2=97"[..]).await.unwrap();
        let item = timeout(Duration::from_secs(10), telemetry.recv()).await.unwrap().unwrap();
        assert_eq!(&item.payload[..], b"SpO2=97");
        client.close().await;
        host.shutdown().await;
    }
}
