// AES-256-GCM over many segments of one message (crypto-core `bulk::gpu`).
//
// Specification: crypto-core/src/bulk/kernel_ref/ (safe Rust). Every function here names
// the reference function it implements; the reference is tested against aws-lc-rs,
// RustCrypto, the NIST CAVP and Wycheproof vectors and `bulk::cpu` on every `cargo test`,
// and a unit test checks this file's constants, T0 table and struct offsets against it.
// The two must change together.
//
// Format (docs/format.md): segment i of a message is AES-256-GCM with no AAD under the
// message key, nonce = prefix(7) || u32be(i) || last-flag(1), output ct || tag(16).
//
// Launch sequence for one batch of consecutive segments (host: bulk/gpu/mod.rs):
//   1. gcm_{seal,open}_chunks_{v16,bytes}: persistent grid, one warp per
//      (segment, 512-block chunk) item: AES-CTR of the chunk's blocks and the chunk's
//      GHASH partial sum (reference: `chunk_item`).
//   2. gcm_{seal,open}_finish: one thread per segment: combine the chunk partials, add the
//      length block, xor AES(K, J0); seal writes the tag, open compares it in constant time
//      and writes a per-segment flag (reference: `finish_segment`).
// `_v16` is the 16-byte vector path (segment size a multiple of 16 and 16-byte aligned
// buffers); `_bytes` handles any segment size and alignment byte by byte.
//
// Side channels: the AES tables in shared memory are indexed by secret state bytes. On a
// GPU shared by mutually distrusting tenants this is a known timing channel (Jiang, Fei,
// Kaeli, HPCA 2016); see docs/gpu.md. GHASH uses no secret-indexed memory.

#include <cstdint>
#include <cstddef>

// ---- Constants shared with the reference (checked by kernel_ref's tests) -----------------
#define GCM_LANES 32
#define GCM_BLOCKS_PER_LANE 16
#define GCM_UNROLL 4
#define GCM_CHUNK_BLOCKS 512
#define GCM_H_POWERS 33
#define GCM_PARAMS_SIZE 824
#define GCM_OFF_H_POW 240
#define GCM_OFF_H_CHUNK 768
#define GCM_OFF_SEGMENT_SIZE 784
#define GCM_OFF_FIRST_INDEX 800
#define GCM_OFF_NONCE_PREFIX 812
#define GCM_OFF_FLAG_OTHER 820
// Kernel shape (host side reads these from bulk/gpu/mod.rs constants of the same name).
#define GCM_WARPS_PER_CTA 8
#define GCM_THREADS (GCM_LANES * GCM_WARPS_PER_CTA)

static_assert(GCM_CHUNK_BLOCKS == GCM_LANES * GCM_BLOCKS_PER_LANE, "chunk = lanes x blocks per lane");
static_assert(GCM_BLOCKS_PER_LANE % GCM_UNROLL == 0, "unroll divides blocks per lane");

typedef unsigned long long u64;

// Reference: `KernelParams` (#[repr(C)]). Passed by value as a __grid_constant__ parameter,
// so it stays in the constant bank: round keys indexed by compile-time constants are
// immediate constant operands, and uniform reads broadcast.
struct KernelParams {
    uint32_t round_keys[60];
    u64 h_pow[GCM_H_POWERS][2];  // H^0 ..= H^32, bit-reflected [lo, hi]
    u64 h_chunk[2];              // H^512
    u64 segment_size;
    u64 last_len;
    uint32_t first_index;
    uint32_t segments;
    uint32_t chunks_per_segment;
    uint8_t nonce_prefix[7];
    uint8_t flag_last;
    uint8_t flag_other;
    uint8_t pad[3];
};
static_assert(sizeof(KernelParams) == GCM_PARAMS_SIZE, "KernelParams size differs from the Rust struct");
static_assert(offsetof(KernelParams, h_pow) == GCM_OFF_H_POW, "h_pow offset");
static_assert(offsetof(KernelParams, h_chunk) == GCM_OFF_H_CHUNK, "h_chunk offset");
static_assert(offsetof(KernelParams, segment_size) == GCM_OFF_SEGMENT_SIZE, "segment_size offset");
static_assert(offsetof(KernelParams, first_index) == GCM_OFF_FIRST_INDEX, "first_index offset");
static_assert(offsetof(KernelParams, nonce_prefix) == GCM_OFF_NONCE_PREFIX, "nonce_prefix offset");
static_assert(offsetof(KernelParams, flag_other) == GCM_OFF_FLAG_OTHER, "flag_other offset");

