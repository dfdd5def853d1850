//! The single-object connection wrapper used by the bindings.

mod common;

use common::*;
use vitalwire::*;

fn pair() -> (Connection, Connection) {
    let k = keys();
    pair_with(
        initiator_config(Profile::Xx, CipherSuite::default(), &k),
        responder_config(&k, SessionParams::default()),
    )
}

fn pair_with(i: InitiatorConfig, r: ResponderConfig) -> (Connection, Connection) {
    let mut dev = Connection::new(Handshake::initiator(i).unwrap()).unwrap();
    let mut host = Connection::new(Handshake::responder(r).unwrap()).unwrap();
    for _ in 0..3 {
        host.receive(&dev.take_output()).unwrap();
        dev.receive(&host.take_output()).unwrap();
    }
    (dev, host)
}

fn data(channel: u8, payload: &'static [u8]) -> Incoming {
    Incoming::Data { channel, payload: bytes::Bytes::from_static(payload) }
}

#[test]
fn handshake_then_session_in_one_object() {
    let (mut dev, mut host) = pair();
    assert_eq!((dev.state(), host.state()), (ConnectionState::Established, ConnectionState::Established));
    // A pattern that does not repeat at the fragment size, so a lost, repeated or reordered
    // piece changes the bytes.
    let dump: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let wire = [dev.send(1, b"HR=72").unwrap(), dev.send_message(2, &dump).unwrap()].concat();
    // Any split of the bytes gives the same result.
    let (a, b) = wire.split_at(37);
    let mut got = host.receive(a).unwrap();
    got.extend(host.receive(b).unwrap());
    let data: Vec<_> = got.into_iter().filter(|i| !matches!(i, Incoming::Fragment)).collect();
    assert_eq!(data.len(), 2);
    assert!(matches!(&data[0], Incoming::Data { channel: 1, payload } if &payload[..] == b"HR=72"));
    match &data[1] {
        Incoming::Data { channel, payload } => {
            assert_eq!(*channel, 2);
            assert_eq!(payload.len(), dump.len());
            assert!(payload[..] == dump[..], "the 200,000-byte message arrives byte for byte");
        }
        other => panic!("expected the message, got {other:?}"),
    }
    let close = dev.close(CloseCode::NORMAL).unwrap();
    host.receive(&close).unwrap();
    dev.receive(&host.take_output()).unwrap();
    assert_eq!((dev.state(), host.state()), (ConnectionState::Closed, ConnectionState::Closed));
    assert_eq!(host.end_of_stream(), Ok(()));
    assert!(host
        .take_events()
        .iter()
        .any(|e| matches!(e.kind, EventKind::SessionClosed { by_peer: true, .. })));
}

#[test]
fn failures_stick_and_tell_the_peer() {
    let (mut dev, mut host) = pair();
    let mut f = dev.send(1, b"x").unwrap();
    f[4] ^= 1;
    assert_eq!(host.receive(&f), Err(Error::AuthenticationFailed));
    assert_eq!(host.state(), ConnectionState::Failed);
    assert_eq!(host.receive(&dev.send(1, b"y").unwrap()), Err(Error::AuthenticationFailed));
    let told = dev.receive(&host.take_output()).unwrap();
    assert_eq!(told, vec![Incoming::Closed(CloseCode::AUTHENTICATION_FAILED)]);
    let (_, mut host) = pair();
    host.receive(b"\x00").unwrap();
    assert!(matches!(host.end_of_stream(), Err(Error::Decode(_))));
    let k = keys();
    let mut early = Connection::new(
        Handshake::initiator(initiator_config(Profile::Ik, CipherSuite::default(), &k)).unwrap(),
    )
    .unwrap();
    assert!(matches!(early.send(1, b"too early"), Err(Error::Config(_))));
}

