//! The host: terminates device sessions on TCP (or any `AsyncRead + AsyncWrite`: a serial
//! port, a BLE L2CAP channel) and, in [`crate::udp`], on UDP.
//!
//! Each connection is one task. In front of the Diffie-Hellman work sit a per-source rate
//! limit and a cap on concurrent half-open handshakes; the handshake has a deadline; the frame
//! length is checked before any allocation (the codec); a peer that stops reading is cut off by
//! a write timeout, one that stops writing by the session's dead-peer timer. Received
//! telemetry goes to the application through a bounded channel, so a slow consumer slows the
//! devices down (TCP backpressure) instead of losing frames.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::timeout;
use tokio_util::codec::Framed;
use tokio_util::task::TaskTracker;
use vitalwire::hello::MAX_HANDSHAKE_FRAME_LEN;
use vitalwire::{
    CloseCode, Error, EventKind, Fingerprint, Handshake, HandshakeError, Incoming, Limit, ResponderConfig,
    SecurityEvent, Timer, TimerConfig, Timestamp, TrustPolicy,
};

use crate::codec::{FrameCodec, LinkError};
use crate::limits::RateLimiter;

/// The wall clock as a vitalwire timestamp (milliseconds since the Unix epoch).
pub fn now_ts() -> Timestamp {
    Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0))
}

/// Resolves once the shutdown flag is set.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped before this future completes.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Builds the responder configuration of each handshake.
pub type ResponderFactory = Arc<dyn Fn() -> ResponderConfig + Send + Sync>;

/// Settings of a [`Host`]. Every limit has a default suited to a hospital gateway.
#[derive(Clone)]
pub struct HostConfig {
    /// The responder configuration of each handshake (keys, trust policy, parameters).
    pub responder: ResponderFactory,
    /// The trust policy to re-check open sessions against after [`Host::trust_changed`].
    pub trust: Option<Arc<dyn TrustPolicy>>,
    /// Called for each pairing session on TCP/streams (spec §12.4) with the code to show the
    /// operator; the session stays open until the request is decided (default: none, and
    /// pairing sessions wait for the device to close them).
    pub pairing: Option<PairingHook>,
    /// Most handshakes in progress at once (default 256).
    pub max_half_open: usize,
    /// Most established sessions (default 10,000).
    pub max_sessions: usize,
    /// Time allowed for a handshake (default 5 s).
    pub handshake_timeout: Duration,
    /// Handshakes a source address may start at once (default 20).
    pub handshake_burst: u32,
    /// Handshakes per second a source address may start after its burst (default 10).
    pub handshake_rate: f64,
    /// Session timers (keepalive, dead peer, rekey by time, lifetime).
    pub timers: TimerConfig,
    /// Telemetry items buffered for the application (default 4096).
    pub telemetry_buffer: usize,
    /// Security events buffered for the application (default 4096; more are counted as dropped).
    pub event_buffer: usize,
    /// Time a peer gets to read what the host writes (default 10 s).
    pub write_timeout: Duration,
    /// UDP: half-open handshakes above which HELLOs must carry a cookie (default 64).
    pub cookie_threshold: usize,
}

impl HostConfig {
    /// Defaults around a responder factory.
    pub fn new(responder: impl Fn() -> ResponderConfig + Send + Sync + 'static) -> Self {
        HostConfig {
            responder: Arc::new(responder),
            trust: None,
            pairing: None,
            max_half_open: 256,
            max_sessions: 10_000,
            handshake_timeout: Duration::from_secs(5),
            handshake_burst: 20,
            handshake_rate: 10.0,
            timers: TimerConfig::default(),
            telemetry_buffer: 4096,
            event_buffer: 4096,
            write_timeout: Duration::from_secs(10),
            cookie_threshold: 64,
        }
    }
}

/// Receives the pairing requests of a [`Host`] ([`HostConfig::pairing`]).
pub type PairingHook = Arc<dyn Fn(PairingRequest) + Send + Sync>;

