// Runs crypto-core's CUDA kernels (crypto-core/src/bulk/gpu/aes_gcm.cu), compiled as host
// C++ through cuda_host_shim.h, against OpenSSL's AES-256-GCM: every segment of a batch
// must match OpenSSL's ciphertext and tag for the segment nonce of the format
// (prefix || u32be(index) || last-flag), opening must restore the plaintext with every flag
// up, and a flipped byte must drop exactly that segment's flag. Both the 16-byte vector
// path and the byte path, several segment sizes, tails and multi-chunk segments, and a
// grid smaller than the work (the persistent loop).
//
// Build and run: scripts/gpu-emulate/run.sh
#include "cuda_host_shim.h"

#include "../../crypto-core/src/bulk/gpu/aes_gcm.cu"

#include <openssl/aes.h>
#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

static std::mt19937_64 rng(20261124);

static void fill_random(uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)rng();
}

static int failures = 0;
static int checks = 0;

static void check(bool ok, const std::string& what) {
    checks++;
    if (!ok) {
        failures++;
        std::fprintf(stderr, "FAIL: %s\n", what.c_str());
    }
}

static uint32_t le32(const uint8_t* b) {
    return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
}

// Host side of the launch, as kernel_ref::KernelParams::new computes it (here with
// OpenSSL's key schedule and AES for H, and the kernel's own GF multiply for the powers).
static KernelParams make_params(const uint8_t key[32], const uint8_t prefix[7], uint64_t segment_size,
                                uint64_t last_len, uint32_t first_index, uint32_t segments, uint8_t flag_last) {
    KernelParams p;
    std::memset(&p, 0, sizeof p);
    // FIPS-197 key expansion in little-endian column words (S-box: byte 1 of T0).
    uint32_t* w = p.round_keys;
    for (int i = 0; i < 8; i++) w[i] = le32(key + 4 * i);
    uint32_t rcon = 1;
    auto sub_word = [](uint32_t x) {
        uint32_t r = 0;
        for (int b = 0; b < 4; b++) r |= ((GCM_T0[(x >> (8 * b)) & 0xff] >> 8) & 0xffu) << (8 * b);
        return r;
    };
    for (int i = 8; i < 60; i++) {
        uint32_t t = w[i - 1];
        if (i % 8 == 0) {
            t = sub_word((t >> 8) | (t << 24)) ^ rcon;
            rcon = (rcon << 1) ^ ((rcon & 0x80) ? 0x11b : 0);
        } else if (i % 8 == 4) {
            t = sub_word(t);
        }
        w[i] = w[i - 8] ^ t;
    }
    // H = AES(K, 0) from OpenSSL (an independent AES).
    uint8_t zero[16] = {0}, hb[16];
    AES_KEY aes;
    AES_set_encrypt_key(key, 256, &aes);
    AES_encrypt(zero, hb, &aes);
    const Fe h = fe_from_words(le32(hb), le32(hb + 4), le32(hb + 8), le32(hb + 12));
    Fe pw = {1, 0};
    for (int k = 0; k < GCM_H_POWERS; k++) {
        p.h_pow[k][0] = pw.lo;
        p.h_pow[k][1] = pw.hi;
        pw = gf_mul(pw, h);
    }
    Fe hc = fe_load(p.h_pow[32]);
    for (int i = 0; i < 4; i++) hc = gf_mul(hc, hc);
    p.h_chunk[0] = hc.lo;
    p.h_chunk[1] = hc.hi;
    p.segment_size = segment_size;
    p.last_len = last_len;
    p.first_index = first_index;
    p.segments = segments;
    const uint64_t cps = ((segment_size + 15) / 16 + GCM_CHUNK_BLOCKS - 1) / GCM_CHUNK_BLOCKS;
    p.chunks_per_segment = (uint32_t)(cps == 0 ? 1 : cps);
    std::memcpy(p.nonce_prefix, prefix, 7);
    p.flag_last = flag_last;
    p.flag_other = 0;
    return p;
}

static void openssl_seal(const uint8_t key[32], const uint8_t nonce[12], const uint8_t* pt, size_t n, uint8_t* ct,
                         uint8_t tag[16]) {
    EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
    int len = 0;
    EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), nullptr, key, nonce);
    if (n > 0) EVP_EncryptUpdate(c, ct, &len, pt, (int)n);
    EVP_EncryptFinal_ex(c, ct + len, &len);
    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag);
    EVP_CIPHER_CTX_free(c);
}

struct Run {
    std::vector<uint32_t> ok;
};

static unsigned grid_for(uint64_t work, unsigned per_block, unsigned cap) {
    uint64_t g = (work + per_block - 1) / per_block;
    if (g < 1) g = 1;
    return (unsigned)(g < cap ? g : cap);
}

// Launches chunks + finish for one direction over host buffers.
static std::vector<uint32_t> run(const KernelParams& p, bool open, bool v16, const uint8_t* in, uint8_t* out,
                                 unsigned grid_cap) {
    const uint64_t items = (uint64_t)p.segments * p.chunks_per_segment;
    std::vector<u64> partials(2 * items, 0xdeadbeefdeadbeefull);
    std::vector<uint32_t> ok(p.segments, 7);
    emu_launch(grid_for(items, GCM_WARPS_PER_CTA, grid_cap), GCM_THREADS, [&] {
        if (open) {
            if (v16) gcm_open_chunks_v16(p, in, out, partials.data());
            else gcm_open_chunks_bytes(p, in, out, partials.data());
        } else {
            if (v16) gcm_seal_chunks_v16(p, in, out, partials.data());
            else gcm_seal_chunks_bytes(p, in, out, partials.data());
        }
    });
    emu_launch(grid_for(p.segments, GCM_THREADS, grid_cap), GCM_THREADS, [&] {
        if (open) gcm_open_finish(p, in, out, partials.data(), ok.data());
        else gcm_seal_finish(p, in, out, partials.data(), ok.data());
    });
    return ok;
}