/// Issue #14 item 2: an authentic frame of unknown kind between DATA frames in one read is
/// discarded and reported as an event; the DATA before and after it are both delivered.
#[test]
fn an_unknown_kind_between_frames_loses_nothing() {
    let (mut dev, mut host) = pair();
    host.take_events();
    let wire = [
        dev.send(1, b"before").unwrap(),
        dev.send_raw_for_testing_only(0x42, 0, 0, b"a newer kind").unwrap(),
        dev.send(2, b"after").unwrap(),
    ]
    .concat();
    assert_eq!(host.receive(&wire), Ok(vec![data(1, b"before"), data(2, b"after")]));
    assert_eq!(host.state(), ConnectionState::Established);
    let events = host.take_events();
    assert!(events.iter().any(|e| e.kind == EventKind::UnknownFrameKind { kind: 0x42 }), "{events:?}");
    // Alone in a read, it yields nothing and no error either; the session goes on.
    assert_eq!(host.receive(&dev.send_raw_for_testing_only(0x43, 0, 0, b"").unwrap()), Ok(vec![]));
    assert_eq!(host.receive(&dev.send(3, b"still up").unwrap()), Ok(vec![data(3, b"still up")]));
}

/// A fatal error after authenticated frames in the same read: the frames are delivered, the
/// connection has failed (and told the peer), and the error comes with the next call, which
/// `poll_timeout` asks for at once.
#[test]
fn a_fatal_error_is_reported_after_the_frames_that_authenticated_before_it() {
    let (mut dev, mut host) = pair();
    host.set_time(Timestamp(5_000));
    let good = dev.send(1, b"HR=72").unwrap();
    let mut bad = dev.send(1, b"HR=73").unwrap();
    bad[4] ^= 1;
    let wire = [good, bad].concat();
    assert_eq!(host.receive(&wire), Ok(vec![data(1, b"HR=72")]));
    assert_eq!(host.state(), ConnectionState::Failed);
    assert_eq!(host.error(), Some(Error::AuthenticationFailed));
    assert_eq!(host.poll_timeout(), Some(Timestamp(5_000)), "the pending error is due now");
    assert_eq!(host.handle_timeout(Timestamp(5_000)), Err(Error::AuthenticationFailed));
    assert_eq!(host.poll_timeout(), None, "reported once; nothing more to do");
    assert_eq!(host.receive(b""), Err(Error::AuthenticationFailed), "sticks");
    assert_eq!(
        dev.receive(&host.take_output()),
        Ok(vec![Incoming::Closed(CloseCode::AUTHENTICATION_FAILED)])
    );
    // Through `receive` as well: the next call returns it, even with no input.
    let (mut dev, mut host) = pair();
    let mut wire = dev.send(1, b"one").unwrap().to_vec();
    wire.extend_from_slice(&[0, 0]); // a zero length prefix
    assert_eq!(host.receive(&wire), Ok(vec![data(1, b"one")]));
    assert!(matches!(host.receive(b""), Err(Error::Decode(DecodeError::EmptyFrame))));
    // With nothing authenticated before it, the error is immediate.
    let mut f = dev.send(1, b"x").unwrap();
    f[4] ^= 1;
    let (_, mut fresh) = pair();
    assert_eq!(fresh.receive(&f), Err(Error::AuthenticationFailed));
    assert_eq!(fresh.poll_timeout(), None);
}

/// Issue #14 item 5: a clean close, a pairing session's refusal of DATA and a refused
/// oversized payload are answers, not failures: the connection stays where it was.
#[test]
fn harmless_errors_leave_the_connection_as_it_was() {
    let (mut dev, mut host) = pair();
    host.receive(&dev.close(CloseCode::NORMAL).unwrap()).unwrap();
    // The host answered the CLOSE at once (its answer is in `take_output`).
    assert_eq!(host.state(), ConnectionState::Closed);
    assert_eq!(host.send(1, b"late"), Err(Error::Closed));
    assert_eq!(host.ping(*b"12345678"), Err(Error::Closed));
    assert_eq!(host.state(), ConnectionState::Closed);
    assert_eq!(dev.send(1, b"late"), Err(Error::Closed));
    assert_eq!(dev.state(), ConnectionState::Established, "still receiving until the peer's CLOSE");
    assert_eq!(dev.close(CloseCode::NORMAL), Err(Error::Closed));
    dev.receive(&host.take_output()).unwrap();
    assert_eq!((dev.state(), host.state()), (ConnectionState::Closed, ConnectionState::Closed));
    assert_eq!(dev.send(1, b"later"), Err(Error::Closed));
    assert_eq!(dev.state(), ConnectionState::Closed, "a clean close does not read as a failure");
    assert_eq!((dev.end_of_stream(), host.end_of_stream()), (Ok(()), Ok(())));
    assert_eq!(dev.error(), None);

    let k = keys();
    let (mut dev, mut host) = pair_with(
        initiator_config(Profile::Xx, CipherSuite::default(), &k).request_pairing(),
        responder_config(&k, SessionParams::default()).allow_pairing(true),
    );
    assert!(dev.session().unwrap().is_pairing());
    assert_eq!(dev.send(1, b"telemetry"), Err(Error::PairingSession));
    assert_eq!(dev.send_message(1, &[0; 100_000]), Err(Error::PairingSession));
    assert_eq!(dev.state(), ConnectionState::Established);
    assert_eq!(host.send(1, b"config"), Err(Error::PairingSession));
    assert_eq!(host.state(), ConnectionState::Established);
    // Both sessions still work: a PING is answered, and a close is clean.
    assert_eq!(host.receive(&dev.ping(*b"pairing!").unwrap()), Ok(vec![Incoming::Ping]));
    assert_eq!(dev.receive(&host.take_output()), Ok(vec![Incoming::Pong(*b"pairing!")]));
    host.receive(&dev.close(CloseCode::NORMAL).unwrap()).unwrap();
    dev.receive(&host.take_output()).unwrap();
    assert_eq!((dev.state(), host.state()), (ConnectionState::Closed, ConnectionState::Closed));
}

