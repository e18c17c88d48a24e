//! The `kms.v1` gRPC service: each RPC runs the [`Kms`] operation and maps its error to a
//! precise status code.
//!
//! The stores are synchronous, so operations that touch them run on Tokio's blocking
//! threads. Encrypt, decrypt and data-key requests of at most [`INLINE_MAX_PAYLOAD`] bytes
//! are first tried on the async worker in [`Kms::cache_only`] mode: when the key record and
//! KEK are cached (the steady state) they finish there without a thread hand-off, and
//! otherwise they are re-run on a blocking thread.
//!
//! | error | code |
//! |---|---|
//! | unknown key, version or secret | `NOT_FOUND` |
//! | name taken | `ALREADY_EXISTS` |
//! | key disabled, pending deletion, destroyed; version below minimum or destroyed | `FAILED_PRECONDITION` |
//! | bad name, bad context, malformed ciphertext, failed decryption (coarse) | `INVALID_ARGUMENT` |
//! | payload larger than the configured limit | `RESOURCE_EXHAUSTED` |
//! | concurrent updates of one key exhausted the retries | `ABORTED` |
//! | keystore unreachable | `UNAVAILABLE` |
//! | inconsistent stored data | `INTERNAL` |

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::keystore::KeyRecord;
use crate::kms::{Kms, KmsError};

/// Generated protobuf types and service stubs of `kms.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic, unused_qualifications)]
pub mod pb {
    tonic::include_proto!("kms.v1");

    /// Encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kms_v1_descriptor");
}

use pb::kms_server::Kms as KmsRpc;

/// Maps an operation error to a gRPC status. Messages carry names and versions only.
pub fn status(e: KmsError) -> Status {
    match e {
        KmsError::NotFound(m) => Status::not_found(m),
        KmsError::AlreadyExists(m) => Status::already_exists(m),
        KmsError::FailedPrecondition(m) => Status::failed_precondition(m),
        KmsError::InvalidArgument(m) => Status::invalid_argument(m),
        e @ KmsError::DecryptFailed => Status::invalid_argument(e.to_string()),
        KmsError::Aborted(m) => Status::aborted(m),
        KmsError::Unavailable(m) => Status::unavailable(m),
        KmsError::Internal(m) => Status::internal(m),
        KmsError::PermissionDenied(m) => Status::permission_denied(m),
        e @ KmsError::WouldBlock => Status::unavailable(e.to_string()),
    }
}

/// Largest payload (bytes) served inline on an async worker when everything it needs is
/// cached; larger ones always run on a blocking thread so no worker stalls for long.
pub const INLINE_MAX_PAYLOAD: usize = 64 * 1024;

/// Most items in one BatchEncrypt/BatchDecrypt.
pub const MAX_BATCH_ITEMS: usize = 1000;

fn item_error(e: KmsError) -> pb::ItemError {
    let st = status(e);
    pb::ItemError { code: st.code() as i32, message: st.message().to_owned() }
}

/// Request limits of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload (plaintext, ciphertext, secret value, batch total, stream chunk);
    /// larger gets `RESOURCE_EXHAUSTED`.
    pub max_request_bytes: usize,
    /// Most EncryptStream/DecryptStream calls at once (each holds a thread and up to two
    /// segments); more get `RESOURCE_EXHAUSTED`.
    pub max_concurrent_streams: usize,
    /// A stream whose client sends nothing, or reads nothing, for this long ends with
    /// `DEADLINE_EXCEEDED`.
    pub stream_idle_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: crate::config::DEFAULT_MAX_REQUEST_BYTES,
            max_concurrent_streams: 32,
            stream_idle_timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// The gRPC service over a [`Kms`].
#[derive(Debug, Clone)]
pub struct KmsService {
    kms: Arc<Kms>,
    max_payload: usize,
    streams: crate::streaming::StreamSlots,
}

