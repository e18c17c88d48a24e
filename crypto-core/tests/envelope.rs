//! Behaviour of the envelope: round trips, streaming, random access, rewrap, tampering,
//! key lifecycle effects, bulk engine identity.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use crypto_core::Backend;
use crypto_core::bulk;
use crypto_core::envelope::{EncryptionContext, Envelope, EnvelopeError, Form, SealOptions};
use crypto_core::keys::{KeyError, Keyring};
use crypto_core::provider::{LocalProvider, ProviderError};
use proptest::prelude::*;

const KEY: &str = "tenant-a/files";

fn setup(segment_size: u32, backend: Backend) -> (Arc<Keyring>, Envelope<LocalProvider>) {
    let ring = Arc::new(Keyring::in_memory());
    ring.create_key(KEY).unwrap();
    let env =
        Envelope::new(LocalProvider::new(ring.clone())).with_options(SealOptions { segment_size, backend }).unwrap();
    (ring, env)
}

fn ctx() -> EncryptionContext {
    EncryptionContext::new().with("tenant", "a").with("object", "bucket/key.bin")
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8).collect()
}

fn is_key_error(e: &EnvelopeError, f: impl Fn(&KeyError) -> bool) -> bool {
    matches!(e, EnvelopeError::Key(ProviderError::Key(k)) if f(k))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_all_forms(len in prop_oneof![0usize..70, 0usize..5000, 60_000usize..140_000],
                            seg in prop_oneof![Just(16u32), 17u32..300, Just(65536u32)],
                            entries in proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,12}", 0..4),
                            backend in prop_oneof![Just(Backend::AwsLc), Just(Backend::RustCrypto)]) {
        let (_, env) = setup(seg, backend);
        let ctx: EncryptionContext = entries.into_iter().collect();
        let pt = data(len);
        let sealed = env.seal(KEY, &ctx, &pt).unwrap();
        prop_assert_eq!(&env.open(&ctx, &sealed).unwrap(), &pt);
        // The other backend opens it too.
        let other = if backend == Backend::AwsLc { Backend::RustCrypto } else { Backend::AwsLc };
        let env2 = Envelope::new(env.provider().clone()).with_options(SealOptions { segment_size: seg, backend: other }).unwrap();
        prop_assert_eq!(&env2.open(&ctx, &sealed).unwrap(), &pt);
        // Streaming reader opens one-shot output.
        let mut out = Vec::new();
        env.decrypting_reader(Cursor::new(&sealed), &ctx).unwrap().read_to_end(&mut out).unwrap();
        prop_assert_eq!(&out, &pt);
        if len <= 20_000 {
            let compact = env.seal_compact(KEY, &ctx, &pt).unwrap();
            prop_assert_eq!(&env.open(&ctx, &compact).unwrap(), &pt);
        }
    }

    #[test]
    fn streaming_write_any_chunking(len in 0usize..3000, seg in 16u32..200, chunk in 1usize..500, rchunk in 1usize..700) {
        let (_, env) = setup(seg, Backend::AwsLc);
        let pt = data(len);
        let mut w = env.encrypting_writer(Vec::new(), KEY, &ctx()).unwrap();
        for c in pt.chunks(chunk) {
            w.write_all(c).unwrap();
        }
        let sealed = w.finish().unwrap();
        prop_assert_eq!(&env.open(&ctx(), &sealed).unwrap(), &pt);
        let mut r = env.decrypting_reader(Cursor::new(&sealed), &ctx()).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; rchunk];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 { break; }
            out.extend_from_slice(&buf[..n]);
        }
        prop_assert_eq!(out, pt);
    }

    #[test]
    fn random_access_reads_match(len in 1usize..5000, seg in 16u32..300, ops in proptest::collection::vec((0u64..5200, 1usize..400), 1..20)) {
        let (_, env) = setup(seg, Backend::AwsLc);
        let pt = data(len);
        let sealed = env.seal(KEY, &ctx(), &pt).unwrap();
        let mut r = env.seekable_decryptor(Cursor::new(sealed.clone()), &ctx()).unwrap();
        prop_assert_eq!(r.plaintext_len(), len as u64);
        for (pos, n) in ops {
            r.seek(SeekFrom::Start(pos)).unwrap();
            let mut buf = vec![0u8; n];
            let mut got = 0;
            loop {
                let k = r.read(&mut buf[got..]).unwrap();
                if k == 0 { break; }
                got += k;
                if got == n { break; }
            }
            let start = (pos as usize).min(len);
            let end = (start + n).min(len);
            prop_assert_eq!(&buf[..got], &pt[start..end]);
        }
        let segs = (len as u64).div_ceil(u64::from(seg));
        for i in 0..segs {
            let s = env.open_segment(&ctx(), &sealed, i).unwrap();
            let start = (i * u64::from(seg)) as usize;
            prop_assert_eq!(&s[..], &pt[start..(start + seg as usize).min(len)]);
        }
        let out_of_range = env.open_segment(&ctx(), &sealed, segs);
        let is_out_of_range = matches!(out_of_range, Err(EnvelopeError::SegmentOutOfRange { .. }));
        prop_assert!(is_out_of_range);
    }
}

