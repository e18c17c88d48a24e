//! `--tls auto`: the TCP listener serves a certificate issued by the sidecar's own CA and
//! requires client certificates from that CA (mTLS), checked against the CA's CRL.
//!
//! The server certificate (ECDSA P-256, `--tls-auto-ttl`, 7 days by default) is renewed
//! once two thirds of its lifetime have passed, and the CRL is re-read, every
//! `--tls-refresh-interval`. Both take effect for new connections without a restart: each
//! handshake uses the acceptor current at that moment, and established connections keep
//! theirs. Only TLS 1.3 and TLS 1.2 with ECDHE and AEAD suites are offered (rustls on
//! aws-lc-rs offers nothing weaker). A handshake that does not finish within 10 s is
//! dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crypto_core::pki::{KeyType, LeafRequest, SubjectAltName, Usage, needs_renewal};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::ca::CaInit;
use crate::kms::{Kms, KmsError};

/// Renew the server certificate once this fraction of its lifetime has passed.
const RENEW_AT: f64 = 2.0 / 3.0;
/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most TLS handshakes in progress at once.
const MAX_HANDSHAKES: usize = 256;

/// The server's current certificate and key.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: zeroize::Zeroizing<Vec<u8>>,
    serial: String,
}

/// A renewable TLS server identity from the sidecar's CA.
pub struct AutoTls {
    kms: Arc<Kms>,
    names: Vec<SubjectAltName>,
    ttl: Duration,
    identity: Mutex<Identity>,
    acceptor: RwLock<TlsAcceptor>,
}

impl std::fmt::Debug for AutoTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoTls").field("names", &self.names).field("serial", &self.serial()).finish_non_exhaustive()
    }
}

fn tls_err(e: impl std::fmt::Display) -> KmsError {
    KmsError::Internal(format!("TLS setup: {e}"))
}

fn pem_certificates(pem_text: &str) -> Result<Vec<CertificateDer<'static>>, KmsError> {
    Ok(crypto_core::pki::decode_certificates(pem_text.as_bytes())?.into_iter().map(CertificateDer::from).collect())
}

impl AutoTls {
    /// Issues the first server certificate (creating the CA with defaults if the keystore
    /// has none) and builds the first acceptor.
    pub fn new(kms: Arc<Kms>, names: Vec<SubjectAltName>, ttl: Duration) -> Result<Arc<Self>, KmsError> {
        match kms.ca_info() {
            Ok(_) => {}
            Err(KmsError::NotFound(_)) => {
                let init = CaInit {
                    common_name: "KMS Sidecar CA".into(),
                    key_type: KeyType::default(),
                    ttl: Duration::from_secs(10 * 365 * 86_400),
                    policy: Default::default(),
                };
                match kms.init_ca(&init) {
                    Ok(_) => tracing::info!("created the CA for --tls auto (no CA in the keystore yet)"),
                    // Another sidecar on the same database created it meanwhile.
                    Err(KmsError::AlreadyExists(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        let identity = Self::issue(&kms, &names, ttl)?;
        let acceptor = Self::acceptor_for(&kms, &identity)?;
        tracing::info!(serial = %identity.serial, "TLS server certificate issued");
        Ok(Arc::new(Self { kms, names, ttl, identity: Mutex::new(identity), acceptor: RwLock::new(acceptor) }))
    }

    fn issue(kms: &Kms, names: &[SubjectAltName], ttl: Duration) -> Result<Identity, KmsError> {
        let issued = kms.issue_certificate(&LeafRequest {
            common_name: "kms-sidecar".into(),
            sans: names.to_vec(),
            key_type: KeyType::EcdsaP256,
            ttl,
            usage: Usage::Server,
        })?;
        let key = issued.private_key.as_ref().ok_or_else(|| tls_err("no key"))?.to_pkcs8_der();
        Ok(Identity {
            chain: pem_certificates(&issued.chain_pem)?,
            key: zeroize::Zeroizing::new(key.expose_secret().to_vec()),
            serial: issued.serial.to_hex(),
        })
    }

    fn acceptor_for(kms: &Kms, identity: &Identity) -> Result<TlsAcceptor, KmsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in pem_certificates(&kms.ca_info()?.bundle_pem)? {
            roots.add(ca).map_err(tls_err)?;
        }
        let (crl, _) = kms.crl()?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .with_crls([CertificateRevocationListDer::from(crl)])
            .only_check_end_entity_revocation()
            .build()
            .map_err(tls_err)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key.to_vec()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain.clone(), key)
            .map_err(tls_err)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Renews the certificate if due, re-reads the CRL, and swaps the acceptor. Returns
    /// whether the certificate was renewed.
    pub fn refresh(&self) -> Result<bool, KmsError> {
        let mut identity = self.identity.lock().unwrap_or_else(|p| p.into_inner());
        let leaf = identity.chain.first().map(|c| c.to_vec()).unwrap_or_default();
        let due = needs_renewal(&leaf, RENEW_AT, SystemTime::now()).unwrap_or(true);
        let mut renewal = Ok(false);
        if due {
            match Self::issue(&self.kms, &self.names, self.ttl) {
                Ok(fresh) => {
                    *identity = fresh;
                    tracing::info!(serial = %identity.serial, "TLS server certificate renewed");
                    renewal = Ok(true);
                }
                // Keep serving the current certificate, but still take in the fresh CRL.
                Err(e) => renewal = Err(e),
            }
        }
        let acceptor = Self::acceptor_for(&self.kms, &identity)?;
        *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = acceptor;
        renewal
    }

    /// Serial of the certificate served now.
    pub fn serial(&self) -> String {
        self.identity.lock().unwrap_or_else(|p| p.into_inner()).serial.clone()
    }

    fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Accepts TCP connections on `addr` and yields finished TLS streams (handshakes run
/// concurrently, each bounded by [`HANDSHAKE_TIMEOUT`]); refreshes `tls` every `refresh`.
pub(crate) async fn incoming(
    addr: SocketAddr,
    tls: Arc<AutoTls>,
    refresh: Duration,
) -> std::io::Result<
    tokio_stream::wrappers::ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>,
> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    // Both tasks end when the server drops the receiving side (shutdown).
    let refresher = tls.clone();
    let closed = tx.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(refresh);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = closed.closed() => break,
                _ = tick.tick() => {}
            }
            let t = refresher.clone();
            match tokio::task::spawn_blocking(move || t.refresh()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "TLS refresh: renewal failed; still serving the current certificate")
                }
                Err(_) => tracing::error!("TLS refresh panicked"),
            }
        }
    });
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            // Past the bound, a new connection is dropped rather than queued.
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many TLS handshakes in progress; connection dropped");
                continue;
            };
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The caller's identity: on mTLS, the client certificate's first URI SAN (`cert:<uri>`),
/// else its CN (`cert-cn:<cn>`); on the Unix socket, the peer's uid (`unix:uid=<n>`).
pub fn client_identity<T>(request: &tonic::Request<T>) -> Option<String> {
    if let Some(certs) = request.peer_certs()
        && let Some(leaf) = certs.first()
    {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(leaf).ok()?;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(uri) = name {
                    return Some(format!("cert:{uri}"));
                }
            }
        }
        // Labelled apart from URI identities, so a CN can never pass for a SPIFFE ID.
        let cn = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok().map(str::to_owned))?;
        return Some(format!("cert-cn:{cn}"));
    }
    let uds = request.extensions().get::<tonic::transport::server::UdsConnectInfo>()?;
    uds.peer_cred.map(|c| format!("unix:uid={}", c.uid()))
}
