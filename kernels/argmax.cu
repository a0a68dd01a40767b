// Greedy sampling on the device: out[r] = the lowest index of the largest value of logits[r] (torch.argmax), or
// -1 when the row holds a NaN (reference/src/argmax.rs).
//
// Memory bound with few rows: decode samples one row per sequence, and a Llama 4 vocabulary row is 202048 floats
// (790 KiB), more than one SM streams quickly. Long rows are split over a cluster of kArgmaxCluster CTAs (one SM
// each) scanning contiguous slices; each slice's candidate goes to the first CTA's shared memory (distributed
// shared memory), which writes the answer: no workspace, no second kernel, no atomics, capturable in a graph.
// Short rows take one CTA. Every thread keeps kArgmaxUnroll loads (16-byte ones when cols % 4 == 0 and the rows
// are 16-byte aligned) in flight before comparing them.
//
// A thread visits its indices in increasing order and only a strictly larger value replaces its candidate, so
// it keeps the lowest index of its maximum; candidates then reduce as one 64-bit key: the value mapped to an
// unsigned order (larger = better, -0 as +0) above the complemented index (lower = better). NaN never compares
// larger; a flag beside the key turns the row's answer into -1.
//
// PDL (kernels/pdl.cuh): every thread waits for the previous kernel before its first load; the cluster barrier's
// early arrival touches no global memory.
#include <cooperative_groups.h>
#include <type_traits>

#include "common.cuh"
#include "pdl.cuh"

namespace l4k {

namespace cg = cooperative_groups;

constexpr int kArgmaxThreads = 1024;
constexpr int kArgmaxCluster = 8;  // the portable cluster size
constexpr int kArgmaxUnroll = 8;
// Rows at least this long are split over a cluster (each CTA then scans >= 4096 values).
constexpr int64_t kArgmaxClusterMinCols = 32768;

__device__ __forceinline__ uint64_t argmax_key(float v, int idx) {
  if (v == 0.f) v = 0.f;  // -0 ties +0: the index decides
  const uint32_t b = __float_as_uint(v);
  const uint32_t hi = (b & 0x80000000u) ? ~b : (b | 0x80000000u);  // > 0 for every non-NaN value
  return (static_cast<uint64_t>(hi) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(idx));
}

// One thread's candidate. idx < 0: nothing seen yet (the first value is taken even if it is -inf).
struct Best {
  float v = -INFINITY;
  int idx = -1;
  bool nan = false;
  __device__ __forceinline__ void see(float x, int i) {
    nan |= isnan(x);
    if (x > v || (idx < 0 && x == v)) {
      v = x;
      idx = i;
    }
  }
  __device__ __forceinline__ uint64_t key() const { return idx < 0 ? 0 : argmax_key(v, idx); }
};

// Values [beg, end) of `row` (beg, end multiples of VEC), in increasing index order per thread.
template <int VEC>
__device__ __forceinline__ Best scan(const float* row, int64_t beg, int64_t end) {
  using Access = typename std::conditional<VEC == 4, float4, float>::type;
  const Access* src = reinterpret_cast<const Access*>(row + beg);
  const int n = static_cast<int>((end - beg) / VEC);
  const int first = static_cast<int>(beg);
  Best b;
  for (int base = threadIdx.x; base < n; base += kArgmaxUnroll * blockDim.x) {
    Access v[kArgmaxUnroll];
#pragma unroll
    for (int u = 0; u < kArgmaxUnroll; ++u) {
      const int i = base + u * blockDim.x;
      if (i < n) v[u] = __ldg(src + i);
    }
#pragma unroll
    for (int u = 0; u < kArgmaxUnroll; ++u) {
      const int i = base + u * blockDim.x;
      if (i < n) {
        const int at = first + i * VEC;
        if constexpr (VEC == 4) {
          b.see(v[u].x, at);
          b.see(v[u].y, at + 1);
          b.see(v[u].z, at + 2);
          b.see(v[u].w, at + 3);
        } else {
          b.see(v[u], at);
        }
      }
    }
  }
  return b;
}

__device__ __forceinline__ uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }

