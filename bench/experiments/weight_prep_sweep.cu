// Weight prep at Scout's shapes on the H200 (issue 16, deliverable 1): the shipped strip kernel against designs
// that break its "load the whole strip, then store it" phase structure, every variant in one run, each output (E4M3
// bytes and f32 scales) compared byte for byte on the device with the shipped launcher's.
//
//   nvcc -std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a \
//        -Ikernels -Iinclude bench/experiments/weight_prep_sweep.cu -o /tmp/wp_sweep && /tmp/wp_sweep [gate_up] [down]
//   /tmp/wp_sweep schedules     host-only self-check of every panel schedule (no GPU)
//
// Needs only nvcc and the driver (tensor maps come through cudaGetDriverEntryPointByVersion: no -lcuda). About 15-30 s.
// Prints the ceilings, then per shape one row per variant:
//   shape  variant  median us (25 event-timed calls after 3 warm-up ones)  GB/s  % of copy  % of read  check
// check: "OK" (every byte and scale equal to the shipped kernel's; only then is a variant timed), "WRONG (...): not
// timed", "diag" (a diagnostic that does not produce the output: its time is a bound, not a candidate), or CRASHED
// (the variant faulted or hung; the run goes on in a fresh process, see the harness). Bytes counted as the shipped
// bench does: 2 B read + 1 B written per element + 4 B per scale. Ceilings, measured in the same run (a child
// process, before and after): a 2 GiB cudaMemcpy (read + write) and a plain read-only kernel.
//
// Variants (why each exists):
//  shipped        l4k_launch_weight_prep: strip of 8 columns x all K in registers, clusters of 2 (the reference).
//  strip/direct   a copy of the shipped strip kernel (same stores): checks the harness reproduces the shipped time.
//  strip/bulk     the strip kernel with its 8 output rows staged in shared memory and written by one bulk copy
//                 (cp.async.bulk, K bytes) per row: is the store side (16-byte stores at a K-byte stride) the limit?
//  strip/nostore  diag: the strip kernel's loads and column maxima only (no output): the read side's own bound.
//  panel/stepped  two passes over L2-sized panels (P columns x all K of one expert), one launch per step: step s
//                 runs pass 1 of panel s (coalesced row reads, >= 512 B contiguous per warp, column maxima ->
//                 atomicMax on the f32 bits: amax >= 0 so the integer order is the float order) beside pass 2 of
//                 panel s - 1 (re-reads its tiles, now L2 hits, quantizes, transposes through shared memory, writes
//                 full 256-byte output row segments). DRAM sees copy-like reads and full-line writes; the price is
//                 the re-read from L2 and a launch bubble per step (the steps are replayed as one CUDA graph). +pdl:
//                 programmatic dependent launch (the next step's CTAs start while this one drains; pass 2 waits
//                 with griddepcontrol).
//  panel/persist  the same two passes in ONE persistent launch (grid = resident CTAs, items claimed by ticket):
//                 pass 2 of panel s - L is interleaved with pass 1 of panel s; a pass-2 item issues its W loads,
//                 then waits (acquire spin) for its panel's pass-1 counter. No launch bubbles; L (lag) sets the L2
//                 footprint, about (L + 1) panels. hints: L2 eviction-priority policies (pass-1 loads evict_last,
//                 pass-2 loads and output stores evict_first) so the panel survives in L2 until pass 2.
//  cluster/tma    single pass, 64 columns per cluster: a cluster of C CTAs splits K, each loads its K/C x 64 tile
//                 by TMA (2D tensor map, 128-byte rows: few large copies instead of 16-byte loads), the column
//                 maxima meet through DSMEM, then each CTA quantizes from shared memory and writes 256-byte output
//                 row segments through a swizzled shared tile.
//  read pass only diag: pass 1 alone over the whole tensor (reads W once, writes only maxima): the bound on what
//                 the panel layout's read pattern reaches.
// NaN inputs: every variant takes column maxima with __hmax2 / __habs2 as the shipped kernel does (NaN dropped).
#include <cooperative_groups.h>
#include <cuda.h>
#include <cudaTypedefs.h>

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "../../kernels/paged_kv_tma.cuh"  // the driver entry point of the tensor maps
#include "../../kernels/weight_prep.cu"

namespace cg = cooperative_groups;

#define CK(x)                                                                            \
  do {                                                                                   \
    cudaError_t e_ = (x);                                                                \
    if (e_ != cudaSuccess) {                                                             \
      fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      exit(1);                                                                           \
    }                                                                                    \
  } while (0)

namespace wpx {

using l4k::bf16;
constexpr float kE4m3Max = l4k::kE4m3Max;
constexpr float kMinAmax = l4k::kMinAmax;

// ---- small PTX helpers ---------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// L2 eviction-priority policies (createpolicy): applied through the .L2::cache_hint form of ld / st.
__device__ __forceinline__ uint64_t policy_evict_last() {
  uint64_t p;
  asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(p));
  return p;
}
__device__ __forceinline__ uint64_t policy_evict_first() {
  uint64_t p;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
  return p;
}
template <bool HINT>
__device__ __forceinline__ uint4 ld16(const void* p, uint64_t pol) {
  uint4 v;
  if constexpr (HINT) {
    asm volatile("ld.global.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p), "l"(pol));
  } else {
    v = *reinterpret_cast<const uint4*>(p);
  }
  return v;
}
template <bool HINT>
__device__ __forceinline__ void st16(void* p, uint4 v, uint64_t pol) {
  if constexpr (HINT) {
    asm volatile("st.global.L2::cache_hint.v4.u32 [%0], {%1, %2, %3, %4}, %5;" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z),
                 "r"(v.w), "l"(pol)
                 : "memory");
  } else {
    *reinterpret_cast<uint4*>(p) = v;
  }
}
__device__ __forceinline__ uint32_t ld_acquire(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
// Programmatic dependent launch: let the next grid start / wait for the previous grid's completion and memory.
__device__ __forceinline__ void pdl_launch_dependents() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}
// Bounded waits: a schedule or barrier bug traps after ~5 s (an error the harness reports as CRASHED) instead of
// hanging the GPU.
__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
constexpr uint64_t kWaitLimitNs = 5000000000ull;
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  uint64_t t0 = 0;
  for (uint32_t n = 0;; ++n) {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_u32(bar)), "r"(parity)
        : "memory");
    if (done) return;
    if (n == 0) t0 = global_ns();
    if ((n & 1023) == 1023 && global_ns() - t0 > kWaitLimitNs) __trap();
  }
}
__device__ __forceinline__ void fence_mbar_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, int c0, int c1, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
          smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_u32(bar))
      : "memory");
}
// Shared -> global bulk copy (no tensor map), completion tracked per thread by bulk groups.
__device__ __forceinline__ void bulk_store(void* gdst, const void* ssrc, uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(gdst), "r"(smem_u32(ssrc)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_read0() { asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); }

// bf16 -> f32 of column j (0..7) of a raw 16-byte row word: column 2c is the low half of word c, 2c + 1 the high.
__device__ __forceinline__ float col_f(const uint4& r, int j) {
  const uint32_t w = (j / 2 == 0) ? r.x : (j / 2 == 1) ? r.y : (j / 2 == 2) ? r.z : r.w;
  return __uint_as_float(j % 2 ? (w & 0xFFFF0000u) : (w << 16));
}
// Column maxima of 8 packed columns (4 bf16x2), exactly as the shipped kernel: |x| and max exact in bf16.
__device__ __forceinline__ void amax_update(__nv_bfloat162 (&m)[4], const uint4& r) {
  const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int c = 0; c < 4; ++c) m[c] = __hmax2(m[c], __habs2(*reinterpret_cast<const __nv_bfloat162*>(&w[c])));
}
__device__ __forceinline__ float amax_col(const __nv_bfloat162 (&m)[4], int j) {
  return j % 2 ? __high2float(m[j / 2]) : __low2float(m[j / 2]);
}
// Four E4M3 bytes (k ascending) of a * inv .. d * inv: the shipped kernel's paired conversion.
__device__ __forceinline__ uint32_t e4m3x4(float a, float b, float c, float d, float inv) {
  const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(a * inv, b * inv), __NV_SATFINITE, __NV_E4M3);
  const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(c * inv, d * inv), __NV_SATFINITE, __NV_E4M3);
  return lo | (hi << 16);
}
__device__ __forceinline__ float scale_of(float amax) { return fmaxf(amax, kMinAmax) / kE4m3Max; }

