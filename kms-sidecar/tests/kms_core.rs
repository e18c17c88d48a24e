//! The KMS operations over a real SQLite store and root key, including a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;

use crypto_core::clock::ManualClock;
use crypto_core::keys::KeyState;
use crypto_core::provider::KeyProvider;
use kms_sidecar::keystore::{KeyStore, PostgresStore, SqliteStore};
use kms_sidecar::kms::{Kms, KmsError, KmsOptions};
use kms_sidecar::root_key::LocalRootKey;

mod common;

fn open(dir: &std::path::Path) -> Kms {
    open_with(dir, KmsOptions::default())
}

fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn lifecycle_crypto_and_secrets_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(&[("tenant", "a")]);
    let (ct_v1, ct_v2, rewrapped);
    {
        let kms = open(dir.path());
        let k = kms.create_key("tenant-a/db").unwrap();
        assert_eq!((k.primary_version, k.state), (1, KeyState::Enabled));
        assert!(matches!(kms.create_key("tenant-a/db"), Err(KmsError::AlreadyExists(_))));
        assert!(matches!(kms.create_key("../x"), Err(KmsError::InvalidArgument(_))));

        let (ct, v) = kms.encrypt("tenant-a/db", b"hello", &c).unwrap();
        assert_eq!(v, 1);
        let (pt, name, v) = kms.decrypt(&ct, &c).unwrap();
        assert_eq!((pt.expose_secret(), name.as_str(), v), (&b"hello"[..], "tenant-a/db", 1));
        assert!(matches!(kms.decrypt(&ct, &ctx(&[("tenant", "b")])), Err(KmsError::DecryptFailed)));
        assert!(matches!(kms.decrypt(b"garbage", &c), Err(KmsError::InvalidArgument(_))));
        assert!(matches!(kms.encrypt("no/such", b"x", &c), Err(KmsError::NotFound(_))));
        ct_v1 = ct;

        assert_eq!(kms.rotate_key("tenant-a/db").unwrap().primary_version, 2);
        let (ct, v) = kms.encrypt("tenant-a/db", b"world", &c).unwrap();
        assert_eq!(v, 2);
        ct_v2 = ct;
        let (out, before, after) = kms.re_encrypt(&ct_v1).unwrap();
        assert_eq!((before, after), (1, 2));
        rewrapped = out;

        // Data keys from the sidecar unwrap through the same provider.
        let (dk, wrapped) = kms.generate_data_key("tenant-a/db").unwrap();
        assert_eq!(KeyProvider::unwrap(&kms, &[wrapped]).unwrap(), dk);

        assert_eq!(kms.put_secret("db/password", "tenant-a/db", b"s3cret-1").unwrap(), 1);
        assert_eq!(kms.put_secret("db/password", "tenant-a/db", b"s3cret-2").unwrap(), 2);
    }
    // Restart: a new process over the same files sees everything.
    let kms = open(dir.path());
    assert_eq!(kms.decrypt(&ct_v1, &c).unwrap().0.expose_secret(), b"hello");
    assert_eq!(kms.decrypt(&ct_v2, &c).unwrap().0.expose_secret(), b"world");
    assert_eq!(kms.decrypt(&rewrapped, &c).unwrap().0.expose_secret(), b"hello");
    assert_eq!(kms.get_secret("db/password", None).unwrap().value.expose_secret(), b"s3cret-2");
    assert_eq!(kms.get_secret("db/password", Some(1)).unwrap().value.expose_secret(), b"s3cret-1");
    assert_eq!(kms.list_secrets().unwrap().len(), 1);

    // Retire v1: the rewrapped ciphertext lives, the original does not.
    kms.set_min_decrypt_version("tenant-a/db", 2).unwrap();
    assert!(matches!(kms.decrypt(&ct_v1, &c), Err(KmsError::FailedPrecondition(_))));
    assert_eq!(kms.decrypt(&rewrapped, &c).unwrap().0.expose_secret(), b"hello");
    assert!(matches!(kms.set_min_decrypt_version("tenant-a/db", 3), Err(KmsError::InvalidArgument(_))));

    // Disable / enable / schedule / cancel.
    kms.disable_key("tenant-a/db").unwrap();
    assert!(matches!(kms.encrypt("tenant-a/db", b"x", &c), Err(KmsError::FailedPrecondition(_))));
    assert!(matches!(kms.decrypt(&ct_v2, &c), Err(KmsError::FailedPrecondition(_))));
    kms.enable_key("tenant-a/db").unwrap();
    let k = kms.schedule_key_deletion("tenant-a/db", 7 * DAY).unwrap();
    assert!(matches!(k.state, KeyState::PendingDeletion { .. }));
    assert!(matches!(kms.encrypt("tenant-a/db", b"x", &c), Err(KmsError::FailedPrecondition(_))));
    assert!(matches!(kms.rotate_key("tenant-a/db"), Err(KmsError::FailedPrecondition(_))));
    assert_eq!(kms.cancel_key_deletion("tenant-a/db").unwrap().state, KeyState::Disabled);
    assert!(matches!(kms.cancel_key_deletion("tenant-a/db"), Err(KmsError::FailedPrecondition(_))));
    // The waiting period is 7 to 30 days; 0 asks for the default of 30.
    for bad in [1, 7 * DAY - 1, 30 * DAY + 1, u64::MAX] {
        assert!(matches!(kms.schedule_key_deletion("tenant-a/db", bad), Err(KmsError::InvalidArgument(_))), "{bad}");
    }
    assert_eq!(
        kms.describe_key("tenant-a/db").unwrap().state,
        KeyState::Disabled,
        "a refused schedule changes nothing"
    );
    let k = kms.schedule_key_deletion("tenant-a/db", 0).unwrap();
    let KeyState::PendingDeletion { delete_after } = k.state else { panic!("{:?}", k.state) };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!((now + 30 * DAY - 5..=now + 30 * DAY + 5).contains(&delete_after), "default window is 30 days");
    kms.cancel_key_deletion("tenant-a/db").unwrap();
    kms.delete_secret("db/password").unwrap();
    assert!(matches!(kms.get_secret("db/password", None), Err(KmsError::NotFound(_))));
}

