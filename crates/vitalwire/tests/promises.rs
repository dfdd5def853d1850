//! What README.md promises about the bytes on the wire, checked on frames the code really
//! produces: the per-frame overhead, the handshake byte totals it quotes from `spec/vectors`, and
//! "every combination [of Cargo features] produces the same bytes on the wire". The features
//! only choose implementations (X25519: aws-lc or curve25519-dalek; AEAD: ring or RustCrypto),
//! and both are selectable at run time in one build, so every pairing of them is driven here,
//! with the device and the host on different implementations (a `no_std` device talking to a
//! `std` host). The file uses nothing `std`-only from the crate, so it also runs on the
//! builds the other feature sets make: `cargo test -p vitalwire --no-default-features --test
//! promises` (the firmware build) and `--no-default-features --features std`.

use std::sync::Arc;

use bytes::BytesMut;
use serde_json::Value;
use vitalwire::datagram::{DatagramConfig, DatagramHandshake};
use vitalwire::*;

const README: &str = include_str!("../../../README.md");
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../spec/vectors");

fn vector(name: &str) -> Value {
    let path = format!("{VECTORS}/{name}");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

/// The implementations one side runs.
#[derive(Debug, Clone, Copy)]
struct Backends {
    x25519: x25519::Backend,
    cipher: cipher::Backend,
}

/// Every pairing compiled into this build: with the default features, aws-lc or portable
/// X25519 times ring or portable AEAD.
fn all_backends() -> Vec<Backends> {
    let x = [
        x25519::Backend::Portable,
        #[cfg(feature = "aws-lc")]
        x25519::Backend::AwsLc,
    ];
    let c = [
        cipher::Backend::Portable,
        #[cfg(feature = "std")]
        cipher::Backend::Ring,
    ];
    x.iter().flat_map(|&x25519| c.iter().map(move |&cipher| Backends { x25519, cipher })).collect()
}

/// The host's allowlist as a policy without the `std`-only `TrustStore`.
struct ListPolicy(TrustList);

impl TrustPolicy for ListPolicy {
    fn check(&self, key: &PublicKey, identity: Option<&DeviceIdentity>) -> TrustDecision {
        self.0.decide(key, identity)
    }
    fn find_by_key_id(&self, id: &KeyId) -> Option<PublicKey> {
        self.0.find_by_key_id(id)
    }
}

/// A board's random source stand-in (the ephemeral keys are fixed; `no_std` builds need one).
struct CountingEntropy(u8);

impl EntropySource for CountingEntropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        for b in dest {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
        Ok(())
    }
}

fn suite_name(suite: CipherSuite) -> &'static str {
    if suite == CipherSuite::ChaChaPolyBlake2s {
        "chachapoly"
    } else {
        "aesgcm"
    }
}

