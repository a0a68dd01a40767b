// Paged decode attention's TMA main loop (kernels/attention_decode/tma.cuh) at other depths, occupancies and L2
// promotions, against the launcher's choice and the library's cp.async loop, in one process, every output checked
// against the launcher's (issue 16, deliverable 2; kernels/NOTES.md, attention_decode, "On the H200").
//
//   nvcc -std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a \
//        -Ikernels -Iinclude bench/experiments/attention_decode_tma.cu -o /tmp/decode_tma && /tmp/decode_tma
//
// Needs only nvcc and the driver (cuTensorMapEncodeTiled through cudaGetDriverEntryPointByVersion: no -lcuda).
// Runs in about 10-20 s. Every setup runs in its own child process; a variant that faults or stalls for 60 s is
// printed as CRASHED and the run goes on with the next one in a fresh process. Prints:
//  1. correctness-only cases (ragged lengths, partial last tiles whose past-the-end slots hold NaN, q_len 3 with a
//     chunked mask): one line per variant, "bits identical" or the max abs diff / rel L2 against the shipped output;
//  2. per timed shape (b64 x 8192 and b8 x 32768, 40/8 heads of 128, block size 64 and 256) one row per variant:
//     median us of 25 event-timed calls after 5 warm-up ones, GB/s (K and V once + q + out, as the shipped bench
//     counts), % of the copy ceiling and of a read-only kernel measured in the same run, and the check (a WRONG
//     variant is printed without a time);
//  3. one sequence of 1024, 8192 and 32768 keys (block size 64), every variant at a range of split counts, with
//     256 MB read before each timed call (the whole cache would otherwise sit in L2, as it never does in a model).
// `decode_tma b1 [len]` runs only section 3 (at one length when given).
// PyTorch SDPA is not run here (no torch in the binary): bench/peers/torch_attention_decode.py in the same command.
//
// Every variant runs the library's math on the launcher's split plan, so its output must be the launcher's bit for
// bit ("bits identical"). Rows marked "replanned" use the split count flash-decoding's rule picks for their own CTAs
// per SM: different split boundaries round differently, so they are checked against a 5e-3 rel L2 tolerance
// (kReplannedTol).
//
// Variants:
//  shipped            l4k_launch_attention_decode (the TMA loop at h2 s3 1cta for these layouts): the reference.
//  library cp.async   l4k::decode::launch_cp_async (4 warps, 3 cp.async stages, 2 CTAs/SM), the path for layouts TMA
//                     cannot serve, on the same plan.
//  tma hH sS cC       decode_tma_kernel<128, H, S, C>: H KV heads per CTA (4 warps per head), S stages, registers
//                     budgeted for C CTAs per SM (the count printed is the occupancy measured). promo: the maps'
//                     L2 promotion (none, as shipped / 128B / 256B, as the prefill's maps).
// Session 10's version of this file also built its own copy of the loop and a "perm" variant (one box for both heads
// of a CTA, a (d, slot, head) map): git history and NOTES.md have it and its figures.
#include <cuda.h>
#include <cudaTypedefs.h>

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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
#include "../../kernels/ptx.cuh"

#define CK(x)                                                                            \
  do {                                                                                   \
    cudaError_t e_ = (x);                                                                \
    if (e_ != cudaSuccess) {                                                             \
      fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      exit(1);                                                                           \
    }                                                                                    \
  } while (0)

