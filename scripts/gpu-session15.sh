#!/usr/bin/env bash
# Session 15's GPU commands (what ran, on an H100: bench/results/h100-session15/), on the GPU machine from the repository root
# with gpu-bundle carried. Here first: scripts/stage-gpu.sh, then the bundle cut to fit the 64 MiB limit with the
# tree (cutlass-include.tar.xz removed; bin.tar.xz keeps the test binaries, abi_smoke, llama4-bench and the benches
# a mode names).
#   scripts/gpu-session15.sh check   every GPU test; the route_fp8 bench (one launch against the three it fuses);
#                                    Scout decode b1 / b8 at ctx 8192 with the timeline of one layer, --fused-routing
#                                    and the default three launches interleaved (both recipes, then Meta again), then the PyTorch
#                                    composition; the four sanitizers over router_fused (router.cu, permute.cu and
#                                    linear.cu compile to the same cubins as before their code moved to headers)
#   scripts/gpu-session15.sh final   every GPU test, Scout decode with the peer (L4K_SCOUT_CASES), sanitizers over
#                                    L4K_SAN_TESTS
#   scripts/gpu-session15.sh tests   every GPU test, sanitizers over L4K_SAN_TESTS (the closing tree's last call)
#   scripts/gpu-session15.sh scout   Scout decode only (as in final)
source "$(dirname "$0")/gpu-helpers.sh"
case "${1:-}" in
  check)
    # Correctness first (the figures after it need the machine longer): every GPU test, memcheck and racecheck over
    # router_fused; then the figures; synccheck and initcheck last.
    all_tests
    test_report
    sanitize router_fused "memcheck racecheck"
    L4K_BENCH_JSON=$OUT/route.jsonl timeout 100 $bundle/bin/bench-router --bench --noplot 'route_fp8' > $OUT/route.log 2>&1
    echo "bench-router rc $?"
    awk '/^route_fp8\//{id=$1} /time:/{print id, $4, $5}' $OUT/route.log
    for round in 1 2; do
      for v in fused three; do
        flag2=$([[ $v == fused ]] && echo --fused-routing || true)
        for recipe in meta fp8-dense; do
          [[ $round == 2 && $recipe == fp8-dense ]] && continue  # the second round repeats Meta only (device time)
          flag=$([[ $recipe == fp8-dense ]] && echo --fp8-dense || true)
          timeout 100 $bundle/bin/llama4-bench --synthetic scout $flag $flag2 --cases decode --batches 1,8 \
            --contexts 8192 --json $OUT/scout-$v.jsonl > /tmp/s.log 2>&1
          echo "round $round $v $recipe rc $?"
          cat /tmp/s.log >> $OUT/scout.log
          grep -E "\| +[0-9.]+ +[0-9.]+ +[0-9.]+ \||layer 24" /tmp/s.log | cut -c1-330
        done
      done
    done
    for recipe in meta fp8-dense; do
      flag=$([[ $recipe == fp8-dense ]] && echo --fp8-dense || true)
      timeout 150 python3 $bundle/peers/torch_scout.py $flag --cases decode --batches 1,8 --contexts 8192 \
        --json $OUT/scout-peer.jsonl >> $OUT/scout-peer.log 2>&1; echo "peer $recipe rc $?"
    done
    python3 $bundle/peers/model_report.py $OUT/scout-three.jsonl $OUT/scout-peer.jsonl > $OUT/scout.md 2>> $OUT/scout.log
    cut -c1-250 $OUT/scout.md | head -12
    sanitize router_fused "synccheck initcheck"
    (cd $OUT && tar -cJf logs.tar.xz scout.log scout-peer.log san.log route.log && rm scout.log scout-peer.log san.log route.log)
    ;;
  final)
    # The closing tree: every GPU test, Scout decode b1 / b8 with the peer (L4K_SCOUT_CASES), and the sanitizers
    # over L4K_SAN_TESTS (none unless given); the test summary last.
    all_tests
    scout
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
  *) echo "usage: $0 check|final|tests|scout" >&2; exit 2 ;;
esac
