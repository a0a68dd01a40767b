// FP8 (E4M3) grouped GEMM for the routed experts, on CUTLASS 4.x for sm_90a: TMA loads, wgmma, warp-specialized
// persistent kernels over a pointer-array grouped problem, the rowwise scales applied in the epilogue.
//
// Problem descriptors (per-expert M, pointers, strides) are built on the device from the expert offsets by a
// one-block setup kernel, into the caller's workspace: no host synchronization, capturable in a CUDA graph. An
// expert with zero rows has M = 0 and the group tile scheduler gives it no tiles.
//
// Epilogue: D = bf16(scale_a[m] * (acc * scale_b[n])), an EVT of two broadcasts whose pointers are per group
// (CUTLASS's array-of-pointers broadcasts): scale_a points at the expert's first row, scale_b at its row of the
// [experts, n] scales.
//
// Configurations (L4kGemmSchedule):
// - PREFILL: D = A B^T with 128x192x128 cooperative tiles (128x128 where n is not close to a multiple of 192
//   or the experts average at most 128 rows, see prefill_wide), no cluster. Tensor-core bound at hundreds of
//   rows per expert, and at the H100's 700 W limit under sustained load, so the configuration is the one with
//   the most FLOP per joule (kernels/NOTES.md, sweep 3). FP8 products are promoted to a separate f32
//   accumulator every 128 of k (accurate at k = 8192).
// - PREFILL_FAST_ACCUM: 256x128 tiles accumulated in the tensor cores only (CUTLASS example 57's choice);
//   128x256 where the experts average at most 128 rows.
// - DECODE: D^T = B A^T. With a handful of rows per expert the GEMM is bound by reading the weights; swapping
//   puts the weights' n in the 128-wide wgmma M and the few tokens in a 32-wide N, so no MMA work is wasted on
//   padding rows and every byte of weight is read once.
//
// SwiGLU epilogue (l4k_launch_grouped_gemm_swiglu, PREFILL and PREFILL_FAST_ACCUM tiles): the weights' gate and
// up rows are interleaved at preparation (row 2j = gate j, row 2j + 1 = up j: weight_prep.cu), so a thread's
// accumulator pairs (columns 2j, 2j + 1: adjacent in every wgmma fragment) hold a matching gate and up value. The
// epilogue rounds both to bf16 (the plain GEMM's output), computes h = bf16(bf16(silu(g)) * u) as swiglu.cu does,
// and stores h's two bytes in the pair's two columns of a uint8 D [rows, n]: byte-for-byte the bf16 h [rows, n/2]
// row-major, half the bytes of the [rows, n] bf16 output. The rowwise FP8 quantization of h needs each row's amax
// over all n/2 columns (64 tiles at Llama 4's widths), so it stays a separate pass (ops/grouped_gemm.rs).
// Measured 2-8% slower than the plain GEMM + swiglu_fp8 at Scout's gate_up (kernels/NOTES.md): opt-in only.
#include <cutlass/cutlass.h>
#include <cute/tensor.hpp>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/group_array_problem_shape.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>

#include <cuda_bf16.h>

#include "grouped_gemm_params.h"

namespace l4k::grouped_gemm {

using namespace cute;
namespace fu = cutlass::epilogue::fusion;

using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;
using Fp8 = cutlass::float_e4m3_t;
using Bf16 = cutlass::bfloat16_t;
using RowMajor = cutlass::layout::RowMajor;
using ColMajor = cutlass::layout::ColumnMajor;
constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

// EVT node: bf16 (gate, up) pairs -> the two bytes of h = bf16(bf16(silu(g)) * u) in the pair's columns.
// silu as swiglu.cu computes it (g * rcp_rn(1 + e^-g), f32), so fused and unfused h are the same bits.
struct SwigluPairBytes : fu::Sm90VisitorImpl<> {
  using fu::Sm90VisitorImpl<>::Sm90VisitorImpl;

