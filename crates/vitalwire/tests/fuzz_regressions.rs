//! Every input the fuzzers ever crashed on (tests/data/fuzz-regressions/<target>/), replayed
//! through the same entry point: each must now pass.

use vitalwire::fuzzing;

#[test]
fn past_fuzzer_findings_stay_fixed() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/fuzz-regressions");
    let mut replayed = 0;
    for target in std::fs::read_dir(root).unwrap() {
        let target = target.unwrap().path();
        let name = target.file_name().unwrap().to_str().unwrap().to_string();
        for input in std::fs::read_dir(&target).unwrap() {
            let data = std::fs::read(input.unwrap().path()).unwrap();
            match name.as_str() {
                "frame_decode" => fuzzing::frame_decode(&data),
                "handshake_payloads" => fuzzing::handshake_payloads(&data),
                "stream_decoder" => fuzzing::stream_decoder(&data),
                "responder" => fuzzing::responder(&data),
                "session" => drop(fuzzing::session(&data)),
                "replay_window" => fuzzing::replay_window(&data),
                "reassembly" => fuzzing::reassembly(&data),
                "key_and_trust_files" => fuzzing::key_and_trust_files(&data),
                "datagram_peers" => fuzzing::datagram_peers(&data),
                "two_peers" => drop(fuzzing::two_peers(&data)),
                other => panic!("unknown fuzz target folder {other}"),
            }
            replayed += 1;
        }
    }
    assert!(replayed >= 1);
}
