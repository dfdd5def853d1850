//! The handshake state machine (spec/PROTOCOL.md §4, §7.1 and §12).
//!
//! ```text
//! device (initiator)                                  host (responder)
//!   HELLO  = header || Noise msg 1  ------------------>   checks version/profile/suite,
//!            (IK, KK: + encrypted DeviceIdentity)          looks up KK key / PSK by hint,
//!            (XX pairing: + pairing commitment)            IK/KK: asks the TrustPolicy
//!          <------------------  HANDSHAKE = Noise msg 2 (+ encrypted SessionParams)
//!                               or REJECT (reason)
//!   HANDSHAKE = Noise msg 3   ------------------>     XX, XXpsk3: the device's static key and
//!            (+ encrypted DeviceIdentity)              identity; asks the TrustPolicy, and on
//!                                                      refusal answers an encrypted CLOSE
//! ```
//!
//! In IK and KK the host has seen only message 1, which can be replayed: its session is
//! *unconfirmed* until the device's first transport frame authenticates, and only then
//! reported as established (key confirmation, spec §4.8; [`Session::is_confirmed`]).
//!
//! A [`Handshake`] is driven sans-IO: [`Handshake::write_message`] appends the next frame to an
//! output buffer when [`Handshake::wants_write`], [`Handshake::read_message`] takes one frame
//! body split out by a [`crate::StreamDecoder`], and [`Handshake::into_session`] consumes the
//! finished handshake into a [`Session`]. Any error is fatal and sticks. Security events are
//! queued for [`Handshake::poll_event`] and carried over into the session.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use bytes::BytesMut;

use crate::cipher;
use crate::error::{DecodeError, DropReason, Error, HandshakeError, RejectReason};
use crate::events::{EventKind, EventQueue, SecurityCounters, SecurityEvent, Timestamp};
use crate::frame::{CloseCode, FrameHeader, FrameKind};
use crate::hello::{self, HandshakeFrame, MAX_HANDSHAKE_FRAME_LEN, MAX_HINT_LEN, TYPE_HANDSHAKE};
use crate::keys::{EntropyError, EntropySource, KeyId, Keypair, PrivateKey, Psk, PublicKey, KEY_ID_LEN};
use crate::noise::{self, Finished, NoiseSetup};
use crate::pairing;
use crate::payload::{self, DeviceIdentity, SessionParams, PAIRING_NONCE_LEN};
use crate::profile::{CipherSuite, Profile, PROTOCOL_VERSION};
use crate::session::{Session, SessionSetup};
use crate::stream;
use crate::trust::{TrustDecision, TrustPolicy};
use crate::x25519;

/// Which end of the handshake this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sends the first message: the device.
    Initiator,
    /// Answers: the host.
    Responder,
}

/// The host's lookup of the pre-shared keys named by an `XXpsk3` HELLO.
pub trait PskDirectory: Send + Sync {
    /// The pre-shared key named `id`.
    fn psk(&self, id: &[u8]) -> Option<Psk>;
}

/// An in-memory [`PskDirectory`].
#[derive(Default, Clone)]
pub struct StaticPskDirectory {
    psks: BTreeMap<Vec<u8>, Psk>,
}

impl StaticPskDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a pre-shared key.
    pub fn add(&mut self, id: &[u8], psk: Psk) -> &mut Self {
        self.psks.insert(id.to_vec(), psk);
        self
    }
}

impl core::fmt::Debug for StaticPskDirectory {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StaticPskDirectory").field("psks", &self.psks.len()).finish()
    }
}

impl PskDirectory for StaticPskDirectory {
    fn psk(&self, id: &[u8]) -> Option<Psk> {
        self.psks.get(id).cloned()
    }
}

/// The device's side of the handshake: what it proposes and what it proves.
pub struct InitiatorConfig {
    profile: Profile,
    suite: CipherSuite,
    keypair: Keypair,
    identity: DeviceIdentity,
    remote_key: Option<PublicKey>,
    pinned_host_keys: Vec<PublicKey>,
    psk: Option<(Vec<u8>, Psk)>,
    pairing: bool,
    entropy: Option<Box<dyn EntropySource>>,
    fixed_ephemeral: Option<PrivateKey>,
    fixed_pairing_nonce: Option<[u8; PAIRING_NONCE_LEN]>,
    raw_identity: Option<Vec<u8>>,
    x25519: x25519::Backend,
    cipher: cipher::Backend,
}

impl core::fmt::Debug for InitiatorConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("InitiatorConfig")
            .field("profile", &self.profile)
            .field("suite", &self.suite)
            .field("public_key", self.keypair.public())
            .field("identity", &self.identity)
            .field("pairing", &self.pairing)
            .finish_non_exhaustive()
    }
}

impl InitiatorConfig {
    /// A configuration for `profile` with this device's keypair and identity, on the default
    /// suite.
    pub fn new(profile: Profile, keypair: Keypair, identity: DeviceIdentity) -> Self {
        InitiatorConfig {
            profile,
            suite: CipherSuite::default(),
            keypair,
            identity,
            remote_key: None,
            pinned_host_keys: Vec::new(),
            psk: None,
            pairing: false,
            entropy: None,
            fixed_ephemeral: None,
            fixed_pairing_nonce: None,
            raw_identity: None,
            x25519: x25519::Backend::default(),
            cipher: cipher::Backend::default(),
        }
    }

    /// The cipher suite.
    pub fn suite(mut self, suite: CipherSuite) -> Self {
        self.suite = suite;
        self
    }

    /// The host's static key, required for `IK` and `KK`.
    pub fn host_key(mut self, key: PublicKey) -> Self {
        self.remote_key = Some(key);
        self
    }

    /// For `XX`/`XXpsk3`: host keys to accept (several during a host key rotation). When the
    /// list is non-empty, a host whose static key is not in it fails the handshake with
    /// [`HandshakeError::UnexpectedPeerKey`] before the device reveals its identity.
    pub fn pin_host_keys(mut self, keys: impl IntoIterator<Item = PublicKey>) -> Self {
        self.pinned_host_keys.extend(keys);
        self
    }

    /// Whether a completed handshake with this configuration proves who the host is: `IK`
    /// and `KK` (the host key is given), `XXpsk3` (the pre-shared key), `XX` only with pinned
    /// host keys. Without that, anyone can play the host, and nothing it sends (a CLOSE
    /// `UNAUTHORIZED`, say) is the real host's word.
    pub fn authenticates_host(&self) -> bool {
        match self.profile {
            Profile::Ik | Profile::Kk => self.remote_key.is_some(),
            Profile::XxPsk3 => self.psk.is_some(),
            _ => !self.pinned_host_keys.is_empty(),
        }
    }

