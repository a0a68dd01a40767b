#!/usr/bin/env bash
# Session 16's GPU commands (results in bench/results/h100-session16/: no H200 could be started), on the GPU
# machine from the repository root with gpu-bundle carried. Here first: scripts/stage-gpu.sh, then the bundle cut to fit the 64 MiB limit with the
# tree (cutlass-include.tar.xz removed; bin.tar.xz keeps the test binaries, abi_smoke, llama4-bench,
# bench-attention_decode and bench-linear).
#   scripts/gpu-session16.sh check   every GPU test (session 15's route_fp8 tests and gpu_model test had not run on
#                                    an H200); memcheck and racecheck over the bounded GEMV, linear_fp8_on_bf16 and
#                                    route_fp8 tests; Scout decode b1 at ctx 8192 in two interleaved rounds: Meta with
#                                    the shared expert's gate_up GEMV unbounded and bounded (--shared-gemv-ctas
#                                    L4K_CTAS), --fp8-dense with and without --quant-in-gemv; then --fused-routing
#                                    without and with a bound; the linear bench's quant + FP8 linear against the
#                                    quantizing one at one row; synccheck and initcheck last
#   scripts/gpu-session16.sh ab      on the H200: every GPU test, sanitizers over the new kernels' tests, the batch-1
#                                    A/Bs of check on the 48-layer model, the decode attention bench with SDPA
#   scripts/gpu-session16.sh all     ab, then Scout decode b1 / b8 with the peer (as final without its tests)
#   scripts/gpu-session16.sh final   Scout decode with the peer (L4K_SCOUT_CASES, L4K_SCOUT_FLAGS for ours); every
#                                    GPU test first when L4K_TESTS=1
source "$(dirname "$0")/gpu-helpers.sh"
# One Scout run of ours: llama4-bench with the given flags (L4K_LAYERS: fewer layers, for an 80 GB H100), its
# table rows and timeline kept.
ours() {
  local tag=$1
  shift
  timeout 100 $bundle/bin/llama4-bench --synthetic scout ${L4K_LAYERS:+--layers $L4K_LAYERS} "$@" --cases decode --batches ${L4K_BATCHES:-1,8} \
    --contexts 8192 --json $OUT/scout-ab.jsonl > /tmp/s.log 2>&1
  echo "$tag ($*) rc $?"
  cat /tmp/s.log >> $OUT/scout.log
  grep -E "\| +[0-9.]+ +[0-9.]+ +[0-9.]+ \||layer 24" /tmp/s.log | cut -c1-330
}
case "${1:-}" in
  check)
    all_tests
    test_report
    sanitize "linear::bounded linear_fp8_on_bf16 router_fused" "memcheck racecheck"
    # Batch 1 only: the bound applies to the one-row GEMV, the in-GEMV quantization to one-row FP8 linears.
    export L4K_BATCHES=1
    for round in 1 2; do
      # L4K_QUICK=1: the quantizing GEMV's A/B only (the bound's ran in call 1).
      for c in $([[ ${L4K_QUICK:-0} == 1 ]] || echo 0 ${L4K_CTAS:-132 264}); do
        flag=$([[ $c == 0 ]] || echo "--shared-gemv-ctas $c")
        ours "round $round meta ctas $c" $flag
      done
      ours "round $round fp8-dense" --fp8-dense
      ours "round $round fp8-dense quant-in-gemv" --fp8-dense --quant-in-gemv
    done
    L4K_BENCH_JSON=$OUT/linear.jsonl timeout 90 $bundle/bin/bench-linear --bench --noplot 'fp8_(quant|on_bf16)/' \
      > /tmp/linear.log 2>&1
    echo "bench-linear rc $?"
    awk '/^linear\//{id=$1} /time:/{print id, $4, $5}' /tmp/linear.log
    if [[ ${L4K_QUICK:-0} != 1 ]]; then
      ours "fused routing" --fused-routing
      ours "fused routing ctas ${L4K_FUSED_CTAS:-132}" --fused-routing --shared-gemv-ctas ${L4K_FUSED_CTAS:-132}
    fi
    sanitize "linear::bounded linear_fp8_on_bf16 router_fused" "synccheck initcheck"
    (cd $OUT && tar -cJf logs.tar.xz scout.log san.log && rm scout.log san.log)
    ;;
  ab)
    # The H200 call before the final one: every GPU test, the four sanitizers over the quantizing linear's tests
    # (memcheck and racecheck over the bounded GEMV's and route_fp8's), the batch-1 A/Bs of check on the 48-layer
    # model, the decode attention bench with SDPA in the same process group.
    all_tests
    sanitize "linear_fp8_on_bf16" "memcheck racecheck synccheck initcheck"
    sanitize "linear::bounded router_fused" "memcheck racecheck"
    export L4K_BATCHES=1
    for round in 1 2; do
      ours "round $round meta" && ours "round $round meta ctas 264" --shared-gemv-ctas 264
      ours "round $round fp8-dense" --fp8-dense && ours "round $round fp8-dense quant-in-gemv" --fp8-dense --quant-in-gemv
    done
    ours "meta ctas 132" --shared-gemv-ctas 132
    ours "fused routing" --fused-routing && ours "fused routing ctas 132" --fused-routing --shared-gemv-ctas 132
    L4K_BENCH_JSON=$OUT/attention.jsonl timeout 150 $bundle/bin/bench-attention_decode --bench --noplot 'causal/' > $OUT/attention.log 2>&1
    echo "bench-attention_decode rc $?"
    timeout 120 python3 $bundle/peers/torch_attention_decode.py --json $OUT/attention-peer.jsonl >> $OUT/attention.log 2>&1
    echo "torch_attention_decode rc $?"
    awk '/^attention_decode\//{id=$1} /time:/{print id, $4, $5}' $OUT/attention.log
    grep -iE "sdpa|enable_gqa" $OUT/attention.log | head -12
    (cd $OUT && tar -cJf logs.tar.xz scout.log san.log attention.log attention.jsonl attention-peer.jsonl &&
      rm scout.log san.log attention.log attention.jsonl attention-peer.jsonl)
    test_report
    ;;
  all)
    # One H200 call for everything: ab, then Scout decode b1 / b8 with the peer on the default step (final).
    "$0" ab
    scout
    (cd $OUT && tar -cJf scout-logs.tar.xz scout.log scout-peer.log scout-ours.jsonl scout-peer.jsonl &&
      rm scout.log scout-peer.log scout-ours.jsonl scout-peer.jsonl)
    ;;
  final)
    # Scout decode b1 / b8 (and L4K_SCOUT_CASES) with the peer, both recipes; every GPU test when L4K_TESTS=1.
    [[ ${L4K_TESTS:-0} == 1 ]] && all_tests
    scout
    (cd $OUT && tar -cJf logs.tar.xz scout.log scout-peer.log && rm scout.log scout-peer.log)
    [[ ${L4K_TESTS:-0} == 1 ]] && test_report
    ;;
  *) echo "usage: $0 check|ab|all|final" >&2; exit 2 ;;
esac
