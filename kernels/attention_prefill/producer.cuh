// The prefill kernel's producer warpgroup (kernels/attention_prefill.cu): Q once, then K_0, K_1, V_0, K_2, V_1, ...
// (the consumers' order) into the two-stage rings of Smem. Whole key tiles by TMA when the launcher allows it
// (use_tma: block_size and the chunk multiples of 64, so each 64-key half tile is 64 consecutive cache slots of one
// block; thread 0 issues the boxes with expect_tx, the others arrive), every other tile (each sequence's partial
// last one, every tile of other layouts) by cp.async with rows addressed one by one through the block table
// (zero-filled past the end), announced on the stage's full mbarrier by cp.async.mbarrier.arrive.noinc.
#pragma once
#include <cuda.h>
#include <stdint.h>

#include "paged_kv.cuh"
#include "ptx.cuh"
#include "tile.cuh"

namespace l4k {
namespace attn_prefill {

template <int D>
struct Producer {
  static constexpr int kChunks = D / 8;               // 16-byte chunks per row
  static constexpr int kRowsPerPass = 128 / kChunks;  // rows one pass of the producer warpgroup covers
  // K/V tiles: warp w copies rows 32 w .. 32 w + 31, lane l looks up the slot of row 32 w + l (one block-table
  // read a thread per tile, shared by K and V, issued a tile ahead) and the warp's copies take their slots by
  // shuffle: one instruction copies 32 / kChunks whole rows.
  static constexpr int kRowsPerCopy = 32 / kChunks;

  const L4kAttentionParams& p;
  Smem<D>& sm;
  const CUtensorMap* tm_k;
  const CUtensorMap* tm_v;
  const CtaWork& w;
  const int tid, lane;
  const bf16* q_g;
  const bf16* k_g;
  const bf16* v_g;
  const int32_t* table;
  const int bs_shift;
  const int use_tma;

  __device__ __forceinline__ Producer(const L4kAttentionParams& p_, Smem<D>& sm_, const CUtensorMap* tm_k_,
                                      const CUtensorMap* tm_v_, int use_tma_, const CtaWork& w_, int tid_,
                                      int lane_)
      : p(p_),
        sm(sm_),
        tm_k(tm_k_),
        tm_v(tm_v_),
        w(w_),
        tid(tid_),
        lane(lane_),
        q_g(static_cast<const bf16*>(p_.q)),
        k_g(static_cast<const bf16*>(p_.k_cache)),
        v_g(static_cast<const bf16*>(p_.v_cache)),
        table(p_.block_table + static_cast<int64_t>(w_.b) * p_.max_blocks),
        bs_shift(paged_kv::block_shift(p_.block_size)),
        use_tma(use_tma_) {}

  // Set by issue_first_k. pwarp: the warp's rows of a K/V tile; sub, col: this lane's row and chunk within one copy.
  int pwarp = 0, sub = 0, col = 0;
  // Whole tiles by TMA (the launcher's key_tile_path).
  bool tma = false;
  // A whole first key tile goes by TMA as soon as the producer starts, ahead of run()'s loop.
  bool k0_early = false;

  // The CTA's Q tile by cp.async, rows past the sequence zero-filled; announced on q_full.
  __device__ __forceinline__ void load_q() {
    const int chunk_col = tid % kChunks;
    const int row_base = tid / kChunks;
#pragma unroll 4
    for (int r = row_base; r < kBlockM; r += kRowsPerPass) {
      const bool in = r < w.rows;
      const int64_t row = static_cast<int64_t>(w.q_begin) + w.m0 + (in ? r : 0);
      ptx::cp_async16(&sm.q[swz<kBlockM>(r, chunk_col)], q_g + (row * p.n_heads + w.h) * D + chunk_col * 8,
                      in ? 16 : 0);
    }
    ptx::cp_async_arrive(&sm.q_full);
  }

  // Slot of row pwarp * 32 + lane of key tile t (-1 past the sequence).
  __device__ __forceinline__ int lookup(int t) const {
    const int pos = w.keys.lo + t * kBlockN + pwarp * 32 + lane;
    return pos < w.seq_len ? paged_kv::slot_of(table, pos, p.block_size, bs_shift) : -1;
  }

