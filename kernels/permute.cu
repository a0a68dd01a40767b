// Moving token rows into and out of the expert-sorted layout of kernels/router.cu (reference/src/permute.rs).
//
// Layout consumed by the FP8 grouped GEMM: rows [offsets[e], offsets[e + 1]) of the permuted buffer belong to
// expert e; its first counts[e] rows are (token, choice) pairs in token order, the rest padding up to a
// multiple of align. Row dest[t * k + c] holds token t's activation for choice c. FP8 rows carry one f32
// scale each (scales[row], rowwise recipe of kernels/quant.cu). Padding rows are written as the quantization
// of a zero row: bytes 0 and scale 1e-12 / 448 (bf16 output: zeros), so a GEMM may run over whole tiles and
// the padded rows contribute exactly zero. Rows at and past offsets[E] are never touched.
//
// permute: one CTA per token, the token's row read once into registers (packed bf16) and written k times,
// each time scaled by its routing weight (bf16(x * w), the model's rounding), then stored as bf16 or quantized
// with the scale derived from the row's single amax reduction. Reading once per token instead of once per (token, choice) saves
// (k - 1) row reads for top-k models. Extra CTAs past the tokens zero the padding rows: E * (align - 1) of
// them, one per possible padding row, each finding its row from counts/offsets on the device.
//
// unpermute: one CTA per token, the row in VPT packs per thread: out[t] = bf16(sum_c (w[t, c] *) y[dest[t, c]] (+ shared[t])), summed in f32 in
// choice order with the shared row last and one rounding (products and sums rounded separately, never fused
// into an FMA, as the reference computes them). unpermute_add_rmsnorm: the same row fed into the decoder's next
// residual add and norm in the same CTA (the general kernel's NORM variant, below).
//
// Every destination is bounds-checked against the buffer's row count: a corrupted or -1 destination is
// skipped (permute) or contributes nothing (unpermute), never an out-of-bounds access. Row offsets are int64.
//
// PDL (kernels/pdl.cuh): every thread of every kernel here, the padding CTAs included, waits for the previous
// kernel (the router, the expert GEMM) before its first global access.
#include "common.cuh"
#include "pdl.cuh"
#include "permute.cuh"
#include "rmsnorm.cuh"

namespace l4k {

template <int VEC>
__device__ __forceinline__ void store_zero_bf16(bf16* p) {
  Pack<VEC> z;
#pragma unroll
  for (int j = 0; j < VEC; ++j) z.h[j] = __float2bfloat16(0.f);
  store_pack<VEC>(p, z);
}

// Padding row j of the E * (align - 1) candidates: slot j % (align - 1) past expert e's real rows.
template <int VEC, bool FP8>
__device__ void zero_padding_row(const L4kPermuteParams& p, int64_t j) {
  const int64_t slots = p.align - 1;
  const int64_t e = j / slots;
  if (e >= p.experts) return;
  const int64_t row = static_cast<int64_t>(p.offsets[e]) + p.counts[e] + j % slots;
  if (row >= p.offsets[e + 1] || row < 0 || row >= p.rows) return;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * VEC; c < p.hidden; c += static_cast<int64_t>(blockDim.x) * VEC) {
    if constexpr (FP8) {
      uint8_t* q = static_cast<uint8_t*>(p.out) + row * p.hidden + c;
      if constexpr (VEC == 8) {
        *reinterpret_cast<uint2*>(q) = make_uint2(0u, 0u);
      } else {
        *q = 0;
      }
    } else {
      store_zero_bf16<VEC>(static_cast<bf16*>(p.out) + row * p.hidden + c);
    }
  }
  if (FP8 && threadIdx.x == 0) p.scales[row] = kMinAmax / kE4m3Max;
}

// Registers decide how many token rows an SM holds in flight. Left alone, ptxas gives the FP8 kernel 64 per
// thread (6 CTAs of 160 threads per SM at H = 5120); the bound below asks for 48 (8 CTAs), what quant gets.
template <int VEC, int VPT, bool FP8>
constexpr int permute_min_blocks() { return FP8 && VEC == 8 && VPT <= 4 ? 5 : 1; }

