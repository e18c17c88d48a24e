//! Password hashing with argon2id, stored as PHC strings, so services never keep or log
//! plain passwords.
//!
//! ```
//! use crypto_core::password::{PasswordHasher, Verification};
//!
//! let hasher = PasswordHasher::default();
//! let stored = hasher.hash(b"correct horse battery staple")?;
//! assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
//! assert_eq!(hasher.verify(&stored, b"correct horse battery staple")?, Verification::Match);
//! assert_eq!(hasher.verify(&stored, b"Tr0ub4dor&3")?, Verification::Mismatch);
//! assert!(!hasher.needs_rehash(&stored)?);
//! # Ok::<(), crypto_core::password::PasswordError>(())
//! ```
//!
//! * Each hash has its own 16-byte salt from the operating system's CSPRNG and a 32-byte
//!   output; the PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) carries the
//!   parameters, so hashes made under older parameters still verify.
//! * The defaults are OWASP's first argon2id recommendation (19 MiB, 2 passes, 1 lane).
//!   [`PasswordHasher::needs_rehash`] says when a stored hash was made with other
//!   parameters: re-hash at the next successful login.
//! * A stored string is untrusted input: parameters above [`MAX_MEMORY_KIB`],
//!   [`MAX_ITERATIONS`] or [`MAX_LANES`] are refused before any work, so a planted hash
//!   cannot make verification eat memory or time. Only argon2id version 19 is accepted.
//! * Passwords longer than [`MAX_PASSWORD_BYTES`] are refused.
//! * The comparison of the computed hash with the stored one is constant-time (argon2's).

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Longest accepted password, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 4096;
/// Most memory a stored hash may ask for at verification: 1 GiB.
pub const MAX_MEMORY_KIB: u32 = 1 << 20;
/// Most passes a stored hash may ask for.
pub const MAX_ITERATIONS: u32 = 16;
/// Most lanes a stored hash may ask for.
pub const MAX_LANES: u32 = 16;
const SALT_LEN: usize = 16;
const OUTPUT_LEN: usize = 32;

/// Why hashing or verifying failed (never because of the password's content, which no
/// message contains).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    /// The password is empty or longer than [`MAX_PASSWORD_BYTES`].
    #[error("password must be 1 to {MAX_PASSWORD_BYTES} bytes")]
    BadPassword,
    /// The stored string is not an argon2id PHC string this module accepts.
    #[error("not an accepted password hash: {0}")]
    BadHash(String),
    /// Parameters out of range.
    #[error("argon2 parameters: {0}")]
    BadParameters(String),
}

/// Outcome of [`PasswordHasher::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// The password matches.
    Match,
    /// It does not.
    Mismatch,
}

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordParams {
    /// Memory in KiB (8 × lanes ..= [`MAX_MEMORY_KIB`]).
    pub memory_kib: u32,
    /// Passes (1 ..= [`MAX_ITERATIONS`]).
    pub iterations: u32,
    /// Lanes (1 ..= [`MAX_LANES`]).
    pub lanes: u32,
}

impl Default for PasswordParams {
    /// OWASP's argon2id recommendation: m = 19 MiB, t = 2, p = 1.
    fn default() -> Self {
        Self { memory_kib: 19 * 1024, iterations: 2, lanes: 1 }
    }
}

impl PasswordParams {
    fn check(&self) -> Result<Params, PasswordError> {
        if self.memory_kib > MAX_MEMORY_KIB || self.iterations > MAX_ITERATIONS || self.lanes > MAX_LANES {
            return Err(PasswordError::BadParameters(format!(
                "m={}, t={}, p={} exceed m={MAX_MEMORY_KIB}, t={MAX_ITERATIONS}, p={MAX_LANES}",
                self.memory_kib, self.iterations, self.lanes
            )));
        }
        Params::new(self.memory_kib, self.iterations, self.lanes, Some(OUTPUT_LEN))
            .map_err(|e| PasswordError::BadParameters(e.to_string()))
    }
}

/// Hashes and verifies passwords under one set of parameters.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    params: PasswordParams,
    argon2: Argon2<'static>,
}