namespace dtma {

using namespace l4k::decode;
constexpr int D = 128;

// One variant: the library's TMA loop (kernels/attention_decode/tma.cuh) at another depth / occupancy / L2
// promotion, the maps encoded by the library's own rule, then the library's combine kernel when split.
template <int HEADS, int STAGES, int MIN_CTAS>
struct Variant {
  static constexpr auto kernel = decode_tma_kernel<D, HEADS, STAGES, MIN_CTAS>;
  static constexpr size_t smem = tma::smem_bytes<D, HEADS, STAGES>();
  static bool layout_ok(const L4kAttentionParams& p) {
    return p.head_dim == D && p.block_size % 64 == 0 && p.chunk % 64 == 0 && p.slots > 0 && p.slots <= INT32_MAX &&
           p.n_kv_heads % HEADS == 0;
  }
  CUtensorMap tm_k, tm_v;
  bool ok = false;
  Variant(const L4kAttentionParams& p, CUtensorMapL2promotion promo) {
    ok = layout_ok(p) && l4k::paged_kv::key_tile_path(p, &tm_k, &tm_v, promo) == L4K_PREFILL_PATH_TMA;
    if (ok) CK(set_smem(kernel, smem));
  }
  static int occupancy() {
    int n = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, tma::kThreads<HEADS>, smem));
    return n;
  }
  void launch(const L4kAttentionParams& p, int splits, int n_rt, const Layout& ws, cudaStream_t s) const {
    const int64_t ctas = int64_t(p.batch) * (p.n_kv_heads / HEADS) * n_rt * splits;
    kernel<<<unsigned(ctas), tma::kThreads<HEADS>, smem, s>>>(p, tm_k, tm_v, splits, n_rt, ws);
    if (splits > 1) {
      const int64_t rows = int64_t(p.batch) * p.max_q_len * p.n_heads;
      combine_kernel<D><<<unsigned((rows + kCombineWarps - 1) / kCombineWarps), kCombineWarps * 32, 0, s>>>(
          p, splits, n_rt, kTileKeys, ws);
    }
  }
};

}  // namespace dtma

// ---- harness -------------------------------------------------------------------------------------------
//
// Isolation: the parent process never touches CUDA. Each setup (a check case or a timed shape) runs in a forked
// child that builds the inputs and the shipped reference, then runs the variants in order, publishing the index of
// the one running in shared memory. A child that dies (a CUDA error, a trap from the bounded mbarrier wait) or stalls
// (one variant > 60 s) costs that variant: the parent prints it as CRASHED and starts a fresh child at the next one.

static cudaStream_t g_stream;
static int g_sms;
static double g_copy_gbps, g_read_gbps;

struct Shared {
  volatile int current;
  volatile long long started_ms;
  volatile double copy_gbps, read_gbps;
  char name[160];
};
static Shared* g_sh;

static long long now_ms() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
}

// Set for the one-sequence shapes, whose whole cache fits in L2: each timed call then starts from an L2 holding
// other data (a read kernel over 256 MB first), as a model layer's attention does.
static void* g_flush_buf = nullptr;
static uint32_t* g_flush_sink = nullptr;
static constexpr size_t kFlushBytes = size_t(256) << 20;
__global__ void read_kernel(const uint4* p, size_t n, uint32_t* sink);

static double time_us(const std::function<void()>& fn, int warm = 5, int reps = 25) {
  for (int i = 0; i < warm; ++i) fn();
  CK(cudaStreamSynchronize(g_stream));
  CK(cudaGetLastError());
  std::vector<double> t;
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < reps; ++i) {
    if (g_flush_buf != nullptr)
      read_kernel<<<g_sms * 8, 512, 0, g_stream>>>(static_cast<const uint4*>(g_flush_buf), kFlushBytes / 16,
                                                   g_flush_sink);
    CK(cudaEventRecord(a, g_stream));
    fn();
    CK(cudaEventRecord(b, g_stream));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1e3);
  }
  CK(cudaGetLastError());
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

static void* dalloc(size_t bytes) {
  void* p;
  CK(cudaMalloc(&p, bytes));
  return p;
}

__global__ void fill_kernel(uint16_t* w, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ uint32_t(i >> 32) * 40503u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13, h *= 3266489917u, h ^= h >> 16;
    w[i] = __bfloat16_as_ushort(__float2bfloat16_rn((h >> 8) * (4.f / 16777216.f) - 2.f));
  }
}
static void fill(void* p, size_t n, uint32_t seed) {
  fill_kernel<<<g_sms * 16, 256, 0, g_stream>>>(static_cast<uint16_t*>(p), n, seed);
}

