// Prefill attention over the paged KV cache (contract: kernels/attention_params.h; op: ops/attention_prefill.rs;
// reference: reference/src/attention.rs). One kernel serves a fresh prefill (q_len == seq_len_k) and a prefill
// that continues a cache (q_len < seq_len_k): query i of sequence b sits at position seq_len_k - q_len + i.
// kernels/NOTES.md (attention_prefill) has the history: v1 (mma.sync), v2 (wgmma, 2 CTAs / SM), v3 (FA3's
// intra-warpgroup overlap), v4 (warp specialization, cp.async), v4 TMA, v5 (persistent grid), all measured and
// retired; their code is in git history (commit 0bffbd8 and before).
//
// The kernel (namespace wgmma_ws has the details): FlashAttention-3's structure on Hopper: a producer warpgroup and
// two consumer warpgroups (setmaxnreg), mbarrier rings of 128-key tiles, FA3's intra-warpgroup overlap and
// inter-warpgroup ping-pong; whole key tiles by TMA when block_size and the chunk are multiples of 64, the rest
// (each sequence's partial last tile, other layouts) by the producer's cp.async; Q as register fragments (S by RS
// wgmma).
// - One CTA per (query head, 128-query tile, sequence). The grid walks each sequence's tiles last first (the causal
//   tiles with the most keys start first, short ones fill the tail) and puts the heads of one tile side by side,
//   so the heads of one KV group read the same K/V tiles from L2.
// - Q, K, V tiles in shared memory in the 128-byte-swizzled layout wgmma reads (64-element column blocks,
//   16-byte chunks XOR-ed with the row).
// - f32 online softmax in the log2 domain (scores * scale * log2 e, ex2.approx), P rounded to bf16 for the
//   second product, O normalised once at the end, bf16 out.
// - The key-tile loop bounds come from the mask (attention_key_range): a 128-query tile visits keys
//   [chunk start of its first query, its last query], so a chunked layer costs ~C/S of a causal one. Only the
//   tiles that straddle the diagonal, a chunk start or the sequence end evaluate the per-element mask.
// - Bad metadata (kernels/attention_params.h): every CTA of a sequence checks the sequence's scalars before
//   loading anything and every block id of the positions the sequence reads before any load addressed through
//   the table by cp.async (only the first key tile's TMA, which cannot read out of bounds, goes earlier); a bad
//   sequence's CTAs write nothing and its (head 0, tile 0) CTA bumps *bad_seqs.
// - CTA start and end (v6, measured by bench/experiments/attention_prefill_probe.cu): the checks and the first
//   loads are on every CTA's critical path, so the block-id check runs under the first K tile's TMA and each CTA
//   prefetches into L2 the Q tile of the CTA one wave ahead; O leaves through shared memory in whole rows.

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

#include "attention_params.h"
#include "common.cuh"

namespace l4k {
namespace attn_prefill {

// Phase timestamps for bench/experiments/attention_prefill_probe.cu (compiled with L4K_PREFILL_PROBE; nothing
// otherwise): per CTA, %globaltimer at the phase boundaries, slot 6 = (smid << 32) | key tiles.
#ifdef L4K_PREFILL_PROBE
constexpr int kProbeCtas = 16384;
__device__ unsigned long long g_prefill_probe[kProbeCtas * 8];
#define PREFILL_PROBE(i, cond)                                                                                  \
  do {                                                                                                         \
    const unsigned cta_ = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);                      \
    if ((cond) && cta_ < kProbeCtas) {                                                                         \
      unsigned long long t_;                                                                                   \
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_));                                                   \
      g_prefill_probe[cta_ * 8 + (i)] = t_;                                                                    \
    }                                                                                                          \
  } while (0)
#else
#define PREFILL_PROBE(i, cond) \
  do {                         \
  } while (0)
#endif

constexpr int kBlockM = 128;  // query rows per CTA
constexpr float kLog2e = 1.4426950408889634f;

