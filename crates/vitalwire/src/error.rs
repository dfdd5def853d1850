//! Errors, in layers: small allocation-free [`DecodeError`]s for malformed bytes,
//! [`HandshakeError`]s, [`ProtocolError`]s for authenticated frames that break the rules, and
//! the public [`Error`] that wraps them. [`Error::close_code`] is the one mapping from an error
//! to the CLOSE reason sent on the wire (spec/PROTOCOL.md §8).
//!
//! Error texts tell an operator what happened; they never contain key material or payload
//! bytes, and they do not distinguish cases an attacker could use as an oracle (every AEAD
//! failure is the same [`Error::AuthenticationFailed`]).

use crate::frame::CloseCode;
use crate::profile::Profile;

/// Malformed bytes: a frame or payload that cannot be parsed. Allocation-free and `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A length prefix announces more than the negotiated maximum (checked before any
    /// memory is reserved).
    #[error("frame length {len} exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// Largest length accepted.
        max: usize,
    },
    /// A length prefix of zero.
    #[error("empty frame")]
    EmptyFrame,
    /// A frame too short to hold what its kind requires.
    #[error("frame of {len} bytes is shorter than the minimum of {min}")]
    FrameTooShort {
        /// Actual length.
        len: usize,
        /// Minimum for this kind of frame.
        min: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    IncompleteFrame {
        /// Bytes left over.
        buffered: usize,
    },
    /// A HELLO without the `VW` magic: not a vitalwire peer.
    #[error("not a vitalwire HELLO (bad magic)")]
    BadMagic,
    /// A handshake frame type this version does not know.
    #[error("unknown handshake frame type {0:#04x}")]
    UnknownHandshakeFrame(u8),
    /// Bytes left over after a complete structure.
    #[error("trailing bytes after a complete structure")]
    TrailingBytes,
    /// A handshake payload (identity or session parameters) ends inside a field.
    #[error("handshake payload truncated")]
    PayloadTruncated,
    /// A handshake payload of an unsupported encoding version or kind.
    #[error("unsupported handshake payload (version {version}, kind {kind})")]
    UnsupportedPayload {
        /// Encoding version byte.
        version: u8,
        /// Payload kind byte.
        kind: u8,
    },
    /// A required field is missing from a handshake payload.
    #[error("handshake payload lacks required field {0:#04x}")]
    MissingField(u8),
    /// A field appears twice in a handshake payload.
    #[error("handshake payload repeats field {0:#04x}")]
    DuplicateField(u8),
    /// A field this version must understand but does not (tags below 0x80).
    #[error("handshake payload has unknown critical field {0:#04x}")]
    UnknownCriticalField(u8),
    /// A field with a value of the wrong size or out of range.
    #[error("handshake payload field {0:#04x} is invalid")]
    InvalidField(u8),
}

