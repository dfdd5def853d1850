//! System test (spec §4.8): an attacker on the path records a real `vitalwire device`'s IK
//! HELLO and replays it to the real `vitalwire host`. The host answers, but its event log shows
//! no `session_established` for the replay, only a handshake that was never confirmed; the
//! genuine device's sessions are logged as usual.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

/// A TCP relay to `upstream` that records the first frame each client sends (its HELLO).
fn recording_relay(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hellos = Arc::new(Mutex::new(Vec::new()));
    let record = hellos.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut host) = TcpStream::connect(upstream) else { return };
            let record = record.clone();
            std::thread::spawn(move || {
                let mut len = [0u8; 2];
                if client.read_exact(&mut len).is_err() {
                    return;
                }
                let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
                if client.read_exact(&mut body).is_err() {
                    return;
                }
                let hello = [&len[..], &body].concat();
                record.lock().unwrap().push(hello.clone());
                if host.write_all(&hello).is_err() {
                    return;
                }
                let (mut c2, mut h2) = (client.try_clone().unwrap(), host.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut h2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
                let _ = std::io::copy(&mut client, &mut host);
                let _ = host.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (addr, hellos)
}

#[test]
fn a_replayed_hello_is_not_logged_as_a_session() {
    let sb = Sandbox::new("replay");
    sb.keygen("host");
    sb.keygen("pm1");
    sb.trust_add("pm1", "PM-1");
    let host = HostProc::start(&sb, HostArgs::default());
    let (relay, hellos) = recording_relay(host.tcp.unwrap());
    let mut device =
        start_device(&sb, &DeviceArgs { seconds: Some(2), ..DeviceArgs::new("pm1", "PM-1", relay) });
    let sent =
        wait_until(Duration::from_secs(30), || host.telemetry().iter().any(|t| t["device_id"] == "PM-1"));
    assert!(sent.is_some(), "host: {}\ndevice: {}", host.proc.stderr(), device.stderr());
    assert!(device.wait_exit(Duration::from_secs(30)).is_some(), "the device stops after 2 s");
    let genuine = hellos.lock().unwrap().len();
    assert!(genuine >= 1);
    let established = |h: &HostProc| {
        h.events_named("session_established").iter().filter(|e| e["device_id"] == "PM-1").count()
    };
    assert_eq!(established(&host), genuine, "one per genuine connection: {:?}", host.events());

    // The replay, straight to the host: it answers with message 2 ...
    let hello = hellos.lock().unwrap()[0].clone();
    let mut attacker = TcpStream::connect(host.tcp.unwrap()).unwrap();
    attacker.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    attacker.write_all(&hello).unwrap();
    let mut head = [0u8; 3];
    attacker.read_exact(&mut head).unwrap();
    assert_eq!(head[2], 0x02, "a HANDSHAKE frame answers the replayed HELLO");
    // ... then, with no transport frame from the attacker, drops the connection at its
    // handshake deadline (5 s) and logs a failed handshake, never a session.
    let mut rest = Vec::new();
    let _ = attacker.read_to_end(&mut rest);
    let failed = wait_until(Duration::from_secs(30), || {
        host.events_named("handshake_failed")
            .iter()
            .any(|e| e["reason"].as_str().is_some_and(|r| r.contains("confirm")))
    });
    assert!(failed.is_some(), "events: {:?}", host.events());
    assert_eq!(established(&host), genuine, "the replay was not logged as a session: {:?}", host.events());
}
