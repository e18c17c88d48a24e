//! Persistent storage of keys (names, states, versions with root-wrapped material) and
//! versioned secrets.
//!
//! Both backends make every acknowledged write durable before returning (SQLite: WAL with
//! `synchronous=FULL`; PostgreSQL: synchronous commit) and apply each operation in one
//! transaction, so a crash at any moment leaves either the old or the new state. Changes
//! to a key use optimistic concurrency (`row_version`): two sidecars rotating the same key
//! at once cannot both succeed, and the loser gets [`StoreError::Conflict`] to retry.
//! Schema migrations are numbered and recorded in `schema_migrations`.

mod postgres_store;
mod schema;
mod sqlite;

pub use postgres_store::PostgresStore;
pub use sqlite::SqliteStore;

use crypto_core::keys::KeyState;

/// Current schema version of both backends.
pub const SCHEMA_VERSION: u32 = schema::MIGRATIONS.len() as u32;

/// Why a keystore operation failed. Messages name keys and versions, never material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No such key, version or secret.
    #[error("{0} not found")]
    NotFound(String),
    /// A key with this name exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The record changed since it was read (another sidecar or request won); re-read and retry.
    #[error("concurrent update of {0}; retry")]
    Conflict(String),
    /// The database holds something this code cannot interpret (or a newer schema).
    #[error("keystore data invalid: {0}")]
    Corrupt(String),
    /// The database could not be reached or failed.
    #[error("keystore backend error: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::QueryReturnedNoRows => StoreError::NotFound("record".into()),
            other => StoreError::Backend(format!("sqlite: {other}")),
        }
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::Backend(format!("postgresql: {e}"))
    }
}

/// One version of a key as stored: material wrapped by the root key, or gone.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredVersion {
    /// Version number, from 1.
    pub version: u32,
    /// Root-key-wrapped material; `None` once destroyed.
    pub wrapped_material: Option<Vec<u8>>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Destruction time, Unix seconds.
    pub destroyed_at: Option<i64>,
}

impl std::fmt::Debug for StoredVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The wrapped material is ciphertext, but there is no reason to print it.
        f.debug_struct("StoredVersion")
            .field("version", &self.version)
            .field("wrapped_material", &self.wrapped_material.as_ref().map(|m| m.len()))
            .field("created_at", &self.created_at)
            .field("destroyed_at", &self.destroyed_at)
            .finish()
    }
}

/// A key as stored, with all its versions (oldest first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// Key name.
    pub name: String,
    /// Lifecycle state.
    pub state: KeyState,
    /// Version that wraps new data keys.
    pub primary_version: u32,
    /// Lowest version allowed to unwrap.
    pub min_decrypt_version: u32,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Optimistic-concurrency counter, bumped by every change.
    pub row_version: i64,
    /// Automatic rotation: a new primary version once the current one is this many seconds
    /// old (`None`: only by hand).
    pub rotation_period: Option<u64>,
    /// All versions, oldest first.
    pub versions: Vec<StoredVersion>,
}

/// A change to a key's state, decrypt floor or rotation period (applied only if
/// `row_version` still matches). Start from [`KeyUpdate::from`] a record and change fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyUpdate {
    /// New state.
    pub state: KeyState,
    /// New minimum decryption version.
    pub min_decrypt_version: u32,
    /// New rotation period in seconds (`None`: no automatic rotation).
    pub rotation_period: Option<u64>,
}

impl From<&KeyRecord> for KeyUpdate {
    /// The record's current settings: an update that changes nothing yet.
    fn from(r: &KeyRecord) -> Self {
        Self { state: r.state, min_decrypt_version: r.min_decrypt_version, rotation_period: r.rotation_period }
    }
}

/// One stored version of a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRecord {
    /// Secret name.
    pub name: String,
    /// Version, from 1.
    pub version: u32,
    /// Key the value is sealed under.
    pub key_name: String,
    /// The sealed value (crypto-core envelope).
    pub ciphertext: Vec<u8>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

impl std::fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRecord")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("key_name", &self.key_name)
            .field("ciphertext_len", &self.ciphertext.len())
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A secret's name with its newest version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSummary {
    /// Secret name.
    pub name: String,
    /// Newest version.
    pub latest_version: u32,
    /// Key of the newest version.
    pub key_name: String,
}

