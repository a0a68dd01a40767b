// Decode attention over the paged KV cache (contract: kernels/attention_params.h), split along the keys
// (flash-decoding) with a combine step.
//
// Work split. One CTA = (sequence b, KV head g, row tile rt, key split s). Its rows are the (query, head) pairs
// of KV group g, r = qi * group + j for query qi and head g * group + j: with Llama 4's 40/8 heads and one query
// per sequence, the 5 heads of a group are rows 0..4 of one 16-row tile, so K and V are read once for all of
// them (q_len <= 3 keeps one tile; longer speculative runs take ceil(5 q_len / 16) tiles, each reading K/V).
// The sequence's key range [lo(first query), seq_len) is cut into 64-key tiles, the tiles into `splits`
// contiguous runs (chosen on the host from batch, KV heads, the longest range and the SM count: no sync).
//
// Main loop. 4 warps; a 64-key stage holds K and V [64, D] bf16 in shared memory, filled with 16-byte cp.async
// (3 stages, up to two in flight while one is computed; 16 consecutive lanes read one 256-byte key row, with
// the L2::256B prefetch hint). The addresses come from the block table; a block id outside
// the cache marks the sequence bad and its bytes are zero-filled instead of read. Warp w owns keys 16w..16w+15
// of every stage with its own online-softmax state: S = Q K^T and O += P V are mma.sync m16n8k16 (bf16 in,
// f32 accumulate), Q in registers for the whole loop, K via ldmatrix and V via ldmatrix.trans from rows padded
// by 16 bytes (conflict-free). Scores are scaled by softmax_scale * log2(e) and exponentiated with exp2.
// Masked entries (causal, chunk, padded rows) are -inf; a row with no visible key in a split stays at
// m = -inf, l = 0 and contributes nothing (no NaN: the running max is replaced by 0 when it is -inf).
//
// Epilogue. The 4 warps merge their (m, l, O) through shared memory. One split: the CTA writes bf16 rows of
// out directly. Several: it writes the normalized f32 O and the base-2 log-sum-exp of each row and a status
// word (bad block seen or not) to the workspace, and the combine kernel (one warp per output row) merges the
// splits. Every CTA of a sequence reads the same key range, so all of them reach the same verdict on its block
// ids: a bad sequence writes none of its rows and is counted once in bad_seqs.
//
// PDL (kernels/pdl.cuh): both kernels are launched with it; every thread waits for the previous kernel (rope's
// cache writes for the split kernel, the split kernel's partials for the combine) before its first global access,
// ahead of every early exit.
#include <math.h>

#include "attention_params.h"
#include "common.cuh"
#include "paged_kv.cuh"
#include "pdl.cuh"

