//! Latency of the Kubernetes KMS v2 plugin API as kube-apiserver sees it: one Encrypt of a
//! 32-byte DEK seed and one Decrypt of its ciphertext, over the plugin's Unix socket with a
//! generated gRPC client, through the whole server path (identity, policy, audit log on
//! disk, SQLite keystore, warm caches). Concurrency 1: each iteration is one round trip.
//! Kubernetes expects Encrypt < 100 ms and Decrypt < 10 ms. Results: `benches/RESULTS.md`
//! ("Kubernetes KMS v2 plugin").
#![allow(missing_docs, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use kms_sidecar::audit::{AuditConfig, AuditKey, AuditLog};
use kms_sidecar::k8s_kms::pb;
use kms_sidecar::k8s_kms::pb::key_management_service_client::KeyManagementServiceClient;
use kms_sidecar::keystore::SqliteStore;
use kms_sidecar::kms::Kms;
use kms_sidecar::metrics::Metrics;
use kms_sidecar::root_key::LocalRootKey;
use kms_sidecar::security::{Security, SecurityOptions};

const KEY: &str = "k8s/secrets";

fn plugin(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = Arc::new(SqliteStore::open(dir.path().join("keystore.db")).expect("store"));
    let root = LocalRootKey::load_or_create(dir.path().join("root.key"), true).expect("root key");
    let kms = Arc::new(Kms::new(store, root));
    kms.ensure_key(KEY).expect("key");
    let mut fresh = [0u8; 32];
    crypto_core::fill_random(&mut fresh);
    let audit_key = AuditKey::load_or_create(&dir.path().join("audit.key"), fresh).expect("audit key");
    let audit_path = dir.path().join("audit").join("audit.log");
    let audit = Arc::new(
        AuditLog::open(AuditConfig { path: audit_path, max_bytes: 0, fsync: false }, audit_key).expect("audit"),
    );
    let options = SecurityOptions {
        policy_path: None,
        rate_limit: 0.0,
        rate_burst: 0.0,
        max_concurrent_requests: 1024,
        request_timeout: Duration::from_secs(30),
        token_cache_ttl: Duration::from_secs(1),
    };
    let sec = Arc::new(Security::new(kms.clone(), options, audit, Arc::new(Metrics::new())).expect("security"));
    let socket = dir.path().join("k8s.sock");
    let path = socket.clone();
    rt.spawn(async move {
        let served = kms_sidecar::server::serve_k8s_kms_unix(
            kms,
            sec,
            &path,
            0o600,
            KEY,
            Default::default(),
            std::future::pending(),
        );
        served.await.expect("serve");
    });
    let mut client = rt.block_on(async {
        for _ in 0..500 {
            if let Ok(channel) = kms_sidecar::client::connect_unix(socket.clone()).await {
                let mut client = KeyManagementServiceClient::new(channel);
                if client.status(pb::StatusRequest {}).await.is_ok() {
                    return client;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("plugin did not come up");
    });
    let seed = vec![0x5au8; 32];
    let sealed = rt
        .block_on(client.encrypt(pb::EncryptRequest { plaintext: seed.clone(), uid: "bench".into() }))
        .expect("encrypt")
        .into_inner();

    let mut g = c.benchmark_group("k8s-kms-v2");
    g.sample_size(50).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    g.bench_function("encrypt-32B", |b| {
        b.iter(|| {
            rt.block_on(client.encrypt(pb::EncryptRequest { plaintext: seed.clone(), uid: "bench".into() }))
                .expect("encrypt")
        })
    });
    g.bench_function("decrypt-32B", |b| {
        b.iter(|| {
            let request = pb::DecryptRequest {
                ciphertext: sealed.ciphertext.clone(),
                uid: "bench".into(),
                key_id: sealed.key_id.clone(),
                annotations: sealed.annotations.clone(),
            };
            rt.block_on(client.decrypt(request)).expect("decrypt")
        })
    });
    g.bench_function("status", |b| b.iter(|| rt.block_on(client.status(pb::StatusRequest {})).expect("status")));
    g.finish();
}

criterion_group!(benches, plugin);
criterion_main!(benches);
