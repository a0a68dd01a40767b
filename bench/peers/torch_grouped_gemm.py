"""PyTorch peers of bench/grouped_gemm.rs, timed the same way in the same GPU command: torch._scaled_grouped_mm
(rowwise scales, the MoE path PyTorch ships) and a loop of torch._scaled_mm per expert. Llama 4 Scout (16 experts)
and Maverick (128 experts) shapes, tokens spread evenly over the experts. Usage: python3 torch_grouped_gemm.py --json F"""
import argparse
import json
import os

import torch

from torch_peers import time_us

dev = "cuda"


def fp8(*shape):
    return (torch.randn(*shape, device=dev) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    name = torch.cuda.get_device_name()
    sink = open(args.json, "a")

    def record(variant, shape, tokens, nbytes, flops, peer, us):
        sink.write(json.dumps(dict(source="torch", peer=peer, family="grouped_gemm", variant=variant, shape=shape,
                                   tokens=tokens, bytes=nbytes, flops=flops, us=us, device=name)) + "\n")
        sink.flush()
        print(f"grouped_gemm/{variant}/{shape} [{peer}]: {us:.1f} us, {flops / us / 1e6:.0f} TFLOP/s", flush=True)

    with torch.inference_mode():
        for E, (proj, n, k) in [(e, p) for e in (16, 128) for p in (("gate_up", 16384, 5120), ("down", 5120, 8192))]:
            # One expert drawn and copied (as bench/grouped_gemm.rs does): 128 x 16384 x 5120 in f32 would not fit.
            one = fp8(n, k)
            w = one.unsqueeze(0).expand(E, n, k).contiguous()
            del one
            sb = torch.rand(E, n, device=dev) * 1e-2 + 1e-3
            for t in [16384, 4096, 512, 128]:
                a = fp8(t, k)
                sa = torch.rand(t, device=dev) * 1e-2 + 1e-3
                offs = torch.tensor([(e + 1) * t // E for e in range(E)], device=dev, dtype=torch.int32)
                shape = f"{proj}_T{t}_E{E}"
                only = [f for f in os.environ.get("L4K_BENCH_ONLY", "").split(",") if f]
                if only and not any(f in shape for f in only):
                    continue
                flops, nbytes = 2 * t * n * k, E * n * k + t * k + 2 * t * n
                def grouped(fast=False):
                    return torch._scaled_grouped_mm(a, w.transpose(-2, -1), sa, sb, offs=offs,
                                                    out_dtype=torch.bfloat16, use_fast_accum=fast)
                try:
                    # Paired with our "auto" dispatch: the figure an engine gets without choosing a kernel.
                    record("auto", shape, t, nbytes, flops, "torch._scaled_grouped_mm", time_us(grouped, [()]))
                    # Like for like with our fast-accumulation variant.
                    record("prefill_fast_accum", shape, t, nbytes, flops, "torch._scaled_grouped_mm fast_accum",
                           time_us(lambda: grouped(True), [()]))
                except RuntimeError as e:
                    print(f"_scaled_grouped_mm {shape}: {e}", flush=True)
                bounds = [0] + offs.tolist()

                def loop():
                    for e in range(E):
                        lo, hi = bounds[e], bounds[e + 1]
                        if hi > lo:
                            torch._scaled_mm(a[lo:hi], w[e].t(), scale_a=sa[lo:hi, None], scale_b=sb[e][None, :],
                                             out_dtype=torch.bfloat16)
                try:
                    record("auto", shape, t, nbytes, flops, "torch._scaled_mm per expert", time_us(loop, [()]))
                except RuntimeError as e:
                    print(f"_scaled_mm loop {shape}: {e}", flush=True)
            del w


if __name__ == "__main__":
    main()
