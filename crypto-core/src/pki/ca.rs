//! The certificate authority: a self-signed root or an intermediate, issuing leaf
//! certificates (key generated here) and signing CSRs (key held by the requester), and
//! signing CRLs.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, NameConstraints,
    RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::keys::{PrivateKey, pem_encode, rcgen_err, rsa_public_bits};
use super::names::{RevocationReason, SanPolicy, Serial, SubjectAltName};
use super::{KeyType, PkiError, decode_pem_or_der, system_time};

/// First bytes of an exported CA.
const EXPORT_MAGIC: [u8; 8] = *b"CCCAEXP1";
/// Key-wrap label of exported CA keys.
const EXPORT_LABEL: &[u8] = b"crypto-core/v1/pki-ca-export";
/// Certificates are back-dated by this much (at most a quarter of their lifetime) to
/// tolerate clock skew between machines.
const BACKDATE: Duration = Duration::from_secs(60);

fn backdate(ttl: Duration) -> Duration {
    BACKDATE.min(ttl / 4)
}
/// Longest lifetime of a CA certificate.
pub const MAX_CA_TTL: Duration = Duration::from_secs(100 * 365 * 86_400);
/// Longest lifetime of a leaf certificate.
pub const MAX_LEAF_TTL: Duration = Duration::from_secs(398 * 86_400);

/// What a leaf certificate may be used for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Usage {
    /// TLS server (`serverAuth`).
    #[default]
    Server,
    /// TLS client (`clientAuth`), e.g. for mTLS.
    Client,
    /// Both.
    ServerAndClient,
}

/// Settings of a new CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaOptions {
    /// Subject common name (`Platform Root CA`).
    pub common_name: String,
    /// Subject organization, if any.
    pub organization: Option<String>,
    /// Key type of the CA key.
    pub key_type: KeyType,
    /// Lifetime.
    pub ttl: Duration,
    /// Most CA certificates allowed below this one (basicConstraints pathLenConstraint);
    /// `None`: unlimited. `Some(0)`: this CA issues only leaves.
    pub path_len: Option<u8>,
    /// DNS name constraints (permitted subtrees, e.g. `svc.cluster.local`); empty: none.
    pub permitted_dns: Vec<String>,
    /// IP name constraints (permitted networks); empty: none.
    pub permitted_ip: Vec<(IpAddr, u8)>,
}

impl CaOptions {
    /// A root or intermediate named `common_name`, RSA-2048, ten years, unconstrained.
    pub fn new(common_name: impl Into<String>) -> Self {
        Self {
            common_name: common_name.into(),
            organization: None,
            key_type: KeyType::Rsa2048,
            ttl: Duration::from_secs(10 * 365 * 86_400),
            path_len: None,
            permitted_dns: Vec::new(),
            permitted_ip: Vec::new(),
        }
    }
}

/// A leaf certificate to issue with a key generated here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRequest {
    /// Subject common name.
    pub common_name: String,
    /// Subject alternative names (DNS, IP, URI such as SPIFFE IDs).
    pub sans: Vec<SubjectAltName>,
    /// Key type of the new key.
    pub key_type: KeyType,
    /// Lifetime (at most [`MAX_LEAF_TTL`], and not past the CA's own expiry).
    pub ttl: Duration,
    /// Server, client or both.
    pub usage: Usage,
}

/// A certificate this CA made.
#[derive(Debug)]
pub struct IssuedCertificate {
    /// Serial number.
    pub serial: Serial,
    /// The certificate (DER).
    pub certificate_der: Vec<u8>,
    /// The certificate followed by the CA chain up to (excluding) the root, PEM: what a
    /// TLS server presents.
    pub chain_pem: String,
    /// The private key, when it was generated here ([`CertificateAuthority::issue`]).
    pub private_key: Option<PrivateKey>,
    /// Subject common name.
    pub common_name: String,
    /// Subject alternative names.
    pub sans: Vec<SubjectAltName>,
    /// Validity start.
    pub not_before: SystemTime,
    /// Validity end.
    pub not_after: SystemTime,
}

impl IssuedCertificate {
    /// The certificate alone, PEM.
    pub fn certificate_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.certificate_der)
    }
}

/// One entry of a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Serial of the revoked certificate.
    pub serial: Serial,
    /// Why.
    pub reason: RevocationReason,
    /// When the CA revoked it.
    pub revoked_at: SystemTime,
}

