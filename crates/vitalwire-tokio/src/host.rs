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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_util::codec::Framed;
use tokio_util::task::TaskTracker;
use vitalwire::hello::MAX_HANDSHAKE_FRAME_LEN;
use vitalwire::{
    CloseCode, Error, EventAggregator, EventKind, Fingerprint, HandshakeError, Incoming, Limit,
    ResponderConfig, SecurityEvent, TimerConfig, Timestamp, TrustPolicy,
};

use crate::admission::HalfOpen;
use crate::clock;
use crate::codec::{FrameCodec, LinkError};
use crate::limits::RateLimiter;

/// The time the adapters stamp events with: [`clock::monotonic`] (the wall clock read once,
/// plus monotonic time since), so that the event aggregator's intervals, which run on these
/// stamps, are neither frozen nor skipped by a wall-clock step (issue #14.6).
pub fn now_ts() -> Timestamp {
    clock::monotonic()
}

/// Resolves once the shutdown flag is set.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped before this future completes.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// How long, once the host stops, a received message may still wait for room in the
/// application's telemetry buffer.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

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
    /// Most established sessions (default 10,000): a TCP session is refused when TCP and UDP
    /// sessions together reach it; a UDP socket also holds its own sessions to it.
    pub max_sessions: usize,
    /// Time allowed for a handshake, key confirmation included (default 5 s, spec §7.4).
    pub handshake_timeout: Duration,
    /// Time a new connection gets to deliver its first complete frame, the HELLO (default 2 s;
    /// see [`crate::admission`]).
    pub hello_timeout: Duration,
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
    /// Security events of one kind from one source address logged per
    /// `event_interval` before the rest are only counted, in one `events_suppressed` event per
    /// interval (default 10; see [`vitalwire::EventAggregator`]).
    pub events_per_interval: u32,
    /// The aggregation interval (default 10 s).
    pub event_interval: Duration,
    /// Most event lines (events and per-source summaries) per interval, all sources together,
    /// before the rest are only counted (default 1,000): a flood from many addresses cannot
    /// flood the log either.
    pub max_event_lines: u64,
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
            handshake_timeout: Duration::from_millis(vitalwire::handshake::DEFAULT_HANDSHAKE_TIMEOUT_MS),
            hello_timeout: Duration::from_secs(2),
            handshake_burst: 20,
            handshake_rate: 10.0,
            timers: TimerConfig::default(),
            telemetry_buffer: 4096,
            event_buffer: 4096,
            write_timeout: Duration::from_secs(10),
            cookie_threshold: 64,
            events_per_interval: vitalwire::events::AGGREGATE_PER_INTERVAL,
            event_interval: Duration::from_millis(vitalwire::events::AGGREGATE_INTERVAL_MS),
            max_event_lines: vitalwire::events::AGGREGATE_MAX_LINES,
        }
    }

    /// Refuses settings with which the host would admit no device (or whose meaning is
    /// undefined): zero half-open handshakes, sessions or burst, and a handshake rate that is
    /// not a positive finite number. The message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_half_open == 0 {
            return Err("max_half_open is 0: no handshake could ever start".into());
        }
        if self.max_sessions == 0 {
            return Err("max_sessions is 0: no session could ever open".into());
        }
        if self.handshake_burst == 0 {
            return Err("handshake_burst is 0: no source could ever start a handshake".into());
        }
        if !(self.handshake_rate.is_finite() && self.handshake_rate > 0.0) {
            return Err(format!(
                "handshake_rate is {}: it must be a positive, finite number of handshakes per second",
                self.handshake_rate
            ));
        }
        Ok(())
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
///
/// The TCP tasks raise and lower `sessions` and `half_open` one by one; the UDP loop owns its
/// own pair and stores its counts there. The two are never mixed: a store from one into a
/// gauge the other decrements would wrap it.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub sessions: AtomicUsize,
    pub half_open: AtomicUsize,
    pub udp_sessions: AtomicUsize,
    pub udp_half_open: AtomicUsize,
    pub sessions_total: AtomicU64,
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    pub rejected: AtomicU64,
    pub events_dropped: AtomicU64,
    pub undelivered: AtomicU64,
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
    /// DATA messages handed to the application's telemetry channel (not necessarily written
    /// anywhere yet: the application counts what it writes).
    pub frames: u64,
    /// Payload bytes handed to the application.
    pub bytes: u64,
    /// Connections and packets refused (limits, failed handshakes, untrusted devices).
    pub rejected: u64,
    /// Security events dropped because the application did not drain them.
    pub events_dropped: u64,
    /// DATA messages received but not handed to the application because the host stopped
    /// while they waited for room in its telemetry buffer.
    pub undelivered: u64,
}