fn hexv(v: &Value) -> Vec<u8> {
    let text = v.as_str().unwrap_or_else(|| panic!("not hex: {v}"));
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn private(v: &Value) -> PrivateKey {
    PrivateKey::from_slice(&hexv(v)).unwrap()
}

/// The stream vector of this pair, or (`datagram`) the datagram vector whose inputs (keys,
/// identity, parameters, indices) every datagram pair here uses: the inputs are read from the
/// files, so the bytes built here can be compared with theirs.
fn inputs(profile: Profile, suite: CipherSuite, datagram: bool) -> Value {
    if datagram {
        vector("datagram_ik_chachapoly.json")
    } else {
        vector(&format!("{}_{}.json", profile.pattern().to_ascii_lowercase(), suite_name(suite)))
    }
}

/// The configurations of both sides, from a vector's inputs (fixed keys: deterministic bytes).
fn configs(
    profile: Profile,
    suite: CipherSuite,
    dev: Backends,
    host: Backends,
    datagram: bool,
) -> (InitiatorConfig, ResponderConfig) {
    let v = inputs(profile, suite, datagram);
    let (i, r) = (&v["initiator"], &v["responder"]);
    let id = &i["identity"];
    let identity = DeviceIdentity {
        device_id: id["device_id"].as_str().unwrap().into(),
        model: id["model"].as_str().unwrap().into(),
        firmware: id["firmware"].as_str().unwrap().into(),
        max_frame_len: id["max_frame_len"].as_u64().unwrap() as u16,
    };
    let p = &r["params"];
    let params = SessionParams {
        max_frame_len: p["max_frame_len"].as_u64().unwrap() as u16,
        rekey_interval: p["rekey_interval"].as_u64().unwrap() as u32,
        max_message_len: p["max_message_len"].as_u64().unwrap() as u32,
    };
    let dev_keys = Keypair::from_private(private(&i["static_private"]));
    let host_keys = Keypair::from_private(private(&r["static_private"]));
    let mut ic = InitiatorConfig::new(profile, dev_keys.clone(), identity.clone())
        .suite(suite)
        .x25519_backend(dev.x25519)
        .cipher_backend(dev.cipher)
        .entropy(Box::new(CountingEntropy(1)))
        .fixed_ephemeral_for_testing_only(private(&i["ephemeral_private"]));
    if profile.needs_remote_key() {
        ic = ic.host_key(*host_keys.public());
    } else {
        ic = ic.pin_host_keys([*host_keys.public()]);
    }
    let mut psks = StaticPskDirectory::new();
    if profile.needs_psk() {
        let (psk_id, psk) = (hexv(&i["psk_id"]), Psk::from_slice(&hexv(&i["psk"])).unwrap());
        ic = ic.psk(&psk_id, psk.clone());
        psks.add(&psk_id, psk);
    }
    let mut trust = TrustList::new();
    trust.add(*dev_keys.public(), &identity.device_id, "ICU bed 4", 0);
    let rc = ResponderConfig::new(host_keys, Arc::new(ListPolicy(trust)))
        .entropy(Box::new(CountingEntropy(2)))
        .params(params)
        .psk_directory(Arc::new(psks))
        .x25519_backend(host.x25519)
        .cipher_backend(host.cipher)
        .fixed_ephemeral_for_testing_only(private(&r["ephemeral_private"]));
    (ic, rc)
}

/// The session indices of the datagram vector.
fn indices() -> (u32, u32) {
    let v = vector("datagram_ik_chachapoly.json");
    let index = |side: &str| v[side]["index"].as_u64().unwrap() as u32;
    (index("initiator"), index("responder"))
}

/// A stream session driven through its handshake, data both ways, automatic and on-demand
/// rekeys, a ping and a close; every frame as it went on the wire, each opened by the peer.
fn stream_transcript(profile: Profile, suite: CipherSuite, dev: Backends, host: Backends) -> Vec<Vec<u8>> {
    let (ic, rc) = configs(profile, suite, dev, host, false);
    let mut d = Handshake::initiator(ic).unwrap();
    let mut h = Handshake::responder(rc).unwrap();
    let mut wire = BytesMut::new();
    let mut decoder = StreamDecoder::new(65535);
    let mut frames = Vec::new();
    while !(d.is_finished() && h.is_finished()) {
        let (w, r) = if d.wants_write() { (&mut d, &mut h) } else { (&mut h, &mut d) };
        w.write_message(&mut wire).unwrap();
        frames.push(wire.to_vec());
        r.read_message(&decoder.decode(&mut wire).unwrap().expect("a whole frame")).unwrap();
    }
    let (mut d, mut h) = (d.into_session().unwrap(), h.into_session().unwrap());
    assert_eq!(d.handshake_hash(), h.handshake_hash());
    let mut carry = |from: &mut Session, to: &mut Session, wire: &mut BytesMut, frames: &mut Vec<Vec<u8>>| {
        while from.poll_transmit(wire) {}
        frames.push(wire.to_vec());
        let mut got = Vec::new();
        while let Some(frame) = decoder.decode(wire).unwrap() {
            got.push(to.open(frame).unwrap());
        }
        while to.poll_transmit(wire) {}
        if !wire.is_empty() {
            frames.push(wire.to_vec());
            while let Some(frame) = decoder.decode(wire).unwrap() {
                from.open(frame).unwrap();
            }
        }
        got
    };
    for (n, payload) in
        [&b"HR=72;SpO2=98"[..], &[0x5a; 300], b"HR=73", b"ALARM:HR_HIGH", b"HR=131", b"x"].iter().enumerate()
    {
        d.seal_data(1 + (n % 3) as u8, payload, &mut wire).unwrap();
        let got = carry(&mut d, &mut h, &mut wire, &mut frames);
        assert!(
            got.iter().any(|m| matches!(m, Incoming::Data { payload: p, .. } if &p[..] == *payload)),
            "{got:?}"
        );
    }
    d.rekey(&mut wire).unwrap();
    carry(&mut d, &mut h, &mut wire, &mut frames);
    h.seal_data(0, b"ack", &mut wire).unwrap();
    carry(&mut h, &mut d, &mut wire, &mut frames);
    d.send_ping([7; 8], &mut wire).unwrap();
    carry(&mut d, &mut h, &mut wire, &mut frames);
    d.close(CloseCode::NORMAL, &mut wire).unwrap();
    carry(&mut d, &mut h, &mut wire, &mut frames);
    frames
}

/// A datagram session: HELLO, RESPONSE (and FINISH), DATA before and after an on-demand rekey.
fn datagram_transcript(profile: Profile, suite: CipherSuite, dev: Backends, host: Backends) -> Vec<Vec<u8>> {
    let (ic, rc) = configs(profile, suite, dev, host, true);
    let t = Timestamp(0);
    let config = DatagramConfig::default();
    let mut packets = Vec::new();
    let (init_index, resp_index) = indices();
    let mut init = DatagramHandshake::initiator(ic, init_index, config, t).unwrap();
    let hello = init.poll_transmit().unwrap();
    let mut resp = DatagramHandshake::responder(rc, resp_index, config, &hello, t).unwrap();
    packets.push(hello);
    let response = resp.poll_transmit().unwrap();
    init.handle_packet(&response, t).unwrap();
    packets.push(response);
    let mut d = init.into_session(t).unwrap();
    let mut buf = BytesMut::new();
    if d.poll_transmit(t, &mut buf) {
        packets.push(buf.to_vec());
        resp.handle_packet(&buf.split(), t).unwrap();
    }
    let mut h = resp.into_session(t).unwrap();
    for (n, payload) in [&b"HR=72"[..], b"SpO2=98", b"after on-demand rekey"].iter().enumerate() {
        if n == 2 {
            d.rekey().unwrap();
        }
        d.seal_data(1, payload, t, &mut buf).unwrap();
        packets.push(buf.to_vec());
        match h.open(buf.split(), t).unwrap() {
            Incoming::Data { payload: p, .. } => assert_eq!(&p[..], *payload),
            other => panic!("{other:?}"),
        }
    }
    packets
}

/// The handshake frames and the first DATA frame of a checked-in stream vector.
fn stream_vector_prefix(profile: Profile, suite: CipherSuite) -> Vec<Vec<u8>> {
    let v = vector(&format!("{}_{}.json", profile.pattern().to_ascii_lowercase(), suite_name(suite)));
    let frames = v["frames"].as_array().unwrap();
    let handshake = frames.iter().take_while(|f| f["phase"] == "handshake");
    let first_data = frames.iter().find(|f| f["kind"] == "DATA" && f["from"] == "initiator").unwrap();
    assert_eq!(
        (first_data["channel"].as_u64(), first_data["payload"].as_str()),
        (Some(1), Some("48523d37323b53704f323d3938"))
    );
    handshake.chain([first_data]).map(|f| hexv(&f["wire"])).collect()
}

/// HELLO, RESPONSE (FINISH) and the device's first DATA packet of a checked-in datagram vector,
/// if there is one for this pair.
fn datagram_vector_prefix(profile: Profile, suite: CipherSuite) -> Option<Vec<Vec<u8>>> {
    let name =
        format!("{VECTORS}/datagram_{}_{}.json", profile.pattern().to_ascii_lowercase(), suite_name(suite));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(name).ok()?).unwrap();
    let packets = v["packets"].as_array().unwrap();
    let handshake =
        packets.iter().filter(|p| ["HELLO", "RESPONSE", "FINISH"].contains(&p["packet"].as_str().unwrap()));
    let first_data = packets.iter().find(|p| p["kind"] == "DATA" && p["from"] == "initiator").unwrap();
    assert_eq!(
        (first_data["channel"].as_u64(), first_data["payload"].as_str()),
        (Some(1), Some("48523d3732"))
    );
    Some(handshake.chain([first_data]).map(|p| hexv(&p["wire"])).collect())
}

