//! `peers-rust`: the Rust side of the peer harness (`benches/peers/`). Measures seal and
//! open throughput on one thread and writes one JSON line per cell to `PEERS_OUT`, next to
//! the Python peers of `benches/peers/peers.py` (formats: `benches/peers/report.py`).
//!
//! Implementations (the impl names of the JSON lines):
//!
//! * `aws-lc-rs-raw`: raw aws-lc-rs AES-256-GCM (`LessSafeKey`, `seal_in_place_separate_tag`
//!   / `open_in_place`), one fixed key, distinct nonces made outside the timer, no AAD:
//!   the per-core limit.
//! * `cryptocore-envelope`: `Envelope::seal` / `Envelope::open` (envelope v1, stream form,
//!   default 64 KiB segments) over a `LocalProvider` on an in-memory `Keyring`, a fresh
//!   data key per message, an encryption context of two pairs. Sequential on the calling
//!   thread: no `bulk::cpu` (rayon), no cache refresh thread.
//! * `cryptocore-envelope-in-place`: the same messages through `Envelope::seal_in_place` /
//!   `Envelope::open_in_place` on a buffer that holds the plaintext (the ciphertext), made
//!   outside the timer exactly as the raw row makes its buffers: the envelope measured
//!   under the raw row's conditions.
//! * `cryptocore-envelope-into`: the same messages through `Envelope::seal_into` /
//!   `Envelope::open_into`, the calls for a caller that reuses its output buffers: one
//!   buffer per message of a batch, kept between samples (as the raw row keeps its
//!   buffers), so neither allocation nor fresh pages are timed.
//! * `kmsctl`: `kmsctl encrypt` / `kmsctl decrypt` on files, the whole command timed like
//!   peers.py times `age`, against a `kms-sidecar serve` that this binary starts (embedded
//!   default: SQLite, local root key, Unix socket). The size-0 lines are process start on
//!   an empty file.
//!
//! The method is peers.py's, step for step (see [`measure`]): fresh random inputs per
//! sample made outside the timer; one checked seal and open before anything counts; every
//! timed output checked outside the timer; warm-up; batches so a sample lasts at least
//! 5 ms; samples until at least 1 s is timed and at least 5 samples (3 from 64 MiB);
//! median per operation; GB/s = 10^9 bytes of plaintext per second.
//!
//! The `cryptocore-c-api` row (the C ABI) is measured not here but by a C program with the
//! same method, `benches/peers/c_api_bench.c`, which writes the same JSON lines.
//!
//! ```text
//! cargo build --release -p cryptocore-benches --bin peers-rust -p kms-sidecar --bin kms-sidecar --bin kmsctl
//! taskset -c 0 target/release/peers-rust --quick     # what benches/peers/run.sh runs
//! ```
#![allow(clippy::print_stderr)]

use std::cell::Cell;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, Tag, UnboundKey};
use clap::Parser;
use crypto_core::envelope::{DEFAULT_SEGMENT_SIZE, EncryptionContext, Envelope};
use crypto_core::keys::Keyring;
use crypto_core::provider::LocalProvider;
use cryptocore_benches::{Proc, wait_for_socket};
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const SIZES_FULL: [usize; 3] = [KIB, MIB, 64 * MIB];
const SIZES_QUICK: [usize; 2] = [KIB, MIB];

const RAW: &str = "aws-lc-rs-raw";
const ENVELOPE: &str = "cryptocore-envelope";
const ENVELOPE_INTO: &str = "cryptocore-envelope-into";
const ENVELOPE_IN_PLACE: &str = "cryptocore-envelope-in-place";
const KMSCTL: &str = "kmsctl";
/// Run (and row) order.
const IMPLS: [&str; 5] = [RAW, ENVELOPE_IN_PLACE, ENVELOPE, ENVELOPE_INTO, KMSCTL];

/// The key every envelope row seals under.
const KEY_NAME: &str = "peers/bench";
/// The encryption context: peers.py's `CONTEXT` (two pairs).
const CONTEXT: [(&str, &str); 2] = [("tenant", "acme"), ("purpose", "peer-bench")];

/// Versions of the crates behind the rows, from the lockfile this binary was built with.
const CARGO_LOCK: &str = include_str!("../../../Cargo.lock");

#[derive(Parser)]
#[command(
    name = "peers-rust",
    about = "Rust side of the peer harness: envelope, kmsctl and raw aws-lc-rs seal/open throughput \
             on one thread, as JSON lines (see benches/peers/README.md)"
)]
struct Cli {
    /// JSON-lines output [default: target/peers/results-rust.jsonl of this checkout].
    #[arg(long, env = "PEERS_OUT")]
    out: Option<PathBuf>,
    /// Smoke run: 1 KiB and 1 MiB, short durations (also PEERS_QUICK=1).
    #[arg(long)]
    quick: bool,
    /// Comma-separated impl names to run (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Comma-separated sizes in bytes (overrides the defaults).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Directory for kmsctl's files [default: `tmp` beside the output file, as for age].
    #[arg(long)]
    tmp: Option<PathBuf>,
    /// The kmsctl binary [default: next to this executable].
    #[arg(long, env = "PEERS_KMSCTL")]
    kmsctl: Option<PathBuf>,
    /// The kms-sidecar binary [default: next to this executable].
    #[arg(long, env = "PEERS_KMS_SIDECAR")]
    kms_sidecar: Option<PathBuf>,
    /// Run id written into the meta line (run.sh sets it).
    #[arg(long, env = "PEERS_RUN_ID", default_value = "")]
    run_id: String,
}

// --------------------------------------------------------------------------- method

/// Timing parameters: peers.py's `Method`.
struct Method {
    min_time: f64,
    min_runs: usize,
    min_runs_large: usize,
    sample_target: f64,
    warmup: f64,
    max_wall: f64,
    /// Sizes from here need only `min_runs_large` samples.
    large: usize,
    /// Inputs of one batch held in memory at most.
    max_batch_bytes: usize,
    max_runs: usize,
}

