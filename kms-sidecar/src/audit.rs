//! Tamper-evident, hash-chained, keyed, fail-closed audit log: one JSON line per record.
//!
//! The sidecar calls [`AuditLog::append`] for every request before it releases the response and
//! refuses the request (UNAVAILABLE) when that fails: `append` returns `Ok` only once the whole
//! line has been handed to the kernel with write(2) (plus `fdatasync` when `fsync` is set).
//!
//! # Record format
//!
//! One line per record: a UTF-8 JSON object (serde_json's escaping, so control characters in
//! caller-supplied strings such as a newline are escaped and never break the line), with the
//! fields in this order, optional ones (`key`, `version`, `latency_us`, `detail`) left out when
//! absent, followed by `\n`:
//!
//! ```text
//! {"seq":42,"ts":"2026-11-24T06:47:11.123456Z","id":"<request id>","principal":"...","peer":"...",
//!  "op":"Encrypt","key":"tenant-a/db","version":3,"phase":"result","code":"OK","latency_us":87,
//!  "detail":"...","prev":"<64 hex>","mac":"<64 hex>"}
//! ```
//! (shown wrapped; a record is a single line).
//!
//! - `seq` starts at 1 and increases by exactly 1 per record, across rotated files.
//! - `ts` is RFC 3339 UTC with microseconds and `Z` (times before 1970 are written as the epoch).
//! - `phase` is `attempt`, `result` or `event`; `code` is a gRPC code name such as `OK`.
//! - `prev` is the `mac` of the previous record (64 zeros for seq 1).
//! - `mac` is HMAC-SHA256(audit key, B) in lower-case hex, where B is the exact bytes of the
//!   object without the `mac` field: `{"seq":...,"prev":"<64 hex>"}`. The written line is B with
//!   its final `}` replaced by `,"mac":"<64 hex>"}`. A verifier strips the 74-byte suffix
//!   `,"mac":"<64 hex>"}`, appends `}`, recomputes the HMAC and compares in constant time, then
//!   parses B to read `seq`, `prev` and `op`. No JSON canonicalization is involved.
//!
//! # Files
//!
//! The active file is [`AuditConfig::path`] (mode 0600; its directory is created with mode 0700).
//! Before a record that would take the file past `max_bytes` (0: never), a non-empty active file
//! is renamed to `<path>.<seq of its first record, 20 digits>`, e.g. `audit.log.00000000000000000001`,
//! and a fresh active file is started; the chain simply continues. If the path is removed or
//! replaced, the next append reopens it, or fails (UNAVAILABLE, head unchanged) until it can.
//! At start the log resumes from the last line of the active file, or else of the newest rotated
//! file; that line must pass its MAC check and end in a newline, or [`AuditLog::open`] refuses.
//! A second process cannot open the same active file (advisory `flock`). A non-empty file found
//! at the path on reopen is continued only if its last record is the current head. A failed write
//! (or `fdatasync`) is cut back off with `set_len`; if even that fails, appends are refused until
//! it succeeds, so a torn line is never followed by a record. Lines over 1 MiB are refused.
//!
//! [`verify`] checks a set of files (in any order) and reports the first problem found.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// The `op` of the event record the sidecar writes on a clean shutdown.
pub const STOP_OP: &str = "sidecar.stop";
/// Length of `,"mac":"<64 hex>"}`.
const MAC_SUFFIX_LEN: usize = 74;
const MAC_PREFIX: &[u8] = b",\"mac\":\"";
/// Longest record line written or accepted (newline excluded).
const MAX_LINE: usize = 1 << 20;
/// How much of a file's end is read first to find its last line.
const TAIL_WINDOW: u64 = 64 * 1024;
const ZERO_MAC: [u8; 32] = [0; 32];

/// The 32-byte secret key that MACs the records; zeroized on drop.
pub struct AuditKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

impl AuditKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Reads a key file: exactly 64 hex characters, optionally followed by a newline.
    /// Errors name the path, never the content.
    pub fn load(path: &Path) -> Result<Self, AuditError> {
        let text = Zeroizing::new(fs::read(path).map_err(|e| io_error(path, e))?);
        let digits = text.strip_suffix(b"\n").unwrap_or(&text);
        let mut key = Zeroizing::new([0u8; 32]);
        if digits.len() != 64 || hex::decode_to_slice(digits, &mut key[..]).is_err() {
            return Err(AuditError::Key {
                path: path.to_path_buf(),
                message: "not an audit key file: expected exactly 64 hex characters, optionally followed by a newline"
                    .into(),
            });
        }
        Ok(Self(key))
    }

    /// Loads the key file, or if it does not exist writes `fresh` to it (hex and a newline, mode
    /// 0600, fsynced) and returns it. The file is written under a temporary name in the same
    /// directory and then linked into place without overwriting (a concurrent creator wins and
    /// its key is loaded); the directory is fsynced afterwards.
    pub fn load_or_create(path: &Path, fresh: [u8; 32]) -> Result<Self, AuditError> {
        match Self::load(path) {
            Err(AuditError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let fresh = Self::from_bytes(fresh);
        let dir = parent_dir(path);
        create_dir(dir)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = fs::remove_file(&tmp); // a leftover of a crash; absent normally
        let written = (|| {
            let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            let mut text = Zeroizing::new(hex::encode(&fresh.0[..]));
            text.push('\n');
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::hard_link(&tmp, path)
        })();
        let _ = fs::remove_file(&tmp);
        match written {
            Ok(()) => {
                sync_dir(dir)?;
                Ok(fresh)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(io_error(path, e)),
        }
    }

    fn mac(&self, data: &[u8]) -> [u8; 32] {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match <HmacSha256 as Mac>::new_from_slice(&self.0[..]) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts any key length"),
        };
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

/// Where and how the log is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// The active file, e.g. `/var/lib/kms/audit/audit.log`; rotated files sit beside it.
    pub path: PathBuf,
    /// Rotate before a record would take the active file past this size; 0: never rotate.
    pub max_bytes: u64,
    /// `fdatasync` after every record (and fsync the directory on rotation and file creation).
    pub fsync: bool,
}

/// The chain head: the seq and MAC of the last record written (seq 0, zero MAC: empty log).
/// Displayed and parsed as `SEQ:HEX64`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AuditHead {
    /// Sequence number of the last record.
    pub seq: u64,
    /// Its MAC.
    pub mac: [u8; 32],
}

impl AuditHead {
    /// The head of an empty log.
    pub const GENESIS: AuditHead = AuditHead { seq: 0, mac: ZERO_MAC };
}

impl fmt::Display for AuditHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, hex::encode(self.mac))
    }
}