/// A certificate authority: its certificate, the chain above it, and its private key.
pub struct CertificateAuthority {
    cert_der: Vec<u8>,
    /// Certificates above this CA, nearest first, ending with the root (empty for a root).
    parents_der: Vec<Vec<u8>>,
    key: PrivateKey,
    not_after: SystemTime,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("key_type", &self.key.key_type())
            .field("depth", &self.parents_der.len())
            .finish_non_exhaustive()
    }
}

fn time_out_of_range() -> PkiError {
    PkiError::InvalidValidity("a time outside what X.509 can encode (years 1 to 9999)".into())
}

/// `t` as an X.509 time, or a typed error outside years 1 to 9999 (`OffsetDateTime::from`
/// would panic there).
fn odt(t: SystemTime) -> Result<OffsetDateTime, PkiError> {
    let nanos = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).ok(),
        Err(e) => i128::try_from(e.duration().as_nanos()).ok().map(|n| -n),
    };
    nanos
        .and_then(|n| OffsetDateTime::from_unix_timestamp_nanos(n).ok())
        .filter(|d| (1..=9999).contains(&d.year()))
        .ok_or_else(time_out_of_range)
}

/// The validity of a certificate issued at `now` for `ttl`: `[now - backdate(ttl), now + ttl]`,
/// both ends checked to be encodable.
fn validity(now: SystemTime, ttl: Duration) -> Result<(SystemTime, SystemTime), PkiError> {
    let not_before = now.checked_sub(backdate(ttl)).ok_or_else(time_out_of_range)?;
    let not_after = now.checked_add(ttl).ok_or_else(time_out_of_range)?;
    odt(not_before)?;
    odt(not_after)?;
    Ok((not_before, not_after))
}

