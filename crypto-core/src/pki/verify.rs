//! Chain verification and the renewal helper.
//!
//! [`verify_chain`] builds a path from a leaf through the given intermediates to one of
//! the trust anchors and checks, at a given time: every signature (only SHA-2 RSA
//! PKCS#1 v1.5, ECDSA P-256/P-384 with SHA-256/384 and Ed25519 are accepted: no SHA-1),
//! validity windows, that every issuer is a CA allowed to sign certificates, path-length
//! limits, DNS/IP name constraints, the leaf's extended key usage, and revocation against
//! every CRL given for an issuer in the path (whose signature and freshness are checked).

use std::time::SystemTime;

use x509_parser::prelude::{FromDer, X509Certificate};

use super::names::{RevocationReason, Serial, SubjectAltName};
use super::{Usage, decode_pem_or_der, decode_pem_or_der_many, system_time};

/// Longest chain followed (leaf included).
const MAX_DEPTH: usize = 8;

/// Why a chain did not verify. `index` counts from the leaf (0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// A certificate or CRL could not be parsed.
    #[error("certificate {index}: malformed: {reason}")]
    Malformed {
        /// Position in the chain.
        index: usize,
        /// Parser message.
        reason: String,
    },
    /// No issuer for this certificate among the intermediates and trust anchors.
    #[error("certificate {index}: issuer not found among the chain and trust anchors")]
    UnknownIssuer {
        /// Position.
        index: usize,
    },
    /// The signature does not verify under the issuer's key.
    #[error("certificate {index}: bad signature")]
    BadSignature {
        /// Position.
        index: usize,
    },
    /// The signature algorithm is not accepted (e.g. SHA-1).
    #[error("certificate {index}: signature algorithm not accepted")]
    UnsupportedSignatureAlgorithm {
        /// Position.
        index: usize,
    },
    /// Past the certificate's notAfter.
    #[error("certificate {index}: expired")]
    Expired {
        /// Position.
        index: usize,
    },
    /// Before the certificate's notBefore.
    #[error("certificate {index}: not yet valid")]
    NotYetValid {
        /// Position.
        index: usize,
    },
    /// An issuer is not a CA (basicConstraints) or may not sign certificates (keyUsage).
    #[error("certificate {index}: not a CA allowed to sign certificates")]
    NotACa {
        /// Position of the would-be issuer.
        index: usize,
    },
    /// More CAs below an issuer than its pathLenConstraint allows.
    #[error("certificate {index}: path length constraint exceeded")]
    PathLenExceeded {
        /// Position of the constraining CA.
        index: usize,
    },
    /// A name outside an issuer's permitted subtrees.
    #[error("name {name} violates the name constraints of certificate {index}")]
    NameConstraint {
        /// Position of the constraining CA.
        index: usize,
        /// The offending name.
        name: String,
    },
    /// The leaf is not valid for the asked usage (extended key usage).
    #[error("leaf certificate not valid for {0}")]
    WrongUsage(&'static str),
    /// A certificate in the path is revoked.
    #[error("certificate {index} (serial {serial}) is revoked: {reason}")]
    Revoked {
        /// Position.
        index: usize,
        /// Its serial.
        serial: String,
        /// RFC 5280 reason name.
        reason: &'static str,
    },
    /// A CRL given for an issuer is badly signed or out of date.
    #[error("CRL of certificate {index}'s issuer: {reason}")]
    CrlInvalid {
        /// Position of the certificate the CRL was needed for.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A verified path, leaf first, anchor last (DER).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    /// The certificates, leaf first.
    pub certificates: Vec<Vec<u8>>,
}

fn parse(der: &[u8], index: usize) -> Result<X509Certificate<'_>, ChainError> {
    let cert = match X509Certificate::from_der(der) {
        Ok(([], c)) => c,
        Ok(_) => return Err(ChainError::Malformed { index, reason: "trailing bytes".into() }),
        Err(e) => return Err(ChainError::Malformed { index, reason: e.to_string() }),
    };
    // Fail closed: an extension this verifier cannot read, or a critical one it does not
    // understand, rejects the certificate (RFC 5280 §4.2).
    for ext in cert.extensions() {
        use x509_parser::extensions::ParsedExtension;
        match ext.parsed_extension() {
            ParsedExtension::ParseError { .. } => {
                return Err(ChainError::Malformed { index, reason: format!("unreadable extension {}", ext.oid) });
            }
            ParsedExtension::UnsupportedExtension { .. } if ext.critical => {
                return Err(ChainError::Malformed {
                    index,
                    reason: format!("unsupported critical extension {}", ext.oid),
                });
            }
            _ => {}
        }
    }
    Ok(cert)
}

