//! System tests of what an operator lives through: a link that tampers with frames, a host
//! killed with SIGKILL and started again on the same port, while real `vitalwire device`
//! processes keep running.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

/// A TCP proxy that forwards device→host stream frames (2-byte length prefix) and flips one
/// ciphertext bit in the `nth` frame of the first connection only; host→device bytes pass as they
/// are. Later connections pass untouched, so the device can recover by reconnecting.
struct TamperingProxy {
    addr: SocketAddr,
    tampered: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
}

impl TamperingProxy {
    fn start(upstream: SocketAddr, nth: usize) -> TamperingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let tampered = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let (t, c) = (tampered.clone(), connections.clone());
        std::thread::spawn(move || {
            for down in listener.incoming() {
                let Ok(down) = down else { return };
                let first = c.fetch_add(1, Ordering::SeqCst) == 0;
                let Ok(up) = TcpStream::connect(upstream) else { continue };
                let (mut down_r, mut up_w) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                let (mut up_r, mut down_w) = (up, down);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up_r, &mut down_w);
                    let _ = down_w.shutdown(std::net::Shutdown::Both);
                });
                let t = t.clone();
                std::thread::spawn(move || {
                    let mut index = 0;
                    loop {
                        let mut len = [0u8; 2];
                        if down_r.read_exact(&mut len).is_err() {
                            break;
                        }
                        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
                        if down_r.read_exact(&mut body).is_err() {
                            break;
                        }
                        index += 1;
                        if first && index == nth && !body.is_empty() {
                            let mid = body.len() / 2;
                            body[mid] ^= 0x01;
                            t.store(true, Ordering::SeqCst);
                        }
                        if up_w.write_all(&len).and_then(|_| up_w.write_all(&body)).is_err() {
                            break;
                        }
                    }
                    let _ = up_w.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        TamperingProxy { addr, tampered, connections }
    }
}

#[test]
fn a_tampered_frame_is_an_alert_and_the_device_recovers_by_reconnecting() {
    let sb = Sandbox::new("tamper");
    sb.keygen("host");
    sb.keygen("pm1");
    sb.trust_add("pm1", "PM-1");
    let host = HostProc::start(&sb, HostArgs::default());
    // Frame 1 is the HELLO; frame 10 is a transport frame well inside the session.
    let proxy = TamperingProxy::start(host.tcp.unwrap(), 10);
    let device = start_device(&sb, &DeviceArgs::new("pm1", "PM-1", proxy.addr));
    let alerted =
        wait_until(Duration::from_secs(30), || !host.events_named("authentication_failure").is_empty());
    assert!(alerted.is_some(), "no authentication_failure event: {:?}\n{}", host.events(), device.stderr());
    assert!(proxy.tampered.load(Ordering::SeqCst));
    let failure = &host.events_named("authentication_failure")[0];
    assert_eq!(failure["severity"], "alert", "{failure}");
    assert_eq!(failure["device_id"], "PM-1", "the alert names the authenticated device: {failure}");
    // The device reconnects through the (now honest) proxy and streams again.
    let before = host.telemetry().len();
    let recovered = wait_until(Duration::from_secs(30), || {
        proxy.connections.load(Ordering::SeqCst) >= 2 && host.telemetry().len() >= before + 10
    });
    assert!(recovered.is_some(), "device did not recover: {}", device.stderr());
    // Nothing the tamperer touched was delivered: every line is one of the monitor's messages.
    for t in host.telemetry() {
        assert_eq!(t["device_id"], "PM-1");
        let ok = match t["channel"].as_u64() {
            Some(1) => t["text"].as_str().is_some_and(|s| s.starts_with("HR=") && s.contains(";SpO2=")),
            Some(2) => t["hex"].as_str().is_some_and(|h| !h.is_empty() && h.len() % 4 == 0),
            Some(3) => {
                // The monitor's alarms (monitor.rs), including the periodic one at tick 24.
                t["text"].as_str().is_some_and(|s| {
                    s.starts_with("HIGH HR") || s.starts_with("LOW SpO2") || s == "INFO lead check OK"
                })
            }
            _ => false,
        };
        assert!(ok, "unexpected telemetry line {t}");
    }
}

/// Kills a host with SIGKILL while a device streams to it, restarts it on the same port, and
/// waits (at most `back_within`) for the device's telemetry in the new host's file. Returns the
/// new host and the device.
fn kill_and_restart(name: &str, udp: bool, back_within: Duration) -> (Sandbox, HostProc, Proc) {
    let sb = Sandbox::new(name);
    sb.keygen("host");
    sb.keygen("pm1");
    sb.trust_add("pm1", "PM-1");
    let args = |addr: Option<SocketAddr>| HostArgs {
        tcp: !udp,
        udp,
        tcp_addr: addr.filter(|_| !udp),
        udp_addr: addr.filter(|_| udp),
        ..HostArgs::default()
    };
    let mut host = HostProc::start(&sb, args(None));
    let addr = if udp { host.udp } else { host.tcp }.unwrap();
    let mut device = start_device(&sb, &DeviceArgs { udp, ..DeviceArgs::new("pm1", "PM-1", addr) });
    assert!(
        wait_until(Duration::from_secs(30), || host.telemetry().len() >= 10).is_some(),
        "{}",
        device.stderr()
    );
    host.proc.signal("KILL");
    assert!(host.proc.wait_exit(Duration::from_secs(10)).is_some());
    let before = host.telemetry().len();
    // The device notices (or not yet) and keeps retrying while no host listens.
    std::thread::sleep(Duration::from_millis(500));
    let host = HostProc::start(&sb, args(Some(addr)));
    let back = wait_until(back_within, || host.telemetry().len() >= before + 10);
    assert!(
        back.is_some(),
        "the device did not come back (exited: {:?}): {}",
        device.wait_exit(Duration::ZERO),
        device.stderr()
    );
    let established = host.events_named("session_established");
    assert!(established.iter().any(|e| e["device_id"] == "PM-1"), "{established:?}");
    (sb, host, device)
}

#[test]
fn a_host_killed_with_sigkill_and_restarted_gets_its_tcp_device_back() {
    let (_sb, _host, device) = kill_and_restart("kill9", false, Duration::from_secs(40));
    assert!(device.stderr().contains("disconnected"), "{}", device.stderr());
}

#[test]
fn a_host_killed_with_sigkill_and_restarted_gets_its_udp_device_back() {
    // A UDP device learns of the lost session only from its dead-peer timer (60 s by default:
    // the restarted host drops packets for an index it does not know, and datagram mode has no
    // connection to break), then handshakes again.
    kill_and_restart("kill9-udp", true, Duration::from_secs(120));
}
