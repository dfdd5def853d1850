//! Handshake-phase frames: HELLO, HANDSHAKE and REJECT (spec/PROTOCOL.md §4.1-§4.4).
//!
//! ```text
//! HELLO      = 0x01 | 'V' 'W' | version | profile | suite | hint_len | hint | noise message 1
//! HANDSHAKE  = 0x02 | noise message
//! REJECT     = 0x03 | version | reason
//! ```
//!
//! Each is the body of one stream frame (after the 2-byte length prefix). Everything in the
//! HELLO before the Noise message (the "HELLO header") is bound into the Noise prologue:
//! `prologue = "vitalwire" || HELLO header`, so a change to any of it (a downgrade) makes the
//! handshake fail authentication.

use alloc::vec::Vec;

use crate::error::{DecodeError, RejectReason};

/// Frame type byte of HELLO.
pub const TYPE_HELLO: u8 = 0x01;
/// Frame type byte of HANDSHAKE.
pub const TYPE_HANDSHAKE: u8 = 0x02;
/// Frame type byte of REJECT.
pub const TYPE_REJECT: u8 = 0x03;
/// The HELLO magic.
pub const MAGIC: [u8; 2] = *b"VW";
/// The constant that starts the prologue.
pub const PROLOGUE_LABEL: &[u8] = b"vitalwire";
/// Longest hint (KK key id or XXpsk3 PSK id).
pub const MAX_HINT_LEN: usize = 32;
/// Largest handshake-phase frame either side accepts.
pub const MAX_HANDSHAKE_FRAME_LEN: usize = 1024;

/// A parsed handshake-phase frame, borrowing from the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFrame<'a> {
    /// The initiator's first frame.
    Hello(Hello<'a>),
    /// A later Noise handshake message.
    Message(&'a [u8]),
    /// The responder's refusal of a HELLO (unauthenticated).
    Reject {
        /// The highest protocol version the responder speaks.
        version: u8,
        /// Why.
        reason: RejectReason,
    },
}

/// The cleartext choices of a HELLO and its Noise message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Protocol version.
    pub version: u8,
    /// Profile code (may be unknown to this version).
    pub profile: u8,
    /// Suite code (may be unknown to this version).
    pub suite: u8,
    /// Credential hint: empty, a KK key id or an XXpsk3 PSK id.
    pub hint: &'a [u8],
    /// The HELLO header: every byte before the Noise message.
    pub header: &'a [u8],
    /// Noise handshake message 1.
    pub noise: &'a [u8],
}

impl<'a> HandshakeFrame<'a> {
    /// Parses one handshake-phase frame body.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        match bytes {
            [] => Err(DecodeError::EmptyFrame),
            [TYPE_HELLO, rest @ ..] => {
                let [m0, m1, version, profile, suite, hint_len, tail @ ..] = rest else {
                    return Err(DecodeError::FrameTooShort { len: bytes.len(), min: 7 });
                };
                if [*m0, *m1] != MAGIC {
                    return Err(DecodeError::BadMagic);
                }
                let hint_len = *hint_len as usize;
                if hint_len > MAX_HINT_LEN || tail.len() < hint_len {
                    return Err(DecodeError::FrameTooShort { len: bytes.len(), min: 7 + hint_len });
                }
                let header_len = 7 + hint_len;
                Ok(HandshakeFrame::Hello(Hello {
                    version: *version,
                    profile: *profile,
                    suite: *suite,
                    hint: &tail[..hint_len],
                    header: &bytes[..header_len],
                    noise: &bytes[header_len..],
                }))
            }
            [TYPE_HANDSHAKE, noise @ ..] => Ok(HandshakeFrame::Message(noise)),
            [TYPE_REJECT, version, reason] => {
                Ok(HandshakeFrame::Reject { version: *version, reason: RejectReason::from_code(*reason) })
            }
            [TYPE_REJECT, ..] if bytes.len() < 3 => {
                Err(DecodeError::FrameTooShort { len: bytes.len(), min: 3 })
            }
            [TYPE_REJECT, ..] => Err(DecodeError::TrailingBytes),
            [other, ..] => Err(DecodeError::UnknownHandshakeFrame(*other)),
        }
    }
}

/// Builds the HELLO header (everything before the Noise message).
pub fn hello_header(version: u8, profile: u8, suite: u8, hint: &[u8]) -> Vec<u8> {
    debug_assert!(hint.len() <= MAX_HINT_LEN);
    let mut out = Vec::with_capacity(7 + hint.len());
    out.push(TYPE_HELLO);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[version, profile, suite, hint.len() as u8]);
    out.extend_from_slice(hint);
    out
}

/// The Noise prologue for a HELLO header.
pub fn prologue(hello_header: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PROLOGUE_LABEL.len() + hello_header.len());
    p.extend_from_slice(PROLOGUE_LABEL);
    p.extend_from_slice(hello_header);
    p
}

/// A REJECT frame body.
pub fn reject(version: u8, reason: RejectReason) -> [u8; 3] {
    [TYPE_REJECT, version, reason.code()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips() {
        let mut frame = hello_header(1, 3, 1, &[9; 8]);
        assert_eq!(&frame[..7], &[0x01, b'V', b'W', 1, 3, 1, 8]);
        frame.extend_from_slice(b"noise");
        let HandshakeFrame::Hello(h) = HandshakeFrame::decode(&frame).unwrap() else { panic!() };
        assert_eq!((h.version, h.profile, h.suite, h.hint), (1, 3, 1, &[9u8; 8][..]));
        assert_eq!(h.noise, b"noise");
        assert_eq!(h.header.len(), 15);
        assert_eq!(prologue(h.header)[..9], *b"vitalwire");
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        assert_eq!(HandshakeFrame::decode(&[]), Err(DecodeError::EmptyFrame));
        assert_eq!(HandshakeFrame::decode(b"\x01XW\x01\x01\x01\x00"), Err(DecodeError::BadMagic));
        assert!(matches!(
            HandshakeFrame::decode(b"\x01VW\x01\x01\x01\x05ab"),
            Err(DecodeError::FrameTooShort { .. })
        ));
        assert!(matches!(
            HandshakeFrame::decode(b"\x01VW\x01\x01\x01\x21"),
            Err(DecodeError::FrameTooShort { .. })
        ));
        assert_eq!(HandshakeFrame::decode(b"\x09"), Err(DecodeError::UnknownHandshakeFrame(9)));
        assert_eq!(HandshakeFrame::decode(b"\x03\x01\x02\x00"), Err(DecodeError::TrailingBytes));
        assert_eq!(
            HandshakeFrame::decode(&reject(1, RejectReason::UnsupportedSuite)),
            Ok(HandshakeFrame::Reject { version: 1, reason: RejectReason::UnsupportedSuite })
        );
        for cut in 0..7 {
            assert!(HandshakeFrame::decode(&b"\x01VW\x01\x01\x01\x00"[..cut]).is_err());
        }
    }
}
