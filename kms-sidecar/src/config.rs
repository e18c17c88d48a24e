//! Settings of `kms-sidecar serve`, from three layers: a TOML file (`--config` or
//! `KMS_CONFIG`), `KMS_*` environment variables, and command-line flags.
//!
//! **Precedence: flag > environment variable > config file > built-in default**, setting by
//! setting. Every setting has the same name in all three places: flag `--max-request-bytes`,
//! variable `KMS_MAX_REQUEST_BYTES`, TOML key `max_request_bytes`. An unknown key, a value
//! of the wrong type or an unparsable duration in the file is an error that names it; the
//! server never starts on a half-understood configuration.
//!
//! ```toml
//! data_dir = "/var/lib/kms"
//! listen = "unix:///run/kms/kms.sock"
//! socket_mode = "660"
//! max_request_bytes = 4194304
//! key_cache_ttl = "1s"
//! kek_cache_capacity = 4096
//! max_concurrent_streams = 32
//! stream_idle_timeout = "60s"
//! deletion_check_interval = "10s"
//! log_format = "json"
//! log_level = "info"
//! # postgres = "host=db user=kms dbname=kms"
//! # tls_cert = "/etc/kms/tls.crt"
//! # tls_key = "/etc/kms/tls.key"
//! # client_ca = "/etc/kms/clients-ca.crt"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default largest accepted request message: 4 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Why the configuration was refused. Names the setting and the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys or wrong types.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A setting has an invalid value.
    #[error("{setting}: {message}")]
    Invalid {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The `serve` flags; each also reads `KMS_<NAME>` from the environment. Every field is
/// optional so the config file can fill what neither flag nor variable gave.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML config file (lowest precedence: environment variables and flags override it).
    #[arg(long, env = "KMS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory: keystore, root key and default socket [default: ./kms-data].
    #[arg(long, env = "KMS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Listen address: unix:///path/to.sock or tcp://IP:PORT (TLS required); repeat (or
    /// separate with commas) to serve several, e.g. a local admin socket beside a TLS
    /// port [default: unix://DATA_DIR/kms.sock].
    #[arg(long, env = "KMS_LISTEN", value_delimiter = ',')]
    pub listen: Vec<String>,
    /// PostgreSQL connection string; when set, keys live there instead of SQLite.
    #[arg(long, env = "KMS_POSTGRES")]
    pub postgres: Option<String>,
    /// Socket file permissions, octal [default: 600].
    #[arg(long, env = "KMS_SOCKET_MODE")]
    pub socket_mode: Option<String>,
    /// TLS certificate chain (PEM), required for tcp:// listeners.
    #[arg(long, env = "KMS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM), required for tcp:// listeners.
    #[arg(long, env = "KMS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates are required (mTLS).
    #[arg(long, env = "KMS_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// `auto`: tcp:// listeners serve a certificate from the sidecar's own CA (renewed
    /// without restart) and require client certificates from it, checked against its CRL.
    #[arg(long, env = "KMS_TLS")]
    pub tls: Option<String>,
    /// Names in the `--tls auto` server certificate: dns:NAME, ip:ADDRESS (repeatable)
    /// [default: the listen IP, plus dns:localhost on loopback].
    #[arg(long = "tls-name", env = "KMS_TLS_NAME", value_delimiter = ',')]
    pub tls_name: Vec<String>,
    /// Lifetime of `--tls auto` server certificates (renewed at two thirds) [default: 7d].
    #[arg(long, env = "KMS_TLS_AUTO_TTL")]
    pub tls_auto_ttl: Option<String>,
    /// How often `--tls auto` checks for renewal and re-reads the CRL [default: 60s].
    #[arg(long, env = "KMS_TLS_REFRESH_INTERVAL")]
    pub tls_refresh_interval: Option<String>,
    /// Largest accepted payload (and request message) in bytes [default: 4194304].
    #[arg(long, env = "KMS_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// How long a key record is trusted before it is read again from the keystore: the
    /// bound on how late a change made by another sidecar is honoured here [default: 1s].
    #[arg(long, env = "KMS_KEY_CACHE_TTL")]
    pub key_cache_ttl: Option<String>,
    /// Most unwrapped KEK versions held in memory [default: 4096].
    #[arg(long, env = "KMS_KEK_CACHE_CAPACITY")]
    pub kek_cache_capacity: Option<usize>,
    /// Most EncryptStream/DecryptStream calls at once [default: 32].
    #[arg(long, env = "KMS_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<usize>,
    /// A stream whose client neither sends nor reads for this long is ended [default: 60s].
    #[arg(long, env = "KMS_STREAM_IDLE_TIMEOUT")]
    pub stream_idle_timeout: Option<String>,
    /// How often the lifecycle jobs run: keys whose rotation period has passed are rotated,
    /// keys whose deletion window has passed are destroyed [default: 10s].
    #[arg(long, env = "KMS_DELETION_CHECK_INTERVAL")]
    pub deletion_check_interval: Option<String>,
    /// Authorization policy (TOML; re-read on SIGHUP) [default: only the sidecar's own
    /// Unix user, on the Unix socket, may do anything].
    #[arg(long, env = "KMS_POLICY")]
    pub policy: Option<PathBuf>,
    /// Audit log file (hash-chained JSON lines) [default: DATA_DIR/audit/audit.log].
    #[arg(long, env = "KMS_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Key of the audit chain's MACs, created at first start [default: DATA_DIR/audit.key].
    #[arg(long, env = "KMS_AUDIT_KEY_FILE")]
    pub audit_key_file: Option<PathBuf>,
    /// Audit file size at which it is rotated (0 = never) [default: 67108864].
    #[arg(long, env = "KMS_AUDIT_MAX_BYTES")]
    pub audit_max_bytes: Option<u64>,
    /// fsync every audit record (survives power loss, costs a disk flush per request)
    /// [default: false: each record reaches the kernel before the answer is sent].
    #[arg(long, env = "KMS_AUDIT_FSYNC")]
    pub audit_fsync: Option<bool>,
    /// Requests per second per principal (token bucket; 0 = unlimited) [default: 0].
    #[arg(long, env = "KMS_RATE_LIMIT")]
    pub rate_limit: Option<f64>,
    /// Burst per principal [default: the rate limit, at least 1].
    #[arg(long, env = "KMS_RATE_BURST")]
    pub rate_burst: Option<f64>,
    /// Most requests in progress at once; more get RESOURCE_EXHAUSTED [default: 1024].
    #[arg(long, env = "KMS_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// Longest a request may run when its client sets no shorter deadline [default: 30s].
    #[arg(long, env = "KMS_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// Prometheus metrics on http://IP:PORT/metrics, loopback addresses only [default: off].
    #[arg(long, env = "KMS_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Label the rotation-age metric with every key's name (off: only the count and the
    /// oldest age, so the unauthenticated endpoint lists no tenant's key names).
    #[arg(long, env = "KMS_METRICS_KEY_NAMES")]
    pub metrics_key_names: Option<bool>,
    /// Root of trust wrapping every KEK version: `local` (the key file root.key in the data
    /// dir) or `aws-kms:<key-id, ARN or alias>` (AWS KMS; needs the `aws-kms` build
    /// feature; credentials from the default AWS chain) [default: local].
    #[arg(long, env = "KMS_ROOT_KEY")]
    pub root_key: Option<String>,
    /// AWS region of the root key [default: from the AWS environment, or the key's ARN].
    #[arg(long, env = "KMS_AWS_REGION")]
    pub aws_region: Option<String>,
    /// AWS KMS endpoint URL override (a VPC endpoint, or a local test server).
    #[arg(long, env = "KMS_AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
    /// How long already-unwrapped keys keep serving while AWS KMS is unreachable, before
    /// the sidecar fails closed [default: 5m].
    #[arg(long, env = "KMS_ROOT_KEY_GRACE_PERIOD")]
    pub root_key_grace_period: Option<String>,
    /// Serve the Kubernetes KMS v2 plugin API on this Unix socket (unix:///path or a path)
    /// for kube-apiserver, backed by `--k8s-kms-key` [default: off].
    #[arg(long, env = "KMS_K8S_KMS_SOCKET")]
    pub k8s_kms_socket: Option<String>,
    /// The key behind the Kubernetes KMS v2 plugin API (created at start if absent).
    #[arg(long, env = "KMS_K8S_KMS_KEY")]
    pub k8s_kms_key: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "KMS_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log level or filter (error, warn, info, debug, trace; or a tracing filter such as
    /// `kms_sidecar=debug`) [default: info].
    #[arg(long, env = "KMS_LOG_LEVEL")]
    pub log_level: Option<String>,
}

