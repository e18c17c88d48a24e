//! The sidecar's CA end to end through `kmsctl`, judged by `openssl`: init, issue, sign an
//! `openssl req` CSR, refuse one outside the policy, revoke (serial as openssl prints it,
//! lower-cased with colons), CRL checked by `openssl verify -crl_check`, inventory, offline
//! verify, restart. On SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{Sidecar, fails, ok, openssl, openssl_available};

fn scenario(extra: &[&str]) {
    if !openssl_available("sidecar CA end to end") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut sidecar = Sidecar::start(&data, extra);
    let s = sidecar.socket.clone();
    let w = dir.path().join("work");
    std::fs::create_dir(&w).unwrap();
    let f = |n: &str| w.join(n).to_string_lossy().into_owned();

    assert!(fails(&s, &["ca", "bundle", "--out", &f("none.pem")]).contains("NOT_FOUND"), "no CA yet");
    assert!(
        fails(&s, &["cert", "issue", "--cn", "x", "--out-cert", &f("x.pem"), "--out-key", &f("x.key")])
            .contains("NOT_FOUND")
    );
    assert!(ok(&s, &["cert", "list"]).is_empty());
    ok(
        &s,
        &[
            "ca",
            "init",
            "--cn",
            "Test Sidecar CA",
            "--key-type",
            "p256",
            "--allow-dns",
            "*.tenant-a.svc",
            "--allow-ip",
            "10.0.0.0/8",
        ],
    );
    assert!(fails(&s, &["ca", "init"]).contains("ALREADY_EXISTS"));
    ok(&s, &["ca", "bundle", "--out", &f("bundle.pem")]);

    // Issue with a sidecar-generated RSA-2048 key.
    let out = ok(
        &s,
        &[
            "cert",
            "issue",
            "--cn",
            "web.tenant-a.svc",
            "--san",
            "dns:web.tenant-a.svc",
            "--san",
            "ip:10.1.2.3",
            "--key-type",
            "rsa2048",
            "--ttl",
            "7d",
            "--out-cert",
            &f("web.pem"),
            "--out-key",
            &f("web.key"),
        ],
    );
    assert!(out.starts_with("serial="), "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(f("web.key")).unwrap().permissions().mode() & 0o777, 0o600);
    let (okv, text) = openssl(&w, &["verify", "-CAfile", "bundle.pem", "-purpose", "sslserver", "web.pem"]);
    assert!(okv, "{text}");
    let (_, text) = openssl(&w, &["x509", "-noout", "-text", "-in", "web.pem"]);
    assert!(text.contains("Public-Key: (2048 bit)") && text.contains("DNS:web.tenant-a.svc"), "{text}");
    let (_, cert_pub) = openssl(&w, &["x509", "-noout", "-pubkey", "-in", "web.pem"]);
    let (_, key_pub) = openssl(&w, &["pkey", "-pubout", "-in", "web.key"]);
    assert_eq!(cert_pub, key_pub, "the key file belongs to the certificate");

    // A CSR from openssl req, signed; one outside the policy refused.
    let (okr, text) = openssl(
        &w,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "api.key",
            "-out",
            "api.csr",
            "-subj",
            "/CN=api.tenant-a.svc",
            "-addext",
            "subjectAltName=DNS:api.tenant-a.svc",
        ],
    );
    assert!(okr, "{text}");
    ok(&s, &["cert", "sign-csr", "--csr", &f("api.csr"), "--ttl", "24h", "--out", &f("api.pem")]);
    let (okv, text) = openssl(&w, &["verify", "-CAfile", "bundle.pem", "api.pem"]);
    assert!(okv, "{text}");
    let (okr, text) = openssl(
        &w,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "evil.key",
            "-out",
            "evil.csr",
            "-subj",
            "/CN=bank.example.com",
            "-addext",
            "subjectAltName=DNS:bank.example.com",
        ],
    );
    assert!(okr, "{text}");
    assert!(
        fails(&s, &["cert", "sign-csr", "--csr", &f("evil.csr"), "--out", &f("evil.pem")])
            .contains("PERMISSION_DENIED")
    );
    assert!(!w.join("evil.pem").exists());
    let (okr, _) = openssl(
        &w,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-keyout",
            "weak.key",
            "-out",
            "weak.csr",
            "-subj",
            "/CN=w.tenant-a.svc",
        ],
    );
    assert!(okr);
    assert!(
        fails(&s, &["cert", "sign-csr", "--csr", &f("weak.csr"), "--out", &f("weak.pem")]).contains("INVALID_ARGUMENT")
    );
    assert!(
        fails(
            &s,
            &["cert", "issue", "--cn", "x", "--san", "bogus", "--out-cert", &f("x.pem"), "--out-key", &f("x.key")]
        )
        .contains("INVALID_ARGUMENT")
    );

    // Revoke web.pem by the serial openssl prints, lower-cased with colons.
    let (_, serial) = openssl(&w, &["x509", "-noout", "-serial", "-in", "web.pem"]);
    let hex = serial.trim().trim_start_matches("serial=").to_lowercase();
    let colons = hex.as_bytes().chunks(2).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(":");
    let revoked = ok(&s, &["cert", "revoke", "--serial", &colons, "--reason", "keyCompromise"]);
    assert!(revoked.contains("revoked=keyCompromise"), "{revoked}");
    assert!(fails(&s, &["cert", "revoke", "--serial", "01:02", "--reason", "keyCompromise"]).contains("NOT_FOUND"));
    assert!(fails(&s, &["cert", "revoke", "--serial", &colons, "--reason", "stolen"]).contains("INVALID_ARGUMENT"));

    // Restart: the CA and the inventory come back from the keystore.
    sidecar.stop();
    sidecar = Sidecar::start(&data, extra);
    let crl1 = ok(&s, &["ca", "crl", "--out", &f("crl.pem")]);
    let crl2 = ok(&s, &["ca", "crl", "--out", &f("crl2.pem")]);
    let number = |t: &str| t.split_whitespace().nth(2).unwrap().parse::<u64>().unwrap();
    assert!(number(&crl2) > number(&crl1), "CRL numbers increase: {crl1} {crl2}");
    let (okv, text) = openssl(&w, &["verify", "-crl_check", "-CRLfile", "crl.pem", "-CAfile", "bundle.pem", "web.pem"]);
    assert!(!okv && text.contains("revoked"), "{text}");
    let (okv, text) = openssl(&w, &["verify", "-crl_check", "-CRLfile", "crl.pem", "-CAfile", "bundle.pem", "api.pem"]);
    assert!(okv, "{text}");
    let list = ok(&s, &["cert", "list"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    assert_eq!(list.lines().filter(|l| l.contains("revoked=keyCompromise")).count(), 1, "{list}");

    // Offline verification agrees with openssl.
    ok(
        &s,
        &["cert", "verify", "--bundle", &f("bundle.pem"), "--crl", &f("crl.pem"), "--usage", "server", &f("api.pem")],
    );
    assert!(
        fails(&s, &["cert", "verify", "--bundle", &f("bundle.pem"), "--crl", &f("crl.pem"), &f("web.pem")])
            .contains("revoked")
    );
    assert!(
        fails(&s, &["cert", "verify", "--bundle", &f("bundle.pem"), "--usage", "client", &f("api.pem")])
            .contains("client")
    );
    sidecar.stop();
}

#[test]
fn sidecar_ca_end_to_end_sqlite() {
    scenario(&[]);
}

#[test]
fn sidecar_ca_end_to_end_postgres() {
    let Some(pg) = common::PgSchema::new() else { return };
    scenario(&["--postgres", &pg.config]);
}