struct Prep {
  const bf16* w;
  uint8_t* out;
  float* scales;
  int e, k, n;
};

// ---- strip variants (copies of the shipped kernel with a different store side) ---------------------------

constexpr int kStripCols = 8, kRowsPerThread = 16;
enum StripStore { kDirect = 0, kBulk = 1, kNoStore = 2 };

template <int MAX_THREADS, int MIN_BLOCKS, int STORE>
__global__ void __launch_bounds__(MAX_THREADS, MIN_BLOCKS) strip_kernel(const Prep p) {
  extern __shared__ __align__(128) uint8_t stage[];  // kBulk: [8][K] output rows
  const int64_t e = blockIdx.y, n0 = int64_t(blockIdx.x) * kStripCols;
  const int64_t k0 = int64_t(threadIdx.x) * kRowsPerThread;
  const bf16* w = p.w + (e * p.k) * p.n + n0;
  const bool active = k0 < p.k;
  uint4 v[kRowsPerThread];
  __nv_bfloat162 amax2[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) amax2[c] = __float2bfloat162_rn(0.f);
  if (active) {
    const bf16* row = w + k0 * p.n;
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i, row += p.n) v[i] = *reinterpret_cast<const uint4*>(row);
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) amax_update(amax2, v[i]);
  }
  __shared__ float partial[MAX_THREADS / 32][kStripCols];
  __shared__ float inv_scale[kStripCols];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int j = 0; j < kStripCols; ++j) {
    const float m = l4k::warp_reduce(amax_col(amax2, j), l4k::MaxOp{});
    if (lane == 0) partial[warp][j] = m;
  }
  __syncthreads();
  if (threadIdx.x < kStripCols) {
    float m = 0.f;
    for (int i = 0; i < warps; ++i) m = fmaxf(m, partial[i][threadIdx.x]);
    const float scale = scale_of(m);
    p.scales[e * p.n + n0 + threadIdx.x] = scale;
    inv_scale[threadIdx.x] = 1.f / scale;
  }
  __syncthreads();
  if constexpr (STORE == kNoStore) {
    // Keep the loads alive without writing the output: an impossible condition on the data.
    if (active && inv_scale[0] == -1.f) p.out[0] = uint8_t(v[0].x ^ v[kRowsPerThread - 1].w);
    return;
  }
  uint8_t* out = p.out + e * p.n * p.k + k0;
  if (active) {
#pragma unroll
    for (int j = 0; j < kStripCols; ++j) {
      const float inv = inv_scale[j];
      uint4 q;
      q.x = e4m3x4(col_f(v[0], j), col_f(v[1], j), col_f(v[2], j), col_f(v[3], j), inv);
      q.y = e4m3x4(col_f(v[4], j), col_f(v[5], j), col_f(v[6], j), col_f(v[7], j), inv);
      q.z = e4m3x4(col_f(v[8], j), col_f(v[9], j), col_f(v[10], j), col_f(v[11], j), inv);
      q.w = e4m3x4(col_f(v[12], j), col_f(v[13], j), col_f(v[14], j), col_f(v[15], j), inv);
      if constexpr (STORE == kDirect)
        *reinterpret_cast<uint4*>(out + (n0 + j) * p.k) = q;
      else
        *reinterpret_cast<uint4*>(stage + j * int64_t(p.k) + k0) = q;
    }
  }
  if constexpr (STORE == kBulk) {
    fence_proxy_async();  // the generic-proxy writes above, before the bulk copy (async proxy) reads them
    __syncthreads();
    if (threadIdx.x < kStripCols) {
      bulk_store(p.out + (e * p.n + n0 + threadIdx.x) * p.k, stage + threadIdx.x * int64_t(p.k), uint32_t(p.k));
      bulk_commit();
      bulk_wait_read0();  // shared memory must outlive the copy's reads
    }
  }
}

template <int STORE>
cudaError_t launch_strip(const Prep& p, cudaStream_t s) {
  const int rows = p.k / kRowsPerThread, threads = (rows + 31) / 32 * 32;
  const size_t smem = STORE == kBulk ? size_t(kStripCols) * p.k : 0;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(unsigned(p.n / kStripCols), unsigned(p.e));
  cfg.blockDim = dim3(unsigned(threads));
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = (p.n / kStripCols) % 2 == 0 ? 2 : 1;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  if (threads <= 320) {
    auto k = strip_kernel<320, 2, STORE>;
    if (smem) CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    return cudaLaunchKernelEx(&cfg, k, p);
  }
  auto k = strip_kernel<512, 1, STORE>;
  if (smem) CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  return cudaLaunchKernelEx(&cfg, k, p);
}

// ---- two-pass L2 panels --------------------------------------------------------------------------------

constexpr int kThreads = 256;
constexpr int kTileCols = 64;  // pass-2 tile width: 128-byte input rows, 64 output rows

// A schedule of items over panels (expert e, columns [pc P, pc P + P)), all K rows each.
// Pass-1 item: C1 columns x R1 rows (column block fastest: consecutive items read adjacent row segments).
// Pass-2 item: 64 columns x KT rows (k tile fastest: consecutive items write consecutive output row segments).
// Step s holds pass 1 of panel s (s < NP) and pass 2 of panel s - L (s >= L), interleaved evenly.
struct Sched {
  int e, k, n;
  int P, C1, R1, KT, L;
  int NP, n1, n2;
  int64_t total;
  uint32_t* amax;  // [E * N] f32 bits, zeroed per call
  uint32_t* done;  // [NP] finished pass-1 items per panel, zeroed per call
};

