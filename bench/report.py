#!/usr/bin/env python3
"""The results table of one GPU run, and its roofline plot, from what the run left behind.

    python3 bench/report.py --run DIR [--run DIR ...] [--out bench/RESULTS.md] [--plot bench/results/h200-roofline.png]

DIR is one GPU command's output folder ($OUT of `gpu-bundle/run.sh bench peers`, as the device tool brings it
back). From it:
- criterion's own estimates: `criterion.tar.xz` (run.sh packs the benchmark and estimates JSON files of
  $CRITERION_HOME/*/new/) or a `criterion/` folder (target/criterion of a local `cargo bench`); failing both,
  criterion's printed `time: [lo estimate hi]` lines in `bench.log` / `bench-model.log` (older runs kept only
  those). The figure of a row is criterion's typical estimate (the slope, or the mean when it sampled flat)
  with its 95% confidence interval, exactly what criterion prints.
- `ours.jsonl`: one record per case from bench/common.rs and bench/model.rs (criterion id, bytes and FLOPs of a
  call, the FP8 share of the FLOPs) and the copy ceilings they measured; records of vendor peers timed in our
  binaries (`peer`: cuBLASLt) make peers, not rows.
- `peers.jsonl` (bench/peers/torch_*.py) and `scout-peer.jsonl` (bench/peers/torch_scout.py): the PyTorch peers,
  median and sample range; `scout-ours.jsonl` (llama4-bench) gives the model cases' bytes, FLOPs and copy
  ceiling when no bench/model.rs record does.
- `results.tar.xz`: the whole folder, packed by run.sh when it held more files than the device tool returns.
Several --run folders (one run split over several GPU commands) are merged; each row keeps its own folder's
peers and copy ceiling.

A row's limit is the larger of its bytes over the copy ceiling measured in the same run and its FLOPs over the
tensor cores' dense peak (H100 / H200 SXM datasheet: bf16 989.4, FP8 1978.9 TFLOP/s; an FP8 row's bf16 part,
such as a model step's attention, at the bf16 rate); "of limit" is that time over ours. Ratio: the best peer's
time over ours (> 1: we are faster).

--out FILE rewrites the part of FILE between the two marker lines below (FILE is made when it does not exist);
without it the section goes to stdout. --plot draws the roofline (matplotlib): every row with FLOPs at its
arithmetic intensity, every row without at its bytes per call against the copy ceiling, ours and the best peer
joined by a line.
"""
import argparse
import io
import json
import math
import os
import re
import sys
import tarfile
from dataclasses import dataclass, field

BEGIN = "<!-- bench/report.py: begin (generated; edits between these lines are overwritten) -->"
END = "<!-- bench/report.py: end -->"
# Dense tensor-core peaks of the H100 and H200 SXM (the same chip), FLOP/s.
TENSOR_PEAK = {"bf16": 989.4e12, "fp8": 1978.9e12}
UNITS_NS = {"ps": 1e-3, "ns": 1.0, "us": 1e3, "µs": 1e3, "μs": 1e3, "ms": 1e6, "s": 1e9}


