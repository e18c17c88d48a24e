//! The KMS operations, independent of transport: key lifecycle on the [`KeyStore`], KEKs
//! unwrapped with the root key (cached in memory as secret types), and envelope
//! encryption through crypto-core with this store as the [`KeyProvider`].
//!
//! Every method is synchronous (the store is). Lifecycle changes use the store's optimistic
//! concurrency and retry on conflict, so several sidecars on one PostgreSQL database can
//! administer keys at once.
//!
//! ## Caches
//!
//! * **Key records** (state, versions, primary, decrypt floor; never plaintext material)
//!   are cached for [`KmsOptions::key_cache_ttl`]. A change made through this process
//!   replaces the cached record at once; a change made by another sidecar sharing the
//!   PostgreSQL keystore is seen within the TTL (the documented propagation bound). A
//!   record used in the second half of its TTL is re-read ahead of expiry by one caller
//!   (single flight; [`Kms::take_due_refreshes`]), so a busy key never expires: without
//!   that, every request arriving between the expiry and the refill went to a blocking
//!   thread and read the store itself, once a TTL, at any request rate.
//! * **Unwrapped KEK versions** are cached as [`KeyMaterial`] (zeroized on drop), at most
//!   [`KmsOptions::kek_cache_capacity`] of them, least recently used evicted first; a
//!   version seen destroyed is dropped at once.
//!
//! [`Kms::cache_only`] runs an operation that may use the caches but must not touch the
//! store (it fails with [`KmsError::WouldBlock`] instead), so the gRPC layer can serve warm
//! requests on its async workers and send only cold ones to a blocking thread.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crypto_core::Backend;
use crypto_core::clock::{Clock, SystemClock};
use crypto_core::envelope::{EncryptionContext, Envelope, EnvelopeError};
use crypto_core::keys::{KeyError, KeyState, validate_key_name};
use crypto_core::provider::{KeyProvider, ProviderError, WrappedKey};
use crypto_core::secret::{DataKey, KeyMaterial};

use crate::keystore::{KeyRecord, KeyStore, KeyUpdate, StoreError};
use crate::root_key::{RootKey, RootKeyError};

/// Provider id of data keys wrapped by the sidecar.
pub const PROVIDER_ID: &str = "kms-sidecar";
const DATA_KEY_LABEL: &[u8] = b"kms-sidecar/v1/data-key";
/// Message of the store error that a refused access inside [`Kms::cache_only`] produces on
/// its way up; [`Kms::cache_only`] recognises the refusal by a flag, not by this text.
const WOULD_BLOCK: &str = "cache-only: keystore access deferred";
/// Most key records cached at once.
const MAX_CACHED_RECORDS: usize = 65_536;
/// Attempts of a read-modify-write under concurrent updates before giving up.
const MAX_RETRIES: usize = 16;
const DAY: u64 = 86_400;
/// Marker of a lifecycle job's change that another sidecar made first.
const NOT_DUE: &str = "no longer due";
/// Shortest waiting period of a scheduled deletion: 7 days.
pub const MIN_DELETION_WINDOW_SECS: u64 = 7 * DAY;
/// Longest waiting period of a scheduled deletion: 30 days.
pub const MAX_DELETION_WINDOW_SECS: u64 = 30 * DAY;
/// Waiting period of a scheduled deletion when none is given: 30 days.
pub const DEFAULT_DELETION_WINDOW_SECS: u64 = 30 * DAY;
/// Shortest automatic rotation period: 1 hour.
pub const MIN_ROTATION_PERIOD_SECS: u64 = 3_600;
/// Longest automatic rotation period: 100 years.
pub const MAX_ROTATION_PERIOD_SECS: u64 = 36_500 * DAY;

/// Why an operation failed; the gRPC layer maps each to a status code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// Unknown key, version or secret.
    #[error("{0}")]
    NotFound(String),
    /// A key or secret with this name exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The key's state forbids the operation (disabled, pending deletion, destroyed,
    /// version below the minimum or destroyed).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Malformed input: bad name, bad context, malformed ciphertext.
    #[error("{0}")]
    InvalidArgument(String),
    /// The ciphertext or its encryption context did not authenticate. Deliberately coarse.
    #[error("ciphertext or encryption context is invalid")]
    DecryptFailed,
    /// Too many concurrent updates of one key; retry.
    #[error("{0}")]
    Aborted(String),
    /// The keystore is unreachable or failed.
    #[error("{0}")]
    Unavailable(String),
    /// A request outside what policy allows (e.g. a CSR naming a host the CA may not certify).
    #[error("{0}")]
    PermissionDenied(String),
    /// Stored data is inconsistent (e.g. a KEK that does not unwrap under the root key).
    #[error("{0}")]
    Internal(String),
    /// Inside [`Kms::cache_only`]: the operation needs the store. Run it again outside.
    #[error("operation needs the keystore")]
    WouldBlock,
}

impl From<StoreError> for KmsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => KmsError::NotFound(format!("{what} not found")),
            StoreError::AlreadyExists(what) => KmsError::AlreadyExists(format!("{what} already exists")),
            StoreError::Conflict(what) => KmsError::Aborted(format!("concurrent update of {what}")),
            StoreError::Corrupt(m) => KmsError::Internal(m),
            other => KmsError::Unavailable(other.to_string()),
        }
    }
}

impl From<KeyError> for KmsError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::NotFound { .. } | KeyError::VersionNotFound { .. } => KmsError::NotFound(e.to_string()),
            KeyError::InvalidName(_) => KmsError::InvalidArgument(e.to_string()),
            _ => KmsError::FailedPrecondition(e.to_string()),
        }
    }
}

impl From<ProviderError> for KmsError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::Key(k) => k.into(),
            ProviderError::Unavailable(m) => KmsError::Unavailable(m),
            ProviderError::UnwrapFailed | ProviderError::NoMatchingProvider(_) => KmsError::DecryptFailed,
            other => KmsError::Internal(other.to_string()),
        }
    }
}

