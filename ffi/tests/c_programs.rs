//! The C API from real C programs (`tests/c/*.c`), compiled with the system C compiler
//! against `include/cryptocore.h` and `libcryptocore.so`, run directly and under valgrind
//! (`--error-exitcode=1 --leak-check=full`, every leak kind an error), plus the Python
//! ctypes example. Interop both ways with the Rust API goes through files. The sidecar
//! program talks to a sidecar served by this test process on a Unix socket.
//!
//! A missing C compiler, valgrind or python3 is a loud skip, except under `CI=true`, where
//! it is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crypto_core::envelope::{EncryptionContext, Envelope};
use crypto_core::keys::Keyring;
use crypto_core::provider::LocalProvider;

/// The directory holding the libcryptocore.so built with this test: `deps/`, where this
/// test binary lives (`cargo test` builds the cdylib there; only `cargo build` copies it
/// up a level, so the copy there may be stale).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().to_path_buf();
    assert!(dir.join("libcryptocore.so").exists(), "libcryptocore.so not in {}", dir.display());
    dir
}

fn tool_available(tool: &str, what: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{tool} is required in CI ({what})");
        eprintln!("\n*** SKIPPED: {what}: `{tool}` not found ***\n");
    }
    found
}

/// Compiles `tests/c/NAME.c` into `out_dir`.
fn compile(name: &str, out_dir: &Path) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = lib_dir();
    let exe = out_dir.join(name);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-Wno-unused-function"])
        .arg(format!("-I{}", crate_dir.join("include").display()))
        .arg(crate_dir.join("tests/c").join(format!("{name}.c")))
        .arg(format!("-L{}", lib.display()))
        .arg("-lcryptocore")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(out.status.success(), "{cc} {name}.c failed:\n{}", String::from_utf8_lossy(&out.stderr));
    exe
}

