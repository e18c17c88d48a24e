//! The GPU kernel's algorithm in safe Rust, step for step: the specification the CUDA
//! source (`bulk/gpu/aes_gcm.cu`) is held to, and an oracle that runs on every machine.
//!
//! It is a **model, not an engine**: slow (table AES on the CPU), and its table lookups are
//! a cache-timing channel on a CPU. Use [`crate::bulk::cpu`] to seal and open; this module
//! exists so that the kernel's exact decomposition — T-table layout, counter layout,
//! GHASH split over lanes and chunks, reductions — is tested byte for byte against
//! aws-lc-rs, RustCrypto, the NIST and Wycheproof vectors and [`crate::bulk::cpu`] on a
//! machine without a GPU. Every function below names the kernel function it models.
//!
//! # What the kernel computes
//!
//! One launch covers a run of consecutive segments of one message (`SegmentBatch`).
//! Segment `s` with `len` bytes has `m = ⌈len/16⌉` blocks; GCM (no AAD) is
//!
//! ```text
//! ctr_p  = nonce_s ‖ u32be(p + 2)          keystream for block p (J0 = nonce_s ‖ 1)
//! C_p    = P_p ⊕ AES(K, ctr_p)             (last block truncated to len mod 16)
//! S      = Σ_{p<m} C_p · H^(m+1-p)  ⊕  L · H       L = u64be(0) ‖ u64be(8·len)
//! tag    = S ⊕ AES(K, J0)
//! ```
//!
//! The kernel splits `S`:
//!
//! 1. **Chunks.** The `m` blocks are cut into chunks of `CHUNK_BLOCKS` = 512 blocks,
//!    aligned to the *end* of the segment (the first chunk may be short). One warp
//!    handles one chunk; a persistent grid walks all `(segment, chunk)` items.
//! 2. **Lanes.** Lane `j` of the warp handles blocks `j, j+32, j+64, …` of the chunk
//!    (each step of the warp reads 512 contiguous bytes: coalesced), `UNROLL` blocks'
//!    AES in flight at once, and folds its ciphertext blocks by Horner's rule with
//!    `H^32`; it then multiplies its sum by `H^(31-j)`. Block `q` of the chunk
//!    (`q = j + 32t`) thereby carries `H^(511-q)`, its distance to the chunk's end.
//! 3. **Warp reduction.** The 32 lane sums are xor-ed by a butterfly (`__shfl_xor_sync`
//!    with offsets 16, 8, 4, 2, 1): the chunk sum `S_c`, stored to a partials buffer.
//! 4. **Finish** (one thread per segment): Horner over the segment's chunks with `H^512`,
//!    `S = (acc·H ⊕ L)·H`, `tag = S ⊕ AES(K, J0)`; sealing writes the tag, opening
//!    compares it with the stored tag in constant time and writes a per-segment flag.
//!
//! `H^0..H^32` and `H^512` come from the host (`KernelParams`); `H = AES(K, 0^128)` is
//! computed on the host with the constant-time `aes` crate, never with the tables.

mod aes;
mod ghash;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::aead::{AeadError, NONCE_LEN, TAG_LEN};
use crate::envelope::{EncryptionContext, Envelope, EnvelopeError, Geometry, MessageSealer};
use crate::provider::KeyProvider;
use crate::secret::KEY_LEN;
use ghash::Fe;

pub(crate) use aes::LANES;

/// Blocks each lane handles per chunk.
pub(crate) const BLOCKS_PER_LANE: usize = 16;
/// Counter blocks each lane encrypts at once (independent work in flight).
pub(crate) const UNROLL: usize = 4;
/// Blocks per chunk: one warp's work item.
pub(crate) const CHUNK_BLOCKS: usize = LANES * BLOCKS_PER_LANE;
/// Powers `H^0 ..= H^32` passed to the kernel.
pub(crate) const H_POWERS: usize = LANES + 1;
/// Nonce prefix bytes (the rest is the segment index and the last-segment flag).
pub(crate) const NONCE_PREFIX_LEN: usize = 7;
/// Bytes of [`KernelParams`]; the CUDA source asserts the same size and offsets.
pub(crate) const KERNEL_PARAMS_SIZE: usize = 824;

