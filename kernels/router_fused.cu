// Decode routing in one launch: the router logits, the routing and the FP8 permute of up to 8 tokens, bit for bit
// the three launches it replaces (reference: reference/src/router.rs, reference/src/permute.rs):
//   logits = bf16(x @ w^T)   kernels/linear.cu's GEMV (its configuration and k split: linear.cuh, the same sums in
//                            the same order, so the same bits)
//   routing                  kernels/router.cu with align 1 (top_k of router.cuh: ids, weights; counts, offsets
//                            and destinations stable in (token, choice) order)
//   rows                     kernels/permute.cu's FP8 permute scaled by the routing weights (permute.cuh)
//
// Why: in a batch-1 decode step the three sit on the routed experts' critical chain, about 37 us of a 170 us
// layer, while the shared expert's GEMV grid on the other stream holds most SMs. Measured, the one launch did not
// beat them inside the step (kernels/NOTES.md, "Decode routing in one kernel"): the model keeps the three by
// default, and this op is there for callers (and A/Bs) whose routing does not compete for SMs that way.
//
// One cooperative launch of tiles x splits CTAs (tiles = ceil(E / 16), splits from linear.cuh: 8 CTAs at E = 16,
// 64 at E = 128), 256 threads each:
//   1. GEMV: warps 0-3 of CTA (tile, split) are exactly the 4 warps of the GEMV's cluster CTA of that rank: the
//      split's k steps of the tile's 16 router rows times every token, reduced in warp order; the 16 x 8 sums go
//      to the workspace (the cluster version writes them into its first CTA's shared memory).
//   -- grid barrier --
//   2. Routing, in every CTA (a few hundred values, cheaper than a second barrier): logits = bf16 of the split
//      sums added in rank order (the cluster's first CTA's order), top_k with G lanes per token (8 tokens x at
//      most 32 lanes fill the CTA), counts, offsets and destinations in shared memory. CTA 0 writes them out.
//   3. Permute: CTA c writes the rows of tokens c, c + grid, ...: the row, one amax, k scaled E4M3 rows.
//
// PDL (kernels/pdl.cuh): the router weights are no kernel's output, so each CTA pulls its slice into L2 before the
// wait; x is read after it.
#include <cooperative_groups.h>

#include "common.cuh"
#include "gemv.cuh"
#include "linear.cuh"
#include "pdl.cuh"
#include "permute.cuh"
#include "router.cuh"

namespace l4k::router_fused {

using gemv::kRows;
using gemv::kTokens;
using Gemv = linear::Shipped;  // linear.cu's configuration for a router's width (n <= 128 is never wide)
constexpr int kThreads = kRouterThreads;  // top_k: 8 tokens x up to 32 lanes
constexpr int kTileSums = kRows * kTokens;  // floats of one CTA's sums in the workspace
static_assert(Gemv::kThreads <= kThreads, "the GEMV's warps are the CTA's first");

template <int G, int VPT>
__global__ void __launch_bounds__(kThreads) route_fp8_kernel(const L4kLinearParams lin, const L4kRouterParams r,
                                                             const L4kPermuteParams pm, int nsplit) {
  __shared__ float partial[Gemv::kWarps][kRows][kTokens];
  __shared__ float logit_s[kTokens][kMaxE];
  __shared__ int ids_s[kTokens * kMaxK];
  __shared__ float w_s[kTokens * kMaxK];
  __shared__ uint8_t choice_s[kTokens * kMaxK];
  __shared__ int64_t dest_s[kTokens * kMaxK];
  __shared__ int start_s[kMaxE];
  const int tile = static_cast<int>(blockIdx.x) / nsplit, rank = static_cast<int>(blockIdx.x) % nsplit;
  const int64_t n0 = static_cast<int64_t>(tile) * kRows, row_bytes = 2 * lin.k;
  const uint8_t* w = static_cast<const uint8_t*>(lin.w) + n0 * row_bytes;
  const int64_t slice = (row_bytes / nsplit + 15) / 16 * 16;
  gemv::prefetch_rows<Gemv>(w, row_bytes, min(static_cast<int64_t>(kRows), lin.n - n0), rank * slice);
  pdl_wait();
  pdl_launch_dependents();

  // 1. This CTA's share of the logits (linear.cu's gemv_kernel, SPLIT, one pass: m <= 8).
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int tokens = static_cast<int>(lin.m);
  if (warp < Gemv::kWarps) {
    const int g = lane >> 2, t = lane & 3;
    const uint8_t* w_lo = w + g * row_bytes + 16 * t;
    const uint8_t* w_hi = w_lo + 8 * row_bytes;
    const uint8_t* x = static_cast<const uint8_t*>(lin.x) + g * row_bytes + 16 * t;
    float c[4] = {0.f, 0.f, 0.f, 0.f};
    gemv::warp_pass<Gemv, gemv::MmaBf16>(c, w_lo, w_hi, x, n0 + g < lin.n, n0 + g + 8 < lin.n, g < tokens,
                                         row_bytes, rank * Gemv::kWarps + warp, t, nsplit * Gemv::kWarps);
    partial[warp][g][2 * t] = c[0];
    partial[warp][g][2 * t + 1] = c[1];
    partial[warp][g + 8][2 * t] = c[2];
    partial[warp][g + 8][2 * t + 1] = c[3];
  }
  __syncthreads();
  float* sums = static_cast<float*>(r.workspace);
  if (threadIdx.x < kTileSums) {
    const int row = threadIdx.x % kRows, tok = threadIdx.x / kRows;
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < Gemv::kWarps; ++i) acc += partial[i][row][tok];
    sums[(static_cast<int64_t>(blockIdx.x) * kRows + row) * kTokens + tok] = acc;
  }
  // Orders every CTA's sums before any CTA reads them (grid.sync fences; __ldcg reads L2, never a stale L1 line).
  cooperative_groups::this_grid().sync();

