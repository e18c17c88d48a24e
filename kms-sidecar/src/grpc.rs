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
use crate::policy::{Op, Resource};
use crate::security::{Call, Security};

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

/// Most memory (KiB) a hash given to VerifyPassword may ask for: 64 MiB.
pub const MAX_VERIFY_MEMORY_KIB: u32 = 64 * 1024;

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

/// The gRPC service over a [`Kms`], behind the [`Security`] gate.
#[derive(Debug, Clone)]
pub struct KmsService {
    kms: Arc<Kms>,
    sec: Arc<Security>,
    max_payload: usize,
    streams: crate::streaming::StreamSlots,
    passwords: Arc<PasswordSlots>,
}

/// argon2id needs 19 MiB and tens of milliseconds per call: at most this many run at once
/// (the rest wait, within their deadline), so password requests cannot exhaust memory.
#[derive(Debug)]
struct PasswordSlots {
    hasher: crypto_core::password::PasswordHasher,
    slots: Arc<tokio::sync::Semaphore>,
}

impl KmsService {
    /// A service over `kms` with `limits`, every request passing `sec`.
    pub fn new(kms: Arc<Kms>, limits: Limits, sec: Arc<Security>) -> Self {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
        Self {
            kms,
            sec,
            max_payload: limits.max_request_bytes,
            streams: crate::streaming::StreamSlots::new(limits.max_concurrent_streams, limits.stream_idle_timeout),
            passwords: Arc::new(PasswordSlots {
                hasher: crypto_core::password::PasswordHasher::default(),
                slots: Arc::new(tokio::sync::Semaphore::new(parallel)),
            }),
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
    pub(crate) async fn run_crypto<T: Send + 'static>(
        &self,
        call: &Call,
        payload: usize,
        f: impl Fn(&Kms) -> Result<T, KmsError> + Send + 'static,
    ) -> Result<T, Status> {
        if payload <= INLINE_MAX_PAYLOAD {
            let result = self.kms.cache_only(&f);
            // A key record in the second half of its TTL: this request was chosen to
            // re-read it (single flight); it does so in the background, not in its path.
            for name in Kms::take_due_refreshes() {
                let kms = self.kms.clone();
                drop(tokio::task::spawn_blocking(move || kms.refresh_record(&name)));
            }
            match result {
                Err(KmsError::WouldBlock) => {}
                other => return other.map_err(status),
            }
        }
        self.run(call, f).await
    }

    /// An operation on a blocking thread, bounded by the call's deadline (work already
    /// started on the store finishes, but its answer is not awaited past the deadline).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        call: &Call,
        f: impl FnOnce(&Kms) -> Result<T, KmsError> + Send + 'static,
    ) -> Result<T, Status> {
        call.check_deadline()?;
        let kms = self.kms.clone();
        let task = tokio::task::spawn_blocking(move || f(&kms));
        match tokio::time::timeout_at(call.deadline().into(), task).await {
            Ok(Ok(result)) => result.map_err(status),
            Ok(Err(_)) => Err(Status::internal("operation panicked")),
            Err(_) => Err(Status::deadline_exceeded("the request's deadline passed")),
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
        rotation_period_seconds: k.rotation_period.unwrap_or(0),
        next_rotation_unix: crate::kms::next_rotation_at(k).unwrap_or(0),
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

fn token_to_pb(t: crate::keystore::TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id,
        name: t.name,
        created_at_unix: t.created_at,
        expires_at_unix: t.expires_at.unwrap_or(0),
        revoked_at_unix: t.revoked_at.unwrap_or(0),
    }
}

/// Certificate names for an audit record (bounded).
fn names_detail(names: &[String]) -> String {
    let mut out = names.iter().take(16).cloned().collect::<Vec<_>>().join(",");
    if names.len() > 16 {
        out.push_str(&format!(",+{} more", names.len() - 16));
    }
    format!("names {out}")
}

/// What a batch touched, for its audit record: every distinct key an item was allowed
/// to use (a batch holds at most [`MAX_BATCH_ITEMS`], so this is bounded) and how many
/// items were refused.
fn batch_keys<'a>(items: impl Iterator<Item = (&'a str, bool)>) -> String {
    let mut allowed = Vec::new();
    let mut denied = 0usize;
    for (name, ok) in items {
        if ok {
            allowed.push(name);
        } else {
            denied += 1;
        }
    }
    allowed.sort_unstable();
    allowed.dedup();
    format!("keys {}; {denied} items denied", allowed.join(","))
}

