//! `PushDecryptor`: the stream form opened from pieces of any size, against the sealer and
//! the reader; truncation, tampering and misuse.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use crypto_core::envelope::{EncryptionContext, Envelope, EnvelopeError, Header, SealOptions};
use crypto_core::keys::Keyring;
use crypto_core::provider::LocalProvider;

fn envelope(segment: u32) -> Envelope<LocalProvider> {
    let ring = Arc::new(Keyring::in_memory());
    ring.create_key("k").unwrap();
    Envelope::new(LocalProvider::new(ring))
        .with_options(SealOptions { segment_size: segment, ..SealOptions::default() })
        .unwrap()
}

fn push_open(
    env: &Envelope<LocalProvider>,
    ctx: &EncryptionContext,
    ct: &[u8],
    chunk: usize,
) -> Result<Vec<u8>, EnvelopeError> {
    let (header, len) = Header::parse(ct)?;
    let mut d = env.push_decryptor(&header, ctx)?;
    let mut out = Vec::new();
    for piece in ct[len..].chunks(chunk.max(1)) {
        d.update(piece, &mut out)?;
    }
    d.finish(&mut out)?;
    Ok(out)
}

#[test]
fn any_chunking_gives_the_plaintext() {
    let env = envelope(64);
    let ctx = EncryptionContext::from_iter([("tenant", "a")]);
    for len in [0usize, 1, 63, 64, 65, 128, 1000, 4096] {
        let pt: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let ct = env.seal("k", &ctx, &pt).unwrap();
        for chunk in [1, 5, 64, 80, 81, 1 << 20] {
            assert_eq!(push_open(&env, &ctx, &ct, chunk).unwrap(), pt, "len {len} chunk {chunk}");
        }
    }
}

#[test]
fn plaintext_is_released_segment_by_segment_only_after_its_tag() {
    let env = envelope(64);
    let ctx = EncryptionContext::default();
    let ct = env.seal("k", &ctx, &[9u8; 200]).unwrap();
    let (header, len) = Header::parse(&ct).unwrap();
    let mut d = env.push_decryptor(&header, &ctx).unwrap();
    let mut out = Vec::new();
    d.update(&ct[len..len + 80], &mut out).unwrap();
    assert!(out.is_empty(), "one full segment without a following byte might be the last");
    d.update(&ct[len + 80..len + 81], &mut out).unwrap();
    assert_eq!(out.len(), 64);
    d.update(&ct[len + 81..], &mut out).unwrap();
    d.finish(&mut out).unwrap();
    assert_eq!(out, [9u8; 200]);
    // Nothing more is accepted after the end.
    assert!(d.update(b"x", &mut out).is_err());
    assert!(d.finish(&mut out).is_err());
}

#[test]
fn truncation_tampering_and_wrong_context_fail() {
    let env = envelope(64);
    let ctx = EncryptionContext::from_iter([("tenant", "a")]);
    let pt = vec![1u8; 300];
    let ct = env.seal("k", &ctx, &pt).unwrap();
    let (_, len) = Header::parse(&ct).unwrap();
    // Cut at every segment boundary and in between: never complete.
    for cut in [len, len + 10, len + 80, len + 160, len + 240, ct.len() - 1] {
        assert!(push_open(&env, &ctx, &ct[..cut], 7).is_err(), "cut at {cut}");
    }
    let mut bad = ct.clone();
    bad[len + 100] ^= 1;
    let mut out = Vec::new();
    let (header, hlen) = Header::parse(&bad).unwrap();
    let mut d = env.push_decryptor(&header, &ctx).unwrap();
    let e = d.update(&bad[hlen..], &mut out).unwrap_err();
    assert!(matches!(e, EnvelopeError::SegmentAuthentication { .. }), "{e:?}");
    assert_eq!(out.len(), 64, "only the segment before the damage was released");
    assert!(d.update(b"", &mut out).is_err() && d.finish(&mut out).is_err(), "poisoned");
    let other = EncryptionContext::from_iter([("tenant", "b")]);
    assert!(matches!(push_open(&env, &other, &ct, 64), Err(EnvelopeError::HeaderAuthentication)));
    // The compact form is not for streaming.
    let compact = env.seal_compact("k", &ctx, b"x").unwrap();
    let (h, _) = Header::parse(&compact).unwrap();
    assert!(env.push_decryptor(&h, &ctx).is_err());
}
