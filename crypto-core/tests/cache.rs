//! The data-key cache: bounds by age, messages and bytes; refresh-ahead; open-side reuse.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crypto_core::cache::{CacheLimits, CachingProvider, RefreshMode};
use crypto_core::clock::ManualClock;
use crypto_core::envelope::{EncryptionContext, Envelope};
use crypto_core::keys::Keyring;
use crypto_core::provider::{GeneratedDataKey, KeyProvider, LocalProvider, ProviderError, WrappedKey};
use crypto_core::secret::DataKey;

/// Counts calls into the real local provider.
#[derive(Debug)]
struct Counting {
    inner: LocalProvider,
    generated: AtomicUsize,
    unwrapped: AtomicUsize,
}

impl KeyProvider for Counting {
    fn wrap(&self, key_name: &str, dk: &DataKey) -> Result<Vec<WrappedKey>, ProviderError> {
        self.inner.wrap(key_name, dk)
    }
    fn unwrap(&self, wrapped: &[WrappedKey]) -> Result<DataKey, ProviderError> {
        self.unwrapped.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap(wrapped)
    }
    fn generate_data_key(&self, key_name: &str) -> Result<GeneratedDataKey, ProviderError> {
        self.generated.fetch_add(1, Ordering::SeqCst);
        self.inner.generate_data_key(key_name)
    }
}

fn setup(limits: CacheLimits) -> (Arc<ManualClock>, Arc<Counting>, Envelope<CachingProvider<Arc<Counting>>>) {
    let ring = Arc::new(Keyring::in_memory());
    ring.create_key("k").unwrap();
    let counting = Arc::new(Counting {
        inner: LocalProvider::new(ring),
        generated: AtomicUsize::new(0),
        unwrapped: AtomicUsize::new(0),
    });
    let clock = Arc::new(ManualClock::new(Duration::from_secs(1000)));
    let cache = CachingProvider::with_clock(counting.clone(), limits, clock.clone());
    (clock, counting, Envelope::new(cache))
}

fn limits() -> CacheLimits {
    CacheLimits {
        max_age: Duration::from_secs(100),
        max_messages: 10,
        max_bytes: 1000,
        refresh_at: 1.0,
        max_entries: 8,
        refresh: RefreshMode::Inline,
    }
}

fn data_key_of(env: &Envelope<CachingProvider<Arc<Counting>>>, ct: &[u8]) -> Vec<WrappedKey> {
    env.inspect(ct).unwrap().wrapped_keys().to_vec()
}

#[test]
fn reuses_within_message_limit_then_renews() {
    let (_, counting, env) = setup(limits());
    let ctx = EncryptionContext::new();
    let first = env.seal_compact("k", &ctx, b"a").unwrap();
    for _ in 0..9 {
        let ct = env.seal_compact("k", &ctx, b"a").unwrap();
        assert_eq!(data_key_of(&env, &ct), data_key_of(&env, &first), "same data key within budget");
        assert_ne!(ct, first, "but every message differs (fresh salt)");
    }
    assert_eq!(counting.generated.load(Ordering::SeqCst), 1);
    let eleventh = env.seal_compact("k", &ctx, b"a").unwrap();
    assert_ne!(data_key_of(&env, &eleventh), data_key_of(&env, &first), "11th message gets a new key");
    assert_eq!(counting.generated.load(Ordering::SeqCst), 2);
    let s = env.provider().stats();
    assert_eq!((s.seal_hits, s.seal_misses), (9, 2));
}

#[test]
fn expires_by_age_and_by_bytes() {
    let (clock, counting, env) = setup(limits());
    let ctx = EncryptionContext::new();
    let a = env.seal_compact("k", &ctx, &[0; 10]).unwrap();
    clock.advance(Duration::from_secs(99));
    let b = env.seal_compact("k", &ctx, &[0; 10]).unwrap();
    assert_eq!(data_key_of(&env, &a), data_key_of(&env, &b));
    clock.advance(Duration::from_secs(1));
    let c = env.seal_compact("k", &ctx, &[0; 10]).unwrap();
    assert_ne!(data_key_of(&env, &a), data_key_of(&env, &c), "age limit reached");
    // Bytes: 980 more fit in the 1000-byte budget of c's entry (10 used), 981 do not.
    let d = env.seal_compact("k", &ctx, &vec![0; 990]).unwrap();
    assert_eq!(data_key_of(&env, &c), data_key_of(&env, &d));
    let e = env.seal_compact("k", &ctx, &[0; 1]).unwrap();
    assert_ne!(data_key_of(&env, &d), data_key_of(&env, &e), "byte limit reached");
    assert_eq!(counting.generated.load(Ordering::SeqCst), 3);
}

#[test]
fn unknown_length_streams_get_their_own_key() {
    let (_, counting, env) = setup(limits());
    let ctx = EncryptionContext::new();
    for _ in 0..3 {
        let w = env.encrypting_writer(Vec::new(), "k", &ctx).unwrap();
        w.finish().unwrap();
    }
    assert_eq!(counting.generated.load(Ordering::SeqCst), 3);
}

