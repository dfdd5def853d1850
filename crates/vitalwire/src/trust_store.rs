//! The default [`TrustPolicy`]: a [`TrustList`] kept in memory behind a lock and persisted to a
//! text file that is never half-written and that is refused, not emptied, when damaged (its
//! SHA-256 checksum line).
//!
//! Several processes share one store file: the `vitalwire trust` commands and a running host,
//! which records trust-on-first-use admissions and last-seen times. So that none of them loses
//! another's write, every change is a read-modify-write under an exclusive advisory lock on a
//! sidecar file (`<store>.lock`): the writer re-reads the file under the lock, applies only
//! its own change (an operation such as "revoke this key", never its possibly stale copy of the
//! list), writes a temporary file unique to the writer, fsyncs it, renames it over the store
//! and fsyncs the directory. A host picks up changes made by others with
//! [`TrustStore::reload`], which compares the file's checksum line with the one it last read
//! (a few bytes per call) and re-reads the file only when it differs.
//!
//! This module does file IO (and reads the wall clock for the `added`/`seen` times it records),
//! so it exists only with the `std` feature. The handshake itself only calls
//! [`TrustPolicy::check`].

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::keys::{KeyId, PublicKey};
use crate::payload::DeviceIdentity;
use crate::trust::{
    check_device_id, check_label, TrustDecision, TrustList, TrustListError, TrustPolicy, TrustValueError,
};

/// Why a trust store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustStoreError {
    /// Reading or writing the file failed.
    #[error("trust store {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is damaged; it is left untouched and nothing is loaded.
    #[error("trust store {} is damaged: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: TrustListError,
    },
    /// `create` on a path that already exists.
    #[error("trust store {} already exists", .0.display())]
    AlreadyExists(PathBuf),
    /// Another process held the store's lock for longer than the lock timeout; nothing was
    /// written.
    #[error("trust store {} is locked by another process (its lock file: {}); nothing was changed", path.display(), lock.display())]
    Locked {
        /// The file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// A device id or label the store does not accept; nothing was written.
    #[error("{0}")]
    Invalid(#[from] TrustValueError),
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The label of entries recorded by trust on first use.
pub const TOFU_LABEL: &str = "trusted on first use";

/// How long a writer waits for another process's lock by default.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of the final line of a store file: `check <64 hex>\n`.
const CHECK_LINE_LEN: usize = 6 + 64 + 1;

/// What the store holds in memory.
#[derive(Default)]
struct State {
    /// The list decisions are made on: the file as last read or written, plus `pending_seen`.
    list: TrustList,
    /// The file version `list` came from.
    file_version: Option<FileVersion>,
    /// Last-seen times not yet written to the file.
    pending_seen: BTreeMap<PublicKey, u64>,
    /// Whether the admitted set changed since the last [`TrustStore::reload`] call.
    changed: bool,
}

/// A thread-safe trust store, in memory or backed by a file shared with other processes.
pub struct TrustStore {
    state: Mutex<State>,
    path: Option<PathBuf>,
    clock: fn() -> u64,
    /// Serializes this process's writes and reloads (the file lock does it across processes).
    writer: Mutex<()>,
    lock_timeout: Duration,
    crash_before_rename: AtomicBool,
}

impl core::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TrustStore")
            .field("path", &self.path)
            .field("entries", &self.state().list.len())
            .finish()
    }
}

impl TrustStore {
    /// A store that lives only in memory.
    pub fn in_memory(list: TrustList) -> Self {
        TrustStore {
            state: Mutex::new(State { list, ..State::default() }),
            path: None,
            clock: unix_millis,
            writer: Mutex::new(()),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            crash_before_rename: AtomicBool::new(false),
        }
    }

