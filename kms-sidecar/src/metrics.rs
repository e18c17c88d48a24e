//! Prometheus metrics for the KMS sidecar, rendered in the text exposition format (version 0.0.4).
//!
//! Only operation names, gRPC code names, rejection reasons, key names (for rotation ages) and numbers are ever
//! recorded: never key material, plaintext, tokens or other secret values. Recording is lock-free on the hot path
//! except for a shared read lock on the label-set map (the write lock is taken only the first time a label set is
//! seen). Label values are `&'static str` from the caller, which keeps the cardinality bounded.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Content type of the Prometheus text exposition format served by [`serve`].
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Most metrics connections served at once; further connections are closed on accept.
const MAX_CONNECTIONS: usize = 64;
/// A client must send a complete request head within this time (also bounds keep-alive idle time).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Hard cap on a single connection's lifetime (e.g. a client that never reads its response).
const CONNECTION_MAX_LIFETIME: Duration = Duration::from_secs(60);
/// How long in-flight connections get to finish once shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Histogram upper bounds in nanoseconds, with their rendered `le` values (the `+Inf` bucket is implicit).
const BUCKETS: [(u64, &str); 16] = [
    (100_000, "0.0001"),
    (250_000, "0.00025"),
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
    (5_000_000_000, "5"),
    (10_000_000_000, "10"),
];

/// Latency histogram: per-bucket (non-cumulative) counts plus an overflow bucket, and the sum in nanoseconds.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    fn observe(&self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        // First bound >= ns, i.e. `le` is inclusive; BUCKETS.len() is the +Inf overflow slot.
        let idx = BUCKETS.partition_point(|&(bound, _)| bound < ns);
        if let Some(bucket) = self.buckets.get(idx) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Renders `_bucket`, `_sum` and `_count` lines; `labels` is either empty or `k="v",` (with trailing comma).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0u64;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf", |&(_, le)| le);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let labels = labels.trim_end_matches(',');
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        // The count is the +Inf bucket, so the two are always consistent within one scrape.
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Counters keyed by a small, bounded label set; the common path takes only the read lock.
#[derive(Debug)]
struct LabeledCounters<K>(RwLock<HashMap<K, AtomicU64>>);

impl<K: Eq + Hash + Ord + Copy> LabeledCounters<K> {
    fn with_keys(keys: &[K]) -> Self {
        Self(RwLock::new(keys.iter().map(|&k| (k, AtomicU64::new(0))).collect()))
    }

    fn inc(&self, key: K) {
        if let Some(c) = self.0.read().unwrap_or_else(PoisonError::into_inner).get(&key) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.entry(key).or_default().fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> BTreeMap<K, u64> {
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        map.iter().map(|(&k, v)| (k, v.load(Ordering::Relaxed))).collect()
    }
}

/// Per-(op, code) request series; the duration histogram is shared by all codes of one op.
#[derive(Debug)]
struct RequestSeries {
    count: AtomicU64,
    duration: Arc<Histogram>,
}

#[derive(Debug, Default)]
struct Requests {
    series: HashMap<(&'static str, &'static str), RequestSeries>,
    by_op: HashMap<&'static str, Arc<Histogram>>,
}

/// Process-wide KMS metrics. Cheap to record from many threads; share it behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    key_names: bool,
    requests: RwLock<Requests>,
    key_cache_hits: AtomicU64,
    key_cache_misses: AtomicU64,
    audit_write_duration: Histogram,
    audit_write_failures: AtomicU64,
    rejected: LabeledCounters<&'static str>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates an empty metrics registry (the known rejection reasons start at zero).
    pub fn new() -> Self {
        Self {
            key_names: false,
            requests: RwLock::default(),
            key_cache_hits: AtomicU64::new(0),
            key_cache_misses: AtomicU64::new(0),
            audit_write_duration: Histogram::default(),
            audit_write_failures: AtomicU64::new(0),
            rejected: LabeledCounters::with_keys(&["concurrency", "rate_limit"]),
        }
    }

