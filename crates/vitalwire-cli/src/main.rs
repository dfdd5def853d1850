//! The `vitalwire` command.

mod demo;
mod device;
mod keys_cmd;
mod monitor;
mod output;
mod pairing;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use vitalwire::{CipherSuite, Profile};

use clap::{Parser, Subcommand};

/// vitalwire: authenticated, encrypted telemetry channels for medical devices.
#[derive(Parser)]
#[command(name = "vitalwire", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a host and several simulated patient monitors over loopback TCP, stream
    /// telemetry through mutually authenticated sessions, and print what the host received.
    Demo {
        /// Number of simulated devices (each uses the next handshake profile in turn:
        /// XX, IK, KK, XXpsk3).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        devices: u16,
        /// Ticks each device sends (a tick is numerics + a waveform block, sometimes an alarm).
        #[arg(long, default_value_t = 5)]
        frames: u32,
        /// Pause between ticks, in milliseconds.
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
        /// Print only connections, security events, session ends and the summary, not every
        /// frame.
        #[arg(long)]
        quiet: bool,
        /// Leave out the rogues (an unknown key, a tampered frame, a replayed frame).
        #[arg(long)]
        no_rogue: bool,
    },
    /// Run a host (gateway): accept devices on TCP and/or UDP, write received telemetry as
    /// JSON Lines and security events as JSON Lines.
    ///
    /// SIGTERM or SIGINT: close every session with GOING_AWAY, write what was received, exit 0
    /// (1 if lines could not be written; stderr says how many). SIGHUP: reopen the telemetry
    /// and event files (log rotation) and reload the trust store. A sink that cannot write
    /// holds its lines and retries; the host stops reading from devices meanwhile and reports
    /// `sink_failed` (then `sink_recovered`) on stderr and in the events.
    Host {
        /// The host's private key file.
        #[arg(long)]
        key: PathBuf,
        /// The trust store file (devices allowed in).
        #[arg(long, default_value = "trust.vw")]
        trust: PathBuf,
        /// Listen for TCP connections here (e.g. 0.0.0.0:7700).
        #[arg(long)]
        tcp: Option<SocketAddr>,
        /// Listen for UDP datagrams here (e.g. 0.0.0.0:7701).
        #[arg(long)]
        udp: Option<SocketAddr>,
        /// Where telemetry goes: `-` (stdout) or a file (appended; reopened on SIGHUP).
        #[arg(long, default_value = "-")]
        telemetry: String,
        /// Where security events go: `-` (stderr) or a file (appended; reopened on SIGHUP).
        #[arg(long, default_value = "-")]
        events: String,
        /// Show a status line on stderr every second (redrawn on a terminal, one line a second
        /// otherwise): sessions, telemetry lines written, frames received and waiting to be
        /// written, failing sinks.
        #[arg(long)]
        status: bool,
        /// Accept pairing requests from unregistered devices: each is shown on stderr with the
        /// device id, key fingerprint and 6-digit code; type `yes CODE` on stdin when the device
        /// shows the same code (the key is added to the trust store), `no CODE` to refuse.
        #[arg(long)]
        allow_pairing: bool,
        /// Stop after this many seconds (default: run until SIGTERM or Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// Handshakes one source address may start at once (at least 1).
        #[arg(long, default_value_t = 20)]
        handshake_burst: u32,
        /// Handshakes per second one source address may start after its burst (a positive
        /// number).
        #[arg(long, default_value_t = 10.0)]
        handshake_rate: f64,
        /// Most handshakes in progress at once (at least 1).
        #[arg(long, default_value_t = 256)]
        max_half_open: usize,
    },
    /// Run a simulated patient monitor (heart rate, SpO2, blood pressure, ECG-like waveform,
    /// alarms) sending to a host. It reconnects with backoff whenever the link fails or the
    /// host refuses it with a (unauthenticated) REJECT; it stops for good only on an
    /// authenticated refusal (CLOSE UNAUTHORIZED), --max-attempts, or --seconds.
    Device {
        /// The device's private key file.
        #[arg(long)]
        key: PathBuf,
        /// The host's public key file. With --pair a file that does not exist yet is written
        /// with the host key learned (and confirmed) in the pairing.
        #[arg(long)]
        host_key: PathBuf,
        /// The host address.
        #[arg(long)]
        connect: SocketAddr,
        /// Use UDP (datagram mode) instead of TCP.
        #[arg(long)]
        udp: bool,
        /// The device id (must match the trust store entry): 1 to 64 bytes of UTF-8, no
        /// control characters.
        #[arg(long)]
        id: String,
        /// Handshake profile: xx, ik, kk (xxpsk3 needs a provisioned PSK; not from the CLI).
        #[arg(long, default_value = "ik", value_parser = ["xx", "ik", "kk"])]
        profile: String,
        /// Cipher suite: chachapoly or aesgcm.
        #[arg(long, default_value = "chachapoly", value_parser = ["chachapoly", "aesgcm"])]
        suite: String,
        /// Ticks per second, 0.01 to 1000 (numerics + waveform block, sometimes an alarm).
        #[arg(long, default_value_t = 4.0)]
        rate: f64,
        /// Stop this many seconds after start, whatever the link does (default: run until
        /// killed); exits non-zero if no session came up in that time.
        #[arg(long)]
        seconds: Option<u64>,
        /// Give up after this many failed connection attempts in a row (default: never).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        max_attempts: Option<u32>,
        /// Pair with a host started with --allow-pairing first (TCP, XX): print the 6-digit
        /// code, wait for `yes` on stdin once the host shows the same code, then stream.
        #[arg(long)]
        pair: bool,
    },
    /// Generate a static keypair: FILE (private, mode 0600) and FILE.pub, and print the
    /// fingerprint.
    Keygen {
        /// Where to write the private key; the public key goes to the same name plus `.pub`.
        #[arg(long, short)]
        out: PathBuf,
        /// A comment stored in both files (e.g. the device id).
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Print the fingerprint of a public or private key file.
    Fingerprint {
        /// The key file.
        file: PathBuf,
    },
    /// Manage a host's trust store (the allowlist of device keys). Safe to run while a host
    /// uses the store and beside other `trust` commands: each change is applied to the latest
    /// file under a lock (`STORE.lock`), and a running host applies it within a second.
    Trust {
        /// The trust store file.
        #[arg(long, short, default_value = "trust.vw")]
        store: PathBuf,
        #[command(subcommand)]
        command: TrustCmd,
    },
}

