//! Datagram mode on UDP: one socket serves every device, sessions told apart by their index
//! (spec §13). Under load the host answers HELLOs with a stateless cookie (spec §13.8) so a
//! flood from spoofed addresses costs it no Diffie-Hellman work and no state.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::UdpSocket;
use tokio::time::{sleep_until, timeout};
use vitalwire::datagram::{DatagramClient, DatagramConfig, DatagramHost, HostLimits, TYPE_HELLO};
use vitalwire::{CloseCode, Error, EventKind, Incoming, InitiatorConfig, Limit, OsEntropy, Timestamp};

use crate::clock::{self, monotonic};
use crate::host::{Host, Telemetry};
use crate::limits::{CookieJar, COOKIE_LEN};

/// Packet type: the host's cookie challenge, `0x25 | receiver_index u32 | cookie[16]`.
pub const TYPE_COOKIE: u8 = 0x25;
/// Packet type: a HELLO carrying a cookie, `0x26 | cookie[16] | HELLO packet`.
pub const TYPE_COOKIE_HELLO: u8 = 0x26;

/// Sleeps until the core's deadline `at` (a [`monotonic`] timestamp), forever if there is none.
async fn sleep_until_deadline(at: Option<Timestamp>) {
    match at {
        Some(at) => sleep_until(clock::deadline(monotonic(), at)).await,
        None => std::future::pending().await,
    }
}

/// Serves devices on a UDP socket until the host shuts down. [`Host::shutdown`] waits for it:
/// every session is sent a CLOSE `GOING_AWAY` first.
///
/// The session and half-open counts of [`Host::stats`] include this socket's sessions (kept
/// apart from the TCP ones, which TCP tasks raise and lower one by one).
pub async fn serve_udp(host: &Host, socket: UdpSocket) -> std::io::Result<()> {
    let shared = host.shared.clone();
    // Counted by the host's task tracker: `Host::shutdown` waits until the CLOSEs are out.
    let _running = shared.tasks.token();
    crate::host::start_event_ticker(&shared);
    let factory = shared.config.responder.clone();
    let config = DatagramConfig { timers: shared.config.timers, ..DatagramConfig::default() };
    let limits =
        HostLimits { max_half_open: shared.config.max_half_open, max_sessions: shared.config.max_sessions };
    let mut dh: DatagramHost<SocketAddr> =
        DatagramHost::new(Box::new(move || factory()), config, limits, Box::new(OsEntropy));
    // No cookies without entropy: an unguessable secret is what makes them unforgeable.
    let jar = CookieJar::new(Duration::from_secs(120)).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut stop = shared.shutdown.subscribe();
    let mut trust = shared.trust_epoch.subscribe();
    let mut buf = vec![0u8; 65_536];
    let result = loop {
        // Timers and stamps on the monotonic clock: a wall-clock step neither fires nor
        // freezes a session's timers.
        let deadline = dh.poll_timeout();
        // The address of the packet handled in this turn: the events it causes name it.
        let mut source = None;
        tokio::select! {
            _ = crate::host::stopped(&mut stop) => {
                for index in dh.session_indices() {
                    let _ = dh.close(index, CloseCode::GOING_AWAY, monotonic());
                }
                flush(&mut dh, &socket, &shared, None).await;
                break Ok(());
            }
            _ = trust.changed() => {
                if let Some(policy) = &shared.config.trust {
                    dh.recheck(policy.as_ref(), monotonic());
                }
            }
            _ = sleep_until_deadline(deadline) => {
                dh.handle_timeout(monotonic());
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                source = Some(from.ip());
                let packet = &buf[..n];
                let now = monotonic();
                match packet.first() {
                    Some(&TYPE_HELLO) => {
                        if !shared.allow_handshake(Some(from.ip())) {
                            continue;
                        }
                        if dh.half_open_count() >= shared.config.cookie_threshold {
                            // Under load: prove your address first (no state kept).
                            if n >= 5 {
                                let mut reply = Vec::with_capacity(5 + COOKIE_LEN);
                                reply.push(TYPE_COOKIE);
                                reply.extend_from_slice(&packet[1..5]);
                                reply.extend_from_slice(&jar.cookie(&from, Instant::now()));
                                let _ = socket.send_to(&reply, from).await;
                                shared.source_event(EventKind::LimitExceeded { limit: Limit::HalfOpenHandshakes }, Some(from.ip()));
                            }
                            continue;
                        }
                        let _ = dh.handle_packet(from, BytesMut::from(packet), now);
                    }
                    Some(&TYPE_COOKIE_HELLO) => {
                        let valid = n > 1 + COOKIE_LEN && jar.check(&packet[1..1 + COOKIE_LEN], &from, Instant::now());
                        if !valid {
                            // A forged or expired cookie: refused, and recorded.
                            shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
                            let reason = Error::Handshake(vitalwire::HandshakeError::AuthenticationFailed);
                            shared.source_event(EventKind::HandshakeFailed { reason }, Some(from.ip()));
                        } else if shared.allow_handshake(Some(from.ip())) {
                            let _ = dh.handle_packet(from, BytesMut::from(&packet[1 + COOKIE_LEN..]), now);
                        }
                    }
                    _ => {
                        let _ = dh.handle_packet(from, BytesMut::from(packet), now);
                    }
                }
            }
        }
        flush(&mut dh, &socket, &shared, source).await;
        shared.counters.udp_sessions.store(dh.session_count(), Ordering::Relaxed);
        shared.counters.udp_half_open.store(dh.half_open_count(), Ordering::Relaxed);
    };
    shared.counters.udp_sessions.store(0, Ordering::Relaxed);
    shared.counters.udp_half_open.store(0, Ordering::Relaxed);
    result
}

