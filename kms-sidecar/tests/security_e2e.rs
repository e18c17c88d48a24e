//! The sidecar's security promises, end to end against the real `kms-sidecar serve`
//! process: default-deny authorization of every RPC (audited), tenant isolation, API
//! tokens (shown once, stored hashed, revoked at once), policy reload on SIGHUP, the
//! hash-chained audit log (tampering found by `kmsctl audit verify`, fail closed when it
//! cannot be written), rate and concurrency limits, password hashing, the metrics
//! endpoint, and a scan showing no test secret reached logs, audit files or metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kms_sidecar::client::connect_unix;
use kms_sidecar::grpc::pb;
use kms_sidecar::grpc::pb::kms_client::KmsClient;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

mod common;
use common::{Sidecar, kmsctl_at, ok, policy_file};

type Client = KmsClient<InterceptedService<Channel, kms_sidecar::client::BearerToken>>;

/// A client on `socket` sending `token` (if any) as its bearer token.
async fn client(socket: &Path, token: Option<&str>) -> Client {
    let channel = connect_unix(socket.to_path_buf()).await.unwrap();
    KmsClient::with_interceptor(channel, kms_sidecar::client::BearerToken::new(token).unwrap())
}

/// `kmsctl token create NAME` through the owner's socket; returns the token text.
fn create_token(socket: &Path, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", name];
    args.extend_from_slice(extra);
    let token = ok(socket, &args).trim().to_owned();
    assert!(token.starts_with("kms_") && token.len() == 4 + 16 + 1 + 64, "{token}");
    token
}

/// All audit records (parsed) in the data dir's audit directory, in chain order.
fn audit_records(data: &Path) -> Vec<serde_json::Value> {
    let dir = data.join("audit");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    // The active file holds the newest records; rotated ones sort before it by name.
    files.sort_by_key(|p| p.file_name().unwrap() == "audit.log");
    files
        .iter()
        .flat_map(|f| std::fs::read_to_string(f).unwrap().lines().map(str::to_owned).collect::<Vec<_>>())
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect()
}