fn accepted_signature(c: &X509Certificate<'_>) -> bool {
    use x509_parser::oid_registry as o;
    let alg = &c.signature_algorithm.algorithm;
    [
        o::OID_PKCS1_SHA256WITHRSA,
        o::OID_PKCS1_SHA384WITHRSA,
        o::OID_PKCS1_SHA512WITHRSA,
        o::OID_SIG_ECDSA_WITH_SHA256,
        o::OID_SIG_ECDSA_WITH_SHA384,
        o::OID_SIG_ED25519,
    ]
    .iter()
    .any(|a| a == alg)
}

fn check_time(c: &X509Certificate<'_>, index: usize, at: SystemTime) -> Result<(), ChainError> {
    let v = c.validity();
    if at < system_time(v.not_before.timestamp()) {
        return Err(ChainError::NotYetValid { index });
    }
    if at > system_time(v.not_after.timestamp()) {
        return Err(ChainError::Expired { index });
    }
    Ok(())
}

fn check_issuer_is_ca(issuer: &X509Certificate<'_>, index: usize) -> Result<Option<u32>, ChainError> {
    let not_ca = || ChainError::NotACa { index };
    let bc = issuer.basic_constraints().map_err(|_| not_ca())?.ok_or_else(not_ca)?;
    if !bc.value.ca {
        return Err(not_ca());
    }
    let ku = issuer.key_usage().map_err(|e| ChainError::Malformed { index, reason: e.to_string() })?;
    if ku.is_some_and(|ku| !ku.value.key_cert_sign()) {
        return Err(not_ca());
    }
    Ok(bc.value.path_len_constraint)
}

/// The DNS and IP names of a leaf for name-constraint checks: its SANs, or, without any,
/// a common name that looks like a DNS name (legacy clients match on it).
fn names_of(c: &X509Certificate<'_>) -> Result<Vec<SubjectAltName>, ChainError> {
    use x509_parser::extensions::GeneralName;
    let malformed = |e: x509_parser::error::X509Error| ChainError::Malformed { index: 0, reason: e.to_string() };
    let mut names = Vec::new();
    if let Some(san) = c.subject_alternative_name().map_err(malformed)? {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(SubjectAltName::Dns((*d).to_ascii_lowercase())),
                GeneralName::IPAddress(b) => names.push(SubjectAltName::Ip(
                    super::ca::ip_from_bytes(b)
                        .map_err(|e| ChainError::Malformed { index: 0, reason: e.to_string() })?,
                )),
                _ => {}
            }
        }
        return Ok(names);
    }
    if let Some(cn) = c.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok())
        && cn.contains('.')
    {
        names.push(SubjectAltName::Dns(cn.to_ascii_lowercase()));
    }
    Ok(names)
}

