//! `vitalwire demo`: a host and several simulated patient monitors over loopback TCP.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use vitalwire::*;

use crate::blocking::Link;
use crate::monitor::{describe, PatientMonitor};

/// What the host reports to the main thread.
enum HostEvent {
    Connected { device: String, profile: Profile, suite: CipherSuite, key: KeyId },
    Frame { device: String, channel: u8, payload: bytes::Bytes },
    Ended { device: String, outcome: String, frames: u64 },
    Failed { peer: String, error: String },
}

pub struct DemoOptions {
    pub devices: usize,
    pub frames: u32,
    pub interval_ms: u64,
    pub quiet: bool,
}

struct Provisioned {
    id: String,
    profile: Profile,
    suite: CipherSuite,
    keys: Keypair,
}

pub fn run(opts: DemoOptions) -> Result<(), String> {
    let host_keys = Keypair::generate().map_err(|e| e.to_string())?;
    let psk =
        Psk::from_bytes(Keypair::generate().map_err(|e| e.to_string())?.private().expose_secret().to_owned());
    let psk_id = b"factory-batch-7".to_vec();

    // Provision the devices: one profile each in turn, alternating suites.
    let mut devices = Vec::new();
    let mut psks = StaticPskDirectory::new();
    psks.add(&psk_id, psk.clone());
    let mut allowlist = TrustList::new();
    for n in 0..opts.devices {
        let profile = Profile::ALL[n % Profile::ALL.len()];
        let suite = CipherSuite::ALL[(n + n / Profile::ALL.len()) % CipherSuite::ALL.len()];
        let keys = Keypair::generate().map_err(|e| e.to_string())?;
        allowlist.add(*keys.public(), &format!("PM-{:04}", n + 1), "demo bed", 0);
        devices.push(Provisioned { id: format!("PM-{:04}", n + 1), profile, suite, keys });
    }

    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("vitalwire demo: host listening on {addr} (host key {:?})", host_keys.public().key_id());

    let (events_tx, events_rx) = mpsc::channel();
    let psks: Arc<dyn PskDirectory> = Arc::new(psks);
    let trust: Arc<dyn TrustPolicy> = Arc::new(TrustStore::in_memory(allowlist));
    let params = SessionParams { max_frame_len: 4096, rekey_interval: 64 };
    let expected = devices.len();
    let host_public = *host_keys.public();
    let host = thread::spawn({
        let events_tx = events_tx.clone();
        move || {
            let mut workers = Vec::new();
            for _ in 0..expected {
                let Ok((stream, peer)) = listener.accept() else {
                    break;
                };
                let config = ResponderConfig::new(host_keys.clone(), trust.clone())
                    .params(params)
                    .psk_directory(psks.clone());
                let events_tx = events_tx.clone();
                workers.push(thread::spawn(move || serve(stream, peer.to_string(), config, events_tx)));
            }
            for w in workers {
                let _ = w.join();
            }
        }
    });
    drop(events_tx);

    let mut clients = Vec::new();
    for d in devices {
        let config = {
            let identity = DeviceIdentity {
                device_id: d.id.clone(),
                model: "VW-Sim Patient Monitor".into(),
                firmware: env!("CARGO_PKG_VERSION").into(),
                max_frame_len: 4096,
            };
            let mut c = InitiatorConfig::new(d.profile, d.keys.clone(), identity).suite(d.suite);
            c = match d.profile {
                Profile::Ik | Profile::Kk => c.host_key(host_public),
                Profile::XxPsk3 => c.psk(&psk_id, psk.clone()).pin_host_keys([host_public]),
                _ => c.pin_host_keys([host_public]),
            };
            c
        };
        let frames = opts.frames;
        let interval = Duration::from_millis(opts.interval_ms);
        let seed =
            d.id.bytes()
                .fold(0x9E37_79B9u32, |a, b| (a ^ b as u32).wrapping_mul(0x0100_0193).rotate_left(13));
        clients.push(thread::spawn(move || run_device(addr, config, frames, interval, seed)));
    }

    let mut summary: Vec<(String, String, u64, u64, u64, String)> = Vec::new();
    for event in events_rx {
        match event {
            HostEvent::Connected { device, profile, suite, key } => {
                println!("[host] {device} connected: {profile}, {suite}, device key {key:?}");
                summary.push((device, format!("{profile}/{}", suite_short(suite)), 0, 0, 0, String::new()));
            }
            HostEvent::Frame { device, channel, payload } => {
                if let Some(row) = summary.iter_mut().find(|r| r.0 == device) {
                    match channel {
                        1 => row.2 += 1,
                        2 => row.3 += 1,
                        _ => row.4 += 1,
                    }
                }
                if !opts.quiet {
                    println!("[host] {device} {}", describe(channel, &payload));
                }
            }
            HostEvent::Ended { device, outcome, frames } => {
                println!("[host] {device} session ended: {outcome} after {frames} frames");
                if let Some(row) = summary.iter_mut().find(|r| r.0 == device) {
                    row.5 = outcome;
                }
            }
            HostEvent::Failed { peer, error } => {
                println!("[host] connection from {peer} failed: {error}")
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

    summary.sort();
    println!();
    println!(
        "{:<9} {:<18} {:>9} {:>9} {:>7}  end of session",
        "device", "profile/suite", "numerics", "waveform", "alarms"
    );
    for (device, ps, num, wave, alarms, outcome) in &summary {
        println!("{device:<9} {ps:<18} {num:>9} {wave:>9} {alarms:>7}  {outcome}");
    }
    if !device_errors.is_empty() {
        return Err(format!("device errors: {}", device_errors.join("; ")));
    }
    let complete = summary.iter().filter(|r| r.5 == "closed by device (normal)").count();
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
fn serve(stream: TcpStream, peer: String, config: ResponderConfig, events: mpsc::Sender<HostEvent>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut link = Link::new(stream);
    let hs = match Handshake::responder(config) {
        Ok(h) => h,
        Err(e) => return drop(events.send(HostEvent::Failed { peer, error: e.to_string() })),
    };
    let mut session = match link.handshake(hs) {
        Ok(s) => s,
        Err(e) => return drop(events.send(HostEvent::Failed { peer, error: e.to_string() })),
    };
    let device = session.peer_identity().map(|i| i.device_id.clone()).unwrap_or_default();
    let _ = events.send(HostEvent::Connected {
        device: device.clone(),
        profile: session.profile(),
        suite: session.suite(),
        key: session.remote_static().key_id(),
    });
    let outcome = loop {
        match link.receive(&mut session) {
            Ok(Some(Incoming::Data { channel, payload })) => {
                let _ = events.send(HostEvent::Frame { device: device.clone(), channel, payload });
            }
            Ok(Some(Incoming::Closed(code))) => {
                // Keep reading until the device's end of stream.
                let _ = code;
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
    addr: std::net::SocketAddr,
    config: InitiatorConfig,
    frames: u32,
    interval: Duration,
    seed: u32,
) -> Result<(), String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).ok();
    let mut link = Link::new(stream);
    let hs = Handshake::initiator(config).map_err(|e| e.to_string())?;
    let mut session = link.handshake(hs).map_err(|e| e.to_string())?;
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
            Ok(Some(Incoming::Closed(_))) => break,
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    let _ = link.get_mut().shutdown(Shutdown::Write);
    Ok(())
}
