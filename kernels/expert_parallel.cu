// Expert parallelism: the device half of dispatch and combine (ops/expert_parallel.rs drives them around the
// NCCL exchange; reference/src/expert_parallel.rs is the oracle; the design and its byte counts are in
// kernels/NOTES.md, "Expert parallelism over NCCL (issue 17)"). Slab layout: expert_parallel_params.h.
//
// Nothing here reads a count on the host: every transfer has a fixed size (capacity rows per destination) and the
// real counts travel in each slab's header, so the whole exchange can be captured in a CUDA graph.
//
//   pack          one warp per (token, choice): its FP8 row and scale into the slab of the rank owning its
//                 expert, at position (pairs of the destination's earlier experts) + (its rank within its expert,
//                 dest - offsets[e], from the router's stable layout), so every slab is expert-major and then in
//                 (token, choice) order, deterministic. CTA 0 writes every slab's header (per-expert counts,
//                 clamped to what fits the capacity). slot[t, c] remembers dst * capacity + position for combine.
//   unpack        a 1-CTA layout kernel reads the N headers received and writes the grouped layout (counts,
//                 padded offsets over the L local experts: rows ordered by (local expert, source rank, position))
//                 and a per-source table; then one warp per received slot copies its row into place, and one warp
//                 per possible padding row (L * (align - 1) of them) zeroes it as permute does.
//   combine pack  one warp per received slot: the expert output row (bf16) back to the slot's position in the
//                 slab for its source rank. The final add is l4k_launch_unpermute over the received slabs
//                 ([world * capacity, hidden] bf16) with slot as its dest: one definition of that sum.
//
// Validation (never an out-of-bounds access, never a silent drop): an expert id outside [0, E), a dest that is
// not inside its expert's block, a row past rows_in, more pairs for one destination than the capacity, a header
// whose counts are negative or sum past the capacity: the pair (or the source's slab) is left out, a bit of
// status[0] says why, status[1] counts the pairs not sent and status[3] the rows ignored on receipt; status[2]
// keeps the largest demand of one destination seen (the capacity that would have sufficed). Sticky: the host
// reads and clears it when it asks (l4k_ep_status).
#include "common.cuh"
#include "expert_parallel_params.h"
#include "pdl.cuh"

