//! The transport frame: what travels inside the AEAD once the handshake is done
//! (spec/PROTOCOL.md §5).
//!
//! ```text
//! stream frame on the wire
//! +--------+---------------------------------------------------+-----------+
//! | len:u16|        ciphertext of (header || payload)          |  tag (16) |
//! |  (BE)  |                                                   |           |
//! +--------+---------------------------------------------------+-----------+
//!           plaintext:
//!           +------+-------+---------+---------------------------+
//!           | kind | flags | channel |  payload (len - 19 bytes) |
//!           |  u8  |  u8   |   u8    |                           |
//!           +------+-------+---------+---------------------------+
//! ```
//!
//! Only the length travels in the clear. The header is authenticated and encrypted with the
//! payload.

use core::fmt;

use crate::error::ProtocolError;

/// Bytes of the encrypted frame header (kind, flags, channel).
pub const HEADER_LEN: usize = 3;

/// Bytes of the AEAD tag at the end of every transport frame.
pub const TAG_LEN: usize = 16;

/// Bytes a transport frame adds around its payload inside the length prefix.
pub const FRAME_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// DATA flag: the payload is one piece of a fragmented message (spec §5.2).
pub const FLAG_FRAGMENT: u8 = 0x01;

/// Bytes of the PING / PONG payload.
pub const PING_LEN: usize = 8;

/// The kind of a transport frame. An open set (a newtype over the wire byte) so a newer peer's
/// kinds reach the application as "unknown" rather than crashing it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameKind(pub u8);

impl FrameKind {
    /// Application data on a numbered channel.
    pub const DATA: FrameKind = FrameKind(0x01);
    /// Liveness probe; the peer answers with PONG carrying the same 8 bytes.
    pub const PING: FrameKind = FrameKind(0x02);
    /// Answer to PING.
    pub const PONG: FrameKind = FrameKind(0x03);
    /// The sender switches its sending key to REKEY(k) after this frame.
    pub const REKEY: FrameKind = FrameKind(0x04);
    /// The sender closes the session; payload is a 2-byte reason code.
    pub const CLOSE: FrameKind = FrameKind(0x05);

    /// Whether this version of the protocol defines the kind.
    pub const fn is_known(self) -> bool {
        matches!(self.0, 0x01..=0x05)
    }
}

impl fmt::Debug for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameKind::DATA => f.write_str("DATA"),
            FrameKind::PING => f.write_str("PING"),
            FrameKind::PONG => f.write_str("PONG"),
            FrameKind::REKEY => f.write_str("REKEY"),
            FrameKind::CLOSE => f.write_str("CLOSE"),
            FrameKind(k) => write!(f, "Unknown({k:#04x})"),
        }
    }
}

/// Why a session was closed: the 2-byte code of a CLOSE frame. An open set: codes this version
/// does not name are carried through as numbers.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// Orderly close, nothing wrong.
    pub const NORMAL: CloseCode = CloseCode(0x0000);
    /// The sender is shutting down or restarting.
    pub const GOING_AWAY: CloseCode = CloseCode(0x0001);
    /// The sender received a frame that breaks the protocol.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(0x0002);
    /// The sender received a frame that failed authentication.
    pub const AUTHENTICATION_FAILED: CloseCode = CloseCode(0x0003);
    /// The sender received a frame larger than it accepts.
    pub const FRAME_TOO_LARGE: CloseCode = CloseCode(0x0004);
    /// The peer is not (or no longer) authorized: unknown or revoked key.
    pub const UNAUTHORIZED: CloseCode = CloseCode(0x0005);
    /// The session reached its maximum lifetime; re-establish it.
    pub const SESSION_EXPIRED: CloseCode = CloseCode(0x0006);
    /// The peer was silent for too long.
    pub const IDLE_TIMEOUT: CloseCode = CloseCode(0x0007);
    /// The sender hit an internal error.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(0x0008);

    /// A short name for logs.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0x0000 => "normal",
            0x0001 => "going away",
            0x0002 => "protocol error",
            0x0003 => "authentication failed",
            0x0004 => "frame too large",
            0x0005 => "unauthorized",
            0x0006 => "session expired",
            0x0007 => "idle timeout",
            0x0008 => "internal error",
            _ => "unknown",
        }
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloseCode({:#06x} {})", self.0, self.name())
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#06x})", self.name(), self.0)
    }
}

/// The decrypted header of a transport frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame kind.
    pub kind: FrameKind,
    /// Flag bits: [`FLAG_FRAGMENT`] on DATA; every other bit is reserved and must be zero.
    pub flags: u8,
    /// Channel number (DATA only; zero for every control kind).
    pub channel: u8,
}

impl FrameHeader {
    /// A header for `kind` on `channel` with no flags.
    pub const fn new(kind: FrameKind, channel: u8) -> Self {
        FrameHeader { kind, flags: 0, channel }
    }

    /// Writes the three header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        [self.kind.0, self.flags, self.channel]
    }

    /// Parses the three header bytes (spec §5.2). Checks the rules that do not depend on the
    /// payload: reserved flags are zero (§5.2; only DATA may carry [`FLAG_FRAGMENT`]) and
    /// control frames use channel 0 (§5.3). Unknown kinds are returned as such for the caller
    /// to discard.
    pub fn decode(bytes: [u8; HEADER_LEN]) -> Result<Self, ProtocolError> {
        let header = FrameHeader { kind: FrameKind(bytes[0]), flags: bytes[1], channel: bytes[2] };
        let allowed = if header.kind == FrameKind::DATA { FLAG_FRAGMENT } else { 0 };
        if header.flags & !allowed != 0 {
            return Err(ProtocolError::ReservedFlags(header.flags & !allowed));
        }
        if header.kind.is_known() && header.kind != FrameKind::DATA && header.channel != 0 {
            return Err(ProtocolError::ChannelOnControlFrame);
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = FrameHeader::new(FrameKind::DATA, 7);
        assert_eq!(h.encode(), [0x01, 0x00, 0x07]);
        assert_eq!(FrameHeader::decode(h.encode()), Ok(h));
    }

    #[test]
    fn header_rejects_reserved_flags_and_control_channels() {
        assert_eq!(FrameHeader::decode([0x01, 0x80, 0]), Err(ProtocolError::ReservedFlags(0x80)));
        assert!(FrameHeader::decode([0x01, FLAG_FRAGMENT, 0]).is_ok());
        assert_eq!(FrameHeader::decode([0x02, FLAG_FRAGMENT, 0]), Err(ProtocolError::ReservedFlags(1)));
        assert_eq!(FrameHeader::decode([0x02, 0, 1]), Err(ProtocolError::ChannelOnControlFrame));
        // Unknown kinds pass header checks; the session discards them.
        assert_eq!(FrameHeader::decode([0x42, 0, 9]).unwrap().kind, FrameKind(0x42));
    }

    #[test]
    fn debug_names_kinds_and_codes() {
        assert_eq!(alloc::format!("{:?}", FrameKind(0x99)), "Unknown(0x99)");
        assert_eq!(alloc::format!("{}", CloseCode::UNAUTHORIZED), "unauthorized (0x0005)");
    }
}
