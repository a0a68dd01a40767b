// The streaming GEMV's configurations (kernels/gemv.cuh) where the model uses them at batch 1 to 8: the bf16
// linear (kernels/linear.cu) on Scout's dense projections, and the FP8 one-expert GEMV (the `--fp8-dense`
// linears, kernels/grouped_gemm_gemv.cu) with and without the L2 prefetch ahead of the PDL wait. Timing as the
// model runs them: R calls on rotating weight sets (no L2 reuse between calls) captured in one CUDA graph with
// PDL edges, so a call's prologue and prefetch can overlap the previous call's tail; per call = replay / R,
// median of 15 replays. bf16 outputs are checked on 64 sampled columns against an f64 host product (rel L2 above
// 1e-2 prints WRONG); every FP8 configuration must give the bits of the first (the prefetch changes no math).
//
//   nvcc -std=c++17 -O3 -DNDEBUG -gencode=arch=compute_90a,code=sm_90a -Ikernels -Iinclude \
//     bench/experiments/linear_gemv_sweep.cu -o /tmp/linear-gemv-sweep && /tmp/linear-gemv-sweep
#define L4K_LINEAR_TEMPLATES_ONLY
#define L4K_GROUPED_GEMM_TEMPLATES_ONLY
#include "../../kernels/grouped_gemm_gemv.cu"
#include "../../kernels/linear.cu"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define CHECK(x)                                                                              \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

namespace lg = l4k::linear;
namespace gg = l4k::grouped_gemm_gemv;
using l4k::gemv::Config;

constexpr int kReps = 20;

// A value in [-0.125, 0.125) from an element index (splitmix64), identical on host and device.
__host__ __device__ inline float value_of(uint64_t i, uint64_t seed) {
  uint64_t z = i * 0x9E3779B97F4A7C15ull + seed;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return ((z >> 40) * (1.0f / 16777216.0f) - 0.5f) * 0.25f;
}

// bf16 bits of v, round to nearest even (v finite).
__host__ __device__ inline uint16_t bf16_bits(float v) {
  uint32_t u;
  memcpy(&u, &v, 4);
  u += 0x7FFF + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

__host__ __device__ inline float from_bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float v;
  memcpy(&v, &u, 4);
  return v;
}

__global__ void fill_bf16(uint16_t* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = bf16_bits(value_of(i, seed));
}

// FP8 codes that are never NaN (0x7F / 0xFF): any byte with the low 7 bits below 0x70.
__global__ void fill_e4m3(uint8_t* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const uint32_t b = static_cast<uint32_t>((value_of(i, seed) + 0.125f) * 4.0f * 224.0f);
    p[i] = static_cast<uint8_t>((b % 0x70) | ((i & 1) << 7));
  }
}

__global__ void read_kernel(const uint4* p, size_t n, uint32_t* sink) {
  uint32_t x = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const uint4 v = __ldg(p + i);
    x ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (x == 0x12345678u) *sink = x;
}

// Events on `s`: the calls run on it (a non-blocking stream, not ordered with the legacy default stream).
template <class F>
float median_us(F&& call, int reps, cudaStream_t s = 0) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 2; ++i) call();
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    CHECK(cudaEventRecord(a, s));
    call();
    CHECK(cudaEventRecord(b, s));
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

// Microseconds per call of kReps calls of launch(i) captured in one graph (PDL edges between them).
template <class L>
float graph_us(cudaStream_t s, L&& launch) {
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < kReps; ++i) {
    if (launch(i) != 0) {
      std::fprintf(stderr, "launch failed in capture\n");
      std::exit(1);
    }
  }
  CHECK(cudaStreamEndCapture(s, &g));
  CHECK(cudaGraphInstantiate(&ge, g, 0));
  const float us = median_us([&] { CHECK(cudaGraphLaunch(ge, s)); }, 15, s) / kReps;
  CHECK(cudaGraphExecDestroy(ge));
  CHECK(cudaGraphDestroy(g));
  return us;
}

struct Shape {
  const char* name;
  int n, k;
};

struct Bf16Problem {
  Shape s;
  int m, sets;
  bool f32_out;
  std::vector<uint16_t*> w;
  uint16_t* x;
  void* y;
};

