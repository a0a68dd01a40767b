// A timing of kernels/attention_decode.cu (or of another version, -DL4K_DECODE_SRC='"path"') on the shapes its
// NOTES.md table judges, through the launcher's C entry point (every version has it): Llama 4's 40 / 8 heads,
// head_dim 128, one query a sequence, 256-slot blocks in a shuffled table, causal (and one chunked case). Each
// binary times its own build; outputs are hashed so two versions can be checked to compute the same bits.
// scripts/attention-ab.sh builds it twice and runs both in one GPU command:
//   nvcc -std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -cudart static \
//     -Ikernels -Iinclude bench/experiments/attention_decode_probe.cu -o /tmp/decode_probe
#ifdef L4K_DECODE_SRC
#include L4K_DECODE_SRC
#else
#include "../../kernels/attention_decode.cu"
#endif

#include <algorithm>
#include <cmath>
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

constexpr int kHeads = 40, kKvHeads = 8, kD = 128, kBlock = 256;

static void run_case(int batch, int seq_len, int chunk) {
  std::mt19937 rng(batch * 7919 + seq_len + chunk);
  uint32_t state = 12345u + seq_len;
  auto uniform = [&] {
    state = state * 1664525u + 1013904223u;
    return ((state >> 8) * (1.f / 16777216.f)) * 4.f - 2.f;
  };
  const int blocks_per_seq = (seq_len + kBlock - 1) / kBlock;
  const int n_blocks = batch * blocks_per_seq;
  const size_t slots = size_t(n_blocks) * kBlock;
  const size_t nq = size_t(batch) * kHeads * kD, nkv = slots * kKvHeads * kD;
  std::vector<__nv_bfloat16> hq(nq), hkv(nkv);
  for (auto& x : hq) x = __float2bfloat16(uniform());
  for (auto& x : hkv) x = __float2bfloat16(uniform());
  std::vector<int> table(n_blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  std::vector<int> cu(batch + 1), lens(batch, seq_len);
  for (int b = 0; b <= batch; ++b) cu[b] = b;
  // The most workspace any split count (at most 64) can ask for: every version sizes within it.
  const size_t rows = size_t(64) * batch * kHeads;
  const size_t ws_bytes = rows * kD * 4 + rows * 4 + size_t(64) * batch * kKvHeads * 4 + 4096;
  void *q, *k, *v, *o, *ws;
  int *dcu, *dlen, *dtab;
  CHECK(cudaMalloc(&q, nq * 2));
  CHECK(cudaMalloc(&o, nq * 2));
  CHECK(cudaMalloc(&k, nkv * 2));
  CHECK(cudaMalloc(&v, nkv * 2));
  CHECK(cudaMalloc(&ws, ws_bytes));
  CHECK(cudaMalloc(&dcu, (batch + 1) * 4));
  CHECK(cudaMalloc(&dlen, batch * 4));
  CHECK(cudaMalloc(&dtab, n_blocks * 4));
  CHECK(cudaMemcpy(q, hq.data(), nq * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(k, hkv.data(), nkv * 2, cudaMemcpyHostToDevice));
  std::reverse(hkv.begin(), hkv.end());
  CHECK(cudaMemcpy(v, hkv.data(), nkv * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dcu, cu.data(), (batch + 1) * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dlen, lens.data(), batch * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dtab, table.data(), n_blocks * 4, cudaMemcpyHostToDevice));
  L4kAttentionParams p{};
  p.q = q, p.k_cache = k, p.v_cache = v, p.cu_seqlens_q = dcu, p.seq_lens_k = dlen, p.block_table = dtab, p.out = o;
  p.workspace = ws, p.workspace_bytes = int64_t(ws_bytes);
  p.total_q = batch, p.slots = int64_t(slots), p.batch = batch, p.max_blocks = blocks_per_seq, p.block_size = kBlock;
  p.n_heads = kHeads, p.n_kv_heads = kKvHeads, p.head_dim = kD, p.chunk = chunk, p.max_q_len = 1;
  p.softmax_scale = 1.f / std::sqrt(float(kD));
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  auto launch = [&] {
    const int rc = l4k_launch_attention_decode(&p, s);
    if (rc != 0) {
      std::printf("launch failed: %d\n", rc);
      std::exit(1);
    }
  };
  CHECK(cudaMemset(o, 0xff, nq * 2));  // NaN poison
  for (int i = 0; i < 3; ++i) launch();
  CHECK(cudaStreamSynchronize(s));
  std::vector<uint16_t> ho(nq);
  CHECK(cudaMemcpy(ho.data(), o, nq * 2, cudaMemcpyDeviceToHost));
  uint64_t hash = 1469598103934665603ull;
  size_t nan = 0;
  for (uint16_t x : ho) {
    hash = (hash ^ x) * 1099511628211ull;
    nan += (x & 0x7f80) == 0x7f80 && (x & 0x7f);
  }
  const int range = chunk > 0 ? std::min(seq_len, chunk) : seq_len;  // keys the one query reads (at most)
  const double bytes = double(batch) * range * kKvHeads * kD * 2 * 2 + 2.0 * nq * 2;
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  std::vector<float> t;
  for (int r = 0; r < 21; ++r) {
    CHECK(cudaEventRecord(a, s));
    for (int i = 0; i < 10; ++i) launch();
    CHECK(cudaEventRecord(b, s));
    CHECK(cudaEventSynchronize(b));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1e3f / 10);
  }
  std::sort(t.begin(), t.end());
  std::printf("decode b%d S%d C%d: median %.1f us (%.0f GB/s), min %.1f, max %.1f; hash %016llx, NaN %zu\n", batch,
              seq_len, chunk, t[t.size() / 2], bytes / t[t.size() / 2] / 1e3, t.front(), t.back(),
              (unsigned long long)hash, nan);
  for (void* x : {q, k, v, o, ws, static_cast<void*>(dcu), static_cast<void*>(dlen), static_cast<void*>(dtab)})
    CHECK(cudaFree(x));
  CHECK(cudaStreamDestroy(s));
}

int main() {
  run_case(64, 8192, 0);
  run_case(8, 32768, 0);
  run_case(64, 1024, 0);
  run_case(8, 32768, 8192);
  return 0;
}
