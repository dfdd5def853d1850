//! A device client that keeps a session to its host: it connects, handshakes, sends the
//! application's messages, answers pings, and when the connection fails reconnects with
//! exponential backoff and jitter. Messages queued while disconnected wait (a bounded queue)
//! and go out after the next handshake; a message already written to a connection that then
//! died is not resent (use application acknowledgements where that matters).
//!
//! # When the client stops for good (spec/PROTOCOL.md §4.4, "Refusals at the device")
//!
//! - The application closes it ([`DeviceClient::close`], or drops it).
//! - Its own configuration can never work: the handshake cannot even encode this device's
//!   messages (an invalid device id, say). Retrying would fail the same way forever.
//! - The host refuses it **authenticatedly**: a CLOSE `UNAUTHORIZED` inside a session whose
//!   handshake completed and authenticated the host (IK, KK, XXpsk3, or XX with pinned host
//!   keys: [`InitiatorConfig::authenticates_host`]): an XX device the host does not admit, a
//!   device revoked during its session. Only the host's keys can produce that frame. (An
//!   unpinned XX device cannot tell the host from anyone else, so for it that CLOSE is retried
//!   like a REJECT.)
//! - The configured bound [`ClientConfig::max_attempts`] is reached.
//!
//! A REJECT is not authenticated (anyone on the path can send its three bytes), so it never
//! stops the client: each one is reported ([`ClientEvent::Refused`] and the handshake's
//! security event) and the client retries with the same capped, jittered backoff as after any
//! failed attempt. An attacker who injects REJECTs can delay a device, as one who cuts the
//! cable can, but not silence it until someone restarts it.
//!
//! Time: the core is fed [`crate::clock::monotonic`] and every sleep is armed through
//! [`crate::clock::deadline`], so a wall-clock step neither fires nor freezes a timer and the
//! core's "never" cannot overflow an `Instant`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout};
use tokio_util::codec::Framed;
use vitalwire::hello::MAX_HANDSHAKE_FRAME_LEN;
use vitalwire::{
    CloseCode, Error, Handshake, HandshakeError, Incoming, InitiatorConfig, PairingCode, PublicKey,
    RejectReason, SecurityEvent, Session, TimerConfig,
};

use crate::clock;
use crate::codec::{FrameCodec, LinkError};

/// Builds the initiator configuration of each (re)connection.
pub type InitiatorFactory = Arc<dyn Fn() -> InitiatorConfig + Send + Sync>;

/// Settings of a [`DeviceClient`].
#[derive(Clone)]
pub struct ClientConfig {
    /// The initiator configuration of each handshake.
    pub initiator: InitiatorFactory,
    /// The host address (`host:port`).
    pub addr: String,
    /// First reconnection delay (default 200 ms).
    pub initial_backoff: Duration,
    /// Largest reconnection delay (default 30 s).
    pub max_backoff: Duration,
    /// Time allowed for connect plus handshake (default 10 s).
    pub handshake_timeout: Duration,
    /// Session timers.
    pub timers: TimerConfig,
    /// Messages queued for sending (default 1024).
    pub queue: usize,
    /// Give up after this many failed connection attempts in a row, REJECTs included
    /// (default: never). A session that came up resets the count.
    pub max_attempts: Option<u32>,
    /// Time the host gets to take what the client writes (default 10 s): a host that stops
    /// reading (hung, paused, gone without a reset) is treated as a lost session, so the
    /// client reconnects instead of waiting on a full socket forever.
    pub write_timeout: Duration,
}

