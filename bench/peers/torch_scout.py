"""PyTorch peer of the whole Llama 4 Scout model on one GPU: the same model at the same sizes, composed from stock
PyTorch ops as a careful engine would write it, random weights made on the GPU (no checkpoint).

- Weights (Meta's FP8 recipe): routed experts FP8 E4M3 with one f32 scale per expert and output channel, run by
  torch._scaled_grouped_mm with per-token activation scales; everything else bf16. --fp8-dense makes the attention
  projections and the shared expert FP8 rowwise too (torch._scaled_mm, activations quantized per token on the
  fly); the router and lm_head stay bf16, as in our model's --fp8-dense.
- Decode: B sequences, all with L cached tokens, one new token each. The whole step (embedding, 48 layers,
  lm_head, argmax) is captured in ONE CUDA graph per (B, L) and replayed; ms/step is the median over 15 samples
  of 10 back-to-back replays after ~1 s of replays. KV caches are dense [B, 8, len, 128] bf16: len = L + 1 for
  the global (NoPE) layers, min(chunk, L + 1) for the chunked layers (a ring indexed by position % chunk, so the
  current chunk's keys always sit at slots [0, L % chunk]).
- Prefill (batch 1, time to first token): eager; fused attention through SDPA (cuDNN first), causal over the
  prompt for the global layers and causal within each chunk for the chunked layers (exact for a prompt starting
  at position 0); the same MoE path over all tokens; lm_head on the last token only. Median of 3 runs after 1
  warm-up.
- --check (with --tiny; runs on the CPU, with labelled fallbacks for the FP8 GEMMs): prefill of 40 and of 30
  tokens, 3 decode steps each (the graph-less step; on a GPU also one graph replay), against a plain f32 full
  recompute written separately below (class Reference). Exits 1 if a scenario's logits differ by more than 2e-2
  relative L2 (5e-2 with --fp8-dense) or an expert choice differs outside a near-tie.

Usage on the GPU machine:  python3 bench/peers/torch_scout.py --json F [--fp8-dense] [--cases decode,prefill]
                           [--batches 1,8,32,64] [--contexts 1024,8192,32768] [--prompts 2048,8192,32768]
Correctness (CPU or GPU):  python3 bench/peers/torch_scout.py --tiny --check [--fp8-dense]
Model contract: shared/spec/llama4-text.md. L4K_PEER_WARMUP_S overrides the 1 s of warm-up replays;
L4K_SDPA_FIRST=flash|efficient|math the SDPA backend tried first (default cudnn).
"""
import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BF16, FP8 = torch.bfloat16, torch.float8_e4m3fn
FP8_MAX = 448.0
CHECK_TOLERANCE = 2e-2
# --fp8-dense also rounds every attention and shared-expert input to FP8: on the tiny model that noise alone is
# ~3% of the logits, so that recipe gets a sanity bound (as the model's own --fp8-dense test does), not a budget.
FP8_DENSE_TOLERANCE = 5e-2
WARMUP_S = float(os.environ.get("L4K_PEER_WARMUP_S", "1.0"))
HEADROOM = 2 << 30  # bytes kept free beside a decode case's KV cache (activations, graph pool, workspaces)


@dataclass(frozen=True)
class Config:
    hidden: int = 5120
    layers: int = 48
    heads: int = 40
    kv_heads: int = 8
    head_dim: int = 128
    experts: int = 16
    inter: int = 8192  # routed and shared expert intermediate size
    vocab: int = 202048
    chunk: int = 8192
    # Scout Instruct's config: llama3 scaling factor 16, low_freq_factor 1, high_freq_factor 1, original 8192.
    rope_theta: float = 500000.0
    rope_factor: float = 16.0
    rope_low: float = 1.0
    rope_high: float = 1.0
    rope_orig: float = 8192.0
    nope_interval: int = 4  # layers 3, 7, 11, ... are NoPE (global attention, temperature tuning)
    floor_scale: float = 8192.0
    attn_scale: float = 0.1
    eps: float = 1e-5

    def nope(self, i):
        return (i + 1) % self.nope_interval == 0


SCOUT = Config()
# Small enough for the CPU; head_dim 64 and widths that are multiples of 16 so the FP8 GEMMs take it on the GPU.
# A smooth llama3 band (low 1 < high 4) and floor_scale 2 (temperature 1 at position 0, 1.30 at position 40), so
# that --check exercises both (spec: tests need a small floor_scale).
TINY = Config(hidden=256, layers=4, heads=4, kv_heads=2, head_dim=64, experts=4, inter=512, vocab=1000, chunk=32,
              rope_theta=10000.0, rope_factor=8.0, rope_low=1.0, rope_high=4.0, rope_orig=16.0, floor_scale=2.0)


