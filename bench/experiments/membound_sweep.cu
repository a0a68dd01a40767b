// Issue 16's memory-bound kernels on the H200: the shipped launchers against their alternatives, in one process,
// with the copy and read ceilings measured beside them. Every variant's output is compared byte for byte with
// the shipped kernel's (the arithmetic is the same; only the load path or the work split differs: variants that
// split keys across warps differently round differently and say so). Variants measured and removed are
// described in kernels/NOTES.md (session 9).
//
//   nvcc -std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a \
//        -Ikernels -Iinclude bench/experiments/membound_sweep.cu -o /tmp/membound && /tmp/membound [family...]
// families: permute unpermute weight_prep decode (default: all)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../../kernels/attention_decode.cu"
#include "../../kernels/permute.cu"
#include "../../kernels/weight_prep.cu"

#define CK(x)                                                                                  \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));       \
      exit(1);                                                                                 \
    }                                                                                          \
  } while (0)

static cudaStream_t g_stream;
static int g_sms;

// Median of `reps` event-timed calls after `warm` untimed ones, in microseconds.
static double time_us(const std::function<void()>& fn, int warm = 5, int reps = 25) {
  for (int i = 0; i < warm; ++i) fn();
  CK(cudaStreamSynchronize(g_stream));
  std::vector<double> t;
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < reps; ++i) {
    CK(cudaEventRecord(a, g_stream));
    fn();
    CK(cudaEventRecord(b, g_stream));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1e3);
  }
  CK(cudaGetLastError());
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

static void* dalloc(size_t bytes) {
  void* p;
  CK(cudaMalloc(&p, bytes));
  return p;
}

// Random bf16 in [-2, 2) with a few outliers, filled on the host once.
static void fill_bf16(void* d, size_t n, uint32_t seed) {
  std::vector<uint16_t> h(n);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  for (size_t i = 0; i < n; ++i) {
    float f = u(rng) * ((i % 997) == 0 ? 100.f : 1.f);
    uint32_t bits;
    memcpy(&bits, &f, 4);
    h[i] = static_cast<uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
  }
  CK(cudaMemcpy(d, h.data(), n * 2, cudaMemcpyHostToDevice));
}

static bool same_bytes(const void* a, const void* b, size_t bytes) {
  std::vector<uint8_t> ha(bytes), hb(bytes);
  CK(cudaMemcpy(ha.data(), a, bytes, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(hb.data(), b, bytes, cudaMemcpyDeviceToHost));
  return memcmp(ha.data(), hb.data(), bytes) == 0;
}

static double g_copy_gbps, g_read_gbps;

__global__ void read_kernel(const uint4* p, size_t n, uint32_t* sink) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint4 v = p[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) *sink = acc;
}

static void ceilings() {
  const size_t bytes = size_t(2) << 30;
  void* a = dalloc(bytes);
  void* b = dalloc(bytes);
  CK(cudaMemset(a, 1, bytes));
  const double us = time_us([&] { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, g_stream)); }, 3, 15);
  g_copy_gbps = 2.0 * bytes / us / 1e3;
  uint32_t* sink = static_cast<uint32_t*>(dalloc(4));
  double best = 0;
  for (int per_sm : {4, 8, 16}) {
    const double r = time_us([&] { read_kernel<<<g_sms * per_sm, 512, 0, g_stream>>>(static_cast<uint4*>(a), bytes / 16, sink); }, 3, 15);
    best = std::max(best, bytes / r / 1e3);
  }
  g_read_gbps = best;
  printf("ceilings: copy %.0f GB/s (read + write), read-only kernel %.0f GB/s\n", g_copy_gbps, g_read_gbps);
  CK(cudaFree(a));
  CK(cudaFree(b));
  CK(cudaFree(sink));
}

static void report(const char* family, const char* shape, const char* variant, double us, double bytes, bool ok) {
  const double gbps = bytes / us / 1e3;
  printf("%-12s %-28s %-34s %9.2f us %6.0f GB/s %5.1f%% of copy %5.1f%% of read %s\n", family, shape, variant, us, gbps,
         100 * gbps / g_copy_gbps, 100 * gbps / g_read_gbps, ok ? "same bytes" : "DIFFERENT BYTES");
  fflush(stdout);
}

template <class K>
static int occupancy(K kernel, int threads, size_t smem) {
  int n = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem));
  return n;
}

// ---- permute / unpermute -------------------------------------------------------------------------------

