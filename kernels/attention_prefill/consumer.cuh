// The prefill kernel's two consumer warpgroups (kernels/attention_prefill.cu), 64 query rows each of the CTA's
// 128-query tile, after setmaxnreg gave them 224 registers:
// - Q as register A fragments (ldmatrix once), S = Q K^T an RS wgmma m64n128k16 (K from shared memory, K-major),
//   O += P V an RS wgmma (P from registers, V MN-major). FA3's intra-warpgroup overlap: iteration j issues S_j and
//   P_{j-1} V_{j-1} back to back and runs softmax_j while the second product is still on the tensor cores. Q in
//   registers halves the shared reads of S (an SS product plus the TMA writes is at shared memory's 128 B/clk).
// - A stage goes back to the producer on its empty mbarrier (one arrival a warp) as soon as the product reading it
//   has retired: no CTA-wide barrier in the main loop.
// - Ping-pong: two named barriers order the warpgroups' issue phases (warpgroup 0 issues its products, then
//   warpgroup 1, ...), so one warpgroup's softmax runs under the other's products.
// - f32 online softmax in the log2 domain (scores * scale * log2 e, ex2.approx), P rounded to bf16 for the second
//   product. Only the tiles that straddle the diagonal, a chunk start or the sequence end evaluate the mask.
#pragma once
#include <math.h>
#include <stdint.h>

#include "paged_kv.cuh"
#include "probe.cuh"
#include "ptx.cuh"
#include "tile.cuh"