/// A string that is not an [`AuditHead`] (`SEQ:HEX64`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an audit head must look like SEQ:HEX64 (a sequence number, a colon, 64 hex digits)")]
pub struct ParseHeadError;

impl FromStr for AuditHead {
    type Err = ParseHeadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (seq, mac) = s.trim().split_once(':').ok_or(ParseHeadError)?;
        let seq = seq.parse().map_err(|_| ParseHeadError)?;
        Ok(Self { seq, mac: decode_mac(mac.as_bytes()).ok_or(ParseHeadError)? })
    }
}

/// Which step of a request a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The request was authorized and is about to run.
    Attempt,
    /// The request finished (or was refused) with `code`.
    Result,
    /// A sidecar event (start, stop, key rotation, ...), not tied to a request's outcome.
    Event,
}

/// What one record says. Strings come from callers and clients and are never trusted: they are
/// JSON-escaped. Never put secrets in any field.
#[derive(Debug, Clone, Copy)]
pub struct AuditEvent<'a> {
    /// When it happened.
    pub time: SystemTime,
    /// The request id.
    pub request_id: &'a str,
    /// The authenticated caller.
    pub principal: &'a str,
    /// The peer address.
    pub peer: &'a str,
    /// The operation, e.g. `Encrypt`.
    pub operation: &'a str,
    /// The key name, if any.
    pub key: Option<&'a str>,
    /// The key version, if any.
    pub key_version: Option<u32>,
    /// Attempt, result or event.
    pub phase: Phase,
    /// gRPC code name, e.g. `OK`, `PERMISSION_DENIED`.
    pub code: &'a str,
    /// Time taken, in microseconds.
    pub latency_us: Option<u64>,
    /// Short reason (e.g. which permission was missing); never secrets.
    pub detail: Option<&'a str>,
}

/// The fields of a record, in line order, up to and including `prev` (the MACed bytes).
#[derive(Serialize)]
struct Record<'a> {
    seq: u64,
    ts: &'a str,
    id: &'a str,
    principal: &'a str,
    peer: &'a str,
    op: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    phase: Phase,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    prev: &'a str,
}

/// Why the audit log could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Reading or writing a file failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The audit key file is unusable.
    #[error("audit key {path}: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong (never the content).
        message: String,
    },
    /// The log cannot be resumed: its last record is torn or fails its MAC check.
    #[error("audit log {path} line {line}: {message}")]
    Tampered {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong and what to do.
        message: String,
    },
    /// The record could not be written: the request must be refused (fail closed).
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
}

fn io_error(path: &Path, source: io::Error) -> AuditError {
    AuditError::Io { path: path.to_path_buf(), source }
}

/// The append-only audit log. `Send + Sync`; appends are serialized by an internal mutex.
pub struct AuditLog {
    config: AuditConfig,
    key: AuditKey,
    state: Mutex<State>,
}

struct State {
    /// The open active file; `None` once it must be reopened.
    file: Option<File>,
    /// Set when a failed write left a torn line that could not be cut off: its good length.
    torn: Option<u64>,
    /// Seq of the active file's first record (or of the next record while it is empty).
    first_seq: u64,
    head: AuditHead,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog").field("config", &self.config).field("head", &self.head()).finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (creating if needed) the active file and resumes the chain from the last record of
    /// the active file, or else of the newest rotated file, or else from genesis.
    /// Refuses with [`AuditError::Tampered`] when that record is torn or fails its MAC check.
    pub fn open(config: AuditConfig, key: AuditKey) -> Result<Self, AuditError> {
        let path = config.path.clone();
        if path.file_name().is_none() {
            return Err(AuditError::Unavailable(format!("audit log path {} has no file name", path.display())));
        }
        create_dir(parent_dir(&path))?;
        let file = open_active(&path).map_err(|e| io_error(&path, e))?;
        let (head, first_seq) = match last_head(&file, &path, &key)? {
            Some(head) => (head, first_seq(&file, &path)?),
            None => {
                let head = match newest_rotated(&path)? {
                    Some(rotated) => {
                        let f = File::open(&rotated).map_err(|e| io_error(&rotated, e))?;
                        last_head(&f, &rotated, &key)?.ok_or_else(|| tampered(&f, &rotated, "the file is empty"))?
                    }
                    None => AuditHead::GENESIS,
                };
                (head, head.seq.saturating_add(1))
            }
        };
        if config.fsync {
            sync_dir(parent_dir(&path))?;
        }
        Ok(Self { config, key, state: Mutex::new(State { file: Some(file), torn: None, first_seq, head }) })
    }

    /// Appends one record and returns the new head. `Ok` means the whole line reached the
    /// kernel (and the disk, with `fsync`); on `Err` nothing was added and the head is unchanged.
    pub fn append(&self, event: &AuditEvent<'_>) -> Result<AuditHead, AuditError> {
        self.append_batch(std::slice::from_ref(event))
    }