/// Why a handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The initiator asked for a protocol version this responder does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The initiator asked for a profile code this responder does not know.
    #[error("unsupported handshake profile code {0:#04x}")]
    UnsupportedProfile(u8),
    /// The initiator asked for a cipher-suite code this responder does not know.
    #[error("unsupported cipher suite code {0:#04x}")]
    UnsupportedSuite(u8),
    /// The profile is known but this responder's policy does not accept it.
    #[error("handshake profile {0} not accepted by this host")]
    ProfileNotAccepted(Profile),
    /// The suite is known but this responder's policy does not accept it.
    #[error("cipher suite not accepted by this host")]
    SuiteNotAccepted,
    /// The responder refused the HELLO (unauthenticated notice from the peer).
    #[error("peer rejected the handshake: {0}")]
    Rejected(RejectReason),
    /// The device's key is not trusted by the host (or, for KK, its key id is unknown).
    #[error("device key not trusted by this host")]
    UnknownPeer,
    /// The device's key has been revoked.
    #[error("device key revoked")]
    RevokedPeer,
    /// The device asked to pair but this host does not accept pairing now.
    #[error("pairing not allowed by this host")]
    PairingNotAllowed,
    /// The pairing nonce does not open the commitment sent in message 1: tampering.
    #[error("pairing commitment mismatch")]
    PairingCommitmentMismatch,
    /// XXpsk3: the pre-shared-key id is not in the host's directory.
    #[error("unknown pre-shared key id")]
    UnknownPsk,
    /// The peer's static key is not the one this side requires.
    #[error("peer static key is not the expected one")]
    UnexpectedPeerKey,
    /// A handshake message failed authentication: wrong key, wrong pre-shared key, a changed
    /// HELLO (downgrade attempt) or tampering.
    #[error("handshake message failed authentication (wrong key, wrong PSK, downgrade or tampering)")]
    AuthenticationFailed,
    /// A frame arrived that the handshake state does not expect now (out of order, duplicate
    /// or after the end).
    #[error("unexpected handshake message at this point")]
    UnexpectedMessage,
    /// A message carried a payload where the protocol requires none.
    #[error("unexpected payload in handshake message")]
    UnexpectedPayload,
    /// The session parameters the host sent are outside what this device accepts.
    #[error("session parameters out of range")]
    InvalidParams,
    /// The Noise layer refused an input (e.g. an invalid public key).
    #[error("Noise handshake error")]
    Noise,
    /// No random number generator is available (configure one on `no_std`).
    #[error("no entropy source available")]
    NoEntropy,
    /// The handshake took longer than allowed.
    #[error("handshake timed out")]
    Timeout,
    /// IK/KK responder: no authenticated transport frame from the device arrived within the
    /// handshake deadline, so its HELLO may have been replayed (spec §4.8). No session was
    /// established.
    #[error("the device did not confirm the session keys in time (a replayed HELLO?)")]
    NotConfirmed,
}

/// The reason code of a REJECT handshake frame (spec/PROTOCOL.md §4.4). An open set: codes a
/// version does not know are kept as [`RejectReason::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// Version not supported.
    UnsupportedVersion,
    /// Profile not supported or not accepted.
    UnsupportedProfile,
    /// Suite not supported or not accepted.
    UnsupportedSuite,
    /// KK key id or XXpsk3 PSK id unknown to the host.
    UnknownCredential,
    /// HELLO could not be parsed.
    Malformed,
    /// The device asked to pair and the host does not accept pairing.
    PairingNotAllowed,
    /// A code this version does not know.
    Other(u8),
}

impl RejectReason {
    /// Wire code.
    pub const fn code(self) -> u8 {
        match self {
            RejectReason::UnsupportedVersion => 1,
            RejectReason::UnsupportedProfile => 2,
            RejectReason::UnsupportedSuite => 3,
            RejectReason::UnknownCredential => 4,
            RejectReason::Malformed => 5,
            RejectReason::PairingNotAllowed => 6,
            RejectReason::Other(c) => c,
        }
    }

    /// From a wire code.
    pub const fn from_code(code: u8) -> Self {
        match code {
            1 => RejectReason::UnsupportedVersion,
            2 => RejectReason::UnsupportedProfile,
            3 => RejectReason::UnsupportedSuite,
            4 => RejectReason::UnknownCredential,
            5 => RejectReason::Malformed,
            6 => RejectReason::PairingNotAllowed,
            c => RejectReason::Other(c),
        }
    }
}

impl core::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RejectReason::UnsupportedVersion => f.write_str("unsupported version"),
            RejectReason::UnsupportedProfile => f.write_str("unsupported profile"),
            RejectReason::UnsupportedSuite => f.write_str("unsupported cipher suite"),
            RejectReason::UnknownCredential => f.write_str("unknown credential"),
            RejectReason::Malformed => f.write_str("malformed HELLO"),
            RejectReason::PairingNotAllowed => f.write_str("pairing not allowed"),
            RejectReason::Other(c) => write!(f, "reason code {c}"),
        }
    }
}

