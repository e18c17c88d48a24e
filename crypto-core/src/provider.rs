//! Key providers: wrap and unwrap data keys under named KEKs.
//!
//! * [`LocalProvider`]: KEKs held in-process by a [`Keyring`].
//! * [`MultiProvider`]: wraps under several providers at once (say, a local KEK and a
//!   disaster-recovery KEK held elsewhere) and unwraps with whichever one can.
//!
//! Other providers (AWS KMS, the sidecar) implement the same [`KeyProvider`] trait.
//! The local provider's blob layout is specified in `docs/format.md` ("Local provider").

use std::sync::Arc;

use crate::aead::Backend;
use crate::keys::{KeyError, Keyring};
use crate::secret::DataKey;

/// Maximum provider-id length in bytes.
pub const MAX_PROVIDER_ID_LEN: usize = 64;
/// Maximum wrapped-key blob length in bytes.
pub const MAX_BLOB_LEN: usize = 4096;

/// A data key wrapped by one provider under one version of one named KEK.
/// Everything here is safe to store and show: the blob is ciphertext.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WrappedKey {
    /// Which provider can unwrap it (`local`, `aws-kms`, …): printable ASCII, 1 to 64 bytes.
    pub provider_id: String,
    /// The KEK's name.
    pub key_name: String,
    /// The KEK version that wrapped it.
    pub key_version: u32,
    /// Provider-specific ciphertext of the data key, 1 to 4096 bytes.
    pub blob: Vec<u8>,
}

/// A freshly generated data key and its wrapped forms.
#[derive(Debug)]
pub struct GeneratedDataKey {
    /// The plaintext data key.
    pub data_key: DataKey,
    /// The data key wrapped by every provider involved (at least one).
    pub wrapped: Vec<WrappedKey>,
}

/// Why a provider could not wrap or unwrap.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The named key or version is missing, disabled, destroyed, or otherwise unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A wrapped key this provider should open failed authentication: the blob was altered,
    /// or it was not made by this key. Deliberately carries no further detail.
    #[error("wrapped data key failed to unwrap")]
    UnwrapFailed,
    /// None of the wrapped keys belongs to a provider configured here.
    #[error("no configured provider can unwrap this data key (wrapped by: {0})")]
    NoMatchingProvider(String),
    /// A remote provider could not be reached or answered with an error.
    #[error("key provider unavailable: {0}")]
    Unavailable(String),
    /// The provider's configuration is wrong.
    #[error("key provider misconfigured: {0}")]
    Config(String),
}

/// Wraps and unwraps data keys under named KEKs.
pub trait KeyProvider: Send + Sync + std::fmt::Debug {
    /// Wraps `data_key` under the primary version of `key_name`; a multi-provider returns
    /// one entry per member.
    fn wrap(&self, key_name: &str, data_key: &DataKey) -> Result<Vec<WrappedKey>, ProviderError>;

    /// Unwraps the first entry of `wrapped` this provider can open.
    fn unwrap(&self, wrapped: &[WrappedKey]) -> Result<DataKey, ProviderError>;

    /// A fresh random data key, wrapped under the primary version of `key_name`.
    fn generate_data_key(&self, key_name: &str) -> Result<GeneratedDataKey, ProviderError> {
        let data_key = DataKey::generate();
        let wrapped = self.wrap(key_name, &data_key)?;
        Ok(GeneratedDataKey { data_key, wrapped })
    }

    /// A counter that changes whenever a key's state, primary version or set of usable
    /// versions may have changed (rotate, disable, destroy, min-decrypt change, …).
    /// [`crate::cache::CachingProvider`] drops every entry made under an older epoch, so a
    /// cache never seals under a rotated, disabled or destroyed version. Providers that
    /// cannot observe changes return 0; caches then rely on their `max_age`.
    fn epoch(&self) -> u64 {
        0
    }

    /// A data key for sealing one message of `plaintext_len` bytes (`None`: not known in
    /// advance, as for streams). Caching providers may hand out a reused data key and count
    /// the message against their limits; the default makes a fresh one.
    fn data_key_for_message(
        &self,
        key_name: &str,
        plaintext_len: Option<u64>,
    ) -> Result<GeneratedDataKey, ProviderError> {
        let _ = plaintext_len;
        self.generate_data_key(key_name)
    }
}