/// Within this build: every pairing of implementations on the device and on the host sends
/// the same bytes. Across builds: those bytes begin with the checked-in vectors' (the whole
/// handshake and the first DATA frame; `tests/vectors.rs` checks the rest on the default
/// build), so each feature set's build is held to the same wire.
#[test]
fn every_backend_combination_produces_the_same_bytes_on_the_wire() {
    let backends = all_backends();
    for profile in Profile::ALL {
        for suite in CipherSuite::ALL {
            let reference = stream_transcript(profile, suite, backends[0], backends[0]);
            let expected = stream_vector_prefix(profile, suite);
            for (n, (got, want)) in reference.iter().zip(&expected).enumerate() {
                assert!(
                    got == want,
                    "{profile:?}/{suite:?}: frame {n} is not the one of spec/vectors: {got:02x?} {want:02x?}"
                );
            }
            let datagram = (profile != Profile::XxPsk3)
                .then(|| datagram_transcript(profile, suite, backends[0], backends[0]));
            if let (Some(got), Some(expected)) = (&datagram, datagram_vector_prefix(profile, suite)) {
                let handshake = expected.len() - 1;
                assert!(
                    got[..handshake] == expected[..handshake],
                    "{profile:?}/{suite:?} datagram handshake: not spec/vectors"
                );
                assert!(
                    got[handshake] == expected[handshake],
                    "{profile:?}/{suite:?} first datagram: not spec/vectors"
                );
            }
            for &dev in &backends {
                for &host in &backends {
                    let what = format!("{profile:?}/{suite:?}, device {dev:?}, host {host:?}");
                    assert!(
                        stream_transcript(profile, suite, dev, host) == reference,
                        "stream bytes differ: {what}"
                    );
                    if let Some(datagram) = &datagram {
                        let got = datagram_transcript(profile, suite, dev, host);
                        assert!(&got == datagram, "datagram bytes differ: {what}");
                    }
                }
            }
        }
    }
}