  struct ConsumerStoreCallbacks : fu::detail::EmptyConsumerStoreCallbacks {
    template <class ElementAccumulator, int FragmentSize>
    CUTLASS_DEVICE cutlass::Array<uint8_t, FragmentSize> visit(cutlass::Array<ElementAccumulator, FragmentSize> const&,
                                                               int, int, int,
                                                               cutlass::Array<Bf16, FragmentSize> const& gate_up) {
      // Elements 2j and 2j + 1 of a fragment are adjacent columns of one row (the wgmma accumulator layout,
      // kept by the epilogue's stmatrix-shaped partition); fragments start at even columns.
      static_assert(FragmentSize % 2 == 0, "SwiGLU pairs need an even fragment");
      cutlass::Array<uint8_t, FragmentSize> bytes;
      CUTLASS_PRAGMA_UNROLL
      for (int j = 0; j < FragmentSize / 2; ++j) {
        const float g = static_cast<float>(gate_up[2 * j]), u = static_cast<float>(gate_up[2 * j + 1]);
        const float s = __bfloat162float(__float2bfloat16_rn(g * __frcp_rn(1.f + expf(-g))));
        const uint16_t h = __bfloat16_as_ushort(__float2bfloat16_rn(s * u));
        bytes[2 * j] = static_cast<uint8_t>(h & 0xFF);  // little-endian: low byte at the lower address
        bytes[2 * j + 1] = static_cast<uint8_t>(h >> 8);
      }
      return bytes;
    }
  };

  template <bool ReferenceSrc, class... Args>
  CUTLASS_DEVICE auto get_consumer_store_callbacks(fu::detail::ConsumerStoreArgs<Args...> const&) {
    return ConsumerStoreCallbacks{};
  }
};

// What the epilogue writes: D = bf16 [rows, n], or the bytes of SwiGLU's h (see SwigluPairBytes).
enum class Output { kBf16, kSwigluBytes };

// One kernel configuration. Swap = false: GEMM (M, N) = (rows, n), A = activations (row-major), B = weights.
// Swap = true: GEMM (M, N) = (n, rows), A = weights (row-major [n, k]), B = activations, D column-major.
template <bool Swap, class Tile, class Cluster, class KernelSchedule, class EpilogueSchedule, Output Out = Output::kBf16>
struct Config {
  static constexpr bool kSwap = Swap;
  static_assert(!(Swap && Out == Output::kSwigluBytes), "swapped tiles put gate/up pairs in different threads");
  static constexpr bool kBlockwise = false;  // rowwise scales, applied in the epilogue
  // Tile scheduler and promotion knobs (CUTLASS's defaults; bench/experiments/grouped_gemm_configs.cu sweeps
  // them by shadowing these in a derived struct): clusters walk M first within a group, swizzle 1, promotion
  // into the f32 accumulator every 4 wgmma k-blocks (every 128 of k at a 128-deep k tile).
  static constexpr bool kRasterAlongN = false;
  static constexpr int kSwizzle = 1;
  static constexpr int kPromotionInterval = 4;
  using ElementA = Fp8;
  using ElementB = Fp8;
  using ElementD = cute::conditional_t<Out == Output::kSwigluBytes, uint8_t, Bf16>;
  static constexpr int kAlignD = 128 / cute::sizeof_bits_v<ElementD>;  // 16-byte TMA rows
  using LayoutD = cute::conditional_t<Swap, ColMajor, RowMajor>;
  // Per-row (GEMM M) scale: a column broadcast; per-column (GEMM N) scale: a row broadcast. Alignment 1: an
  // expert's scales start at an arbitrary row.
  using ScaleM = fu::Sm90ColBroadcast<0, Tile, float*, float, Stride<_1, _0, _0>, 1>;
  using ScaleN = fu::Sm90RowBroadcast<0, Tile, float*, float, Stride<_0, _1, _0>, 1>;
  using TimesN = fu::Sm90EVT<fu::Sm90Compute<cutlass::multiplies, float, float, kRound>, fu::Sm90AccFetch, ScaleN>;
  using Scaled = fu::Sm90EVT<fu::Sm90Compute<cutlass::multiplies, Bf16, float, kRound>, ScaleM, TimesN>;
  using Fusion = cute::conditional_t<Out == Output::kSwigluBytes, fu::Sm90EVT<SwigluPairBytes, Scaled>, Scaled>;

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, Cluster, cutlass::epilogue::collective::EpilogueTileAuto,
      float, float, void, LayoutD*, kAlignD, ElementD, LayoutD*, kAlignD, EpilogueSchedule, Fusion>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Fp8, RowMajor*, 16, Fp8, ColMajor*, 16, float, Tile, Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideD = typename Kernel::InternalStrideD;
};

// Promoted (accurate) prefill, two N widths picked by n and rows per expert (prefill_wide below). 128x192: FP8
// promotion keeps a second set of accumulators, so a consumer thread holds 2 x 64x192 / 128 = 192 f32 of them (no
// spills); 128x256 would need 256 and spills. The wider N tile reads less shared memory per MMA than 128x128
// (4-9% faster on gate_up, sweep 2). No cluster: under sustained load the H100 runs these GEMMs at its 700 W
// limit (~1350 MHz), and there the 1x1 tiles did 4-5% more FLOP per joule than a 1x2 cluster multicasting the
// A tile (not profiled; the multicast refills a stage only once both CTAs of the pair have freed it). No cluster
// also never pads n or M (sweep 3, kernels/NOTES.md).
using Prefill = Config<false, Shape<_128, _128, _128>, Shape<_1, _1, _1>,
                       cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative,
                       cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>;
using PrefillWide = Config<false, Shape<_128, _192, _128>, Shape<_1, _1, _1>,
                           cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative,
                           cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>;
// The wide tile when rounding n up to whole 192-column tiles adds under 2% (gate_up's 16384: 0.8%, down's
// 5120: 1.25%) and the experts average more than one 128-row M tile. At one M tile per expert (Maverick at
// T = 16384: 128 rows each, bound by streaming the weights) 128x128 was 2% faster on both projections; at two
// (Scout at T = 4096) 128x192 was 5% faster (sweep 3, kernels/NOTES.md).
constexpr bool prefill_wide(int64_t n, int64_t rows, int64_t experts) {
  return (n + 191) / 192 * 192 * 50 < n * 51 && rows > 128 * experts;
}
// Accumulation inside the tensor cores only (no promotion): half the registers, so 256x128 tiles fit; the
// fastest of six candidates measured (kernels/NOTES.md). Where the experts average at most 128 rows (Maverick at
// T = 16384) a 256-row tile would compute half padding: 128x256 with no cluster instead, 12-15% faster there.
using PrefillFastAccum = Config<false, Shape<_256, _128, _128>, Shape<_1, _2, _1>,
                                cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8FastAccum,
                                cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>;
using PrefillFastAccumShort = Config<false, Shape<_128, _256, _128>, Shape<_1, _1, _1>,
                                     cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8FastAccum,
                                     cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>;
// The wide promoted and the fast-accumulation prefill configurations with the SwiGLU epilogue (weights' gate/up
// rows interleaved; gate_up's n is where the wide tile wins).
using PrefillSwiglu = Config<false, Shape<_128, _192, _128>, Shape<_1, _1, _1>,
                             cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative,
                             cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, Output::kSwigluBytes>;
using PrefillFastAccumSwiglu = Config<false, Shape<_256, _128, _128>, Shape<_1, _2, _1>,
                                      cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8FastAccum,
                                      cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, Output::kSwigluBytes>;
using Decode = Config<true, Shape<_128, _32, _128>, Shape<_1, _1, _1>,
                      cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative,
                      cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>;

// The per-group descriptors, laid out at the front of the workspace; CUTLASS's own workspace follows.
template <class C>
struct Descriptors {
  typename ProblemShape::UnderlyingProblemShape* shapes;
  const Fp8** ptr_a;
  const Fp8** ptr_b;
  typename C::ElementD** ptr_d;
  const float** scale_m;
  const float** scale_n;
  typename C::StrideA* stride_a;
  typename C::StrideB* stride_b;
  typename C::StrideD* stride_d;

