//! AWS KMS as a key provider (feature `aws-kms`): data keys wrapped by AWS KMS `Encrypt`
//! under one AWS KMS key, unwrapped by `Decrypt`.
//!
//! The public interface is:
//!
//! * [`AwsKmsConfig`]: which AWS key, where, with which credentials and time limits.
//! * [`AwsKmsClient`]: a **synchronous** client for the three operations this crate needs
//!   (`Encrypt`, `Decrypt`, `DescribeKey`). It owns a small tokio runtime, so it can be
//!   called from any thread: plain threads, `spawn_blocking` threads, even (though that
//!   blocks a worker) from inside another runtime's tasks. It never panics.
//! * [`AwsKmsProvider`]: a [`KeyProvider`] (provider id `aws-kms`) over one or more
//!   clients; combine it with a local KEK in a [`crate::provider::MultiProvider`] for
//!   disaster recovery.
//! * [`AwsKmsError`]: what went wrong, with the AWS error code when AWS answered.
//!
//! # How key names and versions map to AWS
//!
//! A crypto-core key name (`tenant-a/db`) is not an AWS key: the provider wraps the data
//! keys of every key name it serves under its configured AWS KMS key, and binds the name
//! into the AWS *encryption context* (with a fixed purpose string, see
//! [`CONTEXT_PURPOSE_KEY`]), so a blob made for one key name does not open under another.
//! To give tenants separate AWS keys (so that scheduling one AWS key for deletion shreds one
//! tenant), route names to clients with [`AwsKmsProvider::with_key`].
//!
//! AWS KMS rotates key material internally (automatic or on-demand rotation keeps the key
//! id, and each ciphertext blob names the material that made it), so there is no
//! caller-visible version: every wrapped entry carries [`AWS_KEY_VERSION`] (1, the format's
//! first valid version), and rewrap re-encrypts under the key's current material.
//! Manual rotation (pointing an alias at a new AWS key) is different: `Decrypt` is always
//! sent with the configured key id (so a blob made under another AWS key is refused), so
//! blobs made under the old key open only through a provider whose client names the old
//! key's ARN; open and rewrap them with that before retiring the old key. Prefer AWS's own
//! rotation.
//!
//! # Secrets
//!
//! Data keys and decrypted plaintexts are returned in zeroizing types, and credentials are
//! held in [`secrecy::SecretString`]; none of them appear in `Debug`, `Display` or errors.
//! The AWS SDK itself copies request and response bodies (base64 JSON) into buffers that
//! it does not zeroize; that is outside this crate's reach.
//!
//! # Permissions
//!
//! The AWS principal needs `kms:Encrypt`, `kms:Decrypt` and (for [`AwsKmsClient::check`])
//! `kms:DescribeKey` on the key. IAM conditions on `kms:EncryptionContext:cryptocore:key-name`
//! can limit a principal to some key names.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{Credentials, Region};
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::operation::RequestId;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::keys::{KeyError, validate_key_name};
use crate::provider::{KeyProvider, MAX_BLOB_LEN, ProviderError, WrappedKey, validate_provider_id};
use crate::secret::DataKey;

/// Default provider id of [`AwsKmsProvider`].
pub const AWS_KMS_PROVIDER_ID: &str = "aws-kms";
/// The key version of every entry this provider writes (AWS KMS versions key material
/// internally; see the module documentation).
pub const AWS_KEY_VERSION: u32 = 1;
/// Encryption-context entry naming what the AWS ciphertext is for; its value is
/// [`CONTEXT_PURPOSE`].
pub const CONTEXT_PURPOSE_KEY: &str = "cryptocore:purpose";
/// Value of [`CONTEXT_PURPOSE_KEY`]: a crypto-core data key, format v1.
pub const CONTEXT_PURPOSE: &str = "data-key/v1";
/// Encryption-context entry holding the crypto-core key name the data key was wrapped for.
pub const CONTEXT_KEY_NAME_KEY: &str = "cryptocore:key-name";
/// The largest plaintext AWS KMS `Encrypt` accepts, in bytes.
pub const MAX_PLAINTEXT_LEN: usize = 4096;
/// The largest ciphertext blob AWS KMS `Decrypt` accepts, in bytes.
pub const MAX_CIPHERTEXT_LEN: usize = 6144;
/// The longest key id, ARN or alias AWS KMS accepts, in bytes.
pub const MAX_KEY_ID_LEN: usize = 2048;
/// The longest timeout or back-off [`AwsKmsConfig::validate`] accepts: 1 hour (longer ones
/// are mistakes, and time arithmetic on them could overflow).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Extra time the synchronous facade waits beyond the operation timeout before it gives
/// up on the runtime itself (which only happens if the runtime is wedged).
const FACADE_GRACE: Duration = Duration::from_secs(2);
/// Worker threads of the owned runtime: requests are I/O bound; two threads keep one slow
/// TLS handshake or signature from delaying every other caller.
const RUNTIME_WORKERS: usize = 2;

