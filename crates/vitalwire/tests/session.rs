//! Sessions: round trips, rekeying, PING/PONG, CLOSE, and every kind of bad input.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use proptest::prelude::*;
use vitalwire::*;

fn data(channel: u8, p: &'static [u8]) -> Result<Incoming, Error> {
    Ok(Incoming::Data { channel, payload: Bytes::from_static(p) })
}

#[test]
fn frames_on_several_channels_round_trip_in_both_directions() {
    let (mut dev, mut host) = session_pair();
    let mut wire = BytesMut::new();
    dev.seal_data(1, b"HR=72", &mut wire).unwrap();
    dev.seal_data(2, &[0u8; 0], &mut wire).unwrap();
    dev.seal_data(255, b"ALARM", &mut wire).unwrap();
    assert_eq!(wire.len(), 3 * (2 + 19) + 10, "2 + 19 bytes of overhead per frame");
    assert_eq!(open_all(&mut host, &mut wire), vec![data(1, b"HR=72"), data(2, b""), data(255, b"ALARM")]);
    host.seal_data(9, b"config", &mut wire).unwrap();
    assert_eq!(open_all(&mut dev, &mut wire), vec![data(9, b"config")]);
    assert_eq!(dev.stats().frames_sent, 3);
    assert_eq!(dev.stats().frames_received, 1);
}

#[test]
fn automatic_rekey_keeps_both_sides_in_step() {
    let params = SessionParams { max_frame_len: 1024, rekey_interval: 4, ..SessionParams::default() };
    let (mut dev, mut host) = session_pair_with(Profile::Xx, CipherSuite::AesGcmSha256, params);
    let mut wire = BytesMut::new();
    for i in 0..20u8 {
        dev.seal_data(1, &[i], &mut wire).unwrap();
    }
    let got = open_all(&mut host, &mut wire);
    let rekeys = got.iter().filter(|r| **r == Ok(Incoming::Rekeyed)).count();
    let datas: Vec<_> = got
        .iter()
        .filter_map(|r| match r {
            Ok(Incoming::Data { payload, .. }) => Some(payload[0]),
            _ => None,
        })
        .collect();
    assert_eq!(datas, (0..20).collect::<Vec<_>>());
    assert_eq!(rekeys, 6, "a REKEY as every 4th frame");
    assert_eq!(dev.stats().rekeys_sent, 6);
    assert_eq!(host.stats().rekeys_received, 6);
}

#[test]
fn on_demand_rekey_changes_the_key() {
    let (mut dev, mut host) = session_pair();
    let mut a = BytesMut::new();
    dev.seal_data(1, b"same", &mut a).unwrap();
    dev.rekey(&mut a).unwrap();
    let mut b = BytesMut::new();
    dev.seal_data(1, b"same", &mut b).unwrap();
    let mut all = a.clone();
    all.extend_from_slice(&b);
    assert_eq!(
        open_all(&mut host, &mut all),
        vec![data(1, b"same"), Ok(Incoming::Rekeyed), data(1, b"same")]
    );
}

#[test]
fn a_peer_that_never_rekeys_is_cut_off() {
    let params = SessionParams { max_frame_len: 1024, rekey_interval: 4, ..SessionParams::default() };
    let (mut dev, mut host) = session_pair_with(Profile::Ik, CipherSuite::default(), params);
    let mut wire = BytesMut::new();
    for _ in 0..4 {
        // Bypasses the automatic rekey, as a broken peer would.
        dev.seal_raw_for_testing_only(1, 0, 1, b"x", &mut wire).unwrap();
    }
    let got = open_all(&mut host, &mut wire);
    assert_eq!(got[3], Err(Error::Protocol(ProtocolError::RekeyOverdue)));
}

#[test]
fn ping_is_answered_with_pong() {
    let (mut dev, mut host) = session_pair();
    let mut wire = BytesMut::new();
    dev.send_ping(*b"12345678", &mut wire).unwrap();
    assert_eq!(open_all(&mut host, &mut wire), vec![Ok(Incoming::Ping)]);
    assert!(host.poll_transmit(&mut wire));
    assert!(!host.poll_transmit(&mut wire), "one PONG per PING");
    assert_eq!(open_all(&mut dev, &mut wire), vec![Ok(Incoming::Pong(*b"12345678"))]);
}

