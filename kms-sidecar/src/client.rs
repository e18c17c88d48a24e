//! A blocking client of the sidecar, and [`SidecarProvider`]: crypto-core's
//! [`KeyProvider`] backed by the sidecar, so Rust services (and `kmsctl`) seal and open
//! with data keys the sidecar generates and unwraps, while KEKs never leave it.
//!
//! Endpoints: `unix:///path/to/kms.sock`, or `https://HOST:PORT` with [`TlsOptions`] (the
//! server's CA, and a client certificate when the sidecar requires mTLS). The client owns
//! a small Tokio runtime; do not call it from inside another async runtime's worker.

use std::path::PathBuf;
use std::sync::Mutex;

use crypto_core::provider::{GeneratedDataKey, KeyProvider, ProviderError, WrappedKey};
use crypto_core::secret::DataKey;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::grpc::pb::kms_client::KmsClient;
use crate::grpc::{pb, wrapped_from_pb, wrapped_to_pb};

/// Why the client failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The endpoint string is not supported.
    #[error("unsupported endpoint {0:?}: use unix:///path/to/kms.sock or https://HOST:PORT")]
    Endpoint(String),
    /// Connecting failed.
    #[error("cannot connect to {endpoint}: {message}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// What failed.
        message: String,
    },
    /// The sidecar answered with an error status.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(#[from] tonic::Status),
    /// Runtime setup failed.
    #[error("client runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}").chars().fold(String::new(), |mut s, c| {
        if c.is_uppercase() && !s.is_empty() {
            s.push('_');
        }
        s.push(c.to_ascii_uppercase());
        s
    })
}

/// TLS settings for `https://` endpoints (PEM files).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// CA that signed the sidecar's certificate; required for `https://`.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate for mTLS.
    pub client_cert: Option<PathBuf>,
    /// Client private key for mTLS.
    pub client_key: Option<PathBuf>,
    /// API token sent as `authorization: Bearer <token>` on every call (any endpoint).
    pub token: Option<String>,
}

/// Adds the API token, if any, to every request.
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "BearerToken(..)" } else { "BearerToken(None)" })
    }
}

impl BearerToken {
    /// Sends `token` (if any) as `authorization: Bearer <token>`; refuses text a header
    /// cannot carry.
    pub fn new(token: Option<&str>) -> Result<Self, ClientError> {
        let Some(t) = token else { return Ok(Self(None)) };
        let mut v: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {}", t.trim()).parse().map_err(|_| ClientError::Connect {
                endpoint: String::new(),
                message: "the API token has characters a header cannot carry".into(),
            })?;
        v.set_sensitive(true);
        Ok(Self(Some(v)))
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// The channel type of [`SidecarClient`]: a gRPC channel that sends the token.
pub type Conn = tonic::service::interceptor::InterceptedService<Channel, BearerToken>;

fn read(path: &std::path::Path, endpoint: &str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Connect { endpoint: endpoint.into(), message: format!("{}: {e}", path.display()) })
}

/// An async gRPC channel to the sidecar's Unix socket at `path`.
pub async fn connect_unix(path: PathBuf) -> Result<Channel, tonic::transport::Error> {
    // The URI is a placeholder required by the HTTP/2 layer; the connector dials the socket.
    Endpoint::from_static("http://kms.sock")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

/// A blocking connection to the sidecar.
pub struct SidecarClient {
    runtime: tokio::runtime::Runtime,
    client: Mutex<KmsClient<Conn>>,
    endpoint: String,
}

impl std::fmt::Debug for SidecarClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarClient").field("endpoint", &self.endpoint).finish()
    }
}

impl SidecarClient {
    /// Connects to a `unix:///path` endpoint.
    pub fn connect(endpoint: &str) -> Result<Self, ClientError> {
        Self::connect_with(endpoint, &TlsOptions::default())
    }

