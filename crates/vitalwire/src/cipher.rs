//! The transport AEAD: a Noise `CipherState` run on the keys of the handshake's `Split()`,
//! sealing and opening in place (spec/PROTOCOL.md §6).
//!
//! The bytes are exactly Noise's: `ENCRYPT(k, n, ad, plaintext)` with the nonce encoded as 32
//! zero bits followed by the 64-bit counter (little-endian for ChaChaPoly, big-endian for
//! AESGCM), and `REKEY(k)` = the first 32 bytes of `ENCRYPT(k, 2^64-1, "", zeros[32])`.
//! The cacophony test vectors check this (tests/cacophony.rs).
//!
//! Two backends produce identical bytes: `ring` (with the `std` feature, the fast path) and
//! the portable RustCrypto crates (always present; the only one on `no_std`).

use aes_gcm::aead::{AeadInPlace, KeyInit};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::frame::TAG_LEN;
use crate::profile::CipherSuite;

/// Bytes of a cipher key.
pub const CIPHER_KEY_LEN: usize = 32;

/// The reserved nonce: never used for a message (Noise §5.1), only inside `REKEY()`.
pub const MAX_NONCE: u64 = u64::MAX;

/// Which implementation runs the AEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// ring's assembly implementations (`std` feature; the default there).
    #[cfg(feature = "std")]
    #[default]
    Ring,
    /// The portable RustCrypto implementations (the default without `std`).
    #[cfg_attr(not(feature = "std"), default)]
    Portable,
}

/// The key schedules live inline (no allocation on rekey); the enum is as large as its
/// largest variant, a price paid once per direction per session.
#[allow(clippy::large_enum_variant)]
enum Aead {
    #[cfg(feature = "std")]
    Ring(ring::aead::LessSafeKey),
    ChaCha(chacha20poly1305::ChaCha20Poly1305),
    AesGcm(aes_gcm::Aes256Gcm),
}

/// One direction's cipher: a key and the next nonce.
pub struct TransportCipher {
    suite: CipherSuite,
    backend: Backend,
    aead: Aead,
    nonce: u64,
}

impl core::fmt::Debug for TransportCipher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TransportCipher")
            .field("suite", &self.suite)
            .field("backend", &self.backend)
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

fn nonce_bytes(suite: CipherSuite, n: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    match suite {
        CipherSuite::ChaChaPolyBlake2s => out[4..].copy_from_slice(&n.to_le_bytes()),
        CipherSuite::AesGcmSha256 => out[4..].copy_from_slice(&n.to_be_bytes()),
    }
    out
}

fn make_aead(suite: CipherSuite, backend: Backend, key: &[u8; CIPHER_KEY_LEN]) -> Aead {
    match backend {
        #[cfg(feature = "std")]
        Backend::Ring => {
            let alg = match suite {
                CipherSuite::ChaChaPolyBlake2s => &ring::aead::CHACHA20_POLY1305,
                CipherSuite::AesGcmSha256 => &ring::aead::AES_256_GCM,
            };
            // A 32-byte key is always valid for both algorithms.
            let unbound = ring::aead::UnboundKey::new(alg, key).expect("32-byte AEAD key");
            Aead::Ring(ring::aead::LessSafeKey::new(unbound))
        }
        Backend::Portable => match suite {
            CipherSuite::ChaChaPolyBlake2s => {
                Aead::ChaCha(chacha20poly1305::ChaCha20Poly1305::new(key.into()))
            }
            CipherSuite::AesGcmSha256 => Aead::AesGcm(aes_gcm::Aes256Gcm::new(key.into())),
        },
    }
}

impl TransportCipher {
    /// A cipher with key `key`, starting at nonce 0.
    pub fn new(suite: CipherSuite, key: &[u8; CIPHER_KEY_LEN]) -> Self {
        Self::with_backend(suite, Backend::default(), key)
    }

