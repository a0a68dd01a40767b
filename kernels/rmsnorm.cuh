// The two halves of a row's RMSNorm once the row sits in registers (VPT packs of VEC bf16 per thread, pack i of
// thread x at column (i * blockDim.x + x) * VEC, the layout of common.cuh's row_shape): the inverse RMS over the
// CTA and the normalized, weighted store. kernels/rmsnorm.cu and the fused unpermute + norm of kernels/permute.cu
// both call them with the same launch shape, so the sum of squares runs in the same order and the two paths agree
// bit for bit. Rounding: the model contract's (kernels/rmsnorm.cu's top comment). Both can also write the normed
// row's FP8 copy (store_fp8_copy) for an FP8 linear that reads it, in place of a quant_fp8 launch.
#pragma once
#include "common.cuh"

namespace l4k {

// rsqrt(mean(x^2) + eps) of the row: each thread sums its packs in order, then the CTA reduces (every thread
// calls it; it holds the block_reduce barriers).
template <int VEC, int VPT>
__device__ __forceinline__ float row_inv_rms(const Pack<VEC> (&v)[VPT], int64_t cols, float eps) {
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
    if (c < cols) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) ss += v[i][j] * v[i][j];
    }
  }
  return rsqrtf(block_reduce(ss, SumOp{}, 0.f) / static_cast<float>(cols) + eps);
}

// y = bf16(bf16(v * inv) * weight) over the thread's packs (v is overwritten).
template <int VEC, int VPT>
__device__ __forceinline__ void store_normed(Pack<VEC> (&v)[VPT], const bf16* weight, bf16* y, int64_t cols,
                                             float inv) {
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
    if (c < cols) {
      const Pack<VEC> w = load_pack<VEC>(weight + c);
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[i].set(j, round_bf16(v[i][j] * inv) * w[j]);
      store_pack<VEC>(y + c, v[i]);
    }
  }
}

// y's rowwise FP8 copy from the bf16 values store_normed left in v: quant.cu's arithmetic (amax of the bf16
// values, scale = max(amax, kMinAmax) / 448, its E4M3 conversion), so the bytes and the scale are those
// l4k_launch_quant_fp8 writes from y; max is exact, so the reduction order does not matter. Every thread calls it
// (it holds block_reduce's barriers). q is the row's first byte. A copy whose rows are not 8-byte aligned is
// written a byte at a time (the same rounding) rather than sending the whole kernel down the scalar path, whose
// sum of squares runs in another order: y keeps the plain norm's bits wherever the copy lies.
template <int VEC, int VPT>
__device__ __forceinline__ void store_fp8_copy(const Pack<VEC> (&v)[VPT], uint8_t* q, float* scale, int64_t cols) {
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
    if (c < cols) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) amax = fmaxf(amax, fabsf(v[i][j]));
    }
  }
  const float s = fmaxf(block_reduce(amax, MaxOp{}, 0.f), kMinAmax) / kE4m3Max;
  if (threadIdx.x == 0) *scale = s;
  const float inv = 1.f / s;
  // The same for every row (cols % VEC == 0 on the vector path) and every thread.
  const bool packed = (reinterpret_cast<uintptr_t>(q) & 7u) == 0;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
    if (c >= cols) continue;
    if (VEC == 1 || packed) {
      store_e4m3<VEC>(q + c, v[i], inv);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) q[c + j] = to_e4m3(v[i][j] * inv);
    }
  }
}

}  // namespace l4k
