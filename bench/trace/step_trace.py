#!/usr/bin/env python3
"""Reads a kernel trace (bench/trace/kernel_trace.c's CSV) and prints where one replayed step's time goes.

The step is the graph replayed most often in the trace (llama4-bench's timed decode steps); its replays are told
apart by their launch's correlation id. For the median replay by span it prints, per stream, each kernel's
marginal time: how far its end moves the stream's last end (the increments sum to the stream's span, so PDL's
overlap is counted once, on the kernel that still runs after its predecessor ends), summed per kernel name
over the step and, for one layer-sized window (`--layer-from` kernel index on the main stream), kernel by kernel.

  step_trace.py trace.csv [--layer-from N] [--json out.json]
"""
import argparse
import collections
import csv
import json
import re
import statistics
import sys


def short_name(mangled):
    """`l4k::rmsnorm_kernel` from `_ZN3l4k14rmsnorm_kernelILi8E...`; other names cut to 48 characters."""
    m = re.match(r"_ZN((?:\d+\w+?)+?)(?:I|E)", mangled)
    if not m:
        return mangled[:48]
    parts, s = [], m.group(1)
    while s:
        d = re.match(r"(\d+)", s)
        if not d:
            break
        n = int(d.group(1))
        start = len(d.group(1))
        parts.append(s[start:start + n])
        s = s[start + n:]
    return "::".join(parts) or mangled[:48]


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("start", "end", "stream", "graph", "node", "correlation", "grid_x", "block_x"):
            r[k] = int(r[k])
        r["short"] = short_name(r["name"])
    return [r for r in rows if r["start"] and r["end"]]


def replays(rows):
    """{graph id: [kernels of one launch, ...]} for kernels launched from graphs."""
    by = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in rows:
        if r["graph"]:
            by[r["graph"]][r["correlation"]].append(r)
    return {g: [sorted(v, key=lambda r: r["start"]) for _, v in sorted(launches.items())] for g, launches in by.items()}


def marginals(kernels):
    """Per stream: [(kernel, marginal ns, idle ns)] in end order. A kernel's marginal is how far its end moves the
    stream's last end (the idle time before its start included), so the marginals sum to the stream's span."""
    out = {}
    for st in sorted({k["stream"] for k in kernels}):
        ks = sorted((k for k in kernels if k["stream"] == st), key=lambda k: k["end"])
        last, rows = ks[0]["start"], []
        for k in ks:
            rows.append((k, k["end"] - last, max(0, k["start"] - last)))
            last = k["end"]
        out[st] = rows
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--layer-from", type=int, default=None, help="main-stream kernel index a layer window starts at")
    ap.add_argument("--layer-len", type=int, default=None, help="kernels in the window (default: the step's / 48)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rows = load(a.trace)
    graphs = replays(rows)
    if not graphs:
        print("no graph replays in the trace", file=sys.stderr)
        return 1
    g, launches = max(graphs.items(), key=lambda kv: (len(kv[1]), len(kv[1][-1])))
    spans = [max(k["end"] for k in l) - l[0]["start"] for l in launches]
    med = sorted(range(len(launches)), key=lambda i: spans[i])[len(launches) // 2]
    step = launches[med]
    print(f"graph {g}: {len(launches)} replays of {len(step)} kernels; span median {spans[med] / 1e3:.1f} us, "
          f"min {min(spans) / 1e3:.1f}, max {max(spans) / 1e3:.1f}")
    m = marginals(step)
    streams = sorted(m, key=lambda s: -len(m[s]))
    report = {"graph": g, "replays": len(launches), "span_us": spans[med] / 1e3, "streams": {}}
    for st in streams:
        ks = m[st]
        busy = ks[-1][0]["end"] - ks[0][0]["start"]
        tot = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
        for k, marg, idle in ks:
            t = tot[k["short"]]
            t[0] += 1
            t[1] += marg / 1e3
            t[2] += (k["end"] - k["start"]) / 1e3
            t[3] += idle / 1e3
        idle = sum(i for _, _, i in ks) / 1e3
        print(f"\nstream {st}: {len(ks)} kernels over {busy / 1e3:.1f} us, {idle:.1f} us of it with none running")
        print(f"{'kernel':44} {'calls':>5} {'marginal us':>12} {'share':>6} {'duration us':>12} {'idle before':>12}")
        for name, (n, marg, dur, idl) in sorted(tot.items(), key=lambda kv: -kv[1][1]):
            print(f"{name[:44]:44} {n:5d} {marg:12.1f} {100 * marg / (busy / 1e3):5.1f}% {dur:12.1f} {idl:12.1f}")
        report["streams"][st] = {name: {"calls": n, "marginal_us": marg, "duration_us": dur, "idle_us": idl}
                                 for name, (n, marg, dur, idl) in tot.items()}
    main_ks = m[streams[0]]
    n = a.layer_len or max(1, len(main_ks) // 48)
    i0 = a.layer_from if a.layer_from is not None else len(main_ks) // 2
    window = main_ks[i0:i0 + n]
    if window:
        t0, t1 = window[0][0]["start"], window[-1][0]["end"]
        print(f"\nmain stream kernels {i0}..{i0 + len(window) - 1} ({(t1 - t0) / 1e3:.1f} us), with the other streams' "
              f"kernels that end inside it:")
        print(f"{'start us':>9} {'end us':>9} {'dur':>7} {'marg':>7} {'grid':>6} {'st':>3}  kernel")
        inside = [(k, marg) for st in streams for k, marg, _ in m[st] if t0 <= k["end"] <= t1]
        for k, marg in sorted(inside, key=lambda km: km[0]["end"]):
            print(f"{(k['start'] - t0) / 1e3:9.1f} {(k['end'] - t0) / 1e3:9.1f} {(k['end'] - k['start']) / 1e3:7.1f} "
                  f"{marg / 1e3:7.1f} {k['grid_x']:6d} {k['stream']:3d}  {k['short'][:60]}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
