// The grouped GEMM's streaming GEMV schedule (kernels/grouped_gemm_gemv.cu) over its configurations: warps per
// CTA (the k split), steps in flight per warp, CTAs per SM asked of the register allocator. Scout's routed experts
// at batch 1, 4 and 8, top-1 (token i to its own expert; consecutive calls read disjoint experts so the 42 MB down
// projection is not served from L2). Each configuration's output is compared with an f64 host reference on 256
// sampled columns (rel L2; a configuration above 5e-3 prints WRONG) and timed as the median of 25 event-timed
// calls. Ceilings in the same process: a 2 GiB device-to-device copy and a plain 16-byte read kernel.
//
//   nvcc -std=c++17 -O3 -DNDEBUG -gencode=arch=compute_90a,code=sm_90a -Ikernels -Iinclude \
//     bench/experiments/gemv_sweep.cu -o /tmp/gemv-sweep && /tmp/gemv-sweep
#define L4K_GROUPED_GEMM_TEMPLATES_ONLY
#include "../../kernels/grouped_gemm_gemv.cu"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#define CHECK(x)                                                                              \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

namespace gg = l4k::grouped_gemm_gemv;

template <class F>
float median_us(F&& call, int reps = 25) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) call(i);
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    CHECK(cudaEventRecord(a));
    call(i);
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1e3f);
  }
  std::sort(t.begin(), t.end());
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  return t[t.size() / 2];
}

__global__ void read_kernel(const uint4* p, size_t n, uint32_t* sink) {
  uint32_t x = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const uint4 v = __ldg(p + i);
    x ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (x == 0x12345678u) *sink = x;  // keeps the loads
}

float e4m3(uint8_t b) {
  const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return NAN;
  const float v = e == 0 ? std::ldexp(m / 8.f, -6) : std::ldexp(1.f + m / 8.f, e - 7);
  return s ? -v : v;
}

struct Problem {
  int experts, n, k, tokens, sets;
  uint8_t *a, *b;
  float *sa, *sb;
  uint16_t* d;
  std::vector<int32_t*> offsets;  // one routing per set of experts
  std::vector<uint8_t> ha, hb_sample;
  std::vector<float> hsa, hsb;
  std::vector<int> cols;
};

Problem make(int experts, int n, int k, int tokens) {
  Problem p{experts, n, k, tokens, experts / tokens};
  std::mt19937 r(n + k + tokens);
  auto byte = [&] {
    uint8_t v;
    do v = r() & 0xFF; while ((v & 0x7F) == 0x7F);
    return v;
  };
  const size_t wbytes = (size_t)experts * n * k;
  CHECK(cudaMalloc(&p.b, wbytes));
  {
    // Weights drawn on the host in one expert's worth and tiled (the timing does not care which bytes they are;
    // the check reads the tile back).
    std::vector<uint8_t> one((size_t)n * k);
    for (auto& v : one) v = byte();
    for (int e = 0; e < experts; ++e) CHECK(cudaMemcpy(p.b + (size_t)e * n * k, one.data(), one.size(), cudaMemcpyHostToDevice));
    for (int i = 0; i < 256; ++i) p.cols.push_back((int)((size_t)i * n / 256 + r() % (n / 256)));
    for (int c : p.cols) p.hb_sample.insert(p.hb_sample.end(), one.begin() + (size_t)c * k, one.begin() + (size_t)(c + 1) * k);
  }
  p.ha.resize((size_t)tokens * k);
  for (auto& v : p.ha) v = byte();
  p.hsa.resize(tokens);
  for (auto& v : p.hsa) v = 1e-3f * (1 + r() % 1000) / 100.f;
  p.hsb.resize((size_t)experts * n);
  for (auto& v : p.hsb) v = 1e-3f * (1 + r() % 1000) / 100.f;
  CHECK(cudaMalloc(&p.a, p.ha.size()));
  CHECK(cudaMemcpy(p.a, p.ha.data(), p.ha.size(), cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&p.sa, tokens * 4));
  CHECK(cudaMemcpy(p.sa, p.hsa.data(), tokens * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&p.sb, p.hsb.size() * 4));
  CHECK(cudaMemcpy(p.sb, p.hsb.data(), p.hsb.size() * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&p.d, (size_t)tokens * n * 2));
  for (int set = 0; set < p.sets; ++set) {
    std::vector<int32_t> off(experts + 1);
    for (int e = 0; e <= experts; ++e) off[e] = std::min(std::max(e - set * tokens, 0), tokens);
    int32_t* dev;
    CHECK(cudaMalloc(&dev, off.size() * 4));
    CHECK(cudaMemcpy(dev, off.data(), off.size() * 4, cudaMemcpyHostToDevice));
    p.offsets.push_back(dev);
  }
  return p;
}

