//! The internal CA judged by the `openssl` command-line tool: every issued chain verifies
//! with `openssl verify` and shows the right key; CSRs made by `openssl req` are signed;
//! revoked certificates fail `openssl verify -crl_check`. Our own `verify_chain` must agree
//! with openssl on every case, and bad input gets clear typed errors.
//!
//! Without `openssl` on the PATH the openssl checks are skipped loudly, except under
//! `CI=true`, where that is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crypto_core::pki::*;

const DAY: Duration = Duration::from_secs(86_400);

fn openssl_available() -> bool {
    let ok = Command::new("openssl").arg("version").output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "openssl is required in CI but was not found");
        eprintln!("\n*** SKIPPED: openssl cross-checks: `openssl` not found on PATH ***\n");
    }
    ok
}

/// Runs openssl; returns (success, stdout + stderr).
fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn write(dir: &Path, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

struct Hierarchy {
    root: CertificateAuthority,
    ca: CertificateAuthority,
}

fn hierarchy(ca_key: KeyType, now: SystemTime) -> Hierarchy {
    let root =
        CertificateAuthority::new_root(&CaOptions { key_type: KeyType::Rsa2048, ..CaOptions::new("Test Root") }, now)
            .unwrap();
    let ca = root
        .new_intermediate(
            &CaOptions { key_type: ca_key, path_len: Some(0), ttl: 365 * DAY, ..CaOptions::new("Test Issuing CA") },
            now,
        )
        .unwrap();
    Hierarchy { root, ca }
}

fn leaf_request(key_type: KeyType, sans: &[&str], usage: Usage) -> LeafRequest {
    LeafRequest {
        common_name: "web.tenant-a.svc".into(),
        sans: sans.iter().map(|s| SubjectAltName::parse(s).unwrap()).collect(),
        key_type,
        ttl: 30 * DAY,
        usage,
    }
}

fn ours(h: &Hierarchy, leaf_pem: &str, crls: &[Vec<u8>], at: SystemTime) -> Result<VerifiedChain, ChainError> {
    verify_chain(
        leaf_pem.as_bytes(),
        &[h.ca.bundle_pem().into_bytes()],
        &[h.root.certificate_der().to_vec()],
        crls,
        Some(Usage::Server),
        at,
    )
}

#[test]
fn every_key_type_verifies_with_openssl_and_shows_its_size() {
    let now = SystemTime::now();
    let h = hierarchy(KeyType::EcdsaP256, now);
    let check = openssl_available();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "root.pem", h.root.certificate_pem());
    write(dir.path(), "ca.pem", h.ca.certificate_pem());
    let expected = [
        (KeyType::Rsa2048, "Public-Key: (2048 bit)"),
        (KeyType::Rsa3072, "Public-Key: (3072 bit)"),
        (KeyType::Rsa4096, "Public-Key: (4096 bit)"),
        (KeyType::EcdsaP256, "Public-Key: (256 bit)"),
        (KeyType::EcdsaP384, "Public-Key: (384 bit)"),
        (KeyType::Ed25519, "ED25519"),
    ];
    for (key_type, shown) in expected {
        let leaf =
            h.ca.issue(
                &leaf_request(
                    key_type,
                    &["dns:web.tenant-a.svc", "ip:10.0.0.7", "uri:spiffe://c.local/ns/a/sa/web"],
                    Usage::ServerAndClient,
                ),
                now,
            )
            .unwrap();
        let key = leaf.private_key.as_ref().unwrap();
        assert_eq!(key.key_type(), key_type);
        assert!(!format!("{key:?}").contains("PRIVATE"), "no key material in Debug");
        let chain = ours(&h, &leaf.chain_pem, &[], now).unwrap();
        assert_eq!(chain.certificates.len(), 3);
        // The private key round-trips through PEM and is the certificate's.
        let reloaded =
            PrivateKey::from_pkcs8_pem(std::str::from_utf8(key.to_pkcs8_pem().expose_secret()).unwrap()).unwrap();
        assert_eq!(reloaded.key_type(), key_type);
        if !check {
            continue;
        }
        let name = key_type.name();
        write(dir.path(), &format!("{name}.pem"), leaf.certificate_pem());
        write(dir.path(), &format!("{name}.key"), key.to_pkcs8_pem().expose_secret());
        let (ok, out) = openssl(
            dir.path(),
            &["verify", "-CAfile", "root.pem", "-untrusted", "ca.pem", "-purpose", "sslserver", &format!("{name}.pem")],
        );
        assert!(ok, "{name}: openssl verify: {out}");
        let (ok, out) = openssl(
            dir.path(),
            &["verify", "-CAfile", "root.pem", "-untrusted", "ca.pem", "-purpose", "sslclient", &format!("{name}.pem")],
        );
        assert!(ok, "{name}: openssl verify (client): {out}");
        let (ok, text) = openssl(dir.path(), &["x509", "-noout", "-text", "-in", &format!("{name}.pem")]);
        assert!(ok && text.contains(shown), "{name}: expected {shown:?} in:\n{text}");
        assert!(text.contains("DNS:web.tenant-a.svc") && text.contains("IP Address:10.0.0.7"), "{text}");
        assert!(text.contains("URI:spiffe://c.local/ns/a/sa/web"), "{text}");
        assert!(text.contains("CA:FALSE"), "{text}");
        // The key file is the certificate's key, as openssl sees it.
        let (_, cert_pub) = openssl(dir.path(), &["x509", "-noout", "-pubkey", "-in", &format!("{name}.pem")]);
        let (ok, key_pub) = openssl(dir.path(), &["pkey", "-pubout", "-in", &format!("{name}.key")]);
        assert!(ok && cert_pub == key_pub, "{name}: key does not match certificate");
        // 128+ bit random serial, as openssl prints it, parses back.
        let (_, serial) = openssl(dir.path(), &["x509", "-noout", "-serial", "-in", &format!("{name}.pem")]);
        assert_eq!(Serial::parse(&serial).unwrap(), leaf.serial);
        assert!(leaf.serial.as_bytes().len() >= 16);
    }
}

