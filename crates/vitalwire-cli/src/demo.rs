//! `vitalwire demo`: a host and several simulated patient monitors over loopback TCP, plus
//! three rogues: a device with a key the host never registered, a registered device whose
//! frame is tampered with in flight, and one whose frame is replayed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use vitalwire::hello::MAX_HANDSHAKE_FRAME_LEN;
use vitalwire::*;
use vitalwire_tokio::{ClientConfig, ClientEvent, DeviceClient, FrameCodec, Host, HostConfig};

use crate::monitor::{describe, PatientMonitor};

pub struct DemoOptions {
    pub devices: usize,
    pub frames: u32,
    pub interval_ms: u64,
    pub quiet: bool,
    pub rogue: bool,
}

#[derive(Default)]
struct Row {
    profile_suite: String,
    numerics: u64,
    waveform: u64,
    alarms: u64,
    outcome: String,
}

const ROGUE_UNKNOWN: &str = "ROGUE-UNKNOWN";
const ROGUE_TAMPER: &str = "ROGUE-TAMPER";
const ROGUE_REPLAY: &str = "ROGUE-REPLAY";

pub async fn run(opts: DemoOptions) -> Result<(), String> {
    let err = |e: KeyError| e.to_string();
    let host_keys = Keypair::generate().map_err(err)?;
    let host_public = *host_keys.public();
    let psk = Psk::from_bytes(*Keypair::generate().map_err(err)?.private().expose_secret());
    let psk_id = b"factory-batch-7".to_vec();

    // Factory provisioning: a key per device, registered in the host's trust store.
    let mut allowlist = TrustList::new();
    let mut devices = Vec::new();
    for n in 0..opts.devices {
        let profile = Profile::ALL[n % Profile::ALL.len()];
        let suite = CipherSuite::ALL[(n + n / Profile::ALL.len()) % CipherSuite::ALL.len()];
        let keys = Keypair::generate().map_err(err)?;
        let id = format!("PM-{:04}", n + 1);
        allowlist.add(*keys.public(), &id, "demo bed", vitalwire_tokio::host::now_ts().0);
        devices.push((id, profile, suite, keys));
    }
    // Two registered keys that will misbehave on the wire, one that was never registered.
    let tamper_keys = Keypair::generate().map_err(err)?;
    let replay_keys = Keypair::generate().map_err(err)?;
    allowlist.add(*tamper_keys.public(), ROGUE_TAMPER, "compromised link", 0);
    allowlist.add(*replay_keys.public(), ROGUE_REPLAY, "compromised link", 0);
    let trust = Arc::new(TrustStore::in_memory(allowlist));
    let mut psks = StaticPskDirectory::new();
    psks.add(&psk_id, psk.clone());
    let psks: Arc<dyn PskDirectory> = Arc::new(psks);
    let policy: Arc<dyn TrustPolicy> = trust.clone();
    let params = SessionParams { max_frame_len: 4096, rekey_interval: 64, ..SessionParams::default() };
    let mut config = HostConfig::new(move || {
        ResponderConfig::new(host_keys.clone(), policy.clone()).params(params).psk_directory(psks.clone())
    });
    config.trust = Some(trust.clone());
    let (host, mut telemetry, mut events) = Host::new(config);
    let listener =
        TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("vitalwire demo: host listening on {addr}, host key {}", host_public.fingerprint());
    let h = host.clone();
    tokio::spawn(async move { h.serve_tcp(listener).await });

    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut clients = Vec::new();
    for (id, profile, suite, keys) in devices {
        rows.insert(
            id.clone(),
            Row { profile_suite: format!("{profile}/{}", suite_short(suite)), ..Row::default() },
        );
        let identity = DeviceIdentity {
            device_id: id.clone(),
            model: "VW-Sim Patient Monitor".into(),
            firmware: env!("CARGO_PKG_VERSION").into(),
            max_frame_len: 4096,
        };
        let (psk, psk_id) = (psk.clone(), psk_id.clone());
        let mut config = ClientConfig::new(addr.to_string(), move || {
            let c = InitiatorConfig::new(profile, keys.clone(), identity.clone()).suite(suite);
            match profile {
                Profile::Ik | Profile::Kk => c.host_key(host_public),
                Profile::XxPsk3 => c.psk(&psk_id, psk.clone()).pin_host_keys([host_public]),
                _ => c.pin_host_keys([host_public]),
            }
        });
        config.max_attempts = Some(3);
        let (frames, interval) = (opts.frames, Duration::from_millis(opts.interval_ms));
        clients.push(tokio::spawn(run_device(config, id, frames, interval)));
    }
    let rogues = opts.rogue.then(|| {
        tokio::spawn(async move {
            let unknown = rogue_unknown(addr, host_public).await;
            let tamper = rogue_tamper(addr, host_public, tamper_keys).await;
            let replay = rogue_replay(addr, host_public, replay_keys).await;
            [(ROGUE_UNKNOWN, unknown), (ROGUE_TAMPER, tamper), (ROGUE_REPLAY, replay)]
        })
    });

    // Collect until every device is done.
    let mut alerts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut device_errors = Vec::new();
    let mut remaining = clients.len();
    let mut clients = clients.into_iter();
    let mut next_client = clients.next();
    loop {
        tokio::select! {
            Some(t) = telemetry.recv() => {
                if let Some(row) = rows.get_mut(&t.device_id) {
                    match t.channel {
                        1 => row.numerics += 1,
                        2 => row.waveform += 1,
                        _ => row.alarms += 1,
                    }
                }
                if !opts.quiet {
                    println!("[host] {} {}", t.device_id, describe(t.channel, &t.payload));
                }
            }
            Some(e) = events.recv() => record(&e, &mut rows, &mut alerts, opts.quiet),
            done = async { next_client.as_mut().expect("checked").await }, if next_client.is_some() => {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => device_errors.push(e),
                    Err(_) => device_errors.push("device task failed".into()),
                }
                remaining -= 1;
                next_client = clients.next();
            }
            _ = tokio::time::sleep(Duration::from_millis(300)), if remaining == 0 => break,
        }
    }
    let rogue_results = match rogues {
        Some(r) => r.await.map_err(|_| "rogue task failed".to_string())?.to_vec(),
        None => Vec::new(),
    };
    // Let the host report the rogues' fate, then close down.
    tokio::time::sleep(Duration::from_millis(200)).await;
    host.shutdown().await;
    while let Ok(e) = events.try_recv() {
        record(&e, &mut rows, &mut alerts, opts.quiet);
    }
    while let Ok(t) = telemetry.try_recv() {
        if let Some(row) = rows.get_mut(&t.device_id) {
            row.numerics += u64::from(t.channel == 1);
        }
    }

    println!();
    println!(
        "{:<14} {:<18} {:>9} {:>9} {:>7}  end of session",
        "device", "profile/suite", "numerics", "waveform", "alarms"
    );
    for (device, r) in &rows {
        println!(
            "{device:<14} {:<18} {:>9} {:>9} {:>7}  {}",
            r.profile_suite, r.numerics, r.waveform, r.alarms, r.outcome
        );
    }
    for (name, what) in &rogue_results {
        let host_saw = alerts.get(*name).map(|v| v.join(", ")).unwrap_or_else(|| "-".into());
        println!("{name:<14} {:<18} {:>9} {:>9} {:>7}  rejected: {what}; host: {host_saw}", "rogue", 0, 0, 0);
    }
    let total_alerts: usize = alerts.values().map(Vec::len).sum();
    println!("security events at warning or above: {total_alerts}");
    if !device_errors.is_empty() {
        return Err(format!("device errors: {}", device_errors.join("; ")));
    }
    let complete = rows.values().filter(|r| r.outcome == "closed by device (normal)").count();
    if complete != opts.devices {
        return Err(format!("only {complete} of {} devices completed their session", opts.devices));
    }
    if opts.rogue {
        for name in [ROGUE_UNKNOWN, ROGUE_TAMPER, ROGUE_REPLAY] {
            if !alerts.contains_key(name) {
                return Err(format!("the host did not report {name}"));
            }
        }
    }
    Ok(())
}

