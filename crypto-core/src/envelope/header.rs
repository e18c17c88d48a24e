//! The v1 header: byte layout, encoding and a bounds-checked parser.
//!
//! Layout (all integers big-endian; see `docs/format.md` for the normative text):
//!
//! ```text
//! magic "CCEF" (4) | version 0x01 (1) | suite 0x01 (1) | form (1)
//! [segment_size u32 (4), stream form only] | salt (32)          <- "immutable prefix"
//! wrapped_key_count u8 (1..=16)
//!   per key: id_len u8 | provider_id | name_len u8 | key_name | key_version u32
//!            | blob_len u16 | blob
//! commitment (32)
//! ```

use std::io::Read;

use super::EnvelopeError;
use crate::keys::validate_key_name;
use crate::provider::{MAX_BLOB_LEN, WrappedKey, validate_provider_id};

/// The four magic bytes that start every v1 message.
pub const MAGIC: [u8; 4] = *b"CCEF";
/// Format version 1.
pub const VERSION_1: u8 = 0x01;
/// Suite 0x01: AES-256-GCM, HKDF-SHA256 derivation, HKDF-SHA256 key commitment.
pub const SUITE_AES256GCM_HKDF_SHA256: u8 = 0x01;
/// Form byte of the segmented (stream) form.
pub const FORM_STREAM: u8 = 0x01;
/// Form byte of the compact single-segment form.
pub const FORM_COMPACT: u8 = 0x02;
/// Salt length.
pub const SALT_LEN: usize = 32;
/// Commitment length.
pub const COMMITMENT_LEN: usize = 32;
/// Most wrapped keys a header may carry.
pub const MAX_WRAPPED_KEYS: usize = 16;
/// Smallest allowed segment size (plaintext bytes per segment).
pub const MIN_SEGMENT_SIZE: u32 = 16;
/// Largest allowed segment size: 16 MiB.
pub const MAX_SEGMENT_SIZE: u32 = 16 * 1024 * 1024;
/// Default segment size: 64 KiB.
pub const DEFAULT_SEGMENT_SIZE: u32 = 64 * 1024;
/// Largest plaintext of a compact message: one segment of the largest size.
pub const MAX_COMPACT_PLAINTEXT: usize = MAX_SEGMENT_SIZE as usize;

/// The body layout of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Segmented body: segments of `segment_size` plaintext bytes (the last may be shorter).
    Stream {
        /// Plaintext bytes per segment.
        segment_size: u32,
    },
    /// One segment, no segment-size field: for small records.
    Compact,
}

/// A parsed v1 header. Everything in it is public (no secret bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub(crate) form: Form,
    pub(crate) salt: [u8; SALT_LEN],
    pub(crate) wrapped: Vec<WrappedKey>,
    pub(crate) commitment: [u8; COMMITMENT_LEN],
}

impl Header {
    /// The body layout.
    pub fn form(&self) -> Form {
        self.form
    }

    /// Segment size of a stream-form message; a compact message is one segment.
    pub fn segment_size(&self) -> Option<u32> {
        match self.form {
            Form::Stream { segment_size } => Some(segment_size),
            Form::Compact => None,
        }
    }

    /// The wrapped data keys (at least one), primary first.
    pub fn wrapped_keys(&self) -> &[WrappedKey] {
        &self.wrapped
    }

    /// Name of the KEK that wrapped the first (primary) data-key copy.
    pub fn key_name(&self) -> &str {
        self.wrapped.first().map(|w| w.key_name.as_str()).unwrap_or_default()
    }

    /// Version of the KEK that wrapped the first data-key copy.
    pub fn key_version(&self) -> u32 {
        self.wrapped.first().map(|w| w.key_version).unwrap_or_default()
    }

    /// The bytes from the magic through the salt: never changed by rewrap, and bound into
    /// key derivation and the commitment.
    pub(crate) fn immutable_prefix(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(11 + SALT_LEN);
        self.write_immutable_prefix(&mut out);
        out
    }

    /// Appends the immutable prefix to `out`.
    pub(crate) fn write_immutable_prefix(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(VERSION_1);
        out.push(SUITE_AES256GCM_HKDF_SHA256);
        match self.form {
            Form::Stream { segment_size } => {
                out.push(FORM_STREAM);
                out.extend_from_slice(&segment_size.to_be_bytes());
            }
            Form::Compact => out.push(FORM_COMPACT),
        }
        out.extend_from_slice(&self.salt);
    }

    /// Appends everything after the immutable prefix: wrapped keys and commitment. The
    /// fields were validated when the header was built or parsed.
    pub(crate) fn write_rest(&self, out: &mut Vec<u8>) {
        out.push(self.wrapped.len() as u8);
        for w in &self.wrapped {
            write_wrapped_entry(w, out);
        }
        out.extend_from_slice(&self.commitment);
    }

