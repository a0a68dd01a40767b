// FP8 (E4M3) grouped GEMM with 128x128 blockwise weight scales and 1x128 activation scales (DeepSeek-V3
// style checkpoints), on CUTLASS 4.2's sm90 pointer-array "FP8 blockwise" collective
// (sm90_mma_array_tma_gmma_ss_warpspecialized_fp8_blockwise_scaling.hpp):
//
//   D[r, c] = bf16( sum_j (A[r, J_j] . B[e, c, J_j]) * scale_a[r, j] * scale_b[e, c / 128, j] )
//
// over the 128-wide K groups J_j. The scales cannot wait for the epilogue: each K group's partial product gets
// its own pair. The main loop issues one 128-deep k-block of wgmma into a scratch accumulator, then adds it,
// times the block's scales, into the main accumulator (the promotion every 4 wgmma k-steps that the rowwise
// PREFILL path does anyway, with a multiply folded in). The scales reach shared memory through cp.async from a
// producer warp of their own, next to the TMA warp.
//
// Everything else is the rowwise op's (grouped_gemm.cu, included for its templates): the device-built problem
// descriptors (one setup block reading the expert offsets; no host sync; empty experts get no tiles), the bad
// offsets flag, the workspace layout and the launch sequence.
//
// Scale layouts, both K-major (what a per-token quantizer and a checkpoint's weight_scale_inv hold):
//   scale_a [rows, k / 128]: the GEMM walks an expert's rows from its first, so its scales start at
//   scale_a + offsets[e] * k / 128 with row stride k / 128;
//   scale_b [experts, n / 128, k / 128].
// Constraints: n and k multiples of 128 (whole scale blocks; every DeepSeek-V3 and Llama 4 projection is).
//
// Configurations (L4kGemmSchedule; no fast-accumulation variant: promotion is what applies the scales):
// - PREFILL: 128x128x128 cooperative tiles, cluster 1x2 (the rowwise accurate path's shape). Per-row activation
//   scales along GEMM M (granularity 1), per-128-column weight scales along GEMM N (granularity 128).
// - DECODE: D^T = B A^T, 128x32x128 tiles, as the rowwise decode path: the weights' n fills the 128-wide wgmma
//   M (one weight scale per tile row block), the few tokens a 32-wide N (granularity 1).
#define L4K_GROUPED_GEMM_TEMPLATES_ONLY
#include "grouped_gemm.cu"
#undef L4K_GROUPED_GEMM_TEMPLATES_ONLY

#include <cutlass/detail/blockwise_scale_layout.hpp>
#include <cutlass/epilogue/thread/activation.h>

namespace l4k::grouped_gemm {

constexpr int kScaleBlock = 128;

template <bool Swap, class Tile, class Cluster, class KernelSchedule, class EpilogueSchedule>
struct BlockwiseConfig {
  static constexpr bool kSwap = Swap;
  static constexpr bool kBlockwise = true;
  using ElementD = Bf16;
  using LayoutD = cute::conditional_t<Swap, ColMajor, RowMajor>;
  // Granularity along GEMM (M, N, K): tokens 1, weights 128, K 128. Swapped, GEMM M is the weights' n.
  using Scales = cutlass::detail::Sm90BlockwiseScaleConfig<Swap ? kScaleBlock : 1, Swap ? 1 : kScaleBlock, kScaleBlock,
                                                           cute::GMMA::Major::K, cute::GMMA::Major::K>;
  using LayoutSFA = decltype(Scales::deduce_layoutSFA());
  using LayoutSFB = decltype(Scales::deduce_layoutSFB());
  // The accumulator is already scaled: convert to bf16 and store.
  using Fusion = fu::Sm90EVT<fu::Sm90Compute<cutlass::epilogue::thread::Identity, Bf16, float, kRound>, fu::Sm90AccFetch>;

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, Cluster, cutlass::epilogue::collective::EpilogueTileAuto,
      float, float, void, LayoutD*, 8, Bf16, LayoutD*, 8, EpilogueSchedule, Fusion>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Fp8, cute::tuple<RowMajor*, LayoutSFA*>, 16, Fp8,
      cute::tuple<ColMajor*, LayoutSFB*>, 16, float, Tile, Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideD = typename Kernel::InternalStrideD;
};

using BlockwisePrefill = BlockwiseConfig<false, Shape<_128, _128, _128>, Shape<_1, _2, _1>,
                                         cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8Blockwise,
                                         cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>;
using BlockwiseDecode = BlockwiseConfig<true, Shape<_128, _32, _128>, Shape<_1, _1, _1>,
                                        cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8Blockwise,
                                        cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>;

}  // namespace l4k::grouped_gemm

extern "C" size_t l4k_internal_grouped_gemm_blockwise_workspace_size(int32_t experts) {
  using namespace l4k::grouped_gemm;
  const size_t a = workspace_size<BlockwisePrefill>(experts), b = workspace_size<BlockwiseDecode>(experts);
  return a > b ? a : b;
}

// p->scale_a / p->scale_b hold the blockwise scales described above; schedule PREFILL or DECODE (AUTO is
// resolved by the caller, ops/grouped_gemm.rs).
extern "C" int l4k_launch_grouped_gemm_blockwise(const L4kGroupedGemmParams* p, cudaStream_t stream) {
  using namespace l4k::grouped_gemm;
  if (p->n % kScaleBlock || p->k % kScaleBlock) return L4K_STATUS_GEMM_CANNOT_IMPLEMENT;
  switch (p->schedule) {
    case L4K_GEMM_PREFILL: return run<BlockwisePrefill>(*p, stream);
    case L4K_GEMM_DECODE: return run<BlockwiseDecode>(*p, stream);
    default: return L4K_STATUS_GEMM_CANNOT_IMPLEMENT;
  }
}
