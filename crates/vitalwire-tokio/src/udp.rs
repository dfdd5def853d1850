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

use crate::host::{now_ts, Host, Telemetry};
use crate::limits::{CookieJar, COOKIE_LEN};

/// Packet type: the host's cookie challenge, `0x25 | receiver_index u32 | cookie[16]`.
pub const TYPE_COOKIE: u8 = 0x25;
/// Packet type: a HELLO carrying a cookie, `0x26 | cookie[16] | HELLO packet`.
pub const TYPE_COOKIE_HELLO: u8 = 0x26;

fn tokio_deadline(t: Timestamp, base: (Instant, Timestamp)) -> tokio::time::Instant {
    tokio::time::Instant::from_std(base.0 + Duration::from_millis(t.0.saturating_sub(base.1 .0)))
}

/// Serves devices on a UDP socket until the host shuts down.
pub async fn serve_udp(host: &Host, socket: UdpSocket) -> std::io::Result<()> {
    let shared = host.shared.clone();
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
    let base = (Instant::now(), now_ts());
    let mut buf = vec![0u8; 65_536];
    loop {
        let deadline = dh.poll_timeout().map(|t| tokio_deadline(t, base));
        tokio::select! {
            _ = crate::host::stopped(&mut stop) => {
                for index in dh.session_indices() {
                    let _ = dh.close(index, CloseCode::GOING_AWAY, now_ts());
                }
                flush(&mut dh, &socket, &shared).await;
                return Ok(());
            }
            _ = trust.changed() => {
                if let Some(policy) = &shared.config.trust {
                    dh.recheck(policy.as_ref(), now_ts());
                }
            }
            _ = async { match deadline { Some(d) => sleep_until(d).await, None => std::future::pending().await } } => {
                dh.handle_timeout(now_ts());
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                let packet = &buf[..n];
                let now = now_ts();
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
                                shared.host_event(EventKind::LimitExceeded { limit: Limit::HalfOpenHandshakes });
                            }
                            continue;
                        }
                        let _ = dh.handle_packet(from, BytesMut::from(packet), now);
                    }
                    Some(&TYPE_COOKIE_HELLO) => {
                        let valid = n > 1 + COOKIE_LEN && jar.check(&packet[1..1 + COOKIE_LEN], &from, Instant::now());
                        if valid && shared.allow_handshake(Some(from.ip())) {
                            let _ = dh.handle_packet(from, BytesMut::from(&packet[1 + COOKIE_LEN..]), now);
                        } else {
                            shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        let _ = dh.handle_packet(from, BytesMut::from(packet), now);
                    }
                }
            }
        }
        flush(&mut dh, &socket, &shared).await;
        shared.counters.sessions.store(dh.session_count(), Ordering::Relaxed);
        shared.counters.half_open.store(dh.half_open_count(), Ordering::Relaxed);
    }
}

async fn flush(dh: &mut DatagramHost<SocketAddr>, socket: &UdpSocket, shared: &crate::host::Shared) {
    while let Some((to, p)) = dh.poll_transmit() {
        let _ = socket.send_to(&p, to).await;
    }
    while let Some(e) = dh.poll_event() {
        shared.event(e);
    }
    while let Some(inc) = dh.poll_incoming() {
        if let Incoming::Data { channel, payload } = inc.incoming {
            let device_id =
                dh.session(inc.index).and_then(|s| s.peer_identity()).map(|i| i.device_id.clone());
            shared.counters.frames.fetch_add(1, Ordering::Relaxed);
            shared.counters.bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
            let item = Telemetry {
                session: inc.index as u64,
                device_id: device_id.unwrap_or_default(),
                peer: inc.peer.fingerprint(),
                channel,
                payload,
            };
            let _ = shared.telemetry.send(item).await;
        }
    }
}

/// A device in datagram mode over UDP.
pub struct UdpDevice {
    client: DatagramClient,
    socket: UdpSocket,
    cookie: Option<[u8; COOKIE_LEN]>,
    local_index: u32,
    base: (Instant, Timestamp),
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
        let _ = vitalwire::EntropySource::fill(&mut OsEntropy, &mut index);
        let local_index = u32::from_be_bytes(index).max(1);
        let client = DatagramClient::new(config, local_index, dconfig, now_ts())?;
        let mut dev =
            UdpDevice { client, socket, cookie: None, local_index, base: (Instant::now(), now_ts()) };
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
        .map_err(|_| Error::Handshake(vitalwire::HandshakeError::Timeout))??;
        Ok(dev)
    }

    /// Sends what is queued, then waits for one packet or timer.
    async fn step(&mut self) -> Result<(), Error> {
        self.transmit().await;
        let deadline = self.client.poll_timeout().map(|t| tokio_deadline(t, self.base));
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
                    let _ = self.client.handle_packet(BytesMut::from(p), now_ts());
                }
            }
            _ = async { match deadline { Some(d) => sleep_until(d).await, None => std::future::pending().await } } => {
                self.client.handle_timeout(now_ts())?;
            }
        }
        self.transmit().await;
        Ok(())
    }

    async fn transmit(&mut self) {
        while let Some(p) = self.client.poll_transmit(now_ts()) {
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
        self.client.send(channel, payload, now_ts())?;
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
