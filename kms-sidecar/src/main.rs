//! `kms-sidecar serve`: the KMS sidecar process.
//!
//! ```text
//! kms-sidecar serve [--data-dir DIR] [--listen unix:///path/kms.sock] [--postgres CONNSTR]
//!                   [--socket-mode 600] [--max-request-bytes N]
//! kms-sidecar serve --listen tcp://IP:PORT --tls-cert C.pem --tls-key K.pem [--client-ca CA.pem]
//! ```
//!
//! Defaults: `--data-dir ./kms-data`, socket `DIR/kms.sock`, the embedded SQLite keystore
//! `DIR/keystore.db` and a root key `DIR/root.key` generated at first start (refused to
//! generate when the keystore already holds keys). Every flag also reads `KMS_*` from the
//! environment. Stops gracefully on SIGTERM or SIGINT: in-flight requests finish and the
//! socket file is removed.
#![allow(clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use kms_sidecar::keystore::{KeyStore, PostgresStore, SqliteStore};
use kms_sidecar::kms::Kms;
use kms_sidecar::root_key::{LocalRootKey, ROOT_KEY_FILE};
use kms_sidecar::server::{DEFAULT_MAX_REQUEST_BYTES, TlsFiles, serve_tcp_tls, serve_unix};

#[derive(Parser)]
#[command(name = "kms-sidecar", version, about = "KMS sidecar: gRPC kms.v1 over a local or shared keystore")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve kms.v1 (plus gRPC health and reflection).
    Serve {
        /// Data directory: keystore, root key and default socket.
        #[arg(long, env = "KMS_DATA_DIR", default_value = "./kms-data")]
        data_dir: PathBuf,
        /// Listen address: unix:///path/to.sock (default: DATA_DIR/kms.sock).
        #[arg(long, env = "KMS_LISTEN")]
        listen: Option<String>,
        /// PostgreSQL connection string; when set, keys live there instead of SQLite.
        #[arg(long, env = "KMS_POSTGRES")]
        postgres: Option<String>,
        /// Socket file permissions (octal).
        #[arg(long, env = "KMS_SOCKET_MODE", default_value = "600")]
        socket_mode: String,
        /// TLS certificate chain (PEM), required for tcp:// listeners.
        #[arg(long, env = "KMS_TLS_CERT")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM), required for tcp:// listeners.
        #[arg(long, env = "KMS_TLS_KEY")]
        tls_key: Option<PathBuf>,
        /// CA (PEM) whose client certificates are required (mTLS).
        #[arg(long, env = "KMS_CLIENT_CA")]
        client_ca: Option<PathBuf>,
        /// Largest accepted request message in bytes.
        #[arg(long, env = "KMS_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
        max_request_bytes: usize,
    },
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let Command::Serve { data_dir, listen, postgres, socket_mode, tls_cert, tls_key, client_ca, max_request_bytes } =
        cli.command;
    let mode =
        u32::from_str_radix(&socket_mode, 8).map_err(|_| format!("--socket-mode {socket_mode:?} is not octal"))?;
    if mode & !0o777 != 0 {
        return Err(format!("--socket-mode {socket_mode} out of range").into());
    }
    enum Listen {
        Unix(PathBuf),
        Tcp(std::net::SocketAddr, TlsFiles),
    }
    let listen = match listen.as_deref() {
        None => Listen::Unix(data_dir.join("kms.sock")),
        Some(l) => {
            if let Some(p) = l.strip_prefix("unix://").filter(|p| !p.is_empty()) {
                Listen::Unix(PathBuf::from(p))
            } else if let Some(addr) = l.strip_prefix("tcp://") {
                let addr: std::net::SocketAddr =
                    addr.parse().map_err(|_| format!("--listen {l:?}: expected tcp://IP:PORT"))?;
                let (Some(cert), Some(key)) = (tls_cert.clone(), tls_key.clone()) else {
                    return Err("a tcp:// listener requires TLS: give --tls-cert and --tls-key".into());
                };
                Listen::Tcp(addr, TlsFiles { cert, key, client_ca: client_ca.clone() })
            } else {
                return Err(format!("--listen {l:?}: expected unix:///path or tcp://IP:PORT").into());
            }
        }
    };
    std::fs::create_dir_all(&data_dir).map_err(|e| format!("data dir {}: {e}", data_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("data dir {}: {e}", data_dir.display()))?;
    }
    let store: Arc<dyn KeyStore> = match &postgres {
        Some(conn) => Arc::new(PostgresStore::connect(conn)?),
        None => Arc::new(SqliteStore::open(data_dir.join("keystore.db"))?),
    };
    let may_create = store.key_count()? == 0;
    let root = LocalRootKey::load_or_create(data_dir.join(ROOT_KEY_FILE), may_create)?;
    let kms = Arc::new(Kms::new(store.clone(), root));

    // The PostgreSQL client owns a runtime of its own, which must not be dropped inside
    // ours: `store` and `kms` stay alive here until the server runtime has finished.
    let backend = store.backend();
    let served = kms.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let shutdown = async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            eprintln!("kms-sidecar: shutting down");
        };
        match listen {
            Listen::Unix(socket) => {
                eprintln!("kms-sidecar: serving on unix://{} ({backend} keystore)", socket.display());
                serve_unix(served, &socket, mode, max_request_bytes, shutdown).await
            }
            Listen::Tcp(addr, tls) => {
                let mtls = if tls.client_ca.is_some() { ", client certificates required" } else { "" };
                eprintln!("kms-sidecar: serving on tcp://{addr} with TLS{mtls} ({backend} keystore)");
                serve_tcp_tls(served, addr, &tls, max_request_bytes, shutdown).await
            }
        }
    })?;
    drop(runtime);
    drop(kms);
    drop(store);
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kms-sidecar: {e}");
            ExitCode::FAILURE
        }
    }
}