// ---- configuration ----------------------------------------------------------------------

/// Static AWS credentials (an access key pair, optionally with a session token).
///
/// Prefer the default credential chain (leave [`AwsKmsConfig::credentials`] unset): it
/// finds environment variables, profiles, EKS web identity (IRSA), ECS and EC2 instance
/// roles, and refreshes temporary credentials. Static keys are for emulators and tests.
#[derive(Clone)]
pub struct AwsCredentials {
    access_key_id: String,
    secret_access_key: SecretString,
    session_token: Option<SecretString>,
}

impl AwsCredentials {
    /// An access key id and its secret.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<SecretString>) -> Self {
        Self { access_key_id: access_key_id.into(), secret_access_key: secret_access_key.into(), session_token: None }
    }

    /// Adds the session token of temporary credentials.
    pub fn with_session_token(mut self, session_token: impl Into<SecretString>) -> Self {
        self.session_token = Some(session_token.into());
        self
    }

    /// The access key id (an identifier, not a secret).
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    fn to_sdk(&self) -> Credentials {
        // The SDK keeps these in `Zeroizing` strings of its own.
        Credentials::new(
            self.access_key_id.as_str(),
            self.secret_access_key.expose_secret(),
            self.session_token.as_ref().map(|t| t.expose_secret().to_owned()),
            None,
            "cryptocore-static",
        )
    }
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .field("session_token", &self.session_token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// Where and how to reach AWS KMS, and which key to use.
///
/// Only [`key_id`](Self::key_id) is required; everything else has a default suited to a
/// service that wraps data keys on its request path: fail within seconds, not minutes.
///
/// ```
/// # use std::time::Duration;
/// use crypto_core::aws_kms::AwsKmsConfig;
///
/// let config = AwsKmsConfig::new("alias/cryptocore-root")
///     .with_region("eu-west-1")
///     .with_operation_timeout(Duration::from_secs(10));
/// assert_eq!(config.max_attempts, 3);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AwsKmsConfig {
    /// The AWS KMS key: key id, key ARN, alias name (`alias/…`) or alias ARN. A symmetric
    /// encryption key (`SYMMETRIC_DEFAULT`, usage `ENCRYPT_DECRYPT`). A full ARN pins the
    /// account and region.
    pub key_id: String,
    /// AWS region (`us-east-1`); `None`: the default region chain (`AWS_REGION`, profile,
    /// EC2 instance metadata).
    pub region: Option<String>,
    /// An endpoint URL replacing the regional one: a VPC endpoint, or a local emulator
    /// (`http://127.0.0.1:…`). `None`: the standard AWS endpoint for the region.
    pub endpoint_url: Option<String>,
    /// Static credentials; `None`: the default credential chain (recommended).
    pub credentials: Option<AwsCredentials>,
    /// Use the region's FIPS 140 endpoint.
    pub use_fips: bool,
    /// Limit for establishing a TCP/TLS connection. Default 3 s.
    pub connect_timeout: Duration,
    /// Limit for one attempt (connect, send, receive). Default 5 s.
    pub attempt_timeout: Duration,
    /// Limit for a whole operation, all attempts and back-off included. Default 15 s.
    pub operation_timeout: Duration,
    /// Attempts per operation (1 = no retry), for throttling, 5xx answers, timeouts and
    /// connection failures. Default 3.
    pub max_attempts: u32,
    /// Back-off before the first retry; it doubles on each further retry (with full
    /// jitter) up to [`max_backoff`](Self::max_backoff). Default 200 ms.
    pub initial_backoff: Duration,
    /// Longest back-off between attempts. Default 2 s.
    pub max_backoff: Duration,
}

