// Expert weight preparation: checkpoint bf16 W [E, K, N] (as used in x @ W, N contiguous) -> the grouped GEMM's
// B [E, N, K] E4M3 (K contiguous) + scales [E, N] f32. For each (e, n): scale = max(amax_k |W[e, k, n]|, 1e-12)
// / 448 and q = e4m3(W * (1 / scale)), the rowwise recipe of quant.cu over the transposed matrix: the same
// bytes as reference/src/weight_prep.rs.
//
// Strip kernel (K % 16 == 0, K <= 8192, N % 8 == 0, 16-byte aligned operands): one CTA per (expert, strip of 8
// columns). Each thread loads 16 rows x 8 columns (16 x 16-byte loads) into registers, the CTA reduces the 8
// column maxima, and each thread writes its 16 rows of every column as one 16-byte store along K. W is read
// once and nothing goes through shared memory but 8 maxima per warp. A strip's rows are 16 bytes, half a DRAM
// sector; the CTA of the neighbouring strip (the next blockIdx.x, resident at the same time) reads the other
// half from L2.
// Generic kernel (any shape, any alignment): 32 columns x 8 row-phases per CTA, reads W twice (amax, then
// quantize) and transposes 64-row tiles through shared memory for coalesced byte stores. Correct everywhere,
// a fallback for shapes the grouped GEMM cannot take anyway (K % 16 != 0, N % 8 != 0) and K > 8192.
//
// Gate/up interleaving (l4k_launch_weight_prep_gate_up_interleaved, for the grouped GEMM's SwiGLU epilogue): the
// same quantization with output row n of a gate_up weight (gate = columns 0 .. N/2, up = N/2 .. N) moved to row
// 2n (gate) or 2(n - N/2) + 1 (up), scales alike. Rowwise quantization does not mix rows, so this is exactly
// the plain result with its rows permuted.
//
// PDL (kernels/pdl.cuh): every thread of both kernels waits for the previous kernel before its first load.
#include "common.cuh"
#include "pdl.cuh"

namespace l4k {

enum class RowOrder { kPlain, kGateUpInterleaved };

// Where output row n (a column of W) goes.
template <RowOrder ORDER>
__device__ __forceinline__ int64_t out_row(int64_t n, int64_t cols) {
  if constexpr (ORDER == RowOrder::kGateUpInterleaved) {
    const int64_t half = cols / 2;
    return n < half ? 2 * n : 2 * (n - half) + 1;
  } else {
    return n;
  }
}

constexpr int kStripCols = 8;      // columns per CTA: one 16-byte load per row
constexpr int kRowsPerThread = 16;  // rows per thread: one 16-byte E4M3 store per column
constexpr int kStripThreads = 512;  // so K <= 512 * 16 = 8192 fits one CTA, 64 data registers per thread
constexpr int64_t kStripMaxK = static_cast<int64_t>(kStripThreads) * kRowsPerThread;

// MAX_THREADS / MIN_BLOCKS: K <= 5120 (320 threads) fits 2 CTAs per SM at 96 registers without spills; larger K
// gets 512 threads, one CTA per SM. Measured: no faster than one CTA per SM at K = 5120 (kernels/NOTES.md).
template <int MAX_THREADS, int MIN_BLOCKS, RowOrder ORDER>
__global__ void __launch_bounds__(MAX_THREADS, MIN_BLOCKS) weight_prep_strip_kernel(const L4kWeightPrepParams p) {
  const int64_t e = blockIdx.y, n0 = static_cast<int64_t>(blockIdx.x) * kStripCols;
  const int64_t k0 = static_cast<int64_t>(threadIdx.x) * kRowsPerThread;
  const bf16* w = static_cast<const bf16*>(p.w) + (e * p.k) * p.n + n0;
  const bool active = k0 < p.k;  // K % 16 == 0: an active thread owns 16 whole rows
  pdl_wait();
  pdl_launch_dependents();

  // Rows kept as raw 16-byte words: word c of row i holds columns 2c (low half) and 2c + 1 (high half).
  // Column maxima in packed bf16 (|x| and max are exact in bf16; __hmax2 returns the other operand when one is
  // NaN, as fmaxf does): 2 instructions per 16-byte row instead of 16.
  uint4 v[kRowsPerThread];
  __nv_bfloat162 amax2[kStripCols / 2];
#pragma unroll
  for (int c = 0; c < kStripCols / 2; ++c) amax2[c] = __float2bfloat162_rn(0.f);
  if (active) {
    const bf16* row = w + k0 * p.n;
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i, row += p.n) v[i] = *reinterpret_cast<const uint4*>(row);
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const uint32_t words[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
#pragma unroll
      for (int c = 0; c < kStripCols / 2; ++c)
        amax2[c] = __hmax2(amax2[c], __habs2(*reinterpret_cast<const __nv_bfloat162*>(&words[c])));
    }
  }