// The general (any k) kernel on a top-1 routing: what the launcher ran for k == 1 before the top-1 kernel.
static void unpermute_general(const L4kUnpermuteParams& p, const char* shape, double bytes, const void* want) {
  using namespace l4k;
  constexpr int VPT = 4;
  const int threads = static_cast<int>((p.hidden / 8 + VPT - 1) / VPT + 31) / 32 * 32;
  auto kernel = unpermute_kernel<8, VPT>;
  CK(cudaMemsetAsync(p.out, 0xff, p.tokens * p.hidden * 2, g_stream));
  kernel<<<unsigned(p.tokens), threads, 0, g_stream>>>(p);
  CK(cudaStreamSynchronize(g_stream));
  const bool ok = same_bytes(p.out, want, p.tokens * p.hidden * 2);
  const double us = time_us([&] { kernel<<<unsigned(p.tokens), threads, 0, g_stream>>>(p); });
  char v[64];
  snprintf(v, sizeof v, "general kernel (%d resident)", occupancy(kernel, threads, 0));
  report("unpermute", shape, v, us, bytes, ok);
}

// The top-1 kernel with fewer packs per thread and more threads per CTA (fewer registers a thread).
template <int VPT, int THREADS>
static void unpermute_top1_wide(const L4kUnpermuteParams& p, const char* shape, double bytes, const void* want) {
  using namespace l4k;
  if (p.hidden / 8 > int64_t(VPT) * THREADS) return;
  auto kernel = unpermute_top1_kernel<VPT, THREADS>;
  CK(cudaMemsetAsync(p.out, 0xff, p.tokens * p.hidden * 2, g_stream));
  kernel<<<unsigned(p.tokens), THREADS, 0, g_stream>>>(p);
  CK(cudaStreamSynchronize(g_stream));
  const bool ok = same_bytes(p.out, want, p.tokens * p.hidden * 2);
  const double us = time_us([&] { kernel<<<unsigned(p.tokens), THREADS, 0, g_stream>>>(p); });
  char v[64];
  snprintf(v, sizeof v, "top-1, %d packs x %d threads (%d resident)", VPT, THREADS, occupancy(kernel, THREADS, 0));
  report("unpermute", shape, v, us, bytes, ok);
}

