#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The kernel model against aws-lc-rs and RustCrypto (through [`crate::aead`]), the NIST
//! CAVP and Wycheproof AES-256-GCM vectors (96-bit IV, 128-bit tag, empty AAD: the kernel
//! has no AAD input), and [`crate::bulk::cpu`] on whole messages.

use std::sync::Arc;

use super::*;
use crate::aead::{Aes256Gcm, Backend};
use crate::envelope::{EncryptionContext, Envelope, Form};
use crate::keys::Keyring;
use crate::provider::LocalProvider;

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    crate::rand::fill(&mut v);
    v
}

fn random_key_nonce() -> ([u8; 32], [u8; 12]) {
    let b = random(44);
    (b[..32].try_into().unwrap(), b[32..].try_into().unwrap())
}

/// Sizes that hit every boundary of the decomposition: empty, partial blocks, one lane's
/// stride (32 blocks), a chunk (512 blocks = 8192 bytes) and one more, several chunks with
/// a short first chunk.
const SIZES: &[usize] =
    &[0, 1, 15, 16, 17, 31, 32, 33, 511, 512, 513, 4095, 4096, 4097, 8191, 8192, 8193, 3 * 8192 + 5, 65536, 65536 + 17];

#[test]
fn matches_both_aead_backends_on_boundary_and_random_sizes() {
    let mut sizes = SIZES.to_vec();
    for _ in 0..8 {
        let r = random(4);
        sizes.push(u32::from_le_bytes(r.try_into().unwrap()) as usize % 100_000);
    }
    for len in sizes {
        let (key, nonce) = random_key_nonce();
        let pt = random(len);
        let got = seal(&key, &nonce, &pt).unwrap();
        for backend in Backend::ALL {
            let want = Aes256Gcm::new(backend, &key).seal(&nonce, b"", &pt).unwrap();
            assert!(got == want, "len {len}: kernel model differs from {}", backend.name());
        }
        assert_eq!(open(&key, &nonce, &got).unwrap(), pt, "len {len}: round trip");
        // Flip one bit of the ciphertext (if any) and one of the tag: both rejected.
        let mut bad = got.clone();
        let at = if len > 0 { len / 2 } else { 0 };
        bad[at] ^= 0x01;
        assert_eq!(open(&key, &nonce, &bad), Err(AeadError), "len {len}: flipped bit at {at} accepted");
        let mut bad = got.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x80;
        assert_eq!(open(&key, &nonce, &bad), Err(AeadError), "len {len}: flipped tag bit accepted");
        // The wrong nonce (other last-flag byte) fails too.
        let mut other = nonce;
        other[11] ^= 1;
        assert_eq!(open(&key, &other, &got), Err(AeadError), "len {len}: wrong nonce accepted");
    }
}

#[test]
fn too_short_for_a_tag_is_rejected() {
    let (key, nonce) = random_key_nonce();
    assert_eq!(open(&key, &nonce, &[0u8; 15]), Err(AeadError));
}

#[test]
fn batches_cover_the_message_in_order() {
    let g = Geometry::for_plaintext(Some(100), 1050).unwrap();
    let b = batches(&g, 1050, 4);
    assert_eq!(b.len(), 3);
    assert_eq!((b[0].first_index, b[0].segments, b[0].last_len, b[0].flag_last), (0, 4, 100, 0));
    assert_eq!((b[2].first_index, b[2].segments, b[2].last_len, b[2].flag_last), (8, 3, 50, 1));
    assert_eq!(b.iter().map(SegmentBatch::plaintext_len).sum::<u64>(), 1050);
    let empty = Geometry::for_plaintext(Some(100), 0).unwrap();
    let b = batches(&empty, 0, 4);
    assert_eq!((b.len(), b[0].segments, b[0].last_len, b[0].flag_last), (1, 1, 0, 1));
    assert_eq!(b[0].items(), 1);
}

fn envelope() -> Envelope<LocalProvider> {
    let keyring = Arc::new(Keyring::in_memory());
    keyring.create_key("tenant-a/blobs").unwrap();
    Envelope::new(LocalProvider::new(keyring))
}

fn ctx() -> EncryptionContext {
    EncryptionContext::new().with("tenant", "a")
}

