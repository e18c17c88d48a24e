//! Named, versioned key-encryption keys (KEKs) and their lifecycle.
//!
//! A key (`tenant-a/db`) has numbered versions. New data keys are wrapped under the
//! *primary* version (the newest after [`Keyring::rotate`]); any version from
//! `min_decrypt_version` up that has not been destroyed can unwrap. Key states:
//!
//! | state              | wrap | unwrap | leaves by                                  |
//! |--------------------|------|--------|--------------------------------------------|
//! | `Enabled`          | yes  | yes    | disable, schedule deletion                 |
//! | `Disabled`         | no   | no     | enable, schedule deletion                  |
//! | `PendingDeletion`  | no   | no     | cancel (→ `Disabled`), or time → destroyed |
//! | `Destroyed`        | no   | no     | never: all material erased                 |
//!
//! Destroying a version ([`Keyring::destroy_version`]) or a whole key erases the material
//! (zeroized in memory, removed from the keyring file): every data key wrapped under it,
//! and so every ciphertext sealed under those data keys, becomes unreadable. That is
//! crypto-shredding.
//!
//! A [`Keyring`] opened with [`Keyring::open`] persists every change to its file before the
//! call returns (write to a temporary file, fsync, rename, fsync the directory), so an
//! acknowledged rotation survives a crash and a crash never leaves a half-written keyring.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::clock::{Clock, SystemClock};
use crate::secret::{KEY_LEN, KeyMaterial};

/// Maximum key-name length in bytes.
pub const MAX_KEY_NAME_LEN: usize = 255;

/// Errors of key administration and key lookup. Key names and versions are not secret and
/// appear in messages; key material never does.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key name breaks the naming rules (see [`validate_key_name`]).
    #[error("invalid key name: {0}")]
    InvalidName(String),
    /// No key with this name exists.
    #[error("key {name:?} not found")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// A key with this name already exists.
    #[error("key {name:?} already exists")]
    AlreadyExists {
        /// The name asked for.
        name: String,
    },
    /// The key exists but has no such version.
    #[error("key {name:?} has no version {version}")]
    VersionNotFound {
        /// Key name.
        name: String,
        /// Version asked for.
        version: u32,
    },
    /// The key is disabled: no wrap or unwrap until it is enabled again.
    #[error("key {name:?} is disabled")]
    Disabled {
        /// Key name.
        name: String,
    },
    /// The key is scheduled for deletion: unusable unless the deletion is cancelled.
    #[error("key {name:?} is pending deletion")]
    PendingDeletion {
        /// Key name.
        name: String,
    },
    /// The key was destroyed: its material is gone for good.
    #[error("key {name:?} has been destroyed")]
    Destroyed {
        /// Key name.
        name: String,
    },
    /// This version's material was destroyed.
    #[error("version {version} of key {name:?} has been destroyed")]
    VersionDestroyed {
        /// Key name.
        name: String,
        /// The destroyed version.
        version: u32,
    },
    /// The version is below the key's minimum decryption version.
    #[error("version {version} of key {name:?} is below its minimum decryption version {min}")]
    BelowMinDecryptVersion {
        /// Key name.
        name: String,
        /// The version asked for.
        version: u32,
        /// The key's `min_decrypt_version`.
        min: u32,
    },
    /// The requested lifecycle change is not allowed in the key's current state.
    #[error("key {name:?}: {reason}")]
    InvalidTransition {
        /// Key name.
        name: String,
        /// What is not allowed and why.
        reason: &'static str,
    },
    /// The keyring file could not be read or written.
    #[error("keyring storage error at {path}: {source}")]
    Storage {
        /// The file involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The keyring file may be read by other users; it holds key material.
    #[error("keyring file {path} has mode {mode:o}, which lets other users read key material; chmod 600 it")]
    InsecurePermissions {
        /// The file involved.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Another process has the keyring file open for writing.
    #[error("keyring file {path} is in use by another process (lock file {path}.lock)")]
    Locked {
        /// The keyring file.
        path: PathBuf,
    },
    /// The keyring file is not a valid keyring.
    #[error("keyring file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file involved.
        path: PathBuf,
        /// What is wrong (never contains key bytes).
        reason: String,
    },
}