// Every element of rows `slots[i]` ([slot][kv_heads * D] bf16) set to NaN: cache slots no query may see.
__global__ void poison_kernel(uint16_t* k, uint16_t* v, const int64_t* slots, int n, int row_elems) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < int64_t(n) * row_elems;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t off = slots[i / row_elems] * row_elems + i % row_elems;
    k[off] = 0x7FC0;
    v[off] = 0x7FC0;
  }
}

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
    const double r =
        time_us([&] { read_kernel<<<g_sms * per_sm, 512, 0, g_stream>>>(static_cast<uint4*>(a), bytes / 16, sink); }, 3, 15);
    best = std::max(best, bytes / r / 1e3);
  }
  g_read_gbps = best;
  printf("ceilings: copy %.0f GB/s (2 GiB cudaMemcpy, read + write), read-only kernel %.0f GB/s\n", g_copy_gbps,
         g_read_gbps);
  CK(cudaFree(a));
  CK(cudaFree(b));
  CK(cudaFree(sink));
}

static float bf(uint16_t x) {
  uint32_t u = uint32_t(x) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// One test setup: caches, queries, table, lengths; the shipped output as reference.
struct Setup {
  L4kAttentionParams p{};
  std::vector<void*> bufs;
  void* out_ref = nullptr;
  size_t out_elems = 0;
  double bytes = 0;  // K and V once (the keys each sequence reads) + q + out
  std::string name;
  std::vector<uint16_t> ref;

  Setup(const char* nm, int batch, const std::vector<int>& lens, int q_len, int bs, int chunk, bool poison) {
    name = nm;
    const int H = 40, KVH = 8;
    const int max_len = *std::max_element(lens.begin(), lens.end());
    const int blocks_per = (max_len + bs - 1) / bs, n_blocks = batch * blocks_per;
    const int64_t slots = int64_t(n_blocks) * bs;
    void* k = alloc(size_t(slots) * KVH * dtma::D * 2);
    void* v = alloc(size_t(slots) * KVH * dtma::D * 2);
    const int total_q = batch * q_len;
    void* q = alloc(size_t(total_q) * H * dtma::D * 2);
    fill(k, size_t(slots) * KVH * dtma::D, 21);
    fill(v, size_t(slots) * KVH * dtma::D, 22);
    fill(q, size_t(total_q) * H * dtma::D, 23);
    std::vector<int> ids(n_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), std::mt19937(4));
    std::vector<int> cu(batch + 1);
    for (int i = 0; i <= batch; ++i) cu[i] = i * q_len;
    int* d_table = static_cast<int*>(alloc(size_t(n_blocks) * 4));
    int* d_lens = static_cast<int*>(alloc(size_t(batch) * 4));
    int* d_cu = static_cast<int*>(alloc(size_t(batch + 1) * 4));
    CK(cudaMemcpy(d_table, ids.data(), size_t(n_blocks) * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_lens, lens.data(), size_t(batch) * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_cu, cu.data(), size_t(batch + 1) * 4, cudaMemcpyHostToDevice));
    if (poison) {
      // Slots past each sequence's end in its last block hold NaN: a kernel that uses them (instead of zeros) shows.
      std::vector<int64_t> bad;
      for (int b = 0; b < batch; ++b)
        for (int pos = lens[b]; pos < (lens[b] + bs - 1) / bs * bs; ++pos)
          bad.push_back(int64_t(ids[b * blocks_per + pos / bs]) * bs + pos % bs);
      if (!bad.empty()) {
        int64_t* d_bad = static_cast<int64_t*>(alloc(bad.size() * 8));
        CK(cudaMemcpy(d_bad, bad.data(), bad.size() * 8, cudaMemcpyHostToDevice));
        poison_kernel<<<g_sms * 4, 256, 0, g_stream>>>(static_cast<uint16_t*>(k), static_cast<uint16_t*>(v), d_bad,
                                                        int(bad.size()), KVH * dtma::D);
      }
    }
    out_elems = size_t(total_q) * H * dtma::D;
    p.out = alloc(out_elems * 2);
    out_ref = alloc(out_elems * 2);
    p.q = q, p.k_cache = k, p.v_cache = v, p.cu_seqlens_q = d_cu, p.seq_lens_k = d_lens, p.block_table = d_table;
    p.total_q = total_q, p.slots = slots, p.batch = batch, p.max_blocks = blocks_per, p.block_size = bs;
    p.n_heads = H, p.n_kv_heads = KVH, p.head_dim = dtma::D, p.chunk = chunk, p.max_q_len = q_len;
    p.softmax_scale = 1.f / sqrtf(float(dtma::D));
    // The largest workspace any split count (<= 64) asks for.
    const int rt = l4k::decode::row_tiles(H / KVH, q_len);
    const auto lay = l4k::decode::layout(l4k::decode::kMaxSplits, batch, q_len, H, KVH, rt, dtma::D);
    p.workspace = alloc(size_t(lay.total));
    p.workspace_bytes = lay.total;
    double keys = 0;
    for (int b = 0; b < batch; ++b) {
      const auto r = l4k::paged_kv::sequence_key_range(lens[b], q_len, chunk);
      keys += r.hi - r.lo;
    }
    bytes = 2.0 * keys * KVH * dtma::D * 2 + 2.0 * out_elems * 2;
    // Reference: the shipped launcher.
    L4kAttentionParams r = p;
    r.out = out_ref;
    CK(cudaMemsetAsync(out_ref, 0xff, out_elems * 2, g_stream));
    CK(static_cast<cudaError_t>(l4k_launch_attention_decode(&r, g_stream)));
    CK(cudaStreamSynchronize(g_stream));
    ref.resize(out_elems);
    CK(cudaMemcpy(ref.data(), out_ref, out_elems * 2, cudaMemcpyDeviceToHost));
    size_t nan = 0;
    for (uint16_t x : ref) nan += (x & 0x7f80) == 0x7f80;
    if (nan) printf("%s: the shipped output has %zu non-finite values\n", nm, nan);
  }
  void* alloc(size_t bytes) {
    void* x = dalloc(bytes);
    bufs.push_back(x);
    return x;
  }
  ~Setup() {
    for (void* x : bufs) cudaFree(x);
  }
  l4k::decode::Plan shipped_plan() const {
    return l4k::decode::plan(p.batch, p.n_heads, p.n_kv_heads, dtma::D, p.max_q_len, p.max_blocks * p.block_size,
                             p.chunk, g_sms);
  }
  // "bits identical", or the distance to the shipped output; *ok: within `tol` rel L2 (0: identical bits only).
  std::string compare(double tol, bool* ok) const {
    std::vector<uint16_t> got(out_elems);
    CK(cudaMemcpy(got.data(), p.out, out_elems * 2, cudaMemcpyDeviceToHost));
    size_t diff = 0, nonfinite = 0;
    double max_abs = 0, num = 0, den = 0;
    for (size_t i = 0; i < out_elems; ++i) {
      if ((got[i] & 0x7f80) == 0x7f80) ++nonfinite;
      if (got[i] != ref[i]) ++diff;
      const double a = bf(got[i]), b = bf(ref[i]);
      max_abs = std::max(max_abs, std::fabs(a - b));
      num += (a - b) * (a - b);
      den += b * b;
    }
    const double rel = std::sqrt(num / std::max(den, 1e-30));
    char buf[160];
    if (diff == 0) {
      *ok = true;
      return "bits identical";
    }
    *ok = nonfinite == 0 && tol > 0 && rel <= tol;
    snprintf(buf, sizeof buf, "%s: %zu of %zu differ, max abs %.3g, rel L2 %.3g%s",
             *ok ? "OK within tolerance" : "WRONG",
             diff, out_elems, max_abs, rel, nonfinite ? ", non-finite values" : "");
    return buf;
  }
};

