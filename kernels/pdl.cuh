// Programmatic dependent launch (PDL) for every kernel of the library but the CUTLASS grouped GEMMs: the device
// side (griddepcontrol) and the one host helper the launchers launch through. Users: every kernels/*.cu with a
// kernel but grouped_gemm*.cu; kernels/pdl.cu exports the switch to Rust.
//
// What it buys. A kernel launched with cudaLaunchAttributeProgrammaticStreamSerialization may be scheduled while
// the kernel before it in the stream is still running: once every CTA of that kernel has executed
// griddepcontrol.launch_dependents (or exited), the next one's CTAs start, run their prologue, and block in
// griddepcontrol.wait until the previous grid has completed and its memory is visible. At batch-1 decode (~770
// small kernels a step) that hides the launch gap and the prologue at every boundary. Inside a stream capture
// (CUDA 12.3+) the attribute becomes a programmatic graph edge, so replayed graphs keep it.
//
// Why it is safe after ANY predecessor (ours, cuBLASLt's, CUTLASS's, a memset, a user's kernel): the attribute
// only lets this kernel START early; correctness rests on the kernel, which obeys two rules:
//   1. Every thread calls pdl_wait() before its first global memory access, read OR write (an early write would
//      be a WAR race on a buffer the predecessor still reads; an early read would see stale data). Before it a
//      kernel may only touch registers, shared memory and its parameters, and issue L2 prefetches (the GEMVs
//      prefetch their weights, kernels/gemv.cuh): a prefetch brings nothing into the SM, and L2 is the point of
//      coherence, so a line the predecessor writes afterwards is simply updated there.
//   2. Every CTA calls pdl_wait() before it exits, even a CTA with no work. PDL orders a kernel against its
//      direct predecessor only: a grid that finished without waiting could finish before its predecessor, and
//      a PDL successor of it (which waits for that grid alone) would run ahead of the grid before. Waiting in
//      every CTA keeps "complete" transitive along the stream.
// A predecessor that never executes launch_dependents (one that knows nothing of PDL) triggers implicitly as its
// CTAs exit, so its successor starts no earlier than usual; pdl_wait() returns at once when there is nothing to
// wait for (no predecessor, or a launch without the attribute). pdl_launch_dependents() is only a scheduling
// hint: a dependent still waits for this grid's completion in its own pdl_wait(), so triggering early (right
// after the wait) is always correct; it only lets the next kernel's CTAs take SM slots sooner.
//
// The switch: L4K_PDL, read once from the environment on first use ("0" launches without the attribute, for A/B
// measurement; anything else or unset: on). l4k_internal_set_pdl (kernels/pdl.cu) overrides it, for tests that
// compare both paths in one process.
#pragma once
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <utility>

namespace l4k {

// Blocks until the previous grid in the stream has completed and its writes are visible to this one.
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }

// Lets the next PDL-launched kernel in the stream be scheduled once every CTA of this grid has executed it (or
// exited). Repeats are no-ops.
__device__ __forceinline__ void pdl_launch_dependents() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

// The process-wide switch: -1 until first read, then 0 (off) or 1 (on). An inline function's static is one
// object across the library's translation units (and in the bench experiments that include a kernel file).
inline std::atomic<int>& pdl_switch() {
  static std::atomic<int> on{-1};
  return on;
}

// Whether launches carry the PDL attribute: L4K_PDL read once, unless l4k_internal_set_pdl decided first.
inline bool pdl_enabled() {
  std::atomic<int>& s = pdl_switch();
  int v = s.load(std::memory_order_relaxed);
  if (v < 0) {
    const char* env = getenv("L4K_PDL");
    int expected = -1;
    s.compare_exchange_strong(expected, env != nullptr && strcmp(env, "0") == 0 ? 0 : 1, std::memory_order_relaxed);
    v = s.load(std::memory_order_relaxed);
  }
  return v != 0;
}

// One launch's shape and the attributes besides PDL that some kernels need.
struct LaunchShape {
  dim3 grid, block;
  size_t smem = 0;           // dynamic shared memory bytes
  unsigned cluster_x = 1;    // CTAs per cluster along x (1: no cluster attribute)
  bool cooperative = false;  // a cooperative launch (grid-wide barriers)
};

// Every launcher of the library launches through here: cudaLaunchKernelEx with programmatic stream serialization
// while the switch is on (the kernel must follow the two rules above), plus the shape's cluster and cooperative
// attributes. Arguments convert to the kernel's parameter types as with <<<>>>.
template <class... Params, class... Args>
cudaError_t launch_pdl(void (*kernel)(Params...), const LaunchShape& shape, cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attr[3];
  unsigned n = 0;
  if (pdl_enabled()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (shape.cluster_x > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = shape.cluster_x;
    attr[n].val.clusterDim.y = 1;
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  if (shape.cooperative) {
    attr[n].id = cudaLaunchAttributeCooperative;
    attr[n].val.cooperative = 1;
    ++n;
  }
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = shape.grid;
  cfg.blockDim = shape.block;
  cfg.dynamicSmemBytes = shape.smem;
  cfg.stream = stream;
  cfg.attrs = n > 0 ? attr : nullptr;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

// A launcher's return value (kernels/status.h) after launch_pdl: the launch's own error, else whatever the
// runtime recorded; either way the runtime's last error is cleared, so it never surfaces in a later launcher.
inline int launch_result(cudaError_t launched) {
  const cudaError_t last = cudaGetLastError();
  return static_cast<int>(launched != cudaSuccess ? launched : last);
}

}  // namespace l4k