    /// Creates a new, empty store file. Fails if the file exists.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, TrustStoreError> {
        let store = Self::unopened(path.as_ref());
        {
            let _writer = lock(&store.writer);
            let _lock = store.lock_file()?;
            if store.file().exists() {
                return Err(TrustStoreError::AlreadyExists(store.file().to_path_buf()));
            }
            store.write_and_install(TrustList::new())?;
        }
        Ok(store)
    }

    /// Opens an existing store file. A missing file is an error (a deleted store must not
    /// silently become an empty allowlist), and so is a damaged one. A temporary file left by
    /// a crash is ignored: the last complete store is what counts.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, TrustStoreError> {
        let store = Self::unopened(path.as_ref());
        let (list, check) = read_store(store.file())?;
        store.install(&mut store.state(), list, check);
        store.state().changed = false;
        Ok(store)
    }

    /// Opens the store at `path`, creating an empty one if there is no file. Safe against
    /// other processes doing the same at the same time: exactly one creates it.
    pub fn open_or_create(path: impl AsRef<Path>) -> Result<Self, TrustStoreError> {
        match Self::create(path.as_ref()) {
            Ok(store) => Ok(store),
            Err(TrustStoreError::AlreadyExists(_)) => Self::open(path),
            Err(e) => Err(e),
        }
    }

    fn unopened(path: &Path) -> Self {
        TrustStore { path: Some(path.to_path_buf()), ..Self::in_memory(TrustList::new()) }
    }

    /// Replaces the clock used for the times the store records (tests, simulated time).
    pub fn with_clock(mut self, clock: fn() -> u64) -> Self {
        self.clock = clock;
        self
    }

    /// How long a write waits for another process holding the store's lock before it fails
    /// with [`TrustStoreError::Locked`] (default [`DEFAULT_LOCK_TIMEOUT`]).
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// The file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn file(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// A copy of the current list (with last-seen times not yet written).
    pub fn snapshot(&self) -> TrustList {
        self.state().list.clone()
    }

    /// Picks up changes other processes made to the file (a `vitalwire trust` command, say).
    /// Cheap when nothing changed: it reads the file's final checksum line and compares it
    /// with the one it last read or wrote. Returns whether the set of admitted devices (keys,
    /// device ids, revocations, the TOFU switch) changed since the previous call, whether by
    /// this reload or by any other change through this store; the caller then re-checks its
    /// open sessions (`Host::trust_changed` in `vitalwire-tokio`).
    ///
    /// A file that is missing or damaged is an error and the list in memory is kept. Never
    /// waits for a write of this store in progress (which installs the latest file itself).
    pub fn reload(&self) -> Result<bool, TrustStoreError> {
        if let Some(path) = &self.path {
            let _writer = match self.writer.try_lock() {
                Ok(guard) => guard,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    return Ok(core::mem::take(&mut self.state().changed))
                }
            };
            let known = self.state().file_version.clone();
            if let Some((list, check)) = read_store_if_changed(path, known.as_ref())? {
                self.install(&mut self.state(), list, check);
            }
        }
        Ok(core::mem::take(&mut self.state().changed))
    }

    /// Applies `change` to the latest file under the store's lock and writes the result, then
    /// makes it the list in memory. On any failure nothing is written and memory is unchanged.
    fn update<T>(&self, change: impl FnOnce(&mut TrustList, u64) -> T) -> Result<T, TrustStoreError> {
        let now = (self.clock)();
        if self.path.is_none() {
            let mut state = self.state();
            let before = state.list.clone();
            let result = change(&mut state.list, now);
            state.changed |= !before.admits_same_as(&state.list);
            return Ok(result);
        }
        let _writer = lock(&self.writer);
        let _lock = self.lock_file()?;
        let (mut list, _) = read_store(self.file())?;
        let result = change(&mut list, now);
        self.write_and_install(list)?;
        Ok(result)
    }

    /// Admits a device key (persisted before returning). `device_id` empty means any id; else
    /// it must pass [`check_device_id`], and `label` [`check_label`].
    pub fn add(&self, key: PublicKey, device_id: &str, label: &str) -> Result<(), TrustStoreError> {
        if !device_id.is_empty() {
            check_device_id(device_id)?;
        }
        check_label(label)?;
        self.update(|l, now| {
            l.add(key, device_id, label, now);
        })
    }

    /// Revokes a device key (persisted before returning). Returns whether the key was known.
    /// A host using this store closes its open sessions after its next [`TrustStore::reload`].
    pub fn revoke(&self, key: &PublicKey) -> Result<bool, TrustStoreError> {
        self.update(|l, now| l.revoke(key, now))
    }

    /// Switches trust on first use on or off (persisted).
    pub fn set_tofu(&self, on: bool) -> Result<(), TrustStoreError> {
        self.update(|l, _| l.tofu = on)
    }

    /// Records that a device completed a handshake. Kept in memory until [`TrustStore::flush`],
    /// so a busy host does not rewrite the file per connection. [`TrustPolicy::check`] calls it
    /// for every admitted device.
    pub fn mark_seen(&self, key: &PublicKey) {
        let now = (self.clock)();
        let mut state = self.state();
        if state.list.get(key).is_none() {
            return;
        }
        state.list.mark_seen(key, now);
        if self.path.is_some() {
            let t = state.pending_seen.entry(*key).or_insert(now);
            *t = (*t).max(now);
        }
    }

    /// Writes pending last-seen times (merged into the latest file under its lock: nothing
    /// another process wrote meanwhile is undone). On failure they stay pending.
    pub fn flush(&self) -> Result<(), TrustStoreError> {
        if self.path.is_none() {
            return Ok(());
        }
        let _writer = lock(&self.writer);
        let pending = core::mem::take(&mut self.state().pending_seen);
        if pending.is_empty() {
            return Ok(());
        }
        let written = self.lock_file().and_then(|_lock| {
            let (mut list, _) = read_store(self.file())?;
            for (key, t) in &pending {
                list.mark_seen(key, *t);
            }
            self.write_and_install(list)
        });
        if written.is_err() {
            let mut state = self.state();
            for (key, t) in pending {
                let p = state.pending_seen.entry(key).or_insert(t);
                *p = (*p).max(t);
            }
        }
        written
    }

    /// Makes the next persist stop after writing and syncing the temporary file, as if the
    /// process died before the rename.
    #[doc(hidden)]
    pub fn crash_before_rename_for_testing_only(&self) {
        self.crash_before_rename.store(true, Ordering::Relaxed);
    }

    /// Makes `list` (just read from the file, with its checksum line) the list in memory, with
    /// the last-seen times not yet written laid over it.
    fn install(&self, state: &mut State, mut list: TrustList, version: FileVersion) {
        for (key, t) in &state.pending_seen {
            list.mark_seen(key, *t);
        }
        state.changed |= !state.list.admits_same_as(&list);
        state.list = list;
        state.file_version = Some(version);
    }

    /// Writes `list` atomically (the caller holds both locks) and installs it.
    fn write_and_install(&self, list: TrustList) -> Result<(), TrustStoreError> {
        let text = list.to_text();
        self.persist(&text)?;
        let check = text.as_bytes()[text.len() - CHECK_LINE_LEN..].to_vec();
        // No writer that takes the lock can have replaced the file since the rename.
        let sig = fs::metadata(self.file()).map(|m| FileSig::of(&m)).unwrap_or_default();
        self.install(&mut self.state(), list, FileVersion { check, sig });
        Ok(())
    }

    /// Takes the exclusive lock on `<store>.lock`, waiting at most the lock timeout.
    fn lock_file(&self) -> Result<File, TrustStoreError> {
        let lock_path = sidecar(self.file(), ".lock");
        let io_err = |source| TrustStoreError::Io { path: lock_path.clone(), source };
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&lock_path).map_err(io_err)?;
        // Poll with short, varying pauses (no clock needed): waiting writers do not wake in
        // lockstep, and the total wait is bounded by the timeout.
        let mut waited = Duration::ZERO;
        for attempt in 0u32.. {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(TryLockError::WouldBlock) if waited < self.lock_timeout => {
                    let pause = Duration::from_millis(1 + u64::from((attempt * 7 + std::process::id()) % 9));
                    std::thread::sleep(pause);
                    waited += pause;
                }
                Err(TryLockError::WouldBlock) => break,
                Err(TryLockError::Error(e)) => return Err(io_err(e)),
            }
        }
        Err(TrustStoreError::Locked { path: self.file().to_path_buf(), lock: lock_path })
    }

    /// Writes the store file atomically: a temporary file unique to this writer, fsync,
    /// rename over the store, fsync the directory. The caller holds the file lock, so
    /// temporary files left by crashed writers can be removed first.
    fn persist(&self, text: &str) -> Result<(), TrustStoreError> {
        let path = self.file();
        let io_err = |source| TrustStoreError::Io { path: path.to_path_buf(), source };
        remove_stale_temp_files(path);
        let tmp = temp_path(path);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let written = options.open(&tmp).and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(e));
        }
        if self.crash_before_rename.swap(false, Ordering::Relaxed) {
            return Err(io_err(io::Error::other("simulated crash before rename")));
        }
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(e));
        }
        // Make the rename itself durable.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave the state half-updated (every update replaces
    // the list whole), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `trust.vw` + `suffix`, beside it.
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// `trust.vw.tmp.<pid>.<n>`: unique per process and per write.
fn temp_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    sidecar(path, &format!(".tmp.{}.{n}", std::process::id()))
}