/// The TOML file: the same settings as [`ServeArgs`], by the same names.
/// One string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<OneOrMany>,
    tls: Option<String>,
    tls_name: Option<Vec<String>>,
    tls_auto_ttl: Option<String>,
    tls_refresh_interval: Option<String>,
    postgres: Option<String>,
    socket_mode: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    max_request_bytes: Option<usize>,
    key_cache_ttl: Option<String>,
    kek_cache_capacity: Option<usize>,
    max_concurrent_streams: Option<usize>,
    stream_idle_timeout: Option<String>,
    deletion_check_interval: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
    policy: Option<PathBuf>,
    audit_log: Option<PathBuf>,
    audit_key_file: Option<PathBuf>,
    audit_max_bytes: Option<u64>,
    audit_fsync: Option<bool>,
    rate_limit: Option<f64>,
    rate_burst: Option<f64>,
    max_concurrent_requests: Option<usize>,
    request_timeout: Option<String>,
    metrics_listen: Option<String>,
    metrics_key_names: Option<bool>,
    k8s_kms_socket: Option<String>,
    k8s_kms_key: Option<String>,
    root_key: Option<String>,
    aws_region: Option<String>,
    aws_endpoint_url: Option<String>,
    root_key_grace_period: Option<String>,
}

/// Which root of trust wraps the KEKs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RootKeySetting {
    /// `root.key` in the data directory.
    Local,
    /// An AWS KMS key.
    AwsKms {
        /// Key id, ARN or alias.
        key_id: String,
        /// Region override.
        region: Option<String>,
        /// Endpoint URL override.
        endpoint_url: Option<String>,
        /// How long cached KEKs serve while AWS is unreachable.
        grace_period: Duration,
    },
}

