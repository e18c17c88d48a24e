//! `kmsctl`: command-line client of the KMS sidecar.
//!
//! The endpoint comes from `--endpoint` or `KMS_ENDPOINT` (`unix:///path/kms.sock`;
//! default `unix://./kms-data/kms.sock`). `encrypt`/`decrypt` seal and open files locally in
//! the crypto-core envelope format with data keys from the sidecar, streaming any size in
//! constant memory; the output appears only when complete (temporary file, mode 0600,
//! renamed on success), so a failed decrypt leaves no output file. Every command exits
//! non-zero with a one-line error on failure; `--json` prints machine-readable output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use crypto_core::envelope::{EncryptionContext, Envelope, rewrap_stream_with};
use kms_sidecar::client::{SidecarClient, SidecarProvider, TlsOptions};
use kms_sidecar::grpc::pb;
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(Parser)]
#[command(name = "kmsctl", version, about = "Client of the KMS sidecar")]
struct Cli {
    /// Sidecar endpoint (unix:///path/kms.sock or https://HOST:PORT).
    #[arg(long, env = "KMS_ENDPOINT", default_value = "unix://./kms-data/kms.sock", global = true)]
    endpoint: String,
    /// CA certificate (PEM) of the sidecar, for https:// endpoints.
    #[arg(long, env = "KMS_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, env = "KMS_CLIENT_CERT", global = true)]
    client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mTLS.
    #[arg(long, env = "KMS_CLIENT_KEY", global = true)]
    client_key: Option<PathBuf>,
    /// File holding an API token (sent as `authorization: Bearer`); or set KMS_TOKEN.
    /// (No --token flag: a token on the command line is visible to every user in `ps`.)
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Key administration.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Encrypt a file (envelope format, data key from the sidecar).
    Encrypt {
        /// Key to encrypt under.
        #[arg(long)]
        key: String,
        /// Encryption context entry (repeatable).
        #[arg(long = "context", value_name = "K=V")]
        context: Vec<String>,
        /// Input file.
        #[arg(long = "in")]
        input: PathBuf,
        /// Output file (written atomically).
        #[arg(long = "out")]
        output: PathBuf,
    },
    /// Decrypt a file from `encrypt`.
    Decrypt {
        /// Encryption context entry (repeatable), as at encryption.
        #[arg(long = "context", value_name = "K=V")]
        context: Vec<String>,
        /// Input file.
        #[arg(long = "in")]
        input: PathBuf,
        /// Output file (written only if the whole input authenticates).
        #[arg(long = "out")]
        output: PathBuf,
    },
    /// Re-wrap a file's data key under its key's primary version (body unchanged), or with
    /// `--recursive DIR` every envelope file under DIR in place.
    Rewrap {
        /// Input file.
        #[arg(long = "in", required_unless_present = "recursive", requires = "output")]
        input: Option<PathBuf>,
        /// Output file.
        #[arg(long = "out", requires = "input")]
        output: Option<PathBuf>,
        /// Rewrap every envelope file under this directory in place: atomically per file
        /// (a temporary file renamed over the original), header only, files already at
        /// their key's primary version left alone. Safe to interrupt and run again.
        #[arg(long, conflicts_with_all = ["input", "output"])]
        recursive: Option<PathBuf>,
    },
    /// Generate a data key (prints the plaintext and wrapped forms, hex).
    Datakey {
        /// Key to wrap it under.
        #[arg(long)]
        key: String,
    },
    /// Versioned secrets.
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Print the identity the sidecar sees for this client.
    Whoami,
    /// The sidecar's certificate authority.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Certificates: issue, sign CSRs, revoke, list, verify.
    #[command(subcommand)]
    Cert(CertCmd),
    /// API tokens: create (shown once), list, revoke.
    #[command(subcommand)]
    Token(TokenCmd),
    /// The audit log: verify its hash chain offline, print the sidecar's chain head.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Password hashing (argon2id) through the sidecar; the password is read from stdin.
    #[command(subcommand)]
    Password(PasswordCmd),
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token for principal token:NAME; prints the token (once) on stdout.
    Create {
        /// Token name (1 to 64 of A-Z a-z 0-9 . _ -).
        name: String,
        /// Lifetime (e.g. 30d, 12h); none = no expiry.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List tokens (ids, names, times; never token text).
    List,
    /// Revoke a token by id, or every token of a name.
    Revoke {
        /// Token id or name.
        id_or_name: String,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verify audit files (any order; a directory means every audit.log* in it): reports
    /// the first edited, deleted, inserted, reordered or truncated record. Exit 0 = intact.
    Verify {
        /// Audit files or directories.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The chain's MAC key [default: ./kms-data/audit.key].
        #[arg(long, env = "KMS_AUDIT_KEY_FILE", default_value = "./kms-data/audit.key")]
        key_file: PathBuf,
        /// The head the log must reach (SEQ:MAC from `kmsctl audit head`): detects a
        /// truncated tail.
        #[arg(long)]
        head: Option<String>,
        /// Accept a log whose earliest records were archived (does not start at seq 1).
        #[arg(long)]
        partial: bool,
    },
    /// Print the sidecar's current chain head (SEQ:MAC).
    Head,
}

#[derive(Subcommand)]
enum PasswordCmd {
    /// Hash the password on stdin; prints the PHC string.
    Hash,
    /// Check the password on stdin against a PHC string; exit 0 if it matches, 1 if not.
    Verify {
        /// The stored PHC string.
        #[arg(long)]
        hash: String,
    },
}

/// Reads a password from stdin: the first line, without its line ending.
fn read_password() -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let mut buf = zeroize::Zeroizing::new(Vec::new());
    std::io::stdin().read_to_end(&mut buf)?;
    let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let mut line = zeroize::Zeroizing::new(buf[..end].to_vec());
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(line)
}

fn token_json(t: &pb::TokenInfo) -> Value {
    json!({"id": t.id, "name": t.name, "created_at": t.created_at_unix,
           "expires_at": (t.expires_at_unix != 0).then_some(t.expires_at_unix),
           "revoked_at": (t.revoked_at_unix != 0).then_some(t.revoked_at_unix)})
}

fn print_tokens(tokens: &[pb::TokenInfo], j: bool) {
    if j {
        println!("{}", Value::Array(tokens.iter().map(token_json).collect()));
        return;
    }
    for t in tokens {
        let mut line = format!("{}  {}", t.id, t.name);
        if t.expires_at_unix != 0 {
            line.push_str(&format!("  expires_at={}", t.expires_at_unix));
        }
        if t.revoked_at_unix != 0 {
            line.push_str(&format!("  revoked_at={}", t.revoked_at_unix));
        }
        println!("{line}");
    }
}

/// `kmsctl audit verify`: offline, with the key file.
fn audit_verify(files: &[PathBuf], key_file: &Path, head: Option<&str>, partial: bool, j: bool) -> Result<()> {
    use kms_sidecar::audit::{AuditHead, AuditKey, VerifyOptions, verify};
    let mut paths = Vec::new();
    for f in files {
        if f.is_dir() {
            for entry in fs::read_dir(f)? {
                let p = entry?.path();
                if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("audit.log")) {
                    paths.push(p);
                }
            }
        } else {
            paths.push(f.clone());
        }
    }
    if paths.is_empty() {
        return Err("no audit files found".into());
    }
    let expected_head = match head {
        None => None,
        Some(h) => Some(h.parse::<AuditHead>().map_err(|_| format!("--head {h:?}: expected SEQ:MAC (64 hex)"))?),
    };
    let key = AuditKey::load(key_file)?;
    let report = verify(&paths, &key, &VerifyOptions { partial, expected_head })?;
    if j {
        println!(
            "{}",
            json!({"records": report.records, "first_seq": report.first_seq, "last_seq": report.last_seq,
                   "head": report.head.map(|h| h.to_string()), "files": report.files.len(),
                   "ends_with_stop": report.ends_with_stop,
                   "problem": report.problem.as_ref().map(|p| json!({"file": p.file, "line": p.line,
                       "kind": format!("{:?}", p.kind), "message": p.message}))})
        );
    } else if report.problem.is_none() {
        println!(
            "OK: {} records (seq {}..{}) in {} files, head {}",
            report.records,
            report.first_seq,
            report.last_seq,
            report.files.len(),
            report.head.map(|h| h.to_string()).unwrap_or_default()
        );
        if !report.ends_with_stop {
            eprintln!(
                "note: the log does not end with a sidecar.stop record: the sidecar is running, crashed, or the \
                 tail was cut (pass --head from `kmsctl audit head` to tell)"
            );
        }
    }
    match report.problem {
        None => Ok(()),
        Some(p) => Err(format!("TAMPERED: {}:{}: {:?}: {}", p.file.display(), p.line, p.kind, p.message).into()),
    }
}

