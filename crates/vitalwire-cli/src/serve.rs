//! `vitalwire host`: a gateway on TCP and/or UDP.
//!
//! Signals, as systemd and operators send them:
//! - SIGTERM and SIGINT stop the host gracefully: every TCP and UDP session is sent a CLOSE
//!   `GOING_AWAY`, what the devices sent before is written to the sinks, and the process exits
//!   0 (1 if some lines could not be written; stderr says how many).
//! - SIGHUP reopens the telemetry and event files (after log rotation) and reloads the trust
//!   store; open sessions of devices no longer trusted are closed.
//!
//! A sink that cannot write (a full disk, `/dev/full`, a pipe whose reader quit) is never
//! silent and never loses a line it was given: the line stays held and is retried with
//! backoff; meanwhile no more telemetry is taken, so the host's buffer fills and the host stops
//! reading from devices (backpressure). A `sink_failed` event says so (on stderr, and in the
//! events sink unless that is the one failing), the status line shows it, and `sink_recovered`
//! follows when a write succeeds again.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use vitalwire::keyfile;
use vitalwire::{ResponderConfig, SecurityEvent, SessionParams, Severity, TrustPolicy, TrustStore};
use vitalwire_tokio::clock;
use vitalwire_tokio::{Host, HostConfig, Telemetry};

use crate::output::{telemetry_json, Sink, Written};

pub struct HostOptions {
    pub key: PathBuf,
    pub trust: PathBuf,
    pub tcp: Option<SocketAddr>,
    pub udp: Option<SocketAddr>,
    pub telemetry: String,
    pub events: String,
    pub status: bool,
    pub pairing: bool,
    pub duration: Option<Duration>,
    pub handshake_burst: u32,
    pub handshake_rate: f64,
    pub max_half_open: usize,
}

/// Refuses limits with which the host would admit nobody.
fn check_limits(opts: &HostOptions) -> Result<(), String> {
    if opts.handshake_burst == 0 {
        return Err("--handshake-burst must be at least 1 (0 would refuse every device)".into());
    }
    if opts.max_half_open == 0 {
        return Err("--max-half-open must be at least 1 (0 would refuse every device)".into());
    }
    if !(opts.handshake_rate.is_finite() && opts.handshake_rate > 0.0) {
        return Err(format!(
            "--handshake-rate must be a positive number of handshakes per second (got {})",
            opts.handshake_rate
        ));
    }
    Ok(())
}

/// How often the host looks for changes to its trust store file (cheap when there are none:
/// a stat and the file's last line). Revocations and admissions take effect within this time
/// plus a re-check of the open sessions.
const TRUST_POLL: Duration = Duration::from_millis(200);

