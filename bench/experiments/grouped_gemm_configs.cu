// Candidate tile configurations for the grouped GEMM's prefill path, timed at Scout shapes so the shipped
// configuration is chosen by measurement (kernels/NOTES.md, "grouped_gemm"). One candidate per compilation:
//   nvcc ... -DCANDIDATE=<1..10> -I kernels grouped_gemm_configs.cu     (scripts/gpu-run.sh step "gemmsweep")
// Includes the real kernel file: the candidates differ only in Config's template arguments.
#include <cstdio>
#include <vector>
#include <algorithm>

#define L4K_GROUPED_GEMM_TEMPLATES_ONLY
#include "../../kernels/grouped_gemm.cu"

using namespace l4k::grouped_gemm;
namespace gk = cutlass::gemm;
namespace ep = cutlass::epilogue;

// Sweep 2 (accurate path only: promoted accumulation, bench/results/h100-grouped-gemm-tile-sweep2.txt).
// Register budget of a promoted consumer thread: 2 x (its share of the tile) / 128 f32 registers (the wgmma
// accumulator plus the promotion target). 64x128 per warpgroup: 128; 64x192: 192; 64x256 or 128x128: 256 (spills
// at the 240 registers a consumer warpgroup gets).
using Coop = gk::KernelPtrArrayTmaWarpSpecializedCooperative;
using CoopEpi = ep::PtrArrayTmaWarpSpecializedCooperative;
using Ping = gk::KernelPtrArrayTmaWarpSpecializedPingpong;
using PingEpi = ep::PtrArrayTmaWarpSpecializedPingpong;
#if CANDIDATE == 1
#define NAME "coop 128x128 1x2 promoted (shipped PREFILL where n is not near a multiple of 384: down)"
using Cand = Prefill;
#elif CANDIDATE == 2
#define NAME "coop 128x192 1x2 promoted"
using Cand = Config<false, Shape<_128, _192, _128>, Shape<_1, _2, _1>, Coop, CoopEpi>;
#elif CANDIDATE == 3
#define NAME "coop 128x192 2x1 promoted"
using Cand = Config<false, Shape<_128, _192, _128>, Shape<_2, _1, _1>, Coop, CoopEpi>;
#elif CANDIDATE == 4
#define NAME "pingpong 64x192 1x2 promoted"
using Cand = Config<false, Shape<_64, _192, _128>, Shape<_1, _2, _1>, Ping, PingEpi>;
#elif CANDIDATE == 5
#define NAME "coop 128x128 1x1 promoted"
using Cand = Config<false, Shape<_128, _128, _128>, Shape<_1, _1, _1>, Coop, CoopEpi>;
#elif CANDIDATE == 6
#define NAME "coop 128x128 2x2 promoted"
using Cand = Config<false, Shape<_128, _128, _128>, Shape<_2, _2, _1>, Coop, CoopEpi>;
#elif CANDIDATE == 7
#define NAME "coop 128x128 1x2 promoted, swizzle 2"
struct Cand : Prefill { static constexpr int kSwizzle = 2; };
#elif CANDIDATE == 8
#define NAME "coop 128x128 1x2 promoted, raster along N"
struct Cand : Prefill { static constexpr bool kRasterAlongN = true; };
#elif CANDIDATE == 9
#define NAME "coop 128x128 1x2 promoted every 256 k (less accurate)"
struct Cand : Prefill { static constexpr int kPromotionInterval = 8; };
#elif CANDIDATE == 10
#define NAME "coop 128x192 1x2 promoted, swizzle 4"
struct Cand : Config<false, Shape<_128, _192, _128>, Shape<_1, _2, _1>, Coop, CoopEpi> { static constexpr int kSwizzle = 4; };
#endif

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA %s line %d\n", cudaGetErrorString(e), __LINE__); return 1; } } while (0)

__global__ void fill(uint8_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 13; h *= 0x5bd1e995u; h ^= h >> 15;
    p[i] = (uint8_t)(0x20 + h % 0x30) | (h & 0x100 ? 0x80 : 0);  // finite, moderate magnitudes
  }
}

int main() {
  const int E = 16;
  struct Case { const char* proj; int n, k, t; };
  for (Case cs : {Case{"gate_up", 16384, 5120, 16384}, Case{"gate_up", 16384, 5120, 4096}, Case{"down", 5120, 8192, 16384}}) {
    uint8_t *a, *b; float *sa, *sb; void *d, *ws; int32_t* off;
    CK(cudaMalloc(&a, (size_t)cs.t * cs.k)); CK(cudaMalloc(&b, (size_t)E * cs.n * cs.k));
    CK(cudaMalloc(&sa, cs.t * 4)); CK(cudaMalloc(&sb, (size_t)E * cs.n * 4)); CK(cudaMalloc(&d, (size_t)cs.t * cs.n * 2));
    fill<<<1024, 256>>>(a, (size_t)cs.t * cs.k, 1); fill<<<1024, 256>>>(b, (size_t)E * cs.n * cs.k, 2);
    std::vector<float> ones(std::max(cs.t, E * cs.n), 1e-3f);
    CK(cudaMemcpy(sa, ones.data(), cs.t * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(sb, ones.data(), (size_t)E * cs.n * 4, cudaMemcpyHostToDevice));
    std::vector<int32_t> offsets(E + 1);
    for (int e = 0; e <= E; ++e) offsets[e] = e * cs.t / E;
    CK(cudaMalloc(&off, (E + 1) * 4)); CK(cudaMemcpy(off, offsets.data(), (E + 1) * 4, cudaMemcpyHostToDevice));
    const size_t wsb = workspace_size<Cand>(E);
    CK(cudaMalloc(&ws, wsb));
    L4kGroupedGemmParams p{a, sa, b, sb, off, nullptr, d, nullptr, ws, (int64_t)wsb, cs.t, cs.n, cs.k, E, 0};
    for (int i = 0; i < 3; ++i) if (int s = run<Cand>(p, 0)) { printf("run failed: %d\n", s); return 1; }
    CK(cudaDeviceSynchronize());
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    std::vector<float> us;
    for (int i = 0; i < 10; ++i) {
      cudaEventRecord(e0); run<Cand>(p, 0); cudaEventRecord(e1); cudaEventSynchronize(e1);
      float ms; cudaEventElapsedTime(&ms, e0, e1); us.push_back(ms * 1e3f);
    }
    CK(cudaGetLastError());
    std::sort(us.begin(), us.end());
    const double flops = 2.0 * cs.t * cs.n * cs.k;
    printf("%-58s %-7s T=%-5d %8.1f us %6.0f TFLOP/s\n", NAME, cs.proj, cs.t, us[5], flops / us[5] / 1e6);
    cudaFree(a); cudaFree(b); cudaFree(sa); cudaFree(sb); cudaFree(d); cudaFree(ws); cudaFree(off);
  }
  return 0;
}
