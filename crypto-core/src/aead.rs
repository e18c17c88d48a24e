//! AES-256-GCM behind one small type with two interchangeable backends.
//!
//! * [`Backend::AwsLc`] (default): aws-lc-rs, assembly with AES-NI/VAES and CLMUL.
//! * [`Backend::RustCrypto`]: the pure-Rust `aes-gcm` crate (AES-GCM without aws-lc's
//!   assembly; randomness still comes from aws-lc, HKDF/SHA-256 from RustCrypto either way).
//!
//! Both are compiled in always, so each is the other's differential oracle in the tests.
//! The raw primitive is public only as [`crate::hazmat::Aes256Gcm`]: callers are meant to
//! use [`crate::envelope`], which derives a fresh key per message and never repeats a nonce.

use core::fmt;

use aes_gcm::KeyInit;
use aes_gcm::aead::AeadInPlace;
use zeroize::Zeroize;

/// Nonce length in bytes (96-bit IV, the only size accepted).
pub const NONCE_LEN: usize = 12;
/// Authentication tag length in bytes (128-bit tags only).
pub const TAG_LEN: usize = 16;

/// Which AES-256-GCM implementation to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// aws-lc-rs (AWS-LC, assembly, FIPS-capable). The fast default.
    #[default]
    AwsLc,
    /// RustCrypto `aes-gcm`: pure Rust, constant-time bitsliced fallback without AES-NI.
    RustCrypto,
}

impl Backend {
    /// Both backends, for tests and benchmarks that run everything.
    pub const ALL: [Backend; 2] = [Backend::AwsLc, Backend::RustCrypto];

    /// A short stable name (`aws-lc`, `rustcrypto`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::AwsLc => "aws-lc",
            Backend::RustCrypto => "rustcrypto",
        }
    }
}

/// AEAD failure. Deliberately carries no detail: which check failed would be an oracle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("AEAD operation failed (authentication failure or invalid length)")]
pub struct AeadError;

enum Inner {
    AwsLc(aws_lc_rs::aead::LessSafeKey),
    RustCrypto(Box<aes_gcm::Aes256Gcm>),
}

/// An AES-256-GCM key, expanded and ready to seal/open. The expanded key schedule is
/// zeroized on drop by both backends.
pub struct Aes256Gcm {
    inner: Inner,
}

impl fmt::Debug for Aes256Gcm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aes256Gcm").field("backend", &self.backend()).finish_non_exhaustive()
    }
}

