//! The local root key: a 32-byte master key in a file (mode 0600) in the data directory.
//! Every KEK version is stored only wrapped by it ([`crypto_core::keywrap`], label
//! `kms-sidecar/v1/root-wrap`, bound to the key name and version).
//!
//! Rules the server enforces at start: the file is generated only when the keystore holds
//! no keys (a missing root key with existing keys means lost or misplaced key material, and
//! starting with a fresh one would silently make everything unreadable); a file that other
//! users can read is refused.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crypto_core::Backend;
use crypto_core::secret::{KEY_LEN, KeyMaterial};

/// File name of the root key inside the data directory.
pub const ROOT_KEY_FILE: &str = "root.key";
const LABEL: &[u8] = b"kms-sidecar/v1/root-wrap";

/// Why the root key could not be loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootKeyError {
    /// The file is absent but the keystore holds keys.
    #[error(
        "root key {0} is missing but the keystore holds keys; restore it from backup (refusing to generate a new one)"
    )]
    Missing(PathBuf),
    /// Other users can read the file.
    #[error("root key {path} has mode {mode:o}; it must not be readable by group or others (chmod 600)")]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not 32 bytes.
    #[error("root key {0} is not a 32-byte key file")]
    Corrupt(PathBuf),
    /// Reading or writing failed.
    #[error("root key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The stored material was wrapped by another kind of root key than the one configured.
    #[error("wrong root key: {0}")]
    WrongRoot(String),
    /// The remote root of trust (AWS KMS) failed or refused; the message names the AWS
    /// error code.
    #[error("root key unavailable: {0}")]
    Unavailable(String),
    /// The root key's configuration is wrong.
    #[error("root key configuration: {0}")]
    Config(String),
    /// A stored KEK version did not unwrap: wrong root key, or the record was altered.
    #[error("key {name:?} version {version} does not unwrap under this root key")]
    UnwrapFailed {
        /// Key name.
        name: String,
        /// Version.
        version: u32,
    },
}

/// The root key, held as secret material.
#[derive(Debug)]
pub struct LocalRootKey {
    material: KeyMaterial,
    path: PathBuf,
}

impl LocalRootKey {
    /// Loads `path`, or creates it (0600, fsync'd) when absent and `may_create` is true.
    pub fn load_or_create(path: impl AsRef<Path>, may_create: bool) -> Result<Self, RootKeyError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| RootKeyError::Io { path: path.clone(), source };
        match fs::metadata(&path) {
            Ok(meta) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = meta.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        return Err(RootKeyError::InsecurePermissions { path, mode });
                    }
                }
                let bytes = zeroize::Zeroizing::new(fs::read(&path).map_err(io)?);
                let material = KeyMaterial::from_slice(&bytes).ok_or_else(|| RootKeyError::Corrupt(path.clone()))?;
                Ok(Self { material, path })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !may_create {
                    return Err(RootKeyError::Missing(path));
                }
                let material = KeyMaterial::generate();
                let mut opts = fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                let mut f = opts.open(&path).map_err(io)?;
                f.write_all(material.expose_secret()).map_err(io)?;
                f.sync_all().map_err(io)?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
                }
                Ok(Self { material, path })
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The file this key was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn aad(name: &str, version: u32) -> Vec<u8> {
        let mut aad = Vec::with_capacity(name.len() + 6);
        aad.extend_from_slice(&(name.len() as u16).to_be_bytes());
        aad.extend_from_slice(name.as_bytes());
        aad.extend_from_slice(&version.to_be_bytes());
        aad
    }

    /// Wraps version `version` of key `name` for storage.
    pub fn wrap(&self, name: &str, version: u32, material: &KeyMaterial) -> Vec<u8> {
        crypto_core::keywrap::wrap(
            Backend::AwsLc,
            self.material.expose_secret(),
            LABEL,
            &Self::aad(name, version),
            material.expose_secret(),
        )
    }

    /// Wraps a secret of any length (e.g. a CA's PKCS#8 key) stored under `purpose`.
    pub fn wrap_secret(&self, purpose: &str, secret: &[u8]) -> Vec<u8> {
        crypto_core::keywrap::wrap_secret(
            Backend::AwsLc,
            self.material.expose_secret(),
            LABEL,
            &Self::aad(purpose, 0),
            secret,
        )
    }

    /// Unwraps a secret from [`LocalRootKey::wrap_secret`].
    pub fn unwrap_secret(&self, purpose: &str, blob: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, RootKeyError> {
        crypto_core::keywrap::unwrap_secret(
            Backend::AwsLc,
            self.material.expose_secret(),
            LABEL,
            &Self::aad(purpose, 0),
            blob,
        )
        .ok_or_else(|| RootKeyError::UnwrapFailed { name: purpose.into(), version: 0 })
    }

    /// Unwraps a stored KEK version.
    pub fn unwrap(&self, name: &str, version: u32, blob: &[u8]) -> Result<KeyMaterial, RootKeyError> {
        let key: zeroize::Zeroizing<[u8; KEY_LEN]> = crypto_core::keywrap::unwrap(
            Backend::AwsLc,
            self.material.expose_secret(),
            LABEL,
            &Self::aad(name, version),
            blob,
        )
        .ok_or_else(|| RootKeyError::UnwrapFailed { name: name.into(), version })?;
        Ok(KeyMaterial::from_bytes(*key))
    }
}