/// Removes `trust.vw.tmp*` files: with the store's lock held no writer is between writing its
/// temporary file and renaming it, so these are leftovers of crashes.
fn remove_stale_temp_files(path: &Path) {
    let Some(prefix) = path.file_name().map(|n| {
        let mut p = n.to_os_string();
        p.push(".tmp");
        p
    }) else {
        return;
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(prefix.as_encoded_bytes()) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Reads and verifies the whole file; returns the list and the file version it came from.
fn read_store(path: &Path) -> Result<(TrustList, FileVersion), TrustStoreError> {
    let mut file =
        File::open(path).map_err(|source| TrustStoreError::Io { path: path.to_path_buf(), source })?;
    let sig = file.metadata().map(|m| FileSig::of(&m)).unwrap_or_default();
    read_open_store(path, &mut file).map(|(list, check)| (list, FileVersion { check, sig }))
}

/// One version of the store file: its final checksum line and its metadata.
#[derive(Debug, Clone)]
struct FileVersion {
    check: Vec<u8>,
    sig: FileSig,
}

/// What identifies one version of the file cheaply: any write (ours replace the file, an
/// editor may rewrite it in place) changes at least one of these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FileSig {
    len: u64,
    modified: Option<SystemTime>,
    inode: (u64, u64),
}

impl FileSig {
    fn of(m: &fs::Metadata) -> FileSig {
        #[cfg(unix)]
        let inode = {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        };
        #[cfg(not(unix))]
        let inode = (0, 0);
        FileSig { len: m.len(), modified: m.modified().ok(), inode }
    }
}

fn read_open_store(path: &Path, file: &mut File) -> Result<(TrustList, Vec<u8>), TrustStoreError> {
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|source| TrustStoreError::Io { path: path.to_path_buf(), source })?;
    let list = TrustList::from_text(&text)
        .map_err(|source| TrustStoreError::Corrupt { path: path.to_path_buf(), source })?;
    // A verified file ends with its checksum line.
    let check = text.as_bytes()[text.len().saturating_sub(CHECK_LINE_LEN)..].to_vec();
    Ok((list, check))
}

