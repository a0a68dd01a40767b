// Decode attention's combine step (splits > 1): one warp per output row (b, qi, h) merges the active splits'
// normalized partial rows by their base-2 log-sum-exp, after the status words say no split saw a bad block id.
#pragma once
#include "tile.cuh"

namespace l4k {
namespace decode {

constexpr int kCombineWarps = 4;

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
  bool bad = false;
  float mx = -INFINITY;
  for (int sp = lane; sp < sr.active; sp += 32) {
    bad |= status[((int64_t(sp) * p.batch + b) * p.n_kv_heads + g) * n_rt + rt] != 0;
    mx = fmaxf(mx, lse[((int64_t(sp) * p.batch + b) * p.max_q_len + qi) * p.n_heads + h]);
  }
  if (__any_sync(0xffffffffu, bad)) {
    if (reporter && p.bad_seqs != nullptr) atomicAdd(p.bad_seqs, 1u);
    return;
  }
  mx = warp_reduce(mx, MaxOp{});
  const float mu = mx == -INFINITY ? 0.f : mx;
  float acc[kPer] = {};
  float wsum = 0.f;
  for (int sp = 0; sp < sr.active; ++sp) {
    const int64_t prow = ((int64_t(sp) * p.batch + b) * p.max_q_len + qi) * p.n_heads + h;
    const float w = exp2f(lse[prow] - mu);
    if (w == 0.f) continue;  // a split in which this row saw no key (its partial row is zeros)
    wsum += w;
    const float* src = o_part + prow * D + lane * kPer;
    if constexpr (kPer == 4) {
      const float4 v = *reinterpret_cast<const float4*>(src);
      acc[0] += w * v.x, acc[1] += w * v.y, acc[2] += w * v.z, acc[3] += w * v.w;
    } else {
      const float2 v = *reinterpret_cast<const float2*>(src);
      acc[0] += w * v.x, acc[1] += w * v.y;
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
