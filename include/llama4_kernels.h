/* llama4-kernels: fused CUDA kernels for Llama 4 class MoE inference on Hopper (sm_90a), C ABI.
 *
 * Link: libllama4_kernels.a (static; add -lstdc++ -ldl -lrt -lpthread -lm) or libllama4_kernels.so.
 * The CUDA runtime is linked in statically; the driver (libcuda.so.1) is loaded at run time.
 *
 * Conventions, for every op:
 * - Device pointers are `void*` (bf16 as its 16-bit pattern, FP8 E4M3 as one byte) or typed (`float*` f32,
 *   `int32_t*`, `int64_t*`). Tensors are dense and row-major with the shapes given in each comment.
 * - `stream` is a cudaStream_t / CUstream on the current device (NULL: the legacy default stream).
 * - No op synchronizes, allocates or copies to the host: all of them can be captured in a CUDA graph. Ops
 *   that need scratch memory take a caller-provided workspace and report its size through a *_workspace_size
 *   function (l4k_router).
 * - Launches: every kernel of the library except the grouped GEMM's (CUTLASS; l4k_linear_bf16 runs cuBLASLt's)
 *   is launched with programmatic dependent launch (cudaLaunchAttributeProgrammaticStreamSerialization): it may
 *   start while the previous kernel in the stream finishes, and waits for that kernel's completion
 *   (griddepcontrol.wait) before it reads or writes any memory, so it is correct after any predecessor (a
 *   memset, a cuBLAS matmul, the caller's own kernels) and inside captured graphs (programmatic edges, CUDA
 *   12.3+). The environment variable L4K_PDL, read once at the first launch, set to 0 launches without the
 *   attribute (for A/B timing); unset or any other value: on.
 * - Arguments are validated before anything is launched: null or misaligned pointers, bad shapes and
 *   unsupported sizes return an error status and launch nothing. A zero row/token count is a no-op.
 * - On failure, l4k_last_error() describes the failure (thread-local; "" after a successful call).
 * - Rounding follows the model contract (PyTorch's bf16 Llama 4): every op documents where it rounds.
 */
#ifndef LLAMA4_KERNELS_H
#define LLAMA4_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Same type as cudaStream_t and CUstream. */
typedef struct CUstream_st* l4k_stream_t;

typedef enum l4k_status {
  L4K_OK = 0,
  L4K_ERROR_INVALID_ARGUMENT = 1, /* null/misaligned pointer, inconsistent shape, bad value; nothing launched */
  L4K_ERROR_UNSUPPORTED = 2,      /* valid request outside what is implemented (e.g. head_dim > 256) */
  L4K_ERROR_CUDA = 3,             /* the CUDA runtime reported an error (message in l4k_last_error) */
  L4K_ERROR_NO_DEVICE = 4,        /* no driver, no GPU, or a GPU this build has no code for (needs sm_90) */
  L4K_ERROR_PANIC = 5             /* a bug in the library, caught at the boundary (message in l4k_last_error) */
} l4k_status;

/* Why the last l4k_* call on this thread failed; "" if it succeeded. Valid until the next call on the thread. */
const char* l4k_last_error(void);
/* Library version, e.g. "0.1.0". */
const char* l4k_version(void);

/* ---- rmsnorm ------------------------------------------------------------------------------------------
 * y[r] = bf16(bf16(x[r] * rsqrt(mean(x[r]^2) + eps)) * weight), f32 math.
 * x, y: [rows, cols] bf16 (y may alias x); weight: [cols] bf16. */
l4k_status l4k_rmsnorm(const void* x, const void* weight, void* y, int64_t rows, int64_t cols, float eps,
                       l4k_stream_t stream);

/* The residual add fused in front of the norm: residual = bf16(residual + x) (in place), then
 * y = rmsnorm(residual) as above. x, residual, y: [rows, cols] bf16. */
l4k_status l4k_add_rmsnorm(const void* x, void* residual, const void* weight, void* y, int64_t rows,
                           int64_t cols, float eps, l4k_stream_t stream);

/* Either norm, and y's rowwise FP8 copy from the same pass, for an FP8 linear that reads y: y_fp8 [rows, cols]
 * E4M3 and y_scales [rows] f32 are exactly what l4k_quant_fp8 writes from y (one launch fewer). Neither may be
 * NULL; y_fp8 must not overlap the other operands. */
l4k_status l4k_rmsnorm_with_fp8(const void* x, const void* weight, void* y, void* y_fp8, float* y_scales,
                                int64_t rows, int64_t cols, float eps, l4k_stream_t stream);
l4k_status l4k_add_rmsnorm_with_fp8(const void* x, void* residual, const void* weight, void* y, void* y_fp8,
                                    float* y_scales, int64_t rows, int64_t cols, float eps, l4k_stream_t stream);

/* ---- rope: attention pre-processing of one layer ---------------------------------------------------------
 * llama3 frequency scaling (rope_scaling with rope_type "llama3"). */
typedef struct l4k_llama3_scaling {
  float factor;
  float low_freq_factor;
  float high_freq_factor;
  float original_max_position_embeddings;
} l4k_llama3_scaling;

