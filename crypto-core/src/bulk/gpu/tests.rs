#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! GPU engine tests (feature `gpu`): the kernel against `bulk::cpu`, `kernel_ref` and the
//! Wycheproof vectors. Without a usable device every test prints why it was skipped and
//! passes, unless `CRYPTOCORE_REQUIRE_GPU=1`, where an engine that does not start fails
//! the test with its error.

use std::io::Write;
use std::sync::Arc;

use super::*;
use crate::bulk::kernel_ref;
use crate::bulk::{Choice, Dispatcher};
use crate::envelope::{Envelope, Form};
use crate::keys::Keyring;
use crate::provider::LocalProvider;

/// The engine, or `None` after saying loudly why the GPU tests are skipped. With
/// `CRYPTOCORE_REQUIRE_GPU=1`, any engine start error fails the test instead.
fn engine() -> Option<GpuEngine> {
    match GpuEngine::new() {
        Ok(e) => Some(e),
        Err(e) => {
            if std::env::var("CRYPTOCORE_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("GPU engine failed to start, and CRYPTOCORE_REQUIRE_GPU=1 requires one: {e}");
            }
            // Straight to stderr, not through the test harness's capture: visible in a
            // passing run.
            let _ = writeln!(std::io::stderr(), "GPU engine unavailable: GPU tests skipped ({e})");
            None
        }
    }
}

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    crate::rand::fill(&mut v);
    v
}

fn envelope() -> Envelope<LocalProvider> {
    let keyring = Arc::new(Keyring::in_memory());
    keyring.create_key("tenant-a/tensors").unwrap();
    Envelope::new(LocalProvider::new(keyring))
}

fn ctx() -> EncryptionContext {
    EncryptionContext::new().with("tenant", "a")
}

const POISON: u8 = 0xA5;

/// Host buffers: byte-identical to `bulk::cpu::seal`, opens to the plaintext, on the v16
/// path (segment sizes multiple of 16) and the byte path (17, 4097).
#[test]
fn host_seal_and_open_match_bulk_cpu() {
    let Some(gpu) = engine() else { return };
    let _ = writeln!(std::io::stderr(), "GPU tests on {:?}", gpu.device());
    let env = envelope();
    for segment_size in [16u32, 17, 4096, 4097, 65536, 1 << 20] {
        let s = segment_size as usize;
        let mut lens = vec![0, 1, 15, 16, 17, s - 1, s, s + 1, 3 * s, 3 * s + 7];
        lens.push(u32::from_le_bytes(random(4).try_into().unwrap()) as usize % (5 * s));
        for len in lens {
            let pt = random(len);
            let sealer = env.sealer("tenant-a/tensors", &ctx(), Form::Stream { segment_size }).unwrap();
            let cpu = crate::bulk::cpu::seal(&sealer, &pt).unwrap();
            let mut out = vec![POISON; cpu.len()];
            gpu.seal_into(&sealer, &pt, &mut out).unwrap();
            assert!(out == cpu, "segment size {s}, len {len}: GPU seal differs from bulk::cpu");
            assert_eq!(gpu.open(&env, &ctx(), &cpu).unwrap(), pt, "segment size {s}, len {len}: GPU open");
        }
    }
    let sealer = env.sealer("tenant-a/tensors", &ctx(), Form::Compact).unwrap();
    let pt = random(100_000);
    assert!(gpu.seal(&sealer, &pt).unwrap() == crate::bulk::cpu::seal(&sealer, &pt).unwrap());
}

