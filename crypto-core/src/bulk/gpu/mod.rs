//! The GPU engine: AES-256-GCM over all segments of a message in a CUDA kernel (crate
//! feature `gpu`), byte-identical to [`crate::bulk::cpu`].
//!
//! * The kernel is `aes_gcm.cu` beside this file, compiled ahead of time by
//!   `scripts/build-gpu-kernels.sh` (nvcc 13.0) into `kernels/`: cubins for sm_80 (Ampere,
//!   any 8.x) and sm_90 (Hopper, 9.x), and compute_80 PTX that the driver compiles for
//!   anything else from 8.0 up. Building this crate needs no CUDA toolkit.
//! * The algorithm is specified by [`crate::bulk::kernel_ref`], which runs in every test
//!   run; this module only moves bytes and launches.
//! * `libcuda` is loaded at run time (`cudarc`'s dynamic loading): binaries built with the
//!   feature run on machines without a GPU, where [`GpuEngine::new`] returns
//!   [`GpuError::NoDevice`].
//!
//! Two kinds of calls:
//!
//! * **Host buffers** ([`GpuEngine::seal`], [`GpuEngine::open`]): the message is cut into
//!   pieces of whole segments (32 MiB); three streams with pinned staging buffers overlap
//!   the copy to the GPU, the kernel and the copy back, so messages larger than GPU memory
//!   work and PCIe stays busy. After every call, what it put into the staging buffers
//!   (plaintext, GHASH partial sums) is zeroized, as far as it reached in each buffer.
//! * **Device buffers** ([`GpuEngine::seal_device`], [`GpuEngine::open_device`], and
//!   [`GpuEngine::seal_device_view`], [`GpuEngine::open_device_view`] for views): data that
//!   already lives in GPU memory (tensors, checkpoints) is sealed or opened in place on the
//!   buffer's own stream; plaintext never crosses PCIe. The header stays on the host
//!   ([`MessageSealer::header_bytes`]); a stored message is `header ‖ body`. No call makes
//!   a zero-length allocation (an error in the driver): an empty plaintext to seal is a
//!   zero-length view.
//!
//! Opening is all or nothing, as on the CPU: the kernel writes plaintext and a flag per
//! segment (tag compared in constant time); if any flag is down, the output is zeroized
//! (host memory, or device memory with a memset) and never returned, and the error is the
//! one [`crate::bulk::cpu::open`] gives for the same input.
//!
//! Kernel images: the embedded images are built by nvcc 13.0. The compute_80 PTX (PTX ISA
//! 9.0) needs a driver that supports CUDA 13.0 (r580 or newer); a driver or device that
//! can load none of the images gives [`GpuError::NoDevice`] naming both load errors. The
//! environment variable `CRYPTOCORE_GPU_IMAGE` forces an image for testing: `ptx` (skip the
//! cubins, exercise the driver's JIT) or `cubin` (no PTX fallback); unset or `auto`: cubin
//! for 8.x/9.x, else PTX.
//!
//! Not run in this repository's CI: there is no GPU there. See `docs/gpu.md` for what has
//! and has not been run, and for the side-channel stance (shared-memory T-tables).

#![allow(unsafe_code)]

use std::fmt;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DeviceRepr,
    DeviceSlice, DriverError, LaunchConfig, PinnedHostSlice, PushKernelArg, ValidAsZeroBits, result, sys,
};
use cudarc::nvrtc::Ptx;
use zeroize::Zeroize;

use super::kernel_ref::{self, Direction, KernelParams, LANES, SegmentBatch};
use crate::envelope::{EncryptionContext, Envelope, EnvelopeError, Geometry, Header, MessageKeys, MessageSealer};
use crate::provider::KeyProvider;

/// The `cudarc` this engine is built on, for callers that create device buffers
/// ([`CudaSlice`]) to pass to [`GpuEngine::seal_device`].
pub use cudarc;

#[cfg(test)]
mod tests;

/// Warps per thread block (`GCM_WARPS_PER_CTA` in the CUDA source).
const WARPS_PER_CTA: u32 = 8;
/// Threads per block (`GCM_THREADS`).
const THREADS: u32 = WARPS_PER_CTA * LANES as u32;
/// Bytes of one host-path piece (whole segments; a piece is one launch).
const PIECE_BYTES: usize = 32 << 20;
/// Streams (and staging slots) of the host path: copy in, compute, copy out overlap.
const SLOTS: usize = 3;
/// Most `(segment, chunk)` items per device-path launch: bounds the partials buffer
/// (16 bytes per item, 16 MiB).
const MAX_ITEMS_PER_LAUNCH: u64 = 1 << 20;

static CUBIN_SM80: &[u8] = include_bytes!("kernels/aes_gcm.sm_80.cubin");
static CUBIN_SM90: &[u8] = include_bytes!("kernels/aes_gcm.sm_90.cubin");
static PTX_COMPUTE80: &str = include_str!("kernels/aes_gcm.compute_80.ptx");

/// What the embedded images need from the driver, for error messages and `docs/gpu.md`.
const DRIVER_REQUIREMENT: &str = "the embedded kernel images are built by nvcc 13.0; the compute_80 PTX (PTX ISA \
                                  9.0) needs a driver that supports CUDA 13.0 (r580 or newer)";

/// Environment variable that forces a kernel image (`ptx`, `cubin` or `auto`).
const IMAGE_ENV: &str = "CRYPTOCORE_GPU_IMAGE";

// The engine is shared between threads (the process-wide dispatcher holds one).
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<GpuEngine>();
};

// SAFETY: `KernelParams` is `#[repr(C)]` and made only of integers and integer arrays, so
// every bit pattern is valid and its bytes can be handed to the driver as a kernel
// parameter; its size and field offsets are asserted equal to the CUDA `struct
// KernelParams` on both sides (`KERNEL_PARAMS_SIZE`, `GCM_OFF_*`, checked by kernel_ref's
// tests against the source the committed images were built from).
unsafe impl DeviceRepr for KernelParams {}

/// Why the GPU engine could not run.
///
/// Authentication and format failures are [`GpuError::Envelope`] with exactly the error
/// the CPU path reports, so callers can treat both engines alike.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// No usable CUDA device: `libcuda` missing, no device, a device below compute
    /// capability 8.0, or a driver that cannot load any embedded kernel image (the PTX
    /// needs CUDA 13.0, driver r580 or newer) or lacks an entry point. The text says which.
    #[error("no usable CUDA device: {0}")]
    NoDevice(String),
    /// A CUDA driver call failed.
    #[error("CUDA call {call} failed: {error}")]
    Cuda {
        /// The operation (driver entry point or what it was for).
        call: &'static str,
        /// The driver's error code.
        error: String,
    },
    /// A buffer does not fit the call (wrong length, another context, misaligned for the
    /// vector path), or `CRYPTOCORE_GPU_IMAGE` has a value other than `ptx`, `cubin`, `auto`.
    #[error("GPU engine cannot run this: {0}")]
    Unsupported(String),
    /// Format, key or authentication failure: the same error as the CPU path.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

