//! Static keys, pre-shared keys and entropy.
//!
//! Private material ([`PrivateKey`], [`Psk`]) is zeroized on drop and never printed by `Debug`.

use core::fmt;

use alloc::boxed::Box;
use sha2::{Digest, Sha256};
#[cfg(feature = "std")]
use snow::resolvers::{CryptoResolver, DefaultResolver};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::KeyError;
use crate::x25519;

/// Bytes of an X25519 key.
pub const KEY_LEN: usize = 32;

/// Bytes of a [`KeyId`].
pub const KEY_ID_LEN: usize = 8;

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Wraps 32 bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PublicKey(bytes)
    }

    /// From a slice, checking the length.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; KEY_LEN] =
            bytes.try_into().map_err(|_| KeyError::WrongLength { expected: KEY_LEN, actual: bytes.len() })?;
        Ok(PublicKey(arr))
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A short human-readable fingerprint for labels, logs and phone screens (spec §12.1).
    pub fn fingerprint(&self) -> Fingerprint {
        let digest = Sha256::digest(self.0);
        let mut f = [0u8; FINGERPRINT_LEN];
        f.copy_from_slice(&digest[..FINGERPRINT_LEN]);
        Fingerprint(f)
    }

    /// The key id named in a KK HELLO: the first 8 bytes of SHA-256 of the key (spec §4.2).
    pub fn key_id(&self) -> KeyId {
        let digest = Sha256::digest(self.0);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        KeyId(id)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PublicKey(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("..)")
    }
}

/// Bytes of a [`Fingerprint`].
pub const FINGERPRINT_LEN: usize = 10;

/// A human-readable fingerprint of a public key: the first 80 bits of SHA-256 of the key,
/// written as 16 RFC 4648 base32 characters in groups of four, e.g. `MFRG-GZDF-MZTW-Q2LK`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; FINGERPRINT_LEN]);

impl Fingerprint {
    /// Parses the display form (case-insensitive, dashes optional).
    pub fn parse(text: &str) -> Option<Self> {
        let mut bits: u128 = 0;
        let mut count = 0;
        for c in text.chars().filter(|c| *c != '-') {
            let v = match c.to_ascii_uppercase() {
                c @ 'A'..='Z' => c as u8 - b'A',
                c @ '2'..='7' => c as u8 - b'2' + 26,
                _ => return None,
            };
            bits = (bits << 5) | v as u128;
            count += 1;
        }
        if count != 16 {
            return None;
        }
        let bytes = bits.to_be_bytes();
        let mut f = [0u8; FINGERPRINT_LEN];
        f.copy_from_slice(&bytes[16 - FINGERPRINT_LEN..]);
        Some(Fingerprint(f))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let mut bits = [0u8; 16];
        bits[16 - FINGERPRINT_LEN..].copy_from_slice(&self.0);
        let value = u128::from_be_bytes(bits);
        for i in 0..16 {
            if i > 0 && i % 4 == 0 {
                f.write_str("-")?;
            }
            let v = (value >> (5 * (15 - i))) & 0x1f;
            write!(f, "{}", ALPHABET[v as usize] as char)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A short, non-secret identifier of a public key (spec §4.2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyId(")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// An X25519 private key. Zeroized on drop; `Debug` prints nothing of it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrivateKey([u8; KEY_LEN]);

impl PrivateKey {
    /// Wraps 32 secret bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PrivateKey(bytes)
    }

    /// From a slice, checking the length.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; KEY_LEN] =
            bytes.try_into().map_err(|_| KeyError::WrongLength { expected: KEY_LEN, actual: bytes.len() })?;
        Ok(PrivateKey(arr))
    }

    /// The secret bytes. Handle with care.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::public_key(&self.0))
    }

    /// Compares two private keys in constant time.
    pub(crate) fn ct_eq(&self, other: &[u8; KEY_LEN]) -> bool {
        self.0.iter().zip(other).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// A static keypair. The private key is also kept prepared for the X25519 backend
/// ([`crate::x25519`]), so handshakes do not redo that work.
#[derive(Clone)]
pub struct Keypair {
    private: PrivateKey,
    public: PublicKey,
    backend: x25519::Backend,
    secret: x25519::Secret,
    #[cfg(feature = "std")]
    static_static: alloc::sync::Arc<x25519::StaticStaticCache>,
}

impl Keypair {
    /// From a private key; derives the public key.
    pub fn from_private(private: PrivateKey) -> Self {
        let backend = x25519::Backend::default();
        let (secret, public) = x25519::Secret::new(backend, private.expose_secret());
        Keypair {
            private,
            public: PublicKey(public),
            backend,
            secret,
            #[cfg(feature = "std")]
            static_static: Default::default(),
        }
    }

    pub(crate) fn backend(&self) -> x25519::Backend {
        self.backend
    }

    pub(crate) fn secret(&self) -> &x25519::Secret {
        &self.secret
    }

    #[cfg(feature = "std")]
    pub(crate) fn static_static(&self) -> &x25519::StaticStaticCache {
        &self.static_static
    }

    /// Forgets the cached static-static results ([`crate::x25519`]), zeroizing them: the next
    /// IK/KK handshake with each peer computes `DH(s, rs)` again. For benchmarks of cold
    /// handshakes.
    #[cfg(feature = "std")]
    #[doc(hidden)]
    pub fn clear_static_static_cache_for_testing_only(&self) {
        self.static_static.clear();
    }

    /// A fresh keypair from the operating system's random number generator.
    #[cfg(feature = "std")]
    pub fn generate() -> Result<Self, KeyError> {
        Self::generate_with(&mut OsEntropy)
    }

    /// A fresh keypair from the given entropy source (for `no_std` targets).
    pub fn generate_with(entropy: &mut dyn EntropySource) -> Result<Self, KeyError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        entropy.fill(&mut bytes[..]).map_err(|_| KeyError::Rng)?;
        Ok(Self::from_private(PrivateKey(*bytes)))
    }

    /// The private half.
    pub fn private(&self) -> &PrivateKey {
        &self.private
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair").field("public", &self.public).finish_non_exhaustive()
    }
}

/// A 32-byte pre-shared key for `XXpsk3`. Zeroized on drop; `Debug` prints nothing of it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Psk([u8; KEY_LEN]);

impl Psk {
    /// Wraps 32 secret bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Psk(bytes)
    }

    /// From a slice, checking the length.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; KEY_LEN] =
            bytes.try_into().map_err(|_| KeyError::WrongLength { expected: KEY_LEN, actual: bytes.len() })?;
        Ok(Psk(arr))
    }

    /// The secret bytes.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

/// The failure of an [`EntropySource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntropyError;

/// A cryptographically secure random number generator. On `std` the operating system's is
/// used by default; `no_std` targets supply their own (a hardware TRNG, say).
pub trait EntropySource: Send + Sync {
    /// Fills `dest` entirely with random bytes.
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError>;
}

/// The operating system's random number generator.
#[cfg(feature = "std")]
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

#[cfg(feature = "std")]
impl EntropySource for OsEntropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        let mut rng = DefaultResolver.resolve_rng().ok_or(EntropyError)?;
        rng.try_fill_bytes(dest).map_err(|_| EntropyError)
    }
}

