// Host-side services of the kernel library: cudaError_t strings, and the tables of the C-Rust contract. Every
// struct the Rust side mirrors (the launch parameters of kernels/*_params.h and params.h, and the C ABI's own
// structs in include/llama4_kernels.h) is listed here with each field's name, offset, size and kind, and every
// constant it mirrors with its value; ops/abi.rs compares its #[repr(C)] mirrors and constants with these, name
// by name, in a CPU test. A table cannot leave a field out: the static_asserts require the listed fields to tile
// the struct in declaration order (tail padding stated).
// Also: the attention kernels' key-range rule, compiled for the host, for the Rust tests.
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include <type_traits>

#include "../include/llama4_kernels.h"
#include "attention_params.h"
#include "expert_parallel_params.h"
#include "grouped_gemm_params.h"
#include "paged_kv.cuh"
#include "params.h"

namespace {

struct Field {
  const char* name;
  size_t offset;
  size_t size;
  char kind;
};

struct Layout {
  const char* name;
  size_t size;
  const Field* fields;
  size_t count;
};

// 'i' signed integer, 'u' unsigned integer, 'f' floating point, 'p' pointer to const, 'm' pointer to mutable;
// an array has its element's kind (its size says how many). ops/abi.rs derives the same letter from Rust types.
template <class T>
constexpr char kind_of() {
  using E = std::remove_all_extents_t<T>;
  if constexpr (std::is_pointer_v<E>) return std::is_const_v<std::remove_pointer_t<E>> ? 'p' : 'm';
  if constexpr (std::is_floating_point_v<E>) return 'f';
  if constexpr (std::is_integral_v<E>) return std::is_signed_v<E> ? 'i' : 'u';
  return '?';
}

// The bytes after the last field, or SIZE_MAX unless each field starts where the one before ends: a field left
// out (or listed out of order) breaks the chain, so a complete table is one that tiles its struct.
template <size_t N>
constexpr size_t untiled(const Field (&f)[N], size_t size) {
  size_t end = 0;
  for (size_t i = 0; i < N; ++i) {
    if (f[i].offset != end || f[i].kind == '?') return SIZE_MAX;
    end += f[i].size;
  }
  return end <= size ? size - end : SIZE_MAX;
}

#define F(f) Field{#f, offsetof(S, f), sizeof(S::f), kind_of<decltype(S::f)>()}
#define L4K_TABLE(id, Struct, tail, ...)                                                                \
  namespace id {                                                                                        \
  using S = Struct;                                                                                     \
  constexpr Field fields[] = {__VA_ARGS__};                                                             \
  static_assert(untiled(fields, sizeof(S)) == (tail), #Struct ": the table misses or misorders a field"); \
  constexpr Layout layout{#Struct, sizeof(S), fields, sizeof(fields) / sizeof(Field)};                  \
  }

L4K_TABLE(rmsnorm, L4kRmsnormParams, 0,
          F(x), F(residual), F(residual_out), F(weight), F(y), F(rows), F(cols), F(eps), F(_pad), F(y_fp8),
          F(y_scales))
L4K_TABLE(rope, L4kRopeParams, 0,
          F(qkv), F(pos), F(slots), F(q_out), F(k_cache), F(v_cache), F(bad_slots), F(tokens), F(cache_slots),
          F(n_heads), F(n_kv_heads), F(head_dim), F(rope), F(qk_norm), F(temperature), F(eps), F(floor_scale),
          F(attn_scale), F(_pad), F(inv_freq))
L4K_TABLE(swiglu, L4kSwigluParams, 0,
          F(gate_up), F(out), F(scales), F(tokens), F(inter), F(out_kind), F(_pad))
L4K_TABLE(quant, L4kQuantParams, 0,
          F(x), F(out), F(scales), F(rows), F(cols))
L4K_TABLE(router, L4kRouterParams, 0,
          F(logits), F(ids), F(weights), F(counts), F(offsets), F(dest), F(workspace), F(workspace_bytes), F(tokens),
          F(experts), F(k), F(mode), F(logits_dtype), F(renormalize), F(align))
L4K_TABLE(permute, L4kPermuteParams, 0,
          F(x), F(weights), F(dest), F(counts), F(offsets), F(out), F(scales), F(tokens), F(hidden), F(rows), F(k),
          F(experts), F(align), F(out_kind))
L4K_TABLE(unpermute, L4kUnpermuteParams, 0,
          F(expert_out), F(weights), F(dest), F(shared), F(out), F(tokens), F(hidden), F(rows), F(k), F(_pad))
L4K_TABLE(unpermute_norm, L4kUnpermuteNormParams, 0,
          F(expert_out), F(weights), F(dest), F(shared), F(residual), F(weight), F(y), F(tokens), F(hidden), F(rows),
          F(k), F(eps), F(y_fp8), F(y_scales))
L4K_TABLE(weight_prep, L4kWeightPrepParams, 0,
          F(w), F(out), F(scales), F(experts), F(k), F(n))
L4K_TABLE(embedding, L4kEmbeddingParams, 0,
          F(table), F(ids), F(out), F(bad_ids), F(rows), F(tokens), F(hidden))
L4K_TABLE(linear, L4kLinearParams, 0,
          F(x), F(w), F(y), F(m), F(n), F(k), F(out_dtype), F(max_ctas))
L4K_TABLE(argmax, L4kArgmaxParams, 0,
          F(logits), F(out), F(rows), F(cols))
L4K_TABLE(random, L4kRandomParams, 0,
          F(out), F(n), F(seed), F(first), F(bound), F(_pad))
L4K_TABLE(attention, L4kAttentionParams, 0,
          F(q), F(k_cache), F(v_cache), F(cu_seqlens_q), F(seq_lens_k), F(block_table), F(out), F(bad_seqs),
          F(workspace), F(workspace_bytes), F(total_q), F(slots), F(batch), F(max_blocks), F(block_size), F(n_heads),
          F(n_kv_heads), F(head_dim), F(chunk), F(max_q_len), F(softmax_scale), F(_pad))
L4K_TABLE(grouped_gemm, L4kGroupedGemmParams, 0,
          F(a), F(scale_a), F(b), F(scale_b), F(offsets), F(counts), F(d), F(bad_offsets), F(workspace),
          F(workspace_bytes), F(rows), F(n), F(k), F(experts), F(schedule))
L4K_TABLE(expert_parallel, L4kExpertParallelParams, 0,
          F(ids), F(counts), F(offsets), F(dest), F(rows), F(row_scales), F(grouped), F(grouped_scales),
          F(grouped_counts), F(grouped_offsets), F(expert_out), F(status), F(slot), F(send), F(recv), F(row_of_slot),
          F(table), F(tokens), F(hidden), F(rows_in), F(grouped_rows), F(capacity), F(slab_bytes), F(rows_off),
          F(scales_off), F(world_size), F(rank), F(experts), F(k), F(align), F(rows_by))
L4K_TABLE(ep_config, l4k_ep_config, 0,
          F(world_size), F(rank), F(experts), F(k), F(hidden), F(max_tokens), F(capacity), F(align), F(_pad))
L4K_TABLE(llama3_scaling, l4k_llama3_scaling, 0,
          F(factor), F(low_freq_factor), F(high_freq_factor), F(original_max_position_embeddings))
L4K_TABLE(rope_layer, l4k_rope_layer, 4,
          F(n_heads), F(n_kv_heads), F(head_dim), F(kind), F(inv_freq), F(qk_norm), F(qk_norm_eps), F(temperature),
          F(floor_scale), F(attn_scale))

#undef L4K_TABLE
#undef F

constexpr Layout kLayouts[] = {
    rmsnorm::layout,
    rope::layout,
    swiglu::layout,
    quant::layout,
    router::layout,
    permute::layout,
    unpermute::layout,
    unpermute_norm::layout,
    weight_prep::layout,
    embedding::layout,
    linear::layout,
    argmax::layout,
    random::layout,
    attention::layout,
    grouped_gemm::layout,
    expert_parallel::layout,
    ep_config::layout,
    llama3_scaling::layout,
    rope_layer::layout,
};

struct Constant {
  const char* name;
  int64_t value;
};

#define C(name) Constant{#name, static_cast<int64_t>(name)}
constexpr Constant kConstants[] = {
    C(L4K_OK), C(L4K_ERROR_INVALID_ARGUMENT), C(L4K_ERROR_UNSUPPORTED), C(L4K_ERROR_CUDA), C(L4K_ERROR_NO_DEVICE),
    C(L4K_ERROR_PANIC), C(L4K_STATUS_TOO_LONG), C(L4K_STATUS_BAD_WORKSPACE), C(L4K_STATUS_GEMM_CANNOT_IMPLEMENT),
    C(L4K_STATUS_GEMM_CUTLASS), C(L4K_STATUS_UNSUPPORTED_SHAPE), C(L4K_STATUS_BAD_PARAMS), C(L4K_MAX_HEAD_DIM),
    C(L4K_LAYER_ROPE), C(L4K_LAYER_NOPE), C(L4K_SWIGLU_BF16), C(L4K_SWIGLU_FP8), C(L4K_ROUTER_MAX_EXPERTS),
    C(L4K_ROUTER_MAX_TOP_K), C(L4K_ROUTER_SIGMOID_TOP1), C(L4K_ROUTER_SOFTMAX_TOPK), C(L4K_LOGITS_BF16),
    C(L4K_LOGITS_F32), C(L4K_PERMUTE_BF16), C(L4K_PERMUTE_FP8), C(L4K_GEMM_AUTO), C(L4K_GEMM_PREFILL),
    C(L4K_GEMM_DECODE), C(L4K_GEMM_PREFILL_FAST_ACCUM), C(L4K_GEMM_GEMV), C(L4K_LINEAR_OUT_BF16), C(L4K_LINEAR_OUT_F32),
    C(L4K_LINEAR_WORKSPACE_BYTES), C(L4K_PREFILL_PATH_TMA), C(L4K_PREFILL_PATH_CP_ASYNC_LAYOUT),
    C(L4K_PREFILL_PATH_CP_ASYNC_NO_TENSOR_MAP), C(L4K_EP_MAX_RANKS), C(L4K_EP_ROWS_PERMUTED), C(L4K_EP_ROWS_TOKENS),
    C(L4K_EP_BAD_EXPERT), C(L4K_EP_BAD_ROUTING), C(L4K_EP_OVERFLOW), C(L4K_EP_BAD_HEADER), C(L4K_EP_BAD_ROW),
};
#undef C

constexpr int kLayoutCount = sizeof(kLayouts) / sizeof(Layout);
constexpr int kConstantCount = sizeof(kConstants) / sizeof(Constant);

}  // namespace

extern "C" const char* l4k_internal_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

// Struct `which` (0, 1, ...): its C name, with its sizeof in *size; NULL past the last one.
extern "C" const char* l4k_internal_params_struct(int which, size_t* size) {
  if (which < 0 || which >= kLayoutCount) return nullptr;
  *size = kLayouts[which].size;
  return kLayouts[which].name;
}

// Field `index` of struct `which`, in declaration order: 0 with its name, offsetof, sizeof and kind (see
// kind_of), or -1 past the last field.
extern "C" int l4k_internal_params_field(int which, int index, const char** name, size_t* offset, size_t* size,
                                         char* kind) {
  if (which < 0 || which >= kLayoutCount || index < 0 || static_cast<size_t>(index) >= kLayouts[which].count)
    return -1;
  const Field& f = kLayouts[which].fields[index];
  *name = f.name;
  *offset = f.offset;
  *size = f.size;
  *kind = f.kind;
  return 0;
}

// Constant `index` (0, 1, ...): its C name, with its value in *value; NULL past the last one.
extern "C" const char* l4k_internal_constant(int index, int64_t* value) {
  if (index < 0 || index >= kConstantCount) return nullptr;
  *value = kConstants[index].value;
  return kConstants[index].name;
}

// The keys [lo, hi) the attention kernels visit for the query positions [q_first, q_last] under mask `chunk`
// (kernels/paged_kv.cuh key_range: the kernels' own code, compiled for the host).
extern "C" void l4k_internal_attention_key_range(int32_t q_first, int32_t q_last, int32_t chunk, int32_t* lo,
                                                 int32_t* hi) {
  const l4k::paged_kv::KeyRange r = l4k::paged_kv::key_range(q_first, q_last, chunk);
  *lo = r.lo;
  *hi = r.hi;
}
