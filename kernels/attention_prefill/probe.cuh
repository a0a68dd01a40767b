// The prefill kernel's phase hooks. The production kernel instantiates NoProbe, whose hooks compile to nothing;
// bench/experiments/attention_prefill_probe.cu instantiates its own policy (%globaltimer stamps per CTA) to see
// where a CTA's time goes. A policy provides:
//   static __device__ void stamp(ProbePoint point, bool cond);  // cond: this thread records the point
//   static __device__ void tiles(bool cond, int n_tiles);       // the CTA's key-tile count
#pragma once

namespace l4k {
namespace attn_prefill {

enum ProbePoint : int {
  kProbeStart = 0,        // thread 0, the CTA's first instruction
  kProbeChecked = 1,      // producer thread 0, the block-id verdict passed
  kProbeFirstData = 2,    // consumer warpgroup 0's first thread, Q and K_0 landed
  kProbeLoopEnd = 3,      // consumer warpgroup 0, last product retired
  kProbeEnd = 4,          // consumer warpgroup 0, output stored
  kProbeLoopEndWg1 = 5,   // consumer warpgroup 1, last product retired
  kProbeEndWg1 = 7,       // consumer warpgroup 1, output stored
};

struct NoProbe {
  static __device__ __forceinline__ void stamp(ProbePoint, bool) {}
  static __device__ __forceinline__ void tiles(bool, int) {}
};

}  // namespace attn_prefill
}  // namespace l4k
