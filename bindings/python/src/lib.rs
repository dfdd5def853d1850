//! Python bindings of vitalwire. The typestate of the Rust API (handshake consumed into a
//! session) becomes one runtime object per connection, [`Connection`], whose phase changes as
//! bytes flow. Every object is guarded by a mutex, so it may be shared between threads; the
//! crypto on large frames runs with the GIL released.
//!
//! Locking rule: no thread ever waits for an object's mutex while it holds the GIL ([`locked`]).
//! A thread that holds the mutex may release the GIL (sealing a large frame) and must take it
//! back before it returns; if another thread sat on the GIL waiting for that mutex, neither
//! could go on.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

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
create_exception!(
    _native,
    UntrustedPeerError,
    HandshakeError,
    "The peer's key is unknown, revoked or not the pinned one."
);
create_exception!(
    _native,
    AuthenticationError,
    VitalwireError,
    "A message failed authentication (forged, corrupted, wrong key)."
);
create_exception!(
    _native,
    ReplayError,
    VitalwireError,
    "A datagram was a replay or older than the replay window."
);
create_exception!(_native, ProtocolError, VitalwireError, "The peer broke the protocol's rules.");
create_exception!(
    _native,
    TruncatedError,
    VitalwireError,
    "The stream ended without an authenticated CLOSE."
);
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
        E::Handshake(H::AuthenticationFailed)
        | E::AuthenticationFailed
        | E::Dropped(D::AuthenticationFailed) => AuthenticationError::new_err(msg),
        E::Handshake(H::Timeout) | E::DeadPeer | E::SessionExpired => SessionTimeoutError::new_err(msg),
        E::Handshake(_) => HandshakeError::new_err(msg),
        E::Dropped(D::Replay | D::TooOld) => ReplayError::new_err(msg),
        // Not fatal: one datagram is gone, the session goes on (as in Kotlin and Swift).
        E::Dropped(_) => DecodeError::new_err(msg),
        E::Truncated => TruncatedError::new_err(msg),
        E::Closed | E::ClosedByPeer(_) => ClosedError::new_err(msg),
        E::PayloadTooLarge { .. } => PayloadTooLargeError::new_err(msg),
        // Local misuse, not the peer's fault; the session goes on.
        E::Config(_) | E::PairingSession => ConfigError::new_err(msg),
        E::Key(_) => KeyFileError::new_err(msg),
        _ => ProtocolError::new_err(msg),
    }
}

/// The bytes of a `bytes`, `bytearray` or `memoryview` (any buffer of bytes). `bytes` is
/// immutable, so it is read in place (also with the GIL released: the caller's reference keeps
/// it alive). Any other buffer is copied first: it is mutable, and holding the GIL does not
/// keep it still, since native code that released the GIL (another extension's thread) may
/// write to it at any time.
fn input<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Cow::Borrowed(b.as_bytes()));
    }
    let buf = PyBuffer::<u8>::get(obj)
        .map_err(|_| PyTypeError::new_err("expected bytes, bytearray or memoryview"))?;
    Ok(Cow::Owned(buf.to_vec(obj.py())?))
}

fn owned_bytes(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    Ok(input(obj)?.into_owned())
}