/// Tampering: same errors as `bulk::cpu::open`, and no plaintext.
#[test]
fn host_open_rejects_tampering_like_bulk_cpu() {
    let Some(gpu) = engine() else { return };
    let env = envelope();
    let sealer = env.sealer("tenant-a/tensors", &ctx(), Form::Stream { segment_size: 65536 }).unwrap();
    // 40 MiB: more than one 32 MiB piece, so a failure in a later piece is found too.
    let pt = random(40 << 20);
    let sealed = sealer.seal(&pt).unwrap();
    let h = sealer.header_bytes().len();
    let stride = 65536 + 16;
    let segments = pt.len().div_ceil(65536);
    let per_piece = PIECE_BYTES / stride;
    // A segment in the middle of the second host piece.
    let later = per_piece + (segments - per_piece) / 2;
    assert!(per_piece < later && later < segments, "segment {later} of {segments}, {per_piece} per piece");
    let later_at = h + later * stride + 5;
    assert!(later_at < sealed.len());
    for at in [h + 3, later_at, sealed.len() - 1] {
        let mut t = sealed.clone();
        t[at] ^= 1;
        let cpu = crate::bulk::cpu::open(&env, &ctx(), &t).map_err(|e| e.to_string());
        let gpu_result = gpu.open(&env, &ctx(), &t).map_err(|e| e.to_string());
        assert!(cpu.is_err());
        assert_eq!(gpu_result, cpu, "flipped byte {at}");
    }
    let cut = &sealed[..h + 10 * stride];
    assert_eq!(
        gpu.open(&env, &ctx(), cut).map_err(|e| e.to_string()),
        crate::bulk::cpu::open(&env, &ctx(), cut).map_err(|e| e.to_string())
    );
    assert!(gpu.open(&env, &EncryptionContext::new().with("tenant", "b"), &sealed).is_err());
}

/// 1 GiB through the host pipeline (32 pieces over 3 streams), output poisoned first.
#[test]
fn host_one_gib_matches_bulk_cpu() {
    let Some(gpu) = engine() else { return };
    let env = envelope();
    let sealer = env.sealer("tenant-a/tensors", &ctx(), Form::Stream { segment_size: 1 << 20 }).unwrap();
    let pt = random((1 << 30) + 12345);
    let cpu = crate::bulk::cpu::seal(&sealer, &pt).unwrap();
    let mut out = vec![POISON; cpu.len()];
    gpu.seal_into(&sealer, &pt, &mut out).unwrap();
    assert!(out == cpu, "1 GiB: GPU seal differs from bulk::cpu");
    drop(out);
    assert!(gpu.open(&env, &ctx(), &cpu).unwrap() == pt, "1 GiB: GPU open");
}

/// Device buffers: seal and open without the plaintext leaving the GPU. The body buffer
/// is one byte longer than the body and poisoned: the extra byte must stay untouched.
#[test]
fn device_seal_and_open_match_bulk_cpu() {
    let Some(gpu) = engine() else { return };
    let env = envelope();
    let stream = gpu.stream().clone();
    for (segment_size, len) in [(65536u32, 0usize), (65536, 1), (65536, 65536), (65536, 10 << 20), (4097, 100_000)] {
        let pt = random(len);
        let sealer = env.sealer("tenant-a/tensors", &ctx(), Form::Stream { segment_size }).unwrap();
        let cpu = crate::bulk::cpu::seal(&sealer, &pt).unwrap();
        let h = sealer.header_bytes().len();
        let body_len = cpu.len() - h;
        // One spare byte: an empty plaintext is a zero-length view of a real allocation
        // (`cuMemAlloc(0)` is an error).
        let d_pt = stream.clone_htod(&[&pt[..], &[0u8]].concat()).unwrap();
        let mut d_body = stream.clone_htod(&vec![POISON; body_len + 1]).unwrap();
        gpu.seal_device_view(&sealer, &d_pt.slice(..len), &mut d_body.slice_mut(..body_len)).unwrap();
        let got = stream.clone_dtoh(&d_body).unwrap();
        assert!(got[..body_len] == cpu[h..], "segment size {segment_size}, len {len}");
        assert_eq!(got[body_len], POISON, "segment size {segment_size}, len {len}: write past the body");
        let d_open = gpu.open_device_view(&env, &ctx(), sealer.header_bytes(), &d_body.slice(..body_len)).unwrap();
        assert_eq!(d_open.len(), len);
        if len > 0 {
            assert!(stream.clone_dtoh(&d_open).unwrap() == pt);
        }
        // The `CudaSlice` entry points on an exactly sized body.
        if len > 0 {
            let d_pt_exact = stream.clone_htod(&pt).unwrap();
            let d_exact = gpu.seal_device(&sealer, &d_pt_exact).unwrap();
            assert!(stream.clone_dtoh(&d_exact).unwrap() == cpu[h..]);
            assert!(
                stream.clone_dtoh(&gpu.open_device(&env, &ctx(), sealer.header_bytes(), &d_exact).unwrap()).unwrap()
                    == pt
            );
        }
        if len > 100 {
            let mut body = cpu[h..].to_vec();
            body[len / 2] ^= 0x40;
            let d_bad = stream.clone_htod(&body).unwrap();
            let gpu_err = gpu.open_device(&env, &ctx(), sealer.header_bytes(), &d_bad).map(|_| ()).unwrap_err();
            let cpu_err = crate::bulk::cpu::open(&env, &ctx(), &[&cpu[..h], &body[..]].concat()).unwrap_err();
            assert_eq!(gpu_err.to_string(), cpu_err.to_string());
        }
    }
}