    /// The pre-shared key and its id (1 to 32 bytes), required for `XXpsk3`.
    pub fn psk(mut self, id: &[u8], psk: Psk) -> Self {
        self.psk = Some((id.to_vec(), psk));
        self
    }

    /// Asks for a pairing session (`XX`/`XXpsk3` only): both ends derive a 6-digit code from
    /// the handshake ([`Session::pairing_code`]) for a person to compare. A pairing session
    /// carries no application data.
    pub fn request_pairing(mut self) -> Self {
        self.pairing = true;
        self
    }

    /// The random number generator for the ephemeral key and pairing nonce (required on
    /// `no_std`).
    pub fn entropy(mut self, entropy: Box<dyn EntropySource>) -> Self {
        self.entropy = Some(entropy);
        self
    }

    /// The X25519 implementation ([`x25519::Backend`]); the default is the fastest one
    /// compiled in. Both give identical results.
    pub fn x25519_backend(mut self, backend: x25519::Backend) -> Self {
        self.x25519 = backend;
        self
    }

    /// The transport AEAD implementation ([`cipher::Backend`]); the default is the fastest
    /// one compiled in. Both give identical bytes (for benchmarks of the portable path).
    pub fn cipher_backend(mut self, backend: cipher::Backend) -> Self {
        self.cipher = backend;
        self
    }

    /// Uses a fixed ephemeral key, for deterministic test vectors. Never in production: it
    /// destroys forward secrecy.
    #[doc(hidden)]
    pub fn fixed_ephemeral_for_testing_only(mut self, key: PrivateKey) -> Self {
        self.fixed_ephemeral = Some(key);
        self
    }

    /// Sends `payload` as the identity payload instead of encoding the identity: to test how a
    /// host meets an authenticated identity that breaks the rules of spec §4.5.1.
    #[doc(hidden)]
    pub fn raw_identity_for_testing_only(mut self, payload: Vec<u8>) -> Self {
        self.raw_identity = Some(payload);
        self
    }

    /// Uses a fixed pairing nonce, for deterministic tests only.
    #[doc(hidden)]
    pub fn fixed_pairing_nonce_for_testing_only(mut self, nonce: [u8; PAIRING_NONCE_LEN]) -> Self {
        self.fixed_pairing_nonce = Some(nonce);
        self
    }
}

/// The host's side of the handshake: which proposals it accepts, whom it admits, and what it
/// answers.
pub struct ResponderConfig {
    keypair: Keypair,
    previous_keypairs: Vec<Keypair>,
    trust: Arc<dyn TrustPolicy>,
    params: SessionParams,
    profiles: Vec<Profile>,
    suites: Vec<CipherSuite>,
    psks: Option<Arc<dyn PskDirectory>>,
    allow_pairing: bool,
    entropy: Option<Box<dyn EntropySource>>,
    fixed_ephemeral: Option<PrivateKey>,
    x25519: x25519::Backend,
    cipher: cipher::Backend,
}

impl core::fmt::Debug for ResponderConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ResponderConfig")
            .field("public_key", self.keypair.public())
            .field("previous_keys", &self.previous_keypairs.len())
            .field("params", &self.params)
            .field("profiles", &self.profiles)
            .field("suites", &self.suites)
            .field("allow_pairing", &self.allow_pairing)
            .finish_non_exhaustive()
    }
}

impl ResponderConfig {
    /// A host with static `keypair` that admits the devices `trust` admits, accepting every
    /// profile and suite, with default session parameters and pairing off.
    pub fn new(keypair: Keypair, trust: Arc<dyn TrustPolicy>) -> Self {
        ResponderConfig {
            keypair,
            previous_keypairs: Vec::new(),
            trust,
            params: SessionParams::default(),
            profiles: Profile::ALL.to_vec(),
            suites: CipherSuite::ALL.to_vec(),
            psks: None,
            allow_pairing: false,
            entropy: None,
            fixed_ephemeral: None,
            x25519: x25519::Backend::default(),
            cipher: cipher::Backend::default(),
        }
    }

    /// During a host key rotation: also accept `IK`/`KK` handshakes addressed to this older
    /// key (devices not yet updated). `XX` always uses the current key.
    pub fn accept_previous_key(mut self, keypair: Keypair) -> Self {
        self.previous_keypairs.push(keypair);
        self
    }

    /// The session parameters sent to every device.
    pub fn params(mut self, params: SessionParams) -> Self {
        self.params = params;
        self
    }

    /// Accept only these profiles.
    pub fn profiles(mut self, profiles: &[Profile]) -> Self {
        self.profiles = profiles.to_vec();
        self
    }

    /// Accept only these suites.
    pub fn suites(mut self, suites: &[CipherSuite]) -> Self {
        self.suites = suites.to_vec();
        self
    }

    /// Where `XXpsk3` pre-shared keys are looked up.
    pub fn psk_directory(mut self, psks: Arc<dyn PskDirectory>) -> Self {
        self.psks = Some(psks);
        self
    }

    /// Accept pairing requests from devices the trust policy does not know yet (revoked keys
    /// are still refused). Open it only while an operator is pairing a device.
    pub fn allow_pairing(mut self, allow: bool) -> Self {
        self.allow_pairing = allow;
        self
    }

    /// The random number generator for the ephemeral key (required on `no_std`).
    pub fn entropy(mut self, entropy: Box<dyn EntropySource>) -> Self {
        self.entropy = Some(entropy);
        self
    }

    /// The X25519 implementation ([`x25519::Backend`]); the default is the fastest one
    /// compiled in. Both give identical results.
    pub fn x25519_backend(mut self, backend: x25519::Backend) -> Self {
        self.x25519 = backend;
        self
    }

    /// The transport AEAD implementation ([`cipher::Backend`]); the default is the fastest
    /// one compiled in. Both give identical bytes (for benchmarks of the portable path).
    pub fn cipher_backend(mut self, backend: cipher::Backend) -> Self {
        self.cipher = backend;
        self
    }

    /// Uses a fixed ephemeral key, for deterministic test vectors only.
    #[doc(hidden)]
    pub fn fixed_ephemeral_for_testing_only(mut self, key: PrivateKey) -> Self {
        self.fixed_ephemeral = Some(key);
        self
    }

