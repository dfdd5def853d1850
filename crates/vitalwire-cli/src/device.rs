//! `vitalwire device`: a simulated patient monitor on TCP or UDP.
//!
//! Everything that can be checked locally is checked before the first connection (the device
//! id against the spec's limits, the rate, the key files, the option combinations), so a
//! configuration that can never work exits at once with a clear message instead of retrying.
//! `--seconds` bounds the process's life whatever the link does: the device stops at the
//! deadline, connected or not (closing an open session takes at most
//! [`vitalwire_tokio::client::CLOSE_GRACE`] more), and exits non-zero if no session came up
//! in that time, with the last failure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;
use vitalwire::datagram::DatagramConfig;
use vitalwire::keyfile;
use vitalwire::{
    CipherSuite, CloseCode, DeviceIdentity, Error, HandshakeError, Incoming, InitiatorConfig, Keypair,
    Profile, PublicKey,
};
use vitalwire_tokio::udp::UdpDevice;
use vitalwire_tokio::{client, ClientConfig, ClientEvent, DeviceClient, PairingOutcome, PairingSession};

use crate::monitor::PatientMonitor;
use crate::pairing;

/// The spec's limit on a device id (§4.5.1), in bytes of UTF-8.
pub const MAX_DEVICE_ID_LEN: usize = 64;
/// Ticks per second accepted by `--rate`.
pub const RATE_RANGE: (f64, f64) = (0.01, 1000.0);
/// How long the device waits for both pairing decisions.
pub const PAIRING_WAIT: Duration = Duration::from_secs(300);

pub struct DeviceOptions {
    pub key: PathBuf,
    pub host_key: PathBuf,
    pub connect: SocketAddr,
    pub udp: bool,
    pub id: String,
    pub profile: Profile,
    pub suite: CipherSuite,
    pub rate: f64,
    pub duration: Option<Duration>,
    pub max_attempts: Option<u32>,
    pub pair: bool,
}

/// A device id the spec allows (1 to 64 bytes of UTF-8) and that is safe to show in logs and
/// terminals (no control characters).
pub fn check_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_DEVICE_ID_LEN {
        return Err(format!("--id must be 1 to {MAX_DEVICE_ID_LEN} bytes of UTF-8 (got {} bytes)", id.len()));
    }
    if let Some((at, c)) = id.char_indices().find(|(_, c)| c.is_control()) {
        return Err(format!("--id contains a control character ({:?}) at byte {at}", c));
    }
    Ok(())
}

/// The checks that need no file and no network.
pub fn check_options(opts: &DeviceOptions) -> Result<(), String> {
    check_device_id(&opts.id)?;
    let (lo, hi) = RATE_RANGE;
    if !opts.rate.is_finite() || opts.rate < lo || opts.rate > hi {
        return Err(format!("--rate must be between {lo} and {hi} ticks per second (got {})", opts.rate));
    }
    if opts.connect.port() == 0 {
        return Err("--connect needs the host's port (got port 0)".into());
    }
    if opts.pair && opts.udp {
        return Err("--pair runs over TCP only; pair first, then run the device with --udp".into());
    }
    Ok(())
}

fn check_keys(keys: &Keypair, host_key: Option<&PublicKey>) -> Result<(), String> {
    if host_key == Some(keys.public()) {
        return Err("--key and --host-key are the same key: the device needs a key of its own \
                    (vitalwire keygen --out device.key)"
            .into());
    }
    Ok(())
}

/// Whether the file begins as a private key file does (only its first bytes are read: the
/// file may be anything, `/dev/zero` included; the key file reader refuses what is not a key).
fn starts_like_a_private_key_file(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = Vec::with_capacity(64);
    std::fs::File::open(path).and_then(|f| f.take(64).read_to_end(&mut head)).is_ok()
        && String::from_utf8_lossy(&head).trim_start().starts_with("vitalwire private key")
}

