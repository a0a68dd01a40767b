// The streaming GEMV mainloop: one weight pass for up to 8 token rows on mma.sync, fragments loaded straight from
// global memory. Users: grouped_gemm_gemv.cu (FP8 experts, m16n8k32 e4m3) and linear.cu (bf16 nn.Linear at few
// rows, m16n8k16 bf16). Both are weight-read bound: what matters is bytes in flight, not the math.
//
// Work split: a CTA owns 16 weight rows (16 output columns) and its warps split k between them; each warp
// streams its k slices of the 16 rows with 16-byte loads (4 lanes x 16 B = 64 contiguous bytes of each row per
// step, kUnroll steps in flight) and multiplies them with up to 8 token rows on the tensor cores.
//
// Why the fragments can come straight from global memory: a dot product does not care in which order its k
// terms are summed, only that A and B pair the same k. Lane (g, t) of a warp (g = lane / 4, t = lane % 4) loads
// bytes [64 s + 16 t, +16) of weight rows g and g + 8 and of token g; its four 32-bit words w0..w3 (row g),
// v0..v3 (row g + 8) and x0..x3 (token g) feed two mmas as A = {w0, v0, w1, v1}, B = {x0, x1} and
// A = {w2, v2, w3, v3}, B = {x2, x3}. For both element types the mma's A register j of lane t holds the same
// logical k as its B register j (m16n8k32 e4m3: a k quad per register; m16n8k16 bf16: a k pair), so every
// weight element meets the activation element of the same physical k. No shared memory, no shuffle, no
// ldmatrix: loads go straight into mma operands.
//
// Accumulation: the FP8 tensor-core accumulator is not a full f32 adder (the reason CUTLASS promotes every 128 of
// k), so each warp sums kUnroll steps in a fresh accumulator and adds that into f32 registers (harmless for bf16,
// whose accumulator is f32). The warps' partial tiles meet in shared memory and are summed in a fixed order:
// results are deterministic.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace l4k::gemv {

constexpr int kRows = 16;   // weight rows (output columns) per CTA: the mma's M
constexpr int kTokens = 8;  // token rows per pass: the mma's N
constexpr int kStep = 64;   // k bytes of a row per warp step: 4 lanes x 16 B

// A configuration: Warps split k within the CTA, Unroll steps are in flight per warp (2 x Unroll x 16 B of weights
// per lane), MinBlocks CTAs per SM asked of the register allocator, Prefetch bytes of each of the CTA's rows
// pulled into L2 before the PDL wait (0: none). bench/experiments/gemv_sweep.cu and linear_gemv_sweep.cu sweep them.
template <int Warps_, int Unroll_, int MinBlocks_, int Prefetch_ = 0>
struct Config {
  static constexpr int kWarps = Warps_, kUnroll = Unroll_, kMinBlocks = MinBlocks_, kThreads = Warps_ * 32;
  static constexpr int kPrefetch = Prefetch_;
  static_assert(Warps_ >= 4, "the epilogue's 128 threads (16 rows x 8 tokens) come from the CTA");
  static_assert(Prefetch_ % 16 == 0, "bulk prefetches are whole 16-byte units");
};

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
struct MmaE4m3 {
  __device__ __forceinline__ static void mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};

// d += A (16 x 16 bf16, row-major) * B (16 x 8 bf16, col-major), f32 accumulate.
struct MmaBf16 {
  __device__ __forceinline__ static void mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};

// Pulls C::kPrefetch bytes of each of the CTA's `rows` weight rows (row_bytes apart, 16-byte aligned), starting
// `from` bytes into the row (a multiple of 16), into L2, one bulk prefetch per row. Meant for before pdl_wait(): a prefetch moves nothing into the SM and L2 is
// the GPU's point of coherence, so a write the previous kernel still makes to those bytes updates the prefetched
// line and the loads after the wait see it (pdl.cuh's rule 1 is about reads into the SM). It only lets HBM start
// on this kernel's bytes while the previous kernel drains.
template <class C>
__device__ __forceinline__ void prefetch_rows(const uint8_t* w, int64_t row_bytes, int64_t rows, int64_t from = 0) {
  if constexpr (C::kPrefetch > 0) {
    const int64_t left = row_bytes - from;
    const uint32_t bytes = static_cast<uint32_t>(left < C::kPrefetch ? left : C::kPrefetch);
    if (threadIdx.x < rows && left > 0) {
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(w + threadIdx.x * row_bytes + from), "r"(bytes)
                   : "memory");
    }
  }
}

// One pass: this warp's k slices of the CTA's 16 weight rows times up to 8 tokens, as the mma's C fragment
// (c[0], c[1]: row g, tokens 2t, 2t + 1; c[2], c[3]: row g + 8). w_lo / w_hi / x point at this lane's first 16
// bytes of row g, row g + 8 and token g; k_bytes % 16 == 0, so a lane's 16 bytes are wholly inside a row or past it.
// `warps` warps split k (step s goes to warp s % warps): the CTA's own, or a cluster's when its CTAs split k too.
template <class C, class Mma>
__device__ __forceinline__ void warp_pass(float (&c)[4], const uint8_t* w_lo, const uint8_t* w_hi, const uint8_t* x,
                                          bool lo_ok, bool hi_ok, bool x_ok, int64_t k_bytes, int warp, int t,
                                          int warps = C::kWarps) {
  const int64_t steps = (k_bytes + kStep - 1) / kStep;
  for (int64_t s = warp; s < steps; s += static_cast<int64_t>(warps) * C::kUnroll) {
    uint4 wl[C::kUnroll], wh[C::kUnroll], xs[C::kUnroll];
#pragma unroll
    for (int u = 0; u < C::kUnroll; ++u) {
      const int64_t at = (s + static_cast<int64_t>(u) * warps) * kStep;
      const bool in = at + 16 * t < k_bytes;
      const uint4 zero = make_uint4(0, 0, 0, 0);
      wl[u] = in && lo_ok ? load_stream(w_lo + at) : zero;
      wh[u] = in && hi_ok ? load_stream(w_hi + at) : zero;
      xs[u] = in && x_ok ? load_cached(x + at) : zero;
    }
    float part[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int u = 0; u < C::kUnroll; ++u) {
      Mma::mma(part, wl[u].x, wh[u].x, wl[u].y, wh[u].y, xs[u].x, xs[u].y);
      Mma::mma(part, wl[u].z, wh[u].z, wl[u].w, wh[u].w, xs[u].z, xs[u].w);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) c[i] += part[i];
  }
}

// The CTA's tile: every warp's fragment into shared memory, then 128 threads each sum one (row, token) over the
// warps in warp order and hand it to out(r, tok, acc); 16 consecutive threads hold one token's 16 columns, so the
// epilogue's stores are contiguous. Leaves `partial` free for the next pass.
template <class C, class Out>
__device__ __forceinline__ void cta_reduce(float (&partial)[C::kWarps][kRows][kTokens], const float (&c)[4], int warp,
                                           int g, int t, Out&& out) {
  partial[warp][g][2 * t] = c[0];
  partial[warp][g][2 * t + 1] = c[1];
  partial[warp][g + 8][2 * t] = c[2];
  partial[warp][g + 8][2 * t + 1] = c[3];
  __syncthreads();
  if (threadIdx.x < kRows * kTokens) {
    const int r = threadIdx.x % kRows, tok = threadIdx.x / kRows;
    float acc = 0.f;
#pragma unroll
    for (int w = 0; w < C::kWarps; ++w) acc += partial[w][r][tok];
    out(r, tok, acc);
  }
  __syncthreads();
}

}  // namespace l4k::gemv
