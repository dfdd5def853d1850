//! Kotlin and Swift bindings of vitalwire, through uniffi. The surface matches the Python
//! package: keys and fingerprints, the trust store, a [`Connection`] (handshake for every
//! profile, then the session), datagram mode and fragmentation, security events, pairing
//! codes. Errors become a sealed exception class in Kotlin and an `Error` enum in Swift. Every
//! object is guarded by a mutex and may be shared between threads.

use std::sync::{Arc, Mutex, MutexGuard};

use vitalwire as vw;
use vw::datagram::{DatagramClient as CoreDatagramClient, DatagramConfig, FragmentLink as CoreFragmentLink};

uniffi::setup_scaffolding!();

/// Every error of the bindings.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum VitalwireError {
    /// Malformed bytes from the link.
    #[error("{reason}")]
    Decode { reason: String },
    /// The handshake failed.
    #[error("{reason}")]
    Handshake { reason: String },
    /// The peer's key is unknown, revoked or not the pinned one.
    #[error("{reason}")]
    UntrustedPeer { reason: String },
    /// A message failed authentication.
    #[error("{reason}")]
    Authentication { reason: String },
    /// A datagram was a replay or too old.
    #[error("{reason}")]
    Replay { reason: String },
    /// The peer broke the protocol.
    #[error("{reason}")]
    Protocol { reason: String },
    /// The stream ended without an authenticated CLOSE.
    #[error("{reason}")]
    Truncated { reason: String },
    /// The session is closed.
    #[error("{reason}")]
    Closed { reason: String },
    /// The payload exceeds the peer's limit.
    #[error("{reason}")]
    PayloadTooLarge { reason: String },
    /// A timer ended the handshake or session.
    #[error("{reason}")]
    Timeout { reason: String },
    /// Invalid configuration or arguments.
    #[error("{reason}")]
    Config { reason: String },
    /// A key or trust store file could not be used.
    #[error("{reason}")]
    KeyFile { reason: String },
}

impl From<vw::Error> for VitalwireError {
    fn from(e: vw::Error) -> Self {
        use vw::{DropReason as D, Error as E, HandshakeError as H};
        let reason = e.to_string();
        match e {
            E::Decode(_) => VitalwireError::Decode { reason },
            E::Handshake(H::UnknownPeer | H::RevokedPeer | H::UnexpectedPeerKey)
            | E::Handshake(H::Rejected(vw::RejectReason::UnknownCredential))
            | E::Unauthorized => VitalwireError::UntrustedPeer { reason },
            E::Handshake(H::AuthenticationFailed)
            | E::AuthenticationFailed
            | E::Dropped(D::AuthenticationFailed) => VitalwireError::Authentication { reason },
            E::Handshake(H::Timeout) | E::DeadPeer | E::SessionExpired => VitalwireError::Timeout { reason },
            E::Handshake(_) => VitalwireError::Handshake { reason },
            E::Dropped(D::Replay | D::TooOld) => VitalwireError::Replay { reason },
            // Not fatal: one datagram is gone, the session goes on (as in Python).
            E::Dropped(_) => VitalwireError::Decode { reason },
            E::Truncated => VitalwireError::Truncated { reason },
            E::Closed | E::ClosedByPeer(_) => VitalwireError::Closed { reason },
            E::PayloadTooLarge { .. } => VitalwireError::PayloadTooLarge { reason },
            // Local misuse, not the peer's fault; the session goes on.
            E::Config(_) | E::PairingSession => VitalwireError::Config { reason },
            E::Key(_) => VitalwireError::KeyFile { reason },
            _ => VitalwireError::Protocol { reason },
        }
    }
}

fn config(message: impl Into<String>) -> VitalwireError {
    VitalwireError::Config { reason: message.into() }
}

