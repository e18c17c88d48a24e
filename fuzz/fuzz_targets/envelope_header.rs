//! The v1 header parser on arbitrary bytes: never panics; what parses re-parses the same
//! from its reported length.
#![no_main]

use crypto_core::envelope::Header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, len)) = Header::parse(data) {
        assert!(len <= data.len());
        assert_eq!(len, header.encoded_len());
        let (again, len2) = Header::parse(&data[..len]).expect("a parsed header re-parses from its own bytes");
        assert_eq!((again, len2), (header, len));
    }
});
