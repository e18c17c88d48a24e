//! The Kubernetes KMS v2 plugin API, driven by a generated gRPC client over its Unix
//! socket: once in-process with a manual clock (rotation, crypto-shredding after the
//! deletion window), once through the real `kms-sidecar serve` process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crypto_core::clock::ManualClock;
use kms_sidecar::audit::{AuditConfig, AuditKey, AuditLog};
use kms_sidecar::client::connect_unix;
use kms_sidecar::k8s_kms::pb;
use kms_sidecar::k8s_kms::pb::key_management_service_client::KeyManagementServiceClient;
use kms_sidecar::k8s_kms::{FORMAT_ANNOTATION, parse_key_id};
use kms_sidecar::keystore::SqliteStore;
use kms_sidecar::kms::Kms;
use kms_sidecar::metrics::Metrics;
use kms_sidecar::root_key::LocalRootKey;
use kms_sidecar::security::{Security, SecurityOptions};
use tonic::Code;

mod common;

type Client = KeyManagementServiceClient<tonic::transport::Channel>;

const KEY: &str = "k8s/secrets";
const DAY: u64 = 86_400;

async fn client(socket: &Path) -> Client {
    KeyManagementServiceClient::new(connect_unix(socket.to_path_buf()).await.unwrap())
}

async fn status(c: &mut Client) -> pb::StatusResponse {
    c.status(pb::StatusRequest {}).await.unwrap().into_inner()
}

async fn encrypt(c: &mut Client, plaintext: &[u8]) -> pb::EncryptResponse {
    c.encrypt(pb::EncryptRequest { plaintext: plaintext.to_vec(), uid: "test-uid".into() }).await.unwrap().into_inner()
}

async fn decrypt(c: &mut Client, e: &pb::EncryptResponse) -> Result<Vec<u8>, tonic::Status> {
    c.decrypt(pb::DecryptRequest {
        ciphertext: e.ciphertext.clone(),
        uid: "test-uid".into(),
        key_id: e.key_id.clone(),
        annotations: e.annotations.clone(),
    })
    .await
    .map(|r| r.into_inner().plaintext)
}

/// The Kms (on SQLite in `dir`, with `clock`), the gate (`policy_path`, or owner-only;
/// audit log in `dir`) and the plugin served on `dir/k8s.sock` by a task of `rt`.
fn serve_in_process(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    clock: Arc<ManualClock>,
    policy_path: Option<std::path::PathBuf>,
) -> (Arc<Kms>, std::path::PathBuf) {
    let store = Arc::new(SqliteStore::open(dir.join("keystore.db")).unwrap());
    let root = LocalRootKey::load_or_create(dir.join("root.key"), true).unwrap();
    let kms = Arc::new(Kms::new(store, root).with_clock(clock));
    let audit_key = AuditKey::load_or_create(&dir.join("audit.key"), [7u8; 32]).unwrap();
    let audit = Arc::new(
        AuditLog::open(
            AuditConfig { path: dir.join("audit").join("audit.log"), max_bytes: 0, fsync: false },
            audit_key,
        )
        .unwrap(),
    );
    let options = SecurityOptions {
        policy_path,
        rate_limit: 0.0,
        rate_burst: 0.0,
        max_concurrent_requests: 64,
        request_timeout: Duration::from_secs(30),
        token_cache_ttl: Duration::from_secs(1),
    };
    let sec = Arc::new(Security::new(kms.clone(), options, audit, Arc::new(Metrics::new())).unwrap());
    kms.ensure_key(KEY).unwrap();
    let socket = dir.join("k8s.sock");
    let (k, s, path) = (kms.clone(), sec, socket.clone());
    rt.spawn(async move {
        kms_sidecar::server::serve_k8s_kms_unix(k, s, &path, 0o600, KEY, Default::default(), std::future::pending())
            .await
            .unwrap();
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "plugin socket did not come up");
        std::thread::sleep(Duration::from_millis(10));
    }
    (kms, socket)
}