# ---- FP8 rowwise --------------------------------------------------------------------------------------------------

def quant_rows(x):
    """FP8 E4M3 with one f32 scale per row: scale = max(amax, tiny) / 448, q = clamp(x / scale) rounded to nearest
    even. The same for weights (offline, per output channel) and activations (per token, in the step)."""
    scale = x.abs().amax(-1, keepdim=True).float().clamp_(min=1e-12) / FP8_MAX
    return (x / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8), scale.squeeze(-1)


def fallback_device(t):
    """True on the CPU, where PyTorch has no FP8 GEMMs: the labelled fallbacks below run instead (--check only; a
    benchmark refuses to run there). The meta device takes the real path, so its shape checks can be exercised."""
    return t.device.type == "cpu"


def grouped_mm_fp8(a, w, sa, sw, offs):
    """out[rows of expert e] = (a_q w_q[e]^T) * sa[row] * sw[e, col], f32 accumulation, bf16 out.
    a [T, K] FP8 rows sorted by expert, w [E, N, K] FP8, sa [T], sw [E, N] f32, offs [E] int32 cumulative ends."""
    if not fallback_device(a):
        # The calling convention of bench/peers/torch_grouped_gemm.py (checked on the H200, PyTorch 2.11).
        return torch._scaled_grouped_mm(a, w.transpose(-2, -1), sa, sw, offs=offs, out_dtype=BF16)
    # FALLBACK (CPU, --check only): a per-expert loop on the dequantized operands, the same math.
    out = torch.empty(a.shape[0], w.shape[1], dtype=BF16, device=a.device)
    lo = 0
    for e, hi in enumerate(offs.tolist()):
        if hi > lo:
            out[lo:hi] = ((a[lo:hi].float() @ w[e].float().t()) * sa[lo:hi, None] * sw[e][None, :]).to(BF16)
        lo = hi
    return out


class Linear:
    """y = x W^T without bias: bf16 through cuBLAS, or FP8 rowwise (W per output channel, offline; x per token, on
    the fly) through torch._scaled_mm."""

    def __init__(self, w, fp8):
        self.w, self.q, self.s = (None, *quant_rows(w)) if fp8 else (w, None, None)

    def __call__(self, x):
        if self.w is not None:
            return F.linear(x, self.w)
        xq, xs = quant_rows(x)
        if not fallback_device(x):
            return torch._scaled_mm(xq, self.q.t(), scale_a=xs[:, None], scale_b=self.s[None, :], out_dtype=BF16)
        # FALLBACK (CPU, --check only): the dequantized product, the same math.
        return ((xq.float() @ self.q.float().t()) * xs[:, None] * self.s[None, :]).to(BF16)

    def dequant(self):
        return self.w.float() if self.w is not None else self.q.float() * self.s[:, None]

    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in (self.w, self.q, self.s) if t is not None)


# ---- the model ----------------------------------------------------------------------------------------------------

def rmsnorm(x, w, eps):
    # Spec rounding: normalise in f32 and round to bf16 (F.rms_norm without a weight), then the bf16 weight product.
    return F.rms_norm(x, (x.shape[-1],), None, eps) * w


def swiglu(gu):
    g, u = gu.chunk(2, dim=-1)
    return F.silu(g) * u


def blocks(t, lo, n, length):
    """Rows [lo, lo + n * length) of t [T, heads, D] as n sequences [n, heads, length, D] (a view)."""
    return t[lo:lo + n * length].view(n, length, t.shape[1], t.shape[2]).transpose(1, 2)


def llama3_inv_freq(c):
    inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
    if c.rope_factor == 1.0:
        return inv
    wl = 2 * math.pi / inv
    out = torch.where(wl > c.rope_orig / c.rope_low, inv / c.rope_factor, inv)
    if c.rope_high != c.rope_low:  # equal factors: no middle band (and no division by zero)
        s = (c.rope_orig / wl - c.rope_low) / (c.rope_high - c.rope_low)
        mid = (wl <= c.rope_orig / c.rope_low) & (wl >= c.rope_orig / c.rope_high)
        out = torch.where(mid, (1 - s) * inv / c.rope_factor + s * inv, out)
    return out


