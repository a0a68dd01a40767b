// The ranking of one token held by G lanes (top_k), shared by kernels/router.cu (every routing launch) and
// kernels/router_fused.cu (decode routing fused with its logits and the permute). Semantics:
// reference/src/router.rs (ranking, NaN rule, tie rule).
#pragma once
#include "common.cuh"

namespace l4k {

constexpr int kRouterWarps = 8;
constexpr int kRouterThreads = kRouterWarps * 32;
constexpr int kVpl = 8;                 // logits per lane
constexpr int kMaxK = L4K_ROUTER_MAX_TOP_K;
constexpr int kMaxE = L4K_ROUTER_MAX_EXPERTS;

// Lanes per token: the smallest power of two with 8 logits per lane covering E, at least 2 (a 1-lane variant
// for E <= 8 would be one more instantiation for a size no model uses).
constexpr int router_group(int e) { return e <= 16 ? 2 : e <= 32 ? 4 : e <= 64 ? 8 : e <= 128 ? 16 : 32; }

// Unused slots are 0, below every real candidate (a NaN-logit expert still has a nonzero index part).
__device__ __forceinline__ uint64_t rank_key(float key, bool nan_logit, int idx) {
  uint32_t hi = 0;
  if (!nan_logit) {
    float k = isnan(key) ? INFINITY : key;
    if (k == 0.f) k = 0.f;
    const uint32_t b = __float_as_uint(k);
    hi = (b & 0x80000000u) ? ~b : (b | 0x80000000u);  // >= 0x007FFFFF > 0 for every non-NaN value
  }
  return (static_cast<uint64_t>(hi) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(idx));
}

template <int G, class V>
__device__ __forceinline__ V group_reduce(V v, bool is_max) {
#pragma unroll
  for (int o = G / 2; o > 0; o >>= 1) {
    const V w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? (w > v ? w : v) : v + w;
  }
  return v;
}

// Ranks one token held by G lanes (lane gl holds experts gl * 8 .. gl * 8 + 7) and writes its k choices, best
// first (every lane of the group computes them; one writes). Shuffles stay inside the aligned group of G lanes.
// What top_k needs of the parameters, by value: a reference to the kernel's parameter struct would make every
// thread copy the whole struct to local memory for the call.
struct Ranking {
  int experts, k;
  bool softmax, bf16_weights, renormalize;
};

// Where one token's choices go: ids/weights (global, `write` lanes only) and the tile's shared id array.
struct Choices {
  bool write;         // this lane writes (first lane of the group, token inside the tile)
  int* ids;           // &ids[token * k]
  float* weights;     // &weights[token * k]
  uint8_t* tile_ids;  // &tile_ids[token_in_tile * k]
};

// Not inlined: one copy per instantiation instead of one per unrolled token group keeps router.o (linked into
// every test and bench binary) small; the call costs a 32-byte spill of x, noise for a latency-bound kernel.
template <int G>
__device__ __noinline__ void top_k(const float (&x)[kVpl], int gl, int lane, Ranking p, Choices out) {
  const int E = p.experts;
  const bool softmax = p.softmax;
  float val[kVpl];  // what a chosen expert's weight is made of: the logit (sigmoid) or its probability
  int nan_here = 0, in_here = 0;
#pragma unroll
  for (int j = 0; j < kVpl; ++j) {
    const bool in = gl * kVpl + j < E;
    in_here += in;
    nan_here += in && isnan(x[j]);
    val[j] = x[j];
  }
  const bool all_nan = group_reduce<G>(nan_here, false) == group_reduce<G>(in_here, false);
  if (softmax) {
    // NaN logits count as -inf; exp in f32, denominator and division in f64 as the reference does.
    float m = -INFINITY;
#pragma unroll
    for (int j = 0; j < kVpl; ++j)
      if (gl * kVpl + j < E) m = fmaxf(m, isnan(x[j]) ? -INFINITY : x[j]);
    m = group_reduce<G>(m, true);
    double s = 0.0;
#pragma unroll
    for (int j = 0; j < kVpl; ++j) {
      val[j] = gl * kVpl + j < E ? expf((isnan(x[j]) ? -INFINITY : x[j]) - m) : 0.f;
      s += static_cast<double>(val[j]);
    }
    s = group_reduce<G>(s, false);
#pragma unroll
    for (int j = 0; j < kVpl; ++j) val[j] = static_cast<float>(static_cast<double>(val[j]) / s);
  }
  uint64_t cand[kVpl];
#pragma unroll
  for (int j = 0; j < kVpl; ++j) {
    const int idx = gl * kVpl + j;
    cand[j] = idx < E ? rank_key(val[j], isnan(x[j]), idx) : 0;
  }
  const int group_base = lane - gl;
  float sum = 0.f;
  // Rounds are a runtime loop (not unrolled): the kernel is instantiated per group width and dtype, and an
  // unrolled copy per round made the object (linked into every test and bench binary) several MB.
#pragma unroll 1
  for (int c = 0; c < p.k; ++c) {
    uint64_t best = 0;
#pragma unroll
    for (int j = 0; j < kVpl; ++j) best = cand[j] > best ? cand[j] : best;
    best = group_reduce<G>(best, true);
    const int idx = static_cast<int>(0xFFFFFFFFu - static_cast<uint32_t>(best));
    float mine = 0.f;
#pragma unroll
    for (int j = 0; j < kVpl; ++j) {
      if (cand[j] == best) cand[j] = 0;  // keys are unique (they hold the index): removes exactly the winner
      if (j == (idx & (kVpl - 1))) mine = val[j];
    }
    const float v = __shfl_sync(0xffffffffu, mine, group_base + idx / kVpl, 32);
    float w;
    if (!softmax) {
      w = 1.f / (1.f + expf(-v));
      if (p.bf16_weights) w = round_bf16(w);  // sigmoid rounded to the activation dtype
    } else {
      w = all_nan ? __int_as_float(0x7fc00000) : v;
      sum += v;
    }
    if (out.write) {
      out.ids[c] = idx;
      out.weights[c] = w;
      out.tile_ids[c] = static_cast<uint8_t>(idx);
    }
  }
  if (softmax && p.renormalize && !all_nan && out.write) {
    // Divided once all k are known, in the reference's order: w / (((0 + w0) + w1) + ...).
#pragma unroll 1
    for (int c = 0; c < p.k; ++c) out.weights[c] = out.weights[c] / sum;
  }
}

}  // namespace l4k
