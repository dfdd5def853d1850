//! `vitalwire host`: a gateway on TCP and/or UDP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UdpSocket};
use vitalwire::keyfile;
use vitalwire::{ResponderConfig, SessionParams, Severity, TrustPolicy, TrustStore};
use vitalwire_tokio::host::now_ts;
use vitalwire_tokio::{Host, HostConfig};

use crate::output::{telemetry_json, Sink};

pub struct HostOptions {
    pub key: PathBuf,
    pub trust: PathBuf,
    pub tcp: Option<SocketAddr>,
    pub udp: Option<SocketAddr>,
    pub telemetry: String,
    pub events: String,
    pub status: bool,
    pub pairing: bool,
    pub duration: Option<Duration>,
    pub handshake_burst: u32,
    pub handshake_rate: f64,
    pub max_half_open: usize,
}

pub async fn run(opts: HostOptions) -> Result<(), String> {
    if opts.tcp.is_none() && opts.udp.is_none() {
        return Err("give --tcp and/or --udp".into());
    }
    let keys = keyfile::read_private_key(&opts.key).map_err(|e| e.to_string())?;
    let store = Arc::new(TrustStore::open(&opts.trust).map_err(|e| e.to_string())?);
    let mut telemetry_out = Sink::open(&opts.telemetry, false)?;
    let mut events_out = Sink::open(&opts.events, true)?;
    let policy: Arc<dyn TrustPolicy> = store.clone();
    let pairing = opts.pairing;
    let mut config = HostConfig::new(move || {
        ResponderConfig::new(keys.clone(), policy.clone())
            .params(SessionParams::default())
            .allow_pairing(pairing)
    });
    config.trust = Some(store.clone());
    if opts.pairing {
        // Pairing requests are shown on stderr and confirmed on stdin (crate::pairing).
        let (hook, prompt) = crate::pairing::host_prompt(store.clone());
        config.pairing = Some(hook);
        tokio::spawn(prompt);
    }
    config.handshake_burst = opts.handshake_burst;
    config.handshake_rate = opts.handshake_rate;
    config.max_half_open = opts.max_half_open;
    let (host, mut telemetry, mut events) = Host::new(config);
    if let Some(addr) = opts.tcp {
        let listener =
            TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on TCP {addr}: {e}"))?;
        eprintln!("vitalwire host: TCP {}", listener.local_addr().map_err(|e| e.to_string())?);
        let h = host.clone();
        tokio::spawn(async move { h.serve_tcp(listener).await });
    }
    if let Some(addr) = opts.udp {
        let socket = UdpSocket::bind(addr).await.map_err(|e| format!("cannot bind UDP {addr}: {e}"))?;
        eprintln!("vitalwire host: UDP {}", socket.local_addr().map_err(|e| e.to_string())?);
        let h = host.clone();
        tokio::spawn(async move { vitalwire_tokio::udp::serve_udp(&h, socket).await });
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_frames = 0;
    let mut alerts = 0u64;
    let stop = async {
        match opts.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(t) = telemetry.recv() => telemetry_out.line(&telemetry_json(&t, now_ts().0)),
            Some(e) = events.recv() => {
                if e.severity >= Severity::Warning {
                    alerts += 1;
                }
                events_out.line(&e.to_json_line());
            }
            _ = tick.tick() => {
                let s = host.stats();
                if opts.status {
                    eprint!(
                        "\r[{:>5}s] sessions {:>5} | handshaking {:>3} | frames/s {:>7} | total {:>9} | rejected {:>6} | alerts {:>5} ",
                        started.elapsed().as_secs(), s.sessions, s.half_open, s.frames - last_frames, s.frames, s.rejected, alerts
                    );
                }
                last_frames = s.frames;
                let _ = store.flush();
            }
        }
    }
    if opts.status {
        eprintln!();
    }
    eprintln!("vitalwire host: shutting down (closing every session)");
    host.shutdown().await;
    while let Ok(t) = telemetry.try_recv() {
        telemetry_out.line(&telemetry_json(&t, now_ts().0));
    }
    while let Ok(e) = events.try_recv() {
        events_out.line(&e.to_json_line());
    }
    Ok(())
}