impl AwsKmsConfig {
    /// A configuration for `key_id` (key id, ARN, or `alias/…`) with the defaults.
    pub fn new(key_id: impl Into<String>) -> Self {
        Self {
            key_id: key_id.into(),
            region: None,
            endpoint_url: None,
            credentials: None,
            use_fips: false,
            connect_timeout: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(15),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
        }
    }

    /// Sets the region.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Sets an endpoint URL override.
    pub fn with_endpoint_url(mut self, endpoint_url: impl Into<String>) -> Self {
        self.endpoint_url = Some(endpoint_url.into());
        self
    }

    /// Uses static credentials instead of the default chain.
    pub fn with_credentials(mut self, credentials: AwsCredentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the per-attempt timeout.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Sets the whole-operation timeout.
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Sets the number of attempts per operation (at least 1).
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Checks the values without contacting AWS.
    pub fn validate(&self) -> Result<(), AwsKmsError> {
        let bad = |m: String| Err(AwsKmsError::Config(m));
        validate_key_id(&self.key_id)?;
        if let Some(region) = &self.region
            && (region.is_empty() || !region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return bad(format!("region {region:?} is not a region name"));
        }
        if let Some(url) = &self.endpoint_url {
            let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
            let authority = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
            if authority.is_none_or(|a| a.is_empty() || a.contains('@')) || url.bytes().any(|b| !b.is_ascii_graphic()) {
                // No user info: an endpoint URL is no place for credentials (and would be logged).
                return bad("endpoint URL must be http:// or https:// followed by a host (no user info)".into());
            }
        }
        if let Some(c) = &self.credentials
            && (c.access_key_id.is_empty() || c.secret_access_key.expose_secret().is_empty())
        {
            return bad("static credentials need a non-empty access key id and secret".into());
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1".into());
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("attempt_timeout", self.attempt_timeout),
            ("operation_timeout", self.operation_timeout),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must be positive"));
            }
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("attempt_timeout", self.attempt_timeout),
            ("operation_timeout", self.operation_timeout),
            ("initial_backoff", self.initial_backoff),
            ("max_backoff", self.max_backoff),
        ] {
            if d > MAX_TIMEOUT {
                return bad(format!("{name} must not exceed {} s", MAX_TIMEOUT.as_secs()));
            }
        }
        if self.initial_backoff > self.max_backoff {
            return bad("initial_backoff must not exceed max_backoff".into());
        }
        Ok(())
    }
}

fn validate_key_id(id: &str) -> Result<(), AwsKmsError> {
    if id.is_empty() || id.len() > MAX_KEY_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AwsKmsError::Config(format!(
            "key id must be 1 to {MAX_KEY_ID_LEN} printable ASCII bytes without spaces"
        )));
    }
    Ok(())
}

// ---- errors -----------------------------------------------------------------------------