fn key32(bytes: &[u8], what: &str) -> Result<[u8; 32], VitalwireError> {
    bytes.try_into().map_err(|_| config(format!("{what} must be 32 bytes, got {}", bytes.len())))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fingerprint of a 32-byte public key.
#[uniffi::export]
pub fn fingerprint(public_key: Vec<u8>) -> Result<String, VitalwireError> {
    Ok(vw::PublicKey::from_bytes(key32(&public_key, "a public key")?).fingerprint().to_string())
}

/// Reads a public key file (or the public half of a private key file).
#[uniffi::export]
pub fn load_public_key(path: String) -> Result<Vec<u8>, VitalwireError> {
    vw::keyfile::read_public_key(std::path::Path::new(&path))
        .map(|k| k.as_bytes().to_vec())
        .map_err(|e| VitalwireError::KeyFile { reason: e.to_string() })
}

/// A static X25519 keypair.
#[derive(uniffi::Object)]
pub struct Keypair {
    inner: vw::Keypair,
}

#[uniffi::export]
impl Keypair {
    /// A fresh keypair from the OS random number generator.
    #[uniffi::constructor]
    pub fn generate() -> Result<Arc<Self>, VitalwireError> {
        Ok(Arc::new(Keypair { inner: vw::Keypair::generate().map_err(vw::Error::from)? }))
    }
    /// From 32 private-key bytes.
    #[uniffi::constructor]
    pub fn from_private(private_key: Vec<u8>) -> Result<Arc<Self>, VitalwireError> {
        Ok(Arc::new(Keypair {
            inner: vw::Keypair::from_private(vw::PrivateKey::from_bytes(key32(
                &private_key,
                "a private key",
            )?)),
        }))
    }
    /// Reads a private key file (refused if group/others can read it).
    #[uniffi::constructor]
    pub fn load(path: String) -> Result<Arc<Self>, VitalwireError> {
        let inner = vw::keyfile::read_private_key(std::path::Path::new(&path))
            .map_err(|e| VitalwireError::KeyFile { reason: e.to_string() })?;
        Ok(Arc::new(Keypair { inner }))
    }
    /// The 32-byte public key.
    pub fn public_key(&self) -> Vec<u8> {
        self.inner.public().as_bytes().to_vec()
    }
    /// The public key's fingerprint.
    pub fn fingerprint(&self) -> String {
        self.inner.public().fingerprint().to_string()
    }
}

/// The host's allowlist of device keys.
#[derive(uniffi::Object)]
pub struct TrustStore {
    inner: Arc<vw::TrustStore>,
}

#[uniffi::export]
impl TrustStore {
    /// An empty in-memory store.
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::new(TrustStore { inner: Arc::new(vw::TrustStore::in_memory(vw::TrustList::new())) })
    }
    /// Opens an existing store file.
    #[uniffi::constructor]
    pub fn open(path: String) -> Result<Arc<Self>, VitalwireError> {
        let s = vw::TrustStore::open(path).map_err(|e| VitalwireError::KeyFile { reason: e.to_string() })?;
        Ok(Arc::new(TrustStore { inner: Arc::new(s) }))
    }
    /// Admits a device key.
    pub fn add(&self, public_key: Vec<u8>, device_id: String, label: String) -> Result<(), VitalwireError> {
        let key = vw::PublicKey::from_bytes(key32(&public_key, "a public key")?);
        self.inner.add(key, &device_id, &label).map_err(|e| VitalwireError::KeyFile { reason: e.to_string() })
    }
    /// Revokes a device key; returns whether it was known.
    pub fn revoke(&self, public_key: Vec<u8>) -> Result<bool, VitalwireError> {
        let key = vw::PublicKey::from_bytes(key32(&public_key, "a public key")?);
        self.inner.revoke(&key).map_err(|e| VitalwireError::KeyFile { reason: e.to_string() })
    }
    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.inner.snapshot().len() as u64
    }
    /// Whether the store has no entries.
    pub fn is_empty(&self) -> bool {
        self.inner.snapshot().is_empty()
    }
}

/// One received item.
#[derive(uniffi::Record)]
pub struct Message {
    /// "data", "ping", "pong", "rekey", "closed" or "fragment".
    pub kind: String,
    /// The channel (data).
    pub channel: u8,
    /// The payload (data, pong).
    pub payload: Vec<u8>,
    /// The close code (closed).
    pub close_code: Option<u16>,
}