impl KmsService {
    /// A service over `kms` with `limits`.
    pub fn new(kms: Arc<Kms>, limits: Limits) -> Self {
        Self {
            kms,
            max_payload: limits.max_request_bytes,
            streams: crate::streaming::StreamSlots::new(limits.max_concurrent_streams, limits.stream_idle_timeout),
        }
    }

    fn check_batch(&self, items: usize, total: usize) -> Result<(), Status> {
        if items > MAX_BATCH_ITEMS {
            return Err(Status::resource_exhausted(format!(
                "{items} items exceed the batch limit of {MAX_BATCH_ITEMS}"
            )));
        }
        self.check_size(total)
    }

    fn check_size(&self, len: usize) -> Result<(), Status> {
        if len > self.max_payload {
            return Err(Status::resource_exhausted(format!(
                "payload of {len} bytes exceeds the limit of {} bytes",
                self.max_payload
            )));
        }
        Ok(())
    }

    /// A read-only crypto operation: inline from the caches when `payload` is small,
    /// else (or on a cache miss) on a blocking thread.
    async fn run_crypto<T: Send + 'static>(
        &self,
        payload: usize,
        f: impl Fn(&Kms) -> Result<T, KmsError> + Send + 'static,
    ) -> Result<Response<T>, Status> {
        if payload <= INLINE_MAX_PAYLOAD {
            match self.kms.cache_only(&f) {
                Err(KmsError::WouldBlock) => {}
                other => return other.map(Response::new).map_err(status),
            }
        }
        self.run(f).await
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Kms) -> Result<T, KmsError> + Send + 'static,
    ) -> Result<Response<T>, Status> {
        let kms = self.kms.clone();
        match tokio::task::spawn_blocking(move || f(&kms)).await {
            Ok(result) => result.map(Response::new).map_err(status),
            Err(_) => Err(Status::internal("operation panicked")),
        }
    }
}

fn metadata(k: &KeyRecord) -> pb::KeyMetadata {
    use crypto_core::keys::KeyState as S;
    let (state, delete_after) = match k.state {
        S::Enabled => (pb::KeyState::Enabled, 0),
        S::Disabled => (pb::KeyState::Disabled, 0),
        S::PendingDeletion { delete_after } => (pb::KeyState::PendingDeletion, delete_after as i64),
        _ => (pb::KeyState::Destroyed, 0),
    };
    pb::KeyMetadata {
        name: k.name.clone(),
        state: state as i32,
        primary_version: k.primary_version,
        min_decrypt_version: k.min_decrypt_version,
        created_at_unix: k.created_at,
        delete_after_unix: delete_after,
        versions: k
            .versions
            .iter()
            .map(|v| pb::KeyVersion {
                version: v.version,
                created_at_unix: v.created_at,
                destroyed_at_unix: v.destroyed_at.unwrap_or(0),
            })
            .collect(),
    }
}

/// Protobuf form of a wrapped data key.
pub fn wrapped_to_pb(w: crypto_core::provider::WrappedKey) -> pb::WrappedDataKey {
    pb::WrappedDataKey { provider_id: w.provider_id, key_name: w.key_name, key_version: w.key_version, blob: w.blob }
}

/// A wrapped data key from its protobuf form.
pub fn wrapped_from_pb(w: pb::WrappedDataKey) -> crypto_core::provider::WrappedKey {
    crypto_core::provider::WrappedKey {
        provider_id: w.provider_id,
        key_name: w.key_name,
        key_version: w.key_version,
        blob: w.blob,
    }
}

/// The CA's administrative RPCs (create the CA, issue with any name, revoke) are served
/// only on the local Unix socket until role-based authorization exists: over mTLS, any
/// holder of a client certificate could otherwise mint certificates for any name.
fn local_only<T>(r: &Request<T>) -> Result<(), Status> {
    if r.extensions().get::<tonic::transport::server::UdsConnectInfo>().is_some() {
        return Ok(());
    }
    Err(Status::permission_denied("this CA operation is allowed only on the local Unix socket"))
}

