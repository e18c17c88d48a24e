//! `kms-sidecar serve`: the KMS sidecar process.
//!
//! ```text
//! kms-sidecar serve [--data-dir DIR] [--listen unix:///path/kms.sock] [--postgres CONNSTR]
//!                   [--socket-mode 600] [--max-request-bytes N]
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
use kms_sidecar::server::{DEFAULT_MAX_REQUEST_BYTES, serve_unix};

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
        /// Largest accepted request message in bytes.
        #[arg(long, env = "KMS_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
        max_request_bytes: usize,
    },
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let Command::Serve { data_dir, listen, postgres, socket_mode, max_request_bytes } = cli.command;
    let mode =
        u32::from_str_radix(&socket_mode, 8).map_err(|_| format!("--socket-mode {socket_mode:?} is not octal"))?;
    if mode & !0o777 != 0 {
        return Err(format!("--socket-mode {socket_mode} out of range").into());
    }
    let socket = match listen.as_deref() {
        None => data_dir.join("kms.sock"),
        Some(l) => match l.strip_prefix("unix://") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                return Err(format!(
                    "--listen {l:?}: only unix:///path is supported (TLS over TCP is not available yet)"
                )
                .into());
            }
        },
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
        eprintln!("kms-sidecar: serving on unix://{} ({backend} keystore)", socket.display());
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
        serve_unix(served, &socket, mode, max_request_bytes, shutdown).await
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
