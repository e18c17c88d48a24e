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
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let flags = ["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-Wno-unused-function"];
    compile_with(&cc, &flags, &format!("c/{name}.c"), out_dir)
}

/// Compiles `tests/SOURCE` with `compiler` and `flags` against the header and the library.
fn compile_with(compiler: &str, flags: &[&str], source: &str, out_dir: &Path) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = lib_dir();
    let name = Path::new(source).file_stem().unwrap().to_str().unwrap();
    let exe = out_dir.join(name);
    let cc = compiler;
    let out = Command::new(cc)
        .args(flags)
        .arg(format!("-I{}", crate_dir.join("include").display()))
        .arg(crate_dir.join("tests").join(source))
        .arg(format!("-L{}", lib.display()))
        .arg("-lcryptocore")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(out.status.success(), "{cc} {source} failed:\n{}", String::from_utf8_lossy(&out.stderr));
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

/// The expected C status of a published vector (`cryptocore.h`: invalid input 2,
/// authentication failure 3 — including a wrapped key that does not unwrap — other key
/// errors 4).
fn expected_status(v: &serde_json::Value) -> u32 {
    let error = v["expected_error"].as_str().unwrap_or("");
    match (v["result"].as_str().unwrap(), error) {
        ("valid", _) => 0,
        (_, "Malformed" | "UnsupportedVersion" | "UnsupportedSuite" | "UnsupportedForm") => 2,
        (_, "HeaderAuthentication" | "Truncated" | "TrailingData") => 3,
        (_, e) if e.starts_with("SegmentAuthentication") => 3,
        // Key errors: the vector's description says which; a blob that fails to unwrap
        // (flipped bit, wrong KEK, version swapped) is an authentication failure, a
        // destroyed version or a missing provider a key error.
        (_, "Key") => match v["name"].as_str().unwrap() {
            "key-version-destroyed" | "no-matching-provider" => 4,
            _ => 3,
        },
        (_, other) => panic!("vector {} has an unknown expected error {other}", v["name"]),
    }
}

fn hex_or_dash(b: &[u8]) -> String {
    if b.is_empty() { "-".into() } else { hex::encode(b) }
}

#[test]
fn c_program_opens_the_published_vectors() {
    if !tool_available("cc", "the C API vectors test") {
        return;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crypto-core/tests/vectors/envelope-v1.json");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut text = String::new();
    let vectors = doc["vectors"].as_array().unwrap();
    for v in vectors {
        text += &format!("vector {} {}\n", v["name"].as_str().unwrap(), expected_status(v));
        for k in v["keys"].as_array().unwrap() {
            text += &format!("key {} {}\n", k["provider_id"].as_str().unwrap(), k["name"].as_str().unwrap());
            let mut destroyed = Vec::new();
            for ver in k["versions"].as_array().unwrap() {
                let n = ver["version"].as_u64().unwrap();
                match ver["material"].as_str() {
                    Some(m) => text += &format!("ver {n} {m}\n"),
                    None => {
                        text += &format!("ver {n} destroyed\n");
                        destroyed.push(n);
                    }
                }
            }
            for n in destroyed {
                text += &format!("destroy {n}\n");
            }
        }
        for (k, val) in v["context"].as_object().unwrap() {
            text += &format!("ctx {} {}\n", hex_or_dash(k.as_bytes()), hex_or_dash(val.as_str().unwrap().as_bytes()));
        }
        text += &format!("ct {}\n", hex_or_dash(&hex::decode(v["ciphertext"].as_str().unwrap()).unwrap()));
        text += &format!("pt {}\nend\n", hex_or_dash(&hex::decode(v["plaintext"].as_str().unwrap()).unwrap()));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vectors.txt");
    std::fs::write(&file, text).unwrap();
    assert!(vectors.len() >= 40);
    run(&compile("vectors", dir.path()), &[file.to_str().unwrap()], None, &|| {});
}

/// The header as C++17 and as strict C99, both with warnings as errors: C++ services
/// include it directly. The C++ program links and runs a round trip.
#[test]
fn header_compiles_as_cpp17_and_c99() {
    if !tool_available("c++", "the C++ header check") || !tool_available("cc", "the C99 header check") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let exe =
        compile_with(&cxx, &["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic"], "cpp/smoke.cpp", dir.path());
    run(&exe, &[], None, &|| {});
    // Strict C99: the header only (a translation unit that includes it and uses a type).
    let unit = dir.path().join("c99.c");
    std::fs::write(
        &unit,
        "#include \"cryptocore.h\"\nint main(void) { cryptocore_buffer b = {0}; (void)b; return 0; }\n",
    )
    .unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-fsyntax-only"])
        .arg(format!("-I{}", Path::new(env!("CARGO_MANIFEST_DIR")).join("include").display()))
        .arg(&unit)
        .output()
        .unwrap();
    assert!(out.status.success(), "the header is not strict C99:\n{}", String::from_utf8_lossy(&out.stderr));
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

/// The Go (cgo) example, when a Go toolchain is installed (it is not one of the
/// components CI provides: without `go` this test says so and passes, also in CI).
#[test]
fn go_cgo_example() {
    let found = Command::new("go").arg("version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("\n*** SKIPPED: the Go (cgo) example: `go` not found (apt-get install golang-go) ***\n");
        return;
    }
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = lib_dir();
    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new("go")
        .args(["run", "."])
        .current_dir(crate_dir.join("examples/go"))
        .env("CGO_ENABLED", "1")
        .env("CGO_CFLAGS", format!("-I{}", crate_dir.join("include").display()))
        .env("CGO_LDFLAGS", format!("-L{0} -Wl,-rpath,{0}", lib.display()))
        // Offline and self-contained: no module downloads, caches in a temp dir.
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .env("GOCACHE", scratch.path().join("cache"))
        .env("GOPATH", scratch.path().join("gopath"))
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "go run failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("go example") && stdout.contains(": ok"), "{stdout}");
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
