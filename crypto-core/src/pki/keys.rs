//! Key types of the CA and its certificates, and private keys as secret values.
//!
//! Every private-key operation (generation, signing) runs in aws-lc-rs through rcgen's
//! `aws_lc_rs` backend; the pure-Rust `rsa` crate is used only to read RSA *public* keys
//! (modulus size, exponent), never to sign (RUSTSEC-2023-0071).

use rcgen::{KeyPair, RsaKeySize, SignatureAlgorithm};
use zeroize::Zeroizing;

use super::PkiError;
use crate::secret::SecretBytes;

/// A key type for a CA or a leaf certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum KeyType {
    /// RSA, 2048-bit modulus: the platform default (widest client support).
    #[default]
    Rsa2048,
    /// RSA, 3072-bit modulus.
    Rsa3072,
    /// RSA, 4096-bit modulus.
    Rsa4096,
    /// ECDSA on NIST P-256 with SHA-256.
    EcdsaP256,
    /// ECDSA on NIST P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
}

impl KeyType {
    /// Every key type.
    pub const ALL: [KeyType; 6] = [
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::Ed25519,
    ];

    /// The command-line name (`rsa2048`, `rsa3072`, `rsa4096`, `p256`, `p384`, `ed25519`).
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Rsa2048 => "rsa2048",
            KeyType::Rsa3072 => "rsa3072",
            KeyType::Rsa4096 => "rsa4096",
            KeyType::EcdsaP256 => "p256",
            KeyType::EcdsaP384 => "p384",
            KeyType::Ed25519 => "ed25519",
        }
    }

    /// Parses a command-line name (see [`KeyType::name`]).
    pub fn from_name(name: &str) -> Result<Self, PkiError> {
        KeyType::ALL.into_iter().find(|k| k.name().eq_ignore_ascii_case(name)).ok_or_else(|| {
            PkiError::UnsupportedKey(format!("{name:?}: use rsa2048, rsa3072, rsa4096, p256, p384 or ed25519"))
        })
    }

    /// Strength in bits of the key (modulus size for RSA, curve size for EC).
    pub fn bits(self) -> u32 {
        match self {
            KeyType::Rsa2048 => 2048,
            KeyType::Rsa3072 => 3072,
            KeyType::Rsa4096 => 4096,
            KeyType::EcdsaP256 | KeyType::Ed25519 => 256,
            KeyType::EcdsaP384 => 384,
        }
    }

    pub(crate) fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

/// A private key (CA or leaf). Zeroized on drop, never printed.
pub struct PrivateKey {
    pair: KeyPair,
    key_type: KeyType,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKey").field("key_type", &self.key_type).finish_non_exhaustive()
    }
}

pub(crate) fn rcgen_err(e: rcgen::Error) -> PkiError {
    PkiError::Crypto(e.to_string())
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        // rcgen keeps a DER copy of the key beside aws-lc's own (which aws-lc cleanses
        // when it frees it): wipe the copy.
        zeroize::Zeroize::zeroize(&mut self.pair);
    }
}

impl PrivateKey {
    /// Generates a fresh key of `key_type` (aws-lc-rs).
    pub fn generate(key_type: KeyType) -> Result<Self, PkiError> {
        let alg = key_type.algorithm();
        let pair = match key_type {
            KeyType::Rsa2048 => KeyPair::generate_rsa_for(alg, RsaKeySize::_2048),
            KeyType::Rsa3072 => KeyPair::generate_rsa_for(alg, RsaKeySize::_3072),
            KeyType::Rsa4096 => KeyPair::generate_rsa_for(alg, RsaKeySize::_4096),
            _ => KeyPair::generate_for(alg),
        }
        .map_err(rcgen_err)?;
        Ok(Self { pair, key_type })
    }

