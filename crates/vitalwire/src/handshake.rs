//! The handshake state machine (spec/PROTOCOL.md §4 and §7.1).
//!
//! ```text
//! device (initiator)                                  host (responder)
//!   HELLO  = header || Noise msg 1  ------------------>   checks version/profile/suite,
//!            (IK, KK: + encrypted DeviceIdentity)          looks up KK key / PSK by hint
//!          <------------------  HANDSHAKE = Noise msg 2 (+ encrypted SessionParams)
//!                               or REJECT (reason)
//!   HANDSHAKE = Noise msg 3   ------------------>     (XX, XXpsk3 only:
//!            (+ encrypted DeviceIdentity)                 the device's static key and identity)
//! ```
//!
//! A [`Handshake`] is driven sans-IO: [`Handshake::write_message`] appends the next frame to an
//! output buffer when [`Handshake::wants_write`], [`Handshake::read_message`] takes one frame
//! body split out by a [`crate::StreamDecoder`], and [`Handshake::into_session`] consumes the
//! finished handshake into a [`Session`]. Any error is fatal and sticks.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use bytes::BytesMut;

use crate::error::{DecodeError, Error, HandshakeError, RejectReason};
use crate::hello::{self, HandshakeFrame, MAX_HANDSHAKE_FRAME_LEN, MAX_HINT_LEN, TYPE_HANDSHAKE};
use crate::keys::{EntropySource, KeyId, Keypair, PrivateKey, Psk, PublicKey, KEY_ID_LEN};
use crate::noise::{self, NoiseSetup};
use crate::payload::{DeviceIdentity, SessionParams};
use crate::profile::{CipherSuite, Profile, PROTOCOL_VERSION};
use crate::session::{Session, SessionSetup};
use crate::stream;

/// Which end of the handshake this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sends the first message: the device.
    Initiator,
    /// Answers: the host.
    Responder,
}

/// The host's lookup of credentials named by a HELLO hint: device keys for `KK`, pre-shared
/// keys for `XXpsk3`. Implement it over a database, or use [`StaticDirectory`].
pub trait PeerDirectory: Send + Sync {
    /// The device public key whose [`KeyId`] is `id` (KK).
    fn device_key(&self, id: &KeyId) -> Option<PublicKey>;
    /// The pre-shared key named `id` (XXpsk3).
    fn psk(&self, id: &[u8]) -> Option<Psk>;
}

/// An in-memory [`PeerDirectory`].
#[derive(Default, Clone)]
pub struct StaticDirectory {
    keys: BTreeMap<KeyId, PublicKey>,
    psks: BTreeMap<Vec<u8>, Psk>,
}

impl StaticDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a device key for KK.
    pub fn add_device_key(&mut self, key: PublicKey) -> &mut Self {
        self.keys.insert(key.key_id(), key);
        self
    }
    /// Adds a pre-shared key for XXpsk3.
    pub fn add_psk(&mut self, id: &[u8], psk: Psk) -> &mut Self {
        self.psks.insert(id.to_vec(), psk);
        self
    }
}

impl core::fmt::Debug for StaticDirectory {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StaticDirectory")
            .field("device_keys", &self.keys.len())
            .field("psks", &self.psks.len())
            .finish()
    }
}

impl PeerDirectory for StaticDirectory {
    fn device_key(&self, id: &KeyId) -> Option<PublicKey> {
        self.keys.get(id).copied()
    }
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
    entropy: Option<Box<dyn EntropySource>>,
    fixed_ephemeral: Option<PrivateKey>,
}