fn message(i: vw::Incoming) -> Message {
    let (kind, channel, payload, close_code) = match i {
        vw::Incoming::Data { channel, payload } => ("data", channel, payload.to_vec(), None),
        vw::Incoming::Ping => ("ping", 0, Vec::new(), None),
        vw::Incoming::Pong(p) => ("pong", 0, p.to_vec(), None),
        vw::Incoming::Rekeyed => ("rekey", 0, Vec::new(), None),
        vw::Incoming::Closed(c) => ("closed", 0, Vec::new(), Some(c.0)),
        vw::Incoming::Fragment => ("fragment", 0, Vec::new(), None),
        _ => ("unknown", 0, Vec::new(), None),
    };
    Message { kind: kind.into(), channel, payload, close_code }
}

/// A security event (no secrets, no payload).
#[derive(uniffi::Record)]
pub struct SecurityEvent {
    /// e.g. "unknown_peer".
    pub kind: String,
    /// "info", "warning" or "alert".
    pub severity: String,
    /// Milliseconds, the time passed in.
    pub time: u64,
    /// The peer key's fingerprint.
    pub peer: Option<String>,
    /// The device id the peer claimed.
    pub device_id: Option<String>,
    /// The event as one line of JSON.
    pub json: String,
}

fn event(e: vw::SecurityEvent) -> SecurityEvent {
    SecurityEvent {
        kind: e.kind.name().to_string(),
        severity: e.severity.name().to_string(),
        time: e.time.0,
        peer: e.peer.map(|p| p.to_string()),
        json: e.to_json_line(),
        device_id: e.device_id,
    }
}

/// The device's choices for a handshake.
#[derive(uniffi::Record)]
pub struct InitiatorOptions {
    /// "xx", "ik", "kk" or "xxpsk3".
    pub profile: String,
    /// "chachapoly" or "aesgcm".
    pub suite: String,
    /// The device id.
    pub device_id: String,
    /// The host key (IK, KK).
    pub host_key: Option<Vec<u8>>,
    /// Host keys to accept (XX, XXpsk3).
    pub pinned_host_keys: Vec<Vec<u8>>,
    /// The pre-shared key (XXpsk3).
    pub psk: Option<Vec<u8>>,
    /// Its id.
    pub psk_id: Option<Vec<u8>>,
    /// Ask for a pairing session.
    pub pairing: bool,
    /// Model string.
    pub model: String,
    /// Firmware string.
    pub firmware: String,
    /// Largest frame this device accepts.
    pub max_frame_len: u16,
    /// A fixed ephemeral key: test vectors only.
    pub ephemeral_for_testing_only: Option<Vec<u8>>,
}

fn profile(name: &str) -> Result<vw::Profile, VitalwireError> {
    vw::Profile::from_name(name).ok_or_else(|| config(format!("unknown profile {name:?}")))
}

fn suite(name: &str) -> Result<vw::CipherSuite, VitalwireError> {
    vw::CipherSuite::from_name(name).ok_or_else(|| config(format!("unknown suite {name:?}")))
}

fn initiator_config(keypair: &Keypair, o: InitiatorOptions) -> Result<vw::InitiatorConfig, VitalwireError> {
    let identity = vw::DeviceIdentity {
        device_id: o.device_id,
        model: o.model,
        firmware: o.firmware,
        max_frame_len: o.max_frame_len,
    };
    let mut c = vw::InitiatorConfig::new(profile(&o.profile)?, keypair.inner.clone(), identity)
        .suite(suite(&o.suite)?);
    if let Some(k) = o.host_key {
        c = c.host_key(vw::PublicKey::from_bytes(key32(&k, "host_key")?));
    }
    let mut pins = Vec::new();
    for k in &o.pinned_host_keys {
        pins.push(vw::PublicKey::from_bytes(key32(k, "a pinned host key")?));
    }
    c = c.pin_host_keys(pins);
    match (o.psk, o.psk_id) {
        (Some(k), Some(id)) => c = c.psk(&id, vw::Psk::from_bytes(key32(&k, "psk")?)),
        (None, None) => {}
        _ => return Err(config("give both psk and psk_id")),
    }
    if o.pairing {
        c = c.request_pairing();
    }
    if let Some(e) = o.ephemeral_for_testing_only {
        c = c.fixed_ephemeral_for_testing_only(vw::PrivateKey::from_bytes(key32(&e, "ephemeral")?));
    }
    Ok(c)
}

