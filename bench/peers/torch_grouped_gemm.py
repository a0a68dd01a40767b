"""PyTorch peers of bench/grouped_gemm.rs, timed the same way in the same GPU command: torch._scaled_grouped_mm
(rowwise scales, the MoE path PyTorch ships) and a loop of torch._scaled_mm per expert. Llama 4 Scout (16 experts)
and Maverick (128 experts) shapes, tokens spread evenly over the experts. For Scout, the peer of our 128x128
blockwise variant: torch._scaled_mm with 1x128 / 128x128 block scales once per expert (PyTorch has no blockwise
grouped GEMM on sm_90; what this PyTorch build says when asked is printed). Usage:
python3 torch_grouped_gemm.py --json F"""
import argparse
import json
import os

import torch

from torch_peers import spread, time_us

dev = "cuda"


def fp8(*shape):
    """FP8 codes 0x20..0x4F with a random sign, drawn as bench/grouped_gemm.rs draws ours: at the H100's power
    limit the bit patterns change the power per FLOP and so the speed (randn * 100 moved torch's grouped kernel by
    -2% / +6.5%, bench/results/h100-grouped-gemm-sweep3-sustained.md), so peers and ours share the distribution."""
    mag = torch.randint(0x20, 0x50, shape, device=dev, dtype=torch.uint8)
    return (mag | torch.randint(0, 2, shape, device=dev, dtype=torch.uint8) * 0x80).view(torch.float8_e4m3fn)


def blockwise_mm():
    """A per-expert blockwise GEMM of this PyTorch, or None (the reasons are printed): out = a @ w.t() with
    a [m, k] and 1x128 scales sa [m, k/128], w [n, k] and 128x128 scales sb [n/128, k/128]. The old entry point
    infers the recipe from the scale shapes (1x128 scales outer-dim-major); the newer torch.nn.functional.scaled_mm
    names it. Each candidate is checked against a dequantized matmul before it is timed."""
    import torch.nn.functional as F

    def old(a, w, sa, sb):
        return torch._scaled_mm(a, w.t(), scale_a=sa, scale_b=sb.t(), out_dtype=torch.bfloat16)

    def new(a, w, sa, sb):
        st = F.ScalingType
        return F.scaled_mm(a, w.t(), sa, st.BlockWise1x128, sb.t(), st.BlockWise128x128,
                           output_dtype=torch.bfloat16)

    m, n, k = 256, 256, 512
    a, w = fp8(m, k), fp8(n, k)
    sa = (torch.rand(k // 128, m, device=dev) + 0.5).t()  # [m, k/128], outer-dim-major
    sb = torch.rand(n // 128, k // 128, device=dev) + 0.5
    want = (a.float() * sa.repeat_interleave(128, 1)) @ (w.float() * sb.repeat_interleave(128, 0).repeat_interleave(128, 1)).t()
    for name, f in (("torch._scaled_mm", old), ("torch.nn.functional.scaled_mm", new)):
        try:
            got = f(a, w, sa, sb).float()
            err = ((got - want).norm() / want.norm()).item()
            if err < 1e-2:
                print(f"blockwise peer: {name} works on this GPU (rel. error {err:.1e})", flush=True)
                return name, f
            print(f"blockwise peer: {name} ran but disagrees with the dequantized product ({err:.2e})", flush=True)
        except Exception as e:  # noqa: BLE001 - any failure means this entry point is not available
            print(f"blockwise peer: {name} unavailable: {type(e).__name__}: {str(e)[:300]}", flush=True)
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    name = torch.cuda.get_device_name()
    sink = open(args.json, "a")

    def record(variant, shape, tokens, nbytes, flops, peer, us):
        sink.write(json.dumps(dict(source="torch", peer=peer, family="grouped_gemm", variant=variant, shape=shape,
                                   tokens=tokens, bytes=nbytes, flops=flops, math="fp8", **spread(us),
                                   device=name)) + "\n")
        sink.flush()
        print(f"grouped_gemm/{variant}/{shape} [{peer}]: {us:.1f} us, {flops / us / 1e6:.0f} TFLOP/s", flush=True)

    only = [f for f in os.environ.get("L4K_BENCH_ONLY", "").split(",") if f]
    with torch.inference_mode():
        blockwise = blockwise_mm()
        for E, (proj, n, k) in [(e, p) for e in (16, 128) for p in (("gate_up", 16384, 5120), ("down", 5120, 8192))]:
            if only and not any(f in f"{proj}_T{t}_E{E}" for f in only for t in (16384, 4096, 512, 128)):
                continue
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
                if E == 16 and blockwise is not None:
                    name, f = blockwise
                    sa_blk = [(torch.rand(k // 128, bounds[e + 1] - bounds[e], device=dev) * 1e-2 + 1e-3).t()
                              for e in range(E)]
                    sb_blk = torch.rand(E, n // 128, k // 128, device=dev) * 1e-2 + 1e-3

                    def blk_loop():
                        for e in range(E):
                            lo, hi = bounds[e], bounds[e + 1]
                            if hi > lo:
                                f(a[lo:hi], w[e], sa_blk[e], sb_blk[e])
                    try:
                        record("blockwise_auto", shape, t, nbytes, flops, f"{name} blockwise per expert",
                               time_us(blk_loop, [()]))
                    except RuntimeError as e:
                        print(f"blockwise loop {shape}: {e}", flush=True)
            del w


if __name__ == "__main__":
    main()
