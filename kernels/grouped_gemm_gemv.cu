// FP8 (E4M3) grouped GEMM for one row per expert (L4K_GEMM_GEMV): batch-1 decode's routed experts and the
// one-expert FP8 linears at m = 1, where a call only has to stream the touched weights once and CUTLASS's swapped
// 128x32 tiles give n / 128 CTAs: 40 to 56 of them for n = 5120 to 7168, too few to fill HBM.
//
// Work split: a CTA owns 16 weight rows (16 output columns n) of every expert and its warps split k between them;
// each warp streams its k slices of the 16 rows with 16-byte loads (4 lanes x 16 B = 64 contiguous bytes of each
// row per step, kUnroll steps in flight) and multiplies them with up to 8 token rows on the tensor cores
// (mma.sync m16n8k32, e4m3 x e4m3 -> f32). The grid is n / 16 CTAs; each walks the experts in order and skips the
// empty ones, so at batch 1 every CTA streams its rows of the one routed expert.
//
// Why the fragments can come straight from global memory: a dot product does not care in which order its k
// terms are summed, only that A and B pair the same k. Lane (g, t) of a warp (g = lane / 4, t = lane % 4) loads
// bytes [64 s + 16 t, +16) of weight rows g and g + 8 and of token g; its four 32-bit words w0..w3 (row g),
// v0..v3 (row g + 8) and x0..x3 (token g) feed two mmas as A = {w0, v0, w1, v1}, B = {x0, x1} and
// A = {w2, v2, w3, v3}, B = {x2, x3}. In both, the logical k that lane t supplies for A (its two k quads) are the
// physical bytes it supplies for B, so every weight byte meets the activation byte of the same k. No shared
// memory, no shuffle, no ldmatrix: loads go straight into mma operands.
//
// Accumulation: the FP8 tensor-core accumulator is not a full f32 adder (the reason CUTLASS promotes every 128 of
// k), so each warp sums kUnroll steps (2 x kUnroll mmas, 64 x kUnroll of k) in a fresh accumulator and adds that
// into f32 registers. The warps' partial tiles meet in shared memory and are summed in a fixed order: results
// are deterministic.
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

#include "grouped_gemm_params.h"
#include "pdl.cuh"

namespace l4k::grouped_gemm_gemv {

constexpr int kRows = 16;   // weight rows (output columns) per CTA: the mma's M
constexpr int kTokens = 8;  // token rows per pass: the mma's N
constexpr int kStep = 64;   // k bytes of a row per warp step: 4 lanes x 16 B

// A configuration: Warps split k within the CTA, Unroll steps are in flight per warp (2 x Unroll x 16 B of weights
// per lane), MinBlocks CTAs per SM asked of the register allocator (bench/experiments/gemv_sweep.cu sweeps them).
template <int Warps_, int Unroll_, int MinBlocks_>
struct Config {
  static constexpr int kWarps = Warps_, kUnroll = Unroll_, kMinBlocks = MinBlocks_, kThreads = Warps_ * 32;
  static_assert(Warps_ >= 4, "the epilogue's 128 threads (16 rows x 8 tokens) come from the CTA");
};
// 4 warps x 4 steps: the fastest of the sweep at one row (gate_up and down, session 10).
using Shipped = Config<4, 4, 1>;

// Weights are read once per call: keep them out of L1 (the activations, read by every CTA, stay cacheable).
__device__ __forceinline__ uint4 load_stream(const uint8_t* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ uint4 load_cached(const uint8_t* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

// d += A (16 x 32 e4m3, row-major) * B (32 x 8 e4m3, col-major), f32 accumulate.
__device__ __forceinline__ void mma_e4m3(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

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

// One pass: this warp's k slices of the CTA's 16 weight rows times up to 8 tokens, as the mma's C fragment
// (c[0], c[1]: row g, tokens 2t, 2t + 1; c[2], c[3]: row g + 8).
template <class C>
__device__ __forceinline__ void warp_pass(float (&c)[4], const uint8_t* w_lo, const uint8_t* w_hi, const uint8_t* x,
                                          bool lo_ok, bool hi_ok, bool x_ok, int64_t k, int warp, int t) {
  const int64_t steps = (k + kStep - 1) / kStep;
  for (int64_t s = warp; s < steps; s += C::kWarps * C::kUnroll) {
    uint4 wl[C::kUnroll], wh[C::kUnroll], xs[C::kUnroll];
#pragma unroll
    for (int u = 0; u < C::kUnroll; ++u) {
      const int64_t at = (s + u * C::kWarps) * kStep;
      // k % 16 == 0: a lane's 16 bytes are wholly inside the row or wholly past it.
      const bool in = at + 16 * t < k;
      const uint4 zero = make_uint4(0, 0, 0, 0);
      wl[u] = in && lo_ok ? load_stream(w_lo + at) : zero;
      wh[u] = in && hi_ok ? load_stream(w_hi + at) : zero;
      xs[u] = in && x_ok ? load_cached(x + at) : zero;
    }
    float part[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int u = 0; u < C::kUnroll; ++u) {
      mma_e4m3(part, wl[u].x, wh[u].x, wl[u].y, wh[u].y, xs[u].x, xs[u].y);
      mma_e4m3(part, wl[u].z, wh[u].z, wl[u].w, wh[u].w, xs[u].z, xs[u].w);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) c[i] += part[i];
  }
}

template <class C>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) gemv_kernel(const L4kGroupedGemmParams p) {
  __shared__ float partial[C::kWarps][kRows][kTokens];
  // PDL (kernels/pdl.cuh): the offsets and the activations are the previous kernels' outputs.
  pdl_wait();
  pdl_launch_dependents();
  if (any_bad_range(p)) {
    if (blockIdx.x == 0 && threadIdx.x == 0 && p.bad_offsets) atomicExch(p.bad_offsets, 1u);
    return;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const bool lo_ok = n0 + g < p.n, hi_ok = n0 + g + 8 < p.n;
  const uint8_t* a = static_cast<const uint8_t*>(p.a);
  const uint8_t* b = static_cast<const uint8_t*>(p.b);
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
      warp_pass<C>(c, w_lo, w_hi, x, lo_ok, hi_ok, g < tokens, p.k, warp, t);
      partial[warp][g][2 * t] = c[0];
      partial[warp][g][2 * t + 1] = c[1];
      partial[warp][g + 8][2 * t] = c[2];
      partial[warp][g + 8][2 * t + 1] = c[3];
      __syncthreads();
      // 16 consecutive threads write one token's 16 columns: 32 contiguous bytes.
      if (threadIdx.x < kRows * kTokens) {
        const int r = threadIdx.x % kRows, tok = threadIdx.x / kRows;
        const int64_t col = n0 + r;
        if (col < p.n && tok < tokens) {
          float acc = 0.f;
#pragma unroll
          for (int w = 0; w < C::kWarps; ++w) acc += partial[w][r][tok];
          const int64_t row = start + j0 + tok;
          const float scale_b = p.scale_b[static_cast<int64_t>(e) * p.n + col];
          d[row * p.n + col] = __float2bfloat16_rn(p.scale_a[row] * (acc * scale_b));
        }
      }
      __syncthreads();  // partial is rewritten by the next pass
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
  return l4k::grouped_gemm_gemv::launch<l4k::grouped_gemm_gemv::Shipped>(*p, stream);
}
#endif
