//! Test-only entry points: a bare Noise handshake on the same code path vitalwire uses, for
//! checking the handshake and transport bytes against third-party vectors (cacophony).
//! Not part of the public API.

use alloc::vec;
use alloc::vec::Vec;

use crate::cipher::TransportCipher;
use crate::error::Error;
use crate::keys::{Keypair, PrivateKey, Psk, PublicKey};
use crate::noise::{self, NoiseSetup};
use crate::profile::CipherSuite;
use crate::x25519::Backend;

/// One side of a bare Noise handshake.
pub struct BareNoiseForTestingOnly {
    state: snow::HandshakeState,
    suite: CipherSuite,
}

impl BareNoiseForTestingOnly {
    /// Builds one side on the X25519 backend `x25519`. `psk` is placed at position 3 (the
    /// only PSK profile is XXpsk3).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        protocol_name: &str,
        initiator: bool,
        prologue: &[u8],
        local: &PrivateKey,
        ephemeral: &PrivateKey,
        remote: Option<&PublicKey>,
        psk: Option<&Psk>,
        x25519: Backend,
    ) -> Result<Self, Error> {
        let suite = if protocol_name.ends_with("AESGCM_SHA256") {
            CipherSuite::AesGcmSha256
        } else {
            CipherSuite::ChaChaPolyBlake2s
        };
        let state = noise::build(NoiseSetup {
            protocol_name,
            initiator,
            prologue,
            local: &Keypair::from_private(local.clone()),
            x25519,
            remote,
            psk: psk.map(|p| (3, p)),
            fixed_ephemeral: Some(ephemeral),
            entropy: None,
        })?;
        Ok(Self { state, suite })
    }

    /// Writes a handshake message.
    pub fn write(&mut self, payload: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = vec![0u8; 65535];
        let n = self.state.write_message(payload, &mut out).map_err(noise::map_err)?;
        out.truncate(n);
        Ok(out)
    }

    /// Reads a handshake message.
    pub fn read(&mut self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = vec![0u8; message.len()];
        let n = self.state.read_message(message, &mut out).map_err(noise::map_err)?;
        out.truncate(n);
        Ok(out)
    }

    /// Whether the handshake is done.
    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// Splits into (send, receive) transport ciphers plus the handshake hash.
    pub fn into_transport(self) -> Result<(TransportCipher, TransportCipher, [u8; 32]), Error> {
        let f = noise::finish(self.state, self.suite, crate::cipher::Backend::default())?;
        Ok((f.tx, f.rx, f.handshake_hash))
    }
}