#[test]
fn root_key_missing_with_keys_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).create_key("k").unwrap();
    std::fs::remove_file(dir.path().join("root.key")).unwrap();
    let store = SqliteStore::open(dir.path().join("keystore.db")).unwrap();
    let may_create = store.key_count().unwrap() == 0;
    assert!(!may_create);
    assert!(LocalRootKey::load_or_create(dir.path().join("root.key"), may_create).is_err());
}

const DAY: u64 = 86_400;

/// A KMS on `dir` whose clock moves only when the test says so.
fn open_at(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Kms {
    open(dir).with_clock(clock.clone())
}

fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(std::time::Duration::from_secs(1_800_000_000)))
}

fn open_with(dir: &std::path::Path, options: KmsOptions) -> Kms {
    let store = Arc::new(SqliteStore::open(dir.join("keystore.db")).unwrap());
    let root = LocalRootKey::load_or_create(dir.join("root.key"), true).unwrap();
    Kms::with_options(store, root, options)
}

#[test]
fn deletion_job_destroys_due_keys_and_erases_material_from_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let kms = open_at(dir.path(), &clock);
    let c = ctx(&[("tenant", "a")]);
    kms.create_key("t/doomed").unwrap();
    kms.rotate_key("t/doomed").unwrap();
    kms.create_key("t/kept").unwrap();
    let (ct, _) = kms.encrypt("t/doomed", b"gone soon", &c).unwrap();
    let wrapped: Vec<Vec<u8>> =
        kms.store().get_key("t/doomed").unwrap().versions.iter().map(|v| v.wrapped_material.clone().unwrap()).collect();
    assert_eq!(wrapped.len(), 2);

    let k = kms.schedule_key_deletion("t/doomed", 7 * DAY).unwrap();
    let KeyState::PendingDeletion { delete_after } = k.state else { panic!("{:?}", k.state) };
    let due = delete_after as i64;
    assert_eq!(due, kms.now() + 7 * DAY as i64);
    // Not due yet: nothing happens.
    clock.advance(std::time::Duration::from_secs(7 * DAY - 1));
    assert!(kms.purge_due_deletions(kms.now()).unwrap().is_empty());
    assert!(kms.describe_key("t/doomed").unwrap().versions.iter().all(|v| v.wrapped_material.is_some()));
    // Due: destroyed, and cancelling is refused from the deadline on.
    clock.advance(std::time::Duration::from_secs(1));
    assert_eq!(kms.purge_due_deletions(kms.now()).unwrap(), vec!["t/doomed".to_owned()]);
    let k = kms.describe_key("t/doomed").unwrap();
    assert_eq!(k.state, KeyState::Destroyed);
    assert!(k.versions.iter().all(|v| v.wrapped_material.is_none() && v.destroyed_at.is_some()));
    assert!(matches!(kms.decrypt(&ct, &c), Err(KmsError::FailedPrecondition(_))));
    assert!(matches!(kms.encrypt("t/doomed", b"x", &c), Err(KmsError::FailedPrecondition(_))));
    assert!(matches!(kms.cancel_key_deletion("t/doomed"), Err(KmsError::FailedPrecondition(_))));
    assert_eq!(kms.describe_key("t/kept").unwrap().state, KeyState::Enabled);
    // Idempotent.
    assert!(kms.purge_due_deletions(due + 10).unwrap().is_empty());

    // Crypto-shredding reaches the disk: no copy of the wrapped material is left in the
    // database file or its WAL (secure_delete and a WAL truncation).
    drop(kms);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("keystore.db") {
            files.push(std::fs::read(&path).unwrap());
        }
    }
    assert!(!files.is_empty());
    for material in &wrapped {
        for bytes in &files {
            assert!(!bytes.windows(material.len()).any(|w| w == material.as_slice()), "wrapped material left on disk");
        }
    }
}

