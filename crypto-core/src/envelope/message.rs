//! Per-message keys and the segment construction (STREAM).
//!
//! ```text
//! digest       = SHA-256(immutable_prefix ‖ canonical_context)
//! prk          = HKDF-Extract(salt, data_key)
//! key          = HKDF-Expand(prk, "cryptocore/v1/key"    ‖ digest, 32)
//! commitment   = HKDF-Expand(prk, "cryptocore/v1/commit" ‖ digest, 32)
//! nonce_i      = salt[0..7] ‖ u32be(i) ‖ (0x01 if last else 0x00)
//! segment_i    = AES-256-GCM(key, nonce_i, aad = "", plaintext_i) = ct_i ‖ tag_i
//! ```
//!
//! The labels are short enough (≤ 22 bytes) that each Expand is one SHA-256 block. The
//! nonce prefix is public and random (the first salt bytes); uniqueness of nonces comes
//! from the per-message key, the prefix only adds multi-target margin at no cost.

use zeroize::Zeroizing;

use super::EnvelopeError;
use super::header::{Form, Header, SALT_LEN};
use crate::aead::{Aes256Gcm, Backend, NONCE_LEN, TAG_LEN};
use crate::kdf::{Prk, sha256};
use crate::provider::WrappedKey;
use crate::secret::{DataKey, KEY_LEN, ct_eq};

/// HKDF info label of the message key.
pub(crate) const LABEL_MESSAGE_KEY: &[u8] = b"cryptocore/v1/key";
/// HKDF info label of the key commitment.
pub(crate) const LABEL_COMMITMENT: &[u8] = b"cryptocore/v1/commit";
/// Nonce prefix length.
pub(crate) const NONCE_PREFIX_LEN: usize = 7;

/// The keys of one message: AES key, nonce prefix and commitment.
pub(crate) struct MessageKeys {
    aead: Aes256Gcm,
    /// The raw message key, for engines that expand it themselves (the GPU kernel and its
    /// reference model in [`crate::bulk`]); zeroized on drop.
    key: Zeroizing<[u8; KEY_LEN]>,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    commitment: [u8; 32],
}

impl MessageKeys {
    pub(crate) fn derive(
        backend: Backend,
        data_key: &DataKey,
        immutable_prefix: &[u8],
        salt: &[u8; SALT_LEN],
        context: &[u8],
    ) -> Self {
        let digest = sha256(&[immutable_prefix, context]);
        let prk = Prk::extract(salt, data_key.expose_secret());
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        prk.expand(&[LABEL_MESSAGE_KEY, &digest], &mut key[..]);
        let mut commitment = [0u8; 32];
        prk.expand(&[LABEL_COMMITMENT, &digest], &mut commitment);
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&salt[..NONCE_PREFIX_LEN]);
        Self { aead: Aes256Gcm::new(backend, &key), key, nonce_prefix, commitment }
    }

    /// The message key (AES-256), for the bulk engines that run their own AES.
    pub(crate) fn raw_key(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// The nonce prefix (nonce bytes 0..7 of every segment).
    pub(crate) fn nonce_prefix(&self) -> &[u8; NONCE_PREFIX_LEN] {
        &self.nonce_prefix
    }

    fn nonce(&self, index: u32, last: bool) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        n[NONCE_PREFIX_LEN..NONCE_PREFIX_LEN + 4].copy_from_slice(&index.to_be_bytes());
        n[NONCE_LEN - 1] = u8::from(last);
        n
    }

    /// Seals one segment's plaintext into `out` (`plaintext.len() + 16` bytes).
    pub(crate) fn seal_segment(&self, index: u32, last: bool, plaintext: &[u8], out: &mut [u8]) {
        // Segment sizes are bounded far below GCM's limit and `out` is sized by the caller,
        // so the backend cannot refuse; a refusal would leave `out` zeroed, never plaintext.
        let ok = self.aead.seal_to(&self.nonce(index, last), &[], plaintext, out);
        debug_assert!(ok.is_ok());
        if ok.is_err() {
            out.fill(0);
        }
    }

    /// Seals one segment in place (`in_out` holds its plaintext) and returns the tag.
    pub(crate) fn seal_segment_in_place(&self, index: u32, last: bool, in_out: &mut [u8]) -> [u8; TAG_LEN] {
        // As in `seal_segment`: the backend cannot refuse a segment of a bounded size; a
        // refusal would leave zeros, never plaintext, behind a zero tag that never opens.
        match self.aead.seal_in_place(&self.nonce(index, last), &[], in_out) {
            Ok(tag) => tag,
            Err(_) => {
                debug_assert!(false, "AES-GCM refused a bounded segment");
                in_out.fill(0);
                [0; TAG_LEN]
            }
        }
    }

    /// Opens one segment (`ct ‖ tag`) into `out`; `out` is zeroized on failure.
    pub(crate) fn open_segment(&self, index: u32, last: bool, sealed: &[u8], out: &mut [u8]) -> bool {
        self.aead.open_to(&self.nonce(index, last), &[], sealed, out).is_ok()
    }

    /// Opens the segment, telling apart "authentic but final where not expected" and
    /// "authentic but not final where final expected", which are truncation and trailing
    /// data rather than tampering.
    pub(crate) fn open_segment_checked(
        &self,
        index: u32,
        expect_last: bool,
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<(), EnvelopeError> {
        if self.open_segment(index, expect_last, sealed, out) {
            return Ok(());
        }
        if self.open_segment(index, !expect_last, sealed, out) {
            out.fill(0);
            return Err(if expect_last { EnvelopeError::Truncated } else { EnvelopeError::TrailingData });
        }
        Err(EnvelopeError::SegmentAuthentication { index: u64::from(index) })
    }

    pub(crate) fn verify_commitment(&self, stored: &[u8; 32]) -> Result<(), EnvelopeError> {
        if ct_eq(&self.commitment, stored) { Ok(()) } else { Err(EnvelopeError::HeaderAuthentication) }
    }
}

