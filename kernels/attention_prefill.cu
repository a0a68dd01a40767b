// Prefill attention over the paged KV cache (contract: kernels/attention_params.h; op: ops/attention_prefill.rs;
// reference: reference/src/attention.rs). One kernel serves a fresh prefill (q_len == seq_len_k) and a prefill
// that continues a cache (q_len < seq_len_k): query i of sequence b sits at position seq_len_k - q_len + i.
// kernels/NOTES.md (attention_prefill) has the history: v1 (mma.sync), v2 (wgmma, 2 CTAs / SM), v3 (FA3's
// intra-warpgroup overlap), v4 (warp specialization, cp.async), v4 TMA, v5 (persistent grid), all measured and
// retired; their code is in git history (commit 0bffbd8 and before).
//
// FlashAttention-3's structure on Hopper, split by role as FA3's hopper/ is:
// - this file: the kernel entry (which CTA does what, the sequence checks, the role split), the launcher (grid,
//   TMA maps, the key-tile path) and the C entry points;
// - attention_prefill/producer.cuh: warpgroup 0 (setmaxnreg 56), Q and the K/V rings by TMA or cp.async;
// - attention_prefill/consumer.cuh: warpgroups 1 and 2 (setmaxnreg 224), wgmma with FA3's intra-warpgroup overlap
//   and inter-warpgroup ping-pong, the online softmax;
// - attention_prefill/epilogue.cuh: O / l out through shared memory in whole rows;
// - attention_prefill/tile.cuh: tile sizes, shared-memory layout, one CTA's work; attention_prefill/probe.cuh: the
//   phase hooks bench/experiments/attention_prefill_probe.cu times (no-ops here);
// - kernels/ptx.cuh (the instructions) and kernels/paged_kv.cuh (the cache contract), shared with decode.
// Schedule and checks:
// - One CTA per (query head, 128-query tile, sequence). The grid walks each sequence's tiles last first (the causal
//   tiles with the most keys start first, short ones fill the tail) and puts the heads of one tile side by side,
//   so the heads of one KV group read the same K/V tiles from L2.
// - Q, K, V tiles in shared memory in the 128-byte-swizzled layout wgmma reads (64-element column blocks,
//   16-byte chunks XOR-ed with the row).
// - The key-tile loop bounds come from the mask (paged_kv::key_range): a 128-query tile visits keys
//   [chunk start of its first query, its last query], so a chunked layer costs ~C/S of a causal one.
// - Bad metadata (kernels/attention_params.h): every CTA of a sequence checks the sequence's scalars before
//   loading anything and every block id of the positions the sequence reads before any K, V or Q load; a bad
//   sequence's CTAs write nothing and its (head 0, tile 0) CTA bumps *bad_seqs.
// - CTA start and end (v6, measured by bench/experiments/attention_prefill_probe.cu): the checks and the first
//   loads are on every CTA's critical path, so each CTA prefetches into L2 the Q tile of the CTA one wave ahead;
//   O leaves through shared memory in whole rows. The block-id check is one CTA-wide verdict before the roles
//   split (one barrier instruction for all 384 threads, see the kernel).
// - PDL (kernels/pdl.cuh): every thread waits for the previous kernel (the cache writes of rope) right after the
//   tensor maps' prefetch (kernel parameters, not memory a predecessor writes), before the sequence's scalars.

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

#include "attention_params.h"
#include "attention_prefill/consumer.cuh"
#include "attention_prefill/epilogue.cuh"
#include "attention_prefill/probe.cuh"
#include "attention_prefill/producer.cuh"
#include "attention_prefill/tile.cuh"
#include "common.cuh"
#include "paged_kv.cuh"
#include "paged_kv_tma.cuh"
#include "pdl.cuh"
#include "ptx.cuh"