#[test]
fn cancel_after_the_window_is_refused_even_before_the_job_runs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let kms = open_at(dir.path(), &clock);
    kms.create_key("t/k").unwrap();
    kms.schedule_key_deletion("t/k", 7 * DAY).unwrap();
    clock.advance(std::time::Duration::from_secs(7 * DAY - 1));
    kms.cancel_key_deletion("t/k").unwrap();
    kms.schedule_key_deletion("t/k", 7 * DAY).unwrap();
    clock.advance(std::time::Duration::from_secs(7 * DAY));
    assert!(matches!(kms.cancel_key_deletion("t/k"), Err(KmsError::FailedPrecondition(_))));
}

#[test]
fn kek_cache_is_bounded_and_misses_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let kms = open_with(dir.path(), KmsOptions { kek_cache_capacity: 2, ..KmsOptions::default() });
    let c = ctx(&[]);
    let mut cts = Vec::new();
    for i in 0..6 {
        let name = format!("t/k{i}");
        kms.create_key(&name).unwrap();
        cts.push(kms.encrypt(&name, name.as_bytes(), &c).unwrap().0);
        assert!(kms.cached_kek_count() <= 2);
    }
    for (i, ct) in cts.iter().enumerate() {
        assert_eq!(kms.decrypt(ct, &c).unwrap().0.expose_secret(), format!("t/k{i}").as_bytes());
        assert!(kms.cached_kek_count() <= 2);
    }
    let none = open_with(dir.path(), KmsOptions { kek_cache_capacity: 0, ..KmsOptions::default() });
    assert_eq!(none.decrypt(&cts[0], &c).unwrap().0.expose_secret(), b"t/k0");
    assert_eq!(none.cached_kek_count(), 0);
}

#[test]
fn cache_only_defers_to_the_store_and_sees_local_changes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let kms = open(dir.path());
    let c = ctx(&[("tenant", "a")]);
    kms.create_key("t/k").unwrap();
    let cold = open(dir.path());
    // Nothing cached in a fresh process: cache-only refuses without side effects.
    assert!(matches!(cold.cache_only(|k| k.encrypt("t/k", b"x", &c)), Err(KmsError::WouldBlock)));
    let (ct, _) = cold.encrypt("t/k", b"x", &c).unwrap();
    assert_eq!(cold.cache_only(|k| k.decrypt(&ct, &c)).unwrap().0.expose_secret(), b"x");
    assert!(cold.cache_only(|k| k.encrypt("t/k", b"y", &c)).is_ok());
    // Changes through this process replace the cached record immediately.
    cold.disable_key("t/k").unwrap();
    assert!(matches!(cold.cache_only(|k| k.encrypt("t/k", b"x", &c)), Err(KmsError::FailedPrecondition(_))));
    cold.enable_key("t/k").unwrap();
    cold.rotate_key("t/k").unwrap();
    assert_eq!(cold.cache_only(|k| k.encrypt("t/k", b"x", &c)).unwrap().1, 2);
    // Secrets and admin operations are not cache-only operations; a failed store access
    // leaves the thread usable afterwards.
    assert!(cold.put_secret("s", "t/k", b"v").is_ok());
}

