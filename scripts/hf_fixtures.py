#!/usr/bin/env python3
"""Golden fixtures for llama4-model: tiny random Llama 4 checkpoints and the logits Hugging Face transformers
computes for them.

    python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch 'transformers>=5,<6' safetensors
    /tmp/hfvenv/bin/python scripts/hf_fixtures.py            # writes reference-model/fixtures/<name>/
                                                             # and the seed corpora under fuzz/corpus/

Each fixture directory holds config.json, the weights (model.safetensors, or shards plus
model.safetensors.index.json), golden.json (input ids, the transformers version) and logits.safetensors (tensor
"logits" [T, vocab] f32: the full forward pass of transformers, eager attention, f32, CPU). Beside them, the
error budgets of the GPU path, measured on the same checkpoint and ids: logits_bf16.safetensors (transformers in
bf16) and logits_bf16_fp8.safetensors (bf16 with the routed experts in FP8 rowwise as our kernels run them; see
fp8_experts_forward); golden.json records both runs' relative L2 error against the f32 logits. The gpu_*
fixtures are the ones the GPU kernels can run (head_dim 64 / 128). Weights stored in
bf16 or f16 are compared against transformers run in f32 on the upcast weights, i.e. exactly what is on disk.

Every fixture whose files transformers can load itself (all but the multimodal and per-expert layouts) is
reloaded with from_pretrained and must give the same logits as the model that wrote it: this proves that the
hand-edited config.json layouts (published rope_theta/rope_scaling, integer attn_temperature_tuning) mean to
transformers what they mean to us.

Never use transformers 4.54.0 to 4.56.0 (wrong router pairing for more than one token).
"""

import argparse
import json
import os
import shutil

import torch
import transformers
from safetensors.torch import save_file
from transformers import Llama4Config, Llama4ForCausalLM, Llama4TextConfig

LLAMA3_BAND = {
    # head_dim 16 and theta 10000 give wavelengths 6.3 .. 2.0e4; original 64 with low 1, high 4 puts the
    # wavelengths between 16 and 64 in the smooth band, those above 64 are divided by the factor.
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

FIXTURES = [
    # Scout-like: every layer MoE, QK norm, llama3 band, chunk 4, layer 3 NoPE with temperature from pos 2.
    dict(name="scout_tiny", seed=1, seq=19, disk="f32",
         cfg=dict(vocab_size=160, hidden_size=48, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, intermediate_size=20, num_local_experts=4,
                  interleave_moe_layer_step=1, use_qk_norm=True, attention_chunk_size=4, floor_scale=3,
                  attn_scale=0.25, rope_parameters={"rope_theta": 10000.0, **LLAMA3_BAND}),
         tokenizer=True),
    # Maverick-like: dense layers 0, 2 (intermediate_size_mlp), MoE layers 1, 3, no QK norm, plain RoPE,
    # chunk 5, NoPE every second layer.
    dict(name="maverick_tiny", seed=2, seq=23, disk="f32",
         cfg=dict(vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=8, intermediate_size=24, intermediate_size_mlp=56,
                  num_local_experts=3, interleave_moe_layer_step=2, use_qk_norm=False,
                  no_rope_layer_interval=2, attention_chunk_size=5, floor_scale=4, attn_scale=0.3,
                  rope_parameters={"rope_type": "default", "rope_theta": 500000.0})),
    # One KV head, three query heads, chunk 3, explicit layer lists, and the published config layout
    # (rope_theta + rope_scaling, attn_temperature_tuning as the integer 4).
    dict(name="one_kv_head", seed=3, seq=17, disk="f32", published_layout=True,
         cfg=dict(vocab_size=128, hidden_size=40, num_hidden_layers=3, num_attention_heads=3,
                  num_key_value_heads=1, head_dim=16, intermediate_size=12, intermediate_size_mlp=36,
                  num_local_experts=5, moe_layers=[0, 2], no_rope_layers=[1, 0, 1], use_qk_norm=True,
                  attention_chunk_size=3, floor_scale=2, attn_scale=0.2,
                  rope_parameters={"rope_theta": 10000.0, **LLAMA3_BAND})),
    # Multimodal layout as transformers writes it: Llama4ForConditionalGeneration (tiny vision tower) saved in
    # shards with an index; text weights under `language_model.`, vision tensors the text model must ignore. Scout's own llama3 setting
    # (low == high: an empty smooth band) at a small original length.
    dict(name="multimodal_tiny", seed=4, seq=14, disk="f32", multimodal=True,
         cfg=dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, intermediate_size=12, num_local_experts=2,
                  use_qk_norm=True, no_rope_layer_interval=2, attention_chunk_size=6, floor_scale=2,
                  rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 16.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 1.0,
                                   "original_max_position_embeddings": 64})),
    # bf16 weights on disk, tied embeddings (no lm_head tensor), Scout-like with a 6-token chunk.
    dict(name="bf16_tiny", seed=5, seq=21, disk="bf16",
         cfg=dict(vocab_size=200, hidden_size=56, num_hidden_layers=3, num_attention_heads=7,
                  num_key_value_heads=7, head_dim=8, intermediate_size=16, num_local_experts=3,
                  use_qk_norm=True, no_rope_layer_interval=3, attention_chunk_size=6, floor_scale=5,
                  attn_scale=0.5, tie_word_embeddings=True,
                  rope_parameters={"rope_theta": 10000.0, **LLAMA3_BAND})),
    # Two experts per token (num_experts_per_tok = 2): each chosen expert sees y scaled by its own sigmoid.
    dict(name="top2_tiny", seed=7, seq=13, disk="f32",
         cfg=dict(vocab_size=112, hidden_size=40, num_hidden_layers=2, num_attention_heads=5,
                  num_key_value_heads=1, head_dim=8, intermediate_size=12, num_local_experts=5,
                  num_experts_per_tok=2, use_qk_norm=True, no_rope_layer_interval=2, attention_chunk_size=5,
                  floor_scale=2, attn_scale=0.3, rope_parameters={"rope_theta": 10000.0, **LLAMA3_BAND})),
    # f16 weights on disk with per-expert unfused experts (`experts.{j}.gate_proj.weight` ...).
    dict(name="unfused_f16", seed=6, seq=16, disk="f16", unfused=True,
         cfg=dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=8, intermediate_size=8, intermediate_size_mlp=20,
                  num_local_experts=3, interleave_moe_layer_step=2, use_qk_norm=False, attention_chunk_size=7,
                  floor_scale=3, rope_parameters={"rope_theta": 1000.0, "rope_type": "default"})),
]

