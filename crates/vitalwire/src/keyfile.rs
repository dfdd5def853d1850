//! Key files: a versioned text format for private and public keys (spec/PROTOCOL.md §12.1).
//!
//! ```text
//! vitalwire private key v1            vitalwire public key v1
//! # optional comment lines            # optional comment lines
//! x25519 <64 hex digits>              x25519 <64 hex digits>
//! check <8 hex digits>                check <8 hex digits>
//! ```
//!
//! `check` is the first 4 bytes of SHA-256 over the header line, a newline and the 32 key
//! bytes, so a typo, a truncated copy or a public key passed off as a private one is caught.
//! Private key files are written with mode 0600, and loading one that the group or others can
//! read is refused. At most [`MAX_KEY_FILE_LEN`] bytes are read: a longer file is refused.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::keys::{Keypair, PrivateKey, PublicKey, KEY_LEN};

const PRIVATE_HEADER: &str = "vitalwire private key v1";
const PUBLIC_HEADER: &str = "vitalwire public key v1";

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Not a vitalwire key file of the expected kind.
    #[error("{}: not a vitalwire {expected} key file", path.display())]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// "private" or "public".
        expected: &'static str,
    },
    /// A missing or malformed line (truncated or edited file).
    #[error("{}: malformed key file ({reason})", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The checksum does not match the key: a typo or damage.
    #[error("{}: key checksum mismatch (typo or damaged file)", path.display())]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
    },
    /// A private key file readable by the group or others.
    #[error("{}: private key file is accessible by group or others (mode {mode:o}); run `chmod 600` on it", path.display())]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Refusing to overwrite an existing file.
    #[error("{}: already exists; refusing to overwrite", path.display())]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
}

fn checksum(header: &str, key: &[u8; KEY_LEN]) -> String {
    let mut h = Sha256::new();
    h.update(header.as_bytes());
    h.update(b"\n");
    h.update(key);
    hex::encode(&h.finalize()[..4])
}

mod hex {
    use alloc::string::String;
    use core::fmt::Write;
    pub fn encode(bytes: &[u8]) -> String {
        let mut s = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

fn render(header: &str, comment: &str, key: &[u8; KEY_LEN]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::new());
    out.push_str(header);
    out.push('\n');
    for line in comment.lines().filter(|l| !l.trim().is_empty()) {
        out.push_str("# ");
        out.push_str(line.trim());
        out.push('\n');
    }
    out.push_str("x25519 ");
    out.push_str(&hex::encode(key));
    out.push('\n');
    out.push_str("check ");
    out.push_str(&checksum(header, key));
    out.push('\n');
    out
}

fn parse(
    path: &Path,
    text: &str,
    header: &str,
    kind: &'static str,
) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyFileError> {
    let malformed = |reason| KeyFileError::Malformed { path: path.to_path_buf(), reason };
    let mut lines = text.lines().map(str::trim_end).filter(|l| !l.starts_with('#') && !l.is_empty());
    if lines.next() != Some(header) {
        return Err(KeyFileError::WrongKind { path: path.to_path_buf(), expected: kind });
    }
    let hex_key = lines.next().and_then(|l| l.strip_prefix("x25519 ")).ok_or(malformed("no x25519 line"))?;
    let check = lines.next().and_then(|l| l.strip_prefix("check ")).ok_or(malformed("no check line"))?;
    if lines.next().is_some() {
        return Err(malformed("unexpected lines after the checksum"));
    }
    // Byte length and ASCII hex digits before slicing (found by fuzzing: multi-byte UTF-8 in
    // the key line used to panic on a char boundary; `from_str_radix` also takes a sign).
    if hex_key.len() != 2 * KEY_LEN || !hex_key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed("the key must be 64 hex digits"));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex_key[2 * i..2 * i + 2], 16)
            .map_err(|_| malformed("the key is not hex"))?;
    }
    if checksum(header, &key) != check.to_ascii_lowercase() {
        return Err(KeyFileError::ChecksumMismatch { path: path.to_path_buf() });
    }
    Ok(key)
}

/// The text of a private key file.
pub fn private_key_to_text(key: &PrivateKey, comment: &str) -> Zeroizing<String> {
    render(PRIVATE_HEADER, comment, key.expose_secret())
}

/// The text of a public key file.
pub fn public_key_to_text(key: &PublicKey, comment: &str) -> String {
    render(PUBLIC_HEADER, comment, key.as_bytes()).to_string()
}

/// Parses a private key file's text.
pub fn private_key_from_text(path: &Path, text: &str) -> Result<PrivateKey, KeyFileError> {
    parse(path, text, PRIVATE_HEADER, "private").map(|k| PrivateKey::from_bytes(*k))
}