/// Two KMS instances over one store behave like two sidecars sharing PostgreSQL: a change
/// made through one is honoured by the other within the key-cache TTL.
fn changes_propagate_within_the_ttl(a: Kms, b: Kms, ttl: std::time::Duration) {
    let c = ctx(&[]);
    a.create_key("t/shared").unwrap();
    let (ct, _) = a.encrypt("t/shared", b"x", &c).unwrap();
    b.decrypt(&ct, &c).unwrap();
    a.disable_key("t/shared").unwrap();
    std::thread::sleep(ttl + std::time::Duration::from_millis(50));
    assert!(matches!(b.decrypt(&ct, &c), Err(KmsError::FailedPrecondition(_))));
    assert!(matches!(b.encrypt("t/shared", b"x", &c), Err(KmsError::FailedPrecondition(_))));
    a.enable_key("t/shared").unwrap();
    a.rotate_key("t/shared").unwrap();
    std::thread::sleep(ttl + std::time::Duration::from_millis(50));
    assert_eq!(b.encrypt("t/shared", b"x", &c).unwrap().1, 2, "b sees the new primary");
}

#[test]
fn changes_by_another_sidecar_are_honoured_within_the_ttl_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = std::time::Duration::from_millis(300);
    let options = KmsOptions { key_cache_ttl: ttl, ..KmsOptions::default() };
    changes_propagate_within_the_ttl(open_with(dir.path(), options), open_with(dir.path(), options), ttl);
}

#[test]
fn changes_by_another_sidecar_are_honoured_within_the_ttl_postgres() {
    let Some(pg) = common::PgSchema::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ttl = std::time::Duration::from_millis(300);
    let options = KmsOptions { key_cache_ttl: ttl, ..KmsOptions::default() };
    let root = |may_create| LocalRootKey::load_or_create(dir.path().join("root.key"), may_create).unwrap();
    let a = Kms::with_options(Arc::new(PostgresStore::connect(&pg.config).unwrap()), root(true), options);
    let b = Kms::with_options(Arc::new(PostgresStore::connect(&pg.config).unwrap()), root(false), options);
    changes_propagate_within_the_ttl(a, b, ttl);
}

#[test]
fn a_version_rotated_in_by_another_sidecar_decrypts_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let long = KmsOptions { key_cache_ttl: std::time::Duration::from_secs(3600), ..KmsOptions::default() };
    let (a, b) = (open_with(dir.path(), long), open_with(dir.path(), long));
    let c = ctx(&[]);
    a.create_key("t/k").unwrap();
    let (v1, _) = a.encrypt("t/k", b"one", &c).unwrap();
    assert_eq!(b.decrypt(&v1, &c).unwrap().0.expose_secret(), b"one"); // b caches the v1-only record
    a.rotate_key("t/k").unwrap();
    let (v2, version) = a.encrypt("t/k", b"two", &c).unwrap();
    assert_eq!(version, 2);
    // b has not seen the rotation (its record is fresh for an hour) but re-reads the key
    // when a ciphertext names a version it does not know yet, also from cache-only mode.
    assert!(matches!(b.cache_only(|k| k.decrypt(&v2, &c)), Err(KmsError::WouldBlock)));
    assert_eq!(b.decrypt(&v2, &c).unwrap().0.expose_secret(), b"two");
    assert_eq!(b.cache_only(|k| k.decrypt(&v2, &c)).unwrap().0.expose_secret(), b"two");
}