/// The Kubernetes KMS v2 plugin endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sKmsSettings {
    /// Its Unix socket (same mode as `socket_mode`).
    pub socket: PathBuf,
    /// The key behind it.
    pub key: String,
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A Unix domain socket at this path.
    Unix(PathBuf),
    /// TCP with TLS at this address.
    Tcp(std::net::SocketAddr, TlsSource),
}

/// Where a TCP listener's TLS identity comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files (`--tls-cert`, `--tls-key`, optional `--client-ca`).
    Files(crate::server::TlsFiles),
    /// The sidecar's own CA (`--tls auto`), with these names in the certificate.
    Auto(Vec<crypto_core::pki::SubjectAltName>),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where and how the audit log is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// The active file.
    pub path: PathBuf,
    /// The MAC key file.
    pub key_file: PathBuf,
    /// Rotation size (0 = never).
    pub max_bytes: u64,
    /// fsync per record.
    pub fsync: bool,
}

/// The resolved settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Listeners (at least one).
    pub listen: Vec<Listen>,
    /// Lifetime of `--tls auto` server certificates.
    pub tls_auto_ttl: Duration,
    /// Renewal check and CRL refresh interval of `--tls auto`.
    pub tls_refresh_interval: Duration,
    /// PostgreSQL connection string, if keys live there.
    pub postgres: Option<String>,
    /// Socket file mode.
    pub socket_mode: u32,
    /// Request limits (payload size, concurrent streams, stream idle timeout).
    pub limits: crate::grpc::Limits,
    /// Key record cache TTL.
    pub key_cache_ttl: Duration,
    /// KEK cache capacity.
    pub kek_cache_capacity: usize,
    /// Interval of the lifecycle jobs (automatic rotation, scheduled deletion).
    pub deletion_check_interval: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// Identity, policy and limits of the request gate.
    pub security: crate::security::SecurityOptions,
    /// The audit log.
    pub audit: AuditSettings,
    /// Prometheus endpoint address (loopback), if enabled.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Per-key rotation-age series on the metrics endpoint.
    pub metrics_key_names: bool,
    /// The Kubernetes KMS v2 plugin endpoint, if enabled.
    pub k8s_kms: Option<K8sKmsSettings>,
    /// The root of trust.
    pub root_key: RootKeySetting,
    /// Settings that were ignored, to be logged once logging is up.
    pub warnings: Vec<String>,
}

