//! crypto-core benchmarks, each beside raw aws-lc-rs AES-256-GCM in the same run.
//!
//! Groups (criterion ids are `group/function/size`):
//! * `seal`, `open`: single-core envelope v1 (stream form, 64 KiB segments, cached data
//!   key) vs raw in-place AES-256-GCM, at 1 KiB, 64 KiB, 1 MiB, 64 MiB; both backends.
//! * `record`: one 1 KiB compact record with a cached data key, and with a fresh data key.
//! * `parts`: the fixed costs inside a small-record seal (random salt, AES-GCM key setup,
//!   HMAC-SHA256 key setup and one-block message), each alone.
//! * `bulk`: 256 MiB sealed on all cores vs the single-core sequential path, with fresh and
//!   reused output buffers, and the machine's ceiling (raw aws-lc on 1 vs 2 threads).
//!
//! `benches/report.py` turns the results into the tables of `benches/RESULTS.md`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crypto_core::cache::{CacheLimits, CachingProvider};
use crypto_core::envelope::{EncryptionContext, Envelope, Form, SealOptions};
use crypto_core::keys::Keyring;
use crypto_core::provider::LocalProvider;
use crypto_core::{Backend, bulk};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn envelope(backend: Backend) -> Envelope<CachingProvider<LocalProvider>> {
    let ring = Arc::new(Keyring::in_memory());
    ring.create_key("bench/key").unwrap();
    let limits = CacheLimits {
        max_messages: u64::MAX,
        max_bytes: u64::MAX,
        max_age: Duration::from_secs(86400),
        ..Default::default()
    };
    Envelope::new(CachingProvider::new(LocalProvider::new(ring), limits))
        .with_options(SealOptions { backend, ..Default::default() })
        .unwrap()
}

fn raw_key() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap())
}

fn ctx() -> EncryptionContext {
    EncryptionContext::new().with("tenant", "bench").with("object", "data")
}

fn sizes() -> Vec<(usize, &'static str)> {
    vec![(KIB, "1KiB"), (64 * KIB, "64KiB"), (MIB, "1MiB"), (64 * MIB, "64MiB")]
}

fn seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal");
    for (size, label) in sizes() {
        g.throughput(Throughput::Bytes(size as u64));
        if size >= 64 * MIB {
            g.sample_size(10).measurement_time(Duration::from_secs(8));
        } else {
            g.sample_size(30).measurement_time(Duration::from_secs(3));
        }
        let pt = vec![0x5au8; size];
        let key = raw_key();
        let mut buf = pt.clone();
        g.bench_with_input(BenchmarkId::new("raw-aws-lc", label), &size, |b, _| {
            b.iter(|| {
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key([1; 12]),
                        Aad::empty(),
                        black_box(&mut buf),
                    )
                    .unwrap();
                let _ = black_box(tag);
            })
        });
        for backend in Backend::ALL {
            let env = envelope(backend);
            env.seal("bench/key", &ctx(), &pt).unwrap(); // warm the data-key cache
            g.bench_with_input(BenchmarkId::new(format!("envelope-{}", backend.name()), label), &size, |b, _| {
                b.iter(|| black_box(env.seal("bench/key", &ctx(), black_box(&pt)).unwrap()))
            });
            if backend == Backend::AwsLc {
                let mut out = Vec::new();
                g.bench_with_input(BenchmarkId::new("envelope-aws-lc-into", label), &size, |b, _| {
                    b.iter(|| env.seal_into("bench/key", &ctx(), black_box(&pt), &mut out).unwrap())
                });
            }
        }
    }
    g.finish();
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open");
    for (size, label) in sizes() {
        g.throughput(Throughput::Bytes(size as u64));
        if size >= 64 * MIB {
            g.sample_size(10).measurement_time(Duration::from_secs(8));
        } else {
            g.sample_size(30).measurement_time(Duration::from_secs(3));
        }
        let key = raw_key();
        let mut sealed = vec![0x5au8; size];
        let tag =
            key.seal_in_place_separate_tag(Nonce::assume_unique_for_key([1; 12]), Aad::empty(), &mut sealed).unwrap();
        sealed.extend_from_slice(tag.as_ref());
        let mut scratch = sealed.clone();
        g.bench_with_input(BenchmarkId::new("raw-aws-lc", label), &size, |b, _| {
            b.iter(|| {
                // Decrypt in place from a fresh copy each time would add a memcpy; instead
                // re-seal is avoided by opening the same bytes through open_separate_gather
                // into a scratch buffer (out of place, like the envelope's segments).
                let (ct, t) = sealed.split_at(size);
                key.open_separate_gather(
                    Nonce::assume_unique_for_key([1; 12]),
                    Aad::empty(),
                    black_box(ct),
                    t,
                    &mut scratch[..size],
                )
                .unwrap();
            })
        });
        for backend in Backend::ALL {
            let env = envelope(backend);
            let ct = env.seal("bench/key", &ctx(), &vec![0x5au8; size]).unwrap();
            env.open(&ctx(), &ct).unwrap(); // warm the unwrap cache
            g.bench_with_input(BenchmarkId::new(format!("envelope-{}", backend.name()), label), &size, |b, _| {
                b.iter(|| black_box(env.open(&ctx(), black_box(&ct)).unwrap()))
            });
            if backend == Backend::AwsLc {
                let mut out = Vec::new();
                g.bench_with_input(BenchmarkId::new("envelope-aws-lc-into", label), &size, |b, _| {
                    b.iter(|| env.open_into(&ctx(), black_box(&ct), &mut out).unwrap())
                });
            }
        }
    }
    g.finish();
}