const _: () = assert!(CHUNK_BLOCKS == 512 && BLOCKS_PER_LANE.is_multiple_of(UNROLL));
const _: () = assert!(size_of::<KernelParams>() == KERNEL_PARAMS_SIZE);
const _: () = assert!(NONCE_PREFIX_LEN == crate::envelope::NONCE_PREFIX_LEN);

/// Which way a launch goes. Sealing hashes the output, opening the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Plaintext in, `ct ‖ tag` segments out.
    Seal,
    /// `ct ‖ tag` segments in, plaintext and per-segment flags out.
    Open,
}

/// A run of consecutive segments of one message: one kernel launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentBatch {
    /// Index of the batch's first segment in the message.
    pub(crate) first_index: u32,
    /// Segments in the batch (at least 1).
    pub(crate) segments: u32,
    /// Plaintext bytes of every segment but the batch's last.
    pub(crate) segment_size: u64,
    /// Plaintext bytes of the batch's last segment (`0..=segment_size`).
    pub(crate) last_len: u64,
    /// Nonce byte 11 of the batch's last segment (1 when it is the message's final one).
    pub(crate) flag_last: u8,
    /// Nonce byte 11 of the other segments.
    pub(crate) flag_other: u8,
}

impl SegmentBatch {
    /// Plaintext bytes in the batch.
    pub(crate) fn plaintext_len(&self) -> u64 {
        u64::from(self.segments - 1) * self.segment_size + self.last_len
    }

    /// Body bytes (`ct ‖ tag` per segment) of the batch.
    pub(crate) fn body_len(&self) -> u64 {
        self.plaintext_len() + u64::from(self.segments) * TAG_LEN as u64
    }

    /// Plaintext bytes of segment `s` of the batch.
    pub(crate) fn segment_len(&self, s: u32) -> u64 {
        if s + 1 == self.segments { self.last_len } else { self.segment_size }
    }

    /// Chunks of a full segment: the stride of the partials buffer.
    pub(crate) fn chunks_per_segment(&self) -> u32 {
        // Segment sizes are at most 16 MiB (format) or 2^36 bytes (single AEAD calls):
        // at most 2^23 chunks, which fits.
        self.segment_size.div_ceil(16).div_ceil(CHUNK_BLOCKS as u64).max(1) as u32
    }

    /// Work items (`(segment, chunk)` pairs) of the chunk kernel.
    pub(crate) fn items(&self) -> u64 {
        u64::from(self.segments) * u64::from(self.chunks_per_segment())
    }
}

/// The batches of a whole message of `geometry` and `plaintext_len` bytes, each of at most
/// `max_segments` segments, in order.
pub(crate) fn batches(geometry: &Geometry, plaintext_len: usize, max_segments: u32) -> Vec<SegmentBatch> {
    let max_segments = u64::from(max_segments.max(1));
    let total = geometry.segments;
    let size = geometry.segment_size as u64;
    let mut out = Vec::with_capacity(total.div_ceil(max_segments) as usize);
    let mut first = 0u64;
    while first < total {
        let n = (total - first).min(max_segments);
        let end = first + n;
        let is_final = end == total;
        let last_len = if is_final { plaintext_len as u64 - (total - 1) * size } else { size };
        out.push(SegmentBatch {
            // Geometry bounds segments by 2^32, so indices below `total` fit.
            first_index: first as u32,
            segments: n as u32,
            segment_size: size,
            last_len,
            flag_last: u8::from(is_final),
            flag_other: 0,
        });
        first = end;
    }
    out
}

