//! AES-256 block encryption laid out exactly as the GPU kernel computes it.
//!
//! State and round keys are four 32-bit **little-endian column words** (byte `r` of column
//! `c` is bits `8r..8r+8` of word `c`), which is what a 16-byte `uint4` load gives the kernel.
//! Rounds 1 to 13 use one 256-entry table `T0` (SubBytes and MixColumns of one byte);
//! the other three tables are byte rotations of it, `T_j(x) = rotl(T0[x], 8·j)`. In the
//! kernel `T0` lives in shared memory **replicated 32 times**, entry `x` of replica `l` at
//! word `32·x + l`: lane `l` of a warp only ever reads bank `l`, so lookups never conflict.
//! [`BANKED_T0`] is that shared-memory image, and [`encrypt_block`] takes the lane so that
//! it reads the same words the kernel reads. The final round takes the S-box byte out of
//! the same table (byte 1 of `T0[x]` is `S(x)`), so the kernel needs no second table.
//!
//! **Side channels.** The table lookups are indexed by secret state bytes. On a CPU that is
//! a cache-timing channel, so this code runs on the host only in tests and as the
//! specification of the kernel; on the GPU it is a shared-memory timing channel (see
//! `docs/gpu.md`). Key expansion and the S-box used to build the table are computed
//! without secret-indexed lookups ([`sbox_ct`]), so the host side of the GPU engine leaks
//! nothing through the CPU cache.

/// Lanes of a warp, and replicas of `T0` in shared memory.
pub(crate) const LANES: usize = 32;
/// Round-key words of AES-256: 15 round keys of 4 words.
pub(crate) const ROUND_KEY_WORDS: usize = 60;

/// Multiplication by `x` in GF(2^8) mod x^8 + x^4 + x^3 + x + 1, without branches.
const fn xtime(a: u8) -> u8 {
    (a << 1) ^ (0x1b & 0u8.wrapping_sub(a >> 7))
}

/// Multiplication in GF(2^8), constant time (eight fixed iterations, masks not branches).
const fn gmul(a: u8, b: u8) -> u8 {
    let (mut a, mut b, mut p) = (a, b, 0u8);
    let mut i = 0;
    while i < 8 {
        p ^= a & 0u8.wrapping_sub(b & 1);
        a = xtime(a);
        b >>= 1;
        i += 1;
    }
    p
}

/// The AES S-box computed, not looked up: inverse in GF(2^8) as `x^254` (0 maps to 0)
/// followed by the affine map. No secret-dependent memory access or branch.
pub(crate) const fn sbox_ct(x: u8) -> u8 {
    // x^254 = x^(2+4+8+16+32+64+128) by square-and-multiply with a fixed schedule.
    let x2 = gmul(x, x);
    let x3 = gmul(x2, x);
    let x6 = gmul(x3, x3);
    let x12 = gmul(x6, x6);
    let x15 = gmul(x12, x3);
    let x30 = gmul(x15, x15);
    let x60 = gmul(x30, x30);
    let x120 = gmul(x60, x60);
    let x126 = gmul(x120, x6);
    let x127 = gmul(x126, x);
    let x254 = gmul(x127, x127);
    let b = x254;
    b ^ b.rotate_left(1) ^ b.rotate_left(2) ^ b.rotate_left(3) ^ b.rotate_left(4) ^ 0x63
}

/// `T0[x]` as a little-endian column word: bytes `(2·S(x), S(x), S(x), 3·S(x))`.
const fn t0_entry(x: u8) -> u32 {
    let s = sbox_ct(x);
    let s2 = xtime(s);
    let s3 = s2 ^ s;
    (s2 as u32) | ((s as u32) << 8) | ((s as u32) << 16) | ((s3 as u32) << 24)
}

/// `T0`, 256 words. The CUDA source holds the same table (checked by a test).
pub(crate) static T0: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut x = 0;
    while x < 256 {
        t[x] = t0_entry(x as u8);
        x += 1;
    }
    t
};

/// The kernel's shared-memory image of `T0`: entry `x` of replica `l` at `32·x + l`.
pub(crate) static BANKED_T0: [u32; 256 * LANES] = {
    let mut t = [0u32; 256 * LANES];
    let mut i = 0;
    while i < 256 * LANES {
        t[i] = T0[i / LANES];
        i += 1;
    }
    t
};

/// Byte `j` of `w` (the kernel: `__byte_perm(w, 0, 0x4440 | j)`).
#[inline(always)]
fn byte(w: u32, j: u32) -> u32 {
    (w >> (8 * j)) & 0xff
}

/// `T_j[x]` as lane `lane` reads it: `rotl(T0[x], 8·j)` from replica `lane`
/// (the kernel: `__funnelshift_l(v, v, 8*j)` of the shared-memory word).
#[inline(always)]
fn te(j: u32, x: u32, lane: usize) -> u32 {
    BANKED_T0[x as usize * LANES + lane].rotate_left(8 * j)
}

/// `S(x)` as lane `lane` reads it: byte 1 of its replica of `T0[x]`.
#[inline(always)]
fn sbox_from_table(x: u32, lane: usize) -> u32 {
    (BANKED_T0[x as usize * LANES + lane] >> 8) & 0xff
}