    /// Appends several records with one write (group commit): all of them or none. Returns
    /// the new head. The same guarantees as [`AuditLog::append`] hold for the whole batch.
    pub fn append_batch(&self, events: &[AuditEvent<'_>]) -> Result<AuditHead, AuditError> {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let st = &mut *guard;
        let Some(first) = st.head.seq.checked_add(1) else {
            return Err(unavailable("the sequence number is exhausted"));
        };
        let mut head = st.head;
        let mut lines = Vec::new();
        for event in events {
            let seq = head.seq.checked_add(1).ok_or_else(|| unavailable("the sequence number is exhausted"))?;
            let (line, mac) = self.encode(seq, &head.mac, event)?;
            lines.extend_from_slice(&line);
            head = AuditHead { seq, mac };
        }
        if lines.is_empty() {
            return Ok(st.head);
        }
        let before = self.prepare(st, first, lines.len() as u64)?;
        let Some(file) = st.file.as_ref() else {
            return Err(unavailable(format!("{} is not open", self.config.path.display())));
        };
        let written =
            (&*file).write_all(&lines).and_then(|()| if self.config.fsync { file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            if file.set_len(before).is_err() {
                st.torn = Some(before);
            }
            return Err(unavailable(format!("writing {}: {e}", self.config.path.display())));
        }
        st.head = head;
        Ok(head)
    }

    /// The head: seq and MAC of the last record written (or resumed).
    pub fn head(&self) -> AuditHead {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).head
    }

    /// The active file's path.
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// The record line (with its newline) and its MAC.
    fn encode(&self, seq: u64, prev: &[u8; 32], ev: &AuditEvent<'_>) -> Result<(Vec<u8>, [u8; 32]), AuditError> {
        let ts = rfc3339_micros(ev.time);
        let prev = hex::encode(prev);
        let record = Record {
            seq,
            ts: &ts,
            id: ev.request_id,
            principal: ev.principal,
            peer: ev.peer,
            op: ev.operation,
            key: ev.key,
            version: ev.key_version,
            phase: ev.phase,
            code: ev.code,
            latency_us: ev.latency_us,
            detail: ev.detail,
            prev: &prev,
        };
        let mut line = serde_json::to_vec(&record).map_err(|e| unavailable(format!("encoding a record: {e}")))?;
        let mac = self.key.mac(&line);
        if line.pop() != Some(b'}') || line.len() + MAC_SUFFIX_LEN > MAX_LINE {
            return Err(unavailable(format!("record seq {seq} is too long ({} bytes)", line.len())));
        }
        line.extend_from_slice(MAC_PREFIX);
        line.extend_from_slice(hex::encode(mac).as_bytes());
        line.extend_from_slice(b"\"}\n");
        Ok((line, mac))
    }

    /// Makes `st.file` an open, writable active file with room for `len` more bytes (repairing,
    /// reopening and rotating as needed) and returns its current size.
    fn prepare(&self, st: &mut State, seq: u64, len: u64) -> Result<u64, AuditError> {
        let path = &self.config.path;
        if let (Some(good), Some(file)) = (st.torn, st.file.as_ref()) {
            file.set_len(good).map_err(|e| {
                unavailable(format!("{}: cannot remove a torn record left by a failed write: {e}", path.display()))
            })?;
            st.torn = None;
        }
        // A removed or replaced path means the open file no longer reaches the log.
        if st.file.as_ref().is_some_and(|file| !same_file(file, path)) {
            st.file = None;
        }
        let mut size = self.ensure_open(st, seq)?;
        if self.config.max_bytes > 0 && size > 0 && size.saturating_add(len) > self.config.max_bytes {
            let target = rotated_name(path, st.first_seq);
            if fs::symlink_metadata(&target).is_ok() {
                return Err(unavailable(format!(
                    "cannot rotate {}: {} already exists",
                    path.display(),
                    target.display()
                )));
            }
            fs::rename(path, &target)
                .map_err(|e| unavailable(format!("rotating {} to {}: {e}", path.display(), target.display())))?;
            st.file = None;
            sync_dir(parent_dir(path)).map_err(|e| unavailable(e.to_string()))?;
            size = self.ensure_open(st, seq)?;
        }
        Ok(size)
    }

    /// Opens the active file if it is not open; returns its size.
    fn ensure_open(&self, st: &mut State, seq: u64) -> Result<u64, AuditError> {
        let path = &self.config.path;
        if let Some(file) = &st.file {
            return file_len(file, path);
        }
        let file = open_active(path).map_err(|e| unavailable(format!("opening {}: {e}", path.display())))?;
        let size = file_len(&file, path)?;
        if size == 0 {
            st.first_seq = seq;
            if self.config.fsync {
                sync_dir(parent_dir(path)).map_err(|e| unavailable(e.to_string()))?;
            }
        } else {
            // A non-empty file appeared at the path: continue it only if it ends at our head.
            match last_head(&file, path, &self.key) {
                Ok(Some(head)) if head == st.head => {
                    st.first_seq = first_seq(&file, path).map_err(|e| unavailable(e.to_string()))?
                }
                _ => {
                    let (path, head) = (path.display(), st.head);
                    let m = format!(
                        "{path} was replaced by a file that does not end at the log head {head}; move it aside"
                    );
                    return Err(unavailable(m));
                }
            }
        }
        (st.torn, st.file) = (None, Some(file));
        Ok(size)
    }
}

fn unavailable(message: impl Into<String>) -> AuditError {
    AuditError::Unavailable(message.into())
}

fn file_len(file: &File, path: &Path) -> Result<u64, AuditError> {
    file.metadata().map(|m| m.len()).map_err(|e| unavailable(format!("{}: {e}", path.display())))
}

/// Opens the active file for append (creating it, mode 0600) and takes an exclusive lock on it.
fn open_active(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "locked by another process (is a second sidecar using the same audit log?)",
        )),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn create_dir(dir: &Path) -> Result<(), AuditError> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io_error(dir, e))
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, e))
}

/// `<path>.<first seq, 20 digits>`.
fn rotated_name(path: &Path, first_seq: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{first_seq:020}"));
    PathBuf::from(name)
}

/// The rotated file of `path` with the greatest name, if any.
fn newest_rotated(path: &Path) -> Result<Option<PathBuf>, AuditError> {
    let dir = parent_dir(path);
    let Some(base) = path.file_name() else { return Ok(None) };
    let mut best: Option<PathBuf> = None;
    for entry in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let name = entry.file_name();
        let rest = name.as_bytes().strip_prefix(base.as_bytes()).and_then(|r| r.strip_prefix(b"."));
        if rest.is_some_and(|r| r.len() == 20 && r.iter().all(u8::is_ascii_digit))
            && best.as_ref().is_none_or(|b| b.file_name().is_some_and(|b| b < name.as_os_str()))
        {
            best = Some(path.with_file_name(name));
        }
    }
    Ok(best)
}