struct Item {
  int kind;  // 1: pass 1, 2: pass 2, 0: none
  int panel, idx;
};

// Item j of step s (Bresenham interleave of a pass-1 and b pass-2 items).
__host__ __device__ __forceinline__ Item step_item(const Sched& s, int step, int64_t j) {
  const int64_t a = step < s.NP ? s.n1 : 0, b = step >= s.L ? s.n2 : 0;
  Item it{0, 0, 0};
  if (j >= a + b) return it;
  const int64_t i1 = j * a / (a + b);
  if ((j + 1) * a / (a + b) > i1) {
    it.kind = 1, it.panel = step, it.idx = int(i1);
  } else {
    it.kind = 2, it.panel = step - s.L, it.idx = int(j - i1);
  }
  return it;
}
__host__ __device__ __forceinline__ int64_t step_items(const Sched& s, int step) {
  return (step < s.NP ? s.n1 : 0) + (step >= s.L ? s.n2 : 0);
}

// Global item g of the persistent schedule: steps 0..L-1 pass 1 only, L..NP-1 both, NP..NP+L-1 pass 2 only.
__host__ __device__ __forceinline__ Item global_item(const Sched& s, int64_t g) {
  const int64_t head = int64_t(s.L) * s.n1, mid = int64_t(s.NP - s.L) * (s.n1 + s.n2);
  if (g < head) return step_item(s, int(g / s.n1), g % s.n1);
  g -= head;
  if (g < mid) return step_item(s, s.L + int(g / (s.n1 + s.n2)), g % (s.n1 + s.n2));
  g -= mid;
  return step_item(s, s.NP + int(g / s.n2), g % s.n2);
}

struct __align__(16) PanelSmem {
  float red[kThreads * 8];           // pass 1: [row phase][column] maxima (RP * C1 = 2048 floats)
  uint8_t tile[kTileCols * 256];     // pass 2: [64 output rows][KT bytes], 16-byte chunks XOR-swizzled
  float inv[kTileCols];
};

// Pass 1: column maxima of C1 columns x R1 rows; atomicMax of each column's f32 bits (non-negative floats order as
// their bits). The CTA's threads: C1 / 8 per row (16 bytes each: a warp reads >= 512 contiguous bytes), 256 / (C1
// / 8) row phases, U rows in flight per thread.
template <int C1, int R1, int U, bool HINT>
__device__ __forceinline__ void pass1(const Prep& p, const Sched& s, PanelSmem& sm, int panel, int idx) {
  constexpr int TPR = C1 / 8, RP = kThreads / TPR, RPT = R1 / RP;
  static_assert(RPT % U == 0, "rows per thread");
  const int per_row = s.P / C1;
  const int e = panel / (s.n / s.P), pc = panel % (s.n / s.P);
  const int c0 = pc * s.P + (idx % per_row) * C1, k0 = (idx / per_row) * R1;
  const int t = threadIdx.x, col = (t % TPR) * 8, ph = t / TPR;
  const uint64_t pol = HINT ? policy_evict_last() : 0;
  const bf16* src = p.w + (int64_t(e) * p.k + k0 + ph) * p.n + c0 + col;
  const int64_t stride = int64_t(RP) * p.n;
  __nv_bfloat162 m[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) m[c] = __float2bfloat162_rn(0.f);
#pragma unroll 1
  for (int i0 = 0; i0 < RPT; i0 += U) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = ld16<HINT>(src + (i0 + u) * stride, pol);
#pragma unroll
    for (int u = 0; u < U; ++u) amax_update(m, v[u]);
  }
  __syncthreads();  // the previous item's readers of sm.red are done
  float4* r = reinterpret_cast<float4*>(sm.red + ph * C1 + col);
  r[0] = make_float4(amax_col(m, 0), amax_col(m, 1), amax_col(m, 2), amax_col(m, 3));
  r[1] = make_float4(amax_col(m, 4), amax_col(m, 5), amax_col(m, 6), amax_col(m, 7));
  __syncthreads();
  for (int c = t; c < C1; c += kThreads) {
    float mx = 0.f;
#pragma unroll
    for (int q = 0; q < RP; ++q) mx = fmaxf(mx, sm.red[q * C1 + c]);
    atomicMax(s.amax + int64_t(e) * p.n + c0 + c, __float_as_uint(mx));
  }
}

// Pass 2: quantize a 64-column x KT-row tile with its columns' final maxima and write it transposed.
// Thread layout: lane = cg + 8 rq (cg: 8-column group, rq: 4-row quad), warp w; each thread loads 4 rows x 16 bytes
// per 128-row slab (a warp instruction reads 4 whole 128-byte rows), converts each column's 4 values to one 32-bit
// word (4 consecutive k) and stores it into the shared tile [n][k] with 16-byte chunks XOR-ed by n / 8 (the 8 cg of
// one instruction land on 8 different chunks: conflict-free); then whole output rows leave as 16-byte stores (a
// warp writes 2 x 256 contiguous bytes). WAIT: 0 none (stream order), 1 spin on the panel's pass-1 counter, 2
// griddepcontrol.wait (PDL). The W loads are issued before the wait: W is never written.
template <int KT, bool HINT, int WAIT>
__device__ __forceinline__ void pass2(const Prep& p, const Sched& s, PanelSmem& sm, int panel, int idx) {
  constexpr int SLABS = KT / 128, CHUNKS = KT / 16;
  const int e = panel / (s.n / s.P), pc = panel % (s.n / s.P);
  const int ktiles = p.k / KT;
  const int c0 = pc * s.P + (idx / ktiles) * kTileCols, k0 = (idx % ktiles) * KT;
  const int t = threadIdx.x, lane = t & 31, w = t >> 5, cg = lane & 7, rq = lane >> 3;
  const uint64_t pol = HINT ? policy_evict_first() : 0;
  uint4 v[SLABS][4];
  const bf16* src = p.w + (int64_t(e) * p.k + k0 + w * 16 + rq * 4) * p.n + c0 + cg * 8;
#pragma unroll
  for (int sl = 0; sl < SLABS; ++sl)
#pragma unroll
    for (int i = 0; i < 4; ++i) v[sl][i] = ld16<HINT>(src + int64_t(sl * 128 + i) * p.n, pol);
  if constexpr (WAIT == 1) {
    if (t == 0 && ld_acquire(s.done + panel) < uint32_t(s.n1)) {
      const uint64_t t0 = global_ns();
      while (ld_acquire(s.done + panel) < uint32_t(s.n1)) {
        __nanosleep(64);
        if (global_ns() - t0 > kWaitLimitNs) __trap();
      }
    }
  } else if constexpr (WAIT == 2) {
    pdl_wait();
  }
  __syncthreads();  // the maxima are final; the previous item is done with sm.tile and sm.inv
  if (t < kTileCols) {
    const float amax = __uint_as_float(__ldcg(s.amax + int64_t(e) * p.n + c0 + t));
    const float scale = scale_of(amax);
    sm.inv[t] = 1.f / scale;
    if (k0 == 0) p.scales[int64_t(e) * p.n + c0 + t] = scale;
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float inv = sm.inv[cg * 8 + j];
    const int n = cg * 8 + j;
#pragma unroll
    for (int sl = 0; sl < SLABS; ++sl) {
      const uint32_t word =
          e4m3x4(col_f(v[sl][0], j), col_f(v[sl][1], j), col_f(v[sl][2], j), col_f(v[sl][3], j), inv);
      const int chunk = sl * 8 + w;  // (sl * 128 + w * 16 + rq * 4) / 16
      const int phys = chunk ^ (n >> 3);
      *reinterpret_cast<uint32_t*>(sm.tile + n * KT + phys * 16 + rq * 4) = word;
    }
  }
  __syncthreads();
  uint8_t* dst = p.out + (int64_t(e) * p.n + c0) * p.k + k0;
#pragma unroll
  for (int q = t; q < kTileCols * CHUNKS; q += kThreads) {
    const int n = q / CHUNKS, c = q % CHUNKS;
    const uint4 val = *reinterpret_cast<const uint4*>(sm.tile + n * KT + ((c ^ (n >> 3)) * 16));
    st16<HINT>(dst + int64_t(n) * p.k + c * 16, val, pol);
  }
}