#[test]
fn key_ids_follow_rotation_old_ones_decrypt_until_destroyed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let clock = Arc::new(ManualClock::new(Duration::from_secs(1_800_000_000)));
    let (kms, socket) = serve_in_process(&rt, dir.path(), clock.clone(), None);
    let created = kms.describe_key(KEY).unwrap().created_at;
    rt.block_on(async {
        let mut c = client(&socket).await;
        let s = status(&mut c).await;
        assert_eq!((s.version.as_str(), s.healthz.as_str()), ("v2", "ok"));
        assert_eq!(parse_key_id(&s.key_id), Some((KEY, created, 1)));

        // Encrypt a DEK seed as kube-apiserver does; the key id is Status's, the annotation
        // names the format, and the ciphertext fits kube-apiserver's 1 KiB limit.
        let seed = [0x42u8; 32];
        let e1 = encrypt(&mut c, &seed).await;
        assert_eq!(e1.key_id, s.key_id);
        assert_eq!(e1.annotations.get(FORMAT_ANNOTATION).map(Vec::as_slice), Some(&b"v1"[..]));
        assert!(e1.ciphertext.len() <= 1024, "{} bytes", e1.ciphertext.len());
        assert!(!e1.ciphertext.windows(seed.len()).any(|w| w == seed));
        assert_eq!(decrypt(&mut c, &e1).await.unwrap(), seed);

        // Rotation changes the key id at once (Status and Encrypt); it never goes back, is
        // never reused, and every older one still decrypts.
        let mut seen = vec![e1.key_id.clone()];
        let mut sealed = vec![e1.clone()];
        for expected in 2..=4u32 {
            kms.rotate_key(KEY).unwrap();
            let s = status(&mut c).await;
            assert_eq!((s.healthz.as_str(), parse_key_id(&s.key_id)), ("ok", Some((KEY, created, expected))));
            let e = encrypt(&mut c, format!("seed-{expected}").as_bytes()).await;
            assert_eq!(e.key_id, s.key_id, "Encrypt uses the version Status reports");
            assert!(!seen.contains(&e.key_id), "key id reused");
            seen.push(e.key_id.clone());
            sealed.push(e);
        }
        for (i, e) in sealed.iter().enumerate() {
            let expected = if i == 0 { seed.to_vec() } else { format!("seed-{}", i + 1).into_bytes() };
            assert_eq!(decrypt(&mut c, e).await.unwrap(), expected, "key id {}", e.key_id);
        }

        // The key id is honoured: it must match the ciphertext and the key's incarnation.
        let mut wrong = sealed[0].clone();
        wrong.key_id = sealed[1].key_id.clone();
        assert_eq!(decrypt(&mut c, &wrong).await.unwrap_err().code(), Code::InvalidArgument);
        wrong.key_id = format!("{KEY}:{}:v1", created - 1);
        assert_eq!(decrypt(&mut c, &wrong).await.unwrap_err().code(), Code::NotFound);
        for garbage in ["", "k8s/secrets", "k8s/secrets:x:v1", "other:1:v1"] {
            wrong.key_id = garbage.into();
            let err = decrypt(&mut c, &wrong).await.unwrap_err();
            assert!(
                matches!(err.code(), Code::InvalidArgument | Code::NotFound | Code::PermissionDenied),
                "{garbage}: {err:?}"
            );
        }
        // Annotations are honoured: missing, altered or unknown ones are refused.
        let mut ann = sealed[0].clone();
        ann.annotations.clear();
        assert_eq!(decrypt(&mut c, &ann).await.unwrap_err().code(), Code::InvalidArgument);
        ann.annotations = HashMap::from([(FORMAT_ANNOTATION.to_owned(), b"v9".to_vec())]);
        assert_eq!(decrypt(&mut c, &ann).await.unwrap_err().code(), Code::InvalidArgument);
        ann.annotations = sealed[0].annotations.clone();
        ann.annotations.insert("extra.example.com".into(), b"x".to_vec());
        assert_eq!(decrypt(&mut c, &ann).await.unwrap_err().code(), Code::InvalidArgument);
        // A flipped ciphertext bit is an error, not garbage.
        let mut tampered = sealed[0].clone();
        let last = tampered.ciphertext.len() - 1;
        tampered.ciphertext[last] ^= 1;
        assert!(decrypt(&mut c, &tampered).await.is_err());
        // Oversize plaintext is refused.
        let big = c.encrypt(pb::EncryptRequest { plaintext: vec![0; 64 * 1024 + 1], uid: String::new() }).await;
        assert_eq!(big.unwrap_err().code(), Code::ResourceExhausted);

        // A version below the decrypt floor is refused.
        kms.set_min_decrypt_version(KEY, 2).unwrap();
        assert_eq!(decrypt(&mut c, &sealed[0]).await.unwrap_err().code(), Code::FailedPrecondition);
        assert_eq!(decrypt(&mut c, &sealed[1]).await.unwrap(), b"seed-2");

        // Disabling makes Status unhealthy (kube-apiserver then reports the plugin down).
        kms.disable_key(KEY).unwrap();
        let s = status(&mut c).await;
        assert_ne!(s.healthz, "ok");
        assert!(s.healthz.contains("disabled"), "{}", s.healthz);
        kms.enable_key(KEY).unwrap();
        assert_eq!(status(&mut c).await.healthz, "ok");

        // Crypto-shredding: after the deletion window every key id is an error for good.
        kms.schedule_key_deletion(KEY, 7 * DAY).unwrap();
        clock.advance(Duration::from_secs(7 * DAY));
        assert_eq!(kms.purge_due_deletions(kms.now()).unwrap(), vec![KEY.to_owned()]);
        for e in &sealed {
            let err = decrypt(&mut c, e).await.unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition, "{}: {err:?}", e.key_id);
        }
        let s = status(&mut c).await;
        assert_ne!(s.healthz, "ok");
        assert!(c.encrypt(pb::EncryptRequest { plaintext: b"x".to_vec(), uid: String::new() }).await.is_err());
    });
    // The metadata stays for audit; the material is gone.
    let k = kms.describe_key(KEY).unwrap();
    assert_eq!(k.versions.len(), 4);
    assert!(k.versions.iter().all(|v| v.wrapped_material.is_none() && v.destroyed_at.is_some()));
}