    /// Also renders one age series per key, labelled with the key's name. Off by default:
    /// the endpoint is unauthenticated, and key names of every tenant would be readable by
    /// any local process.
    #[must_use]
    pub fn with_key_names(mut self) -> Self {
        self.key_names = true;
        self
    }

    /// One finished request: counts `kms_requests_total{op,code}` and observes the
    /// `kms_request_duration_seconds{op}` histogram.
    pub fn record_request(&self, op: &'static str, code: &'static str, latency: Duration) {
        {
            let requests = self.requests.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(s) = requests.series.get(&(op, code)) {
                s.count.fetch_add(1, Ordering::Relaxed);
                s.duration.observe(latency);
                return;
            }
        }
        let mut requests = self.requests.write().unwrap_or_else(PoisonError::into_inner);
        let Requests { series, by_op } = &mut *requests;
        let s = series.entry((op, code)).or_insert_with(|| RequestSeries {
            count: AtomicU64::new(0),
            duration: Arc::clone(by_op.entry(op).or_default()),
        });
        s.count.fetch_add(1, Ordering::Relaxed);
        s.duration.observe(latency);
    }

    /// One key-record / KEK cache hit.
    pub fn key_cache_hit(&self) {
        self.key_cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    /// One key-record / KEK cache miss.
    pub fn key_cache_miss(&self) {
        self.key_cache_misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the cache counters to totals kept elsewhere (the KMS counts its own lookups).
    pub fn set_key_cache(&self, hits: u64, misses: u64) {
        self.key_cache_hits.store(hits, Ordering::Relaxed);
        self.key_cache_misses.store(misses, Ordering::Relaxed);
    }

    /// One audit record written; observes the `kms_audit_write_duration_seconds` histogram.
    pub fn audit_write(&self, latency: Duration) {
        self.audit_write_duration.observe(latency);
    }

    /// One failed audit write (`kms_audit_write_failures_total`).
    pub fn audit_failure(&self) {
        self.audit_write_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// One rejected request, `kms_rejected_requests_total{reason}`; `reason` is `"rate_limit"` or `"concurrency"`.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.inc(reason);
    }

    /// Renders every metric in the Prometheus text format (0.0.4), sorted deterministically.
    ///
    /// `key_ages` are `(key name, seconds since its primary version was created)`, rendered as the gauge
    /// `kms_key_primary_version_age_seconds{key="..."}` sorted by key name.
    pub fn render(&self, key_ages: &[(String, u64)]) -> String {
        let mut out = String::with_capacity(4096);
        let (counts, durations) = {
            let requests = self.requests.read().unwrap_or_else(PoisonError::into_inner);
            let counts: BTreeMap<_, _> =
                requests.series.iter().map(|(&k, s)| (k, s.count.load(Ordering::Relaxed))).collect();
            let durations: BTreeMap<_, _> = requests.by_op.iter().map(|(&op, h)| (op, Arc::clone(h))).collect();
            (counts, durations)
        };

        header(&mut out, "kms_requests_total", "counter", "Finished KMS requests by operation and gRPC status code.");
        for ((op, code), n) in counts {
            let _ = writeln!(out, "kms_requests_total{{op=\"{}\",code=\"{}\"}} {n}", escape(op), escape(code));
        }

        header(&mut out, "kms_request_duration_seconds", "histogram", "KMS request latency by operation.");
        for (op, h) in durations {
            h.render(&mut out, "kms_request_duration_seconds", &format!("op=\"{}\",", escape(op)));
        }

        header(&mut out, "kms_key_cache_hits_total", "counter", "Key-record cache hits.");
        let _ = writeln!(out, "kms_key_cache_hits_total {}", self.key_cache_hits.load(Ordering::Relaxed));
        header(&mut out, "kms_key_cache_misses_total", "counter", "Key-record cache misses (store reads).");
        let _ = writeln!(out, "kms_key_cache_misses_total {}", self.key_cache_misses.load(Ordering::Relaxed));

        header(&mut out, "kms_audit_write_duration_seconds", "histogram", "Audit record write latency.");
        self.audit_write_duration.render(&mut out, "kms_audit_write_duration_seconds", "");
        header(&mut out, "kms_audit_write_failures_total", "counter", "Failed audit record writes.");
        let _ = writeln!(out, "kms_audit_write_failures_total {}", self.audit_write_failures.load(Ordering::Relaxed));

        header(&mut out, "kms_rejected_requests_total", "counter", "Requests rejected by rate or concurrency limits.");
        for (reason, n) in self.rejected.snapshot() {
            let _ = writeln!(out, "kms_rejected_requests_total{{reason=\"{}\"}} {n}", escape(reason));
        }

        header(&mut out, "kms_keys", "gauge", "Keys in the keystore.");
        let _ = writeln!(out, "kms_keys {}", key_ages.len());
        header(
            &mut out,
            "kms_key_primary_version_age_max_seconds",
            "gauge",
            "Seconds since the oldest primary version among all keys was created (rotation lag).",
        );
        let _ = writeln!(
            out,
            "kms_key_primary_version_age_max_seconds {}",
            key_ages.iter().map(|a| a.1).max().unwrap_or(0)
        );
        if self.key_names {
            header(
                &mut out,
                "kms_key_primary_version_age_seconds",
                "gauge",
                "Seconds since the key's primary version was created.",
            );
            let mut ages: Vec<&(String, u64)> = key_ages.iter().collect();
            ages.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, age) in ages {
                let _ = writeln!(out, "kms_key_primary_version_age_seconds{{key=\"{}\"}} {age}", escape(key));
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value per the text format: backslash, double quote and line feed.
fn escape(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Refuses a non-loopback address: the metrics endpoint has no authentication.
pub fn check_loopback(addr: SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!("metrics listen address {addr} is not a loopback address (the endpoint is unauthenticated)"))
    }
}

fn text_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
    resp
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves, then lets in-flight connections finish for a
/// short grace period and returns.
///
/// Each scrape awaits `render_fn()` for the body (200, `text/plain; version=0.0.4; charset=utf-8`). Any other
/// path gets 404 and other methods on `/metrics` get 405. HTTP/1.1 only; at most 64 concurrent connections
/// (extra ones are closed), a 10 s request-head read timeout (also the keep-alive idle limit) and a 60 s cap on
/// a connection's lifetime. Errors from `accept` are logged and retried; the function returns `Ok(())` on shutdown.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    render_fn: F,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let render_fn = Arc::new(render_fn);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: too many connections, closing");
            continue;
        };
        let render_fn = Arc::clone(&render_fn);
        let mut stop_rx = stop_rx.clone();
        conns.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let render_fn = Arc::clone(&render_fn);
                async move {
                    let resp = if req.uri().path() != "/metrics" {
                        text_response(StatusCode::NOT_FOUND, "not found\n")
                    } else if req.method() != Method::GET {
                        let mut r = text_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
                        r
                    } else {
                        text_response(StatusCode::OK, render_fn().await)
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let lifetime = tokio::time::sleep(CONNECTION_MAX_LIFETIME);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = async { drop(stop_rx.wait_for(|stop| *stop).await) } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                () = lifetime => {
                    tracing::debug!(%peer, "metrics: connection lifetime exceeded, closing");
                    return;
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "metrics: connection error");
            }
        });
    }

    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::debug!(remaining = conns.len(), "metrics: aborting connections after shutdown grace period");
        conns.shutdown().await;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn line_value(out: &str, prefix: &str) -> String {
        let line = out.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line {prefix}\n{out}"));
        line.rsplit(' ').next().unwrap().to_string()
    }