/// "Wire overhead per stream frame: 2 (length) + 3 (header) + 16 (tag) = 21 bytes; per
/// datagram: 13 (type, index, counter) + 3 + 16 = 32 bytes (plus 4 per link packet when
/// fragmenting)."
#[test]
fn per_frame_overhead_is_what_the_readme_says() {
    let text = README.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(text.contains("Wire overhead per stream frame: 2 (length) + 3 (header) + 16 (tag) = 21 bytes"));
    assert!(
        text.contains("per datagram: 13 (type, index, counter) + 3 + 16 = 32 bytes (plus 4 per link packet")
    );
    let default = all_backends()[all_backends().len() - 1];
    for suite in CipherSuite::ALL {
        let (ic, rc) = configs(Profile::Ik, suite, default, default, false);
        // No automatic REKEY frame among the ones measured.
        let rc = rc.params(SessionParams::default());
        let mut d = Handshake::initiator(ic).unwrap();
        let mut h = Handshake::responder(rc).unwrap();
        let mut wire = BytesMut::new();
        let mut decoder = StreamDecoder::new(65535);
        while !(d.is_finished() && h.is_finished()) {
            let (w, r) = if d.wants_write() { (&mut d, &mut h) } else { (&mut h, &mut d) };
            w.write_message(&mut wire).unwrap();
            r.read_message(&decoder.decode(&mut wire).unwrap().unwrap()).unwrap();
        }
        let mut d = d.into_session().unwrap();
        for len in [0usize, 1, 13, 1000] {
            d.seal_data(1, &vec![0x42; len], &mut wire).unwrap();
            // Only the length is in the clear.
            let frame_len = 2 + u16::from_be_bytes([wire[0], wire[1]]) as usize;
            assert_eq!(frame_len, wire.len(), "one frame");
            assert_eq!(frame_len - len, 21, "{suite:?}, {len}-byte payload");
            wire.clear();
        }
        let packets = datagram_transcript(Profile::Ik, suite, default, default);
        for (packet, len) in packets[2..].iter().zip([5usize, 7, 21]) {
            assert_eq!(packet.len() - len, 32, "{suite:?} datagram, {len}-byte payload");
        }
    }
    // Fragmenting: each link packet carries a 4-byte header (spec/vectors/fragments_mtu20.json).
    let v = vector("fragments_mtu20.json");
    let hex_len = |v: &Value| v.as_str().unwrap().len() / 2;
    let fragments = v["fragments"].as_array().unwrap();
    let total: usize = fragments.iter().map(hex_len).sum();
    assert_eq!(total - hex_len(&v["datagram"]), 4 * fragments.len());
    assert!(fragments.iter().all(|f| hex_len(f) <= v["mtu"].as_u64().unwrap() as usize));
}

/// "Handshake bytes on the wire, total for both directions (from `spec/vectors`): IK ..., KK
/// ..., XX ..., XXpsk3 ...": the README's figures are those of the checked-in vectors (which
/// `tests/vectors.rs` proves are what the code sends), for both suites.
#[test]
fn handshake_byte_totals_in_the_readme_are_those_of_spec_vectors() {
    let text = README.split_whitespace().collect::<Vec<_>>().join(" ");
    let marker = "total for both directions (from `spec/vectors`): ";
    let start = text.find(marker).expect("the README quotes handshake byte totals") + marker.len();
    let quoted = &text[start..start + text[start..].find(" (").unwrap()];
    let quoted: Vec<(&str, usize)> = quoted
        .split(", ")
        .map(|item| {
            let (name, n) = item.split_once(' ').unwrap();
            (name, n.parse().unwrap_or_else(|_| panic!("{item:?}")))
        })
        .collect();
    assert_eq!(quoted.len(), 4, "{quoted:?}");
    for (name, bytes) in quoted {
        for suite in ["chachapoly", "aesgcm"] {
            let v = vector(&format!("{}_{suite}.json", name.to_ascii_lowercase()));
            let total: usize = v["frames"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["phase"] == "handshake")
                .map(|f| f["wire"].as_str().unwrap().len() / 2)
                .sum();
            assert_eq!(
                total,
                bytes,
                "README says {name} {bytes}, spec/vectors/{}_{suite}.json has {total}",
                name.to_ascii_lowercase()
            );
        }
    }
}
