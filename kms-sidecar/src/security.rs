//! The gate every request passes: who is calling (identity), may they (policy), are they
//! within their limits (rate, concurrency, deadline), and the audit record that must be
//! written before any answer leaves (fail closed).
//!
//! **Identity**, in this order:
//! 1. `authorization: Bearer kms_<id>_<secret>`: an API token. A token that is unknown,
//!    malformed, revoked or expired is `UNAUTHENTICATED` (one message for all, no
//!    oracle); it never falls back to the transport identity. Principal `token:<name>`.
//! 2. An mTLS client certificate: `cert:<first URI SAN>`, else `cert-cn:<CN>`.
//! 3. Unix socket peer credentials: `unix:uid=<uid>`, also matched as `unix:gid=<gid>`.
//! 4. Otherwise `anonymous`.
//!
//! Tokens are 256-bit random secrets shown once; the store keeps only their SHA-256 (a
//! slow hash adds nothing for a uniformly random 256-bit secret). The hash is compared in
//! constant time. Token records are cached for the key-cache TTL; a revocation through
//! this sidecar applies at once, through another sidecar on a shared store within it.
//!
//! **Audit**: every request ends in exactly one `result` record (its code and latency);
//! a request that changes state (key administration, secrets writes, CA operations,
//! token administration) or streams is preceded by an `attempt` record, and is not
//! carried out if that record cannot be written. A result that cannot be recorded is not
//! returned: the caller gets `UNAVAILABLE` instead.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::Digest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Request, Response, Status};

use crate::audit::{AuditEvent, AuditLog, Phase};
use crate::keystore::{StoreError, TokenRecord};
use crate::kms::{Kms, KmsError};
use crate::metrics::Metrics;
use crate::policy::{Op, Policy, PolicyError, Resource};

/// Prefix of every API token.
pub const TOKEN_PREFIX: &str = "kms_";

/// Settings of the gate.
#[derive(Debug, Clone, PartialEq)]
pub struct SecurityOptions {
    /// Policy file; `None` = only the sidecar's own Unix user may do anything.
    pub policy_path: Option<PathBuf>,
    /// Requests per second per principal (token bucket); 0 = unlimited.
    pub rate_limit: f64,
    /// Bucket size (burst) per principal.
    pub rate_burst: f64,
    /// Most requests in progress at once; more get `RESOURCE_EXHAUSTED`.
    pub max_concurrent_requests: usize,
    /// Longest a request may take when the client sets no shorter deadline.
    pub request_timeout: Duration,
    /// How long a token record is trusted before it is read again.
    pub token_cache_ttl: Duration,
}

impl Default for SecurityOptions {
    fn default() -> Self {
        Self {
            policy_path: None,
            rate_limit: 0.0,
            rate_burst: 0.0,
            max_concurrent_requests: 1024,
            request_timeout: Duration::from_secs(30),
            token_cache_ttl: Duration::from_secs(1),
        }
    }
}

/// The uid this process runs as (the owner of `/proc/self`), for the built-in policy.
pub fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// gRPC code name as audit records and metrics spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A newly created token: the text (shown once) and its stored record.
#[derive(Debug)]
pub struct NewToken {
    /// `kms_<id>_<secret>`; never stored, never logged.
    pub token: crypto_core::secret::SecretBytes,
    /// The stored record.
    pub record: TokenRecord,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The gate shared by every listener of one sidecar.
pub struct Security {
    kms: Arc<Kms>,
    policy: RwLock<Arc<Policy>>,
    options: SecurityOptions,
    owner_uid: u32,
    tokens: Mutex<HashMap<String, (TokenRecord, Instant)>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    in_flight: Arc<Semaphore>,
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
    id_prefix: String,
    next_id: AtomicU64,
    /// Bumped before every revocation: a token read that overlapped one is not cached.
    revocations: AtomicU64,
    writer: AuditGroup,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security").field("options", &self.options).finish_non_exhaustive()
    }
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Validates a token name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
fn validate_token_name(name: &str) -> Result<(), KmsError> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(KmsError::InvalidArgument("a token name is 1 to 64 of A-Z a-z 0-9 . _ -".into()));
    }
    Ok(())
}

fn store_err(e: StoreError) -> KmsError {
    match e {
        StoreError::NotFound(m) => KmsError::NotFound(m),
        StoreError::AlreadyExists(m) => KmsError::AlreadyExists(m),
        StoreError::Backend(m) => KmsError::Unavailable(m),
        other => KmsError::Internal(other.to_string()),
    }
}