  __shared__ float partial[MAX_THREADS / 32][kStripCols];
  __shared__ float inv_scale[kStripCols];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int j = 0; j < kStripCols; ++j) {
    const float m = warp_reduce(j % 2 ? __high2float(amax2[j / 2]) : __low2float(amax2[j / 2]), MaxOp{});
    if (lane == 0) partial[warp][j] = m;
  }
  __syncthreads();
  if (threadIdx.x < kStripCols) {
    float m = 0.f;
    for (int i = 0; i < warps; ++i) m = fmaxf(m, partial[i][threadIdx.x]);
    const float scale = fmaxf(m, kMinAmax) / kE4m3Max;
    p.scales[e * p.n + out_row<ORDER>(n0 + threadIdx.x, p.n)] = scale;
    inv_scale[threadIdx.x] = 1.f / scale;
  }
  __syncthreads();
  if (!active) return;

  uint8_t* out = static_cast<uint8_t*>(p.out) + e * p.n * p.k + k0;
#pragma unroll
  for (int j = 0; j < kStripCols; ++j) {
    const float inv = inv_scale[j];
    // bf16 -> f32 is a shift into the high half: column 2c is the low half of word c, 2c + 1 the high half.
    auto f = [&](int i) {
      const uint4& r = v[i];
      const uint32_t word = (j / 2 == 0) ? r.x : (j / 2 == 1) ? r.y : (j / 2 == 2) ? r.z : r.w;
      return __uint_as_float(j % 2 ? (word & 0xFFFF0000u) : (word << 16));
    };
    uint32_t packed[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(f(4 * q) * inv, f(4 * q + 1) * inv), __NV_SATFINITE, __NV_E4M3);
      const uint32_t hi =
          __nv_cvt_float2_to_fp8x2(make_float2(f(4 * q + 2) * inv, f(4 * q + 3) * inv), __NV_SATFINITE, __NV_E4M3);
      packed[q] = lo | (hi << 16);
    }
    *reinterpret_cast<uint4*>(out + out_row<ORDER>(n0 + j, p.n) * p.k) =
        make_uint4(packed[0], packed[1], packed[2], packed[3]);
  }
}

constexpr int kGenericCols = 32, kGenericPhases = 8, kGenericTileK = 64;

// Pass 1: column maxima, each warp reading 64 contiguous bytes of a row. Pass 2, per tile of 64 rows: quantize
// while reading (coalesced as in pass 1), transpose the bytes through shared memory, write each output row's
// 64 bytes with consecutive lanes on consecutive bytes (byte stores: K may be odd, rows unaligned).
template <RowOrder ORDER>
__global__ void __launch_bounds__(kGenericCols* kGenericPhases) weight_prep_generic_kernel(const L4kWeightPrepParams p) {
  const int64_t e = blockIdx.y, n0 = static_cast<int64_t>(blockIdx.x) * kGenericCols, n = n0 + threadIdx.x;
  const bool col = n < p.n;
  const bf16* w = static_cast<const bf16*>(p.w) + (e * p.k) * p.n + n;
  pdl_wait();
  pdl_launch_dependents();
  float amax = 0.f;
  if (col)
    for (int64_t k = threadIdx.y; k < p.k; k += kGenericPhases) amax = fmaxf(amax, fabsf(__bfloat162float(w[k * p.n])));

  __shared__ float partial[kGenericPhases][kGenericCols];
  __shared__ float inv_scale[kGenericCols];
  __shared__ uint8_t tile[kGenericCols][kGenericTileK + 4];  // [n][k]; odd word stride: no bank conflicts
  partial[threadIdx.y][threadIdx.x] = amax;
  __syncthreads();
  if (threadIdx.y == 0) {
    float m = 0.f;
    for (int i = 0; i < kGenericPhases; ++i) m = fmaxf(m, partial[i][threadIdx.x]);
    const float scale = fmaxf(m, kMinAmax) / kE4m3Max;
    if (col) p.scales[e * p.n + out_row<ORDER>(n, p.n)] = scale;
    inv_scale[threadIdx.x] = 1.f / scale;
  }
  __syncthreads();
  const float inv = inv_scale[threadIdx.x];
  const int t = threadIdx.y * kGenericCols + threadIdx.x;
  const int64_t cols = p.n - n0 < kGenericCols ? p.n - n0 : kGenericCols;
  uint8_t* out = static_cast<uint8_t*>(p.out) + e * p.n * p.k;
  for (int64_t k0 = 0; k0 < p.k; k0 += kGenericTileK) {
    const int rows = static_cast<int>(p.k - k0 < kGenericTileK ? p.k - k0 : kGenericTileK);
    if (col)
      for (int r = threadIdx.y; r < rows; r += kGenericPhases)
        tile[threadIdx.x][r] = to_e4m3(__bfloat162float(w[(k0 + r) * p.n]) * inv);
    __syncthreads();
    // 256 threads over [cols][rows] bytes: thread t writes byte t % 64 of rows t / 64, t / 64 + 4, ...
    for (int i = t; i < cols * kGenericTileK; i += kGenericCols * kGenericPhases) {
      const int r = i / kGenericTileK, c = i % kGenericTileK;
      if (c < rows) out[out_row<ORDER>(n0 + r, p.n) * p.k + k0 + c] = tile[r][c];
    }
    __syncthreads();
  }
}

