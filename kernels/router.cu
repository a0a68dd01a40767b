// MoE routing on the device: top-k experts and weights per token, per-expert counts, padded offsets and each
// (token, choice)'s row in the expert-sorted order (stable in (token, choice)), with no host synchronization.
// Semantics: reference/src/router.rs (ranking, NaN rule, tie rule) and reference/src/permute.rs (padding).
//
// Launches: one when the tokens fit one tile (every decode batch: counts, offsets and destinations are final in
// the top-k kernel). More tiles, while they fit one wave (T = 16384 at E = 16 and E = 128 do), still take one
// launch, cooperative:
//   router_topk_kernel, one CTA per tile of TPB tokens. Each warp loads its whole share of the tile into
//   registers first (every load in flight at once: routing is latency-bound, a token-at-a-time loop would pay
//   one memory latency per token), then ranks each token with G lanes (G * 8 >= E values), writes ids and
//   weights, and ranks the tile's (token, choice) pairs stably per expert (__match_any_sync in (t, c) order,
//   warp counts scanned in warp order). The tile's per-expert histogram row goes to the workspace; after a
//   grid barrier one warp per expert scans that expert's column (its exclusive prefix over tiles and its
//   total); once all E are scanned (a counter) every CTA reads its own prefix row and the totals and writes
//   final destinations. No fix-up, one grid barrier.
// Beyond that (a very long prefill with many experts) three graph nodes, fixed for any T:
//   1. a 4-byte memset of the arrival counter in the workspace;
//   2. the same kernel, whose LAST CTA to finish (arrival counter, threadfence pattern) scans the histogram:
//      exclusive column prefixes in place, counts, and the padded offsets; dest holds in-tile ranks;
//   3. router_dest_kernel: dest += offsets[e] + prefix[tile][e], element-parallel.
// Every kernel is launched with programmatic dependent launch (kernels/pdl.cuh): each thread waits for the
// previous kernel before its first global access, then lets the next kernel launch.
// Why not a decoupled look-back: a destination needs offsets[e], the count of every smaller expert over ALL
// tokens, so nothing can be final before the last tile is counted; a barrier (or the last CTA) is the minimum.
// Tiles hold 32 to 512 tokens (bigger for small E) so the histogram stays small: 128 x 128 at T = 16384,
// E = 128 (bf16 logits).
#include <cooperative_groups.h>

#include <atomic>

#include "common.cuh"
#include "pdl.cuh"
#include "router.cuh"

namespace l4k {

constexpr int kMaxTileEntries = 4096;   // tokens per tile * k: the tile's shared-memory id and rank arrays
constexpr size_t kCounterBytes = 16;    // workspace: [counter, pad], the [tiles, E] histogram, [tiles + 1, E] prefixes
constexpr int kColumnRows = 8;          // histogram rows per lane in a column scan: at most 256 tiles on the grid path

// Token groups each lane loads up front: 128 bytes of logits per lane (bf16 x 8 x 8, f32 x 8 x 4), fewer when
// groups are narrow, so a tile never holds more than 512 tokens (512 * k <= kMaxTileEntries).
constexpr int router_iters(int g, bool f32) { return (f32 ? 4 : 8) < 2 * g ? (f32 ? 4 : 8) : 2 * g; }
constexpr int router_tile(int e, bool f32) {
  return kRouterWarps * router_iters(router_group(e), f32) * (32 / router_group(e));
}
static_assert(router_tile(1, false) * kMaxK <= kMaxTileEntries && router_tile(1, true) * kMaxK <= kMaxTileEntries &&
              router_tile(17, false) * kMaxK <= kMaxTileEntries, "tile entries exceed shared memory");

// 8 consecutive logits of one token as f32, loaded as 16-byte vectors or element by element.
template <class T>
struct Logits8;
// bf16 logits as four 32-bit words (two logits each, the lower index in the low half): whole-word loads and
// zero fills keep the compiler from merging 16-bit pieces with PRMTs (~180 of them in the load phase).
template <>
struct Logits8<bf16> {
  uint32_t w[4];
  __device__ __forceinline__ float operator[](int j) const {
    return __uint_as_float(j % 2 == 0 ? w[j / 2] << 16 : w[j / 2] & 0xFFFF0000u);
  }
  __device__ __forceinline__ void zero() { w[0] = w[1] = w[2] = w[3] = 0; }
  __device__ __forceinline__ void load_vec(const bf16* p) {
    const uint4 q = *reinterpret_cast<const uint4*>(p);
    w[0] = q.x, w[1] = q.y, w[2] = q.z, w[3] = q.w;
  }
  __device__ __forceinline__ void load(const bf16* p, int n) {
    const uint16_t* u = reinterpret_cast<const uint16_t*>(p);
#pragma unroll
    for (int q = 0; q < 4; ++q)
      w[q] = (2 * q < n ? u[2 * q] : 0u) | (2 * q + 1 < n ? static_cast<uint32_t>(u[2 * q + 1]) << 16 : 0u);
  }
};
template <>
struct Logits8<float> {
  float f[8];
  __device__ __forceinline__ float operator[](int j) const { return f[j]; }
  __device__ __forceinline__ void load_vec(const float* p) {
    const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
  }
  __device__ __forceinline__ void load(const float* p, int n) {
#pragma unroll
    for (int j = 0; j < 8; ++j) f[j] = j < n ? p[j] : 0.f;
  }
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int j = 0; j < 8; ++j) f[j] = 0.f;
  }
};

