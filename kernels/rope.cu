// Attention pre-processing for one layer, fused: split q/k/v from the fused projection, rotate q and k (RoPE
// on adjacent pairs), RMS-normalise each q/k head (QK norm), scale q by the position temperature (NoPE layers),
// and write q densely and k/v into the slot-addressed KV cache.
//
// Layout. One CTA per token, or per (token, group of kHeadsPerCta heads) at few tokens; one warp per head (q heads,
// then k heads, then v heads, as in the projection), two heads per warp per step. Lane l holds pairs
// [l * PPL, l * PPL + PPL) of its head, so a head is one coalesced access per lane (8 bytes for head_dim 128) and
// the QK norm is a warp reduction. cos/sin depend only on (token, pair): computed once per CTA into shared memory,
// not once per head.
//
// Latency. A decode step has a token or a few, so the kernel is a chain of memory round trips, not a stream: at few
// tokens a CTA takes one step of heads, whose loads its warps issue right after the PDL wait, before the
// position's, so both latencies overlap.
//
// Rounding as the model contract: rotate in f32, round to bf16; normalise the rounded values in f32, round.
//
// PDL (kernels/pdl.cuh): every thread waits for the previous kernel before it reads the position.
#include "common.cuh"
#include "pdl.cuh"

namespace l4k {

constexpr int kRopeWarps = 8;
constexpr int kHeadsPerCta = 2 * kRopeWarps;  // heads a CTA takes per step
// Below this many tokens a token's heads are split over CTAs of kHeadsPerCta heads (one step each); from it on a CTA
// takes all of its token's heads, kHeadsPerCta per step, and computes the token's cos/sin once (each CTA of a split
// token computes them again, which costs more than the latency it saves at prefill sizes: kernels/NOTES.md, rope).
constexpr int64_t kSplitHeadsBelow = 512;

template <int PPL>
struct Head {
  float v[2 * PPL];
};

// Lane's pairs of one head: vector access when VECTOR (the caller checked alignment), else element by element
// with the pairs past head_dim / 2 left untouched (their lanes hold zeros and never store).
template <int PPL, bool VECTOR>
__device__ __forceinline__ void load_head(const bf16* src, int pairs, int lane, Head<PPL>& h) {
  const int first = lane * PPL;
  if constexpr (VECTOR) {
    if (first < pairs) {
      if constexpr (PPL == 4) {
        const Pack<8> pk = load_pack<8>(src + 2 * first);
#pragma unroll
        for (int i = 0; i < 8; ++i) h.v[i] = pk[i];
      } else {
        const __nv_bfloat162* s = reinterpret_cast<const __nv_bfloat162*>(src) + first;
        if constexpr (PPL == 2) {
          uint2 raw = *reinterpret_cast<const uint2*>(s);
          const __nv_bfloat162* b = reinterpret_cast<const __nv_bfloat162*>(&raw);
          float2 a = __bfloat1622float2(b[0]), c = __bfloat1622float2(b[1]);
          h.v[0] = a.x, h.v[1] = a.y, h.v[2] = c.x, h.v[3] = c.y;
        } else {
          float2 a = __bfloat1622float2(*s);
          h.v[0] = a.x, h.v[1] = a.y;
        }
      }
      return;
    }
#pragma unroll
    for (int i = 0; i < 2 * PPL; ++i) h.v[i] = 0.f;
  } else {
#pragma unroll
    for (int k = 0; k < PPL; ++k) {
      const bool in = first + k < pairs;
      h.v[2 * k] = in ? __bfloat162float(src[2 * (first + k)]) : 0.f;
      h.v[2 * k + 1] = in ? __bfloat162float(src[2 * (first + k) + 1]) : 0.f;
    }
  }
}

template <int PPL, bool VECTOR>
__device__ __forceinline__ void store_head(bf16* dst, int pairs, int lane, const Head<PPL>& h) {
  const int first = lane * PPL;
  if constexpr (VECTOR) {
    if (first >= pairs) return;
    if constexpr (PPL == 4) {
      Pack<8> pk;
#pragma unroll
      for (int i = 0; i < 8; ++i) pk.set(i, h.v[i]);
      store_pack<8>(dst + 2 * first, pk);
    } else if constexpr (PPL == 2) {
      uint2 raw;
      __nv_bfloat162* b = reinterpret_cast<__nv_bfloat162*>(&raw);
      b[0] = __floats2bfloat162_rn(h.v[0], h.v[1]);
      b[1] = __floats2bfloat162_rn(h.v[2], h.v[3]);
      *reinterpret_cast<uint2*>(reinterpret_cast<__nv_bfloat162*>(dst) + first) = raw;
    } else {
      reinterpret_cast<__nv_bfloat162*>(dst)[first] = __floats2bfloat162_rn(h.v[0], h.v[1]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < PPL; ++k) {
      if (first + k < pairs) {
        dst[2 * (first + k)] = __float2bfloat16_rn(h.v[2 * k]);
        dst[2 * (first + k) + 1] = __float2bfloat16_rn(h.v[2 * k + 1]);
      }
    }
  }
}

// Everything one warp does to one head after loading it: rotate + normalise (q, k on RoPE layers) or the
// temperature (q on NoPE layers), then the store to q_out or the cache slot.
template <int PPL, bool VECTOR>
__device__ __forceinline__ void finish_head(const L4kRopeParams& p, int64_t t, int h, int lane, Head<PPL>& x,
                                            const float* cos_s, const float* sin_s, float temperature,
                                            int64_t slot) {
  const int pairs = p.head_dim / 2;
  const bool is_q = h < p.n_heads, is_v = h >= p.n_heads + p.n_kv_heads;
  if (!is_v && p.rope) {
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < PPL; ++k) {
      const int j = lane * PPL + k;
      if (j < pairs) {
        const float c = cos_s[j], s = sin_s[j], x0 = x.v[2 * k], x1 = x.v[2 * k + 1];
        x.v[2 * k] = round_bf16(x0 * c - x1 * s);
        x.v[2 * k + 1] = round_bf16(x0 * s + x1 * c);
        ss += x.v[2 * k] * x.v[2 * k] + x.v[2 * k + 1] * x.v[2 * k + 1];
      }
    }
    if (p.qk_norm) {
      const float inv = rsqrtf(warp_reduce(ss, SumOp{}) / static_cast<float>(p.head_dim) + p.eps);
#pragma unroll
      for (int i = 0; i < 2 * PPL; ++i) x.v[i] = round_bf16(x.v[i] * inv);
    }
  } else if (is_q && p.temperature) {
#pragma unroll
    for (int i = 0; i < 2 * PPL; ++i) x.v[i] = round_bf16(x.v[i] * temperature);
  }
  bf16* dst;
  if (is_q) {
    dst = static_cast<bf16*>(p.q_out) + (t * p.n_heads + h) * p.head_dim;
  } else {
    if (slot < 0 || slot >= p.cache_slots) return;  // padding token, or a slot outside the cache (counted)
    const int kvh = h - p.n_heads - (is_v ? p.n_kv_heads : 0);
    dst = static_cast<bf16*>(is_v ? p.v_cache : p.k_cache) + (slot * p.n_kv_heads + kvh) * p.head_dim;
  }
  store_head<PPL, VECTOR>(dst, pairs, lane, x);
}

// SPLIT: this CTA takes one step of its token's heads (blockIdx.y: which), loaded before the position; else all of
// them, a step at a time, each loaded after the cos/sin (the prefill layout: fewer registers live across sincosf).
template <int PPL, bool VECTOR, bool SPLIT>
__global__ void __launch_bounds__(kRopeWarps * 32) rope_kernel(const L4kRopeParams p) {
  __shared__ float cos_s[L4K_MAX_HEAD_DIM / 2], sin_s[L4K_MAX_HEAD_DIM / 2];
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int pairs = p.head_dim / 2;
  const int heads = p.n_heads + 2 * p.n_kv_heads;
  pdl_wait();
  pdl_launch_dependents();
  const bf16* row = static_cast<const bf16*>(p.qkv) + t * heads * p.head_dim;
  Head<PPL> a, b;
  auto load2 = [&](int first) {
    if (first < heads) load_head<PPL, VECTOR>(row + static_cast<int64_t>(first) * p.head_dim, pairs, lane, a);
    if (first + kRopeWarps < heads)
      load_head<PPL, VECTOR>(row + static_cast<int64_t>(first + kRopeWarps) * p.head_dim, pairs, lane, b);
  };
  const int h0 = (SPLIT ? blockIdx.y * kHeadsPerCta : 0) + warp;
  if constexpr (SPLIT) load2(h0);  // needs nothing this kernel computes
  const int32_t pos = p.pos[t];
  const int64_t slot = p.slots[t];

  if (p.rope) {
    // angle = pos * inv_freq in f32 (as the reference and transformers form it), then an accurate sincosf:
    // angles reach ~1e5 rad at long contexts, where the fast intrinsics lose all precision.
    for (int j = threadIdx.x; j < pairs; j += blockDim.x) sincosf(static_cast<float>(pos) * p.inv_freq[j], &sin_s[j], &cos_s[j]);
    __syncthreads();
  }
  const float temperature =
      p.temperature ? logf(floorf((static_cast<float>(pos) + 1.f) / p.floor_scale) + 1.f) * p.attn_scale + 1.f : 1.f;
  // One CTA of the token counts a bad slot.
  if ((slot < -1 || slot >= p.cache_slots) && p.bad_slots != nullptr && blockIdx.y == 0 && threadIdx.x == 0)
    atomicAdd(p.bad_slots, 1u);
  // Two heads per warp per step, both loaded before either is processed.
  for (int h = h0; h < heads; h += kHeadsPerCta) {
    if (!SPLIT) load2(h);
    finish_head<PPL, VECTOR>(p, t, h, lane, a, cos_s, sin_s, temperature, slot);
    if (h + kRopeWarps < heads)
      finish_head<PPL, VECTOR>(p, t, h + kRopeWarps, lane, b, cos_s, sin_s, temperature, slot);
    if (SPLIT) break;
  }
}

template <int PPL>
int launch(const L4kRopeParams& p, bool vector, cudaStream_t stream) {
  const int heads = p.n_heads + 2 * p.n_kv_heads;
  const bool split = p.tokens < kSplitHeadsBelow;
  const unsigned groups = split ? static_cast<unsigned>((heads + kHeadsPerCta - 1) / kHeadsPerCta) : 1u;
  const LaunchShape shape{dim3(static_cast<unsigned>(p.tokens), groups), dim3(kRopeWarps * 32)};
  void (*kernel)(L4kRopeParams) = split ? (vector ? rope_kernel<PPL, true, true> : rope_kernel<PPL, false, true>)
                                        : (vector ? rope_kernel<PPL, true, false> : rope_kernel<PPL, false, false>);
  return launch_result(launch_pdl(kernel, shape, stream, p));
}

}  // namespace l4k

extern "C" int l4k_launch_rope(const L4kRopeParams* p, cudaStream_t stream) {
  using namespace l4k;
  const int pairs = p->head_dim / 2;
  const int ppl = pairs <= 32 ? 1 : pairs <= 64 ? 2 : 4;
  // A lane's PPL pairs are 4 * PPL bytes; every head starts on such a boundary when head_dim is a multiple of
  // 2 * PPL and the three base pointers are aligned to it.
  const uintptr_t mask = 4u * ppl - 1;
  const bool vector = pairs % ppl == 0 && ((reinterpret_cast<uintptr_t>(p->qkv) | reinterpret_cast<uintptr_t>(p->q_out) |
                                            reinterpret_cast<uintptr_t>(p->k_cache) |
                                            reinterpret_cast<uintptr_t>(p->v_cache)) & mask) == 0;
  switch (ppl) {
    case 1: return launch<1>(*p, vector, stream);
    case 2: return launch<2>(*p, vector, stream);
    default: return launch<4>(*p, vector, stream);
  }
}
