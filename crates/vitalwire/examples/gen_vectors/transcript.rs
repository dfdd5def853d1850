//! Deterministic session transcripts for spec/vectors: fixed static and ephemeral keys, a
//! scripted session, every frame recorded as it appears on the wire.

use bytes::BytesMut;
use serde_json::{json, Value};
use vitalwire::*;

fn key(start: u8) -> [u8; 32] {
    core::array::from_fn(|i| start.wrapping_add(i as u8))
}

pub const PSK_ID: &[u8] = b"psk-0001";

/// The 8 bytes of the stream vectors' PING.
const PING_OPAQUE: [u8; 8] = *b"\x00\x00\x00\x00\x00\x00\x00\x2a";

pub fn file_name(profile: Profile, suite: CipherSuite) -> String {
    let suite = match suite {
        CipherSuite::ChaChaPolyBlake2s => "chachapoly",
        CipherSuite::AesGcmSha256 => "aesgcm",
        _ => unreachable!(),
    };
    format!("{}_{}.json", profile.pattern().to_ascii_lowercase(), suite)
}

struct Recorder {
    frames: Vec<Value>,
}

impl Recorder {
    fn take(wire: &mut BytesMut) -> BytesMut {
        StreamDecoder::new(65535).decode(wire).unwrap().unwrap()
    }
}

fn identity_json(id: &DeviceIdentity) -> Value {
    json!({"device_id": id.device_id, "model": id.model, "firmware": id.firmware, "max_frame_len": id.max_frame_len})
}

