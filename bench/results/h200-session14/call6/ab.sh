#!/usr/bin/env bash
# Session 14 call 6: where the shared expert forks, A/B in one command (llama4-bench-first: before the router, as
# shipped; llama4-bench-logits: after the router logits GEMV), both with the main stream at the greatest priority.
b=gpu-bundle; [[ -d $b/bin ]] || tar -C $b -xJf $b/bin.tar.xz
for round in 1 2; do for recipe in meta fp8-dense; do for v in first logits; do
  flag=$([[ $recipe == fp8-dense ]] && echo --fp8-dense || true)
  timeout 100 $b/bin/llama4-bench-$v --synthetic scout $flag --cases decode --batches 1,8 --contexts 8192 --json $OUT/ab-$v.jsonl > /tmp/ab.log 2>&1; echo "round $round $recipe $v rc $?"
  cat /tmp/ab.log >> $OUT/ab.log
  grep -E "\| +[0-9.]+ +[0-9.]+ +[0-9.]+ \||layer 24" /tmp/ab.log | cut -c1-330
done; done; done