/* Host-side, once per model: inv_freq[j] for j < head_dim / 2, f32: transformers' expression op by op with
 * PyTorch's roundings (`2 pi / inv_freq` is a reciprocal then a multiply, as PyTorch evaluates scalar / tensor),
 * and theta ** (2j / head_dim) correctly rounded. Against transformers 5.17 on CPU (36 configurations: theta
 * 1e4, 5e5, 1e6, head_dim 64, 96, 128, four llama3 scalings) the result is identical except where PyTorch's CPU
 * pow (SLEEF, 1 ulp) is not correctly rounded: one entry in 12 configurations, 1 to 3 ulp. transformers on CUDA
 * differs from its own CPU result in every configuration (up to 42 ulp), so no one bit pattern is "its" value.
 * scaling may be NULL (plain RoPE). inv_freq: head_dim / 2 host floats. */
l4k_status l4k_rope_inv_freq(float theta, int32_t head_dim, const l4k_llama3_scaling* scaling, float* inv_freq);

enum { L4K_LAYER_ROPE = 0, L4K_LAYER_NOPE = 1 };

typedef struct l4k_rope_layer {
  int32_t n_heads;        /* query heads */
  int32_t n_kv_heads;     /* divides n_heads */
  int32_t head_dim;       /* even, <= 256 */
  int32_t kind;           /* L4K_LAYER_ROPE (RoPE + chunked attention) or L4K_LAYER_NOPE (global attention) */
  const float* inv_freq;  /* RoPE layers: head_dim / 2 HOST floats (l4k_rope_inv_freq); copied per call */
  int32_t qk_norm;        /* RoPE layers: nonzero = RMS-normalise q and k heads after RoPE (no weight) */
  float qk_norm_eps;
  int32_t temperature;    /* NoPE layers: nonzero = q *= log(floor((pos + 1) / floor_scale) + 1) * attn_scale + 1 */
  float floor_scale;
  float attn_scale;
} l4k_rope_layer;

/* Splits the fused projection qkv [tokens, (n_heads + 2 n_kv_heads) * head_dim] bf16 (q heads, then k heads,
 * then v heads) at absolute positions pos [tokens] (int32), applies the layer's pre-processing (RoPE on
 * adjacent pairs in f32 rounded to bf16, then QK norm in f32 rounded; or the temperature on q), writes
 * q_out [tokens, n_heads, head_dim] bf16, and k and v into row slots[t] (int64) of
 * k_cache / v_cache [cache_slots, n_kv_heads, head_dim] bf16. slots[t] == -1 skips the token's k/v (padding).
 * A slot outside [-1, cache_slots) is never written; when bad_slots (one device uint32) is not NULL, the
 * number of such tokens is added to it. A paged cache is a block table over slots
 * (slot = block * block_size + offset). */
l4k_status l4k_rope_qkv(const void* qkv, const int32_t* pos, const int64_t* slots, int64_t tokens,
                        const l4k_rope_layer* layer, void* q_out, void* k_cache, void* v_cache,
                        int64_t cache_slots, uint32_t* bad_slots, l4k_stream_t stream);

/* ---- swiglu -------------------------------------------------------------------------------------------
 * gate_up: [tokens, 2 * inter] bf16, gate in the first inter columns, up in the rest.
 * h = bf16(bf16(silu(gate)) * up), silu in f32. */
l4k_status l4k_swiglu(const void* gate_up, void* out /* [tokens, inter] bf16 */, int64_t tokens, int64_t inter,
                      l4k_stream_t stream);

/* h as above, quantized per row to FP8 E4M3 as l4k_quant_fp8 does: q [tokens, inter], scales [tokens] f32. */
l4k_status l4k_swiglu_fp8(const void* gate_up, void* q, float* scales, int64_t tokens, int64_t inter,
                          l4k_stream_t stream);

/* ---- quant ----------------------------------------------------------------------------------------------
 * Rowwise FP8 E4M3: scales[r] = max(amax(x[r]), 1e-12) / 448, q = e4m3(x * (1 / scales[r])) with saturation to
 * +-448 and round-to-nearest-even (NaN -> 0x7F). x: [rows, cols] bf16; q: [rows, cols]; scales: [rows] f32. */
l4k_status l4k_quant_fp8(const void* x, void* q, float* scales, int64_t rows, int64_t cols, l4k_stream_t stream);

/* out = e4m3_to_f32(q) * scales[row]; q: [rows, cols] E4M3, out: [rows, cols] f32. For tests and debugging. */
l4k_status l4k_dequant_fp8(const void* q, const float* scales, float* out, int64_t rows, int64_t cols,
                           l4k_stream_t stream);

/* ---- weight_prep: checkpoint expert weights -> the grouped GEMM's FP8 layout --------------------------------
 * w: [experts, k, n] bf16 as used in x @ W (gate_up [E, H, 2I], down [E, I, H]); q: [experts, n, k] E4M3 (the
 * b operand of l4k_grouped_gemm_fp8); scales: [experts, n] f32. Per (e, n): scales = max(amax_k |w[e, :, n]|,
 * 1e-12) / 448 (NaN ignored), q = e4m3(w * (1 / scale)) as l4k_quant_fp8 does. Any sizes (experts <= 65535);
 * k % 16 == 0, k <= 8192, n % 8 == 0 with 16-byte aligned w and q take the fast kernel, others a slower one
 * with the same bytes. No host synchronization. */