/// Why an AWS KMS call failed.
///
/// Error texts carry AWS's error code and message, the operation and the key id; never
/// plaintexts, data keys or credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AwsKmsError {
    /// AWS KMS received the request and answered with an error (`DisabledException`,
    /// `NotFoundException`, `InvalidCiphertextException`, `IncorrectKeyException`,
    /// `AccessDeniedException`, `ThrottlingException`, …).
    #[error("AWS KMS {operation} failed: {code}: {message}{}", request_id_suffix(.request_id.as_deref()))]
    Service {
        /// The KMS operation (`Encrypt`, `Decrypt`, `DescribeKey`).
        operation: &'static str,
        /// AWS's error code, e.g. `DisabledException`.
        code: String,
        /// AWS's error message (may be empty).
        message: String,
        /// The HTTP status of the answer.
        status: u16,
        /// AWS's request id, for support cases.
        request_id: Option<String>,
    },
    /// AWS KMS could not be reached or did not answer in time: connection refused or
    /// reset, DNS or TLS failure, a timeout, or an answer that was not a KMS response
    /// (a proxy's error page). Retrying later may succeed.
    #[error("AWS KMS {operation} unavailable: {detail}")]
    Unavailable {
        /// The KMS operation.
        operation: &'static str,
        /// What happened (the SDK's error chain).
        detail: String,
    },
    /// No AWS credentials could be obtained (none configured, or the source of temporary
    /// credentials, such as STS or the instance metadata service, failed).
    #[error("AWS KMS {operation}: no AWS credentials: {detail}")]
    Credentials {
        /// The KMS operation.
        operation: &'static str,
        /// The credential provider's error chain.
        detail: String,
    },
    /// The key exists but cannot serve this crate (found by [`AwsKmsClient::check`]):
    /// not enabled, or not a symmetric encryption key.
    #[error("AWS KMS key {key_id} cannot be used: {reason}")]
    KeyUnusable {
        /// The key's ARN as AWS reported it (or the configured id).
        key_id: String,
        /// Why, e.g. `key state is Disabled`.
        reason: String,
    },
    /// AWS answered successfully, but the answer lacks a field or has the wrong size.
    #[error("AWS KMS {operation} returned an unusable answer: {detail}")]
    InvalidResponse {
        /// The KMS operation.
        operation: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The request itself is invalid (for example a plaintext over 4096 bytes).
    #[error("invalid AWS KMS request: {0}")]
    InvalidInput(String),
    /// The configuration is invalid, or the client could not be set up with it.
    #[error("AWS KMS misconfigured: {0}")]
    Config(String),
}

fn request_id_suffix(request_id: Option<&str>) -> String {
    request_id.map(|id| format!(" (request id {id})")).unwrap_or_default()
}

/// AWS error codes after which a later retry may succeed.
const TRANSIENT_CODES: &[&str] = &[
    "KMSInternalException",
    "DependencyTimeoutException",
    "KeyUnavailableException",
    "ThrottlingException",
    "ServiceUnavailable",
    "InternalFailure",
];

impl AwsKmsError {
    /// AWS's error code, when AWS answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True when AWS KMS could not be used right now but might be later: unreachable,
    /// timed out, throttled, an AWS-side internal error or unavailable key store, or no
    /// credentials available. Health checks report these as "not serving"; callers may retry.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unavailable { .. } | Self::Credentials { .. } => true,
            Self::Service { code, status, .. } => *status >= 500 || TRANSIENT_CODES.contains(&code.as_str()),
            _ => false,
        }
    }

    /// True when AWS refused a ciphertext: it was altered, made under another key, or
    /// presented with another encryption context.
    pub fn is_ciphertext_rejected(&self) -> bool {
        matches!(self.code(), Some("InvalidCiphertextException" | "IncorrectKeyException"))
    }

    /// Sorts an SDK error into the variants above.
    fn from_sdk<E>(operation: &'static str, err: SdkError<E, aws_sdk_kms::config::http::HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + RequestId + std::error::Error + Send + Sync + 'static,
    {
        let detail = || DisplayErrorContext(&err).to_string();
        match &err {
            SdkError::ServiceError(service) => {
                let e = service.err();
                Self::Service {
                    operation,
                    code: e.code().unwrap_or("UnknownError").to_owned(),
                    message: e.message().unwrap_or_default().to_owned(),
                    status: service.raw().status().as_u16(),
                    request_id: e.request_id().map(str::to_owned),
                }
            }
            // Identity resolution failures surface as dispatch (or construction) failures.
            _ if has_credentials_error(&err) => Self::Credentials { operation, detail: detail() },
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
                Self::Unavailable { operation, detail: detail() }
            }
            SdkError::ConstructionFailure(_) => Self::Config(format!("{operation}: {}", detail())),
            _ => Self::Unavailable { operation, detail: detail() },
        }
    }
}

/// Whether a credential provider's error is somewhere in the chain.
fn has_credentials_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<CredentialsError>().is_some() {
            return true;
        }
        cur = e.source();
    }
    false
}