// ---- AES-256 with one replicated T-table (reference: kernel_ref/aes.rs) ------------------

// Reference: `T0`. Little-endian column word (2*S(x), S(x), S(x), 3*S(x)).
__device__ const uint32_t GCM_T0[256] = {
    0xa56363c6u, 0x847c7cf8u, 0x997777eeu, 0x8d7b7bf6u, 0x0df2f2ffu, 0xbd6b6bd6u, 0xb16f6fdeu, 0x54c5c591u,
    0x50303060u, 0x03010102u, 0xa96767ceu, 0x7d2b2b56u, 0x19fefee7u, 0x62d7d7b5u, 0xe6abab4du, 0x9a7676ecu,
    0x45caca8fu, 0x9d82821fu, 0x40c9c989u, 0x877d7dfau, 0x15fafaefu, 0xeb5959b2u, 0xc947478eu, 0x0bf0f0fbu,
    0xecadad41u, 0x67d4d4b3u, 0xfda2a25fu, 0xeaafaf45u, 0xbf9c9c23u, 0xf7a4a453u, 0x967272e4u, 0x5bc0c09bu,
    0xc2b7b775u, 0x1cfdfde1u, 0xae93933du, 0x6a26264cu, 0x5a36366cu, 0x413f3f7eu, 0x02f7f7f5u, 0x4fcccc83u,
    0x5c343468u, 0xf4a5a551u, 0x34e5e5d1u, 0x08f1f1f9u, 0x937171e2u, 0x73d8d8abu, 0x53313162u, 0x3f15152au,
    0x0c040408u, 0x52c7c795u, 0x65232346u, 0x5ec3c39du, 0x28181830u, 0xa1969637u, 0x0f05050au, 0xb59a9a2fu,
    0x0907070eu, 0x36121224u, 0x9b80801bu, 0x3de2e2dfu, 0x26ebebcdu, 0x6927274eu, 0xcdb2b27fu, 0x9f7575eau,
    0x1b090912u, 0x9e83831du, 0x742c2c58u, 0x2e1a1a34u, 0x2d1b1b36u, 0xb26e6edcu, 0xee5a5ab4u, 0xfba0a05bu,
    0xf65252a4u, 0x4d3b3b76u, 0x61d6d6b7u, 0xceb3b37du, 0x7b292952u, 0x3ee3e3ddu, 0x712f2f5eu, 0x97848413u,
    0xf55353a6u, 0x68d1d1b9u, 0x00000000u, 0x2cededc1u, 0x60202040u, 0x1ffcfce3u, 0xc8b1b179u, 0xed5b5bb6u,
    0xbe6a6ad4u, 0x46cbcb8du, 0xd9bebe67u, 0x4b393972u, 0xde4a4a94u, 0xd44c4c98u, 0xe85858b0u, 0x4acfcf85u,
    0x6bd0d0bbu, 0x2aefefc5u, 0xe5aaaa4fu, 0x16fbfbedu, 0xc5434386u, 0xd74d4d9au, 0x55333366u, 0x94858511u,
    0xcf45458au, 0x10f9f9e9u, 0x06020204u, 0x817f7ffeu, 0xf05050a0u, 0x443c3c78u, 0xba9f9f25u, 0xe3a8a84bu,
    0xf35151a2u, 0xfea3a35du, 0xc0404080u, 0x8a8f8f05u, 0xad92923fu, 0xbc9d9d21u, 0x48383870u, 0x04f5f5f1u,
    0xdfbcbc63u, 0xc1b6b677u, 0x75dadaafu, 0x63212142u, 0x30101020u, 0x1affffe5u, 0x0ef3f3fdu, 0x6dd2d2bfu,
    0x4ccdcd81u, 0x140c0c18u, 0x35131326u, 0x2fececc3u, 0xe15f5fbeu, 0xa2979735u, 0xcc444488u, 0x3917172eu,
    0x57c4c493u, 0xf2a7a755u, 0x827e7efcu, 0x473d3d7au, 0xac6464c8u, 0xe75d5dbau, 0x2b191932u, 0x957373e6u,
    0xa06060c0u, 0x98818119u, 0xd14f4f9eu, 0x7fdcdca3u, 0x66222244u, 0x7e2a2a54u, 0xab90903bu, 0x8388880bu,
    0xca46468cu, 0x29eeeec7u, 0xd3b8b86bu, 0x3c141428u, 0x79dedea7u, 0xe25e5ebcu, 0x1d0b0b16u, 0x76dbdbadu,
    0x3be0e0dbu, 0x56323264u, 0x4e3a3a74u, 0x1e0a0a14u, 0xdb494992u, 0x0a06060cu, 0x6c242448u, 0xe45c5cb8u,
    0x5dc2c29fu, 0x6ed3d3bdu, 0xefacac43u, 0xa66262c4u, 0xa8919139u, 0xa4959531u, 0x37e4e4d3u, 0x8b7979f2u,
    0x32e7e7d5u, 0x43c8c88bu, 0x5937376eu, 0xb76d6ddau, 0x8c8d8d01u, 0x64d5d5b1u, 0xd24e4e9cu, 0xe0a9a949u,
    0xb46c6cd8u, 0xfa5656acu, 0x07f4f4f3u, 0x25eaeacfu, 0xaf6565cau, 0x8e7a7af4u, 0xe9aeae47u, 0x18080810u,
    0xd5baba6fu, 0x887878f0u, 0x6f25254au, 0x722e2e5cu, 0x241c1c38u, 0xf1a6a657u, 0xc7b4b473u, 0x51c6c697u,
    0x23e8e8cbu, 0x7cdddda1u, 0x9c7474e8u, 0x211f1f3eu, 0xdd4b4b96u, 0xdcbdbd61u, 0x868b8b0du, 0x858a8a0fu,
    0x907070e0u, 0x423e3e7cu, 0xc4b5b571u, 0xaa6666ccu, 0xd8484890u, 0x05030306u, 0x01f6f6f7u, 0x120e0e1cu,
    0xa36161c2u, 0x5f35356au, 0xf95757aeu, 0xd0b9b969u, 0x91868617u, 0x58c1c199u, 0x271d1d3au, 0xb99e9e27u,
    0x38e1e1d9u, 0x13f8f8ebu, 0xb398982bu, 0x33111122u, 0xbb6969d2u, 0x70d9d9a9u, 0x898e8e07u, 0xa7949433u,
    0xb69b9b2du, 0x221e1e3cu, 0x92878715u, 0x20e9e9c9u, 0x49cece87u, 0xff5555aau, 0x78282850u, 0x7adfdfa5u,
    0x8f8c8c03u, 0xf8a1a159u, 0x80898909u, 0x170d0d1au, 0xdabfbf65u, 0x31e6e6d7u, 0xc6424284u, 0xb86868d0u,
    0xc3414182u, 0xb0999929u, 0x772d2d5au, 0x110f0f1eu, 0xcbb0b07bu, 0xfc5454a8u, 0xd6bbbb6du, 0x3a16162cu,
};