/// Everything a launch reads besides the data: `struct KernelParams` in the CUDA source,
/// passed by value (it lands in the constant bank, where uniform reads broadcast).
///
/// Holds the expanded key and powers of `H`: zeroized on drop, no `Debug` of contents.
#[repr(C)]
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct KernelParams {
    /// AES-256 round keys, little-endian column words.
    pub(crate) round_keys: [u32; aes::ROUND_KEY_WORDS],
    /// `H^0 ..= H^32`, bit-reflected `[lo, hi]` (see [`ghash`]).
    pub(crate) h_pow: [[u64; 2]; H_POWERS],
    /// `H^512` (`H^CHUNK_BLOCKS`), for the finish step's Horner over chunks.
    pub(crate) h_chunk: [u64; 2],
    /// See [`SegmentBatch`].
    pub(crate) segment_size: u64,
    /// See [`SegmentBatch`].
    pub(crate) last_len: u64,
    /// See [`SegmentBatch`].
    pub(crate) first_index: u32,
    /// See [`SegmentBatch`].
    pub(crate) segments: u32,
    /// See [`SegmentBatch::chunks_per_segment`].
    pub(crate) chunks_per_segment: u32,
    /// Nonce bytes 0..7.
    pub(crate) nonce_prefix: [u8; NONCE_PREFIX_LEN],
    /// See [`SegmentBatch`].
    pub(crate) flag_last: u8,
    /// See [`SegmentBatch`].
    pub(crate) flag_other: u8,
    pub(crate) _pad: [u8; 3],
}

impl core::fmt::Debug for KernelParams {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KernelParams")
            .field("first_index", &self.first_index)
            .field("segments", &self.segments)
            .field("segment_size", &self.segment_size)
            .finish_non_exhaustive()
    }
}

impl KernelParams {
    /// Key material for `key` and `nonce_prefix` with `batch`'s geometry.
    pub(crate) fn new(key: &[u8; KEY_LEN], nonce_prefix: &[u8; NONCE_PREFIX_LEN], batch: &SegmentBatch) -> Self {
        use ::aes::cipher::{BlockEncrypt, KeyInit};

        // H = AES(K, 0^128) with the constant-time `aes` crate (AES-NI or fixsliced). Every
        // local that holds H or a power of it is zeroized before returning (the cipher
        // zeroizes its round keys on drop: the `aes` crate's `zeroize` feature).
        let mut h_block = ::aes::Block::default();
        ::aes::Aes256::new(key.into()).encrypt_block(&mut h_block);
        let mut h_bytes: [u8; 16] = h_block.into();
        h_block.as_mut_slice().zeroize();
        let mut h_words = aes::words_of(&h_bytes);
        h_bytes.zeroize();
        let mut h = Fe::from_words(h_words);
        h_words.zeroize();
        let mut pow = [Fe::ZERO; H_POWERS];
        pow[0] = Fe::ONE;
        for k in 1..H_POWERS {
            pow[k] = ghash::mul(pow[k - 1], h);
        }
        h.zeroize();
        // H^512 = (H^32)^16: four squarings.
        let mut h_chunk = pow[LANES];
        for _ in 0..4 {
            h_chunk = ghash::mul(h_chunk, h_chunk);
        }
        let mut params = Self {
            round_keys: aes::expand_key(key),
            h_pow: [[0; 2]; H_POWERS],
            h_chunk: h_chunk.to_pair(),
            segment_size: 0,
            last_len: 0,
            first_index: 0,
            segments: 0,
            chunks_per_segment: 0,
            nonce_prefix: *nonce_prefix,
            flag_last: 0,
            flag_other: 0,
            _pad: [0; 3],
        };
        // In place rather than `pow.map(..)`, which would leave a second copy on the stack.
        for (dst, p) in params.h_pow.iter_mut().zip(&pow) {
            *dst = p.to_pair();
        }
        h_chunk.zeroize();
        pow.zeroize();
        params.set_batch(batch);
        params
    }

    /// Points the parameters at another batch of the same message.
    pub(crate) fn set_batch(&mut self, batch: &SegmentBatch) {
        self.segment_size = batch.segment_size;
        self.last_len = batch.last_len;
        self.first_index = batch.first_index;
        self.segments = batch.segments;
        self.chunks_per_segment = batch.chunks_per_segment();
        self.flag_last = batch.flag_last;
        self.flag_other = batch.flag_other;
    }

    /// The batch these parameters describe.
    pub(crate) fn batch(&self) -> SegmentBatch {
        SegmentBatch {
            first_index: self.first_index,
            segments: self.segments,
            segment_size: self.segment_size,
            last_len: self.last_len,
            flag_last: self.flag_last,
            flag_other: self.flag_other,
        }
    }

    fn pow(&self, k: usize) -> Fe {
        Fe::from_pair(self.h_pow[k])
    }