l4k_status l4k_quantize_expert_weights(const void* w, void* q, float* scales, int64_t experts, int64_t k, int64_t n,
                                       l4k_stream_t stream);

/* ---- embedding: row gather ----------------------------------------------------------------------------
 * out[t] = table[ids[t]] for t < tokens, bytes copied exactly: the token embedding (table = embed_tokens
 * [vocab, hidden]) or a gather of activation rows (each sequence's last token before lm_head). table: [rows,
 * hidden] bf16; ids: [tokens] int32 ON THE DEVICE; out: [tokens, hidden] bf16. An id outside [0, rows) is never
 * read: its row of out is zeros, and 1 is added to *bad_ids (one device uint32, may be NULL). */
l4k_status l4k_embedding(const void* table, const int32_t* ids, void* out, int64_t rows, int64_t tokens,
                         int64_t hidden, uint32_t* bad_ids, l4k_stream_t stream);

/* ---- argmax: greedy sampling on the device ------------------------------------------------------------
 * out[r] = the index of the largest value of logits[r] (torch.argmax: the lowest index on ties, -0 ties +0,
 * +-inf are ordinary values), or -1 when the row holds any NaN (torch would return the NaN's index: report it
 * as an error). logits: [rows, cols] f32 with 1 <= cols <= INT32_MAX; out: [rows] int32. */
l4k_status l4k_argmax(const float* logits, int32_t* out, int64_t rows, int64_t cols, l4k_stream_t stream);

/* ---- random: synthetic weights ------------------------------------------------------------------------
 * out[i] = bf16(u(seed, first + i) * bound) for i < n, u in (-1, 1): the top 24 bits b of splitmix64 over
 * seed + (first + i + 1) * 0x9E3779B97F4A7C15, as (2b + 1 - 2^24) / 2^24, times bound in f32 (one rounding),
 * rounded to nearest even bf16. Element j depends only on (seed, j): pieces filled with first = their offset
 * equal one fill of the whole. out: [n] bf16 (2-byte aligned; 16-byte aligned is faster); bound finite, >= 0. */
l4k_status l4k_random_uniform_bf16(void* out, int64_t n, uint64_t seed, uint64_t first, float bound,
                                   l4k_stream_t stream);

/* ---- linear: dense projections (nn.Linear weights [out, in]) ---------------------------------------------
 * l4k_linear_bf16: y [m, n] = x [m, k] . w [n, k]^T, bf16 inputs, f32 accumulation, y bf16 (rounded once) or
 * f32 (out_dtype). At one row and n <= 128 (a router) or 2048 <= n <= 16384, with k % 8 == 0 and x, w 16-byte
 * aligned, the library's own streaming GEMV serves it (PDL-launched like the other kernels; below 1024 columns a
 * cluster of up to 8 CTAs splits k for each 16 columns; its own fixed summation order, so results
 * agree with cuBLASLt's to rounding, not bit for bit); every other call runs on cuBLASLt (libcublasLt.so,
 * loaded at run time, needed by l4k_blas_create either way). The handle caches one cuBLASLt plan (descriptors
 * and the heuristic's algorithm) per shape, output dtype and pointer alignment, up to 4096 of them (then it
 * starts over): the first call of a shape runs the heuristic on the host, so make it before capturing a graph;
 * later calls only enqueue the GEMM (capturable). Any n, k >= 1; a shape cuBLASLt has no algorithm for is
 * L4K_ERROR_UNSUPPORTED. x, w, y 2-byte aligned (4 for f32 y); workspace 256-byte aligned with at least
 * L4K_LINEAR_WORKSPACE_BYTES bytes. A handle may be used from several threads and streams at once, each call
 * with its own workspace; it plans for the device current when it was created. m == 0 is a no-op.
 * l4k_blas_create: L4K_ERROR_NO_DEVICE when libcublasLt cannot be loaded. l4k_blas_destroy(NULL) is a no-op.
 *
 * l4k_linear_fp8: the FP8 rowwise linear, l4k_grouped_gemm_fp8 with one expert: y [m, n] bf16 =
 * bf16((x_q . w_q^T) * x_scales[r] * w_scales[c]); x_q [m, k] and w_q [n, k] E4M3 with one f32 scale per row
 * (l4k_quant_fp8 of the activations and of the nn.Linear weight); offsets: 2 int32 ON THE DEVICE holding
 * {0, m}; workspace: l4k_grouped_gemm_workspace_size(1) bytes. k % 16 == 0, n % 8 == 0, alignment as
 * l4k_grouped_gemm_fp8; schedule chosen as its schedule 0. */
typedef struct l4k_blas l4k_blas;
enum { L4K_LINEAR_OUT_BF16 = 0, L4K_LINEAR_OUT_F32 = 1 };
#define L4K_LINEAR_WORKSPACE_BYTES ((size_t)32 << 20)

l4k_status l4k_blas_create(l4k_blas** blas);
l4k_status l4k_blas_destroy(l4k_blas* blas);
l4k_status l4k_linear_bf16(l4k_blas* blas, const void* x, const void* w, void* y, int32_t out_dtype, int64_t m,
                           int64_t n, int64_t k, void* workspace, size_t workspace_bytes, l4k_stream_t stream);

