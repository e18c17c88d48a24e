//! Engine choice: the CPU engine, or the GPU engine when there is one and it measured
//! faster at start-up.
//!
//! [`Dispatcher::detect`] starts the GPU engine (crate feature `gpu`; none without it or
//! without a device) and, only when one is there, times both engines on the same 64 MiB
//! message (64 KiB segments) and the GPU on a one-segment message (its fixed cost per
//! call: launches, synchronisation, staging). The GPU is chosen for a call only when
//!
//! * its measured throughput is higher than the CPU's (never when it measured slower: the
//!   engine is then dropped, with its staging buffers, and only the measurement is kept),
//! * the segment size is a multiple of 16 (the kernel's vector path, the shape that was
//!   measured) and at least [`MIN_GPU_SEGMENT_SIZE`] (8 KiB): the kernel gives a warp a
//!   chunk of 512 blocks (8 KiB) and does a whole chunk's work for every started one, so a
//!   segment of `m` blocks runs at `m / (512·⌈m/512⌉)` of the measured rate (1 for
//!   multiples of 8 KiB such as the default 64 KiB; ¾ for 12 KiB; 1/16 for 512 bytes),
//! * and the message is large enough that the fixed cost is paid back with a margin of 2×
//!   at that segment size's rate: `len ≥ 2 · fixed / (1/cpu_rate − 1/(gpu_rate · efficiency))`.
//!
//! [`seal_auto`] and [`open_auto`] send messages below [`GPU_PROBE_MIN_LEN`] (1 MiB) or
//! with a segment size the GPU would not get straight to the CPU, without starting the
//! process-wide dispatcher: small messages never create a CUDA context. The first larger
//! one detects and calibrates, on a thread of its own with a rayon pool of its own (not
//! the global pool, whose workers may all be waiting for that very detection).
//!
//! A GPU failure that is not an authentication or format error (a driver error, memory
//! exhausted) falls back to the CPU, whose output is byte-identical. The environment
//! variable `CRYPTOCORE_BULK_ENGINE=cpu` turns the GPU off.

use std::sync::OnceLock;
use std::time::Duration;

use super::kernel_ref::CHUNK_BLOCKS;
use crate::envelope::{EncryptionContext, Envelope, EnvelopeError, Header, MessageSealer};
use crate::provider::KeyProvider;

/// Smallest segment size the GPU gets: one whole chunk of the kernel (512 blocks, 8 KiB).
pub const MIN_GPU_SEGMENT_SIZE: usize = CHUNK_BLOCKS * 16;

/// Messages below this size go to the CPU without the process-wide dispatcher being
/// started (no CUDA context, no calibration). The calibrated threshold is normally larger.
pub const GPU_PROBE_MIN_LEN: usize = 1 << 20;

/// Which engine ran a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Choice {
    /// [`super::cpu`].
    Cpu,
    /// `super::gpu` (crate feature `gpu`).
    Gpu,
}

/// What [`Dispatcher::detect`] measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Calibration {
    /// CPU engine seal throughput, bytes per second (0 when not measured: no GPU to
    /// compare with).
    pub cpu_bytes_per_sec: f64,
    /// GPU engine seal throughput, host memory to host memory, bytes per second, with
    /// 64 KiB segments (whole kernel chunks).
    pub gpu_bytes_per_sec: Option<f64>,
    /// GPU engine time for a one-segment message.
    pub gpu_fixed_cost: Option<Duration>,
    /// Smallest message sent to the GPU when its segment size is a multiple of 8 KiB (the
    /// default 64 KiB is); other sizes of at least 8 KiB need more (see
    /// [`Calibration::min_gpu_len_for`]). `None`: never.
    pub min_gpu_len: Option<usize>,
}

impl Calibration {
    /// The size rule of the module documentation, from measured rates.
    fn threshold(cpu: f64, gpu: f64, fixed: Duration) -> Option<usize> {
        if !(cpu > 0.0 && gpu > cpu) {
            return None;
        }
        let per_byte_gain = 1.0 / cpu - 1.0 / gpu;
        let len = 2.0 * fixed.as_secs_f64() / per_byte_gain;
        Some(len.ceil().min(usize::MAX as f64) as usize)
    }