impl Aes256Gcm {
    /// Expands `key` for `backend`.
    pub fn new(backend: Backend, key: &[u8; 32]) -> Self {
        let inner = match backend {
            Backend::AwsLc => {
                // AES_256_GCM accepts exactly 32-byte keys, which the type guarantees.
                match aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, key) {
                    Ok(k) => Inner::AwsLc(aws_lc_rs::aead::LessSafeKey::new(k)),
                    Err(_) => unreachable_key_len(),
                }
            }
            Backend::RustCrypto => Inner::RustCrypto(Box::new(aes_gcm::Aes256Gcm::new(key.into()))),
        };
        Self { inner }
    }

    /// The backend this key runs on.
    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::AwsLc(_) => Backend::AwsLc,
            Inner::RustCrypto(_) => Backend::RustCrypto,
        }
    }

    /// Encrypts `in_out` in place and returns the tag.
    ///
    /// The caller must never use the same `(key, nonce)` pair twice.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        let mut tag_out = [0u8; TAG_LEN];
        match &self.inner {
            Inner::AwsLc(k) => {
                let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(*nonce);
                let tag = k
                    .seal_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::from(aad), in_out)
                    .map_err(|_| AeadError)?;
                tag_out.copy_from_slice(tag.as_ref());
            }
            Inner::RustCrypto(k) => {
                let tag = k.encrypt_in_place_detached(nonce.into(), aad, in_out).map_err(|_| AeadError)?;
                tag_out.copy_from_slice(&tag);
            }
        }
        Ok(tag_out)
    }

    /// Verifies and decrypts `in_out` = ciphertext ‖ tag in place; on success the first
    /// `in_out.len() - 16` bytes hold the plaintext and that length is returned.
    ///
    /// On failure the whole buffer is zeroized, so no unauthenticated plaintext survives.
    pub fn open_in_place(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> Result<usize, AeadError> {
        let Some(pt_len) = in_out.len().checked_sub(TAG_LEN) else {
            return Err(AeadError);
        };
        let ok = match &self.inner {
            Inner::AwsLc(k) => {
                let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(*nonce);
                k.open_in_place(nonce, aws_lc_rs::aead::Aad::from(aad), in_out).is_ok()
            }
            Inner::RustCrypto(k) => {
                let (ct, tag) = in_out.split_at_mut(pt_len);
                let tag = aes_gcm::Tag::clone_from_slice(tag);
                k.decrypt_in_place_detached(nonce.into(), aad, ct, &tag).is_ok()
            }
        };
        if ok {
            Ok(pt_len)
        } else {
            in_out.zeroize();
            Err(AeadError)
        }
    }

    /// Encrypts `plaintext` into `out`, which must be exactly `plaintext.len() + 16` bytes:
    /// ciphertext ‖ tag. Out of place, so callers avoid a copy before encrypting.
    pub fn seal_to(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<(), AeadError> {
        if out.len() != plaintext.len() + TAG_LEN {
            return Err(AeadError);
        }
        match &self.inner {
            Inner::AwsLc(k) => {
                let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(*nonce);
                // Scatter form: an empty in-place part, the plaintext as "extra input"
                // encrypted straight into `out` followed by the tag.
                k.seal_in_place_scatter(nonce, aws_lc_rs::aead::Aad::from(aad), &mut [], plaintext, out)
                    .map_err(|_| AeadError)
            }
            Inner::RustCrypto(_) => {
                let (body, tag_out) = out.split_at_mut(plaintext.len());
                body.copy_from_slice(plaintext);
                let tag = self.seal_in_place(nonce, aad, body)?;
                tag_out.copy_from_slice(&tag);
                Ok(())
            }
        }
    }

    /// Verifies and decrypts `ciphertext_and_tag` into `out`, which must be exactly
    /// 16 bytes shorter. On failure `out` is zeroized.
    pub fn open_to(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
        out: &mut [u8],
    ) -> Result<(), AeadError> {
        let Some(pt_len) = ciphertext_and_tag.len().checked_sub(TAG_LEN) else {
            return Err(AeadError);
        };
        if out.len() != pt_len {
            return Err(AeadError);
        }
        let (ct, tag) = ciphertext_and_tag.split_at(pt_len);
        let ok = match &self.inner {
            Inner::AwsLc(k) => {
                let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(*nonce);
                k.open_separate_gather(nonce, aws_lc_rs::aead::Aad::from(aad), ct, tag, out).is_ok()
            }
            Inner::RustCrypto(k) => {
                out.copy_from_slice(ct);
                let tag = aes_gcm::Tag::clone_from_slice(tag);
                k.decrypt_in_place_detached(nonce.into(), aad, out, &tag).is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            out.zeroize();
            Err(AeadError)
        }
    }

    /// Convenience: returns ciphertext ‖ tag. Fails only above GCM's plaintext limit
    /// (2^36 - 32 bytes).
    pub fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, AeadError> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = self.seal_in_place(nonce, aad, &mut out)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Convenience: opens ciphertext ‖ tag into a new vector.
    pub fn open(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], ciphertext_and_tag: &[u8]) -> Result<Vec<u8>, AeadError> {
        let mut buf = ciphertext_and_tag.to_vec();
        let n = self.open_in_place(nonce, aad, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

#[cold]
fn unreachable_key_len() -> ! {
    // aws-lc rejects a key only when its length is wrong; `[u8; 32]` rules that out.
    unreachable!("AES-256-GCM key of 32 bytes rejected")
}
