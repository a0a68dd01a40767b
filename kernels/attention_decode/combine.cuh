// Decode attention's combine step (splits > 1): one warp per output row (b, qi, h) merges the active splits'
// normalized partial rows by their base-2 log-sum-exp, after the status words say no split saw a bad block id.
//
// Latency, not bandwidth, sets its time: a row's partials are a few KB in L2. So each lane holds the weights of its
// splits (lane, lane + 32: kMaxSplits <= 64) before the merge, and the merge loads kBatch partial rows before it adds
// any of them; the adds still run in split order, skipping the splits of weight 0, so the bits do not depend on
// the batching.
#pragma once
#include "tile.cuh"

namespace l4k {
namespace decode {

constexpr int kCombineWarps = 4;
constexpr int kBatch = 8;  // partial rows a lane has in flight

template <int N>
__device__ __forceinline__ void load_row(float (&v)[N], const float* src) {
  if constexpr (N == 4) {
    const float4 x = *reinterpret_cast<const float4*>(src);
    v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
  } else {
    static_assert(N == 2, "head_dim 64 or 128");
    const float2 x = *reinterpret_cast<const float2*>(src);
    v[0] = x.x, v[1] = x.y;
  }
}

template <int D>
__global__ void __launch_bounds__(kCombineWarps * 32) combine_kernel(const L4kAttentionParams p, int splits,
                                                                     int n_rt, int tile_keys, Layout ws) {
  constexpr int kPer = D / 32;  // elements per lane
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kCombineWarps + (threadIdx.x >> 5);
  pdl_wait();
  pdl_launch_dependents();
  if (row >= int64_t(p.batch) * p.max_q_len * p.n_heads) return;
  const int h = int(row % p.n_heads);
  const int qi = int(row / p.n_heads % p.max_q_len);
  const int b = int(row / p.n_heads / p.max_q_len);
  const bool reporter = qi == 0 && h == 0 && lane == 0;
  const Seq s = read_seq(p, b);
  if (s.bad) {
    if (reporter && p.bad_seqs != nullptr) atomicAdd(p.bad_seqs, 1u);
    return;
  }
  if (qi >= s.q_len) return;
  const int group = p.n_heads / p.n_kv_heads, g = h / group, rt = (qi * group + h % group) / kRows;
  const SplitRange sr = split_range(s, p.chunk, splits, 0, tile_keys);
  const char* base = static_cast<const char*>(p.workspace);
  const int* status = reinterpret_cast<const int*>(base + ws.status_off);
  const float* lse = reinterpret_cast<const float*>(base + ws.lse_off);
  const float* o_part = reinterpret_cast<const float*>(base);
  static_assert(kMaxSplits <= 64, "two splits per lane");
  bool bad = false;
  float lse_lane[2] = {-INFINITY, -INFINITY};
  float mx = -INFINITY;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int sp = lane + 32 * i;
    if (sp >= sr.active) continue;
    bad |= status[((int64_t(sp) * p.batch + b) * p.n_kv_heads + g) * n_rt + rt] != 0;
    lse_lane[i] = lse[((int64_t(sp) * p.batch + b) * p.max_q_len + qi) * p.n_heads + h];
    mx = fmaxf(mx, lse_lane[i]);
  }
  if (__any_sync(0xffffffffu, bad)) {
    if (reporter && p.bad_seqs != nullptr) atomicAdd(p.bad_seqs, 1u);
    return;
  }
  mx = warp_reduce(mx, MaxOp{});
  const float mu = mx == -INFINITY ? 0.f : mx;
  // exp2(-inf) = 0: a split in which this row saw no key (its partial row is zeros) and the lanes past `active`.
  const float w_lane[2] = {exp2f(lse_lane[0] - mu), exp2f(lse_lane[1] - mu)};
  float acc[kPer] = {};
  float wsum = 0.f;
  const float* src = o_part + ((int64_t(b) * p.max_q_len + qi) * p.n_heads + h) * D + lane * kPer;
  const int64_t split_stride = int64_t(p.batch) * p.max_q_len * p.n_heads * D;
  for (int sp0 = 0; sp0 < sr.active; sp0 += kBatch) {
    float w[kBatch], v[kBatch][kPer];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int sp = sp0 + u;  // warp-uniform
      w[u] = __shfl_sync(0xffffffffu, sp < 32 ? w_lane[0] : w_lane[1], sp & 31);
      if (sp >= sr.active) w[u] = 0.f;
      if (w[u] != 0.f) {
        load_row<kPer>(v[u], src + sp * split_stride);
      } else {
#pragma unroll
        for (int e = 0; e < kPer; ++e) v[u][e] = 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (w[u] == 0.f) continue;
      wsum += w[u];
#pragma unroll
      for (int e = 0; e < kPer; ++e) acc[e] += w[u] * v[u][e];
    }
  }
  const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
  bf16* dst = static_cast<bf16*>(p.out) + ((int64_t(s.q0) + qi) * p.n_heads + h) * D + lane * kPer;
#pragma unroll
  for (int i = 0; i < kPer; i += 2)
    *reinterpret_cast<__nv_bfloat162*>(dst + i) = __floats2bfloat162_rn(acc[i] * inv, acc[i + 1] * inv);
}

}  // namespace decode
}  // namespace l4k
