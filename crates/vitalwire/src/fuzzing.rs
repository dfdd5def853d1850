//! Entry points for the cargo-fuzz targets in `fuzz/` (not part of the public API). Each takes
//! arbitrary bytes, must never panic, and asserts the protocol's invariants: a panic here is a
//! finding. The property tests in `tests/` check the same invariants with shrinking.

use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use bytes::BytesMut;

use crate::datagram::{DatagramClient, DatagramConfig, DatagramHost, HostLimits, Packet};
use crate::error::Error;
use crate::events::Timestamp;
use crate::fragment::{FragmentHeader, Reassembled, Reassembler, ReassemblyLimits};
use crate::frame::FrameHeader;
use crate::handshake::{Handshake, InitiatorConfig, ResponderConfig, StaticPskDirectory};
use crate::hello::HandshakeFrame;
use crate::keys::{EntropyError, EntropySource, Keypair, PrivateKey, Psk};
use crate::payload::{self, DeviceIdentity, SessionParams};
use crate::profile::{CipherSuite, Profile};
use crate::replay::{ReplayVerdict, ReplayWindow};
use crate::session::{Incoming, Session};
use crate::stream::StreamDecoder;
use crate::trust::{TrustList, TrustPolicy};

/// A deterministic entropy source (fuzzing must be reproducible).
struct Counter(u64);

impl EntropySource for Counter {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        for b in dest {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b = (self.0 >> 33) as u8;
        }
        Ok(())
    }
}

/// The fixed keypairs 1 (host) and 2 (device), derived once per process.
fn kp(b: u8) -> Keypair {
    static KEYS: std::sync::OnceLock<[Keypair; 2]> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        [
            Keypair::from_private(PrivateKey::from_bytes([1; 32])),
            Keypair::from_private(PrivateKey::from_bytes([2; 32])),
        ]
    });
    keys[(b as usize).clamp(1, 2) - 1].clone()
}

const PSK_ID: &[u8] = b"fuzz-psk";

fn trust() -> Arc<dyn TrustPolicy> {
    let mut list = TrustList::new();
    list.add(*kp(2).public(), "", "", 0);
    Arc::new(crate::trust_store::TrustStore::in_memory(list))
}

fn responder_config() -> ResponderConfig {
    let mut psks = StaticPskDirectory::new();
    psks.add(PSK_ID, Psk::from_bytes([3; 32]));
    ResponderConfig::new(kp(1), trust())
        .psk_directory(Arc::new(psks))
        .params(SessionParams { max_frame_len: 512, rekey_interval: 8, max_message_len: 4096 })
        .entropy(alloc::boxed::Box::new(Counter(1)))
        .allow_pairing(true)
}

fn initiator_config(profile: Profile, suite: CipherSuite) -> InitiatorConfig {
    let mut c = InitiatorConfig::new(profile, kp(2), DeviceIdentity::new("FUZZ-1"))
        .suite(suite)
        .entropy(alloc::boxed::Box::new(Counter(2)));
    if profile.needs_remote_key() {
        c = c.host_key(*kp(1).public());
    }
    if profile.needs_psk() {
        c = c.psk(PSK_ID, Psk::from_bytes([3; 32]));
    }
    c
}

/// An established stream session pair.
fn session_pair(profile: Profile, suite: CipherSuite) -> (Session, Session) {
    let mut i = Handshake::initiator(initiator_config(profile, suite)).expect("valid config");
    let mut r = Handshake::responder(responder_config()).expect("valid config");
    let mut wire = BytesMut::new();
    let mut dec = StreamDecoder::new(1024);
    while !(i.is_finished() && r.is_finished()) {
        let (a, b) = if i.wants_write() { (&mut i, &mut r) } else { (&mut r, &mut i) };
        a.write_message(&mut wire).expect("honest handshake");
        let frame = dec.decode(&mut wire).expect("valid").expect("complete");
        b.read_message(&frame).expect("honest handshake");
    }
    (i.into_session().expect("finished"), r.into_session().expect("finished"))
}

/// Every decoder of wire structures; what decodes must re-encode to the same bytes.
pub fn frame_decode(data: &[u8]) {
    if data.len() >= 3 {
        if let Ok(h) = FrameHeader::decode([data[0], data[1], data[2]]) {
            assert_eq!(h.encode(), [data[0], data[1], data[2]]);
        }
    }
    if let Ok(HandshakeFrame::Hello(h)) = HandshakeFrame::decode(data) {
        assert_eq!(h.header.len() + h.noise.len(), data.len());
        assert!(h.hint.len() <= crate::hello::MAX_HINT_LEN);
    }
    let _ = Packet::decode(data);
    if let Some((h, piece)) = FragmentHeader::decode(data) {
        assert!(h.index < h.count);
        assert_eq!(piece.len() + 4, data.len());
    }
}

