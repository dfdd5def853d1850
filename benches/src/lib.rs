//! Shared setups for the benchmarks: in-memory peers of vitalwire (stream and datagram),
//! snow's bare transport and handshake, rustls TLS 1.3 with mutual certificates, and the raw
//! AEAD floor.

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::BytesMut;
use vitalwire::datagram::{DatagramConfig, DatagramHandshake, DatagramSession};
use vitalwire::*;

pub const SIZES: [usize; 4] = [64, 256, 1024, 16 * 1024];

/// The host's keypair (derived once, as a real host loads it once).
pub fn host_keys() -> Keypair {
    static K: std::sync::OnceLock<Keypair> = std::sync::OnceLock::new();
    K.get_or_init(|| Keypair::from_private(PrivateKey::from_bytes([0x11; 32]))).clone()
}
/// The device's keypair (derived once).
pub fn device_keys() -> Keypair {
    static K: std::sync::OnceLock<Keypair> = std::sync::OnceLock::new();
    K.get_or_init(|| Keypair::from_private(PrivateKey::from_bytes([0x22; 32]))).clone()
}

fn trust() -> Arc<TrustStore> {
    let mut list = TrustList::new();
    list.add(*device_keys().public(), "", "", 0);
    Arc::new(TrustStore::in_memory(list))
}

pub fn params() -> SessionParams {
    SessionParams { max_frame_len: u16::MAX, rekey_interval: 1 << 30, ..SessionParams::default() }
}

/// The two vitalwire handshakes for `profile`, ready to run.
pub fn vitalwire_handshakes(
    profile: Profile,
    suite: CipherSuite,
    trust: Arc<TrustStore>,
    x25519: x25519::Backend,
) -> (Handshake, Handshake) {
    let mut c = InitiatorConfig::new(profile, device_keys(), DeviceIdentity::new("BENCH-1"))
        .suite(suite)
        .x25519_backend(x25519);
    if profile.needs_remote_key() {
        c = c.host_key(*host_keys().public());
    }
    let i = Handshake::initiator(c).unwrap();
    let r = Handshake::responder(
        ResponderConfig::new(host_keys(), trust).params(params()).x25519_backend(x25519),
    )
    .unwrap();
    (i, r)
}

/// Runs a vitalwire handshake in memory; returns the sessions and the bytes on the wire.
pub fn vitalwire_handshake(
    profile: Profile,
    suite: CipherSuite,
    trust: Arc<TrustStore>,
    x25519: x25519::Backend,
) -> (Session, Session, usize) {
    let (i, r) = vitalwire_handshakes(profile, suite, trust, x25519);
    run_handshake(i, r)
}

/// Like [`vitalwire_handshake`], but as the first handshake between the two keys: both sides'
/// cached static-static results ([`vitalwire::x25519`]) are dropped first, so IK and KK pay
/// their `ss` Diffie-Hellman (XX has none).
pub fn vitalwire_handshake_cold(
    profile: Profile,
    suite: CipherSuite,
    trust: Arc<TrustStore>,
    x25519: x25519::Backend,
) -> (Session, Session, usize) {
    host_keys().clear_static_static_cache_for_testing_only();
    device_keys().clear_static_static_cache_for_testing_only();
    vitalwire_handshake(profile, suite, trust, x25519)
}

/// Moves the handshake messages between `i` and `r` until both finish; returns the sessions
/// and the bytes on the wire.
pub fn run_handshake(mut i: Handshake, mut r: Handshake) -> (Session, Session, usize) {
    let mut wire = BytesMut::new();
    let mut dec = StreamDecoder::new(1024);
    let mut bytes = 0;
    while !(i.is_finished() && r.is_finished()) {
        let (a, b) = if i.wants_write() { (&mut i, &mut r) } else { (&mut r, &mut i) };
        a.write_message(&mut wire).unwrap();
        bytes += wire.len();
        let f = dec.decode(&mut wire).unwrap().unwrap();
        b.read_message(&f).unwrap();
    }
    (i.into_session().unwrap(), r.into_session().unwrap(), bytes)
}

