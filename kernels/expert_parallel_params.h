// Launch parameters of the expert-parallel kernels (expert_parallel.cu). ops/expert_parallel.rs mirrors the
// struct (ops/ffi.rs, checked field by field against kernels/abi.cu's table) and lays out the workspace regions
// the pointers below address; kernels/NOTES.md ("Expert parallelism over NCCL") has the design.
//
// World of N = world_size ranks, E experts, L = E / N local experts per rank (rank d owns d * L .. d * L + L - 1).
// Per call and per rank: a dispatch slab for every destination rank (itself included), slab_bytes each:
//   [0, rows_off)                 header: L int32, the rows of each of the destination's local experts
//   [rows_off, rows_off + C * H)  C = capacity FP8 rows of H bytes, expert-major, then (token, choice) order
//   [scales_off, scales_off + 4C) their f32 scales
// and a combine slab of C bf16 rows per rank ([N * C, H] contiguous over the ranks).
#pragma once
#include <stdint.h>

#include "../include/llama4_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct L4kExpertParallelParams {
  // This rank's routing (the router's outputs) and FP8 rows: pack.
  const int32_t* ids;       // [tokens, k] expert of each (token, choice), 0 ..= experts - 1
  const int32_t* counts;    // [experts] pairs per expert
  const int32_t* offsets;   // [experts + 1] (padded) row starts: dest[p] - offsets[e] is p's rank within e
  const int32_t* dest;      // [tokens, k]
  const void* rows;         // [rows_in, hidden] E4M3: pair (t, c) is row dest[t, c] or row t (rows_by)
  const float* row_scales;  // [rows_in]
  // The grouped layout of the rows this rank receives: unpack writes it, combine pack reads expert_out.
  void* grouped;            // [grouped_rows, hidden] E4M3
  float* grouped_scales;    // [grouped_rows]
  int32_t* grouped_counts;  // [L]
  int32_t* grouped_offsets; // [L + 1]
  const void* expert_out;   // [grouped_rows, hidden] bf16
  // Workspace regions (ops/expert_parallel.rs Layout).
  uint32_t* status;         // [4]: flags (L4K_EP_*), dropped pairs, largest demand of one destination, rows ignored
  int32_t* slot;            // [tokens, k]: where (t, c) went, dst * capacity + position, or -1 (not sent)
  void* send;               // pack: [world, slab_bytes]; combine pack: [world * capacity, hidden] bf16
  const void* recv;         // unpack: [world, slab_bytes] as received
  int32_t* row_of_slot;     // [world * capacity]: grouped row of received slot (s, j), or -1
  int32_t* table;           // [world, L + 1] prefix of each source's counts, then [world, L] base rows
  int64_t tokens;
  int64_t hidden;
  int64_t rows_in;
  int64_t grouped_rows;
  int64_t capacity;
  int64_t slab_bytes;
  int64_t rows_off;         // header bytes: a multiple of 16
  int64_t scales_off;
  int32_t world_size;
  int32_t rank;
  int32_t experts;
  int32_t k;
  int32_t align;
  int32_t rows_by;          // L4K_EP_ROWS_PERMUTED or L4K_EP_ROWS_TOKENS
} L4kExpertParallelParams;

#ifdef __cplusplus
}
#endif
