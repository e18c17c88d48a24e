//! `kms-sidecar serve`: the KMS sidecar process.
//!
//! ```text
//! kms-sidecar serve [--config FILE] [--data-dir DIR] [--listen unix:///path/kms.sock]
//!                   [--postgres CONNSTR] [--socket-mode 600] [--max-request-bytes N]
//!                   [--key-cache-ttl 1s] [--kek-cache-capacity N] [--deletion-check-interval 10s]
//!                   [--log-format text|json] [--log-level info]
//! kms-sidecar serve --listen tcp://IP:PORT --tls-cert C.pem --tls-key K.pem [--client-ca CA.pem]
//! ```
//!
//! Settings come from flags, then `KMS_*` environment variables, then the TOML file of
//! `--config`, then defaults (see [`kms_sidecar::config`]). Defaults: `--data-dir
//! ./kms-data`, socket `DIR/kms.sock`, the embedded SQLite keystore `DIR/keystore.db` and a
//! root key `DIR/root.key` generated at first start (refused to generate when the keystore
//! already holds keys). Logs go to standard error. Stops gracefully on SIGTERM or SIGINT:
//! in-flight requests finish and the socket file is removed.
#![allow(clippy::print_stderr)]

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use kms_sidecar::audit::{AuditConfig, AuditKey, AuditLog};
use kms_sidecar::config::{Listen, LogFormat, RootKeySetting, ServeArgs, Settings, TlsSource};
use kms_sidecar::keystore::{KeyStore, PostgresStore, SqliteStore};
use kms_sidecar::kms::{Kms, KmsOptions};
use kms_sidecar::metrics::Metrics;
use kms_sidecar::root_key::{LocalRootKey, ROOT_KEY_FILE, RootKey, RootKeyError};
use kms_sidecar::security::Security;
use kms_sidecar::server::{ServeError, serve_tcp_auto, serve_tcp_tls, serve_unix};
use kms_sidecar::tls_auto::AutoTls;
use zeroize::Zeroize;

#[derive(Parser)]
#[command(name = "kms-sidecar", version, about = "KMS sidecar: gRPC kms.v1 over a local or shared keystore")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve kms.v1 (plus gRPC health and reflection).
    Serve(ServeArgs),
}

