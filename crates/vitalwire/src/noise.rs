//! The thin layer over `snow` that runs the Noise handshake. vitalwire uses snow for the
//! handshake only; at the end it takes the two keys of `Split()` and runs the transport
//! ciphers itself ([`crate::cipher`]) so frames can be sealed in place on the fast backend.

use alloc::boxed::Box;
use core::cell::RefCell;

use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroizing;

use crate::cipher::{Backend, TransportCipher, CIPHER_KEY_LEN};
use crate::error::HandshakeError;
use crate::keys::{EntropySource, Keypair, PrivateKey, Psk, PublicKey, SnowRandom};
use crate::profile::{noise_protocol_name, CipherSuite, Profile};
use crate::x25519;

/// snow's default hash and cipher, vitalwire's X25519 ([`crate::x25519`]) and a
/// caller-supplied RNG.
struct Resolver {
    rng: RefCell<Option<Box<dyn Random>>>,
    x25519: x25519::Backend,
    local: Keypair,
    remote: Option<PublicKey>,
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        self.rng.borrow_mut().take().or_else(|| DefaultResolver.resolve_rng())
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(x25519::NoiseDh::new(
                self.x25519,
                self.local.clone(),
                self.remote.map(|k| *k.as_bytes()),
            ))),
            _ => None,
        }
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// Everything needed to start one side of a Noise handshake.
pub(crate) struct NoiseSetup<'a> {
    pub protocol_name: &'a str,
    pub initiator: bool,
    pub prologue: &'a [u8],
    pub local: &'a Keypair,
    pub x25519: x25519::Backend,
    pub remote: Option<&'a PublicKey>,
    /// (modifier position, key)
    pub psk: Option<(u8, &'a Psk)>,
    pub fixed_ephemeral: Option<&'a PrivateKey>,
    pub entropy: Option<Box<dyn EntropySource>>,
}

pub(crate) fn protocol_name(profile: Profile, suite: CipherSuite) -> alloc::string::String {
    noise_protocol_name(profile, suite)
}

/// Builds snow's handshake state.
pub(crate) fn build(setup: NoiseSetup<'_>) -> Result<snow::HandshakeState, HandshakeError> {
    let params: NoiseParams = setup.protocol_name.parse().map_err(|_| HandshakeError::Noise)?;
    let rng: Option<Box<dyn Random>> = setup.entropy.map(|e| Box::new(SnowRandom(e)) as Box<dyn Random>);
    let resolver = Resolver {
        rng: RefCell::new(rng),
        x25519: setup.x25519,
        local: setup.local.clone(),
        remote: setup.remote.copied(),
    };
    if resolver.rng.borrow().is_none() && DefaultResolver.resolve_rng().is_none() {
        return Err(HandshakeError::NoEntropy);
    }
    let mut builder = snow::Builder::with_resolver(params, Box::new(resolver))
        .local_private_key(setup.local.private().expose_secret())
        .and_then(|b| b.prologue(setup.prologue))
        .map_err(|_| HandshakeError::Noise)?;
    if let Some(remote) = setup.remote {
        builder = builder.remote_public_key(remote.as_bytes()).map_err(|_| HandshakeError::Noise)?;
    }
    if let Some((position, psk)) = setup.psk {
        builder = builder.psk(position, psk.expose_secret()).map_err(|_| HandshakeError::Noise)?;
    }
    if let Some(e) = setup.fixed_ephemeral {
        builder = builder.fixed_ephemeral_key_for_testing_only(e.expose_secret());
    }
    let state = if setup.initiator { builder.build_initiator() } else { builder.build_responder() };
    state.map_err(|e| match e {
        snow::Error::Rng | snow::Error::Init(snow::error::InitStage::GetRngImpl) => HandshakeError::NoEntropy,
        _ => HandshakeError::Noise,
    })
}

/// Maps a snow read/write failure.
pub(crate) fn map_err(e: snow::Error) -> HandshakeError {
    match e {
        snow::Error::Decrypt => HandshakeError::AuthenticationFailed,
        snow::Error::Rng => HandshakeError::NoEntropy,
        // A bad DH input (low-order point) or a malformed message: treat as an attack on the
        // handshake, like a decryption failure.
        snow::Error::Dh | snow::Error::Input => HandshakeError::AuthenticationFailed,
        _ => HandshakeError::Noise,
    }
}

/// The result of a finished handshake, ready for transport.
pub(crate) struct Finished {
    pub tx: TransportCipher,
    pub rx: TransportCipher,
    pub handshake_hash: [u8; 32],
    pub remote_static: PublicKey,
}

/// Splits a finished handshake into the two transport ciphers (Noise `Split()`): the first
/// key is the initiator's sending key.
pub(crate) fn finish(
    mut state: snow::HandshakeState,
    suite: CipherSuite,
    backend: Backend,
) -> Result<Finished, HandshakeError> {
    if !state.is_handshake_finished() {
        return Err(HandshakeError::UnexpectedMessage);
    }
    let remote_static =
        state.get_remote_static().and_then(|k| PublicKey::from_slice(k).ok()).ok_or(HandshakeError::Noise)?;
    let mut handshake_hash = [0u8; 32];
    handshake_hash.copy_from_slice(state.get_handshake_hash().get(..32).ok_or(HandshakeError::Noise)?);
    let (k1, k2) = state.dangerously_get_raw_split();
    let (k1, k2): (Zeroizing<[u8; CIPHER_KEY_LEN]>, Zeroizing<[u8; CIPHER_KEY_LEN]>) =
        (Zeroizing::new(k1), Zeroizing::new(k2));
    let (tx_key, rx_key) = if state.is_initiator() { (&k1, &k2) } else { (&k2, &k1) };
    Ok(Finished {
        tx: TransportCipher::with_backend(suite, backend, tx_key),
        rx: TransportCipher::with_backend(suite, backend, rx_key),
        handshake_hash,
        remote_static,
    })
}