#[test]
fn refresh_ahead_replaces_before_expiry_without_failing_callers() {
    let (clock, counting, env) = setup(CacheLimits { refresh_at: 0.5, ..limits() });
    let ctx = EncryptionContext::new();
    let a = env.seal_compact("k", &ctx, b"x").unwrap();
    clock.advance(Duration::from_secs(49));
    let b = env.seal_compact("k", &ctx, b"x").unwrap();
    assert_eq!(counting.generated.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_secs(1));
    // At 50 % of max_age: this caller is served from the old entry, and a replacement is
    // installed (inline mode) for the next caller.
    let c = env.seal_compact("k", &ctx, b"x").unwrap();
    assert_eq!(data_key_of(&env, &a), data_key_of(&env, &b));
    assert_eq!(data_key_of(&env, &a), data_key_of(&env, &c));
    assert_eq!(counting.generated.load(Ordering::SeqCst), 2);
    let d = env.seal_compact("k", &ctx, b"x").unwrap();
    assert_ne!(data_key_of(&env, &a), data_key_of(&env, &d));
    assert_eq!(env.provider().stats().refreshes, 1);
    // Nothing was lost: all four open.
    for ct in [a, b, c, d] {
        assert_eq!(env.open(&ctx, &ct).unwrap(), b"x");
    }
}

#[test]
fn background_refresh_installs_a_new_key() {
    let (clock, _, env) = setup(CacheLimits { refresh_at: 0.5, refresh: RefreshMode::Background, ..limits() });
    let ctx = EncryptionContext::new();
    let a = env.seal_compact("k", &ctx, b"x").unwrap();
    clock.advance(Duration::from_secs(60));
    let b = env.seal_compact("k", &ctx, b"x").unwrap();
    assert_eq!(data_key_of(&env, &a), data_key_of(&env, &b), "caller served at once from the old entry");
    // Wait (bounded) for the background thread.
    let mut refreshed = false;
    for _ in 0..500 {
        if env.provider().stats().refreshes == 1 {
            refreshed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(refreshed, "background refresh did not complete within 5 s");
    let c = env.seal_compact("k", &ctx, b"x").unwrap();
    assert_ne!(data_key_of(&env, &a), data_key_of(&env, &c));
}

#[test]
fn open_side_unwraps_once_per_data_key() {
    let (clock, counting, env) = setup(limits());
    let ctx = EncryptionContext::new();
    let records: Vec<_> = (0..5).map(|i| env.seal_compact("k", &ctx, &[i]).unwrap()).collect();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(env.open(&ctx, r).unwrap(), vec![i as u8]);
    }
    assert_eq!(counting.unwrapped.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_secs(100));
    env.open(&ctx, &records[0]).unwrap();
    assert_eq!(counting.unwrapped.load(Ordering::SeqCst), 2, "expired open entries are unwrapped again");
    env.provider().clear();
    env.open(&ctx, &records[0]).unwrap();
    assert_eq!(counting.unwrapped.load(Ordering::SeqCst), 3, "clear() drops cached keys");
}

#[test]
fn entry_count_is_bounded() {
    let ring = Arc::new(Keyring::in_memory());
    for i in 0..20 {
        ring.create_key(&format!("k{i}")).unwrap();
    }
    let clock = Arc::new(ManualClock::new(Duration::from_secs(1)));
    let cache = CachingProvider::with_clock(
        LocalProvider::new(ring),
        CacheLimits { max_entries: 4, ..limits() },
        clock.clone(),
    );
    let env = Envelope::new(cache);
    for i in 0..20 {
        clock.advance(Duration::from_millis(1));
        env.seal_compact(&format!("k{i}"), &EncryptionContext::new(), b"x").unwrap();
    }
    // The four newest are cached: sealing under them again hits.
    let before = env.provider().stats().seal_hits;
    for i in 16..20 {
        env.seal_compact(&format!("k{i}"), &EncryptionContext::new(), b"x").unwrap();
    }
    assert_eq!(env.provider().stats().seal_hits - before, 4);
    env.seal_compact("k0", &EncryptionContext::new(), b"x").unwrap();
    assert_eq!(env.provider().stats().seal_hits - before, 4, "oldest was evicted");
}

#[test]
fn key_changes_invalidate_cached_data_keys_at_once() {
    let ring = Arc::new(Keyring::in_memory());
    ring.create_key("k").unwrap();
    let env = Envelope::new(CachingProvider::new(LocalProvider::new(ring.clone()), limits()));
    let ctx = EncryptionContext::new();
    let v1 = env.seal_compact("k", &ctx, b"a").unwrap();
    assert_eq!(env.inspect(&v1).unwrap().key_version(), 1);
    // Rotation: the very next message is under version 2.
    ring.rotate("k").unwrap();
    let v2 = env.seal_compact("k", &ctx, b"a").unwrap();
    assert_eq!(env.inspect(&v2).unwrap().key_version(), 2);
    // Disable: neither sealing nor opening is served from the cache.
    ring.disable("k").unwrap();
    assert!(env.seal_compact("k", &ctx, b"a").is_err());
    assert!(env.open(&ctx, &v2).is_err());
    ring.enable("k").unwrap();
    assert_eq!(env.open(&ctx, &v1).unwrap(), b"a");
    // Destroying version 1: its cached unwrapped data key is gone too.
    ring.set_min_decrypt_version("k", 2).unwrap();
    ring.destroy_version("k", 1).unwrap();
    assert!(env.open(&ctx, &v1).is_err());
    assert_eq!(env.open(&ctx, &v2).unwrap(), b"a");
}
