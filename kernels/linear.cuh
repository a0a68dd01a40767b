// The bf16 GEMV's configurations and its k-split rule (kernels/linear.cu), in a header because
// kernels/router_fused.cu computes router logits with the same configuration and split, hence the same bits.
#pragma once
#include <stdint.h>

#include "gemv.cuh"
#include "params.h"

namespace l4k::linear {

using gemv::Config;
using gemv::kRows;
using gemv::kTokens;

// Chosen by bench/experiments/linear_gemv_sweep.cu (kernels/NOTES.md, "linear GEMV", session 13): 4 warps x 4
// steps with 2 KB of each row prefetched, except that 8 warps won by 7-18% where n >= 6144 at k <= 5120 (qkv
// 7168 and the shared gate_up 16384 at Scout's widths: 19.8 vs 24.1 us, 42.2 vs 45.0 us) and lost by 7-10% at
// n = 5120 (o, down). Both are graph-replay figures on the H200 with PDL edges between calls.
using Shipped = Config<4, 4, 1, 2048>;
using Wide = Config<8, 4, 1, 2048>;
inline bool wide(const L4kLinearParams& p) { return p.n >= 6144 && p.k <= 5120; }

// Narrow outputs (the routers' 16 or 128 columns: 1 to 8 tiles) give too few CTAs to stream their weights, so at
// up to 8 rows and fewer than kSplitBelow tiles the CTAs of a tile split k as a cluster: up to kMaxSplits of them,
// step s of a row going to warp s % (splits x warps) of the cluster. Each CTA reduces its warps as usual, writes
// its 16 x 8 sums into the first CTA's shared memory (DSMEM), and that CTA adds them in rank order (deterministic)
// and stores. Together the cluster's CTAs prefetch each row whole into L2 before the PDL wait.
constexpr int kMaxSplits = 8;    // the portable cluster size
constexpr int64_t kSplitBelow = 64;  // tiles; from 64 (1024 columns) every CTA keeps its whole k

// How many CTAs split each tile's k (1: no cluster).
inline int splits(const L4kLinearParams& p) {
  const int64_t tiles = (p.n + kRows - 1) / kRows;
  if (p.m > kTokens || tiles >= kSplitBelow) return 1;
  const int64_t want = kSplitBelow / tiles;
  return static_cast<int>(want < kMaxSplits ? (want < 1 ? 1 : want) : kMaxSplits);
}

}  // namespace l4k::linear
