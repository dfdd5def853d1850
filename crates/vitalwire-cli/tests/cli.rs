//! `vitalwire keygen`, `fingerprint` and `trust` from the command line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vitalwire(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vitalwire")).args(args).output().expect("run vitalwire")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(out: &Output) -> String {
    assert!(!out.status.success(), "unexpected success: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vitalwire-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn keygen_fingerprint_and_trust_workflow() {
    let dir = temp_dir("workflow");
    let key = dir.join("pm1.key");
    let store = dir.join("trust.vw");
    let out = ok(&vitalwire(&["keygen", "--out", s(&key), "--comment", "PM-0001"]));
    let fp = out.lines().find_map(|l| l.strip_prefix("fingerprint: ")).unwrap().to_string();
    assert_eq!(fp.len(), 19);
    assert_eq!(ok(&vitalwire(&["fingerprint", s(&dir.join("pm1.key.pub"))])).trim(), fp);
    assert_eq!(ok(&vitalwire(&["fingerprint", s(&key)])).trim(), fp);
    // Refuses to overwrite keys.
    assert!(err(&vitalwire(&["keygen", "--out", s(&key)])).contains("already exists"));

    let pubkey = dir.join("pm1.key.pub");
    ok(&vitalwire(&[
        "trust",
        "--store",
        s(&store),
        "add",
        s(&pubkey),
        "--device-id",
        "PM-0001",
        "--label",
        "ICU 4",
    ]));
    let list = ok(&vitalwire(&["trust", "--store", s(&store), "list"]));
    assert!(
        list.contains(&fp) && list.contains("trusted") && list.contains("PM-0001") && list.contains("ICU 4"),
        "{list}"
    );
    ok(&vitalwire(&["trust", "--store", s(&store), "revoke", "--fingerprint", &fp]));
    let list = ok(&vitalwire(&["trust", "--store", s(&store), "list"]));
    assert!(list.contains("revoked"), "{list}");
    ok(&vitalwire(&["trust", "--store", s(&store), "tofu", "on"]));
    assert!(ok(&vitalwire(&["trust", "--store", s(&store), "list"])).contains("trust on first use: on"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_keys_and_stores_give_clear_errors() {
    let dir = temp_dir("errors");
    let key = dir.join("k");
    ok(&vitalwire(&["keygen", "--out", s(&key)]));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(err(&vitalwire(&["fingerprint", s(&key)])).contains("chmod 600"));
    }
    std::fs::write(dir.join("bad.pub"), "vitalwire public key v1\nx25519 00\n").unwrap();
    assert!(err(&vitalwire(&["fingerprint", s(&dir.join("bad.pub"))])).contains("malformed"));
    assert!(err(&vitalwire(&["fingerprint", s(&dir.join("missing.pub"))])).contains("missing.pub"));
    // A damaged store is refused, not treated as empty.
    let store = dir.join("trust.vw");
    std::fs::write(&store, "vitalwire trust store v1\ntofu off\n").unwrap();
    assert!(err(&vitalwire(&["trust", "--store", s(&store), "list"])).contains("truncated"));
    assert!(err(&vitalwire(&["trust", "--store", s(&dir.join("none.vw")), "list"])).contains("none.vw"));
    assert!(err(&vitalwire(&["trust", "--store", s(&store), "revoke", "--fingerprint", "nope"]))
        .contains("damaged"));
    // Bad arguments.
    assert!(err(&vitalwire(&["trust", "add"])).contains("--device-id"));
    assert!(err(&vitalwire(&["keygen"])).contains("--out"));
    let _ = std::fs::remove_dir_all(&dir);
}