class Scout:
    def __init__(self, c, device, fp8_dense, max_pos):
        self.c, self.device, self.fp8_dense = c, device, fp8_dense
        h, d, i2 = c.hidden, c.head_dim, 2 * c.inter

        def rand(*shape, std):
            a = std * math.sqrt(3.0)  # uniform on [-a, a]
            return torch.empty(*shape, dtype=BF16, device=device).uniform_(-a, a)

        def weight(n, k):
            # std about 1/sqrt(fan_in): each linear keeps the RMS of its input, so 48 layers stay finite. Rows
            # scaled by U(0.5, 1.5), so per-channel FP8 scales differ (a scale applied to the wrong channel or
            # expert shows in --check).
            w = rand(n, k, std=k ** -0.5)
            return w.mul_(torch.empty(n, 1, dtype=BF16, device=device).uniform_(0.5, 1.5))

        def norm_w():
            return torch.empty(h, dtype=BF16, device=device).uniform_(0.9, 1.1)

        # Embedding RMS 3, a residual stream a few times larger than one layer's update (as in a trained model):
        # keeps the FP8 rounding noise of --check well under its tolerance, while a wrong op in any component
        # still moves the logits by more than the tolerance.
        self.embed = rand(c.vocab, h, std=3.0)
        self.layers = []
        for _ in range(c.layers):
            lw = argparse.Namespace()
            lw.in_norm, lw.post_norm = norm_w(), norm_w()
            lw.qkv = Linear(weight((c.heads + 2 * c.kv_heads) * d, h), fp8_dense)  # rows: q | k | v
            lw.o = Linear(weight(h, c.heads * d), fp8_dense)
            lw.router = weight(c.experts, h)
            # Routed experts, one expert at a time in bf16 then FP8 (never a bf16 copy of a layer's experts).
            # [E, N, K] with K contiguous: the column-major B operand _scaled_grouped_mm wants, once transposed.
            # gate_up rows [0, I) are the gate, [I, 2I) the up projection.
            lw.gu_q = torch.empty(c.experts, i2, h, dtype=FP8, device=device)
            lw.gu_s = torch.empty(c.experts, i2, dtype=torch.float32, device=device)
            lw.dn_q = torch.empty(c.experts, h, c.inter, dtype=FP8, device=device)
            lw.dn_s = torch.empty(c.experts, h, dtype=torch.float32, device=device)
            for e in range(c.experts):
                lw.gu_q[e], lw.gu_s[e] = quant_rows(weight(i2, h))
                lw.dn_q[e], lw.dn_s[e] = quant_rows(weight(h, c.inter))
            lw.sh_gu = Linear(weight(i2, h), fp8_dense)
            lw.sh_dn = Linear(weight(h, c.inter), fp8_dense)
            self.layers.append(lw)
        self.norm = norm_w()
        self.lm_head = weight(c.vocab, h)
        self.expert_ids = torch.arange(c.experts, device=device)
        self.routing = None  # --check sets a list: each MoE call appends its expert ids (never set when timing)
        # RoPE table, complex64 [max_pos, D/2]: angles p * inv_freq in f32 (as transformers computes them).
        angles = torch.arange(max_pos, dtype=torch.float32)[:, None] * llama3_inv_freq(c)[None, :]
        self.freqs = torch.polar(torch.ones_like(angles), angles).to(device)

    def weight_bytes(self):
        n = sum(t.numel() * t.element_size() for t in (self.embed, self.norm, self.lm_head))
        for lw in self.layers:
            n += sum(t.numel() * t.element_size()
                     for t in (lw.in_norm, lw.post_norm, lw.router, lw.gu_q, lw.gu_s, lw.dn_q, lw.dn_s))
            n += lw.qkv.nbytes() + lw.o.nbytes() + lw.sh_gu.nbytes() + lw.sh_dn.nbytes()
        return n

    # -- KV cache ---------------------------------------------------------------------------------------------------
    def cache_lens(self, glob_len, chunk_len):
        return [glob_len if self.c.nope(i) else chunk_len for i in range(self.c.layers)]

    def kv_bytes(self, batch, glob_len, chunk_len):
        return sum(2 * batch * self.c.kv_heads * n * self.c.head_dim * 2 for n in self.cache_lens(glob_len, chunk_len))

    def new_cache(self, batch, glob_len, chunk_len, fill=False):
        """Per layer (k, v), each [B, Hkv, len, D] bf16: SDPA's layout, so attention reads it without a copy."""
        def t(n):
            shape = (batch, self.c.kv_heads, n, self.c.head_dim)
            return (torch.randn if fill else torch.zeros)(shape, dtype=BF16, device=self.device)
        return [(t(n), t(n)) for n in self.cache_lens(glob_len, chunk_len)]

    # -- shared pieces ----------------------------------------------------------------------------------------------
    def step_meta(self, pos):
        """Per-step metadata, computed once and shared by every layer: RoPE factors, NoPE temperature, cache slots."""
        c = self.c
        temp = torch.log(torch.floor((pos + 1).float() / c.floor_scale) + 1.0) * c.attn_scale + 1.0
        return argparse.Namespace(freqs=self.freqs.index_select(0, pos), temp=temp, pos=pos,
                                  ring=pos % c.chunk, rows=torch.arange(pos.shape[0], device=pos.device))

    def qkv_heads(self, i, lw, y, meta):
        """qkv projection, then RoPE + QK L2 norm (chunked layers) or the temperature on q (NoPE layers).
        Returns q [T, H, D], k, v [T, Hkv, D] (views where no op was needed)."""
        c, t = self.c, y.shape[0]
        qkv = lw.qkv(y).view(t, c.heads + 2 * c.kv_heads, c.head_dim)
        qk, v = qkv[:, :c.heads + c.kv_heads], qkv[:, c.heads + c.kv_heads:]
        if c.nope(i):
            q = (qk[:, :c.heads] * meta.temp[:, None, None]).to(BF16)  # f32 product, rounded once
            return q, qk[:, c.heads:], v
        # q and k are adjacent in the fused output: one RoPE (adjacent pairs, f32) and one L2 norm for both.
        z = torch.view_as_complex(qk.float().reshape(t, c.heads + c.kv_heads, c.head_dim // 2, 2))
        qk = torch.view_as_real(z * meta.freqs[:, None, :]).flatten(2).to(BF16)
        qk = F.rms_norm(qk, (c.head_dim,), None, c.eps)  # f32 inside, rounded to bf16
        return qk[:, :c.heads], qk[:, c.heads:], v

    def moe(self, lw, y):
        logits = F.linear(y, lw.router)
        top, ids = logits.max(dim=-1)  # top-1 on the raw logits
        if self.routing is not None:
            self.routing.append(ids)
        score = torch.sigmoid(top.float()).to(BF16)
        # Expert order and cumulative group ends on the device (searchsorted on the sorted ids: bincount would read
        # its maximum on the host and break the graph).
        sorted_ids, order = torch.sort(ids, stable=True)
        offs = torch.searchsorted(sorted_ids, self.expert_ids, right=True, out_int32=True)
        # The score scales the expert INPUT (bf16 product), then per-token FP8 of the permuted rows.
        xq, xs = quant_rows((y * score[:, None]).index_select(0, order))
        h = swiglu(grouped_mm_fp8(xq, lw.gu_q, xs, lw.gu_s, offs))
        hq, hs = quant_rows(h)
        routed = grouped_mm_fp8(hq, lw.dn_q, hs, lw.dn_s, offs)
        # The shared expert sees the unscaled y; the routed rows are scattered back onto its output (bf16 sum).
        return lw.sh_dn(swiglu(lw.sh_gu(y))).index_add_(0, order, routed)

    @staticmethod
    def sdpa_backends():
        # cuDNN first: the fastest SDPA backend for these shapes on Hopper, prefill and decode alike
        # (bench/results/h100-attention-prefill.md, h100-attention-decode.md); the others stay as fallbacks, taken
        # where a backend refuses a shape. L4K_SDPA_FIRST=flash|efficient|math puts another one first.
        order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                 SDPBackend.MATH]
        first = {"cudnn": 0, "flash": 1, "efficient": 2, "math": 3}[os.environ.get("L4K_SDPA_FIRST", "cudnn")]
        return sdpa_kernel([order[first]] + order[:first] + order[first + 1:], set_priority=True)

    # -- decode -----------------------------------------------------------------------------------------------------
    def decode_step(self, tokens, pos, length, cache):
        """One token per sequence. tokens, pos: [B] int64 on the device; every pos equals the host int `length`
        (cached tokens per sequence), which fixes the attention lengths of this (B, L) graph.
        Returns (logits [B, V] bf16, greedy ids [B])."""
        c, b = self.c, tokens.shape[0]
        meta = self.step_meta(pos)
        x = F.embedding(tokens, self.embed)
        with self.sdpa_backends():
            for i, lw in enumerate(self.layers):
                q, k, v = self.qkv_heads(i, lw, rmsnorm(x, lw.in_norm, c.eps), meta)
                kc, vc = cache[i]
                slot, n = (meta.pos, length + 1) if c.nope(i) else (meta.ring, length % c.chunk + 1)
                kc[meta.rows, :, slot] = k
                vc[meta.rows, :, slot] = v
                # Global layers read [0, L]; chunked layers the current chunk, slots [0, L % chunk].
                o = F.scaled_dot_product_attention(q[:, :, None], kc[:, :, :n], vc[:, :, :n], enable_gqa=True)
                x = x + lw.o(o.reshape(b, c.heads * c.head_dim))
                x = x + self.moe(lw, rmsnorm(x, lw.post_norm, c.eps))
        logits = F.linear(rmsnorm(x, self.norm, c.eps), self.lm_head)
        return logits, logits.argmax(-1)

    # -- prefill ----------------------------------------------------------------------------------------------------
    def prefill(self, ids, cache):
        """Batch 1, prompt ids [S] starting at position 0. Writes the caches (global: all S keys; chunked: the last
        chunk's keys at slots position % chunk). Returns (last-token logits [1, V], greedy id [1])."""
        c, s = self.c, ids.shape[0]
        meta = self.step_meta(torch.arange(s, device=ids.device))
        x = F.embedding(ids, self.embed)
        full, tail = divmod(s, c.chunk)
        with self.sdpa_backends():
            for i, lw in enumerate(self.layers):
                q, k, v = self.qkv_heads(i, lw, rmsnorm(x, lw.in_norm, c.eps), meta)
                kc, vc = cache[i]
                if c.nope(i):
                    kc[0, :, :s] = k.transpose(0, 1)
                    vc[0, :, :s] = v.transpose(0, 1)
                    o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                                       v.transpose(0, 1)[None], is_causal=True, enable_gqa=True)
                    o = o[0].transpose(0, 1).reshape(s, -1)
                else:
                    last = full * c.chunk if tail else (full - 1) * c.chunk
                    kc[0, :, :s - last] = k[last:].transpose(0, 1)
                    vc[0, :, :s - last] = v[last:].transpose(0, 1)
                    # The chunked mask on a prompt from position 0 is block-diagonal: the full chunks as a batch of
                    # causal sequences (views, no copies), then the partial last chunk.
                    parts = []
                    for lo, n, length in ((0, full, c.chunk), (full * c.chunk, 1 if tail else 0, tail)):
                        if n:
                            qb, kb, vb = (blocks(t, lo, n, length) for t in (q, k, v))
                            ob = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, enable_gqa=True)
                            parts.append(ob.transpose(1, 2).reshape(n * length, -1))
                    o = parts[0] if len(parts) == 1 else torch.cat(parts)
                x = x + lw.o(o)
                x = x + self.moe(lw, rmsnorm(x, lw.post_norm, c.eps))
        logits = F.linear(rmsnorm(x[-1:], self.norm, c.eps), self.lm_head)
        return logits, logits.argmax(-1)