    /// The host's current public key.
    pub fn public_key(&self) -> &PublicKey {
        self.keypair.public()
    }
}

enum Side {
    Initiator(InitiatorConfig),
    Responder(ResponderConfig),
}

/// Pairing state: the nonce (initiator: chosen; responder: revealed in message 3) and the
/// commitment (responder: from message 1).
#[derive(Default)]
struct Pairing {
    nonce: Option<[u8; PAIRING_NONCE_LEN]>,
    commitment: Option<[u8; 32]>,
}

/// An entropy source that always fails: for trial decryptions that never need randomness.
struct NoEntropy;

impl EntropySource for NoEntropy {
    fn fill(&mut self, _dest: &mut [u8]) -> Result<(), EntropyError> {
        Err(EntropyError)
    }
}

/// One side of a handshake in progress.
pub struct Handshake {
    side: Side,
    profile: Option<Profile>,
    suite: Option<CipherSuite>,
    noise: Option<snow::HandshakeState>,
    /// Messages written plus messages read so far.
    index: usize,
    peer_identity: Option<DeviceIdentity>,
    peer_params: Option<SessionParams>,
    /// A frame body to send although the handshake failed: a REJECT, or (XX) an encrypted
    /// CLOSE telling a refused device why.
    pending: Option<Vec<u8>>,
    failed: Option<Error>,
    pairing: Option<Pairing>,
    /// The handshake hash after message 2 (the pairing code covers it).
    h2: Option<[u8; 32]>,
    events: EventQueue,
    deadline: Option<Timestamp>,
    timeout_ms: u64,
    /// Datagram mode (spec §13): the peer's session index (a refusal CLOSE is framed as a
    /// transport packet addressed to it) and what it takes to rebuild the Noise state after a
    /// forged message 3 (responder) or 2 (XX initiator).
    datagram: Option<DatagramState>,
}

/// Datagram mode: what it takes to undo a forged message (spec §13.3).
///
/// Responder: snow restores its hash and chaining key when a message fails to authenticate,
/// but not its cipher key. A forged message 3 (XX, XXpsk3) whose first token decrypts and
/// whose payload does not leaves the cipher re-keyed, so the genuine message 3 would fail.
/// The responder keeps its ephemeral key and the HELLO to rebuild the state after message 2
/// (deterministic: same keys, same bytes) when that happens.
///
/// Initiator (XX, XXpsk3): message 2 can be forged in full by whoever saw the HELLO (with its
/// own static key); it authenticates and only the pinned-key or parameter check refuses it,
/// after snow has moved on. The initiator keeps its ephemeral key and the payload of message
/// 1 to rebuild the state after message 1.
struct DatagramState {
    peer_index: u32,
    ephemeral: Option<PrivateKey>,
    /// Responder: the HELLO frame. Initiator: the payload of message 1.
    hello: Vec<u8>,
    /// Initiator: the handshake hash after message 1.
    h1: Option<[u8; 32]>,
}

/// Default time a responder allows for a stream handshake, key confirmation included
/// (spec §7.4).
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Default time an initiator allows for a stream handshake (spec §7.4): longer than the
/// responder's, so that the responder's verdict arrives before the initiator gives up.
pub const DEFAULT_INITIATOR_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