# Fixtures the GPU kernels can run: head_dim 64 / 128, widths that are multiples of 128, small non-power-of-two
# chunks crossed several times by sequences of a few hundred tokens, a small floor_scale so the NoPE temperature
# is active.
FIXTURES += [
    # Scout-like at head_dim 128: every layer MoE, GQA 4/2, QK norm, llama3 band, chunk 37, layer 2 NoPE.
    dict(name="gpu_scout128", seed=11, seq=300, disk="bf16", init=0.05,
         cfg=dict(vocab_size=512, hidden_size=256, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=128, intermediate_size=128, num_local_experts=4,
                  interleave_moe_layer_step=1, use_qk_norm=True, no_rope_layer_interval=3,
                  attention_chunk_size=37, floor_scale=16, attn_scale=0.1,
                  rope_parameters={"rope_theta": 10000.0, **LLAMA3_BAND})),
    # Maverick-like at head_dim 64: a dense layer (intermediate_size_mlp 256) then a MoE layer (8 experts),
    # GQA 4/2 (group 2), no QK norm, plain rope, layer 1 NoPE, chunk 50, f32 on disk.
    dict(name="gpu_maverick64", seed=12, seq=260, disk="f32", init=0.05,
         cfg=dict(vocab_size=384, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, intermediate_size=128, intermediate_size_mlp=256,
                  num_local_experts=8, interleave_moe_layer_step=2, use_qk_norm=False,
                  no_rope_layer_interval=2, attention_chunk_size=50, floor_scale=24, attn_scale=0.1,
                  rope_parameters={"rope_type": "default", "rope_theta": 500000.0})),
    # MQA (1 KV head), two experts per token, f16 on disk with per-expert unfused experts, chunk 29.
    dict(name="gpu_top2_mqa", seed=13, seq=200, disk="f16", unfused=True, init=0.05,
         cfg=dict(vocab_size=256, hidden_size=256, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=64, intermediate_size=128, num_local_experts=4,
                  num_experts_per_tok=2, use_qk_norm=True, no_rope_layer_interval=3, attention_chunk_size=29,
                  floor_scale=16, attn_scale=0.1, rope_parameters={"rope_theta": 10000.0, **LLAMA3_BAND})),
    # Tied embeddings, bf16, one chunked RoPE layer and one NoPE layer, head_dim 128 (2 heads, no GQA), chunk 45.
    dict(name="gpu_tied_bf16", seed=14, seq=240, disk="bf16", init=0.05,
         cfg=dict(vocab_size=320, hidden_size=256, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=128, intermediate_size=128, num_local_experts=4,
                  use_qk_norm=True, no_rope_layer_interval=2, attention_chunk_size=45, floor_scale=16,
                  attn_scale=0.1, tie_word_embeddings=True,
                  rope_parameters={"rope_theta": 10000.0, **LLAMA3_BAND})),
]

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def fp8_rowwise(x):
    """FP8 E4M3 rowwise over the last axis as the kernels quantize (kernels/quant.cu): `scale = max(amax,
    1e-12) / 448`, `q = e4m3(clamp(x * (1 / scale), -448, 448))` to nearest even. Returns the codes as f32 values
    and the scales, so that `q * scale` is the dequantized tensor."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 448.0
    q = (x * (1.0 / scale)).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).float()
    return q, scale


def fp8_experts_forward(self, hidden_states):
    """`Llama4TextExperts.forward` of transformers 5.17 with both expert GEMMs in FP8 rowwise, as our grouped GEMM
    runs them: weights per expert and output channel, activation rows per token, products accumulated in f32 on
    the quantized values, times both scales, rounded to the activation dtype. The bf16 roundings in between are
    transformers' own (silu(gate) rounded, then up * it rounded). Zero rows (unchosen experts) stay exactly 0."""
    dtype = hidden_states.dtype
    x = hidden_states.view(self.gate_up_proj.shape[0], -1, self.hidden_size)

    def gemm(a, w):  # a [E, R, K] @ w [E, K, N]
        qa, sa = fp8_rowwise(a)
        qw, sw = fp8_rowwise(w.transpose(1, 2))  # [E, N, K]: one scale per (expert, output channel)
        return (torch.bmm(qa, qw.transpose(1, 2)) * sa * sw.transpose(1, 2)).to(dtype)

    gate, up = gemm(x, self.gate_up_proj).chunk(2, dim=-1)
    next_states = gemm(up * self.act_fn(gate), self.down_proj)
    return next_states.view(-1, self.hidden_size)