/// Builds the transcript of one profile/suite pair.
pub fn transcript(profile: Profile, suite: CipherSuite) -> Value {
    let init_static = PrivateKey::from_bytes(key(0x10));
    let resp_static = PrivateKey::from_bytes(key(0x40));
    let init_eph = PrivateKey::from_bytes(key(0x70));
    let resp_eph = PrivateKey::from_bytes(key(0xA0));
    let psk = Psk::from_bytes(key(0xD0));
    let init_kp = Keypair::from_private(init_static.clone());
    let resp_kp = Keypair::from_private(resp_static.clone());
    let identity = DeviceIdentity {
        device_id: "PM-0001".into(),
        model: "VW-Monitor".into(),
        firmware: "1.4.2".into(),
        max_frame_len: 2048,
    };
    // 64 KiB: below 255 pieces of 4096-byte frames (spec §4.5.2), so announced as configured.
    let params = SessionParams { max_frame_len: 4096, rekey_interval: 4, max_message_len: 64 << 10 };
    assert!(params.max_message_len <= params.max_reachable_message_len());

    let mut ic = InitiatorConfig::new(profile, init_kp.clone(), identity.clone())
        .suite(suite)
        .fixed_ephemeral_for_testing_only(init_eph.clone());
    if profile.needs_remote_key() {
        ic = ic.host_key(*resp_kp.public());
    }
    if profile.needs_psk() {
        ic = ic.psk(PSK_ID, psk.clone());
    }
    let mut trust = TrustList::new();
    trust.add(*init_kp.public(), "PM-0001", "vector device", 0);
    let mut dir = StaticPskDirectory::new();
    dir.add(PSK_ID, psk.clone());
    let rc = ResponderConfig::new(resp_kp.clone(), std::sync::Arc::new(TrustStore::in_memory(trust)))
        .params(params)
        .psk_directory(std::sync::Arc::new(dir))
        .fixed_ephemeral_for_testing_only(resp_eph.clone());

    let mut init = Handshake::initiator(ic).unwrap();
    let mut resp = Handshake::responder(rc).unwrap();
    let mut rec = Recorder { frames: Vec::new() };
    let mut wire = BytesMut::new();
    let mut index = 0;
    let mut prologue = String::new();
    while !(init.is_finished() && resp.is_finished()) {
        let initiator_writes = init.wants_write();
        let (w, r) = if initiator_writes { (&mut init, &mut resp) } else { (&mut resp, &mut init) };
        w.write_message(&mut wire).unwrap();
        let bytes = wire.clone();
        let body = Recorder::take(&mut wire);
        r.read_message(&body).unwrap();
        let payload = if !initiator_writes {
            params.encode().unwrap()
        } else if index + 1 == profile.message_count() || (profile.message_count() == 2 && index == 0) {
            identity.encode().unwrap()
        } else {
            Vec::new()
        };
        if index == 0 {
            let hello = vitalwire::hello::HandshakeFrame::decode(&body).unwrap();
            if let vitalwire::hello::HandshakeFrame::Hello(h) = hello {
                prologue = hex::encode(vitalwire::hello::prologue(h.header));
            }
        }
        rec.frames.push(json!({
            "from": if initiator_writes { "initiator" } else { "responder" },
            "phase": "handshake",
            "type": if index == 0 { "HELLO" } else { "HANDSHAKE" },
            "handshake_payload": hex::encode(&payload),
            "wire": hex::encode(&bytes),
        }));
        index += 1;
    }
    let mut dev = init.into_session().unwrap();
    let mut host = resp.into_session().unwrap();
    let handshake_hash = hex::encode(dev.handshake_hash());
    assert_eq!(dev.handshake_hash(), host.handshake_hash());
    assert_eq!(dev.params(), &params, "the JSON records the parameters as announced");

    enum Step {
        Data(bool, u8, Vec<u8>),
        Ping,
        Pong,
        Rekey,
        Close,
        CloseReply,
    }
    let waveform: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37)).collect();
    let script = vec![
        Step::Data(true, 1, b"HR=72;SpO2=98".to_vec()),
        Step::Data(true, 2, waveform),
        Step::Data(false, 0, b"ack".to_vec()),
        Step::Ping,
        Step::Pong,
        Step::Rekey,
        Step::Data(true, 3, b"ALARM:HR_HIGH".to_vec()),
        Step::Data(true, 1, b"HR=131".to_vec()),
        Step::Data(true, 1, b"HR=129".to_vec()),
        Step::Data(true, 1, b"HR=120".to_vec()),
        Step::Close,
        Step::CloseReply,
    ];
    for step in script {
        let mut out = BytesMut::new();
        let from_initiator = match &step {
            Step::Data(from_i, ..) => *from_i,
            Step::Pong | Step::CloseReply => false,
            _ => true,
        };
        let (s, peer) = if from_initiator { (&mut dev, &mut host) } else { (&mut host, &mut dev) };
        match &step {
            Step::Data(_, ch, p) => s.seal_data(*ch, p, &mut out).unwrap(),
            Step::Ping => s.send_ping(PING_OPAQUE, &mut out).unwrap(),
            Step::Pong | Step::CloseReply => assert!(s.poll_transmit(&mut out)),
            Step::Rekey => s.rekey(&mut out).unwrap(),
            Step::Close => s.close(CloseCode::NORMAL, &mut out).unwrap(),
        }
        // Record each frame the step produced (an automatic REKEY may precede a DATA).
        let mut dec = StreamDecoder::new(65535);
        let mut nonce_hint = s.stats().frames_sent - count_frames(&out);
        while !out.is_empty() {
            let len = u16::from_be_bytes([out[0], out[1]]) as usize;
            let wire_bytes = out[..2 + len].to_vec();
            let frame = dec.decode(&mut out).unwrap().unwrap();
            let opened = peer.open(frame).unwrap();
            let (kind, channel, payload) = match &opened {
                Incoming::Data { channel, payload } => ("DATA", *channel, payload.to_vec()),
                Incoming::Ping => ("PING", 0, PING_OPAQUE.to_vec()),
                Incoming::Pong(p) => ("PONG", 0, p.to_vec()),
                Incoming::Rekeyed => ("REKEY", 0, Vec::new()),
                Incoming::Closed(c) => ("CLOSE", 0, c.0.to_be_bytes().to_vec()),
                _ => unreachable!(),
            };
            rec.frames.push(json!({
                "from": if from_initiator { "initiator" } else { "responder" },
                "phase": "transport",
                "kind": kind,
                "channel": channel,
                "payload": hex::encode(&payload),
                "nonce": nonce_hint,
                "wire": hex::encode(&wire_bytes),
            }));
            nonce_hint += 1;
        }
    }
    assert!(dev.is_closed() && host.is_closed());

    json!({
        "description": format!(
            "vitalwire protocol version 1, profile {}, suite {}: a complete stream session with fixed keys. \
             Generated by `cargo run -p vitalwire --example gen_vectors`; see spec/PROTOCOL.md §10.",
            profile.pattern(), suite.noise_name()),
        "protocol_version": PROTOCOL_VERSION,
        "profile": profile.pattern(),
        "profile_code": profile.code(),
        "suite": suite.noise_name(),
        "suite_code": suite.code(),
        "noise_protocol": vitalwire::profile::noise_protocol_name(profile, suite),
        "prologue": prologue,
        "initiator": {
            "static_private": hex::encode(init_static.expose_secret()),
            "static_public": hex::encode(init_kp.public().as_bytes()),
            "ephemeral_private": hex::encode(init_eph.expose_secret()),
            "key_id": hex::encode(init_kp.public().key_id().0),
            "psk_id": if profile.needs_psk() { hex::encode(PSK_ID) } else { String::new() },
            "psk": if profile.needs_psk() { hex::encode(psk.expose_secret()) } else { String::new() },
            "identity": identity_json(&identity),
        },
        "responder": {
            "static_private": hex::encode(resp_static.expose_secret()),
            "static_public": hex::encode(resp_kp.public().as_bytes()),
            "ephemeral_private": hex::encode(resp_eph.expose_secret()),
            "params": {
                "max_frame_len": params.max_frame_len,
                "rekey_interval": params.rekey_interval,
                "max_message_len": params.max_message_len,
            },
        },
        "handshake_hash": handshake_hash,
        "frames": rec.frames,
    })
}