static void print_row(const Setup& st, const std::string& variant, double us, const std::string& check) {
  const double gbps = st.bytes / us / 1e3;
  printf("%-30s %-44s %8.1f us %6.0f GB/s %5.1f%% copy %5.1f%% read  %s\n", st.name.c_str(), variant.c_str(), us, gbps,
         100 * gbps / g_copy_gbps, 100 * gbps / g_read_gbps, check.c_str());
  fflush(stdout);
}

// Another split count rounds differently: bf16 outputs of a few thousand elements (one sequence) move by about one
// rounding step of 2^-9 relative in a third of them.
constexpr double kReplannedTol = 5e-3;

// One variant on one setup: the shipped plan's splits (must give identical bits) and, when timed and its own
// CTAs per SM make flash-decoding's rule pick another count, the replanned splits (tolerance check).
template <int HEADS, int STAGES, int MIN_CTAS>
static void variant(Setup& st, bool timed, CUtensorMapL2promotion promo = CU_TENSOR_MAP_L2_PROMOTION_NONE,
                    bool replan = false, const std::vector<int>& splits_list = {}) {
  using V = dtma::Variant<HEADS, STAGES, MIN_CTAS>;
  const char* promo_name = promo == CU_TENSOR_MAP_L2_PROMOTION_NONE   ? "none"
                           : promo == CU_TENSOR_MAP_L2_PROMOTION_L2_128B ? "128B"
                                                                         : "256B";
  V v(st.p, promo);  // sets the kernel's shared-memory attributes: occupancy after it
  const int occ = v.ok ? V::occupancy() : 0;
  char name[128];
  snprintf(name, sizeof name, "tma h%d s%d %dcta promo %s", HEADS, STAGES, occ, promo_name);
  if (!v.ok) {
    printf("%-30s %-44s skipped (layout or tensor map refused)\n", st.name.c_str(), name);
    return;
  }
  const auto pl = st.shipped_plan();
  auto run = [&](int splits) {
    snprintf(g_sh->name, sizeof g_sh->name, "%s, %d splits", name, splits);
    const auto lay = l4k::decode::layout(splits, st.p.batch, st.p.max_q_len, st.p.n_heads, st.p.n_kv_heads,
                                         pl.row_tiles, dtma::D);
    CK(cudaMemsetAsync(st.p.out, 0xff, st.out_elems * 2, g_stream));
    v.launch(st.p, splits, pl.row_tiles, lay, g_stream);
    CK(cudaStreamSynchronize(g_stream));
    CK(cudaGetLastError());
    bool ok;
    const std::string check = st.compare(splits == pl.splits ? 0.0 : kReplannedTol, &ok);
    char nm[160];
    snprintf(nm, sizeof nm, "%s, %d split%s%s", name, splits, splits > 1 ? "s" : "",
             splits == pl.splits ? "" : " replanned");
    if (!timed || !ok) {  // a wrong variant is not timed
      printf("%-30s %-44s %s%s\n", st.name.c_str(), nm, check.c_str(), timed ? ": not timed" : "");
      fflush(stdout);
      return;
    }
    const double us = time_us([&] { v.launch(st.p, splits, pl.row_tiles, lay, g_stream); });
    print_row(st, nm, us, check);
  };
  if (!splits_list.empty()) {
    for (int sp : splits_list) run(sp);
    return;
  }
  run(pl.splits);
  if (replan) {
    const int64_t base = int64_t(st.p.batch) * (st.p.n_kv_heads / HEADS) * pl.row_tiles;
    const int s2 = l4k::decode::choose_splits(
        base, l4k::decode::max_range(st.p.max_blocks * st.p.block_size, st.p.chunk, st.p.max_q_len), g_sms,
        dtma::kTileKeys, occ > 0 ? occ : 1);
    if (s2 != pl.splits) run(s2);
  }
}

