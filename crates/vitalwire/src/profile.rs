//! Handshake profiles and cipher suites: the small, named set of Noise protocols vitalwire
//! speaks, and their one-byte wire codes (spec/PROTOCOL.md §3).

use core::fmt;

/// The protocol version carried in every HELLO and bound into the Noise prologue.
pub const PROTOCOL_VERSION: u8 = 1;

/// A handshake profile: which Noise handshake pattern authenticates the two ends.
///
/// Every profile authenticates *both* ends with their static keys. The initiator is the
/// device; the responder is the host (gateway, hub or phone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Profile {
    /// `XX`: first contact, neither side knows the other's key in advance. Three messages.
    /// Both static keys travel encrypted; the application must decide whether to trust the
    /// key it learns (pin it, or compare a pairing code).
    Xx,
    /// `IK`: the device already knows the host's key. One round trip; the device's identity is
    /// encrypted to the host and hidden from passive observers.
    Ik,
    /// `KK`: both keys provisioned in advance. One round trip. The HELLO names an 8-byte key id
    /// of the device so the host can pick its key: the device is identifiable on the wire.
    Kk,
    /// `XXpsk3`: first contact gated by a per-device pre-shared secret provisioned at the
    /// factory. The HELLO names the secret's id so the host can look it up.
    XxPsk3,
}

impl Profile {
    /// Every profile, in wire-code order.
    pub const ALL: [Profile; 4] = [Profile::Xx, Profile::Ik, Profile::Kk, Profile::XxPsk3];

    /// The one-byte wire code.
    pub const fn code(self) -> u8 {
        match self {
            Profile::Xx => 0x01,
            Profile::Ik => 0x02,
            Profile::Kk => 0x03,
            Profile::XxPsk3 => 0x04,
        }
    }

    /// The profile for a wire code, if it is one this version knows.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0x01 => Some(Profile::Xx),
            0x02 => Some(Profile::Ik),
            0x03 => Some(Profile::Kk),
            0x04 => Some(Profile::XxPsk3),
            _ => None,
        }
    }

    /// The Noise pattern name (with modifiers).
    pub const fn pattern(self) -> &'static str {
        match self {
            Profile::Xx => "XX",
            Profile::Ik => "IK",
            Profile::Kk => "KK",
            Profile::XxPsk3 => "XXpsk3",
        }
    }

    /// Number of handshake messages.
    pub const fn message_count(self) -> usize {
        match self {
            Profile::Xx | Profile::XxPsk3 => 3,
            Profile::Ik | Profile::Kk => 2,
        }
    }

    /// Whether the initiator must know the responder's static key before it starts.
    pub const fn needs_remote_key(self) -> bool {
        matches!(self, Profile::Ik | Profile::Kk)
    }

    /// Whether the profile mixes in a pre-shared key.
    pub const fn needs_psk(self) -> bool {
        matches!(self, Profile::XxPsk3)
    }

    /// Parses a pattern name such as `"XX"` or `"xxpsk3"` (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Profile::ALL.into_iter().find(|p| p.pattern().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.pattern())
    }
}

/// A cipher suite: Diffie-Hellman function, AEAD and hash, as Noise names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum CipherSuite {
    /// `25519_ChaChaPoly_BLAKE2s`: the default, fast without AES hardware.
    #[default]
    ChaChaPolyBlake2s,
    /// `25519_AESGCM_SHA256`: for platforms with AES acceleration or a FIPS-minded policy.
    AesGcmSha256,
}

impl CipherSuite {
    /// Every suite, in wire-code order.
    pub const ALL: [CipherSuite; 2] = [CipherSuite::ChaChaPolyBlake2s, CipherSuite::AesGcmSha256];

    /// The one-byte wire code.
    pub const fn code(self) -> u8 {
        match self {
            CipherSuite::ChaChaPolyBlake2s => 0x01,
            CipherSuite::AesGcmSha256 => 0x02,
        }
    }

    /// The suite for a wire code, if this version knows it.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0x01 => Some(CipherSuite::ChaChaPolyBlake2s),
            0x02 => Some(CipherSuite::AesGcmSha256),
            _ => None,
        }
    }

    /// The Noise name of the suite (`25519_ChaChaPoly_BLAKE2s`, ...).
    pub const fn noise_name(self) -> &'static str {
        match self {
            CipherSuite::ChaChaPolyBlake2s => "25519_ChaChaPoly_BLAKE2s",
            CipherSuite::AesGcmSha256 => "25519_AESGCM_SHA256",
        }
    }

    /// Parses a suite name: the Noise name, or the short forms `chachapoly` and `aesgcm`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "chachapoly" | "chacha" | "25519_chachapoly_blake2s" => Some(Self::ChaChaPolyBlake2s),
            "aesgcm" | "aes" | "25519_aesgcm_sha256" => Some(Self::AesGcmSha256),
            _ => None,
        }
    }
}

impl fmt::Display for CipherSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noise_name())
    }
}

/// The full Noise protocol name for a profile and suite, e.g. `Noise_IK_25519_ChaChaPoly_BLAKE2s`.
pub fn noise_protocol_name(profile: Profile, suite: CipherSuite) -> alloc::string::String {
    alloc::format!("Noise_{}_{}", profile.pattern(), suite.noise_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_none() {
        for p in Profile::ALL {
            assert_eq!(Profile::from_code(p.code()), Some(p));
            assert_eq!(Profile::from_name(p.pattern()), Some(p));
        }
        for s in CipherSuite::ALL {
            assert_eq!(CipherSuite::from_code(s.code()), Some(s));
            assert_eq!(CipherSuite::from_name(s.noise_name()), Some(s));
        }
        assert_eq!(Profile::from_code(0), None);
        assert_eq!(Profile::from_code(5), None);
        assert_eq!(CipherSuite::from_code(3), None);
    }

    #[test]
    fn protocol_names_match_noise() {
        assert_eq!(
            noise_protocol_name(Profile::XxPsk3, CipherSuite::AesGcmSha256),
            "Noise_XXpsk3_25519_AESGCM_SHA256"
        );
    }
}
