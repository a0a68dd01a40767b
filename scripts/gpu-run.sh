#!/usr/bin/env bash
# Runs on the GPU machine from the staged bundle (scripts/stage-gpu.sh copies this file to gpu-bundle/run.sh).
#   run.sh [tests] [sanitize] [model] [scout] [sweep] [gemmsweep] [experiments] [bench] [peers] [nocompile]
#   (no argument: tests bench peers)
# L4K_EXPERIMENTS="name ..." names the bench/experiments/<name>.cu files the experiments step builds and runs.
# L4K_ONLY=<family>[,<family>...] limits bench and peers to those families (torch_peers.py gets --only).
# Results go to $OUT (the device tool's folder) or gpu-bundle/results: tests.log, sanitizer.log, bench.log,
# ours.jsonl, criterion.tar.xz (criterion's estimates), peers.jsonl, bench.md, summary.txt; under the device tool,
# a folder of more than the 8 files it returns is packed into results.tar.xz beside summary.txt (bench/report.py
# reads either). Exit status: non-zero if any test or sanitizer run failed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$here/results}"
mkdir -p "$out"
[[ -d "$here/bin" ]] || tar -C "$here" -xJf "$here/bin.tar.xz" || { echo "cannot unpack $here/bin.tar.xz" >&2; exit 1; }
steps=("$@")
((${#steps[@]})) || steps=(tests bench peers)
has() { [[ " ${steps[*]} " == *" $1 "* ]]; }
summary="$out/summary.txt"
: >"$summary"
status=0
note() { echo "$*" | tee -a "$summary"; }
# Whether a bench binary or peer script belongs to one of the L4K_ONLY families (all when unset).
wanted() {
  [[ -z "${L4K_ONLY:-}" ]] && return 0
  local f
  for f in ${L4K_ONLY//,/ }; do [[ "$1" == *"$f"* ]] && return 0; done
  return 1
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee -a "$summary"
# GPU tests fail, not skip, without a GPU; host tests check that a GPU is found.
export L4K_EXPECT_GPU=1
# The model tests read the golden fixtures of the working tree the bundle sits in.
export L4K_FIXTURES="$(cd "$here/.." && pwd)/reference-model/fixtures"
# libcublasLt is loaded at run time by the bf16 linears (llama4-run --device cuda, llama4-bench, the model and
# linear tests and benches) and the grouped GEMM bench's cuBLASLt peer; PyTorch's wheels carry it. Not found:
# those fail saying so (Blas::new names LD_LIBRARY_PATH; a peer must not vanish silently).
cublaslt_dir="$(python3 - <<'EOF' 2>/dev/null
import glob, os, site, sys
roots = []
try:
    import torch
    roots.append(os.path.dirname(os.path.dirname(torch.__file__)))
except Exception:
    pass
roots += site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    hits = sorted(glob.glob(os.path.join(r, "nvidia", "**", "libcublasLt.so*"), recursive=True))
    hits += sorted(glob.glob(os.path.join(r, "torch", "lib", "libcublasLt.so*")))
    if hits:
        print(os.path.dirname(hits[-1]))
        sys.exit(0)
sys.exit(1)
EOF
)"
if [[ -n "$cublaslt_dir" ]]; then
  export LD_LIBRARY_PATH="$cublaslt_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  note "libcublasLt: $cublaslt_dir ($(ls "$cublaslt_dir" | grep -m1 libcublasLt))"
else
  note "libcublasLt: not found in PyTorch's wheels (the bf16 linears and the cuBLASLt peer will fail)"
fi

# libnccl is loaded at run time by the expert-parallel ops (cudarc looks for libnccl.so, libnccl.so.1, ...);
# PyTorch's nvidia-nccl wheel ships only libnccl.so.2, so a folder of ours gets a libnccl.so link to it. Not found:
# the NCCL test fails saying so.
nccl_lib="$(python3 - <<'EOF' 2>/dev/null
import glob, os, site, sys
roots = []
try:
    import torch
    roots.append(os.path.dirname(os.path.dirname(torch.__file__)))
except Exception:
    pass
roots += site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    hits = sorted(glob.glob(os.path.join(r, "nvidia", "**", "libnccl.so*"), recursive=True))
    if hits:
        print(hits[-1])
        sys.exit(0)
sys.exit(1)
EOF
)"
if [[ -n "$nccl_lib" ]]; then
  mkdir -p /tmp/l4k-nccl && ln -sf "$nccl_lib" /tmp/l4k-nccl/libnccl.so
  export LD_LIBRARY_PATH="/tmp/l4k-nccl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  note "libnccl: $nccl_lib (linked as /tmp/l4k-nccl/libnccl.so)"
else
  note "libnccl: not found in PyTorch's wheels (the expert-parallel NCCL test will fail)"
fi

if has tests; then
  for t in "$here"/bin/test-*; do
    start=$SECONDS
    "$t" --include-ignored >>"$out/tests.log" 2>&1
    rc=$?
    note "test $(basename "$t"): $([[ $rc == 0 ]] && echo PASS || echo "FAIL (exit $rc)") in $((SECONDS - start)) s; $(grep -E '^test result' "$out/tests.log" | tail -1)"
    ((rc == 0)) || status=1
  done
  "$here/bin/abi_smoke" >>"$out/tests.log" 2>&1 && note "abi_smoke: PASS" || { note "abi_smoke: FAIL"; status=1; }
fi

if has sanitize; then
  # The tool must catch a planted bug in a binary linked like ours, or its silence below proves nothing.
  nvcc -gencode=arch=compute_90a,code=sm_90a -cudart static -o /tmp/l4k-probe "$here/sanitizer-probe.cu" \
    && compute-sanitizer --tool memcheck --error-exitcode 99 /tmp/l4k-probe >/tmp/l4k-probe.log 2>&1
  if [[ $? == 99 ]] && grep -q "Invalid __global__ write" /tmp/l4k-probe.log; then
    note "compute-sanitizer probe: planted out-of-bounds write caught"
  else
    note "compute-sanitizer probe: planted bug NOT caught"; cat /tmp/l4k-probe.log >>"$out/sanitizer.log"; status=1
  fi
  # Fewer property cases: the tools slow kernels down by orders of magnitude.
  for tool in memcheck racecheck; do
    start=$SECONDS
    PROPTEST_CASES=4 compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 20 \
      "$here/bin/test-gpu" --include-ignored --test-threads=1 >>"$out/sanitizer.log" 2>&1
    rc=$?
    if [[ $tool == memcheck ]]; then
      compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 20 \
        "$here/bin/test-gpu_model" --include-ignored --test-threads=1 >>"$out/sanitizer.log" 2>&1 || rc=$?
    fi
    note "compute-sanitizer $tool: $([[ $rc == 0 ]] && echo CLEAN || echo "FAILED (exit $rc)") in $((SECONDS - start)) s; $(grep -E 'ERROR SUMMARY' "$out/sanitizer.log" | tail -1)"
    ((rc == 0)) || status=1
  done
  # Barrier use (synccheck: divergent or mismatched bar.sync / bar.red, named barriers included) and reads of
  # uninitialized device memory (initcheck) over the attention tests: both kernels, the decode-by-prefill test and
  # the C ABI's attention calls; the warp-specialized prefill kernel is the one with named barriers and barriers
  # reached from two program points (kernels/NOTES.md, "the verdict barrier"). L4K_SANITIZE_FILTERS adds families
  # (test-name filters, e.g. "attention rmsnorm rope").
  filters=(${L4K_SANITIZE_FILTERS:-attention})
  for tool in synccheck initcheck; do
    start=$SECONDS
    PROPTEST_CASES=2 compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 20 \
      "$here/bin/test-gpu" --include-ignored --test-threads=1 "${filters[@]}" >>"$out/sanitizer.log" 2>&1
    rc=$?
    note "compute-sanitizer $tool (${filters[*]}): $([[ $rc == 0 ]] && echo CLEAN || echo "FAILED (exit $rc)") in $((SECONDS - start)) s; $(grep -E 'ERROR SUMMARY' "$out/sanitizer.log" | tail -1)"
    ((rc == 0)) || status=1
  done
fi

if has model; then
  # The main job on the GPU: every gpu_* fixture through llama4-run --device cuda (prefill, graph-replayed
  # decode, saved logits), then a per-kernel profile of decode steps (eager launches, ncu timings summed by
  # op family; python3 bench/model_profile.py in the bundle's peers/).
  for d in "$L4K_FIXTURES"/gpu_*; do
    n=$(basename "$d")
    ids=$(python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['input_ids'][:64])))" "$d/golden.json")
    "$here/bin/llama4-run" "$d" --device cuda --tokens "$ids" --max-new 16 --save-logits "/tmp/l4k-$n.safetensors" >>"$out/model.log" 2>&1 \
      && note "llama4-run --device cuda $n: $(grep -E '^decode:' "$out/model.log" | tail -1)" || { note "llama4-run $n: FAILED"; status=1; }
  done
  d=$(ls -d "$L4K_FIXTURES"/gpu_* | head -1)
  ids=$(python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['input_ids'][:32])))" "$d/golden.json")
  ncu --clock-control none --csv --metrics gpu__time_duration.sum "$here/bin/llama4-run" "$d" --device cuda --no-graphs --tokens "$ids" --max-new 9 \
    >"$out/ncu-decode.csv" 2>>"$out/model.log" && python3 "$here/peers/model_profile.py" "$out/ncu-decode.csv" 8 | tee -a "$summary" \
    || { note "decode profile: FAILED"; status=1; }
