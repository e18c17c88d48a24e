//! Two real `kms-sidecar serve` processes on one PostgreSQL database, hammered at once:
//! concurrent rotations of one key through both give unique, contiguous versions (no lost
//! update), data sealed through one opens through the other, and a disable, rotation or
//! scheduled deletion made through one is honoured by the other within the key-cache TTL
//! (the documented propagation bound).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use kms_sidecar::client::connect_unix;
use kms_sidecar::grpc::pb;
use kms_sidecar::grpc::pb::kms_client::KmsClient;
use tonic::Code;

mod common;

type Client = KmsClient<tonic::transport::Channel>;

const KEY: &str = "shared/orders";
const TTL_MS: u64 = 500;
const WORKERS_PER_SIDECAR: usize = 4;
const ROTATIONS_PER_WORKER: usize = 6;

async fn client(socket: &Path) -> Client {
    KmsClient::new(connect_unix(socket.to_path_buf()).await.unwrap())
}

fn ctx() -> std::collections::HashMap<String, String> {
    [("tenant".to_owned(), "shared".to_owned())].into()
}

async fn encrypt(c: &mut Client, plaintext: &[u8]) -> Result<pb::EncryptResponse, tonic::Status> {
    c.encrypt(pb::EncryptRequest { key_name: KEY.into(), plaintext: plaintext.to_vec(), context: ctx() })
        .await
        .map(|r| r.into_inner())
}

async fn decrypt(c: &mut Client, ciphertext: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    c.decrypt(pb::DecryptRequest { ciphertext: ciphertext.to_vec(), context: ctx() })
        .await
        .map(|r| r.into_inner().plaintext)
}

/// Rotates through `c`, retrying (bounded) while the other writers keep winning.
async fn rotate(c: &mut Client) -> u32 {
    for _ in 0..100 {
        match c.rotate_key(pb::KeyRef { name: KEY.into() }).await {
            Ok(k) => return k.into_inner().primary_version,
            Err(s) if s.code() == Code::Aborted => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(s) => panic!("rotate: {s:?}"),
        }
    }
    panic!("rotation kept conflicting for 100 attempts");
}

/// Polls `check` on the other sidecar until it holds; returns how long that took.
async fn honoured_within<F, Fut>(mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "change not honoured by the other sidecar within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn two_sidecars_on_one_postgres_agree_under_concurrent_load() {
    let Some(pg) = common::PgSchema::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let ttl = format!("{TTL_MS}ms");
    let args = ["--postgres", pg.config.as_str(), "--key-cache-ttl", ttl.as_str()];
    let a = common::Sidecar::start(&data_a, &args);
    // Every sidecar on the database needs the same root key (or, in production, the same
    // AWS KMS key): hand B a copy of A's, as an operator would from the secret store.
    std::fs::create_dir_all(&data_b).unwrap();
    std::fs::copy(data_a.join("root.key"), data_b.join("root.key")).unwrap();
    let b = common::Sidecar::start(&data_b, &args);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut ca, mut cb) = (client(&a.socket).await, client(&b.socket).await);
        ca.create_key(pb::CreateKeyRequest { name: KEY.into() }).await.unwrap();
        assert_eq!(
            cb.describe_key(pb::KeyRef { name: KEY.into() }).await.unwrap().into_inner().primary_version,
            1,
            "B sees the key A created"
        );

        // The hammer: workers on both sidecars rotate the same key and, between rotations,
        // seal through their own sidecar and open through the other one.
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..2 * WORKERS_PER_SIDECAR {
            let (own, other) = if worker % 2 == 0 { (&a.socket, &b.socket) } else { (&b.socket, &a.socket) };
            let (mut own, mut other) = (client(own).await, client(other).await);
            tasks.spawn(async move {
                let mut versions = Vec::new();
                for i in 0..ROTATIONS_PER_WORKER {
                    versions.push(rotate(&mut own).await);
                    let msg = format!("worker {worker} message {i}");
                    let sealed = encrypt(&mut own, msg.as_bytes()).await.unwrap();
                    assert_eq!(decrypt(&mut other, &sealed.ciphertext).await.unwrap(), msg.as_bytes());
                }
                versions
            });
        }
        let mut versions = Vec::new();
        while let Some(done) = tasks.join_next().await {
            versions.extend(done.unwrap());
        }
        versions.sort_unstable();
        let total = (2 * WORKERS_PER_SIDECAR * ROTATIONS_PER_WORKER) as u32;
        let expected: Vec<u32> = (2..=total + 1).collect();
        assert_eq!(versions, expected, "every rotation got its own version, none lost, none skipped");
        for c in [&mut ca, &mut cb] {
            let k = c.describe_key(pb::KeyRef { name: KEY.into() }).await.unwrap().into_inner();
            assert_eq!(k.primary_version, total + 1);
            assert_eq!(k.versions.iter().map(|v| v.version).collect::<Vec<_>>(), (1..=total + 1).collect::<Vec<_>>());
        }

        // Propagation: B has the key warm in its cache; each change through A is honoured
        // by B within the TTL (plus scheduling slack).
        let bound = Duration::from_millis(TTL_MS) + Duration::from_millis(1500);
        encrypt(&mut cb, b"warm").await.unwrap();

        ca.disable_key(pb::KeyRef { name: KEY.into() }).await.unwrap();
        let took = honoured_within(|| {
            let mut cb = cb.clone();
            async move { encrypt(&mut cb, b"x").await.is_err_and(|s| s.code() == Code::FailedPrecondition) }
        })
        .await;
        eprintln!("disable through A honoured by B after {took:?}");
        assert!(took <= bound, "disable took {took:?}");

        ca.enable_key(pb::KeyRef { name: KEY.into() }).await.unwrap();
        honoured_within(|| {
            let mut cb = cb.clone();
            async move { encrypt(&mut cb, b"x").await.is_ok() }
        })
        .await;

        let rotated = ca.rotate_key(pb::KeyRef { name: KEY.into() }).await.unwrap().into_inner().primary_version;
        let took = honoured_within(|| {
            let mut cb = cb.clone();
            async move { encrypt(&mut cb, b"x").await.unwrap().key_version == rotated }
        })
        .await;
        eprintln!("rotation through A honoured by B after {took:?}");
        assert!(took <= bound, "rotation took {took:?}");

        let sealed = encrypt(&mut cb, b"before deletion").await.unwrap();
        ca.schedule_key_deletion(pb::ScheduleKeyDeletionRequest { name: KEY.into(), pending_window_seconds: 0 })
            .await
            .unwrap();
        let took = honoured_within(|| {
            let (mut cb, ct) = (cb.clone(), sealed.ciphertext.clone());
            async move { decrypt(&mut cb, &ct).await.is_err_and(|s| s.code() == Code::FailedPrecondition) }
        })
        .await;
        eprintln!("scheduled deletion through A honoured by B after {took:?}");
        assert!(took <= bound, "scheduled deletion took {took:?}");
        // Cancelled through B, usable again through A.
        cb.cancel_key_deletion(pb::KeyRef { name: KEY.into() }).await.unwrap();
        cb.enable_key(pb::KeyRef { name: KEY.into() }).await.unwrap();
        honoured_within(|| {
            let (mut ca, ct) = (ca.clone(), sealed.ciphertext.clone());
            async move { decrypt(&mut ca, &ct).await.is_ok() }
        })
        .await;
    });
    a.stop();
    b.stop();
}