// Total order of candidates as one integer, larger = better: a non-NaN logit beats every NaN logit; then the
// larger key (a NaN key, the softmax of a +inf logit, ranks as +inf; -0 ties with +0); then the lower index.

// Top-1 of f32 logits ranks by one 64-bit integer per candidate (rank_key's order: a number beats every NaN,
// -0 ties with +0, NaNs rank among themselves by index, slots past E rank below everything (0)); the key is
// invertible, so the winner's logit comes back from it for the weight. bf16 logits rank in packed arithmetic.
template <class T>
struct Top1Key;
template <>
struct Top1Key<float> {
  using Key = uint64_t;
  static __device__ __forceinline__ Key make(const Logits8<float>& r, int j, int idx, int E) {
    const float x = r[j];
    return idx < E ? rank_key(x, isnan(x), idx) : 0;
  }
  static __device__ __forceinline__ int index(Key k) {
    return static_cast<int>(0xFFFFFFFFu - static_cast<uint32_t>(k));
  }
  static __device__ __forceinline__ float logit(Key k) {
    const uint32_t hi = static_cast<uint32_t>(k >> 32);
    if (hi == 0) return __int_as_float(0x7fc00000);
    return __uint_as_float((hi & 0x80000000u) ? (hi & 0x7FFFFFFFu) : ~hi);
  }
};

// Top-1 for the first S token groups of a lane at once: the S reductions are independent, and S is a
// compile-time count (the warp's busy steps rounded up to a power of two). With a runtime guard around each
// step the shuffles sat in separate branches and ran one chain after another, about 0.5 us per step at G = 16;
// unguarded they overlap. Steps past the warp's tokens rank zeros, harmlessly. Out: the winner's index and
// logit (NaN when every logit is NaN; the winner is then expert 0).
template <int G, int S, int ITER>
__device__ __forceinline__ void sigmoid_top1(const Logits8<float> (&raw)[ITER], int gl, int E, int (&idx)[ITER],
                                             float (&logit)[ITER]) {
  using K = Top1Key<float>;
  K::Key best[S];
#pragma unroll
  for (int i = 0; i < S; ++i) {
    best[i] = 0;
#pragma unroll
    for (int j = 0; j < kVpl; ++j) {
      const K::Key c = K::make(raw[i], j, gl * kVpl + j, E);
      best[i] = c > best[i] ? c : best[i];
    }
  }
#pragma unroll
  for (int o = G / 2; o > 0; o >>= 1) {
#pragma unroll
    for (int i = 0; i < S; ++i) {
      const K::Key w = __shfl_xor_sync(0xffffffffu, best[i], o);
      best[i] = w > best[i] ? w : best[i];
    }
  }
#pragma unroll
  for (int i = 0; i < S; ++i) idx[i] = K::index(best[i]), logit[i] = K::logit(best[i]);
}

