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

#include "gemv.cuh"
#include "grouped_gemm_params.h"
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
inline bool narrow(const L4kGroupedGemmParams& p) { return p.n <= 5120; }

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

template <class C>
int launch(const L4kGroupedGemmParams& p, cudaStream_t stream) {
  const int64_t ctas = (p.n + kRows - 1) / kRows;
  if (ctas <= 0 || ctas > INT32_MAX) return L4K_STATUS_UNSUPPORTED_SHAPE;
  const LaunchShape shape{dim3(static_cast<unsigned>(ctas)), dim3(C::kThreads)};
  return launch_result(launch_pdl(gemv_kernel<C>, shape, stream, p));
}

}  // namespace l4k::grouped_gemm_gemv

// The sweep (bench/experiments/gemv_sweep.cu) includes this file for its templates only.
#ifndef L4K_GROUPED_GEMM_TEMPLATES_ONLY
// p is validated by the Rust launcher (ops/grouped_gemm.rs): pointers, alignment, n % 8 and k % 16.
extern "C" int l4k_launch_grouped_gemm_gemv(const L4kGroupedGemmParams* p, cudaStream_t stream) {
  namespace gg = l4k::grouped_gemm_gemv;
  return gg::narrow(*p) ? gg::launch<gg::Narrow>(*p, stream) : gg::launch<gg::Shipped>(*p, stream);
}
#endif
