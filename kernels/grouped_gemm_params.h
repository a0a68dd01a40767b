// Launch parameters of the FP8 grouped GEMM (grouped_gemm.cu), mirrored in ops/ffi.rs (checked field by field
// against kernels/abi.cu's table, as params.h says).
#pragma once
#include <stdint.h>

#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

// Which kernel configuration runs; AUTO picks by rows per expert (ops/grouped_gemm.rs documents the threshold).
// The tiles and why: the top comments of grouped_gemm.cu and grouped_gemm_blockwise.cu.
typedef enum L4kGemmSchedule {
  L4K_GEMM_AUTO = 0,
  // Many rows per expert, tensor-core bound: cooperative tiles with promoted (accurate) FP8 accumulation and no
  // cluster, 128x192x128 when n is within 2% of a multiple of 192 and the experts average more than 128 rows,
  // else 128x128x128 (grouped_gemm.cu's prefill_wide); the SwiGLU epilogue 128x192x128. Blockwise: 128x128x128
  // with a 1x2 cluster.
  L4K_GEMM_PREFILL = 1,
  L4K_GEMM_DECODE = 2,  // A/B swapped, 128x32x128 tiles: few rows per expert, bound by reading the weights
  // FP8 accumulation without promotion (faster, less exact; rowwise only): 256x128x128 with a 1x2 cluster, or
  // 128x256x128 with none where the experts average at most 128 rows.
  L4K_GEMM_PREFILL_FAST_ACCUM = 3,
  // Up to 8 rows per expert (batch 1-8 decode): CTAs of 16 weight rows x the whole k on mma.sync, bound by
  // streaming the touched experts' weights (grouped_gemm_gemv.cu). Rowwise only; no workspace.
  L4K_GEMM_GEMV = 4,
} L4kGemmSchedule;

// D[r, :] = bf16((A[r, :] . B[e]^T) * scale_a[r] * scale_b[e, :]) for the rows r of expert e:
// r in [offsets[e], offsets[e] + m_e) with m_e = counts ? counts[e] : offsets[e + 1] - offsets[e].
typedef struct L4kGroupedGemmParams {
  const void* a;           // [rows, k] E4M3, rows sorted by expert (the permute layout)
  const float* scale_a;    // [rows] per-row scales
  const void* b;           // [experts, n, k] E4M3, k contiguous (each expert's weight as nn.Linear [out, in])
  const float* scale_b;    // [experts, n] per-(expert, output column) scales
  const int32_t* offsets;  // [experts + 1] on the device: first row of each expert
  const int32_t* counts;   // [experts] on the device, or NULL (see above); rows past m_e are not written
  void* d;                 // [rows, n] bf16
  uint32_t* bad_offsets;   // optional: set to 1 if offsets/counts are inconsistent (then no row is written)
  void* workspace;         // l4k_grouped_gemm_workspace_size bytes
  int64_t workspace_bytes;
  int64_t rows;
  int64_t n;               // multiple of 8
  int64_t k;               // multiple of 16
  int32_t experts;
  int32_t schedule;        // L4kGemmSchedule
} L4kGroupedGemmParams;

#ifdef __cplusplus
}
#endif