// Shared-memory image (reference: `BANKED_T0`): entry x of replica l at word 32*x + l, so
// lane l reads only bank l and a warp's 32 lookups never conflict. 32 KiB per CTA.
#define GCM_TABLE_WORDS (256 * GCM_LANES)

__device__ __forceinline__ void load_table(uint32_t* table) {
    // Thread i writes word i: consecutive threads, consecutive banks.
    for (uint32_t i = threadIdx.x; i < GCM_TABLE_WORDS; i += blockDim.x) {
        table[i] = GCM_T0[i / GCM_LANES];
    }
    __syncthreads();
}

// Reference: `byte` (byte j of w in the low 8 bits).
#define GCM_BYTE(w, j) __byte_perm((w), 0u, 0x4440u | (j))

// Reference: `te`. T_j[x] = rotl(T0[x], 8j), read from this lane's replica `t`.
__device__ __forceinline__ uint32_t te(const uint32_t* t, uint32_t j, uint32_t x) {
    const uint32_t v = t[x * GCM_LANES];
    return j == 0 ? v : __funnelshift_l(v, v, 8 * j);
}

// Reference: `sbox_from_table` (byte 1 of T0[x] is S(x)).
__device__ __forceinline__ uint32_t sbox(const uint32_t* t, uint32_t x) {
    return GCM_BYTE(t[x * GCM_LANES], 1);
}

