//! Every gRPC request the sidecar serves, through its handler (the tonic service trait
//! method, called directly on the current-thread runtime built once) as an authenticated
//! operator, over one in-process sidecar: a SQLite keystore in a temporary directory (on
//! `/dev/shm` where there is one, so its fsyncs are free), a local root key, a policy file
//! that grants every operation to `anonymous` (the identity of a request that carries no
//! token and arrives over no transport), the audit log and metrics.
//!
//! Input: the first byte picks the RPC (modulo [`RPCS`]); the rest is that RPC's request
//! message (`prost::Message::decode`; input that does not decode is skipped). For the
//! streaming RPCs the rest is a sequence of length-delimited request messages, sent as the
//! request stream; the response stream is read to its end.
//!
//! | selector | service | RPCs |
//! |---|---|---|
//! | 0–37 | `kms.v1.Kms` | CreateKey, DescribeKey, ListKeys, RotateKey, EnableKey, DisableKey, ScheduleKeyDeletion, CancelKeyDeletion, SetMinDecryptVersion, SetRotationPeriod, Encrypt, Decrypt, BatchEncrypt, BatchDecrypt, ReEncrypt, GenerateDataKey, DecryptDataKey, ReEncryptDataKey, EncryptStream, DecryptStream, PutSecret, GetSecret, ListSecrets, DeleteSecret, InitCa, IssueCertificate, SignCsr, RevokeCertificate, ListCertificates, GetCaBundle, GetCrl, WhoAmI, CreateToken, ListTokens, RevokeToken, AuditHead, HashPassword, VerifyPassword |
//! | 38–40 | `v2.KeyManagementService` (Kubernetes KMS v2 plugin) | Status, Encrypt, Decrypt |
//! | 41–42 | `grpc.health.v1.Health` | Check, Watch (its first answer) |
//! | 43 | `grpc.reflection.v1.ServerReflection` | ServerReflectionInfo (through the tower service: tonic-reflection's handler type cannot be named) |
//!
//! The keystore holds keys with fixed material (several versions, disabled, pending
//! deletion, a destroyed version, a decrypt floor, a rotation period, the plugin's key),
//! a secret with two versions, a CA (P-256) with inventory entries of fixed serials, and
//! API tokens of fixed ids, so the committed seeds (encoded requests carrying ciphertexts,
//! data keys and key ids made against it) stay valid in every process. An input that
//! changed the keystore (`PRAGMA data_version` moved) is undone: the tables are restored
//! from a snapshot and the services rebuilt with empty caches, so an input's outcome does
//! not depend on the inputs before it (only whether what it needs was already cached).
//!
//! Properties: no handler panics (libFuzzer aborts on a panic in any thread, the blocking
//! pool's included) or hangs (`-timeout`), and none reports an operation that panicked
//! (how a panic caught by `spawn_blocking` would surface).
//!
//! Cost bounds, so the fuzzer spends its time on parsing and state rather than on key
//! generation and argon2: requests that would generate an RSA key (IssueCertificate and
//! InitCa with an RSA or empty key type) are skipped, HashPassword hashes only one-byte
//! passwords (the others that are valid cost an argon2id run at 19 MiB), and
//! VerifyPassword runs only for hashes it refuses before any work or whose parameters
//! are cheap (m <= 256 KiB, t <= 2).
//!
//! `FUZZ_WRITE_SEEDS=DIR` makes the target write one seed per RPC (more for some) into
//! DIR at start: that is how `seeds/grpc_handlers` was made.
#![no_main]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use kms_sidecar::audit::{AuditConfig, AuditKey, AuditLog};
use kms_sidecar::grpc::pb::kms_server::Kms as KmsRpc;
use kms_sidecar::grpc::{KmsService, Limits, pb};
use kms_sidecar::k8s_kms::K8sKmsService;
use kms_sidecar::k8s_kms::pb as k8s;
use kms_sidecar::k8s_kms::pb::key_management_service_server::KeyManagementService;
use kms_sidecar::keystore::{CertificateRecord, KeyStore, KeyUpdate, SqliteStore, TokenRecord};
use kms_sidecar::kms::Kms;
use kms_sidecar::metrics::Metrics;
use kms_sidecar::root_key::LocalRootKey;
use kms_sidecar::security::{Security, SecurityOptions};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokio_stream::StreamExt;
use tonic::codegen::Service;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_server::Health;
use tonic_health::server::HealthService;

