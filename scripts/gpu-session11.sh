#!/usr/bin/env bash
# Session 11's GPU commands (results in bench/results/h200-session11/), on the GPU machine from the repository root
# with gpu-bundle carried. Here first:
#   scripts/stage-gpu.sh && scripts/attention-ab.sh stage 4bef092
# The bundle that ran them was cut to fit the 64 MiB limit with the tree: cutlass-include.tar.xz removed and only
# the test binaries, abi_smoke, llama4-bench and bench-{attention_decode,grouped_gemm,linear,weight_prep,permute}
# kept in bin.tar.xz.
#   scripts/gpu-session11.sh attention   every GPU test, the decode A/B against 4bef092 (cp.async loop; output
#                                        hashes), the TMA experiment, the decode bench and SDPA in one command,
#                                        sanitizers over the decode tests
#   scripts/gpu-session11.sh scout       every GPU test again (the final tree), issue 14's full matrix, ours and the
#                                        PyTorch composition, both recipes (run.sh scout), the TMA experiment, the
#                                        weight-prep sweep and the memory-bound micro benches
#   scripts/gpu-session11.sh recheck     every GPU test, the decode A/B and the decode sanitizers after the last
#                                        change to the decode launchers
set -u
root=$(pwd) bundle=gpu-bundle
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
export L4K_EXPECT_GPU=1 L4K_FIXTURES="$root/reference-model/fixtures"
nv=(-std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Ikernels -Iinclude)
case "${1:-}" in
  attention)
    nvcc "${nv[@]}" bench/experiments/attention_decode_tma.cu -o /tmp/dtma > $OUT/tma.txt 2>&1 &
    (cd gpu-bundle && ./run.sh tests >/dev/null 2>&1)
    grep -E "^test |abi_smoke" $OUT/summary.txt
    tar -C /tmp -xJf $OUT/results.tar.xz 2>/dev/null
    grep -E "^test .*FAILED|panicked at" -A3 /tmp/tests.log | grep -v "^stack\|^note" | head -24
    timeout 170 scripts/attention-ab.sh run 1 > $OUT/ab.log 2>&1; grep -E "median|hash" $OUT/ab.log | head -20
    wait
    timeout 60 /tmp/dtma >> $OUT/tma.txt 2>&1; grep -E "ceilings|^b(64|8) x|check .*(differ|WRONG|CRASH)" $OUT/tma.txt | cut -c1-150
    export CRITERION_HOME=/tmp/l4k-criterion
    L4K_BENCH_JSON=$OUT/decode.jsonl timeout 90 gpu-bundle/bin/bench-attention_decode --bench --noplot > $OUT/decode.log 2>&1
    grep -E "^attention_decode/|time:" $OUT/decode.log | paste - - | awk '{print $1, $4, $5, $6, $7, $8}'
    PYTHONUNBUFFERED=1 timeout 60 python3 "$bundle/peers/torch_attention_decode.py" --json $OUT/decode.jsonl 2>&1 | grep -E "enable_gqa|grouped-q\]?:" | head -12
    for tool in memcheck racecheck synccheck initcheck; do
      PROPTEST_CASES=2 timeout 60 compute-sanitizer --tool $tool --error-exitcode 99 --print-limit 10 \
        gpu-bundle/bin/test-gpu --include-ignored --test-threads=1 attention_decode >> $OUT/san.log 2>&1
      echo "sanitizer $tool (attention_decode): rc $? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test result' $OUT/san.log | tail -2 | tr '\n' ' ')"
    done
    ;;
  scout)
    nvcc "${nv[@]}" bench/experiments/weight_prep_sweep.cu -o /tmp/wps > $OUT/wp.txt 2>&1 &
    nvcc "${nv[@]}" bench/experiments/attention_decode_tma.cu -o /tmp/dtma > $OUT/tma.txt 2>&1 &
    (cd gpu-bundle && ./run.sh tests scout >/dev/null 2>&1)
    cat $OUT/summary.txt | cut -c1-300
    tar -C /tmp -xJf $OUT/results.tar.xz 2>/dev/null
    grep -E "^test .*FAILED|panicked at" -A3 /tmp/tests.log | grep -v "^stack\|^note" | head -24
    wait
    timeout 60 /tmp/dtma >> $OUT/tma.txt 2>&1; grep -E "^b(64|8) x|check .*(differ|WRONG|CRASH)" $OUT/tma.txt | cut -c1-150
    timeout 120 /tmp/wps >> $OUT/wp.txt 2>&1; grep -E "ceilings| us " $OUT/wp.txt | cut -c1-150 | head -60
    export CRITERION_HOME=/tmp/l4k-criterion
    for b in permute weight_prep; do
      L4K_BENCH_JSON=$OUT/micro.jsonl timeout 80 gpu-bundle/bin/bench-$b --bench --noplot >> $OUT/micro.log 2>&1
    done
    grep -E "^(permute|weight_prep)/|time:|copy" $OUT/micro.log | head -40
    ;;
  recheck)
    # After the last refactor of the decode launchers: every GPU test, the A/B (same output hashes as 4bef092's
    # cp.async loop, and the times), the sanitizers over the decode tests.
    (cd gpu-bundle && ./run.sh tests >/dev/null 2>&1)
    grep -E "^test |abi_smoke" $OUT/summary.txt
    tar -C /tmp -xJf $OUT/results.tar.xz 2>/dev/null
    grep -E "^test .*FAILED|panicked at" -A3 /tmp/tests.log | grep -v "^stack\|^note" | head -24
    timeout 170 scripts/attention-ab.sh run 1 > $OUT/ab.log 2>&1; grep -E "median|hash" $OUT/ab.log | head -20
    for tool in memcheck racecheck synccheck initcheck; do
      PROPTEST_CASES=2 timeout 60 compute-sanitizer --tool $tool --error-exitcode 99 --print-limit 10 \
        gpu-bundle/bin/test-gpu --include-ignored --test-threads=1 attention_decode >> $OUT/san.log 2>&1
      echo "sanitizer $tool (attention_decode): rc $? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test result' $OUT/san.log | tail -2 | tr '\n' ' ')"
    done
    ;;
  *) echo "usage: $0 attention|scout|recheck" >&2; exit 2 ;;
esac