pub fn vitalwire_pair(suite: CipherSuite) -> (Session, Session) {
    let (a, b, _) = vitalwire_handshake(Profile::Ik, suite, trust(), x25519::Backend::default());
    (a, b)
}

/// A stream pair whose transport runs on the portable (pure Rust, `no_std`) AEAD.
pub fn vitalwire_portable_pair(suite: CipherSuite) -> (Session, Session) {
    let c = InitiatorConfig::new(Profile::Ik, device_keys(), DeviceIdentity::new("BENCH-1"))
        .suite(suite)
        .host_key(*host_keys().public())
        .cipher_backend(cipher::Backend::Portable);
    let i = Handshake::initiator(c).unwrap();
    let r = Handshake::responder(
        ResponderConfig::new(host_keys(), trust()).params(params()).cipher_backend(cipher::Backend::Portable),
    )
    .unwrap();
    let (a, b, _) = run_handshake(i, r);
    (a, b)
}

pub fn trust_store() -> Arc<TrustStore> {
    trust()
}

/// A datagram-mode pair (IK).
pub fn datagram_pair(suite: CipherSuite) -> (DatagramSession, DatagramSession) {
    let c = InitiatorConfig::new(Profile::Ik, device_keys(), DeviceIdentity::new("BENCH-1"))
        .suite(suite)
        .host_key(*host_keys().public());
    let t = Timestamp(0);
    let config = DatagramConfig { timers: TimerConfig::DISABLED, ..DatagramConfig::default() };
    let mut i = DatagramHandshake::initiator(c, 1, config, t).unwrap();
    let hello = i.poll_transmit().unwrap();
    let rc = ResponderConfig::new(host_keys(), trust()).params(params());
    let mut r = DatagramHandshake::responder(rc, 2, config, &hello, t).unwrap();
    i.handle_packet(&r.poll_transmit().unwrap(), t).unwrap();
    (i.into_session(t).unwrap(), r.into_session(t).unwrap())
}

/// Seal on `a`, open on `b`, one frame of `payload` (stream mode).
#[inline]
pub fn stream_round_trip(
    a: &mut Session,
    b: &mut Session,
    dec: &mut StreamDecoder,
    buf: &mut BytesMut,
    payload: &[u8],
) -> usize {
    a.seal_data(1, payload, buf).unwrap();
    let f = dec.decode(buf).unwrap().unwrap();
    match b.open(f).unwrap() {
        Incoming::Data { payload, .. } => payload.len(),
        _ => unreachable!(),
    }
}

/// Seal on `a`, open on `b` in place in the sender's buffer: the slice API
/// (`StreamDecoder::frame_len` + `Session::open_in_place`), no `Bytes` handed out.
#[inline]
pub fn stream_round_trip_in_place(
    a: &mut Session,
    b: &mut Session,
    dec: &StreamDecoder,
    buf: &mut BytesMut,
    payload: &[u8],
) -> usize {
    buf.clear();
    a.seal_data(1, payload, buf).unwrap();
    let len = dec.frame_len(buf).unwrap().unwrap();
    match b.open_in_place(&mut buf[2..2 + len]).unwrap() {
        IncomingRef::Data { payload, .. } => payload.len(),
        _ => unreachable!(),
    }
}

/// Seal on `a`, open on `b` (datagram mode).
#[inline]
pub fn datagram_round_trip(
    a: &mut DatagramSession,
    b: &mut DatagramSession,
    buf: &mut BytesMut,
    payload: &[u8],
) -> usize {
    a.seal_data(1, payload, Timestamp(0), buf).unwrap();
    let p = buf.split();
    match b.open(p, Timestamp(0)).unwrap() {
        Incoming::Data { payload, .. } => payload.len(),
        _ => unreachable!(),
    }
}

