//! `envelope-gap`: where `Envelope::seal_in_place` loses against raw AES-GCM on one core.
//!
//! Re-seals one buffer again and again (so the figures say nothing about allocation or
//! fresh pages) with, per size:
//!
//! * `raw forward`: aws-lc-rs `seal_in_place_separate_tag` over 64 KiB chunks, first to
//!   last (the peer harness's raw row does one call over the whole buffer);
//! * `raw backward`: the same chunks, last to first: the order `seal_in_place` must take,
//!   because every segment moves forward by the header and the tags before it;
//! * `raw out of place`: the same chunks from the plaintext buffer into a second one
//!   (ciphertext ‖ tag per chunk, aws-lc-rs `seal_in_place_scatter` with an empty in-place
//!   part), as `seal_into` does;
//! * `seal_in_place`: the envelope (fresh data key, wrap, key derivation, header, and the
//!   move of each segment to its place).
//!
//! ```text
//! cargo build --release -p cryptocore-benches --bin envelope-gap
//! taskset -c 0 target/release/envelope-gap
//! ```
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use crypto_core::envelope::{EncryptionContext, Envelope};
use crypto_core::keys::Keyring;
use crypto_core::provider::LocalProvider;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const CHUNK: usize = 64 * 1024;

/// GB/s of `f` run `n` times over `bytes` bytes, best of three rounds.
fn rate(bytes: usize, n: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..n {
            f()?;
        }
        best = best.max((n * bytes) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    Ok(best)
}

fn raw_chunks(key: &LessSafeKey, buf: &mut [u8], backward: bool) -> Result<()> {
    let seal = |i: usize, chunk: &mut [u8]| -> Result<()> {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let tag = key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), chunk)?;
        let _ = std::hint::black_box(tag);
        Ok(())
    };
    if backward {
        buf.chunks_mut(CHUNK).enumerate().rev().try_for_each(|(i, c)| seal(i, c))
    } else {
        buf.chunks_mut(CHUNK).enumerate().try_for_each(|(i, c)| seal(i, c))
    }
}

/// Out of place, chunk by chunk, as `seal_to` does: `src` chunk → `dst` chunk ‖ tag.
fn raw_scatter(key: &LessSafeKey, src: &[u8], dst: &mut [u8]) -> Result<()> {
    for (i, (s, d)) in src.chunks(CHUNK).zip(dst.chunks_mut(CHUNK + 16)).enumerate() {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
        key.seal_in_place_scatter(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut [], s, d)?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let ring = Arc::new(Keyring::in_memory());
    ring.create_key("gap/bench")?;
    let envelope = Envelope::new(LocalProvider::new(ring));
    let context = EncryptionContext::new().with("tenant", "acme").with("purpose", "gap");
    let mut key_bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key_bytes)?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key_bytes)?);
    println!(
        "| size | raw forward GB/s | raw backward GB/s | raw out of place GB/s | seal_in_place GB/s | in place ÷ forward |"
    );
    println!("|---|---|---|---|---|---|");
    for (size, n) in [(1usize << 20, 2000usize), (64 << 20, 30)] {
        let mut buf = vec![0u8; size];
        aws_lc_rs::rand::fill(&mut buf)?;
        buf.reserve(size / CHUNK * 16 + 4096);
        let forward = rate(size, n, || raw_chunks(&key, &mut buf, false))?;
        let backward = rate(size, n, || raw_chunks(&key, &mut buf, true))?;
        let mut dst = vec![0u8; size + size / CHUNK * 16];
        let scatter = rate(size, n, || raw_scatter(&key, &buf[..size], &mut dst))?;
        let in_place = rate(size, n, || {
            buf.truncate(size);
            envelope.seal_in_place("gap/bench", &context, &mut buf)?;
            Ok(())
        })?;
        println!(
            "| {} MiB | {forward:.2} | {backward:.2} | {scatter:.2} | {in_place:.2} | {:.0} % |",
            size >> 20,
            100.0 * in_place / forward
        );
    }
    Ok(())
}