#[test]
fn an_altered_ca_record_does_not_load() {
    use crypto_core::pki::{KeyType, LeafRequest, SanPolicy, SubjectAltName, Usage};
    let dir = tempfile::tempdir().unwrap();
    let init = kms_sidecar::ca::CaInit {
        common_name: "CA".into(),
        key_type: KeyType::EcdsaP256,
        ttl: std::time::Duration::from_secs(86_400),
        policy: SanPolicy { dns: vec!["*.a.svc".into()], ..SanPolicy::default() },
    };
    open(dir.path()).init_ca(&init).unwrap();
    let request = LeafRequest {
        common_name: "x.a.svc".into(),
        sans: vec![SubjectAltName::Dns("x.a.svc".into())],
        key_type: KeyType::EcdsaP256,
        ttl: std::time::Duration::from_secs(3600),
        usage: Usage::Server,
    };
    open(dir.path()).issue_certificate(&request).unwrap();
    // Someone with write access to the database (but not the root key) widens the policy.
    let db = rusqlite::Connection::open(dir.path().join("keystore.db")).unwrap();
    db.execute("UPDATE pki_ca SET policy = '{\"dns\":[\"*.com\"]}'", []).unwrap();
    drop(db);
    let e = open(dir.path()).issue_certificate(&request).unwrap_err();
    assert!(matches!(e, KmsError::Internal(_)), "{e}");
    // A policy with a prefix that is not a URI ending in / is refused at init.
    let bad = kms_sidecar::ca::CaInit {
        policy: SanPolicy { uri_prefixes: vec!["spiffe://x/ns/a".into()], ..SanPolicy::default() },
        ..init
    };
    let dir2 = tempfile::tempdir().unwrap();
    assert!(matches!(open(dir2.path()).init_ca(&bad), Err(KmsError::InvalidArgument(_))));
}

/// A header may carry several wrapped keys, and their order is not authenticated. A
/// ciphertext whose first entry names another tenant's key (under another provider) must
/// not get re-wrapped under that key, and Decrypt reports the entry the sidecar used:
/// authorization checks this sidecar's entry, so every operation must use that entry.
#[test]
fn reordered_wrapped_keys_cannot_redirect_rewrap() {
    use crypto_core::envelope::{EncryptionContext, Envelope};
    use crypto_core::keys::Keyring;
    use crypto_core::provider::{LocalProvider, MultiProvider};
    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(open(dir.path()));
    kms.create_key("tenant-a/db").unwrap();
    kms.create_key("tenant-b/db").unwrap();
    // A library user's own provider entry, placed first, naming tenant B's key.
    let local = Arc::new(Keyring::in_memory());
    local.create_key("tenant-b/db").unwrap();
    let multi = MultiProvider::new()
        .with_fixed_key(Arc::new(LocalProvider::new(local)), "tenant-b/db")
        .with(kms.clone() as Arc<dyn KeyProvider>);
    let context = ctx(&[("tenant", "a")]);
    let sealed =
        Envelope::new(multi).seal("tenant-a/db", &EncryptionContext::from(context.clone()), b"tenant a data").unwrap();
    assert_eq!(Kms::ciphertext_key(&sealed).unwrap(), ("tenant-a/db".to_owned(), 1));
    let (plaintext, key, _) = kms.decrypt(&sealed, &context).unwrap();
    assert_eq!((plaintext.expose_secret(), key.as_str()), (&b"tenant a data"[..], "tenant-a/db"));
    assert!(matches!(kms.re_encrypt(&sealed), Err(KmsError::InvalidArgument(_))), "re-wrap redirected");
}

