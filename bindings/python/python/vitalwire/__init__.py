"""vitalwire: authenticated, encrypted telemetry channels for medical devices.

The native core is Rust (the same code as the `vitalwire` crate); this package adds a
Pythonic surface and asyncio helpers (:mod:`vitalwire.aio`).
"""

from ._native import (
    PROTOCOL_VERSION,
    AuthenticationError,
    ClosedError,
    ConfigError,
    Connection,
    DatagramClient,
    DecodeError,
    FragmentLink,
    HandshakeError,
    Keypair,
    KeyFileError,
    Message,
    PayloadTooLargeError,
    ProtocolError,
    ReplayError,
    SecurityEvent,
    SessionTimeoutError,
    TruncatedError,
    TrustStore,
    UntrustedPeerError,
    VitalwireError,
    fingerprint,
    load_public_key,
)

__all__ = [
    "PROTOCOL_VERSION",
    "AuthenticationError",
    "ClosedError",
    "ConfigError",
    "Connection",
    "DatagramClient",
    "DecodeError",
    "FragmentLink",
    "HandshakeError",
    "Keypair",
    "KeyFileError",
    "Message",
    "PayloadTooLargeError",
    "ProtocolError",
    "ReplayError",
    "SecurityEvent",
    "SessionTimeoutError",
    "TruncatedError",
    "TrustStore",
    "UntrustedPeerError",
    "VitalwireError",
    "fingerprint",
    "load_public_key",
]

# Close codes (spec/PROTOCOL.md §8).
CLOSE_NORMAL = 0x0000
CLOSE_GOING_AWAY = 0x0001
CLOSE_PROTOCOL_ERROR = 0x0002
CLOSE_AUTHENTICATION_FAILED = 0x0003
CLOSE_FRAME_TOO_LARGE = 0x0004
CLOSE_UNAUTHORIZED = 0x0005
CLOSE_SESSION_EXPIRED = 0x0006
CLOSE_IDLE_TIMEOUT = 0x0007
CLOSE_INTERNAL_ERROR = 0x0008