#[test]
fn every_plugin_call_needs_a_grant_on_the_backing_key_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    // Only another user may use the key; this test's user has no grant at all.
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[roles.apiserver]\ngrants = [{ operations = [\"encrypt\", \"decrypt\"], keys = [\"k8s/**\"] }]\n\
         [[bindings]]\nprincipals = [\"unix:uid=4242\"]\nroles = [\"apiserver\"]\n",
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let clock = Arc::new(ManualClock::new(Duration::from_secs(1_800_000_000)));
    let (kms, socket) = serve_in_process(&rt, dir.path(), clock, Some(policy));
    let created = kms.describe_key(KEY).unwrap().created_at;
    rt.block_on(async {
        let mut c = client(&socket).await;
        // Status names the key, its incarnation and version: not for callers without a grant.
        let err = c.status(pb::StatusRequest {}).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        let err = c.encrypt(pb::EncryptRequest { plaintext: vec![1; 32], uid: "u".into() }).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        let request = pb::DecryptRequest {
            ciphertext: vec![0; 64],
            uid: "u".into(),
            key_id: format!("{KEY}:{created}:v1"),
            annotations: HashMap::from([(FORMAT_ANNOTATION.to_owned(), b"v1".to_vec())]),
        };
        assert_eq!(c.decrypt(request).await.unwrap_err().code(), Code::PermissionDenied);
    });
    let audit = std::fs::read_to_string(dir.path().join("audit").join("audit.log")).unwrap();
    for op in ["K8sStatus", "K8sEncrypt", "K8sDecrypt"] {
        let denied = audit.lines().any(|l| l.contains(op) && l.contains("PERMISSION_DENIED"));
        assert!(denied, "{op}: no PERMISSION_DENIED record in\n{audit}");
    }
}

#[test]
fn the_sidecar_process_serves_the_plugin_socket() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let k8s_socket = dir.path().join("kmsplugin.sock");
    let k8s_arg = format!("unix://{}", k8s_socket.display());
    let sidecar = common::Sidecar::start(&data, &["--k8s-kms-socket", &k8s_arg, "--k8s-kms-key", KEY]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&k8s_socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "plugin socket did not come up");
        std::thread::sleep(Duration::from_millis(10));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (e, key_id_1) = rt.block_on(async {
        let mut c = client(&k8s_socket).await;
        let s = status(&mut c).await;
        assert_eq!((s.version.as_str(), s.healthz.as_str()), ("v2", "ok"), "{s:?}");
        let e = encrypt(&mut c, &[9u8; 32]).await;
        assert_eq!(decrypt(&mut c, &e).await.unwrap(), [9u8; 32]);
        (e, s.key_id)
    });
    // The key was created at start and is an ordinary key: kmsctl rotates it.
    common::ok(&sidecar.socket, &["key", "rotate", KEY]);
    rt.block_on(async {
        let mut c = client(&k8s_socket).await;
        let s = status(&mut c).await;
        assert_eq!(parse_key_id(&s.key_id).map(|k| k.2), Some(2));
        assert_ne!(s.key_id, key_id_1);
        assert_eq!(decrypt(&mut c, &e).await.unwrap(), [9u8; 32]);
    });
    // Every plugin call is in the audit log.
    let audit = std::fs::read_to_string(data.join("audit").join("audit.log")).unwrap();
    for op in ["K8sStatus", "K8sEncrypt", "K8sDecrypt"] {
        assert!(audit.contains(op), "{op} not audited");
    }
    sidecar.stop();
    assert!(!k8s_socket.exists(), "plugin socket removed on shutdown");
}
