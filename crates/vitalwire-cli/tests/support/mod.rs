//! The system-test harness: real `vitalwire` processes in a scratch folder, driven the way an
//! operator drives them. Every process started here is killed (by PID) when its handle drops,
//! so a failing assertion never leaves a host running.
//!
//! Use it from a test file with `mod support;`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `vitalwire` binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vitalwire"))
}

/// A path as a `&str` (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Polls `cond` every 20 ms until it holds or `limit` passes; returns whether it held and how
/// long it took.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A scratch folder with keys and a trust store, removed on drop.
pub struct Sandbox {
    pub dir: PathBuf,
}

impl Sandbox {
    /// A new, empty folder unique to this test and process.
    pub fn new(name: &str) -> Sandbox {
        let dir = std::env::temp_dir().join(format!("vitalwire-sys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Sandbox { dir }
    }

    /// A path inside the sandbox.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `vitalwire keygen --out NAME.key` (and `NAME.key.pub`).
    pub fn keygen(&self, name: &str) -> PathBuf {
        let key = self.path(&format!("{name}.key"));
        let out = bin().args(["keygen", "--out", s(&key)]).output().unwrap();
        assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
        key
    }

    /// The trust store file of this sandbox.
    pub fn store(&self) -> PathBuf {
        self.path("trust.vw")
    }

    /// `vitalwire trust --store trust.vw ARGS...`.
    pub fn trust(&self, args: &[&str]) -> Output {
        bin().args(["trust", "--store", s(&self.store())]).args(args).output().unwrap()
    }

    /// `trust add NAME.key.pub --device-id ID`, asserting success.
    pub fn trust_add(&self, name: &str, device_id: &str) {
        let public = self.path(&format!("{name}.key.pub"));
        let out = self.trust(&["add", s(&public), "--device-id", device_id]);
        assert!(out.status.success(), "trust add: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Lines of a JSON Lines file written by a process (missing file: none; a torn last line is
    /// skipped, since the writer may be in the middle of it).
    pub fn jsonl(&self, name: &str) -> Vec<serde_json::Value> {
        read_jsonl(&self.path(name))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Parses a JSON Lines file, skipping a last line that is not complete yet.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// A running child process, killed by PID when dropped, with its stderr collected in the
/// background (so it never blocks on a full pipe).
pub struct Proc {
    pub child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr piped (stdout is left to the caller).
    pub fn spawn(cmd: Command) -> Proc {
        Proc::spawn_stdin(cmd, Stdio::null())
    }

    /// Like [`Proc::spawn`], with stdin piped too: an operator typing ([`Proc::type_line`]).
    pub fn spawn_with_stdin(cmd: Command) -> Proc {
        Proc::spawn_stdin(cmd, Stdio::piped())
    }

    /// Writes `line` and a newline to the process's stdin (spawned with
    /// [`Proc::spawn_with_stdin`]).
    pub fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("spawned with stdin piped");
        stdin.write_all(format!("{line}\n").as_bytes()).expect("write to stdin");
        stdin.flush().expect("flush stdin");
    }

    fn spawn_stdin(mut cmd: Command, stdin: Stdio) -> Proc {
        let mut child =
            cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = BufReader::new(child.stderr.take().unwrap());
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match pipe.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf)),
                }
            }
        });
        Proc { child, stderr }
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle` (or `limit` passes).
    pub fn wait_stderr(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.stderr().contains(needle)).is_some()
    }

    /// Sends a signal by PID (`TERM`, `HUP`, `KILL`, `INT`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{name} {}", self.child.id());
    }

    /// Waits for the process to exit, at most `limit`; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads the rest of stdout (after the process has exited or closed it).
    pub fn stdout_to_end(&mut self) -> String {
        let mut out = String::new();
        if let Some(mut pipe) = self.child.stdout.take() {
            let _ = pipe.read_to_string(&mut out);
        }
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `vitalwire host` process with its addresses, telemetry and event files in a sandbox.
pub struct HostProc {
    pub proc: Proc,
    pub tcp: Option<SocketAddr>,
    pub udp: Option<SocketAddr>,
    pub telemetry: PathBuf,
    pub events: PathBuf,
}

/// What to start a host with.
pub struct HostArgs<'a> {
    pub tcp: bool,
    pub udp: bool,
    /// Extra arguments (`--allow-pairing`, limits, ...).
    pub extra: &'a [&'a str],
    /// Fixed ports (for a restart on the same address); `None` picks free ones.
    pub tcp_addr: Option<SocketAddr>,
    pub udp_addr: Option<SocketAddr>,
}

impl Default for HostArgs<'_> {
    fn default() -> Self {
        HostArgs { tcp: true, udp: false, extra: &[], tcp_addr: None, udp_addr: None }
    }
}

impl HostProc {
    /// Starts `vitalwire host --key host.key --trust trust.vw` in `sb` writing telemetry to
    /// `telemetry.jsonl` and events to `events.jsonl`, and waits for its listening lines.
    pub fn start(sb: &Sandbox, args: HostArgs<'_>) -> HostProc {
        HostProc::start_inner(sb, args, false)
    }

    /// Like [`HostProc::start`], with the host's stdin piped (an operator at the gateway:
    /// [`Proc::type_line`] on `proc`).
    pub fn start_with_stdin(sb: &Sandbox, args: HostArgs<'_>) -> HostProc {
        HostProc::start_inner(sb, args, true)
    }

    fn start_inner(sb: &Sandbox, args: HostArgs<'_>, stdin: bool) -> HostProc {
        let telemetry = sb.path("telemetry.jsonl");
        let events = sb.path("events.jsonl");
        let mut cmd = bin();
        cmd.args(["host", "--key", s(&sb.path("host.key")), "--trust", s(&sb.store())]);
        cmd.args(["--telemetry", s(&telemetry), "--events", s(&events)]);
        if args.tcp {
            let a = args.tcp_addr.map(|a| a.to_string()).unwrap_or_else(|| "127.0.0.1:0".into());
            cmd.args(["--tcp", &a]);
        }
        if args.udp {
            let a = args.udp_addr.map(|a| a.to_string()).unwrap_or_else(|| "127.0.0.1:0".into());
            cmd.args(["--udp", &a]);
        }
        cmd.args(args.extra);
        let proc = if stdin { Proc::spawn_with_stdin(cmd) } else { Proc::spawn(cmd) };
        let mut host = HostProc { proc, tcp: None, udp: None, telemetry, events };
        let ready = wait_until(Duration::from_secs(30), || {
            let err = host.proc.stderr();
            let tcp_ok = !args.tcp || err.contains("vitalwire host: TCP ");
            let udp_ok = !args.udp || err.contains("vitalwire host: UDP ");
            tcp_ok && udp_ok
        });
        assert!(ready.is_some(), "host did not start: {}", host.proc.stderr());
        let err = host.proc.stderr();
        for line in err.lines() {
            if let Some(a) = line.strip_prefix("vitalwire host: TCP ") {
                host.tcp = a.trim().parse().ok();
            }
            if let Some(a) = line.strip_prefix("vitalwire host: UDP ") {
                host.udp = a.trim().parse().ok();
            }
        }
        host
    }

    /// Telemetry lines written so far.
    pub fn telemetry(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.telemetry)
    }

    /// Event lines written so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.events)
    }

    /// Events named `name` (the `event` field) written so far.
    pub fn events_named(&self, name: &str) -> Vec<serde_json::Value> {
        self.events().into_iter().filter(|e| e["event"] == name).collect()
    }
}

/// A `vitalwire device` process (the simulated patient monitor).
pub struct DeviceArgs<'a> {
    pub key: &'a str,
    pub id: &'a str,
    pub addr: SocketAddr,
    pub udp: bool,
    pub profile: &'a str,
    pub rate: f64,
    pub seconds: Option<u64>,
    pub extra: &'a [&'a str],
}

impl<'a> DeviceArgs<'a> {
    /// A TCP IK device at 20 ticks per second with key `NAME.key`.
    pub fn new(key: &'a str, id: &'a str, addr: SocketAddr) -> Self {
        DeviceArgs { key, id, addr, udp: false, profile: "ik", rate: 20.0, seconds: None, extra: &[] }
    }
}

/// The command line of a device (not yet started).
pub fn device_cmd(sb: &Sandbox, a: &DeviceArgs<'_>) -> Command {
    let mut cmd = bin();
    cmd.args(["device", "--key", s(&sb.path(&format!("{}.key", a.key)))]);
    cmd.args(["--host-key", s(&sb.path("host.key.pub")), "--connect", &a.addr.to_string(), "--id", a.id]);
    cmd.args(["--profile", a.profile, "--rate", &a.rate.to_string()]);
    if a.udp {
        cmd.arg("--udp");
    }
    if let Some(secs) = a.seconds {
        cmd.args(["--seconds", &secs.to_string()]);
    }
    cmd.args(a.extra);
    cmd
}

/// Starts a device process.
pub fn start_device(sb: &Sandbox, a: &DeviceArgs<'_>) -> Proc {
    Proc::spawn(device_cmd(sb, a))
}