    /// Loads a PKCS#8 key (PEM). The key type is read from the key itself.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, PkiError> {
        let pair = KeyPair::from_pem(pem).map_err(|e| PkiError::Malformed(format!("private key: {e}")))?;
        let key_type = key_type_of(&pair)?;
        // RSA keys load with SHA-256 signatures whatever their size: the platform's choice.
        Ok(Self { pair, key_type })
    }

    /// Loads a PKCS#8 key (DER).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, PkiError> {
        let pem = Zeroizing::new(pem_encode("PRIVATE KEY", der));
        Self::from_pkcs8_pem(&pem)
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The key as PKCS#8 PEM (secret).
    pub fn to_pkcs8_pem(&self) -> SecretBytes {
        let der = self.to_pkcs8_der();
        SecretBytes::new(pem_encode("PRIVATE KEY", der.expose_secret()).into_bytes())
    }

    /// The key as PKCS#8 DER (secret). Ed25519 keys are written in the RFC 8410 form
    /// (PKCS#8 v1, seed only), which every TLS stack reads; aws-lc's own v2 encoding (with
    /// the public key attached) is refused by OpenSSL 3.0.
    pub fn to_pkcs8_der(&self) -> SecretBytes {
        let der = Zeroizing::new(self.pair.serialize_der());
        if self.key_type == KeyType::Ed25519
            && let Some(seed) = ed25519_v2_seed(&der)
        {
            let mut v1 = ED25519_V1_PREFIX.to_vec();
            v1.extend_from_slice(seed);
            return SecretBytes::new(v1);
        }
        SecretBytes::new(der.to_vec())
    }

    /// The public key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn public_key_pem(&self) -> String {
        self.pair.public_key_pem()
    }

    pub(crate) fn pair(&self) -> &KeyPair {
        &self.pair
    }
}

/// PKCS#8 v1 Ed25519 private key up to the 32-byte seed (RFC 8410 §7).
const ED25519_V1_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// The seed of a PKCS#8 v2 Ed25519 key as aws-lc writes it (`30 51 02 01 01 30 05 06 03 2b
/// 65 70 04 22 04 20 <seed> a1 23 03 21 00 <public key>`).
fn ed25519_v2_seed(der: &[u8]) -> Option<&[u8]> {
    const V2_PREFIX: [u8; 16] =
        [0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    (der.len() == 83 && der[..16] == V2_PREFIX).then(|| &der[16..48])
}

/// The key type of a loaded key pair (RSA sizes other than 2048/3072/4096 are refused).
fn key_type_of(pair: &KeyPair) -> Result<KeyType, PkiError> {
    let alg = pair.algorithm();
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        Ok(KeyType::EcdsaP256)
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        Ok(KeyType::EcdsaP384)
    } else if alg == &rcgen::PKCS_ED25519 {
        Ok(KeyType::Ed25519)
    } else if alg == &rcgen::PKCS_RSA_SHA256 || alg == &rcgen::PKCS_RSA_SHA384 || alg == &rcgen::PKCS_RSA_SHA512 {
        match rsa_public_bits(pair.public_key_raw())? {
            2048 => Ok(KeyType::Rsa2048),
            3072 => Ok(KeyType::Rsa3072),
            4096 => Ok(KeyType::Rsa4096),
            bits => Err(PkiError::UnsupportedKey(format!("RSA-{bits}: use 2048, 3072 or 4096 bits"))),
        }
    } else {
        Err(PkiError::UnsupportedKey(format!("{alg:?}")))
    }
}

/// Modulus size in bits of a PKCS#1 `RSAPublicKey`, after checking the exponent.
pub(crate) fn rsa_public_bits(pkcs1_der: &[u8]) -> Result<u32, PkiError> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::traits::PublicKeyParts;
    let key =
        rsa::PublicKey::from_pkcs1_der(pkcs1_der).map_err(|e| PkiError::Malformed(format!("RSA public key: {e}")))?;
    Ok(key.n().bit_width())
}

/// PEM-encodes `der` with `label`.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(&pem::Pem::new(label, der), pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
}
