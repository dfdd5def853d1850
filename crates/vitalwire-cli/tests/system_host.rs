//! System tests of `vitalwire host` as an operator runs it: TCP and UDP at once, sinks that
//! cannot write, signals (SIGTERM, SIGHUP), log rotation, trust changed at run time, and the
//! limits it refuses.

mod support;

use std::net::UdpSocket;
use std::time::Duration;

use support::*;

const LONG: Duration = Duration::from_secs(30);

/// A sandbox with a host key and trusted devices `pm1` (PM-1) and `pm2` (PM-2).
fn sandbox(name: &str) -> Sandbox {
    let sb = Sandbox::new(name);
    sb.keygen("host");
    for (k, id) in [("pm1", "PM-1"), ("pm2", "PM-2")] {
        sb.keygen(k);
        sb.trust_add(k, id);
    }
    sb
}

fn lines_of(v: &[serde_json::Value], device: &str) -> usize {
    v.iter().filter(|t| t["device_id"] == device).count()
}

/// The numbers after `key` in the last status line (`... | waiting 123 | ...`).
fn status_field(stderr: &str, key: &str) -> Option<u64> {
    let line = stderr.lines().rev().find(|l| l.starts_with('[') && l.contains(" | written "))?;
    let rest = &line[line.find(&format!(" {key} "))? + key.len() + 2..];
    rest.split_whitespace().next()?.parse().ok()
}

/// `stopped; F frames received, W telemetry lines written` from the host's last lines.
fn stop_counts(stderr: &str) -> (u64, u64) {
    let line = stderr.lines().find(|l| l.contains("stopped; ")).unwrap_or_else(|| panic!("{stderr}"));
    let nums: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (nums[0], nums[1])
}

#[test]
fn a_stray_udp_datagram_does_not_lock_tcp_devices_out() {
    let sb = sandbox("stray-udp");
    let host = HostProc::start(&sb, HostArgs { udp: true, ..HostArgs::default() });
    let tcp = host.tcp.unwrap();
    // A first device has a session when the stray datagram arrives, then leaves.
    let mut first =
        start_device(&sb, &DeviceArgs { seconds: Some(3), ..DeviceArgs::new("pm1", "PM-1", tcp) });
    assert!(
        wait_until(LONG, || lines_of(&host.telemetry(), "PM-1") >= 5).is_some(),
        "{}",
        host.proc.stderr()
    );
    let stray = UdpSocket::bind("127.0.0.1:0").unwrap();
    stray.send_to(&[0x99; 48], host.udp.unwrap()).unwrap();
    stray.send_to(&[], host.udp.unwrap()).unwrap();
    assert!(first.wait_exit(LONG).is_some(), "the first device did not stop");
    // A new device must be admitted (the UDP loop used to store its count, 0, into the TCP
    // session gauge; the first device's departure then wrapped it to usize::MAX).
    let second = start_device(&sb, &DeviceArgs::new("pm2", "PM-2", tcp));
    let admitted = wait_until(LONG, || lines_of(&host.telemetry(), "PM-2") >= 5);
    let refused: Vec<_> =
        host.events_named("limit_exceeded").into_iter().filter(|e| e["limit"] == "sessions").collect();
    assert!(
        admitted.is_some() && refused.is_empty(),
        "refused: {refused:?}\nhost: {}\ndevice: {}",
        host.proc.stderr(),
        second.stderr()
    );
}

