#!/usr/bin/env bash
# Final check of the merged tree (scripts/stage-gpu.sh copies this file to gpu-bundle/final.sh; run
# gpu-bundle/final.sh on the GPU machine): every test binary, the sanitizer probe, memcheck and racecheck over the GPU
# tests, synccheck and initcheck over the attention tests, and the Maverick (E = 128) grouped GEMM cases with their
# PyTorch peers. Each step is time-boxed.
here="$(cd "$(dirname "$0")" && pwd)"; o="${OUT:-$here/results}"; mkdir -p "$o"; cd "$here" || exit 1
tar xJf bin.tar.xz; export L4K_EXPECT_GPU=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in bin/test-*; do
  n=$(basename "$t"); timeout 150 "$t" --include-ignored >"$o/$n.log" 2>&1
  echo "$n: rc=$? $(grep -E '^test result' "$o/$n.log" | tail -1)"
done
./bin/abi_smoke >"$o/abi.log" 2>&1; echo "abi_smoke: rc=$?"
nvcc -gencode=arch=compute_90a,code=sm_90a -cudart static -o /tmp/probe sanitizer-probe.cu \
  && compute-sanitizer --tool memcheck --error-exitcode 99 /tmp/probe >/tmp/p.log 2>&1
echo "sanitizer probe: rc=$? (99 = planted bug caught) $(grep -c 'Invalid __global__ write' /tmp/p.log)"
s=$SECONDS; PROPTEST_CASES=3 timeout 150 compute-sanitizer --tool memcheck --error-exitcode 99 ./bin/test-gpu --include-ignored --test-threads=1 >"$o/memcheck.log" 2>&1
echo "memcheck: rc=$? in $((SECONDS-s)) s; $(grep 'ERROR SUMMARY' "$o/memcheck.log" | tail -1); $(grep -E '^test result' "$o/memcheck.log")"
s=$SECONDS; PROPTEST_CASES=2 timeout 110 compute-sanitizer --tool racecheck --error-exitcode 99 ./bin/test-gpu --include-ignored --test-threads=1 --skip attention_prefill >"$o/racecheck.log" 2>&1
echo "racecheck (all but prefill): rc=$? in $((SECONDS-s)) s; $(grep 'RACECHECK SUMMARY' "$o/racecheck.log" | tail -1); $(grep -E '^test result' "$o/racecheck.log")"
s=$SECONDS; PROPTEST_CASES=1 timeout 120 compute-sanitizer --tool racecheck --error-exitcode 99 ./bin/test-gpu --include-ignored --test-threads=1 attention_prefill >"$o/racecheck-prefill.log" 2>&1
echo "racecheck (prefill): rc=$? in $((SECONDS-s)) s; $(grep 'RACECHECK SUMMARY' "$o/racecheck-prefill.log" | tail -1); $(grep -E '^test ' "$o/racecheck-prefill.log" | tr '\n' ' ')"
for tool in synccheck initcheck; do
  s=$SECONDS; PROPTEST_CASES=1 timeout 120 compute-sanitizer --tool $tool --error-exitcode 99 ./bin/test-gpu --include-ignored --test-threads=1 attention >"$o/$tool.log" 2>&1
  echo "$tool (attention): rc=$? in $((SECONDS-s)) s; $(grep 'ERROR SUMMARY' "$o/$tool.log" | tail -1); $(grep -E '^test result' "$o/$tool.log")"
done
export L4K_BENCH_ONLY=T16384_E128,T512_E128
L4K_BENCH_JSON="$o/ours.jsonl" timeout 80 ./bin/bench-grouped_gemm --bench >"$o/bench.log" 2>&1; echo "maverick bench: rc=$?"
timeout 70 python3 peers/torch_grouped_gemm.py --json "$o/peers.jsonl" >>"$o/bench.log" 2>&1; echo "maverick peers: rc=$?"
python3 peers/report.py "$o/ours.jsonl" "$o/peers.jsonl" >"$o/bench.md" 2>>"$o/bench.log"; grep E128 "$o/bench.md" | head -30