Bf16Problem make_bf16(Shape s, int m, bool f32_out) {
  const size_t wbytes = (size_t)s.n * s.k * 2;
  Bf16Problem p{s, m, (int)std::min<size_t>(8, std::max<size_t>(2, (320ull << 20) / wbytes + 1)), f32_out, {}, nullptr, nullptr};
  for (int i = 0; i < p.sets; ++i) {
    uint16_t* w;
    CHECK(cudaMalloc(&w, wbytes));
    fill_bf16<<<1024, 256>>>(w, wbytes / 2, 1);  // every set the same values: set 0 is the one checked
    p.w.push_back(w);
  }
  CHECK(cudaMalloc(&p.x, (size_t)m * s.k * 2));
  fill_bf16<<<64, 256>>>(p.x, (size_t)m * s.k, 2);
  CHECK(cudaMalloc(&p.y, (size_t)m * s.n * 4));
  CHECK(cudaDeviceSynchronize());
  return p;
}

void free_bf16(Bf16Problem& p) {
  for (auto* w : p.w) CHECK(cudaFree(w));
  CHECK(cudaFree(p.x));
  CHECK(cudaFree(p.y));
}

L4kLinearParams lparams(const Bf16Problem& p, int set) {
  return L4kLinearParams{p.x, p.w[set % p.sets], p.y, p.m, p.s.n, p.s.k,
                         p.f32_out ? L4K_LINEAR_OUT_F32 : L4K_LINEAR_OUT_BF16, 0};
}