impl Method {
    fn new(quick: bool) -> Self {
        let (min_time, min_runs, sample_target, warmup, max_wall) =
            if quick { (0.15, 3, 0.002, 0.02, 10.0) } else { (1.0, 5, 0.005, 0.2, 120.0) };
        Self {
            min_time,
            min_runs,
            min_runs_large: 3,
            sample_target,
            warmup,
            max_wall,
            large: 64 * MIB,
            max_batch_bytes: 64 * MIB,
            max_runs: 100_000,
        }
    }

    fn describe(&self) -> String {
        format!(
            "warm-up {} s; samples of >= {} ms (batched below that); repeat until >= {} s timed and >= {} samples \
             (>= {} from {}); median per operation; fresh inputs from aws-lc-rs rand per sample; every output \
             checked outside the timer; outputs freed outside the timer; one thread",
            self.warmup,
            self.sample_target * 1e3,
            self.min_time,
            self.min_runs,
            self.min_runs_large,
            human_size(self.large)
        )
    }
}

fn human_size(n: usize) -> String {
    match n {
        0 => "0 B".into(),
        n if n >= MIB && n.is_multiple_of(MIB) => format!("{} MiB", n / MIB),
        n if n >= KIB && n.is_multiple_of(KIB) => format!("{} KiB", n / KIB),
        n => format!("{n} B"),
    }
}

/// A check of an output against its input failed (reported as `CHECK FAILED`, like
/// peers.py's `CheckFailed`).
#[derive(Debug)]
struct CheckFailed(String);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailed {}

fn check_failed<T>(msg: impl Into<String>) -> Result<T> {
    Err(Box::new(CheckFailed(msg.into())))
}

fn check_count(row: &str, pts: &[Vec<u8>], outs: &[Vec<u8>]) -> Result<()> {
    if outs.len() != pts.len() {
        return check_failed(format!("{row}: {} outputs for {} inputs", outs.len(), pts.len()));
    }
    Ok(())
}

fn require_equal(what: &str, i: usize, expected: &[u8], got: &[u8]) -> Result<()> {
    if expected != got {
        return check_failed(format!(
            "{what}: output {i} differs from the original ({} bytes vs {} bytes)",
            got.len(),
            expected.len()
        ));
    }
    Ok(())
}

/// One operation (seal or open) of one implementation, measured a batch at a time
/// (peers.py's `*_prep`, `*_run`, `*_check`).
trait Op {
    /// What `run` needs beyond the plaintexts, and where it leaves its outputs.
    type State;
    /// Outside the timer: prepares the batch (for open: seals the plaintexts).
    fn prep(&mut self, pts: &[Vec<u8>]) -> Result<Self::State>;
    /// Timed: the operation once per plaintext of the batch.
    fn run(&mut self, pts: &[Vec<u8>], st: &mut Self::State) -> Result<()>;
    /// Outside the timer: checks every output against its plaintext (for seal: opens it).
    fn check(&mut self, pts: &[Vec<u8>], st: Self::State) -> Result<()>;
}

/// `k` fresh random inputs of `size` bytes.
fn random_inputs(size: usize, k: usize) -> Result<Vec<Vec<u8>>> {
    (0..k)
        .map(|_| {
            let mut v = vec![0u8; size];
            aws_lc_rs::rand::fill(&mut v)?;
            Ok(v)
        })
        .collect()
}

/// One sample of `k` operations: seconds of the timed region.
fn sample<O: Op>(op: &mut O, size: usize, k: usize) -> Result<f64> {
    let pts = random_inputs(size, k)?;
    let mut st = op.prep(&pts)?;
    let t0 = Instant::now();
    op.run(&pts, &mut st)?;
    std::hint::black_box(&mut st);
    let t = t0.elapsed().as_secs_f64();
    // Checks, then frees the outputs: both outside the timer.
    op.check(&pts, st)?;
    Ok(t)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The result of one cell.
struct Measured {
    /// Median seconds per operation.
    seconds: f64,
    runs: usize,
    batch: usize,
    ops: usize,
    timed_s: f64,
    capped: bool,
}

/// peers.py's `measure`: correctness first, warm-up (which estimates the time per
/// operation and so the batch), then samples until enough is timed; the median per op.
fn measure<O: Op>(op: &mut O, size: usize, m: &Method) -> Result<Measured> {
    sample(op, size, 1)?;
    let mut est = Vec::new();
    let warm_end = Instant::now() + Duration::from_secs_f64(m.warmup);
    loop {
        est.push(sample(op, size, 1)?);
        if Instant::now() >= warm_end {
            break;
        }
    }
    let per_op = median(&mut est);
    let batch = if per_op >= m.sample_target {
        1
    } else {
        let b = (m.sample_target / per_op.max(1e-9)).ceil() as usize;
        b.min(m.max_batch_bytes / size.max(1)).max(1)
    };
    let min_runs = if size >= m.large { m.min_runs_large } else { m.min_runs };
    let mut samples = Vec::new();
    let mut timed = 0.0;
    let wall_end = Instant::now() + Duration::from_secs_f64(m.max_wall);
    let mut capped = false;
    loop {
        let t = sample(op, size, batch)?;
        samples.push(t / batch as f64);
        timed += t;
        if samples.len() >= min_runs && timed >= m.min_time {
            break;
        }
        if samples.len() >= m.max_runs || Instant::now() >= wall_end {
            capped = samples.len() < min_runs || timed < m.min_time;
            break;
        }
    }
    let runs = samples.len();
    Ok(Measured { seconds: median(&mut samples), runs, batch, ops: runs * batch, timed_s: timed, capped })
}

// --------------------------------------------------------------------------- aws-lc-rs-raw

/// Raw AES-256-GCM: one key, a nonce counter shared by seal and open so that no nonce
/// repeats under the key.
struct RawAead {
    key: LessSafeKey,
    counter: Cell<u64>,
}

impl RawAead {
    fn new() -> Result<Self> {
        let mut k = [0u8; 32];
        aws_lc_rs::rand::fill(&mut k)?;
        Ok(Self { key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k)?), counter: Cell::new(0) })
    }

    fn nonces(&self, n: usize) -> Vec<[u8; NONCE_LEN]> {
        (0..n)
            .map(|_| {
                let c = self.counter.get();
                self.counter.set(c + 1);
                let mut nonce = [0u8; NONCE_LEN];
                nonce[4..].copy_from_slice(&c.to_be_bytes());
                nonce
            })
            .collect()
    }

    /// Ciphertext ‖ tag of each plaintext under fresh nonces, ready for `RawOpen::run`.
    fn seal_all(&self, pts: &[Vec<u8>]) -> Result<RawOpenState> {
        let nonces = self.nonces(pts.len());
        let mut cts = Vec::with_capacity(pts.len());
        for (n, p) in nonces.iter().zip(pts) {
            let mut buf = Vec::with_capacity(p.len() + AES_256_GCM.tag_len());
            buf.extend_from_slice(p);
            self.key.seal_in_place_append_tag(Nonce::assume_unique_for_key(*n), Aad::empty(), &mut buf)?;
            cts.push(buf);
        }
        Ok(RawOpenState { nonces, bufs: cts, lens: Vec::with_capacity(pts.len()) })
    }

    fn version() -> String {
        format!("aws-lc-rs {} (aws-lc-sys {})", lock_version("aws-lc-rs"), lock_version("aws-lc-sys"))
    }

    fn note() -> String {
        "raw aws-lc-rs AES-256-GCM (LessSafeKey::seal_in_place_separate_tag / open_in_place, in place, no \
         output allocation), one fixed random key, distinct 12-byte nonces made outside the timer, no AAD; \
         the per-core limit"
            .into()
    }
}

