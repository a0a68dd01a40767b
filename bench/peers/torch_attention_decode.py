"""PyTorch peers of bench/attention_decode.rs, timed the same way in the same GPU command: SDPA decode, one
query per sequence over a dense [batch, 8, len, 128] bf16 cache (PyTorch has no paged cache), 40/8 heads.
- "torch sdpa enable_gqa": F.scaled_dot_product_attention(q [B, 40, 1, D], k, v, enable_gqa=True), default
  backend choice;
- "torch sdpa grouped-q": the engine trick of folding the 5 query heads of a group into the query length
  (q [B, 8, 5, D], no mask: one query sees every key), so each backend reads K and V once per KV head;
- the same under each explicit backend that accepts it (flash, efficient, cudnn).
Bytes as ours: K and V read once, q read and out written. Usage: python3 torch_attention_decode.py --json F"""
import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from torch_peers import spread, time_us

H, KVH, D = 40, 8, 128
SHAPES = [(64, 8192), (8, 32768), (64, 1024)]
dev = "cuda"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    name = torch.cuda.get_device_name()
    sink = open(args.json, "a")

    def record(shape, tokens, nbytes, peer, us):
        sink.write(json.dumps(dict(source="torch", peer=peer, family="attention_decode", variant="causal",
                                   shape=shape, tokens=tokens, bytes=nbytes, flops=0, **spread(us),
                                   device=name)) + "\n")
        sink.flush()
        print(f"attention_decode/causal/{shape} [{peer}]: {us:.2f} us, {nbytes / us / 1e3:.0f} GB/s", flush=True)

    with torch.inference_mode():
        for batch, length in SHAPES:
            k = torch.randn(batch, KVH, length, D, device=dev, dtype=torch.bfloat16)
            v = torch.randn(batch, KVH, length, D, device=dev, dtype=torch.bfloat16)
            q = torch.randn(batch, H, 1, D, device=dev, dtype=torch.bfloat16)
            qg = q.view(batch, KVH, H // KVH, D)
            shape = f"b{batch}_l{length}_h{H}x{KVH}_d{D}"
            nbytes = 2 * batch * length * KVH * D * 2 + 2 * batch * H * D * 2
            cases = [("torch sdpa enable_gqa", lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), None),
                     ("torch sdpa grouped-q", lambda: F.scaled_dot_product_attention(qg, k, v), None)]
            for label, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                                   ("cudnn", SDPBackend.CUDNN_ATTENTION)]:
                cases.append((f"torch sdpa grouped-q [{label}]", lambda: F.scaled_dot_product_attention(qg, k, v), backend))
                cases.append((f"torch sdpa enable_gqa [{label}]",
                              lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), backend))
            for peer, fn, backend in cases:
                try:
                    if backend is None:
                        us = time_us(fn, [()])
                    else:
                        with sdpa_kernel(backend):
                            us = time_us(fn, [()])
                    record(shape, batch, nbytes, peer, us)
                except (RuntimeError, ValueError) as e:
                    print(f"{peer} {shape}: not available ({str(e).splitlines()[0][:120]})", flush=True)
            del k, v


if __name__ == "__main__":
    main()