namespace l4k {
namespace decode {

constexpr int kWarpKeys = 16;
constexpr int kRows = 16;  // (query, head) rows per CTA: one m16 tile

// Pipeline shape: WARPS warps of 16 keys each per stage, STAGES stages, MIN_CTAS resident CTAs per SM (the
// split heuristic's wave size), HINT: cp.async with the L2::256B prefetch hint.
template <int WARPS, int STAGES, int MIN_CTAS, bool HINT>
struct Cfg {
  static constexpr int kWarps = WARPS, kThreads = WARPS * 32, kTileKeys = WARPS * kWarpKeys, kStages = STAGES,
                       kCtasPerSm = MIN_CTAS;
  static constexpr bool kHint = HINT;
};
constexpr int kMaxSplits = 64;
constexpr int kMinTilesPerSplit = 4;           // at least 256 keys per split: shorter ones are all overhead
constexpr float kLog2e = 1.4426950408889634f;

template <int D>
constexpr int kStride = D + 8;  // shared row stride in elements: +16 bytes makes ldmatrix conflict-free
template <int D, class C>
constexpr int kStageElems = 2 * C::kTileKeys * kStride<D>;  // K then V
template <int D, class C>
constexpr size_t smem_bytes() {
  const size_t pipe = size_t(C::kStages) * kStageElems<D, C> * sizeof(bf16);
  const size_t merge = size_t(C::kWarps) * kRows * (D + 4) * sizeof(float);
  return pipe > merge ? pipe : merge;
}

// Workspace: partial O [splits][batch][max_q_len][n_heads][D] f32, lse [splits][batch][max_q_len][n_heads]
// f32 (base 2), status [splits][batch][n_kv_heads][row tiles] int32. Nothing when splits == 1.
struct Layout {
  int64_t lse_off, status_off, total;
};

inline int64_t align256(int64_t x) { return (x + 255) & ~int64_t(255); }

inline Layout layout(int splits, int batch, int max_q_len, int n_heads, int n_kv_heads, int row_tiles, int d) {
  Layout l{0, 0, 0};
  if (splits <= 1) return l;
  const int64_t rows = int64_t(splits) * batch * max_q_len * n_heads;
  l.lse_off = align256(rows * d * 4);
  l.status_off = l.lse_off + align256(rows * 4);
  l.total = l.status_off + align256(int64_t(splits) * batch * n_kv_heads * row_tiles * 4);
  return l;
}

__host__ __device__ inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

inline int row_tiles(int group, int max_q_len) { return ceil_div(group * max_q_len, kRows); }

// The longest key range any sequence can have: the whole cache (causal) or one chunk plus the queries that
// cross into the next one (chunked).
inline int max_range(int max_kv_len, int chunk, int max_q_len) {
  if (chunk <= 0) return max_kv_len;
  const int64_t c = int64_t(chunk) + max_q_len - 1;
  return c < max_kv_len ? int(c) : max_kv_len;
}

// Flash-decoding's wave heuristic: with fewer CTAs than about one wave, split the keys so the grid fills the
// SMs; among the split counts that do, the smallest within 85% of the best wave efficiency (fewer splits,
// less combine traffic).
inline int choose_splits(int64_t base_ctas, int range, int sms, int tile_keys, int ctas_per_sm) {
  const int tiles = ceil_div(range, tile_keys) * tile_keys / 64;  // in 64-key units whatever the stage
  int most = tiles / kMinTilesPerSplit;
  most = most < kMaxSplits ? most : kMaxSplits;
  const int64_t slots = int64_t(sms) * ctas_per_sm;
  if (most <= 1 || base_ctas <= 0 || base_ctas * 5 >= slots * 4) return 1;
  auto efficiency = [&](int s) {
    const double n = double(base_ctas) * s, waves = ceil(n / double(slots));
    return n / (waves * double(slots));
  };
  double best = 0;
  for (int s = 1; s <= most; ++s) best = fmax(best, efficiency(s));
  for (int s = 1; s <= most; ++s)
    if (efficiency(s) >= 0.85 * best) return s;
  return 1;
}

// The current device's SM count; no device, no plan (the split count, and so the workspace, depends on it).
inline cudaError_t sm_count(int* sms) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev);
  return e;
}

// The pipeline: 4 warps x 16 keys per stage, 3 stages, 2 CTAs per SM, plain cp.async (no L2 prefetch hint).
// Measured against the alternatives in kernels/NOTES.md (2 or 8 warps, 2 to 6 stages, 1 to 3 CTAs, bulk copies,
// one CTA for all KV heads): this one is fastest at every judged shape on the H200, where the hint that won 2%
// on the H100 costs 1-2%.
using Pipeline = Cfg<4, 3, 2, false>;

struct Plan {
  int splits, row_tiles;
  Layout ws;
};

inline Plan plan(int batch, int n_heads, int n_kv_heads, int head_dim, int max_q_len, int max_kv_len, int chunk,
                int sms) {
  Plan p{1, 0, {0, 0, 0}};
  if (batch <= 0 || max_q_len <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads != 0) return p;
  p.row_tiles = row_tiles(n_heads / n_kv_heads, max_q_len);
  p.splits = choose_splits(int64_t(batch) * n_kv_heads * p.row_tiles, max_range(max_kv_len, chunk, max_q_len),
                           sms, Pipeline::kTileKeys, Pipeline::kCtasPerSm);
  p.ws = layout(p.splits, batch, max_q_len, n_heads, n_kv_heads, p.row_tiles, head_dim);
  return p;
}

// ---- device side ----------------------------------------------------------------------------------------

struct Seq {
  int q0, q_len, seq_len;
  bool bad;
};