impl ClientConfig {
    /// Defaults for a device connecting to `addr`.
    pub fn new(
        addr: impl Into<String>,
        initiator: impl Fn() -> InitiatorConfig + Send + Sync + 'static,
    ) -> Self {
        ClientConfig {
            initiator: Arc::new(initiator),
            addr: addr.into(),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            timers: TimerConfig::default(),
            queue: 1024,
            max_attempts: None,
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

/// What happened to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A session is up.
    Connected {
        /// How many attempts it took.
        attempt: u32,
    },
    /// The session or the connection attempt ended; the client will retry after `retry_in`.
    Disconnected {
        /// Why.
        reason: String,
        /// The backoff before the next attempt.
        retry_in: Duration,
    },
    /// The host (or someone on the path: a REJECT is not authenticated) refused the
    /// handshake; the client will retry after `retry_in`.
    Refused {
        /// The reason the REJECT gave.
        reason: RejectReason,
        /// The backoff before the next attempt.
        retry_in: Duration,
    },
    /// A message from the host.
    Received {
        /// Channel.
        channel: u8,
        /// Payload.
        payload: Bytes,
    },
    /// A security event of the session.
    Security(SecurityEvent),
    /// The client stopped (closed, or gave up) and will not retry.
    Stopped {
        /// Why.
        reason: String,
    },
}

/// A running device client.
pub struct DeviceClient {
    commands: mpsc::Sender<(u8, Bytes)>,
    close: watch::Sender<bool>,
    events: mpsc::Receiver<ClientEvent>,
    task: JoinHandle<()>,
}

/// The delay before reconnection attempt `attempt` (0-based): exponential, capped, with
/// jitter uniformly in [50%, 100%] so a fleet that lost its host does not return in lockstep.
pub fn backoff(attempt: u32, initial: Duration, max: Duration, random: u32) -> Duration {
    let base = initial.saturating_mul(1u32 << attempt.min(20)).min(max);
    let factor = 0.5 + 0.5 * (random as f64 / u32::MAX as f64);
    base.mul_f64(factor)
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = vitalwire::EntropySource::fill(&mut vitalwire::OsEntropy, &mut b);
    u32::from_be_bytes(b)
}

/// The default [`ClientConfig::write_timeout`] (also used by [`PairingSession`]).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`DeviceClient::close`] lets a session flush and exchange CLOSE frames.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

impl DeviceClient {
    /// Starts the client task.
    pub fn start(config: ClientConfig) -> DeviceClient {
        let (commands, rx) = mpsc::channel(config.queue.max(1));
        let (close, close_rx) = watch::channel(false);
        let (events_tx, events) = mpsc::channel(1024);
        let task = tokio::spawn(run(config, rx, close_rx, events_tx));
        DeviceClient { commands, close, events, task }
    }

    /// Queues a message (waits while the queue is full).
    pub async fn send(&self, channel: u8, payload: impl Into<Bytes>) -> Result<(), Error> {
        self.commands.send((channel, payload.into())).await.map_err(|_| Error::Closed)
    }

    /// The next event.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// Stops the client, within a bound, and returns why it stopped. With a session up it
    /// sends what is queued, closes the session with CLOSE `NORMAL` and waits up to
    /// [`CLOSE_GRACE`] for the host's CLOSE (`"closed"`); while disconnected (connecting,
    /// handshaking or backing off) it stops at once and the queued messages are dropped (the
    /// reason says how many). Never blocks on a full queue or an unreachable host.
    pub async fn close(self) -> String {
        let DeviceClient { commands, close, mut events, mut task } = self;
        let _ = close.send(true);
        let mut reason = None;
        // Drain events meanwhile, so the task never waits to hand one over.
        let finished = timeout(CLOSE_GRACE + Duration::from_secs(1), async {
            loop {
                tokio::select! {
                    _ = &mut task => return,
                    e = events.recv() => match e {
                        Some(ClientEvent::Stopped { reason: r }) => reason = Some(r),
                        Some(_) => {}
                        None => return,
                    },
                }
            }
        })
        .await;
        if finished.is_err() {
            task.abort();
        }
        while let Ok(e) = events.try_recv() {
            if let ClientEvent::Stopped { reason: r } = e {
                reason = Some(r);
            }
        }
        drop(commands);
        reason.unwrap_or_else(|| "closed".into())
    }
}

/// How one connection attempt (and the session it may have carried) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The application closed the client.
    Closed {
        /// Messages still queued that were not sent.
        dropped: usize,
    },
    /// This side's configuration can never complete a handshake.
    Misconfigured(String),
    /// An unauthenticated REJECT.
    Refused(RejectReason),
    /// The attempt failed before a session was up (connect, timeout, handshake failure).
    Failed(String),
    /// A session was up and ended; `code` is the host's CLOSE, if it sent one.
    SessionEnded {
        /// The host's close code.
        code: Option<CloseCode>,
        /// Whether the handshake authenticated the host (so the CLOSE is the host's word).
        host_authenticated: bool,
        /// Why, for people.
        reason: String,
    },
}

/// What to do after an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Stop for good, with this reason.
    Stop(String),
    /// Try again after this delay.
    Retry(Duration),
}

