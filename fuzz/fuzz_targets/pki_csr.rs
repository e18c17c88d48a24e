//! CSR signing on arbitrary bytes (PEM or DER): never panics; anything it signs verifies
//! to the CA and carries only names the policy allows.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crypto_core::pki::{CaOptions, CertificateAuthority, KeyType, SanPolicy, Usage, verify_chain};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    ca: CertificateAuthority,
    policy: SanPolicy,
    now: SystemTime,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = CertificateAuthority::new_root(&CaOptions { key_type: KeyType::EcdsaP256, ..CaOptions::new("Fuzz CA") }, now)
            .expect("CA");
        let policy = SanPolicy {
            dns: vec!["*.tenant-a.svc".into()],
            ip: vec![("10.0.0.0".parse().expect("ip"), 8)],
            uri_prefixes: vec!["spiffe://c.local/".into()],
        };
        Fixture { ca, policy, now }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    if let Ok(issued) = f.ca.sign_csr(data, &f.policy, Duration::from_secs(3600), Usage::Server, f.now) {
        assert!(issued.sans.iter().all(|s| f.policy.allows(s)));
        verify_chain(&issued.certificate_der, &[], &[f.ca.certificate_der().to_vec()], &[], Some(Usage::Server), f.now)
            .expect("what the CA signs verifies");
    }
});