/// The sidecar's issuing CA as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCa {
    /// The CA certificate (DER).
    pub certificate: Vec<u8>,
    /// Certificates above it, nearest first, up to the root (DER).
    pub parents: Vec<Vec<u8>>,
    /// Its PKCS#8 private key, wrapped by the root key.
    pub wrapped_key: Vec<u8>,
    /// The CSR name policy (JSON).
    pub policy: String,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

impl std::fmt::Debug for StoredCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCa")
            .field("certificate_len", &self.certificate.len())
            .field("parents", &self.parents.len())
            .field("policy", &self.policy)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// One issued certificate in the inventory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateRecord {
    /// Serial, upper-case hex as `openssl x509 -serial` prints it.
    pub serial: String,
    /// Subject common name.
    pub common_name: String,
    /// Subject alternative names (`dns:…`, `ip:…`, `uri:…`).
    pub sans: Vec<String>,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    /// Issue time, Unix seconds.
    pub issued_at: i64,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
    /// RFC 5280 reason code, if revoked.
    pub revoke_reason: Option<u8>,
}

/// An API token as stored: never the token itself, only a hash of its secret part.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public identifier (16 hex digits), the token's first part.
    pub id: String,
    /// Name: the principal is `token:<name>`.
    pub name: String,
    /// SHA-256 of the token's secret part.
    pub secret_hash: Vec<u8>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Expiry, Unix seconds, if any.
    pub expires_at: Option<i64>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
}

impl std::fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// Storage of keys and secrets. Implementations are thread-safe; every method is one
/// transaction, durable when it returns `Ok`.
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// `sqlite` or `postgresql`.
    fn backend(&self) -> &'static str;

    /// Creates key `name` in state `Enabled` with version 1 holding `wrapped_material`.
    fn create_key(&self, name: &str, wrapped_material: &[u8], now: i64) -> Result<KeyRecord, StoreError>;

    /// The key with all its versions.
    fn get_key(&self, name: &str) -> Result<KeyRecord, StoreError>;

    /// All keys with their versions, sorted by name.
    fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// Number of keys (the server refuses to start without its root key when this is > 0).
    fn key_count(&self) -> Result<u64, StoreError>;

    /// Appends version `primary + 1` holding `wrapped_material` and makes it primary, if
    /// the key's `row_version` is still `expected_row_version`.
    fn add_version(
        &self,
        name: &str,
        expected_row_version: i64,
        wrapped_material: &[u8],
        now: i64,
    ) -> Result<KeyRecord, StoreError>;

    /// Applies `update` if the key's `row_version` is still `expected_row_version`.
    fn update_key(&self, name: &str, expected_row_version: i64, update: KeyUpdate) -> Result<KeyRecord, StoreError>;

    /// Erases the wrapped material of one version (irreversible).
    fn destroy_version(&self, name: &str, version: u32, now: i64) -> Result<KeyRecord, StoreError>;

    /// Stores a new version of secret `name` (1 if new) and returns its number.
    fn put_secret(&self, name: &str, key_name: &str, ciphertext: &[u8], now: i64) -> Result<u32, StoreError>;

    /// Version `version` of a secret, or the newest.
    fn get_secret(&self, name: &str, version: Option<u32>) -> Result<SecretRecord, StoreError>;

    /// All secrets with their newest versions, sorted by name.
    fn list_secrets(&self) -> Result<Vec<SecretSummary>, StoreError>;

    /// Deletes every version of a secret.
    fn delete_secret(&self, name: &str) -> Result<(), StoreError>;

    /// The schema version recorded in the database.
    fn schema_version(&self) -> Result<u32, StoreError>;

    /// Stores the issuing CA; `AlreadyExists` if there is one (one CA per keystore, shared
    /// by every sidecar on it).
    fn put_ca(&self, ca: &StoredCa) -> Result<(), StoreError>;

    /// The issuing CA (`NotFound` before `put_ca`).
    fn get_ca(&self) -> Result<StoredCa, StoreError>;

    /// The next CRL number (strictly increasing across all sidecars sharing the store).
    fn next_crl_number(&self) -> Result<u64, StoreError>;

    /// What a new CRL lists, taken atomically with its number: a CRL with a higher number
    /// always lists every revocation a lower-numbered one did (revocations and CRL
    /// snapshots serialise on the CA row).
    fn crl_snapshot(&self) -> Result<(u64, Vec<CertificateRecord>), StoreError>;

    /// Adds an issued certificate to the inventory.
    fn add_certificate(&self, record: &CertificateRecord) -> Result<(), StoreError>;

    /// Every issued certificate, sorted by issue time then serial.
    fn list_certificates(&self) -> Result<Vec<CertificateRecord>, StoreError>;

    /// Marks a certificate revoked (the first revocation's time and reason are kept) and
    /// returns it; `NotFound` for an unknown serial.
    fn revoke_certificate(&self, serial: &str, reason: u8, now: i64) -> Result<CertificateRecord, StoreError>;

    /// Stores a new API token; `AlreadyExists` if its id is taken.
    fn add_token(&self, token: &TokenRecord) -> Result<(), StoreError>;

    /// The token with this id (`NotFound` if none).
    fn get_token(&self, id: &str) -> Result<TokenRecord, StoreError>;

    /// Every token, revoked and expired ones included, sorted by creation time then id.
    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Revokes the token with this id, or every unrevoked token with this name, and
    /// returns the tokens revoked now (empty if none matched or all were revoked already).
    fn revoke_tokens(&self, id_or_name: &str, now: i64) -> Result<Vec<TokenRecord>, StoreError>;
}