// Reference: `encrypt_block`, for U independent blocks at once (their lookups interleave,
// so U loads are in flight per round). State in little-endian column words.
template <int U>
__device__ __forceinline__ void aes_encrypt_blocks(const uint32_t* t, const uint32_t* rk, uint32_t s[U][4]) {
#pragma unroll
    for (int u = 0; u < U; u++) {
#pragma unroll
        for (int c = 0; c < 4; c++) s[u][c] ^= rk[c];
    }
    // Rounds stay a loop: unrolled, 13 rounds x U blocks of lookups overflow the
    // instruction cache (and the cubin grows tenfold) for no gain; round keys are then
    // read from the constant bank with a register offset.
#pragma unroll 1
    for (int r = 1; r < 14; r++) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            uint32_t n[4];
#pragma unroll
            for (int c = 0; c < 4; c++) {
                // ShiftRows: column c takes row j from column c + j; MixColumns via T_j.
                n[c] = te(t, 0, GCM_BYTE(s[u][c], 0)) ^ te(t, 1, GCM_BYTE(s[u][(c + 1) & 3], 1)) ^
                       te(t, 2, GCM_BYTE(s[u][(c + 2) & 3], 2)) ^ te(t, 3, GCM_BYTE(s[u][(c + 3) & 3], 3)) ^
                       rk[4 * r + c];
            }
#pragma unroll
            for (int c = 0; c < 4; c++) s[u][c] = n[c];
        }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
        uint32_t n[4];
#pragma unroll
        for (int c = 0; c < 4; c++) {
            n[c] = (sbox(t, GCM_BYTE(s[u][c], 0)) | (sbox(t, GCM_BYTE(s[u][(c + 1) & 3], 1)) << 8) |
                    (sbox(t, GCM_BYTE(s[u][(c + 2) & 3], 2)) << 16) |
                    (sbox(t, GCM_BYTE(s[u][(c + 3) & 3], 3)) << 24)) ^
                   rk[56 + c];
        }
#pragma unroll
        for (int c = 0; c < 4; c++) s[u][c] = n[c];
    }
}

// ---- GHASH arithmetic (reference: kernel_ref/ghash.rs) -----------------------------------

struct Fe {
    u64 lo, hi;
};

// Reference: `Fe::from_words` / `Fe::to_words` (the same per-limb map both ways).
__device__ __forceinline__ uint32_t reflect(uint32_t w) { return __brev(__byte_perm(w, 0u, 0x0123u)); }

__device__ __forceinline__ Fe fe_from_words(uint32_t w0, uint32_t w1, uint32_t w2, uint32_t w3) {
    Fe r;
    r.lo = (u64)reflect(w0) | ((u64)reflect(w1) << 32);
    r.hi = (u64)reflect(w2) | ((u64)reflect(w3) << 32);
    return r;
}

__device__ __forceinline__ void fe_to_words(Fe a, uint32_t w[4]) {
    w[0] = reflect((uint32_t)a.lo);
    w[1] = reflect((uint32_t)(a.lo >> 32));
    w[2] = reflect((uint32_t)a.hi);
    w[3] = reflect((uint32_t)(a.hi >> 32));
}

__device__ __forceinline__ Fe fe_xor(Fe a, Fe b) {
    Fe r;
    r.lo = a.lo ^ b.lo;
    r.hi = a.hi ^ b.hi;
    return r;
}

__device__ __forceinline__ Fe fe_load(const u64 p[2]) {
    Fe r;
    r.lo = p[0];
    r.hi = p[1];
    return r;
}

