//! Names in certificates: subject alternative names and the policy that limits which a CSR
//! may ask for; serial numbers as `openssl` prints them; revocation reasons by their
//! RFC 5280 names.

use std::net::IpAddr;

use super::PkiError;

/// A subject alternative name this CA issues.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubjectAltName {
    /// A DNS name (`db.tenant-a.svc`), optionally with one leading `*.` label.
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
    /// A URI, e.g. a SPIFFE ID (`spiffe://cluster.local/ns/a/sa/web`).
    Uri(String),
}

impl SubjectAltName {
    /// Parses `dns:NAME`, `ip:ADDRESS` or `uri:URI` (the `kmsctl --san` syntax).
    pub fn parse(text: &str) -> Result<Self, PkiError> {
        let bad = |why: &str| PkiError::InvalidName(format!("{text:?}: {why}"));
        let (kind, value) = text.split_once(':').ok_or_else(|| bad("expected dns:NAME, ip:ADDRESS or uri:URI"))?;
        let san = match kind.to_ascii_lowercase().as_str() {
            "dns" => SubjectAltName::Dns(value.to_owned()),
            "ip" => SubjectAltName::Ip(value.parse().map_err(|_| bad("not an IP address"))?),
            "uri" => SubjectAltName::Uri(value.to_owned()),
            _ => return Err(bad("expected dns:, ip: or uri:")),
        };
        san.validate()?;
        Ok(san)
    }

    /// Checks the syntax: DNS names are LDH labels (a leading `*.` allowed), lower-cased
    /// comparisons; URIs have a scheme and no spaces or control characters.
    pub fn validate(&self) -> Result<(), PkiError> {
        match self {
            SubjectAltName::Dns(name) => {
                let bad = |why: &str| PkiError::InvalidName(format!("dns:{name}: {why}"));
                let body = name.strip_prefix("*.").unwrap_or(name);
                if name.len() > 253 || body.is_empty() {
                    return Err(bad("length"));
                }
                for label in body.split('.') {
                    let ok = !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                    if !ok {
                        return Err(bad("not a DNS name (letters, digits, hyphens, dots; `*.` only in front)"));
                    }
                }
                Ok(())
            }
            SubjectAltName::Ip(_) => Ok(()),
            SubjectAltName::Uri(uri) => {
                let bad = |why: &str| PkiError::InvalidName(format!("uri:{uri}: {why}"));
                let scheme_ok = uri.split_once(':').is_some_and(|(s, rest)| {
                    !s.is_empty()
                        && !rest.is_empty()
                        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                });
                if !scheme_ok || uri.len() > 2048 || uri.bytes().any(|b| b <= b' ' || b >= 0x7f) {
                    return Err(bad("not a URI (scheme:rest, printable ASCII, no spaces)"));
                }
                // Names are compared by prefix: refuse every form with two spellings
                // (escapes, dot segments) or extra parts (userinfo, query, fragment).
                if uri.bytes().any(|b| b"%?#@\\".contains(&b)) {
                    return Err(bad("no %-escapes, userinfo, query or fragment"));
                }
                let path = uri.split_once("://").map_or(uri.as_str(), |(_, rest)| rest);
                if path.split('/').any(|seg| seg == "." || seg == "..") {
                    return Err(bad("no . or .. path segments"));
                }
                Ok(())
            }
        }
    }

    pub(crate) fn to_rcgen(&self) -> Result<rcgen::SanType, PkiError> {
        let err = |e: rcgen::Error| PkiError::InvalidName(format!("{self}: {e}"));
        Ok(match self {
            SubjectAltName::Dns(d) => rcgen::SanType::DnsName(d.clone().try_into().map_err(err)?),
            SubjectAltName::Ip(ip) => rcgen::SanType::IpAddress(*ip),
            SubjectAltName::Uri(u) => rcgen::SanType::URI(u.clone().try_into().map_err(err)?),
        })
    }
}