/// Stream form with the given segment size, or the compact form when `seg` is `None`.
fn form_of(seg: Option<u32>) -> Form {
    seg.map_or(Form::Compact, |segment_size| Form::Stream { segment_size })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Rewrap (whole message, header only, streaming) after any number of rotations
    /// preserves the plaintext and the body, whatever the size, form and context; the
    /// rewrapped message names the newest version and still opens after every older
    /// version is destroyed.
    #[test]
    fn rewrap_preserves_plaintext(len in prop_oneof![0usize..40, 0usize..3000],
                                  seg in prop_oneof![Just(None), (16u32..300).prop_map(Some)],
                                  entries in proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,12}", 0..4),
                                  rotations in 1u32..4) {
        let (ring, env) = setup(16, Backend::AwsLc);
        let ctx: EncryptionContext = entries.into_iter().collect();
        let pt = data(len);
        let sealed = env.sealer(KEY, &ctx, form_of(seg)).unwrap().seal(&pt).unwrap();
        let old_header_len = env.inspect(&sealed).unwrap().encoded_len();
        for _ in 0..rotations {
            ring.rotate(KEY).unwrap();
        }
        let newest = rotations + 1;

        let whole = env.rewrap(&sealed).unwrap();
        let (header, consumed) = env.rewrap_header(&sealed[..old_header_len]).unwrap();
        prop_assert_eq!(consumed, old_header_len);
        let by_header = [&header[..], &sealed[consumed..]].concat();
        let mut streamed = Vec::new();
        env.rewrap_stream(Cursor::new(&sealed), &mut streamed).unwrap();

        for (what, re) in [("rewrap", &whole), ("rewrap_header", &by_header), ("rewrap_stream", &streamed)] {
            let h = env.inspect(re).unwrap();
            prop_assert_eq!(h.key_version(), newest, "{} names the newest version", what);
            prop_assert_eq!(&re[h.encoded_len()..], &sealed[old_header_len..], "{} leaves the body alone", what);
            prop_assert_eq!(&env.open(&ctx, re).unwrap(), &pt, "{} preserves the plaintext", what);
        }
        for v in 1..newest {
            ring.destroy_version(KEY, v).unwrap();
        }
        prop_assert!(env.open(&ctx, &sealed).is_err(), "the original died with its version");
        prop_assert_eq!(&env.open(&ctx, &whole).unwrap(), &pt);
    }

    /// A single-bit flip at a random position of a random message (any size, form,
    /// segment size and context, including multi-segment ones the exhaustive test below
    /// does not reach) is rejected by every way of opening it.
    #[test]
    fn random_single_bit_flip_is_rejected(len in 0usize..5000,
                                          seg in prop_oneof![Just(None), (16u32..400).prop_map(Some)],
                                          entries in proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,12}", 0..4),
                                          position in any::<proptest::sample::Index>(),
                                          bit in 0u8..8) {
        let (_, env) = setup(16, Backend::AwsLc);
        let ctx: EncryptionContext = entries.into_iter().collect();
        let pt = data(len);
        let sealed = env.sealer(KEY, &ctx, form_of(seg)).unwrap().seal(&pt).unwrap();
        let mut tampered = sealed.clone();
        let byte = position.index(tampered.len());
        tampered[byte] ^= 1 << bit;
        prop_assert!(env.open(&ctx, &tampered).is_err(), "open accepted a flip of byte {} bit {}", byte, bit);
        // The streaming reader may release verified segments before the flipped one, but
        // must end in an error and never return the whole plaintext.
        let streamed = env.decrypting_reader(Cursor::new(&tampered), &ctx).and_then(|mut r| {
            let mut out = Vec::new();
            r.read_to_end(&mut out).map_err(EnvelopeError::from)?;
            Ok(out)
        });
        prop_assert!(streamed.is_err(), "the streaming reader accepted a flip of byte {} bit {}", byte, bit);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// `seal_in_place` makes exactly the bytes `seal` makes for the same message (same
    /// sealer, so same salt and keys), whatever the size, form and segment size, with and
    /// without spare capacity; `open_in_place` turns them back into the plaintext, and a
    /// flipped bit empties the buffer with an error.
    #[test]
    fn in_place_matches_out_of_place(len in prop_oneof![0usize..70, 0usize..5000, 60_000usize..140_000],
                                     seg in prop_oneof![Just(None), (16u32..400).prop_map(Some), Just(Some(65536u32))],
                                     entries in proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,12}", 0..4),
                                     reserve in any::<bool>(),
                                     position in any::<proptest::sample::Index>(),
                                     bit in 0u8..8) {
        let (_, env) = setup(16, Backend::AwsLc);
        let ctx: EncryptionContext = entries.into_iter().collect();
        let pt = data(len);
        let form = form_of(seg);
        if form == Form::Compact && len > 20_000 {
            return Ok(());
        }
        let sealer = env.sealer(KEY, &ctx, form).unwrap();
        let expected = sealer.seal(&pt).unwrap();
        let mut buf = pt.clone();
        if reserve {
            buf.reserve_exact(sealer.sealed_len(len).unwrap() - len);
        }
        let cap = buf.capacity();
        sealer.seal_in_place(&mut buf).unwrap();
        prop_assert_eq!(buf.len(), sealer.sealed_len(len).unwrap());
        prop_assert!(buf == expected, "seal_in_place differs from seal");
        if reserve {
            prop_assert_eq!(buf.capacity(), cap, "reserving sealed_len avoided a reallocation");
        }
        let mut tampered = buf.clone();
        env.open_in_place(&ctx, &mut buf).unwrap();
        prop_assert!(buf == pt, "open_in_place did not give the plaintext back");

        let byte = position.index(tampered.len());
        tampered[byte] ^= 1 << bit;
        let before = tampered.clone();
        let e = env.open_in_place(&ctx, &mut tampered).unwrap_err();
        // Refused in the header (buffer untouched) or in the body (buffer emptied).
        prop_assert!(tampered.is_empty() || tampered == before, "{:?} left a partial buffer", e);
    }
}

