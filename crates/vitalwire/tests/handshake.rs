//! Handshakes for every profile and suite, and every way a handshake can go wrong.

mod common;

use bytes::BytesMut;
use common::*;
use vitalwire::*;

#[test]
fn every_profile_and_suite_establishes_a_mutually_authenticated_session() {
    for profile in Profile::ALL {
        for suite in CipherSuite::ALL {
            let k = keys();
            let (mut dev, mut host) = session_pair_with(profile, suite, SessionParams::default());
            assert_eq!(dev.remote_static(), k.host.public(), "{profile} {suite}");
            assert_eq!(host.remote_static(), k.device.public(), "{profile} {suite}");
            assert_eq!(dev.handshake_hash(), host.handshake_hash());
            assert_eq!(host.peer_identity(), Some(&identity()));
            assert_eq!((dev.profile(), host.suite()), (profile, suite));
            let mut wire = BytesMut::new();
            dev.seal_data(3, b"SpO2=98", &mut wire).unwrap();
            let got = open_all(&mut host, &mut wire);
            assert_eq!(
                got,
                vec![Ok(Incoming::Data { channel: 3, payload: bytes::Bytes::from_static(b"SpO2=98") })]
            );
            // And the other direction: the device opens what the host sealed.
            let mut back = BytesMut::new();
            host.seal_data(0, b"ack", &mut back).unwrap();
            host.seal_data(7, b"", &mut back).unwrap();
            let got = open_all(&mut dev, &mut back);
            assert_eq!(
                got,
                vec![
                    Ok(Incoming::Data { channel: 0, payload: bytes::Bytes::from_static(b"ack") }),
                    Ok(Incoming::Data { channel: 7, payload: bytes::Bytes::new() }),
                ],
                "{profile} {suite}"
            );
            assert!(back.is_empty());
        }
    }
}

#[test]
fn message_counts_match_the_profiles() {
    for profile in Profile::ALL {
        let k = keys();
        let mut i = Handshake::initiator(initiator_config(profile, CipherSuite::default(), &k)).unwrap();
        let mut r = Handshake::responder(responder_config(&k, SessionParams::default())).unwrap();
        let mut wire = BytesMut::new();
        let mut frames = 0;
        while !(i.is_finished() && r.is_finished()) {
            let (a, b) = if i.wants_write() { (&mut i, &mut r) } else { (&mut r, &mut i) };
            a.write_message(&mut wire).unwrap();
            b.read_message(&one_frame(&mut wire)).unwrap();
            frames += 1;
        }
        assert_eq!(frames, profile.message_count(), "{profile}");
    }
}

fn hello_of(profile: Profile, suite: CipherSuite) -> (Handshake, BytesMut) {
    let k = keys();
    let mut i = Handshake::initiator(initiator_config(profile, suite, &k)).unwrap();
    let mut wire = BytesMut::new();
    i.write_message(&mut wire).unwrap();
    (i, wire)
}

fn responder() -> Handshake {
    Handshake::responder(responder_config(&keys(), SessionParams::default())).unwrap()
}

/// The responder refuses; the initiator reads the REJECT and reports it.
fn expect_reject(mut hello: BytesMut, mut r: Handshake, local: HandshakeError, reason: RejectReason) {
    let body = one_frame(&mut hello);
    assert_eq!(r.read_message(&body), Err(Error::Handshake(local)));
    assert!(r.wants_write(), "a REJECT is queued");
    let mut out = BytesMut::new();
    r.write_message(&mut out).unwrap();
    assert!(!r.wants_write());
    assert_eq!(r.write_message(&mut out), Err(Error::Handshake(local)), "the error sticks");
    let (mut i, _) = hello_of(Profile::Xx, CipherSuite::default());
    assert_eq!(
        i.read_message(&one_frame(&mut out.split_to(out.len()))),
        Err(Error::Handshake(HandshakeError::Rejected(reason)))
    );
}