// bf16 logits, the same order in packed arithmetic (about half the instructions of a 32-bit key per logit,
// and the ranking was ~1.8 of the 10 us at T = 16384, E = 128): the maximum by max.bf16x2, which drops a NaN
// operand, so NaNs lose to every number (slots past E are filled with NaN); then the lowest index whose logit
// equals it (== makes -0 tie with +0). Two steps share each shuffle: their maxima travel as one bf16x2, their
// indices as one u16x2 (min.u16x2). No index equals an all-NaN maximum: the winner is then expert 0.
__device__ __forceinline__ uint32_t max_bf16x2(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("max.bf16x2 %0, %1, %2;\n" : "=r"(d) : "r"(a), "r"(b));
  return d;
}
__device__ __forceinline__ uint32_t min_u16x2(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("min.u16x2 %0, %1, %2;\n" : "=r"(d) : "r"(a), "r"(b));
  return d;
}
template <int G, int S, int ITER>
__device__ __forceinline__ void sigmoid_top1(const Logits8<bf16> (&raw)[ITER], int gl, int E, int (&idx)[ITER],
                                             float (&logit)[ITER]) {
  constexpr int P = (S + 1) / 2;        // step pairs
  constexpr uint32_t kNone = 0xFFFFu;   // no equal logit in this lane
  uint32_t keep[kVpl / 2];              // per bf16 pair: 0xFFFF halves for slots below E
#pragma unroll
  for (int q = 0; q < kVpl / 2; ++q)
    keep[q] = (gl * kVpl + 2 * q < E ? 0x0000FFFFu : 0u) | (gl * kVpl + 2 * q + 1 < E ? 0xFFFF0000u : 0u);
  uint32_t v[S][kVpl / 2], m[P];  // m: the maxima of steps 2p (low half) and 2p + 1 (high half)
#pragma unroll
  for (int i = 0; i < S; ++i) {
    const uint32_t* w = raw[i].w;
#pragma unroll
    for (int q = 0; q < kVpl / 2; ++q) v[i][q] = (w[q] & keep[q]) | (~keep[q] & 0x7FC07FC0u);
    uint32_t x = max_bf16x2(max_bf16x2(v[i][0], v[i][1]), max_bf16x2(v[i][2], v[i][3]));
    x = max_bf16x2(x, __byte_perm(x, 0, 0x1032));  // both halves: the lane's maximum
    if (i % 2 == 0) m[i / 2] = x & 0xFFFFu;
    else m[i / 2] |= x & 0xFFFF0000u;
  }
#pragma unroll
  for (int o = G / 2; o > 0; o >>= 1) {
#pragma unroll
    for (int q = 0; q < P; ++q) m[q] = max_bf16x2(m[q], __shfl_xor_sync(0xffffffffu, m[q], o));
  }
  uint32_t first[P];  // lowest equal index of steps 2p (low half) and 2p + 1 (high half), kNone if none
#pragma unroll
  for (int i = 0; i < S; ++i) {
    const uint32_t mx = __byte_perm(m[i / 2], 0, i % 2 == 0 ? 0x1010 : 0x3232);  // the step's maximum, twice
    uint32_t eq[kVpl / 2];
#pragma unroll
    for (int q = 0; q < kVpl / 2; ++q)
      eq[q] = __heq2_mask(*reinterpret_cast<const __nv_bfloat162*>(&v[i][q]),
                          *reinterpret_cast<const __nv_bfloat162*>(&mx));
    // One byte per slot, 0xFF where equal: slots 0-3 and 4-7.
    const uint32_t lo = __byte_perm(eq[0], eq[1], 0x7531), hi = __byte_perm(eq[2], eq[3], 0x7531);
    const int j = lo ? (__ffs(lo) - 1) >> 3 : hi ? 4 + ((__ffs(hi) - 1) >> 3) : -1;
    const uint32_t f = j < 0 ? kNone : static_cast<uint32_t>(gl * kVpl + j);
    if (i % 2 == 0) first[i / 2] = f | (kNone << 16);
    else first[i / 2] = (first[i / 2] & 0xFFFFu) | (f << 16);
  }
#pragma unroll
  for (int o = G / 2; o > 0; o >>= 1) {
#pragma unroll
    for (int q = 0; q < P; ++q) first[q] = min_u16x2(first[q], __shfl_xor_sync(0xffffffffu, first[q], o));
  }
#pragma unroll
  for (int i = 0; i < S; ++i) {
    const uint32_t f = i % 2 == 0 ? first[i / 2] & 0xFFFFu : first[i / 2] >> 16;
    const uint32_t bits = i % 2 == 0 ? m[i / 2] << 16 : m[i / 2] & 0xFFFF0000u;
    idx[i] = f == kNone ? 0 : static_cast<int>(f);
    logit[i] = f == kNone ? __int_as_float(0x7fc00000) : __uint_as_float(bits);
  }
}