/// Every RPC, in selector order.
const RPCS: &[&str] = &[
    "CreateKey",
    "DescribeKey",
    "ListKeys",
    "RotateKey",
    "EnableKey",
    "DisableKey",
    "ScheduleKeyDeletion",
    "CancelKeyDeletion",
    "SetMinDecryptVersion",
    "SetRotationPeriod",
    "Encrypt",
    "Decrypt",
    "BatchEncrypt",
    "BatchDecrypt",
    "ReEncrypt",
    "GenerateDataKey",
    "DecryptDataKey",
    "ReEncryptDataKey",
    "EncryptStream",
    "DecryptStream",
    "PutSecret",
    "GetSecret",
    "ListSecrets",
    "DeleteSecret",
    "InitCa",
    "IssueCertificate",
    "SignCsr",
    "RevokeCertificate",
    "ListCertificates",
    "GetCaBundle",
    "GetCrl",
    "WhoAmI",
    "CreateToken",
    "ListTokens",
    "RevokeToken",
    "AuditHead",
    "HashPassword",
    "VerifyPassword",
    "K8sStatus",
    "K8sEncrypt",
    "K8sDecrypt",
    "HealthCheck",
    "HealthWatch",
    "ServerReflectionInfo",
];

/// Creation time of every fixture key (fixed: it is part of the plugin's key ids).
const CREATED_AT: i64 = 1_700_000_000;
/// The Kubernetes plugin's key.
const K8S_KEY: &str = "k8s/secrets";
/// Serials of the fixture's inventory entries (the second one revoked).
const SERIALS: [&str; 2] = ["7E57000000000001", "7E57000000000002"];
/// Ids of the fixture's API tokens (the second one revoked).
const TOKEN_IDS: [&str; 2] = ["00112233445566aa", "00112233445566bb"];
/// Tables restored after an input changed them.
const TABLES: [&str; 6] = ["keys", "key_versions", "secrets", "pki_ca", "pki_certificates", "api_tokens"];
/// Messages of a panic caught by the service (`spawn_blocking`, `tokio::spawn`).
const PANICKED: [&str; 4] =
    ["operation panicked", "operation task failed", "token lookup panicked", "EncryptStream worker failed"];

const POLICY: &str = r#"
[roles.operator]
grants = [
  { operations = ["*"], keys = ["**"], secrets = ["**"], names = ["**"], tokens = ["**"] },
  { operations = ["pki-admin", "audit-read", "password"] },
]

[[bindings]]
principals = ["anonymous"]
roles = ["operator"]
"#;

/// The services over the current keystore state; rebuilt (empty caches, the plugin's
/// version high-water mark reset) whenever the keystore is restored.
#[derive(Clone)]
struct Services {
    kms: Arc<Kms>,
    v1: KmsService,
    k8s: K8sKmsService,
}