template <int VEC, int VPT, bool FP8>
__global__ void __launch_bounds__(row_threads_cap<VEC>(), permute_min_blocks<VEC, VPT, FP8>()) permute_kernel(const L4kPermuteParams p) {
  pdl_wait();
  pdl_launch_dependents();
  if (blockIdx.x >= p.tokens) {
    zero_padding_row<VEC, FP8>(p, blockIdx.x - p.tokens);
    return;
  }
  const int64_t t = blockIdx.x;
  // Destinations and weights are read before the row, so their latency hides under the row's loads instead
  // of following the amax reduction's barrier.
  __shared__ int64_t rows_s[L4K_ROUTER_MAX_TOP_K];
  __shared__ float w_s[L4K_ROUTER_MAX_TOP_K];
  if (threadIdx.x < p.k) {
    rows_s[threadIdx.x] = p.dest[t * p.k + threadIdx.x];
    w_s[threadIdx.x] = p.weights != nullptr ? p.weights[t * p.k + threadIdx.x] : 1.f;
  }
  const bf16* x = static_cast<const bf16*>(p.x) + t * p.hidden;
  Pack<VEC> v[VPT];
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
    if (c < p.hidden) v[i] = load_pack<VEC>(x + c);
  }
  const float amax = row_amax_and_sync<VEC, VPT, FP8>(v, p.hidden);
  write_choices<VEC, VPT, FP8>(p, v, amax, rows_s, w_s);
}

template <int VEC, bool FP8>
int launch_permute(const L4kPermuteParams& p, cudaStream_t stream) {
  RowShape s;
  if (!row_shape<VEC>(p.hidden / VEC, &s)) return L4K_STATUS_TOO_LONG;
  const int64_t pad_blocks = p.align > 1 ? static_cast<int64_t>(p.experts) * (p.align - 1) : 0;
  auto kernel = permute_kernel<VEC, 16, FP8>;
  switch (s.vpt) {
    case 1: kernel = permute_kernel<VEC, 1, FP8>; break;
    case 2: kernel = permute_kernel<VEC, 2, FP8>; break;
    case 4: kernel = permute_kernel<VEC, 4, FP8>; break;
    case 8: kernel = permute_kernel<VEC, 8, FP8>; break;
    default: break;
  }
  const LaunchShape shape{dim3(static_cast<unsigned>(p.tokens + pad_blocks)), dim3(s.threads)};
  return launch_result(launch_pdl(kernel, shape, stream, p));
}

// The fused norm's operands (L4kUnpermuteNormParams past the unpermute's own).
struct NormTail {
  bf16* residual;
  const bf16* weight;
  bf16* y;
  float eps;
  uint8_t* y_fp8;  // y's FP8 copy and its scales, or null
  float* y_scales;
};

// One CTA per token, the row split into VPT packs per thread (row_shape): the shared row and every source's
// VPT packs are loaded before they are summed, so a thread keeps 2 * VPT loads in flight for top-1 models
// (a column loop with one pack per source in flight reached 63% of the copy ceiling).
// NORM: the unpermuted row f is not stored; residual = bf16(residual + f) and y = rmsnorm(residual) * weight
// follow in the same CTA through kernels/rmsnorm.cuh, on rmsnorm.cu's launch shape (row_shape), so the bits are
// those of the two kernels one after the other; with y_fp8, y's FP8 copy too (rmsnorm.cu's).
template <int VEC, int VPT, bool NORM, bool FP8 = false>
__global__ void __launch_bounds__(row_threads_cap<VEC>()) unpermute_kernel(const L4kUnpermuteParams p,
                                                                           const NormTail n) {
  __shared__ int64_t src[L4K_ROUTER_MAX_TOP_K];
  __shared__ float wt[L4K_ROUTER_MAX_TOP_K];
  const int64_t t = blockIdx.x;
  pdl_wait();
  pdl_launch_dependents();
  if (threadIdx.x < p.k) {
    const int64_t d = p.dest[t * p.k + threadIdx.x];
    src[threadIdx.x] = d >= 0 && d < p.rows ? d : -1;
    wt[threadIdx.x] = p.weights != nullptr ? p.weights[t * p.k + threadIdx.x] : 1.f;
  }
  const bf16* y = static_cast<const bf16*>(p.expert_out);
  const bf16* shared = static_cast<const bf16*>(p.shared);
  Pack<VEC> sh[VPT], res[VPT];
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
    if (c < p.hidden) {
      if (shared != nullptr) sh[i] = load_pack<VEC>(shared + t * p.hidden + c);
      if constexpr (NORM) res[i] = load_pack<VEC>(n.residual + t * p.hidden + c);
    }
  }
  __syncthreads();
  float acc[VPT][VEC];
