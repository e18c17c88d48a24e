//! Opens every positive vector of `tests/vectors/envelope-v1.json` and rejects every
//! negative one with the expected error. Nothing is regenerated here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use crypto_core::Backend;
use crypto_core::envelope::{EncryptionContext, Envelope, EnvelopeError, open_with_data_key};
use crypto_core::keys::Keyring;
use crypto_core::provider::{KeyProvider, LocalProvider, MultiProvider};
use crypto_core::secret::{DataKey, KeyMaterial};
use serde_json::Value;

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn provider_for(keys: &Value) -> MultiProvider {
    let mut multi = MultiProvider::new();
    for k in keys.as_array().unwrap() {
        let name = k["name"].as_str().unwrap();
        let ring = Arc::new(Keyring::in_memory());
        let mut destroyed = Vec::new();
        for (i, ver) in k["versions"].as_array().unwrap().iter().enumerate() {
            let number = ver["version"].as_u64().unwrap() as u32;
            assert_eq!(number as usize, i + 1, "versions are listed in order from 1");
            let material = match ver.get("material") {
                Some(m) => KeyMaterial::from_slice(&unhex(m)).unwrap(),
                None => {
                    destroyed.push(number);
                    KeyMaterial::generate()
                }
            };
            if number == 1 {
                ring.create_key_with_material(name, material).unwrap();
            } else {
                ring.rotate_with_material(name, material).unwrap();
            }
        }
        for d in destroyed {
            ring.destroy_version(name, d).unwrap();
        }
        let id = k["provider_id"].as_str().unwrap();
        multi = multi.with(Arc::new(LocalProvider::with_id(ring, id).unwrap()));
    }
    multi
}

fn context(v: &Value) -> EncryptionContext {
    v.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect()
}

fn error_name(e: &EnvelopeError) -> String {
    match e {
        EnvelopeError::Malformed(_) => "Malformed".into(),
        EnvelopeError::UnsupportedVersion(_) => "UnsupportedVersion".into(),
        EnvelopeError::UnsupportedSuite(_) => "UnsupportedSuite".into(),
        EnvelopeError::UnsupportedForm(_) => "UnsupportedForm".into(),
        EnvelopeError::Truncated => "Truncated".into(),
        EnvelopeError::TrailingData => "TrailingData".into(),
        EnvelopeError::HeaderAuthentication => "HeaderAuthentication".into(),
        EnvelopeError::SegmentAuthentication { index } => format!("SegmentAuthentication:{index}"),
        EnvelopeError::Key(_) => "Key".into(),
        other => format!("{other:?}"),
    }
}

#[test]
fn every_vector_behaves_as_published() {
    let doc: Value =
        serde_json::from_str(include_str!("vectors/envelope-v1.json")).expect("vectors file is valid JSON");
    assert_eq!(doc["format"], "cryptocore envelope v1");
    let vectors = doc["vectors"].as_array().unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let ct = unhex(&v["ciphertext"]);
        let ctx = context(&v["context"]);
        let pt = unhex(&v["plaintext"]);
        let provider = provider_for(&v["keys"]);
        for backend in Backend::ALL {
            let envelope = Envelope::new(&provider)
                .with_options(crypto_core::envelope::SealOptions { backend, ..Default::default() })
                .unwrap();
            let result = envelope.open(&ctx, &ct);
            match v["result"].as_str().unwrap() {
                "valid" => {
                    let got = result.unwrap_or_else(|e| panic!("vector {name} ({backend:?}) must open: {e}"));
                    assert_eq!(got, pt, "vector {name}: plaintext");
                    // The published data key is the one in the header.
                    let header = envelope.inspect(&ct).unwrap();
                    let dk = provider.unwrap(header.wrapped_keys()).unwrap();
                    assert_eq!(dk, DataKey::from_slice(&unhex(&v["data_key"])).unwrap(), "vector {name}: data key");
                    assert_eq!(header.key_name(), v["key_name"].as_str().unwrap());
                    assert_eq!(u64::from(header.key_version()), v["key_version"].as_u64().unwrap());
                    let direct = open_with_data_key(backend, &dk, &ctx, &ct).unwrap();
                    assert_eq!(direct, pt);
                }
                "invalid" => {
                    let err = match result {
                        Ok(_) => panic!("vector {name} ({backend:?}) must be rejected"),
                        Err(e) => e,
                    };
                    assert_eq!(error_name(&err), v["expected_error"].as_str().unwrap(), "vector {name}: {err}");
                }
                other => panic!("vector {name}: unknown result {other}"),
            }
        }
        if v["result"] == "valid" {
            valid += 1;
        } else {
            invalid += 1;
        }
    }
    assert!(valid >= 13 && invalid >= 25, "vector file shrank: {valid} valid, {invalid} invalid");
}