namespace l4k {
namespace attn_prefill {

// 384 threads: warpgroup 0 the producer, warpgroups 1 and 2 the consumers (64 query rows each); one CTA per SM.
// use_tma: whole key tiles by TMA (the launcher's key_tile_path said the layout and the driver allow it).
template <int D, class Probe>
__global__ void __launch_bounds__(kThreads, 1)
    prefill_kernel(const L4kAttentionParams p, const __grid_constant__ CUtensorMap tm_k,
                   const __grid_constant__ CUtensorMap tm_v, int use_tma) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  Smem<D>& sm =
      *reinterpret_cast<Smem<D>*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});

  const int h = blockIdx.x;
  const int tile = gridDim.y - 1 - blockIdx.y;
  const int b = blockIdx.z;
  Probe::stamp(kProbeStart, threadIdx.x == 0);
  // The tensor maps' descriptors fetched while the sequence's scalars load (the first TMA would wait for them).
  if (threadIdx.x == 0 && use_tma) {
    ptx::prefetch_tensormap(&tm_k);
    ptx::prefetch_tensormap(&tm_v);
  }
  pdl_wait();
  pdl_launch_dependents();
  const int q_begin = p.cu_seqlens_q[b];
  const int q_len = p.cu_seqlens_q[b + 1] - q_begin;
  const int seq_len = p.seq_lens_k[b];
  // The scalars here; the block ids at the verdict below.
  if (paged_kv::sequence_is_bad_part(p, b, q_begin, q_len, seq_len, 0, 0)) {
    if (h == 0 && tile == 0 && threadIdx.x == 0 && p.bad_seqs != nullptr) atomicAdd(p.bad_seqs, 1u);
    return;
  }
  const int m0 = tile * kBlockM;
  if (m0 >= q_len) return;

  const int tid = threadIdx.x, lane = tid & 31;
  const int wg = tid >> 7;
  CtaWork w;
  w.h = h, w.tile = tile, w.b = b;
  w.q_begin = q_begin, w.q_len = q_len, w.seq_len = seq_len;
  w.m0 = m0;
  w.kvh = h / (p.n_heads / p.n_kv_heads);
  w.q_off = seq_len - q_len;
  w.rows = min(kBlockM, q_len - m0);
  w.q_first = w.q_off + m0, w.q_last = w.q_off + m0 + w.rows - 1;
  w.keys = paged_kv::key_range(w.q_first, w.q_last, p.chunk);
  w.n_tiles = (w.keys.hi - w.keys.lo + kBlockN - 1) / kBlockN;
  Probe::tiles(tid == 0, w.n_tiles);

  if (tid == 0) {
    ptx::mbar_init(&sm.q_full, 128);
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      ptx::mbar_init(&sm.k_full[s], 128);
      ptx::mbar_init(&sm.v_full[s], 128);
      ptx::mbar_init(&sm.k_empty[s], kConsumerWarps);
      ptx::mbar_init(&sm.v_empty[s], kConsumerWarps);
    }
  }
  __syncthreads();

  // The block-id verdict: one CTA-wide OR over the consumers' block-id checks (two table reads a thread at most),
  // reached by every thread at this one instruction before the roles split, as __syncthreads_or requires (its
  // .aligned barrier must not be met from two program points: compute-sanitizer synccheck reports that as a
  // divergent barrier; kernels/NOTES.md, attention_prefill, "the verdict barrier"). The producer's Q copies and
  // K_0's TMA start after it.
  if (__syncthreads_or(wg != 0 &&
                       paged_kv::sequence_is_bad_part(p, b, q_begin, q_len, seq_len, tid - 128, kThreads - 128))) {
    if (h == 0 && tile == 0 && tid == 0 && p.bad_seqs != nullptr) atomicAdd(p.bad_seqs, 1u);
    return;
  }
  if (wg == 0) {
    ptx::setmaxnreg_dec<kProducerRegs>();
    Producer<D> producer(p, sm, &tm_k, &tm_v, use_tma, w, tid, lane);
    producer.load_q();
    producer.issue_first_k();
    Probe::stamp(kProbeChecked, tid == 0);
    producer.run();
    return;
  }
  ptx::setmaxnreg_inc<kConsumerRegs>();
  const int cw = wg - 1;  // consumer warpgroup: query rows 64 cw .. 64 cw + 63 of the tile
  float o[D / 2], l_run[2];
  consumer_mainloop<D, Probe>(p, sm, use_tma, w, tid, lane, cw, o, l_run);
  Probe::stamp(kProbeLoopEnd, tid == 128);
  Probe::stamp(kProbeLoopEndWg1, tid == 256);
  store_output<D>(p, sm, w, tid, lane, cw, o, l_run);
  Probe::stamp(kProbeEnd, tid == 128);
  Probe::stamp(kProbeEndWg1, tid == 256);
}