/// Handshake payload decoders; a decoded payload re-encodes to something that decodes equal.
pub fn handshake_payloads(data: &[u8]) {
    if let Ok((id, nonce)) = DeviceIdentity::decode_with_pairing_nonce(data) {
        let again = id.encode_with_pairing_nonce(nonce.as_ref()).expect("decoded identities are in range");
        assert_eq!(DeviceIdentity::decode_with_pairing_nonce(&again), Ok((id, nonce)));
    }
    if let Ok(p) = SessionParams::decode(data) {
        assert_eq!(SessionParams::decode(&p.encode().expect("decoded params are valid")), Ok(p));
    }
    if let Ok(c) = payload::decode_pairing_commitment(data) {
        assert_eq!(payload::decode_pairing_commitment(&payload::encode_pairing_commitment(&c)), Ok(c));
    }
}

/// The stream decoder fed the input in chunks whose sizes come from the input itself.
pub fn stream_decoder(data: &[u8]) {
    let Some((&max, rest)) = data.split_first() else { return };
    let max = 1 + max as usize * 4;
    let mut dec = StreamDecoder::new(max);
    let mut buf = BytesMut::new();
    let mut total = 0;
    let mut i = 0;
    while i < rest.len() {
        let chunk = 1 + rest[i] as usize % 17;
        let end = (i + chunk).min(rest.len());
        buf.extend_from_slice(&rest[i..end]);
        i = end;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(!frame.is_empty() && frame.len() <= max);
                    total += frame.len() + 2;
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // Nothing is reserved beyond one frame's worth of input.
        assert!(buf.len() <= max + 2 + 17);
    }
    assert!(total <= rest.len());
}

/// A responder fed arbitrary handshake frames: typed errors, never a panic, never a session
/// from garbage.
pub fn responder(data: &[u8]) {
    let mut r = Handshake::responder(responder_config()).expect("valid config");
    let mut out = BytesMut::new();
    for frame in data.split(|b| *b == 0xFF).take(4) {
        let before = r.error();
        let result = r.read_message(frame);
        if let Some(first) = before {
            assert_eq!(result, Err(first), "errors stick");
        }
        while r.wants_write() {
            if r.write_message(&mut out).is_err() {
                break;
            }
        }
    }
    assert!(!r.is_finished(), "a handshake cannot complete from bytes without the device key");
}

/// An established stream session fed a mix of genuine, tampered, replayed and arbitrary
/// frames chosen by the input. Invariants: genuine data arrives in order, once, unaltered;
/// after any rejected frame either the next genuine frame still opens (a non-fatal error) or
/// the session has failed closed and every later call returns the same error. Returns the
/// number of messages delivered.
pub fn session(data: &[u8]) -> usize {
    let profile = Profile::ALL[data.first().copied().unwrap_or(0) as usize % 4];
    let (mut dev, mut host) = session_pair(profile, CipherSuite::ChaChaPolyBlake2s);
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut delivered = 0usize;
    let mut last: Option<Vec<u8>> = None;
    let mut ops = data.iter().skip(1);
    while let Some(&op) = ops.next() {
        let arg = ops.next().copied().unwrap_or(0);
        let mut wire = BytesMut::new();
        let genuine = match op % 6 {
            0 => {
                let payload: Vec<u8> = core::iter::repeat_n(arg, arg as usize % 40).collect();
                if dev.seal_message(arg % 4, &payload, &mut wire).is_err() {
                    return delivered;
                }
                sent.push(payload);
                true
            }
            1 => {
                let len = (arg as usize % 60).min(ops.len());
                let junk: Vec<u8> = ops.by_ref().take(len).copied().collect();
                wire.extend_from_slice(&(junk.len() as u16).to_be_bytes());
                wire.extend_from_slice(&junk);
                false
            }
            2 => {
                let payload = [arg; 8];
                if dev.seal_data(1, &payload, &mut wire).is_err() {
                    return delivered;
                }
                let i = 2 + arg as usize % (wire.len() - 2);
                wire[i] ^= 1 << (arg % 8);
                false
            }
            3 => match &last {
                Some(l) => {
                    wire.extend_from_slice(l);
                    false
                }
                None => continue,
            },
            4 => {
                if dev.rekey(&mut wire).is_err() {
                    return delivered;
                }
                true
            }
            _ => {
                if dev.send_ping([arg; 8], &mut wire).is_err() {
                    return delivered;
                }
                true
            }
        };
        if genuine {
            last = Some(wire.to_vec());
        }
        let failed_before = host.error();
        let mut dec = StreamDecoder::new(host.max_frame_len());
        loop {
            let frame = match dec.decode(&mut wire) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break,
            };
            match host.open(frame) {
                Ok(Incoming::Data { payload, .. }) => {
                    assert!(genuine, "only genuine frames deliver data");
                    assert_eq!(Some(&payload.to_vec()), sent.get(delivered), "in order, unaltered, once");
                    delivered += 1;
                }
                Ok(_) => {}
                Err(e) => {
                    if let Some(first) = failed_before {
                        assert_eq!(e, first, "fatal errors stick");
                    }
                    if e.is_fatal() {
                        assert_eq!(host.error(), Some(e), "fatal errors fail the session");
                        // Failed closed: nothing is accepted any more.
                        let mut probe = BytesMut::new();
                        if dev.seal_data(1, b"probe", &mut probe).is_ok() {
                            let f = StreamDecoder::new(65535).decode(&mut probe).ok().flatten();
                            if let Some(f) = f {
                                assert_eq!(host.open(f), Err(e));
                            }
                        }
                        return delivered;
                    }
                }
            }
        }
        let mut back = BytesMut::new();
        host.poll_transmit(&mut back);
    }
    assert!(delivered <= sent.len());
    delivered
}

