//! Where the host writes telemetry and events: JSON Lines to stdout, stderr or a file.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

use serde_json::json;
use vitalwire_tokio::Telemetry;

/// A JSON Lines sink.
pub struct Sink(Box<dyn Write + Send>);

impl Sink {
    /// `-` for stdout, `stderr` for stderr, anything else a file (appended).
    pub fn open(target: &str, default_stderr: bool) -> Result<Sink, String> {
        Ok(Sink(match target {
            "-" if default_stderr => Box::new(io::stderr()),
            "-" | "stdout" => Box::new(io::stdout()),
            "stderr" => Box::new(io::stderr()),
            path => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(Path::new(path))
                    .map_err(|e| format!("cannot open {path}: {e}"))?,
            ),
        }))
    }

    /// Writes one line (ignoring a closed pipe).
    pub fn line(&mut self, text: &str) {
        let _ = writeln!(self.0, "{text}");
        let _ = self.0.flush();
    }
}

/// One telemetry item as a JSON line: text payloads as text, others as hex.
pub fn telemetry_json(t: &Telemetry, time: u64) -> String {
    let printable = std::str::from_utf8(&t.payload).ok().filter(|s| s.chars().all(|c| !c.is_control()));
    let mut v = json!({
        "time": time,
        "session": t.session,
        "device_id": t.device_id,
        "peer": t.peer.to_string(),
        "channel": t.channel,
    });
    match printable {
        Some(text) => v["text"] = json!(text),
        None => v["hex"] = json!(hex(&t.payload)),
    }
    v.to_string()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}
