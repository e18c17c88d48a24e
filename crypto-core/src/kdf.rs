//! HKDF-SHA256 and SHA-256 (RFC 5869 / FIPS 180-4), through aws-lc.

use aws_lc_rs::{digest, hkdf};

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// An HKDF pseudorandom key (the output of Extract).
pub(crate) struct Prk(hkdf::Prk);

impl Prk {
    /// HKDF-Extract(salt, ikm).
    pub(crate) fn extract(salt: &[u8], ikm: &[u8]) -> Self {
        Prk(hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm))
    }

    /// HKDF-Expand(prk, info = concatenation of `info`, out.len()); `out.len()` ≤ 8160.
    pub(crate) fn expand(&self, info: &[&[u8]], out: &mut [u8]) {
        let ok = self.0.expand(info, Len(out.len())).and_then(|okm| okm.fill(out));
        // Fails only for outputs longer than 255 hash blocks; callers use fixed small sizes.
        debug_assert!(ok.is_ok(), "HKDF output length out of range");
        if ok.is_err() {
            out.fill(0);
        }
    }
}

/// HKDF-SHA256(salt, ikm, info) into `out`.
pub(crate) fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[&[u8]], out: &mut [u8]) {
    Prk::extract(salt, ikm).expand(info, out)
}

/// SHA-256 of the concatenation of `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}