l4k_status l4k_linear_fp8(const void* x_q, const float* x_scales, const void* w_q, const float* w_scales,
                          const int32_t* offsets, void* y, int64_t m, int64_t n, int64_t k, void* workspace,
                          size_t workspace_bytes, l4k_stream_t stream);

/* ---- router: MoE routing on the device ----------------------------------------------------------------
 * Layout (read by l4k_permute*, l4k_unpermute and the grouped GEMM, all int32 on the device):
 *   expert e owns rows [offsets[e], offsets[e + 1]) of the permuted buffers; the first counts[e] are its
 *   (token, choice) pairs in token order, then choice order (stable); the rest pad the block to a multiple of
 *   align. dest[t * k + c] is the row of (token t, choice c); offsets[experts] is the padded total.
 * Ranking: ties go to the lowest expert index (-0 ties +0); a NaN logit is never chosen over a number; when a
 * token has fewer than k non-NaN logits, NaN experts fill in lowest index first; an all-NaN token gets
 * experts 0..k-1 with weight NaN (reference/src/router.rs). */
enum { L4K_ROUTER_SIGMOID_TOP1 = 0, L4K_ROUTER_SOFTMAX_TOPK = 1 };
enum { L4K_LOGITS_BF16 = 0, L4K_LOGITS_F32 = 1 };

/* Workspace bytes l4k_router needs for these sizes (depends on tokens, experts and the logits dtype). */
l4k_status l4k_router_workspace_size(int64_t tokens, int32_t experts, int32_t logits_dtype, size_t* bytes);

/* logits: [tokens, experts] bf16 or f32 (logits_dtype), experts 1..256.
 * mode L4K_ROUTER_SIGMOID_TOP1 (Llama 4, num_experts_per_tok = k, 1..min(8, experts); the name is historical):
 *   the k largest raw logits, best first, each weighted by sigmoid(its logit) in f32, rounded to bf16 when the
 *   logits are bf16 (no softmax, no renormalisation; renormalize is ignored).
 * mode L4K_ROUTER_SOFTMAX_TOPK: softmax over all experts in f32 (NaN logits as -inf), the k (1..min(8,
 *   experts)) largest probabilities, best first; renormalize != 0 divides them by their f32 sum.
 * Outputs: ids, dest [tokens, k] int32; weights [tokens, k] f32; counts [experts]; offsets [experts + 1];
 * align >= 1 pads each expert's rows (tokens * k + experts * (align - 1) must fit int32).
 * workspace: l4k_router_workspace_size bytes, 4-byte aligned, contents arbitrary; one call at a time per
 * workspace. One cooperative kernel while the token tiles fit one wave (up to 256 tiles: T = 16384 at any
 * expert count with bf16 logits), else three graph nodes: a 4-byte memset and two kernels (programmatic
 * dependent launch: see the top of this file). tokens == 0 writes nothing. */
l4k_status l4k_router(const void* logits, int32_t logits_dtype, int64_t tokens, int32_t experts, int32_t mode,
                      int32_t k, int32_t renormalize, int32_t align, int32_t* ids, float* weights, int32_t* counts,
                      int32_t* offsets, int32_t* dest, void* workspace, size_t workspace_bytes,
                      l4k_stream_t stream);

/* Decode routing in one launch, for 1..8 tokens: logits = bf16(x @ router_weight^T) (x [tokens, hidden] bf16,
 * router_weight [experts, hidden] bf16, both 16-byte aligned, hidden a multiple of 8 up to 16384), written to
 * logits [tokens, experts] bf16; their routing as l4k_router with logits_dtype L4K_LOGITS_BF16 and align 1 (ids,
 * weights, counts, offsets, dest as there); and x's rows scaled by the routing weights and quantized as
 * l4k_permute_fp8 writes them into out [rows, hidden] E4M3 / scales [rows] f32, rows >= tokens * k. Bit for bit
 * the library's GEMV of l4k_linear_bf16 (the same k split and summation order; l4k_linear_bf16 itself takes the
 * GEMV at one row only) + l4k_router + l4k_permute_fp8. One cooperative kernel (programmatic dependent launch);
 * workspace: l4k_route_fp8_workspace_size bytes, 16-byte aligned, contents arbitrary, one call at a time per
 * workspace. tokens == 0 writes nothing; more than 8 tokens: L4K_ERROR_UNSUPPORTED (use the three calls). */
l4k_status l4k_route_fp8_workspace_size(int32_t experts, size_t* bytes);
l4k_status l4k_route_fp8(const void* x, const void* router_weight, int64_t tokens, int64_t hidden, int32_t experts,
                         int32_t mode, int32_t k, int32_t renormalize, void* logits, int32_t* ids, float* weights,
                         int32_t* counts, int32_t* offsets, int32_t* dest, void* out, float* scales, int64_t rows,
                         void* workspace, size_t workspace_bytes, l4k_stream_t stream);