#[tonic::async_trait]
impl KmsRpc for KmsService {
    type EncryptStreamStream = tokio_stream::wrappers::ReceiverStream<Result<pb::EncryptStreamResponse, Status>>;
    type DecryptStreamStream = tokio_stream::wrappers::ReceiverStream<Result<pb::DecryptStreamResponse, Status>>;

    async fn encrypt_stream(
        &self,
        r: Request<tonic::Streaming<pb::EncryptStreamRequest>>,
    ) -> Result<Response<Self::EncryptStreamStream>, Status> {
        let call = self.sec.begin(&r, "EncryptStream").await?;
        crate::streaming::encrypt_stream(self.kms.clone(), &self.streams, r.into_inner(), self.max_payload, call)
            .await
            .map(Response::new)
    }

    async fn decrypt_stream(
        &self,
        r: Request<tonic::Streaming<pb::DecryptStreamRequest>>,
    ) -> Result<Response<Self::DecryptStreamStream>, Status> {
        let call = self.sec.begin(&r, "DecryptStream").await?;
        crate::streaming::decrypt_stream(self.kms.clone(), &self.streams, r.into_inner(), self.max_payload, call)
            .await
            .map(Response::new)
    }

    async fn create_key(&self, r: Request<pb::CreateKeyRequest>) -> Result<Response<pb::KeyMetadata>, Status> {
        let mut call = self.sec.begin(&r, "CreateKey").await?;
        let name = r.into_inner().name;
        let pre = call.authorize(Op::Admin, Resource::Key(&name));
        if let Err(s) = call.attempt_after(pre).await {
            return Err(call.fail(s).await);
        }
        self.commit(call, move |k| k.create_key(&name).map(|k| metadata(&k)), |m| Some(m.primary_version)).await
    }

    async fn describe_key(&self, r: Request<pb::KeyRef>) -> Result<Response<pb::KeyMetadata>, Status> {
        let mut call = self.sec.begin(&r, "DescribeKey").await?;
        let name = r.into_inner().name;
        let result = async {
            call.authorize_key_read(&name)?;
            self.run(&call, move |k| k.describe_key(&name).map(|k| metadata(&k))).await
        }
        .await;
        call.finish(result).await
    }

    async fn list_keys(&self, r: Request<pb::ListKeysRequest>) -> Result<Response<pb::ListKeysResponse>, Status> {
        let call = self.sec.begin(&r, "ListKeys").await?;
        let result = async {
            let keys = self.run(&call, |k| k.list_keys()).await?;
            // Only the keys the caller may use: other tenants' names stay invisible.
            let keys = keys.iter().filter(|k| call.may_use_key(&k.name)).map(metadata).collect();
            Ok(pb::ListKeysResponse { keys })
        }
        .await;
        call.finish(result).await
    }

    async fn rotate_key(&self, r: Request<pb::KeyRef>) -> Result<Response<pb::KeyMetadata>, Status> {
        self.admin(r, "RotateKey", |k, name| k.rotate_key(name)).await
    }

    async fn enable_key(&self, r: Request<pb::KeyRef>) -> Result<Response<pb::KeyMetadata>, Status> {
        self.admin(r, "EnableKey", |k, name| k.enable_key(name)).await
    }

    async fn disable_key(&self, r: Request<pb::KeyRef>) -> Result<Response<pb::KeyMetadata>, Status> {
        self.admin(r, "DisableKey", |k, name| k.disable_key(name)).await
    }

    async fn schedule_key_deletion(
        &self,
        r: Request<pb::ScheduleKeyDeletionRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        let mut call = self.sec.begin(&r, "ScheduleKeyDeletion").await?;
        let r = r.into_inner();
        let pre = call.authorize(Op::Admin, Resource::Key(&r.name));
        if let Err(s) = call.attempt_after(pre).await {
            return Err(call.fail(s).await);
        }
        let f = move |k: &Kms| k.schedule_key_deletion(&r.name, r.pending_window_seconds).map(|k| metadata(&k));
        self.commit(call, f, |_| None).await
    }

    async fn cancel_key_deletion(&self, r: Request<pb::KeyRef>) -> Result<Response<pb::KeyMetadata>, Status> {
        self.admin(r, "CancelKeyDeletion", |k, name| k.cancel_key_deletion(name)).await
    }

