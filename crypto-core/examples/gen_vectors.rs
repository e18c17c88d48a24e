//! Generates `tests/vectors/envelope-v1.json`. Run by hand when the vector set changes:
//!
//! ```sh
//! cargo run -p crypto-core --example gen_vectors > crypto-core/tests/vectors/envelope-v1.json
//! ```
//!
//! The test suite never regenerates: it opens every positive vector and rejects every
//! negative one from the committed file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use crypto_core::Backend;
use crypto_core::envelope::{EncryptionContext, Envelope, Form, MessageSealer};
use crypto_core::keys::Keyring;
use crypto_core::provider::{KeyProvider, LocalProvider, MultiProvider};
use crypto_core::secret::{DataKey, KeyMaterial};
use serde_json::{Value, json};

struct Kek {
    provider_id: &'static str,
    name: &'static str,
    versions: Vec<[u8; 32]>,
}

impl Kek {
    fn new(provider_id: &'static str, name: &'static str, n: usize) -> Self {
        Self { provider_id, name, versions: (0..n).map(|_| *KeyMaterial::generate().expose_secret()).collect() }
    }

    fn keyring(&self) -> Arc<Keyring> {
        let ring = Arc::new(Keyring::in_memory());
        ring.create_key_with_material(self.name, KeyMaterial::from_bytes(self.versions[0])).unwrap();
        for m in &self.versions[1..] {
            ring.rotate_with_material(self.name, KeyMaterial::from_bytes(*m)).unwrap();
        }
        ring
    }

    fn provider(&self) -> LocalProvider {
        LocalProvider::with_id(self.keyring(), self.provider_id).unwrap()
    }

    fn json(&self, destroyed: &[u32]) -> Value {
        json!({
            "provider_id": self.provider_id,
            "name": self.name,
            "versions": self.versions.iter().enumerate().map(|(i, m)| {
                let v = i as u32 + 1;
                if destroyed.contains(&v) {
                    json!({"version": v, "destroyed": true})
                } else {
                    json!({"version": v, "material": hex::encode(m)})
                }
            }).collect::<Vec<_>>(),
        })
    }
}

fn ctx_json(ctx: &EncryptionContext) -> Value {
    Value::Object(ctx.iter().map(|(k, v)| (k.to_owned(), Value::String(v.to_owned()))).collect())
}

struct Sealed {
    data_key: DataKey,
    ciphertext: Vec<u8>,
    form: Form,
}

fn seal(p: &dyn KeyProvider, name: &str, ctx: &EncryptionContext, form: Form, pt: &[u8]) -> Sealed {
    let g = p.generate_data_key(name).unwrap();
    let sealer = MessageSealer::new(Backend::AwsLc, &g.data_key, g.wrapped, ctx, form).unwrap();
    Sealed { ciphertext: sealer.seal(pt).unwrap(), data_key: g.data_key, form }
}

fn seal_with_key(
    p: &dyn KeyProvider,
    dk: &DataKey,
    name: &str,
    ctx: &EncryptionContext,
    form: Form,
    pt: &[u8],
) -> Vec<u8> {
    let wrapped = p.wrap(name, dk).unwrap();
    MessageSealer::new(Backend::AwsLc, dk, wrapped, ctx, form).unwrap().seal(pt).unwrap()
}

#[allow(clippy::too_many_arguments)]
fn vector(
    out: &mut Vec<Value>,
    name: &str,
    description: &str,
    keys: Vec<Value>,
    s: &Sealed,
    ciphertext: &[u8],
    ctx: &EncryptionContext,
    pt: &[u8],
    expected_error: Option<&str>,
) {
    let header = Envelope::new(LocalProvider::new(Arc::new(Keyring::in_memory()))).inspect(&s.ciphertext).unwrap();
    out.push(json!({
        "id": out.len() + 1,
        "name": name,
        "description": description,
        "result": if expected_error.is_some() { "invalid" } else { "valid" },
        "expected_error": expected_error,
        "keys": keys,
        "key_name": header.key_name(),
        "key_version": header.key_version(),
        "data_key": hex::encode(s.data_key.expose_secret()),
        "context": ctx_json(ctx),
        "form": match s.form { Form::Stream { .. } => "stream", Form::Compact => "compact" },
        "segment_size": s.form_segment(),
        "plaintext": hex::encode(pt),
        "ciphertext": hex::encode(ciphertext),
    }));
}

