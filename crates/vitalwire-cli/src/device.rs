//! `vitalwire device`: a simulated patient monitor on TCP or UDP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use vitalwire::datagram::DatagramConfig;
use vitalwire::keyfile;
use vitalwire::{CipherSuite, DeviceIdentity, InitiatorConfig, Profile};
use vitalwire_tokio::udp::UdpDevice;
use vitalwire_tokio::{ClientConfig, ClientEvent, DeviceClient};

use crate::monitor::PatientMonitor;

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
}

pub async fn run(opts: DeviceOptions) -> Result<(), String> {
    let keys = keyfile::read_private_key(&opts.key).map_err(|e| e.to_string())?;
    let host_key = keyfile::read_public_key(&opts.host_key).map_err(|e| e.to_string())?;
    if !opts.rate.is_finite() || opts.rate <= 0.0 || opts.rate > 1000.0 {
        return Err("--rate must be between 0 and 1000 ticks per second".into());
    }
    let identity = DeviceIdentity {
        device_id: opts.id.clone(),
        model: "VW-Sim Patient Monitor".into(),
        firmware: env!("CARGO_PKG_VERSION").into(),
        max_frame_len: u16::MAX,
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
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = 0u32;
    if opts.udp {
        let mut dev =
            UdpDevice::connect(opts.connect, make(), DatagramConfig::default(), Duration::from_secs(15))
                .await
                .map_err(|e| format!("cannot establish a session: {e}"))?;
        eprintln!("vitalwire device {}: session up (UDP)", opts.id);
        while deadline.is_none_or(|d| tokio::time::Instant::now() < d) {
            for (channel, payload) in monitor.tick(tick) {
                dev.send(channel, &payload).await.map_err(|e| e.to_string())?;
            }
            tick += 1;
            dev.run_for(period).await.map_err(|e| e.to_string())?;
        }
        return Ok(());
    }
    let mut config = ClientConfig::new(opts.connect.to_string(), make);
    config.max_attempts = Some(20);
    let mut client = DeviceClient::start(config);
    let mut interval = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break;
                }
                for (channel, payload) in monitor.tick(tick) {
                    client.send(channel, payload).await.map_err(|e| e.to_string())?;
                }
                tick += 1;
            }
            event = client.next_event() => match event {
                Some(ClientEvent::Connected { attempt }) => eprintln!("vitalwire device {}: session up (attempt {attempt})", opts.id),
                Some(ClientEvent::Disconnected { reason, retry_in }) => {
                    eprintln!("vitalwire device {}: disconnected ({reason}); retrying in {retry_in:?}", opts.id)
                }
                Some(ClientEvent::Stopped { reason }) => return Err(reason),
                Some(ClientEvent::Security(e)) => eprintln!("{}", e.to_json_line()),
                Some(_) => {}
                None => return Err("client stopped".into()),
            }
        }
    }
    client.close().await;
    Ok(())
}