    async fn set_min_decrypt_version(
        &self,
        r: Request<pb::SetMinDecryptVersionRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        let mut call = self.sec.begin(&r, "SetMinDecryptVersion").await?;
        let r = r.into_inner();
        let pre = call.authorize(Op::Admin, Resource::Key(&r.name));
        if let Err(s) = call.attempt_after(pre).await {
            return Err(call.fail(s).await);
        }
        let f = move |k: &Kms| k.set_min_decrypt_version(&r.name, r.min_decrypt_version).map(|k| metadata(&k));
        self.commit(call, f, |m| Some(m.min_decrypt_version)).await
    }

    async fn set_rotation_period(
        &self,
        r: Request<pb::SetRotationPeriodRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        let mut call = self.sec.begin(&r, "SetRotationPeriod").await?;
        let r = r.into_inner();
        let pre = call.authorize(Op::Admin, Resource::Key(&r.name));
        if let Err(s) = call.attempt_after(pre).await {
            return Err(call.fail(s).await);
        }
        let period = Some(r.rotation_period_seconds).filter(|&p| p > 0);
        let f = move |k: &Kms| k.set_rotation_period(&r.name, period).map(|k| metadata(&k));
        self.commit(call, f, |m| Some(m.primary_version)).await
    }

    async fn encrypt(&self, r: Request<pb::EncryptRequest>) -> Result<Response<pb::EncryptResponse>, Status> {
        let mut call = self.sec.begin(&r, "Encrypt").await?;
        let r = r.into_inner();
        let result = async {
            call.authorize(Op::Encrypt, Resource::Key(&r.key_name))?;
            self.check_size(r.plaintext.len())?;
            let ctx = context(r.context);
            let (len, name, plaintext) = (r.plaintext.len(), r.key_name, r.plaintext);
            let out = self
                .run_crypto(&call, len, move |k| {
                    let (ciphertext, key_version) = k.encrypt(&name, &plaintext, &ctx)?;
                    Ok(pb::EncryptResponse { ciphertext, key_name: name.clone(), key_version })
                })
                .await?;
            call.set_version(out.key_version);
            Ok(out)
        }
        .await;
        call.finish(result).await
    }

    async fn decrypt(&self, r: Request<pb::DecryptRequest>) -> Result<Response<pb::DecryptResponse>, Status> {
        let mut call = self.sec.begin(&r, "Decrypt").await?;
        let r = r.into_inner();
        let result = async {
            self.check_size(r.ciphertext.len())?;
            let (key, version) = Kms::ciphertext_key(&r.ciphertext).map_err(status)?;
            call.set_version(version);
            call.authorize(Op::Decrypt, Resource::Key(&key))?;
            let ctx = context(r.context);
            let (len, ciphertext) = (r.ciphertext.len(), r.ciphertext);
            self.run_crypto(&call, len, move |k| {
                let (plaintext, key_name, key_version) = k.decrypt(&ciphertext, &ctx)?;
                Ok(pb::DecryptResponse { plaintext: plaintext.expose_secret().to_vec(), key_name, key_version })
            })
            .await
        }
        .await;
        call.finish(result).await
    }

    async fn batch_encrypt(
        &self,
        r: Request<pb::BatchEncryptRequest>,
    ) -> Result<Response<pb::BatchEncryptResponse>, Status> {
        let mut call = self.sec.begin(&r, "BatchEncrypt").await?;
        let r = r.into_inner();
        let result = async {
            self.check_batch(r.items.len(), r.items.iter().map(|i| i.plaintext.len()).sum())?;
            let allowed: Vec<bool> =
                r.items.iter().map(|i| call.may(Op::Encrypt, &Resource::Key(&i.key_name))).collect();
            call.set_detail(batch_keys(r.items.iter().zip(&allowed).map(|(i, ok)| (i.key_name.as_str(), *ok))));
            self.run(&call, move |k| {
                let results = r
                    .items
                    .into_iter()
                    .zip(allowed)
                    .map(|(item, allowed)| {
                        let outcome = if allowed {
                            k.encrypt(&item.key_name, &item.plaintext, &context(item.context))
                        } else {
                            Err(KmsError::PermissionDenied(format!("encrypt denied on key {:?}", item.key_name)))
                        };
                        let result = match outcome {
                            Ok((ciphertext, key_version)) => {
                                pb::batch_encrypt_result::Result::Ok(pb::EncryptResponse {
                                    ciphertext,
                                    key_name: item.key_name,
                                    key_version,
                                })
                            }
                            Err(e) => pb::batch_encrypt_result::Result::Error(item_error(e)),
                        };
                        pb::BatchEncryptResult { result: Some(result) }
                    })
                    .collect();
                Ok(pb::BatchEncryptResponse { results })
            })
            .await
        }
        .await;
        call.finish(result).await
    }

