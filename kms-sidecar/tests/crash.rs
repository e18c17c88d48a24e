//! Crash safety: SIGKILL the sidecar in the middle of a stream of key creations,
//! rotations, encryptions and secret writes; after a restart every acknowledged write is
//! present and every acknowledged ciphertext decrypts. SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kms_sidecar::client::connect_unix;
use kms_sidecar::grpc::pb;
use kms_sidecar::grpc::pb::kms_client::KmsClient;

mod common;
use common::Sidecar;

#[derive(Default)]
struct Acked {
    /// Key name → highest primary version acknowledged.
    keys: Vec<(String, u32)>,
    /// (ciphertext, plaintext) acknowledged by Encrypt.
    ciphertexts: Vec<(Vec<u8>, Vec<u8>)>,
    /// (secret, version, value) acknowledged by PutSecret.
    secrets: Vec<(String, u32, Vec<u8>)>,
}

fn ctx() -> std::collections::HashMap<String, String> {
    [("run".to_owned(), "crash".to_owned())].into_iter().collect()
}

/// Writes until the first failure (the kill), recording only acknowledged results.
async fn write_until_killed(socket: PathBuf, acked: Arc<Mutex<Acked>>) {
    let mut kms = KmsClient::new(connect_unix(socket).await.unwrap());
    for i in 0u32..100_000 {
        let name = format!("crash/k{}", i / 3);
        let step = async {
            if i % 3 == 0 {
                let k = kms.create_key(pb::CreateKeyRequest { name: name.clone() }).await?.into_inner();
                acked.lock().unwrap().keys.push((name.clone(), k.primary_version));
            } else {
                let k = kms.rotate_key(pb::KeyRef { name: name.clone() }).await?.into_inner();
                acked.lock().unwrap().keys.push((name.clone(), k.primary_version));
            }
            let plaintext = format!("payload {i}").into_bytes();
            let enc = kms
                .encrypt(pb::EncryptRequest { key_name: name.clone(), plaintext: plaintext.clone(), context: ctx() })
                .await?
                .into_inner();
            acked.lock().unwrap().ciphertexts.push((enc.ciphertext, plaintext));
            let value = format!("secret {i}").into_bytes();
            let put = kms
                .put_secret(pb::PutSecretRequest {
                    name: format!("s/{}", i % 7),
                    key_name: name.clone(),
                    value: value.clone(),
                })
                .await?
                .into_inner();
            acked.lock().unwrap().secrets.push((format!("s/{}", i % 7), put.version, value));
            Ok::<(), tonic::Status>(())
        };
        if step.await.is_err() {
            return;
        }
    }
}

fn crash_and_verify(data: &Path, extra: &[&str]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sidecar = Sidecar::start(data, extra);
    let acked = Arc::new(Mutex::new(Acked::default()));
    let writer = rt.spawn(write_until_killed(sidecar.socket.clone(), acked.clone()));
    // Let a few hundred writes land, then kill without warning.
    std::thread::sleep(Duration::from_millis(1500));
    sidecar.kill9();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), writer).await.unwrap().unwrap() });
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.ciphertexts.len() > 10,
        "too few writes before the kill ({}) to mean anything",
        acked.ciphertexts.len()
    );

    let sidecar = Sidecar::start(data, extra);
    rt.block_on(async {
        let mut kms = KmsClient::new(connect_unix(sidecar.socket.clone()).await.unwrap());
        for (name, version) in &acked.keys {
            let k = kms.describe_key(pb::KeyRef { name: name.clone() }).await.unwrap().into_inner();
            assert!(k.primary_version >= *version, "{name}: acknowledged v{version} lost (now v{})", k.primary_version);
        }
        for (ct, pt) in &acked.ciphertexts {
            let d =
                kms.decrypt(pb::DecryptRequest { ciphertext: ct.clone(), context: ctx() }).await.unwrap().into_inner();
            assert_eq!(&d.plaintext, pt);
        }
        for (name, version, value) in &acked.secrets {
            let s = kms
                .get_secret(pb::GetSecretRequest { name: name.clone(), version: *version })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(&s.value, value, "{name} v{version}");
        }
    });
    eprintln!(
        "crash test: {} key writes, {} ciphertexts, {} secret versions acknowledged before SIGKILL; all present after restart",
        acked.keys.len(),
        acked.ciphertexts.len(),
        acked.secrets.len()
    );
    sidecar.stop();
}

#[test]
fn sqlite_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    crash_and_verify(&dir.path().join("data"), &[]);
}

#[test]
fn postgres_survives_sigkill() {
    let Some(pg) = common::PgSchema::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    crash_and_verify(&dir.path().join("data"), &["--postgres", &pg.config]);
}