/// Adapts an [`EntropySource`] to snow's RNG trait.
pub(crate) struct SnowRandom(pub(crate) Box<dyn EntropySource>);

impl snow::types::Random for SnowRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill(dest).map_err(|_| snow::Error::Rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_matches_rfc7748() {
        // RFC 7748 §6.1, Alice.
        let private = PrivateKey::from_slice(
            &hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a").unwrap(),
        )
        .unwrap();
        assert_eq!(
            hex::encode(private.public_key().as_bytes()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn fingerprints_display_and_parse() {
        let key = PublicKey::from_bytes([7; 32]);
        let fp = key.fingerprint();
        let text = alloc::format!("{fp}");
        assert_eq!(text.len(), 19);
        assert_eq!(text.matches('-').count(), 3);
        assert_eq!(Fingerprint::parse(&text), Some(fp));
        assert_eq!(Fingerprint::parse(&text.to_lowercase().replace('-', "")), Some(fp));
        assert_eq!(Fingerprint::parse("ABCD-EFGH"), None);
        assert_eq!(Fingerprint::parse("ABCD-EFGH-IJKL-MN01"), None);
        assert_ne!(PublicKey::from_bytes([8; 32]).fingerprint(), fp);
        assert_eq!(fp.0[..8], key.key_id().0);
    }

    #[test]
    fn debug_never_prints_secrets() {
        let kp = Keypair::from_private(PrivateKey::from_bytes([0xAB; 32]));
        let text = alloc::format!("{kp:?} {:?} {:?}", kp.private(), Psk::from_bytes([0xCD; 32]));
        assert!(!text.contains("abab") && !text.contains("cdcd") && !text.contains("171"));
        assert!(text.contains("redacted"));
    }

    #[test]
    fn generated_keys_differ_and_wrong_lengths_are_errors() {
        let a = Keypair::generate().unwrap();
        let b = Keypair::generate().unwrap();
        assert_ne!(a.public(), b.public());
        assert_eq!(PublicKey::from_slice(&[0; 31]), Err(KeyError::WrongLength { expected: 32, actual: 31 }));
        assert!(Psk::from_slice(&[0; 33]).is_err());
    }
}
