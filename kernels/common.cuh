// Device helpers shared by the memory-bound row kernels: 16-byte vector access, bf16 rounding, FP8 encoding,
// block reductions, and the launcher's error convention.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "params.h"

namespace l4k {

using bf16 = __nv_bfloat16;

// Same constants and recipe as reference/src/fp8.rs: a group's amax is floored at MIN_AMAX so an all-zero row
// gets a finite scale, the scale maps the amax onto E4M3's largest finite value, and values are multiplied by
// the correctly rounded 1 / scale (one division per row, not per element).
constexpr float kE4m3Max = 448.0f;
constexpr float kMinAmax = 1e-12f;

// Round-to-nearest-even onto bf16 and back: where the PyTorch bf16 model stores an intermediate.
__device__ __forceinline__ float round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

// Saturating, round-to-nearest-even E4M3 (NaN -> 0x7F), the conversion reference/src/fp8.rs models.
__device__ __forceinline__ uint8_t to_e4m3(float x) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
}

__device__ __forceinline__ float from_e4m3(uint8_t b) {
  __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(b), __NV_E4M3);
  return __half2float(__half(h));
}

// VEC consecutive bf16 values kept packed in registers: a row held between a reduction and the write costs
// 2 bytes of register file per element instead of 4, so more rows (and more loads) are in flight per SM.
// VEC = 8 is one 16-byte access, VEC = 1 a scalar one.
template <int VEC>
struct alignas(VEC == 8 ? 16 : 2) Pack {
  bf16 h[VEC];
  __device__ __forceinline__ float operator[](int j) const { return __bfloat162float(h[j]); }
  // Rounds to nearest even: storing into a Pack is a bf16 rounding point.
  __device__ __forceinline__ void set(int j, float f) { h[j] = __float2bfloat16_rn(f); }
};

template <int VEC>
__device__ __forceinline__ Pack<VEC> load_pack(const bf16* p) {
  return *reinterpret_cast<const Pack<VEC>*>(p);
}

template <int VEC>
__device__ __forceinline__ void store_pack(bf16* p, const Pack<VEC>& v) {
  *reinterpret_cast<Pack<VEC>*>(p) = v;
}

// VEC FP8 bytes of v * inv_scale: 8 of them are one 8-byte store. PAIRED converts two at a time (one
// cvt.rn.satfinite.e4m3x2.f32 per pair, the same rounding as to_e4m3): measured faster in quant and swiglu
// (89 -> 92% and 86 -> 89% of the copy ceiling) but slower in permute (77 -> 60%), which keeps the scalar form.
template <int VEC, bool PAIRED = true>
__device__ __forceinline__ void store_e4m3(uint8_t* p, const Pack<VEC>& v, float inv_scale) {
  if constexpr (VEC == 8 && !PAIRED) {
    uint2 raw;
    uint8_t* b = reinterpret_cast<uint8_t*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) b[i] = to_e4m3(v[i] * inv_scale);
    *reinterpret_cast<uint2*>(p) = raw;
  } else if constexpr (VEC == 8) {
    uint2 raw;
    __nv_fp8x2_storage_t* b = reinterpret_cast<__nv_fp8x2_storage_t*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i)
      b[i] = __nv_cvt_float2_to_fp8x2(make_float2(v[2 * i] * inv_scale, v[2 * i + 1] * inv_scale), __NV_SATFINITE,
                                      __NV_E4M3);
    *reinterpret_cast<uint2*>(p) = raw;
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) p[i] = to_e4m3(v[i] * inv_scale);
  }
}

struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
// fmaxf drops NaN operands, so a NaN element never becomes a row's amax (as in reference/src/fp8.rs).
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <class Op>
__device__ __forceinline__ float warp_reduce(float v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reduction, result broadcast to every thread. blockDim.x must be a multiple of 32. The trailing
// barrier lets a caller reduce twice in a row without the second call overwriting slots still being read.
template <class Op>
__device__ __forceinline__ float block_reduce(float v, Op op, float identity) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_reduce(v, op);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : identity;
  v = warp_reduce(v, op);
  __syncthreads();
  return v;
}

// Exclusive prefix sum over a CTA of WARPS full warps (one value per thread), with the total; every thread calls
// it. The trailing barrier lets a caller scan twice in a row.
template <int WARPS, typename T>
__device__ __forceinline__ T block_exclusive_scan(T v, T* total) {
  __shared__ T warp_sums[WARPS];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  T incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const T n = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += n;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  T before = 0, all = 0;
#pragma unroll
  for (int w = 0; w < WARPS; ++w) {
    before += w < warp ? warp_sums[w] : 0;
    all += warp_sums[w];
  }
  __syncthreads();
  *total = all;
  return before + incl - v;
}

// Pointers usable with 16-byte accesses.
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Launchers return the launch's cudaError_t as int (0 = success) or an L4kLaunchStatus (status.h), never
// synchronizing; they launch through launch_pdl and return launch_result (kernels/pdl.cuh).

// Row kernels: one CTA per row, each thread holding VPT accesses of VEC elements in registers, so a row is
// read from memory once. Vector rows (VEC = 8) use CTAs of at most 256 threads so up to 16 x 8 values fit in
// registers without spilling: rows up to 32768 elements. Scalar rows keep 16 values a thread at up to 1024
// threads: 16384 elements. Longer rows are refused (L4K_STATUS_TOO_LONG), never silently mishandled.
template <int VEC>
constexpr int row_threads_cap() { return VEC == 8 ? 256 : 1024; }

struct RowShape {
  int vpt;      // accesses per thread: 1, 2, 4, 8 or 16
  int threads;  // multiple of 32
};

// The smallest VPT whose CTA fits under the cap: more CTAs per SM and fewer idle lanes on short rows.
template <int VEC>
inline bool row_shape(int64_t accesses, RowShape* s) {
  for (int vpt : {1, 2, 4, 8, 16}) {
    int64_t t = (accesses + vpt - 1) / vpt;
    if (t <= row_threads_cap<VEC>()) {
      s->vpt = vpt;
      s->threads = static_cast<int>((t + 31) / 32 * 32);
      return true;
    }
  }
  return false;
}

}  // namespace l4k