/// DNS and IP permitted subtrees of `ca` applied to `names`.
fn check_name_constraints(
    ca: &X509Certificate<'_>,
    ca_index: usize,
    names: &[SubjectAltName],
) -> Result<(), ChainError> {
    use x509_parser::extensions::GeneralName;
    let nc = ca.name_constraints().map_err(|e| ChainError::Malformed { index: ca_index, reason: e.to_string() })?;
    let Some(nc) = nc else { return Ok(()) };
    // Fail closed on constraints this verifier does not enforce.
    let unsupported = |reason: &str| ChainError::Malformed { index: ca_index, reason: reason.into() };
    if nc.value.excluded_subtrees.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err(unsupported("excluded name subtrees are not supported"));
    }
    let Some(permitted) = &nc.value.permitted_subtrees else { return Ok(()) };
    if permitted.iter().any(|s| !matches!(s.base, GeneralName::DNSName(_) | GeneralName::IPAddress(_))) {
        return Err(unsupported("only DNS and IP name constraints are supported"));
    }
    let dns: Vec<String> = permitted
        .iter()
        .filter_map(|s| match &s.base {
            GeneralName::DNSName(d) => Some(d.trim_start_matches('.').to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    let ips: Vec<&[u8]> = permitted
        .iter()
        .filter_map(|s| match &s.base {
            GeneralName::IPAddress(b) => Some(*b),
            _ => None,
        })
        .collect();
    for name in names {
        let ok = match name {
            SubjectAltName::Dns(d) if !dns.is_empty() => {
                let d = d.strip_prefix("*.").unwrap_or(d);
                dns.iter().any(|base| d == base || d.ends_with(&format!(".{base}")))
            }
            SubjectAltName::Ip(ip) if !ips.is_empty() => ips.iter().any(|net| ip_in_net(ip, net)),
            _ => true,
        };
        if !ok {
            return Err(ChainError::NameConstraint { index: ca_index, name: name.to_string() });
        }
    }
    Ok(())
}

/// `net` is address ‖ mask (8 or 32 bytes), as in a name constraint.
fn ip_in_net(ip: &std::net::IpAddr, net: &[u8]) -> bool {
    let addr = match ip {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    if net.len() != addr.len() * 2 {
        return false;
    }
    let (base, mask) = net.split_at(addr.len());
    addr.iter().zip(base).zip(mask).all(|((a, b), m)| a & m == b & m)
}

fn check_usage(leaf: &X509Certificate<'_>, usage: Option<Usage>) -> Result<(), ChainError> {
    let Some(usage) = usage else { return Ok(()) };
    let eku = leaf.extended_key_usage().map_err(|e| ChainError::Malformed { index: 0, reason: e.to_string() })?;
    let Some(eku) = eku else { return Ok(()) };
    let e = eku.value;
    let (server, client) = (e.any || e.server_auth, e.any || e.client_auth);
    match usage {
        Usage::Server if !server => Err(ChainError::WrongUsage("TLS server authentication")),
        Usage::Client if !client => Err(ChainError::WrongUsage("TLS client authentication")),
        Usage::ServerAndClient if !(server && client) => {
            Err(ChainError::WrongUsage("TLS server and client authentication"))
        }
        _ => Ok(()),
    }
}

/// Checks `cert` (at `index`) against every CRL in `crls` issued by `issuer`.
fn check_revocation(
    cert: &X509Certificate<'_>,
    index: usize,
    issuer: &X509Certificate<'_>,
    crls: &[Vec<u8>],
    at: SystemTime,
) -> Result<(), ChainError> {
    for der in crls {
        let invalid = |reason: String| ChainError::CrlInvalid { index, reason };
        let (_, crl) = x509_parser::parse_x509_crl(der).map_err(|e| invalid(format!("malformed: {e}")))?;
        if crl.issuer() != issuer.subject() {
            continue;
        }
        crl.verify_signature(issuer.public_key()).map_err(|_| invalid("bad signature".into()))?;
        if let Some(next) = crl.next_update()
            && at > system_time(next.timestamp())
        {
            return Err(invalid("out of date (past its next update)".into()));
        }
        let serial = Serial::from_bytes(cert.raw_serial());
        for revoked in crl.iter_revoked_certificates() {
            if Serial::from_bytes(revoked.raw_serial()) == serial {
                let reason = revoked
                    .reason_code()
                    .and_then(|(_, r)| RevocationReason::from_code(r.0))
                    .unwrap_or(RevocationReason::Unspecified);
                return Err(ChainError::Revoked { index, serial: serial.to_hex(), reason: reason.name() });
            }
        }
    }
    Ok(())
}

/// Verifies `leaf` (PEM or DER) through `intermediates` to one of `anchors` at time `at`.
/// `intermediates`, `anchors` and `crls` are PEM (several blocks allowed) or DER blobs.
pub fn verify_chain(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    anchors: &[Vec<u8>],
    crls: &[Vec<u8>],
    usage: Option<Usage>,
    at: SystemTime,
) -> Result<VerifiedChain, ChainError> {
    let malformed = |index: usize| move |e: super::PkiError| ChainError::Malformed { index, reason: e.to_string() };
    let leaf_der = decode_pem_or_der(leaf, "CERTIFICATE").map_err(malformed(0))?;
    let mut pool = Vec::new();
    for blob in intermediates {
        pool.extend(decode_pem_or_der_many(blob, "CERTIFICATE").map_err(malformed(1))?);
    }
    let mut roots = Vec::new();
    for blob in anchors {
        roots.extend(decode_pem_or_der_many(blob, "CERTIFICATE").map_err(malformed(1))?);
    }
    let mut crl_ders = Vec::new();
    for blob in crls {
        crl_ders.extend(
            decode_pem_or_der_many(blob, "X509 CRL")
                .map_err(|e| ChainError::CrlInvalid { index: 0, reason: e.to_string() })?,
        );
    }

    let leaf_cert = parse(&leaf_der, 0)?;
    check_time(&leaf_cert, 0, at)?;
    check_usage(&leaf_cert, usage)?;
    let leaf_names = names_of(&leaf_cert)?;

    let mut path = vec![leaf_der.clone()];
    loop {
        let index = path.len() - 1;
        let current_der = path[index].clone();
        let current = parse(&current_der, index)?;
        if !accepted_signature(&current) {
            return Err(ChainError::UnsupportedSignatureAlgorithm { index });
        }
        // Prefer a trust anchor; else an intermediate not already in the path.
        let candidates = roots.iter().map(|d| (d, true)).chain(pool.iter().map(|d| (d, false)));
        let (mut found, mut name_matched) = (None, false);
        for (der, is_anchor) in candidates {
            if !is_anchor && path.contains(der) {
                continue;
            }
            let Ok(issuer) = parse(der, index + 1) else { continue };
            if issuer.subject() != current.issuer() {
                continue;
            }
            name_matched = true;
            if current.verify_signature(Some(issuer.public_key())).is_ok() {
                found = Some((der.clone(), is_anchor));
                break;
            }
        }
        let (issuer_der, is_anchor) = match found {
            Some(f) => f,
            None if name_matched => return Err(ChainError::BadSignature { index }),
            None => return Err(ChainError::UnknownIssuer { index }),
        };
        let issuer = parse(&issuer_der, index + 1)?;
        let path_len = check_issuer_is_ca(&issuer, index + 1)?;
        // The CAs below this issuer are path[1..=index]: `index` of them.
        if let Some(max) = path_len
            && index as u32 > max
        {
            return Err(ChainError::PathLenExceeded { index: index + 1 });
        }
        check_time(&issuer, index + 1, at)?;
        check_name_constraints(&issuer, index + 1, &leaf_names)?;
        check_revocation(&current, index, &issuer, &crl_ders, at)?;
        path.push(issuer_der);
        if is_anchor {
            return Ok(VerifiedChain { certificates: path });
        }
        if path.len() >= MAX_DEPTH {
            return Err(ChainError::UnknownIssuer { index: index + 1 });
        }
    }
}

/// Whether `certificate` (PEM or DER) should be renewed at `now`: once `fraction` (0..1)
/// of its lifetime has passed, or when it has expired. The usual choice is 2/3.
pub fn needs_renewal(certificate: &[u8], fraction: f64, now: SystemTime) -> Result<bool, super::PkiError> {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(super::PkiError::InvalidValidity(format!("renewal fraction {fraction} outside 0..=1")));
    }
    let der = decode_pem_or_der(certificate, "CERTIFICATE")?;
    let cert = parse(&der, 0).map_err(|e| super::PkiError::Malformed(e.to_string()))?;
    let v = cert.validity();
    let (start, end) = (system_time(v.not_before.timestamp()), system_time(v.not_after.timestamp()));
    let lifetime = end.duration_since(start).unwrap_or_default();
    Ok(now >= start + lifetime.mul_f64(fraction))
}
