//! Encryption context: a string map bound to a message as authenticated data.

use std::collections::BTreeMap;

use super::EnvelopeError;

/// Maximum number of context entries.
pub const MAX_CONTEXT_ENTRIES: usize = 256;
/// Maximum length of the canonical context encoding in bytes.
pub const MAX_CONTEXT_LEN: usize = 16 * 1024;

/// A map of non-secret strings (tenant, table, column, object path…) bound to a message.
///
/// The context is not stored in the ciphertext: whoever opens must present the same map,
/// or opening fails before any plaintext is released. Its canonical byte encoding
/// ([`EncryptionContext::canonical_bytes`], specified in `docs/format.md`) sorts entries
/// by key, so insertion order never matters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncryptionContext {
    entries: BTreeMap<String, String>,
}

impl EncryptionContext {
    /// The empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces an entry, builder style.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// Adds or replaces an entry.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.entries.insert(key.into(), value.into());
    }

    /// The entries, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The canonical encoding: `u16 count`, then for each entry in ascending byte order of
    /// keys `u16 key_len ‖ key ‖ u16 value_len ‖ value` (big-endian lengths, UTF-8).
    ///
    /// Fails if a key is empty, there are more than 256 entries, or the encoding exceeds
    /// 16 KiB.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        if self.entries.len() > MAX_CONTEXT_ENTRIES {
            return Err(EnvelopeError::InvalidContext("more than 256 entries"));
        }
        let mut out = Vec::with_capacity(2 + self.entries.iter().map(|(k, v)| 4 + k.len() + v.len()).sum::<usize>());
        out.extend_from_slice(&(self.entries.len() as u16).to_be_bytes());
        // BTreeMap<String, _> iterates in ascending byte order of the UTF-8 keys.
        for (k, v) in &self.entries {
            if k.is_empty() {
                return Err(EnvelopeError::InvalidContext("empty key"));
            }
            for s in [k, v] {
                let len = u16::try_from(s.len()).map_err(|_| EnvelopeError::InvalidContext("entry too long"))?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            if out.len() > MAX_CONTEXT_LEN {
                return Err(EnvelopeError::InvalidContext("encoding longer than 16 KiB"));
            }
        }
        Ok(out)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for EncryptionContext {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self { entries: iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }
}

impl From<BTreeMap<String, String>> for EncryptionContext {
    fn from(entries: BTreeMap<String, String>) -> Self {
        Self { entries }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_canonical_and_order_free() {
        let a = EncryptionContext::new().with("tenant", "a").with("column", "ssn");
        let b: EncryptionContext = [("column", "ssn"), ("tenant", "a")].into_iter().collect();
        assert_eq!(a.canonical_bytes().unwrap(), b.canonical_bytes().unwrap());
        assert_eq!(a.canonical_bytes().unwrap(), b"\x00\x02\x00\x06column\x00\x03ssn\x00\x06tenant\x00\x01a".to_vec());
        assert_eq!(EncryptionContext::new().canonical_bytes().unwrap(), vec![0, 0]);
    }

    #[test]
    fn limits_are_enforced() {
        assert!(EncryptionContext::new().with("", "x").canonical_bytes().is_err());
        let big = EncryptionContext::new().with("k", "v".repeat(20_000));
        assert!(big.canonical_bytes().is_err());
        let many: EncryptionContext = (0..300).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(many.canonical_bytes().is_err());
    }
}
