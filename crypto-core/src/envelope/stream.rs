//! Streaming seal (`Write`), streaming open (`Read`) and random access (`Read + Seek`),
//! each holding at most a couple of segments in memory.

use std::io::{self, Read, Seek, SeekFrom, Write};

use zeroize::Zeroize;

use super::EnvelopeError;
use super::header::{Form, Header};
use super::message::{Geometry, MAX_SEGMENTS, MessageKeys, MessageSealer};
use crate::aead::TAG_LEN;

/// Seals everything written to it into an inner writer, segment by segment.
///
/// [`EncryptingWriter::finish`] MUST be called: it seals the final segment. A writer dropped
/// without `finish` leaves a message that readers reject as truncated, never one that
/// silently reads as complete.
pub struct EncryptingWriter<W: Write> {
    inner: Option<W>,
    sealer: MessageSealer,
    segment_size: usize,
    pending: Vec<u8>,
    sealed: Vec<u8>,
    index: u64,
    failed: bool,
}

impl<W: Write> std::fmt::Debug for EncryptingWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptingWriter").field("segment_index", &self.index).finish_non_exhaustive()
    }
}

impl<W: Write> EncryptingWriter<W> {
    /// Writes the header of `sealer`'s message to `inner` and returns the writer.
    /// `sealer` must be of the stream form.
    pub fn new(mut inner: W, sealer: MessageSealer) -> Result<Self, EnvelopeError> {
        let Form::Stream { segment_size } = sealer.header().form() else {
            return Err(EnvelopeError::Malformed("streaming needs the stream form"));
        };
        let segment_size = segment_size as usize;
        inner.write_all(sealer.header_bytes())?;
        Ok(Self {
            inner: Some(inner),
            sealer,
            segment_size,
            pending: Vec::with_capacity(segment_size),
            sealed: vec![0u8; segment_size + TAG_LEN],
            index: 0,
            failed: false,
        })
    }

    fn seal_pending(&mut self, last: bool) -> io::Result<()> {
        if self.index >= MAX_SEGMENTS {
            self.failed = true;
            return Err(EnvelopeError::TooLarge("more than 2^32 segments").into_io());
        }
        let n = self.pending.len() + TAG_LEN;
        self.sealer.keys().seal_segment(self.index as u32, last, &self.pending, &mut self.sealed[..n]);
        self.pending.zeroize();
        self.pending.clear();
        self.index += 1;
        let Some(inner) = self.inner.as_mut() else {
            return Err(io::Error::other("writer already finished"));
        };
        if let Err(e) = inner.write_all(&self.sealed[..n]) {
            self.failed = true;
            return Err(e);
        }
        Ok(())
    }

    /// Seals the final segment, flushes, and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        if self.failed {
            return Err(io::Error::other("an earlier write failed; the message is incomplete"));
        }
        self.seal_pending(true)?;
        let mut inner = self.inner.take().ok_or_else(|| io::Error::other("writer already finished"))?;
        inner.flush()?;
        Ok(inner)
    }
}

impl<W: Write> Write for EncryptingWriter<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("an earlier write failed; the message is incomplete"));
        }
        let total = buf.len();
        while !buf.is_empty() {
            // A full pending segment is sealed as non-final only once more data arrives:
            // until then it might be the final one.
            if self.pending.len() == self.segment_size {
                self.seal_pending(false)?;
            }
            let take = (self.segment_size - self.pending.len()).min(buf.len());
            self.pending.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Only whole segments can be flushed; the pending partial one waits for more data
        // or `finish`.
        self.inner.as_mut().map_or(Ok(()), |w| w.flush())
    }
}

impl<W: Write> Drop for EncryptingWriter<W> {
    fn drop(&mut self) {
        self.pending.zeroize();
        self.sealed.zeroize();
    }
}

/// Opens a stream-form message from a reader, one authenticated segment at a time.
///
/// Never returns bytes of a segment before its tag has checked. A message cut at a segment
/// boundary ends in an `UnexpectedEof` error carrying [`EnvelopeError::Truncated`], never
/// in a clean end of file. After any error every further read fails.
pub struct DecryptingReader<R: Read> {
    inner: R,
    keys: MessageKeys,
    stride: usize,
    raw: Vec<u8>,
    plain: Vec<u8>,
    plain_pos: usize,
    index: u64,
    done: bool,
    poisoned: bool,
}

impl<R: Read> std::fmt::Debug for DecryptingReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptingReader").field("segment_index", &self.index).finish_non_exhaustive()
    }
}

