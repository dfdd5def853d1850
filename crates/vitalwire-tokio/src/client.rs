//! A device client that keeps a session to its host: it connects, handshakes, sends the
//! application's messages, answers pings, and when the connection fails reconnects with
//! exponential backoff and jitter. Messages queued while disconnected wait (a bounded queue)
//! and go out after the next handshake; a message already written to a connection that then
//! died is not resent (use application acknowledgements where that matters).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout};
use tokio_util::codec::Framed;
use vitalwire::hello::MAX_HANDSHAKE_FRAME_LEN;
use vitalwire::{CloseCode, Error, Handshake, Incoming, InitiatorConfig, SecurityEvent, TimerConfig};

use crate::codec::{FrameCodec, LinkError};
use crate::host::now_ts;

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
    /// Give up after this many failed connection attempts in a row (default: never).
    pub max_attempts: Option<u32>,
    /// Keep retrying when the host refuses the handshake (a REJECT: unknown device, unsupported
    /// choice). Default false: a refusal stops the client, since retrying cannot fix it until
    /// someone changes the host's trust store or the device's configuration.
    pub retry_rejected: bool,
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
            retry_rejected: false,
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
    /// A message from the host.
    Received {
        /// Channel.
        channel: u8,
        /// Payload.
        payload: Bytes,
    },
    /// A security event of the session.
    Security(SecurityEvent),
    /// The client stopped (closed, or gave up).
    Stopped {
        /// Why.
        reason: String,
    },
}

enum Command {
    Send(u8, Bytes),
    Close,
}

/// A running device client.
pub struct DeviceClient {
    commands: mpsc::Sender<Command>,
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

impl DeviceClient {
    /// Starts the client task.
    pub fn start(config: ClientConfig) -> DeviceClient {
        let (commands, rx) = mpsc::channel(config.queue.max(1));
        let (events_tx, events) = mpsc::channel(1024);
        let task = tokio::spawn(run(config, rx, events_tx));
        DeviceClient { commands, events, task }
    }

    /// Queues a message (waits while the queue is full).
    pub async fn send(&self, channel: u8, payload: impl Into<Bytes>) -> Result<(), Error> {
        self.commands.send(Command::Send(channel, payload.into())).await.map_err(|_| Error::Closed)
    }