#[test]
fn unsupported_choices_get_a_clear_error_on_both_sides() {
    // Unknown version.
    let (_, mut wire) = hello_of(Profile::Xx, CipherSuite::default());
    wire[2 + 3] = 9;
    expect_reject(wire, responder(), HandshakeError::UnsupportedVersion(9), RejectReason::UnsupportedVersion);
    // Unknown profile code.
    let (_, mut wire) = hello_of(Profile::Xx, CipherSuite::default());
    wire[2 + 4] = 0x7F;
    expect_reject(
        wire,
        responder(),
        HandshakeError::UnsupportedProfile(0x7F),
        RejectReason::UnsupportedProfile,
    );
    // Unknown suite code.
    let (_, mut wire) = hello_of(Profile::Xx, CipherSuite::default());
    wire[2 + 5] = 0x7F;
    expect_reject(wire, responder(), HandshakeError::UnsupportedSuite(0x7F), RejectReason::UnsupportedSuite);
    // Known but refused by policy.
    let (_, wire) = hello_of(Profile::Xx, CipherSuite::AesGcmSha256);
    let r = Handshake::responder(
        responder_config(&keys(), SessionParams::default()).suites(&[CipherSuite::ChaChaPolyBlake2s]),
    )
    .unwrap();
    expect_reject(wire, r, HandshakeError::SuiteNotAccepted, RejectReason::UnsupportedSuite);
    let (_, wire) = hello_of(Profile::Xx, CipherSuite::default());
    let r =
        Handshake::responder(responder_config(&keys(), SessionParams::default()).profiles(&[Profile::Ik]))
            .unwrap();
    expect_reject(wire, r, HandshakeError::ProfileNotAccepted(Profile::Xx), RejectReason::UnsupportedProfile);
}

#[test]
fn downgrade_of_the_cleartext_choices_is_detected() {
    // An attacker rewrites the suite byte of an XX HELLO. XX message 1 carries no
    // authenticated data, so the responder goes on, but with a different prologue and suite:
    // the initiator cannot authenticate message 2.
    let (mut i, mut wire) = hello_of(Profile::Xx, CipherSuite::AesGcmSha256);
    wire[2 + 5] = CipherSuite::ChaChaPolyBlake2s.code();
    let mut r = responder();
    r.read_message(&one_frame(&mut wire)).unwrap();
    r.write_message(&mut wire).unwrap();
    assert_eq!(
        i.read_message(&one_frame(&mut wire)),
        Err(Error::Handshake(HandshakeError::AuthenticationFailed))
    );
    // IK authenticates message 1 itself: the responder notices at once.
    let (_, mut wire) = hello_of(Profile::Ik, CipherSuite::AesGcmSha256);
    wire[2 + 5] = CipherSuite::ChaChaPolyBlake2s.code();
    let mut r = responder();
    assert_eq!(
        r.read_message(&one_frame(&mut wire)),
        Err(Error::Handshake(HandshakeError::AuthenticationFailed))
    );
    assert!(!r.wants_write(), "no REJECT oracle for authentication failures");
}

#[test]
fn wrong_keys_fail_authentication() {
    let k = keys();
    // IK toward the wrong host key.
    let wrong = Keypair::from_private(PrivateKey::from_bytes([0x44; 32]));
    let i = Handshake::initiator(
        InitiatorConfig::new(Profile::Ik, k.device.clone(), identity()).host_key(*wrong.public()),
    )
    .unwrap();
    assert_eq!(
        run_handshake(i, responder()).err(),
        Some(Error::Handshake(HandshakeError::AuthenticationFailed))
    );
    // XXpsk3 with the right id but the wrong secret.
    let i = Handshake::initiator(
        InitiatorConfig::new(Profile::XxPsk3, k.device.clone(), identity())
            .psk(PSK_ID, Psk::from_bytes([0x99; 32])),
    )
    .unwrap();
    assert_eq!(
        run_handshake(i, responder()).err(),
        Some(Error::Handshake(HandshakeError::AuthenticationFailed))
    );
    // KK from a device the host has no key for.
    let stranger = Keypair::from_private(PrivateKey::from_bytes([0x55; 32]));
    let i = Handshake::initiator(
        InitiatorConfig::new(Profile::Kk, stranger, identity()).host_key(*k.host.public()),
    )
    .unwrap();
    assert_eq!(run_handshake(i, responder()).err(), Some(Error::Handshake(HandshakeError::UnknownPeer)));
    // XXpsk3 naming a PSK id the host does not know.
    let i = Handshake::initiator(
        InitiatorConfig::new(Profile::XxPsk3, k.device.clone(), identity()).psk(b"nope", k.psk.clone()),
    )
    .unwrap();
    assert_eq!(run_handshake(i, responder()).err(), Some(Error::Handshake(HandshakeError::UnknownPsk)));
}

