//! Deciding who may connect: the [`TrustPolicy`] a host consults during every handshake, and
//! [`TrustList`], the allowlist data behind the default file-backed store
//! ([`crate::trust_store::TrustStore`]).
//!
//! The host asks the policy as soon as the handshake reveals the device's static key (message 1
//! for IK and KK, message 3 for XX and XXpsk3), so an unknown or revoked device never gets a
//! session. A session whose key is revoked later can be closed with [`crate::Session::recheck`].

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::keys::{KeyId, PublicKey, KEY_LEN};
use crate::payload::{DeviceIdentity, MAX_TEXT_LEN};

/// The answer of a [`TrustPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustDecision {
    /// Admit the peer.
    Trusted,
    /// The key is not known.
    Unknown,
    /// The key was known and has been revoked.
    Revoked,
}

/// A host's admission policy. Implement it over your own database, or use the file-backed
/// [`crate::trust_store::TrustStore`]. Called from inside the handshake: keep it fast.
pub trait TrustPolicy: Send + Sync {
    /// Decides whether the device with static `key` (claiming `identity`, when the handshake
    /// has delivered it) may have a session.
    fn check(&self, key: &PublicKey, identity: Option<&DeviceIdentity>) -> TrustDecision;

    /// The key with this key id, for KK handshakes (spec §4.2, §12.2). Return revoked keys too
    /// (a trusted one first if two keys share an id): the handshake then calls
    /// [`TrustPolicy::check`] after message 1, which refuses the revoked key and records it as a
    /// `revoked_peer`, not as an `unknown_peer`. Returning only trusted keys is safe as well;
    /// a revoked key is then refused as unknown.
    fn find_by_key_id(&self, id: &KeyId) -> Option<PublicKey>;
}

/// Admits every authenticated peer. For tests and closed demos only: it makes the host accept
/// any device that can run a handshake.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAnyPeerInsecure;

impl TrustPolicy for AllowAnyPeerInsecure {
    fn check(&self, _key: &PublicKey, _identity: Option<&DeviceIdentity>) -> TrustDecision {
        TrustDecision::Trusted
    }
    fn find_by_key_id(&self, _id: &KeyId) -> Option<PublicKey> {
        None
    }
}

/// What the host knows about one device key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustEntry {
    /// The device's static public key.
    pub key: PublicKey,
    /// The device id it is expected to present (empty: any).
    pub device_id: String,
    /// A human label (ward, bed, asset tag).
    pub label: String,
    /// When it was added (caller's clock, ms since the Unix epoch).
    pub added_at: u64,
    /// When it last completed a handshake.
    pub last_seen: Option<u64>,
    /// When it was revoked; a revoked entry is kept so the key stays refused.
    pub revoked_at: Option<u64>,
}

/// Why a trust list could not be read. The store refuses to open rather than start empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustListError {
    /// The first line is not a vitalwire trust store header.
    #[error("not a vitalwire trust store (bad header)")]
    BadHeader,
    /// A newer format.
    #[error("unsupported trust store version {0}")]
    UnsupportedVersion(String),
    /// A line could not be parsed.
    #[error("malformed trust store line {line}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The checksum line is missing: the file was truncated.
    #[error("trust store is truncated (no checksum line)")]
    Truncated,
    /// The checksum does not match: the file was altered or damaged.
    #[error("trust store checksum mismatch (file damaged or edited by hand)")]
    ChecksumMismatch,
}

const HEADER: &str = "vitalwire trust store v1";

/// Longest label the store accepts, in bytes.
pub const MAX_LABEL_LEN: usize = 256;

/// Why a device id or label is not accepted into a trust list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustValueError {
    /// An empty device id (spec §4.5.1: 1 to 64 bytes).
    #[error("the device id is empty (1 to 64 bytes)")]
    EmptyDeviceId,
    /// A device id longer than the spec allows.
    #[error("the device id is {0} bytes long (at most 64)")]
    DeviceIdTooLong(usize),
    /// A label longer than [`MAX_LABEL_LEN`].
    #[error("the label is {0} bytes long (at most 256)")]
    LabelTooLong(usize),
    /// A control, line-separator or text-direction character: such a value could forge rows or
    /// hide text where people read the list.
    #[error("the {0} contains a control character")]
    ControlCharacter(&'static str),
}

