// Candidate tile configurations for the grouped GEMM's prefill path, timed at Scout shapes so the shipped
// configuration is chosen by measurement (kernels/NOTES.md, "grouped_gemm"). One candidate per compilation:
//   nvcc ... -DCANDIDATE=<1..17> -I kernels grouped_gemm_configs.cu     (scripts/gpu-run.sh step "gemmsweep")
// Includes the real kernel file: the candidates differ only in Config's template arguments.
#include <cstdio>
#include <vector>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <dlfcn.h>

#if CANDIDATE >= 14
#include "../../kernels/grouped_gemm_blockwise.cu"  // brings grouped_gemm.cu's templates with it
#else
#define L4K_GROUPED_GEMM_TEMPLATES_ONLY
#include "../../kernels/grouped_gemm.cu"
#endif

using namespace l4k::grouped_gemm;
namespace gk = cutlass::gemm;
namespace ep = cutlass::epilogue;

// Sweep 3 (bench/results/h100-grouped-gemm-sweep3-sustained.md): every candidate timed under sustained load
// (L4K_SUSTAIN_S seconds of back-to-back calls, as the criterion bench runs), with the SM clock, board power and
// clock-event reasons sampled from NVML during the timed calls, so candidates are ranked by what they do at the
// H100's 700 W limit, not at the idle boost clock. Sweep 2's list is in git history (kernels/NOTES.md has its table).
// Register budget of a promoted consumer thread: 2 x (its share of the tile) / 128 f32 registers (the wgmma
// accumulator plus the promotion target): 64x192 per warpgroup = 192, 64x208 = 208; 256 spills.
using Coop = gk::KernelPtrArrayTmaWarpSpecializedCooperative;
using CoopFast = gk::KernelPtrArrayTmaWarpSpecializedCooperativeFP8FastAccum;
using CoopEpi = ep::PtrArrayTmaWarpSpecializedCooperative;
#if CANDIDATE == 1
#define NAME "coop 128x192 1x2 promoted (shipped: gate_up)"
using Cand = PrefillWide;
#elif CANDIDATE == 2
#define NAME "coop 128x128 1x2 promoted (shipped: down)"
using Cand = Prefill;
#elif CANDIDATE == 3
#define NAME "coop 128x192 2x1 promoted"
using Cand = Config<false, Shape<_128, _192, _128>, Shape<_2, _1, _1>, Coop, CoopEpi>;
#elif CANDIDATE == 4
#define NAME "coop 128x192 1x1 promoted"
using Cand = Config<false, Shape<_128, _192, _128>, Shape<_1, _1, _1>, Coop, CoopEpi>;
#elif CANDIDATE == 5
#define NAME "coop 128x192 2x2 promoted"
using Cand = Config<false, Shape<_128, _192, _128>, Shape<_2, _2, _1>, Coop, CoopEpi>;
#elif CANDIDATE == 6
#define NAME "coop 128x208 1x2 promoted"
using Cand = Config<false, Shape<_128, _208, _128>, Shape<_1, _2, _1>, Coop, CoopEpi>;
#elif CANDIDATE == 7
#define NAME "coop 128x192 1x2 promoted every 256 k (less accurate)"
struct Cand : PrefillWide { static constexpr int kPromotionInterval = 8; };
#elif CANDIDATE == 8
#define NAME "coop 256x128 1x2 fast accumulation (shipped fast)"
using Cand = PrefillFastAccum;
#elif CANDIDATE == 9
#define NAME "coop 256x128 2x1 fast accumulation"
using Cand = Config<false, Shape<_256, _128, _128>, Shape<_2, _1, _1>, CoopFast, CoopEpi>;
#elif CANDIDATE == 10
#define NAME "coop 128x256 1x2 fast accumulation"
using Cand = Config<false, Shape<_128, _256, _128>, Shape<_1, _2, _1>, CoopFast, CoopEpi>;
#elif CANDIDATE == 11
#define NAME "coop 128x192 1x1 promoted, swizzle 2"
struct Cand : Config<false, Shape<_128, _192, _128>, Shape<_1, _1, _1>, Coop, CoopEpi> { static constexpr int kSwizzle = 2; };
#elif CANDIDATE == 12
#define NAME "coop 256x128 1x1 fast accumulation"
using Cand = Config<false, Shape<_256, _128, _128>, Shape<_1, _1, _1>, CoopFast, CoopEpi>;
#elif CANDIDATE == 13
#define NAME "coop 128x128 1x1 promoted"
using Cand = Config<false, Shape<_128, _128, _128>, Shape<_1, _1, _1>, Coop, CoopEpi>;
// 128x128 blockwise scales (grouped_gemm_blockwise.cu): the scales are applied at each promotion.
#elif CANDIDATE == 14
#define NAME "blockwise coop 128x128 1x2 (shipped)"
using Cand = BlockwisePrefill;
#elif CANDIDATE == 15
#define NAME "blockwise coop 128x128 1x1"
using Cand = BlockwiseConfig<false, Shape<_128, _128, _128>, Shape<_1, _1, _1>,
                             gk::KernelPtrArrayTmaWarpSpecializedCooperativeFP8Blockwise, CoopEpi>;
