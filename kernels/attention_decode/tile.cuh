// Decode attention, device side shared by both main loops: one CTA's place in the grid, the sequence checks, Q in
// registers, the per-warp online softmax over 16 keys of a stage (mma.sync), and the epilogue that merges the warps
// and writes bf16 rows (one split) or f32 partials with their log-sum-exp (several). The loops differ only in how
// a stage's K and V reach shared memory and where a key's row sits there (the k_at / v_at addressing).
#pragma once
#include <math.h>

#include "../attention_params.h"
#include "../common.cuh"
#include "../paged_kv.cuh"
#include "../pdl.cuh"
#include "../ptx.cuh"
#include "plan.cuh"

namespace l4k {
namespace decode {

constexpr float kLog2e = 1.4426950408889634f;

struct Seq {
  int q0, q_len, seq_len;
  bool bad;
};

// Sequence b's metadata and the contract's consistency rule (attention_params.h).
__device__ __forceinline__ Seq read_seq(const L4kAttentionParams& p, int b) {
  Seq s;
  const int64_t q0 = p.cu_seqlens_q[b], q1 = p.cu_seqlens_q[b + 1];
  const int64_t ql = q1 - q0;
  s.q0 = int(q0);
  s.q_len = int(ql);
  s.seq_len = p.seq_lens_k[b];
  s.bad = paged_kv::sequence_scalars_bad(p, q0, ql, s.seq_len);
  return s;
}

// The split's tiles [begin, end) of the sequence's 64-key tiles; `active` splits are non-empty.
struct SplitRange {
  int lo, begin, end, active;
};

__device__ __forceinline__ SplitRange split_range(const Seq& s, int chunk, int splits, int split, int tile_keys) {
  SplitRange r;
  const paged_kv::KeyRange keys = paged_kv::sequence_key_range(s.seq_len, s.q_len, chunk);
  r.lo = keys.lo;
  const int tiles = ceil_div(keys.hi - keys.lo, tile_keys);
  const int per = ceil_div(tiles, splits);
  r.active = per > 0 ? ceil_div(tiles, per) : 0;
  r.begin = split * per;
  r.end = min(tiles, r.begin + per);
  return r;
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(ptx::smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(ptx::smem_addr(p)));
}

// c += a (16x16, row) * b (16x8, col), bf16 in, f32 accumulate.
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// One CTA's work: sequence b, KV heads kv0 .. kv0 + HEADS - 1, rows r0 .. r0 + 15 of each head's (query, head)
// rows, split `split` of `splits`. Block ids run row tile fastest, then head group, split, sequence: the CTAs of
// one sequence and split are neighbours.
struct Cta {
  int b, kv0, rt, split, splits, n_rt, group;
  bool reporter;  // the one CTA of a sequence that counts it bad when splits == 1
};

template <int HEADS>
__device__ __forceinline__ Cta cta_of(const L4kAttentionParams& p, int splits, int n_rt) {
  Cta c;
  int64_t id = blockIdx.x;
  c.rt = int(id % n_rt);
  id /= n_rt;
  const int n_hg = p.n_kv_heads / HEADS;
  const int hg = int(id % n_hg);
  id /= n_hg;
  c.split = int(id % splits);
  c.b = int(id / splits);
  c.kv0 = hg * HEADS;
  c.splits = splits;
  c.n_rt = n_rt;
  c.group = p.n_heads / p.n_kv_heads;
  c.reporter = hg == 0 && c.rt == 0 && c.split == 0;
  return c;
}

// The rows of a row tile: the query positions they see up to, and where their chunks start.
struct RowTile {
  int rows, r0, q_first, q_last, lo_first, lo_last;
};

__device__ __forceinline__ RowTile row_tile(const L4kAttentionParams& p, const Seq& s, const Cta& c) {
  RowTile t;
  t.rows = s.q_len * c.group;
  t.r0 = c.rt * kRows;
  const int first_q = s.seq_len - s.q_len;
  const int r_last = min(t.r0 + kRows, t.rows) - 1;
  t.q_first = first_q + t.r0 / c.group;
  t.q_last = first_q + r_last / c.group;
  t.lo_first = paged_kv::chunk_start(t.q_first, p.chunk);
  t.lo_last = paged_kv::chunk_start(t.q_last, p.chunk);
  return t;
}

// The CTA's sequence, rows and key tiles; false when it has nothing to do. Every thread first waits for the previous
// kernel (PDL: rope's cache writes) ahead of every early exit. A bad sequence is counted here when the keys are not
// split (with several splits the combine kernel checks the same rule and counts it).
__device__ __forceinline__ bool cta_work(const L4kAttentionParams& p, const Cta& c, int tid, Seq& s, RowTile& t,
                                         SplitRange& sr) {
  pdl_wait();
  pdl_launch_dependents();
  s = read_seq(p, c.b);
  if (s.bad) {
    if (c.splits == 1 && c.reporter && tid == 0 && p.bad_seqs != nullptr) atomicAdd(p.bad_seqs, 1u);
    return false;
  }
  t = row_tile(p, s, c);
  if (t.r0 >= t.rows) return false;
  sr = split_range(s, p.chunk, c.splits, c.split, kTileKeys);
  return sr.begin < sr.end;
}

// One warp's state for KV head g: its two fragment rows (lane / 4 and lane / 4 + 8 of the m16 tile) with their
// Q in registers for the whole loop, and the running max m, sum l and O of its keys.
template <int D>
struct WarpSoftmax {
  int qpos[2], qlo[2];
  uint32_t qa[D / 16][4];
  float m[2], l[2];
  float o[D / 8][4];