    /// The nonce of segment `s` as three little-endian words (kernel: `nonce_words`).
    fn nonce_words(&self, s: u32) -> [u32; 3] {
        let index = self.first_index.wrapping_add(s);
        let flag = if s + 1 == self.segments { self.flag_last } else { self.flag_other };
        let p = &self.nonce_prefix;
        let i = index.to_be_bytes();
        [
            u32::from_le_bytes([p[0], p[1], p[2], p[3]]),
            u32::from_le_bytes([p[4], p[5], p[6], i[0]]),
            u32::from_le_bytes([i[1], i[2], i[3], flag]),
        ]
    }
}

/// Counter block `nonce ‖ u32be(counter)` as little-endian words (kernel: `counter_block`).
fn counter_block(nonce: [u32; 3], counter: u32) -> [u32; 4] {
    [nonce[0], nonce[1], nonce[2], counter.swap_bytes()]
}

/// Input and output strides of a segment.
fn strides(p: &KernelParams, dir: Direction) -> (usize, usize) {
    let size = p.segment_size as usize;
    match dir {
        Direction::Seal => (size, size + TAG_LEN),
        Direction::Open => (size + TAG_LEN, size),
    }
}

/// One warp's work item (kernel: `gcm_chunks`): AES-CTR over chunk `c` of segment `s`,
/// and its GHASH partial sum into `partials[item]`.
fn chunk_item(p: &KernelParams, dir: Direction, item: u64, input: &[u8], output: &mut [u8], partials: &mut [[u64; 2]]) {
    let cps = u64::from(p.chunks_per_segment);
    let (s, c) = ((item / cps) as u32, item % cps);
    let len = p.batch().segment_len(s) as usize;
    let m = len.div_ceil(16) as i64;
    let n_chunks = (m as u64).div_ceil(CHUNK_BLOCKS as u64);
    if c >= n_chunks {
        return; // a short last segment has fewer chunks
    }
    // End-aligned chunks: chunk c ends (n_chunks - 1 - c) chunks before the segment's end.
    let start = m - ((n_chunks - c) * CHUNK_BLOCKS as u64) as i64;
    let (in_stride, out_stride) = strides(p, dir);
    let (in_base, out_base) = (s as usize * in_stride, s as usize * out_stride);
    let nonce = p.nonce_words(s);
    let h32 = p.pow(LANES);

    let mut lane_sums = [Fe::ZERO; LANES];
    for (lane, lane_sum) in lane_sums.iter_mut().enumerate() {
        let mut acc = Fe::ZERO;
        for t0 in (0..BLOCKS_PER_LANE).step_by(UNROLL) {
            let block_of = |u: usize| start + (lane + LANES * (t0 + u)) as i64;
            // UNROLL independent counter blocks first (the kernel keeps them in flight)…
            let mut keystream = [[0u32; 4]; UNROLL];
            for (u, ks) in keystream.iter_mut().enumerate() {
                let b = block_of(u);
                if b >= 0 {
                    *ks = aes::encrypt_block(&p.round_keys, lane, counter_block(nonce, b as u32 + 2));
                }
            }
            // …then xor, store and hash them in block order.
            for (u, ks) in keystream.iter().enumerate() {
                let b = block_of(u);
                let mut hashed = [0u8; 16];
                if b >= 0 {
                    let off = b as usize * 16;
                    let n = (len - off).min(16);
                    let src = &input[in_base + off..in_base + off + n];
                    let ks = aes::bytes_of(*ks);
                    let dst = &mut output[out_base + off..out_base + off + n];
                    for i in 0..n {
                        dst[i] = src[i] ^ ks[i];
                    }
                    hashed[..n].copy_from_slice(if dir == Direction::Seal { dst } else { src });
                }
                acc = ghash::mul(acc, h32) ^ Fe::from_words(aes::words_of(&hashed));
            }
        }
        *lane_sum = ghash::mul(acc, p.pow(LANES - 1 - lane));
    }
    // Butterfly reduction, as __shfl_xor_sync(…, offset) does it: every lane ends with the sum.
    let mut offset = LANES / 2;
    while offset > 0 {
        let prev = lane_sums;
        for (lane, sum) in lane_sums.iter_mut().enumerate() {
            *sum = prev[lane] ^ prev[lane ^ offset];
        }
        offset /= 2;
    }
    partials[item as usize] = lane_sums[0].to_pair();
}