/// The file's list if it is not the version `known` describes (else `None`). The version is
/// unchanged when both its metadata and its checksum line are: the line covers every byte
/// before it, and any rewrite, even to the same contents or with the old line kept by a hand
/// edit, changes the metadata (and is then read and verified in full).
fn read_store_if_changed(
    path: &Path,
    known: Option<&FileVersion>,
) -> Result<Option<(TrustList, FileVersion)>, TrustStoreError> {
    let io_err = |source| TrustStoreError::Io { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(io_err)?;
    let sig = FileSig::of(&file.metadata().map_err(io_err)?);
    if let Some(known) = known {
        if sig == known.sig && sig.len >= CHECK_LINE_LEN as u64 {
            let mut tail = [0u8; CHECK_LINE_LEN];
            file.seek(SeekFrom::End(-(CHECK_LINE_LEN as i64))).map_err(io_err)?;
            file.read_exact(&mut tail).map_err(io_err)?;
            if tail[..] == known.check[..] {
                return Ok(None);
            }
            file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        }
    }
    read_open_store(path, &mut file).map(|(list, check)| Some((list, FileVersion { check, sig })))
}

impl TrustPolicy for TrustStore {
    /// Decides from the list in memory (spec §12.2); an admitted device's last-seen time is
    /// recorded ([`TrustStore::mark_seen`]). With trust on first use on, an unknown key that
    /// presents a device id the store accepts ([`check_device_id`]) is first recorded in the
    /// file; if it cannot be recorded it is refused. A known key presenting another id and a
    /// revoked key stay refused.
    fn check(&self, key: &PublicKey, identity: Option<&DeviceIdentity>) -> TrustDecision {
        let (decision, tofu, known) = {
            let state = self.state();
            (state.list.decide(key, identity), state.list.tofu, state.list.get(key).is_some())
        };
        let decision = match decision {
            TrustDecision::Unknown if tofu && !known => self.admit_on_first_use(key, identity),
            other => other,
        };
        if decision == TrustDecision::Trusted {
            self.mark_seen(key);
        }
        decision
    }

    fn find_by_key_id(&self, id: &KeyId) -> Option<PublicKey> {
        self.state().list.find_by_key_id(id)
    }
}

impl TrustStore {
    fn admit_on_first_use(&self, key: &PublicKey, identity: Option<&DeviceIdentity>) -> TrustDecision {
        // Never record an id the store would refuse from an operator (or none: "any id").
        let Some(device_id) = identity.map(|i| i.device_id.as_str()).filter(|id| check_device_id(id).is_ok())
        else {
            return TrustDecision::Unknown;
        };
        // Re-decided on the latest file: TOFU may have been switched off or the key revoked.
        let recorded = self.update(|l, now| {
            if l.tofu && l.get(key).is_none() {
                l.add(*key, device_id, TOFU_LABEL, now);
            }
        });
        match recorded {
            Ok(()) => self.state().list.decide(key, identity),
            Err(_) => TrustDecision::Unknown,
        }
    }
}