impl core::fmt::Debug for InitiatorConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("InitiatorConfig")
            .field("profile", &self.profile)
            .field("suite", &self.suite)
            .field("public_key", self.keypair.public())
            .field("identity", &self.identity)
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
            entropy: None,
            fixed_ephemeral: None,
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

    /// For `XX`/`XXpsk3`: host keys to accept. When the list is non-empty, a host whose
    /// static key is not in it fails the handshake with
    /// [`HandshakeError::UnexpectedPeerKey`] before the device reveals its identity.
    pub fn pin_host_keys(mut self, keys: impl IntoIterator<Item = PublicKey>) -> Self {
        self.pinned_host_keys.extend(keys);
        self
    }

    /// The pre-shared key and its id (1 to 32 bytes), required for `XXpsk3`.
    pub fn psk(mut self, id: &[u8], psk: Psk) -> Self {
        self.psk = Some((id.to_vec(), psk));
        self
    }

    /// The random number generator for the ephemeral key (required on `no_std`).
    pub fn entropy(mut self, entropy: Box<dyn EntropySource>) -> Self {
        self.entropy = Some(entropy);
        self
    }

    /// Uses a fixed ephemeral key, for deterministic test vectors. Never in production: it
    /// destroys forward secrecy.
    #[doc(hidden)]
    pub fn fixed_ephemeral_for_testing_only(mut self, key: PrivateKey) -> Self {
        self.fixed_ephemeral = Some(key);
        self
    }
}

/// The host's side of the handshake: which proposals it accepts and what it answers.
pub struct ResponderConfig {
    keypair: Keypair,
    params: SessionParams,
    profiles: Vec<Profile>,
    suites: Vec<CipherSuite>,
    directory: Option<Arc<dyn PeerDirectory>>,
    entropy: Option<Box<dyn EntropySource>>,
    fixed_ephemeral: Option<PrivateKey>,
}

impl core::fmt::Debug for ResponderConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ResponderConfig")
            .field("public_key", self.keypair.public())
            .field("params", &self.params)
            .field("profiles", &self.profiles)
            .field("suites", &self.suites)
            .finish_non_exhaustive()
    }
}

impl ResponderConfig {
    /// A host that accepts every profile and suite, with default session parameters.
    pub fn new(keypair: Keypair) -> Self {
        ResponderConfig {
            keypair,
            params: SessionParams::default(),
            profiles: Profile::ALL.to_vec(),
            suites: CipherSuite::ALL.to_vec(),
            directory: None,
            entropy: None,
            fixed_ephemeral: None,
        }
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

    /// Where KK device keys and XXpsk3 pre-shared keys are looked up.
    pub fn directory(mut self, directory: Arc<dyn PeerDirectory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// The random number generator for the ephemeral key (required on `no_std`).
    pub fn entropy(mut self, entropy: Box<dyn EntropySource>) -> Self {
        self.entropy = Some(entropy);
        self
    }

    /// Uses a fixed ephemeral key, for deterministic test vectors only.
    #[doc(hidden)]
    pub fn fixed_ephemeral_for_testing_only(mut self, key: PrivateKey) -> Self {
        self.fixed_ephemeral = Some(key);
        self
    }

    /// The host's public key.
    pub fn public_key(&self) -> &PublicKey {
        self.keypair.public()
    }
}

enum Side {
    Initiator(InitiatorConfig),
    Responder(ResponderConfig),
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
    pending_reject: Option<[u8; 3]>,
    failed: Option<Error>,
}

impl core::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.role())
            .field("profile", &self.profile)
            .field("suite", &self.suite)
            .field("message", &self.index)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Handshake {
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
        config
            .identity
            .encode()
            .map_err(|_| Error::Config("device identity out of range"))?;
        Ok(Handshake {
            profile: Some(config.profile),
            suite: Some(config.suite),
            side: Side::Initiator(config),
            noise: None,
            index: 0,
            peer_identity: None,
            peer_params: None,
            pending_reject: None,
            failed: None,
        })
    }