/// The host's parameters for a handshake.
#[derive(uniffi::Record)]
pub struct ResponderOptions {
    /// Largest frame the host accepts.
    pub max_frame_len: u16,
    /// Frames per key.
    pub rekey_interval: u32,
    /// Largest fragmented message.
    pub max_message_len: u32,
    /// Accept pairing requests.
    pub allow_pairing: bool,
    /// Pre-shared keys by id (XXpsk3).
    pub psk_ids: Vec<Vec<u8>>,
    /// The keys, in the order of `psk_ids`.
    pub psks: Vec<Vec<u8>>,
    /// A fixed ephemeral key: test vectors only.
    pub ephemeral_for_testing_only: Option<Vec<u8>>,
}

/// One connection over a byte stream: the handshake, then the session.
#[derive(uniffi::Object)]
pub struct Connection {
    inner: Mutex<vw::Connection>,
}

impl Connection {
    fn run<R>(
        &self,
        f: impl FnOnce(&mut vw::Connection) -> Result<R, vw::Error>,
    ) -> Result<R, VitalwireError> {
        f(&mut lock(&self.inner)).map_err(VitalwireError::from)
    }
}

#[uniffi::export]
impl Connection {
    /// The device's side.
    #[uniffi::constructor]
    pub fn initiator(keypair: Arc<Keypair>, options: InitiatorOptions) -> Result<Arc<Self>, VitalwireError> {
        let hs = vw::Handshake::initiator(initiator_config(&keypair, options)?)?;
        Ok(Arc::new(Connection { inner: Mutex::new(vw::Connection::new(hs)?) }))
    }

    /// The host's side: admits the devices `trust` admits.
    #[uniffi::constructor]
    pub fn responder(
        keypair: Arc<Keypair>,
        trust: Arc<TrustStore>,
        options: ResponderOptions,
    ) -> Result<Arc<Self>, VitalwireError> {
        let policy: Arc<dyn vw::TrustPolicy> = trust.inner.clone();
        let params = vw::SessionParams {
            max_frame_len: options.max_frame_len,
            rekey_interval: options.rekey_interval,
            max_message_len: options.max_message_len,
        };
        let mut c = vw::ResponderConfig::new(keypair.inner.clone(), policy)
            .params(params)
            .allow_pairing(options.allow_pairing);
        if options.psk_ids.len() != options.psks.len() {
            return Err(config("psk_ids and psks must have the same length"));
        }
        if !options.psks.is_empty() {
            let mut dir = vw::StaticPskDirectory::new();
            for (id, k) in options.psk_ids.iter().zip(&options.psks) {
                dir.add(id, vw::Psk::from_bytes(key32(k, "psk")?));
            }
            c = c.psk_directory(Arc::new(dir));
        }
        if let Some(e) = options.ephemeral_for_testing_only {
            c = c.fixed_ephemeral_for_testing_only(vw::PrivateKey::from_bytes(key32(&e, "ephemeral")?));
        }
        let hs = vw::Handshake::responder(c)?;
        Ok(Arc::new(Connection { inner: Mutex::new(vw::Connection::new(hs)?) }))
    }

    /// Bytes to put on the link now.
    pub fn data_to_send(&self) -> Vec<u8> {
        lock(&self.inner).take_output().to_vec()
    }

    /// Feeds received bytes; returns every message they completed. A frame of unknown kind
    /// is skipped and reported in `events()`, never an error. A fatal error after messages
    /// in the same bytes: the messages are returned, `state()` is "failed", and the error
    /// comes with the next call (`poll_timeout()` is then due at once).
    pub fn receive(&self, data: Vec<u8>) -> Result<Vec<Message>, VitalwireError> {
        Ok(self.run(|c| c.receive(&data))?.into_iter().map(message).collect())
    }