  // 2. Logits, then the routing of every token.
  const int E = r.experts, k = r.k;
  for (int i = threadIdx.x; i < tokens * E; i += kThreads) {
    const int tok = i / E, e = i % E, tl = e / kRows, row = e % kRows;
    float acc = 0.f;
    for (int s = 0; s < nsplit; ++s)
      acc += __ldcg(sums + ((static_cast<int64_t>(tl) * nsplit + s) * kRows + row) * kTokens + tok);
    const bf16 b = __float2bfloat16_rn(acc);
    logit_s[tok][e] = __bfloat162float(b);
    if (blockIdx.x == 0) static_cast<bf16*>(lin.y)[tok * E + e] = b;
  }
  __syncthreads();
  {
    // Group of G lanes per token (aligned inside a warp, as top_k's shuffles need); every lane takes part.
    const int tok = threadIdx.x / G, gl = threadIdx.x % G;
    float x[kVpl];
#pragma unroll
    for (int j = 0; j < kVpl; ++j) {
      const int e = gl * kVpl + j;
      x[j] = tok < tokens && e < E ? logit_s[tok][e] : 0.f;
    }
    const Ranking ranking{E, k, r.mode == L4K_ROUTER_SOFTMAX_TOPK, true, r.renormalize != 0};
    const bool in = gl == 0 && tok < tokens;
    const int at = in ? tok * k : 0;
    top_k<G>(x, gl, lane, ranking, Choices{in, ids_s + at, w_s + at, choice_s + at});
  }
  __syncthreads();
  // align 1: offsets are the exclusive scan of the counts; a pair's row is its expert's start plus the pairs of
  // that expert before it in (token, choice) order.
  const int n = tokens * k;
  int count = 0;
  if (threadIdx.x < E)
    for (int i = 0; i < n; ++i) count += choice_s[i] == threadIdx.x;
  int total;
  const int start = block_exclusive_scan<kRouterWarps>(count, &total);
  if (threadIdx.x < E) start_s[threadIdx.x] = start;
  __syncthreads();
  if (threadIdx.x < n) {
    const int e = choice_s[threadIdx.x];
    int before = 0;
    for (int i = 0; i < static_cast<int>(threadIdx.x); ++i) before += choice_s[i] == e;
    dest_s[threadIdx.x] = start_s[e] + before;
  }
  __syncthreads();
  if (blockIdx.x == 0) {
    if (threadIdx.x < E) r.counts[threadIdx.x] = count, r.offsets[threadIdx.x] = start;
    if (threadIdx.x == 0) r.offsets[E] = total;
    if (threadIdx.x < n) {
      r.ids[threadIdx.x] = ids_s[threadIdx.x];
      r.weights[threadIdx.x] = w_s[threadIdx.x];
      r.dest[threadIdx.x] = static_cast<int>(dest_s[threadIdx.x]);
    }
  }