// 32x32 -> 64-bit integer product as one IMAD.WIDE.U32 (a 64-bit C multiply can compile to
// a 64x64 multiply sequence).
__device__ __forceinline__ u64 mul_wide(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
    u64 r;
    asm("mul.wide.u32 %0, %1, %2;" : "=l"(r) : "r"(a), "r"(b));
    return r;
#else
    // Host build of this file (scripts/gpu-emulate): the same product.
    return (u64)a * b;
#endif
}

// Reference: `clmul32`. Integer products of every-fourth-bit masks; carries stay in holes.
__device__ __forceinline__ u64 clmul32(uint32_t x, uint32_t y) {
    const uint32_t x0 = x & 0x11111111u, x1 = x & 0x22222222u, x2 = x & 0x44444444u, x3 = x & 0x88888888u;
    const uint32_t y0 = y & 0x11111111u, y1 = y & 0x22222222u, y2 = y & 0x44444444u, y3 = y & 0x88888888u;
    const u64 z0 = mul_wide(x0, y0) ^ mul_wide(x1, y3) ^ mul_wide(x2, y2) ^ mul_wide(x3, y1);
    const u64 z1 = mul_wide(x0, y1) ^ mul_wide(x1, y0) ^ mul_wide(x2, y3) ^ mul_wide(x3, y2);
    const u64 z2 = mul_wide(x0, y2) ^ mul_wide(x1, y1) ^ mul_wide(x2, y0) ^ mul_wide(x3, y3);
    const u64 z3 = mul_wide(x0, y3) ^ mul_wide(x1, y2) ^ mul_wide(x2, y1) ^ mul_wide(x3, y0);
    return (z0 & 0x1111111111111111ull) | (z1 & 0x2222222222222222ull) | (z2 & 0x4444444444444444ull) |
           (z3 & 0x8888888888888888ull);
}

// Reference: `clmul64` (Karatsuba over clmul32).
__device__ __forceinline__ void clmul64(u64 a, u64 b, u64& lo_out, u64& hi_out) {
    const uint32_t a0 = (uint32_t)a, a1 = (uint32_t)(a >> 32);
    const uint32_t b0 = (uint32_t)b, b1 = (uint32_t)(b >> 32);
    const u64 lo = clmul32(a0, b0);
    const u64 hi = clmul32(a1, b1);
    const u64 mid = clmul32(a0 ^ a1, b0 ^ b1) ^ lo ^ hi;
    lo_out = lo ^ (mid << 32);
    hi_out = hi ^ (mid >> 32);
}

// Reference: `mul` = `reduce(clmul128(a, b))`.
__device__ __forceinline__ Fe gf_mul(Fe a, Fe b) {
    u64 l0, l1, h0, h1, m0, m1;
    clmul64(a.lo, b.lo, l0, l1);
    clmul64(a.hi, b.hi, h0, h1);
    clmul64(a.lo ^ a.hi, b.lo ^ b.hi, m0, m1);
    m0 ^= l0 ^ h0;
    m1 ^= l1 ^ h1;
    const u64 c0 = l0, c1 = l1 ^ m0, c2 = h0 ^ m1, c3 = h1;
    // Reference: `reduce`. x^128 = x^7 + x^2 + x + 1, folded twice.
    const u64 o = (c3 >> 63) ^ (c3 >> 62) ^ (c3 >> 57);
    Fe r;
    r.lo = c0 ^ c2 ^ (c2 << 1) ^ (c2 << 2) ^ (c2 << 7) ^ o ^ (o << 1) ^ (o << 2) ^ (o << 7);
    r.hi = c1 ^ c3 ^ ((c3 << 1) | (c2 >> 63)) ^ ((c3 << 2) | (c2 >> 62)) ^ ((c3 << 7) | (c2 >> 57));
    return r;
}

// ---- Segment geometry and nonces (reference: kernel_ref/mod.rs) -------------------------

// Reference: `SegmentBatch::segment_len`.
__device__ __forceinline__ u64 segment_len(const KernelParams& p, uint32_t s) {
    return s + 1 == p.segments ? p.last_len : p.segment_size;
}