/// AES-256 key expansion into 60 little-endian column words (FIPS-197 §5.2), with the
/// computed S-box so that no key byte indexes memory.
pub(crate) fn expand_key(key: &[u8; 32]) -> [u32; ROUND_KEY_WORDS] {
    let sub_word = |w: u32| -> u32 { u32::from_le_bytes(w.to_le_bytes().map(sbox_ct)) };
    let mut w = [0u32; ROUND_KEY_WORDS];
    for (i, chunk) in key.chunks_exact(4).enumerate() {
        w[i] = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    let mut rcon = 1u8;
    for i in 8..ROUND_KEY_WORDS {
        let mut temp = w[i - 1];
        if i % 8 == 0 {
            // RotWord moves byte 0 to the end: a right rotation of the little-endian word.
            temp = sub_word(temp.rotate_right(8)) ^ u32::from(rcon);
            rcon = xtime(rcon);
        } else if i % 8 == 4 {
            temp = sub_word(temp);
        }
        w[i] = w[i - 8] ^ temp;
    }
    w
}

/// Encrypts one block (four little-endian column words) as lane `lane` of a warp does.
///
/// Kernel: `aes_encrypt_block` in `gpu/aes_gcm.cu` (there unrolled over several blocks).
#[inline]
pub(crate) fn encrypt_block(rk: &[u32; ROUND_KEY_WORDS], lane: usize, input: [u32; 4]) -> [u32; 4] {
    let mut s = [input[0] ^ rk[0], input[1] ^ rk[1], input[2] ^ rk[2], input[3] ^ rk[3]];
    for round in 1..14 {
        let k = &rk[4 * round..4 * round + 4];
        let mut t = [0u32; 4];
        for c in 0..4 {
            // Column c takes row r from column c + r (ShiftRows), then T_r (MixColumns).
            t[c] = te(0, byte(s[c], 0), lane)
                ^ te(1, byte(s[(c + 1) % 4], 1), lane)
                ^ te(2, byte(s[(c + 2) % 4], 2), lane)
                ^ te(3, byte(s[(c + 3) % 4], 3), lane)
                ^ k[c];
        }
        s = t;
    }
    let mut out = [0u32; 4];
    for c in 0..4 {
        out[c] = (sbox_from_table(byte(s[c], 0), lane)
            | (sbox_from_table(byte(s[(c + 1) % 4], 1), lane) << 8)
            | (sbox_from_table(byte(s[(c + 2) % 4], 2), lane) << 16)
            | (sbox_from_table(byte(s[(c + 3) % 4], 3), lane) << 24))
            ^ rk[56 + c];
    }
    out
}

/// Little-endian words of a 16-byte block.
pub(crate) fn words_of(block: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_le_bytes([block[4 * i], block[4 * i + 1], block[4 * i + 2], block[4 * i + 3]]);
    [w(0), w(1), w(2), w(3)]
}

/// The 16 bytes of four little-endian words.
pub(crate) fn bytes_of(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (chunk, w) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn sbox_matches_fips197_spot_values_and_is_a_permutation() {
        assert_eq!(sbox_ct(0x00), 0x63);
        assert_eq!(sbox_ct(0x01), 0x7c);
        assert_eq!(sbox_ct(0x53), 0xed);
        assert_eq!(sbox_ct(0xff), 0x16);
        let mut seen = [false; 256];
        for x in 0..=255u8 {
            seen[sbox_ct(x) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn other_tables_are_rotations_and_banks_are_replicas() {
        for x in 0..256usize {
            let s = sbox_ct(x as u8);
            // T1 as a table would be bytes (3s, 2s, s, s).
            let s2 = xtime(s);
            let t1 = u32::from_le_bytes([s2 ^ s, s2, s, s]);
            assert_eq!(te(1, x as u32, 5), t1);
            for lane in 0..LANES {
                assert_eq!(BANKED_T0[x * LANES + lane], T0[x]);
                assert_eq!(sbox_from_table(x as u32, lane), u32::from(s));
            }
        }
    }

    /// FIPS-197 Appendix C.3 (AES-256), on every lane's table replica.
    #[test]
    fn fips197_c3_aes256_on_every_lane() {
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        let pt: [u8; 16] = hex::decode("00112233445566778899aabbccddeeff").unwrap().try_into().unwrap();
        let ct = hex::decode("8ea2b7ca516745bfeafc49904b496089").unwrap();
        let rk = expand_key(&key);
        for lane in 0..LANES {
            assert_eq!(bytes_of(encrypt_block(&rk, lane, words_of(&pt))).as_slice(), ct.as_slice(), "lane {lane}");
        }
    }

    /// Against the RustCrypto `aes` crate on random keys and blocks.
    #[test]
    fn matches_aes_crate() {
        use aes::cipher::{BlockEncrypt, KeyInit};
        let mut seed = [0u8; 48];
        for round in 0..64 {
            crate::rand::fill(&mut seed);
            let key: [u8; 32] = seed[..32].try_into().unwrap();
            let block: [u8; 16] = seed[32..].try_into().unwrap();
            let mut expected = aes::Block::from(block);
            aes::Aes256::new(&key.into()).encrypt_block(&mut expected);
            let got = bytes_of(encrypt_block(&expand_key(&key), round % LANES, words_of(&block)));
            assert_eq!(got.as_slice(), expected.as_slice());
        }
    }
}