/// Whether `c` could break or disguise a line where people read ids and labels: C0/C1
/// controls and DEL, the Unicode line and paragraph separators, and the bidirectional
/// formatting characters.
pub fn is_unsafe_display_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
        || ('\u{202A}'..='\u{202E}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// Checks a device id for a trust entry (spec §12.2): 1 to 64 bytes of UTF-8 (as on the wire,
/// §4.5.1) without control characters ([`is_unsafe_display_char`]).
pub fn check_device_id(id: &str) -> Result<(), TrustValueError> {
    if id.is_empty() {
        return Err(TrustValueError::EmptyDeviceId);
    }
    if id.len() > MAX_TEXT_LEN {
        return Err(TrustValueError::DeviceIdTooLong(id.len()));
    }
    if id.chars().any(is_unsafe_display_char) {
        return Err(TrustValueError::ControlCharacter("device id"));
    }
    Ok(())
}

/// Checks a label for a trust entry: at most [`MAX_LABEL_LEN`] bytes, no control characters.
pub fn check_label(label: &str) -> Result<(), TrustValueError> {
    if label.len() > MAX_LABEL_LEN {
        return Err(TrustValueError::LabelTooLong(label.len()));
    }
    if label.chars().any(is_unsafe_display_char) {
        return Err(TrustValueError::ControlCharacter("label"));
    }
    Ok(())
}

/// The allowlist: device keys with metadata, revocations and the trust-on-first-use switch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustList {
    entries: BTreeMap<PublicKey, TrustEntry>,
    /// Every key by its key id, for KK look-ups without hashing the whole list.
    by_key_id: BTreeSet<(KeyId, PublicKey)>,
    /// Trust on first use: admit (and record) unknown keys. Off unless switched on.
    pub tofu: bool,
}

impl TrustList {
    /// An empty list with TOFU off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides for `key` (spec §12.2): revoked → `Revoked`; known and, if the entry names a
    /// device id, presenting that id → `Trusted`; otherwise `Unknown`.
    pub fn decide(&self, key: &PublicKey, identity: Option<&DeviceIdentity>) -> TrustDecision {
        match self.entries.get(key) {
            Some(e) if e.revoked_at.is_some() => TrustDecision::Revoked,
            Some(e) => match identity {
                Some(id) if !e.device_id.is_empty() && id.device_id != e.device_id => TrustDecision::Unknown,
                _ => TrustDecision::Trusted,
            },
            None => TrustDecision::Unknown,
        }
    }

    /// Adds (or re-admits) a key. Returns the previous entry, if any. The list stores what it
    /// is given; [`crate::TrustStore::add`] checks the values first ([`check_device_id`],
    /// [`check_label`]).
    pub fn add(&mut self, key: PublicKey, device_id: &str, label: &str, now: u64) -> Option<TrustEntry> {
        self.insert(TrustEntry {
            key,
            device_id: device_id.into(),
            label: label.into(),
            added_at: now,
            last_seen: None,
            revoked_at: None,
        })
    }

    fn insert(&mut self, entry: TrustEntry) -> Option<TrustEntry> {
        self.by_key_id.insert((entry.key.key_id(), entry.key));
        self.entries.insert(entry.key, entry)
    }

    /// Revokes a key. Returns false if it is not in the list. The entry stays, marked revoked.
    pub fn revoke(&mut self, key: &PublicKey, now: u64) -> bool {
        match self.entries.get_mut(key) {
            Some(e) => {
                e.revoked_at.get_or_insert(now);
                true
            }
            None => false,
        }
    }

    /// Records a completed handshake. A later time already recorded is kept (times from
    /// several writers merge to the latest).
    pub fn mark_seen(&mut self, key: &PublicKey, now: u64) {
        if let Some(e) = self.entries.get_mut(key) {
            e.last_seen = Some(e.last_seen.map_or(now, |t| t.max(now)));
        }
    }