static void permute_family(bool do_permute, bool do_unpermute) {
  const int64_t T = 16384, H = 5120;
  const int E = 16;
  void* x = dalloc(T * H * 2);
  fill_bf16(x, T * H, 1);
  // Scout routing: top-1, tokens spread over 16 experts, rows sorted by expert.
  std::vector<int> expert(T), dest(T);
  std::mt19937 rng(7);
  for (auto& e : expert) e = rng() % E;
  std::vector<int> order(T);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return expert[a] < expert[b]; });
  for (int r = 0; r < T; ++r) dest[order[r]] = r;
  std::vector<float> w(T);
  for (auto& v : w) {  // bf16-valued sigmoid scores
    float f = 0.05f + (rng() % 1000) / 1100.f;
    uint32_t bits;
    memcpy(&bits, &f, 4);
    bits &= 0xffff0000u;
    memcpy(&v, &bits, 4);
  }
  int* d_dest = static_cast<int*>(dalloc(T * 4));
  float* d_w = static_cast<float*>(dalloc(T * 4));
  CK(cudaMemcpy(d_dest, dest.data(), T * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_w, w.data(), T * 4, cudaMemcpyHostToDevice));
  char shape[64];
  snprintf(shape, sizeof shape, "%ldx%ld E%d top1", long(T), long(H), E);

  if (do_permute) {
    void* q = dalloc(T * H);
    void* q_ref = dalloc(T * H);
    float* s = static_cast<float*>(dalloc(T * 4));
    float* s_ref = static_cast<float*>(dalloc(T * 4));
    L4kPermuteParams p{};
    p.x = x;
    p.weights = d_w;
    p.dest = d_dest;
    p.out = q_ref;
    p.scales = s_ref;
    p.tokens = T;
    p.hidden = H;
    p.rows = T;
    p.k = 1;
    p.experts = E;
    p.align = 1;
    p.out_kind = L4K_PERMUTE_FP8;
    const double bytes = double(T) * H * 3 + 12.0 * T;
    CK(static_cast<cudaError_t>(l4k_launch_permute(&p, g_stream)));
    CK(cudaStreamSynchronize(g_stream));
    report("permute_fp8", shape, "shipped (CTA per token)", time_us([&] { l4k_launch_permute(&p, g_stream); }), bytes,
           true);
    // Router weights that are not bf16 values (an engine passing f32 scores): the general path.
    std::vector<float> wf(T);
    for (auto& v : wf) v = 0.05f + (rng() % 100000) / 110000.f;
    float* d_wf = static_cast<float*>(dalloc(T * 4));
    CK(cudaMemcpy(d_wf, wf.data(), T * 4, cudaMemcpyHostToDevice));
    p.weights = d_wf;
    report("permute_fp8", shape, "shipped, f32 weights", time_us([&] { l4k_launch_permute(&p, g_stream); }), bytes,
           true);
    p.weights = nullptr;
    report("permute_fp8", shape, "shipped, no weights", time_us([&] { l4k_launch_permute(&p, g_stream); }), bytes,
           true);
    // The router's align = 128 layout: each expert's rows padded to a multiple of 128 (padding rows zeroed).
    {
      std::vector<int> counts(E, 0), offsets(E + 1, 0), pdest(T);
      for (int t = 0; t < T; ++t) counts[expert[t]]++;
      for (int x = 0; x < E; ++x) offsets[x + 1] = offsets[x] + (counts[x] + 127) / 128 * 128;
      std::vector<int> fill(E, 0);
      for (int r = 0; r < T; ++r) {
        const int t = order[r];
        pdest[t] = offsets[expert[t]] + fill[expert[t]]++;
      }
      int* d_pdest = static_cast<int*>(dalloc(T * 4));
      int* d_counts = static_cast<int*>(dalloc(E * 4));
      int* d_offsets = static_cast<int*>(dalloc((E + 1) * 4));
      CK(cudaMemcpy(d_pdest, pdest.data(), T * 4, cudaMemcpyHostToDevice));
      CK(cudaMemcpy(d_counts, counts.data(), E * 4, cudaMemcpyHostToDevice));
      CK(cudaMemcpy(d_offsets, offsets.data(), (E + 1) * 4, cudaMemcpyHostToDevice));
      void* qp = dalloc(size_t(offsets[E]) * H);
      float* sp = static_cast<float*>(dalloc(size_t(offsets[E]) * 4));
      L4kPermuteParams pp = p;
      pp.dest = d_pdest;
      pp.counts = d_counts;
      pp.offsets = d_offsets;
      pp.align = 128;
      pp.rows = offsets[E];
      pp.out = qp;
      pp.scales = sp;
      pp.weights = d_w;
      report("permute_fp8", shape, "shipped, align 128 (bytes: real rows)",
             time_us([&] { l4k_launch_permute(&pp, g_stream); }), bytes, true);
      CK(cudaFree(d_pdest));
      CK(cudaFree(d_counts));
      CK(cudaFree(d_offsets));
      CK(cudaFree(qp));
      CK(cudaFree(sp));
    }
    p.out_kind = L4K_PERMUTE_BF16;
    p.weights = d_w;
    void* qb = dalloc(T * H * 2);
    p.out = qb;
    report("permute_bf16", shape, "shipped, bf16 weights", time_us([&] { l4k_launch_permute(&p, g_stream); }),
           double(T) * H * 4 + 8.0 * T, true);
    CK(cudaFree(d_wf));
    CK(cudaFree(qb));
    CK(cudaFree(q));
    CK(cudaFree(q_ref));
    CK(cudaFree(s));
    CK(cudaFree(s_ref));
  }
  if (do_unpermute) {
    void* y = dalloc(T * H * 2);
    void* sh = dalloc(T * H * 2);
    void* out = dalloc(T * H * 2);
    void* out_ref = dalloc(T * H * 2);
    fill_bf16(y, T * H, 2);
    fill_bf16(sh, T * H, 3);
    L4kUnpermuteParams p{};
    p.expert_out = y;
    p.weights = nullptr;
    p.dest = d_dest;
    p.shared = sh;
    p.out = out_ref;
    p.tokens = T;
    p.hidden = H;
    p.rows = T;
    p.k = 1;
    const double bytes = double(T) * H * 6 + 4.0 * T;
    CK(static_cast<cudaError_t>(l4k_launch_unpermute(&p, g_stream)));
    CK(cudaStreamSynchronize(g_stream));
    report("unpermute", shape, "shipped (top-1 kernel) + shared",
           time_us([&] { l4k_launch_unpermute(&p, g_stream); }), bytes, true);
    p.out = out;
    unpermute_general(p, shape, bytes, out_ref);
    unpermute_top1_wide<2, 320>(p, shape, bytes, out_ref);
    unpermute_top1_wide<1, 640>(p, shape, bytes, out_ref);
    CK(cudaFree(y));
    CK(cudaFree(sh));
    CK(cudaFree(out));
    CK(cudaFree(out_ref));
  }
  CK(cudaFree(x));
  CK(cudaFree(d_dest));
  CK(cudaFree(d_w));
}

