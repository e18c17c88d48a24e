// Just enough of CUDA to compile crypto-core's aes_gcm.cu as host C++ and run its kernels
// on CPU threads: one std::thread per GPU thread, a barrier per block for __syncthreads,
// a barrier per warp for __shfl_xor_sync. Blocks run one after the other, so __shared__
// arrays can be plain statics. This checks the kernel's *logic* (indexing, nonces,
// GHASH decomposition, tails, flags) without a GPU; it says nothing about speed, memory
// ordering between blocks, or what nvcc's device code generation does.
#pragma once

#include <barrier>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __device__
#define __global__
#define __forceinline__ inline
#define __grid_constant__
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct uint4 {
    uint32_t x, y, z, w;
};
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return uint4{x, y, z, w}; }

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

struct EmuBlock {
    explicit EmuBlock(unsigned threads) : sync(threads) {
        for (unsigned w = 0; w < threads / 32; w++) warps.emplace_back(std::make_unique<Warp>());
    }
    struct Warp {
        std::barrier<> bar{32};
        unsigned long long val[32];
    };
    std::barrier<> sync;
    std::vector<std::unique_ptr<Warp>> warps;
};
inline thread_local EmuBlock* emu_block = nullptr;

inline void __syncthreads() { emu_block->sync.arrive_and_wait(); }

template <typename T>
inline T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask) {
    EmuBlock::Warp& w = *emu_block->warps[threadIdx.x / 32];
    const unsigned lane = threadIdx.x % 32;
    w.val[lane] = (unsigned long long)v;
    w.bar.arrive_and_wait();
    const T r = (T)w.val[lane ^ (unsigned)lane_mask];
    w.bar.arrive_and_wait();
    return r;
}

inline uint32_t __byte_perm(uint32_t x, uint32_t y, uint32_t s) {
    const uint64_t bytes = (uint64_t)x | ((uint64_t)y << 32);
    uint32_t r = 0;
    for (int i = 0; i < 4; i++) {
        const uint32_t sel = (s >> (4 * i)) & 7u;
        r |= (uint32_t)((bytes >> (8 * sel)) & 0xffu) << (8 * i);
    }
    return r;
}

inline uint32_t __funnelshift_l(uint32_t lo, uint32_t hi, uint32_t shift) {
    const uint64_t v = ((uint64_t)hi << 32) | lo;
    return (uint32_t)((v << (shift & 31u)) >> 32);
}

inline uint32_t __brev(uint32_t x) {
    uint32_t r = 0;
    for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}

inline uint4 __ldg(const uint4* p) { return *p; }

template <typename A, typename B>
inline A min(A a, B b) {
    return a < (A)b ? a : (A)b;
}

// Runs `kernel` as a grid of `grid` blocks of `block` threads, block after block.
inline void emu_launch(unsigned grid, unsigned block, const std::function<void()>& kernel) {
    gridDim.x = grid;
    blockDim.x = block;
    for (unsigned b = 0; b < grid; b++) {
        EmuBlock state(block);
        std::vector<std::thread> threads;
        threads.reserve(block);
        for (unsigned t = 0; t < block; t++) {
            threads.emplace_back([&, b, t] {
                threadIdx.x = t;
                blockIdx.x = b;
                emu_block = &state;
                kernel();
            });
        }
        for (auto& th : threads) th.join();
    }
}