/// Checks a key name: 1 to 255 bytes of `A-Z a-z 0-9 . _ - /`, no empty path segment,
/// no `.` or `..` segment. `/` separates a tenant prefix (`tenant-a/db`), which policies
/// match on.
pub fn validate_key_name(name: &str) -> Result<(), KeyError> {
    let invalid = |why: &str| Err(KeyError::InvalidName(format!("{why} (got {} bytes)", name.len())));
    if name.is_empty() || name.len() > MAX_KEY_NAME_LEN {
        return invalid("must be 1 to 255 bytes");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/')) {
        return invalid("allowed characters are A-Z a-z 0-9 . _ - /");
    }
    if name.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return invalid("empty, '.' or '..' path segment");
    }
    Ok(())
}

/// Lifecycle state of a whole key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyState {
    /// Usable for wrap and unwrap.
    Enabled,
    /// Temporarily unusable.
    Disabled,
    /// Unusable; destroyed once `delete_after` (Unix seconds) has passed.
    PendingDeletion {
        /// Unix time (seconds) from which [`Keyring::purge_due`] destroys the key.
        delete_after: u64,
    },
    /// All material erased.
    Destroyed,
}

/// Public facts about one key version (never its material).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVersionInfo {
    /// Version number, from 1.
    pub version: u32,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// When the material was destroyed, if it was.
    pub destroyed_at: Option<u64>,
}

/// Public facts about a key (never its material).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// Key name.
    pub name: String,
    /// Lifecycle state.
    pub state: KeyState,
    /// Version new data keys are wrapped under.
    pub primary_version: u32,
    /// Lowest version allowed to unwrap.
    pub min_decrypt_version: u32,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// All versions, oldest first.
    pub versions: Vec<KeyVersionInfo>,
}

struct VersionEntry {
    info: KeyVersionInfo,
    material: Option<KeyMaterial>,
}

struct KeyEntry {
    state: KeyState,
    primary: u32,
    min_decrypt: u32,
    created_at: u64,
    versions: BTreeMap<u32, VersionEntry>,
}

impl KeyEntry {
    fn info(&self, name: &str) -> KeyInfo {
        KeyInfo {
            name: name.to_owned(),
            state: self.state,
            primary_version: self.primary,
            min_decrypt_version: self.min_decrypt,
            created_at: self.created_at,
            versions: self.versions.values().map(|v| v.info.clone()).collect(),
        }
    }

    fn usable(&self, name: &str) -> Result<(), KeyError> {
        let name = name.to_owned();
        match self.state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KeyError::Disabled { name }),
            KeyState::PendingDeletion { .. } => Err(KeyError::PendingDeletion { name }),
            KeyState::Destroyed => Err(KeyError::Destroyed { name }),
        }
    }

    fn erase_all(&mut self, now: u64) {
        for v in self.versions.values_mut() {
            if v.material.take().is_some() {
                v.info.destroyed_at = Some(now);
            }
        }
        self.state = KeyState::Destroyed;
    }
}

/// An in-process set of named, versioned KEKs, optionally persisted to a file.
///
/// All methods take `&self`; the keyring is safe to share across threads (`Arc<Keyring>`).
pub struct Keyring {
    keys: RwLock<BTreeMap<String, KeyEntry>>,
    clock: Arc<dyn Clock>,
    file: Option<PathBuf>,
    /// Held for the keyring's life: an exclusive advisory lock on `<file>.lock`, so two
    /// processes never overwrite each other's changes.
    _lock: Option<fs::File>,
    generation: AtomicU64,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.keys.read().map(|k| k.len()).unwrap_or(0);
        f.debug_struct("Keyring").field("keys", &n).field("file", &self.file).finish()
    }
}

