//! Stored password hashes are untrusted input (VerifyPassword takes them from callers):
//! parsing arbitrary strings never panics, and hashes asking for more than the bounds are
//! refused before any work. Verification runs only for cheap parameters so the fuzzer
//! stays fast.
#![no_main]

use std::sync::OnceLock;

use crypto_core::password::{PasswordHasher, PasswordParams, Verification};
use libfuzzer_sys::fuzz_target;

fn hasher() -> &'static PasswordHasher {
    static H: OnceLock<PasswordHasher> = OnceLock::new();
    H.get_or_init(|| PasswordHasher::new(PasswordParams { memory_kib: 64, iterations: 1, lanes: 1 }).expect("params"))
}

/// The `m=` and `t=` values of a PHC string, if plainly there.
fn cost(s: &str) -> Option<(u64, u64)> {
    let field = |k: &str| s.split([',', '$']).find_map(|f| f.strip_prefix(k)).and_then(|v| v.parse().ok());
    Some((field("m=")?, field("t=")?))
}

fuzz_target!(|data: &[u8]| {
    let Ok(stored) = std::str::from_utf8(data) else { return };
    let h = hasher();
    let parsed = h.needs_rehash(stored);
    if parsed.is_ok() && cost(stored).is_some_and(|(m, t)| m <= 256 && t <= 2) {
        // Parsed fine: verification must give an answer (or a typed error), never panic.
        let r = h.verify(stored, b"password");
        assert!(matches!(r, Ok(Verification::Match | Verification::Mismatch) | Err(_)));
    }
});
