"""Merges our bench records and the peers' (JSON lines) into one markdown table: our time, the best peer's,
the ratio (peer time / our time: > 1 means we are faster), and our fraction of the copy ceiling measured in
the same run. Usage: python3 bench/report.py ours.jsonl peers.jsonl > bench.md"""
import json
import sys


def load(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


ours = load(sys.argv[1])
peers = load(sys.argv[2]) if len(sys.argv) > 2 else []
# Peers timed inside our bench binaries (vendor libraries through cudarc) carry a "peer" name.
peers += [r for r in ours if "peer" in r]
ours = [r for r in ours if "peer" not in r]
copy = [r for r in ours + peers if r["family"] == "copy"]
ceiling = max((r["bytes"] / r["us"] / 1e3 for r in copy), default=float("nan"))
device = ours[0]["device"] if ours else "?"
print(f"Device: {device}. Copy ceiling measured in the same run: {ceiling:.0f} GB/s (bytes read + written).\n")
print("| op | shape | ours (us) | ours GB/s | % of copy | best peer | peer (us) | ratio peer/ours |")
print("|---|---|---:|---:|---:|---|---:|---:|")
seen = set()
for r in ours:
    if r["family"] == "copy":
        continue
    key = (r["family"], r["variant"], r["shape"])
    if key in seen:
        continue
    seen.add(key)
    gbps = r["bytes"] / r["us"] / 1e3
    tflops = f" ({r['flops'] / r['us'] / 1e6:.0f} TFLOP/s)" if r.get("flops") else ""
    cands = [p for p in peers if (p["family"], p["variant"], p["shape"]) == key and p["family"] != "copy"]
    best = min(cands, key=lambda p: p["us"]) if cands else None
    peer = f"{best['peer']} | {best['us']:.2f} | {best['us'] / r['us']:.2f}x" if best else "- | - | -"
    print(f"| {r['family']}/{r['variant']} | {r['shape']} | {r['us']:.2f}{tflops} | {gbps:.0f} | {100 * gbps / ceiling:.0f}% | {peer} |")
if peers:
    print("\nAll peer figures (us):\n")
    print("| op | shape | peer | us |")
    print("|---|---|---|---:|")
    for p in peers:
        print(f"| {p['family']}/{p['variant']} | {p['shape']} | {p['peer']} | {p['us']:.2f} |")
