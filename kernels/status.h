// What every launcher (the extern "C" l4k_launch_* functions) returns, as int: 0 (cudaSuccess) when the
// kernels were enqueued, a cudaError_t (> 0) when the runtime refused a launch, or one of these (< 0) when the
// launcher refused the request before launching anything. ops/ffi.rs mirrors the values (checked against the
// table kernels/abi.cu exports) and maps each to one Error in `launched`.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

typedef enum L4kLaunchStatus {
  L4K_STATUS_TOO_LONG = -1,             // a row longer than the register-resident row kernels hold
  L4K_STATUS_BAD_WORKSPACE = -2,        // workspace smaller than the op's *_workspace_size
  L4K_STATUS_GEMM_CANNOT_IMPLEMENT = -11,  // CUTLASS refused the problem (alignment, sizes)
  L4K_STATUS_GEMM_CUTLASS = -12,        // CUTLASS failed to initialize or launch
  L4K_STATUS_UNSUPPORTED_SHAPE = -20,   // a shape outside what the kernel is built for (grid limits, head_dim)
  L4K_STATUS_BAD_PARAMS = -21,          // parameters the launcher itself rejects (null pointer, negative size)
} L4kLaunchStatus;

#ifdef __cplusplus
}
#endif
