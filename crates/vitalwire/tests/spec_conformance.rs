//! Rules of spec/PROTOCOL.md that were once ambiguous or contradicted by the code, each
//! checked the way a peer would meet it on the wire. The section is named in each test.

mod common;

use bytes::BytesMut;
use common::*;
use vitalwire::fragment::FragmentHeader;
use vitalwire::frame::FLAG_FRAGMENT;
use vitalwire::*;

fn responder() -> Handshake {
    Handshake::responder(responder_config(&keys(), SessionParams::default())).unwrap()
}

/// The one frame a failed responder sends, as a body.
fn reply_of(r: &mut Handshake) -> BytesMut {
    assert!(r.wants_write(), "a reply is queued");
    let mut out = BytesMut::new();
    r.write_message(&mut out).unwrap();
    assert!(!r.wants_write());
    one_frame(&mut out)
}

/// §4.1: a first frame that is not a HELLO (a HANDSHAKE, a REJECT, an unknown type) is
/// answered with REJECT `malformed`, like a HELLO too short to parse.
#[test]
fn a_first_frame_that_is_not_a_hello_gets_reject_malformed() {
    for body in [&b"\x02\x00\x01\x02"[..], b"\x03\x01\x05", b"\x02", b"\x7f\x01"] {
        let mut r = responder();
        assert!(r.read_message(body).is_err(), "{body:02x?}");
        assert_eq!(&reply_of(&mut r)[..], &[0x03, 0x01, 0x05], "{body:02x?}: REJECT malformed");
    }
}

fn expect_identity_refused(profile: Profile, identity_bytes: Vec<u8>) {
    // The real device key seals an identity payload that breaks §4.5.1.
    let k = keys();
    let config =
        initiator_config(profile, CipherSuite::default(), &k).raw_identity_for_testing_only(identity_bytes);
    let i = Handshake::initiator(config).unwrap();
    let mut r = responder();
    let (mut i, mut wire) = (i, BytesMut::new());
    let mut result = Ok(());
    while result.is_ok() && !(i.is_finished() && r.is_finished()) {
        if i.wants_write() {
            i.write_message(&mut wire).unwrap();
            result = r.read_message(&one_frame(&mut wire));
        } else {
            r.write_message(&mut wire).unwrap();
            i.read_message(&one_frame(&mut wire)).unwrap();
        }
    }
    assert_eq!(result, Err(Error::Decode(DecodeError::InvalidField(0x01))), "{profile}");
    let events: Vec<_> = core::iter::from_fn(|| r.poll_event(Timestamp(1))).collect();
    assert!(events.iter().all(|e| e.device_id.is_none()), "{profile}: the bad id is never logged");
    assert!(events.iter().any(|e| matches!(e.kind, EventKind::HandshakeFailed { .. })), "{profile}");
    let reply = reply_of(&mut r);
    if profile.message_count() == 2 {
        assert_eq!(&reply[..], &[0x03, 0x01, 0x05], "{profile}: REJECT malformed");
    } else {
        let mut dev = i.into_session().unwrap();
        assert_eq!(dev.open(reply), Ok(Incoming::Closed(CloseCode::PROTOCOL_ERROR)), "{profile}");
    }
}

/// §4.5.1: device ids (and model, firmware) with control characters are refused by the host,
/// with the same answer in every profile as any identity that breaks the rules.
#[test]
fn identities_with_control_characters_are_refused_by_the_host() {
    for profile in Profile::ALL {
        for id in [&b"PM-1\nsession_established PM-2"[..], b"PM\x1b[2J", b"", &[b'x'; 65]] {
            let mut payload = vec![1, 1, 1, id.len() as u8];
            payload.extend_from_slice(id);
            payload.extend_from_slice(&[4, 2, 0x10, 0]);
            expect_identity_refused(profile, payload);
        }
    }
}

fn fragmented_pair(max_frame_len: u16) -> (Session, Session) {
    let params = SessionParams { max_frame_len, ..SessionParams::default() };
    session_pair_with(Profile::Xx, CipherSuite::default(), params)
}

