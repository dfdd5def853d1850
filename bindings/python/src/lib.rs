//! Python bindings of vitalwire. The typestate of the Rust API (handshake consumed into a
//! session) becomes one runtime object per connection, [`Connection`], whose phase changes as
//! bytes flow. Every object is guarded by a mutex, so it may be shared between threads; the
//! crypto on large frames runs with the GIL released.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::BytesMut;
use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use vitalwire as vw;
use vw::datagram::{DatagramClient as CoreDatagramClient, DatagramConfig, FragmentLink as CoreFragmentLink};
use vw::fragment::ReassemblyLimits;

create_exception!(_native, VitalwireError, PyException, "Base class of every vitalwire error.");
create_exception!(_native, DecodeError, VitalwireError, "Malformed bytes from the link.");
create_exception!(_native, HandshakeError, VitalwireError, "The handshake failed.");
create_exception!(_native, UntrustedPeerError, HandshakeError, "The peer's key is unknown, revoked or not the pinned one.");
create_exception!(_native, AuthenticationError, VitalwireError, "A message failed authentication (forged, corrupted, wrong key).");
create_exception!(_native, ReplayError, VitalwireError, "A datagram was a replay or older than the replay window.");
create_exception!(_native, ProtocolError, VitalwireError, "The peer broke the protocol's rules.");
create_exception!(_native, TruncatedError, VitalwireError, "The stream ended without an authenticated CLOSE.");
create_exception!(_native, ClosedError, VitalwireError, "The session is closed.");
create_exception!(_native, PayloadTooLargeError, VitalwireError, "The payload exceeds the peer's limit.");
create_exception!(_native, SessionTimeoutError, VitalwireError, "A timer ended the handshake or session.");
create_exception!(_native, ConfigError, VitalwireError, "Invalid configuration or arguments.");
create_exception!(_native, KeyFileError, VitalwireError, "A key or trust store file could not be used.");

fn err(e: vw::Error) -> PyErr {
    use vw::{DropReason as D, Error as E, HandshakeError as H};
    let msg = e.to_string();
    match e {
        E::Decode(_) => DecodeError::new_err(msg),
        E::Handshake(H::UnknownPeer | H::RevokedPeer | H::UnexpectedPeerKey)
        | E::Handshake(H::Rejected(vw::RejectReason::UnknownCredential))
        | E::Unauthorized => UntrustedPeerError::new_err(msg),
        E::Handshake(H::AuthenticationFailed) | E::AuthenticationFailed | E::Dropped(D::AuthenticationFailed) => {
            AuthenticationError::new_err(msg)
        }
        E::Handshake(H::Timeout) | E::DeadPeer | E::SessionExpired => SessionTimeoutError::new_err(msg),
        E::Handshake(_) => HandshakeError::new_err(msg),
        E::Dropped(D::Replay | D::TooOld) => ReplayError::new_err(msg),
        E::Dropped(_) => DecodeError::new_err(msg),
        E::Truncated => TruncatedError::new_err(msg),
        E::Closed | E::ClosedByPeer(_) => ClosedError::new_err(msg),
        E::PayloadTooLarge { .. } => PayloadTooLargeError::new_err(msg),
        E::Config(_) => ConfigError::new_err(msg),
        E::Key(_) => KeyFileError::new_err(msg),
        _ => ProtocolError::new_err(msg),
    }
}

/// Borrows the bytes of a `bytes`, `bytearray` or `memoryview` (any C-contiguous buffer of
/// bytes) and runs `f` on them. `bytes` is read in place; a mutable buffer is read in place
/// too, under the GIL.
fn with_bytes<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    let buf = PyBuffer::<u8>::get(obj).map_err(|_| PyTypeError::new_err("expected bytes, bytearray or memoryview"))?;
    if !buf.is_c_contiguous() {
        return Err(PyTypeError::new_err("the buffer must be C-contiguous"));
    }
    // SAFETY: the buffer export keeps the memory alive and unresized until `buf` is dropped;
    // we read it while holding the GIL, so Python code cannot write to it meanwhile.
    let slice = unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) };
    Ok(f(slice))
}

fn owned_bytes(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    with_bytes(obj, |b| b.to_vec())
}

