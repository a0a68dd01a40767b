// FP8 (E4M3) grouped GEMM for one row per expert (L4K_GEMM_GEMV): batch-1 decode's routed experts and the
// one-expert FP8 linears at m = 1, where a call only has to stream the touched weights once and CUTLASS's swapped
// 128x32 tiles give n / 128 CTAs: 40 to 56 of them for n = 5120 to 7168, too few to fill HBM.
//
// The mainloop is kernels/gemv.cuh's (16 weight rows a CTA, warps splitting k, fragments straight from global
// memory, mma.sync m16n8k32 e4m3 with a fresh accumulator every kUnroll steps). The grid is n / 16 CTAs; each
// walks the experts in order and skips the empty ones, so at batch 1 every CTA streams its rows of the one routed
// expert. With one expert (the dense FP8 linears) the rows are known before the offsets are, so the CTA pulls the
// first bytes of them into L2 before the PDL wait.
//
// Any row count is correct (8-row passes, each re-reading the expert's weights), but the kernel is built for one:
// a CTA is a few dependent round trips (offsets, two or three rounds of weight loads, the scales), so its fixed
// cost is several microseconds, and ops/grouped_gemm.rs's auto rule takes it only where it measured faster than
// the decode tiles (kernels/NOTES.md, "grouped_gemm GEMV schedule").
//
// Epilogue: D[r, c] = bf16(scale_a[r] * (acc * scale_b[e, c])), the order the unswapped CUTLASS epilogue uses.
// Launched with PDL (kernels/pdl.cuh) like the library's other non-CUTLASS kernels.
// Validation as the CUTLASS launcher's setup kernel: every CTA checks every expert's range before writing, and
// any inconsistency means no CTA writes anything and the caller's flag is raised.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "common.cuh"
#include "gemv.cuh"
#include "grouped_gemm_params.h"
#include "params.h"
#include "pdl.cuh"