    /// Seals one DATA frame; returns its bytes.
    pub fn send(&self, channel: u8, payload: Vec<u8>) -> Result<Vec<u8>, VitalwireError> {
        self.run(|c| c.send(channel, &payload)).map(|b| b.to_vec())
    }

    /// Seals a message of any size up to the negotiated limit.
    pub fn send_message(&self, channel: u8, payload: Vec<u8>) -> Result<Vec<u8>, VitalwireError> {
        self.run(|c| c.send_message(channel, &payload)).map(|b| b.to_vec())
    }

    /// Rolls the sending key; returns the REKEY frame.
    pub fn rekey(&self) -> Result<Vec<u8>, VitalwireError> {
        self.run(|c| c.rekey()).map(|b| b.to_vec())
    }

    /// A PING with 8 opaque bytes; returns the frame.
    pub fn ping(&self, opaque: Vec<u8>) -> Result<Vec<u8>, VitalwireError> {
        let o: [u8; 8] = opaque.try_into().map_err(|_| config("ping data must be 8 bytes"))?;
        self.run(|c| c.ping(o)).map(|b| b.to_vec())
    }

    /// Closes with a reason code; returns the CLOSE frame.
    pub fn close(&self, code: u16) -> Result<Vec<u8>, VitalwireError> {
        self.run(|c| c.close(vw::CloseCode(code))).map(|b| b.to_vec())
    }

    /// The link ended; fails with `Truncated` unless the peer's CLOSE arrived.
    pub fn end_of_stream(&self) -> Result<(), VitalwireError> {
        self.run(|c| c.end_of_stream())
    }

    /// Runs the timers at `now_ms`.
    pub fn handle_timeout(&self, now_ms: u64) -> Result<(), VitalwireError> {
        self.run(|c| c.handle_timeout(vw::Timestamp(now_ms)))
    }

    /// When to call `handle_timeout` next.
    pub fn poll_timeout(&self) -> Option<u64> {
        lock(&self.inner).poll_timeout().map(|t| t.0)
    }

    /// Security events since the last call.
    pub fn events(&self) -> Vec<SecurityEvent> {
        lock(&self.inner).take_events().into_iter().map(event).collect()
    }

    /// "handshaking", "established", "closed" or "failed".
    pub fn state(&self) -> String {
        match lock(&self.inner).state() {
            vw::ConnectionState::Handshaking => "handshaking",
            vw::ConnectionState::Established => "established",
            vw::ConnectionState::Closed => "closed",
            vw::ConnectionState::Failed => "failed",
        }
        .into()
    }

    /// The peer's static key, once known.
    pub fn remote_static(&self) -> Option<Vec<u8>> {
        let c = lock(&self.inner);
        match (c.session(), c.handshake()) {
            (Some(s), _) => Some(s.remote_static().as_bytes().to_vec()),
            (None, Some(h)) => h.remote_static().map(|k| k.as_bytes().to_vec()),
            _ => None,
        }
    }

    /// The device id the peer presented (host side).
    pub fn peer_device_id(&self) -> Option<String> {
        lock(&self.inner).session().and_then(|s| s.peer_identity()).map(|i| i.device_id.clone())
    }

    /// The Noise handshake hash.
    pub fn handshake_hash(&self) -> Option<Vec<u8>> {
        lock(&self.inner).session().map(|s| s.handshake_hash().to_vec())
    }

    /// In a pairing session: the 6-digit code.
    pub fn pairing_code(&self) -> Option<String> {
        lock(&self.inner).session().and_then(|s| s.pairing_code()).map(|c| c.to_string())
    }
}

/// A device in datagram mode (UDP, BLE).
#[derive(uniffi::Object)]
pub struct DatagramClient {
    inner: Mutex<CoreDatagramClient>,
}

