#!/usr/bin/env python3
"""Collates the full-size model bench (llama4-bench --json) and its PyTorch peer (bench/peers/torch_scout.py
--json) from one GPU command into markdown: per recipe and case, ours, the peer, the ratio, the weight-read limit
and the fraction of it reached, memory, and the op breakdown of our profiled steps.

    python3 bench/model_report.py ours.jsonl peer.jsonl > scout.md
"""
import json
import sys


def load(path):
    try:
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip()]
    except FileNotFoundError:
        return []


def key(r):
    n = r.get("context") if r.get("case") == "decode" else r.get("prompt", r.get("context"))
    return (r.get("recipe"), r.get("case"), r.get("batch"), n)


def main():
    ours, peer = load(sys.argv[1]), load(sys.argv[2])
    peers = {key(r): r for r in peer}
    dev = next((r["device"] for r in ours if "device" in r), "?")
    print(f"device: {dev}\n")
    for recipe, overlap in (("meta", True), ("fp8-dense", True), ("meta", False), ("fp8-dense", False)):
        rows = [r for r in ours if r.get("recipe") == recipe and r.get("overlap", True) == overlap]
        if not rows:
            continue
        r0 = rows[0]
        how = "shared expert on its own stream" if overlap else "shared expert in line (--no-overlap)"
        print(f"### Scout, {r0['layers']} layers, recipe {recipe}, {how}: weights {r0['weight_bytes'] / 1e9:.1f} GB, "
              f"copy ceiling {r0['copy_gbps']:.0f} GB/s\n")
        print("| case | batch | ctx/prompt | ours ms | ours tok/s | peer ms | peer tok/s | ours/peer | limit ms | "
              "of limit | KV GB | ws GB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            k = key(r)
            p = peers.get(k, {})
            if "skipped" in r:
                print(f"| {r['case']} | {r['batch']} | {k[3]} | does not fit: KV {r['kv_bytes'] / 1e9:.1f} GB, "
                      f"{r['free_bytes'] / 1e9:.1f} GB free | | | | | | | | |")
                continue
            pm = p.get("ms")
            ratio = f"{pm / r['ms']:.2f}x" if pm else (p.get("skipped", "no peer") if p else "no peer")
            lim = f"{r['limit_ms']:.3f}" if r.get("limit_ms") else ""
            frac = f"{100 * r['limit_ms'] / r['ms']:.0f}%" if r.get("limit_ms") else ""
            print(f"| {r['case']} | {r['batch']} | {k[3]} | {r['ms']:.3f} | {r['tokens_per_s']:.1f} | "
                  f"{pm if pm is None else round(pm, 3)} | {p.get('tokens_per_s', '')} | {ratio} | {lim} | {frac} | "
                  f"{r['kv_bytes'] / 1e9:.2f} | {r['workspace_bytes'] / 1e9:.2f} |")
        print()
        for r in rows:
            prof = r.get("profile")
            picked = {(1, 8192), (8, 8192), (32, 1024), (64, 1024)}
            if not prof or (r["case"] == "decode" and (r.get("batch"), r.get("context")) not in picked):
                continue
            tot = sum(o["ms"] for o in prof)
            parts = ", ".join(f"{o['op']} {100 * o['ms'] / tot:.1f}%" for o in sorted(prof, key=lambda o: -o["ms"]))
            n = r.get("context", r.get("prompt"))
            print(f"- {r['case']} batch {r['batch']} at {n}: eager step {tot:.2f} ms: {parts}")
            tl = r.get("timeline")
            if tl:
                ops = ", ".join(f"{o['op']} {o['us']:.1f}" for o in tl["ops"])
                layer_us = sum(o["us"] for o in tl["ops"])
                print(f"  - layer {tl['layer']} inside a replayed step (event nodes between its ops), "
                      f"{layer_us:.1f} us, in us: {ops}")
        print()


if __name__ == "__main__":
    main()