// 128-row fast-accumulation tiles, for experts with a single 128-row M tile (Maverick), where 256-row tiles
// would compute half padding.
#elif CANDIDATE == 16
#define NAME "coop 128x256 1x1 fast accumulation"
using Cand = Config<false, Shape<_128, _256, _128>, Shape<_1, _1, _1>, CoopFast, CoopEpi>;
#elif CANDIDATE == 17
#define NAME "coop 128x192 1x1 fast accumulation"
using Cand = Config<false, Shape<_128, _192, _128>, Shape<_1, _1, _1>, CoopFast, CoopEpi>;
#endif

// NVML through dlopen (the driver ships libnvidia-ml.so.1; no header or link-time dependency).
struct Nvml {
  using Dev = void*;
  int (*init)() = nullptr;
  int (*handle)(unsigned, Dev*) = nullptr;
  int (*clock)(Dev, int, unsigned*) = nullptr;         // NVML_CLOCK_SM = 1
  int (*power)(Dev, unsigned*) = nullptr;              // milliwatts
  int (*reasons)(Dev, unsigned long long*) = nullptr;  // clock-event reasons: 0x4 SW power cap, 0x8 HW slowdown
  Dev dev = nullptr;
  bool ok = false;
  Nvml() {
    void* h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (!h) return;
    init = (int (*)())dlsym(h, "nvmlInit_v2");
    handle = (int (*)(unsigned, Dev*))dlsym(h, "nvmlDeviceGetHandleByIndex_v2");
    clock = (int (*)(Dev, int, unsigned*))dlsym(h, "nvmlDeviceGetClockInfo");
    power = (int (*)(Dev, unsigned*))dlsym(h, "nvmlDeviceGetPowerUsage");
    reasons = (int (*)(Dev, unsigned long long*))dlsym(h, "nvmlDeviceGetCurrentClocksEventReasons");
    if (!reasons) reasons = (int (*)(Dev, unsigned long long*))dlsym(h, "nvmlDeviceGetCurrentClocksThrottleReasons");
    ok = init && handle && clock && power && reasons && init() == 0 && handle(0, &dev) == 0;
  }
};

// Samples SM clock and power every 10 ms on a thread of its own while `on` is set.
struct Sampler {
  Nvml& nvml;
  std::atomic<bool> on{false};
  std::vector<unsigned> mhz, mw;
  unsigned long long reasons = 0;
  std::thread t;
  explicit Sampler(Nvml& n) : nvml(n) {}
  void start() {
    mhz.clear(), mw.clear(), reasons = 0, on = true;
    t = std::thread([this] {
      while (on) {
        unsigned c = 0, w = 0;
        unsigned long long r = 0;
        if (nvml.ok && nvml.clock(nvml.dev, 1, &c) == 0 && nvml.power(nvml.dev, &w) == 0) mhz.push_back(c), mw.push_back(w);
        if (nvml.ok && nvml.reasons(nvml.dev, &r) == 0) reasons |= r;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    });
  }
  void stop() { on = false, t.join(); }
  static unsigned median(std::vector<unsigned> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  }
};

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA %s line %d\n", cudaGetErrorString(e), __LINE__); return 1; } } while (0)

__global__ void fill(uint8_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 13; h *= 0x5bd1e995u; h ^= h >> 15;
    p[i] = (uint8_t)(0x20 + h % 0x30) | (h & 0x100 ? 0x80 : 0);  // finite, moderate magnitudes
  }
}