# ---- the reference for --check: a plain full recompute in f32 -----------------------------------------------------

class Reference:
    """The model written straight from shared/spec/llama4-text.md, sharing nothing with the composition above but
    its weights: f32 activations, the FP8 weights dequantized, the whole sequence recomputed for every output,
    explicit masks, per-expert loops, RoPE on explicit even/odd pairs with a frequency table computed in f64.
    fake_fp8=True also rounds the activations through FP8 rowwise where the recipe quantizes them (routed expert
    inputs and SwiGLU outputs; under --fp8-dense the dense linear inputs): the same model as the peer, the only
    differences being its bf16 roundings. fake_fp8=False leaves activations unquantized (shown for information)."""

    def __init__(self, m, fake_fp8, tolerance):
        self.m, self.c, self.fake = m, m.c, fake_fp8
        # Near-tie margin in router logit: 3x what the tolerated relative error could move a logit.
        self.tie = 3 * tolerance
        c = self.c
        self.inv = []
        for j in range(c.head_dim // 2):
            inv = c.rope_theta ** (-2.0 * j / c.head_dim)
            wl = 2 * math.pi / inv
            if c.rope_factor != 1.0 and wl > c.rope_orig / c.rope_low:
                inv = inv / c.rope_factor
            elif c.rope_factor != 1.0 and c.rope_high != c.rope_low and wl >= c.rope_orig / c.rope_high:
                s = (c.rope_orig / wl - c.rope_low) / (c.rope_high - c.rope_low)
                inv = (1 - s) * inv / c.rope_factor + s * inv
            self.inv.append(inv)
        # Experts dequantized once: w_f32[e] = q[e] * scale[e, n] per output channel.
        self.experts = [(lw.gu_q.float() * lw.gu_s[:, :, None], lw.dn_q.float() * lw.dn_s[:, :, None])
                        for lw in m.layers]

    def q8(self, x, on=True):
        if not (self.fake and on):
            return x
        scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-12) / FP8_MAX
        return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).float() * scale

    def dense(self, x, lin):
        return self.q8(x, self.m.fp8_dense) @ lin.dequant().t()

    def rms(self, x, w=None):
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.c.eps)
        return x if w is None else x * w.float()

    def rope(self, x, positions):  # x [T, heads, D]: pairs (2j, 2j+1) rotated by angle p * inv[j]
        ang = torch.tensor([[p * f for f in self.inv] for p in positions], dtype=torch.float64)
        cos, sin = ang.cos().float().to(x.device)[:, None, :], ang.sin().float().to(x.device)[:, None, :]
        e, o = x[..., 0::2], x[..., 1::2]
        return torch.stack((e * cos - o * sin, e * sin + o * cos), dim=-1).flatten(-2)

    def logits(self, ids, peer_experts):
        """f32 logits of the last position of `ids` (a list of ints), recomputing the whole sequence.
        peer_experts[i][p]: the expert the peer chose for position p in layer i. Where the reference's top-1
        beats it by less than self.tie times the RMS of the layer's router logits (a near-tie that rounding may
        settle either way), the reference follows the peer and counts a tie; a larger disagreement is counted as
        a mismatch (a failure)."""
        c, m, t = self.c, self.m, len(ids)
        dev = m.device
        pos = list(range(t))
        x = m.embed.float()[torch.tensor(ids, device=dev)]
        qi, ki = torch.tensor(pos, device=dev)[:, None], torch.tensor(pos, device=dev)[None, :]
        causal = ki <= qi
        chunked = causal & (ki // c.chunk == qi // c.chunk)
        group = c.heads // c.kv_heads
        ties = mismatches = 0
        for i, (lw, (w_gu, w_dn)) in enumerate(zip(m.layers, self.experts)):
            y = self.rms(x, lw.in_norm)
            qkv = self.dense(y, lw.qkv)
            q = qkv[:, :c.heads * c.head_dim].view(t, c.heads, c.head_dim)
            k = qkv[:, c.heads * c.head_dim:(c.heads + c.kv_heads) * c.head_dim].view(t, c.kv_heads, c.head_dim)
            v = qkv[:, (c.heads + c.kv_heads) * c.head_dim:].view(t, c.kv_heads, c.head_dim)
            if c.nope(i):
                temp = torch.tensor([math.log(math.floor((p + 1) / c.floor_scale) + 1) * c.attn_scale + 1
                                     for p in pos], device=dev)
                q = q * temp[:, None, None]
                mask = causal
            else:
                q, k = self.rms(self.rope(q, pos)), self.rms(self.rope(k, pos))
                mask = chunked
            heads = []
            for hq in range(c.heads):
                hk = hq // group
                scores = (q[:, hq] @ k[:, hk].t()) / math.sqrt(c.head_dim)
                p = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
                heads.append(p @ v[:, hk])
            x = x + self.dense(torch.cat(heads, dim=-1), lw.o)

            y = self.rms(x, lw.post_norm)
            gu = self.dense(y, lw.sh_gu)
            out = self.dense(F.silu(gu[:, :c.inter]) * gu[:, c.inter:], lw.sh_dn)
            router = y @ lw.router.float().t()
            tie = self.tie * float(router.pow(2).mean().sqrt())
            for tok in range(t):
                e, theirs = int(router[tok].argmax()), int(peer_experts[i][tok])
                if e != theirs:
                    if router[tok, e] - router[tok, theirs] <= tie:
                        ties, e = ties + 1, theirs
                    else:
                        mismatches += 1
                xin = self.q8(y[tok:tok + 1] * torch.sigmoid(router[tok, e]))
                g = xin @ w_gu[e].t()
                h = self.q8(F.silu(g[:, :c.inter]) * g[:, c.inter:])
                out[tok] += (h @ w_dn[e].t())[0]
            x = x + out
        return (self.rms(x[-1:], m.norm) @ m.lm_head.float().t())[0], ties, mismatches


def rel_l2(got, want):
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm()) if torch.isfinite(got).all() else float("inf")