/// A pairing session waiting for the host operator's decision. Show [`PairingRequest::code`]
/// with the device id and fingerprint; when the operator confirms that the device shows the
/// same code, add [`PairingRequest::key`] to the trust store and call
/// [`PairingRequest::decide`] with `true`: the session ends with CLOSE `NORMAL`, which tells
/// the device it was admitted. `false`, or dropping the request, ends it with CLOSE
/// `UNAUTHORIZED`.
#[derive(Debug)]
pub struct PairingRequest {
    /// The host's number for the session.
    pub session: u64,
    /// The device id the device presented.
    pub device_id: String,
    /// The device key's fingerprint.
    pub peer: Fingerprint,
    /// The device's static key.
    pub key: vitalwire::PublicKey,
    /// The code both ends show.
    pub code: vitalwire::PairingCode,
    decision: tokio::sync::oneshot::Sender<bool>,
}

impl PairingRequest {
    /// Ends the pairing session: `true` admitted (CLOSE `NORMAL`), `false` refused.
    pub fn decide(self, admitted: bool) {
        let _ = self.decision.send(admitted);
    }

    /// Whether the pairing session is still open (the device has not gone away).
    pub fn is_open(&self) -> bool {
        !self.decision.is_closed()
    }
}

/// One received application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Telemetry {
    /// The host's number for the session (unique while the host runs).
    pub session: u64,
    /// The device id from the handshake.
    pub device_id: String,
    /// The device key's fingerprint.
    pub peer: Fingerprint,
    /// The channel.
    pub channel: u8,
    /// The payload.
    pub payload: Bytes,
}

/// Counters of a host, readable at any time.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub sessions: AtomicUsize,
    pub half_open: AtomicUsize,
    pub sessions_total: AtomicU64,
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    pub rejected: AtomicU64,
    pub events_dropped: AtomicU64,
}

/// A snapshot of a host's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Sessions open now.
    pub sessions: usize,
    /// Handshakes in progress now.
    pub half_open: usize,
    /// Sessions established since start.
    pub sessions_total: u64,
    /// DATA messages delivered to the application.
    pub frames: u64,
    /// Payload bytes delivered.
    pub bytes: u64,
    /// Connections and packets refused (limits, failed handshakes, untrusted devices).
    pub rejected: u64,
    /// Security events dropped because the application did not drain them.
    pub events_dropped: u64,
}

pub(crate) struct Shared {
    pub config: HostConfig,
    pub counters: Counters,
    pub half_open: Arc<Semaphore>,
    pub limiter: Mutex<RateLimiter>,
    pub telemetry: mpsc::Sender<Telemetry>,
    pub events: mpsc::Sender<SecurityEvent>,
    pub shutdown: watch::Sender<bool>,
    pub trust_epoch: watch::Sender<u64>,
    pub tasks: TaskTracker,
    pub next_session: AtomicU64,
}

impl Shared {
    pub fn event(&self, e: SecurityEvent) {
        if self.events.try_send(e).is_err() {
            self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn host_event(&self, kind: EventKind) {
        self.event(SecurityEvent::new(kind, now_ts(), None, None));
    }

    pub fn allow_handshake(&self, source: Option<IpAddr>) -> bool {
        let Some(ip) = source else { return true };
        let allowed = self.limiter.lock().unwrap_or_else(|p| p.into_inner()).allow(ip, Instant::now());
        if !allowed {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            self.host_event(EventKind::LimitExceeded { limit: Limit::HandshakeRate });
        }
        allowed
    }
}

/// A host serving devices. Cheap to clone; all clones are the same host.
#[derive(Clone)]
pub struct Host {
    pub(crate) shared: Arc<Shared>,
}

impl Host {
    /// A host, the receiver of the telemetry it collects, and the receiver of its security
    /// events.
    pub fn new(config: HostConfig) -> (Host, mpsc::Receiver<Telemetry>, mpsc::Receiver<SecurityEvent>) {
        let (telemetry, telemetry_rx) = mpsc::channel(config.telemetry_buffer.max(1));
        let (events, events_rx) = mpsc::channel(config.event_buffer.max(1));
        let shared = Shared {
            half_open: Arc::new(Semaphore::new(config.max_half_open)),
            limiter: Mutex::new(RateLimiter::new(config.handshake_burst, config.handshake_rate, 65_536)),
            config,
            counters: Counters::default(),
            telemetry,
            events,
            shutdown: watch::channel(false).0,
            trust_epoch: watch::channel(0).0,
            tasks: TaskTracker::new(),
            next_session: AtomicU64::new(1),
        };
        (Host { shared: Arc::new(shared) }, telemetry_rx, events_rx)
    }

    /// Accepts TCP connections until [`Host::shutdown`].
    pub async fn serve_tcp(&self, listener: TcpListener) -> std::io::Result<()> {
        let mut stop = self.shared.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = crate::host::stopped(&mut stop) => return Ok(()),
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        // Out of file descriptors and the like: back off briefly, keep serving.
                        Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue; }
                    };
                    let _ = stream.set_nodelay(true);
                    self.serve_stream(stream, Some(peer.ip()));
                }
            }
        }
    }

    /// Serves one connection on any byte stream (TCP, serial, BLE L2CAP). `source` is the
    /// address the rate limiter counts against, when there is one.
    pub fn serve_stream<S>(&self, stream: S, source: Option<IpAddr>)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let shared = self.shared.clone();
        self.shared.tasks.spawn(async move { run_connection(shared, stream, source).await });
    }

    /// Re-checks every open session against the trust policy (call after a revocation): the
    /// ones no longer trusted are closed with `UNAUTHORIZED`.
    pub fn trust_changed(&self) {
        self.shared.trust_epoch.send_modify(|e| *e += 1);
    }

    /// Closes every session with a CLOSE `GOING_AWAY`, stops accepting, and waits for the
    /// connection tasks to finish.
    pub async fn shutdown(&self) {
        let _ = self.shared.shutdown.send(true);
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    /// The counters now.
    pub fn stats(&self) -> HostStats {
        let c = &self.shared.counters;
        HostStats {
            sessions: c.sessions.load(Ordering::Relaxed),
            half_open: c.half_open.load(Ordering::Relaxed),
            sessions_total: c.sessions_total.load(Ordering::Relaxed),
            frames: c.frames.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            events_dropped: c.events_dropped.load(Ordering::Relaxed),
        }
    }
}