// Sequence b's metadata and the contract's consistency rule (attention_params.h).
__device__ __forceinline__ Seq read_seq(const L4kAttentionParams& p, int b) {
  Seq s;
  const int64_t q0 = p.cu_seqlens_q[b], q1 = p.cu_seqlens_q[b + 1];
  const int64_t ql = q1 - q0;
  s.q0 = int(q0);
  s.q_len = int(ql);
  s.seq_len = p.seq_lens_k[b];
  s.bad = paged_kv::sequence_scalars_bad(p, q0, ql, s.seq_len);
  return s;
}

// The split's tiles [begin, end) of the sequence's 64-key tiles; `active` splits are non-empty.
struct SplitRange {
  int lo, begin, end, active;
};

__device__ __forceinline__ SplitRange split_range(const Seq& s, int chunk, int splits, int split, int tile_keys) {
  SplitRange r;
  const paged_kv::KeyRange keys = paged_kv::sequence_key_range(s.seq_len, s.q_len, chunk);
  r.lo = keys.lo;
  const int tiles = ceil_div(keys.hi - keys.lo, tile_keys);
  const int per = ceil_div(tiles, splits);
  r.active = per > 0 ? ceil_div(tiles, per) : 0;
  r.begin = split * per;
  r.end = min(tiles, r.begin + per);
  return r;
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; bytes == 0 zero-fills the destination without reading the source.
template <bool HINT>
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int bytes) {
  if constexpr (HINT) {
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(bytes));
  } else {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(bytes));
  }
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// c += a (16x16, row) * b (16x8, col), bf16 in, f32 accumulate.
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <int D, class C>
__global__ void __launch_bounds__(C::kThreads, C::kCtasPerSm)
    decode_kernel(const L4kAttentionParams p, int splits, int n_rt, Layout ws) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* smem = reinterpret_cast<bf16*>(smem_raw);
  constexpr int kWarps = C::kWarps, kThreads = C::kThreads, kTileKeys = C::kTileKeys, kStages = C::kStages;
  __shared__ float red_m[kWarps][kRows], red_l[kWarps][kRows];

  int64_t id = blockIdx.x;
  const int rt = int(id % n_rt);
  id /= n_rt;
  const int g = int(id % p.n_kv_heads);
  id /= p.n_kv_heads;
  const int split = int(id % splits);
  const int b = int(id / splits);
  const int group = p.n_heads / p.n_kv_heads;
  const bool reporter = g == 0 && rt == 0 && split == 0;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  pdl_wait();
  pdl_launch_dependents();

  const Seq s = read_seq(p, b);
  if (s.bad) {
    // With several splits the combine kernel checks the same rule and counts the sequence.
    if (splits == 1 && reporter && tid == 0 && p.bad_seqs != nullptr) atomicAdd(p.bad_seqs, 1u);
    return;
  }
  const int rows = s.q_len * group, r0 = rt * kRows;
  if (r0 >= rows) return;
  const SplitRange sr = split_range(s, p.chunk, splits, split, kTileKeys);
  if (sr.begin >= sr.end) return;
  const int first_q = s.seq_len - s.q_len;
  const int r_last = min(r0 + kRows, rows) - 1;
  const int q_first = first_q + r0 / group, q_last = first_q + r_last / group;
  const int lo_last = paged_kv::chunk_start(q_last, p.chunk);

  // This thread's two rows of the m16 tile (mma fragment rows lane / 4 and lane / 4 + 8).
  const int fr = lane >> 2, fc = lane & 3;
  int qpos[2], qlo[2];
  uint32_t qa[D / 16][4];
  const bf16* q = static_cast<const bf16*>(p.q);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = r0 + fr + 8 * h;
    const bool valid = r < rows;
    qpos[h] = valid ? first_q + r / group : -1;  // -1: a padding row sees nothing
    qlo[h] = valid ? paged_kv::chunk_start(qpos[h], p.chunk) : 0;
    const bf16* qrow = q + ((int64_t(s.q0) + r / group) * p.n_heads + int64_t(g) * group + r % group) * D;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      qa[kk][h] = valid ? *reinterpret_cast<const uint32_t*>(qrow + kk * 16 + 2 * fc) : 0u;
      qa[kk][2 + h] = valid ? *reinterpret_cast<const uint32_t*>(qrow + kk * 16 + 2 * fc + 8) : 0u;
    }
  }

  // Loads: 16-byte chunk tid % kCpr of keys tid / kCpr + j * kKeysPerPass: consecutive lanes cover one key's
  // row, so every warp-wide cp.async reads whole 256-byte (128-byte) rows. The block ids of the next tile are
  // fetched right after a tile is issued, so their latency hides behind one iteration of work.
  constexpr int kCpr = D / 8;
  constexpr int kKeysPerPass = kThreads / kCpr;
  constexpr int kPasses = kTileKeys / kKeysPerPass;
  const int ld_chunk = tid % kCpr, ld_key = tid / kCpr;
  const int64_t n_blocks = p.slots / p.block_size;
  const bf16* kc = static_cast<const bf16*>(p.k_cache) + int64_t(g) * D + ld_chunk * 8;
  const bf16* vc = static_cast<const bf16*>(p.v_cache) + int64_t(g) * D + ld_chunk * 8;
  const int* table = p.block_table + int64_t(b) * p.max_blocks;
  const int64_t slot_stride = int64_t(p.n_kv_heads) * D;
  bool bad_block = false;
  int blk[kPasses], in_blk[kPasses];
  auto fetch = [&](int tile) {
    const int pos0 = sr.lo + tile * kTileKeys + ld_key;
    int bi = pos0 / p.block_size, off = pos0 - bi * p.block_size;
#pragma unroll
    for (int j = 0; j < kPasses; ++j) {
      const int pos = pos0 + j * kKeysPerPass;
      blk[j] = pos < s.seq_len ? table[bi] : -1;
      in_blk[j] = pos < s.seq_len ? off : -1;  // -1: past the sequence, zero-filled
      off += kKeysPerPass;
      while (off >= p.block_size) off -= p.block_size, ++bi;
    }
  };
  auto issue = [&](int tile, int buf) {
    bf16* ks = smem + buf * kStageElems<D, C> + ld_key * kStride<D> + ld_chunk * 8;
    bf16* vs = ks + kTileKeys * kStride<D>;
#pragma unroll
    for (int j = 0; j < kPasses; ++j) {
      const bf16* kg = kc;
      const bf16* vg = vc;
      int bytes = 0;
      if (in_blk[j] >= 0) {
        // paged_kv::block_id_ok's rule, spelled out: through the helper ptxas lays out this loop differently.
        if (blk[j] < 0 || blk[j] >= n_blocks) {
          bad_block = true;
        } else {
          const int64_t off = (int64_t(blk[j]) * p.block_size + in_blk[j]) * slot_stride;
          kg += off;
          vg += off;
          bytes = 16;
        }
      }
      cp_async16<C::kHint>(ks + j * kKeysPerPass * kStride<D>, kg, bytes);
      cp_async16<C::kHint>(vs + j * kKeysPerPass * kStride<D>, vg, bytes);
    }
    if (tile + 1 < sr.end) fetch(tile + 1);
  };

  const float scale = p.softmax_scale * kLog2e;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

  const int n_tiles = sr.end - sr.begin;
  fetch(sr.begin);
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < n_tiles) issue(sr.begin + i, i);
    cp_async_commit();
  }
  for (int i = 0; i < n_tiles; ++i) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    if (i + kStages - 1 < n_tiles) issue(sr.begin + i + kStages - 1, (i + kStages - 1) % kStages);
    cp_async_commit();

    const int p0 = sr.lo + (sr.begin + i) * kTileKeys + warp * kWarpKeys;
    // Warp-uniform: skip keys no row of the tile sees (past the last query, before the first chunk start).
    if (p0 > q_last || p0 + kWarpKeys - 1 < paged_kv::chunk_start(q_first, p.chunk)) continue;
    const bf16* ks = smem + (i % kStages) * kStageElems<D, C> + warp * kWarpKeys * kStride<D>;
    const bf16* vs = ks + kTileKeys * kStride<D>;
    const int mi = lane >> 3, mr = lane & 7;

    float sc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t kb[4];
      ldmatrix_x4(kb, ks + (8 * (mi >> 1) + mr) * kStride<D> + kk * 16 + 8 * (mi & 1));
      mma16816(sc[0], qa[kk], kb[0], kb[1]);
      mma16816(sc[1], qa[kk], kb[2], kb[3]);
    }
    // Every row sees every key of this warp's 16 iff the keys lie in [lo of the last query, first query].
    const bool full = p0 >= lo_last && p0 + kWarpKeys - 1 <= q_first;
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e >> 1, key = p0 + 8 * j + 2 * fc + (e & 1);
        float x = sc[j][e] * scale;
        if (!full && (key > qpos[h] || key < qlo[h])) x = -INFINITY;
        sc[j][e] = x;
        mx[h] = fmaxf(mx[h], x);
      }
    float alpha[2], mu[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      const float mn = fmaxf(m[h], mx[h]);
      mu[h] = mn == -INFINITY ? 0.f : mn;
      alpha[h] = exp2f(m[h] - mu[h]);
      m[h] = mn;
    }
    float rs[2] = {0.f, 0.f};
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float e2 = exp2f(sc[j][e] - mu[e >> 1]);
        sc[j][e] = e2;
        rs[e >> 1] += e2;
      }
    l[0] = l[0] * alpha[0] + rs[0];
    l[1] = l[1] * alpha[1] + rs[1];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      o[n][0] *= alpha[0];
      o[n][1] *= alpha[0];
      o[n][2] *= alpha[1];
      o[n][3] *= alpha[1];
    }
    const uint32_t pa[4] = {pack_bf16(sc[0][0], sc[0][1]), pack_bf16(sc[0][2], sc[0][3]),
                            pack_bf16(sc[1][0], sc[1][1]), pack_bf16(sc[1][2], sc[1][3])};