// The routing weight of a top-1 logit: its sigmoid in f32, rounded to bf16 for bf16 logits (NaN stays NaN).
__device__ __forceinline__ float top1_weight(float v, bool bf16_weights) {
  const float w = 1.f / (1.f + expf(-v));
  return bf16_weights ? round_bf16(w) : w;
}

// The last CTA: per-expert exclusive prefix of the [tiles, E] histogram (in place), counts and padded offsets.
// Each expert column is cut into chunks so up to 256 threads each sum a run of tiles (independent L2 loads).
__device__ void scan_histogram(const L4kRouterParams& p, int* hist, int tiles) {
  __shared__ int chunk_sum[kRouterThreads];
  const int E = p.experts, tid = threadIdx.x;
  const int chunks = max(1, min(kRouterThreads / E, (tiles + 7) / 8));
  const int len = (tiles + chunks - 1) / chunks;
  const int col = tid % E, ch = tid / E;
  const bool worker = ch < chunks;
  const int b0 = ch * len, b1 = min(tiles, b0 + len);
  if (worker) {
    int s = 0;
    for (int b = b0; b < b1; ++b) s += __ldcg(hist + static_cast<int64_t>(b) * E + col);
    chunk_sum[ch * E + col] = s;
  }
  __syncthreads();
  int padded = 0;
  if (tid < E) {
    int run = 0;
    for (int c = 0; c < chunks; ++c) {
      const int s = chunk_sum[c * E + tid];
      chunk_sum[c * E + tid] = run;
      run += s;
    }
    p.counts[tid] = run;
    padded = (run + p.align - 1) / p.align * p.align;  // fits: the host bounds T * k + E * (align - 1)
  }
  int total;
  const int start = block_exclusive_scan<kRouterWarps>(padded, &total);
  if (tid < E) p.offsets[tid] = start;
  if (tid == 0) p.offsets[E] = total;
  if (worker) {
    int run = chunk_sum[ch * E + col];
    for (int b = b0; b < b1; ++b) {
      int* h = hist + static_cast<int64_t>(b) * E + col;
      const int c = __ldcg(h);
      *h = run;
      run += c;
    }
  }
}

// After the grid barrier the histogram's columns are scanned, one warp per expert column (warp w of CTA b
// takes columns w * tiles + b, w * tiles + b + 8 * tiles, ...: at 128 tiles x 128 experts warp 0 of each CTA
// takes one): prefix[r][e] = pairs of expert e in tiles before r, and row `tiles` of prefix holds the totals.
// Each CTA then reads one prefix row and the totals (2 x E ints) instead of the whole [tiles, E] histogram: at
// T = 16384, E = 128 that was 32 KB of L2 reads per CTA (4 MB over the grid, 2.6 us). Lane l owns rows
// l * per .. l * per + per - 1 (per <= kColumnRows: the host keeps tiles <= 32 * kColumnRows), all loads in
// flight together; warp shuffles scan them, so no CTA-wide synchronization sits on the way.
__device__ __forceinline__ void scan_columns(const uint16_t* hist, int* prefix, int tiles, int E, unsigned* scanned) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int per = (tiles + 31) / 32, r0 = lane * per;
  for (int e = warp * tiles + blockIdx.x; e < E; e += kRouterWarps * tiles) {  // warp-uniform
    int v[kColumnRows], sum = 0;
#pragma unroll
    for (int i = 0; i < kColumnRows; ++i) {
      v[i] = i < per && r0 + i < tiles ? __ldcg(hist + static_cast<int64_t>(r0 + i) * E + e) : 0;
      sum += v[i];
    }
    int incl = sum;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int n = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += n;
    }
    int run = incl - sum;
