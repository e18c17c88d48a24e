//! `kms-load`: load generator for the KMS sidecar.
//!
//! Starts the real `kms-sidecar` binary (embedded SQLite, generated root key, temporary
//! data directory) and an echo server, and drives both over Unix sockets: `kms.v1` Encrypt
//! and Decrypt of a payload (1 KiB by default) and, in the same run, `bench.echo.v1.Echo`
//! with the same payload on the same transport and the same tonic server stack. The echo
//! rate is the ceiling of what any RPC can reach on this machine with this client, so
//! `Encrypt ÷ Echo` isolates the sidecar's own cost. Three modes:
//!
//! - **fixed concurrency** (closed loop, no subcommand): at each `--concurrency` level,
//!   that many requests are kept in flight; each level runs Echo, Encrypt and Decrypt back
//!   to back after a warm-up. Latency runs from the moment a request is sent.
//! - **`rate`** (open loop): Echo, Encrypt and Decrypt at each `--rate` requests/s.
//! - **`soak`**: the maximum Encrypt rate first, then Encrypt and Decrypt at half of it for
//!   10 minutes, watching for errors and for growth of the sidecar's resident set.
//!
//! ```text
//! cargo build --release -p kms-sidecar -p cryptocore-benches
//! target/release/kms-load                          # 1, 16, 64 concurrent; 5 s each
//! target/release/kms-load --concurrency 16 --seconds 2 --results benches/RESULTS.md
//! target/release/kms-load rate --rate 5000,20000 --seconds 10 --results benches/RESULTS.md
//! target/release/kms-load soak --results benches/RESULTS.md    # 600 s at 50 % of the maximum
//! target/release/kms-load soak --duration 20 --warmup 5 --report-every 5 --sweep-seconds 2
//! ```
//!
//! # Fixed rate: open loop, no coordinated omission
//!
//! In `rate` and `soak`, request *k* is due at `start + k / rate` whether or not the
//! earlier ones have completed, and its latency is measured from that **scheduled** send
//! time, not from the moment it actually left. A stall in the sidecar (or in the load
//! generator) is therefore charged to every request that fell due during it, so the
//! percentiles do not suffer from coordinated omission. The closed-loop mode does: there a
//! stalled request also holds back the requests that would have been sent behind it, and
//! their wait is never measured.
//!
//! The schedule is kept by a dispatcher thread of its own (tokio's timer ticks in whole
//! milliseconds, which at these rates would add up to a millisecond to every latency
//! measured from the schedule); each wake-up sends every request that is due. With
//! `--tick-us N` it sleeps at least N µs at a time, so that requests falling due within a
//! tick leave together: less CPU for the load generator (about a third less at 1000 µs),
//! their wait counted in their latency. The default is 0 (exact) in `rate` and 1000 in
//! `soak`, whose goals are errors and memory. How late requests left is reported as
//! *dispatch lag*. At most `--max-in-flight` requests (default 1000, under the sidecar's
//! default limit of 1024 requests in progress) are in flight: a request that falls due
//! while the bound is reached is not sent and counts as **dropped**, an error. A request
//! that fails, or has no answer within `--timeout` seconds (default 10), counts as
//! **failed**. A dispatcher that falls more than `--timeout` behind its schedule stops
//! sending and counts the rest as dropped, so every run ends. Latencies are kept in a
//! log-linear histogram, relative error under 0.8 %, so a long run holds no per-request
//! data.
//!
//! # Soak
//!
//! `kms-load soak` takes the maximum Encrypt rate from `--max-rate`, or else as the best of
//! a short closed-loop sweep of Encrypt (`--sweep 16,64`, `--sweep-seconds 5` each after a
//! 1 s warm-up). It then runs open loop at `--fraction` (default 0.5) of that rate for
//! `--duration` seconds (default 600), Encrypt and Decrypt alternating (half the rate
//! each), and samples the sidecar's resident set (`VmRSS` in `/proc/PID/status`) every
//! `--rss-every` seconds (default 5). Every `--report-every` seconds (default 60) it prints
//! a line to stderr: the rate achieved, p50/p99, errors and RSS. The warm-up, `--warmup`
//! seconds (default: a tenth of the duration, 60 s for 600 s), counts for errors and
//! latencies but not for memory: **RSS growth** = (largest sample after the warm-up − the
//! sample at the end of the warm-up) ÷ the sample at the end of the warm-up. The soak
//! passes with zero errors (failed + dropped, warm-up included) and RSS growth under 10 %;
//! otherwise the process exits non-zero, after printing (and writing) its results. The soak
//! starts no echo server. Every request adds a record to the sidecar's audit log, in the
//! temporary data directory (removed at the end): expect gigabytes of it over a 10-minute
//! soak, so keep space free under `$TMPDIR`.
//!
//! # Results
//!
//! Each mode prints a Markdown section to stdout. `--results FILE` (benches/RESULTS.md)
//! replaces that mode's section of the file, between its marker comments (`kms-load`,
//! `kms-rate`, `kms-soak`: `<!-- kms-soak:begin -->` … `<!-- kms-soak:end -->`), appending
//! it when the markers are missing; the file is written to a temporary file and renamed.
//! Each section ends with the command that reproduces it.
//!
//! The load generator runs on the same machine as the server (its CPU time is included:
//! "requests/s with the load generator included"); latencies are per request, client-side.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use cryptocore_benches::{Proc, wait_for_socket};
use kms_sidecar::client::connect_unix;
use kms_sidecar::grpc::pb;
use kms_sidecar::grpc::pb::kms_client::KmsClient;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

/// Generated types of `bench.echo.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic, unused_qualifications)]
mod echo_pb {
    tonic::include_proto!("bench.echo.v1");
}

use echo_pb::echo_client::EchoClient;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What the reproduce lines of the results build first.
const BUILD: &str = "cargo build --release -p kms-sidecar -p cryptocore-benches";

/// The soak's memory goal: RSS growth after the warm-up, in percent.
const MAX_RSS_GROWTH_PERCENT: f64 = 10.0;
/// How long a started server has to listen on its socket.
const SOCKET_WAIT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "kms-load",
    about = "Load generator for the KMS sidecar (Encrypt/Decrypt vs an echo RPC)",
    long_about = "Load generator for the KMS sidecar (Encrypt/Decrypt vs an echo RPC).\n\n\
        Without a subcommand: fixed concurrency (closed loop). `rate`: fixed request rate \
        (open loop, latency from the scheduled send time). `soak`: the maximum Encrypt rate, \
        then Encrypt and Decrypt at 50 % of it for 10 minutes; fails on any error or on RSS \
        growth of 10 % or more after the warm-up.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    common: Common,
    /// Concurrency levels (in-flight requests), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Measured seconds per operation and level.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Warm-up seconds before each measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Replace the sidecar-load section of this Markdown file (benches/RESULTS.md) with
    /// the results table.
    #[arg(long)]
    results: Option<PathBuf>,
}

