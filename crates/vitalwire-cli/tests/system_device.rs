//! System tests of `vitalwire device` as an operator runs it: real processes, real sockets.
//!
//! - a configuration that can never work (bad `--id`, `--rate`, keys, ports) exits at once
//!   with a clear message, without touching the network;
//! - `--seconds` ends the process on time whether the host is unreachable or a black hole;
//! - a forged REJECT on the path does not stop the device: it retries and streams to the real
//!   host once the path is clean;
//! - pairing from the command line, both operators typing on stdin: the device ends up in the
//!   host's trust store and its normal session streams telemetry; a refusal stores nothing.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

/// A port on loopback with nothing listening (connections are refused).
fn closed_port() -> SocketAddr {
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    addr
}

/// A loopback listener that accepts and never answers: a black-hole host. Connections are held
/// for the life of the returned listener's thread (the test process).
fn black_hole() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    addr
}

/// A "host" on the path that answers the first `rejects` connections' HELLO with a forged
/// 5-byte REJECT frame (unknown credential) and forwards every later connection to `real`.
/// Returns its address and the number of REJECTs sent so far.
fn rejecting_proxy(real: SocketAddr, rejects: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let count = sent.clone();
    std::thread::spawn(move || {
        for inbound in listener.incoming().flatten() {
            if count.load(Ordering::SeqCst) < rejects {
                let mut inbound = inbound;
                let _ = inbound.set_read_timeout(Some(Duration::from_secs(5)));
                let mut len = [0u8; 2];
                if inbound.read_exact(&mut len).is_ok() {
                    let mut hello = vec![0u8; u16::from_be_bytes(len) as usize];
                    let _ = inbound.read_exact(&mut hello);
                    // length 3, REJECT, version 1, reason 4 (unknown credential)
                    let _ = inbound.write_all(&[0x00, 0x03, 0x03, 0x01, 0x04]);
                    count.fetch_add(1, Ordering::SeqCst);
                }
                continue;
            }
            let Ok(outbound) = TcpStream::connect(real) else { continue };
            let (mut a, mut b) = (inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
            let (mut c, mut d) = (outbound, inbound);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut a, &mut b);
                let _ = b.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c, &mut d);
                let _ = d.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, sent)
}

/// The UDP counterpart of [`rejecting_proxy`]: answers the first `rejects` HELLO packets with a
/// forged REJECT RESPONSE (§13.1: `0x22 | 0 | receiver_index | 03 01 04`) and relays every other
/// packet between the device (its latest address) and `real`.
fn rejecting_udp_proxy(real: SocketAddr, rejects: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = front.local_addr().unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    back.connect(real).unwrap();
    let device: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
    let sent = Arc::new(AtomicUsize::new(0));
    let (count, dev, f, b) =
        (sent.clone(), device.clone(), front.try_clone().unwrap(), back.try_clone().unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 65_536];
        while let Ok((n, from)) = f.recv_from(&mut buf) {
            let p = &buf[..n];
            if p.first() == Some(&0x21) && n >= 5 && count.load(Ordering::SeqCst) < rejects {
                let mut reject = vec![0x22, 0, 0, 0, 0];
                reject.extend_from_slice(&p[1..5]);
                reject.extend_from_slice(&[0x03, 0x01, 0x04]);
                let _ = f.send_to(&reject, from);
                count.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            *dev.lock().unwrap() = Some(from);
            let _ = b.send(p);
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 65_536];
        while let Ok(n) = back.recv(&mut buf) {
            if let Some(to) = *device.lock().unwrap() {
                let _ = front.send_to(&buf[..n], to);
            }
        }
    });
    (addr, sent)
}

/// Runs `cmd`, which must exit by itself within `limit` and fail with `expect` on stderr;
/// returns the stderr and how long it took.
fn fails_at_once(cmd: std::process::Command, expect: &str, limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut p = Proc::spawn(cmd);
    let status = p.wait_exit(limit);
    let took = start.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running after {limit:?}: {}", p.stderr()));
    // The reader thread may still be collecting the last line.
    wait_until(Duration::from_secs(2), || p.stderr().contains(expect));
    let err = p.stderr();
    assert!(!status.success(), "{expect}: succeeded: {err}");
    assert_ne!(status.code(), Some(101), "{expect}: panicked: {err}");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    (err, took)
}

/// `vitalwire device` with exactly these arguments.
fn device_with(args: &[&str]) -> std::process::Command {
    let mut cmd = bin();
    cmd.arg("device").args(args);
    cmd
}