/// Issue #14 item 12: the connection's own event list is bounded like every other queue;
/// what overflows is counted.
#[test]
fn undrained_events_are_bounded_and_counted() {
    let (mut dev, _host) = pair();
    dev.take_events();
    let too_big = vec![0u8; 70_000];
    for _ in 0..(3 * vitalwire::events::EVENT_QUEUE_CAPACITY) {
        assert!(matches!(dev.send(1, &too_big), Err(Error::PayloadTooLarge { .. })));
    }
    let kept = dev.take_events();
    assert_eq!(kept.len(), vitalwire::events::EVENT_QUEUE_CAPACITY);
    assert!(kept.iter().all(|e| e.kind == EventKind::LimitExceeded { limit: Limit::PayloadTooLarge }));
    assert_eq!(dev.events_dropped(), 2 * vitalwire::events::EVENT_QUEUE_CAPACITY as u64);
    assert_eq!(dev.state(), ConnectionState::Established);
}

/// Issue #14 item 12: any caller-supplied time, the extremes included and a clock that
/// jumps back, is taken without panicking; the timers then fire as the times say.
#[test]
fn extreme_times_never_panic() {
    for times in [[0, u64::MAX, 0], [u64::MAX, 0, u64::MAX], [u64::MAX, u64::MAX, 1]] {
        let (mut dev, mut host) = pair();
        for t in times {
            dev.set_time(Timestamp(t));
            let _ = dev.handle_timeout(Timestamp(t));
            let _ = dev.poll_timeout();
            let _ = host.handle_timeout(Timestamp(t));
            let _ = host.receive(&dev.take_output());
            let _ = dev.take_events();
        }
    }
    // From 0 to the end of time: the lifetime ends the session with a CLOSE, cleanly typed.
    let (mut dev, mut host) = pair();
    assert_eq!(dev.handle_timeout(Timestamp(0)), Ok(()));
    assert_eq!(dev.handle_timeout(Timestamp(u64::MAX)), Err(Error::SessionExpired));
    assert_eq!(dev.poll_timeout(), None);
    assert_eq!(host.receive(&dev.take_output()), Ok(vec![Incoming::Closed(CloseCode::SESSION_EXPIRED)]));
    // A handshake started at the end of time has a deadline there, not a wrapped one.
    let k = keys();
    let mut hs = Connection::new(
        Handshake::initiator(initiator_config(Profile::Ik, CipherSuite::default(), &k)).unwrap(),
    )
    .unwrap();
    assert_eq!(hs.handle_timeout(Timestamp(u64::MAX)), Ok(()));
    assert_eq!(hs.poll_timeout(), Some(Timestamp(u64::MAX)));
}

struct BrokenRng;
impl EntropySource for BrokenRng {
    fn fill(&mut self, _dest: &mut [u8]) -> Result<(), EntropyError> {
        Err(EntropyError)
    }
}

