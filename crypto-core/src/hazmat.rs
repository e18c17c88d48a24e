//! Raw primitives, for interoperating with formats that are not this crate's envelope.
//!
//! Nothing here derives keys, chooses nonces or binds context: reusing a nonce under one
//! key with [`Aes256Gcm`] destroys both confidentiality and authenticity. Prefer
//! [`crate::envelope`].

pub use crate::aead::{AeadError, Aes256Gcm, NONCE_LEN, TAG_LEN};