fn ca_params(options: &CaOptions, now: SystemTime) -> Result<CertificateParams, PkiError> {
    if options.common_name.trim().is_empty() {
        return Err(PkiError::InvalidName("CA common name is empty".into()));
    }
    if options.ttl.is_zero() || options.ttl > MAX_CA_TTL {
        return Err(PkiError::InvalidValidity("CA lifetime must be between 1 s and 100 years".into()));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, options.common_name.clone());
    if let Some(o) = &options.organization {
        dn.push(DnType::OrganizationName, o.clone());
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(match options.path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let (not_before, not_after) = validity(now, options.ttl)?;
    params.not_before = odt(not_before)?;
    params.not_after = odt(not_after)?;
    params.serial_number = Some(SerialNumber::from_slice(Serial::random().as_bytes()));
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    if !options.permitted_dns.is_empty() || !options.permitted_ip.is_empty() {
        let mut permitted = Vec::new();
        for d in &options.permitted_dns {
            SubjectAltName::Dns(d.clone()).validate()?;
            permitted.push(GeneralSubtree::DnsName(d.clone()));
        }
        for (ip, prefix) in &options.permitted_ip {
            permitted.push(GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_addr_prefix(*ip, *prefix)));
        }
        params.name_constraints =
            Some(NameConstraints { permitted_subtrees: permitted, excluded_subtrees: Vec::new() });
    }
    Ok(params)
}

impl CertificateAuthority {
    /// A new self-signed root CA.
    pub fn new_root(options: &CaOptions, now: SystemTime) -> Result<Self, PkiError> {
        let key = PrivateKey::generate(options.key_type)?;
        let params = ca_params(options, now)?;
        let cert = params.self_signed(key.pair()).map_err(rcgen_err)?;
        Ok(Self {
            cert_der: cert.der().to_vec(),
            parents_der: Vec::new(),
            key,
            not_after: validity(now, options.ttl)?.1,
        })
    }

    /// A new intermediate CA signed by this one. Its lifetime may not exceed this CA's.
    pub fn new_intermediate(&self, options: &CaOptions, now: SystemTime) -> Result<Self, PkiError> {
        if now.checked_add(options.ttl).is_none_or(|end| end > self.not_after) {
            return Err(PkiError::InvalidValidity("the intermediate would outlive its issuer".into()));
        }
        let key = PrivateKey::generate(options.key_type)?;
        let params = ca_params(options, now)?;
        let cert = params.signed_by(key.pair(), &self.issuer()?).map_err(rcgen_err)?;
        let mut parents_der = vec![self.cert_der.clone()];
        parents_der.extend(self.parents_der.iter().cloned());
        Ok(Self { cert_der: cert.der().to_vec(), parents_der, key, not_after: validity(now, options.ttl)?.1 })
    }

    /// A CA from its certificate, the certificates above it (nearest first, up to the root)
    /// and its key. Checks that the key matches the certificate and that it is a CA.
    pub fn from_parts(cert: &[u8], parents: &[Vec<u8>], key: PrivateKey) -> Result<Self, PkiError> {
        let cert_der = decode_pem_or_der(cert, "CERTIFICATE")?;
        let (_, x509) =
            X509Certificate::from_der(&cert_der).map_err(|e| PkiError::Malformed(format!("CA certificate: {e}")))?;
        if !x509.is_ca() {
            return Err(PkiError::NotACa);
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.pair().public_key_raw() {
            return Err(PkiError::KeyMismatch);
        }
        let not_after = system_time(x509.validity().not_after.timestamp());
        Ok(Self { cert_der: cert_der.clone(), parents_der: parents.to_vec(), key, not_after })
    }

    fn issuer(&self) -> Result<Issuer<'static, &rcgen::KeyPair>, PkiError> {
        Issuer::from_ca_cert_der(&self.cert_der.as_slice().into(), self.key.pair()).map_err(rcgen_err)
    }

    /// This CA's certificate (DER).
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// This CA's certificate (PEM).
    pub fn certificate_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert_der)
    }

    /// The bundle a client must trust to verify what this CA issues: this CA and every
    /// certificate above it up to the root, PEM, nearest first.
    pub fn bundle_pem(&self) -> String {
        std::iter::once(&self.cert_der).chain(&self.parents_der).map(|d| pem_encode("CERTIFICATE", d)).collect()
    }

    /// The root of this CA's hierarchy (DER).
    pub fn root_der(&self) -> &[u8] {
        self.parents_der.last().unwrap_or(&self.cert_der)
    }

    /// The CA's private key (for export under a wrapping key; see the sidecar's keystore).
    pub fn private_key(&self) -> &PrivateKey {
        &self.key
    }

    /// The CA's expiry.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The whole CA (certificate, chain above it, private key) as one blob whose key part
    /// is sealed under `wrapping_key` (AES-256-GCM with a per-export derived key; the
    /// certificates are authenticated with it). For keeping a root offline: export it,
    /// store the blob and the wrapping key apart, delete the live copy, and
    /// [`CertificateAuthority::import_wrapped`] it for the rare intermediate signing.
    pub fn export_wrapped(&self, wrapping_key: &crate::secret::KeyMaterial) -> Vec<u8> {
        let mut out = EXPORT_MAGIC.to_vec();
        for der in std::iter::once(&self.cert_der).chain(&self.parents_der) {
            out.extend_from_slice(&(der.len() as u32).to_be_bytes());
            out.extend_from_slice(der);
        }
        out.extend_from_slice(&0u32.to_be_bytes());
        let key = self.key.to_pkcs8_der();
        let sealed = crate::keywrap::wrap_secret(
            crate::Backend::AwsLc,
            wrapping_key.expose_secret(),
            EXPORT_LABEL,
            &out,
            key.expose_secret(),
        );
        out.extend_from_slice(&sealed);
        out
    }

    /// Reads a blob from [`CertificateAuthority::export_wrapped`]. A wrong key or any
    /// change to the blob is refused with [`PkiError::Malformed`] (deliberately coarse).
    pub fn import_wrapped(blob: &[u8], wrapping_key: &crate::secret::KeyMaterial) -> Result<Self, PkiError> {
        let bad = || PkiError::Malformed("CA export: not a valid blob for this key".into());
        let mut rest = blob.strip_prefix(EXPORT_MAGIC.as_slice()).ok_or_else(bad)?;
        let mut certs = Vec::new();
        loop {
            let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
            let len = u32::from_be_bytes(*len) as usize;
            rest = tail;
            if len == 0 {
                break;
            }
            if len > rest.len() || certs.len() >= 16 {
                return Err(bad());
            }
            certs.push(rest[..len].to_vec());
            rest = &rest[len..];
        }
        let header = &blob[..blob.len() - rest.len()];
        let key_der = crate::keywrap::unwrap_secret(
            crate::Backend::AwsLc,
            wrapping_key.expose_secret(),
            EXPORT_LABEL,
            header,
            rest,
        )
        .ok_or_else(bad)?;
        let key = PrivateKey::from_pkcs8_der(&key_der)?;
        let (cert, parents) = certs.split_first().ok_or_else(bad)?;
        Self::from_parts(cert, parents, key)
    }

    fn chain_pem(&self, leaf_der: &[u8]) -> String {
        // The root is left out: a client already has it (and must not take it from the peer).
        let intermediates = &self.parents_der[..self.parents_der.len().saturating_sub(1)];
        let mut out = pem_encode("CERTIFICATE", leaf_der);
        if !self.parents_der.is_empty() {
            out.push_str(&pem_encode("CERTIFICATE", &self.cert_der));
        }
        for d in intermediates {
            out.push_str(&pem_encode("CERTIFICATE", d));
        }
        out
    }

    fn leaf_params(
        &self,
        common_name: &str,
        sans: &[SubjectAltName],
        ttl: Duration,
        usage: Usage,
        rsa: bool,
        now: SystemTime,
    ) -> Result<(CertificateParams, Serial), PkiError> {
        if common_name.trim().is_empty() && sans.is_empty() {
            return Err(PkiError::InvalidName(
                "a certificate needs a common name or a subject alternative name".into(),
            ));
        }
        if ttl.is_zero() || ttl > MAX_LEAF_TTL {
            return Err(PkiError::InvalidValidity(format!(
                "lifetime must be between 1 s and {} days",
                MAX_LEAF_TTL.as_secs() / 86_400
            )));
        }
        if now.checked_add(ttl).is_none_or(|end| end > self.not_after) {
            return Err(PkiError::InvalidValidity("the certificate would outlive its CA".into()));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if !common_name.trim().is_empty() {
            dn.push(DnType::CommonName, common_name.to_owned());
        }
        params.distinguished_name = dn;
        params.subject_alt_names =
            sans.iter().map(|s| s.validate().and_then(|()| s.to_rcgen())).collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if rsa {
            // TLS 1.2 RSA key exchange is not offered (AEAD/ECDHE only), but some clients
            // still require the bit on RSA server certificates.
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        };
        let (not_before, not_after) = validity(now, ttl)?;
        params.not_before = odt(not_before)?;
        params.not_after = odt(not_after)?;
        let serial = Serial::random();
        params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        Ok((params, serial))
    }

    /// Issues a leaf certificate with a key generated here (aws-lc-rs).
    pub fn issue(&self, request: &LeafRequest, now: SystemTime) -> Result<IssuedCertificate, PkiError> {
        let rsa = matches!(request.key_type, KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096);
        let (params, serial) =
            self.leaf_params(&request.common_name, &request.sans, request.ttl, request.usage, rsa, now)?;
        let key = PrivateKey::generate(request.key_type)?;
        let cert = params.signed_by(key.pair(), &self.issuer()?).map_err(rcgen_err)?;
        let der = cert.der().to_vec();
        let (not_before, not_after) = validity(now, request.ttl)?;
        Ok(IssuedCertificate {
            serial,
            chain_pem: self.chain_pem(&der),
            certificate_der: der,
            private_key: Some(key),
            common_name: request.common_name.clone(),
            sans: request.sans.clone(),
            not_before,
            not_after,
        })
    }

    /// Signs a CSR (PEM or DER) after validating it: its signature, its key (RSA of at
    /// least 2048 bits with a sane exponent, ECDSA P-256/P-384 or Ed25519), that it does
    /// not ask to be a CA, and that every subject alternative name it asks for is allowed
    /// by `policy`. Only the common name and the allowed names are copied from the
    /// request; every other requested extension is dropped, and key usage, extended key
    /// usage, validity and serial are set here.
    pub fn sign_csr(
        &self,
        csr: &[u8],
        policy: &SanPolicy,
        ttl: Duration,
        usage: Usage,
        now: SystemTime,
    ) -> Result<IssuedCertificate, PkiError> {
        let der = decode_pem_or_der(csr, "CERTIFICATE REQUEST")?;
        let (rest, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
            .map_err(|e| PkiError::Malformed(format!("CSR: {e}")))?;
        if !rest.is_empty() {
            return Err(PkiError::Malformed("CSR: trailing bytes".into()));
        }
        let info = &req.certification_request_info;
        // Key checks first, so a weak key is reported as such (not as a bad signature).
        let rsa = check_public_key(&info.subject_pki)?;
        req.verify_signature().map_err(|_| PkiError::BadSignature)?;

        let mut sans = Vec::new();
        if let Some(extensions) = req.requested_extensions() {
            use x509_parser::extensions::{GeneralName, ParsedExtension};
            for ext in extensions {
                match ext {
                    ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(PkiError::CaRequested),
                    ParsedExtension::SubjectAlternativeName(san) => {
                        for name in &san.general_names {
                            let san = match name {
                                GeneralName::DNSName(d) => SubjectAltName::Dns((*d).to_owned()),
                                GeneralName::URI(u) => SubjectAltName::Uri((*u).to_owned()),
                                GeneralName::IPAddress(bytes) => SubjectAltName::Ip(ip_from_bytes(bytes)?),
                                other => return Err(PkiError::SanNotAllowed(format!("{other:?}"))),
                            };
                            san.validate()?;
                            if !policy.allows(&san) {
                                return Err(PkiError::SanNotAllowed(san.to_string()));
                            }
                            sans.push(san);
                        }
                    }
                    // Everything else a requester asks for is ignored: the CA decides.
                    _ => {}
                }
            }
        }
        let common_name = info
            .subject
            .iter_common_name()
            .next()
            .map(|cn| {
                cn.as_str()
                    .map(str::to_owned)
                    .map_err(|_| PkiError::InvalidName("CSR common name is not a string".into()))
            })
            .transpose()?
            .unwrap_or_default();
        // The CN must itself be a well-formed DNS name (no URI, NUL or other smuggling) and
        // one of the requested names or an allowed one.
        if !common_name.is_empty()
            && (SubjectAltName::Dns(common_name.clone()).validate().is_err()
                || !policy_allows_cn(policy, &common_name, &sans))
        {
            return Err(PkiError::SanNotAllowed(format!("common name {common_name:?}")));
        }
        let (params, serial) = self.leaf_params(&common_name, &sans, ttl, usage, rsa, now)?;
        let spki = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
            .map_err(|e| PkiError::UnsupportedKey(format!("CSR key: {e}")))?;
        let cert = params.signed_by(&spki, &self.issuer()?).map_err(rcgen_err)?;
        let der = cert.der().to_vec();
        let (not_before, not_after) = validity(now, ttl)?;
        Ok(IssuedCertificate {
            serial,
            chain_pem: self.chain_pem(&der),
            certificate_der: der,
            private_key: None,
            common_name,
            sans,
            not_before,
            not_after,
        })
    }

    /// A CRL listing `revoked`, numbered `number` (strictly increasing per CA), valid from
    /// `this_update` until `next_update`. DER.
    pub fn crl(
        &self,
        revoked: &[Revocation],
        number: u64,
        this_update: SystemTime,
        next_update: SystemTime,
    ) -> Result<Vec<u8>, PkiError> {
        if next_update <= this_update {
            return Err(PkiError::InvalidValidity("CRL next update must be after this update".into()));
        }
        let params = CertificateRevocationListParams {
            // Back-dated like certificates, so a verifier with a slightly slow clock accepts it.
            this_update: odt(this_update
                .checked_sub(backdate(next_update.duration_since(this_update).unwrap_or_default()))
                .ok_or_else(time_out_of_range)?)?,
            next_update: odt(next_update)?,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| {
                    Ok(RevokedCertParams {
                        serial_number: SerialNumber::from_slice(r.serial.as_bytes()),
                        revocation_time: odt(r.revoked_at)?,
                        reason_code: Some(r.reason.to_rcgen()),
                        invalidity_date: None,
                    })
                })
                .collect::<Result<_, PkiError>>()?,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer()?).map_err(rcgen_err)?.der().to_vec())
    }
}

