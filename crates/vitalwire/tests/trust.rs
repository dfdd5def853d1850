//! Identity and trust: the allowlist, revocation (also of a live session), trust on first use,
//! host key rotation, pairing codes (and a man in the middle), crash-safety of the store, key
//! files, and every security event kind.

mod common;

use std::sync::Arc;

use bytes::BytesMut;
use common::*;
use vitalwire::keyfile;
use vitalwire::*;

fn device(seed: u8) -> Keypair {
    Keypair::from_private(PrivateKey::from_bytes([seed; 32]))
}

fn host() -> Keypair {
    Keypair::from_private(PrivateKey::from_bytes([0x11; 32]))
}

fn ik(device_keys: &Keypair, host_key: PublicKey, id: &str) -> Handshake {
    Handshake::initiator(
        InitiatorConfig::new(Profile::Ik, device_keys.clone(), DeviceIdentity::new(id)).host_key(host_key),
    )
    .unwrap()
}

fn xx(device_keys: &Keypair, id: &str) -> InitiatorConfig {
    InitiatorConfig::new(Profile::Xx, device_keys.clone(), DeviceIdentity::new(id))
}

fn responder_with(trust: Arc<dyn TrustPolicy>) -> Handshake {
    Handshake::responder(ResponderConfig::new(host(), trust)).unwrap()
}

fn drain(hs_events: &mut dyn FnMut(Timestamp) -> Option<SecurityEvent>) -> Vec<SecurityEvent> {
    let mut out = Vec::new();
    while let Some(e) = hs_events(Timestamp(42)) {
        out.push(e);
    }
    out
}