/// One AEAD call through the kernel with a caller-chosen nonce (empty AAD). The output
/// buffer has one poisoned byte past the output, which must stay untouched.
fn kernel_aead(gpu: &GpuEngine, dir: Direction, key: &[u8; 32], nonce: &[u8; 12], input: &[u8]) -> (Vec<u8>, bool) {
    let params = kernel_ref::single_segment(key, nonce, io_len_for_single(dir, input.len())).unwrap();
    let stream = gpu.stream().clone();
    let batch = params.batch();
    let (n_in, n_out) = io_lens(dir, &batch);
    assert_eq!(n_in, input.len());
    // One spare byte so that empty inputs still get an allocation.
    let d_in = stream.clone_htod(&[input, &[0u8]].concat()).unwrap();
    let mut d_out = stream.clone_htod(&vec![POISON; n_out + 1]).unwrap();
    let mut partials = stream.alloc_zeros::<u64>(2 * batch.items() as usize).unwrap();
    let mut flags = stream.alloc_zeros::<u32>(1).unwrap();
    gpu.launch(
        &stream,
        dir,
        false,
        &params,
        &d_in.slice(..n_in),
        &mut d_out.slice_mut(..n_out),
        &mut partials,
        &mut flags,
    )
    .unwrap();
    let mut out = stream.clone_dtoh(&d_out).unwrap();
    assert_eq!(out.pop(), Some(POISON), "{dir:?} of {} bytes: the kernel wrote past its output", input.len());
    let ok = stream.clone_dtoh(&flags).unwrap()[0] == 1;
    (out, dir == Direction::Seal || ok)
}

fn io_len_for_single(dir: Direction, input_len: usize) -> usize {
    match dir {
        Direction::Seal => input_len,
        Direction::Open => input_len - 16,
    }
}

#[test]
fn wycheproof_empty_aad_vectors_through_the_kernel() {
    use wycheproof::TestResult;
    use wycheproof::aead::{TestName, TestSet};

    let Some(gpu) = engine() else { return };
    let set = TestSet::load(TestName::AesGcm).unwrap();
    let mut cases = 0;
    for group in set.test_groups.iter().filter(|g| g.key_size == 256 && g.nonce_size == 96 && g.tag_size == 128) {
        for test in group.tests.iter().filter(|t| t.aad.is_empty()) {
            let key: [u8; 32] = test.key.as_slice().try_into().unwrap();
            let nonce: [u8; 12] = test.nonce.as_slice().try_into().unwrap();
            let ct_tag = [test.ct.as_slice(), test.tag.as_slice()].concat();
            let (opened, ok) = kernel_aead(&gpu, Direction::Open, &key, &nonce, &ct_tag);
            match test.result {
                TestResult::Valid | TestResult::Acceptable => {
                    let (sealed, _) = kernel_aead(&gpu, Direction::Seal, &key, &nonce, &test.pt);
                    assert!(sealed == ct_tag, "tcId {}: seal", test.tc_id);
                    assert!(ok && opened == test.pt.as_slice(), "tcId {}: open", test.tc_id);
                }
                TestResult::Invalid => assert!(!ok, "tcId {}: accepted", test.tc_id),
            }
            cases += 1;
        }
    }
    assert!(cases >= 48, "only {cases} Wycheproof cases");
}