/// One thread's work (kernel: `gcm_finish`): segment `s`'s tag from its chunk partials;
/// sealing writes it, opening compares it with the stored tag in constant time.
fn finish_segment(
    p: &KernelParams,
    dir: Direction,
    s: u32,
    input: &[u8],
    output: &mut [u8],
    partials: &[[u64; 2]],
) -> bool {
    let len = p.batch().segment_len(s);
    let n_chunks = len.div_ceil(16).div_ceil(CHUNK_BLOCKS as u64);
    let base = u64::from(s) * u64::from(p.chunks_per_segment);
    let mut acc = Fe::ZERO;
    for c in 0..n_chunks {
        acc = ghash::mul(acc, Fe::from_pair(p.h_chunk)) ^ Fe::from_pair(partials[(base + c) as usize]);
    }
    let bits = len * 8;
    let length_block = [0, 0, ((bits >> 32) as u32).swap_bytes(), (bits as u32).swap_bytes()];
    let h = p.pow(1);
    let s_hash = ghash::mul(ghash::mul(acc, h) ^ Fe::from_words(length_block), h);
    // The thread's lane picks the table replica, as in the kernel (thread s of the grid).
    let ej0 = aes::encrypt_block(&p.round_keys, s as usize % LANES, counter_block(p.nonce_words(s), 1));
    let hw = s_hash.to_words();
    let tag = aes::bytes_of([hw[0] ^ ej0[0], hw[1] ^ ej0[1], hw[2] ^ ej0[2], hw[3] ^ ej0[3]]);
    let (in_stride, out_stride) = strides(p, dir);
    match dir {
        Direction::Seal => {
            let at = s as usize * out_stride + len as usize;
            output[at..at + TAG_LEN].copy_from_slice(&tag);
            true
        }
        Direction::Open => {
            let at = s as usize * in_stride + len as usize;
            let diff = tag.iter().zip(&input[at..at + TAG_LEN]).fold(0u8, |d, (a, b)| d | (a ^ b));
            diff == 0
        }
    }
}

/// Runs one launch of the model: the chunk kernel over every item, then the finish kernel
/// over every segment. Returns the per-segment flags (all `true` when sealing). Like the
/// kernel, opening writes plaintext before the flags are known: callers must zeroize on
/// any `false`.
pub(crate) fn run(p: &KernelParams, dir: Direction, input: &[u8], output: &mut [u8]) -> Vec<bool> {
    let batch = p.batch();
    let (pt_len, body_len) = (batch.plaintext_len() as usize, batch.body_len() as usize);
    let (in_len, out_len) = match dir {
        Direction::Seal => (pt_len, body_len),
        Direction::Open => (body_len, pt_len),
    };
    assert_eq!((input.len(), output.len()), (in_len, out_len), "kernel_ref::run: buffer lengths");
    let mut partials = vec![[0u64; 2]; batch.items() as usize];
    for item in 0..batch.items() {
        chunk_item(p, dir, item, input, output, &mut partials);
    }
    let flags = (0..batch.segments).map(|s| finish_segment(p, dir, s, input, output, &partials)).collect();
    partials.zeroize();
    flags
}

/// The single-segment launch of one AEAD call with a caller-chosen nonce.
pub(crate) fn single_segment(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    len: usize,
) -> Result<KernelParams, AeadError> {
    // GCM's limit: 2^32 - 2 blocks of keystream.
    if len as u64 > (1u64 << 36) - 32 {
        return Err(AeadError);
    }
    let mut prefix = [0u8; NONCE_PREFIX_LEN];
    prefix.copy_from_slice(&nonce[..NONCE_PREFIX_LEN]);
    let index = u32::from_be_bytes([nonce[7], nonce[8], nonce[9], nonce[10]]);
    let batch = SegmentBatch {
        first_index: index,
        segments: 1,
        segment_size: len.max(1) as u64,
        last_len: len as u64,
        flag_last: nonce[11],
        flag_other: 0,
    };
    Ok(KernelParams::new(key, &prefix, &batch))
}

