"""PyTorch equivalents of the benchmarked ops, timed the same way in the same GPU command.

For each op: eager PyTorch as an inference engine would write it, and the same function under torch.compile
(Inductor fuses it into Triton kernels: the strongest off-the-shelf peer). Median microseconds per call over
CUDA-graph-free event timing of back-to-back calls, inputs rotated so each pass overflows L2, random data.
Writes one JSON line per case to --json (the median and the fastest and slowest sample). Run on the GPU
machine: python3 bench/peers/torch_peers.py --json F
"""
import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F

TOKENS = [1, 64, 4096, 16384]
H, I, NH, NKV, D = 5120, 8192, 40, 8, 128
EPS = 1e-5
dev = "cuda"


def rotation(bytes_per_call):
    return max(1, min(16, math.ceil((256 << 20) / max(bytes_per_call, 1))))


# Seconds of back-to-back calls before a peer's timed samples: the same sustained load our cases see before
# theirs (criterion's 0.3 s warm-up and 1 s of measurement, bench/common.rs). An H100 under sustained
# tensor-core load lowers its clock (~1980 -> ~1755 MHz): a peer timed straight after a pause ran at the higher
# clock while our figure, taken after criterion, ran at the lower one. L4K_PEER_WARMUP_S=0 restores the old way.
WARMUP_S = float(os.environ.get("L4K_PEER_WARMUP_S", "1.3"))


class Median(float):
    """The median of timed samples, carrying the fastest and slowest of them (`lo`, `hi`) so a record can give
    the spread beside the figure (bench/report.py prints it)."""

    def __new__(cls, samples):
        s = sorted(samples)
        m = super().__new__(cls, s[len(s) // 2])
        m.lo, m.hi = s[0], s[-1]
        return m


def spread(t, unit="us"):
    """A timing's record fields: the median, and the samples' range when `t` is a Median."""
    fields = {unit: float(t)}
    if isinstance(t, Median):
        fields.update({f"{unit}_min": t.lo, f"{unit}_max": t.hi})
    return fields


def time_us(fn, sets, reps=20, samples=15):
    """Median (a Median) over samples of (time of `reps` back-to-back calls) / reps, cycling through input sets,
    after WARMUP_S seconds of back-to-back calls."""
    for k in range(3):
        fn(*sets[k % len(sets)])
    torch.cuda.synchronize()
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < WARMUP_S:
        for _ in range(reps):
            fn(*sets[k % len(sets)])
            k += 1
        torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = []
    for _ in range(samples):
        start.record()
        for k in range(reps):
            fn(*sets[k % len(sets)])
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) * 1e3 / reps)
    return Median(out)


def rand(*shape, dtype=torch.bfloat16):
    return (torch.rand(*shape, device=dev, dtype=torch.float32) * 4 - 2).to(dtype)


# ---- the ops, written as the HF model / an engine does ---------------------------------------------------

def rmsnorm(x, w):
    n = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + EPS)
    return n.to(x.dtype) * w


def rmsnorm_fused(x, w):
    return F.rms_norm(x, (x.shape[-1],), w, EPS)


def add_rmsnorm(x, r, w):
    s = r + x
    return s, rmsnorm(s, w)