#[test]
fn close_handshake_then_clean_end_of_stream() {
    let (mut dev, mut host) = session_pair();
    let mut wire = BytesMut::new();
    dev.seal_data(1, b"last", &mut wire).unwrap();
    dev.close(CloseCode::NORMAL, &mut wire).unwrap();
    assert_eq!(dev.seal_data(1, b"more", &mut wire), Err(Error::Closed));
    assert_eq!(
        open_all(&mut host, &mut wire),
        vec![data(1, b"last"), Ok(Incoming::Closed(CloseCode::NORMAL))]
    );
    assert_eq!(host.seal_data(1, b"x", &mut wire), Err(Error::ClosedByPeer(CloseCode::NORMAL)));
    assert!(host.poll_transmit(&mut wire), "the host answers the CLOSE");
    assert_eq!(open_all(&mut dev, &mut wire), vec![Ok(Incoming::Closed(CloseCode::NORMAL))]);
    assert!(dev.is_closed() && host.is_closed());
    assert_eq!(dev.handle_eof(), Ok(()));
    assert_eq!(host.handle_eof(), Ok(()));
}

#[test]
fn a_stream_that_ends_without_close_is_truncated() {
    let (mut dev, mut host) = session_pair();
    let mut wire = BytesMut::new();
    dev.seal_data(1, b"partial", &mut wire).unwrap();
    assert_eq!(open_all(&mut host, &mut wire), vec![data(1, b"partial")]);
    assert_eq!(host.handle_eof(), Err(Error::Truncated));
    assert_eq!(host.open(BytesMut::from(&[0u8; 30][..])), Err(Error::Truncated), "sticks");
    // A stream cut inside a frame is reported by the decoder.
    let mut wire = BytesMut::new();
    dev.seal_data(1, b"cut", &mut wire).unwrap();
    wire.truncate(wire.len() - 1);
    let mut dec = StreamDecoder::new(1024);
    assert_eq!(dec.decode(&mut wire), Ok(None));
    assert!(matches!(dec.finish(&wire), Err(DecodeError::IncompleteFrame { .. })));
}

#[test]
fn tampering_fails_closed_sticks_and_tells_the_peer() {
    let (mut dev, mut host) = session_pair();
    let mut wire = BytesMut::new();
    dev.seal_data(1, b"HR=72", &mut wire).unwrap();
    dev.seal_data(1, b"HR=73", &mut wire).unwrap();
    wire[5] ^= 0x01;
    let got = open_all(&mut host, &mut wire);
    assert_eq!(got, vec![Err(Error::AuthenticationFailed), Err(Error::AuthenticationFailed)]);
    assert_eq!(host.error(), Some(Error::AuthenticationFailed));
    assert_eq!(host.seal_data(1, b"x", &mut BytesMut::new()), Err(Error::AuthenticationFailed));
    let mut back = BytesMut::new();
    assert!(host.poll_transmit(&mut back), "a CLOSE with the reason is queued");
    assert_eq!(open_all(&mut dev, &mut back), vec![Ok(Incoming::Closed(CloseCode::AUTHENTICATION_FAILED))]);
}

#[test]
fn replayed_and_reordered_frames_are_rejected() {
    let (mut dev, mut host) = session_pair();
    let mut f1 = BytesMut::new();
    dev.seal_data(1, b"one", &mut f1).unwrap();
    let mut f2 = BytesMut::new();
    dev.seal_data(1, b"two", &mut f2).unwrap();
    let mut replay = f1.clone();
    replay.extend_from_slice(&f1);
    assert_eq!(open_all(&mut host, &mut replay), vec![data(1, b"one"), Err(Error::AuthenticationFailed)]);

    let (mut dev, mut host) = session_pair();
    let mut f1 = BytesMut::new();
    dev.seal_data(1, b"one", &mut f1).unwrap();
    let mut f2 = BytesMut::new();
    dev.seal_data(1, b"two", &mut f2).unwrap();
    f2.extend_from_slice(&f1);
    assert_eq!(open_all(&mut host, &mut f2)[0], Err(Error::AuthenticationFailed));
}

