//! The TCP listener: TLS from PEM files (made here with the `openssl` CLI), mTLS with a
//! client CA, and refusal of plaintext TCP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl CLI available");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// CA, server certificate for 127.0.0.1, client certificate; all P-256.
fn make_pki(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(
        dir,
        &[&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca"]]
            .concat(),
    );
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "localhost"), ("client", "spiffe-test-client")] {
        openssl(
            dir,
            &[
                &["req"][..],
                &ec,
                &["-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", &format!("/CN={cn}")],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
    // A second, unrelated CA for the negative case.
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "other.key", "-out", "other.pem", "-days", "2", "-subj", "/CN=other-ca"],
        ]
        .concat(),
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn kmsctl(dir: &Path, endpoint: &str, tls: &[&str], args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kmsctl"))
        .current_dir(dir)
        .arg("--endpoint")
        .arg(endpoint)
        .args(tls)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn tls_and_mtls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_pki(d);
    // The client certificate's identity (its CN: no URI SAN) may administer tenant-a's keys.
    std::fs::write(
        d.join("policy.toml"),
        "[roles.a]\ngrants = [{ operations = [\"admin\", \"encrypt\"], keys = [\"tenant-a/**\"] }]\n\
         [[bindings]]\nprincipals = [\"cert-cn:spiffe-test-client\"]\nroles = [\"a\"]\n",
    )
    .unwrap();
    let port = free_port();
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_kms-sidecar"))
        .current_dir(d)
        .args(["serve", "--data-dir", "data", "--listen", &format!("tcp://127.0.0.1:{port}")])
        .args(["--tls-cert", "server.pem", "--tls-key", "server.key", "--client-ca", "ca.pem"])
        .args(["--policy", "policy.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sidecar did not listen within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let endpoint = format!("https://127.0.0.1:{port}");
    let mtls = ["--ca-cert", "ca.pem", "--client-cert", "client.pem", "--client-key", "client.key"];

    let ok = kmsctl(d, &endpoint, &mtls, &["key", "create", "tenant-a/db"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let list = kmsctl(d, &endpoint, &mtls, &["key", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("tenant-a/db"));

    // No client certificate: refused by the mTLS handshake.
    let no_cert = kmsctl(d, &endpoint, &["--ca-cert", "ca.pem"], &["key", "list"]);
    assert!(!no_cert.status.success());
    // A server certificate the client does not trust: refused.
    let wrong_ca = kmsctl(
        d,
        &endpoint,
        &["--ca-cert", "other.pem", "--client-cert", "client.pem", "--client-key", "client.key"],
        &["key", "list"],
    );
    assert!(!wrong_ca.status.success());
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        assert!(Instant::now() < deadline, "no clean exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn plaintext_tcp_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kms-sidecar"))
        .current_dir(dir.path())
        .args(["serve", "--data-dir", "data", "--listen", "tcp://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("requires TLS"));
}