  static constexpr size_t round(size_t b) { return (b + 255) / 256 * 256; }
  static size_t bytes(int experts) {
    const size_t e = experts;
    return round(e * sizeof(*shapes)) + 5 * round(e * sizeof(void*)) + round(e * sizeof(*stride_a)) +
           round(e * sizeof(*stride_b)) + round(e * sizeof(*stride_d));
  }
  Descriptors(void* base, int experts) {
    char* p = static_cast<char*>(base);
    auto take = [&](auto*& field, size_t size) {
      field = reinterpret_cast<std::remove_reference_t<decltype(field)>>(p);
      p += round(experts * size);
    };
    take(shapes, sizeof(*shapes));
    take(ptr_a, sizeof(void*));
    take(ptr_b, sizeof(void*));
    take(ptr_d, sizeof(void*));
    take(scale_m, sizeof(void*));
    take(scale_n, sizeof(void*));
    take(stride_a, sizeof(*stride_a));
    take(stride_b, sizeof(*stride_b));
    take(stride_d, sizeof(*stride_d));
  }
};

// A packed 2-D stride: its one dynamic entry is the leading dimension (the other is 1, the batch mode unused).
template <class Stride>
__device__ __forceinline__ Stride packed(int64_t ld) {
  static_assert(is_static_v<remove_cvref_t<decltype(get<2>(Stride{}))>>, "grouped operands have no batch stride");
  Stride s{};
  if constexpr (is_static_v<remove_cvref_t<decltype(get<0>(s))>>) {
    get<1>(s) = ld;
  } else {
    get<0>(s) = ld;
  }
  return s;
}

// One block: validate every expert's row range, then write its descriptors. Any inconsistency (a range outside
// [0, rows), an end before its start, more counted rows than the range holds) zeroes every group's M, so the
// GEMM writes nothing, and raises the caller's flag.
template <class C>
__global__ void setup_kernel(const L4kGroupedGemmParams p, Descriptors<C> g) {
  __shared__ int bad;
  if (threadIdx.x == 0) bad = 0;
  __syncthreads();
  const int n = static_cast<int>(p.n), k = static_cast<int>(p.k);
  for (int e = threadIdx.x; e < p.experts; e += blockDim.x) {
    const int64_t start = p.offsets[e], end = p.offsets[e + 1];
    const int64_t m = p.counts ? p.counts[e] : end - start;
    if (start < 0 || end < start || end > p.rows || m < 0 || m > end - start) bad = 1;
    const Fp8* rows_a = static_cast<const Fp8*>(p.a) + start * p.k;
    const Fp8* weights = static_cast<const Fp8*>(p.b) + static_cast<int64_t>(e) * p.n * p.k;
    const float *sa, *sb;
    if constexpr (C::kBlockwise) {
      // [rows, k / 128] and [experts, n / 128, k / 128] (the launcher checks that 128 divides n and k).
      const int64_t k_groups = p.k / 128;
      sa = p.scale_a + start * k_groups;
      sb = p.scale_b + static_cast<int64_t>(e) * (p.n / 128) * k_groups;
    } else {
      sa = p.scale_a + start;
      sb = p.scale_b + static_cast<int64_t>(e) * p.n;
    }
    g.ptr_d[e] = static_cast<typename C::ElementD*>(p.d) + start * p.n;
    // Every operand is packed with k (A, B) or n (D) as its leading dimension, in both orientations.
    g.stride_a[e] = packed<typename C::StrideA>(p.k);
    g.stride_b[e] = packed<typename C::StrideB>(p.k);
    g.stride_d[e] = packed<typename C::StrideD>(p.n);
    if constexpr (C::kSwap) {
      g.shapes[e] = {n, static_cast<int>(m), k};
      g.ptr_a[e] = weights, g.ptr_b[e] = rows_a;
      g.scale_m[e] = sb, g.scale_n[e] = sa;
    } else {
      g.shapes[e] = {static_cast<int>(m), n, k};
      g.ptr_a[e] = rows_a, g.ptr_b[e] = weights;
      g.scale_m[e] = sa, g.scale_n[e] = sb;
    }
  }
  __syncthreads();
  if (bad) {
    for (int e = threadIdx.x; e < p.experts; e += blockDim.x) get<0>(g.shapes[e]) = get<1>(g.shapes[e]) = 0;
    if (threadIdx.x == 0 && p.bad_offsets) atomicExch(p.bad_offsets, 1u);
  }
}

// The current device's SM count (the persistent grid's size), asked at every call: one process may launch on
// GPUs with different SM counts, and the attribute read is cheap next to a GEMM.
inline cudaError_t sm_count(int* sms) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev);
  return e;
}
// For sizing only: 0 when no device answers (CUTLASS then sizes for the device it finds; the launch reports the
// error).
inline int sm_count() {
  int sms = 0;
  return sm_count(&sms) == cudaSuccess ? sms : 0;
}

