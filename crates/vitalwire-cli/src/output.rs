//! Where the host writes telemetry and events: JSON Lines to stdout, stderr or a file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;

use serde_json::json;
use vitalwire_tokio::Telemetry;

/// Where a sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Stdout,
    Stderr,
    File(PathBuf),
}

/// A JSON Lines sink that never drops a line it was given.
///
/// Lines are appended to a buffer and written with plain `write` calls on an unbuffered file
/// descriptor (stdout and stderr are duplicated, so no library buffer holds bytes back). When
/// a write fails (a full disk, `/dev/full`, a pipe whose reader quit), what was not written
/// stays in the buffer, byte-exact, and the next [`Sink::flush`] resumes where the failed one
/// stopped: no line is lost, none is written twice or torn. The caller stops giving it lines
/// while it [`Sink::is_holding`] (that is the backpressure).
pub struct Sink {
    target: Target,
    out: File,
    pending: Vec<u8>,
    /// Bytes of `pending` already written.
    done: usize,
    written_lines: u64,
}

impl Sink {
    /// `-` for stdout (stderr if `default_stderr`), `stdout`, `stderr`, anything else a file
    /// (appended, created if missing).
    pub fn open(target: &str, default_stderr: bool) -> Result<Sink, String> {
        let target = match target {
            "-" if default_stderr => Target::Stderr,
            "-" | "stdout" => Target::Stdout,
            "stderr" => Target::Stderr,
            path => Target::File(PathBuf::from(path)),
        };
        let out = open_target(&target)?;
        Ok(Sink { target, out, pending: Vec::new(), done: 0, written_lines: 0 })
    }

    /// What the sink writes to, for messages (`stdout`, `stderr` or the path).
    pub fn name(&self) -> String {
        match &self.target {
            Target::Stdout => "stdout".into(),
            Target::Stderr => "stderr".into(),
            Target::File(p) => p.display().to_string(),
        }
    }

    /// Takes one line (without its newline) to write at the next [`Sink::flush`].
    pub fn push(&mut self, text: &str) {
        self.pending.extend_from_slice(text.as_bytes());
        self.pending.push(b'\n');
    }

    /// Writes what it holds. On an error, what is not written yet is kept for the next call.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.done < self.pending.len() {
            match self.out.write(&self.pending[self.done..]) {
                Ok(0) => {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "the sink accepts no more bytes"))
                }
                Ok(n) => {
                    let chunk = &self.pending[self.done..self.done + n];
                    self.written_lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
                    self.done += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Keep the buffer small: drop what is written, keep the rest.
                    self.pending.drain(..self.done);
                    self.done = 0;
                    return Err(e);
                }
            }
        }
        self.pending.clear();
        self.done = 0;
        Ok(())
    }

    /// Whether it holds lines it could not write yet.
    pub fn is_holding(&self) -> bool {
        self.done < self.pending.len()
    }

    /// Lines taken but not (completely) written yet.
    pub fn held_lines(&self) -> u64 {
        self.pending[self.done..].iter().filter(|&&b| b == b'\n').count() as u64
    }

    /// Lines written completely since start.
    pub fn written_lines(&self) -> u64 {
        self.written_lines
    }

    /// Opens a file target again (after log rotation: the new file at the same path); what it
    /// holds goes to the new file. Stdout and stderr stay as they are. On an error the old file
    /// stays in use.
    pub fn reopen(&mut self) -> Result<(), String> {
        if let Target::File(_) = self.target {
            self.out = open_target(&self.target)?;
        }
        Ok(())
    }
}

fn open_target(target: &Target) -> Result<File, String> {
    let dup = |fd: std::os::fd::BorrowedFd<'_>, name: &str| {
        fd.try_clone_to_owned().map(File::from).map_err(|e| format!("cannot use {name}: {e}"))
    };
    match target {
        Target::Stdout => dup(io::stdout().as_fd(), "stdout"),
        Target::Stderr => dup(io::stderr().as_fd(), "stderr"),
        Target::File(path) => OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display())),
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
