//! Bulk engines: seal or open all segments of a large message at once.
//!
//! Every engine's output is byte-identical to the sequential path
//! ([`crate::envelope::MessageSealer::seal`]) for the same message (same salt and keys):
//! segments are independent by construction (each has its own nonce), so they can be
//! processed in any order on any number of cores or GPU threads.
//!
//! * [`cpu`]: all CPU cores (rayon).
//! * `gpu` (crate feature `gpu`): a CUDA kernel through `cudarc`, for host buffers and
//!   for buffers already in GPU memory. See `docs/gpu.md`.
//! * [`kernel_ref`]: the GPU kernel's algorithm in safe Rust, the specification the CUDA
//!   source is tested against on machines without a GPU. Not an engine.
//! * [`seal_auto`] / [`open_auto`]: pick the CPU or the GPU by size, segment size and the
//!   throughput each measured at start-up (messages under 1 MiB never start the GPU).

pub mod cpu;
mod dispatch;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod kernel_ref;

pub use dispatch::{
    Calibration, Choice, Dispatcher, GPU_PROBE_MIN_LEN, MIN_GPU_SEGMENT_SIZE, dispatcher, open_auto, seal_auto,
};

use crate::aead::TAG_LEN;
use crate::envelope::{EnvelopeError, Geometry, MessageKeys};

/// The error the CPU path ([`cpu::open`]) reports for segment `index` of `body`, which an
/// engine flagged as failing: the CPU re-checks that one segment to tell truncation and
/// trailing data apart from tampering, so every engine reports the same error for the same
/// input.
pub(crate) fn failure_error(keys: &MessageKeys, geometry: &Geometry, body: &[u8], index: u64) -> EnvelopeError {
    let stride = geometry.stride();
    let start = (index as usize).saturating_mul(stride).min(body.len());
    segment_failure(keys, geometry, index, &body[start..start.saturating_add(stride).min(body.len())])
}

/// [`failure_error`] given the segment's sealed bytes alone. The re-check's output is
/// wiped; if it unexpectedly succeeds, the segment is still refused.
pub(crate) fn segment_failure(keys: &MessageKeys, geometry: &Geometry, index: u64, sealed: &[u8]) -> EnvelopeError {
    let mut scratch = zeroize::Zeroizing::new(vec![0u8; sealed.len().saturating_sub(TAG_LEN)]);
    match keys.open_segment_checked(index as u32, index + 1 == geometry.segments, sealed, &mut scratch) {
        Err(e) => e,
        Ok(()) => EnvelopeError::SegmentAuthentication { index },
    }
}