// Reference: `KernelParams::nonce_words`. prefix(7) || u32be(index) || flag.
__device__ __forceinline__ void nonce_words(const KernelParams& p, uint32_t s, uint32_t n[3]) {
    const uint32_t index = p.first_index + s;
    const uint32_t flag = s + 1 == p.segments ? p.flag_last : p.flag_other;
    const uint8_t* q = p.nonce_prefix;
    n[0] = (uint32_t)q[0] | ((uint32_t)q[1] << 8) | ((uint32_t)q[2] << 16) | ((uint32_t)q[3] << 24);
    n[1] = (uint32_t)q[4] | ((uint32_t)q[5] << 8) | ((uint32_t)q[6] << 16) | ((index >> 24) << 24);
    n[2] = ((index >> 16) & 0xffu) | (((index >> 8) & 0xffu) << 8) | ((index & 0xffu) << 16) | (flag << 24);
}

// Reference: `counter_block`: nonce || u32be(counter).
__device__ __forceinline__ uint32_t counter_word(uint32_t counter) { return __byte_perm(counter, 0u, 0x0123u); }

// Loads n (0..16) bytes as four little-endian words, zero padded.
__device__ __forceinline__ void load_bytes(const uint8_t* src, uint32_t n, uint32_t w[4]) {
    uint32_t b[16];
#pragma unroll
    for (int i = 0; i < 16; i++) b[i] = (uint32_t)i < n ? (uint32_t)src[i] : 0u;
#pragma unroll
    for (int c = 0; c < 4; c++) w[c] = b[4 * c] | (b[4 * c + 1] << 8) | (b[4 * c + 2] << 16) | (b[4 * c + 3] << 24);
}

// Stores the first n (0..16) bytes of four little-endian words.
__device__ __forceinline__ void store_bytes(uint8_t* dst, uint32_t n, const uint32_t w[4]) {
#pragma unroll
    for (int i = 0; i < 16; i++) {
        if ((uint32_t)i < n) dst[i] = (uint8_t)(w[i >> 2] >> (8 * (i & 3)));
    }
}

// Zeroes bytes n..16 of four little-endian words (what is hashed of a partial block).
__device__ __forceinline__ void mask_words(uint32_t n, uint32_t w[4]) {
#pragma unroll
    for (int c = 0; c < 4; c++) {
        const int keep = (int)n - 4 * c;  // bytes of word c to keep
        const uint32_t m = keep >= 4 ? 0xffffffffu : keep <= 0 ? 0u : (0xffffffffu >> (8 * (4 - keep)));
        w[c] &= m;
    }
}

// ---- Step 1: AES-CTR + GHASH partials, one warp per chunk (reference: `chunk_item`) ----