#pragma unroll
    for (int i = 0; i < kColumnRows; ++i) {
      if (i < per && r0 + i < tiles) prefix[static_cast<int64_t>(r0 + i) * E + e] = run;
      run += v[i];
    }
    if (lane == 31) prefix[static_cast<int64_t>(tiles) * E + e] = incl;
    // The warp's stores, then one release-add: whoever acquires the count E sees every column written
    // (__syncwarp orders the lanes' stores before lane 0's release, which is cumulative).
    __syncwarp();
    if (lane == 0) asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" ::"l"(scanned) : "memory");
  }
}

// Phase timestamps for bench/experiments/router_probe.cu (compiled with L4K_ROUTER_PROBE; nothing otherwise).
#ifdef L4K_ROUTER_PROBE
__device__ unsigned long long g_router_probe[4096][8];
#define ROUTER_PROBE(i)                                                  \
  do {                                                                   \
    if (threadIdx.x == 0) {                                              \
      unsigned long long t;                                              \
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));              \
      g_router_probe[blockIdx.x][i] = t;                                 \
    }                                                                    \
  } while (0)
#else
#define ROUTER_PROBE(i) \
  do {                  \
  } while (0)
#endif

// Programmatic dependent launch (kernels/pdl.cuh): the launch and CTA start-up (~1 us of a ~10 us call) overlap
// the previous kernel's tail; nothing global is read or written before the wait, and the next PDL-launched kernel
// may start as soon as every CTA has waited.
__device__ __forceinline__ void wait_for_previous_kernel() {
  pdl_wait();
  pdl_launch_dependents();
}

// How the tiles of one launch agree on the expert offsets (see the top of the file).
enum TileSync : int { kGridBarrier = 0, kLastCta = 1 };

