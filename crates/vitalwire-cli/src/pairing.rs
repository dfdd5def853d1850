//! Pairing from the command line (spec/PROTOCOL.md §12.4), both sides.
//!
//! Host (`vitalwire host --allow-pairing`): each pairing request is printed on stderr with the
//! device id, the device key's fingerprint and the 6-digit code; the operator compares the code
//! with the one the device shows and types `yes CODE` (or `no CODE`) on the host's stdin. On
//! `yes` the key goes into the trust store (persisted) and the pairing session ends with CLOSE
//! `NORMAL`, which tells the device it was admitted; on `no`, or when the request expires, it
//! ends with CLOSE `UNAUTHORIZED` and nothing is stored.
//!
//! Device (`vitalwire device --pair`): see [`device_answer`]; the flow is in `device.rs`.

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vitalwire::{PairingCode, TrustStore};
use vitalwire_tokio::{PairingHook, PairingRequest};

/// How long a pairing request waits for the host operator.
pub const HOST_PAIRING_TIMEOUT: Duration = Duration::from_secs(120);

/// Lines of this process's stdin, read on a plain thread (it must not hold up the runtime's
/// shutdown); the channel closes at end of input.
pub fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// What a line typed at the host means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostAnswer {
    /// Admit the request with this code (`None`: the only pending one).
    Yes(Option<u32>),
    /// Refuse it.
    No(Option<u32>),
}