/// The root of trust that wraps every KEK version (and the CA key) at rest: the local key
/// file, or an AWS KMS key (crate feature `aws-kms`).
#[derive(Debug)]
#[non_exhaustive]
pub enum RootKey {
    /// [`LocalRootKey`]: a 32-byte key file in the data directory.
    Local(LocalRootKey),
    /// [`crate::aws_root::AwsRootKey`]: every KEK version wrapped by AWS KMS `Encrypt`.
    #[cfg(feature = "aws-kms")]
    Aws(crate::aws_root::AwsRootKey),
}

impl From<LocalRootKey> for RootKey {
    fn from(k: LocalRootKey) -> Self {
        RootKey::Local(k)
    }
}

impl RootKey {
    /// A short description for logs: the key file, or the AWS KMS key id.
    pub fn describe(&self) -> String {
        match self {
            RootKey::Local(k) => format!("local:{}", k.path().display()),
            #[cfg(feature = "aws-kms")]
            RootKey::Aws(k) => format!("aws-kms:{}", k.key_id()),
        }
    }

    /// Whether unwrapping leaves the process (a network call): such unwraps are never made
    /// on an async worker ([`crate::kms::Kms::cache_only`] defers them).
    pub fn is_remote(&self) -> bool {
        !matches!(self, RootKey::Local(_))
    }

    /// `Err` once cached KEKs must no longer be used (a remote root unreachable for longer
    /// than its grace period, or refusing us); always `Ok` for the local key.
    pub fn usable(&self) -> Result<(), RootKeyError> {
        match self {
            RootKey::Local(_) => Ok(()),
            #[cfg(feature = "aws-kms")]
            RootKey::Aws(k) => k.usable(),
        }
    }

    /// Asks a remote root of trust whether it still serves us (and records the answer for
    /// [`RootKey::usable`]); nothing to ask for the local key.
    pub fn probe(&self) -> Result<(), RootKeyError> {
        match self {
            RootKey::Local(_) => Ok(()),
            #[cfg(feature = "aws-kms")]
            RootKey::Aws(k) => k.check(),
        }
    }

    /// Wraps version `version` of key `name` for storage.
    pub fn wrap(&self, name: &str, version: u32, material: &KeyMaterial) -> Result<Vec<u8>, RootKeyError> {
        match self {
            RootKey::Local(k) => Ok(k.wrap(name, version, material)),
            #[cfg(feature = "aws-kms")]
            RootKey::Aws(k) => k.wrap(name, version, material),
        }
    }

    /// Unwraps a stored KEK version.
    pub fn unwrap(&self, name: &str, version: u32, blob: &[u8]) -> Result<KeyMaterial, RootKeyError> {
        match self {
            RootKey::Local(k) => {
                if is_aws_blob(blob) {
                    return Err(RootKeyError::WrongRoot(format!(
                        "key {name:?} version {version} is wrapped by an AWS KMS root key; start with --root-key aws-kms:<key-id>"
                    )));
                }
                k.unwrap(name, version, blob)
            }
            #[cfg(feature = "aws-kms")]
            RootKey::Aws(k) => k.unwrap(name, version, blob),
        }
    }

    /// Wraps a secret of any length (e.g. a CA's PKCS#8 key) stored under `purpose`.
    pub fn wrap_secret(&self, purpose: &str, secret: &[u8]) -> Result<Vec<u8>, RootKeyError> {
        match self {
            RootKey::Local(k) => Ok(k.wrap_secret(purpose, secret)),
            #[cfg(feature = "aws-kms")]
            RootKey::Aws(k) => k.wrap_secret(purpose, secret),
        }
    }

    /// Unwraps a secret from [`RootKey::wrap_secret`].
    pub fn unwrap_secret(&self, purpose: &str, blob: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, RootKeyError> {
        match self {
            RootKey::Local(k) => {
                if is_aws_blob(blob) {
                    return Err(RootKeyError::WrongRoot(format!(
                        "{purpose} is wrapped by an AWS KMS root key; start with --root-key aws-kms:<key-id>"
                    )));
                }
                k.unwrap_secret(purpose, blob)
            }
            #[cfg(feature = "aws-kms")]
            RootKey::Aws(k) => k.unwrap_secret(purpose, blob),
        }
    }
}

/// Prefix of every blob wrapped by an AWS KMS root key (the local root key's blobs never
/// start with it: they start with a random nonce, and a collision only makes the local
/// path refuse with a clear message instead of failing authentication).
pub const AWS_BLOB_MAGIC: &[u8; 8] = b"KMSAWS1\0";

/// Whether `blob` was wrapped by an AWS KMS root key.
pub fn is_aws_blob(blob: &[u8]) -> bool {
    blob.starts_with(AWS_BLOB_MAGIC)
}
