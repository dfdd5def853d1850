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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    CloseCode, Error, EventAggregator, EventKind, Fingerprint, Incoming, Limit, ResponderConfig,
    SecurityEvent, TimerConfig, Timestamp, TrustPolicy,
};

use crate::admission::HalfOpen;
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
    /// Most handshakes in progress at once (default 256).
    pub max_half_open: usize,
    /// Most established sessions (default 10,000).
    pub max_sessions: usize,
    /// Time allowed for a handshake (default 5 s).
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
            max_half_open: 256,
            max_sessions: 10_000,
            handshake_timeout: Duration::from_secs(5),
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
            self.deliver(e);
        }
        while let Some(summary) = agg.poll_summary(now) {
            self.deliver(summary);
        }
    }

    fn deliver(&self, e: SecurityEvent) {
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
            self.deliver(summary);
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
    /// connection tasks to finish.
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
    if *stop.borrow() {
        return;
    }
    let mut framed = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_LEN));
    let Some(hs) = crate::admission::handshake(&shared, &mut framed, source).await else { return };
    let Ok(mut session) = hs.into_session() else { return };
    let mut out = BytesMut::new();
    if shared.counters.sessions.load(Ordering::Relaxed) >= shared.config.max_sessions {
        shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
        shared.source_event(EventKind::LimitExceeded { limit: Limit::Sessions }, source);
        let _ = session.close(CloseCode::GOING_AWAY, &mut out);
        let _ = write_all(&shared, &mut framed, &mut out, source).await;
        return;
    }
    let _open = Gauge::up(&shared.counters.sessions);
    shared.counters.sessions_total.fetch_add(1, Ordering::Relaxed);
    framed.codec_mut().set_max_frame_len(session.max_frame_len());
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let device_id = session.peer_identity().map(|i| i.device_id.clone()).unwrap_or_default();
    let peer = session.remote_static().fingerprint();
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
