"""PyTorch peer of bench/weight_prep.rs: checkpoint bf16 expert weights [E, K, N] (x @ W layout) -> [E, N, K]
float8_e4m3fn + [E, N] f32 scales, rowwise over K, as an engine's loader writes it (transpose + contiguous,
amax, scale, divide, clamp, cast), eager and under torch.compile. Same shapes, timing and JSON-lines records as
bench/peers/torch_peers.py (family weight_prep), so bench/report.py pairs them with ours.
Usage on the GPU machine: python3 bench/peers/torch_weight_prep.py --json F [--no-compile]
"""
import argparse
import json

import torch

from torch_peers import rand, spread, time_us

# (variant, shape, E, K, N): Scout gate_up [16, 5120, 16384] and down [16, 8192, 5120], as in the Rust bench.
CASES = [("strip", "gate_up_E16", 16, 5120, 16384), ("strip", "down_E16", 16, 8192, 5120),
         ("generic", "down_E4_K8200", 4, 8200, 5120)]


def weight_prep(w):
    wt = w.transpose(1, 2).contiguous()
    amax = wt.abs().amax(-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / 448.0
    q = (wt.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
    return q, scale.squeeze(-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    name = torch.cuda.get_device_name()
    sink = open(args.json, "a")

    def record(variant, shape, nbytes, peer, us):
        sink.write(json.dumps(dict(source="torch", peer=peer, family="weight_prep", variant=variant, shape=shape,
                                   tokens=0, bytes=nbytes, **spread(us), device=name)) + "\n")
        sink.flush()
        print(f"weight_prep/{variant}/{shape} [{peer}]: {us:.2f} us, {nbytes / us / 1e3:.0f} GB/s", flush=True)

    with torch.inference_mode():
        for variant, shape, e, k, n in CASES:
            sets = [(rand(e, k, n),)]
            nbytes = 3 * e * k * n + 4 * e * n
            record(variant, shape, nbytes, "torch eager", time_us(weight_prep, sets, reps=5, samples=7))
            if not args.no_compile:
                fn = torch.compile(weight_prep, dynamic=False)
                record(variant, shape, nbytes, "torch.compile", time_us(fn, sets, reps=5, samples=7))
            del sets
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