template <bool OPEN, bool V16>
__device__ __forceinline__ void gcm_chunks(const KernelParams& p, const uint8_t* __restrict__ in,
                                           uint8_t* __restrict__ out, u64* __restrict__ partials) {
    __shared__ uint32_t table[GCM_TABLE_WORDS];
    load_table(table);
    const uint32_t lane = threadIdx.x % GCM_LANES;
    const uint32_t* t = table + lane;
    const u64 in_stride = OPEN ? p.segment_size + 16 : p.segment_size;
    const u64 out_stride = OPEN ? p.segment_size : p.segment_size + 16;
    const u64 cps = p.chunks_per_segment;
    const u64 items = (u64)p.segments * cps;
    const Fe h32 = fe_load(p.h_pow[GCM_LANES]);
    // Lane j's sum is multiplied by H^(31-j): its blocks' distance to the chunk's end.
    const Fe h_lane = fe_load(p.h_pow[GCM_LANES - 1 - lane]);

    // Persistent grid: each warp walks items item0, item0 + all warps, ...
    const u64 warps = (u64)gridDim.x * GCM_WARPS_PER_CTA;
    for (u64 item = (u64)blockIdx.x * GCM_WARPS_PER_CTA + threadIdx.x / GCM_LANES; item < items; item += warps) {
        const uint32_t s = (uint32_t)(item / cps);
        const u64 c = item % cps;
        const u64 len = segment_len(p, s);
        const long long m = (long long)((len + 15) / 16);
        const u64 n_chunks = ((u64)m + GCM_CHUNK_BLOCKS - 1) / GCM_CHUNK_BLOCKS;
        if (c >= n_chunks) continue;  // warp-uniform: a short last segment has fewer chunks
        // Chunks are aligned to the segment's end; the first may start before block 0.
        const long long start = m - (long long)((n_chunks - c) * GCM_CHUNK_BLOCKS);
        uint32_t nonce[3];
        nonce_words(p, s, nonce);
        const uint8_t* src = in + (u64)s * in_stride;
        uint8_t* dst = out + (u64)s * out_stride;

        Fe acc = {0, 0};
#pragma unroll 1
        for (int t0 = 0; t0 < GCM_BLOCKS_PER_LANE; t0 += GCM_UNROLL) {
            uint32_t x[GCM_UNROLL][4];   // input blocks
            uint32_t ks[GCM_UNROLL][4];  // counter blocks, then keystream
            // Issue the input loads first so they are in flight during the AES rounds.
#pragma unroll
            for (int u = 0; u < GCM_UNROLL; u++) {
                const long long b = start + (long long)(lane + GCM_LANES * (t0 + u));
                const u64 off = (u64)b * 16;
                const uint32_t n = b < 0 ? 0u : (uint32_t)min((u64)16, len - off);
                if (V16 && n == 16) {
                    const uint4 v = __ldg(reinterpret_cast<const uint4*>(src + off));
                    x[u][0] = v.x;
                    x[u][1] = v.y;
                    x[u][2] = v.z;
                    x[u][3] = v.w;
                } else {
                    load_bytes(src + (b < 0 ? 0 : off), n, x[u]);
                }
                ks[u][0] = nonce[0];
                ks[u][1] = nonce[1];
                ks[u][2] = nonce[2];
                ks[u][3] = counter_word((uint32_t)(b + 2));
            }
            aes_encrypt_blocks<GCM_UNROLL>(t, p.round_keys, ks);
            // Xor, store and hash in block order (Horner with H^32).
#pragma unroll
            for (int u = 0; u < GCM_UNROLL; u++) {
                const long long b = start + (long long)(lane + GCM_LANES * (t0 + u));
                const u64 off = (u64)b * 16;
                const uint32_t n = b < 0 ? 0u : (uint32_t)min((u64)16, len - off);
                uint32_t y[4];
#pragma unroll
                for (int c2 = 0; c2 < 4; c2++) y[c2] = x[u][c2] ^ ks[u][c2];
                if (V16 && n == 16) {
                    *reinterpret_cast<uint4*>(dst + off) = make_uint4(y[0], y[1], y[2], y[3]);
                } else if (n > 0) {
                    store_bytes(dst + off, n, y);
                }
                // Hash the ciphertext: the input when opening, the output when sealing;
                // zero padded (and all zero for blocks before the segment's start).
                uint32_t g[4];
#pragma unroll
                for (int c2 = 0; c2 < 4; c2++) g[c2] = OPEN ? x[u][c2] : y[c2];
                mask_words(n, g);
                acc = fe_xor(gf_mul(acc, h32), fe_from_words(g[0], g[1], g[2], g[3]));
            }
        }
        acc = gf_mul(acc, h_lane);
        // Reference: the butterfly in `chunk_item` (offsets 16, 8, 4, 2, 1).
#pragma unroll
        for (int offset = GCM_LANES / 2; offset > 0; offset /= 2) {
            acc.lo ^= __shfl_xor_sync(0xffffffffu, acc.lo, offset);
            acc.hi ^= __shfl_xor_sync(0xffffffffu, acc.hi, offset);
        }
        if (lane == 0) {
            partials[2 * item] = acc.lo;
            partials[2 * item + 1] = acc.hi;
        }
    }
}

// ---- Step 2: one thread per segment: tag (reference: `finish_segment`) ------------------