impl From<EnvelopeError> for KmsError {
    fn from(e: EnvelopeError) -> Self {
        match e {
            EnvelopeError::Key(p) => p.into(),
            EnvelopeError::HeaderAuthentication
            | EnvelopeError::SegmentAuthentication { .. }
            | EnvelopeError::Truncated
            | EnvelopeError::TrailingData => KmsError::DecryptFailed,
            EnvelopeError::InvalidContext(m) => KmsError::InvalidArgument(format!("invalid encryption context: {m}")),
            other => KmsError::InvalidArgument(format!("malformed ciphertext: {other}")),
        }
    }
}

/// Public facts about a key, as returned by the admin operations.
pub type KeyInfo = KeyRecord;

/// A decrypted secret.
pub struct SecretValue {
    /// The value (zeroized on drop).
    pub value: crypto_core::secret::SecretBytes,
    /// Its version.
    pub version: u32,
    /// The key it is sealed under.
    pub key_name: String,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue").field("version", &self.version).field("key_name", &self.key_name).finish()
    }
}

/// Tunables of the [`Kms`] caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KmsOptions {
    /// How long a key record read from the store is trusted (0 = always read the store).
    /// Bounds how late a change made by another sidecar is honoured here.
    pub key_cache_ttl: Duration,
    /// Most unwrapped KEK versions held in memory.
    pub kek_cache_capacity: usize,
}

impl Default for KmsOptions {
    fn default() -> Self {
        Self { key_cache_ttl: Duration::from_secs(1), kek_cache_capacity: 4096 }
    }
}