static uint8_t* aligned_buffer(size_t n, uint8_t fill) {
    const size_t size = ((n + 1 + 255) / 256) * 256;
    uint8_t* b = static_cast<uint8_t*>(std::aligned_alloc(256, size));
    std::memset(b, fill, size);
    return b;
}

static void case_batch(uint64_t segment_size, uint32_t segments, uint64_t last_len, uint32_t first_index,
                       bool is_final, bool v16, unsigned grid_cap) {
    char label[160];
    std::snprintf(label, sizeof label, "size %llu x %u last %llu first %u final %d %s grid<=%u",
                  (unsigned long long)segment_size, segments, (unsigned long long)last_len, first_index, (int)is_final,
                  v16 ? "v16" : "bytes", grid_cap);
    uint8_t key[32], prefix[7];
    fill_random(key, 32);
    fill_random(prefix, 7);
    const KernelParams p =
        make_params(key, prefix, segment_size, last_len, first_index, segments, is_final ? 1 : 0);
    const uint64_t pt_len = (uint64_t)(segments - 1) * segment_size + last_len;
    const uint64_t body_len = pt_len + 16ull * segments;
    uint8_t* pt = aligned_buffer(pt_len, 0);
    fill_random(pt, pt_len);
    uint8_t* body = aligned_buffer(body_len, 0xA5);
    run(p, false, v16, pt, body, grid_cap);

    // Every segment against OpenSSL.
    bool all_match = true;
    for (uint32_t s = 0; s < segments; s++) {
        const uint64_t len = s + 1 == segments ? last_len : segment_size;
        const uint32_t index = first_index + s;
        uint8_t nonce[12];
        std::memcpy(nonce, prefix, 7);
        nonce[7] = (uint8_t)(index >> 24);
        nonce[8] = (uint8_t)(index >> 16);
        nonce[9] = (uint8_t)(index >> 8);
        nonce[10] = (uint8_t)index;
        nonce[11] = (s + 1 == segments && is_final) ? 1 : 0;
        std::vector<uint8_t> ct(len + 1), tag(16);
        openssl_seal(key, nonce, pt + s * segment_size, len, ct.data(), tag.data());
        const uint8_t* got = body + s * (segment_size + 16);
        if (std::memcmp(got, ct.data(), len) != 0 || std::memcmp(got + len, tag.data(), 16) != 0) all_match = false;
    }
    check(all_match, std::string("seal matches OpenSSL: ") + label);
    check(body[body_len] == 0xA5, std::string("seal writes nothing past the body: ") + label);

    // Open restores the plaintext, every flag up.
    uint8_t* back = aligned_buffer(pt_len, 0x5A);
    std::vector<uint32_t> ok = run(p, true, v16, body, back, grid_cap);
    bool flags_up = true;
    for (uint32_t f : ok) flags_up = flags_up && f == 1;
    check(flags_up && std::memcmp(back, pt, pt_len) == 0, std::string("open round trip: ") + label);

    // A flipped byte (ciphertext of the middle segment, or its tag) drops exactly that flag.
    const uint32_t victim = segments / 2;
    const uint64_t vlen = victim + 1 == segments ? last_len : segment_size;
    const uint64_t at = victim * (segment_size + 16) + (vlen > 0 ? vlen / 2 : vlen + 3);
    body[at] ^= 0x10;
    ok = run(p, true, v16, body, back, grid_cap);
    bool only_victim = true;
    for (uint32_t s = 0; s < segments; s++) only_victim = only_victim && ok[s] == (s == victim ? 0u : 1u);
    check(only_victim, std::string("tamper drops exactly the flag of segment ") + std::to_string(victim) + ": " + label);
    std::free(pt);
    std::free(body);
    std::free(back);
}

int main() {
    // Empty message: one empty final segment.
    case_batch(65536, 1, 0, 0, true, true, 4);
    case_batch(16, 1, 0, 0, true, false, 4);
    const uint64_t sizes[] = {16, 17, 48, 4096, 4097, 8192, 8208, 20000, 65536};
    for (uint64_t size : sizes) {
        const bool aligned = size % 16 == 0;
        const uint64_t lasts[] = {1, size - 1, size, size / 2 + 3};
        for (uint64_t last : lasts) {
            if (last == 0 || last > size) continue;
            case_batch(size, 3, last, 0, true, aligned, 2);
            if (aligned) case_batch(size, 3, last, 0, true, false, 2);
        }
        // A batch in the middle of a message: not final, indices from 1000.
        case_batch(size, 2, size, 1000, false, aligned, 3);
    }
    // Many segments, small grid: each warp walks many items.
    case_batch(4096, 300, 4096, 0, true, true, 3);
    // One large segment: 64 chunks, short first chunk (1 MiB + 48 bytes).
    case_batch((1u << 20) + 48, 1, (1u << 20) + 48, 7, true, true, 2);
    // Segment index bytes all non-zero.
    case_batch(4096, 2, 100, 0x01020304u, true, true, 2);
    std::printf("gpu-emulate: %d checks, %d failures\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