#[test]
fn authentic_frames_that_break_the_rules() {
    // Unknown kind: discarded, session goes on.
    let (mut dev, mut host) = session_pair();
    let mut wire = BytesMut::new();
    dev.seal_raw_for_testing_only(0x42, 0, 0, b"future", &mut wire).unwrap();
    dev.seal_data(1, b"ok", &mut wire).unwrap();
    assert_eq!(open_all(&mut host, &mut wire), vec![Err(Error::UnknownFrameKind(0x42)), data(1, b"ok")]);
    // Reserved flags, channel on a control frame, malformed control payloads: fatal.
    for (kind, flags, channel, payload, err) in [
        (1u8, 0x02u8, 0u8, &b""[..], ProtocolError::ReservedFlags(2)),
        (2, 0, 7, &b"12345678"[..], ProtocolError::ChannelOnControlFrame),
        (2, 0, 0, &b"short"[..], ProtocolError::BadControlPayload(2)),
        (4, 0, 0, &b"x"[..], ProtocolError::BadControlPayload(4)),
        (5, 0, 0, &b""[..], ProtocolError::BadControlPayload(5)),
    ] {
        let (mut dev, mut host) = session_pair();
        let mut wire = BytesMut::new();
        dev.seal_raw_for_testing_only(kind, flags, channel, payload, &mut wire).unwrap();
        assert_eq!(open_all(&mut host, &mut wire), vec![Err(Error::Protocol(err))]);
        assert_eq!(host.error(), Some(Error::Protocol(err)));
    }
    // A frame after the peer's CLOSE.
    let (mut dev, mut host) = session_pair();
    let mut wire = BytesMut::new();
    dev.close(CloseCode::GOING_AWAY, &mut wire).unwrap();
    dev.seal_raw_for_testing_only(1, 0, 1, b"late", &mut wire).unwrap();
    let got = open_all(&mut host, &mut wire);
    assert_eq!(got[1], Err(Error::Protocol(ProtocolError::FrameAfterClose)));
}

#[test]
fn oversized_frames_and_payloads() {
    let params = SessionParams { max_frame_len: 256, rekey_interval: 1000, ..SessionParams::default() };
    let (mut dev, mut host) = session_pair_with(Profile::Ik, CipherSuite::default(), params);
    // The host accepts frames up to 256 bytes; the device may not send more.
    let mut wire = BytesMut::new();
    assert_eq!(dev.seal_data(1, &[0; 238], &mut wire), Err(Error::PayloadTooLarge { len: 238, max: 237 }));
    assert!(wire.is_empty() && dev.can_send(), "non-fatal, nothing written");
    dev.seal_data(1, &[0; 237], &mut wire).unwrap();
    assert_eq!(open_all(&mut host, &mut wire).len(), 1);
    // A length prefix above the maximum is refused by the decoder before buffering.
    let mut dec = StreamDecoder::new(host.max_frame_len());
    let mut evil = BytesMut::from(&[0x01, 0x01][..]);
    assert_eq!(dec.decode(&mut evil), Err(DecodeError::FrameTooLarge { len: 257, max: 256 }));
    // A frame too short to hold a header and tag.
    assert!(matches!(
        host.open(BytesMut::from(&[0u8; 18][..])),
        Err(Error::Decode(DecodeError::FrameTooShort { .. }))
    ));
    assert!(host.is_closed());
}

#[test]
fn nonce_exhaustion_is_an_error_never_a_reuse() {
    let (mut dev, _host) = session_pair();
    dev.set_send_nonce_for_testing_only(u64::MAX - 1);
    let mut wire = BytesMut::new();
    dev.seal_data(1, b"last one", &mut wire).unwrap();
    let before = wire.len();
    assert_eq!(dev.seal_data(1, b"one too many", &mut wire), Err(Error::NonceExhausted));
    assert_eq!(wire.len(), before, "nothing half-written");
    assert_eq!(dev.seal_data(1, b"again", &mut wire), Err(Error::NonceExhausted));
    assert!(!dev.poll_transmit(&mut wire), "no nonce left for a CLOSE");
}