#[test]
fn openssl_req_csrs_are_signed_and_bad_ones_refused() {
    if !openssl_available() {
        return;
    }
    let now = SystemTime::now();
    let h = hierarchy(KeyType::Rsa2048, now);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "root.pem", h.root.certificate_pem());
    write(dir.path(), "ca.pem", h.ca.certificate_pem());
    let policy = SanPolicy {
        dns: vec!["*.tenant-a.svc".into()],
        ip: vec![("10.0.0.0".parse().unwrap(), 8)],
        uri_prefixes: vec![],
    };
    let req = |name: &str, newkey: &str, extra: &[&str]| {
        let mut args = vec!["req", "-new", "-newkey", newkey, "-nodes", "-keyout"];
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        args.extend([key.as_str(), "-out", csr.as_str(), "-subj", "/CN=api.tenant-a.svc"]);
        args.extend(extra);
        let (ok, out) = openssl(dir.path(), &args);
        assert!(ok, "openssl req: {out}");
        std::fs::read(dir.path().join(csr)).unwrap()
    };
    for (name, newkey) in [("rsa", "rsa:2048"), ("ec", "ec"), ("ed", "ed25519")] {
        let newkey = if newkey == "ec" { "ec:ecparams.pem" } else { newkey };
        if name == "ec" {
            let (ok, out) = openssl(dir.path(), &["ecparam", "-name", "prime256v1", "-out", "ecparams.pem"]);
            assert!(ok, "{out}");
        }
        let csr = req(
            name,
            newkey,
            &["-addext", "subjectAltName=DNS:api.tenant-a.svc,IP:10.1.2.3", "-addext", "keyUsage=keyCertSign"],
        );
        let issued = h.ca.sign_csr(&csr, &policy, 7 * DAY, Usage::Server, now).unwrap();
        assert!(issued.private_key.is_none());
        write(dir.path(), &format!("{name}.pem"), issued.certificate_pem());
        let (ok, out) = openssl(
            dir.path(),
            &["verify", "-CAfile", "root.pem", "-untrusted", "ca.pem", "-purpose", "sslserver", &format!("{name}.pem")],
        );
        assert!(ok, "{name}: {out}");
        let (_, text) = openssl(dir.path(), &["x509", "-noout", "-text", "-in", &format!("{name}.pem")]);
        assert!(text.contains("DNS:api.tenant-a.svc") && text.contains("IP Address:10.1.2.3"), "{text}");
        assert!(!text.contains("Certificate Sign"), "the requested keyCertSign usage is dropped: {text}");
        // The certificate carries the CSR's key.
        let (_, cert_pub) = openssl(dir.path(), &["x509", "-noout", "-pubkey", "-in", &format!("{name}.pem")]);
        let (_, key_pub) = openssl(dir.path(), &["pkey", "-pubout", "-in", &format!("{name}.key")]);
        assert_eq!(cert_pub, key_pub);
        ours(&h, &issued.chain_pem, &[], now).unwrap();
    }

    let e = h.ca.sign_csr(&req("weak", "rsa:1024", &[]), &policy, DAY, Usage::Server, now).unwrap_err();
    assert!(matches!(e, PkiError::WeakKey(_)), "{e}");
    let e =
        h.ca.sign_csr(
            &req("evil", "rsa:2048", &["-addext", "subjectAltName=DNS:bank.example.com"]),
            &policy,
            DAY,
            Usage::Server,
            now,
        )
        .unwrap_err();
    assert!(matches!(e, PkiError::SanNotAllowed(_)), "{e}");
    let e =
        h.ca.sign_csr(
            &req("ip", "rsa:2048", &["-addext", "subjectAltName=IP:192.168.1.1"]),
            &policy,
            DAY,
            Usage::Server,
            now,
        )
        .unwrap_err();
    assert!(matches!(e, PkiError::SanNotAllowed(_)), "{e}");
    let e =
        h.ca.sign_csr(
            &req("ca", "rsa:2048", &["-addext", "basicConstraints=critical,CA:TRUE"]),
            &policy,
            DAY,
            Usage::Server,
            now,
        )
        .unwrap_err();
    assert_eq!(e, PkiError::CaRequested);
    // A common name outside the policy is refused even without SANs.
    let (ok, out) = openssl(
        dir.path(),
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "cn.key",
            "-out",
            "cn.csr",
            "-subj",
            "/CN=bank.example.com",
        ],
    );
    assert!(ok, "{out}");
    let e =
        h.ca.sign_csr(&std::fs::read(dir.path().join("cn.csr")).unwrap(), &policy, DAY, Usage::Server, now)
            .unwrap_err();
    assert!(matches!(e, PkiError::SanNotAllowed(_)), "{e}");

    // A CSR whose signature was tampered with, garbage, and PEM of the wrong kind.
    let good = req("tamper", "rsa:2048", &[]);
    let (ok, _) = openssl(dir.path(), &["req", "-in", "tamper.csr", "-outform", "DER", "-out", "tamper.der"]);
    assert!(ok);
    let mut der = std::fs::read(dir.path().join("tamper.der")).unwrap();
    let n = der.len();
    der[n - 10] ^= 0x01;
    assert_eq!(h.ca.sign_csr(&der, &policy, DAY, Usage::Server, now).unwrap_err(), PkiError::BadSignature);
    assert!(matches!(h.ca.sign_csr(b"garbage", &policy, DAY, Usage::Server, now), Err(PkiError::Malformed(_))));
    assert!(matches!(
        h.ca.sign_csr(
            b"-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----\n",
            &policy,
            DAY,
            Usage::Server,
            now
        ),
        Err(PkiError::Malformed(_))
    ));
    assert!(matches!(
        h.ca.sign_csr(h.ca.certificate_pem().as_bytes(), &policy, DAY, Usage::Server, now),
        Err(PkiError::Malformed(_))
    ));
    // Lifetimes: zero, too long, past the CA.
    assert!(matches!(
        h.ca.sign_csr(&good, &policy, Duration::ZERO, Usage::Server, now),
        Err(PkiError::InvalidValidity(_))
    ));
    assert!(matches!(h.ca.sign_csr(&good, &policy, 400 * DAY, Usage::Server, now), Err(PkiError::InvalidValidity(_))));
}

