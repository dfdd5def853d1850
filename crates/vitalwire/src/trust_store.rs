//! The default [`TrustPolicy`]: a [`TrustList`] kept in memory behind a lock and persisted to a
//! text file that is never half-written (write a temporary file, fsync, rename, fsync the
//! directory) and that is refused, not emptied, when damaged (its SHA-256 checksum line).
//!
//! This module does file IO (and reads the wall clock for the `added`/`seen` times it records),
//! so it exists only with the `std` feature. The handshake itself only calls
//! [`TrustPolicy::check`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::keys::{KeyId, PublicKey};
use crate::payload::DeviceIdentity;
use crate::trust::{TrustDecision, TrustList, TrustListError, TrustPolicy};

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
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A thread-safe trust store, in memory or backed by a file.
pub struct TrustStore {
    list: Mutex<TrustList>,
    path: Option<PathBuf>,
    clock: fn() -> u64,
    dirty: AtomicBool,
    crash_before_rename: AtomicBool,
}

impl core::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TrustStore").field("path", &self.path).field("entries", &self.lock().len()).finish()
    }
}

impl TrustStore {
    /// A store that lives only in memory.
    pub fn in_memory(list: TrustList) -> Self {
        TrustStore {
            list: Mutex::new(list),
            path: None,
            clock: unix_millis,
            dirty: AtomicBool::new(false),
            crash_before_rename: AtomicBool::new(false),
        }
    }

    /// Creates a new, empty store file. Fails if the file exists.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, TrustStoreError> {
        let path = path.as_ref().to_path_buf();
        if path.exists() {
            return Err(TrustStoreError::AlreadyExists(path));
        }
        let store = TrustStore { path: Some(path), ..Self::in_memory(TrustList::new()) };
        store.persist(&store.lock())?;
        Ok(store)
    }

    /// Opens an existing store file. A missing file is an error (a deleted store must not
    /// silently become an empty allowlist), and so is a damaged one. A temporary file left by
    /// a crash is ignored: the last complete store is what counts.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, TrustStoreError> {
        let path = path.as_ref().to_path_buf();
        let text =
            fs::read_to_string(&path).map_err(|source| TrustStoreError::Io { path: path.clone(), source })?;
        let list = TrustList::from_text(&text)
            .map_err(|source| TrustStoreError::Corrupt { path: path.clone(), source })?;
        Ok(TrustStore { path: Some(path), ..Self::in_memory(list) })
    }

    /// Opens the store at `path`, creating an empty one if there is no file.
    pub fn open_or_create(path: impl AsRef<Path>) -> Result<Self, TrustStoreError> {
        if path.as_ref().exists() {
            Self::open(path)
        } else {
            Self::create(path)
        }
    }

    /// Replaces the clock used for the times the store records (tests, simulated time).
    pub fn with_clock(mut self, clock: fn() -> u64) -> Self {
        self.clock = clock;
        self
    }

    /// The file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn lock(&self) -> MutexGuard<'_, TrustList> {
        // A panic while holding the lock cannot leave the list half-updated (every update is a
        // single map operation), so a poisoned lock is still usable.
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the current list.
    pub fn snapshot(&self) -> TrustList {
        self.lock().clone()
    }

    /// Applies `change` and persists the result; on a failed write the change is undone, so
    /// memory and file never disagree.
    fn update<T>(&self, change: impl FnOnce(&mut TrustList, u64) -> T) -> Result<T, TrustStoreError> {
        let mut list = self.lock();
        let before = list.clone();
        let result = change(&mut list, (self.clock)());
        if let Err(e) = self.persist(&list) {
            *list = before;
            return Err(e);
        }
        self.dirty.store(false, Ordering::Relaxed);
        Ok(result)
    }

    /// Admits a device key (persisted before returning).
    pub fn add(&self, key: PublicKey, device_id: &str, label: &str) -> Result<(), TrustStoreError> {
        self.update(|l, now| {
            l.add(key, device_id, label, now);
        })
    }

    /// Revokes a device key (persisted before returning). Returns whether the key was known.
    /// Close its open sessions with [`crate::Session::recheck`].
    pub fn revoke(&self, key: &PublicKey) -> Result<bool, TrustStoreError> {
        self.update(|l, now| l.revoke(key, now))
    }

    /// Switches trust on first use on or off (persisted).
    pub fn set_tofu(&self, on: bool) -> Result<(), TrustStoreError> {
        self.update(|l, _| l.tofu = on)
    }

    /// Records that a device completed a handshake. Kept in memory until [`TrustStore::flush`]
    /// (or the next persisted change), so a busy host does not rewrite the file per connection.
    pub fn mark_seen(&self, key: &PublicKey) {
        self.lock().mark_seen(key, (self.clock)());
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Writes pending `last seen` times.
    pub fn flush(&self) -> Result<(), TrustStoreError> {
        if self.dirty.swap(false, Ordering::Relaxed) {
            let list = self.lock();
            self.persist(&list)?;
        }
        Ok(())
    }

    /// Makes the next persist stop after writing and syncing the temporary file, as if the
    /// process died before the rename.
    #[doc(hidden)]
    pub fn crash_before_rename_for_testing_only(&self) {
        self.crash_before_rename.store(true, Ordering::Relaxed);
    }

    fn persist(&self, list: &TrustList) -> Result<(), TrustStoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io_err = |source| TrustStoreError::Io { path: path.clone(), source };
        let tmp = temp_path(path);
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f: File = options.open(&tmp).map_err(io_err)?;
        f.write_all(list.to_text().as_bytes()).map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
        drop(f);
        if self.crash_before_rename.swap(false, Ordering::Relaxed) {
            return Err(io_err(io::Error::other("simulated crash before rename")));
        }
        fs::rename(&tmp, path).map_err(io_err)?;
        // Make the rename itself durable.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

impl TrustPolicy for TrustStore {
    fn check(&self, key: &PublicKey, identity: Option<&DeviceIdentity>) -> TrustDecision {
        let decision = self.lock().decide(key, identity);
        if decision != TrustDecision::Unknown || !self.lock().tofu {
            return decision;
        }
        // Trust on first use: record the key first; if it cannot be recorded, refuse.
        let device_id = identity.map(|i| i.device_id.as_str()).unwrap_or("");
        match self.update(|l, now| {
            if l.get(key).is_none() {
                l.add(*key, device_id, "trusted on first use", now);
            }
        }) {
            Ok(()) => self.lock().decide(key, identity),
            Err(_) => TrustDecision::Unknown,
        }
    }

    fn find_by_key_id(&self, id: &KeyId) -> Option<PublicKey> {
        self.lock().find_by_key_id(id)
    }
}