impl Default for Keyring {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl Keyring {
    /// An empty keyring that lives only in memory.
    pub fn in_memory() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty in-memory keyring reading time from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self { keys: RwLock::new(BTreeMap::new()), clock, file: None, _lock: None, generation: AtomicU64::new(0) }
    }

    /// Opens the keyring file at `path`, creating an empty one (mode 0600) if it does not
    /// exist. Refuses a file that other users can read.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        Self::open_with_clock(path, Arc::new(SystemClock))
    }

    /// [`Keyring::open`] with an injected clock.
    pub fn open_with_clock(path: impl AsRef<Path>, clock: Arc<dyn Clock>) -> Result<Self, KeyError> {
        let path = path.as_ref().to_path_buf();
        let storage = |source| KeyError::Storage { path: path.clone(), source };
        let lock = lock_keyring(&path)?;
        let keys = match fs::read(&path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                check_private_mode(&path)?;
                decode_keyring(&path, &bytes)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(storage(e)),
        };
        let ring =
            Self { keys: RwLock::new(keys), clock, file: Some(path), _lock: Some(lock), generation: AtomicU64::new(0) };
        if ring.file.as_ref().is_some_and(|p| !p.exists()) {
            let keys = ring.read();
            ring.persist(&keys)?;
        }
        Ok(ring)
    }

    /// A counter bumped by every change to any key (see [`crate::provider::KeyProvider::epoch`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, KeyEntry>> {
        // A panic while holding the lock cannot leave a half-applied change (every
        // mutation is built aside and swapped in), so a poisoned lock is still consistent.
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, KeyEntry>> {
        self.keys.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` to a key under the write lock, persists, and returns its info.
    /// The in-memory change is rolled back if persisting fails, so memory and file agree.
    fn mutate<T>(
        &self,
        name: &str,
        change: impl FnOnce(&mut KeyEntry, u64) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        let now = self.clock.now_unix();
        let mut keys = self.write();
        let entry = keys.get_mut(name).ok_or_else(|| KeyError::NotFound { name: name.into() })?;
        let backup = snapshot(entry);
        let out = change(entry, now)?;
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.persist(&keys) {
            if let Some(entry) = keys.get_mut(name) {
                *entry = backup;
            }
            return Err(e);
        }
        Ok(out)
    }

    /// Creates key `name` with a fresh random version 1.
    pub fn create_key(&self, name: &str) -> Result<KeyInfo, KeyError> {
        self.create_key_with_material(name, KeyMaterial::generate())
    }

    /// Creates key `name` whose version 1 is `material` (import, test vectors).
    pub fn create_key_with_material(&self, name: &str, material: KeyMaterial) -> Result<KeyInfo, KeyError> {
        validate_key_name(name)?;
        let now = self.clock.now_unix();
        let mut keys = self.write();
        if keys.contains_key(name) {
            return Err(KeyError::AlreadyExists { name: name.into() });
        }
        let mut versions = BTreeMap::new();
        versions.insert(
            1,
            VersionEntry {
                info: KeyVersionInfo { version: 1, created_at: now, destroyed_at: None },
                material: Some(material),
            },
        );
        let entry = KeyEntry { state: KeyState::Enabled, primary: 1, min_decrypt: 1, created_at: now, versions };
        let info = entry.info(name);
        keys.insert(name.to_owned(), entry);
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.persist(&keys) {
            keys.remove(name);
            return Err(e);
        }
        Ok(info)
    }

    /// Adds a fresh random version and makes it primary. Returns the new version number.
    pub fn rotate(&self, name: &str) -> Result<u32, KeyError> {
        self.rotate_with_material(name, KeyMaterial::generate())
    }

    /// Adds a version with the given material and makes it primary.
    pub fn rotate_with_material(&self, name: &str, material: KeyMaterial) -> Result<u32, KeyError> {
        self.mutate(name, |e, now| {
            if matches!(e.state, KeyState::Destroyed | KeyState::PendingDeletion { .. }) {
                e.usable(name)?;
            }
            let next = e.versions.keys().next_back().copied().unwrap_or(0);
            let next = next
                .checked_add(1)
                .ok_or(KeyError::InvalidTransition { name: name.into(), reason: "version numbers exhausted" })?;
            e.versions.insert(
                next,
                VersionEntry {
                    info: KeyVersionInfo { version: next, created_at: now, destroyed_at: None },
                    material: Some(material),
                },
            );
            e.primary = next;
            Ok(next)
        })
    }

    /// Public facts about one key.
    pub fn describe(&self, name: &str) -> Result<KeyInfo, KeyError> {
        let keys = self.read();
        keys.get(name).map(|e| e.info(name)).ok_or_else(|| KeyError::NotFound { name: name.into() })
    }

    /// All keys, sorted by name.
    pub fn list(&self) -> Vec<KeyInfo> {
        self.read().iter().map(|(n, e)| e.info(n)).collect()
    }

    /// Enables a disabled key.
    pub fn enable(&self, name: &str) -> Result<(), KeyError> {
        self.set_state(name, KeyState::Enabled, |s| matches!(s, KeyState::Enabled | KeyState::Disabled))
    }

    /// Disables an enabled key: wrap and unwrap fail until it is enabled again.
    pub fn disable(&self, name: &str) -> Result<(), KeyError> {
        self.set_state(name, KeyState::Disabled, |s| matches!(s, KeyState::Enabled | KeyState::Disabled))
    }

    /// Schedules destruction of the whole key after `wait` (the key is unusable meanwhile).
    pub fn schedule_deletion(&self, name: &str, wait: Duration) -> Result<u64, KeyError> {
        let delete_after = self.clock.now_unix().saturating_add(wait.as_secs());
        self.set_state(name, KeyState::PendingDeletion { delete_after }, |s| {
            matches!(s, KeyState::Enabled | KeyState::Disabled)
        })?;
        Ok(delete_after)
    }

    /// Cancels a scheduled deletion; the key becomes `Disabled` (enable it explicitly).
    pub fn cancel_deletion(&self, name: &str) -> Result<(), KeyError> {
        self.set_state(name, KeyState::Disabled, |s| matches!(s, KeyState::PendingDeletion { .. }))
    }

    fn set_state(&self, name: &str, to: KeyState, allowed_from: impl Fn(KeyState) -> bool) -> Result<(), KeyError> {
        self.mutate(name, |e, _| {
            if !allowed_from(e.state) {
                return Err(KeyError::InvalidTransition {
                    name: name.into(),
                    reason: "not allowed from the key's current state",
                });
            }
            e.state = to;
            Ok(())
        })
    }

    /// Destroys every key whose scheduled deletion time has passed; returns their names.
    pub fn purge_due(&self) -> Result<Vec<String>, KeyError> {
        let now = self.clock.now_unix();
        let due: Vec<String> = self
            .read()
            .iter()
            .filter(|(_, e)| matches!(e.state, KeyState::PendingDeletion { delete_after } if delete_after <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &due {
            self.mutate(name, |e, now| {
                e.erase_all(now);
                Ok(())
            })?;
        }
        Ok(due)
    }

    /// Erases the material of one version. The primary version cannot be destroyed
    /// (rotate first). Irreversible: everything wrapped under it becomes unreadable.
    pub fn destroy_version(&self, name: &str, version: u32) -> Result<(), KeyError> {
        self.mutate(name, |e, now| {
            if version == e.primary && e.state != KeyState::Destroyed {
                return Err(KeyError::InvalidTransition {
                    name: name.into(),
                    reason: "cannot destroy the primary version; rotate first",
                });
            }
            let v =
                e.versions.get_mut(&version).ok_or_else(|| KeyError::VersionNotFound { name: name.into(), version })?;
            if v.material.take().is_some() {
                v.info.destroyed_at = Some(now);
            }
            Ok(())
        })
    }

    /// Sets the lowest version allowed to unwrap (1 ..= primary). Raising it is how old
    /// versions are retired after their ciphertexts have been rewrapped.
    pub fn set_min_decrypt_version(&self, name: &str, min: u32) -> Result<(), KeyError> {
        self.mutate(name, |e, _| {
            if min == 0 || min > e.primary {
                return Err(KeyError::InvalidTransition {
                    name: name.into(),
                    reason: "min_decrypt_version must be between 1 and the primary version",
                });
            }
            e.min_decrypt = min;
            Ok(())
        })
    }

    /// Runs `f` with the primary version's number and material, if the key may wrap.
    pub(crate) fn with_primary<T>(&self, name: &str, f: impl FnOnce(u32, &KeyMaterial) -> T) -> Result<T, KeyError> {
        let keys = self.read();
        let e = keys.get(name).ok_or_else(|| KeyError::NotFound { name: name.into() })?;
        e.usable(name)?;
        let v = e
            .versions
            .get(&e.primary)
            .ok_or_else(|| KeyError::VersionNotFound { name: name.into(), version: e.primary })?;
        let m =
            v.material.as_ref().ok_or_else(|| KeyError::VersionDestroyed { name: name.into(), version: e.primary })?;
        Ok(f(e.primary, m))
    }

    /// Runs `f` with version `version`'s material, if that version may unwrap.
    pub(crate) fn with_version<T>(
        &self,
        name: &str,
        version: u32,
        f: impl FnOnce(&KeyMaterial) -> T,
    ) -> Result<T, KeyError> {
        let keys = self.read();
        let e = keys.get(name).ok_or_else(|| KeyError::NotFound { name: name.into() })?;
        e.usable(name)?;
        let v = e.versions.get(&version).ok_or_else(|| KeyError::VersionNotFound { name: name.into(), version })?;
        let m = v.material.as_ref().ok_or_else(|| KeyError::VersionDestroyed { name: name.into(), version })?;
        if version < e.min_decrypt {
            return Err(KeyError::BelowMinDecryptVersion { name: name.into(), version, min: e.min_decrypt });
        }
        Ok(f(m))
    }

    fn persist(&self, keys: &BTreeMap<String, KeyEntry>) -> Result<(), KeyError> {
        let Some(path) = &self.file else { return Ok(()) };
        let bytes = encode_keyring(keys);
        write_file_atomically(path, &bytes).map_err(|source| KeyError::Storage { path: path.clone(), source })
    }
}

fn snapshot(e: &KeyEntry) -> KeyEntry {
    KeyEntry {
        state: e.state,
        primary: e.primary,
        min_decrypt: e.min_decrypt,
        created_at: e.created_at,
        versions: e
            .versions
            .iter()
            .map(|(n, v)| {
                (*n, VersionEntry { info: v.info.clone(), material: v.material.as_ref().map(|m| m.duplicate()) })
            })
            .collect(),
    }
}

// ---- keyring file -------------------------------------------------------------------

const KEYRING_FORMAT: &str = "cryptocore-keyring";
const KEYRING_FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKeyring {
    format: String,
    version: u32,
    keys: Vec<FileKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    name: String,
    state: KeyState,
    primary: u32,
    min_decrypt: u32,
    created_at: u64,
    versions: Vec<FileVersion>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileVersion {
    version: u32,
    created_at: u64,
    destroyed_at: Option<u64>,
    /// Hex of the 32 material bytes; absent once destroyed.
    material: Option<Zeroizing<String>>,
}

fn encode_keyring(keys: &BTreeMap<String, KeyEntry>) -> Zeroizing<Vec<u8>> {
    let file = FileKeyring {
        format: KEYRING_FORMAT.into(),
        version: KEYRING_FORMAT_VERSION,
        keys: keys
            .iter()
            .map(|(name, e)| FileKey {
                name: name.clone(),
                state: e.state,
                primary: e.primary,
                min_decrypt: e.min_decrypt,
                created_at: e.created_at,
                versions: e
                    .versions
                    .values()
                    .map(|v| FileVersion {
                        version: v.info.version,
                        created_at: v.info.created_at,
                        destroyed_at: v.info.destroyed_at,
                        material: v.material.as_ref().map(|m| Zeroizing::new(hex::encode(m.expose_secret()))),
                    })
                    .collect(),
            })
            .collect(),
    };
    // Serializing plain structs of strings and integers cannot fail.
    Zeroizing::new(serde_json::to_vec_pretty(&file).unwrap_or_default())
}

fn decode_keyring(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, KeyEntry>, KeyError> {
    let corrupt = |reason: String| KeyError::Corrupt { path: path.to_path_buf(), reason };
    // Only the position and class of a JSON error are reported: serde_json's message can
    // quote the offending value, which in a keyring file may be key material.
    let file: FileKeyring = serde_json::from_slice(bytes).map_err(|e| {
        corrupt(format!("not a keyring file ({:?} error at line {} column {})", e.classify(), e.line(), e.column()))
    })?;
    if file.format != KEYRING_FORMAT || file.version != KEYRING_FORMAT_VERSION {
        return Err(corrupt(format!("unsupported format {:?} version {}", file.format, file.version)));
    }
    let mut keys = BTreeMap::new();
    for k in file.keys {
        validate_key_name(&k.name).map_err(|e| corrupt(e.to_string()))?;
        let mut versions = BTreeMap::new();
        for v in k.versions {
            let material = match &v.material {
                None => None,
                Some(h) => {
                    let raw = Zeroizing::new(
                        hex::decode(h.as_bytes())
                            .map_err(|_| corrupt(format!("key {:?} v{}: bad hex", k.name, v.version)))?,
                    );
                    let m = KeyMaterial::from_slice(&raw).ok_or_else(|| {
                        corrupt(format!("key {:?} v{}: material must be {KEY_LEN} bytes", k.name, v.version))
                    })?;
                    Some(m)
                }
            };
            if v.version == 0 || versions.contains_key(&v.version) {
                return Err(corrupt(format!("key {:?}: bad or duplicate version {}", k.name, v.version)));
            }
            versions.insert(
                v.version,
                VersionEntry {
                    info: KeyVersionInfo { version: v.version, created_at: v.created_at, destroyed_at: v.destroyed_at },
                    material,
                },
            );
        }
        if !versions.contains_key(&k.primary) || k.min_decrypt == 0 || k.min_decrypt > k.primary {
            return Err(corrupt(format!("key {:?}: primary/min_decrypt inconsistent", k.name)));
        }
        if keys.contains_key(&k.name) {
            return Err(corrupt(format!("duplicate key {:?}", k.name)));
        }
        keys.insert(
            k.name,
            KeyEntry {
                state: k.state,
                primary: k.primary,
                min_decrypt: k.min_decrypt,
                created_at: k.created_at,
                versions,
            },
        );
    }
    Ok(keys)
}

#[cfg(unix)]
fn check_private_mode(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(|source| KeyError::Storage { path: path.into(), source })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(KeyError::InsecurePermissions { path: path.into(), mode: meta.permissions().mode() & 0o777 });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_mode(_path: &Path) -> Result<(), KeyError> {
    Ok(())
}

/// Takes the exclusive advisory lock `<path>.lock` (created 0600), failing at once with
/// [`KeyError::Locked`] if another process holds it.
fn lock_keyring(path: &Path) -> Result<fs::File, KeyError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let mut opts = fs::OpenOptions::new();
    opts.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts.open(&lock_path).map_err(|source| KeyError::Storage { path: lock_path.clone(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(KeyError::Locked { path: path.to_path_buf() }),
        Err(fs::TryLockError::Error(source)) => Err(KeyError::Storage { path: lock_path, source }),
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new file, never a
/// mix: temporary file in the same directory (mode 0600), fsync, rename, fsync directory.
pub(crate) fn write_file_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", hex::encode(crate::rand::array::<8>())));
    let result = (|| {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        #[cfg(unix)]
        fs::File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