#[test]
fn an_invalid_id_exits_at_once_with_a_clear_message() {
    let sb = Sandbox::new("dev-id");
    sb.keygen("host");
    sb.keygen("pm");
    store_without_it(&sb);
    // A live host, so the old behaviour (connect, fail, retry forever) would show.
    let host = HostProc::start(&sb, HostArgs::default());
    let long = "P".repeat(65);
    for (id, expect) in [
        ("", "--id must be 1 to 64 bytes of UTF-8 (got 0 bytes)"),
        (long.as_str(), "--id must be 1 to 64 bytes of UTF-8 (got 65 bytes)"),
        ("PM\u{7}1", "--id contains a control character"),
        ("PM\n1", "--id contains a control character"),
    ] {
        let cmd = device_cmd(&sb, &DeviceArgs::new("pm", id, host.tcp.unwrap()));
        let (err, took) = fails_at_once(cmd, expect, Duration::from_secs(10));
        assert!(
            !err.contains("session up") && !err.contains("retrying"),
            "id {id:?} went to the network: {err}"
        );
        eprintln!("id {id:?}: exited in {took:?}: {}", err.trim());
    }
    assert!(host.events().is_empty(), "{:?}", host.events());
}

#[test]
fn other_impossible_settings_exit_at_once_with_a_clear_message() {
    let sb = Sandbox::new("dev-args");
    sb.keygen("host");
    sb.keygen("pm");
    store_without_it(&sb);
    let host = HostProc::start(&sb, HostArgs::default());
    let addr = host.tcp.unwrap().to_string();
    let (key, public, host_priv, host_pub) =
        (sb.path("pm.key"), sb.path("pm.key.pub"), sb.path("host.key"), sb.path("host.key.pub"));
    let base = |key: &str, host_key: &str, connect: &str| -> Vec<String> {
        ["--key", key, "--host-key", host_key, "--connect", connect, "--id", "PM-1"]
            .map(String::from)
            .to_vec()
    };
    let ok = base(s(&key), s(&host_pub), &addr);
    let cases: Vec<(Vec<String>, &str)> = vec![
        ([&ok[..], &["--rate".into(), "1e-300".into()]].concat(), "--rate must be between 0.01 and 1000"),
        ([&ok[..], &["--rate".into(), "0".into()]].concat(), "--rate must be between"),
        ([&ok[..], &["--rate".into(), "NaN".into()]].concat(), "--rate must be between"),
        ([&ok[..], &["--rate".into(), "5000".into()]].concat(), "--rate must be between"),
        ([&ok[..], &["--udp".into(), "--pair".into()]].concat(), "--pair runs over TCP only"),
        ([&ok[..], &["--max-attempts".into(), "0".into()]].concat(), "--max-attempts"),
        (base(s(&host_priv), s(&host_pub), &addr), "--key and --host-key are the same key"),
        (base(s(&public), s(&host_pub), &addr), "--key:"),
        (base(s(&key), s(&host_priv), &addr), "--host-key is a private key file"),
        (base(s(&key), s(&sb.path("missing.pub")), &addr), "--host-key:"),
        (base(s(&key), s(&host_pub), "127.0.0.1:0"), "port 0"),
    ];
    for (args, expect) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (err, _) = fails_at_once(device_with(&args), expect, Duration::from_secs(10));
        assert!(!err.contains("session up") && !err.contains("retrying"), "{args:?}: {err}");
    }
    assert!(host.events().is_empty(), "{:?}", host.events());
}

#[test]
fn seconds_bounds_the_life_of_a_device_whose_host_is_unreachable_or_a_black_hole() {
    let sb = Sandbox::new("dev-seconds");
    sb.keygen("host");
    sb.keygen("pm");
    for (what, addr) in [("black hole", black_hole()), ("unreachable", closed_port())] {
        for udp in [false, true] {
            if udp && what == "black hole" {
                continue; // a UDP "black hole" is the same as an unreachable UDP host
            }
            let a = DeviceArgs { seconds: Some(2), udp, ..DeviceArgs::new("pm", "PM-1", addr) };
            let start = Instant::now();
            let mut p = start_device(&sb, &a);
            let status = p.wait_exit(Duration::from_secs(15));
            let took = start.elapsed();
            let status = status
                .unwrap_or_else(|| panic!("{what} (udp {udp}): still running after 15 s: {}", p.stderr()));
            eprintln!("{what} (udp {udp}): --seconds 2 exited after {took:?} with {status}");
            // No session came up: a failure, and the device says what it last saw.
            assert!(!status.success(), "{what} (udp {udp}): {status}: {}", p.stderr());
            assert!(
                p.wait_stderr("no session before --seconds passed", Duration::from_secs(2)),
                "{what} (udp {udp}): {}",
                p.stderr()
            );
            assert!(took >= Duration::from_millis(1900), "{what} (udp {udp}): stopped early, {took:?}");
            // The promise: 2 s; slack for process start-up on a loaded machine.
            assert!(took <= Duration::from_millis(4500), "{what} (udp {udp}): {took:?}: {}", p.stderr());
        }
    }
}

