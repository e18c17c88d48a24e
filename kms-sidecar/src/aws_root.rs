//! AWS KMS as the sidecar's root key (`--root-key aws-kms:<key-id-or-arn>`, crate feature
//! `aws-kms`): every KEK version, and the CA's private key, is stored wrapped by AWS KMS
//! `Encrypt` under the customer's key, bound by an encryption context to what it is
//! (`kms-sidecar:purpose`, the key name and version, or a hash of the CA record), and
//! prefixed with [`AWS_BLOB_MAGIC`]. No root key file exists; whoever controls the AWS key
//! controls every key here, and can cut this sidecar off by disabling it or revoking the
//! IAM grant.
//!
//! **Availability.** Unwrapped KEKs are cached (`kek_cache_capacity`), so steady-state
//! requests make no AWS call. The sidecar probes the key (`DescribeKey`) periodically and
//! counts every AWS call's outcome:
//! * AWS **unreachable** (network, timeout, throttling, AWS-side errors, no credentials):
//!   serving goes on from cached KEKs for the **grace period** (`root_key_grace_period`,
//!   default 5 minutes) since the last successful call; after that the KEK cache is dropped
//!   and every operation fails with `UNAVAILABLE` (fail closed) until AWS answers again.
//! * AWS **refuses** (the key is disabled, pending deletion, gone, or access was revoked):
//!   that is the key owner's decision, so the sidecar fails closed at once, without grace.
//!
//! Time comes from a [`Clock`] (injectable for tests).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crypto_core::aws_kms::{AwsKmsClient, AwsKmsConfig, AwsKmsError};
use crypto_core::clock::{Clock, SystemClock};
use crypto_core::secret::KeyMaterial;
use sha2::Digest;

use crate::root_key::{AWS_BLOB_MAGIC, RootKeyError};

/// Default grace period: how long cached KEKs keep serving while AWS KMS is unreachable.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(300);

const PURPOSE: &str = "kms-sidecar:purpose";

#[derive(Debug, Default)]
struct Health {
    /// When AWS last answered a call successfully (clock time).
    last_ok: Option<Duration>,
    /// AWS's definitive refusal, if the last key-level answer was one.
    refused: Option<String>,
}

/// The AWS KMS root key.
#[derive(Debug)]
pub struct AwsRootKey {
    client: AwsKmsClient,
    grace: Duration,
    clock: Arc<dyn Clock>,
    health: Mutex<Health>,
}

impl AwsRootKey {
    /// A root key on the AWS KMS key `config.key_id`, serving from cached KEKs for `grace`
    /// while AWS is unreachable. Makes no AWS call; call [`AwsRootKey::check`] before
    /// serving.
    pub fn new(config: AwsKmsConfig, grace: Duration) -> Result<Self, RootKeyError> {
        let client = AwsKmsClient::new(config).map_err(|e| RootKeyError::Config(e.to_string()))?;
        Ok(Self { client, grace, clock: Arc::new(SystemClock), health: Mutex::new(Health::default()) })
    }

    /// Uses `clock` to measure the grace period (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The configured AWS key id, ARN or alias.
    pub fn key_id(&self) -> &str {
        self.client.key_id()
    }

    /// The grace period.
    pub fn grace_period(&self) -> Duration {
        self.grace
    }

    /// Asks AWS KMS whether the key exists and is enabled (`DescribeKey`), and records the
    /// outcome: the periodic probe, and the start-up check.
    pub fn check(&self) -> Result<(), RootKeyError> {
        let result = self.client.check();
        self.record(&result);
        result.map_err(|e| unavailable(&e))
    }

    /// `Ok` while cached KEKs may be used: AWS answered within the grace period and has not
    /// refused us since.
    pub fn usable(&self) -> Result<(), RootKeyError> {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &health.refused {
            return Err(RootKeyError::Unavailable(format!("AWS KMS refuses the root key: {why}; failing closed")));
        }
        match health.last_ok {
            None => Err(RootKeyError::Unavailable("AWS KMS has not answered yet".into())),
            Some(at) => {
                let since = self.clock.now().saturating_sub(at);
                if since > self.grace {
                    Err(RootKeyError::Unavailable(format!(
                        "AWS KMS unreachable for {}s, longer than the grace period of {}s; failing closed",
                        since.as_secs(),
                        self.grace.as_secs()
                    )))
                } else {
                    Ok(())
                }
            }
        }
    }