/// Parses `grpc-timeout` (`<1-8 digits><H|M|S|m|u|n>`).
fn grpc_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let v = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok().filter(|_| !digits.is_empty() && digits.len() <= 8)?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl Security {
    /// A gate over `kms` writing to `audit` and counting into `metrics`. Loads the policy
    /// file, if any (an invalid one is an error: the sidecar does not start).
    pub fn new(
        kms: Arc<Kms>,
        options: SecurityOptions,
        audit: Arc<AuditLog>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PolicyError> {
        let owner_uid = own_uid().unwrap_or(u32::MAX);
        let policy = match &options.policy_path {
            Some(path) => Policy::load(path)?,
            None => Policy::owner_only(owner_uid),
        };
        let writer = AuditGroup::new(audit.clone(), metrics.clone());
        let mut prefix = [0u8; 6];
        crypto_core::fill_random(&mut prefix);
        Ok(Self {
            kms,
            policy: RwLock::new(Arc::new(policy)),
            in_flight: Arc::new(Semaphore::new(options.max_concurrent_requests)),
            options,
            owner_uid,
            tokens: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            audit,
            metrics,
            id_prefix: hex::encode(prefix),
            next_id: AtomicU64::new(1),
            revocations: AtomicU64::new(0),
            writer,
        })
    }

    /// The audit log.
    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the policy file (SIGHUP). On error the old policy stays in force. Either
    /// way an audit event records it. Returns the new policy's source.
    pub fn reload_policy(&self) -> Result<String, PolicyError> {
        let loaded = match &self.options.policy_path {
            Some(path) => Policy::load(path),
            None => Ok(Policy::owner_only(self.owner_uid)),
        };
        let (code, detail) = match &loaded {
            Ok(p) => ("OK", p.source().to_owned()),
            Err(e) => ("INVALID_ARGUMENT", e.to_string()),
        };
        if let Err(e) = self.event("policy.reload", code, Some(&detail)) {
            // Fail closed: no policy change that the audit log does not show.
            return Err(PolicyError::Invalid(format!("not applied: the audit log cannot record it ({e})")));
        }
        let policy = loaded?;
        let source = policy.source().to_owned();
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        Ok(source)
    }

    /// Writes a sidecar event (start, stop, policy reload) to the audit log.
    pub fn event(&self, op: &str, code: &str, detail: Option<&str>) -> Result<(), crate::audit::AuditError> {
        // After every record already queued (`sidecar.stop` must be the last record).
        self.writer.flush();
        let id = self.request_id();
        self.audit
            .append(&AuditEvent {
                time: SystemTime::now(),
                request_id: &id,
                principal: "sidecar",
                peer: "-",
                operation: op,
                key: None,
                key_version: None,
                phase: Phase::Event,
                code,
                latency_us: None,
                detail,
            })
            .map(|_| ())
    }

    fn request_id(&self) -> String {
        format!("{}-{:x}", self.id_prefix, self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Creates an API token for principal `token:<name>`, valid for `ttl` (or forever).
    pub fn create_token(&self, name: &str, ttl: Option<Duration>) -> Result<NewToken, KmsError> {
        validate_token_name(name)?;
        let mut id = [0u8; 8];
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        crypto_core::fill_random(&mut id);
        crypto_core::fill_random(&mut secret[..]);
        let secret_hex = zeroize::Zeroizing::new(hex::encode(&secret[..]));
        let now = now_unix();
        let record = TokenRecord {
            id: hex::encode(id),
            name: name.to_owned(),
            secret_hash: sha2::Sha256::digest(secret_hex.as_bytes()).to_vec(),
            created_at: now,
            expires_at: ttl.map(|t| now.saturating_add(i64::try_from(t.as_secs()).unwrap_or(i64::MAX))),
            revoked_at: None,
        };
        self.kms.store().add_token(&record).map_err(store_err)?;
        let token = format!("{TOKEN_PREFIX}{}_{}", record.id, secret_hex.as_str());
        Ok(NewToken { token: crypto_core::secret::SecretBytes::new(token.into_bytes()), record })
    }

    /// Every token (no secrets: ids, names, times).
    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>, KmsError> {
        self.kms.store().list_tokens().map_err(store_err)
    }

    /// Revokes a token by id, or every token of a name; effective on this sidecar at once.
    /// `may_revoke` is asked for the name of every token that would be revoked first; if it
    /// refuses any, nothing is revoked.
    pub fn revoke_tokens(
        &self,
        id_or_name: &str,
        may_revoke: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<TokenRecord>, KmsError> {
        let targets = self.list_tokens()?;
        let targets = targets.iter().filter(|t| (t.id == id_or_name || t.name == id_or_name) && t.revoked_at.is_none());
        if let Some(t) = targets.clone().find(|t| !may_revoke(&t.name)) {
            return Err(KmsError::PermissionDenied(format!("token-admin denied on token {:?}", t.name)));
        }
        self.revocations.fetch_add(1, Ordering::SeqCst);
        let revoked = self.kms.store().revoke_tokens(id_or_name, now_unix()).map_err(store_err)?;
        let mut cache = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|id, (t, _)| id != id_or_name && t.name != id_or_name);
        if revoked.is_empty() {
            return Err(KmsError::NotFound(format!("no unrevoked token with id or name {id_or_name:?}")));
        }
        Ok(revoked)
    }

    /// The token's principal, or `None` for any token that does not authenticate.
    async fn token_principal(&self, bearer: &str) -> Result<Option<String>, Status> {
        let Some((id, secret)) = bearer.strip_prefix(TOKEN_PREFIX).and_then(|t| t.split_once('_')) else {
            return Ok(None);
        };
        if id.len() != 16 || secret.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let cached = {
            let cache = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            cache.get(id).filter(|(_, at)| at.elapsed() < self.options.token_cache_ttl).map(|(t, _)| t.clone())
        };
        let record = match cached {
            Some(r) => r,
            None => {
                let kms = self.kms.clone();
                let id_owned = id.to_owned();
                let read_at = Instant::now();
                let generation = self.revocations.load(Ordering::SeqCst);
                let found = tokio::task::spawn_blocking(move || kms.store().get_token(&id_owned))
                    .await
                    .map_err(|_| Status::internal("token lookup panicked"))?;
                match found {
                    Ok(r) => {
                        let mut cache = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
                        // A revocation that began during the read may not be in `r`: such a
                        // record is used once but never cached.
                        if self.revocations.load(Ordering::SeqCst) == generation {
                            if cache.len() >= 65_536 {
                                cache.clear();
                            }
                            cache.insert(id.to_owned(), (r.clone(), read_at));
                        }
                        r
                    }
                    Err(StoreError::NotFound(_)) => return Ok(None),
                    Err(e) => return Err(Status::unavailable(format!("token lookup: {e}"))),
                }
            }
        };
        let hash = sha2::Sha256::digest(secret.as_bytes());
        let valid = crypto_core::secret::ct_eq(&hash, &record.secret_hash)
            && record.revoked_at.is_none()
            && record.expires_at.is_none_or(|e| e > now_unix());
        Ok(valid.then(|| format!("token:{}", record.name)))
    }

    fn rate_ok(&self, principal: &str) -> bool {
        if self.options.rate_limit <= 0.0 {
            return true;
        }
        let burst = self.options.rate_burst.max(1.0);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= 100_000 && !buckets.contains_key(principal) {
            // Bounded memory: forget buckets that have refilled (they are equivalent to new).
            let rate = self.options.rate_limit;
            buckets.retain(|_, b| b.tokens + b.at.elapsed().as_secs_f64() * rate < burst);
        }
        let now = Instant::now();
        let b = buckets.entry(principal.to_owned()).or_insert(Bucket { tokens: burst, at: now });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.options.rate_limit).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Starts a request: identifies the caller, applies the concurrency and rate limits
    /// and sets the deadline. Refusals here are audited and returned as the status.
    pub async fn begin<T>(self: &Arc<Self>, request: &Request<T>, op: &'static str) -> Result<Call, Status> {
        let start = Instant::now();
        let (peer, transport_names) = transport_identity(request);
        let mut call = Call {
            sec: self.clone(),
            id: self.request_id(),
            principal: String::new(),
            names: Vec::new(),
            peer,
            op,
            key: None,
            version: None,
            detail: None,
            start,
            deadline: start + self.options.request_timeout,
            permit: None,
            done: false,
        };
        if let Some(t) = grpc_timeout(request) {
            call.deadline = call.deadline.min(start + t);
        }
        // The concurrency limit comes first, so a flood of bogus tokens cannot make
        // unbounded keystore reads.
        match self.in_flight.clone().try_acquire_owned() {
            Ok(p) => call.permit = Some(p),
            Err(_) => {
                self.metrics.rejected("concurrency");
                call.principal = "unidentified".into();
                let message =
                    format!("{} requests in progress (the limit); retry later", self.options.max_concurrent_requests);
                return Err(call.fail(Status::resource_exhausted(message)).await);
            }
        }
        let bearer = request.metadata().get("authorization").map(|v| v.to_str().unwrap_or("").to_owned());
        match bearer {
            Some(v) => {
                call.principal = "unauthenticated".into();
                let principal = match v.strip_prefix("Bearer ") {
                    Some(token) => match self.token_principal(token.trim()).await {
                        Ok(p) => p,
                        Err(s) => return Err(call.fail(s).await),
                    },
                    None => None,
                };
                let Some(principal) = principal else {
                    return Err(call.fail(Status::unauthenticated("invalid, expired or revoked API token")).await);
                };
                call.principal = principal.clone();
                call.names = vec![principal];
            }
            None => {
                call.principal = transport_names.first().cloned().unwrap_or_else(|| "anonymous".into());
                call.names = if transport_names.is_empty() { vec!["anonymous".into()] } else { transport_names };
            }
        }
        if !self.rate_ok(&call.principal) {
            self.metrics.rejected("rate_limit");
            let message = format!(
                "rate limit of {} requests/s for {} exceeded; retry later",
                self.options.rate_limit, call.principal
            );
            return Err(call.fail(Status::resource_exhausted(message)).await);
        }
        Ok(call)
    }
}

/// The peer description for the audit log and the principal names of the transport.
fn transport_identity<T>(request: &Request<T>) -> (String, Vec<String>) {
    if let Some(uds) = request.extensions().get::<tonic::transport::server::UdsConnectInfo>() {
        return match uds.peer_cred {
            Some(c) => (
                format!("unix:uid={},gid={},pid={}", c.uid(), c.gid(), c.pid().map_or("?".into(), |p| p.to_string())),
                vec![format!("unix:uid={}", c.uid()), format!("unix:gid={}", c.gid())],
            ),
            None => ("unix".into(), Vec::new()),
        };
    }
    let peer = request.remote_addr().map_or_else(|| "tcp".into(), |a| format!("tcp:{a}"));
    let names = crate::tls_auto::client_identity(request).into_iter().collect();
    (peer, names)
}

/// One request in progress: who, what, on which key; finished by [`Call::finish`] (or
/// recorded as `CANCELLED` if dropped first: the client went away or its deadline passed).
pub struct Call {
    sec: Arc<Security>,
    id: String,
    principal: String,
    names: Vec<String>,
    peer: String,
    op: &'static str,
    key: Option<String>,
    version: Option<u32>,
    detail: Option<String>,
    start: Instant,
    deadline: Instant,
    permit: Option<OwnedSemaphorePermit>,
    done: bool,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call").field("id", &self.id).field("principal", &self.principal).field("op", &self.op).finish()
    }
}

impl Call {
    /// The caller's principal.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The request id (in the audit record).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// When the request must be finished.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Every name the policy matches the caller by.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// A short note for the audit record (never a secret).
    pub fn set_detail(&mut self, detail: String) {
        self.detail = Some(detail);
    }

    /// Ends the request with `status` (recorded); returns the status to send, or
    /// `UNAVAILABLE` if the record cannot be written.
    pub async fn fail(mut self, status: Status) -> Status {
        self.finish_status(status).await
    }

    /// Notes the key version the request used, for the audit record.
    pub fn set_version(&mut self, version: u32) {
        self.version = Some(version);
    }

    /// Whether the caller may do `op` on `resource` (no audit record: for filtering lists).
    pub fn may(&self, op: Op, resource: &Resource<'_>) -> bool {
        self.sec.policy().allows(&self.names, op, resource)
    }

    /// Whether the caller may do anything with key `key`.
    pub fn may_use_key(&self, key: &str) -> bool {
        self.sec.policy().allows_any_on_key(&self.names, key)
    }

    /// Checks the policy; a denial is `PERMISSION_DENIED`, the same whether or not the key
    /// exists (nothing is looked up before this check).
    pub fn authorize(&mut self, op: Op, resource: Resource<'_>) -> Result<(), Status> {
        if let Resource::Key(k) = resource
            && self.key.is_none()
        {
            self.key = Some(k.to_owned());
        }
        if self.may(op, &resource) {
            return Ok(());
        }
        let what = match resource {
            Resource::Key(k) => format!(" on key {k:?}"),
            Resource::Secret(s) => format!(" on secret {s:?}"),
            Resource::Name(n) => format!(" for name {n:?}"),
            Resource::Token(t) => format!(" on token {t:?}"),
            Resource::None => String::new(),
        };
        self.detail = Some(format!("{} denied{what}", op.name()));
        Err(Status::permission_denied(format!("{} is not allowed {}{what}", self.principal, op.name())))
    }

    /// Checks that some grant gives the caller `op` at all (before resources are known).
    pub fn authorize_op(&mut self, op: Op) -> Result<(), Status> {
        if self.sec.policy().allows_op_somewhere(&self.names, op) {
            return Ok(());
        }
        self.detail = Some(format!("{} denied", op.name()));
        Err(Status::permission_denied(format!("{} is not allowed {}", self.principal, op.name())))
    }

    /// Like [`Call::authorize`] for DescribeKey: any operation on the key.
    pub fn authorize_key_read(&mut self, key: &str) -> Result<(), Status> {
        self.key = Some(key.to_owned());
        if self.may_use_key(key) {
            return Ok(());
        }
        self.detail = Some(format!("no operation allowed on key {key:?}"));
        Err(Status::permission_denied(format!("{} is not allowed to use key {key:?}", self.principal)))
    }

    /// Writes the `attempt` record before a state change; `UNAVAILABLE` (and the change
    /// must not be made) if it cannot be written.
    pub async fn attempt(&mut self) -> Result<(), Status> {
        self.write(Phase::Attempt, "-", None).await
    }

    /// `pre` (the checks), then the `attempt` record if they passed.
    pub async fn attempt_after(&mut self, pre: Result<(), Status>) -> Result<(), Status> {
        pre?;
        self.attempt().await
    }

    /// Fails with `DEADLINE_EXCEEDED` if the deadline has passed (checked before work).
    pub fn check_deadline(&self) -> Result<(), Status> {
        if Instant::now() >= self.deadline {
            return Err(Status::deadline_exceeded("deadline passed before the operation started"));
        }
        Ok(())
    }

    fn record(&self, phase: Phase, code: &'static str, latency: Option<Duration>) -> OwnedEvent {
        OwnedEvent {
            time: SystemTime::now(),
            request_id: self.id.clone(),
            principal: self.principal.clone(),
            peer: self.peer.clone(),
            operation: self.op,
            key: self.key.clone(),
            key_version: self.version,
            phase,
            code,
            latency_us: latency.map(|l| l.as_micros() as u64),
            detail: self.detail.clone(),
        }
    }

    /// Hands the record to the audit writer and waits until it is written (fail closed).
    async fn write(&mut self, phase: Phase, code: &'static str, latency: Option<Duration>) -> Result<(), Status> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.sec.writer.submit(self.record(phase, code, latency), Some(tx));
        let written = rx.await.unwrap_or_else(|_| Err("the audit writer stopped".into()));
        written.map_err(|e| {
            tracing::error!(error = %e, request_id = %self.id, "audit log write failed: refusing the request");
            Status::unavailable("the audit log cannot be written; request refused")
        })
    }

    /// Hands the record to the audit writer without waiting (the answer is already out).
    fn write_nowait(&self, phase: Phase, code: &'static str, latency: Option<Duration>) {
        self.sec.writer.submit(self.record(phase, code, latency), None);
    }

    async fn finish_status(&mut self, status: Status) -> Status {
        self.done = true;
        let code = code_name(status.code());
        let latency = self.start.elapsed();
        self.sec.metrics.record_request(self.op, code, latency);
        match self.write(Phase::Result, code, Some(latency)).await {
            Ok(()) => status,
            Err(unavailable) => unavailable,
        }
    }

    /// Ends the request: writes its `result` record and returns `result`, or
    /// `UNAVAILABLE` (dropping the result, zeroizing what it holds) if the record cannot
    /// be written.
    pub async fn finish<T>(mut self, result: Result<T, Status>) -> Result<Response<T>, Status> {
        self.done = true;
        let latency = self.start.elapsed();
        let code = match &result {
            Ok(_) => "OK",
            Err(s) => code_name(s.code()),
        };
        self.sec.metrics.record_request(self.op, code, latency);
        self.write(Phase::Result, code, Some(latency)).await?;
        Ok(Response::new(result?))
    }

    /// Ends a request whose answer already went out (a stream): records the outcome.
    pub fn finish_stream(mut self, result: Result<(), Status>) {
        self.done = true;
        let latency = self.start.elapsed();
        let code = match &result {
            Ok(()) => "OK",
            Err(s) => code_name(s.code()),
        };
        self.sec.metrics.record_request(self.op, code, latency);
        self.write_nowait(Phase::Result, code, Some(latency));
    }
}

/// An audit record waiting for the writer thread.
struct OwnedEvent {
    time: SystemTime,
    request_id: String,
    principal: String,
    peer: String,
    operation: &'static str,
    key: Option<String>,
    key_version: Option<u32>,
    phase: Phase,
    code: &'static str,
    latency_us: Option<u64>,
    detail: Option<String>,
}

impl OwnedEvent {
    fn event(&self) -> AuditEvent<'_> {
        AuditEvent {
            time: self.time,
            request_id: &self.request_id,
            principal: &self.principal,
            peer: &self.peer,
            operation: self.operation,
            key: self.key.as_deref(),
            key_version: self.key_version,
            phase: self.phase,
            code: self.code,
            latency_us: self.latency_us,
            detail: self.detail.as_deref(),
        }
    }
}

type AuditReply = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Group commit of audit records on a writer thread of its own: every request queues its
/// record and waits; the writer takes everything queued, appends it with one `write(2)`
/// and releases each waiting request with the outcome. Under load one write carries many
/// records; a lone request's record is written as soon as the writer wakes. Nothing is
/// released before its record is written.
///
/// The write runs on this thread, never on a tokio worker: a worker that wrote for the
/// others kept writing while records kept coming, and the tasks queued on it (an HTTP/2
/// connection among them) waited the whole time (the soak bursts in benches/RESULTS.md).
struct AuditGroup {
    shared: Arc<AuditQueue>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the requests and the writer thread share.
struct AuditQueue {
    log: Arc<AuditLog>,
    metrics: Arc<Metrics>,
    state: Mutex<AuditQueueState>,
    /// Signalled when a record is queued or the group closes.
    work: std::sync::Condvar,
    /// Signalled when the writer has written everything queued.
    idle: std::sync::Condvar,
}

#[derive(Default)]
struct AuditQueueState {
    records: Vec<(OwnedEvent, Option<AuditReply>)>,
    /// The writer holds records taken from `records` that are not yet written.
    writing: bool,
    closed: bool,
    /// No writer thread (it could not be started, or it stopped): each request writes its
    /// own record.
    inline: bool,
}

impl AuditGroup {
    fn new(log: Arc<AuditLog>, metrics: Arc<Metrics>) -> Self {
        let shared = Arc::new(AuditQueue {
            log,
            metrics,
            state: Mutex::new(AuditQueueState::default()),
            work: std::sync::Condvar::new(),
            idle: std::sync::Condvar::new(),
        });
        let queue = shared.clone();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || queue.run())
            .map_err(
                |e| tracing::error!(error = %e, "cannot start the audit writer thread; writing on request threads"),
            )
            .ok();
        shared.lock().inline = thread.is_none();
        Self { shared, thread }
    }

    fn submit(&self, event: OwnedEvent, reply: Option<AuditReply>) {
        let mut st = self.shared.lock();
        st.records.push((event, reply));
        if st.inline {
            let batch = std::mem::take(&mut st.records);
            drop(st);
            self.shared.write_batch(batch);
            return;
        }
        drop(st);
        self.shared.work.notify_one();
    }

    /// Waits until every record queued so far is written (or failed).
    fn flush(&self) {
        let mut st = self.shared.lock();
        while !st.inline && (st.writing || !st.records.is_empty()) {
            st = self.shared.idle.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for AuditGroup {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
        if let Some(thread) = self.thread.take() {
            // The writer writes what is queued before it stops.
            let _ = thread.join();
        }
    }
}

/// Hands the writing back to the requests when the writer thread ends, also by a panic:
/// records still queued then are dropped, so their requests are refused (UNAVAILABLE) and
/// nothing waits for a writer that is gone.
struct WriterGone<'a>(&'a AuditQueue);

impl Drop for WriterGone<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.inline = true;
        st.writing = false;
        let lost = std::mem::take(&mut st.records);
        drop(st);
        self.0.idle.notify_all();
        if !lost.is_empty() {
            tracing::error!(records = lost.len(), "the audit writer thread stopped; queued records were not written");
        }
    }
}

