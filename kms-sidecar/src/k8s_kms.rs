//! The Kubernetes KMS v2 plugin API (`v2.KeyManagementService`: Status, Encrypt, Decrypt)
//! over a named key, served on its own Unix socket (`--k8s-kms-socket`, `--k8s-kms-key`).
//!
//! * **Ciphertext**: a crypto-core envelope sealed under the backing key's primary version
//!   with the encryption context `{"purpose": "kubernetes-kms-v2"}`, so data sealed
//!   through the general API cannot be passed off as Kubernetes data or the reverse.
//! * **key_id**: `<key name>:<key creation time>:v<version>`: the exact KEK version that
//!   sealed the data. It changes when the key is rotated; it is never reused (versions only
//!   grow, and a key name is never reused while its record exists; the creation time tells
//!   a key re-created after a keystore loss from its predecessor); and this process never
//!   reports a lower version after a higher one (a keystore that goes back in time makes
//!   Status unhealthy instead of flip-flopping).
//! * **Decrypt** honours the key id: it must name the key and version in the ciphertext's
//!   header and the key's current incarnation. Any non-destroyed version above the key's
//!   decrypt floor decrypts after rotations; a destroyed or unknown one is an error.
//! * **Annotations**: Encrypt returns `envelope.kms-sidecar.cryptocore.dev: "v1"`; Decrypt
//!   requires exactly the annotations it knows, so data written by a newer, incompatible
//!   plugin is refused with a clear error rather than misread.
//! * **Status** answers `healthz: "ok"` only when the keystore is reachable, the key is
//!   enabled and its primary version unwraps under the root key.
//!
//! Every call passes the [`Security`] gate like the `kms.v1` API: the caller's identity
//! (kube-apiserver's Unix uid) needs `encrypt` and `decrypt` on the backing key, and every
//! call is audited.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tonic::{Request, Response, Status};

use crate::grpc::{KmsService, status};
use crate::kms::{Kms, KmsError};
use crate::policy::{Op, Resource};
use crate::security::Security;

/// Generated types and service stubs of the Kubernetes KMS v2 API.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic, unused_qualifications)]
pub mod pb {
    tonic::include_proto!("v2");
}

/// The annotation naming the ciphertext format.
pub const FORMAT_ANNOTATION: &str = "envelope.kms-sidecar.cryptocore.dev";
/// Its value for crypto-core envelope v1.
pub const FORMAT_V1: &[u8] = b"v1";
/// The encryption context every Kubernetes ciphertext is bound to.
pub const CONTEXT: (&str, &str) = ("purpose", "kubernetes-kms-v2");
/// Longest key id kube-apiserver accepts (1 KiB).
pub const MAX_KEY_ID_LEN: usize = 1024;
/// Largest plaintext accepted (kube-apiserver sends a 32-byte DEK seed).
pub const MAX_PLAINTEXT: usize = 64 * 1024;

/// The key id of version `version` of the key created at `created_at`.
pub fn key_id(name: &str, created_at: i64, version: u32) -> String {
    format!("{name}:{created_at}:v{version}")
}

/// Parses a key id (untrusted: kube-apiserver passes back what it stored in etcd) into
/// (name, key creation time, version). Only the canonical form [`key_id`] writes is
/// accepted (a valid key name, no sign or leading zeros), so one key version has exactly
/// one key id: `parse_key_id(s) == Some((n, c, v))` implies `key_id(n, c, v) == s`.
pub fn parse_key_id(id: &str) -> Option<(&str, i64, u32)> {
    let mut parts = id.splitn(3, ':');
    let name = parts.next().filter(|n| crypto_core::keys::validate_key_name(n).is_ok())?;
    let created = parts.next()?.parse().ok()?;
    let version = parts.next()?.strip_prefix('v')?.parse().ok().filter(|&v| v > 0)?;
    // `parse` also takes "+5", "007" and "-0": refuse every spelling but the canonical one.
    (key_id(name, created, version) == id).then_some((name, created, version))
}

fn context() -> BTreeMap<String, String> {
    BTreeMap::from([(CONTEXT.0.to_owned(), CONTEXT.1.to_owned())])
}

/// The plugin service over the key `key`.
#[derive(Debug, Clone)]
pub struct K8sKmsService {
    inner: KmsService,
    sec: Arc<Security>,
    key: Arc<str>,
    /// Highest primary version reported so far (Status or Encrypt): never go below it.
    highest: Arc<AtomicU32>,
}