impl From<AwsKmsError> for ProviderError {
    /// AWS's rejection of a ciphertext is [`ProviderError::UnwrapFailed`] (no details, as
    /// for every provider); configuration errors are [`ProviderError::Config`]; everything
    /// else (AWS errors, unreachable, credentials) is [`ProviderError::Unavailable`] with
    /// the error text, which names the AWS error code.
    fn from(e: AwsKmsError) -> Self {
        match e {
            e if e.is_ciphertext_rejected() => ProviderError::UnwrapFailed,
            AwsKmsError::Config(m) => ProviderError::Config(format!("AWS KMS: {m}")),
            AwsKmsError::InvalidInput(m) => ProviderError::Config(format!("AWS KMS: {m}")),
            e => ProviderError::Unavailable(e.to_string()),
        }
    }
}

// ---- client -----------------------------------------------------------------------------

/// A tokio runtime that is shut down without blocking when dropped, so dropping the client
/// inside another runtime's task (where a blocking shutdown would panic) is safe.
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// What the clients made from one configuration share.
struct Shared {
    sdk: aws_sdk_kms::Client,
    runtime: OwnedRuntime,
    region: String,
    endpoint_url: Option<String>,
    static_credentials: bool,
    operation_timeout: Duration,
}

/// A synchronous AWS KMS client bound to one key. Cheap to clone; clones, and clients for
/// other keys made with [`for_key`](Self::for_key), share one connection pool, credential
/// cache and runtime. `Send + Sync`.
///
/// Every call blocks the calling thread until AWS answers or the configured
/// [`operation_timeout`](AwsKmsConfig::operation_timeout) passes. The requests run on a
/// small runtime owned by the client, so any thread may call: a `spawn_blocking` thread is
/// the right place inside async code.
#[derive(Clone)]
pub struct AwsKmsClient {
    shared: Arc<Shared>,
    key_id: Arc<str>,
}

impl fmt::Debug for AwsKmsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.shared;
        f.debug_struct("AwsKmsClient")
            .field("key_id", &self.key_id)
            .field("region", &i.region)
            .field("endpoint_url", &i.endpoint_url)
            .field("credentials", &if i.static_credentials { "static" } else { "default chain" })
            .finish_non_exhaustive()
    }
}

