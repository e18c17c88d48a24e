//! Envelope encryption, ciphertext format v1 (normative spec: `docs/format.md`).
//!
//! Each message is sealed under a **data key**; the data key is stored in the message
//! header only **wrapped** by one or more KEKs (see [`crate::provider`]). From the data key
//! and a random 32-byte salt, HKDF-SHA256 derives a one-time message key
//! and a **key commitment** that is checked (in constant time) before any plaintext is
//! released. The **encryption context** is bound into that derivation, so the wrong
//! context fails the same check. The body is a sequence of AES-256-GCM **segments**
//! (STREAM construction), so large objects stream in constant memory, open at random
//! offsets and seal in parallel with byte-identical output.
//!
//! ```
//! use std::sync::Arc;
//! use crypto_core::envelope::{EncryptionContext, Envelope};
//! use crypto_core::keys::Keyring;
//! use crypto_core::provider::LocalProvider;
//!
//! let keyring = Arc::new(Keyring::in_memory());
//! keyring.create_key("tenant-a/db")?;
//! let envelope = Envelope::new(LocalProvider::new(keyring.clone()));
//! let ctx = EncryptionContext::new().with("tenant", "a").with("column", "ssn");
//!
//! let sealed = envelope.seal("tenant-a/db", &ctx, b"078-05-1120")?;
//! assert_eq!(envelope.open(&ctx, &sealed)?, b"078-05-1120");
//!
//! keyring.rotate("tenant-a/db")?;                  // new primary version 2
//! let rewrapped = envelope.rewrap(&sealed)?;       // body bytes untouched
//! assert_eq!(envelope.inspect(&rewrapped)?.key_version(), 2);
//! assert_eq!(envelope.open(&ctx, &rewrapped)?, b"078-05-1120");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod context;
mod header;
mod message;
mod stream;

use std::io::{Read, Seek, Write};

pub use context::{CanonicalContext, ContextEncoding, EncryptionContext, MAX_CONTEXT_ENTRIES, MAX_CONTEXT_LEN};
pub use header::{
    COMMITMENT_LEN, DEFAULT_SEGMENT_SIZE, FORM_COMPACT, FORM_STREAM, Form, Header, MAGIC, MAX_COMPACT_PLAINTEXT,
    MAX_SEGMENT_SIZE, MAX_WRAPPED_KEYS, MIN_SEGMENT_SIZE, SALT_LEN, SUITE_AES256GCM_HKDF_SHA256, VERSION_1,
};
pub use message::MessageSealer;
pub(crate) use message::{Geometry, MessageKeys, NONCE_PREFIX_LEN};
pub use stream::{DecryptingReader, EncryptingWriter, PushDecryptor, SeekableDecryptor};

use crate::aead::{Backend, TAG_LEN};
use crate::provider::{KeyProvider, ProviderError};
use crate::secret::DataKey;

/// Why sealing or opening failed.
///
/// Authentication failures are deliberately coarse: they say *which part* failed (header
/// or which segment) but never why, so they cannot serve as a decryption oracle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The bytes are not a well-formed v1 message (the detail names the field).
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// The message is of a format version this library does not know.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// The message uses an unknown algorithm suite.
    #[error("unsupported algorithm suite {0:#04x}")]
    UnsupportedSuite(u8),
    /// The message uses an unknown body form.
    #[error("unsupported body form {0:#04x}")]
    UnsupportedForm(u8),
    /// The message ends early: inside the header, after a segment that is not the final
    /// one, or with fewer than 16 bytes (less than a tag) after the last segment boundary.
    /// A cut that leaves 16 or more bytes of a segment surfaces as
    /// [`EnvelopeError::SegmentAuthentication`], since that piece is then checked as the
    /// final segment and fails.
    #[error("ciphertext is truncated")]
    Truncated,
    /// Bytes follow the final segment.
    #[error("data after the final segment")]
    TrailingData,
    /// The key commitment did not match: the encryption context differs from the one used
    /// to seal, the header was modified, or the data key is not the one sealed under.
    #[error("header authentication failed: wrong encryption context, wrong key, or modified header")]
    HeaderAuthentication,
    /// A segment failed authentication: modified, reordered, or taken from another message.
    #[error("segment {index} failed authentication")]
    SegmentAuthentication {
        /// Zero-based segment index.
        index: u64,
    },
    /// The data key could not be wrapped or unwrapped (unknown, disabled or destroyed key
    /// version, below `min_decrypt_version`, provider failure).
    #[error("data key unavailable: {0}")]
    Key(#[from] ProviderError),
    /// The encryption context cannot be encoded.
    #[error("invalid encryption context: {0}")]
    InvalidContext(&'static str),
    /// Segment size outside 16 B ..= 16 MiB.
    #[error("segment size {0} outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}")]
    InvalidSegmentSize(u32),
    /// The input exceeds a format limit.
    #[error("too large: {0}")]
    TooLarge(&'static str),
    /// A segment index past the end of the message.
    #[error("segment {index} out of range (message has {count})")]
    SegmentOutOfRange {
        /// Index asked for.
        index: u64,
        /// Segments in the message.
        count: u64,
    },
    /// Reading or writing the underlying stream failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl EnvelopeError {
    /// The envelope error carried inside an `io::Error` returned by the streaming types.
    pub fn from_io(e: &std::io::Error) -> Option<&EnvelopeError> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<EnvelopeError>())
    }

    pub(crate) fn into_io(self) -> std::io::Error {
        match self {
            EnvelopeError::Io(e) => e,
            EnvelopeError::Truncated => std::io::Error::new(std::io::ErrorKind::UnexpectedEof, self),
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        }
    }
}