fn init_logs(settings: &Settings) -> Result<(), Box<dyn std::error::Error>> {
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_level)
        .map_err(|e| format!("log_level {:?}: {e}", settings.log_level))?;
    // Colours only on a terminal: never escape codes in a log file or a collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    match settings.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    }
    .map_err(|e| format!("logging: {e}"))?;
    Ok(())
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let Command::Serve(args) = cli.command;
    let settings = args.resolve()?;
    init_logs(&settings)?;
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let data_dir = &settings.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|e| format!("data dir {}: {e}", data_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("data dir {}: {e}", data_dir.display()))?;
    }
    let store: Arc<dyn KeyStore> = match &settings.postgres {
        Some(conn) => Arc::new(PostgresStore::connect(conn)?),
        None => Arc::new(SqliteStore::open(data_dir.join("keystore.db"))?),
    };
    let root = open_root_key(&settings, store.as_ref())?;
    let options = KmsOptions { key_cache_ttl: settings.key_cache_ttl, kek_cache_capacity: settings.kek_cache_capacity };
    let kms = Arc::new(Kms::with_options(store.clone(), root, options));
    kms.verify_root().map_err(|e| format!("root key {}: {e}", kms.root().describe()))?;
    tracing::info!(root_key = %kms.root().describe(), "root key ready");

    let mut fresh = [0u8; 32];
    crypto_core::fill_random(&mut fresh);
    let key_existed = settings.audit.key_file.exists();
    let audit_key = AuditKey::load_or_create(&settings.audit.key_file, fresh)?;
    fresh.zeroize();
    let audit = Arc::new(AuditLog::open(
        AuditConfig {
            path: settings.audit.path.clone(),
            max_bytes: settings.audit.max_bytes,
            fsync: settings.audit.fsync,
        },
        audit_key,
    )?);
    let metrics = Arc::new(if settings.metrics_key_names { Metrics::new().with_key_names() } else { Metrics::new() });
    let sec = Arc::new(Security::new(kms.clone(), settings.security.clone(), audit.clone(), metrics.clone())?);
    tracing::info!(
        policy = sec.policy().source(),
        audit_log = %settings.audit.path.display(),
        audit_head = %audit.head(),
        "request gate ready"
    );
    // The start record names the head it continues from; a log that starts over although
    // its key existed (every audit file removed or archived) is said so, loudly.
    let resumed = audit.head();
    let mut start_detail = format!("kms-sidecar {}; continues from {resumed}", env!("CARGO_PKG_VERSION"));
    if key_existed && resumed.seq == 0 {
        tracing::warn!(
            audit_log = %settings.audit.path.display(),
            "the audit log starts again from seq 1 although its key existed: earlier audit files were removed or archived"
        );
        start_detail.push_str("; WARNING: log restarted from genesis although the audit key existed");
    }
    sec.event("sidecar.start", "OK", Some(&start_detail)).map_err(|e| format!("audit log: {e}"))?;
    if let Some(k8s) = &settings.k8s_kms {
        let (_, created) = kms.ensure_key(&k8s.key).map_err(|e| format!("k8s_kms_key {:?}: {e}", k8s.key))?;
        if created {
            sec.event("key.created", "OK", Some(&format!("key {}: backing the Kubernetes KMS v2 plugin", k8s.key)))
                .map_err(|e| format!("audit log: {e}"))?;
        }
    }

    // The PostgreSQL client owns a runtime of its own, which must not be dropped inside
    // ours: `store` and `kms` stay alive here until the server runtime has finished.
    let backend = store.backend();
    let served = kms.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let sec_served = sec.clone();
    let served_result = runtime.block_on(async move {
        let sec = sec_served;
        let purge = tokio::spawn(lifecycle_job(served.clone(), sec.clone(), settings.deletion_check_interval));
        let reload = tokio::spawn(reload_on_hangup(sec.clone()));
        let probe = served.root().is_remote().then(|| {
            let interval = settings.root_probe_interval();
            tokio::spawn(root_probe(served.clone(), interval))
        });
        // Every --tls auto identity is set up before any listener starts, so a failure there
        // stops the start instead of leaving half the listeners running.
        let mut prepared = Vec::new();
        for listen in settings.listen.clone() {
            let auto = match &listen {
                Listen::Tcp(_, TlsSource::Auto(names)) => {
                    let (k, names, ttl) = (served.clone(), names.clone(), settings.tls_auto_ttl);
                    let auto = tokio::task::spawn_blocking(move || AutoTls::new(k, names, ttl))
                        .await
                        .map_err(|_| ServeError::Tls("setup panicked".into()))?
                        .map_err(|e| ServeError::Tls(format!("--tls auto: {e}")))?;
                    Some(auto)
                }
                _ => None,
            };
            prepared.push((listen, auto));
        }
        // One signal stops every listener; so does the failure of any one of them.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let signals = stop_tx.clone();
        tokio::spawn(async move {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                // No handler: run until killed (never report a stop that did not happen).
                Err(_) => return std::future::pending::<()>().await,
            };
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = signals.send(true);
        });
        let limits = settings.limits;
        let mut servers = tokio::task::JoinSet::new();
        if let Some(addr) = settings.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Socket { path: addr.to_string().into(), source })?;
            tracing::info!(listen = %format!("http://{}/metrics", listener.local_addr().unwrap_or(addr)), "serving metrics");
            let (kms, metrics) = (served.clone(), metrics.clone());
            let mut stop = stop_rx.clone();
            let render = move || {
                let (kms, metrics) = (kms.clone(), metrics.clone());
                async move {
                    let (hits, misses) = kms.cache_stats();
                    metrics.set_key_cache(hits, misses);
                    let ages = tokio::task::spawn_blocking(move || key_ages(&kms)).await.unwrap_or_default();
                    metrics.render(&ages)
                }
            };
            servers.spawn(async move {
                kms_sidecar::metrics::serve(listener, render, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .map_err(|e| ServeError::Listener(format!("metrics: {e}")))
            });
        }
        for (listen, auto) in prepared {
            let mut stop = stop_rx.clone();
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let kms = served.clone();
            let sec = sec.clone();
            match (listen, auto) {
                (Listen::Unix(socket), _) => {
                    tracing::info!(listen = %format!("unix://{}", socket.display()), keystore = backend, "serving kms.v1");
                    servers.spawn(async move { serve_unix(kms, sec, &socket, settings.socket_mode, limits, shutdown).await });
                }
                (Listen::Tcp(addr, TlsSource::Files(tls)), _) => {
                    tracing::info!(
                        listen = %format!("tcp://{addr}"),
                        keystore = backend,
                        client_certificates = tls.client_ca.is_some(),
                        "serving kms.v1 with TLS"
                    );
                    servers.spawn(async move { serve_tcp_tls(kms, sec, addr, &tls, limits, shutdown).await });
                }
                (Listen::Tcp(addr, TlsSource::Auto(_)), Some(auto)) => {
                    let refresh = settings.tls_refresh_interval;
                    tracing::info!(
                        listen = %format!("tcp://{addr}"),
                        keystore = backend,
                        serial = %auto.serial(),
                        "serving kms.v1 with TLS from the sidecar's CA; client certificates from it required"
                    );
                    servers.spawn(async move { serve_tcp_auto(kms, sec, addr, auto, refresh, limits, shutdown).await });
                }
                (Listen::Tcp(..), None) => return Err(ServeError::Tls("internal: --tls auto listener not prepared".into())),
            }
        }
        if let Some(k8s) = settings.k8s_kms.clone() {
            let mut stop = stop_rx.clone();
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let (kms, sec) = (served.clone(), sec.clone());
            tracing::info!(
                listen = %format!("unix://{}", k8s.socket.display()),
                key = %k8s.key,
                "serving the Kubernetes KMS v2 plugin API"
            );
            servers.spawn(async move {
                kms_sidecar::server::serve_k8s_kms_unix(kms, sec, &k8s.socket, settings.socket_mode, &k8s.key, limits, shutdown)
                    .await
            });
        }
        // The first listener to fail stops the others gracefully; its error is the result.
        let mut result = Ok(());
        while let Some(done) = servers.join_next().await {
            let outcome = done.map_err(|_| ServeError::Listener("panicked".into())).and_then(|r| r);
            if let Err(e) = outcome {
                if result.is_ok() {
                    tracing::error!(error = %e, "a listener failed; stopping the others");
                    result = Err(e);
                }
                let _ = stop_tx.send(true);
            }
        }
        purge.abort();
        reload.abort();
        if let Some(probe) = probe {
            probe.abort();
        }
        result
    });
    // The chain's last record says the sidecar stopped cleanly (verify reports a log that
    // ends without it).
    let stop_code = if served_result.is_ok() { "OK" } else { "UNAVAILABLE" };
    if let Err(e) = sec.event("sidecar.stop", stop_code, None) {
        tracing::error!(error = %e, "audit log: could not record the stop");
    }
    served_result?;
    drop(runtime);
    drop(sec);
    drop(kms);
    drop(store);
    tracing::info!("stopped");
    Ok(())
}

