#!/usr/bin/env bash
# Session 16's GPU commands (results in bench/results/h100-session16/: no H200 could be started), on the GPU
# machine from the repository root with gpu-bundle carried. Here first: scripts/stage-gpu.sh, then the bundle cut
# to fit the 64 MiB limit with the tree (cutlass-include.tar.xz removed; bin.tar.xz keeps the test binaries,
# abi_smoke, llama4-bench and bench-attention_decode). The two H100 calls (`L4K_LAYERS=24 ... check`, the second
# with L4K_QUICK=1) ran this script as of commit 68833f0, which also had the quantizing FP8 GEMV's A/B
# (--fp8-dense --quant-in-gemv, and bench-linear's fp8_quant / fp8_on_bf16 rows); that kernel was removed after
# call 2 (kernels/NOTES.md).
#   scripts/gpu-session16.sh check   every GPU test; memcheck and racecheck over the bounded GEMV's and route_fp8's
#                                    tests; Scout decode b1 at ctx 8192 (L4K_LAYERS: fewer layers, for an 80 GB
#                                    H100), two interleaved rounds of Meta with the shared expert's gate_up GEMV
#                                    unbounded and bounded (--shared-gemv-ctas L4K_CTAS), then --fused-routing
#                                    without and with a bound; synccheck and initcheck last
#   scripts/gpu-session16.sh ab      on the H200: check on the 48-layer model, then the decode attention bench with
#                                    SDPA in the same command
#   scripts/gpu-session16.sh final   Scout decode with the peer (L4K_SCOUT_CASES, L4K_SCOUT_FLAGS for ours); every
#                                    GPU test first when L4K_TESTS=1
source "$(dirname "$0")/gpu-helpers.sh"
# One Scout run of ours: llama4-bench with the given flags, its table rows and timeline kept.
ours() {
  local tag=$1
  shift
  timeout 100 $bundle/bin/llama4-bench --synthetic scout ${L4K_LAYERS:+--layers $L4K_LAYERS} "$@" --cases decode \
    --batches 1 --contexts 8192 --json $OUT/scout-ab.jsonl > /tmp/s.log 2>&1
  echo "$tag ($*) rc $?"
  cat /tmp/s.log >> $OUT/scout.log
  grep -E "\| +[0-9.]+ +[0-9.]+ +[0-9.]+ \||layer 24" /tmp/s.log | cut -c1-330
}
# Every GPU test, the sanitizers, the batch-1 A/Bs (the bound applies to the one-row GEMV).
check() {
  all_tests
  test_report
  sanitize "linear::bounded router_fused" "memcheck racecheck"
  for round in 1 2; do
    for c in 0 ${L4K_CTAS:-132 264}; do
      ours "round $round meta ctas $c" $([[ $c == 0 ]] || echo "--shared-gemv-ctas $c")
    done
  done
  ours "fused routing" --fused-routing
  ours "fused routing ctas ${L4K_FUSED_CTAS:-132}" --fused-routing --shared-gemv-ctas ${L4K_FUSED_CTAS:-132}
  sanitize "linear::bounded router_fused" "synccheck initcheck"
}
case "${1:-}" in
  check)
    check
    (cd $OUT && tar -cJf logs.tar.xz scout.log san.log && rm scout.log san.log)
    ;;
  ab)
    check
    L4K_BENCH_JSON=$OUT/attention.jsonl timeout 150 $bundle/bin/bench-attention_decode --bench --noplot 'causal/' \
      > $OUT/attention.log 2>&1
    echo "bench-attention_decode rc $?"
    timeout 120 python3 $bundle/peers/torch_attention_decode.py --json $OUT/attention-peer.jsonl >> $OUT/attention.log 2>&1
    echo "torch_attention_decode rc $?"
    awk '/^attention_decode\//{id=$1} /time:/{print id, $4, $5}' $OUT/attention.log
    grep -iE "sdpa|enable_gqa" $OUT/attention.log | head -12
    (cd $OUT && tar -cJf logs.tar.xz scout.log san.log attention.log attention.jsonl attention-peer.jsonl &&
      rm scout.log san.log attention.log attention.jsonl attention-peer.jsonl)
    ;;
  final)
    [[ ${L4K_TESTS:-0} == 1 ]] && all_tests
    scout
    (cd $OUT && tar -cJf logs.tar.xz scout.log scout-peer.log && rm scout.log scout-peer.log)
    [[ ${L4K_TESTS:-0} == 1 ]] && test_report
    ;;
  *) echo "usage: $0 check|ab|final" >&2; exit 2 ;;
esac
