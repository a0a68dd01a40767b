/* Compiled as plain C99 against include/llama4_kernels.h and linked with the static library: the header is
 * valid C, the symbols it declares exist, and validation answers without a GPU. (The same entry points run
 * on the device in tests/gpu/capi.rs.) */
#include <stdio.h>
#include <string.h>

#include "llama4_kernels.h"

static int failures = 0;
#define CHECK(cond, ...)                                   \
  do {                                                     \
    if (!(cond)) {                                         \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                        \
      fprintf(stderr, "\n");                               \
      failures++;                                          \
    }                                                      \
  } while (0)

int main(void) {
  l4k_status s;
  float inv[64];
  l4k_llama3_scaling sc = {16.0f, 1.0f, 1.0f, 8192.0f};
  l4k_rope_layer layer;

  CHECK(strlen(l4k_version()) > 0, "empty version");

  s = l4k_rmsnorm(NULL, NULL, NULL, 4, 64, 1e-5f, NULL);
  CHECK(s == L4K_ERROR_INVALID_ARGUMENT, "null x: status %d", (int)s);
  CHECK(strstr(l4k_last_error(), "x is null") != NULL, "message: %s", l4k_last_error());

  s = l4k_rmsnorm((const void*)0x1001, (const void*)0x2000, (void*)0x3000, 4, 64, 1e-5f, NULL);
  CHECK(s == L4K_ERROR_INVALID_ARGUMENT && strstr(l4k_last_error(), "aligned") != NULL, "misaligned x: %d %s",
        (int)s, l4k_last_error());

  s = l4k_rmsnorm(NULL, NULL, NULL, 0, 64, 1e-5f, NULL);
  CHECK(s == L4K_OK && l4k_last_error()[0] == '\0', "zero rows must be a no-op: %d %s", (int)s, l4k_last_error());

  /* The FP8 copy of the *_with_fp8 norms is not optional; a misaligned scale vector is refused. */
  s = l4k_rmsnorm_with_fp8((const void*)0x1000, (const void*)0x2000, (void*)0x3000, NULL, (float*)0x4000, 4, 64,
                           1e-5f, NULL);
  CHECK(s == L4K_ERROR_INVALID_ARGUMENT && strstr(l4k_last_error(), "must not be null") != NULL,
        "null y_fp8: %d %s", (int)s, l4k_last_error());
  s = l4k_add_rmsnorm_with_fp8((const void*)0x1000, (void*)0x5000, (const void*)0x2000, (void*)0x3000,
                               (void*)0x6000, (float*)0x4002, 4, 64, 1e-5f, NULL);
  CHECK(s == L4K_ERROR_INVALID_ARGUMENT && strstr(l4k_last_error(), "y_scales") != NULL &&
            strstr(l4k_last_error(), "aligned") != NULL,
        "misaligned y_scales: %d %s", (int)s, l4k_last_error());
  s = l4k_unpermute_add_rmsnorm_with_fp8((const void*)0x1000, NULL, (const int32_t*)0x2000, NULL, (void*)0x5000,
                                         (const void*)0x3000, (void*)0x4000, (void*)0x6000, NULL, 1e-5f, 2, 64, 1, 2,
                                         NULL);
  CHECK(s == L4K_ERROR_INVALID_ARGUMENT && strstr(l4k_last_error(), "must not be null") != NULL,
        "null y_scales: %d %s", (int)s, l4k_last_error());

  s = l4k_unpermute_add_rmsnorm((const void*)0x1000, NULL, (const int32_t*)0x2000, NULL, NULL, (const void*)0x3000,
                                (void*)0x4000, 1e-5f, 2, 64, 1, 2, NULL);
  CHECK(s == L4K_ERROR_INVALID_ARGUMENT && strstr(l4k_last_error(), "residual is null") != NULL,
        "null residual: %d %s", (int)s, l4k_last_error());
  s = l4k_unpermute_add_rmsnorm((const void*)0x1000, NULL, (const int32_t*)0x2000, NULL, (void*)0x5000,
                                (const void*)0x3000, (void*)0x4000, 1e-5f, 2, 64, 9, 2, NULL);
  CHECK(s == L4K_ERROR_UNSUPPORTED, "k = 9: %d %s", (int)s, l4k_last_error());

  {
    size_t route_ws = 0;
    s = l4k_route_fp8_workspace_size(16, &route_ws);
    CHECK(s == L4K_OK && route_ws == 8 * 16 * 8 * 4, "route_fp8 workspace for 16 experts: %d %zu", (int)s, route_ws);
    /* More tokens than one launch routes, a null x, then a misaligned one: refused before anything runs. */
    s = l4k_route_fp8((const void*)0x1000, (const void*)0x2000, 9, 64, 16, L4K_ROUTER_SIGMOID_TOP1, 1, 0,
                      (void*)0x3000, (int32_t*)0x4000, (float*)0x5000, (int32_t*)0x6000, (int32_t*)0x7000,
                      (int32_t*)0x8000, (void*)0x9000, (float*)0xa000, 9, (void*)0xb000, route_ws, NULL);
    CHECK(s == L4K_ERROR_UNSUPPORTED, "route_fp8 with 9 tokens: %d %s", (int)s, l4k_last_error());
    s = l4k_route_fp8(NULL, (const void*)0x2000, 1, 64, 16, L4K_ROUTER_SIGMOID_TOP1, 1, 0, (void*)0x3000,
                      (int32_t*)0x4000, (float*)0x5000, (int32_t*)0x6000, (int32_t*)0x7000, (int32_t*)0x8000,
                      (void*)0x9000, (float*)0xa000, 1, (void*)0xb000, route_ws, NULL);
    CHECK(s == L4K_ERROR_INVALID_ARGUMENT && strstr(l4k_last_error(), "x is null") != NULL, "route_fp8 null x: %s",
          l4k_last_error());
    s = l4k_route_fp8((const void*)0x1008, (const void*)0x2000, 1, 64, 16, L4K_ROUTER_SIGMOID_TOP1, 1, 0,
                      (void*)0x3000, (int32_t*)0x4000, (float*)0x5000, (int32_t*)0x6000, (int32_t*)0x7000,
                      (int32_t*)0x8000, (void*)0x9000, (float*)0xa000, 1, (void*)0xb000, route_ws, NULL);
    CHECK(s == L4K_ERROR_INVALID_ARGUMENT && strstr(l4k_last_error(), "aligned") != NULL, "route_fp8 x: %s",
          l4k_last_error());
    s = l4k_route_fp8(NULL, NULL, 0, 64, 16, L4K_ROUTER_SIGMOID_TOP1, 1, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                      NULL, 0, NULL, route_ws, NULL);
    CHECK(s == L4K_OK, "route_fp8 with zero tokens must be a no-op: %d %s", (int)s, l4k_last_error());
  }

  s = l4k_swiglu_fp8((const void*)0x1000, (void*)0x2000, (float*)0x3000, 3, -1, NULL);
  CHECK(s == L4K_ERROR_INVALID_ARGUMENT, "negative inter: %d", (int)s);

  s = l4k_quant_fp8((const void*)0x1000, (void*)0x2000, NULL, 3, 8, NULL);
  CHECK(s == L4K_ERROR_INVALID_ARGUMENT && strstr(l4k_last_error(), "scales") != NULL, "null scales: %s",
        l4k_last_error());

  s = l4k_quantize_expert_weights((const void*)0x1000, (void*)0x2000, (float*)0x3000, 2, 64, -8, NULL);
  CHECK(s == L4K_ERROR_INVALID_ARGUMENT && strstr(l4k_last_error(), "negative") != NULL, "negative n: %s",
        l4k_last_error());
  s = l4k_quantize_expert_weights(NULL, NULL, NULL, 0, 64, 64, NULL);
  CHECK(s == L4K_OK, "zero experts must be a no-op: %d %s", (int)s, l4k_last_error());

  s = l4k_rope_inv_freq(500000.0f, 128, &sc, inv);
  CHECK(s == L4K_OK && inv[0] == 1.0f && inv[63] > 0.0f, "inv_freq: %d %s", (int)s, l4k_last_error());

  memset(&layer, 0, sizeof layer);
  layer.n_heads = 40;
  layer.n_kv_heads = 8;
  layer.head_dim = 512;
  layer.kind = L4K_LAYER_NOPE;
  s = l4k_rope_qkv((const void*)0x1000, (const int32_t*)0x2000, (const int64_t*)0x3000, 1, &layer, (void*)0x4000,
                   (void*)0x5000, (void*)0x6000, 16, NULL, NULL);
  CHECK(s == L4K_ERROR_UNSUPPORTED, "head_dim 512: %d %s", (int)s, l4k_last_error());

  s = l4k_attention_prefill((const void*)0x1000, (const void*)0x2000, (const void*)0x3000, (const int32_t*)0x4000,
                            (const int32_t*)0x5000, (const int32_t*)0x6000, (void*)0x7000, 16, 1, 40, 8,
                            96, 64, 16, 4, 16, 0, 0.125f, NULL, NULL);
  CHECK(s == L4K_ERROR_UNSUPPORTED, "attention head_dim 96: %d %s", (int)s, l4k_last_error());
  s = l4k_attention_prefill((const void*)0x1000, (const void*)0x2000, (const void*)0x3000, (const int32_t*)0x4000,
                            (const int32_t*)0x5000, (const int32_t*)0x6000, (void*)0x7000, 16, 1, 40, 6,
                            128, 64, 16, 4, 16, 0, 0.125f, NULL, NULL);
  CHECK(s == L4K_ERROR_INVALID_ARGUMENT, "attention 40 over 6 heads: %d", (int)s);
  CHECK(strstr(l4k_last_error(), "kv heads") != NULL, "message: %s", l4k_last_error());
  {
    /* 16-slot blocks cannot go by TMA: the answer needs no device. */
    int32_t path = L4K_PREFILL_PATH_TMA;
    s = l4k_attention_prefill_path((const void*)0x2000, (const void*)0x3000, 64, 8, 128, 16, 0, &path);
    CHECK(s == L4K_OK && path == L4K_PREFILL_PATH_CP_ASYNC_LAYOUT, "prefill path, 16-slot blocks: %d %d %s", (int)s,
          (int)path, l4k_last_error());
    s = l4k_attention_prefill_path((const void*)0x2000, (const void*)0x3000, 64, 8, 128, 16, 0, NULL);
    CHECK(s == L4K_ERROR_INVALID_ARGUMENT, "prefill path to NULL: %d", (int)s);
  }

  /* Blockwise grouped GEMM: k must be whole 128-wide scale groups; fast accumulation has no blockwise kernel. */
  s = l4k_grouped_gemm_fp8_blockwise((const void*)0x1000, (const float*)0x2000, (const void*)0x3000,
                                     (const float*)0x4000, (const int32_t*)0x5000, NULL, (void*)0x6000, 8, 256,
                                     200, 2, 0, (void*)0x7000, 1 << 20, NULL, NULL);
  CHECK(s == L4K_ERROR_INVALID_ARGUMENT && strstr(l4k_last_error(), "multiple of 128") != NULL,
        "blockwise k = 200: %d %s", (int)s, l4k_last_error());
  s = l4k_grouped_gemm_fp8_blockwise((const void*)0x1000, (const float*)0x2000, (const void*)0x3000,
                                     (const float*)0x4000, (const int32_t*)0x5000, NULL, (void*)0x6000, 8, 256,
                                     256, 2, 3, (void*)0x7000, 1 << 20, NULL, NULL);
  CHECK(s == L4K_ERROR_UNSUPPORTED, "blockwise fast accumulation: %d %s", (int)s, l4k_last_error());

  /* Row gather and greedy sampling: validation before any launch. */
  s = l4k_embedding((const void*)0x1000, NULL, (void*)0x2000, 100, 4, 64, NULL, NULL);
  CHECK(s == L4K_ERROR_INVALID_ARGUMENT && strstr(l4k_last_error(), "ids is null") != NULL, "null ids: %d %s",
        (int)s, l4k_last_error());
  s = l4k_embedding(NULL, NULL, NULL, 100, 0, 64, NULL, NULL);
  CHECK(s == L4K_OK, "zero tokens must be a no-op: %d %s", (int)s, l4k_last_error());
  s = l4k_argmax((const float*)0x1000, (int32_t*)0x2000, 4, 0, NULL);
  CHECK(s == L4K_ERROR_INVALID_ARGUMENT && strstr(l4k_last_error(), "cols") != NULL, "argmax cols 0: %d %s",
        (int)s, l4k_last_error());

  /* Dense linear: the handle is checked first; the FP8 path has the grouped GEMM's limits. */
  CHECK(L4K_LINEAR_WORKSPACE_BYTES == (size_t)33554432, "linear workspace constant");
  s = l4k_linear_bf16(NULL, (const void*)0x1000, (const void*)0x2000, (void*)0x3000, L4K_LINEAR_OUT_BF16, 4, 5,
                      40, (void*)0x4000, L4K_LINEAR_WORKSPACE_BYTES, NULL);
  CHECK(s == L4K_ERROR_INVALID_ARGUMENT && strstr(l4k_last_error(), "blas is null") != NULL, "null blas: %d %s",
        (int)s, l4k_last_error());
  s = l4k_blas_destroy(NULL);
  CHECK(s == L4K_OK, "destroying NULL: %d %s", (int)s, l4k_last_error());
  s = l4k_linear_fp8((const void*)0x1000, (const float*)0x2000, (const void*)0x3000, (const float*)0x4000,
                     (const int32_t*)0x5000, (void*)0x6000, 4, 5, 64, (void*)0x7000, 1 << 20, NULL);
  CHECK(s == L4K_ERROR_INVALID_ARGUMENT && strstr(l4k_last_error(), "multiple of 8") != NULL,
        "fp8 linear n = 5: %d %s", (int)s, l4k_last_error());

  /* Expert parallelism: the config is checked first, and a world of several ranks needs a communicator. */
  {
    l4k_ep_config ep = {2, 0, 128, 1, 5120, 128, 128, 1, 0};
    size_t bytes = 0;
    int64_t rows = 0;
    s = l4k_ep_workspace_size(&ep, &bytes);
    CHECK(s == L4K_OK && bytes > (size_t)2 * 2 * 128 * 5124, "ep workspace: %d %s", (int)s, l4k_last_error());
    s = l4k_ep_grouped_rows(&ep, &rows);
    CHECK(s == L4K_OK && rows == 256, "ep grouped rows: %d %lld", (int)s, (long long)rows);
    ep.experts = 127;
    s = l4k_ep_workspace_size(&ep, &bytes);
    CHECK(s == L4K_ERROR_INVALID_ARGUMENT && strstr(l4k_last_error(), "split evenly") != NULL, "ep 127 experts: %s",
          l4k_last_error());
    ep.experts = 128;
    s = l4k_ep_dispatch(NULL, &ep, 128, (const int32_t*)0x1000, (const int32_t*)0x1000, (const int32_t*)0x1000,
                        (const int32_t*)0x1000, (const void*)0x2000, (const float*)0x3000, 128, L4K_EP_ROWS_PERMUTED,
                        (void*)0x4000, (float*)0x5000, (int32_t*)0x6000, (int32_t*)0x7000, rows, (void*)0x10000,
                        bytes, NULL);
    CHECK(s == L4K_ERROR_INVALID_ARGUMENT && strstr(l4k_last_error(), "comm is null") != NULL,
          "ep dispatch without a communicator: %d %s", (int)s, l4k_last_error());
    s = l4k_ep_status(NULL, 0, NULL, NULL);
    CHECK(s == L4K_ERROR_INVALID_ARGUMENT, "ep status of NULL: %d", (int)s);
  }

  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("abi_smoke: all checks passed\n");
  return 0;
}
