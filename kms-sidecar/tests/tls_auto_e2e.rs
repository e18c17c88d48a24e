//! `--tls auto` end to end: a Unix admin socket beside a TCP port served with a certificate
//! from the sidecar's own CA. Judged by `openssl s_client` and `kmsctl`: mTLS with a client
//! certificate from the CA works and shows the caller's identity; no certificate, or a
//! revoked one (after the next refresh), is refused; the server certificate is renewed
//! without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Sidecar, free_port, kmsctl_at as kmsctl, ok_at as ok, openssl_available};

/// `openssl s_client` against the port; returns (exit ok, output).
fn s_client(dir: &Path, port: u16, cert: Option<(&str, &str)>) -> (bool, String) {
    s_client_with(dir, port, cert, false)
}

/// `read_on`: keep reading after the handshake (`-ign_eof`) so an alert the server sends
/// once it has checked the client certificate (TLS 1.3) is received and printed.
fn s_client_with(dir: &Path, port: u16, cert: Option<(&str, &str)>, read_on: bool) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-CAfile",
        "bundle.pem",
        "-verify_return_error",
        "-alpn",
        "h2",
        "-showcerts",
    ]);
    if let Some((c, k)) = cert {
        cmd.args(["-cert", c, "-key", k]);
    }
    if read_on || cert.is_none() {
        cmd.arg("-ign_eof");
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Serial of the server certificate (first PEM block of `s_client -showcerts`).
fn served_serial(dir: &Path, port: u16) -> String {
    let (_, out) = s_client(dir, port, Some(("client.pem", "client.key")));
    let start = out.find("-----BEGIN CERTIFICATE-----").expect("server certificate");
    let end = out[start..].find("-----END CERTIFICATE-----").unwrap() + start + 25;
    std::fs::write(dir.join("served.pem"), &out[start..end]).unwrap();
    let serial = Command::new("openssl")
        .current_dir(dir)
        .args(["x509", "-noout", "-serial", "-in", "served.pem"])
        .output()
        .unwrap();
    String::from_utf8(serial.stdout).unwrap().trim().to_owned()
}

#[test]
fn tls_auto_mtls_identity_revocation_and_hot_renewal() {
    if !openssl_available("--tls auto end to end") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let listen = format!("unix://{},tcp://127.0.0.1:{port}", data.join("kms.sock").display());
    // The client's SPIFFE identity may use keys under t/; nothing else (no CA rights).
    let policy = common::policy_file(
        dir.path(),
        "[roles.app]\ngrants = [{ operations = [\"admin\", \"encrypt\", \"decrypt\", \"datakey\"], keys = [\"t/**\"] }]\n\
         [[bindings]]\nprincipals = [\"cert:spiffe://test.local/ns/a/sa/*\"]\nroles = [\"app\"]\n",
    );
    let policy = policy.to_str().unwrap();
    let sidecar = Sidecar::start(
        &data,
        &[
            "--listen",
            &listen,
            "--tls",
            "auto",
            "--tls-auto-ttl",
            "8s",
            "--tls-refresh-interval",
            "1s",
            "--policy",
            policy,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "TLS port did not open");
        std::thread::sleep(Duration::from_millis(20));
    }
    let unix = format!("unix://{}", sidecar.socket.display());
    let w = dir.path().join("work");
    std::fs::create_dir(&w).unwrap();
    let f = |n: &str| w.join(n).to_string_lossy().into_owned();

    // The admin socket: the CA was created for --tls auto; issue a client certificate.
    assert!(ok(&unix, &[], &["whoami"]).trim().starts_with("unix:uid="));
    ok(&unix, &[], &["ca", "bundle", "--out", &f("bundle.pem")]);
    let issued = ok(
        &unix,
        &[],
        &[
            "cert",
            "issue",
            "--cn",
            "client-1",
            "--san",
            "uri:spiffe://test.local/ns/a/sa/client",
            "--key-type",
            "p256",
            "--usage",
            "client",
            "--ttl",
            "1d",
            "--out-cert",
            &f("client.pem"),
            "--out-key",
            &f("client.key"),
        ],
    );
    let client_serial = issued.trim().strip_prefix("serial=").unwrap().split_whitespace().next().unwrap().to_owned();

    // openssl: the handshake succeeds with the client certificate, and the server's
    // certificate verifies against the bundle (IP SAN 127.0.0.1).
    // (s_client's exit status is not used: it is non-zero when the HTTP/2 server closes
    // without close_notify; the verification line and the absence of an alert are.)
    let (_, out) = s_client(&w, port, Some(("client.pem", "client.key")));
    assert!(out.contains("Verify return code: 0 (ok)") && out.contains("ALPN protocol: h2"), "{out}");
    assert!(!out.contains("alert"), "{out}");
    // Without a client certificate the server refuses (TLS 1.3: alert after the handshake).
    let (_, out) = s_client(&w, port, None);
    assert!(out.contains("alert") || out.contains("certificate required"), "{out}");

    // kmsctl over mTLS: the sidecar sees the URI SAN as the identity; no cert: refused.
    let https = format!("https://127.0.0.1:{port}");
    let tls = ["--ca-cert", &f("bundle.pem"), "--client-cert", &f("client.pem"), "--client-key", &f("client.key")];
    assert_eq!(ok(&https, &tls, &["whoami"]).trim(), "cert:spiffe://test.local/ns/a/sa/client");
    ok(&https, &tls, &["key", "create", "t/over-tls"]);
    // The CA's administrative calls are refused over the network: a client certificate
    // must not be able to mint certificates for any name or revoke others.
    let refused = kmsctl(
        &https,
        &tls,
        &[
            "cert",
            "issue",
            "--cn",
            "kms-sidecar",
            "--san",
            "ip:127.0.0.1",
            "--key-type",
            "p256",
            "--out-cert",
            &f("x.pem"),
            "--out-key",
            &f("x.key"),
        ],
    );
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("PERMISSION_DENIED"));
    let refused = kmsctl(&https, &tls, &["cert", "revoke", "--serial", "01", "--reason", "keyCompromise"]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("PERMISSION_DENIED"));
    // A certificate without a URI SAN is known by its CN, labelled as such.
    ok(
        &unix,
        &[],
        &[
            "cert",
            "issue",
            "--cn",
            "client-2",
            "--key-type",
            "ed25519",
            "--usage",
            "client",
            "--ttl",
            "1d",
            "--out-cert",
            &f("client2.pem"),
            "--out-key",
            &f("client2.key"),
        ],
    );
    let tls2 = ["--ca-cert", &f("bundle.pem"), "--client-cert", &f("client2.pem"), "--client-key", &f("client2.key")];
    assert_eq!(ok(&https, &tls2, &["whoami"]).trim(), "cert-cn:client-2");
    let out = kmsctl(&https, &["--ca-cert", &f("bundle.pem")], &["key", "list"]);
    assert!(!out.status.success());

    // Hot renewal: the served certificate changes without a restart (8 s lifetime, renewed
    // at two thirds, checked every second), and clients keep working.
    let first = served_serial(&w, port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = served_serial(&w, port);
        if now != first {
            break;
        }
        assert!(Instant::now() < deadline, "server certificate not renewed within 30 s ({first})");
    }
    assert_eq!(ok(&https, &tls, &["whoami"]).trim(), "cert:spiffe://test.local/ns/a/sa/client");

    // Revoke the client certificate: refused from the next refresh on.
    ok(&unix, &[], &["cert", "revoke", "--serial", &client_serial, "--reason", "keyCompromise"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if !kmsctl(&https, &tls, &["whoami"]).status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "revoked client certificate still accepted after 20 s");
    }
    let (_, out) = s_client_with(&w, port, Some(("client.pem", "client.key")), true);
    assert!(out.contains("alert certificate revoked"), "{out}");
    sidecar.stop();
}