/// Options for sealing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealOptions {
    /// Plaintext bytes per segment of the stream form (default 64 KiB).
    pub segment_size: u32,
    /// AES-GCM backend (default aws-lc).
    pub backend: Backend,
}

impl Default for SealOptions {
    fn default() -> Self {
        Self { segment_size: DEFAULT_SEGMENT_SIZE, backend: Backend::default() }
    }
}

/// Seals and opens messages with data keys from a [`KeyProvider`].
///
/// Wrap the provider in [`crate::cache::CachingProvider`] to reuse data keys across
/// messages (each message still gets its own derived key).
#[derive(Debug, Clone)]
pub struct Envelope<P> {
    provider: P,
    options: SealOptions,
}

impl<P: KeyProvider> Envelope<P> {
    /// An envelope over `provider` with default options.
    pub fn new(provider: P) -> Self {
        Self { provider, options: SealOptions::default() }
    }

    /// Replaces the options (segment size, backend).
    pub fn with_options(mut self, options: SealOptions) -> Result<Self, EnvelopeError> {
        header::validate_segment_size(options.segment_size)?;
        self.options = options;
        Ok(self)
    }

    /// The provider.
    pub fn provider(&self) -> &P {
        &self.provider
    }

    /// The options.
    pub fn options(&self) -> &SealOptions {
        &self.options
    }

    /// Prepares a new message of `form` under `key_name`.
    pub fn sealer(
        &self,
        key_name: &str,
        context: &impl ContextEncoding,
        form: Form,
    ) -> Result<MessageSealer, EnvelopeError> {
        self.sealer_for(key_name, context, form, None)
    }

    fn sealer_for(
        &self,
        key_name: &str,
        context: &impl ContextEncoding,
        form: Form,
        plaintext_len: Option<usize>,
    ) -> Result<MessageSealer, EnvelopeError> {
        let generated = self.provider.data_key_for_message(key_name, plaintext_len.map(|n| n as u64))?;
        MessageSealer::new(self.options.backend, &generated.data_key, generated.wrapped, context, form)
    }

    fn stream_form(&self) -> Form {
        Form::Stream { segment_size: self.options.segment_size }
    }