#pragma unroll
  for (int i = 0; i < VPT; ++i)
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[i][j] = 0.f;
  for (int s = 0; s < p.k; ++s) {
    if (src[s] < 0) continue;  // uniform across the CTA
    const bf16* row = y + src[s] * p.hidden;
    Pack<VEC> r[VPT];
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
      if (c < p.hidden) r[i] = load_pack<VEC>(row + c);
    }
    const float w = wt[s];
#pragma unroll
    for (int i = 0; i < VPT; ++i)
#pragma unroll
      for (int j = 0; j < VEC; ++j)
        acc[i][j] = __fadd_rn(acc[i][j], p.weights != nullptr ? __fmul_rn(w, r[i][j]) : r[i][j]);
  }
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
    if (c < p.hidden) {
      Pack<VEC> o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.set(j, shared != nullptr ? __fadd_rn(acc[i][j], sh[i][j]) : acc[i][j]);
      if constexpr (NORM) {
        // rmsnorm's add: residual + x rounded to bf16, x the unpermuted row.
#pragma unroll
        for (int j = 0; j < VEC; ++j) res[i].set(j, res[i][j] + o[j]);
        store_pack<VEC>(n.residual + t * p.hidden + c, res[i]);
      } else {
        store_pack<VEC>(static_cast<bf16*>(p.out) + t * p.hidden + c, o);
      }
    }
  }
  if constexpr (NORM) {
    const float inv = row_inv_rms<VEC, VPT>(res, p.hidden, n.eps);
    store_normed<VEC, VPT>(res, n.weight, n.y + t * p.hidden, p.hidden, inv);
    if constexpr (FP8) store_fp8_copy<VEC, VPT>(res, n.y_fp8 + t * p.hidden, n.y_scales + t, p.hidden);
  }
}

// Top-1 unpermute (k == 1, every Llama 4 checkpoint): out[t] = bf16((0 + (w *) y[dest[t]]) + shared[t]), the
// general kernel's sum with one source, without its f32 accumulators: fewer registers, so more CTAs and more
// loads in flight (launch shape: launch_unpermute). Every thread reads the destination itself (one
// broadcast load) instead of waiting for it behind a barrier, with the shared row's loads already in flight.
template <int VPT, int MAX_THREADS>
__global__ void __launch_bounds__(MAX_THREADS) unpermute_top1_kernel(const L4kUnpermuteParams p) {
  const int64_t t = blockIdx.x;
  const bf16* shared = static_cast<const bf16*>(p.shared);
  pdl_wait();
  pdl_launch_dependents();
  Pack<8> sh[VPT];
  if (shared != nullptr) {
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * 8;
      if (c < p.hidden) sh[i] = load_pack<8>(shared + t * p.hidden + c);
    }
  }
  const int64_t d = p.dest[t];
  const bool ok = d >= 0 && d < p.rows;  // uniform across the CTA
  const float w = p.weights != nullptr ? p.weights[t] : 1.f;
  Pack<8> r[VPT];
  if (ok) {
    const bf16* row = static_cast<const bf16*>(p.expert_out) + d * p.hidden;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * 8;
      if (c < p.hidden) r[i] = load_pack<8>(row + c);
    }
  }
  bf16* out = static_cast<bf16*>(p.out) + t * p.hidden;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * 8;
    if (c < p.hidden) {
      Pack<8> o;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        // 0 + x, not x: the general kernel's sum starts at +0, which turns a -0 product into +0.
        const float acc = ok ? __fadd_rn(0.f, p.weights != nullptr ? __fmul_rn(w, r[i][j]) : r[i][j]) : 0.f;
        o.set(j, shared != nullptr ? __fadd_rn(acc, sh[i][j]) : acc);
      }
      store_pack<8>(out + c, o);
    }
  }
}


// The general kernel at its VPT (rmsnorm.cu's switch: the same shapes).
template <int VEC, bool NORM, bool FP8 = false>
cudaError_t launch_general(const L4kUnpermuteParams& p, const NormTail& n, const RowShape& s, cudaStream_t stream) {
  auto kernel = unpermute_kernel<VEC, 16, NORM, FP8>;
  switch (s.vpt) {
    case 1: kernel = unpermute_kernel<VEC, 1, NORM, FP8>; break;
    case 2: kernel = unpermute_kernel<VEC, 2, NORM, FP8>; break;
    case 4: kernel = unpermute_kernel<VEC, 4, NORM, FP8>; break;
    case 8: kernel = unpermute_kernel<VEC, 8, NORM, FP8>; break;
    default: break;
  }
  return launch_pdl(kernel, LaunchShape{dim3(static_cast<unsigned>(p.tokens)), dim3(s.threads)}, stream, p, n);
}