impl Default for PasswordHasher {
    fn default() -> Self {
        // The defaults are in range, so this cannot fail; fall back to argon2's own
        // defaults (identical values) rather than panic.
        Self::new(PasswordParams::default()).unwrap_or_else(|_| Self {
            params: PasswordParams::default(),
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default()),
        })
    }
}

fn check_password(password: &[u8]) -> Result<(), PasswordError> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::BadPassword);
    }
    Ok(())
}

impl PasswordHasher {
    /// A hasher producing hashes with `params`.
    pub fn new(params: PasswordParams) -> Result<Self, PasswordError> {
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.check()?);
        Ok(Self { params, argon2 })
    }

    /// The parameters new hashes get.
    pub fn params(&self) -> PasswordParams {
        self.params
    }

    /// A fresh salted argon2id hash of `password`, as a PHC string.
    pub fn hash(&self, password: &[u8]) -> Result<String, PasswordError> {
        check_password(password)?;
        let salt = SaltString::encode_b64(&crate::rand::salt::<SALT_LEN>())
            .map_err(|e| PasswordError::BadParameters(e.to_string()))?;
        let hash =
            self.argon2.hash_password(password, &salt).map_err(|e| PasswordError::BadParameters(e.to_string()))?;
        Ok(hash.to_string())
    }

    /// Checks `password` against a stored PHC string (made under any accepted parameters).
    /// An empty or over-long password is a [`Verification::Mismatch`], not an error.
    pub fn verify(&self, stored: &str, password: &[u8]) -> Result<Verification, PasswordError> {
        let (hash, params) = parse(stored)?;
        if check_password(password).is_err() {
            return Ok(Verification::Mismatch);
        }
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.check()?);
        match argon2.verify_password(password, &hash) {
            Ok(()) => Ok(Verification::Match),
            Err(argon2::password_hash::Error::Password) => Ok(Verification::Mismatch),
            Err(e) => Err(PasswordError::BadHash(e.to_string())),
        }
    }

    /// Whether `stored` was made with other parameters (or output length) than this
    /// hasher's: re-hash the password at its next successful verification.
    pub fn needs_rehash(&self, stored: &str) -> Result<bool, PasswordError> {
        let (hash, params) = parse(stored)?;
        let output_len = hash.hash.map(|h| h.len()).unwrap_or(0);
        Ok(params != self.params || output_len != OUTPUT_LEN)
    }
}

/// The parameters a stored PHC string asks for (after the same checks as
/// [`PasswordHasher::verify`]): lets a service refuse costs it will not pay before verifying.
pub fn params_of(stored: &str) -> Result<PasswordParams, PasswordError> {
    parse(stored).map(|(_, p)| p)
}

