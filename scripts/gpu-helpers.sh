#!/usr/bin/env bash
# What the session scripts (scripts/gpu-session14.sh on) share, sourced on the GPU machine from the repository root
# with gpu-bundle carried: the environment, the Scout decode run with its peer (scout), every GPU test (all_tests),
# the sanitizer loop (sanitize) and the test report (test_report); the bundle's binaries unpacked.
set -u
root=$(pwd) bundle=gpu-bundle
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
export L4K_EXPECT_GPU=1 L4K_FIXTURES="$root/reference-model/fixtures" CRITERION_HOME=/tmp/l4k-criterion
scout() {
  # L4K_SCOUT_CASES=decode,prefill adds the 8192-token prefill; L4K_SCOUT_FLAGS are more flags for ours.
  local cases=${L4K_SCOUT_CASES:-decode}
  for recipe in meta fp8-dense; do
    flag=$([[ $recipe == fp8-dense ]] && echo --fp8-dense || true)
    timeout 150 $bundle/bin/llama4-bench --synthetic scout $flag ${L4K_SCOUT_FLAGS:-} --cases $cases --batches 1,8 --contexts 8192 \
      --prompts 8192 --json $OUT/scout-ours.jsonl >> $OUT/scout.log 2>&1; echo "ours $recipe rc $?"
    timeout 150 python3 $bundle/peers/torch_scout.py $flag --cases $cases --batches 1,8 --contexts 8192 \
      --prompts 8192 --json $OUT/scout-peer.jsonl >> $OUT/scout-peer.log 2>&1; echo "peer $recipe rc $?"
  done
  python3 $bundle/peers/model_report.py $OUT/scout-ours.jsonl $OUT/scout-peer.jsonl > $OUT/scout.md 2>> $OUT/scout.log
  cut -c1-250 $OUT/scout.md
}
# Every GPU test (run.sh), its summary kept as tests-summary.txt.
all_tests() {
  (cd gpu-bundle && ./run.sh tests >/dev/null 2>&1)
  cp $OUT/summary.txt $OUT/tests-summary.txt
  rm -f $OUT/summary.txt
}
# sanitize "TESTS" "TOOLS": each compute-sanitizer tool over each test-gpu filter, a line each, the log in san.log.
sanitize() {
  touch $OUT/san.log
  for t in $1; do
    for tool in $2; do
      PROPTEST_CASES=3 timeout ${L4K_SAN_TIMEOUT:-120} compute-sanitizer --tool $tool --error-exitcode 99 --print-limit 10 \
        $bundle/bin/test-gpu --include-ignored --test-threads=1 $t >> $OUT/san.log 2>&1
      echo "sanitizer $tool ($t): rc $? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test result' $OUT/san.log | tail -2 | tr '\n' ' ')"
    done
  done
}
# The test summary and the first failures, last (the output tail keeps them).
test_report() {
  grep -E "^test |abi_smoke" $OUT/tests-summary.txt | cut -c1-160
  local log=$OUT/tests.log
  [[ -f $log ]] || { tar -C /tmp -xJf $OUT/results.tar.xz 2>/dev/null; log=/tmp/tests.log; }
  grep -E "^test .*FAILED|panicked at" -A3 $log 2>/dev/null | grep -v "^stack\|^note" | head -24
}
# run.sh unpacks the binaries; the modes that do not run it unpack them here.
[[ -d $bundle/bin ]] || tar -C $bundle -xJf $bundle/bin.tar.xz