#[test]
fn pinned_host_key_mismatch_stops_xx_before_the_device_speaks() {
    let k = keys();
    let other = Keypair::from_private(PrivateKey::from_bytes([0x66; 32]));
    let i = Handshake::initiator(
        InitiatorConfig::new(Profile::Xx, k.device.clone(), identity()).pin_host_keys([*other.public()]),
    )
    .unwrap();
    assert_eq!(
        run_handshake(i, responder()).err(),
        Some(Error::Handshake(HandshakeError::UnexpectedPeerKey))
    );
    let i = Handshake::initiator(
        InitiatorConfig::new(Profile::Xx, k.device.clone(), identity())
            .pin_host_keys([*other.public(), *k.host.public()]),
    )
    .unwrap();
    assert!(run_handshake(i, responder()).is_ok(), "any key of the pinned set is accepted");
}

#[test]
fn out_of_order_and_duplicate_messages_are_rejected() {
    // A responder that gets a HANDSHAKE frame before any HELLO.
    let mut r = responder();
    assert_eq!(r.read_message(&[0x02, 1, 2, 3]), Err(Error::Handshake(HandshakeError::UnexpectedMessage)));
    // An initiator that reads before it has written.
    let (i, _) = hello_of(Profile::Xx, CipherSuite::default());
    drop(i);
    let k = keys();
    let mut i = Handshake::initiator(initiator_config(Profile::Xx, CipherSuite::default(), &k)).unwrap();
    assert_eq!(i.read_message(&[0x02]), Err(Error::Handshake(HandshakeError::UnexpectedMessage)));
    assert_eq!(
        i.write_message(&mut BytesMut::new()),
        Err(Error::Handshake(HandshakeError::UnexpectedMessage))
    );
    // A duplicated HELLO.
    let (_, mut wire) = hello_of(Profile::Xx, CipherSuite::default());
    let hello = one_frame(&mut wire);
    let mut r = responder();
    r.read_message(&hello).unwrap();
    assert_eq!(r.read_message(&hello), Err(Error::Handshake(HandshakeError::UnexpectedMessage)));
    // A second HELLO where message 3 belongs.
    let (mut i, mut wire) = hello_of(Profile::Xx, CipherSuite::default());
    let hello = one_frame(&mut wire);
    let mut r = responder();
    r.read_message(&hello).unwrap();
    r.write_message(&mut wire).unwrap();
    i.read_message(&one_frame(&mut wire)).unwrap();
    assert_eq!(r.read_message(&hello), Err(Error::Handshake(HandshakeError::UnexpectedMessage)));
    // into_session before the end.
    assert!(i.into_session().is_err());
}

#[test]
fn garbage_and_truncated_hellos_are_rejected_without_panic() {
    let (_, mut wire) = hello_of(Profile::Ik, CipherSuite::default());
    let hello = one_frame(&mut wire);
    for cut in 0..hello.len() {
        let mut r = responder();
        assert!(r.read_message(&hello[..cut]).is_err(), "cut at {cut}");
    }
    for bit in 0..hello.len() * 8 {
        let mut bad = hello.to_vec();
        bad[bit / 8] ^= 1 << (bit % 8);
        let mut r = responder();
        assert!(r.read_message(&bad).is_err(), "flip of bit {bit} went unnoticed");
    }
    let mut r = responder();
    assert_eq!(
        r.read_message(b"GET / HTTP/1.1"),
        Err(Error::Decode(DecodeError::UnknownHandshakeFrame(b'G')))
    );
    assert!(r.wants_write(), "a malformed HELLO gets a REJECT");
}

#[test]
fn invalid_configurations_are_refused_up_front() {
    let k = keys();
    assert!(matches!(
        Handshake::initiator(InitiatorConfig::new(Profile::Ik, k.device.clone(), identity())),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        Handshake::initiator(InitiatorConfig::new(Profile::XxPsk3, k.device.clone(), identity())),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        Handshake::initiator(InitiatorConfig::new(Profile::Xx, k.device.clone(), DeviceIdentity::new(""))),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        Handshake::responder(ResponderConfig::new(k.host.clone(), trust(&k)).params(SessionParams {
            max_frame_len: 10,
            rekey_interval: 100,
            ..SessionParams::default()
        })),
        Err(Error::Config(_))
    ));
}