/// Options of every mode.
#[derive(Args)]
struct Common {
    /// The kms-sidecar binary (default: next to this executable).
    #[arg(long)]
    sidecar: Option<PathBuf>,
    /// Payload bytes per request.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// HTTP/2 connections the requests are spread over.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Client runtime worker threads.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
}

/// Options of the open-loop modes.
#[derive(Args)]
struct OpenLoopArgs {
    /// Most requests in flight at once; a request that falls due while this many are in
    /// flight is not sent and counts as dropped (an error).
    #[arg(long, default_value_t = 1000)]
    max_in_flight: usize,
    /// Seconds after which a request without an answer counts as failed.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

#[derive(Args)]
struct RateArgs {
    /// Request rates (requests/s), comma-separated; Echo, Encrypt and Decrypt run at each.
    #[arg(long, value_delimiter = ',', required = true)]
    rate: Vec<f64>,
    /// Measured seconds per operation and rate.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Warm-up seconds (at the same rate, not measured) before each measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Shortest sleep of the dispatcher, in microseconds: requests falling due within it
    /// are sent together at its end, their wait counted in their latency (0: wake up for
    /// each request, the most exact; more costs the load generator less CPU).
    #[arg(long, default_value_t = 0)]
    tick_us: u64,
    #[command(flatten)]
    open_loop: OpenLoopArgs,
    #[command(flatten)]
    common: Common,
    /// Replace the fixed-rate section (`kms-rate` markers) of this Markdown file.
    #[arg(long)]
    results: Option<PathBuf>,
}

#[derive(Args)]
struct SoakArgs {
    /// Seconds of load at the soak rate.
    #[arg(long, default_value_t = 600.0)]
    duration: f64,
    /// Seconds at the start of the soak left out of the RSS baseline [default: a tenth of
    /// --duration].
    #[arg(long)]
    warmup: Option<f64>,
    /// The maximum Encrypt rate (requests/s); when absent it is measured by the sweep.
    #[arg(long)]
    max_rate: Option<f64>,
    /// Share of the maximum rate the soak runs at (Encrypt and Decrypt together).
    #[arg(long, default_value_t = 0.5)]
    fraction: f64,
    /// Concurrency levels of the closed-loop Encrypt sweep that measures the maximum rate.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    sweep: Vec<usize>,
    /// Measured seconds per sweep level (after 1 s of warm-up).
    #[arg(long, default_value_t = 5.0)]
    sweep_seconds: f64,
    /// Seconds between samples of the sidecar's RSS.
    #[arg(long, default_value_t = 5.0)]
    rss_every: f64,
    /// Seconds between progress lines (and rows of the results table).
    #[arg(long, default_value_t = 60.0)]
    report_every: f64,
    /// Shortest sleep of the dispatcher, in microseconds: requests falling due within it
    /// are sent together at its end, their wait (up to this tick) counted in their latency.
    /// The default spares the load generator about a third of its CPU; 0 is the most exact.
    #[arg(long, default_value_t = 1000)]
    tick_us: u64,
    #[command(flatten)]
    open_loop: OpenLoopArgs,
    #[command(flatten)]
    common: Common,
    /// Replace the soak section (`kms-soak` markers) of this Markdown file.
    #[arg(long)]
    results: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Sub {
    /// Fixed request rate (open loop): Echo, Encrypt and Decrypt at each --rate; latency
    /// from each request's scheduled send time.
    Rate(RateArgs),
    /// Soak: the maximum Encrypt rate, then Encrypt and Decrypt alternating at --fraction
    /// of it for --duration seconds, sampling the sidecar's RSS; exits non-zero on any
    /// error or on RSS growth of 10 % or more after the warm-up.
    Soak(SoakArgs),
    /// Serve bench.echo.v1 on a Unix socket (started by the benchmark itself).
    EchoServer {
        /// Socket path.
        #[arg(long)]
        socket: PathBuf,
    },
}

/// The echo service: returns the payload.
#[derive(Debug, Default)]
struct Echo;

#[tonic::async_trait]
impl echo_pb::echo_server::Echo for Echo {
    async fn echo(
        &self,
        r: tonic::Request<echo_pb::EchoRequest>,
    ) -> std::result::Result<tonic::Response<echo_pb::EchoResponse>, tonic::Status> {
        Ok(tonic::Response::new(echo_pb::EchoResponse { payload: r.into_inner().plaintext }))
    }
}

/// Serves echo the way `kms-sidecar serve` serves kms.v1: a multi-threaded runtime with
/// the default worker count, tonic's server builder, a 0600 Unix socket.
fn echo_server(socket: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket)?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
        let limit = kms_sidecar::server::DEFAULT_MAX_REQUEST_BYTES + (1 << 20);
        let service = echo_pb::echo_server::EchoServer::new(Echo)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await?;
        Ok(())
    })
}

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
            .map(|kib| kib * 1024)
    })
}

/// The resident set of `pid` now; `None` when the process is gone.
fn vm_rss(pid: u32) -> Option<u64> {
    proc_status_bytes(pid, "VmRSS:")
}

/// Process CPU time (user + system) and peak resident set of `pid`, from /proc.
fn proc_usage(pid: u32) -> (Duration, u64) {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    (Duration::from_millis(ticks * 10), proc_status_bytes(pid, "VmHWM:").unwrap_or(0))
}

/// The operations a measurement drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Echo,
    Encrypt,
    Decrypt,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Echo => "Echo",
            Op::Encrypt => "Encrypt",
            Op::Decrypt => "Decrypt",
        }
    }
}

/// What one measurement drives.
#[derive(Clone)]
enum Target {
    Echo(EchoClient<Channel>, echo_pb::EchoRequest),
    Encrypt(KmsClient<Channel>, pb::EncryptRequest),
    Decrypt(KmsClient<Channel>, pb::DecryptRequest),
}