// Keys [lo, hi) visible from the query positions [q_first, q_last] under mask `chunk` (0: causal): the union of
// each query's range [chunk start, q]. The same rule as llama4_reference::attention::key_range.
struct KeyRange {
  int lo, hi;
};
__device__ __forceinline__ int chunk_start(int pos, int chunk) { return chunk > 0 ? pos - pos % chunk : 0; }
__device__ __forceinline__ KeyRange attention_key_range(int q_first, int q_last, int chunk) {
  return KeyRange{chunk_start(q_first, chunk), q_last + 1};
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; src_bytes 0 writes zeros (rows past the end).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Cache slot of key position pos through the block table. shift = log2(block_size) when that is a power of two
// (the usual 16 .. 256: shifts instead of two integer divisions per row per tile), else -1.
__device__ __forceinline__ int block_shift(int bs) { return (bs & (bs - 1)) == 0 ? __ffs(bs) - 1 : -1; }
__device__ __forceinline__ int slot_of(const int32_t* table, int pos, int bs, int shift) {
  return shift >= 0 ? (table[pos >> shift] << shift) + (pos & (bs - 1)) : table[pos / bs] * bs + pos % bs;
}

// This thread's share of the sequence checks: the sequence's scalars and, when they hold, block ids first + tid,
// first + tid + nthreads, ... of the positions [lo, seq_len_k) it reads.
__device__ bool sequence_is_bad_part(const L4kAttentionParams& p, int b, int q_begin, int q_len, int seq_len, int tid,
                                     int nthreads) {
  const int64_t q_end = static_cast<int64_t>(q_begin) + q_len;
  bool bad = q_begin < 0 || q_len < 0 || q_end > p.total_q || q_len > p.max_q_len || q_len > seq_len ||
             static_cast<int64_t>(seq_len) > static_cast<int64_t>(p.max_blocks) * p.block_size;
  if (!bad && q_len > 0 && nthreads > 0) {
    const int lo = chunk_start(seq_len - q_len, p.chunk);
    const int first = lo / p.block_size, last = (seq_len - 1) / p.block_size;
    const int64_t n_blocks = p.slots / p.block_size;
    const int32_t* table = p.block_table + static_cast<int64_t>(b) * p.max_blocks;
    for (int i = first + tid; i <= last; i += nthreads) {
      const int32_t id = table[i];
      bad |= id < 0 || id >= n_blocks;
    }
  }
  return bad;
}

// The sequence's scalars and every block id of the positions it reads. Block-wide: every thread gets the same answer.
__device__ bool sequence_is_bad(const L4kAttentionParams& p, int b, int q_begin, int q_len, int seq_len) {
  return __syncthreads_or(sequence_is_bad_part(p, b, q_begin, q_len, seq_len, threadIdx.x, blockDim.x)) != 0;
}

// Shared-memory tiles and wgmma.

// Element offset of 16-byte chunk c (0 .. D / 8) of row r in a swizzled [R, D] tile.
template <int R>
__device__ __forceinline__ int swz(int r, int c) {
  return (c >> 3) * (R * 64) + r * 64 + (((c & 7) ^ (r & 7)) << 3);
}

// wgmma shared-memory descriptor, 128-byte swizzle, without its start address (bits 0-13, in 16-byte units):
// leading and stride byte offsets (>> 4) and the swizzle mode.
__device__ __forceinline__ uint64_t gmma_desc_hi(uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return (static_cast<uint64_t>(lbo_bytes >> 4) << 16) | (static_cast<uint64_t>(sbo_bytes >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Makes this thread's generic-proxy shared writes (cp.async) visible to wgmma's async proxy.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// D (64 x 64 f32, 32 a thread) += A (registers) * B (smem desc, MN-major).
__device__ __forceinline__ void wgmma_rs_n64(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "
      "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}
// D (64 x 128 f32, 64 a thread) += A (registers) * B (smem desc, MN-major).
__device__ __forceinline__ void wgmma_rs_n128(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "
      "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, "
      "%41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, "
      "%61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}

// ldmatrix x4: four 8 x 8 b16 matrices (the A fragment of an m16k16 per warp).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void wgmma_wait_1() { asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory"); }

// Keeps the compiler from moving accumulator registers across an asynchronous wgmma's issue and wait.
template <int N>
__device__ __forceinline__ void pin(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// FlashAttention-3's warp specialization:
// - 384 threads: warpgroup 0 is the producer (setmaxnreg down to 56 registers), warpgroups 1 and 2 the
//   consumers (setmaxnreg up to 224), 64 query rows each of the CTA's 128-query tile; one CTA per SM.
// - The producer streams Q once and then K_0, K_1, V_0, K_2, V_1, ... (the consumers' order) through two-stage
//   rings of 128-key tiles: whole tiles by TMA (use_tma: block_size and chunk multiples of 64, so each 64-key half
//   tile is 64 consecutive slots of one block; thread 0 issues the boxes with expect_tx), other tiles by cp.async
//   with per-row block-table addressing (any block_size, zero-filled rows), announced on the stage's "full"
//   mbarrier by cp.async.mbarrier.arrive.noinc. Consumers free a stage on its "empty" mbarrier (8 arrivals: one
//   per consumer warp) as soon as the product reading it has retired. No CTA-wide barrier in the main loop.
// - Consumers: Q as register A fragments (ldmatrix once), S = Q K^T an RS wgmma m64n128k16 (K from shared memory,
//   K-major), O += P V an RS wgmma (P from registers, V MN-major), FA3's intra-warpgroup overlap: iteration j
//   issues S_j and P_{j-1} V_{j-1} back to back and runs softmax_j while the second product is still on the
//   tensor cores. Q in registers halves the shared reads of S (an SS product plus the TMA writes is at shared
//   memory's 128 B/clk).
// - Ping-pong: two named barriers order the two consumer warpgroups' issue phases (warpgroup 1 issues its
//   products, then warpgroup 2, ...), so one warpgroup's softmax runs under the other's products.
namespace wgmma_ws {

constexpr int kBlockN = 128;  // keys per tile
constexpr int kThreads = 384;  // producer warpgroup + two consumer warpgroups
constexpr int kProducerRegs = 56, kConsumerRegs = 224;  // 128 * 56 + 256 * 224 = 384 * 168
constexpr int kConsumerWarps = 8;

constexpr int kStages = 2;  // K/V ring depth (3 measured no faster)

template <int D, int STAGES = kStages>
struct Smem {
  alignas(1024) bf16 q[kBlockM * D];
  alignas(1024) bf16 k[STAGES][kBlockN * D];
  alignas(1024) bf16 v[STAGES][kBlockN * D];
  uint64_t q_full;
  uint64_t k_full[STAGES], v_full[STAGES], k_empty[STAGES], v_empty[STAGES];
};

__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// One arrival on bar once every cp.async this thread issued before has landed (counted in the expected arrivals).
__device__ __forceinline__ void cp_async_arrive(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  const uint32_t a = smem_addr(bar);
  uint32_t done;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(a), "r"(parity)
        : "memory");
  } while (!done);
}
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
// TMA: box (64 dims, 1 head, 64 slots) of the cache at (dim c0, head c1, slot c2) into dst, bytes counted on bar.
__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, int c0, int c1, int c2, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(
          smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(smem_addr(bar))
      : "memory");
}

// D (64 x 128 f32) = A (registers) * B (smem desc, K-major) + (accumulate ? D : 0): S = Q K^T with Q in registers.
__device__ __forceinline__ void wgmma_rs_n128_kmajor(float (&d)[64], const uint32_t (&a)[4], uint64_t db,
                                                     int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "
      "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, "
      "%41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, "
      "%61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
}

// Q rows of this consumer warp as register A fragments (m64k16 per k-step: the mma.sync A layout per warp), read by
// ldmatrix from the swizzled tile; S = Q K^T then reads only K from shared memory.
template <int D>
__device__ __forceinline__ void load_q_frags(uint32_t (&qf)[D / 16][4], const bf16* q_tile, int row0, int lane) {
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks)
    ldmatrix_x4(qf[ks], &q_tile[swz<kBlockM>(row0 + (lane & 15), 2 * ks + (lane >> 4))]);
}

// TMA: whole key tiles (every row before the sequence end) come by TMA when the launcher says the layout allows it
// (use_tma: block_size and the chunk multiples of 64, so each 64-key half tile is 64 consecutive cache slots of one
// block); the sequence's last, partial tile and every tile of other layouts by cp.async (zero-filled rows).
template <int D>
__global__ void __launch_bounds__(kThreads, 1)
    prefill_kernel(const L4kAttentionParams p, const __grid_constant__ CUtensorMap tm_k,
                   const __grid_constant__ CUtensorMap tm_v, int use_tma) {
  constexpr int kChunks = D / 8;                  // 16-byte chunks per row
  constexpr int kRowsPerPass = 128 / kChunks;     // rows one pass of the producer warpgroup covers
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  constexpr int STAGES = kStages;
  Smem<D>& sm =
      *reinterpret_cast<Smem<D>*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});

  const int h = blockIdx.x;
  const int tile = gridDim.y - 1 - blockIdx.y;
  const int b = blockIdx.z;
  PREFILL_PROBE(0, threadIdx.x == 0);
  // The tensor maps' descriptors fetched while the sequence's scalars load (the first TMA would wait for them).
  if (threadIdx.x == 0 && use_tma) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&tm_k)) : "memory");
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&tm_v)) : "memory");
  }
  const int q_begin = p.cu_seqlens_q[b];
  const int q_len = p.cu_seqlens_q[b + 1] - q_begin;
  const int seq_len = p.seq_lens_k[b];
  // The scalars here; the block ids below, under the first key tile's load.
  if (sequence_is_bad_part(p, b, q_begin, q_len, seq_len, 0, 0)) {
    if (h == 0 && tile == 0 && threadIdx.x == 0 && p.bad_seqs != nullptr) atomicAdd(p.bad_seqs, 1u);
    return;
  }
  const int m0 = tile * kBlockM;
  if (m0 >= q_len) return;

  const int tid = threadIdx.x, lane = tid & 31;
  const int wg = tid >> 7;
  const int kvh = h / (p.n_heads / p.n_kv_heads);
  const int q_off = seq_len - q_len;
  const int rows = min(kBlockM, q_len - m0);
  const int q_first = q_off + m0, q_last = q_off + m0 + rows - 1;
  const KeyRange keys = attention_key_range(q_first, q_last, p.chunk);
  const int n_tiles = (keys.hi - keys.lo + kBlockN - 1) / kBlockN;
  PREFILL_PROBE(6, false);
