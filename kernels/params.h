// Launch parameters shared by the CUDA launchers and the Rust side. ops/ffi.rs mirrors each struct with
// #[repr(C)]; kernels/abi.cu exports every field's offset, size and kind, and a CPU test (ops/abi.rs) compares
// them with the Rust mirror field by field. Padding is explicit (`_pad`): the fields tile the struct.
//
// Pointers are device pointers. bf16 is passed as its 16-bit pattern, FP8 E4M3 as one byte. Every launcher
// assumes its arguments were validated by the Rust layer (ops/*.rs), which both the safe API and the C ABI
// go through: shapes positive and consistent, pointers non-null, counts within int32 grid limits.
#pragma once
#include <stdint.h>

#include "../include/llama4_kernels.h"  // the codes the C ABI passes through (router mode, logits dtype)
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

// y = rmsnorm(x) * w, optionally after residual_out = residual + x (fused add).
typedef struct L4kRmsnormParams {
  const void* x;          // [rows, cols] bf16
  const void* residual;   // [rows, cols] bf16, or NULL for the plain norm
  void* residual_out;     // [rows, cols] bf16, may alias residual; NULL iff residual is NULL
  const void* weight;     // [cols] bf16
  void* y;                // [rows, cols] bf16
  int64_t rows;
  int64_t cols;
  float eps;
  int32_t _pad;
  void* y_fp8;            // [rows, cols] E4M3, y's rowwise FP8 copy (quant.cu's bytes), or NULL for none
  float* y_scales;        // [rows], y_fp8's scales; NULL iff y_fp8 is NULL
} L4kRmsnormParams;

enum { L4K_MAX_HEAD_DIM = 256 };

// Attention pre-processing of one layer: split q/k/v out of the fused projection, RoPE (adjacent pairs) and
// per-head QK RMS norm on RoPE layers, temperature scaling of q on NoPE layers; q goes to a dense [T, Hq, D]
// buffer, k and v into the slot-addressed KV cache [slots, Hkv, D] (a paged cache is a block table over slots).
typedef struct L4kRopeParams {
  const void* qkv;        // [tokens, (n_heads + 2 n_kv_heads) * head_dim] bf16: q heads, k heads, v heads
  const int32_t* pos;     // [tokens] absolute positions
  const int64_t* slots;   // [tokens] cache row per token; -1 = do not write (padding)
  void* q_out;            // [tokens, n_heads, head_dim] bf16
  void* k_cache;          // [cache_slots, n_kv_heads, head_dim] bf16
  void* v_cache;          // [cache_slots, n_kv_heads, head_dim] bf16
  uint32_t* bad_slots;    // optional counter of slots outside [-1, cache_slots): those tokens are not written
  int64_t tokens;
  int64_t cache_slots;
  int32_t n_heads;
  int32_t n_kv_heads;
  int32_t head_dim;       // even, <= L4K_MAX_HEAD_DIM
  int32_t rope;           // 1: RoPE layer (rotate q, k); 0: NoPE layer
  int32_t qk_norm;        // RoPE layers: RMS-normalise q and k heads after rotation
  int32_t temperature;    // NoPE layers: scale q by log(floor((p + 1) / floor_scale) + 1) * attn_scale + 1
  float eps;
  float floor_scale;
  float attn_scale;
  int32_t _pad;
  float inv_freq[L4K_MAX_HEAD_DIM / 2];  // RoPE frequencies, computed once on the host (ops/rope.rs)
} L4kRopeParams;

typedef enum L4kSwigluOut { L4K_SWIGLU_BF16 = 0, L4K_SWIGLU_FP8 = 1 } L4kSwigluOut;

// h = silu(gate) * up over gate_up [tokens, 2 * inter] (gate first), written as bf16 or as rowwise FP8 + scales.
typedef struct L4kSwigluParams {
  const void* gate_up;    // [tokens, 2 * inter] bf16
  void* out;              // [tokens, inter] bf16 or FP8 E4M3
  float* scales;          // [tokens] f32 when out is FP8, else NULL
  int64_t tokens;
  int64_t inter;
  int32_t out_kind;       // L4kSwigluOut
  int32_t _pad;
} L4kSwigluParams;