#pragma unroll
    for (int nn = 0; nn < D / 16; ++nn) {
      uint32_t vb[4];
      ldmatrix_x4_trans(vb, vs + (8 * (mi & 1) + mr) * kStride<D> + nn * 16 + 8 * (mi >> 1));
      mma16816(o[2 * nn], pa, vb[0], vb[1]);
      mma16816(o[2 * nn + 1], pa, vb[2], vb[3]);
    }
  }
  cp_async_wait<0>();

  // Merge the warps: each row's max and sum over warps, each warp's O scaled into shared memory, then summed.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    if (fc == 0) {
      red_m[warp][fr + 8 * h] = m[h];
      red_l[warp][fr + 8 * h] = l[h];
    }
  }
  const bool any_bad = __syncthreads_or(bad_block);
  if (any_bad && splits == 1) {
    if (reporter && tid == 0 && p.bad_seqs != nullptr) atomicAdd(p.bad_seqs, 1u);
    return;
  }
  float* merge = reinterpret_cast<float*>(smem_raw);  // [warp][row][D + 4]
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = fr + 8 * h;
    float mm = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, red_m[w][row]);
    const float mu = mm == -INFINITY ? 0.f : mm;
    float ll = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) ll += red_l[w][row] * exp2f(red_m[w][row] - mu);
    const float f = ll > 0.f ? exp2f(m[h] - mu) / ll : 0.f;
    float* dst = merge + (warp * kRows + row) * (D + 4);
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<float2*>(dst + n * 8 + 2 * fc) = make_float2(o[n][2 * h] * f, o[n][2 * h + 1] * f);
  }
  __syncthreads();

  bf16* out = static_cast<bf16*>(p.out);
  float* o_part = static_cast<float*>(p.workspace);
  for (int idx = tid; idx < kRows * D / 4; idx += kThreads) {
    const int row = idx / (D / 4), c = (idx % (D / 4)) * 4, r = r0 + row;
    if (r >= rows) continue;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float4 v = *reinterpret_cast<const float4*>(merge + (w * kRows + row) * (D + 4) + c);
      acc.x += v.x, acc.y += v.y, acc.z += v.z, acc.w += v.w;
    }
    const int qi = r / group, h = g * group + r % group;
    if (splits == 1) {
      __nv_bfloat162 lo2 = __floats2bfloat162_rn(acc.x, acc.y), hi2 = __floats2bfloat162_rn(acc.z, acc.w);
      uint2 raw = make_uint2(*reinterpret_cast<uint32_t*>(&lo2), *reinterpret_cast<uint32_t*>(&hi2));
      *reinterpret_cast<uint2*>(out + ((int64_t(s.q0) + qi) * p.n_heads + h) * D + c) = raw;
    } else {
      const int64_t prow = ((int64_t(split) * p.batch + b) * p.max_q_len + qi) * p.n_heads + h;
      *reinterpret_cast<float4*>(o_part + prow * D + c) = acc;
    }
  }
  if (splits > 1) {
    if (tid < kRows && r0 + tid < rows) {
      const int row = tid, r = r0 + row;
      float mm = -INFINITY;
      for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, red_m[w][row]);
      const float mu = mm == -INFINITY ? 0.f : mm;
      float ll = 0.f;
      for (int w = 0; w < kWarps; ++w) ll += red_l[w][row] * exp2f(red_m[w][row] - mu);
      const int64_t prow =
          ((int64_t(split) * p.batch + b) * p.max_q_len + r / group) * p.n_heads + g * group + r % group;
      reinterpret_cast<float*>(static_cast<char*>(p.workspace) + ws.lse_off)[prow] =
          ll > 0.f ? mu + log2f(ll) : -INFINITY;
    }
    if (tid == 0) {
      int* status = reinterpret_cast<int*>(static_cast<char*>(p.workspace) + ws.status_off);
      status[((int64_t(split) * p.batch + b) * p.n_kv_heads + g) * n_rt + rt] = any_bad ? 1 : 0;
    }
  }
}