struct RawSeal<'a>(&'a RawAead);

struct RawSealState {
    nonces: Vec<[u8; NONCE_LEN]>,
    /// Plaintext copies, encrypted in place by `run`.
    bufs: Vec<Vec<u8>>,
    tags: Vec<Tag>,
}

impl Op for RawSeal<'_> {
    type State = RawSealState;

    fn prep(&mut self, pts: &[Vec<u8>]) -> Result<RawSealState> {
        Ok(RawSealState { nonces: self.0.nonces(pts.len()), bufs: pts.to_vec(), tags: Vec::with_capacity(pts.len()) })
    }

    fn run(&mut self, _pts: &[Vec<u8>], st: &mut RawSealState) -> Result<()> {
        let key = &self.0.key;
        for (n, buf) in st.nonces.iter().zip(st.bufs.iter_mut()) {
            st.tags.push(key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(*n), Aad::empty(), buf)?);
        }
        Ok(())
    }

    fn check(&mut self, pts: &[Vec<u8>], st: RawSealState) -> Result<()> {
        if st.tags.len() != pts.len() {
            return check_failed(format!("{RAW}: {} outputs for {} inputs", st.tags.len(), pts.len()));
        }
        for (i, (((n, ct), tag), p)) in st.nonces.iter().zip(&st.bufs).zip(&st.tags).zip(pts).enumerate() {
            let mut buf = ct.clone();
            buf.extend_from_slice(tag.as_ref());
            let Ok(opened) = self.0.key.open_in_place(Nonce::assume_unique_for_key(*n), Aad::empty(), &mut buf) else {
                return check_failed(format!("{RAW}: seal output {i} did not open"));
            };
            require_equal(&format!("{RAW}: seal"), i, p, opened)?;
        }
        Ok(())
    }
}

struct RawOpen<'a>(&'a RawAead);

struct RawOpenState {
    nonces: Vec<[u8; NONCE_LEN]>,
    /// Ciphertext ‖ tag, decrypted in place by `run`.
    bufs: Vec<Vec<u8>>,
    /// Plaintext length of each, as `open_in_place` returned it.
    lens: Vec<usize>,
}

impl Op for RawOpen<'_> {
    type State = RawOpenState;

    fn prep(&mut self, pts: &[Vec<u8>]) -> Result<RawOpenState> {
        self.0.seal_all(pts)
    }

    fn run(&mut self, _pts: &[Vec<u8>], st: &mut RawOpenState) -> Result<()> {
        let key = &self.0.key;
        for (n, buf) in st.nonces.iter().zip(st.bufs.iter_mut()) {
            st.lens.push(key.open_in_place(Nonce::assume_unique_for_key(*n), Aad::empty(), buf)?.len());
        }
        Ok(())
    }

    fn check(&mut self, pts: &[Vec<u8>], st: RawOpenState) -> Result<()> {
        if st.lens.len() != pts.len() {
            return check_failed(format!("{RAW}: {} outputs for {} inputs", st.lens.len(), pts.len()));
        }
        for (i, ((buf, len), p)) in st.bufs.iter().zip(&st.lens).zip(pts).enumerate() {
            require_equal(&format!("{RAW}: open"), i, p, &buf[..*len])?;
        }
        Ok(())
    }
}

// --------------------------------------------------------------------------- cryptocore-envelope

/// The envelope a user builds for a local keyring (crate docs of crypto-core): no data-key
/// cache, so every seal generates and wraps a fresh data key and every open unwraps it.
struct EnvelopeBench {
    envelope: Envelope<LocalProvider>,
    context: EncryptionContext,
}

impl EnvelopeBench {
    fn new() -> Result<Self> {
        let ring = Arc::new(Keyring::in_memory());
        ring.create_key(KEY_NAME)?;
        Ok(Self { envelope: Envelope::new(LocalProvider::new(ring)), context: CONTEXT.into_iter().collect() })
    }

    fn seal(&self, pt: &[u8]) -> Result<Vec<u8>> {
        Ok(self.envelope.seal(KEY_NAME, &self.context, pt)?)
    }

