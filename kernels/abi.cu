// Small host-side services of the kernel library: error strings and the parameter-struct sizes the Rust side
// checks its #[repr(C)] mirrors against.
#include <cuda_runtime.h>
#include <stddef.h>

#include "attention_params.h"
#include "grouped_gemm_params.h"
#include "params.h"

extern "C" const char* l4k_internal_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

extern "C" size_t l4k_internal_params_size(int which) {
  switch (which) {
    case L4K_PARAMS_RMSNORM: return sizeof(L4kRmsnormParams);
    case L4K_PARAMS_ROPE: return sizeof(L4kRopeParams);
    case L4K_PARAMS_SWIGLU: return sizeof(L4kSwigluParams);
    case L4K_PARAMS_QUANT: return sizeof(L4kQuantParams);
    case L4K_PARAMS_ROUTER: return sizeof(L4kRouterParams);
    case L4K_PARAMS_PERMUTE: return sizeof(L4kPermuteParams);
    case L4K_PARAMS_UNPERMUTE: return sizeof(L4kUnpermuteParams);
    case L4K_PARAMS_GROUPED_GEMM: return sizeof(L4kGroupedGemmParams);
    case L4K_PARAMS_ATTENTION: return sizeof(L4kAttentionParams);
    case L4K_PARAMS_WEIGHT_PREP: return sizeof(L4kWeightPrepParams);
    case L4K_PARAMS_EMBEDDING: return sizeof(L4kEmbeddingParams);
    case L4K_PARAMS_ARGMAX: return sizeof(L4kArgmaxParams);
    case L4K_PARAMS_RANDOM: return sizeof(L4kRandomParams);
    default: return 0;
  }
}