impl K8sKmsService {
    /// A plugin service over `key` (which must exist: see [`Kms::ensure_key`]).
    pub fn new(kms: Arc<Kms>, sec: Arc<Security>, key: &str, limits: crate::grpc::Limits) -> Self {
        Self {
            inner: KmsService::new(kms, limits, sec.clone()),
            sec,
            key: key.into(),
            highest: Arc::new(AtomicU32::new(0)),
        }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::key_management_service_server::KeyManagementServiceServer<Self> {
        pb::key_management_service_server::KeyManagementServiceServer::new(self)
            .max_decoding_message_size(MAX_PLAINTEXT + (1 << 16))
    }
}

#[tonic::async_trait]
impl pb::key_management_service_server::KeyManagementService for K8sKmsService {
    async fn status(&self, r: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let mut call = self.sec.begin(&r, "K8sStatus").await?;
        // Status reveals the key's name, incarnation and version and makes a keystore read
        // and a root-key unwrap: like DescribeKey, for callers with some grant on the key.
        if let Err(s) = call.authorize_key_read(&self.key) {
            return call.finish(Err(s)).await;
        }
        let key = self.key.clone();
        let checked = self.inner.run(&call, move |k| k.check_key_health(&key)).await;
        let (healthz, key_id) = match checked {
            Ok(record) => {
                let highest = self.highest.fetch_max(record.primary_version, Ordering::SeqCst);
                if record.primary_version < highest {
                    let why = format!(
                        "keystore went back in time: primary version {} after {highest} was reported",
                        record.primary_version
                    );
                    (why, key_id(&record.name, record.created_at, highest))
                } else {
                    ("ok".to_owned(), key_id(&record.name, record.created_at, record.primary_version))
                }
            }
            Err(s) => (format!("key {:?}: {}", self.key, s.message()), String::new()),
        };
        call.finish(Ok(pb::StatusResponse { version: "v2".into(), healthz, key_id })).await
    }

    async fn encrypt(&self, r: Request<pb::EncryptRequest>) -> Result<Response<pb::EncryptResponse>, Status> {
        let mut call = self.sec.begin(&r, "K8sEncrypt").await?;
        let r = r.into_inner();
        let result = async {
            call.authorize(Op::Encrypt, Resource::Key(&self.key))?;
            if r.plaintext.len() > MAX_PLAINTEXT {
                return Err(Status::resource_exhausted(format!(
                    "{} bytes exceed the plugin's limit of {MAX_PLAINTEXT}",
                    r.plaintext.len()
                )));
            }
            let (key, highest, len) = (self.key.clone(), self.highest.clone(), r.plaintext.len());
            let plaintext = Arc::new(r.plaintext);
            let out = self
                .inner
                .run_crypto(&call, len, move |k| {
                    let ctx = context();
                    let floor = highest.load(Ordering::SeqCst);
                    let (mut ciphertext, mut version) = k.encrypt(&key, &plaintext, &ctx)?;
                    if version < floor {
                        // The cached record is older than a version already reported:
                        // read the store again rather than hand out an older key id.
                        k.describe_key(&key)?;
                        (ciphertext, version) = k.encrypt(&key, &plaintext, &ctx)?;
                        if version < floor {
                            return Err(KmsError::Unavailable(format!(
                                "key {key:?}: the keystore shows primary version {version} after {floor} was reported"
                            )));
                        }
                    }
                    let record = k.key_record(&key, Some(version))?;
                    highest.fetch_max(version, Ordering::SeqCst);
                    Ok((ciphertext, key_id(&key, record.created_at, version), version))
                })
                .await?;
            call.set_version(out.2);
            Ok(pb::EncryptResponse {
                ciphertext: out.0,
                key_id: out.1,
                annotations: HashMap::from([(FORMAT_ANNOTATION.to_owned(), FORMAT_V1.to_vec())]),
            })
        }
        .await;
        call.finish(result).await
    }