    #[test]
    fn counts_and_cumulative_buckets() {
        let m = Metrics::new();
        let us = Duration::from_micros;
        m.record_request("Encrypt", "OK", us(100)); // exactly on the 0.0001 bound: inclusive
        m.record_request("Encrypt", "OK", us(101));
        m.record_request("Encrypt", "OK", us(2_000));
        m.record_request("Encrypt", "NotFound", Duration::from_secs(11)); // +Inf only
        m.record_request("Decrypt", "OK", us(1_000));
        m.key_cache_hit();
        m.key_cache_hit();
        m.key_cache_miss();
        m.audit_write(us(300));
        m.audit_failure();
        m.rejected("rate_limit");
        let out = m.render(&[]);

        assert!(out.contains("kms_requests_total{op=\"Encrypt\",code=\"OK\"} 3\n"));
        assert!(out.contains("kms_requests_total{op=\"Encrypt\",code=\"NotFound\"} 1\n"));
        let b =
            |le: &str| line_value(&out, &format!("kms_request_duration_seconds_bucket{{op=\"Encrypt\",le=\"{le}\"}}"));
        assert_eq!(b("0.0001"), "1");
        assert_eq!(b("0.00025"), "2");
        assert_eq!(b("0.001"), "2");
        assert_eq!(b("0.0025"), "3");
        assert_eq!(b("10"), "3");
        assert_eq!(b("+Inf"), "4");
        assert_eq!(line_value(&out, "kms_request_duration_seconds_count{op=\"Encrypt\"}"), "4");
        let sum: f64 = line_value(&out, "kms_request_duration_seconds_sum{op=\"Encrypt\"}").parse().unwrap();
        assert!((sum - 11.002201).abs() < 1e-9, "{sum}");
        assert_eq!(line_value(&out, "kms_request_duration_seconds_bucket{op=\"Decrypt\",le=\"0.001\"}"), "1");
        assert_eq!(line_value(&out, "kms_key_cache_hits_total "), "2");
        assert_eq!(line_value(&out, "kms_key_cache_misses_total "), "1");
        assert_eq!(line_value(&out, "kms_audit_write_duration_seconds_bucket{le=\"0.00025\"}"), "0");
        assert_eq!(line_value(&out, "kms_audit_write_duration_seconds_bucket{le=\"0.0005\"}"), "1");
        assert_eq!(line_value(&out, "kms_audit_write_duration_seconds_count "), "1");
        assert_eq!(line_value(&out, "kms_audit_write_failures_total "), "1");
        assert!(out.contains("kms_rejected_requests_total{reason=\"rate_limit\"} 1\n"));
        assert!(out.contains("kms_rejected_requests_total{reason=\"concurrency\"} 0\n"));
        // Sorted by op then code.
        let decrypt = out.find("op=\"Decrypt\",code").unwrap();
        let not_found = out.find("op=\"Encrypt\",code=\"NotFound\"").unwrap();
        let ok = out.find("op=\"Encrypt\",code=\"OK\"").unwrap();
        assert!(decrypt < not_found && not_found < ok);
    }

