//! Internal CA throughput, one core: leaf certificates issued per second for each key type
//! (the leaf key generated server-side, by aws-lc-rs), and CSRs signed per second by an
//! RSA-2048 and a P-256 CA. Results: `benches/RESULTS.md` ("PKI").
#![allow(missing_docs, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use crypto_core::pki::{CaOptions, CertificateAuthority, KeyType, LeafRequest, SanPolicy, SubjectAltName, Usage};

fn ca(key_type: KeyType, now: SystemTime) -> CertificateAuthority {
    CertificateAuthority::new_root(&CaOptions { key_type, ..CaOptions::new("Bench CA") }, now).expect("CA")
}

fn issue(c: &mut Criterion) {
    let now = SystemTime::now();
    let mut g = c.benchmark_group("pki-issue");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for ca_type in [KeyType::EcdsaP256, KeyType::Rsa2048] {
        let authority = ca(ca_type, now);
        for leaf_type in KeyType::ALL {
            // RSA key generation dominates and varies widely: measured once, under the P-256 CA.
            if ca_type == KeyType::Rsa2048 && leaf_type != KeyType::EcdsaP256 {
                continue;
            }
            let request = LeafRequest {
                common_name: "web.tenant-a.svc".into(),
                sans: vec![SubjectAltName::Dns("web.tenant-a.svc".into())],
                key_type: leaf_type,
                ttl: Duration::from_secs(30 * 86_400),
                usage: Usage::Server,
            };
            g.bench_function(format!("{}-ca/{}-leaf", ca_type.name(), leaf_type.name()), |b| {
                b.iter(|| black_box(authority.issue(&request, now).expect("issue")))
            });
        }
    }
    g.finish();
}

fn sign_csr(c: &mut Criterion) {
    let now = SystemTime::now();
    // A P-256 CSR for web.tenant-a.svc, made once.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["web.tenant-a.svc".to_owned()]).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, "web.tenant-a.svc");
    let csr = params.serialize_request(&key).expect("csr").pem().expect("pem");
    let policy = SanPolicy { dns: vec!["*.tenant-a.svc".into()], ..SanPolicy::default() };
    let mut g = c.benchmark_group("pki-sign-csr");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for ca_type in [KeyType::Rsa2048, KeyType::EcdsaP256] {
        let authority = ca(ca_type, now);
        g.bench_function(format!("{}-ca", ca_type.name()), |b| {
            b.iter(|| {
                black_box(
                    authority
                        .sign_csr(csr.as_bytes(), &policy, Duration::from_secs(86_400), Usage::Server, now)
                        .expect("sign"),
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, issue, sign_csr);
criterion_main!(benches);
