//! `vitalwire keygen`, `vitalwire fingerprint` and `vitalwire trust ...`.

use std::path::{Path, PathBuf};

use vitalwire::keyfile;
use vitalwire::{Fingerprint, Keypair, PublicKey, TrustStore};

/// `keygen`: a private key file (mode 0600) and its `.pub`.
pub fn keygen(out: &Path, comment: &str) -> Result<(), String> {
    let kp = Keypair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let public_path = public_path_for(out);
    if public_path.exists() {
        return Err(format!("{}: already exists; refusing to overwrite", public_path.display()));
    }
    keyfile::write_private_key(out, kp.private(), comment).map_err(|e| e.to_string())?;
    keyfile::write_public_key(&public_path, kp.public(), comment).map_err(|e| e.to_string())?;
    println!("private key: {} (mode 0600)", out.display());
    println!("public key:  {}", public_path.display());
    println!("fingerprint: {}", kp.public().fingerprint());
    Ok(())
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
    println!("{}", key.fingerprint());
    Ok(())
}

pub enum TrustCommand {
    Add { key: PathBuf, device_id: String, label: String },
    Revoke { key: Option<PathBuf>, fingerprint: Option<String> },
    List,
    Tofu { on: bool },
}

/// `trust ...` on the store file.
pub fn trust(store_path: &Path, command: TrustCommand) -> Result<(), String> {
    let open_existing = || TrustStore::open(store_path).map_err(|e| e.to_string());
    match command {
        TrustCommand::Add { key, device_id, label } => {
            let key = keyfile::read_public_key(&key).map_err(|e| e.to_string())?;
            let store = TrustStore::open_or_create(store_path).map_err(|e| e.to_string())?;
            store.add(key, &device_id, &label).map_err(|e| e.to_string())?;
            println!("trusted {} as {device_id}", key.fingerprint());
        }
        TrustCommand::Revoke { key, fingerprint } => {
            let store = open_existing()?;
            let target = resolve_key(&store, key.as_deref(), fingerprint.as_deref())?;
            if !store.revoke(&target).map_err(|e| e.to_string())? {
                return Err(format!("{} is not in the trust store", target.fingerprint()));
            }
            println!("revoked {}", target.fingerprint());
        }
        TrustCommand::List => {
            let list = open_existing()?.snapshot();
            println!("trust on first use: {}", if list.tofu { "on" } else { "off" });
            println!(
                "{:<19}  {:<8}  {:<16}  {:<13}  {:<13}  label",
                "fingerprint", "status", "device id", "added", "last seen"
            );
            for e in list.entries() {
                let status = if e.revoked_at.is_some() { "revoked" } else { "trusted" };
                println!(
                    "{}  {status:<8}  {:<16}  {:<13}  {:<13}  {}",
                    e.key.fingerprint(),
                    if e.device_id.is_empty() { "(any)" } else { &e.device_id },
                    e.added_at,
                    e.last_seen.map(|t| t.to_string()).unwrap_or_else(|| "never".into()),
                    e.label
                );
            }
        }
        TrustCommand::Tofu { on } => {
            let store = open_existing()?;
            store.set_tofu(on).map_err(|e| e.to_string())?;
            println!(
                "trust on first use is now {}",
                if on { "ON: unknown devices are admitted and recorded" } else { "off" }
            );
        }
    }
    Ok(())
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