fn piece(id: u16, index: u8, count: u8, bytes: &[u8]) -> Vec<u8> {
    [&FragmentHeader { message_id: id, index, count }.encode()[..], bytes].concat()
}

/// Sends raw DATA|FRAGMENT frames from the device and returns what the host made of each.
fn feed(pieces: &[Vec<u8>]) -> Vec<Result<Incoming, Error>> {
    let (mut dev, mut host) = fragmented_pair(1024);
    let mut wire = BytesMut::new();
    for p in pieces {
        dev.seal_raw_for_testing_only(0x01, FLAG_FRAGMENT, 4, p, &mut wire).unwrap();
    }
    open_all(&mut host, &mut wire)
}

const BAD: Result<Incoming, Error> = Err(Error::Protocol(ProtocolError::BadFragment));

/// §5.4: on a stream the pieces of a message come in index order, numbered by message from 0,
/// at least two, never repeated; anything else is fatal (never a silent drop or a second copy).
#[test]
fn stream_fragments_follow_the_numbering_rules() {
    let a = [7u8; 100];
    // Well formed: messages 0 and 1, two and three pieces.
    let good = feed(&[
        piece(0, 0, 2, &a),
        piece(0, 1, 2, &a[..5]),
        piece(1, 0, 3, &a),
        piece(1, 1, 3, &a),
        piece(1, 2, 3, &a[..1]),
    ]);
    assert_eq!(good[0], Ok(Incoming::Fragment));
    assert!(matches!(&good[1], Ok(Incoming::Data { channel: 4, payload }) if payload.len() == 105));
    assert!(matches!(&good[4], Ok(Incoming::Data { payload, .. }) if payload.len() == 201));
    // Out of order.
    assert_eq!(feed(&[piece(0, 1, 2, &a), piece(0, 0, 2, &a)])[0], BAD);
    // Not numbered from 0, or skipping a number.
    assert_eq!(feed(&[piece(5, 0, 2, &a)])[0], BAD);
    assert_eq!(feed(&[piece(0, 0, 2, &a), piece(0, 1, 2, &a), piece(2, 0, 2, &a)])[2], BAD);
    // A single piece is not a fragmented message.
    assert_eq!(feed(&[piece(0, 0, 1, &a)])[0], BAD);
    // A new message while one is incomplete (the old code dropped the first silently).
    assert_eq!(feed(&[piece(0, 0, 3, &a), piece(1, 0, 2, &a)])[1], BAD);
    // The same piece twice (the old code accepted the copy).
    assert_eq!(feed(&[piece(0, 0, 3, &a), piece(0, 0, 3, &a)])[1], BAD);
    // A different count within a message.
    assert_eq!(feed(&[piece(0, 0, 3, &a), piece(0, 1, 2, &a)])[1], BAD);
    // A piece longer than the first (pieces but the last share one length).
    assert_eq!(feed(&[piece(0, 0, 3, &a[..50]), piece(0, 1, 3, &a)])[1], BAD);
    // An empty piece.
    assert_eq!(feed(&[piece(0, 0, 2, &a), piece(0, 1, 2, &[])])[1], BAD);
    // A piece on another channel than the first.
    let (mut dev, mut host) = fragmented_pair(1024);
    let mut wire = BytesMut::new();
    dev.seal_raw_for_testing_only(0x01, FLAG_FRAGMENT, 4, &piece(0, 0, 2, &a), &mut wire).unwrap();
    dev.seal_raw_for_testing_only(0x01, FLAG_FRAGMENT, 5, &piece(0, 1, 2, &a), &mut wire).unwrap();
    assert_eq!(open_all(&mut host, &mut wire)[1], BAD);
}

