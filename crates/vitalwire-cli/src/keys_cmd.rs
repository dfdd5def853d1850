//! `vitalwire keygen`, `vitalwire fingerprint` and `vitalwire trust ...`.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use vitalwire::keyfile;
use vitalwire::trust::{check_device_id, check_label, is_unsafe_display_char};
use vitalwire::{Fingerprint, Keypair, PublicKey, TrustStore};

/// Writes `text` to stdout. A reader that went away (`vitalwire trust list | head -1`) is not
/// an error: the command's work is done, the rest of its output is simply not wanted.
pub fn print_out(text: &str) -> Result<(), String> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("cannot write to standard output: {e}")),
    }
}

/// A value as it is safe to show in one row of a listing: control, line-separator and
/// text-direction characters as `\u{..}`, a backslash as `\\`, so no value can end a row,
/// forge another one or hide text.
pub fn display_safe(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if is_unsafe_display_char(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// `keygen`: a private key file (mode 0600) and its `.pub`.
pub fn keygen(out: &Path, comment: &str) -> Result<(), String> {
    let kp = Keypair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let public_path = public_path_for(out);
    if public_path.exists() {
        return Err(format!("{}: already exists; refusing to overwrite", public_path.display()));
    }
    keyfile::write_private_key(out, kp.private(), comment).map_err(|e| e.to_string())?;
    keyfile::write_public_key(&public_path, kp.public(), comment).map_err(|e| e.to_string())?;
    print_out(&format!(
        "private key: {} (mode 0600)\npublic key:  {}\nfingerprint: {}\n",
        out.display(),
        public_path.display(),
        kp.public().fingerprint()
    ))
}

/// `device.key` -> `device.key.pub`.
pub fn public_path_for(private: &Path) -> PathBuf {
    let mut name = private.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".pub");
    private.with_file_name(name)
}

/// `fingerprint`: of a public or private key file.
pub fn fingerprint(file: &Path) -> Result<(), String> {
    let key = keyfile::read_public_key(file).map_err(|e| e.to_string())?;
    print_out(&format!("{}\n", key.fingerprint()))
}

pub enum TrustCommand {
    Add { key: PathBuf, device_id: String, label: String },
    Revoke { key: Option<PathBuf>, fingerprint: Option<String> },
    List,
    Tofu { on: bool },
}

/// `trust ...` on the store file. Every change is applied to the latest file under the
/// store's lock (see `vitalwire::trust_store`), so commands run side by side, and beside a
/// host, never lose each other's writes; a running host picks the change up within a second.
pub fn trust(store_path: &Path, command: TrustCommand) -> Result<(), String> {
    let open_existing = || TrustStore::open(store_path).map_err(|e| e.to_string());
    match command {
        TrustCommand::Add { key, device_id, label } => {
            check_device_id(&device_id).map_err(|e| format!("--device-id: {e}"))?;
            check_label(&label).map_err(|e| format!("--label: {e}"))?;
            let key = keyfile::read_public_key(&key).map_err(|e| e.to_string())?;
            let store = TrustStore::open_or_create(store_path).map_err(|e| e.to_string())?;
            store.add(key, &device_id, &label).map_err(|e| e.to_string())?;
            print_out(&format!("trusted {} as {}\n", key.fingerprint(), display_safe(&device_id)))
        }
        TrustCommand::Revoke { key, fingerprint } => {
            let store = open_existing()?;
            let target = resolve_key(&store, key.as_deref(), fingerprint.as_deref())?;
            if !store.revoke(&target).map_err(|e| e.to_string())? {
                return Err(format!("{} is not in the trust store", target.fingerprint()));
            }
            print_out(&format!("revoked {}\n", target.fingerprint()))
        }
        TrustCommand::List => {
            let list = open_existing()?.snapshot();
            let mut out = String::new();
            let _ = writeln!(out, "trust on first use: {}", if list.tofu { "on" } else { "off" });
            let _ = writeln!(
                out,
                "{:<19}  {:<8}  {:<16}  {:<13}  {:<13}  label",
                "fingerprint", "status", "device id", "added", "last seen"
            );
            for e in list.entries() {
                let status = if e.revoked_at.is_some() { "revoked" } else { "trusted" };
                let _ = writeln!(
                    out,
                    "{}  {status:<8}  {:<16}  {:<13}  {:<13}  {}",
                    e.key.fingerprint(),
                    if e.device_id.is_empty() { "(any)".into() } else { display_safe(&e.device_id) },
                    e.added_at,
                    e.last_seen.map(|t| t.to_string()).unwrap_or_else(|| "never".into()),
                    display_safe(&e.label)
                );
            }
            print_out(&out)
        }
        TrustCommand::Tofu { on } => {
            let store = open_existing()?;
            store.set_tofu(on).map_err(|e| e.to_string())?;
            print_out(&format!(
                "trust on first use is now {}\n",
                if on { "ON: unknown devices are admitted and recorded" } else { "off" }
            ))
        }
    }
}

fn resolve_key(
    store: &TrustStore,
    key: Option<&Path>,
    fingerprint: Option<&str>,
) -> Result<PublicKey, String> {
    match (key, fingerprint) {
        (Some(path), None) => keyfile::read_public_key(path).map_err(|e| e.to_string()),
        (None, Some(text)) => {
            let fp = Fingerprint::parse(text)
                .ok_or_else(|| format!("{text:?} is not a fingerprint (XXXX-XXXX-XXXX-XXXX)"))?;
            store
                .snapshot()
                .entries()
                .find(|e| e.key.fingerprint() == fp)
                .map(|e| e.key)
                .ok_or_else(|| format!("no key with fingerprint {fp} in the trust store"))
        }
        _ => Err("give either a key file or --fingerprint".into()),
    }
}
