#!/usr/bin/env bash
# Session 10, final GPU command (bench/results/h200-session10/call3/): every GPU test, sanitizers over the changed
# kernels, the GEMV bench at one row, the attention A/B, Scout decode with PDL on and off. Here:
#   scripts/stage-gpu.sh && scripts/attention-ab.sh stage f7da2fe      then on the GPU machine (carry gpu-bundle):
#   scripts/gpu-session10.sh
# The call that made call3/ carried a bundle cut to fit the 64 MiB limit: cutlass-include.tar.xz removed and only
# the test binaries, bench-grouped_gemm, bench-linear and llama4-bench kept in bin.tar.xz.
set -u
cd "$(dirname "$0")/../gpu-bundle"
./run.sh tests >/dev/null 2>&1
grep -E "^test |abi_smoke" $OUT/summary.txt
tar -C /tmp -xJf $OUT/results.tar.xz 2>/dev/null
grep -E "^test .*FAILED|panicked at" -A3 /tmp/tests.log | grep -v "^stack\|^note" | head -24
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
export L4K_EXPECT_GPU=1 L4K_FIXTURES="$(cd .. && pwd)/reference-model/fixtures"
san() {
  local tool=$1; shift
  PROPTEST_CASES=2 timeout 120 compute-sanitizer --tool $tool --error-exitcode 99 --print-limit 10 bin/test-gpu --include-ignored --test-threads=1 "$@" > $OUT/san-$tool.log 2>&1
  echo "sanitizer $tool ($*): rc $? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test result' $OUT/san-$tool.log | tr '\n' ' ')"
}
san synccheck attention gemv expert_parallel
san memcheck attention gemv expert_parallel
san racecheck gemv expert_parallel
L4K_BENCH_JSON=$OUT/micro.jsonl bin/bench-grouped_gemm --bench --noplot 'T1_E16_top1' > $OUT/micro.log 2>&1
L4K_BENCH_JSON=$OUT/micro.jsonl bin/bench-linear --bench --noplot 'fp8/.*/m1$' >> $OUT/micro.log 2>&1
grep -E "^(grouped_gemm|linear)/[a-z_0-9]+/[A-Za-z_0-9/]+$|time:" $OUT/micro.log | grep -v "copy ceiling" | paste - - | awk '{print $1, $4, $5, $6, $7, $8}'
(cd .. && timeout 150 scripts/attention-ab.sh run 1 > $OUT/ab.log 2>&1; grep median $OUT/ab.log)
for pdl in 1 0; do for r in "" "--fp8-dense"; do
  L4K_PDL=$pdl timeout 60 bin/llama4-bench --synthetic scout $r --batches 1,8 --contexts 8192 --prompts 8192 --json $OUT/scout.jsonl >> $OUT/scout.log 2>&1 || echo "scout pdl=$pdl $r FAILED"
done; done
grep -E "^ +[0-9]+ +[0-9]+ \||scout \(|launches:|eager step" $OUT/scout.log | cut -c1-260