fn key_type(name: &str) -> Result<crypto_core::pki::KeyType, KmsError> {
    if name.is_empty() {
        Ok(crypto_core::pki::KeyType::default())
    } else {
        Ok(crypto_core::pki::KeyType::from_name(name)?)
    }
}

fn usage(name: &str) -> Result<crypto_core::pki::Usage, KmsError> {
    use crypto_core::pki::Usage;
    match name {
        "" | "server" => Ok(Usage::Server),
        "client" => Ok(Usage::Client),
        "both" => Ok(Usage::ServerAndClient),
        other => Err(KmsError::InvalidArgument(format!("usage {other:?}: use server, client or both"))),
    }
}

fn issued_to_pb(c: crypto_core::pki::IssuedCertificate) -> pb::IssuedCertificate {
    let certificate_pem = c.certificate_pem();
    pb::IssuedCertificate {
        serial: c.serial.to_hex(),
        certificate_pem,
        chain_pem: c.chain_pem,
        private_key_pem: c.private_key.map(|k| k.to_pkcs8_pem().expose_secret().to_vec()).unwrap_or_default(),
        not_after_unix: c.not_after.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0),
    }
}

fn certificate_to_pb(c: crate::keystore::CertificateRecord) -> pb::CertificateInfo {
    pb::CertificateInfo {
        serial: c.serial,
        common_name: c.common_name,
        sans: c.sans,
        not_after_unix: c.not_after,
        issued_at_unix: c.issued_at,
        revoked_at_unix: c.revoked_at.unwrap_or(0),
        revoke_reason: c
            .revoke_reason
            .and_then(crypto_core::pki::RevocationReason::from_code)
            .map(|r| r.name().to_owned())
            .unwrap_or_default(),
    }
}

