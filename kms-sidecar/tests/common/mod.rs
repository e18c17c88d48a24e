//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running `kms-sidecar serve` process.
pub(crate) struct Sidecar {
    child: Child,
    /// Its socket.
    pub(crate) socket: PathBuf,
}

impl Sidecar {
    pub(crate) fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// [`Sidecar::start`] with extra environment variables.
    pub(crate) fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let socket = data_dir.join("kms.sock");
        let log = std::fs::File::create(data_dir.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kms-sidecar"))
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--max-request-bytes", "65536"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        // Wait until the socket accepts connections (a stale file from a killed run may
        // exist before the new process replaces it).
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "sidecar did not accept connections within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, socket }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub(crate) fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub(crate) fn stop(mut self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "sidecar exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "sidecar did not stop within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!self.socket.exists(), "socket file removed on shutdown");
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh schema on the test server, dropped at the end; None (with a loud notice) when
/// the server is unreachable outside CI.
pub(crate) struct PgSchema {
    admin: Option<postgres::Client>,
    schema: String,
    /// Connection string selecting the fresh schema.
    pub(crate) config: String,
}

impl PgSchema {
    pub(crate) fn new() -> Option<Self> {
        let base = std::env::var("KMS_TEST_POSTGRES")
            .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5".into());
        let mut admin = match postgres::Client::connect(&base, postgres::NoTls) {
            Ok(c) => c,
            Err(e) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("PostgreSQL required in CI but not reachable at {base:?}: {e}");
                }
                eprintln!("\n*** SKIPPED: PostgreSQL keystore tests: server not reachable at {base:?}: {e} ***\n");
                return None;
            }
        };
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let schema = format!("kms_test_{}_{}", std::process::id(), nanos);
        admin.batch_execute(&format!("CREATE SCHEMA {schema}")).unwrap();
        let config = format!("{base} options='-c search_path={schema}'");
        Some(Self { admin: Some(admin), schema, config })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Some(mut admin) = self.admin.take() {
            let _ = admin.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema));
        }
    }
}

/// Runs `kmsctl --endpoint ENDPOINT EXTRA… ARGS…`.
pub(crate) fn kmsctl_at(endpoint: &str, extra: &[&str], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kmsctl")).args(["--endpoint", endpoint]).args(extra).args(args).output().unwrap()
}

/// `kmsctl_at` that must succeed; its standard output.
pub(crate) fn ok_at(endpoint: &str, extra: &[&str], args: &[&str]) -> String {
    let out = kmsctl_at(endpoint, extra, args);
    assert!(out.status.success(), "kmsctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs kmsctl against the sidecar's Unix socket.
pub(crate) fn kmsctl(socket: &Path, args: &[&str]) -> Output {
    kmsctl_at(&format!("unix://{}", socket.display()), &[], args)
}

/// `kmsctl` that must succeed; its standard output.
pub(crate) fn ok(socket: &Path, args: &[&str]) -> String {
    ok_at(&format!("unix://{}", socket.display()), &[], args)
}

/// `kmsctl` that must fail with a one-line error; that line.
pub(crate) fn fails(socket: &Path, args: &[&str]) -> String {
    let out = kmsctl(socket, args);
    assert!(!out.status.success(), "kmsctl {args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "one-line error, got {err:?}");
    err
}

/// Whether the `openssl` CLI (the independent judge of the CA tests) is here. Under
/// `CI=true` its absence is a failure; elsewhere a loud skip of `what`.
pub(crate) fn openssl_available(what: &str) -> bool {
    let ok = Command::new("openssl").arg("version").output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "openssl is required in CI but was not found");
        eprintln!("\n*** SKIPPED: {what}: `openssl` not found on PATH ***\n");
    }
    ok
}

/// Runs openssl in `dir`; (success, stdout + stderr).
pub(crate) fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The uid the tests run as.
pub(crate) fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// Writes `policy.toml` in `dir`: the test's own Unix user may do everything (role
/// `owner`), plus `extra` (more roles and bindings). Returns its path.
pub(crate) fn policy_file(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("policy.toml");
    let text = format!(
        "[roles.owner]\ngrants = [{{ operations = [\"*\", \"pki-admin\", \"audit-read\", \"password\"], keys = [\"**\"], \
         secrets = [\"**\"], names = [\"**\"], tokens = [\"**\"] }}]\n\
         [[bindings]]\nprincipals = [\"unix:uid={}\"]\nroles = [\"owner\"]\n{extra}",
        my_uid()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A loopback TCP port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