/// The floor: ring's AEAD sealing and opening the payload in place, nothing else.
pub struct Floor {
    key: ring::aead::LessSafeKey,
    nonce: u64,
}

impl Floor {
    pub fn new(alg: &'static ring::aead::Algorithm) -> Self {
        Floor {
            key: ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(alg, &[7; 32]).unwrap()),
            nonce: 0,
        }
    }

    #[inline]
    pub fn round_trip(&mut self, buf: &mut Vec<u8>, payload: &[u8]) -> usize {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.nonce.to_le_bytes());
        self.nonce += 1;
        buf.clear();
        buf.extend_from_slice(payload);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(n),
                ring::aead::Aad::empty(),
                buf,
            )
            .unwrap();
        buf.extend_from_slice(tag.as_ref());
        self.key
            .open_in_place(ring::aead::Nonce::assume_unique_for_key(n), ring::aead::Aad::empty(), buf)
            .unwrap()
            .len()
    }
}

/// The portable floor: RustCrypto's ChaCha20-Poly1305 (the crate vitalwire's `no_std` build
/// uses) sealing and opening the payload in place, nothing else.
pub struct PortableFloor {
    key: chacha20poly1305::ChaCha20Poly1305,
    nonce: u64,
}

impl Default for PortableFloor {
    fn default() -> Self {
        use chacha20poly1305::KeyInit;
        PortableFloor { key: chacha20poly1305::ChaCha20Poly1305::new(&[7u8; 32].into()), nonce: 0 }
    }
}

impl PortableFloor {
    #[inline]
    pub fn round_trip(&mut self, buf: &mut Vec<u8>, payload: &[u8]) -> usize {
        use chacha20poly1305::AeadInPlace;
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.nonce.to_le_bytes());
        self.nonce += 1;
        buf.clear();
        buf.extend_from_slice(payload);
        let tag = self.key.encrypt_in_place_detached(&n.into(), &[], buf).unwrap();
        self.key.decrypt_in_place_detached(&n.into(), &[], buf, &tag).unwrap();
        buf.len()
    }
}

/// snow's `Dh` on aws-lc's X25519, the implementation vitalwire uses by default, so that a
/// handshake comparison runs on the same X25519. Like snow's own, it derives the public key
/// whenever a private key is set (snow's API gives it no way to reuse one).
#[derive(Default)]
struct AwsLcX25519 {
    private: [u8; 32],
    public: [u8; 32],
}

impl snow::types::Dh for AwsLcX25519 {
    fn name(&self) -> &'static str {
        "25519"
    }
    fn pub_len(&self) -> usize {
        32
    }
    fn priv_len(&self) -> usize {
        32
    }
    fn set(&mut self, privkey: &[u8]) {
        use aws_lc_rs::agreement::{PrivateKey, X25519};
        self.private.copy_from_slice(&privkey[..32]);
        let key = PrivateKey::from_private_key(&X25519, &self.private).expect("32 bytes");
        self.public.copy_from_slice(key.compute_public_key().expect("public key").as_ref());
    }
    fn generate(&mut self, rng: &mut dyn snow::types::Random) -> Result<(), snow::Error> {
        let mut private = [0u8; 32];
        rng.try_fill_bytes(&mut private)?;
        self.set(&private);
        Ok(())
    }
    fn pubkey(&self) -> &[u8] {
        &self.public
    }
    fn privkey(&self) -> &[u8] {
        &self.private
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        use aws_lc_rs::agreement::{agree, PrivateKey, UnparsedPublicKey, X25519};
        let key = PrivateKey::from_private_key(&X25519, &self.private).map_err(|_| snow::Error::Dh)?;
        // snow may hand over a longer buffer; the key is its first 32 bytes.
        let public = pubkey.get(..32).ok_or(snow::Error::Dh)?;
        agree(&key, UnparsedPublicKey::new(&X25519, public), snow::Error::Dh, |s| {
            out[..32].copy_from_slice(s);
            Ok(())
        })
    }
}