// The column codecs below are `#[doc(hidden)] pub` only so that the fuzz targets in
// `fuzz/` (a separate workspace) can call them: they are not part of the API.

/// Encodes a CA's parent certificates for the `parents` column: each as a 4-byte
/// big-endian length and its DER.
#[doc(hidden)]
pub fn encode_parents(parents: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parents {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// Decodes the `parents` column.
#[doc(hidden)]
pub fn decode_parents(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(|| StoreError::Corrupt("CA parents".into()))?;
        let len = u32::from_be_bytes(*len) as usize;
        if len > rest.len() {
            return Err(StoreError::Corrupt("CA parents".into()));
        }
        out.push(rest[..len].to_vec());
        bytes = &rest[len..];
    }
    Ok(out)
}

/// Encodes a key state for the `state`/`delete_after` columns.
#[doc(hidden)]
pub fn state_to_columns(state: KeyState) -> (&'static str, Option<i64>) {
    match state {
        KeyState::Enabled => ("enabled", None),
        KeyState::Disabled => ("disabled", None),
        KeyState::PendingDeletion { delete_after } => ("pending_deletion", Some(delete_after as i64)),
        KeyState::Destroyed => ("destroyed", None),
        _ => ("destroyed", None),
    }
}

/// Decodes the `state`/`delete_after` columns.
#[doc(hidden)]
pub fn state_from_columns(state: &str, delete_after: Option<i64>) -> Result<KeyState, StoreError> {
    Ok(match (state, delete_after) {
        ("enabled", _) => KeyState::Enabled,
        ("disabled", _) => KeyState::Disabled,
        ("pending_deletion", Some(t)) if t >= 0 => KeyState::PendingDeletion { delete_after: t as u64 },
        ("destroyed", _) => KeyState::Destroyed,
        (other, _) => return Err(StoreError::Corrupt(format!("unknown key state {other:?}"))),
    })
}

/// Decodes the `rotation_period` column (seconds, positive, or NULL).
#[doc(hidden)]
pub fn rotation_period_from_db(v: Option<i64>) -> Result<Option<u64>, StoreError> {
    v.map(|p| {
        u64::try_from(p).ok().filter(|&p| p > 0).ok_or_else(|| StoreError::Corrupt(format!("bad rotation period {p}")))
    })
    .transpose()
}

/// Encodes the `rotation_period` column.
#[doc(hidden)]
pub fn rotation_period_to_db(v: Option<u64>) -> Option<i64> {
    v.map(|p| i64::try_from(p).unwrap_or(i64::MAX))
}

/// Checks a stored version number.
#[doc(hidden)]
pub fn version_from_db(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).ok().filter(|&v| v > 0).ok_or_else(|| StoreError::Corrupt(format!("bad version {v}")))
}