/// spec §3.2: an all-zero Diffie-Hellman result aborts the handshake. In XX the host's first
/// DH (`ee`, while writing message 2) uses the device's ephemeral key from the HELLO; a HELLO
/// carrying a low-order point instead must fail there, on every X25519 backend, and be recorded.
#[test]
fn a_low_order_ephemeral_key_aborts_the_handshake_on_every_backend() {
    let k = keys();
    let backends = [
        x25519::Backend::Portable,
        #[cfg(feature = "aws-lc")]
        x25519::Backend::AwsLc,
    ];
    for backend in backends {
        for low_order in [[0u8; 32], {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }] {
            let ephemeral = PrivateKey::from_bytes([0x61; 32]);
            let e_public = ephemeral.public_key();
            let mut i = Handshake::initiator(
                initiator_config(Profile::Xx, CipherSuite::default(), &k)
                    .fixed_ephemeral_for_testing_only(ephemeral)
                    .x25519_backend(backend),
            )
            .unwrap();
            let mut wire = BytesMut::new();
            i.write_message(&mut wire).unwrap();
            let at = wire.windows(32).position(|w| w == e_public.as_bytes()).expect("e is in the HELLO");
            wire[at..at + 32].copy_from_slice(&low_order);
            let mut r =
                Handshake::responder(responder_config(&k, SessionParams::default()).x25519_backend(backend))
                    .unwrap();
            r.read_message(&one_frame(&mut wire)).unwrap();
            assert_eq!(
                r.write_message(&mut wire).err(),
                Some(Error::Handshake(HandshakeError::AuthenticationFailed)),
                "{backend:?}"
            );
            assert_eq!(r.security_counters().handshakes_failed, 1, "{backend:?}");
        }
    }
}

/// Reconnecting with the same keypairs reuses the static-static result (x25519 module docs):
/// handshakes keep succeeding, and a different host key is never answered from the cache.
#[test]
fn repeated_ik_and_kk_handshakes_with_the_same_keys() {
    let k = keys();
    for profile in [Profile::Ik, Profile::Kk] {
        for _ in 0..3 {
            let i = Handshake::initiator(initiator_config(profile, CipherSuite::default(), &k)).unwrap();
            let r = Handshake::responder(responder_config(&k, SessionParams::default())).unwrap();
            let (i, r) = run_handshake(i, r).unwrap();
            assert_eq!(
                i.into_session().unwrap().handshake_hash(),
                r.into_session().unwrap().handshake_hash()
            );
        }
        // The same device keypair toward the wrong host key: fails, then the right one works.
        let wrong = Keypair::from_private(PrivateKey::from_bytes([0x44; 32]));
        let c = InitiatorConfig::new(profile, k.device.clone(), identity()).host_key(*wrong.public());
        let i = Handshake::initiator(c).unwrap();
        let r = Handshake::responder(responder_config(&k, SessionParams::default())).unwrap();
        assert_eq!(run_handshake(i, r).err(), Some(Error::Handshake(HandshakeError::AuthenticationFailed)));
        let i = Handshake::initiator(initiator_config(profile, CipherSuite::default(), &k)).unwrap();
        let r = Handshake::responder(responder_config(&k, SessionParams::default())).unwrap();
        assert!(run_handshake(i, r).is_ok(), "{profile}");
    }
}

fn established(events: &[SecurityEvent]) -> usize {
    events.iter().filter(|e| matches!(e.kind, EventKind::SessionEstablished { .. })).count()
}

fn drain(s: &mut Session) -> Vec<SecurityEvent> {
    core::iter::from_fn(|| s.poll_event(Timestamp(1))).collect()
}