/// Re-reads the policy file on every SIGHUP; a bad file leaves the old policy in force.
async fn reload_on_hangup(sec: Arc<Security>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("no SIGHUP handler: the policy cannot be reloaded without a restart");
        return;
    };
    while hup.recv().await.is_some() {
        let sec = sec.clone();
        match tokio::task::spawn_blocking(move || sec.reload_policy()).await {
            Ok(Ok(source)) => tracing::info!(policy = %source, "policy reloaded"),
            Ok(Err(e)) => tracing::error!(error = %e, "policy reload refused; the previous policy stays in force"),
            Err(_) => tracing::error!("policy reload panicked"),
        }
    }
}

/// The configured root of trust. The local key file is created only while the keystore
/// holds no keys; an AWS KMS key must answer `DescribeKey` (enabled) before serving.
fn open_root_key(settings: &Settings, store: &dyn KeyStore) -> Result<RootKey, Box<dyn std::error::Error>> {
    match &settings.root_key {
        RootKeySetting::Local => {
            let may_create = store.key_count()? == 0;
            match LocalRootKey::load_or_create(settings.data_dir.join(ROOT_KEY_FILE), may_create) {
                Ok(root) => Ok(root.into()),
                // Missing because this keystore was never wrapped by a key file?
                Err(RootKeyError::Missing(_)) if wrapped_by_aws(store)? => Err(
                    "the keystore's keys are wrapped by an AWS KMS root key; start with --root-key aws-kms:<key-id>"
                        .into(),
                ),
                Err(e) => Err(e.into()),
            }
        }
        #[cfg(feature = "aws-kms")]
        RootKeySetting::AwsKms { key_id, region, endpoint_url, grace_period } => {
            let mut config = crypto_core::aws_kms::AwsKmsConfig::new(key_id.clone());
            if let Some(region) = region {
                config = config.with_region(region.clone());
            }
            if let Some(url) = endpoint_url {
                config = config.with_endpoint_url(url.clone());
            }
            let root = kms_sidecar::aws_root::AwsRootKey::new(config, *grace_period)?;
            root.check()?;
            Ok(RootKey::Aws(root))
        }
        #[allow(unreachable_patterns)]
        other => Err(format!("root key {other:?}: this build has no AWS KMS support (feature aws-kms)").into()),
    }
}