fn key32(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<[u8; 32]> {
    let v = owned_bytes(obj)?;
    v.as_slice().try_into().map_err(|_| PyValueError::new_err(format!("{what} must be 32 bytes, got {}", v.len())))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Frames at least this large are sealed and opened with the GIL released.
const DETACH_AT: usize = 4096;

/// A static X25519 keypair. The private half never appears in `repr`.
#[pyclass(frozen, module = "vitalwire._native")]
struct Keypair {
    inner: vw::Keypair,
}

#[pymethods]
impl Keypair {
    /// A fresh keypair from the operating system's random number generator.
    #[staticmethod]
    fn generate() -> PyResult<Keypair> {
        Ok(Keypair { inner: vw::Keypair::generate().map_err(|e| err(e.into()))? })
    }
    /// From 32 private-key bytes.
    #[staticmethod]
    fn from_private(private: &Bound<'_, PyAny>) -> PyResult<Keypair> {
        Ok(Keypair { inner: vw::Keypair::from_private(vw::PrivateKey::from_bytes(key32(private, "a private key")?)) })
    }
    /// Reads a private key file (refused if group/others can read it).
    #[staticmethod]
    fn load(path: std::path::PathBuf) -> PyResult<Keypair> {
        let inner = vw::keyfile::read_private_key(&path).map_err(|e| KeyFileError::new_err(e.to_string()))?;
        Ok(Keypair { inner })
    }
    /// Writes `path` (private, mode 0600) and `path + ".pub"`.
    #[pyo3(signature = (path, comment = ""))]
    fn save(&self, path: std::path::PathBuf, comment: &str) -> PyResult<()> {
        let mut public = path.clone().into_os_string();
        public.push(".pub");
        vw::keyfile::write_private_key(&path, self.inner.private(), comment)
            .and_then(|_| vw::keyfile::write_public_key(std::path::Path::new(&public), self.inner.public(), comment))
            .map_err(|e| KeyFileError::new_err(e.to_string()))
    }
    /// The 32-byte public key.
    #[getter]
    fn public<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.public().as_bytes())
    }
    /// The public key's fingerprint, e.g. `WSE4-AX72-7LQB-UTKN`.
    #[getter]
    fn fingerprint(&self) -> String {
        self.inner.public().fingerprint().to_string()
    }
    /// The 32 private-key bytes (handle with care).
    fn export_private<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.private().expose_secret())
    }
    fn __repr__(&self) -> String {
        format!("Keypair(public={})", self.inner.public().fingerprint())
    }
}

/// The fingerprint of a 32-byte public key.
#[pyfunction]
fn fingerprint(public: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(vw::PublicKey::from_bytes(key32(public, "a public key")?).fingerprint().to_string())
}

/// Reads a public key file (or the public half of a private key file).
#[pyfunction]
fn load_public_key<'py>(py: Python<'py>, path: std::path::PathBuf) -> PyResult<Bound<'py, PyBytes>> {
    let k = vw::keyfile::read_public_key(&path).map_err(|e| KeyFileError::new_err(e.to_string()))?;
    Ok(PyBytes::new(py, k.as_bytes()))
}

/// The host's allowlist of device keys, in memory or in a crash-safe file.
#[pyclass(frozen, module = "vitalwire._native")]
struct TrustStore {
    inner: Arc<vw::TrustStore>,
}

#[pymethods]
impl TrustStore {
    /// An empty in-memory store.
    #[new]
    fn new() -> TrustStore {
        TrustStore { inner: Arc::new(vw::TrustStore::in_memory(vw::TrustList::new())) }
    }
    /// Opens an existing store file (a missing or damaged file is an error).
    #[staticmethod]
    fn open(path: std::path::PathBuf) -> PyResult<TrustStore> {
        Ok(TrustStore { inner: Arc::new(vw::TrustStore::open(path).map_err(|e| KeyFileError::new_err(e.to_string()))?) })
    }
    /// Creates a new, empty store file.
    #[staticmethod]
    fn create(path: std::path::PathBuf) -> PyResult<TrustStore> {
        Ok(TrustStore { inner: Arc::new(vw::TrustStore::create(path).map_err(|e| KeyFileError::new_err(e.to_string()))?) })
    }
    /// Admits a device key.
    #[pyo3(signature = (public, device_id, label = ""))]
    fn add(&self, public: &Bound<'_, PyAny>, device_id: &str, label: &str) -> PyResult<()> {
        let key = vw::PublicKey::from_bytes(key32(public, "a public key")?);
        self.inner.add(key, device_id, label).map_err(|e| KeyFileError::new_err(e.to_string()))
    }
    /// Revokes a device key; returns whether it was known.
    fn revoke(&self, public: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = vw::PublicKey::from_bytes(key32(public, "a public key")?);
        self.inner.revoke(&key).map_err(|e| KeyFileError::new_err(e.to_string()))
    }
    /// Trust on first use (off unless switched on).
    fn set_tofu(&self, on: bool) -> PyResult<()> {
        self.inner.set_tofu(on).map_err(|e| KeyFileError::new_err(e.to_string()))
    }
    /// `"trusted"`, `"unknown"` or `"revoked"`.
    #[pyo3(signature = (public, device_id = None))]
    fn decision(&self, public: &Bound<'_, PyAny>, device_id: Option<&str>) -> PyResult<&'static str> {
        let key = vw::PublicKey::from_bytes(key32(public, "a public key")?);
        let id = device_id.map(vw::DeviceIdentity::new);
        Ok(match self.inner.snapshot().decide(&key, id.as_ref()) {
            vw::TrustDecision::Trusted => "trusted",
            vw::TrustDecision::Unknown => "unknown",
            vw::TrustDecision::Revoked => "revoked",
        })
    }
    /// Every entry as a dict.
    fn entries<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for e in self.inner.snapshot().entries() {
            let d = PyDict::new(py);
            d.set_item("public", PyBytes::new(py, e.key.as_bytes()))?;
            d.set_item("fingerprint", e.key.fingerprint().to_string())?;
            d.set_item("device_id", &e.device_id)?;
            d.set_item("label", &e.label)?;
            d.set_item("added_at", e.added_at)?;
            d.set_item("last_seen", e.last_seen)?;
            d.set_item("revoked_at", e.revoked_at)?;
            list.append(d)?;
        }
        Ok(list)
    }
    fn __len__(&self) -> usize {
        self.inner.snapshot().len()
    }
}