/// Spec §4.8: an IK/KK responder that has seen only message 1 (replayable) reports no session
/// and fails it at the handshake deadline unless the device's first transport frame
/// authenticates; the genuine device confirms at once with a PING.
#[test]
fn a_replayed_ik_or_kk_hello_never_establishes_a_session() {
    let k = keys();
    for profile in [Profile::Ik, Profile::Kk] {
        // The genuine handshake; the attacker records the HELLO.
        let mut i = Handshake::initiator(initiator_config(profile, CipherSuite::default(), &k)).unwrap();
        let mut r = Handshake::responder(responder_config(&k, SessionParams::default())).unwrap();
        let mut wire = BytesMut::new();
        i.write_message(&mut wire).unwrap();
        let captured = wire.clone();
        r.read_message(&one_frame(&mut wire)).unwrap();
        r.write_message(&mut wire).unwrap();
        i.read_message(&one_frame(&mut wire)).unwrap();
        let (mut dev, mut host) = (i.into_session().unwrap(), r.into_session().unwrap());
        assert!(!host.is_confirmed(), "{profile}: only message 1 seen");
        assert_eq!(established(&drain(&mut host)), 0, "{profile}: not reported before confirmation");
        // The device owes its confirming frame now, before any timer.
        assert_eq!(dev.poll_timeout(), Some(Timestamp(0)), "{profile}");
        dev.handle_timeout(Timestamp(5)).unwrap();
        assert!(dev.poll_transmit(&mut wire));
        assert_eq!(open_all(&mut host, &mut wire), vec![Ok(Incoming::Ping)], "{profile}");
        assert!(host.is_confirmed());
        assert_eq!(established(&drain(&mut host)), 1, "{profile}: reported once confirmed");
        // No second PING from the device later: it owed one frame.
        dev.handle_timeout(Timestamp(6)).unwrap();
        assert!(!dev.poll_transmit(&mut BytesMut::new()));

        // The replay: a second host accepts the same HELLO and answers...
        let mut r2 = Handshake::responder(responder_config(&k, SessionParams::default())).unwrap();
        r2.handle_timeout(Timestamp(1_000)).unwrap();
        let mut replay = captured.clone();
        r2.read_message(&one_frame(&mut replay)).unwrap();
        r2.write_message(&mut BytesMut::new()).unwrap();
        let mut fake = r2.into_session().unwrap();
        assert!(!fake.is_confirmed());
        let events = drain(&mut fake);
        assert_eq!(established(&events), 0, "{profile}: a replay is never a session");
        // ... and fails it at the handshake's own deadline, without sending anything.
        let deadline = Timestamp(1_000 + vitalwire::handshake::DEFAULT_HANDSHAKE_TIMEOUT_MS);
        assert_eq!(fake.poll_timeout(), Some(deadline), "{profile}");
        fake.handle_timeout(Timestamp(deadline.0 - 1)).unwrap();
        assert_eq!(
            fake.handle_timeout(deadline),
            Err(Error::Handshake(HandshakeError::NotConfirmed)),
            "{profile}"
        );
        assert!(!fake.poll_transmit(&mut BytesMut::new()), "nothing to tell an unconfirmed peer");
        let events = drain(&mut fake);
        assert_eq!(established(&events), 0);
        assert!(events.iter().any(|e| e.kind
            == EventKind::HandshakeFailed { reason: Error::Handshake(HandshakeError::NotConfirmed) }));
        assert_eq!(fake.error(), Some(Error::Handshake(HandshakeError::NotConfirmed)));

        // A replay followed by a forged frame: an authentication failure, still no session.
        let mut r3 = Handshake::responder(responder_config(&k, SessionParams::default())).unwrap();
        let mut replay = captured.clone();
        r3.read_message(&one_frame(&mut replay)).unwrap();
        r3.write_message(&mut BytesMut::new()).unwrap();
        let mut fake = r3.into_session().unwrap();
        let mut forged = BytesMut::from(
            &[0, 24, 0x55, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]
                [..],
        );
        assert_eq!(open_all(&mut fake, &mut forged), vec![Err(Error::AuthenticationFailed)]);
        assert!(!fake.is_confirmed());
        assert_eq!(established(&drain(&mut fake)), 0);
    }
}

/// XX and the initiator side are confirmed by the handshake itself: reported at once, and the
/// device sends no extra frame.
#[test]
fn three_message_handshakes_and_initiators_are_confirmed_by_the_handshake() {
    for profile in [Profile::Xx, Profile::XxPsk3] {
        let (mut dev, mut host) =
            session_pair_with(profile, CipherSuite::default(), SessionParams::default());
        assert!(host.is_confirmed() && dev.is_confirmed());
        assert_eq!(established(&drain(&mut host)), 1, "{profile}");
        assert_eq!(established(&drain(&mut dev)), 1, "{profile}");
        dev.handle_timeout(Timestamp(5)).unwrap();
        assert!(!dev.poll_transmit(&mut BytesMut::new()), "{profile}: no confirming PING");
    }
    // IK: a device that sends data first owes no PING.
    let (mut dev, mut host) = session_pair();
    assert_eq!(established(&drain(&mut dev)), 1);
    let mut wire = BytesMut::new();
    dev.seal_data(1, b"x", &mut wire).unwrap();
    dev.handle_timeout(Timestamp(5)).unwrap();
    assert!(!dev.poll_transmit(&mut wire));
    assert_eq!(open_all(&mut host, &mut wire).len(), 1);
    assert!(host.is_confirmed());
}
