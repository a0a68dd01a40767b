// The permute's row writes (kernels/permute.cu, reference/src/permute.rs): a token row held in registers, its
// amax and its k scaled (and quantized) copies. Shared by kernels/permute.cu and kernels/router_fused.cu.
#pragma once
#include "common.cuh"

namespace l4k {

// The FP8 row write when the weight is a bf16 value (always so for bf16 logits: the sigmoid is rounded to bf16)
// or absent. Then bf16(x * w) is one packed bf16 multiply (the exact product of two bf16 values rounded once,
// what the f32 product then the bf16 rounding give: the product fits f32's mantissa; the two could differ only
// for products below f32's smallest normal, 1.2e-38), and the E4M3 encoding converts two values per
// instruction. Per pair: 1 HMUL2 + 2 FMUL + 1 conversion, against 2 FMUL + 4 conversions (which issue at a
// quarter of the FMA rate) on the general path: the conversions, not the memory, were what limited this kernel.
template <int VPT>
__device__ __forceinline__ void store_row_e4m3_bf16w(uint8_t* out, const Pack<8> (&v)[VPT], bool scaled, float w,
                                                     float inv, int64_t hidden) {
  const __nv_bfloat162 w2 = __bfloat162bfloat162(__float2bfloat16_rn(w));
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * 8;
    if (c < hidden) {
      uint2 raw;
      __nv_fp8x2_storage_t* b = reinterpret_cast<__nv_fp8x2_storage_t*>(&raw);
      const __nv_bfloat162* x2 = reinterpret_cast<const __nv_bfloat162*>(v[i].h);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 y = __bfloat1622float2(scaled ? __hmul2(x2[q], w2) : x2[q]);
        b[q] = __nv_cvt_float2_to_fp8x2(make_float2(y.x * inv, y.y * inv), __NV_SATFINITE, __NV_E4M3);
      }
      *reinterpret_cast<uint2*>(out + c) = raw;
    }
  }
}

// The FP8 row write for a weight that is not a bf16 value: bf16(x * w) from the f32 products, both of a pair
// rounded by one conversion (each rounds as alone), then the pair's E4M3 encoding.
template <int VPT>
__device__ __forceinline__ void store_row_e4m3_f32w(uint8_t* out, const Pack<8> (&v)[VPT], float w, float inv,
                                                    int64_t hidden) {
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * 8;
    if (c < hidden) {
      uint2 raw;
      __nv_fp8x2_storage_t* b = reinterpret_cast<__nv_fp8x2_storage_t*>(&raw);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 y = __bfloat1622float2(__floats2bfloat162_rn(__fmul_rn(v[i][2 * q], w), __fmul_rn(v[i][2 * q + 1], w)));
        b[q] = __nv_cvt_float2_to_fp8x2(make_float2(y.x * inv, y.y * inv), __NV_SATFINITE, __NV_E4M3);
      }
      *reinterpret_cast<uint2*>(out + c) = raw;
    }
  }
}

// The token's k writes from its row in registers (v, and its amax |x| when FP8), destinations and weights in
// shared memory.
template <int VEC, int VPT, bool FP8>
__device__ __forceinline__ void write_choices(const L4kPermuteParams& p, const Pack<VEC> (&v)[VPT], float amax,
                                              const int64_t* rows_s, const float* w_s) {
  const bool scaled = p.weights != nullptr;
  for (int choice = 0; choice < p.k; ++choice) {
    // The same value for every thread: the skip below is uniform across the CTA.
    const int64_t row = rows_s[choice];
    if (row < 0 || row >= p.rows) continue;
    const float w = w_s[choice];
    float inv = 1.f;
    if constexpr (FP8) {
      const float row_amax = scaled ? round_bf16(__fmul_rn(amax, fabsf(w))) : amax;
      const float scale = fmaxf(row_amax, kMinAmax) / kE4m3Max;
      if (threadIdx.x == 0) p.scales[row] = scale;
      inv = 1.f / scale;
    }
    if constexpr (FP8 && VEC == 8) {
      if (!scaled || round_bf16(w) == w) {  // CTA-uniform
        store_row_e4m3_bf16w<VPT>(static_cast<uint8_t*>(p.out) + row * p.hidden, v, scaled, w, inv, p.hidden);
      } else {
        store_row_e4m3_f32w<VPT>(static_cast<uint8_t*>(p.out) + row * p.hidden, v, w, inv, p.hidden);
      }
    } else {
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
      if (c < p.hidden) {
        // y = bf16(x * w): the activation the expert sees (the model's rounding), then quantized or stored.
        Pack<VEC> y;
#pragma unroll
        for (int j = 0; j < VEC; ++j) y.set(j, scaled ? __fmul_rn(v[i][j], w) : v[i][j]);
        if constexpr (FP8) {
          store_e4m3<VEC, false>(static_cast<uint8_t*>(p.out) + row * p.hidden + c, y, inv);
        } else {
          store_pack<VEC>(static_cast<bf16*>(p.out) + row * p.hidden + c, y);
        }
      }
    }
    }
  }
}

// One reduction per token, not per choice: rounding is monotone and odd, so the amax of bf16(x * w) over a
// row is bf16(amax|x| * |w|) exactly (NaN elements drop out of both; a NaN weight gives the floor scale).
// The reduction's barriers (or, for bf16, one barrier) also publish the destinations and weights.
template <int VEC, int VPT, bool FP8>
__device__ __forceinline__ float row_amax_and_sync(const Pack<VEC> (&v)[VPT], int64_t hidden) {
  float amax = 0.f;
  if constexpr (FP8) {
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
      if (c < hidden)
#pragma unroll
        for (int j = 0; j < VEC; ++j) amax = fmaxf(amax, fabsf(v[i][j]));
    }
    amax = block_reduce(amax, MaxOp{}, 0.f);
  } else {
    __syncthreads();
  }
  return amax;
}

}  // namespace l4k