def reduced_precision_logits(model, ids):
    """transformers' own bf16 run of the same checkpoint (the GPU path's error budget), and the same with the
    routed experts in FP8 as we run them. Returns (bf16 logits, bf16 + FP8-experts logits), both as f32."""
    from transformers.models.llama4 import modeling_llama4 as m

    # `.to(bfloat16)` would also round RoPE's inv_freq buffers, which `from_pretrained(dtype=bfloat16)` (how a
    # bf16 model is really run) keeps in f32: put the f32 buffers back.
    rope = {n: b.clone() for n, b in model.named_buffers() if "inv_freq" in n}
    bf = model.to(torch.bfloat16)
    for n, b in bf.named_buffers():
        if n in rope:
            b.data = rope[n]
    try:
        plain = logits_of(bf, ids)
        original = m.Llama4TextExperts.forward
        m.Llama4TextExperts.forward = fp8_experts_forward
        try:
            fp8 = logits_of(bf, ids)
        finally:
            m.Llama4TextExperts.forward = original
    finally:
        model.to(torch.float32)
    return plain, fp8


def build(fx):
    torch.manual_seed(fx["seed"])
    # The tiny fixtures' 0.15 would make the wider GPU fixtures chaotic (activations grow ~sqrt(H) * 0.15 per
    # projection): those use about 1 / sqrt(H), so that bf16 noise does not dominate their logits.
    cfg = Llama4TextConfig(initializer_range=fx.get("init", 0.15), **fx["cfg"])
    cfg._attn_implementation = "eager"
    model = Llama4ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                # transformers initialises norms to ones, which would hide a missing or misplaced weight.
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
            # Round to the on-disk dtype so that the f32 model is exactly the upcast of the stored weights.
            p.copy_(p.to(DTYPES[fx["disk"]]).to(torch.float32))
    return cfg, model


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits[0].float().contiguous()