/// Parses and bounds a stored string before any work is done with it.
fn parse(stored: &str) -> Result<(PasswordHash<'_>, PasswordParams), PasswordError> {
    if stored.len() > 256 {
        return Err(PasswordError::BadHash("longer than 256 characters".into()));
    }
    let hash = PasswordHash::new(stored).map_err(|e| PasswordError::BadHash(e.to_string()))?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(PasswordError::BadHash(format!("algorithm {} (only argon2id)", hash.algorithm)));
    }
    if hash.version != Some(0x13) {
        return Err(PasswordError::BadHash("only argon2 version 19".into()));
    }
    // Bound the costs before argon2 sees them: its parameter constructor computes
    // `p * 8`, which overflows (a panic where overflow checks are on) for p >= 2^29, and a
    // parameter given twice has no defined meaning. Found by the `password_phc` fuzz target.
    let mut seen: Vec<&str> = Vec::with_capacity(4);
    for (ident, value) in hash.params.iter() {
        let name = ident.as_str();
        if seen.contains(&name) {
            return Err(PasswordError::BadHash(format!("parameter {name} given twice")));
        }
        seen.push(name);
        let limit = match name {
            "m" => MAX_MEMORY_KIB,
            "t" => MAX_ITERATIONS,
            "p" => MAX_LANES,
            _ => continue,
        };
        let v = value.decimal().map_err(|e| PasswordError::BadHash(format!("parameter {name}: {e}")))?;
        if v > limit {
            return Err(PasswordError::BadParameters(format!("{name}={v} exceeds {limit}")));
        }
    }
    let params = Params::try_from(&hash).map_err(|e| PasswordError::BadHash(e.to_string()))?;
    let params = PasswordParams { memory_kib: params.m_cost(), iterations: params.t_cost(), lanes: params.p_cost() };
    match (&hash.salt, &hash.hash) {
        (Some(_), Some(h)) if h.len() >= 16 => {}
        _ => return Err(PasswordError::BadHash("salt and a hash of at least 16 bytes required".into())),
    }
    params.check()?;
    Ok((hash, params))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn cheap() -> PasswordHasher {
        PasswordHasher::new(PasswordParams { memory_kib: 64, iterations: 1, lanes: 1 }).unwrap()
    }

    #[test]
    fn hash_verify_and_salting() {
        let h = cheap();
        let a = h.hash(b"hunter2").unwrap();
        let b = h.hash(b"hunter2").unwrap();
        assert_ne!(a, b, "a fresh salt per hash");
        assert!(a.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{a}");
        assert!(!a.contains("hunter2"));
        assert_eq!(h.verify(&a, b"hunter2").unwrap(), Verification::Match);
        assert_eq!(h.verify(&a, b"hunter3").unwrap(), Verification::Mismatch);
        assert_eq!(h.verify(&a, b"").unwrap(), Verification::Mismatch);
        assert_eq!(h.hash(b""), Err(PasswordError::BadPassword));
        assert_eq!(h.hash(&[b'x'; MAX_PASSWORD_BYTES + 1]), Err(PasswordError::BadPassword));
    }

    #[test]
    fn default_parameters_and_rehash() {
        let strong = PasswordHasher::default();
        let stored = strong.hash(b"pw").unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{stored}");
        assert!(!strong.needs_rehash(&stored).unwrap());
        // A hash made under the old (cheap) parameters still verifies under the new
        // hasher, and is flagged for re-hashing.
        let old = cheap().hash(b"pw").unwrap();
        assert_eq!(strong.verify(&old, b"pw").unwrap(), Verification::Match);
        assert!(strong.needs_rehash(&old).unwrap());
    }

    #[test]
    fn known_answer_from_the_reference_implementation() {
        // RFC 9106 parameters are not PHC-encoded there, so this vector comes from the
        // argon2 reference CLI: `echo -n password | argon2 somesalt -id -t 2 -m 16 -p 1 -l 32 -e`.
        let stored = "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc";
        let h = cheap();
        assert_eq!(h.verify(stored, b"password").unwrap(), Verification::Match);
        assert_eq!(h.verify(stored, b"passwore").unwrap(), Verification::Mismatch);
    }

    #[test]
    fn hostile_stored_strings_are_refused_before_work() {
        let h = cheap();
        for bad in [
            "",
            "plain",
            "$argon2i$v=19$m=64,t=1,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
            "$argon2id$v=16$m=64,t=1,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
            "$argon2id$v=19$m=4194304,t=1,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
            "$argon2id$v=19$m=64,t=1000,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
            "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHQ",
            "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHQ$AAAA",
            // Found by fuzzing: a huge lane count overflowed argon2's `p * 8` (a panic with
            // overflow checks), and parameters given twice.
            "$argon2id$v=19$m=64,t=1,p=41,p=4,t=8,p=2882428284,t=8,t=8$VVVVVV2$MmcJHAp8Arh8ArZWbWZrb2Gb",
            "$argon2id$v=19$m=64,t=1,p=2882428284$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
            "$argon2id$v=19$m=64,t=1,p=1,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
        ] {
            assert!(h.verify(bad, b"password").is_err(), "{bad:?}");
            assert!(h.needs_rehash(bad).is_err(), "{bad:?}");
        }
        assert!(h.verify(&"$".repeat(10_000), b"pw").is_err());
        assert!(
            PasswordHasher::new(PasswordParams { memory_kib: MAX_MEMORY_KIB + 1, iterations: 1, lanes: 1 }).is_err()
        );
    }
}