    fn open(&self, ct: &[u8]) -> Result<Vec<u8>> {
        Ok(self.envelope.open(&self.context, ct)?)
    }

    /// Opens a sealed message outside the timer, checking its header as well.
    fn open_checked(&self, i: usize, ct: &[u8]) -> Result<Vec<u8>> {
        let header = self.envelope.inspect(ct)?;
        if header.key_name() != KEY_NAME || header.segment_size() != Some(DEFAULT_SEGMENT_SIZE) {
            return check_failed(format!(
                "{ENVELOPE}: seal output {i}: key {:?}, segment size {:?}; expected {KEY_NAME:?}, stream form of \
                 {DEFAULT_SEGMENT_SIZE}",
                header.key_name(),
                header.segment_size()
            ));
        }
        self.open(ct).or_else(|e| check_failed(format!("{ENVELOPE}: seal output {i} did not open: {e}")))
    }

    /// Outside the timer: one output per input, and each sealed output of row `row` opens
    /// (header checked) to its input.
    fn check_sealed(&self, row: &str, pts: &[Vec<u8>], outs: &[Vec<u8>]) -> Result<()> {
        check_count(row, pts, outs)?;
        for (i, (ct, p)) in outs.iter().zip(pts).enumerate() {
            require_equal(&format!("{row}: seal output did not open"), i, p, &self.open_checked(i, ct)?)?;
        }
        Ok(())
    }

    /// Outside the timer: one output per input, and each opened output of row `row` is its
    /// input.
    fn check_opened(row: &str, pts: &[Vec<u8>], outs: &[Vec<u8>]) -> Result<()> {
        check_count(row, pts, outs)?;
        for (i, (o, p)) in outs.iter().zip(pts).enumerate() {
            require_equal(&format!("{row}: open"), i, p, o)?;
        }
        Ok(())
    }

    fn version() -> String {
        format!(
            "crypto-core {} (aws-lc-rs {}, aws-lc-sys {})",
            env!("CARGO_PKG_VERSION"),
            lock_version("aws-lc-rs"),
            lock_version("aws-lc-sys")
        )
    }

    fn note() -> String {
        format!(
            "crypto_core::envelope::Envelope::seal / Envelope::open: the one-shot calls for a whole message in \
             memory, envelope v1 stream form with the default {} KiB segments (the compact form stops at 16 MiB), \
             aws-lc backend, sequential on the calling thread (no bulk::cpu / rayon); LocalProvider over an \
             in-memory Keyring, no data-key cache (a fresh data key generated and wrapped per seal, unwrapped per \
             open; no CachingProvider); encryption context of two pairs; a new output Vec per message, as \
             seal/open return it (allocated inside the timer, where the kernel also faults in fresh pages when the \
             allocator has returned memory to it)",
            DEFAULT_SEGMENT_SIZE as usize / KIB
        )
    }
}

struct EnvelopeSeal<'a>(&'a EnvelopeBench);

impl Op for EnvelopeSeal<'_> {
    type State = Vec<Vec<u8>>;

    fn prep(&mut self, pts: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        Ok(Vec::with_capacity(pts.len()))
    }

    fn run(&mut self, pts: &[Vec<u8>], outs: &mut Vec<Vec<u8>>) -> Result<()> {
        for p in pts {
            outs.push(self.0.seal(p)?);
        }
        Ok(())
    }

    fn check(&mut self, pts: &[Vec<u8>], outs: Vec<Vec<u8>>) -> Result<()> {
        self.0.check_sealed(ENVELOPE, pts, &outs)
    }
}

struct EnvelopeOpen<'a>(&'a EnvelopeBench);

impl Op for EnvelopeOpen<'_> {
    type State = (Vec<Vec<u8>>, Vec<Vec<u8>>);

    fn prep(&mut self, pts: &[Vec<u8>]) -> Result<Self::State> {
        let cts = pts.iter().map(|p| self.0.seal(p)).collect::<Result<Vec<_>>>()?;
        Ok((cts, Vec::with_capacity(pts.len())))
    }

    fn run(&mut self, _pts: &[Vec<u8>], (cts, outs): &mut Self::State) -> Result<()> {
        for c in cts.iter() {
            outs.push(self.0.open(c)?);
        }
        Ok(())
    }

    fn check(&mut self, pts: &[Vec<u8>], (_, outs): Self::State) -> Result<()> {
        EnvelopeBench::check_opened(ENVELOPE, pts, &outs)
    }
}

/// Output buffers of the `-into` row, one per message of a batch, kept between samples.
/// The first sample at a new batch size grows the pool (its pages are faulted in then);
/// the median over the samples is that of the reused buffers.
#[derive(Default)]
struct Pool(Vec<Vec<u8>>);

impl Pool {
    fn take(&mut self, n: usize) -> Vec<Vec<u8>> {
        let mut bufs = std::mem::take(&mut self.0);
        bufs.resize_with(n, Vec::new);
        bufs
    }
}

fn envelope_into_note() -> String {
    format!(
        "crypto_core::envelope::Envelope::seal_into / Envelope::open_into: as {ENVELOPE} (stream form, {} KiB \
         segments, a fresh data key per seal, unwrapped per open, context of two pairs) but into output buffers \
         the caller reuses: one per message of a batch, kept between samples like the raw row's buffers, so \
         neither allocation nor page faults are timed",
        DEFAULT_SEGMENT_SIZE as usize / KIB
    )
}

fn envelope_in_place_note() -> String {
    format!(
        "crypto_core::envelope::Envelope::seal_in_place / Envelope::open_in_place: as {ENVELOPE} (stream form, {} \
         KiB segments, a fresh data key per seal, unwrapped per open, context of two pairs) on a buffer that holds \
         the input, copied outside the timer with room for the header and tags, like the raw row's buffers",
        DEFAULT_SEGMENT_SIZE as usize / KIB
    )
}