    /// The full encoded header.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write_immutable_prefix(&mut out);
        self.write_rest(&mut out);
        out
    }

    /// Length of the encoded header in bytes.
    pub fn encoded_len(&self) -> usize {
        let fixed = 4 + 1 + 1 + 1 + SALT_LEN + 1 + COMMITMENT_LEN;
        let seg = if matches!(self.form, Form::Stream { .. }) { 4 } else { 0 };
        fixed + seg + self.wrapped.iter().map(wrapped_entry_len).sum::<usize>()
    }

    /// Parses a header from the start of `bytes`; returns it with its encoded length.
    pub fn parse(bytes: &[u8]) -> Result<(Header, usize), EnvelopeError> {
        let mut src = SliceSource { bytes, pos: 0 };
        let header = parse_from(&mut src)?;
        Ok((header, src.pos))
    }

    /// Reads and parses a header from `reader`, consuming exactly its bytes.
    pub(crate) fn read_from<R: Read>(reader: &mut R) -> Result<Header, EnvelopeError> {
        let mut src = ReadSource { reader, buf: Vec::with_capacity(256) };
        parse_from(&mut src)
    }
}

/// Appends one wrapped-key entry (`docs/format.md` §4.3); the fields were validated.
fn write_wrapped_entry(w: &WrappedKey, out: &mut Vec<u8>) {
    out.push(w.provider_id.len() as u8);
    out.extend_from_slice(w.provider_id.as_bytes());
    out.push(w.key_name.len() as u8);
    out.extend_from_slice(w.key_name.as_bytes());
    out.extend_from_slice(&w.key_version.to_be_bytes());
    out.extend_from_slice(&(w.blob.len() as u16).to_be_bytes());
    out.extend_from_slice(&w.blob);
}

/// Reads one wrapped-key entry; the caller validates it ([`validate_wrapped`]).
fn parse_wrapped_entry(s: &mut impl Source) -> Result<WrappedKey, EnvelopeError> {
    let id_len = usize::from(u8_of(s)?);
    let provider_id = std::str::from_utf8(s.take(id_len)?)
        .map_err(|_| EnvelopeError::Malformed("provider id is not UTF-8"))?
        .to_owned();
    let name_len = usize::from(u8_of(s)?);
    let key_name = std::str::from_utf8(s.take(name_len)?)
        .map_err(|_| EnvelopeError::Malformed("key name is not UTF-8"))?
        .to_owned();
    let key_version = u32_of(s)?;
    let blob_len = usize::from(u16_of(s)?);
    if blob_len > MAX_BLOB_LEN {
        return Err(EnvelopeError::Malformed("wrapped key blob longer than 4096 bytes"));
    }
    let blob = s.take(blob_len)?.to_vec();
    Ok(WrappedKey { provider_id, key_name, key_version, blob })
}

impl WrappedKey {
    /// Encodes this wrapped key alone, as one header entry (`docs/format.md` §4.3): the
    /// storable form of a data key from
    /// [`generate_data_key`](crate::provider::KeyProvider::generate_data_key). Fails if a
    /// field is out of the format's bounds.
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        validate_wrapped(std::slice::from_ref(self))?;
        let mut out = Vec::with_capacity(wrapped_entry_len(self));
        write_wrapped_entry(self, &mut out);
        Ok(out)
    }

    /// Decodes what [`WrappedKey::encode`] made. Untrusted input is fine: every field is
    /// bounded and checked, and the whole input must be one entry (no trailing bytes).
    pub fn decode(bytes: &[u8]) -> Result<WrappedKey, EnvelopeError> {
        let mut src = SliceSource { bytes, pos: 0 };
        let w = parse_wrapped_entry(&mut src)?;
        if src.pos != bytes.len() {
            return Err(EnvelopeError::Malformed("trailing bytes after the wrapped key"));
        }
        validate_wrapped(std::slice::from_ref(&w))?;
        Ok(w)
    }
}

/// Encoded length of one wrapped-key entry.
pub(crate) fn wrapped_entry_len(w: &WrappedKey) -> usize {
    1 + w.provider_id.len() + 1 + w.key_name.len() + 4 + 2 + w.blob.len()
}

/// Checks that wrapped keys can be encoded in a header.
pub(crate) fn validate_wrapped(wrapped: &[WrappedKey]) -> Result<(), EnvelopeError> {
    if wrapped.is_empty() || wrapped.len() > MAX_WRAPPED_KEYS {
        return Err(EnvelopeError::Malformed("a header holds 1 to 16 wrapped keys"));
    }
    for w in wrapped {
        validate_provider_id(&w.provider_id).map_err(|_| EnvelopeError::Malformed("invalid provider id"))?;
        validate_key_name(&w.key_name).map_err(|_| EnvelopeError::Malformed("invalid key name"))?;
        if w.blob.is_empty() || w.blob.len() > MAX_BLOB_LEN {
            return Err(EnvelopeError::Malformed("wrapped key blob must be 1 to 4096 bytes"));
        }
        if w.key_version == 0 {
            return Err(EnvelopeError::Malformed("key version 0"));
        }
    }
    Ok(())
}