#[test]
fn revoked_certificates_fail_crl_checks_in_openssl_and_here() {
    let now = SystemTime::now();
    let h = hierarchy(KeyType::EcdsaP256, now);
    let good = h.ca.issue(&leaf_request(KeyType::EcdsaP256, &["dns:ok.tenant-a.svc"], Usage::Server), now).unwrap();
    let bad = h.ca.issue(&leaf_request(KeyType::EcdsaP256, &["dns:lost.tenant-a.svc"], Usage::Server), now).unwrap();
    let revoked = [Revocation { serial: bad.serial.clone(), reason: RevocationReason::KeyCompromise, revoked_at: now }];
    let crl = h.ca.crl(&revoked, 7, now, now + DAY).unwrap();
    let root_crl = h.root.crl(&[], 1, now, now + DAY).unwrap();
    let crls = vec![crl.clone(), root_crl.clone()];
    ours(&h, &good.chain_pem, &crls, now).unwrap();
    let e = ours(&h, &bad.chain_pem, &crls, now).unwrap_err();
    assert_eq!(e, ChainError::Revoked { index: 0, serial: bad.serial.to_hex(), reason: "keyCompromise" });
    // A CRL past its next update is refused rather than trusted.
    let e = ours(&h, &good.chain_pem, &crls, now + 2 * DAY).unwrap_err();
    assert!(matches!(e, ChainError::CrlInvalid { .. }), "{e}");
    // A CRL in the issuing CA's name but signed by another key is refused, not trusted.
    let other = hierarchy(KeyType::EcdsaP256, now);
    let forged = other.ca.crl(&[], 1, now, now + DAY).unwrap();
    let e = ours(&h, &good.chain_pem, &[forged], now).unwrap_err();
    assert_eq!(e, ChainError::CrlInvalid { index: 0, reason: "bad signature".into() });

    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bundle.pem", h.ca.bundle_pem());
    write(dir.path(), "good.pem", good.certificate_pem());
    write(dir.path(), "bad.pem", bad.certificate_pem());
    let crl_pem = format!("{}{}", to_pem("X509 CRL", &crl), to_pem("X509 CRL", &root_crl));
    write(dir.path(), "crls.pem", crl_pem);
    let (ok, text) = openssl(dir.path(), &["crl", "-in", "crls.pem", "-noout", "-text"]);
    assert!(ok && text.contains("Key Compromise") && text.contains("X509v3 CRL Number"), "{text}");
    let (ok, out) =
        openssl(dir.path(), &["verify", "-crl_check_all", "-CRLfile", "crls.pem", "-CAfile", "bundle.pem", "good.pem"]);
    assert!(ok, "good: {out}");
    let (ok, out) =
        openssl(dir.path(), &["verify", "-crl_check_all", "-CRLfile", "crls.pem", "-CAfile", "bundle.pem", "bad.pem"]);
    assert!(!ok && out.contains("revoked"), "bad: {out}");
}