/// Seal in place: the buffers are copies of the inputs made in `prep` (outside the timer,
/// with the capacity of the sealed message), as `RawSeal` makes its buffers.
struct EnvelopeSealInPlace<'a>(&'a EnvelopeBench);

impl Op for EnvelopeSealInPlace<'_> {
    type State = Vec<Vec<u8>>;

    fn prep(&mut self, pts: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        Ok(pts.iter().map(|p| in_place_buffer(p)).collect())
    }

    fn run(&mut self, _pts: &[Vec<u8>], bufs: &mut Vec<Vec<u8>>) -> Result<()> {
        let env = self.0;
        for buf in bufs.iter_mut() {
            env.envelope.seal_in_place(KEY_NAME, &env.context, buf)?;
        }
        Ok(())
    }

    fn check(&mut self, pts: &[Vec<u8>], bufs: Vec<Vec<u8>>) -> Result<()> {
        self.0.check_sealed(ENVELOPE_IN_PLACE, pts, &bufs)
    }
}

/// A copy of `p` with room for the sealed message (header, tags): what a caller that
/// reserves `MessageSealer::sealed_len` has, made outside the timer.
fn in_place_buffer(p: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(p.len() + p.len() / DEFAULT_SEGMENT_SIZE as usize * 16 + 4096);
    buf.extend_from_slice(p);
    buf
}

/// Open in place: the sealed messages are made in `prep` (outside the timer).
struct EnvelopeOpenInPlace<'a>(&'a EnvelopeBench);

impl Op for EnvelopeOpenInPlace<'_> {
    type State = Vec<Vec<u8>>;

    fn prep(&mut self, pts: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        pts.iter().map(|p| self.0.seal(p)).collect()
    }

    fn run(&mut self, _pts: &[Vec<u8>], bufs: &mut Vec<Vec<u8>>) -> Result<()> {
        let env = self.0;
        for buf in bufs.iter_mut() {
            env.envelope.open_in_place(&env.context, buf)?;
        }
        Ok(())
    }

    fn check(&mut self, pts: &[Vec<u8>], bufs: Vec<Vec<u8>>) -> Result<()> {
        EnvelopeBench::check_opened(ENVELOPE_IN_PLACE, pts, &bufs)
    }
}

struct EnvelopeSealInto<'a>(&'a EnvelopeBench, Pool);

impl Op for EnvelopeSealInto<'_> {
    type State = Vec<Vec<u8>>;

    fn prep(&mut self, pts: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        Ok(self.1.take(pts.len()))
    }

    fn run(&mut self, pts: &[Vec<u8>], outs: &mut Vec<Vec<u8>>) -> Result<()> {
        let env = self.0;
        for (p, out) in pts.iter().zip(outs.iter_mut()) {
            env.envelope.seal_into(KEY_NAME, &env.context, p, out)?;
        }
        Ok(())
    }

    fn check(&mut self, pts: &[Vec<u8>], outs: Vec<Vec<u8>>) -> Result<()> {
        self.0.check_sealed(ENVELOPE_INTO, pts, &outs)?;
        self.1.0 = outs;
        Ok(())
    }
}

struct EnvelopeOpenInto<'a>(&'a EnvelopeBench, Pool);

impl Op for EnvelopeOpenInto<'_> {
    type State = (Vec<Vec<u8>>, Vec<Vec<u8>>);

    fn prep(&mut self, pts: &[Vec<u8>]) -> Result<Self::State> {
        let cts = pts.iter().map(|p| self.0.seal(p)).collect::<Result<Vec<_>>>()?;
        Ok((cts, self.1.take(pts.len())))
    }

    fn run(&mut self, _pts: &[Vec<u8>], (cts, outs): &mut Self::State) -> Result<()> {
        let env = self.0;
        for (c, out) in cts.iter().zip(outs.iter_mut()) {
            env.envelope.open_into(&env.context, c, out)?;
        }
        Ok(())
    }

    fn check(&mut self, pts: &[Vec<u8>], (_, outs): Self::State) -> Result<()> {
        EnvelopeBench::check_opened(ENVELOPE_INTO, pts, &outs)?;
        self.1.0 = outs;
        Ok(())
    }
}

// --------------------------------------------------------------------------- kmsctl

/// `kmsctl` against a `kms-sidecar serve` of its own, in temporary directories.
struct Kmsctl {
    kmsctl: PathBuf,
    endpoint: String,
    version: String,
    /// Stopped before the directories go.
    _sidecar: Proc,
    /// Input, ciphertext and output files (under the harness's tmp dir, like age's).
    files: tempfile::TempDir,
    /// The sidecar's data directory and socket (system temp dir: a short socket path).
    _data: tempfile::TempDir,
}

