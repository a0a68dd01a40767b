#!/usr/bin/env bash
# Session 13's GPU commands (results in bench/results/h200-session13/), on the GPU machine from the repository root
# with gpu-bundle carried. Here first: scripts/stage-gpu.sh, then the bundle cut to fit the 64 MiB limit with the
# tree (cutlass-include.tar.xz removed; bin.tar.xz keeps the test binaries, abi_smoke, llama4-bench and
# bench-{linear,grouped_gemm,permute}).
#   scripts/gpu-session13.sh check   every GPU test; the linear bench at m = 1 (Auto, cuBLASLt as its peer, the
#                                    GEMV forced, FP8) with the routers; Scout decode b1 / b8 at ctx 8192, ours and
#                                    the PyTorch composition, both recipes; memcheck + racecheck over the GEMV tests
#                                    (L4K_SAN_TESTS: which tests; bench-permute: unpermute and its fused norm)
#   scripts/gpu-session13.sh final   every GPU test, Scout decode, synccheck + initcheck over the fused unpermute
#   scripts/gpu-session13.sh scout   Scout decode only (as in check)
set -u
root=$(pwd) bundle=gpu-bundle
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
export L4K_EXPECT_GPU=1 L4K_FIXTURES="$root/reference-model/fixtures" CRITERION_HOME=/tmp/l4k-criterion
scout() {
  # L4K_SCOUT_CASES=decode,prefill adds the 8192-token prefill.
  local cases=${L4K_SCOUT_CASES:-decode}
  for recipe in meta fp8-dense; do
    flag=$([[ $recipe == fp8-dense ]] && echo --fp8-dense || true)
    timeout 150 $bundle/bin/llama4-bench --synthetic scout $flag --cases $cases --batches 1,8 --contexts 8192 \
      --prompts 8192 --json $OUT/scout-ours.jsonl >> $OUT/scout.log 2>&1; echo "ours $recipe rc $?"
    timeout 150 python3 $bundle/peers/torch_scout.py $flag --cases $cases --batches 1,8 --contexts 8192 \
      --prompts 8192 --json $OUT/scout-peer.jsonl >> $OUT/scout-peer.log 2>&1; echo "peer $recipe rc $?"
  done
  python3 $bundle/peers/model_report.py $OUT/scout-ours.jsonl $OUT/scout-peer.jsonl > $OUT/scout.md 2>> $OUT/scout.log
  cut -c1-250 $OUT/scout.md
}
case "${1:-}" in
  check)
    (cd gpu-bundle && ./run.sh tests >/dev/null 2>&1)
    cp $OUT/summary.txt $OUT/tests-summary.txt
    L4K_BENCH_JSON=$OUT/linear.jsonl timeout 150 $bundle/bin/bench-linear --bench --noplot 'linear/.*/m1$' > $OUT/linear.log 2>&1
    echo "bench-linear rc $?"
    L4K_BENCH_JSON=$OUT/linear.jsonl timeout 90 $bundle/bin/bench-permute --bench --noplot 'permute/unpermute' >> $OUT/linear.log 2>&1
    echo "bench-permute rc $?"
    scout
    for tool in memcheck racecheck; do
      for t in ${L4K_SAN_TESTS:-linear_gemv gemv_at_decode}; do
        PROPTEST_CASES=3 timeout 90 compute-sanitizer --tool $tool --error-exitcode 99 --print-limit 10 \
          $bundle/bin/test-gpu --include-ignored --test-threads=1 $t >> $OUT/san.log 2>&1
        echo "sanitizer $tool ($t): rc $? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test result' $OUT/san.log | tail -2 | tr '\n' ' ')"
      done
    done
    rm -f $OUT/summary.txt
    (cd $OUT && tar -cJf logs.tar.xz scout.log scout-peer.log san.log linear.log && rm scout.log scout-peer.log san.log linear.log)
    awk '/^(linear|permute)\//{id=$1} /time:/{print id, $4, $5}' <(tar -xJOf $OUT/logs.tar.xz linear.log) | grep -E "/m1 |unpermute"
    grep -E "^test |abi_smoke" $OUT/tests-summary.txt
    log=$OUT/tests.log
    [[ -f $log ]] || { tar -C /tmp -xJf $OUT/results.tar.xz 2>/dev/null; log=/tmp/tests.log; }
    grep -E "^test .*FAILED|panicked at" -A3 $log 2>/dev/null | grep -v "^stack\|^note" | head -24
    ;;
  final)
    # The closing tree: every GPU test, Scout decode b1 / b8 with the peer, synccheck + initcheck over the fused
    # unpermute + norm (memcheck and racecheck ran in check); the test summary last.
    (cd gpu-bundle && ./run.sh tests >/dev/null 2>&1)
    cp $OUT/summary.txt $OUT/tests-summary.txt
    scout
    for tool in synccheck initcheck; do
      PROPTEST_CASES=3 timeout 90 compute-sanitizer --tool $tool --error-exitcode 99 --print-limit 10 \
        $bundle/bin/test-gpu --include-ignored --test-threads=1 permute_and_unpermute >> $OUT/san.log 2>&1
      echo "sanitizer $tool (permute_and_unpermute): rc $? $(grep -E 'ERROR SUMMARY|test result' $OUT/san.log | tail -2 | tr '\n' ' ')"
    done
    rm -f $OUT/summary.txt
    (cd $OUT && tar -cJf logs.tar.xz scout.log scout-peer.log san.log && rm scout.log scout-peer.log san.log)
    grep -E "^test |abi_smoke" $OUT/tests-summary.txt
    log=$OUT/tests.log
    [[ -f $log ]] || { tar -C /tmp -xJf $OUT/results.tar.xz 2>/dev/null; log=/tmp/tests.log; }
    grep -E "^test .*FAILED|panicked at" -A3 $log 2>/dev/null | grep -v "^stack\|^note" | head -24
    ;;
  scout) scout ;;
  *) echo "usage: $0 check|final|scout" >&2; exit 2 ;;
esac