    #[test]
    fn key_ages_escaped_and_sorted() {
        let plain = Metrics::default().render(&[("z".into(), 5), ("secret-tenant/k".into(), 42)]);
        assert!(!plain.contains("secret-tenant"), "no key names unless asked");
        assert!(plain.contains("kms_keys 2\n") && plain.contains("kms_key_primary_version_age_max_seconds 42\n"));
        let m = Metrics::default().with_key_names();
        let out = m.render(&[("z".into(), 5), ("a\"b\\c\nd".into(), 42)]);
        let a = out.find("kms_key_primary_version_age_seconds{key=\"a\\\"b\\\\c\\nd\"} 42\n").unwrap();
        let z = out.find("kms_key_primary_version_age_seconds{key=\"z\"} 5\n").unwrap();
        assert!(a < z);
        assert!(out.lines().all(|l| l.starts_with('#') || l.starts_with("kms_")), "{out}");
    }

    #[test]
    fn help_and_type_once_per_family() {
        let m = Metrics::new().with_key_names();
        m.record_request("Encrypt", "OK", Duration::from_millis(1));
        m.record_request("Decrypt", "OK", Duration::from_millis(1));
        let out = m.render(&[("k".into(), 1)]);
        let families = [
            ("kms_requests_total", "counter"),
            ("kms_request_duration_seconds", "histogram"),
            ("kms_key_cache_hits_total", "counter"),
            ("kms_key_cache_misses_total", "counter"),
            ("kms_audit_write_duration_seconds", "histogram"),
            ("kms_audit_write_failures_total", "counter"),
            ("kms_rejected_requests_total", "counter"),
            ("kms_keys", "gauge"),
            ("kms_key_primary_version_age_max_seconds", "gauge"),
            ("kms_key_primary_version_age_seconds", "gauge"),
        ];
        for (name, kind) in families {
            assert_eq!(out.matches(&format!("# HELP {name} ")).count(), 1, "{name}");
            assert_eq!(out.matches(&format!("# TYPE {name} {kind}\n")).count(), 1, "{name}");
        }
        assert_eq!(out.lines().filter(|l| l.starts_with("# TYPE")).count(), families.len());
    }