impl std::fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubjectAltName::Dns(d) => write!(f, "dns:{d}"),
            SubjectAltName::Ip(ip) => write!(f, "ip:{ip}"),
            SubjectAltName::Uri(u) => write!(f, "uri:{u}"),
        }
    }
}

/// Which subject alternative names a CSR may obtain. Default: none (deny).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SanPolicy {
    /// DNS names allowed: an exact name (`db.internal`) or a suffix pattern `*.svc.local`,
    /// which allows any name with at least one more label (`a.svc.local`, `x.a.svc.local`
    /// and the wildcard `*.svc.local` itself). Compared case-insensitively.
    pub dns: Vec<String>,
    /// IP networks allowed, as (address, prefix length).
    pub ip: Vec<(IpAddr, u8)>,
    /// URI prefixes allowed (`spiffe://cluster.local/ns/tenant-a/`); a URI must start with
    /// one of them, compared byte for byte. A prefix must end in `/` (so `…/ns/a/` does not
    /// match `…/ns/admin`); one that does not matches nothing (see [`SanPolicy::validate`]).
    pub uri_prefixes: Vec<String>,
}

impl SanPolicy {
    /// Checks the policy itself: DNS patterns are DNS names (a leading `*.` allowed), URI
    /// prefixes are URIs ending in `/`, networks have valid prefix lengths.
    pub fn validate(&self) -> Result<(), PkiError> {
        for d in &self.dns {
            SubjectAltName::Dns(d.clone()).validate()?;
        }
        for p in &self.uri_prefixes {
            if !p.ends_with('/') || p.len() < 4 {
                return Err(PkiError::InvalidName(format!("URI prefix {p:?} must be a URI ending in /")));
            }
            SubjectAltName::Uri(p.clone()).validate()?;
        }
        for (ip, prefix) in &self.ip {
            if u32::from(*prefix) > if ip.is_ipv4() { 32 } else { 128 } {
                return Err(PkiError::InvalidName(format!("network {ip}/{prefix}")));
            }
        }
        Ok(())
    }

    /// Whether `san` is allowed.
    pub fn allows(&self, san: &SubjectAltName) -> bool {
        match san {
            SubjectAltName::Dns(name) => {
                let name = name.to_ascii_lowercase();
                self.dns.iter().any(|pattern| {
                    let pattern = pattern.to_ascii_lowercase();
                    match pattern.strip_prefix("*.") {
                        Some(suffix) => {
                            let candidate = name.strip_prefix("*.").unwrap_or(&name);
                            (candidate.len() > suffix.len()
                                && candidate.ends_with(suffix)
                                && candidate.as_bytes()[candidate.len() - suffix.len() - 1] == b'.')
                                || (candidate == suffix && name.starts_with("*."))
                        }
                        None => name == pattern,
                    }
                })
            }
            SubjectAltName::Ip(ip) => self.ip.iter().any(|(net, prefix)| ip_in(ip, net, *prefix)),
            SubjectAltName::Uri(uri) => {
                san.validate().is_ok()
                    && self.uri_prefixes.iter().any(|p| p.ends_with('/') && p.len() >= 4 && uri.starts_with(p.as_str()))
            }
        }
    }
}

pub(crate) fn ip_in(ip: &IpAddr, net: &IpAddr, prefix: u8) -> bool {
    fn matches(a: &[u8], b: &[u8], prefix: u8) -> bool {
        let full = usize::from(prefix / 8);
        if prefix as usize > a.len() * 8 || a[..full] != b[..full] {
            return false;
        }
        let rest = prefix % 8;
        rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0
    }
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => matches(&a.octets(), &b.octets(), prefix),
        (IpAddr::V6(a), IpAddr::V6(b)) => matches(&a.octets(), &b.octets(), prefix),
        _ => false,
    }
}

