// Decode attention's cp.async main loop: the path for caches whose 64-key tiles are not 64 consecutive slots of
// one block (block_size or chunk not a multiple of 64, an unaligned cache) or when the driver gives no tensor maps.
//
// 4 warps, one KV head per CTA, 2 CTAs per SM; a 64-key stage holds K and V [64, D] bf16 in rows padded by 16 bytes
// (ldmatrix conflict-free), filled with 16-byte cp.async, 3 stages (two in flight while one is computed). Thread
// tid copies 16-byte chunk tid % (D / 8) of every (128 / (D / 8))-th key, so each warp-wide copy reads whole
// 256-byte (128-byte) rows. Every key is addressed through the block table on its own: a block id outside the cache
// marks the sequence bad and its bytes are zero-filled instead of read, and so are keys past the sequence.
#pragma once
#include "tile.cuh"

namespace l4k {
namespace decode {

namespace cp_async {
constexpr int kWarps = 4, kThreads = 32 * kWarps, kStages = 3, kCtasPerSm = kPlanCtasPerSm;
static_assert(kWarps * kWarpKeys == kTileKeys, "a stage is the plan's 64-key tile");

template <int D>
constexpr int kStride = D + 8;  // shared row stride in elements: +16 bytes makes ldmatrix conflict-free
template <int D>
constexpr int kStageElems = 2 * kTileKeys * kStride<D>;  // K then V
template <int D>
constexpr size_t smem_bytes() {
  const size_t pipe = size_t(kStages) * kStageElems<D> * sizeof(bf16);
  const size_t merge = size_t(kWarps) * kRows * (D + 4) * sizeof(float);
  return pipe > merge ? pipe : merge;
}

// 16 bytes global -> shared; bytes == 0 zero-fills the destination without reading the source.
__device__ __forceinline__ void copy16(void* dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(ptx::smem_addr(dst)), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
}  // namespace cp_async

template <int D>
__global__ void __launch_bounds__(cp_async::kThreads, cp_async::kCtasPerSm)
    decode_kernel(const L4kAttentionParams p, int splits, int n_rt, Layout ws) {
  using namespace cp_async;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* smem = reinterpret_cast<bf16*>(smem_raw);
  __shared__ WarpStats<kWarps> stats;

  const Cta c = cta_of<1>(p, splits, n_rt);
  const int g = c.kv0;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  Seq s;
  RowTile t;
  SplitRange sr;
  if (!cta_work(p, c, tid, s, t, sr)) return;

  WarpSoftmax<D> w;
  w.init(p, s, c, t, g, lane);

  // The block ids of the next tile are fetched right after a tile is issued, so their latency hides behind one
  // iteration of work.
  constexpr int kCpr = D / 8;
  constexpr int kKeysPerPass = kThreads / kCpr;
  constexpr int kPasses = kTileKeys / kKeysPerPass;
  const int ld_chunk = tid % kCpr, ld_key = tid / kCpr;
  const int64_t n_blocks = p.slots / p.block_size;
  const bf16* kc = static_cast<const bf16*>(p.k_cache) + int64_t(g) * D + ld_chunk * 8;
  const bf16* vc = static_cast<const bf16*>(p.v_cache) + int64_t(g) * D + ld_chunk * 8;
  const int* table = p.block_table + int64_t(c.b) * p.max_blocks;
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
    bf16* ks = smem + buf * kStageElems<D> + ld_key * kStride<D> + ld_chunk * 8;
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
      copy16(ks + j * kKeysPerPass * kStride<D>, kg, bytes);
      copy16(vs + j * kKeysPerPass * kStride<D>, vg, bytes);
    }
    if (tile + 1 < sr.end) fetch(tile + 1);
  };

  const float scale = p.softmax_scale * kLog2e;
  const int n_tiles = sr.end - sr.begin;
  fetch(sr.begin);
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < n_tiles) issue(sr.begin + i, i);
    commit();
  }
  for (int i = 0; i < n_tiles; ++i) {
    cp_async::wait<kStages - 2>();
    __syncthreads();
    if (i + kStages - 1 < n_tiles) issue(sr.begin + i + kStages - 1, (i + kStages - 1) % kStages);
    commit();

    const int p0 = sr.lo + (sr.begin + i) * kTileKeys + warp * kWarpKeys;
    // Warp-uniform: skip keys no row of the tile sees (past the last query, before the first chunk start).
    if (p0 > t.q_last || p0 + kWarpKeys - 1 < t.lo_first) continue;
    const bf16* ks = smem + (i % kStages) * kStageElems<D> + warp * kWarpKeys * kStride<D>;
    const bf16* vs = ks + kTileKeys * kStride<D>;
    w.attend([&](int j, int d) { return ks + j * kStride<D> + d; }, [&](int j, int d) { return vs + j * kStride<D> + d; },
             p0, t, scale, lane);
  }
  cp_async::wait<0>();
  write_rows<D, 1>(p, ws, s, c, t, w, bad_block, reinterpret_cast<float*>(smem_raw), stats, tid);
}

}  // namespace decode
}  // namespace l4k