#[test]
fn a_sink_that_cannot_write_holds_devices_back_and_loses_nothing() {
    let sb = sandbox("full-sink");
    // The telemetry file is /dev/full (every write fails) until the operator fixes it.
    std::os::unix::fs::symlink("/dev/full", sb.path("telemetry.jsonl")).unwrap();
    let mut host = HostProc::start(&sb, HostArgs { extra: &["--status"], ..HostArgs::default() });
    let mut device =
        start_device(&sb, &DeviceArgs { rate: 1000.0, ..DeviceArgs::new("pm1", "PM-1", host.tcp.unwrap()) });
    let failed = wait_until(LONG, || {
        host.events_named("sink_failed")
            .iter()
            .any(|e| e["sink"] == "telemetry" && e["severity"] == "warning")
    });
    assert!(failed.is_some(), "no sink_failed event: {}", host.proc.stderr());
    assert!(host.proc.stderr().contains("the telemetry sink"), "{}", host.proc.stderr());
    // Held back: the host's buffer (4096) fills, then it stops reading; the count of frames
    // received and not written stops growing while the device keeps sending.
    let full = wait_until(LONG, || status_field(&host.proc.stderr(), "waiting").is_some_and(|w| w >= 4096));
    assert!(full.is_some(), "{}", host.proc.stderr());
    assert!(host.proc.stderr().contains("telemetry sink FAILING"), "{}", host.proc.stderr());
    // (The last few deliveries in flight land within a status tick.)
    std::thread::sleep(Duration::from_millis(1_500));
    let held = status_field(&host.proc.stderr(), "waiting").unwrap();
    std::thread::sleep(Duration::from_millis(2_500));
    let later = status_field(&host.proc.stderr(), "waiting").unwrap();
    assert_eq!(held, later, "the host kept reading from a device it cannot write for");
    assert_eq!(status_field(&host.proc.stderr(), "written"), Some(0));
    // The device is held, not dropped: still running, its session never lost.
    assert!(device.child.try_wait().unwrap().is_none(), "{}", device.stderr());
    assert!(!device.stderr().contains("disconnected"), "{}", device.stderr());

    // The operator fixes the file and sends SIGHUP: everything held is written, in order.
    std::fs::remove_file(sb.path("telemetry.jsonl")).unwrap();
    std::fs::write(sb.path("telemetry.jsonl"), "").unwrap();
    host.proc.signal("HUP");
    let recovered = wait_until(LONG, || !host.events_named("sink_recovered").is_empty());
    assert!(recovered.is_some(), "{}", host.proc.stderr());
    assert!(wait_until(LONG, || host.telemetry().len() as u64 > held).is_some(), "{}", host.proc.stderr());
    host.proc.signal("TERM");
    let status = host.proc.wait_exit(LONG).expect("host exits after SIGTERM");
    let err = host.proc.stderr();
    assert!(status.success(), "{status:?} {err}");
    let (received, written) = stop_counts(&err);
    assert_eq!(received, written, "{err}");
    // Every line the host took is in the file, once, and whole.
    let text = std::fs::read_to_string(sb.path("telemetry.jsonl")).unwrap();
    assert_eq!(text.lines().count() as u64, written, "{err}");
    assert!(text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
}

#[test]
fn stdout_to_a_pipe_whose_reader_quit_holds_devices_back_and_says_what_was_not_written() {
    let sb = sandbox("pipe-sink");
    let mut cmd = bin();
    cmd.args(["host", "--key", s(&sb.path("host.key")), "--trust", s(&sb.store()), "--tcp", "127.0.0.1:0"]);
    cmd.args(["--telemetry", "-", "--events", s(&sb.path("events.jsonl")), "--status"]);
    let mut host = Proc::spawn(cmd);
    assert!(host.wait_stderr("vitalwire host: TCP ", LONG), "{}", host.stderr());
    let addr =
        host.stderr().lines().find_map(|l| l.strip_prefix("vitalwire host: TCP ")?.trim().parse().ok());
    let _device =
        start_device(&sb, &DeviceArgs { rate: 500.0, ..DeviceArgs::new("pm1", "PM-1", addr.unwrap()) });
    // Read a few lines, then the reader quits.
    let mut stdout = std::io::BufReader::new(host.child.stdout.take().unwrap());
    let mut line = String::new();
    for _ in 0..5 {
        line.clear();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(line.contains("PM-1"), "{line}");
    }
    drop(stdout);
    let events = sb.path("events.jsonl");
    let failed = wait_until(LONG, || {
        read_jsonl(&events).iter().any(|e| e["event"] == "sink_failed" && e["target"] == "stdout")
    });
    assert!(failed.is_some(), "{}", host.stderr());
    let full = wait_until(LONG, || status_field(&host.stderr(), "waiting").is_some_and(|w| w >= 4096));
    assert!(full.is_some(), "{}", host.stderr());
    std::thread::sleep(Duration::from_millis(1_500));
    let held = status_field(&host.stderr(), "waiting").unwrap();
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(status_field(&host.stderr(), "waiting"), Some(held), "{}", host.stderr());
    host.signal("TERM");
    let status = host.wait_exit(LONG).expect("host exits after SIGTERM");
    let err = host.stderr();
    // Lines were lost (nobody reads them): the exit status and stderr say so, with the count.
    assert!(!status.success(), "{err}");
    let (received, written) = stop_counts(&err);
    let lost_line = err.lines().find(|l| l.contains("telemetry lines could not be written to stdout"));
    let lost: u64 = lost_line
        .and_then(|l| l.split_whitespace().find_map(|w| w.parse().ok()))
        .unwrap_or_else(|| panic!("{err}"));
    assert_eq!(written + lost, received, "{err}");
    assert!(written >= 5);
}

#[test]
fn sigterm_closes_every_session_with_going_away_and_exits_0() {
    let sb = sandbox("sigterm");
    let mut host = HostProc::start(&sb, HostArgs { udp: true, ..HostArgs::default() });
    let tcp = start_device(&sb, &DeviceArgs::new("pm1", "PM-1", host.tcp.unwrap()));
    let udp =
        start_device(&sb, &DeviceArgs { udp: true, ..DeviceArgs::new("pm2", "PM-2", host.udp.unwrap()) });
    let both = wait_until(LONG, || {
        let t = host.telemetry();
        lines_of(&t, "PM-1") >= 5 && lines_of(&t, "PM-2") >= 5
    });
    assert!(both.is_some(), "{}", host.proc.stderr());
    host.proc.signal("TERM");
    let status = host.proc.wait_exit(LONG).expect("host exits after SIGTERM");
    let err = host.proc.stderr();
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.contains("SIGTERM: shutting down"), "{err}");
    let closed: Vec<_> = host
        .events_named("session_closed")
        .into_iter()
        .filter(|e| e["code"].as_str().is_some_and(|c| c.starts_with("going away")) && e["by_peer"] == false)
        .collect();
    assert!(closed.len() >= 2, "one CLOSE GOING_AWAY per session (TCP and UDP): {closed:?}");
    // The TCP device saw the CLOSE (not a truncated stream).
    assert!(
        wait_until(Duration::from_secs(10), || tcp.stderr().contains("closed by host: going away")).is_some(),
        "tcp device: {}",
        tcp.stderr()
    );
    assert!(!tcp.stderr().contains("truncated"), "{}", tcp.stderr());
    // Everything received was written.
    let (received, written) = stop_counts(&err);
    assert_eq!(received, written, "{err}");
    assert_eq!(host.telemetry().len() as u64, written);
    // The UDP device saw the CLOSE too: its session ends at once (not at its dead-peer timer);
    // a host going away is no refusal, so the device goes on trying to reconnect.
    assert!(
        udp.wait_stderr("closed by host: going away", Duration::from_secs(10)),
        "udp device: {}",
        udp.stderr()
    );
}

