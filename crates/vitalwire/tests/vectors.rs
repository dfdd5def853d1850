//! spec/vectors must be what the code produces: regenerate every transcript and compare with
//! the checked-in files, then replay each file's responder side from the file alone.

#[path = "../examples/gen_vectors/transcript.rs"]
mod transcript;

use bytes::BytesMut;
use serde_json::Value;
use vitalwire::*;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../spec/vectors");

#[test]
fn checked_in_vectors_match_the_code() {
    let files = transcript::all();
    assert_eq!(files.len(), 11);
    for (name, text) in files {
        let path = format!("{DIR}/{name}");
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{path} missing: run `cargo run -p vitalwire --example gen_vectors`"));
        assert!(
            on_disk == text,
            "{path} differs from what the code produces: the wire format changed. Update \
             spec/PROTOCOL.md and run `cargo run -p vitalwire --example gen_vectors`."
        );
    }
}

fn hexv(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

/// Uses only what is in the JSON: the responder's keys, the initiator's frames as input, and
/// checks the responder's frames and every decoded transport frame.
#[test]
fn vectors_replay_from_the_files_alone() {
    for entry in std::fs::read_dir(DIR).unwrap() {
        let path = entry.unwrap().path();
        let stream_vector =
            path.file_name().unwrap().to_str().unwrap().chars().next().is_some_and(|c| c != 'd' && c != 'f');
        if path.extension().and_then(|e| e.to_str()) != Some("json") || !stream_vector {
            continue;
        }
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let r = &v["responder"];
        let i = &v["initiator"];
        let mut trust = TrustList::new();
        trust.add(PublicKey::from_slice(&hexv(&i["static_public"])).unwrap(), "", "", 0);
        let mut psks = StaticPskDirectory::new();
        if !i["psk_id"].as_str().unwrap().is_empty() {
            psks.add(&hexv(&i["psk_id"]), Psk::from_slice(&hexv(&i["psk"])).unwrap());
        }
        let params = SessionParams {
            max_frame_len: r["params"]["max_frame_len"].as_u64().unwrap() as u16,
            rekey_interval: r["params"]["rekey_interval"].as_u64().unwrap() as u32,
            max_message_len: r["params"]["max_message_len"].as_u64().unwrap() as u32,
        };
        let host_keys = Keypair::from_private(PrivateKey::from_slice(&hexv(&r["static_private"])).unwrap());
        let mut host = Some(
            Handshake::responder(
                ResponderConfig::new(host_keys, std::sync::Arc::new(TrustStore::in_memory(trust)))
                    .params(params)
                    .psk_directory(std::sync::Arc::new(psks))
                    .fixed_ephemeral_for_testing_only(
                        PrivateKey::from_slice(&hexv(&r["ephemeral_private"])).unwrap(),
                    ),
            )
            .unwrap(),
        );
        let mut session: Option<Session> = None;
        let mut pending_out = BytesMut::new();
        for f in v["frames"].as_array().unwrap() {
            let wire = hexv(&f["wire"]);
            let from_initiator = f["from"] == "initiator";
            if f["phase"] == "handshake" {
                if from_initiator {
                    let mut buf = BytesMut::from(&wire[..]);
                    let body = StreamDecoder::new(1024).decode(&mut buf).unwrap().unwrap();
                    host.as_mut().unwrap().read_message(&body).unwrap();
                } else {
                    let mut out = BytesMut::new();
                    host.as_mut().unwrap().write_message(&mut out).unwrap();
                    assert_eq!(hex::encode(&out), hex::encode(&wire), "{path:?}");
                }
                continue;
            }
            if let Some(h) = host.take() {
                let s = h.into_session().unwrap();
                assert_eq!(hex::encode(s.handshake_hash()), v["handshake_hash"].as_str().unwrap());
                session = Some(s);
            }
            let s = session.as_mut().unwrap();
            if from_initiator {
                let mut buf = BytesMut::from(&wire[..]);
                let body = StreamDecoder::new(s.max_frame_len()).decode(&mut buf).unwrap().unwrap();
                let got = s.open(body).unwrap();
                let expected_payload = hexv(&f["payload"]);
                match (f["kind"].as_str().unwrap(), got) {
                    ("DATA", Incoming::Data { channel, payload }) => {
                        assert_eq!(channel as u64, f["channel"].as_u64().unwrap());
                        assert_eq!(payload.to_vec(), expected_payload);
                    }
                    ("PING", Incoming::Ping) | ("REKEY", Incoming::Rekeyed) => {}
                    ("CLOSE", Incoming::Closed(c)) => {
                        assert_eq!(c.0.to_be_bytes().to_vec(), expected_payload)
                    }
                    (k, other) => panic!("{path:?}: expected {k}, got {other:?}"),
                }
            } else {
                // The responder's transport frames must be reproduced byte for byte.
                let mut out = std::mem::take(&mut pending_out);
                if out.is_empty() {
                    match f["kind"].as_str().unwrap() {
                        "DATA" => s
                            .seal_data(f["channel"].as_u64().unwrap() as u8, &hexv(&f["payload"]), &mut out)
                            .unwrap(),
                        "PONG" | "CLOSE" => assert!(s.poll_transmit(&mut out)),
                        k => panic!("unexpected responder frame {k}"),
                    }
                }
                let produced = out.split_to(wire.len().min(out.len()));
                pending_out = out;
                assert_eq!(hex::encode(&produced), hex::encode(&wire), "{path:?}");
            }
        }
        assert!(session.unwrap().is_closed());
    }
}

/// Datagram vectors: the responder, built from the file alone, reproduces its packets and
/// opens every initiator packet.
#[test]
fn datagram_vectors_replay_from_the_files_alone() {
    use vitalwire::datagram::*;
    for name in ["datagram_ik_chachapoly.json", "datagram_xx_aesgcm.json"] {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/{name}")).unwrap()).unwrap();
        let r = &v["responder"];
        let i = &v["initiator"];
        let device = Keypair::from_private(PrivateKey::from_slice(&hexv(&i["static_private"])).unwrap());
        let mut trust = TrustList::new();
        trust.add(*device.public(), "", "", 0);
        let params = SessionParams {
            max_frame_len: r["params"]["max_frame_len"].as_u64().unwrap() as u16,
            rekey_interval: r["params"]["rekey_interval"].as_u64().unwrap() as u32,
            max_message_len: r["params"]["max_message_len"].as_u64().unwrap() as u32,
        };
        let rc = ResponderConfig::new(
            Keypair::from_private(PrivateKey::from_slice(&hexv(&r["static_private"])).unwrap()),
            std::sync::Arc::new(TrustStore::in_memory(trust)),
        )
        .params(params)
        .fixed_ephemeral_for_testing_only(PrivateKey::from_slice(&hexv(&r["ephemeral_private"])).unwrap());
        let packets = v["packets"].as_array().unwrap();
        let t = Timestamp(0);
        let index = r["index"].as_u64().unwrap() as u32;
        let mut hs =
            DatagramHandshake::responder(rc, index, DatagramConfig::default(), &hexv(&packets[0]["wire"]), t)
                .unwrap();
        assert_eq!(hex::encode(hs.poll_transmit().unwrap()), packets[1]["wire"].as_str().unwrap(), "{name}");
        let mut rest = &packets[2..];
        if packets[2]["packet"] == "FINISH" {
            hs.handle_packet(&hexv(&packets[2]["wire"]), t).unwrap();
            rest = &packets[3..];
        }
        let mut host = hs.into_session(t).unwrap();
        assert_eq!(hex::encode(host.handshake_hash()), v["handshake_hash"].as_str().unwrap());
        let mut buf = BytesMut::new();
        for p in rest {
            let wire = hexv(&p["wire"]);
            if p["from"] == "initiator" {
                match (p["kind"].as_str().unwrap(), host.open(BytesMut::from(&wire[..]), t).unwrap()) {
                    ("DATA", Incoming::Data { channel, payload }) => {
                        assert_eq!(channel as u64, p["channel"].as_u64().unwrap());
                        assert_eq!(hex::encode(payload), p["payload"].as_str().unwrap());
                    }
                    ("PONG", Incoming::Pong(opaque)) => {
                        assert_eq!(hex::encode(opaque), p["payload"].as_str().unwrap(), "{name}");
                    }
                    (kind, other) => panic!("{name}: {kind}: {other:?}"),
                }
            } else if p["kind"] == "PING" {
                assert_eq!(hexv(&p["payload"]).len(), 8, "{name}: a PING carries 8 bytes (spec §5.1)");
                assert!(host.poll_transmit(t, &mut buf));
                assert_eq!(hex::encode(buf.split()), p["wire"].as_str().unwrap(), "{name}");
            } else {
                host.seal_data(p["channel"].as_u64().unwrap() as u8, &hexv(&p["payload"]), t, &mut buf)
                    .unwrap();
                assert_eq!(hex::encode(buf.split()), p["wire"].as_str().unwrap(), "{name}");
            }
        }
    }
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/fragments_mtu20.json")).unwrap())
            .unwrap();
    let pieces: Vec<String> = vitalwire::fragment::split(&hexv(&v["datagram"]), 16, 0x0102)
        .unwrap()
        .iter()
        .map(hex::encode)
        .collect();
    let expected: Vec<String> =
        v["fragments"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
    assert_eq!(pieces, expected);
}

/// spec §4.7: the message-size table, checked against every stream vector (P = 18 bytes, the
/// reference encoding of the parameters with all three fields).
#[test]
fn handshake_message_sizes_follow_the_table() {
    for (name, text) in transcript::all() {
        let v: Value = serde_json::from_str(&text).unwrap();
        let Some(frames) = v["frames"].as_array() else { continue };
        let hs: Vec<&Value> = frames.iter().filter(|f| f["phase"] == "handshake").collect();
        let body_len = |f: &Value| hexv(&f["wire"]).len() - 2;
        let payload_len = |f: &Value| hexv(&f["handshake_payload"]).len();
        let p = payload_len(hs[1]);
        assert_eq!(p, 18, "{name}");
        let i = payload_len(hs.last().unwrap());
        let h = hexv(&v["initiator"]["psk_id"]).len();
        let expected: Vec<usize> = match v["profile"].as_str().unwrap() {
            "XX" => vec![7 + 32, 1 + 32 + 48 + p + 16, 1 + 48 + i + 16],
            "IK" => vec![7 + 32 + 48 + payload_len(hs[0]) + 16, 1 + 32 + p + 16],
            "KK" => vec![15 + 32 + payload_len(hs[0]) + 16, 1 + 32 + p + 16],
            "XXpsk3" => vec![7 + h + 32 + 16, 1 + 32 + 48 + p + 16, 1 + 48 + i + 16],
            other => panic!("{other}"),
        };
        assert_eq!(hs.iter().map(|f| body_len(f)).collect::<Vec<_>>(), expected, "{name}");
    }
}
