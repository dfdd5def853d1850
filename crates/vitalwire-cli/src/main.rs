//! The `vitalwire` command.

mod blocking;
mod demo;
mod keys_cmd;
mod monitor;

use std::path::PathBuf;

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
        /// Do not add the rogue device (an unknown key) to the demo.
        #[arg(long)]
        no_rogue: bool,
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
    /// Manage a host's trust store (the allowlist of device keys).
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
    /// Admit a device key (creates the store if there is none).
    Add {
        /// The device's public key file.
        key: PathBuf,
        /// The device id the device must present.
        #[arg(long)]
        device_id: String,
        /// A label (ward, bed, asset tag).
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke a device key: new handshakes are refused; hosts close its open sessions.
    Revoke {
        /// The device's public key file.
        #[arg(required_unless_present = "fingerprint")]
        key: Option<PathBuf>,
        /// Or its fingerprint.
        #[arg(long, conflicts_with = "key")]
        fingerprint: Option<String>,
    },
    /// List the store's entries.
    List,
    /// Switch trust on first use on or off (off by default; on admits unknown devices).
    Tofu {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { devices, frames, interval_ms, quiet, no_rogue } => demo::run(demo::DemoOptions {
            devices: devices as usize,
            frames,
            interval_ms,
            quiet,
            rogue: !no_rogue,
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