/// Adds the failing operation's name to a driver error.
trait CudaResultExt<T> {
    fn call(self, call: &'static str) -> Result<T, GpuError>;
}

impl<T> CudaResultExt<T> for Result<T, DriverError> {
    fn call(self, call: &'static str) -> Result<T, GpuError> {
        self.map_err(|e| GpuError::Cuda { call, error: format!("{:?}", e.0) })
    }
}

/// Which images `CRYPTOCORE_GPU_IMAGE` allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ImageChoice {
    /// The cubin for the device's architecture, else the PTX.
    Auto,
    /// The cubin only.
    Cubin,
    /// The PTX only (compiled by the driver).
    Ptx,
}

impl ImageChoice {
    fn from_env() -> Result<Self, GpuError> {
        Self::parse(std::env::var(IMAGE_ENV))
    }

    fn parse(value: Result<String, std::env::VarError>) -> Result<Self, GpuError> {
        match value {
            Err(std::env::VarError::NotPresent) => Ok(Self::Auto),
            Ok(v) if v.is_empty() || v.eq_ignore_ascii_case("auto") => Ok(Self::Auto),
            Ok(v) if v.eq_ignore_ascii_case("cubin") => Ok(Self::Cubin),
            Ok(v) if v.eq_ignore_ascii_case("ptx") => Ok(Self::Ptx),
            other => Err(GpuError::Unsupported(format!("{IMAGE_ENV}={other:?}: expected `ptx`, `cubin` or `auto`"))),
        }
    }
}

/// Which embedded kernel image is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelImage {
    /// `aes_gcm.sm_80.cubin` (compute capability 8.x).
    Sm80,
    /// `aes_gcm.sm_90.cubin` (compute capability 9.x).
    Sm90,
    /// `aes_gcm.compute_80.ptx`, compiled by the driver at load time.
    Ptx,
}

/// The device an engine runs on.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Device name as the driver reports it (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Device ordinal.
    pub ordinal: usize,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Streaming multiprocessors.
    pub multiprocessors: u32,
    /// Device memory in bytes.
    pub total_memory: usize,
    /// The driver's CUDA version, e.g. 13000 for 13.0.
    pub driver_cuda_version: i32,
    /// The kernel image in use.
    pub image: KernelImage,
    /// Resident blocks per multiprocessor of the chunk kernel (occupancy).
    pub blocks_per_multiprocessor: u32,
}

struct Kernels {
    seal_chunks_v16: CudaFunction,
    seal_chunks_bytes: CudaFunction,
    open_chunks_v16: CudaFunction,
    open_chunks_bytes: CudaFunction,
    seal_finish: CudaFunction,
    open_finish: CudaFunction,
}

impl Kernels {
    fn load(module: &Arc<CudaModule>) -> Result<Self, DriverError> {
        Ok(Self {
            seal_chunks_v16: module.load_function("gcm_seal_chunks_v16")?,
            seal_chunks_bytes: module.load_function("gcm_seal_chunks_bytes")?,
            open_chunks_v16: module.load_function("gcm_open_chunks_v16")?,
            open_chunks_bytes: module.load_function("gcm_open_chunks_bytes")?,
            seal_finish: module.load_function("gcm_seal_finish")?,
            open_finish: module.load_function("gcm_open_finish")?,
        })
    }

    fn chunks(&self, dir: Direction, v16: bool) -> &CudaFunction {
        match (dir, v16) {
            (Direction::Seal, true) => &self.seal_chunks_v16,
            (Direction::Seal, false) => &self.seal_chunks_bytes,
            (Direction::Open, true) => &self.open_chunks_v16,
            (Direction::Open, false) => &self.open_chunks_bytes,
        }
    }

    fn finish(&self, dir: Direction) -> &CudaFunction {
        match dir {
            Direction::Seal => &self.seal_finish,
            Direction::Open => &self.open_finish,
        }
    }
}

/// A seal/open engine on one CUDA device. `Send + Sync`; host-buffer calls share one set
/// of staging buffers and run one at a time, device-buffer calls run concurrently on their
/// buffers' streams.
pub struct GpuEngine {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    kernels: Kernels,
    info: DeviceInfo,
    /// Persistent-grid sizes: resident blocks on the whole device.
    chunk_grid: u32,
    finish_grid: u32,
    host: Mutex<Option<HostPipeline>>,
}

impl fmt::Debug for GpuEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuEngine").field("device", &self.info).finish_non_exhaustive()
    }
}

impl GpuEngine {
    /// An engine on device 0.
    ///
    /// [`GpuError::NoDevice`] when `libcuda` cannot be loaded, there is no device, or the
    /// driver lacks an entry point the engine needs.
    pub fn new() -> Result<Self, GpuError> {
        Self::with_device(0)
    }

    /// An engine on device `ordinal`.
    pub fn with_device(ordinal: usize) -> Result<Self, GpuError> {
        let choice = ImageChoice::from_env()?;
        // SAFETY: `is_culib_present` dlopens each libcuda candidate name (`libcuda.so`,
        // `libcuda.so.1`, …) in turn and closes it again. Loading a library runs its
        // initialisers (ELF constructors), which is why libloading marks it unsafe: here
        // that is the NVIDIA driver's libcuda (or the toolkit's stub), the library cudarc
        // loads anyway for every later driver call, so this runs no code the engine would
        // not run regardless. It touches no Rust state of ours.
        if !unsafe { sys::is_culib_present() } {
            return Err(GpuError::NoDevice(
                "libcuda (the NVIDIA driver library) could not be loaded: no driver installed, or not on the \
                 library path"
                    .into(),
            ));
        }
        // cudarc resolves each driver entry point on first use and panics if the driver
        // lacks it (a driver older than the CUDA 13.0 bindings): report that as no device
        // rather than unwinding into the caller.
        match std::panic::catch_unwind(|| Self::init(ordinal, choice)) {
            Ok(result) => result,
            Err(_) => Err(GpuError::NoDevice(
                "the CUDA driver lacks an entry point this engine needs (driver older than CUDA 13.0?)".into(),
            )),
        }
    }