  __device__ __forceinline__ void init(const L4kAttentionParams& p, const Seq& s, const Cta& c, const RowTile& t,
                                       int g, int lane) {
    const int fr = lane >> 2, fc = lane & 3;
    const bf16* q = static_cast<const bf16*>(p.q);
    const int first_q = s.seq_len - s.q_len;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = t.r0 + fr + 8 * h;
      const bool valid = r < t.rows;
      qpos[h] = valid ? first_q + r / c.group : -1;  // -1: a padding row sees nothing
      qlo[h] = valid ? paged_kv::chunk_start(qpos[h], p.chunk) : 0;
      const bf16* qrow = q + ((int64_t(s.q0) + r / c.group) * p.n_heads + int64_t(g) * c.group + r % c.group) * D;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        qa[kk][h] = valid ? *reinterpret_cast<const uint32_t*>(qrow + kk * 16 + 2 * fc) : 0u;
        qa[kk][2 + h] = valid ? *reinterpret_cast<const uint32_t*>(qrow + kk * 16 + 2 * fc + 8) : 0u;
      }
    }
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.f;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  }

  // Keys p0 .. p0 + 15: S = Q K^T, the mask, the online-softmax update, O += P V. k_at(j, d) / v_at(j, d): the shared
  // address of key j's (0 .. 15) dims d .. d + 7 (d a multiple of 8). Scores are scaled by softmax_scale * log2(e)
  // and exponentiated with exp2; masked entries are -inf, and a row with no visible key yet keeps m = -inf, l = 0
  // (its running max is replaced by 0 in the exponent: no NaN).
  template <class KAt, class VAt>
  __device__ __forceinline__ void attend(KAt k_at, VAt v_at, int p0, const RowTile& t, float scale, int lane) {
    const int fc = lane & 3, mi = lane >> 3, mr = lane & 7;
    float sc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t kb[4];
      ldmatrix_x4(kb, k_at(8 * (mi >> 1) + mr, kk * 16 + 8 * (mi & 1)));
      mma16816(sc[0], qa[kk], kb[0], kb[1]);
      mma16816(sc[1], qa[kk], kb[2], kb[3]);
    }
    // Every row sees every one of the 16 keys iff they lie in [lo of the last query, first query].
    const bool full = p0 >= t.lo_last && p0 + kWarpKeys - 1 <= t.q_first;
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e >> 1, key = p0 + 8 * j + 2 * fc + (e & 1);
        float x = sc[j][e] * scale;
        if (!full && (key > qpos[h] || key < qlo[h])) x = -INFINITY;
        sc[j][e] = x;
        mx[h] = fmaxf(mx[h], x);
      }
    float alpha[2], mu[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      const float mn = fmaxf(m[h], mx[h]);
      mu[h] = mn == -INFINITY ? 0.f : mn;
      alpha[h] = exp2f(m[h] - mu[h]);
      m[h] = mn;
    }
    float rs[2] = {0.f, 0.f};
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float e2 = exp2f(sc[j][e] - mu[e >> 1]);
        sc[j][e] = e2;
        rs[e >> 1] += e2;
      }
    l[0] = l[0] * alpha[0] + rs[0];
    l[1] = l[1] * alpha[1] + rs[1];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      o[n][0] *= alpha[0];
      o[n][1] *= alpha[0];
      o[n][2] *= alpha[1];
      o[n][3] *= alpha[1];
    }
    const uint32_t pa[4] = {pack_bf16(sc[0][0], sc[0][1]), pack_bf16(sc[0][2], sc[0][3]),
                            pack_bf16(sc[1][0], sc[1][1]), pack_bf16(sc[1][2], sc[1][3])};
#pragma unroll
    for (int nn = 0; nn < D / 16; ++nn) {
      uint32_t vb[4];
      ldmatrix_x4_trans(vb, v_at(8 * (mi & 1) + mr, nn * 16 + 8 * (mi >> 1)));
      mma16816(o[2 * nn], pa, vb[0], vb[1]);
      mma16816(o[2 * nn + 1], pa, vb[2], vb[3]);
    }
  }
};

// Per-row max and sum over the 4 warps that split one head's stage, by warp: the epilogue's reduction inputs.
template <int WARPS>
struct WarpStats {
  float m[WARPS][kRows], l[WARPS][kRows];
};

