// A planted out-of-bounds write, linked against the static CUDA runtime like our binaries: the GPU runner
// builds it on the GPU machine and requires compute-sanitizer to report it, so "0 errors" on our tests means
// the tool was really watching.
#include <cuda_runtime.h>
#include <cstdio>

__global__ void write_past_end(int* p, int n) { p[n + threadIdx.x] = 1; }

int main() {
  int* p = nullptr;
  cudaMalloc(&p, 32 * sizeof(int));
  write_past_end<<<1, 32>>>(p, 32 * 1024);
  cudaError_t e = cudaDeviceSynchronize();
  std::printf("probe finished: %s\n", cudaGetErrorString(e));
  return 0;
}
