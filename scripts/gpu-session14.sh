#!/usr/bin/env bash
# Session 14's GPU commands (results in bench/results/h200-session14/), on the GPU machine from the repository root
# with gpu-bundle carried. Here first: scripts/stage-gpu.sh, then the bundle cut to fit the 64 MiB limit with the
# tree (cutlass-include.tar.xz removed; bin.tar.xz keeps the test binaries, abi_smoke, llama4-bench and
# bench-attention_decode).
#   scripts/gpu-session14.sh check   every GPU test; the decode attention experiment at one sequence (split counts,
#                                    session 13's combine beside the shipped one, L2 flushed before each call) and
#                                    the criterion bench with SDPA in the same command; Scout decode b1 / b8 at ctx
#                                    8192 with the timeline of one layer in a replayed step, ours and the PyTorch
#                                    composition, both recipes; sanitizers over the decode attention tests (L4K_SAN_TOOLS, default
#                                    memcheck racecheck)
#   scripts/gpu-session14.sh ab      the rope / attention prologue change against bin/*-old, sanitizers (call 7)
#   scripts/gpu-session14.sh final   every GPU test, Scout decode with the peer (L4K_SCOUT_CASES), the rope bench
#                                    (against bin/bench-rope-old when present), sanitizers over L4K_SAN_TESTS
#   scripts/gpu-session14.sh tests   every GPU test, sanitizers over L4K_SAN_TESTS (the closing tree's last call)
#   scripts/gpu-session14.sh scout   Scout decode only (as in check)
source "$(dirname "$0")/gpu-helpers.sh"
case "${1:-}" in
  check)
    all_tests
    nvcc -std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Ikernels -Iinclude \
      bench/experiments/attention_decode_tma.cu -o /tmp/decode_tma && timeout 120 /tmp/decode_tma > $OUT/decode_tma.txt 2>&1
    echo "decode_tma rc $?"
    L4K_BENCH_JSON=$OUT/attention.jsonl timeout 150 $bundle/bin/bench-attention_decode --bench --noplot > $OUT/attention.log 2>&1
    echo "bench-attention_decode rc $?"
    timeout 120 python3 $bundle/peers/torch_attention_decode.py --json $OUT/attention-peer.jsonl >> $OUT/attention.log 2>&1
    echo "torch_attention_decode rc $?"
    scout
    sanitize attention_decode "${L4K_SAN_TOOLS:-memcheck racecheck}"
    (cd $OUT && tar -cJf logs.tar.xz scout.log scout-peer.log san.log attention.log && rm scout.log scout-peer.log san.log attention.log)
    grep -E "b1 x|shipped" $OUT/decode_tma.txt | grep -E "shipped|combine" -A1 | cut -c1-120 | head -20
    awk '/^attention_decode\//{id=$1} /time:/{print id, $4, $5}' <(tar -xJOf $OUT/logs.tar.xz attention.log)
    grep -iE "sdpa|torch" <(tar -xJOf $OUT/logs.tar.xz attention.log) | head -12
    test_report
    ;;
  ab)
    # The rope and attention prologue change against the tree before it (bin/*-old: the same tree at call 5),
    # interleaved in one command: the rope and decode-attention benches, Scout decode b1 / b8 (ours), every GPU
    # test, the four sanitizers over the rope and decode attention tests.
    all_tests
    for round in 1 2; do
      for v in -old ""; do
        L4K_BENCH_JSON=$OUT/rope$v.jsonl timeout 100 $bundle/bin/bench-rope$v --bench --noplot 'rope_qknorm' >> $OUT/bench$v.log 2>&1
        L4K_BENCH_JSON=$OUT/attention$v.jsonl timeout 100 $bundle/bin/bench-attention_decode$v --bench --noplot 'causal/' >> $OUT/bench$v.log 2>&1
        for recipe in meta fp8-dense; do
          flag=$([[ $recipe == fp8-dense ]] && echo --fp8-dense || true)
          timeout 100 $bundle/bin/llama4-bench$v --synthetic scout $flag --cases decode --batches 1,8 --contexts 8192 \
            --json $OUT/scout$v.jsonl > /tmp/s.log 2>&1
          echo "round $round ${v:-new} $recipe rc $?"
          cat /tmp/s.log >> $OUT/scout.log
          grep -E "\| +[0-9.]+ +[0-9.]+ +[0-9.]+ \||layer 24" /tmp/s.log | cut -c1-330
        done
      done
    done
    sanitize "rope attention_decode" "memcheck racecheck synccheck initcheck"
    (cd $OUT && tar -cJf logs.tar.xz scout.log san.log bench-old.log bench.log && rm scout.log san.log bench-old.log bench.log)
    for v in -old ""; do
      echo "bench${v:-(new)}:"
      awk '/^(rope|attention_decode)\//{id=$1} /time:/{print id, $4, $5}' <(tar -xJOf $OUT/logs.tar.xz bench$v.log)
    done
    test_report
    ;;
  final)
    # The closing tree: every GPU test, Scout decode b1 / b8 with the peer (L4K_SCOUT_CASES), and the sanitizers
    # over L4K_SAN_TESTS (none unless given); the test summary last.
    all_tests
    scout
    # The rope bench against the tree before the last rope change when the bundle has it (bin/bench-rope-old).
    for v in -old ""; do
      [[ -x $bundle/bin/bench-rope$v ]] || continue
      L4K_BENCH_JSON=$OUT/rope$v.jsonl timeout 100 $bundle/bin/bench-rope$v --bench --noplot 'rope_qknorm' > /tmp/rope.log 2>&1
      echo "bench-rope${v:-(new)}: $(awk '/^rope\//{id=$1} /time:/{print id, $4, $5}' /tmp/rope.log | tr '\n' ' ')"
    done
    sanitize "${L4K_SAN_TESTS:-}" "memcheck racecheck synccheck initcheck"
    (cd $OUT && tar -cJf logs.tar.xz scout.log scout-peer.log san.log && rm scout.log scout-peer.log san.log)
    test_report
    ;;
  tests)
    # Every GPU test, then L4K_SAN_TOOLS (default memcheck racecheck) over L4K_SAN_TESTS; the summary last.
    all_tests
    sanitize "${L4K_SAN_TESTS:-}" "${L4K_SAN_TOOLS:-memcheck racecheck}"
    test_report
    ;;
  scout) scout ;;
  *) echo "usage: $0 check|final|scout" >&2; exit 2 ;;
esac