/// An authenticated frame that breaks the protocol's rules: the peer is broken or hostile.
/// Always fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Reserved flag bits set.
    #[error("reserved flag bits {0:#04x} set")]
    ReservedFlags(u8),
    /// A control frame (PING, PONG, REKEY, CLOSE) with a non-zero channel.
    #[error("control frame on a non-zero channel")]
    ChannelOnControlFrame,
    /// A control frame whose payload has the wrong length.
    #[error("control frame of kind {0:#04x} has a malformed payload")]
    BadControlPayload(u8),
    /// The peer sent more frames under one key than the negotiated rekey interval allows.
    #[error("peer exceeded the rekey interval without rekeying")]
    RekeyOverdue,
    /// A frame arrived after the peer's CLOSE.
    #[error("frame after CLOSE")]
    FrameAfterClose,
    /// A frame larger than this side's announced limit.
    #[error("frame larger than the announced maximum")]
    FrameTooLarge,
    /// A transport frame too short or otherwise malformed.
    #[error("malformed transport frame")]
    Malformed,
    /// A fragment that does not fit its message (overlap, count change, too large).
    #[error("malformed or oversized message fragment")]
    BadFragment,
    /// Unfragmented DATA in the middle of a fragmented message.
    #[error("DATA interleaved with the fragments of a message")]
    InterleavedFragments,
    /// DATA in a pairing session, which carries no application data.
    #[error("DATA frame in a pairing session")]
    DataInPairingSession,
}

/// Problems with key material given to the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Wrong number of bytes for a key.
    #[error("key must be {expected} bytes, got {actual}")]
    WrongLength {
        /// Expected length.
        expected: usize,
        /// Given length.
        actual: usize,
    },
    /// The random number generator failed.
    #[error("random number generator failed")]
    Rng,
}

/// Every error vitalwire returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Malformed bytes from the link.
    #[error("malformed input: {0}")]
    Decode(#[from] DecodeError),
    /// The handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The peer broke the protocol with an authenticated frame.
    #[error("protocol violation by peer: {0}")]
    Protocol(#[from] ProtocolError),
    /// A transport frame failed authentication: forged, corrupted, replayed or reordered.
    #[error("frame failed authentication (forged, corrupted, replayed or reordered)")]
    AuthenticationFailed,
    /// The 2^64-1 nonces of a key are used up; the session must be re-established. Never a
    /// nonce reuse.
    #[error("nonce space exhausted; re-establish the session")]
    NonceExhausted,
    /// A payload larger than the peer accepts in one frame. The session stays usable.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes per frame")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// Largest payload the peer accepts.
        max: usize,
    },
    /// An authentic frame of a kind this version does not know; it was discarded and the
    /// session stays usable.
    #[error("ignored frame of unknown kind {0:#04x}")]
    UnknownFrameKind(u8),
    /// The peer closed the session with this reason.
    #[error("session closed by peer: {0}")]
    ClosedByPeer(CloseCode),
    /// This side closed the session.
    #[error("session closed")]
    Closed,
    /// The stream ended without an authenticated CLOSE: data may have been cut off.
    #[error("stream ended without an authenticated CLOSE (truncated)")]
    Truncated,
    /// The caller's configuration is incomplete or inconsistent.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// Key material problem.
    #[error("key error: {0}")]
    Key(#[from] KeyError),
    /// The peer is no longer trusted (revoked during the session).
    #[error("peer no longer trusted")]
    Unauthorized,
    /// The peer sent nothing for longer than the dead-peer timeout.
    #[error("peer silent for too long (dead peer)")]
    DeadPeer,
    /// The session reached its maximum lifetime; re-establish it.
    #[error("session reached its maximum lifetime")]
    SessionExpired,
    /// A datagram was dropped (datagram mode); the session goes on.
    #[error("datagram dropped: {0}")]
    Dropped(DropReason),
    /// A pairing session carries no application data; re-establish a normal session after the
    /// pairing is confirmed.
    #[error("pairing session: no application data until a normal session is established")]
    PairingSession,
}

impl Error {
    /// Whether the error ends the session (it then sticks: every later call returns it, and
    /// a `Connection` moves to `Failed`). Non-fatal errors leave the session as it was
    /// (spec/PROTOCOL.md §8, "Error handling summary"):
    ///
    /// - refusals of a local request the session cannot carry out, with nothing sent or
    ///   changed: [`Error::PayloadTooLarge`], [`Error::Config`], [`Error::Key`],
    ///   [`Error::PairingSession`];
    /// - reports of a session that already ended cleanly: [`Error::Closed`] (this side
    ///   closed) and [`Error::ClosedByPeer`] (the peer closed); a clean close is not a failure;
    /// - input the protocol discards and goes on: [`Error::UnknownFrameKind`] (§5.3) and
    ///   [`Error::Dropped`] (a datagram dropped in datagram mode, §13.3).
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Error::PayloadTooLarge { .. }
                | Error::UnknownFrameKind(_)
                | Error::Config(_)
                | Error::Key(_)
                | Error::Dropped(_)
                | Error::PairingSession
                | Error::Closed
                | Error::ClosedByPeer(_)
        )
    }

    /// The CLOSE reason this side sends the peer when this error ends a session
    /// (spec/PROTOCOL.md §8). `None` when no CLOSE is sent.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Error::Decode(DecodeError::FrameTooLarge { .. }) => Some(CloseCode::FRAME_TOO_LARGE),
            Error::Decode(_) => Some(CloseCode::PROTOCOL_ERROR),
            Error::Protocol(ProtocolError::RekeyOverdue) => Some(CloseCode::PROTOCOL_ERROR),
            Error::Protocol(ProtocolError::FrameTooLarge) => Some(CloseCode::FRAME_TOO_LARGE),
            Error::Protocol(_) => Some(CloseCode::PROTOCOL_ERROR),
            Error::AuthenticationFailed => Some(CloseCode::AUTHENTICATION_FAILED),
            Error::Unauthorized => Some(CloseCode::UNAUTHORIZED),
            Error::DeadPeer => Some(CloseCode::IDLE_TIMEOUT),
            Error::SessionExpired => Some(CloseCode::SESSION_EXPIRED),
            // No nonce is left to seal a CLOSE with.
            Error::NonceExhausted => None,
            // Closing, truncation and handshake failures have nothing more to send.
            _ => None,
        }
    }
}