/// Resolves only X25519, to [`AwsLcX25519`]; used in front of snow's default resolver.
struct AwsLcDhResolver;

impl snow::resolvers::CryptoResolver for AwsLcDhResolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        None
    }
    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        matches!(choice, snow::params::DHChoice::Curve25519)
            .then(|| Box::new(AwsLcX25519::default()) as Box<dyn snow::types::Dh>)
    }
    fn resolve_hash(&self, _: &snow::params::HashChoice) -> Option<Box<dyn snow::types::Hash>> {
        None
    }
    fn resolve_cipher(&self, _: &snow::params::CipherChoice) -> Option<Box<dyn snow::types::Cipher>> {
        None
    }
}

/// Which primitives snow runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnowBackend {
    /// snow's default resolver (RustCrypto; X25519 from curve25519-dalek).
    Default,
    /// ring's AEADs, the rest default.
    Ring,
    /// aws-lc's X25519 (vitalwire's default), the rest default.
    AwsLcX25519,
}

/// snow's handshake for `pattern`, returning both states (not finished).
pub fn snow_states(pattern: &str, ring: bool) -> (snow::HandshakeState, snow::HandshakeState) {
    snow_states_on(pattern, if ring { SnowBackend::Ring } else { SnowBackend::Default })
}

/// snow's handshake for `pattern` on `backend`, returning both states (not finished).
pub fn snow_states_on(pattern: &str, backend: SnowBackend) -> (snow::HandshakeState, snow::HandshakeState) {
    let name = format!("Noise_{pattern}_25519_ChaChaPoly_BLAKE2s");
    let builder = |_: ()| -> snow::Builder<'static> {
        let preferred: Box<dyn snow::resolvers::CryptoResolver + Send> = match backend {
            SnowBackend::Default => {
                return snow::Builder::with_resolver(
                    name.parse().unwrap(),
                    Box::new(snow::resolvers::DefaultResolver),
                )
            }
            SnowBackend::Ring => Box::new(snow::resolvers::RingResolver),
            SnowBackend::AwsLcX25519 => Box::new(AwsLcDhResolver),
        };
        snow::Builder::with_resolver(
            name.parse().unwrap(),
            Box::new(snow::resolvers::FallbackResolver::new(
                preferred,
                Box::new(snow::resolvers::DefaultResolver),
            )),
        )
    };
    static HOST: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    static DEV: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    let h = HOST.get_or_init(|| {
        (host_keys().private().expose_secret().to_vec(), host_keys().public().as_bytes().to_vec())
    });
    let d = DEV.get_or_init(|| {
        (device_keys().private().expose_secret().to_vec(), device_keys().public().as_bytes().to_vec())
    });
    let mut i = builder(()).local_private_key(&d.0).unwrap();
    let mut r = builder(()).local_private_key(&h.0).unwrap();
    if pattern == "IK" || pattern == "KK" {
        i = i.remote_public_key(&h.1).unwrap();
    }
    if pattern == "KK" {
        r = r.remote_public_key(&d.1).unwrap();
    }
    (i.build_initiator().unwrap(), r.build_responder().unwrap())
}

/// Runs snow's bare handshake; returns the bytes on the wire.
pub fn snow_handshake(
    mut i: snow::HandshakeState,
    mut r: snow::HandshakeState,
) -> (snow::TransportState, snow::TransportState, usize) {
    let mut buf = [0u8; 1024];
    let mut tmp = [0u8; 1024];
    let mut bytes = 0;
    while !(i.is_handshake_finished() && r.is_handshake_finished()) {
        let (a, b) = if i.is_my_turn() { (&mut i, &mut r) } else { (&mut r, &mut i) };
        let n = a.write_message(&[], &mut buf).unwrap();
        bytes += n;
        b.read_message(&buf[..n], &mut tmp).unwrap();
    }
    (i.into_transport_mode().unwrap(), r.into_transport_mode().unwrap(), bytes)
}

