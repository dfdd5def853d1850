//! Checks vitalwire's Noise layer against the cacophony test vectors for all eight
//! profile/suite pairs: the handshake bytes (through the same snow setup vitalwire uses), the
//! handshake hash, and the transport bytes (through vitalwire's own transport cipher on the
//! split keys). The vectors are vendored in tests/data/cacophony.json (see its "source").

use serde_json::Value;
use vitalwire::cipher::{Backend, TransportCipher};
use vitalwire::testing::BareNoiseForTestingOnly;
use vitalwire::*;

fn hex_field(v: &Value, k: &str) -> Option<Vec<u8>> {
    v.get(k).and_then(Value::as_str).map(|s| hex::decode(s).unwrap())
}

fn private(v: &Value, k: &str) -> PrivateKey {
    PrivateKey::from_slice(&hex_field(v, k).unwrap()).unwrap()
}

fn public(v: &Value, k: &str) -> Option<PublicKey> {
    hex_field(v, k).map(|b| PublicKey::from_slice(&b).unwrap())
}

fn psk(v: &Value, k: &str) -> Option<Psk> {
    v.get(k)
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .map(|s| Psk::from_slice(&hex::decode(s).unwrap()).unwrap())
}

/// Every X25519 backend compiled in.
fn x25519_backends() -> Vec<x25519::Backend> {
    vec![
        x25519::Backend::Portable,
        #[cfg(feature = "aws-lc")]
        x25519::Backend::AwsLc,
    ]
}

#[test]
fn cacophony_vectors_for_all_eight_profile_suite_pairs_on_every_x25519_backend() {
    for backend in x25519_backends() {
        check_cacophony(backend);
    }
}

fn check_cacophony(backend: x25519::Backend) {
    let data: Value = serde_json::from_str(include_str!("data/cacophony.json")).unwrap();
    let vectors = data["vectors"].as_array().unwrap();
    let mut names: Vec<String> = Vec::new();
    for v in vectors {
        let name = v["protocol_name"].as_str().unwrap();
        names.push(name.to_string());
        let init_psk = psk(v, "init_psks");
        let resp_psk = psk(v, "resp_psks");
        let mut init = BareNoiseForTestingOnly::new(
            name,
            true,
            &hex_field(v, "init_prologue").unwrap(),
            &private(v, "init_static"),
            &private(v, "init_ephemeral"),
            public(v, "init_remote_static").as_ref(),
            init_psk.as_ref(),
            backend,
        )
        .unwrap();
        let mut resp = BareNoiseForTestingOnly::new(
            name,
            false,
            &hex_field(v, "resp_prologue").unwrap(),
            &private(v, "resp_static"),
            &private(v, "resp_ephemeral"),
            public(v, "resp_remote_static").as_ref(),
            resp_psk.as_ref(),
            backend,
        )
        .unwrap();
        let messages = v["messages"].as_array().unwrap();
        let mut i = 0;
        while !init.is_finished() {
            let m = &messages[i];
            let payload = hex_field(m, "payload").unwrap();
            let expected = hex_field(m, "ciphertext").unwrap();
            let (w, r) = if i % 2 == 0 { (&mut init, &mut resp) } else { (&mut resp, &mut init) };
            let ct = w.write(&payload).unwrap();
            assert_eq!(
                hex::encode(&ct),
                hex::encode(&expected),
                "{name} handshake message {i} ({backend:?})"
            );
            assert_eq!(r.read(&ct).unwrap(), payload, "{name} handshake message {i}");
            i += 1;
        }
        let (mut i_tx, mut i_rx, i_hash) = init.into_transport().unwrap();
        let (mut r_tx, mut r_rx, r_hash) = resp.into_transport().unwrap();
        assert_eq!(hex::encode(i_hash), v["handshake_hash"].as_str().unwrap(), "{name} handshake hash");
        assert_eq!(i_hash, r_hash);
        let transport = messages.len() - i;
        assert!(transport >= 3, "{name}: the vector carries transport messages");
        for (j, m) in messages.iter().enumerate().skip(i) {
            let payload = hex_field(m, "payload").unwrap();
            let expected = hex_field(m, "ciphertext").unwrap();
            let (tx, rx): (&mut TransportCipher, &mut TransportCipher) =
                if j % 2 == 0 { (&mut i_tx, &mut r_rx) } else { (&mut r_tx, &mut i_rx) };
            let mut buf = payload.clone();
            let tag = tx.seal_in_place(&[], &mut buf).unwrap();
            buf.extend_from_slice(&tag);
            assert_eq!(hex::encode(&buf), hex::encode(&expected), "{name} transport message {j}");
            let n = rx.open_in_place(&[], &mut buf).unwrap();
            assert_eq!(&buf[..n], &payload[..]);
        }
    }
    names.sort();
    let mut expected: Vec<String> = Vec::new();
    for p in Profile::ALL {
        for s in CipherSuite::ALL {
            expected.push(vitalwire::profile::noise_protocol_name(p, s));
        }
    }
    expected.sort();
    assert_eq!(names, expected, "one vector for each of the eight pairs");
}

/// Rekeying is not in cacophony; check it (and a long run of nonces) against snow's own
/// transport state, which implements Noise's REKEY() independently, on both of our backends.
#[test]
fn transport_and_rekey_match_snow_on_both_backends() {
    for (name, suite) in [
        ("Noise_NN_25519_ChaChaPoly_BLAKE2s", CipherSuite::ChaChaPolyBlake2s),
        ("Noise_NN_25519_AESGCM_SHA256", CipherSuite::AesGcmSha256),
    ] {
        let mut a = snow::Builder::new(name.parse().unwrap()).build_initiator().unwrap();
        let mut b = snow::Builder::new(name.parse().unwrap()).build_responder().unwrap();
        let mut buf = [0u8; 1024];
        let mut tmp = [0u8; 1024];
        let n = a.write_message(&[], &mut buf).unwrap();
        b.read_message(&buf[..n], &mut tmp).unwrap();
        let n = b.write_message(&[], &mut buf).unwrap();
        a.read_message(&buf[..n], &mut tmp).unwrap();
        let (k1, _) = a.dangerously_get_raw_split();
        let mut snow_tx = a.into_transport_mode().unwrap();
        let script: Vec<(bool, Vec<u8>)> =
            (0..60u32).map(|m| (m % 7 == 6, m.to_be_bytes().repeat(m as usize % 40))).collect();
        let mut reference = Vec::new();
        for (rekey, payload) in &script {
            if *rekey {
                snow_tx.rekey_outgoing();
            }
            let n = snow_tx.write_message(payload, &mut buf).unwrap();
            reference.push(buf[..n].to_vec());
        }
        for backend in [Backend::default(), Backend::Portable] {
            let mut ours = TransportCipher::with_backend(suite, backend, &k1);
            for (m, ((rekey, payload), expected)) in script.iter().zip(&reference).enumerate() {
                if *rekey {
                    ours.rekey();
                }
                let mut mine = payload.clone();
                let tag = ours.seal_in_place(&[], &mut mine).unwrap();
                mine.extend_from_slice(&tag);
                assert_eq!(&mine, expected, "{name} {backend:?} message {m}");
            }
        }
    }
}