#ifdef L4K_PREFILL_PROBE
  if (tid == 0 && blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z) < kProbeCtas) {
    unsigned smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    g_prefill_probe[(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z)) * 8 + 6] =
        (static_cast<unsigned long long>(smid) << 32) | n_tiles;
  }
#endif

  if (tid == 0) {
    mbar_init(&sm.q_full, 128);
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(&sm.k_full[s], 128);
      mbar_init(&sm.v_full[s], 128);
      mbar_init(&sm.k_empty[s], kConsumerWarps);
      mbar_init(&sm.v_empty[s], kConsumerWarps);
    }
  }
  __syncthreads();

  if (wg == 0) {
    // Producer.
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegs));
    const bf16* q_g = static_cast<const bf16*>(p.q);
    const bf16* k_g = static_cast<const bf16*>(p.k_cache);
    const bf16* v_g = static_cast<const bf16*>(p.v_cache);
    const int32_t* table = p.block_table + static_cast<int64_t>(b) * p.max_blocks;
    const int bs_shift = block_shift(p.block_size);
    const int chunk_col = tid % kChunks;
    const int row_base = tid / kChunks;
#pragma unroll 4
    for (int r = row_base; r < kBlockM; r += kRowsPerPass) {
      const bool in = r < rows;
      const int64_t row = static_cast<int64_t>(q_begin) + m0 + (in ? r : 0);
      cp_async16(&sm.q[swz<kBlockM>(r, chunk_col)], q_g + (row * p.n_heads + h) * D + chunk_col * 8, in ? 16 : 0);
    }
    cp_async_arrive(&sm.q_full);
    // K/V tiles: warp w copies rows 32 w .. 32 w + 31, lane l looks up the slot of row 32 w + l (one block-table
    // read a thread per tile, shared by K and V, issued a tile ahead) and the warp's copies take their slots by
    // shuffle: one instruction copies 32 / kChunks whole rows.
    constexpr int kRowsPerCopy = 32 / kChunks;
    const int pwarp = tid >> 5, sub = lane / kChunks, col = lane % kChunks;
    auto lookup = [&](int t) {
      const int pos = keys.lo + t * kBlockN + pwarp * 32 + lane;
      return pos < seq_len ? slot_of(table, pos, p.block_size, bs_shift) : -1;
    };
    auto load = [&](bf16* dst, const bf16* src, int my_slot) {
#pragma unroll
      for (int i = 0; i < 32 / kRowsPerCopy; ++i) {
        const int rl = i * kRowsPerCopy + sub;
        const int slot = __shfl_sync(0xffffffffu, my_slot, rl);
        const bool in = slot >= 0;
        const int64_t off = (static_cast<int64_t>(in ? slot : 0) * p.n_kv_heads + kvh) * D + col * 8;
        cp_async16(&dst[swz<kBlockN>(pwarp * 32 + rl, col)], src + off, in ? 16 : 0);
      }
    };
    const bool tma = use_tma != 0;
    // Tile t into dst, announced on full: by TMA (thread 0 issues; the others arrive) when it is whole, else by
    // every producer thread's cp.async.
    auto issue = [&](bf16* dst, const bf16* src, const CUtensorMap* map, uint64_t* full, int t, int my_slot) {
      const int k0 = keys.lo + t * kBlockN;
      if (tma && k0 + kBlockN <= seq_len) {
        if (tid == 0) {
          mbar_arrive_expect_tx(full, kBlockN * D * 2);
#pragma unroll
          for (int half = 0; half < kBlockN / 64; ++half) {
            const int slot = slot_of(table, k0 + 64 * half, p.block_size, bs_shift);
#pragma unroll
            for (int cb = 0; cb < D / 64; ++cb) tma_load_3d(dst + cb * kBlockN * 64 + half * 64 * 64, map, cb * 64, kvh, slot, full);
          }
        } else {
          mbar_arrive(full);
        }
      } else {
        load(dst, src, my_slot);
        cp_async_arrive(full);
      }
    };
    // A whole first key tile goes by TMA before the block-id verdict: TMA reads nothing out of bounds whatever
    // the ids (boxes outside the cache come back as zeros). The consumers check the ids meanwhile (the
    // producer's own loads would queue behind its Q copies); a bad sequence's CTA drains its loads and leaves.
    const bool k0_early = tma && keys.lo + kBlockN <= seq_len;
    if (k0_early) issue(sm.k[0], k_g, &tm_k, &sm.k_full[0], 0, -1);
    if (__syncthreads_or(0)) {
      cp_async_wait_all();
      if (tid == 0) {
        mbar_wait(&sm.q_full, 0);
        if (k0_early) mbar_wait(&sm.k_full[0], 0);
        if (h == 0 && tile == 0 && p.bad_seqs != nullptr) atomicAdd(p.bad_seqs, 1u);
      }
      return;
    }
    PREFILL_PROBE(1, tid == 0);
    // Q of the CTA one wave (one block id per SM) ahead into L2: its CTA starts about when this one ends, and its
    // first S waits on Q, which otherwise comes from HBM (run 13: 1.95 us of every CTA's start).
    {
      unsigned n_sms;
      asm("mov.u32 %0, %%nsmid;" : "=r"(n_sms));
      const int ahead = blockIdx.x + gridDim.x * blockIdx.y + static_cast<int>(n_sms);
      const int h2 = ahead % gridDim.x, y2 = ahead / gridDim.x;
      const int m2 = (static_cast<int>(gridDim.y) - 1 - y2) * kBlockM;
      if (y2 < static_cast<int>(gridDim.y) && m2 + tid < q_len) {
        const bf16* row = q_g + ((static_cast<int64_t>(q_begin) + m2 + tid) * p.n_heads + h2) * D;
#pragma unroll
        for (int c = 0; c < D * 2; c += 128) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(reinterpret_cast<const char*>(row) + c));
      }
    }
    int slot_v = lookup(0);  // rows of tile t (V_t still to issue)
    if (!k0_early) {
      mbar_wait(&sm.k_empty[0], 1);
      issue(sm.k[0], k_g, &tm_k, &sm.k_full[0], 0, slot_v);
    }
    int slot_k = n_tiles > 1 ? lookup(1) : -1;  // rows of tile t + 1
    for (int t = 0; t < n_tiles; ++t) {
      if (t + 1 < n_tiles) {
        const int st = (t + 1) % STAGES;
        mbar_wait(&sm.k_empty[st], (((t + 1) / STAGES) & 1) ^ 1);
        issue(sm.k[st], k_g, &tm_k, &sm.k_full[st], t + 1, slot_k);
      }
      const int st = t % STAGES;
      mbar_wait(&sm.v_empty[st], ((t / STAGES) & 1) ^ 1);
      issue(sm.v[st], v_g, &tm_v, &sm.v_full[st], t, slot_v);
      slot_v = slot_k;
      slot_k = t + 2 < n_tiles ? lookup(t + 2) : -1;
    }
    cp_async_wait_all();  // nothing in flight when the producer leaves
    return;
  }

  // Consumers. The block ids of the sequence (the producer passes): 256 threads, one or two table reads each.
  if (__syncthreads_or(sequence_is_bad_part(p, b, q_begin, q_len, seq_len, tid - 128, kThreads - 128))) return;
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegs));
  const int cw = wg - 1;              // consumer warpgroup: query rows 64 cw .. 64 cw + 63 of the tile
  const int wrow = (tid & 127) >> 5;  // warp within the warpgroup
  const uint32_t q_base = smem_addr(&sm.q[cw * 64 * 64]) >> 4;
  const uint32_t k_base = smem_addr(&sm.k[0][0]) >> 4, v_base = smem_addr(&sm.v[0][0]) >> 4;
  constexpr uint32_t kStageUnits = kBlockN * D * 2 / 16;
  const uint64_t kmajor_hi = gmma_desc_hi(16, 1024), vmajor_hi = gmma_desc_hi(kBlockN * 128, 1024);
  auto k_desc = [&](int st, int ks) {
    return kmajor_hi | (k_base + st * kStageUnits + (ks >> 2) * (kBlockN * 8) + (ks & 3) * 2);
  };
  auto v_desc = [&](int st, int kk) { return vmajor_hi | (v_base + st * kStageUnits + kk * 128); };
  // Ping-pong: named barrier 1 + c gates warpgroup c's issue phase; the other warpgroup opens it after its own.
  auto pp_sync = [&]() {
    named_sync(1 + cw, 256);
  };
  auto pp_arrive = [&]() {
    named_arrive(2 - cw, 256);
  };
  auto release = [&](uint64_t* bar) {
    __syncwarp();
    if (lane == 0) mbar_arrive(bar);
  };

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY};
  float l_run[2] = {0.f, 0.f};
  const float scale_log2 = p.softmax_scale * kLog2e;
  const int my_row = cw * 64 + wrow * 16 + (lane >> 2);  // tile row of s[4 nt + 0, 1]; + 8 for s[4 nt + 2, 3]
  const int my_q[2] = {q_off + m0 + my_row, q_off + m0 + my_row + 8};
  const int my_lo[2] = {chunk_start(my_q[0], p.chunk), chunk_start(my_q[1], p.chunk)};
  const int last_chunk_start = chunk_start(q_last, p.chunk);

  float s[kBlockN / 2];
  uint32_t pa[kBlockN / 16][4];
  float alpha[2];
  // Masks S_j, turns it into P_j (in s), updates maxima and sums; alpha: the factor O needs.
  auto softmax = [&](int j) {
    const int k0 = keys.lo + j * kBlockN;
    const bool full = k0 + kBlockN - 1 <= q_first && k0 >= last_chunk_start && k0 + kBlockN <= seq_len;
    if (!full) {
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int kp = k0 + nt * 8 + 2 * (lane & 3) + (e & 1);
          const int row = e >> 1;
          if (kp > my_q[row] || kp < my_lo[row] || kp >= seq_len) s[4 * nt + e] = -INFINITY;
        }
      }
    }
    float mxs[2];