// Rowwise FP8 quantization (bf16 -> E4M3 + per-row f32 scale) and the inverse (E4M3 * scale -> f32).
typedef struct L4kQuantParams {
  const void* x;          // quantize: [rows, cols] bf16; dequantize: [rows, cols] E4M3
  void* out;              // quantize: [rows, cols] E4M3; dequantize: [rows, cols] f32
  float* scales;          // [rows]: written by quantize, read by dequantize
  int64_t rows;
  int64_t cols;
} L4kQuantParams;

// ---- MoE routing (router.cu, permute.cu) --------------------------------------------------------------------
// Layout shared with the grouped GEMM: (token, choice) pairs sorted by expert, stable in (token, choice).
// Expert e owns rows [offsets[e], offsets[e + 1]) of the permuted buffers; its first counts[e] rows are real,
// the rest (fewer than align) are padding. dest[t * k + c] is the row of (token t, choice c). All int32, on
// the device, never copied to the host.
// The router mode (L4K_ROUTER_SIGMOID_TOP1, L4K_ROUTER_SOFTMAX_TOPK) and logits dtype (L4K_LOGITS_BF16,
// L4K_LOGITS_F32) codes are the C ABI's, from include/llama4_kernels.h.
enum { L4K_ROUTER_MAX_EXPERTS = 256, L4K_ROUTER_MAX_TOP_K = 8 };

typedef struct L4kRouterParams {
  const void* logits;     // [tokens, experts] bf16 or f32 (logits_dtype)
  int32_t* ids;           // [tokens, k] chosen experts, best first
  float* weights;         // [tokens, k] routing weights
  int32_t* counts;        // [experts] rows per expert (unpadded)
  int32_t* offsets;       // [experts + 1] padded row starts; offsets[experts] = padded total
  int32_t* dest;          // [tokens, k] permuted row of each (token, choice)
  void* workspace;        // l4k_router_workspace_size bytes, contents arbitrary on entry
  int64_t workspace_bytes;
  int64_t tokens;
  int32_t experts;        // 1 ..= L4K_ROUTER_MAX_EXPERTS
  int32_t k;              // 1 ..= min(experts, L4K_ROUTER_MAX_TOP_K), either mode
  int32_t mode;           // L4K_ROUTER_SIGMOID_TOP1 or L4K_ROUTER_SOFTMAX_TOPK
  int32_t logits_dtype;   // L4K_LOGITS_BF16 or L4K_LOGITS_F32
  int32_t renormalize;    // softmax mode: divide the k weights by their sum
  int32_t align;          // >= 1: each expert's rows padded to a multiple of align
} L4kRouterParams;

typedef enum L4kPermuteOut { L4K_PERMUTE_BF16 = 0, L4K_PERMUTE_FP8 = 1 } L4kPermuteOut;

// Token-order rows -> expert-sorted rows, optionally scaled by the routing weight and quantized (FP8 rowwise).
typedef struct L4kPermuteParams {
  const void* x;          // [tokens, hidden] bf16
  const float* weights;   // [tokens, k] input scaling, or NULL (plain copy)
  const int32_t* dest;    // [tokens, k]
  const int32_t* counts;  // [experts], read only when align > 1 (padding rows)
  const int32_t* offsets; // [experts + 1], read only when align > 1
  void* out;              // [rows, hidden] bf16 or E4M3 (out_kind)
  float* scales;          // [rows] f32 when out is FP8, else NULL
  int64_t tokens;
  int64_t hidden;
  int64_t rows;           // rows of out; destinations outside [0, rows) are skipped
  int32_t k;
  int32_t experts;
  int32_t align;
  int32_t out_kind;       // L4kPermuteOut
} L4kPermuteParams;

// Expert-sorted rows -> token order: out[t] = bf16(sum_c (w[t, c] *) y[dest[t, c]] (+ shared[t])), f32 sum.
typedef struct L4kUnpermuteParams {
  const void* expert_out; // [rows, hidden] bf16
  const float* weights;   // [tokens, k] output weighting, or NULL
  const int32_t* dest;    // [tokens, k]; a destination outside [0, rows) contributes nothing
  const void* shared;     // [tokens, hidden] bf16 shared-expert output, or NULL
  void* out;              // [tokens, hidden] bf16
  int64_t tokens;
  int64_t hidden;
  int64_t rows;
  int32_t k;
  int32_t _pad;
} L4kUnpermuteParams;