/// Decrements a counter when dropped.
struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    fn up(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Gauge(c)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn write_all<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    framed: &mut Framed<S, FrameCodec>,
    out: &mut BytesMut,
) -> bool {
    if out.is_empty() {
        return true;
    }
    let bytes = out.split().freeze();
    match timeout(shared.config.write_timeout, framed.send(bytes)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            shared.host_event(EventKind::LimitExceeded { limit: Limit::WriteTimeout });
            false
        }
    }
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, FrameCodec>,
    hs: &mut Handshake,
) -> Result<(), Error> {
    let mut out = BytesMut::new();
    loop {
        while hs.wants_write() {
            let r = hs.write_message(&mut out);
            let _ = framed.send(out.split().freeze()).await;
            r?;
            if let Some(e) = hs.error() {
                return Err(e);
            }
        }
        if hs.is_finished() {
            return Ok(());
        }
        match framed.next().await {
            Some(Ok(frame)) => {
                if let Err(e) = hs.read_message(&frame) {
                    if hs.wants_write() {
                        let _ = hs.write_message(&mut out);
                        let _ = framed.send(out.split().freeze()).await;
                    }
                    return Err(e);
                }
            }
            Some(Err(e)) => return Err(e.into_protocol()),
            None => return Err(Error::Truncated),
        }
    }
}

/// Handles one item from the framed stream; returns whether the connection is done.
async fn on_frame(
    shared: &Shared,
    session: &mut vitalwire::Session,
    frame: Option<Result<BytesMut, LinkError>>,
    id: u64,
    device_id: &str,
    peer: Fingerprint,
) -> bool {
    match frame {
        Some(Ok(frame)) => match session.open(frame) {
            Ok(Incoming::Data { channel, payload }) => {
                shared.counters.frames.fetch_add(1, Ordering::Relaxed);
                shared.counters.bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
                let item =
                    Telemetry { session: id, device_id: device_id.to_string(), peer, channel, payload };
                // Backpressure: wait for the application rather than drop.
                shared.telemetry.send(item).await.is_err()
            }
            Ok(_) => false,
            Err(e) => e.is_fatal(),
        },
        Some(Err(LinkError::Protocol(Error::Decode(e)))) => {
            session.handle_decode_error(e);
            true
        }
        Some(Err(_)) => true,
        None => {
            let _ = session.handle_eof();
            true
        }
    }
}

