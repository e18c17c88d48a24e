//! GF(2^128) arithmetic of GHASH exactly as the kernel computes it.
//!
//! **Representation.** GCM numbers the bits of a block from the most significant bit of
//! byte 0 (coefficient of `x^0`) to the least significant bit of byte 15 (`x^127`). The
//! kernel bit-reverses each little-endian word of a block (`__brev(__byte_perm(w, 0,
//! 0x0123))`), which puts the coefficient of `x^i` at bit `i` of a 128-bit integer
//! ([`Fe::from_words`]); multiplication is then a plain carry-less product followed by
//! reduction modulo `x^128 + x^7 + x^2 + x + 1`.
//!
//! **Multiplication** without secret-dependent lookups or branches (the GPU has no
//! carry-less multiply instruction): a 32×32 carry-less product from four integer products
//! with "holes" ([`clmul32`], the BearSSL `ctmul` trick), Karatsuba twice (9 of them for
//! 128×128), then a shift-and-xor reduction. Integer multiplication on NVIDIA GPUs and on
//! the CPUs this runs on is constant time.

use zeroize::Zeroize;

/// A field element in the kernel's bit-reversed representation (`lo` holds `x^0..x^63`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Zeroize)]
pub(crate) struct Fe {
    pub(crate) lo: u64,
    pub(crate) hi: u64,
}

impl Fe {
    pub(crate) const ZERO: Fe = Fe { lo: 0, hi: 0 };
    /// The polynomial 1.
    pub(crate) const ONE: Fe = Fe { lo: 1, hi: 0 };

    /// From the four little-endian words of a 16-byte block.
    #[inline]
    pub(crate) fn from_words(w: [u32; 4]) -> Fe {
        let limb = |x: u32| u64::from(x.swap_bytes().reverse_bits());
        Fe { lo: limb(w[0]) | (limb(w[1]) << 32), hi: limb(w[2]) | (limb(w[3]) << 32) }
    }

    /// Back to the four little-endian words of a block (the same map: it is an involution).
    #[inline]
    pub(crate) fn to_words(self) -> [u32; 4] {
        let word = |x: u64| (x as u32).reverse_bits().swap_bytes();
        [word(self.lo), word(self.lo >> 32), word(self.hi), word(self.hi >> 32)]
    }

    /// As the kernel passes it: `[lo, hi]`.
    pub(crate) fn to_pair(self) -> [u64; 2] {
        [self.lo, self.hi]
    }

    /// From the kernel's `[lo, hi]`.
    pub(crate) fn from_pair(p: [u64; 2]) -> Fe {
        Fe { lo: p[0], hi: p[1] }
    }
}

impl core::ops::BitXor for Fe {
    type Output = Fe;
    #[inline]
    fn bitxor(self, rhs: Fe) -> Fe {
        Fe { lo: self.lo ^ rhs.lo, hi: self.hi ^ rhs.hi }
    }
}

/// Carry-less 32×32 → 64-bit product. Each operand is split into four masks of every fourth
/// bit; an integer product of two such masks has at most 8 terms per bit position, so its
/// carries stay inside the 3-bit holes, which the final masks discard.
#[inline(always)]
pub(crate) fn clmul32(x: u32, y: u32) -> u64 {
    let (x0, x1, x2, x3) = (x & 0x1111_1111, x & 0x2222_2222, x & 0x4444_4444, x & 0x8888_8888);
    let (y0, y1, y2, y3) = (y & 0x1111_1111, y & 0x2222_2222, y & 0x4444_4444, y & 0x8888_8888);
    let m = |a: u32, b: u32| u64::from(a) * u64::from(b);
    let z0 = m(x0, y0) ^ m(x1, y3) ^ m(x2, y2) ^ m(x3, y1);
    let z1 = m(x0, y1) ^ m(x1, y0) ^ m(x2, y3) ^ m(x3, y2);
    let z2 = m(x0, y2) ^ m(x1, y1) ^ m(x2, y0) ^ m(x3, y3);
    let z3 = m(x0, y3) ^ m(x1, y2) ^ m(x2, y1) ^ m(x3, y0);
    (z0 & 0x1111_1111_1111_1111)
        | (z1 & 0x2222_2222_2222_2222)
        | (z2 & 0x4444_4444_4444_4444)
        | (z3 & 0x8888_8888_8888_8888)
}

/// Carry-less 64×64 → 128-bit product (`(lo, hi)`), Karatsuba over [`clmul32`].
#[inline(always)]
pub(crate) fn clmul64(a: u64, b: u64) -> (u64, u64) {
    let (a0, a1) = (a as u32, (a >> 32) as u32);
    let (b0, b1) = (b as u32, (b >> 32) as u32);
    let lo = clmul32(a0, b0);
    let hi = clmul32(a1, b1);
    let mid = clmul32(a0 ^ a1, b0 ^ b1) ^ lo ^ hi;
    (lo ^ (mid << 32), hi ^ (mid >> 32))
}