def check(cfg, device, fp8_dense):
    torch.manual_seed(0)
    m = Scout(cfg, device, fp8_dense, max_pos=128)
    tolerance = FP8_DENSE_TOLERANCE if fp8_dense else CHECK_TOLERANCE
    return check_model(m, [Reference(m, True, tolerance), Reference(m, False, tolerance)], tolerance)


def check_model(m, refs, tolerance):
    """Prefill + 3 decode steps of the graph-less step against full recomputes by refs[0] (gated) and refs[1]
    (printed). True when each scenario's logits (all its rows as one tensor, as the spec measures agreement) are
    within the tolerance and the expert choices agree."""
    cfg, device = m.c, m.device
    worst, bad_routing, lines = 0.0, 0, []
    # 40 tokens cross the tiny chunk of 32 in the prefill; 30 tokens cross it during the decode steps (the token
    # at position 32 starts a chunk, sees only itself, and overwrites ring slot 0).
    for prompt in (40, 30):
        seq = torch.randint(cfg.vocab, (prompt,)).tolist()
        cache = m.new_cache(1, prompt + 3, min(cfg.chunk, prompt + 3))
        m.routing = []
        logits, nxt = m.prefill(torch.tensor(seq, device=device), cache)
        experts = [r.tolist() for r in m.routing]  # [layer][position]
        outs = [("prefill", len(seq), logits[0])]
        for step in range(3):
            seq.append(int(nxt[0]))
            length = len(seq) - 1
            tok, pos = torch.tensor([seq[-1]], device=device), torch.tensor([length], device=device)
            m.routing = []
            logits, nxt = m.decode_step(tok, pos, length, cache)
            for layer, r in zip(experts, m.routing):
                layer.append(int(r[0]))
            outs.append((f"decode {step + 1}", len(seq), logits[0]))
        m.routing = None
        if device.type == "cuda":
            # The last step again through a captured graph (re-writing the same cache slots): the benchmark's path.
            g, (glog, _) = capture(lambda: m.decode_step(tok, pos, length, cache))
            g.replay()
            torch.cuda.synchronize()
            outs.append(("decode 3, graph replay", len(seq), glog[0].clone()))
        got, want = [], []
        for name, n, row in outs:
            (ref, ties, mism), (ref_f32, _, _) = (r.logits(seq[:n], experts) for r in refs)
            got.append(row.float())
            want.append(ref)
            bad_routing += mism
            lines.append(f"  prompt {prompt}, {name:<22} position {n - 1:2d}: rel L2 {rel_l2(got[-1], ref):.3e} "
                         f"(unquantized activations {rel_l2(got[-1], ref_f32):.3e}); near-ties {ties}, "
                         f"expert mismatches {mism}")
        err = rel_l2(torch.stack(got), torch.stack(want))
        worst = max(worst, err)
        lines.append(f"  prompt {prompt}, all {len(outs)} rows: rel L2 {err:.3e}")
    ok = worst <= tolerance and bad_routing == 0
    print(f"--check on {device.type}{' (CPU fallbacks for the FP8 GEMMs)' if device.type == 'cpu' else ''}, "
          f"recipe {'fp8-dense' if m.fp8_dense else 'meta'}, {cfg.layers} layers: logits against the f32 full "
          f"recompute with the recipe's FP8 activation rounding")
    print("\n".join(lines))
    print(f"worst {worst:.3e} (tolerance {tolerance:.0e}), {bad_routing} expert mismatches: {'PASS' if ok else 'FAIL'}")
    return ok


