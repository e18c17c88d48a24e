//! Randomness: one place that asks aws-lc's CSPRNG (seeded from the operating system).

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