    /// Smallest message with segments of `segment_size` bytes that goes to the GPU;
    /// `None`: never (segment size not a multiple of 16 or below 8 KiB, or the GPU not
    /// faster at that segment size's efficiency).
    pub fn min_gpu_len_for(&self, segment_size: usize) -> Option<usize> {
        if !gpu_segment_size(segment_size) {
            return None;
        }
        let min = self.min_gpu_len?;
        let efficiency = chunk_efficiency(segment_size);
        if efficiency >= 1.0 {
            return Some(min);
        }
        let (gpu, fixed) = (self.gpu_bytes_per_sec?, self.gpu_fixed_cost?);
        Self::threshold(self.cpu_bytes_per_sec, gpu * efficiency, fixed).map(|len| len.max(min))
    }
}

/// Whether the GPU kernel takes segments of this size at all (module documentation).
fn gpu_segment_size(segment_size: usize) -> bool {
    segment_size >= MIN_GPU_SEGMENT_SIZE && segment_size.is_multiple_of(16)
}

/// Useful fraction of the kernel's work for segments of `segment_size` bytes: it processes
/// whole 512-block chunks.
fn chunk_efficiency(segment_size: usize) -> f64 {
    let blocks = segment_size.div_ceil(16).max(1);
    let chunks = blocks.div_ceil(CHUNK_BLOCKS);
    blocks as f64 / (chunks * CHUNK_BLOCKS) as f64
}

/// Whether a message could go to the GPU: only then is the process-wide dispatcher
/// started.
fn worth_probing(len: usize, segment_size: usize) -> bool {
    len >= GPU_PROBE_MIN_LEN && gpu_segment_size(segment_size)
}

/// Picks the CPU or the GPU engine per call. See the module documentation.
pub struct Dispatcher {
    #[cfg(feature = "gpu")]
    gpu: Option<super::gpu::GpuEngine>,
    calibration: Calibration,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").field("calibration", &self.calibration).finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher that always uses the CPU.
    pub fn cpu_only() -> Self {
        Self {
            #[cfg(feature = "gpu")]
            gpu: None,
            calibration: Calibration::default(),
        }
    }

    /// Starts the GPU engine if the crate has the `gpu` feature, a device is present and
    /// `CRYPTOCORE_BULK_ENGINE` is not `cpu`, and measures both engines. Takes a fraction
    /// of a second with a GPU (engine start and about half a gigabyte of timed work),
    /// nothing without one. The CPU timing runs on a rayon pool of its own, so this may be
    /// called from any thread that is not a rayon worker ([`dispatcher`] calls it on a
    /// thread of its own).
    pub fn detect() -> Self {
        if std::env::var("CRYPTOCORE_BULK_ENGINE").is_ok_and(|v| v.eq_ignore_ascii_case("cpu")) {
            return Self::cpu_only();
        }
        #[cfg(feature = "gpu")]
        {
            if let Ok(gpu) = super::gpu::GpuEngine::new() {
                return Self::calibrated(gpu);
            }
        }
        Self::cpu_only()
    }

    #[cfg(feature = "gpu")]
    fn calibrated(gpu: super::gpu::GpuEngine) -> Self {
        match calibrate(&gpu) {
            Some(calibration) if calibration.min_gpu_len.is_some() => Self { gpu: Some(gpu), calibration },
            // Measured no faster than the CPU: never chosen, so release the engine (its
            // context and staging buffers) and keep only the measurement.
            Some(calibration) => {
                drop(gpu);
                Self { gpu: None, calibration }
            }
            // Calibration failed (a driver error): the GPU is not used.
            None => Self::cpu_only(),
        }
    }

    /// A dispatcher that sends every message with a GPU-shaped segment size (a multiple
    /// of 16, at least 8 KiB) to `gpu`: the GPU branch of [`Dispatcher::seal`] and
    /// [`Dispatcher::open`] under test, without a calibration.
    #[cfg(all(test, feature = "gpu"))]
    pub(crate) fn with_gpu_for_tests(gpu: super::gpu::GpuEngine) -> Self {
        Self {
            gpu: Some(gpu),
            calibration: Calibration {
                cpu_bytes_per_sec: 1.0,
                gpu_bytes_per_sec: Some(1e30),
                gpu_fixed_cost: Some(Duration::ZERO),
                min_gpu_len: Some(0),
            },
        }
    }