impl<P: KeyProvider + ?Sized> KeyProvider for Arc<P> {
    fn wrap(&self, key_name: &str, data_key: &DataKey) -> Result<Vec<WrappedKey>, ProviderError> {
        (**self).wrap(key_name, data_key)
    }
    fn unwrap(&self, wrapped: &[WrappedKey]) -> Result<DataKey, ProviderError> {
        (**self).unwrap(wrapped)
    }
    fn generate_data_key(&self, key_name: &str) -> Result<GeneratedDataKey, ProviderError> {
        (**self).generate_data_key(key_name)
    }
    fn data_key_for_message(&self, key_name: &str, len: Option<u64>) -> Result<GeneratedDataKey, ProviderError> {
        (**self).data_key_for_message(key_name, len)
    }
    fn epoch(&self) -> u64 {
        (**self).epoch()
    }
}

impl<P: KeyProvider + ?Sized> KeyProvider for &P {
    fn wrap(&self, key_name: &str, data_key: &DataKey) -> Result<Vec<WrappedKey>, ProviderError> {
        (**self).wrap(key_name, data_key)
    }
    fn unwrap(&self, wrapped: &[WrappedKey]) -> Result<DataKey, ProviderError> {
        (**self).unwrap(wrapped)
    }
    fn generate_data_key(&self, key_name: &str) -> Result<GeneratedDataKey, ProviderError> {
        (**self).generate_data_key(key_name)
    }
    fn data_key_for_message(&self, key_name: &str, len: Option<u64>) -> Result<GeneratedDataKey, ProviderError> {
        (**self).data_key_for_message(key_name, len)
    }
    fn epoch(&self) -> u64 {
        (**self).epoch()
    }
}

/// Checks a provider id: 1 to 64 bytes of printable ASCII without spaces.
pub fn validate_provider_id(id: &str) -> Result<(), ProviderError> {
    if id.is_empty() || id.len() > MAX_PROVIDER_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ProviderError::Config(format!(
            "provider id must be 1 to {MAX_PROVIDER_ID_LEN} printable ASCII bytes"
        )));
    }
    Ok(())
}

// ---- local provider -----------------------------------------------------------------

/// Default provider id of [`LocalProvider`].
pub const LOCAL_PROVIDER_ID: &str = "local";
/// Length of a local blob (see [`crate::keywrap`]).
pub const LOCAL_BLOB_LEN: usize = crate::keywrap::WRAPPED_LEN;
/// HKDF info label of the local wrapping key.
const LOCAL_WRAP_LABEL: &[u8] = b"cryptocore/v1/local-wrap";

/// A provider backed by an in-process [`Keyring`].
///
/// Each wrap derives a one-time wrapping key and nonce from the KEK version and a random
/// 16-byte salt (HKDF-SHA256), so a KEK version can wrap any number of data keys without
/// the 2^32 random-nonce limit of plain AES-GCM. The KEK identity (provider id, key name,
/// version) is authenticated data, so a blob moved to another key or version fails.
#[derive(Debug, Clone)]
pub struct LocalProvider {
    id: String,
    keyring: Arc<Keyring>,
    backend: Backend,
}

impl LocalProvider {
    /// A provider with id `local` over `keyring`.
    pub fn new(keyring: Arc<Keyring>) -> Self {
        Self { id: LOCAL_PROVIDER_ID.into(), keyring, backend: Backend::default() }
    }

    /// A provider with a custom id (to tell two local keyrings apart, e.g. `local-dr`).
    pub fn with_id(keyring: Arc<Keyring>, id: &str) -> Result<Self, ProviderError> {
        validate_provider_id(id)?;
        Ok(Self { id: id.into(), keyring, backend: Backend::default() })
    }

    /// Selects the AES-GCM backend used for wrapping.
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The keyring behind this provider.
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// This provider's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn unwrap_one(&self, w: &WrappedKey) -> Result<DataKey, ProviderError> {
        let aad = local_wrap_aad(&self.id, &w.key_name, w.key_version);
        let opened = self.keyring.with_version(&w.key_name, w.key_version, |kek| {
            crate::keywrap::unwrap(self.backend, kek.expose_secret(), LOCAL_WRAP_LABEL, &aad, &w.blob)
                .map(|k| DataKey::from_bytes(*k))
        })?;
        opened.ok_or(ProviderError::UnwrapFailed)
    }
}