    /// Whether the two lists admit the same devices: the same keys with the same device ids
    /// and revocations, and the same TOFU setting (labels and times aside).
    pub fn admits_same_as(&self, other: &TrustList) -> bool {
        self.tofu == other.tofu
            && self.entries.len() == other.entries.len()
            && self.entries.values().zip(other.entries.values()).all(|(a, b)| {
                a.key == b.key
                    && a.device_id == b.device_id
                    && a.revoked_at.is_some() == b.revoked_at.is_some()
            })
    }

    /// The entry for a key.
    pub fn get(&self, key: &PublicKey) -> Option<&TrustEntry> {
        self.entries.get(key)
    }

    /// The key with this key id: a trusted one if there is one, else a revoked one (so that
    /// the handshake can tell a revoked KK device from an unknown one). O(log n).
    pub fn find_by_key_id(&self, id: &KeyId) -> Option<PublicKey> {
        let range =
            (*id, PublicKey::from_bytes([0; KEY_LEN]))..=(*id, PublicKey::from_bytes([0xff; KEY_LEN]));
        let mut revoked = None;
        for (_, key) in self.by_key_id.range(range) {
            match self.entries.get(key) {
                Some(e) if e.revoked_at.is_none() => return Some(*key),
                Some(_) => revoked = revoked.or(Some(*key)),
                None => {}
            }
        }
        revoked
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> impl Iterator<Item = &TrustEntry> {
        self.entries.values()
    }

    /// Number of entries (revoked included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The text form (spec §12.3): a header, one line per setting and entry, and a SHA-256
    /// checksum line over everything before it.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{HEADER}");
        let _ = writeln!(out, "tofu {}", if self.tofu { "on" } else { "off" });
        for e in self.entries.values() {
            let _ = write!(out, "device {}", hex(e.key.as_bytes()));
            let _ = write!(out, " added={}", e.added_at);
            let _ = write!(out, " seen={}", opt(e.last_seen));
            let _ = write!(out, " revoked={}", opt(e.revoked_at));
            let _ = write!(out, " id={}", escape(&e.device_id));
            let _ = writeln!(out, " label={}", escape(&e.label));
        }
        let sum = Sha256::digest(out.as_bytes());
        let _ = writeln!(out, "check {}", hex(&sum));
        out
    }

    /// Parses the text form, verifying the checksum. Never returns a partial list.
    pub fn from_text(text: &str) -> Result<Self, TrustListError> {
        let Some(check_at) = text.rfind("check ") else {
            return Err(if text.starts_with(HEADER) {
                TrustListError::Truncated
            } else {
                TrustListError::BadHeader
            });
        };
        let (body, check_line) = text.split_at(check_at);
        let first = body.lines().next().unwrap_or_default();
        if first != HEADER {
            return match first.strip_prefix("vitalwire trust store ") {
                Some(v) => Err(TrustListError::UnsupportedVersion(v.into())),
                None => Err(TrustListError::BadHeader),
            };
        }
        let expected = check_line.trim_end_matches('\n').strip_prefix("check ").unwrap_or_default();
        // Exactly one line, newline-terminated: anything shorter is a truncated write.
        if check_line.matches('\n').count() != 1 || !check_line.ends_with('\n') || !body.ends_with('\n') {
            return Err(TrustListError::ChecksumMismatch);
        }
        if expected != hex(&Sha256::digest(body.as_bytes())) {
            return Err(TrustListError::ChecksumMismatch);
        }
        let mut list = TrustList::new();
        for (n, line) in body.lines().enumerate().skip(1) {
            let line_no = n + 1;
            let bad = |reason| TrustListError::Malformed { line: line_no, reason };
            let mut words = line.split(' ');
            match words.next() {
                Some("tofu") => {
                    list.tofu = match words.next() {
                        Some("on") => true,
                        Some("off") => false,
                        _ => return Err(bad("tofu must be on or off")),
                    }
                }
                Some("device") => {
                    let key = words.next().and_then(unhex32).ok_or(bad("bad device key"))?;
                    let mut entry = TrustEntry {
                        key: PublicKey::from_bytes(key),
                        device_id: String::new(),
                        label: String::new(),
                        added_at: 0,
                        last_seen: None,
                        revoked_at: None,
                    };
                    for w in words {
                        let (k, v) = w.split_once('=').ok_or(bad("field without ="))?;
                        match k {
                            "added" => entry.added_at = v.parse().map_err(|_| bad("bad added time"))?,
                            "seen" => entry.last_seen = parse_opt(v).ok_or(bad("bad seen time"))?,
                            "revoked" => entry.revoked_at = parse_opt(v).ok_or(bad("bad revoked time"))?,
                            "id" => entry.device_id = unescape(v).ok_or(bad("bad device id"))?,
                            "label" => entry.label = unescape(v).ok_or(bad("bad label"))?,
                            _ => return Err(bad("unknown field")),
                        }
                    }
                    if list.insert(entry).is_some() {
                        return Err(bad("duplicate device key"));
                    }
                }
                _ => return Err(bad("unknown line")),
            }
        }
        Ok(list)
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| alloc::format!("{v}")).unwrap_or_else(|| "-".into())
}