    /// What was measured.
    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    /// The GPU engine, when one was started and measured faster than the CPU.
    #[cfg(feature = "gpu")]
    pub fn gpu(&self) -> Option<&super::gpu::GpuEngine> {
        self.gpu.as_ref()
    }

    /// The engine a message of `len` plaintext bytes in segments of `segment_size` goes to.
    pub fn choose(&self, len: usize, segment_size: usize) -> Choice {
        let gpu_present = {
            #[cfg(feature = "gpu")]
            {
                self.gpu.is_some()
            }
            #[cfg(not(feature = "gpu"))]
            {
                false
            }
        };
        match self.calibration.min_gpu_len_for(segment_size) {
            Some(min) if gpu_present && len >= min => Choice::Gpu,
            _ => Choice::Cpu,
        }
    }

    /// Seals on the chosen engine; byte-identical either way.
    pub fn seal(&self, sealer: &MessageSealer, plaintext: &[u8]) -> Result<(Vec<u8>, Choice), EnvelopeError> {
        #[cfg(feature = "gpu")]
        if let (Choice::Gpu, Some(gpu)) =
            (self.choose(plaintext.len(), seal_segment_size(sealer, plaintext)), &self.gpu)
        {
            match gpu.seal(sealer, plaintext) {
                Ok(out) => return Ok((out, Choice::Gpu)),
                Err(super::gpu::GpuError::Envelope(e)) => return Err(e),
                Err(_) => {} // driver trouble: the CPU gives the same bytes
            }
        }
        super::cpu::seal(sealer, plaintext).map(|out| (out, Choice::Cpu))
    }

    /// Opens on the chosen engine; same plaintext and same errors either way.
    pub fn open<P: KeyProvider>(
        &self,
        envelope: &Envelope<P>,
        context: &EncryptionContext,
        ciphertext: &[u8],
    ) -> Result<(Vec<u8>, Choice), EnvelopeError> {
        #[cfg(feature = "gpu")]
        if let Some(gpu) = &self.gpu {
            // Cheap look at the header for the size and segment size; a malformed header
            // is left to the CPU path to report.
            if let Some((body, segment_size)) = open_shape(ciphertext)
                && self.choose(body, segment_size) == Choice::Gpu
            {
                match gpu.open(envelope, context, ciphertext) {
                    Ok(out) => return Ok((out, Choice::Gpu)),
                    Err(super::gpu::GpuError::Envelope(e)) => return Err(e),
                    Err(_) => {}
                }
            }
        }
        super::cpu::open(envelope, context, ciphertext).map(|out| (out, Choice::Cpu))
    }
}

/// The segment size a seal uses (the whole plaintext for the compact form).
fn seal_segment_size(sealer: &MessageSealer, plaintext: &[u8]) -> usize {
    sealer.segment_size().unwrap_or(plaintext.len().max(1))
}

/// Body length and segment size of a sealed message, from its header (the compact form's one
/// segment is the body less its tag); `None` if the header does not parse (the CPU path
/// reports that).
fn open_shape(ciphertext: &[u8]) -> Option<(usize, usize)> {
    let (header, header_len) = Header::parse(ciphertext).ok()?;
    let body = ciphertext.len() - header_len;
    Some((body, header.segment_size().map_or(body.saturating_sub(crate::aead::TAG_LEN), |s| s as usize)))
}