#[test]
fn debug_output_has_no_secrets() {
    let (dev, _) = session_pair();
    let text = format!("{dev:?}");
    assert!(text.contains("Session") && !text.contains("key: ["));
    let k = keys();
    let cfg = initiator_config(Profile::XxPsk3, CipherSuite::default(), &k);
    let text = format!("{cfg:?}");
    assert!(!text.contains("3333") && !text.contains("51, 51"), "{text}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_payload_and_channel_round_trips(
        channel in any::<u8>(),
        payload in proptest::collection::vec(any::<u8>(), 0..2000),
        aes in any::<bool>(),
    ) {
        let suite = if aes { CipherSuite::AesGcmSha256 } else { CipherSuite::ChaChaPolyBlake2s };
        let (mut dev, mut host) = session_pair_with(Profile::Kk, suite, SessionParams::default());
        let mut wire = BytesMut::new();
        dev.seal_data(channel, &payload, &mut wire).unwrap();
        let got = open_all(&mut host, &mut wire);
        prop_assert_eq!(got, vec![Ok(Incoming::Data { channel, payload: Bytes::from(payload) })]);
    }

    #[test]
    fn any_single_bit_flip_in_a_sealed_frame_is_rejected(
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        bit in any::<proptest::sample::Index>(),
    ) {
        let (mut dev, mut host) = session_pair();
        let mut wire = BytesMut::new();
        dev.seal_data(1, &payload, &mut wire).unwrap();
        let bit = bit.index(wire.len() * 8);
        wire[bit / 8] ^= 1 << (bit % 8);
        let mut dec = StreamDecoder::new(host.max_frame_len());
        // A flip in the length prefix gives a frame of the wrong length (an error or an
        // incomplete frame); anywhere else, authentication fails.
        let outcome = match dec.decode(&mut wire) {
            Err(_) | Ok(None) => None,
            Ok(Some(frame)) => Some(host.open(frame)),
        };
        match outcome {
            None => {}
            Some(r) => prop_assert!(r.is_err(), "flipped bit {} accepted", bit),
        }
    }
}

/// The slice-based receive path (`StreamDecoder::frame_len` + `Session::open_in_place`) gives
/// the same results as the `BytesMut` one, for every kind of frame, fragmented messages
/// included, and fails closed the same way.
#[test]
fn open_in_place_on_a_plain_buffer_matches_open() {
    let params = SessionParams { max_frame_len: 64, max_message_len: 1000, ..SessionParams::default() };
    let (mut dev, mut host) = session_pair_with(Profile::Ik, CipherSuite::AesGcmSha256, params);
    let mut wire = BytesMut::new();
    dev.seal_data(2, b"HR=72", &mut wire).unwrap();
    dev.send_ping(*b"12345678", &mut wire).unwrap();
    let long: Vec<u8> = (0..300u16).map(|i| i as u8).collect();
    dev.seal_message(5, &long, &mut wire).unwrap();
    dev.rekey(&mut wire).unwrap();
    dev.seal_data(3, b"after rekey", &mut wire).unwrap();
    dev.close(CloseCode::NORMAL, &mut wire).unwrap();

    // A fixed receive buffer, as firmware would have.
    let mut rx = [0u8; 2048];
    rx[..wire.len()].copy_from_slice(&wire);
    let mut filled = wire.len();
    let dec = StreamDecoder::new(host.max_frame_len());
    let mut got: Vec<String> = Vec::new();
    while let Some(len) = dec.frame_len(&rx[..filled]).unwrap() {
        let body = &mut rx[2..2 + len];
        got.push(match host.open_in_place(body).unwrap() {
            IncomingRef::Data { channel, payload } if payload == &long[..] => format!("data {channel} long"),
            IncomingRef::Data { channel, payload } => {
                format!("data {channel} {}", String::from_utf8_lossy(payload))
            }
            other => format!("{other:?}"),
        });
        rx.copy_within(2 + len..filled, 0);
        filled -= 2 + len;
    }
    assert_eq!(filled, 0);
    let pieces = got.iter().filter(|g| *g == "Fragment").count();
    assert!(pieces >= 2, "{got:?}");
    let rest: Vec<&str> = got.iter().map(String::as_str).filter(|g| *g != "Fragment").collect();
    assert_eq!(
        rest,
        [
            "data 2 HR=72",
            "Ping",
            "data 5 long",
            "Rekeyed",
            "data 3 after rekey",
            "Closed(CloseCode(0x0000 normal))"
        ]
    );
    assert!(host.poll_transmit(&mut BytesMut::new()), "PONG and CLOSE answer queued");

    // Tampering fails closed and sticks, as with `open`.
    let (mut dev, mut host) = session_pair();
    let mut wire = BytesMut::new();
    dev.seal_data(1, b"x", &mut wire).unwrap();
    dev.seal_data(1, b"y", &mut wire).unwrap();
    let mut frame = wire.to_vec();
    frame[5] ^= 0x80;
    let len = StreamDecoder::new(host.max_frame_len()).frame_len(&frame).unwrap().unwrap();
    assert_eq!(host.open_in_place(&mut frame[2..2 + len]), Err(Error::AuthenticationFailed));
    let mut next = wire[2 + len..].to_vec();
    assert_eq!(host.open_in_place(&mut next[2..]), Err(Error::AuthenticationFailed));
    assert_eq!(host.security_counters().authentication_failures, 1);
}

