//! The KMS operations over a real SQLite store and root key, including a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;

use crypto_core::keys::KeyState;
use crypto_core::provider::KeyProvider;
use kms_sidecar::keystore::SqliteStore;
use kms_sidecar::kms::{Kms, KmsError};
use kms_sidecar::root_key::LocalRootKey;

fn open(dir: &std::path::Path) -> Kms {
    let store = Arc::new(SqliteStore::open(dir.join("keystore.db")).unwrap());
    let root = LocalRootKey::load_or_create(dir.join("root.key"), true).unwrap();
    Kms::new(store, root)
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
    let k = kms.schedule_key_deletion("tenant-a/db", 86400).unwrap();
    assert!(matches!(k.state, KeyState::PendingDeletion { .. }));
    assert!(matches!(kms.encrypt("tenant-a/db", b"x", &c), Err(KmsError::FailedPrecondition(_))));
    assert!(matches!(kms.rotate_key("tenant-a/db"), Err(KmsError::FailedPrecondition(_))));
    assert_eq!(kms.cancel_key_deletion("tenant-a/db").unwrap().state, KeyState::Disabled);
    assert!(matches!(kms.cancel_key_deletion("tenant-a/db"), Err(KmsError::FailedPrecondition(_))));
    assert!(matches!(kms.schedule_key_deletion("tenant-a/db", 0), Err(KmsError::InvalidArgument(_))));
    kms.delete_secret("db/password").unwrap();
    assert!(matches!(kms.get_secret("db/password", None), Err(KmsError::NotFound(_))));
}

#[test]
fn root_key_missing_with_keys_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).create_key("k").unwrap();
    std::fs::remove_file(dir.path().join("root.key")).unwrap();
    let store = SqliteStore::open(dir.path().join("keystore.db")).unwrap();
    use kms_sidecar::keystore::KeyStore;
    let may_create = store.key_count().unwrap() == 0;
    assert!(!may_create);
    assert!(LocalRootKey::load_or_create(dir.path().join("root.key"), may_create).is_err());
}