  // 3. The FP8 rows (permute.cu's permute_kernel body; the loop is uniform across the CTA).
  const bf16* xs = static_cast<const bf16*>(pm.x);
  for (int tok = static_cast<int>(blockIdx.x); tok < tokens; tok += static_cast<int>(gridDim.x)) {
    Pack<8> v[VPT];
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * 8;
      if (c < pm.hidden) v[i] = load_pack<8>(xs + tok * pm.hidden + c);
    }
    const float amax = row_amax_and_sync<8, VPT, true>(v, pm.hidden);
    write_choices<8, VPT, true>(pm, v, amax, dest_s + tok * k, w_s + tok * k);
  }
}

// Rows per thread of the permute phase: hidden / 8 accesses over 256 threads.
inline int vpt(int64_t hidden) {
  const int64_t per = (hidden / 8 + kThreads - 1) / kThreads;
  return per <= 1 ? 1 : per <= 2 ? 2 : per <= 4 ? 4 : per <= 8 ? 8 : 0;
}

template <int G>
int launch(const L4kLinearParams& lin, const L4kRouterParams& r, const L4kPermuteParams& pm, cudaStream_t s) {
  const int nsplit = linear::splits(lin);
  const int64_t ctas = (lin.n + kRows - 1) / kRows * nsplit;
  LaunchShape shape{dim3(static_cast<unsigned>(ctas)), dim3(kThreads)};
  shape.cooperative = true;
  switch (vpt(pm.hidden)) {
    case 1: return launch_result(launch_pdl(route_fp8_kernel<G, 1>, shape, s, lin, r, pm, nsplit));
    case 2: return launch_result(launch_pdl(route_fp8_kernel<G, 2>, shape, s, lin, r, pm, nsplit));
    case 4: return launch_result(launch_pdl(route_fp8_kernel<G, 4>, shape, s, lin, r, pm, nsplit));
    case 8: return launch_result(launch_pdl(route_fp8_kernel<G, 8>, shape, s, lin, r, pm, nsplit));
    default: return L4K_STATUS_TOO_LONG;
  }
}

// Workspace bytes: every CTA's 16 x 8 split sums (m <= 8 splits alike for every m).
inline int64_t workspace_bytes(int experts) {
  L4kLinearParams lin{};
  lin.m = 1, lin.n = experts;
  return (experts + kRows - 1) / kRows * linear::splits(lin) * kTileSums * static_cast<int64_t>(sizeof(float));
}

}  // namespace l4k::router_fused

extern "C" int64_t l4k_internal_route_fp8_workspace(int experts) {
  if (experts < 1 || experts > l4k::kMaxE) return -1;
  return l4k::router_fused::workspace_bytes(experts);
}

// Validated by ops/router.rs (shapes, pointers, alignment, tokens 1..=8, align 1); re-checked here where a wrong
// value would index out of bounds.
extern "C" int l4k_launch_route_fp8(const L4kLinearParams* lin, const L4kRouterParams* r, const L4kPermuteParams* pm,
                                    cudaStream_t stream) {
  using namespace l4k;
  if (lin->m < 1 || lin->m > gemv::kTokens || r->experts < 1 || r->experts > kMaxE || lin->n != r->experts ||
      r->k < 1 || r->k > kMaxK || r->k > r->experts || pm->k != r->k || pm->hidden != lin->k || pm->hidden % 8 != 0 ||
      r->align != 1 || pm->align != 1)
    return L4K_STATUS_BAD_PARAMS;
  if (r->workspace_bytes < router_fused::workspace_bytes(r->experts)) return L4K_STATUS_BAD_WORKSPACE;
  switch (router_group(r->experts)) {
    case 2: return router_fused::launch<2>(*lin, *r, *pm, stream);
    case 4: return router_fused::launch<4>(*lin, *r, *pm, stream);
    case 8: return router_fused::launch<8>(*lin, *r, *pm, stream);
    case 16: return router_fused::launch<16>(*lin, *r, *pm, stream);
    default: return router_fused::launch<32>(*lin, *r, *pm, stream);
  }
}