    fn init(ordinal: usize, choice: ImageChoice) -> Result<Self, GpuError> {
        result::init().map_err(no_device_or("cuInit"))?;
        let count = result::device::get_count().map_err(no_device_or("cuDeviceGetCount"))?;
        if count <= 0 || ordinal >= count as usize {
            return Err(GpuError::NoDevice(format!("device {ordinal} requested, {count} present")));
        }
        let mut driver_cuda_version = 0;
        // SAFETY: cuDriverGetVersion writes one int through a valid pointer to a local.
        unsafe { sys::cuDriverGetVersion(&mut driver_cuda_version) }.result().call("cuDriverGetVersion")?;
        let ctx = CudaContext::new(ordinal).call("CudaContext::new")?;
        let (major, minor) = ctx.compute_capability().call("compute capability")?;
        if major < 8 {
            return Err(GpuError::NoDevice(format!(
                "device {ordinal} has compute capability {major}.{minor}: the kernels need 8.0 (Ampere) or newer"
            )));
        }
        let (module, image) = load_module(&ctx, (major, minor), driver_cuda_version, choice)?;
        let kernels = Kernels::load(&module).call("cuModuleGetFunction")?;
        let multiprocessors = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .call("multiprocessor count")?
            .max(1) as u32;
        let per_sm = kernels
            .seal_chunks_v16
            .occupancy_max_active_blocks_per_multiprocessor(THREADS, 0, None)
            .call("occupancy")?
            .max(1);
        let finish_per_sm = kernels
            .open_finish
            .occupancy_max_active_blocks_per_multiprocessor(THREADS, 0, None)
            .call("occupancy")?
            .max(1);
        let info = DeviceInfo {
            name: ctx.name().call("device name")?,
            ordinal,
            compute_capability: (major, minor),
            multiprocessors,
            total_memory: ctx.total_mem().call("total memory")?,
            driver_cuda_version,
            image,
            blocks_per_multiprocessor: per_sm,
        };
        let stream = ctx.new_stream().call("cuStreamCreate")?;
        Ok(Self {
            chunk_grid: multiprocessors * per_sm,
            finish_grid: multiprocessors * finish_per_sm,
            ctx,
            stream,
            _module: module,
            kernels,
            info,
            host: Mutex::new(None),
        })
    }

    /// The device.
    pub fn device(&self) -> &DeviceInfo {
        &self.info
    }

    /// The CUDA context (the device's primary context): allocate device buffers for
    /// [`GpuEngine::seal_device`] in it.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// A stream of the engine's own, for callers that have none.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Measures host↔device copy bandwidth with pinned host memory: `(host→device,
    /// device→host)` in bytes per second, best of `rounds` copies of `bytes`. A diagnostic
    /// for benchmarks and capacity planning; it allocates `bytes` of pinned and of device
    /// memory for the duration of the call.
    pub fn measure_transfer(&self, bytes: usize, rounds: usize) -> Result<(f64, f64), GpuError> {
        let bytes = bytes.max(1);
        let stream = &self.stream;
        // SAFETY: filled right below, before any read.
        let mut pinned = unsafe { self.ctx.alloc_pinned_with_flags::<u8>(bytes, 0) }.call("cuMemHostAlloc")?;
        pinned.as_mut_slice().call("pinned buffer")?.fill(0x3C);
        let mut device = stream.alloc_zeros::<u8>(bytes).call("cuMemAlloc")?;
        let (mut h2d, mut d2h) = (f64::MAX, f64::MAX);
        for _ in 0..rounds.max(1) {
            stream.synchronize().call("cuStreamSynchronize")?;
            let start = std::time::Instant::now();
            stream.memcpy_htod(&pinned, &mut device).call("cuMemcpyHtoDAsync")?;
            stream.synchronize().call("cuStreamSynchronize")?;
            h2d = h2d.min(start.elapsed().as_secs_f64());
            let start = std::time::Instant::now();
            stream.memcpy_dtoh(&device, &mut pinned).call("cuMemcpyDtoHAsync")?;
            stream.synchronize().call("cuStreamSynchronize")?;
            d2h = d2h.min(start.elapsed().as_secs_f64());
        }
        Ok((bytes as f64 / h2d.max(1e-9), bytes as f64 / d2h.max(1e-9)))
    }

    // ---- host buffers -------------------------------------------------------------------

    /// Seals `plaintext` (host memory) as one message: the bytes of
    /// [`crate::bulk::cpu::seal`].
    pub fn seal(&self, sealer: &MessageSealer, plaintext: &[u8]) -> Result<Vec<u8>, GpuError> {
        let mut out = Vec::new();
        self.seal_into(sealer, plaintext, &mut out)?;
        Ok(out)
    }

    /// [`GpuEngine::seal`] into `out`, reusing its allocation. On error `out` is emptied.
    pub fn seal_into(&self, sealer: &MessageSealer, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), GpuError> {
        let geometry = Geometry::for_plaintext(sealer.segment_size(), plaintext.len())?;
        let header = sealer.header_bytes();
        crate::envelope::resize_reusing(out, header.len() + geometry.body_len(plaintext.len()));
        out[..header.len()].copy_from_slice(header);
        let result = self.run_host(
            Direction::Seal,
            sealer.keys(),
            &geometry,
            plaintext.len(),
            plaintext,
            &mut out[header.len()..],
        );
        if let Err(e) = result {
            out.clear();
            return Err(e);
        }
        Ok(())
    }

