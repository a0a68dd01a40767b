// Where the router's time goes, phase by phase (kernels/router.cu built with L4K_ROUTER_PROBE): per-CTA
// %globaltimer stamps at the kernel's phase boundaries, reported as min / median / max over CTAs relative to
// the earliest CTA start, plus the graph-replayed time per call. Built and run on the GPU machine:
//   nvcc -std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a \
//     -DL4K_ROUTER_PROBE -Ikernels bench/experiments/router_probe.cu -o /tmp/router_probe && /tmp/router_probe
// Arguments: experts tokens (one case, e.g. under ncu); none: a sweep. Graph timings are taken with the same
// logits every call (warm: L2-resident) and rotating through copies past the 50 MB L2 (cold: what the bench does).
// -DL4K_ROUTER_SRC='"path"' builds another router.cu (an older version, to compare in the same run; one older
// than session 5 needs this file's version of that time too: the workspace size comes from
// l4k_internal_router_workspace since then).
#ifdef L4K_ROUTER_SRC
#include L4K_ROUTER_SRC
#else
#include "../../kernels/router.cu"
#endif

#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#define CHECK(x)                                                                   \
  do {                                                                             \
    cudaError_t e_ = (x);                                                          \
    if (e_ != cudaSuccess) {                                                       \
      std::printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));      \
      std::exit(1);                                                                \
    }                                                                              \
  } while (0)

static void probe(int tokens, int experts) {
  std::mt19937 rng(tokens * 7 + experts);
  std::uniform_real_distribution<float> u(-4.f, 4.f);
  std::vector<__nv_bfloat16> h(static_cast<size_t>(tokens) * experts);
  for (auto& v : h) v = __float2bfloat16(u(rng));
  const int tile = l4k_internal_router_tile(experts, L4K_LOGITS_BF16);
  const int tiles = (tokens + tile - 1) / tile;
  L4kRouterParams p{};
  // Copies to rotate through, past the 50 MB L2, as the bench does (cold), or one (warm).
  const int sets = static_cast<int>(std::max<size_t>(1, (size_t{96} << 20) / (h.size() * 2)));
  std::vector<void*> logits(std::min(sets, 20));
  for (auto& l : logits) {
    CHECK(cudaMalloc(&l, h.size() * 2));
    CHECK(cudaMemcpy(l, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  }
  p.logits = logits[0];
  CHECK(cudaMalloc(&p.ids, tokens * 4));
  CHECK(cudaMalloc(&p.weights, tokens * 4));
  CHECK(cudaMalloc(&p.counts, experts * 4));
  CHECK(cudaMalloc(&p.offsets, (experts + 1) * 4));
  CHECK(cudaMalloc(&p.dest, tokens * 4));
  p.workspace_bytes = l4k_internal_router_workspace(tokens, experts, L4K_LOGITS_BF16);
  CHECK(cudaMalloc(&p.workspace, p.workspace_bytes));
  p.tokens = tokens, p.experts = experts, p.k = 1, p.mode = L4K_ROUTER_SIGMOID_TOP1;
  p.logits_dtype = L4K_LOGITS_BF16, p.align = 1;
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  for (int i = 0; i < 3; ++i) CHECK(static_cast<cudaError_t>(l4k_launch_router(&p, s)));
  CHECK(cudaStreamSynchronize(s));
  std::vector<unsigned long long> st(4096 * 8);
  CHECK(cudaMemcpyFromSymbol(st.data(), l4k::g_router_probe, st.size() * 8));
  unsigned long long t0 = ~0ull;
  for (int b = 0; b < tiles; ++b) t0 = std::min(t0, st[b * 8]);
  std::printf("T=%d E=%d tiles=%d\n", tokens, experts, tiles);
  const char* names[8] = {"start", "ranked", "step2", "pre-sync", "post-sync", "totals", "scanned", "dest"};
  for (int i : {0, 1, 2, 3, 4, 6, 5, 7}) {
    std::vector<double> v;
    for (int b = 0; b < tiles; ++b)
      if (st[b * 8 + i] >= t0) v.push_back((st[b * 8 + i] - t0) * 1e-3);
    if (v.empty()) continue;
    std::sort(v.begin(), v.end());
    std::printf("  %-10s min %6.2f  med %6.2f  max %6.2f us\n", names[i], v.front(), v[v.size() / 2], v.back());
  }
  for (int cold = 0; cold < 2; ++cold) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < 20; ++i) {
      p.logits = logits[cold ? i % logits.size() : 0];
      CHECK(static_cast<cudaError_t>(l4k_launch_router(&p, s)));
    }
    CHECK(cudaStreamEndCapture(s, &g));
    CHECK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    CHECK(cudaGraphLaunch(ge, s));
    std::vector<float> v;
    for (int r = 0; r < 15; ++r) {
      CHECK(cudaEventRecord(a, s));
      CHECK(cudaGraphLaunch(ge, s));
      CHECK(cudaEventRecord(b, s));
      CHECK(cudaEventSynchronize(b));
      float ms;
      CHECK(cudaEventElapsedTime(&ms, a, b));
      v.push_back(ms * 1e3f / 20);
    }
    std::sort(v.begin(), v.end());
    std::printf("  graph (%s logits, %zu copies): median %.2f us per call (min %.2f)\n", cold ? "cold" : "warm",
                cold ? logits.size() : size_t{1}, v[v.size() / 2], v.front());
    CHECK(cudaGraphExecDestroy(ge));
    CHECK(cudaGraphDestroy(g));
  }
  // The outputs of the last launch against a plain host computation: a fast wrong router proves nothing.
  std::vector<int> ids(tokens), dest(tokens), off(experts + 1);
  CHECK(cudaMemcpy(ids.data(), p.ids, tokens * 4, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(dest.data(), p.dest, tokens * 4, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(off.data(), p.offsets, (experts + 1) * 4, cudaMemcpyDeviceToHost));
  std::vector<int> next(experts, 0);
  int bad = 0;
  for (int t = 0; t < tokens; ++t) {
    int best = 0;
    for (int e = 1; e < experts; ++e)
      if (__bfloat162float(h[size_t(t) * experts + e]) > __bfloat162float(h[size_t(t) * experts + best])) best = e;
    bad += ids[t] != best;
    bad += dest[t] != off[best] + next[best]++;
  }
  std::printf("  check: %s (%d mismatches)\n", bad ? "WRONG" : "ok", bad);
  for (auto l : logits) CHECK(cudaFree(l));
  for (void* q : {static_cast<void*>(p.ids), static_cast<void*>(p.weights), static_cast<void*>(p.counts),
                  static_cast<void*>(p.offsets), static_cast<void*>(p.dest), p.workspace})
    CHECK(cudaFree(q));
  CHECK(cudaStreamDestroy(s));
}

int main(int argc, char** argv) {
  if (argc >= 3) {
    probe(std::atoi(argv[2]), std::atoi(argv[1]));
    return 0;
  }
  for (int e : {16, 128})
    for (int t : {64, 512, 4096, 16384}) probe(t, e);
  return 0;
}