# ---- timing -------------------------------------------------------------------------------------------------------

def capture(fn):
    """fn captured as one CUDA graph after warm-up calls on a side stream (cuDNN and cuBLAS plans, the allocator)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    torch.cuda.synchronize()
    return g, out


def stats(samples):
    """(median, fastest, slowest) of timed samples: the figure and its spread."""
    s = sorted(samples)
    return s[len(s) // 2], s[0], s[-1]


def time_replays(g, reps=10, samples=15):
    """stats() of ms per replay over `samples` runs of `reps` back-to-back replays, after WARMUP_S s of replays."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < WARMUP_S:
        for _ in range(reps):
            g.replay()
        torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = []
    for _ in range(samples):
        start.record()
        for _ in range(reps):
            g.replay()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / reps)
    return stats(out)


def time_prefill(m, ids, cache, runs=3):
    m.prefill(ids, cache)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = []
    for _ in range(runs):
        start.record()
        logits, _ = m.prefill(ids, cache)
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return stats(out), logits


def decode_case(m, b, length):
    """One (B, L) decode case: (KV bytes, (ms per step, logits finite)), or (KV bytes, why it was skipped)."""
    glob_len, chunk_len = length + 1, min(m.c.chunk, length + 1)
    kv = m.kv_bytes(b, glob_len, chunk_len)
    free = torch.cuda.mem_get_info()[0]
    if kv + HEADROOM > free:
        return kv, f"kv cache needs {kv / 1e9:.2f} GB, free {free / 1e9:.2f} GB ({HEADROOM >> 30} GiB kept)"
    cache = m.new_cache(b, glob_len, chunk_len, fill=True)  # random keys and values, never NaN garbage
    tokens = torch.randint(m.c.vocab, (b,), device=m.device)
    pos = torch.full((b,), length, dtype=torch.int64, device=m.device)
    g, (logits, _) = capture(lambda: m.decode_step(tokens, pos, length, cache))
    return kv, (time_replays(g), bool(torch.isfinite(logits).all()))