fi

if has scout; then
  # Issue 14: full-size Scout with synthetic weights, ours then the PyTorch composition, both recipes, in this one
  # command (bench/model_report.py collates them). L4K_SCOUT_ARGS narrows the cases (e.g. "--batches 1 --layers 8").
  for recipe in meta fp8-dense; do
    flag=$([[ $recipe == fp8-dense ]] && echo --fp8-dense || true)
    start=$SECONDS
    "$here/bin/llama4-bench" --synthetic scout $flag ${L4K_SCOUT_ARGS:-} --json "$out/scout-ours.jsonl" \
      >>"$out/scout.log" 2>&1 && note "llama4-bench scout $recipe: $((SECONDS - start)) s" \
      || { note "llama4-bench scout $recipe: FAILED ($(tail -1 "$out/scout.log"))"; status=1; }
    start=$SECONDS
    python3 "$here/peers/torch_scout.py" $flag ${L4K_SCOUT_PEER_ARGS:-} --json "$out/scout-peer.jsonl" \
      >>"$out/scout-peer.log" 2>&1 && note "torch_scout $recipe: $((SECONDS - start)) s" \
      || { note "torch_scout $recipe: FAILED ($(tail -1 "$out/scout-peer.log"))"; status=1; }
  done
  # The shared expert in line, for the gain of running it beside the routed path.
  "$here/bin/llama4-bench" --synthetic scout --no-overlap --batches 1,8,32 --contexts 1024,8192 --cases decode \
    ${L4K_SCOUT_ARGS:-} --json "$out/scout-ours.jsonl" >>"$out/scout.log" 2>&1 || { note "llama4-bench --no-overlap: FAILED"; status=1; }
  [[ -f "$here/peers/model_report.py" ]] && python3 "$here/peers/model_report.py" "$out/scout-ours.jsonl" \
    "$out/scout-peer.jsonl" >"$out/scout.md" 2>>"$out/scout.log" && cat "$out/scout.md" >>"$summary"