/// The retry rule. `failures` counts failed attempts in a row, this one included (a session
/// that came up resets it: `SessionEnded` arrives with `failures` = 0).
fn decide(outcome: &Outcome, failures: u32, config: &ClientConfig, random: u32) -> Step {
    match outcome {
        Outcome::Closed { dropped: 0 } => return Step::Stop("closed".into()),
        Outcome::Closed { dropped } => {
            return Step::Stop(format!("closed ({dropped} queued messages not sent: no session)"))
        }
        Outcome::Misconfigured(why) => return Step::Stop(format!("invalid configuration: {why}")),
        Outcome::SessionEnded { code: Some(code), host_authenticated: true, .. }
            if *code == CloseCode::UNAUTHORIZED =>
        {
            return Step::Stop(format!("closed by host: {code}: an authenticated refusal, not retried"))
        }
        _ => {}
    }
    if let Some(max) = config.max_attempts {
        if failures >= max {
            let why = match outcome {
                Outcome::Refused(r) => format!("refused by host: {r}"),
                Outcome::Failed(why) | Outcome::SessionEnded { reason: why, .. } => why.clone(),
                _ => String::new(),
            };
            return Step::Stop(format!("giving up after {failures} failed attempts: {why}"));
        }
    }
    let n = failures.saturating_sub(1);
    Step::Retry(backoff(n, config.initial_backoff, config.max_backoff, random))
}

/// Resolves once the application asked to close (or dropped the client).
async fn close_requested(close: &mut watch::Receiver<bool>) {
    let _ = close.wait_for(|c| *c).await;
}

async fn run(
    config: ClientConfig,
    mut commands: mpsc::Receiver<(u8, Bytes)>,
    mut close: watch::Receiver<bool>,
    events: mpsc::Sender<ClientEvent>,
) {
    let mut failures = 0u32;
    let mut attempt = 0u32;
    let mut pending: Option<(u8, Bytes)> = None;
    loop {
        attempt += 1;
        let outcome =
            connect_and_serve(&config, &mut commands, &mut close, &events, &mut pending, attempt).await;
        if matches!(outcome, Outcome::SessionEnded { .. }) {
            failures = 0;
            attempt = 0;
        } else {
            failures = failures.saturating_add(1);
        }
        let retry_in = match decide(&outcome, failures, &config, random_u32()) {
            Step::Stop(reason) => {
                let _ = events.send(ClientEvent::Stopped { reason }).await;
                return;
            }
            Step::Retry(d) => d,
        };
        let event = match outcome {
            Outcome::Refused(reason) => ClientEvent::Refused { reason, retry_in },
            Outcome::Failed(reason) | Outcome::SessionEnded { reason, .. } => {
                ClientEvent::Disconnected { reason, retry_in }
            }
            Outcome::Closed { .. } | Outcome::Misconfigured(_) => unreachable!("decide stops on these"),
        };
        let _ = events.send(event).await;
        tokio::select! {
            _ = sleep(retry_in) => {}
            _ = close_requested(&mut close) => {
                let dropped = commands.len() + usize::from(pending.is_some());
                let reason = match decide(&Outcome::Closed { dropped }, 0, &config, 0) {
                    Step::Stop(r) => r,
                    Step::Retry(_) => unreachable!(),
                };
                let _ = events.send(ClientEvent::Stopped { reason }).await;
                return;
            }
        }
    }
}

/// Whether an error from writing this side's own handshake message is one no retry can fix.
fn is_local_config_error(e: &Error) -> bool {
    matches!(e, Error::Config(_) | Error::Decode(_) | Error::Key(_))
}

/// Why a handshake attempt failed.
enum SetupError {
    Local(Error),
    Remote(Error),
    Other(String),
}

impl SetupError {
    fn into_outcome(self) -> Outcome {
        match self {
            SetupError::Local(e) => Outcome::Misconfigured(e.to_string()),
            SetupError::Remote(Error::Handshake(HandshakeError::Rejected(r))) => Outcome::Refused(r),
            SetupError::Remote(e) => Outcome::Failed(e.to_string()),
            SetupError::Other(s) => Outcome::Failed(s),
        }
    }
}

type Link = Framed<TcpStream, FrameCodec>;