// One launch of a step (kind by blockIdx.x): PDL 1 lets the next step launch early and makes pass 2 wait with
// griddepcontrol (pass 1 reads only W and writes only its own panel's maxima: it waits for nothing).
template <int C1, int R1, int U, int KT, bool HINT, int PDL, int MINB>
__global__ void __launch_bounds__(kThreads, MINB) stepped_kernel(const Prep p, const Sched s, int step) {
  __shared__ PanelSmem sm;
  if constexpr (PDL) pdl_launch_dependents();
  const Item it = step_item(s, step, blockIdx.x);
  if (it.kind == 1) pass1<C1, R1, U, HINT>(p, s, sm, it.panel, it.idx);
  if (it.kind == 2) pass2<KT, HINT, PDL ? 2 : 0>(p, s, sm, it.panel, it.idx);
}

// The persistent form: one launch of about the resident CTA count; CTAs claim items in schedule order from an atomic
// ticket (the next one claimed while the current one runs, so the claim's latency hides). A pass-1 item publishes
// its maxima (barrier, fence, counter increment); a pass-2 item spins until its panel's counter is full.
// Deadlock-free whatever the residency: the unfinished item of lowest index is either some CTA's current item (its
// panel's pass-1 items come earlier in the order, so they are finished) or the next item of a CTA whose current item
// is earlier still and so finished too.
template <int C1, int R1, int U, int KT, bool HINT, int MINB>
__global__ void __launch_bounds__(kThreads, MINB) persistent_kernel(const Prep p, const Sched s) {
  __shared__ PanelSmem sm;
  __shared__ uint32_t claimed;
  uint32_t* ticket = s.done + s.NP;
  if (threadIdx.x == 0) claimed = atomicAdd(ticket, 1u);
  __syncthreads();
  for (;;) {
    const int64_t g = claimed;
    if (g >= s.total) break;
    uint32_t next = 0;
    if (threadIdx.x == 0) next = atomicAdd(ticket, 1u);  // used only at the end of this item
    const Item it = global_item(s, g);
    if (it.kind == 1) {
      pass1<C1, R1, U, HINT>(p, s, sm, it.panel, it.idx);
      __syncthreads();  // every atomicMax of this item issued
      if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(s.done + it.panel, 1u);
      }
    } else if (it.kind == 2) {
      pass2<KT, HINT, 1>(p, s, sm, it.panel, it.idx);
    }
    __syncthreads();  // everyone has read `claimed`
    if (threadIdx.x == 0) claimed = next;
    __syncthreads();
  }
}

// Diagnostic: pass 1 alone over every panel (one launch).
template <int C1, int R1, int U>
__global__ void __launch_bounds__(kThreads, 2) read_only_kernel(const Prep p, const Sched s) {
  __shared__ PanelSmem sm;
  const int64_t g = blockIdx.x;
  pass1<C1, R1, U, false>(p, s, sm, int(g / s.n1), int(g % s.n1));
}

// ---- cluster / TMA single pass ------------------------------------------------------------------------

