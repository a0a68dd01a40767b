// Decode attention, host side: how the keys are split (flash-decoding's wave rule) and the workspace the splits need.
// Both main loops (cp_async.cuh, tma.cuh) take the same plan, so a batch's split boundaries, and so its bits, do
// not depend on which loop runs.
#pragma once
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

namespace l4k {
namespace decode {

constexpr int kWarpKeys = 16;   // keys per warp per stage
constexpr int kRows = 16;       // (query, head) rows per CTA: one m16 tile
constexpr int kTileKeys = 64;   // keys per stage: 4 warps of 16, whichever loop
constexpr int kMaxSplits = 64;
constexpr int kMinTilesPerSplit = 4;  // at least 256 keys per split: shorter ones are all overhead
// The split rule's wave: resident CTAs per SM of one KV head each (the cp.async loop's 2; the TMA loop serves two
// heads per CTA at 1 CTA per SM, the same warps and the same ratio of CTAs to SMs).
constexpr int kPlanCtasPerSm = 2;

// Workspace: partial O [splits][batch][max_q_len][n_heads][D] f32, lse [splits][batch][max_q_len][n_heads]
// f32 (base 2), status [splits][batch][n_kv_heads][row tiles] int32. Nothing when splits == 1.
struct Layout {
  int64_t lse_off, status_off, total;
};

inline int64_t align256(int64_t x) { return (x + 255) & ~int64_t(255); }

inline Layout layout(int splits, int batch, int max_q_len, int n_heads, int n_kv_heads, int row_tiles, int d) {
  Layout l{0, 0, 0};
  if (splits <= 1) return l;
  const int64_t rows = int64_t(splits) * batch * max_q_len * n_heads;
  l.lse_off = align256(rows * d * 4);
  l.status_off = l.lse_off + align256(rows * 4);
  l.total = l.status_off + align256(int64_t(splits) * batch * n_kv_heads * row_tiles * 4);
  return l;
}

__host__ __device__ inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

inline int row_tiles(int group, int max_q_len) { return ceil_div(group * max_q_len, kRows); }

// The longest key range any sequence can have: the whole cache (causal) or one chunk plus the queries that
// cross into the next one (chunked).
inline int max_range(int max_kv_len, int chunk, int max_q_len) {
  if (chunk <= 0) return max_kv_len;
  const int64_t c = int64_t(chunk) + max_q_len - 1;
  return c < max_kv_len ? int(c) : max_kv_len;
}

// Flash-decoding's wave heuristic: with fewer CTAs than about one wave, split the keys so the grid fills the
// SMs; among the split counts that do, the smallest within 85% of the best wave efficiency (fewer splits,
// less combine traffic).
inline int choose_splits(int64_t base_ctas, int range, int sms, int tile_keys, int ctas_per_sm) {
  const int tiles = ceil_div(range, tile_keys) * tile_keys / 64;  // in 64-key units whatever the stage
  int most = tiles / kMinTilesPerSplit;
  most = most < kMaxSplits ? most : kMaxSplits;
  const int64_t slots = int64_t(sms) * ctas_per_sm;
  if (most <= 1 || base_ctas <= 0 || base_ctas * 5 >= slots * 4) return 1;
  auto efficiency = [&](int s) {
    const double n = double(base_ctas) * s, waves = ceil(n / double(slots));
    return n / (waves * double(slots));
  };
  double best = 0;
  for (int s = 1; s <= most; ++s) best = fmax(best, efficiency(s));
  for (int s = 1; s <= most; ++s)
    if (efficiency(s) >= 0.85 * best) return s;
  return 1;
}

// The current device's SM count; no device, no plan (the split count, and so the workspace, depends on it).
inline cudaError_t sm_count(int* sms) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev);
  return e;
}

struct Plan {
  int splits, row_tiles;
  Layout ws;
};

inline Plan plan(int batch, int n_heads, int n_kv_heads, int head_dim, int max_q_len, int max_kv_len, int chunk,
                int sms) {
  Plan p{1, 0, {0, 0, 0}};
  if (batch <= 0 || max_q_len <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads != 0) return p;
  p.row_tiles = row_tiles(n_heads / n_kv_heads, max_q_len);
  p.splits = choose_splits(int64_t(batch) * n_kv_heads * p.row_tiles, max_range(max_kv_len, chunk, max_q_len),
                           sms, kTileKeys, kPlanCtasPerSm);
  p.ws = layout(p.splits, batch, max_q_len, n_heads, n_kv_heads, p.row_tiles, head_dim);
  return p;
}

}  // namespace decode
}  // namespace l4k