#[test]
fn an_injected_reject_does_not_stop_the_device() {
    let sb = Sandbox::new("dev-reject");
    sb.keygen("host");
    sb.keygen("pm");
    sb.trust_add("pm", "PM-7");
    let host = HostProc::start(&sb, HostArgs::default());
    let (proxy, rejects) = rejecting_proxy(host.tcp.unwrap(), 2);
    let dev = start_device(&sb, &DeviceArgs::new("pm", "PM-7", proxy));
    let streamed = wait_until(Duration::from_secs(30), || {
        host.telemetry().iter().filter(|t| t["device_id"] == "PM-7").count() >= 10
    });
    assert!(streamed.is_some(), "host: {}\ndevice: {}", host.proc.stderr(), dev.stderr());
    assert_eq!(rejects.load(Ordering::SeqCst), 2);
    let err = dev.stderr();
    assert_eq!(err.matches("refused by host (unknown credential").count(), 2, "{err}");
    assert!(err.contains("session up (attempt 3)"), "{err}");
    // Each refusal is also a security event line on the device.
    assert_eq!(err.matches("\"event\":\"handshake_failed\"").count(), 2, "{err}");
}

#[test]
fn an_injected_reject_does_not_stop_a_udp_device() {
    let sb = Sandbox::new("dev-reject-udp");
    sb.keygen("host");
    sb.keygen("pm");
    sb.trust_add("pm", "PM-8");
    let host = HostProc::start(&sb, HostArgs { tcp: false, udp: true, ..HostArgs::default() });
    let (proxy, rejects) = rejecting_udp_proxy(host.udp.unwrap(), 2);
    let dev = start_device(&sb, &DeviceArgs { udp: true, ..DeviceArgs::new("pm", "PM-8", proxy) });
    let streamed = wait_until(Duration::from_secs(30), || {
        host.telemetry().iter().filter(|t| t["device_id"] == "PM-8").count() >= 10
    });
    assert!(streamed.is_some(), "host: {}\ndevice: {}", host.proc.stderr(), dev.stderr());
    assert_eq!(rejects.load(Ordering::SeqCst), 2);
    let err = dev.stderr();
    assert!(err.contains("session up (UDP)"), "{err}");
    // Each REJECT either ended an attempt, reported and retried, or (a datagram client that
    // takes a REJECT as a hint, spec §13.3) was outlived by retransmitted HELLOs.
    assert!(!err.contains("vitalwire: "), "the device gave up: {err}");
}

#[test]
fn an_authenticated_refusal_stops_the_device_for_good() {
    // An XX device the host does not admit: the handshake completes (the device pins the host
    // key) and the host refuses with an encrypted CLOSE UNAUTHORIZED (spec §12.2). (Datagram
    // hosts do not send that CLOSE for XX yet, so UDP is covered by device.rs's unit test with
    // a revocation instead.)
    let sb = Sandbox::new("dev-refused");
    sb.keygen("host");
    sb.keygen("pm");
    store_without_it(&sb);
    let host = HostProc::start(&sb, HostArgs::default());
    let a = DeviceArgs { profile: "xx", ..DeviceArgs::new("pm", "PM-X", host.tcp.unwrap()) };
    let mut p = start_device(&sb, &a);
    let status = p.wait_exit(Duration::from_secs(30));
    let status = status.unwrap_or_else(|| panic!("still running: {}", p.stderr()));
    assert!(!status.success());
    assert!(
        p.wait_stderr(
            "closed by host: unauthorized (0x0005): an authenticated refusal, not retried",
            Duration::from_secs(2)
        ),
        "{}",
        p.stderr()
    );
    // (An attempt may end in a reset before the CLOSE is read, when the device's first frames
    // cross the host's close: then it retries, and the next attempt reads it.)
    eprintln!("{}", p.stderr());
}

/// A trust store (TOFU off) that admits another device, not `pm`.
fn store_without_it(sb: &Sandbox) {
    sb.keygen("other");
    sb.trust_add("other", "OTHER-1");
}

/// The six digits after `marker` in `text`.
fn code_after(text: &str, marker: &str) -> Option<String> {
    let at = text.find(marker)? + marker.len();
    let code: String = text[at..].chars().take(6).collect();
    (code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())).then_some(code)
}

