//! The model on the GPU (routed experts FP8, the rest bf16) against transformers on the `gpu_*` fixtures:
//! logits of a prefill, of a prefill cut into pieces, and of every decode step (graph-replayed), each within
//! 1.5x the relative L2 error that transformers' own bf16 run with FP8 experts makes against the f32 oracle
//! on the same checkpoint; several sequences in one step get what they get alone; a replayed graph gives the
//! bytes of eager launches, fused decode routing the bytes of the three launches, and a bounded shared-expert
//! grid the default step's; configs the kernels cannot serve are refused at load. Needs an sm_90 GPU: run
//! with `--include-ignored` (the staged runner does); without one these tests fail.
#![cfg(feature = "cuda")]

mod common;

use common::{alone, bf16_fp8_logits, bf16_logits, golden, gpu_fixtures, jobs, rel_l2, together};
use llama4_model::backend::{Backend, Limits};
use llama4_model::engine::{Engine, Logits, SeqStep};
use llama4_model::gpu::{Gpu, GpuOptions};
use llama4_model::model::Model;
use ndarray::{concatenate, Axis};
use std::path::Path;
use std::sync::Mutex;

/// Graph capture must not see another thread's work on the device: these tests run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The error budget of the issue: 1.5x transformers' bf16 + FP8-experts error against its f32 run.
const BUDGET: f64 = 1.5;

fn load(dir: &Path, fp8_dense: bool) -> Model<Gpu> {
    let gpu =
        Gpu::new(GpuOptions { device: 0, fp8_dense }).unwrap_or_else(|e| panic!("GPU tests were asked to run but {e}"));
    Model::load(dir, gpu).unwrap()
}

