//! GPU bulk engine benchmark (crate feature `gpu`). Prints, for messages of 1 MiB to 4 GiB:
//! device-resident seal/open GB/s (data already in GPU memory), host-to-host seal/open
//! GB/s (through PCIe), and the CPU engine (`bulk::cpu`, all cores) on the same message;
//! plus pinned PCIe bandwidth, the device, the driver and the dispatcher's calibration.
//! Every GPU output is compared with the CPU engine's before its time is reported.
//!
//! Built on a machine with a Rust toolchain and run on the GPU machine by
//! `benches/gpu/run.sh`:
//!
//! ```text
//! cargo build --release -p crypto-core --features gpu --example gpu_bench
//! ```
//!
//! Options: `--max-mib N` (largest message, default 4096), `--segment-size BYTES` (default
//! 65536), `--min-time-ms N` (time per measurement, default 300).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crypto_core::bulk::{self, gpu::GpuEngine};
use crypto_core::envelope::{EncryptionContext, Envelope, Form};
use crypto_core::keys::Keyring;
use crypto_core::provider::LocalProvider;

struct Options {
    max_mib: usize,
    segment_size: u32,
    min_time: Duration,
}

fn options() -> Result<Options, String> {
    let mut o = Options { max_mib: 4096, segment_size: 65536, min_time: Duration::from_millis(300) };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--max-mib" => o.max_mib = value()?.parse().map_err(|e| format!("--max-mib: {e}"))?,
            "--segment-size" => o.segment_size = value()?.parse().map_err(|e| format!("--segment-size: {e}"))?,
            "--min-time-ms" => {
                o.min_time = Duration::from_millis(value()?.parse().map_err(|e| format!("--min-time-ms: {e}"))?)
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

/// Best time of at least two runs, repeating until `min_time` has passed (at most 10 runs).
fn time(min_time: Duration, mut f: impl FnMut()) -> Duration {
    let started = Instant::now();
    let mut best = Duration::MAX;
    for run in 0..10 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        if run >= 1 && started.elapsed() >= min_time {
            break;
        }
    }
    best
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn main() -> ExitCode {
    let opts = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("gpu_bench: {e}");
            return ExitCode::from(2);
        }
    };
    let gpu = match GpuEngine::new() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("gpu_bench: {e}");
            return ExitCode::from(3);
        }
    };
    let d = gpu.device();
    println!("# GPU bulk AES-256-GCM benchmark (crypto-core examples/gpu_bench.rs)");
    println!();
    println!(
        "device: {} (ordinal {}), compute capability {}.{}, {} SMs, {:.1} GiB, kernel image {:?}, {} blocks/SM",
        d.name,
        d.ordinal,
        d.compute_capability.0,
        d.compute_capability.1,
        d.multiprocessors,
        d.total_memory as f64 / (1u64 << 30) as f64,
        d.image,
        d.blocks_per_multiprocessor
    );
    println!("driver CUDA version: {}.{}", d.driver_cuda_version / 1000, (d.driver_cuda_version % 1000) / 10);
    println!("CPU threads (rayon pool size): {}", cpu_threads());
    match gpu.measure_transfer(256 << 20, 5) {
        Ok((h2d, d2h)) => {
            println!("PCIe, pinned, 256 MiB: host->device {:.1} GB/s, device->host {:.1} GB/s", h2d / 1e9, d2h / 1e9)
        }
        Err(e) => println!("PCIe measurement failed: {e}"),
    }
    let dispatcher = bulk::Dispatcher::detect();
    println!("dispatcher calibration: {:?}", dispatcher.calibration());
    println!(
        "dispatcher keeps the GPU: {}; smallest message it sends to the GPU at {} byte segments: {:?}",
        dispatcher.gpu().is_some(),
        opts.segment_size,
        dispatcher.calibration().min_gpu_len_for(opts.segment_size as usize)
    );
    println!("segment size: {} bytes", opts.segment_size);
    println!();
    println!(
        "| size | GPU device seal | GPU device open | GPU host seal | GPU host open | CPU seal | CPU open | host seal GPU/CPU |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");

    let keyring = Arc::new(Keyring::in_memory());
    keyring.create_key("bench/gpu").unwrap();
    let env = Envelope::new(LocalProvider::new(keyring));
    let ctx = EncryptionContext::new().with("bench", "gpu");
    let stream = gpu.stream().clone();

    let mut block = vec![0u8; 1 << 20];
    crypto_core::fill_random(&mut block);
    let mut mib = 1usize;
    while mib <= opts.max_mib {
        let len = mib << 20;
        let pt: Vec<u8> = block.iter().copied().cycle().take(len).collect();
        let sealer = env.sealer("bench/gpu", &ctx, Form::Stream { segment_size: opts.segment_size }).unwrap();
        let h = sealer.header_bytes().len();

        let mut cpu_out = Vec::new();
        let cpu_seal = time(opts.min_time, || bulk::cpu::seal_into(&sealer, &pt, &mut cpu_out).unwrap());
        let mut gpu_out = Vec::new();
        let gpu_seal = time(opts.min_time, || gpu.seal_into(&sealer, &pt, &mut gpu_out).unwrap());
        if gpu_out != cpu_out {
            eprintln!("gpu_bench: MISMATCH: GPU host seal of {mib} MiB differs from bulk::cpu; no numbers reported");
            return ExitCode::from(1);
        }
        drop(gpu_out);
        let mut opened = Vec::new();
        let cpu_open = time(opts.min_time, || opened = bulk::cpu::open(&env, &ctx, &cpu_out).unwrap());
        let gpu_open = time(opts.min_time, || opened = gpu.open(&env, &ctx, &cpu_out).unwrap());
        if opened != pt {
            eprintln!("gpu_bench: MISMATCH: GPU host open of {mib} MiB");
            return ExitCode::from(1);
        }
        drop(opened);

        let d_pt = stream.clone_htod(&pt).unwrap();
        let mut d_body = stream.alloc_zeros::<u8>(cpu_out.len() - h).unwrap();
        let dev_seal = time(opts.min_time, || gpu.seal_device_into(&sealer, &d_pt, &mut d_body).unwrap());
        if stream.clone_dtoh(&d_body).unwrap() != cpu_out[h..] {
            eprintln!("gpu_bench: MISMATCH: GPU device seal of {mib} MiB differs from bulk::cpu");
            return ExitCode::from(1);
        }
        drop(d_pt);
        let mut d_opened = None;
        let dev_open = time(opts.min_time, || {
            d_opened = None; // free the previous output first
            d_opened = Some(gpu.open_device(&env, &ctx, sealer.header_bytes(), &d_body).unwrap());
        });
        if let Some(d) = &d_opened
            && stream.clone_dtoh(d).unwrap() != pt
        {
            eprintln!("gpu_bench: MISMATCH: GPU device open of {mib} MiB");
            return ExitCode::from(1);
        }
        drop(d_opened);
        drop(d_body);

        println!(
            "| {mib} MiB | {:.1} GB/s | {:.1} GB/s | {:.1} GB/s | {:.1} GB/s | {:.1} GB/s | {:.1} GB/s | {:.2}x |",
            gbps(len, dev_seal),
            gbps(len, dev_open),
            gbps(len, gpu_seal),
            gbps(len, gpu_open),
            gbps(len, cpu_seal),
            gbps(len, cpu_open),
            cpu_seal.as_secs_f64() / gpu_seal.as_secs_f64()
        );
        mib *= 4;
    }
    println!();
    println!("GB = 1e9 bytes of plaintext per second; best of >= 2 runs; every GPU output checked against bulk::cpu.");
    ExitCode::SUCCESS
}

fn cpu_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
