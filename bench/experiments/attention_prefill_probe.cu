// Where the prefill kernel's time goes (kernels/attention_prefill.cu instantiated with TimerProbe below: per-CTA
// %globaltimer stamps at the points of kernels/attention_prefill/probe.cuh; the library's kernel has NoProbe and no
// stamps) and a timing of the judged shapes (the library's kernel; outputs hashed so variants can be checked
// against each other). Built and run on the GPU machine (or built here and carried):
//   nvcc -std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -cudart static \
//     -Ikernels -Iinclude bench/experiments/attention_prefill_probe.cu -o /tmp/prefill_probe
// `prefill_probe trace` adds the phase trace. -DL4K_PREFILL_SRC='"path"' times another attention_prefill.cu (an older
// version, to compare in the same run; scripts/attention-ab.sh does that); its trace needs the same Probe hooks, so
// with L4K_PREFILL_SRC the trace is built only when -DL4K_PREFILL_TRACE says the source has them.
#ifdef L4K_PREFILL_SRC
#include L4K_PREFILL_SRC
#else
#include "../../kernels/attention_prefill.cu"
#define L4K_PREFILL_TRACE
#endif

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#define CHECK(x)                                                              \
  do {                                                                        \
    cudaError_t e_ = (x);                                                     \
    if (e_ != cudaSuccess) {                                                  \
      std::printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                           \
    }                                                                         \
  } while (0)

constexpr int kHeads = 40, kKvHeads = 8, kD = 128, kBlock = 64;

#ifdef L4K_PREFILL_TRACE
// Per CTA, %globaltimer at the ProbePoints (slot = the point), slot 6 = (smid << 32) | key tiles.
constexpr int kProbeCtas = 16384;
__device__ unsigned long long g_prefill_probe[kProbeCtas * 8];
struct TimerProbe {
  static __device__ __forceinline__ unsigned cta() {
    return blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  }
  static __device__ __forceinline__ void stamp(l4k::attn_prefill::ProbePoint point, bool cond) {
    if (cond && cta() < kProbeCtas) {
      unsigned long long t;
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
      g_prefill_probe[cta() * 8 + point] = t;
    }
  }
  static __device__ __forceinline__ void tiles(bool cond, int n_tiles) {
    if (cond && cta() < kProbeCtas) {
      unsigned smid;
      asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
      g_prefill_probe[cta() * 8 + 6] = (static_cast<unsigned long long>(smid) << 32) | n_tiles;
    }
  }
};
#endif

