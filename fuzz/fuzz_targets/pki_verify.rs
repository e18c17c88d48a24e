//! Chain verification on arbitrary bytes as the leaf, as intermediates and as a CRL, and
//! the renewal helper: never panics; nothing random verifies to the fixed root.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crypto_core::pki::{CaOptions, CertificateAuthority, KeyType, needs_renewal, verify_chain};
use libfuzzer_sys::fuzz_target;

fn root() -> &'static (Vec<u8>, SystemTime) {
    static R: OnceLock<(Vec<u8>, SystemTime)> = OnceLock::new();
    R.get_or_init(|| {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = CertificateAuthority::new_root(&CaOptions { key_type: KeyType::EcdsaP256, ..CaOptions::new("Fuzz Root") }, now)
            .expect("CA");
        (ca.certificate_der().to_vec(), now)
    })
}

fuzz_target!(|data: &[u8]| {
    let (root, now) = root();
    let Some((&mode, rest)) = data.split_first() else { return };
    let anchors = [root.clone()];
    let result = match mode % 3 {
        0 => verify_chain(rest, &[], &anchors, &[], None, *now),
        1 => verify_chain(rest, &[rest.to_vec()], &anchors, &[], None, *now),
        _ => verify_chain(root, &[], &anchors, &[rest.to_vec()], None, *now),
    };
    // Nothing but the root itself can carry its fresh key's signature.
    if let Ok(chain) = result {
        assert_eq!(&chain.certificates[0], root);
    }
    let _ = needs_renewal(rest, 0.66, *now);
});