#pragma unroll
    for (int row = 0; row < 2; ++row) {
      float mx = m_run[row];
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[4 * nt + 2 * row], s[4 * nt + 2 * row + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mxs[row] = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    }
#pragma unroll
    for (int row = 0; row < 2; ++row) {
      const float mx = mxs[row];
      const float m_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
      alpha[row] = ex2(m_run[row] * scale_log2 - m_scaled);
      m_run[row] = mx;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
        float& x0 = s[4 * nt + 2 * row];
        float& x1 = s[4 * nt + 2 * row + 1];
        x0 = ex2(fmaf(x0, scale_log2, -m_scaled));
        x1 = ex2(fmaf(x1, scale_log2, -m_scaled));
        sum += x0 + x1;
      }
      l_run[row] = l_run[row] * alpha[row] + sum;
    }
  };
  auto rescale = [&]() {
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      o[4 * dt + 0] *= alpha[0];
      o[4 * dt + 1] *= alpha[0];
      o[4 * dt + 2] *= alpha[1];
      o[4 * dt + 3] *= alpha[1];
    }
  };
  auto pack = [&]() {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      pa[kk][0] = pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
      pa[kk][1] = pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
      pa[kk][2] = pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
      pa[kk][3] = pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
    }
  };
  uint32_t qf[D / 16][4];  // Q's A fragments
  // fence.proxy.async (MEMBAR.ALL.CTA + FENCE.VIEW.ASYNC in SASS, between the barrier wait and the issue) is needed
  // only before products that may read a tile written by cp.async (generic proxy): every tile without TMA, with
  // TMA only each sequence's last (possibly partial) key tile. Q needs none: ldmatrix reads it.
  const bool cp_async_tiles = use_tma == 0;
  auto fence_if = [&](bool maybe_cp_async) {
    if (maybe_cp_async) fence_proxy_async();
  };
  auto issue_s = [&](int st) {
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      wgmma_rs_n128_kmajor(s, qf[ks], k_desc(st, ks), ks > 0);
    }
  };
  auto issue_pv = [&](int st) {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      if constexpr (D == 128) {
        wgmma_rs_n128(o, pa[kk], v_desc(st, kk));
      } else {
        wgmma_rs_n64(o, pa[kk], v_desc(st, kk));
      }
    }
  };

  if (cw == 1) named_arrive(1, 256);  // warpgroup 1 issues first
  mbar_wait(&sm.q_full, 0);
  mbar_wait(&sm.k_full[0], 0);
  PREFILL_PROBE(2, tid == 128);
  fence_if(cp_async_tiles || n_tiles == 1);
  load_q_frags<D>(qf, sm.q, cw * 64 + wrow * 16, lane);
  pp_sync();
  wgmma_fence();
  issue_s(0);
  wgmma_commit();
  pp_arrive();
  wgmma_wait_all();
  pin(s);
  release(&sm.k_empty[0]);
  softmax(0);
  rescale();
  pack();

  for (int j = 1; j < n_tiles; ++j) {
    const int st = j % STAGES, pst = (j - 1) % STAGES;
    mbar_wait(&sm.k_full[st], (j / STAGES) & 1);
    mbar_wait(&sm.v_full[pst], ((j - 1) / STAGES) & 1);
    fence_if(cp_async_tiles || j == n_tiles - 1);
    pp_sync();
    wgmma_fence();
    issue_s(st);
    wgmma_commit();
    issue_pv(pst);
    wgmma_commit();
    pp_arrive();
    wgmma_wait_1();  // S_j done; P_{j-1} V_{j-1} may still run
    pin(s);
    release(&sm.k_empty[st]);
    softmax(j);
    wgmma_wait_all();
    pin(o);
    release(&sm.v_empty[pst]);
    rescale();
    pack();
  }
  {
    const int pst = (n_tiles - 1) % STAGES;
    mbar_wait(&sm.v_full[pst], ((n_tiles - 1) / STAGES) & 1);
    fence_if(true);  // V of the last tile: a partial one comes by cp.async
    pp_sync();
    wgmma_fence();
    issue_pv(pst);
    wgmma_commit();
    // The last phase: warpgroup 1 still opens warpgroup 2's, warpgroup 2 has nobody left to open (its first
    // arrival was the one before the loop).
    if (cw == 0) pp_arrive();
    wgmma_wait_all();
    pin(o);
    release(&sm.v_empty[pst]);
  }
  PREFILL_PROBE(3, tid == 128);
  PREFILL_PROBE(5, tid == 256);

  // Epilogue: O / l in bf16 into this warp's 16 rows of the Q tile (read only by this warp's ldmatrix, long
  // done), then whole rows out: a thread's own fragments are 4-byte pieces of 8 rows, 8 L1 lines a store (run 13:
  // 3 us a CTA); rows are 16-byte stores when `out` is 16-byte aligned, 4-byte ones otherwise (the C ABI allows it).
  bf16* out = static_cast<bf16*>(p.out);
  {
    float inv[2];
#pragma unroll
    for (int row = 0; row < 2; ++row) {
      float l = l_run[row];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      inv[row] = l > 0.f ? 1.f / l : 0.f;
    }
    __syncwarp();
#pragma unroll
    for (int row = 0; row < 2; ++row) {
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        *reinterpret_cast<__nv_bfloat162*>(&sm.q[swz<kBlockM>(my_row + 8 * row, dt) + 2 * (lane & 3)]) =
            __floats2bfloat162_rn(o[4 * dt + 2 * row] * inv[row], o[4 * dt + 2 * row + 1] * inv[row]);
      }
    }
    __syncwarp();
    const int r0 = cw * 64 + wrow * 16;
    auto out_row = [&](int r) { return out + ((static_cast<int64_t>(q_begin) + m0 + r) * p.n_heads + h) * D; };
    if ((reinterpret_cast<uintptr_t>(out) & 15) == 0) {
      constexpr int kRowsPerStore = 32 / kChunks;
#pragma unroll
      for (int i = 0; i < 16 / kRowsPerStore; ++i) {
        const int r = r0 + i * kRowsPerStore + lane / kChunks, c = lane % kChunks;
        if (r < rows) *reinterpret_cast<uint4*>(out_row(r) + c * 8) = *reinterpret_cast<const uint4*>(&sm.q[swz<kBlockM>(r, c)]);
      }
    } else {
#pragma unroll
      for (int i = 0; i < 16 * D / 64; ++i) {
        const int w = i * 32 + lane, r = r0 + w / (D / 2), c = (w % (D / 2)) / 4, e = (w % 4) * 2;
        if (r < rows)
          *reinterpret_cast<uint32_t*>(out_row(r) + c * 8 + e) = *reinterpret_cast<const uint32_t*>(&sm.q[swz<kBlockM>(r, c) + e]);
      }
    }
  }
  PREFILL_PROBE(4, tid == 128);
  PREFILL_PROBE(7, tid == 256);
}

}  // namespace wgmma_ws