#[uniffi::export]
impl DatagramClient {
    /// Starts the handshake; the HELLO is in `transmit()`.
    #[uniffi::constructor]
    pub fn new(
        keypair: Arc<Keypair>,
        options: InitiatorOptions,
        index: u32,
        now_ms: u64,
    ) -> Result<Arc<Self>, VitalwireError> {
        let c = CoreDatagramClient::new(
            initiator_config(&keypair, options)?,
            index,
            DatagramConfig::default(),
            vw::Timestamp(now_ms),
        )?;
        Ok(Arc::new(DatagramClient { inner: Mutex::new(c) }))
    }
    /// Datagrams to send now.
    pub fn transmit(&self, now_ms: u64) -> Vec<Vec<u8>> {
        let mut c = lock(&self.inner);
        std::iter::from_fn(|| c.poll_transmit(vw::Timestamp(now_ms))).collect()
    }
    /// Takes one received datagram.
    pub fn receive(&self, packet: Vec<u8>, now_ms: u64) -> Result<(), VitalwireError> {
        Ok(lock(&self.inner).handle_packet(packet.as_slice().into(), vw::Timestamp(now_ms))?)
    }
    /// Seals DATA for the next `transmit()`.
    pub fn send(&self, channel: u8, payload: Vec<u8>, now_ms: u64) -> Result<(), VitalwireError> {
        Ok(lock(&self.inner).send(channel, &payload, vw::Timestamp(now_ms))?)
    }
    /// Received messages.
    pub fn messages(&self) -> Vec<Message> {
        let mut c = lock(&self.inner);
        std::iter::from_fn(|| c.poll_incoming()).map(message).collect()
    }
    /// Runs retransmissions and timers.
    pub fn handle_timeout(&self, now_ms: u64) -> Result<(), VitalwireError> {
        Ok(lock(&self.inner).handle_timeout(vw::Timestamp(now_ms))?)
    }
    /// Whether the session is up.
    pub fn is_established(&self) -> bool {
        lock(&self.inner).is_established()
    }
}

/// Splits datagrams for a small MTU and reassembles them.
#[derive(uniffi::Object)]
pub struct FragmentLink {
    inner: Mutex<CoreFragmentLink>,
}

#[uniffi::export]
impl FragmentLink {
    /// For a link MTU (at least 5).
    #[uniffi::constructor]
    pub fn new(mtu: u32) -> Result<Arc<Self>, VitalwireError> {
        Ok(Arc::new(FragmentLink {
            inner: Mutex::new(CoreFragmentLink::new(mtu as usize, Default::default())?),
        }))
    }
    /// The link packets of one datagram.
    pub fn split(&self, datagram: Vec<u8>) -> Result<Vec<Vec<u8>>, VitalwireError> {
        Ok(lock(&self.inner).split(&datagram)?)
    }
    /// Takes a link packet; returns a datagram when complete.
    pub fn receive(&self, packet: Vec<u8>, now_ms: u64) -> Result<Option<Vec<u8>>, VitalwireError> {
        match lock(&self.inner).receive(&packet, vw::Timestamp(now_ms)) {
            Ok(d) => Ok(d.map(|d| d.to_vec())),
            Err(drop) => Err(VitalwireError::Decode { reason: format!("fragment dropped: {drop:?}") }),
        }
    }
}

