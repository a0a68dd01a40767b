// Decode attention over the paged KV cache (contract: kernels/attention_params.h), split along the keys
// (flash-decoding) with a combine step. This file: the launcher (which loop, the grid, the tensor maps) and the C
// entry points; attention_decode/ holds the rest:
// - plan.cuh: the key splits (host) and the workspace they need;
// - tile.cuh: one CTA's place, the sequence checks, the per-warp online softmax (mma.sync), the epilogue;
// - tma.cuh: the main loop whose 64-key stages arrive as tensor-map boxes (the path where the layout allows it);
// - cp_async.cuh: the main loop of 16-byte cp.async copies addressed key by key (every other layout);
// - combine.cuh: the merge of the splits.
//
// Work split. One CTA = (sequence b, 1 or 2 KV heads, row tile rt, key split s). Its rows are the (query, head)
// pairs of a KV group g, r = qi * group + j for query qi and head g * group + j: with Llama 4's 40/8 heads and one
// query per sequence, the 5 heads of a group are rows 0..4 of one 16-row tile, so K and V are read once for all of
// them (q_len <= 3 keeps one tile; longer speculative runs take ceil(5 q_len / 16) tiles, each reading K/V). The
// sequence's key range [lo(first query), seq_len) is cut into 64-key tiles, the tiles into `splits` contiguous runs
// (chosen on the host from batch, KV heads, the longest range and the SM count: no sync).
//
// Main loop. 4 warps per KV head, warp w owning keys 16w .. 16w + 15 of every 64-key stage with its own
// online-softmax state: S = Q K^T and O += P V are mma.sync m16n8k16 (bf16 in, f32 accumulate), Q in registers for
// the whole loop, K via ldmatrix and V via ldmatrix.trans. Both loops run the same math on the same split plan in
// the same order: their outputs are identical bit for bit (tests/gpu/attention_decode.rs checks it), so which one
// a layout takes changes only the time. The choice is paged_kv::key_tile_path, the prefill kernel's rule.
//
// Epilogue. The warps of a head merge their (m, l, O) through shared memory. One split: the CTA writes bf16 rows
// of out directly. Several: it writes the normalized f32 O and the base-2 log-sum-exp of each row and a status word
// (bad block seen or not) to the workspace, and the combine kernel merges the splits. Every CTA of a sequence reads
// the same key range, so all of them reach the same verdict on its block ids: a bad sequence writes none of its rows
// and is counted once in bad_seqs.
//
// PDL (kernels/pdl.cuh): both kernels are launched with it; every thread waits for the previous kernel (rope's
// cache writes for the split kernel, the split kernel's partials for the combine) before its first global access,
// ahead of every early exit.
#include <math.h>

#include <utility>

#include "attention_decode/combine.cuh"
#include "attention_decode/cp_async.cuh"
#include "attention_decode/plan.cuh"
#include "attention_decode/tile.cuh"
#include "attention_decode/tma.cuh"
#include "attention_params.h"
#include "common.cuh"
#include "paged_kv_tma.cuh"
#include "pdl.cuh"

namespace l4k {
namespace decode {

// The dynamic shared memory `kernel` needs, with the largest carveout (two cp.async CTAs of ~105 KB, or one TMA CTA
// of ~193 KB, only fit with it).
template <typename Kernel>
cudaError_t set_smem(Kernel kernel, size_t smem) {
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e == cudaSuccess)
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                             int(cudaSharedmemCarveoutMaxShared));
  return e;
}

// The combine kernel after a split main loop (nothing when the keys are not split).
template <int D>
cudaError_t launch_combine(const L4kAttentionParams& p, const Plan& pl, cudaStream_t stream) {
  if (pl.splits <= 1) return cudaSuccess;
  const int64_t rows = int64_t(p.batch) * p.max_q_len * p.n_heads;
  const int64_t blocks = (rows + kCombineWarps - 1) / kCombineWarps;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const LaunchShape combine{dim3(unsigned(blocks)), dim3(kCombineWarps * 32)};
  return launch_pdl(combine_kernel<D>, combine, stream, p, pl.splits, pl.row_tiles, kTileKeys, pl.ws);
}