/// A binary next to this executable unless given.
fn sibling(given: Option<PathBuf>, name: &str, flag: &str) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name(name),
    };
    if !path.is_file() {
        return Err(format!(
            "{} not found: build it (cargo build --release -p kms-sidecar --bins: the same profile as this binary) or \
             pass {flag}",
            path.display()
        )
        .into());
    }
    Ok(path)
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// `argv` run to completion with its output captured; an error carrying its stderr unless
/// it exits 0.
fn must(mut cmd: Command, what: &str) -> Result<std::process::Output> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{what}: cannot run: {e}"))?;
    if !out.status.success() {
        return check_failed(format!("{what} exited {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(out)
}

impl Kmsctl {
    fn start(kmsctl: PathBuf, sidecar: PathBuf, tmp_root: &Path) -> Result<Self> {
        let data = tempfile::Builder::new().prefix("peers-kms-").tempdir()?;
        let data_dir = data.path().join("kms");
        let socket = data_dir.join("kms.sock");
        let log_path = data.path().join("sidecar.log");
        let log = File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let child = Command::new(&sidecar)
            .args(["serve", "--data-dir"])
            .arg(&data_dir)
            .env_remove("KMS_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: cannot start: {e}", sidecar.display()))?;
        let mut proc = Proc(child);
        wait_for_socket(&socket, &mut proc.0, Duration::from_secs(30))
            .map_err(|e| format!("kms-sidecar serve: {e}: {}", log_tail(&log_path)))?;
        std::fs::create_dir_all(tmp_root).map_err(|e| format!("{}: {e}", tmp_root.display()))?;
        let files = tempfile::Builder::new().prefix("kmsctl-").tempdir_in(tmp_root)?;
        let version_of = |bin: &Path| -> Result<String> {
            let mut c = Command::new(bin);
            c.arg("--version");
            Ok(String::from_utf8_lossy(&must(c, &format!("{} --version", bin.display()))?.stdout).trim().to_owned())
        };
        let version = format!("{} (kms-sidecar: {})", version_of(&kmsctl)?, version_of(&sidecar)?);
        let k = Kmsctl {
            kmsctl,
            endpoint: format!("unix://{}", socket.display()),
            version,
            _sidecar: proc,
            files,
            _data: data,
        };
        let mut create = k.command("key");
        create.args(["create", KEY_NAME]);
        must(create, &format!("kmsctl key create {KEY_NAME}"))?;
        Ok(k)
    }

    /// `kmsctl --endpoint … <sub>`, with no stray client settings from the environment.
    fn command(&self, sub: &str) -> Command {
        let mut c = Command::new(&self.kmsctl);
        c.arg("--endpoint").arg(&self.endpoint).arg(sub);
        for var in ["KMS_CA_CERT", "KMS_CLIENT_CERT", "KMS_CLIENT_KEY", "KMS_TOKEN"] {
            c.env_remove(var);
        }
        c
    }

    fn with_context(mut c: Command) -> Command {
        for (k, v) in CONTEXT {
            c.arg("--context").arg(format!("{k}={v}"));
        }
        c
    }

    fn encrypt_cmd(&self, input: &Path, output: &Path) -> Command {
        let mut c = self.command("encrypt");
        c.args(["--key", KEY_NAME]);
        let mut c = Self::with_context(c);
        c.arg("--in").arg(input).arg("--out").arg(output);
        c
    }

    fn decrypt_cmd(&self, input: &Path, output: &Path) -> Command {
        let mut c = Self::with_context(self.command("decrypt"));
        c.arg("--in").arg(input).arg("--out").arg(output);
        c
    }

    /// Input, ciphertext and output file of batch slot `i`.
    fn paths(&self, i: usize) -> (PathBuf, PathBuf, PathBuf) {
        let d = self.files.path();
        (d.join(format!("in-{i}.bin")), d.join(format!("ct-{i}.cce")), d.join(format!("out-{i}.bin")))
    }

    /// For the timed region: no stdio, as peers.py runs age.
    fn quiet(mut c: Command) -> Command {
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        c
    }

    fn note() -> String {
        format!(
            "`kmsctl --endpoint unix://… encrypt --key K --context tenant=acme --context purpose=peer-bench --in in \
             --out out` / `kmsctl … decrypt --context … --in ct --out out` on files in the page cache \
             (target/peers/tmp), against `kms-sidecar serve` started by the harness (embedded default: SQLite, \
             local root key, Unix socket) on the same core; the whole command is timed, so every figure includes \
             process start, the gRPC connection and one data-key call to the sidecar (see the 0 B lines); \
             streaming EncryptingWriter / DecryptingReader, {} KiB segments, output written atomically",
            DEFAULT_SEGMENT_SIZE as usize / KIB
        )
    }
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).map_err(|e| format!("{}: {e}", path.display()).into())
}

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("{}: {e}", path.display()).into()),
        _ => Ok(()),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).or_else(|e| check_failed(format!("{KMSCTL}: no output {}: {e}", path.display())))
}

/// Commands prepared outside the timer, and their exit statuses.
struct KmsState {
    cmds: Vec<Command>,
    statuses: Vec<ExitStatus>,
}

fn run_commands(st: &mut KmsState) -> Result<()> {
    for c in st.cmds.iter_mut() {
        st.statuses.push(c.status()?);
    }
    Ok(())
}

struct KmsSeal<'a>(&'a Kmsctl);

impl Op for KmsSeal<'_> {
    type State = KmsState;

    fn prep(&mut self, pts: &[Vec<u8>]) -> Result<KmsState> {
        let mut cmds = Vec::with_capacity(pts.len());
        for (i, p) in pts.iter().enumerate() {
            let (src, ct, _) = self.0.paths(i);
            write_file(&src, p)?;
            remove_file(&ct)?;
            cmds.push(Kmsctl::quiet(self.0.encrypt_cmd(&src, &ct)));
        }
        Ok(KmsState { cmds, statuses: Vec::with_capacity(pts.len()) })
    }

    fn run(&mut self, _pts: &[Vec<u8>], st: &mut KmsState) -> Result<()> {
        run_commands(st)
    }

    fn check(&mut self, pts: &[Vec<u8>], st: KmsState) -> Result<()> {
        for (i, status) in st.statuses.iter().enumerate() {
            if !status.success() {
                let (src, ct, _) = self.0.paths(i);
                must(self.0.encrypt_cmd(&src, &ct), "kmsctl encrypt")?; // rerun for the message
                return check_failed(format!("kmsctl encrypt exited {status}"));
            }
        }
        if st.statuses.len() != pts.len() {
            return check_failed(format!("{KMSCTL}: {} outputs for {} inputs", st.statuses.len(), pts.len()));
        }
        for (i, p) in pts.iter().enumerate() {
            let (_, ct, out) = self.0.paths(i);
            remove_file(&out)?;
            must(self.0.decrypt_cmd(&ct, &out), "kmsctl decrypt")?;
            require_equal(&format!("{KMSCTL}: seal output did not open"), i, p, &read_file(&out)?)?;
        }
        Ok(())
    }
}

struct KmsOpen<'a>(&'a Kmsctl);