    /// Connects to `unix:///path`, or to `https://HOST:PORT` with `tls`.
    pub fn connect_with(endpoint: &str, tls: &TlsOptions) -> Result<Self, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let connect_err = |message: String| ClientError::Connect { endpoint: endpoint.into(), message };
        let describe = |e: tonic::transport::Error| {
            format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default())
        };
        let channel = if let Some(path) = endpoint.strip_prefix("unix://").filter(|p| !p.is_empty()) {
            runtime.block_on(connect_unix(PathBuf::from(path))).map_err(describe)
        } else if endpoint.starts_with("https://") {
            let ca = tls
                .ca_cert
                .as_ref()
                .ok_or_else(|| connect_err("https:// needs the sidecar's CA (--ca-cert)".into()))?;
            let mut config = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(read(ca, endpoint)?));
            match (&tls.client_cert, &tls.client_key) {
                (Some(c), Some(k)) => {
                    config =
                        config.identity(tonic::transport::Identity::from_pem(read(c, endpoint)?, read(k, endpoint)?))
                }
                (None, None) => {}
                _ => return Err(connect_err("give both a client certificate and its key, or neither".into())),
            }
            let endpoint_owned = endpoint.to_owned();
            runtime.block_on(async move {
                Endpoint::from_shared(endpoint_owned)
                    .map_err(describe)?
                    .tls_config(config)
                    .map_err(describe)?
                    .connect()
                    .await
                    .map_err(describe)
            })
        } else {
            return Err(ClientError::Endpoint(endpoint.into()));
        }
        .map_err(connect_err)?;
        let bearer = BearerToken::new(tls.token.as_deref())
            .map_err(|_| connect_err("the API token has characters a header cannot carry".into()))?;
        let client = KmsClient::with_interceptor(channel, bearer);
        Ok(Self { runtime, client: Mutex::new(client), endpoint: endpoint.into() })
    }

    /// Runs one RPC to completion.
    pub fn call<T, F>(&self, f: impl FnOnce(KmsClient<Conn>) -> F) -> Result<T, ClientError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(self.runtime.block_on(f(client))?.into_inner())
    }
}

/// crypto-core's [`KeyProvider`] over the sidecar.
///
/// * `generate_data_key` → `GenerateDataKey`, `unwrap` → `DecryptDataKey`.
/// * `wrap` of an existing data key is refused: the sidecar wraps only keys it generates.
///   Rewrap stored objects with [`SidecarProvider::rewrap`] and
///   [`crypto_core::envelope::rewrap_stream_with`], which re-wrap inside the sidecar.
#[derive(Debug)]
pub struct SidecarProvider {
    client: SidecarClient,
}

impl SidecarProvider {
    /// A provider over a connected client.
    pub fn new(client: SidecarClient) -> Self {
        Self { client }
    }

    /// The client.
    pub fn client(&self) -> &SidecarClient {
        &self.client
    }

    /// Re-wraps every sidecar-wrapped entry under its key's primary version (others are
    /// kept as they are), without the data key leaving the sidecar.
    pub fn rewrap(&self, wrapped: &[WrappedKey]) -> Result<Vec<WrappedKey>, ProviderError> {
        wrapped
            .iter()
            .map(|w| {
                if w.provider_id != crate::kms::PROVIDER_ID {
                    return Ok(w.clone());
                }
                let req = wrapped_to_pb(w.clone());
                self.client
                    .call(|mut c| async move { c.re_encrypt_data_key(req).await })
                    .map(wrapped_from_pb)
                    .map_err(provider_error)
            })
            .collect()
    }
}

fn provider_error(e: ClientError) -> ProviderError {
    match e {
        ClientError::Status(s) if s.code() == tonic::Code::InvalidArgument => ProviderError::UnwrapFailed,
        other => ProviderError::Unavailable(other.to_string()),
    }
}

impl KeyProvider for SidecarProvider {
    fn wrap(&self, key_name: &str, _data_key: &DataKey) -> Result<Vec<WrappedKey>, ProviderError> {
        Err(ProviderError::Config(format!(
            "the sidecar wraps only data keys it generates (key {key_name:?}); use generate_data_key or rewrap"
        )))
    }

    fn unwrap(&self, wrapped: &[WrappedKey]) -> Result<DataKey, ProviderError> {
        let w = wrapped
            .iter()
            .find(|w| w.provider_id == crate::kms::PROVIDER_ID)
            .ok_or_else(|| ProviderError::NoMatchingProvider(crate::kms::PROVIDER_ID.into()))?;
        let req = wrapped_to_pb(w.clone());
        let resp = self.client.call(|mut c| async move { c.decrypt_data_key(req).await }).map_err(provider_error)?;
        let key = DataKey::from_slice(&resp.plaintext)
            .ok_or_else(|| ProviderError::Unavailable("sidecar returned a malformed data key".into()));
        let mut plaintext = resp.plaintext;
        zeroize::Zeroize::zeroize(&mut plaintext);
        key
    }

    fn generate_data_key(&self, key_name: &str) -> Result<GeneratedDataKey, ProviderError> {
        let req = pb::GenerateDataKeyRequest { key_name: key_name.into(), without_plaintext: false };
        let mut resp =
            self.client.call(|mut c| async move { c.generate_data_key(req).await }).map_err(provider_error)?;
        let data_key = DataKey::from_slice(&resp.plaintext)
            .ok_or_else(|| ProviderError::Unavailable("sidecar returned a malformed data key".into()));
        zeroize::Zeroize::zeroize(&mut resp.plaintext);
        let wrapped =
            resp.wrapped.ok_or_else(|| ProviderError::Unavailable("sidecar returned no wrapped key".into()))?;
        Ok(GeneratedDataKey { data_key: data_key?, wrapped: vec![wrapped_from_pb(wrapped)] })
    }
}