impl Target {
    async fn call(&mut self) -> bool {
        match self {
            Target::Echo(c, r) => c.echo(r.clone()).await.is_ok(),
            Target::Encrypt(c, r) => c.encrypt(r.clone()).await.is_ok(),
            Target::Decrypt(c, r) => c.decrypt(r.clone()).await.is_ok(),
        }
    }

    /// One request, consuming this (cloned) target: no second copy of the payload.
    async fn call_once(self) -> bool {
        match self {
            Target::Echo(mut c, r) => c.echo(r).await.is_ok(),
            Target::Encrypt(mut c, r) => c.encrypt(r).await.is_ok(),
            Target::Decrypt(mut c, r) => c.decrypt(r).await.is_ok(),
        }
    }
}

/// The servers under load, the client runtime and connections, and the requests sent.
struct Bench {
    kms_channels: Vec<Channel>,
    echo_channels: Vec<Channel>,
    encrypt: pb::EncryptRequest,
    decrypt: pb::DecryptRequest,
    echo: echo_pb::EchoRequest,
    kms_pid: u32,
    echo_pid: Option<u32>,
    runtime: tokio::runtime::Runtime,
    // Dropped last, in this order: the servers are stopped before their directory goes.
    _echo: Option<Proc>,
    _kms: Proc,
    _dir: tempfile::TempDir,
}

impl Bench {
    /// Starts the sidecar (and the echo server when `with_echo`), connects, creates the
    /// key and one ciphertext to decrypt.
    fn start(common: &Common, with_echo: bool) -> Result<Bench> {
        let sidecar = match &common.sidecar {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("kms-sidecar"),
        };
        if !sidecar.exists() {
            return Err(format!(
                "{} not found: build it first (cargo build --release -p kms-sidecar) or pass --sidecar",
                sidecar.display()
            )
            .into());
        }
        let dir = tempfile::tempdir()?;
        let kms_sock = dir.path().join("kms/kms.sock");
        let echo_sock = dir.path().join("echo.sock");
        let log = std::fs::File::create(dir.path().join("sidecar.log"))?;
        let kms_child = Command::new(&sidecar)
            .args(["serve", "--data-dir"])
            .arg(dir.path().join("kms"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let kms_pid = kms_child.id();
        let mut kms = Proc(kms_child);
        wait_for_socket(&kms_sock, &mut kms.0, SOCKET_WAIT).map_err(|e| format!("kms-sidecar serve: {e}"))?;
        let echo = if with_echo {
            let echo_child = Command::new(std::env::current_exe()?)
                .args(["echo-server", "--socket"])
                .arg(&echo_sock)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()?;
            let mut echo = Proc(echo_child);
            wait_for_socket(&echo_sock, &mut echo.0, SOCKET_WAIT).map_err(|e| format!("echo server: {e}"))?;
            Some(echo)
        } else {
            None
        };
        let echo_pid = echo.as_ref().map(|p| p.0.id());

        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(common.client_threads).enable_all().build()?;
        let connections = common.connections.max(1);
        let payload: Vec<u8> = (0..common.payload).map(|i| (i * 31 % 251) as u8).collect();
        let context = HashMap::from([("tenant".to_owned(), "bench".to_owned())]);
        let (kms_channels, echo_channels, encrypt, decrypt, echo_request) = runtime.block_on(async {
            let mut kms_channels = Vec::new();
            let mut echo_channels = Vec::new();
            for _ in 0..connections {
                kms_channels.push(connect_unix(kms_sock.clone()).await?);
                if with_echo {
                    echo_channels.push(connect_unix(echo_sock.clone()).await?);
                }
            }
            let mut admin = KmsClient::new(kms_channels[0].clone());
            admin.create_key(pb::CreateKeyRequest { name: "bench/load".into() }).await?;
            let encrypt = pb::EncryptRequest {
                key_name: "bench/load".into(),
                plaintext: payload.clone(),
                context: context.clone(),
            };
            let ciphertext = admin.encrypt(encrypt.clone()).await?.into_inner().ciphertext;
            let decrypt = pb::DecryptRequest { ciphertext, context: context.clone() };
            let echo = echo_pb::EchoRequest {
                key_name: "bench/load".into(),
                plaintext: payload.clone(),
                context: context.clone(),
            };
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((kms_channels, echo_channels, encrypt, decrypt, echo))
        })?;
        Ok(Bench {
            kms_channels,
            echo_channels,
            encrypt,
            decrypt,
            echo: echo_request,
            kms_pid,
            echo_pid,
            runtime,
            _echo: echo,
            _kms: kms,
            _dir: dir,
        })
    }

    /// A client for `op` on connection `i` (modulo the connection count). Echo needs a
    /// bench started `with_echo`.
    fn target(&self, op: Op, i: usize) -> Result<Target> {
        let channel = |channels: &[Channel]| {
            channels.get(i % channels.len().max(1)).cloned().ok_or("no connection for this operation")
        };
        Ok(match op {
            Op::Echo => Target::Echo(EchoClient::new(channel(&self.echo_channels)?), self.echo.clone()),
            Op::Encrypt => Target::Encrypt(KmsClient::new(channel(&self.kms_channels)?), self.encrypt.clone()),
            Op::Decrypt => Target::Decrypt(KmsClient::new(channel(&self.kms_channels)?), self.decrypt.clone()),
        })
    }

    /// `n` clients for `op`, spread over the connections.
    fn targets(&self, op: Op, n: usize) -> Result<Vec<Target>> {
        (0..n.max(1)).map(|i| self.target(op, i)).collect()
    }
}

/// One measurement's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    rps: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    errors: u64,
    server_cpu_per_request: Option<Duration>,
}

/// Closed loop: each target sends its next request when the previous one is answered.
async fn measure(targets: Vec<Target>, warmup: Duration, window: Duration, server_pid: Option<u32>) -> Stats {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + window;
    let cpu_before = Arc::new(Mutex::new(None));
    let tasks: Vec<_> = targets
        .into_iter()
        .map(|mut target| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                let mut errors = 0u64;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let ok = target.call().await;
                    if t0 >= measure_from {
                        if ok {
                            latencies.push(t0.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    if let Some(pid) = server_pid {
        tokio::time::sleep_until(measure_from.into()).await;
        *cpu_before.lock().unwrap_or_else(|p| p.into_inner()) = Some(proc_usage(pid).0);
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            latencies.extend(l);
            errors += e;
        }
    }
    let server_cpu = match (server_pid, *cpu_before.lock().unwrap_or_else(|p| p.into_inner())) {
        (Some(pid), Some(before)) => Some(proc_usage(pid).0.saturating_sub(before)),
        _ => None,
    };
    latencies.sort_unstable();
    let pct = |p: f64| -> Duration {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    let completed = latencies.len() as u64 + errors;
    Stats {
        rps: completed as f64 / window.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
        errors,
        server_cpu_per_request: server_cpu.filter(|_| completed > 0).map(|c| c / completed as u32),
    }
}

/// Bits of the mantissa a [`Histogram`] bucket keeps: 128 buckets per power of two.
const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
/// Buckets from 0 to `u64::MAX` nanoseconds.
const BUCKETS: usize = (65 - SUB_BITS as usize) * SUB;

/// Latencies in nanoseconds, log-linear: exact below 256 ns, then 128 buckets per power of
/// two (relative error under 0.8 %). Fixed size, whatever the number of requests.
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; BUCKETS], total: 0, max: 0 }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < 2 * SUB as u64 {
            return v as usize;
        }
        // v >> shift keeps the top SUB_BITS + 1 bits: a value in [SUB, 2 SUB).
        let shift = 63 - v.leading_zeros() - SUB_BITS;
        shift as usize * SUB + (v >> shift) as usize
    }

    /// The largest value of bucket `i`.
    fn upper(i: usize) -> u64 {
        if i < 2 * SUB {
            return i as u64;
        }
        let shift = (i / SUB - 1) as u32;
        let top = (i - shift as usize * SUB) as u128;
        u64::try_from(((top + 1) << shift) - 1).unwrap_or(u64::MAX)
    }

    fn record(&mut self, d: Duration) {
        let v = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if let Some(c) = self.counts.get_mut(Self::index(v)) {
            *c += 1;
        }
        self.total += 1;
        self.max = self.max.max(v);
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The `p` quantile (0 < p ≤ 1), as the upper bound of its bucket.
    fn quantile(&self, p: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((self.total as f64 * p).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos(Self::upper(i).min(self.max));
            }
        }
        Duration::from_nanos(self.max)
    }

    fn max(&self) -> Duration {
        Duration::from_nanos(self.max)
    }
}

/// Outcomes of open-loop requests over some span.
#[derive(Clone, Default)]
struct Tally {
    /// Latencies of the requests answered successfully.
    latency: Histogram,
    /// Requests that failed or timed out.
    failed: u64,
    /// Requests not sent because the in-flight bound was reached.
    dropped: u64,
}

impl Tally {
    fn merge(&mut self, other: &Tally) {
        self.latency.merge(&other.latency);
        self.failed += other.failed;
        self.dropped += other.dropped;
    }

