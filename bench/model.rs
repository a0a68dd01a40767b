//! The whole model at full size through criterion: Llama 4 Scout with synthetic weights drawn on the device
//! (`Model::synthetic`), both recipes, greedy decode steps through `Engine::step` (graph replays, one host round
//! trip per token) at batch 1/32/64 and prefill to the first token. Criterion's own estimate and spread per
//! case; `llama4-bench` reports the same cases beside their weight-read limits, with memory and a per-op
//! profile, and `gpu-bundle/run.sh scout` times the PyTorch composition beside it. Needs an H200-class GPU (119
//! GB of weights); `L4K_MODEL_LAYERS=N` builds the first N layers only.
use criterion::{criterion_group, criterion_main, Criterion};
use llama4_model::gpu::{Gpu, GpuOptions};
use llama4_model::model::Model;
use llama4_model::perf::{DecodeCase, PrefillCase};
use llama4_model::synthetic::Preset;
use std::time::Duration;

const BLOCK: usize = 64;

fn model(fp8_dense: bool) -> Model<Gpu> {
    let layers = std::env::var("L4K_MODEL_LAYERS").ok().map(|v| v.parse().expect("L4K_MODEL_LAYERS: a layer count"));
    let config = Preset::Scout.config(layers).expect("the Scout preset");
    let gpu =
        Gpu::new(GpuOptions { device: 0, fp8_dense }).unwrap_or_else(|e| panic!("the model bench needs a GPU: {e}"));
    Model::synthetic(config, gpu, 0, &mut |_, _| {}).expect("synthetic Scout")
}

fn benches(c: &mut Criterion) {
    for fp8_dense in [false, true] {
        let m = model(fp8_dense);
        let recipe = if fp8_dense { "fp8-dense" } else { "meta" };
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
            g.bench_function(format!("decode/b{batch}/ctx{context}"), |b| {
                b.iter_custom(|n| {
                    Duration::from_secs_f64((0..n).map(|_| case.step().expect("a decode step")).sum::<f64>() / 1e3)
                })
            });
        }
        let mut case = PrefillCase::new(&m, 8192, 32768, BLOCK).expect("prefill case").expect("an 8k prefill fits");
        g.bench_function("prefill/8192", |b| {
            b.iter_custom(|n| {
                Duration::from_secs_f64((0..n).map(|_| case.run().expect("a prefill")).sum::<f64>() / 1e3)
            })
        });
        g.finish();
    }
}

criterion_group!(model_benches, benches);
criterion_main!(model_benches);