double check_bf16(const Bf16Problem& p) {
  std::vector<float> y((size_t)p.m * p.s.n);
  if (p.f32_out) {
    CHECK(cudaMemcpy(y.data(), p.y, y.size() * 4, cudaMemcpyDeviceToHost));
  } else {
    std::vector<uint16_t> b(y.size());
    CHECK(cudaMemcpy(b.data(), p.y, b.size() * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < b.size(); ++i) y[i] = from_bf16(b[i]);
  }
  double num = 0, den = 0;
  for (int j = 0; j < p.m; ++j)
    for (int ci = 0; ci < 64; ++ci) {
      const int c = (int)((int64_t)ci * p.s.n / 64 + (ci * 7) % 13) % p.s.n;
      double acc = 0;
      for (int kk = 0; kk < p.s.k; ++kk)
        acc += (double)from_bf16(bf16_bits(value_of((uint64_t)j * p.s.k + kk, 2))) *
               from_bf16(bf16_bits(value_of((uint64_t)c * p.s.k + kk, 1)));
      const float got = y[(size_t)j * p.s.n + c];
      if (std::isnan(got)) return INFINITY;
      num += (got - acc) * (got - acc), den += acc * acc;
    }
  return std::sqrt(num / std::max(den, 1e-30));
}

template <class C>
void run_bf16(const char* name, Bf16Problem& p, cudaStream_t s, double ceiling) {
  CHECK(cudaMemsetAsync(p.y, 0xFF, (size_t)p.m * p.s.n * 4, s));  // NaN poison
  if (lg::launch<C>(lparams(p, 0), s) != 0) { std::printf("%-22s launch failed\n", name); return; }
  CHECK(cudaStreamSynchronize(s));
  const double err = check_bf16(p);
  const float us = graph_us(s, [&](int i) { return lg::launch<C>(lparams(p, i), s); });
  const double bytes = 2.0 * p.s.n * p.s.k + 2.0 * p.m * p.s.k + (p.f32_out ? 4.0 : 2.0) * p.m * p.s.n;
  const double gbs = bytes / us * 1e-3;
  std::printf("bf16 %-8s m %d %-22s %8.2f us  %6.0f GB/s  %5.1f%% of copy  relL2 %.1e%s\n", p.s.name, p.m, name, us,
              gbs, 100 * gbs / ceiling, err, err > 1e-2 ? "  WRONG" : "");
}

// experts == 1: the --fp8-dense linears, weight sets rotated. experts == 16: Meta's routed experts at batch 1, one
// [16, n, k] weight whose one routed expert rotates (offsets per set), so only that expert's bytes are counted.
struct Fp8Problem {
  Shape s;
  int sets, experts;
  std::vector<uint8_t*> w;
  std::vector<int32_t*> offs;
  uint8_t* x;
  float *sx, *sw;
  uint16_t* y;
  std::vector<uint16_t> first;  // the first configuration's output
};

Fp8Problem make_fp8(Shape s, int experts) {
  const size_t wbytes = (size_t)s.n * s.k;
  const int sets = experts > 1 ? 1 : (int)std::min<size_t>(8, std::max<size_t>(2, (320ull << 20) / wbytes + 1));
  Fp8Problem p{s, sets, experts, {}, {}, nullptr, nullptr, nullptr, nullptr, {}};
  for (int i = 0; i < p.sets; ++i) {
    uint8_t* w;
    CHECK(cudaMalloc(&w, wbytes * experts));
    fill_e4m3<<<1024, 256>>>(w, wbytes * experts, 3);
    p.w.push_back(w);
  }
  CHECK(cudaMalloc(&p.x, s.k));
  fill_e4m3<<<16, 256>>>(p.x, s.k, 4);
  std::vector<float> sw((size_t)s.n * experts, 1e-3f), sx(1, 2e-2f);
  CHECK(cudaMalloc(&p.sw, sw.size() * 4));
  CHECK(cudaMemcpy(p.sw, sw.data(), sw.size() * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&p.sx, 4));
  CHECK(cudaMemcpy(p.sx, sx.data(), 4, cudaMemcpyHostToDevice));
  for (int j = 0; j < experts; ++j) {  // the token goes to expert j
    std::vector<int32_t> off(experts + 1);
    for (int e = 0; e <= experts; ++e) off[e] = e > j ? 1 : 0;
    int32_t* d;
    CHECK(cudaMalloc(&d, off.size() * 4));
    CHECK(cudaMemcpy(d, off.data(), off.size() * 4, cudaMemcpyHostToDevice));
    p.offs.push_back(d);
  }
  CHECK(cudaMalloc(&p.y, s.n * 2));
  CHECK(cudaDeviceSynchronize());
  return p;
}

void free_fp8(Fp8Problem& p) {
  for (auto* w : p.w) CHECK(cudaFree(w));
  for (auto* o : p.offs) CHECK(cudaFree(o));
  for (void* q : {(void*)p.x, (void*)p.sx, (void*)p.sw, (void*)p.y}) CHECK(cudaFree(q));
}

L4kGroupedGemmParams gparams(const Fp8Problem& p, int set) {
  L4kGroupedGemmParams q{};
  q.a = p.x, q.scale_a = p.sx, q.b = p.w[set % p.sets], q.scale_b = p.sw, q.counts = nullptr;
  q.offsets = p.offs[p.experts > 1 ? set % p.experts : 0];
  q.d = p.y, q.rows = 1, q.n = p.s.n, q.k = p.s.k, q.experts = p.experts, q.schedule = L4K_GEMM_GEMV;
  return q;
}

template <class C>
void run_fp8(const char* name, Fp8Problem& p, cudaStream_t s, double ceiling) {
  CHECK(cudaMemsetAsync(p.y, 0xFF, p.s.n * 2, s));
  if (gg::launch<C>(gparams(p, 0), s) != 0) { std::printf("%-22s launch failed\n", name); return; }
  std::vector<uint16_t> y(p.s.n);
  CHECK(cudaMemcpyAsync(y.data(), p.y, y.size() * 2, cudaMemcpyDeviceToHost, s));
  CHECK(cudaStreamSynchronize(s));
  const bool nan = std::any_of(y.begin(), y.end(), [](uint16_t b) { return (b & 0x7FFF) > 0x7F80; });
  if (p.first.empty()) p.first = y;
  const bool same = y == p.first;
  const float us = graph_us(s, [&](int i) { return gg::launch<C>(gparams(p, i), s); });
  const double bytes = (double)p.s.n * p.s.k + p.s.k + 2.0 * p.s.n + 4.0 * p.s.n;
  const double gbs = bytes / us * 1e-3;
  std::printf("fp8  %-8s E%-2d %-22s %8.2f us  %6.0f GB/s  %5.1f%% of copy  %s\n", p.s.name,
              p.experts, name, us, gbs, 100 * gbs / ceiling, nan ? "NaN  WRONG" : same ? "bits = first" : "bits differ  WRONG");
}

int main() {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t s;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const size_t big = 2ull << 30;
  void *x, *y;
  CHECK(cudaMalloc(&x, big));
  CHECK(cudaMalloc(&y, big));
  CHECK(cudaMemset(x, 1, big));
  const float copy_us = median_us([&] { CHECK(cudaMemcpyAsync(y, x, big, cudaMemcpyDeviceToDevice)); }, 9);
  const double copy_gbs = 2.0 * big / copy_us * 1e-3;
  uint32_t* sink;
  CHECK(cudaMalloc(&sink, 4));
  const float read_us =
      median_us([&] { read_kernel<<<prop.multiProcessorCount * 8, 512>>>((const uint4*)x, big / 16, sink); }, 9);
  std::printf("%s: copy %.0f GB/s (read + write), read-only kernel %.0f GB/s; %d calls a graph\n", prop.name,
              copy_gbs, big / read_us * 1e-3, kReps);
  CHECK(cudaFree(x));
  CHECK(cudaFree(y));

  const Shape shapes[] = {{"qkv", 7168, 5120}, {"o", 5120, 5120}, {"gate_up", 16384, 5120}, {"down", 5120, 8192}};
  for (const Shape& sh : shapes) {
    for (int m : {1, 8}) {
      Bf16Problem p = make_bf16(sh, m, false);
      run_bf16<Config<4, 4, 1, 0>>("4w u4", p, s, copy_gbs);
      run_bf16<Config<4, 4, 1, 1024>>("4w u4 pf1k", p, s, copy_gbs);
      run_bf16<Config<4, 4, 1, 2048>>("4w u4 pf2k", p, s, copy_gbs);
      run_bf16<Config<4, 4, 1, 4096>>("4w u4 pf4k", p, s, copy_gbs);
      run_bf16<Config<4, 8, 1, 2048>>("4w u8 pf2k", p, s, copy_gbs);
      run_bf16<Config<4, 2, 1, 2048>>("4w u2 pf2k", p, s, copy_gbs);
      run_bf16<Config<8, 4, 1, 2048>>("8w u4 pf2k", p, s, copy_gbs);
      run_bf16<Config<8, 2, 1, 2048>>("8w u2 pf2k", p, s, copy_gbs);
      free_bf16(p);
    }
  }
  {
    Bf16Problem p = make_bf16({"lm_head", 202048, 5120}, 1, true);
    run_bf16<Config<4, 4, 1, 0>>("4w u4", p, s, copy_gbs);
    run_bf16<Config<4, 4, 1, 2048>>("4w u4 pf2k", p, s, copy_gbs);
    run_bf16<Config<8, 4, 1, 2048>>("8w u4 pf2k", p, s, copy_gbs);
    free_bf16(p);
  }
  for (const Shape& sh : shapes) {
    Fp8Problem p = make_fp8(sh, 1);
    run_fp8<Config<4, 4, 1, 0>>("4w u4 (session 10)", p, s, copy_gbs);
    run_fp8<Config<4, 4, 1, 1024>>("4w u4 pf1k", p, s, copy_gbs);
    run_fp8<Config<4, 4, 1, 2048>>("4w u4 pf2k", p, s, copy_gbs);
    run_fp8<Config<4, 4, 1, 4096>>("4w u4 pf4k", p, s, copy_gbs);
    run_fp8<Config<4, 8, 1, 2048>>("4w u8 pf2k", p, s, copy_gbs);
    run_fp8<Config<8, 4, 1, 2048>>("8w u4 pf2k", p, s, copy_gbs);
    run_fp8<Config<8, 2, 1, 2048>>("8w u2 pf2k", p, s, copy_gbs);
    free_fp8(p);
  }
  // Meta's routed experts at batch 1 (gate_up 16384 x 5120 and down 5120 x 8192 per expert, 16 experts): no
  // prefetch applies (the expert is known only after the offsets), so the warps and steps are what can move.
  for (const Shape& sh : {Shape{"gate_up", 16384, 5120}, Shape{"down", 5120, 8192}}) {
    Fp8Problem p = make_fp8(sh, 16);
    run_fp8<Config<4, 4, 1, 0>>("4w u4 (shipped)", p, s, copy_gbs);
    run_fp8<Config<4, 8, 1, 0>>("4w u8", p, s, copy_gbs);
    run_fp8<Config<8, 4, 1, 0>>("8w u4", p, s, copy_gbs);
    run_fp8<Config<8, 2, 1, 0>>("8w u2", p, s, copy_gbs);
    run_fp8<Config<16, 2, 1, 0>>("16w u2", p, s, copy_gbs);
    free_fp8(p);
  }
  return 0;
}