#[test]
fn validity_path_length_and_name_constraints_agree_with_openssl() {
    let now = SystemTime::now();
    let h = hierarchy(KeyType::EcdsaP384, now);
    let leaf = h.ca.issue(&leaf_request(KeyType::EcdsaP256, &["dns:web.tenant-a.svc"], Usage::Server), now).unwrap();
    assert_eq!(ours(&h, &leaf.chain_pem, &[], now + 31 * DAY).unwrap_err(), ChainError::Expired { index: 0 });
    assert_eq!(ours(&h, &leaf.chain_pem, &[], now - DAY).unwrap_err(), ChainError::NotYetValid { index: 0 });
    assert_eq!(
        verify_chain(
            leaf.chain_pem.as_bytes(),
            &[h.ca.bundle_pem().into_bytes()],
            &[h.root.certificate_der().to_vec()],
            &[],
            Some(Usage::Client),
            now
        )
        .unwrap_err(),
        ChainError::WrongUsage("TLS client authentication")
    );
    // Not anchored in this root.
    let other = hierarchy(KeyType::EcdsaP256, now);
    let e = verify_chain(leaf.chain_pem.as_bytes(), &[], &[other.root.certificate_der().to_vec()], &[], None, now)
        .unwrap_err();
    assert_eq!(e, ChainError::UnknownIssuer { index: 0 });

    // The issuing CA has pathLen 0: a CA below it is refused.
    let sub = h
        .ca
        .new_intermediate(&CaOptions { key_type: KeyType::EcdsaP256, ttl: 30 * DAY, ..CaOptions::new("Too Deep") }, now)
        .unwrap();
    let deep = sub.issue(&leaf_request(KeyType::EcdsaP256, &["dns:x.tenant-a.svc"], Usage::Server), now).unwrap();
    let e = verify_chain(
        deep.chain_pem.as_bytes(),
        &[sub.bundle_pem().into_bytes()],
        &[h.root.certificate_der().to_vec()],
        &[],
        None,
        now,
    )
    .unwrap_err();
    assert_eq!(e, ChainError::PathLenExceeded { index: 2 });

    // Name constraints on an intermediate.
    let constrained = h
        .root
        .new_intermediate(
            &CaOptions {
                key_type: KeyType::EcdsaP256,
                ttl: 30 * DAY,
                permitted_dns: vec!["tenant-a.svc".into()],
                ..CaOptions::new("Tenant A CA")
            },
            now,
        )
        .unwrap();
    let inside =
        constrained.issue(&leaf_request(KeyType::EcdsaP256, &["dns:db.tenant-a.svc"], Usage::Server), now).unwrap();
    let outside =
        constrained.issue(&leaf_request(KeyType::EcdsaP256, &["dns:db.tenant-b.svc"], Usage::Server), now).unwrap();
    let check = |c: &IssuedCertificate| {
        verify_chain(
            c.chain_pem.as_bytes(),
            &[c.chain_pem.clone().into_bytes()],
            &[h.root.certificate_der().to_vec()],
            &[],
            None,
            now,
        )
    };
    check(&inside).unwrap();
    assert!(matches!(check(&outside).unwrap_err(), ChainError::NameConstraint { index: 1, .. }));

    // Renewal timing.
    assert!(!needs_renewal(inside.certificate_pem().as_bytes(), 2.0 / 3.0, now).unwrap());
    assert!(needs_renewal(inside.certificate_pem().as_bytes(), 2.0 / 3.0, now + 21 * DAY).unwrap());
    assert!(needs_renewal(b"junk", 0.5, now).is_err());

    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "root.pem", h.root.certificate_pem());
    let attime = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs().to_string();
    write(dir.path(), "leaf.pem", &leaf.chain_pem);
    let (ok, out) = openssl(
        dir.path(),
        &["verify", "-CAfile", "root.pem", "-untrusted", "leaf.pem", "-attime", &attime(now + 31 * DAY), "leaf.pem"],
    );
    assert!(!ok && out.contains("expired"), "{out}");
    let (ok, out) = openssl(
        dir.path(),
        &["verify", "-CAfile", "root.pem", "-untrusted", "leaf.pem", "-attime", &attime(now - DAY), "leaf.pem"],
    );
    assert!(!ok && out.contains("not yet valid"), "{out}");
    write(dir.path(), "deep.pem", &deep.chain_pem);
    write(dir.path(), "deep-chain.pem", sub.bundle_pem());
    let (ok, out) = openssl(dir.path(), &["verify", "-CAfile", "root.pem", "-untrusted", "deep-chain.pem", "deep.pem"]);
    assert!(!ok && out.contains("path length"), "{out}");
    write(dir.path(), "outside.pem", &outside.chain_pem);
    let (ok, out) = openssl(dir.path(), &["verify", "-CAfile", "root.pem", "-untrusted", "outside.pem", "outside.pem"]);
    assert!(!ok && out.contains("subtree"), "{out}");
    write(dir.path(), "inside.pem", &inside.chain_pem);
    let (ok, out) = openssl(dir.path(), &["verify", "-CAfile", "root.pem", "-untrusted", "inside.pem", "inside.pem"]);
    assert!(ok, "{out}");
}