static void run_case(int seq_len, int chunk, bool trace) {
  std::mt19937 rng(seq_len + chunk);
  // Uniform [-2, 2) from a cheap hash: the host fills ~340 M values for S = 32768.
  uint32_t state = 12345u + seq_len;
  auto nd = [&](std::mt19937&) {
    state = state * 1664525u + 1013904223u;
    return ((state >> 8) * (1.f / 16777216.f)) * 4.f - 2.f;
  };
  const size_t nq = size_t(seq_len) * kHeads * kD, nkv = size_t(seq_len) * kKvHeads * kD;
  std::vector<__nv_bfloat16> hq(nq), hk(nkv), hv(nkv);
  for (auto& x : hq) x = __float2bfloat16(nd(rng));
  for (auto& x : hk) x = __float2bfloat16(nd(rng));
  for (auto& x : hv) x = __float2bfloat16(nd(rng));
  const int blocks = seq_len / kBlock;
  std::vector<int> table(blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  std::vector<int> cu = {0, seq_len}, lens = {seq_len};
  void *q, *k, *v, *o;
  int *dcu, *dlen, *dtab;
  CHECK(cudaMalloc(&q, nq * 2));
  CHECK(cudaMalloc(&o, nq * 2));
  CHECK(cudaMalloc(&k, nkv * 2));
  CHECK(cudaMalloc(&v, nkv * 2));
  CHECK(cudaMalloc(&dcu, 8));
  CHECK(cudaMalloc(&dlen, 4));
  CHECK(cudaMalloc(&dtab, blocks * 4));
  CHECK(cudaMemcpy(q, hq.data(), nq * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(k, hk.data(), nkv * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(v, hv.data(), nkv * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dcu, cu.data(), 8, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dlen, lens.data(), 4, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dtab, table.data(), blocks * 4, cudaMemcpyHostToDevice));
  L4kAttentionParams p{};
  p.q = q, p.k_cache = k, p.v_cache = v, p.cu_seqlens_q = dcu, p.seq_lens_k = dlen, p.block_table = dtab, p.out = o;
  p.total_q = seq_len, p.slots = seq_len, p.batch = 1, p.max_blocks = blocks, p.block_size = kBlock;
  p.n_heads = kHeads, p.n_kv_heads = kKvHeads, p.head_dim = kD, p.chunk = chunk, p.max_q_len = seq_len;
  p.softmax_scale = 1.f / std::sqrt(float(kD));
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  auto launch = [&] {
    const int rc = l4k_launch_attention_prefill(&p, s);
    if (rc != 0) {
      std::printf("launch failed: %d\n", rc);
      std::exit(1);
    }
  };
  CHECK(cudaMemset(o, 0xff, nq * 2));  // NaN poison
  for (int i = 0; i < 3; ++i) launch();
  CHECK(cudaStreamSynchronize(s));
  // Output hash (FNV-1a over the bits): equal across variants that must compute the same thing.
  std::vector<uint16_t> ho(nq);
  CHECK(cudaMemcpy(ho.data(), o, nq * 2, cudaMemcpyDeviceToHost));
  uint64_t hash = 1469598103934665603ull;
  size_t nan = 0;
  for (uint16_t x : ho) {
    hash = (hash ^ x) * 1099511628211ull;
    nan += (x & 0x7f80) == 0x7f80 && (x & 0x7f);
  }
  double pairs = 0;
  for (int qp = 0; qp < seq_len; ++qp) pairs += (chunk ? qp % chunk : qp) + 1;
  const double flops = pairs * 4.0 * kHeads * kD;
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  std::vector<float> t;
  for (int r = 0; r < 15; ++r) {
    CHECK(cudaEventRecord(a, s));
    for (int i = 0; i < 5; ++i) launch();
    CHECK(cudaEventRecord(b, s));
    CHECK(cudaEventSynchronize(b));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1e3f / 5);
  }
  std::sort(t.begin(), t.end());
  std::printf("S%d C%d: median %.1f us (%.0f TFLOP/s), min %.1f, max %.1f; hash %016llx, NaN %zu\n", seq_len, chunk,
              t[t.size() / 2], flops / t[t.size() / 2] / 1e6, t.front(), t.back(), (unsigned long long)hash, nan);
#ifdef L4K_PREFILL_TRACE
  if (trace) {
    std::vector<unsigned long long> st(kProbeCtas * 8, 0);
    CHECK(cudaMemcpyToSymbol(g_prefill_probe, st.data(), st.size() * 8));
    const int rc = l4k::attn_prefill::launch_checked<TimerProbe>(&p, s);
    if (rc != 0) {
      std::printf("traced launch failed: %d\n", rc);
      std::exit(1);
    }
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpyFromSymbol(st.data(), g_prefill_probe, st.size() * 8));
    const int ctas = std::min(kProbeCtas, kHeads * (seq_len / 128));
    struct Cta {
      double t[8];
      int sm, tiles;
    };
    std::vector<Cta> c(ctas);
    unsigned long long t0 = ~0ull, tend = 0;
    for (int i = 0; i < ctas; ++i) t0 = std::min(t0, st[i * 8]);
    for (int i = 0; i < ctas; ++i) {
      for (int j = 0; j < 8; ++j) c[i].t[j] = j == 6 ? 0 : (st[i * 8 + j] - t0) * 1e-3;
      c[i].sm = int(st[i * 8 + 6] >> 32), c[i].tiles = int(st[i * 8 + 6] & 0xffffffff);
      tend = std::max(tend, std::max(st[i * 8 + 4], st[i * 8 + 7]));
    }
    const double span = (tend - t0) * 1e-3;
    int nsm = 0;
    for (auto& x : c) nsm = std::max(nsm, x.sm + 1);
    // Per SM: CTAs in start order, gaps between one's end and the next's start.
    double gap = 0, lead = 0, trail = 0, pro_chk = 0, pro_load = 0, main = 0, epi = 0, wg_skew = 0;
    std::vector<std::vector<int>> by_sm(nsm);
    for (int i = 0; i < ctas; ++i) by_sm[c[i].sm].push_back(i);
    for (auto& v : by_sm) {
      std::sort(v.begin(), v.end(), [&](int x, int y) { return c[x].t[0] < c[y].t[0]; });
      double prev_end = 0;
      for (size_t n = 0; n < v.size(); ++n) {
        const Cta& x = c[v[n]];
        const double end = std::max(x.t[4], x.t[7]);
        if (n == 0) lead += x.t[0];
        else gap += x.t[0] - prev_end;
        prev_end = end;
      }
      if (!v.empty()) trail += span - prev_end;
    }
    for (auto& x : c) {
      pro_chk += x.t[1] - x.t[0];
      pro_load += x.t[2] - x.t[1];
      main += x.t[3] - x.t[2];
      epi += std::max(x.t[4], x.t[7]) - x.t[3];
      wg_skew += x.t[5] - x.t[3];
    }
    const double total = span * nsm;
    std::printf("  trace: span %.1f us on %d SMs, %d CTAs; as %% of SM time: lead %.2f, gaps between CTAs %.2f, "
                "trail %.2f, check %.2f, loads to first data %.2f, main loop %.2f, last wait to end %.2f\n",
                span, nsm, ctas, 100 * lead / total, 100 * gap / total, 100 * trail / total, 100 * pro_chk / total,
                100 * pro_load / total, 100 * main / total, 100 * epi / total);
    std::printf("  per CTA (us): gap %.2f, check %.2f, loads %.2f, epilogue %.2f, wg2 - wg1 last wait %.2f\n",
                gap / ctas, pro_chk / ctas, pro_load / ctas, epi / ctas, wg_skew / ctas);
    // Main loop time against key tiles: least squares slope (steady per-tile time) and intercept (fill / drain).
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (auto& x : c) {
      const double y = x.t[3] - x.t[2];
      sx += x.tiles, sy += y, sxx += double(x.tiles) * x.tiles, sxy += x.tiles * y;
    }
    const double slope = (ctas * sxy - sx * sy) / (ctas * sxx - sx * sx), icpt = (sy - slope * sx) / ctas;
    std::printf("  main loop = %.3f us x tiles + %.2f us (%.0f TFLOP/s per tile at %d SMs)\n", slope, icpt,
                2.0 * 2 * 128 * 128 * kD / (slope * 1e-6) / 1e12 * nsm, nsm);
    for (int n : {1, 2, 4, 8, 16, 32, 64, 128, 256}) {
      double sum = 0;
      int cnt = 0;
      for (auto& x : c)
        if (x.tiles == n) sum += x.t[3] - x.t[2], ++cnt;
      if (cnt) std::printf("    tiles %3d: main loop %.2f us (%d CTAs)\n", n, sum / cnt, cnt);
    }
  }
#endif
  (void)trace;
  for (void* x : {q, k, v, o, static_cast<void*>(dcu), static_cast<void*>(dlen), static_cast<void*>(dtab)})
    CHECK(cudaFree(x));
  CHECK(cudaStreamDestroy(s));
}

int main(int argc, char** argv) {
  const bool trace = argc > 1;
  run_case(8192, 0, trace);
  if (std::getenv("PROBE_ONLY_S8192") == nullptr) run_case(32768, 8192, trace);
  return 0;
}