// The variants of one setup, in a fixed order (the restart index refers to it).
static std::vector<std::function<void()>> variants_of(Setup& st, bool timed) {
  using namespace dtma;
  std::vector<std::function<void()>> v;
  if (timed)
    v.push_back([&st] {
      snprintf(g_sh->name, sizeof g_sh->name, "shipped");
      const double us = time_us([&] { l4k_launch_attention_decode(&st.p, g_stream); });
      char nm[96];
      snprintf(nm, sizeof nm, "shipped (the launcher's path), %d split%s", st.shipped_plan().splits,
               st.shipped_plan().splits > 1 ? "s" : "");
      print_row(st, nm, us, "reference");
    });
  // The library's cp.async loop (the path for layouts TMA cannot serve), on the same plan: must give the same bits.
  v.push_back([&st, timed] {
    snprintf(g_sh->name, sizeof g_sh->name, "cp.async loop");
    const auto pl = st.shipped_plan();
    CK(cudaMemsetAsync(st.p.out, 0xff, st.out_elems * 2, g_stream));
    CK(static_cast<cudaError_t>(l4k::decode::launch_cp_async<128>(st.p, pl, g_stream)));
    CK(cudaStreamSynchronize(g_stream));
    bool ok;
    const std::string check = st.compare(0.0, &ok);
    if (!timed || !ok) {
      printf("%-30s %-44s %s\n", st.name.c_str(), "library cp.async loop 4w 3st 2cta", check.c_str());
      return;
    }
    const double us = time_us([&] { l4k::decode::launch_cp_async<128>(st.p, pl, g_stream); });
    print_row(st, "library cp.async loop 4w 3st 2cta", us, check);
  });
  constexpr auto kNone = CU_TENSOR_MAP_L2_PROMOTION_NONE;
  v.push_back([&st, timed] { variant<1, 3, 2>(st, timed, kNone); });
  if (timed) {
    v.push_back([&st, timed] { variant<1, 3, 2>(st, timed, CU_TENSOR_MAP_L2_PROMOTION_L2_128B); });
    v.push_back([&st, timed] { variant<1, 3, 2>(st, timed, CU_TENSOR_MAP_L2_PROMOTION_L2_256B); });
  }
  v.push_back([&st, timed] { variant<1, 2, 3>(st, timed, kNone, true); });
  v.push_back([&st, timed] { variant<1, 4, 1>(st, timed, kNone, true); });
  v.push_back([&st, timed] { variant<2, 3, 1>(st, timed, kNone, true); });
  v.push_back([&st, timed] { variant<2, 2, 1>(st, timed, kNone, true); });
  return v;
}