    /// A cipher on a chosen backend.
    pub fn with_backend(suite: CipherSuite, backend: Backend, key: &[u8; CIPHER_KEY_LEN]) -> Self {
        TransportCipher { suite, backend, aead: make_aead(suite, backend, key), nonce: 0 }
    }

    /// The next nonce this cipher will use.
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// The suite.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    #[doc(hidden)]
    pub fn set_nonce_for_testing_only(&mut self, nonce: u64) {
        self.nonce = nonce;
    }

    /// Encrypts `in_out` in place with the next nonce and returns the tag.
    /// [`Error::NonceExhausted`] when no nonce is left; the nonce never repeats.
    pub fn seal_in_place(&mut self, ad: &[u8], in_out: &mut [u8]) -> Result<[u8; TAG_LEN], Error> {
        if self.nonce == MAX_NONCE {
            return Err(Error::NonceExhausted);
        }
        let tag = self.seal_at(self.nonce, ad, in_out);
        self.nonce += 1;
        Ok(tag)
    }

    /// Decrypts `in_out` = ciphertext || tag in place with the next nonce. On success the
    /// plaintext is `in_out[..len - TAG_LEN]` and the nonce advances; on failure the buffer
    /// holds garbage and the nonce does not advance.
    pub fn open_in_place(&mut self, ad: &[u8], in_out: &mut [u8]) -> Result<usize, Error> {
        if self.nonce == MAX_NONCE {
            return Err(Error::NonceExhausted);
        }
        let len = self.open_at(self.nonce, ad, in_out)?;
        self.nonce += 1;
        Ok(len)
    }