/// The transport AEAD backends are interchangeable on the wire: a device on the portable
/// (no_std) code talks to a host on ring, both suites, both directions.
#[test]
fn portable_and_ring_transport_backends_interoperate() {
    for suite in CipherSuite::ALL {
        let k = keys();
        let i = Handshake::initiator(
            initiator_config(Profile::Ik, suite, &k).cipher_backend(vitalwire::cipher::Backend::Portable),
        )
        .unwrap();
        let r = Handshake::responder(responder_config(&k, SessionParams::default())).unwrap();
        let (i, r) = run_handshake(i, r).unwrap();
        let (mut dev, mut host) = (i.into_session().unwrap(), r.into_session().unwrap());
        let mut wire = BytesMut::new();
        dev.seal_data(1, b"portable", &mut wire).unwrap();
        dev.rekey(&mut wire).unwrap();
        dev.seal_data(1, b"after rekey", &mut wire).unwrap();
        let got = open_all(&mut host, &mut wire);
        assert_eq!(got.len(), 3, "{suite}");
        assert_eq!(got[0], data(1, b"portable"));
        assert_eq!(got[2], data(1, b"after rekey"));
        host.seal_data(2, b"ring", &mut wire).unwrap();
        assert_eq!(open_all(&mut dev, &mut wire), vec![data(2, b"ring")]);
    }
}

/// Every way a secret or a payload could be spelled in an event's text.
fn spellings(secret: &[u8]) -> Vec<String> {
    let head = &secret[..secret.len().min(8)];
    vec![
        hex::encode(secret),
        hex::encode_upper(secret),
        format!("{head:?}").trim_end_matches(']').to_string(),
        head.iter().map(|b| format!("{b:#04x}")).collect::<Vec<_>>().join(", "),
    ]
}