impl<R: Read> DecryptingReader<R> {
    pub(crate) fn new(inner: R, header: &Header, keys: MessageKeys) -> Result<Self, EnvelopeError> {
        let Form::Stream { segment_size } = header.form() else {
            return Err(EnvelopeError::Malformed("streaming needs the stream form"));
        };
        let stride = segment_size as usize + TAG_LEN;
        Ok(Self {
            inner,
            keys,
            stride,
            raw: Vec::with_capacity(stride + 1),
            plain: Vec::with_capacity(segment_size as usize),
            plain_pos: 0,
            index: 0,
            done: false,
            poisoned: false,
        })
    }

    /// Reads until `raw` holds one segment plus one look-ahead byte, or the input ends.
    fn fill_raw(&mut self) -> io::Result<bool> {
        let want = self.stride + 1;
        let mut chunk = [0u8; 8192];
        while self.raw.len() < want {
            let room = (want - self.raw.len()).min(chunk.len());
            match self.inner.read(&mut chunk[..room]) {
                Ok(0) => return Ok(true),
                Ok(k) => self.raw.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    fn next_segment(&mut self) -> Result<(), EnvelopeError> {
        let eof = self.fill_raw()?;
        if self.index >= MAX_SEGMENTS {
            return Err(EnvelopeError::TrailingData);
        }
        let index = self.index as u32;
        let (sealed_len, last) = if eof {
            if self.raw.len() < TAG_LEN {
                return Err(EnvelopeError::Truncated);
            }
            (self.raw.len(), true)
        } else {
            (self.stride, false)
        };
        let pt_len = sealed_len - TAG_LEN;
        self.keys.open_segment_checked(index, last, &self.raw[..sealed_len], &mut self.plain[..pt_len])?;
        self.raw.drain(..sealed_len);
        self.plain_pos = 0;
        self.plain.truncate(pt_len);
        self.index += 1;
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for DecryptingReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.poisoned {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "decryption already failed"));
        }
        while self.plain_pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.plain.resize(self.stride - TAG_LEN, 0);
            if let Err(e) = self.next_segment() {
                self.poisoned = true;
                self.plain.zeroize();
                self.plain.clear();
                self.plain_pos = 0;
                return Err(e.into_io());
            }
        }
        let n = out.len().min(self.plain.len() - self.plain_pos);
        out[..n].copy_from_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
        self.plain_pos += n;
        Ok(n)
    }
}

impl<R: Read> Drop for DecryptingReader<R> {
    fn drop(&mut self) {
        self.plain.zeroize();
    }
}

/// Random access to the plaintext of a stream-form message (`Read + Seek`).
///
/// Only the segments actually read are decrypted. The final segment is verified when the
/// decryptor is created, so truncation is reported up front.
pub struct SeekableDecryptor<R: Read + Seek> {
    inner: R,
    keys: MessageKeys,
    header_len: u64,
    geometry: Geometry,
    plaintext_len: u64,
    pos: u64,
    current: Option<u64>,
    plain: Vec<u8>,
    raw: Vec<u8>,
}

impl<R: Read + Seek> std::fmt::Debug for SeekableDecryptor<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeekableDecryptor")
            .field("plaintext_len", &self.plaintext_len)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl<R: Read + Seek> SeekableDecryptor<R> {
    pub(crate) fn new(mut inner: R, header: &Header, keys: MessageKeys) -> Result<Self, EnvelopeError> {
        let Form::Stream { segment_size } = header.form() else {
            return Err(EnvelopeError::Malformed("random access needs the stream form"));
        };
        let header_len = inner.stream_position()?;
        let end = inner.seek(SeekFrom::End(0))?;
        let body_len = usize::try_from(end - header_len).map_err(|_| EnvelopeError::TooLarge("body"))?;
        let geometry = Geometry::for_body(Some(segment_size as usize), body_len)?;
        let plaintext_len = geometry.plaintext_len(body_len) as u64;
        let mut me = Self {
            inner,
            keys,
            header_len,
            geometry,
            plaintext_len,
            pos: 0,
            current: None,
            plain: Vec::with_capacity(segment_size as usize),
            raw: vec![0u8; geometry.stride()],
        };
        me.load(geometry.segments - 1)?;
        Ok(me)
    }

    /// Plaintext length of the whole message.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// Number of segments.
    pub fn segment_count(&self) -> u64 {
        self.geometry.segments
    }

    /// Decrypts segment `index` and returns its plaintext.
    pub fn read_segment(&mut self, index: u64) -> Result<&[u8], EnvelopeError> {
        self.load(index)?;
        Ok(&self.plain)
    }

    fn load(&mut self, index: u64) -> Result<(), EnvelopeError> {
        if self.current == Some(index) {
            return Ok(());
        }
        let count = self.geometry.segments;
        if index >= count {
            return Err(EnvelopeError::SegmentOutOfRange { index, count });
        }
        let stride = self.geometry.stride() as u64;
        let last = index + 1 == count;
        let sealed_len = if last {
            (self.plaintext_len - index * self.geometry.segment_size as u64) as usize + TAG_LEN
        } else {
            stride as usize
        };
        self.current = None;
        self.inner.seek(SeekFrom::Start(self.header_len + index * stride))?;
        self.inner.read_exact(&mut self.raw[..sealed_len]).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => EnvelopeError::Truncated,
            _ => EnvelopeError::Io(e),
        })?;
        self.plain.resize(sealed_len - TAG_LEN, 0);
        let result = self.keys.open_segment_checked(index as u32, last, &self.raw[..sealed_len], &mut self.plain);
        if let Err(e) = result {
            self.plain.zeroize();
            self.plain.clear();
            return Err(e);
        }
        self.current = Some(index);
        Ok(())
    }
}

