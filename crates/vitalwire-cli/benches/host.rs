//! Host throughput and memory, measured on a real `vitalwire host` process over loopback TCP
//! (not a timed test): `cargo bench -p vitalwire-cli --bench host`.
//!
//! - throughput: SESSIONS devices each send FRAMES DATA frames of 256 bytes as fast as the host
//!   takes them; reported as frames per second of wall time and per CPU-second of the host
//!   process (user + system, from /proc), i.e. per core.
//! - memory: the host's resident set before and after IDLE idle sessions are established,
//!   divided by IDLE.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use vitalwire::hello::MAX_HANDSHAKE_FRAME_LEN;
use vitalwire::*;
use vitalwire_tokio::FrameCodec;

const SESSIONS: u32 = 200;
const FRAMES: u32 = 5_000;
const IDLE: u32 = 1_000;
const PAYLOAD: usize = 256;

fn device_key(n: u32) -> Keypair {
    let mut b = [0x5Au8; 32];
    b[..4].copy_from_slice(&n.to_be_bytes());
    Keypair::from_private(PrivateKey::from_bytes(b))
}

fn proc_stat(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    (ticks / 100.0, rss)
}

async fn session(addr: &str, n: u32, host: PublicKey) -> (Framed<TcpStream, FrameCodec>, Session) {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut framed = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_LEN));
    let mut hs = Handshake::initiator(
        InitiatorConfig::new(Profile::Ik, device_key(n), DeviceIdentity::new(format!("BENCH-{n}")))
            .host_key(host),
    )
    .unwrap();
    let mut out = BytesMut::new();
    while !hs.is_finished() {
        while hs.wants_write() {
            hs.write_message(&mut out).unwrap();
            framed.send(out.split().freeze()).await.unwrap();
        }
        if !hs.is_finished() {
            let f = framed.next().await.unwrap().unwrap();
            hs.read_message(&f).unwrap();
        }
    }
    let s = hs.into_session().unwrap();
    (framed, s)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("vitalwire-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let host_keys = Keypair::generate().unwrap();
    vitalwire::keyfile::write_private_key(&dir.join("host.key"), host_keys.private(), "bench").unwrap();
    let store = TrustStore::create(dir.join("trust.vw")).unwrap();
    for n in 0..SESSIONS.max(IDLE) {
        store.add(*device_key(n).public(), &format!("BENCH-{n}"), "").unwrap();
    }
    drop(store);
    let mut host = Command::new(env!("CARGO_BIN_EXE_vitalwire"))
        .args(["host", "--key"])
        .arg(dir.join("host.key"))
        .arg("--trust")
        .arg(dir.join("trust.vw"))
        .args([
            "--tcp",
            "127.0.0.1:0",
            "--telemetry",
            "/dev/null",
            "--events",
            "/dev/null",
            "--seconds",
            "600",
        ])
        .args(["--handshake-burst", "100000", "--handshake-rate", "100000", "--max-half-open", "4096"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = host.id();
    let mut err = BufReader::new(host.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    std::thread::spawn(move || for _ in err.lines() {});
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let host_public = *host_keys.public();

    // Memory per idle session.
    std::thread::sleep(Duration::from_millis(300));
    let (_, rss_before) = proc_stat(pid);
    let idle: Vec<_> = rt.block_on(async {
        let mut v = Vec::new();
        for n in 0..IDLE {
            v.push(session(&addr, n, host_public).await);
        }
        v
    });
    std::thread::sleep(Duration::from_millis(500));
    let (_, rss_idle) = proc_stat(pid);
    drop(idle);
    std::thread::sleep(Duration::from_millis(500));

    // Throughput.
    let addr = Arc::new(addr);
    let (cpu0, _) = proc_stat(pid);
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for n in 0..SESSIONS {
            let addr = addr.clone();
            tasks.push(tokio::spawn(async move {
                let (framed, mut s) = session(&addr, n, host_public).await;
                let mut stream = framed.into_inner();
                let payload = vec![0xA5u8; PAYLOAD];
                let mut out = BytesMut::with_capacity(64 * 300);
                for i in 0..FRAMES {
                    s.seal_data(1, &payload, &mut out).unwrap();
                    if i % 64 == 63 {
                        stream.write_all(&out).await.unwrap();
                        out.clear();
                    }
                }
                s.close(CloseCode::NORMAL, &mut out).unwrap();
                stream.write_all(&out).await.unwrap();
                // Wait for the host's CLOSE: every frame before it has been processed.
                let mut framed = Framed::new(stream, FrameCodec::new(65535));
                while let Some(Ok(f)) = framed.next().await {
                    if let Ok(Incoming::Closed(_)) = s.open(f) {
                        break;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let wall = start.elapsed().as_secs_f64();
    let (cpu1, _) = proc_stat(pid);
    let frames = (SESSIONS * FRAMES) as f64;
    let _ = host.kill();
    let _ = host.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!("host throughput, {SESSIONS} sessions x {FRAMES} frames of {PAYLOAD} B over loopback TCP:");
    println!("  {:.0} frames/s wall clock ({:.1} s), host CPU {:.2} s", frames / wall, wall, cpu1 - cpu0);
    println!("  {:.0} frames per host CPU-second (per core)", frames / (cpu1 - cpu0).max(0.01));
    println!(
        "  {:.1} MB/s of payload per host core",
        frames * PAYLOAD as f64 / (cpu1 - cpu0).max(0.01) / 1e6
    );
    println!(
        "host memory: RSS {} KiB before, {} KiB with {IDLE} idle sessions: {:.1} KiB per session",
        rss_before,
        rss_idle,
        (rss_idle.saturating_sub(rss_before)) as f64 / IDLE as f64
    );
}