/// §4.5.2 and §5.4: a host announces no more than 255 pieces of its frames carry, and a sender
/// can send exactly the announced maximum, not one byte more.
#[test]
fn the_announced_message_limit_is_reachable_and_enforced() {
    let params = SessionParams { max_frame_len: 1024, rekey_interval: 1 << 20, max_message_len: 4 << 20 };
    let (mut dev, mut host) = session_pair_with(Profile::Ik, CipherSuite::default(), params);
    let reachable = 255 * (1024 - 23);
    assert_eq!(dev.params().max_message_len, reachable, "clamped when announced");
    assert_eq!(host.params().max_message_len, reachable);
    let mut wire = BytesMut::new();
    let message: Vec<u8> = (0..reachable).map(|i| i as u8).collect();
    dev.seal_message(9, &message, &mut wire).unwrap();
    let got = open_all(&mut host, &mut wire);
    assert_eq!(got.len(), 255);
    assert!(
        matches!(got.last(), Some(Ok(Incoming::Data { channel: 9, payload })) if payload[..] == message[..])
    );
    let too_long = vec![0u8; reachable as usize + 1];
    assert_eq!(
        dev.seal_message(9, &too_long, &mut BytesMut::new()),
        Err(Error::PayloadTooLarge { len: too_long.len(), max: reachable as usize })
    );
    // A roomier host: the configured limit stands.
    let params = SessionParams { max_frame_len: 65535, rekey_interval: 1 << 20, max_message_len: 4 << 20 };
    let (dev, _) = session_pair_with(Profile::Ik, CipherSuite::default(), params);
    assert_eq!(dev.params().max_message_len, 4 << 20);
}

/// §5.3: the rekey rule comes before the unknown-kind rule: a frame of unknown kind still
/// consumes the key's budget, so at the boundary it is fatal, not discarded.
#[test]
fn an_unknown_kind_at_the_rekey_boundary_is_fatal() {
    let params = SessionParams { rekey_interval: 3, ..SessionParams::default() };
    let (mut dev, mut host) = session_pair_with(Profile::Xx, CipherSuite::default(), params);
    let mut wire = BytesMut::new();
    dev.seal_raw_for_testing_only(0x42, 0, 0, b"", &mut wire).unwrap();
    dev.seal_raw_for_testing_only(0x42, 0, 0, b"", &mut wire).unwrap();
    dev.seal_raw_for_testing_only(0x42, 0, 0, b"", &mut wire).unwrap();
    assert_eq!(
        open_all(&mut host, &mut wire),
        vec![
            Err(Error::UnknownFrameKind(0x42)),
            Err(Error::UnknownFrameKind(0x42)),
            Err(Error::Protocol(ProtocolError::RekeyOverdue))
        ]
    );
}

/// §5.4, the example: peer max_frame_len 64 gives pieces of 41 bytes; a 100-byte message is
/// three frames `0000 00 03`, `0000 01 03`, `0000 02 03` of 41, 41 and 18 bytes.
#[test]
fn the_fragmentation_example_of_the_spec() {
    let k = keys();
    let small = DeviceIdentity { max_frame_len: 64, ..identity() };
    let i = InitiatorConfig::new(Profile::Ik, k.device.clone(), small).host_key(*k.host.public());
    let r = responder_config(&k, SessionParams::default());
    let (i, r) = run_handshake(Handshake::initiator(i).unwrap(), Handshake::responder(r).unwrap()).unwrap();
    let (mut dev, mut host) = (i.into_session().unwrap(), r.into_session().unwrap());
    let message: Vec<u8> = (0..100).collect();
    let mut wire = BytesMut::new();
    host.seal_message(4, &message, &mut wire).unwrap();
    let mut dec = StreamDecoder::new(dev.max_frame_len());
    let mut seen = Vec::new();
    while let Some(mut frame) = dec.decode(&mut wire).unwrap() {
        let len = frame.len();
        let got = dev.open_in_place(&mut frame).map(|m| format!("{m:?}")).unwrap();
        seen.push((len, frame[..7].to_vec(), got));
    }
    assert_eq!(seen.len(), 3);
    for (n, (len, head, _)) in seen.iter().enumerate() {
        assert_eq!(head, &[0x01, 0x01, 0x04, 0x00, 0x00, n as u8, 0x03], "piece {n}");
        assert_eq!(*len, 3 + 4 + [41, 41, 18][n] + 16, "piece {n}");
    }
    assert!(seen[2].2.contains("Data"), "{:?}", seen[2].2);
}