/// The in-place calls through `Envelope` (fresh data key each), and what they leave in the
/// buffer on each kind of failure.
#[test]
fn envelope_in_place_round_trip_and_failures() {
    let (ring, env) = setup(64, Backend::AwsLc);
    for len in [0usize, 1, 63, 64, 65, 1000, 100_000] {
        let pt = data(len);
        let mut buf = pt.clone();
        env.seal_in_place(KEY, &ctx(), &mut buf).unwrap();
        assert_eq!(env.open(&ctx(), &buf).unwrap(), pt, "seal_in_place output opens with open ({len} bytes)");
        let sealed = env.seal(KEY, &ctx(), &pt).unwrap();
        let mut buf = sealed.clone();
        env.open_in_place(&ctx(), &mut buf).unwrap();
        assert_eq!(buf, pt, "open_in_place opens seal output ({len} bytes)");
    }

    let pt = data(1000);
    let sealed = env.seal(KEY, &ctx(), &pt).unwrap();
    // Wrong context and damaged header: refused before the body, the ciphertext is kept.
    let other = EncryptionContext::new().with("tenant", "b");
    let mut buf = sealed.clone();
    assert!(matches!(env.open_in_place(&other, &mut buf), Err(EnvelopeError::HeaderAuthentication)));
    assert_eq!(buf, sealed);
    let mut buf = sealed[..10].to_vec();
    assert!(env.open_in_place(&ctx(), &mut buf).is_err());
    assert_eq!(buf, &sealed[..10]);
    // Truncated by a whole segment and with trailing data: typed, buffer emptied.
    let mut buf = sealed[..sealed.len() - (1000 % 64 + 16)].to_vec();
    assert!(matches!(env.open_in_place(&ctx(), &mut buf), Err(EnvelopeError::Truncated)));
    assert!(buf.is_empty());
    let mut buf = [&sealed[..], &env.seal(KEY, &ctx(), &pt).unwrap()[..100]].concat();
    assert!(env.open_in_place(&ctx(), &mut buf).is_err());
    assert!(buf.is_empty());
    // A tampered last segment after good ones: the plaintext already moved is wiped.
    let mut buf = sealed.clone();
    let last = buf.len() - 1;
    buf[last] ^= 1;
    assert!(matches!(env.open_in_place(&ctx(), &mut buf), Err(EnvelopeError::SegmentAuthentication { .. })));
    assert!(buf.is_empty() && buf.capacity() >= sealed.len());
    // A disabled key refuses sealing and leaves the plaintext where it was.
    ring.disable(KEY).unwrap();
    let mut buf = pt.clone();
    assert!(env.seal_in_place(KEY, &ctx(), &mut buf).is_err());
    assert_eq!(buf, pt);
}