    async fn decrypt(&self, r: Request<pb::DecryptRequest>) -> Result<Response<pb::DecryptResponse>, Status> {
        let mut call = self.sec.begin(&r, "K8sDecrypt").await?;
        let r = r.into_inner();
        let result = async {
            if r.key_id.len() > MAX_KEY_ID_LEN {
                return Err(Status::invalid_argument("key_id is longer than 1 KiB"));
            }
            let (name, created, version) = parse_key_id(&r.key_id).ok_or_else(|| {
                Status::invalid_argument(format!("key_id {:?} is not a kms-sidecar key id", r.key_id))
            })?;
            call.set_version(version);
            call.authorize(Op::Decrypt, Resource::Key(name))?;
            check_annotations(&r.annotations)?;
            if r.ciphertext.len() > MAX_PLAINTEXT + 4096 {
                return Err(Status::resource_exhausted("ciphertext too large"));
            }
            let header = Kms::ciphertext_key(&r.ciphertext).map_err(status)?;
            if header != (name.to_owned(), version) {
                return Err(Status::invalid_argument(format!(
                    "key_id {:?} does not match the ciphertext, which was sealed under {}:v{}",
                    r.key_id, header.0, header.1
                )));
            }
            let (name, len, ciphertext) = (name.to_owned(), r.ciphertext.len(), r.ciphertext);
            self.inner
                .run_crypto(&call, len, move |k| {
                    let record = k.key_record(&name, Some(version))?;
                    if record.created_at != created {
                        return Err(KmsError::NotFound(format!(
                            "key_id names an earlier key {name:?} (created at {created}, the current one at {})",
                            record.created_at
                        )));
                    }
                    let (plaintext, _, _) = k.decrypt(&ciphertext, &context())?;
                    Ok(plaintext.expose_secret().to_vec())
                })
                .await
                .map(|plaintext| pb::DecryptResponse { plaintext })
        }
        .await;
        call.finish(result).await
    }
}

/// Decrypt accepts exactly the annotations Encrypt writes: [`FORMAT_ANNOTATION`] with the
/// value [`FORMAT_V1`], and nothing else (untrusted input: kube-apiserver passes back what
/// it stored in etcd).
pub fn check_annotations(annotations: &HashMap<String, Vec<u8>>) -> Result<(), Status> {
    for (k, v) in annotations {
        if k != FORMAT_ANNOTATION {
            return Err(Status::invalid_argument(format!(
                "unknown annotation {k:?}: this ciphertext was not written by this plugin version"
            )));
        }
        if v.as_slice() != FORMAT_V1 {
            return Err(Status::invalid_argument(format!(
                "annotation {FORMAT_ANNOTATION} = {:?}: unsupported ciphertext format",
                String::from_utf8_lossy(v)
            )));
        }
    }
    if !annotations.contains_key(FORMAT_ANNOTATION) {
        return Err(Status::invalid_argument(format!("annotation {FORMAT_ANNOTATION} is missing")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_round_trip_and_reject_garbage() {
        let id = key_id("k8s/secrets", 1_800_000_000, 7);
        assert_eq!(id, "k8s/secrets:1800000000:v7");
        assert_eq!(parse_key_id(&id), Some(("k8s/secrets", 1_800_000_000, 7)));
        assert_eq!(parse_key_id("k:-5:v1"), Some(("k", -5, 1)));
        assert_eq!(parse_key_id("k:0:v4294967295"), Some(("k", 0, u32::MAX)));
        for bad in ["", "k", "k:1", "k:1:7", "k:x:v1", "k:1:v0", "k:1:v", ":1:v1", "k:1:v1:x", "k:1:v99999999999"] {
            assert_eq!(parse_key_id(bad), None, "{bad:?}");
        }
        // Other spellings of a valid id, and names no key can have.
        for bad in [
            "k:+1:v1",
            "k:01:v1",
            "k:-0:v1",
            "k:1:v+1",
            "k:1:v01",
            "k: 1:v1",
            "k:1:v1 ",
            "a b:1:v1",
            "a//b:1:v1",
            "../k:1:v1",
        ] {
            assert_eq!(parse_key_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn annotations_are_checked() {
        let ok = HashMap::from([(FORMAT_ANNOTATION.to_owned(), FORMAT_V1.to_vec())]);
        assert!(check_annotations(&ok).is_ok());
        assert!(check_annotations(&HashMap::new()).is_err());
        let newer = HashMap::from([(FORMAT_ANNOTATION.to_owned(), b"v2".to_vec())]);
        assert!(check_annotations(&newer).is_err());
        let mut extra = ok.clone();
        extra.insert("other.example.com".into(), b"x".to_vec());
        assert!(check_annotations(&extra).is_err());
    }
}