impl AwsKmsClient {
    /// Builds a client: validates `config`, starts the runtime and resolves the region.
    /// Contacts nothing unless the region must come from instance metadata; credentials
    /// are fetched on first use. Use [`check`](Self::check) to verify the key is usable.
    pub fn new(config: AwsKmsConfig) -> Result<Self, AwsKmsError> {
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_WORKERS)
            .thread_name("cryptocore-aws-kms")
            .enable_all()
            .build()
            .map_err(|e| AwsKmsError::Config(format!("cannot start the client's runtime: {e}")))?;
        let runtime = OwnedRuntime(Some(runtime));

        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .operation_attempt_timeout(config.attempt_timeout)
                    .operation_timeout(config.operation_timeout)
                    .build(),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(config.max_attempts)
                    .with_initial_backoff(config.initial_backoff)
                    .with_max_backoff(config.max_backoff),
            );
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        if let Some(creds) = &config.credentials {
            loader = loader.credentials_provider(creds.to_sdk());
        }
        if config.use_fips {
            loader = loader.use_fips(true);
        }
        let sdk_config =
            run_on(&runtime, "configure", config.operation_timeout, async move { Ok(loader.load().await) })?;
        let region = match sdk_config.region() {
            Some(r) => r.to_string(),
            None => {
                return Err(AwsKmsError::Config("no AWS region: set `region`, AWS_REGION, or a profile region".into()));
            }
        };
        let sdk = aws_sdk_kms::Client::new(&sdk_config);
        Ok(Self {
            shared: Arc::new(Shared {
                sdk,
                runtime,
                region,
                endpoint_url: config.endpoint_url,
                static_credentials: config.credentials.is_some(),
                operation_timeout: config.operation_timeout,
            }),
            key_id: config.key_id.into(),
        })
    }

    /// A client for another AWS key with the same region, endpoint, credentials and limits,
    /// sharing this client's connections and runtime (for one key per tenant, see
    /// [`AwsKmsProvider::with_key`]).
    pub fn for_key(&self, key_id: impl Into<String>) -> Result<Self, AwsKmsError> {
        let key_id = key_id.into();
        validate_key_id(&key_id)?;
        Ok(Self { shared: self.shared.clone(), key_id: key_id.into() })
    }

    /// The configured key id, ARN or alias.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The region in use.
    pub fn region(&self) -> &str {
        &self.shared.region
    }

    /// Encrypts up to 4096 bytes under the key (`Encrypt`), binding `encryption_context`
    /// (which must be presented again to decrypt; it is logged by CloudTrail, so it must
    /// not hold secrets). Returns AWS's ciphertext blob.
    pub fn encrypt(
        &self,
        plaintext: &[u8],
        encryption_context: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>, AwsKmsError> {
        if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(AwsKmsError::InvalidInput(format!(
                "plaintext must be 1 to {MAX_PLAINTEXT_LEN} bytes (got {})",
                plaintext.len()
            )));
        }
        const OP: &str = "Encrypt";
        let request = self
            .shared
            .sdk
            .encrypt()
            .key_id(self.key_id.as_ref())
            .plaintext(Blob::new(plaintext.to_vec()))
            .set_encryption_context(context_map(encryption_context));
        self.run(OP, async move {
            let out = request.send().await.map_err(|e| AwsKmsError::from_sdk(OP, e))?;
            match out.ciphertext_blob {
                Some(blob) if !blob.as_ref().is_empty() => Ok(blob.into_inner()),
                _ => Err(AwsKmsError::InvalidResponse { operation: OP, detail: "no ciphertext blob".into() }),
            }
        })
    }

    /// Decrypts a blob made by [`encrypt`](Self::encrypt) with the same key and the same
    /// `encryption_context` (`Decrypt`, sent with the configured key id, so a blob made
    /// under any other key is refused). A wrong context, altered blob or other key fails
    /// with an error whose [`AwsKmsError::is_ciphertext_rejected`] is true (with AWS's
    /// code, e.g. `InvalidCiphertextException`).
    pub fn decrypt(
        &self,
        blob: &[u8],
        encryption_context: &BTreeMap<String, String>,
    ) -> Result<Zeroizing<Vec<u8>>, AwsKmsError> {
        if blob.is_empty() || blob.len() > MAX_CIPHERTEXT_LEN {
            return Err(AwsKmsError::InvalidInput(format!(
                "ciphertext blob must be 1 to {MAX_CIPHERTEXT_LEN} bytes (got {})",
                blob.len()
            )));
        }
        const OP: &str = "Decrypt";
        let request = self
            .shared
            .sdk
            .decrypt()
            .key_id(self.key_id.as_ref())
            .ciphertext_blob(Blob::new(blob.to_vec()))
            .set_encryption_context(context_map(encryption_context));
        self.run(OP, async move {
            let out = request.send().await.map_err(|e| AwsKmsError::from_sdk(OP, e))?;
            match out.plaintext {
                Some(p) => Ok(Zeroizing::new(p.into_inner())),
                None => Err(AwsKmsError::InvalidResponse { operation: OP, detail: "no plaintext".into() }),
            }
        })
    }

    /// Verifies that the key exists, is enabled and is a symmetric encryption key
    /// (`DescribeKey`): for readiness and health checks. Errors with
    /// [`AwsKmsError::is_unavailable`] mean AWS could not be asked; the others mean the
    /// key or the permissions are wrong.
    pub fn check(&self) -> Result<(), AwsKmsError> {
        const OP: &str = "DescribeKey";
        let request = self.shared.sdk.describe_key().key_id(self.key_id.as_ref());
        let configured = self.key_id.to_string();
        self.run(OP, async move {
            let out = request.send().await.map_err(|e| AwsKmsError::from_sdk(OP, e))?;
            let meta = out
                .key_metadata
                .ok_or_else(|| AwsKmsError::InvalidResponse { operation: OP, detail: "no key metadata".into() })?;
            let key_id = meta.arn.clone().unwrap_or(configured);
            let unusable = |reason: String| Err(AwsKmsError::KeyUnusable { key_id: key_id.clone(), reason });
            match &meta.key_state {
                Some(KeyState::Enabled) => {}
                Some(state) => return unusable(format!("key state is {}", state.as_str())),
                None if !meta.enabled => return unusable("key is not enabled".into()),
                None => {}
            }
            if let Some(usage) = &meta.key_usage
                && *usage != KeyUsageType::EncryptDecrypt
            {
                return unusable(format!("key usage is {}, need ENCRYPT_DECRYPT", usage.as_str()));
            }
            if let Some(spec) = &meta.key_spec
                && *spec != KeySpec::SymmetricDefault
            {
                return unusable(format!("key spec is {}, need SYMMETRIC_DEFAULT", spec.as_str()));
            }
            Ok(())
        })
    }

    /// Runs `fut` on the owned runtime and waits for it on this thread.
    fn run<T, F>(&self, operation: &'static str, fut: F) -> Result<T, AwsKmsError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, AwsKmsError>> + Send + 'static,
    {
        run_on(&self.shared.runtime, operation, self.shared.operation_timeout, fut)
    }
}

