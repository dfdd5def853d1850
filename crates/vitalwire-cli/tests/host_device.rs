//! `vitalwire host` and `vitalwire device` as separate processes, over TCP and UDP.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vitalwire"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn setup(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vitalwire-hd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for k in ["host", "pm1", "rogue"] {
        assert!(bin()
            .args(["keygen", "--out", s(&dir.join(format!("{k}.key")))])
            .output()
            .unwrap()
            .status
            .success());
    }
    let store = dir.join("trust.vw");
    let add = bin()
        .args(["trust", "--store", s(&store), "add", s(&dir.join("pm1.key.pub")), "--device-id", "PM-1"])
        .output()
        .unwrap();
    assert!(add.status.success());
    dir
}

/// Starts a host, returns it and the address it printed.
fn start_host(dir: &Path, transport: &str) -> (std::process::Child, String) {
    let mut host = bin()
        .args([
            "host",
            "--key",
            s(&dir.join("host.key")),
            "--trust",
            s(&dir.join("trust.vw")),
            transport,
            "127.0.0.1:0",
            "--events",
            s(&dir.join("events.jsonl")),
            "--seconds",
            "6",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(host.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    std::thread::spawn(move || for _ in err.lines() {});
    (host, addr)
}

fn run_device(dir: &Path, key: &str, id: &str, addr: &str, udp: bool) -> std::process::Output {
    let mut args = vec![
        "device".to_string(),
        "--key".into(),
        s(&dir.join(key)).into(),
        "--host-key".into(),
        s(&dir.join("host.key.pub")).into(),
        "--connect".into(),
        addr.into(),
        "--id".into(),
        id.into(),
        "--rate".into(),
        "20".into(),
        "--seconds".into(),
        "2".into(),
    ];
    if udp {
        args.push("--udp".into());
    }
    bin().args(&args).output().unwrap()
}

#[test]
fn tcp_host_receives_json_lines_and_logs_the_rogue() {
    let dir = setup("tcp");
    let (host, addr) = start_host(&dir, "--tcp");
    let dev = run_device(&dir, "pm1.key", "PM-1", &addr, false);
    assert!(dev.status.success(), "{}", String::from_utf8_lossy(&dev.stderr));
    let rogue = run_device(&dir, "rogue.key", "ROGUE", &addr, false);
    assert!(!rogue.status.success(), "the unregistered device must fail");
    let out = host.wait_with_output().unwrap();
    assert!(out.status.success());
    let telemetry = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = telemetry.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() > 20, "{telemetry}");
    assert!(lines.iter().all(|v| v["device_id"] == "PM-1"));
    assert!(lines.iter().any(|v| v["channel"] == 1 && v["text"].as_str().unwrap().starts_with("HR=")));
    assert!(lines.iter().any(|v| v["channel"] == 2 && v["hex"].is_string()));
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert!(events.contains(r#""event":"unknown_peer""#), "{events}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn udp_host_receives_from_a_udp_device() {
    let dir = setup("udp");
    let (host, addr) = start_host(&dir, "--udp");
    let dev = run_device(&dir, "pm1.key", "PM-1", &addr, true);
    assert!(dev.status.success(), "{}", String::from_utf8_lossy(&dev.stderr));
    let out = host.wait_with_output().unwrap();
    let telemetry = String::from_utf8_lossy(&out.stdout);
    assert!(telemetry.lines().count() > 20, "{telemetry}");
    assert!(telemetry.contains(r#""device_id":"PM-1""#));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn host_and_device_refuse_bad_setups_clearly() {
    let dir = setup("bad");
    let out =
        bin().args(["host", "--key", s(&dir.join("nope.key")), "--tcp", "127.0.0.1:0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.key"));
    let out = bin()
        .args(["host", "--key", s(&dir.join("host.key")), "--trust", s(&dir.join("trust.vw"))])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tcp and/or --udp"));
    let out = bin()
        .args([
            "device",
            "--key",
            s(&dir.join("pm1.key")),
            "--host-key",
            s(&dir.join("host.key.pub")),
            "--connect",
            "127.0.0.1:9",
            "--id",
            "x",
            "--rate",
            "0",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate"));
    let _ = std::fs::remove_dir_all(&dir);
}