/// The replay window against a model.
pub fn replay_window(data: &[u8]) {
    let size = 64 * (1 + data.first().copied().unwrap_or(0) as u32 % 4);
    let mut w = ReplayWindow::new(size);
    let mut seen = BTreeSet::new();
    let mut max: Option<u64> = None;
    for chunk in data.get(1..).unwrap_or(&[]).chunks(3) {
        let mut c = [0u8; 8];
        c[8 - chunk.len()..].copy_from_slice(chunk);
        let counter = u64::from_be_bytes(c) % 4096;
        let verdict = w.check(counter);
        match verdict {
            Ok(()) => {
                assert!(!seen.contains(&counter), "a counter accepted twice");
                assert!(max.is_none_or(|m| counter + size as u64 > m));
                w.accept(counter);
                seen.insert(counter);
                max = Some(max.map_or(counter, |m| m.max(counter)));
            }
            Err(ReplayVerdict::Duplicate) => assert!(seen.contains(&counter)),
            Err(ReplayVerdict::TooOld) => assert!(max.is_some_and(|m| counter + size as u64 <= m)),
        }
    }
}

/// Reassembly fed arbitrary fragments: memory stays within its bound, and completed messages
/// are never larger than allowed.
pub fn reassembly(data: &[u8]) {
    let limits = ReassemblyLimits { max_message_len: 300, max_in_flight: 3, timeout_ms: 50 };
    let mut r = Reassembler::new(limits);
    let mut now = 0;
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize % 24).min(tail.len());
        let (fragment, tail) = tail.split_at(len);
        now += 1;
        if let Reassembled::Complete(m) = r.push(fragment, Timestamp(now)) {
            assert!(m.len() <= limits.max_message_len);
        }
        assert!(r.buffered_bytes() <= limits.memory_bound());
        assert!(r.in_flight() <= limits.max_in_flight);
        rest = tail;
    }
}

/// Key files and the trust store text: parse without panic; what parses re-renders equal.
pub fn key_and_trust_files(data: &[u8]) {
    let Ok(text) = core::str::from_utf8(data) else { return };
    let path = std::path::Path::new("fuzz");
    if let Ok(k) = crate::keyfile::private_key_from_text(path, text) {
        let again = crate::keyfile::private_key_to_text(&k, "");
        assert_eq!(
            crate::keyfile::private_key_from_text(path, &again).map(|k2| *k2.expose_secret()).ok(),
            Some(*k.expose_secret())
        );
    }
    if let Ok(k) = crate::keyfile::public_key_from_text(path, text) {
        let again = crate::keyfile::public_key_to_text(&k, "");
        assert_eq!(crate::keyfile::public_key_from_text(path, &again).ok(), Some(k));
    }
    if let Ok(list) = TrustList::from_text(text) {
        assert_eq!(TrustList::from_text(&list.to_text()), Ok(list));
    }
}

