//! The README's demo command works end to end.

use std::process::Command;

#[test]
fn demo_streams_telemetry_from_every_profile_and_rejects_the_rogues() {
    let out = Command::new(env!("CARGO_BIN_EXE_vitalwire"))
        .args(["demo", "--devices", "8", "--frames", "30", "--interval-ms", "0", "--quiet"])
        .output()
        .expect("run vitalwire demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for profile in ["XX/", "IK/", "KK/", "XXpsk3/"] {
        for suite in ["ChaChaPoly", "AESGCM"] {
            assert!(stdout.contains(&format!("{profile}{suite}")), "{profile}{suite} missing:\n{stdout}");
        }
    }
    // Every device delivered 30 numerics and 30 waveform blocks and closed cleanly.
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("PM-")).collect();
    assert_eq!(rows.len(), 8);
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!((cols[2], cols[3]), ("30", "30"), "{row}");
        assert!(row.ends_with("closed by device (normal)"), "{row}");
    }
    // The rogues are rejected and the host logs each as a security event.
    assert!(stdout.contains(r#""event":"unknown_peer""#), "{stdout}");
    assert!(stdout.contains(r#""device_id":"ROGUE-UNKNOWN""#), "{stdout}");
    assert_eq!(stdout.matches(r#""event":"authentication_failure""#).count(), 2, "{stdout}");
    for rogue in ["ROGUE-UNKNOWN", "ROGUE-TAMPER", "ROGUE-REPLAY"] {
        assert!(stdout.lines().any(|l| l.starts_with(rogue) && l.contains("rejected")), "{rogue}: {stdout}");
    }
}

#[test]
fn bad_arguments_exit_non_zero_with_a_message() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_vitalwire")).args(["demo", "--devices", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--devices"));
}
