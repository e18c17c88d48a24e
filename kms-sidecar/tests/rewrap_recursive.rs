//! `kmsctl rewrap --recursive DIR` against a real sidecar: every envelope file under the
//! tree moves to the key's primary version in place, header only, atomically per file;
//! other files are left alone; a rerun finds nothing to do; leftovers of an interrupted
//! run are cleaned up; a bad file is reported without stopping the rest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crypto_core::envelope::Header;
use serde_json::Value;

mod common;

const KEY: &str = "tenant-a/files";

fn header_of(path: &Path) -> (Header, usize, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let (header, len) = Header::parse(&bytes).unwrap();
    (header, len, bytes)
}

fn rewrap_json(socket: &Path, dir: &Path) -> (bool, Value) {
    let out = common::kmsctl(socket, &["--json", "rewrap", "--recursive", dir.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    (out.status.success(), serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}")))
}

#[test]
fn recursive_rewrap_moves_every_envelope_to_the_primary_version() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = common::Sidecar::start(&dir.path().join("data"), &[]);
    let s = &sidecar.socket;
    common::ok(s, &["key", "create", KEY]);

    // A tree: envelopes at several depths (one multi-segment, one empty plaintext), files
    // that are not envelopes, and a symbolic link that must not be followed.
    let tree = dir.path().join("tree");
    let mut envelopes: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for (i, rel) in ["a.cce", "sub/b.cce", "sub/deeper/c.cce", "sub/deeper/empty.cce"].iter().enumerate() {
        let out = tree.join(rel);
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let plain = if rel.contains("empty") { Vec::new() } else { vec![i as u8; 100_000 * (i + 1)] };
        let input = dir.path().join(format!("plain{i}"));
        std::fs::write(&input, &plain).unwrap();
        common::ok(
            s,
            &[
                "encrypt",
                "--key",
                KEY,
                "--context",
                "tenant=a",
                "--in",
                input.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
        envelopes.push((out, plain));
    }
    std::fs::set_permissions(&envelopes[0].0, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::write(tree.join("README.txt"), b"not an envelope").unwrap();
    std::fs::write(tree.join("sub/tiny"), b"CC").unwrap();
    std::os::unix::fs::symlink(&envelopes[0].0, tree.join("link.cce")).unwrap();
    let before: Vec<_> = envelopes.iter().map(|(p, _)| header_of(p)).collect();
    assert!(before.iter().all(|(h, _, _)| h.key_version() == 1));

    // Nothing to do before a rotation.
    let (ok, summary) = rewrap_json(s, &tree);
    assert!(ok, "{summary}");
    assert_eq!((summary["rewrapped"].as_u64(), summary["current"].as_u64()), (Some(0), Some(4)), "{summary}");
    assert_eq!(summary["not_envelopes"], 2, "{summary}");

    common::ok(s, &["key", "rotate", KEY]);
    // A leftover of an interrupted run (its process long gone) is removed.
    let stale = tree.join("sub/.b.cce.kmsctl-rewrap-4194999.partial");
    std::fs::write(&stale, b"half a file").unwrap();
    let (ok, summary) = rewrap_json(s, &tree);
    assert!(ok, "{summary}");
    assert_eq!(summary["rewrapped"], 4, "{summary}");
    assert_eq!(summary["stale_partials_removed"], 1, "{summary}");
    assert!(!stale.exists());

    for ((path, plain), (old_header, old_len, old_bytes)) in envelopes.iter().zip(&before) {
        let (header, len, bytes) = header_of(path);
        assert_eq!((header.key_name(), header.key_version()), (KEY, 2), "{}", path.display());
        // Header only: the body bytes are exactly the old ones.
        assert_eq!(bytes[len..], old_bytes[*old_len..], "body of {} changed", path.display());
        assert_ne!(header.wrapped_keys(), old_header.wrapped_keys());
        let out = dir.path().join("opened");
        common::ok(
            s,
            &["decrypt", "--context", "tenant=a", "--in", path.to_str().unwrap(), "--out", out.to_str().unwrap()],
        );
        assert_eq!(&std::fs::read(&out).unwrap(), plain);
    }
    let mode = std::fs::metadata(&envelopes[0].0).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "permissions kept");
    assert_eq!(std::fs::read(tree.join("README.txt")).unwrap(), b"not an envelope");
    assert!(std::fs::symlink_metadata(tree.join("link.cce")).unwrap().file_type().is_symlink());
    let leftovers: Vec<_> = walk(&tree).into_iter().filter(|p| p.to_string_lossy().ends_with(".partial")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A rerun finds everything current.
    let (ok, summary) = rewrap_json(s, &tree);
    assert!(ok);
    assert_eq!((summary["rewrapped"].as_u64(), summary["current"].as_u64()), (Some(0), Some(4)), "{summary}");

    // A damaged envelope is reported (exit status non-zero) and the others still move.
    common::ok(s, &["key", "rotate", KEY]);
    let mut damaged = std::fs::read(&envelopes[1].0).unwrap();
    damaged.truncate(30);
    std::fs::write(tree.join("sub/damaged.cce"), &damaged).unwrap();
    let (ok, summary) = rewrap_json(s, &tree);
    assert!(!ok);
    assert_eq!(summary["rewrapped"], 4, "{summary}");
    let failed = summary["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{summary}");
    assert!(failed[0]["path"].as_str().unwrap().ends_with("damaged.cce"));
    assert_eq!(std::fs::read(tree.join("sub/damaged.cce")).unwrap(), damaged, "a failed file is left as it was");
    assert!(envelopes.iter().all(|(p, _)| header_of(p).0.key_version() == 3));

    // Wrong arguments fail.
    assert!(!common::kmsctl(s, &["rewrap"]).status.success());
    let not_a_dir = common::fails(s, &["rewrap", "--recursive", envelopes[0].0.to_str().unwrap()]);
    assert!(not_a_dir.contains("not a directory"), "{not_a_dir}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