fn record(
    e: &SecurityEvent,
    rows: &mut BTreeMap<String, Row>,
    alerts: &mut BTreeMap<String, Vec<String>>,
    quiet: bool,
) {
    let device = e.device_id.clone().unwrap_or_default();
    if let EventKind::SessionClosed { code, by_peer: true } = e.kind {
        if let Some(row) = rows.get_mut(&device) {
            row.outcome = if code == CloseCode::NORMAL {
                "closed by device (normal)".into()
            } else {
                format!("closed by device ({code})")
            };
        }
    }
    if e.severity >= Severity::Warning {
        println!("[event] {}", e.to_json_line());
        let what = match e.kind {
            EventKind::UnknownPeer => "unknown_peer".to_string(),
            EventKind::AuthenticationFailure => "authentication_failure".to_string(),
            EventKind::HandshakeFailed { .. } => "handshake_failed".to_string(),
            other => format!("{other:?}"),
        };
        alerts.entry(device).or_default().push(what);
    } else if !quiet
        || matches!(e.kind, EventKind::SessionEstablished { .. } | EventKind::SessionClosed { .. })
    {
        // `--quiet` still shows connections and session ends (and everything at warning or
        // above, above); it leaves out the frames and the other informational events.
        println!("[event] {}", e.to_json_line());
    }
}