// A main loop of `ctas` CTAs, then the combine kernel when the keys are split.
template <int D, typename... Params, typename... Args>
int launch_main(void (*kernel)(Params...), int64_t ctas, int threads, size_t smem, const L4kAttentionParams& p,
                const Plan& pl, cudaStream_t stream, Args&&... args) {
  if (ctas > 0x7fffffff) return static_cast<int>(cudaErrorInvalidConfiguration);
  cudaError_t e = set_smem(kernel, smem);
  if (e != cudaSuccess) return static_cast<int>(e);
  LaunchShape shape{dim3(unsigned(ctas)), dim3(threads)};
  shape.smem = smem;
  e = launch_pdl(kernel, shape, stream, p, std::forward<Args>(args)..., pl.splits, pl.row_tiles, pl.ws);
  if (e == cudaSuccess) e = launch_combine<D>(p, pl, stream);
  return launch_result(e);
}

template <int D>
int launch_cp_async(const L4kAttentionParams& p, const Plan& pl, cudaStream_t stream) {
  const int64_t ctas = int64_t(p.batch) * p.n_kv_heads * pl.row_tiles * pl.splits;
  return launch_main<D>(decode_kernel<D>, ctas, cp_async::kThreads, cp_async::smem_bytes<D>(), p, pl, stream);
}

template <int D, int HEADS>
int launch_tma(const L4kAttentionParams& p, const Plan& pl, const CUtensorMap& tm_k, const CUtensorMap& tm_v,
               cudaStream_t stream) {
  const int64_t ctas = int64_t(p.batch) * (p.n_kv_heads / HEADS) * pl.row_tiles * pl.splits;
  return launch_main<D>(decode_tma_kernel<D, HEADS>, ctas, tma::kThreads<HEADS>, tma::smem_bytes<D, HEADS>(), p, pl,
                        stream, tm_k, tm_v);
}

// The plan for p on the current device, with the workspace checked against it.
inline int plan_for(const L4kAttentionParams& p, int d, Plan* pl) {
  int sms = 0;
  const cudaError_t e = sm_count(&sms);
  if (e != cudaSuccess) return static_cast<int>(e);
  *pl = plan(p.batch, p.n_heads, p.n_kv_heads, d, p.max_q_len, p.max_blocks * p.block_size, p.chunk, sms);
  if (pl->ws.total > p.workspace_bytes || (pl->ws.total > 0 && p.workspace == nullptr)) return L4K_STATUS_BAD_WORKSPACE;
  return 0;
}

template <int D>
int launch(const L4kAttentionParams& p, cudaStream_t stream) {
  Plan pl;
  const int code = plan_for(p, D, &pl);
  if (code != 0) return code;
  // Decode reads every K/V byte once: no L2 promotion.
  CUtensorMap tm_k, tm_v;
  if (paged_kv::key_tile_path(p, &tm_k, &tm_v, CU_TENSOR_MAP_L2_PROMOTION_NONE) == L4K_PREFILL_PATH_TMA)
    return p.n_kv_heads % 2 == 0 ? launch_tma<D, 2>(p, pl, tm_k, tm_v, stream)
                                 : launch_tma<D, 1>(p, pl, tm_k, tm_v, stream);
  return launch_cp_async<D>(p, pl, stream);
}

}  // namespace decode
}  // namespace l4k

// The launcher's plan for these sizes on a device of `sms` SMs (ops/attention_decode.rs asks the current device's
// count through l4k_internal_current_sm_count, tests pass one): the key splits (1: no combine step) and the workspace
// bytes (0 when the keys are not split). max_kv_len = max_blocks * block_size; chunk as in L4kAttentionParams. The
// same plan whichever main loop runs.
extern "C" void l4k_internal_attention_decode_plan(int32_t batch, int32_t n_heads, int32_t n_kv_heads,
                                                   int32_t head_dim, int32_t max_q_len, int32_t max_kv_len,
                                                   int32_t chunk, int32_t sms, int32_t* splits,
                                                   int64_t* workspace_bytes) {
  const auto pl = l4k::decode::plan(batch, n_heads, n_kv_heads, head_dim, max_q_len, max_kv_len, chunk, sms);
  *splits = pl.splits;
  *workspace_bytes = pl.ws.total;
}

// The current device's SM count into *sms; a cudaError_t (no device: an error, never a guess).
extern "C" int l4k_internal_current_sm_count(int32_t* sms) {
  int n = 0;
  const cudaError_t e = l4k::decode::sm_count(&n);
  *sms = n;
  return static_cast<int>(e);
}

// The caller (ops/attention_decode.rs) validated the shapes; batch, max_q_len > 0.
extern "C" int l4k_launch_attention_decode(const L4kAttentionParams* p, cudaStream_t stream) {
  switch (p->head_dim) {
    case 64: return l4k::decode::launch<64>(*p, stream);
    case 128: return l4k::decode::launch<128>(*p, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}
