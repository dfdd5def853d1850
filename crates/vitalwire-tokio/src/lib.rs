//! # vitalwire-tokio
//!
//! Tokio adapters over the sans-IO [`vitalwire`] core:
//!
//! - [`codec::FrameCodec`]: stream framing for `tokio_util::codec::Framed`.
//! - [`host::Host`]: serves devices on TCP ([`host::Host::serve_tcp`]), on any byte stream
//!   ([`host::Host::serve_stream`]: a serial port, a BLE L2CAP channel) and on UDP
//!   ([`udp::serve_udp`]), with rate limiting, a half-open table that evicts silent
//!   connections under pressure and a HELLO deadline ([`admission`]), handshake deadlines, write
//!   timeouts, stateless cookies for UDP under load, re-checks after revocations and a
//!   graceful shutdown that closes every session with a CLOSE frame. Telemetry arrives as a
//!   stream of [`host::Telemetry`] (device, channel, payload).
//! - [`client::DeviceClient`]: a device that reconnects with exponential backoff and jitter.
//! - [`udp::UdpDevice`]: a device over UDP (datagram mode), cookie-aware.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod client;
pub mod clock;
pub mod codec;
pub mod host;
pub mod limits;
pub mod udp;

pub use client::{ClientConfig, ClientEvent, DeviceClient, PairingOutcome, PairingSession};
pub use codec::FrameCodec;
pub use host::{Host, HostConfig, HostStats, PairingHook, PairingRequest, Telemetry};