// W as a 2D bf16 tensor [E * K rows, N columns], boxes of 64 columns x box_rows rows, no swizzle: 128-byte rows
// land contiguously and the readers (8 lanes on one row) are conflict-free without it.
bool encode_w_map(CUtensorMap* map, const Prep& p, int box_rows) {
  auto enc = l4k::paged_kv::tensor_map_encoder();
  if (!enc) return false;
  const cuuint64_t dims[2] = {cuuint64_t(p.n), cuuint64_t(p.e) * p.k};
  const cuuint64_t strides[1] = {cuuint64_t(p.n) * 2};
  const cuuint32_t box[2] = {64, cuuint32_t(box_rows)};
  const cuuint32_t elem[2] = {1, 1};
  return enc(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<bf16*>(p.w), dims, strides, box, elem,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// CTA rank r of a cluster of C along K: rows [r K / C, (r + 1) K / C) of 64 columns, KR = K / C rows, in boxes of
// BOXR rows each completing its own mbarrier (maxima start on the first box while the rest land).
template <int C, int KR, int BOXR>
struct ClusterSmem {
  static constexpr int kBoxes = KR / BOXR;
  alignas(128) bf16 in[KR * 64];
  alignas(128) uint8_t tile[64 * 256];
  float red[8][64];
  float partial[64];
  float inv[64];
  uint64_t bar[kBoxes];
};

template <int C, int KR, int BOXR, int MINB>
__global__ void __launch_bounds__(kThreads, MINB) cluster_kernel(const Prep p, const __grid_constant__ CUtensorMap map) {
  using Sm = ClusterSmem<C, KR, BOXR>;
  extern __shared__ __align__(128) uint8_t smem_raw[];
  Sm& sm = *reinterpret_cast<Sm*>(smem_raw);
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = int(cluster.block_rank());
  const int e = blockIdx.y, c0 = (blockIdx.x / C) * 64, kb = rank * KR;
  const int t = threadIdx.x, lane = t & 31, w = t >> 5, cg8 = lane & 7, rq = lane >> 3;
  if (t == 0) {
    for (int b = 0; b < Sm::kBoxes; ++b) mbar_init(&sm.bar[b], 1);
    fence_mbar_init();
  }
  __syncthreads();
  if (t == 0) {
    for (int b = 0; b < Sm::kBoxes; ++b) {
      mbar_expect_tx(&sm.bar[b], BOXR * 128);
      tma_load_2d(sm.in + b * BOXR * 64, &map, c0, e * p.k + kb + b * BOXR, &sm.bar[b]);
    }
  }
  // Column maxima: thread (cg8, rq, w) reads rows 16 w + 4 rq + i of every 128-row slab, 16 bytes at column 8 cg8.
  __nv_bfloat162 m[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) m[c] = __float2bfloat162_rn(0.f);
  for (int b = 0; b < Sm::kBoxes; ++b) {
    mbar_wait(&sm.bar[b], 0);
    for (int sl = 0; sl < BOXR / 128; ++sl) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = b * BOXR + sl * 128 + w * 16 + rq * 4 + i;
        amax_update(m, *reinterpret_cast<const uint4*>(sm.in + r * 64 + cg8 * 8));
      }
    }
  }
  // Reduce over rq (lane bits 3, 4) and warps, then across the cluster through DSMEM.
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    float x = amax_col(m, j);
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 8));
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 16));
    if (rq == 0) sm.red[w][cg8 * 8 + j] = x;
  }
  __syncthreads();
  if (t < 64) {
    float x = 0.f;
    for (int q = 0; q < 8; ++q) x = fmaxf(x, sm.red[q][t]);
    sm.partial[t] = x;
  }
  cluster.sync();
  if (t < 64) {
    float x = 0.f;
    for (int r = 0; r < C; ++r) x = fmaxf(x, cluster.map_shared_rank(sm.partial, r)[t]);
    const float scale = scale_of(x);
    sm.inv[t] = 1.f / scale;
    if (rank == 0) p.scales[int64_t(e) * p.n + c0 + t] = scale;
  }
  cluster.sync();  // peers are done reading this CTA's partial; sm.inv visible to the CTA
  uint8_t* dst = p.out + (int64_t(e) * p.n + c0) * p.k + kb;
  for (int k0 = 0; k0 < KR; k0 += 256) {
    const int slabs = KR - k0 >= 256 ? 2 : 1;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int n = cg8 * 8 + j;
      const float inv = sm.inv[n];
      for (int sl = 0; sl < slabs; ++sl) {
        const bf16* r = sm.in + (k0 + sl * 128 + w * 16 + rq * 4) * 64 + cg8 * 8;
        const uint4 a = *reinterpret_cast<const uint4*>(r), b = *reinterpret_cast<const uint4*>(r + 64),
                    c = *reinterpret_cast<const uint4*>(r + 128), d = *reinterpret_cast<const uint4*>(r + 192);
        const uint32_t word = e4m3x4(col_f(a, j), col_f(b, j), col_f(c, j), col_f(d, j), inv);
        const int phys = (sl * 8 + w) ^ (n >> 3);
        *reinterpret_cast<uint32_t*>(sm.tile + n * 256 + phys * 16 + rq * 4) = word;
      }
    }
    __syncthreads();
    const int chunks = slabs * 8;
    for (int q = t; q < 64 * chunks; q += kThreads) {
      const int n = q / chunks, c = q % chunks;
      *reinterpret_cast<uint4*>(dst + int64_t(n) * p.k + k0 + c * 16) =
          *reinterpret_cast<const uint4*>(sm.tile + n * 256 + ((c ^ (n >> 3)) * 16));
    }
    __syncthreads();
  }
}

}  // namespace wpx

// ---- harness -------------------------------------------------------------------------------------------
//
// Isolation: the parent process never touches CUDA. Each shape runs in a forked child that builds its inputs and the
// shipped reference, then runs the variants in order, publishing the index of the one running in shared memory. A
// child that dies (a CUDA error, a trap from a bounded device spin) or stalls (one variant running > 60 s) costs that
// variant's row: the parent prints it as CRASHED and starts a fresh child at the next variant.

static cudaStream_t g_stream;
static int g_sms;
static double g_copy_gbps, g_read_gbps;

struct Shared {
  volatile int current;          // index of the variant running (or the count: all done)
  volatile long long started_ms; // when it started
  volatile double copy_gbps, read_gbps;
  char name[160];
};
static Shared* g_sh;

static long long now_ms() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
}

static double time_us(const std::function<void()>& fn, int warm = 3, int reps = 25) {
  for (int i = 0; i < warm; ++i) fn();
  CK(cudaStreamSynchronize(g_stream));
  CK(cudaGetLastError());
  std::vector<double> t;
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < reps; ++i) {
    CK(cudaEventRecord(a, g_stream));
    fn();
    CK(cudaEventRecord(b, g_stream));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1e3);
  }
  CK(cudaGetLastError());
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

static void* dalloc(size_t bytes) {
  void* p;
  CK(cudaMalloc(&p, bytes));
  return p;
}

// bf16 in [-2, 2) from a hash of the index, every 997th element x 100 (the outliers set a column's scale).
__global__ void fill_kernel(uint16_t* w, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ uint32_t(i >> 32) * 40503u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13, h *= 3266489917u, h ^= h >> 16;
    float f = (h >> 8) * (4.f / 16777216.f) - 2.f;
    if (i % 997 == 0) f *= 100.f;
    w[i] = __bfloat16_as_ushort(__float2bfloat16_rn(f));
  }
}

__global__ void diff_kernel(const uint4* a, const uint4* b, size_t n, unsigned long long* bad) {
  unsigned long long c = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint4 x = a[i], y = b[i];
    const uint32_t d[4] = {x.x ^ y.x, x.y ^ y.y, x.z ^ y.z, x.w ^ y.w};
    for (int k = 0; k < 4; ++k)
      for (int q = 0; q < 4; ++q) c += ((d[k] >> (8 * q)) & 0xff) != 0;
  }
  if (c) atomicAdd(bad, c);
}

static unsigned long long* g_bad;
// Bytes that differ between a and b (both multiples of 16 bytes).
static unsigned long long count_diff(const void* a, const void* b, size_t bytes) {
  CK(cudaMemsetAsync(g_bad, 0, 8, g_stream));
  diff_kernel<<<g_sms * 8, 256, 0, g_stream>>>(static_cast<const uint4*>(a), static_cast<const uint4*>(b), bytes / 16,
                                               g_bad);
  unsigned long long h;
  CK(cudaMemcpyAsync(&h, g_bad, 8, cudaMemcpyDeviceToHost, g_stream));
  CK(cudaStreamSynchronize(g_stream));
  return h;
}

__global__ void read_kernel(const uint4* p, size_t n, uint32_t* sink) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint4 v = p[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) *sink = acc;
}