// The CTA's largest key, valid in thread 0.
__device__ __forceinline__ uint64_t block_max_key(uint64_t k) {
  __shared__ uint64_t warp_best[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) k = max_u64(k, __shfl_xor_sync(0xffffffffu, k, o));
  if (lane == 0) warp_best[warp] = k;
  __syncthreads();
  if (warp == 0) {
    k = lane < warps ? warp_best[lane] : 0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) k = max_u64(k, __shfl_xor_sync(0xffffffffu, k, o));
  }
  return k;
}

__device__ __forceinline__ int key_index(uint64_t k) {
  return static_cast<int>(0xFFFFFFFFu - static_cast<uint32_t>(k));
}

template <int VEC, bool CLUSTER>
__global__ void __launch_bounds__(kArgmaxThreads) argmax_kernel(const L4kArgmaxParams p) {
  constexpr int parts = CLUSTER ? kArgmaxCluster : 1;
  __shared__ uint64_t part_key[kArgmaxCluster];  // filled in the cluster's first CTA
  __shared__ int part_nan[kArgmaxCluster];
  if constexpr (CLUSTER) {
    // Another CTA's shared memory may only be written once that CTA runs: arrive now, wait before writing.
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
  }
  pdl_wait();
  pdl_launch_dependents();
  const int part = CLUSTER ? static_cast<int>(blockIdx.x % kArgmaxCluster) : 0;
  const int64_t row = blockIdx.x / parts;
  // Slices of whole VEC-wide accesses (cols % VEC == 0 on the vector path): the last one may be short or empty.
  const int64_t chunk = ((p.cols + parts - 1) / parts + VEC - 1) / VEC * VEC;
  const int64_t beg = min(p.cols, part * chunk), end = min(p.cols, beg + chunk);
  const Best b = scan<VEC>(p.logits + row * p.cols, beg, end);
  const int nan = __syncthreads_or(b.nan);
  const uint64_t key = block_max_key(b.key());
  if constexpr (CLUSTER) {
    cg::cluster_group cluster = cg::this_cluster();
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
    if (threadIdx.x == 0) {
      *cluster.map_shared_rank(&part_key[part], 0) = key;
      *cluster.map_shared_rank(&part_nan[part], 0) = nan;
    }
    cluster.sync();  // release / acquire: the first CTA sees every slot; no CTA exits while one is written
    if (part == 0 && threadIdx.x == 0) {
      uint64_t best = 0;
      int any_nan = 0;
#pragma unroll
      for (int i = 0; i < kArgmaxCluster; ++i) {
        best = max_u64(best, part_key[i]);
        any_nan |= part_nan[i];
      }
      p.out[row] = any_nan ? -1 : key_index(best);
    }
  } else if (threadIdx.x == 0) {
    p.out[row] = nan ? -1 : key_index(key);
  }
}

template <int VEC, bool CLUSTER>
int launch_argmax(const L4kArgmaxParams& p, cudaStream_t stream) {
  constexpr int parts = CLUSTER ? kArgmaxCluster : 1;
  // Threads for one step over a slice (fewer idle lanes on short rows), at most kArgmaxThreads.
  const int64_t accesses = (p.cols + parts - 1) / parts / VEC + 1;
  const int64_t steps = (accesses + kArgmaxUnroll - 1) / kArgmaxUnroll;
  const int threads = static_cast<int>(steps >= kArgmaxThreads ? kArgmaxThreads : (steps + 31) / 32 * 32);
  LaunchShape shape{dim3(static_cast<unsigned>(p.rows * parts)), dim3(threads)};
  shape.cluster_x = parts;
  return launch_result(launch_pdl(argmax_kernel<VEC, CLUSTER>, shape, stream, p));
}

}  // namespace l4k

extern "C" int l4k_launch_argmax(const L4kArgmaxParams* p, cudaStream_t stream) {
  using namespace l4k;
  const bool vec = p->cols % 4 == 0 && aligned16(p->logits);
  // The cluster grid is rows * kArgmaxCluster CTAs: past the grid limit (never for real batches) one CTA a row.
  const bool cluster = p->cols >= kArgmaxClusterMinCols && p->rows <= INT32_MAX / kArgmaxCluster;
  if (vec) return cluster ? launch_argmax<4, true>(*p, stream) : launch_argmax<4, false>(*p, stream);
  return cluster ? launch_argmax<1, true>(*p, stream) : launch_argmax<1, false>(*p, stream);
}