fn suite_short(s: CipherSuite) -> &'static str {
    match s {
        CipherSuite::ChaChaPolyBlake2s => "ChaChaPoly",
        _ => "AESGCM",
    }
}

async fn run_device(config: ClientConfig, id: String, frames: u32, interval: Duration) -> Result<(), String> {
    let mut client = DeviceClient::start(config);
    loop {
        match client.next_event().await {
            Some(ClientEvent::Connected { .. }) => break,
            Some(ClientEvent::Stopped { reason }) => return Err(format!("{id}: {reason}")),
            Some(_) => {}
            None => return Err(format!("{id}: client ended")),
        }
    }
    let seed =
        id.bytes().fold(0x9E37_79B9u32, |a, b| (a ^ b as u32).wrapping_mul(0x0100_0193).rotate_left(13));
    let mut monitor = PatientMonitor::new(seed);
    for tick in 0..frames {
        for (channel, payload) in monitor.tick(tick) {
            client.send(channel, payload).await.map_err(|e| e.to_string())?;
        }
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
    }
    client.close().await;
    Ok(())
}

/// A raw connection for the rogues: handshake, then the session, with the frame bytes under
/// the rogue's control.
async fn raw_session(
    addr: SocketAddr,
    config: InitiatorConfig,
) -> Result<(Framed<TcpStream, FrameCodec>, Session), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut framed = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_LEN));
    let mut hs = Handshake::initiator(config).map_err(|e| e.to_string())?;
    let mut out = BytesMut::new();
    while !hs.is_finished() {
        while hs.wants_write() {
            hs.write_message(&mut out).map_err(|e| e.to_string())?;
            framed.send(out.split().freeze()).await.map_err(|e| e.to_string())?;
        }
        if hs.is_finished() {
            break;
        }
        match framed.next().await {
            Some(Ok(f)) => hs.read_message(&f).map_err(|e| e.to_string())?,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("connection closed by host".into()),
        }
    }
    let session = hs.into_session().map_err(|e| e.to_string())?;
    framed.codec_mut().set_max_frame_len(session.max_frame_len());
    Ok((framed, session))
}

/// What the host answered after the rogue's last frame.
async fn host_answer(framed: &mut Framed<TcpStream, FrameCodec>, session: &mut Session) -> String {
    match tokio::time::timeout(Duration::from_secs(3), framed.next()).await {
        Ok(Some(Ok(f))) => match session.open(f) {
            Ok(Incoming::Closed(code)) => format!("host closed the session: {code}"),
            other => format!("host answered {other:?}"),
        },
        _ => "connection dropped".into(),
    }
}

async fn rogue_unknown(addr: SocketAddr, host_key: PublicKey) -> String {
    let keys = match Keypair::generate() {
        Ok(k) => k,
        Err(e) => return e.to_string(),
    };
    let config =
        InitiatorConfig::new(Profile::Ik, keys, DeviceIdentity::new(ROGUE_UNKNOWN)).host_key(host_key);
    match raw_session(addr, config).await {
        Ok(_) => "ADMITTED (this is a bug)".into(),
        Err(e) => e,
    }
}

async fn rogue_tamper(addr: SocketAddr, host_key: PublicKey, keys: Keypair) -> String {
    let config =
        InitiatorConfig::new(Profile::Ik, keys, DeviceIdentity::new(ROGUE_TAMPER)).host_key(host_key);
    let Ok((mut framed, mut session)) = raw_session(addr, config).await else { return "no session".into() };
    let mut out = BytesMut::new();
    let _ = session.seal_data(1, b"HR=72;SpO2=98", &mut out);
    // A bit flipped in flight.
    let last = out.len() - 5;
    out[last] ^= 0x20;
    let _ = framed.send(out.split().freeze()).await;
    format!("tampered frame: {}", host_answer(&mut framed, &mut session).await)
}

async fn rogue_replay(addr: SocketAddr, host_key: PublicKey, keys: Keypair) -> String {
    let config =
        InitiatorConfig::new(Profile::Ik, keys, DeviceIdentity::new(ROGUE_REPLAY)).host_key(host_key);
    let Ok((mut framed, mut session)) = raw_session(addr, config).await else { return "no session".into() };
    let mut out = BytesMut::new();
    let _ = session.seal_data(3, b"ALARM: HR 200", &mut out);
    let frame = out.split().freeze();
    let _ = framed.send(frame.clone()).await;
    let _ = framed.send(frame).await; // the same frame again
    format!("replayed frame: {}", host_answer(&mut framed, &mut session).await)
}
