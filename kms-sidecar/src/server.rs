//! Serving `kms.v1`, the standard gRPC health service and server reflection on a Unix
//! domain socket (mode 0600 by default).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::grpc::{KmsService, Limits, pb};
use crate::kms::Kms;
use crate::security::Security;

pub use crate::config::DEFAULT_MAX_REQUEST_BYTES;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Binding or preparing the socket failed.
    #[error("socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Building the reflection service failed.
    #[error("reflection: {0}")]
    Reflection(String),
    /// Setting up TLS failed (`--tls auto`: issuing the server certificate, the CRL).
    #[error("TLS: {0}")]
    Tls(String),
    /// A listener task ended abnormally.
    #[error("listener: {0}")]
    Listener(String),
}

/// PEM files for the TCP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA whose certificates clients must present (mTLS); `None` = no client certificates.
    pub client_ca: Option<PathBuf>,
}

/// kms.v1 plus health and reflection on `builder`.
async fn router(
    mut builder: tonic::transport::Server,
    kms: Arc<Kms>,
    sec: Arc<Security>,
    limits: Limits,
) -> Result<tonic::transport::server::Router, ServeError> {
    let max_request_bytes = limits.max_request_bytes;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<pb::kms_server::KmsServer<KmsService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    // The service enforces `max_request_bytes` on payloads (RESOURCE_EXHAUSTED); the
    // transport's own cap, 1 MiB above it, bounds memory for anything larger (tonic
    // answers OUT_OF_RANGE there).
    let service = pb::kms_server::KmsServer::new(KmsService::new(kms, limits, sec))
        .max_decoding_message_size(max_request_bytes + (1 << 20))
        .max_encoding_message_size(max_request_bytes + (1 << 20));
    Ok(builder.add_service(health_service).add_service(reflection).add_service(service))
}

fn read_pem(path: &Path) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|source| ServeError::Socket { path: path.to_path_buf(), source })
}

/// Serves on TCP with TLS (rustls: TLS 1.3 and 1.2, AEAD suites only) from PEM files, and
/// requires client certificates from `client_ca` when given. Stops like [`serve_unix`].
pub async fn serve_tcp_tls(
    kms: Arc<Kms>,
    sec: Arc<Security>,
    addr: std::net::SocketAddr,
    tls: &TlsFiles,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let identity = tonic::transport::Identity::from_pem(read_pem(&tls.cert)?, read_pem(&tls.key)?);
    let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca {
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(read_pem(ca)?));
    }
    let builder = tonic::transport::Server::builder().tls_config(config)?;
    Ok(router(builder, kms, sec, limits).await?.serve_with_shutdown(addr, shutdown).await?)
}

/// Serves on TCP with `--tls auto` (see [`crate::tls_auto`]): a server certificate from
/// the sidecar's CA, renewed and re-read with the CRL every `refresh`, and client
/// certificates from that CA required. Stops like [`serve_unix`].
pub async fn serve_tcp_auto(
    kms: Arc<Kms>,
    sec: Arc<Security>,
    addr: std::net::SocketAddr,
    tls: Arc<crate::tls_auto::AutoTls>,
    refresh: std::time::Duration,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let incoming = crate::tls_auto::incoming(addr, tls, refresh)
        .await
        .map_err(|source| ServeError::Socket { path: PathBuf::from(addr.to_string()), source })?;
    Ok(router(tonic::transport::Server::builder(), kms, sec, limits)
        .await?
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?)
}

/// Binds a Unix socket at `path` with permissions `mode`. A stale socket file from an
/// earlier run is replaced; a path that exists and is not a socket is refused.
fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, ServeError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let sock_err = |source| ServeError::Socket { path: path.to_path_buf(), source };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(sock_err)?,
        Ok(_) => {
            return Err(sock_err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not a socket")));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(sock_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(sock_err)?;
    Ok(listener)
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish and removes the
/// socket file. A stale socket file from an earlier run is replaced; a path that exists and
/// is not a socket is refused.
pub async fn serve_unix(
    kms: Arc<Kms>,
    sec: Arc<Security>,
    path: &Path,
    mode: u32,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listener = bind_unix(path, mode)?;
    let result = router(tonic::transport::Server::builder(), kms, sec, limits)
        .await?
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(path);
    Ok(result?)
}

/// Serves the Kubernetes KMS v2 plugin API (see [`crate::k8s_kms`]) over the key `key` on
/// its own Unix socket, with the gRPC health service; stops like [`serve_unix`].
pub async fn serve_k8s_kms_unix(
    kms: Arc<Kms>,
    sec: Arc<Security>,
    path: &Path,
    mode: u32,
    key: &str,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listener = bind_unix(path, mode)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<crate::k8s_kms::pb::key_management_service_server::KeyManagementServiceServer<
            crate::k8s_kms::K8sKmsService,
        >>()
        .await;
    let service = crate::k8s_kms::K8sKmsService::new(kms, sec, key, limits).into_server();
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(path);
    Ok(result?)
}