/// One received item.
#[pyclass(frozen, get_all, module = "vitalwire._native")]
struct Message {
    /// `"data"`, `"ping"`, `"pong"`, `"rekey"`, `"closed"` or `"fragment"`.
    kind: &'static str,
    /// The channel (data only).
    channel: u8,
    /// The payload (data, pong), else empty.
    payload: Py<PyBytes>,
    /// The close code (closed only).
    close_code: Option<u16>,
}

#[pymethods]
impl Message {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!("Message(kind={:?}, channel={}, payload={} bytes)", self.kind, self.channel, self.payload.bind(py).as_bytes().len())
    }
}

fn message(py: Python<'_>, incoming: vw::Incoming) -> Message {
    let (kind, channel, payload, close_code): (&'static str, u8, &[u8], Option<u16>) = match &incoming {
        vw::Incoming::Data { channel, payload } => ("data", *channel, payload, None),
        vw::Incoming::Ping => ("ping", 0, &[], None),
        vw::Incoming::Pong(p) => ("pong", 0, p, None),
        vw::Incoming::Rekeyed => ("rekey", 0, &[], None),
        vw::Incoming::Closed(c) => ("closed", 0, &[], Some(c.0)),
        vw::Incoming::Fragment => ("fragment", 0, &[], None),
        _ => ("unknown", 0, &[], None),
    };
    Message { kind, channel, payload: PyBytes::new(py, payload).unbind(), close_code }
}

/// A security event (no secrets, no payload).
#[pyclass(frozen, get_all, module = "vitalwire._native")]
struct SecurityEvent {
    /// e.g. `"unknown_peer"`, `"authentication_failure"`.
    kind: String,
    /// `"info"`, `"warning"` or `"alert"`.
    severity: String,
    /// Milliseconds, the time passed in.
    time: u64,
    /// The peer key's fingerprint, when known.
    peer: Option<String>,
    /// The device id the peer claimed, when known.
    device_id: Option<String>,
    /// The whole event as one line of JSON.
    json: String,
}

#[pymethods]
impl SecurityEvent {
    fn __repr__(&self) -> String {
        format!("SecurityEvent({})", self.json)
    }
}

