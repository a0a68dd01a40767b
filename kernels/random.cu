// Counter-based uniform random bf16: out[i] = bf16(u(seed, first + i) * bound), u in (-1, 1), for synthetic
// weights built on the device (a full-size model without a checkpoint). Element j of a stream is a pure
// function of (seed, j), so a tensor filled in pieces (first = the piece's offset) equals one filled whole, and
// the reference (llama4_reference::random) reproduces every bit: the hash is integer math, the float steps
// are one exact conversion, one exact power-of-two scale and one correctly rounded multiply. PDL
// (kernels/pdl.cuh): nothing is read, but the first store waits for the previous kernel, which may still use out.
#include "common.cuh"
#include "pdl.cuh"

namespace l4k {

constexpr int kRandomThreads = 256;

// splitmix64's output function over the Weyl sequence seed + (j + 1) * golden: a full-period, well-mixed
// stream, cheap enough that the fill stays store bound.
__device__ __forceinline__ float uniform_pm1(uint64_t seed, uint64_t j) {
  uint64_t z = seed + (j + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  // The top 24 bits b give (2b + 1 - 2^24) / 2^24: odd numerators, so never 0 and never +-1, exact in f32.
  const int32_t b = static_cast<int32_t>(z >> 40);
  return static_cast<float>(2 * b + 1 - (1 << 24)) * 0x1p-24f;
}

template <int VEC>
__global__ void __launch_bounds__(kRandomThreads) random_uniform_kernel(const L4kRandomParams p) {
  bf16* __restrict__ out = static_cast<bf16*>(p.out);
  const int64_t groups = (p.n + VEC - 1) / VEC;
  pdl_wait();
  pdl_launch_dependents();
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i0 = g * VEC;
    if (VEC == 8 && i0 + 8 <= p.n) {
      __align__(16) bf16 v[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) v[u] = __float2bfloat16_rn(__fmul_rn(uniform_pm1(p.seed, p.first + i0 + u), p.bound));
      *reinterpret_cast<uint4*>(out + i0) = *reinterpret_cast<const uint4*>(v);
    } else {
      for (int64_t i = i0; i < i0 + VEC && i < p.n; ++i)
        out[i] = __float2bfloat16_rn(__fmul_rn(uniform_pm1(p.seed, p.first + i), p.bound));
    }
  }
}

// A grid-stride loop over a few waves of CTAs: the fill is bound by stores, not by the number of CTAs.
constexpr int64_t kRandomMaxCtas = 132 * 16;

template <int VEC>
int launch_random_uniform(const L4kRandomParams& p, cudaStream_t stream) {
  const int64_t ctas = ((p.n + VEC - 1) / VEC + kRandomThreads - 1) / kRandomThreads;
  const unsigned grid = static_cast<unsigned>(ctas < kRandomMaxCtas ? ctas : kRandomMaxCtas);
  const LaunchShape shape{dim3(grid), dim3(kRandomThreads)};
  return launch_result(launch_pdl(random_uniform_kernel<VEC>, shape, stream, p));
}

}  // namespace l4k

extern "C" int l4k_launch_random_uniform_bf16(const L4kRandomParams* p, cudaStream_t stream) {
  using namespace l4k;
  return aligned16(p->out) ? launch_random_uniform<8>(*p, stream) : launch_random_uniform<1>(*p, stream);
}