namespace l4k::grouped_gemm_gemv {

using gemv::Config;
using gemv::kRows;
using gemv::kTokens;
// From bench/experiments/linear_gemv_sweep.cu at one row (kernels/NOTES.md, "linear GEMV", session 13): 4 warps;
// 8 steps in flight where n <= 5120 (o and down: 9.9 vs 11.4 us, 14.1 vs 16.8 us with one expert, the routed down
// 15.7 vs 17.6 us over 16), 4 steps and 1 KB of each row prefetched where n is wider (qkv 11.6 vs 12.5 us, gate_up
// 23.4 vs 25.3). The prefetch applies with one expert only (the expert is known before the offsets are).
using Shipped = Config<4, 4, 1, 1024>;
using Narrow = Config<4, 8, 1, 2048>;
inline bool narrow(int64_t n) { return n <= 5120; }

// Any expert range outside [0, rows), ending before it starts, or counting more rows than it spans.
__device__ __forceinline__ bool any_bad_range(const L4kGroupedGemmParams& p) {
  bool bad = false;
  for (int e = threadIdx.x; e < p.experts; e += blockDim.x) {
    const int64_t start = p.offsets[e], end = p.offsets[e + 1];
    const int64_t m = p.counts ? p.counts[e] : end - start;
    bad |= start < 0 || end < start || end > p.rows || m < 0 || m > end - start;
  }
  return __syncthreads_or(bad);
}

template <class C>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) gemv_kernel(const L4kGroupedGemmParams p) {
  __shared__ float partial[C::kWarps][kRows][kTokens];
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const uint8_t* a = static_cast<const uint8_t*>(p.a);
  const uint8_t* b = static_cast<const uint8_t*>(p.b);
  if (p.experts == 1) gemv::prefetch_rows<C>(b + n0 * p.k, p.k, min(static_cast<int64_t>(kRows), p.n - n0));
  // PDL (kernels/pdl.cuh): the offsets and the activations are the previous kernels' outputs.
  pdl_wait();
  pdl_launch_dependents();
  if (any_bad_range(p)) {
    if (blockIdx.x == 0 && threadIdx.x == 0 && p.bad_offsets) atomicExch(p.bad_offsets, 1u);
    return;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const bool lo_ok = n0 + g < p.n, hi_ok = n0 + g + 8 < p.n;
  __nv_bfloat16* d = static_cast<__nv_bfloat16*>(p.d);

  for (int e = 0; e < p.experts; ++e) {
    const int64_t start = p.offsets[e];
    const int m = p.counts ? p.counts[e] : static_cast<int>(p.offsets[e + 1] - start);
    if (m == 0) continue;
    const uint8_t* w_lo = b + ((static_cast<int64_t>(e) * p.n + n0 + g) * p.k + 16 * t);
    const uint8_t* w_hi = w_lo + 8 * p.k;
    for (int j0 = 0; j0 < m; j0 += kTokens) {
      const int tokens = min(kTokens, m - j0);
      const uint8_t* x = a + ((start + j0 + g) * p.k + 16 * t);
      float c[4] = {0.f, 0.f, 0.f, 0.f};
      gemv::warp_pass<C, gemv::MmaE4m3>(c, w_lo, w_hi, x, lo_ok, hi_ok, g < tokens, p.k, warp, t);
      gemv::cta_reduce<C>(partial, c, warp, g, t, [&](int r, int tok, float acc) {
        const int64_t col = n0 + r;
        if (col >= p.n || tok >= tokens) return;
        const int64_t row = start + j0 + tok;
        const float scale_b = p.scale_b[static_cast<int64_t>(e) * p.n + col];
        d[row * p.n + col] = __float2bfloat16_rn(p.scale_a[row] * (acc * scale_b));
      });
    }
  }
}

// The quantizing linear (L4kLinearFp8Params): one expert, 1 to 8 bf16 rows that every CTA quantizes itself, so
// the FP8 linear at decode needs no quant_fp8 launch (and no round trip through its output) before it. The
// prologue is quant.cu's arithmetic (the amax is a max, the same in any order; scale and 1 / scale as it computes
// them; the same E4M3 conversion), so the bytes in shared memory are quant_fp8's; the mainloop and the epilogue
// are gemv_kernel's with the rows read from shared memory, hence its bits. Each CTA reads the rows from L2 (x is
// m * k * 2 bytes, 10 KB at Scout's one row), twice: once for the amax, once to quantize, with its first weight
// loads already in flight (a first version that quantized before any weight load was 1.5% slower in the H100's
// 24-layer `--fp8-dense` step than quant_fp8 + the GEMV; kernels/NOTES.md).
template <class C>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) quant_gemv_kernel(const L4kLinearFp8Params p) {
  __shared__ float partial[C::kWarps][kRows][kTokens];
  __shared__ float row_amax[C::kWarps][kTokens];
  __shared__ float row_scale[kTokens];
  // The quantized rows, m * (k + 16) bytes (dynamic: one row is 5 KB at Scout's widths, and the shared expert's
  // GEMV runs beside other kernels). Row r at r * (k + 16): the 16-byte pad moves each row 4 banks, so a warp's 8
  // token rows hit 32 banks.
  extern __shared__ __align__(16) uint8_t q[];
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kRows, stride = p.k + 16;
  const uint8_t* w = static_cast<const uint8_t*>(p.w) + n0 * p.k;
  gemv::prefetch_rows<C>(w, p.k, min(static_cast<int64_t>(kRows), p.n - n0));
  // PDL (kernels/pdl.cuh): x is the previous kernel's output.
  pdl_wait();
  pdl_launch_dependents();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int m = static_cast<int>(p.m);
  const bf16* x = static_cast<const bf16*>(p.x);
  // The rows' quantization, run while the first weight loads are in flight (warp_pass_after).
  auto quantize_rows = [&] {
    float amax[kTokens];
#pragma unroll
    for (int r = 0; r < kTokens; ++r) {
      amax[r] = 0.f;
      if (r >= m) continue;
      for (int64_t c = 8 * threadIdx.x; c < p.k; c += 8 * C::kThreads) {
        const Pack<8> v = load_pack<8>(x + r * p.k + c);
#pragma unroll
        for (int j = 0; j < 8; ++j) amax[r] = fmaxf(amax[r], fabsf(v[j]));
      }
      amax[r] = warp_reduce(amax[r], MaxOp{});
    }
    if (lane < kTokens) {
#pragma unroll
      for (int r = 0; r < kTokens; ++r)
        if (r == lane) row_amax[warp][r] = amax[r];
    }
    __syncthreads();
    if (threadIdx.x < kTokens) {
      float a = 0.f;
#pragma unroll
      for (int i = 0; i < C::kWarps; ++i) a = fmaxf(a, row_amax[i][threadIdx.x]);
      row_scale[threadIdx.x] = fmaxf(a, kMinAmax) / kE4m3Max;
    }
    __syncthreads();
    for (int r = 0; r < m; ++r) {
      const float inv = 1.f / row_scale[r];
      for (int64_t c = 8 * threadIdx.x; c < p.k; c += 8 * C::kThreads)
        store_e4m3<8>(q + r * stride + c, load_pack<8>(x + r * p.k + c), inv);
    }
    __syncthreads();
  };

  const bool lo_ok = n0 + g < p.n, hi_ok = n0 + g + 8 < p.n;
  const uint8_t* w_lo = w + g * p.k + 16 * t;
  const uint8_t* w_hi = w_lo + 8 * p.k;
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  gemv::warp_pass_after<C, gemv::MmaE4m3, gemv::XShared>(c, w_lo, w_hi, q + g * stride + 16 * t, lo_ok, hi_ok, g < m,
                                                         p.k, warp, t, quantize_rows);
  bf16* y = static_cast<bf16*>(p.y);
  gemv::cta_reduce<C>(partial, c, warp, g, t, [&](int r, int tok, float acc) {
    const int64_t col = n0 + r;
    if (col < p.n && tok < m) y[tok * p.n + col] = __float2bfloat16_rn(row_scale[tok] * (acc * p.w_scales[col]));
  });
}