/// AES-256-GCM with no AAD, computed by the kernel model: `ct ‖ tag`.
///
/// A reference for tests, slow and **not constant time** on a CPU; never reuse a
/// `(key, nonce)` pair. Agrees with [`crate::hazmat::Aes256Gcm::seal`] with empty AAD.
pub fn seal(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], plaintext: &[u8]) -> Result<Vec<u8>, AeadError> {
    let params = single_segment(key, nonce, plaintext.len())?;
    let mut out = vec![0u8; plaintext.len() + TAG_LEN];
    run(&params, Direction::Seal, plaintext, &mut out);
    Ok(out)
}

/// Opens `ct ‖ tag` (no AAD) with the kernel model; no plaintext on failure.
pub fn open(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], ciphertext_and_tag: &[u8]) -> Result<Vec<u8>, AeadError> {
    let pt_len = ciphertext_and_tag.len().checked_sub(TAG_LEN).ok_or(AeadError)?;
    let params = single_segment(key, nonce, pt_len)?;
    let mut out = vec![0u8; pt_len];
    let ok = run(&params, Direction::Open, ciphertext_and_tag, &mut out);
    if ok.iter().all(|&f| f) {
        Ok(out)
    } else {
        out.zeroize();
        Err(AeadError)
    }
}

/// Launches of at most this many segments in the model (the GPU engine sizes its own).
const MODEL_MAX_SEGMENTS: u32 = 1 << 16;

/// Seals `plaintext` as one message with the kernel model: `header ‖ body`, identical to
/// [`crate::bulk::cpu::seal`] and [`MessageSealer::seal`].
pub fn seal_message(sealer: &MessageSealer, plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let geometry = Geometry::for_plaintext(sealer.segment_size(), plaintext.len())?;
    let header = sealer.header_bytes();
    let mut out = vec![0u8; header.len() + geometry.body_len(plaintext.len())];
    out[..header.len()].copy_from_slice(header);
    let keys = sealer.keys();
    let (mut pt_off, mut body_off) = (0usize, header.len());
    for batch in batches(&geometry, plaintext.len(), MODEL_MAX_SEGMENTS) {
        let params = KernelParams::new(keys.raw_key(), keys.nonce_prefix(), &batch);
        let (pt_len, body_len) = (batch.plaintext_len() as usize, batch.body_len() as usize);
        run(&params, Direction::Seal, &plaintext[pt_off..pt_off + pt_len], &mut out[body_off..body_off + body_len]);
        pt_off += pt_len;
        body_off += body_len;
    }
    Ok(out)
}

/// Opens a whole message with the kernel model; same results and errors as
/// [`crate::bulk::cpu::open`] (all or nothing, first failing segment's error).
pub fn open_message<P: KeyProvider>(
    envelope: &Envelope<P>,
    context: &EncryptionContext,
    ciphertext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let (keys, body, geometry) = envelope.open_parts(context, ciphertext)?;
    let pt_len = geometry.plaintext_len(body.len());
    let mut out = vec![0u8; pt_len];
    let (mut pt_off, mut body_off) = (0usize, 0usize);
    let mut first_failure = None;
    for batch in batches(&geometry, pt_len, MODEL_MAX_SEGMENTS) {
        let params = KernelParams::new(keys.raw_key(), keys.nonce_prefix(), &batch);
        let (b_pt, b_body) = (batch.plaintext_len() as usize, batch.body_len() as usize);
        let flags = run(&params, Direction::Open, &body[body_off..body_off + b_body], &mut out[pt_off..pt_off + b_pt]);
        if let Some(s) = flags.iter().position(|&ok| !ok) {
            first_failure = Some(u64::from(batch.first_index) + s as u64);
            break;
        }
        pt_off += b_pt;
        body_off += b_body;
    }
    if let Some(index) = first_failure {
        out.zeroize();
        return Err(super::failure_error(&keys, &geometry, body, index));
    }
    Ok(out)
}

/// The key and nonce prefix a launch needs, for the GPU engine.
#[cfg(any(test, feature = "gpu"))]
pub(crate) fn launch_params(keys: &crate::envelope::MessageKeys, batch: &SegmentBatch) -> KernelParams {
    KernelParams::new(keys.raw_key(), keys.nonce_prefix(), batch)
}

#[cfg(test)]
mod tests;