thread_local! {
    /// Set while [`Kms::cache_only`] runs on this thread.
    static CACHE_ONLY: Cell<bool> = const { Cell::new(false) };
    /// Set when a store access was refused during the current [`Kms::cache_only`] call.
    static REFUSED: Cell<bool> = const { Cell::new(false) };
    /// Keys whose records this thread claimed to refresh ahead of expiry during
    /// [`Kms::cache_only`], for the caller to re-read off-thread.
    static REFRESH_DUE: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// A cached key record.
struct CachedRecord {
    record: Arc<KeyRecord>,
    /// When it was read (or written) from the store: it is served until `at + TTL`.
    at: Instant,
    /// A refresh ahead of expiry was handed to one caller; the others keep using this
    /// entry. Stays set if that refresh fails: the entry then expires as usual.
    refresh_claimed: bool,
}

/// Unwrapped KEK versions, bounded, least recently used evicted first. Keyed by name
/// first so the hot-path lookup borrows the name instead of allocating.
#[derive(Default)]
struct KekCache {
    entries: HashMap<String, BTreeMap<u32, (KeyMaterial, u64)>>,
    len: usize,
    tick: u64,
    capacity: usize,
}

impl KekCache {
    fn get(&mut self, name: &str, version: u32) -> Option<KeyMaterial> {
        self.tick += 1;
        let tick = self.tick;
        let (material, used) = self.entries.get_mut(name)?.get_mut(&version)?;
        *used = tick;
        Some(material.duplicate())
    }

    fn insert(&mut self, name: &str, version: u32, material: KeyMaterial) {
        if self.capacity == 0 {
            return;
        }
        self.remove(name, version);
        if self.len >= self.capacity {
            // O(n), but only on a miss with a full cache. Evicted material is zeroized
            // when dropped here.
            let oldest = self
                .entries
                .iter()
                .flat_map(|(n, vs)| vs.iter().map(move |(v, (_, used))| (*used, n, *v)))
                .min()
                .map(|(_, n, v)| (n.clone(), v));
            if let Some((n, v)) = oldest {
                self.remove(&n, v);
            }
        }
        self.tick += 1;
        self.entries.entry(name.to_owned()).or_default().insert(version, (material, self.tick));
        self.len += 1;
    }

    fn remove(&mut self, name: &str, version: u32) {
        if let Some(versions) = self.entries.get_mut(name) {
            if versions.remove(&version).is_some() {
                self.len -= 1;
            }
            if versions.is_empty() {
                self.entries.remove(name);
            }
        }
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// The KMS core.
pub struct Kms {
    store: Arc<dyn KeyStore>,
    root: RootKey,
    options: KmsOptions,
    records: Mutex<HashMap<String, CachedRecord>>,
    keks: Mutex<KekCache>,
    /// The issuing CA once loaded (one per keystore, never replaced).
    pub(crate) ca: Mutex<Option<Arc<crypto_core::pki::CertificateAuthority>>>,
    record_hits: std::sync::atomic::AtomicU64,
    record_misses: std::sync::atomic::AtomicU64,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Kms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kms").field("store", &self.store).field("root", &self.root.describe()).finish()
    }
}

/// Maps a root-key failure: a stored version that does not unwrap is the server's data
/// problem (internal); everything else means the root of trust cannot be used now.
fn root_error(e: RootKeyError) -> KmsError {
    match e {
        e @ (RootKeyError::UnwrapFailed { .. } | RootKeyError::WrongRoot(_) | RootKeyError::Corrupt(_)) => {
            KmsError::Internal(e.to_string())
        }
        other => KmsError::Unavailable(format!("root key: {other}")),
    }
}

/// When the key's current primary version becomes due for automatic rotation.
pub fn next_rotation_at(record: &KeyRecord) -> Option<i64> {
    let period = i64::try_from(record.rotation_period?).unwrap_or(i64::MAX);
    let primary = record.versions.iter().find(|v| v.version == record.primary_version)?;
    Some(primary.created_at.saturating_add(period))
}

/// Whether `record` is due for automatic rotation at `now`: enabled, with a rotation
/// period, and a primary version at least that old. Disabled keys and keys pending
/// deletion are not rotated.
fn rotation_due(record: &KeyRecord, now: i64) -> bool {
    record.state == KeyState::Enabled && next_rotation_at(record).is_some_and(|at| at <= now)
}

fn data_key_aad(name: &str, version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(name.len() + 6);
    aad.extend_from_slice(&(name.len() as u16).to_be_bytes());
    aad.extend_from_slice(name.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

impl Kms {
    /// A KMS over `store` with `root` wrapping KEK material at rest, default caches.
    pub fn new(store: Arc<dyn KeyStore>, root: impl Into<RootKey>) -> Self {
        Self::with_options(store, root, KmsOptions::default())
    }

    /// A KMS with explicit cache settings.
    pub fn with_options(store: Arc<dyn KeyStore>, root: impl Into<RootKey>, options: KmsOptions) -> Self {
        Self {
            store,
            root: root.into(),
            options,
            records: Mutex::new(HashMap::new()),
            keks: Mutex::new(KekCache { capacity: options.kek_cache_capacity, ..KekCache::default() }),
            ca: Mutex::new(None),
            record_hits: std::sync::atomic::AtomicU64::new(0),
            record_misses: std::sync::atomic::AtomicU64::new(0),
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses `clock` for every timestamp and lifecycle decision (creation times, deletion
    /// windows, rotation due dates) instead of the system clock: for tests and simulations.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The current time by this KMS's clock, Unix seconds.
    pub fn now(&self) -> i64 {
        i64::try_from(self.clock.now_unix()).unwrap_or(i64::MAX)
    }

    /// Key-record cache lookups so far: (hits, misses).
    pub fn cache_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.record_hits.load(Relaxed), self.record_misses.load(Relaxed))
    }

    /// The key name and version a ciphertext's header names for this sidecar (the entry
    /// it would unwrap), read from its first bytes without touching any key: what
    /// authorization checks before decrypting. `Truncated` if `prefix` ends inside the
    /// header.
    pub fn ciphertext_key(prefix: &[u8]) -> Result<(String, u32), KmsError> {
        Self::header_key(prefix)?.ok_or(KmsError::DecryptFailed)
    }

    /// [`Kms::ciphertext_key`], with `None` when `prefix` ends inside the header.
    pub fn header_key(prefix: &[u8]) -> Result<Option<(String, u32)>, KmsError> {
        let header = match crypto_core::envelope::Header::parse(prefix) {
            Ok((h, _)) => h,
            Err(EnvelopeError::Truncated) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let w =
            header.wrapped_keys().iter().find(|w| w.provider_id == PROVIDER_ID).ok_or_else(|| {
                KmsError::InvalidArgument("the ciphertext has no data key wrapped by this KMS".into())
            })?;
        Ok(Some((w.key_name.clone(), w.key_version)))
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// The root key.
    pub fn root(&self) -> &RootKey {
        &self.root
    }

    /// The cache settings.
    pub fn options(&self) -> &KmsOptions {
        &self.options
    }

    /// Number of unwrapped KEK versions currently cached.
    pub fn cached_kek_count(&self) -> usize {
        self.keks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Runs `f` with the store off limits: anything not in the caches makes it fail with
    /// [`KmsError::WouldBlock`] before any side effect, so the caller can run it again on a
    /// thread that may block. Only for read-only operations (encrypt, decrypt, data keys).
    pub fn cache_only<T>(&self, f: impl FnOnce(&Self) -> Result<T, KmsError>) -> Result<T, KmsError> {
        struct Reset(bool, bool);
        impl Drop for Reset {
            fn drop(&mut self) {
                CACHE_ONLY.with(|c| c.set(self.0));
                REFUSED.with(|c| c.set(self.1));
            }
        }
        let _reset = Reset(CACHE_ONLY.with(|c| c.replace(true)), REFUSED.with(|c| c.replace(false)));
        // Claims an earlier call left untaken: those records just expire.
        REFRESH_DUE.with(|due| due.borrow_mut().clear());
        let result = f(self);
        // Whatever error the refusal turned into on its way through crypto-core, the
        // operation was cut short by it: report that, so the caller retries off-thread.
        if REFUSED.with(Cell::get) {
            return Err(KmsError::WouldBlock);
        }
        result
    }

    fn store_allowed() -> Result<(), StoreError> {
        if CACHE_ONLY.with(Cell::get) {
            REFUSED.with(|c| c.set(true));
            return Err(StoreError::Backend(WOULD_BLOCK.into()));
        }
        Ok(())
    }

    fn envelope(&self) -> Envelope<&Self> {
        Envelope::new(self)
    }

    /// The key record, from the cache while younger than the TTL, else from the store.
    /// With `needs_version`, a cached record that does not know that version yet (rotated
    /// through another sidecar) is read again instead of failing with "not found".
    fn record(&self, name: &str, needs_version: Option<u32>) -> Result<Arc<KeyRecord>, StoreError> {
        let ttl = self.options.key_cache_ttl;
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = records.get_mut(name)
            && let age = entry.at.elapsed()
            && age < ttl
            && needs_version.is_none_or(|v| v <= entry.record.primary_version)
        {
            self.record_hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let record = entry.record.clone();
            if !entry.refresh_claimed && age >= ttl / 2 {
                // Refresh ahead of expiry, by this caller only.
                entry.refresh_claimed = true;
                drop(records);
                if CACHE_ONLY.with(Cell::get) {
                    REFRESH_DUE.with(|due| due.borrow_mut().push(name.to_owned()));
                } else {
                    self.refresh_record(name);
                }
            }
            return Ok(record);
        }
        drop(records);
        Self::store_allowed()?;
        self.record_misses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Taken before the read, so the entry never claims to be fresher than it is.
        let read_at = Instant::now();
        let record = self.store.get_key(name);
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        match record {
            Ok(record) => Ok(self.remember(&mut records, record, read_at)),
            Err(e) => {
                records.remove(name);
                Err(e)
            }
        }
    }

    /// Re-reads `name`'s record from the store into the cache: the refresh ahead of expiry
    /// that [`Kms::take_due_refreshes`] hands out (it is done inline by callers that may
    /// block). A failed read changes nothing: the cached record expires at its TTL, and the
    /// next use reads the store and reports the error as before.
    pub fn refresh_record(&self, name: &str) {
        if Self::store_allowed().is_err() {
            return;
        }
        self.record_misses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let read_at = Instant::now();
        if let Ok(record) = self.store.get_key(name) {
            let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
            let _ = self.remember(&mut records, record, read_at);
        }
    }

    /// The keys whose records a [`Kms::cache_only`] call on this thread claimed to refresh
    /// ahead of expiry (a store read it could not do itself). The caller runs
    /// [`Kms::refresh_record`] for each where it may block; one not taken is dropped at the
    /// thread's next `cache_only` call, and that record then simply expires.
    pub fn take_due_refreshes() -> Vec<String> {
        REFRESH_DUE.with(|due| std::mem::take(&mut *due.borrow_mut()))
    }

    /// Caches `record` (read or written at `at`) unless the cache already holds a newer
    /// state of the key (a slow read must not undo a write made meanwhile), and drops
    /// cached KEKs of versions it shows destroyed. Lock order: records, then keks.
    fn remember(&self, records: &mut HashMap<String, CachedRecord>, record: KeyRecord, at: Instant) -> Arc<KeyRecord> {
        self.forget_destroyed_keks(&record);
        if let Some(cached) = records.get(&record.name)
            && cached.record.row_version > record.row_version
        {
            return cached.record.clone();
        }
        let record = Arc::new(record);
        if self.options.key_cache_ttl.is_zero() {
            return record;
        }
        // Bound the map: records are small, but names are caller-chosen. Expired entries go
        // first; a map still full of live entries (more busy keys than the bound) restarts.
        if records.len() >= MAX_CACHED_RECORDS {
            records.retain(|_, e| e.at.elapsed() < self.options.key_cache_ttl);
            if records.len() >= MAX_CACHED_RECORDS {
                records.clear();
            }
        }
        records.insert(record.name.clone(), CachedRecord { record: record.clone(), at, refresh_claimed: false });
        record
    }

    /// Drops every cached KEK (zeroized on drop) and the cached CA, whose private key was
    /// unwrapped by the root key too: it is unwrapped again on next use.
    pub fn forget_all_keks(&self) {
        let mut keks = self.keks.lock().unwrap_or_else(|p| p.into_inner());
        let capacity = keks.capacity;
        *keks = KekCache { capacity, ..KekCache::default() };
        drop(keks);
        *self.ca.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn forget_destroyed_keks(&self, record: &KeyRecord) {
        let mut keks = self.keks.lock().unwrap_or_else(|p| p.into_inner());
        for v in record.versions.iter().filter(|v| v.wrapped_material.is_none()) {
            keks.remove(&record.name, v.version);
        }
    }

    fn remember_written(&self, record: KeyRecord) -> KeyRecord {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.remember(&mut records, record.clone(), Instant::now());
        record
    }

    /// The unwrapped material of `version` of `record`, from the cache or the root key.
    fn kek(&self, record: &KeyRecord, version: u32) -> Result<KeyMaterial, KmsError> {
        let name = &record.name;
        let stored = record
            .versions
            .iter()
            .find(|v| v.version == version)
            .ok_or_else(|| KeyError::VersionNotFound { name: name.clone(), version })?;
        let Some(wrapped) = &stored.wrapped_material else {
            // Destroyed: also drop any cached copy.
            self.keks.lock().unwrap_or_else(|p| p.into_inner()).remove(name, version);
            return Err(KeyError::VersionDestroyed { name: name.clone(), version }.into());
        };
        // A remote root of trust past its grace period (or refusing us) ends the use of
        // every cached KEK: fail closed.
        if let Err(e) = self.root.usable() {
            self.forget_all_keks();
            return Err(root_error(e));
        }
        if let Some(m) = self.keks.lock().unwrap_or_else(|p| p.into_inner()).get(name, version) {
            return Ok(m);
        }
        if self.root.is_remote() {
            // A network call: never on an async worker.
            Self::store_allowed()?;
        }
        let material = self.root.unwrap(name, version, wrapped).map_err(root_error)?;
        self.keks.lock().unwrap_or_else(|p| p.into_inner()).insert(name, version, material.duplicate());
        Ok(material)
    }

    fn usable(record: &KeyRecord) -> Result<(), KeyError> {
        let name = record.name.clone();
        match record.state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KeyError::Disabled { name }),
            KeyState::PendingDeletion { .. } => Err(KeyError::PendingDeletion { name }),
            _ => Err(KeyError::Destroyed { name }),
        }
    }

    /// Creates a key with a random version 1.
    pub fn create_key(&self, name: &str) -> Result<KeyInfo, KmsError> {
        validate_key_name(name)?;
        let material = KeyMaterial::generate();
        let wrapped = self.root.wrap(name, 1, &material).map_err(root_error)?;
        let record = self.store.create_key(name, &wrapped, self.now())?;
        tracing::info!(key = %name, "key created");
        Ok(self.remember_written(record))
    }

    /// Describes a key (always read from the store).
    pub fn describe_key(&self, name: &str) -> Result<KeyInfo, KmsError> {
        Ok(self.remember_written(self.store.get_key(name)?))
    }

    /// The key's record from the cache while younger than the key-cache TTL, else from
    /// the store; with `needs_version`, re-read if the cached record does not know it.
    pub fn key_record(&self, name: &str, needs_version: Option<u32>) -> Result<Arc<KeyRecord>, KmsError> {
        Ok(self.record(name, needs_version)?)
    }

    /// Checks that `name` is usable end to end: its record is read from the store (not the
    /// cache), the key must be enabled, and its primary version is unwrapped with the root
    /// key (not taken from the KEK cache). Returns the record. For health checks.
    pub fn check_key_health(&self, name: &str) -> Result<KeyRecord, KmsError> {
        let record = self.store.get_key(name)?;
        Self::usable(&record)?;
        let version = record.primary_version;
        let stored = record
            .versions
            .iter()
            .find(|v| v.version == version)
            .ok_or_else(|| KeyError::VersionNotFound { name: name.into(), version })?;
        let wrapped = stored
            .wrapped_material
            .as_ref()
            .ok_or_else(|| KeyError::VersionDestroyed { name: name.into(), version })?;
        if self.root.is_remote() {
            // A remote root: healthy while it is usable (reachable, or within its grace
            // period) and the primary version unwraps (from the cache, or through it).
            self.root.usable().map_err(root_error)?;
            drop(self.kek(&record, version)?);
        } else {
            drop(self.root.unwrap(name, version, wrapped).map_err(root_error)?);
        }
        Ok(self.remember_written(record))
    }

    /// Checks at start that the configured root key is the one the keystore was wrapped
    /// with: unwraps the newest live version of the first key that has one (nothing to
    /// check in an empty keystore). A wrong root key fails here, naming the key.
    pub fn verify_root(&self) -> Result<(), KmsError> {
        for key in self.store.list_keys()? {
            if let Some(v) = key.versions.iter().rev().find(|v| v.wrapped_material.is_some())
                && let Some(blob) = &v.wrapped_material
            {
                drop(self.root.unwrap(&key.name, v.version, blob).map_err(root_error)?);
                return Ok(());
            }
        }
        Ok(())
    }

    /// Probes a remote root key (see [`RootKey::probe`]) and drops every cached KEK once it
    /// is no longer usable. Returns whether it is usable.
    pub fn probe_root(&self) -> Result<(), KmsError> {
        let probed = self.root.probe();
        if let Err(e) = &probed {
            tracing::warn!(error = %e, "root key probe failed");
        }
        let usable = self.root.usable();
        if usable.is_err() {
            self.forget_all_keks();
        }
        usable.map_err(root_error)
    }

    /// Creates `name` unless it exists (another sidecar may create it at the same moment;
    /// either way the key exists afterwards). Returns its record and whether this call
    /// created it.
    pub fn ensure_key(&self, name: &str) -> Result<(KeyInfo, bool), KmsError> {
        match self.create_key(name) {
            Err(KmsError::AlreadyExists(_)) => Ok((self.describe_key(name)?, false)),
            other => Ok((other?, true)),
        }
    }

    /// Lists keys.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>, KmsError> {
        Ok(self.store.list_keys()?)
    }

    /// Read-modify-write with retries on concurrent updates.
    fn modify(&self, name: &str, f: impl Fn(&KeyRecord) -> Result<Change, KmsError>) -> Result<KeyInfo, KmsError> {
        for _ in 0..MAX_RETRIES {
            // Always the stored record: a cached one could be stale and lose every retry.
            let record = self.store.get_key(name)?;
            let result = match f(&record)? {
                Change::Update(u) => self.store.update_key(name, record.row_version, u),
                Change::AddVersion(material) => {
                    let last = record.versions.iter().map(|v| v.version).max().unwrap_or(0);
                    let version = last.checked_add(1).ok_or_else(|| {
                        KmsError::FailedPrecondition(format!("key {name:?} has version {last}, the last one"))
                    })?;
                    let wrapped = self.root.wrap(name, version, &material).map_err(root_error)?;
                    self.store.add_version(name, record.row_version, &wrapped, self.now())
                }
            };
            match result {
                Err(StoreError::Conflict(_)) => continue,
                other => {
                    let record = other?;
                    tracing::info!(
                        key = %record.name,
                        state = ?record.state,
                        primary_version = record.primary_version,
                        min_decrypt_version = record.min_decrypt_version,
                        "key updated"
                    );
                    return Ok(self.remember_written(record));
                }
            }
        }
        Err(KmsError::Aborted(format!("key {name:?} is being changed concurrently; retry")))
    }

    /// Adds a fresh version and makes it primary.
    pub fn rotate_key(&self, name: &str) -> Result<KeyInfo, KmsError> {
        self.modify(name, |r| {
            if matches!(r.state, KeyState::PendingDeletion { .. } | KeyState::Destroyed) {
                Self::usable(r)?;
            }
            Ok(Change::AddVersion(KeyMaterial::generate()))
        })
    }

    fn transition(
        &self,
        name: &str,
        allowed: impl Fn(KeyState) -> bool,
        to: impl Fn(&KeyRecord) -> KeyState,
    ) -> Result<KeyInfo, KmsError> {
        self.modify(name, |r| {
            if !allowed(r.state) {
                return Err(KmsError::FailedPrecondition(format!(
                    "key {name:?}: not allowed from state {:?}",
                    r.state
                )));
            }
            Ok(Change::Update(KeyUpdate { state: to(r), ..KeyUpdate::from(r) }))
        })
    }

    /// Enables a disabled key.
    pub fn enable_key(&self, name: &str) -> Result<KeyInfo, KmsError> {
        self.transition(name, |s| matches!(s, KeyState::Enabled | KeyState::Disabled), |_| KeyState::Enabled)
    }

    /// Disables an enabled key.
    pub fn disable_key(&self, name: &str) -> Result<KeyInfo, KmsError> {
        self.transition(name, |s| matches!(s, KeyState::Enabled | KeyState::Disabled), |_| KeyState::Disabled)
    }

    /// Schedules destruction after a waiting period of `window_seconds`: 7 to 30 days, or
    /// 0 for the default of 30 days. Until then the key is unusable but the deletion can be
    /// cancelled; afterwards the lifecycle job erases every version's material.
    pub fn schedule_key_deletion(&self, name: &str, window_seconds: u64) -> Result<KeyInfo, KmsError> {
        let window = if window_seconds == 0 { DEFAULT_DELETION_WINDOW_SECS } else { window_seconds };
        if !(MIN_DELETION_WINDOW_SECS..=MAX_DELETION_WINDOW_SECS).contains(&window) {
            return Err(KmsError::InvalidArgument(format!(
                "the deletion waiting period must be between 7 and 30 days ({MIN_DELETION_WINDOW_SECS} to \
                 {MAX_DELETION_WINDOW_SECS} seconds), or 0 for the default of 30 days; got {window_seconds} seconds"
            )));
        }
        let delete_after = (self.now() as u64).saturating_add(window);
        self.transition(
            name,
            |s| matches!(s, KeyState::Enabled | KeyState::Disabled),
            |_| KeyState::PendingDeletion { delete_after },
        )
    }

    /// Cancels a scheduled deletion (the key becomes disabled). Refused once the window
    /// has passed: the key is then due for destruction, whether or not the job has run.
    pub fn cancel_key_deletion(&self, name: &str) -> Result<KeyInfo, KmsError> {
        let now = self.now() as u64;
        self.transition(
            name,
            |s| matches!(s, KeyState::PendingDeletion { delete_after } if delete_after > now),
            |_| KeyState::Disabled,
        )
    }

    /// Destroys every key whose deletion window has passed by `now` (Unix seconds).
    ///
    /// First the key is marked DESTROYED, through the same compare-and-swap as every other
    /// change, and only if it is still pending deletion and due: a cancellation committed
    /// by another sidecar in the meantime wins and nothing is erased. Then the wrapped
    /// material of every version is erased. A crash in between leaves a destroyed key
    /// with material, which the next run finishes. A failure on one key is logged and the
    /// others proceed. Every run also drops cached KEKs of versions the store shows
    /// destroyed (by any sidecar), so shredded material does not linger in memory longer
    /// than one interval. Returns the names destroyed.
    pub fn purge_due_deletions(&self, now: i64) -> Result<Vec<String>, KmsError> {
        let mut destroyed = Vec::new();
        for key in self.store.list_keys()? {
            self.forget_destroyed_keks(&key);
            let has_material = key.versions.iter().any(|v| v.wrapped_material.is_some());
            let due = match key.state {
                KeyState::PendingDeletion { delete_after } => delete_after as i64 <= now,
                KeyState::Destroyed => has_material,
                _ => false,
            };
            if !due {
                continue;
            }
            match self.destroy_key(&key.name, now) {
                Ok(true) => {
                    tracing::info!(key = %key.name, versions = key.versions.len(), "key destroyed after its deletion window");
                    destroyed.push(key.name);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(key = %key.name, error = %e, "destroying key failed; retrying at the next run")
                }
            }
        }
        Ok(destroyed)
    }

    /// Marks `name` destroyed if it is pending deletion and due (or already destroyed), then
    /// erases all its material. `Ok(false)`: no longer due (deletion cancelled meanwhile).
    fn destroy_key(&self, name: &str, now: i64) -> Result<bool, KmsError> {
        let marked = self.modify(name, |r| match r.state {
            KeyState::PendingDeletion { delete_after } if delete_after as i64 <= now => {
                Ok(Change::Update(KeyUpdate { state: KeyState::Destroyed, ..KeyUpdate::from(r) }))
            }
            // Finishing an earlier run: rewrite the same state (bumps nothing else).
            KeyState::Destroyed => Ok(Change::Update(KeyUpdate::from(r))),
            _ => Err(KmsError::FailedPrecondition(format!("key {name:?} is no longer due for deletion"))),
        });
        let record = match marked {
            Ok(r) => r,
            Err(KmsError::FailedPrecondition(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        for v in record.versions.iter().filter(|v| v.wrapped_material.is_some()) {
            self.remember_written(self.store.destroy_version(name, v.version, now)?);
        }
        Ok(true)
    }

    /// Sets (or with `None` clears) the automatic rotation period: once the primary version
    /// is `period_seconds` old, the lifecycle job adds a new primary version. 1 hour to 100
    /// years. Refused for destroyed keys.
    pub fn set_rotation_period(&self, name: &str, period_seconds: Option<u64>) -> Result<KeyInfo, KmsError> {
        if let Some(p) = period_seconds
            && !(MIN_ROTATION_PERIOD_SECS..=MAX_ROTATION_PERIOD_SECS).contains(&p)
        {
            return Err(KmsError::InvalidArgument(format!(
                "the rotation period must be between 1 hour and 100 years ({MIN_ROTATION_PERIOD_SECS} to \
                 {MAX_ROTATION_PERIOD_SECS} seconds); got {p} seconds"
            )));
        }
        self.modify(name, |r| {
            if r.state == KeyState::Destroyed {
                Self::usable(r)?;
            }
            Ok(Change::Update(KeyUpdate { rotation_period: period_seconds, ..KeyUpdate::from(r) }))
        })
    }

    /// Rotates every enabled key whose primary version is at least its rotation period old
    /// by `now` (Unix seconds), and returns `(name, new primary version)` of each.
    ///
    /// The due check is repeated on the freshly read record inside the compare-and-swap, so
    /// several sidecars running this job at once against one database rotate a due key
    /// exactly once: the losers see the new primary and find nothing due. A failure on one
    /// key is logged and the others proceed.
    pub fn rotate_due_keys(&self, now: i64) -> Result<Vec<(String, u32)>, KmsError> {
        let mut rotated = Vec::new();
        for key in self.store.list_keys()? {
            if !rotation_due(&key, now) {
                continue;
            }
            let result = self.modify(&key.name, |r| {
                if !rotation_due(r, now) {
                    return Err(KmsError::FailedPrecondition(NOT_DUE.into()));
                }
                Ok(Change::AddVersion(KeyMaterial::generate()))
            });
            match result {
                Ok(r) => {
                    tracing::info!(key = %r.name, primary_version = r.primary_version, "key rotated by its rotation period");
                    rotated.push((r.name.clone(), r.primary_version));
                }
                Err(KmsError::FailedPrecondition(m)) if m == NOT_DUE => {}
                Err(e) => {
                    tracing::warn!(key = %key.name, error = %e, "automatic rotation failed; retrying at the next run")
                }
            }
        }
        Ok(rotated)
    }

    /// Sets the minimum decryption version.
    pub fn set_min_decrypt_version(&self, name: &str, min: u32) -> Result<KeyInfo, KmsError> {
        self.modify(name, |r| {
            if min == 0 || min > r.primary_version {
                return Err(KmsError::InvalidArgument(format!(
                    "min_decrypt_version must be between 1 and the primary version {}",
                    r.primary_version
                )));
            }
            Ok(Change::Update(KeyUpdate { min_decrypt_version: min, ..KeyUpdate::from(r) }))
        })
    }

    /// Encrypts `plaintext` under `key_name` (compact envelope form).
    pub fn encrypt(
        &self,
        key_name: &str,
        plaintext: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<(Vec<u8>, u32), KmsError> {
        validate_key_name(key_name)?;
        let ctx = EncryptionContext::from(context.clone());
        // The sealer knows the version it wraps under: no need to parse the result again.
        let sealer = self.envelope().sealer(key_name, &ctx, crypto_core::envelope::Form::Compact)?;
        let version = sealer.header().key_version();
        Ok((sealer.seal(plaintext)?, version))
    }

    /// Decrypts a ciphertext from [`Kms::encrypt`]; returns plaintext, key name, version.
    pub fn decrypt(
        &self,
        ciphertext: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<(crypto_core::secret::SecretBytes, String, u32), KmsError> {
        let ctx = EncryptionContext::from(context.clone());
        // The entry this KMS unwraps (not necessarily the header's first).
        let (key_name, key_version) = Self::ciphertext_key(ciphertext)?;
        let plaintext = self.envelope().open(&ctx, ciphertext)?;
        Ok((crypto_core::secret::SecretBytes::new(plaintext), key_name, key_version))
    }

    /// A sealer for a new stream-form message under `key_name` (for streaming encryption:
    /// feed it to [`crypto_core::envelope::EncryptingWriter`]).
    pub fn stream_sealer(
        &self,
        key_name: &str,
        context: &BTreeMap<String, String>,
    ) -> Result<crypto_core::envelope::MessageSealer, KmsError> {
        validate_key_name(key_name)?;
        let ctx = EncryptionContext::from(context.clone());
        let form = crypto_core::envelope::Form::Stream { segment_size: self.envelope().options().segment_size };
        Ok(self.envelope().sealer(key_name, &ctx, form)?)
    }

    /// A reader that opens a stream-form message from `input`, one authenticated segment at
    /// a time (reads the header and unwraps its data key first). The error is the
    /// envelope's own, so a caller can tell its reader's I/O errors apart; it converts
    /// into [`KmsError`].
    pub fn decrypting_reader<R: std::io::Read>(
        &self,
        input: R,
        context: &BTreeMap<String, String>,
    ) -> Result<crypto_core::envelope::DecryptingReader<R>, EnvelopeError> {
        let ctx = EncryptionContext::from(context.clone());
        self.envelope().decrypting_reader(input, &ctx)
    }

    /// Re-wraps a ciphertext's data key under its key's primary version.
    ///
    /// The header's first wrapped key must be this KMS's: that is the entry re-wrapping
    /// replaces, and the one authorization checked (an entry of another provider placed
    /// first could otherwise redirect the re-wrap to any key).
    pub fn re_encrypt(&self, ciphertext: &[u8]) -> Result<(Vec<u8>, u32, u32), KmsError> {
        let header = self.envelope().inspect(ciphertext)?;
        if header.wrapped_keys().first().is_none_or(|w| w.provider_id != PROVIDER_ID) {
            return Err(KmsError::InvalidArgument(
                "ReEncrypt needs a ciphertext whose first wrapped key is this KMS's".into(),
            ));
        }
        let before = header.key_version();
        let out = self.envelope().rewrap(ciphertext)?;
        let after = self.envelope().inspect(&out)?.key_version();
        Ok((out, before, after))
    }

    /// A fresh data key wrapped under `key_name`.
    pub fn generate_data_key(&self, key_name: &str) -> Result<(DataKey, WrappedKey), KmsError> {
        let g = KeyProvider::generate_data_key(self, key_name)?;
        let wrapped = g.wrapped.into_iter().next().ok_or_else(|| KmsError::Internal("no wrapped key".into()))?;
        Ok((g.data_key, wrapped))
    }

    /// Unwraps a data key made by [`Kms::generate_data_key`].
    pub fn decrypt_data_key(&self, wrapped: &WrappedKey) -> Result<DataKey, KmsError> {
        Ok(KeyProvider::unwrap(self, std::slice::from_ref(wrapped))?)
    }

    /// Re-wraps a data key under the primary version of its key, inside the server.
    pub fn re_encrypt_data_key(&self, wrapped: &WrappedKey) -> Result<WrappedKey, KmsError> {
        let dk = self.decrypt_data_key(wrapped)?;
        let mut out = KeyProvider::wrap(self, &wrapped.key_name, &dk)?;
        out.pop().ok_or_else(|| KmsError::Internal("no wrapped key".into()))
    }

    fn secret_context(name: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("kms-secret".to_owned(), name.to_owned())])
    }

    /// Stores a new version of secret `name` sealed under `key_name`.
    pub fn put_secret(&self, name: &str, key_name: &str, value: &[u8]) -> Result<u32, KmsError> {
        validate_key_name(name).map_err(|e| KmsError::InvalidArgument(format!("secret name: {e}")))?;
        let (ct, _) = self.encrypt(key_name, value, &Self::secret_context(name))?;
        Ok(self.store.put_secret(name, key_name, &ct, self.now())?)
    }

    /// Reads and decrypts a secret (newest version when `version` is None).
    pub fn get_secret(&self, name: &str, version: Option<u32>) -> Result<SecretValue, KmsError> {
        let rec = self.store.get_secret(name, version)?;
        let (value, _, _) = self.decrypt(&rec.ciphertext, &Self::secret_context(name))?;
        Ok(SecretValue { value, version: rec.version, key_name: rec.key_name, created_at: rec.created_at })
    }

    /// Lists secrets.
    pub fn list_secrets(&self) -> Result<Vec<crate::keystore::SecretSummary>, KmsError> {
        Ok(self.store.list_secrets()?)
    }

    /// Deletes a secret.
    pub fn delete_secret(&self, name: &str) -> Result<(), KmsError> {
        Ok(self.store.delete_secret(name)?)
    }
}

enum Change {
    Update(KeyUpdate),
    AddVersion(KeyMaterial),
}

fn store_err(e: StoreError) -> ProviderError {
    match e {
        StoreError::NotFound(what) => ProviderError::Key(KeyError::NotFound { name: what }),
        other => ProviderError::Unavailable(other.to_string()),
    }
}

fn kms_to_provider(e: KmsError) -> ProviderError {
    match e {
        KmsError::WouldBlock => ProviderError::Unavailable(WOULD_BLOCK.into()),
        KmsError::Unavailable(m) => ProviderError::Unavailable(m),
        other => ProviderError::Config(other.to_string()),
    }
}

impl KeyProvider for Kms {
    fn wrap(&self, key_name: &str, data_key: &DataKey) -> Result<Vec<WrappedKey>, ProviderError> {
        let record = self.record(key_name, None).map_err(|e| match e {
            StoreError::NotFound(_) => ProviderError::Key(KeyError::NotFound { name: key_name.into() }),
            other => store_err(other),
        })?;
        Self::usable(&record)?;
        let version = record.primary_version;
        let kek = match self.kek(&record, version) {
            Ok(k) => k,
            Err(KmsError::FailedPrecondition(_)) => {
                return Err(KeyError::VersionDestroyed { name: key_name.into(), version }.into());
            }
            Err(e) => return Err(kms_to_provider(e)),
        };
        let blob = crypto_core::keywrap::wrap(
            Backend::AwsLc,
            kek.expose_secret(),
            DATA_KEY_LABEL,
            &data_key_aad(key_name, version),
            data_key.expose_secret(),
        );
        Ok(vec![WrappedKey { provider_id: PROVIDER_ID.into(), key_name: key_name.into(), key_version: version, blob }])
    }

    fn unwrap(&self, wrapped: &[WrappedKey]) -> Result<DataKey, ProviderError> {
        let w = wrapped
            .iter()
            .find(|w| w.provider_id == PROVIDER_ID)
            .ok_or_else(|| ProviderError::NoMatchingProvider(PROVIDER_ID.into()))?;
        let record = self.record(&w.key_name, Some(w.key_version)).map_err(|e| match e {
            StoreError::NotFound(_) => ProviderError::Key(KeyError::NotFound { name: w.key_name.clone() }),
            other => store_err(other),
        })?;
        Self::usable(&record)?;
        if w.key_version < record.min_decrypt_version {
            return Err(KeyError::BelowMinDecryptVersion {
                name: w.key_name.clone(),
                version: w.key_version,
                min: record.min_decrypt_version,
            }
            .into());
        }
        let kek = match self.kek(&record, w.key_version) {
            Ok(k) => k,
            Err(KmsError::NotFound(_)) => {
                return Err(KeyError::VersionNotFound { name: w.key_name.clone(), version: w.key_version }.into());
            }
            Err(KmsError::FailedPrecondition(_)) => {
                return Err(KeyError::VersionDestroyed { name: w.key_name.clone(), version: w.key_version }.into());
            }
            Err(e) => return Err(kms_to_provider(e)),
        };
        let key = crypto_core::keywrap::unwrap(
            Backend::AwsLc,
            kek.expose_secret(),
            DATA_KEY_LABEL,
            &data_key_aad(&w.key_name, w.key_version),
            &w.blob,
        )
        .ok_or(ProviderError::UnwrapFailed)?;
        Ok(DataKey::from_bytes(*key))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn kms_with_ttl(dir: &std::path::Path, ttl: Duration) -> Kms {
        let store = Arc::new(crate::keystore::SqliteStore::open(dir.join("keystore.db")).unwrap());
        let root = crate::root_key::LocalRootKey::load_or_create(dir.join("root.key"), true).unwrap();
        Kms::with_options(store, root, KmsOptions { key_cache_ttl: ttl, ..KmsOptions::default() })
    }

    fn cached_lookup(kms: &Kms) -> Result<(), KmsError> {
        kms.cache_only(|k| k.key_record("k", None).map(drop))
    }

    /// A key in use never expires: in the second half of its TTL exactly one caller is
    /// handed the re-read (the others keep the cached record), and once it is done the
    /// record is served past the old expiry. Before, every request in the gap between
    /// expiry and refill left the fast path.
    #[test]
    fn busy_key_record_is_refreshed_ahead_of_expiry_by_one_caller() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(2);
        let kms = kms_with_ttl(dir.path(), ttl);
        kms.create_key("k").unwrap(); // cached by the write
        cached_lookup(&kms).unwrap();
        assert!(Kms::take_due_refreshes().is_empty(), "a fresh record needs no refresh");

        std::thread::sleep(ttl / 2 + Duration::from_millis(100));
        cached_lookup(&kms).unwrap();
        assert_eq!(Kms::take_due_refreshes(), vec!["k".to_owned()]);
        cached_lookup(&kms).unwrap();
        assert!(Kms::take_due_refreshes().is_empty(), "single flight: the refresh is claimed");

        let (_, misses) = kms.cache_stats();
        kms.refresh_record("k");
        assert_eq!(kms.cache_stats().1, misses + 1, "one store read");
        std::thread::sleep(ttl / 2);
        // Past the first read's TTL: served only because the refresh renewed it.
        cached_lookup(&kms).unwrap();
    }

    /// Without the refresh (the claimed caller never ran it, or the read failed) the
    /// record expires at its TTL as before: the propagation bound does not move.
    #[test]
    fn unrefreshed_key_record_expires_at_its_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_millis(400);
        let kms = kms_with_ttl(dir.path(), ttl);
        kms.create_key("k").unwrap();
        std::thread::sleep(ttl / 2 + Duration::from_millis(50));
        let _ = cached_lookup(&kms);
        drop(Kms::take_due_refreshes());
        std::thread::sleep(ttl / 2 + Duration::from_millis(50));
        assert!(matches!(cached_lookup(&kms), Err(KmsError::WouldBlock)));
        // Outside cache-only mode the caller reads the store and the cache is warm again.
        kms.key_record("k", None).unwrap();
        cached_lookup(&kms).unwrap();
    }

    /// Found with the `keystore_records` fuzz target: a stored version `u32::MAX` (damaged
    /// data; four billion rotations otherwise) made rotation overflow the next version
    /// number (a panic where overflow checks are on, RotateKey and the lifecycle job).
    #[test]
    fn rotating_past_the_last_version_number_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore.db");
        let store = Arc::new(crate::keystore::SqliteStore::open(&path).unwrap());
        let root = crate::root_key::LocalRootKey::load_or_create(dir.path().join("root.key"), true).unwrap();
        let kms = Kms::new(store, root);
        kms.create_key("k").unwrap();
        let wrapped = kms.root().wrap("k", u32::MAX, &KeyMaterial::generate()).unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO key_versions (key_name, version, wrapped_material, created_at) VALUES ('k', ?1, ?2, 0)",
            rusqlite::params![i64::from(u32::MAX), wrapped],
        )
        .unwrap();
        let err = kms.rotate_key("k").unwrap_err();
        assert!(matches!(&err, KmsError::FailedPrecondition(m) if m.contains("the last one")), "{err:?}");
        assert_eq!(kms.describe_key("k").unwrap().versions.len(), 2, "nothing added");
    }
}