template <class C>
int launch(const L4kGroupedGemmParams& p, cudaStream_t stream) {
  const int64_t ctas = (p.n + kRows - 1) / kRows;
  if (ctas <= 0 || ctas > INT32_MAX) return L4K_STATUS_UNSUPPORTED_SHAPE;
  const LaunchShape shape{dim3(static_cast<unsigned>(ctas)), dim3(C::kThreads)};
  return launch_result(launch_pdl(gemv_kernel<C>, shape, stream, p));
}

template <class C>
int launch_quant(const L4kLinearFp8Params& p, cudaStream_t stream) {
  const int64_t ctas = (p.n + kRows - 1) / kRows;
  if (ctas <= 0 || ctas > INT32_MAX) return L4K_STATUS_UNSUPPORTED_SHAPE;
  const LaunchShape shape{dim3(static_cast<unsigned>(ctas)), dim3(C::kThreads), static_cast<size_t>(p.m * (p.k + 16))};
  return launch_result(launch_pdl(quant_gemv_kernel<C>, shape, stream, p));
}

}  // namespace l4k::grouped_gemm_gemv

// The sweep (bench/experiments/gemv_sweep.cu) includes this file for its templates only.
#ifndef L4K_GROUPED_GEMM_TEMPLATES_ONLY
// p is validated by the Rust launcher (ops/grouped_gemm.rs): pointers, alignment, n % 8 and k % 16.
extern "C" int l4k_launch_grouped_gemm_gemv(const L4kGroupedGemmParams* p, cudaStream_t stream) {
  namespace gg = l4k::grouped_gemm_gemv;
  return gg::narrow(p->n) ? gg::launch<gg::Narrow>(*p, stream) : gg::launch<gg::Shipped>(*p, stream);
}

// p is validated by the Rust launcher (ops/linear.rs): pointers, 16-byte alignment of x and w, m in 1..=8,
// k % 16 == 0 and m * (k + 16) <= L4K_LINEAR_FP8_MAX_X_BYTES. The configuration is the GEMV's for the same n.
extern "C" int l4k_launch_linear_fp8_gemv(const L4kLinearFp8Params* p, cudaStream_t stream) {
  namespace gg = l4k::grouped_gemm_gemv;
  if (p->m < 1 || p->m > gg::kTokens || p->k % 16 != 0 || p->m * (p->k + 16) > L4K_LINEAR_FP8_MAX_X_BYTES)
    return L4K_STATUS_UNSUPPORTED_SHAPE;
  return gg::narrow(p->n) ? gg::launch_quant<gg::Narrow>(*p, stream) : gg::launch_quant<gg::Shipped>(*p, stream);
}
#endif