// How whole key tiles reach shared memory for p (each sequence's partial last tile always goes by cp.async), with
// the tensor maps when it is TMA: paged_kv::key_tile_path's rule, the one decision the launch,
// l4k_internal_attention_prefill_path and the decode launcher share. The heads of a KV group re-read a tile from L2:
// the maps promote 256 B.
inline int key_tile_path(const L4kAttentionParams& p, CUtensorMap* tm_k, CUtensorMap* tm_v) {
  return paged_kv::key_tile_path(p, tm_k, tm_v, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
}

template <typename Fn>
int launch_ws(Fn fn, dim3 grid, size_t smem_tiles, cudaStream_t stream, const L4kAttentionParams& p) {
  const size_t smem = smem_tiles + 1024;  // slack: the tiles start on the swizzle's 1024-byte period
  cudaError_t e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (e != cudaSuccess) return static_cast<int>(e);
  CUtensorMap tm_k, tm_v;
  const bool tma = key_tile_path(p, &tm_k, &tm_v) == L4K_PREFILL_PATH_TMA;
  LaunchShape shape{grid, dim3(kThreads)};
  shape.smem = smem;
  return launch_result(launch_pdl(fn, shape, stream, p, tm_k, tm_v, tma ? 1 : 0));
}

template <int D, class Probe>
int launch(const L4kAttentionParams& p, cudaStream_t stream) {
  const int tiles = p.max_q_len > 0 ? (p.max_q_len + kBlockM - 1) / kBlockM : 1;
  if (tiles > 65535 || p.batch > 65535) return L4K_STATUS_UNSUPPORTED_SHAPE;
  const dim3 grid(p.n_heads, tiles, p.batch);
  return launch_ws(prefill_kernel<D, Probe>, grid, sizeof(Smem<D>), stream, p);
}

// Probe: NoProbe for the library; bench/experiments/attention_prefill_probe.cu passes its timer.
template <class Probe = NoProbe>
int launch_checked(const L4kAttentionParams* p, cudaStream_t stream) {
  if (p == nullptr) return L4K_STATUS_BAD_PARAMS;
  if (p->batch < 0 || p->n_heads < 1 || p->n_kv_heads < 1 || p->n_heads % p->n_kv_heads != 0 ||
      p->block_size < 1 || p->max_blocks < 0 || p->max_q_len < 0 || p->chunk < 0 || p->total_q < 0 ||
      p->slots < 0 || p->slots % p->block_size != 0)
    return L4K_STATUS_BAD_PARAMS;
  if (p->head_dim != 64 && p->head_dim != 128) return L4K_STATUS_UNSUPPORTED_SHAPE;
  if (p->n_heads > 65535 || p->slots > INT32_MAX) return L4K_STATUS_UNSUPPORTED_SHAPE;
  if (p->batch == 0) return 0;
  // The caches are read only when there are slots, the table only when it has columns (else every sequence that
  // would read them is bad).
  if (p->q == nullptr || p->cu_seqlens_q == nullptr || p->seq_lens_k == nullptr || p->out == nullptr ||
      (p->slots > 0 && (p->k_cache == nullptr || p->v_cache == nullptr)) ||
      (p->max_blocks > 0 && p->block_table == nullptr))
    return L4K_STATUS_BAD_PARAMS;
  return p->head_dim == 128 ? launch<128, Probe>(*p, stream) : launch<64, Probe>(*p, stream);
}

}  // namespace attn_prefill
}  // namespace l4k

extern "C" int l4k_launch_attention_prefill(const L4kAttentionParams* p, cudaStream_t stream) {
  return l4k::attn_prefill::launch_checked(p, stream);
}

// The path l4k_launch_attention_prefill takes for p's layout on the current device (l4k_prefill_path,
// include/llama4_kernels.h). Reads
// block_size, chunk, slots, n_kv_heads, head_dim and the cache addresses; the caller validated them.
extern "C" int l4k_internal_attention_prefill_path(const L4kAttentionParams* p) {
  CUtensorMap tm_k, tm_v;
  return l4k::attn_prefill::key_tile_path(*p, &tm_k, &tm_v);
}