/* ---- permute / unpermute ----------------------------------------------------------------------------------
 * Rows a permuted buffer needs for any routing of tokens x k pairs over experts padded to align:
 * tokens * k + min(experts, tokens * k) * (align - 1); -1 for invalid sizes. */
int64_t l4k_permuted_rows(int64_t tokens, int32_t k, int32_t experts, int32_t align);

/* out[dest[t, c]] = bf16(x[t] * weights[t, c]) (weights NULL: x[t] unchanged). x: [tokens, hidden] bf16;
 * weights: [tokens, k] f32 or NULL; dest: [tokens, k] int32 (l4k_router); out: [rows, hidden] bf16 with
 * rows >= l4k_permuted_rows(tokens, k, experts, align). align > 1: counts [experts] and offsets
 * [experts + 1] from l4k_router (same align) are read on the device and padding rows are written as zeros;
 * align == 1: counts/offsets may be NULL. A dest outside [0, rows) is skipped; rows at and past
 * offsets[experts] are never written. k <= 8. */
l4k_status l4k_permute(const void* x, const float* weights, const int32_t* dest, const int32_t* counts,
                       const int32_t* offsets, void* out, int64_t tokens, int64_t hidden, int32_t k,
                       int32_t experts, int32_t align, int64_t rows, l4k_stream_t stream);

/* The same rows quantized as l4k_quant_fp8 does (FP8 E4M3 rowwise, one f32 scale per row): q [rows, hidden],
 * scales [rows]. Padding rows: bytes 0, scale 1e-12 / 448 (the quantization of a zero row). This is the
 * activation layout of the FP8 grouped GEMM. */
l4k_status l4k_permute_fp8(const void* x, const float* weights, const int32_t* dest, const int32_t* counts,
                           const int32_t* offsets, void* q, float* scales, int64_t tokens, int64_t hidden,
                           int32_t k, int32_t experts, int32_t align, int64_t rows, l4k_stream_t stream);

/* out[t] = bf16(sum_{c < k} (weights[t, c] *) expert_out[dest[t, c]] + shared[t]), summed in f32 in choice
 * order, shared last, one rounding. expert_out: [rows, hidden] bf16; weights: [tokens, k] f32 or NULL (no
 * output weighting, Llama 4); shared: [tokens, hidden] bf16 or NULL; out: [tokens, hidden] bf16. A dest
 * outside [0, rows) contributes nothing. k <= 8. */
l4k_status l4k_unpermute(const void* expert_out, const float* weights, const int32_t* dest, const void* shared,
                         void* out, int64_t tokens, int64_t hidden, int32_t k, int64_t rows, l4k_stream_t stream);

/* l4k_unpermute's row fed straight into the decoder's next residual add and norm, one kernel: with f[t] the row
 * l4k_unpermute would write (not stored), residual[t] = bf16(residual[t] + f[t]) in place and y = rmsnorm(residual)
 * * norm_weight, bit for bit l4k_unpermute followed by l4k_add_rmsnorm (the pair's intermediate row buffer
 * aligned as these operands are: both then take the same vector path). residual, y: [tokens, hidden] bf16, not
 * overlapping expert_out or shared; norm_weight: [hidden] bf16. */
l4k_status l4k_unpermute_add_rmsnorm(const void* expert_out, const float* weights, const int32_t* dest,
                                     const void* shared, void* residual, const void* norm_weight, void* y, float eps,
                                     int64_t tokens, int64_t hidden, int32_t k, int64_t rows, l4k_stream_t stream);

/* The same, and y's rowwise FP8 copy (y_fp8 [tokens, hidden] E4M3, y_scales [tokens]: l4k_quant_fp8's bytes and
 * scales of y), as l4k_rmsnorm_with_fp8. */
l4k_status l4k_unpermute_add_rmsnorm_with_fp8(const void* expert_out, const float* weights, const int32_t* dest,
                                              const void* shared, void* residual, const void* norm_weight, void* y,
                                              void* y_fp8, float* y_scales, float eps, int64_t tokens,
                                              int64_t hidden, int32_t k, int64_t rows, l4k_stream_t stream);

/* ---- grouped_gemm: FP8 (E4M3) grouped GEMM for the routed experts ---------------------------------------
 * d[r, :] = bf16((a[r, :] . b[e]^T) * scale_a[r] * scale_b[e, :]) for the rows of each expert e:
 * r in [offsets[e], offsets[e] + m_e), m_e = counts ? counts[e] : offsets[e + 1] - offsets[e] (the layout
 * l4k_permute_fp8 writes; rows past m_e are not written). a: [rows, k] E4M3; scale_a: [rows] f32;
 * b: [experts, n, k] E4M3 (each expert's weight as nn.Linear [out, in]); scale_b: [experts, n] f32;
 * offsets: [experts + 1] int32 and counts: [experts] int32 (or NULL), both ON THE DEVICE; d: [rows, n] bf16.
 * k a multiple of 16, n a multiple of 8; a, b, d 16-byte aligned; workspace 256-byte aligned.
 * schedule: 0 auto (the GEMV for one row at n <= 16384 and experts <= 16, where it measured faster; the decode
 * path up to 32 rows per expert on average; else prefill), 1 prefill (promoted FP8 accumulation), 2 decode (A/B
 * swapped, weight-bandwidth bound), 3 prefill with fast accumulation, 4 GEMV (a streaming mma.sync kernel for
 * one row per expert: each expert's weights read once per 8 of its rows; any row count is correct; ignores the
 * workspace).
 * Auto decides by `rows`, A's row count: the routed rows for an unpadded layout (router align 1), but with the
 * router's align > 1 up to experts x (align - 1) of them are padding. Such a caller asks
 * l4k_grouped_gemm_auto_schedule(tokens * k, n, experts, &schedule) and passes that schedule.
 * Offsets that are inconsistent (outside [0, rows], decreasing, counts past their range) cannot be seen from
 * the host without a sync: then nothing is computed and *bad_offsets (one device uint32, may be NULL) is set
 * to 1. No host synchronization: capturable in a CUDA graph. */