fn count_frames(out: &BytesMut) -> u64 {
    let mut n = 0;
    let mut i = 0;
    while i + 2 <= out.len() {
        i += 2 + u16::from_be_bytes([out[i], out[i + 1]]) as usize;
        n += 1;
    }
    n
}

/// A datagram-mode session (spec §13) with fixed keys and session indices.
pub fn datagram_transcript(profile: Profile, suite: CipherSuite) -> Value {
    use vitalwire::datagram::*;
    let init_kp = Keypair::from_private(PrivateKey::from_bytes(key(0x10)));
    let resp_kp = Keypair::from_private(PrivateKey::from_bytes(key(0x40)));
    let identity = DeviceIdentity {
        device_id: "PM-0001".into(),
        model: String::new(),
        firmware: String::new(),
        max_frame_len: 512,
    };
    let params = SessionParams { max_frame_len: 512, rekey_interval: 4, max_message_len: 0 };
    let (init_index, resp_index) = (0x1111_1111u32, 0x2222_2222u32);
    let mut ic = InitiatorConfig::new(profile, init_kp.clone(), identity.clone())
        .suite(suite)
        .fixed_ephemeral_for_testing_only(PrivateKey::from_bytes(key(0x70)));
    if profile.needs_remote_key() {
        ic = ic.host_key(*resp_kp.public());
    }
    let mut trust = TrustList::new();
    trust.add(*init_kp.public(), "PM-0001", "vector device", 0);
    let rc = ResponderConfig::new(resp_kp.clone(), std::sync::Arc::new(TrustStore::in_memory(trust)))
        .params(params)
        .fixed_ephemeral_for_testing_only(PrivateKey::from_bytes(key(0xA0)));
    let config = DatagramConfig::default();
    let t = Timestamp(0);
    let mut packets = Vec::new();
    let mut record = |from: &str, what: &str, p: &[u8], extra: Value| {
        let mut v = json!({"from": from, "packet": what, "wire": hex::encode(p)});
        if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
            m.extend(e);
        }
        packets.push(v);
    };
    let mut init = DatagramHandshake::initiator(ic, init_index, config, t).unwrap();
    let hello = init.poll_transmit().unwrap();
    record("initiator", "HELLO", &hello, json!({}));
    let mut resp = DatagramHandshake::responder(rc, resp_index, config, &hello, t).unwrap();
    let response = resp.poll_transmit().unwrap();
    record("responder", "RESPONSE", &response, json!({}));
    init.handle_packet(&response, t).unwrap();
    let mut dev = init.into_session(t).unwrap();
    let mut buf = BytesMut::new();
    if dev.poll_transmit(t, &mut buf) {
        let finish = buf.split().to_vec();
        record("initiator", "FINISH", &finish, json!({}));
        resp.handle_packet(&finish, t).unwrap();
    }
    let mut host = resp.into_session(t).unwrap();
    // XX: the responder confirms with a PING; IK/KK: nothing pending.
    let mut pending: Vec<(bool, Vec<u8>)> = Vec::new();
    if host.poll_transmit(t, &mut buf) {
        pending.push((false, buf.split().to_vec()));
    }
    let data = |s: &mut DatagramSession, ch: u8, p: &[u8]| {
        let mut b = BytesMut::new();
        s.seal_data(ch, p, t, &mut b).unwrap();
        b.to_vec()
    };
    for (ch, p) in [(1u8, &b"HR=72"[..]), (2, b"SpO2=98"), (1, b"HR=73"), (3, b"ALARM"), (1, b"HR=74")] {
        pending.push((true, data(&mut dev, ch, p)));
    }
    dev.rekey().unwrap();
    pending.push((true, data(&mut dev, 1, b"after on-demand rekey")));
    pending.push((false, data(&mut host, 0, b"ack")));
    let mut ping_entry = None;
    let mut answered = false;
    loop {
        for (from_init, p) in core::mem::take(&mut pending) {
            let (receiver, sender_name) =
                if from_init { (&mut host, "initiator") } else { (&mut dev, "responder") };
            let counter = u64::from_be_bytes(p[5..13].try_into().unwrap());
            let opened = receiver.open(BytesMut::from(&p[..]), t).unwrap();
            let (kind, channel, payload) = match opened {
                Incoming::Data { channel, payload } => ("DATA", channel, payload.to_vec()),
                // The PING's 8 bytes come back in the PONG; filled in below.
                Incoming::Ping => ("PING", 0, Vec::new()),
                Incoming::Pong(opaque) => ("PONG", 0, opaque.to_vec()),
                other => panic!("{other:?}"),
            };
            if kind == "PING" {
                ping_entry = Some(packets.len());
            }
            if kind == "PONG" {
                let i = ping_entry.expect("a PING was answered");
                packets[i]["payload"] = json!(hex::encode(&payload));
            }
            packets.push(json!({"from": sender_name, "packet": "TRANSPORT", "wire": hex::encode(&p),
                "counter": counter, "epoch": counter / 4, "kind": kind, "channel": channel,
                "payload": hex::encode(payload)}));
        }
        // XX: the device answers the responder's confirming PING last.
        if answered || !dev.poll_transmit(t, &mut buf) {
            break;
        }
        answered = true;
        pending.push((true, buf.split().to_vec()));
    }
    json!({
        "description": format!(
            "vitalwire datagram mode (spec §13), profile {}, suite {}, fixed keys and session indices. \
             Generated by `cargo run -p vitalwire --example gen_vectors`.",
            profile.pattern(), suite.noise_name()),
        "profile": profile.pattern(),
        "suite": suite.noise_name(),
        "initiator": {
            "static_private": hex::encode(key(0x10)),
            "ephemeral_private": hex::encode(key(0x70)),
            "index": init_index,
            "identity": identity_json(&identity),
        },
        "responder": {
            "static_private": hex::encode(key(0x40)),
            "ephemeral_private": hex::encode(key(0xA0)),
            "index": resp_index,
            "params": {"max_frame_len": params.max_frame_len, "rekey_interval": params.rekey_interval, "max_message_len": params.max_message_len},
        },
        "handshake_hash": hex::encode(dev.handshake_hash()),
        "packets": packets,
    })
}