/// Times both engines. `None` if the GPU failed during calibration.
#[cfg(feature = "gpu")]
fn calibrate(gpu: &super::gpu::GpuEngine) -> Option<Calibration> {
    use std::time::Instant;

    use crate::envelope::{DEFAULT_SEGMENT_SIZE, Form};
    use crate::provider::WrappedKey;
    use crate::secret::DataKey;

    const LEN: usize = 64 << 20;
    let wrapped = vec![WrappedKey {
        provider_id: "calibration".into(),
        key_name: "calibration".into(),
        key_version: 1,
        blob: vec![0],
    }];
    let sealer = MessageSealer::new(
        crate::Backend::default(),
        &DataKey::generate(),
        wrapped,
        &EncryptionContext::new(),
        Form::Stream { segment_size: DEFAULT_SEGMENT_SIZE },
    )
    .ok()?;
    // The CPU engine on a pool of its own, as large as the global one: the global pool's
    // workers may all be blocked waiting for this calibration (in `dispatcher`), and a
    // job given to them would never run.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .thread_name(|i| format!("cryptocore-calibrate-{i}"))
        .build()
        .ok()?;
    let plaintext = vec![0x5Au8; LEN];
    let mut out = Vec::new();
    let best = |f: &mut dyn FnMut() -> bool| -> Option<Duration> {
        let mut best = Duration::MAX;
        // One warm-up (page faults, staging allocation, module load), then the best of 3.
        for round in 0..4 {
            let start = Instant::now();
            if !f() {
                return None;
            }
            if round > 0 {
                best = best.min(start.elapsed());
            }
        }
        Some(best)
    };
    let cpu = best(&mut || pool.install(|| super::cpu::seal_into(&sealer, &plaintext, &mut out).is_ok()))?;
    drop(pool);
    let gpu_time = best(&mut || gpu.seal_into(&sealer, &plaintext, &mut out).is_ok())?;
    let small = &plaintext[..DEFAULT_SEGMENT_SIZE as usize];
    let fixed = best(&mut || gpu.seal_into(&sealer, small, &mut out).is_ok())?;
    let rate = |d: Duration| LEN as f64 / d.as_secs_f64().max(1e-9);
    let (cpu_rate, gpu_rate) = (rate(cpu), rate(gpu_time));
    Some(Calibration {
        cpu_bytes_per_sec: cpu_rate,
        gpu_bytes_per_sec: Some(gpu_rate),
        gpu_fixed_cost: Some(fixed),
        min_gpu_len: Calibration::threshold(cpu_rate, gpu_rate, fixed),
    })
}

/// The process-wide dispatcher, detected on first use.
///
/// Detection runs on a thread of its own (joined here), never on the calling thread: a
/// rayon worker that called this would otherwise, while waiting for the calibration's
/// rayon work, run other queued jobs, and one of them calling this again would wait for
/// itself forever.
pub fn dispatcher() -> &'static Dispatcher {
    static GLOBAL: OnceLock<Dispatcher> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        std::thread::Builder::new()
            .name("cryptocore-bulk-detect".into())
            .spawn(Dispatcher::detect)
            .ok()
            .and_then(|detecting| detecting.join().ok())
            .unwrap_or_else(Dispatcher::cpu_only)
    })
}

/// Seals on the engine [`dispatcher`] picks: [`super::cpu::seal`] without the `gpu` feature,
/// without a device, and for messages that could not go to the GPU anyway (below
/// [`GPU_PROBE_MIN_LEN`], or segment sizes it does not take), which never start the
/// dispatcher.
pub fn seal_auto(sealer: &MessageSealer, plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    if !worth_probing(plaintext.len(), seal_segment_size(sealer, plaintext)) {
        return super::cpu::seal(sealer, plaintext);
    }
    dispatcher().seal(sealer, plaintext).map(|(out, _)| out)
}