L4kGroupedGemmParams params(const Problem& p, int set) {
  L4kGroupedGemmParams q{};
  q.a = p.a, q.scale_a = p.sa, q.b = p.b, q.scale_b = p.sb, q.offsets = p.offsets[set], q.counts = nullptr;
  q.d = p.d, q.rows = p.tokens, q.n = p.n, q.k = p.k, q.experts = p.experts, q.schedule = L4K_GEMM_GEMV;
  return q;
}

// rel L2 of the sampled columns of set 0's output against f64 (token j runs through expert j).
double check(const Problem& p) {
  std::vector<uint16_t> d((size_t)p.tokens * p.n);
  CHECK(cudaMemcpy(d.data(), p.d, d.size() * 2, cudaMemcpyDeviceToHost));
  double num = 0, den = 0;
  for (int j = 0; j < p.tokens; ++j)
    for (size_t ci = 0; ci < p.cols.size(); ++ci) {
      const int c = p.cols[ci];
      double acc = 0;
      for (int kk = 0; kk < p.k; ++kk) acc += (double)e4m3(p.ha[(size_t)j * p.k + kk]) * e4m3(p.hb_sample[ci * p.k + kk]);
      const double want = acc * p.hsa[j] * p.hsb[(size_t)j * p.n + c];
      uint32_t bits = (uint32_t)d[(size_t)j * p.n + c] << 16;
      float got;
      std::memcpy(&got, &bits, 4);
      if (std::isnan(got)) return INFINITY;
      num += (got - want) * (got - want), den += want * want;
    }
  return std::sqrt(num / std::max(den, 1e-30));
}

template <class C>
void run(const char* name, Problem& p, double copy_gbs) {
  CHECK(cudaMemset(p.d, 0xFF, (size_t)p.tokens * p.n * 2));  // NaN poison
  L4kGroupedGemmParams q0 = params(p, 0);
  if (gg::launch<C>(q0, 0) != 0) { std::printf("%-18s launch failed\n", name); return; }
  CHECK(cudaDeviceSynchronize());
  const double err = check(p);
  const float us = median_us([&](int i) { gg::launch<C>(params(p, i % p.sets), 0); });
  CHECK(cudaGetLastError());
  const double bytes = (double)p.tokens * p.n * p.k + (double)p.tokens * p.k + 2.0 * p.tokens * p.n;
  const double gbs = bytes / us * 1e-3;
  int per_sm = 0;
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gg::gemv_kernel<C>, C::kThreads, 0));
  std::printf("%-18s n %5d k %4d T %d  %8.1f us  %6.0f GB/s  %5.1f%% of copy  %d CTAs/SM  relL2 %.2e%s\n", name, p.n,
              p.k, p.tokens, us, gbs, 100 * gbs / copy_gbs, per_sm, err, err > 5e-3 ? "  WRONG" : "");
}

int main() {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  const size_t big = 2ull << 30;
  void *x, *y;
  CHECK(cudaMalloc(&x, big));
  CHECK(cudaMalloc(&y, big));
  CHECK(cudaMemset(x, 1, big));
  const float copy_us = median_us([&](int) { CHECK(cudaMemcpyAsync(y, x, big, cudaMemcpyDeviceToDevice)); }, 9);
  const double copy_gbs = 2.0 * big / copy_us * 1e-3;
  uint32_t* sink;
  CHECK(cudaMalloc(&sink, 4));
  const float read_us = median_us([&](int) { read_kernel<<<prop.multiProcessorCount * 8, 512>>>((const uint4*)x, big / 16, sink); }, 9);
  std::printf("%s: copy %.0f GB/s (read + write), read-only kernel %.0f GB/s\n", prop.name, copy_gbs, big / read_us * 1e-3);
  CHECK(cudaFree(x));
  CHECK(cudaFree(y));

  for (auto [n, k] : {std::pair{16384, 5120}, std::pair{5120, 8192}}) {
    for (int t : {1, 2}) {
      Problem p = make(16, n, k, t);
      run<gg::Shipped>("shipped 4w u4", p, copy_gbs);
      run<gg::Config<4, 8, 1>>("4w u8", p, copy_gbs);
      run<gg::Config<4, 2, 1>>("4w u2", p, copy_gbs);
      run<gg::Config<8, 4, 1>>("8w u4", p, copy_gbs);
      run<gg::Config<8, 2, 1>>("8w u2", p, copy_gbs);
      run<gg::Config<8, 4, 4>>("8w u4 min4", p, copy_gbs);
      for (auto* o : p.offsets) CHECK(cudaFree(o));
      for (void* q : {(void*)p.a, (void*)p.b, (void*)p.sa, (void*)p.sb, (void*)p.d}) CHECK(cudaFree(q));
    }
  }
  return 0;
}
