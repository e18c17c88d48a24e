//! The Kubernetes KMS v2 plugin's Decrypt inputs that kube-apiserver passes back from etcd:
//! the key id (`kms_sidecar::k8s_kms::parse_key_id`) and the annotations
//! (`check_annotations`). The input as UTF-8 is a key id; as lines of `key=value` it is an
//! annotation map. Properties: neither ever panics; a parsed key id names a valid key and
//! a version above 0 and re-formats with `key_id` to exactly the input (one spelling per
//! key version), and that re-parses to the same parts; annotations pass only when they
//! are exactly the one Encrypt writes.
#![no_main]

use std::collections::HashMap;

use kms_sidecar::k8s_kms::{FORMAT_ANNOTATION, FORMAT_V1, check_annotations, key_id, parse_key_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = std::str::from_utf8(data)
        && let Some((name, created, version)) = parse_key_id(id)
    {
        assert!(crypto_core::keys::validate_key_name(name).is_ok(), "{id:?}: invalid name {name:?}");
        assert!(version > 0, "{id:?}");
        let formatted = key_id(name, created, version);
        assert_eq!(formatted, id, "not the canonical spelling");
        assert_eq!(parse_key_id(&formatted), Some((name, created, version)));
    }

    let mut annotations = HashMap::new();
    for line in data.split(|&b| b == b'\n') {
        let (k, v) = match line.iter().position(|&b| b == b'=') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &[][..]),
        };
        annotations.insert(String::from_utf8_lossy(k).into_owned(), v.to_vec());
    }
    let expected = annotations.len() == 1 && annotations.get(FORMAT_ANNOTATION).is_some_and(|v| v == FORMAT_V1);
    assert_eq!(check_annotations(&annotations).is_ok(), expected, "{annotations:?}");
});
