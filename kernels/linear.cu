// The bf16 nn.Linear at few rows (ops/linear.rs's Gemv schedule): batch-1-to-8 decode's dense projections (q/k/v,
// o, the shared expert, lm_head), which only have to stream their weights once. cuBLASLt serves every other
// shape; at one row its kernels read these weights at 77-96% of the copy rate and cannot overlap the kernels
// around them, since they know nothing of PDL.
//
// The mainloop is kernels/gemv.cuh's on mma.sync m16n8k16 bf16: a CTA owns 16 weight rows of the whole k, its
// warps split k, up to 8 token rows per pass (more rows are more passes, each re-reading the CTA's weights, which
// is why ops/linear.rs's auto rule takes it at one row only). The weights are no kernel's output, so a CTA pulls the first
// bytes of its rows into L2 before the PDL wait, while the kernel before it drains.
//
// Epilogue: y = the f32 sum, rounded once to bf16 or stored as f32 (lm_head's logits).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <cooperative_groups.h>

#include "gemv.cuh"
#include "linear.cuh"
#include "params.h"
#include "pdl.cuh"

namespace l4k::linear {

namespace cg = cooperative_groups;

__device__ __forceinline__ void store(__nv_bfloat16* y, float v) { *y = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store(float* y, float v) { *y = v; }

template <class C, class Out, bool SPLIT>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) gemv_kernel(const L4kLinearParams p) {
  __shared__ float partial[C::kWarps][kRows][kTokens];
  __shared__ float cluster_sums[SPLIT ? kMaxSplits : 1][kRows][kTokens];  // filled in the cluster's first CTA
  cg::cluster_group cluster = cg::this_cluster();
  const int nsplit = SPLIT ? static_cast<int>(cluster.num_blocks()) : 1;
  const int rank = SPLIT ? static_cast<int>(cluster.block_rank()) : 0;
  if constexpr (SPLIT) {
    // Another CTA's shared memory may only be written once that CTA runs: arrive now, wait before writing.
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
  }
  // Tiles of 16 weight rows: one per CTA (a cluster's, when split), or, where the caller bounded the grid
  // (p.max_ctas) to leave CTA slots to a kernel running beside this one, tiles blockIdx.x, + gridDim.x, ... A
  // split grid is never bounded (the launcher refuses it), so a cluster passes the loop once.
  const int64_t tiles = (p.n + kRows - 1) / kRows, stride = gridDim.x / nsplit, row_bytes = 2 * p.k;
  int64_t tile = blockIdx.x / nsplit;
  const uint8_t* w = static_cast<const uint8_t*>(p.w) + tile * kRows * row_bytes;
  // Split: CTA r prefetches every row from its r-th slice on (slices tile the row; a prefetch may run into the next).
  const int64_t slice = SPLIT ? (row_bytes / nsplit + 15) / 16 * 16 : 0;
  gemv::prefetch_rows<C>(w, row_bytes, min(static_cast<int64_t>(kRows), p.n - tile * kRows), rank * slice);
  // PDL (kernels/pdl.cuh): x is the previous kernel's output.
  pdl_wait();
  pdl_launch_dependents();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  Out* y = static_cast<Out*>(p.y);
  for (; tile < tiles; tile += stride, w += stride * kRows * row_bytes) {
    const int64_t n0 = tile * kRows;
    // A bounded grid's next tile starts in L2 while this one streams and reduces (the bubble between tiles).
    if (tile + stride < tiles) {
      const int64_t next = (tile + stride) * kRows;
      gemv::prefetch_rows<C>(w + stride * kRows * row_bytes, row_bytes, min(static_cast<int64_t>(kRows), p.n - next));
    }
    const bool lo_ok = n0 + g < p.n, hi_ok = n0 + g + 8 < p.n;
    const uint8_t* w_lo = w + g * row_bytes + 16 * t;
    const uint8_t* w_hi = w_lo + 8 * row_bytes;
    for (int64_t j0 = 0; j0 < p.m; j0 += kTokens) {  // SPLIT: m <= 8, one pass
      const int tokens = static_cast<int>(min(static_cast<int64_t>(kTokens), p.m - j0));
      const uint8_t* x = static_cast<const uint8_t*>(p.x) + (j0 + g) * row_bytes + 16 * t;
      float c[4] = {0.f, 0.f, 0.f, 0.f};
      gemv::warp_pass<C, gemv::MmaBf16>(c, w_lo, w_hi, x, lo_ok, hi_ok, g < tokens, row_bytes,
                                        rank * C::kWarps + warp, t, nsplit * C::kWarps);
      if constexpr (SPLIT) {
        float* first = cluster.map_shared_rank(&cluster_sums[0][0][0], 0);
        asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
        gemv::cta_reduce<C>(partial, c, warp, g, t,
                            [&](int r, int tok, float acc) { first[(rank * kRows + r) * kTokens + tok] = acc; });
        cluster.sync();  // release / acquire: the first CTA sees every sum; no CTA exits while its slot is written
        if (rank == 0 && threadIdx.x < kRows * kTokens) {
          const int r = threadIdx.x % kRows, tok = threadIdx.x / kRows;
          float acc = 0.f;
          for (int i = 0; i < nsplit; ++i) acc += cluster_sums[i][r][tok];
          if (n0 + r < p.n && tok < tokens) store(y + (j0 + tok) * p.n + n0 + r, acc);
        }
      } else {
        gemv::cta_reduce<C>(partial, c, warp, g, t, [&](int r, int tok, float acc) {
          if (n0 + r < p.n && tok < tokens) store(y + (j0 + tok) * p.n + n0 + r, acc);
        });
      }
    }
  }
}

// SPLIT_OK: whether C has the cluster-split instantiation (Wide does not: wide() takes n >= 6144, 384 tiles or more,
// where splits() is 1).
template <class C, class Out, bool SPLIT_OK>
cudaError_t launch_out(const L4kLinearParams& p, int64_t tiles, int nsplit, cudaStream_t stream) {
  const int64_t ctas = p.max_ctas > 0 && p.max_ctas < tiles ? p.max_ctas : tiles * nsplit;
  LaunchShape shape{dim3(static_cast<unsigned>(ctas)), dim3(C::kThreads)};
  if constexpr (SPLIT_OK) {
    if (nsplit > 1) {
      shape.cluster_x = static_cast<unsigned>(nsplit);
      return launch_pdl(gemv_kernel<C, Out, true>, shape, stream, p);
    }
  }
  return launch_pdl(gemv_kernel<C, Out, false>, shape, stream, p);
}

template <class C, bool SPLIT_OK = true>
int launch(const L4kLinearParams& p, cudaStream_t stream) {
  const int64_t tiles = (p.n + kRows - 1) / kRows;
  if (tiles <= 0 || tiles > INT32_MAX) return L4K_STATUS_UNSUPPORTED_SHAPE;
  const int nsplit = splits(p);
  if (!SPLIT_OK && nsplit > 1) return L4K_STATUS_UNSUPPORTED_SHAPE;  // a rule change that needs the instantiation
  if (p.max_ctas < 0 || (p.max_ctas > 0 && nsplit > 1)) return L4K_STATUS_UNSUPPORTED_SHAPE;  // no bounded split
  switch (p.out_dtype) {
    case L4K_LINEAR_OUT_BF16:
      return launch_result(launch_out<C, __nv_bfloat16, SPLIT_OK>(p, tiles, nsplit, stream));
    case L4K_LINEAR_OUT_F32:
      return launch_result(launch_out<C, float, SPLIT_OK>(p, tiles, nsplit, stream));
    default:
      return L4K_STATUS_BAD_PARAMS;
  }
}

}  // namespace l4k::linear

// The sweep (bench/experiments/linear_gemv_sweep.cu) includes this file for its templates only.
#ifndef L4K_LINEAR_TEMPLATES_ONLY
// p is validated by the Rust launcher (ops/linear.rs): pointers, 16-byte alignment of x and w, k % 8, m >= 1.
extern "C" int l4k_launch_linear_gemv(const L4kLinearParams* p, cudaStream_t stream) {
  namespace lin = l4k::linear;
  return lin::wide(*p) ? lin::launch<lin::Wide, false>(*p, stream) : lin::launch<lin::Shipped, true>(*p, stream);
}

// How many CTAs split each tile's k in an m x n call (host code, no GPU): ops/linear.rs's gemv_splits_k asks it.
extern "C" int l4k_internal_linear_splits(int64_t m, int64_t n) {
  if (m < 1 || n < 1 || n > INT64_MAX - l4k::gemv::kRows) return 1;
  L4kLinearParams p{};
  p.m = m, p.n = n;
  return l4k::linear::splits(p);
}
#endif