    /// Opens a whole message (host memory): the result of [`crate::bulk::cpu::open`], all
    /// or nothing.
    pub fn open<P: KeyProvider>(
        &self,
        envelope: &Envelope<P>,
        context: &EncryptionContext,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, GpuError> {
        let (keys, body, geometry) = envelope.open_parts(context, ciphertext)?;
        let mut out = vec![0u8; geometry.plaintext_len(body.len())];
        let pt_len = out.len();
        match self.run_host(Direction::Open, &keys, &geometry, pt_len, body, &mut out) {
            Ok(None) => Ok(out),
            Ok(Some(index)) => {
                out.zeroize();
                Err(super::failure_error(&keys, &geometry, body, index).into())
            }
            Err(e) => {
                out.zeroize();
                Err(e)
            }
        }
    }

    /// Runs every batch of a host-memory message through the staging pipeline. Returns the
    /// first segment whose tag failed (opening), if any.
    fn run_host(
        &self,
        dir: Direction,
        keys: &MessageKeys,
        geometry: &Geometry,
        pt_len: usize,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<Option<u64>, GpuError> {
        let max_segments = (PIECE_BYTES / geometry.stride()).clamp(1, u32::MAX as usize) as u32;
        let batches = kernel_ref::batches(geometry, pt_len, max_segments);
        let (max_items, max_segs) =
            batches.iter().fold((1u64, 1u32), |(i, s), b| (i.max(b.items()), s.max(b.segments)));
        let mut guard = match self.host.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                // A call panicked while it held the staging buffers: their bookkeeping
                // (pending batches, what is dirty) cannot be trusted. Wipe every buffer
                // whole and start from fresh ones.
                let mut guard = poisoned.into_inner();
                if let Some(mut old) = guard.take() {
                    old.mark_all_dirty();
                    let _ = old.wipe();
                }
                self.host.clear_poison();
                guard
            }
        };
        if guard.as_ref().is_none_or(|p| !p.fits(max_items, max_segs)) {
            // Drop the old buffers first (their drop waits for their streams), then grow.
            *guard = None;
            *guard = Some(HostPipeline::new(&self.ctx, max_items, max_segs)?);
        }
        let Some(pipeline) = guard.as_mut() else {
            return Err(GpuError::Unsupported("staging buffers unavailable".into()));
        };
        let result = self.run_host_batches(pipeline, dir, keys, geometry, &batches, input, output);
        // Plaintext passed through the staging buffers (in when sealing, out when opening),
        // and the GHASH partial sums through the device: wipe what this call used, whatever
        // happened.
        let wiped = pipeline.wipe();
        let failure = result?;
        wiped?;
        Ok(failure)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_host_batches(
        &self,
        pipeline: &mut HostPipeline,
        dir: Direction,
        keys: &MessageKeys,
        geometry: &Geometry,
        batches: &[SegmentBatch],
        input: &[u8],
        output: &mut [u8],
    ) -> Result<Option<u64>, GpuError> {
        // Start from idle slots with nothing pending. An earlier call's `wipe` already
        // waited for every stream; if that wait failed, wait (or fail) here rather than
        // write into buffers that a copy of that call may still be using.
        for slot in &mut pipeline.slots {
            slot.pending = None;
            slot.stream.synchronize().call("cuStreamSynchronize")?;
        }
        let v16 = geometry.segment_size.is_multiple_of(16); // staging buffers are allocation-aligned
        let mut params = kernel_ref::launch_params(keys, &batches[0]);
        let mut failure = None;
        let (mut in_off, mut out_off) = (0usize, 0usize);
        for (k, batch) in batches.iter().enumerate() {
            let slot = &mut pipeline.slots[k % SLOTS];
            slot.retire(dir, output, &mut failure)?;
            params.set_batch(batch);
            let (n_in, n_out) = io_lens(dir, batch);
            let segments = batch.segments as usize;
            // Note what this batch is about to leave in the slot before anything is
            // enqueued, so that `wipe` covers it whatever fails below.
            slot.dirty.note(dir, n_in, n_out, 2 * batch.items() as usize);
            let stream = slot.stream.clone();
            if n_in > 0 {
                let staged = &mut slot.pin_in.as_mut_slice()?[..n_in];
                par_copy(staged, &input[in_off..in_off + n_in]);
                // The copy reads pinned memory asynchronously after this borrow ends. That
                // is sound here because the slot's buffers are touched again only after
                // `retire` or `wipe` has synchronized the slot's stream, and the pipeline's
                // drop synchronizes every stream before the buffers are freed.
                stream.memcpy_htod(&*staged, &mut slot.dev_in.slice_mut(..n_in)).call("cuMemcpyHtoDAsync")?;
            }
            self.launch(
                &stream,
                dir,
                v16,
                &params,
                &slot.dev_in.slice(..n_in),
                &mut slot.dev_out.slice_mut(..n_out),
                &mut slot.partials,
                &mut slot.flags,
            )?;
            // Asynchronous writes into pinned memory, read only after `retire` syncs.
            if n_out > 0 {
                let staged_out = &mut slot.pin_out.as_mut_slice()?[..n_out];
                stream.memcpy_dtoh(&slot.dev_out.slice(..n_out), staged_out).call("cuMemcpyDtoHAsync")?;
            }
            if dir == Direction::Open {
                let flags_out = &mut slot.pin_flags.as_mut_slice().call("pinned buffer")?[..segments];
                stream.memcpy_dtoh(&slot.flags.slice(..segments), flags_out).call("cuMemcpyDtoHAsync")?;
            }
            slot.pending =
                Some(Pending { out_off, out_len: n_out, first_index: u64::from(batch.first_index), segments });
            in_off += n_in;
            out_off += n_out;
        }
        // Retire the last slots in batch order, so the first failure is the lowest index.
        for k in batches.len()..batches.len() + SLOTS {
            pipeline.slots[k % SLOTS].retire(dir, output, &mut failure)?;
        }
        params.zeroize();
        Ok(failure)
    }

    // ---- device buffers -----------------------------------------------------------------

    /// Seals `plaintext` already in GPU memory; returns the body (`ct ‖ tag` segments) in
    /// GPU memory, on `plaintext`'s stream. The message is `sealer.header_bytes() ‖ body`.
    pub fn seal_device(&self, sealer: &MessageSealer, plaintext: &CudaSlice<u8>) -> Result<CudaSlice<u8>, GpuError> {
        let geometry = Geometry::for_plaintext(sealer.segment_size(), plaintext.len())?;
        let stream = plaintext.stream().clone();
        // Never empty: every message has at least one tag.
        let mut body = stream.alloc_zeros::<u8>(geometry.body_len(plaintext.len())).call("cuMemAlloc")?;
        self.seal_device_into(sealer, plaintext, &mut body)?;
        Ok(body)
    }

    /// [`GpuEngine::seal_device`] into `body`, which must be exactly the body length
    /// (`plaintext.len() + 16 ·` segments).
    pub fn seal_device_into(
        &self,
        sealer: &MessageSealer,
        plaintext: &CudaSlice<u8>,
        body: &mut CudaSlice<u8>,
    ) -> Result<(), GpuError> {
        self.seal_device_view(sealer, &plaintext.as_view(), &mut body.as_view_mut())
    }

    /// [`GpuEngine::seal_device_into`] for views: part of a larger buffer, or an empty
    /// plaintext (`buffer.slice(0..0)`), which a [`CudaSlice`] cannot be without a
    /// zero-length allocation (an error in the driver). Runs on `plaintext`'s stream.
    pub fn seal_device_view(
        &self,
        sealer: &MessageSealer,
        plaintext: &CudaView<'_, u8>,
        body: &mut CudaViewMut<'_, u8>,
    ) -> Result<(), GpuError> {
        let geometry = Geometry::for_plaintext(sealer.segment_size(), plaintext.len())?;
        if body.len() != geometry.body_len(plaintext.len()) {
            return Err(GpuError::Unsupported(format!(
                "body buffer of {} bytes for a body of {}",
                body.len(),
                geometry.body_len(plaintext.len())
            )));
        }
        self.check_context(DeviceSlice::stream(plaintext).context())?;
        self.check_context(DeviceSlice::stream(body).context())?;
        let stream = DeviceSlice::stream(plaintext).clone();
        self.run_device(&stream, Direction::Seal, sealer.keys(), &geometry, plaintext.len(), plaintext, body)?;
        Ok(())
    }

    /// Opens a message whose header is in host memory and whose body is in GPU memory;
    /// returns the plaintext in GPU memory on `body`'s stream. All or nothing: on failure
    /// the device output is zeroized and freed, and the error is the CPU path's.
    pub fn open_device<P: KeyProvider>(
        &self,
        envelope: &Envelope<P>,
        context: &EncryptionContext,
        header: &[u8],
        body: &CudaSlice<u8>,
    ) -> Result<CudaSlice<u8>, GpuError> {
        self.open_device_view(envelope, context, header, &body.as_view())
    }

    /// [`GpuEngine::open_device`] for a body that is a view (part of a larger buffer).
    /// An empty plaintext comes back as a [`CudaSlice`] of length 0 over a one-byte
    /// allocation (the driver refuses zero-length ones).
    pub fn open_device_view<P: KeyProvider>(
        &self,
        envelope: &Envelope<P>,
        context: &EncryptionContext,
        header: &[u8],
        body: &CudaView<'_, u8>,
    ) -> Result<CudaSlice<u8>, GpuError> {
        let (parsed, header_len) = Header::parse(header)?;
        if header_len != header.len() {
            return Err(EnvelopeError::Malformed("bytes after the header (pass the header alone)").into());
        }
        let keys = envelope.open_header(&parsed, context)?;
        let geometry = Geometry::for_body(parsed.segment_size().map(|s| s as usize), body.len())?;
        self.check_context(DeviceSlice::stream(body).context())?;
        let stream = DeviceSlice::stream(body).clone();
        let pt_len = geometry.plaintext_len(body.len());
        // `cuMemAlloc(0)` is CUDA_ERROR_INVALID_VALUE: an empty plaintext gets one byte, of
        // which the launches use none (a zero-length view).
        let mut out = stream.alloc_zeros::<u8>(pt_len.max(1)).call("cuMemAlloc")?;
        let result =
            self.run_device(&stream, Direction::Open, &keys, &geometry, pt_len, body, &mut out.slice_mut(..pt_len));
        match result {
            Ok(None) if pt_len == 0 => Ok(empty_slice(&stream, out)),
            Ok(None) => Ok(out),
            Ok(Some(index)) => {
                let wiped = stream.memset_zeros(&mut out).call("cuMemsetD8Async");
                let synced = stream.synchronize().call("cuStreamSynchronize");
                wiped?;
                synced?;
                // The failing segment's ciphertext (public) comes back to the host to tell
                // truncation from tampering exactly as the CPU path does.
                let stride = geometry.stride();
                let start = (index as usize) * stride;
                let end = (start + stride).min(body.len());
                let sealed = stream.clone_dtoh(&body.slice(start..end)).call("cuMemcpyDtoH")?;
                Err(super::segment_failure(&keys, &geometry, index, &sealed).into())
            }
            Err(e) => {
                // Best effort: the output may hold plaintext of segments not yet checked.
                let _ = stream.memset_zeros(&mut out);
                let _ = stream.synchronize();
                Err(e)
            }
        }
    }

    fn check_context(&self, ctx: &Arc<CudaContext>) -> Result<(), GpuError> {
        if ctx.cu_ctx() != self.ctx.cu_ctx() {
            return Err(GpuError::Unsupported("buffer belongs to another CUDA context or device".into()));
        }
        Ok(())
    }

    /// Runs every batch of a device-memory message on `stream`. Returns the first segment
    /// whose tag failed (opening), if any.
    #[allow(clippy::too_many_arguments)]
    fn run_device(
        &self,
        stream: &Arc<CudaStream>,
        dir: Direction,
        keys: &MessageKeys,
        geometry: &Geometry,
        pt_len: usize,
        input: &CudaView<'_, u8>,
        output: &mut CudaViewMut<'_, u8>,
    ) -> Result<Option<u64>, GpuError> {
        let cps = SegmentBatch {
            first_index: 0,
            segments: 1,
            segment_size: geometry.segment_size as u64,
            last_len: 0,
            flag_last: 0,
            flag_other: 0,
        }
        .chunks_per_segment();
        let max_segments = (MAX_ITEMS_PER_LAUNCH / u64::from(cps)).clamp(1, u64::from(u32::MAX)) as u32;
        let batches = kernel_ref::batches(geometry, pt_len, max_segments);
        let (max_items, max_segs) =
            batches.iter().fold((1u64, 1u32), |(i, s), b| (i.max(b.items()), s.max(b.segments)));
        // GHASH partial sums (H can be recovered from them): zeroed on every way out,
        // errors included, by the guard's drop if not by the explicit wipe below.
        let mut partials = DeviceSecret::new(stream.alloc_zeros::<u64>(2 * max_items as usize).call("cuMemAlloc")?);
        let mut flags = stream.alloc_zeros::<u32>(max_segs as usize).call("cuMemAlloc")?;
        let v16 = geometry.segment_size.is_multiple_of(16)
            && device_address(input, stream).is_multiple_of(16)
            && device_address(&*output, stream).is_multiple_of(16);
        let mut params = kernel_ref::launch_params(keys, &batches[0]);
        let (mut in_off, mut out_off) = (0usize, 0usize);
        let mut failure = None;
        for batch in &batches {
            params.set_batch(batch);
            let (n_in, n_out) = io_lens(dir, batch);
            self.launch(
                stream,
                dir,
                v16,
                &params,
                &input.slice(in_off..in_off + n_in),
                &mut output.slice_mut(out_off..out_off + n_out),
                partials.buf_mut(),
                &mut flags,
            )?;
            if dir == Direction::Open {
                let ok = stream.clone_dtoh(&flags.slice(..batch.segments as usize)).call("cuMemcpyDtoH")?;
                if let Some(s) = ok.iter().position(|&f| f != 1) {
                    failure = Some(u64::from(batch.first_index) + s as u64);
                    break;
                }
            }
            in_off += n_in;
            out_off += n_out;
        }
        params.zeroize();
        partials.wipe()?;
        stream.synchronize().call("cuStreamSynchronize")?;
        Ok(failure)
    }

    /// Launches the chunk kernel and the finish kernel of one batch on `stream`.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        stream: &Arc<CudaStream>,
        dir: Direction,
        v16: bool,
        params: &KernelParams,
        input: &CudaView<'_, u8>,
        output: &mut CudaViewMut<'_, u8>,
        partials: &mut CudaSlice<u64>,
        flags: &mut CudaSlice<u32>,
    ) -> Result<(), GpuError> {
        let batch = params.batch();
        let (n_in, n_out) = io_lens(dir, &batch);
        // The kernels trust these bounds; check them here, where a mistake is an error
        // rather than an out-of-bounds access on the device.
        if input.len() != n_in
            || output.len() != n_out
            || partials.len() < 2 * batch.items() as usize
            || flags.len() < batch.segments as usize
        {
            return Err(GpuError::Unsupported("internal: launch buffers do not match the batch".into()));
        }
        // The vector path loads and stores 16 bytes at `segment start + 16·k`: it needs a
        // segment size that is a multiple of 16 and 16-byte aligned buffers. Checked here,
        // where the launch is, whatever the caller decided.
        if v16
            && !(batch.segment_size.is_multiple_of(16)
                && device_address(input, stream).is_multiple_of(16)
                && device_address(&*output, stream).is_multiple_of(16))
        {
            return Err(GpuError::Unsupported(
                "internal: vector path with a segment size or buffer not 16-byte aligned".into(),
            ));
        }
        let chunk_blocks = batch.items().div_ceil(u64::from(WARPS_PER_CTA)).min(u64::from(self.chunk_grid)).max(1);
        let cfg =
            LaunchConfig { grid_dim: (chunk_blocks as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let mut chunks = stream.launch_builder(self.kernels.chunks(dir, v16));
        chunks.arg(params).arg(input).arg(&mut *output).arg(&mut *partials);
        // SAFETY: the arguments match `gcm_*_chunks_*(KernelParams, const uint8_t* in,
        // uint8_t* out, u64* partials)` in order and type. `params` describes exactly
        // `input` and `output` (lengths checked above): the chunk kernel reads inside
        // `input`, writes the ciphertext or plaintext of every segment inside `output` and
        // two words per item inside `partials` (at least `2 · items` long, checked above),
        // and nothing else. With `v16`, the segment size is a multiple of 16 and both
        // buffers are 16-byte aligned (checked just above), as its 16-byte accesses need.
        // cudarc orders the launch after earlier work on the buffers it is given.
        unsafe { chunks.launch(cfg) }.call("cuLaunchKernel(gcm chunks)")?;

        let finish_blocks =
            u64::from(batch.segments).div_ceil(u64::from(THREADS)).min(u64::from(self.finish_grid)).max(1);
        let cfg =
            LaunchConfig { grid_dim: (finish_blocks as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let mut finish = stream.launch_builder(self.kernels.finish(dir));
        finish.arg(params).arg(input).arg(&mut *output).arg(&*partials).arg(&mut *flags);
        // SAFETY: the arguments match `gcm_*_finish(KernelParams, const uint8_t* in,
        // uint8_t* out, const u64* partials, uint32_t* ok)` in order and type. The finish
        // kernel reads the partials the chunk kernel wrote (same stream: ordered after it,
        // at most `2 · items` words). Sealing writes 16 tag bytes per segment inside
        // `output` (at `s · (size + 16) + len`, within the body length checked above) and
        // does not touch `flags`; opening reads the stored tags inside `input` and writes
        // one flag per segment into `flags` (at least `segments` long, checked above), and
        // does not touch `output`. Byte accesses only: no alignment needed.
        unsafe { finish.launch(cfg) }.call("cuLaunchKernel(gcm finish)")?;
        Ok(())
    }
}

/// Input and output bytes of a batch.
fn io_lens(dir: Direction, batch: &SegmentBatch) -> (usize, usize) {
    let (pt, body) = (batch.plaintext_len() as usize, batch.body_len() as usize);
    match dir {
        Direction::Seal => (pt, body),
        Direction::Open => (body, pt),
    }
}

fn device_address<V: DevicePtr<u8>>(view: &V, stream: &CudaStream) -> u64 {
    let (ptr, _record) = view.device_ptr(stream);
    ptr
}

/// A [`CudaSlice`] of length 0 that owns `buf`'s allocation (one byte or more, allocated
/// on `stream`) and frees it when dropped: an empty result without a zero-length
/// allocation, which the driver refuses.
fn empty_slice(stream: &Arc<CudaStream>, buf: CudaSlice<u8>) -> CudaSlice<u8> {
    debug_assert!(!buf.is_empty() && Arc::ptr_eq(buf.stream(), stream));
    // `leak` makes `stream` wait for the buffer's pending work and hands over the pointer;
    // nothing else frees it.
    let ptr = buf.leak();
    // SAFETY: `ptr` is a live device allocation (of at least one byte) that no other
    // object owns after `leak`; it was allocated on `stream` (`alloc_zeros` there, by the
    // same allocator choice cudarc makes for every allocation of this context), so the new
    // slice's drop frees it with the matching call on the same stream. A length of zero
    // elements needs no bytes and reads none: no initialisation is required.
    unsafe { stream.upgrade_device_ptr::<u8>(ptr, 0) }
}

/// Device memory that held a secret (the GHASH partial sums): zeroed on its stream
/// before it is freed, on every path out, errors and panics included.
struct DeviceSecret<T: DeviceRepr + ValidAsZeroBits> {
    buf: CudaSlice<T>,
    /// Zeroed since its last use.
    clean: bool,
}

impl<T: DeviceRepr + ValidAsZeroBits> DeviceSecret<T> {
    fn new(buf: CudaSlice<T>) -> Self {
        Self { buf, clean: false }
    }

    fn buf_mut(&mut self) -> &mut CudaSlice<T> {
        self.clean = false;
        &mut self.buf
    }

    /// Enqueues the memset (ordered before the free, which runs on the same stream).
    fn wipe(&mut self) -> Result<(), GpuError> {
        let stream = self.buf.stream().clone();
        stream.memset_zeros(&mut self.buf).call("cuMemsetD8Async")?;
        self.clean = true;
        Ok(())
    }
}

impl<T: DeviceRepr + ValidAsZeroBits> Drop for DeviceSecret<T> {
    fn drop(&mut self) {
        if !self.clean {
            let _ = self.wipe(); // best effort: nothing to report to from a drop
        }
    }
}

/// Maps "no device"-type driver errors of initialisation to [`GpuError::NoDevice`].
fn no_device_or(call: &'static str) -> impl Fn(DriverError) -> GpuError {
    move |e| {
        use sys::CUresult as R;
        match e.0 {
            R::CUDA_ERROR_NO_DEVICE => GpuError::NoDevice("the driver reports no CUDA-capable device".into()),
            R::CUDA_ERROR_STUB_LIBRARY => GpuError::NoDevice("libcuda is the toolkit's stub, not a driver".into()),
            R::CUDA_ERROR_NOT_INITIALIZED
            | R::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
            | R::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE => {
                GpuError::NoDevice(format!("the driver cannot initialise ({:?})", e.0))
            }
            other => GpuError::Cuda { call, error: format!("{other:?}") },
        }
    }
}

/// Load errors that mean "this driver or device cannot use that image" rather than a
/// failing driver.
fn image_unloadable(e: sys::CUresult) -> bool {
    use sys::CUresult as R;
    matches!(
        e,
        R::CUDA_ERROR_UNSUPPORTED_PTX_VERSION
            | R::CUDA_ERROR_NO_BINARY_FOR_GPU
            | R::CUDA_ERROR_INVALID_IMAGE
            | R::CUDA_ERROR_JIT_COMPILER_NOT_FOUND
            | R::CUDA_ERROR_JIT_COMPILATION_DISABLED
    )
}

/// Loads the cubin for the device's major compute capability, else the PTX (as `choice`
/// allows). When nothing loads, the error names every attempt and the driver requirement:
/// [`GpuError::NoDevice`] when each failure says the image does not suit this driver or
/// device, [`GpuError::Cuda`] otherwise.
fn load_module(
    ctx: &Arc<CudaContext>,
    (major, minor): (i32, i32),
    driver_cuda_version: i32,
    choice: ImageChoice,
) -> Result<(Arc<CudaModule>, KernelImage), GpuError> {
    let mut failures = Vec::new();
    let mut all_unloadable = true;
    if choice != ImageChoice::Ptx {
        let cubin = match major {
            9 => Some((CUBIN_SM90, KernelImage::Sm90)),
            8 => Some((CUBIN_SM80, KernelImage::Sm80)),
            _ => None,
        };
        match cubin {
            Some((image, which)) => match ctx.load_module(Ptx::from_binary(image.to_vec())) {
                Ok(module) => return Ok((module, which)),
                Err(e) => {
                    all_unloadable &= image_unloadable(e.0);
                    failures.push(format!("{which:?} cubin: {:?}", e.0));
                }
            },
            None => failures.push(format!("no cubin for compute capability {major}.{minor} (cubins: 8.x, 9.x)")),
        }
    }
    if choice == ImageChoice::Cubin {
        failures.push(format!("PTX not tried ({IMAGE_ENV}=cubin)"));
    } else {
        match ctx.load_module(Ptx::from_src(PTX_COMPUTE80)) {
            Ok(module) => return Ok((module, KernelImage::Ptx)),
            Err(e) => {
                all_unloadable &= image_unloadable(e.0);
                failures.push(format!("compute_80 PTX: {:?}", e.0));
            }
        }
    }
    let detail = format!(
        "{}; the driver supports CUDA {}.{}; {DRIVER_REQUIREMENT}",
        failures.join("; "),
        driver_cuda_version / 1000,
        (driver_cuda_version % 1000) / 10
    );
    if all_unloadable {
        Err(GpuError::NoDevice(format!("no embedded kernel image loads on this device and driver: {detail}")))
    } else {
        Err(GpuError::Cuda { call: "cuModuleLoadData", error: detail })
    }
}

// ---- host staging pipeline ------------------------------------------------------------------

/// Copies `src` into `dst` (equal lengths) on rayon's pool, in pieces of 2 MiB. One core's
/// memcpy runs far below PCIe (benches/RESULTS.md: host-to-host sealing was 2.9 GB/s with
/// single-threaded staging copies on an H100 host with 55 GB/s of pinned PCIe), and the
/// page faults of a fresh output buffer are taken here too.
fn par_copy(dst: &mut [u8], src: &[u8]) {
    use rayon::prelude::*;
    const PIECE: usize = 2 << 20;
    if src.len() <= PIECE {
        dst.copy_from_slice(src);
    } else {
        dst.par_chunks_mut(PIECE).zip(src.par_chunks(PIECE)).for_each(|(d, s)| d.copy_from_slice(s));
    }
}

/// A batch whose results are on their way back into a slot's pinned buffers.
struct Pending {
    out_off: usize,
    out_len: usize,
    first_index: u64,
    segments: usize,
}

/// Page-locked staging memory whose address is kept aside, so that [`PinnedBytes::wipe`]
/// works without a driver call: cudarc's accessors synchronize an event first, which
/// fails once the context has a sticky error, and the plaintext must go even then.
struct PinnedBytes {
    buf: PinnedHostSlice<u8>,
    /// `buf`'s own pointer (the raw pointer cudarc holds; no reference was created to get
    /// it), valid for `buf.len()` bytes until `buf` is dropped.
    base: NonNull<u8>,
}

// SAFETY: `base` is a copy of the pointer `buf` owns (cudarc declares `PinnedHostSlice`
// `Send`), and it is written through only with `&mut self`; moving it to another thread
// together with `buf` is as sound as moving `buf`.
unsafe impl Send for PinnedBytes {}

impl PinnedBytes {
    /// `len` bytes (at least one) of pinned memory with cuMemHostAlloc `flags`, zeroed.
    fn new(ctx: &Arc<CudaContext>, len: usize, flags: u32) -> Result<Self, GpuError> {
        // SAFETY: the memory is zero-filled right below, before any read.
        let mut buf = unsafe { ctx.alloc_pinned_with_flags::<u8>(len.max(1), flags) }.call("cuMemHostAlloc")?;
        buf.as_mut_slice().call("pinned buffer")?.fill(0);
        let base = NonNull::new(buf.as_mut_ptr().call("pinned buffer")?)
            .ok_or_else(|| GpuError::Cuda { call: "cuMemHostAlloc", error: "null pointer".into() })?;
        Ok(Self { buf, base })
    }

    fn as_slice(&self) -> Result<&[u8], GpuError> {
        self.buf.as_slice().call("pinned buffer")
    }

    fn as_mut_slice(&mut self) -> Result<&mut [u8], GpuError> {
        self.buf.as_mut_slice().call("pinned buffer")
    }

    /// Zeroizes the first `len` bytes (at most the whole buffer) with volatile writes, with
    /// no driver call, on rayon's pool in pieces of 2 MiB (one core wiped up to 96 MiB per
    /// call at a few GB/s). Callers synchronize the stream that copies into or out of the
    /// buffer first; when that fails, this still runs.
    fn wipe(&mut self, len: usize) {
        use rayon::prelude::*;
        const PIECE: usize = 2 << 20;
        let len = len.min(self.buf.len());
        let base = WipeBase(self.base);
        (0..len.div_ceil(PIECE)).into_par_iter().for_each(|p| {
            let start = p * PIECE;
            // SAFETY: `start < end <= len <= buf.len()`: inside the live allocation `buf`
            // owns (freed only when `buf` drops, after the pipeline's drop has
            // synchronized). No Rust reference to the buffer exists while `&mut self` is
            // held, and the pieces are disjoint, so no two threads write the same byte.
            unsafe { wipe_range(&base, start, (start + PIECE).min(len)) };
        });
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

/// The base pointer of a [`PinnedBytes`], shared with the threads that wipe its pieces.
struct WipeBase(NonNull<u8>);

// SAFETY: the threads holding a `&WipeBase` write only through `wipe_range`, each to its
// own disjoint range, while `PinnedBytes::wipe` holds `&mut` on the buffer and waits for
// all of them.
unsafe impl Sync for WipeBase {}

/// Writes zeros over bytes `start..end` of the buffer at `base`, with volatile writes:
/// words where aligned, bytes elsewhere.
///
/// # Safety
///
/// `base..base + end` must lie inside one live allocation that no other thread accesses in
/// `start..end` during the call, and to which no Rust reference exists.
unsafe fn wipe_range(base: &WipeBase, start: usize, end: usize) {
    let base = base.0.as_ptr().wrapping_add(start);
    let len = end - start;
    let head = base.align_offset(align_of::<u64>()).min(len);
    let words = (len - head) / size_of::<u64>();
    for i in 0..head {
        // SAFETY: `start + i < end`, inside the allocation (caller's contract). The memory
        // is outside any Rust allocation and a DMA engine may access it: volatile writes
        // are the way to write such memory; if a copy were still running (only after a
        // failed synchronize), the bytes it leaves are all the race affects.
        unsafe { base.add(i).write_volatile(0) };
    }
    let word_base = base.wrapping_add(head).cast::<u64>();
    for i in 0..words {
        // SAFETY: as above; `word_base` is 8-byte aligned (`head` is its offset to the next
        // multiple of 8) and word `i` ends at `head + 8·(i + 1) <= len`.
        unsafe { word_base.add(i).write_volatile(0) };
    }
    for i in head + words * size_of::<u64>()..len {
        // SAFETY: as above, `start + i < end`.
        unsafe { base.add(i).write_volatile(0) };
    }
}

/// How much of a slot's buffers this call has put secrets into (high-water marks, bytes or
/// words from the start of each buffer): plaintext in the inputs when sealing and in the
/// outputs when opening, GHASH partial sums in `partials` either way. `wipe` clears
/// exactly this much.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Dirty {
    /// Bytes of `pin_in` and `dev_in`.
    input: usize,
    /// Bytes of `pin_out` and `dev_out`.
    output: usize,
    /// Words of `partials`.
    partials: usize,
}

impl Dirty {
    fn note(&mut self, dir: Direction, n_in: usize, n_out: usize, partial_words: usize) {
        match dir {
            Direction::Seal => self.input = self.input.max(n_in),
            Direction::Open => self.output = self.output.max(n_out),
        }
        self.partials = self.partials.max(partial_words);
    }
}

/// One stream with its staging buffers.
struct Slot {
    stream: Arc<CudaStream>,
    /// Write-combined: the CPU only writes it.
    pin_in: PinnedBytes,
    /// Cached (not write-combined): the CPU reads it.
    pin_out: PinnedBytes,
    pin_flags: PinnedHostSlice<u32>,
    dev_in: CudaSlice<u8>,
    dev_out: CudaSlice<u8>,
    partials: CudaSlice<u64>,
    flags: CudaSlice<u32>,
    pending: Option<Pending>,
    dirty: Dirty,
}

impl Slot {
    /// Waits for the slot's batch, copies its output into place and notes a failed flag.
    fn retire(&mut self, dir: Direction, output: &mut [u8], failure: &mut Option<u64>) -> Result<(), GpuError> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        self.stream.synchronize().call("cuStreamSynchronize")?;
        let staged = self.pin_out.as_slice()?;
        par_copy(&mut output[p.out_off..p.out_off + p.out_len], &staged[..p.out_len]);
        if dir == Direction::Open {
            let flags = self.pin_flags.as_slice().call("pinned buffer")?;
            if let Some(s) = flags[..p.segments].iter().position(|&f| f != 1) {
                let index = p.first_index + s as u64;
                *failure = Some(failure.map_or(index, |f| f.min(index)));
            }
        }
        Ok(())
    }

    /// Zeroizes what [`Slot::dirty`] marks, device and host, after waiting for the slot's
    /// stream; drops any pending batch. Best effort: the host buffers are wiped even when
    /// the driver calls fail, and the marks stay (for a later wipe to retry the device
    /// side) unless everything succeeded.
    fn wipe(&mut self) -> Result<(), GpuError> {
        self.pending = None;
        let d = Dirty {
            input: self.dirty.input.min(self.dev_in.len()),
            output: self.dirty.output.min(self.dev_out.len()),
            partials: self.dirty.partials.min(self.partials.len()),
        };
        let stream = self.stream.clone();
        let mut device = Ok(());
        if d.input > 0 {
            device = device.and(stream.memset_zeros(&mut self.dev_in.slice_mut(..d.input)));
        }
        if d.output > 0 {
            device = device.and(stream.memset_zeros(&mut self.dev_out.slice_mut(..d.output)));
        }
        if d.partials > 0 {
            device = device.and(stream.memset_zeros(&mut self.partials.slice_mut(..d.partials)));
        }
        // Also waits for any copy still in flight from a call that failed midway.
        let synced = stream.synchronize();
        self.pin_in.wipe(d.input);
        self.pin_out.wipe(d.output);
        let result = device.and(synced).call("wiping staging buffers");
        if result.is_ok() {
            self.dirty = Dirty::default();
        }
        result
    }
}

/// The host path's staging buffers: [`SLOTS`] streams, each with pinned and device buffers
/// of [`PIECE_BYTES`]. Kept between calls (pinned allocation is slow).
struct HostPipeline {
    slots: Vec<Slot>,
    items: u64,
    segments: u32,
}

impl HostPipeline {
    fn new(ctx: &Arc<CudaContext>, items: u64, segments: u32) -> Result<Self, GpuError> {
        let mut slots = Vec::with_capacity(SLOTS);
        for _ in 0..SLOTS {
            let stream = ctx.new_stream().call("cuStreamCreate")?;
            let pin_in = PinnedBytes::new(ctx, PIECE_BYTES, sys::CU_MEMHOSTALLOC_WRITECOMBINED)?;
            let pin_out = PinnedBytes::new(ctx, PIECE_BYTES, 0)?;
            // SAFETY: zero-filled right below, before any read.
            let mut pin_flags =
                unsafe { ctx.alloc_pinned_with_flags::<u32>(segments.max(1) as usize, 0) }.call("cuMemHostAlloc")?;
            pin_flags.as_mut_slice().call("pinned buffer")?.fill(0);
            // Every length is at least one element: `cuMemAlloc(0)` is an error.
            slots.push(Slot {
                dev_in: stream.alloc_zeros::<u8>(PIECE_BYTES).call("cuMemAlloc")?,
                dev_out: stream.alloc_zeros::<u8>(PIECE_BYTES).call("cuMemAlloc")?,
                partials: stream.alloc_zeros::<u64>(2 * items.max(1) as usize).call("cuMemAlloc")?,
                flags: stream.alloc_zeros::<u32>(segments.max(1) as usize).call("cuMemAlloc")?,
                stream,
                pin_in,
                pin_out,
                pin_flags,
                pending: None,
                dirty: Dirty::default(),
            });
        }
        Ok(Self { slots, items, segments })
    }

    fn fits(&self, items: u64, segments: u32) -> bool {
        items <= self.items && segments <= self.segments
    }

    /// Zeroizes what this call left in the staging buffers (see [`Dirty`]), every slot
    /// whatever fails in another; returns the first error.
    fn wipe(&mut self) -> Result<(), GpuError> {
        let mut first_error = None;
        for slot in &mut self.slots {
            if let Err(e) = slot.wipe() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Marks every buffer dirty in full: for a pipeline whose marks cannot be trusted.
    fn mark_all_dirty(&mut self) {
        for slot in &mut self.slots {
            slot.dirty = Dirty { input: slot.dev_in.len(), output: slot.dev_out.len(), partials: slot.partials.len() };
        }
    }
}

impl Drop for HostPipeline {
    fn drop(&mut self) {
        // The pinned buffers go to the driver's copies as plain slices, so cudarc records
        // no event on them and would free them without waiting: wait for every slot's
        // stream before the fields drop, and wipe whatever a failed call left marked.
        // Best effort: a drop has nowhere to report errors.
        for slot in &self.slots {
            let _ = slot.stream.synchronize();
        }
        let _ = self.wipe();
    }
}