    /// Starts the host's side; it waits for a HELLO.
    pub fn responder(config: ResponderConfig) -> Result<Self, Error> {
        config
            .params
            .validate()
            .map_err(|_| Error::Config("session parameters out of range"))?;
        Ok(Handshake {
            side: Side::Responder(config),
            profile: None,
            suite: None,
            noise: None,
            index: 0,
            peer_identity: None,
            peer_params: None,
            pending_reject: None,
            failed: None,
        })
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

    /// Whether [`Handshake::write_message`] has a frame to write now (the next Noise message,
    /// or a REJECT after a refused HELLO).
    pub fn wants_write(&self) -> bool {
        if self.pending_reject.is_some() {
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
        self.noise
            .as_ref()
            .is_some_and(|n| n.is_handshake_finished())
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
        self.noise
            .as_ref()?
            .get_remote_static()
            .and_then(|k| PublicKey::from_slice(k).ok())
    }

    fn fail(&mut self, e: impl Into<Error>) -> Error {
        let e = e.into();
        self.failed = Some(e);
        self.noise = None;
        e
    }

    fn reject(&mut self, reason: RejectReason, e: impl Into<Error>) -> Error {
        self.pending_reject = Some(hello::reject(PROTOCOL_VERSION, reason));
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
        if let Some(reject) = self.pending_reject.take() {
            stream::write_frame(out, &reject)?;
            return Ok(());
        }
        if let Some(e) = self.failed {
            return Err(e);
        }
        if !self.wants_write() {
            return Err(Error::Config(
                "not this side's turn to write a handshake message",
            ));
        }
        match self.write_inner() {
            Ok(frame) => {
                stream::write_frame(out, &frame)?;
                self.index += 1;
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn write_inner(&mut self) -> Result<Vec<u8>, Error> {
        let profile = self.profile.ok_or(HandshakeError::UnexpectedMessage)?;
        let payload = match &self.side {
            Side::Initiator(c) if self.index == Self::identity_index(profile) => {
                c.identity.encode()?
            }
            Side::Initiator(_) => Vec::new(),
            Side::Responder(c) => c.params.encode()?,
        };
        let mut frame;
        if self.noise.is_none() {
            // The HELLO: only the initiator gets here.
            let Side::Initiator(c) = &mut self.side else {
                return Err(HandshakeError::UnexpectedMessage.into());
            };
            let hint: Vec<u8> = match profile {
                Profile::Kk => c.keypair.public().key_id().0.to_vec(),
                Profile::XxPsk3 => c.psk.as_ref().map(|(id, _)| id.clone()).unwrap_or_default(),
                _ => Vec::new(),
            };
            frame = hello::hello_header(PROTOCOL_VERSION, profile.code(), c.suite.code(), &hint);
            let prologue = hello::prologue(&frame);
            let name = noise::protocol_name(profile, c.suite);
            let state = noise::build(NoiseSetup {
                protocol_name: &name,
                initiator: true,
                prologue: &prologue,
                local: c.keypair.private(),
                remote: c.remote_key.as_ref(),
                psk: c.psk.as_ref().map(|(_, k)| (3, k)),
                fixed_ephemeral: c.fixed_ephemeral.as_ref(),
                entropy: c.entropy.take(),
            })?;
            self.noise = Some(state);
        } else {
            frame = vec![TYPE_HANDSHAKE];
        }
        let noise = self
            .noise
            .as_mut()
            .ok_or(HandshakeError::UnexpectedMessage)?;
        let start = frame.len();
        frame.resize(start + MAX_HANDSHAKE_FRAME_LEN, 0);
        let n = noise
            .write_message(&payload, &mut frame[start..])
            .map_err(noise::map_err)?;
        frame.truncate(start + n);
        Ok(frame)
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
            Err(e) if self.pending_reject.is_some() => Err(e),
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
        let state = noise::build(NoiseSetup {
            protocol_name: &name,
            initiator: false,
            prologue: &prologue,
            local: c.keypair.private(),
            remote: remote.as_ref(),
            psk: psk.as_ref().map(|k| (3, k)),
            fixed_ephemeral: c.fixed_ephemeral.as_ref(),
            entropy: c.entropy.take(),
        })?;
        self.noise = Some(state);
        self.profile = Some(profile);
        self.suite = Some(suite);
        self.read_noise(h.noise)
    }

    fn read_noise(&mut self, message: &[u8]) -> Result<(), Error> {
        let profile = self.profile.ok_or(HandshakeError::UnexpectedMessage)?;
        let noise = self
            .noise
            .as_mut()
            .ok_or(HandshakeError::UnexpectedMessage)?;
        let mut payload = vec![0u8; message.len()];
        let n = noise
            .read_message(message, &mut payload)
            .map_err(noise::map_err)?;
        let payload = &payload[..n];
        match &self.side {
            Side::Responder(_) if self.index == Self::identity_index(profile) => {
                self.peer_identity = Some(DeviceIdentity::decode(payload)?);
            }
            Side::Initiator(c) => {
                // Message 2: the host's parameters, and (XX) its static key to check.
                let params = SessionParams::decode(payload).map_err(|e| match e {
                    DecodeError::InvalidField(_) => Error::Handshake(HandshakeError::InvalidParams),
                    other => Error::Decode(other),
                })?;
                self.peer_params = Some(params);
                if !c.pinned_host_keys.is_empty() {
                    let remote = noise
                        .get_remote_static()
                        .and_then(|k| PublicKey::from_slice(k).ok())
                        .ok_or(HandshakeError::Noise)?;
                    if !c.pinned_host_keys.contains(&remote) {
                        return Err(HandshakeError::UnexpectedPeerKey.into());
                    }
                }
            }
            Side::Responder(_) if !payload.is_empty() => {
                return Err(HandshakeError::UnexpectedPayload.into());
            }
            Side::Responder(_) => {}
        }
        Ok(())
    }

    /// Consumes the finished handshake into a transport [`Session`].
    pub fn into_session(mut self) -> Result<Session, Error> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let (Some(noise_state), Some(profile), Some(suite)) =
            (self.noise.take(), self.profile, self.suite)
        else {
            return Err(HandshakeError::UnexpectedMessage.into());
        };
        let finished = noise::finish(noise_state, suite)?;
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
                }
            }
            Side::Responder(c) => {
                let identity = self
                    .peer_identity
                    .take()
                    .ok_or(HandshakeError::UnexpectedMessage)?;
                SessionSetup {
                    role: Role::Responder,
                    profile,
                    suite,
                    local_max_frame_len: c.params.max_frame_len,
                    peer_max_frame_len: identity.max_frame_len,
                    rekey_interval: c.params.rekey_interval,
                    peer_identity: Some(identity),
                    params: c.params,
                }
            }
        };
        Ok(Session::new(setup, finished))
    }
}

/// The responder's checks of a HELLO (spec §4.2, §4.4): the choices it names and the
/// credentials its hint selects, or the REJECT reason and local error.
#[allow(clippy::type_complexity)]
fn accept_hello(
    c: &ResponderConfig,
    h: &hello::Hello<'_>,
) -> Result<(Profile, CipherSuite, Option<PublicKey>, Option<Psk>), (RejectReason, HandshakeError)>
{
    use RejectReason as R;
    if h.version != PROTOCOL_VERSION {
        return Err((
            R::UnsupportedVersion,
            HandshakeError::UnsupportedVersion(h.version),
        ));
    }
    let profile = Profile::from_code(h.profile).ok_or((
        R::UnsupportedProfile,
        HandshakeError::UnsupportedProfile(h.profile),
    ))?;
    if !c.profiles.contains(&profile) {
        return Err((
            R::UnsupportedProfile,
            HandshakeError::ProfileNotAccepted(profile),
        ));
    }
    let suite = CipherSuite::from_code(h.suite).ok_or((
        R::UnsupportedSuite,
        HandshakeError::UnsupportedSuite(h.suite),
    ))?;
    if !c.suites.contains(&suite) {
        return Err((R::UnsupportedSuite, HandshakeError::SuiteNotAccepted));
    }
    let directory = c.directory.as_deref();
    match profile {
        Profile::Kk => {
            let id: [u8; KEY_ID_LEN] = h
                .hint
                .try_into()
                .map_err(|_| (R::Malformed, HandshakeError::UnexpectedPayload))?;
            let key = directory
                .and_then(|d| d.device_key(&KeyId(id)))
                .ok_or((R::UnknownCredential, HandshakeError::UnknownPeerKey))?;
            Ok((profile, suite, Some(key), None))
        }
        Profile::XxPsk3 => {
            if h.hint.is_empty() {
                return Err((R::Malformed, HandshakeError::UnexpectedPayload));
            }
            let psk = directory
                .and_then(|d| d.psk(h.hint))
                .ok_or((R::UnknownCredential, HandshakeError::UnknownPsk))?;
            Ok((profile, suite, None, Some(psk)))
        }
        _ if !h.hint.is_empty() => Err((R::Malformed, HandshakeError::UnexpectedPayload)),
        _ => Ok((profile, suite, None, None)),
    }
}
