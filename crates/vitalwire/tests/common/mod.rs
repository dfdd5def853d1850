//! Shared helpers: build both ends in memory and move frames between them.
#![allow(dead_code)]

use bytes::BytesMut;
use vitalwire::*;

pub struct Keys {
    pub host: Keypair,
    pub device: Keypair,
    pub psk: Psk,
}

pub const PSK_ID: &[u8] = b"factory-psk-0001";

pub fn keys() -> Keys {
    Keys {
        host: Keypair::from_private(PrivateKey::from_bytes([0x11; 32])),
        device: Keypair::from_private(PrivateKey::from_bytes([0x22; 32])),
        psk: Psk::from_bytes([0x33; 32]),
    }
}

pub fn identity() -> DeviceIdentity {
    DeviceIdentity {
        device_id: "PM-0001".into(),
        model: "VW-Monitor".into(),
        firmware: "1.0.0".into(),
        max_frame_len: 4096,
    }
}

pub fn initiator_config(profile: Profile, suite: CipherSuite, k: &Keys) -> InitiatorConfig {
    let mut c = InitiatorConfig::new(profile, k.device.clone(), identity()).suite(suite);
    if profile.needs_remote_key() {
        c = c.host_key(*k.host.public());
    }
    if profile.needs_psk() {
        c = c.psk(PSK_ID, k.psk.clone());
    }
    c
}

/// A trust store that admits the test device.
pub fn trust(k: &Keys) -> std::sync::Arc<TrustStore> {
    let mut list = TrustList::new();
    list.add(*k.device.public(), "PM-0001", "test device", 1);
    std::sync::Arc::new(TrustStore::in_memory(list))
}

pub fn psks(k: &Keys) -> std::sync::Arc<StaticPskDirectory> {
    let mut dir = StaticPskDirectory::new();
    dir.add(PSK_ID, k.psk.clone());
    std::sync::Arc::new(dir)
}

pub fn responder_config(k: &Keys, params: SessionParams) -> ResponderConfig {
    ResponderConfig::new(k.host.clone(), trust(k)).params(params).psk_directory(psks(k))
}

/// Splits exactly one frame body out of `wire`.
pub fn one_frame(wire: &mut BytesMut) -> BytesMut {
    StreamDecoder::new(65535).decode(wire).expect("valid frame").expect("complete frame")
}

/// Runs a handshake to completion, returning both handshakes ready for `into_session`.
pub fn run_handshake(mut i: Handshake, mut r: Handshake) -> Result<(Handshake, Handshake), Error> {
    let mut wire = BytesMut::new();
    for _ in 0..4 {
        if i.wants_write() {
            i.write_message(&mut wire)?;
            r.read_message(&one_frame(&mut wire))?;
        }
        if r.wants_write() {
            r.write_message(&mut wire)?;
            i.read_message(&one_frame(&mut wire))?;
        }
        if i.is_finished() && r.is_finished() {
            return Ok((i, r));
        }
    }
    panic!("handshake did not finish");
}

pub fn session_pair_with(profile: Profile, suite: CipherSuite, params: SessionParams) -> (Session, Session) {
    let k = keys();
    let i = Handshake::initiator(initiator_config(profile, suite, &k)).unwrap();
    let r = Handshake::responder(responder_config(&k, params)).unwrap();
    let (i, r) = run_handshake(i, r).unwrap();
    (i.into_session().unwrap(), r.into_session().unwrap())
}

pub fn session_pair() -> (Session, Session) {
    session_pair_with(Profile::Ik, CipherSuite::ChaChaPolyBlake2s, SessionParams::default())
}

/// Opens every frame in `wire` on `s`, returning the results.
pub fn open_all(s: &mut Session, wire: &mut BytesMut) -> Vec<Result<Incoming, Error>> {
    let mut dec = StreamDecoder::new(s.max_frame_len());
    let mut out = Vec::new();
    while let Some(f) = dec.decode(wire).unwrap() {
        out.push(s.open(f));
    }
    out
}