    /// Seals `plaintext` in the segmented (stream) form.
    pub fn seal(
        &self,
        key_name: &str,
        context: &impl ContextEncoding,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, EnvelopeError> {
        self.sealer_for(key_name, context, self.stream_form(), Some(plaintext.len()))?.seal(plaintext)
    }

    /// Seals `plaintext` in the stream form into `out`, reusing its allocation: `out` is
    /// resized to the message length (only newly grown bytes are initialised), so a caller
    /// that seals many objects through one buffer pays for neither allocation nor zeroing.
    pub fn seal_into(
        &self,
        key_name: &str,
        context: &impl ContextEncoding,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        self.sealer_for(key_name, context, self.stream_form(), Some(plaintext.len()))?.seal_into(plaintext, out)
    }

    /// Seals, in the stream form, the plaintext held in `buf`, in place: on return `buf`
    /// holds the message. No second buffer and no copy of the whole plaintext: the fastest
    /// way to seal a large object that may be overwritten. `buf` grows by the header and
    /// 16 bytes per segment; on `Err` it is unchanged. See [`MessageSealer::seal_in_place`].
    pub fn seal_in_place(
        &self,
        key_name: &str,
        context: &impl ContextEncoding,
        buf: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        self.sealer_for(key_name, context, self.stream_form(), Some(buf.len()))?.seal_in_place(buf)
    }

    /// Seals `plaintext` (at most 16 MiB) in the compact single-segment form.
    pub fn seal_compact(
        &self,
        key_name: &str,
        context: &impl ContextEncoding,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, EnvelopeError> {
        self.sealer_for(key_name, context, Form::Compact, Some(plaintext.len()))?.seal(plaintext)
    }

    /// [`Envelope::seal_compact`] into `out`, reusing its allocation.
    pub fn seal_compact_into(
        &self,
        key_name: &str,
        context: &impl ContextEncoding,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        self.sealer_for(key_name, context, Form::Compact, Some(plaintext.len()))?.seal_into(plaintext, out)
    }

    /// Parses the header (no key needed): which key and version, form, segment size.
    pub fn inspect(&self, ciphertext: &[u8]) -> Result<Header, EnvelopeError> {
        Ok(Header::parse(ciphertext)?.0)
    }

    /// What every whole-message engine (`bulk::cpu`, the GPU engine, the kernel model)
    /// needs before opening segments: the checked message keys, the body and its
    /// geometry.
    pub(crate) fn open_parts<'c>(
        &self,
        context: &impl ContextEncoding,
        ciphertext: &'c [u8],
    ) -> Result<(MessageKeys, &'c [u8], Geometry), EnvelopeError> {
        let (header, header_len) = Header::parse(ciphertext)?;
        let keys = self.open_header(&header, context)?;
        let body = &ciphertext[header_len..];
        let geometry = Geometry::for_body(header.segment_size().map(|s| s as usize), body.len())?;
        Ok((keys, body, geometry))
    }

    /// Unwraps the data key of `header` and derives and checks the message keys.
    pub(crate) fn open_header(
        &self,
        header: &Header,
        context: &impl ContextEncoding,
    ) -> Result<MessageKeys, EnvelopeError> {
        let data_key = self.provider.unwrap(&header.wrapped)?;
        message_keys(self.options.backend, &data_key, header, context)
    }

    /// Opens a whole message (either form). No plaintext is returned unless every segment
    /// authenticated; on failure the partially decrypted buffer is zeroized.
    pub fn open(&self, context: &impl ContextEncoding, ciphertext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = Vec::new();
        self.open_into(context, ciphertext, &mut out)?;
        Ok(out)
    }

    /// [`Envelope::open`] into a caller-owned buffer (resized to the plaintext length,
    /// allocation reused). On failure `out` is zeroized and left empty.
    pub fn open_into(
        &self,
        context: &impl ContextEncoding,
        ciphertext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        let (header, header_len) = Header::parse(ciphertext)?;
        let keys = self.open_header(&header, context)?;
        open_body(&keys, &header, &ciphertext[header_len..], out)
    }

    /// Opens the message held in `buf` in place: on success `buf` holds the plaintext.
    ///
    /// All or nothing, like [`Envelope::open`]. When the header, the key or the context is
    /// refused, `buf` is unchanged. When a segment fails to authenticate (tampering,
    /// truncation, trailing data) the plaintext already written over the front of `buf` is
    /// zeroized and `buf` is left empty: the ciphertext is consumed, so keep a copy if it is
    /// needed after a failure. Each segment is decrypted into a segment-sized scratch
    /// buffer (zeroized on drop) and then moved to its place, so no unauthenticated
    /// plaintext is ever in `buf`.
    pub fn open_in_place(&self, context: &impl ContextEncoding, buf: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        let (header, header_len) = Header::parse(buf)?;
        let keys = self.open_header(&header, context)?;
        open_body_in_place(&keys, &header, header_len, buf)
    }

    /// Opens only segment `index` of a message held in memory, without decrypting the
    /// others. Authenticates that segment and the header; whether the message is complete
    /// is checked only when the final segment is opened.
    pub fn open_segment(
        &self,
        context: &impl ContextEncoding,
        ciphertext: &[u8],
        index: u64,
    ) -> Result<Vec<u8>, EnvelopeError> {
        let (header, header_len) = Header::parse(ciphertext)?;
        let body = &ciphertext[header_len..];
        let geometry = Geometry::for_body(header.segment_size().map(|s| s as usize), body.len())?;
        if index >= geometry.segments {
            return Err(EnvelopeError::SegmentOutOfRange { index, count: geometry.segments });
        }
        let keys = self.open_header(&header, context)?;
        let start = index as usize * geometry.stride();
        let end = (start + geometry.stride()).min(body.len());
        let mut out = vec![0u8; end - start - TAG_LEN];
        keys.open_segment_checked(index as u32, index + 1 == geometry.segments, &body[start..end], &mut out)?;
        Ok(out)
    }

    /// Re-wraps the data key under the **primary** version of the message's key and returns
    /// the new message: new header, the very same body bytes. Needs no encryption context.
    pub fn rewrap(&self, ciphertext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let (new_header, old_len) = self.rewrap_header(ciphertext)?;
        let mut out = Vec::with_capacity(new_header.len() + ciphertext.len() - old_len);
        out.extend_from_slice(&new_header);
        out.extend_from_slice(&ciphertext[old_len..]);
        Ok(out)
    }

    /// Rewrap for stored objects: given at least the header bytes of a message, returns the
    /// new header and the length of the old one, so a store can replace `[0, old_len)` and
    /// keep the body where it is.
    pub fn rewrap_header(&self, ciphertext_prefix: &[u8]) -> Result<(Vec<u8>, usize), EnvelopeError> {
        let (mut header, old_len) = Header::parse(ciphertext_prefix)?;
        self.rewrap_parsed(&mut header)?;
        Ok((header.encode(), old_len))
    }

    /// Replaces the wrapped keys of `header` with the data key wrapped under the primary
    /// version of its first key.
    fn rewrap_parsed(&self, header: &mut Header) -> Result<(), EnvelopeError> {
        let data_key = self.provider.unwrap(&header.wrapped)?;
        let wrapped = self.provider.wrap(&header.wrapped[0].key_name, &data_key)?;
        header::validate_wrapped(&wrapped)?;
        header.wrapped = wrapped;
        Ok(())
    }

    /// Rewraps a message from `reader` into `writer`, copying the body through unchanged.
    /// Returns the number of bytes written.
    pub fn rewrap_stream<R: Read, W: Write>(&self, mut reader: R, mut writer: W) -> Result<u64, EnvelopeError> {
        let mut header = Header::read_from(&mut reader)?;
        self.rewrap_parsed(&mut header)?;
        let encoded = header.encode();
        writer.write_all(&encoded)?;
        let body = std::io::copy(&mut reader, &mut writer)?;
        writer.flush()?;
        Ok(encoded.len() as u64 + body)
    }

    /// A writer that seals everything written to it into `inner` (stream form).
    /// [`EncryptingWriter::finish`] MUST be called: without it the message is truncated.
    pub fn encrypting_writer<W: Write>(
        &self,
        inner: W,
        key_name: &str,
        context: &impl ContextEncoding,
    ) -> Result<EncryptingWriter<W>, EnvelopeError> {
        let sealer = self.sealer(key_name, context, self.stream_form())?;
        EncryptingWriter::new(inner, sealer)
    }

    /// A reader that opens a message from `inner`, one authenticated segment at a time.
    pub fn decrypting_reader<R: Read>(
        &self,
        mut inner: R,
        context: &impl ContextEncoding,
    ) -> Result<DecryptingReader<R>, EnvelopeError> {
        let header = Header::read_from(&mut inner)?;
        let keys = self.open_header(&header, context)?;
        DecryptingReader::new(inner, &header, keys)
    }

    /// A decryptor for a stream-form message whose `header` has been read (see
    /// [`Header::parse`]); push the bytes after the header into it. Unwraps the data key
    /// and checks the key commitment against `context` here, before any body byte.
    pub fn push_decryptor(
        &self,
        header: &Header,
        context: &impl ContextEncoding,
    ) -> Result<PushDecryptor, EnvelopeError> {
        let keys = self.open_header(header, context)?;
        PushDecryptor::new(header, keys)
    }

    /// A random-access reader (`Read + Seek` over the plaintext). Checks the final segment
    /// when created, so a truncated message is rejected up front.
    pub fn seekable_decryptor<R: Read + Seek>(
        &self,
        mut inner: R,
        context: &impl ContextEncoding,
    ) -> Result<SeekableDecryptor<R>, EnvelopeError> {
        inner.rewind()?;
        let header = Header::read_from(&mut inner)?;
        let keys = self.open_header(&header, context)?;
        SeekableDecryptor::new(inner, &header, keys)
    }
}

/// Rewraps a stream from `reader` to `writer` (body copied through unchanged) with
/// `rewrap` computing the new wrapped keys from the old ones, for providers that can
/// re-wrap without releasing the data key (a KMS's ReEncrypt).
pub fn rewrap_stream_with<R: Read, W: Write>(
    mut reader: R,
    mut writer: W,
    rewrap: impl FnOnce(&[crate::provider::WrappedKey]) -> Result<Vec<crate::provider::WrappedKey>, ProviderError>,
) -> Result<u64, EnvelopeError> {
    let mut header = Header::read_from(&mut reader)?;
    let wrapped = rewrap(&header.wrapped)?;
    header::validate_wrapped(&wrapped)?;
    header.wrapped = wrapped;
    let encoded = header.encode();
    writer.write_all(&encoded)?;
    let body = std::io::copy(&mut reader, &mut writer)?;
    writer.flush()?;
    Ok(encoded.len() as u64 + body)
}

/// Derives the message keys of `header` under `data_key` and checks the commitment.
pub(crate) fn message_keys(
    backend: Backend,
    data_key: &DataKey,
    header: &Header,
    context: &impl ContextEncoding,
) -> Result<MessageKeys, EnvelopeError> {
    let ctx = context.canonical()?;
    let keys = MessageKeys::derive(backend, data_key, &header.immutable_prefix(), &header.salt, &ctx);
    keys.verify_commitment(&header.commitment)?;
    Ok(keys)
}

/// Opens a whole body on the calling thread into `out` (resized, allocation reused).
/// All or nothing: on failure `out` is zeroized and left empty.
pub(crate) fn open_body(
    keys: &MessageKeys,
    header: &Header,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EnvelopeError> {
    let geometry = Geometry::for_body(header.segment_size().map(|s| s as usize), body.len())?;
    resize_reusing(out, geometry.plaintext_len(body.len()));
    if let Err(e) = open_body_into(keys, &geometry, body, out) {
        zeroize::Zeroize::zeroize(out);
        out.clear();
        return Err(e);
    }
    Ok(())
}

pub(crate) fn open_body_into(
    keys: &MessageKeys,
    geometry: &Geometry,
    body: &[u8],
    out: &mut [u8],
) -> Result<(), EnvelopeError> {
    let n = geometry.segments;
    for (i, (sealed, pt)) in body
        .chunks(geometry.stride())
        .zip(out.chunks_mut(geometry.segment_size).chain(std::iter::once(&mut [][..])))
        .enumerate()
    {
        keys.open_segment_checked(i as u32, i as u64 + 1 == n, sealed, pt)?;
    }
    Ok(())
}

/// Opens the body that follows the `header_len` header bytes of `buf`, in place (see
/// [`Envelope::open_in_place`]). `buf` is unchanged when the body's geometry is refused,
/// zeroized and emptied when a segment is.
pub(crate) fn open_body_in_place(
    keys: &MessageKeys,
    header: &Header,
    header_len: usize,
    buf: &mut Vec<u8>,
) -> Result<(), EnvelopeError> {
    let body_len = buf.len() - header_len;
    let geometry = Geometry::for_body(header.segment_size().map(|s| s as usize), body_len)?;
    let pt_len = geometry.plaintext_len(body_len);
    let (size, stride) = (geometry.segment_size, geometry.stride());
    let n = geometry.segments as usize;
    let mut scratch = zeroize::Zeroizing::new(vec![0u8; size.min(pt_len)]);
    // Segment i moves back (to i·size from header_len + i·stride): over bytes of segments
    // before it, already opened and moved, never over the ciphertext of a segment after it.
    for i in 0..n {
        let src = header_len + i * stride;
        let end = (src + stride).min(buf.len());
        let len = end - src - TAG_LEN;
        if let Err(e) = keys.open_segment_checked(i as u32, i + 1 == n, &buf[src..end], &mut scratch[..len]) {
            zeroize::Zeroize::zeroize(buf);
            buf.clear();
            return Err(e);
        }
        buf[i * size..i * size + len].copy_from_slice(&scratch[..len]);
    }
    buf.truncate(pt_len);
    Ok(())
}

/// Sets `v.len()` to `n`, initialising only bytes beyond the old length.
pub(crate) fn resize_reusing(v: &mut Vec<u8>, n: usize) {
    if v.capacity() == 0 {
        // A zeroed allocation: fresh pages from the OS come zeroed, so a large output gets
        // no zeroing pass before the cipher writes it (`resize` would write every byte).
        *v = vec![0u8; n];
    } else if v.len() > n {
        v.truncate(n);
    } else {
        v.resize(n, 0);
    }
}

/// Opens a message with an already-unwrapped data key (used by caches and the bulk engine).
pub fn open_with_data_key(
    backend: Backend,
    data_key: &DataKey,
    context: &impl ContextEncoding,
    ciphertext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let (header, header_len) = Header::parse(ciphertext)?;
    let keys = message_keys(backend, data_key, &header, context)?;
    let mut out = Vec::new();
    open_body(&keys, &header, &ciphertext[header_len..], &mut out)?;
    Ok(out)
}
