// What every role of the prefill kernel (kernels/attention_prefill.cu) agrees on: the tile sizes and thread
// layout, the shared-memory tiles and their swizzle, and one CTA's work (CtaWork).
#pragma once
#include <stdint.h>

#include "common.cuh"
#include "paged_kv.cuh"

namespace l4k {
namespace attn_prefill {

constexpr int kBlockM = 128;  // query rows per CTA
constexpr int kBlockN = 128;  // keys per tile
constexpr int kThreads = 384;  // producer warpgroup + two consumer warpgroups
constexpr int kProducerRegs = 56, kConsumerRegs = 224;  // 128 * 56 + 256 * 224 = 384 * 168
constexpr int kConsumerWarps = 8;
constexpr int kStages = 2;  // K/V ring depth (3 measured no faster)
constexpr float kLog2e = 1.4426950408889634f;

// Element offset of 16-byte chunk c (0 .. D / 8) of row r in a swizzled [R, D] tile: 64-element column blocks,
// chunks XOR-ed with the row (the 128-byte swizzle wgmma and TMA use).
template <int R>
__device__ __forceinline__ int swz(int r, int c) {
  return (c >> 3) * (R * 64) + r * 64 + (((c & 7) ^ (r & 7)) << 3);
}

// The CTA's tiles and the mbarriers of its rings: q_full (the producer's 128 threads arrive), k_full / v_full
// (128 arrivals, plus TMA bytes), k_empty / v_empty (one arrival per consumer warp).
template <int D, int STAGES = kStages>
struct Smem {
  alignas(1024) bf16 q[kBlockM * D];
  alignas(1024) bf16 k[STAGES][kBlockN * D];
  alignas(1024) bf16 v[STAGES][kBlockN * D];
  uint64_t q_full;
  uint64_t k_full[STAGES], v_full[STAGES], k_empty[STAGES], v_empty[STAGES];
};

// One CTA's work: query tile `tile` (rows m0 .. m0 + rows - 1 of sequence b's q_len queries) of query head h,
// which reads KV head kvh, key tiles keys.lo + j * kBlockN for j < n_tiles.
struct CtaWork {
  int h, tile, b;
  int q_begin, q_len, seq_len;
  int m0, rows, kvh;
  int q_off, q_first, q_last;  // q_off: position of the sequence's first query; q_first, q_last: the tile's
  paged_kv::KeyRange keys;
  int n_tiles;
};

}  // namespace attn_prefill
}  // namespace l4k