async fn flush(
    dh: &mut DatagramHost<SocketAddr>,
    socket: &UdpSocket,
    shared: &crate::host::Shared,
    source: Option<std::net::IpAddr>,
) {
    while let Some((to, p)) = dh.poll_transmit() {
        let _ = socket.send_to(&p, to).await;
    }
    while let Some(e) = dh.poll_event() {
        shared.event(e.from_source(source));
    }
    while let Some(inc) = dh.poll_incoming() {
        if let Incoming::Data { channel, payload } = inc.incoming {
            let device_id =
                dh.session(inc.index).and_then(|s| s.peer_identity()).map(|i| i.device_id.clone());
            shared.counters.bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
            let item = Telemetry {
                session: inc.index as u64,
                device_id: device_id.unwrap_or_default(),
                peer: inc.peer.fingerprint(),
                channel,
                payload,
            };
            // Backpressure: while the application's buffer is full this socket is not read
            // (the kernel queues, then drops, what devices send); the wait ends if the host
            // stops.
            let _ = shared.deliver(item).await;
        }
    }
}

/// A device in datagram mode over UDP.
pub struct UdpDevice {
    client: DatagramClient,
    socket: UdpSocket,
    cookie: Option<[u8; COOKIE_LEN]>,
    local_index: u32,
}

impl UdpDevice {
    /// Binds a local socket, runs the handshake (retransmitting, answering a cookie challenge)
    /// and returns once the session is up or `deadline` has passed.
    pub async fn connect(
        host: SocketAddr,
        config: InitiatorConfig,
        dconfig: DatagramConfig,
        deadline: Duration,
    ) -> Result<UdpDevice, Error> {
        let bind: SocketAddr = if host.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
        let socket = UdpSocket::bind(bind).await.map_err(|_| Error::Config("cannot bind a UDP socket"))?;
        socket.connect(host).await.map_err(|_| Error::Config("cannot reach the host address"))?;
        let mut index = [0u8; 4];
        vitalwire::EntropySource::fill(&mut OsEntropy, &mut index)
            .map_err(|_| Error::Handshake(vitalwire::HandshakeError::NoEntropy))?;
        let local_index = u32::from_be_bytes(index).max(1);
        let client = DatagramClient::new(config, local_index, dconfig, monotonic())?;
        let mut dev = UdpDevice { client, socket, cookie: None, local_index };
        timeout(deadline, async {
            while !dev.client.is_established() {
                if let Some(e) = dev.client.error() {
                    return Err(e);
                }
                dev.step().await?;
            }
            Ok(())
        })
        .await
        // A REJECT is only a hint in datagram mode (spec §13.3): if it was the only answer
        // until the deadline, report it.
        .map_err(|_| {
            use vitalwire::HandshakeError::{Rejected, Timeout};
            Error::Handshake(dev.client.rejected().map_or(Timeout, Rejected))
        })??;
        Ok(dev)
    }

    /// Sends what is queued, then waits for one packet or timer.
    async fn step(&mut self) -> Result<(), Error> {
        self.transmit().await;
        let deadline = self.client.poll_timeout();
        let mut buf = [0u8; 65_536];
        tokio::select! {
            r = self.socket.recv(&mut buf) => {
                let Ok(n) = r else { return Ok(()) };
                let p = &buf[..n];
                if p.first() == Some(&TYPE_COOKIE) && n == 5 + COOKIE_LEN && p[1..5] == self.local_index.to_be_bytes() {
                    let mut c = [0u8; COOKIE_LEN];
                    c.copy_from_slice(&p[5..]);
                    self.cookie = Some(c);
                } else {
                    let _ = self.client.handle_packet(BytesMut::from(p), monotonic());
                }
            }
            _ = sleep_until_deadline(deadline) => {
                self.client.handle_timeout(monotonic())?;
            }
        }
        self.transmit().await;
        Ok(())
    }

    async fn transmit(&mut self) {
        while let Some(p) = self.client.poll_transmit(monotonic()) {
            match (p.first(), self.cookie) {
                (Some(&TYPE_HELLO), Some(cookie)) => {
                    let mut wrapped = Vec::with_capacity(1 + COOKIE_LEN + p.len());
                    wrapped.push(TYPE_COOKIE_HELLO);
                    wrapped.extend_from_slice(&cookie);
                    wrapped.extend_from_slice(&p);
                    let _ = self.socket.send(&wrapped).await;
                }
                _ => {
                    let _ = self.socket.send(&p).await;
                }
            }
        }
    }

    /// Sends one DATA message.
    pub async fn send(&mut self, channel: u8, payload: &[u8]) -> Result<(), Error> {
        self.client.send(channel, payload, monotonic())?;
        self.transmit().await;
        Ok(())
    }

    /// Runs the session (answers pings, timers) for `duration`, returning what arrived.
    pub async fn run_for(&mut self, duration: Duration) -> Result<Vec<Incoming>, Error> {
        let _ = timeout(duration, async {
            loop {
                if self.step().await.is_err() {
                    break;
                }
            }
        })
        .await;
        if let Some(e) = self.client.error() {
            return Err(e);
        }
        Ok(std::iter::from_fn(|| self.client.poll_incoming()).collect())
    }

    /// The underlying sans-IO client (session state, events).
    pub fn client(&mut self) -> &mut DatagramClient {
        &mut self.client
    }
}
