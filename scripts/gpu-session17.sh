#!/usr/bin/env bash
# Session 17's GPU commands (none ran: no device machine could be started, then loans were paused), for the H200,
# from the repository root with gpu-bundle carried. Here first: scripts/stage-gpu.sh (it builds the kernel tracer
# into gpu-bundle/trace), then the bundle cut to fit the 64 MiB limit with the tree (cutlass-include.tar.xz
# removed; bin.tar.xz keeps the test binaries, abi_smoke, llama4-bench and bench-rmsnorm). Two calls back to back on one warm
# machine:
#   scripts/gpu-session17.sh check   every GPU test; a kernel trace of the batch-1 decode step (bench/trace/, both
#                                    recipes and Meta with the shared expert in line: each kernel's GPU start and
#                                    end inside the replayed graph); batch-1 A/Bs on the 48-layer Scout at ctx 8192: fp8-dense with the norms' FP8 copy
#                                    (--norm-fp8) and with quant_fp8, two interleaved rounds; Meta with the shared
#                                    expert's bounded grid (--shared-gemv-ctas) and fused routing; both recipes with
#                                    the shared expert in line (--no-overlap), last re-measured in session 11
#   scripts/gpu-session17.sh trace   the three kernel traces alone (L4K_LAYERS: fewer layers, for an 80 GB H100)
#   scripts/gpu-session17.sh final   Scout decode b1/b8 at 8192 and the 8192-token prefill with the peer, both
#                                    recipes (L4K_SCOUT_FLAGS: ours' flags); then the sanitizers over the tests of
#                                    the bounded GEMV, route_fp8, the norms' FP8 copy and permute; the add_rmsnorm
#                                    bench rows (with the FP8 copy, and add_rmsnorm then quant_fp8)
source "$(dirname "$0")/gpu-helpers.sh"
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0)) s] $*"; }
# One batch-1 Scout run of ours at ctx 8192: llama4-bench with the given flags, its table row and timeline kept.
ours() {
  local tag=$1
  shift
  timeout 100 $bundle/bin/llama4-bench --synthetic scout ${L4K_LAYERS:+--layers $L4K_LAYERS} "$@" --cases decode --batches 1 --contexts 8192 \
    --json $OUT/scout-ab.jsonl > /tmp/s.log 2>&1
  echo "$tag ($*) rc $?"
  cat /tmp/s.log >> $OUT/scout-ab.log
  grep -E "\| +[0-9.]+ +[0-9.]+ +[0-9.]+ \||layer 24" /tmp/s.log | cut -c1-330
}
# The batch-1 step of one recipe under the CUPTI kernel trace: its table row, then step_trace.py's summary.
trace() {
  local recipe=$1
  shift
  LD_LIBRARY_PATH=$bundle/trace:$LD_LIBRARY_PATH CUDA_INJECTION64_PATH=$root/$bundle/trace/libl4k_trace.so \
    L4K_TRACE=/tmp/trace-$recipe.csv timeout 120 $bundle/bin/llama4-bench --synthetic scout ${L4K_LAYERS:+--layers $L4K_LAYERS} \
    "$@" --cases decode \
    --batches 1 --contexts 8192 --steps 10 > /tmp/t.log 2>&1
  echo "trace $recipe rc $? ($(wc -l < /tmp/trace-$recipe.csv) kernels)"
  cat /tmp/t.log >> $OUT/trace.log
  grep -E "\| +[0-9.]+ +[0-9.]+ +[0-9.]+ \||l4k_trace" /tmp/t.log | cut -c1-200
  python3 bench/trace/step_trace.py /tmp/trace-$recipe.csv --json $OUT/trace-$recipe.json > $OUT/trace-$recipe.txt 2>&1
  head -45 $OUT/trace-$recipe.txt | cut -c1-110
  xz -T0 -1 -c /tmp/trace-$recipe.csv > /tmp/trace-$recipe.csv.xz
}
case "${1:-}" in
  check)
    all_tests; stamp tests
    trace meta; trace fp8-dense --fp8-dense; trace meta-inline --no-overlap; stamp traces
    for round in 1 2; do
      ours "round $round fp8-dense, norms' FP8 copy" --fp8-dense --norm-fp8; ours "round $round fp8-dense, quant_fp8" --fp8-dense
    done
    ours "meta" ; ours "meta ctas 264" --shared-gemv-ctas 264; ours "meta fused routing" --fused-routing
    ours "meta, shared expert in line" --no-overlap; ours "fp8-dense, shared expert in line" --fp8-dense --no-overlap
    stamp ab
    # $OUT returns at most 8 files: the traces and logs travel in one archive.
    (cd $OUT && cp /tmp/trace-*.csv.xz . && tar -cJf logs.tar.xz scout-ab.log trace.log trace-*.txt trace-*.json \
      trace-*.csv.xz && rm scout-ab.log trace.log trace-*.txt trace-*.json trace-*.csv.xz)
    test_report
    ;;
  trace)
    trace meta; trace fp8-dense --fp8-dense; trace meta-inline --no-overlap; stamp traces
    (cd $OUT && cp /tmp/trace-*.csv.xz . && tar -cJf logs.tar.xz trace.log trace-*.json && rm trace.log trace-*.json)
    ;;
  final)
    L4K_SCOUT_CASES=${L4K_SCOUT_CASES:-decode,prefill} scout; stamp scout
    L4K_SAN_TIMEOUT=45 sanitize "linear::bounded router_fused rmsnorm::the_fp8 permute" "memcheck racecheck initcheck"
    L4K_SAN_TIMEOUT=45 sanitize "linear::bounded router_fused rmsnorm::the_fp8" "synccheck"
    stamp sanitizers
    L4K_BENCH_JSON=$OUT/rmsnorm.jsonl timeout 90 $bundle/bin/bench-rmsnorm --bench --noplot 'rmsnorm/add' \
      > $OUT/rmsnorm.log 2>&1
    echo "bench-rmsnorm rc $?"
    awk '/^rmsnorm\//{id=$1} /time:/{print id, $4, $5}' $OUT/rmsnorm.log
    (cd $OUT && tar -cJf logs.tar.xz scout.log scout-peer.log san.log rmsnorm.log &&
      rm scout.log scout-peer.log san.log rmsnorm.log)
    ;;
  *) echo "usage: $0 check|trace|final" >&2; exit 2 ;;
esac