// cuTensorMapEncodeTiled from the driver (cudart links statically; the driver API is reached through it).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      ptr = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// TMA map of a [rows, heads, D] bf16 tensor as (dims, heads, rows), boxes of 64 dims x 1 head x box_rows rows in
// the 128-byte swizzle of the wgmma tiles.
bool encode_rows_map(CUtensorMap* map, const void* base, int64_t rows, int heads, int d, uint32_t box_rows) {
  PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr || rows <= 0) return false;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(d), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(d) * 2, static_cast<cuuint64_t>(d) * heads * 2};
  const cuuint32_t box[3] = {64, 1, box_rows};
  const cuuint32_t elem[3] = {1, 1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(base), dims, strides, box, elem,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}
// The K or V cache [slots, n_kv_heads, D] in 64-slot boxes.
bool encode_cache_map(CUtensorMap* map, const void* base, const L4kAttentionParams& p) {
  return encode_rows_map(map, base, p.slots, p.n_kv_heads, p.head_dim, 64);
}

template <typename Fn>
int launch_ws(Fn fn, dim3 grid, size_t smem_tiles, cudaStream_t stream, const L4kAttentionParams& p) {
  const size_t smem = smem_tiles + 1024;  // slack: the tiles start on the swizzle's 1024-byte period
  cudaError_t e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (e != cudaSuccess) return static_cast<int>(e);
  CUtensorMap tm_k, tm_v;
  memset(&tm_k, 0, sizeof(tm_k));
  memset(&tm_v, 0, sizeof(tm_v));
  // TMA when every 64-key half tile is 64 consecutive slots of one block: block_size and chunk multiples of 64
  // (tiles start at a chunk start or 0, in steps of 128). Otherwise (or if the driver refuses the maps) cp.async.
  bool tma = p.block_size % 64 == 0 && p.chunk % 64 == 0 && p.slots > 0 && p.slots <= INT32_MAX &&
             reinterpret_cast<uintptr_t>(p.k_cache) % 16 == 0 && reinterpret_cast<uintptr_t>(p.v_cache) % 16 == 0;
  if (tma) tma = encode_cache_map(&tm_k, p.k_cache, p) && encode_cache_map(&tm_v, p.v_cache, p);
  fn<<<grid, wgmma_ws::kThreads, smem, stream>>>(p, tm_k, tm_v, tma ? 1 : 0);
  return launch_status();
}

