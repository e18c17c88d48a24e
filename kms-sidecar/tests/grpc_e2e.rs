//! End to end: the real `kms-sidecar serve` process on a Unix socket in a temp dir, driven
//! by a gRPC client; SIGTERM shutdown; restart keeps everything. Run on SQLite and on
//! PostgreSQL (fresh schema).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use kms_sidecar::client::connect_unix;
use kms_sidecar::grpc::pb;
use kms_sidecar::grpc::pb::kms_client::KmsClient;
use tonic::Code;

mod common;
use common::Sidecar;

fn ctx(tenant: &str) -> std::collections::HashMap<String, String> {
    [("tenant".to_owned(), tenant.to_owned())].into_iter().collect()
}

fn scenario(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rt = tokio::runtime::Runtime::new().unwrap();

    let sidecar = Sidecar::start(&data, extra);
    let (ciphertext, secret_version) = rt.block_on(async {
        let channel = connect_unix(sidecar.socket.clone()).await.unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let h = health
            .check(tonic_health::pb::HealthCheckRequest { service: "kms.v1.Kms".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(h.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

        let mut kms = KmsClient::new(channel);
        let key = kms.create_key(pb::CreateKeyRequest { name: "tenant-a/db".into() }).await.unwrap().into_inner();
        assert_eq!((key.primary_version, key.state), (1, pb::KeyState::Enabled as i32));
        let err = kms.create_key(pb::CreateKeyRequest { name: "tenant-a/db".into() }).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        let err = kms.create_key(pb::CreateKeyRequest { name: "../etc".into() }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        let enc = kms
            .encrypt(pb::EncryptRequest {
                key_name: "tenant-a/db".into(),
                plaintext: b"hello".to_vec(),
                context: ctx("a"),
            })
            .await
            .unwrap()
            .into_inner();
        let dec = kms
            .decrypt(pb::DecryptRequest { ciphertext: enc.ciphertext.clone(), context: ctx("a") })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(dec.plaintext, b"hello");
        let err = kms
            .decrypt(pb::DecryptRequest { ciphertext: enc.ciphertext.clone(), context: ctx("b") })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "wrong context");
        assert!(!err.message().contains("hello"));
        let err = kms
            .encrypt(pb::EncryptRequest { key_name: "nope".into(), plaintext: b"x".to_vec(), context: ctx("a") })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = kms
            .encrypt(pb::EncryptRequest {
                key_name: "tenant-a/db".into(),
                plaintext: vec![0; 70_000],
                context: ctx("a"),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);

        // Batches: per-item results, partial failure allowed.
        let item = |key: &str, pt: &[u8]| pb::EncryptRequest {
            key_name: key.into(),
            plaintext: pt.to_vec(),
            context: ctx("a"),
        };
        let batch = kms
            .batch_encrypt(pb::BatchEncryptRequest {
                items: vec![item("tenant-a/db", b"one"), item("nope", b"two"), item("tenant-a/db", b"three")],
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        use pb::batch_decrypt_result::Result as D;
        use pb::batch_encrypt_result::Result as E;
        let cts: Vec<Vec<u8>> = batch
            .iter()
            .filter_map(|r| match r.result.as_ref().unwrap() {
                E::Ok(ok) => Some(ok.ciphertext.clone()),
                E::Error(e) => {
                    assert_eq!(e.code, Code::NotFound as i32);
                    None
                }
            })
            .collect();
        assert_eq!(cts.len(), 2);
        let dec = kms
            .batch_decrypt(pb::BatchDecryptRequest {
                items: vec![
                    pb::DecryptRequest { ciphertext: cts[0].clone(), context: ctx("a") },
                    pb::DecryptRequest { ciphertext: cts[1].clone(), context: ctx("b") },
                ],
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        assert!(matches!(dec[0].result.as_ref().unwrap(), D::Ok(ok) if ok.plaintext == b"one"));
        assert!(matches!(dec[1].result.as_ref().unwrap(), D::Error(e) if e.code == Code::InvalidArgument as i32));
        let too_many = pb::BatchEncryptRequest { items: (0..1001).map(|_| item("tenant-a/db", b"x")).collect() };
        assert_eq!(kms.batch_encrypt(too_many).await.unwrap_err().code(), Code::ResourceExhausted);

        let rotated = kms.rotate_key(pb::KeyRef { name: "tenant-a/db".into() }).await.unwrap().into_inner();
        assert_eq!(rotated.primary_version, 2);
        let re =
            kms.re_encrypt(pb::ReEncryptRequest { ciphertext: enc.ciphertext.clone() }).await.unwrap().into_inner();
        assert_eq!((re.source_key_version, re.key_version), (1, 2));

        kms.disable_key(pb::KeyRef { name: "tenant-a/db".into() }).await.unwrap();
        let err = kms
            .decrypt(pb::DecryptRequest { ciphertext: enc.ciphertext.clone(), context: ctx("a") })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        kms.enable_key(pb::KeyRef { name: "tenant-a/db".into() }).await.unwrap();

        let dk = kms
            .generate_data_key(pb::GenerateDataKeyRequest { key_name: "tenant-a/db".into(), without_plaintext: false })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(dk.plaintext.len(), 32);
        assert_eq!(dk.wrapped.unwrap().key_version, 2);

        let put = kms
            .put_secret(pb::PutSecretRequest {
                name: "db/password".into(),
                key_name: "tenant-a/db".into(),
                value: b"hunter2".to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        (re.ciphertext, put.version)
    });
    sidecar.stop();

    // Restart: keys, versions and secrets persisted; old ciphertexts decrypt.
    let sidecar = Sidecar::start(&data, extra);
    rt.block_on(async {
        let mut kms = KmsClient::new(connect_unix(sidecar.socket.clone()).await.unwrap());
        let keys = kms.list_keys(pb::ListKeysRequest {}).await.unwrap().into_inner().keys;
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].versions.len(), 2);
        let dec = kms.decrypt(pb::DecryptRequest { ciphertext, context: ctx("a") }).await.unwrap().into_inner();
        assert_eq!((dec.plaintext.as_slice(), dec.key_version), (&b"hello"[..], 2));
        let s =
            kms.get_secret(pb::GetSecretRequest { name: "db/password".into(), version: 0 }).await.unwrap().into_inner();
        assert_eq!((s.value.as_slice(), s.version), (&b"hunter2"[..], secret_version));
    });
    sidecar.stop();
}

#[test]
fn sqlite_sidecar_end_to_end_with_restart() {
    scenario(&[]);
}

#[test]
fn postgres_sidecar_end_to_end_with_restart() {
    let Some(pg) = common::PgSchema::new() else { return };
    scenario(&["--postgres", &pg.config]);
}

#[test]
fn refuses_to_start_without_root_key_when_keys_exist() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    Sidecar::start(&data, &[]).stop();
    // Create a key through the library so the store is non-empty, then lose the root key.
    {
        let store = std::sync::Arc::new(kms_sidecar::keystore::SqliteStore::open(data.join("keystore.db")).unwrap());
        let root = kms_sidecar::root_key::LocalRootKey::load_or_create(data.join("root.key"), true).unwrap();
        kms_sidecar::kms::Kms::new(store, root).create_key("k").unwrap();
    }
    std::fs::remove_file(data.join("root.key")).unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_kms-sidecar")).args(["serve", "--data-dir"]).arg(&data).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("root key") && stderr.contains("missing"), "{stderr}");
    assert!(!data.join("root.key").exists(), "no new root key generated");
}