/// A message being sealed: its header bytes and keys. One `MessageSealer` is one message
/// (one salt); build a new one per message.
pub struct MessageSealer {
    header: Header,
    header_bytes: Vec<u8>,
    keys: MessageKeys,
}

impl std::fmt::Debug for MessageSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageSealer").field("header", &self.header).finish_non_exhaustive()
    }
}

impl MessageSealer {
    /// Prepares a message under `data_key` (already wrapped as `wrapped`) with a fresh
    /// random salt.
    pub fn new(
        backend: Backend,
        data_key: &DataKey,
        wrapped: Vec<WrappedKey>,
        context: &impl super::ContextEncoding,
        form: Form,
    ) -> Result<Self, EnvelopeError> {
        Self::with_salt(backend, data_key, wrapped, context, form, crate::rand::salt())
    }

    pub(crate) fn with_salt(
        backend: Backend,
        data_key: &DataKey,
        wrapped: Vec<WrappedKey>,
        context: &impl super::ContextEncoding,
        form: Form,
        salt: [u8; SALT_LEN],
    ) -> Result<Self, EnvelopeError> {
        if let Form::Stream { segment_size } = form {
            super::header::validate_segment_size(segment_size)?;
        }
        super::header::validate_wrapped(&wrapped)?;
        let ctx = context.canonical()?;
        let mut header = Header { form, salt, wrapped, commitment: [0; 32] };
        // One buffer: the immutable prefix feeds the derivation, then the wrapped keys and
        // the commitment are appended to it to form the encoded header.
        let mut header_bytes = Vec::with_capacity(header.encoded_len());
        header.write_immutable_prefix(&mut header_bytes);
        let keys = MessageKeys::derive(backend, data_key, &header_bytes, &salt, &ctx);
        header.commitment = keys.commitment;
        header.write_rest(&mut header_bytes);
        Ok(Self { header, header_bytes, keys })
    }

    /// The encoded header.
    pub fn header_bytes(&self) -> &[u8] {
        &self.header_bytes
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Plaintext bytes per segment (the whole plaintext for the compact form).
    pub(crate) fn segment_size(&self) -> Option<usize> {
        self.header.segment_size().map(|s| s as usize)
    }

    pub(crate) fn keys(&self) -> &MessageKeys {
        &self.keys
    }

    /// Seals `plaintext` as a whole message (header ‖ body), on the calling thread.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = Vec::new();
        self.seal_into(plaintext, &mut out)?;
        Ok(out)
    }

    /// [`MessageSealer::seal`] into `out`, reusing its allocation.
    pub fn seal_into(&self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        let geometry = Geometry::for_plaintext(self.segment_size(), plaintext.len())?;
        let h = self.header_bytes.len();
        super::resize_reusing(out, h + geometry.body_len(plaintext.len()));
        out[..h].copy_from_slice(&self.header_bytes);
        self.seal_body_into(plaintext, &mut out[h..], &geometry);
        Ok(())
    }

