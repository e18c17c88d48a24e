//! `kmsctl` against a started sidecar: keys, streaming file encryption with sidecar data
//! keys, rotation, a restart, rewrap, failures that leave no output file, secrets, exit
//! codes. The same walkthrough runs on the embedded SQLite keystore and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

mod common;
use common::{Sidecar, fails, ok};

fn no_partial_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".partial"), "leftover temp file {name}");
    }
}

#[test]
fn kmsctl_walkthrough_sqlite() {
    walkthrough(&[]);
}

#[test]
fn kmsctl_walkthrough_postgres() {
    let Some(pg) = common::PgSchema::new() else { return };
    walkthrough(&["--postgres", &pg.config]);
}

fn walkthrough(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut sidecar = Sidecar::start(&dir.path().join("data"), extra);
    let s = sidecar.socket.clone();
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let f = |n: &str| files.join(n).to_string_lossy().into_owned();

    let created: serde_json::Value =
        serde_json::from_str(&ok(&s, &["--json", "key", "create", "tenant-a/files"])).unwrap();
    assert_eq!(created["primary_version"], 1);
    assert!(fails(&s, &["key", "create", "tenant-a/files"]).contains("ALREADY_EXISTS"));

    // 3 MiB + 5 bytes: several segments, partial last.
    let data: Vec<u8> = (0..(3 << 20) + 5u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(f("plain.bin"), &data).unwrap();
    ok(
        &s,
        &[
            "encrypt",
            "--key",
            "tenant-a/files",
            "--context",
            "tenant=a",
            "--in",
            &f("plain.bin"),
            "--out",
            &f("v1.cce"),
        ],
    );
    ok(&s, &["decrypt", "--context", "tenant=a", "--in", &f("v1.cce"), "--out", &f("out1.bin")]);
    assert_eq!(std::fs::read(f("out1.bin")).unwrap(), data);

    // Wrong context and tampering: error, and no output file at all.
    let err = fails(&s, &["decrypt", "--context", "tenant=b", "--in", &f("v1.cce"), "--out", &f("bad1.bin")]);
    assert!(err.contains("header authentication"), "{err}");
    assert!(!files.join("bad1.bin").exists());
    let mut tampered = std::fs::read(f("v1.cce")).unwrap();
    let n = tampered.len();
    tampered[n - 100] ^= 1;
    std::fs::write(f("tampered.cce"), tampered).unwrap();
    fails(&s, &["decrypt", "--context", "tenant=a", "--in", &f("tampered.cce"), "--out", &f("bad2.bin")]);
    assert!(!files.join("bad2.bin").exists());
    no_partial_files(&files);

    // Rotate, restart the sidecar: the old file still decrypts; rewrap moves it to v2 with
    // the same body.
    let rotated = ok(&s, &["key", "rotate", "tenant-a/files"]);
    assert!(rotated.contains("primary=v2"), "{rotated}");
    sidecar.stop();
    sidecar = Sidecar::start(&dir.path().join("data"), extra);
    assert!(ok(&s, &["key", "describe", "tenant-a/files"]).contains("primary=v2"));
    ok(&s, &["decrypt", "--context", "tenant=a", "--in", &f("v1.cce"), "--out", &f("out1b.bin")]);
    assert_eq!(std::fs::read(f("out1b.bin")).unwrap(), data);
    ok(&s, &["rewrap", "--in", &f("v1.cce"), "--out", &f("v2.cce")]);
    let v1 = std::fs::read(f("v1.cce")).unwrap();
    let v2 = std::fs::read(f("v2.cce")).unwrap();
    let h1 = crypto_core::envelope::Header::parse(&v1).unwrap();
    let h2 = crypto_core::envelope::Header::parse(&v2).unwrap();
    assert_eq!((h1.0.key_version(), h2.0.key_version()), (1, 2));
    assert_eq!(&v1[h1.1..], &v2[h2.1..], "body unchanged");
    ok(&s, &["key", "set-min-decrypt-version", "tenant-a/files", "2"]);
    assert!(
        fails(&s, &["decrypt", "--context", "tenant=a", "--in", &f("v1.cce"), "--out", &f("old.bin")])
            .contains("minimum")
    );
    ok(&s, &["decrypt", "--context", "tenant=a", "--in", &f("v2.cce"), "--out", &f("out2.bin")]);
    assert_eq!(std::fs::read(f("out2.bin")).unwrap(), data);

    // Data keys and secrets.
    let dk: serde_json::Value =
        serde_json::from_str(&ok(&s, &["--json", "datakey", "--key", "tenant-a/files"])).unwrap();
    assert_eq!(dk["plaintext"].as_str().unwrap().len(), 64);
    assert_eq!(
        ok(&s, &["secret", "put", "db/password", "--key", "tenant-a/files", "--value", "hunter2"]).trim(),
        "version 1"
    );
    std::fs::write(f("secret.txt"), "s3cret").unwrap();
    ok(&s, &["secret", "put", "db/password", "--key", "tenant-a/files", "--from-file", &f("secret.txt")]);
    assert_eq!(ok(&s, &["secret", "get", "db/password"]).trim(), "s3cret");
    assert_eq!(ok(&s, &["secret", "get", "db/password", "--version", "1"]).trim(), "hunter2");
    assert!(ok(&s, &["secret", "list"]).contains("db/password\tv2"));
    ok(&s, &["secret", "delete", "db/password"]);
    assert!(fails(&s, &["secret", "get", "db/password"]).contains("NOT_FOUND"));

    // Keys listing, disable, unknown key, bad endpoint.
    assert!(ok(&s, &["key", "list"]).contains("tenant-a/files"));
    ok(&s, &["key", "disable", "tenant-a/files"]);
    assert!(
        fails(&s, &["decrypt", "--context", "tenant=a", "--in", &f("v2.cce"), "--out", &f("x.bin")])
            .contains("disabled")
    );
    assert!(fails(&s, &["key", "describe", "no/such"]).contains("NOT_FOUND"));
    let out =
        Command::new(env!("CARGO_BIN_EXE_kmsctl")).args(["--endpoint", "tcp://x", "key", "list"]).output().unwrap();
    assert!(!out.status.success());
    no_partial_files(&files);
    sidecar.stop();
}