impl AuditQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, AuditQueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer thread: until closed, writes whatever is queued, one batch per write.
    fn run(&self) {
        let _gone = WriterGone(self);
        let mut st = self.lock();
        loop {
            if st.records.is_empty() {
                st.writing = false;
                self.idle.notify_all();
                if st.closed {
                    return;
                }
                st = self.work.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let batch = std::mem::take(&mut st.records);
            st.writing = true;
            drop(st);
            self.write_batch(batch);
            st = self.lock();
        }
    }

    /// Appends `batch` with one write and releases each waiting request with the outcome.
    fn write_batch(&self, batch: Vec<(OwnedEvent, Option<AuditReply>)>) {
        let events: Vec<AuditEvent<'_>> = batch.iter().map(|(e, _)| e.event()).collect();
        let t = Instant::now();
        let result = self.log.append_batch(&events).map(drop).map_err(|e| e.to_string());
        match &result {
            Ok(()) => self.metrics.audit_write(t.elapsed()),
            Err(_) => self.metrics.audit_failure(),
        }
        drop(events);
        for (_, reply) in batch {
            if let Some(reply) = reply {
                let _ = reply.send(result.clone());
            }
        }
    }
}
impl Drop for Call {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            let latency = self.start.elapsed();
            self.sec.metrics.record_request(self.op, "CANCELLED", latency);
            self.write_nowait(Phase::Result, "CANCELLED", Some(latency));
        }
        drop(self.permit.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditConfig, AuditKey};

    fn event(i: usize) -> OwnedEvent {
        OwnedEvent {
            time: SystemTime::now(),
            request_id: format!("req-{i}"),
            principal: "uid:0".into(),
            peer: "-".into(),
            operation: "Encrypt",
            key: Some("tenant/k".into()),
            key_version: Some(1),
            phase: Phase::Result,
            code: "OK",
            latency_us: Some(1),
            detail: None,
        }
    }

    /// Records from many threads at once all reach the log (waiting ones released with
    /// `Ok` only once written), `flush` returns only when the queue is written, and
    /// records queued without a waiter are written before the group is dropped.
    #[test]
    fn audit_group_writes_every_record_and_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig { path: dir.path().join("audit.log"), max_bytes: 64 << 10, fsync: false };
        let log = Arc::new(AuditLog::open(config, AuditKey::from_bytes([7; 32])).unwrap());
        let metrics = Arc::new(Metrics::default());
        let group = Arc::new(AuditGroup::new(log.clone(), metrics.clone()));
        assert!(group.thread.is_some(), "the writer thread did not start");
        let (threads, per_thread) = (4, 300);
        std::thread::scope(|s| {
            for t in 0..threads {
                let group = &group;
                let log = &log;
                s.spawn(move || {
                    for i in 0..per_thread {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        let before = log.head().seq;
                        group.submit(event(t * per_thread + i), Some(tx));
                        assert_eq!(rx.blocking_recv().unwrap(), Ok(()));
                        assert!(log.head().seq > before, "released before its record was written");
                    }
                });
            }
        });
        assert_eq!(log.head().seq, (threads * per_thread) as u64);
        for i in 0..50 {
            group.submit(event(i), None);
        }
        group.flush();
        assert_eq!(log.head().seq, (threads * per_thread + 50) as u64);
        for i in 0..50 {
            group.submit(event(i), None);
        }
        drop(Arc::into_inner(group).expect("the only reference"));
        assert_eq!(log.head().seq, (threads * per_thread + 100) as u64);
        // Without a writer thread a request writes its own record before `submit` returns.
        let group = AuditGroup::new(log.clone(), metrics);
        group.shared.lock().inline = true;
        let before = log.head().seq;
        group.submit(event(0), None);
        assert_eq!(log.head().seq, before + 1);
        drop(group);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files > 1, "64 KiB rotation should have produced rotated files");
        let lines: usize = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap().lines().count())
            .sum();
        assert_eq!(lines, threads * per_thread + 101);
    }
}
