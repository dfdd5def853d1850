//! System test: a real `vitalwire host` process, with its default limits, flooded the way an
//! attacker floods it (2,000 silent half-open connections from 2,000 addresses; slowloris
//! writers from 500 addresses; one address hammering it with bad frames), while honest
//! devices connect. The promise checked: during the flood, each new honest device, one after
//! another, completes its handshake within one second; and the event log stays a few lines
//! per attacking source, each naming its address, with every refusal counted.
//!
//! Loopback gives the test many source addresses: client sockets are bound to 127.x.y.z
//! before connecting. The attackers run on a runtime (a thread) of their own.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_util::codec::Framed;
use vitalwire::hello::MAX_HANDSHAKE_FRAME_LEN;
use vitalwire::{
    keyfile, CloseCode, DeviceIdentity, Handshake, InitiatorConfig, Keypair, Profile, PublicKey,
};
use vitalwire_tokio::FrameCodec;

/// The floods take turns: each measures its own promise, not the other's load.
static FLOODS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// 127.`group`.x.y, a loopback address of its own for machine `n`.
fn loopback(group: u8, n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, group, (n / 250) as u8, (n % 250) as u8 + 1))
}

async fn connect_from(from: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One IK handshake from `from` with `keys`; ends the session with a CLOSE.
async fn handshake(
    addr: SocketAddr,
    from: IpAddr,
    keys: Keypair,
    id: &str,
    host: PublicKey,
) -> Result<(), String> {
    let stream = connect_from(from, addr).await.map_err(|e| format!("connect: {e}"))?;
    let mut link = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_LEN));
    let config = InitiatorConfig::new(Profile::Ik, keys, DeviceIdentity::new(id)).host_key(host);
    let mut hs = Handshake::initiator(config).map_err(|e| e.to_string())?;
    let mut out = BytesMut::new();
    loop {
        while hs.wants_write() {
            hs.write_message(&mut out).map_err(|e| e.to_string())?;
            link.send(out.split().freeze()).await.map_err(|e| format!("send: {e}"))?;
        }
        if hs.is_finished() {
            break;
        }
        match link.next().await {
            Some(Ok(frame)) => hs.read_message(&frame).map_err(|e| e.to_string())?,
            Some(Err(e)) => return Err(format!("link: {e}")),
            None => return Err("closed by the host".into()),
        }
    }
    let mut session = hs.into_session().map_err(|e| e.to_string())?;
    session.close(CloseCode::NORMAL, &mut out).map_err(|e| e.to_string())?;
    let _ = link.send(out.split().freeze()).await;
    Ok(())
}

/// Time from the first attempt to a finished handshake (retrying 20 ms apart), and attempts.
async fn connect_honest(
    addr: SocketAddr,
    from: IpAddr,
    keys: &Keypair,
    id: &str,
    host: PublicKey,
) -> (Duration, u32) {
    let limit = Duration::from_secs(10);
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = limit.saturating_sub(start.elapsed());
        match timeout(left, handshake(addr, from, keys.clone(), id, host)).await {
            Ok(Ok(())) => return (start.elapsed(), attempts),
            Ok(Err(_)) if start.elapsed() < limit => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("{id} not admitted in {limit:?} after {attempts} attempts: {other:?}"),
        }
    }
}

/// `sources * per_source` attacking connections on a thread of their own, each reopened as
/// soon as the host closes it (50 ms later): silent, or slowloris (a length prefix for 1023
/// bytes, then one byte every 200 ms). Returns the connections opened once `stop` is set.
fn start_flood(
    addr: SocketAddr,
    group: u8,
    sources: u32,
    per_source: u32,
    slowloris: bool,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for i in 0..sources * per_source {
                let stop = stop.clone();
                let from = loopback(group, i % sources);
                tasks.push(tokio::spawn(async move {
                    let mut opened = 0u64;
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut s) = connect_from(from, addr).await else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        opened += 1;
                        if slowloris {
                            let _ = s.write_all(b"\x03\xff").await;
                        }
                        while !stop.load(Ordering::Relaxed) {
                            if slowloris && s.write_all(b"x").await.is_err() {
                                break;
                            }
                            match timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                                Ok(Ok(0)) | Ok(Err(_)) => break,
                                _ => {}
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    opened
                }));
            }
            let mut opened = 0;
            for t in tasks {
                opened += t.await.unwrap();
            }
            opened
        })
    })
}