fi

if has sweep; then
  # Row-kernel work-per-thread sweep (bench/experiments/row_vpt_sweep.cu), built here from the working tree.
  root="$(cd "$here/.." && pwd)"
  nvcc -std=c++17 -O3 -DNDEBUG -gencode=arch=compute_90a,code=sm_90a -I"$root/kernels" -o /tmp/l4k-sweep \
    "$root/bench/experiments/row_vpt_sweep.cu" && /tmp/l4k-sweep >"$out/sweep.txt" 2>&1 \
    && note "row VPT sweep: $(wc -l <"$out/sweep.txt") lines in sweep.txt" || { note "row VPT sweep: FAILED"; status=1; }
fi

if has experiments; then
  # Self-contained experiments (bench/experiments/<name>.cu: each compares its variants' outputs with the shipped
  # kernel and prints its own table), built here from the working tree, run one after another.
  root="$(cd "$here/.." && pwd)"
  for name in ${L4K_EXPERIMENTS:-gemv_sweep}; do
    start=$SECONDS
    if nvcc -std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -I"$root/kernels" \
      -I"$root/include" -o "/tmp/l4k-$name" "$root/bench/experiments/$name.cu" -lcuda >"$out/exp-$name.txt" 2>&1; then
      timeout 300 "/tmp/l4k-$name" >>"$out/exp-$name.txt" 2>&1 && note "experiment $name: $((SECONDS - start)) s" \
        || { note "experiment $name: FAILED (exit $?)"; status=1; }
    else
      note "experiment $name: does not compile (exp-$name.txt)"; status=1
    fi
  done
