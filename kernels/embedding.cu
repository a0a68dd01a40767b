// Row gather: out[t] = table[ids[t]], the token embedding or a gather of activation rows (each sequence's last
// token before lm_head). A copy, so memory bound: one CTA per output row, every load of a step issued before
// its stores (the loop body would otherwise wait on each load before the next), 16-byte accesses when rows
// allow (hidden % 8 == 0, 16-byte aligned pointers), 2-byte ones otherwise. The id is checked on the device:
// one outside [0, rows) reads nothing, writes a zero row and is counted in bad_ids. PDL (kernels/pdl.cuh): every
// thread waits for the previous kernel before it reads the id.
#include <type_traits>

#include "common.cuh"
#include "pdl.cuh"

namespace l4k {

constexpr int kEmbedThreads = 256;
constexpr int kEmbedUnroll = 4;  // accesses in flight per thread per step

template <int VEC>
__global__ void __launch_bounds__(kEmbedThreads) embedding_kernel(const L4kEmbeddingParams p) {
  // A 16-byte access is 8 bf16; a scalar one moves the bf16 as its bit pattern (nothing is converted).
  using Access = typename std::conditional<VEC == 8, uint4, unsigned short>::type;
  const int64_t t = blockIdx.x;
  pdl_wait();
  pdl_launch_dependents();
  const int32_t id = p.ids[t];
  const int64_t n = p.hidden / VEC;
  Access* __restrict__ out = reinterpret_cast<Access*>(static_cast<bf16*>(p.out) + t * p.hidden);
  if (id < 0 || id >= p.rows) {
    if (threadIdx.x == 0 && p.bad_ids != nullptr) atomicAdd(p.bad_ids, 1u);
    const Access zero{};
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) out[i] = zero;
    return;
  }
  const Access* __restrict__ src =
      reinterpret_cast<const Access*>(static_cast<const bf16*>(p.table) + static_cast<int64_t>(id) * p.hidden);
  for (int64_t base = threadIdx.x; base < n; base += static_cast<int64_t>(kEmbedUnroll) * blockDim.x) {
    Access v[kEmbedUnroll];
#pragma unroll
    for (int u = 0; u < kEmbedUnroll; ++u) {
      const int64_t i = base + static_cast<int64_t>(u) * blockDim.x;
      if (i < n) v[u] = __ldg(src + i);
    }
#pragma unroll
    for (int u = 0; u < kEmbedUnroll; ++u) {
      const int64_t i = base + static_cast<int64_t>(u) * blockDim.x;
      if (i < n) out[i] = v[u];
    }
  }
}

template <int VEC>
int launch_embedding(const L4kEmbeddingParams& p, cudaStream_t stream) {
  // Enough threads for one step to cover the row (fewer idle lanes on short rows), at most kEmbedThreads.
  const int64_t steps = (p.hidden / VEC + kEmbedUnroll - 1) / kEmbedUnroll;
  const int threads = static_cast<int>(steps >= kEmbedThreads ? kEmbedThreads : (steps + 31) / 32 * 32);
  const LaunchShape shape{dim3(static_cast<unsigned>(p.tokens)), dim3(threads)};
  return launch_result(launch_pdl(embedding_kernel<VEC>, shape, stream, p));
}

}  // namespace l4k

extern "C" int l4k_launch_embedding(const L4kEmbeddingParams* p, cudaStream_t stream) {
  using namespace l4k;
  const bool vec = p->hidden % 8 == 0 && aligned16(p->table) && aligned16(p->out);
  return vec ? launch_embedding<8>(*p, stream) : launch_embedding<1>(*p, stream);
}
