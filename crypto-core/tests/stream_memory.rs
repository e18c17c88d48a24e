//! Streaming in constant memory: sealing and opening 1 GiB through the streaming types
//! never holds more than a few segments. Peak memory is the kernel's peak-RSS mark,
//! reset before each phase (this test binary runs this one test only).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::sync::Arc;

use crypto_core::envelope::{EncryptionContext, Envelope};
use crypto_core::keys::Keyring;
use crypto_core::provider::LocalProvider;

/// Resets the kernel's peak-RSS mark for this process (Linux: `5` to clear_refs).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset peak RSS");
}

/// (current RSS, peak RSS since the last reset) in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Produces `remaining` bytes of a pattern without holding them.
struct Source {
    remaining: u64,
    counter: u8,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining) as usize;
        for b in &mut buf[..n] {
            *b = self.counter;
            self.counter = self.counter.wrapping_add(1);
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[test]
fn one_gib_streams_in_a_few_segments_of_memory() {
    let gib: u64 = std::env::var("CRYPTOCORE_STREAM_TEST_GIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let total = gib << 30;
    let ring = Arc::new(Keyring::in_memory());
    ring.create_key("big").unwrap();
    let env = Envelope::new(LocalProvider::new(ring));
    let ctx = EncryptionContext::new().with("object", "checkpoint");
    let segment = 64 * 1024usize;

    // Seal: source -> writer -> file on disk (the ciphertext is not held in memory).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.cce");
    reset_peak();
    let (baseline, _) = rss();
    {
        let file = std::io::BufWriter::with_capacity(segment, std::fs::File::create(&path).unwrap());
        let mut w = env.encrypting_writer(file, "big", &ctx).unwrap();
        let mut src = Source { remaining: total, counter: 0 };
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n]).unwrap();
        }
        w.finish().unwrap();
    }
    let seal_peak = rss().1.saturating_sub(baseline);
    let mut head = vec![0u8; 512];
    std::fs::File::open(&path).unwrap().read_exact(&mut head).unwrap();
    let header_len = env.inspect(&head).unwrap().encoded_len() as u64;
    assert_eq!(std::fs::metadata(&path).unwrap().len(), header_len + total + (total / segment as u64) * 16);

    // Open: file -> reader -> compare with the regenerated pattern.
    reset_peak();
    let (baseline, _) = rss();
    let mut r = env.decrypting_reader(std::io::BufReader::new(std::fs::File::open(&path).unwrap()), &ctx).unwrap();
    let mut expect = Source { remaining: total, counter: 0 };
    let mut got = vec![0u8; 1 << 20];
    let mut want = vec![0u8; 1 << 20];
    let mut seen = 0u64;
    loop {
        let n = r.read(&mut got).unwrap();
        if n == 0 {
            break;
        }
        expect.read_exact(&mut want[..n]).unwrap();
        assert!(got[..n] == want[..n], "plaintext mismatch at {seen}");
        seen += n as u64;
    }
    assert_eq!(seen, total);
    let open_peak = rss().1.saturating_sub(baseline);
    eprintln!("streamed {gib} GiB: peak RSS growth {seal_peak} B sealing, {open_peak} B opening");
    // 1 MiB caller buffers (2 MiB when opening) + a few 64 KiB segments + allocator and
    // page-granularity slack. Holding the message would need a whole GiB.
    let bound = 8 << 20;
    assert!(seal_peak < bound, "sealing held {seal_peak} bytes");
    assert!(open_peak < bound, "opening held {open_peak} bytes");
}