/// Parses a duration: an integer with a unit `ms`, `s`, `m`, `h` or `d` (`"500ms"`, `"1s"`,
/// `"90d"`), or `"0"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 10s, 5m, 2h, 90d)"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m, h or d)")),
    };
    ms.map(Duration::from_millis).ok_or_else(|| format!("{text:?} is too large"))
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting, message: message.into() }
}

impl ServeArgs {
    /// Resolves flags and environment (already merged by clap) over the config file (if
    /// any) over the defaults, and validates the result.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = self.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("./kms-data"));
        let tls_cert = self.tls_cert.or(file.tls_cert);
        let tls_key = self.tls_key.or(file.tls_key);
        let client_ca = self.client_ca.or(file.client_ca);
        let auto = match self.tls.or(file.tls).as_deref() {
            None | Some("files") => false,
            Some("auto") => true,
            Some(other) => return Err(invalid("tls", format!("{other:?}: use auto (or give --tls-cert/--tls-key)"))),
        };
        let tls_names = if self.tls_name.is_empty() { file.tls_name.unwrap_or_default() } else { self.tls_name };
        let tls_names = tls_names
            .iter()
            .map(|n| crypto_core::pki::SubjectAltName::parse(n).map_err(|e| invalid("tls_name", e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let listen_texts =
            if self.listen.is_empty() { file.listen.map(OneOrMany::into_vec).unwrap_or_default() } else { self.listen };
        let mut listen = Vec::new();
        let mut warnings = Vec::new();
        for l in &listen_texts {
            if let Some(p) = l.strip_prefix("unix://").filter(|p| !p.is_empty()) {
                listen.push(Listen::Unix(PathBuf::from(p)));
            } else if let Some(addr) = l.strip_prefix("tcp://") {
                let addr: std::net::SocketAddr =
                    addr.parse().map_err(|_| invalid("listen", format!("{l:?}: expected tcp://IP:PORT")))?;
                let source = if auto {
                    let mut names = tls_names.clone();
                    if names.is_empty() && addr.ip().is_unspecified() {
                        return Err(invalid(
                            "tls_name",
                            format!("{l}: a wildcard address is no name for a certificate; give --tls-name"),
                        ));
                    }
                    if names.is_empty() {
                        names.push(crypto_core::pki::SubjectAltName::Ip(addr.ip()));
                        if addr.ip().is_loopback() {
                            names.push(crypto_core::pki::SubjectAltName::Dns("localhost".into()));
                        }
                    }
                    TlsSource::Auto(names)
                } else {
                    let (Some(cert), Some(key)) = (tls_cert.clone(), tls_key.clone()) else {
                        return Err(invalid(
                            "listen",
                            "a tcp:// listener requires TLS: give --tls-cert and --tls-key, or --tls auto",
                        ));
                    };
                    TlsSource::Files(crate::server::TlsFiles { cert, key, client_ca: client_ca.clone() })
                };
                listen.push(Listen::Tcp(addr, source));
            } else {
                return Err(invalid("listen", format!("{l:?}: expected unix:///path or tcp://IP:PORT")));
            }
        }
        if listen.is_empty() {
            listen.push(Listen::Unix(data_dir.join("kms.sock")));
        }
        let has_tcp = listen.iter().any(|l| matches!(l, Listen::Tcp(..)));
        if !has_tcp && (tls_cert.is_some() || tls_key.is_some() || client_ca.is_some() || auto) {
            // Not an error: a higher layer (env, flag) may switch a file's tcp:// listener
            // to a socket; the TLS settings of the lower layer then simply do not apply.
            warnings.push("TLS settings are ignored: no tcp:// listener".into());
        }
        let socket_mode_text = self.socket_mode.or(file.socket_mode).unwrap_or_else(|| "600".into());
        let socket_mode = u32::from_str_radix(&socket_mode_text, 8)
            .ok()
            .filter(|m| m & !0o777 == 0)
            .ok_or_else(|| invalid("socket_mode", format!("{socket_mode_text:?} is not an octal mode up to 777")))?;
        let max_request_bytes = self.max_request_bytes.or(file.max_request_bytes).unwrap_or(DEFAULT_MAX_REQUEST_BYTES);
        if max_request_bytes == 0 || max_request_bytes > 1 << 30 {
            return Err(invalid("max_request_bytes", format!("{max_request_bytes} is outside 1 ..= 1073741824")));
        }
        let duration = |setting: &'static str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(t) => parse_duration(&t).map_err(|m| invalid(setting, m)),
        };
        let key_cache_ttl =
            duration("key_cache_ttl", self.key_cache_ttl.or(file.key_cache_ttl), Duration::from_secs(1))?;
        if key_cache_ttl > Duration::from_secs(3600) {
            return Err(invalid("key_cache_ttl", "at most 1h: it bounds how late a key change is honoured"));
        }
        let stream_idle_timeout = duration(
            "stream_idle_timeout",
            self.stream_idle_timeout.or(file.stream_idle_timeout),
            Duration::from_secs(60),
        )?;
        if stream_idle_timeout.is_zero() {
            return Err(invalid("stream_idle_timeout", "must be longer than 0"));
        }
        let max_concurrent_streams = self.max_concurrent_streams.or(file.max_concurrent_streams).unwrap_or(32);
        if max_concurrent_streams == 0 || max_concurrent_streams > 4096 {
            return Err(invalid("max_concurrent_streams", format!("{max_concurrent_streams} is outside 1 ..= 4096")));
        }
        let deletion_check_interval = duration(
            "deletion_check_interval",
            self.deletion_check_interval.or(file.deletion_check_interval),
            Duration::from_secs(10),
        )?;
        let tls_auto_ttl =
            duration("tls_auto_ttl", self.tls_auto_ttl.or(file.tls_auto_ttl), Duration::from_secs(7 * 86_400))?;
        let tls_refresh_interval = duration(
            "tls_refresh_interval",
            self.tls_refresh_interval.or(file.tls_refresh_interval),
            Duration::from_secs(60),
        )?;
        if tls_auto_ttl < Duration::from_secs(1) || tls_refresh_interval.is_zero() {
            return Err(invalid("tls_auto_ttl", "tls_auto_ttl and tls_refresh_interval must be longer than 0"));
        }
        if tls_refresh_interval > tls_auto_ttl / 3 {
            // Renewal is due at two thirds of the lifetime: a slower check could miss it.
            return Err(invalid("tls_refresh_interval", "must be at most a third of tls_auto_ttl"));
        }
        if deletion_check_interval.is_zero() {
            return Err(invalid("deletion_check_interval", "must be longer than 0"));
        }
        let log_format = match self.log_format.or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(invalid("log_format", format!("{other:?}: use text or json"))),
        };
        let rate_limit = self.rate_limit.or(file.rate_limit).unwrap_or(0.0);
        if !rate_limit.is_finite() || !(0.0..=1e9).contains(&rate_limit) {
            return Err(invalid("rate_limit", format!("{rate_limit} is outside 0 ..= 1e9 requests/s")));
        }
        let rate_burst = self.rate_burst.or(file.rate_burst).unwrap_or(rate_limit.max(1.0));
        if !rate_burst.is_finite() || !(1.0..=1e9).contains(&rate_burst) {
            return Err(invalid("rate_burst", format!("{rate_burst} is outside 1 ..= 1e9")));
        }
        let max_concurrent_requests = self.max_concurrent_requests.or(file.max_concurrent_requests).unwrap_or(1024);
        if max_concurrent_requests == 0 || max_concurrent_requests > 1 << 20 {
            return Err(invalid(
                "max_concurrent_requests",
                format!("{max_concurrent_requests} is outside 1 ..= 1048576"),
            ));
        }
        let request_timeout =
            duration("request_timeout", self.request_timeout.or(file.request_timeout), Duration::from_secs(30))?;
        if request_timeout.is_zero() {
            return Err(invalid("request_timeout", "must be longer than 0"));
        }
        let metrics_listen = match self.metrics_listen.or(file.metrics_listen) {
            None => None,
            Some(text) => {
                let addr: std::net::SocketAddr = text
                    .trim_start_matches("http://")
                    .parse()
                    .map_err(|_| invalid("metrics_listen", format!("{text:?}: expected IP:PORT")))?;
                crate::metrics::check_loopback(addr).map_err(|m| invalid("metrics_listen", m))?;
                Some(addr)
            }
        };
        let k8s_kms = match (self.k8s_kms_socket.or(file.k8s_kms_socket), self.k8s_kms_key.or(file.k8s_kms_key)) {
            (None, None) => None,
            (Some(_), None) => return Err(invalid("k8s_kms_key", "required with k8s_kms_socket")),
            (None, Some(_)) => return Err(invalid("k8s_kms_socket", "required with k8s_kms_key")),
            (Some(socket), Some(key)) => {
                crypto_core::keys::validate_key_name(&key).map_err(|e| invalid("k8s_kms_key", e.to_string()))?;
                let path = PathBuf::from(socket.strip_prefix("unix://").unwrap_or(&socket));
                if path.as_os_str().is_empty() {
                    return Err(invalid("k8s_kms_socket", "empty path"));
                }
                if listen.iter().any(|l| matches!(l, Listen::Unix(p) if *p == path)) {
                    return Err(invalid(
                        "k8s_kms_socket",
                        format!("{} is also a kms.v1 listen socket", path.display()),
                    ));
                }
                Some(K8sKmsSettings { socket: path, key })
            }
        };
        let root_key = match self.root_key.or(file.root_key).as_deref().map(str::trim) {
            None | Some("local") => RootKeySetting::Local,
            Some(text) => match text.strip_prefix("aws-kms:") {
                Some(key_id) if !key_id.is_empty() => {
                    if !cfg!(feature = "aws-kms") {
                        return Err(invalid(
                            "root_key",
                            "this build has no AWS KMS support; build kms-sidecar with --features aws-kms",
                        ));
                    }
                    let grace_period = duration(
                        "root_key_grace_period",
                        self.root_key_grace_period.or(file.root_key_grace_period),
                        Duration::from_secs(300),
                    )?;
                    RootKeySetting::AwsKms {
                        key_id: key_id.to_owned(),
                        region: self.aws_region.or(file.aws_region),
                        endpoint_url: self.aws_endpoint_url.or(file.aws_endpoint_url),
                        grace_period,
                    }
                }
                _ => {
                    return Err(invalid(
                        "root_key",
                        format!("{text:?}: expected local or aws-kms:<key-id, ARN or alias>"),
                    ));
                }
            },
        };
        let audit = AuditSettings {
            path: self.audit_log.or(file.audit_log).unwrap_or_else(|| data_dir.join("audit").join("audit.log")),
            key_file: self.audit_key_file.or(file.audit_key_file).unwrap_or_else(|| data_dir.join("audit.key")),
            max_bytes: self.audit_max_bytes.or(file.audit_max_bytes).unwrap_or(64 << 20),
            fsync: self.audit_fsync.or(file.audit_fsync).unwrap_or(false),
        };
        let security = crate::security::SecurityOptions {
            policy_path: self.policy.or(file.policy),
            rate_limit,
            rate_burst,
            max_concurrent_requests,
            request_timeout,
            token_cache_ttl: key_cache_ttl,
        };
        Ok(Settings {
            security,
            audit,
            metrics_listen,
            metrics_key_names: self.metrics_key_names.or(file.metrics_key_names).unwrap_or(false),
            k8s_kms,
            root_key,
            data_dir,
            listen,
            tls_auto_ttl,
            tls_refresh_interval,
            postgres: self.postgres.or(file.postgres),
            socket_mode,
            limits: crate::grpc::Limits { max_request_bytes, max_concurrent_streams, stream_idle_timeout },
            key_cache_ttl,
            kek_cache_capacity: self.kek_cache_capacity.or(file.kek_cache_capacity).unwrap_or(4096),
            deletion_check_interval,
            log_format,
            log_level: self.log_level.or(file.log_level).unwrap_or_else(|| "info".into()),
            warnings,
        })
    }
}