/// Issue #14 item 11: an entropy source that fails gives a typed error before any byte is
/// written (never an all-zero ephemeral key or pairing nonce).
#[test]
fn a_failing_entropy_source_fails_the_handshake_with_a_typed_error() {
    let k = keys();
    for cfg in [
        initiator_config(Profile::Ik, CipherSuite::default(), &k).entropy(Box::new(BrokenRng)),
        initiator_config(Profile::Xx, CipherSuite::default(), &k)
            .request_pairing()
            .entropy(Box::new(BrokenRng)),
    ] {
        let r = Handshake::initiator(cfg).and_then(Connection::new);
        assert!(matches!(r, Err(Error::Handshake(_))), "{r:?}");
    }
    // A responder fails when it must make its ephemeral key, and says so to nobody in clear.
    let mut dev = Connection::new(
        Handshake::initiator(initiator_config(Profile::Xx, CipherSuite::default(), &k)).unwrap(),
    )
    .unwrap();
    let mut host = Connection::new(
        Handshake::responder(responder_config(&k, SessionParams::default()).entropy(Box::new(BrokenRng)))
            .unwrap(),
    )
    .unwrap();
    let r = host.receive(&dev.take_output());
    assert!(matches!(r, Err(Error::Handshake(_))), "{r:?}");
    assert_eq!(host.state(), ConnectionState::Failed);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// However DATA and unknown-kind frames are mixed and however the bytes are cut into
    /// reads, every DATA frame is delivered once, in order, and no read fails.
    #[test]
    fn unknown_kinds_never_cost_data_whatever_the_reads(
        frames in proptest::collection::vec((proptest::prelude::any::<bool>(), 0u8..40), 1..24),
        cuts in proptest::collection::vec(0usize..4096, 0..8),
    ) {
        let (mut dev, mut host) = pair();
        let mut wire = Vec::new();
        let mut sent = Vec::new();
        for (i, (unknown, len)) in frames.iter().enumerate() {
            let payload = vec![i as u8; *len as usize];
            if *unknown {
                wire.extend_from_slice(&dev.send_raw_for_testing_only(0x40 + (i as u8 % 32), 0, 0, &payload).unwrap());
            } else {
                wire.extend_from_slice(&dev.send(1, &payload).unwrap());
                sent.push(payload);
            }
        }
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.push(0);
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut got = Vec::new();
        for w in cuts.windows(2) {
            for m in host.receive(&wire[w[0]..w[1]]).unwrap() {
                match m {
                    Incoming::Data { payload, .. } => got.push(payload.to_vec()),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        proptest::prop_assert_eq!(got, sent);
        proptest::prop_assert_eq!(host.state(), ConnectionState::Established);
        let unknown = frames.iter().filter(|(u, _)| *u).count();
        let reported = host.take_events().iter().filter(|e| matches!(e.kind, EventKind::UnknownFrameKind { .. })).count();
        proptest::prop_assert_eq!(reported, unknown);
    }
}

/// A frame the connection queued itself (here the key-confirming PING an IK device owes, spec
/// §4.8; a PONG or a keepalive alike) is sealed before the DATA a caller sends next: `send`
/// returns it first, so a caller that writes what `send` returns before calling
/// `take_output` still puts every frame on the wire in nonce order.
#[test]
fn send_returns_what_was_already_due_before_its_own_frame() {
    let k = keys();
    let (mut dev, mut host) = pair_with(
        initiator_config(Profile::Ik, CipherSuite::default(), &k),
        responder_config(&k, SessionParams::default()),
    );
    assert_eq!(dev.state(), ConnectionState::Established);
    // The timer check queues the PING the device owes (its first frame confirms its key).
    dev.handle_timeout(Timestamp(1)).unwrap();
    let frames = dev.send(1, b"after the ping").unwrap();
    assert!(dev.take_output().is_empty(), "everything due went out with the DATA frame");
    let got = host.receive(&frames).expect("frames in nonce order");
    let data: Vec<_> = got.iter().filter(|m| matches!(m, Incoming::Data { .. })).collect();
    assert_eq!(data.len(), 1, "{got:?}");
    assert!(matches!(data[0], Incoming::Data { channel: 1, payload } if &payload[..] == b"after the ping"));
    assert_eq!(host.state(), ConnectionState::Established);
}