fn context(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

#[tonic::async_trait]
impl KmsRpc for KmsService {
    type EncryptStreamStream = tokio_stream::wrappers::ReceiverStream<Result<pb::EncryptStreamResponse, Status>>;
    type DecryptStreamStream = tokio_stream::wrappers::ReceiverStream<Result<pb::DecryptStreamResponse, Status>>;

    async fn encrypt_stream(
        &self,
        r: Request<tonic::Streaming<pb::EncryptStreamRequest>>,
    ) -> Result<Response<Self::EncryptStreamStream>, Status> {
        crate::streaming::encrypt_stream(self.kms.clone(), &self.streams, r.into_inner(), self.max_payload)
            .await
            .map(Response::new)
    }

    async fn decrypt_stream(
        &self,
        r: Request<tonic::Streaming<pb::DecryptStreamRequest>>,
    ) -> Result<Response<Self::DecryptStreamStream>, Status> {
        crate::streaming::decrypt_stream(self.kms.clone(), &self.streams, r.into_inner(), self.max_payload)
            .await
            .map(Response::new)
    }

    async fn create_key(&self, r: Request<pb::CreateKeyRequest>) -> Result<Response<pb::KeyMetadata>, Status> {
        let name = r.into_inner().name;
        self.run(move |k| k.create_key(&name).map(|k| metadata(&k))).await
    }

    async fn describe_key(&self, r: Request<pb::KeyRef>) -> Result<Response<pb::KeyMetadata>, Status> {
        let name = r.into_inner().name;
        self.run(move |k| k.describe_key(&name).map(|k| metadata(&k))).await
    }

    async fn list_keys(&self, _: Request<pb::ListKeysRequest>) -> Result<Response<pb::ListKeysResponse>, Status> {
        self.run(|k| Ok(pb::ListKeysResponse { keys: k.list_keys()?.iter().map(metadata).collect() })).await
    }

    async fn rotate_key(&self, r: Request<pb::KeyRef>) -> Result<Response<pb::KeyMetadata>, Status> {
        let name = r.into_inner().name;
        self.run(move |k| k.rotate_key(&name).map(|k| metadata(&k))).await
    }

    async fn enable_key(&self, r: Request<pb::KeyRef>) -> Result<Response<pb::KeyMetadata>, Status> {
        let name = r.into_inner().name;
        self.run(move |k| k.enable_key(&name).map(|k| metadata(&k))).await
    }

    async fn disable_key(&self, r: Request<pb::KeyRef>) -> Result<Response<pb::KeyMetadata>, Status> {
        let name = r.into_inner().name;
        self.run(move |k| k.disable_key(&name).map(|k| metadata(&k))).await
    }

    async fn schedule_key_deletion(
        &self,
        r: Request<pb::ScheduleKeyDeletionRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        let r = r.into_inner();
        self.run(move |k| k.schedule_key_deletion(&r.name, r.pending_window_seconds).map(|k| metadata(&k))).await
    }

    async fn cancel_key_deletion(&self, r: Request<pb::KeyRef>) -> Result<Response<pb::KeyMetadata>, Status> {
        let name = r.into_inner().name;
        self.run(move |k| k.cancel_key_deletion(&name).map(|k| metadata(&k))).await
    }

    async fn set_min_decrypt_version(
        &self,
        r: Request<pb::SetMinDecryptVersionRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        let r = r.into_inner();
        self.run(move |k| k.set_min_decrypt_version(&r.name, r.min_decrypt_version).map(|k| metadata(&k))).await
    }

    async fn encrypt(&self, r: Request<pb::EncryptRequest>) -> Result<Response<pb::EncryptResponse>, Status> {
        let r = r.into_inner();
        self.check_size(r.plaintext.len())?;
        let ctx = context(r.context);
        self.run_crypto(r.plaintext.len(), move |k| {
            let (ciphertext, key_version) = k.encrypt(&r.key_name, &r.plaintext, &ctx)?;
            Ok(pb::EncryptResponse { ciphertext, key_name: r.key_name.clone(), key_version })
        })
        .await
    }

    async fn decrypt(&self, r: Request<pb::DecryptRequest>) -> Result<Response<pb::DecryptResponse>, Status> {
        let r = r.into_inner();
        self.check_size(r.ciphertext.len())?;
        let ctx = context(r.context);
        self.run_crypto(r.ciphertext.len(), move |k| {
            let (plaintext, key_name, key_version) = k.decrypt(&r.ciphertext, &ctx)?;
            Ok(pb::DecryptResponse { plaintext: plaintext.expose_secret().to_vec(), key_name, key_version })
        })
        .await
    }

    async fn batch_encrypt(
        &self,
        r: Request<pb::BatchEncryptRequest>,
    ) -> Result<Response<pb::BatchEncryptResponse>, Status> {
        let r = r.into_inner();
        self.check_batch(r.items.len(), r.items.iter().map(|i| i.plaintext.len()).sum())?;
        self.run(move |k| {
            let results = r
                .items
                .into_iter()
                .map(|item| {
                    let result = match k.encrypt(&item.key_name, &item.plaintext, &context(item.context)) {
                        Ok((ciphertext, key_version)) => pb::batch_encrypt_result::Result::Ok(pb::EncryptResponse {
                            ciphertext,
                            key_name: item.key_name,
                            key_version,
                        }),
                        Err(e) => pb::batch_encrypt_result::Result::Error(item_error(e)),
                    };
                    pb::BatchEncryptResult { result: Some(result) }
                })
                .collect();
            Ok(pb::BatchEncryptResponse { results })
        })
        .await
    }

    async fn batch_decrypt(
        &self,
        r: Request<pb::BatchDecryptRequest>,
    ) -> Result<Response<pb::BatchDecryptResponse>, Status> {
        let r = r.into_inner();
        self.check_batch(r.items.len(), r.items.iter().map(|i| i.ciphertext.len()).sum())?;
        self.run(move |k| {
            let results = r
                .items
                .into_iter()
                .map(|item| {
                    let result = match k.decrypt(&item.ciphertext, &context(item.context)) {
                        Ok((plaintext, key_name, key_version)) => {
                            pb::batch_decrypt_result::Result::Ok(pb::DecryptResponse {
                                plaintext: plaintext.expose_secret().to_vec(),
                                key_name,
                                key_version,
                            })
                        }
                        Err(e) => pb::batch_decrypt_result::Result::Error(item_error(e)),
                    };
                    pb::BatchDecryptResult { result: Some(result) }
                })
                .collect();
            Ok(pb::BatchDecryptResponse { results })
        })
        .await
    }

    async fn re_encrypt(&self, r: Request<pb::ReEncryptRequest>) -> Result<Response<pb::ReEncryptResponse>, Status> {
        let r = r.into_inner();
        self.check_size(r.ciphertext.len())?;
        self.run(move |k| {
            let (ciphertext, source_key_version, key_version) = k.re_encrypt(&r.ciphertext)?;
            Ok(pb::ReEncryptResponse { ciphertext, source_key_version, key_version })
        })
        .await
    }

    async fn generate_data_key(
        &self,
        r: Request<pb::GenerateDataKeyRequest>,
    ) -> Result<Response<pb::GenerateDataKeyResponse>, Status> {
        let r = r.into_inner();
        self.run_crypto(0, move |k| {
            let (dk, w) = k.generate_data_key(&r.key_name)?;
            Ok(pb::GenerateDataKeyResponse {
                plaintext: if r.without_plaintext { Vec::new() } else { dk.expose_secret().to_vec() },
                wrapped: Some(wrapped_to_pb(w)),
            })
        })
        .await
    }

    async fn decrypt_data_key(
        &self,
        r: Request<pb::WrappedDataKey>,
    ) -> Result<Response<pb::DecryptDataKeyResponse>, Status> {
        let w = wrapped_from_pb(r.into_inner());
        self.run_crypto(0, move |k| {
            Ok(pb::DecryptDataKeyResponse { plaintext: k.decrypt_data_key(&w)?.expose_secret().to_vec() })
        })
        .await
    }

    async fn re_encrypt_data_key(
        &self,
        r: Request<pb::WrappedDataKey>,
    ) -> Result<Response<pb::WrappedDataKey>, Status> {
        let w = wrapped_from_pb(r.into_inner());
        self.run(move |k| Ok(wrapped_to_pb(k.re_encrypt_data_key(&w)?))).await
    }

    async fn put_secret(&self, r: Request<pb::PutSecretRequest>) -> Result<Response<pb::PutSecretResponse>, Status> {
        let r = r.into_inner();
        self.check_size(r.value.len())?;
        self.run(move |k| Ok(pb::PutSecretResponse { version: k.put_secret(&r.name, &r.key_name, &r.value)? })).await
    }

    async fn get_secret(&self, r: Request<pb::GetSecretRequest>) -> Result<Response<pb::GetSecretResponse>, Status> {
        let r = r.into_inner();
        self.run(move |k| {
            let s = k.get_secret(&r.name, (r.version != 0).then_some(r.version))?;
            Ok(pb::GetSecretResponse {
                value: s.value.expose_secret().to_vec(),
                version: s.version,
                key_name: s.key_name,
                created_at_unix: s.created_at,
            })
        })
        .await
    }

    async fn list_secrets(
        &self,
        _: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        self.run(|k| {
            Ok(pb::ListSecretsResponse {
                secrets: k
                    .list_secrets()?
                    .into_iter()
                    .map(|s| pb::SecretInfo { name: s.name, latest_version: s.latest_version, key_name: s.key_name })
                    .collect(),
            })
        })
        .await
    }

    async fn init_ca(&self, r: Request<pb::InitCaRequest>) -> Result<Response<pb::CaBundle>, Status> {
        local_only(&r)?;
        let r = r.into_inner();
        self.run(move |k| {
            let policy = crypto_core::pki::SanPolicy {
                dns: r.allowed_dns,
                ip: r.allowed_ip.iter().map(|n| crate::ca::parse_network(n)).collect::<Result<_, _>>()?,
                uri_prefixes: r.allowed_uri_prefixes,
            };
            let init = crate::ca::CaInit {
                common_name: r.common_name,
                key_type: key_type(&r.key_type)?,
                ttl: if r.ttl_seconds == 0 {
                    std::time::Duration::from_secs(10 * 365 * 86_400)
                } else {
                    std::time::Duration::from_secs(r.ttl_seconds)
                },
                policy,
            };
            Ok(pb::CaBundle { pem: k.init_ca(&init)?.bundle_pem })
        })
        .await
    }

    async fn issue_certificate(
        &self,
        r: Request<pb::IssueCertificateRequest>,
    ) -> Result<Response<pb::IssuedCertificate>, Status> {
        local_only(&r)?;
        let r = r.into_inner();
        self.run(move |k| {
            let request = crypto_core::pki::LeafRequest {
                common_name: r.common_name,
                sans: r.sans.iter().map(|s| crypto_core::pki::SubjectAltName::parse(s)).collect::<Result<_, _>>()?,
                key_type: key_type(&r.key_type)?,
                ttl: std::time::Duration::from_secs(r.ttl_seconds),
                usage: usage(&r.usage)?,
            };
            Ok(issued_to_pb(k.issue_certificate(&request)?))
        })
        .await
    }

    async fn sign_csr(&self, r: Request<pb::SignCsrRequest>) -> Result<Response<pb::IssuedCertificate>, Status> {
        let r = r.into_inner();
        self.check_size(r.csr.len())?;
        self.run(move |k| {
            let ttl = std::time::Duration::from_secs(r.ttl_seconds);
            Ok(issued_to_pb(k.sign_csr(&r.csr, ttl, usage(&r.usage)?)?))
        })
        .await
    }

    async fn revoke_certificate(
        &self,
        r: Request<pb::RevokeCertificateRequest>,
    ) -> Result<Response<pb::CertificateInfo>, Status> {
        local_only(&r)?;
        let r = r.into_inner();
        self.run(move |k| {
            let reason = if r.reason.is_empty() {
                crypto_core::pki::RevocationReason::Unspecified
            } else {
                crypto_core::pki::RevocationReason::parse(&r.reason)?
            };
            Ok(certificate_to_pb(k.revoke_certificate(&r.serial, reason)?))
        })
        .await
    }

    async fn list_certificates(
        &self,
        _: Request<pb::ListCertificatesRequest>,
    ) -> Result<Response<pb::ListCertificatesResponse>, Status> {
        self.run(|k| {
            Ok(pb::ListCertificatesResponse {
                certificates: k.list_certificates()?.into_iter().map(certificate_to_pb).collect(),
            })
        })
        .await
    }

    async fn get_ca_bundle(&self, _: Request<pb::GetCaBundleRequest>) -> Result<Response<pb::CaBundle>, Status> {
        self.run(|k| Ok(pb::CaBundle { pem: k.ca_info()?.bundle_pem })).await
    }

    async fn get_crl(&self, _: Request<pb::GetCrlRequest>) -> Result<Response<pb::Crl>, Status> {
        self.run(|k| {
            let (der, number) = k.crl()?;
            Ok(pb::Crl { pem: crypto_core::pki::to_pem("X509 CRL", &der), number })
        })
        .await
    }

    async fn who_am_i(&self, r: Request<pb::WhoAmIRequest>) -> Result<Response<pb::WhoAmIResponse>, Status> {
        Ok(Response::new(pb::WhoAmIResponse { identity: crate::tls_auto::client_identity(&r).unwrap_or_default() }))
    }

    async fn delete_secret(
        &self,
        r: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        let name = r.into_inner().name;
        self.run(move |k| k.delete_secret(&name).map(|()| pb::DeleteSecretResponse {})).await
    }
}