def prefill_case(m, s):
    kv = m.kv_bytes(1, s, min(m.c.chunk, s))
    # A prompt's activations: about 160 KB per token at Scout's sizes (f32 RoPE and quantization temporaries, the
    # 16384-wide gate_up outputs of the routed and shared experts).
    need, free = kv + s * 160 * 1024 + HEADROOM, torch.cuda.mem_get_info()[0]
    if need > free:
        return kv, f"prefill needs about {need / 1e9:.1f} GB, free {free / 1e9:.1f} GB"
    cache = m.new_cache(1, s, min(m.c.chunk, s))
    ms, logits = time_prefill(m, torch.randint(m.c.vocab, (s,), device=m.device), cache)
    return kv, (ms, bool(torch.isfinite(logits).all()))


def ints(s):
    return [int(v) for v in s.split(",") if v]


def benchmark(args, cfg, device, name):
    cases = [c for c in args.cases.split(",") if c]
    batches, contexts, prompts = ints(args.batches), ints(args.contexts), ints(args.prompts)
    recipe = "fp8-dense" if args.fp8_dense else "meta"
    max_pos = max([1] + ([n + 1 for n in contexts] if "decode" in cases else [])
                  + (prompts if "prefill" in cases else []))
    t0 = time.perf_counter()
    torch.manual_seed(0)
    m = Scout(cfg, device, args.fp8_dense, max_pos)
    torch.cuda.synchronize()
    wbytes = m.weight_bytes()
    print(f"{cfg.layers} layers, recipe {recipe}: {wbytes / 1e9:.2f} GB of weights made in "
          f"{time.perf_counter() - t0:.1f} s; {torch.cuda.mem_get_info()[0] / 1e9:.1f} GB free", flush=True)
    sink = open(args.json, "a") if args.json else None
    rows = []

    def run(case, batch, context, fn, *fn_args):
        try:
            kv, res = fn(*fn_args)
        except RuntimeError as e:  # one case failing (memory, a backend) must not lose the others
            kv, res = None, "error: " + str(e).splitlines()[0]
        torch.cuda.empty_cache()
        rec = dict(peer="torch", model="tiny" if args.tiny else "scout", recipe=recipe, case=case, batch=batch,
                   context=context, kv_bytes=kv, weight_bytes=wbytes, layers=cfg.layers, device=name,
                   torch=torch.__version__)
        if isinstance(res, str):
            rec["error" if res.startswith("error: ") else "skipped"] = res
            line = res
        else:
            (ms, ms_min, ms_max), finite = res
            rec.update(ms=ms, ms_min=ms_min, ms_max=ms_max,
                       tokens_per_s=(batch if case == "decode" else context) / ms * 1e3, finite=finite)
            line = (f"{ms:10.3f} ms {rec['tokens_per_s']:10.1f} tokens/s  kv cache {kv / 1e9:6.2f} GB"
                    f"{'' if finite else '  NON-FINITE LOGITS'}")
        if sink:  # one line at a time: a run cut short keeps every finished case
            sink.write(json.dumps(rec) + "\n")
            sink.flush()
        rows.append(rec)
        print(f"{case:<8} batch {batch:3d}  context {context:6d}  {line}", flush=True)

    if "decode" in cases:
        for length in contexts:
            for b in batches:
                run("decode", b, length, decode_case, m, b, length)
    if "prefill" in cases:
        for s in prompts:
            run("prefill", 1, s, prefill_case, m, s)

    print(f"\nLlama 4 Scout in PyTorch ({cfg.layers} layers, recipe {recipe}, {wbytes / 1e9:.2f} GB of weights) "
          f"on {name}, torch {torch.__version__}")
    print("| case | batch | context | ms | tokens/s | KV cache GB |\n|---|---|---|---|---|---|")
    for r in rows:
        cells = f"{r['ms']:.3f} | {r['tokens_per_s']:.1f}" if "ms" in r else f"{r.get('skipped') or r['error']} | "
        kv = f"{r['kv_bytes'] / 1e9:.2f}" if r["kv_bytes"] is not None else ""
        print(f"| {r['case']} | {r['batch']} | {r['context']} | {cells} | {kv} |")


