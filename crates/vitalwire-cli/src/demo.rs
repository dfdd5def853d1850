//! `vitalwire demo`: a host and several simulated patient monitors over loopback TCP, plus a
//! rogue device with a key the host does not trust.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use vitalwire::trust_store::unix_millis;
use vitalwire::*;

use crate::blocking::Link;
use crate::monitor::{describe, PatientMonitor};

/// What the host reports to the main thread.
enum HostEvent {
    Connected { device: String, profile: Profile, suite: CipherSuite, key: Fingerprint },
    Frame { device: String, channel: u8, payload: bytes::Bytes },
    Ended { device: String, outcome: String, frames: u64 },
    Security(SecurityEvent),
}

pub struct DemoOptions {
    pub devices: usize,
    pub frames: u32,
    pub interval_ms: u64,
    pub quiet: bool,
    pub rogue: bool,
}

struct Provisioned {
    id: String,
    profile: Profile,
    suite: CipherSuite,
    keys: Keypair,
}

#[derive(Default)]
struct Row {
    profile_suite: String,
    numerics: u64,
    waveform: u64,
    alarms: u64,
    outcome: String,
}

pub fn run(opts: DemoOptions) -> Result<(), String> {
    let err = |e: KeyError| e.to_string();
    let host_keys = Keypair::generate().map_err(err)?;
    let psk = Psk::from_bytes(*Keypair::generate().map_err(err)?.private().expose_secret());
    let psk_id = b"factory-batch-7".to_vec();

    // Provision the devices (one profile each in turn, alternating suites) and register each
    // key in the host's trust store, as a factory would.
    let mut devices = Vec::new();
    let mut psks = StaticPskDirectory::new();
    psks.add(&psk_id, psk.clone());
    let mut allowlist = TrustList::new();
    for n in 0..opts.devices {
        let profile = Profile::ALL[n % Profile::ALL.len()];
        let suite = CipherSuite::ALL[(n + n / Profile::ALL.len()) % CipherSuite::ALL.len()];
        let keys = Keypair::generate().map_err(err)?;
        let id = format!("PM-{:04}", n + 1);
        allowlist.add(*keys.public(), &id, "demo bed", unix_millis());
        devices.push(Provisioned { id, profile, suite, keys });
    }

    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("vitalwire demo: host listening on {addr}, host key {}", host_keys.public().fingerprint());

    let (events_tx, events_rx) = mpsc::channel();
    let psks: Arc<dyn PskDirectory> = Arc::new(psks);
    let trust: Arc<dyn TrustPolicy> = Arc::new(TrustStore::in_memory(allowlist));
    let params = SessionParams { max_frame_len: 4096, rekey_interval: 64, ..SessionParams::default() };
    let expected = devices.len() + usize::from(opts.rogue);
    let host_public = *host_keys.public();
    let host = thread::spawn({
        let events_tx = events_tx.clone();
        move || {
            let mut workers = Vec::new();
            for _ in 0..expected {
                let Ok((stream, _)) = listener.accept() else { break };
                let config = ResponderConfig::new(host_keys.clone(), trust.clone())
                    .params(params)
                    .psk_directory(psks.clone());
                let events_tx = events_tx.clone();
                workers.push(thread::spawn(move || serve(stream, config, events_tx)));
            }
            for w in workers {
                let _ = w.join();
            }
        }
    });
    drop(events_tx);

    let mut clients = Vec::new();
    for d in devices {
        let identity = DeviceIdentity {
            device_id: d.id.clone(),
            model: "VW-Sim Patient Monitor".into(),
            firmware: env!("CARGO_PKG_VERSION").into(),
            max_frame_len: 4096,
        };
        let mut config = InitiatorConfig::new(d.profile, d.keys.clone(), identity).suite(d.suite);
        config = match d.profile {
            Profile::Ik | Profile::Kk => config.host_key(host_public),
            Profile::XxPsk3 => config.psk(&psk_id, psk.clone()).pin_host_keys([host_public]),
            _ => config.pin_host_keys([host_public]),
        };
        let frames = opts.frames;
        let interval = Duration::from_millis(opts.interval_ms);
        let seed =
            d.id.bytes()
                .fold(0x9E37_79B9u32, |a, b| (a ^ b as u32).wrapping_mul(0x0100_0193).rotate_left(13));
        clients.push(thread::spawn(move || run_device(addr, config, frames, interval, seed)));
    }
    let rogue = opts.rogue.then(|| {
        thread::spawn(move || -> Result<String, String> {
            // A device whose key was never registered: it knows the host key, so it tries IK.
            let keys = Keypair::generate().map_err(|e| e.to_string())?;
            let config =
                InitiatorConfig::new(Profile::Ik, keys, DeviceIdentity::new("ROGUE-1")).host_key(host_public);
            match run_device(addr, config, 1, Duration::ZERO, 1) {
                Ok(()) => Err("the rogue device was admitted".into()),
                Err(e) => Ok(e),
            }
        })
    });

    let mut rows: Vec<(String, Row)> = Vec::new();
    let mut alerts = 0;
    for event in events_rx {
        match event {
            HostEvent::Connected { device, profile, suite, key } => {
                println!("[host] {device} connected: {profile}, {suite}, device key {key}");
                let profile_suite = format!("{profile}/{}", suite_short(suite));
                rows.push((device, Row { profile_suite, ..Row::default() }));
            }
            HostEvent::Frame { device, channel, payload } => {
                if let Some((_, row)) = rows.iter_mut().find(|r| r.0 == device) {
                    match channel {
                        1 => row.numerics += 1,
                        2 => row.waveform += 1,
                        _ => row.alarms += 1,
                    }
                }
                if !opts.quiet {
                    println!("[host] {device} {}", describe(channel, &payload));
                }
            }
            HostEvent::Ended { device, outcome, frames } => {
                println!("[host] {device} session ended: {outcome} after {frames} frames");
                if let Some((_, row)) = rows.iter_mut().find(|r| r.0 == device) {
                    row.outcome = outcome;
                }
            }
            HostEvent::Security(e) => {
                if e.severity >= Severity::Warning {
                    alerts += 1;
                }
                // Routine events (established, rekeyed) only when not quiet.
                if e.severity >= Severity::Warning || !opts.quiet {
                    println!("[event] {}", e.to_json_line());
                }
            }
        }
    }
    let _ = host.join();
    let mut device_errors = Vec::new();
    for c in clients {
        match c.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => device_errors.push(e),
            Err(_) => device_errors.push("device thread panicked".into()),
        }
    }
    let rogue_outcome = match rogue.map(|r| r.join()) {
        None => None,
        Some(Ok(Ok(refusal))) => Some(refusal),
        Some(Ok(Err(e))) => return Err(e),
        Some(Err(_)) => return Err("rogue thread panicked".into()),
    };

    rows.sort_by(|a, b| a.0.cmp(&b.0));
    println!();
    println!(
        "{:<9} {:<18} {:>9} {:>9} {:>7}  end of session",
        "device", "profile/suite", "numerics", "waveform", "alarms"
    );
    for (device, r) in &rows {
        println!(
            "{device:<9} {:<18} {:>9} {:>9} {:>7}  {}",
            r.profile_suite, r.numerics, r.waveform, r.alarms, r.outcome
        );
    }
    if let Some(refusal) = &rogue_outcome {
        println!(
            "{:<9} {:<18} {:>9} {:>9} {:>7}  rejected: {refusal}",
            "ROGUE-1", "IK (unknown key)", 0, 0, 0
        );
    }
    println!("security events at warning or above: {alerts}");
    if !device_errors.is_empty() {
        return Err(format!("device errors: {}", device_errors.join("; ")));
    }
    let complete = rows.iter().filter(|r| r.1.outcome == "closed by device (normal)").count();
    if complete != opts.devices {
        return Err(format!("only {complete} of {} devices completed their session", opts.devices));
    }
    Ok(())
}

