//! EncryptStream and DecryptStream: payloads of any size through crypto-core's own
//! streaming writer and reader, in constant server memory.
//!
//! Each call runs on one blocking thread. That thread pulls request chunks from the
//! inbound gRPC stream (through the runtime handle) as a [`std::io::Read`] and pushes
//! output through a bounded channel as a [`std::io::Write`], so at most one request chunk,
//! one segment being sealed or opened and [`OUTBOUND_DEPTH`] output messages are held at
//! a time, and a slow client slows the call down instead of growing buffers.
//!
//! Calls are bounded: at most [`crate::grpc::Limits::max_concurrent_streams`] at once (more
//! get `RESOURCE_EXHAUSTED`), and a client that sends nothing, or reads nothing, for
//! [`crate::grpc::Limits::stream_idle_timeout`] gets `DEADLINE_EXCEEDED`, so idle clients
//! cannot hold threads or delay shutdown forever. Plaintext held in buffers is zeroized.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use crypto_core::envelope::{EncryptingWriter, EnvelopeError};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use zeroize::Zeroize;

use crate::grpc::{pb, status};
use crate::kms::{Kms, KmsError};
use crate::policy::{Op, Resource};
use crate::security::Call;

/// Output messages queued per call before the server waits for the client.
pub(crate) const OUTBOUND_DEPTH: usize = 4;
/// Bytes gathered into one output message (one default segment plus its tag fits).
const OUTPUT_CHUNK: usize = 64 * 1024 + 16;

/// The concurrent-stream budget and idle timeout shared by all calls of one service.
#[derive(Debug, Clone)]
pub(crate) struct StreamSlots {
    slots: Arc<Semaphore>,
    max: usize,
    idle: Duration,
}

impl StreamSlots {
    pub(crate) fn new(max: usize, idle: Duration) -> Self {
        Self { slots: Arc::new(Semaphore::new(max)), max, idle }
    }

    fn acquire(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!("{} streams in progress (the limit); retry later", self.max))
        })
    }
}

fn idle_status(idle: Duration) -> Status {
    Status::deadline_exceeded(format!("stream idle for {} ms", idle.as_millis()))
}

/// A gRPC status carried through `io::Error` so it survives the streaming types.
#[derive(Debug)]
struct Abort(Status);

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.message())
    }
}

impl std::error::Error for Abort {}

fn abort(s: Status) -> io::Error {
    io::Error::other(Abort(s))
}

/// The status to end a call with after `e`: a carried status as it is, an envelope error
/// through the KMS error mapping (coarse for authentication failures).
fn io_status(e: io::Error) -> Status {
    if let Some(Abort(s)) = e.get_ref().and_then(|i| i.downcast_ref::<Abort>()) {
        return s.clone();
    }
    match EnvelopeError::from_io(&e) {
        Some(_) => {
            let inner = e.into_inner().and_then(|i| i.downcast::<EnvelopeError>().ok());
            match inner {
                Some(env) => status(KmsError::from(*env)),
                None => Status::internal("stream failed"),
            }
        }
        None if e.kind() == io::ErrorKind::UnexpectedEof => status(KmsError::DecryptFailed),
        None => Status::internal(format!("stream I/O: {e}")),
    }
}

/// The request stream as a byte reader. `chunk_of` validates a later message and returns
/// its bytes.
struct Inbound<M, F> {
    stream: Streaming<M>,
    handle: Handle,
    idle: Duration,
    current: Vec<u8>,
    pos: usize,
    chunk_of: F,
}

impl<M, F: FnMut(M) -> Result<Vec<u8>, Status>> Read for Inbound<M, F> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            let next = self.handle.block_on(tokio::time::timeout(self.idle, self.stream.message()));
            match next {
                Ok(Ok(Some(m))) => {
                    self.current.zeroize();
                    self.current = (self.chunk_of)(m).map_err(abort)?;
                    self.pos = 0;
                }
                Ok(Ok(None)) => return Ok(0),
                Ok(Err(s)) => return Err(abort(s)),
                Err(_) => return Err(abort(idle_status(self.idle))),
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<M, F> Drop for Inbound<M, F> {
    fn drop(&mut self) {
        // EncryptStream input is plaintext.
        self.current.zeroize();
    }
}

/// Sends `item` on a call's response channel, waiting at most `idle` for the client to
/// make room. `false`: the client went away or stopped reading.
fn send<T>(handle: &Handle, tx: &mpsc::Sender<Result<T, Status>>, item: Result<T, Status>, idle: Duration) -> bool {
    matches!(handle.block_on(tokio::time::timeout(idle, tx.send(item))), Ok(Ok(())))
}

/// Output bytes gathered into messages of about [`OUTPUT_CHUNK`] bytes.
struct Outbound<T, F> {
    tx: mpsc::Sender<Result<T, Status>>,
    handle: Handle,
    idle: Duration,
    buf: Vec<u8>,
    make: F,
}

impl<T, F: FnMut(Vec<u8>) -> T> Outbound<T, F> {
    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(OUTPUT_CHUNK));
        if send(&self.handle, &self.tx, Ok((self.make)(chunk)), self.idle) {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "client went away or stopped reading"))
        }
    }
}

