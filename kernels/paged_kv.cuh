// The paged KV cache of kernels/attention_params.h as both attention kernels read it, written once: the chunk rule
// and the key range a run of queries needs, where a key lives (the block table), and which sequences are bad (the
// scalar rule and the block-id check). kernels/attention_prefill.cu and kernels/attention_decode.cu use these;
// the key range is also host-callable (l4k_internal_attention_key_range, tested against the reference).
#pragma once
#include <stdint.h>

#include "attention_params.h"

namespace l4k {
namespace paged_kv {

// First position of the chunk that holds position pos under mask `chunk` (0: causal, every key from 0 on).
__host__ __device__ __forceinline__ int chunk_start(int pos, int chunk) { return chunk > 0 ? pos / chunk * chunk : 0; }

// Keys [lo, hi) visible from the query positions [q_first, q_last] under mask `chunk` (0: causal): the union of
// each query's range [chunk start, q]. The same rule as llama4_reference::attention::key_range.
struct KeyRange {
  int lo, hi;
};
__host__ __device__ __forceinline__ KeyRange key_range(int q_first, int q_last, int chunk) {
  return KeyRange{chunk_start(q_first, chunk), q_last + 1};
}
// The keys a sequence's queries read: its last q_len positions of seq_len (hi = seq_len).
__host__ __device__ __forceinline__ KeyRange sequence_key_range(int seq_len, int q_len, int chunk) {
  return key_range(seq_len - q_len, seq_len - 1, chunk);
}

// Cache slot of key position pos through the block table. shift = log2(block_size) when that is a power of two
// (the usual 16 .. 256: shifts instead of two integer divisions per row per tile), else -1.
__device__ __forceinline__ int block_shift(int bs) { return (bs & (bs - 1)) == 0 ? __ffs(bs) - 1 : -1; }
__device__ __forceinline__ int slot_of(const int32_t* table, int pos, int bs, int shift) {
  return shift >= 0 ? (table[pos >> shift] << shift) + (pos & (bs - 1)) : table[pos / bs] * bs + pos % bs;
}

// A block id the contract allows: one of the cache's n_blocks = slots / block_size blocks.
__device__ __forceinline__ bool block_id_ok(int32_t id, int64_t n_blocks) { return !(id < 0 || id >= n_blocks); }

// The contract's rule on a sequence's scalars (queries q_begin .. q_begin + q_len of total_q, seq_len keys). Int:
// the type the caller read q_begin and q_len in (int32 or int64); the query end is summed in int64 either way.
template <class Int>
__device__ __forceinline__ bool sequence_scalars_bad(const L4kAttentionParams& p, Int q_begin, Int q_len,
                                                     int seq_len) {
  const int64_t q_end = static_cast<int64_t>(q_begin) + q_len;
  return q_begin < 0 || q_end > p.total_q || q_len < 0 || q_len > p.max_q_len || q_len > seq_len ||
         static_cast<int64_t>(seq_len) > static_cast<int64_t>(p.max_blocks) * p.block_size;
}

// This thread's share of the sequence checks: the sequence's scalars and, when they hold, block ids first + tid,
// first + tid + nthreads, ... of the positions it reads (sequence_key_range). nthreads 0: the scalars only.
__device__ __forceinline__ bool sequence_is_bad_part(const L4kAttentionParams& p, int b, int q_begin, int q_len,
                                                     int seq_len, int tid, int nthreads) {
  bool bad = sequence_scalars_bad(p, q_begin, q_len, seq_len);
  if (!bad && q_len > 0 && nthreads > 0) {
    const KeyRange keys = sequence_key_range(seq_len, q_len, p.chunk);
    const int first = keys.lo / p.block_size, last = (keys.hi - 1) / p.block_size;
    const int64_t n_blocks = p.slots / p.block_size;
    const int32_t* table = p.block_table + static_cast<int64_t>(b) * p.max_blocks;
    for (int i = first + tid; i <= last; i += nthreads) {
      const int32_t id = table[i];
      bad |= !block_id_ok(id, n_blocks);
    }
  }
  return bad;
}

}  // namespace paged_kv
}  // namespace l4k
