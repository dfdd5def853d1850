//! The host's session timers across wall-clock steps (issue #14.6).
//!
//! `clock::step_wall_clock_for_testing_only` steps what the wall clock reads for the whole
//! process, as NTP or an operator stepping the system clock would; this file is its own test
//! process so no other test sees the step. The device side is driven by hand on its own
//! clock-free session (timers off), so only the host's timers are under test:
//!
//! - a backward step must not stop the host's keepalives (the timer arithmetic on a wall clock
//!   re-arms a deadline that is already past, spins, and never sends a PING again);
//! - a forward step must not expire the session (on a wall clock the dead-peer timer fires at
//!   once).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_util::codec::Framed;
use vitalwire::hello::MAX_HANDSHAKE_FRAME_LEN;
use vitalwire::*;
use vitalwire_tokio::clock::step_wall_clock_for_testing_only;
use vitalwire_tokio::*;

const KEEPALIVE_MS: u64 = 200;

fn host_keys() -> Keypair {
    Keypair::from_private(PrivateKey::from_bytes([0x11; 32]))
}

/// A device session over TCP, driven by hand (no timers, no clock).
struct Device {
    framed: Framed<TcpStream, FrameCodec>,
    session: Session,
    out: BytesMut,
}

impl Device {
    async fn connect(addr: std::net::SocketAddr) -> Device {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut framed = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_LEN));
        let keys = Keypair::from_private(PrivateKey::from_bytes([0x42; 32]));
        let config = InitiatorConfig::new(Profile::Ik, keys, DeviceIdentity::new("PM-CLOCK"))
            .host_key(*host_keys().public());
        let mut hs = Handshake::initiator(config).unwrap();
        let mut out = BytesMut::new();
        while !hs.is_finished() {
            while hs.wants_write() {
                hs.write_message(&mut out).unwrap();
                framed.send(out.split().freeze()).await.unwrap();
            }
            if hs.is_finished() {
                break;
            }
            let frame = framed.next().await.expect("handshake reply").unwrap();
            hs.read_message(&frame).unwrap();
        }
        let mut session = hs.into_session().unwrap();
        framed.codec_mut().set_max_frame_len(session.max_frame_len());
        session.set_timers(TimerConfig::DISABLED);
        Device { framed, session, out }
    }

    /// Sends one DATA every 50 ms for `period`, reading what the host sends meanwhile;
    /// returns the PINGs received, or the reason the session ended.
    async fn talk_for(&mut self, period: Duration) -> Result<usize, String> {
        let end = Instant::now() + period;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut pings = 0;
        while Instant::now() < end {
            tokio::select! {
                _ = tick.tick() => {
                    self.session.seal_message(1, b"hr=72", &mut self.out).map_err(|e| e.to_string())?;
                }
                frame = self.framed.next() => match frame {
                    Some(Ok(frame)) => match self.session.open(frame) {
                        Ok(Incoming::Ping) => pings += 1,
                        Ok(Incoming::Closed(code)) => return Err(format!("closed by host: {code}")),
                        Ok(_) => {}
                        Err(e) => return Err(e.to_string()),
                    },
                    other => return Err(format!("link ended: {other:?}")),
                },
            }
            self.session.poll_transmit(&mut self.out);
            if !self.out.is_empty() {
                self.framed.send(self.out.split().freeze()).await.map_err(|e| e.to_string())?;
            }
        }
        Ok(pings)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_timers_ignore_wall_clock_steps() {
    // Start the monotonic clock before any step (as a real process does at start-up).
    let _ = clock::monotonic();
    let mut config = HostConfig::new(|| ResponderConfig::new(host_keys(), Arc::new(AllowAnyPeerInsecure)));
    config.timers = TimerConfig {
        keepalive_ms: Some(KEEPALIVE_MS),
        dead_peer_ms: Some(5_000),
        rekey_after_ms: None,
        max_lifetime_ms: None,
    };
    let (host, mut telemetry, _events) = Host::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h = host.clone();
    tokio::spawn(async move { h.serve_tcp(listener).await });
    // The host's buffer is drained throughout, so backpressure plays no part.
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let r = received.clone();
    tokio::spawn(async move {
        while telemetry.recv().await.is_some() {
            r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });

    // Backward step of an hour, once the session runs.
    let mut device = timeout(Duration::from_secs(10), Device::connect(addr)).await.expect("handshake");
    device.talk_for(Duration::from_millis(500)).await.expect("session up before the step");
    step_wall_clock_for_testing_only(-3_600_000);
    // The host's keepalive is due every 200 ms of silence in its direction; over 2 s a host
    // whose timers still run sends several. (Only "at least 2" is asserted: a loaded machine
    // may delay timers, but not stop them.)
    let pings = device.talk_for(Duration::from_secs(2)).await.expect("session survives a backward step");
    assert!(pings >= 2, "the host stopped sending keepalives after a backward clock step ({pings} PINGs)");
    step_wall_clock_for_testing_only(3_600_000);

    // Forward step of a day: the dead-peer timer (5 s) must not fire.
    step_wall_clock_for_testing_only(86_400_000);
    let before = received.load(std::sync::atomic::Ordering::Relaxed);
    // Longer than several keepalive periods: the host's timer runs (and on a wall clock would
    // find the peer silent for a day).
    let pings = device.talk_for(Duration::from_secs(2)).await.expect("session survives a forward step");
    assert!(pings >= 2, "keepalives after a forward step: {pings}");
    let delivered = timeout(Duration::from_secs(10), async {
        while received.load(std::sync::atomic::Ordering::Relaxed) < before + 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(delivered.is_ok(), "telemetry after the forward step did not arrive");
    assert_eq!(host.stats().sessions, 1);
    step_wall_clock_for_testing_only(-86_400_000);
    host.shutdown().await;
}

/// Event stamps, and with them the event aggregator's intervals (which run on those stamps),
/// come from the monotonic clock: a backward wall-clock step of an hour neither sends them back
/// in time nor freezes the per-source windows for that hour.
#[test]
fn event_stamps_ignore_wall_clock_steps() {
    let before = vitalwire_tokio::host::now_ts();
    vitalwire_tokio::clock::step_wall_clock_for_testing_only(-3_600_000);
    let after = vitalwire_tokio::host::now_ts();
    vitalwire_tokio::clock::step_wall_clock_for_testing_only(3_600_000);
    assert!(after >= before, "an event stamp went back in time: {before:?} then {after:?}");
    assert!(after.0 - before.0 < 60_000, "{before:?} then {after:?}");
}
