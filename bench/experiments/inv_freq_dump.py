# transformers' llama3 RoPE frequencies (its own function where it can be called, on CPU and CUDA), as f32 bits.
import inspect, json, math, sys
import torch
import transformers
from transformers import modeling_rope_utils as mru

cases = []
for theta in [10000.0, 500000.0, 1e6]:
    for head_dim in [64, 96, 128]:
        for (factor, low, high, orig) in [(32.0, 1.0, 4.0, 8192), (8.0, 1.0, 4.0, 8192), (16.0, 1.0, 1.0, 8192), (8.0, 2.0, 6.0, 4096), (None, None, None, None)]:
            cases.append((theta, head_dim, factor, low, high, orig))
out = {"transformers": transformers.__version__, "torch": torch.__version__, "cases": []}
fn = mru.ROPE_INIT_FUNCTIONS.get("llama3")
out["llama3_source"] = inspect.getsource(fn) if fn else None
out["default_source"] = inspect.getsource(mru.ROPE_INIT_FUNCTIONS.get("default", mru._compute_default_rope_parameters)) if hasattr(mru, "_compute_default_rope_parameters") else None
from transformers import LlamaConfig
for (theta, hd, factor, low, high, orig) in cases:
    kw = dict(hidden_size=hd * 8, num_attention_heads=8, head_dim=hd)
    if factor is None:
        rp = {"rope_type": "default", "rope_theta": theta}
    else:
        rp = {"rope_type": "llama3", "rope_theta": theta, "factor": factor, "low_freq_factor": low,
              "high_freq_factor": high, "original_max_position_embeddings": orig}
    rec = {"theta": theta, "head_dim": hd, "factor": factor, "low": low, "high": high, "orig": orig}
    try:
        try:
            cfg = LlamaConfig(rope_parameters=rp, **kw)
        except TypeError:
            cfg = LlamaConfig(rope_theta=theta, rope_scaling=None if factor is None else rp, **kw)
        f = mru.ROPE_INIT_FUNCTIONS[rp["rope_type"]] if rp["rope_type"] != "default" else getattr(mru, "_compute_default_rope_parameters")
        for dev in ["cpu", "cuda"]:
            inv, _ = f(cfg, torch.device(dev))
            rec[dev] = inv.float().cpu().view(torch.int32).tolist()
    except Exception as e:
        rec["error"] = repr(e)
    out["cases"].append(rec)
json.dump(out, open(sys.argv[1], "w"))
print("cases", len(out["cases"]), "errors", sum("error" in c for c in out["cases"]))
print([c.get("error") for c in out["cases"] if "error" in c][:3])