/// Authenticated data of a local wrap: the KEK identity, length-prefixed as in the header.
fn local_wrap_aad(provider_id: &str, key_name: &str, version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(2 + provider_id.len() + key_name.len() + 4);
    // Both lengths are validated to fit in one byte before any wrap or header is built.
    aad.push(provider_id.len() as u8);
    aad.extend_from_slice(provider_id.as_bytes());
    aad.push(key_name.len() as u8);
    aad.extend_from_slice(key_name.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

impl KeyProvider for LocalProvider {
    fn wrap(&self, key_name: &str, data_key: &DataKey) -> Result<Vec<WrappedKey>, ProviderError> {
        crate::keys::validate_key_name(key_name)?;
        let (version, blob) = self.keyring.with_primary(key_name, |version, kek| {
            let aad = local_wrap_aad(&self.id, key_name, version);
            (
                version,
                crate::keywrap::wrap(
                    self.backend,
                    kek.expose_secret(),
                    LOCAL_WRAP_LABEL,
                    &aad,
                    data_key.expose_secret(),
                ),
            )
        })?;
        Ok(vec![WrappedKey { provider_id: self.id.clone(), key_name: key_name.into(), key_version: version, blob }])
    }

    fn epoch(&self) -> u64 {
        self.keyring.generation()
    }

    fn unwrap(&self, wrapped: &[WrappedKey]) -> Result<DataKey, ProviderError> {
        let mut last_err = None;
        for w in wrapped.iter().filter(|w| w.provider_id == self.id) {
            match self.unwrap_one(w) {
                Ok(k) => return Ok(k),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| ProviderError::NoMatchingProvider(provider_ids(wrapped))))
    }
}

fn provider_ids(wrapped: &[WrappedKey]) -> String {
    let mut ids: Vec<&str> = wrapped.iter().map(|w| w.provider_id.as_str()).collect();
    ids.dedup();
    ids.join(", ")
}

// ---- multi provider -----------------------------------------------------------------

/// Wraps every data key under all members; unwraps with the first member that can.
///
/// Typical use: a primary provider plus a disaster-recovery provider whose KEK is kept
/// elsewhere. Wrapping fails unless every member succeeds, so no ciphertext is ever
/// written without its recovery copy.
///
/// Add the primary member (the one that wraps under the caller's key name) **first**:
/// the first wrapped entry's key name is what [`crate::envelope::Envelope::rewrap`] asks
/// the provider to wrap under again, and rewrapping through a provider that lacks the
/// recovery member drops the recovery copies.
#[derive(Debug, Clone, Default)]
pub struct MultiProvider {
    members: Vec<(Arc<dyn KeyProvider>, Option<String>)>,
}

impl MultiProvider {
    /// An empty multi-provider; add members with [`MultiProvider::with`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a member that wraps under the key name the caller asks for.
    pub fn with(mut self, provider: Arc<dyn KeyProvider>) -> Self {
        self.members.push((provider, None));
        self
    }

    /// Adds a member that always wraps under `key_name` (e.g. one recovery key for all).
    pub fn with_fixed_key(mut self, provider: Arc<dyn KeyProvider>, key_name: &str) -> Self {
        self.members.push((provider, Some(key_name.into())));
        self
    }
}

impl KeyProvider for MultiProvider {
    fn epoch(&self) -> u64 {
        // Each member's epoch only grows, so the sum changes whenever any of them does.
        self.members.iter().fold(0u64, |acc, (p, _)| acc.wrapping_add(p.epoch()))
    }

    fn wrap(&self, key_name: &str, data_key: &DataKey) -> Result<Vec<WrappedKey>, ProviderError> {
        if self.members.is_empty() {
            return Err(ProviderError::Config("multi-provider has no members".into()));
        }
        let mut out = Vec::new();
        for (p, fixed) in &self.members {
            out.extend(p.wrap(fixed.as_deref().unwrap_or(key_name), data_key)?);
        }
        Ok(out)
    }

    fn unwrap(&self, wrapped: &[WrappedKey]) -> Result<DataKey, ProviderError> {
        let mut last_err = None;
        for (p, _) in &self.members {
            match p.unwrap(wrapped) {
                Ok(k) => return Ok(k),
                // Prefer a specific error (destroyed, disabled) over "not mine".
                Err(ProviderError::NoMatchingProvider(_)) if last_err.is_some() => {}
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| ProviderError::NoMatchingProvider(provider_ids(wrapped))))
    }
}
