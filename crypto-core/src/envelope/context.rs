//! Encryption context: a string map bound to a message as authenticated data.

use std::borrow::Cow;
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
        // BTreeMap<String, _> iterates in ascending byte order of the UTF-8 keys.
        encode_sorted(self.entries.len(), self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// The canonical encoding as a [`CanonicalContext`], to reuse for many messages.
    pub fn to_canonical(&self) -> Result<CanonicalContext, EnvelopeError> {
        Ok(CanonicalContext { bytes: self.canonical_bytes()? })
    }
}

/// Encodes `n` entries already in ascending byte order of their keys, without duplicates.
fn encode_sorted<'a>(n: usize, entries: impl Iterator<Item = (&'a str, &'a str)>) -> Result<Vec<u8>, EnvelopeError> {
    if n > MAX_CONTEXT_ENTRIES {
        return Err(EnvelopeError::InvalidContext("more than 256 entries"));
    }
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    for (k, v) in entries {
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

/// An encryption context already in its canonical encoding
/// ([`EncryptionContext::canonical_bytes`]): what the envelope binds to a message. Build it
/// once to seal or open many messages under one context, or straight from borrowed
/// pairs ([`CanonicalContext::from_pairs`]) without building a map of owned strings
/// (the C API does, per call). Every envelope method that takes a context takes either.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalContext {
    bytes: Vec<u8>,
}

impl CanonicalContext {
    /// Encodes `pairs` in any order. Unlike collecting into an [`EncryptionContext`]
    /// (where a later pair replaces an earlier one), a key given twice is refused: the
    /// caller's intent is ambiguous. The same limits as
    /// [`EncryptionContext::canonical_bytes`] apply.
    pub fn from_pairs<'a>(pairs: &[(&'a str, &'a str)]) -> Result<Self, EnvelopeError> {
        if pairs.len() > MAX_CONTEXT_ENTRIES {
            return Err(EnvelopeError::InvalidContext("more than 256 entries"));
        }
        // Sorted on the stack for the usual handful of pairs.
        let mut small = [("", ""); 16];
        let mut large = Vec::new();
        let sorted: &mut [(&str, &str)] = if pairs.len() <= small.len() {
            small[..pairs.len()].copy_from_slice(pairs);
            &mut small[..pairs.len()]
        } else {
            large.extend_from_slice(pairs);
            &mut large
        };
        sorted.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        if sorted.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(EnvelopeError::InvalidContext("a key appears twice"));
        }
        Ok(Self { bytes: encode_sorted(sorted.len(), sorted.iter().copied())? })
    }

    /// The empty context.
    pub fn empty() -> Self {
        Self { bytes: vec![0, 0] }
    }

    /// The canonical encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

mod private {
    pub trait Sealed {}
    impl Sealed for super::EncryptionContext {}
    impl Sealed for super::CanonicalContext {}
}

/// What the envelope methods accept as an encryption context: an [`EncryptionContext`]
/// or a [`CanonicalContext`]. Sealed: the encoding is the format's, not the caller's.
pub trait ContextEncoding: private::Sealed {
    /// The canonical encoding (`docs/format.md`), or why the context cannot be encoded.
    fn canonical(&self) -> Result<Cow<'_, [u8]>, EnvelopeError>;
}

impl ContextEncoding for EncryptionContext {
    fn canonical(&self) -> Result<Cow<'_, [u8]>, EnvelopeError> {
        Ok(Cow::Owned(self.canonical_bytes()?))
    }
}

impl ContextEncoding for CanonicalContext {
    fn canonical(&self) -> Result<Cow<'_, [u8]>, EnvelopeError> {
        Ok(Cow::Borrowed(&self.bytes))
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
    fn canonical_context_from_pairs_matches_the_map_and_refuses_duplicates() {
        let map = EncryptionContext::new().with("tenant", "a").with("column", "ssn").with("Z", "").with("é", "x");
        let pairs = [("tenant", "a"), ("é", "x"), ("column", "ssn"), ("Z", "")];
        let canonical = CanonicalContext::from_pairs(&pairs).unwrap();
        assert_eq!(canonical.as_bytes(), &map.canonical_bytes().unwrap()[..]);
        assert_eq!(map.to_canonical().unwrap(), canonical);
        assert_eq!(CanonicalContext::from_pairs(&[]).unwrap(), CanonicalContext::empty());
        assert!(matches!(
            CanonicalContext::from_pairs(&[("a", "1"), ("b", "2"), ("a", "1")]),
            Err(EnvelopeError::InvalidContext(_))
        ));
        assert!(CanonicalContext::from_pairs(&[("", "x")]).is_err());
        // More pairs than the stack buffer holds: same encoding as the map.
        let owned: Vec<(String, String)> = (0..40).rev().map(|i| (format!("k{i:02}"), format!("v{i}"))).collect();
        let borrowed: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let map: EncryptionContext = owned.iter().cloned().collect();
        assert_eq!(CanonicalContext::from_pairs(&borrowed).unwrap().as_bytes(), &map.canonical_bytes().unwrap()[..]);
        let too_many: Vec<(String, String)> = (0..300).map(|i| (format!("k{i}"), String::new())).collect();
        let too_many: Vec<(&str, &str)> = too_many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(CanonicalContext::from_pairs(&too_many).is_err());
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