template <class T, int G>
__global__ void __launch_bounds__(kRouterThreads) router_topk_kernel(const L4kRouterParams p, bool vec, int sync) {
  ROUTER_PROBE(0);
  constexpr int ITER = router_iters(G, sizeof(T) == 4), TPI = 32 / G, TPW = TPI * ITER, TPB = TPW * kRouterWarps;
  __shared__ uint8_t tile_ids[kMaxTileEntries];
  __shared__ uint16_t tile_rank[kMaxTileEntries];
  __shared__ int warp_count[kRouterWarps][kMaxE];
  __shared__ int is_last;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gl = lane % G;
  const int E = p.experts, k = p.k;
  const int64_t tok0 = static_cast<int64_t>(blockIdx.x) * TPB;
  const int ntok = static_cast<int>(min(static_cast<int64_t>(TPB), p.tokens - tok0));
  for (int i = threadIdx.x; i < kRouterWarps * kMaxE; i += kRouterThreads) (&warp_count[0][0])[i] = 0;

  const Ranking rank{E, k, p.mode == L4K_ROUTER_SOFTMAX_TOPK, p.logits_dtype == L4K_LOGITS_BF16, p.renormalize != 0};
  wait_for_previous_kernel();

  // 1. Every load of the warp's tokens first, then the ranking. Step i of warp w holds tokens
  //    (i * warps + w) * TPI ..: a small batch spreads over all warps instead of queueing in the first one
  //    (which token a warp ranks does not matter to step 2, which reads tile_ids in token order).
  const T* logits = static_cast<const T*>(p.logits);
  //    vec (E % 8 == 0, 16-byte aligned rows) and element-wise loads are separate loops: one loop choosing per
  //    step compiled to both paths interleaved.
  Logits8<T> raw[ITER];
  const int in_lane = min(kVpl, E - gl * kVpl);  // this lane's logits of a token
  if (vec) {
#pragma unroll
    for (int i = 0; i < ITER; ++i) {
      const int tl = (i * kRouterWarps + warp) * TPI + lane / G;
      raw[i].zero();
      if (tl < ntok && in_lane > 0) raw[i].load_vec(logits + (tok0 + tl) * E + gl * kVpl);
    }
  } else {
#pragma unroll
    for (int i = 0; i < ITER; ++i) {
      const int tl = (i * kRouterWarps + warp) * TPI + lane / G;
      raw[i].zero();
      if (tl < ntok && in_lane > 0) raw[i].load(logits + (tok0 + tl) * E + gl * kVpl, in_lane);
    }
  }
  // Steps of this warp that hold a token: tl grows with i, so they are a prefix, the same for every lane
  // (warp-uniform, so the full-mask shuffles stay legal; a decode batch ranks 1 step, not ITER).
  int steps = 0;
#pragma unroll
  for (int i = 0; i < ITER; ++i) steps += __any_sync(0xffffffffu, (i * kRouterWarps + warp) * TPI + lane / G < ntok);
  if (k == 1 && !rank.softmax) {
    int idx[ITER];
    float logit[ITER];
    if (steps <= 1) {
      sigmoid_top1<G, 1>(raw, gl, E, idx, logit);
    } else if (steps <= 2 || ITER < 4) {
      sigmoid_top1<G, (ITER < 2 ? ITER : 2)>(raw, gl, E, idx, logit);
    } else if (steps <= 4 || ITER < 8) {
      sigmoid_top1<G, (ITER < 4 ? ITER : 4)>(raw, gl, E, idx, logit);
    } else {
      sigmoid_top1<G, ITER>(raw, gl, E, idx, logit);
    }
#pragma unroll
    for (int i = 0; i < ITER; ++i) {
      if (i >= steps) break;
      const int tl = (i * kRouterWarps + warp) * TPI + lane / G;
      if (gl == 0 && tl < ntok) {
        p.ids[tok0 + tl] = idx[i];
        p.weights[tok0 + tl] = top1_weight(logit[i], rank.bf16_weights);
        tile_ids[tl] = static_cast<uint8_t>(idx[i]);
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < ITER; ++i) {
      if (i >= steps) break;
      const int tl = (i * kRouterWarps + warp) * TPI + lane / G;
      float x[kVpl];
#pragma unroll
      for (int j = 0; j < kVpl; ++j) x[j] = raw[i][j];
      const bool in = gl == 0 && tl < ntok;
      const int64_t at = in ? (tok0 + tl) * k : 0;
      top_k<G>(x, gl, lane, rank, Choices{in, p.ids + at, p.weights + at, in ? &tile_ids[tl * k] : tile_ids});
    }
  }
  __syncthreads();
  ROUTER_PROBE(1);

  // 2. Stable rank of each (t, c) among the tile's pairs of its expert. Warp w ranks a contiguous run of
  //    pairs, 32 at a time in order: lanes holding the same expert see each other in __match_any_sync, the lower
  //    lanes come first, and the lowest lane advances the warp's count for that expert.
  const int n = ntok * k, per = (n + kRouterWarps - 1) / kRouterWarps;
  const int beg = warp * per, end = min(n, beg + per);
  for (int base = beg; base < end; base += 32) {
    const int i = base + lane;
    const bool in = i < end;
    const int e = in ? tile_ids[i] : kMaxE + lane;  // idle lanes get unique keys outside [0, kMaxE)
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const int before = __popc(peers & ((1u << lane) - 1));
    const int seen = in ? warp_count[warp][e] : 0;
    __syncwarp();
    if (in && before == 0) warp_count[warp][e] = seen + __popc(peers);
    __syncwarp();
    if (in) tile_rank[i] = static_cast<uint16_t>(seen + before);
  }
  __syncthreads();
  ROUTER_PROBE(2);

  // 3. Warp counts -> per-warp starts (warp order is pair order); the tile's totals go to the histogram.
  //    A single tile (every decode batch) is the whole problem: its totals are the counts. With the grid
  //    barrier each CTA reads the totals and its prefix from the histogram. Either way counts, offsets and
  //    final destinations are written here; only kLastCta leaves them to step 4 and router_dest_kernel.
  __shared__ int expert_start[kMaxE];
  const bool single = gridDim.x == 1, done = single || sync == kGridBarrier;
  int* hist = reinterpret_cast<int*>(static_cast<char*>(p.workspace) + kCounterBytes);
  int count = 0, before = 0;  // pairs of expert threadIdx.x: in all tiles, in the tiles before this one
  if (threadIdx.x < E) {
    for (int w = 0; w < kRouterWarps; ++w) {
      const int c = warp_count[w][threadIdx.x];
      warp_count[w][threadIdx.x] = count;
      count += c;
    }
    const int64_t at = static_cast<int64_t>(blockIdx.x) * E + threadIdx.x;
    if (sync == kGridBarrier) reinterpret_cast<uint16_t*>(hist)[at] = static_cast<uint16_t>(count);
    else if (!single) hist[at] = count;
  }
  if (!single && sync == kGridBarrier) {
    // The grid barrier orders every CTA's histogram row before the column scans read them (grid.sync fences
    // memory; __ldcg reads L2, never a stale L1 line). No second grid barrier: the scans count themselves in
    // `scanned` (zeroed by CTA 0 before the barrier, so the zero happens-before every count) and one thread
    // per CTA waits for all E; a grid.sync there cost ~1 us more, and polling the prefixes themselves from
    // every thread flooded L2 (+0.6 us).
    const int tiles = static_cast<int>(gridDim.x);
    int* prefix = hist + static_cast<int64_t>(tiles) * E;  // [tiles + 1, E] after the [tiles, E] histogram
    unsigned* scanned = static_cast<unsigned*>(p.workspace);
    if (blockIdx.x == 0 && threadIdx.x == 0) *scanned = 0;
    ROUTER_PROBE(3);
    cooperative_groups::this_grid().sync();
    ROUTER_PROBE(4);
    scan_columns(reinterpret_cast<const uint16_t*>(hist), prefix, tiles, E, scanned);
    if (threadIdx.x == 0) {
      unsigned done;
      do {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(done) : "l"(scanned) : "memory");
      } while (done < static_cast<unsigned>(E));
    }
    __syncthreads();  // thread 0's acquire, then this barrier, order the prefix reads after every scan
    if (threadIdx.x < E) {
      before = __ldcg(prefix + static_cast<int64_t>(blockIdx.x) * E + threadIdx.x);
      count = __ldcg(prefix + static_cast<int64_t>(tiles) * E + threadIdx.x);
    }
    ROUTER_PROBE(6);
  }
  ROUTER_PROBE(5);
  if (done) {  // uniform across the CTA: every thread takes part in the scan
    int padded = 0;
    if (threadIdx.x < E) {
      if (blockIdx.x == 0) p.counts[threadIdx.x] = count;
      padded = (count + p.align - 1) / p.align * p.align;  // fits: the host bounds T * k + E * (align - 1)
    }
    int total;
    const int start = block_exclusive_scan<kRouterWarps>(padded, &total);
    if (threadIdx.x < E) {
      if (blockIdx.x == 0) p.offsets[threadIdx.x] = start;
      expert_start[threadIdx.x] = start + before;
    }
    if (threadIdx.x == 0 && blockIdx.x == 0) p.offsets[E] = total;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += kRouterThreads)
    p.dest[tok0 * k + i] = (done ? expert_start[tile_ids[i]] : 0) + warp_count[i / per][tile_ids[i]] + tile_rank[i];
  ROUTER_PROBE(7);
  if (done) return;

  // 4. The last tile to arrive scans the histogram. Every writer fences before the arrival is counted.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned* counter = static_cast<unsigned*>(p.workspace);
    is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  scan_histogram(p, hist, gridDim.x);
}