fi

if has gemmsweep; then
  # Grouped GEMM tile candidates (bench/experiments/grouped_gemm_configs.cu), compiled in parallel here, each
  # timed under sustained load with NVML clock and power. Candidate 6 (128x208) is left out: CUTLASS builds it
  # from 64x16 atoms and it spills (kernels/NOTES.md, sweep 3).
  root="$(cd "$here/.." && pwd)"
  mkdir -p /tmp/l4k-cutlass && tar -C /tmp/l4k-cutlass -xJf "$here/cutlass-include.tar.xz"
  candidates="1 2 3 4 5 7 8 9 10 11 12 13 14 15 16 17"
  for c in $candidates; do
    nvcc -std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -DCANDIDATE=$c \
      -I"$root/kernels" -I"$root/include" -I/tmp/l4k-cutlass/include -o /tmp/l4k-gemm-$c \
      "$root/bench/experiments/grouped_gemm_configs.cu" -ldl -lpthread >/tmp/l4k-gemm-$c.log 2>&1 &
  done
  wait
  for c in $candidates; do
    { [[ -x /tmp/l4k-gemm-$c ]] && /tmp/l4k-gemm-$c; } >>"$out/sweep.txt" 2>&1 || { echo "candidate $c failed"; tail -5 /tmp/l4k-gemm-$c.log; } >>"$out/sweep.txt"
  done
  note "grouped GEMM sweep: $(grep -c TFLOP "$out/sweep.txt") timings in sweep.txt"
fi

if has bench; then
  # Criterion's estimates are the figures (bench/report.py); a fresh folder holds this run's alone.
  export CRITERION_HOME=/tmp/l4k-criterion
  rm -rf "$CRITERION_HOME"
  for b in "$here"/bin/bench-*; do
    wanted "$b" || continue
    L4K_BENCH_JSON="$out/ours.jsonl" "$b" --bench --noplot >>"$out/bench.log" 2>&1 || { note "bench $(basename "$b"): FAILED"; status=1; }
  done
  # One archive of criterion's */new/*.json: its folder tree is deeper and larger than the device tool returns.
  [[ -d "$CRITERION_HOME" ]] && (cd "$CRITERION_HOME" && find . -path '*/new/*.json' -print0 | sort -z \
    | tar --null -T - -cJf "$out/criterion.tar.xz")
  note "benches done: $(wc -l <"$out/ours.jsonl" 2>/dev/null || echo 0) records, $(tar -tJf "$out/criterion.tar.xz" 2>/dev/null | grep -c estimates.json) criterion estimates"
fi

if has peers; then
  flags=()
  has nocompile && flags+=(--no-compile)
  for script in "$here"/peers/torch_*.py; do
    [[ "$script" == */torch_peers.py ]] || wanted "$script" || continue
    [[ "$script" == */torch_peers.py ]] && args=("${flags[@]}") || args=()
    [[ "$script" == */torch_peers.py && -n "${L4K_ONLY:-}" ]] && args+=(--only "$L4K_ONLY")
    PYTHONUNBUFFERED=1 python3 "$script" --json "$out/peers.jsonl" "${args[@]}" >>"$out/bench.log" 2>&1 \
      || { note "$(basename "$script"): FAILED (see bench.log)"; status=1; }
  done
fi

if has bench; then
  # The table; its plot is drawn where matplotlib is: python3 bench/report.py --run <this folder> --plot ...
  python3 "$here/peers/report.py" --run "$out" >"$out/bench.md" 2>>"$out/bench.log"
  cat "$out/bench.md"
fi
note "overall: $([[ $status == 0 ]] && echo OK || echo FAILURES)"
if [[ -n "${OUT:-}" ]] && (($(find "$out" -type f | wc -l) > 8)); then
  (cd "$out" && find . -type f ! -name summary.txt ! -name results.tar.xz -print0 | sort -z | tar --null -T - --remove-files -cJf "$out/results.tar.xz")
fi
exit $status