fn budget(dir: &Path) -> (f64, f64) {
    let g = golden(dir);
    let hf = rel_l2(&bf16_fp8_logits(dir), &g.logits);
    let hf_bf16 = rel_l2(&bf16_logits(dir), &g.logits);
    (hf, hf_bf16)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn prefill_and_decode_logits_are_within_the_bf16_fp8_budget() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for dir in gpu_fixtures() {
        let g = golden(&dir);
        let (hf, hf_bf16) = budget(&dir);
        let model = load(&dir, false);
        let n = g.ids.len();
        let limits = Limits { max_tokens: n, max_seqs: 1, max_context: n, max_logit_rows: n, ..Limits::default() };
        // One prefill of every token.
        let mut e = Engine::new(&model, limits).unwrap();
        let full = e.forward(&g.ids, Logits::All).unwrap();
        let err = rel_l2(&full, &g.logits);
        // A prefill in pieces (continued prefill), then decode steps replayed from a graph.
        let mut e = Engine::new(&model, limits).unwrap();
        let split = n / 2;
        let mut rows = vec![
            e.forward(&g.ids[..split / 3], Logits::All).unwrap(),
            e.forward(&g.ids[split / 3..split], Logits::All).unwrap(),
        ];
        for t in split..n {
            rows.push(e.forward(&g.ids[t..t + 1], Logits::All).unwrap());
        }
        assert_eq!(e.graphs(), 1, "decode steps must replay one recorded graph");
        let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
        let stepped = concatenate(Axis(0), &views).unwrap();
        let err_steps = rel_l2(&stepped, &g.logits);
        let err_decode = rel_l2(
            &stepped.slice(ndarray::s![split.., ..]).to_owned(),
            &g.logits.slice(ndarray::s![split.., ..]).to_owned(),
        );
        let hf_decode = rel_l2(
            &bf16_fp8_logits(&dir).slice(ndarray::s![split.., ..]).to_owned(),
            &g.logits.slice(ndarray::s![split.., ..]).to_owned(),
        );
        println!(
            "{}: rel L2 vs f32 oracle: prefill {err:.3e}, pieces + decode {err_steps:.3e}, decode rows {err_decode:.3e} \
             (decode rows of transformers bf16+fp8 {hf_decode:.3e}); transformers bf16+fp8 {hf:.3e}, bf16 {hf_bf16:.3e}; \
             ratio {:.2}",
            dir.display(),
            err.max(err_steps) / hf
        );
        assert!(err <= BUDGET * hf, "{}: prefill rel L2 {err:.3e} > {BUDGET} x {hf:.3e}", dir.display());
        assert!(err_steps <= BUDGET * hf, "{}: stepped rel L2 {err_steps:.3e} > {BUDGET} x {hf:.3e}", dir.display());
        assert!(err_decode <= BUDGET * hf_decode.max(hf), "{}: decode rows {err_decode:.3e}", dir.display());
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fp8_dense_runs_and_stays_near_the_fp8_experts_path() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for dir in gpu_fixtures() {
        let g = golden(&dir);
        let (hf, _) = budget(&dir);
        let model = load(&dir, true);
        let mut e = model.new_cache().unwrap();
        let out = e.forward(&g.ids, Logits::All).unwrap();
        let err = rel_l2(&out, &g.logits);
        // No transformers run quantizes the dense linears, so this recipe has no measured budget: the figure is
        // reported, and held only to a sanity bound that a wrong layout or scale (errors near 1) cannot meet.
        println!("{}: --fp8-dense rel L2 {err:.3e} ({:.2}x transformers bf16+fp8 experts)", dir.display(), err / hf);
        assert!(err <= 0.5, "{}: --fp8-dense rel L2 {err:.3e}", dir.display());
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn sequences_batched_together_get_what_they_get_alone() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for dir in gpu_fixtures() {
        let g = golden(&dir);
        let (hf, _) = budget(&dir);
        let model = load(&dir, false);
        let jobs = jobs(&g.ids, 10);
        let limits = Limits {
            max_tokens: 256,
            max_seqs: 8,
            max_context: g.ids.len(),
            max_logit_rows: 256,
            block_size: 16,
            ..Limits::default()
        };
        let mut engine = Engine::new(&model, limits).unwrap();
        let (got, mixed) = together(&mut engine, &jobs);
        assert!(mixed >= 3, "only {mixed} steps mixed prefill and decode");
        assert!(engine.graphs() >= 1, "no decode-only step was graph-replayed");
        let mut worst: f64 = 0.0;
        for (j, job) in jobs.iter().enumerate() {
            let want = alone(&model, job);
            let err = rel_l2(&got[j], &want);
            worst = worst.max(err);
            assert!(
                err <= BUDGET * hf,
                "{}: job {j}: batched vs alone rel L2 {err:.3e} > {BUDGET} x {hf:.3e}",
                dir.display()
            );
        }
        println!(
            "{}: {} jobs, {mixed} mixed steps, {} graphs; worst batched-vs-alone rel L2 {worst:.3e}",
            dir.display(),
            jobs.len(),
            engine.graphs()
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn graph_replay_gives_the_bytes_of_eager_launches() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = gpu_fixtures().into_iter().next().unwrap();
    let g = golden(&dir);
    let model = load(&dir, false);
    // Batch sizes that are buckets, so the eager step has the graph's exact shape.
    for batch in [1usize, 2, 4] {
        let run = |graphs: bool| {
            let limits =
                Limits { max_tokens: 64, max_seqs: 4, max_context: 128, max_logit_rows: 64, ..Limits::default() };
            let mut e = Engine::new(&model, limits).unwrap();
            e.use_graphs = graphs;
            let seqs: Vec<_> = (0..batch).map(|_| e.add_sequence()).collect();
            let prompts: Vec<&[u32]> = (0..batch).map(|b| &g.ids[b..b + 9 + 3 * b]).collect();
            let steps: Vec<SeqStep> =
                seqs.iter().zip(&prompts).map(|(&seq, p)| SeqStep { seq, tokens: p, logits: Logits::Last }).collect();
            e.step(&steps, false).unwrap();
            let mut out = Vec::new();
            for t in 0..6 {
                let toks: Vec<[u32; 1]> = (0..batch).map(|b| [g.ids[40 + t + b]]).collect();
                let steps: Vec<SeqStep> = seqs
                    .iter()
                    .zip(&toks)
                    .map(|(&seq, tk)| SeqStep { seq, tokens: tk, logits: Logits::Last })
                    .collect();
                out.extend(e.step(&steps, true).unwrap().into_iter().map(|o| o.logits.unwrap()));
            }
            (out, e.graphs())
        };
        let (eager, n0) = run(false);
        let (replayed, n1) = run(true);
        assert_eq!((n0, n1), (0, 1), "batch {batch}");
        for (a, b) in eager.iter().zip(&replayed) {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "batch {batch}: replay differs from eager"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fused_routing_gives_the_bytes_of_three_launches() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = gpu_fixtures().into_iter().next().unwrap();
    let g = golden(&dir);
    let model = load(&dir, false);
    // Batch 1, where the three launches' router logits come from the same GEMV route_fp8 runs (at more rows
    // linear_bf16 takes cuBLASLt, whose sums may round differently); decode steps replayed from a graph.
    let run = |fused: bool| {
        model.backend.set_fused_routing(fused);
        let limits = Limits { max_tokens: 64, max_seqs: 1, max_context: 128, max_logit_rows: 64, ..Limits::default() };
        let mut e = Engine::new(&model, limits).unwrap();
        let seq = e.add_sequence();
        e.step(&[SeqStep { seq, tokens: &g.ids[..9], logits: Logits::Last }], false).unwrap();
        let mut out = Vec::new();
        for t in 0..6 {
            let tk = [g.ids[40 + t]];
            let o = e.step(&[SeqStep { seq, tokens: &tk, logits: Logits::Last }], true).unwrap();
            out.extend(o.into_iter().map(|o| o.logits.unwrap()));
        }
        out
    };
    let (three, fused) = (run(false), run(true));
    model.backend.set_fused_routing(false);
    assert_eq!(three.len(), 6);
    for (t, (a, b)) in three.iter().zip(&fused).enumerate() {
        assert!(a.iter().all(|x| x.is_finite()), "step {t}: non-finite logits");
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "step {t}: fused routing changed the logits");
    }
}

/// The shared expert's gate_up GEMV on a bounded grid (an A/B option of the step) gives the default step's logits,
/// replayed from a graph. On a synthetic model whose intermediate size is 1024, so that the shared gate_up (2048
/// wide) takes the GEMV the bound applies to (the fixtures' 256 take cuBLASLt); Meta's recipe (a bf16 weight).
#[test]
#[ignore = "needs a CUDA GPU"]
fn a_bounded_shared_expert_grid_keeps_the_logits() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = gpu_fixtures().into_iter().next().unwrap();
    let mut config = llama4_model::checkpoint::Checkpoint::open(&dir).unwrap().config;
    config.intermediate_size = 1024;
    let ids: Vec<u32> = (0..16u32).map(|i| (i * 101 + 7) % config.vocab_size as u32).collect();
    let gpu = Gpu::new(GpuOptions { device: 0, fp8_dense: false }).expect("a GPU");
    let model = Model::synthetic(config, gpu, 3, &mut |_, _| {}).unwrap();
    let run = |ctas: Option<u32>| {
        model.backend.set_shared_gemv_ctas(ctas);
        let limits = Limits { max_tokens: 64, max_seqs: 1, max_context: 128, max_logit_rows: 64, ..Limits::default() };
        let mut e = Engine::new(&model, limits).unwrap();
        let seq = e.add_sequence();
        e.step(&[SeqStep { seq, tokens: &ids[..9], logits: Logits::Last }], false).unwrap();
        let mut out = Vec::new();
        for &t in &ids[9..] {
            let o = e.step(&[SeqStep { seq, tokens: &[t], logits: Logits::Last }], true).unwrap();
            out.extend(o.into_iter().map(|o| o.logits.unwrap()));
        }
        out
    };
    let (unbounded, bounded) = (run(None), run(Some(5)));
    model.backend.set_shared_gemv_ctas(None);
    assert_eq!(unbounded.len(), 7);
    for (t, (a, b)) in unbounded.iter().zip(&bounded).enumerate() {
        assert!(a.iter().all(|x| x.is_finite()), "step {t}: non-finite logits");
        let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "step {t}: the bounded grid changed the logits");
    }
}

/// `--fp8-dense` with the norms writing Y's FP8 copy gives the logits of the same model whose FP8 linears quantize
/// Y themselves (the default), through every writer of the copy (the first rmsnorm, the post-attention
/// add_rmsnorm, prefill's add_rmsnorm after the unpermute, the fused unpermute + norm of decode), over a 520-token
/// prefill and 7 graph-replayed decode steps, on every fixture checkpoint.
#[test]
#[ignore = "needs a CUDA GPU"]
fn the_norms_fp8_copy_keeps_the_logits() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for dir in gpu_fixtures() {
        let config = llama4_model::checkpoint::Checkpoint::open(&dir).unwrap().config;
        // 520 prompt tokens: above permute::unpermute_norm_is_faster's 512, so the prefill takes unpermute then
        // add_rmsnorm (the norm writing the copy), the decode steps the fused kernel.
        let ids: Vec<u32> = (0..527u32).map(|i| (i * 37 + 5) % config.vocab_size as u32).collect();
        let gpu = Gpu::new(GpuOptions { device: 0, fp8_dense: true }).expect("a GPU");
        let model = Model::synthetic(config, gpu, 5, &mut |_, _| {}).unwrap();
        let run = |copy: bool| {
            model.backend.set_norm_fp8_copy(copy);
            let limits =
                Limits { max_tokens: 520, max_seqs: 1, max_context: 544, max_logit_rows: 520, ..Limits::default() };
            let mut e = Engine::new(&model, limits).unwrap();
            let seq = e.add_sequence();
            let mut out: Vec<_> = e
                .step(&[SeqStep { seq, tokens: &ids[..520], logits: Logits::All }], false)
                .unwrap()
                .into_iter()
                .map(|o| o.logits.unwrap())
                .collect();
            for &t in &ids[520..] {
                let o = e.step(&[SeqStep { seq, tokens: &[t], logits: Logits::Last }], true).unwrap();
                out.extend(o.into_iter().map(|o| o.logits.unwrap()));
            }
            out
        };
        let (with_copy, without) = (run(true), run(false));
        assert!(!with_copy.is_empty());
        for (t, (a, b)) in with_copy.iter().zip(&without).enumerate() {
            assert!(a.iter().all(|x| x.is_finite()), "{}: output {t}: non-finite logits", dir.display());
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{}: output {t}: the norms' FP8 copy changed the logits", dir.display());
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn configs_the_kernels_cannot_serve_are_refused_at_load() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let gpu = Gpu::new(GpuOptions::default()).unwrap();
    let err = Model::load(&common::fixtures_root().join("scout_tiny"), gpu).err().unwrap().to_string();
    assert!(err.contains("head_dim 16") && err.lines().count() == 1, "{err}");
}

/// Synthetic weights drawn on the device (`Gpu::synthesize`) are the host stream's bits stored the same way:
/// a model built from them gives exactly the logits of one whose weights were drawn on the host and uploaded
/// (routed experts quantized in groups, so the device draw's group offsets are checked too), both recipes.
#[test]
#[ignore = "needs a CUDA GPU"]
fn synthetic_weights_drawn_on_the_device_equal_the_host_stream() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let gpu = |fp8_dense| Gpu::new(GpuOptions { device: 0, fp8_dense }).expect("a GPU");
    for dir in gpu_fixtures() {
        let config = llama4_model::checkpoint::Checkpoint::open(&dir).unwrap().config;
        for fp8_dense in [false, true] {
            let device = Model::synthetic(config.clone(), gpu(fp8_dense), 11, &mut |_, _| {}).unwrap();
            let host_gpu = gpu(fp8_dense);
            let weights = llama4_model::synthetic::weights(&config, 11, &mut |role, name, shape, init| {
                host_gpu.upload(role, name, init.host(shape)?)
            })
            .unwrap();
            let host = Model::from_weights(config.clone(), host_gpu, weights).unwrap();
            let prompt: Vec<u32> = (0..37u32).map(|i| (i * 101 + 7) % config.vocab_size as u32).collect();
            let run = |m: &Model<Gpu>| m.generate(&prompt, 6, true).unwrap();
            let (a, b) = (run(&device), run(&host));
            let (la, lb) = (a.logits.unwrap(), b.logits.unwrap());
            assert!(la.iter().all(|v| v.is_finite()), "{}: non-finite synthetic logits", dir.display());
            assert_eq!(a.tokens, b.tokens, "{} fp8_dense={fp8_dense}: tokens differ", dir.display());
            let same = la.iter().zip(lb.iter()).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{} fp8_dense={fp8_dense}: logits of device-drawn and host-drawn weights differ",
                dir.display()
            );
        }
    }
}