#[inline]
pub fn snow_round_trip(
    a: &mut snow::TransportState,
    b: &mut snow::TransportState,
    buf: &mut [u8],
    out: &mut [u8],
    payload: &[u8],
) -> usize {
    let n = a.write_message(payload, buf).unwrap();
    b.read_message(&buf[..n], out).unwrap()
}

/// Certificates for TLS 1.3 with mutual authentication: a CA, a server and a client cert.
/// Session resumption is off: every handshake is a full one, certificates and signatures
/// included, like a device's first contact ([`tls_setup_resumable`] for the other case).
pub struct TlsSetup {
    pub client: Arc<rustls::ClientConfig>,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn tls_setup() -> TlsSetup {
    tls_setup_with(false)
}

/// Like [`tls_setup`], but the client keeps the server's session tickets, so every handshake
/// after the first is a PSK resumption (X25519 and hashing only, no certificates).
pub fn tls_setup_resumable() -> TlsSetup {
    tls_setup_with(true)
}

fn tls_setup_with(resumption: bool) -> TlsSetup {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        (cert, key)
    };
    let (server_cert, server_key) = leaf("host.vitalwire.test", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf("device.vitalwire.test", ExtendedKeyUsagePurpose::ClientAuth);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let roots = Arc::new(roots);
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server_cert.der().clone(), ca.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![client_cert.der().clone(), ca.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client_key.serialize_der())),
        )
        .unwrap();
    let (mut client, mut server) = (client, server);
    if !resumption {
        client.resumption = rustls::client::Resumption::disabled();
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    }
    TlsSetup { client: Arc::new(client), server: Arc::new(server) }
}

/// A complete TLS 1.3 handshake with mutual authentication, in memory; returns both ends and
/// the bytes on the wire.
pub fn tls_handshake(setup: &TlsSetup) -> (rustls::ClientConnection, rustls::ServerConnection, usize) {
    let mut client =
        rustls::ClientConnection::new(setup.client.clone(), "host.vitalwire.test".try_into().unwrap())
            .unwrap();
    let mut server = rustls::ServerConnection::new(setup.server.clone()).unwrap();
    let mut bytes = 0;
    let mut buf = Vec::new();
    while client.is_handshaking() || server.is_handshaking() {
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        bytes += buf.len();
        if !buf.is_empty() {
            server.read_tls(&mut &buf[..]).unwrap();
            server.process_new_packets().unwrap();
        }
        buf.clear();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        bytes += buf.len();
        if !buf.is_empty() {
            client.read_tls(&mut &buf[..]).unwrap();
            client.process_new_packets().unwrap();
        }
    }
    // Session tickets the server sends after the handshake.
    buf.clear();
    while server.wants_write() {
        server.write_tls(&mut buf).unwrap();
    }
    if !buf.is_empty() {
        client.read_tls(&mut &buf[..]).unwrap();
        client.process_new_packets().unwrap();
    }
    (client, server, bytes)
}

/// One application-data record from client to server: seal and open.
#[inline]
pub fn tls_round_trip(
    client: &mut rustls::ClientConnection,
    server: &mut rustls::ServerConnection,
    wire: &mut Vec<u8>,
    out: &mut [u8],
    payload: &[u8],
) -> usize {
    client.writer().write_all(payload).unwrap();
    wire.clear();
    while client.wants_write() {
        client.write_tls(wire).unwrap();
    }
    let mut rest = &wire[..];
    while !rest.is_empty() {
        server.read_tls(&mut rest).unwrap();
        server.process_new_packets().unwrap();
    }
    server.reader().read_exact(&mut out[..payload.len()]).unwrap();
    payload.len()
}
