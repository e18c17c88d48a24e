//! Shared setup: the KEKs of the published vectors, so that the committed seeds (the
//! vectors' ciphertexts) are valid messages and the fuzzer starts from deep inside the
//! format rather than at the magic bytes.

// Each target uses part of this module.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use crypto_core::envelope::{EncryptionContext, Envelope};
use crypto_core::keys::Keyring;
use crypto_core::provider::{LocalProvider, MultiProvider};
use crypto_core::secret::KeyMaterial;

pub struct Setup {
    pub envelope: Envelope<MultiProvider>,
    pub contexts: Vec<EncryptionContext>,
}

pub fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../crypto-core/tests/vectors/envelope-v1.json")).unwrap();
        let vectors = doc["vectors"].as_array().unwrap();
        // Keys of the first vector (tenant-a/db, versions 1 and 2) and of the multi-wrapped one.
        let mut multi = MultiProvider::new();
        let mut seen = std::collections::HashSet::new();
        for v in vectors.iter().filter(|v| v["result"] == "valid") {
            for k in v["keys"].as_array().unwrap() {
                let id = k["provider_id"].as_str().unwrap().to_owned();
                if !seen.insert(id.clone()) {
                    continue;
                }
                let ring = Arc::new(Keyring::in_memory());
                let name = k["name"].as_str().unwrap();
                for (i, ver) in k["versions"].as_array().unwrap().iter().enumerate() {
                    let m = KeyMaterial::from_slice(&hex::decode(ver["material"].as_str().unwrap()).unwrap()).unwrap();
                    if i == 0 {
                        ring.create_key_with_material(name, m).unwrap();
                    } else {
                        ring.rotate_with_material(name, m).unwrap();
                    }
                }
                multi = multi.with(Arc::new(LocalProvider::with_id(ring, &id).unwrap()));
            }
        }
        let contexts: Vec<EncryptionContext> = vectors
            .iter()
            .map(|v| {
                v["context"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect()
            })
            .collect();
        Setup { envelope: Envelope::new(multi), contexts }
    })
}

/// The first valid vector's `local` key: its name and every version's material, oldest
/// first (for targets that import it through the C API).
pub fn vector_key() -> (String, Vec<Vec<u8>>) {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../../crypto-core/tests/vectors/envelope-v1.json")).unwrap();
    let v = doc["vectors"].as_array().unwrap().iter().find(|v| v["result"] == "valid").unwrap();
    let k = &v["keys"][0];
    let versions = k["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ver| hex::decode(ver["material"].as_str().unwrap()).unwrap())
        .collect();
    (k["name"].as_str().unwrap().to_owned(), versions)
}

/// A fresh temporary directory `<prefix><pid>`, on tmpfs (`/dev/shm`) where there is one
/// so that the keystore's fsyncs cost nothing. Fuzz state lives in statics, which are never
/// dropped: directories with this prefix that processes no longer running left behind are
/// removed first.
pub fn temp_dir(prefix: &str) -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(prefix)
                && !std::path::Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = base.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