// One sequence (the batch-1 decode step): the split count is the whole question there, so each variant runs at
// a range of them. (Session 14 also ran session 13's combine kernel here beside the shipped one: commit e0f1046's
// version of this file, figures in kernels/NOTES.md.)
static std::vector<std::function<void()>> variants_one_seq(Setup& st) {
  using namespace dtma;
  constexpr auto kNone = CU_TENSOR_MAP_L2_PROMOTION_NONE;
  std::vector<std::function<void()>> v;
  v.push_back([&st] {
    snprintf(g_sh->name, sizeof g_sh->name, "shipped");
    const double us = time_us([&] { l4k_launch_attention_decode(&st.p, g_stream); });
    char nm[96];
    snprintf(nm, sizeof nm, "shipped (the launcher's path), %d splits", st.shipped_plan().splits);
    print_row(st, nm, us, "reference");
  });
  v.push_back([&st] { variant<2, 3, 1>(st, true, kNone, false, {8, 12, 16, 20, 24, 28, 32, 33, 40, 48, 64}); });
  v.push_back([&st] { variant<1, 3, 2>(st, true, kNone, false, {16, 24, 32, 33, 40, 48, 64}); });
  v.push_back([&st] { variant<1, 2, 3>(st, true, kNone, false, {33, 44, 48, 64}); });
  return v;
}

struct Case {
  std::string name;
  int batch;
  std::vector<int> lens;
  int q_len, bs, chunk;
  bool poison, timed;
  bool one_seq = false;  // variants_one_seq, L2 flushed before each timed call
};

static bool in_child(const std::function<void()>& body) {
  fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) {
    body();
    fflush(stdout);
    _exit(0);
  }
  int status = 0;
  for (;;) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (now_ms() - g_sh->started_ms > 60000) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      printf("    (killed: no progress for 60 s)\n");
      return false;
    }
    usleep(20000);
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static void cuda_init() {
  CK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  g_sms = prop.multiProcessorCount;
  g_copy_gbps = g_sh->copy_gbps;
  g_read_gbps = g_sh->read_gbps;
}