template <class C>
typename C::Gemm::Arguments arguments(const L4kGroupedGemmParams& p, const Descriptors<C>& g, int sms) {
  cutlass::KernelHardwareInfo hw;
  cudaGetDevice(&hw.device_id);
  hw.sm_count = sms;
  if constexpr (C::kBlockwise) {
    // Scales are applied in the main loop (per K group), the epilogue only converts. The per-group scale
    // layouts are derived from each group's shape on the device, so no layout arrays are passed.
    return {cutlass::gemm::GemmUniversalMode::kGrouped,
            {p.experts, g.shapes, nullptr},
            {g.ptr_a, g.stride_a, g.ptr_b, g.stride_b, g.scale_m, nullptr, g.scale_n, nullptr},
            {{}, nullptr, nullptr, g.ptr_d, g.stride_d},
            hw};
  } else {
    typename C::Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGrouped,
                                     {p.experts, g.shapes, nullptr},  // shapes live on the device only
                                     {g.ptr_a, g.stride_a, g.ptr_b, g.stride_b},
                                     {{}, nullptr, nullptr, g.ptr_d, g.stride_d},
                                     hw};
    using Raster = cutlass::gemm::kernel::detail::RasterOrderOptions;
    args.scheduler.raster_order = C::kRasterAlongN ? Raster::AlongN : Raster::AlongM;
    args.scheduler.max_swizzle_size = C::kSwizzle;
    if constexpr (C::kPromotionInterval != 4) args.mainloop.mma_promotion_interval = C::kPromotionInterval;
    const typename C::Scaled::Arguments scaled{{g.scale_m, 0.f, {}}, {{}, {g.scale_n, 0.f, {}}, {}}, {}};
    if constexpr (std::is_same_v<typename C::Fusion, typename C::Scaled>) {
      args.epilogue.thread = scaled;
    } else {
      args.epilogue.thread = {scaled, {}};
    }
    return args;
  }
}