l4k_status l4k_grouped_gemm_workspace_size(int32_t experts, size_t* bytes);
/* The schedule (1 prefill, 2 decode, 4 GEMV) auto picks for routed_rows real (token, expert) rows over experts
 * experts of output width n. */
l4k_status l4k_grouped_gemm_auto_schedule(int64_t routed_rows, int64_t n, int32_t experts, int32_t* schedule);
l4k_status l4k_grouped_gemm_fp8(const void* a, const float* scale_a, const void* b, const float* scale_b,
                                const int32_t* offsets, const int32_t* counts, void* d, int64_t rows, int64_t n,
                                int64_t k, int32_t experts, int32_t schedule, void* workspace,
                                size_t workspace_bytes, uint32_t* bad_offsets, l4k_stream_t stream);

/* ---- grouped_gemm, 128x128 blockwise scales (DeepSeek-V3 style checkpoints) ------------------------------
 * d[r, c] = bf16(sum_j (a[r, J_j] . b[e, c, J_j]) * scale_a[r, j] * scale_b[e, c / 128, j]) over the K groups
 * J_j = [128 j, 128 (j + 1)), for the rows r of each expert e (offsets, counts, d, bad_offsets, workspace and
 * alignment as l4k_grouped_gemm_fp8; the same workspace size). scale_a: [rows, k / 128] f32 (one scale per
 * row and K group: a 1x128 activation quantizer's output); scale_b: [experts, n / 128, k / 128] f32 (one per
 * 128x128 weight block). n and k must be multiples of 128. schedule: 0 auto (as l4k_grouped_gemm_fp8),
 * 1 prefill, 2 decode; 3 (fast accumulation) and 4 (GEMV) are L4K_ERROR_UNSUPPORTED here (auto never picks
 * the GEMV for blockwise scales: it takes the decode path). */
l4k_status l4k_grouped_gemm_fp8_blockwise(const void* a, const float* scale_a, const void* b, const float* scale_b,
                                          const int32_t* offsets, const int32_t* counts, void* d, int64_t rows,
                                          int64_t n, int64_t k, int32_t experts, int32_t schedule, void* workspace,
                                          size_t workspace_bytes, uint32_t* bad_offsets, l4k_stream_t stream);

/* ---- attention_decode: decode attention over the paged KV cache ------------------------------------------
 * Sequence b (of batch) has seq_lens_k[b] keys in the cache (its new tokens included) and queries rows
 * cu_seqlens_q[b] .. cu_seqlens_q[b + 1] of q: the LAST q_len(b) positions of the sequence (1 in plain decode,
 * a few in speculative decoding). Key position p lives in slot block_table[b * max_blocks + p / block_size] *
 * block_size + p % block_size. q, out: [total_q, n_heads, head_dim] bf16; k_cache, v_cache: [slots,
 * n_kv_heads, head_dim] bf16 (the layout l4k_rope_qkv writes); cu_seqlens_q [batch + 1], seq_lens_k [batch],
 * block_table [batch, max_blocks]: int32 ON THE DEVICE. chunk 0: global causal mask; C > 0: chunked causal
 * (key p visible from query position q iff p <= q and p / C == q / C). head_dim 64 or 128; query head h reads
 * KV head h / (n_heads / n_kv_heads); f32 softmax of scores * softmax_scale, bf16 out. q, out, caches 16-byte
 * aligned, workspace 256-byte aligned with at least l4k_attention_decode_workspace_size bytes (max_kv_len =
 * max_blocks * block_size; contents arbitrary). Every q_len(b) must be <= max_q_len. A sequence whose device
 * metadata is inconsistent (q_len < 0 or > max_q_len, q_len > seq_len, seq_len > max_blocks * block_size, a
 * block id outside the cache) writes none of its rows and adds 1 to *bad_seqs (one device uint32, may be
 * NULL). No host synchronization: capturable in a CUDA graph. Any block_size works; whole 64-key tiles arrive by
 * TMA where the layout allows it, by the rule l4k_attention_prefill_path reports, else by cp.async, with the same
 * result bits on either path. */
l4k_status l4k_attention_decode_workspace_size(int32_t batch, int32_t n_heads, int32_t n_kv_heads,
                                               int32_t head_dim, int32_t max_q_len, int32_t max_kv_len,
                                               int32_t chunk, size_t* bytes);