// Which kernel runs: the strip kernel where its shape and alignment assumptions hold.
inline bool strip_path(const L4kWeightPrepParams& p) {
  return p.k > 0 && p.k % kRowsPerThread == 0 && p.k <= kStripMaxK && p.n % kStripCols == 0 && aligned16(p.w) &&
         aligned16(p.out);
}

}  // namespace l4k

// 1 when the strip kernel runs for these parameters, 0 for the generic one (for tests and benches).
extern "C" int l4k_internal_weight_prep_strip_path(const L4kWeightPrepParams* p) { return l4k::strip_path(*p); }

namespace l4k {

// Strips launch in clusters of two along N where the strip count is even: the pair sharing every 32-byte
// sector of a row (16 bytes each) is then scheduled together, so the second half is an L2 hit instead of a
// second DRAM read (kernels/NOTES.md, weight_prep v3: +11% / +8% at Scout's shapes on the H200).
template <int MAX_THREADS, int MIN_BLOCKS, RowOrder ORDER>
cudaError_t launch_strip(const L4kWeightPrepParams& p, dim3 grid, int threads, cudaStream_t stream) {
  LaunchShape shape{grid, dim3(static_cast<unsigned>(threads))};
  shape.cluster_x = grid.x % 2 == 0 ? 2 : 1;
  return launch_pdl(weight_prep_strip_kernel<MAX_THREADS, MIN_BLOCKS, ORDER>, shape, stream, p);
}

template <RowOrder ORDER>
int launch_weight_prep(const L4kWeightPrepParams* p, cudaStream_t stream) {
  if (strip_path(*p)) {
    const int64_t rows = p->k / kRowsPerThread;
    const int threads = static_cast<int>((rows + 31) / 32 * 32);
    const dim3 grid(static_cast<unsigned>(p->n / kStripCols), static_cast<unsigned>(p->experts));
    return launch_result(threads <= 320 ? launch_strip<320, 2, ORDER>(*p, grid, threads, stream)
                                        : launch_strip<kStripThreads, 1, ORDER>(*p, grid, threads, stream));
  }
  const dim3 grid(static_cast<unsigned>((p->n + kGenericCols - 1) / kGenericCols), static_cast<unsigned>(p->experts));
  const LaunchShape shape{grid, dim3(kGenericCols, kGenericPhases)};
  return launch_result(launch_pdl(weight_prep_generic_kernel<ORDER>, shape, stream, *p));
}

}  // namespace l4k

extern "C" int l4k_launch_weight_prep(const L4kWeightPrepParams* p, cudaStream_t stream) {
  return l4k::launch_weight_prep<l4k::RowOrder::kPlain>(p, stream);
}

// n even: gate = columns [0, n/2), up = [n/2, n) of W; output rows interleaved (see the top).
extern "C" int l4k_launch_weight_prep_gate_up_interleaved(const L4kWeightPrepParams* p, cudaStream_t stream) {
  return l4k::launch_weight_prep<l4k::RowOrder::kGateUpInterleaved>(p, stream);
}