/// Whether the keystore's stored KEK material is AWS KMS ciphertext.
fn wrapped_by_aws(store: &dyn KeyStore) -> Result<bool, Box<dyn std::error::Error>> {
    Ok(store
        .list_keys()?
        .iter()
        .flat_map(|k| k.versions.iter())
        .find_map(|v| v.wrapped_material.as_deref())
        .is_some_and(kms_sidecar::root_key::is_aws_blob))
}

/// Probes a remote root key every `interval`: keeps its grace period fresh while AWS
/// answers, and drops every cached KEK (zeroized) as soon as it is no longer usable.
async fn root_probe(kms: Arc<Kms>, interval: std::time::Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_usable = true;
    loop {
        tick.tick().await;
        let k = kms.clone();
        let Ok(usable) = tokio::task::spawn_blocking(move || k.probe_root()).await else { continue };
        match (&usable, was_usable) {
            (Err(e), true) => tracing::error!(error = %e, "root key not usable"),
            (Ok(()), false) => tracing::info!("root key usable again"),
            _ => {}
        }
        was_usable = usable.is_ok();
    }
}

/// Seconds since each key's primary version was created (for the rotation-age gauge).
fn key_ages(kms: &Kms) -> Vec<(String, u64)> {
    let now = kms.now();
    let Ok(keys) = kms.list_keys() else { return Vec::new() };
    keys.iter()
        .filter_map(|k| {
            let primary = k.versions.iter().find(|v| v.version == k.primary_version)?;
            Some((k.name.clone(), u64::try_from(now - primary.created_at).unwrap_or(0)))
        })
        .collect()
}

/// The lifecycle jobs, every `interval`: rotates keys whose rotation period has passed,
/// then destroys keys whose deletion window has passed (crypto-shredding). Every sidecar
/// sharing a keystore runs them; the store's compare-and-swap makes each change happen once.
async fn lifecycle_job(kms: Arc<Kms>, sec: Arc<Security>, interval: std::time::Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let kms = kms.clone();
        let job = move || {
            let now = kms.now();
            (kms.rotate_due_keys(now), kms.purge_due_deletions(now))
        };
        let Ok((rotated, destroyed)) = tokio::task::spawn_blocking(job).await else {
            tracing::error!("lifecycle job panicked");
            continue;
        };
        let mut events = Vec::new();
        match rotated {
            Ok(rotated) => events.extend(rotated.into_iter().map(|(name, v)| {
                ("key.rotated", format!("key {name}: rotation period passed, new primary version {v}"))
            })),
            Err(e) => tracing::warn!(error = %e, "rotation job failed; retrying at the next interval"),
        }
        match destroyed {
            Ok(destroyed) => events.extend(
                destroyed
                    .into_iter()
                    .map(|name| ("key.destroyed", format!("key {name}: deletion window passed, material erased"))),
            ),
            Err(e) => tracing::warn!(error = %e, "deletion job failed; retrying at the next interval"),
        }
        for (event, detail) in events {
            if let Err(e) = sec.event(event, "OK", Some(&detail)) {
                tracing::error!(error = %e, %detail, "audit log: could not record a lifecycle change");
            }
        }
    }
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