/// Connects and runs the handshake (no deadline of its own), forwarding its security events.
async fn establish(
    addr: &str,
    initiator: InitiatorConfig,
    events: &mpsc::Sender<ClientEvent>,
) -> Result<(Link, Session), SetupError> {
    // Configuration errors show before any byte goes out.
    let mut hs = Handshake::initiator(initiator).map_err(SetupError::Local)?;
    let stream = TcpStream::connect(addr).await.map_err(|e| SetupError::Other(format!("connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_LEN));
    let r = client_handshake(&mut framed, &mut hs).await;
    while let Some(e) = hs.poll_event(clock::monotonic()) {
        let _ = events.send(ClientEvent::Security(e)).await;
    }
    r?;
    let mut session = hs.into_session().map_err(SetupError::Remote)?;
    framed.codec_mut().set_max_frame_len(session.max_frame_len());
    let _ = session.handle_timeout(clock::monotonic());
    Ok((framed, session))
}

/// One connection.
async fn connect_and_serve(
    config: &ClientConfig,
    commands: &mut mpsc::Receiver<(u8, Bytes)>,
    close: &mut watch::Receiver<bool>,
    events: &mpsc::Sender<ClientEvent>,
    pending: &mut Option<(u8, Bytes)>,
    attempt: u32,
) -> Outcome {
    let closed_now = |commands: &mpsc::Receiver<(u8, Bytes)>, pending: &Option<(u8, Bytes)>| {
        Outcome::Closed { dropped: commands.len() + usize::from(pending.is_some()) }
    };
    if *close.borrow() {
        return closed_now(commands, pending);
    }
    let initiator = (config.initiator)();
    let host_authenticated = initiator.authenticates_host();
    let setup = timeout(config.handshake_timeout, async { establish(&config.addr, initiator, events).await });
    let (mut framed, mut session) = tokio::select! {
        r = setup => match r {
            Err(_) => return Outcome::Failed("handshake timed out".into()),
            Ok(Err(e)) => return e.into_outcome(),
            Ok(Ok(pair)) => pair,
        },
        _ = close_requested(close) => return closed_now(commands, pending),
    };
    session.set_timers(config.timers);
    let _ = session.handle_timeout(clock::monotonic());
    let _ = events.send(ClientEvent::Connected { attempt }).await;
    let mut out = BytesMut::new();
    let lost = |session: &Session, reason: String| {
        let code = match session.error() {
            Some(Error::ClosedByPeer(code)) => Some(code),
            _ => None,
        };
        Outcome::SessionEnded { code, host_authenticated, reason }
    };
    // A message taken from the queue before the last connection failed goes first.
    if let Some((ch, p)) = pending.take() {
        if let Err(e) = session.seal_message(ch, &p, &mut out) {
            if e.is_fatal() {
                *pending = Some((ch, p));
                return lost(&session, e.to_string());
            }
        }
    }
    loop {
        let deadline = session.poll_timeout().map(|t| clock::deadline(clock::monotonic(), t));
        let mut closing = false;
        tokio::select! {
            cmd = commands.recv(), if out.len() < 64 * 1024 => match cmd {
                Some((ch, payload)) => {
                    if let Err(e) = session.seal_message(ch, &payload, &mut out) {
                        if e.is_fatal() {
                            *pending = Some((ch, payload));
                            return lost(&session, e.to_string());
                        }
                    }
                }
                None => closing = true,
            },
            _ = close_requested(close) => {
                // Seal what the application already queued, then CLOSE.
                while let Ok((ch, payload)) = commands.try_recv() {
                    if session.seal_message(ch, &payload, &mut out).is_err_and(|e| e.is_fatal()) {
                        break;
                    }
                }
                closing = true;
            }
            _ = async { match deadline { Some(d) => sleep_until(d).await, None => std::future::pending().await } } => {
                if let Err(e) = session.handle_timeout(clock::monotonic()) {
                    session.poll_transmit(&mut out);
                    let _ = timeout(config.write_timeout, framed.send(out.split().freeze())).await;
                    return lost(&session, e.to_string());
                }
            }
            frame = framed.next() => match frame {
                Some(Ok(frame)) => match session.open(frame) {
                    Ok(Incoming::Data { channel, payload }) => {
                        let _ = events.send(ClientEvent::Received { channel, payload }).await;
                    }
                    Ok(Incoming::Closed(code)) => {
                        session.poll_transmit(&mut out);
                        let _ = timeout(config.write_timeout, framed.send(out.split().freeze())).await;
                        let reason = format!("closed by host: {code}");
                        return Outcome::SessionEnded { code: Some(code), host_authenticated, reason };
                    }
                    Ok(_) => {}
                    Err(e) if e.is_fatal() => {
                        session.poll_transmit(&mut out);
                        let _ = timeout(config.write_timeout, framed.send(out.split().freeze())).await;
                        return lost(&session, e.to_string());
                    }
                    Err(_) => {}
                },
                Some(Err(e)) => return lost(&session, e.to_string()),
                None => {
                    let e = session.handle_eof().err().unwrap_or(Error::Closed);
                    return lost(&session, e.to_string());
                }
            },
        }
        if closing {
            let _ = session.close(CloseCode::NORMAL, &mut out);
        }
        session.poll_transmit(&mut out);
        while let Some(e) = session.poll_event(clock::monotonic()) {
            let _ = events.send(ClientEvent::Security(e)).await;
        }
        if closing {
            // Flush and wait briefly for the host's CLOSE so nothing in flight is cut off.
            let _ = timeout(CLOSE_GRACE, async {
                if framed.send(out.split().freeze()).await.is_err() {
                    return;
                }
                while let Some(Ok(frame)) = framed.next().await {
                    if let Ok(Incoming::Closed(_)) = session.open(frame) {
                        break;
                    }
                }
            })
            .await;
            return Outcome::Closed { dropped: 0 };
        }
        if !out.is_empty() {
            match timeout(config.write_timeout, framed.send(out.split().freeze())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return lost(&session, format!("write failed: {e}")),
                Err(_) => {
                    let secs = config.write_timeout.as_secs_f64();
                    return lost(
                        &session,
                        format!("write timed out after {secs:.1} s (the host is not reading)"),
                    );
                }
            }
        }
    }
}

async fn client_handshake(framed: &mut Link, hs: &mut Handshake) -> Result<(), SetupError> {
    let mut out = BytesMut::new();
    loop {
        while hs.wants_write() {
            hs.write_message(&mut out).map_err(|e| {
                if is_local_config_error(&e) {
                    SetupError::Local(e)
                } else {
                    SetupError::Remote(e)
                }
            })?;
            framed
                .send(out.split().freeze())
                .await
                .map_err(|e| SetupError::Remote(LinkError::into_protocol(e)))?;
        }
        if hs.is_finished() {
            return Ok(());
        }
        match framed.next().await {
            Some(Ok(frame)) => hs.read_message(&frame).map_err(SetupError::Remote)?,
            Some(Err(e)) => return Err(SetupError::Remote(e.into_protocol())),
            None => return Err(SetupError::Remote(Error::Truncated)),
        }
    }
}

/// The device side of a pairing session (spec/PROTOCOL.md §12.4): both ends show a 6-digit
/// code, a person compares them, and the host admits the device when its operator confirms.
/// The session carries no application data; its end tells the device the host's decision.
pub struct PairingSession {
    framed: Link,
    session: Session,
    events: Vec<SecurityEvent>,
}

/// How a pairing ended (see [`PairingSession::confirm`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PairingOutcome {
    /// Both operators confirmed: the host has admitted this device, and the device may pin
    /// the host's key ([`PairingSession::host_key`]).
    Paired,
    /// The host's operator refused (or let the request expire): the host closed the pairing
    /// session with this code (not `NORMAL`). Nothing was stored on the host.
    RefusedByHost(CloseCode),
    /// This device's operator said the codes differ (or did not confirm). `host_admitted`:
    /// the host's operator had already confirmed, so the host's trust store has the key and
    /// an operator there should revoke it.
    NotConfirmed {
        /// Whether the host had already admitted the device.
        host_admitted: bool,
    },
}

impl PairingSession {
    /// Connects to `addr` and runs a pairing handshake (`initiator` must use `XX` or
    /// `XXpsk3`; pairing is requested here), within `limit`.
    pub async fn start(addr: &str, initiator: InitiatorConfig, limit: Duration) -> Result<Self, String> {
        let (tx, mut rx) = mpsc::channel(64);
        let initiator = initiator.request_pairing();
        let r = timeout(limit, establish(addr, initiator, &tx)).await;
        drop(tx);
        let mut events = Vec::new();
        while let Ok(ClientEvent::Security(e)) = rx.try_recv() {
            events.push(e);
        }
        let (framed, session) = match r {
            Err(_) => return Err("pairing handshake timed out".into()),
            Ok(Err(SetupError::Local(e))) => return Err(format!("invalid configuration: {e}")),
            Ok(Err(SetupError::Remote(Error::Handshake(HandshakeError::Rejected(r))))) => {
                return Err(format!("the host refused to pair: {r} (an unauthenticated REJECT)"))
            }
            Ok(Err(SetupError::Remote(e))) => return Err(e.to_string()),
            Ok(Err(SetupError::Other(e))) => return Err(e),
            Ok(Ok(pair)) => pair,
        };
        if !session.is_pairing() {
            return Err("the host did not run a pairing handshake".into());
        }
        Ok(PairingSession { framed, session, events })
    }

    /// The code to show this device's operator.
    pub fn code(&self) -> PairingCode {
        self.session.pairing_code().expect("a pairing session has a code")
    }

    /// The host's static key learned (or checked against the pins) in the handshake.
    pub fn host_key(&self) -> PublicKey {
        *self.session.remote_static()
    }

    /// Security events of the handshake and session so far (drained).
    pub fn take_events(&mut self) -> Vec<SecurityEvent> {
        while let Some(e) = self.session.poll_event(clock::monotonic()) {
            self.events.push(e);
        }
        std::mem::take(&mut self.events)
    }

    /// Keeps the session alive until both decisions are in: `operator` resolves to this
    /// device's operator's answer (codes match: `true`), the host's is its CLOSE (`NORMAL`:
    /// admitted; anything else: refused). A `false` answer closes the session with CLOSE
    /// `UNAUTHORIZED` at once. An error means the link failed before the host decided.
    pub async fn confirm(mut self, operator: impl Future<Output = bool>) -> Result<PairingOutcome, String> {
        tokio::pin!(operator);
        let mut answer: Option<bool> = None;
        let mut host: Option<CloseCode> = None;
        let mut out = BytesMut::new();
        loop {
            match (answer, host) {
                (_, Some(code)) if code != CloseCode::NORMAL => {
                    return Ok(PairingOutcome::RefusedByHost(code))
                }
                (Some(true), Some(_)) => return Ok(PairingOutcome::Paired),
                (Some(false), admitted) => {
                    if admitted.is_none() {
                        let _ = self.session.close(CloseCode::UNAUTHORIZED, &mut out);
                        self.session.poll_transmit(&mut out);
                        let _ = timeout(CLOSE_GRACE, self.framed.send(out.split().freeze())).await;
                    }
                    return Ok(PairingOutcome::NotConfirmed { host_admitted: admitted.is_some() });
                }
                _ => {}
            }
            let deadline = match host {
                None => self.session.poll_timeout().map(|t| clock::deadline(clock::monotonic(), t)),
                Some(_) => None,
            };
            tokio::select! {
                a = &mut operator, if answer.is_none() => answer = Some(a),
                _ = async { match deadline { Some(d) => sleep_until(d).await, None => std::future::pending().await } } => {
                    if let Err(e) = self.session.handle_timeout(clock::monotonic()) {
                        return Err(format!("pairing session failed: {e}"));
                    }
                }
                frame = self.framed.next(), if host.is_none() => match frame {
                    Some(Ok(frame)) => match self.session.open(frame) {
                        Ok(Incoming::Closed(code)) => host = Some(code),
                        Ok(_) => {}
                        Err(e) if e.is_fatal() => return Err(format!("pairing session failed: {e}")),
                        Err(_) => {}
                    },
                    Some(Err(e)) => return Err(format!("pairing session failed: {e}")),
                    None => return Err("the host ended the pairing session without a decision".into()),
                },
            }
            self.session.poll_transmit(&mut out);
            if !out.is_empty() {
                let sent = timeout(WRITE_TIMEOUT, self.framed.send(out.split().freeze())).await;
                if !matches!(sent, Ok(Ok(()))) && host.is_none() {
                    return Err("the link to the host failed during pairing".into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClientConfig {
        ClientConfig::new("127.0.0.1:1", || unreachable!("no handshake in these tests"))
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let i = Duration::from_millis(100);
        let m = Duration::from_secs(5);
        assert_eq!(backoff(0, i, m, u32::MAX), Duration::from_millis(100));
        assert_eq!(backoff(0, i, m, 0), Duration::from_millis(50));
        assert_eq!(backoff(3, i, m, u32::MAX), Duration::from_millis(800));
        assert_eq!(backoff(30, i, m, u32::MAX), m);
        assert!(backoff(30, i, m, 0) >= m / 2);
    }

    #[test]
    fn an_unauthenticated_reject_is_retried_with_growing_capped_jittered_backoff() {
        let c = config();
        let refused = Outcome::Refused(RejectReason::UnknownCredential);
        let mut last = Duration::ZERO;
        for failures in 1..=40 {
            match decide(&refused, failures, &c, u32::MAX) {
                Step::Retry(d) => {
                    assert!(d >= last, "backoff shrank at {failures}: {d:?} < {last:?}");
                    assert!(d <= c.max_backoff);
                    last = d;
                }
                Step::Stop(why) => panic!("a REJECT stopped the client after {failures}: {why}"),
            }
        }
        assert_eq!(last, c.max_backoff);
        // Jitter: the lowest draw is half the highest.
        assert_eq!(decide(&refused, 40, &c, 0), Step::Retry(c.max_backoff / 2));
        for reason in [RejectReason::PairingNotAllowed, RejectReason::Malformed, RejectReason::Other(200)] {
            assert!(matches!(decide(&Outcome::Refused(reason), 1, &c, 7), Step::Retry(_)));
        }
    }

    #[test]
    fn only_an_authenticated_unauthorized_close_or_a_local_error_stops_for_good() {
        let c = config();
        let ended = |code| Outcome::SessionEnded { code, host_authenticated: true, reason: "x".into() };
        // From a host the handshake did not authenticate (unpinned XX), it is only a refusal.
        let unproven = Outcome::SessionEnded {
            code: Some(CloseCode::UNAUTHORIZED),
            host_authenticated: false,
            reason: "x".into(),
        };
        assert!(matches!(decide(&unproven, 0, &c, 0), Step::Retry(_)));
        assert!(
            matches!(decide(&ended(Some(CloseCode::UNAUTHORIZED)), 0, &c, 0), Step::Stop(r) if r.contains("authenticated"))
        );
        for code in [
            None,
            Some(CloseCode::NORMAL),
            Some(CloseCode::GOING_AWAY),
            Some(CloseCode::SESSION_EXPIRED),
            Some(CloseCode::PROTOCOL_ERROR),
            Some(CloseCode(0x7777)),
        ] {
            assert!(matches!(decide(&ended(code), 0, &c, 0), Step::Retry(_)), "{code:?}");
        }
        // A session that came up and ended reconnects after the first, shortest backoff.
        assert_eq!(decide(&ended(None), 0, &c, u32::MAX), Step::Retry(c.initial_backoff));
        assert!(
            matches!(decide(&Outcome::Misconfigured("bad id".into()), 1, &c, 0), Step::Stop(r) if r.contains("bad id"))
        );
        assert!(matches!(decide(&Outcome::Failed("connect".into()), 5, &c, 0), Step::Retry(_)));
        assert_eq!(decide(&Outcome::Closed { dropped: 0 }, 0, &c, 0), Step::Stop("closed".into()));
        assert!(
            matches!(decide(&Outcome::Closed { dropped: 3 }, 0, &c, 0), Step::Stop(r) if r.contains("3 queued"))
        );
    }

    #[test]
    fn the_configured_bound_counts_refusals_and_failures_in_a_row() {
        let c = ClientConfig { max_attempts: Some(3), ..config() };
        let refused = Outcome::Refused(RejectReason::UnknownCredential);
        assert!(matches!(decide(&refused, 2, &c, 0), Step::Retry(_)));
        assert!(
            matches!(decide(&refused, 3, &c, 0), Step::Stop(r) if r.contains("giving up after 3") && r.contains("unknown credential"))
        );
        assert!(
            matches!(decide(&Outcome::Failed("connect: refused".into()), 3, &c, 0), Step::Stop(r) if r.contains("connect: refused"))
        );
    }

    #[test]
    fn local_configuration_errors_are_told_apart_from_the_peers() {
        assert!(is_local_config_error(&Error::Config("x")));
        assert!(is_local_config_error(&Error::Decode(vitalwire::DecodeError::InvalidField(1))));
        assert!(!is_local_config_error(&Error::Handshake(HandshakeError::Rejected(RejectReason::Malformed))));
        assert!(!is_local_config_error(&Error::Handshake(HandshakeError::AuthenticationFailed)));
        assert!(!is_local_config_error(&Error::Truncated));
    }
}