fn verify_audit(data: &Path, extra: &[&str]) -> std::process::Output {
    let dir = data.join("audit");
    let key = data.join("audit.key");
    let mut args = vec!["audit", "verify", dir.to_str().unwrap(), "--key-file", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    kmsctl_at("unix:///nonexistent", &[], &args)
}

fn ctx() -> HashMap<String, String> {
    [("app".to_owned(), "billing".to_owned())].into_iter().collect()
}

const TENANTS: &str = r#"
[roles.tenant-a]
grants = [{ operations = ["admin", "encrypt", "decrypt", "rewrap", "datakey"], keys = ["tenant-a/**"] },
          { operations = ["secrets-read", "secrets-write"], secrets = ["tenant-a/**"] },
          { operations = ["pki-issue"], names = ["cn:*.tenant-a.svc", "dns:*.tenant-a.svc"] }]
[roles.tenant-b]
grants = [{ operations = ["admin", "encrypt", "decrypt", "rewrap", "datakey"], keys = ["tenant-b/**"] },
          { operations = ["secrets-read", "secrets-write"], secrets = ["tenant-b/**"] }]
[roles.hasher]
grants = [{ operations = ["password"] }]
[roles.auditor]
grants = [{ operations = ["audit-read"] }]
[[bindings]]
principals = ["token:tenant-a"]
roles = ["tenant-a", "hasher"]
[[bindings]]
principals = ["token:tenant-b"]
roles = ["tenant-b"]
[[bindings]]
principals = ["token:auditor"]
roles = ["auditor"]
"#;

/// Every RPC of kms.v1 called by a principal without any role: each one is refused with
/// PERMISSION_DENIED (except the three open ones), nothing is created, and every refusal
/// is in the audit log with the principal, operation and code.
#[test]
fn every_operation_is_denied_without_a_role_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let policy = policy_file(dir.path(), TENANTS);
    let sidecar = Sidecar::start(&data, &["--policy", policy.to_str().unwrap()]);
    ok(&sidecar.socket, &["key", "create", "tenant-a/db"]);
    let nobody = create_token(&sidecar.socket, "nobody", &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let denied_ops = rt.block_on(async {
        let mut owner = client(&sidecar.socket, None).await;
        let ct = owner
            .encrypt(pb::EncryptRequest { key_name: "tenant-a/db".into(), plaintext: b"x".to_vec(), context: ctx() })
            .await
            .unwrap()
            .into_inner()
            .ciphertext;
        let dk = owner
            .generate_data_key(pb::GenerateDataKeyRequest { key_name: "tenant-a/db".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .wrapped
            .unwrap();
        let mut c = client(&sidecar.socket, Some(&nobody)).await;
        let key = || pb::KeyRef { name: "tenant-a/db".into() };
        let mut results: Vec<(&str, Result<(), tonic::Status>)> = vec![
            ("CreateKey", c.create_key(pb::CreateKeyRequest { name: "tenant-a/new".into() }).await.map(drop)),
            ("DescribeKey", c.describe_key(key()).await.map(drop)),
            ("RotateKey", c.rotate_key(key()).await.map(drop)),
            ("EnableKey", c.enable_key(key()).await.map(drop)),
            ("DisableKey", c.disable_key(key()).await.map(drop)),
            (
                "ScheduleKeyDeletion",
                c.schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
                    name: "tenant-a/db".into(),
                    pending_window_seconds: 86400,
                })
                .await
                .map(drop),
            ),
            ("CancelKeyDeletion", c.cancel_key_deletion(key()).await.map(drop)),
            (
                "SetMinDecryptVersion",
                c.set_min_decrypt_version(pb::SetMinDecryptVersionRequest {
                    name: "tenant-a/db".into(),
                    min_decrypt_version: 1,
                })
                .await
                .map(drop),
            ),
            (
                "SetRotationPeriod",
                c.set_rotation_period(pb::SetRotationPeriodRequest {
                    name: "tenant-a/db".into(),
                    rotation_period_seconds: 86400,
                })
                .await
                .map(drop),
            ),
            (
                "Encrypt",
                c.encrypt(pb::EncryptRequest {
                    key_name: "tenant-a/db".into(),
                    plaintext: b"x".to_vec(),
                    context: ctx(),
                })
                .await
                .map(drop),
            ),
            ("Decrypt", c.decrypt(pb::DecryptRequest { ciphertext: ct.clone(), context: ctx() }).await.map(drop)),
            ("ReEncrypt", c.re_encrypt(pb::ReEncryptRequest { ciphertext: ct.clone() }).await.map(drop)),
            (
                "GenerateDataKey",
                c.generate_data_key(pb::GenerateDataKeyRequest {
                    key_name: "tenant-a/db".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
            ("DecryptDataKey", c.decrypt_data_key(dk.clone()).await.map(drop)),
            ("ReEncryptDataKey", c.re_encrypt_data_key(dk.clone()).await.map(drop)),
            (
                "PutSecret",
                c.put_secret(pb::PutSecretRequest {
                    name: "tenant-a/pw".into(),
                    key_name: "tenant-a/db".into(),
                    value: b"v".to_vec(),
                })
                .await
                .map(drop),
            ),
            (
                "GetSecret",
                c.get_secret(pb::GetSecretRequest { name: "tenant-a/pw".into(), version: 0 }).await.map(drop),
            ),
            ("DeleteSecret", c.delete_secret(pb::DeleteSecretRequest { name: "tenant-a/pw".into() }).await.map(drop)),
            (
                "InitCa",
                c.init_ca(pb::InitCaRequest { common_name: "evil".into(), ..Default::default() }).await.map(drop),
            ),
            (
                "IssueCertificate",
                c.issue_certificate(pb::IssueCertificateRequest {
                    common_name: "x.tenant-a.svc".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
            (
                "RevokeCertificate",
                c.revoke_certificate(pb::RevokeCertificateRequest { serial: "01".into(), ..Default::default() })
                    .await
                    .map(drop),
            ),
            ("ListCertificates", c.list_certificates(pb::ListCertificatesRequest {}).await.map(drop)),
            (
                "SignCsr",
                c.sign_csr(pb::SignCsrRequest { csr: b"not even a CSR".to_vec(), ..Default::default() })
                    .await
                    .map(drop),
            ),
            (
                "CreateToken",
                c.create_token(pb::CreateTokenRequest { name: "x".into(), ttl_seconds: 0 }).await.map(drop),
            ),
            ("ListTokens", c.list_tokens(pb::ListTokensRequest {}).await.map(drop)),
            ("RevokeToken", c.revoke_token(pb::RevokeTokenRequest { id_or_name: "tenant-a".into() }).await.map(drop)),
            ("AuditHead", c.audit_head(pb::AuditHeadRequest {}).await.map(drop)),
            ("HashPassword", c.hash_password(pb::HashPasswordRequest { password: b"pw".to_vec() }).await.map(drop)),
            (
                "VerifyPassword",
                c.verify_password(pb::VerifyPasswordRequest { hash: "$argon2id$x".into(), password: b"pw".to_vec() })
                    .await
                    .map(drop),
            ),
        ];
        // The streams: refused before any data flows.
        let enc = c
            .encrypt_stream(tokio_stream::iter(vec![pb::EncryptStreamRequest {
                key_name: "tenant-a/db".into(),
                chunk: b"data".to_vec(),
                ..Default::default()
            }]))
            .await
            .map(drop);
        results.push(("EncryptStream", enc));
        let dec = c
            .decrypt_stream(tokio_stream::iter(vec![pb::DecryptStreamRequest { chunk: ct.clone(), context: ctx() }]))
            .await
            .map(drop);
        results.push(("DecryptStream", dec));
        let mut ops = Vec::new();
        for (op, r) in results {
            let e = r.expect_err(op);
            assert_eq!(e.code(), Code::PermissionDenied, "{op}: {e:?}");
            ops.push(op);
        }
        // Batches answer per item.
        let b = c
            .batch_encrypt(pb::BatchEncryptRequest {
                items: vec![pb::EncryptRequest {
                    key_name: "tenant-a/db".into(),
                    plaintext: b"x".to_vec(),
                    context: ctx(),
                }],
            })
            .await
            .unwrap()
            .into_inner();
        let Some(pb::batch_encrypt_result::Result::Error(e)) = &b.results[0].result else { panic!("{b:?}") };
        assert_eq!(e.code, Code::PermissionDenied as i32);
        let b = c
            .batch_decrypt(pb::BatchDecryptRequest {
                items: vec![pb::DecryptRequest { ciphertext: ct.clone(), context: ctx() }],
            })
            .await
            .unwrap()
            .into_inner();
        let Some(pb::batch_decrypt_result::Result::Error(e)) = &b.results[0].result else { panic!("{b:?}") };
        assert_eq!(e.code, Code::PermissionDenied as i32);
        // Lists show nothing the caller may not use.
        assert!(c.list_keys(pb::ListKeysRequest {}).await.unwrap().into_inner().keys.is_empty());
        assert!(c.list_secrets(pb::ListSecretsRequest {}).await.unwrap().into_inner().secrets.is_empty());
        // Open to every authenticated caller.
        let who = c.who_am_i(pb::WhoAmIRequest {}).await.unwrap().into_inner();
        assert_eq!(who.identity, "token:nobody");
        c.get_ca_bundle(pb::GetCaBundleRequest {}).await.expect_err("no CA yet: NOT_FOUND, not denied");
        // Nothing was changed: the key is still at version 1 and enabled.
        let k = owner.describe_key(key()).await.unwrap().into_inner();
        assert_eq!((k.primary_version, k.state), (1, pb::KeyState::Enabled as i32));
        assert!(owner.list_keys(pb::ListKeysRequest {}).await.unwrap().into_inner().keys.len() == 1);
        ops
    });
    assert_eq!(denied_ops.len(), 31);
    sidecar.stop();
    let records = audit_records(&data);
    for op in denied_ops {
        let hit = records.iter().any(|r| {
            r["op"] == op
                && r["principal"] == "token:nobody"
                && r["code"] == "PERMISSION_DENIED"
                && r["phase"] == "result"
        });
        assert!(hit, "no audit record of the denied {op}");
    }
    // No attempt record for a denied state change: it was refused before.
    assert!(!records.iter().any(|r| r["principal"] == "token:nobody" && r["phase"] == "attempt"));
    let v = verify_audit(&data, &[]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

/// Tenant B can neither use, see, nor probe tenant A's keys and secrets, even by guessing
/// names; a denial looks the same whether or not the key exists.
#[test]
fn tenants_cannot_touch_each_others_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let policy = policy_file(dir.path(), TENANTS);
    let sidecar = Sidecar::start(&data, &["--policy", policy.to_str().unwrap()]);
    let a = create_token(&sidecar.socket, "tenant-a", &[]);
    let b = create_token(&sidecar.socket, "tenant-b", &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ca = client(&sidecar.socket, Some(&a)).await;
        let mut cb = client(&sidecar.socket, Some(&b)).await;
        ca.create_key(pb::CreateKeyRequest { name: "tenant-a/db".into() }).await.unwrap();
        cb.create_key(pb::CreateKeyRequest { name: "tenant-b/db".into() }).await.unwrap();
        let e = cb.create_key(pb::CreateKeyRequest { name: "tenant-a/evil".into() }).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let ct = ca
            .encrypt(pb::EncryptRequest {
                key_name: "tenant-a/db".into(),
                plaintext: b"a-data".to_vec(),
                context: ctx(),
            })
            .await
            .unwrap()
            .into_inner()
            .ciphertext;
        // A reads its own data.
        let pt = ca.decrypt(pb::DecryptRequest { ciphertext: ct.clone(), context: ctx() }).await.unwrap();
        assert_eq!(pt.into_inner().plaintext, b"a-data");
        // B cannot decrypt, rewrap, encrypt under, describe or rotate A's key.
        let e = cb.decrypt(pb::DecryptRequest { ciphertext: ct.clone(), context: ctx() }).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let e = cb.re_encrypt(pb::ReEncryptRequest { ciphertext: ct.clone() }).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let e = cb
            .encrypt(pb::EncryptRequest { key_name: "tenant-a/db".into(), plaintext: b"b".to_vec(), context: ctx() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let exists = cb.describe_key(pb::KeyRef { name: "tenant-a/db".into() }).await.unwrap_err();
        let ghost = cb.describe_key(pb::KeyRef { name: "tenant-a/ghost".into() }).await.unwrap_err();
        assert_eq!((exists.code(), ghost.code()), (Code::PermissionDenied, Code::PermissionDenied));
        assert_eq!(
            exists.message().replace("tenant-a/db", "K"),
            ghost.message().replace("tenant-a/ghost", "K"),
            "a denial must not reveal whether the key exists"
        );
        let e = cb.rotate_key(pb::KeyRef { name: "tenant-a/db".into() }).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        // "tenant-a*"-style prefixes do not leak: tenant-ab is not tenant-a.
        let e = ca.create_key(pb::CreateKeyRequest { name: "tenant-ab/x".into() }).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        // Data keys of A cannot be unwrapped by B.
        let w = ca
            .generate_data_key(pb::GenerateDataKeyRequest { key_name: "tenant-a/db".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .wrapped
            .unwrap();
        assert_eq!(cb.decrypt_data_key(w.clone()).await.unwrap_err().code(), Code::PermissionDenied);
        assert!(ca.decrypt_data_key(w).await.is_ok());
        // Secrets: B cannot write into A's namespace, nor under A's key, nor read A's.
        ca.put_secret(pb::PutSecretRequest {
            name: "tenant-a/pw".into(),
            key_name: "tenant-a/db".into(),
            value: b"s3cr3t-a".to_vec(),
        })
        .await
        .unwrap();
        let e = cb
            .put_secret(pb::PutSecretRequest {
                name: "tenant-b/pw".into(),
                key_name: "tenant-a/db".into(),
                value: b"v".to_vec(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "sealing under another tenant's key");
        let e = cb.get_secret(pb::GetSecretRequest { name: "tenant-a/pw".into(), version: 0 }).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        // Listings are filtered.
        let names: Vec<String> =
            cb.list_keys(pb::ListKeysRequest {}).await.unwrap().into_inner().keys.into_iter().map(|k| k.name).collect();
        assert_eq!(names, ["tenant-b/db"]);
        assert!(cb.list_secrets(pb::ListSecretsRequest {}).await.unwrap().into_inner().secrets.is_empty());
        // Certificates only for A's own names.
        let mut owner = client(&sidecar.socket, None).await;
        owner
            .init_ca(pb::InitCaRequest {
                common_name: "Test CA".into(),
                key_type: "p256".into(),
                allowed_dns: vec!["*.tenant-a.svc".into(), "*.tenant-b.svc".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        let issue = |cn: &str, san: &str| pb::IssueCertificateRequest {
            common_name: cn.into(),
            sans: vec![san.into()],
            key_type: "p256".into(),
            ttl_seconds: 3600,
            ..Default::default()
        };
        ca.issue_certificate(issue("api.tenant-a.svc", "dns:api.tenant-a.svc")).await.unwrap();
        let e = ca.issue_certificate(issue("api.tenant-a.svc", "dns:api.tenant-b.svc")).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let e = cb.issue_certificate(issue("api.tenant-b.svc", "dns:api.tenant-b.svc")).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "tenant-b holds no pki-issue grant");
    });
    sidecar.stop();
}

/// Tokens: shown once, stored only as a hash, listed without secrets, revoked at once,
/// expiring on time; a bad token never falls back to the transport identity.
#[test]
fn token_lifecycle_and_immediate_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let policy = policy_file(dir.path(), TENANTS);
    let sidecar = Sidecar::start(&data, &["--policy", policy.to_str().unwrap()]);
    let token = create_token(&sidecar.socket, "tenant-a", &[]);
    let short = create_token(&sidecar.socket, "tenant-a", &["--ttl", "1s"]);
    let listed = ok(&sidecar.socket, &["--json", "token", "list"]);
    let secret = token.rsplit('_').next().unwrap();
    assert!(!listed.contains(secret), "list shows no token text");
    let list: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = client(&sidecar.socket, Some(&token)).await;
        assert_eq!(c.who_am_i(pb::WhoAmIRequest {}).await.unwrap().into_inner().identity, "token:tenant-a");
        c.create_key(pb::CreateKeyRequest { name: "tenant-a/k".into() }).await.unwrap();
        // A wrong secret for a real id, a garbage token, a non-Bearer scheme: all
        // UNAUTHENTICATED, none treated as the socket's (owner) identity.
        let forged = format!("{}{}", &token[..token.len() - 1], if token.ends_with('0') { '1' } else { '0' });
        for bad in [forged.as_str(), "kms_0000000000000000_00", "garbage"] {
            let mut b = client(&sidecar.socket, Some(bad)).await;
            assert_eq!(b.who_am_i(pb::WhoAmIRequest {}).await.unwrap_err().code(), Code::Unauthenticated, "{bad}");
        }
        // Expiry.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let mut s = client(&sidecar.socket, Some(&short)).await;
        assert_eq!(s.who_am_i(pb::WhoAmIRequest {}).await.unwrap_err().code(), Code::Unauthenticated);
        // Revocation by id: the very next call fails.
        let id = &token[4..20];
        ok(&sidecar.socket, &["token", "revoke", id]);
        let e = c.describe_key(pb::KeyRef { name: "tenant-a/k".into() }).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    });
    // The keystore holds the hash, never the token.
    sidecar.stop();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "token in {}", path.display());
        }
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGHUP re-reads the policy; a broken file is refused and the old policy stays.
#[test]
fn policy_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let policy = policy_file(dir.path(), "");
    let sidecar = Sidecar::start(&data, &["--policy", policy.to_str().unwrap()]);
    let token = create_token(&sidecar.socket, "tenant-a", &[]);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let as_a = ["--token-file", token_file.to_str().unwrap()];
    let endpoint = format!("unix://{}", sidecar.socket.display());
    let try_create = |name: &str| kmsctl_at(&endpoint, &as_a, &["key", "create", name]);
    let out = try_create("tenant-a/one");
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
    let hup = || {
        let s = std::process::Command::new("kill").args(["-HUP", &sidecar.pid().to_string()]).status().unwrap();
        assert!(s.success());
    };
    policy_file(dir.path(), TENANTS);
    hup();
    wait_until("the new policy", || try_create("tenant-a/one").status.success());
    std::fs::write(&policy, "this is [not toml").unwrap();
    hup();
    wait_until("the refused reload in the audit log", || {
        audit_records(&data).iter().any(|r| r["op"] == "policy.reload" && r["code"] == "INVALID_ARGUMENT")
    });
    assert!(try_create("tenant-a/two").status.success(), "the previous policy stays in force");
    sidecar.stop();
}

/// `kmsctl audit verify` accepts the untouched log (across rotated files) and reports the
/// first edited, deleted, inserted, reordered or truncated record.
#[test]
fn audit_tampering_is_detected_by_kmsctl() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sidecar = Sidecar::start(&data, &["--audit-max-bytes", "4096"]);
    for i in 0..30 {
        ok(&sidecar.socket, &["key", "create", &format!("k{i}")]);
    }
    let head = ok(&sidecar.socket, &["audit", "head"]).trim().to_owned();
    ok(&sidecar.socket, &["key", "list"]);
    sidecar.stop();
    let audit = data.join("audit");
    let files = std::fs::read_dir(&audit).unwrap().count();
    assert!(files >= 3, "rotation made {files} files");
    let v = verify_audit(&data, &["--head", &head]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("OK: "));

    let active = audit.join("audit.log");
    let original = std::fs::read_to_string(&active).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() >= 4);
    let write = |ls: &[&str]| std::fs::write(&active, ls.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let check = |what: &str, kind: &str, extra: &[&str]| {
        let v = verify_audit(&data, extra);
        let err = String::from_utf8_lossy(&v.stderr);
        assert!(!v.status.success(), "{what}: not detected");
        assert!(err.contains("TAMPERED") && err.contains(kind), "{what}: {err}");
    };
    // Edit: a principal changed.
    let mut edited = lines.clone();
    let changed = lines[1].replacen("\"principal\":\"", "\"principal\":\"x", 1);
    edited[1] = &changed;
    write(&edited);
    check("edit", "Edited", &[]);
    // Delete.
    let mut deleted = lines.clone();
    deleted.remove(1);
    write(&deleted);
    check("delete", "Deleted", &[]);
    // Insert a forged record (no key): its MAC fails; a copied genuine one is out of place.
    let mut inserted = lines.clone();
    inserted.insert(2, lines[1]);
    write(&inserted);
    check("insert", "Inserted", &[]);
    // Reorder.
    let mut reordered = lines.clone();
    reordered.swap(1, 2);
    write(&reordered);
    check("reorder", "Reordered", &[]);
    // Truncate the tail: found against the head kept outside the log (here: the last
    // record's own seq and MAC, as `kmsctl audit head` would have reported at the end).
    let last: serde_json::Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
    let final_head = format!("{}:{}", last["seq"], last["mac"].as_str().unwrap());
    std::fs::write(&active, &original).unwrap();
    assert!(verify_audit(&data, &["--head", &final_head]).status.success());
    write(&lines[..lines.len() - 1]);
    check("truncate", "Truncated", &["--head", &final_head]);
    // Restored: intact again.
    std::fs::write(&active, &original).unwrap();
    assert!(verify_audit(&data, &["--head", &head]).status.success());
    // A whole rotated file removed: the next file starts after a gap.
    let mut rotated: Vec<PathBuf> =
        std::fs::read_dir(&audit).unwrap().map(|e| e.unwrap().path()).filter(|p| p != &active).collect();
    rotated.sort();
    std::fs::remove_file(&rotated[1]).unwrap();
    check("file removed", "Deleted", &[]);
}

/// Fail closed: while no audit record can be written, no operation is performed (the
/// caller gets UNAVAILABLE); once the log is writable again the sidecar recovers by itself
/// and the chain has no gap.
#[test]
fn audit_fails_closed_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sidecar = Sidecar::start(&data, &[]);
    ok(&sidecar.socket, &["key", "create", "before"]);
    let plain = dir.path().join("plain.txt");
    std::fs::write(&plain, b"fail closed").unwrap();
    let sealed = dir.path().join("sealed.bin");
    let (p, s) = (plain.to_str().unwrap(), sealed.to_str().unwrap());
    ok(&sidecar.socket, &["encrypt", "--key", "before", "--in", p, "--out", s]);
    // The audit file becomes unwritable: moved away and its path taken by something that
    // cannot be opened for appending (a directory: this holds even for root, for whom
    // file permissions would not).
    let audit = data.join("audit");
    std::fs::rename(audit.join("audit.log"), audit.join("audit.log.moved")).unwrap();
    std::fs::create_dir(audit.join("audit.log")).unwrap();
    let out_file = dir.path().join("out.txt");
    let o = out_file.to_str().unwrap();
    for args in [
        vec!["key", "create", "during"],
        vec!["key", "rotate", "before"],
        vec!["key", "list"],
        vec!["decrypt", "--in", s, "--out", o],
        vec!["whoami"],
    ] {
        let err = common::fails(&sidecar.socket, &args);
        assert!(err.contains("UNAVAILABLE"), "{args:?}: {err}");
    }
    assert!(!out_file.exists(), "no plaintext released while the audit log is down");
    std::fs::remove_dir(audit.join("audit.log")).unwrap();
    // Recovers by itself; what was refused did not happen.
    let list = ok(&sidecar.socket, &["--json", "key", "list"]);
    let keys: serde_json::Value = serde_json::from_str(&list).unwrap();
    let before = keys.as_array().unwrap().iter().find(|k| k["name"] == "before").unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1, "the key create refused while audit was down did not happen");
    assert_eq!(before["primary_version"], 1, "the refused rotation did not happen");
    ok(&sidecar.socket, &["decrypt", "--in", s, "--out", o]);
    assert_eq!(std::fs::read(&out_file).unwrap(), b"fail closed");
    sidecar.stop();
    let v = verify_audit(&data, &[]);
    assert!(v.status.success(), "moved file + new file form one chain: {}", String::from_utf8_lossy(&v.stderr));
}

/// Per-principal token buckets and the concurrency limit answer RESOURCE_EXHAUSTED and are
/// counted; other principals are unaffected; a passed deadline is honoured.
#[test]
fn rate_limit_and_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let policy = policy_file(dir.path(), TENANTS);
    let sidecar = Sidecar::start(
        &data,
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--rate-limit",
            "5",
            "--rate-burst",
            "5",
            "--max-concurrent-requests",
            "2",
        ],
    );
    let a = create_token(&sidecar.socket, "tenant-a", &[]);
    let b = create_token(&sidecar.socket, "tenant-b", &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ca = client(&sidecar.socket, Some(&a)).await;
        let mut cb = client(&sidecar.socket, Some(&b)).await;
        let mut limited = 0;
        for _ in 0..20 {
            match ca.who_am_i(pb::WhoAmIRequest {}).await {
                Ok(_) => {}
                Err(e) if e.code() == Code::ResourceExhausted => limited += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(limited >= 10, "20 calls at a limit of 5/s (burst 5): {limited} refused");
        cb.who_am_i(pb::WhoAmIRequest {}).await.expect("another principal has its own bucket");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        ca.who_am_i(pb::WhoAmIRequest {}).await.expect("the bucket refills");

        // Concurrency: 2 in flight at most; argon2 keeps each HashPassword busy for a while.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let calls = (0..5).map(|_| {
            let mut c = ca.clone();
            tokio::spawn(async move { c.hash_password(pb::HashPasswordRequest { password: b"pw".to_vec() }).await })
        });
        let mut codes = Vec::new();
        for c in calls.collect::<Vec<_>>() {
            codes.push(c.await.unwrap().map(drop).map_err(|e| e.code()));
        }
        assert!(codes.iter().any(Result::is_ok), "{codes:?}");
        assert!(codes.contains(&Err(Code::ResourceExhausted)), "{codes:?}");

        // A deadline that has passed: the request is not carried out.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut r = tonic::Request::new(pb::HashPasswordRequest { password: b"pw".to_vec() });
        r.set_timeout(Duration::from_micros(1));
        let e = ca.hash_password(r).await.unwrap_err();
        assert!(matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled), "{e:?}");
    });
    sidecar.stop();
    let records = audit_records(&data);
    assert!(records.iter().any(|r| r["code"] == "RESOURCE_EXHAUSTED" && r["principal"] == "token:tenant-a"));
}

/// HashPassword/VerifyPassword: argon2id PHC strings, match and mismatch, rehash flag.
#[test]
fn password_hashing_rpcs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sidecar = Sidecar::start(&data, &[]);
    let hash = {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kmsctl"))
            .args(["--endpoint", &format!("unix://{}", sidecar.socket.display()), "password", "hash"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"correct horse\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = client(&sidecar.socket, None).await;
        let v = c
            .verify_password(pb::VerifyPasswordRequest { hash: hash.clone(), password: b"correct horse".to_vec() })
            .await
            .unwrap()
            .into_inner();
        assert!(v.valid && !v.needs_rehash);
        let v = c
            .verify_password(pb::VerifyPasswordRequest { hash: hash.clone(), password: b"wrong horse".to_vec() })
            .await
            .unwrap()
            .into_inner();
        assert!(!v.valid);
        let e = c
            .verify_password(pb::VerifyPasswordRequest { hash: "$argon2i$junk".into(), password: b"x".to_vec() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = c.hash_password(pb::HashPasswordRequest { password: Vec::new() }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        // A caller-supplied hash may not make the sidecar spend 1 GiB per verification.
        let costly = "$argon2id$v=19$m=1048576,t=16,p=16$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc";
        let e = c
            .verify_password(pb::VerifyPasswordRequest { hash: costly.into(), password: b"x".to_vec() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("refused"), "{e:?}");
    });
    sidecar.stop();
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The Prometheus endpoint: request counts by operation and code, latency histograms,
/// cache and audit figures, rotation ages; loopback addresses only.
#[test]
fn metrics_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = common::free_port();
    let sidecar = Sidecar::start(&data, &["--metrics-listen", &format!("127.0.0.1:{port}")]);
    ok(&sidecar.socket, &["key", "create", "m/k"]);
    common::fails(&sidecar.socket, &["key", "create", "m/k"]);
    let body = http_get(port, "/metrics");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for needle in [
        "kms_requests_total{op=\"CreateKey\",code=\"OK\"} 1",
        "kms_requests_total{op=\"CreateKey\",code=\"ALREADY_EXISTS\"} 1",
        "kms_request_duration_seconds_bucket{op=\"CreateKey\",le=\"+Inf\"} 2",
        "kms_keys 1\n",
        "kms_key_primary_version_age_max_seconds ",
        "kms_audit_write_duration_seconds_count",
        "kms_key_cache_hits_total",
    ] {
        assert!(body.contains(needle), "{needle} missing:\n{body}");
    }
    assert!(http_get(port, "/other").starts_with("HTTP/1.1 404"));
    assert!(!body.contains("m/k"), "no key names on the endpoint by default");
    sidecar.stop();
    // A non-loopback metrics address is refused at start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kms-sidecar"))
        .args(["serve", "--data-dir", data.to_str().unwrap(), "--metrics-listen", "0.0.0.0:9464"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("metrics_listen"));
}

/// After a run that handles plaintexts, secret values, data keys, passwords and tokens,
/// none of them appears in the sidecar's log (at debug level), its audit files or its
/// metrics output.
#[test]
fn no_secrets_in_logs_audit_or_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = common::free_port();
    let policy = policy_file(dir.path(), TENANTS);
    let sidecar = Sidecar::start(
        &data,
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
            "--log-level",
            "debug",
            "--log-format",
            "json",
        ],
    );
    let token = create_token(&sidecar.socket, "tenant-a", &[]);
    let plaintext = "PLAINTEXT-canary-7f3a9c";
    let secret_value = "SECRETVALUE-canary-51be";
    let password = "PASSWORD-canary-c0ffee";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut canaries: Vec<Vec<u8>> = [plaintext, secret_value, password, &token, token.rsplit('_').next().unwrap()]
        .map(|c| c.as_bytes().to_vec())
        .into();
    rt.block_on(async {
        let mut c = client(&sidecar.socket, Some(&token)).await;
        c.create_key(pb::CreateKeyRequest { name: "tenant-a/k".into() }).await.unwrap();
        let ct = c
            .encrypt(pb::EncryptRequest {
                key_name: "tenant-a/k".into(),
                plaintext: plaintext.as_bytes().to_vec(),
                context: ctx(),
            })
            .await
            .unwrap()
            .into_inner()
            .ciphertext;
        c.decrypt(pb::DecryptRequest { ciphertext: ct.clone(), context: ctx() }).await.unwrap();
        // A failing decrypt (wrong context) must not log the ciphertext's contents either.
        c.decrypt(pb::DecryptRequest { ciphertext: ct, context: HashMap::new() }).await.unwrap_err();
        c.put_secret(pb::PutSecretRequest {
            name: "tenant-a/s".into(),
            key_name: "tenant-a/k".into(),
            value: secret_value.as_bytes().to_vec(),
        })
        .await
        .unwrap();
        c.get_secret(pb::GetSecretRequest { name: "tenant-a/s".into(), version: 0 }).await.unwrap();
        let dk = c
            .generate_data_key(pb::GenerateDataKeyRequest { key_name: "tenant-a/k".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        let hash = c.hash_password(pb::HashPasswordRequest { password: password.as_bytes().to_vec() }).await.unwrap();
        c.verify_password(pb::VerifyPasswordRequest {
            hash: hash.into_inner().hash,
            password: password.as_bytes().to_vec(),
        })
        .await
        .unwrap();
        // The data key, as the log might print it (hex) or raw.
        canaries.push(hex::encode(&dk.plaintext).into_bytes());
        canaries.push(dk.plaintext.clone());
        // A bad token's text.
        let bad = "kms_0123456789abcdef_ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
        let mut b = client(&sidecar.socket, Some(bad)).await;
        b.who_am_i(pb::WhoAmIRequest {}).await.unwrap_err();
        canaries.push(bad.as_bytes().to_vec());
    });
    let metrics = http_get(port, "/metrics");
    assert!(metrics.contains("kms_requests_total{op=\"Encrypt\",code=\"OK\"} 1"));
    sidecar.stop();
    let mut haystacks = vec![("metrics".to_owned(), metrics.into_bytes())];
    haystacks.push(("sidecar log".into(), std::fs::read(data.with_extension("log")).unwrap()));
    for entry in std::fs::read_dir(data.join("audit")).unwrap() {
        let p = entry.unwrap().path();
        haystacks.push((p.display().to_string(), std::fs::read(&p).unwrap()));
    }
    let log = String::from_utf8_lossy(&haystacks[1].1).into_owned();
    assert!(log.contains("DEBUG") || log.contains("\"level\""), "the log was written: {log}");
    for (name, bytes) in &haystacks {
        for canary in &canaries {
            let c = canary.as_slice();
            assert!(c.len() >= 16, "canary too short to be meaningful");
            assert!(!bytes.windows(c.len()).any(|w| w == c), "{name} contains a secret ({} bytes)", c.len());
        }
    }
}