#[derive(Subcommand)]
enum TrustCmd {
    /// Admit a device key (creates the store if there is none; re-admits a revoked key). A
    /// running host admits the device within a second.
    Add {
        /// The device's public key file.
        key: PathBuf,
        /// The device id the device must present: 1 to 64 bytes of UTF-8, no control
        /// characters.
        #[arg(long)]
        device_id: String,
        /// A label (ward, bed, asset tag): at most 256 bytes, no control characters.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke a device key: new handshakes are refused, and a running host closes the key's
    /// open sessions (TCP and UDP) within a second.
    Revoke {
        /// The device's public key file.
        #[arg(required_unless_present = "fingerprint")]
        key: Option<PathBuf>,
        /// Or its fingerprint.
        #[arg(long, conflicts_with = "key")]
        fingerprint: Option<String>,
    },
    /// List the store's entries (control characters in ids and labels shown as `\u{..}`).
    List,
    /// Switch trust on first use on or off (off by default; on admits unknown devices).
    Tofu {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn main() {
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { devices, frames, interval_ms, quiet, no_rogue } => runtime().and_then(|rt| {
            rt.block_on(demo::run(demo::DemoOptions {
                devices: devices as usize,
                frames,
                interval_ms,
                quiet,
                rogue: !no_rogue,
            }))
        }),
        Command::Host {
            key,
            trust,
            tcp,
            udp,
            telemetry,
            events,
            status,
            allow_pairing,
            seconds,
            handshake_burst,
            handshake_rate,
            max_half_open,
        } => runtime().and_then(|rt| {
            rt.block_on(serve::run(serve::HostOptions {
                key,
                trust,
                tcp,
                udp,
                telemetry,
                events,
                status,
                pairing: allow_pairing,
                duration: seconds.map(Duration::from_secs),
                handshake_burst,
                handshake_rate,
                max_half_open,
            }))
        }),
        Command::Device {
            key,
            host_key,
            connect,
            udp,
            id,
            profile,
            suite,
            rate,
            seconds,
            max_attempts,
            pair,
        } => runtime().and_then(|rt| {
            rt.block_on(device::run(
                device::DeviceOptions {
                    key,
                    host_key,
                    connect,
                    udp,
                    id,
                    profile: Profile::from_name(&profile).unwrap_or(Profile::Ik),
                    suite: CipherSuite::from_name(&suite).unwrap_or_default(),
                    rate,
                    duration: seconds.map(Duration::from_secs),
                    max_attempts,
                    pair,
                },
                started,
            ))
        }),
        Command::Keygen { out, comment } => keys_cmd::keygen(&out, &comment),
        Command::Fingerprint { file } => keys_cmd::fingerprint(&file),
        Command::Trust { store, command } => keys_cmd::trust(
            &store,
            match command {
                TrustCmd::Add { key, device_id, label } => {
                    keys_cmd::TrustCommand::Add { key, device_id, label }
                }
                TrustCmd::Revoke { key, fingerprint } => keys_cmd::TrustCommand::Revoke { key, fingerprint },
                TrustCmd::List => keys_cmd::TrustCommand::List,
                TrustCmd::Tofu { state } => keys_cmd::TrustCommand::Tofu { on: state == "on" },
            },
        ),
    };
    if let Err(e) = result {
        eprintln!("vitalwire: {e}");
        std::process::exit(1);
    }
}
