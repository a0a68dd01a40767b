// SwiGLU over the gate/up halves of the gate_up projection, written as bf16 (shared expert, dense MLP) or
// fused with rowwise FP8 quantization (the routed experts' down-projection input).
//
// Rounding as the PyTorch bf16 model: s = bf16(silu(g)) with silu in f32, h = bf16(s * u). The FP8 path then
// quantizes h as quant.cu does; h never leaves registers (packed as bf16: it is bf16-rounded anyway).
// PDL (kernels/pdl.cuh): every thread waits for the previous kernel before its first load.
#include "common.cuh"
#include "pdl.cuh"

namespace l4k {

// g * rcp(1 + e^-g): a correctly rounded reciprocal instead of an IEEE division (this kernel is otherwise
// arithmetic-bound); within an f32 ulp of the reference's g / (1 + e^-g), which bf16 rounding absorbs.
__device__ __forceinline__ float silu(float g) { return g * __frcp_rn(1.f + expf(-g)); }

template <int VEC, int VPT, bool FP8>
__global__ void __launch_bounds__(row_threads_cap<VEC>()) swiglu_kernel(const L4kSwigluParams p) {
  const int64_t row = blockIdx.x;
  const bf16* gate = static_cast<const bf16*>(p.gate_up) + row * 2 * p.inter;
  const bf16* up = gate + p.inter;
  pdl_wait();
  pdl_launch_dependents();

  Pack<VEC> h[VPT];
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
    if (c < p.inter) {
      const Pack<VEC> u = load_pack<VEC>(up + c);
      h[i] = load_pack<VEC>(gate + c);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        h[i].set(j, round_bf16(silu(h[i][j])) * u[j]);
        if constexpr (FP8) amax = fmaxf(amax, fabsf(h[i][j]));
      }
    }
  }

  if constexpr (FP8) {
    const float scale = fmaxf(block_reduce(amax, MaxOp{}, 0.f), kMinAmax) / kE4m3Max;
    if (threadIdx.x == 0) p.scales[row] = scale;
    const float inv = 1.f / scale;
    uint8_t* q = static_cast<uint8_t*>(p.out) + row * p.inter;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
      if (c < p.inter) store_e4m3<VEC>(q + c, h[i], inv);
    }
  } else {
    bf16* out = static_cast<bf16*>(p.out) + row * p.inter;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
      if (c < p.inter) store_pack<VEC>(out + c, h[i]);
    }
  }
}

template <int VEC, bool FP8>
int launch(const L4kSwigluParams& p, cudaStream_t stream) {
  RowShape s;
  if (!row_shape<VEC>(p.inter / VEC, &s)) return L4K_STATUS_TOO_LONG;
  auto kernel = swiglu_kernel<VEC, 16, FP8>;
  switch (s.vpt) {
    case 1: kernel = swiglu_kernel<VEC, 1, FP8>; break;
    case 2: kernel = swiglu_kernel<VEC, 2, FP8>; break;
    case 4: kernel = swiglu_kernel<VEC, 4, FP8>; break;
    case 8: kernel = swiglu_kernel<VEC, 8, FP8>; break;
    default: break;
  }
  const LaunchShape shape{dim3(static_cast<unsigned>(p.tokens)), dim3(s.threads)};
  return launch_result(launch_pdl(kernel, shape, stream, p));
}

}  // namespace l4k

extern "C" int l4k_launch_swiglu(const L4kSwigluParams* p, cudaStream_t stream) {
  using namespace l4k;
  const bool fp8 = p->out_kind == L4K_SWIGLU_FP8;
  // Vector path: rows of both halves and of the output start on 16-byte (bf16) / 8-byte (FP8) boundaries.
  const uintptr_t out_align = fp8 ? 7u : 15u;
  const bool vec = p->inter % 8 == 0 && aligned16(p->gate_up) &&
                   (reinterpret_cast<uintptr_t>(p->out) & out_align) == 0;
  if (vec) return fp8 ? launch<8, true>(*p, stream) : launch<8, false>(*p, stream);
  return fp8 ? launch<1, true>(*p, stream) : launch<1, false>(*p, stream);
}