fn event(e: vw::SecurityEvent) -> SecurityEvent {
    let json = e.to_json_line();
    let kind = json
        .split("\"event\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("unknown")
        .to_string();
    SecurityEvent {
        kind,
        severity: format!("{:?}", e.severity).to_lowercase(),
        time: e.time.0,
        peer: e.peer.map(|p| p.to_string()),
        device_id: e.device_id,
        json,
    }
}

fn profile(name: &str) -> PyResult<vw::Profile> {
    vw::Profile::from_name(name).ok_or_else(|| ConfigError::new_err(format!("unknown profile {name:?} (xx, ik, kk, xxpsk3)")))
}

fn suite(name: &str) -> PyResult<vw::CipherSuite> {
    vw::CipherSuite::from_name(name).ok_or_else(|| ConfigError::new_err(format!("unknown suite {name:?} (chachapoly, aesgcm)")))
}

#[allow(clippy::too_many_arguments)]
fn initiator_config(
    profile_name: &str,
    keypair: &Keypair,
    device_id: &str,
    suite_name: &str,
    host_key: Option<&Bound<'_, PyAny>>,
    pinned_host_keys: Option<Vec<Bound<'_, PyAny>>>,
    psk: Option<&Bound<'_, PyAny>>,
    psk_id: Option<&Bound<'_, PyAny>>,
    pairing: bool,
    model: &str,
    firmware: &str,
    max_frame_len: u16,
    ephemeral: Option<&Bound<'_, PyAny>>,
) -> PyResult<vw::InitiatorConfig> {
    let identity = vw::DeviceIdentity {
        device_id: device_id.into(),
        model: model.into(),
        firmware: firmware.into(),
        max_frame_len,
    };
    let mut c = vw::InitiatorConfig::new(profile(profile_name)?, keypair.inner.clone(), identity).suite(suite(suite_name)?);
    if let Some(k) = host_key {
        c = c.host_key(vw::PublicKey::from_bytes(key32(k, "host_key")?));
    }
    if let Some(keys) = pinned_host_keys {
        let mut pins = Vec::new();
        for k in &keys {
            pins.push(vw::PublicKey::from_bytes(key32(k, "a pinned host key")?));
        }
        c = c.pin_host_keys(pins);
    }
    match (psk, psk_id) {
        (Some(k), Some(id)) => c = c.psk(&owned_bytes(id)?, vw::Psk::from_bytes(key32(k, "psk")?)),
        (None, None) => {}
        _ => return Err(ConfigError::new_err("give both psk and psk_id")),
    }
    if pairing {
        c = c.request_pairing();
    }
    if let Some(e) = ephemeral {
        c = c.fixed_ephemeral_for_testing_only(vw::PrivateKey::from_bytes(key32(e, "ephemeral")?));
    }
    Ok(c)
}

enum Phase {
    Handshaking(Box<vw::Handshake>),
    Established(Box<vw::Session>),
    Failed(vw::Error),
}

struct ConnInner {
    phase: Phase,
    recv: BytesMut,
    out: BytesMut,
    decoder: vw::StreamDecoder,
    events: Vec<vw::SecurityEvent>,
    now: u64,
}

impl ConnInner {
    fn drain_events(&mut self) {
        let now = vw::Timestamp(self.now);
        match &mut self.phase {
            Phase::Handshaking(h) => self.events.extend(std::iter::from_fn(|| h.poll_event(now))),
            Phase::Established(s) => self.events.extend(std::iter::from_fn(|| s.poll_event(now))),
            Phase::Failed(_) => {}
        }
    }

    /// Writes what the handshake wants to send, and promotes it to a session when done.
    fn advance(&mut self) -> Result<(), vw::Error> {
        if let Phase::Handshaking(h) = &mut self.phase {
            while h.wants_write() {
                h.write_message(&mut self.out)?;
                if let Some(e) = h.error() {
                    return Err(e);
                }
            }
            if h.is_finished() {
                self.drain_events();
                let Phase::Handshaking(h) = std::mem::replace(&mut self.phase, Phase::Failed(vw::Error::Closed)) else {
                    unreachable!()
                };
                let session = h.into_session()?;
                self.decoder.set_max_frame_len(session.max_frame_len());
                self.phase = Phase::Established(Box::new(session));
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: vw::Error) -> vw::Error {
        self.drain_events();
        if e.is_fatal() {
            if let Phase::Established(s) = &mut self.phase {
                s.poll_transmit(&mut self.out);
            }
            if let Phase::Handshaking(h) = &mut self.phase {
                while h.wants_write() && h.write_message(&mut self.out).is_ok() {}
                self.events.extend(std::iter::from_fn(|| h.poll_event(vw::Timestamp(self.now))));
            }
            self.phase = Phase::Failed(e);
        }
        e
    }
}

/// One connection over a byte stream (TCP, serial, BLE L2CAP), device or host side: the
/// handshake, then the session. Feed received bytes to `receive()`, send what
/// `data_to_send()` returns.
#[pyclass(frozen, module = "vitalwire._native")]
struct Connection {
    inner: Mutex<ConnInner>,
}

impl Connection {
    fn wrap(hs: vw::Handshake) -> PyResult<Connection> {
        let mut inner = ConnInner {
            decoder: vw::StreamDecoder::new(hs.max_frame_len()),
            phase: Phase::Handshaking(Box::new(hs)),
            recv: BytesMut::new(),
            out: BytesMut::new(),
            events: Vec::new(),
            now: 0,
        };
        inner.advance().map_err(err)?;
        Ok(Connection { inner: Mutex::new(inner) })
    }

    fn session<R>(&self, f: impl FnOnce(&mut vw::Session, &mut BytesMut) -> Result<R, vw::Error>) -> PyResult<R> {
        let mut g = lock(&self.inner);
        let inner = &mut *g;
        let r = match &mut inner.phase {
            Phase::Established(s) => f(s, &mut inner.out),
            Phase::Handshaking(_) => return Err(ConfigError::new_err("the handshake is not finished")),
            Phase::Failed(e) => Err(*e),
        };
        inner.drain_events();
        r.map_err(|e| err(inner.fail(e)))
    }
}

#[pymethods]
impl Connection {
    /// The device's side. `profile`: xx, ik, kk, xxpsk3; `suite`: chachapoly, aesgcm.
    #[staticmethod]
    #[pyo3(signature = (keypair, device_id, *, profile = "ik", suite = "chachapoly", host_key = None,
        pinned_host_keys = None, psk = None, psk_id = None, pairing = false, model = "", firmware = "",
        max_frame_len = 65535, ephemeral_for_testing_only = None))]
    #[allow(clippy::too_many_arguments)]
    fn initiator(
        keypair: &Keypair,
        device_id: &str,
        profile: &str,
        suite: &str,
        host_key: Option<&Bound<'_, PyAny>>,
        pinned_host_keys: Option<Vec<Bound<'_, PyAny>>>,
        psk: Option<&Bound<'_, PyAny>>,
        psk_id: Option<&Bound<'_, PyAny>>,
        pairing: bool,
        model: &str,
        firmware: &str,
        max_frame_len: u16,
        ephemeral_for_testing_only: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Connection> {
        let c = initiator_config(
            profile,
            keypair,
            device_id,
            suite,
            host_key,
            pinned_host_keys,
            psk,
            psk_id,
            pairing,
            model,
            firmware,
            max_frame_len,
            ephemeral_for_testing_only,
        )?;
        Connection::wrap(vw::Handshake::initiator(c).map_err(err)?)
    }

    /// The host's side: admits the devices `trust` admits.
    #[staticmethod]
    #[pyo3(signature = (keypair, trust, *, max_frame_len = 65535, rekey_interval = 1048576,
        max_message_len = 4194304, profiles = None, suites = None, psks = None, allow_pairing = false,
        ephemeral_for_testing_only = None))]
    #[allow(clippy::too_many_arguments)]
    fn responder(
        keypair: &Keypair,
        trust: &TrustStore,
        max_frame_len: u16,
        rekey_interval: u32,
        max_message_len: u32,
        profiles: Option<Vec<String>>,
        suites: Option<Vec<String>>,
        psks: Option<Bound<'_, PyDict>>,
        allow_pairing: bool,
        ephemeral_for_testing_only: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Connection> {
        let policy: Arc<dyn vw::TrustPolicy> = trust.inner.clone();
        let mut c = vw::ResponderConfig::new(keypair.inner.clone(), policy)
            .params(vw::SessionParams { max_frame_len, rekey_interval, max_message_len })
            .allow_pairing(allow_pairing);
        if let Some(ps) = profiles {
            c = c.profiles(&ps.iter().map(|p| profile(p)).collect::<PyResult<Vec<_>>>()?);
        }
        if let Some(ss) = suites {
            c = c.suites(&ss.iter().map(|s| suite(s)).collect::<PyResult<Vec<_>>>()?);
        }
        if let Some(d) = psks {
            let mut dir = vw::StaticPskDirectory::new();
            for (id, key) in d.iter() {
                dir.add(&owned_bytes(&id)?, vw::Psk::from_bytes(key32(&key, "psk")?));
            }
            c = c.psk_directory(Arc::new(dir));
        }
        if let Some(e) = ephemeral_for_testing_only {
            c = c.fixed_ephemeral_for_testing_only(vw::PrivateKey::from_bytes(key32(e, "ephemeral")?));
        }
        Connection::wrap(vw::Handshake::responder(c).map_err(err)?)
    }

    /// Bytes to put on the link now (handshake messages, answers, CLOSE frames).
    fn data_to_send<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let mut g = lock(&self.inner);
        let bytes = PyBytes::new(py, &g.out);
        g.out.clear();
        bytes
    }

    /// Feeds bytes received from the link; returns the messages they completed. Raises on
    /// tampering, protocol violations and handshake failures (the connection then stays
    /// failed; what it queued for the peer is in `data_to_send()`).
    fn receive<'py>(&self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Vec<Message>> {
        let mut g = lock(&self.inner);
        with_bytes(data, |b| g.recv.extend_from_slice(b))?;
        let mut messages = Vec::new();
        loop {
            let inner = &mut *g;
            if let Phase::Failed(e) = inner.phase {
                return Err(err(e));
            }
            let frame = match inner.decoder.decode(&mut inner.recv) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let e = match &mut inner.phase {
                        Phase::Established(s) => s.handle_decode_error(e),
                        _ => vw::Error::Decode(e),
                    };
                    return Err(err(inner.fail(e)));
                }
            };
            match &mut inner.phase {
                Phase::Handshaking(h) => {
                    if let Err(e) = h.read_message(&frame) {
                        return Err(err(inner.fail(e)));
                    }
                    if let Err(e) = inner.advance() {
                        return Err(err(inner.fail(e)));
                    }
                }
                Phase::Established(s) => {
                    let large = frame.len() >= DETACH_AT;
                    let result = if large { py.detach(|| s.open(frame)) } else { s.open(frame) };
                    s.poll_transmit(&mut inner.out);
                    match result {
                        Ok(incoming) => messages.push(message(py, incoming)),
                        Err(e) if !e.is_fatal() => {
                            inner.drain_events();
                            return Err(err(e));
                        }
                        Err(e) => return Err(err(inner.fail(e))),
                    }
                }
                Phase::Failed(_) => unreachable!(),
            }
        }
        g.drain_events();
        Ok(messages)
    }

    /// Seals one DATA frame and returns its bytes (also appended to nothing else).
    fn send<'py>(&self, py: Python<'py>, channel: u8, payload: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let wire = if let Ok(b) = payload.cast::<PyBytes>() {
            let data: &[u8] = b.as_bytes();
            if data.len() >= DETACH_AT {
                self.session(|s, _| py.detach(|| seal(s, channel, data)))?
            } else {
                self.session(|s, _| seal(s, channel, data))?
            }
        } else {
            let data = owned_bytes(payload)?;
            self.session(|s, _| if data.len() >= DETACH_AT { py.detach(|| seal(s, channel, &data)) } else { seal(s, channel, &data) })?
        };
        Ok(PyBytes::new(py, &wire))
    }

    /// Sends a message of any size up to the negotiated limit (fragmented when needed).
    fn send_message<'py>(&self, py: Python<'py>, channel: u8, payload: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let data = owned_bytes(payload)?;
        let wire = self.session(|s, _| {
            let mut out = BytesMut::new();
            py.detach(|| s.seal_message(channel, &data, &mut out))?;
            Ok(out)
        })?;
        Ok(PyBytes::new(py, &wire))
    }

    /// Rolls the sending key now; returns the REKEY frame.
    fn rekey<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let wire = self.session(|s, _| {
            let mut out = BytesMut::new();
            s.rekey(&mut out).map(|()| out)
        })?;
        Ok(PyBytes::new(py, &wire))
    }

    /// Sends a PING with 8 opaque bytes; returns the frame.
    fn ping<'py>(&self, py: Python<'py>, opaque: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let o: [u8; 8] = owned_bytes(opaque)?.try_into().map_err(|_| PyValueError::new_err("ping data must be 8 bytes"))?;
        let wire = self.session(|s, _| {
            let mut out = BytesMut::new();
            s.send_ping(o, &mut out).map(|()| out)
        })?;
        Ok(PyBytes::new(py, &wire))
    }

    /// Closes with a reason code (0 = normal); returns the CLOSE frame.
    #[pyo3(signature = (code = 0))]
    fn close<'py>(&self, py: Python<'py>, code: u16) -> PyResult<Bound<'py, PyBytes>> {
        let wire = self.session(|s, _| {
            let mut out = BytesMut::new();
            s.close(vw::CloseCode(code), &mut out).map(|()| out)
        })?;
        Ok(PyBytes::new(py, &wire))
    }

    /// The link ended. Raises `TruncatedError` unless the peer's CLOSE was received.
    fn end_of_stream(&self) -> PyResult<()> {
        let mut g = lock(&self.inner);
        if !g.recv.is_empty() {
            let e = vw::Error::Decode(vw::DecodeError::IncompleteFrame { buffered: g.recv.len() });
            return Err(err(g.fail(e)));
        }
        match &mut g.phase {
            Phase::Established(s) => {
                let r = s.handle_eof();
                g.drain_events();
                r.map_err(err)
            }
            Phase::Handshaking(_) => Err(err(g.fail(vw::Error::Truncated))),
            Phase::Failed(e) => Err(err(*e)),
        }
    }

    /// Runs the timers at `now_ms` (milliseconds, any epoch you keep using).
    fn handle_timeout(&self, now_ms: u64) -> PyResult<()> {
        let mut g = lock(&self.inner);
        g.now = now_ms;
        let r = match &mut g.phase {
            Phase::Handshaking(h) => h.handle_timeout(vw::Timestamp(now_ms)),
            Phase::Established(s) => s.handle_timeout(vw::Timestamp(now_ms)),
            Phase::Failed(e) => Err(*e),
        };
        let inner = &mut *g;
        if let Phase::Established(s) = &mut inner.phase {
            s.poll_transmit(&mut inner.out);
        }
        inner.drain_events();
        r.map_err(|e| err(inner.fail(e)))
    }

    /// When to call `handle_timeout` next (ms), or None.
    fn poll_timeout(&self) -> Option<u64> {
        match &lock(&self.inner).phase {
            Phase::Handshaking(h) => h.poll_timeout().map(|t| t.0),
            Phase::Established(s) => s.poll_timeout().map(|t| t.0),
            Phase::Failed(_) => None,
        }
    }

    /// Security events since the last call (stamped with the last time passed in).
    fn events(&self) -> Vec<SecurityEvent> {
        let mut g = lock(&self.inner);
        g.drain_events();
        std::mem::take(&mut g.events).into_iter().map(event).collect()
    }

    /// `"handshaking"`, `"established"`, `"closed"` or `"failed"`.
    #[getter]
    fn state(&self) -> &'static str {
        match &lock(&self.inner).phase {
            Phase::Handshaking(_) => "handshaking",
            Phase::Established(s) if s.is_closed() => "closed",
            Phase::Established(_) => "established",
            Phase::Failed(_) => "failed",
        }
    }

    /// Whether the session is up.
    #[getter]
    fn is_established(&self) -> bool {
        matches!(lock(&self.inner).phase, Phase::Established(_))
    }

    /// The peer's static public key (once known).
    #[getter]
    fn remote_static<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        match &lock(&self.inner).phase {
            Phase::Established(s) => Some(PyBytes::new(py, s.remote_static().as_bytes())),
            Phase::Handshaking(h) => h.remote_static().map(|k| PyBytes::new(py, k.as_bytes())),
            Phase::Failed(_) => None,
        }
    }

    /// The device's identity (host side) as a dict.
    #[getter]
    fn peer_identity<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let g = lock(&self.inner);
        let Phase::Established(s) = &g.phase else { return Ok(None) };
        let Some(id) = s.peer_identity() else { return Ok(None) };
        let d = PyDict::new(py);
        d.set_item("device_id", &id.device_id)?;
        d.set_item("model", &id.model)?;
        d.set_item("firmware", &id.firmware)?;
        d.set_item("max_frame_len", id.max_frame_len)?;
        Ok(Some(d))
    }

    /// The Noise handshake hash (32 bytes), once established.
    #[getter]
    fn handshake_hash<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        match &lock(&self.inner).phase {
            Phase::Established(s) => Some(PyBytes::new(py, s.handshake_hash())),
            _ => None,
        }
    }

    /// In a pairing session: the 6-digit code to compare.
    #[getter]
    fn pairing_code(&self) -> Option<String> {
        match &lock(&self.inner).phase {
            Phase::Established(s) => s.pairing_code().map(|c| c.to_string()),
            _ => None,
        }
    }

    /// The largest payload `send` accepts.
    #[getter]
    fn max_payload_len(&self) -> Option<usize> {
        match &lock(&self.inner).phase {
            Phase::Established(s) => Some(s.max_payload_len()),
            _ => None,
        }
    }

    fn __repr__(&self) -> String {
        format!("Connection(state={:?})", self.state())
    }
}