// The epilogue, all threads: the verdict on the block ids (one CTA-wide OR; every CTA of a sequence reads the same
// key range, so all reach the same verdict), then for each of the CTA's HEADS heads its 4 warps' (m, l, O) merged in
// warp order through shared memory (`merge`, 4 HEADS x 16 x (D + 4) f32, free once the loop is done). One split: bf16
// rows of out. Several: normalized f32 O, the base-2 log-sum-exp of each row and the CTA's status word into the
// workspace, for the combine kernel. A bad sequence with one split writes nothing and is counted here.
template <int D, int HEADS>
__device__ __forceinline__ void write_rows(const L4kAttentionParams& p, const Layout& ws, const Seq& s, const Cta& c,
                                          const RowTile& t, WarpSoftmax<D>& w, bool bad_block, float* merge,
                                          WarpStats<4 * HEADS>& st, int tid) {
  constexpr int kWarps = 4 * HEADS, kThreads = 32 * kWarps;
  const int lane = tid & 31, warp = tid >> 5, fr = lane >> 2, fc = lane & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    w.l[h] += __shfl_xor_sync(0xffffffffu, w.l[h], 1);
    w.l[h] += __shfl_xor_sync(0xffffffffu, w.l[h], 2);
    if (fc == 0) {
      st.m[warp][fr + 8 * h] = w.m[h];
      st.l[warp][fr + 8 * h] = w.l[h];
    }
  }
  const bool any_bad = __syncthreads_or(bad_block);
  if (any_bad && c.splits == 1) {
    if (c.reporter && tid == 0 && p.bad_seqs != nullptr) atomicAdd(p.bad_seqs, 1u);
    return;
  }
  const int w0 = warp & ~3;  // the first warp of this warp's head
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = fr + 8 * h;
    float mm = -INFINITY;
#pragma unroll
    for (int i = 0; i < 4; ++i) mm = fmaxf(mm, st.m[w0 + i][row]);
    const float mu = mm == -INFINITY ? 0.f : mm;
    float ll = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) ll += st.l[w0 + i][row] * exp2f(st.m[w0 + i][row] - mu);
    const float f = ll > 0.f ? exp2f(w.m[h] - mu) / ll : 0.f;
    float* dst = merge + (warp * kRows + row) * (D + 4);
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<float2*>(dst + n * 8 + 2 * fc) = make_float2(w.o[n][2 * h] * f, w.o[n][2 * h + 1] * f);
  }
  __syncthreads();

  bf16* out = static_cast<bf16*>(p.out);
  float* o_part = static_cast<float*>(p.workspace);
  constexpr int kPerHead = kRows * D / 4;
  for (int idx = tid; idx < HEADS * kPerHead; idx += kThreads) {
    const int hh = idx / kPerHead, rem = idx % kPerHead;
    const int row = rem / (D / 4), col = (rem % (D / 4)) * 4, r = t.r0 + row;
    if (r >= t.rows) continue;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float4 v = *reinterpret_cast<const float4*>(merge + ((hh * 4 + i) * kRows + row) * (D + 4) + col);
      acc.x += v.x, acc.y += v.y, acc.z += v.z, acc.w += v.w;
    }
    const int qi = r / c.group, h = (c.kv0 + hh) * c.group + r % c.group;
    if (c.splits == 1) {
      __nv_bfloat162 lo2 = __floats2bfloat162_rn(acc.x, acc.y), hi2 = __floats2bfloat162_rn(acc.z, acc.w);
      uint2 raw = make_uint2(*reinterpret_cast<uint32_t*>(&lo2), *reinterpret_cast<uint32_t*>(&hi2));
      *reinterpret_cast<uint2*>(out + ((int64_t(s.q0) + qi) * p.n_heads + h) * D + col) = raw;
    } else {
      const int64_t prow = ((int64_t(c.split) * p.batch + c.b) * p.max_q_len + qi) * p.n_heads + h;
      *reinterpret_cast<float4*>(o_part + prow * D + col) = acc;
    }
  }
  if (c.splits > 1) {
    if (tid < HEADS * kRows && t.r0 + tid % kRows < t.rows) {
      const int hh = tid / kRows, row = tid % kRows, r = t.r0 + row, g = c.kv0 + hh;
      float mm = -INFINITY;
      for (int i = 0; i < 4; ++i) mm = fmaxf(mm, st.m[hh * 4 + i][row]);
      const float mu = mm == -INFINITY ? 0.f : mm;
      float ll = 0.f;
      for (int i = 0; i < 4; ++i) ll += st.l[hh * 4 + i][row] * exp2f(st.m[hh * 4 + i][row] - mu);
      const int64_t prow =
          ((int64_t(c.split) * p.batch + c.b) * p.max_q_len + r / c.group) * p.n_heads + g * c.group + r % c.group;
      reinterpret_cast<float*>(static_cast<char*>(p.workspace) + ws.lse_off)[prow] =
          ll > 0.f ? mu + log2f(ll) : -INFINITY;
    }
    if (tid < HEADS) {
      int* status = reinterpret_cast<int*>(static_cast<char*>(p.workspace) + ws.status_off);
      status[((int64_t(c.split) * p.batch + c.b) * p.n_kv_heads + c.kv0 + tid) * c.n_rt + c.rt] = any_bad ? 1 : 0;
    }
  }
}

}  // namespace decode
}  // namespace l4k