/// The kernel and its reference model agree on random single segments of every size class.
#[test]
fn kernel_matches_kernel_ref() {
    let Some(gpu) = engine() else { return };
    for len in [0usize, 1, 15, 16, 17, 511, 8192, 8193, 100_000, 1 << 20] {
        let key: [u8; 32] = random(32).try_into().unwrap();
        let nonce: [u8; 12] = random(12).try_into().unwrap();
        let pt = random(len);
        let (sealed, _) = kernel_aead(&gpu, Direction::Seal, &key, &nonce, &pt);
        assert!(sealed == kernel_ref::seal(&key, &nonce, &pt).unwrap(), "len {len}");
    }
}

#[test]
fn wrong_buffer_lengths_are_errors() {
    let Some(gpu) = engine() else { return };
    let env = envelope();
    let sealer = env.sealer("tenant-a/tensors", &ctx(), Form::Stream { segment_size: 4096 }).unwrap();
    let stream = gpu.stream().clone();
    let d_pt = stream.clone_htod(&random(5000)).unwrap();
    let mut d_body = stream.alloc_zeros::<u8>(10).unwrap();
    assert!(matches!(gpu.seal_device_into(&sealer, &d_pt, &mut d_body), Err(GpuError::Unsupported(_))));
}

/// The dispatcher's GPU branch (what `seal_auto` / `open_auto` run for large messages once
/// the GPU measured faster), forced on: same bytes and errors as the CPU, and the GPU ran.
#[test]
fn dispatcher_gpu_branch_matches_bulk_cpu() {
    let Some(gpu) = engine() else { return };
    let d = Dispatcher::with_gpu_for_tests(gpu);
    let env = envelope();
    for (segment_size, len) in [(65536u32, (3 << 20) + 5), (8192, 100_000), (12288, 50_000)] {
        let sealer = env.sealer("tenant-a/tensors", &ctx(), Form::Stream { segment_size }).unwrap();
        let pt = random(len);
        assert_eq!(d.choose(len, segment_size as usize), Choice::Gpu);
        let (sealed, choice) = d.seal(&sealer, &pt).unwrap();
        assert_eq!(choice, Choice::Gpu, "segment size {segment_size}: the GPU failed and the CPU stood in");
        assert!(sealed == crate::bulk::cpu::seal(&sealer, &pt).unwrap(), "segment size {segment_size}: seal");
        let (opened, choice) = d.open(&env, &ctx(), &sealed).unwrap();
        assert_eq!(choice, Choice::Gpu, "segment size {segment_size}: open ran on the CPU");
        assert!(opened == pt, "segment size {segment_size}: open");
        let mut bad = sealed.clone();
        let at = sealer.header_bytes().len() + len / 2;
        bad[at] ^= 1;
        assert_eq!(
            d.open(&env, &ctx(), &bad).map(|_| ()).map_err(|e| e.to_string()),
            crate::bulk::cpu::open(&env, &ctx(), &bad).map(|_| ()).map_err(|e| e.to_string())
        );
    }
    // Segment sizes the GPU does not take stay on the CPU even when forced.
    for segment_size in [4096usize, 4097, 8200] {
        assert_eq!(d.choose(1 << 30, segment_size), Choice::Cpu, "segment size {segment_size}");
    }
    let sealer = env.sealer("tenant-a/tensors", &ctx(), Form::Stream { segment_size: 4096 }).unwrap();
    let pt = random(100_000);
    let (sealed, choice) = d.seal(&sealer, &pt).unwrap();
    assert_eq!(choice, Choice::Cpu);
    assert_eq!(d.open(&env, &ctx(), &sealed).unwrap(), (pt, Choice::Cpu));
}

/// `CRYPTOCORE_GPU_IMAGE` values (the override itself needs a device to show; this runs
/// everywhere). The parser alone: the process environment is shared by concurrent tests.
#[test]
fn image_choice_values() {
    use std::env::VarError;
    let parse = |v: &str| ImageChoice::parse(Ok(v.into())).ok();
    assert_eq!(ImageChoice::parse(Err(VarError::NotPresent)).ok(), Some(ImageChoice::Auto));
    assert_eq!(parse(""), Some(ImageChoice::Auto));
    assert_eq!(parse("auto"), Some(ImageChoice::Auto));
    assert_eq!(parse("PTX"), Some(ImageChoice::Ptx));
    assert_eq!(parse("cubin"), Some(ImageChoice::Cubin));
    assert!(matches!(ImageChoice::parse(Ok("sm_90".into())), Err(GpuError::Unsupported(_))));
}