#[test]
fn pairing_from_the_command_line_end_to_end() {
    let sb = Sandbox::new("dev-pair");
    sb.keygen("host");
    sb.keygen("pm");
    // An empty store: the device is unknown to the host.
    store_without_it(&sb);
    let mut host =
        HostProc::start_with_stdin(&sb, HostArgs { extra: &["--allow-pairing"], ..HostArgs::default() });
    // The device has never seen the host's key: it learns it in the pairing.
    let learned = sb.path("learned-host.pub");
    let (key, addr) = (sb.path("pm.key"), host.tcp.unwrap().to_string());
    let args =
        ["--key", s(&key), "--host-key", s(&learned), "--connect", &addr, "--id", "PM-P", "--rate", "20"];
    let mut dev = Proc::spawn_with_stdin(device_with(&[&args[..], &["--pair"]].concat()));
    assert!(dev.wait_stderr("PAIRING CODE ", Duration::from_secs(30)), "device: {}", dev.stderr());
    assert!(
        host.proc.wait_stderr("PAIRING REQUEST", Duration::from_secs(30)),
        "host: {}",
        host.proc.stderr()
    );
    let device_code = code_after(&dev.stderr(), "PAIRING CODE ").expect("device code");
    let host_err = host.proc.stderr();
    let host_code = code_after(&host_err, ": code ").expect("host code");
    assert_eq!(device_code, host_code, "host: {host_err}\ndevice: {}", dev.stderr());
    assert!(host_err.contains("\"PM-P\""), "{host_err}");
    let fingerprint =
        String::from_utf8(bin().args(["fingerprint", s(&sb.path("pm.key.pub"))]).output().unwrap().stdout)
            .unwrap();
    assert!(host_err.contains(fingerprint.trim()), "{host_err} lacks {fingerprint}");
    // Nothing is admitted before the operators confirm.
    assert!(!String::from_utf8_lossy(&sb.trust(&["list"]).stdout).contains("PM-P"));
    // Both operators compare and confirm.
    dev.type_line("yes");
    host.proc.type_line(&format!("yes {host_code}"));
    let streamed = wait_until(Duration::from_secs(30), || {
        host.telemetry().iter().filter(|t| t["device_id"] == "PM-P").count() >= 5
    });
    assert!(streamed.is_some(), "host: {}\ndevice: {}", host.proc.stderr(), dev.stderr());
    let list = String::from_utf8_lossy(&sb.trust(&["list"]).stdout).to_string();
    assert!(list.contains("PM-P"), "{list}");
    assert!(host.proc.stderr().contains("added to the trust store"), "{}", host.proc.stderr());
    let paired = host.events_named("session_established");
    assert!(paired.iter().any(|e| e["device_id"] == "PM-P" && e["pairing"] == true), "{paired:?}");
    assert!(paired.iter().any(|e| e["device_id"] == "PM-P" && e["pairing"] == false), "{paired:?}");
    // The device wrote the host key it confirmed: the host's.
    let learned_fp = bin().args(["fingerprint", s(&learned)]).output().unwrap().stdout;
    let host_fp = bin().args(["fingerprint", s(&sb.path("host.key.pub"))]).output().unwrap().stdout;
    assert_eq!(learned_fp, host_fp);
    // A later run without --pair (IK, the learned key) streams too.
    drop(dev);
    let before = host.telemetry().len();
    let again = Proc::spawn(device_with(&args));
    let more = wait_until(Duration::from_secs(30), || host.telemetry().len() >= before + 10);
    assert!(more.is_some(), "device: {}", again.stderr());
}

#[test]
fn a_pairing_the_host_operator_refuses_stores_nothing_and_the_device_says_so() {
    let sb = Sandbox::new("dev-pair-no");
    sb.keygen("host");
    sb.keygen("pm");
    store_without_it(&sb);
    let mut host =
        HostProc::start_with_stdin(&sb, HostArgs { extra: &["--allow-pairing"], ..HostArgs::default() });
    let a = DeviceArgs { extra: &["--pair"], ..DeviceArgs::new("pm", "PM-Q", host.tcp.unwrap()) };
    let mut dev = Proc::spawn_with_stdin(device_cmd(&sb, &a));
    assert!(
        host.proc.wait_stderr("PAIRING REQUEST", Duration::from_secs(30)),
        "host: {}",
        host.proc.stderr()
    );
    let code = code_after(&host.proc.stderr(), ": code ").expect("host code");
    // The device operator says yes, the host operator no (say the host showed another code).
    dev.type_line("yes");
    host.proc.type_line(&format!("no {code}"));
    let status = dev
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("device still running: {}", dev.stderr()));
    assert!(!status.success());
    assert!(dev.wait_stderr("pairing refused by the host", Duration::from_secs(5)), "{}", dev.stderr());
    assert!(!String::from_utf8_lossy(&sb.trust(&["list"]).stdout).contains("PM-Q"));
    assert!(host.telemetry().is_empty());
}