/// Security events from real, decrypted traffic and from failures whose frames carry payload
/// bytes (an unknown kind, reserved flags, a tampered frame, an oversized send, a fragmented
/// message, a wrong PSK): neither the payload nor any key (static keys, PSK, handshake hash)
/// appears in any event's `Debug` (plain or pretty) or JSON (with the `serde` feature, as in
/// `cargo test --workspace`).
#[test]
fn events_carry_no_secrets_or_payload() {
    const PAYLOAD: &[u8] = b"PATIENT-SECRET:HR=72;SpO2=98";
    let k = keys();
    let params = SessionParams { max_frame_len: 256, rekey_interval: 8, ..SessionParams::default() };
    let mut events = Vec::new();
    let mut secrets: Vec<Vec<u8>> = vec![
        PAYLOAD.to_vec(),
        k.device.private().expose_secret().to_vec(),
        k.host.private().expose_secret().to_vec(),
        k.psk.expose_secret().to_vec(),
    ];
    let poll = |s: &mut Session, events: &mut Vec<SecurityEvent>| {
        events.extend(std::iter::from_fn(|| s.poll_event(Timestamp(1_700_000_000_000))))
    };
    for profile in [Profile::XxPsk3, Profile::Ik] {
        // Real traffic, decrypted: DATA, a fragmented message, automatic rekeys, a close.
        let (mut dev, mut host) = session_pair_with(profile, CipherSuite::default(), params);
        secrets.push(dev.handshake_hash().to_vec());
        let mut wire = BytesMut::new();
        let long: Vec<u8> = PAYLOAD.iter().copied().cycle().take(1000).collect();
        for _ in 0..3 {
            dev.seal_data(1, PAYLOAD, &mut wire).unwrap();
        }
        dev.seal_message(2, &long, &mut wire).unwrap();
        let got = open_all(&mut host, &mut wire);
        let delivered: Vec<Vec<u8>> = got
            .iter()
            .filter_map(|r| match r {
                Ok(Incoming::Data { payload, .. }) => Some(payload.to_vec()),
                _ => None,
            })
            .collect();
        assert_eq!(delivered, vec![PAYLOAD.to_vec(), PAYLOAD.to_vec(), PAYLOAD.to_vec(), long.clone()]);
        // Refused locally: a payload above the peer's limit.
        assert!(dev.seal_data(1, &[PAYLOAD; 20].concat(), &mut wire).is_err());
        // Authentic frames carrying the payload that the host discards or refuses.
        dev.seal_raw_for_testing_only(0x77, 0, 3, PAYLOAD, &mut wire).unwrap();
        dev.seal_raw_for_testing_only(1, 0x40, 1, PAYLOAD, &mut wire).unwrap();
        let got = open_all(&mut host, &mut wire);
        assert_eq!(
            got,
            vec![Err(Error::UnknownFrameKind(0x77)), Err(ProtocolError::ReservedFlags(0x40).into())]
        );
        // The device hears the host's CLOSE, then the stream ends: truncated on the host.
        host.poll_transmit(&mut wire);
        assert!(matches!(open_all(&mut dev, &mut wire)[..], [Ok(Incoming::Closed(_))]));
        poll(&mut dev, &mut events);
        poll(&mut host, &mut events);

        // A tampered frame carrying the payload, then a stream cut without CLOSE.
        let (mut dev, mut host) = session_pair_with(profile, CipherSuite::AesGcmSha256, params);
        secrets.push(dev.handshake_hash().to_vec());
        dev.seal_data(1, PAYLOAD, &mut wire).unwrap();
        assert_eq!(
            open_all(&mut host, &mut wire),
            vec![Ok(Incoming::Data { channel: 1, payload: PAYLOAD.to_vec().into() })]
        );
        dev.seal_data(1, PAYLOAD, &mut wire).unwrap();
        let last = wire.len() - 1;
        wire[last] ^= 1;
        assert_eq!(open_all(&mut host, &mut wire), vec![Err(Error::AuthenticationFailed)]);
        assert_eq!(dev.handle_eof(), Err(Error::Truncated));
        poll(&mut dev, &mut events);
        poll(&mut host, &mut events);
    }
    // A handshake that fails: the device holds the wrong PSK.
    let wrong = Psk::from_bytes(*b"WRONG-PSK-0123456789abcdefghijkl");
    secrets.push(wrong.expose_secret().to_vec());
    let cfg = InitiatorConfig::new(Profile::XxPsk3, k.device.clone(), identity()).psk(PSK_ID, wrong);
    // Driven by hand to keep both sides' events.
    let mut i = Handshake::initiator(cfg).unwrap();
    let mut r = Handshake::responder(responder_config(&k, SessionParams::default())).unwrap();
    let mut wire = BytesMut::new();
    for _ in 0..3 {
        if i.wants_write() && i.write_message(&mut wire).is_ok() {
            let _ = r.read_message(&one_frame(&mut wire));
        }
        if r.wants_write() && r.write_message(&mut wire).is_ok() {
            let _ = i.read_message(&one_frame(&mut wire));
        }
    }
    assert!(i.error().is_some() || r.error().is_some(), "the wrong PSK was refused");
    for h in [&mut i, &mut r] {
        events.extend(std::iter::from_fn(|| h.poll_event(Timestamp(1))));
    }

    // Every kind these failures must produce was seen, so the search below covers them.
    let names: std::collections::BTreeSet<&str> = events.iter().map(|e| e.kind.name()).collect();
    for expected in [
        "session_established",
        "unknown_frame_kind",
        "protocol_violation",
        "limit_exceeded",
        "rekeyed",
        "session_closed",
        "authentication_failure",
        "truncated",
        "handshake_failed",
    ] {
        assert!(names.contains(expected), "no {expected} event in {names:?}");
    }
    let needles: Vec<String> = secrets
        .iter()
        .flat_map(|s| spellings(s))
        .chain(["PATIENT", "Psk(", "PrivateKey", "Keypair"].map(String::from))
        .collect();
    let leaks = |text: &str| needles.iter().find(|n| text.contains(n.as_str())).cloned();
    // The detector itself finds what it looks for.
    assert!(
        leaks(&format!("{:?}", PAYLOAD)).is_some() && leaks(&hex::encode(k.psk.expose_secret())).is_some()
    );
    for e in &events {
        #[cfg(feature = "serde")]
        let json = e.to_json_line();
        #[cfg(not(feature = "serde"))]
        let json = String::new();
        for text in [format!("{e:?}"), format!("{e:#?}"), json] {
            assert_eq!(leaks(&text), None, "secret in {text}");
        }
    }
}