namespace l4k {
namespace ep {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxExperts = L4K_ROUTER_MAX_EXPERTS;
static_assert(kMaxExperts <= kThreads, "the layout kernels hold one expert per thread");
static_assert(L4K_EP_MAX_RANKS <= kThreads, "the layout kernel holds one source rank per thread");

__device__ __forceinline__ void raise(const L4kExpertParallelParams& p, uint32_t bits) {
  atomicOr(&p.status[0], bits);
}

// One warp copies n bytes: 16-byte accesses, four in flight per lane, when both ends and n allow it.
__device__ __forceinline__ void warp_copy(void* dst, const void* src, int64_t n, int lane) {
  if (((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) | static_cast<uintptr_t>(n)) & 15) == 0) {
    const uint4* s = static_cast<const uint4*>(src);
    uint4* d = static_cast<uint4*>(dst);
    const int64_t m = n / 16;
    int64_t i = lane;
    for (; i + 96 < m; i += 128) {
      const uint4 a = s[i], b = s[i + 32], c = s[i + 64], e = s[i + 96];
      d[i] = a, d[i + 32] = b, d[i + 64] = c, d[i + 96] = e;
    }
    for (; i < m; i += 32) d[i] = s[i];
  } else {
    const uint8_t* s = static_cast<const uint8_t*>(src);
    uint8_t* d = static_cast<uint8_t*>(dst);
    for (int64_t i = lane; i < n; i += 32) d[i] = s[i];
  }
}

__device__ __forceinline__ void warp_zero(void* dst, int64_t n, int lane) {
  if (((reinterpret_cast<uintptr_t>(dst) | static_cast<uintptr_t>(n)) & 15) == 0) {
    uint4* d = static_cast<uint4*>(dst);
    for (int64_t i = lane; i < n / 16; i += 32) d[i] = make_uint4(0u, 0u, 0u, 0u);
  } else {
    uint8_t* d = static_cast<uint8_t*>(dst);
    for (int64_t i = lane; i < n; i += 32) d[i] = 0;
  }
}

__device__ __forceinline__ uint8_t* slab_of(const L4kExpertParallelParams& p, int d) {
  return static_cast<uint8_t*>(p.send) + static_cast<int64_t>(d) * p.slab_bytes;
}

__global__ void __launch_bounds__(kThreads) pack_kernel(const L4kExpertParallelParams p) {
  pdl_wait();  // PDL (kernels/pdl.cuh): before any global access or exit
  pdl_launch_dependents();
  // before[e]: the pairs of the experts that precede e on e's destination rank (int64: counts are caller memory).
  __shared__ int64_t before[kMaxExperts];
  __shared__ int64_t scanned[kMaxExperts];
  const int E = p.experts, L = E / p.world_size;
  const int64_t C = p.capacity;
  const int e0 = threadIdx.x;
  // T = 0: the router writes nothing, so counts are not read; every header still goes out (all zero).
  const int64_t count = e0 < E && p.tokens > 0 ? static_cast<int64_t>(p.counts[e0]) : 0;
  const int64_t mine = count < 0 ? 0 : count;
  int64_t total;
  const int64_t excl = block_exclusive_scan<kWarps>(mine, &total);
  if (e0 < E) scanned[e0] = excl;
  __syncthreads();
  if (e0 < E) before[e0] = excl - scanned[e0 - e0 % L];
  __syncthreads();
  if (blockIdx.x == 0 && e0 < E) {
    const int d = e0 / L, l = e0 % L;
    if (count < 0) raise(p, L4K_EP_BAD_ROUTING);
    const int64_t room = C - before[e0];
    const int64_t kept = room <= 0 ? 0 : (mine < room ? mine : room);
    reinterpret_cast<int32_t*>(slab_of(p, d))[l] = static_cast<int32_t>(kept);
    if (l == L - 1) {
      const int64_t demand = before[e0] + mine;
      atomicMax(&p.status[2], static_cast<uint32_t>(demand < 0xFFFFFFFFll ? demand : 0xFFFFFFFFll));
    }
  }
  const int lane = threadIdx.x & 31;
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (pair >= p.tokens * p.k) return;
  const int e = p.ids[pair];
  uint32_t bad = 0;
  int64_t row = -1, pos = -1;
  if (e < 0 || e >= E) {
    bad = L4K_EP_BAD_EXPERT;
  } else {
    const int64_t i = static_cast<int64_t>(p.dest[pair]) - p.offsets[e];
    row = p.rows_by == L4K_EP_ROWS_TOKENS ? pair / p.k : p.dest[pair];
    if (i < 0 || i >= p.counts[e] || row < 0 || row >= p.rows_in) {
      bad = L4K_EP_BAD_ROUTING;
    } else {
      pos = before[e] + i;
      if (pos >= C) bad = L4K_EP_OVERFLOW;
    }
  }
  if (bad != 0) {  // uniform across the warp
    if (lane == 0) {
      p.slot[pair] = -1;
      raise(p, bad);
      atomicAdd(&p.status[1], 1u);
    }
    return;
  }
  const int d = e / L;
  uint8_t* slab = slab_of(p, d);
  warp_copy(slab + p.rows_off + pos * p.hidden, static_cast<const uint8_t*>(p.rows) + row * p.hidden, p.hidden, lane);
  if (lane == 0) {
    reinterpret_cast<float*>(slab + p.scales_off)[pos] = p.row_scales[row];
    p.slot[pair] = static_cast<int32_t>(d * C + pos);
  }
}

// Table (workspace): prefix[s][l] at table[s * (L + 1) + l] (prefix[s][L] = source s's rows), then
// base[s][l] at table[N * (L + 1) + s * L + l]: the grouped row of source s's first row of local expert l.
__global__ void __launch_bounds__(kThreads) unpack_layout_kernel(const L4kExpertParallelParams p) {
  pdl_wait();  // PDL (kernels/pdl.cuh): before any global access or exit
  pdl_launch_dependents();
  __shared__ int32_t c[kMaxExperts];  // [N, L] received header counts, source-major
  __shared__ int32_t bad_src[L4K_EP_MAX_RANKS];
  const int N = p.world_size, L = p.experts / N, tid = threadIdx.x;
  const int64_t C = p.capacity;
  const uint8_t* recv = static_cast<const uint8_t*>(p.recv);
  if (tid < N) bad_src[tid] = 0;
  __syncthreads();
  int32_t v = 0;
  if (tid < N * L) {
    v = reinterpret_cast<const int32_t*>(recv + static_cast<int64_t>(tid / L) * p.slab_bytes)[tid % L];
    if (v < 0 || v > C) bad_src[tid / L] = 1;
  }
  // Each source's total, as one scan over the source-major counts (a source's slice is contiguous).
  int64_t all;
  const int64_t excl = block_exclusive_scan<kWarps, int64_t>(tid < N * L && v > 0 ? v : 0, &all);
  __shared__ int64_t start[kMaxExperts + 1];
  if (tid < N * L) start[tid] = excl;
  if (tid == 0) start[N * L] = all;
  __syncthreads();
  if (tid < N && start[(tid + 1) * L] - start[tid * L] > C) bad_src[tid] = 1;
  __syncthreads();
  if (tid < N && bad_src[tid]) {
    raise(p, L4K_EP_BAD_HEADER);
    const int64_t ignored = start[(tid + 1) * L] - start[tid * L];
    atomicAdd(&p.status[3], static_cast<uint32_t>(ignored < C ? ignored : C));
  }
  const int32_t kept = tid < N * L && !bad_src[tid / L] ? v : 0;
  if (tid < N * L) c[tid] = kept;
  __syncthreads();
  // Within-source prefixes of the kept counts.
  const int64_t excl2 = block_exclusive_scan<kWarps, int64_t>(kept, &all);
  if (tid < N * L) start[tid] = excl2;
  if (tid == 0) start[N * L] = all;
  __syncthreads();
  int32_t* prefix = p.table;
  int32_t* base = p.table + N * (L + 1);
  if (tid < N * L) {
    const int s = tid / L, l = tid % L;
    prefix[s * (L + 1) + l] = static_cast<int32_t>(start[tid] - start[s * L]);
    if (l == L - 1) prefix[s * (L + 1) + L] = static_cast<int32_t>(start[(s + 1) * L] - start[s * L]);
  }
  // Local expert l (thread l): rows from every source, padded to align; offsets by a scan.
  int64_t rows = 0;
  if (tid < L)
    for (int s = 0; s < N; ++s) rows += c[s * L + tid];
  const int64_t padded = (rows + p.align - 1) / p.align * p.align;
  const int64_t first = block_exclusive_scan<kWarps>(tid < L ? padded : 0, &all);
  if (tid < L) {
    p.grouped_counts[tid] = static_cast<int32_t>(rows);
    p.grouped_offsets[tid] = static_cast<int32_t>(first);
    int64_t at = first;
    for (int s = 0; s < N; ++s) {
      base[s * L + tid] = static_cast<int32_t>(at);
      at += c[s * L + tid];
    }
  }
  if (tid == 0) p.grouped_offsets[L] = static_cast<int32_t>(all);
}

__global__ void __launch_bounds__(kThreads) unpack_rows_kernel(const L4kExpertParallelParams p) {
  pdl_wait();  // PDL (kernels/pdl.cuh): before any global access or exit
  pdl_launch_dependents();
  const int N = p.world_size, L = p.experts / N, lane = threadIdx.x & 31;
  const int64_t C = p.capacity, slots = N * C;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (item < slots) {
    const int s = static_cast<int>(item / C);
    const int64_t j = item % C;
    const int32_t* prefix = p.table + s * (L + 1);
    if (j >= prefix[L]) {
      if (lane == 0) p.row_of_slot[item] = -1;
      return;
    }
    int lo = 0, hi = L;  // prefix[lo] <= j < prefix[hi]
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      if (prefix[mid] <= j) lo = mid;
      else hi = mid;
    }
    const int64_t row = static_cast<int64_t>(p.table[N * (L + 1) + s * L + lo]) + (j - prefix[lo]);
    if (row < 0 || row >= p.grouped_rows) {  // the host sizes grouped_rows for every layout: a bug if reached
      if (lane == 0) {
        p.row_of_slot[item] = -1;
        raise(p, L4K_EP_BAD_ROW);
      }
      return;
    }
    const uint8_t* slab = static_cast<const uint8_t*>(p.recv) + s * p.slab_bytes;
    warp_copy(static_cast<uint8_t*>(p.grouped) + row * p.hidden, slab + p.rows_off + j * p.hidden, p.hidden, lane);
    if (lane == 0) {
      p.grouped_scales[row] = reinterpret_cast<const float*>(slab + p.scales_off)[j];
      p.row_of_slot[item] = static_cast<int32_t>(row);
    }
    return;
  }
  // Padding row candidate: slot i of local expert l past its real rows (what l4k_permute_fp8 writes there).
  const int64_t pad = item - slots, per = p.align - 1;
  if (per <= 0 || pad >= L * per) return;
  const int l = static_cast<int>(pad / per);
  const int64_t row = static_cast<int64_t>(p.grouped_offsets[l]) + p.grouped_counts[l] + pad % per;
  if (row >= p.grouped_offsets[l + 1] || row >= p.grouped_rows) return;
  warp_zero(static_cast<uint8_t*>(p.grouped) + row * p.hidden, p.hidden, lane);
  if (lane == 0) p.grouped_scales[row] = kMinAmax / kE4m3Max;
}