#[test]
fn garbage_and_mismatched_inputs_get_typed_errors() {
    let now = SystemTime::now();
    let h = hierarchy(KeyType::EcdsaP256, now);
    assert!(matches!(verify_chain(b"", &[], &[], &[], None, now), Err(ChainError::Malformed { index: 0, .. })));
    assert!(matches!(
        verify_chain(b"\x30\x03\x02\x01", &[], &[], &[], None, now),
        Err(ChainError::Malformed { index: 0, .. })
    ));
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    assert!(matches!(verify_chain(pem.as_bytes(), &[], &[], &[], None, now), Err(ChainError::Malformed { .. })));
    // A leaf whose signature was altered.
    let leaf = h.ca.issue(&leaf_request(KeyType::EcdsaP256, &["dns:a.tenant-a.svc"], Usage::Server), now).unwrap();
    let mut der = leaf.certificate_der.clone();
    let n = der.len();
    der[n - 5] ^= 0x40;
    let e = verify_chain(&der, &[h.ca.bundle_pem().into_bytes()], &[h.root.certificate_der().to_vec()], &[], None, now)
        .unwrap_err();
    assert!(matches!(e, ChainError::BadSignature { index: 0 } | ChainError::Malformed { .. }), "{e}");
    // A leaf cannot act as a CA.
    let leaf_as_ca = CertificateAuthority::from_parts(&leaf.certificate_der, &[], leaf.private_key.unwrap());
    assert_eq!(leaf_as_ca.unwrap_err(), PkiError::NotACa);
    // A CA certificate with someone else's key.
    let wrong = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    assert_eq!(
        CertificateAuthority::from_parts(h.ca.certificate_der(), &[], wrong).unwrap_err(),
        PkiError::KeyMismatch
    );
    // Bad names and requests.
    assert!(matches!(KeyType::from_name("rsa1024"), Err(PkiError::UnsupportedKey(_))));
    let mut r = leaf_request(KeyType::EcdsaP256, &[], Usage::Server);
    r.common_name = String::new();
    assert!(matches!(h.ca.issue(&r, now), Err(PkiError::InvalidName(_))));
    let r = LeafRequest { ttl: 10 * 365 * DAY, ..leaf_request(KeyType::EcdsaP256, &["dns:a.b"], Usage::Server) };
    assert!(matches!(h.ca.issue(&r, now), Err(PkiError::InvalidValidity(_))));
    assert!(matches!(PrivateKey::from_pkcs8_pem("not a key"), Err(PkiError::Malformed(_))));
}