#[test]
fn rotation_period_rotates_once_when_due_and_only_enabled_keys() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let kms = open_at(dir.path(), &clock);
    let c = ctx(&[]);
    kms.create_key("t/auto").unwrap();
    kms.create_key("t/manual").unwrap();
    kms.create_key("t/off").unwrap();
    for bad in [Some(0), Some(3_599), Some(36_501 * DAY)] {
        assert!(matches!(kms.set_rotation_period("t/auto", bad), Err(KmsError::InvalidArgument(_))), "{bad:?}");
    }
    assert!(matches!(kms.set_rotation_period("t/missing", Some(DAY)), Err(KmsError::NotFound(_))));
    let k = kms.set_rotation_period("t/auto", Some(30 * DAY)).unwrap();
    assert_eq!(k.rotation_period, Some(30 * DAY));
    assert_eq!(kms_sidecar::kms::next_rotation_at(&k), Some(kms.now() + 30 * DAY as i64));
    kms.set_rotation_period("t/off", Some(DAY)).unwrap();
    kms.disable_key("t/off").unwrap();
    let (ct_v1, _) = kms.encrypt("t/auto", b"old", &c).unwrap();

    clock.advance(std::time::Duration::from_secs(30 * DAY - 1));
    assert!(kms.rotate_due_keys(kms.now()).unwrap().is_empty(), "not due one second early");
    clock.advance(std::time::Duration::from_secs(1));
    assert_eq!(kms.rotate_due_keys(kms.now()).unwrap(), vec![("t/auto".to_owned(), 2)]);
    assert!(kms.rotate_due_keys(kms.now()).unwrap().is_empty(), "rotated once, not again");
    let (ct_v2, v) = kms.encrypt("t/auto", b"new", &c).unwrap();
    assert_eq!(v, 2, "new data is sealed under the new primary");
    assert_eq!(kms.decrypt(&ct_v1, &c).unwrap().0.expose_secret(), b"old", "old data still opens");
    assert_eq!(kms.decrypt(&ct_v2, &c).unwrap().0.expose_secret(), b"new");
    assert_eq!(kms.describe_key("t/manual").unwrap().primary_version, 1, "no period, no rotation");
    assert_eq!(kms.describe_key("t/off").unwrap().primary_version, 1, "disabled keys are not rotated");

    // The period counts from the newest primary, also after a manual rotation.
    clock.advance(std::time::Duration::from_secs(10 * DAY));
    kms.rotate_key("t/auto").unwrap();
    clock.advance(std::time::Duration::from_secs(29 * DAY));
    assert!(kms.rotate_due_keys(kms.now()).unwrap().is_empty());
    clock.advance(std::time::Duration::from_secs(DAY));
    assert_eq!(kms.rotate_due_keys(kms.now()).unwrap(), vec![("t/auto".to_owned(), 4)]);

    // Clearing the period stops it; the setting survives a restart.
    let k = kms.set_rotation_period("t/auto", None).unwrap();
    assert_eq!((k.rotation_period, kms_sidecar::kms::next_rotation_at(&k)), (None, None));
    clock.advance(std::time::Duration::from_secs(365 * DAY));
    assert!(kms.rotate_due_keys(kms.now()).unwrap().is_empty());
    drop(kms);
    let kms = open_at(dir.path(), &clock);
    assert_eq!(kms.describe_key("t/off").unwrap().rotation_period, Some(DAY));
}

/// Several KMS instances (as several sidecars) run the rotation job at the same moment on
/// one store: a due key gets exactly one new version.
fn concurrent_rotation_jobs(open_one: impl Fn() -> Kms) {
    let clock = manual_clock();
    let first = open_one().with_clock(clock.clone());
    let name = format!("t/auto-{}", std::process::id());
    first.create_key(&name).unwrap();
    first.set_rotation_period(&name, Some(DAY)).unwrap();
    clock.advance(std::time::Duration::from_secs(DAY));
    let instances: Vec<Kms> = (0..4).map(|_| open_one().with_clock(clock.clone())).collect();
    let barrier = std::sync::Barrier::new(instances.len());
    let rotated: Vec<Vec<(String, u32)>> = std::thread::scope(|s| {
        let handles: Vec<_> = instances
            .iter()
            .map(|k| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    k.rotate_due_keys(k.now()).unwrap().into_iter().filter(|(n, _)| n.starts_with("t/auto-")).collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<_> = rotated.into_iter().flatten().filter(|(n, _)| *n == name).collect();
    assert_eq!(all, vec![(name.clone(), 2)], "exactly one instance rotated");
    let k = first.describe_key(&name).unwrap();
    assert_eq!(k.versions.iter().map(|v| v.version).collect::<Vec<_>>(), vec![1, 2]);
}

#[test]
fn sqlite_concurrent_rotation_jobs_rotate_once() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_rotation_jobs(|| open(dir.path()));
}

#[test]
fn postgres_concurrent_rotation_jobs_rotate_once() {
    let Some(pg) = common::PgSchema::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root_path = dir.path().join("root.key");
    LocalRootKey::load_or_create(&root_path, true).unwrap();
    concurrent_rotation_jobs(|| {
        let store = Arc::new(PostgresStore::connect(&pg.config).unwrap());
        Kms::new(store, LocalRootKey::load_or_create(&root_path, false).unwrap())
    });
}