trait SegmentOf {
    fn form_segment(&self) -> Option<u32>;
}
impl SegmentOf for Sealed {
    fn form_segment(&self) -> Option<u32> {
        match self.form {
            Form::Stream { segment_size } => Some(segment_size),
            Form::Compact => None,
        }
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

fn main() {
    let mut v = Vec::new();
    let kek = Kek::new("local", "tenant-a/db", 2);
    let dr = Kek::new("local-dr", "recovery/all", 1);
    let p1 = {
        // version 1 primary: build a keyring with only version 1.
        let k = Kek { provider_id: kek.provider_id, name: kek.name, versions: vec![kek.versions[0]] };
        k.provider()
    };
    let p2 = kek.provider();
    let keys = || vec![kek.json(&[])];
    let empty = EncryptionContext::new();
    let ctx = EncryptionContext::new().with("tenant", "a").with("table", "users").with("column", "ssn");
    let s16 = Form::Stream { segment_size: 16 };

    // ---- positive ----
    for (name, form, len, c) in [
        ("stream-empty", s16, 0usize, &empty),
        ("stream-1-byte", s16, 1, &ctx),
        ("stream-exact-one-segment", s16, 16, &ctx),
        ("stream-three-segments-partial-last", s16, 40, &ctx),
        ("stream-exact-two-segments", Form::Stream { segment_size: 32 }, 64, &empty),
        ("stream-1k-segments", Form::Stream { segment_size: 1024 }, 3000, &ctx),
        ("stream-default-segment", Form::Stream { segment_size: 65536 }, 100, &ctx),
        ("compact-empty", Form::Compact, 0, &empty),
        ("compact-record", Form::Compact, 11, &ctx),
    ] {
        let pt = pattern(len);
        let s = seal(&p1, kek.name, c, form, &pt);
        vector(
            &mut v,
            name,
            "valid message; must open to the plaintext",
            keys(),
            &s,
            &s.ciphertext.clone(),
            c,
            &pt,
            None,
        );
    }
    let uni = EncryptionContext::new().with("pfad", "Grüße/日本").with("", "x");
    let _ = uni; // empty keys are invalid; use a valid unicode context instead
    let uni = EncryptionContext::new().with("pfad", "Grüße/日本").with("z", "");
    let pt = b"unicode context".to_vec();
    let s = seal(&p1, kek.name, &uni, s16, &pt);
    vector(
        &mut v,
        "unicode-context",
        "context values are UTF-8; empty values allowed",
        keys(),
        &s,
        &s.ciphertext.clone(),
        &uni,
        &pt,
        None,
    );

    // Rewrapped to version 2: same body, header under v2.
    let pt = pattern(40);
    let s = seal(&p1, kek.name, &ctx, s16, &pt);
    let rewrapped = Envelope::new(p2.clone()).rewrap(&s.ciphertext).unwrap();
    let s2 = Sealed { data_key: s.data_key.duplicate(), ciphertext: rewrapped.clone(), form: s.form };
    vector(
        &mut v,
        "rewrapped-to-v2",
        "rewrapped under key version 2; body bytes unchanged",
        keys(),
        &s2,
        &rewrapped,
        &ctx,
        &pt,
        None,
    );

    // Multi-provider: local + DR copies; opening with only the DR key works.
    let multi = MultiProvider::new().with(Arc::new(p1.clone())).with_fixed_key(Arc::new(dr.provider()), dr.name);
    let pt = pattern(33);
    let s = seal(&multi, kek.name, &ctx, s16, &pt);
    vector(
        &mut v,
        "multi-wrapped-both-keys",
        "two wrapped copies; both KEKs available",
        vec![kek.json(&[]), dr.json(&[])],
        &s,
        &s.ciphertext.clone(),
        &ctx,
        &pt,
        None,
    );
    vector(
        &mut v,
        "multi-wrapped-dr-only",
        "two wrapped copies; only the recovery KEK available",
        vec![dr.json(&[])],
        &s,
        &s.ciphertext.clone(),
        &ctx,
        &pt,
        None,
    );

    // ---- negative, from one 3-segment message ----
    let pt = pattern(40);
    let base = seal(&p1, kek.name, &ctx, s16, &pt);
    let ct = base.ciphertext.clone();
    let (_, hlen) = crypto_core::envelope::Header::parse(&ct).unwrap();
    let neg = |v: &mut Vec<Value>,
               name: &str,
               desc: &str,
               bytes: Vec<u8>,
               c: &EncryptionContext,
               keys: Vec<Value>,
               err: &str| {
        vector(v, name, desc, keys, &base, &bytes, c, &pt, Some(err));
    };
    let flip = |at: usize| {
        let mut b = ct.clone();
        b[at] ^= 0x01;
        b
    };
    neg(
        &mut v,
        "wrong-context-value",
        "context value differs",
        ct.clone(),
        &ctx.clone().with("tenant", "b"),
        keys(),
        "HeaderAuthentication",
    );
    neg(
        &mut v,
        "wrong-context-extra-entry",
        "an extra context entry",
        ct.clone(),
        &ctx.clone().with("x", "y"),
        keys(),
        "HeaderAuthentication",
    );
    neg(&mut v, "wrong-context-empty", "context omitted", ct.clone(), &empty, keys(), "HeaderAuthentication");
    neg(&mut v, "bad-magic", "first byte changed", flip(0), &ctx, keys(), "Malformed");
    let mut b = ct.clone();
    b[4] = 2;
    neg(&mut v, "unknown-version", "version byte 2", b, &ctx, keys(), "UnsupportedVersion");
    let mut b = ct.clone();
    b[5] = 2;
    neg(&mut v, "unknown-suite", "suite byte 2", b, &ctx, keys(), "UnsupportedSuite");
    let mut b = ct.clone();
    b[6] = 3;
    neg(&mut v, "unknown-form", "form byte 3", b, &ctx, keys(), "UnsupportedForm");
    neg(&mut v, "segment-size-changed", "segment size 16 -> 17", flip(10), &ctx, keys(), "HeaderAuthentication");
    neg(&mut v, "salt-bit-flip", "one bit of the salt", flip(11 + 5), &ctx, keys(), "HeaderAuthentication");
    neg(
        &mut v,
        "commitment-bit-flip",
        "one bit of the commitment",
        flip(hlen - 1),
        &ctx,
        keys(),
        "HeaderAuthentication",
    );
    // wrapped entry starts at 11 + 32 + 1: id_len(1) "local"(5) name_len(1) name(11) version(4) blob_len(2) blob
    let entry = 11 + 32 + 1;
    let version_at = entry + 1 + 5 + 1 + kek.name.len();
    let blob_at = version_at + 4 + 2;
    neg(&mut v, "blob-bit-flip", "one bit of the wrapped data key", flip(blob_at + 20), &ctx, keys(), "Key");
    let mut b = ct.clone();
    b[version_at + 3] = 2;
    neg(&mut v, "key-version-swapped", "header claims version 2; wrap was under version 1", b, &ctx, keys(), "Key");
    neg(
        &mut v,
        "key-version-destroyed",
        "version 1 was destroyed (crypto-shredded)",
        ct.clone(),
        &ctx,
        vec![kek.json(&[1])],
        "Key",
    );
    neg(
        &mut v,
        "wrong-kek",
        "KEK bytes are not the ones that wrapped",
        ct.clone(),
        &ctx,
        vec![Kek::new("local", "tenant-a/db", 1).json(&[])],
        "Key",
    );
    neg(
        &mut v,
        "no-matching-provider",
        "only a different provider's key is available",
        ct.clone(),
        &ctx,
        vec![dr.json(&[])],
        "Key",
    );
    neg(
        &mut v,
        "body-bit-flip-segment-1",
        "one bit of segment 1's ciphertext",
        flip(hlen + 32 + 3),
        &ctx,
        keys(),
        "SegmentAuthentication:1",
    );
    neg(
        &mut v,
        "tag-bit-flip-last",
        "one bit of the final tag",
        flip(ct.len() - 1),
        &ctx,
        keys(),
        "SegmentAuthentication:2",
    );
    let mut b = ct.clone();
    let (s0, s1) = (hlen..hlen + 32, hlen + 32..hlen + 64);
    let seg0 = ct[s0.clone()].to_vec();
    b[s0].copy_from_slice(&ct[s1.clone()]);
    b[s1].copy_from_slice(&seg0);
    neg(&mut v, "segments-reordered", "segments 0 and 1 swapped", b, &ctx, keys(), "SegmentAuthentication:0");
    neg(&mut v, "truncated-at-boundary", "final segment removed", ct[..hlen + 64].to_vec(), &ctx, keys(), "Truncated");
    neg(&mut v, "truncated-body-empty", "whole body removed", ct[..hlen].to_vec(), &ctx, keys(), "Truncated");
    neg(
        &mut v,
        "truncated-in-final-segment",
        "cut 4 bytes into the final segment's tag",
        ct[..ct.len() - 4].to_vec(),
        &ctx,
        keys(),
        "SegmentAuthentication:2",
    );
    neg(
        &mut v,
        "truncated-partial-tag",
        "cut leaves fewer than 16 bytes of a segment",
        ct[..hlen + 64 + 10].to_vec(),
        &ctx,
        keys(),
        "Truncated",
    );
    neg(&mut v, "truncated-in-header", "cut inside the header", ct[..30].to_vec(), &ctx, keys(), "Truncated");
    neg(&mut v, "empty-input", "zero bytes", Vec::new(), &ctx, keys(), "Truncated");
    let mut b = ct.clone();
    b.extend_from_slice(&[0u8; 5]);
    neg(
        &mut v,
        "trailing-garbage",
        "5 bytes appended: segment boundaries shift",
        b,
        &ctx,
        keys(),
        "SegmentAuthentication:2",
    );
    // A message whose final segment is full-size, with that segment appended again.
    let tpt = pattern(32);
    let tbase = seal(&p1, kek.name, &ctx, s16, &tpt);
    let mut b = tbase.ciphertext.clone();
    let tail = b[b.len() - 32..].to_vec();
    b.extend_from_slice(&tail);
    vector(
        &mut v,
        "trailing-final-segment",
        "the full-size final segment appended again",
        keys(),
        &tbase,
        &b,
        &ctx,
        &tpt,
        Some("TrailingData"),
    );
    // Same data key (as from a cache), second message: splice its segment 1 into the first.
    let other = seal_with_key(
        &p1,
        &base.data_key,
        kek.name,
        &ctx,
        s16,
        &pattern(40).iter().map(|b| b ^ 0xff).collect::<Vec<_>>(),
    );
    let (_, ohlen) = crypto_core::envelope::Header::parse(&other).unwrap();
    let mut b = ct.clone();
    b[hlen + 32..hlen + 64].copy_from_slice(&other[ohlen + 32..ohlen + 64]);
    neg(
        &mut v,
        "segment-from-other-message",
        "segment 1 taken from another message under the same data key",
        b,
        &ctx,
        keys(),
        "SegmentAuthentication:1",
    );

    // Compact negatives.
    let cpt = pattern(11);
    let cbase = seal(&p1, kek.name, &ctx, Form::Compact, &cpt);
    let mut b = cbase.ciphertext.clone();
    let last = b.len() - 20;
    b[last] ^= 0x80;
    vector(
        &mut v,
        "compact-body-bit-flip",
        "one bit of the compact body",
        keys(),
        &cbase,
        &b,
        &ctx,
        &cpt,
        Some("SegmentAuthentication:0"),
    );
    vector(
        &mut v,
        "compact-wrong-context",
        "context differs",
        keys(),
        &cbase,
        &cbase.ciphertext.clone(),
        &empty,
        &cpt,
        Some("HeaderAuthentication"),
    );
    let b = cbase.ciphertext[..cbase.ciphertext.len() - 1].to_vec();
    vector(
        &mut v,
        "compact-truncated",
        "last byte removed",
        keys(),
        &cbase,
        &b,
        &ctx,
        &cpt,
        Some("SegmentAuthentication:0"),
    );

    let doc = json!({
        "format": "cryptocore envelope v1",
        "description": "Self-contained vectors: KEK material per provider/key/version (local provider blobs), the data key, encryption context, plaintext and full ciphertext, all hex. result=valid must open to plaintext; result=invalid must be rejected with expected_error (Rust EnvelopeError variant; SegmentAuthentication:N names the segment index). For invalid vectors, plaintext is what the unmodified message held.",
        "vectors": v,
    });
    println!("{}", serde_json::to_string_pretty(&doc).unwrap());
}