/// The flood `sources * per_source` if this process may open `fds_each` descriptors per
/// attacking connection (raising its soft limit if it can), else a flood sized down to what it
/// may (said on stdout); never below 600 connections, enough to fill the host's 256 slots.
fn size_to_fd_limit(sources: u32, per_source: u32, fds_each: u64) -> (u32, u32) {
    let want = u64::from(sources * per_source);
    let fds = raise_fd_limit(want * fds_each + 1_000);
    let fit = fds.saturating_sub(1_000) / fds_each;
    if fit >= want {
        return (sources, per_source);
    }
    assert!(fit >= 600, "fd limit {fds}: too low for any meaningful flood");
    let per_source = per_source.min((fit / u64::from(sources)).max(1) as u32);
    let sources = sources.min((fit / u64::from(per_source)) as u32);
    println!("fd limit {fds}: flood sized down to {sources} sources x {per_source} connections");
    (sources, per_source)
}

/// The soft fd limit, raised towards `want` with prlimit(1) if needed.
fn raise_fd_limit(want: u64) -> u64 {
    let read = || -> Option<(u64, u64)> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        let mut f = line.split_whitespace().skip(3);
        Some((f.next()?.parse().ok()?, f.next()?.parse().unwrap_or(u64::MAX)))
    };
    let Some((soft, hard)) = read() else { return 1024 };
    if soft < want {
        let _ = std::process::Command::new("prlimit")
            .args([format!("--pid={}", std::process::id()), format!("--nofile={}:{hard}", want.min(hard))])
            .status();
    }
    read().map_or(soft, |(s, _)| s)
}

struct Setup {
    sb: Sandbox,
    host: HostProc,
    host_public: PublicKey,
    devices: Vec<(String, Keypair)>,
}

fn setup(name: &str, devices: u32) -> Setup {
    let sb = Sandbox::new(name);
    sb.keygen("host");
    let mut keys = Vec::new();
    for n in 0..devices {
        let key = sb.keygen(&format!("pm{n}"));
        sb.trust_add(&format!("pm{n}"), &format!("PM-{n}"));
        keys.push((format!("PM-{n}"), keyfile::read_private_key(&key).unwrap()));
    }
    let host_public = keyfile::read_public_key(&sb.path("host.key.pub")).unwrap();
    let host = HostProc::start(&sb, HostArgs::default());
    Setup { sb, host, host_public, devices: keys }
}