impl<R: Read + Seek> Read for SeekableDecryptor<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.plaintext_len || out.is_empty() {
            return Ok(0);
        }
        let seg = self.geometry.segment_size as u64;
        let index = self.pos / seg;
        self.load(index).map_err(EnvelopeError::into_io)?;
        let offset = (self.pos - index * seg) as usize;
        let n = out.len().min(self.plain.len() - offset);
        out[..n].copy_from_slice(&self.plain[offset..offset + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for SeekableDecryptor<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.plaintext_len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        self.pos = target;
        Ok(target)
    }
}

impl<R: Read + Seek> Drop for SeekableDecryptor<R> {
    fn drop(&mut self) {
        self.plain.zeroize();
    }
}

/// Opens a stream-form message whose body is pushed in pieces of any size (for callers
/// that cannot hand over a reader, such as the C API): [`PushDecryptor::update`] returns
/// the plaintext of every segment that is complete and authenticated, and
/// [`PushDecryptor::finish`] checks and returns the final segment.
///
/// Like [`DecryptingReader`], it never releases bytes of a segment before its tag has
/// checked, holds at most one segment plus the piece being pushed, and after any error
/// every further call fails. A message cut at a segment boundary fails at `finish` with
/// [`EnvelopeError::Truncated`] or a segment authentication error, never as complete.
/// Create it with [`super::Envelope::push_decryptor`] once the header has arrived.
pub struct PushDecryptor {
    keys: MessageKeys,
    stride: usize,
    raw: Vec<u8>,
    index: u64,
    done: bool,
    poisoned: bool,
}

impl std::fmt::Debug for PushDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushDecryptor").field("segment_index", &self.index).finish_non_exhaustive()
    }
}

impl PushDecryptor {
    pub(crate) fn new(header: &Header, keys: MessageKeys) -> Result<Self, EnvelopeError> {
        let Form::Stream { segment_size } = header.form() else {
            return Err(EnvelopeError::Malformed("streaming needs the stream form"));
        };
        Ok(Self {
            keys,
            stride: segment_size as usize + TAG_LEN,
            raw: Vec::new(),
            index: 0,
            done: false,
            poisoned: false,
        })
    }

    fn check(&self) -> Result<(), EnvelopeError> {
        if self.poisoned {
            return Err(EnvelopeError::Malformed("decryption already failed"));
        }
        if self.done {
            return Err(EnvelopeError::TrailingData);
        }
        Ok(())
    }

    /// Opens segment `self.index` from the front of `raw` (`len` sealed bytes) into `out`.
    fn open_front(&mut self, len: usize, last: bool, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        if self.index >= MAX_SEGMENTS {
            return Err(EnvelopeError::TrailingData);
        }
        let start = out.len();
        out.resize(start + len - TAG_LEN, 0);
        let opened = self.keys.open_segment_checked(self.index as u32, last, &self.raw[..len], &mut out[start..]);
        if let Err(e) = opened {
            out[start..].zeroize();
            out.truncate(start);
            return Err(e);
        }
        self.raw.drain(..len);
        self.index += 1;
        Ok(())
    }

    fn fail(&mut self, e: EnvelopeError) -> EnvelopeError {
        self.poisoned = true;
        self.raw.zeroize();
        self.raw.clear();
        e
    }

    /// Takes the next piece of the body (the bytes after the header) and appends to `out`
    /// the plaintext of every segment now known not to be the last one.
    pub fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        self.check()?;
        self.raw.extend_from_slice(input);
        // A full segment followed by at least one more byte is not the final segment.
        while self.raw.len() > self.stride {
            if let Err(e) = self.open_front(self.stride, false, out) {
                return Err(self.fail(e));
            }
        }
        Ok(())
    }

    /// Ends the body: opens the final segment into `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        self.check()?;
        if self.raw.len() < TAG_LEN {
            return Err(self.fail(EnvelopeError::Truncated));
        }
        let len = self.raw.len();
        if let Err(e) = self.open_front(len, true, out) {
            return Err(self.fail(e));
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for PushDecryptor {
    fn drop(&mut self) {
        self.raw.zeroize();
    }
}