impl core::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.role())
            .field("profile", &self.profile)
            .field("suite", &self.suite)
            .field("message", &self.index)
            .field("pairing", &self.pairing.is_some())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    fn with_side(side: Side, profile: Option<Profile>, suite: Option<CipherSuite>) -> Self {
        let side_role = match side {
            Side::Initiator(_) => Role::Initiator,
            Side::Responder(_) => Role::Responder,
        };
        Handshake {
            side,
            profile,
            suite,
            noise: None,
            index: 0,
            peer_identity: None,
            peer_params: None,
            pending: None,
            failed: None,
            pairing: None,
            h2: None,
            events: EventQueue::default(),
            deadline: None,
            timeout_ms: match side_role {
                Role::Initiator => DEFAULT_INITIATOR_HANDSHAKE_TIMEOUT_MS,
                Role::Responder => DEFAULT_HANDSHAKE_TIMEOUT_MS,
            },
            datagram: None,
        }
    }

    /// Starts the device's side. Checks the configuration for the profile.
    pub fn initiator(config: InitiatorConfig) -> Result<Self, Error> {
        if config.profile.needs_remote_key() && config.remote_key.is_none() {
            return Err(Error::Config("IK and KK need the host's public key"));
        }
        match (&config.psk, config.profile.needs_psk()) {
            (None, true) => return Err(Error::Config("XXpsk3 needs a pre-shared key and its id")),
            (Some((id, _)), true) if id.is_empty() || id.len() > MAX_HINT_LEN => {
                return Err(Error::Config("pre-shared key id must be 1 to 32 bytes"))
            }
            _ => {}
        }
        if config.pairing && !matches!(config.profile, Profile::Xx | Profile::XxPsk3) {
            return Err(Error::Config("pairing is for XX and XXpsk3 (IK and KK already know the keys)"));
        }
        config.identity.encode().map_err(|_| Error::Config("device identity out of range"))?;
        let (profile, suite) = (config.profile, config.suite);
        let mut hs = Self::with_side(Side::Initiator(config), Some(profile), Some(suite));
        if let Side::Initiator(c) = &hs.side {
            if c.pairing {
                hs.pairing = Some(Pairing::default());
            }
        }
        Ok(hs)
    }

    /// Starts the host's side; it waits for a HELLO.
    pub fn responder(mut config: ResponderConfig) -> Result<Self, Error> {
        config.params.validate().map_err(|_| Error::Config("session parameters out of range"))?;
        // spec §4.5.2: announce no more than 255 pieces of the host's own frames can carry.
        config.params.max_message_len =
            config.params.max_message_len.min(config.params.max_reachable_message_len());
        Ok(Self::with_side(Side::Responder(config), None, None))
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        match self.side {
            Side::Initiator(_) => Role::Initiator,
            Side::Responder(_) => Role::Responder,
        }
    }

    /// The profile (known to the responder once the HELLO has been read).
    pub fn profile(&self) -> Option<Profile> {
        self.profile
    }

    /// The cipher suite (known to the responder once the HELLO has been read).
    pub fn suite(&self) -> Option<CipherSuite> {
        self.suite
    }

    /// The largest frame body to accept while handshaking (for the [`crate::StreamDecoder`]).
    pub fn max_frame_len(&self) -> usize {
        MAX_HANDSHAKE_FRAME_LEN
    }

    /// Whether [`Handshake::write_message`] has a frame to write now: the next Noise message,
    /// or after a refusal a REJECT or an encrypted CLOSE.
    pub fn wants_write(&self) -> bool {
        if self.pending.is_some() {
            return true;
        }
        if self.failed.is_some() || self.is_finished() {
            return false;
        }
        match &self.noise {
            None => matches!(self.side, Side::Initiator(_)),
            Some(n) => n.is_my_turn(),
        }
    }

    /// Whether every handshake message has been sent and received.
    pub fn is_finished(&self) -> bool {
        self.failed.is_none() && self.noise.as_ref().is_some_and(|n| n.is_handshake_finished())
    }

    /// The error that ended the handshake, if one did.
    pub fn error(&self) -> Option<Error> {
        self.failed
    }

    /// The device's identity (responder side, once received).
    pub fn peer_identity(&self) -> Option<&DeviceIdentity> {
        self.peer_identity.as_ref()
    }

    /// The peer's static key, once the Noise handshake has revealed it.
    pub fn remote_static(&self) -> Option<PublicKey> {
        self.noise.as_ref()?.get_remote_static().and_then(|k| PublicKey::from_slice(k).ok())
    }

    /// Whether this is a pairing handshake (requested by the device, accepted by the host).
    pub fn is_pairing(&self) -> bool {
        self.pairing.is_some()
    }

    /// The next queued security event, stamped with `now`.
    pub fn poll_event(&mut self, now: Timestamp) -> Option<SecurityEvent> {
        self.events.poll(now)
    }

    /// Cumulative security counters.
    pub fn security_counters(&self) -> SecurityCounters {
        self.events.counters
    }

    fn fail(&mut self, e: impl Into<Error>) -> Error {
        let e = e.into();
        if let Some(first) = self.failed {
            return first;
        }
        match e {
            Error::Handshake(HandshakeError::UnknownPeer) => self.events.push(EventKind::UnknownPeer),
            Error::Handshake(HandshakeError::RevokedPeer) => self.events.push(EventKind::RevokedPeer),
            _ => {}
        }
        self.events.push(EventKind::HandshakeFailed { reason: e });
        self.failed = Some(e);
        self.noise = None;
        e
    }

    fn reject(&mut self, reason: RejectReason, e: impl Into<Error>) -> Error {
        self.pending = Some(hello::reject(PROTOCOL_VERSION, reason).to_vec());
        self.fail(e)
    }

    /// Index of the message that carries the initiator's identity: its last one.
    fn identity_index(profile: Profile) -> usize {
        if profile.message_count() == 3 {
            2
        } else {
            0
        }
    }

    /// Appends the next handshake frame (length prefix included) to `out`.
    pub fn write_message(&mut self, out: &mut BytesMut) -> Result<(), Error> {
        if let Some(body) = self.pending.take() {
            stream::write_frame(out, &body)?;
            return Ok(());
        }
        if let Some(e) = self.failed {
            return Err(e);
        }
        if !self.wants_write() {
            return Err(Error::Config("not this side's turn to write a handshake message"));
        }
        match self.write_inner() {
            Ok(frame) => {
                stream::write_frame(out, &frame)?;
                self.index += 1;
                if self.index == 2 && self.role() == Role::Responder {
                    self.h2 = self.current_hash();
                }
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn current_hash(&self) -> Option<[u8; 32]> {
        self.noise.as_ref()?.get_handshake_hash().get(..32)?.try_into().ok()
    }

    fn write_inner(&mut self) -> Result<Vec<u8>, Error> {
        let profile = self.profile.ok_or(HandshakeError::UnexpectedMessage)?;
        if self.noise.is_none() {
            return self.write_hello(profile);
        }
        let payload = match &self.side {
            Side::Initiator(c) if self.index == Self::identity_index(profile) => match &c.raw_identity {
                Some(raw) => raw.clone(),
                None => {
                    let nonce = self.pairing.as_ref().and_then(|p| p.nonce);
                    c.identity.encode_with_pairing_nonce(nonce.as_ref())?
                }
            },
            Side::Initiator(_) => Vec::new(),
            Side::Responder(c) => c.params.encode()?,
        };
        let mut frame = vec![TYPE_HANDSHAKE];
        self.noise_write(&payload, &mut frame)?;
        Ok(frame)
    }

    fn noise_write(&mut self, payload: &[u8], frame: &mut Vec<u8>) -> Result<(), Error> {
        let noise = self.noise.as_mut().ok_or(HandshakeError::UnexpectedMessage)?;
        let start = frame.len();
        frame.resize(start + MAX_HANDSHAKE_FRAME_LEN, 0);
        let n = noise.write_message(payload, &mut frame[start..]).map_err(noise::map_err)?;
        frame.truncate(start + n);
        Ok(())
    }

    /// The credential hint of the initiator's HELLO.
    fn hello_hint(c: &InitiatorConfig, profile: Profile) -> Vec<u8> {
        match profile {
            Profile::Kk => c.keypair.public().key_id().0.to_vec(),
            Profile::XxPsk3 => c.psk.as_ref().map(|(id, _)| id.clone()).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The initiator's first frame.
    fn write_hello(&mut self, profile: Profile) -> Result<Vec<u8>, Error> {
        let Side::Initiator(c) = &mut self.side else {
            return Err(HandshakeError::UnexpectedMessage.into());
        };
        let hint = Self::hello_hint(c, profile);
        let mut entropy = c.entropy.take();
        let mut payload = Vec::new();
        if let Some(p) = self.pairing.as_mut() {
            let mut nonce = [0u8; PAIRING_NONCE_LEN];
            match (c.fixed_pairing_nonce, entropy.as_mut()) {
                (Some(fixed), _) => nonce = fixed,
                (None, Some(e)) => e.fill(&mut nonce).map_err(|_| HandshakeError::NoEntropy)?,
                (None, None) => default_entropy()?.fill(&mut nonce).map_err(|_| HandshakeError::NoEntropy)?,
            }
            payload = payload::encode_pairing_commitment(&pairing::commitment(&nonce));
            p.nonce = Some(nonce);
        }
        if Self::identity_index(profile) == 0 {
            // IK, KK: message 1 is the device's last message and carries its identity.
            payload = match &c.raw_identity {
                Some(raw) => raw.clone(),
                None => c.identity.encode()?,
            };
        }
        let mut ephemeral = c.fixed_ephemeral.clone();
        if let Some(d) = self.datagram.as_mut() {
            // Datagram mode: draw the ephemeral key here (from the same source snow would
            // use, after the pairing nonce as before) and keep it with the payload, so the
            // state can be rebuilt after a forged message 2.
            if ephemeral.is_none() {
                ephemeral = Some(draw_ephemeral(&mut entropy)?);
            }
            d.ephemeral = ephemeral.clone();
            d.hello = payload.clone();
        }
        let mut frame = hello::hello_header(PROTOCOL_VERSION, profile.code(), c.suite.code(), &hint);
        let prologue = hello::prologue(&frame);
        let name = noise::protocol_name(profile, c.suite);
        let state = noise::build(NoiseSetup {
            protocol_name: &name,
            initiator: true,
            prologue: &prologue,
            local: &c.keypair,
            x25519: c.x25519,
            remote: c.remote_key.as_ref(),
            psk: c.psk.as_ref().map(|(_, k)| (3, k)),
            fixed_ephemeral: ephemeral.as_ref(),
            entropy,
        })?;
        let host_key = c.remote_key;
        self.noise = Some(state);
        self.noise_write(&payload, &mut frame)?;
        if let Some(host) = host_key {
            self.events.peer = Some(host.fingerprint());
        }
        let h1 = self.current_hash();
        if let Some(d) = self.datagram.as_mut() {
            d.h1 = h1;
        }
        Ok(frame)
    }

    /// Datagram mode, XX/XXpsk3 initiator after a message 2 that authenticated but was
    /// refused: rebuilds the Noise state as it was after message 1 (re-writing message 1 from
    /// the same keys and payload) and checks that it is: the handshake hash must equal `h1`.
    fn rebuild_after_message_1(&mut self) -> Result<(), Error> {
        let (Some(d), Side::Initiator(c), Some(profile)) = (&self.datagram, &self.side, self.profile) else {
            return Err(HandshakeError::UnexpectedMessage.into());
        };
        let h1 = d.h1.ok_or(HandshakeError::UnexpectedMessage)?;
        let header = hello::hello_header(
            PROTOCOL_VERSION,
            profile.code(),
            c.suite.code(),
            &Self::hello_hint(c, profile),
        );
        let prologue = hello::prologue(&header);
        let name = noise::protocol_name(profile, c.suite);
        let mut state = noise::build(NoiseSetup {
            protocol_name: &name,
            initiator: true,
            prologue: &prologue,
            local: &c.keypair,
            x25519: c.x25519,
            remote: c.remote_key.as_ref(),
            psk: c.psk.as_ref().map(|(_, k)| (3, k)),
            fixed_ephemeral: d.ephemeral.as_ref(),
            entropy: Some(Box::new(NoEntropy)),
        })?;
        let mut scratch = vec![0u8; MAX_HANDSHAKE_FRAME_LEN];
        state.write_message(&d.hello, &mut scratch).map_err(noise::map_err)?;
        if state.get_handshake_hash().get(..32) != Some(&h1[..]) {
            return Err(HandshakeError::Noise.into());
        }
        self.events.peer = c.remote_key.map(|k| k.fingerprint());
        self.noise = Some(state);
        self.peer_params = None;
        self.h2 = None;
        Ok(())
    }

    /// Reads one handshake frame body (as split out by the stream decoder).
    pub fn read_message(&mut self, frame: &[u8]) -> Result<(), Error> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.is_finished() || self.wants_write() {
            // A message when it is our turn to speak, or after the end: out of order.
            return Err(self.fail(HandshakeError::UnexpectedMessage));
        }
        let parsed = match HandshakeFrame::decode(frame) {
            Ok(p) => p,
            Err(e) if self.noise.is_none() => return Err(self.reject(RejectReason::Malformed, e)),
            Err(e) => return Err(self.fail(e)),
        };
        let result = match (parsed, self.noise.is_some()) {
            (HandshakeFrame::Hello(h), false) => self.read_hello(h),
            (_, false) if self.role() == Role::Responder => {
                // spec §4.1: a first frame that is not a HELLO is a malformed HELLO.
                Err(self.reject(RejectReason::Malformed, HandshakeError::UnexpectedMessage))
            }
            (HandshakeFrame::Message(m), true) => self.read_noise(m),
            (HandshakeFrame::Reject { reason, .. }, true)
                if self.role() == Role::Initiator && self.index == 1 =>
            {
                Err(HandshakeError::Rejected(reason).into())
            }
            _ => Err(HandshakeError::UnexpectedMessage.into()),
        };
        match result {
            Ok(()) => {
                self.index += 1;
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn read_hello(&mut self, h: hello::Hello<'_>) -> Result<(), Error> {
        let Side::Responder(c) = &mut self.side else {
            return Err(HandshakeError::UnexpectedMessage.into());
        };
        let (profile, suite, remote, psk) = match accept_hello(c, &h) {
            Ok(accepted) => accepted,
            Err((reason, e)) => return Err(self.reject(reason, e)),
        };
        let prologue = hello::prologue(h.header);
        let name = noise::protocol_name(profile, suite);
        // During a key rotation, IK and KK may be addressed to an older key: find the one
        // that opens message 1 (trial reads need no randomness), then build the real state.
        let mut candidates: Vec<&Keypair> = vec![&c.keypair];
        if profile.needs_remote_key() {
            candidates.extend(c.previous_keypairs.iter());
        }
        fn setup<'a>(
            name: &'a str,
            prologue: &'a [u8],
            local: &'a Keypair,
            remote: Option<&'a PublicKey>,
            psk: Option<&'a Psk>,
            entropy: Option<Box<dyn EntropySource>>,
            fixed: Option<&'a PrivateKey>,
        ) -> NoiseSetup<'a> {
            NoiseSetup {
                protocol_name: name,
                initiator: false,
                prologue,
                local,
                x25519: x25519::Backend::default(),
                remote,
                psk: psk.map(|k| (3, k)),
                fixed_ephemeral: fixed,
                entropy,
            }
        }
        let mut chosen = 0;
        if candidates.len() > 1 {
            let mut found = None;
            for (i, kp) in candidates.iter().enumerate() {
                let mut trial = noise::build(NoiseSetup {
                    x25519: c.x25519,
                    ..setup(
                        &name,
                        &prologue,
                        kp,
                        remote.as_ref(),
                        psk.as_ref(),
                        Some(Box::new(NoEntropy)),
                        None,
                    )
                })?;
                let mut scratch = vec![0u8; h.noise.len()];
                if trial.read_message(h.noise, &mut scratch).is_ok() {
                    found = Some(i);
                    break;
                }
            }
            chosen = found.ok_or(HandshakeError::AuthenticationFailed)?;
        }
        let mut entropy = c.entropy.take();
        let mut ephemeral = c.fixed_ephemeral.clone();
        if let Some(d) = self.datagram.as_mut() {
            // Datagram mode: draw the ephemeral key here (from the same source snow would
            // use) and keep it with the HELLO, so that the state can be rebuilt after a
            // forged message 3.
            if ephemeral.is_none() {
                ephemeral = Some(draw_ephemeral(&mut entropy)?);
            }
            d.hello = h.header.to_vec();
            d.hello.extend_from_slice(h.noise);
        }
        let state = noise::build(NoiseSetup {
            x25519: c.x25519,
            ..setup(
                &name,
                &prologue,
                candidates[chosen],
                remote.as_ref(),
                psk.as_ref(),
                entropy,
                ephemeral.as_ref(),
            )
        })?;
        if let Some(d) = self.datagram.as_mut() {
            d.ephemeral = ephemeral;
        }
        self.noise = Some(state);
        self.profile = Some(profile);
        self.suite = Some(suite);
        if let Some(key) = remote {
            self.events.peer = Some(key.fingerprint());
        }
        self.read_noise(h.noise)
    }

    fn read_noise(&mut self, message: &[u8]) -> Result<(), Error> {
        let noise = self.noise.as_mut().ok_or(HandshakeError::UnexpectedMessage)?;
        let mut payload = vec![0u8; message.len()];
        let n = noise.read_message(message, &mut payload).map_err(noise::map_err)?;
        payload.truncate(n);
        self.read_payload(&payload)
    }

    /// What follows a Noise message that authenticated: its payload.
    fn read_payload(&mut self, payload: &[u8]) -> Result<(), Error> {
        let profile = self.profile.ok_or(HandshakeError::UnexpectedMessage)?;
        if let Some(key) = self.remote_static() {
            self.events.peer = Some(key.fingerprint());
        }
        match self.role() {
            Role::Responder if self.index == Self::identity_index(profile) => self.read_identity(payload),
            Role::Responder if !payload.is_empty() => {
                // XX/XXpsk3 message 1 may carry a pairing commitment and nothing else.
                let commitment = payload::decode_pairing_commitment(payload)?;
                let Side::Responder(c) = &self.side else { unreachable!() };
                if !c.allow_pairing {
                    return Err(
                        self.reject(RejectReason::PairingNotAllowed, HandshakeError::PairingNotAllowed)
                    );
                }
                self.pairing = Some(Pairing { nonce: None, commitment: Some(commitment) });
                Ok(())
            }
            Role::Responder => Ok(()),
            Role::Initiator => self.read_params(payload),
        }
    }

    /// Message 2 at the initiator: the host's parameters, and (XX) its static key to check.
    fn read_params(&mut self, payload: &[u8]) -> Result<(), Error> {
        let params = SessionParams::decode(payload).map_err(|e| match e {
            DecodeError::InvalidField(_) => Error::Handshake(HandshakeError::InvalidParams),
            other => Error::Decode(other),
        })?;
        self.peer_params = Some(params);
        self.h2 = self.current_hash();
        let Side::Initiator(c) = &self.side else { unreachable!() };
        if !c.pinned_host_keys.is_empty() {
            let remote = self.remote_static().ok_or(HandshakeError::Noise)?;
            if !c.pinned_host_keys.contains(&remote) {
                return Err(HandshakeError::UnexpectedPeerKey.into());
            }
        }
        Ok(())
    }

    /// The initiator's identity at the responder, then the admission decision.
    fn read_identity(&mut self, payload: &[u8]) -> Result<(), Error> {
        let (identity, nonce) = match DeviceIdentity::decode_with_pairing_nonce(payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                // spec §4.5.1: the device's own (authenticated) payload breaks the rules; tell it
                // so, as for a refusal (REJECT in IK/KK, an encrypted CLOSE in XX/XXpsk3).
                self.pending = Some(self.refusal(RejectReason::Malformed, CloseCode::PROTOCOL_ERROR)?);
                return Err(e.into());
            }
        };
        self.events.device_id = Some(identity.device_id.clone());
        match (self.pairing.as_mut(), nonce) {
            (Some(p), Some(nonce)) => {
                if Some(pairing::commitment(&nonce)) != p.commitment {
                    return Err(HandshakeError::PairingCommitmentMismatch.into());
                }
                p.nonce = Some(nonce);
            }
            (None, None) => {}
            (Some(_), None) => return Err(HandshakeError::PairingCommitmentMismatch.into()),
            (None, Some(_)) => return Err(DecodeError::UnknownCriticalField(0x05).into()),
        }
        let key = self.remote_static().ok_or(HandshakeError::Noise)?;
        let Side::Responder(c) = &self.side else { unreachable!() };
        let decision = c.trust.check(&key, Some(&identity));
        self.peer_identity = Some(identity);
        let refusal = match (decision, self.pairing.is_some()) {
            (TrustDecision::Trusted, _) | (TrustDecision::Unknown, true) => return Ok(()),
            (TrustDecision::Revoked, _) => HandshakeError::RevokedPeer,
            (TrustDecision::Unknown, false) => HandshakeError::UnknownPeer,
        };
        self.pending = Some(self.refusal(RejectReason::UnknownCredential, CloseCode::UNAUTHORIZED)?);
        Err(refusal.into())
    }

    /// What a responder that refuses the device's identity sends (spec §12.2).
    fn refusal(&mut self, reason: RejectReason, code: CloseCode) -> Result<Vec<u8>, Error> {
        if self.noise.as_ref().is_some_and(|n| n.is_handshake_finished()) {
            // XX, XXpsk3: the device holds the session keys; tell it why, authenticated.
            self.sealed_close(code)
        } else {
            // IK, KK: no message 2. The REJECT is as informative as silence to an attacker who
            // holds a device key, and tells an honest device what is wrong.
            Ok(hello::reject(PROTOCOL_VERSION, reason).to_vec())
        }
    }

    /// A CLOSE sealed with this side's first transport key (the first transport frame).
    fn sealed_close(&mut self, code: CloseCode) -> Result<Vec<u8>, Error> {
        let (state, suite) = (self.noise.take(), self.suite);
        let (Some(state), Some(suite)) = (state, suite) else {
            return Err(HandshakeError::UnexpectedMessage.into());
        };
        let mut finished = noise::finish(state, suite, self.cipher_backend())?;
        if let Some(d) = &self.datagram {
            // Datagram mode: the responder's first transport packet (counter 0, §13.3).
            return Ok(crate::datagram::seal_first_close(&finished.tx, d.peer_index, code));
        }
        let mut body = FrameHeader::new(FrameKind::CLOSE, 0).encode().to_vec();
        body.extend_from_slice(&code.0.to_be_bytes());
        let tag = finished.tx.seal_in_place(&[], &mut body)?;
        body.extend_from_slice(&tag);
        Ok(body)
    }

    fn cipher_backend(&self) -> cipher::Backend {
        match &self.side {
            Side::Initiator(c) => c.cipher,
            Side::Responder(c) => c.cipher,
        }
    }

    /// Datagram mode (spec §13.3): frames a refusal CLOSE as a transport packet addressed to
    /// `peer_index` (responder), and keeps what it takes to survive a forged message 3
    /// (responder) or 2 (XX initiator).
    pub(crate) fn for_datagrams(mut self, peer_index: u32) -> Self {
        debug_assert!(self.noise.is_none(), "before the first message");
        self.datagram = Some(DatagramState { peer_index, ephemeral: None, hello: Vec::new(), h1: None });
        self
    }

    /// Datagram mode (spec §13.3): reads a handshake body from a link where anyone can inject
    /// packets. A body that does not parse or fails Noise authentication is dropped with an
    /// `authentication_failure` event ([`Error::Dropped`]) and the handshake goes on as if it
    /// had not arrived. A REJECT (unauthenticated) is returned as
    /// [`HandshakeError::Rejected`] without ending the handshake: the caller treats it as a
    /// hint. An XX/XXpsk3 message 2 that authenticates but is refused (a key that is not
    /// pinned, bad parameters) is undone and its error returned without ending the
    /// handshake (anyone can produce one). Other failures after authentication (the
    /// responder's refusal by trust) are fatal.
    pub(crate) fn read_datagram_message(&mut self, frame: &[u8]) -> Result<(), Error> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.noise.is_none() || self.is_finished() || self.wants_write() {
            return Err(Error::Dropped(DropReason::UnexpectedHandshake));
        }
        let message = match HandshakeFrame::decode(frame) {
            Ok(HandshakeFrame::Message(m)) => m,
            Ok(HandshakeFrame::Reject { reason, .. })
                if self.role() == Role::Initiator && self.index == 1 =>
            {
                return Err(HandshakeError::Rejected(reason).into());
            }
            Ok(_) => return Err(Error::Dropped(DropReason::UnexpectedHandshake)),
            Err(_) => {
                self.events.push(EventKind::AuthenticationFailure);
                return Err(Error::Dropped(DropReason::Malformed));
            }
        };
        let noise = self.noise.as_mut().ok_or(HandshakeError::UnexpectedMessage)?;
        let mut payload = vec![0u8; message.len()];
        let read = noise.read_message(message, &mut payload);
        let Ok(n) = read else {
            self.events.push(EventKind::AuthenticationFailure);
            if self.role() == Role::Responder {
                if let Err(e) = self.rebuild_after_message_2() {
                    return Err(self.fail(e));
                }
            }
            return Err(Error::Dropped(DropReason::AuthenticationFailed));
        };
        payload.truncate(n);
        match self.read_payload(&payload) {
            Ok(()) => {
                self.index += 1;
                Ok(())
            }
            // XX, XXpsk3 message 2 authenticates whoever sent it: refused (a key that is not
            // pinned, bad parameters), it may be a forgery. Undo it and wait for another.
            Err(e)
                if self.role() == Role::Initiator
                    && self.profile.is_some_and(|p| p.message_count() == 3)
                    && self.rebuild_after_message_1().is_ok() =>
            {
                self.events.push(EventKind::AuthenticationFailure);
                Err(e)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Datagram mode, responder waiting for message 3: rebuilds the Noise state as it was
    /// after message 2 from the HELLO and the ephemeral key (no randomness needed), and checks
    /// that it is: the handshake hash must equal `h2`.
    fn rebuild_after_message_2(&mut self) -> Result<(), Error> {
        let (Some(d), Side::Responder(c), Some(h2)) = (&self.datagram, &self.side, self.h2) else {
            return Ok(());
        };
        if self.index != 2 {
            return Ok(());
        }
        let Ok(HandshakeFrame::Hello(h)) = HandshakeFrame::decode(&d.hello) else {
            return Err(HandshakeError::Noise.into());
        };
        let (profile, suite, remote, psk) = accept_hello(c, &h).map_err(|(_, e)| e)?;
        let prologue = hello::prologue(h.header);
        let name = noise::protocol_name(profile, suite);
        let mut state = noise::build(NoiseSetup {
            protocol_name: &name,
            initiator: false,
            prologue: &prologue,
            local: &c.keypair,
            x25519: c.x25519,
            remote: remote.as_ref(),
            psk: psk.as_ref().map(|k| (3, k)),
            fixed_ephemeral: d.ephemeral.as_ref(),
            entropy: Some(Box::new(NoEntropy)),
        })?;
        let mut scratch = vec![0u8; MAX_HANDSHAKE_FRAME_LEN];
        state.read_message(h.noise, &mut scratch).map_err(noise::map_err)?;
        state.write_message(&c.params.encode()?, &mut scratch).map_err(noise::map_err)?;
        if state.get_handshake_hash().get(..32) != Some(&h2[..]) {
            return Err(HandshakeError::Noise.into());
        }
        self.noise = Some(state);
        Ok(())
    }

    /// Datagram mode, initiator: ends the handshake at its deadline with the refusal that was
    /// the only answer (a REJECT, or a message 2 with a key that is not pinned; spec §13.3).
    pub(crate) fn fail_at_deadline(&mut self, e: Error) -> Error {
        self.events.push(EventKind::TimerExpired { timer: crate::events::Timer::Handshake });
        self.fail(e)
    }

    /// Records a security event (datagram mode: a forged packet seen by the handshake).
    pub(crate) fn record(&mut self, kind: EventKind) {
        self.events.push(kind);
    }

    /// Consumes the finished handshake into a stream [`Session`].
    pub fn into_session(self) -> Result<Session, Error> {
        let (setup, finished, events) = self.into_parts()?;
        Ok(Session::new(setup, finished, events))
    }

    /// The handshake's results, for either kind of session.
    pub(crate) fn into_parts(mut self) -> Result<(SessionSetup, Finished, EventQueue), Error> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let (Some(noise_state), Some(profile), Some(suite)) = (self.noise.take(), self.profile, self.suite)
        else {
            return Err(HandshakeError::UnexpectedMessage.into());
        };
        let finished = noise::finish(noise_state, suite, self.cipher_backend())?;
        let pairing_code = match (&self.pairing, self.h2) {
            (Some(Pairing { nonce: Some(nonce), .. }), Some(h2)) => Some(pairing::code(&h2, nonce)),
            (Some(_), _) => return Err(HandshakeError::PairingCommitmentMismatch.into()),
            (None, _) => None,
        };
        let setup = match &self.side {
            Side::Initiator(c) => {
                let params = self.peer_params.ok_or(HandshakeError::UnexpectedMessage)?;
                SessionSetup {
                    role: Role::Initiator,
                    profile,
                    suite,
                    local_max_frame_len: c.identity.max_frame_len,
                    peer_max_frame_len: params.max_frame_len,
                    rekey_interval: params.rekey_interval,
                    peer_identity: None,
                    params,
                    pairing_code,
                    confirm_deadline: None,
                    confirm_timeout_ms: 0,
                }
            }
            Side::Responder(c) => {
                let identity = self.peer_identity.take().ok_or(HandshakeError::UnexpectedMessage)?;
                SessionSetup {
                    role: Role::Responder,
                    profile,
                    suite,
                    local_max_frame_len: c.params.max_frame_len,
                    peer_max_frame_len: identity.max_frame_len,
                    rekey_interval: c.params.rekey_interval,
                    peer_identity: Some(identity),
                    params: c.params,
                    pairing_code,
                    confirm_deadline: self.deadline,
                    confirm_timeout_ms: self.timeout_ms,
                }
            }
        };
        let mut events = core::mem::take(&mut self.events);
        // spec §4.8: an IK/KK responder has seen only message 1, which an attacker can replay;
        // the session is established once the device's first transport frame authenticates.
        if setup.confirmed() {
            events.push(setup.established_event());
        }
        Ok((setup, finished, events))
    }

    /// The handshake deadline, once [`Handshake::handle_timeout`] has started the clock.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.failed.is_some() || self.is_finished() {
            None
        } else {
            self.deadline
        }
    }

    /// Starts the handshake clock on the first call (call it when the connection opens), and
    /// fails the handshake with [`HandshakeError::Timeout`] once the deadline has passed.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Result<(), Error> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.is_finished() {
            return Ok(());
        }
        match self.deadline {
            None => {
                self.deadline = Some(Timestamp(now.0.saturating_add(self.timeout_ms)));
                Ok(())
            }
            Some(d) if now >= d => Err(self.expire()),
            Some(_) => Ok(()),
        }
    }

    /// Ends the handshake with [`HandshakeError::Timeout`] (datagram mode keeps its own clock).
    pub(crate) fn expire(&mut self) -> Error {
        self.events.push(EventKind::TimerExpired { timer: crate::events::Timer::Handshake });
        self.fail(HandshakeError::Timeout)
    }

    /// The time allowed for the whole handshake (default 5 s for a responder, key confirmation
    /// included, and 10 s for an initiator).
    pub fn with_timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = ms;
        self
    }
}