/// Parses a public key file's text.
pub fn public_key_from_text(path: &Path, text: &str) -> Result<PublicKey, KeyFileError> {
    parse(path, text, PUBLIC_HEADER, "public").map(|k| PublicKey::from_bytes(*k))
}

/// Writes a private key file with mode 0600. Refuses to overwrite an existing file.
pub fn write_private_key(path: &Path, key: &PrivateKey, comment: &str) -> Result<(), KeyFileError> {
    let io_err = |source| KeyFileError::Io { path: path.to_path_buf(), source };
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            KeyFileError::AlreadyExists { path: path.to_path_buf() }
        } else {
            io_err(e)
        }
    })?;
    f.write_all(private_key_to_text(key, comment).as_bytes()).map_err(io_err)?;
    f.sync_all().map_err(io_err)
}

/// Writes a public key file. Refuses to overwrite an existing file.
pub fn write_public_key(path: &Path, key: &PublicKey, comment: &str) -> Result<(), KeyFileError> {
    let io_err = |source| KeyFileError::Io { path: path.to_path_buf(), source };
    let mut f = OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            KeyFileError::AlreadyExists { path: path.to_path_buf() }
        } else {
            io_err(e)
        }
    })?;
    f.write_all(public_key_to_text(key, comment).as_bytes()).map_err(io_err)?;
    f.sync_all().map_err(io_err)
}

/// Reads a private key file, refusing one that the group or others can access.
pub fn read_private_key(path: &Path) -> Result<Keypair, KeyFileError> {
    let io_err = |source| KeyFileError::Io { path: path.to_path_buf(), source };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).map_err(io_err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            // A public key file given where the private one belongs (`--key host.key.pub`) is
            // that mistake, not a permission problem: `chmod 600` would not help.
            if is_public_key_file(path) {
                return Err(KeyFileError::WrongKind { path: path.to_path_buf(), expected: "private" });
            }
            return Err(KeyFileError::InsecurePermissions { path: path.to_path_buf(), mode });
        }
    }
    let text = read_text(path)?;
    Ok(Keypair::from_private(private_key_from_text(path, &text)?))
}

/// The most a key file may hold (the key, its checksum and comment lines), checked while
/// reading: a wrong path (`/dev/zero`, a disk image) is refused, not read to its end.
pub const MAX_KEY_FILE_LEN: usize = 64 * 1024;

/// A key file's text, read into one buffer that is zeroized when dropped.
fn read_text(path: &Path) -> Result<Zeroizing<String>, KeyFileError> {
    use std::io::Read;
    let io_err = |source| KeyFileError::Io { path: path.to_path_buf(), source };
    let malformed = |reason| KeyFileError::Malformed { path: path.to_path_buf(), reason };
    let file = fs::File::open(path).map_err(io_err)?;
    // Reserved up front, so reading never moves (and leaves behind) part of a private key.
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN + 1));
    file.take(MAX_KEY_FILE_LEN as u64 + 1).read_to_end(&mut bytes).map_err(io_err)?;
    if bytes.len() > MAX_KEY_FILE_LEN {
        return Err(malformed("larger than any key file (64 KiB)"));
    }
    match String::from_utf8(core::mem::take(&mut *bytes)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            Err(malformed("not UTF-8 text"))
        }
    }
}

/// Whether `path` starts like a public key file. Reads only the first line, so the content of
/// an exposed private key file is not loaded.
#[cfg(unix)]
fn is_public_key_file(path: &Path) -> bool {
    use std::io::{BufRead, BufReader, Read};
    let Ok(file) = fs::File::open(path) else { return false };
    let mut first = Zeroizing::new(String::new());
    let read = BufReader::new(file).take(PUBLIC_HEADER.len() as u64 + 2).read_line(&mut first);
    read.is_ok() && first.trim_end() == PUBLIC_HEADER
}