fn suite_short(s: CipherSuite) -> &'static str {
    match s {
        CipherSuite::ChaChaPolyBlake2s => "ChaChaPoly",
        _ => "AESGCM",
    }
}

/// The host's side of one connection.
fn serve(stream: TcpStream, config: ResponderConfig, events: mpsc::Sender<HostEvent>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut link = Link::new(stream);
    let forward = |e: SecurityEvent| drop(events.send(HostEvent::Security(e)));
    let Ok(mut hs) = Handshake::responder(config) else { return };
    let result = link.handshake(&mut hs);
    while let Some(e) = hs.poll_event(Timestamp(unix_millis())) {
        forward(e);
    }
    if result.is_err() {
        return; // the events say why
    }
    let Ok(mut session) = hs.into_session() else { return };
    link.start_session(&session);
    let device = session.peer_identity().map(|i| i.device_id.clone()).unwrap_or_default();
    let _ = events.send(HostEvent::Connected {
        device: device.clone(),
        profile: session.profile(),
        suite: session.suite(),
        key: session.remote_static().fingerprint(),
    });
    let outcome = loop {
        let step = link.receive(&mut session);
        while let Some(e) = session.poll_event(Timestamp(unix_millis())) {
            forward(e);
        }
        match step {
            Ok(Some(Incoming::Data { channel, payload })) => {
                let _ = events.send(HostEvent::Frame { device: device.clone(), channel, payload });
            }
            Ok(Some(_)) => {}
            Ok(None) => break "closed by device (normal)".to_string(),
            Err(e) => break format!("error: {e}"),
        }
    };
    let _ = events.send(HostEvent::Ended { device, outcome, frames: session.stats().frames_received });
}

/// A simulated patient monitor: handshake, stream vitals, close.
fn run_device(
    addr: SocketAddr,
    config: InitiatorConfig,
    frames: u32,
    interval: Duration,
    seed: u32,
) -> Result<(), String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).ok();
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut link = Link::new(stream);
    let mut hs = Handshake::initiator(config).map_err(|e| e.to_string())?;
    link.handshake(&mut hs).map_err(|e| e.to_string())?;
    let mut session = hs.into_session().map_err(|e| e.to_string())?;
    link.start_session(&session);
    let mut monitor = PatientMonitor::new(seed);
    for tick in 0..frames {
        for (channel, payload) in monitor.tick(tick) {
            session.seal_data(channel, &payload, link.send_buf()).map_err(|e| e.to_string())?;
        }
        link.flush().map_err(|e| e.to_string())?;
        if !interval.is_zero() {
            thread::sleep(interval);
        }
    }
    session.close(CloseCode::NORMAL, link.send_buf()).map_err(|e| e.to_string())?;
    link.flush().map_err(|e| e.to_string())?;
    // Wait for the host's CLOSE, then end the stream.
    loop {
        match link.receive(&mut session) {
            Ok(Some(Incoming::Closed(_))) | Ok(None) => break,
            Ok(Some(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let _ = link.get_mut().shutdown(Shutdown::Write);
    Ok(())
}