#[derive(Subcommand)]
enum CaCmd {
    /// Create the CA (once per keystore).
    Init {
        /// Common name of the CA.
        #[arg(long, default_value = "KMS Sidecar CA")]
        cn: String,
        /// Key type: rsa2048, rsa3072, rsa4096, p256, p384, ed25519.
        #[arg(long, default_value = "rsa2048")]
        key_type: String,
        /// Lifetime (e.g. 3650d).
        #[arg(long, default_value = "3650d")]
        ttl: String,
        /// DNS names CSRs may obtain (exact or `*.suffix`; repeatable).
        #[arg(long = "allow-dns")]
        allow_dns: Vec<String>,
        /// IP networks CSRs may obtain (ADDRESS/PREFIX; repeatable).
        #[arg(long = "allow-ip")]
        allow_ip: Vec<String>,
        /// URI prefixes CSRs may obtain (repeatable).
        #[arg(long = "allow-uri-prefix")]
        allow_uri: Vec<String>,
    },
    /// Write the CA bundle (what clients must trust), PEM.
    Bundle {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a freshly signed CRL, PEM.
    Crl {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// Issue a certificate with a key generated by the sidecar.
    Issue {
        /// Subject common name.
        #[arg(long)]
        cn: String,
        /// Subject alternative name: dns:NAME, ip:ADDRESS or uri:URI (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Key type: rsa2048, rsa3072, rsa4096, p256, p384, ed25519.
        #[arg(long, default_value = "rsa2048")]
        key_type: String,
        /// Lifetime (e.g. 30d, 12h).
        #[arg(long, default_value = "30d")]
        ttl: String,
        /// server, client or both.
        #[arg(long, default_value = "server")]
        usage: String,
        /// Certificate chain output (PEM).
        #[arg(long)]
        out_cert: PathBuf,
        /// Private key output (PKCS#8 PEM, mode 0600).
        #[arg(long)]
        out_key: PathBuf,
    },
    /// Sign a CSR under the CA's name policy.
    SignCsr {
        /// The CSR (PEM or DER).
        #[arg(long)]
        csr: PathBuf,
        /// Lifetime (e.g. 30d).
        #[arg(long, default_value = "30d")]
        ttl: String,
        /// server, client or both.
        #[arg(long, default_value = "server")]
        usage: String,
        /// Certificate chain output (PEM).
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke a certificate.
    Revoke {
        /// Serial as `openssl x509 -serial` prints it (any case, colons allowed).
        #[arg(long)]
        serial: String,
        /// RFC 5280 reason: keyCompromise, superseded, cessationOfOperation, ...
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// List issued certificates.
    List,
    /// Verify a certificate (chain PEM) against a bundle, optionally with a CRL; offline.
    Verify {
        /// Trusted bundle (PEM).
        #[arg(long)]
        bundle: PathBuf,
        /// CRL to check revocation against (PEM).
        #[arg(long)]
        crl: Option<PathBuf>,
        /// server, client or both (EKU to require); none checked when absent.
        #[arg(long)]
        usage: Option<String>,
        /// The certificate (PEM chain or DER).
        cert: PathBuf,
    },
}

fn ttl_seconds(text: &str) -> Result<u64> {
    Ok(kms_sidecar::config::parse_duration(text).map_err(|e| format!("--ttl: {e}"))?.as_secs())
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    Ok(fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?)
}

fn print_cert_info(j: bool, c: &pb::CertificateInfo) {
    if j {
        println!(
            "{}",
            json!({"serial": c.serial, "common_name": c.common_name, "sans": c.sans, "not_after": c.not_after_unix,
                   "issued_at": c.issued_at_unix, "revoked_at": c.revoked_at_unix, "revoke_reason": c.revoke_reason})
        );
    } else {
        let revoked = if c.revoked_at_unix > 0 { format!("\trevoked={}", c.revoke_reason) } else { String::new() };
        println!(
            "{}\tcn={}\tsans={}\tnot_after={}{revoked}",
            c.serial,
            c.common_name,
            c.sans.join(","),
            c.not_after_unix
        );
    }
}

/// `cert verify`: needs no sidecar.
fn verify_offline(bundle: &Path, crl: Option<&Path>, usage: Option<&str>, cert: &Path, j: bool) -> Result<()> {
    use crypto_core::pki::Usage;
    let usage = match usage {
        None => None,
        Some("server") => Some(Usage::Server),
        Some("client") => Some(Usage::Client),
        Some("both") => Some(Usage::ServerAndClient),
        Some(other) => return Err(format!("--usage {other:?}: use server, client or both").into()),
    };
    let cert_bytes = read_file(cert)?;
    let crls = match crl {
        Some(p) => vec![read_file(p)?],
        None => Vec::new(),
    };
    // Trust only the bundle's self-signed roots; its other certificates are intermediates,
    // checked like any other (validity, constraints, revocation).
    let crypto_core::pki::Bundle { anchors, mut intermediates } =
        crypto_core::pki::split_bundle(&read_file(bundle)?).map_err(|e| format!("{}: {e}", bundle.display()))?;
    intermediates.push(cert_bytes.clone());
    let chain = crypto_core::pki::verify_chain(
        &cert_bytes,
        &intermediates,
        &anchors,
        &crls,
        usage,
        std::time::SystemTime::now(),
    )
    .map_err(|e| format!("{}: verification failed: {e}", cert.display()))?;
    if j {
        println!("{}", json!({"ok": true, "chain_length": chain.certificates.len()}));
    } else {
        println!("{}: OK (chain of {})", cert.display(), chain.certificates.len());
    }
    Ok(())
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create a key.
    Create { name: String },
    /// Describe a key.
    Describe { name: String },
    /// List keys.
    List,
    /// Add a new primary version.
    Rotate { name: String },
    /// Enable a disabled key.
    Enable { name: String },
    /// Disable a key.
    Disable { name: String },
    /// Schedule destruction after a waiting period of 7 to 30 days (cancellable until
    /// then; afterwards every version's material is erased: crypto-shredding).
    ScheduleDeletion {
        name: String,
        /// Waiting period, e.g. 7d, 30d [default: 30d].
        #[arg(long, value_parser = parse_period)]
        window: Option<std::time::Duration>,
    },
    /// Rotate automatically once the primary version is PERIOD old (e.g. 90d, 12h), or
    /// `off` to rotate only by hand.
    RotationPeriod {
        name: String,
        /// 1h to 36500d, or `off`.
        period: String,
    },
    /// Cancel a scheduled deletion (the key becomes disabled).
    CancelDeletion { name: String },
    /// Set the lowest version allowed to decrypt.
    SetMinDecryptVersion { name: String, version: u32 },
}

#[derive(Subcommand)]
enum SecretCmd {
    /// Store a new version.
    Put {
        name: String,
        /// Key to seal it under.
        #[arg(long)]
        key: String,
        /// The value.
        #[arg(long, conflicts_with = "from_file")]
        value: Option<String>,
        /// Read the value from a file.
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// Print the newest (or a given) version.
    Get {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// List secrets.
    List,
    /// Delete every version.
    Delete { name: String },
}

fn context(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("--context {kv:?}: expected K=V").into())
        })
        .collect()
}

/// A period such as `30d` or `12h` (the sidecar's duration syntax).
fn parse_period(text: &str) -> std::result::Result<std::time::Duration, String> {
    kms_sidecar::config::parse_duration(text)
}

fn state_name(state: i32) -> &'static str {
    match pb::KeyState::try_from(state) {
        Ok(pb::KeyState::Enabled) => "enabled",
        Ok(pb::KeyState::Disabled) => "disabled",
        Ok(pb::KeyState::PendingDeletion) => "pending_deletion",
        Ok(pb::KeyState::Destroyed) => "destroyed",
        _ => "unknown",
    }
}

fn key_json(k: &pb::KeyMetadata) -> Value {
    json!({
        "name": k.name, "state": state_name(k.state), "primary_version": k.primary_version,
        "min_decrypt_version": k.min_decrypt_version, "created_at": k.created_at_unix,
        "delete_after": k.delete_after_unix, "rotation_period": k.rotation_period_seconds,
        "next_rotation": k.next_rotation_unix, "versions": k.versions.iter().map(|v| json!({
            "version": v.version, "created_at": v.created_at_unix, "destroyed_at": v.destroyed_at_unix})).collect::<Vec<_>>(),
    })
}

fn print_key(json_out: bool, k: &pb::KeyMetadata) {
    if json_out {
        println!("{}", key_json(k));
    } else {
        println!(
            "{}\tstate={}\tprimary=v{}\tmin_decrypt=v{}\tversions={}",
            k.name,
            state_name(k.state),
            k.primary_version,
            k.min_decrypt_version,
            k.versions.len()
        );
    }
}

/// Opens `path` for reading, counted by a progress bar on standard error when that is a
/// terminal (and output is not JSON); a hidden bar otherwise.
fn open_with_progress(
    path: &Path,
    verb: &'static str,
    json: bool,
) -> Result<(indicatif::ProgressBarIter<File>, indicatif::ProgressBar)> {
    use std::io::IsTerminal;
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = if !json && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(len);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(verb);
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    Ok((bar.wrap_read(file), bar))
}

/// Writes through `f` into a 0600 temporary file beside `out`, renamed over `out` only on
/// success; removed on failure.
fn write_atomically(out: &Path, f: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<()> {
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(format!(".{name}.{}-{nanos}.partial", std::process::id()));
    let result = (|| {
        let file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        f(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, out)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// What `rewrap --recursive` did.
#[derive(Default)]
struct RewrapSummary {
    rewrapped: u64,
    current: u64,
    not_envelopes: u64,
    not_ours: u64,
    stale_partials_removed: u64,
    failed: Vec<(PathBuf, String)>,
}

impl RewrapSummary {
    fn line(&self) -> String {
        format!(
            "rewrapped {}, already current {}, not envelopes {}, no data key of this sidecar {}, failed {}{}",
            self.rewrapped,
            self.current,
            self.not_envelopes,
            self.not_ours,
            self.failed.len(),
            if self.stale_partials_removed > 0 {
                format!(" (removed {} leftover partial files of an interrupted run)", self.stale_partials_removed)
            } else {
                String::new()
            }
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "rewrapped": self.rewrapped, "current": self.current, "not_envelopes": self.not_envelopes,
            "not_ours": self.not_ours, "stale_partials_removed": self.stale_partials_removed,
            "failed": self.failed.iter().map(|(p, e)| json!({"path": p, "error": e})).collect::<Vec<_>>(),
        })
    }
}

/// Suffix of the temporary files `rewrap --recursive` writes: `.NAME.kmsctl-rewrap-PID.partial`.
const REWRAP_PARTIAL: &str = ".kmsctl-rewrap-";

/// Regular files under `dir` (symbolic links are not followed), sorted, and leftover
/// temporary files of interrupted runs whose process is gone.
fn walk(dir: &Path, files: &mut Vec<PathBuf>, stale: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| format!("{}: {e}", path.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if kind.is_dir() {
            walk(&path, files, stale)?;
        } else if kind.is_file() {
            if let Some(pid) = name
                .strip_suffix(".partial")
                .and_then(|n| n.rsplit_once(REWRAP_PARTIAL))
                .and_then(|(_, pid)| pid.parse::<u32>().ok())
            {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    stale.push(path);
                }
                continue;
            }
            files.push(path);
        }
    }
    Ok(())
}

/// What `rewrap --recursive` did with one file.
enum Rewrapped {
    /// Not a crypto-core envelope: left alone.
    NotEnvelope,
    /// An envelope without a data key wrapped by this sidecar: left alone.
    NotOurs,
    /// Every sidecar entry is at its key's primary version already.
    Current,
    /// Rewritten with the new header.
    Done,
}

/// Rewraps one file in place.
fn rewrap_file(provider: &SidecarProvider, path: &Path) -> Result<Rewrapped> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path)?;
    let before = file.metadata()?;
    // `walk` does not follow symbolic links; a path replaced by one (or by anything else)
    // since is refused: the file opened must be the regular file the path names.
    same_file_at(path, &before)?;
    let mut head = Vec::new();
    (&mut file).take(70 * 1024).read_to_end(&mut head)?;
    if !head.starts_with(&crypto_core::envelope::MAGIC) {
        return Ok(Rewrapped::NotEnvelope);
    }
    let (header, _) = crypto_core::envelope::Header::parse(&head)?;
    let old = header.wrapped_keys();
    if !old.iter().any(|w| w.provider_id == kms_sidecar::kms::PROVIDER_ID) {
        return Ok(Rewrapped::NotOurs);
    }
    // The sidecar re-wraps without the data key leaving it; a file whose entries come back
    // at the same versions is already current and is not rewritten.
    let new = provider.rewrap(old)?;
    if new.iter().zip(old).all(|(n, o)| n.key_version == o.key_version) {
        return Ok(Rewrapped::Current);
    }
    file.seek(SeekFrom::Start(0))?;
    replace_wrapped_keys(file, &before, path, old, new)?;
    Ok(Rewrapped::Done)
}

/// Fails unless `path` names, without following a symbolic link, the file `opened` is the
/// metadata of.
fn same_file_at(path: &Path, opened: &fs::Metadata) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let named = fs::symlink_metadata(path)?;
    if !opened.is_file() || !named.is_file() || (named.dev(), named.ino()) != (opened.dev(), opened.ino()) {
        return Err("not a regular file, or replaced while it was opened; left as it is".into());
    }
    Ok(())
}

/// Rewrites the envelope `file` (open on `path`, read from its start, with metadata
/// `before`) with the wrapped keys `new` in place of `old` (body unchanged) through a
/// temporary file renamed over `path`, keeping the original's owner and permissions.
/// Refused, and nothing changed, when the file no longer holds `old` (rewritten since its
/// header was read: `new` would pair another message's data key with this body) or was
/// changed or replaced during the copy.
fn replace_wrapped_keys(
    file: File,
    before: &fs::Metadata,
    path: &Path,
    old: &[crypto_core::provider::WrappedKey],
    new: Vec<crypto_core::provider::WrappedKey>,
) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let changed = || -> Box<dyn std::error::Error> { "the file changed during the rewrap; left as it was".into() };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).ok_or("file name is not UTF-8")?;
    let tmp = dir.join(format!(".{name}{REWRAP_PARTIAL}{}.partial", std::process::id()));
    let result = (|| -> Result<()> {
        let out = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        // The same owner as the original: a file rewritten by root must stay readable by the
        // application that owns it. Before the mode, which a change of owner may clear bits of.
        let made = out.metadata()?;
        if (made.uid(), made.gid()) != (before.uid(), before.gid()) {
            std::os::unix::fs::fchown(&out, Some(before.uid()), Some(before.gid())).map_err(|e| {
                format!(
                    "cannot give the new file the original's owner {}:{} ({e}); run as that user or as root",
                    before.uid(),
                    before.gid()
                )
            })?;
        }
        out.set_permissions(fs::Permissions::from_mode(before.mode() & 0o7777))?;
        let mut w = BufWriter::with_capacity(1 << 20, out);
        let mut same_header = true;
        let copied = rewrap_stream_with(BufReader::with_capacity(1 << 20, file), &mut w, |read| {
            same_header = read == old;
            if same_header { Ok(new) } else { Err(crypto_core::provider::ProviderError::UnwrapFailed) }
        });
        if !same_header {
            return Err(changed());
        }
        copied?;
        let out = w.into_inner().map_err(|e| e.into_error())?;
        out.sync_all()?;
        // Refuse to replace a file that changed while it was being copied.
        same_file_at(path, before).map_err(|_| changed())?;
        let now = fs::symlink_metadata(path)?;
        if (now.len(), now.mtime(), now.mtime_nsec()) != (before.len(), before.mtime(), before.mtime_nsec()) {
            return Err(changed());
        }
        fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `rewrap --recursive`: every regular file under `dir`, one at a time, with a progress bar
/// on a terminal. Per-file failures are collected, not fatal.
fn rewrap_tree(provider: &SidecarProvider, dir: &Path, json_out: bool) -> Result<RewrapSummary> {
    use std::io::IsTerminal;
    if !fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?.is_dir() {
        return Err(format!("{} is not a directory", dir.display()).into());
    }
    let (mut files, mut stale) = (Vec::new(), Vec::new());
    walk(dir, &mut files, &mut stale)?;
    let mut summary = RewrapSummary::default();
    for path in stale {
        if fs::remove_file(&path).is_ok() {
            summary.stale_partials_removed += 1;
        }
    }
    let bar = if !json_out && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(files.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template("rewrap {bar:40} {pos}/{len} files {msg}") {
            bar.set_style(style);
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut touched_dirs = std::collections::BTreeSet::new();
    for path in files {
        match rewrap_file(provider, &path) {
            Ok(Rewrapped::NotEnvelope) => summary.not_envelopes += 1,
            Ok(Rewrapped::NotOurs) => summary.not_ours += 1,
            Ok(Rewrapped::Current) => summary.current += 1,
            Ok(Rewrapped::Done) => {
                summary.rewrapped += 1;
                if let Some(parent) = path.parent() {
                    touched_dirs.insert(parent.to_path_buf());
                }
            }
            Err(e) => summary.failed.push((path, e.to_string())),
        }
        bar.inc(1);
        bar.set_message(format!("({} rewrapped, {} failed)", summary.rewrapped, summary.failed.len()));
    }
    bar.finish_and_clear();
    // The renames are durable once their directories are.
    for d in touched_dirs {
        let synced = File::open(&d).and_then(|f| f.sync_all());
        if let Err(e) = synced {
            summary.failed.push((d, format!("fsync of the directory failed: {e}")));
        }
    }
    Ok(summary)
}

fn run(cli: Cli) -> Result<()> {
    let token = match (&cli.token_file, std::env::var("KMS_TOKEN")) {
        (Some(path), _) => Some(
            fs::read_to_string(path).map_err(|e| format!("--token-file {}: {e}", path.display()))?.trim().to_owned(),
        ),
        (None, Ok(t)) if !t.trim().is_empty() => Some(t.trim().to_owned()),
        _ => None,
    };
    let tls = TlsOptions {
        ca_cert: cli.ca_cert.clone(),
        client_cert: cli.client_cert.clone(),
        client_key: cli.client_key.clone(),
        token,
    };
    let j = cli.json;
    if let Cmd::Cert(CertCmd::Verify { bundle, crl, usage, cert }) = &cli.command {
        return verify_offline(bundle, crl.as_deref(), usage.as_deref(), cert, j);
    }
    if let Cmd::Audit(AuditCmd::Verify { files, key_file, head, partial }) = &cli.command {
        return audit_verify(files, key_file, head.as_deref(), *partial, j);
    }
    let client = SidecarClient::connect_with(&cli.endpoint, &tls)?;
    match cli.command {
        Cmd::Key(cmd) => {
            let key = match cmd {
                KeyCmd::List => {
                    let keys = client.call(|mut c| async move { c.list_keys(pb::ListKeysRequest {}).await })?.keys;
                    if j {
                        println!("{}", Value::Array(keys.iter().map(key_json).collect()));
                    } else {
                        keys.iter().for_each(|k| print_key(false, k));
                    }
                    return Ok(());
                }
                KeyCmd::Create { name } => {
                    client.call(|mut c| async move { c.create_key(pb::CreateKeyRequest { name }).await })?
                }
                KeyCmd::Describe { name } => {
                    client.call(|mut c| async move { c.describe_key(pb::KeyRef { name }).await })?
                }
                KeyCmd::Rotate { name } => {
                    client.call(|mut c| async move { c.rotate_key(pb::KeyRef { name }).await })?
                }
                KeyCmd::Enable { name } => {
                    client.call(|mut c| async move { c.enable_key(pb::KeyRef { name }).await })?
                }
                KeyCmd::Disable { name } => {
                    client.call(|mut c| async move { c.disable_key(pb::KeyRef { name }).await })?
                }
                KeyCmd::ScheduleDeletion { name, window } => {
                    let pending_window_seconds = window.map_or(0, |w| w.as_secs());
                    client.call(|mut c| async move {
                        c.schedule_key_deletion(pb::ScheduleKeyDeletionRequest { name, pending_window_seconds }).await
                    })?
                }
                KeyCmd::RotationPeriod { name, period } => {
                    let rotation_period_seconds =
                        if period == "off" { 0 } else { parse_period(&period)?.as_secs().max(1) };
                    client.call(|mut c| async move {
                        c.set_rotation_period(pb::SetRotationPeriodRequest { name, rotation_period_seconds }).await
                    })?
                }
                KeyCmd::CancelDeletion { name } => {
                    client.call(|mut c| async move { c.cancel_key_deletion(pb::KeyRef { name }).await })?
                }
                KeyCmd::SetMinDecryptVersion { name, version } => client.call(|mut c| async move {
                    c.set_min_decrypt_version(pb::SetMinDecryptVersionRequest { name, min_decrypt_version: version })
                        .await
                })?,
            };
            print_key(j, &key);
        }
        Cmd::Encrypt { key, context: ctx, input, output } => {
            let ctx = EncryptionContext::from(context(&ctx)?);
            let envelope = Envelope::new(SidecarProvider::new(client));
            let (file, bar) = open_with_progress(&input, "encrypt", j)?;
            let mut reader = BufReader::with_capacity(1 << 20, file);
            let mut bytes = 0u64;
            write_atomically(&output, |w| {
                let mut sealer = envelope.encrypting_writer(w, &key, &ctx)?;
                bytes = std::io::copy(&mut reader, &mut sealer)?;
                sealer.finish()?;
                Ok(())
            })?;
            bar.finish_and_clear();
            if j {
                println!("{}", json!({"in": input, "out": output, "bytes": bytes, "key": key}));
            } else {
                println!("encrypted {bytes} bytes to {}", output.display());
            }
        }
        Cmd::Decrypt { context: ctx, input, output } => {
            let ctx = EncryptionContext::from(context(&ctx)?);
            let envelope = Envelope::new(SidecarProvider::new(client));
            let (file, bar) = open_with_progress(&input, "decrypt", j)?;
            let mut reader = envelope.decrypting_reader(BufReader::with_capacity(1 << 20, file), &ctx)?;
            let mut bytes = 0u64;
            write_atomically(&output, |w| {
                bytes = std::io::copy(&mut reader, w)?;
                Ok(())
            })?;
            bar.finish_and_clear();
            if j {
                println!("{}", json!({"in": input, "out": output, "bytes": bytes}));
            } else {
                println!("decrypted {bytes} bytes to {}", output.display());
            }
        }
        Cmd::Rewrap { recursive: Some(dir), .. } => {
            let summary = rewrap_tree(&SidecarProvider::new(client), &dir, j)?;
            if j {
                println!("{}", summary.to_json());
            } else {
                eprintln!("{}", summary.line());
                for (path, error) in &summary.failed {
                    eprintln!("  failed: {}: {error}", path.display());
                }
            }
            if !summary.failed.is_empty() {
                return Err(format!("{} file(s) could not be rewrapped", summary.failed.len()).into());
            }
        }
        Cmd::Rewrap { input: Some(input), output: Some(output), .. } => {
            let provider = SidecarProvider::new(client);
            let reader =
                BufReader::with_capacity(1 << 20, File::open(&input).map_err(|e| format!("{}: {e}", input.display()))?);
            write_atomically(&output, |w| {
                rewrap_stream_with(reader, w, |wrapped| provider.rewrap(wrapped))?;
                Ok(())
            })?;
            let mut head = Vec::new();
            File::open(&output)?.take(70 * 1024).read_to_end(&mut head)?;
            let (header, _) = crypto_core::envelope::Header::parse(&head)?;
            if j {
                println!("{}", json!({"out": output, "key": header.key_name(), "key_version": header.key_version()}));
            } else {
                println!("rewrapped to {} v{} in {}", header.key_name(), header.key_version(), output.display());
            }
        }
        Cmd::Rewrap { .. } => return Err("give --in and --out, or --recursive DIR".into()),
        Cmd::Datakey { key } => {
            let resp = client.call(|mut c| async move {
                c.generate_data_key(pb::GenerateDataKeyRequest { key_name: key, without_plaintext: false }).await
            })?;
            let w = resp.wrapped.ok_or("sidecar returned no wrapped key")?;
            let out = json!({"plaintext": hex::encode(&resp.plaintext), "key": w.key_name, "key_version": w.key_version,
                             "provider_id": w.provider_id, "wrapped": hex::encode(&w.blob)});
            if j {
                println!("{out}");
            } else {
                println!(
                    "plaintext\t{}\nwrapped\t{} v{} {}",
                    out["plaintext"], w.key_name, w.key_version, out["wrapped"]
                );
            }
        }
        Cmd::Whoami => {
            let who = client.call(|mut c| async move { c.who_am_i(pb::WhoAmIRequest {}).await })?;
            if j {
                println!("{}", json!({"identity": who.identity, "names": who.names}));
            } else {
                println!("{}", who.identity);
            }
        }
        Cmd::Token(cmd) => match cmd {
            TokenCmd::Create { name, ttl } => {
                let ttl_seconds = match ttl {
                    Some(t) => ttl_seconds(&t)?,
                    None => 0,
                };
                let created = client
                    .call(|mut c| async move { c.create_token(pb::CreateTokenRequest { name, ttl_seconds }).await })?;
                let info = created.info.unwrap_or_default();
                if j {
                    println!("{}", json!({"token": created.token, "info": token_json(&info)}));
                } else {
                    println!("{}", created.token);
                    eprintln!("token {} for principal token:{} (shown once; store it now)", info.id, info.name);
                }
            }
            TokenCmd::List => {
                let tokens = client.call(|mut c| async move { c.list_tokens(pb::ListTokensRequest {}).await })?;
                print_tokens(&tokens.tokens, j);
            }
            TokenCmd::Revoke { id_or_name } => {
                let tokens =
                    client.call(|mut c| async move { c.revoke_token(pb::RevokeTokenRequest { id_or_name }).await })?;
                print_tokens(&tokens.tokens, j);
            }
        },
        Cmd::Audit(AuditCmd::Head) => {
            let head = client.call(|mut c| async move { c.audit_head(pb::AuditHeadRequest {}).await })?;
            if j {
                println!("{}", json!({"seq": head.seq, "mac": head.mac, "head": head.head}));
            } else {
                println!("{}", head.head);
            }
        }
        Cmd::Audit(AuditCmd::Verify { .. }) => unreachable!("handled before connecting"),
        Cmd::Password(PasswordCmd::Hash) => {
            let password = read_password()?;
            let hashed = client.call(|mut c| async move {
                c.hash_password(pb::HashPasswordRequest { password: password.to_vec() }).await
            })?;
            println!("{}", hashed.hash);
        }
        Cmd::Password(PasswordCmd::Verify { hash }) => {
            let password = read_password()?;
            let out = client.call(|mut c| async move {
                c.verify_password(pb::VerifyPasswordRequest { hash, password: password.to_vec() }).await
            })?;
            if j {
                println!("{}", json!({"valid": out.valid, "needs_rehash": out.needs_rehash}));
            } else {
                println!("{}", if out.valid { "match" } else { "mismatch" });
            }
            if !out.valid {
                return Err("password does not match".into());
            }
        }
        Cmd::Ca(cmd) => match cmd {
            CaCmd::Init { cn, key_type, ttl, allow_dns, allow_ip, allow_uri } => {
                let ttl_seconds = ttl_seconds(&ttl)?;
                let bundle = client.call(|mut c| async move {
                    c.init_ca(pb::InitCaRequest {
                        common_name: cn,
                        key_type,
                        ttl_seconds,
                        allowed_dns: allow_dns,
                        allowed_ip: allow_ip,
                        allowed_uri_prefixes: allow_uri,
                    })
                    .await
                })?;
                if j {
                    println!("{}", json!({"bundle": bundle.pem}));
                } else {
                    print!("{}", bundle.pem);
                }
            }
            CaCmd::Bundle { out } => {
                let bundle = client.call(|mut c| async move { c.get_ca_bundle(pb::GetCaBundleRequest {}).await })?;
                write_atomically(&out, |w| Ok(w.write_all(bundle.pem.as_bytes())?))?;
                if j {
                    println!("{}", json!({"out": out}));
                } else {
                    println!("CA bundle written to {}", out.display());
                }
            }
            CaCmd::Crl { out } => {
                let crl = client.call(|mut c| async move { c.get_crl(pb::GetCrlRequest {}).await })?;
                write_atomically(&out, |w| Ok(w.write_all(crl.pem.as_bytes())?))?;
                if j {
                    println!("{}", json!({"out": out, "number": crl.number}));
                } else {
                    println!("CRL number {} written to {}", crl.number, out.display());
                }
            }
        },
        Cmd::Cert(cmd) => match cmd {
            CertCmd::Issue { cn, sans, key_type, ttl, usage, out_cert, out_key } => {
                let ttl_seconds = ttl_seconds(&ttl)?;
                let issued = client.call(|mut c| async move {
                    c.issue_certificate(pb::IssueCertificateRequest {
                        common_name: cn,
                        sans,
                        key_type,
                        ttl_seconds,
                        usage,
                    })
                    .await
                })?;
                let key = zeroize::Zeroizing::new(issued.private_key_pem.clone());
                write_atomically(&out_key, |w| Ok(w.write_all(&key)?))?;
                write_atomically(&out_cert, |w| Ok(w.write_all(issued.chain_pem.as_bytes())?))?;
                if j {
                    println!(
                        "{}",
                        json!({"serial": issued.serial, "not_after": issued.not_after_unix, "cert": out_cert, "key": out_key})
                    );
                } else {
                    println!("serial={} written to {} (key {})", issued.serial, out_cert.display(), out_key.display());
                }
            }
            CertCmd::SignCsr { csr, ttl, usage, out } => {
                let csr = read_file(&csr)?;
                let ttl_seconds = ttl_seconds(&ttl)?;
                let issued = client
                    .call(|mut c| async move { c.sign_csr(pb::SignCsrRequest { csr, ttl_seconds, usage }).await })?;
                write_atomically(&out, |w| Ok(w.write_all(issued.chain_pem.as_bytes())?))?;
                if j {
                    println!("{}", json!({"serial": issued.serial, "not_after": issued.not_after_unix, "cert": out}));
                } else {
                    println!("serial={} written to {}", issued.serial, out.display());
                }
            }
            CertCmd::Revoke { serial, reason } => {
                let info = client.call(|mut c| async move {
                    c.revoke_certificate(pb::RevokeCertificateRequest { serial, reason }).await
                })?;
                print_cert_info(j, &info);
            }
            CertCmd::List => {
                let list =
                    client.call(|mut c| async move { c.list_certificates(pb::ListCertificatesRequest {}).await })?;
                if j {
                    let items: Vec<Value> = list
                        .certificates
                        .iter()
                        .map(|c| json!({"serial": c.serial, "common_name": c.common_name, "sans": c.sans,
                                        "not_after": c.not_after_unix, "revoked_at": c.revoked_at_unix, "revoke_reason": c.revoke_reason}))
                        .collect();
                    println!("{}", Value::Array(items));
                } else {
                    list.certificates.iter().for_each(|c| print_cert_info(false, c));
                }
            }
            CertCmd::Verify { .. } => return Err("cert verify runs without a sidecar".into()),
        },
        Cmd::Secret(cmd) => match cmd {
            SecretCmd::Put { name, key, value, from_file } => {
                let value = match (value, from_file) {
                    (Some(v), None) => v.into_bytes(),
                    (None, Some(f)) => fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?,
                    _ => return Err("give exactly one of --value or --from-file".into()),
                };
                let v = client.call(|mut c| async move {
                    c.put_secret(pb::PutSecretRequest { name, key_name: key, value }).await
                })?;
                if j {
                    println!("{}", json!({"version": v.version}));
                } else {
                    println!("version {}", v.version);
                }
            }
            SecretCmd::Get { name, version } => {
                let s = client.call(|mut c| async move {
                    c.get_secret(pb::GetSecretRequest { name, version: version.unwrap_or(0) }).await
                })?;
                if j {
                    println!(
                        "{}",
                        json!({"value": String::from_utf8_lossy(&s.value), "version": s.version, "key": s.key_name})
                    );
                } else {
                    std::io::stdout().write_all(&s.value)?;
                    println!();
                }
            }
            SecretCmd::List => {
                let list = client.call(|mut c| async move { c.list_secrets(pb::ListSecretsRequest {}).await })?;
                for s in &list.secrets {
                    if j {
                        println!("{}", json!({"name": s.name, "latest_version": s.latest_version, "key": s.key_name}));
                    } else {
                        println!("{}\tv{}\t{}", s.name, s.latest_version, s.key_name);
                    }
                }
            }
            SecretCmd::Delete { name } => {
                client.call(|mut c| async move { c.delete_secret(pb::DeleteSecretRequest { name }).await })?;
            }
        },
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kmsctl: {}", e.to_string().replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::sync::Arc;

    use crypto_core::envelope::{EncryptionContext, Envelope, Header};
    use crypto_core::keys::Keyring;
    use crypto_core::provider::{KeyProvider, LocalProvider};

    use super::*;

    /// Two envelopes of equal length under one key (as an application rewriting a file in
    /// place would leave), and the wrapped keys of the second under a newer version.
    fn two_envelopes() -> (Vec<u8>, Vec<u8>, Vec<crypto_core::provider::WrappedKey>) {
        let keyring = Arc::new(Keyring::in_memory());
        keyring.create_key("t/files").unwrap();
        let envelope = Envelope::new(LocalProvider::new(keyring.clone()));
        let ctx = EncryptionContext::new();
        let a = envelope.seal("t/files", &ctx, b"message a").unwrap();
        let b = envelope.seal("t/files", &ctx, b"message b").unwrap();
        let provider = LocalProvider::new(keyring.clone());
        let data_key = provider.unwrap(Header::parse(&b).unwrap().0.wrapped_keys()).unwrap();
        keyring.rotate("t/files").unwrap();
        let rewrapped = provider.wrap("t/files", &data_key).unwrap();
        assert_eq!(a.len(), b.len());
        (a, b, rewrapped)
    }

    fn open(path: &Path) -> (File, fs::Metadata) {
        let file = File::open(path).unwrap();
        let meta = file.metadata().unwrap();
        (file, meta)
    }

    #[test]
    fn header_is_replaced_only_when_the_file_still_holds_the_rewrapped_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.cce");
        let (a, b, b_rewrapped) = two_envelopes();
        let b_old = Header::parse(&b).unwrap().0.wrapped_keys().to_vec();

        // The header read was b's, but the file now holds a (rewritten in place, same size,
        // possibly within one timestamp tick): refused, the file left as it is.
        fs::write(&path, &a).unwrap();
        let (file, before) = open(&path);
        let err = replace_wrapped_keys(file, &before, &path, &b_old, b_rewrapped.clone()).unwrap_err();
        assert!(err.to_string().contains("changed"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), a);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no partial file left");

        // The file still holds b: its header gets the new keys, the body is unchanged.
        fs::write(&path, &b).unwrap();
        let (file, before) = open(&path);
        replace_wrapped_keys(file, &before, &path, &b_old, b_rewrapped.clone()).unwrap();
        let after = fs::read(&path).unwrap();
        let (header, len) = Header::parse(&after).unwrap();
        assert_eq!(header.wrapped_keys(), b_rewrapped.as_slice());
        assert_eq!(after[len..], b[Header::parse(&b).unwrap().1..]);
    }

    #[test]
    fn a_rewrapped_file_keeps_its_owner_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.cce");
        let (_, b, b_rewrapped) = two_envelopes();
        let b_old = Header::parse(&b).unwrap().0.wrapped_keys().to_vec();
        fs::write(&path, &b).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let running_as_root = fs::metadata(&path).unwrap().uid() == 0;
        if running_as_root {
            // An application's file, rewrapped by root.
            std::os::unix::fs::chown(&path, Some(4242), Some(4343)).unwrap();
        } else {
            eprintln!("not root: only checking that the owner stays the runner's");
        }
        let expected = fs::metadata(&path).unwrap();
        let (file, before) = open(&path);
        replace_wrapped_keys(file, &before, &path, &b_old, b_rewrapped).unwrap();
        let after = fs::metadata(&path).unwrap();
        assert_ne!(after.ino(), expected.ino(), "replaced by a new file");
        assert_eq!((after.uid(), after.gid()), (expected.uid(), expected.gid()));
        assert_eq!(after.mode() & 0o7777, 0o640);
    }

    #[test]
    fn a_path_replaced_by_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (path, elsewhere) = (dir.path().join("f.cce"), dir.path().join("elsewhere.cce"));
        let (_, b, _) = two_envelopes();
        fs::write(&elsewhere, &b).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        // Opened through the link (as a path swapped after the walk would be): refused.
        let (_, opened) = open(&path);
        assert!(same_file_at(&path, &opened).is_err());
        assert!(same_file_at(&elsewhere, &opened).is_ok());
    }
}
