// TMA over the paged KV cache, host side: the tensor maps of the K and V caches and the one rule both attention
// kernels use to decide whether their key tiles may arrive by TMA (the launchers and l4k_attention_prefill_path
// share it, so the path a caller is told is the path taken).
#pragma once
#include <cuda.h>
#include <cudaTypedefs.h>
#include <stdint.h>
#include <string.h>

#include "attention_params.h"
#include "params.h"

namespace l4k {
namespace paged_kv {

// cuTensorMapEncodeTiled from the driver (cudart links statically; the driver API is reached through it).
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      ptr = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// TMA map of a [rows, heads, d] bf16 tensor as (dims, heads, rows), boxes of 64 dims x 1 head x box_rows rows in the
// 128-byte swizzle (16-byte chunk c of box row j lands at chunk c ^ (j & 7)): the layout wgmma and ldmatrix read
// without bank conflicts or padding.
inline bool encode_rows_map(CUtensorMap* map, const void* base, int64_t rows, int heads, int d, uint32_t box_rows,
                            CUtensorMapL2promotion promotion) {
  PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr || rows <= 0) return false;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(d), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(d) * 2, static_cast<cuuint64_t>(d) * heads * 2};
  const cuuint32_t box[3] = {64, 1, box_rows};
  const cuuint32_t elem[3] = {1, 1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(base), dims, strides, box, elem,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, promotion,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Whether whole 64-key tiles of p's cache may arrive by TMA (an l4k_prefill_path code), with the K and V maps
// (64-slot boxes) when they may. A tile must be 64 consecutive slots of one block: block_size and chunk multiples of
// 64 (tiles start at 0 or a chunk start, in steps of 64), slots addressable as int32 box coordinates, 16-byte
// aligned caches, and a driver that encodes the maps. `promotion`: the maps' L2 promotion (prefill re-reads a tile
// from L2 across the heads of a group and asks for 256 B; decode reads every byte once).
inline int key_tile_path(const L4kAttentionParams& p, CUtensorMap* tm_k, CUtensorMap* tm_v,
                         CUtensorMapL2promotion promotion) {
  memset(tm_k, 0, sizeof(*tm_k));
  memset(tm_v, 0, sizeof(*tm_v));
  const bool layout = p.block_size % 64 == 0 && p.chunk % 64 == 0 && p.slots > 0 && p.slots <= INT32_MAX &&
                      reinterpret_cast<uintptr_t>(p.k_cache) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(p.v_cache) % 16 == 0;
  if (!layout) return L4K_PREFILL_PATH_CP_ASYNC_LAYOUT;
  if (!encode_rows_map(tm_k, p.k_cache, p.slots, p.n_kv_heads, p.head_dim, 64, promotion) ||
      !encode_rows_map(tm_v, p.v_cache, p.slots, p.n_kv_heads, p.head_dim, 64, promotion))
    return L4K_PREFILL_PATH_CP_ASYNC_NO_TENSOR_MAP;
  return L4K_PREFILL_PATH_TMA;
}

}  // namespace paged_kv
}  // namespace l4k
