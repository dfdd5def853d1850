//! Security events: every kind of event is emitted when its cause happens, and a test that
//! misses a kind fails (it compares what it saw with `EventKind::NAMES`, which the core keeps
//! complete with an exhaustive match).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::BytesMut;
use common::*;
use vitalwire::datagram::{DatagramClient, DatagramConfig, DatagramHost, HostLimits};
use vitalwire::fragment::FragmentHeader;
use vitalwire::*;

fn device(seed: u8) -> Keypair {
    Keypair::from_private(PrivateKey::from_bytes([seed; 32]))
}

fn ik(device_keys: &Keypair, host_key: PublicKey, id: &str) -> Handshake {
    Handshake::initiator(
        InitiatorConfig::new(Profile::Ik, device_keys.clone(), DeviceIdentity::new(id)).host_key(host_key),
    )
    .unwrap()
}

fn responder_with(host: &Keypair, trust: Arc<dyn TrustPolicy>) -> Handshake {
    Handshake::responder(ResponderConfig::new(host.clone(), trust)).unwrap()
}

fn drain(events: &mut dyn FnMut(Timestamp) -> Option<SecurityEvent>) -> Vec<EventKind> {
    std::iter::from_fn(|| events(Timestamp(42))).map(|e| e.kind).collect()
}

/// Runs a handshake frame by frame until one side stops (failures included).
fn drive(mut i: Handshake, mut r: Handshake) -> Handshake {
    let mut wire = BytesMut::new();
    for _ in 0..4 {
        if i.wants_write() && i.write_message(&mut wire).is_ok() {
            let _ = r.read_message(&one_frame(&mut wire));
        }
        if r.wants_write() && r.write_message(&mut wire).is_ok() && !i.is_finished() {
            let _ = i.read_message(&one_frame(&mut wire));
        }
    }
    r
}

/// A datagram session (IK) between a client and a host, established.
fn datagram_pair() -> (DatagramClient, DatagramHost<u8>) {
    let k = keys();
    let trust = trust(&k);
    let host_keys = k.host.clone();
    let mut h = DatagramHost::new(
        Box::new(move || ResponderConfig::new(host_keys.clone(), trust.clone())),
        DatagramConfig::default(),
        HostLimits::default(),
        Box::new(OsEntropy),
    );
    let config = initiator_config(Profile::Ik, CipherSuite::default(), &k);
    let mut dev = DatagramClient::new(config, 0x0D0D_0001, DatagramConfig::default(), Timestamp(0)).unwrap();
    let hello = dev.poll_transmit(Timestamp(0)).unwrap();
    h.handle_packet(1, BytesMut::from(&hello[..]), Timestamp(0)).unwrap();
    let (_, response) = h.poll_transmit().unwrap();
    dev.handle_packet(BytesMut::from(&response[..]), Timestamp(0)).unwrap();
    assert!(dev.is_established());
    (dev, h)
}