/// Floods a real host and connects the honest devices one after another; returns latencies.
fn honest_latencies_during_flood(
    name: &str,
    slowloris: bool,
    sources: u32,
    per_source: u32,
) -> Vec<Duration> {
    let _turn = FLOODS.lock().unwrap_or_else(|p| p.into_inner());
    let (sources, per_source) = size_to_fd_limit(sources, per_source, 1);
    let conns = u64::from(sources * per_source);
    let mut s = setup(name, 6);
    let addr = s.host.tcp.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flood_started = Instant::now();
    let flood =
        start_flood(addr, if slowloris { 60 } else { 70 }, sources, per_source, slowloris, stop.clone());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Let the flood build up (the host's 256 half-open slots fill within a fraction of this).
    std::thread::sleep(Duration::from_secs(2));
    let mut latencies = Vec::new();
    for (n, (id, keys)) in s.devices.iter().take(5).enumerate() {
        let from = loopback(2, n as u32);
        let (latency, attempts) = rt.block_on(connect_honest(addr, from, keys, id, s.host_public));
        println!(
            "{} flood of {conns} connections from {sources} addresses: {id} in {latency:?} ({attempts} attempt(s))",
            if slowloris { "slowloris" } else { "half-open" }
        );
        latencies.push(latency);
        std::thread::sleep(Duration::from_millis(300));
    }
    // A real device process, started during the flood, gets its telemetry through.
    let last = s.devices.len() - 1;
    let device = start_device(&s.sb, &DeviceArgs::new(&format!("pm{last}"), &s.devices[last].0, addr));
    let id = s.devices[last].0.clone();
    let through = wait_until(Duration::from_secs(20), || {
        s.host.telemetry().iter().any(|t| t["device_id"] == id.as_str())
    });
    stop.store(true, Ordering::Relaxed);
    let opened = flood.join().unwrap();
    println!("attack connections opened: {opened}; device process in after {through:?}");
    assert!(through.is_some(), "device: {}\nhost: {}", device.stderr(), s.host.proc.stderr());
    assert!(opened >= conns, "the flood ran ({opened})");
    // The host is still serving and its log names the attackers' addresses.
    let events = s.host.events();
    assert!(
        events.iter().any(|e| e["source"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.60.") || a.starts_with("127.70."))),
        "events name the attacking addresses"
    );
    s.host.proc.signal("INT");
    assert!(s.host.proc.wait_exit(Duration::from_secs(20)).is_some(), "the host shuts down");
    let bytes = std::fs::metadata(&s.host.events).map(|m| m.len()).unwrap_or(0);
    let events = s.host.events();
    let summaries = events.iter().filter(|e| e["event"] == "events_suppressed").count();
    let seconds = flood_started.elapsed().as_secs();
    println!(
        "event log after {seconds} s of flood: {} lines ({summaries} summaries), {bytes} bytes",
        events.len()
    );
    // At most 1,000 lines per 10 s interval, plus one overflow summary per kind, plus the
    // honest sessions' own lines.
    let intervals = seconds / 10 + 2;
    assert!(events.len() as u64 <= intervals * 1_050, "{} lines in {intervals} intervals", events.len());
    latencies
}

#[test]
fn honest_devices_get_in_within_a_second_while_2000_half_open_connections_flood_a_real_host() {
    let latencies = honest_latencies_during_flood("flood-half-open", false, 2_000, 1);
    assert!(latencies.iter().all(|l| *l < Duration::from_secs(1)), "{latencies:?}");
}

#[test]
fn honest_devices_get_in_within_a_second_while_500_slowloris_sources_flood_a_real_host() {
    let latencies = honest_latencies_during_flood("flood-slowloris", true, 500, 4);
    assert!(latencies.iter().all(|l| *l < Duration::from_secs(1)), "{latencies:?}");
}

#[test]
fn one_flooding_source_writes_a_few_event_lines_and_every_refusal_is_counted() {
    const CONNECTIONS: u64 = 1_000;
    let mut s = setup("flood-one-source", 1);
    let addr = s.host.tcp.unwrap();
    let from = loopback(80, 7);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let started = Instant::now();
    rt.block_on(async {
        let mut held = Vec::new();
        for i in 0..CONNECTIONS {
            // Bad lengths: 1025, 0, 0xffff; each connection is refused once (its length, or
            // the rate limit).
            let mut c = connect_from(from, addr).await.unwrap();
            let bytes: &[u8] = [&b"\x04\x01"[..], b"\x00\x00", b"\xff\xff"][i as usize % 3];
            let _ = c.write_all(bytes).await;
            held.push(c);
        }
        // Every connection judged: the host has closed them all.
        for mut c in held {
            let mut sink = Vec::new();
            let closed = timeout(Duration::from_secs(20), c.read_to_end(&mut sink)).await;
            assert!(closed.is_ok(), "the host closed every connection");
        }
    });
    s.host.proc.signal("INT"); // shutdown ends the aggregation interval
    assert!(s.host.proc.wait_exit(Duration::from_secs(20)).is_some(), "the host shuts down");
    let text = std::fs::read_to_string(&s.host.events).unwrap();
    let events = s.host.events();
    let mine: Vec<_> = events.iter().filter(|e| e["source"] == "127.80.0.8").collect();
    let logged = mine.iter().filter(|e| e["event"] != "events_suppressed").count() as u64;
    let counted: u64 =
        mine.iter().filter(|e| e["event"] == "events_suppressed").filter_map(|e| e["count"].as_u64()).sum();
    println!(
        "{CONNECTIONS} refused connections from one address: {} event lines, {} bytes ({logged} events, {counted} counted in summaries)",
        events.len(),
        text.len()
    );
    assert_eq!(logged + counted, CONNECTIONS, "every refusal logged or counted: {mine:#?}");
    // Kinds: rate limit, frame too large, handshake failed (zero length): at most 10 lines each
    // per 10 s interval and one summary each (usually all in one interval; a slow machine may
    // need more of them).
    let intervals = started.elapsed().as_secs() / 10 + 2;
    assert!(
        mine.len() as u64 <= 3 * 11 * intervals,
        "{} lines in {intervals} intervals: {mine:#?}",
        mine.len()
    );
    assert_eq!(mine.len(), events.len(), "every line names the source");
    assert!(mine.iter().any(|e| e["event"] == "limit_exceeded" && e["limit"] == "frame_too_large"));
    assert!(mine.iter().any(|e| e["event"] == "handshake_failed"));
    assert!(mine.iter().any(|e| e["event"] == "limit_exceeded" && e["limit"] == "handshake_rate"));
}