// One warp per output row (b, qi, h): merge the active splits' partial rows by their log-sum-exp.
constexpr int kCombineWarps = 4;

template <int D>
__global__ void __launch_bounds__(kCombineWarps * 32) combine_kernel(const L4kAttentionParams p, int splits,
                                                                     int n_rt, int tile_keys, Layout ws) {
  constexpr int kPer = D / 32;  // elements per lane
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kCombineWarps + (threadIdx.x >> 5);
  pdl_wait();
  pdl_launch_dependents();
  if (row >= int64_t(p.batch) * p.max_q_len * p.n_heads) return;
  const int h = int(row % p.n_heads);
  const int qi = int(row / p.n_heads % p.max_q_len);
  const int b = int(row / p.n_heads / p.max_q_len);
  const bool reporter = qi == 0 && h == 0 && lane == 0;
  const Seq s = read_seq(p, b);
  if (s.bad) {
    if (reporter && p.bad_seqs != nullptr) atomicAdd(p.bad_seqs, 1u);
    return;
  }
  if (qi >= s.q_len) return;
  const int group = p.n_heads / p.n_kv_heads, g = h / group, rt = (qi * group + h % group) / kRows;
  const SplitRange sr = split_range(s, p.chunk, splits, 0, tile_keys);
  const char* base = static_cast<const char*>(p.workspace);
  const int* status = reinterpret_cast<const int*>(base + ws.status_off);
  const float* lse = reinterpret_cast<const float*>(base + ws.lse_off);
  const float* o_part = reinterpret_cast<const float*>(base);
  bool bad = false;
  float mx = -INFINITY;
  for (int sp = lane; sp < sr.active; sp += 32) {
    bad |= status[((int64_t(sp) * p.batch + b) * p.n_kv_heads + g) * n_rt + rt] != 0;
    mx = fmaxf(mx, lse[((int64_t(sp) * p.batch + b) * p.max_q_len + qi) * p.n_heads + h]);
  }
  if (__any_sync(0xffffffffu, bad)) {
    if (reporter && p.bad_seqs != nullptr) atomicAdd(p.bad_seqs, 1u);
    return;
  }
  mx = warp_reduce(mx, MaxOp{});
  const float mu = mx == -INFINITY ? 0.f : mx;
  float acc[kPer] = {};
  float wsum = 0.f;
  for (int sp = 0; sp < sr.active; ++sp) {
    const int64_t prow = ((int64_t(sp) * p.batch + b) * p.max_q_len + qi) * p.n_heads + h;
    const float w = exp2f(lse[prow] - mu);
    if (w == 0.f) continue;  // a split in which this row saw no key (its partial row is zeros)
    wsum += w;
    const float* src = o_part + prow * D + lane * kPer;
    if constexpr (kPer == 4) {
      const float4 v = *reinterpret_cast<const float4*>(src);
      acc[0] += w * v.x, acc[1] += w * v.y, acc[2] += w * v.z, acc[3] += w * v.w;
    } else {
      const float2 v = *reinterpret_cast<const float2*>(src);
      acc[0] += w * v.x, acc[1] += w * v.y;
    }
  }
  const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
  bf16* dst = static_cast<bf16*>(p.out) + ((int64_t(s.q0) + qi) * p.n_heads + h) * D + lane * kPer;
#pragma unroll
  for (int i = 0; i < kPer; i += 2)
    *reinterpret_cast<__nv_bfloat162*>(dst + i) = __floats2bfloat162_rn(acc[i] * inv, acc[i + 1] * inv);
}

