//! One conformance suite, run against every keystore backend: embedded SQLite and
//! PostgreSQL (127.0.0.1:5432, database `test`, a fresh schema per run; override with
//! `KMS_TEST_POSTGRES`). Without a reachable PostgreSQL the PostgreSQL tests fail under
//! `CI=true` and are reported as skipped, loudly, elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use crypto_core::keys::KeyState;
use crypto_core::secret::KeyMaterial;
use kms_sidecar::keystore::{KeyStore, KeyUpdate, PostgresStore, SCHEMA_VERSION, SqliteStore, StoreError};
use kms_sidecar::root_key::{LocalRootKey, RootKeyError};

mod common;
use common::PgSchema;

fn conformance(store: &dyn KeyStore) {
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.key_count().unwrap(), 0);

    // Create, read back, duplicates refused.
    let k = store.create_key("tenant-a/db", b"wrapped-v1", 100).unwrap();
    assert_eq!((k.primary_version, k.min_decrypt_version, k.state), (1, 1, KeyState::Enabled));
    assert_eq!(k.versions.len(), 1);
    assert_eq!(k.versions[0].wrapped_material.as_deref(), Some(&b"wrapped-v1"[..]));
    assert_eq!(store.get_key("tenant-a/db").unwrap(), k);
    assert!(matches!(store.create_key("tenant-a/db", b"x", 1), Err(StoreError::AlreadyExists(_))));
    assert!(matches!(store.get_key("nope"), Err(StoreError::NotFound(_))));
    store.create_key("tenant-b/db", b"b1", 101).unwrap();
    let names: Vec<_> = store.list_keys().unwrap().into_iter().map(|k| k.name).collect();
    assert_eq!(names, ["tenant-a/db", "tenant-b/db"]);
    assert_eq!(store.key_count().unwrap(), 2);

    // Rotation with optimistic concurrency.
    let k2 = store.add_version("tenant-a/db", k.row_version, b"wrapped-v2", 200).unwrap();
    assert_eq!(k2.primary_version, 2);
    assert!(k2.row_version > k.row_version);
    assert!(matches!(store.add_version("tenant-a/db", k.row_version, b"stale", 201), Err(StoreError::Conflict(_))));
    assert!(matches!(store.add_version("nope", 1, b"x", 1), Err(StoreError::NotFound(_))));
    assert_eq!(store.get_key("tenant-a/db").unwrap().versions.len(), 2, "the conflicting write left nothing");

    // State changes round-trip, including the deletion time.
    let k3 = store
        .update_key(
            "tenant-a/db",
            k2.row_version,
            KeyUpdate {
                state: KeyState::PendingDeletion { delete_after: 1_700_000_000 },
                min_decrypt_version: 2,
                rotation_period: Some(86_400),
            },
        )
        .unwrap();
    assert_eq!(k3.state, KeyState::PendingDeletion { delete_after: 1_700_000_000 });
    assert_eq!(k3.min_decrypt_version, 2);
    assert_eq!(k3.rotation_period, Some(86_400));
    assert!(matches!(
        store.update_key(
            "tenant-a/db",
            k2.row_version,
            KeyUpdate { state: KeyState::Enabled, min_decrypt_version: 1, rotation_period: None }
        ),
        Err(StoreError::Conflict(_))
    ));
    let k4 = store
        .update_key(
            "tenant-a/db",
            k3.row_version,
            KeyUpdate { state: KeyState::Disabled, min_decrypt_version: 2, rotation_period: None },
        )
        .unwrap();
    assert_eq!(k4.state, KeyState::Disabled);
    assert_eq!(k4.rotation_period, None);

    // Destroying a version erases its material for good.
    let k5 = store.destroy_version("tenant-a/db", 1, 300).unwrap();
    assert_eq!(k5.versions[0].wrapped_material, None);
    assert_eq!(k5.versions[0].destroyed_at, Some(300));
    assert_eq!(k5.versions[1].wrapped_material.as_deref(), Some(&b"wrapped-v2"[..]));
    let again = store.destroy_version("tenant-a/db", 1, 400).unwrap();
    assert_eq!(again.versions[0].destroyed_at, Some(300), "first destruction time kept");
    assert!(matches!(store.destroy_version("tenant-a/db", 9, 1), Err(StoreError::NotFound(_))));

    // Secrets: versioned values.
    assert_eq!(store.put_secret("db/password", "tenant-a/db", b"ct1", 10).unwrap(), 1);
    assert_eq!(store.put_secret("db/password", "tenant-a/db", b"ct2", 11).unwrap(), 2);
    assert_eq!(store.put_secret("api/token", "tenant-b/db", b"tok", 12).unwrap(), 1);
    let latest = store.get_secret("db/password", None).unwrap();
    assert_eq!((latest.version, latest.ciphertext.as_slice()), (2, &b"ct2"[..]));
    assert_eq!(store.get_secret("db/password", Some(1)).unwrap().ciphertext, b"ct1");
    assert!(matches!(store.get_secret("db/password", Some(3)), Err(StoreError::NotFound(_))));
    let list = store.list_secrets().unwrap();
    assert_eq!(
        list.iter().map(|s| (s.name.as_str(), s.latest_version)).collect::<Vec<_>>(),
        [("api/token", 1), ("db/password", 2)]
    );
    store.delete_secret("db/password").unwrap();
    assert!(matches!(store.get_secret("db/password", None), Err(StoreError::NotFound(_))));
    assert!(matches!(store.delete_secret("db/password"), Err(StoreError::NotFound(_))));
    assert_eq!(store.put_secret("db/password", "tenant-a/db", b"ct3", 13).unwrap(), 1);
    pki_conformance(store);
}