#[test]
fn every_single_bit_flip_is_rejected() {
    for (form, len) in [(Form::Stream { segment_size: 16 }, 40usize), (Form::Compact, 12)] {
        let (_, env) = setup(16, Backend::AwsLc);
        let pt = data(len);
        let sealed = env.sealer(KEY, &ctx(), form).unwrap().seal(&pt).unwrap();
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut t = sealed.clone();
                t[byte] ^= 1 << bit;
                assert!(env.open(&ctx(), &t).is_err(), "flip of byte {byte} bit {bit} ({form:?}) accepted");
            }
        }
    }
}

#[test]
fn streaming_reader_reports_truncation_not_eof() {
    let (_, env) = setup(16, Backend::AwsLc);
    let pt = data(64); // 4 full segments; the last is final
    let sealed = env.seal(KEY, &ctx(), &pt).unwrap();
    let hlen = env.inspect(&sealed).unwrap().encoded_len();
    for cut_segments in 1..4 {
        let cut = &sealed[..hlen + cut_segments * 32];
        let mut r = env.decrypting_reader(Cursor::new(cut), &ctx()).unwrap();
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(matches!(EnvelopeError::from_io(&err), Some(EnvelopeError::Truncated)));
        // Only authenticated segments were released.
        assert!(out.len() < cut_segments * 16 + 1);
        assert_eq!(&out[..], &pt[..out.len()]);
        // The reader stays failed.
        assert!(r.read(&mut [0u8; 8]).is_err());
        // Random access rejects it up front.
        let e = env.seekable_decryptor(Cursor::new(cut.to_vec()), &ctx()).unwrap_err();
        assert!(matches!(e, EnvelopeError::Truncated), "{e}");
    }
}

#[test]
fn streaming_reader_never_releases_a_tampered_segment() {
    let (_, env) = setup(16, Backend::AwsLc);
    let pt = data(80);
    let mut sealed = env.seal(KEY, &ctx(), &pt).unwrap();
    let hlen = env.inspect(&sealed).unwrap().encoded_len();
    sealed[hlen + 2 * 32 + 5] ^= 4; // segment 2
    let mut r = env.decrypting_reader(Cursor::new(&sealed), &ctx()).unwrap();
    let mut out = Vec::new();
    let err = r.read_to_end(&mut out).unwrap_err();
    assert!(matches!(EnvelopeError::from_io(&err), Some(EnvelopeError::SegmentAuthentication { index: 2 })));
    assert_eq!(out, &pt[..32]);
}

#[test]
fn unfinished_writer_leaves_a_truncated_message() {
    let (_, env) = setup(16, Backend::AwsLc);
    let mut sink = Vec::new();
    {
        let mut w = env.encrypting_writer(&mut sink, KEY, &ctx()).unwrap();
        w.write_all(&data(100)).unwrap();
        // dropped without finish()
    }
    let e = env.open(&ctx(), &sink).unwrap_err();
    assert!(matches!(e, EnvelopeError::Truncated), "{e}");
}