__global__ void __launch_bounds__(kThreads) combine_pack_kernel(const L4kExpertParallelParams p) {
  pdl_wait();  // PDL (kernels/pdl.cuh): before any global access or exit
  pdl_launch_dependents();
  const int lane = threadIdx.x & 31;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (item >= p.world_size * p.capacity) return;
  const int64_t row = p.row_of_slot[item];
  if (row < 0) return;  // an empty slot: sent, never read
  if (row >= p.grouped_rows) {
    if (lane == 0) raise(p, L4K_EP_BAD_ROW);
    return;
  }
  const int64_t bytes = 2 * p.hidden;
  warp_copy(static_cast<uint8_t*>(p.send) + item * bytes, static_cast<const uint8_t*>(p.expert_out) + row * bytes,
            bytes, lane);
}

inline unsigned warps_grid(int64_t items) { return static_cast<unsigned>((items + kWarps - 1) / kWarps); }

}  // namespace ep
}  // namespace l4k

// Launchers (validated by ops/expert_parallel.rs, shared by the safe API and the C ABI).
extern "C" int l4k_launch_ep_pack(const L4kExpertParallelParams* p, cudaStream_t stream) {
  using namespace l4k::ep;
  const int64_t pairs = p->tokens * p->k;
  const l4k::LaunchShape shape{dim3(pairs > 0 ? warps_grid(pairs) : 1u), dim3(kThreads)};
  return l4k::launch_result(l4k::launch_pdl(pack_kernel, shape, stream, *p));
}

extern "C" int l4k_launch_ep_unpack(const L4kExpertParallelParams* p, cudaStream_t stream) {
  using namespace l4k::ep;
  const int status = l4k::launch_result(l4k::launch_pdl(unpack_layout_kernel, {dim3(1), dim3(kThreads)}, stream, *p));
  if (status != 0) return status;
  const int64_t L = p->experts / p->world_size;
  const int64_t items = p->world_size * p->capacity + (p->align > 1 ? L * (p->align - 1) : 0);
  return l4k::launch_result(l4k::launch_pdl(unpack_rows_kernel, {dim3(warps_grid(items)), dim3(kThreads)}, stream, *p));
}

extern "C" int l4k_launch_ep_combine_pack(const L4kExpertParallelParams* p, cudaStream_t stream) {
  using namespace l4k::ep;
  const l4k::LaunchShape shape{dim3(warps_grid(p->world_size * p->capacity)), dim3(kThreads)};
  return l4k::launch_result(l4k::launch_pdl(combine_pack_kernel, shape, stream, *p));
}
