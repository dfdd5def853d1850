//! Pairing without a PKI: a 6-digit code both ends display and a person compares
//! (spec/PROTOCOL.md §12.4), like Bluetooth numeric comparison.
//!
//! A plain code over the final handshake hash could be ground by an active man in the middle
//! (it controls message 3 on one side and message 2 on the other, and could try a million
//! variants). So the device commits to a random 32-byte nonce in message 1,
//! `commitment = SHA-256("vitalwire pairing commitment v1" || nonce)`, reveals it encrypted in
//! message 3, and the code covers the handshake hash after message 2 and the nonce:
//!
//! ```text
//! code = BE32(SHA-256("vitalwire pairing code v1" || h2 || nonce)[0..4]) mod 1_000_000
//! ```
//!
//! A man in the middle must fix each side's message 2 before it learns the nonce that decides
//! that side's code, so its chance of matching codes is one in a million per attempt.

use core::fmt;

use sha2::{Digest, Sha256};

use crate::payload::PAIRING_NONCE_LEN;

const COMMIT_LABEL: &[u8] = b"vitalwire pairing commitment v1";
const CODE_LABEL: &[u8] = b"vitalwire pairing code v1";

/// A 6-digit pairing code; `Display` pads with zeros (`004217`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PairingCode(u32);

impl PairingCode {
    /// The code as a number below 1,000,000.
    pub fn value(self) -> u32 {
        self.0
    }
}

impl fmt::Display for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06}", self.0)
    }
}

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PairingCode({self})")
    }
}

/// The commitment to a pairing nonce.
pub fn commitment(nonce: &[u8; PAIRING_NONCE_LEN]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(COMMIT_LABEL);
    h.update(nonce);
    h.finalize().into()
}

/// The pairing code for the handshake hash after message 2 and the nonce.
pub fn code(h2: &[u8; 32], nonce: &[u8; PAIRING_NONCE_LEN]) -> PairingCode {
    let mut h = Sha256::new();
    h.update(CODE_LABEL);
    h.update(h2);
    h.update(nonce);
    let d = h.finalize();
    PairingCode(u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits_and_depend_on_both_inputs() {
        let a = code(&[1; 32], &[2; 32]);
        assert_eq!(alloc::format!("{a}").len(), 6);
        assert!(a.value() < 1_000_000);
        assert_ne!(a, code(&[1; 32], &[3; 32]));
        assert_ne!(a, code(&[4; 32], &[2; 32]));
        assert_eq!(alloc::format!("{}", PairingCode(42)), "000042");
        assert_ne!(commitment(&[2; 32]), commitment(&[3; 32]));
    }
}