#[test]
fn wrong_context_fails_before_any_plaintext() {
    let (_, env) = setup(16, Backend::AwsLc);
    let sealed = env.seal(KEY, &ctx(), b"secret").unwrap();
    for bad in [EncryptionContext::new(), ctx().with("tenant", "b"), ctx().with("extra", "")] {
        assert!(matches!(env.open(&bad, &sealed), Err(EnvelopeError::HeaderAuthentication)));
        assert!(matches!(env.decrypting_reader(Cursor::new(&sealed), &bad), Err(EnvelopeError::HeaderAuthentication)));
        assert!(matches!(env.open_segment(&bad, &sealed, 0), Err(EnvelopeError::HeaderAuthentication)));
    }
}

#[test]
fn rewrap_changes_only_the_header_and_survives_version_destruction() {
    let (ring, env) = setup(16, Backend::AwsLc);
    let pt = data(100);
    let v1 = env.seal(KEY, &ctx(), &pt).unwrap();
    let h1 = env.inspect(&v1).unwrap();
    assert_eq!(h1.key_version(), 1);
    assert_eq!(ring.rotate(KEY).unwrap(), 2);
    let v2 = env.rewrap(&v1).unwrap();
    let h2 = env.inspect(&v2).unwrap();
    assert_eq!(h2.key_version(), 2);
    assert_eq!(&v1[h1.encoded_len()..], &v2[h2.encoded_len()..], "body untouched");
    // Streaming and header-only rewrap agree in effect.
    let mut v2s = Vec::new();
    env.rewrap_stream(Cursor::new(&v1), &mut v2s).unwrap();
    let (hdr, old_len) = env.rewrap_header(&v1[..h1.encoded_len()]).unwrap();
    assert_eq!(old_len, h1.encoded_len());
    assert_eq!(env.open(&ctx(), &v2s).unwrap(), pt);
    assert_eq!(env.open(&ctx(), &[&hdr[..], &v1[old_len..]].concat()).unwrap(), pt);
    // Retire version 1: the old ciphertext dies, the rewrapped one lives (crypto-shredding).
    ring.set_min_decrypt_version(KEY, 2).unwrap();
    assert!(is_key_error(&env.open(&ctx(), &v1).unwrap_err(), |k| matches!(
        k,
        KeyError::BelowMinDecryptVersion { .. }
    )));
    ring.destroy_version(KEY, 1).unwrap();
    assert!(is_key_error(&env.open(&ctx(), &v1).unwrap_err(), |k| matches!(
        k,
        KeyError::VersionDestroyed { version: 1, .. }
    )));
    assert_eq!(env.open(&ctx(), &v2).unwrap(), pt);
    // New messages go to version 2.
    assert_eq!(env.inspect(&env.seal(KEY, &ctx(), b"x").unwrap()).unwrap().key_version(), 2);
}

#[test]
fn key_states_gate_sealing_and_opening() {
    let clock = Arc::new(crypto_core::clock::ManualClock::new(std::time::Duration::from_secs(1_000_000)));
    let ring = Arc::new(Keyring::with_clock(clock.clone()));
    ring.create_key(KEY).unwrap();
    let env = Envelope::new(LocalProvider::new(ring.clone()));
    let sealed = env.seal(KEY, &ctx(), b"payload").unwrap();

    ring.disable(KEY).unwrap();
    assert!(is_key_error(&env.seal(KEY, &ctx(), b"x").unwrap_err(), |k| matches!(k, KeyError::Disabled { .. })));
    assert!(is_key_error(&env.open(&ctx(), &sealed).unwrap_err(), |k| matches!(k, KeyError::Disabled { .. })));
    ring.enable(KEY).unwrap();
    assert_eq!(env.open(&ctx(), &sealed).unwrap(), b"payload");

    let at = ring.schedule_deletion(KEY, std::time::Duration::from_secs(7 * 86400)).unwrap();
    assert_eq!(at, 1_000_000 + 7 * 86400);
    assert!(is_key_error(&env.open(&ctx(), &sealed).unwrap_err(), |k| matches!(k, KeyError::PendingDeletion { .. })));
    ring.cancel_deletion(KEY).unwrap();
    assert!(is_key_error(&env.open(&ctx(), &sealed).unwrap_err(), |k| matches!(k, KeyError::Disabled { .. })));
    ring.enable(KEY).unwrap();
    assert_eq!(env.open(&ctx(), &sealed).unwrap(), b"payload");

    ring.schedule_deletion(KEY, std::time::Duration::from_secs(60)).unwrap();
    assert!(ring.purge_due().unwrap().is_empty(), "not due yet");
    clock.advance(std::time::Duration::from_secs(61));
    assert_eq!(ring.purge_due().unwrap(), vec![KEY.to_owned()]);
    assert!(is_key_error(&env.open(&ctx(), &sealed).unwrap_err(), |k| matches!(k, KeyError::Destroyed { .. })));
    assert!(ring.enable(KEY).is_err(), "destroyed is final");
    assert!(ring.describe(KEY).unwrap().versions.iter().all(|v| v.destroyed_at.is_some()));
}