    /// Encrypts with an explicit nonce (no counter update). `nonce` must not be
    /// [`MAX_NONCE`] except inside `rekey`.
    pub(crate) fn seal_at(&self, nonce: u64, ad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let n = nonce_bytes(self.suite, nonce);
        let mut tag = [0u8; TAG_LEN];
        match &self.aead {
            #[cfg(feature = "std")]
            Aead::Ring(key) => {
                let t = key
                    .seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(n),
                        ring::aead::Aad::from(ad),
                        in_out,
                    )
                    .expect("frame lengths are far below the AEAD limit");
                tag.copy_from_slice(t.as_ref());
            }
            Aead::ChaCha(c) => {
                let t = c
                    .encrypt_in_place_detached(&n.into(), ad, in_out)
                    .expect("frame lengths are far below the AEAD limit");
                tag.copy_from_slice(&t);
            }
            Aead::AesGcm(c) => {
                let t = c
                    .encrypt_in_place_detached(&n.into(), ad, in_out)
                    .expect("frame lengths are far below the AEAD limit");
                tag.copy_from_slice(&t);
            }
        }
        tag
    }

    /// Decrypts `in_out` = ciphertext || tag with an explicit nonce (no counter update).
    pub(crate) fn open_at(&self, nonce: u64, ad: &[u8], in_out: &mut [u8]) -> Result<usize, Error> {
        let Some(ct_len) = in_out.len().checked_sub(TAG_LEN) else {
            return Err(Error::AuthenticationFailed);
        };
        let n = nonce_bytes(self.suite, nonce);
        let ok = match &self.aead {
            #[cfg(feature = "std")]
            Aead::Ring(key) => key
                .open_in_place(ring::aead::Nonce::assume_unique_for_key(n), ring::aead::Aad::from(ad), in_out)
                .is_ok(),
            Aead::ChaCha(c) => {
                let (ct, tag) = in_out.split_at_mut(ct_len);
                c.decrypt_in_place_detached(&n.into(), ad, ct, (&*tag).into()).is_ok()
            }
            Aead::AesGcm(c) => {
                let (ct, tag) = in_out.split_at_mut(ct_len);
                c.decrypt_in_place_detached(&n.into(), ad, ct, (&*tag).into()).is_ok()
            }
        };
        if ok {
            Ok(ct_len)
        } else {
            Err(Error::AuthenticationFailed)
        }
    }

    /// Noise `REKEY()`: `k = first 32 bytes of ENCRYPT(k, 2^64-1, "", zeros)`. The nonce
    /// counter is not reset (Noise §4.2).
    pub fn rekey(&mut self) {
        let key = self.next_key();
        self.aead = make_aead(self.suite, self.backend, &key);
    }

    /// `REKEY(k)` without changing this cipher.
    fn next_key(&self) -> Zeroizing<[u8; CIPHER_KEY_LEN]> {
        let mut key = Zeroizing::new([0u8; CIPHER_KEY_LEN]);
        let _tag = self.seal_at(MAX_NONCE, &[], &mut key[..]);
        key
    }

    /// A new cipher with key `REKEY(k)` and nonce 0 (datagram mode derives the keys of later
    /// epochs this way without giving up the current one).
    pub(crate) fn next_epoch(&self) -> TransportCipher {
        TransportCipher::with_backend(self.suite, self.backend, &self.next_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair(suite: CipherSuite, a: Backend, b: Backend) -> (TransportCipher, TransportCipher) {
        let key = [7u8; 32];
        (TransportCipher::with_backend(suite, a, &key), TransportCipher::with_backend(suite, b, &key))
    }

    proptest! {
        #[test]
        fn backends_agree_and_round_trip(msg in proptest::collection::vec(any::<u8>(), 0..300),
                                         rekeys in 0usize..3, aes in any::<bool>()) {
            let suite = if aes { CipherSuite::AesGcmSha256 } else { CipherSuite::ChaChaPolyBlake2s };
            let (mut ring_c, mut portable) = pair(suite, Backend::default(), Backend::Portable);
            for _ in 0..rekeys { ring_c.rekey(); portable.rekey(); }
            let mut a = msg.clone();
            let mut b = msg.clone();
            let ta = ring_c.seal_in_place(b"ad", &mut a).unwrap();
            let tb = portable.seal_in_place(b"ad", &mut b).unwrap();
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(ta, tb);
            // Open with the other backend.
            let (mut opener, _) = pair(suite, Backend::Portable, Backend::Portable);
            for _ in 0..rekeys { opener.rekey(); }
            a.extend_from_slice(&ta);
            let n = opener.open_in_place(b"ad", &mut a).unwrap();
            prop_assert_eq!(&a[..n], &msg[..]);
        }
    }

    #[test]
    fn nonce_exhaustion_is_an_error_not_a_reuse() {
        let mut c = TransportCipher::new(CipherSuite::ChaChaPolyBlake2s, &[1; 32]);
        c.set_nonce_for_testing_only(MAX_NONCE - 1);
        let mut buf = [0u8; 4];
        assert!(c.seal_in_place(&[], &mut buf).is_ok());
        assert_eq!(c.seal_in_place(&[], &mut buf), Err(Error::NonceExhausted));
        assert_eq!(c.seal_in_place(&[], &mut buf), Err(Error::NonceExhausted));
        assert_eq!(c.nonce(), MAX_NONCE);
    }

    #[test]
    fn failed_open_does_not_advance_nonce() {
        let (mut s, mut r) = pair(CipherSuite::AesGcmSha256, Backend::default(), Backend::default());
        let mut m = *b"hello";
        let tag = s.seal_in_place(&[], &mut m).unwrap();
        let mut frame = alloc::vec::Vec::from(&m[..]);
        frame.extend_from_slice(&tag);
        let mut bad = frame.clone();
        bad[0] ^= 1;
        assert_eq!(r.open_in_place(&[], &mut bad), Err(Error::AuthenticationFailed));
        assert_eq!(r.nonce(), 0);
        assert_eq!(r.open_in_place(&[], &mut frame), Ok(5));
        assert_eq!(&frame[..5], b"hello");
        assert_eq!(r.open_in_place(&[], &mut [0u8; 3]), Err(Error::AuthenticationFailed));
    }
}