async fn run_connection<S>(shared: Arc<Shared>, stream: S, source: Option<IpAddr>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut stop = shared.shutdown.subscribe();
    if *stop.borrow() || !shared.allow_handshake(source) {
        return;
    }
    let Ok(permit) = shared.half_open.clone().try_acquire_owned() else {
        shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
        shared.host_event(EventKind::LimitExceeded { limit: Limit::HalfOpenHandshakes });
        return;
    };
    let half_open = Gauge::up(&shared.counters.half_open);
    let mut framed = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_LEN));
    let Ok(mut hs) = Handshake::responder((shared.config.responder)()) else { return };
    let result = match timeout(shared.config.handshake_timeout, handshake(&mut framed, &mut hs)).await {
        Ok(r) => r,
        Err(_) => {
            shared.event(SecurityEvent::new(
                EventKind::TimerExpired { timer: Timer::Handshake },
                now_ts(),
                None,
                None,
            ));
            Err(Error::Handshake(HandshakeError::Timeout))
        }
    };
    while let Some(e) = hs.poll_event(now_ts()) {
        shared.event(e);
    }
    drop(half_open);
    drop(permit);
    if result.is_err() {
        shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Ok(mut session) = hs.into_session() else { return };
    let mut out = BytesMut::new();
    if shared.counters.sessions.load(Ordering::Relaxed) >= shared.config.max_sessions {
        shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
        shared.host_event(EventKind::LimitExceeded { limit: Limit::Sessions });
        let _ = session.close(CloseCode::GOING_AWAY, &mut out);
        let _ = write_all(&shared, &mut framed, &mut out).await;
        return;
    }
    let _open = Gauge::up(&shared.counters.sessions);
    shared.counters.sessions_total.fetch_add(1, Ordering::Relaxed);
    framed.codec_mut().set_max_frame_len(session.max_frame_len());
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let device_id = session.peer_identity().map(|i| i.device_id.clone()).unwrap_or_default();
    let peer = session.remote_static().fingerprint();
    // A pairing session waits for the operator's decision (HostConfig::pairing).
    let mut pairing = None;
    if let (Some(hook), Some(code)) = (&shared.config.pairing, session.pairing_code()) {
        let (decision, rx) = tokio::sync::oneshot::channel();
        let key = *session.remote_static();
        hook(PairingRequest { session: id, device_id: device_id.clone(), peer, key, code, decision });
        pairing = Some(rx);
    }
    session.set_timers(shared.config.timers);
    let _ = session.handle_timeout(now_ts());
    let mut trust = shared.trust_epoch.subscribe();
    let started = Instant::now();
    let started_ts = now_ts();
    // One timer, re-armed only when the session's deadline moves.
    let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
    let timer = tokio::time::sleep_until(far());
    tokio::pin!(timer);
    let mut armed: Option<Timestamp> = None;
    loop {
        let deadline = session.poll_timeout();
        if deadline != armed {
            armed = deadline;
            let at = deadline.map_or_else(far, |t| {
                tokio::time::Instant::from_std(
                    started + Duration::from_millis(t.0.saturating_sub(started_ts.0)),
                )
            });
            timer.as_mut().reset(at);
        }
        let mut done = false;
        tokio::select! {
            _ = crate::host::stopped(&mut stop) => {
                let _ = session.close(CloseCode::GOING_AWAY, &mut out);
                done = true;
            }
            _ = trust.changed() => {
                if let Some(policy) = &shared.config.trust {
                    done = session.recheck(policy.as_ref()).is_err();
                }
            }
            admitted = async {
                match pairing.as_mut() {
                    // A dropped request is a refusal.
                    Some(decision) => decision.await.unwrap_or(false),
                    None => std::future::pending().await,
                }
            }, if pairing.is_some() => {
                pairing = None;
                let code = if admitted { CloseCode::NORMAL } else { CloseCode::UNAUTHORIZED };
                let _ = session.close(code, &mut out);
            }
            _ = &mut timer => {
                armed = None;
                done = session.handle_timeout(now_ts()).is_err();
            }
            frame = framed.next() => {
                done = on_frame(&shared, &mut session, frame, id, &device_id, peer).await;
                // Take every frame already buffered before going back to select.
                for _ in 0..256 {
                    if done {
                        break;
                    }
                    match framed.next().now_or_never() {
                        Some(frame) => done = on_frame(&shared, &mut session, frame, id, &device_id, peer).await,
                        None => break,
                    }
                }
            }
        }
        session.poll_transmit(&mut out);
        while let Some(e) = session.poll_event(now_ts()) {
            shared.event(e);
        }
        let written = write_all(&shared, &mut framed, &mut out).await;
        if done || !written || session.is_closed() {
            break;
        }
    }
    while let Some(e) = session.poll_event(now_ts()) {
        shared.event(e);
    }
}