/// The head recorded by the last line of `file`, or `None` if the file is empty.
fn last_head(file: &File, path: &Path, key: &AuditKey) -> Result<Option<AuditHead>, AuditError> {
    let len = file.metadata().map_err(|e| io_error(path, e))?.len();
    if len == 0 {
        return Ok(None);
    }
    let mut window = TAIL_WINDOW;
    let line = loop {
        let start = len.saturating_sub(window);
        let mut buf = vec![0; usize::try_from(len - start).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut buf, start).map_err(|e| io_error(path, e))?;
        if buf.pop() != Some(b'\n') {
            return Err(tampered(file, path, "the last record is incomplete (no final newline: a torn write)"));
        }
        match buf.iter().rposition(|&b| b == b'\n') {
            Some(i) => break buf.split_off(i + 1),
            None if start == 0 => break buf,
            None if window >= MAX_LINE as u64 => return Err(tampered(file, path, "the last line is too long")),
            None => window = window.saturating_mul(4),
        }
    };
    match check_line(&line, key, "the last line") {
        Ok(rec) => Ok(Some(AuditHead { seq: rec.seq, mac: rec.mac })),
        Err((_, message)) => Err(tampered(file, path, &message)),
    }
}

/// The seq of the first record of a non-empty `file`.
fn first_seq(file: &File, path: &Path) -> Result<u64, AuditError> {
    let mut line = Vec::new();
    BufReader::new(file).take(MAX_LINE as u64).read_until(b'\n', &mut line).map_err(|e| io_error(path, e))?;
    line.pop();
    parse_line(&line, "line 1").map(|rec| rec.seq).map_err(|(_, message)| AuditError::Tampered {
        path: path.to_path_buf(),
        line: 1,
        message: format!("{message}; move the file aside and run `kmsctl audit verify`"),
    })
}

