// Rowwise FP8 E4M3 quantization of bf16 rows, and the dequantization tests use to read FP8 back.
//
// scale = max(amax, kMinAmax) / 448 and q = e4m3(x * (1 / scale)): the same bytes as reference/src/fp8.rs, so
// tests compare them exactly. One CTA per row with the row packed in registers between the amax reduction and
// the write. Both kernels wait for the previous kernel (PDL, kernels/pdl.cuh) before their first load.
#include "common.cuh"
#include "pdl.cuh"

namespace l4k {

template <int VEC, int VPT>
__global__ void __launch_bounds__(row_threads_cap<VEC>()) quant_kernel(const L4kQuantParams p) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * p.cols;
  const bf16* x = static_cast<const bf16*>(p.x) + base;
  uint8_t* q = static_cast<uint8_t*>(p.out) + base;
  pdl_wait();
  pdl_launch_dependents();

  Pack<VEC> v[VPT];
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
    if (c < p.cols) {
      v[i] = load_pack<VEC>(x + c);
#pragma unroll
      for (int j = 0; j < VEC; ++j) amax = fmaxf(amax, fabsf(v[i][j]));
    }
  }
  const float scale = fmaxf(block_reduce(amax, MaxOp{}, 0.f), kMinAmax) / kE4m3Max;
  if (threadIdx.x == 0) p.scales[blockIdx.x] = scale;
  const float inv = 1.f / scale;

#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
    if (c < p.cols) store_e4m3<VEC>(q + c, v[i], inv);
  }
}

// Element-parallel: out = e4m3_to_f32(q) * scale[row]. A test utility, so plain and scalar.
__global__ void dequant_kernel(const L4kQuantParams p) {
  const int64_t n = p.rows * p.cols;
  const uint8_t* q = static_cast<const uint8_t*>(p.x);
  float* out = static_cast<float*>(p.out);
  pdl_wait();
  pdl_launch_dependents();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = from_e4m3(q[i]) * p.scales[i / p.cols];
  }
}

template <int VEC>
int launch_quant(const L4kQuantParams& p, cudaStream_t stream) {
  RowShape s;
  if (!row_shape<VEC>(p.cols / VEC, &s)) return L4K_STATUS_TOO_LONG;
  auto kernel = quant_kernel<VEC, 16>;
  switch (s.vpt) {
    case 1: kernel = quant_kernel<VEC, 1>; break;
    case 2: kernel = quant_kernel<VEC, 2>; break;
    case 4: kernel = quant_kernel<VEC, 4>; break;
    case 8: kernel = quant_kernel<VEC, 8>; break;
    default: break;
  }
  const LaunchShape shape{dim3(static_cast<unsigned>(p.rows)), dim3(s.threads)};
  return launch_result(launch_pdl(kernel, shape, stream, p));
}

}  // namespace l4k

extern "C" int l4k_launch_quant_fp8(const L4kQuantParams* p, cudaStream_t stream) {
  using namespace l4k;
  // FP8 rows of cols % 8 == 0 start on 8-byte boundaries: the 8-byte stores of the vector path stay aligned.
  const bool vec = p->cols % 8 == 0 && aligned16(p->x) && (reinterpret_cast<uintptr_t>(p->out) & 7u) == 0;
  return vec ? launch_quant<8>(*p, stream) : launch_quant<1>(*p, stream);
}

extern "C" int l4k_launch_dequant_fp8(const L4kQuantParams* p, cudaStream_t stream) {
  using namespace l4k;
  const int64_t n = p->rows * p->cols;
  const int64_t blocks = (n + 255) / 256;
  const LaunchShape shape{dim3(static_cast<unsigned>(blocks < 65535 * 8 ? blocks : 65535 * 8)), dim3(256)};
  return launch_result(launch_pdl(dequant_kernel, shape, stream, *p));
}