// The unpermute fused with the decoder's next residual add and norm (permute.cu): the unpermuted row f (as
// L4kUnpermuteParams computes it, not stored) is added into residual (rounded to bf16) and y = rmsnorm(residual) *
// weight, bit for bit l4k_launch_unpermute followed by l4k_launch_rmsnorm with the add. residual and y must not
// overlap expert_out or shared.
typedef struct L4kUnpermuteNormParams {
  const void* expert_out; // [rows, hidden] bf16
  const float* weights;   // [tokens, k] output weighting, or NULL
  const int32_t* dest;    // [tokens, k]; a destination outside [0, rows) contributes nothing
  const void* shared;     // [tokens, hidden] bf16 shared-expert output, or NULL
  void* residual;         // [tokens, hidden] bf16, read and written
  const void* weight;     // [hidden] bf16 norm weight
  void* y;                // [tokens, hidden] bf16
  int64_t tokens;
  int64_t hidden;
  int64_t rows;
  int32_t k;
  float eps;
  void* y_fp8;            // [tokens, hidden] E4M3, y's rowwise FP8 copy (quant.cu's bytes), or NULL for none
  float* y_scales;        // [tokens], y_fp8's scales; NULL iff y_fp8 is NULL
} L4kUnpermuteNormParams;

// Expert weight preparation (weight_prep.cu): checkpoint bf16 W [experts, k, n] (used as x @ W, n contiguous)
// -> the grouped GEMM's B [experts, n, k] E4M3 (k contiguous) + scales [experts, n] f32, rowwise over k.
typedef struct L4kWeightPrepParams {
  const void* w;          // [experts, k, n] bf16
  void* out;              // [experts, n, k] E4M3
  float* scales;          // [experts, n] f32
  int64_t experts;
  int64_t k;
  int64_t n;
} L4kWeightPrepParams;

// Row gather (embedding.cu): out[t] = table[ids[t]], the token embedding or a gather of activation rows (each
// sequence's last token before lm_head). An id outside [0, rows) is never read: its row of out is zeros and
// *bad_ids (when not NULL) counts it, so a bad id is visible without a host check in the middle of a graph.
typedef struct L4kEmbeddingParams {
  const void* table;      // [rows, hidden] bf16
  const int32_t* ids;     // [tokens]
  void* out;              // [tokens, hidden] bf16
  uint32_t* bad_ids;      // optional counter of ids outside [0, rows)
  int64_t rows;
  int64_t tokens;
  int64_t hidden;
} L4kEmbeddingParams;

// The bf16 nn.Linear at few rows (linear.cu's GEMV; cuBLASLt serves every other shape): y [m, n] = x [m, k] .
// w [n, k]^T, f32 accumulation, y bf16 (rounded once) or f32.
typedef struct L4kLinearParams {
  const void* x;          // [m, k] bf16, 16-byte aligned
  const void* w;          // [n, k] bf16, 16-byte aligned
  void* y;                // [m, n] bf16 or f32 (out_dtype: L4K_LINEAR_OUT_*)
  int64_t m;
  int64_t n;
  int64_t k;              // a multiple of 8: a lane's 16-byte load is wholly inside a row
  int32_t out_dtype;
  int32_t max_ctas;       // 0: one CTA per 16 output columns; else at most this many, each looping over tiles
                          // (to leave CTA slots to a kernel running beside it); refused where k is split (n <= 512)
} L4kLinearParams;

// Greedy sampling (argmax.cu): out[r] = the lowest index of the largest value of logits[r] (torch.argmax; -0
// ties +0), or -1 when the row holds a NaN (torch would answer the NaN's index; the caller reports an error).
typedef struct L4kArgmaxParams {
  const float* logits;    // [rows, cols] f32
  int32_t* out;           // [rows]
  int64_t rows;
  int64_t cols;           // 1 ..= INT32_MAX
} L4kArgmaxParams;

// Counter-based uniform random bf16 (random.cu): out[i] = bf16(u(seed, first + i) * bound), u in (-1, 1) from
// splitmix64 of the element's index, so a tensor filled in pieces equals one filled whole (synthetic weights).
typedef struct L4kRandomParams {
  void* out;              // [n] bf16
  int64_t n;
  uint64_t seed;
  uint64_t first;         // index of out[0] in the stream
  float bound;            // finite, >= 0
  int32_t _pad;
} L4kRandomParams;


#ifdef __cplusplus
}
#endif
