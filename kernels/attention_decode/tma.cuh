// Decode attention's TMA main loop: the path whenever every 64-key tile is 64 consecutive slots of one block
// (paged_kv::key_tile_path), Llama 4's block sizes included.
//
// Why TMA here: the cp.async loop spends 2048 16-byte copies (and their address math through the block table) per
// stage; a tensor-map box moves 64 keys x 128 bytes in one instruction, so one thread keeps the stages in flight
// and the other warps only compute. Measured on the H200 (NOTES.md, attention_decode): 6-10% faster at batch 64 x
// 8192 and batch 8 x 32768, bit for bit the cp.async loop's output.
//
// HEADS KV heads per CTA (2 when n_kv_heads is even: 8 warps, 1 CTA per SM; else 1: 4 warps, 2 CTAs per SM), 4
// warps per head, each warp keys 16 (w % 4) .. of every stage, as the cp.async loop. A stage is
// [K, V][dim half][head][64 keys][64 dims], each [64][64] block one box of the (dims, head, slot) map in the
// 128-byte swizzle (16-byte chunk c of key j at chunk c ^ (j & 7); boxes on 1024-byte boundaries), read by ldmatrix
// without conflicts or padding. 3 stages on 3 mbarriers: thread 0 arms a stage's barrier with its byte count and
// issues its boxes after the CTA barrier that retires the stage's previous use; the block id of the tile after
// that is read one iteration ahead, so its latency hides behind a stage of work.
// Edges: a sequence's partial last tile is loaded whole (its slots lie in the same block); the V rows past the
// sequence are zeroed in shared memory before use (their scores are masked to -inf, but 0 x NaN would not be 0)
// and the K rows need nothing (masked). A block id outside the cache marks the sequence bad and points the box past
// the cache: TMA fills it with zeros and still counts its bytes, so the barrier's phase completes.
#pragma once
#include "tile.cuh"