/// A datagram host and client fed arbitrary packets between genuine traffic: no panic,
/// bounded state, and genuine data still flows.
pub fn datagram_peers(data: &[u8]) {
    let config = DatagramConfig::default();
    let mut host: DatagramHost<u8> = DatagramHost::new(
        alloc::boxed::Box::new(responder_config),
        config,
        HostLimits { max_half_open: 8, max_sessions: 8 },
        alloc::boxed::Box::new(Counter(9)),
    );
    let mut dev = match DatagramClient::new(
        initiator_config(Profile::Ik, CipherSuite::ChaChaPolyBlake2s),
        77,
        config,
        Timestamp(0),
    ) {
        Ok(d) => d,
        Err(_) => return,
    };
    let mut delivered: Vec<String> = Vec::new();
    let mut sent = 0u32;
    let mut now = 0u64;
    for packet in data.split(|b| *b == 0xFE).take(64) {
        now += 10;
        // Hostile input to both ends.
        let _ = host.handle_packet(1, BytesMut::from(packet), Timestamp(now));
        let _ = dev.handle_packet(BytesMut::from(packet), Timestamp(now));
        // Genuine traffic.
        if dev.is_established() && dev.send(1, alloc::format!("m{sent}").as_bytes(), Timestamp(now)).is_ok() {
            sent += 1;
        }
        while let Some(p) = dev.poll_transmit(Timestamp(now)) {
            let _ = host.handle_packet(2, BytesMut::from(&p[..]), Timestamp(now));
        }
        while let Some((_, p)) = host.poll_transmit() {
            let _ = dev.handle_packet(BytesMut::from(&p[..]), Timestamp(now));
        }
        while let Some(inc) = host.poll_incoming() {
            if let Incoming::Data { payload, .. } = inc.incoming {
                delivered.push(String::from_utf8(payload.to_vec()).expect("only genuine data is delivered"));
            }
        }
        while host.poll_event().is_some() {}
        assert!(host.half_open_count() <= 8 && host.session_count() <= 8);
    }
    let unique: BTreeSet<&String> = delivered.iter().collect();
    assert_eq!(unique.len(), delivered.len(), "no datagram delivered twice");
    assert!(delivered.iter().all(|m| m.starts_with('m')));
    let _ = Error::Closed;
}

/// Two peers over a hostile datagram link: the input decides, per packet, whether it is
/// dropped, duplicated, delayed or tampered with. Invariants: every delivered message is one
/// the device sent, none twice. Returns the number delivered.
pub fn two_peers(data: &[u8]) -> usize {
    let config = DatagramConfig::default();
    let mut host: DatagramHost<u8> = DatagramHost::new(
        alloc::boxed::Box::new(responder_config),
        config,
        HostLimits::default(),
        alloc::boxed::Box::new(Counter(5)),
    );
    let profile = if data.first().is_some_and(|b| b & 1 == 1) { Profile::Xx } else { Profile::Ik };
    let Ok(mut dev) =
        DatagramClient::new(initiator_config(profile, CipherSuite::AesGcmSha256), 5, config, Timestamp(0))
    else {
        return 0;
    };
    let mut in_flight: Vec<(bool, Vec<u8>)> = Vec::new();
    let mut sent = 0u32;
    let mut seen = BTreeSet::new();
    let mut now = 0;
    for &op in data.iter().skip(1) {
        now += 7;
        if dev.is_established() && op & 0x80 != 0 {
            let _ = dev.send(op & 3, alloc::format!("msg {sent}").as_bytes(), Timestamp(now));
            sent += 1;
        }
        while let Some(p) = dev.poll_transmit(Timestamp(now)) {
            in_flight.push((true, p));
        }
        while let Some((_, p)) = host.poll_transmit() {
            in_flight.push((false, p));
        }
        if in_flight.is_empty() {
            continue;
        }
        let i = op as usize % in_flight.len();
        let (to_host, mut p) = match op % 5 {
            0 => continue,             // delayed: stays in flight
            1 => in_flight.remove(i),  // delivered (possibly out of order)
            2 => in_flight[i].clone(), // duplicated
            3 => {
                let (d, mut p) = in_flight.remove(i);
                let j = op as usize % p.len().max(1);
                if let Some(b) = p.get_mut(j) {
                    *b ^= 0x40;
                }
                (d, p)
            }
            _ => {
                in_flight.remove(i);
                continue; // lost
            }
        };
        if to_host {
            let _ = host.handle_packet(1, BytesMut::from(&p[..]), Timestamp(now));
        } else {
            let _ = dev.handle_packet(BytesMut::from(&p[..]), Timestamp(now));
        }
        p.clear();
        while let Some(inc) = host.poll_incoming() {
            if let Incoming::Data { payload, .. } = inc.incoming {
                let text = String::from_utf8(payload.to_vec()).expect("authentic data only");
                let n: u32 =
                    text.strip_prefix("msg ").and_then(|n| n.parse().ok()).expect("authentic data only");
                assert!(n < sent, "delivered something never sent");
                assert!(seen.insert(n), "delivered twice");
            }
        }
        if host.poll_timeout().is_some_and(|t| t.0 <= now) {
            host.handle_timeout(Timestamp(now));
        }
        if dev.poll_timeout().is_some_and(|t| t.0 <= now) {
            let _ = dev.handle_timeout(Timestamp(now));
        }
        in_flight.truncate(64);
    }
    seen.len()
}
