//! Randomness from aws-lc's CSPRNG (seeded from the operating system).
//!
//! Keys come straight from aws-lc, one call per key. Salts (public values that must
//! never repeat) come from a small per-thread pool refilled from aws-lc, because one
//! aws-lc call costs about 0.6 µs on some CPUs whatever its size, more than the rest of
//! sealing a small record. The pool is fork-safe: it remembers the process id it was filled
//! in and is discarded when that changes (the check OpenSSL's DRBG used), so a forked child
//! never replays its parent's salts.

use std::cell::RefCell;

use zeroize::Zeroize;

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

/// A fresh random array, straight from aws-lc (for keys).
pub(crate) fn array<const N: usize>() -> [u8; N] {
    let mut a = [0u8; N];
    fill(&mut a);
    a
}

const POOL_LEN: usize = 4096;

struct Pool {
    bytes: [u8; POOL_LEN],
    used: usize,
    pid: u32,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; POOL_LEN], used: POOL_LEN, pid: 0 }) };
}

/// A fresh random salt (public, must be unique): from the per-thread pool.
pub(crate) fn salt<const N: usize>() -> [u8; N] {
    const { assert!(N <= POOL_LEN) };
    let pid = std::process::id();
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.pid != pid || pool.used + N > POOL_LEN {
            fill(&mut pool.bytes);
            pool.used = 0;
            pool.pid = pid;
        }
        let mut out = [0u8; N];
        let start = pool.used;
        out.copy_from_slice(&pool.bytes[start..start + N]);
        // Bytes handed out are erased so the pool never holds a value twice.
        pool.bytes[start..start + N].zeroize();
        pool.used += N;
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salts_do_not_repeat_across_refills() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(3 * POOL_LEN / 32) {
            assert!(seen.insert(salt::<32>()));
        }
    }
}