    /// Seals the plaintext held in `buf` in place: on return `buf` holds the whole message
    /// (header ‖ body) and nothing of the plaintext.
    ///
    /// `buf` grows by the header and one 16-byte tag per segment
    /// ([`MessageSealer::sealed_len`] tells the final length, so a caller can reserve it
    /// and never reallocate). Each segment is encrypted where it lies, then moved to its
    /// place while it is in cache: no second buffer, and the memory traffic of raw AES-GCM
    /// in place, plus a cached copy per segment. On `Err` (a plaintext too large for the
    /// form) `buf` is unchanged. Reserve first when the plaintext is secret: if `buf` has to
    /// grow, the allocator moves it and frees the old copy of the plaintext unzeroized.
    pub fn seal_in_place(&self, buf: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        let pt_len = buf.len();
        let geometry = Geometry::for_plaintext(self.segment_size(), pt_len)?;
        let h = self.header_bytes.len();
        buf.resize(h + geometry.body_len(pt_len), 0);
        let (size, stride) = (geometry.segment_size, geometry.stride());
        let n = geometry.segments as usize;
        // Last segment first: segment i is sealed where it lies, then moves forward (to
        // h + i·stride from i·size) over bytes of segments after it that were already
        // placed, never over the plaintext of a segment before it (which ends at
        // i·size ≤ h + i·stride). Going backwards costs the hardware prefetcher something
        // on buffers larger than the cache (see benches/RESULTS.md), but a forward shift
        // cannot be done front to back in place.
        for i in (0..n).rev() {
            let src = i * size;
            let len = pt_len.saturating_sub(src).min(size);
            let dst = h + i * stride;
            let tag = self.keys.seal_segment_in_place(i as u32, i + 1 == n, &mut buf[src..src + len]);
            buf.copy_within(src..src + len, dst);
            buf[dst + len..dst + len + TAG_LEN].copy_from_slice(&tag);
        }
        buf[..h].copy_from_slice(&self.header_bytes);
        Ok(())
    }

    /// Length of the message that sealing `plaintext_len` bytes makes (header ‖ body).
    pub fn sealed_len(&self, plaintext_len: usize) -> Result<usize, EnvelopeError> {
        let geometry = Geometry::for_plaintext(self.segment_size(), plaintext_len)?;
        Ok(self.header_bytes.len() + geometry.body_len(plaintext_len))
    }

    /// Seals the body into `body` (exactly `geometry.body_len` bytes).
    pub(crate) fn seal_body_into(&self, plaintext: &[u8], body: &mut [u8], geometry: &Geometry) {
        let n = geometry.segments;
        let mut pt_chunks = geometry.plaintext_chunks(plaintext);
        for (i, out) in body.chunks_mut(geometry.stride()).enumerate() {
            let pt = pt_chunks.next().unwrap_or_default();
            self.keys.seal_segment(i as u32, i as u64 + 1 == n, pt, out);
        }
    }
}

/// Segment geometry of a body.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    /// Plaintext bytes per full segment.
    pub(crate) segment_size: usize,
    /// Number of segments (at least 1).
    pub(crate) segments: u64,
}

/// Most segments a message may have: the index is 32 bits.
pub(crate) const MAX_SEGMENTS: u64 = 1 << 32;

impl Geometry {
    /// Geometry for sealing `len` plaintext bytes. `segment_size` None = compact.
    pub(crate) fn for_plaintext(segment_size: Option<usize>, len: usize) -> Result<Self, EnvelopeError> {
        let segment_size = match segment_size {
            Some(s) => s,
            None => {
                if len > super::header::MAX_COMPACT_PLAINTEXT {
                    return Err(EnvelopeError::TooLarge("compact form holds at most 16 MiB; use the stream form"));
                }
                len.max(1)
            }
        };
        let segments = (len as u64).div_ceil(segment_size as u64).max(1);
        if segments > MAX_SEGMENTS {
            return Err(EnvelopeError::TooLarge("more than 2^32 segments; use a larger segment size"));
        }
        Ok(Self { segment_size, segments })
    }

    /// Geometry of an existing body of `body_len` bytes.
    pub(crate) fn for_body(segment_size: Option<usize>, body_len: usize) -> Result<Self, EnvelopeError> {
        let Some(segment_size) = segment_size else {
            if body_len < TAG_LEN {
                return Err(EnvelopeError::Truncated);
            }
            if body_len - TAG_LEN > super::header::MAX_COMPACT_PLAINTEXT {
                return Err(EnvelopeError::Malformed("compact body longer than 16 MiB"));
            }
            return Ok(Self { segment_size: (body_len - TAG_LEN).max(1), segments: 1 });
        };
        let stride = (segment_size + TAG_LEN) as u64;
        let body = body_len as u64;
        let (full, rem) = (body / stride, body % stride);
        let segments = match rem {
            0 if full == 0 => return Err(EnvelopeError::Truncated),
            0 => full,
            r if r < TAG_LEN as u64 => return Err(EnvelopeError::Truncated),
            _ => full + 1,
        };
        if segments > MAX_SEGMENTS {
            return Err(EnvelopeError::Malformed("more than 2^32 segments"));
        }
        Ok(Self { segment_size, segments })
    }

    pub(crate) fn stride(&self) -> usize {
        self.segment_size + TAG_LEN
    }

    pub(crate) fn body_len(&self, plaintext_len: usize) -> usize {
        plaintext_len + self.segments as usize * TAG_LEN
    }

    pub(crate) fn plaintext_len(&self, body_len: usize) -> usize {
        body_len - self.segments as usize * TAG_LEN
    }

    /// Plaintext chunks, one per segment; the single chunk of an empty plaintext is empty.
    pub(crate) fn plaintext_chunks<'a>(&self, plaintext: &'a [u8]) -> std::slice::Chunks<'a, u8> {
        plaintext.chunks(self.segment_size)
    }
}