/// Whole messages: the model's bytes are `bulk::cpu::seal`'s bytes (same sealer, so same
/// salt and keys), it opens what the CPU sealed, and it reports the CPU's errors.
#[test]
fn whole_messages_are_byte_identical_to_bulk_cpu() {
    let env = envelope();
    // 16 is the smallest segment size, 17 is not a multiple of the block size, 8192 is one
    // chunk, 20000 spans three chunks with a short first one.
    for segment_size in [16u32, 17, 4096, 8192, 20_000] {
        let s = segment_size as usize;
        for len in [0, 1, s - 1, s, s + 1, 3 * s + 5, 7 * s] {
            let pt = random(len);
            let sealer = env.sealer("tenant-a/blobs", &ctx(), Form::Stream { segment_size }).unwrap();
            let cpu = crate::bulk::cpu::seal(&sealer, &pt).unwrap();
            let model = seal_message(&sealer, &pt).unwrap();
            assert!(model == cpu, "segment size {s}, len {len}: model differs from bulk::cpu");
            assert_eq!(open_message(&env, &ctx(), &cpu).unwrap(), pt, "segment size {s}, len {len}");
        }
    }
    // The compact form is one segment of the whole plaintext.
    for len in [0usize, 1, 100, 9000] {
        let pt = random(len);
        let sealer = env.sealer("tenant-a/blobs", &ctx(), Form::Compact).unwrap();
        assert!(seal_message(&sealer, &pt).unwrap() == crate::bulk::cpu::seal(&sealer, &pt).unwrap());
        assert_eq!(open_message(&env, &ctx(), &sealer.seal(&pt).unwrap()).unwrap(), pt);
    }
}

#[test]
fn whole_message_errors_match_bulk_cpu() {
    let env = envelope();
    let pt = random(10 * 4096 + 100);
    let sealer = env.sealer("tenant-a/blobs", &ctx(), Form::Stream { segment_size: 4096 }).unwrap();
    let sealed = sealer.seal(&pt).unwrap();
    let header_len = sealer.header_bytes().len();
    let same = |bytes: &[u8]| {
        let cpu = crate::bulk::cpu::open(&env, &ctx(), bytes).map_err(|e| e.to_string());
        let model = open_message(&env, &ctx(), bytes).map_err(|e| e.to_string());
        assert_eq!(model, cpu);
        model
    };
    // A flipped bit in segment 3's ciphertext and in the last segment's tag.
    let mut t = sealed.clone();
    t[header_len + 3 * 4112 + 7] ^= 4;
    assert_eq!(same(&t), Err(EnvelopeError::SegmentAuthentication { index: 3 }.to_string()));
    let mut t = sealed.clone();
    let n = t.len();
    t[n - 1] ^= 1;
    assert!(same(&t).is_err());
    // Truncation at a segment boundary, trailing data, swapped segments, wrong context.
    let cut = &sealed[..header_len + 5 * 4112];
    assert_eq!(same(cut), Err(EnvelopeError::Truncated.to_string()));
    let mut swapped = sealed.clone();
    let (a, b) = (header_len + 4112, header_len + 2 * 4112);
    let seg1 = swapped[a..b].to_vec();
    swapped.copy_within(b..b + 4112, a);
    swapped[b..b + 4112].copy_from_slice(&seg1);
    assert_eq!(same(&swapped), Err(EnvelopeError::SegmentAuthentication { index: 1 }.to_string()));
    let other = EncryptionContext::new().with("tenant", "b");
    assert!(open_message(&env, &other, &sealed).is_err());
    // Untouched, it opens.
    assert_eq!(same(&sealed), Ok(pt));
}

/// Multi-launch messages: batches split at arbitrary segment counts give the same bytes.
#[test]
fn split_launches_give_the_same_bytes() {
    let env = envelope();
    let pt = random(37 * 512 + 3);
    let sealer = env.sealer("tenant-a/blobs", &ctx(), Form::Stream { segment_size: 512 }).unwrap();
    let whole = crate::bulk::cpu::seal(&sealer, &pt).unwrap();
    let h = sealer.header_bytes().len();
    let geometry = Geometry::for_plaintext(Some(512), pt.len()).unwrap();
    for max in [1u32, 2, 5, 38, 100] {
        let mut body = Vec::new();
        let mut off = 0usize;
        for batch in batches(&geometry, pt.len(), max) {
            let p = launch_params(sealer.keys(), &batch);
            let n = batch.plaintext_len() as usize;
            let mut out = vec![0u8; batch.body_len() as usize];
            assert!(run(&p, Direction::Seal, &pt[off..off + n], &mut out).iter().all(|&f| f));
            body.extend_from_slice(&out);
            off += n;
        }
        assert!(body == whole[h..], "max {max} segments per launch");
    }
}