#[test]
fn an_offline_root_exports_wrapped_and_imports_to_sign_again() {
    let now = SystemTime::now();
    let h = hierarchy(KeyType::EcdsaP256, now);
    let kek = crypto_core::secret::KeyMaterial::generate();
    for ca in [&h.root, &h.ca] {
        let blob = ca.export_wrapped(&kek);
        let back = CertificateAuthority::import_wrapped(&blob, &kek).unwrap();
        assert_eq!(back.certificate_der(), ca.certificate_der());
        assert_eq!(back.bundle_pem(), ca.bundle_pem());
        // Private key bytes are not in the blob in the clear (EC: the scalar, the OCTET
        // STRING after ECPrivateKey's version 1).
        let key = ca.private_key().to_pkcs8_der();
        let der = key.expose_secret();
        let scalar = match ca.private_key().key_type() {
            // RSAPrivateKey ends with qInv, a private value.
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => &der[der.len() - 32..],
            _ => {
                let at = der.windows(5).position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20]).unwrap() + 5;
                &der[at..at + 32]
            }
        };
        assert!(!blob.windows(32).any(|w| w == scalar));
        // Wrong key, any flipped byte, truncation: refused.
        assert!(CertificateAuthority::import_wrapped(&blob, &crypto_core::secret::KeyMaterial::generate()).is_err());
        for i in [0, 10, blob.len() / 2, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert!(CertificateAuthority::import_wrapped(&bad, &kek).is_err(), "flip at {i}");
        }
        assert!(CertificateAuthority::import_wrapped(&blob[..blob.len() - 1], &kek).is_err());
    }
    // The re-imported root signs a new intermediate that verifies to the same root.
    let root = CertificateAuthority::import_wrapped(&h.root.export_wrapped(&kek), &kek).unwrap();
    let ca2 = root
        .new_intermediate(
            &CaOptions { key_type: KeyType::EcdsaP256, ttl: 30 * DAY, ..CaOptions::new("Second CA") },
            now,
        )
        .unwrap();
    let leaf = ca2.issue(&leaf_request(KeyType::Ed25519, &["dns:x.tenant-a.svc"], Usage::Server), now).unwrap();
    verify_chain(
        leaf.chain_pem.as_bytes(),
        &[ca2.bundle_pem().into_bytes()],
        &[h.root.certificate_der().to_vec()],
        &[],
        None,
        now,
    )
    .unwrap();
}