def main():
    ap = argparse.ArgumentParser(description="PyTorch peer of the whole Llama 4 Scout model (see the module doc).")
    ap.add_argument("--json", help="append one JSON object per case to this file")
    ap.add_argument("--cases", default="decode,prefill")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--contexts", default="1024,8192,32768", help="decode: tokens already cached per sequence")
    ap.add_argument("--prompts", default="2048,8192,32768", help="prefill prompt lengths (batch 1)")
    ap.add_argument("--fp8-dense", action="store_true", help="attention and shared expert linears FP8 rowwise too")
    ap.add_argument("--layers", type=int, help="override the layer count (quick tests)")
    ap.add_argument("--tiny", action="store_true", help="a small config for correctness checks")
    ap.add_argument("--check", action="store_true", help="compare against the f32 full-recompute reference")
    args = ap.parse_args()
    cfg = TINY if args.tiny else SCOUT
    if args.layers:
        cfg = replace(cfg, layers=args.layers)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    torch.set_grad_enabled(False)
    with torch.inference_mode():
        if args.check:
            if not args.tiny:
                sys.exit("--check runs the tiny config: add --tiny")
            sys.exit(0 if check(cfg, device, args.fp8_dense) else 1)
        if device.type != "cuda":
            sys.exit("the benchmark needs a CUDA GPU (on the CPU, only --tiny --check runs)")
        benchmark(args, cfg, device, name)


if __name__ == "__main__":
    main()