def quant_fp8(x):
    amax = x.abs().amax(-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / 448.0
    q = (x.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
    return q, scale


def swiglu(gu):
    g, u = gu.chunk(2, dim=-1)
    return F.silu(g) * u


def swiglu_fp8(gu):
    return quant_fp8(swiglu(gu))


def rope_qkv(qkv, freqs_cis, slots, kc, vc, qk_norm, temp):
    t = qkv.shape[0]
    q, k, v = qkv.split([NH * D, NKV * D, NKV * D], dim=-1)
    q, k, v = q.view(t, NH, D), k.view(t, NKV, D), v.view(t, NKV, D)
    if freqs_cis is not None:
        qc = torch.view_as_complex(q.float().reshape(t, NH, D // 2, 2))
        kc_ = torch.view_as_complex(k.float().reshape(t, NKV, D // 2, 2))
        q = torch.view_as_real(qc * freqs_cis[:, None, :]).flatten(2).type_as(qkv)
        k = torch.view_as_real(kc_ * freqs_cis[:, None, :]).flatten(2).type_as(qkv)
        if qk_norm:
            q = (q.float() * torch.rsqrt(q.float().pow(2).mean(-1, keepdim=True) + EPS)).type_as(qkv)
            k = (k.float() * torch.rsqrt(k.float().pow(2).mean(-1, keepdim=True) + EPS)).type_as(qkv)
    elif temp is not None:
        q = (q * temp[:, None, None]).to(qkv.dtype)
    kc.index_copy_(0, slots, k)
    vc.index_copy_(0, slots, v)
    return q.contiguous()


def route_layout(ids, e):
    """The part of routing a permutation needs: stable sort by expert, counts, offsets, destinations."""
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=e)
    offsets = F.pad(torch.cumsum(counts, 0), (1, 0))
    dest = torch.empty_like(order)
    dest[order] = torch.arange(order.numel(), device=order.device)
    return counts, offsets, dest, order


def route_sigmoid_top1(logits):
    # Llama4Router: top-1 on the raw logits, sigmoid in f32, back to the activation dtype.
    score, ids = torch.topk(logits, 1, dim=-1)
    w = torch.sigmoid(score.float()).to(logits.dtype)
    return (ids, w) + route_layout(ids, logits.shape[1])


def route_softmax_top8(logits):
    probs = torch.softmax(logits.float(), dim=-1)
    w, ids = torch.topk(probs, 8, dim=-1)
    w = w / w.sum(-1, keepdim=True)
    return (ids, w) + route_layout(ids, logits.shape[1])


def permute_fp8_scaled(x, order, w_sorted):
    # index_select into expert order, scale the expert input (bf16), per-token FP8 quantization.
    xs = (x.index_select(0, order) * w_sorted[:, None]).to(x.dtype)
    return quant_fp8(xs)


def permute_bf16_scaled(x, order, w_sorted):
    return (x.index_select(0, order) * w_sorted[:, None]).to(x.dtype)


def unpermute_shared(y, order, shared):
    # scatter the expert rows back to their tokens, adding onto the shared expert's output.
    return shared.index_add(0, order, y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated families to run (default: all)")
    args = ap.parse_args()
    only = {f for f in args.only.split(",") if f}
    name = torch.cuda.get_device_name()
    sink = open(args.json, "a")

    def record(family, variant, shape, tokens, nbytes, peer, us):
        # One line at a time: a run cut short still leaves every finished figure.
        sink.write(json.dumps(dict(source="torch", peer=peer, family=family, variant=variant, shape=shape,
                                   tokens=tokens, bytes=nbytes, **spread(us), device=name)) + "\n")
        sink.flush()
        print(f"{family}/{variant}/{shape} [{peer}]: {us:.2f} us, {nbytes / us / 1e3:.0f} GB/s", flush=True)

    def both(family, variant, shape, tokens, nbytes, fn, sets, fused=None):
        if only and family not in only:
            return
        record(family, variant, shape, tokens, nbytes, "torch eager", time_us(fn, sets))
        if fused is not None:
            record(family, variant, shape, tokens, nbytes, "torch fused op", time_us(fused, sets))
        if not args.no_compile:
            # dynamic=False: one specialised kernel per shape, the best case for Inductor.
            record(family, variant, shape, tokens, nbytes, "torch.compile",
                   time_us(torch.compile(fn, dynamic=False), sets))

    # The copy ceiling as PyTorch sees it (bytes read + written); report.py uses the best copy in the run.
    src = rand(512 << 20)
    dst = torch.empty_like(src)
    record("copy", "torch", "1GiB", 0, 2 * src.numel() * 2, "torch copy_", time_us(lambda a, b: b.copy_(a), [(src, dst)]))
    del src, dst

    inv = 1.0 / (500000.0 ** (torch.arange(0, D, 2, dtype=torch.float32, device=dev) / D))
    with torch.inference_mode():
        for t in TOKENS:
            n = t * H
            shape = f"{t}x{H}"
            w = rand(H)
            k = rotation(4 * n)
            sets = [(rand(t, H), w) for _ in range(k)]
            both("rmsnorm", "plain", shape, t, 2 * n * 2 + 2 * H, rmsnorm, sets, fused=rmsnorm_fused)
            sets3 = [(rand(t, H), rand(t, H), w) for _ in range(k)]
            both("rmsnorm", "add", shape, t, 4 * n * 2 + 2 * H, add_rmsnorm, sets3)
            qsets = [(rand(t, H),) for _ in range(rotation(3 * n))]
            both("quant", "fp8_rowwise", shape, t, 3 * n + 4 * t, quant_fp8, qsets)
            del sets, sets3, qsets

            ni = t * I
            gsets = [(rand(t, 2 * I),) for _ in range(rotation(6 * ni))]
            both("swiglu", "bf16", f"{t}x{I}", t, 6 * ni, swiglu, gsets)
            both("swiglu", "fp8", f"{t}x{I}", t, 5 * ni + 4 * t, swiglu_fp8, gsets)
            del gsets

            width = (NH + 2 * NKV) * D
            pos = torch.arange(30000, 30000 + t, device=dev, dtype=torch.float32)
            freqs_cis = torch.polar(torch.ones(t, D // 2, device=dev), pos[:, None] * inv[None, :])
            temp = torch.log(torch.floor((pos + 1.0) / 8192.0) + 1.0) * 0.1 + 1.0
            slots = torch.arange(t, device=dev)
            rsets = [(rand(t, width), torch.empty(t, NKV, D, device=dev, dtype=torch.bfloat16),
                      torch.empty(t, NKV, D, device=dev, dtype=torch.bfloat16)) for _ in range(rotation(4 * t * width))]
            rshape = f"{t}x{NH}x{NKV}x{D}"
            both("rope", "rope_qknorm", rshape, t, 4 * t * width + 12 * t,
                 lambda x, kc, vc: rope_qkv(x, freqs_cis, slots, kc, vc, True, None), rsets)
            both("rope", "nope_temp", rshape, t, 4 * t * width + 12 * t,
                 lambda x, kc, vc: rope_qkv(x, None, slots, kc, vc, False, temp), rsets)
            del rsets
            torch.cuda.empty_cache()

        # Routing (bench/router.rs): same variants and shapes.
        for t in [1, 64, 512, 4096, 16384]:
            for e, variant, fn in [(16, "sigmoid_top1", route_sigmoid_top1), (128, "sigmoid_top1", route_sigmoid_top1),
                                   (128, "softmax_top8", route_softmax_top8)]:
                k = 8 if variant == "softmax_top8" else 1
                lsets = [(rand(t, e),) for _ in range(rotation(2 * t * e))]
                both("router", variant, f"{t}xE{e}", t, 2 * t * e + 4 * t * k * 6 + 4 * (2 * e + 1), fn, lsets)
                del lsets

            # Permute / unpermute (bench/permute.rs): Scout routing, 16 experts, top-1, H = 5120.
            n = t * H
            shape = f"{t}x{H}"
            ids, w, _, _, _, order = route_sigmoid_top1(rand(t, 16))
            w_sorted = w.flatten()[order]
            psets = [(rand(t, H), order, w_sorted) for _ in range(rotation(3 * n))]
            both("permute", "fp8_scaled", shape, t, 2 * n + n + 12 * t, permute_fp8_scaled, psets)
            both("permute", "bf16_scaled", shape, t, 4 * n + 8 * t, permute_bf16_scaled, psets)
            del psets
            usets = [(rand(t, H), order, rand(t, H)) for _ in range(rotation(6 * n))]
            both("permute", "unpermute_shared", shape, t, 6 * n + 4 * t, unpermute_shared, usets)
            del usets
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