template <int D, class C>
int launch_cfg(const L4kAttentionParams& p, const Plan& pl, cudaStream_t stream) {
  const int64_t ctas = int64_t(p.batch) * p.n_kv_heads * pl.row_tiles * pl.splits;
  if (ctas > 0x7fffffff) return static_cast<int>(cudaErrorInvalidConfiguration);
  const size_t smem = smem_bytes<D, C>();
  cudaError_t e = cudaFuncSetAttribute(decode_kernel<D, C>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  // Two CTAs of ~105 KB each only fit when the driver gives shared memory the largest carveout.
  if (e == cudaSuccess)
    e = cudaFuncSetAttribute(decode_kernel<D, C>, cudaFuncAttributePreferredSharedMemoryCarveout,
                             int(cudaSharedmemCarveoutMaxShared));
  if (e != cudaSuccess) return static_cast<int>(e);
  LaunchShape shape{dim3(unsigned(ctas)), dim3(C::kThreads)};
  shape.smem = smem;
  e = launch_pdl(decode_kernel<D, C>, shape, stream, p, pl.splits, pl.row_tiles, pl.ws);
  if (e == cudaSuccess && pl.splits > 1) {
    const int64_t rows = int64_t(p.batch) * p.max_q_len * p.n_heads;
    const int64_t blocks = (rows + kCombineWarps - 1) / kCombineWarps;
    if (blocks > 0x7fffffff) return static_cast<int>(cudaErrorInvalidConfiguration);
    const LaunchShape combine{dim3(unsigned(blocks)), dim3(kCombineWarps * 32)};
    e = launch_pdl(combine_kernel<D>, combine, stream, p, pl.splits, pl.row_tiles, C::kTileKeys, pl.ws);
  }
  return launch_result(e);
}

template <int D>
int launch(const L4kAttentionParams& p, cudaStream_t stream) {
  int sms = 0;
  const cudaError_t e = sm_count(&sms);
  if (e != cudaSuccess) return static_cast<int>(e);
  const Plan pl = plan(p.batch, p.n_heads, p.n_kv_heads, D, p.max_q_len, p.max_blocks * p.block_size, p.chunk, sms);
  if (pl.ws.total > p.workspace_bytes || (pl.ws.total > 0 && p.workspace == nullptr)) return L4K_STATUS_BAD_WORKSPACE;
  return launch_cfg<D, Pipeline>(p, pl, stream);
}

}  // namespace decode
}  // namespace l4k