/// Spawns `fut` on `runtime` and blocks on a channel for its result; never `block_on`, so
/// it does not panic when the calling thread is itself inside a runtime. Bounded by
/// `timeout` (the SDK's own operation timeout normally fires first).
fn run_on<T, F>(runtime: &OwnedRuntime, operation: &'static str, timeout: Duration, fut: F) -> Result<T, AwsKmsError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, AwsKmsError>> + Send + 'static,
{
    let unavailable = |detail: String| AwsKmsError::Unavailable { operation, detail };
    let Some(rt) = runtime.0.as_ref() else {
        return Err(unavailable("client runtime has shut down".into()));
    };
    let (tx, rx) = mpsc::sync_channel(1);
    rt.spawn(async move {
        let out = match tokio::time::timeout(timeout.saturating_add(FACADE_GRACE / 2), fut).await {
            Ok(out) => out,
            Err(_) => Err(AwsKmsError::Unavailable {
                operation,
                detail: format!("no answer within the operation timeout ({timeout:?})"),
            }),
        };
        // The receiver may have given up already; nothing to do then.
        let _ = tx.send(out);
    });
    match rx.recv_timeout(timeout.saturating_add(FACADE_GRACE)) {
        Ok(out) => out,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(unavailable(format!("no answer within the operation timeout ({timeout:?})")))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(unavailable("the request task stopped unexpectedly".into())),
    }
}

fn context_map(context: &BTreeMap<String, String>) -> Option<HashMap<String, String>> {
    (!context.is_empty()).then(|| context.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

// ---- provider ---------------------------------------------------------------------------

/// A [`KeyProvider`] that wraps data keys with AWS KMS (provider id `aws-kms`).
///
/// Wrapping calls `Encrypt` on the AWS key serving the key name, with encryption context
/// `{cryptocore:purpose: data-key/v1, cryptocore:key-name: <key name>}`; the entry records
/// the key name and version [`AWS_KEY_VERSION`]. Unwrapping takes the entries with this
/// provider's id and a key name it serves, in order, and calls `Decrypt` with the
/// same context and the serving key's id; an entry AWS rejects (altered, other key, other
/// name) is skipped for the next one, while an unreachable AWS fails at once (no stacking
/// of timeouts).
///
/// ```no_run
/// use std::sync::Arc;
/// use crypto_core::aws_kms::{AwsKmsClient, AwsKmsConfig, AwsKmsProvider};
/// use crypto_core::envelope::{EncryptionContext, Envelope};
/// use crypto_core::keys::Keyring;
/// use crypto_core::provider::{LocalProvider, MultiProvider};
///
/// let aws = AwsKmsClient::new(AwsKmsConfig::new("alias/cryptocore").with_region("eu-west-1"))?;
/// aws.check()?;
/// // AWS KMS first (the primary entry), a local recovery KEK second.
/// let recovery = Arc::new(Keyring::in_memory());
/// recovery.create_key("recovery/all")?;
/// let provider = MultiProvider::new()
///     .with(Arc::new(AwsKmsProvider::new(aws)))
///     .with_fixed_key(Arc::new(LocalProvider::with_id(recovery, "local-dr")?), "recovery/all");
/// let envelope = Envelope::new(provider);
/// let sealed = envelope.seal("tenant-a/db", &EncryptionContext::new(), b"hello")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct AwsKmsProvider {
    id: String,
    routes: BTreeMap<String, AwsKmsClient>,
    default: Option<AwsKmsClient>,
}

impl AwsKmsProvider {
    /// A provider that wraps every key name under `client`'s AWS key.
    pub fn new(client: AwsKmsClient) -> Self {
        Self { id: AWS_KMS_PROVIDER_ID.into(), routes: BTreeMap::new(), default: Some(client) }
    }

    /// A provider that serves only the key names added with [`with_key`](Self::with_key).
    pub fn routed() -> Self {
        Self { id: AWS_KMS_PROVIDER_ID.into(), routes: BTreeMap::new(), default: None }
    }

    /// Serves `key_name` with `client`'s AWS key (taking precedence over the client given
    /// to [`new`](Self::new)). Make the clients of many keys with
    /// [`AwsKmsClient::for_key`] so they share one runtime and connection pool.
    pub fn with_key(mut self, key_name: &str, client: AwsKmsClient) -> Result<Self, ProviderError> {
        validate_key_name(key_name)?;
        self.routes.insert(key_name.to_owned(), client);
        Ok(self)
    }

    /// Uses another provider id (to tell two AWS KMS providers apart, e.g. `aws-kms-dr`).
    pub fn with_id(mut self, id: &str) -> Result<Self, ProviderError> {
        validate_provider_id(id)?;
        self.id = id.to_owned();
        Ok(self)
    }

    /// This provider's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The client serving `key_name`, if any.
    pub fn client_for(&self, key_name: &str) -> Option<&AwsKmsClient> {
        self.routes.get(key_name).or(self.default.as_ref())
    }

    /// Checks every configured AWS key ([`AwsKmsClient::check`]); the first failure wins.
    pub fn check(&self) -> Result<(), AwsKmsError> {
        self.default.iter().chain(self.routes.values()).try_for_each(AwsKmsClient::check)
    }

    fn unwrap_one(&self, client: &AwsKmsClient, w: &WrappedKey) -> Result<DataKey, ProviderError> {
        if w.key_version != AWS_KEY_VERSION {
            return Err(ProviderError::UnwrapFailed);
        }
        let plaintext = client.decrypt(&w.blob, &wrap_context(&w.key_name))?;
        DataKey::from_slice(&plaintext).ok_or(ProviderError::UnwrapFailed)
    }
}

/// The encryption context of a wrapped data key.
fn wrap_context(key_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CONTEXT_PURPOSE_KEY.to_owned(), CONTEXT_PURPOSE.to_owned()),
        (CONTEXT_KEY_NAME_KEY.to_owned(), key_name.to_owned()),
    ])
}

