//! Data-key cache: reuse one data key for many messages, within bounds.
//!
//! [`CachingProvider`] wraps any [`KeyProvider`]. On the sealing side it hands out the same
//! data key (and its wrapped forms) for up to `max_age`, `max_messages` messages and
//! `max_bytes` plaintext bytes, whichever comes first; each message still derives its own
//! key from a fresh salt, so reuse never repeats a (key, nonce) pair. On the opening side
//! it remembers unwrapped data keys so that records sharing a data key cost one unwrap.
//!
//! **Refresh-ahead**: once an entry has used `refresh_at` (e.g. 75 %) of any budget, the
//! first caller to notice schedules a replacement (on a background thread by default)
//! while every caller keeps using the still-valid entry, so an expiring entry never makes
//! callers wait for the provider. Evicted entries are zeroized.
//!
//! **Key changes**: every entry records the provider's [`KeyProvider::epoch`] when it was
//! made; an entry from an older epoch is never used. With a [`crate::provider::LocalProvider`]
//! that means a rotation, disable, deletion, destroyed version or min-decrypt change takes
//! effect on the very next call. Providers that cannot observe changes (epoch always 0)
//! are bounded by `max_age` only: call [`CachingProvider::clear`] after changing keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::provider::{GeneratedDataKey, KeyProvider, ProviderError, WrappedKey};
use crate::secret::DataKey;

/// Bounds of the data-key cache.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CacheLimits {
    /// Longest time one data key is used for sealing, and kept for opening.
    pub max_age: Duration,
    /// Most messages sealed under one data key.
    pub max_messages: u64,
    /// Most plaintext bytes sealed under one data key.
    pub max_bytes: u64,
    /// Fraction (0 < f < 1) of any budget after which a replacement is fetched ahead;
    /// 1.0 turns refresh-ahead off.
    pub refresh_at: f64,
    /// Most entries on each side (seal, open); the oldest is evicted beyond it.
    pub max_entries: usize,
    /// Where refresh-ahead runs.
    pub refresh: RefreshMode,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(300),
            max_messages: 1 << 20,
            max_bytes: 1 << 36,
            refresh_at: 0.75,
            max_entries: 1024,
            refresh: RefreshMode::Background,
        }
    }
}

/// Where a refresh-ahead replacement is fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshMode {
    /// On a short-lived background thread; no caller waits.
    Background,
    /// On the caller that crossed the threshold (deterministic; for tests and for
    /// environments without threads). Other callers still do not wait.
    Inline,
}

/// Counters (for metrics). Plain numbers; no key material.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Seal-side lookups served from the cache.
    pub seal_hits: u64,
    /// Seal-side lookups that had to generate a data key.
    pub seal_misses: u64,
    /// Open-side lookups served from the cache.
    pub open_hits: u64,
    /// Open-side lookups that had to unwrap.
    pub open_misses: u64,
    /// Refresh-ahead replacements installed.
    pub refreshes: u64,
}

struct SealEntry {
    epoch: u64,
    data_key: DataKey,
    wrapped: Vec<WrappedKey>,
    created: Duration,
    messages: u64,
    bytes: u64,
    refreshing: bool,
}

struct OpenEntry {
    epoch: u64,
    data_key: DataKey,
    created: Duration,
}

struct Inner<P> {
    provider: P,
    limits: CacheLimits,
    clock: Arc<dyn Clock>,
    seal: Mutex<HashMap<String, SealEntry>>,
    open: Mutex<HashMap<Vec<WrappedKey>, OpenEntry>>,
    counters: [AtomicU64; 5],
}

/// A [`KeyProvider`] that caches data keys in front of another provider.
pub struct CachingProvider<P> {
    inner: Arc<Inner<P>>,
}

impl<P> Clone for CachingProvider<P> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<P: std::fmt::Debug> std::fmt::Debug for CachingProvider<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingProvider")
            .field("provider", &self.inner.provider)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

