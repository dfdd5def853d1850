//! Where the host writes telemetry and events: JSON Lines to stdout, stderr or a file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;
use vitalwire_tokio::Telemetry;

/// Where a sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Stdout,
    Stderr,
    File(PathBuf),
}

/// What the writer thread is asked to do.
enum Job {
    Write(Vec<u8>),
    Reopen(File),
}

/// What a write did: the bytes it was given, how many of them it wrote, and why it stopped
/// short.
pub struct Written {
    buf: Vec<u8>,
    written: usize,
    error: Option<io::Error>,
}

/// A JSON Lines sink that never drops a line it was given.
///
/// Lines are queued here and written by a thread of the sink's own with plain `write` calls
/// on an unbuffered file descriptor (stdout and stderr are duplicated, so no library buffer
/// holds bytes back), so a write that blocks (a pipe whose reader stopped reading) never
/// blocks the host. When a write fails (a full disk, `/dev/full`, a pipe whose reader quit),
/// what was not written goes back to the front of the queue, byte-exact, and the next write
/// resumes there: no line is lost, none is written twice or torn.
///
/// The owner calls [`Sink::start`] to hand the queue to the thread, awaits
/// [`Sink::finished`] while [`Sink::busy`], and gives the result to [`Sink::settle`].
pub struct Sink {
    target: Target,
    queued: Vec<u8>,
    queued_lines: u64,
    /// The lines with the writer thread, and since when.
    in_flight: Option<(u64, Instant)>,
    written_lines: u64,
    jobs: std::sync::mpsc::Sender<Job>,
    results: tokio::sync::mpsc::UnboundedReceiver<Written>,
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
        let (jobs, inbox) = std::sync::mpsc::channel();
        let (done, results) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("vitalwire-sink".into())
            .spawn(move || writer(out, inbox, done))
            .map_err(|e| format!("cannot start a writer thread: {e}"))?;
        Ok(Sink {
            target,
            queued: Vec::new(),
            queued_lines: 0,
            in_flight: None,
            written_lines: 0,
            jobs,
            results,
        })
    }

    /// What the sink writes to, for messages (`stdout`, `stderr` or the path).
    pub fn name(&self) -> String {
        match &self.target {
            Target::Stdout => "stdout".into(),
            Target::Stderr => "stderr".into(),
            Target::File(p) => p.display().to_string(),
        }
    }

    /// Takes one line (without its newline) to write.
    pub fn push(&mut self, text: &str) {
        self.queued.extend_from_slice(text.as_bytes());
        self.queued.push(b'\n');
        self.queued_lines += 1;
    }

    /// Bytes queued and not yet handed to the writer.
    pub fn queued_bytes(&self) -> usize {
        self.queued.len()
    }

    /// Hands what is queued to the writer thread, unless it is busy or there is nothing.
    pub fn start(&mut self) {
        if self.in_flight.is_some() || self.queued.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut self.queued);
        match self.jobs.send(Job::Write(buf)) {
            Ok(()) => self.in_flight = Some((std::mem::take(&mut self.queued_lines), Instant::now())),
            // The thread is gone (it never exits on its own): keep the lines.
            Err(std::sync::mpsc::SendError(job)) => {
                if let Job::Write(buf) = job {
                    self.queued = buf;
                }
            }
        }
    }

    /// Whether a write is under way, and since when.
    pub fn busy(&self) -> Option<Instant> {
        self.in_flight.map(|(_, since)| since)
    }

    /// The end of the write under way (pending forever if there is none).
    pub async fn finished(&mut self) -> Written {
        match self.results.recv().await {
            Some(w) => w,
            None => std::future::pending().await,
        }
    }

    /// Takes in the result of a write: counts what was written, puts the rest back at the
    /// front of the queue, and returns the error that stopped it.
    pub fn settle(&mut self, w: Written) -> io::Result<()> {
        let (lines, _) = self.in_flight.take().unwrap_or((0, Instant::now()));
        let done = w.buf[..w.written].iter().filter(|&&b| b == b'\n').count() as u64;
        self.written_lines += done;
        match w.error {
            None => Ok(()),
            Some(e) => {
                let mut rest = w.buf;
                rest.drain(..w.written);
                rest.extend_from_slice(&self.queued);
                self.queued = rest;
                self.queued_lines += lines.saturating_sub(done);
                Err(e)
            }
        }
    }

    /// Whether it holds lines not written yet (queued or being written).
    pub fn is_holding(&self) -> bool {
        self.in_flight.is_some() || !self.queued.is_empty()
    }

    /// Lines taken and not (completely) written yet.
    pub fn held_lines(&self) -> u64 {
        self.queued_lines + self.in_flight.map_or(0, |(n, _)| n)
    }

    /// Lines written completely since start.
    pub fn written_lines(&self) -> u64 {
        self.written_lines
    }

    /// Opens a file target again (after log rotation: the new file at the same path); what it
    /// holds goes to the new file (after a write under way, if any). Stdout and stderr stay as
    /// they are. On an error the old file stays in use.
    pub fn reopen(&mut self) -> Result<(), String> {
        if let Target::File(_) = self.target {
            let file = open_target(&self.target)?;
            let _ = self.jobs.send(Job::Reopen(file));
        }
        Ok(())
    }
}