/// The CA row, the CRL counter and the certificate inventory.
/// API tokens: stored, found by id, listed, revoked by id or by name (once).
fn token_conformance(store: &dyn KeyStore) {
    use kms_sidecar::keystore::TokenRecord;
    let t = |id: &str, name: &str| TokenRecord {
        id: id.into(),
        name: name.into(),
        secret_hash: vec![7; 32],
        created_at: 100,
        expires_at: (name == "ci").then_some(200),
        revoked_at: None,
    };
    store.add_token(&t("00000000000000aa", "ci")).unwrap();
    store.add_token(&t("00000000000000bb", "app")).unwrap();
    store.add_token(&t("00000000000000cc", "app")).unwrap();
    assert!(matches!(store.add_token(&t("00000000000000aa", "x")), Err(StoreError::AlreadyExists(_))));
    assert_eq!(store.get_token("00000000000000aa").unwrap(), t("00000000000000aa", "ci"));
    assert!(matches!(store.get_token("00000000000000ff"), Err(StoreError::NotFound(_))));
    assert_eq!(store.list_tokens().unwrap().len(), 3);
    let revoked = store.revoke_tokens("app", 150).unwrap();
    assert_eq!(revoked.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().len(), 2);
    assert!(revoked.iter().all(|r| r.revoked_at == Some(150)));
    assert!(store.revoke_tokens("app", 160).unwrap().is_empty(), "already revoked: the first time is kept");
    assert_eq!(store.get_token("00000000000000bb").unwrap().revoked_at, Some(150));
    assert_eq!(store.revoke_tokens("00000000000000aa", 170).unwrap().len(), 1);
    assert!(store.revoke_tokens("nobody", 170).unwrap().is_empty());
}

