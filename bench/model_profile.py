#!/usr/bin/env python3
"""A first profile of the model's decode step by op family, from `ncu --csv --metrics gpu__time_duration.sum`
over `llama4-run --device cuda --no-graphs` (eager launches, so ncu sees each kernel).

    python3 bench/model_profile.py ncu.csv STEPS

Steps end with the argmax kernel: kernels after the prefill's argmax up to the last one are decode steps, and
their times are summed by family and divided by the number of steps. ncu serialises kernels and times each one
alone, so the sum is the step's kernel time without launch gaps: a share-of-step profile, not a step time.
"""
import csv
import re
import sys
from collections import defaultdict

FAMILIES = [
    ("argmax", r"argmax"),
    ("embedding (+ logit-row gather)", r"embedding"),
    ("rmsnorm (+ residual add)", r"rmsnorm"),
    ("rope", r"rope"),
    ("attention_decode", r"l4k::decode|combine_kernel|decode::"),
    ("attention_prefill", r"prefill"),
    ("router", r"router"),
    ("permute / unpermute", r"permute"),
    ("swiglu", r"swiglu"),
    ("quant", r"quant_kernel"),
    ("grouped_gemm (FP8 experts)", r"setup_kernel|cutlass|Gemm|gemm_kernel"),
    ("linear (cuBLASLt bf16)", r"nvjet|xmma|sm90_|cublas|gemv|splitK|Kernel"),
]


def family(name):
    for fam, pat in FAMILIES:
        if re.search(pat, name):
            return fam
    return "other: " + name[:60]


def main():
    path = sys.argv[1]
    rows = []
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = r.get("Metric Unit", "ns")
        v = float(r["Metric Value"].replace(",", ""))
        scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}.get(unit, 1e-3)
        rows.append((r["Kernel Name"], v * scale))
    ends = [i for i, (n, _) in enumerate(rows) if "argmax" in n]
    if len(ends) < 2:
        print("model profile: fewer than two steps found")
        return 1
    decode = rows[ends[0] + 1 : ends[-1] + 1]
    steps = len(ends) - 1
    by = defaultdict(float)
    for n, us in decode:
        by[family(n)] += us / steps
    total = sum(by.values())
    print(f"decode step by op family ({steps} steps, {len(decode) // steps} kernels per step, ncu kernel time "
          f"{total:.1f} us per step):")
    for fam, us in sorted(by.items(), key=lambda x: -x[1]):
        print(f"  {fam:<34} {us:9.1f} us  {100 * us / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
