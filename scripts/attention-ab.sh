#!/usr/bin/env bash
# Both attention kernels before and after a change, timed in one GPU command: the prefill probe
# (bench/experiments/attention_prefill_probe.cu) and the decode probe (bench/experiments/attention_decode_probe.cu)
# are built against the working tree's kernels and against a base tree's, then run alternately (base, new, base,
# new, ...) so both see the same clocks. Each line carries an output hash: equal hashes, same bits.
#   here:  scripts/attention-ab.sh stage [rev]     (default main) the base tree's kernels/ and include/ from git into
#                                                   ab-base/ in the GPU bundle (git-ignored: carry gpu-bundle; run
#                                                   after scripts/stage-gpu.sh, which empties the bundle)
#   GPU:   scripts/attention-ab.sh run [rounds]    (default 3) from the repository root; output also in $OUT/ab.txt
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=gpu-bundle
base="$bundle/ab-base"
case "${1:-}" in
  stage)
    rev="${2:-main}"
    rm -rf "$base"
    mkdir -p "$base"
    git archive "$rev" kernels include | tar -x -C "$base"
    git rev-parse "$rev" >"$base/REV"
    echo "staged $rev ($(cat "$base/REV")) in $base"
    ;;
  run)
    rounds="${2:-3}"
    [[ -d "$base/kernels" ]] || { echo "no $base: run '$0 stage' here first and carry gpu-bundle" >&2; exit 1; }
    out="${OUT:-/tmp}/ab.txt"
    bin=$(mktemp -d)
    flags=(-std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -cudart static)
    root=$(pwd)
    # The probes include the kernel source they time; a quoted include looks beside the including file first, so
    # each build uses its own tree's headers.
    nvcc "${flags[@]}" -Ikernels -Iinclude bench/experiments/attention_prefill_probe.cu -o "$bin/prefill-new" &
    nvcc "${flags[@]}" -I"$base/kernels" -I"$base/include" -DL4K_PREFILL_SRC="\"$root/$base/kernels/attention_prefill.cu\"" \
      bench/experiments/attention_prefill_probe.cu -o "$bin/prefill-base" &
    nvcc "${flags[@]}" -Ikernels -Iinclude bench/experiments/attention_decode_probe.cu -o "$bin/decode-new" &
    nvcc "${flags[@]}" -I"$base/kernels" -I"$base/include" -DL4K_DECODE_SRC="\"$root/$base/kernels/attention_decode.cu\"" \
      bench/experiments/attention_decode_probe.cu -o "$bin/decode-base" &
    wait
    for b in prefill-new prefill-base decode-new decode-base; do [[ -x "$bin/$b" ]] || { echo "build of $b failed" >&2; exit 1; }; done
    {
      echo "base: $(cat "$base/REV" 2>/dev/null || echo '?'); $(nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader)"
      for r in $(seq "$rounds"); do
        for v in base new; do
          "$bin/prefill-$v" | sed "s/^/round $r prefill $v: /"
          "$bin/decode-$v" | sed "s/^/round $r decode $v: /"
        done
      done
    } | tee "$out"
    ;;
  *)
    sed -n 2,9p "$0"
    exit 2
    ;;
esac