l4k_status l4k_attention_decode(const void* q, const void* k_cache, const void* v_cache,
                                const int32_t* cu_seqlens_q, const int32_t* seq_lens_k,
                                const int32_t* block_table, void* out, int64_t total_q, int32_t batch,
                                int32_t n_heads, int32_t n_kv_heads, int32_t head_dim, int64_t slots,
                                int32_t block_size, int32_t max_blocks, int32_t max_q_len, int32_t chunk,
                                float softmax_scale, void* workspace, size_t workspace_bytes, uint32_t* bad_seqs,
                                l4k_stream_t stream);
/* ---- attention_prefill: prefill attention over the paged KV cache ----------------------------------------
 * Sequence b has seq_lens_k[b] keys (its new tokens included) in the paged cache k_cache / v_cache
 * [slots, n_kv_heads, head_dim] bf16: key position p lives in slot block_table[b * max_blocks + p / block_size]
 * * block_size + p % block_size (any block_size >= 1). Its queries are rows cu_seqlens_q[b] .. cu_seqlens_q[b+1]
 * of q [total_q, n_heads, head_dim] bf16, the LAST q_len of its positions (fresh prefill: q_len == seq_len;
 * continued prefill: q_len < seq_len); every q_len <= max_q_len. chunk 0: causal mask; chunk C > 0: key p
 * visible from query position t iff p <= t and p / C == t / C. head_dim 64 or 128; query head h reads kv head
 * h / (n_heads / n_kv_heads); softmax of scores * softmax_scale in f32; out [total_q, n_heads, head_dim] bf16.
 * q, k_cache, v_cache 16-byte aligned. cu_seqlens_q, seq_lens_k, block_table: int32 ON THE DEVICE. A sequence
 * whose device metadata is inconsistent writes none of its rows and adds 1 to *bad_seqs (device uint32, may be
 * NULL). No workspace, no host synchronization: capturable in a CUDA graph. */
l4k_status l4k_attention_prefill(const void* q, const void* k_cache, const void* v_cache,
                                 const int32_t* cu_seqlens_q, const int32_t* seq_lens_k, const int32_t* block_table,
                                 void* out, int64_t total_q, int32_t batch, int32_t n_heads, int32_t n_kv_heads,
                                 int32_t head_dim, int64_t slots, int32_t block_size, int32_t max_blocks,
                                 int32_t max_q_len, int32_t chunk, float softmax_scale, uint32_t* bad_seqs,
                                 l4k_stream_t stream);

/* How l4k_attention_prefill (and, by the same rule, l4k_attention_decode) loads whole key tiles for a cache layout
 * on the current device (prefill's partial last tile of each sequence always goes by cp.async): TMA, or cp.async
 * because the layout does not allow TMA (block_size or chunk not a multiple of 64, a cache not 16-byte aligned,
 * slots 0 or over INT32_MAX) or because the driver did not encode the TMA tensor maps. Every path computes the same
 * result; TMA is the fast one. */
typedef enum l4k_prefill_path {
  L4K_PREFILL_PATH_TMA = 0,
  L4K_PREFILL_PATH_CP_ASYNC_LAYOUT = 1,
  L4K_PREFILL_PATH_CP_ASYNC_NO_TENSOR_MAP = 2
} l4k_prefill_path;
/* The path for these caches (arguments as in l4k_attention_prefill), written to *path as an l4k_prefill_path. */
l4k_status l4k_attention_prefill_path(const void* k_cache, const void* v_cache, int64_t slots, int32_t n_kv_heads,
                                      int32_t head_dim, int32_t block_size, int32_t chunk, int32_t* path);

/* ---- expert_parallel: routed experts sharded over ranks, rows exchanged over NCCL ------------------------
 * A world of N ranks (one GPU each; the NCCL communicator's size and this rank's index in it), E experts, rank d
 * owning the L = E / N local experts d * L .. d * L + L - 1. Every rank routes its own tokens over all E experts
 * (l4k_router) and makes their FP8 rows (l4k_permute_fp8 with the routing weights, or l4k_quant_fp8).
 * l4k_ep_dispatch sends each (token, choice) row (FP8 E4M3 + its f32 scale) to the rank owning its expert and writes
 * the rows this rank receives in the grouped GEMM's layout over its L local experts: local expert l owns rows
 * [grouped_offsets[l], grouped_offsets[l] + grouped_counts[l]) of grouped / grouped_scales, ordered by source rank,
 * then by the source's (token, choice) order; each block padded to a multiple of align as l4k_permute_fp8 pads
 * (padding rows: bytes 0, scale 1e-12 / 448). Run the experts on it (l4k_grouped_gemm_fp8 with grouped_counts),
 * then l4k_ep_combine sends each expert output row (bf16, [grouped_rows, hidden]) back to its token's rank and
 * writes out[t] = bf16(sum_c (weights[t, c] *) y(t, c) (+ shared[t])) exactly as l4k_unpermute does.
 *
 * Transfers are fixed-size, so nothing reaches the host and both calls can be captured in a CUDA graph: each rank
 * sends every rank (itself included) one slab of `capacity` rows with a header of its L per-expert counts, in one
 * ncclGroupStart/End of ncclSend/ncclRecv per call. More than `capacity` pairs for one destination is an error,
 * never a silent drop: the pairs past it are not sent and the workspace's status says so (l4k_ep_status).
 * capacity = max_tokens * k can never overflow; a smaller capacity moves fewer bytes (kernels/NOTES.md).
 *
 * comm: the ncclComm_t of the world, as void* so that this header does not need nccl.h; NULL is allowed when
 * world_size == 1 (the exchange is then a device copy, no NCCL). NCCL is loaded at run time (libnccl.so).
 * Every rank must call dispatch (and combine) in the same order, as for any NCCL collective.
 * workspace: l4k_ep_workspace_size bytes, 256-byte aligned, ZEROED before its first use (cudaMemset); it holds the
 * slabs, the status and where every row came from: keep it, and the tokens, from a dispatch to its combine. One
 * dispatch-combine pair at a time per workspace. grouped_rows must be l4k_ep_grouped_rows(config) (more is allowed).
 * The grouped GEMM's auto schedule only sees grouped_rows (all capacity): pass the schedule for the rows expected,
 * l4k_grouped_gemm_auto_schedule(tokens * k, L, &schedule) when the routing is balanced.
 *
 * dispatch inputs: ids, dest [tokens, k] int32, counts [E] and offsets [E + 1] int32: l4k_router's outputs (any
 * align); rows [rows_in, hidden] E4M3 with row_scales [rows_in] f32, where pair (t, c) is row dest[t, c]
 * (rows_by L4K_EP_ROWS_PERMUTED: l4k_permute_fp8's output) or row t (L4K_EP_ROWS_TOKENS: l4k_quant_fp8 of x).
 * hidden % 16 == 0 with 16-byte aligned rows and grouped takes the vector path. */
