#!/usr/bin/env bash
# Session 12's GPU commands (results in bench/results/h200-session12/), on the GPU machine from the repository root
# with gpu-bundle carried. Here first: scripts/stage-gpu.sh, then the bundle cut to fit the 64 MiB limit with the
# tree (cutlass-include.tar.xz removed; bin.tar.xz keeps the test binaries, abi_smoke, llama4-bench and
# bench-{linear,grouped_gemm}).
#   scripts/gpu-session12.sh gemv    every GPU test, the GEMV sweep (bench/experiments/linear_gemv_sweep.cu), the
#                                    linear bench at m = 1 and 8 (Auto, cuBLASLt as its peer, the GEMV forced, FP8)
#   scripts/gpu-session12.sh all     (call 1) tests, the sweep, the linear bench at m = 1, scout, memcheck + racecheck
#   scripts/gpu-session12.sh final   (call 2) tests, the sweep, scout, synccheck + initcheck
#   scripts/gpu-session12.sh scout   Scout decode at batch 1 and 8 (ctx 8192), ours and the PyTorch composition,
#                                    both recipes, in one command; compute-sanitizer over the linear and GEMV tests
set -u
root=$(pwd) bundle=gpu-bundle
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
export L4K_EXPECT_GPU=1 L4K_FIXTURES="$root/reference-model/fixtures" CRITERION_HOME=/tmp/l4k-criterion
nv=(-std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Ikernels -Iinclude)
case "${1:-}" in
  gemv)
    nvcc "${nv[@]}" bench/experiments/linear_gemv_sweep.cu -o /tmp/lgs > $OUT/sweep.txt 2>&1 &
    (cd gpu-bundle && ./run.sh tests >/dev/null 2>&1)
    grep -E "^test |abi_smoke" $OUT/summary.txt
    tar -C /tmp -xJf $OUT/results.tar.xz 2>/dev/null
    grep -E "^test .*FAILED|panicked at" -A3 /tmp/tests.log | grep -v "^stack\|^note" | head -24
    wait
    timeout 150 /tmp/lgs >> $OUT/sweep.txt 2>&1; echo "sweep rc $?"; cut -c1-140 $OUT/sweep.txt
    L4K_BENCH_JSON=$OUT/linear.jsonl timeout 200 $bundle/bin/bench-linear --bench --noplot 'linear/.*/m(1|8)$' > $OUT/linear.log 2>&1
    echo "bench-linear rc $?"
    grep -E "^linear/|time:" $OUT/linear.log | paste - - | awk '{print $1, $4, $5, $6, $7, $8}'
    ;;
  scout)
    for recipe in meta fp8-dense; do
      flag=$([[ $recipe == fp8-dense ]] && echo --fp8-dense || true)
      timeout 120 $bundle/bin/llama4-bench --synthetic scout $flag --cases decode --batches 1,8 --contexts 8192 \
        --json $OUT/scout-ours.jsonl >> $OUT/scout.log 2>&1; echo "ours $recipe rc $?"
      timeout 120 python3 $bundle/peers/torch_scout.py $flag --cases decode --batches 1,8 --contexts 8192 \
        --json $OUT/scout-peer.jsonl >> $OUT/scout-peer.log 2>&1; echo "peer $recipe rc $?"
    done
    python3 $bundle/peers/model_report.py $OUT/scout-ours.jsonl $OUT/scout-peer.jsonl > $OUT/scout.md 2>> $OUT/scout.log
    cut -c1-250 $OUT/scout.md
    for tool in ${L4K_SAN_TOOLS:-memcheck racecheck synccheck initcheck}; do
      PROPTEST_CASES=2 timeout 60 compute-sanitizer --tool $tool --error-exitcode 99 --print-limit 10 \
        $bundle/bin/test-gpu --include-ignored --test-threads=1 linear_gemv >> $OUT/san.log 2>&1
      echo "sanitizer $tool (linear_gemv): rc $? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test result' $OUT/san.log | tail -2 | tr '\n' ' ')"
    done
    ;;
  all)
    # Both of the above in one call, the bench at m = 1 only and two sanitizers (the device time left this session).
    nvcc "${nv[@]}" bench/experiments/linear_gemv_sweep.cu -o /tmp/lgs > $OUT/sweep.txt 2>&1 &
    (cd gpu-bundle && ./run.sh tests >/dev/null 2>&1)
    grep -E "^test |abi_smoke" $OUT/summary.txt
    tar -C /tmp -xJf $OUT/results.tar.xz 2>/dev/null
    grep -E "^test .*FAILED|panicked at" -A3 /tmp/tests.log | grep -v "^stack\|^note" | head -24
    wait
    timeout 120 /tmp/lgs >> $OUT/sweep.txt 2>&1; echo "sweep rc $?"; cut -c1-140 $OUT/sweep.txt
    L4K_BENCH_JSON=$OUT/linear.jsonl timeout 120 $bundle/bin/bench-linear --bench --noplot 'linear/.*/m1$' > $OUT/linear.log 2>&1
    echo "bench-linear rc $?"
    grep -E "^linear/|time:" $OUT/linear.log | paste - - | awk '{print $1, $4, $5, $6, $7, $8}'
    L4K_SAN_TOOLS="memcheck racecheck" "$0" scout
    ;;
  final)
    # After Auto's rule moved to one row and the sweep's timing fix: every GPU test, the sweep, Scout batch 1 and 8
    # with the peer, synccheck and initcheck over the GEMV tests; the test summary last (the output keeps its tail).
    nvcc "${nv[@]}" bench/experiments/linear_gemv_sweep.cu -o /tmp/lgs > $OUT/sweep.txt 2>&1 &
    (cd gpu-bundle && ./run.sh tests >/dev/null 2>&1)
    cp $OUT/summary.txt $OUT/tests-summary.txt
    wait
    timeout 120 /tmp/lgs >> $OUT/sweep.txt 2>&1; echo "sweep rc $?"; cut -c1-110 $OUT/sweep.txt
    L4K_SAN_TOOLS="synccheck initcheck" "$0" scout
    rm -f $OUT/summary.txt
    (cd $OUT && tar -cJf logs.tar.xz scout.log scout-peer.log san.log && rm scout.log scout-peer.log san.log)  # <= 8 files
    grep -E "^test |abi_smoke" $OUT/tests-summary.txt
    tar -C /tmp -xJf $OUT/results.tar.xz 2>/dev/null
    grep -E "^test .*FAILED|panicked at" -A3 /tmp/tests.log | grep -v "^stack\|^note" | head -24
    ;;
  *) echo "usage: $0 gemv|scout|all|final" >&2; exit 2 ;;
esac