impl Settings {
    /// How often a remote root key is probed: a third of its grace period, between 1 s
    /// and 60 s (so the grace period sees at least three probes when it is long enough).
    pub fn root_probe_interval(&self) -> Duration {
        match &self.root_key {
            RootKeySetting::AwsKms { grace_period, .. } => {
                (*grace_period / 3).clamp(Duration::from_secs(1), Duration::from_secs(60))
            }
            RootKeySetting::Local => Duration::from_secs(60),
        }
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kms.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn defaults() {
        let s = ServeArgs::default().resolve().unwrap();
        assert_eq!(s.data_dir, PathBuf::from("./kms-data"));
        assert_eq!(s.listen, vec![Listen::Unix(PathBuf::from("./kms-data/kms.sock"))]);
        assert_eq!(s.socket_mode, 0o600);
        assert_eq!(s.limits, crate::grpc::Limits::default());
        assert_eq!(s.key_cache_ttl, Duration::from_secs(1));
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let (_d, path) = file("data_dir = \"/from/file\"\nmax_request_bytes = 1000\nlog_format = \"json\"\n");
        let args = ServeArgs { config: Some(path), max_request_bytes: Some(2000), ..ServeArgs::default() };
        let s = args.resolve().unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/from/file"));
        assert_eq!(s.listen, vec![Listen::Unix(PathBuf::from("/from/file/kms.sock"))]);
        assert_eq!(s.limits.max_request_bytes, 2000, "the flag wins over the file");
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn a_higher_layer_can_switch_a_tls_listener_to_a_socket() {
        let (_d, path) = file("listen = \"tcp://127.0.0.1:7000\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n");
        let s = ServeArgs { config: Some(path.clone()), ..ServeArgs::default() }.resolve().unwrap();
        assert!(matches!(s.listen[..], [Listen::Tcp(_, TlsSource::Files(_))]));
        assert!(s.warnings.is_empty());
        let args = ServeArgs { config: Some(path), listen: vec!["unix:///tmp/k.sock".into()], ..ServeArgs::default() };
        let s = args.resolve().unwrap();
        assert_eq!(s.listen, vec![Listen::Unix(PathBuf::from("/tmp/k.sock"))]);
        assert_eq!(s.warnings.len(), 1, "the unused TLS files are reported");
    }

    #[test]
    fn several_listeners_and_tls_auto() {
        let args = ServeArgs {
            listen: vec!["unix:///tmp/a.sock".into(), "tcp://127.0.0.1:7443".into()],
            tls: Some("auto".into()),
            ..ServeArgs::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.listen.len(), 2);
        let Listen::Tcp(_, TlsSource::Auto(names)) = &s.listen[1] else { panic!("{:?}", s.listen) };
        assert_eq!(names.iter().map(ToString::to_string).collect::<Vec<_>>(), ["ip:127.0.0.1", "dns:localhost"]);
        assert_eq!(s.tls_auto_ttl, Duration::from_secs(7 * 86_400));
        let (_d, path) = file(
            "listen = [\"unix:///tmp/b.sock\", \"tcp://10.0.0.1:443\"]\ntls = \"auto\"\ntls_name = [\"dns:kms.internal\"]\n",
        );
        let s = ServeArgs { config: Some(path), ..ServeArgs::default() }.resolve().unwrap();
        let Listen::Tcp(_, TlsSource::Auto(names)) = &s.listen[1] else { panic!("{:?}", s.listen) };
        assert_eq!(names.iter().map(ToString::to_string).collect::<Vec<_>>(), ["dns:kms.internal"]);
        assert!(ServeArgs { tls: Some("magic".into()), ..ServeArgs::default() }.resolve().is_err());
        let wildcard =
            ServeArgs { listen: vec!["tcp://0.0.0.0:8443".into()], tls: Some("auto".into()), ..ServeArgs::default() };
        assert!(wildcard.resolve().unwrap_err().to_string().starts_with("tls_name:"));
        let slow = ServeArgs {
            listen: vec!["tcp://127.0.0.1:8443".into()],
            tls: Some("auto".into()),
            tls_auto_ttl: Some("60s".into()),
            tls_refresh_interval: Some("30s".into()),
            ..ServeArgs::default()
        };
        assert!(slow.resolve().unwrap_err().to_string().starts_with("tls_refresh_interval:"));
        assert!(ServeArgs { tls_name: vec!["bogus".into()], ..ServeArgs::default() }.resolve().is_err());
    }

    #[test]
    fn garbage_is_refused_with_the_setting_named() {
        let (_d, path) = file("data_dir = \"/x\"\nmax_request_byte = 10\n");
        let e = ServeArgs { config: Some(path), ..ServeArgs::default() }.resolve().unwrap_err().to_string();
        assert!(e.contains("max_request_byte"), "{e}");
        let (_d, path) = file("max_request_bytes = \"ten\"\n");
        let e = ServeArgs { config: Some(path), ..ServeArgs::default() }.resolve().unwrap_err().to_string();
        assert!(e.contains("max_request_bytes"), "{e}");
        let (_d, path) = file("this is not toml");
        assert!(ServeArgs { config: Some(path), ..ServeArgs::default() }.resolve().is_err());
        let e = ServeArgs { key_cache_ttl: Some("1 fortnight".into()), ..ServeArgs::default() }
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("key_cache_ttl:"), "{e}");
        let e = ServeArgs { socket_mode: Some("999".into()), ..ServeArgs::default() }.resolve().unwrap_err();
        assert!(e.to_string().starts_with("socket_mode:"), "{e}");
        let e = ServeArgs { listen: vec!["tcp://127.0.0.1:1".into()], ..ServeArgs::default() }.resolve().unwrap_err();
        assert!(e.to_string().contains("requires TLS"), "{e}");
        let e = ServeArgs { key_cache_ttl: Some("2h".into()), ..ServeArgs::default() }.resolve().unwrap_err();
        assert!(e.to_string().starts_with("key_cache_ttl:"), "{e}");
        let missing = ServeArgs { config: Some("/nonexistent/kms.toml".into()), ..ServeArgs::default() };
        assert!(matches!(missing.resolve(), Err(ConfigError::Read { .. })));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("90d").unwrap(), Duration::from_secs(90 * 86400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "s", "10", "-1s", "1.5s", "10 s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