/// Reads a public key file (a private key file also yields its public key).
pub fn read_public_key(path: &Path) -> Result<PublicKey, KeyFileError> {
    let text = read_text(path)?;
    if text.trim_start().starts_with(PRIVATE_HEADER) {
        return Ok(*read_private_key(path)?.public());
    }
    public_key_from_text(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_or_signed_hex_is_malformed_not_a_panic() {
        // From the fuzzer (also replayed by tests/fuzz_regressions.rs): U+00A0 among the digits.
        let crash = alloc::format!(
            "vitalwire public key v1\nx25519 abababab{}{}\ncheck 00000000\n",
            "\u{a0}".repeat(4),
            "ab".repeat(24)
        );
        assert!(matches!(public_key_from_text(Path::new("k"), &crash), Err(KeyFileError::Malformed { .. })));
        let signed =
            alloc::format!("vitalwire public key v1\nx25519 +a{}\ncheck 00000000\n", "ab".repeat(31));
        assert!(matches!(public_key_from_text(Path::new("k"), &signed), Err(KeyFileError::Malformed { .. })));
    }

    /// `--key host.key.pub` (a public key file, mode 0644) is reported as the wrong kind of
    /// file, not as a private key to `chmod 600`; an exposed private key still is.
    #[cfg(unix)]
    #[test]
    fn a_public_key_given_as_the_private_one_is_the_wrong_kind_not_a_permission_problem() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(alloc::format!("vitalwire-keyfile-kind-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let kp = Keypair::from_private(PrivateKey::from_bytes([7; 32]));
        let (private, public) = (dir.join("k"), dir.join("k.pub"));
        write_private_key(&private, kp.private(), "").unwrap();
        write_public_key(&public, kp.public(), "").unwrap();
        fs::set_permissions(&public, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_private_key(&public).unwrap_err();
        assert!(matches!(err, KeyFileError::WrongKind { expected: "private", .. }), "{err}");
        fs::set_permissions(&private, fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_private_key(&private).unwrap_err();
        assert!(matches!(err, KeyFileError::InsecurePermissions { mode: 0o640, .. }), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    /// A path that is not a key file (`/dev/zero`, a large file) is refused after at most
    /// [`MAX_KEY_FILE_LEN`] bytes, even one that would parse (a valid key after many comments).
    #[test]
    fn files_larger_than_a_key_file_or_not_text_are_refused_without_reading_them_all() {
        let dir = std::env::temp_dir().join(alloc::format!("vitalwire-keyfile-size-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let kp = Keypair::from_private(PrivateKey::from_bytes([5; 32]));
        let big = dir.join("big.pub");
        let comment = "x".repeat(100).repeat(MAX_KEY_FILE_LEN / 100 + 1);
        fs::write(
            &big,
            public_key_to_text(
                kp.public(),
                &comment
                    .as_bytes()
                    .chunks(100)
                    .map(|c| alloc::format!("{}\n", core::str::from_utf8(c).unwrap()))
                    .collect::<String>(),
            ),
        )
        .unwrap();
        let err = read_public_key(&big).unwrap_err();
        assert!(
            matches!(err, KeyFileError::Malformed { reason: "larger than any key file (64 KiB)", .. }),
            "{err}"
        );
        let binary = dir.join("binary.pub");
        fs::write(&binary, [0xff, 0xfe, 0x00, 0x80]).unwrap();
        let err = read_public_key(&binary).unwrap_err();
        assert!(matches!(err, KeyFileError::Malformed { reason: "not UTF-8 text", .. }), "{err}");
        #[cfg(unix)]
        {
            let err = read_public_key(Path::new("/dev/zero")).unwrap_err();
            assert!(matches!(err, KeyFileError::Malformed { .. }), "{err}");
        }
        // A normal file still reads.
        let ok = dir.join("ok.pub");
        write_public_key(&ok, kp.public(), "PM-5").unwrap();
        assert_eq!(read_public_key(&ok).unwrap(), *kp.public());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn text_round_trips_and_catches_typos_and_truncation() {
        let kp = Keypair::from_private(PrivateKey::from_bytes([9; 32]));
        let p = Path::new("k");
        let text = private_key_to_text(kp.private(), "device PM-1\nline two");
        assert!(text.starts_with("vitalwire private key v1\n# device PM-1\n# line two\nx25519 0909"));
        assert_eq!(private_key_from_text(p, &text).unwrap().expose_secret(), &[9; 32]);
        let pubtext = public_key_to_text(kp.public(), "");
        assert_eq!(public_key_from_text(p, &pubtext).unwrap(), *kp.public());
        // A public key file is not a private one, and vice versa.
        assert!(matches!(private_key_from_text(p, &pubtext), Err(KeyFileError::WrongKind { .. })));
        assert!(matches!(public_key_from_text(p, &text), Err(KeyFileError::WrongKind { .. })));
        // A typo in the key.
        let typo = text.replacen("x25519 09", "x25519 08", 1);
        assert!(matches!(private_key_from_text(p, &typo), Err(KeyFileError::ChecksumMismatch { .. })));
        // Every truncation fails.
        for cut in 0..text.len() - 1 {
            assert!(private_key_from_text(p, &text[..cut]).is_err(), "cut at {cut}");
        }
    }
}