impl Op for KmsOpen<'_> {
    type State = KmsState;

    fn prep(&mut self, pts: &[Vec<u8>]) -> Result<KmsState> {
        let mut cmds = Vec::with_capacity(pts.len());
        for (i, p) in pts.iter().enumerate() {
            let (src, ct, out) = self.0.paths(i);
            write_file(&src, p)?;
            remove_file(&ct)?;
            must(self.0.encrypt_cmd(&src, &ct), "kmsctl encrypt")?;
            remove_file(&out)?;
            cmds.push(Kmsctl::quiet(self.0.decrypt_cmd(&ct, &out)));
        }
        Ok(KmsState { cmds, statuses: Vec::with_capacity(pts.len()) })
    }

    fn run(&mut self, _pts: &[Vec<u8>], st: &mut KmsState) -> Result<()> {
        run_commands(st)
    }

    fn check(&mut self, pts: &[Vec<u8>], st: KmsState) -> Result<()> {
        for (i, status) in st.statuses.iter().enumerate() {
            if !status.success() {
                let (_, ct, out) = self.0.paths(i);
                must(self.0.decrypt_cmd(&ct, &out), "kmsctl decrypt")?;
                return check_failed(format!("kmsctl decrypt exited {status}"));
            }
        }
        if st.statuses.len() != pts.len() {
            return check_failed(format!("{KMSCTL}: {} outputs for {} inputs", st.statuses.len(), pts.len()));
        }
        for (i, p) in pts.iter().enumerate() {
            require_equal(&format!("{KMSCTL}: open"), i, p, &read_file(&self.0.paths(i).2)?)?;
        }
        Ok(())
    }
}

// --------------------------------------------------------------------------- output

/// Versions from the Cargo.lock this binary was built with.
fn lock_version(package: &str) -> String {
    let needle = format!("name = \"{package}\"\nversion = \"");
    CARGO_LOCK.find(&needle).and_then(|at| CARGO_LOCK[at + needle.len()..].split('"').next()).unwrap_or("?").to_owned()
}

/// What one row is: name, version and what was run.
struct Row {
    name: &'static str,
    version: String,
    note: String,
    /// Whether it runs in this process (then this process must stay single-threaded).
    in_process: bool,
}

/// The JSON-lines file, and the failures so far.
struct Emitter {
    out: BufWriter<File>,
    quick: bool,
    affinity: Vec<u32>,
    failures: Vec<String>,
}

impl Emitter {
    fn line(&mut self, v: Value) -> Result<()> {
        writeln!(self.out, "{v}")?;
        self.out.flush()?;
        Ok(())
    }

    fn skip(&mut self, name: &str, e: &dyn std::error::Error) -> Result<()> {
        eprintln!("peers-rust: SKIPPED {name}: {e}");
        self.failures.push(format!("{name}: could not be set up ({e})"));
        self.line(json!({"kind": "skip", "impl": name, "note": e.to_string()}))
    }

    /// Every cell of one row: seal and open at each size (for whole commands, first at
    /// size 0: process start).
    fn row<S: Op, O: Op>(&mut self, row: &Row, seal: &mut S, open: &mut O, sizes: &[usize], m: &Method) -> Result<()> {
        self.line(json!({"kind": "version", "impl": row.name, "version": row.version, "note": row.note}))?;
        let mut cells: Vec<(&str, usize)> = Vec::new();
        if !row.in_process {
            cells.extend([("seal", 0), ("open", 0)]);
        }
        cells.extend(sizes.iter().flat_map(|&s| [("seal", s), ("open", s)]));
        for (op, size) in cells {
            let r = if op == "seal" { measure(seal, size, m) } else { measure(open, size, m) };
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    let what = if e.downcast_ref::<CheckFailed>().is_some() { "CHECK FAILED" } else { "ERROR" };
                    eprintln!("peers-rust: {what} {} {op} {}: {e}", row.name, human_size(size));
                    self.failures.push(format!("{} {op} {}: {what}: {e}", row.name, human_size(size)));
                    self.line(json!({"kind": "error", "impl": row.name, "op": op, "size": size,
                                     "note": format!("{what}: {e}")}))?;
                    continue;
                }
            };
            let gbps = size as f64 / r.seconds / 1e9;
            let mut note = if size == 0 {
                format!("process start + empty file: the start cost included in every {} figure", row.name)
            } else {
                row.note.clone()
            };
            if r.capped {
                note.push_str(&format!("; stopped at the {} s wall-clock cap", m.max_wall));
            }
            self.line(json!({
                "kind": "result",
                "impl": row.name,
                "op": op,
                "size": size,
                "gbps": (gbps * 1e6).round() / 1e6,
                "runs": r.runs,
                "note": note,
                "seconds": r.seconds,
                "batch": r.batch,
                "ops": r.ops,
                "timed_s": (r.timed_s * 1e4).round() / 1e4,
                "version": row.version,
                "quick": self.quick,
                "affinity": self.affinity,
            }))?;
            let per = if r.seconds < 1e-3 {
                format!("{:.2} µs", r.seconds * 1e6)
            } else {
                format!("{:.2} ms", r.seconds * 1e3)
            };
            eprintln!(
                "  {:20} {op:4} {:>7}: {gbps:9.4} GB/s  ({per}/op, median of {} samples x {})",
                row.name,
                human_size(size),
                r.runs,
                r.batch
            );
        }
        if row.in_process {
            // Single-threaded means what it says: nothing (rayon, a cache refresher) may
            // have started a thread behind the measurement's back.
            let threads = threads()?;
            if threads != 1 {
                let msg = format!("{threads} threads in this process after the {} cells, not 1", row.name);
                eprintln!("peers-rust: ERROR {msg}");
                self.failures.push(msg.clone());
                self.line(json!({"kind": "error", "impl": row.name, "op": "seal", "size": 0, "note": msg}))?;
            }
        }
        Ok(())
    }
}

/// Threads of this process (`/proc/self/status`).
fn threads() -> Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "/proc/self/status: no Threads line".into())
}