/// Fragmentation of one datagram over a 20-byte MTU (spec §13.6).
pub fn fragment_vector() -> Value {
    let datagram: Vec<u8> = (0..50u8).collect();
    let pieces = vitalwire::fragment::split(&datagram, 16, 0x0102).unwrap();
    json!({
        "description": "A 50-byte datagram split for a 20-byte link MTU: 4-byte header (message_id u16, index, count) + at most 16 bytes. Spec §13.6.",
        "mtu": 20,
        "message_id": 0x0102,
        "datagram": hex::encode(&datagram),
        "fragments": pieces.iter().map(hex::encode).collect::<Vec<_>>(),
    })
}

/// Every transcript, as (file name, pretty JSON text).
pub fn all() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap() + "\n";
    for profile in Profile::ALL {
        for suite in CipherSuite::ALL {
            out.push((file_name(profile, suite), pretty(&transcript(profile, suite))));
        }
    }
    out.push((
        "datagram_ik_chachapoly.json".into(),
        pretty(&datagram_transcript(Profile::Ik, CipherSuite::ChaChaPolyBlake2s)),
    ));
    out.push((
        "datagram_xx_aesgcm.json".into(),
        pretty(&datagram_transcript(Profile::Xx, CipherSuite::AesGcmSha256)),
    ));
    out.push(("fragments_mtu20.json".into(), pretty(&fragment_vector())));
    out
}
