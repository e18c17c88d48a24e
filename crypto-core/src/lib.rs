//! # crypto-core
//!
//! Envelope encryption for stored data: data keys wrapped by versioned key-encryption
//! keys (KEKs), a documented self-describing ciphertext format (v1, `docs/format.md`) with
//! key commitment, encryption context and random-access segments; key rotation, rewrap
//! and crypto-shredding; bulk AES-256-GCM on all cores.
//!
//! The public interface is:
//!
//! * [`envelope`]: seal/open (one-shot, compact, streaming, random access), rewrap, the
//!   [`envelope::EncryptionContext`] and the format's constants and errors.
//! * [`keys`]: named, versioned KEKs and their lifecycle ([`keys::Keyring`]).
//! * [`keywrap`]: wrap a 32-byte key under another (used by the local provider and the
//!   sidecar's root key).
//! * [`provider`]: [`provider::KeyProvider`] with the local and multi providers.
//! * `aws_kms` (crate feature `aws-kms`): an AWS KMS client and key provider.
//! * [`cache`]: a bounded data-key cache with refresh-ahead.
//! * [`pki`]: an internal certificate authority (issue, sign CSRs, revoke, CRLs, verify).
//! * [`bulk`]: all-core sealing and opening, byte-identical to the sequential path.
//! * [`password`]: argon2id password hashing (PHC strings, verify, needs-rehash).
//! * [`secret`]: the types that hold key bytes (zeroized, redacted, constant-time eq).
//! * [`clock`]: injectable time.
//! * [`hazmat`]: raw AES-256-GCM for interoperability; easy to misuse.
//!
//! ```
//! use std::sync::Arc;
//! use crypto_core::{envelope::{EncryptionContext, Envelope}, keys::Keyring, provider::LocalProvider};
//!
//! let keyring = Arc::new(Keyring::in_memory());
//! keyring.create_key("tenant-a/files")?;
//! let envelope = Envelope::new(LocalProvider::new(keyring));
//! let ctx = EncryptionContext::new().with("tenant", "a");
//! let sealed = envelope.seal("tenant-a/files", &ctx, b"hello")?;
//! assert_eq!(envelope.open(&ctx, &sealed)?, b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! For throughput, pick the call by who owns the memory (figures: `benches/RESULTS.md`):
//! `seal`/`open` return a new `Vec` per message, which costs an allocation and, for large
//! messages, fresh pages from the kernel; `seal_into`/`open_into` reuse the caller's output
//! buffer; `seal_in_place`/`open_in_place` turn the caller's buffer from plaintext into
//! message and back with no second buffer, as fast as raw AES-GCM in place.
//!
//! ```
//! # use std::sync::Arc;
//! # use crypto_core::{envelope::{EncryptionContext, Envelope}, keys::Keyring, provider::LocalProvider};
//! # let keyring = Arc::new(Keyring::in_memory());
//! # keyring.create_key("tenant-a/files")?;
//! # let envelope = Envelope::new(LocalProvider::new(keyring));
//! # let ctx = EncryptionContext::new().with("tenant", "a");
//! let mut buf = b"a large object".to_vec();
//! envelope.seal_in_place("tenant-a/files", &ctx, &mut buf)?; // buf: the message
//! envelope.open_in_place(&ctx, &mut buf)?; // buf: the plaintext again
//! assert_eq!(buf, b"a large object");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(feature = "gpu"), forbid(unsafe_code))]

mod aead;
#[cfg(feature = "aws-kms")]
pub mod aws_kms;
pub mod bulk;
pub mod cache;
pub mod clock;
pub mod envelope;
pub mod hazmat;
mod kdf;
pub mod keys;
pub mod keywrap;
pub mod password;
pub mod pki;
pub mod provider;
mod rand;
pub mod secret;

pub use aead::Backend;

/// Fills `out` with bytes from the operating system's CSPRNG (through aws-lc), for callers
/// that need random identifiers or secrets (API tokens, request ids) outside a key type.
pub fn fill_random(out: &mut [u8]) {
    rand::fill(out);
}
