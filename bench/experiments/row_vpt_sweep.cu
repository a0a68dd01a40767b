// Sweep of the row kernels' work per thread (VPT packs of 8 bf16), to choose RowShape by measurement rather
// than by guess. Includes the real kernels (no copies) and launches each VPT directly. Built and run on the GPU
// machine by scripts/gpu-run.sh (step "sweep"):
//   nvcc -std=c++17 -O3 -DNDEBUG -gencode=arch=compute_90a,code=sm_90a -I kernels row_vpt_sweep.cu
// Prints one line per (kernel, shape, VPT): microseconds (median of 20) and GB/s (bytes read + written).
// Results and what they decided: kernels/NOTES.md ("Row kernels").
#include <cstdio>
#include <vector>
#include <algorithm>
#include <cstring>

#include "../../kernels/rmsnorm.cu"
#include "../../kernels/quant.cu"
#include "../../kernels/swiglu.cu"

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA %s at %d\n", cudaGetErrorString(e), __LINE__); exit(1); } } while (0)

template <class F>
float time_us(F launch) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) launch();
  std::vector<float> t;
  for (int i = 0; i < 20; ++i) {
    CK(cudaEventRecord(a)); launch(); CK(cudaEventRecord(b)); CK(cudaEventSynchronize(b));
    float ms; CK(cudaEventElapsedTime(&ms, a, b)); t.push_back(ms * 1e3f);
  }
  CK(cudaGetLastError());
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

__global__ void fill(__nv_bfloat16* p, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = __float2bfloat16(((i * 2654435761u) % 1000) / 250.0f - 2.0f);
}

template <int VPT>
void sweep_one(const char* name, int64_t rows, int64_t cols, void* x, void* r, void* w, void* y, float* s) {
  const int threads = (int)((cols / 8 + VPT - 1) / VPT + 31) / 32 * 32;
  if (threads > 256 || threads < 32) return;
  double bytes;
  float us;
  if (!strcmp(name, "rmsnorm_plain")) {
    L4kRmsnormParams p{x, nullptr, nullptr, w, y, rows, cols, 1e-5f, 0};
    us = time_us([&] { l4k::rmsnorm_kernel<8, VPT, false><<<rows, threads>>>(p); });
    bytes = 4.0 * rows * cols;
  } else if (!strcmp(name, "rmsnorm_add")) {
    L4kRmsnormParams p{x, r, r, w, y, rows, cols, 1e-5f, 0};
    us = time_us([&] { l4k::rmsnorm_kernel<8, VPT, true><<<rows, threads>>>(p); });
    bytes = 8.0 * rows * cols;
  } else if (!strcmp(name, "quant")) {
    L4kQuantParams p{x, y, s, rows, cols};
    us = time_us([&] { l4k::quant_kernel<8, VPT><<<rows, threads>>>(p); });
    bytes = 3.0 * rows * cols;
  } else {  // swiglu fp8: cols is the intermediate size
    L4kSwigluParams p{x, y, s, rows, cols, L4K_SWIGLU_FP8, 0};
    us = time_us([&] { l4k::swiglu_kernel<8, VPT, true><<<rows, threads>>>(p); });
    bytes = 5.0 * rows * cols;
  }
  printf("%-14s %6ldx%-6ld VPT %2d threads %3d: %8.2f us %6.0f GB/s\n", name, (long)rows, (long)cols, VPT, threads, us,
         bytes / us / 1e3);
}

int main() {
  const size_t n = (size_t)16384 * 16384;
  void *x, *r, *w, *y;
  float* s;
  CK(cudaMalloc(&x, n * 2)); CK(cudaMalloc(&r, n * 2)); CK(cudaMalloc(&w, 65536)); CK(cudaMalloc(&y, n * 2));
  CK(cudaMalloc(&s, 65536 * 4));
  fill<<<1024, 256>>>((__nv_bfloat16*)x, n); fill<<<1024, 256>>>((__nv_bfloat16*)r, n);
  fill<<<64, 256>>>((__nv_bfloat16*)w, 32768);
  CK(cudaDeviceSynchronize());
  for (const char* name : {"rmsnorm_plain", "rmsnorm_add", "quant", "swiglu_fp8"}) {
    for (int64_t rows : {4096, 16384}) {
      const int64_t cols = name[0] == 's' ? 8192 : 5120;
      sweep_one<3>(name, rows, cols, x, r, w, y, s);
      sweep_one<4>(name, rows, cols, x, r, w, y, s);
      sweep_one<5>(name, rows, cols, x, r, w, y, s);
      sweep_one<6>(name, rows, cols, x, r, w, y, s);
      sweep_one<8>(name, rows, cols, x, r, w, y, s);
      sweep_one<10>(name, rows, cols, x, r, w, y, s);
      sweep_one<16>(name, rows, cols, x, r, w, y, s);
    }
  }
  return 0;
}