// ---- weight prep ---------------------------------------------------------------------------------------

// The shipped strip kernel launched with clusters of 2 along N: the two CTAs sharing every 32-byte sector start
// together.
static void prep_strip_paired(const L4kWeightPrepParams& p, const char* shape, double bytes, const void* want, int cn) {
  using namespace l4k;
  const int64_t rows = p.k / kRowsPerThread;
  const int threads = static_cast<int>((rows + 31) / 32 * 32);
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(unsigned(p.n / kStripCols), unsigned(p.experts));
  cfg.blockDim = dim3(threads);
  cfg.stream = g_stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cn;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  if (p.n / kStripCols % cn) return;
  auto launch = [&] {
    if (threads <= 320)
      CK(cudaLaunchKernelEx(&cfg, weight_prep_strip_kernel<320, 2, RowOrder::kPlain>, p));
    else
      CK(cudaLaunchKernelEx(&cfg, weight_prep_strip_kernel<kStripThreads, 1, RowOrder::kPlain>, p));
  };
  CK(cudaMemsetAsync(p.out, 0xff, p.experts * p.n * p.k, g_stream));
  launch();
  CK(cudaStreamSynchronize(g_stream));
  const bool ok = same_bytes(p.out, want, p.experts * p.n * p.k);
  char v[64];
  snprintf(v, sizeof v, "strip, clusters of %d along N", cn);
  report("weight_prep", shape, v, time_us(launch, 2, 10), bytes, ok);
}

static void prep_family() {
  struct Shape {
    const char* name;
    int64_t e, k, n;
  };
  for (Shape sh : {Shape{"gate_up E16 K5120 N16384", 16, 5120, 16384}, Shape{"down E16 K8192 N5120", 16, 8192, 5120}}) {
    const size_t elems = size_t(sh.e) * sh.k * sh.n;
    void* w = dalloc(elems * 2);
    fill_bf16(w, elems, 11);
    void* out = dalloc(elems);
    void* out_ref = dalloc(elems);
    float* sc = static_cast<float*>(dalloc(sh.e * sh.n * 4));
    float* sc_ref = static_cast<float*>(dalloc(sh.e * sh.n * 4));
    L4kWeightPrepParams p{w, out_ref, sc_ref, sh.e, sh.k, sh.n};
    const double bytes = double(elems) * 3 + 4.0 * sh.e * sh.n;
    CK(static_cast<cudaError_t>(l4k_launch_weight_prep(&p, g_stream)));
    CK(cudaStreamSynchronize(g_stream));
    report("weight_prep", sh.name, "shipped strip (8 cols, clusters of 2)", time_us([&] { l4k_launch_weight_prep(&p, g_stream); }, 2, 10),
           bytes, true);
    p.out = out;
    p.scales = sc;
    for (int cn : {2, 4, 8}) prep_strip_paired(p, sh.name, bytes, out_ref, cn);
    CK(cudaFree(w));
    CK(cudaFree(out));
    CK(cudaFree(out_ref));
    CK(cudaFree(sc));
    CK(cudaFree(sc_ref));
  }
}

// ---- attention decode ----------------------------------------------------------------------------------

template <class C>
static void decode_variant(const L4kAttentionParams& p, const char* shape, const char* name, double bytes,
                           const void* want) {
  using namespace l4k::decode;
  const Plan pl = plan(p.batch, p.n_heads, p.n_kv_heads, 128, p.max_q_len, p.max_blocks * p.block_size, p.chunk, g_sms);
  const size_t out_bytes = size_t(p.total_q) * p.n_heads * 128 * 2;
  CK(cudaMemsetAsync(p.out, 0xff, out_bytes, g_stream));
  CK(static_cast<cudaError_t>(launch_cfg<128, C>(p, pl, g_stream)));
  CK(cudaStreamSynchronize(g_stream));
  const bool ok = want == nullptr || same_bytes(p.out, want, out_bytes);
  const double us = time_us([&] { launch_cfg<128, C>(p, pl, g_stream); });
  char v[96];
  snprintf(v, sizeof v, "%s (%d splits)", name, pl.splits);
  report("decode", shape, v, us, bytes, ok);
}