int main() {
  // L4K_SWEEP_EXPERTS=128: Maverick's expert count at T = 16384 (128 rows per expert: one M tile each, bound by
  // reading the weights) instead of Scout's three cases.
  const char* experts_env = getenv("L4K_SWEEP_EXPERTS");
  const int E = experts_env ? atoi(experts_env) : 16;
  Nvml nvml;
  Sampler sampler(nvml);
  if (!nvml.ok) printf("NVML not available: no clock or power figures\n");
  struct Case { const char* proj; int n, k, t; };
  std::vector<Case> cases{{"gate_up", 16384, 5120, 16384}, {"gate_up", 16384, 5120, 4096}, {"down", 5120, 8192, 16384}};
  if (E != 16) cases = {{"gate_up", 16384, 5120, 16384}, {"down", 5120, 8192, 16384}};
  for (Case cs : cases) {
    uint8_t *a, *b; float *sa, *sb; void *d, *ws; int32_t* off;
    CK(cudaMalloc(&a, (size_t)cs.t * cs.k)); CK(cudaMalloc(&b, (size_t)E * cs.n * cs.k));
    // Rowwise: [t] and [E, n]; blockwise: [t, k / 128] and [E, n / 128, k / 128] (fewer than E * n).
    const size_t sa_len = (size_t)cs.t * (cs.k / 128);
    CK(cudaMalloc(&sa, sa_len * 4)); CK(cudaMalloc(&sb, (size_t)E * cs.n * 4)); CK(cudaMalloc(&d, (size_t)cs.t * cs.n * 2));
    fill<<<1024, 256>>>(a, (size_t)cs.t * cs.k, 1); fill<<<1024, 256>>>(b, (size_t)E * cs.n * cs.k, 2);
    std::vector<float> ones(std::max(sa_len, (size_t)E * cs.n), 1e-3f);
    CK(cudaMemcpy(sa, ones.data(), sa_len * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(sb, ones.data(), (size_t)E * cs.n * 4, cudaMemcpyHostToDevice));
    std::vector<int32_t> offsets(E + 1);
    for (int e = 0; e <= E; ++e) offsets[e] = e * cs.t / E;
    CK(cudaMalloc(&off, (E + 1) * 4)); CK(cudaMemcpy(off, offsets.data(), (E + 1) * 4, cudaMemcpyHostToDevice));
    const size_t wsb = workspace_size<Cand>(E);
    CK(cudaMalloc(&ws, wsb));
    L4kGroupedGemmParams p{a, sa, b, sb, off, nullptr, d, nullptr, ws, (int64_t)wsb, cs.t, cs.n, cs.k, E, 0};
    for (int i = 0; i < 3; ++i) if (int s = run<Cand>(p, 0)) { printf("run failed: %d\n", s); return 1; }
    CK(cudaDeviceSynchronize());
    // Sustained load first (the criterion bench's 0.3 s warm-up + 1 s of measurement), then 40 calls timed
    // back to back, each between its own pair of events, while NVML is sampled.
    const char* env = getenv("L4K_SUSTAIN_S");
    const double sustain_s = env ? atof(env) : 1.3;
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < sustain_s) {
      for (int i = 0; i < 8; ++i) run<Cand>(p, 0);
      CK(cudaStreamSynchronize(0));
    }
    const int calls = 40;
    std::vector<cudaEvent_t> ev(2 * calls);
    for (auto& e : ev) cudaEventCreate(&e);
    sampler.start();
    for (int i = 0; i < calls; ++i) { cudaEventRecord(ev[2 * i]); run<Cand>(p, 0); cudaEventRecord(ev[2 * i + 1]); }
    CK(cudaDeviceSynchronize());
    sampler.stop();
    std::vector<float> us;
    for (int i = 0; i < calls; ++i) { float ms; cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]); us.push_back(ms * 1e3f); }
    for (auto& e : ev) cudaEventDestroy(e);
    CK(cudaGetLastError());
    std::sort(us.begin(), us.end());
    const double flops = 2.0 * cs.t * cs.n * cs.k, med = us[calls / 2];
    const unsigned mhz = Sampler::median(sampler.mhz), mw = Sampler::median(sampler.mw);
    // Tensor-core utilisation at the sampled clock: dense FP8 wgmma retires 8192 FLOP per SM per clock on Hopper.
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    const double peak = 8192.0 * sms * mhz * 1e6;
    printf("%-56s E=%-3d %-7s T=%-5d %8.1f us %6.0f TFLOP/s | %4u MHz %5.0f W reasons 0x%llx | %4.1f%% of peak at that clock, %5.2f TFLOP/J\n",
           NAME, E, cs.proj, cs.t, med, flops / med / 1e6, mhz, mw / 1e3, sampler.reasons, 100.0 * flops / (med * 1e-6) / peak,
           flops / (med * 1e-6) / 1e12 / (mw / 1e3));
    cudaFree(a); cudaFree(b); cudaFree(sa); cudaFree(sb); cudaFree(d); cudaFree(ws); cudaFree(off);
  }
  return 0;
}