/// A certificate serial number (big-endian, no leading zero bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// A fresh random serial: 20 bytes, positive, 159 random bits (RFC 5280's maximum
    /// length; far above the CA/Browser Forum's 64-bit minimum of entropy).
    pub fn random() -> Self {
        let mut bytes: [u8; 20] = crate::rand::array();
        bytes[0] &= 0x7f;
        if bytes[0] == 0 {
            bytes[0] = 0x01;
        }
        Serial(bytes.to_vec())
    }

    /// From big-endian bytes as found in a certificate (leading zeros dropped).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len().saturating_sub(1));
        Serial(bytes[first..].to_vec())
    }

    /// Parses hex as `openssl x509 -serial` prints it (`serial=5A1F...`), in any case, with
    /// or without colons or the `serial=` prefix.
    pub fn parse(text: &str) -> Result<Self, PkiError> {
        let t = text.trim();
        let t = t.strip_prefix("serial=").unwrap_or(t);
        let hex_digits: String = t.chars().filter(|c| *c != ':').collect();
        let padded = if hex_digits.len() % 2 == 1 { format!("0{hex_digits}") } else { hex_digits };
        let bytes = hex::decode(&padded).map_err(|_| PkiError::InvalidName(format!("serial {text:?}: not hex")))?;
        if bytes.is_empty() || bytes.len() > 21 {
            return Err(PkiError::InvalidName(format!("serial {text:?}: 1 to 20 bytes")));
        }
        Ok(Serial::from_bytes(&bytes))
    }

    /// Big-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Upper-case hex, as `openssl x509 -serial` prints it.
    pub fn to_hex(&self) -> String {
        hex::encode_upper(&self.0)
    }
}