fn seal(s: &mut vw::Session, channel: u8, data: &[u8]) -> Result<BytesMut, vw::Error> {
    let mut out = BytesMut::with_capacity(data.len() + 32);
    s.seal_data(channel, data, &mut out)?;
    Ok(out)
}

/// A device in datagram mode (UDP, BLE): handshake with retransmission, replay window, key
/// epochs. Send what `transmit()` returns as separate datagrams.
#[pyclass(frozen, module = "vitalwire._native")]
struct DatagramClient {
    inner: Mutex<CoreDatagramClient>,
}

#[pymethods]
impl DatagramClient {
    #[new]
    #[pyo3(signature = (keypair, device_id, now_ms, *, profile = "ik", suite = "chachapoly", host_key = None,
        pinned_host_keys = None, psk = None, psk_id = None, index = 1))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        keypair: &Keypair,
        device_id: &str,
        now_ms: u64,
        profile: &str,
        suite: &str,
        host_key: Option<&Bound<'_, PyAny>>,
        pinned_host_keys: Option<Vec<Bound<'_, PyAny>>>,
        psk: Option<&Bound<'_, PyAny>>,
        psk_id: Option<&Bound<'_, PyAny>>,
        index: u32,
    ) -> PyResult<DatagramClient> {
        let c = initiator_config(
            profile, keypair, device_id, suite, host_key, pinned_host_keys, psk, psk_id, false, "", "", 65535, None,
        )?;
        let client =
            CoreDatagramClient::new(c, index, DatagramConfig::default(), vw::Timestamp(now_ms)).map_err(err)?;
        Ok(DatagramClient { inner: Mutex::new(client) })
    }

    /// Datagrams to send now.
    fn transmit<'py>(&self, py: Python<'py>, now_ms: u64) -> Vec<Bound<'py, PyBytes>> {
        let mut c = lock(&self.inner);
        std::iter::from_fn(|| c.poll_transmit(vw::Timestamp(now_ms))).map(|p| PyBytes::new(py, &p)).collect()
    }

    /// Takes one received datagram; raises `ReplayError`, `AuthenticationError` or
    /// `DecodeError` for a dropped one (the session goes on).
    fn receive(&self, packet: &Bound<'_, PyAny>, now_ms: u64) -> PyResult<()> {
        let data = owned_bytes(packet)?;
        lock(&self.inner).handle_packet(BytesMut::from(&data[..]), vw::Timestamp(now_ms)).map_err(err)
    }

    /// Seals DATA (sent by the next `transmit()`).
    fn send(&self, channel: u8, payload: &Bound<'_, PyAny>, now_ms: u64) -> PyResult<()> {
        let data = owned_bytes(payload)?;
        lock(&self.inner).send(channel, &data, vw::Timestamp(now_ms)).map_err(err)
    }

    /// Received messages.
    fn messages(&self, py: Python<'_>) -> Vec<Message> {
        let mut c = lock(&self.inner);
        std::iter::from_fn(|| c.poll_incoming()).map(|i| message(py, i)).collect()
    }

    /// When to call `handle_timeout` (ms).
    fn poll_timeout(&self) -> Option<u64> {
        lock(&self.inner).poll_timeout().map(|t| t.0)
    }

    /// Retransmissions, keepalives, timeouts.
    fn handle_timeout(&self, now_ms: u64) -> PyResult<()> {
        lock(&self.inner).handle_timeout(vw::Timestamp(now_ms)).map_err(err)
    }

    /// Security events.
    fn events(&self, now_ms: u64) -> Vec<SecurityEvent> {
        let mut c = lock(&self.inner);
        std::iter::from_fn(|| c.poll_event(vw::Timestamp(now_ms))).map(event).collect()
    }

    /// Whether the session is up.
    #[getter]
    fn is_established(&self) -> bool {
        lock(&self.inner).is_established()
    }
}