#[test]
fn every_event_kind_is_emitted_when_it_happens() {
    let mut seen: Vec<EventKind> = Vec::new();
    // SessionEstablished, Rekeyed (both directions), UnknownFrameKind, SessionClosed.
    let params = SessionParams { max_frame_len: 256, rekey_interval: 4, ..SessionParams::default() };
    let (mut dev, mut hostside) = session_pair_with(Profile::Ik, CipherSuite::default(), params);
    let mut wire = BytesMut::new();
    for _ in 0..4 {
        dev.seal_data(1, b"x", &mut wire).unwrap();
    }
    dev.seal_raw_for_testing_only(0x77, 0, 0, b"", &mut wire).unwrap();
    let _ = open_all(&mut hostside, &mut wire);
    // LimitExceeded (payload too large, locally).
    assert!(dev.seal_data(1, &[0; 300], &mut wire).is_err());
    dev.close(CloseCode::NORMAL, &mut wire).unwrap();
    let _ = open_all(&mut hostside, &mut wire);
    seen.extend(drain(&mut |t| dev.poll_event(t)));
    seen.extend(drain(&mut |t| hostside.poll_event(t)));
    // AuthenticationFailure and Truncated.
    let (mut dev, mut hostside) = session_pair();
    dev.seal_data(1, b"x", &mut wire).unwrap();
    wire[4] ^= 1;
    let _ = open_all(&mut hostside, &mut wire);
    let _ = dev.handle_eof();
    seen.extend(drain(&mut |t| hostside.poll_event(t)));
    seen.extend(drain(&mut |t| dev.poll_event(t)));
    // ProtocolViolation and LimitExceeded (frame too large).
    let (mut dev, mut hostside) = session_pair();
    dev.seal_raw_for_testing_only(1, 0x40, 1, b"", &mut wire).unwrap();
    let _ = open_all(&mut hostside, &mut wire);
    seen.extend(drain(&mut |t| hostside.poll_event(t)));
    let params = SessionParams { max_frame_len: 64, rekey_interval: 100, ..SessionParams::default() };
    let (_, mut small) = session_pair_with(Profile::Ik, CipherSuite::default(), params);
    let _ = small.open(BytesMut::from(&[0u8; 100][..]));
    seen.extend(drain(&mut |t| small.poll_event(t)));
    // UnknownPeer, RevokedPeer, HandshakeFailed.
    let host = keys().host;
    let store = Arc::new(TrustStore::in_memory(TrustList::new()));
    let mut r = drive(ik(&device(0x50), *host.public(), "x"), responder_with(&host, store.clone()));
    seen.extend(drain(&mut |t| r.poll_event(t)));
    store.add(*device(0x50).public(), "", "").unwrap();
    store.revoke(device(0x50).public()).unwrap();
    let mut r = drive(ik(&device(0x50), *host.public(), "x"), responder_with(&host, store));
    seen.extend(drain(&mut |t| r.poll_event(t)));
    // TimerExpired (the peer went silent past the dead-peer timer).
    let (mut deviceside, mut hostside) = session_pair();
    // The device's first frame confirms the IK session (spec §4.8); then it goes silent.
    let mut wire = BytesMut::new();
    deviceside.seal_data(1, b"first", &mut wire).unwrap();
    assert!(open_all(&mut hostside, &mut wire).iter().all(|r| r.is_ok()));
    hostside.set_timers(TimerConfig { dead_peer_ms: Some(1_000), ..TimerConfig::default() });
    let _ = hostside.handle_timeout(Timestamp(0));
    assert_eq!(hostside.handle_timeout(Timestamp(5_000)), Err(Error::DeadPeer));
    seen.extend(drain(&mut |t| hostside.poll_event(t)));
    // FragmentDropped (a fragment that contradicts the message it belongs to).
    let (mut dev, mut hostside) = session_pair();
    let piece = |len: usize| {
        [&FragmentHeader { message_id: 1, index: 0, count: 3 }.encode()[..], &vec![1u8; len]].concat()
    };
    dev.seal_raw_for_testing_only(1, 1, 1, &piece(100), &mut wire).unwrap();
    dev.seal_raw_for_testing_only(1, 1, 1, &piece(99), &mut wire).unwrap();
    let _ = open_all(&mut hostside, &mut wire);
    seen.extend(drain(&mut |t| hostside.poll_event(t)));
    // ReplayRejected (datagram mode: the same packet twice).
    let (mut dev, mut h) = datagram_pair();
    dev.send(1, b"once", Timestamp(1)).unwrap();
    let packet = std::iter::from_fn(|| dev.poll_transmit(Timestamp(1))).last().unwrap();
    h.handle_packet(1, BytesMut::from(&packet[..]), Timestamp(2)).unwrap();
    assert!(h.handle_packet(1, BytesMut::from(&packet[..]), Timestamp(2)).is_err());
    seen.extend(std::iter::from_fn(|| h.poll_event()).map(|e| e.kind));
    // EventsSuppressed (a host's aggregator summarising a flood from one source).
    let mut agg = EventAggregator::new(2, 1_000, 16);
    let source = Some("192.0.2.1".parse().unwrap());
    for t in 0..5 {
        let e = SecurityEvent::new(EventKind::UnknownPeer, Timestamp(t), None, None).from_source(source);
        let _ = agg.admit(e);
    }
    seen.extend(std::iter::from_fn(|| agg.poll_summary(Timestamp(2_000))).map(|e| e.kind));

    // Every kind, without exception.
    let names: BTreeSet<&str> = seen.iter().map(EventKind::name).collect();
    let all: BTreeSet<&str> = EventKind::NAMES.into_iter().collect();
    let missing: Vec<_> = all.difference(&names).collect();
    assert!(missing.is_empty(), "kinds never emitted: {missing:?}");
    // And the details.
    let has = |f: &dyn Fn(&EventKind) -> bool| seen.iter().any(f);
    assert!(has(&|k| matches!(k, EventKind::SessionClosed { by_peer: true, .. })));
    assert!(has(&|k| matches!(k, EventKind::SessionClosed { by_peer: false, .. })));
    assert!(has(&|k| matches!(
        k,
        EventKind::ProtocolViolation { error: ProtocolError::ReservedFlags(0x40) }
    )));
    assert!(has(&|k| *k == EventKind::UnknownFrameKind { kind: 0x77 }));
    assert!(has(&|k| *k == EventKind::Rekeyed { direction: Direction::Outbound }));
    assert!(has(&|k| *k == EventKind::Rekeyed { direction: Direction::Inbound }));
    assert!(has(&|k| *k == EventKind::LimitExceeded { limit: Limit::PayloadTooLarge }));
    assert!(has(&|k| *k == EventKind::LimitExceeded { limit: Limit::FrameTooLarge }));
    assert!(has(&|k| *k == EventKind::TimerExpired { timer: Timer::DeadPeer }));
    assert!(has(&|k| *k == EventKind::ReplayRejected { duplicate: true }));
    assert!(has(&|k| *k == EventKind::EventsSuppressed { of: "unknown_peer", count: 3 }));
}

#[test]
fn a_stream_cut_inside_a_frame_is_truncated_not_a_protocol_violation() {
    // §2, §7.3: EOF inside a frame is a truncated stream.
    let (mut dev, mut hostside) = session_pair();
    let _ = drain(&mut |t| hostside.poll_event(t));
    let mut wire = BytesMut::new();
    dev.seal_data(1, b"the last reading", &mut wire).unwrap();
    let mut cut = BytesMut::from(&wire[..wire.len() - 3]);
    let mut decoder = StreamDecoder::new(hostside.max_frame_len());
    assert_eq!(decoder.decode(&mut cut), Ok(None), "needs more bytes");
    let eof = decoder.finish(&cut).unwrap_err();
    assert!(matches!(eof, DecodeError::IncompleteFrame { .. }));
    assert_eq!(hostside.handle_decode_error(eof), Error::Truncated);
    assert_eq!(drain(&mut |t| hostside.poll_event(t)), vec![EventKind::Truncated]);
    let c = hostside.security_counters();
    assert_eq!((c.truncations, c.protocol_violations), (1, 0));
    // Other framing errors still fail the session as malformed.
    let (_, mut hostside) = session_pair();
    let _ = drain(&mut |t| hostside.poll_event(t));
    assert_eq!(hostside.handle_decode_error(DecodeError::EmptyFrame), Error::Decode(DecodeError::EmptyFrame));
    assert!(matches!(drain(&mut |t| hostside.poll_event(t))[..], [EventKind::ProtocolViolation { .. }]));
}
