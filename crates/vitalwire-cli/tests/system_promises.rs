//! System tests of what README.md and `vitalwire <cmd> --help` promise an operator, run the way
//! the operator runs it: the README's shell blocks executed line by line by `sh` in a scratch
//! folder (only the fixed ports and `/etc/vitalwire/` are replaced), real `vitalwire` processes,
//! key files damaged and exposed on disk.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

const README: &str = include_str!("../../../README.md");

/// The lines of the first ```sh block after `marker` in the README.
fn readme_block(marker: &str) -> Vec<&'static str> {
    let start = README.find(marker).unwrap_or_else(|| panic!("README has no {marker:?}"));
    let rest = &README[start..];
    let body = &rest[rest.find("```sh\n").expect("a sh block") + 6..];
    body[..body.find("```").unwrap()].lines().collect()
}

/// `sh -c LINE` in `dir` with the `vitalwire` under test first on the PATH.
fn sh(dir: &Path, line: &str) -> Command {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_vitalwire")).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(line).current_dir(dir).env("PATH", path);
    cmd
}

fn run_ok(dir: &Path, line: &str) -> String {
    let out = sh(dir, line).output().unwrap();
    assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process whose stdout and stderr are both collected byte by byte (the `--status` line is
/// redrawn with `\r`, never ended by a newline).
struct Watched {
    child: std::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

impl Watched {
    fn spawn(mut cmd: Command) -> Watched {
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Watched { child, stdout, stderr }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Telemetry lines (JSON) on stdout from `device_id`.
    fn telemetry(&self, device_id: &str) -> Vec<serde_json::Value> {
        self.stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["device_id"] == device_id)
            .collect()
    }

    /// The last `--status` line drawn, as (field, number) pairs.
    fn status(&self) -> Option<Vec<(String, u64)>> {
        let err = self.stderr();
        let line = err.split(['\r', '\n']).rfind(|l| l.starts_with('[') && l.contains("sessions"))?;
        let words: Vec<&str> = line.split_whitespace().filter(|w| *w != "|").collect();
        let mut fields = Vec::new();
        for pair in words[1..].windows(2) {
            if let (false, Ok(n)) = (pair[0].chars().any(|c| c.is_ascii_digit()), pair[1].parse()) {
                fields.push((pair[0].to_string(), n));
            }
        }
        Some(fields)
    }

    fn status_field(&self, name: &str) -> Option<u64> {
        self.status()?.into_iter().find(|(f, _)| f == name).map(|(_, n)| n)
    }
}

impl Drop for Watched {
    /// Kills the process by its PID (the shell `exec`s it, so that is `vitalwire` itself).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `LINE` (the shell `exec`s it) for at most `limit`: its exit code (`None`: still running,
/// killed) and its stderr.
fn run_bounded(dir: &Path, line: &str, limit: Duration) -> (Option<i32>, String) {
    let mut w = Watched::spawn(sh(dir, &format!("exec {line}")));
    let mut code = None;
    wait_until(limit, || match w.child.try_wait() {
        Ok(Some(status)) => {
            code = status.code();
            true
        }
        _ => false,
    });
    if code.is_some() {
        // The pipes are closed: let the readers finish.
        wait_until(Duration::from_secs(2), || {
            Arc::strong_count(&w.stderr) == 1 && Arc::strong_count(&w.stdout) == 1
        });
    }
    (code, w.stderr())
}

/// The status line's per-second telemetry count: `frames/s` (frames received), or `written/s`
/// (lines written) since the host's sinks count what they wrote.
const RATE: [&str; 2] = ["frames/s", "written/s"];

fn listening(w: &Watched, what: &str) -> String {
    let prefix = format!("vitalwire host: {what} ");
    let found = wait_until(Duration::from_secs(30), || w.stderr().lines().any(|l| l.starts_with(&prefix)));
    assert!(found.is_some(), "host does not listen on {what}: {}", w.stderr());
    let err = w.stderr();
    err.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap().trim().to_string()
}

/// README "Try it on two terminals", every line as written (the host on port 0 instead of
/// 7700/7701, the devices pointed at the ports it printed), then the `--status` line it
/// promises (sessions, a rate of telemetry, rejected, alerts) checked against what happened: one
/// session streaming, then a device with an unregistered key refused.
#[test]
fn the_two_terminal_commands_of_the_readme_run_as_written_and_the_status_line_counts() {
    let sb = Sandbox::new("readme-two-terminals");
    let lines = readme_block("### Try it on two terminals");
    assert_eq!(lines[0], "cargo build -p vitalwire-cli && export PATH=$PWD/target/debug:$PATH", "{lines:?}");
    let commands: Vec<&str> = lines[1..].iter().copied().filter(|l| !l.starts_with('#')).collect();
    let host_line = commands.iter().position(|l| l.starts_with("vitalwire host ")).expect("a host line");
    for line in &commands[..host_line] {
        run_ok(&sb.dir, line);
    }
    let list = run_ok(&sb.dir, "vitalwire trust --store trust.vw list");
    assert!(list.contains("PM-0001") && list.contains("ICU bed 4"), "{list}");

    let host_cmd =
        commands[host_line].replace("127.0.0.1:7700", "127.0.0.1:0").replace("127.0.0.1:7701", "127.0.0.1:0");
    assert!(host_cmd.contains("--status"), "{host_cmd}");
    let host = Watched::spawn(sh(&sb.dir, &format!("exec {host_cmd}")));
    let (tcp, udp) = (listening(&host, "TCP"), listening(&host, "UDP"));

    let devices: Vec<String> = commands[host_line + 1..]
        .iter()
        .map(|l| l.replace("127.0.0.1:7700", &tcp).replace("127.0.0.1:7701", &udp))
        .collect();
    assert_eq!(devices.len(), 2, "{devices:?}");
    assert!(devices[0].contains(&tcp) && !devices[0].contains("--udp"), "{}", devices[0]);
    assert!(devices[1].contains(&udp) && devices[1].contains("--udp"), "{}", devices[1]);

    // The TCP device streams; the status line shows its session and its frames.
    let tcp_device = Watched::spawn(sh(&sb.dir, &format!("exec {}", devices[0])));
    let streaming = wait_until(Duration::from_secs(30), || {
        host.telemetry("PM-0001").len() >= 8
            && host.status_field("sessions") == Some(1)
            && RATE.iter().any(|f| host.status_field(f).is_some_and(|n| n > 0))
    });
    assert!(
        streaming.is_some(),
        "status {:?}\nhost: {}\ndevice: {}",
        host.status(),
        host.stderr(),
        tcp_device.stderr()
    );
    let status = host.status().unwrap();
    assert!(RATE.iter().any(|r| status.iter().any(|(f, _)| f == r)), "no rate in {status:?}");
    for field in ["sessions", "rejected", "alerts"] {
        assert!(status.iter().any(|(f, _)| f == field), "no {field} in {status:?}");
    }
    assert_eq!(host.status_field("rejected"), Some(0), "{status:?}");
    // `device` defaults: `--profile ik`, `--suite chachapoly`; `host` writes events to stderr
    // and telemetry to stdout by default.
    let established = host
        .stderr()
        .lines()
        .filter_map(|l| l.find('{').and_then(|at| serde_json::from_str::<serde_json::Value>(&l[at..]).ok()))
        .find(|e| e["event"] == "session_established" && e["device_id"] == "PM-0001");
    let established =
        established.unwrap_or_else(|| panic!("no session_established on stderr: {}", host.stderr()));
    assert_eq!(
        (&established["profile"], &established["suite"]),
        (&"IK".into(), &"25519_ChaChaPoly_BLAKE2s".into())
    );
    let from_tcp: Vec<u64> = host.telemetry("PM-0001").iter().filter_map(|t| t["session"].as_u64()).collect();
    drop(tcp_device);

    // The UDP device streams too (a new session: the TCP one is gone).
    let before = host.telemetry("PM-0001").len();
    let udp_device = Watched::spawn(sh(&sb.dir, &format!("exec {}", devices[1])));
    let udp_ok = wait_until(Duration::from_secs(30), || {
        host.telemetry("PM-0001")[before..]
            .iter()
            .filter(|t| t["session"].as_u64().is_some_and(|s| !from_tcp.contains(&s)))
            .count()
            >= 8
    });
    assert!(udp_ok.is_some(), "host: {}\ndevice: {}", host.stderr(), udp_device.stderr());
    drop(udp_device);
    // What the simulated monitor sends, as the host writes it: numerics as text, the waveform
    // (64 samples of 2 bytes) as hex.
    for t in host.telemetry("PM-0001") {
        match t["channel"].as_u64() {
            Some(1) => {
                let text = t["text"].as_str().unwrap_or_default();
                assert!(text.starts_with("HR=") && text.contains(";SpO2=") && text.contains(";NIBP="), "{t}");
            }
            Some(2) => assert_eq!(t["hex"].as_str().map(str::len), Some(256), "{t}"),
            Some(3) => assert!(t["text"].is_string(), "{t}"),
            _ => panic!("unexpected telemetry line {t}"),
        }
    }

    // A device with a key nobody registered is refused: the device exits non-zero, the host
    // logs an alert and the status line counts the rejection and the alert.
    run_ok(&sb.dir, "vitalwire keygen --out rogue.key");
    let rogue = sh(
        &sb.dir,
        &format!("vitalwire device --key rogue.key --host-key host.key.pub --connect {tcp} --id PM-0001 --seconds 10"),
    )
    .output()
    .unwrap();
    assert!(!rogue.status.success(), "the rogue must be refused");
    let counted = wait_until(Duration::from_secs(10), || {
        host.status_field("rejected").is_some_and(|n| n >= 1)
            && host.status_field("alerts").is_some_and(|n| n >= 1)
    });
    assert!(counted.is_some(), "status {:?}\n{}", host.status(), host.stderr());
    assert!(host.stderr().contains(r#""event":"unknown_peer""#), "{}", host.stderr());
}

/// README "Deploying vitalwire", at the factory: the two commands as written (the store in the
/// sandbox instead of /etc/vitalwire/), then a host built with the crate exactly as the README
/// says (`ResponderConfig::new(host_keys, Arc::new(TrustStore::open(..)?))`) admits the
/// registered device over IK and KK and refuses an unregistered one during the handshake.
#[test]
fn factory_provisioning_as_the_readme_writes_it_admits_the_device_and_only_it() {
    use vitalwire::*;
    let sb = Sandbox::new("readme-factory");
    let etc = sb.path("etc-vitalwire");
    std::fs::create_dir_all(&etc).unwrap();
    let lines = readme_block("**At the factory (provisioning).**");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let out = run_ok(&sb.dir, &lines[0].replace("/etc/vitalwire/", &format!("{}/", s(&etc))));
    run_ok(&sb.dir, &lines[1].replace("/etc/vitalwire/", &format!("{}/", s(&etc))));
    // "pm-0001.key (0600) + pm-0001.key.pub", the comment in both.
    assert!(out.contains("pm-0001.key (mode 0600)"), "{out}");
    for file in ["pm-0001.key", "pm-0001.key.pub"] {
        let text = std::fs::read_to_string(sb.path(file)).unwrap();
        assert!(text.lines().any(|l| l == "# PM-0001"), "{file}: {text}");
    }
    sb.keygen("host");
    sb.keygen("stranger");

    let store = Arc::new(TrustStore::open(etc.join("trust.vw")).unwrap());
    let host_keys = keyfile::read_private_key(&sb.path("host.key")).unwrap();
    let handshake = |device: &str, profile: Profile| -> Result<Session, Error> {
        let keys = keyfile::read_private_key(&sb.path(device)).unwrap();
        let config =
            InitiatorConfig::new(profile, keys, DeviceIdentity::new("PM-0001")).host_key(*host_keys.public());
        let mut dev = Handshake::initiator(config)?;
        let policy: Arc<dyn TrustPolicy> = store.clone();
        let mut host = Handshake::responder(ResponderConfig::new(host_keys.clone(), policy))?;
        let mut wire = bytes::BytesMut::new();
        let mut decoder = StreamDecoder::new(65535);
        while !(dev.is_finished() && host.is_finished()) {
            let (w, r) = if dev.wants_write() { (&mut dev, &mut host) } else { (&mut host, &mut dev) };
            w.write_message(&mut wire)?;
            let frame = decoder.decode(&mut wire)?.expect("a whole frame");
            r.read_message(&frame)?;
        }
        let session = host.into_session()?;
        dev.into_session()?;
        Ok(session)
    };
    for profile in [Profile::Ik, Profile::Kk] {
        let session = handshake("pm-0001.key", profile).unwrap_or_else(|e| panic!("{profile:?}: {e}"));
        assert_eq!(session.peer_identity().unwrap().device_id, "PM-0001");
    }
    for profile in [Profile::Ik, Profile::Kk] {
        let refused = handshake("stranger.key", profile);
        assert!(refused.is_err(), "{profile:?}: an unregistered device was admitted");
    }
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "unexpected success: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `keygen --help`: "FILE (private, mode 0600) and FILE.pub, and print the fingerprint"; the
/// README: private keys written 0600, never overwritten, fingerprints like
/// `WSE4-AX72-7LQB-UTKN`, the same for the private and the public file.
#[test]
fn keygen_writes_0600_whatever_the_umask_and_never_overwrites() {
    let sb = Sandbox::new("keygen-promises");
    // Even with a umask that would leave the file world-readable.
    let out = run_ok(&sb.dir, "umask 000 && vitalwire keygen --out dev.key --comment PM-7");
    assert_eq!(mode(&sb.path("dev.key")), 0o600);
    let fp =
        out.lines().find_map(|l| l.strip_prefix("fingerprint: ")).expect("fingerprint printed").to_string();
    let groups: Vec<&str> = fp.split('-').collect();
    assert!(
        groups.len() == 4
            && groups.iter().all(
                |g| g.len() == 4 && g.chars().all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
            ),
        "{fp}"
    );
    assert_eq!(run_ok(&sb.dir, "vitalwire fingerprint dev.key").trim(), fp);
    assert_eq!(run_ok(&sb.dir, "vitalwire fingerprint dev.key.pub").trim(), fp);

    let private = std::fs::read(sb.path("dev.key")).unwrap();
    let public = std::fs::read(sb.path("dev.key.pub")).unwrap();
    let unchanged = || {
        assert_eq!(std::fs::read(sb.path("dev.key")).unwrap(), private, "private key overwritten");
        assert_eq!(std::fs::read(sb.path("dev.key.pub")).unwrap(), public, "public key overwritten");
    };
    // Both files there.
    let err = failed(&sh(&sb.dir, "vitalwire keygen --out dev.key").output().unwrap());
    assert!(err.contains("already exists"), "{err}");
    unchanged();
    // Only the private key there: it is kept, and no mismatched .pub appears.
    std::fs::rename(sb.path("dev.key.pub"), sb.path("saved.pub")).unwrap();
    let err = failed(&sh(&sb.dir, "vitalwire keygen --out dev.key").output().unwrap());
    assert!(err.contains("dev.key: already exists"), "{err}");
    assert!(!sb.path("dev.key.pub").exists());
    std::fs::rename(sb.path("saved.pub"), sb.path("dev.key.pub")).unwrap();
    unchanged();
    // Only the public key there: no private key is written beside someone else's public key.
    std::fs::rename(sb.path("dev.key"), sb.path("saved.key")).unwrap();
    let err = failed(&sh(&sb.dir, "vitalwire keygen --out dev.key").output().unwrap());
    assert!(err.contains("dev.key.pub: already exists"), "{err}");
    assert!(!sb.path("dev.key").exists());
    std::fs::rename(sb.path("saved.key"), sb.path("dev.key")).unwrap();
    unchanged();
}

/// README: "key files with a checksum (private keys written 0600, group/other-readable ones
/// refused)" and "exits non-zero with a clear message on bad ... keys": every command that
/// loads a key refuses a damaged, truncated, exposed or wrong-kind file, names the file and
/// says what is wrong, and changes nothing.
#[test]
fn every_command_refuses_damaged_exposed_or_wrong_kind_key_files() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new("key-files");
    sb.keygen("host");
    sb.keygen("pm1");
    sb.trust_add("pm1", "PM-1");
    let store_before = std::fs::read(sb.store()).unwrap();

    // A typo in a hex digit of the key (still hex): the checksum catches it.
    let flip = |text: &str| {
        let at = text.find("x25519 ").unwrap() + 7;
        let mut bytes = text.as_bytes().to_vec();
        bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
        String::from_utf8(bytes).unwrap()
    };
    let host_pub = std::fs::read_to_string(sb.path("host.key.pub")).unwrap();
    std::fs::write(sb.path("typo.pub"), flip(&host_pub)).unwrap();
    let host_priv = std::fs::read_to_string(sb.path("host.key")).unwrap();
    std::fs::write(sb.path("typo.key"), flip(&host_priv)).unwrap();
    std::fs::set_permissions(sb.path("typo.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    // A copy cut short.
    std::fs::write(sb.path("short.pub"), &host_pub[..host_pub.len() - 12]).unwrap();
    // Exposed private keys: group-readable, other-readable.
    for (name, m) in [("group.key", 0o640), ("other.key", 0o604)] {
        std::fs::copy(sb.path("pm1.key"), sb.path(name)).unwrap();
        std::fs::set_permissions(sb.path(name), std::fs::Permissions::from_mode(m)).unwrap();
    }

    let device = |key: &str, host_key: &str| {
        format!(
            "vitalwire device --key {key} --host-key {host_key} --connect 127.0.0.1:9 --id PM-1 --seconds 5"
        )
    };
    let host =
        |key: &str| format!("vitalwire host --key {key} --trust trust.vw --tcp 127.0.0.1:0 --seconds 5");
    let cases: Vec<(String, &str)> = vec![
        ("vitalwire fingerprint typo.pub".into(), "typo.pub: key checksum mismatch"),
        ("vitalwire fingerprint typo.key".into(), "typo.key: key checksum mismatch"),
        ("vitalwire fingerprint short.pub".into(), "short.pub: malformed key file"),
        (
            "vitalwire fingerprint group.key".into(),
            "group.key: private key file is accessible by group or others (mode 640)",
        ),
        (
            "vitalwire fingerprint other.key".into(),
            "other.key: private key file is accessible by group or others (mode 604)",
        ),
        (host("typo.key"), "typo.key: key checksum mismatch"),
        (host("group.key"), "run `chmod 600`"),
        (host("other.key"), "run `chmod 600`"),
        (host("host.key.pub"), "host.key.pub: not a vitalwire private key file"),
        (device("group.key", "host.key.pub"), "group.key: private key file is accessible by group or others"),
        (device("pm1.key.pub", "host.key.pub"), "pm1.key.pub: not a vitalwire private key file"),
        (device("pm1.key", "typo.pub"), "typo.pub: key checksum mismatch"),
        (device("pm1.key", "short.pub"), "short.pub: malformed key file"),
        (device("pm1.key", "missing.pub"), "missing.pub"),
        (
            "vitalwire trust --store trust.vw add typo.pub --device-id X".into(),
            "typo.pub: key checksum mismatch",
        ),
        ("vitalwire trust --store trust.vw add other.key --device-id X".into(), "run `chmod 600`"),
        ("vitalwire trust --store trust.vw revoke short.pub".into(), "short.pub: malformed key file"),
        (
            "vitalwire trust --store new.vw add short.pub --device-id X".into(),
            "short.pub: malformed key file",
        ),
    ];
    for (line, expected) in &cases {
        let out = sh(&sb.dir, line).output().unwrap();
        assert!(!out.status.success(), "{line}: accepted ({})", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{line}: {err}");
        assert!(
            err.starts_with("vitalwire: ") && err.contains(expected),
            "{line}: expected {expected:?}, got {err:?}"
        );
        // Nothing secret in the message: no key hex.
        let secret_hex = host_priv.lines().find_map(|l| l.strip_prefix("x25519 ")).unwrap();
        assert!(!err.contains(&secret_hex[..16]), "{line}: {err}");
    }
    // Not a key file at all: refused after at most 64 KiB, never read to the end.
    for line in [
        "vitalwire fingerprint /dev/zero".to_string(),
        device("pm1.key", "/dev/zero"),
        "vitalwire trust --store trust.vw add /dev/zero --device-id X".into(),
    ] {
        let (code, err) = run_bounded(&sb.dir, &line, Duration::from_secs(15));
        assert!(
            code == Some(1) && err.contains("/dev/zero: malformed key file (larger than any key file"),
            "{line}: {code:?} {err}"
        );
    }
    assert_eq!(std::fs::read(sb.store()).unwrap(), store_before, "a refused command changed the store");
    assert!(!sb.path("new.vw").exists(), "a refused `trust add` created a store");
}

/// README: "Every command has `--help` and exits non-zero with a clear message on bad
/// arguments". Each command and subcommand prints its help and exits 0; each bad argument is
/// refused before anything runs, with a message that names the argument.
#[test]
fn every_command_has_help_and_refuses_bad_arguments_by_name() {
    let sb = Sandbox::new("arguments");
    sb.keygen("host");
    sb.keygen("pm1");
    sb.trust_add("pm1", "PM-1");
    for cmd in [
        "",
        "demo",
        "host",
        "device",
        "keygen",
        "fingerprint",
        "trust",
        "trust add",
        "trust revoke",
        "trust list",
        "trust tofu",
    ] {
        let out = sh(&sb.dir, &format!("vitalwire {cmd} --help")).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "vitalwire {cmd} --help");
        let usage = format!("Usage: vitalwire {cmd}").trim_end().to_string();
        assert!(text.contains(&usage) && text.contains("--help"), "vitalwire {cmd} --help: {text}");
    }
    // Each line runs at most 5 s should a bad value be taken.
    let host = "vitalwire host --key host.key --trust trust.vw --seconds 5 --tcp";
    let device = "vitalwire device --key pm1.key --host-key host.key.pub --seconds 5 --connect";
    let cases: Vec<(String, &str)> = vec![
        ("vitalwire".into(), "Usage"),
        ("vitalwire frobnicate".into(), "frobnicate"),
        ("vitalwire demo --devices 0".into(), "--devices"),
        ("vitalwire demo --devices 65".into(), "--devices"),
        ("vitalwire demo --frames many".into(), "--frames"),
        ("vitalwire demo --bogus".into(), "--bogus"),
        ("vitalwire host --tcp 127.0.0.1:0".into(), "--key"),
        ("vitalwire host --key host.key --trust trust.vw".into(), "--tcp and/or --udp"),
        ("vitalwire host --key host.key --tcp localhost".into(), "--tcp"),
        ("vitalwire host --key host.key --udp 127.0.0.1".into(), "--udp"),
        // Limits that would admit nobody (or switch the rate limit off): system_host.rs.
        (format!("{host} 127.0.0.1:0 --handshake-burst many"), "--handshake-burst"),
        ("vitalwire host --key host.key --tcp 127.0.0.1:0 --seconds=-1".into(), "--seconds"),
        ("vitalwire host --key host.key --trust missing.vw --tcp 127.0.0.1:0".into(), "missing.vw"),
        (format!("{device} 127.0.0.1:9 --id PM-1 --rate 0"), "--rate"),
        (format!("{device} 127.0.0.1:9 --id PM-1 --rate nan"), "--rate"),
        (format!("{device} 127.0.0.1:9 --id PM-1 --profile xxpsk3"), "--profile"),
        (format!("{device} 127.0.0.1:9 --id PM-1 --suite rot13"), "--suite"),
        (format!("{device} nowhere --id PM-1"), "--connect"),
        // An --id outside the trust store's rules (empty, over 64 bytes, a control character):
        // the device branch's `device::check_device_id`.
        ("vitalwire keygen".into(), "--out"),
        ("vitalwire fingerprint".into(), "<FILE>"),
        ("vitalwire trust add pm1.key.pub".into(), "--device-id"),
        ("vitalwire trust --store trust.vw add pm1.key.pub --device-id ''".into(), "--device-id"),
        ("vitalwire trust --store trust.vw revoke".into(), "<KEY>"),
        (
            "vitalwire trust --store trust.vw revoke pm1.key.pub --fingerprint AAAA-AAAA-AAAA-AAAA".into(),
            "--fingerprint",
        ),
        ("vitalwire trust --store trust.vw revoke --fingerprint nope".into(), "not a fingerprint"),
        ("vitalwire trust --store trust.vw tofu maybe".into(), "maybe"),
    ];
    // Refused, not taken: a host that took a bad value would serve for its 5 s and exit 0, a
    // device would retry (bounded here at 15 s).
    let mut wrong = Vec::new();
    for (line, expected) in &cases {
        let (code, err) = run_bounded(&sb.dir, line, Duration::from_secs(15));
        if !matches!(code, Some(c) if c != 0) || !err.contains(expected) || err.lines().count() > 20 {
            wrong.push(format!("{line}: exit {code:?}, expected {expected:?} in {err:?}"));
        }
    }
    assert!(wrong.is_empty(), "bad arguments not refused clearly:\n{}", wrong.join("\n"));
    let list = run_ok(&sb.dir, "vitalwire trust --store trust.vw list");
    assert_eq!(list.lines().count(), 3, "a refused command changed the store: {list}");
}

/// README "The two commands": `vitalwire demo` as written runs "a host and four simulated
/// patient monitors over loopback TCP, one per handshake profile, ... plus a rogue device with
/// an unregistered key that the host rejects and logs as a security event"; the CLI section
/// adds every suite, a tampered and a replayed frame, and a summary table.
#[test]
fn the_demo_as_written_shows_every_profile_and_suite_and_rejects_the_rogues() {
    let sb = Sandbox::new("demo-literal");
    let line = README.lines().find(|l| l.starts_with("cargo run -p vitalwire-cli -- demo")).unwrap();
    assert_eq!(line.trim(), "cargo run -p vitalwire-cli -- demo", "the README's demo command changed");
    let out = sh(&sb.dir, "vitalwire demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let header = stdout.lines().position(|l| l.starts_with("device ") && l.contains("end of session"));
    let rows: Vec<&str> = stdout.lines().skip(header.expect("a summary table") + 1).collect();
    let monitors: Vec<&str> = rows.iter().copied().filter(|r| r.starts_with("PM-")).collect();
    assert_eq!(monitors.len(), 4, "{stdout}");
    for profile in ["XX/", "IK/", "KK/", "XXpsk3/"] {
        assert_eq!(
            monitors.iter().filter(|r| r.split_whitespace().nth(1).unwrap().starts_with(profile)).count(),
            1,
            "{profile}: {stdout}"
        );
    }
    for suite in ["ChaChaPoly", "AESGCM"] {
        assert!(monitors.iter().any(|r| r.contains(&format!("/{suite} "))), "{suite}: {stdout}");
    }
    for row in &monitors {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!((cols[2], cols[3]), ("5", "5"), "every tick delivered: {row}");
        assert!(row.ends_with("closed by device (normal)"), "{row}");
    }
    for (rogue, host_saw) in [
        ("ROGUE-UNKNOWN", "unknown_peer"),
        ("ROGUE-TAMPER", "authentication_failure"),
        ("ROGUE-REPLAY", "authentication_failure"),
    ] {
        let row = rows.iter().find(|r| r.starts_with(rogue)).unwrap_or_else(|| panic!("{rogue}: {stdout}"));
        assert!(row.contains("rejected") && row.contains(&format!("host: {host_saw}")), "{row}");
        let logged = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("[event] "))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|e| e["event"] == host_saw && e["device_id"] == rogue && e["severity"] == "alert");
        assert!(logged, "{rogue}: no {host_saw} alert logged: {stdout}");
    }
    // Without --quiet every frame is printed: 5 numerics and 5 waveform blocks per monitor.
    for id in ["PM-0001", "PM-0002", "PM-0003", "PM-0004"] {
        for what in ["numerics", "waveform"] {
            let n = stdout.lines().filter(|l| l.starts_with(&format!("[host] {id} {what} "))).count();
            assert_eq!(n, 5, "{id} {what}: {stdout}");
        }
    }
    let alerts =
        stdout.lines().find_map(|l| l.strip_prefix("security events at warning or above: ")).unwrap();
    assert!(alerts.trim().parse::<u32>().unwrap() >= 3, "{stdout}");
}

/// `demo --quiet`: "Print only connections, security events, session ends and the summary, not
/// every frame"; `--no-rogue`: "Leave out the rogues".
#[test]
fn demo_quiet_prints_no_frames_and_no_rogue_leaves_the_rogues_out() {
    let sb = Sandbox::new("demo-quiet");
    let out = sh(&sb.dir, "vitalwire demo --quiet --no-rogue --devices 2 --frames 3 --interval-ms 0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.lines().any(|l| l.starts_with("[host] PM-")), "frames printed with --quiet: {stdout}");
    assert!(!stdout.contains("ROGUE"), "rogues with --no-rogue: {stdout}");
    let rows: Vec<Vec<&str>> =
        stdout.lines().filter(|l| l.starts_with("PM-")).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows.iter().all(|r| (r[2], r[3]) == ("3", "3")), "{stdout}");
    assert!(stdout.contains("security events at warning or above: 0"), "{stdout}");
    // Connections and session ends are still printed.
    assert_eq!(stdout.matches(r#""event":"session_established""#).count(), 2, "{stdout}");
    assert_eq!(stdout.matches(r#""event":"session_closed""#).count(), 2, "{stdout}");
}

/// The defaults and behaviours `--help` states: `--trust`/`--store` default to `trust.vw`;
/// trust on first use is off by default; `trust add` creates the store and re-admits a revoked
/// key (and a host built on that store admits the device again).
#[test]
fn the_defaults_and_re_admission_the_help_describes() {
    use vitalwire::*;
    let sb = Sandbox::new("help-defaults");
    sb.keygen("host");
    sb.keygen("pm1");
    let host_line = "vitalwire host --key host.key --tcp 127.0.0.1:0 --seconds 1";
    // No store yet: the host names the default file it wanted.
    let (code, err) = run_bounded(&sb.dir, host_line, Duration::from_secs(20));
    assert!(code.is_some_and(|c| c != 0) && err.contains("trust.vw"), "{code:?} {err}");
    // `trust add` without --store creates ./trust.vw.
    run_ok(&sb.dir, "vitalwire trust add pm1.key.pub --device-id PM-1");
    assert!(sb.store().exists());
    let list = run_ok(&sb.dir, "vitalwire trust list");
    assert!(list.starts_with("trust on first use: off\n") && list.contains("PM-1"), "{list}");
    let (code, err) = run_bounded(&sb.dir, host_line, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("vitalwire host: TCP 127.0.0.1:"), "{err}");

    let host_keys = keyfile::read_private_key(&sb.path("host.key")).unwrap();
    let admitted = || {
        let store: Arc<dyn TrustPolicy> = Arc::new(TrustStore::open(sb.store()).unwrap());
        let keys = keyfile::read_private_key(&sb.path("pm1.key")).unwrap();
        let config = InitiatorConfig::new(Profile::Ik, keys, DeviceIdentity::new("PM-1"))
            .host_key(*host_keys.public());
        let mut dev = Handshake::initiator(config).unwrap();
        let mut host = Handshake::responder(ResponderConfig::new(host_keys.clone(), store)).unwrap();
        let mut wire = bytes::BytesMut::new();
        let mut decoder = StreamDecoder::new(65535);
        while !(dev.is_finished() && host.is_finished()) {
            let (w, r) = if dev.wants_write() { (&mut dev, &mut host) } else { (&mut host, &mut dev) };
            if w.write_message(&mut wire).is_err() {
                return false;
            }
            let frame = decoder.decode(&mut wire).unwrap().unwrap();
            if r.read_message(&frame).is_err() {
                return false;
            }
        }
        host.into_session().is_ok()
    };
    assert!(admitted());
    run_ok(&sb.dir, "vitalwire trust revoke pm1.key.pub");
    assert!(run_ok(&sb.dir, "vitalwire trust list").contains("revoked"));
    assert!(!admitted(), "a revoked key was admitted");
    run_ok(&sb.dir, "vitalwire trust add pm1.key.pub --device-id PM-1 --label again");
    let list = run_ok(&sb.dir, "vitalwire trust list");
    assert!(list.contains("trusted") && !list.contains("revoked") && list.contains("again"), "{list}");
    assert!(admitted(), "re-admitted key refused");
}

/// `device --help`: "Handshake profile: xx, ik, kk" and "Cipher suite: chachapoly or aesgcm",
/// "Use UDP (datagram mode) instead of TCP": every profile and every suite on both transports
/// reaches one `vitalwire host`, which records the profile and suite each device used.
#[test]
fn every_device_profile_and_suite_works_on_tcp_and_on_udp() {
    let sb = Sandbox::new("profiles-suites");
    sb.keygen("host");
    let matrix = [
        ("xx", "chachapoly", false),
        ("xx", "aesgcm", true),
        ("ik", "chachapoly", true),
        ("ik", "aesgcm", false),
        ("kk", "chachapoly", false),
        ("kk", "aesgcm", true),
    ];
    let ids: Vec<String> = (1..=matrix.len()).map(|n| format!("PM-{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        sb.keygen(&format!("pm{n}"));
        sb.trust_add(&format!("pm{n}"), id);
    }
    let host = HostProc::start(&sb, HostArgs { udp: true, ..HostArgs::default() });
    let keys: Vec<String> = (0..matrix.len()).map(|n| format!("pm{n}")).collect();
    let extras: Vec<[&str; 2]> = matrix.iter().map(|(_, suite, _)| ["--suite", *suite]).collect();
    let devices: Vec<Proc> = matrix
        .iter()
        .enumerate()
        .map(|(n, &(profile, _, udp))| {
            let addr = if udp { host.udp.unwrap() } else { host.tcp.unwrap() };
            let args =
                DeviceArgs { profile, udp, extra: &extras[n], ..DeviceArgs::new(&keys[n], &ids[n], addr) };
            start_device(&sb, &args)
        })
        .collect();
    let all = wait_until(Duration::from_secs(40), || {
        let t = host.telemetry();
        ids.iter().all(|id| t.iter().filter(|v| v["device_id"] == id.as_str()).count() >= 4)
    });
    let stderr: Vec<String> = devices.iter().map(Proc::stderr).collect();
    assert!(all.is_some(), "host: {}\ndevices: {stderr:#?}", host.proc.stderr());
    let established = host.events_named("session_established");
    for (n, &(profile, suite, _)) in matrix.iter().enumerate() {
        let e = established.iter().find(|e| e["device_id"] == ids[n].as_str());
        let e = e.unwrap_or_else(|| panic!("{}: no session_established: {established:?}", ids[n]));
        assert_eq!(e["profile"].as_str().unwrap().to_ascii_lowercase(), profile, "{e}");
        let suite_name = if suite == "aesgcm" { "25519_AESGCM_SHA256" } else { "25519_ChaChaPoly_BLAKE2s" };
        assert_eq!(e["suite"], suite_name, "{e}");
    }
}