/// §4.8 in datagram mode: a replayed IK HELLO gets its RESPONSE but counts as a handshake in
/// progress, is not reported, and is dropped at the handshake deadline; the genuine device's
/// first packet confirms its session.
#[test]
fn a_replayed_datagram_hello_is_dropped_at_the_handshake_deadline() {
    use vitalwire::datagram::*;
    let k = keys();
    let trust = trust(&k);
    let host_keys = k.host.clone();
    let mut host: DatagramHost<u8> = DatagramHost::new(
        Box::new(move || ResponderConfig::new(host_keys.clone(), trust.clone())),
        DatagramConfig::default(),
        HostLimits::default(),
        Box::new(OsEntropy),
    );
    let t0 = Timestamp(1_000);
    let ic = initiator_config(Profile::Ik, CipherSuite::default(), &k);
    let mut dev = DatagramHandshake::initiator(ic, 7, DatagramConfig::default(), t0).unwrap();
    let hello = dev.poll_transmit().unwrap();
    // The replay: the attacker (address 2) sends the recorded HELLO before the device does.
    host.handle_packet(2, BytesMut::from(&hello[..]), t0).unwrap();
    assert!(host.poll_transmit().is_some(), "answered with a RESPONSE");
    assert_eq!((host.session_count(), host.half_open_count()), (0, 1));
    let events: Vec<_> = core::iter::from_fn(|| host.poll_event()).collect();
    assert!(!events.iter().any(|e| matches!(e.kind, EventKind::SessionEstablished { .. })), "{events:?}");
    let deadline = Timestamp(t0.0 + DatagramConfig::default().handshake_timeout_ms);
    assert!(host.poll_timeout().is_some_and(|t| t <= deadline));
    host.handle_timeout(Timestamp(deadline.0 - 1));
    assert_eq!(host.half_open_count(), 1);
    host.handle_timeout(deadline);
    assert_eq!((host.session_count(), host.half_open_count()), (0, 0), "no slot held past the deadline");
    let events: Vec<_> = core::iter::from_fn(|| host.poll_event()).collect();
    assert!(!events.iter().any(|e| matches!(e.kind, EventKind::SessionEstablished { .. })));
    assert!(
        events.iter().any(|e| e.kind
            == EventKind::HandshakeFailed { reason: Error::Handshake(HandshakeError::NotConfirmed) }),
        "{events:?}"
    );

    // The genuine device, later: its first DATA confirms the session.
    let t1 = Timestamp(deadline.0 + 10);
    let ic = initiator_config(Profile::Ik, CipherSuite::default(), &k);
    let mut dev = DatagramHandshake::initiator(ic, 8, DatagramConfig::default(), t1).unwrap();
    let stale: Vec<_> = core::iter::from_fn(|| host.poll_transmit()).collect();
    assert!(stale.iter().all(|(to, _)| *to == 2), "only packets to the attacker: {stale:?}");
    host.handle_packet(1, BytesMut::from(&dev.poll_transmit().unwrap()[..]), t1).unwrap();
    let (to, response) = host.poll_transmit().unwrap();
    assert_eq!(to, 1);
    dev.handle_packet(&response, t1).unwrap();
    let mut session = dev.into_session(t1).unwrap();
    assert_eq!(host.session_count(), 0, "not before its first packet");
    let mut packet = BytesMut::new();
    session.seal_data(1, b"HR=72", t1, &mut packet).unwrap();
    host.handle_packet(1, packet, t1).unwrap();
    assert_eq!((host.session_count(), host.half_open_count()), (1, 0));
    let events: Vec<_> = core::iter::from_fn(|| host.poll_event()).collect();
    assert_eq!(events.iter().filter(|e| matches!(e.kind, EventKind::SessionEstablished { .. })).count(), 1);
}