    #[test]
    fn concurrent_recording_sums() {
        let m = Arc::new(Metrics::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    let code = if t % 2 == 0 { "OK" } else { "Internal" };
                    for _ in 0..10_000 {
                        m.record_request("Encrypt", code, Duration::from_micros(10));
                        m.key_cache_hit();
                        m.rejected("concurrency");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let out = m.render(&[]);
        assert!(out.contains("kms_requests_total{op=\"Encrypt\",code=\"OK\"} 20000\n"));
        assert!(out.contains("kms_requests_total{op=\"Encrypt\",code=\"Internal\"} 20000\n"));
        assert_eq!(line_value(&out, "kms_request_duration_seconds_count{op=\"Encrypt\"}"), "40000");
        assert_eq!(line_value(&out, "kms_request_duration_seconds_sum{op=\"Encrypt\"}"), "0.4");
        assert_eq!(line_value(&out, "kms_key_cache_hits_total "), "40000");
        assert!(out.contains("kms_rejected_requests_total{reason=\"concurrency\"} 40000\n"));
    }

    #[test]
    fn loopback_only() {
        assert!(check_loopback("127.0.0.1:0".parse().unwrap()).is_ok());
        assert!(check_loopback("[::1]:0".parse().unwrap()).is_ok());
        let err = check_loopback("0.0.0.0:9000".parse().unwrap()).unwrap_err();
        assert!(err.contains("0.0.0.0:9000"), "{err}");
        let err = check_loopback("10.0.0.1:9000".parse().unwrap()).unwrap_err();
        assert!(err.contains("10.0.0.1:9000"), "{err}");
    }

    async fn get(addr: SocketAddr, method: &str, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf)).await.unwrap().unwrap();
        buf
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn serves_metrics_and_shuts_down() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        metrics.record_request("Encrypt", "OK", Duration::from_millis(3));
        let m = Arc::clone(&metrics);
        let render = move || {
            let m = Arc::clone(&m);
            async move { m.render(&[("primary".to_string(), 7)]) }
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, render, async {
            let _ = rx.await;
        }));

        let resp = get(addr, "GET", "/metrics").await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(resp.contains("\nkms_requests_total{op=\"Encrypt\",code=\"OK\"} 1\n"), "{resp}");
        assert!(resp.contains("\nkms_key_primary_version_age_max_seconds 7\n"), "{resp}");

        assert!(get(addr, "GET", "/nope").await.starts_with("HTTP/1.1 404 "));
        assert!(get(addr, "POST", "/metrics").await.starts_with("HTTP/1.1 405 "));

        // An idle connection must not keep `serve` from returning.
        let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), server).await.expect("serve did not return");
        result.unwrap().unwrap();
    }
}