/// The behaviour Kotlin and Swift see, driven through the exported Rust functions (the
/// generated code is a thin skin over them): a device made with the core seals the frames a
/// binding cannot (a newer peer's kinds).
#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Arc<Connection> {
        let keypair = Keypair::from_private(vec![0x11; 32]).unwrap();
        let trust = TrustStore::new();
        let device = vw::Keypair::from_private(vw::PrivateKey::from_bytes([0x22; 32]));
        trust.add(device.public().as_bytes().to_vec(), "PM-1".into(), "test".into()).unwrap();
        let options = ResponderOptions {
            max_frame_len: 65535,
            rekey_interval: 1 << 20,
            max_message_len: 1 << 22,
            allow_pairing: false,
            psk_ids: vec![],
            psks: vec![],
            ephemeral_for_testing_only: None,
        };
        Connection::responder(keypair, trust, options).unwrap()
    }

    fn pair() -> (vw::Connection, Arc<Connection>) {
        let host = host();
        let identity = vw::DeviceIdentity {
            device_id: "PM-1".into(),
            model: String::new(),
            firmware: String::new(),
            max_frame_len: 65535,
        };
        let device = vw::Keypair::from_private(vw::PrivateKey::from_bytes([0x22; 32]));
        let host_key = vw::Keypair::from_private(vw::PrivateKey::from_bytes([0x11; 32]));
        let cfg = vw::InitiatorConfig::new(vw::Profile::Ik, device, identity).host_key(*host_key.public());
        let mut dev = vw::Connection::new(vw::Handshake::initiator(cfg).unwrap()).unwrap();
        for _ in 0..3 {
            host.receive(dev.take_output().to_vec()).unwrap();
            dev.receive(&host.data_to_send()).unwrap();
        }
        assert_eq!(host.state(), "established");
        (dev, host)
    }

    fn data(messages: &[Message]) -> Vec<(u8, &[u8])> {
        messages.iter().filter(|m| m.kind == "data").map(|m| (m.channel, &m.payload[..])).collect()
    }

    /// Issue #14 item 2: an unknown kind between DATA frames is skipped and reported as an
    /// event; both DATA frames are delivered and no exception is thrown.
    #[test]
    fn an_unknown_kind_between_frames_loses_nothing() {
        let (mut dev, host) = pair();
        host.events();
        let wire = [
            dev.send(1, b"before").unwrap(),
            dev.send_raw_for_testing_only(0x42, 0, 0, b"a newer kind").unwrap(),
            dev.send(2, b"after").unwrap(),
        ]
        .concat();
        let got = host.receive(wire).unwrap();
        assert_eq!(data(&got), vec![(1, &b"before"[..]), (2, &b"after"[..])]);
        assert_eq!(host.state(), "established");
        assert!(host
            .events()
            .iter()
            .any(|e| e.kind == "unknown_frame_kind" && e.json.contains("\"kind\":66")));
    }

    /// A failure after good frames: they are delivered, the connection is failed, and the
    /// next call throws the error.
    #[test]
    fn a_failure_after_good_frames_delivers_them_then_throws() {
        let (mut dev, host) = pair();
        let good = dev.send(1, b"HR=72").unwrap();
        let mut bad = dev.send(1, b"HR=73").unwrap();
        bad[4] ^= 1;
        let got = host.receive([good, bad].concat()).unwrap();
        assert_eq!(data(&got), vec![(1, &b"HR=72"[..])]);
        assert_eq!(host.state(), "failed");
        assert!(host.poll_timeout().is_some(), "the held-back error is due at once");
        assert!(matches!(host.receive(vec![]), Err(VitalwireError::Authentication { .. })));
        assert_eq!(host.poll_timeout(), None);
    }

    /// Issue #15 / #14 item 5: the same classes as Python; non-fatal errors never map to the
    /// "peer broke the protocol" class.
    #[test]
    fn errors_map_like_python() {
        use vw::DropReason as D;
        let class = |e: vw::Error| match VitalwireError::from(e) {
            VitalwireError::Decode { .. } => "decode",
            VitalwireError::Replay { .. } => "replay",
            VitalwireError::Authentication { .. } => "authentication",
            VitalwireError::Config { .. } => "config",
            VitalwireError::Closed { .. } => "closed",
            VitalwireError::Protocol { .. } => "protocol",
            _ => "other",
        };
        for d in [D::Malformed, D::UnknownIndex, D::UnexpectedHandshake, D::StaleKey, D::Limit] {
            assert_eq!(class(vw::Error::Dropped(d)), "decode", "{d:?}");
        }
        assert_eq!(class(vw::Error::Dropped(D::Replay)), "replay");
        assert_eq!(class(vw::Error::Dropped(D::TooOld)), "replay");
        assert_eq!(class(vw::Error::Dropped(D::AuthenticationFailed)), "authentication");
        assert_eq!(class(vw::Error::PairingSession), "config");
        assert_eq!(class(vw::Error::Closed), "closed");
        assert_eq!(class(vw::Error::ClosedByPeer(vw::CloseCode::NORMAL)), "closed");
        assert_eq!(class(vw::Error::Protocol(vw::ProtocolError::Malformed)), "protocol");
    }
}