// The launcher's plan for these sizes on a device of `sms` SMs (ops/attention_decode.rs asks the current device's
// count through l4k_internal_current_sm_count, tests pass one): the key splits (1: no combine step) and the workspace
// bytes (0 when the keys are not split). max_kv_len = max_blocks * block_size; chunk as in L4kAttentionParams.
extern "C" void l4k_internal_attention_decode_plan(int32_t batch, int32_t n_heads, int32_t n_kv_heads,
                                                   int32_t head_dim, int32_t max_q_len, int32_t max_kv_len,
                                                   int32_t chunk, int32_t sms, int32_t* splits,
                                                   int64_t* workspace_bytes) {
  const auto pl = l4k::decode::plan(batch, n_heads, n_kv_heads, head_dim, max_q_len, max_kv_len, chunk, sms);
  *splits = pl.splits;
  *workspace_bytes = pl.ws.total;
}

// The current device's SM count into *sms; a cudaError_t (no device: an error, never a guess).
extern "C" int l4k_internal_current_sm_count(int32_t* sms) {
  int n = 0;
  const cudaError_t e = l4k::decode::sm_count(&n);
  *sms = n;
  return static_cast<int>(e);
}

// The caller (ops/attention_decode.rs) validated the shapes; batch, max_q_len > 0.
extern "C" int l4k_launch_attention_decode(const L4kAttentionParams* p, cudaStream_t stream) {
  switch (p->head_dim) {
    case 64: return l4k::decode::launch<64>(*p, stream);
    case 128: return l4k::decode::launch<128>(*p, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}