template <int D>
int launch(const L4kAttentionParams& p, cudaStream_t stream) {
  const int tiles = p.max_q_len > 0 ? (p.max_q_len + kBlockM - 1) / kBlockM : 1;
  if (tiles > 65535 || p.batch > 65535) return L4K_STATUS_UNSUPPORTED_SHAPE;
  const dim3 grid(p.n_heads, tiles, p.batch);
  return launch_ws(wgmma_ws::prefill_kernel<D>, grid, sizeof(wgmma_ws::Smem<D>), stream, p);
}

int launch_checked(const L4kAttentionParams* p, cudaStream_t stream) {
  if (p == nullptr) return L4K_STATUS_BAD_PARAMS;
  if (p->batch < 0 || p->n_heads < 1 || p->n_kv_heads < 1 || p->n_heads % p->n_kv_heads != 0 ||
      p->block_size < 1 || p->max_blocks < 0 || p->max_q_len < 0 || p->chunk < 0 || p->total_q < 0 ||
      p->slots < 0 || p->slots % p->block_size != 0)
    return L4K_STATUS_BAD_PARAMS;
  if (p->head_dim != 64 && p->head_dim != 128) return L4K_STATUS_UNSUPPORTED_SHAPE;
  if (p->n_heads > 65535 || p->slots > INT32_MAX) return L4K_STATUS_UNSUPPORTED_SHAPE;
  if (p->batch == 0) return 0;
  if (p->q == nullptr || p->k_cache == nullptr || p->v_cache == nullptr || p->cu_seqlens_q == nullptr ||
      p->seq_lens_k == nullptr || p->block_table == nullptr || p->out == nullptr)
    return L4K_STATUS_BAD_PARAMS;
  return p->head_dim == 128 ? launch<128>(*p, stream) : launch<64>(*p, stream);
}

}  // namespace attn_prefill
}  // namespace l4k

extern "C" int l4k_launch_attention_prefill(const L4kAttentionParams* p, cudaStream_t stream) {
  return l4k::attn_prefill::launch_checked(p, stream);
}