template <class C>
size_t workspace_size(int experts) {
  const int sms = sm_count();
  Descriptors<C> g(nullptr, experts);
  L4kGroupedGemmParams p{};
  p.experts = experts;
  return Descriptors<C>::bytes(experts) + C::Gemm::get_workspace_size(arguments<C>(p, g, sms));
}

template <class C>
int run(const L4kGroupedGemmParams& p, cudaStream_t stream) {
  int sms = 0;
  const cudaError_t e = sm_count(&sms);
  if (e != cudaSuccess) return static_cast<int>(e);
  Descriptors<C> g(p.workspace, p.experts);
  const size_t desc = Descriptors<C>::bytes(p.experts);
  auto args = arguments<C>(p, g, sms);
  if (static_cast<size_t>(p.workspace_bytes) < desc + C::Gemm::get_workspace_size(args)) return L4K_STATUS_BAD_WORKSPACE;
  setup_kernel<C><<<1, 256, 0, stream>>>(p, g);
  typename C::Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return L4K_STATUS_GEMM_CANNOT_IMPLEMENT;
  if (gemm.initialize(args, static_cast<char*>(p.workspace) + desc, stream) != cutlass::Status::kSuccess)
    return L4K_STATUS_GEMM_CUTLASS;
  if (gemm.run(stream) != cutlass::Status::kSuccess) return L4K_STATUS_GEMM_CUTLASS;
  return static_cast<int>(cudaGetLastError());
}

}  // namespace l4k::grouped_gemm

// Experiments (bench/experiments/grouped_gemm_configs.cu) include this file for its templates only.
#ifndef L4K_GROUPED_GEMM_TEMPLATES_ONLY
extern "C" size_t l4k_internal_grouped_gemm_workspace_size(int32_t experts) {
  using namespace l4k::grouped_gemm;
  size_t most = 0;
  for (size_t s : {workspace_size<Prefill>(experts), workspace_size<PrefillWide>(experts),
                   workspace_size<PrefillFastAccum>(experts), workspace_size<PrefillFastAccumShort>(experts),
                   workspace_size<Decode>(experts), workspace_size<PrefillSwiglu>(experts),
                   workspace_size<PrefillFastAccumSwiglu>(experts)})
    most = s > most ? s : most;
  return most;
}

extern "C" int l4k_launch_grouped_gemm(const L4kGroupedGemmParams* p, cudaStream_t stream) {
  using namespace l4k::grouped_gemm;
  switch (p->schedule) {
    case L4K_GEMM_DECODE: return run<Decode>(*p, stream);
    case L4K_GEMM_PREFILL_FAST_ACCUM:
      return p->rows > 128 * p->experts ? run<PrefillFastAccum>(*p, stream) : run<PrefillFastAccumShort>(*p, stream);
    default: return prefill_wide(p->n, p->rows, p->experts) ? run<PrefillWide>(*p, stream) : run<Prefill>(*p, stream);
  }
}

// The SwiGLU epilogue: d is h [rows, n / 2] bf16 (n % 16 == 0), b's rows interleaved gate/up (see the top).
// schedule PREFILL_FAST_ACCUM picks the 256x128 fast-accumulation tiles; anything else the promoted 128x192.
extern "C" int l4k_launch_grouped_gemm_swiglu(const L4kGroupedGemmParams* p, cudaStream_t stream) {
  using namespace l4k::grouped_gemm;
  if (p->schedule == L4K_GEMM_PREFILL_FAST_ACCUM) return run<PrefillFastAccumSwiglu>(*p, stream);
  return run<PrefillSwiglu>(*p, stream);
}
#endif  // L4K_GROUPED_GEMM_TEMPLATES_ONLY