namespace l4k {
namespace attn_prefill {

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// The named barrier that gates consumer warpgroup cw's issue phase.
__device__ __forceinline__ ptx::NamedBarrier issue_barrier(int cw) {
  return static_cast<ptx::NamedBarrier>(static_cast<int>(ptx::NamedBarrier::kPrefillConsumerIssue0) + cw);
}

// Q rows of this consumer warp as register A fragments (m64k16 per k-step: the mma.sync A layout per warp), read by
// ldmatrix from the swizzled tile; S = Q K^T then reads only K from shared memory.
template <int D>
__device__ __forceinline__ void load_q_frags(uint32_t (&qf)[D / 16][4], const bf16* q_tile, int row0, int lane) {
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks)
    ptx::ldmatrix_x4(qf[ks], &q_tile[swz<kBlockM>(row0 + (lane & 15), 2 * ks + (lane >> 4))]);
}

// The main loop of one consumer thread over every key tile of w: its share of O (unnormalised, in the wgmma
// accumulator layout) and of its two rows' softmax sums, which the epilogue stores.
template <int D, class Probe>
__device__ __forceinline__ void consumer_mainloop(const L4kAttentionParams& p, Smem<D>& sm, int use_tma,
                                                  const CtaWork& w, int tid, int lane, int cw, float (&o)[D / 2],
                                                  float (&l_run)[2]) {
  constexpr int STAGES = kStages;
  const int wrow = (tid & 127) >> 5;  // warp within the warpgroup
  const int q_off = w.q_off, q_first = w.q_first, q_last = w.q_last, m0 = w.m0, seq_len = w.seq_len;
  const int n_tiles = w.n_tiles;
  const paged_kv::KeyRange keys = w.keys;
  const uint32_t k_base = ptx::smem_addr(&sm.k[0][0]) >> 4, v_base = ptx::smem_addr(&sm.v[0][0]) >> 4;
  constexpr uint32_t kStageUnits = kBlockN * D * 2 / 16;
  const uint64_t kmajor_hi = ptx::gmma_desc_hi(16, 1024), vmajor_hi = ptx::gmma_desc_hi(kBlockN * 128, 1024);
  auto k_desc = [&](int st, int ks) {
    return kmajor_hi | (k_base + st * kStageUnits + (ks >> 2) * (kBlockN * 8) + (ks & 3) * 2);
  };
  auto v_desc = [&](int st, int kk) { return vmajor_hi | (v_base + st * kStageUnits + kk * 128); };
  // Ping-pong: issue_barrier(c) gates consumer warpgroup c's issue phase; the other warpgroup opens it after its
  // own.
  auto pp_sync = [&]() { ptx::named_sync(issue_barrier(cw), 256); };
  auto pp_arrive = [&]() { ptx::named_arrive(issue_barrier(1 - cw), 256); };
  auto release = [&](uint64_t* bar) {
    __syncwarp();
    if (lane == 0) ptx::mbar_arrive(bar);
  };

#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY};
  l_run[0] = l_run[1] = 0.f;
  const float scale_log2 = p.softmax_scale * kLog2e;
  const int my_row = cw * 64 + wrow * 16 + (lane >> 2);  // tile row of s[4 nt + 0, 1]; + 8 for s[4 nt + 2, 3]
  const int my_q[2] = {q_off + m0 + my_row, q_off + m0 + my_row + 8};
  const int my_lo[2] = {paged_kv::chunk_start(my_q[0], p.chunk), paged_kv::chunk_start(my_q[1], p.chunk)};
  const int last_chunk_start = paged_kv::chunk_start(q_last, p.chunk);

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
      alpha[row] = ptx::ex2(m_run[row] * scale_log2 - m_scaled);
      m_run[row] = mx;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
        float& x0 = s[4 * nt + 2 * row];
        float& x1 = s[4 * nt + 2 * row + 1];
        x0 = ptx::ex2(fmaf(x0, scale_log2, -m_scaled));
        x1 = ptx::ex2(fmaf(x1, scale_log2, -m_scaled));
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
    if (maybe_cp_async) ptx::fence_proxy_async();
  };
  auto issue_s = [&](int st) {
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      ptx::wgmma_rs_n128_kmajor(s, qf[ks], k_desc(st, ks), ks > 0);
    }
  };
  auto issue_pv = [&](int st) {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      if constexpr (D == 128) {
        ptx::wgmma_rs_n128(o, pa[kk], v_desc(st, kk));
      } else {
        ptx::wgmma_rs_n64(o, pa[kk], v_desc(st, kk));
      }
    }
  };

  if (cw == 1) ptx::named_arrive(issue_barrier(0), 256);  // consumer warpgroup 0 issues first
  ptx::mbar_wait(&sm.q_full, 0);
  ptx::mbar_wait(&sm.k_full[0], 0);
  Probe::stamp(kProbeFirstData, tid == 128);
  fence_if(cp_async_tiles || n_tiles == 1);
  load_q_frags<D>(qf, sm.q, cw * 64 + wrow * 16, lane);
  pp_sync();
  ptx::wgmma_fence();
  issue_s(0);
  ptx::wgmma_commit();
  pp_arrive();
  ptx::wgmma_wait_all();
  ptx::pin(s);
  release(&sm.k_empty[0]);
  softmax(0);
  rescale();
  pack();

  for (int j = 1; j < n_tiles; ++j) {
    const int st = j % STAGES, pst = (j - 1) % STAGES;
    ptx::mbar_wait(&sm.k_full[st], (j / STAGES) & 1);
    ptx::mbar_wait(&sm.v_full[pst], ((j - 1) / STAGES) & 1);
    fence_if(cp_async_tiles || j == n_tiles - 1);
    pp_sync();
    ptx::wgmma_fence();
    issue_s(st);
    ptx::wgmma_commit();
    issue_pv(pst);
    ptx::wgmma_commit();
    pp_arrive();
    ptx::wgmma_wait_1();  // S_j done; P_{j-1} V_{j-1} may still run
    ptx::pin(s);
    release(&sm.k_empty[st]);
    softmax(j);
    ptx::wgmma_wait_all();
    ptx::pin(o);
    release(&sm.v_empty[pst]);
    rescale();
    pack();
  }
  {
    const int pst = (n_tiles - 1) % STAGES;
    ptx::mbar_wait(&sm.v_full[pst], ((n_tiles - 1) / STAGES) & 1);
    fence_if(true);  // V of the last tile: a partial one comes by cp.async
    pp_sync();
    ptx::wgmma_fence();
    issue_pv(pst);
    ptx::wgmma_commit();
    // The last phase: consumer warpgroup 0 still opens 1's, 1 has nobody left to open (its first
    // arrival was the one before the loop).
    if (cw == 0) pp_arrive();
    ptx::wgmma_wait_all();
    ptx::pin(o);
    release(&sm.v_empty[pst]);
  }
}

}  // namespace attn_prefill
}  // namespace l4k
