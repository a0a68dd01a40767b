//! The whole model at full size through criterion: Llama 4 Scout with synthetic weights drawn on the device
//! (`Model::synthetic`), both recipes, greedy decode steps through `Engine::step` (graph replays, one host round
//! trip per token) at batch 1/32/64 and prefill to the first token. Criterion's own estimate and spread per
//! case; `llama4-bench` reports the same cases beside their weight-read limits, with memory and a per-op
//! profile, and `gpu-bundle/run.sh scout` times the PyTorch composition beside it. Needs an H200-class GPU (119
//! GB of weights); `L4K_MODEL_LAYERS=N` builds the first N layers only.
//!
//! With $L4K_BENCH_JSON set, each case appends one JSON record (as bench/common.rs does for the kernel benches):
//! its criterion id and key (recipe, case, batch, context), the bytes a step must move (decode: the weights it
//! touches and the KV it reads, `perf::decode_weight_bytes` + `perf::decode_kv_bytes`; prefill: every weight
//! the prompt touches, once) and its FLOPs (`perf::step_flops`), and the copy ceiling measured here, for
//! bench/report.py; criterion's estimate is the figure.
use criterion::{criterion_group, criterion_main, Criterion};
use llama4_model::gpu::{Gpu, GpuOptions};
use llama4_model::model::Model;
use llama4_model::perf::{self, DecodeCase, Flops, PrefillCase, WeightBytes};
use llama4_model::synthetic::Preset;
use serde_json::json;
use std::io::Write;
use std::time::Duration;

const BLOCK: usize = 64;

fn model(fp8_dense: bool) -> Model<Gpu> {
    let layers = std::env::var("L4K_MODEL_LAYERS").ok().map(|v| v.parse().expect("L4K_MODEL_LAYERS: a layer count"));
    let config = Preset::Scout.config(layers).expect("the Scout preset");
    let gpu =
        Gpu::new(GpuOptions { device: 0, fp8_dense }).unwrap_or_else(|e| panic!("the model bench needs a GPU: {e}"));
    Model::synthetic(config, gpu, 0, &mut |_, _| {}).expect("synthetic Scout")
}

/// One JSON line appended to $L4K_BENCH_JSON (nothing when it is unset).
fn record(line: serde_json::Value) {
    let Some(path) = std::env::var_os("L4K_BENCH_JSON") else { return };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("L4K_BENCH_JSON");
    writeln!(f, "{line}").expect("L4K_BENCH_JSON");
}

/// The record of one case: `key` names it as llama4-bench and bench/peers/torch_scout.py do.
fn case_record(m: &Model<Gpu>, id: &str, key: serde_json::Value, bytes: usize, flops: Flops) {
    let mut line = json!({
        "source": "llama4-kernels", "id": id, "model": "scout", "layers": m.config.num_hidden_layers,
        "bytes": bytes, "flops": flops.total, "fp8_flops": flops.fp8, "device": m.backend.describe(),
    });
    for (k, v) in key.as_object().expect("a key object") {
        line[k] = v.clone();
    }
    record(line);
}

fn benches(c: &mut Criterion) {
    for fp8_dense in [false, true] {
        let m = model(fp8_dense);
        let recipe = if fp8_dense { "fp8-dense" } else { "meta" };
        let weights = WeightBytes::of(&m);
        let copy_gbps = m.backend.copy_ceiling_gbps().expect("the copy ceiling");
        record(json!({
            "source": "llama4-kernels", "family": "copy", "variant": "model", "gbps": copy_gbps,
            "device": m.backend.describe(),
        }));
        let mut g = c.benchmark_group(format!("scout-{recipe}"));
        g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
        for (batch, context) in [(1, 1024), (1, 8192), (32, 1024), (64, 1024)] {
            let mut case = match DecodeCase::new(&m, batch, context, 256, BLOCK).expect("decode case") {
                Ok(c) => c,
                Err((kv, free)) => {
                    eprintln!("decode b{batch} ctx{context}: KV needs {kv} bytes, {free} free: skipped");
                    continue;
                }
            };
            let id = format!("decode/b{batch}/ctx{context}");
            g.bench_function(&id, |b| {
                b.iter_custom(|n| {
                    Duration::from_secs_f64((0..n).map(|_| case.step().expect("a decode step")).sum::<f64>() / 1e3)
                })
            });
            let bytes = perf::decode_weight_bytes(&m, &weights, batch) + perf::decode_kv_bytes(&m, batch, context);
            let key = json!({"recipe": recipe, "case": "decode", "batch": batch, "context": context});
            case_record(&m, &format!("scout-{recipe}/{id}"), key, bytes, perf::decode_flops(&m, batch, context));
        }
        let prompt = 8192;
        let mut case = PrefillCase::new(&m, prompt, 32768, BLOCK).expect("prefill case").expect("an 8k prefill fits");
        g.bench_function(format!("prefill/{prompt}"), |b| {
            b.iter_custom(|n| {
                Duration::from_secs_f64((0..n).map(|_| case.run().expect("a prefill")).sum::<f64>() / 1e3)
            })
        });
        let key = json!({"recipe": recipe, "case": "prefill", "batch": 1, "context": prompt});
        let bytes = perf::decode_weight_bytes(&m, &weights, prompt);
        case_record(&m, &format!("scout-{recipe}/prefill/{prompt}"), key, bytes, perf::prefill_flops(&m, prompt));
        g.finish();
    }
}

criterion_group!(model_benches, benches);
criterion_main!(model_benches);