    fn record<T>(&self, result: &Result<T, AwsKmsError>) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(_) => {
                health.last_ok = Some(self.clock.now());
                health.refused = None;
            }
            // Unreachable: the grace period runs on. A rejected blob is about that blob,
            // not the key; a request refused before it was sent (a stored blob of a
            // size AWS never makes) or an answer AWS should not have given says nothing
            // about the key's owner either. Only AWS's own refusal fails closed at once:
            // one damaged keystore row must not cut every key off.
            Err(e)
                if e.is_unavailable()
                    || e.is_ciphertext_rejected()
                    || matches!(
                        e,
                        AwsKmsError::InvalidInput(_) | AwsKmsError::InvalidResponse { .. } | AwsKmsError::Config(_)
                    ) => {}
            Err(e) => {
                if health.refused.is_none() {
                    tracing::error!(error = %e, "AWS KMS refuses the root key; failing closed");
                }
                health.refused = Some(e.to_string());
            }
        }
    }

    fn kek_context(name: &str, version: u32) -> BTreeMap<String, String> {
        BTreeMap::from([
            (PURPOSE.to_owned(), "kek".to_owned()),
            ("kms-sidecar:key".to_owned(), name.to_owned()),
            ("kms-sidecar:version".to_owned(), version.to_string()),
        ])
    }

    fn secret_context(purpose: &str) -> BTreeMap<String, String> {
        // The purpose string binds the whole CA record; its hash keeps the context short
        // (CloudTrail logs it) while binding just as well.
        BTreeMap::from([
            (PURPOSE.to_owned(), "secret".to_owned()),
            ("kms-sidecar:binding".to_owned(), hex::encode(sha2::Sha256::digest(purpose.as_bytes()))),
        ])
    }

    fn seal(&self, plaintext: &[u8], context: &BTreeMap<String, String>) -> Result<Vec<u8>, RootKeyError> {
        let result = self.client.encrypt(plaintext, context);
        self.record(&result);
        let blob = result.map_err(|e| unavailable(&e))?;
        let mut out = Vec::with_capacity(AWS_BLOB_MAGIC.len() + blob.len());
        out.extend_from_slice(AWS_BLOB_MAGIC);
        out.extend_from_slice(&blob);
        Ok(out)
    }

    fn open(
        &self,
        what: &str,
        blob: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, RootKeyError> {
        let Some(blob) = blob.strip_prefix(AWS_BLOB_MAGIC.as_slice()) else {
            return Err(RootKeyError::WrongRoot(format!(
                "{what} is wrapped by the local root key (root.key), not by AWS KMS; start with --root-key local"
            )));
        };
        self.usable()?;
        let result = self.client.decrypt(blob, context);
        self.record(&result);
        result.map_err(|e| {
            if e.is_ciphertext_rejected() || matches!(e, AwsKmsError::InvalidInput(_)) {
                RootKeyError::WrongRoot(format!("{what} does not unwrap under AWS KMS key {}: {e}", self.key_id()))
            } else {
                unavailable(&e)
            }
        })
    }

    /// Wraps version `version` of key `name` with AWS KMS `Encrypt`.
    pub fn wrap(&self, name: &str, version: u32, material: &KeyMaterial) -> Result<Vec<u8>, RootKeyError> {
        self.usable()?;
        self.seal(material.expose_secret(), &Self::kek_context(name, version))
    }

    /// Unwraps a stored KEK version with AWS KMS `Decrypt`.
    pub fn unwrap(&self, name: &str, version: u32, blob: &[u8]) -> Result<KeyMaterial, RootKeyError> {
        let what = format!("key {name:?} version {version}");
        let plain = self.open(&what, blob, &Self::kek_context(name, version))?;
        KeyMaterial::from_slice(&plain).ok_or(RootKeyError::UnwrapFailed { name: name.into(), version })
    }

    /// Wraps a secret of up to 4096 bytes (the CA's PKCS#8 key) under `purpose`.
    pub fn wrap_secret(&self, purpose: &str, secret: &[u8]) -> Result<Vec<u8>, RootKeyError> {
        self.usable()?;
        self.seal(secret, &Self::secret_context(purpose))
    }

    /// Unwraps a secret from [`AwsRootKey::wrap_secret`].
    pub fn unwrap_secret(&self, purpose: &str, blob: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, RootKeyError> {
        self.open("the stored secret", blob, &Self::secret_context(purpose))
    }
}

fn unavailable(e: &AwsKmsError) -> RootKeyError {
    RootKeyError::Unavailable(format!("AWS KMS: {e}"))
}
