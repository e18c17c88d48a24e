//! Randomness: every key and every salt comes straight from aws-lc's CSPRNG.
//!
//! A salt must never repeat under one data key (a repeat means GCM nonce reuse), so salts
//! get the same generator as keys. aws-lc reseeds from the operating system and detects
//! fork and VM-snapshot restore itself. A faster user-space pool of salts was tried and
//! rejected: about 0.45 µs per small record was not worth re-creating, without those
//! detections, the generator's state outside aws-lc (a restored snapshot would replay it).

/// Fills `out` with cryptographically secure random bytes.
///
/// # Panics
///
/// Only if the operating system's random source fails, which leaves no safe way to go on:
/// continuing would mean sealing under predictable salts or keys.
#[allow(clippy::expect_used)]
pub(crate) fn fill(out: &mut [u8]) {
    aws_lc_rs::rand::fill(out).expect("operating-system CSPRNG failed");
}

/// A fresh random array.
pub(crate) fn array<const N: usize>() -> [u8; N] {
    let mut a = [0u8; N];
    fill(&mut a);
    a
}

/// A fresh random salt (public, must be unique).
pub(crate) fn salt<const N: usize>() -> [u8; N] {
    array()
}