pub(crate) struct Shared {
    pub config: HostConfig,
    pub counters: Counters,
    pub half_open: HalfOpen,
    pub limiter: Mutex<RateLimiter>,
    pub aggregator: Mutex<EventAggregator>,
    pub ticker_started: AtomicBool,
    pub telemetry: mpsc::Sender<Telemetry>,
    pub events: mpsc::Sender<SecurityEvent>,
    pub shutdown: watch::Sender<bool>,
    pub trust_epoch: watch::Sender<u64>,
    pub tasks: TaskTracker,
    pub next_session: AtomicU64,
}

impl Shared {
    /// Records an event, through the aggregator (a flood from one source becomes a count).
    pub fn event(&self, e: SecurityEvent) {
        let now = e.time;
        let mut agg = self.aggregator.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = agg.admit(e) {
            self.send_event(e);
        }
        while let Some(summary) = agg.poll_summary(now) {
            self.send_event(summary);
        }
    }

    fn send_event(&self, e: SecurityEvent) {
        if self.events.try_send(e).is_err() {
            self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Emits the aggregator's summaries that are due (with `flush`: ends every interval
    /// first); returns when the next is due.
    pub fn emit_summaries(&self, flush: bool) -> Option<Timestamp> {
        let now = now_ts();
        let mut agg = self.aggregator.lock().unwrap_or_else(|p| p.into_inner());
        if flush {
            agg.flush(now);
        }
        while let Some(summary) = agg.poll_summary(now) {
            self.send_event(summary);
        }
        agg.poll_timeout()
    }

    /// An event raised by the adapter with no address to name (kept for callers outside
    /// the connection paths, which all use [`Shared::source_event`]).
    #[allow(dead_code)]
    pub fn host_event(&self, kind: EventKind) {
        self.source_event(kind, None);
    }

    /// An event raised by the adapter about a connection or packet from `source`.
    pub fn source_event(&self, kind: EventKind, source: Option<IpAddr>) {
        self.event(SecurityEvent::new(kind, now_ts(), None, None).from_source(source));
    }

    /// Sessions open now, TCP and UDP together.
    pub fn open_sessions(&self) -> usize {
        let c = &self.counters;
        c.sessions.load(Ordering::Relaxed).saturating_add(c.udp_sessions.load(Ordering::Relaxed))
    }

    /// Hands one telemetry item to the application, waiting while its buffer is full
    /// (backpressure). Once the host stops, the wait is bounded by [`STOP_GRACE`] (an
    /// application that keeps draining while it shuts down gets everything); past it the item
    /// is counted as undelivered and `false` is returned.
    pub async fn deliver(&self, item: Telemetry) -> bool {
        let item = match self.telemetry.try_send(item) {
            Ok(()) => {
                self.counters.frames.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Err(mpsc::error::TrySendError::Full(item)) => item,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.counters.undelivered.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        };
        let mut stop = self.shutdown.subscribe();
        let delivered = tokio::select! {
            biased;
            sent = self.telemetry.send(item) => sent.is_ok(),
            _ = async { stopped(&mut stop).await; tokio::time::sleep(STOP_GRACE).await } => false,
        };
        let counter = if delivered { &self.counters.frames } else { &self.counters.undelivered };
        counter.fetch_add(1, Ordering::Relaxed);
        delivered
    }

    pub fn allow_handshake(&self, source: Option<IpAddr>) -> bool {
        let Some(ip) = source else { return true };
        let allowed = self.limiter.lock().unwrap_or_else(|p| p.into_inner()).allow(ip, Instant::now());
        if !allowed {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            self.source_event(EventKind::LimitExceeded { limit: Limit::HandshakeRate }, source);
        }
        allowed
    }
}

/// Emits the event aggregator's summaries when their intervals end, until shutdown (or until
/// the host is dropped: the ticker holds only a weak reference).
pub(crate) fn start_event_ticker(shared: &Arc<Shared>) {
    if shared.ticker_started.swap(true, Ordering::Relaxed) {
        return;
    }
    let weak = Arc::downgrade(shared);
    let mut stop = shared.shutdown.subscribe();
    tokio::spawn(async move {
        loop {
            let Some(shared) = weak.upgrade() else { return };
            let next = shared.emit_summaries(false);
            drop(shared);
            let wait = next.map_or(Duration::from_secs(1), |at| {
                Duration::from_millis(at.0.saturating_sub(now_ts().0))
                    .clamp(Duration::from_millis(10), Duration::from_secs(1))
            });
            tokio::select! {
                _ = stopped(&mut stop) => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
}

/// The accept queue [`listen_tcp`] asks for (the kernel caps it, on Linux at
/// `net.core.somaxconn`, 4096 by default).
pub const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener for [`Host::serve_tcp`] with a deep accept queue ([`LISTEN_BACKLOG`]
/// rather than the usual 1024): under a connection flood, connections wait there while the
/// host catches up, instead of being dropped by the kernel (which costs an honest device a
/// SYN retransmission, a second or more).
pub fn listen_tcp(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
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
            half_open: HalfOpen::new(config.max_half_open),
            limiter: Mutex::new(RateLimiter::new(config.handshake_burst, config.handshake_rate, 65_536)),
            aggregator: Mutex::new(
                EventAggregator::new(
                    config.events_per_interval,
                    u64::try_from(config.event_interval.as_millis()).unwrap_or(u64::MAX),
                    vitalwire::events::AGGREGATE_MAX_TRACKED,
                )
                .max_lines_per_interval(config.max_event_lines),
            ),
            ticker_started: AtomicBool::new(false),
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
        start_event_ticker(&self.shared);
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
        start_event_ticker(&self.shared);
        let shared = self.shared.clone();
        self.shared.tasks.spawn(async move { run_connection(shared, stream, source).await });
    }

    /// Re-checks every open session against the trust policy (call after a revocation): the
    /// ones no longer trusted are closed with `UNAUTHORIZED`.
    pub fn trust_changed(&self) {
        self.shared.trust_epoch.send_modify(|e| *e += 1);
    }

    /// Closes every session with a CLOSE `GOING_AWAY`, stops accepting, and waits for the
    /// connection tasks and the [`crate::udp::serve_udp`] loops to finish. Keep draining the
    /// telemetry receiver meanwhile: a task waiting for room in it waits at most
    /// [`STOP_GRACE`] more, and what it then gives up on is counted in
    /// [`HostStats::undelivered`].
    pub async fn shutdown(&self) {
        let _ = self.shared.shutdown.send(true);
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        // Every connection has recorded its last events: end the aggregation intervals.
        self.shared.emit_summaries(true);
    }

    /// The counters now.
    pub fn stats(&self) -> HostStats {
        let c = &self.shared.counters;
        HostStats {
            sessions: self.shared.open_sessions(),
            half_open: c
                .half_open
                .load(Ordering::Relaxed)
                .saturating_add(c.udp_half_open.load(Ordering::Relaxed)),
            sessions_total: c.sessions_total.load(Ordering::Relaxed),
            frames: c.frames.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            events_dropped: c.events_dropped.load(Ordering::Relaxed),
            undelivered: c.undelivered.load(Ordering::Relaxed),
        }
    }
}

/// Decrements a counter when dropped.
pub(crate) struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    pub(crate) fn up(c: &'a AtomicUsize) -> Self {
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
    source: Option<IpAddr>,
) -> bool {
    if out.is_empty() {
        return true;
    }
    let bytes = out.split().freeze();
    match timeout(shared.config.write_timeout, framed.send(bytes)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            shared.source_event(EventKind::LimitExceeded { limit: Limit::WriteTimeout }, source);
            false
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
        Some(Ok(frame)) => {
            let opened = session.open(frame);
            deliver(shared, opened, id, device_id, peer).await
        }
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

/// Key confirmation (spec §4.8). IK/KK: a replayed HELLO gets as far as a finished handshake,
/// so the session counts, and is reported, only once the device's first frame authenticates
/// (before `deadline`, the handshake's); until then it is not a session.
/// Returns that first frame, opened (`None` when the handshake itself confirmed the session:
/// XX), or `Err` when the connection must end (its events recorded).
pub(crate) async fn confirm<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    framed: &mut Framed<S, FrameCodec>,
    session: &mut vitalwire::Session,
    deadline: tokio::time::Instant,
    source: Option<IpAddr>,
) -> Result<Option<Result<Incoming, Error>>, ()> {
    // The device's first frame may already be as large as the session allows.
    framed.codec_mut().set_max_frame_len(session.max_frame_len());
    if session.is_confirmed() {
        return Ok(None);
    }
    let first = match tokio::time::timeout_at(deadline, framed.next()).await {
        Ok(Some(Ok(frame))) => session.open(frame),
        Ok(Some(Err(LinkError::Protocol(Error::Decode(e))))) => Err(session.handle_decode_error(e)),
        Ok(Some(Err(_))) | Ok(None) => Err(session.handle_eof().err().unwrap_or(Error::Truncated)),
        Err(_) => {
            // The deadline has passed: the session fails as unconfirmed (NotConfirmed).
            let _ = session.handle_timeout(Timestamp(u64::MAX));
            Err(Error::Handshake(HandshakeError::NotConfirmed))
        }
    };
    if session.is_confirmed() {
        return Ok(Some(first));
    }
    while let Some(e) = session.poll_event(now_ts()) {
        shared.event(e.from_source(source));
    }
    shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
    Err(())
}

/// Hands an opened frame to the application; returns whether the connection is done.
async fn deliver(
    shared: &Shared,
    opened: Result<Incoming, Error>,
    id: u64,
    device_id: &str,
    peer: Fingerprint,
) -> bool {
    match opened {
        Ok(Incoming::Data { channel, payload }) => {
            shared.counters.bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
            let item = Telemetry { session: id, device_id: device_id.to_string(), peer, channel, payload };
            // Backpressure: wait for the application rather than drop. If the host stops
            // while this waits, the session ends (with GOING_AWAY, in `run_connection`).
            !shared.deliver(item).await
        }
        Ok(_) => false,
        Err(e) => e.is_fatal(),
    }
}

async fn run_connection<S>(shared: Arc<Shared>, stream: S, source: Option<IpAddr>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut stop = shared.shutdown.subscribe();
    // Subscribed before the handshake: a trust change while it runs (after the policy was
    // asked) still re-checks the session as soon as it is established.
    let mut trust = shared.trust_epoch.subscribe();
    if *stop.borrow() {
        return;
    }
    let mut framed = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_LEN));
    let Some((mut session, first)) = crate::admission::handshake(&shared, &mut framed, source).await else {
        return;
    };
    let mut out = BytesMut::new();
    if shared.open_sessions() >= shared.config.max_sessions {
        shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
        shared.source_event(EventKind::LimitExceeded { limit: Limit::Sessions }, source);
        let _ = session.close(CloseCode::GOING_AWAY, &mut out);
        let _ = write_all(&shared, &mut framed, &mut out, source).await;
        return;
    }
    let _open = Gauge::up(&shared.counters.sessions);
    shared.counters.sessions_total.fetch_add(1, Ordering::Relaxed);
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
    // Timers run on the monotonic clock: a wall-clock step neither fires nor freezes them.
    let _ = session.handle_timeout(clock::monotonic());
    // One timer, re-armed only when the session's deadline moves.
    let far = || clock::deadline(Timestamp(0), Timestamp(u64::MAX));
    let timer = tokio::time::sleep_until(far());
    tokio::pin!(timer);
    let mut armed: Option<Timestamp> = None;
    if let Some(first) = first {
        let done = deliver(&shared, first, id, &device_id, peer).await;
        session.poll_transmit(&mut out);
        while let Some(e) = session.poll_event(now_ts()) {
            shared.event(e.from_source(source));
        }
        if !write_all(&shared, &mut framed, &mut out, source).await || done || session.is_closed() {
            return;
        }
    }
    loop {
        let deadline = session.poll_timeout();
        if deadline != armed {
            armed = deadline;
            let at = deadline.map_or_else(far, |t| clock::deadline(clock::monotonic(), t));
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
                done = session.handle_timeout(clock::monotonic()).is_err();
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
                if done && *stop.borrow() {
                    // The host stopped while a frame waited for the application.
                    let _ = session.close(CloseCode::GOING_AWAY, &mut out);
                }
            }
        }
        session.poll_transmit(&mut out);
        while let Some(e) = session.poll_event(now_ts()) {
            shared.event(e.from_source(source));
        }
        let written = write_all(&shared, &mut framed, &mut out, source).await;
        if done || !written || session.is_closed() {
            break;
        }
    }
    while let Some(e) = session.poll_event(now_ts()) {
        shared.event(e.from_source(source));
    }
}