const SEAL_HITS: usize = 0;
const SEAL_MISSES: usize = 1;
const OPEN_HITS: usize = 2;
const OPEN_MISSES: usize = 3;
const REFRESHES: usize = 4;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold whole entries swapped in and out; a panic elsewhere cannot leave one
    // half-updated, so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<P: KeyProvider + 'static> CachingProvider<P> {
    /// A cache with `limits` in front of `provider`, on the system clock.
    pub fn new(provider: P, limits: CacheLimits) -> Self {
        Self::with_clock(provider, limits, Arc::new(SystemClock))
    }

    /// A cache reading time from `clock` (tests inject a [`crate::clock::ManualClock`]).
    pub fn with_clock(provider: P, limits: CacheLimits, clock: Arc<dyn Clock>) -> Self {
        let limits = CacheLimits {
            refresh_at: if limits.refresh_at > 0.0 && limits.refresh_at <= 1.0 { limits.refresh_at } else { 1.0 },
            max_entries: limits.max_entries.max(1),
            ..limits
        };
        Self {
            inner: Arc::new(Inner {
                provider,
                limits,
                clock,
                seal: Mutex::new(HashMap::new()),
                open: Mutex::new(HashMap::new()),
                counters: Default::default(),
            }),
        }
    }

    /// The provider behind the cache.
    pub fn provider(&self) -> &P {
        &self.inner.provider
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let c = |i: usize| self.inner.counters[i].load(Ordering::Relaxed);
        CacheStats {
            seal_hits: c(SEAL_HITS),
            seal_misses: c(SEAL_MISSES),
            open_hits: c(OPEN_HITS),
            open_misses: c(OPEN_MISSES),
            refreshes: c(REFRESHES),
        }
    }

    /// Drops (and zeroizes) every cached data key, e.g. after a key was disabled or a
    /// version destroyed, so that no cached copy outlives the change.
    pub fn clear(&self) {
        lock(&self.inner.seal).clear();
        lock(&self.inner.open).clear();
    }

    fn count(&self, i: usize) {
        self.inner.counters[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Removes the oldest entry when `map` is full (the removed data key is zeroized on drop).
fn evict_oldest<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    max: usize,
    created: impl Fn(&V) -> Duration,
) {
    if map.len() >= max
        && let Some(oldest) = map.iter().min_by_key(|(_, e)| created(e)).map(|(k, _)| k.clone())
    {
        map.remove(&oldest);
    }
}

impl<P: KeyProvider + 'static> Inner<P> {
    /// Whether an entry may still seal a message of `len` more bytes.
    fn usable(&self, e: &SealEntry, now: Duration, len: u64, epoch: u64) -> bool {
        e.epoch == epoch
            && now.saturating_sub(e.created) < self.limits.max_age
            && e.messages < self.limits.max_messages
            && e.bytes.saturating_add(len) <= self.limits.max_bytes
    }

    /// Whether an entry has used `refresh_at` of any budget.
    fn due_for_refresh(&self, e: &SealEntry, now: Duration) -> bool {
        let f = self.limits.refresh_at;
        f < 1.0
            && (now.saturating_sub(e.created).as_secs_f64() >= self.limits.max_age.as_secs_f64() * f
                || e.messages as f64 >= self.limits.max_messages as f64 * f
                || e.bytes as f64 >= self.limits.max_bytes as f64 * f)
    }

    fn insert_seal(&self, key_name: &str, entry: SealEntry) {
        let mut map = lock(&self.seal);
        if !map.contains_key(key_name) {
            evict_oldest(&mut map, self.limits.max_entries, |e| e.created);
        }
        map.insert(key_name.to_owned(), entry);
    }

    fn refresh(&self, key_name: &str) {
        let epoch = self.provider.epoch();
        match self.provider.generate_data_key(key_name) {
            Ok(g) => {
                let entry = SealEntry {
                    epoch,
                    data_key: g.data_key,
                    wrapped: g.wrapped,
                    created: self.clock.now(),
                    messages: 0,
                    bytes: 0,
                    refreshing: false,
                };
                self.insert_seal(key_name, entry);
                self.counters[REFRESHES].fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                // Leave the old entry in place (it is still within its hard limits) and let
                // a later caller try again; once it expires, callers see the error directly.
                if let Some(e) = lock(&self.seal).get_mut(key_name) {
                    e.refreshing = false;
                }
            }
        }
    }
}