// dest = offsets[e] + (pairs of e in earlier tiles) + (rank within the tile). An id outside [0, E) (never
// produced by kernel 2, but the ids buffer is the caller's memory) gets dest -1, which every consumer skips.
__global__ void __launch_bounds__(256) router_dest_kernel(const L4kRouterParams p, int tile) {
  wait_for_previous_kernel();
  const int64_t n = p.tokens * p.k;
  const int* prefix = reinterpret_cast<const int*>(static_cast<const char*>(p.workspace) + kCounterBytes);
  for (int64_t i = blockIdx.x * 256ll + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * 256) {
    const int e = p.ids[i];
    if (e < 0 || e >= p.experts) {
      p.dest[i] = -1;
      continue;
    }
    const int64_t b = i / p.k / tile;
    p.dest[i] += p.offsets[e] + prefix[b * p.experts + e];
  }
}

// Every router kernel runs kRouterThreads a CTA.
inline LaunchShape router_shape(unsigned blocks, bool cooperative) {
  LaunchShape shape{dim3(blocks), dim3(kRouterThreads)};
  shape.cooperative = cooperative;
  return shape;
}

// The cooperative path needs every tile resident at once (the launch fails otherwise, it never hangs) and
// histogram columns a warp can scan (at most kColumnRows rows per lane).
template <class T, int G>
int launch_topk(const L4kRouterParams& p, int tile, int tiles, bool vec, cudaStream_t s) {
  auto kernel = router_topk_kernel<T, G>;
  if (tiles > 1 && tiles <= 32 * kColumnRows) {
    static std::atomic<int> per_sm{-1};  // resident CTAs per SM: a property of the kernel, queried once
    int fit = per_sm.load(std::memory_order_relaxed);
    if (fit < 0) {
      cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kernel, kRouterThreads, 0);
      if (e != cudaSuccess) return static_cast<int>(e);
      per_sm.store(fit, std::memory_order_relaxed);
    }
    int dev = 0, sms = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (e != cudaSuccess) return static_cast<int>(e);
    if (tiles <= fit * sms)
      return launch_result(launch_pdl(kernel, router_shape(tiles, true), s, p, vec, static_cast<int>(kGridBarrier)));
  }
  if (tiles > 1) {
    cudaError_t e = cudaMemsetAsync(p.workspace, 0, sizeof(unsigned), s);
    if (e != cudaSuccess) return static_cast<int>(e);
  }
  cudaError_t e = launch_pdl(kernel, router_shape(tiles, false), s, p, vec, static_cast<int>(kLastCta));
  if (e == cudaSuccess && tiles > 1) {
    const int64_t n = p.tokens * p.k;
    const int64_t blocks = (n + 255) / 256;
    e = launch_pdl(router_dest_kernel, router_shape(static_cast<unsigned>(blocks < 4096 ? blocks : 4096), false), s,
                   p, tile);
  }
  return launch_result(e);
}