static void decode_family() {
  using namespace l4k::decode;
  const int H = 40, KVH = 8, D = 128;
  struct Shape {
    int batch, len, bs;
  };
  for (Shape sh : {Shape{64, 8192, 64}, Shape{8, 32768, 64}, Shape{64, 8192, 256}, Shape{8, 32768, 256}}) {
    const int blocks_per = (sh.len + sh.bs - 1) / sh.bs, n_blocks = sh.batch * blocks_per;
    const int64_t slots = int64_t(n_blocks) * sh.bs;
    void* k = dalloc(slots * KVH * D * 2);
    void* v = dalloc(slots * KVH * D * 2);
    void* q = dalloc(size_t(sh.batch) * H * D * 2);
    fill_bf16(k, slots * KVH * D, 21);
    fill_bf16(v, slots * KVH * D, 22);
    fill_bf16(q, size_t(sh.batch) * H * D, 23);
    std::vector<int> ids(n_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), std::mt19937(4));
    std::vector<int> lens(sh.batch, sh.len), cu(sh.batch + 1);
    std::iota(cu.begin(), cu.end(), 0);
    int* d_table = static_cast<int*>(dalloc(n_blocks * 4));
    int* d_lens = static_cast<int*>(dalloc(sh.batch * 4));
    int* d_cu = static_cast<int*>(dalloc((sh.batch + 1) * 4));
    CK(cudaMemcpy(d_table, ids.data(), n_blocks * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_lens, lens.data(), sh.batch * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_cu, cu.data(), (sh.batch + 1) * 4, cudaMemcpyHostToDevice));
    const size_t out_bytes = size_t(sh.batch) * H * D * 2;
    void* out = dalloc(out_bytes);
    void* out_ref = dalloc(out_bytes);
    L4kAttentionParams p{};
    p.q = q;
    p.k_cache = k;
    p.v_cache = v;
    p.cu_seqlens_q = d_cu;
    p.seq_lens_k = d_lens;
    p.block_table = d_table;
    p.total_q = sh.batch;
    p.slots = slots;
    p.batch = sh.batch;
    p.max_blocks = blocks_per;
    p.block_size = sh.bs;
    p.n_heads = H;
    p.n_kv_heads = KVH;
    p.head_dim = D;
    p.chunk = 0;
    p.max_q_len = 1;
    p.softmax_scale = 1.f / sqrtf(float(D));
    const size_t ws = plan(sh.batch, H, KVH, D, 1, blocks_per * sh.bs, 0, g_sms).ws.total;
    p.workspace = ws ? dalloc(ws) : nullptr;
    p.workspace_bytes = int64_t(ws);
    const double bytes = 2.0 * sh.batch * sh.len * KVH * D * 2 + 2.0 * sh.batch * H * D * 2;
    char shape[64];
    snprintf(shape, sizeof shape, "b%d x %d, 40/8x128, bs %d", sh.batch, sh.len, sh.bs);
    p.out = out_ref;
    decode_variant<Pipeline>(p, shape, "shipped cp.async 4w 3st 2cta, no hint", bytes, nullptr);
    p.out = out;
    decode_variant<Cfg<4, 3, 2, true>>(p, shape, "cp.async 4w 3st 2cta, L2::256B hint", bytes, out_ref);
    decode_variant<Cfg<8, 3, 1, true>>(p, shape, "cp.async 8w 3st 1cta", bytes, out_ref);
    decode_variant<Cfg<8, 2, 1, true>>(p, shape, "cp.async 8w 2st 1cta", bytes, out_ref);
    decode_variant<Cfg<2, 4, 3, true>>(p, shape, "cp.async 2w 4st 3cta", bytes, out_ref);
    decode_variant<Cfg<4, 2, 3, true>>(p, shape, "cp.async 4w 2st 3cta", bytes, out_ref);
    CK(cudaFree(k));
    CK(cudaFree(v));
    CK(cudaFree(q));
    CK(cudaFree(d_table));
    CK(cudaFree(d_lens));
    CK(cudaFree(d_cu));
    CK(cudaFree(out));
    CK(cudaFree(out_ref));
    if (p.workspace) CK(cudaFree(p.workspace));
  }
}

int main(int argc, char** argv) {
  std::vector<std::string> want(argv + 1, argv + argc);
  auto on = [&](const char* f) { return want.empty() || std::find(want.begin(), want.end(), f) != want.end(); };
  CK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  g_sms = prop.multiProcessorCount;
  printf("device: %s, %d SMs, L2 %d MB\n", prop.name, g_sms, prop.l2CacheSize >> 20);
  ceilings();
  if (on("permute") || on("unpermute")) permute_family(on("permute"), on("unpermute"));
  if (on("weight_prep")) prep_family();
  if (on("decode")) decode_family();
  ceilings();
  return 0;
}