/// Datagram mode: an ephemeral private key drawn from the configured source (or the default
/// one), as snow would draw it, so that the handshake can keep it for a rebuild.
fn draw_ephemeral(entropy: &mut Option<Box<dyn EntropySource>>) -> Result<PrivateKey, HandshakeError> {
    let mut e = zeroize::Zeroizing::new([0u8; crate::keys::KEY_LEN]);
    let drawn = match entropy.as_mut() {
        Some(source) => source.fill(&mut e[..]),
        None => default_entropy()?.fill(&mut e[..]),
    };
    drawn.map_err(|_| HandshakeError::NoEntropy)?;
    Ok(PrivateKey::from_bytes(*e))
}

#[cfg(feature = "std")]
fn default_entropy() -> Result<Box<dyn EntropySource>, HandshakeError> {
    Ok(Box::new(crate::keys::OsEntropy))
}

#[cfg(not(feature = "std"))]
fn default_entropy() -> Result<Box<dyn EntropySource>, HandshakeError> {
    Err(HandshakeError::NoEntropy)
}

/// The responder's checks of a HELLO (spec §4.2, §4.4): the choices it names and the
/// credentials its hint selects, or the REJECT reason and local error.
#[allow(clippy::type_complexity)]
fn accept_hello(
    c: &ResponderConfig,
    h: &hello::Hello<'_>,
) -> Result<(Profile, CipherSuite, Option<PublicKey>, Option<Psk>), (RejectReason, HandshakeError)> {
    use RejectReason as R;
    if h.version != PROTOCOL_VERSION {
        return Err((R::UnsupportedVersion, HandshakeError::UnsupportedVersion(h.version)));
    }
    let profile = Profile::from_code(h.profile)
        .ok_or((R::UnsupportedProfile, HandshakeError::UnsupportedProfile(h.profile)))?;
    if !c.profiles.contains(&profile) {
        return Err((R::UnsupportedProfile, HandshakeError::ProfileNotAccepted(profile)));
    }
    let suite = CipherSuite::from_code(h.suite)
        .ok_or((R::UnsupportedSuite, HandshakeError::UnsupportedSuite(h.suite)))?;
    if !c.suites.contains(&suite) {
        return Err((R::UnsupportedSuite, HandshakeError::SuiteNotAccepted));
    }
    match profile {
        Profile::Kk => {
            let id: [u8; KEY_ID_LEN] =
                h.hint.try_into().map_err(|_| (R::Malformed, HandshakeError::UnexpectedPayload))?;
            let key = c
                .trust
                .find_by_key_id(&KeyId(id))
                .ok_or((R::UnknownCredential, HandshakeError::UnknownPeer))?;
            Ok((profile, suite, Some(key), None))
        }
        Profile::XxPsk3 => {
            if h.hint.is_empty() {
                return Err((R::Malformed, HandshakeError::UnexpectedPayload));
            }
            let psk = c
                .psks
                .as_deref()
                .and_then(|d| d.psk(h.hint))
                .ok_or((R::UnknownCredential, HandshakeError::UnknownPsk))?;
            Ok((profile, suite, None, Some(psk)))
        }
        _ if !h.hint.is_empty() => Err((R::Malformed, HandshakeError::UnexpectedPayload)),
        _ => Ok((profile, suite, None, None)),
    }
}
