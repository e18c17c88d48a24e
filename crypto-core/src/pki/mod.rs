//! An internal certificate authority: a root and intermediates, leaf certificates for TLS
//! servers and clients (DNS, IP and URI/SPIFFE names), CSR signing behind a name policy,
//! revocation with CRLs, chain verification with typed errors, and renewal timing.
//!
//! The public interface is:
//! * [`CertificateAuthority`], with [`CertificateAuthority::new_root`],
//!   [`CertificateAuthority::new_intermediate`], [`CertificateAuthority::issue`] (key
//!   generated here), [`CertificateAuthority::sign_csr`] (key kept by the requester) and
//!   [`CertificateAuthority::crl`];
//! * [`KeyType`] (RSA-2048 default, RSA-3072/4096, ECDSA P-256/P-384, Ed25519) and
//!   [`PrivateKey`] (a secret: zeroized, never printed);
//! * [`SubjectAltName`], [`SanPolicy`], [`Serial`], [`RevocationReason`];
//! * [`verify_chain`] and [`ChainError`]; [`needs_renewal`]; [`to_pem`],
//!   [`decode_certificates`], [`split_bundle`].
//!
//! Certificates are built by `rcgen`, parsed by `x509-parser`; every private-key operation
//! (key generation, signing) and every signature verification runs in aws-lc-rs. RSA
//! private keys never touch the pure-Rust `rsa` crate, which only reads public keys
//! (RUSTSEC-2023-0071). Serials are 159 random bits; certificates are back-dated one
//! minute (at most a quarter of their lifetime) against clock skew.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use crypto_core::pki::*;
//!
//! let now = SystemTime::now();
//! let root = CertificateAuthority::new_root(&CaOptions::new("Example Root"), now)?;
//! let ca = root.new_intermediate(
//!     &CaOptions { path_len: Some(0), ttl: Duration::from_secs(5 * 365 * 86_400), ..CaOptions::new("Example Issuing CA") },
//!     now,
//! )?;
//! let leaf = ca.issue(
//!     &LeafRequest {
//!         common_name: "db.tenant-a.svc".into(),
//!         sans: vec![SubjectAltName::parse("dns:db.tenant-a.svc")?],
//!         key_type: KeyType::EcdsaP256,
//!         ttl: Duration::from_secs(30 * 86_400),
//!         usage: Usage::Server,
//!     },
//!     now,
//! )?;
//! let chain = verify_chain(
//!     leaf.chain_pem.as_bytes(),
//!     &[leaf.chain_pem.clone().into_bytes()],
//!     &[root.certificate_der().to_vec()],
//!     &[],
//!     Some(Usage::Server),
//!     now,
//! )?;
//! assert_eq!(chain.certificates.len(), 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod ca;
mod keys;
mod names;
mod verify;

pub use ca::{
    CaOptions, CertificateAuthority, IssuedCertificate, LeafRequest, MAX_CA_TTL, MAX_LEAF_TTL, Revocation, Usage,
};
pub use keys::{KeyType, PrivateKey};
pub use names::{RevocationReason, SanPolicy, Serial, SubjectAltName};
pub use verify::{ChainError, VerifiedChain, needs_renewal, verify_chain};

use std::time::{Duration, SystemTime};

/// Why a PKI operation failed. Messages name what is wrong, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Input that does not parse (PEM, DER, CSR, key).
    #[error("malformed: {0}")]
    Malformed(String),
    /// A key type or algorithm this CA does not accept.
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    /// A key too weak to certify (RSA below 2048 bits).
    #[error("key too weak: {0}")]
    WeakKey(String),
    /// The CSR's signature does not verify with its own key.
    #[error("CSR signature does not verify")]
    BadSignature,
    /// The CSR asks for a CA certificate.
    #[error("CSR asks for a CA certificate (basicConstraints CA:TRUE); refused")]
    CaRequested,
    /// A requested name is not allowed by the policy.
    #[error("name not allowed by the policy: {0}")]
    SanNotAllowed(String),
    /// A name, serial or reason with bad syntax.
    #[error("invalid: {0}")]
    InvalidName(String),
    /// A lifetime that is zero, too long, or outlives the CA.
    #[error("invalid validity: {0}")]
    InvalidValidity(String),
    /// The certificate is not a CA certificate.
    #[error("not a CA certificate")]
    NotACa,
    /// The private key does not belong to the certificate.
    #[error("private key does not match the certificate")]
    KeyMismatch,
    /// Key generation or signing failed inside the crypto library.
    #[error("crypto: {0}")]
    Crypto(String),
}

/// PEM-encodes `der` under `label` (`CERTIFICATE`, `X509 CRL`, ...).
pub fn to_pem(label: &str, der: &[u8]) -> String {
    keys::pem_encode(label, der)
}

/// The certificates (DER) in `input` (PEM blocks labelled CERTIFICATE, or one DER).
pub fn decode_certificates(input: &[u8]) -> Result<Vec<Vec<u8>>, PkiError> {
    decode_pem_or_der_many(input, "CERTIFICATE")
}

/// Splits a bundle into trust anchors (self-signed certificates) and the intermediates
/// between them and the leaves, so a verifier trusts only the roots and still checks the
/// intermediates (validity, constraints, revocation).
pub fn split_bundle(bundle: &[u8]) -> Result<Bundle, PkiError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (mut anchors, mut intermediates) = (Vec::new(), Vec::new());
    for der in decode_certificates(bundle)? {
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| PkiError::Malformed(format!("bundle: {e}")))?;
        if cert.subject() == cert.issuer() && cert.verify_signature(None).is_ok() {
            anchors.push(der);
        } else {
            intermediates.push(der);
        }
    }
    if anchors.is_empty() {
        return Err(PkiError::Malformed("bundle has no self-signed root".into()));
    }
    Ok(Bundle { anchors, intermediates })
}

/// A CA bundle split by [`split_bundle`] (DER certificates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// Self-signed roots: the trust anchors.
    pub anchors: Vec<Vec<u8>>,
    /// Everything else.
    pub intermediates: Vec<Vec<u8>>,
}

/// Seconds since the Unix epoch (possibly negative) as a `SystemTime`.
pub(crate) fn system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// The DER inside one PEM block labelled `label`, or `input` itself when it is not PEM.
pub(crate) fn decode_pem_or_der(input: &[u8], label: &str) -> Result<Vec<u8>, PkiError> {
    let mut all = decode_pem_or_der_many(input, label)?;
    if all.is_empty() {
        return Err(PkiError::Malformed(format!("no {label} found")));
    }
    Ok(all.swap_remove(0))
}

/// Every PEM block labelled `label` in `input` (other blocks skipped), or `input` as one
/// DER object when it does not look like PEM.
pub(crate) fn decode_pem_or_der_many(input: &[u8], label: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let looks_pem = input.iter().skip_while(|b| b.is_ascii_whitespace()).take(11).eq(b"-----BEGIN ".iter());
    if !looks_pem {
        if input.is_empty() {
            return Err(PkiError::Malformed(format!("empty {label}")));
        }
        return Ok(vec![input.to_vec()]);
    }
    let blocks = pem::parse_many(input).map_err(|e| PkiError::Malformed(format!("PEM: {e}")))?;
    let wanted: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|p| p.tag() == label || (label == "CERTIFICATE REQUEST" && p.tag() == "NEW CERTIFICATE REQUEST"))
        .map(pem::Pem::into_contents)
        .collect();
    if wanted.is_empty() {
        return Err(PkiError::Malformed(format!("no PEM block labelled {label}")));
    }
    Ok(wanted)
}
