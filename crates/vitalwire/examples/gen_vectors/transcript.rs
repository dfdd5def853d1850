//! Deterministic session transcripts for spec/vectors: fixed static and ephemeral keys, a
//! scripted session, every frame recorded as it appears on the wire.

use bytes::BytesMut;
use serde_json::{json, Value};
use vitalwire::*;

fn key(start: u8) -> [u8; 32] {
    core::array::from_fn(|i| start.wrapping_add(i as u8))
}

pub const PSK_ID: &[u8] = b"psk-0001";

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
    let params = SessionParams { max_frame_len: 4096, rekey_interval: 4, ..SessionParams::default() };

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
            Step::Ping => s.send_ping(*b"\x00\x00\x00\x00\x00\x00\x00\x2a", &mut out).unwrap(),
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
                Incoming::Ping => ("PING", 0, b"\x00\x00\x00\x00\x00\x00\x00\x2a".to_vec()),
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

/// Every transcript, as (file name, pretty JSON text).
pub fn all() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for profile in Profile::ALL {
        for suite in CipherSuite::ALL {
            let text = serde_json::to_string_pretty(&transcript(profile, suite)).unwrap() + "\n";
            out.push((file_name(profile, suite), text));
        }
    }
    out
}
