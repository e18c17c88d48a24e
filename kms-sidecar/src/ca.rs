//! The sidecar's certificate authority: one issuing CA per keystore (shared by every
//! sidecar on it), its private key stored only wrapped by the root key, an inventory of
//! every certificate issued, and CRLs numbered from one counter in the store, so all
//! sidecars sharing PostgreSQL publish one consistent, increasing CRL.
//!
//! `init_ca` makes a self-signed CA with `pathLen 0` (it issues leaves only). Requests to
//! sign CSRs are checked against the name policy given at `init_ca`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crypto_core::pki::{
    CaOptions, CertificateAuthority, IssuedCertificate, KeyType, LeafRequest, PkiError, PrivateKey, Revocation,
    RevocationReason, SanPolicy, Serial, Usage,
};
use serde_json::{Value, json};

use crate::keystore::{CertificateRecord, StoredCa};
use crate::kms::{Kms, KmsError};
use crate::root_key::RootKeyError;

/// Root-key wrapping purpose of the CA's private key.
const CA_KEY_PURPOSE: &str = "pki/issuing-ca";

/// The wrap purpose binds the CA key to the rest of its stored record (certificate,
/// parents, policy): someone who can write to the database but lacks the root key cannot
/// swap in another root or widen the policy without the key failing to unwrap.
fn key_purpose(certificate: &[u8], parents: &[Vec<u8>], policy: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [certificate, &crate::keystore::encode_parents(parents), policy.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    format!("{CA_KEY_PURPOSE}/{}", hex::encode(h.finalize()))
}
/// How long a CRL is valid; clients fetch a new one by then.
pub const CRL_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// The latest time X.509 can express (9999-12-31T23:59:59Z), Unix seconds. A stored
/// revocation time past it can only be damaged data, and the CRL encoder panics on it.
const MAX_X509_TIME: i64 = 253_402_300_799;

impl From<PkiError> for KmsError {
    fn from(e: PkiError) -> Self {
        match e {
            PkiError::SanNotAllowed(_) => KmsError::PermissionDenied(e.to_string()),
            PkiError::NotACa | PkiError::KeyMismatch | PkiError::Crypto(_) => KmsError::Internal(e.to_string()),
            _ => KmsError::InvalidArgument(e.to_string()),
        }
    }
}

/// Settings of `init_ca`.
#[derive(Debug, Clone)]
pub struct CaInit {
    /// The CA's common name.
    pub common_name: String,
    /// Its key type.
    pub key_type: KeyType,
    /// Its lifetime.
    pub ttl: Duration,
    /// Which names CSRs may obtain.
    pub policy: SanPolicy,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn policy_to_json(p: &SanPolicy) -> String {
    json!({
        "dns": p.dns,
        "ip": p.ip.iter().map(|(ip, prefix)| format!("{ip}/{prefix}")).collect::<Vec<_>>(),
        "uri_prefixes": p.uri_prefixes,
    })
    .to_string()
}

/// Parses `10.0.0.0/8` (a bare address means a single host).
pub fn parse_network(text: &str) -> Result<(IpAddr, u8), KmsError> {
    let bad = || KmsError::InvalidArgument(format!("network {text:?}: expected ADDRESS/PREFIX"));
    let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = if prefix.is_empty() { max } else { prefix.parse::<u8>().map_err(|_| bad())? };
    if prefix > max {
        return Err(bad());
    }
    Ok((ip, prefix))
}

fn policy_from_json(text: &str) -> Result<SanPolicy, KmsError> {
    let corrupt = || KmsError::Internal("stored CA policy is invalid".into());
    let v: Value = serde_json::from_str(text).map_err(|_| corrupt())?;
    let strings = |key: &str| -> Vec<String> {
        v.get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let ip = strings("ip").iter().map(|n| parse_network(n)).collect::<Result<_, _>>().map_err(|_| corrupt())?;
    Ok(SanPolicy { dns: strings("dns"), ip, uri_prefixes: strings("uri_prefixes") })
}

/// The public facts of the CA.
#[derive(Debug, Clone)]
pub struct CaInfo {
    /// What clients must trust (PEM).
    pub bundle_pem: String,
    /// The CSR name policy.
    pub policy: SanPolicy,
}

impl Kms {
    /// Creates the keystore's CA. `AlreadyExists` if it has one.
    pub fn init_ca(&self, init: &CaInit) -> Result<CaInfo, KmsError> {
        init.policy.validate()?;
        let now = SystemTime::now();
        let options = CaOptions {
            key_type: init.key_type,
            ttl: init.ttl,
            path_len: Some(0),
            ..CaOptions::new(&init.common_name)
        };
        let ca = CertificateAuthority::new_root(&options, now)?;
        let key = ca.private_key().to_pkcs8_der();
        let (certificate, policy) = (ca.certificate_der().to_vec(), policy_to_json(&init.policy));
        let purpose = key_purpose(&certificate, &[], &policy);
        let stored = StoredCa {
            wrapped_key: self
                .root()
                .wrap_secret(&purpose, key.expose_secret())
                .map_err(|e| KmsError::Unavailable(format!("root key: {e}")))?,
            certificate,
            parents: Vec::new(),
            policy,
            created_at: unix(now),
        };
        self.store().put_ca(&stored)?;
        tracing::info!(common_name = %init.common_name, key_type = init.key_type.name(), "CA created");
        let bundle_pem = ca.bundle_pem();
        *self.ca.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(ca));
        Ok(CaInfo { bundle_pem, policy: init.policy.clone() })
    }

    /// The CA, loaded from the store (and its key unwrapped) once.
    fn load_ca(&self) -> Result<Arc<CertificateAuthority>, KmsError> {
        // A remote root key past its grace period (or refusing us) ends the use of the
        // cached CA key as it ends that of cached KEKs: fail closed.
        if let Err(e) = self.root().usable() {
            self.forget_all_keks();
            return Err(KmsError::Unavailable(format!("root key: {e}")));
        }
        if let Some(ca) = self.ca.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(ca.clone());
        }
        let stored = self.store().get_ca()?;
        let purpose = key_purpose(&stored.certificate, &stored.parents, &stored.policy);
        let der = self.root().unwrap_secret(&purpose, &stored.wrapped_key).map_err(|e| match e {
            RootKeyError::Unavailable(m) => KmsError::Unavailable(format!("root key: {m}")),
            RootKeyError::WrongRoot(m) => KmsError::Internal(m),
            _ => KmsError::Internal(
                "the stored CA does not unwrap under this root key (wrong root key, or the record was altered)".into(),
            ),
        })?;
        // Stored data that does not load is the server's problem, not the caller's.
        let internal = |e: PkiError| KmsError::Internal(format!("stored CA: {e}"));
        let key = PrivateKey::from_pkcs8_der(&der).map_err(internal)?;
        let ca =
            Arc::new(CertificateAuthority::from_parts(&stored.certificate, &stored.parents, key).map_err(internal)?);
        *self.ca.lock().unwrap_or_else(|p| p.into_inner()) = Some(ca.clone());
        Ok(ca)
    }

    /// The CA's bundle and policy.
    pub fn ca_info(&self) -> Result<CaInfo, KmsError> {
        let ca = self.load_ca()?;
        let policy = policy_from_json(&self.store().get_ca()?.policy)?;
        Ok(CaInfo { bundle_pem: ca.bundle_pem(), policy })
    }

    fn add_to_inventory(&self, issued: &IssuedCertificate) -> Result<(), KmsError> {
        self.store().add_certificate(&CertificateRecord {
            serial: issued.serial.to_hex(),
            common_name: issued.common_name.clone(),
            sans: issued.sans.iter().map(ToString::to_string).collect(),
            not_after: unix(issued.not_after),
            issued_at: unix(SystemTime::now()),
            revoked_at: None,
            revoke_reason: None,
        })?;
        tracing::info!(
            serial = %issued.serial,
            common_name = %issued.common_name,
            sans = ?issued.sans.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "certificate issued"
        );
        Ok(())
    }

    /// Issues a certificate with a key generated here. The inventory is written before
    /// the certificate is returned: nothing issued is ever missing from it.
    pub fn issue_certificate(&self, request: &LeafRequest) -> Result<IssuedCertificate, KmsError> {
        let issued = self.load_ca()?.issue(request, SystemTime::now())?;
        self.add_to_inventory(&issued)?;
        Ok(issued)
    }

    /// Signs a CSR (PEM or DER) under the CA's name policy.
    pub fn sign_csr(&self, csr: &[u8], ttl: Duration, usage: Usage) -> Result<IssuedCertificate, KmsError> {
        self.sign_csr_checked(csr, ttl, usage, &|_| Ok(()))
    }

    /// [`Kms::sign_csr`], with `check` called on the names the certificate would carry
    /// (`cn:<CN>` then each SAN as `dns:`/`ip:`/`uri:`) before it is recorded or returned:
    /// the caller's authorization. A refused certificate is discarded, never handed out.
    pub fn sign_csr_checked(
        &self,
        csr: &[u8],
        ttl: Duration,
        usage: Usage,
        check: &dyn Fn(&[String]) -> Result<(), KmsError>,
    ) -> Result<IssuedCertificate, KmsError> {
        let ca = self.load_ca()?;
        let policy = policy_from_json(&self.store().get_ca()?.policy)?;
        let issued = ca.sign_csr(csr, &policy, ttl, usage, SystemTime::now())?;
        check(&certificate_names(&issued.common_name, &issued.sans))?;
        self.add_to_inventory(&issued)?;
        Ok(issued)
    }

    /// Revokes a certificate of the inventory (serial as `openssl x509 -serial` prints it).
    pub fn revoke_certificate(&self, serial: &str, reason: RevocationReason) -> Result<CertificateRecord, KmsError> {
        let serial = Serial::parse(serial)?;
        let record = self.store().revoke_certificate(&serial.to_hex(), reason.code(), unix(SystemTime::now()))?;
        tracing::info!(serial = %serial, reason = reason.name(), "certificate revoked");
        Ok(record)
    }

    /// The inventory.
    pub fn list_certificates(&self) -> Result<Vec<CertificateRecord>, KmsError> {
        Ok(self.store().list_certificates()?)
    }

    /// A fresh CRL (DER) of every revoked certificate, with the next number from the
    /// store and [`CRL_VALIDITY`]; returns it with its number.
    pub fn crl(&self) -> Result<(Vec<u8>, u64), KmsError> {
        let ca = self.load_ca()?;
        let (number, records) = self.store().crl_snapshot()?;
        let mut revoked = Vec::with_capacity(records.len());
        for c in records {
            let serial =
                Serial::parse(&c.serial).map_err(|_| KmsError::Internal(format!("stored serial {:?}", c.serial)))?;
            let revoked_at = c.revoked_at.unwrap_or(0).max(0);
            if revoked_at > MAX_X509_TIME {
                return Err(KmsError::Internal(format!("stored revocation time {revoked_at} of serial {serial}")));
            }
            revoked.push(Revocation {
                serial,
                reason: c.revoke_reason.and_then(RevocationReason::from_code).unwrap_or(RevocationReason::Unspecified),
                revoked_at: UNIX_EPOCH + Duration::from_secs(revoked_at as u64),
            });
        }
        let now = SystemTime::now();
        Ok((ca.crl(&revoked, number, now, now + CRL_VALIDITY)?, number))
    }
}

/// The names a certificate is authorized by: `cn:<CN>` (if any) and each SAN.
pub fn certificate_names(common_name: &str, sans: &[crypto_core::pki::SubjectAltName]) -> Vec<String> {
    let cn = (!common_name.is_empty()).then(|| format!("cn:{common_name}"));
    cn.into_iter().chain(sans.iter().map(ToString::to_string)).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Found by the `keystore_records` fuzz target: a stored revocation time past what
    /// X.509 can express made the CRL encoder panic (GetCrl, the `--tls auto` CRL refresh).
    #[test]
    fn crl_refuses_a_stored_revocation_time_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::keystore::SqliteStore::open(dir.path().join("keystore.db")).unwrap());
        let root = crate::root_key::LocalRootKey::load_or_create(dir.path().join("root.key"), true).unwrap();
        let kms = Kms::new(store, root);
        let init = CaInit {
            common_name: "Test CA".into(),
            key_type: KeyType::EcdsaP256,
            ttl: Duration::from_secs(86_400),
            policy: SanPolicy::default(),
        };
        kms.init_ca(&init).unwrap();
        let record = CertificateRecord {
            serial: "7E57".into(),
            common_name: "web".into(),
            sans: Vec::new(),
            not_after: 4_000_000_000,
            issued_at: 1_700_000_000,
            revoked_at: None,
            revoke_reason: None,
        };
        kms.store().add_certificate(&record).unwrap();
        kms.store().revoke_certificate("7E57", 1, MAX_X509_TIME).unwrap();
        // The last second X.509 can express is still fine.
        kms.crl().unwrap();
        kms.store().add_certificate(&CertificateRecord { serial: "7E58".into(), ..record }).unwrap();
        kms.store().revoke_certificate("7E58", 1, MAX_X509_TIME + 1).unwrap();
        assert!(matches!(kms.crl(), Err(KmsError::Internal(m)) if m.contains("revocation time")));
    }
}