class Run:
    """One run's folder: its files by name, those packed in results.tar.xz included."""

    def __init__(self, path):
        self.path = path
        self.files = {}
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isfile(full):
                self.files[name] = full
        packed = self.files.get("results.tar.xz")
        self.packed = {}
        if packed:
            with tarfile.open(packed) as t:
                for m in t.getmembers():
                    if m.isfile():
                        self.packed[m.name.split("/")[-1]] = t.extractfile(m).read()

    def read(self, name):
        if name in self.files:
            with open(self.files[name], "rb") as f:
                return f.read()
        return self.packed.get(name)

    def jsonl(self, name):
        data = self.read(name)
        if data is None:
            return []
        out = []
        for n, line in enumerate(data.decode().splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    sys.exit(f"{self.path}/{name}:{n}: not JSON ({e})")
        return out


@dataclass
class Estimate:
    """Criterion's typical estimate of one id and its confidence interval, nanoseconds."""
    ns: float
    lo: float
    hi: float
    source: str


def typical(estimates):
    """Criterion's choice of the figure it prints: the slope when it sampled linearly, else the mean."""
    e = estimates.get("slope") or estimates["mean"]
    ci = e["confidence_interval"]
    return e["point_estimate"], ci["lower_bound"], ci["upper_bound"]


def criterion_jsons(run):
    """(benchmark.json, estimates.json) byte pairs of every benchmark criterion measured in the run."""
    pairs = {}

    def add(path, data):
        parts = path.replace(os.sep, "/").split("/")
        if len(parts) >= 3 and parts[-2] == "new" and parts[-1] in ("benchmark.json", "estimates.json"):
            pairs.setdefault("/".join(parts[:-2]), {})[parts[-1]] = data

    for name in ("criterion.tar.xz",):
        data = run.read(name)
        if data is not None:
            with tarfile.open(fileobj=io.BytesIO(data)) as t:
                for m in t.getmembers():
                    if m.isfile():
                        add(m.name, t.extractfile(m).read())
    tree = os.path.join(run.path, "criterion")
    for root, _, names in os.walk(tree):
        for n in names:
            with open(os.path.join(root, n), "rb") as f:
                add(os.path.join(root, n), f.read())
    return [(p["benchmark.json"], p["estimates.json"]) for p in pairs.values() if len(p) == 2]


LOG_TIME = re.compile(r"^(?P<id>\S+)?\s+time:\s+\[(?P<lo>[\d.]+) (?P<lu>\S+) (?P<est>[\d.]+) (?P<eu>\S+) "
                      r"(?P<hi>[\d.]+) (?P<hu>\S+)\]")
LOG_NOT_AN_ID = re.compile(r"^(Benchmarking|Warning|Found|Gnuplot|  )")


def criterion_log_estimates(text, source):
    """Criterion's printed estimates: `id  time: [lo est hi]`, the id alone on the line before when long."""
    out, last_id = {}, None
    for line in text.splitlines():
        m = LOG_TIME.match(line)
        if m:
            bid = m.group("id") or last_id
            if bid:
                ns = [float(m.group(k)) * UNITS_NS[m.group(u)] for k, u in (("est", "eu"), ("lo", "lu"), ("hi", "hu"))]
                out[bid] = Estimate(ns[0], ns[1], ns[2], source)
            last_id = None
        elif line.strip() and not LOG_NOT_AN_ID.match(line) and " " not in line.strip():
            last_id = line.strip()
    return out


def estimates(run):
    """Criterion id -> Estimate for every benchmark of the run."""
    out = {}
    for bench, est in criterion_jsons(run):
        b, e = json.loads(bench), json.loads(est)
        ns, lo, hi = typical(e)
        out[b["full_id"]] = Estimate(ns, lo, hi, "criterion JSON")
    if out:
        return out
    for log in ("bench.log", "bench-model.log"):
        data = run.read(log)
        if data is not None:
            out.update(criterion_log_estimates(data.decode(errors="replace"), f"criterion's output in {log}"))
    return out


MODEL_ID = re.compile(r"^(?P<model>[a-z]+)-(?P<recipe>meta|fp8-dense)/(?P<case>decode|prefill)/"
                      r"(?:b(?P<batch>\d+)/ctx(?P<context>\d+)|(?P<prompt>\d+))$")


def model_key(r):
    """The key llama4-bench, torch_scout.py and bench/model.rs give a full-model case."""
    n = r.get("context") if r.get("case") == "decode" else r.get("prompt", r.get("context"))
    return (r.get("model"), r.get("recipe"), r.get("case"), r.get("batch"), n)


def model_key_of_id(bid):
    """The key of a bench/model.rs criterion id (`scout-meta/decode/b1/ctx1024`, `scout-meta/prefill/8192`)."""
    m = MODEL_ID.match(bid)
    if not m:
        return None
    if m.group("case") == "decode":
        return (m.group("model"), m.group("recipe"), "decode", int(m.group("batch")), int(m.group("context")))
    return (m.group("model"), m.group("recipe"), "prefill", 1, int(m.group("prompt")))


@dataclass
class Peer:
    name: str
    ns: float
    lo: float = None
    hi: float = None


@dataclass
class Row:
    id: str
    op: str
    shape: str
    ours: Estimate
    bytes: int
    flops: int
    fp8_flops: int
    copy_gbps: float
    device: str
    peers: list = field(default_factory=list)

    @property
    def best(self):
        return min(self.peers, key=lambda p: p.ns) if self.peers else None

    def limit(self):
        """(seconds, which ceiling) of the row's roofline limit; None without bytes or FLOPs."""
        t_copy = self.bytes / (self.copy_gbps * 1e9) if self.bytes and self.copy_gbps else 0.0
        t_tensor = 0.0
        if self.flops:
            t_tensor = (self.flops - self.fp8_flops) / TENSOR_PEAK["bf16"] + self.fp8_flops / TENSOR_PEAK["fp8"]
        if not t_copy and not t_tensor:
            return None
        if t_tensor > t_copy:
            return t_tensor, "fp8" if self.fp8_flops * 2 > self.flops else "bf16"
        return t_copy, "copy"


def fp8_part(r):
    if "fp8_flops" in r:
        return r["fp8_flops"]
    return r.get("flops", 0) if r.get("math") == "fp8" else 0


def peer_time(r):
    """(ns, lo, hi) of a PyTorch peer record (us from torch_*.py, ms from torch_scout.py)."""
    for unit, scale in (("us", 1e3), ("ms", 1e6)):
        if unit in r:
            lo, hi = r.get(f"{unit}_min"), r.get(f"{unit}_max")
            return r[unit] * scale, lo * scale if lo is not None else None, hi * scale if hi is not None else None
    return None


def rows_of(run):
    """The rows of one run folder and a description of where its figures came from."""
    est = estimates(run)
    ours = run.jsonl("ours.jsonl")
    torch = run.jsonl("peers.jsonl")
    scout, scout_peer = run.jsonl("scout-ours.jsonl"), run.jsonl("scout-peer.jsonl")
    # One measurement per process: llama4-bench repeats its own in every record.
    copies = [r["gbps"] if "gbps" in r else r["bytes"] / r["us"] / 1e3 for r in ours if r.get("family") == "copy"]
    copies += sorted({r["copy_gbps"] for r in scout if "copy_gbps" in r})
    copy = max(copies) if copies else None
    devices = {r["device"] for r in ours + scout if r.get("device")}
    records = {r["id"]: r for r in ours if "id" in r and "peer" not in r}
    vendor = [r for r in ours if "id" in r and "peer" in r]
    llama4_bench = {model_key(r): r for r in scout if "ms" in r and r.get("overlap", True)}
    peers_by_key = {}

    def peer(key, p):
        peers_by_key.setdefault(key, []).append(p)

    for r in torch:
        if r.get("family") != "copy" and peer_time(r):
            peer((r["family"], r["variant"], r["shape"]), Peer(r["peer"], *peer_time(r)))
    for r in vendor:
        if r["id"] in est:
            e = est[r["id"]]
            peer((r["family"], r["variant"], r["shape"]), Peer(r["peer"], e.ns, e.lo, e.hi))
    for r in scout_peer:
        if peer_time(r):
            peer(model_key(r), Peer("PyTorch composition (torch_scout.py)", *peer_time(r)))
    vendor_ids = {r["id"] for r in vendor}
    order = [i for i in records if i in est] + [i for i in est if i not in records and i not in vendor_ids]
    rows, missing = [], []
    for bid in order:
        e = est[bid]
        r = records.get(bid)
        mkey = model_key(r) if r is not None and "case" in r else model_key_of_id(bid) if r is None else None
        if r is None and mkey is not None and mkey in llama4_bench:
            # A model case measured before bench/model.rs wrote records: llama4-bench's record of the same case.
            b = llama4_bench[mkey]
            r = dict(b, bytes=b.get("read_bytes", 0), device=b.get("device"))
        if r is None:
            missing.append(bid)
            continue
        if mkey is not None:
            key, op, shape = mkey, f"{mkey[0]} ({mkey[1]})", bid.split("/", 1)[1]
        else:
            key, op, shape = (r["family"], r["variant"], r["shape"]), f"{r['family']}/{r['variant']}", r["shape"]
        rows.append(Row(bid, op, shape, e, r.get("bytes", 0), r.get("flops", 0), fp8_part(r),
                        r.get("copy_gbps") or copy, r.get("device") or next(iter(devices), "?"),
                        list(peers_by_key.get(key, []))))
    sources = sorted({e.source for e in est.values()})
    return rows, dict(path=run.path, copy=copy, copies=copies, devices=devices, sources=sources, missing=missing)


def fmt_ns(ns, unit=None):
    unit = unit or ("ms" if ns >= 1e6 else "us")
    v = ns / (1e6 if unit == "ms" else 1e3)
    return f"{v:.{1 if v >= 100 else 2 if v >= 1 else 3}f}"


def time_cell(ns, lo, hi):
    unit = "ms" if ns >= 1e6 else "us"
    spread = f" [{fmt_ns(lo, unit)}, {fmt_ns(hi, unit)}]" if lo is not None and hi is not None else ""
    return f"{fmt_ns(ns, unit)} {unit}{spread}"


def family(r):
    """What a row is drawn as: its op family, or the model and recipe."""
    return r.op.split("/")[0]


def header(rows, runs):
    devices = sorted({d for run in runs for d in run["devices"]} | {r.device for r in rows})
    out = [f"Device: {', '.join(devices) or '?'}. Generated by `python3 bench/report.py` from "
           + ", ".join(f"`{run['path']}`" for run in runs) + "."]
    for run in runs:
        if run["copies"]:
            lo, hi = min(run["copies"]), max(run["copies"])
            out.append(f"Copy ceiling measured in `{run['path']}`: {hi:.0f} GB/s (bytes read + written; the best of "
                       f"{len(run['copies'])} measurements, {lo:.0f}-{hi:.0f})." + (
                           "" if not run["missing"] else f" Estimates without a record (not shown): "
                           f"{len(run['missing'])}."))
        out.append(f"Ours: {' and '.join(run['sources']) or 'no criterion estimate'}.")
    out.append(f"Tensor ceilings: bf16 {TENSOR_PEAK['bf16'] / 1e12:.1f}, FP8 {TENSOR_PEAK['fp8'] / 1e12:.1f} "
               "TFLOP/s (dense, datasheet). Ours: criterion's estimate [95% confidence interval]; peer: the best "
               "peer's median [fastest, slowest sample]; ratio: peer / ours (> 1: we are faster); of limit: the row's "
               "limit (bytes at the copy ceiling or FLOPs at the tensor ceiling, whichever is longer) over ours.")
    return out


def table(rows):
    out = ["| op | shape | ours | best peer | peer | ratio | bound | GB/s | TFLOP/s | of limit |",
            "|---|---|---:|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        s = r.ours.ns * 1e-9
        best = r.best
        peer = f"{best.name} | {time_cell(best.ns, best.lo, best.hi)} | {best.ns / r.ours.ns:.2f}x" if best else "| |"
        lim = r.limit()
        bound = f"{lim[1]} | " if lim else " | "
        gbps = f"{r.bytes / s / 1e9:.0f}" if r.bytes else ""
        tflops = f"{r.flops / s / 1e12:.0f}" if r.flops else ""
        frac = f"{100 * lim[0] / s:.0f}%" if lim else ""
        out.append(f"| {r.op} | {r.shape} | {time_cell(r.ours.ns, r.ours.lo, r.ours.hi)} | {peer} | {bound}{gbps} | "
                   f"{tflops} | {frac} |")
    return out


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    copy = max(r.copy_gbps for r in rows if r.copy_gbps) * 1e9
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [3, 2]})
    families = sorted({family(r) for r in rows})
    colors = dict(zip(families, plt.cm.tab10.colors + plt.cm.Dark2.colors))
    drawn, skipped = set(), []

    def pair(axis, r, x, ours_y, peer_y):
        c, label = colors[family(r)], family(r)
        axis.scatter([x], [ours_y], color=c, marker="o", s=28, zorder=4, label=None if label in drawn else label)
        drawn.add(label)
        if peer_y is not None:
            axis.scatter([x], [peer_y], facecolors="none", edgecolors=c, marker="s", s=28, zorder=3)
            axis.plot([x, x], [ours_y, peer_y], color=c, lw=0.8, alpha=0.7)

    compute = [r for r in rows if r.flops and r.bytes]
    for r in compute:
        ai = r.flops / r.bytes
        best = r.best
        pair(ax, r, ai, r.flops / r.ours.ns / 1e3, r.flops / best.ns / 1e3 if best else None)
    memory = [r for r in rows if not r.flops and r.bytes]
    for r in memory:
        best = r.best
        pair(bx, r, r.bytes, r.bytes / r.ours.ns, r.bytes / best.ns if best else None)
    skipped = [r.id for r in rows if not r.bytes]

    # Wide enough to show both roofs' slope and ridge whatever the rows' intensities.
    ais = [r.flops / r.bytes for r in compute] + [1.0, TENSOR_PEAK["fp8"] / copy]
    xs = [10 ** (math.floor(math.log10(min(ais))) - 0.3), 10 ** (math.ceil(math.log10(max(ais))) + 0.3)]
    grid = [xs[0] * (xs[1] / xs[0]) ** (i / 200) for i in range(201)]
    for name, peak, style in (("FP8", TENSOR_PEAK["fp8"], "-"), ("bf16", TENSOR_PEAK["bf16"], "--")):
        ax.plot(grid, [min(copy * x, peak) / 1e12 for x in grid], "k" + style, lw=1.2,
                label=f"{name} {peak / 1e12:.0f} TFLOP/s, copy {copy / 1e9:.0f} GB/s")
    if not compute:
        ax.text(0.5, 0.5, "no row of this run records its FLOPs", transform=ax.transAxes, ha="center", fontsize=9)
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP per byte moved)",
           ylabel="achieved TFLOP/s", title="Rows with matrix work: roofline")
    ax.grid(True, which="both", alpha=0.25)
    if memory:
        bx.axhline(copy / 1e9, color="k", lw=1.2, label=f"copy ceiling {copy / 1e9:.0f} GB/s (measured)")
    bx.set(xscale="log", yscale="log", xlabel="bytes moved per call", ylabel="achieved GB/s",
           title="Rows bound by memory alone")
    bx.grid(True, which="both", alpha=0.25)
    for axis in (ax, bx):
        h, l = axis.get_legend_handles_labels()
        if h:
            axis.legend(fontsize=7, loc="lower right")
    devices = ", ".join(sorted({r.device for r in rows}))
    note = "filled circle: ours (criterion's estimate); open square: best peer in the same run; line joins them"
    if skipped:
        note += f"; not drawn (no bytes recorded): {len(skipped)} rows"
    fig.suptitle(f"{devices}: every bench row against the copy and tensor ceilings\n{note}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return skipped


def write_section(path, lines):
    section = "\n".join(lines) + "\n" + END + "\n"
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(section)
        return
    with open(path) as f:
        text = f.read()
    b, e = text.find(BEGIN), text.find(END)
    if b < 0 or e < b:
        sys.exit(f"{path} has no `{BEGIN}` ... `{END}` section to rewrite: add the two lines where it goes")
    with open(path, "w") as f:
        f.write(text[:b] + section + text[e + len(END) + 1:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, help="a GPU command's output folder (repeatable)")
    ap.add_argument("--out", help="markdown file whose generated section to rewrite (default: stdout)")
    ap.add_argument("--plot", help="PNG of the roofline (needs matplotlib)")
    args = ap.parse_args(argv)
    by_id, runs = {}, []
    for path in args.run:
        rows, info = rows_of(Run(path))
        runs.append(info)
        for r in rows:
            if r.id in by_id:
                print(f"{r.id}: measured in two runs, keeping {path}'s", file=sys.stderr)
            by_id[r.id] = r
    rows = list(by_id.values())
    if not rows:
        sys.exit("no criterion estimate with a record in " + ", ".join(args.run))
    lines = [BEGIN, ""] + header(rows, runs) + [""]
    if args.plot:
        skipped = plot(rows, args.plot)
        rel = os.path.relpath(os.path.abspath(args.plot), os.path.dirname(os.path.abspath(args.out or "x")))
        lines += [f"![every row against the copy and tensor ceilings]({rel})", ""]
        if skipped:
            lines += [f"Not drawn (no bytes recorded): {', '.join(skipped)}.", ""]
    lines += table(rows)
    if args.out:
        write_section(args.out, lines)
    else:
        print("\n".join(lines + [END]))


if __name__ == "__main__":
    main()