impl KeyProvider for AwsKmsProvider {
    fn wrap(&self, key_name: &str, data_key: &DataKey) -> Result<Vec<WrappedKey>, ProviderError> {
        validate_key_name(key_name)?;
        let client = self.client_for(key_name).ok_or_else(|| KeyError::NotFound { name: key_name.to_owned() })?;
        let blob = client.encrypt(data_key.expose_secret(), &wrap_context(key_name))?;
        if blob.len() > MAX_BLOB_LEN {
            return Err(AwsKmsError::InvalidResponse {
                operation: "Encrypt",
                detail: format!("ciphertext blob of {} bytes exceeds the format's {MAX_BLOB_LEN}", blob.len()),
            }
            .into());
        }
        Ok(vec![WrappedKey {
            provider_id: self.id.clone(),
            key_name: key_name.to_owned(),
            key_version: AWS_KEY_VERSION,
            blob,
        }])
    }

    fn unwrap(&self, wrapped: &[WrappedKey]) -> Result<DataKey, ProviderError> {
        let mut last_err = None;
        for w in wrapped.iter().filter(|w| w.provider_id == self.id) {
            let Some(client) = self.client_for(&w.key_name) else { continue };
            match self.unwrap_one(client, w) {
                Ok(key) => return Ok(key),
                Err(e @ ProviderError::UnwrapFailed) => last_err = Some(e),
                // Unreachable, disabled, denied: another entry would fail the same way,
                // after as long a wait.
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            let mut ids: Vec<&str> = wrapped.iter().map(|w| w.provider_id.as_str()).collect();
            ids.dedup();
            ProviderError::NoMatchingProvider(ids.join(", "))
        }))
    }
}