def unfuse(sd):
    """experts.gate_up_proj [E, H, 2I] / down_proj [E, I, H] -> per-expert nn.Linear weights."""
    out = {}
    for k, v in sd.items():
        if k.endswith("experts.gate_up_proj"):
            base, inter = k[: -len("gate_up_proj")], v.shape[2] // 2
            for j in range(v.shape[0]):
                out[f"{base}{j}.gate_proj.weight"] = v[j, :, :inter].t().contiguous()
                out[f"{base}{j}.up_proj.weight"] = v[j, :, inter:].t().contiguous()
        elif k.endswith("experts.down_proj"):
            base = k[: -len("down_proj")]
            for j in range(v.shape[0]):
                out[f"{base}{j}.down_proj.weight"] = v[j].t().contiguous()
        else:
            out[k] = v
    return out


def published_layout(config):
    """transformers 5.x layout -> the published one: rope_theta + rope_scaling, integer temperature flag."""
    params = config.pop("rope_parameters")
    config["rope_theta"] = params.pop("rope_theta")
    config["rope_scaling"] = params if params.get("rope_type", "default") != "default" else None
    config["attn_temperature_tuning"] = 4 if config["attn_temperature_tuning"] else 0
    for derived in ("layer_types",):
        config.pop(derived, None)
    return config


def write_multimodal(out, cfg, text_model, ids, logits):
    """The text model inside a real Llama4ForConditionalGeneration with a tiny vision tower, saved by
    transformers in shards (`language_model.` prefixes, vision and projector tensors, an index), then reloaded
    by transformers, which must give the text model's logits."""
    from transformers import Llama4ForConditionalGeneration, Llama4VisionConfig

    vision = Llama4VisionConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                image_size=28, patch_size=14, vision_output_dim=16, projector_input_dim=16,
                                projector_output_dim=16)
    full = Llama4Config(text_config=cfg.to_dict(), vision_config=vision.to_dict())
    torch.manual_seed(0)
    mm = Llama4ForConditionalGeneration(full).eval()
    mm.language_model.load_state_dict(text_model.state_dict())
    mm.save_pretrained(out, max_shard_size="60KB")
    again = Llama4ForConditionalGeneration.from_pretrained(out, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    diff = (logits_of(again, ids) - logits).abs().max().item()
    assert diff == 0.0, f"multimodal reload differs by {diff}"
    assert os.path.isfile(os.path.join(out, "model.safetensors.index.json")), "expected a sharded save"


def write_tokenizer(out, vocab_size):
    """A word-level tokenizer.json over a fixed word list, ids below vocab_size, for `llama4-run --text`."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ("<unk> the a of to and in is it that for on with as was at by an be this from or are not but "
             "llama model token chunk rope expert router shared cache decode prefill attention head key value "
             "query norm layer weight hello world one two three four five six seven eight nine ten").split()
    # Fill the rest of the vocabulary so that every id the model can produce decodes to something.
    words = (words + [f"w{i}" for i in range(len(words), vocab_size)])[:vocab_size]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(os.path.join(out, "tokenizer.json"))


def check_reload(out, ids, logits, name):
    """transformers itself must read the written files as we do. transformers 5.x refuses the published
    integer `attn_temperature_tuning` (its config is a strict dataclass), so the check reads a copy with that
    one key as a bool; everything else is read as written."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for n in os.listdir(out):
            shutil.copy(os.path.join(out, n), tmp)
        path = os.path.join(tmp, "config.json")
        with open(path) as f:
            config = json.load(f)
        config["attn_temperature_tuning"] = bool(config.get("attn_temperature_tuning", True))
        with open(path, "w") as f:
            json.dump(config, f)
        again = Llama4ForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager").eval()
        diff = (logits_of(again, ids) - logits).abs().max().item()
    assert diff == 0.0, f"{name}: the model transformers reloads differs by {diff}"


def cfg_pad(model):
    # Any id works once the mask is explicit; the vocabulary's last id keeps generate from warning.
    return model.config.vocab_size - 1


def greedy_run(model, prompt, n):
    """transformers' own greedy generate (its KV cache, its chunked-cache decode path) for n new tokens."""
    with torch.no_grad():
        # An explicit all-ones mask: otherwise generate takes prompt tokens equal to pad_token_id for left
        # padding and shifts positions and chunks.
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False,
                             min_new_tokens=n, output_scores=True, return_dict_in_generate=True,
                             pad_token_id=cfg_pad(model))
    # A near tie would make the expected token depend on rounding noise: refuse to record one.
    for step, scores in enumerate(out.scores):
        top2 = scores[0].topk(2).values
        assert (top2[0] - top2[1]).item() > 1e-4, f"greedy step {step}: near tie {top2.tolist()}"
    return prompt[0].tolist(), out.sequences[0, prompt.shape[1]:].tolist()