fn parse_opt(v: &str) -> Option<Option<u64>> {
    if v == "-" {
        Some(None)
    } else {
        v.parse().ok().map(Some)
    }
}

/// Percent-encodes everything but unreserved ASCII, so values never contain spaces or newlines.
fn escape(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.:/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn unescape(v: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(v.len());
    let mut it = v.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hi = (it.next()? as char).to_digit(16)?;
            let lo = (it.next()? as char).to_digit(16)?;
            bytes.push((hi * 16 + lo) as u8);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PublicKey {
        PublicKey::from_bytes([b; 32])
    }

    #[test]
    fn decisions() {
        let mut l = TrustList::new();
        l.add(key(1), "PM-1", "ICU bed 4", 10);
        l.add(key(2), "", "", 10);
        assert_eq!(l.decide(&key(1), None), TrustDecision::Trusted);
        assert_eq!(l.decide(&key(1), Some(&DeviceIdentity::new("PM-1"))), TrustDecision::Trusted);
        assert_eq!(l.decide(&key(1), Some(&DeviceIdentity::new("PM-9"))), TrustDecision::Unknown);
        assert_eq!(l.decide(&key(2), Some(&DeviceIdentity::new("any"))), TrustDecision::Trusted);
        assert_eq!(l.decide(&key(3), None), TrustDecision::Unknown);
        assert!(l.revoke(&key(1), 20));
        assert!(!l.revoke(&key(3), 20));
        assert_eq!(l.decide(&key(1), None), TrustDecision::Revoked);
        assert_eq!(
            l.find_by_key_id(&key(1).key_id()),
            Some(key(1)),
            "revoked keys are found for KK (then refused by decide)"
        );
        assert_eq!(l.find_by_key_id(&key(2).key_id()), Some(key(2)));
        assert_eq!(l.find_by_key_id(&key(3).key_id()), None);
    }

    #[test]
    fn text_round_trips_with_awkward_strings() {
        let mut l = TrustList::new();
        l.tofu = true;
        l.add(key(1), "PM 1%\nx", "Ward 5 — bed=3", 1_700_000_000_000);
        l.mark_seen(&key(1), 1_700_000_000_500);
        l.add(key(2), "PM-2", "", 5);
        l.revoke(&key(2), 6);
        let text = l.to_text();
        assert!(text.lines().all(|line| !line.is_empty()));
        assert_eq!(TrustList::from_text(&text), Ok(l));
    }

    #[test]
    fn damage_is_detected_never_an_empty_list() {
        let mut l = TrustList::new();
        l.add(key(1), "PM-1", "a", 1);
        l.add(key(2), "PM-2", "b", 2);
        let text = l.to_text();
        // Every truncation fails.
        for cut in 0..text.len() {
            assert!(TrustList::from_text(&text[..cut]).is_err(), "cut at {cut}");
        }
        // Every single-character change fails.
        for i in 0..text.len() {
            let mut bytes = text.clone().into_bytes();
            bytes[i] ^= 0x01;
            if let Ok(s) = String::from_utf8(bytes) {
                assert!(TrustList::from_text(&s).is_err(), "change at {i} went unnoticed");
            }
        }
        assert_eq!(TrustList::from_text("hello"), Err(TrustListError::BadHeader));
        assert_eq!(
            TrustList::from_text("vitalwire trust store v9\ncheck 00\n"),
            Err(TrustListError::UnsupportedVersion("v9".into()))
        );
    }
}