/// Why a datagram was dropped in datagram mode (never fatal: a forged or stale datagram must
/// not let an attacker end the session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DropReason {
    /// Failed authentication (forged or corrupted).
    #[error("failed authentication")]
    AuthenticationFailed,
    /// A counter seen before.
    #[error("replayed (duplicate counter)")]
    Replay,
    /// A counter older than the replay window.
    #[error("older than the replay window")]
    TooOld,
    /// Sealed under a key that is gone (past its grace period) or too far ahead.
    #[error("key epoch not available")]
    StaleKey,
    /// Unparseable.
    #[error("malformed datagram")]
    Malformed,
    /// Addressed to another session index.
    #[error("unknown session index")]
    UnknownIndex,
    /// A handshake packet that does not fit the handshake's state (a harmless duplicate).
    #[error("unexpected handshake packet")]
    UnexpectedHandshake,
    /// A limit was hit (half-open handshakes, sessions).
    #[error("limit reached")]
    Limit,
}

/// Shorthand.
pub type Result<T, E = Error> = core::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Local misuse, clean closes and discarded input never end a session; everything the
    /// peer or the link did wrong does, and only those send a CLOSE.
    #[test]
    fn fatal_classification() {
        let harmless = [
            Error::PayloadTooLarge { len: 2, max: 1 },
            Error::UnknownFrameKind(0x42),
            Error::Config("x"),
            Error::Key(KeyError::Rng),
            Error::Dropped(DropReason::Replay),
            Error::Dropped(DropReason::AuthenticationFailed),
            Error::PairingSession,
            Error::Closed,
            Error::ClosedByPeer(CloseCode::NORMAL),
            Error::ClosedByPeer(CloseCode::GOING_AWAY),
        ];
        for e in harmless {
            assert!(!e.is_fatal(), "{e:?} must not be fatal");
            assert_eq!(e.close_code(), None, "{e:?} sends no CLOSE");
        }
        let fatal = [
            Error::Decode(DecodeError::EmptyFrame),
            Error::Handshake(HandshakeError::Timeout),
            Error::Protocol(ProtocolError::Malformed),
            Error::AuthenticationFailed,
            Error::NonceExhausted,
            Error::Truncated,
            Error::Unauthorized,
            Error::DeadPeer,
            Error::SessionExpired,
        ];
        for e in fatal {
            assert!(e.is_fatal(), "{e:?} must be fatal");
        }
    }
}
