//! `WrappedKey::decode` (the storable form of a data key, `docs/format.md` §4.3; the C
//! API's `cryptocore_data_key_decrypt` takes it from callers) on arbitrary bytes: never
//! panics; what decodes is within the format's bounds and re-encodes to exactly the input.
#![no_main]

use crypto_core::provider::WrappedKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(w) = WrappedKey::decode(data) {
        assert!(w.key_version > 0 && !w.blob.is_empty() && w.blob.len() <= 4096);
        assert_eq!(w.encode().expect("a decoded key re-encodes"), data);
    }
});
