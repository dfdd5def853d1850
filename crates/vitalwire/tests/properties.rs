//! The fuzzing invariants as property tests (with shrinking), run by `cargo test`: every input
//! path of `vitalwire::fuzzing` on arbitrary bytes, plus structured inputs that reach deeper.

use proptest::prelude::*;
use vitalwire::fuzzing;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn decoders_never_panic_and_round_trip(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        fuzzing::frame_decode(&data);
        fuzzing::handshake_payloads(&data);
        fuzzing::key_and_trust_files(&data);
    }

    #[test]
    fn stream_decoder_in_any_chunks(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        fuzzing::stream_decoder(&data);
    }

    #[test]
    fn replay_window_matches_its_model(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzzing::replay_window(&data);
    }

    #[test]
    fn reassembly_stays_bounded(data in proptest::collection::vec(any::<u8>(), 0..800)) {
        fuzzing::reassembly(&data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn responder_survives_arbitrary_handshakes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzzing::responder(&data);
    }

    #[test]
    fn session_delivers_only_genuine_data_in_order(ops in proptest::collection::vec(any::<u8>(), 0..120)) {
        fuzzing::session(&ops);
    }

    #[test]
    fn datagram_peers_survive_hostile_packets(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzzing::datagram_peers(&data);
    }

    #[test]
    fn two_peers_over_a_hostile_link(ops in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzzing::two_peers(&ops);
    }
}

#[test]
fn structured_session_inputs_reach_every_operation() {
    // Genuine data, a tampered frame (fatal), and replays: the invariants hold in each order.
    // (profile byte, then op/arg pairs: 0 data, 1 junk, 2 tampered, 3 replay, 4 rekey, 5 ping)
    assert_eq!(fuzzing::session(&[1, 0, 5, 0, 9, 4, 0, 5, 1, 0, 7]), 3, "data, data, rekey, ping, data");
    assert_eq!(
        fuzzing::session(&[0, 0, 3, 3, 0, 0, 4]),
        1,
        "a replay is fatal: the second message never arrives"
    );
    assert_eq!(fuzzing::session(&[2, 0, 200, 2, 7, 0, 1]), 1, "tampering is fatal");
    assert_eq!(fuzzing::session(&[0, 0, 250, 0, 251, 0, 252]), 3, "fragmented messages arrive whole");
    // Delivery through the hostile link: delivered, duplicated and delayed packets.
    // op & 0x80: the device sends; op % 5: 0 delay, 1 deliver, 2 duplicate, 3 tamper, 4 lose.
    let pattern = [0x83u8, 0x01, 0x02, 0x01, 0x83, 0x06, 0x00, 0x01, 0x03, 0x01];
    for profile in [0u8, 1] {
        let ops: Vec<u8> =
            core::iter::once(profile).chain(pattern.iter().copied().cycle().take(400)).collect();
        assert!(fuzzing::two_peers(&ops) > 10, "genuine traffic gets through");
    }
}