impl std::fmt::Display for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Why a certificate was revoked (RFC 5280 §5.3.1 `CRLReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RevocationReason {
    /// `unspecified`
    Unspecified,
    /// `keyCompromise`
    KeyCompromise,
    /// `cACompromise`
    CaCompromise,
    /// `affiliationChanged`
    AffiliationChanged,
    /// `superseded`
    Superseded,
    /// `cessationOfOperation`
    CessationOfOperation,
    /// `certificateHold`
    CertificateHold,
    /// `privilegeWithdrawn`
    PrivilegeWithdrawn,
    /// `aACompromise`
    AaCompromise,
}

impl RevocationReason {
    const ALL: [(RevocationReason, &'static str, u8); 9] = [
        (RevocationReason::Unspecified, "unspecified", 0),
        (RevocationReason::KeyCompromise, "keyCompromise", 1),
        (RevocationReason::CaCompromise, "cACompromise", 2),
        (RevocationReason::AffiliationChanged, "affiliationChanged", 3),
        (RevocationReason::Superseded, "superseded", 4),
        (RevocationReason::CessationOfOperation, "cessationOfOperation", 5),
        (RevocationReason::CertificateHold, "certificateHold", 6),
        (RevocationReason::PrivilegeWithdrawn, "privilegeWithdrawn", 9),
        (RevocationReason::AaCompromise, "aACompromise", 10),
    ];

    /// Parses the RFC 5280 name (`keyCompromise`; case-insensitive).
    pub fn parse(name: &str) -> Result<Self, PkiError> {
        Self::ALL.iter().find(|(_, n, _)| n.eq_ignore_ascii_case(name)).map(|(r, _, _)| *r).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|(_, n, _)| *n).collect();
            PkiError::InvalidName(format!("revocation reason {name:?}: use one of {}", names.join(", ")))
        })
    }

    /// The RFC 5280 name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(r, _, _)| *r == self).map(|(_, n, _)| *n).unwrap_or("unspecified")
    }

    /// The `CRLReason` code.
    pub fn code(self) -> u8 {
        Self::ALL.iter().find(|(r, _, _)| *r == self).map(|(_, _, c)| *c).unwrap_or(0)
    }

    /// From a `CRLReason` code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.iter().find(|(_, _, c)| *c == code).map(|(r, _, _)| *r)
    }

    pub(crate) fn to_rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            RevocationReason::Unspecified => R::Unspecified,
            RevocationReason::KeyCompromise => R::KeyCompromise,
            RevocationReason::CaCompromise => R::CaCompromise,
            RevocationReason::AffiliationChanged => R::AffiliationChanged,
            RevocationReason::Superseded => R::Superseded,
            RevocationReason::CessationOfOperation => R::CessationOfOperation,
            RevocationReason::CertificateHold => R::CertificateHold,
            RevocationReason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
            RevocationReason::AaCompromise => R::AaCompromise,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sans_parse_and_policy() {
        assert_eq!(SubjectAltName::parse("dns:db.a.svc").unwrap(), SubjectAltName::Dns("db.a.svc".into()));
        assert!(matches!(SubjectAltName::parse("ip:10.0.0.1").unwrap(), SubjectAltName::Ip(_)));
        assert!(SubjectAltName::parse("uri:spiffe://c.local/ns/a/sa/web").is_ok());
        for bad in [
            "db",
            "dns:",
            "dns:-a.b",
            "dns:a..b",
            "dns:a.*.b",
            "dns:a b",
            "ip:10.0.0.300",
            "uri:nope",
            "uri:a b:c",
            "x:y",
            "uri:spiffe://c/ns/a/../b",
            "uri:spiffe://c/ns/%61",
            "uri:spiffe://c/x?y",
            "uri:spiffe://c/x#y",
            "uri:spiffe://u@c/x",
            "dns:evil.com\0.svc.local",
        ] {
            assert!(SubjectAltName::parse(bad).is_err(), "{bad}");
        }
        let policy = SanPolicy {
            dns: vec!["*.svc.local".into(), "exact.internal".into()],
            ip: vec![("10.1.0.0".parse().unwrap(), 16)],
            uri_prefixes: vec!["spiffe://c.local/ns/a/".into()],
        };
        let allowed = |s: &str| policy.allows(&SubjectAltName::parse(s).unwrap());
        assert!(allowed("dns:a.svc.local") && allowed("dns:x.a.svc.local") && allowed("dns:*.svc.local"));
        assert!(allowed("dns:EXACT.internal") && allowed("ip:10.1.255.3") && allowed("uri:spiffe://c.local/ns/a/sa/w"));
        assert!(!allowed("dns:svc.local") && !allowed("dns:evilsvc.local") && !allowed("dns:a.exact.internal"));
        assert!(!allowed("ip:10.2.0.1") && !allowed("ip:::1") && !allowed("uri:spiffe://c.local/ns/b/sa/w"));
        assert!(!SanPolicy::default().allows(&SubjectAltName::parse("dns:a.b").unwrap()));
        // A prefix without its trailing slash matches nothing, and fails validation.
        let loose = SanPolicy { uri_prefixes: vec!["spiffe://c.local/ns/a".into()], ..SanPolicy::default() };
        assert!(!loose.allows(&SubjectAltName::parse("uri:spiffe://c.local/ns/admin/x").unwrap()));
        assert!(loose.validate().is_err() && policy.validate().is_ok());
    }

    #[test]
    fn serials_and_reasons() {
        let s = Serial::parse("serial=0a:1B:ff").unwrap();
        assert_eq!(s.as_bytes(), &[0x0a, 0x1b, 0xff]);
        assert_eq!(Serial::parse("A1BFF").unwrap().to_hex(), "0A1BFF");
        assert_eq!(Serial::from_bytes(&[0, 0, 5]).as_bytes(), &[5]);
        assert!(Serial::parse("xyz").is_err() && Serial::parse("").is_err());
        let r = Serial::random();
        assert_eq!(r.as_bytes().len(), 20);
        assert!(r.as_bytes()[0] & 0x80 == 0 && r.as_bytes()[0] != 0);
        assert_eq!(RevocationReason::parse("keycompromise").unwrap(), RevocationReason::KeyCompromise);
        assert_eq!(RevocationReason::KeyCompromise.code(), 1);
        assert_eq!(RevocationReason::from_code(9), Some(RevocationReason::PrivilegeWithdrawn));
        assert!(RevocationReason::parse("stolen").is_err());
    }
}
