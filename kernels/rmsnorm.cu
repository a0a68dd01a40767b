// RMSNorm over rows of bf16, optionally fused with the residual add in front of it.
//
// Rounding follows the model contract: n = x * rsqrt(mean(x^2) + eps) in f32, n rounded to bf16, then the bf16
// product n * w rounded again; with the add, residual + x is rounded to bf16 before it is squared, because that
// rounded sum is what the next layer reads.
//
// One CTA per row; the row stays in registers (VPT packs of VEC bf16 per thread) between the sum-of-squares
// reduction and the write (kernels/rmsnorm.cuh, shared with the fused unpermute + norm), so each byte is read
// once. Aliasing is allowed (y == x, residual_out == residual): every element is read and written by the same
// thread, and all reads precede the reduction's barrier. With y_fp8, the normed row's FP8 copy follows from the
// same registers (quant_fp8's bytes of y, for an FP8 linear that reads y: one launch fewer).
//
// PDL (kernels/pdl.cuh): every thread waits for the previous kernel before its first load, then lets the next
// kernel launch.
#include "common.cuh"
#include "pdl.cuh"
#include "rmsnorm.cuh"

namespace l4k {

template <int VEC, int VPT, bool ADD, bool FP8 = false>
__global__ void __launch_bounds__(row_threads_cap<VEC>()) rmsnorm_kernel(const L4kRmsnormParams p) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * p.cols;
  const bf16* x = static_cast<const bf16*>(p.x) + base;
  pdl_wait();
  pdl_launch_dependents();

  Pack<VEC> v[VPT];
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
    if (c < p.cols) {  // VEC divides cols, so a pack is either wholly inside the row or wholly outside
      v[i] = load_pack<VEC>(x + c);
      if constexpr (ADD) {
        const Pack<VEC> r = load_pack<VEC>(static_cast<const bf16*>(p.residual) + base + c);
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[i].set(j, r[j] + v[i][j]);
        store_pack<VEC>(static_cast<bf16*>(p.residual_out) + base + c, v[i]);
      }
    }
  }
  const float inv = row_inv_rms<VEC, VPT>(v, p.cols, p.eps);
  store_normed<VEC, VPT>(v, static_cast<const bf16*>(p.weight), static_cast<bf16*>(p.y) + base, p.cols, inv);
  if constexpr (FP8) store_fp8_copy<VEC, VPT>(v, static_cast<uint8_t*>(p.y_fp8) + base, p.y_scales + blockIdx.x, p.cols);
}

template <int VEC, bool ADD, bool FP8>
int launch(const L4kRmsnormParams& p, cudaStream_t stream) {
  RowShape s;
  if (!row_shape<VEC>(p.cols / VEC, &s)) return L4K_STATUS_TOO_LONG;
  auto kernel = rmsnorm_kernel<VEC, 16, ADD, FP8>;
  switch (s.vpt) {
    case 1: kernel = rmsnorm_kernel<VEC, 1, ADD, FP8>; break;
    case 2: kernel = rmsnorm_kernel<VEC, 2, ADD, FP8>; break;
    case 4: kernel = rmsnorm_kernel<VEC, 4, ADD, FP8>; break;
    case 8: kernel = rmsnorm_kernel<VEC, 8, ADD, FP8>; break;
    default: break;
  }
  const LaunchShape shape{dim3(static_cast<unsigned>(p.rows)), dim3(s.threads)};
  return launch_result(launch_pdl(kernel, shape, stream, p));
}

}  // namespace l4k

extern "C" int l4k_launch_rmsnorm(const L4kRmsnormParams* p, cudaStream_t stream) {
  using namespace l4k;
  const bool add = p->residual != nullptr;
  // 16-byte accesses need every row start aligned: cols a multiple of 8 and 16-byte base pointers.
  // (The FP8 copy has no alignment need: store_fp8_copy writes bytes where its rows are not 8-byte aligned.)
  const bool vec = p->cols % 8 == 0 && aligned16(p->x) && aligned16(p->y) && aligned16(p->weight) &&
                   (!add || (aligned16(p->residual) && aligned16(p->residual_out)));
  const bool fp8 = p->y_fp8 != nullptr;
  if (vec) {
    if (fp8) return add ? launch<8, true, true>(*p, stream) : launch<8, false, true>(*p, stream);
    return add ? launch<8, true, false>(*p, stream) : launch<8, false, false>(*p, stream);
  }
  if (fp8) return add ? launch<1, true, true>(*p, stream) : launch<1, false, true>(*p, stream);
  return add ? launch<1, true, false>(*p, stream) : launch<1, false, false>(*p, stream);
}