impl<T, F: FnMut(Vec<u8>) -> T> Write for Outbound<T, F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(OUTPUT_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == OUTPUT_CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

impl<T, F> Drop for Outbound<T, F> {
    fn drop(&mut self) {
        // May hold plaintext (DecryptStream) that was never sent.
        self.buf.zeroize();
    }
}

/// `io::copy` with a heap buffer that is zeroized afterwards (it carries plaintext).
fn copy(reader: &mut impl Read, writer: &mut impl Write) -> io::Result<u64> {
    let mut buf = zeroize::Zeroizing::new(vec![0u8; 64 * 1024]);
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
}

fn context(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

fn size_check(max: usize) -> impl Fn(usize) -> Result<(), Status> {
    move |len| {
        if len > max {
            return Err(Status::resource_exhausted(format!(
                "stream chunk of {len} bytes exceeds the limit of {max} bytes"
            )));
        }
        Ok(())
    }
}

/// What every streaming call starts with: a slot, the first message (within the idle
/// timeout), the output channel and the runtime handle for the worker thread.
struct CallStart<M, T> {
    permit: OwnedSemaphorePermit,
    idle: Duration,
    first: M,
    inbound: Streaming<M>,
    tx: mpsc::Sender<Result<T, Status>>,
    rx: mpsc::Receiver<Result<T, Status>>,
    handle: Handle,
}

async fn start<M, T>(
    slots: &StreamSlots,
    mut inbound: Streaming<M>,
    empty: &'static str,
) -> Result<CallStart<M, T>, Status> {
    let permit = slots.acquire()?;
    let idle = slots.idle;
    let first = tokio::time::timeout(idle, inbound.message())
        .await
        .map_err(|_| idle_status(idle))??
        .ok_or_else(|| Status::invalid_argument(empty))?;
    let (tx, rx) = mpsc::channel(OUTBOUND_DEPTH);
    Ok(CallStart { permit, idle, first, inbound, tx, rx, handle: Handle::current() })
}

/// Serves one EncryptStream call.
/// The request is authorized on the key named in the first message and an `attempt`
/// record is written before any data is read; the `result` record when the stream ends.
pub(crate) async fn encrypt_stream(
    kms: Arc<Kms>,
    slots: &StreamSlots,
    inbound: Streaming<pb::EncryptStreamRequest>,
    max_chunk: usize,
    mut audit: Call,
) -> Result<ReceiverStream<Result<pb::EncryptStreamResponse, Status>>, Status> {
    let call = match start(slots, inbound, "EncryptStream: the first message must name the key").await {
        Ok(c) => c,
        Err(s) => return Err(audit.fail(s).await),
    };
    let CallStart { permit, idle, first, inbound, tx, rx, handle } = call;
    let check = size_check(max_chunk);
    let pre = check(first.chunk.len()).and_then(|()| audit.authorize(Op::Encrypt, Resource::Key(&first.key_name)));
    if let Err(s) = audit.attempt_after(pre).await {
        return Err(audit.fail(s).await);
    }
    let ctx = context(first.context);
    let key_name = first.key_name;
    // The sealer may need the store (key record, KEK): prepared on the blocking thread too,
    // but before the call is answered, so a bad key fails the call with its own code.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let sealer = match kms.stream_sealer(&key_name, &ctx) {
            Ok(s) => s,
            Err(e) => {
                let s = status(e);
                let _ = ready_tx.send(Err(s.clone()));
                audit.finish_stream(Err(s));
                return;
            }
        };
        let _ = ready_tx.send(Ok(()));
        let key_version = sealer.header().key_version();
        audit.set_version(key_version);
        let mut first_out = true;
        let out = Outbound {
            tx: tx.clone(),
            handle: handle.clone(),
            idle,
            buf: Vec::with_capacity(OUTPUT_CHUNK),
            make: move |chunk| {
                let v = if std::mem::take(&mut first_out) { key_version } else { 0 };
                pb::EncryptStreamResponse { chunk, key_version: v }
            },
        };
        let mut input = Inbound {
            stream: inbound,
            handle: handle.clone(),
            idle,
            current: first.chunk,
            pos: 0,
            chunk_of: move |m: pb::EncryptStreamRequest| {
                if !m.key_name.is_empty() || !m.context.is_empty() {
                    return Err(Status::invalid_argument(
                        "EncryptStream: key_name and context belong in the first message only",
                    ));
                }
                check(m.chunk.len())?;
                Ok(m.chunk)
            },
        };
        let result = EncryptingWriter::new(out, sealer).map_err(|e| status(KmsError::from(e))).and_then(|mut w| {
            copy(&mut input, &mut w).map_err(io_status)?;
            w.finish().map_err(io_status)?.flush().map_err(io_status)
        });
        if let Err(s) = &result {
            send(&handle, &tx, Err(s.clone()), idle);
        }
        audit.finish_stream(result);
    });
    ready_rx.await.map_err(|_| Status::internal("EncryptStream worker failed"))??;
    Ok(ReceiverStream::new(rx))
}