/// Runs `exe args`, directly and then under valgrind (with `valgrind_args` instead of
/// `args` where given, for inputs sized for valgrind's speed).
fn run(exe: &Path, args: &[&str], valgrind_args: Option<&[&str]>, before_each: &dyn Fn()) {
    before_each();
    // Without cargo's LD_LIBRARY_PATH (it lists target/debug, where a stale copy of the
    // library may sit): the programs find the fresh one through their rpath.
    let out = Command::new(exe).args(args).env_remove("LD_LIBRARY_PATH").output().unwrap();
    assert!(
        out.status.success(),
        "{} failed:\n{}{}",
        exe.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !tool_available("valgrind", "the C tests under valgrind") {
        return;
    }
    before_each();
    let out = Command::new("valgrind")
        .env_remove("LD_LIBRARY_PATH")
        .args([
            "--error-exitcode=1",
            "--leak-check=full",
            "--show-leak-kinds=definite,indirect,possible",
            "--errors-for-leak-kinds=definite,indirect,possible",
            "--quiet",
        ])
        .arg(format!("--suppressions={}", Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/valgrind.supp").display()))
        .arg(exe)
        .args(valgrind_args.unwrap_or(args))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "valgrind {} reported errors or leaks:\n{}{}",
        exe.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ctx() -> EncryptionContext {
    [("tenant", "a"), ("purpose", "test")].into_iter().collect()
}

#[test]
fn c_programs_round_trip_stream_and_misuse_under_valgrind() {
    if !tool_available("cc", "the C API tests") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("keyring.json");
    let rust_ct = dir.path().join("from-rust.cce");
    let c_ct = dir.path().join("from-c.cce");

    // Each run of `roundtrip` rotates the key in the file: start every run from a keyring
    // made here with one version, and a message sealed by the Rust API under it.
    let fresh = || {
        let _ = std::fs::remove_file(&keyring);
        let ring = Arc::new(Keyring::open(&keyring).unwrap());
        ring.create_key("tenant-a/files").unwrap();
        let sealed = Envelope::new(LocalProvider::new(ring)).seal("tenant-a/files", &ctx(), b"sealed by the Rust API");
        std::fs::write(&rust_ct, sealed.unwrap()).unwrap();
    };
    let exe = compile("roundtrip", dir.path());
    let args = [keyring.to_str().unwrap(), rust_ct.to_str().unwrap(), c_ct.to_str().unwrap()];
    run(&exe, &args, None, &fresh);
    // What the C API sealed opens through the Rust API.
    let ring = Arc::new(Keyring::open(&keyring).unwrap());
    let opened = Envelope::new(LocalProvider::new(ring)).open(&ctx(), &std::fs::read(&c_ct).unwrap()).unwrap();
    assert_eq!(opened, b"sealed by the C API");

    // 64 MiB directly; 4 MiB under valgrind (tens of times slower).
    run(&compile("streaming", dir.path()), &["64"], Some(&["4"]), &|| {});
    run(&compile("misuse", dir.path()), &[], None, &|| {});
}

#[test]
fn c_program_against_a_sidecar() {
    if !tool_available("cc", "the C API sidecar test") {
        return;
    }
    use kms_sidecar::audit::{AuditConfig, AuditKey, AuditLog};
    use kms_sidecar::keystore::SqliteStore;
    use kms_sidecar::kms::Kms;
    use kms_sidecar::root_key::LocalRootKey;
    use kms_sidecar::security::{Security, SecurityOptions};

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("keystore.db")).unwrap());
    let kms = Arc::new(Kms::new(store, LocalRootKey::load_or_create(dir.path().join("root.key"), true).unwrap()));
    kms.create_key("tenant-a/files").unwrap();
    let audit_key = AuditKey::load_or_create(&dir.path().join("audit.key"), [3u8; 32]).unwrap();
    let audit = AuditConfig { path: dir.path().join("audit/audit.log"), max_bytes: 0, fsync: false };
    let audit = Arc::new(AuditLog::open(audit, audit_key).unwrap());
    let options = SecurityOptions {
        policy_path: None,
        rate_limit: 0.0,
        rate_burst: 0.0,
        max_concurrent_requests: 64,
        request_timeout: Duration::from_secs(30),
        token_cache_ttl: Duration::from_secs(1),
    };
    let metrics = Arc::new(kms_sidecar::metrics::Metrics::new());
    let sec = Arc::new(Security::new(kms.clone(), options, audit, metrics).unwrap());
    let socket = dir.path().join("kms.sock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let path = socket.clone();
    rt.spawn(async move {
        let limits = kms_sidecar::grpc::Limits::default();
        kms_sidecar::server::serve_unix(kms, sec, &path, 0o600, limits, std::future::pending()).await.unwrap();
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "sidecar socket did not come up");
        std::thread::sleep(Duration::from_millis(10));
    }
    let endpoint = format!("unix://{}", socket.display());
    run(&compile("sidecar", dir.path()), &[&endpoint, "tenant-a/files"], None, &|| {});
}

#[test]
fn python_ctypes_example() {
    if !tool_available("python3", "the Python ctypes example") {
        return;
    }
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/roundtrip.py");
    let out = Command::new("python3")
        .arg(&example)
        .env("CRYPTOCORE_LIB", lib_dir().join("libcryptocore.so"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("python example: ok"), "{stdout}");
}

#[test]
fn pkg_config_file_points_at_the_header_and_the_library() {
    if !tool_available("pkg-config", "the pkg-config file check") {
        return;
    }
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("pkg-config")
        .args(["--cflags", "--libs", "cryptocore"])
        .env("PKG_CONFIG_PATH", crate_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let flags = String::from_utf8(out.stdout).unwrap();
    let include = flags.split_whitespace().find_map(|f| f.strip_prefix("-I")).unwrap();
    assert!(Path::new(include).join("cryptocore.h").exists(), "{flags}");
    assert!(flags.contains("-lcryptocore") && flags.contains("target/release"), "{flags}");
}