// ---------------------------------------------------------------------------------------
// Known-answer vectors
// ---------------------------------------------------------------------------------------

/// Wycheproof `aes_gcm_test.json` (crate `wycheproof`, as in `tests/aead_vectors.rs`):
/// the groups with 256-bit keys, 96-bit nonces and 128-bit tags, cases with empty AAD.
#[test]
fn wycheproof_empty_aad_vectors() {
    use wycheproof::TestResult;
    use wycheproof::aead::{TestName, TestSet};

    let set = TestSet::load(TestName::AesGcm).expect("load Wycheproof aes_gcm_test.json");
    let (mut valid, mut invalid) = (0usize, 0usize);
    for group in &set.test_groups {
        if group.key_size != 256 || group.nonce_size != 96 || group.tag_size != 128 {
            continue;
        }
        for test in group.tests.iter().filter(|t| t.aad.is_empty()) {
            let key: [u8; 32] = test.key.as_slice().try_into().unwrap();
            let nonce: [u8; 12] = test.nonce.as_slice().try_into().unwrap();
            let ct_tag = [test.ct.as_slice(), test.tag.as_slice()].concat();
            let what = format!("wycheproof tcId {}", test.tc_id);
            match test.result {
                TestResult::Valid | TestResult::Acceptable => {
                    valid += 1;
                    assert!(seal(&key, &nonce, &test.pt).unwrap() == ct_tag, "{what}: seal");
                    assert_eq!(open(&key, &nonce, &ct_tag).unwrap(), test.pt.as_slice(), "{what}: open");
                }
                TestResult::Invalid => {
                    invalid += 1;
                    assert_eq!(open(&key, &nonce, &ct_tag), Err(AeadError), "{what}: accepted");
                }
            }
        }
    }
    eprintln!("kernel_ref wycheproof: {valid} valid + {invalid} invalid empty-AAD cases");
    // Observed with wycheproof 0.6.0: 21 valid, 27 invalid.
    assert!(valid >= 21 && invalid >= 27, "only {valid} valid / {invalid} invalid cases ran");
}

/// One CAVP record: hex fields by name, plus whether it is marked FAIL.
struct Record {
    fields: std::collections::HashMap<String, Vec<u8>>,
    fail: bool,
}

impl Record {
    fn get(&self, name: &str) -> &[u8] {
        self.fields.get(name).map(Vec::as_slice).unwrap_or_else(|| panic!("record without {name}"))
    }
}

/// Minimal `.rsp` reader: records start at `Count =`; `[..]` headers and `#` comments are
/// skipped (the committed files hold only IVlen = 96, Taglen = 128 sections).
fn parse_rsp(text: &str) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if line == "FAIL" {
            out.last_mut().unwrap().fail = true;
            continue;
        }
        let (name, value) = line.split_once('=').unwrap();
        let (name, value) = (name.trim(), value.trim());
        if name == "Count" {
            out.push(Record { fields: Default::default(), fail: false });
            continue;
        }
        out.last_mut().unwrap().fields.insert(name.to_owned(), hex::decode(value).unwrap());
    }
    out
}

const NIST_ENCRYPT: &str = include_str!("../../../tests/vectors/nist/gcmEncryptExtIV256.rsp");
const NIST_DECRYPT: &str = include_str!("../../../tests/vectors/nist/gcmDecrypt256.rsp");

#[test]
fn nist_cavp_empty_aad_vectors() {
    let mut encrypt = 0;
    for r in parse_rsp(NIST_ENCRYPT).iter().filter(|r| r.get("AAD").is_empty()) {
        let key: [u8; 32] = r.get("Key").try_into().unwrap();
        let iv: [u8; 12] = r.get("IV").try_into().unwrap();
        let want = [r.get("CT"), r.get("Tag")].concat();
        assert!(seal(&key, &iv, r.get("PT")).unwrap() == want, "gcmEncryptExtIV256 Key {}", hex::encode(key));
        encrypt += 1;
    }
    let (mut pass, mut fail) = (0, 0);
    for r in parse_rsp(NIST_DECRYPT).iter().filter(|r| r.get("AAD").is_empty()) {
        let key: [u8; 32] = r.get("Key").try_into().unwrap();
        let iv: [u8; 12] = r.get("IV").try_into().unwrap();
        let ct_tag = [r.get("CT"), r.get("Tag")].concat();
        if r.fail {
            assert_eq!(open(&key, &iv, &ct_tag), Err(AeadError), "gcmDecrypt256 FAIL record accepted");
            fail += 1;
        } else {
            assert_eq!(open(&key, &iv, &ct_tag).unwrap(), r.get("PT"), "gcmDecrypt256 Key {}", hex::encode(key));
            pass += 1;
        }
    }
    eprintln!("kernel_ref NIST CAVP: {encrypt} encrypt, {pass} decrypt, {fail} decrypt-FAIL empty-AAD records");
    // The committed files hold 75 encrypt records and 75 decrypt records (42 pass, 33 FAIL)
    // with empty AAD.
    assert!(encrypt >= 75 && pass >= 42 && fail >= 33);
}