/// A CSR's common name must itself be an allowed DNS name or one of its SANs, so a
/// requester cannot smuggle an unapproved host name in through the CN.
fn policy_allows_cn(policy: &SanPolicy, cn: &str, sans: &[SubjectAltName]) -> bool {
    sans.iter().any(|s| matches!(s, SubjectAltName::Dns(d) if d.eq_ignore_ascii_case(cn)))
        || policy.allows(&SubjectAltName::Dns(cn.to_owned()))
}

/// An IP address from its 4 or 16 bytes (as in a SAN).
pub(crate) fn ip_from_bytes(bytes: &[u8]) -> Result<IpAddr, PkiError> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes)
        .map(IpAddr::from)
        .map_err(|_| PkiError::Malformed(format!("IP SAN of {} bytes", bytes.len())))
}

/// Accepts RSA ≥ 2048 bits, ECDSA P-256/P-384 and Ed25519; returns whether it is RSA.
pub(crate) fn check_public_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<bool, PkiError> {
    use x509_parser::public_key::PublicKey;
    match spki.parsed().map_err(|e| PkiError::Malformed(format!("public key: {e}")))? {
        PublicKey::RSA(_) => {
            let bits = rsa_public_bits(&spki.subject_public_key.data)?;
            if bits < 2048 {
                return Err(PkiError::WeakKey(format!("RSA-{bits}: at least 2048 bits required")));
            }
            if bits > 8192 {
                return Err(PkiError::UnsupportedKey(format!("RSA-{bits}: at most 8192 bits")));
            }
            Ok(true)
        }
        PublicKey::EC(_) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| PkiError::UnsupportedKey("EC key without a named curve".into()))?;
            if curve != x509_parser::oid_registry::OID_EC_P256 && curve != x509_parser::oid_registry::OID_NIST_EC_P384 {
                return Err(PkiError::UnsupportedKey(format!("EC curve {curve} (use P-256 or P-384)")));
            }
            Ok(false)
        }
        PublicKey::Unknown(_) if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 => Ok(false),
        other => Err(PkiError::UnsupportedKey(format!("{:?} keys are not accepted", key_kind(&other)))),
    }
}