template <class T>
int launch_topk(const L4kRouterParams& p, int tile, int tiles, bool vec, cudaStream_t s) {
  switch (router_group(p.experts)) {
    case 2: return launch_topk<T, 2>(p, tile, tiles, vec, s);
    case 4: return launch_topk<T, 4>(p, tile, tiles, vec, s);
    case 8: return launch_topk<T, 8>(p, tile, tiles, vec, s);
    case 16: return launch_topk<T, 16>(p, tile, tiles, vec, s);
    default: return launch_topk<T, 32>(p, tile, tiles, vec, s);
  }
}

}  // namespace l4k

// Tokens per tile for E experts and this logits dtype, 0 if unsupported: sizes the workspace (ops/router.rs).
extern "C" int l4k_internal_router_tile(int experts, int logits_dtype) {
  if (experts < 1 || experts > l4k::kMaxE || (logits_dtype != L4K_LOGITS_BF16 && logits_dtype != L4K_LOGITS_F32))
    return 0;
  return l4k::router_tile(experts, logits_dtype == L4K_LOGITS_F32);
}

// Workspace bytes (ops/router.rs asks for them): the counter, then for T > 0 the [tiles, E] histogram (int32 on
// the last-CTA path, uint16 on the grid path) and the grid path's [tiles + 1, E] int32 column prefixes and totals.
extern "C" int64_t l4k_internal_router_workspace(int64_t tokens, int experts, int logits_dtype) {
  const int tile = l4k_internal_router_tile(experts, logits_dtype);
  if (tile == 0 || tokens < 0) return -1;
  const int64_t tiles = (tokens + tile - 1) / tile;
  return static_cast<int64_t>(l4k::kCounterBytes) + (tiles > 0 ? (2 * tiles + 1) * experts * 4 : 0);
}

extern "C" int l4k_launch_router(const L4kRouterParams* p, cudaStream_t stream) {
  using namespace l4k;
  const int tile = l4k_internal_router_tile(p->experts, p->logits_dtype);
  const int64_t tiles = (p->tokens + tile - 1) / tile;
  // Re-checked here (the Rust layer already did) because an undersized workspace would be written past.
  if (tile == 0 || p->workspace_bytes < l4k_internal_router_workspace(p->tokens, p->experts, p->logits_dtype))
    return L4K_STATUS_BAD_WORKSPACE;
  const uintptr_t base = reinterpret_cast<uintptr_t>(p->logits);
  const bool vec = p->experts % kVpl == 0 && (base & 15u) == 0;
  if (p->logits_dtype == L4K_LOGITS_F32) return launch_topk<float>(*p, tile, static_cast<int>(tiles), vec, stream);
  return launch_topk<bf16>(*p, tile, static_cast<int>(tiles), vec, stream);
}
