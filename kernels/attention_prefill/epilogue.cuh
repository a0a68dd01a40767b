// The prefill kernel's epilogue (kernels/attention_prefill.cu), run by each consumer warp on its 16 query rows:
// O / l in bf16 into this warp's 16 rows of the Q tile (read only by this warp's ldmatrix, long done), then whole
// rows out: a thread's own fragments are 4-byte pieces of 8 rows, 8 L1 lines a store (run 13: 3 us a CTA); rows are
// 16-byte stores when `out` is 16-byte aligned, 4-byte ones otherwise (the C ABI allows it).
#pragma once
#include <stdint.h>

#include "tile.cuh"

namespace l4k {
namespace attn_prefill {

template <int D>
__device__ __forceinline__ void store_output(const L4kAttentionParams& p, Smem<D>& sm, const CtaWork& w, int tid,
                                             int lane, int cw, const float (&o)[D / 2], const float (&l_run)[2]) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  const int wrow = (tid & 127) >> 5;
  const int my_row = cw * 64 + wrow * 16 + (lane >> 2);  // tile row of o[4 dt + 0, 1]; + 8 for o[4 dt + 2, 3]
  const int q_begin = w.q_begin, m0 = w.m0, h = w.h, rows = w.rows;
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
}

}  // namespace attn_prefill
}  // namespace l4k