#[test]
fn bulk_cpu_is_byte_identical_to_sequential() {
    let (_, env) = setup(4096, Backend::AwsLc);
    for len in [0usize, 1, 4095, 4096, 4097, 3 * 4096, 1_000_003] {
        let pt = data(len);
        let sealer = env.sealer(KEY, &ctx(), Form::Stream { segment_size: 4096 }).unwrap();
        let seq = sealer.seal(&pt).unwrap();
        let par = bulk::cpu::seal(&sealer, &pt).unwrap();
        assert_eq!(seq, par, "len {len}");
        assert_eq!(bulk::cpu::open(&env, &ctx(), &par).unwrap(), pt);
        if len > 8192 {
            let mut t = par.clone();
            let n = t.len();
            t[n - 5000] ^= 1;
            assert!(matches!(bulk::cpu::open(&env, &ctx(), &t), Err(EnvelopeError::SegmentAuthentication { .. })));
        }
    }
}

#[test]
fn malformed_inputs_get_typed_errors_without_panicking() {
    let (_, env) = setup(16, Backend::AwsLc);
    let sealed = env.seal(KEY, &ctx(), &data(50)).unwrap();
    for cut in 0..sealed.len() {
        assert!(env.open(&ctx(), &sealed[..cut]).is_err());
        let _ = env.inspect(&sealed[..cut]);
        let _ = env.rewrap(&sealed[..cut]);
    }
    assert!(matches!(env.open(&ctx(), b"not an envelope at all"), Err(EnvelopeError::Malformed(_))));
    assert!(matches!(
        Envelope::new(env.provider().clone()).with_options(SealOptions { segment_size: 8, ..Default::default() }),
        Err(EnvelopeError::InvalidSegmentSize(8))
    ));
    let huge = vec![0u8; crypto_core::envelope::MAX_COMPACT_PLAINTEXT + 1];
    assert!(matches!(env.seal_compact(KEY, &ctx(), &huge), Err(EnvelopeError::TooLarge(_))));
    assert!(is_key_error(&env.seal("no/such-key", &ctx(), b"x").unwrap_err(), |k| matches!(
        k,
        KeyError::NotFound { .. }
    )));
    assert!(is_key_error(&env.seal("../etc", &ctx(), b"x").unwrap_err(), |k| matches!(k, KeyError::InvalidName(_))));
}

#[test]
fn compact_overhead_is_as_documented() {
    let ring = Arc::new(Keyring::in_memory());
    ring.create_key("tenant-a/db").unwrap();
    let env = Envelope::new(LocalProvider::new(ring));
    let sealed = env.seal_compact("tenant-a/db", &EncryptionContext::new(), &[7u8; 100]).unwrap();
    // 7 fixed + 32 salt + 1 count + (1+5 + 1+11 + 4 + 2+65) wrapped + 32 commitment + 16 tag
    assert_eq!(sealed.len() - 100, 7 + 32 + 1 + (1 + 5 + 1 + 11 + 4 + 2 + 65) + 32 + 16);
    assert_eq!(sealed.len() - 100, 177);
}
