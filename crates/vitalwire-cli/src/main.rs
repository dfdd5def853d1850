//! The `vitalwire` command.

mod blocking;
mod demo;
mod monitor;

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
        /// Print only connections, session ends and the summary, not every frame.
        #[arg(long)]
        quiet: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { devices, frames, interval_ms, quiet } => {
            demo::run(demo::DemoOptions { devices: devices as usize, frames, interval_ms, quiet })
        }
    };
    if let Err(e) = result {
        eprintln!("vitalwire: {e}");
        std::process::exit(1);
    }
}