fn key32(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<[u8; 32]> {
    let v = owned_bytes(obj)?;
    v.as_slice()
        .try_into()
        .map_err(|_| PyValueError::new_err(format!("{what} must be 32 bytes, got {}", v.len())))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` on the value behind `m`, with the GIL released when `detach` or when another thread
/// holds the mutex: the wait for a mutex never happens with the GIL held (see the module docs).
/// `f` is plain Rust; results become Python objects after the mutex is released.
fn locked<T: Send, R: Send>(
    py: Python<'_>,
    m: &Mutex<T>,
    detach: bool,
    f: impl FnOnce(&mut T) -> R + Send,
) -> R {
    if !detach {
        match m.try_lock() {
            Ok(mut guard) => return f(&mut guard),
            Err(TryLockError::Poisoned(p)) => return f(&mut p.into_inner()),
            Err(TryLockError::WouldBlock) => {}
        }
    }
    py.detach(|| f(&mut lock(m)))
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
        Ok(Keypair {
            inner: vw::Keypair::from_private(vw::PrivateKey::from_bytes(key32(private, "a private key")?)),
        })
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
            .and_then(|_| {
                vw::keyfile::write_public_key(std::path::Path::new(&public), self.inner.public(), comment)
            })
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
        Ok(TrustStore {
            inner: Arc::new(vw::TrustStore::open(path).map_err(|e| KeyFileError::new_err(e.to_string()))?),
        })
    }
    /// Creates a new, empty store file.
    #[staticmethod]
    fn create(path: std::path::PathBuf) -> PyResult<TrustStore> {
        Ok(TrustStore {
            inner: Arc::new(vw::TrustStore::create(path).map_err(|e| KeyFileError::new_err(e.to_string()))?),
        })
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
        format!(
            "Message(kind={:?}, channel={}, payload={} bytes)",
            self.kind,
            self.channel,
            self.payload.bind(py).as_bytes().len()
        )
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
    SecurityEvent {
        kind: e.kind.name().to_string(),
        severity: e.severity.name().to_string(),
        time: e.time.0,
        peer: e.peer.map(|p| p.to_string()),
        json: e.to_json_line(),
        device_id: e.device_id,
    }
}

fn profile(name: &str) -> PyResult<vw::Profile> {
    vw::Profile::from_name(name)
        .ok_or_else(|| ConfigError::new_err(format!("unknown profile {name:?} (xx, ik, kk, xxpsk3)")))
}

fn suite(name: &str) -> PyResult<vw::CipherSuite> {
    vw::CipherSuite::from_name(name)
        .ok_or_else(|| ConfigError::new_err(format!("unknown suite {name:?} (chachapoly, aesgcm)")))
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
    let mut c = vw::InitiatorConfig::new(profile(profile_name)?, keypair.inner.clone(), identity)
        .suite(suite(suite_name)?);
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

/// One connection over a byte stream (TCP, serial, BLE L2CAP), device or host side: the
/// handshake, then the session. Feed received bytes to `receive()`, send what
/// `data_to_send()` returns. Each call is atomic, so threads may share it; the bytes of
/// `send()` and of `data_to_send()` must reach the link in the order the calls returned them.
#[pyclass(frozen, module = "vitalwire._native")]
struct Connection {
    inner: Mutex<vw::Connection>,
}

impl Connection {
    fn wrap(hs: vw::Handshake, handshake_timeout_ms: Option<u64>) -> PyResult<Connection> {
        let hs = match handshake_timeout_ms {
            Some(0) => return Err(ConfigError::new_err("handshake_timeout_ms must be at least 1")),
            Some(ms) => hs.with_timeout_ms(ms),
            None => hs,
        };
        Ok(Connection { inner: Mutex::new(vw::Connection::new(hs).map_err(err)?) })
    }

    /// Runs `f` on the connection, with the GIL released when `large` (see [`locked`]).
    fn run<R: Send>(
        &self,
        py: Python<'_>,
        large: bool,
        f: impl FnOnce(&mut vw::Connection) -> Result<R, vw::Error> + Send,
    ) -> PyResult<R> {
        locked(py, &self.inner, large, f).map_err(err)
    }

    /// Reads the connection (never with the GIL held while waiting for it).
    fn read<R: Send>(&self, py: Python<'_>, f: impl FnOnce(&mut vw::Connection) -> R + Send) -> R {
        locked(py, &self.inner, false, f)
    }
}

#[pymethods]
impl Connection {
    /// The device's side. `profile`: xx, ik, kk, xxpsk3; `suite`: chachapoly, aesgcm.
    /// `handshake_timeout_ms` (default 10 s) counts from the first `handle_timeout` call.
    #[staticmethod]
    #[pyo3(signature = (keypair, device_id, *, profile = "ik", suite = "chachapoly", host_key = None,
        pinned_host_keys = None, psk = None, psk_id = None, pairing = false, model = "", firmware = "",
        max_frame_len = 65535, handshake_timeout_ms = None, ephemeral_for_testing_only = None))]
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
        handshake_timeout_ms: Option<u64>,
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
        Connection::wrap(vw::Handshake::initiator(c).map_err(err)?, handshake_timeout_ms)
    }

    /// The host's side: admits the devices `trust` admits. `handshake_timeout_ms` (default
    /// 10 s) counts from the first `handle_timeout` call.
    #[staticmethod]
    #[pyo3(signature = (keypair, trust, *, max_frame_len = 65535, rekey_interval = 1048576,
        max_message_len = 4194304, profiles = None, suites = None, psks = None, allow_pairing = false,
        handshake_timeout_ms = None, ephemeral_for_testing_only = None))]
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
        handshake_timeout_ms: Option<u64>,
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
        Connection::wrap(vw::Handshake::responder(c).map_err(err)?, handshake_timeout_ms)
    }

    /// Bytes to put on the link now (handshake messages, answers, CLOSE frames).
    fn data_to_send<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.read(py, |c| c.take_output()))
    }

    /// Feeds bytes received from the link; returns every message they completed. A frame of
    /// unknown kind is skipped and reported in `events()`, never raised. Raises on tampering,
    /// protocol violations and handshake failures (the connection then stays failed; what it
    /// queued for the peer is in `data_to_send()`); when messages authenticated before the
    /// failure in the same bytes, they are returned first, `state` is "failed", and the next
    /// call raises (`poll_timeout()` is then due at once).
    fn receive<'py>(&self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Vec<Message>> {
        let bytes = input(data)?;
        let bytes: &[u8] = &bytes;
        let incoming = self.run(py, bytes.len() >= DETACH_AT, |c| c.receive(bytes))?;
        Ok(incoming.into_iter().map(|i| message(py, i)).collect())
    }

    /// Seals one DATA frame and returns its bytes.
    fn send<'py>(
        &self,
        py: Python<'py>,
        channel: u8,
        payload: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = input(payload)?;
        let data: &[u8] = &data;
        let wire = self.run(py, data.len() >= DETACH_AT, |c| c.send(channel, data))?;
        Ok(PyBytes::new(py, &wire))
    }

    /// Sends a message of any size up to the negotiated limit (fragmented when needed).
    fn send_message<'py>(
        &self,
        py: Python<'py>,
        channel: u8,
        payload: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = input(payload)?;
        let data: &[u8] = &data;
        let wire = self.run(py, data.len() >= DETACH_AT, |c| c.send_message(channel, data))?;
        Ok(PyBytes::new(py, &wire))
    }

    /// Rolls the sending key now; returns the REKEY frame.
    fn rekey<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.run(py, false, |c| c.rekey())?))
    }

    /// Sends a PING with 8 opaque bytes; returns the frame.
    fn ping<'py>(&self, py: Python<'py>, opaque: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let o: [u8; 8] = owned_bytes(opaque)?
            .try_into()
            .map_err(|_| PyValueError::new_err("ping data must be 8 bytes"))?;
        Ok(PyBytes::new(py, &self.run(py, false, |c| c.ping(o))?))
    }

    /// Closes with a reason code (0 = normal); returns the CLOSE frame.
    #[pyo3(signature = (code = 0))]
    fn close<'py>(&self, py: Python<'py>, code: u16) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.run(py, false, |c| c.close(vw::CloseCode(code)))?))
    }

    /// Seals a frame with any kind, flags and channel (a newer peer's kinds, broken frames):
    /// for tests of how a peer handles them, never for applications.
    #[pyo3(signature = (kind, flags, channel, payload))]
    fn send_raw_for_testing_only<'py>(
        &self,
        py: Python<'py>,
        kind: u8,
        flags: u8,
        channel: u8,
        payload: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = owned_bytes(payload)?;
        let wire = self.run(py, false, |c| c.send_raw_for_testing_only(kind, flags, channel, &data))?;
        Ok(PyBytes::new(py, &wire))
    }

    /// The link ended. Raises `TruncatedError` unless the peer's CLOSE was received.
    fn end_of_stream(&self, py: Python<'_>) -> PyResult<()> {
        self.run(py, false, |c| c.end_of_stream())
    }

    /// Runs the timers at `now_ms` (milliseconds, any epoch you keep using, on a clock that
    /// never jumps): call it when the connection opens (that starts the handshake clock), then
    /// whenever `poll_timeout` says. What a timer queues (a keepalive PING, a REKEY, a CLOSE) is
    /// in `data_to_send()`; a dead peer raises `SessionTimeoutError`.
    fn handle_timeout(&self, py: Python<'_>, now_ms: u64) -> PyResult<()> {
        self.run(py, false, |c| c.handle_timeout(vw::Timestamp(now_ms)))
    }

    /// When to call `handle_timeout` next (ms), or None.
    fn poll_timeout(&self, py: Python<'_>) -> Option<u64> {
        self.read(py, |c| c.poll_timeout()).map(|t| t.0)
    }

    /// Sets the time (ms, the clock passed to `handle_timeout`) stamped on the events of the
    /// calls that follow.
    fn set_time(&self, py: Python<'_>, now_ms: u64) {
        self.read(py, |c| c.set_time(vw::Timestamp(now_ms)))
    }

    /// Replaces the session timers (spec/PROTOCOL.md §7.4), in milliseconds; None switches one
    /// off. They run only when `handle_timeout` is called at the times `poll_timeout` asks
    /// for; the defaults are the spec's.
    #[pyo3(signature = (*, keepalive_ms = vw::TimerConfig::default().keepalive_ms,
        dead_peer_ms = vw::TimerConfig::default().dead_peer_ms,
        rekey_after_ms = vw::TimerConfig::default().rekey_after_ms,
        max_lifetime_ms = vw::TimerConfig::default().max_lifetime_ms))]
    fn set_timers(
        &self,
        py: Python<'_>,
        keepalive_ms: Option<u64>,
        dead_peer_ms: Option<u64>,
        rekey_after_ms: Option<u64>,
        max_lifetime_ms: Option<u64>,
    ) -> PyResult<()> {
        if [keepalive_ms, dead_peer_ms, rekey_after_ms, max_lifetime_ms].contains(&Some(0)) {
            return Err(ConfigError::new_err(
                "a timer of 0 ms would fire on every call: give None to switch it off",
            ));
        }
        let timers = vw::TimerConfig { keepalive_ms, dead_peer_ms, rekey_after_ms, max_lifetime_ms };
        self.read(py, |c| c.set_timers(timers));
        Ok(())
    }

    /// Security events since the last call (stamped with the last time passed in).
    fn events(&self, py: Python<'_>) -> Vec<SecurityEvent> {
        self.read(py, |c| c.take_events()).into_iter().map(event).collect()
    }

    /// `"handshaking"`, `"established"`, `"closed"` or `"failed"`.
    #[getter]
    fn state(&self, py: Python<'_>) -> &'static str {
        match self.read(py, |c| c.state()) {
            vw::ConnectionState::Handshaking => "handshaking",
            vw::ConnectionState::Established => "established",
            vw::ConnectionState::Closed => "closed",
            vw::ConnectionState::Failed => "failed",
        }
    }

    /// Whether the session is up.
    #[getter]
    fn is_established(&self, py: Python<'_>) -> bool {
        self.read(py, |c| c.session().is_some())
    }

    /// The peer's static public key (once known).
    #[getter]
    fn remote_static<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        let key = self.read(py, |c| match (c.session(), c.handshake()) {
            (Some(s), _) => Some(*s.remote_static()),
            (None, Some(h)) => h.remote_static(),
            _ => None,
        });
        key.map(|k| PyBytes::new(py, k.as_bytes()))
    }

    /// The device's identity (host side) as a dict.
    #[getter]
    fn peer_identity<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let id = self.read(py, |c| c.session().and_then(|s| s.peer_identity()).cloned());
        let Some(id) = id else { return Ok(None) };
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
        let hash = self.read(py, |c| c.session().map(|s| *s.handshake_hash()));
        hash.map(|h| PyBytes::new(py, &h))
    }

    /// In a pairing session: the 6-digit code to compare.
    #[getter]
    fn pairing_code(&self, py: Python<'_>) -> Option<String> {
        self.read(py, |c| c.session().and_then(|s| s.pairing_code()).map(|c| c.to_string()))
    }

    /// The largest payload `send` accepts.
    #[getter]
    fn max_payload_len(&self, py: Python<'_>) -> Option<usize> {
        self.read(py, |c| c.session().map(|s| s.max_payload_len()))
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!("Connection(state={:?})", self.state(py))
    }
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
            profile,
            keypair,
            device_id,
            suite,
            host_key,
            pinned_host_keys,
            psk,
            psk_id,
            false,
            "",
            "",
            65535,
            None,
        )?;
        let client = CoreDatagramClient::new(c, index, DatagramConfig::default(), vw::Timestamp(now_ms))
            .map_err(err)?;
        Ok(DatagramClient { inner: Mutex::new(client) })
    }

    /// Datagrams to send now.
    fn transmit<'py>(&self, py: Python<'py>, now_ms: u64) -> Vec<Bound<'py, PyBytes>> {
        let packets: Vec<_> = locked(py, &self.inner, false, |c| {
            std::iter::from_fn(|| c.poll_transmit(vw::Timestamp(now_ms))).collect()
        });
        packets.iter().map(|p| PyBytes::new(py, p)).collect()
    }

    /// Takes one received datagram; raises `ReplayError`, `AuthenticationError` or
    /// `DecodeError` for a dropped one (the session goes on).
    fn receive(&self, py: Python<'_>, packet: &Bound<'_, PyAny>, now_ms: u64) -> PyResult<()> {
        let data = BytesMut::from(&input(packet)?[..]);
        locked(py, &self.inner, false, |c| c.handle_packet(data, vw::Timestamp(now_ms))).map_err(err)
    }

    /// Seals DATA (sent by the next `transmit()`).
    fn send(&self, py: Python<'_>, channel: u8, payload: &Bound<'_, PyAny>, now_ms: u64) -> PyResult<()> {
        let data = input(payload)?;
        let data: &[u8] = &data;
        locked(py, &self.inner, false, |c| c.send(channel, data, vw::Timestamp(now_ms))).map_err(err)
    }

    /// Received messages.
    fn messages(&self, py: Python<'_>) -> Vec<Message> {
        let incoming: Vec<_> =
            locked(py, &self.inner, false, |c| std::iter::from_fn(|| c.poll_incoming()).collect());
        incoming.into_iter().map(|i| message(py, i)).collect()
    }

    /// When to call `handle_timeout` (ms).
    fn poll_timeout(&self, py: Python<'_>) -> Option<u64> {
        locked(py, &self.inner, false, |c| c.poll_timeout()).map(|t| t.0)
    }

    /// Retransmissions, keepalives, timeouts.
    fn handle_timeout(&self, py: Python<'_>, now_ms: u64) -> PyResult<()> {
        locked(py, &self.inner, false, |c| c.handle_timeout(vw::Timestamp(now_ms))).map_err(err)
    }

    /// Security events.
    fn events(&self, py: Python<'_>, now_ms: u64) -> Vec<SecurityEvent> {
        let events: Vec<_> = locked(py, &self.inner, false, |c| {
            std::iter::from_fn(|| c.poll_event(vw::Timestamp(now_ms))).collect()
        });
        events.into_iter().map(event).collect()
    }

    /// Whether the session is up.
    #[getter]
    fn is_established(&self, py: Python<'_>) -> bool {
        locked(py, &self.inner, false, |c| c.is_established())
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
    fn new(
        mtu: usize,
        max_message_len: usize,
        max_in_flight: usize,
        timeout_ms: u64,
    ) -> PyResult<FragmentLink> {
        let limits = ReassemblyLimits { max_message_len, max_in_flight, timeout_ms };
        Ok(FragmentLink { inner: Mutex::new(CoreFragmentLink::new(mtu, limits).map_err(err)?) })
    }

    /// The link packets of one datagram.
    fn split<'py>(
        &self,
        py: Python<'py>,
        datagram: &Bound<'py, PyAny>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let d = input(datagram)?;
        let d: &[u8] = &d;
        let pieces = locked(py, &self.inner, false, |l| l.split(d)).map_err(err)?;
        Ok(pieces.iter().map(|p| PyBytes::new(py, p)).collect())
    }

    /// Takes one link packet; returns a datagram when complete, else None. A dropped
    /// fragment raises `DecodeError`.
    fn receive<'py>(
        &self,
        py: Python<'py>,
        packet: &Bound<'py, PyAny>,
        now_ms: u64,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let p = input(packet)?;
        let p: &[u8] = &p;
        match locked(py, &self.inner, false, |l| l.receive(p, vw::Timestamp(now_ms))) {
            Ok(Some(d)) => Ok(Some(PyBytes::new(py, &d))),
            Ok(None) => Ok(None),
            Err(drop) => Err(DecodeError::new_err(format!("fragment dropped: {drop:?}"))),
        }
    }

    /// Bytes held in partial datagrams.
    #[getter]
    fn buffered_bytes(&self, py: Python<'_>) -> usize {
        locked(py, &self.inner, false, |l| l.buffered_bytes())
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