  __device__ __forceinline__ void load(bf16* dst, const bf16* src, int my_slot) {
#pragma unroll
    for (int i = 0; i < 32 / kRowsPerCopy; ++i) {
      const int rl = i * kRowsPerCopy + sub;
      const int slot = __shfl_sync(0xffffffffu, my_slot, rl);
      const bool in = slot >= 0;
      const int64_t off = (static_cast<int64_t>(in ? slot : 0) * p.n_kv_heads + w.kvh) * D + col * 8;
      ptx::cp_async16(&dst[swz<kBlockN>(pwarp * 32 + rl, col)], src + off, in ? 16 : 0);
    }
  }

  // Tile t into dst, announced on full: by TMA (thread 0 issues; the others arrive) when it is whole, else by
  // every producer thread's cp.async.
  __device__ __forceinline__ void issue(bf16* dst, const bf16* src, const CUtensorMap* map, uint64_t* full, int t,
                                        int my_slot) {
    const int k0 = w.keys.lo + t * kBlockN;
    if (tma && k0 + kBlockN <= w.seq_len) {
      if (tid == 0) {
        ptx::mbar_arrive_expect_tx(full, kBlockN * D * 2);
#pragma unroll
        for (int half = 0; half < kBlockN / 64; ++half) {
          const int slot = paged_kv::slot_of(table, k0 + 64 * half, p.block_size, bs_shift);
#pragma unroll
          for (int cb = 0; cb < D / 64; ++cb)
            ptx::tma_load_3d(dst + cb * kBlockN * 64 + half * 64 * 64, map, cb * 64, w.kvh, slot, full);
        }
      } else {
        ptx::mbar_arrive(full);
      }
    } else {
      load(dst, src, my_slot);
      ptx::cp_async_arrive(full);
    }
  }

  // Before the verdict: K_0 when it can go by TMA (the consumers check the block ids meanwhile; the producer's
  // own cp.async loads would queue behind its Q copies).
  __device__ __forceinline__ void issue_first_k() {
    pwarp = tid >> 5, sub = lane / kChunks, col = lane % kChunks;
    tma = use_tma != 0;
    k0_early = tma && w.keys.lo + kBlockN <= w.seq_len;
    if (k0_early) issue(sm.k[0], k_g, tm_k, &sm.k_full[0], 0, -1);
  }

  // After the verdict: every key tile the mask needs, K_{t+1} ahead of V_t, each stage reused once the consumers
  // free it.
  __device__ __forceinline__ void run() {
    // Q of the CTA one wave (one block id per SM) ahead into L2: its CTA starts about when this one ends, and its
    // first S waits on Q, which otherwise comes from HBM (run 13: 1.95 us of every CTA's start).
    {
      const unsigned n_sms = ptx::nsmid();
      const int ahead = blockIdx.x + gridDim.x * blockIdx.y + static_cast<int>(n_sms);
      const int h2 = ahead % gridDim.x, y2 = ahead / gridDim.x;
      const int m2 = (static_cast<int>(gridDim.y) - 1 - y2) * kBlockM;
      if (y2 < static_cast<int>(gridDim.y) && m2 + tid < w.q_len) {
        const bf16* row = q_g + ((static_cast<int64_t>(w.q_begin) + m2 + tid) * p.n_heads + h2) * D;
#pragma unroll
        for (int c = 0; c < D * 2; c += 128) ptx::prefetch_l2(reinterpret_cast<const char*>(row) + c);
      }
    }
    const int n_tiles = w.n_tiles;
    int slot_v = lookup(0);  // rows of tile t (V_t still to issue)
    if (!k0_early) {
      ptx::mbar_wait(&sm.k_empty[0], 1);
      issue(sm.k[0], k_g, tm_k, &sm.k_full[0], 0, slot_v);
    }
    int slot_k = n_tiles > 1 ? lookup(1) : -1;  // rows of tile t + 1
    for (int t = 0; t < n_tiles; ++t) {
      if (t + 1 < n_tiles) {
        const int st = (t + 1) % kStages;
        ptx::mbar_wait(&sm.k_empty[st], (((t + 1) / kStages) & 1) ^ 1);
        issue(sm.k[st], k_g, tm_k, &sm.k_full[st], t + 1, slot_k);
      }
      const int st = t % kStages;
      ptx::mbar_wait(&sm.v_empty[st], ((t / kStages) & 1) ^ 1);
      issue(sm.v[st], v_g, tm_v, &sm.v_full[st], t, slot_v);
      slot_v = slot_k;
      slot_k = t + 2 < n_tiles ? lookup(t + 2) : -1;
    }
    ptx::cp_async_wait_all();  // nothing in flight when the producer leaves
  }
};

}  // namespace attn_prefill
}  // namespace l4k