static void ceilings() {
  const size_t bytes = size_t(2) << 30;
  void* a = dalloc(bytes);
  void* b = dalloc(bytes);
  CK(cudaMemset(a, 1, bytes));
  const double us = time_us([&] { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, g_stream)); }, 3, 15);
  g_copy_gbps = 2.0 * bytes / us / 1e3;
  uint32_t* sink = static_cast<uint32_t*>(dalloc(4));
  double best = 0;
  for (int per_sm : {4, 8, 16}) {
    const double r =
        time_us([&] { read_kernel<<<g_sms * per_sm, 512, 0, g_stream>>>(static_cast<uint4*>(a), bytes / 16, sink); }, 3, 15);
    best = std::max(best, bytes / r / 1e3);
  }
  g_read_gbps = best;
  printf("ceilings: copy %.0f GB/s (2 GiB cudaMemcpy, read + write), read-only kernel %.0f GB/s\n", g_copy_gbps,
         g_read_gbps);
  CK(cudaFree(a));
  CK(cudaFree(b));
  CK(cudaFree(sink));
}

struct Case {
  const char* name;
  wpx::Prep p;          // the variant writes p.out / p.scales
  const void* ref_out;  // the shipped kernel's
  const float* ref_sc;
  double bytes;
};

// Runs fn once on poisoned outputs, checks, then times it and prints one row; a WRONG variant is not timed.
// diag: no check (the row is a bound, not a candidate).
static void row(const Case& c, const std::string& variant, const std::function<void()>& fn, bool diag = false) {
  const size_t elems = size_t(c.p.e) * c.p.k * c.p.n;
  snprintf(g_sh->name, sizeof g_sh->name, "%s", variant.c_str());
  std::string check = "diag";
  if (!diag) {
    CK(cudaMemsetAsync(c.p.out, 0xA5, elems, g_stream));
    CK(cudaMemsetAsync(c.p.scales, 0xFF, size_t(c.p.e) * c.p.n * 4, g_stream));
    fn();
    CK(cudaStreamSynchronize(g_stream));
    CK(cudaGetLastError());
    const unsigned long long bo = count_diff(c.p.out, c.ref_out, elems);
    const unsigned long long bs = count_diff(c.p.scales, c.ref_sc, size_t(c.p.e) * c.p.n * 4);
    if (bo || bs) {
      printf("%-26s %-58s %s WRONG (%llu bytes, %llu scale bytes differ): not timed\n", c.name, variant.c_str(), "",
             bo, bs);
      fflush(stdout);
      return;
    }
    check = "OK";
  }
  const double us = time_us(fn);
  const double gbps = c.bytes / us / 1e3;
  printf("%-26s %-58s %8.1f us %6.0f GB/s %5.1f%% copy %5.1f%% read  %s\n", c.name, variant.c_str(), us, gbps,
         100 * gbps / g_copy_gbps, 100 * gbps / g_read_gbps, check.c_str());
  fflush(stdout);
}

template <class K>
static int occupancy(K kernel, int threads, size_t smem) {
  int n = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem));
  return n;
}

// Schedules and their launches. ws: amax [E*N] + counters, zeroed by one memset per call (inside the timing).
struct PanelRun {
  wpx::Sched s;
  void* ws;
  size_t ws_bytes;
};

static bool make_sched(const wpx::Prep& p, int P, int C1, int R1, int KT, int L, void* ws, wpx::Sched* s) {
  if (p.n % P || P % C1 || P % wpx::kTileCols || p.k % R1 || p.k % KT) return false;
  s->e = p.e, s->k = p.k, s->n = p.n;
  s->P = P, s->C1 = C1, s->R1 = R1, s->KT = KT, s->L = L;
  s->NP = p.e * (p.n / P);
  if (s->NP < L) return false;
  s->n1 = (P / C1) * (p.k / R1);
  s->n2 = (P / wpx::kTileCols) * (p.k / KT);
  s->total = int64_t(s->NP) * (s->n1 + s->n2);
  s->amax = static_cast<uint32_t*>(ws);
  s->done = s->amax + size_t(p.e) * p.n;
  // The schedule's own check, on the host: every pass-1 and pass-2 item of every panel appears exactly once, and
  // every pass-1 item of a panel comes before that panel's first pass-2 item (what the spin waits rely on).
  std::vector<uint8_t> seen1(size_t(s->NP) * s->n1, 0), seen2(size_t(s->NP) * s->n2, 0);
  std::vector<int64_t> last1(s->NP, -1), first2(s->NP, -1);
  for (int64_t g = 0; g < s->total; ++g) {
    const wpx::Item it = wpx::global_item(*s, g);
    bool ok = it.panel >= 0 && it.panel < s->NP;
    if (ok && it.kind == 1) {
      ok = it.idx >= 0 && it.idx < s->n1 && !seen1[size_t(it.panel) * s->n1 + it.idx]++;
      last1[it.panel] = g;
    } else if (ok && it.kind == 2) {
      ok = it.idx >= 0 && it.idx < s->n2 && !seen2[size_t(it.panel) * s->n2 + it.idx]++;
      if (first2[it.panel] < 0) first2[it.panel] = g;
    } else {
      ok = false;
    }
    if (!ok) {
      printf("schedule P%d L%d: item %lld is bad (kind %d panel %d idx %d)\n", P, L, (long long)g, it.kind, it.panel,
             it.idx);
      exit(1);
    }
  }
  for (int q = 0; q < s->NP; ++q)
    if (first2[q] < last1[q]) {
      printf("schedule P%d L%d: panel %d's pass 2 starts before its pass 1 ends\n", P, L, q);
      exit(1);
    }
  return true;
}

// The NP + 1 launches of a call (and its memset) are captured once into a CUDA graph (PDL launches become
// programmatic edges): at ~3-6 us of work per step, timing direct launches would time the CPU's launch rate.
// Falls back to direct launches (and says so) if the capture is refused.
template <int C1, int R1, int U, int KT, bool HINT, int PDL, int MINB>
static void run_stepped(const Case& c, void* ws, int P) {
  wpx::Sched s;
  if (!make_sched(c.p, P, C1, R1, KT, 1, ws, &s)) return;
  const size_t ws_bytes = (size_t(c.p.e) * c.p.n + s.NP) * 4;
  auto kernel = wpx::stepped_kernel<C1, R1, U, KT, HINT, PDL, MINB>;
  auto enqueue = [&]() -> cudaError_t {
    cudaError_t e = cudaMemsetAsync(ws, 0, ws_bytes, g_stream);
    for (int st = 0; st < s.NP + 1 && e == cudaSuccess; ++st) {
      cudaLaunchConfig_t cfg{};
      cfg.gridDim = dim3(unsigned(wpx::step_items(s, st)));
      cfg.blockDim = dim3(wpx::kThreads);
      cfg.stream = g_stream;
      cudaLaunchAttribute attr[1];
      attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attr[0].val.programmaticStreamSerializationAllowed = 1;
      cfg.attrs = attr;
      cfg.numAttrs = (PDL && st > 0) ? 1 : 0;  // step 0 waits for the memset in stream order
      e = cudaLaunchKernelEx(&cfg, kernel, c.p, s, st);
    }
    return e;
  };
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  bool graphed = cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
  if (graphed) {
    const cudaError_t e1 = enqueue();
    const cudaError_t e2 = cudaStreamEndCapture(g_stream, &graph);
    graphed = e1 == cudaSuccess && e2 == cudaSuccess && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
  }
  if (!graphed) cudaGetLastError();  // capture errors are not sticky
  auto fn = [&] {
    if (graphed)
      CK(cudaGraphLaunch(exec, g_stream));
    else
      CK(enqueue());
  };
  char v[160];
  snprintf(v, sizeof v, "panel/stepped%s P%d (%.0f MB) C1 %d R1 %d KT %d%s %d/SM%s", PDL ? "+pdl" : "", P,
           double(P) * c.p.k * 2 / 1e6, C1, R1, KT, HINT ? " hints" : "", occupancy(kernel, wpx::kThreads, 0),
           graphed ? "" : " (direct launches)");
  row(c, v, fn);
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
}