template <bool OPEN>
__device__ __forceinline__ void gcm_finish(const KernelParams& p, const uint8_t* __restrict__ in,
                                           uint8_t* __restrict__ out, const u64* __restrict__ partials,
                                           uint32_t* __restrict__ ok) {
    __shared__ uint32_t table[GCM_TABLE_WORDS];
    load_table(table);
    // blockDim.x and the grid stride are multiples of 32, so this is `s % 32` as in the
    // reference.
    const uint32_t* t = table + threadIdx.x % GCM_LANES;
    const u64 cps = p.chunks_per_segment;
    const Fe h = fe_load(p.h_pow[1]);
    const Fe h_chunk = fe_load(p.h_chunk);
    for (uint32_t s = blockIdx.x * blockDim.x + threadIdx.x; s < p.segments; s += gridDim.x * blockDim.x) {
        const u64 len = segment_len(p, s);
        const u64 n_chunks = ((len + 15) / 16 + GCM_CHUNK_BLOCKS - 1) / GCM_CHUNK_BLOCKS;
        Fe acc = {0, 0};
        for (u64 c = 0; c < n_chunks; c++) {
            const u64 i = (u64)s * cps + c;
            Fe part;
            part.lo = partials[2 * i];
            part.hi = partials[2 * i + 1];
            acc = fe_xor(gf_mul(acc, h_chunk), part);
        }
        const u64 bits = len * 8;
        const Fe length_block = fe_from_words(0u, 0u, counter_word((uint32_t)(bits >> 32)), counter_word((uint32_t)bits));
        const Fe sum = gf_mul(fe_xor(gf_mul(acc, h), length_block), h);
        uint32_t nonce[3];
        nonce_words(p, s, nonce);
        uint32_t j0[1][4] = {{nonce[0], nonce[1], nonce[2], counter_word(1u)}};
        aes_encrypt_blocks<1>(t, p.round_keys, j0);
        uint32_t tag[4];
        fe_to_words(sum, tag);
#pragma unroll
        for (int c = 0; c < 4; c++) tag[c] ^= j0[0][c];
        if (OPEN) {
            uint32_t stored[4];
            load_bytes(in + (u64)s * (p.segment_size + 16) + len, 16u, stored);
            // Constant time: accumulate all differences, no early exit.
            uint32_t diff = 0;
#pragma unroll
            for (int c = 0; c < 4; c++) diff |= tag[c] ^ stored[c];
            ok[s] = diff == 0 ? 1u : 0u;
        } else {
            store_bytes(out + (u64)s * (p.segment_size + 16) + len, 16u, tag);
        }
    }
}

// ---- Entry points -------------------------------------------------------------------------
// Chunk kernels: (params, in, out, partials). Finish kernels: (params, in, out, partials, ok).
// Blocks of GCM_THREADS threads; 32 KiB static shared memory each.

#define GCM_BOUNDS __launch_bounds__(GCM_THREADS, 2)

extern "C" __global__ void GCM_BOUNDS gcm_seal_chunks_v16(const __grid_constant__ KernelParams p, const uint8_t* in,
                                                          uint8_t* out, u64* partials) {
    gcm_chunks<false, true>(p, in, out, partials);
}

extern "C" __global__ void GCM_BOUNDS gcm_seal_chunks_bytes(const __grid_constant__ KernelParams p, const uint8_t* in,
                                                            uint8_t* out, u64* partials) {
    gcm_chunks<false, false>(p, in, out, partials);
}

extern "C" __global__ void GCM_BOUNDS gcm_open_chunks_v16(const __grid_constant__ KernelParams p, const uint8_t* in,
                                                          uint8_t* out, u64* partials) {
    gcm_chunks<true, true>(p, in, out, partials);
}

extern "C" __global__ void GCM_BOUNDS gcm_open_chunks_bytes(const __grid_constant__ KernelParams p, const uint8_t* in,
                                                            uint8_t* out, u64* partials) {
    gcm_chunks<true, false>(p, in, out, partials);
}

extern "C" __global__ void GCM_BOUNDS gcm_seal_finish(const __grid_constant__ KernelParams p, const uint8_t* in,
                                                      uint8_t* out, const u64* partials, uint32_t* ok) {
    gcm_finish<false>(p, in, out, partials, ok);
}

extern "C" __global__ void GCM_BOUNDS gcm_open_finish(const __grid_constant__ KernelParams p, const uint8_t* in,
                                                      uint8_t* out, const u64* partials, uint32_t* ok) {
    gcm_finish<true>(p, in, out, partials, ok);
}
