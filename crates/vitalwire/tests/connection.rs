//! The single-object connection wrapper used by the bindings.

mod common;

use common::*;
use vitalwire::*;

fn pair() -> (Connection, Connection) {
    let k = keys();
    let mut dev = Connection::new(
        Handshake::initiator(initiator_config(Profile::Xx, CipherSuite::default(), &k)).unwrap(),
    )
    .unwrap();
    let mut host =
        Connection::new(Handshake::responder(responder_config(&k, SessionParams::default())).unwrap())
            .unwrap();
    for _ in 0..3 {
        host.receive(&dev.take_output()).unwrap();
        dev.receive(&host.take_output()).unwrap();
    }
    (dev, host)
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