namespace l4k {
namespace decode {

namespace tma {
constexpr int kStages = 3;  // the shipped depth (bench/experiments/attention_decode_tma.cu instantiates others)
constexpr int kBox = kTileKeys * 64;  // elements of one box: 64 keys x 64 dims, 8 KB

template <int D, int HEADS>
constexpr int kStageElems = 2 * (D / 64) * HEADS * kBox;
template <int D, int HEADS>
constexpr uint32_t kStageBytes = kStageElems<D, HEADS> * 2;
template <int HEADS>
constexpr int kThreads = 128 * HEADS;
template <int HEADS>
constexpr int kCtasPerSm = HEADS == 1 ? 2 : 1;

template <int D, int HEADS, int STAGES = kStages>
constexpr size_t smem_bytes() {
  const size_t pipe = size_t(STAGES) * kStageBytes<D, HEADS>;
  const size_t merge = size_t(4 * HEADS) * kRows * (D + 4) * sizeof(float);
  return (pipe > merge ? pipe : merge) + 1024;  // + slack to align the stages to the swizzle's 1024-byte period
}

template <int D, int HEADS>
__device__ __forceinline__ int box_off(int tensor, int half, int h) {
  return ((tensor * (D / 64) + half) * HEADS + h) * kBox;
}
// Element offset of (tensor, head h, key j, dims d .. d + 7) in a stage; d % 8 == 0.
template <int D, int HEADS>
__device__ __forceinline__ int stage_off(int tensor, int h, int j, int d) {
  return box_off<D, HEADS>(tensor, d >> 6, h) + j * 64 + ((((d & 63) >> 3) ^ (j & 7)) << 3);
}
}  // namespace tma

// STAGES, MIN_CTAS: the pipeline depth and the resident CTAs per SM the registers are budgeted for; the library
// launches the defaults, the experiment its sweep.
template <int D, int HEADS, int STAGES = tma::kStages, int MIN_CTAS = tma::kCtasPerSm<HEADS>>
__global__ void __launch_bounds__(tma::kThreads<HEADS>, MIN_CTAS)
    decode_tma_kernel(const L4kAttentionParams p, const __grid_constant__ CUtensorMap tm_k,
                      const __grid_constant__ CUtensorMap tm_v, int splits, int n_rt, Layout ws) {
  using namespace tma;
  constexpr int kWarps = 4 * HEADS;
  extern __shared__ __align__(1024) unsigned char tma_smem[];
  bf16* smem = reinterpret_cast<bf16*>((reinterpret_cast<uintptr_t>(tma_smem) + 1023) & ~uintptr_t(1023));
  __shared__ WarpStats<kWarps> stats;
  __shared__ uint64_t full[STAGES];

  const Cta c = cta_of<HEADS>(p, splits, n_rt);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int hh = warp >> 2, wk = warp & 3;  // head within the CTA, key quarter of the stage
  if (tid == 0) {
    // Kernel parameters, not memory a predecessor writes: before the PDL wait.
    ptx::prefetch_tensormap(&tm_k);
    ptx::prefetch_tensormap(&tm_v);
  }

  Seq s;
  RowTile t;
  SplitRange sr;
  if (!cta_work(p, c, tid, s, t, sr)) return;

  if (tid == 0) {
#pragma unroll
    for (int st = 0; st < STAGES; ++st) ptx::mbar_init(&full[st], 1);
    ptx::fence_mbar_init();
  }

  // Thread 0's side: the slot of a tile's first key, or a slot past the cache for a bad block id.
  const int64_t n_blocks = p.slots / p.block_size;
  const int* table = p.block_table + int64_t(c.b) * p.max_blocks;
  bool bad_block = false;
  auto tile_slot = [&](int tile) {
    const int pos = sr.lo + tile * kTileKeys;
    const int bi = pos / p.block_size, off = pos - bi * p.block_size;
    const int blk = table[bi];
    if (blk < 0 || blk >= n_blocks) {
      bad_block = true;
      return int(p.slots);
    }
    return blk * p.block_size + off;
  };
  auto issue = [&](int slot, int buf) {
    bf16* st = smem + buf * kStageElems<D, HEADS>;
    ptx::mbar_arrive_expect_tx(&full[buf], kStageBytes<D, HEADS>);
#pragma unroll
    for (int tensor = 0; tensor < 2; ++tensor)
#pragma unroll
      for (int half = 0; half < D / 64; ++half)
#pragma unroll
        for (int h = 0; h < HEADS; ++h)
          ptx::tma_load_3d(st + box_off<D, HEADS>(tensor, half, h), tensor ? &tm_v : &tm_k, half * 64, c.kv0 + h,
                           slot, &full[buf]);
  };

  WarpSoftmax<D> w;
  w.init(p, s, c, t, c.kv0 + hh, lane);
  // Thread 0 reads the first stages' block ids before the barrier, so their latency overlaps the Q loads'.
  const float scale = p.softmax_scale * kLog2e;
  const int n_tiles = sr.end - sr.begin;
  int first_slot[STAGES];
  if (tid == 0) {
#pragma unroll
    for (int i = 0; i < STAGES; ++i) first_slot[i] = i < n_tiles ? tile_slot(sr.begin + i) : 0;
  }
  __syncthreads();  // the barriers are initialized
  int next_slot = 0;
  if (tid == 0) {
#pragma unroll
    for (int i = 0; i < STAGES - 1; ++i)
      if (i < n_tiles) issue(first_slot[i], i);
    next_slot = first_slot[STAGES - 1];
  }
  for (int i = 0; i < n_tiles; ++i) {
    const int buf = i % STAGES;
    ptx::mbar_wait(&full[buf], (i / STAGES) & 1);
    bf16* st = smem + buf * kStageElems<D, HEADS>;
    const int pos0 = sr.lo + (sr.begin + i) * kTileKeys;
    const int valid = s.seq_len - pos0;
    if (valid < kTileKeys) {
      // V rows past the sequence to zeros: whole 128-byte box rows, so the swizzle does not matter.
      constexpr int kBoxes = (D / 64) * HEADS;
      const int per_box = (kTileKeys - valid) * 8;  // 16-byte chunks
      for (int k = tid; k < kBoxes * per_box; k += kThreads<HEADS>) {
        const int bx = k / per_box, r = k % per_box;
        *reinterpret_cast<uint4*>(st + box_off<D, HEADS>(1, bx / HEADS, bx % HEADS) + valid * 64 + r * 8) =
            make_uint4(0u, 0u, 0u, 0u);
      }
      ptx::fence_proxy_async();  // these generic writes before any later TMA write of the stage
    }
    // Every warp is done with the stage refilled next (read in iteration i - 1), and the zeros are visible.
    __syncthreads();
    if (tid == 0 && i + STAGES - 1 < n_tiles) {
      issue(next_slot, (i + STAGES - 1) % STAGES);
      if (i + STAGES < n_tiles) next_slot = tile_slot(sr.begin + i + STAGES);
    }

    const int p0 = pos0 + wk * kWarpKeys;
    // Warp-uniform: skip keys no row of the tile sees (past the last query, before the first chunk start).
    if (p0 > t.q_last || p0 + kWarpKeys - 1 < t.lo_first) continue;
    const int j0 = wk * kWarpKeys;
    w.attend([&](int j, int d) { return st + stage_off<D, HEADS>(0, hh, j0 + j, d); },
             [&](int j, int d) { return st + stage_off<D, HEADS>(1, hh, j0 + j, d); }, p0, t, scale, lane);
  }
  write_rows<D, HEADS>(p, ws, s, c, t, w, bad_block, reinterpret_cast<float*>(smem), stats, tid);
}

}  // namespace decode
}  // namespace l4k