    /// The next event.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// Sends what is queued, closes the session with CLOSE `NORMAL` and stops.
    pub async fn close(self) {
        let _ = self.commands.send(Command::Close).await;
        let _ = self.task.await;
    }
}

async fn run(config: ClientConfig, mut commands: mpsc::Receiver<Command>, events: mpsc::Sender<ClientEvent>) {
    let mut attempt = 0u32;
    let mut pending: Option<(u8, Bytes)> = None;
    loop {
        match connect_and_serve(&config, &mut commands, &events, &mut pending, attempt).await {
            Ok(()) => {
                let _ = events.send(ClientEvent::Stopped { reason: "closed".into() }).await;
                return;
            }
            Err((reason, was_up)) => {
                if reason.starts_with(REFUSED) && !config.retry_rejected {
                    let _ = events.send(ClientEvent::Stopped { reason }).await;
                    return;
                }
                if was_up {
                    attempt = 0;
                }
                attempt += 1;
                if config.max_attempts.is_some_and(|m| attempt >= m) {
                    let _ =
                        events.send(ClientEvent::Stopped { reason: format!("giving up: {reason}") }).await;
                    return;
                }
                let retry_in = backoff(attempt - 1, config.initial_backoff, config.max_backoff, random_u32());
                let _ = events.send(ClientEvent::Disconnected { reason, retry_in }).await;
                sleep(retry_in).await;
            }
        }
    }
}

/// The prefix of a failure reason that is the host's refusal of the handshake.
const REFUSED: &str = "refused by host: ";

/// One connection: `Ok` when the application closed the client, `Err((why, had_session))`
/// when the connection failed.
async fn connect_and_serve(
    config: &ClientConfig,
    commands: &mut mpsc::Receiver<Command>,
    events: &mpsc::Sender<ClientEvent>,
    pending: &mut Option<(u8, Bytes)>,
    attempt: u32,
) -> Result<(), (String, bool)> {
    let fail = |e: String| (e, false);
    let setup = async {
        let stream = TcpStream::connect(&config.addr).await.map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut framed = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_LEN));
        let mut hs = Handshake::initiator((config.initiator)()).map_err(|e| e.to_string())?;
        let r = client_handshake(&mut framed, &mut hs).await;
        while let Some(e) = hs.poll_event(now_ts()) {
            let _ = events.send(ClientEvent::Security(e)).await;
        }
        r.map_err(|e| match e {
            Error::Handshake(vitalwire::HandshakeError::Rejected(reason)) => format!("{REFUSED}{reason}"),
            e => e.to_string(),
        })?;
        Ok::<_, String>((framed, hs.into_session().map_err(|e| e.to_string())?))
    };
    let (mut framed, mut session) = timeout(config.handshake_timeout, setup)
        .await
        .map_err(|_| fail("handshake timed out".into()))?
        .map_err(fail)?;
    framed.codec_mut().set_max_frame_len(session.max_frame_len());
    session.set_timers(config.timers);
    let _ = session.handle_timeout(now_ts());
    let _ = events.send(ClientEvent::Connected { attempt: attempt + 1 }).await;
    let started = Instant::now();
    let started_ts = now_ts();
    let mut out = BytesMut::new();
    let lost = |e: String| (e, true);
    // A message taken from the queue before the last connection failed goes first.
    if let Some((ch, p)) = pending.take() {
        session.seal_message(ch, &p, &mut out).map_err(|e| lost(e.to_string()))?;
    }
    loop {
        let deadline = session.poll_timeout().map(|t| {
            tokio::time::Instant::from_std(started + Duration::from_millis(t.0.saturating_sub(started_ts.0)))
        });
        let mut closing = false;
        tokio::select! {
            cmd = commands.recv(), if out.len() < 64 * 1024 => match cmd {
                Some(Command::Send(ch, payload)) => {
                    if let Err(e) = session.seal_message(ch, &payload, &mut out) {
                        if e.is_fatal() {
                            *pending = Some((ch, payload));
                            return Err(lost(e.to_string()));
                        }
                    }
                }
                Some(Command::Close) | None => {
                    let _ = session.close(CloseCode::NORMAL, &mut out);
                    closing = true;
                }
            },
            _ = async { match deadline { Some(d) => sleep_until(d).await, None => std::future::pending().await } } => {
                if let Err(e) = session.handle_timeout(now_ts()) {
                    session.poll_transmit(&mut out);
                    let _ = framed.send(out.split().freeze()).await;
                    return Err(lost(e.to_string()));
                }
            }
            frame = framed.next() => match frame {
                Some(Ok(frame)) => match session.open(frame) {
                    Ok(Incoming::Data { channel, payload }) => {
                        let _ = events.send(ClientEvent::Received { channel, payload }).await;
                    }
                    Ok(Incoming::Closed(code)) => {
                        session.poll_transmit(&mut out);
                        let _ = framed.send(out.split().freeze()).await;
                        return Err(lost(format!("closed by host: {code}")));
                    }
                    Ok(_) => {}
                    Err(e) if e.is_fatal() => {
                        session.poll_transmit(&mut out);
                        let _ = framed.send(out.split().freeze()).await;
                        return Err(lost(e.to_string()));
                    }
                    Err(_) => {}
                },
                Some(Err(e)) => return Err(lost(e.to_string())),
                None => return Err(lost(format!("{}", session.handle_eof().err().unwrap_or(Error::Closed)))),
            },
        }
        session.poll_transmit(&mut out);
        while let Some(e) = session.poll_event(now_ts()) {
            let _ = events.send(ClientEvent::Security(e)).await;
        }
        if !out.is_empty() && framed.send(out.split().freeze()).await.is_err() {
            return Err(lost("write failed".into()));
        }
        if closing {
            // Wait briefly for the host's CLOSE so nothing in flight is cut off.
            let _ = timeout(Duration::from_secs(2), async {
                while let Some(Ok(frame)) = framed.next().await {
                    if let Ok(Incoming::Closed(_)) = session.open(frame) {
                        break;
                    }
                }
            })
            .await;
            return Ok(());
        }
    }
}

async fn client_handshake(
    framed: &mut Framed<TcpStream, FrameCodec>,
    hs: &mut Handshake,
) -> Result<(), Error> {
    let mut out = BytesMut::new();
    loop {
        while hs.wants_write() {
            hs.write_message(&mut out)?;
            framed.send(out.split().freeze()).await.map_err(LinkError::into_protocol)?;
        }
        if hs.is_finished() {
            return Ok(());
        }
        match framed.next().await {
            Some(Ok(frame)) => hs.read_message(&frame)?,
            Some(Err(e)) => return Err(e.into_protocol()),
            None => return Err(Error::Truncated),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