/// Carry-less 128×128 → 256-bit product, little-endian 64-bit limbs, Karatsuba over
/// [`clmul64`].
#[inline(always)]
pub(crate) fn clmul128(a: Fe, b: Fe) -> [u64; 4] {
    let lo = clmul64(a.lo, b.lo);
    let hi = clmul64(a.hi, b.hi);
    let m = clmul64(a.lo ^ a.hi, b.lo ^ b.hi);
    let mid = (m.0 ^ lo.0 ^ hi.0, m.1 ^ lo.1 ^ hi.1);
    [lo.0, lo.1 ^ mid.0, hi.0 ^ mid.1, hi.1]
}

/// Reduction of a 255-bit product modulo `x^128 + x^7 + x^2 + x + 1`: `x^128 ≡ x^7+x^2+x+1`,
/// so the high half `h` folds in as `h ⊕ h<<1 ⊕ h<<2 ⊕ h<<7`; the up to 7 bits shifted past
/// bit 127 fold once more the same way (they cannot overflow again).
#[inline(always)]
pub(crate) fn reduce(c: [u64; 4]) -> Fe {
    let (h0, h1) = (c[2], c[3]);
    let o = (h1 >> 63) ^ (h1 >> 62) ^ (h1 >> 57);
    let lo = c[0] ^ h0 ^ (h0 << 1) ^ (h0 << 2) ^ (h0 << 7) ^ o ^ (o << 1) ^ (o << 2) ^ (o << 7);
    let hi = c[1] ^ h1 ^ ((h1 << 1) | (h0 >> 63)) ^ ((h1 << 2) | (h0 >> 62)) ^ ((h1 << 7) | (h0 >> 57));
    Fe { lo, hi }
}

/// `a · b` in GF(2^128) (kernel: `gf_mul`).
#[inline]
pub(crate) fn mul(a: Fe, b: Fe) -> Fe {
    reduce(clmul128(a, b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::bulk::kernel_ref::aes::{bytes_of, words_of};

    /// NIST SP 800-38D Algorithm 1, bit by bit, on big-endian 128-bit blocks.
    fn spec_mul(x: u128, y: u128) -> u128 {
        let r = 0xE1u128 << 120;
        let (mut z, mut v) = (0u128, y);
        for i in 0..128 {
            if (x >> (127 - i)) & 1 == 1 {
                z ^= v;
            }
            v = if v & 1 == 1 { (v >> 1) ^ r } else { v >> 1 };
        }
        z
    }

    fn fe(b: u128) -> Fe {
        Fe::from_words(words_of(&b.to_be_bytes()))
    }

    fn block(f: Fe) -> u128 {
        u128::from_be_bytes(bytes_of(f.to_words()))
    }

    #[test]
    fn clmul32_matches_bitwise() {
        let mut buf = [0u8; 8];
        for _ in 0..2000 {
            crate::rand::fill(&mut buf);
            let x = u32::from_le_bytes(buf[..4].try_into().unwrap());
            let y = u32::from_le_bytes(buf[4..].try_into().unwrap());
            let mut want = 0u64;
            for i in 0..32 {
                if (y >> i) & 1 == 1 {
                    want ^= u64::from(x) << i;
                }
            }
            assert_eq!(clmul32(x, y), want);
        }
        assert_eq!(clmul32(u32::MAX, u32::MAX), 0x5555_5555_5555_5555);
    }

    #[test]
    fn representation_round_trips() {
        let mut b = [0u8; 16];
        for _ in 0..100 {
            crate::rand::fill(&mut b);
            let x = u128::from_be_bytes(b);
            assert_eq!(block(fe(x)), x);
        }
        // The block 0x80 00.. is the polynomial 1.
        assert_eq!(fe(1u128 << 127), Fe::ONE);
    }

    #[test]
    fn mul_matches_nist_algorithm_1() {
        let mut b = [0u8; 32];
        for _ in 0..1000 {
            crate::rand::fill(&mut b);
            let x = u128::from_be_bytes(b[..16].try_into().unwrap());
            let y = u128::from_be_bytes(b[16..].try_into().unwrap());
            assert_eq!(block(mul(fe(x), fe(y))), spec_mul(x, y));
        }
        // All-ones operands exercise every carry and both reduction folds.
        assert_eq!(block(mul(fe(u128::MAX), fe(u128::MAX))), spec_mul(u128::MAX, u128::MAX));
        assert_eq!(mul(fe(u128::MAX), Fe::ONE), fe(u128::MAX));
    }
}