fn key_kind(key: &x509_parser::public_key::PublicKey<'_>) -> &'static str {
    use x509_parser::public_key::PublicKey;
    match key {
        PublicKey::RSA(_) => "RSA",
        PublicKey::EC(_) => "EC",
        PublicKey::DSA(_) => "DSA",
        PublicKey::GostR3410(_) | PublicKey::GostR3410_2012(_) => "GOST",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);
    /// 10000-01-01T00:00:00Z, the first instant X.509 cannot encode.
    const YEAR_10000: Duration = Duration::from_secs(253_402_300_800);

    fn root(now: SystemTime) -> CertificateAuthority {
        let mut options = CaOptions::new("Test Root");
        options.key_type = KeyType::EcdsaP256;
        options.ttl = 365 * DAY;
        CertificateAuthority::new_root(&options, now).unwrap()
    }

    fn is_out_of_range(e: &PkiError) -> bool {
        matches!(e, PkiError::InvalidValidity(m) if m.contains("years 1 to 9999"))
    }

    #[test]
    fn odt_accepts_the_encodable_range_and_refuses_beyond_it() {
        assert_eq!(odt(UNIX_EPOCH).unwrap().unix_timestamp(), 0);
        let last = UNIX_EPOCH + YEAR_10000 - Duration::from_secs(1);
        assert_eq!(odt(last).unwrap().year(), 9999);
        assert!(is_out_of_range(&odt(UNIX_EPOCH + YEAR_10000).unwrap_err()));
        // Before the epoch is fine down to year 1, refused below it.
        assert_eq!(odt(UNIX_EPOCH - 365 * DAY).unwrap().year(), 1969);
        assert!(is_out_of_range(&odt(UNIX_EPOCH - Duration::from_secs(62_200_000_000)).unwrap_err()));
    }

    /// A revocation or update time past 9999 (a damaged record, a clock gone wrong) is a
    /// typed error, not a panic in the `time` crate (found by fuzzing the sidecar's GetCrl).
    #[test]
    fn crl_with_times_past_9999_is_an_error_not_a_panic() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = root(now);
        let far = UNIX_EPOCH + YEAR_10000 + DAY;
        let revoked =
            |at| [Revocation { serial: Serial::random(), reason: RevocationReason::KeyCompromise, revoked_at: at }];
        assert!(is_out_of_range(&ca.crl(&revoked(far), 1, now, now + DAY).unwrap_err()));
        assert!(is_out_of_range(&ca.crl(&revoked(now), 1, now, far).unwrap_err()));
        assert!(is_out_of_range(&ca.crl(&[], 1, far, far + DAY).unwrap_err()));
        // And the same CA still makes a good CRL afterwards.
        assert!(!ca.crl(&revoked(now), 2, now, now + DAY).unwrap().is_empty());
    }

    #[test]
    fn certificates_ending_past_9999_are_refused() {
        let late = UNIX_EPOCH + YEAR_10000 - 30 * DAY;
        let mut options = CaOptions::new("Late Root");
        options.key_type = KeyType::EcdsaP256;
        options.ttl = 365 * DAY;
        assert!(is_out_of_range(&CertificateAuthority::new_root(&options, late).unwrap_err()));

        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = root(now);
        let request = LeafRequest {
            common_name: "web.example".into(),
            sans: vec![SubjectAltName::Dns("web.example".into())],
            key_type: KeyType::EcdsaP256,
            ttl: 30 * DAY,
            usage: Usage::Server,
        };
        assert!(ca.issue(&request, now).is_ok());
        // Issued at a time whose end cannot be encoded: refused, whatever the CA's own expiry check says.
        assert!(ca.issue(&request, late).is_err());
    }
}
