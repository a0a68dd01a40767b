// Launch parameters of the attention kernels (kernels/attention_prefill.cu, kernels/attention_decode.cu), shared
// with the Rust side (ops/ffi.rs mirrors the struct; kernels/abi.cu's table checks it field by field).
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Attention over the paged KV cache the rope op writes.
// - K and V caches are [slots, n_kv_heads, head_dim] bf16. Sequence b's key at position p lives in slot
//   block_table[b * max_blocks + p / block_size] * block_size + p % block_size.
// - Sequence b has seq_lens_k[b] keys, its new tokens included (the rope op wrote their k and v first). Its
//   queries are rows cu_seqlens_q[b] .. cu_seqlens_q[b + 1] of q, the LAST q_len(b) positions of the sequence:
//   query i sits at position seq_lens_k[b] - q_len(b) + i. A fresh prefill has q_len == seq_len_k, a continued
//   (chunked) prefill q_len < seq_len_k, decode q_len = 1 (or a few, for speculative decoding).
// - Key p is visible from query position q iff p <= q and (chunk == 0 or p / chunk == q / chunk): chunk 0 is the
//   global causal mask of NoPE layers, chunk C > 0 the chunked mask of RoPE layers.
// - Query head h reads KV head h / (n_heads / n_kv_heads). Softmax in f32 with scores * softmax_scale.
// - A sequence whose metadata is inconsistent on the device (q_len < 0 or > max_q_len, q_len > seq_len_k,
//   seq_len_k > max_blocks * block_size, a block id outside [0, slots / block_size) for a position it reads)
//   writes none of its rows and, if bad_seqs is non-NULL, adds 1 to *bad_seqs. Nothing is ever read out of
//   bounds because of device data.
typedef struct L4kAttentionParams {
  const void* q;               // [total_q, n_heads, head_dim] bf16
  const void* k_cache;         // [slots, n_kv_heads, head_dim] bf16
  const void* v_cache;         // [slots, n_kv_heads, head_dim] bf16
  const int32_t* cu_seqlens_q; // [batch + 1], non-decreasing, cu_seqlens_q[batch] <= total_q
  const int32_t* seq_lens_k;   // [batch]
  const int32_t* block_table;  // [batch, max_blocks]
  void* out;                   // [total_q, n_heads, head_dim] bf16
  uint32_t* bad_seqs;          // optional device counter (see above)
  void* workspace;             // the op's *_workspace_size bytes, contents arbitrary on entry
  int64_t workspace_bytes;
  int64_t total_q;
  int64_t slots;
  int32_t batch;
  int32_t max_blocks;
  int32_t block_size;          // slots per block, >= 1
  int32_t n_heads;
  int32_t n_kv_heads;
  int32_t head_dim;            // 64 or 128
  int32_t chunk;               // 0: global causal; C > 0: chunked causal
  int32_t max_q_len;           // host-side bound on every q_len (grid sizing without a sync), checked on device
  float softmax_scale;         // head_dim ** -0.5 for Llama 4
  int32_t _pad;
} L4kAttentionParams;

#ifdef __cplusplus
}
#endif