fn pki_conformance(store: &dyn KeyStore) {
    use kms_sidecar::keystore::{CertificateRecord, StoredCa};
    assert!(matches!(store.get_ca(), Err(StoreError::NotFound(_))));
    assert!(matches!(store.next_crl_number(), Err(StoreError::NotFound(_))));
    let ca = StoredCa {
        certificate: b"issuing".to_vec(),
        parents: vec![b"root".to_vec(), Vec::new(), b"x".to_vec()],
        wrapped_key: b"wrapped".to_vec(),
        policy: "{}".into(),
        created_at: 20,
    };
    store.put_ca(&ca).unwrap();
    assert_eq!(store.get_ca().unwrap(), ca);
    let other = StoredCa { certificate: b"other".to_vec(), ..ca.clone() };
    assert!(matches!(store.put_ca(&other), Err(StoreError::AlreadyExists(_))));
    assert_eq!(store.get_ca().unwrap(), ca, "the first CA stays");
    assert_eq!((store.next_crl_number().unwrap(), store.next_crl_number().unwrap()), (1, 2));

    let cert = |serial: &str, t: i64| CertificateRecord {
        serial: serial.into(),
        common_name: "web".into(),
        sans: vec!["dns:web.a.svc".into(), "ip:10.0.0.1".into()],
        not_after: t + 100,
        issued_at: t,
        revoked_at: None,
        revoke_reason: None,
    };
    store.add_certificate(&cert("0B", 31)).unwrap();
    store.add_certificate(&cert("0A", 30)).unwrap();
    store.add_certificate(&cert("0C", 31)).unwrap();
    assert!(matches!(store.add_certificate(&cert("0A", 99)), Err(StoreError::AlreadyExists(_))));
    let list = store.list_certificates().unwrap();
    assert_eq!(list.iter().map(|c| c.serial.as_str()).collect::<Vec<_>>(), ["0A", "0B", "0C"]);
    assert_eq!(list[0], cert("0A", 30));
    let revoked = store.revoke_certificate("0B", 1, 40).unwrap();
    assert_eq!((revoked.revoked_at, revoked.revoke_reason), (Some(40), Some(1)));
    // Revoking again keeps the first time and reason.
    let again = store.revoke_certificate("0B", 4, 50).unwrap();
    assert_eq!((again.revoked_at, again.revoke_reason), (Some(40), Some(1)));
    assert!(matches!(store.revoke_certificate("FF", 1, 40), Err(StoreError::NotFound(_))));
    assert_eq!(store.list_certificates().unwrap().iter().filter(|c| c.revoked_at.is_some()).count(), 1);
}

/// Several writers rotate one key with read-modify-write retries: every rotation that
/// reported success is present exactly once, none is lost or duplicated.
fn concurrent_rotations(stores: &[Arc<dyn KeyStore>]) {
    stores[0].create_key("shared/key", b"v1", 1).unwrap();
    let per_writer = 10;
    std::thread::scope(|s| {
        for (w, store) in stores.iter().cycle().take(4).enumerate() {
            s.spawn(move || {
                for i in 0..per_writer {
                    let material = format!("w{w}-{i}");
                    for attempt in 0.. {
                        assert!(attempt < 1000, "writer {w} starved");
                        let current = store.get_key("shared/key").unwrap();
                        match store.add_version("shared/key", current.row_version, material.as_bytes(), 2) {
                            Ok(_) => break,
                            Err(StoreError::Conflict(_)) => continue,
                            Err(e) => panic!("writer {w}: {e}"),
                        }
                    }
                }
            });
        }
    });
    let key = stores[0].get_key("shared/key").unwrap();
    assert_eq!(key.versions.len(), 1 + 4 * per_writer);
    assert_eq!(key.primary_version as usize, key.versions.len());
    let mut materials: Vec<_> = key.versions.iter().map(|v| v.wrapped_material.clone().unwrap()).collect();
    materials.sort();
    materials.dedup();
    assert_eq!(materials.len(), key.versions.len(), "every acknowledged rotation stored once");
}

#[test]
fn sqlite_conformance_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keystore.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        conformance(&store);
        token_conformance(&store);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // Reopen: everything acknowledged is there, migrations are not re-applied.
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.get_key("tenant-a/db").unwrap().versions.len(), 2);
    assert_eq!(store.get_secret("db/password", None).unwrap().ciphertext, b"ct3");
}

#[test]
fn sqlite_concurrent_rotations_across_connections() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keystore.db");
    let stores: Vec<Arc<dyn KeyStore>> =
        vec![Arc::new(SqliteStore::open(&path).unwrap()), Arc::new(SqliteStore::open(&path).unwrap())];
    concurrent_rotations(&stores);
}

#[test]
fn sqlite_refuses_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keystore.db");
    drop(SqliteStore::open(&path).unwrap());
    bump_schema_with_python(&path);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
}

fn bump_schema_with_python(path: &std::path::Path) {
    // Simulate a database migrated by a newer build.
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('INSERT INTO schema_migrations VALUES (999, 0)'); c.commit()",
        ])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

// ---- PostgreSQL --------------------------------------------------------------------

