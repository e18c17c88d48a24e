//! Key wrapping: seal a 32-byte key under a 32-byte wrapping key.
//!
//! Blob (65 bytes): `0x01 ‖ salt(16) ‖ AES-256-GCM(k, n, aad, key)(32) ‖ tag(16)` where
//! `k ‖ n = HKDF-SHA256(salt, wrapping_key, label, 44)`. Each wrap derives a one-time key and
//! nonce from a fresh random salt, so one wrapping key can wrap any number of keys without
//! the 2^32 random-nonce limit. `label` separates uses (the local provider, the sidecar's
//! root key); `aad` binds the wrapped key's identity (name, version), so a blob moved to
//! another identity fails to unwrap. Specified in `docs/format.md` ("Local provider").
//!
//! [`wrap_secret`]/[`unwrap_secret`] apply the same construction to a secret of any length
//! (a CA's PKCS#8 private key): `0x02 ‖ salt(16) ‖ ciphertext(len) ‖ tag(16)`.

use zeroize::Zeroizing;

use crate::aead::{Aes256Gcm, Backend, NONCE_LEN, TAG_LEN};
use crate::secret::KEY_LEN;

/// Blob version byte.
const BLOB_V1: u8 = 0x01;
/// Per-wrap salt length.
const SALT_LEN: usize = 16;
/// Length of a wrapped-key blob.
pub const WRAPPED_LEN: usize = 1 + SALT_LEN + KEY_LEN + TAG_LEN;

fn cipher(backend: Backend, wrapping_key: &[u8; KEY_LEN], label: &[u8], salt: &[u8]) -> (Aes256Gcm, [u8; NONCE_LEN]) {
    let mut okm = Zeroizing::new([0u8; KEY_LEN + NONCE_LEN]);
    crate::kdf::hkdf_sha256(salt, wrapping_key, &[label], &mut okm[..]);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&okm[..KEY_LEN]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&okm[KEY_LEN..]);
    (Aes256Gcm::new(backend, &key), nonce)
}

/// Wraps `key` under `wrapping_key`.
pub fn wrap(backend: Backend, wrapping_key: &[u8; KEY_LEN], label: &[u8], aad: &[u8], key: &[u8; KEY_LEN]) -> Vec<u8> {
    let salt: [u8; SALT_LEN] = crate::rand::salt();
    let (aead, nonce) = cipher(backend, wrapping_key, label, &salt);
    let mut blob = vec![0u8; WRAPPED_LEN];
    blob[0] = BLOB_V1;
    blob[1..1 + SALT_LEN].copy_from_slice(&salt);
    // 32 bytes in, 48 out: the only failure mode of seal_to (a length mismatch) cannot occur.
    let sealed = aead.seal_to(&nonce, aad, key, &mut blob[1 + SALT_LEN..]);
    debug_assert!(sealed.is_ok());
    blob
}

/// Unwraps a blob made by [`wrap`] with the same wrapping key, label and aad. `None` on any
/// mismatch (deliberately without detail).
pub fn unwrap(
    backend: Backend,
    wrapping_key: &[u8; KEY_LEN],
    label: &[u8],
    aad: &[u8],
    blob: &[u8],
) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    if blob.len() != WRAPPED_LEN || blob[0] != BLOB_V1 {
        return None;
    }
    let (aead, nonce) = cipher(backend, wrapping_key, label, &blob[1..1 + SALT_LEN]);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    aead.open_to(&nonce, aad, &blob[1 + SALT_LEN..], &mut out[..]).ok()?;
    Some(out)
}

const BLOB_SECRET_V1: u8 = 0x02;

/// Seals a secret of any length under `wrapping_key` (blob `0x02 ‖ salt ‖ ct ‖ tag`).
pub fn wrap_secret(backend: Backend, wrapping_key: &[u8; KEY_LEN], label: &[u8], aad: &[u8], secret: &[u8]) -> Vec<u8> {
    let salt: [u8; SALT_LEN] = crate::rand::salt();
    let (aead, nonce) = cipher(backend, wrapping_key, label, &salt);
    let mut blob = vec![0u8; 1 + SALT_LEN + secret.len() + TAG_LEN];
    blob[0] = BLOB_SECRET_V1;
    blob[1..1 + SALT_LEN].copy_from_slice(&salt);
    // The output slice is exactly plaintext + tag long: sealing cannot fail.
    let sealed = aead.seal_to(&nonce, aad, secret, &mut blob[1 + SALT_LEN..]);
    debug_assert!(sealed.is_ok());
    blob
}

/// Opens a blob from [`wrap_secret`]; `None` if it does not authenticate (wrong key,
/// label or aad, or tampered).
pub fn unwrap_secret(
    backend: Backend,
    wrapping_key: &[u8; KEY_LEN],
    label: &[u8],
    aad: &[u8],
    blob: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    if blob.len() < 1 + SALT_LEN + TAG_LEN || blob[0] != BLOB_SECRET_V1 {
        return None;
    }
    let (aead, nonce) = cipher(backend, wrapping_key, label, &blob[1..1 + SALT_LEN]);
    let mut out = Zeroizing::new(vec![0u8; blob.len() - 1 - SALT_LEN - TAG_LEN]);
    aead.open_to(&nonce, aad, &blob[1 + SALT_LEN..], &mut out[..]).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_of_any_length_round_trip_and_bind() {
        use super::*;
        for len in [0usize, 1, 121, 1218] {
            let secret: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let blob = wrap_secret(Backend::AwsLc, &[7u8; 32], b"l", b"a", &secret);
            assert_eq!(blob.len(), 33 + len);
            assert_eq!(&unwrap_secret(Backend::AwsLc, &[7u8; 32], b"l", b"a", &blob).unwrap()[..], &secret[..]);
            assert!(unwrap_secret(Backend::AwsLc, &[8u8; 32], b"l", b"a", &blob).is_none());
            assert!(unwrap_secret(Backend::AwsLc, &[7u8; 32], b"l", b"b", &blob).is_none());
            let mut bad = blob.clone();
            let n = bad.len();
            bad[n - 1] ^= 1;
            assert!(unwrap_secret(Backend::AwsLc, &[7u8; 32], b"l", b"a", &bad).is_none());
        }
        assert!(unwrap_secret(Backend::AwsLc, &[7u8; 32], b"l", b"a", &[2u8; 5]).is_none());
    }

    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let wk = [3u8; 32];
        let key = [9u8; 32];
        let blob = wrap(Backend::AwsLc, &wk, b"label", b"aad", &key);
        assert_eq!(blob.len(), WRAPPED_LEN);
        for backend in Backend::ALL {
            assert_eq!(*unwrap(backend, &wk, b"label", b"aad", &blob).unwrap(), key);
        }
        assert!(unwrap(Backend::AwsLc, &wk, b"other", b"aad", &blob).is_none());
        assert!(unwrap(Backend::AwsLc, &wk, b"label", b"other", &blob).is_none());
        assert!(unwrap(Backend::AwsLc, &[4u8; 32], b"label", b"aad", &blob).is_none());
        assert!(unwrap(Backend::AwsLc, &wk, b"label", b"aad", &blob[..64]).is_none());
        assert_ne!(blob, wrap(Backend::AwsLc, &wk, b"label", b"aad", &key), "fresh salt per wrap");
    }
}