static void run_case(const Case& c) {
  int start = 0;
  for (;;) {
    g_sh->current = -1;
    g_sh->started_ms = now_ms();
    g_sh->name[0] = 0;
    const bool ok = in_child([&] {
      cuda_init();
      Setup st(c.name.c_str(), c.batch, c.lens, c.q_len, c.bs, c.chunk, c.poison);
      if (c.one_seq) {
        g_flush_buf = st.alloc(kFlushBytes);
        g_flush_sink = static_cast<uint32_t*>(st.alloc(4));
        CK(cudaMemset(g_flush_buf, 1, kFlushBytes));
      }
      auto v = c.one_seq ? variants_one_seq(st) : variants_of(st, c.timed);
      for (int i = start; i < int(v.size()); ++i) {
        g_sh->current = i;
        g_sh->started_ms = now_ms();
        v[i]();
      }
      g_sh->current = int(v.size());
    });
    if (ok) return;
    if (g_sh->current < 0) {
      printf("%-30s setup failed\n", c.name.c_str());
      return;
    }
    printf("%-30s %-44s CRASHED (the child died or hung; next variant in a fresh process)\n", c.name.c_str(),
           const_cast<const char*>(g_sh->name));
    start = g_sh->current + 1;
  }
}

static void ceilings_child() {
  in_child([] {
    CK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    g_sms = prop.multiProcessorCount;
    ceilings();
    g_sh->copy_gbps = g_copy_gbps;
    g_sh->read_gbps = g_read_gbps;
  });
}

int main(int argc, char** argv) {
  // "b1 [len]": the one-sequence section only (at one cache length when given).
  const bool one_seq_only = argc > 1 && strcmp(argv[1], "b1") == 0;
  const int one_len = argc > 2 ? atoi(argv[2]) : 0;
  g_sh = static_cast<Shared*>(mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  memset(g_sh, 0, sizeof(Shared));
  g_sh->started_ms = now_ms();
  in_child([] {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  });
  ceilings_child();
  if (g_sh->copy_gbps <= 0) {
    printf("no ceilings measured: no usable GPU\n");
    return 1;
  }
  std::vector<Case> cases;
  // Correctness only: ragged lengths (partial last tiles, NaN past each end), split and unsplit plans, q_len 3
  // under a chunked mask. Every variant must give the shipped bits (replanned rows: within kReplannedTol rel L2).
  std::mt19937 rng(9);
  std::vector<int> lens(12);
  for (int& x : lens) x = 1 + int(rng() % 3000);
  lens[0] = 1, lens[1] = 64, lens[2] = 65;
  std::vector<int> lens3 = lens;
  for (int& x : lens3) x = std::max(x, 3) + 1500;
  std::vector<int> many(64);
  for (int& x : many) x = 2000 + int(rng() % 6000);
  for (int bs : {64, 256}) {
    cases.push_back({"check b12 ragged q1 bs" + std::to_string(bs), 12, lens, 1, bs, 0, true, false});
    cases.push_back({"check b12 ragged q3 chunk1024 bs" + std::to_string(bs), 12, lens3, 3, bs, 1024, true, false});
  }
  cases.push_back({"check b64 ragged q1 bs64", 64, many, 1, 64, 0, true, false});
  if (!one_seq_only)
    for (const Case& c : cases) run_case(c);

  printf("%-30s %-44s %11s %11s %10s %10s  %s\n", "shape", "variant", "median", "GB/s", "of copy", "of read", "check");
  for (int bs : {64, 256})
    for (auto bl : one_seq_only ? std::vector<std::pair<int, int>>{}
                                : std::vector<std::pair<int, int>>{{64, 8192}, {8, 32768}}) {
      char nm[64];
      snprintf(nm, sizeof nm, "b%d x %d, 40/8x128, bs %d", bl.first, bl.second, bs);
      run_case({nm, bl.first, std::vector<int>(bl.first, bl.second), 1, bs, 0, false, true});
    }
  for (int len : {1024, 8192, 32768}) {
    if (one_len > 0 && len != one_len) continue;
    char nm[64];
    snprintf(nm, sizeof nm, "b1 x %d, 40/8x128, bs 64, cold", len);
    run_case({nm, 1, {len}, 1, 64, 0, false, true, true});
  }
  ceilings_child();
  return 0;
}