fn kinds(events: &[SecurityEvent]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

/// Runs a handshake frame by frame, returning the responder even when it fails (and the
/// frames the responder wrote after its failure).
fn drive(mut i: Handshake, mut r: Handshake) -> (Handshake, Handshake, BytesMut) {
    let mut wire = BytesMut::new();
    for _ in 0..4 {
        if i.wants_write() && i.write_message(&mut wire).is_ok() {
            let _ = r.read_message(&one_frame(&mut wire));
        }
        if r.wants_write() {
            r.write_message(&mut wire).unwrap();
            if r.error().is_some() {
                // Let the initiator see the REJECT or CLOSE, and keep a copy for the caller.
                let copy = wire.clone();
                if !i.is_finished() {
                    let _ = i.read_message(&one_frame(&mut wire));
                }
                return (i, r, copy);
            }
            let _ = i.read_message(&one_frame(&mut wire));
        }
        if r.error().is_some() || (i.is_finished() && r.is_finished()) {
            break;
        }
    }
    (i, r, wire)
}

#[test]
fn the_host_admits_only_devices_in_its_allowlist() {
    let known = device(0x22);
    let stranger = device(0x23);
    let mut list = TrustList::new();
    list.add(*known.public(), "PM-0001", "ICU 4", 1);
    let store: Arc<dyn TrustPolicy> = Arc::new(TrustStore::in_memory(list));

    // IK: the stranger is refused right after message 1, before the host answers.
    let (_, mut r, mut wire) =
        drive(ik(&stranger, *host().public(), "PM-0009"), responder_with(store.clone()));
    assert_eq!(r.error(), Some(Error::Handshake(HandshakeError::UnknownPeer)));
    let body = one_frame(&mut wire);
    assert_eq!(&body[..], &[0x03, 0x01, 0x04], "a REJECT 'unknown credential', no message 2");
    let events = drain(&mut |t| r.poll_event(t));
    assert_eq!(events[0].kind, EventKind::UnknownPeer);
    assert_eq!(events[0].peer, Some(stranger.public().fingerprint()));
    assert_eq!(events[0].device_id.as_deref(), Some("PM-0009"));
    assert_eq!(events[0].severity, Severity::Alert);
    assert_eq!(events[0].time, Timestamp(42));
    assert!(matches!(events[1].kind, EventKind::HandshakeFailed { .. }));
    assert_eq!(r.security_counters().unknown_peers, 1);

    // XX: the stranger completes Noise, then gets an authenticated CLOSE UNAUTHORIZED.
    let (i, r, mut wire) =
        drive(Handshake::initiator(xx(&stranger, "PM-0009")).unwrap(), responder_with(store.clone()));
    assert_eq!(r.error(), Some(Error::Handshake(HandshakeError::UnknownPeer)));
    let mut dev = i.into_session().unwrap();
    let frame = one_frame(&mut wire);
    assert_eq!(dev.open(frame), Ok(Incoming::Closed(CloseCode::UNAUTHORIZED)));

    // The known device gets in with either profile.
    let (i, r, _) = drive(ik(&known, *host().public(), "PM-0001"), responder_with(store.clone()));
    assert!(i.is_finished() && r.is_finished());
    let mut s = r.into_session().unwrap();
    // IK: established once the device's first frame confirms the keys (spec §4.8).
    let mut confirm = BytesMut::new();
    assert!(i.into_session().unwrap().poll_transmit(&mut confirm));
    assert_eq!(s.open(one_frame(&mut confirm)), Ok(Incoming::Ping));
    assert!(matches!(
        drain(&mut |t| s.poll_event(t))[0].kind,
        EventKind::SessionEstablished { pairing: false, .. }
    ));
    let (i, r, _) =
        drive(Handshake::initiator(xx(&known, "PM-0001")).unwrap(), responder_with(store.clone()));
    assert!(i.is_finished() && r.is_finished());

    // A known key presenting another device's id is not admitted.
    let (_, r, _) = drive(ik(&known, *host().public(), "PM-0002"), responder_with(store));
    assert_eq!(r.error(), Some(Error::Handshake(HandshakeError::UnknownPeer)));
}

#[test]
fn kk_finds_device_keys_in_the_trust_store_and_refuses_revoked_ones() {
    let known = device(0x22);
    let mut list = TrustList::new();
    list.add(*known.public(), "", "", 1);
    let store = Arc::new(TrustStore::in_memory(list));
    let kk = |k: &Keypair| {
        Handshake::initiator(
            InitiatorConfig::new(Profile::Kk, k.clone(), DeviceIdentity::new("PM-0001"))
                .host_key(*host().public()),
        )
        .unwrap()
    };
    let (i, r, _) = drive(kk(&known), responder_with(store.clone()));
    assert!(i.is_finished() && r.is_finished());
    store.revoke(known.public()).unwrap();
    let (mut i, mut r, _) = drive(kk(&known), responder_with(store.clone()));
    assert_eq!(
        r.error(),
        Some(Error::Handshake(HandshakeError::RevokedPeer)),
        "a revoked KK key is refused as revoked, not as unknown"
    );
    let events = drain(&mut |t| r.poll_event(t));
    assert!(kinds(&events).contains(&EventKind::RevokedPeer), "{events:?}");
    assert!(!kinds(&events).contains(&EventKind::UnknownPeer), "{events:?}");
    assert_eq!(r.security_counters().revoked_peers, 1);
    // On the wire the device learns no more than for an unknown key.
    assert_eq!(i.error(), Some(Error::Handshake(HandshakeError::Rejected(RejectReason::UnknownCredential))));
    assert!(i.poll_event(Timestamp(1)).is_some());
    // A key id nobody has is still an unknown peer.
    let (_, mut r, _) = drive(kk(&device(0x23)), responder_with(store));
    assert_eq!(r.error(), Some(Error::Handshake(HandshakeError::UnknownPeer)));
    assert!(kinds(&drain(&mut |t| r.poll_event(t))).contains(&EventKind::UnknownPeer));
}

#[test]
fn revocation_rejects_new_handshakes_and_closes_live_sessions() {
    let d = device(0x22);
    let mut list = TrustList::new();
    list.add(*d.public(), "PM-0001", "", 1);
    let store = Arc::new(TrustStore::in_memory(list));
    let (i, r, _) = drive(ik(&d, *host().public(), "PM-0001"), responder_with(store.clone()));
    let mut dev = i.into_session().unwrap();
    let mut hostside = r.into_session().unwrap();
    let mut wire = BytesMut::new();
    dev.seal_data(1, b"before", &mut wire).unwrap();
    assert!(hostside.open(one_frame(&mut wire)).is_ok());
    assert_eq!(hostside.recheck(store.as_ref()), Ok(()));

    assert!(store.revoke(d.public()).unwrap());
    // The live session: the host re-checks, fails closed and tells the device.
    assert_eq!(hostside.recheck(store.as_ref()), Err(Error::Unauthorized));
    assert!(hostside.is_closed());
    assert!(hostside.poll_transmit(&mut wire));
    assert_eq!(dev.open(one_frame(&mut wire)), Ok(Incoming::Closed(CloseCode::UNAUTHORIZED)));
    let events = drain(&mut |t| hostside.poll_event(t));
    assert!(kinds(&events).contains(&EventKind::RevokedPeer));
    // A new handshake is refused mid-handshake (after message 1).
    let (_, r, _) = drive(ik(&d, *host().public(), "PM-0001"), responder_with(store.clone()));
    assert_eq!(r.error(), Some(Error::Handshake(HandshakeError::RevokedPeer)));
    // Re-adding the key admits it again.
    store.add(*d.public(), "PM-0001", "replaced battery").unwrap();
    let (_, r, _) = drive(ik(&d, *host().public(), "PM-0001"), responder_with(store));
    assert!(r.is_finished());
}

#[test]
fn trust_on_first_use_is_opt_in_and_records_the_key() {
    let d = device(0x30);
    let store = Arc::new(TrustStore::in_memory(TrustList::new()));
    let (_, r, _) = drive(ik(&d, *host().public(), "PM-0030"), responder_with(store.clone()));
    assert_eq!(r.error(), Some(Error::Handshake(HandshakeError::UnknownPeer)), "off by default");
    store.set_tofu(true).unwrap();
    let (_, r, _) = drive(ik(&d, *host().public(), "PM-0030"), responder_with(store.clone()));
    assert!(r.is_finished());
    let entry = store.snapshot().get(d.public()).cloned().unwrap();
    assert_eq!(entry.device_id, "PM-0030");
    // Once recorded, the key is bound to that id even with TOFU on.
    let (_, r, _) = drive(ik(&d, *host().public(), "PM-OTHER"), responder_with(store.clone()));
    assert_eq!(r.error(), Some(Error::Handshake(HandshakeError::UnknownPeer)));
    // Revoked keys stay refused under TOFU.
    store.revoke(d.public()).unwrap();
    let (_, r, _) = drive(ik(&d, *host().public(), "PM-0030"), responder_with(store));
    assert_eq!(r.error(), Some(Error::Handshake(HandshakeError::RevokedPeer)));
}

#[test]
fn host_key_rotation_accepts_old_and_new_during_the_window() {
    let old_host = Keypair::from_private(PrivateKey::from_bytes([0x70; 32]));
    let new_host = Keypair::from_private(PrivateKey::from_bytes([0x71; 32]));
    let d = device(0x22);
    let mut list = TrustList::new();
    list.add(*d.public(), "", "", 1);
    let trust: Arc<dyn TrustPolicy> = Arc::new(TrustStore::in_memory(list));
    let rotating = || {
        Handshake::responder(
            ResponderConfig::new(new_host.clone(), trust.clone()).accept_previous_key(old_host.clone()),
        )
        .unwrap()
    };
    // IK devices addressed to either key get in.
    for target in [old_host.public(), new_host.public()] {
        let (i, r, _) = drive(ik(&d, *target, "PM-0001"), rotating());
        assert!(i.is_finished() && r.is_finished(), "IK to {target:?}");
        assert_eq!(i.into_session().unwrap().remote_static(), target);
    }
    // After the window, the old key is refused.
    let done = Handshake::responder(ResponderConfig::new(new_host.clone(), trust.clone())).unwrap();
    let (_, r, _) = drive(ik(&d, *old_host.public(), "PM-0001"), done);
    assert_eq!(r.error(), Some(Error::Handshake(HandshakeError::AuthenticationFailed)));
    // XX devices pin both keys during the window and accept the new one.
    let cfg = xx(&d, "PM-0001").pin_host_keys([*old_host.public(), *new_host.public()]);
    let (i, r, _) = drive(Handshake::initiator(cfg).unwrap(), rotating());
    assert!(i.is_finished() && r.is_finished());
    let cfg = xx(&d, "PM-0001").pin_host_keys([*old_host.public()]);
    let (i, _, _) = drive(Handshake::initiator(cfg).unwrap(), rotating());
    assert_eq!(i.error(), Some(Error::Handshake(HandshakeError::UnexpectedPeerKey)));
}

fn pairing_host(trust: Arc<dyn TrustPolicy>, allow: bool) -> Handshake {
    Handshake::responder(ResponderConfig::new(host(), trust).allow_pairing(allow)).unwrap()
}

#[test]
fn pairing_codes_match_and_only_confirmation_admits_the_device() {
    let d = device(0x40);
    let store = Arc::new(TrustStore::in_memory(TrustList::new()));
    // Pairing closed: refused with a clear reason.
    let (i, r, _) = drive(
        Handshake::initiator(xx(&d, "PM-0040").request_pairing()).unwrap(),
        pairing_host(store.clone(), false),
    );
    assert_eq!(r.error(), Some(Error::Handshake(HandshakeError::PairingNotAllowed)));
    assert_eq!(i.error(), Some(Error::Handshake(HandshakeError::Rejected(RejectReason::PairingNotAllowed))));
    // Pairing open.
    let (i, r, _) = drive(
        Handshake::initiator(xx(&d, "PM-0040").request_pairing()).unwrap(),
        pairing_host(store.clone(), true),
    );
    let mut dev = i.into_session().unwrap();
    let mut hostside = r.into_session().unwrap();
    let (a, b) = (dev.pairing_code().unwrap(), hostside.pairing_code().unwrap());
    assert_eq!(a, b, "both ends show the same code");
    assert_eq!(format!("{a}").len(), 6);
    // No data flows in a pairing session.
    assert_eq!(dev.seal_data(1, b"HR=70", &mut BytesMut::new()), Err(Error::PairingSession));
    let mut wire = BytesMut::new();
    dev.seal_raw_for_testing_only(1, 0, 1, b"sneaky", &mut wire).unwrap();
    assert_eq!(
        hostside.open(one_frame(&mut wire)),
        Err(Error::Protocol(ProtocolError::DataInPairingSession))
    );
    // Not yet trusted: a normal session is refused until the operator confirms.
    let (_, r, _) = drive(Handshake::initiator(xx(&d, "PM-0040")).unwrap(), responder_with(store.clone()));
    assert_eq!(r.error(), Some(Error::Handshake(HandshakeError::UnknownPeer)));
    // The operator confirms the code: the host trusts the device, the device pins the host.
    store.add(*hostside.remote_static(), "PM-0040", "paired at bedside").unwrap();
    let pinned = *dev.remote_static();
    let cfg = xx(&d, "PM-0040").pin_host_keys([pinned]);
    let (i, r, _) = drive(Handshake::initiator(cfg).unwrap(), responder_with(store.clone()));
    assert!(i.is_finished() && r.is_finished());
    assert!(!r.into_session().unwrap().is_pairing());
    // A revoked device cannot pair again.
    store.revoke(d.public()).unwrap();
    let (_, r, _) =
        drive(Handshake::initiator(xx(&d, "PM-0040").request_pairing()).unwrap(), pairing_host(store, true));
    assert_eq!(r.error(), Some(Error::Handshake(HandshakeError::RevokedPeer)));
}

#[test]
fn a_man_in_the_middle_produces_different_pairing_codes() {
    // The attacker terminates the device's XX handshake as a fake host and opens its own to
    // the real host as a fake device, relaying nothing it cannot forge.
    let d = device(0x41);
    let attacker = Keypair::from_private(PrivateKey::from_bytes([0x66; 32]));
    let store: Arc<dyn TrustPolicy> = Arc::new(TrustStore::in_memory(TrustList::new()));
    let real_host = pairing_host(store.clone(), true);
    let fake_host = Handshake::responder(
        ResponderConfig::new(attacker.clone(), Arc::new(AllowAnyPeerInsecure)).allow_pairing(true),
    )
    .unwrap();
    let device_side = Handshake::initiator(
        xx(&d, "PM-0041").request_pairing().fixed_pairing_nonce_for_testing_only([1; 32]),
    )
    .unwrap();
    let fake_device = Handshake::initiator(
        InitiatorConfig::new(Profile::Xx, attacker, DeviceIdentity::new("PM-0041"))
            .request_pairing()
            .fixed_pairing_nonce_for_testing_only([1; 32]),
    )
    .unwrap();
    let (i1, r1, _) = drive(device_side, fake_host);
    let (i2, r2, _) = drive(fake_device, real_host);
    let device_code = i1.into_session().unwrap().pairing_code().unwrap();
    let _ = r1.into_session().unwrap();
    let _ = i2.into_session().unwrap();
    let host_code = r2.into_session().unwrap().pairing_code().unwrap();
    assert_ne!(device_code, host_code, "the person comparing codes sees the attack");
}

#[test]
fn a_tampered_pairing_commitment_fails_the_handshake() {
    let d = device(0x42);
    let mut i = Handshake::initiator(xx(&d, "PM-0042").request_pairing()).unwrap();
    let mut r = pairing_host(Arc::new(TrustStore::in_memory(TrustList::new())), true);
    let mut wire = BytesMut::new();
    i.write_message(&mut wire).unwrap();
    let mut hello = one_frame(&mut wire);
    let last = hello.len() - 1;
    hello[last] ^= 1; // the commitment is the cleartext payload of XX message 1
    r.read_message(&hello).unwrap();
    r.write_message(&mut wire).unwrap();
    // The commitment is hashed into the transcript: message 2 no longer authenticates.
    assert_eq!(
        i.read_message(&one_frame(&mut wire)),
        Err(Error::Handshake(HandshakeError::AuthenticationFailed))
    );
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vitalwire-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn temp_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

#[test]
fn the_store_file_survives_crashes_and_refuses_damage() {
    let dir = temp_dir("store");
    let path = dir.join("trust.vw");
    assert!(TrustStore::open(&path).is_err(), "a missing store is an error, not an empty allowlist");
    let store = TrustStore::create(&path).unwrap().with_clock(|| 1_000);
    assert!(matches!(
        TrustStore::create(&path),
        Err(vitalwire::trust_store::TrustStoreError::AlreadyExists(_))
    ));
    store.add(device(1).public().to_owned(), "PM-1", "bed 1").unwrap();
    store.add(*device(2).public(), "PM-2", "bed 2").unwrap();
    // A crash between writing the temporary file and renaming it.
    store.crash_before_rename_for_testing_only();
    assert!(store.add(*device(3).public(), "PM-3", "bed 3").is_err());
    assert!(store.snapshot().get(device(3).public()).is_none(), "memory rolled back with the file");
    assert_eq!(temp_files(&dir).len(), 1, "the half-done write is left behind");
    let reopened = TrustStore::open(&path).unwrap();
    assert_eq!(reopened.snapshot().len(), 2, "the old store is intact");
    // A garbage temp file (a crash mid-write) is ignored, and removed by the next save.
    std::fs::write(dir.join("trust.vw.tmp"), b"vitalwire trust st").unwrap();
    let reopened = TrustStore::open(&path).unwrap();
    reopened.add(*device(3).public(), "PM-3", "bed 3").unwrap();
    assert_eq!(TrustStore::open(&path).unwrap().snapshot().len(), 3);
    assert_eq!(temp_files(&dir), Vec::<String>::new(), "leftovers of crashed writers are removed");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // Damage: truncation and edits are refused, and the file is left as it was.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    assert!(matches!(TrustStore::open(&path), Err(vitalwire::trust_store::TrustStoreError::Corrupt { .. })));
    std::fs::write(&path, text.replace("bed%203", "bed%209")).unwrap();
    let err = TrustStore::open(&path).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    std::fs::write(&path, &text).unwrap();
    // Last-seen times are kept in memory until flushed.
    let store = TrustStore::open(&path).unwrap().with_clock(|| 5_000);
    store.mark_seen(device(1).public());
    assert_eq!(TrustStore::open(&path).unwrap().snapshot().get(device(1).public()).unwrap().last_seen, None);
    store.flush().unwrap();
    assert_eq!(
        TrustStore::open(&path).unwrap().snapshot().get(device(1).public()).unwrap().last_seen,
        Some(5_000)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn key_files_round_trip_and_bad_ones_are_refused() {
    let dir = temp_dir("keys");
    let kp = Keypair::generate().unwrap();
    let private = dir.join("device.key");
    let public = dir.join("device.pub");
    keyfile::write_private_key(&private, kp.private(), "PM-0001").unwrap();
    keyfile::write_public_key(&public, kp.public(), "PM-0001").unwrap();
    assert_eq!(keyfile::read_private_key(&private).unwrap().public(), kp.public());
    assert_eq!(keyfile::read_public_key(&public).unwrap(), *kp.public());
    assert_eq!(
        keyfile::read_public_key(&private).unwrap(),
        *kp.public(),
        "a private file yields its public key"
    );
    assert!(matches!(
        keyfile::write_private_key(&private, kp.private(), ""),
        Err(keyfile::KeyFileError::AlreadyExists { .. })
    ));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = keyfile::read_private_key(&private).unwrap_err();
        assert!(matches!(err, keyfile::KeyFileError::InsecurePermissions { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // Truncated and corrupted files.
    let text = std::fs::read_to_string(&public).unwrap();
    std::fs::write(&public, &text[..text.len() - 12]).unwrap();
    assert!(keyfile::read_public_key(&public).is_err());
    std::fs::write(&public, text.replacen("x25519 ", "x25519 0", 1)).unwrap();
    assert!(keyfile::read_public_key(&public).is_err());
    assert!(keyfile::read_public_key(&dir.join("missing.pub")).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nonce_exhaustion_and_queue_overflow_are_counted() {
    let (mut dev, _) = session_pair();
    dev.set_send_nonce_for_testing_only(u64::MAX);
    assert_eq!(dev.seal_data(1, b"x", &mut BytesMut::new()), Err(Error::NonceExhausted));
    assert!(kinds(&drain(&mut |t| dev.poll_event(t)))
        .contains(&EventKind::LimitExceeded { limit: Limit::NonceExhausted }));
    // The queue is bounded: a flood of events drops the oldest and counts them.
    let (mut dev, _) = session_pair();
    for _ in 0..100 {
        let _ = dev.seal_data(1, &[0; 65_530], &mut BytesMut::new());
    }
    let c = dev.security_counters();
    assert_eq!(c.limits_exceeded, 100);
    // 101 events: SessionEstablished and 100 refusals.
    assert_eq!(c.events_dropped, 101 - vitalwire::events::EVENT_QUEUE_CAPACITY as u64);
    assert_eq!(drain(&mut |t| dev.poll_event(t)).len(), vitalwire::events::EVENT_QUEUE_CAPACITY);
}

fn entry(path: &std::path::Path, d: &Keypair) -> Option<TrustEntry> {
    TrustStore::open(path).unwrap().snapshot().get(d.public()).cloned()
}

#[test]
fn a_host_store_never_writes_back_a_stale_list() {
    // Two handles on one file: a host (TOFU on, recording last-seen times) and the operator's
    // `trust` commands. Each write of one re-reads the file and applies only its own change.
    let dir = temp_dir("stale");
    let path = dir.join("trust.vw");
    let cli = TrustStore::create(&path).unwrap();
    cli.add(*device(1).public(), "PM-1", "bed 1").unwrap();
    cli.set_tofu(true).unwrap();
    let host = TrustStore::open(&path).unwrap();
    assert_eq!(host.check(device(1).public(), Some(&DeviceIdentity::new("PM-1"))), TrustDecision::Trusted);

    // The operator revokes PM-1 and adds PM-2; the host has not reloaded yet.
    assert!(TrustStore::open(&path).unwrap().revoke(device(1).public()).unwrap());
    TrustStore::open(&path).unwrap().add(*device(2).public(), "PM-2", "").unwrap();
    // A TOFU admission and a last-seen flush by the host keep both.
    let tofu = device(3);
    assert_eq!(host.check(tofu.public(), Some(&DeviceIdentity::new("PM-3"))), TrustDecision::Trusted);
    host.flush().unwrap();
    assert!(entry(&path, &device(1)).unwrap().revoked_at.is_some(), "the revocation was undone");
    assert!(entry(&path, &device(2)).is_some(), "the operator's add was lost");
    assert_eq!(entry(&path, &tofu).unwrap().label, "trusted on first use");
    assert!(entry(&path, &device(1)).unwrap().last_seen.is_some(), "the host's last-seen time");
    // The host's own write brought the revocation into memory too.
    assert_eq!(host.check(device(1).public(), None), TrustDecision::Revoked);
    assert!(host.reload().unwrap(), "the admitted set changed since the host last asked");
    assert!(!host.reload().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reload_picks_up_other_writers_and_is_quiet_otherwise() {
    let dir = temp_dir("reload");
    let path = dir.join("trust.vw");
    let cli = TrustStore::create(&path).unwrap();
    let host = TrustStore::open(&path).unwrap();
    let d = device(7);
    let id = DeviceIdentity::new("PM-7");
    assert_eq!(host.check(d.public(), Some(&id)), TrustDecision::Unknown);
    assert!(!host.reload().unwrap(), "nothing changed");

    cli.add(*d.public(), "PM-7", "").unwrap();
    assert_eq!(host.check(d.public(), Some(&id)), TrustDecision::Unknown, "not before the reload");
    assert!(host.reload().unwrap());
    assert_eq!(host.check(d.public(), Some(&id)), TrustDecision::Trusted);
    assert!(host.snapshot().get(d.public()).unwrap().last_seen.is_some(), "check records last seen");

    // A label change alone does not change who is admitted.
    cli.add(*d.public(), "PM-7", "moved to ward 3").unwrap();
    assert!(!host.reload().unwrap());
    assert_eq!(host.snapshot().get(d.public()).unwrap().label, "moved to ward 3");
    assert!(host.snapshot().get(d.public()).unwrap().last_seen.is_some(), "pending times survive");

    cli.revoke(d.public()).unwrap();
    assert!(host.reload().unwrap());
    assert_eq!(host.check(d.public(), Some(&id)), TrustDecision::Revoked);

    // A damaged file: an error, and the last good list stays in force.
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("tofu off", "tofu on!")).unwrap();
    assert!(matches!(host.reload(), Err(vitalwire::trust_store::TrustStoreError::Corrupt { .. })));
    assert_eq!(host.check(d.public(), Some(&id)), TrustDecision::Revoked);
    std::fs::remove_file(&path).unwrap();
    assert!(host.reload().is_err(), "a deleted store is an error, not an empty list");
    assert_eq!(host.check(d.public(), Some(&id)), TrustDecision::Revoked);
    std::fs::write(&path, &good).unwrap();
    assert!(!host.reload().unwrap(), "the same contents again");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn concurrent_writers_in_separate_handles_lose_nothing() {
    // Each thread opens its own handle (its own file descriptors), as separate processes do;
    // the file lock is what keeps them apart. A TOFU "host" writes at the same time.
    let dir = temp_dir("concurrent");
    let path = dir.join("trust.vw");
    TrustStore::create(&path).unwrap().set_tofu(true).unwrap();
    let revoked = device(200);
    TrustStore::open(&path).unwrap().add(*revoked.public(), "PM-R", "").unwrap();
    TrustStore::open(&path).unwrap().revoke(revoked.public()).unwrap();
    let host = Arc::new(TrustStore::open(&path).unwrap());
    let mut threads = Vec::new();
    for t in 0..8u8 {
        let path = path.clone();
        threads.push(std::thread::spawn(move || {
            for n in 0..12u8 {
                let k = device(t * 12 + n + 1);
                let id = format!("PM-{t}-{n}");
                let store = TrustStore::open_or_create(&path).unwrap();
                store.add(*k.public(), &id, "").unwrap();
                if n % 4 == 3 {
                    TrustStore::open(&path).unwrap().revoke(k.public()).unwrap();
                }
            }
        }));
    }
    let tofu_host = host.clone();
    let revoked_key = *revoked.public();
    threads.push(std::thread::spawn(move || {
        for n in 0..20u8 {
            let k = device(101 + n);
            let id = DeviceIdentity::new(format!("TOFU-{n}"));
            assert_eq!(tofu_host.check(k.public(), Some(&id)), TrustDecision::Trusted);
            tofu_host.flush().unwrap();
            assert_eq!(tofu_host.check(&revoked_key, None), TrustDecision::Revoked);
        }
    }));
    for t in threads {
        t.join().unwrap();
    }
    let list = TrustStore::open(&path).unwrap().snapshot();
    assert_eq!(list.len(), 1 + 96 + 20, "every reported write is in the file");
    for t in 0..8u8 {
        for n in 0..12u8 {
            let e = list.get(device(t * 12 + n + 1).public()).expect("added");
            assert_eq!(e.device_id, format!("PM-{t}-{n}"));
            assert_eq!(e.revoked_at.is_some(), n % 4 == 3);
        }
    }
    assert!(list.get(revoked.public()).unwrap().revoked_at.is_some(), "no revocation undone");
    assert_eq!(temp_files(&dir), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_held_lock_fails_the_write_without_changing_anything() {
    let dir = temp_dir("locked");
    let path = dir.join("trust.vw");
    TrustStore::create(&path).unwrap().set_tofu(true).unwrap();
    let holder = std::fs::OpenOptions::new().write(true).open(dir.join("trust.vw.lock")).unwrap();
    holder.lock().unwrap();
    let store = TrustStore::open(&path).unwrap().with_lock_timeout(std::time::Duration::from_millis(50));
    let err = store.add(*device(1).public(), "PM-1", "").unwrap_err();
    assert!(matches!(err, vitalwire::trust_store::TrustStoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("locked by another process"), "{err}");
    assert!(store.snapshot().is_empty() && TrustStore::open(&path).unwrap().snapshot().is_empty());
    // TOFU cannot record the key while the lock is held: the device is refused (fail closed).
    let id = DeviceIdentity::new("PM-2");
    assert_eq!(store.check(device(2).public(), Some(&id)), TrustDecision::Unknown);
    drop(holder);
    assert_eq!(store.check(device(2).public(), Some(&id)), TrustDecision::Trusted);
    store.add(*device(1).public(), "PM-1", "").unwrap();
    assert_eq!(TrustStore::open(&path).unwrap().snapshot().len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ids_and_labels_the_spec_or_a_reader_would_refuse_are_never_stored() {
    use vitalwire::trust::TrustValueError;
    use vitalwire::trust_store::TrustStoreError;
    let store = TrustStore::in_memory(TrustList::new());
    let k = *device(1).public();
    let invalid = |r: Result<(), TrustStoreError>| match r {
        Err(TrustStoreError::Invalid(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(invalid(store.add(k, &"x".repeat(65), "")), TrustValueError::DeviceIdTooLong(65));
    assert_eq!(invalid(store.add(k, "PM-1\nforged", "")), TrustValueError::ControlCharacter("device id"));
    assert_eq!(invalid(store.add(k, "PM-1\u{202E}", "")), TrustValueError::ControlCharacter("device id"));
    assert_eq!(invalid(store.add(k, "PM-1", "bed\r4")), TrustValueError::ControlCharacter("label"));
    assert_eq!(invalid(store.add(k, "PM-1", &"l".repeat(257))), TrustValueError::LabelTooLong(257));
    assert!(store.snapshot().is_empty());
    store.add(k, &"x".repeat(64), &"l".repeat(256)).unwrap();
    store.add(k, "Überwachung 5 — Bett 3", "").unwrap();
    assert_eq!(vitalwire::trust::check_device_id(""), Err(TrustValueError::EmptyDeviceId));

    // TOFU records only ids a `trust add` would accept, and never "any id".
    let store = TrustStore::in_memory(TrustList::new());
    store.set_tofu(true).unwrap();
    let d = device(2);
    assert_eq!(store.check(d.public(), Some(&DeviceIdentity::new("PM-2\nPM-9"))), TrustDecision::Unknown);
    assert_eq!(store.check(d.public(), Some(&DeviceIdentity::new("PM-\u{7}"))), TrustDecision::Unknown);
    assert_eq!(store.check(d.public(), None), TrustDecision::Unknown);
    assert!(store.snapshot().is_empty(), "nothing recorded");
    assert_eq!(store.check(d.public(), Some(&DeviceIdentity::new("PM-2"))), TrustDecision::Trusted);
    assert_eq!(store.snapshot().get(d.public()).unwrap().device_id, "PM-2");
}