    fn errors(&self) -> u64 {
        self.failed + self.dropped
    }

    /// Requests answered (successfully or not).
    fn answered(&self) -> u64 {
        self.latency.total + self.failed
    }
}

/// Collects the outcomes of requests scheduled at or after `from`; read in windows.
struct Recorder {
    from: Instant,
    tally: Mutex<Tally>,
}

impl Recorder {
    fn new(from: Instant) -> Self {
        Recorder { from, tally: Mutex::new(Tally::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn answered(&self, scheduled: Instant, ok: bool, latency: Duration) {
        if scheduled < self.from {
            return;
        }
        let mut t = self.lock();
        if ok {
            t.latency.record(latency);
        } else {
            t.failed += 1;
        }
    }

    fn dropped(&self, n: u64) {
        self.lock().dropped += n;
    }

    fn failed(&self, n: u64) {
        self.lock().failed += n;
    }

    /// What was recorded since the last call.
    fn take(&self) -> Tally {
        std::mem::take(&mut *self.lock())
    }
}

/// An open-loop schedule: request `k` is due at `start + k / rate`, for due times before
/// `end`; those due before `measure_from` are sent but not recorded.
struct Schedule {
    start: Instant,
    measure_from: Instant,
    end: Instant,
    rate: f64,
}

impl Schedule {
    fn due(&self, k: u64) -> Option<Instant> {
        Duration::try_from_secs_f64(k as f64 / self.rate).ok().and_then(|d| self.start.checked_add(d))
    }

    /// Requests due before `end`.
    fn due_count(&self) -> u64 {
        ((self.end - self.start).as_secs_f64() * self.rate).ceil() as u64
    }
}

/// The open-loop bounds, checked.
struct Limits {
    max_in_flight: usize,
    timeout: Duration,
    tick: Duration,
}

impl OpenLoopArgs {
    fn limits(&self, tick_us: u64) -> Result<Limits> {
        if !(1..=1_000_000).contains(&self.max_in_flight) {
            return Err(format!("--max-in-flight must be 1 to 1000000 (got {})", self.max_in_flight).into());
        }
        if tick_us > 1_000_000 {
            return Err(format!("--tick-us must be at most 1000000 (got {tick_us})").into());
        }
        Ok(Limits {
            max_in_flight: self.max_in_flight,
            timeout: secs("--timeout", self.timeout, 0.001)?,
            tick: Duration::from_micros(tick_us),
        })
    }
}

/// What the dispatcher did with the measured part of a schedule.
struct Dispatched {
    /// Requests due in the measured span.
    scheduled: u64,
    /// Of those, requests sent.
    sent: u64,
    /// How late the sent requests left (send time − due time).
    lag: Histogram,
}

/// Runs `schedule` open loop on the calling thread (not a runtime worker): sleeps until the
/// next request is due, then sends every due request as a task on `handle`, cycling over
/// `targets`. Returns when every request sent has been answered or has timed out.
fn dispatch(
    handle: &tokio::runtime::Handle,
    targets: &[Target],
    schedule: &Schedule,
    limits: &Limits,
    recorder: &Arc<Recorder>,
) -> Dispatched {
    let mut out = Dispatched { scheduled: 0, sent: 0, lag: Histogram::default() };
    if targets.is_empty() {
        return out;
    }
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
    let give_up = schedule.end + limits.timeout;
    let total = schedule.due_count();
    let mut last_wake = schedule.start;
    for k in 0..total {
        let Some(due) = schedule.due(k).filter(|&d| d < schedule.end) else {
            break;
        };
        let measured = due >= schedule.measure_from;
        let mut now = Instant::now();
        if now < due {
            std::thread::sleep(due.max(last_wake + limits.tick) - now);
            now = Instant::now();
            last_wake = now;
        } else if now > give_up {
            // Too far behind to be a load test any more: the rest is not sent.
            let rest = (k..total).filter(|&j| schedule.due(j).is_some_and(|d| d >= schedule.measure_from)).count();
            out.scheduled += rest as u64;
            recorder.dropped(rest as u64);
            break;
        }
        if measured {
            out.scheduled += 1;
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            if measured {
                recorder.dropped(1);
            }
            continue;
        };
        if measured {
            out.sent += 1;
            out.lag.record(now - due);
        }
        let target = targets[(k % targets.len() as u64) as usize].clone();
        let recorder = recorder.clone();
        let timeout = limits.timeout;
        handle.spawn(async move {
            let ok = matches!(tokio::time::timeout(timeout, target.call_once()).await, Ok(true));
            recorder.answered(due, ok, due.elapsed());
            drop(permit);
        });
    }
    // Every request has its own timeout, so this wait is bounded; the margin is for tasks
    // that time out late on a starved runtime.
    let all = u32::try_from(limits.max_in_flight).unwrap_or(u32::MAX);
    let drained = handle.block_on(async {
        matches!(
            tokio::time::timeout(limits.timeout + Duration::from_secs(5), in_flight.acquire_many(all)).await,
            Ok(Ok(_))
        )
    });
    if !drained {
        recorder.failed((limits.max_in_flight - in_flight.available_permits()) as u64);
    }
    out
}

/// `v` seconds as a duration, at least `min` and at most a week (so that no deadline
/// computed from it overflows).
fn secs(name: &str, v: f64, min: f64) -> Result<Duration> {
    const WEEK: f64 = 7.0 * 86_400.0;
    if v.is_nan() || v < min || v > WEEK {
        return Err(format!("{name} must be {min} to {WEEK} s (got {v})").into());
    }
    Duration::try_from_secs_f64(v).map_err(|e| format!("{name}: {e}").into())
}

fn check_rate(name: &str, rate: f64) -> Result<()> {
    if rate.is_nan() || !(0.01..=10_000_000.0).contains(&rate) {
        return Err(format!("{name} must be 0.01 to 10000000 requests/s (got {rate})").into());
    }
    Ok(())
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 { format!("{:.2} ms", us / 1000.0) } else { format!("{us:.0} µs") }
}

fn cpu(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} µs", d.as_secs_f64() * 1e6)).unwrap_or_else(|| "n/a".into())
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map(|b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64)).unwrap_or_else(|| "n/a".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg has them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
}

/// The reproduce line of a results section: this very command line.
fn reproduce() -> String {
    format!(
        "\nReproduce: `{BUILD} && target/release/kms-load {}`\n",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    )
}

/// The machine and set-up paragraph of the open-loop sections.
fn open_loop_setup(common: &Common, load: &str) -> String {
    format!(
        "Machine: {} ({} logical cores; load average {load} at start), load generator on the same machine \
         ({} client threads and one dispatcher thread, {} HTTP/2 connections per server). \
         Payload {} bytes, context of one pair. \
         Sidecar: `kms-sidecar serve` on the embedded default (SQLite, local root key), Unix socket.\n\n",
        cpu_model(),
        cores(),
        common.client_threads,
        common.connections.max(1),
        common.payload,
    )
}

fn run(cli: Cli) -> Result<()> {
    let warmup = secs("--warmup", cli.warmup, 0.0)?;
    let window = secs("--seconds", cli.seconds, 0.001)?;
    let bench = Bench::start(&cli.common, true)?;
    let connections = cli.common.connections.max(1);

    let rows = bench.runtime.block_on(async {
        let mut rows = Vec::new();
        for &c in &cli.concurrency {
            let e = measure(bench.targets(Op::Echo, c)?, warmup, window, bench.echo_pid).await;
            let enc = measure(bench.targets(Op::Encrypt, c)?, warmup, window, Some(bench.kms_pid)).await;
            let dec = measure(bench.targets(Op::Decrypt, c)?, warmup, window, Some(bench.kms_pid)).await;
            eprintln!(
                "concurrency {c:>3}: echo {:>8.0}/s  encrypt {:>8.0}/s ({:>3.0}%) p50 {} p99 {}  decrypt {:>8.0}/s ({:>3.0}%) p50 {} p99 {}",
                e.rps,
                enc.rps,
                100.0 * enc.rps / e.rps,
                us(enc.p50),
                us(enc.p99),
                dec.rps,
                100.0 * dec.rps / e.rps,
                us(dec.p50),
                us(dec.p99)
            );
            rows.push((c, e, enc, dec));
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(rows)
    })?;
    let (_, peak_rss) = proc_usage(bench.kms_pid);

    let mut md = String::new();
    md.push_str(&format!(
        "Machine: {} ({} logical cores), load generator on the same machine ({} client threads, {} HTTP/2 connections per server). \
         Payload {} bytes, context of one pair; {} s measured per cell after {} s warm-up. \
         Sidecar: `kms-sidecar serve` on the embedded default (SQLite, local root key), Unix socket; \
         echo: the same tonic server stack on a Unix socket in its own process.\n\n",
        cpu_model(),
        cores(),
        cli.common.client_threads,
        connections,
        cli.common.payload,
        cli.seconds,
        cli.warmup
    ));
    md.push_str("| concurrency | Echo req/s | Encrypt req/s | Encrypt ÷ Echo | Encrypt p50 | Encrypt p99 | Encrypt p99.9 | Decrypt req/s | Decrypt ÷ Echo | Decrypt p50 | Decrypt p99 | Decrypt p99.9 | Echo p50 | Echo p99 | server CPU per request: Echo / Encrypt / Decrypt | errors |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (c, e, enc, dec) in &rows {
        md.push_str(&format!(
            "| {c} | {:.0} | {:.0} | {:.0}% | {} | {} | {} | {:.0} | {:.0}% | {} | {} | {} | {} | {} | {} / {} / {} | {} |\n",
            e.rps,
            enc.rps,
            100.0 * enc.rps / e.rps,
            us(enc.p50),
            us(enc.p99),
            us(enc.p999),
            dec.rps,
            100.0 * dec.rps / e.rps,
            us(dec.p50),
            us(dec.p99),
            us(dec.p999),
            us(e.p50),
            us(e.p99),
            cpu(e.server_cpu_per_request),
            cpu(enc.server_cpu_per_request),
            cpu(dec.server_cpu_per_request),
            e.errors + enc.errors + dec.errors
        ));
    }
    md.push_str(&format!("\nSidecar peak RSS over the whole run: {:.1} MiB.\n", peak_rss as f64 / (1 << 20) as f64));
    md.push_str(&goals(&rows));
    md.push_str(&reproduce());
    print!("{md}");
    if let Some(path) = cli.results {
        replace_section(&path, &LOAD_SECTION, &md)?;
        eprintln!("kms-load: results written to {}", path.display());
    }
    if rows.iter().any(|(_, e, enc, dec)| e.errors + enc.errors + dec.errors > 0) {
        return Err("some requests failed".into());
    }
    Ok(())
}

/// The sidecar issue's goals, judged on this run's figures.
fn goals(rows: &[(usize, Stats, Stats, Stats)]) -> String {
    let mut out = String::from("\n| goal (sidecar issue) | measured in this run | verdict |\n|---|---|---|\n");
    if let Some((c, e, enc, _)) = rows.iter().min_by(|a, b| (a.2.rps / a.1.rps).total_cmp(&(b.2.rps / b.1.rps))) {
        let ratio = 100.0 * enc.rps / e.rps;
        out.push_str(&format!(
            "| Encrypt ≥ 80 % of the echo rate | lowest {ratio:.0} % (concurrency {c}) | {} |\n",
            verdict(ratio >= 80.0)
        ));
    }
    if let Some((c, _, enc, _)) = rows.iter().max_by(|a, b| a.2.rps.total_cmp(&b.2.rps)) {
        out.push_str(&format!(
            "| ≥ 40,000 Encrypt/s with the load generator on the same machine | {:.0}/s (concurrency {c}) | {} |\n",
            enc.rps,
            verdict(enc.rps >= 40_000.0)
        ));
    }
    match rows.iter().find(|r| r.0 == 16) {
        Some((_, _, enc, _)) => out.push_str(&format!(
            "| Encrypt p99 ≤ 2 ms at concurrency 16 | {} | {} |\n",
            us(enc.p99),
            verdict(enc.p99 <= Duration::from_millis(2))
        )),
        None => out.push_str("| Encrypt p99 ≤ 2 ms at concurrency 16 | not measured in this run | n/a |\n"),
    }
    out
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

/// One open-loop measurement of `run_rate`.
struct RateRow {
    rate: f64,
    op: Op,
    tally: Tally,
    dispatched: Dispatched,
}

/// `kms-load rate`: Echo, Encrypt and Decrypt open loop at each rate.
fn run_rate(args: RateArgs) -> Result<()> {
    let limits = args.open_loop.limits(args.tick_us)?;
    let warmup = secs("--warmup", args.warmup, 0.0)?;
    let window = secs("--seconds", args.seconds, 0.001)?;
    for &rate in &args.rate {
        check_rate("--rate", rate)?;
    }
    let load = load_average();
    let bench = Bench::start(&args.common, true)?;
    let handle = bench.runtime.handle().clone();
    let mut rows = Vec::new();
    for &rate in &args.rate {
        for op in [Op::Echo, Op::Encrypt, Op::Decrypt] {
            let targets = bench.targets(op, args.common.connections)?;
            let start = Instant::now();
            let schedule = Schedule { start, measure_from: start + warmup, end: start + warmup + window, rate };
            let recorder = Arc::new(Recorder::new(schedule.measure_from));
            let dispatched = dispatch(&handle, &targets, &schedule, &limits, &recorder);
            let tally = recorder.take();
            eprintln!(
                "rate {rate:>8.0}/s {:<7}: achieved {:>8.0}/s  p50 {} p99 {} p99.9 {} max {}  failed {} dropped {}  dispatch lag p99 {}",
                op.name(),
                tally.latency.total as f64 / window.as_secs_f64(),
                us(tally.latency.quantile(0.50)),
                us(tally.latency.quantile(0.99)),
                us(tally.latency.quantile(0.999)),
                us(tally.latency.max()),
                tally.failed,
                tally.dropped,
                us(dispatched.lag.quantile(0.99)),
            );
            rows.push(RateRow { rate, op, tally, dispatched });
        }
    }
    let (_, peak_rss) = proc_usage(bench.kms_pid);

    let mut md = open_loop_setup(&args.common, &load);
    md.push_str(&format!(
        "Open loop: requests are sent on a schedule at the offered rate whatever the answers, and latency \
         runs from each request's scheduled send time, so a stall is charged to every request due during it \
         (no coordinated omission). {} s measured per row after {} s at the same rate; at most {} requests \
         in flight (a request due beyond that is dropped and counted as an error), {} s timeout, \
         dispatcher tick {} µs. Achieved: requests answered successfully per second of the schedule. \
         Dispatch lag: how late requests left against their schedule (included in the latencies).\n\n",
        args.seconds, args.warmup, limits.max_in_flight, args.open_loop.timeout, args.tick_us
    ));
    md.push_str("| offered req/s | operation | achieved req/s | p50 | p99 | p99.9 | max | failed | dropped | dispatch lag p99 |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        md.push_str(&format!(
            "| {:.0} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.rate,
            r.op.name(),
            r.tally.latency.total as f64 / window.as_secs_f64(),
            us(r.tally.latency.quantile(0.50)),
            us(r.tally.latency.quantile(0.99)),
            us(r.tally.latency.quantile(0.999)),
            us(r.tally.latency.max()),
            r.tally.failed,
            r.tally.dropped,
            us(r.dispatched.lag.quantile(0.99)),
        ));
    }
    md.push_str(&format!("\nSidecar peak RSS over the whole run: {}.\n", mib(Some(peak_rss))));
    md.push_str(&reproduce());
    print!("{md}");
    if let Some(path) = &args.results {
        replace_section(path, &RATE_SECTION, &md)?;
        eprintln!("kms-load: results written to {}", path.display());
    }
    let errors: u64 = rows.iter().map(|r| r.tally.errors()).sum();
    if errors > 0 {
        return Err(format!("{errors} requests failed or were dropped").into());
    }
    Ok(())
}

/// One reporting interval of the soak.
struct Interval {
    from: Duration,
    to: Duration,
    /// Requests answered per second of wall time over the interval.
    rate: f64,
    tally: Tally,
    rss: Option<u64>,
}

impl Interval {
    fn line(&self) -> String {
        format!(
            "soak [{:>4.0}–{:>4.0} s]: {:>7.0} req/s  p50 {}  p99 {}  errors {} (failed {}, dropped {})  RSS {}",
            self.from.as_secs_f64(),
            self.to.as_secs_f64(),
            self.rate,
            us(self.tally.latency.quantile(0.50)),
            us(self.tally.latency.quantile(0.99)),
            self.tally.errors(),
            self.tally.failed,
            self.tally.dropped,
            mib(self.rss),
        )
    }
}

/// The times (from the start of the soak, before its end) at which RSS is sampled, with
/// whether a progress interval ends there. The end of the warm-up is one of them.
fn sample_times(
    duration: Duration,
    warmup: Duration,
    rss_every: Duration,
    report_every: Duration,
) -> Vec<(Duration, bool)> {
    let mut times = Vec::new();
    for (every, report) in [(rss_every, false), (report_every, true)] {
        let mut t = every;
        while t < duration {
            times.push((t, report));
            t += every;
        }
    }
    if !warmup.is_zero() {
        times.push((warmup, false));
    }
    times.sort_by_key(|&(t, _)| t);
    times.dedup_by(|later, kept| {
        if later.0 == kept.0 {
            kept.1 |= later.1;
            true
        } else {
            false
        }
    });
    times
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// `kms-load soak`: the maximum Encrypt rate, then a long open-loop run at a share of it.
fn run_soak(args: SoakArgs) -> Result<()> {
    let limits = args.open_loop.limits(args.tick_us)?;
    let duration = secs("--duration", args.duration, 1.0)?;
    let warmup = match args.warmup {
        Some(w) => secs("--warmup", w, 0.0)?,
        None => duration / 10,
    };
    if warmup >= duration {
        return Err("--warmup must be shorter than --duration".into());
    }
    let rss_every = secs("--rss-every", args.rss_every, 0.1)?;
    let report_every = secs("--report-every", args.report_every, 0.1)?;
    let sweep_window = secs("--sweep-seconds", args.sweep_seconds, 0.1)?;
    if args.fraction.is_nan() || args.fraction <= 0.0 || args.fraction > 1.0 {
        return Err(format!("--fraction must be in (0, 1] (got {})", args.fraction).into());
    }
    if let Some(rate) = args.max_rate {
        check_rate("--max-rate", rate)?;
    }
    if args.max_rate.is_none() && args.sweep.is_empty() {
        return Err("give --max-rate or a --sweep".into());
    }
    let load = load_average();
    let bench = Bench::start(&args.common, false)?;
    let pid = bench.kms_pid;

    // 1. The maximum Encrypt rate.
    let (max_rate, how) = match args.max_rate {
        Some(rate) => (rate, "given with `--max-rate`".to_owned()),
        None => {
            let mut best = 0.0_f64;
            let mut levels = Vec::new();
            for &c in &args.sweep {
                let targets = bench.targets(Op::Encrypt, c)?;
                let s = bench.runtime.block_on(measure(targets, Duration::from_secs(1), sweep_window, Some(pid)));
                eprintln!(
                    "soak: max-rate sweep: concurrency {c:>3}: encrypt {:>8.0}/s  p50 {} p99 {}  errors {}",
                    s.rps,
                    us(s.p50),
                    us(s.p99),
                    s.errors
                );
                levels.push(format!(
                    "{:.0}/s at concurrency {c}{}",
                    s.rps,
                    if s.errors > 0 { format!(" ({} errors)", s.errors) } else { String::new() }
                ));
                best = best.max(s.rps);
            }
            if best <= 0.0 {
                return Err("the sweep measured no Encrypt rate".into());
            }
            (
                best,
                format!(
                    "the best of a closed-loop Encrypt sweep, {} s per level after a 1 s warm-up: {}",
                    args.sweep_seconds,
                    levels.join(", ")
                ),
            )
        }
    };
    let rate = max_rate * args.fraction;
    check_rate("the soak rate", rate)?;
    eprintln!(
        "soak: {rate:.0} req/s ({:.0} % of {max_rate:.0}/s), Encrypt and Decrypt alternating, {} s, warm-up {} s",
        100.0 * args.fraction,
        duration.as_secs_f64(),
        warmup.as_secs_f64()
    );

    // 2. Open loop at the soak rate, sampled. Encrypt and Decrypt alternate, each spread
    // over the connections.
    let mut targets = Vec::new();
    for i in 0..args.common.connections.max(1) {
        targets.push(bench.target(Op::Encrypt, i)?);
        targets.push(bench.target(Op::Decrypt, i)?);
    }
    let handle = bench.runtime.handle().clone();
    let times = sample_times(duration, warmup, rss_every, report_every);
    let rss_start = vm_rss(pid);
    let start = Instant::now();
    let schedule = Schedule { start, measure_from: start, end: start + duration, rate };
    let recorder = Arc::new(Recorder::new(start));
    let mut samples = vec![(Duration::ZERO, rss_start)];
    let mut intervals: Vec<Interval> = Vec::new();
    let mut total = Tally::default();
    let mut close = |from: Duration, to: Duration, since: Instant, rss: Option<u64>| {
        let tally = recorder.take();
        total.merge(&tally);
        let interval = Interval { from, to, rate: tally.answered() as f64 / since.elapsed().as_secs_f64(), tally, rss };
        eprintln!("{}", interval.line());
        intervals.push(interval);
    };
    let dispatched = std::thread::scope(|scope| {
        let dispatcher = scope.spawn(|| dispatch(&handle, &targets, &schedule, &limits, &recorder));
        let mut last = (Duration::ZERO, start);
        for &(at, report) in &times {
            sleep_until(start + at);
            let rss = vm_rss(pid);
            samples.push((at, rss));
            if report {
                let now = Instant::now();
                close(last.0, at, last.1, rss);
                last = (at, now);
            }
        }
        sleep_until(schedule.end);
        let rss_end = vm_rss(pid);
        samples.push((duration, rss_end));
        // The last interval includes the answers to the requests still in flight at the end.
        let dispatched = dispatcher.join();
        close(last.0, duration, last.1, rss_end);
        dispatched
    })
    .map_err(|_| "the dispatcher thread panicked")?;
    let peak_rss = proc_usage(pid).1;

    // 3. Verdicts.
    let baseline = samples.iter().find(|s| s.0 == warmup).and_then(|s| s.1);
    let after = samples.iter().filter(|s| s.0 > warmup).collect::<Vec<_>>();
    let highest = after.iter().filter_map(|s| s.1.map(|b| (s.0, b))).max_by_key(|s| s.1);
    let gone = after.iter().any(|s| s.1.is_none());
    let growth = match (baseline, highest) {
        (Some(b), Some((_, h))) if b > 0 && !gone => Some(100.0 * (h as f64 - b as f64) / b as f64),
        _ => None,
    };
    let errors_ok = total.errors() == 0;
    let rss_ok = growth.is_some_and(|g| g < MAX_RSS_GROWTH_PERCENT);

    let mut md = open_loop_setup(&args.common, &load);
    md.push_str(&format!(
        "Maximum Encrypt rate: {max_rate:.0}/s ({how}). Soak: {rate:.0} req/s offered ({:.0} % of the maximum), \
         Encrypt and Decrypt of the payload alternating ({:.0}/s each), open loop for {} s: requests are sent on \
         schedule whatever the answers, and latency runs from each request's scheduled send time (no coordinated \
         omission). At most {} requests in flight (a request due beyond that is dropped, an error), {} s timeout; \
         dispatcher tick {} µs (requests due within a tick leave together; their wait counts in their latency). \
         Sidecar RSS (`VmRSS`) sampled every {} s; warm-up (left out of the RSS baseline): the first {} s.\n\n",
        100.0 * args.fraction,
        rate / 2.0,
        duration.as_secs_f64(),
        limits.max_in_flight,
        args.open_loop.timeout,
        args.tick_us,
        rss_every.as_secs_f64(),
        warmup.as_secs_f64(),
    ));
    md.push_str("| interval | req/s answered | p50 | p99 | p99.9 | failed | dropped | sidecar RSS at its end |\n");
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    for i in &intervals {
        md.push_str(&format!(
            "| {:.0}–{:.0} s | {:.0} | {} | {} | {} | {} | {} | {} |\n",
            i.from.as_secs_f64(),
            i.to.as_secs_f64(),
            i.rate,
            us(i.tally.latency.quantile(0.50)),
            us(i.tally.latency.quantile(0.99)),
            us(i.tally.latency.quantile(0.999)),
            i.tally.failed,
            i.tally.dropped,
            mib(i.rss),
        ));
    }
    md.push_str(&format!(
        "| whole run | {:.0} | {} | {} | {} | {} | {} | peak (`VmHWM`) {} |\n",
        total.answered() as f64 / duration.as_secs_f64(),
        us(total.latency.quantile(0.50)),
        us(total.latency.quantile(0.99)),
        us(total.latency.quantile(0.999)),
        total.failed,
        total.dropped,
        mib(Some(peak_rss)),
    ));
    md.push_str(&format!(
        "\nRequests: {} due, {} sent, {} answered successfully; latency max {}; dispatch lag (send time − due time, \
         included in the latencies) p99 {}, max {}. Sidecar RSS: {} at the start, {} at the end of the warm-up, \
         highest after it {}{}, {} at the end.\n",
        dispatched.scheduled,
        dispatched.sent,
        total.latency.total,
        us(total.latency.max()),
        us(dispatched.lag.quantile(0.99)),
        us(dispatched.lag.max()),
        mib(rss_start),
        mib(baseline),
        mib(highest.map(|h| h.1)),
        highest.map(|h| format!(" (at {:.0} s)", h.0.as_secs_f64())).unwrap_or_default(),
        mib(samples.last().and_then(|s| s.1)),
    ));
    md.push_str("\n| goal (soak) | measured in this run | verdict |\n|---|---|---|\n");
    md.push_str(&format!(
        "| zero errors | {} failed, {} dropped of {} requests due | {} |\n",
        total.failed,
        total.dropped,
        dispatched.scheduled,
        verdict(errors_ok)
    ));
    md.push_str(&format!(
        "| RSS growth after the warm-up < {MAX_RSS_GROWTH_PERCENT:.0} % | {} | {} |\n",
        match growth {
            Some(g) => format!("{g:+.1} % ({} → highest {})", mib(baseline), mib(highest.map(|h| h.1))),
            None => "not measured (the sidecar's RSS could not be read)".to_owned(),
        },
        verdict(rss_ok)
    ));
    md.push_str(&reproduce());
    if args.max_rate.is_none() {
        md.push_str(&format!(
            "(The maximum rate is measured again; add `--max-rate {max_rate:.0}` to soak at this run's rate.)\n"
        ));
    }
    print!("{md}");
    if let Some(path) = &args.results {
        replace_section(path, &SOAK_SECTION, &md)?;
        eprintln!("kms-load: results written to {}", path.display());
    }
    match (errors_ok, rss_ok) {
        (true, true) => Ok(()),
        (false, _) => {
            Err(format!("soak failed: {} errors ({} failed, {} dropped)", total.errors(), total.failed, total.dropped)
                .into())
        }
        (true, false) => {
            Err("soak failed: sidecar RSS grew by 10 % or more after the warm-up (or could not be read)".into())
        }
    }
}

/// A marked section of the results file.
struct Section {
    begin: &'static str,
    end: &'static str,
    /// The heading put above the section when it is appended.
    heading: &'static str,
}

const LOAD_SECTION: Section =
    Section { begin: "<!-- kms-load:begin -->", end: "<!-- kms-load:end -->", heading: "## Sidecar load (kms-load)" };
const RATE_SECTION: Section = Section {
    begin: "<!-- kms-rate:begin -->",
    end: "<!-- kms-rate:end -->",
    heading: "## Sidecar load at a fixed rate (kms-load rate)",
};
const SOAK_SECTION: Section = Section {
    begin: "<!-- kms-soak:begin -->",
    end: "<!-- kms-soak:end -->",
    heading: "## Sidecar soak (kms-load soak)",
};

/// Replaces the text between the markers of `section` in `path` (appending a section when
/// the markers are missing). Written to a temporary file and renamed.
fn replace_section(path: &Path, section: &Section, body: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let (begin, end) = (section.begin, section.end);
    let block = format!("{begin}\n{body}{end}");
    let start = old.find(begin);
    let new = match (start, start.and_then(|b| old[b..].find(end).map(|e| b + e))) {
        (Some(b), Some(e)) => format!("{}{block}{}", &old[..b], &old[e + end.len()..]),
        _ => format!("{old}\n{}\n\n{block}\n", section.heading),
    };
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, new)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let mut cli = Cli::parse();
    let result = match cli.command.take() {
        Some(Sub::EchoServer { socket }) => echo_server(&socket),
        Some(Sub::Rate(args)) => run_rate(args),
        Some(Sub::Soak(args)) => run_soak(args),
        None => run(cli),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kms-load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
