//! The only types that hold secret key bytes.
//!
//! Every type here is zeroized on drop (through [`secrecy::SecretBox`]), prints
//! `[REDACTED]` instead of its contents in `Debug`, has no `Display`, and compares in
//! constant time. None of them is `Clone`: duplicating key bytes is an explicit
//! [`DataKey::duplicate`] call so that every copy is visible in review.

use core::fmt;

use secrecy::{ExposeSecret, SecretBox};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Length in bytes of every symmetric key in this crate (AES-256).
pub const KEY_LEN: usize = 32;

macro_rules! secret_key_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name(SecretBox<[u8; KEY_LEN]>);

        impl $name {
            /// Wraps existing key bytes. The caller's array is zeroized after the copy.
            pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> Self {
                let key = Self(SecretBox::new(Box::new(bytes)));
                bytes.zeroize();
                key
            }

            /// Copies key bytes from a slice; `None` unless it is exactly 32 bytes long.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                let mut boxed = Box::new([0u8; KEY_LEN]);
                if bytes.len() != KEY_LEN {
                    return None;
                }
                boxed.copy_from_slice(bytes);
                Some(Self(SecretBox::new(boxed)))
            }

            /// Fresh random key bytes from the operating system's CSPRNG (through aws-lc).
            pub fn generate() -> Self {
                let mut boxed = Box::new([0u8; KEY_LEN]);
                crate::rand::fill(&mut boxed[..]);
                Self(SecretBox::new(boxed))
            }

            /// The key bytes. Named so every use is easy to find in review: the result must
            /// not be copied into a non-zeroizing buffer, logged or returned to a caller.
            pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
                self.0.expose_secret()
            }

            /// An explicit copy of the secret (the type is deliberately not `Clone`).
            pub fn duplicate(&self) -> Self {
                Self(SecretBox::new(Box::new(*self.0.expose_secret())))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([REDACTED])"))
            }
        }

        impl PartialEq for $name {
            /// Constant-time comparison of the key bytes.
            fn eq(&self, other: &Self) -> bool {
                ct_eq(self.0.expose_secret(), other.0.expose_secret())
            }
        }

        impl Eq for $name {}
    };
}

secret_key_type!(
    /// A data key: the 256-bit key that one or many messages are sealed under. It travels
    /// only wrapped (see [`crate::provider`]); in memory it lives in this type.
    DataKey
);

secret_key_type!(
    /// Key-encryption-key material: the bytes of one version of a named key (KEK) that
    /// wraps data keys. Held by [`crate::keys`] and erased when the version is destroyed.
    KeyMaterial
);

/// A variable-length secret byte string (passwords, derived secrets, plaintext data keys
/// handed out to callers). Zeroized on drop, redacted in `Debug`, constant-time equality.
pub struct SecretBytes(SecretBox<[u8]>);

impl SecretBytes {
    /// Takes ownership of `bytes`; the vector's buffer is zeroized when this is dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(SecretBox::new(bytes.into_boxed_slice()))
    }

    /// The secret bytes (see [`DataKey::expose_secret`] for the rules).
    pub fn expose_secret(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.expose_secret().len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {} bytes])", self.len())
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(self.expose_secret(), other.expose_secret())
    }
}

impl Eq for SecretBytes {}

/// Constant-time equality of two byte strings. The lengths are compared in variable time
/// (lengths are public everywhere this crate uses it: tags, commitments, token digests).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_bytes() {
        let key = DataKey::from_bytes([0xAB; KEY_LEN]);
        let shown = format!("{key:?}");
        assert_eq!(shown, "DataKey([REDACTED])");
        assert!(!shown.to_lowercase().contains("ab"));
        let kek = KeyMaterial::from_bytes([0x11; KEY_LEN]);
        assert_eq!(format!("{kek:?}"), "KeyMaterial([REDACTED])");
        let bytes = SecretBytes::new(b"hunter2".to_vec());
        assert_eq!(format!("{bytes:?}"), "SecretBytes([REDACTED; 7 bytes])");
    }

    #[test]
    fn equality_is_by_value() {
        let a = DataKey::from_bytes([1; KEY_LEN]);
        let b = a.duplicate();
        let c = DataKey::generate();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }

    #[test]
    fn from_slice_checks_length() {
        assert!(DataKey::from_slice(&[0; 31]).is_none());
        assert!(DataKey::from_slice(&[0; 33]).is_none());
        assert!(DataKey::from_slice(&[7; 32]).is_some());
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(DataKey::generate(), DataKey::generate());
    }
}