/// Opens on the engine [`dispatcher`] picks: [`super::cpu::open`] without the `gpu` feature,
/// without a device, and for messages that could not go to the GPU anyway (as
/// [`seal_auto`]), which never start the dispatcher.
pub fn open_auto<P: KeyProvider>(
    envelope: &Envelope<P>,
    context: &EncryptionContext,
    ciphertext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    if !open_shape(ciphertext).is_some_and(|(body, segment_size)| worth_probing(body, segment_size)) {
        return super::cpu::open(envelope, context, ciphertext);
    }
    dispatcher().open(envelope, context, ciphertext).map(|(out, _)| out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use super::*;
    use crate::envelope::Form;
    use crate::keys::Keyring;
    use crate::provider::LocalProvider;

    #[test]
    fn threshold_never_picks_a_slower_gpu() {
        let ms = Duration::from_millis(1);
        assert_eq!(Calibration::threshold(10e9, 5e9, ms), None);
        assert_eq!(Calibration::threshold(10e9, 10e9, ms), None);
        assert_eq!(Calibration::threshold(0.0, 10e9, ms), None);
        // 1 ms fixed, CPU 10 GB/s, GPU 20 GB/s: break-even at 20 MB, chosen from 40 MB.
        let t = Calibration::threshold(10e9, 20e9, ms).unwrap();
        assert!((39_000_000..=41_000_000).contains(&t), "{t}");
    }

    #[test]
    fn segment_size_rules() {
        let c = Calibration {
            cpu_bytes_per_sec: 10e9,
            gpu_bytes_per_sec: Some(40e9),
            gpu_fixed_cost: Some(Duration::from_millis(1)),
            min_gpu_len: Calibration::threshold(10e9, 40e9, Duration::from_millis(1)),
        };
        let min = c.min_gpu_len.unwrap();
        // Whole chunks (multiples of 8 KiB): the calibrated threshold as it is.
        assert_eq!(c.min_gpu_len_for(8192), Some(min));
        assert_eq!(c.min_gpu_len_for(65536), Some(min));
        assert_eq!(c.min_gpu_len_for(16 << 20), Some(min));
        // Below one chunk, or not a multiple of 16: never.
        for s in [16, 4096, 8176, 8200, 65537, 65552 + 1] {
            assert_eq!(c.min_gpu_len_for(s), None, "segment size {s}");
        }
        // 12 KiB = 768 blocks in two chunks: 3/4 efficiency, a higher threshold.
        assert!((chunk_efficiency(12288) - 0.75).abs() < 1e-12);
        let t = c.min_gpu_len_for(12288).unwrap();
        let expected = Calibration::threshold(10e9, 30e9, Duration::from_millis(1)).unwrap();
        assert_eq!(t, expected);
        assert!(t > min);
        // Efficiency down to the CPU's rate: never.
        let slow = Calibration { gpu_bytes_per_sec: Some(10.5e9), ..c };
        assert_eq!(slow.min_gpu_len_for(8192 + 16), None, "8208 bytes: 513 blocks, efficiency ~1/2");
        assert!((chunk_efficiency(8192 + 16) - 513.0 / 1024.0).abs() < 1e-12);
    }

    #[test]
    fn small_messages_and_odd_segments_never_probe() {
        assert!(!worth_probing(GPU_PROBE_MIN_LEN - 1, 65536));
        assert!(!worth_probing(usize::MAX, 4096));
        assert!(!worth_probing(usize::MAX, 65536 + 8));
        assert!(worth_probing(GPU_PROBE_MIN_LEN, 65536));
        assert!(worth_probing(GPU_PROBE_MIN_LEN, 8192));
    }

    #[test]
    fn without_a_gpu_everything_goes_to_the_cpu() {
        let d = Dispatcher::cpu_only();
        assert_eq!(d.choose(usize::MAX, 65536), Choice::Cpu);
        let slow_gpu = Dispatcher {
            #[cfg(feature = "gpu")]
            gpu: None,
            calibration: Calibration { min_gpu_len: Some(0), ..Calibration::default() },
        };
        assert_eq!(slow_gpu.choose(1 << 30, 65536), Choice::Cpu, "no engine, no GPU choice");
    }

    #[test]
    fn auto_round_trips_and_matches_bulk_cpu() {
        let keyring = Arc::new(Keyring::in_memory());
        keyring.create_key("t/k").unwrap();
        let env = Envelope::new(LocalProvider::new(keyring));
        let ctx = EncryptionContext::new().with("tenant", "a");
        let sealer = env.sealer("t/k", &ctx, Form::Stream { segment_size: 4096 }).unwrap();
        let pt = vec![7u8; 100_000];
        let sealed = seal_auto(&sealer, &pt).unwrap();
        assert_eq!(sealed, super::super::cpu::seal(&sealer, &pt).unwrap());
        assert_eq!(open_auto(&env, &ctx, &sealed).unwrap(), pt);
        let mut bad = sealed.clone();
        let n = bad.len();
        bad[n - 20] ^= 1;
        assert!(open_auto(&env, &ctx, &bad).is_err());
    }
}