def make(fx, root):
    out = os.path.join(root, fx["name"])
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    cfg, model = build(fx)
    g = torch.Generator().manual_seed(100 + fx["seed"])
    ids = torch.randint(0, cfg.vocab_size, (1, fx["seq"]), generator=g)
    logits = logits_of(model, ids)

    if fx.get("multimodal"):
        write_multimodal(out, cfg, model, ids, logits)
    else:
        model.to(DTYPES[fx["disk"]]).save_pretrained(out)
        model.to(torch.float32)
        path = os.path.join(out, "config.json")
        with open(path) as f:
            config = json.load(f)
        if fx.get("published_layout"):
            config = published_layout(config)
        with open(path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        if fx.get("unfused"):
            from safetensors.torch import load_file
            st = os.path.join(out, "model.safetensors")
            save_file(unfuse(load_file(st)), st, metadata={"format": "pt"})
        else:
            check_reload(out, ids, logits, fx["name"])
    if fx.get("tokenizer"):
        write_tokenizer(out, cfg.vocab_size)
    save_file({"logits": logits}, os.path.join(out, "logits.safetensors"))
    prompt, greedy = greedy_run(model, ids[:, :4], 8)
    bf16, bf16_fp8 = reduced_precision_logits(model, ids)
    save_file({"logits": bf16}, os.path.join(out, "logits_bf16.safetensors"))
    save_file({"logits": bf16_fp8}, os.path.join(out, "logits_bf16_fp8.safetensors"))
    rel = lambda a: ((a - logits).norm() / logits.norm()).item()
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump({"input_ids": ids[0].tolist(), "greedy_prompt": prompt, "greedy_tokens": greedy,
                   "transformers": transformers.__version__, "torch": torch.__version__,
                   "weights_on_disk": fx["disk"], "bf16_rel_l2": rel(bf16), "bf16_fp8_rel_l2": rel(bf16_fp8)},
                  f, indent=2)
    size = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
    print(f"{fx['name']:>16}: {fx['seq']} tokens, logits {tuple(logits.shape)}, {size / 1024:.0f} KiB, "
          f"bf16 rel L2 {rel(bf16):.3e}, bf16 + FP8 experts {rel(bf16_fp8):.3e}")


def write_fuzz_seeds(fixtures_root, corpus):
    """Seed corpora for fuzz/: every fixture's config.json, and small safetensors files covering each dtype
    the reader knows, metadata, an empty file and real fixture tensors (whole checkpoints are too large to be
    useful seeds)."""
    from safetensors.torch import load_file

    cfg_dir, st_dir = os.path.join(corpus, "config"), os.path.join(corpus, "safetensors")
    for d in (cfg_dir, st_dir, os.path.join(corpus, "index")):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    for name in sorted(os.listdir(fixtures_root)):
        src = os.path.join(fixtures_root, name, "config.json")
        if os.path.isfile(src):
            shutil.copy(src, os.path.join(cfg_dir, f"{name}.json"))
    g = torch.Generator().manual_seed(7)
    save_file({"a": torch.randn(2, 3, generator=g), "b": torch.randn(4, generator=g).to(torch.bfloat16),
               "c": torch.randn(2, 2, generator=g).to(torch.float16), "ids": torch.arange(3)},
              os.path.join(st_dir, "mixed_dtypes.safetensors"), metadata={"format": "pt"})
    save_file({}, os.path.join(st_dir, "empty.safetensors"))
    scout = load_file(os.path.join(fixtures_root, "scout_tiny", "model.safetensors"))
    keep = ["model.norm.weight", "model.layers.0.input_layernorm.weight", "model.layers.0.feed_forward.router.weight"]
    save_file({k: scout[k] for k in keep}, os.path.join(st_dir, "scout_norms.safetensors"))
    unfused = load_file(os.path.join(fixtures_root, "unfused_f16", "model.safetensors"))
    keep = [k for k in sorted(unfused) if ".experts.0." in k]
    save_file({k: unfused[k] for k in keep}, os.path.join(st_dir, "unfused_expert_f16.safetensors"))
    write_hostile_seeds(fixtures_root, corpus)


def write_hostile_seeds(fixtures_root, corpus):
    """One seed per class of hostile input that once got past the loaders (issue 18): a header length a few
    bytes short, a name listed twice, overlapping ranges, NaN/inf values, an empty tensor whose other axes
    overflow, a newline in a name; configs whose RoPE or NoPE temperature is not finite, huge expert sizes,
    rope_scaling beside rope_parameters; shard indexes with many shards, path traversal, a non-string shard."""
    import json
    import struct

    def st(path, header, data, pad=0, short=0):
        t = (header if isinstance(header, str) else json.dumps(header)) + " " * pad
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(t) - short) + t.encode() + data)

    def f32(xs):
        return b"".join(struct.pack("<f", x) for x in xs)

    s = os.path.join(corpus, "safetensors")
    t = {"dtype": "F32", "shape": [1]}
    st(os.path.join(s, "header_length_short.safetensors"),
       {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, f32([1, 2]), pad=8, short=4)
    st(os.path.join(s, "name_twice.safetensors"),
       '{"a":%s,"b":%s,"a":%s}' % tuple(json.dumps(dict(t, data_offsets=o)) for o in ([0, 4], [4, 8], [4, 8])),
       f32([1, 2]))
    st(os.path.join(s, "overlap.safetensors"),
       {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": dict(t, data_offsets=[4, 8]),
        "c": dict(t, data_offsets=[8, 12])}, f32([1, 2, 3]))
    st(os.path.join(s, "non_finite.safetensors"),
       {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
        "b": {"dtype": "BF16", "shape": [2], "data_offsets": [12, 16]}},
       f32([float("nan"), float("inf"), 1]) + bytes([0x80, 0x7F, 0xC0, 0x7F]))
    st(os.path.join(s, "zero_axis_overflow.safetensors"),
       {"a": {"dtype": "F32", "shape": [0, 1 << 62, 4], "data_offsets": [0, 0]}}, b"")
    st(os.path.join(s, "odd_names_dtypes.safetensors"),
       {"a\nb": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}, "__metadata__": {"format": "pt"}},
       b"\x01\x02")

    with open(os.path.join(fixtures_root, "scout_tiny", "config.json")) as f:
        base = json.load(f)

    def cfg(name, edit):
        c = json.loads(json.dumps(base))
        edit(c)
        with open(os.path.join(corpus, "config", name), "w") as f:
            json.dump(c, f, indent=1)

    def scaling_beside_parameters(c):
        c["rope_scaling"] = {k: v for k, v in c["rope_parameters"].items() if k != "rope_theta"}

    cfg("rope_factor_tiny.json", lambda c: c["rope_parameters"].__setitem__("factor", 1e-45))
    cfg("floor_scale_tiny.json", lambda c: c.__setitem__("floor_scale", 1e-45))
    cfg("huge_experts.json", lambda c: c.update(num_local_experts=1 << 24, intermediate_size=1 << 24))
    cfg("rope_scaling_beside_parameters.json", scaling_beside_parameters)

    i = os.path.join(corpus, "index")
    shutil.copy(os.path.join(fixtures_root, "multimodal_tiny", "model.safetensors.index.json"),
                os.path.join(i, "multimodal_tiny.json"))
    for name, index in [("many_shards.json", {"weight_map": {f"t{n}": f"shard{n}.safetensors" for n in range(2000)}}),
                        ("traversal.json", {"weight_map": {"a": "../model.safetensors", "b": "x\\y"}}),
                        ("non_string_shard.json", {"metadata": {}, "weight_map": {"a": 3}})]:
        with open(os.path.join(i, name), "w") as f:
            json.dump(index, f)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(here, "..", "reference-model", "fixtures"))
    ap.add_argument("--only", nargs="*", help="fixture names to (re)build")
    args = ap.parse_args()
    major = int(transformers.__version__.split(".")[0])
    assert major >= 5, f"transformers {transformers.__version__}: need 5.x"
    torch.set_num_threads(1)  # deterministic reductions
    for fx in FIXTURES:
        if not args.only or fx["name"] in args.only:
            make(fx, os.path.abspath(args.out))
    write_fuzz_seeds(os.path.abspath(args.out), os.path.join(here, "..", "fuzz", "corpus"))


if __name__ == "__main__":
    main()