enum { L4K_EP_MAX_RANKS = 64, L4K_EP_ROWS_PERMUTED = 0, L4K_EP_ROWS_TOKENS = 1 };
/* Bits of the status flags word. */
enum {
  L4K_EP_BAD_EXPERT = 1,  /* an expert id outside [0, experts): the pair was not sent */
  L4K_EP_BAD_ROUTING = 2, /* a dest outside its expert's block, a row past rows_in, or a negative count */
  L4K_EP_OVERFLOW = 4,    /* more pairs for one destination than capacity: those past it were not sent */
  L4K_EP_BAD_HEADER = 8,  /* a received header with a negative count or more rows than capacity: ignored */
  L4K_EP_BAD_ROW = 16     /* an internal row index out of range (a bug) */
};

typedef struct l4k_ep_config {
  int32_t world_size; /* N, 1 ..= L4K_EP_MAX_RANKS: the communicator's size */
  int32_t rank;       /* this rank, 0 ..= N - 1: the communicator's rank */
  int32_t experts;    /* E, 1 ..= 256, a multiple of N */
  int32_t k;          /* choices per token, 1 ..= 8 */
  int64_t hidden;     /* row width (elements), >= 1 */
  int64_t max_tokens; /* tokens per call at most, the same on every rank */
  int64_t capacity;   /* rows one rank may send another per call, 1 ..= max_tokens * k (the same on every rank) */
  int32_t align;      /* grouped layout: each local expert's rows padded to a multiple of align, 1 ..= 4096 */
  int32_t _pad;       /* 0 */
} l4k_ep_config;

l4k_status l4k_ep_workspace_size(const l4k_ep_config* config, size_t* bytes);
/* Rows of the grouped layout: world_size * capacity + L * (align - 1). */
l4k_status l4k_ep_grouped_rows(const l4k_ep_config* config, int64_t* rows);
/* tokens <= max_tokens (0 is allowed: this rank still sends its empty slabs and receives). */
l4k_status l4k_ep_dispatch(void* comm, const l4k_ep_config* config, int64_t tokens, const int32_t* ids,
                           const int32_t* counts, const int32_t* offsets, const int32_t* dest, const void* rows,
                           const float* row_scales, int64_t rows_in, int32_t rows_by, void* grouped,
                           float* grouped_scales, int32_t* grouped_counts, int32_t* grouped_offsets,
                           int64_t grouped_rows, void* workspace, size_t workspace_bytes, l4k_stream_t stream);
/* expert_out: [grouped_rows, hidden] bf16 (rows of the dispatch's grouped layout); weights: [tokens, k] f32 or
 * NULL (Llama 4: NULL, the weights scaled the input); shared: [tokens, hidden] bf16 or NULL; out: [tokens, hidden]
 * bf16. tokens: the dispatch's. */
l4k_status l4k_ep_combine(void* comm, const l4k_ep_config* config, int64_t tokens, const void* expert_out,
                          int64_t grouped_rows, const float* weights, const void* shared, void* out, void* workspace,
                          size_t workspace_bytes, l4k_stream_t stream);
/* Waits for the stream, then copies the workspace's status to status[4] (host): flags (L4K_EP_* bits), pairs not
 * sent, the largest number of pairs one destination wanted (the capacity that would have sufficed), rows ignored
 * on receipt. Sticky across calls until read with clear != 0 (then zeroed). Synchronizes: not inside a graph. */
l4k_status l4k_ep_status(void* workspace, int32_t clear, uint32_t* status, l4k_stream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* LLAMA4_KERNELS_H */