pub async fn run(opts: DeviceOptions, started: std::time::Instant) -> Result<(), String> {
    check_options(&opts)?;
    let keys = keyfile::read_private_key(&opts.key).map_err(|e| format!("--key: {e}"))?;
    // When pairing, a host key file that does not exist yet is learned in the pairing.
    let learn_host_key = opts.pair && !opts.host_key.exists();
    let known_host_key = if learn_host_key {
        None
    } else {
        // keyfile reads the public half of a private key file too; on a device that would
        // mean the host's secret was copied to it.
        if starts_like_a_private_key_file(&opts.host_key) {
            return Err("--host-key is a private key file: give the host's public key (the .pub file); \
                        the host's private key must never be copied to a device"
                .into());
        }
        Some(keyfile::read_public_key(&opts.host_key).map_err(|e| format!("--host-key: {e}"))?)
    };
    check_keys(&keys, known_host_key.as_ref())?;
    let deadline =
        opts.duration.and_then(|d| Instant::from_std(started).checked_add(d)).map(tokio::time::sleep_until);
    let stop = async move {
        match deadline {
            Some(sleep) => sleep.await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let identity = DeviceIdentity {
        device_id: opts.id.clone(),
        model: "VW-Sim Patient Monitor".into(),
        firmware: env!("CARGO_PKG_VERSION").into(),
        max_frame_len: u16::MAX,
    };
    let host_key = match known_host_key {
        Some(k) if !opts.pair => k,
        _ => {
            let paired = tokio::select! {
                r = pair(&opts, &keys, &identity, known_host_key) => r?,
                _ = &mut stop => return Err("--seconds passed before the pairing completed: not paired".into()),
            };
            if learn_host_key {
                keyfile::write_public_key(&opts.host_key, &paired, "host (learned by pairing)")
                    .map_err(|e| format!("paired, but cannot write --host-key: {e}"))?;
                eprintln!(
                    "vitalwire device {}: host key {} written to {}",
                    opts.id,
                    paired.fingerprint(),
                    opts.host_key.display()
                );
            }
            paired
        }
    };
    let (profile, suite) = (opts.profile, opts.suite);
    let make = move || {
        let c = InitiatorConfig::new(profile, keys.clone(), identity.clone()).suite(suite);
        match profile {
            Profile::Ik | Profile::Kk => c.host_key(host_key),
            _ => c.pin_host_keys([host_key]),
        }
    };
    let period = Duration::from_secs_f64(1.0 / opts.rate);
    let seed =
        opts.id.bytes().fold(0x9E37_79B9u32, |a, b| (a ^ b as u32).wrapping_mul(0x0100_0193).rotate_left(13));
    let mut monitor = PatientMonitor::new(seed);
    let mut progress = Progress::default();
    if opts.udp {
        let r = tokio::select! {
            r = run_udp(&opts, &make, &mut monitor, period, &mut progress) => Some(r),
            _ = &mut stop => None,
        };
        return r.unwrap_or_else(|| progress.at_deadline());
    }
    let mut config = ClientConfig::new(opts.connect.to_string(), make);
    config.max_attempts = opts.max_attempts;
    let mut device = DeviceClient::start(config);
    let mut tick = 0u32;
    let mut interval = tokio::time::interval(period);
    let result = 'run: loop {
        tokio::select! {
            _ = &mut stop => break progress.at_deadline(),
            _ = interval.tick() => {
                for (channel, payload) in monitor.tick(tick) {
                    // The queue may be full while the host is away: the deadline still holds.
                    tokio::select! {
                        r = device.send(channel, payload) => if let Err(e) = r { break 'run Err(e.to_string()) },
                        _ = &mut stop => break 'run progress.at_deadline(),
                    }
                }
                tick += 1;
            }
            event = device.next_event() => match event {
                Some(ClientEvent::Connected { attempt }) => {
                    progress.up = true;
                    eprintln!("vitalwire device {}: session up (attempt {attempt})", opts.id)
                }
                Some(ClientEvent::Disconnected { reason, retry_in }) => {
                    eprintln!("vitalwire device {}: disconnected ({reason}); retrying in {retry_in:.1?}", opts.id);
                    progress.last = Some(reason);
                }
                Some(ClientEvent::Refused { reason, retry_in }) => {
                    let reason = format!("refused by host ({reason}; a REJECT is unauthenticated)");
                    eprintln!("vitalwire device {}: {reason}; retrying in {retry_in:.1?}", opts.id);
                    progress.last = Some(reason);
                }
                Some(ClientEvent::Stopped { reason }) => break Err(reason),
                Some(ClientEvent::Security(e)) => eprintln!("{}", e.to_json_line()),
                Some(_) => {}
                None => break Err("client stopped".into()),
            }
        }
    };
    let closed = device.close().await;
    if closed != "closed" {
        eprintln!("vitalwire device {}: {closed}", opts.id);
    }
    result
}

/// What a run achieved, for its exit status at `--seconds`.
#[derive(Default)]
struct Progress {
    /// A session came up at some point.
    up: bool,
    /// The last failure.
    last: Option<String>,
}

impl Progress {
    /// `--seconds` passed: a success if a session ever came up, else the last failure.
    fn at_deadline(&self) -> Result<(), String> {
        match (self.up, &self.last) {
            (true, _) => Ok(()),
            (false, Some(last)) => Err(format!("no session before --seconds passed (last attempt: {last})")),
            (false, None) => {
                Err("no session before --seconds passed (the first attempt had not finished)".into())
            }
        }
    }
}

/// The UDP device, under the same rules as the TCP client (spec §4.4, "Refusals at the
/// device"): every failure, REJECTs included, is retried with capped jittered backoff; only an
/// authenticated CLOSE UNAUTHORIZED or `--max-attempts` stops it.
async fn run_udp(
    opts: &DeviceOptions,
    make: &(impl Fn() -> InitiatorConfig + Send + Sync),
    monitor: &mut PatientMonitor,
    period: Duration,
    progress: &mut Progress,
) -> Result<(), String> {
    let (initial, max) = (Duration::from_millis(200), Duration::from_secs(30));
    let mut failures = 0u32;
    let mut tick = 0u32;
    loop {
        let config = make();
        let host_authenticated = config.authenticates_host();
        let why = match UdpDevice::connect(
            opts.connect,
            config,
            DatagramConfig::default(),
            Duration::from_secs(15),
        )
        .await
        {
            Ok(mut dev) => {
                failures = 0;
                progress.up = true;
                eprintln!("vitalwire device {}: session up (UDP)", opts.id);
                let e = 'session: loop {
                    for (channel, payload) in monitor.tick(tick) {
                        if let Err(e) = dev.send(channel, &payload).await {
                            if e.is_fatal() {
                                break 'session e;
                            }
                        }
                    }
                    tick += 1;
                    match dev.run_for(period).await {
                        Err(e) => break e,
                        // The host's CLOSE ends the session; its code says whether to go on.
                        Ok(incoming) => {
                            let closed = incoming.iter().find_map(|i| match i {
                                Incoming::Closed(code) => Some(*code),
                                _ => None,
                            });
                            if let Some(code) = closed {
                                break Error::ClosedByPeer(code);
                            }
                        }
                    }
                };
                if host_authenticated && e == Error::ClosedByPeer(CloseCode::UNAUTHORIZED) {
                    return Err(format!(
                        "closed by host: {}: an authenticated refusal, not retried",
                        CloseCode::UNAUTHORIZED
                    ));
                }
                match e {
                    Error::ClosedByPeer(code) => format!("disconnected (closed by host: {code})"),
                    e => format!("disconnected ({e})"),
                }
            }
            Err(Error::Handshake(HandshakeError::Rejected(reason))) => {
                failures += 1;
                format!("refused by host ({reason}; a REJECT is unauthenticated)")
            }
            Err(e) => {
                failures += 1;
                format!("cannot establish a session ({e})")
            }
        };
        if opts.max_attempts.is_some_and(|m| failures >= m) {
            return Err(format!("giving up after {failures} failed attempts: {why}"));
        }
        let mut r = [0u8; 4];
        let _ = vitalwire::EntropySource::fill(&mut vitalwire::OsEntropy, &mut r);
        let retry_in = client::backoff(failures.saturating_sub(1), initial, max, u32::from_be_bytes(r));
        eprintln!("vitalwire device {}: {why}; retrying in {retry_in:.1?}", opts.id);
        progress.last = Some(why);
        tokio::time::sleep(retry_in).await;
    }
}

/// Runs a pairing session and returns the host's key once both operators confirmed.
async fn pair(
    opts: &DeviceOptions,
    keys: &Keypair,
    identity: &DeviceIdentity,
    pinned: Option<PublicKey>,
) -> Result<PublicKey, String> {
    let mut config = InitiatorConfig::new(Profile::Xx, keys.clone(), identity.clone()).suite(opts.suite);
    if let Some(k) = pinned {
        config = config.pin_host_keys([k]);
    }
    let session = PairingSession::start(&opts.connect.to_string(), config, Duration::from_secs(15))
        .await
        .map_err(|e| format!("pairing failed: {e}"))?;
    let mut session = session;
    for e in session.take_events() {
        eprintln!("{}", e.to_json_line());
    }
    let (code, host_key) = (session.code(), session.host_key());
    eprintln!("vitalwire device {}: PAIRING CODE {code} (host key {})", opts.id, host_key.fingerprint());
    eprintln!(
        "vitalwire device {}: if the host shows the same code, type yes and Enter (anything else: not paired)",
        opts.id
    );
    let mut lines = pairing::stdin_lines();
    let operator = async move { pairing::device_answer(lines.recv().await.as_deref(), code) };
    let outcome = tokio::time::timeout(PAIRING_WAIT, session.confirm(operator))
        .await
        .map_err(|_| format!("pairing not completed within {} s: not paired", PAIRING_WAIT.as_secs()))?
        .map_err(|e| format!("pairing failed: {e}"))?;
    match outcome {
        PairingOutcome::Paired => {
            eprintln!(
                "vitalwire device {}: paired with host {}; starting a normal session",
                opts.id,
                host_key.fingerprint()
            );
            Ok(host_key)
        }
        PairingOutcome::RefusedByHost(code) => {
            Err(format!("pairing refused by the host ({code}): not paired"))
        }
        PairingOutcome::NotConfirmed { host_admitted: false } => {
            Err("the codes were not confirmed here: not paired".into())
        }
        PairingOutcome::NotConfirmed { host_admitted: true } => Err(format!(
            "the codes were not confirmed here, but the host's operator admitted this device: \
             revoke it on the host (vitalwire trust revoke --fingerprint {})",
            keys.public().fingerprint()
        )),
        _ => Err("pairing ended without a decision: not paired".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vitalwire::{PrivateKey, ResponderConfig, TrustList, TrustPolicy, TrustStore};
    use vitalwire_tokio::{Host, HostConfig};

    fn options(connect: SocketAddr) -> DeviceOptions {
        DeviceOptions {
            key: PathBuf::new(),
            host_key: PathBuf::new(),
            connect,
            udp: true,
            id: "PM-U".into(),
            profile: Profile::Ik,
            suite: CipherSuite::default(),
            rate: 20.0,
            duration: None,
            max_attempts: None,
            pair: false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_udp_device_revoked_in_session_stops_on_the_authenticated_close() {
        let host_keys = Keypair::from_private(PrivateKey::from_bytes([0x31; 32]));
        let device_keys = Keypair::from_private(PrivateKey::from_bytes([0x32; 32]));
        let mut list = TrustList::new();
        list.add(*device_keys.public(), "PM-U", "", 0);
        let store = Arc::new(TrustStore::in_memory(list));
        let policy: Arc<dyn TrustPolicy> = store.clone();
        let responder_keys = host_keys.clone();
        let mut config =
            HostConfig::new(move || ResponderConfig::new(responder_keys.clone(), policy.clone()));
        config.trust = Some(store.clone());
        let (host, mut telemetry, _events) = Host::new(config);
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let h = host.clone();
        tokio::spawn(async move { vitalwire_tokio::udp::serve_udp(&h, socket).await });
        let host_public = *host_keys.public();
        let make = move || {
            InitiatorConfig::new(Profile::Ik, device_keys.clone(), DeviceIdentity::new("PM-U"))
                .host_key(host_public)
        };
        let opts = options(addr);
        let device = tokio::spawn(async move {
            let mut monitor = PatientMonitor::new(1);
            let mut progress = Progress::default();
            run_udp(&opts, &make, &mut monitor, Duration::from_millis(50), &mut progress).await
        });
        let first = tokio::time::timeout(Duration::from_secs(20), telemetry.recv()).await;
        assert!(matches!(first, Ok(Some(_))), "no telemetry over UDP");
        // Revoked while connected: the host closes the session with CLOSE UNAUTHORIZED.
        store.revoke(&store.snapshot().entries().next().unwrap().key).unwrap();
        host.trust_changed();
        let ended = tokio::time::timeout(Duration::from_secs(20), device).await.expect("the device stopped");
        let reason = ended.unwrap().unwrap_err();
        assert!(
            reason.contains("closed by host: unauthorized (0x0005): an authenticated refusal, not retried"),
            "{reason}"
        );
        host.shutdown().await;
    }

    #[test]
    fn device_ids_follow_the_spec_and_stay_printable() {
        assert!(check_device_id("PM-0001").is_ok());
        assert!(check_device_id(&"é".repeat(32)).is_ok());
        assert!(check_device_id(&"x".repeat(64)).is_ok());
        assert!(check_device_id("").unwrap_err().contains("got 0 bytes"));
        assert!(check_device_id(&"x".repeat(65)).unwrap_err().contains("got 65 bytes"));
        assert!(check_device_id(&"é".repeat(33)).unwrap_err().contains("got 66 bytes"));
        assert!(check_device_id("PM\n1").unwrap_err().contains("control character"));
        assert!(check_device_id("PM\u{1b}[2J").unwrap_err().contains("at byte 2"));
    }
}