// ---------------------------------------------------------------------------------------
// The CUDA source follows the model
// ---------------------------------------------------------------------------------------

const CUDA_SOURCE: &str = include_str!("../gpu/aes_gcm.cu");

fn cuda_define(name: &str) -> u64 {
    let prefix = format!("#define {name} ");
    let line = CUDA_SOURCE.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no #define {name}"));
    line[prefix.len()..].split_whitespace().next().unwrap().trim_end_matches('u').parse().unwrap()
}

#[test]
fn cuda_source_constants_match_the_model() {
    assert_eq!(cuda_define("GCM_LANES"), LANES as u64);
    assert_eq!(cuda_define("GCM_BLOCKS_PER_LANE"), BLOCKS_PER_LANE as u64);
    assert_eq!(cuda_define("GCM_UNROLL"), UNROLL as u64);
    assert_eq!(cuda_define("GCM_CHUNK_BLOCKS"), CHUNK_BLOCKS as u64);
    assert_eq!(cuda_define("GCM_H_POWERS"), H_POWERS as u64);
    assert_eq!(cuda_define("GCM_PARAMS_SIZE"), KERNEL_PARAMS_SIZE as u64);
}

#[test]
fn cuda_source_t0_table_matches_the_model() {
    let start = CUDA_SOURCE.find("GCM_T0[256] = {").expect("T0 table in the CUDA source");
    let body = &CUDA_SOURCE[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find("};").unwrap()];
    let words: Vec<u32> = body
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|w| u32::from_str_radix(w.trim_start_matches("0x").trim_end_matches('u'), 16).unwrap())
        .collect();
    assert_eq!(words.as_slice(), aes::T0.as_slice());
}

#[test]
fn kernel_params_layout_matches_the_cuda_struct() {
    // Offsets asserted with offsetof() in the CUDA source (GCM_OFF_* defines).
    let p = KernelParams::new(
        &[7; 32],
        &[1; 7],
        &SegmentBatch { first_index: 0, segments: 1, segment_size: 16, last_len: 16, flag_last: 1, flag_other: 0 },
    );
    use core::mem::offset_of;
    assert_eq!(offset_of!(KernelParams, h_pow) as u64, cuda_define("GCM_OFF_H_POW"));
    assert_eq!(offset_of!(KernelParams, h_chunk) as u64, cuda_define("GCM_OFF_H_CHUNK"));
    assert_eq!(offset_of!(KernelParams, segment_size) as u64, cuda_define("GCM_OFF_SEGMENT_SIZE"));
    assert_eq!(offset_of!(KernelParams, first_index) as u64, cuda_define("GCM_OFF_FIRST_INDEX"));
    assert_eq!(offset_of!(KernelParams, nonce_prefix) as u64, cuda_define("GCM_OFF_NONCE_PREFIX"));
    assert_eq!(offset_of!(KernelParams, flag_other) as u64, cuda_define("GCM_OFF_FLAG_OTHER"));
    assert!(!format!("{p:?}").contains("round_keys"), "Debug must not show key material");
}

/// The committed kernel images were built from this source: `scripts/build-gpu-kernels.sh`
/// records its hash; editing `aes_gcm.cu` without rebuilding fails here.
#[test]
fn committed_kernel_images_match_the_cuda_source() {
    use sha2::Digest;
    let recorded = include_str!("../gpu/kernels/SOURCE_SHA256");
    let digest = hex::encode(sha2::Sha256::digest(CUDA_SOURCE.as_bytes()));
    assert_eq!(
        recorded.split_whitespace().next(),
        Some(digest.as_str()),
        "aes_gcm.cu changed since the kernels were built: run scripts/build-gpu-kernels.sh"
    );
}