/// An error for a file whose last line cannot be resumed from; counts lines to name it.
fn tampered(file: &File, path: &Path, what: &str) -> AuditError {
    let (mut line, mut last, mut offset, mut buf) = (0u64, b'\n', 0u64, vec![0u8; 64 * 1024]);
    while let Ok(n @ 1..) = file.read_at(&mut buf, offset) {
        line += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[n - 1];
        offset += n as u64;
    }
    AuditError::Tampered {
        path: path.to_path_buf(),
        line: line + u64::from(last != b'\n'),
        message: format!(
            "{what}; the log cannot be resumed: move {} aside and run `kmsctl audit verify` on the audit files",
            path.display()
        ),
    }
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-24T06:47:11.123456Z`.
fn rfc3339_micros(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let dt = i64::try_from(since.as_secs())
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        since.subsec_micros()
    )
}

fn decode_mac(hex_digits: &[u8]) -> Option<[u8; 32]> {
    let mut mac = [0u8; 32];
    let lower = hex_digits.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    (hex_digits.len() == 64 && lower && hex::decode_to_slice(hex_digits, &mut mac).is_ok()).then_some(mac)
}

/// The fields a verifier reads from B.
#[derive(Deserialize)]
struct Fields {
    seq: u64,
    prev: String,
    op: String,
}

/// A parsed record line.
struct Parsed {
    seq: u64,
    prev: [u8; 32],
    mac: [u8; 32],
    op: String,
    /// B: the MACed bytes.
    body: Vec<u8>,
}

/// A problem with a line: its kind and a message naming the line.
type Found = (ProblemKind, String);

/// Splits a line (without its newline, found `at` e.g. "line 3 of FILE") into B and the MAC and
/// parses B; no MAC check.
fn parse_line(line: &[u8], at: &str) -> Result<Parsed, Found> {
    let bad = |m: &str| (ProblemKind::Malformed, format!("{at} is not a valid audit record: {m}"));
    if std::str::from_utf8(line).is_err() {
        return Err(bad("not UTF-8"));
    }
    let split = line.len().checked_sub(MAC_SUFFIX_LEN).ok_or_else(|| bad("too short"))?;
    let (body, suffix) = line.split_at(split);
    let mac = (suffix.starts_with(MAC_PREFIX) && suffix.ends_with(b"\"}"))
        .then(|| decode_mac(&suffix[MAC_PREFIX.len()..MAC_SUFFIX_LEN - 2]))
        .flatten()
        .ok_or_else(|| bad("it does not end with a \"mac\" field of 64 lower-case hex digits"))?;
    let mut body = body.to_vec();
    body.push(b'}');
    let fields: Fields = serde_json::from_slice(&body).map_err(|e| bad(&format!("bad JSON: {e}")))?;
    let prev = decode_mac(fields.prev.as_bytes()).ok_or_else(|| bad("\"prev\" is not 64 lower-case hex digits"))?;
    Ok(Parsed { seq: fields.seq, prev, mac, op: fields.op, body })
}

/// [`parse_line`] plus the MAC check.
fn check_line(line: &[u8], key: &AuditKey, at: &str) -> Result<Parsed, Found> {
    let rec = parse_line(line, at)?;
    if bool::from(key.mac(&rec.body).ct_eq(&rec.mac)) {
        return Ok(rec);
    }
    let m = format!("record seq {} ({at}) fails its MAC: edited, or inserted by someone without the key", rec.seq);
    Err((ProblemKind::Edited, m))
}

/// The chain check of a record that passed [`check_line`], given the last good record;
/// `next_seq` peeks at the following line's seq.
fn chain_problem(
    prev: Option<AuditHead>,
    rec: &Parsed,
    partial: bool,
    at: &str,
    next_seq: impl FnOnce() -> Option<u64>,
) -> Option<Found> {
    let seq = rec.seq;
    let Some(p) = prev else {
        return if partial {
            None
        } else if seq != 1 {
            let m = format!(
                "the log starts at seq {seq} ({at}): earlier records are missing; pass --partial if they were archived"
            );
            Some((ProblemKind::MissingStart, m))
        } else if rec.prev != ZERO_MAC {
            Some((ProblemKind::Edited, format!("record seq 1 ({at}) does not start a chain: its prev is not zero")))
        } else {
            None
        };
    };
    let expected = p.seq.saturating_add(1);
    if seq == expected {
        let linked = bool::from(rec.prev.ct_eq(&p.mac));
        let m = || {
            format!(
                "chain broken: record seq {seq} ({at}) does not link to record seq {} (its prev is not that MAC)",
                p.seq
            )
        };
        (!linked).then(|| (ProblemKind::Edited, m()))
    } else if seq > expected {
        if next_seq().is_some_and(|n| n >= expected && n < seq) {
            return Some((
                ProblemKind::Reordered,
                format!("record seq {seq} ({at}) comes before seq {expected}: records are out of order"),
            ));
        }
        let missing = if seq - 1 == expected {
            format!("record {expected} is")
        } else {
            format!("records {expected}..{} are", seq - 1)
        };
        Some((ProblemKind::Deleted, format!("{missing} missing before {at}")))
    } else if seq == p.seq {
        let copy = if rec.mac == p.mac { "a copy of the previous record" } else { "a second record with that seq" };
        Some((ProblemKind::Inserted, format!("record seq {seq} ({at}) repeats seq {seq}: {copy}")))
    } else {
        Some((
            ProblemKind::Reordered,
            format!("record seq {seq} ({at}) comes after seq {}: out of order, or a copy of an earlier record", p.seq),
        ))
    }
}

/// What [`verify`] checks beyond the chain itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    /// The earliest records were archived: accept a first record with any seq and trust its `prev`.
    pub partial: bool,
    /// A head the sidecar reported (e.g. logged or exported): the log must reach it.
    pub expected_head: Option<AuditHead>,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records that passed all checks (those before the problem, if any).
    pub records: u64,
    /// Seq of the first record (0 if none).
    pub first_seq: u64,
    /// Seq of the last good record (0 if none).
    pub last_seq: u64,
    /// Seq and MAC of the last good record.
    pub head: Option<AuditHead>,
    /// The files, in the order walked (by their first record's seq; empty files first).
    pub files: Vec<PathBuf>,
    /// The first problem found; `None`: the log is intact.
    pub problem: Option<Problem>,
    /// Whether the last good record is a clean-shutdown event (`op` is [`STOP_OP`]).
    pub ends_with_stop: bool,
}

/// The first anomaly found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number in that file.
    pub line: u64,
    /// What kind of anomaly.
    pub kind: ProblemKind,
    /// Human-readable explanation.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {:?}: {}", self.file.display(), self.line, self.kind, self.message)
    }
}

/// Kinds of anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// Not a record: not UTF-8, not JSON, no MAC field, or missing newline before more data.
    Malformed,
    /// A record fails its MAC, breaks the chain, or differs from the expected head.
    Edited,
    /// Records are missing.
    Deleted,
    /// A record repeats a sequence number.
    Inserted,
    /// Records are out of order.
    Reordered,
    /// The log ends early: a torn last record, or it stops before the expected head.
    Truncated,
    /// The log does not start at seq 1.
    MissingStart,
}

/// Lines of several files in turn, without their newlines.
struct Lines<'a> {
    files: &'a [PathBuf],
    idx: usize,
    reader: Option<BufReader<File>>,
    line: u64,
}

struct RawLine {
    file: usize,
    line: u64,
    bytes: Vec<u8>,
    complete: bool,
}

impl Iterator for Lines<'_> {
    type Item = Result<RawLine, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let path = self.files.get(self.idx)?;
            let fail = |e| Some(Err(io_error(path, e)));
            if self.reader.is_none() {
                match File::open(path) {
                    Ok(f) => (self.reader, self.line) = (Some(BufReader::new(f)), 0),
                    Err(e) => {
                        self.idx = self.files.len();
                        return fail(e);
                    }
                }
            }
            let mut bytes = Vec::new();
            match self.reader.as_mut()?.take(MAX_LINE as u64 + 1).read_until(b'\n', &mut bytes) {
                Ok(0) => (self.reader, self.idx) = (None, self.idx + 1),
                Ok(_) => {
                    self.line += 1;
                    let complete = bytes.last() == Some(&b'\n');
                    if complete {
                        bytes.pop();
                    }
                    return Some(Ok(RawLine { file: self.idx, line: self.line, bytes, complete }));
                }
                Err(e) => {
                    self.idx = self.files.len();
                    return fail(e);
                }
            }
        }
    }
}

/// Checks audit files (given in any order) with `key`; the first anomaly found goes into
/// [`VerifyReport::problem`]. `Err` only when a file cannot be read.
pub fn verify(files: &[PathBuf], key: &AuditKey, options: &VerifyOptions) -> Result<VerifyReport, AuditError> {
    let mut ranked = Vec::with_capacity(files.len());
    for path in files {
        let mut first = Lines { files: std::slice::from_ref(path), idx: 0, reader: None, line: 0 };
        let rank = match first.next().transpose()? {
            None => (0, 0),
            Some(raw) => parse_line(&raw.bytes, "").map_or((2, 0), |rec| (1, rec.seq)),
        };
        ranked.push((rank, path.clone()));
    }
    ranked.sort();
    let files: Vec<PathBuf> = ranked.into_iter().map(|(_, path)| path).collect();
    let mut report = VerifyReport { files: files.clone(), ..VerifyReport::default() };
    let mut lines = Lines { files: &files, idx: 0, reader: None, line: 0 }.peekable();
    let mut last_at = (files.last().cloned().unwrap_or_default(), 0);
    while let Some(raw) = lines.next() {
        let raw = raw?;
        let file = files.get(raw.file).cloned().unwrap_or_default();
        let at = format!("line {} of {}", raw.line, file.display());
        let checked = if raw.complete {
            check_line(&raw.bytes, key, &at).and_then(|rec| {
                let next_seq = || match lines.peek() {
                    Some(Ok(next)) => parse_line(&next.bytes, "").ok().map(|n| n.seq),
                    _ => None,
                };
                chain_problem(report.head, &rec, options.partial, &at, next_seq).map_or(Ok(rec), Err)
            })
        } else {
            let kind = if lines.peek().is_none() { ProblemKind::Truncated } else { ProblemKind::Malformed };
            Err((kind, format!("{at} ends without a newline: a torn or truncated record")))
        };
        let rec = match checked {
            Ok(rec) => rec,
            Err((kind, message)) => {
                report.problem = Some(Problem { file, line: raw.line, kind, message });
                break;
            }
        };
        if report.head.is_none() {
            report.first_seq = rec.seq;
        }
        // The expected head is checked where the log passes it, not only at its end: a log
        // that grew since must still contain exactly that record.
        if let Some(expected) = options.expected_head
            && rec.seq == expected.seq
            && !bool::from(rec.mac.ct_eq(&expected.mac))
        {
            report.problem = Some(Problem {
                file,
                line: raw.line,
                kind: ProblemKind::Edited,
                message: format!("record seq {} ({at}) differs from the expected head {expected}", rec.seq),
            });
            break;
        }
        (report.head, report.last_seq) = (Some(AuditHead { seq: rec.seq, mac: rec.mac }), rec.seq);
        report.records += 1;
        report.ends_with_stop = rec.op == STOP_OP;
        last_at = (file, raw.line);
    }
    if let (None, Some(expected)) = (&report.problem, options.expected_head) {
        let last = report.head.unwrap_or(AuditHead::GENESIS);
        let (file, line) = last_at;
        let problem = |kind, message| Some(Problem { file, line, kind, message });
        if last.seq < expected.seq {
            report.problem = problem(
                ProblemKind::Truncated,
                format!("the log ends at seq {} but the sidecar had written up to {}", last.seq, expected.seq),
            );
        } else if last.seq == expected.seq && !bool::from(last.mac.ct_eq(&expected.mac)) {
            report.problem = problem(
                ProblemKind::Edited,
                format!("the last record (seq {}) differs from the expected head {expected}", last.seq),
            );
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn key() -> AuditKey {
        AuditKey::from_bytes([7; 32])
    }

    fn event(op: &str) -> AuditEvent<'_> {
        AuditEvent {
            time: SystemTime::now(),
            request_id: "req-1",
            principal: "spiffe://tenant-a/app",
            peer: "10.0.0.1:4711",
            operation: op,
            key: Some("tenant-a/db"),
            key_version: Some(3),
            phase: Phase::Result,
            code: "OK",
            latency_us: Some(87),
            detail: None,
        }
    }

    fn config(dir: &Path, max_bytes: u64) -> AuditConfig {
        AuditConfig { path: dir.join("audit.log"), max_bytes, fsync: true }
    }

    fn open(dir: &Path, max_bytes: u64) -> AuditLog {
        AuditLog::open(config(dir, max_bytes), key()).unwrap()
    }

    fn write(log: &AuditLog, n: usize) {
        for _ in 0..n {
            log.append(&event("Encrypt")).unwrap();
        }
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect()
    }

    fn check(files: &[PathBuf]) -> VerifyReport {
        verify(files, &key(), &VerifyOptions::default()).unwrap()
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
    }

    fn put_lines(path: &Path, lines: &[String]) {
        fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }

    /// Re-MACs a line with `key` after `edit` (of B without its final `}`).
    fn forge(line: &str, key: &AuditKey, edit: impl FnOnce(&str) -> String) -> String {
        let body = format!("{}}}", edit(&line[..line.len() - MAC_SUFFIX_LEN]));
        format!("{},\"mac\":\"{}\"}}", &body[..body.len() - 1], hex::encode(key.mac(body.as_bytes())))
    }

    /// True when file permissions are enforced (not root).
    fn permissions_enforced(dir: &Path) -> bool {
        let probe = dir.join("probe");
        fs::create_dir(&probe).unwrap();
        fs::set_permissions(&probe, fs::Permissions::from_mode(0o500)).unwrap();
        let enforced = File::create(probe.join("x")).is_err();
        fs::set_permissions(&probe, fs::Permissions::from_mode(0o700)).unwrap();
        fs::remove_dir_all(&probe).unwrap();
        enforced
    }

    #[test]
    fn round_trip_and_format() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), 0);
        for i in 1..=50 {
            assert_eq!(log.append(&event("Encrypt")).unwrap().seq, i);
        }
        let report = check(&[log.path().to_path_buf()]);
        assert_eq!(report.problem, None);
        assert_eq!((report.records, report.first_seq, report.last_seq, report.head), (50, 1, 50, Some(log.head())));
        assert!(!report.ends_with_stop);
        let l = lines(log.path());
        assert!(l[0].starts_with(r#"{"seq":1,"ts":""#) && &l[0][41..42] == "Z", "{}", l[0]);
        let rest = r#"","id":"req-1","principal":"spiffe://tenant-a/app","peer":"10.0.0.1:4711","op":"Encrypt","key":"tenant-a/db","version":3,"phase":"result","code":"OK","latency_us":87,"prev":"0000000000000000000000000000000000000000000000000000000000000000","mac":""#;
        assert_eq!(&l[0][42..42 + rest.len()], rest);
        assert!(l[1].contains(&format!("\"prev\":\"{}\"", &l[0][l[0].len() - 66..l[0].len() - 2])));
        let stop = AuditEvent { phase: Phase::Event, key: None, key_version: None, latency_us: None, ..event(STOP_OP) };
        let head = log.append(&stop).unwrap();
        let opts = VerifyOptions { partial: false, expected_head: Some(head) };
        let report = verify(&[log.path().to_path_buf()], &key(), &opts).unwrap();
        assert!(report.problem.is_none() && report.ends_with_stop && report.records == 51);
        assert!(lines(log.path())[50].contains(r#""op":"sidecar.stop","phase":"event","code":"OK","prev""#));
        assert!(format!("{log:?}").starts_with("AuditLog"));
        fn send_sync<T: Send + Sync>() {}
        send_sync::<AuditLog>();
    }

    #[test]
    fn concurrent_appends_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), 4000);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| write(&log, 25));
            }
        });
        let report = check(&files(dir.path()));
        assert_eq!((report.problem, report.records, report.head), (None, 200, Some(log.head())));
    }

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_502_831_123_456);
        assert_eq!(rfc3339_micros(t), "2026-11-24T06:47:11.123456Z");
        assert_eq!(rfc3339_micros(UNIX_EPOCH - Duration::from_secs(5)), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn rotation_and_shuffled_verify() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), 1000);
        write(&log, 60);
        let mut all = files(dir.path());
        assert!(all.len() > 5, "{all:?}");
        for f in &all {
            let len = fs::metadata(f).unwrap().len();
            assert!(len <= 1000 && len > 0, "{f:?} {len}");
        }
        all.sort();
        all.swap(0, 3);
        let report = check(&all);
        assert_eq!(report.problem, None);
        assert_eq!((report.records, report.last_seq, report.head), (60, 60, Some(log.head())));
        assert_eq!(report.files.first(), Some(&dir.path().join("audit.log.00000000000000000001")));
        assert_eq!(report.files.last(), Some(&dir.path().join("audit.log")));
    }

    #[test]
    fn resume_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), 1000);
        write(&log, 20);
        let head = log.head();
        drop(log);
        let log = open(dir.path(), 1000);
        assert_eq!(log.head(), head);
        write(&log, 20);
        assert_eq!(log.head().seq, 40);
        // A second writer on the same file is refused.
        assert!(matches!(AuditLog::open(config(dir.path(), 0), key()), Err(AuditError::Io { .. })));
        // A crash right after a rotation leaves an empty active file: resume from the newest rotated one.
        drop(log);
        let active = dir.path().join("audit.log");
        let partial = VerifyOptions { partial: true, expected_head: None };
        let first = verify(std::slice::from_ref(&active), &key(), &partial).unwrap().first_seq;
        fs::rename(&active, rotated_name(&active, first)).unwrap();
        File::create(&active).unwrap();
        let log = open(dir.path(), 1000);
        assert_eq!(log.head().seq, 40);
        write(&log, 5);
        let report = check(&files(dir.path()));
        assert_eq!((report.problem, report.records), (None, 45));
    }

    #[test]
    fn tampering_is_found() {
        use ProblemKind::*;
        type Edit = Box<dyn Fn(&mut Vec<String>)>;
        let cases: Vec<(&str, Edit, ProblemKind, u64, &str)> = vec![
            (
                "edit",
                Box::new(|l| l[4] = l[4].replacen("tenant-a", "tenant-b", 1)),
                Edited,
                5,
                "record seq 5 (line 5 of",
            ),
            ("delete", Box::new(|l| drop(l.remove(4))), Deleted, 5, "record 5 is missing before line 5"),
            ("delete 2", Box::new(|l| drop(l.drain(4..6))), Deleted, 5, "records 5..6 are missing"),
            ("duplicate", Box::new(|l| l.insert(4, l[4].clone())), Inserted, 6, "a copy of the previous record"),
            ("replay", Box::new(|l| l.insert(7, l[2].clone())), Reordered, 8, "comes after seq 7"),
            ("swap", Box::new(|l| l.swap(3, 4)), Reordered, 4, "out of order"),
            ("not json", Box::new(|l| l[2] = "not json".into()), Malformed, 3, "line 3 of"),
            ("no mac", Box::new(|l| l[2] = l[2][..l[2].len() - 74].to_string() + "}"), Malformed, 3, "\"mac\""),
            (
                "forged without the key",
                Box::new(|l| l.insert(5, forge(&l[5], &AuditKey::from_bytes([8; 32]), |b| b.replace("OK", "NO")))),
                Edited,
                6,
                "fails its MAC: edited, or inserted by someone without the key",
            ),
            (
                "forged with the key",
                Box::new(|l| l.insert(5, forge(&l[5], &key(), |b| b.replace("OK", "NO")))),
                Inserted,
                7,
                "a second record with that seq",
            ),
            (
                "relinked with the key",
                Box::new(|l| l[5] = forge(&l[5], &key(), |b| format!("{}{}\"", &b[..b.len() - 65], "1".repeat(64)))),
                Edited,
                6,
                "chain broken",
            ),
            (
                "reset start",
                Box::new(|l| l[0] = forge(&l[0], &key(), |b| b.replace("\"0000", "\"1000"))),
                Edited,
                1,
                "prev",
            ),
        ];
        for (name, edit, kind, line, text) in cases {
            let dir = tempfile::tempdir().unwrap();
            write(&open(dir.path(), 0), 10);
            let path = dir.path().join("audit.log");
            let mut l = lines(&path);
            edit(&mut l);
            put_lines(&path, &l);
            let p = check(&[path]).problem.unwrap_or_else(|| panic!("{name}: no problem found"));
            assert_eq!((p.kind, p.line), (kind, line), "{name}: {p}");
            assert!(p.message.contains(text), "{name}: {p}");
        }
    }

    #[test]
    fn truncation_is_found_with_expected_head() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), 0);
        write(&log, 10);
        let head = log.head();
        drop(log);
        let path = vec![dir.path().join("audit.log")];
        let mut l = lines(&path[0]);
        l.truncate(8);
        put_lines(&path[0], &l);
        assert_eq!(check(&path).problem, None);
        let opts = VerifyOptions { partial: false, expected_head: Some(head) };
        let p = verify(&path, &key(), &opts).unwrap().problem.unwrap();
        assert_eq!((p.kind, p.line), (ProblemKind::Truncated, 8), "{p}");
        assert!(p.message.contains("ends at seq 8 but the sidecar had written up to 10"), "{p}");
        let opts = VerifyOptions { partial: false, expected_head: Some(AuditHead { seq: 8, mac: [1; 32] }) };
        assert_eq!(verify(&path, &key(), &opts).unwrap().problem.unwrap().kind, ProblemKind::Edited);
    }

    #[test]
    fn torn_or_edited_tail_is_found_and_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        write(&open(dir.path(), 0), 10);
        let path = dir.path().join("audit.log");
        let text = fs::read(&path).unwrap();
        fs::write(&path, &text[..text.len() - 60]).unwrap();
        let report = check(std::slice::from_ref(&path));
        let p = report.problem.unwrap();
        assert_eq!((p.kind, p.line, report.records), (ProblemKind::Truncated, 10, 9), "{p}");
        match AuditLog::open(config(dir.path(), 0), key()) {
            Err(AuditError::Tampered { line: 10, message, .. }) => assert!(message.contains("kmsctl audit verify")),
            other => panic!("{other:?}"),
        }
        let mut l = lines(&path);
        l[9] = lines(&path)[8].replacen("\"OK\"", "\"NO\"", 1);
        put_lines(&path, &l);
        let err = AuditLog::open(config(dir.path(), 0), key()).unwrap_err();
        assert!(matches!(err, AuditError::Tampered { line: 10, .. }), "{err}");
    }

    #[test]
    fn dropped_files_are_found() {
        let dir = tempfile::tempdir().unwrap();
        write(&open(dir.path(), 1000), 60);
        let all = check(&files(dir.path())).files;
        let mut middle = all.clone();
        middle.remove(2);
        let p = check(&middle).problem.unwrap();
        assert_eq!((p.kind, p.line, &p.file), (ProblemKind::Deleted, 1, &all[3]), "{p}");
        let p = check(&all[1..]).problem.unwrap();
        assert_eq!((p.kind, p.line, &p.file), (ProblemKind::MissingStart, 1, &all[1]), "{p}");
        assert!(p.message.contains("pass --partial"), "{p}");
        let report = verify(&all[1..], &key(), &VerifyOptions { partial: true, expected_head: None }).unwrap();
        assert_eq!(report.problem, None);
        assert!(report.first_seq > 1 && report.last_seq == 60);
    }

    #[test]
    fn wrong_key_fails_at_line_1() {
        let dir = tempfile::tempdir().unwrap();
        write(&open(dir.path(), 0), 3);
        let report = verify(&files(dir.path()), &AuditKey::from_bytes([8; 32]), &VerifyOptions::default()).unwrap();
        let p = report.problem.unwrap();
        assert_eq!((p.kind, p.line, report.records), (ProblemKind::Edited, 1, 0));
    }

    #[test]
    fn hostile_strings_stay_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), 0);
        let ev = AuditEvent { principal: "evil\n{\"seq\":99}\"\\", detail: Some("a\r\nb\u{2028}"), ..event("Encrypt") };
        log.append(&ev).unwrap();
        log.append(&event("Encrypt")).unwrap();
        assert_eq!(lines(log.path()).len(), 2);
        assert!(lines(log.path())[0].contains(r#""principal":"evil\n{\"seq\":99}\"\\""#));
        assert_eq!(check(&[log.path().to_path_buf()]).problem, None);
    }

    #[test]
    fn fail_closed_when_the_path_cannot_be_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), 0);
        write(&log, 3);
        let head = log.head();
        let (path, moved) = (dir.path().join("audit.log"), dir.path().join("moved.log"));
        fs::rename(&path, &moved).unwrap();
        fs::create_dir(&path).unwrap(); // the path now names something that cannot be appended to
        assert!(matches!(log.append(&event("Encrypt")), Err(AuditError::Unavailable(_))));
        assert_eq!(log.head(), head);
        fs::remove_dir(&path).unwrap();
        write(&log, 2);
        let report = check(&[path, moved]);
        assert_eq!((report.problem, report.records), (None, 5));
    }

    #[test]
    fn fail_closed_without_write_permission() {
        let dir = tempfile::tempdir().unwrap();
        if !permissions_enforced(dir.path()) {
            eprintln!("note: skipping fail_closed_without_write_permission: permissions are not enforced (root)");
            return;
        }
        let log = open(dir.path(), 0);
        write(&log, 3);
        let head = log.head();
        let (path, moved) = (dir.path().join("audit.log"), dir.path().join("moved.log"));
        fs::rename(&path, &moved).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o500)).unwrap();
        let err = log.append(&event("Encrypt")).unwrap_err();
        assert!(matches!(&err, AuditError::Unavailable(m) if m.contains("audit.log")), "{err}");
        assert_eq!(log.head(), head);
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        // A read-only file at the path: opening it for append fails (EACCES).
        File::create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(matches!(log.append(&event("Encrypt")), Err(AuditError::Unavailable(_))));
        assert_eq!(log.head(), head);
        fs::remove_file(&path).unwrap();
        write(&log, 2);
        let report = check(&[moved, path]);
        assert_eq!((report.problem, report.records), (None, 5));
    }

    #[test]
    fn replaced_file_must_end_at_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), 0);
        write(&log, 3);
        let (path, copy) = (dir.path().join("audit.log"), dir.path().join("copy.log"));
        fs::copy(&path, &copy).unwrap();
        fs::rename(&copy, &path).unwrap(); // same content, another inode: continued
        write(&log, 1);
        let mut l = lines(&path);
        l.pop();
        put_lines(&copy, &l);
        fs::rename(&copy, &path).unwrap(); // ends at seq 3 but the head is 4: refused
        assert!(matches!(log.append(&event("Encrypt")), Err(AuditError::Unavailable(_))));
        assert_eq!((log.head().seq, check(&[path]).last_seq), (4, 3));
    }

    #[test]
    fn key_files_and_heads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/audit.key");
        assert_eq!(*AuditKey::load_or_create(&path, [0xab; 32]).unwrap().0, [0xab; 32]);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{}\n", "ab".repeat(32)));
        let again = AuditKey::load_or_create(&path, [0xcd; 32]).unwrap();
        assert_eq!(*again.0, [0xab; 32]);
        assert_eq!(files(&dir.path().join("keys")), vec![path.clone()]);
        fs::write(&path, "ab".repeat(32)).unwrap();
        assert_eq!(*AuditKey::load(&path).unwrap().0, [0xab; 32]);
        fs::write(&path, "secretsecret").unwrap();
        let err = AuditKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("audit.key") && !err.contains("secret"), "{err}");
        assert_eq!(format!("{again:?}"), "AuditKey(..)");
        let head = AuditHead { seq: 42, mac: [0x5a; 32] };
        assert_eq!(head.to_string(), format!("42:{}", "5a".repeat(32)));
        assert_eq!(head.to_string().parse::<AuditHead>(), Ok(head));
        assert!("42".parse::<AuditHead>().is_err() && "x:00".parse::<AuditHead>().is_err());
    }
}