template <int C1, int R1, int U, int KT, bool HINT, int MINB>
static void run_persistent(const Case& c, void* ws, int P, int L) {
  wpx::Sched s;
  if (!make_sched(c.p, P, C1, R1, KT, L, ws, &s)) return;
  const size_t ws_bytes = (size_t(c.p.e) * c.p.n + s.NP + 1) * 4;  // maxima, counters, ticket
  auto kernel = wpx::persistent_kernel<C1, R1, U, KT, HINT, MINB>;
  CK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, int(cudaSharedmemCarveoutMaxShared)));
  const int per_sm = occupancy(kernel, wpx::kThreads, 0);
  const int grid = per_sm * g_sms;  // one CTA per resident slot (correct with fewer: items are claimed in order)
  auto fn = [&] {
    CK(cudaMemsetAsync(ws, 0, ws_bytes, g_stream));
    kernel<<<grid, wpx::kThreads, 0, g_stream>>>(c.p, s);
  };
  char v[128];
  snprintf(v, sizeof v, "panel/persist P%d (%.0f MB) L%d C1 %d R1 %d KT %d%s %d/SM", P, double(P) * c.p.k * 2 / 1e6, L,
           C1, R1, KT, HINT ? " hints" : "", per_sm);
  row(c, v, fn);
}

template <int C1, int R1, int U>
static void run_read_only(const Case& c, void* ws, int P) {
  wpx::Sched s;
  if (!make_sched(c.p, P, C1, R1, 256, 1, ws, &s)) return;
  const size_t ws_bytes = (size_t(c.p.e) * c.p.n + s.NP) * 4;
  auto fn = [&] {
    CK(cudaMemsetAsync(ws, 0, ws_bytes, g_stream));
    wpx::read_only_kernel<C1, R1, U><<<unsigned(int64_t(s.NP) * s.n1), wpx::kThreads, 0, g_stream>>>(c.p, s);
  };
  char v[128];
  snprintf(v, sizeof v, "read pass only P%d C1 %d R1 %d (3 B/elt counted)", P, C1, R1);
  row(c, v, fn, true);
}

template <int C, int KR, int BOXR, int MINB>
static void run_cluster(const Case& c) {
  using Sm = wpx::ClusterSmem<C, KR, BOXR>;
  if (c.p.k != C * KR || c.p.n % 64) return;
  CUtensorMap map;
  if (!wpx::encode_w_map(&map, c.p, BOXR)) {
    printf("%-26s cluster/tma C%d: tensor map refused, skipped\n", c.name, C);
    return;
  }
  auto kernel = wpx::cluster_kernel<C, KR, BOXR, MINB>;
  const size_t smem = sizeof(Sm);
  CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  if (C > 8) CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(unsigned(c.p.n / 64 * C), unsigned(c.p.e));
  cfg.blockDim = dim3(wpx::kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = g_stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = C;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess || clusters == 0) {
    cudaGetLastError();
    printf("%-26s cluster/tma C%d: cannot be resident, skipped\n", c.name, C);
    return;
  }
  auto fn = [&] { CK(cudaLaunchKernelEx(&cfg, kernel, c.p, map)); };
  char v[128];
  snprintf(v, sizeof v, "cluster/tma C%d (%d rows x 64 cols/CTA, %zu KB) %d clusters", C, KR, smem / 1024, clusters);
  row(c, v, fn);
}