/// The CPUs this process may run on (`Cpus_allowed_list` of `/proc/self/status`).
fn affinity() -> Result<Vec<u32>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .ok_or("/proc/self/status: no Cpus_allowed_list line")?;
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let bad = || format!("Cpus_allowed_list: cannot parse {part:?}");
        let (a, b): (u32, u32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        cpus.extend(a..=b);
    }
    Ok(cpus)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().into())
        })
        .unwrap_or_else(|| "?".into())
}

/// Now in UTC, `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, H. Hinnant).
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

// --------------------------------------------------------------------------- main

fn run(cli: Cli) -> Result<Vec<String>> {
    let quick = cli.quick || std::env::var("PEERS_QUICK").is_ok_and(|v| v == "1");
    let m = Method::new(quick);
    let sizes: Vec<usize> = if !cli.sizes.is_empty() {
        cli.sizes.clone()
    } else if quick {
        SIZES_QUICK.to_vec()
    } else {
        SIZES_FULL.to_vec()
    };
    if let Some(bad) = cli.only.iter().find(|n| !IMPLS.contains(&n.as_str())) {
        return Err(format!("--only: unknown impl {bad:?} (known: {})", IMPLS.join(", ")).into());
    }
    let selected = |name: &str| cli.only.is_empty() || cli.only.iter().any(|n| n == name);
    let out_path = cli.out.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("peers").join("results-rust.jsonl")
    });
    let out_dir = out_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let tmp_root = cli.tmp.clone().unwrap_or_else(|| out_dir.join("tmp"));
    let affinity = affinity()?;
    if affinity.len() != 1 {
        eprintln!(
            "peers-rust: WARNING: this process may run on CPUs {affinity:?}, not one core; use benches/peers/run.sh \
             (taskset -c 0) for the published figures"
        );
    }
    if quick {
        eprintln!("peers-rust: --quick: smoke-run durations and sizes, not figures to publish");
    }

    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let mut partial = out_path.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = File::create(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    let mut em = Emitter { out: BufWriter::new(file), quick, affinity: affinity.clone(), failures: Vec::new() };
    em.line(json!({
        "kind": "meta",
        "source": "benches/src/bin/peers-rust.rs",
        "run_id": cli.run_id,
        "date": utc_now(),
        "quick": quick,
        "affinity": affinity,
        "cpu": cpu_model(),
        "method": m.describe(),
    }))?;

    if selected(RAW) {
        match RawAead::new() {
            Ok(raw) => {
                let row = Row { name: RAW, version: RawAead::version(), note: RawAead::note(), in_process: true };
                em.row(&row, &mut RawSeal(&raw), &mut RawOpen(&raw), &sizes, &m)?;
            }
            Err(e) => em.skip(RAW, e.as_ref())?,
        }
    }
    if selected(ENVELOPE_IN_PLACE) {
        match EnvelopeBench::new() {
            Ok(env) => {
                let row = Row {
                    name: ENVELOPE_IN_PLACE,
                    version: EnvelopeBench::version(),
                    note: envelope_in_place_note(),
                    in_process: true,
                };
                em.row(&row, &mut EnvelopeSealInPlace(&env), &mut EnvelopeOpenInPlace(&env), &sizes, &m)?;
            }
            Err(e) => em.skip(ENVELOPE_IN_PLACE, e.as_ref())?,
        }
    }
    if selected(ENVELOPE) {
        match EnvelopeBench::new() {
            Ok(env) => {
                let row = Row {
                    name: ENVELOPE,
                    version: EnvelopeBench::version(),
                    note: EnvelopeBench::note(),
                    in_process: true,
                };
                em.row(&row, &mut EnvelopeSeal(&env), &mut EnvelopeOpen(&env), &sizes, &m)?;
            }
            Err(e) => em.skip(ENVELOPE, e.as_ref())?,
        }
    }
    if selected(ENVELOPE_INTO) {
        match EnvelopeBench::new() {
            Ok(env) => {
                let row = Row {
                    name: ENVELOPE_INTO,
                    version: EnvelopeBench::version(),
                    note: envelope_into_note(),
                    in_process: true,
                };
                let (mut seal, mut open) =
                    (EnvelopeSealInto(&env, Pool::default()), EnvelopeOpenInto(&env, Pool::default()));
                em.row(&row, &mut seal, &mut open, &sizes, &m)?;
            }
            Err(e) => em.skip(ENVELOPE_INTO, e.as_ref())?,
        }
    }
    if selected(KMSCTL) {
        let started = sibling(cli.kmsctl.clone(), "kmsctl", "--kmsctl / PEERS_KMSCTL").and_then(|kmsctl| {
            let sidecar = sibling(cli.kms_sidecar.clone(), "kms-sidecar", "--kms-sidecar / PEERS_KMS_SIDECAR")?;
            Kmsctl::start(kmsctl, sidecar, &tmp_root)
        });
        match started {
            Ok(k) => {
                let row = Row { name: KMSCTL, version: k.version.clone(), note: Kmsctl::note(), in_process: false };
                em.row(&row, &mut KmsSeal(&k), &mut KmsOpen(&k), &sizes, &m)?;
                eprintln!(
                    "peers-rust: kmsctl figures are whole commands: they include process start (the 0 B lines are \
                     that cost alone)"
                );
            }
            Err(e) => em.skip(KMSCTL, e.as_ref())?,
        }
    }

    em.out.flush()?;
    drop(em.out);
    std::fs::rename(&partial, &out_path).map_err(|e| format!("{}: {e}", out_path.display()))?;
    eprintln!("peers-rust: wrote {}", out_path.display());
    Ok(em.failures)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(failures) if failures.is_empty() => ExitCode::SUCCESS,
        Ok(failures) => {
            eprintln!("peers-rust: FAILED:\n  {}", failures.join("\n  "));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("peers-rust: error: {e}");
            ExitCode::FAILURE
        }
    }
}