fn record(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    g.sample_size(50).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes(KIB as u64));
    let pt = vec![1u8; KIB];
    let key = raw_key();
    let mut buf = pt.clone();
    g.bench_function("raw-aws-lc/1KiB", |b| {
        b.iter(|| {
            black_box(
                key.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key([1; 12]),
                    Aad::empty(),
                    black_box(&mut buf),
                )
                .unwrap(),
            )
        })
    });
    let env = envelope(Backend::AwsLc);
    env.seal_compact("bench/key", &ctx(), &pt).unwrap();
    g.bench_function("compact-seal-cached-key/1KiB", |b| {
        b.iter(|| black_box(env.seal_compact("bench/key", &ctx(), black_box(&pt)).unwrap()))
    });
    let mut out = Vec::new();
    g.bench_function("compact-seal-cached-key-into/1KiB", |b| {
        b.iter(|| env.seal_compact_into("bench/key", &ctx(), black_box(&pt), &mut out).unwrap())
    });
    let ct = env.seal_compact("bench/key", &ctx(), &pt).unwrap();
    g.bench_function("compact-open-cached-key/1KiB", |b| {
        b.iter(|| black_box(env.open(&ctx(), black_box(&ct)).unwrap()))
    });
    let ring = Arc::new(Keyring::in_memory());
    ring.create_key("bench/key").unwrap();
    let uncached = Envelope::new(LocalProvider::new(ring));
    g.bench_function("compact-seal-fresh-key/1KiB", |b| {
        b.iter(|| black_box(uncached.seal_compact("bench/key", &ctx(), black_box(&pt)).unwrap()))
    });
    g.finish();
}

/// The fixed costs inside one small-record seal, each measured alone through the same
/// libraries the envelope uses: where the time of `record/compact-seal-*` goes.
fn record_parts(c: &mut Criterion) {
    use hmac::{Hmac, Mac};
    let mut g = c.benchmark_group("parts");
    g.sample_size(50).measurement_time(Duration::from_secs(2));
    let mut salt = [0u8; 32];
    g.bench_function("aws-lc-rand-32B", |b| b.iter(|| aws_lc_rs::rand::fill(black_box(&mut salt)).unwrap()));
    g.bench_function("aes-256-gcm-key-setup", |b| {
        b.iter(|| black_box(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, black_box(&[9u8; 32])).unwrap())))
    });
    g.bench_function("hmac-sha256-key-setup", |b| {
        b.iter(|| black_box(<Hmac<sha2::Sha256> as Mac>::new_from_slice(black_box(&[9u8; 32])).unwrap()))
    });
    let keyed = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&[9u8; 32]).unwrap();
    g.bench_function("hmac-sha256-one-block-message", |b| {
        b.iter(|| {
            let mut m = keyed.clone();
            m.update(black_box(&[1u8; 50]));
            black_box(m.finalize().into_bytes())
        })
    });
    g.finish();
}

fn bulk_all_cores(c: &mut Criterion) {
    let mut g = c.benchmark_group("bulk");
    let size = 256 * MIB;
    g.throughput(Throughput::Bytes(size as u64)).sample_size(10).measurement_time(Duration::from_secs(15));
    let pt = vec![0x33u8; size];
    let env = envelope(Backend::AwsLc);
    let sealer = env.sealer("bench/key", &ctx(), Form::Stream { segment_size: 64 * KIB as u32 }).unwrap();
    g.bench_function("single-core/256MiB", |b| b.iter(|| black_box(sealer.seal(black_box(&pt)).unwrap())));
    g.bench_function(format!("all-cores-{}/256MiB", rayon::current_num_threads()), |b| {
        b.iter(|| black_box(bulk::cpu::seal(&sealer, black_box(&pt)).unwrap()))
    });
    // The machine's own ceiling: raw aws-lc in place over the same 256 MiB, one thread vs
    // two threads on the two halves.
    let key = raw_key();
    let mut buf = pt.clone();
    g.bench_function("raw-aws-lc-1-thread/256MiB", |b| {
        b.iter(|| {
            for chunk in buf.chunks_mut(64 * KIB) {
                let _ = black_box(
                    key.seal_in_place_separate_tag(Nonce::assume_unique_for_key([1; 12]), Aad::empty(), chunk).unwrap(),
                );
            }
        })
    });
    g.bench_function("raw-aws-lc-2-threads/256MiB", |b| {
        b.iter(|| {
            let (a, c) = buf.split_at_mut(size / 2);
            std::thread::scope(|s| {
                for half in [a, c] {
                    let key = &key;
                    s.spawn(move || {
                        for chunk in half.chunks_mut(64 * KIB) {
                            let _ = black_box(
                                key.seal_in_place_separate_tag(
                                    Nonce::assume_unique_for_key([1; 12]),
                                    Aad::empty(),
                                    chunk,
                                )
                                .unwrap(),
                            );
                        }
                    });
                }
            });
        })
    });
    // The same two with a reused output buffer: without page faults on fresh memory, this
    // is the encryption's own scaling across cores.
    let mut out = Vec::new();
    g.bench_function("single-core-into/256MiB", |b| b.iter(|| sealer.seal_into(black_box(&pt), &mut out).unwrap()));
    g.bench_function(format!("all-cores-{}-into/256MiB", rayon::current_num_threads()), |b| {
        b.iter(|| bulk::cpu::seal_into(&sealer, black_box(&pt), &mut out).unwrap())
    });
    g.finish();
}

criterion_group!(benches, seal, open, record, record_parts, bulk_all_cores);
criterion_main!(benches);