constexpr int kTop1Threads = 320;

template <int VEC>
int launch_unpermute(const L4kUnpermuteParams& p, cudaStream_t stream) {
  RowShape s;
  if (!row_shape<VEC>(p.hidden / VEC, &s)) return L4K_STATUS_TOO_LONG;
  const dim3 grid(static_cast<unsigned>(p.tokens));
  if (VEC == 8 && p.k == 1) {
    // Up to 320 threads of 2 packs for Scout's 5120 columns: with no accumulators the registers of 2 packs fit
    // 4 CTAs of 320 threads per SM, twice the row bytes in flight of 4 packs x 160 (kernels/NOTES.md, v3).
    int vpt = 1;
    // row_shape refused rows over 256 threads x 16 packs: 320 threads never need more than 16.
    while (int64_t(vpt) * kTop1Threads < p.hidden / 8) vpt *= 2;
    const int64_t threads = (p.hidden / 8 + vpt - 1) / vpt;
    auto top1 = unpermute_top1_kernel<16, kTop1Threads>;
    switch (vpt) {
      case 1: top1 = unpermute_top1_kernel<1, kTop1Threads>; break;
      case 2: top1 = unpermute_top1_kernel<2, kTop1Threads>; break;
      case 4: top1 = unpermute_top1_kernel<4, kTop1Threads>; break;
      case 8: top1 = unpermute_top1_kernel<8, kTop1Threads>; break;
      default: break;
    }
    const LaunchShape shape{grid, dim3(static_cast<unsigned>((threads + 31) / 32 * 32))};
    return launch_result(launch_pdl(top1, shape, stream, p));
  }
  return launch_result(launch_general<VEC, false>(p, NormTail{}, s, stream));
}

template <int VEC>
int launch_unpermute_norm(const L4kUnpermuteNormParams& q, cudaStream_t stream) {
  RowShape s;
  if (!row_shape<VEC>(q.hidden / VEC, &s)) return L4K_STATUS_TOO_LONG;
  const L4kUnpermuteParams p{q.expert_out, q.weights, q.dest, q.shared, nullptr, q.tokens, q.hidden, q.rows, q.k, 0};
  const NormTail n{static_cast<bf16*>(q.residual), static_cast<const bf16*>(q.weight), static_cast<bf16*>(q.y),
                   q.eps, static_cast<uint8_t*>(q.y_fp8), q.y_scales};
  if (q.y_fp8 != nullptr) return launch_result(launch_general<VEC, true, true>(p, n, s, stream));
  return launch_result(launch_general<VEC, true>(p, n, s, stream));
}

}  // namespace l4k

extern "C" int l4k_launch_permute(const L4kPermuteParams* p, cudaStream_t stream) {
  using namespace l4k;
  const bool fp8 = p->out_kind == L4K_PERMUTE_FP8;
  // Vector path: every row starts on a 16-byte (bf16 in and out) or 8-byte (FP8 out) boundary.
  const uintptr_t out_align = fp8 ? 7u : 15u;
  const bool vec = p->hidden % 8 == 0 && aligned16(p->x) && (reinterpret_cast<uintptr_t>(p->out) & out_align) == 0;
  if (vec) return fp8 ? launch_permute<8, true>(*p, stream) : launch_permute<8, false>(*p, stream);
  return fp8 ? launch_permute<1, true>(*p, stream) : launch_permute<1, false>(*p, stream);
}

extern "C" int l4k_launch_unpermute(const L4kUnpermuteParams* p, cudaStream_t stream) {
  using namespace l4k;
  const bool vec = p->hidden % 8 == 0 && aligned16(p->expert_out) && aligned16(p->out) &&
                   (p->shared == nullptr || aligned16(p->shared));
  return vec ? launch_unpermute<8>(*p, stream) : launch_unpermute<1>(*p, stream);
}

// The vector path needs every row start 16-byte aligned, as l4k_launch_rmsnorm's (the FP8 copy needs none).
extern "C" int l4k_launch_unpermute_add_rmsnorm(const L4kUnpermuteNormParams* p, cudaStream_t stream) {
  using namespace l4k;
  const bool vec = p->hidden % 8 == 0 && aligned16(p->expert_out) && aligned16(p->residual) && aligned16(p->weight) &&
                   aligned16(p->y) && (p->shared == nullptr || aligned16(p->shared));
  return vec ? launch_unpermute_norm<8>(*p, stream) : launch_unpermute_norm<1>(*p, stream);
}