/// Serves one DecryptStream call.
///
/// The header is read from the first messages (gathered until it is complete, within the
/// chunk limit) and the request authorized on its key before anything is decrypted.
pub(crate) async fn decrypt_stream(
    kms: Arc<Kms>,
    slots: &StreamSlots,
    inbound: Streaming<pb::DecryptStreamRequest>,
    max_chunk: usize,
    mut audit: Call,
) -> Result<ReceiverStream<Result<pb::DecryptStreamResponse, Status>>, Status> {
    let call = match start(slots, inbound, "DecryptStream: no ciphertext sent").await {
        Ok(c) => c,
        Err(s) => return Err(audit.fail(s).await),
    };
    let CallStart { permit, idle, mut first, mut inbound, tx, rx, handle } = call;
    let check = size_check(max_chunk);
    let ready = async {
        check(first.chunk.len())?;
        let (key, version) = loop {
            match Kms::header_key(&first.chunk).map_err(status)? {
                Some(found) => break found,
                None if first.chunk.len() < max_chunk => {
                    let next = tokio::time::timeout(idle, inbound.message()).await.map_err(|_| idle_status(idle))??;
                    let Some(next) = next else { break Kms::ciphertext_key(&first.chunk).map_err(status)? };
                    if !next.context.is_empty() {
                        return Err(Status::invalid_argument(
                            "DecryptStream: context belongs in the first message only",
                        ));
                    }
                    check(first.chunk.len() + next.chunk.len())?;
                    first.chunk.extend_from_slice(&next.chunk);
                }
                None => return Err(status(KmsError::DecryptFailed)),
            }
        };
        audit.set_version(version);
        audit.authorize(Op::Decrypt, Resource::Key(&key))?;
        audit.attempt().await
    }
    .await;
    if let Err(s) = ready {
        return Err(audit.fail(s).await);
    }
    let ctx = context(first.context);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let input = Inbound {
            stream: inbound,
            handle: handle.clone(),
            idle,
            current: first.chunk,
            pos: 0,
            chunk_of: move |m: pb::DecryptStreamRequest| {
                if !m.context.is_empty() {
                    return Err(Status::invalid_argument("DecryptStream: context belongs in the first message only"));
                }
                check(m.chunk.len())?;
                Ok(m.chunk)
            },
        };
        let mut out = Outbound {
            tx: tx.clone(),
            handle: handle.clone(),
            idle,
            buf: Vec::with_capacity(OUTPUT_CHUNK),
            make: |chunk| pb::DecryptStreamResponse { chunk },
        };
        let result = match kms.decrypting_reader(input, &ctx) {
            Err(EnvelopeError::Io(e)) => Err(io_status(e)),
            Err(e) => Err(status(KmsError::from(e))),
            Ok(mut reader) => copy(&mut reader, &mut out).and_then(|_| out.flush()).map_err(io_status),
        };
        if let Err(s) = &result {
            send(&handle, &tx, Err(s.clone()), idle);
        }
        audit.finish_stream(result);
    });
    Ok(ReceiverStream::new(rx))
}