impl<P: KeyProvider + 'static> KeyProvider for CachingProvider<P> {
    fn epoch(&self) -> u64 {
        self.inner.provider.epoch()
    }

    fn wrap(&self, key_name: &str, data_key: &DataKey) -> Result<Vec<WrappedKey>, ProviderError> {
        self.inner.provider.wrap(key_name, data_key)
    }

    fn unwrap(&self, wrapped: &[WrappedKey]) -> Result<DataKey, ProviderError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let epoch = inner.provider.epoch();
        {
            let mut map = lock(&inner.open);
            if let Some(e) = map.get(wrapped) {
                if e.epoch == epoch && now.saturating_sub(e.created) < inner.limits.max_age {
                    self.count(OPEN_HITS);
                    return Ok(e.data_key.duplicate());
                }
                map.remove(wrapped);
            }
        }
        self.count(OPEN_MISSES);
        let data_key = inner.provider.unwrap(wrapped)?;
        let mut map = lock(&inner.open);
        evict_oldest(&mut map, inner.limits.max_entries, |e| e.created);
        map.insert(wrapped.to_vec(), OpenEntry { epoch, data_key: data_key.duplicate(), created: now });
        Ok(data_key)
    }

    fn generate_data_key(&self, key_name: &str) -> Result<GeneratedDataKey, ProviderError> {
        self.inner.provider.generate_data_key(key_name)
    }

    fn data_key_for_message(
        &self,
        key_name: &str,
        plaintext_len: Option<u64>,
    ) -> Result<GeneratedDataKey, ProviderError> {
        // A message of unknown length could exceed any byte budget: it gets its own key.
        let Some(len) = plaintext_len else {
            return self.inner.provider.generate_data_key(key_name);
        };
        let inner = &self.inner;
        let now = inner.clock.now();
        let epoch = inner.provider.epoch();
        let mut start_refresh = false;
        let hit = {
            let mut map = lock(&inner.seal);
            match map.get_mut(key_name) {
                Some(e) if inner.usable(e, now, len, epoch) => {
                    e.messages += 1;
                    e.bytes = e.bytes.saturating_add(len);
                    if !e.refreshing && inner.due_for_refresh(e, now) {
                        e.refreshing = true;
                        start_refresh = true;
                    }
                    Some(GeneratedDataKey { data_key: e.data_key.duplicate(), wrapped: e.wrapped.clone() })
                }
                Some(_) => {
                    map.remove(key_name);
                    None
                }
                None => None,
            }
        };
        if let Some(g) = hit {
            self.count(SEAL_HITS);
            if start_refresh {
                match inner.limits.refresh {
                    RefreshMode::Inline => inner.refresh(key_name),
                    RefreshMode::Background => {
                        let inner = self.inner.clone();
                        let name = key_name.to_owned();
                        let spawned = std::thread::Builder::new()
                            .name("cryptocore-cache-refresh".into())
                            .spawn(move || inner.refresh(&name));
                        if spawned.is_err() {
                            self.inner.refresh(key_name);
                        }
                    }
                }
            }
            return Ok(g);
        }
        self.count(SEAL_MISSES);
        let g = inner.provider.generate_data_key(key_name)?;
        inner.insert_seal(
            key_name,
            SealEntry {
                epoch,
                data_key: g.data_key.duplicate(),
                wrapped: g.wrapped.clone(),
                created: now,
                messages: 1,
                bytes: len,
                refreshing: false,
            },
        );
        Ok(g)
    }
}