fn parse_code(s: &str) -> Option<u32> {
    (s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

/// `yes CODE`, `no CODE`, a bare `CODE` (yes), or `yes`/`no` alone (the only pending request;
/// a bare `yes` is refused by `choose`: admitting takes the code).
fn parse_host_line(line: &str) -> Option<HostAnswer> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let yes = |w: &str| matches!(w.to_ascii_lowercase().as_str(), "yes" | "y" | "pair" | "confirm");
    let no = |w: &str| matches!(w.to_ascii_lowercase().as_str(), "no" | "n" | "refuse" | "reject");
    match words.as_slice() {
        [w] if yes(w) => Some(HostAnswer::Yes(None)),
        [w] if no(w) => Some(HostAnswer::No(None)),
        [c] => parse_code(c).map(|c| HostAnswer::Yes(Some(c))),
        [w, c] if yes(w) => parse_code(c).map(|c| HostAnswer::Yes(Some(c))),
        [w, c] if no(w) => parse_code(c).map(|c| HostAnswer::No(Some(c))),
        _ => None,
    }
}

/// The host's side: a hook for [`vitalwire_tokio::HostConfig::pairing`] and the task that
/// prompts the operator and records confirmed devices in `store`.
pub fn host_prompt(store: Arc<TrustStore>) -> (PairingHook, impl std::future::Future<Output = ()>) {
    let (tx, requests) = mpsc::unbounded_channel::<PairingRequest>();
    let hook: PairingHook = Arc::new(move |r| {
        // The receiver lives as long as the host; if it is gone the request drops (refused).
        let _ = tx.send(r);
    });
    (hook, run_host_prompt(store, requests, stdin_lines()))
}

async fn run_host_prompt(
    store: Arc<TrustStore>,
    mut requests: mpsc::UnboundedReceiver<PairingRequest>,
    mut lines: mpsc::UnboundedReceiver<String>,
) {
    let mut pending: Vec<(PairingRequest, Instant)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut stdin_open = true;
    loop {
        tokio::select! {
            r = requests.recv() => {
                let Some(r) = r else { return };
                eprintln!(
                    "vitalwire host: PAIRING REQUEST from device {:?} key {}: code {}",
                    r.device_id, r.peer, r.code
                );
                if stdin_open {
                    eprintln!(
                        "vitalwire host: if the device shows {0}, type `yes {0}` and Enter to admit it \
                         (`no {0}` refuses; the request expires in {1} s)",
                        r.code,
                        HOST_PAIRING_TIMEOUT.as_secs()
                    );
                } else {
                    eprintln!("vitalwire host: no operator input (stdin closed): the request will expire");
                }
                pending.push((r, Instant::now()));
            }
            line = lines.recv(), if stdin_open => match line {
                None => stdin_open = false,
                Some(line) if line.trim().is_empty() => {}
                Some(line) => answer(&store, &mut pending, &line),
            },
            _ = tick.tick() => {
                pending.retain(|(r, since)| {
                    if !r.is_open() {
                        eprintln!("vitalwire host: pairing request from {:?} withdrawn (the device left)", r.device_id);
                        return false;
                    }
                    if since.elapsed() >= HOST_PAIRING_TIMEOUT {
                        eprintln!("vitalwire host: pairing request from {:?} (code {}) expired: not paired", r.device_id, r.code);
                        return false;
                    }
                    true
                });
            }
        }
    }
}

/// Which pending request (by its code) an answer is about, and whether it admits it; or why
/// nothing is done. Admitting always takes the code: it is what ties the operator's comparison
/// to the key being admitted (a bare `yes` could admit a request that replaced the one the
/// operator compared). A bare `no` refuses the only pending request.
fn choose(answer: HostAnswer, codes: &[u32]) -> Result<(bool, usize), String> {
    let (admit, code) = match answer {
        HostAnswer::Yes(c) => (true, c),
        HostAnswer::No(c) => (false, c),
    };
    match code {
        None if admit => {
            Err("to admit, type `yes CODE` with the code the device shows (nothing admitted)".into())
        }
        None if codes.len() == 1 => Ok((false, 0)),
        None => Err(format!("{} pairing requests are waiting: give the code", codes.len())),
        Some(c) => match codes.iter().position(|&p| p == c) {
            Some(index) => Ok((admit, index)),
            // The operator read a different code off the device. Nothing is admitted; the
            // requests stay until refused or expired.
            None => Err(format!(
                "no pairing request has code {c:06}: nothing admitted (if the device shows a code \
                 the host does not, refuse the request: someone may be in the middle)"
            )),
        },
    }
}

fn answer(store: &TrustStore, pending: &mut Vec<(PairingRequest, Instant)>, line: &str) {
    let Some(a) = parse_host_line(line) else {
        eprintln!("vitalwire host: type `yes CODE` to admit a pairing request or `no CODE` to refuse it");
        return;
    };
    let codes: Vec<u32> = pending.iter().map(|(r, _)| r.code.value()).collect();
    let (admit, index) = match choose(a, &codes) {
        Ok(choice) => choice,
        Err(why) => {
            eprintln!("vitalwire host: {why}");
            return;
        }
    };
    let (request, _) = pending.remove(index);
    if !admit {
        eprintln!("vitalwire host: pairing with {:?} refused: nothing stored", request.device_id);
        request.decide(false);
        return;
    }
    match store.add(request.key, &request.device_id, "paired") {
        Ok(()) => {
            eprintln!(
                "vitalwire host: paired: device {:?} key {} added to the trust store",
                request.device_id, request.peer
            );
            request.decide(true);
        }
        Err(e) => {
            eprintln!("vitalwire host: cannot record the paired device ({e}): not paired");
            request.decide(false);
        }
    }
}

/// What the device operator typed: `yes` (the codes match), `no`, or the code the host
/// shows (matching only if it equals `code`). Anything else, or end of input, is `false`.
pub fn device_answer(line: Option<&str>, code: PairingCode) -> bool {
    answer_matches(line, code.value())
}

fn answer_matches(line: Option<&str>, code: u32) -> bool {
    let Some(line) = line else { return false };
    let w = line.trim().to_ascii_lowercase();
    match w.as_str() {
        "yes" | "y" => true,
        other => parse_code(other) == Some(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lines() {
        assert_eq!(parse_host_line("yes 012345"), Some(HostAnswer::Yes(Some(12345))));
        assert_eq!(parse_host_line(" 654321 "), Some(HostAnswer::Yes(Some(654321))));
        assert_eq!(parse_host_line("NO 654321"), Some(HostAnswer::No(Some(654321))));
        assert_eq!(parse_host_line("yes"), Some(HostAnswer::Yes(None)));
        assert_eq!(parse_host_line("no"), Some(HostAnswer::No(None)));
        assert_eq!(parse_host_line("yes 12345"), None);
        assert_eq!(parse_host_line("1234567"), None);
        assert_eq!(parse_host_line("maybe 123456"), None);
        assert_eq!(parse_host_line("yes +12345"), None);
    }

    #[test]
    fn admitting_takes_the_code() {
        // A bare yes never admits, not even the only request.
        assert!(choose(HostAnswer::Yes(None), &[123_456]).is_err());
        assert_eq!(choose(HostAnswer::Yes(Some(123_456)), &[111_111, 123_456]), Ok((true, 1)));
        assert!(choose(HostAnswer::Yes(Some(222_222)), &[123_456]).is_err(), "a code nobody has");
        // Refusing is safe without the code when one request waits.
        assert_eq!(choose(HostAnswer::No(None), &[123_456]), Ok((false, 0)));
        assert!(choose(HostAnswer::No(None), &[1, 2]).is_err());
        assert_eq!(choose(HostAnswer::No(Some(2)), &[1, 2]), Ok((false, 1)));
    }

    #[test]
    fn device_lines() {
        assert!(answer_matches(Some("yes\n"), 42));
        assert!(answer_matches(Some(" Y "), 42));
        assert!(answer_matches(Some("000042"), 42));
        assert!(!answer_matches(Some("000043"), 42));
        assert!(!answer_matches(Some("no"), 42));
        assert!(!answer_matches(Some(""), 42));
        assert!(!answer_matches(None, 42));
    }
}