    async fn batch_decrypt(
        &self,
        r: Request<pb::BatchDecryptRequest>,
    ) -> Result<Response<pb::BatchDecryptResponse>, Status> {
        let mut call = self.sec.begin(&r, "BatchDecrypt").await?;
        let r = r.into_inner();
        let result = async {
            self.check_batch(r.items.len(), r.items.iter().map(|i| i.ciphertext.len()).sum())?;
            let keys: Vec<Result<(String, u32), KmsError>> =
                r.items.iter().map(|i| Kms::ciphertext_key(&i.ciphertext)).collect();
            let detail = batch_keys(keys.iter().map(|k| match k {
                Ok((n, _)) => (n.as_str(), call.may(Op::Decrypt, &Resource::Key(n))),
                Err(_) => ("-", false),
            }));
            call.set_detail(detail);
            let allowed: Vec<Result<(), KmsError>> = keys
                .into_iter()
                .map(|k| {
                    let (name, _) = k?;
                    if call.may(Op::Decrypt, &Resource::Key(&name)) {
                        Ok(())
                    } else {
                        Err(KmsError::PermissionDenied(format!("decrypt denied on key {name:?}")))
                    }
                })
                .collect();
            self.run(&call, move |k| {
                let results = r
                    .items
                    .into_iter()
                    .zip(allowed)
                    .map(|(item, allowed)| {
                        let outcome = allowed.and_then(|()| k.decrypt(&item.ciphertext, &context(item.context)));
                        let result = match outcome {
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
        .await;
        call.finish(result).await
    }

    async fn re_encrypt(&self, r: Request<pb::ReEncryptRequest>) -> Result<Response<pb::ReEncryptResponse>, Status> {
        let mut call = self.sec.begin(&r, "ReEncrypt").await?;
        let r = r.into_inner();
        let result = async {
            self.check_size(r.ciphertext.len())?;
            let (key, version) = Kms::ciphertext_key(&r.ciphertext).map_err(status)?;
            call.set_version(version);
            call.authorize(Op::Rewrap, Resource::Key(&key))?;
            let out = self
                .run(&call, move |k| {
                    let (ciphertext, source_key_version, key_version) = k.re_encrypt(&r.ciphertext)?;
                    Ok(pb::ReEncryptResponse { ciphertext, source_key_version, key_version })
                })
                .await?;
            call.set_version(out.key_version);
            Ok(out)
        }
        .await;
        call.finish(result).await
    }

    async fn generate_data_key(
        &self,
        r: Request<pb::GenerateDataKeyRequest>,
    ) -> Result<Response<pb::GenerateDataKeyResponse>, Status> {
        let mut call = self.sec.begin(&r, "GenerateDataKey").await?;
        let r = r.into_inner();
        let result = async {
            call.authorize(Op::DataKey, Resource::Key(&r.key_name))?;
            let out = self
                .run_crypto(&call, 0, move |k| {
                    let (dk, w) = k.generate_data_key(&r.key_name)?;
                    Ok(pb::GenerateDataKeyResponse {
                        plaintext: if r.without_plaintext { Vec::new() } else { dk.expose_secret().to_vec() },
                        wrapped: Some(wrapped_to_pb(w)),
                    })
                })
                .await?;
            if let Some(w) = &out.wrapped {
                call.set_version(w.key_version);
            }
            Ok(out)
        }
        .await;
        call.finish(result).await
    }

    async fn decrypt_data_key(
        &self,
        r: Request<pb::WrappedDataKey>,
    ) -> Result<Response<pb::DecryptDataKeyResponse>, Status> {
        let mut call = self.sec.begin(&r, "DecryptDataKey").await?;
        let w = wrapped_from_pb(r.into_inner());
        let result = async {
            call.set_version(w.key_version);
            call.authorize(Op::DataKey, Resource::Key(&w.key_name))?;
            self.run_crypto(&call, 0, move |k| {
                Ok(pb::DecryptDataKeyResponse { plaintext: k.decrypt_data_key(&w)?.expose_secret().to_vec() })
            })
            .await
        }
        .await;
        call.finish(result).await
    }

    async fn re_encrypt_data_key(
        &self,
        r: Request<pb::WrappedDataKey>,
    ) -> Result<Response<pb::WrappedDataKey>, Status> {
        let mut call = self.sec.begin(&r, "ReEncryptDataKey").await?;
        let w = wrapped_from_pb(r.into_inner());
        let result = async {
            call.authorize(Op::Rewrap, Resource::Key(&w.key_name))?;
            let out = self.run(&call, move |k| Ok(wrapped_to_pb(k.re_encrypt_data_key(&w)?))).await?;
            call.set_version(out.key_version);
            Ok(out)
        }
        .await;
        call.finish(result).await
    }

    async fn put_secret(&self, r: Request<pb::PutSecretRequest>) -> Result<Response<pb::PutSecretResponse>, Status> {
        let mut call = self.sec.begin(&r, "PutSecret").await?;
        let r = r.into_inner();
        call.set_detail(format!("secret {}", r.name.chars().take(255).collect::<String>()));
        let ready = call
            .authorize(Op::SecretsWrite, Resource::Secret(&r.name))
            .and_then(|()| call.authorize(Op::Encrypt, Resource::Key(&r.key_name)))
            .and_then(|()| self.check_size(r.value.len()));
        if let Err(s) = call.attempt_after(ready).await {
            return Err(call.fail(s).await);
        }
        let f = move |k: &Kms| Ok(pb::PutSecretResponse { version: k.put_secret(&r.name, &r.key_name, &r.value)? });
        self.commit(call, f, |p| Some(p.version)).await
    }

    async fn get_secret(&self, r: Request<pb::GetSecretRequest>) -> Result<Response<pb::GetSecretResponse>, Status> {
        let mut call = self.sec.begin(&r, "GetSecret").await?;
        let r = r.into_inner();
        call.set_detail(format!("secret {}", r.name.chars().take(255).collect::<String>()));
        let result = async {
            call.authorize(Op::SecretsRead, Resource::Secret(&r.name))?;
            let out = self
                .run(&call, move |k| {
                    let s = k.get_secret(&r.name, (r.version != 0).then_some(r.version))?;
                    Ok(pb::GetSecretResponse {
                        value: s.value.expose_secret().to_vec(),
                        version: s.version,
                        key_name: s.key_name,
                        created_at_unix: s.created_at,
                    })
                })
                .await?;
            call.set_version(out.version);
            Ok(out)
        }
        .await;
        call.finish(result).await
    }

    async fn list_secrets(
        &self,
        r: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        let call = self.sec.begin(&r, "ListSecrets").await?;
        let result = async {
            let secrets = self.run(&call, |k| k.list_secrets()).await?;
            let secrets = secrets
                .into_iter()
                .filter(|s| call.may(Op::SecretsRead, &Resource::Secret(&s.name)))
                .map(|s| pb::SecretInfo { name: s.name, latest_version: s.latest_version, key_name: s.key_name })
                .collect();
            Ok(pb::ListSecretsResponse { secrets })
        }
        .await;
        call.finish(result).await
    }

    async fn delete_secret(
        &self,
        r: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        let mut call = self.sec.begin(&r, "DeleteSecret").await?;
        let name = r.into_inner().name;
        call.set_detail(format!("secret {}", name.chars().take(255).collect::<String>()));
        let pre = call.authorize(Op::SecretsWrite, Resource::Secret(&name));
        if let Err(s) = call.attempt_after(pre).await {
            return Err(call.fail(s).await);
        }
        self.commit(call, move |k| k.delete_secret(&name).map(|()| pb::DeleteSecretResponse {}), |_| None).await
    }

    async fn init_ca(&self, r: Request<pb::InitCaRequest>) -> Result<Response<pb::CaBundle>, Status> {
        let mut call = self.sec.begin(&r, "InitCa").await?;
        let r = r.into_inner();
        let pre = call.authorize(Op::PkiAdmin, Resource::None);
        if let Err(s) = call.attempt_after(pre).await {
            return Err(call.fail(s).await);
        }
        let f = move |k: &Kms| {
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
        };
        self.commit(call, f, |_| None).await
    }

    async fn issue_certificate(
        &self,
        r: Request<pb::IssueCertificateRequest>,
    ) -> Result<Response<pb::IssuedCertificate>, Status> {
        let mut call = self.sec.begin(&r, "IssueCertificate").await?;
        let r = r.into_inner();
        let sans =
            match r.sans.iter().map(|s| crypto_core::pki::SubjectAltName::parse(s)).collect::<Result<Vec<_>, _>>() {
                Ok(s) => s,
                Err(e) => return Err(call.fail(status(e.into())).await),
            };
        let names = crate::ca::certificate_names(&r.common_name, &sans);
        call.set_detail(names_detail(&names));
        let mut ready = Ok(());
        for name in &names {
            ready = ready.and_then(|()| call.authorize(Op::PkiIssue, Resource::Name(name)));
        }
        if let Err(s) = call.attempt_after(ready).await {
            return Err(call.fail(s).await);
        }
        let f = move |k: &Kms| {
            let request = crypto_core::pki::LeafRequest {
                common_name: r.common_name,
                sans,
                key_type: key_type(&r.key_type)?,
                ttl: std::time::Duration::from_secs(r.ttl_seconds),
                usage: usage(&r.usage)?,
            };
            Ok(issued_to_pb(k.issue_certificate(&request)?))
        };
        self.commit(call, f, |_| None).await
    }

    async fn sign_csr(&self, r: Request<pb::SignCsrRequest>) -> Result<Response<pb::IssuedCertificate>, Status> {
        let mut call = self.sec.begin(&r, "SignCsr").await?;
        let r = r.into_inner();
        // The names are known only once the CSR is parsed: each is checked in
        // `sign_csr_checked` before the certificate is recorded or returned.
        let ready = self.check_size(r.csr.len()).and_then(|()| call.authorize_op(Op::PkiIssue));
        if let Err(s) = call.attempt_after(ready).await {
            return Err(call.fail(s).await);
        }
        let policy = self.sec.policy();
        let names = call.names().to_vec();
        let f = move |k: &Kms| {
            let ttl = std::time::Duration::from_secs(r.ttl_seconds);
            let check = |certificate_names: &[String]| {
                for n in certificate_names {
                    if !policy.allows(&names, Op::PkiIssue, &Resource::Name(n)) {
                        return Err(KmsError::PermissionDenied(format!("pki-issue denied for name {n:?}")));
                    }
                }
                Ok(())
            };
            Ok(issued_to_pb(k.sign_csr_checked(&r.csr, ttl, usage(&r.usage)?, &check)?))
        };
        self.commit(call, f, |_| None).await
    }

    async fn revoke_certificate(
        &self,
        r: Request<pb::RevokeCertificateRequest>,
    ) -> Result<Response<pb::CertificateInfo>, Status> {
        let mut call = self.sec.begin(&r, "RevokeCertificate").await?;
        let r = r.into_inner();
        call.set_detail(format!("serial {}", r.serial.chars().take(64).collect::<String>()));
        let pre = call.authorize(Op::PkiAdmin, Resource::None);
        if let Err(s) = call.attempt_after(pre).await {
            return Err(call.fail(s).await);
        }
        let f = move |k: &Kms| {
            let reason = if r.reason.is_empty() {
                crypto_core::pki::RevocationReason::Unspecified
            } else {
                crypto_core::pki::RevocationReason::parse(&r.reason)?
            };
            Ok(certificate_to_pb(k.revoke_certificate(&r.serial, reason)?))
        };
        self.commit(call, f, |_| None).await
    }

    async fn list_certificates(
        &self,
        r: Request<pb::ListCertificatesRequest>,
    ) -> Result<Response<pb::ListCertificatesResponse>, Status> {
        let mut call = self.sec.begin(&r, "ListCertificates").await?;
        let result = async {
            call.authorize(Op::PkiAdmin, Resource::None)?;
            self.run(&call, |k| {
                Ok(pb::ListCertificatesResponse {
                    certificates: k.list_certificates()?.into_iter().map(certificate_to_pb).collect(),
                })
            })
            .await
        }
        .await;
        call.finish(result).await
    }

    async fn get_ca_bundle(&self, r: Request<pb::GetCaBundleRequest>) -> Result<Response<pb::CaBundle>, Status> {
        let call = self.sec.begin(&r, "GetCaBundle").await?;
        let result = self.run(&call, |k| Ok(pb::CaBundle { pem: k.ca_info()?.bundle_pem })).await;
        call.finish(result).await
    }

    async fn get_crl(&self, r: Request<pb::GetCrlRequest>) -> Result<Response<pb::Crl>, Status> {
        let call = self.sec.begin(&r, "GetCrl").await?;
        let result = self
            .run(&call, |k| {
                let (der, number) = k.crl()?;
                Ok(pb::Crl { pem: crypto_core::pki::to_pem("X509 CRL", &der), number })
            })
            .await;
        call.finish(result).await
    }

    async fn who_am_i(&self, r: Request<pb::WhoAmIRequest>) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let call = self.sec.begin(&r, "WhoAmI").await?;
        let out = pb::WhoAmIResponse { identity: call.principal().to_owned(), names: call.names().to_vec() };
        call.finish(Ok(out)).await
    }

    async fn create_token(
        &self,
        r: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let mut call = self.sec.begin(&r, "CreateToken").await?;
        let r = r.into_inner();
        call.set_detail(format!("token:{}", r.name.chars().take(64).collect::<String>()));
        let pre = call.authorize(Op::TokenAdmin, Resource::Token(&r.name));
        if let Err(s) = call.attempt_after(pre).await {
            return Err(call.fail(s).await);
        }
        let sec = self.sec.clone();
        let ttl = (r.ttl_seconds > 0).then(|| std::time::Duration::from_secs(r.ttl_seconds));
        let f = move |_: &Kms| {
            let created = sec.create_token(&r.name, ttl)?;
            let token = String::from_utf8(created.token.expose_secret().to_vec())
                .map_err(|_| KmsError::Internal("token encoding".into()))?;
            Ok(pb::CreateTokenResponse { token, info: Some(token_to_pb(created.record)) })
        };
        self.commit(call, f, |_| None).await
    }

    async fn list_tokens(&self, r: Request<pb::ListTokensRequest>) -> Result<Response<pb::ListTokensResponse>, Status> {
        let mut call = self.sec.begin(&r, "ListTokens").await?;
        let result = async {
            call.authorize_op(Op::TokenAdmin)?;
            let sec = self.sec.clone();
            let tokens = self.run(&call, move |_| sec.list_tokens()).await?;
            let tokens = tokens
                .into_iter()
                .filter(|t| call.may(Op::TokenAdmin, &Resource::Token(&t.name)))
                .map(token_to_pb)
                .collect();
            Ok(pb::ListTokensResponse { tokens })
        }
        .await;
        call.finish(result).await
    }

    async fn revoke_token(
        &self,
        r: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let mut call = self.sec.begin(&r, "RevokeToken").await?;
        let r = r.into_inner();
        call.set_detail(format!("token {}", r.id_or_name.chars().take(64).collect::<String>()));
        let pre = call.authorize_op(Op::TokenAdmin);
        if let Err(s) = call.attempt_after(pre).await {
            return Err(call.fail(s).await);
        }
        let sec = self.sec.clone();
        let (policy, names) = (self.sec.policy(), call.names().to_vec());
        let f = move |_: &Kms| {
            let revoked = sec
                .revoke_tokens(&r.id_or_name, &|name| policy.allows(&names, Op::TokenAdmin, &Resource::Token(name)))?;
            Ok(pb::ListTokensResponse { tokens: revoked.into_iter().map(token_to_pb).collect() })
        };
        self.commit(call, f, |_| None).await
    }

    async fn audit_head(&self, r: Request<pb::AuditHeadRequest>) -> Result<Response<pb::AuditHeadResponse>, Status> {
        let mut call = self.sec.begin(&r, "AuditHead").await?;
        let result = call.authorize(Op::AuditRead, Resource::None).map(|()| {
            let head = self.sec.audit().head();
            pb::AuditHeadResponse { seq: head.seq, mac: hex::encode(head.mac), head: head.to_string() }
        });
        call.finish(result).await
    }

    async fn hash_password(
        &self,
        r: Request<pb::HashPasswordRequest>,
    ) -> Result<Response<pb::HashPasswordResponse>, Status> {
        let mut call = self.sec.begin(&r, "HashPassword").await?;
        let password = zeroize::Zeroizing::new(r.into_inner().password);
        let result = async {
            call.authorize(Op::Password, Resource::None)?;
            let passwords = self.passwords.clone();
            let slot = tokio::time::timeout_at(call.deadline().into(), passwords.slots.clone().acquire_owned())
                .await
                .map_err(|_| Status::deadline_exceeded("waiting for a password-hashing slot"))?
                .map_err(|_| Status::unavailable("shutting down"))?;
            self.run(&call, move |_| {
                // Held by the thread doing the work, even if the request's deadline passes.
                let _slot = slot;
                let hash = passwords.hasher.hash(&password).map_err(|e| KmsError::InvalidArgument(e.to_string()))?;
                Ok(pb::HashPasswordResponse { hash })
            })
            .await
        }
        .await;
        call.finish(result).await
    }

    async fn verify_password(
        &self,
        r: Request<pb::VerifyPasswordRequest>,
    ) -> Result<Response<pb::VerifyPasswordResponse>, Status> {
        let mut call = self.sec.begin(&r, "VerifyPassword").await?;
        let r = r.into_inner();
        let (hash, password) = (r.hash, zeroize::Zeroizing::new(r.password));
        let result = async {
            call.authorize(Op::Password, Resource::None)?;
            // The stored string sets the cost: refuse more than a service hash needs before
            // any work (memory is what a slot does not bound).
            let cost = crypto_core::password::params_of(&hash).map_err(|e| Status::invalid_argument(e.to_string()))?;
            if cost.memory_kib > MAX_VERIFY_MEMORY_KIB || cost.iterations > 8 || cost.lanes > 4 {
                return Err(Status::invalid_argument(format!(
                    "password hash parameters above m={MAX_VERIFY_MEMORY_KIB}, t=8, p=4 are refused"
                )));
            }
            let passwords = self.passwords.clone();
            let slot = tokio::time::timeout_at(call.deadline().into(), passwords.slots.clone().acquire_owned())
                .await
                .map_err(|_| Status::deadline_exceeded("waiting for a password-hashing slot"))?
                .map_err(|_| Status::unavailable("shutting down"))?;
            let out = self
                .run(&call, move |_| {
                    let _slot = slot;
                    let bad = |e: crypto_core::password::PasswordError| KmsError::InvalidArgument(e.to_string());
                    let valid = passwords.hasher.verify(&hash, &password).map_err(bad)?
                        == crypto_core::password::Verification::Match;
                    let needs_rehash = passwords.hasher.needs_rehash(&hash).map_err(bad)?;
                    Ok(pb::VerifyPasswordResponse { valid, needs_rehash })
                })
                .await?;
            call.set_detail(if out.valid { "match".into() } else { "mismatch".into() });
            Ok(out)
        }
        .await;
        call.finish(result).await
    }
}

impl KmsService {
    /// The key administration RPCs that take a [`pb::KeyRef`].
    async fn admin(
        &self,
        r: Request<pb::KeyRef>,
        op: &'static str,
        f: fn(&Kms, &str) -> Result<KeyRecord, KmsError>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        let mut call = self.sec.begin(&r, op).await?;
        let name = r.into_inner().name;
        let pre = call.authorize(Op::Admin, Resource::Key(&name));
        if let Err(s) = call.attempt_after(pre).await {
            return Err(call.fail(s).await);
        }
        self.commit(call, move |k| f(k, &name).map(|k| metadata(&k)), |m| Some(m.primary_version)).await
    }

    /// Carries out a state change whose `attempt` record is written, to the end: it runs
    /// in a task of its own that is not cancelled by the deadline or by the client going
    /// away, and that task writes the `result` record, so the audit log always says what
    /// happened.
    async fn commit<T: Send + 'static>(
        &self,
        mut call: Call,
        f: impl FnOnce(&Kms) -> Result<T, KmsError> + Send + 'static,
        version: fn(&T) -> Option<u32>,
    ) -> Result<Response<T>, Status> {
        if let Err(s) = call.check_deadline() {
            return Err(call.fail(s).await);
        }
        let kms = self.kms.clone();
        let task = tokio::spawn(async move {
            let result = match tokio::task::spawn_blocking(move || f(&kms)).await {
                Ok(r) => r.map_err(status),
                Err(_) => Err(Status::internal("operation panicked")),
            };
            if let Some(v) = result.as_ref().ok().and_then(version) {
                call.set_version(v);
            }
            call.finish(result).await
        });
        task.await.unwrap_or_else(|_| Err(Status::internal("operation task failed")))
    }
}
