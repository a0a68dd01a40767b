"""PyTorch peers of bench/attention_prefill.rs, timed the same way in the same GPU command: SDPA with the cuDNN
and flash backends (causal), FlexAttention with a block mask (chunked, and causal for reference). 40 query
heads over 8 KV heads, head_dim 128, bf16, contiguous [B, H, S, D] tensors (the peers get no paging). FLOPs count
only unmasked work (4 * heads * d per visible pair), as bench/attention_prefill.rs does.
Usage: python3 torch_attention_prefill.py --json F
L4K_BENCH_ONLY=<substring>[,...] keeps the cases whose family/variant/shape contains one of them (as the Rust benches do).
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from torch_peers import spread, time_us

NH, NKV, D = 40, 8, 128
dev = "cuda"


def pairs(seq_len, q_len, chunk):
    return sum((q % chunk if chunk else q) + 1 for q in range(seq_len - q_len, seq_len))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    name = torch.cuda.get_device_name()
    sink = open(args.json, "a")

    def record(variant, shape, tokens, flops, peer, us):
        sink.write(json.dumps(dict(source="torch", peer=peer, family="attention_prefill", variant=variant,
                                   shape=shape, tokens=tokens, bytes=0, flops=flops, math="bf16", **spread(us),
                                   device=name)) + "\n")
        sink.flush()
        print(f"attention_prefill/{variant}/{shape} [{peer}]: {us:.1f} us, {flops / us / 1e6:.0f} TFLOP/s", flush=True)

    def attempt(variant, shape, tokens, flops, peer, fn, sets):
        try:
            record(variant, shape, tokens, flops, peer, time_us(fn, sets, reps=5, samples=7))
        except Exception as e:  # a backend that refuses the shape is reported, not fatal
            print(f"attention_prefill/{variant}/{shape} [{peer}]: unavailable: {type(e).__name__}: {e}"[:300],
                  flush=True)

    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    flex = torch.compile(flex_attention, dynamic=False)
    scale = D ** -0.5

    cases = [("causal", "S8192_B1", 1, 8192, 8192, 0), ("chunked", "S32768_C8192_B1", 1, 32768, 32768, 8192),
             ("causal", "S32768_B1", 1, 32768, 32768, 0), ("causal", "S2048_B4", 4, 2048, 2048, 0),
             ("causal", "continue_Q2048_K10240_B1", 1, 10240, 2048, 0)]
    only = [f for f in os.environ.get("L4K_BENCH_ONLY", "").split(",") if f]
    cases = [c for c in cases if not only or any(f in f"attention_prefill/{c[0]}/{c[1]}" for f in only)]
    with torch.inference_mode():
        for variant, shape, b, s, ql, chunk in cases:
            q = torch.randn(b, NH, ql, D, device=dev, dtype=torch.bfloat16)
            k = torch.randn(b, NKV, s, D, device=dev, dtype=torch.bfloat16)
            v = torch.randn(b, NKV, s, D, device=dev, dtype=torch.bfloat16)
            flops = b * pairs(s, ql, chunk) * 4 * NH * D
            tokens = b * ql
            off = s - ql
            if chunk == 0 and off == 0:
                for peer, backend in [("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                                      ("sdpa_flash", SDPBackend.FLASH_ATTENTION)]:
                    def fn(q, k, v, backend=backend):
                        with sdpa_kernel([backend]):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                                  enable_gqa=True)
                    attempt(variant, shape, tokens, flops, peer + "_gqa", fn, [(q, k, v)])
                    # K/V expanded to 40 heads beforehand (outside the timing): the form every backend takes.
                    ke, ve = k.repeat_interleave(NH // NKV, 1), v.repeat_interleave(NH // NKV, 1)
                    attempt(variant, shape, tokens, flops, peer, fn, [(q, ke, ve)])
                    del ke, ve
            if chunk:
                # The same work as 4 independent causal sequences (valid for a fresh prefill only).
                n = s // chunk
                qc = q.view(b, NH, n, chunk, D).transpose(1, 2).reshape(b * n, NH, chunk, D).contiguous()
                kc = k.view(b, NKV, n, chunk, D).transpose(1, 2).reshape(b * n, NKV, chunk, D)
                vc = v.view(b, NKV, n, chunk, D).transpose(1, 2).reshape(b * n, NKV, chunk, D)
                kc, vc = kc.repeat_interleave(NH // NKV, 1).contiguous(), vc.repeat_interleave(NH // NKV, 1).contiguous()

                def fn(q, k, v):
                    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
                attempt("chunked_as_causal_chunks", shape, tokens, flops, "sdpa_cudnn", fn, [(qc, kc, vc)])
                del qc, kc, vc

            if not chunk and shape != "S8192_B1":
                continue  # FlexAttention compiles per mask (tens of seconds): the judged shapes only
            def mask_mod(bi, h, qi, ki, off=off, chunk=chunk):
                vis = qi + off >= ki
                if chunk:
                    vis = vis & ((qi + off) // chunk == ki // chunk)
                return vis
            bm = create_block_mask(mask_mod, B=None, H=None, Q_LEN=ql, KV_LEN=s, device=dev)

            def fx(q, k, v, bm=bm):
                return flex(q, k, v, block_mask=bm, scale=scale, enable_gqa=True)
            attempt(variant, shape, tokens, flops, "flex_attention", fx, [(q, k, v)])
            del q, k, v


if __name__ == "__main__":
    main()