/// How long the host waits for a `trust` command's lock on the store (they hold it for
/// milliseconds); a TOFU admission that cannot be recorded in time is refused.
const HOST_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// Polls the trust store for changes made by others until the task is aborted.
async fn watch_trust(store: Arc<TrustStore>, host: Host) {
    let mut poll = tokio::time::interval(TRUST_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut error = None;
    loop {
        poll.tick().await;
        let _ = reload_trust(&store, &host, &mut error);
    }
}

/// Picks up trust store changes; on a change, re-checks every open session (closing revoked
/// ones with a `revoked_peer` event). A store that cannot be read is reported once and the
/// last good list stays in force. Returns whether the admitted devices changed.
fn reload_trust(store: &TrustStore, host: &Host, error: &mut Option<String>) -> Result<bool, String> {
    match store.reload() {
        Ok(changed) => {
            if error.take().is_some() {
                eprintln!("vitalwire host: trust store readable again");
            }
            if changed {
                host.trust_changed();
            }
            Ok(changed)
        }
        Err(e) => {
            let text = e.to_string();
            // Once per episode: a file caught half-written by a tool that does not rename
            // may read as damaged in different ways from one poll to the next.
            if error.is_none() {
                eprintln!(
                    "vitalwire host: cannot reload the trust store (keeping the last good list): {text}"
                );
            }
            *error = Some(text.clone());
            Err(text)
        }
    }
}

/// First and largest pause between retries of a sink that cannot write.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// A write that has not returned for this long makes the sink "failing" (a reader that stopped
/// reading).
const BLOCKED_AFTER: Duration = Duration::from_secs(5);
/// Lines taken from a channel at once, and bytes a sink queues before taking no more.
const BATCH: usize = 256;
const MAX_QUEUED: usize = 1 << 20;
/// How long a stopping host keeps trying to write what its sinks hold.
const FINAL_WRITES: Duration = Duration::from_secs(3);

/// A sink and the state of its failures.
struct Output {
    sink: Sink,
    /// `telemetry` or `events`.
    what: &'static str,
    /// Why the sink fails, while it fails.
    failing: Option<String>,
    retry_in: Duration,
    retry_at: Option<tokio::time::Instant>,
}

/// A change of a sink's state, to report.
enum Change {
    Failed(String),
    Recovered,
}

impl Output {
    fn new(sink: Sink, what: &'static str) -> Output {
        Output { sink, what, failing: None, retry_in: RETRY_FIRST, retry_at: None }
    }

    /// Whether to take more lines: not while it fails, nor while much waits already.
    fn accepts(&self) -> bool {
        self.failing.is_none() && self.sink.queued_bytes() < MAX_QUEUED
    }

    /// Starts writing what is queued, unless a retry is scheduled.
    fn start(&mut self) {
        if self.retry_at.is_none() {
            self.sink.start();
        }
    }

    /// Takes in the end of a write; schedules a retry when it failed.
    fn settle(&mut self, written: Written) -> Option<Change> {
        match self.sink.settle(written) {
            Ok(()) => {
                self.retry_in = RETRY_FIRST;
                self.sink.start();
                self.failing.take().map(|_| Change::Recovered)
            }
            Err(e) => {
                self.retry_at = Some(tokio::time::Instant::now() + self.retry_in);
                self.retry_in = (self.retry_in * 2).min(RETRY_MAX);
                let first = self.failing.is_none();
                self.failing = Some(e.to_string());
                first.then(|| Change::Failed(e.to_string()))
            }
        }
    }

    /// A write that does not return is a failure too.
    fn check_blocked(&mut self) -> Option<Change> {
        let since = self.sink.busy()?;
        if self.failing.is_some() || since.elapsed() < BLOCKED_AFTER {
            return None;
        }
        let why = format!("a write has not returned for {} s (nobody reads?)", since.elapsed().as_secs());
        self.failing = Some(why.clone());
        Some(Change::Failed(why))
    }

    /// A host event about this sink, in the format of the security events.
    fn event_line(&self, change: &Change) -> String {
        let mut v = json!({
            "time": clock::wall().0,
            "sink": self.what,
            "target": self.sink.name(),
            "held_lines": self.sink.held_lines(),
        });
        match change {
            Change::Failed(error) => {
                v["severity"] = json!("warning");
                v["event"] = json!("sink_failed");
                v["error"] = json!(error);
            }
            Change::Recovered => {
                v["severity"] = json!("info");
                v["event"] = json!("sink_recovered");
            }
        }
        v.to_string()
    }
}

/// The two sinks, and what is reported about them.
struct Sinks {
    telemetry: Output,
    events: Output,
    alerts: u64,
}

impl Sinks {
    /// Reports a change of the telemetry or the events sink on stderr and in the events sink.
    fn report(&mut self, telemetry: bool, change: Change) {
        let out = if telemetry { &self.telemetry } else { &self.events };
        let line = out.event_line(&change);
        match &change {
            Change::Failed(e) => {
                self.alerts += 1;
                eprintln!(
                    "vitalwire host: the {} sink ({}) cannot write: {e}; holding {} line(s), not reading from devices until it can",
                    out.what,
                    out.sink.name(),
                    out.sink.held_lines()
                );
            }
            Change::Recovered => {
                eprintln!("vitalwire host: the {} sink ({}) writes again", out.what, out.sink.name())
            }
        }
        // In the events sink too (after what it holds, if it is the one failing).
        self.events.sink.push(&line);
        self.events.start();
    }

    /// Takes in the end of a write of the telemetry (or the events) sink.
    fn settle(&mut self, telemetry: bool, written: Written) {
        let out = if telemetry { &mut self.telemetry } else { &mut self.events };
        if let Some(change) = out.settle(written) {
            self.report(telemetry, change);
        }
    }

    fn take_telemetry(&mut self, first: Telemetry, rx: &mut mpsc::Receiver<Telemetry>) {
        self.telemetry.sink.push(&telemetry_json(&first, clock::wall().0));
        for _ in 1..BATCH {
            match rx.try_recv() {
                Ok(t) => self.telemetry.sink.push(&telemetry_json(&t, clock::wall().0)),
                Err(_) => break,
            }
        }
        self.telemetry.start();
    }

    fn take_event(&mut self, first: SecurityEvent, rx: &mut mpsc::Receiver<SecurityEvent>) {
        let take = |e: SecurityEvent, sinks: &mut Sinks| {
            if e.severity >= Severity::Warning {
                sinks.alerts += 1;
            }
            sinks.events.sink.push(&e.to_json_line());
        };
        take(first, self);
        for _ in 1..BATCH {
            match rx.try_recv() {
                Ok(e) => take(e, self),
                Err(_) => break,
            }
        }
        self.events.start();
    }

    /// The earliest retry due.
    fn retry_at(&self) -> Option<tokio::time::Instant> {
        match (self.telemetry.retry_at, self.events.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn retry(&mut self) {
        let now = tokio::time::Instant::now();
        for out in [&mut self.telemetry, &mut self.events] {
            if out.retry_at.is_some_and(|t| t <= now) {
                out.retry_at = None;
                out.start();
            }
        }
    }

    /// Reports writes that do not return.
    fn check_blocked(&mut self) {
        if let Some(change) = self.telemetry.check_blocked() {
            self.report(true, change);
        }
        if let Some(change) = self.events.check_blocked() {
            self.report(false, change);
        }
    }

    /// SIGHUP: opens the files again (what they hold goes to the new files), retries at once.
    fn reopen(&mut self) {
        for out in [&mut self.telemetry, &mut self.events] {
            match out.sink.reopen() {
                Ok(()) => {
                    if out.retry_at.is_some() {
                        out.retry_at = Some(tokio::time::Instant::now());
                        out.retry_in = RETRY_FIRST;
                    }
                }
                Err(e) => eprintln!("vitalwire host: keeping the old {} sink: {e}", out.what),
            }
        }
        self.retry();
    }

    fn holding(&self) -> bool {
        self.telemetry.sink.is_holding() || self.events.sink.is_holding()
    }
}

pub async fn run(opts: HostOptions) -> Result<(), String> {
    if opts.tcp.is_none() && opts.udp.is_none() {
        return Err("give --tcp and/or --udp".into());
    }
    check_limits(&opts)?;
    let keys = keyfile::read_private_key(&opts.key).map_err(|e| e.to_string())?;
    // The handshake asks the store synchronously (a TOFU admission is a locked write): wait
    // for another process's lock only briefly, refusing the device rather than stalling.
    let store = Arc::new(
        TrustStore::open(&opts.trust).map_err(|e| e.to_string())?.with_lock_timeout(HOST_LOCK_TIMEOUT),
    );
    let mut sinks = Sinks {
        telemetry: Output::new(Sink::open(&opts.telemetry, false)?, "telemetry"),
        events: Output::new(Sink::open(&opts.events, true)?, "events"),
        alerts: 0,
    };
    // Installed before the listening lines are printed: a signal sent once the host says it
    // listens is handled, never the default (which would end it without a CLOSE).
    let signal_err = |e: std::io::Error| format!("cannot install signal handlers: {e}");
    let mut sigterm = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(signal_err)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(signal_err)?;
    let policy: Arc<dyn TrustPolicy> = store.clone();
    let pairing = opts.pairing;
    let mut config = HostConfig::new(move || {
        ResponderConfig::new(keys.clone(), policy.clone())
            .params(SessionParams::default())
            .allow_pairing(pairing)
    });
    config.trust = Some(store.clone());
    if opts.pairing {
        // Pairing requests are shown on stderr and confirmed on stdin (crate::pairing).
        let (hook, prompt) = crate::pairing::host_prompt(store.clone());
        config.pairing = Some(hook);
        tokio::spawn(prompt);
    }
    config.handshake_burst = opts.handshake_burst;
    config.handshake_rate = opts.handshake_rate;
    config.max_half_open = opts.max_half_open;
    config.validate()?;
    let (host, mut telemetry, mut events) = Host::new(config);
    if let Some(addr) = opts.tcp {
        // A deep accept queue: a connection flood waits there instead of being dropped.
        let listener = vitalwire_tokio::host::listen_tcp(addr)
            .map_err(|e| format!("cannot listen on TCP {addr}: {e}"))?;
        eprintln!("vitalwire host: TCP {}", listener.local_addr().map_err(|e| e.to_string())?);
        let h = host.clone();
        tokio::spawn(async move { h.serve_tcp(listener).await });
    }
    if let Some(addr) = opts.udp {
        let socket = UdpSocket::bind(addr).await.map_err(|e| format!("cannot bind UDP {addr}: {e}"))?;
        eprintln!("vitalwire host: UDP {}", socket.local_addr().map_err(|e| e.to_string())?);
        let h = host.clone();
        tokio::spawn(async move { vitalwire_tokio::udp::serve_udp(&h, socket).await });
    }
    // Trust changes made by `vitalwire trust` (or any other writer) while the host runs, in a
    // task of their own: a slow telemetry or event sink must not delay a revocation.
    let trust_watch = tokio::spawn(watch_trust(store.clone(), host.clone()));
    let mut trust_error = None;
    let started = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_written = 0;
    let stop = async {
        match opts.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let reason = loop {
        let retry_at = sinks.retry_at();
        tokio::select! {
            _ = &mut stop => break "time is up",
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => {
                eprintln!("vitalwire host: SIGHUP: reopening the telemetry and event files, reloading the trust store");
                sinks.reopen();
                match reload_trust(&store, &host, &mut trust_error) {
                    Ok(true) => eprintln!("vitalwire host: trust store changed; open sessions re-checked"),
                    Ok(false) => eprintln!("vitalwire host: trust store unchanged"),
                    Err(e) => eprintln!("vitalwire host: trust store not reloaded, keeping the current one: {e}"),
                }
            }
            // A sink holding a line it could not write takes no more: the host's buffer
            // fills and the host stops reading from devices.
            Some(t) = telemetry.recv(), if sinks.telemetry.accepts() => sinks.take_telemetry(t, &mut telemetry),
            Some(e) = events.recv(), if sinks.events.accepts() => sinks.take_event(e, &mut events),
            w = sinks.telemetry.sink.finished(), if sinks.telemetry.sink.busy().is_some() => sinks.settle(true, w),
            w = sinks.events.sink.finished(), if sinks.events.sink.busy().is_some() => sinks.settle(false, w),
            _ = sleep_until_some(retry_at) => sinks.retry(),
            _ = tick.tick() => {
                sinks.check_blocked();
                let s = host.stats();
                let written = sinks.telemetry.sink.written_lines();
                if opts.status {
                    let mut failing = String::new();
                    for out in [&sinks.telemetry, &sinks.events] {
                        if let Some(e) = &out.failing {
                            failing.push_str(&format!(" | {} sink FAILING: {e}", out.what));
                        }
                    }
                    let line = format!(
                        "[{:>5}s] sessions {:>5} | handshaking {:>3} | written/s {:>7} | written {:>9} | waiting {:>6} | rejected {:>6} | alerts {:>5}{failing}",
                        started.elapsed().as_secs(), s.sessions, s.half_open, written - last_written, written,
                        s.frames.saturating_sub(written), s.rejected, sinks.alerts
                    );
                    // On a terminal one line, redrawn; into a log (systemd, a file) one line a second.
                    if terminal {
                        eprint!("\r{line} ");
                    } else {
                        eprintln!("{line}");
                    }
                }
                last_written = written;
                // Last-seen times: a locked write, off the loop that moves telemetry.
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.flush());
            }
        }
    };
    if opts.status && terminal {
        eprintln!();
    }
    eprintln!("vitalwire host: {reason}: shutting down (closing every session)");
    // Keep writing while the sessions close: a connection task waiting for room in the
    // buffer gets it, and nothing it already decrypted is lost.
    trust_watch.abort();
    let shutdown = host.shutdown();
    tokio::pin!(shutdown);
    loop {
        let retry_at = sinks.retry_at();
        tokio::select! {
            _ = &mut shutdown => break,
            Some(t) = telemetry.recv() => sinks.take_telemetry(t, &mut telemetry),
            Some(e) = events.recv() => sinks.take_event(e, &mut events),
            w = sinks.telemetry.sink.finished(), if sinks.telemetry.sink.busy().is_some() => sinks.settle(true, w),
            w = sinks.events.sink.finished(), if sinks.events.sink.busy().is_some() => sinks.settle(false, w),
            _ = sleep_until_some(retry_at) => sinks.retry(),
        }
    }
    while let Ok(t) = telemetry.try_recv() {
        sinks.telemetry.sink.push(&telemetry_json(&t, clock::wall().0));
    }
    while let Ok(e) = events.try_recv() {
        sinks.events.sink.push(&e.to_json_line());
    }
    // Last tries for what the sinks hold, for a bounded time; then say what could not be
    // written (a write that never returns is given up on: the process exits).
    sinks.telemetry.start();
    sinks.events.start();
    let give_up = tokio::time::sleep(FINAL_WRITES);
    tokio::pin!(give_up);
    while sinks.holding() {
        let retry_at = sinks.retry_at();
        tokio::select! {
            _ = &mut give_up => break,
            w = sinks.telemetry.sink.finished(), if sinks.telemetry.sink.busy().is_some() => sinks.settle(true, w),
            w = sinks.events.sink.finished(), if sinks.events.sink.busy().is_some() => sinks.settle(false, w),
            _ = sleep_until_some(retry_at) => sinks.retry(),
        }
    }
    if let Err(e) = store.flush() {
        eprintln!("vitalwire host: last-seen times not saved: {e}");
    }
    let s = host.stats();
    eprintln!(
        "vitalwire host: stopped; {} frames received, {} telemetry lines written",
        s.frames,
        sinks.telemetry.sink.written_lines()
    );
    let mut lost = Vec::new();
    for out in [&sinks.telemetry, &sinks.events] {
        if out.sink.is_holding() {
            lost.push(format!(
                "{} {} lines could not be written to {} ({})",
                out.sink.held_lines(),
                out.what,
                out.sink.name(),
                out.failing.as_deref().unwrap_or("not written in time")
            ));
        }
    }
    if s.undelivered > 0 {
        lost.push(format!("{} frames received while stopping were not handed over", s.undelivered));
    }
    if s.events_dropped > 0 {
        eprintln!("vitalwire host: {} security events dropped (event buffer full)", s.events_dropped);
    }
    if lost.is_empty() {
        Ok(())
    } else {
        Err(lost.join("; "))
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