/// Checks a segment size against the format's bounds.
pub(crate) fn validate_segment_size(segment_size: u32) -> Result<(), EnvelopeError> {
    if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size) {
        return Err(EnvelopeError::InvalidSegmentSize(segment_size));
    }
    Ok(())
}

trait Source {
    /// The next `n` bytes, or `Truncated` if the input ends first.
    fn take(&mut self, n: usize) -> Result<&[u8], EnvelopeError>;
}

struct SliceSource<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Source for SliceSource<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], EnvelopeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or(EnvelopeError::Truncated)?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

struct ReadSource<'r, R> {
    reader: &'r mut R,
    buf: Vec<u8>,
}

impl<R: Read> Source for ReadSource<'_, R> {
    fn take(&mut self, n: usize) -> Result<&[u8], EnvelopeError> {
        let start = self.buf.len();
        self.buf.resize(start + n, 0);
        let mut filled = 0;
        while filled < n {
            match self.reader.read(&mut self.buf[start + filled..]) {
                Ok(0) => return Err(EnvelopeError::Truncated),
                Ok(k) => filled += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(EnvelopeError::Io(e)),
            }
        }
        Ok(&self.buf[start..])
    }
}

fn u8_of(s: &mut impl Source) -> Result<u8, EnvelopeError> {
    Ok(s.take(1)?[0])
}

fn u16_of(s: &mut impl Source) -> Result<u16, EnvelopeError> {
    let b = s.take(2)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

fn u32_of(s: &mut impl Source) -> Result<u32, EnvelopeError> {
    let b = s.take(4)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn parse_from(s: &mut impl Source) -> Result<Header, EnvelopeError> {
    if s.take(4)? != MAGIC {
        return Err(EnvelopeError::Malformed("bad magic: not a cryptocore envelope"));
    }
    let version = u8_of(s)?;
    if version != VERSION_1 {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    let suite = u8_of(s)?;
    if suite != SUITE_AES256GCM_HKDF_SHA256 {
        return Err(EnvelopeError::UnsupportedSuite(suite));
    }
    let form = match u8_of(s)? {
        FORM_STREAM => {
            let segment_size = u32_of(s)?;
            validate_segment_size(segment_size)?;
            Form::Stream { segment_size }
        }
        FORM_COMPACT => Form::Compact,
        other => return Err(EnvelopeError::UnsupportedForm(other)),
    };
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(s.take(SALT_LEN)?);
    let count = usize::from(u8_of(s)?);
    if count == 0 || count > MAX_WRAPPED_KEYS {
        return Err(EnvelopeError::Malformed("wrapped key count must be 1 to 16"));
    }
    let mut wrapped = Vec::with_capacity(count);
    for _ in 0..count {
        wrapped.push(parse_wrapped_entry(s)?);
    }
    validate_wrapped(&wrapped)?;
    let mut commitment = [0u8; COMMITMENT_LEN];
    commitment.copy_from_slice(s.take(COMMITMENT_LEN)?);
    Ok(Header { form, salt, wrapped, commitment })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WrappedKey {
        WrappedKey { provider_id: "local".into(), key_name: "tenant-a/db".into(), key_version: 7, blob: vec![0xAB; 60] }
    }

    #[test]
    fn wrapped_key_entry_round_trips_and_matches_the_header_encoding() {
        let w = sample();
        let bytes = w.encode().expect("encode");
        assert_eq!(bytes.len(), wrapped_entry_len(&w));
        assert_eq!(WrappedKey::decode(&bytes).expect("decode"), w);
        // The same bytes a header holds for this entry.
        let header =
            Header { form: Form::Compact, salt: [1; SALT_LEN], wrapped: vec![w], commitment: [2; COMMITMENT_LEN] };
        let mut rest = Vec::new();
        header.write_rest(&mut rest);
        assert_eq!(&rest[1..1 + bytes.len()], &bytes[..]);
    }

    #[test]
    fn wrapped_key_decode_refuses_malformed_input() {
        let bytes = sample().encode().expect("encode");
        for cut in 0..bytes.len() {
            assert!(WrappedKey::decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(WrappedKey::decode(&trailing), Err(EnvelopeError::Malformed(_))));
        let mut zero_version = sample();
        zero_version.key_version = 0;
        assert!(zero_version.encode().is_err());
        let mut empty_blob = sample();
        empty_blob.blob.clear();
        assert!(empty_blob.encode().is_err());
        // Version 0 and an empty provider id written by hand are refused on decode too.
        let mut v0 = bytes.clone();
        let at = 1 + 5 + 1 + 11;
        v0[at..at + 4].copy_from_slice(&[0; 4]);
        assert!(WrappedKey::decode(&v0).is_err());
        let no_provider = [0u8, 1, b'k', 0, 0, 0, 1, 0, 1, 9];
        assert!(WrappedKey::decode(&no_provider).is_err());
    }
}