// One shape in this (child) process: inputs, the shipped reference, then variants start.. in order.
static void shape(const char* name, int E, int K, int N, int start) {
  const size_t elems = size_t(E) * K * N;
  uint16_t* w = static_cast<uint16_t*>(dalloc(elems * 2));
  fill_kernel<<<g_sms * 16, 256, 0, g_stream>>>(w, elems, 0x5eed + K);
  uint8_t* out = static_cast<uint8_t*>(dalloc(elems));
  uint8_t* out_ref = static_cast<uint8_t*>(dalloc(elems));
  float* sc = static_cast<float*>(dalloc(size_t(E) * N * 4));
  float* sc_ref = static_cast<float*>(dalloc(size_t(E) * N * 4));
  void* ws = dalloc((size_t(E) * N + 4096) * 4);
  CK(cudaStreamSynchronize(g_stream));

  L4kWeightPrepParams sp{w, out_ref, sc_ref, E, K, N};
  const Case c{name, wpx::Prep{reinterpret_cast<const wpx::bf16*>(w), out, sc, E, K, N}, out_ref, sc_ref,
               double(elems) * 3 + 4.0 * E * N};
  CK(static_cast<cudaError_t>(l4k_launch_weight_prep(&sp, g_stream)));
  CK(cudaStreamSynchronize(g_stream));

  using namespace wpx;
  // Panel widths: about 10 / 20 / 40 MB at K 5120, 8 / 16 / 40 MB at K 8192.
  const std::vector<int> widths = K <= 5120 ? std::vector<int>{1024, 2048, 4096} : std::vector<int>{512, 1024, 2560};
  std::vector<std::function<void()>> v;
  v.push_back([&] {
    snprintf(g_sh->name, sizeof g_sh->name, "shipped");
    const double us = time_us([&] { l4k_launch_weight_prep(&sp, g_stream); });
    const double gbps = c.bytes / us / 1e3;
    printf("%-26s %-58s %8.1f us %6.0f GB/s %5.1f%% copy %5.1f%% read  reference\n", name,
           "shipped (l4k_launch_weight_prep)", us, gbps, 100 * gbps / g_copy_gbps, 100 * gbps / g_read_gbps);
  });
  v.push_back([&] { row(c, "strip/direct (copy of shipped)", [&] { CK(launch_strip<kDirect>(c.p, g_stream)); }); });
  v.push_back([&] { row(c, "strip/bulk (smem rows + cp.async.bulk)", [&] { CK(launch_strip<kBulk>(c.p, g_stream)); }); });
  v.push_back([&] {
    row(c, "strip/nostore (loads + maxima only)", [&] { CK(launch_strip<kNoStore>(c.p, g_stream)); }, true);
  });
  v.push_back([&] { run_read_only<512, 256, 16>(c, ws, widths[1]); });
  v.push_back([&] { run_read_only<256, 256, 16>(c, ws, widths[1]); });
  // Stepped: a step's DRAM reads come only from its pass-1 CTAs, so pass-1 items are short (R1 128: P / 512 x K /
  // 128 of them per step) at the price of more atomics (K / R1 per column).
  for (int P : widths) v.push_back([&, P] { run_stepped<512, 128, 16, 256, false, 0, 2>(c, ws, P); });
  for (int P : widths) v.push_back([&, P] { run_stepped<512, 128, 16, 256, false, 1, 2>(c, ws, P); });
  v.push_back([&] { run_stepped<512, 64, 16, 256, false, 1, 2>(c, ws, widths[1]); });
  v.push_back([&] { run_stepped<256, 128, 16, 256, false, 1, 2>(c, ws, widths[1]); });
  v.push_back([&] { run_stepped<512, 128, 16, 256, true, 1, 2>(c, ws, widths[1]); });
  // Persistent: pass-1 items can be long (R1 256 or 512: fewer atomics), other CTAs overlap them.
  for (int P : widths) v.push_back([&, P] { run_persistent<512, 256, 16, 256, false, 2>(c, ws, P, 1); });
  for (int P : widths) v.push_back([&, P] { run_persistent<512, 256, 16, 256, false, 2>(c, ws, P, 2); });
  v.push_back([&] { run_persistent<512, 256, 16, 256, true, 2>(c, ws, widths[0], 2); });
  v.push_back([&] { run_persistent<512, 256, 16, 256, true, 2>(c, ws, widths[1], 1); });
  v.push_back([&] { run_persistent<512, 512, 16, 256, false, 2>(c, ws, widths[1], 1); });
  v.push_back([&] { run_persistent<256, 256, 16, 256, false, 2>(c, ws, widths[1], 1); });
  v.push_back([&] { run_persistent<512, 256, 8, 256, false, 3>(c, ws, widths[1], 1); });
  v.push_back([&] { run_persistent<512, 256, 8, 128, false, 3>(c, ws, widths[1], 1); });
  // A pass-1 item of 256 KB lasts about one step, so with lag 1 the pass-2 items claimed right after the panel's last
  // pass-1 item spin: shorter pass-1 items (R1 128) and more lag on smaller panels (L2 footprint ~ (L + 1) panels).
  v.push_back([&] { run_persistent<512, 128, 16, 256, false, 2>(c, ws, widths[0], 2); });
  v.push_back([&] { run_persistent<512, 128, 16, 256, false, 2>(c, ws, widths[0], 3); });
  v.push_back([&] { run_persistent<512, 128, 16, 256, false, 2>(c, ws, widths[1], 2); });
  if (K == 5120) {
    v.push_back([&] { run_cluster<4, 1280, 256, 1>(c); });
    v.push_back([&] { run_cluster<8, 640, 128, 2>(c); });
  } else if (K == 8192) {
    v.push_back([&] { run_cluster<8, 1024, 256, 1>(c); });
    v.push_back([&] { run_cluster<16, 512, 256, 2>(c); });
  }
  for (int i = start; i < int(v.size()); ++i) {
    g_sh->current = i;
    g_sh->started_ms = now_ms();
    v[i]();
  }
  g_sh->current = int(v.size());
  CK(cudaFree(w));
  CK(cudaFree(out));
  CK(cudaFree(out_ref));
  CK(cudaFree(sc));
  CK(cudaFree(sc_ref));
  CK(cudaFree(ws));
}

static void cuda_init() {
  CK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  g_sms = prop.multiProcessorCount;
  g_bad = static_cast<unsigned long long*>(dalloc(8));
  g_copy_gbps = g_sh->copy_gbps;
  g_read_gbps = g_sh->read_gbps;
}

// Runs body in a child; returns true when it exited 0. Kills a child whose current variant runs past 60 s.
static bool in_child(const std::function<void()>& body) {
  fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) {
    body();
    fflush(stdout);
    _exit(0);
  }
  int status = 0;
  for (;;) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (now_ms() - g_sh->started_ms > 60000) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      printf("    (killed: no progress for 60 s)\n");
      return false;
    }
    usleep(20000);
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static void run_shape(const char* name, int E, int K, int N) {
  int start = 0;
  for (;;) {
    g_sh->current = -1;
    g_sh->started_ms = now_ms();
    g_sh->name[0] = 0;
    const bool ok = in_child([&] {
      cuda_init();
      shape(name, E, K, N, start);
    });
    if (ok) return;
    if (g_sh->current < 0) {
      printf("%-26s setup failed\n", name);
      return;
    }
    printf("%-26s %-58s CRASHED (the child died or hung; next variant in a fresh process)\n", name,
           const_cast<const char*>(g_sh->name));
    start = g_sh->current + 1;
  }
}

static void ceilings_child() {
  in_child([] {
    CK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    g_sms = prop.multiProcessorCount;
    ceilings();
    g_sh->copy_gbps = g_copy_gbps;
    g_sh->read_gbps = g_read_gbps;
  });
}

// `schedules`: the host-side schedule checks of every panel configuration above, no GPU touched.
static void check_schedules() {
  struct S {
    int e, k, n;
  };
  for (S sh : {S{16, 5120, 16384}, S{16, 8192, 5120}}) {
    const wpx::Prep p{nullptr, nullptr, nullptr, sh.e, sh.k, sh.n};
    const std::vector<int> widths = sh.k <= 5120 ? std::vector<int>{1024, 2048, 4096} : std::vector<int>{512, 1024, 2560};
    int n = 0;
    for (int P : widths)
      for (int C1 : {256, 512})
        for (int R1 : {64, 128, 256, 512})
          for (int KT : {128, 256})
            for (int L : {1, 2, 3}) {
              wpx::Sched s;
              n += make_sched(p, P, C1, R1, KT, L, reinterpret_cast<void*>(16), &s);
            }
    printf("K %d N %d: %d schedules checked\n", sh.k, sh.n, n);
  }
}

int main(int argc, char** argv) {
  std::vector<std::string> want(argv + 1, argv + argc);
  auto on = [&](const char* f) { return want.empty() || std::find(want.begin(), want.end(), f) != want.end(); };
  if (!want.empty() && want[0] == "schedules") {
    check_schedules();
    return 0;
  }
  g_sh = static_cast<Shared*>(mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  memset(g_sh, 0, sizeof(Shared));
  g_sh->started_ms = now_ms();
  in_child([] {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  });
  ceilings_child();
  if (g_sh->copy_gbps <= 0) {
    printf("no ceilings measured: no usable GPU\n");
    return 1;
  }
  printf("%-26s %-58s %11s %11s %10s %10s  %s\n", "shape", "variant", "median", "GB/s", "of copy", "of read", "check");
  if (on("gate_up")) run_shape("gate_up E16 K5120 N16384", 16, 5120, 16384);
  if (on("down")) run_shape("down E16 K8192 N5120", 16, 8192, 5120);
  ceilings_child();
  return 0;
}