/// Splits datagrams for a small link MTU and reassembles them (bounded).
#[pyclass(frozen, module = "vitalwire._native")]
struct FragmentLink {
    inner: Mutex<CoreFragmentLink>,
}

#[pymethods]
impl FragmentLink {
    #[new]
    #[pyo3(signature = (mtu, *, max_message_len = 65536, max_in_flight = 4, timeout_ms = 10000))]
    fn new(mtu: usize, max_message_len: usize, max_in_flight: usize, timeout_ms: u64) -> PyResult<FragmentLink> {
        let limits = ReassemblyLimits { max_message_len, max_in_flight, timeout_ms };
        Ok(FragmentLink { inner: Mutex::new(CoreFragmentLink::new(mtu, limits).map_err(err)?) })
    }

    /// The link packets of one datagram.
    fn split<'py>(&self, py: Python<'py>, datagram: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let d = owned_bytes(datagram)?;
        let pieces = lock(&self.inner).split(&d).map_err(err)?;
        Ok(pieces.iter().map(|p| PyBytes::new(py, p)).collect())
    }

    /// Takes one link packet; returns a datagram when complete, else None. A dropped
    /// fragment raises `DecodeError`.
    fn receive<'py>(&self, py: Python<'py>, packet: &Bound<'py, PyAny>, now_ms: u64) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let p = owned_bytes(packet)?;
        match lock(&self.inner).receive(&p, vw::Timestamp(now_ms)) {
            Ok(Some(d)) => Ok(Some(PyBytes::new(py, &d))),
            Ok(None) => Ok(None),
            Err(drop) => Err(DecodeError::new_err(format!("fragment dropped: {drop:?}"))),
        }
    }

    /// Bytes held in partial datagrams.
    #[getter]
    fn buffered_bytes(&self) -> usize {
        lock(&self.inner).buffered_bytes()
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Keypair>()?;
    m.add_class::<TrustStore>()?;
    m.add_class::<Connection>()?;
    m.add_class::<Message>()?;
    m.add_class::<SecurityEvent>()?;
    m.add_class::<DatagramClient>()?;
    m.add_class::<FragmentLink>()?;
    m.add_function(wrap_pyfunction!(fingerprint, m)?)?;
    m.add_function(wrap_pyfunction!(load_public_key, m)?)?;
    for (name, ty) in [
        ("VitalwireError", py.get_type::<VitalwireError>()),
        ("DecodeError", py.get_type::<DecodeError>()),
        ("HandshakeError", py.get_type::<HandshakeError>()),
        ("UntrustedPeerError", py.get_type::<UntrustedPeerError>()),
        ("AuthenticationError", py.get_type::<AuthenticationError>()),
        ("ReplayError", py.get_type::<ReplayError>()),
        ("ProtocolError", py.get_type::<ProtocolError>()),
        ("TruncatedError", py.get_type::<TruncatedError>()),
        ("ClosedError", py.get_type::<ClosedError>()),
        ("PayloadTooLargeError", py.get_type::<PayloadTooLargeError>()),
        ("SessionTimeoutError", py.get_type::<SessionTimeoutError>()),
        ("ConfigError", py.get_type::<ConfigError>()),
        ("KeyFileError", py.get_type::<KeyFileError>()),
    ] {
        m.add(name, ty)?;
    }
    m.add("PROTOCOL_VERSION", vw::PROTOCOL_VERSION)?;
    Ok(())
}