type Reflect = Box<dyn Fn(Vec<u8>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

struct Fixture {
    rt: tokio::runtime::Runtime,
    dir: PathBuf,
    store: Arc<SqliteStore>,
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
    /// A second connection to the keystore: snapshot attached as `snap`, and the
    /// `data_version` it last saw.
    restore: Mutex<(rusqlite::Connection, i64)>,
    services: Mutex<Services>,
    health: HealthService,
    reflection: Reflect,
    runs: AtomicU64,
}

/// Fixed material of version `v` of key `name`.
fn material(name: &str, v: u32) -> crypto_core::secret::KeyMaterial {
    let mut m = [0x5au8; 32];
    let s = format!("{name}#{v}");
    m[..s.len()].copy_from_slice(s.as_bytes());
    crypto_core::secret::KeyMaterial::from_slice(&m).expect("32 bytes")
}

impl Fixture {
    fn services(&self) -> Services {
        build_services(&self.dir, &self.store, &self.audit, &self.metrics)
    }

    /// Undoes whatever the last input changed in the keystore.
    fn restore_if_changed(&self) {
        let mut guard = self.restore.lock().unwrap_or_else(|p| p.into_inner());
        let (conn, seen) = &mut *guard;
        let now: i64 = conn.query_row("PRAGMA data_version", [], |r| r.get(0)).expect("data_version");
        if now == *seen {
            return;
        }
        let mut sql = String::from("BEGIN IMMEDIATE;");
        for t in TABLES {
            sql.push_str(&format!("DELETE FROM main.{t}; INSERT INTO main.{t} SELECT * FROM snap.{t};"));
        }
        sql.push_str("COMMIT;");
        conn.execute_batch(&sql).expect("restore the keystore");
        // This connection's own commit does not move its data_version.
        *seen = conn.query_row("PRAGMA data_version", [], |r| r.get(0)).expect("data_version");
        *self.services.lock().unwrap_or_else(|p| p.into_inner()) = self.services();
    }

    /// Bounds the audit log: rotated files (1 MiB each) are removed now and then.
    fn trim_audit(&self) {
        if self.runs.fetch_add(1, Ordering::Relaxed) % 1024 != 0 {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(self.dir.join("audit")) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("audit.log.") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

fn build_services(dir: &Path, store: &Arc<SqliteStore>, audit: &Arc<AuditLog>, metrics: &Arc<Metrics>) -> Services {
    let root = LocalRootKey::load_or_create(dir.join("root.key"), false).expect("root key");
    let kms = Arc::new(Kms::new(store.clone() as Arc<dyn KeyStore>, root));
    let options = SecurityOptions {
        policy_path: Some(dir.join("policy.toml")),
        request_timeout: Duration::from_secs(30),
        ..SecurityOptions::default()
    };
    let sec = Arc::new(Security::new(kms.clone(), options, audit.clone(), metrics.clone()).expect("policy"));
    let limits = Limits {
        max_request_bytes: 64 * 1024,
        max_concurrent_streams: 4,
        stream_idle_timeout: Duration::from_secs(10),
    };
    let v1 = KmsService::new(kms.clone(), limits, sec.clone());
    let k8s = K8sKmsService::new(kms.clone(), sec, K8S_KEY, limits);
    Services { kms, v1, k8s }
}

/// Creates `name` with versions 1..=`versions` of fixed material, directly in the store.
fn add_key(kms: &Kms, name: &str, versions: u32) {
    let wrap = |v| kms.root().wrap(name, v, &material(name, v)).expect("wrap");
    let mut record = kms.store().create_key(name, &wrap(1), CREATED_AT).expect("create");
    for v in 2..=versions {
        let at = CREATED_AT + i64::from(v) * 86_400;
        record = kms.store().add_version(name, record.row_version, &wrap(v), at).expect("add version");
    }
    kms.describe_key(name).expect("describe");
}

fn update(kms: &Kms, name: &str, f: impl FnOnce(&mut KeyUpdate)) {
    let record = kms.store().get_key(name).expect("get");
    let mut u = KeyUpdate::from(&record);
    f(&mut u);
    kms.store().update_key(name, record.row_version, u).expect("update");
    kms.describe_key(name).expect("describe");
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        let dir = common::temp_dir("cryptocore-fuzz-grpc-");
        let store = Arc::new(SqliteStore::open(dir.join("keystore.db")).expect("keystore"));
        LocalRootKey::load_or_create(dir.join("root.key"), true).expect("root key");
        std::fs::write(dir.join("policy.toml"), POLICY).expect("policy");
        let audit = Arc::new(
            AuditLog::open(
                AuditConfig { path: dir.join("audit").join("audit.log"), max_bytes: 1 << 20, fsync: false },
                AuditKey::from_bytes([7; 32]),
            )
            .expect("audit log"),
        );
        let metrics = Arc::new(Metrics::new());
        let s = build_services(&dir, &store, &audit, &metrics);
        let kms = &s.kms;

        // app/db: a ciphertext and a data key under version 1 (for ReEncrypt,
        // ReEncryptDataKey), then versions 2 and 3 and a rotation period.
        add_key(kms, "app/db", 1);
        let ctx = std::collections::BTreeMap::from([("tenant".to_owned(), "a".to_owned())]);
        let old_ciphertext = kms.encrypt("app/db", b"sealed under version 1", &ctx).expect("encrypt").0;
        let old_data_key = kms.generate_data_key("app/db").expect("data key").1;
        for v in 2..=3 {
            let record = kms.store().get_key("app/db").expect("get");
            let wrapped = kms.root().wrap("app/db", v, &material("app/db", v)).expect("wrap");
            kms.store().add_version("app/db", record.row_version, &wrapped, CREATED_AT + 86_400).expect("add");
        }
        kms.describe_key("app/db").expect("describe");
        update(kms, "app/db", |u| u.rotation_period = Some(86_400));
        add_key(kms, "app/min2", 2);
        update(kms, "app/min2", |u| u.min_decrypt_version = 2);
        add_key(kms, "app/disabled", 1);
        update(kms, "app/disabled", |u| u.state = crypto_core::keys::KeyState::Disabled);
        add_key(kms, "app/pending", 1);
        update(kms, "app/pending", |u| {
            u.state = crypto_core::keys::KeyState::PendingDeletion { delete_after: 4_000_000_000 }
        });
        add_key(kms, "app/old", 2);
        kms.store().destroy_version("app/old", 1, CREATED_AT + 1).expect("destroy");
        add_key(kms, K8S_KEY, 2);
        for value in [&b"first"[..], b"second"] {
            kms.put_secret("app/password", "app/db", value).expect("secret");
        }
        let policy = crypto_core::pki::SanPolicy {
            dns: vec!["*.tenant-a.svc".into()],
            ip: vec![("10.0.0.0".parse().expect("ip"), 8)],
            uri_prefixes: vec!["spiffe://c.local/".into()],
        };
        let init = kms_sidecar::ca::CaInit {
            common_name: "Fuzz CA".into(),
            key_type: crypto_core::pki::KeyType::EcdsaP256,
            ttl: Duration::from_secs(10 * 365 * 86_400),
            policy,
        };
        kms.init_ca(&init).expect("CA");
        let serial_hex = |s: &str| crypto_core::pki::Serial::parse(s).expect("serial").to_hex();
        for serial in SERIALS.map(serial_hex) {
            kms.store()
                .add_certificate(&CertificateRecord {
                    serial,
                    common_name: "web.tenant-a.svc".into(),
                    sans: vec!["dns:web.tenant-a.svc".into(), "ip:10.1.2.3".into()],
                    not_after: 4_000_000_000,
                    issued_at: CREATED_AT,
                    revoked_at: None,
                    revoke_reason: None,
                })
                .expect("inventory");
        }
        kms.store().revoke_certificate(&serial_hex(SERIALS[1]), 1, CREATED_AT + 1).expect("revoke");
        for (id, name) in TOKEN_IDS.iter().zip(["ci", "old-ci"]) {
            let token = TokenRecord {
                id: (*id).into(),
                name: name.into(),
                secret_hash: vec![0x11; 32],
                created_at: CREATED_AT,
                expires_at: None,
                revoked_at: None,
            };
            kms.store().add_token(&token).expect("token");
        }
        kms.store().revoke_tokens(TOKEN_IDS[1], CREATED_AT + 1).expect("revoke token");

        let conn = rusqlite::Connection::open(dir.join("keystore.db")).expect("second connection");
        // Restoring deletes parents before children (bundled SQLite enforces foreign keys
        // by default).
        conn.execute_batch("PRAGMA foreign_keys=OFF;").expect("pragma");
        let snapshot = dir.join("snapshot.db");
        conn.execute("VACUUM INTO ?1", [snapshot.to_str().expect("utf-8 path")]).expect("snapshot");
        conn.execute("ATTACH DATABASE ?1 AS snap", [snapshot.to_str().expect("utf-8 path")]).expect("attach");
        let seen: i64 = conn.query_row("PRAGMA data_version", [], |r| r.get(0)).expect("data_version");

        let (reporter, health) = rt.block_on(async {
            let (reporter, _) = tonic_health::server::health_reporter();
            reporter.set_serving::<pb::kms_server::KmsServer<KmsService>>().await;
            let health = HealthService::from_health_reporter(reporter.clone());
            (reporter, health)
        });
        drop(reporter);
        let server = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("reflection");
        let reflection: Reflect = Box::new(move |framed| {
            let mut server = server.clone();
            Box::pin(async move {
                let request = tonic::codegen::http::Request::builder()
                    .method("POST")
                    .uri("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(Full::new(Bytes::from(framed)))
                    .expect("request");
                let Ok(response) = server.call(request).await;
                let _ = response.into_body().collect().await;
            })
        });

        let fixture = Fixture {
            rt,
            dir,
            store,
            audit,
            metrics,
            restore: Mutex::new((conn, seen)),
            services: Mutex::new(s),
            health,
            reflection,
            runs: AtomicU64::new(0),
        };
        // Fresh services: nothing cached from building the fixture.
        *fixture.services.lock().unwrap_or_else(|p| p.into_inner()) = fixture.services();
        if let Some(out) = std::env::var_os("FUZZ_WRITE_SEEDS") {
            write_seeds(&fixture, Path::new(&out), old_ciphertext, old_data_key);
            fixture.restore_if_changed();
        }
        fixture
    })
}

/// The response, or `None` for an error status that is not a caught panic.
fn outcome<T>(r: Result<Response<T>, Status>) -> Option<T> {
    match r {
        Ok(r) => Some(r.into_inner()),
        Err(s) => {
            check_status(&s);
            None
        }
    }
}

fn check_status(s: &Status) {
    assert!(!(s.code() == Code::Internal && PANICKED.contains(&s.message())), "a handler panicked: {s:?}");
}

/// The length-delimited messages of `body` as gRPC frames; `None` if one does not decode.
fn frames<M: Message + Default>(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut framed = Vec::new();
    while !body.is_empty() {
        let m = M::decode_length_delimited(&mut body).ok()?;
        let bytes = m.encode_to_vec();
        framed.push(0);
        framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        framed.extend_from_slice(&bytes);
    }
    Some(framed)
}

/// A request stream of the length-delimited messages of `body`.
fn stream_of<M: Message + Default + Send + 'static>(body: &[u8]) -> Option<Request<Streaming<M>>> {
    let framed = frames::<M>(body)?;
    let decoder = tonic_prost::ProstDecoder::<M>::default();
    Some(Request::new(Streaming::new_request(decoder, Full::new(Bytes::from(framed)), None, Some(1 << 20))))
}

async fn drain<T>(r: Result<Response<impl tokio_stream::Stream<Item = Result<T, Status>> + Unpin>, Status>) {
    let Some(mut stream) = outcome(r) else { return };
    while let Some(item) = stream.next().await {
        if let Err(s) = item {
            check_status(&s);
        }
    }
}

/// Whether `key_type` would make the CA generate an RSA key (slow).
fn generates_rsa(key_type: &str) -> bool {
    use crypto_core::pki::KeyType;
    key_type.is_empty()
        || matches!(KeyType::from_name(key_type), Ok(KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096))
}

/// Whether VerifyPassword on `hash` is cheap: refused before any work, or small parameters.
fn cheap_to_verify(hash: &str) -> bool {
    match crypto_core::password::params_of(hash) {
        Err(_) => true,
        Ok(p) => {
            let refused = p.memory_kib > kms_sidecar::grpc::MAX_VERIFY_MEMORY_KIB || p.iterations > 8 || p.lanes > 4;
            refused || (p.memory_kib <= 256 && p.iterations <= 2)
        }
    }
}

async fn run(fx: &Fixture, s: &Services, rpc: &str, body: &[u8]) {
    macro_rules! unary {
        ($svc:expr, $trait:ident :: $method:ident, $msg:ty) => {{
            let Ok(m) = <$msg>::decode(body) else { return };
            let _ = outcome($trait::$method($svc, Request::new(m)).await);
        }};
    }
    match rpc {
        "CreateKey" => unary!(&s.v1, KmsRpc::create_key, pb::CreateKeyRequest),
        "DescribeKey" => unary!(&s.v1, KmsRpc::describe_key, pb::KeyRef),
        "ListKeys" => unary!(&s.v1, KmsRpc::list_keys, pb::ListKeysRequest),
        "RotateKey" => unary!(&s.v1, KmsRpc::rotate_key, pb::KeyRef),
        "EnableKey" => unary!(&s.v1, KmsRpc::enable_key, pb::KeyRef),
        "DisableKey" => unary!(&s.v1, KmsRpc::disable_key, pb::KeyRef),
        "ScheduleKeyDeletion" => unary!(&s.v1, KmsRpc::schedule_key_deletion, pb::ScheduleKeyDeletionRequest),
        "CancelKeyDeletion" => unary!(&s.v1, KmsRpc::cancel_key_deletion, pb::KeyRef),
        "SetMinDecryptVersion" => unary!(&s.v1, KmsRpc::set_min_decrypt_version, pb::SetMinDecryptVersionRequest),
        "SetRotationPeriod" => unary!(&s.v1, KmsRpc::set_rotation_period, pb::SetRotationPeriodRequest),
        "Encrypt" => unary!(&s.v1, KmsRpc::encrypt, pb::EncryptRequest),
        "Decrypt" => unary!(&s.v1, KmsRpc::decrypt, pb::DecryptRequest),
        "BatchEncrypt" => unary!(&s.v1, KmsRpc::batch_encrypt, pb::BatchEncryptRequest),
        "BatchDecrypt" => unary!(&s.v1, KmsRpc::batch_decrypt, pb::BatchDecryptRequest),
        "ReEncrypt" => unary!(&s.v1, KmsRpc::re_encrypt, pb::ReEncryptRequest),
        "GenerateDataKey" => unary!(&s.v1, KmsRpc::generate_data_key, pb::GenerateDataKeyRequest),
        "DecryptDataKey" => unary!(&s.v1, KmsRpc::decrypt_data_key, pb::WrappedDataKey),
        "ReEncryptDataKey" => unary!(&s.v1, KmsRpc::re_encrypt_data_key, pb::WrappedDataKey),
        "EncryptStream" => {
            let Some(r) = stream_of::<pb::EncryptStreamRequest>(body) else { return };
            drain(s.v1.encrypt_stream(r).await).await;
        }
        "DecryptStream" => {
            let Some(r) = stream_of::<pb::DecryptStreamRequest>(body) else { return };
            drain(s.v1.decrypt_stream(r).await).await;
        }
        "PutSecret" => unary!(&s.v1, KmsRpc::put_secret, pb::PutSecretRequest),
        "GetSecret" => unary!(&s.v1, KmsRpc::get_secret, pb::GetSecretRequest),
        "ListSecrets" => unary!(&s.v1, KmsRpc::list_secrets, pb::ListSecretsRequest),
        "DeleteSecret" => unary!(&s.v1, KmsRpc::delete_secret, pb::DeleteSecretRequest),
        "InitCa" => {
            let Ok(m) = pb::InitCaRequest::decode(body) else { return };
            if !generates_rsa(&m.key_type) {
                let _ = outcome(s.v1.init_ca(Request::new(m)).await);
            }
        }
        "IssueCertificate" => {
            let Ok(m) = pb::IssueCertificateRequest::decode(body) else { return };
            if !generates_rsa(&m.key_type) {
                let _ = outcome(s.v1.issue_certificate(Request::new(m)).await);
            }
        }
        "SignCsr" => unary!(&s.v1, KmsRpc::sign_csr, pb::SignCsrRequest),
        "RevokeCertificate" => unary!(&s.v1, KmsRpc::revoke_certificate, pb::RevokeCertificateRequest),
        "ListCertificates" => unary!(&s.v1, KmsRpc::list_certificates, pb::ListCertificatesRequest),
        "GetCaBundle" => unary!(&s.v1, KmsRpc::get_ca_bundle, pb::GetCaBundleRequest),
        "GetCrl" => unary!(&s.v1, KmsRpc::get_crl, pb::GetCrlRequest),
        "WhoAmI" => {
            let Ok(m) = pb::WhoAmIRequest::decode(body) else { return };
            let who = outcome(s.v1.who_am_i(Request::new(m)).await).expect("WhoAmI answers");
            assert_eq!(who.identity, "anonymous");
        }
        "CreateToken" => unary!(&s.v1, KmsRpc::create_token, pb::CreateTokenRequest),
        "ListTokens" => unary!(&s.v1, KmsRpc::list_tokens, pb::ListTokensRequest),
        "RevokeToken" => unary!(&s.v1, KmsRpc::revoke_token, pb::RevokeTokenRequest),
        "AuditHead" => unary!(&s.v1, KmsRpc::audit_head, pb::AuditHeadRequest),
        "HashPassword" => {
            let Ok(m) = pb::HashPasswordRequest::decode(body) else { return };
            if m.password.len() <= 1 || m.password.len() > 4096 {
                let _ = outcome(s.v1.hash_password(Request::new(m)).await);
            }
        }
        "VerifyPassword" => {
            let Ok(m) = pb::VerifyPasswordRequest::decode(body) else { return };
            if cheap_to_verify(&m.hash) {
                let _ = outcome(s.v1.verify_password(Request::new(m)).await);
            }
        }
        "K8sStatus" => unary!(&s.k8s, KeyManagementService::status, k8s::StatusRequest),
        "K8sEncrypt" => unary!(&s.k8s, KeyManagementService::encrypt, k8s::EncryptRequest),
        "K8sDecrypt" => unary!(&s.k8s, KeyManagementService::decrypt, k8s::DecryptRequest),
        "HealthCheck" => unary!(&fx.health, Health::check, HealthCheckRequest),
        "HealthWatch" => {
            let Ok(m) = HealthCheckRequest::decode(body) else { return };
            // The stream answers at once, then waits for changes: only the first answer.
            if let Some(mut watch) = outcome(fx.health.watch(Request::new(m)).await) {
                let _ = watch.next().await;
            }
        }
        "ServerReflectionInfo" => {
            let Some(framed) = frames::<tonic_reflection::pb::v1::ServerReflectionRequest>(body) else { return };
            (fx.reflection)(framed).await;
        }
        other => unreachable!("RPC {other} has no dispatch"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let fx = fixture();
    let rpc = RPCS[usize::from(selector) % RPCS.len()];
    let services = fx.services.lock().unwrap_or_else(|p| p.into_inner()).clone();
    fx.rt.block_on(run(fx, &services, rpc, body));
    drop(services);
    fx.restore_if_changed();
    fx.trim_audit();
});

/// Writes the seeds: valid requests against the fixture, made with the fixture's own
/// answers where they carry ciphertexts.
fn write_seeds(fx: &Fixture, out: &Path, old_ciphertext: Vec<u8>, old_data_key: crypto_core::provider::WrappedKey) {
    std::fs::create_dir_all(out).expect("seed dir");
    let write = |name: &str, suffix: &str, body: Vec<u8>| {
        let i = RPCS.iter().position(|r| *r == name).expect("RPC name");
        let mut seed = vec![i as u8];
        seed.extend_from_slice(&body);
        let file = if suffix.is_empty() { name.to_owned() } else { format!("{name}-{suffix}") };
        std::fs::write(out.join(file), seed).expect("seed");
    };
    let s = fx.services.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let ctx = HashMap::from([("tenant".to_owned(), "a".to_owned())]);
    let key = |name: &str| pb::KeyRef { name: name.into() }.encode_to_vec();

    write("CreateKey", "", pb::CreateKeyRequest { name: "app/new".into() }.encode_to_vec());
    write("CreateKey", "exists", pb::CreateKeyRequest { name: "app/db".into() }.encode_to_vec());
    write("DescribeKey", "", key("app/db"));
    write("ListKeys", "", Vec::new());
    write("RotateKey", "", key("app/db"));
    write("RotateKey", "pending", key("app/pending"));
    write("EnableKey", "", key("app/disabled"));
    write("DisableKey", "", key("app/db"));
    let schedule = pb::ScheduleKeyDeletionRequest { name: "app/db".into(), pending_window_seconds: 7 * 86_400 };
    write("ScheduleKeyDeletion", "", schedule.encode_to_vec());
    write("CancelKeyDeletion", "", key("app/pending"));
    let min = pb::SetMinDecryptVersionRequest { name: "app/db".into(), min_decrypt_version: 2 };
    write("SetMinDecryptVersion", "", min.encode_to_vec());
    let period = pb::SetRotationPeriodRequest { name: "app/db".into(), rotation_period_seconds: 3_600 };
    write("SetRotationPeriod", "", period.encode_to_vec());

    let encrypt = pb::EncryptRequest { key_name: "app/db".into(), plaintext: b"hello".to_vec(), context: ctx.clone() };
    write("Encrypt", "", encrypt.encode_to_vec());
    let sealed = fx.rt.block_on(s.v1.encrypt(Request::new(encrypt.clone()))).expect("encrypt").into_inner();
    let decrypt = pb::DecryptRequest { ciphertext: sealed.ciphertext.clone(), context: ctx.clone() };
    write("Decrypt", "", decrypt.encode_to_vec());
    let old = pb::DecryptRequest { ciphertext: old_ciphertext.clone(), context: ctx.clone() };
    write("Decrypt", "version1", old.encode_to_vec());
    let other = pb::EncryptRequest { key_name: "app/min2".into(), plaintext: Vec::new(), context: HashMap::new() };
    write("BatchEncrypt", "", pb::BatchEncryptRequest { items: vec![encrypt.clone(), other] }.encode_to_vec());
    write("BatchDecrypt", "", pb::BatchDecryptRequest { items: vec![decrypt.clone(), old] }.encode_to_vec());
    write("ReEncrypt", "", pb::ReEncryptRequest { ciphertext: old_ciphertext }.encode_to_vec());
    let gdk = pb::GenerateDataKeyRequest { key_name: "app/db".into(), without_plaintext: false };
    write("GenerateDataKey", "", gdk.encode_to_vec());
    let wrapped = kms_sidecar::grpc::wrapped_to_pb(old_data_key);
    write("DecryptDataKey", "", wrapped.encode_to_vec());
    write("ReEncryptDataKey", "", wrapped.encode_to_vec());

    let first =
        pb::EncryptStreamRequest { key_name: "app/db".into(), context: ctx.clone(), chunk: b"stream ".to_vec() };
    let next = pb::EncryptStreamRequest { chunk: b"of chunks".to_vec(), ..Default::default() };
    let stream = [first.encode_length_delimited_to_vec(), next.encode_length_delimited_to_vec()].concat();
    write("EncryptStream", "", stream.clone());
    let ciphertext = fx.rt.block_on(async {
        let r = stream_of::<pb::EncryptStreamRequest>(&stream).expect("stream");
        let mut out = Vec::new();
        let mut answers = s.v1.encrypt_stream(r).await.expect("encrypt stream").into_inner();
        while let Some(m) = answers.next().await {
            out.extend_from_slice(&m.expect("chunk").chunk);
        }
        out
    });
    let (head, tail) = ciphertext.split_at(ciphertext.len() / 2);
    let first = pb::DecryptStreamRequest { context: ctx.clone(), chunk: head.to_vec() };
    let next = pb::DecryptStreamRequest { chunk: tail.to_vec(), ..Default::default() };
    let stream = [first.encode_length_delimited_to_vec(), next.encode_length_delimited_to_vec()].concat();
    write("DecryptStream", "", stream);

    let put = pb::PutSecretRequest { name: "app/password".into(), key_name: "app/db".into(), value: b"v3".to_vec() };
    write("PutSecret", "", put.encode_to_vec());
    write("GetSecret", "", pb::GetSecretRequest { name: "app/password".into(), version: 0 }.encode_to_vec());
    write("GetSecret", "version1", pb::GetSecretRequest { name: "app/password".into(), version: 1 }.encode_to_vec());
    write("ListSecrets", "", Vec::new());
    write("DeleteSecret", "", pb::DeleteSecretRequest { name: "app/password".into() }.encode_to_vec());

    let init = pb::InitCaRequest {
        common_name: "Another CA".into(),
        key_type: "p256".into(),
        ttl_seconds: 86_400,
        allowed_dns: vec!["*.example.svc".into()],
        allowed_ip: vec!["10.0.0.0/8".into()],
        allowed_uri_prefixes: vec!["spiffe://c.local/".into()],
    };
    write("InitCa", "", init.encode_to_vec());
    let issue = pb::IssueCertificateRequest {
        common_name: "web.tenant-a.svc".into(),
        sans: vec!["dns:web.tenant-a.svc".into(), "ip:10.1.2.3".into(), "uri:spiffe://c.local/web".into()],
        key_type: "p256".into(),
        ttl_seconds: 86_400,
        usage: "both".into(),
    };
    write("IssueCertificate", "", issue.encode_to_vec());
    let csr = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/pki_csr/ec.der")).expect("CSR seed");
    let sign = pb::SignCsrRequest { csr, ttl_seconds: 86_400, usage: "server".into() };
    write("SignCsr", "", sign.encode_to_vec());
    let revoke = pb::RevokeCertificateRequest { serial: SERIALS[0].into(), reason: "keyCompromise".into() };
    write("RevokeCertificate", "", revoke.encode_to_vec());
    write("ListCertificates", "", Vec::new());
    write("GetCaBundle", "", Vec::new());
    write("GetCrl", "", Vec::new());
    write("WhoAmI", "", Vec::new());
    write("CreateToken", "", pb::CreateTokenRequest { name: "deploy".into(), ttl_seconds: 3_600 }.encode_to_vec());
    write("ListTokens", "", Vec::new());
    write("RevokeToken", "", pb::RevokeTokenRequest { id_or_name: TOKEN_IDS[0].into() }.encode_to_vec());
    write("RevokeToken", "name", pb::RevokeTokenRequest { id_or_name: "ci".into() }.encode_to_vec());
    write("AuditHead", "", Vec::new());
    write("HashPassword", "", pb::HashPasswordRequest { password: b"x".to_vec() }.encode_to_vec());
    let cheap = crypto_core::password::PasswordParams { memory_kib: 64, iterations: 1, lanes: 1 };
    let hash = crypto_core::password::PasswordHasher::new(cheap).expect("params").hash(b"secret").expect("hash");
    let verify = pb::VerifyPasswordRequest { hash, password: b"secret".to_vec() };
    write("VerifyPassword", "", verify.encode_to_vec());

    write("K8sStatus", "", Vec::new());
    let k8s_encrypt = k8s::EncryptRequest { plaintext: vec![0x42; 32], uid: "uid-1".into() };
    write("K8sEncrypt", "", k8s_encrypt.encode_to_vec());
    let sealed = fx.rt.block_on(s.k8s.encrypt(Request::new(k8s_encrypt))).expect("k8s encrypt").into_inner();
    let k8s_decrypt = k8s::DecryptRequest {
        ciphertext: sealed.ciphertext,
        uid: "uid-2".into(),
        key_id: sealed.key_id,
        annotations: sealed.annotations,
    };
    write("K8sDecrypt", "", k8s_decrypt.encode_to_vec());

    write("HealthCheck", "", HealthCheckRequest { service: "kms.v1.Kms".into() }.encode_to_vec());
    write("HealthWatch", "", HealthCheckRequest { service: String::new() }.encode_to_vec());
    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_request::MessageRequest};
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let symbol = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("kms.v1.Kms".into())),
    };
    let stream = [list.encode_length_delimited_to_vec(), symbol.encode_length_delimited_to_vec()].concat();
    write("ServerReflectionInfo", "", stream);
}