#[test]
fn sighup_reopens_the_logs_and_reloads_the_trust_store() {
    let sb = sandbox("sighup");
    let host = HostProc::start(&sb, HostArgs::default());
    let tcp = host.tcp.unwrap();
    let pm1 = start_device(&sb, &DeviceArgs::new("pm1", "PM-1", tcp));
    assert!(
        wait_until(LONG, || lines_of(&host.telemetry(), "PM-1") >= 5).is_some(),
        "{}",
        host.proc.stderr()
    );
    // Log rotation: move both files away, SIGHUP, new files appear at the same paths.
    std::fs::rename(&host.events, sb.path("events.jsonl.1")).unwrap();
    std::fs::rename(&host.telemetry, sb.path("telemetry.jsonl.1")).unwrap();
    // The store changes while the host runs: PM-1 revoked.
    let out = sb.trust(&["revoke", s(&sb.path("pm1.key.pub"))]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    host.proc.signal("HUP");
    assert!(host.proc.wait_stderr("trust store changed", LONG), "{}", host.proc.stderr());
    // PM-1's open session is closed; the events about it go to the new file.
    let revoked = wait_until(LONG, || !host.events_named("revoked_peer").is_empty());
    assert!(revoked.is_some(), "host: {}", host.proc.stderr());
    assert!(
        wait_until(LONG, || pm1.stderr().contains("closed by host: unauthorized")).is_some(),
        "{}",
        pm1.stderr()
    );
    // A device still trusted streams into the new telemetry file.
    let _pm2 = start_device(&sb, &DeviceArgs::new("pm2", "PM-2", tcp));
    assert!(
        wait_until(LONG, || lines_of(&host.telemetry(), "PM-2") >= 5).is_some(),
        "{}",
        host.proc.stderr()
    );
    assert!(lines_of(&read_jsonl(&sb.path("telemetry.jsonl.1")), "PM-1") >= 5);
    assert_eq!(lines_of(&read_jsonl(&sb.path("telemetry.jsonl.1")), "PM-2"), 0);
    // A second HUP with nothing changed keeps the store.
    host.proc.signal("HUP");
    assert!(host.proc.wait_stderr("trust store unchanged", LONG), "{}", host.proc.stderr());
    // A damaged store is refused on HUP: the current one stays, PM-2 keeps streaming.
    std::fs::write(sb.store(), "not a trust store\n").unwrap();
    host.proc.signal("HUP");
    assert!(host.proc.wait_stderr("trust store not reloaded", LONG), "{}", host.proc.stderr());
    let before = lines_of(&host.telemetry(), "PM-2");
    assert!(wait_until(LONG, || lines_of(&host.telemetry(), "PM-2") > before + 5).is_some());
    assert!(host.events_named("session_closed").iter().all(|e| e["device_id"] != "PM-2"));
}

#[test]
fn limits_that_admit_nobody_are_refused() {
    let sb = sandbox("limits");
    for args in [
        &["--handshake-burst", "0"][..],
        &["--max-half-open", "0"],
        &["--handshake-rate", "0"],
        &["--handshake-rate=-1"],
        &["--handshake-rate", "NaN"],
        &["--handshake-rate", "inf"],
    ] {
        let mut cmd = bin();
        cmd.args([
            "host",
            "--key",
            s(&sb.path("host.key")),
            "--trust",
            s(&sb.store()),
            "--tcp",
            "127.0.0.1:0",
        ]);
        cmd.args(args);
        let mut host = Proc::spawn(cmd);
        // Refused at once; a host that starts instead is killed (when `host` drops).
        let status = host.wait_exit(Duration::from_secs(20));
        let flag = args[0].split('=').next().unwrap();
        // (stderr is collected in the background: let it catch up.)
        host.wait_stderr(flag, Duration::from_secs(5));
        let err = host.stderr();
        assert!(status.is_some_and(|s| !s.success()), "{args:?} was accepted: {err}");
        assert!(err.contains(flag) && !err.contains("vitalwire host: TCP"), "{args:?}: {err}");
    }
}

#[test]
fn an_events_sink_that_cannot_write_holds_its_events_until_it_can() {
    let sb = sandbox("full-events");
    std::os::unix::fs::symlink("/dev/full", sb.path("events.jsonl")).unwrap();
    let mut host = HostProc::start(&sb, HostArgs::default());
    let _device = start_device(&sb, &DeviceArgs::new("pm1", "PM-1", host.tcp.unwrap()));
    // The session_established event cannot be written: stderr says so (the events sink is the
    // one failing), telemetry goes on.
    assert!(host.proc.wait_stderr("the events sink", LONG), "{}", host.proc.stderr());
    assert!(
        wait_until(LONG, || lines_of(&host.telemetry(), "PM-1") >= 5).is_some(),
        "{}",
        host.proc.stderr()
    );
    // Fixed and SIGHUP: the held event is written, then the failure and the recovery.
    std::fs::remove_file(sb.path("events.jsonl")).unwrap();
    host.proc.signal("HUP");
    let recovered = wait_until(LONG, || !host.events_named("sink_recovered").is_empty());
    assert!(recovered.is_some(), "{}", host.proc.stderr());
    let events = host.events();
    let names: Vec<_> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    let established = names.iter().position(|n| *n == "session_established");
    let failed = names.iter().position(|n| *n == "sink_failed");
    let back = names.iter().position(|n| *n == "sink_recovered");
    assert!(established.is_some() && failed.is_some() && back > failed, "{names:?}");
    assert_eq!(events[failed.unwrap()]["sink"], "events");
    host.proc.signal("TERM");
    let status = host.proc.wait_exit(LONG).expect("host exits after SIGTERM");
    assert!(status.success(), "{status:?}: {}", host.proc.stderr());
    assert!(host.events_named("session_closed").iter().any(|e| e["device_id"] == "PM-1"));
}

#[test]
fn stdout_to_a_pipe_nobody_reads_is_reported_and_sigterm_still_ends_the_host() {
    let sb = sandbox("stuck-pipe");
    let mut cmd = bin();
    cmd.args(["host", "--key", s(&sb.path("host.key")), "--trust", s(&sb.store()), "--tcp", "127.0.0.1:0"]);
    cmd.args(["--telemetry", "-", "--events", s(&sb.path("events.jsonl")), "--status"]);
    // stdout is piped and never read: the pipe fills and the host's writes block.
    let mut host = Proc::spawn(cmd);
    assert!(host.wait_stderr("vitalwire host: TCP ", LONG), "{}", host.stderr());
    let addr =
        host.stderr().lines().find_map(|l| l.strip_prefix("vitalwire host: TCP ")?.trim().parse().ok());
    let _device =
        start_device(&sb, &DeviceArgs { rate: 500.0, ..DeviceArgs::new("pm1", "PM-1", addr.unwrap()) });
    let events = sb.path("events.jsonl");
    let failed = wait_until(LONG, || {
        read_jsonl(&events).iter().any(|e| e["event"] == "sink_failed" && e["target"] == "stdout")
    });
    assert!(failed.is_some(), "a blocked sink was not reported: {}", host.stderr());
    // The host is not frozen: its status line still ticks, and says the sink fails.
    assert!(host.wait_stderr("telemetry sink FAILING", LONG), "{}", host.stderr());
    host.signal("TERM");
    let status = host.wait_exit(LONG).expect("SIGTERM ends a host whose stdout nobody reads");
    let err = host.stderr();
    assert!(!status.success(), "{err}");
    assert!(err.contains("telemetry lines could not be written to stdout"), "{err}");
    let closed = read_jsonl(&events);
    assert!(closed.iter().any(|e| e["event"] == "session_closed" && e["device_id"] == "PM-1"), "{closed:?}");
}