#[test]
fn postgres_conformance_and_reconnect() {
    let Some(pg) = PgSchema::new() else { return };
    {
        let store = PostgresStore::connect(&pg.config).unwrap();
        conformance(&store);
        token_conformance(&store);
    }
    let store = PostgresStore::connect(&pg.config).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.get_key("tenant-a/db").unwrap().versions.len(), 2);
    assert_eq!(store.get_secret("db/password", None).unwrap().ciphertext, b"ct3");
}

#[test]
fn postgres_two_sidecars_rotate_one_key() {
    let Some(pg) = PgSchema::new() else { return };
    // Two independent connections stand for two sidecars sharing the database.
    let stores: Vec<Arc<dyn KeyStore>> = vec![
        Arc::new(PostgresStore::connect(&pg.config).unwrap()),
        Arc::new(PostgresStore::connect(&pg.config).unwrap()),
    ];
    concurrent_rotations(&stores);
}

#[test]
fn postgres_two_sidecars_number_crls_uniquely() {
    let Some(pg) = PgSchema::new() else { return };
    let a = Arc::new(PostgresStore::connect(&pg.config).unwrap());
    let b = Arc::new(PostgresStore::connect(&pg.config).unwrap());
    use kms_sidecar::keystore::StoredCa;
    a.put_ca(&StoredCa {
        certificate: vec![1],
        parents: vec![],
        wrapped_key: vec![2],
        policy: "{}".into(),
        created_at: 1,
    })
    .unwrap();
    let threads: Vec<_> = [a, b]
        .into_iter()
        .map(|s| std::thread::spawn(move || (0..50).map(|_| s.next_crl_number().unwrap()).collect::<Vec<_>>()))
        .collect();
    let mut all: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=100).collect::<Vec<_>>(), "unique, contiguous CRL numbers across sidecars");
}

// ---- root key ----------------------------------------------------------------------

#[test]
fn root_key_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.key");
    assert!(matches!(LocalRootKey::load_or_create(&path, false), Err(RootKeyError::Missing(_))));
    let root = LocalRootKey::load_or_create(&path, true).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let kek = KeyMaterial::generate();
    let blob = root.wrap("tenant-a/db", 3, &kek);
    // Reloaded from the file, it unwraps what it wrapped; bound to name and version.
    let again = LocalRootKey::load_or_create(&path, false).unwrap();
    assert_eq!(again.unwrap("tenant-a/db", 3, &blob).unwrap(), kek);
    assert!(matches!(again.unwrap("tenant-a/db", 4, &blob), Err(RootKeyError::UnwrapFailed { .. })));
    assert!(matches!(again.unwrap("tenant-b/db", 3, &blob), Err(RootKeyError::UnwrapFailed { .. })));
    // Another root key cannot unwrap it.
    let other = LocalRootKey::load_or_create(dir.path().join("other.key"), true).unwrap();
    assert!(other.unwrap("tenant-a/db", 3, &blob).is_err());
    // Refusals: readable by others, wrong size. Errors never contain key bytes.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = LocalRootKey::load_or_create(&path, true).unwrap_err();
        assert!(matches!(err, RootKeyError::InsecurePermissions { mode: 0o640, .. }), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::write(&path, b"short").unwrap();
    assert!(matches!(LocalRootKey::load_or_create(&path, true), Err(RootKeyError::Corrupt(_))));
}

#[test]
fn stored_material_is_root_wrapped_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let root = LocalRootKey::load_or_create(dir.path().join("root.key"), true).unwrap();
    let store = SqliteStore::open(dir.path().join("keystore.db")).unwrap();
    let kek = KeyMaterial::generate();
    store.create_key("k", &root.wrap("k", 1, &kek), 1).unwrap();
    let raw = std::fs::read(dir.path().join("keystore.db")).unwrap();
    let wal = std::fs::read(dir.path().join("keystore.db-wal")).unwrap_or_default();
    for hay in [&raw, &wal] {
        assert!(!hay.windows(32).any(|w| w == kek.expose_secret()), "plaintext KEK found in the database files");
    }
    let stored = store.get_key("k").unwrap();
    assert_eq!(root.unwrap("k", 1, stored.versions[0].wrapped_material.as_ref().unwrap()).unwrap(), kek);
}