/// The writer thread: writes each buffer it is given as far as it can.
fn writer(
    mut out: File,
    inbox: std::sync::mpsc::Receiver<Job>,
    done: tokio::sync::mpsc::UnboundedSender<Written>,
) {
    while let Ok(job) = inbox.recv() {
        match job {
            Job::Reopen(file) => out = file,
            Job::Write(buf) => {
                let mut written = 0;
                let mut error = None;
                while written < buf.len() {
                    match out.write(&buf[written..]) {
                        Ok(0) => {
                            error = Some(io::Error::new(
                                io::ErrorKind::WriteZero,
                                "the sink accepts no more bytes",
                            ));
                            break;
                        }
                        Ok(n) => written += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
                if done.send(Written { buf, written, error }).is_err() {
                    return;
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vitalwire-sink-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    async fn write_all(sink: &mut Sink) -> io::Result<()> {
        sink.start();
        while sink.busy().is_some() {
            let w = sink.finished().await;
            sink.settle(w)?;
            sink.start();
        }
        Ok(())
    }

    /// A write cut short in the middle of a line resumes at the exact byte: the file ends up
    /// with every line once, none torn, and the counts say what was written.
    #[tokio::test]
    async fn a_short_write_resumes_at_the_byte_it_stopped() {
        let path = scratch("short");
        let mut sink = Sink::open(path.to_str().unwrap(), false).unwrap();
        for line in ["a", "bb", "ccc"] {
            sink.push(line);
        }
        // As if the writer had written 3 bytes ("a\nb") and then failed.
        std::fs::write(&path, "a\nb").unwrap();
        let buf = std::mem::take(&mut sink.queued);
        sink.in_flight = Some((std::mem::take(&mut sink.queued_lines), Instant::now()));
        let failed = Written { buf, written: 3, error: Some(io::Error::other("disk full")) };
        assert!(sink.settle(failed).is_err());
        assert_eq!((sink.written_lines(), sink.held_lines()), (1, 2));
        assert!(sink.is_holding());
        sink.push("dddd");
        write_all(&mut sink).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nbb\nccc\ndddd\n");
        assert_eq!((sink.written_lines(), sink.held_lines()), (4, 0));
        assert!(!sink.is_holding());
        let _ = std::fs::remove_file(&path);
    }

    /// A sink on /dev/full keeps every line; reopened on a real file it writes them all.
    #[tokio::test]
    async fn a_failing_file_keeps_its_lines_until_reopened() {
        let path = scratch("full");
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let mut sink = Sink::open(path.to_str().unwrap(), false).unwrap();
        sink.push("one");
        sink.push("two");
        let err = write_all(&mut sink).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
        assert_eq!((sink.written_lines(), sink.held_lines()), (0, 2));
        std::fs::remove_file(&path).unwrap();
        sink.reopen().unwrap();
        write_all(&mut sink).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
        let _ = std::fs::remove_file(&path);
    }
}
