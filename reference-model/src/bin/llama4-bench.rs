//! llama4-bench: the whole model at full size on one GPU, with synthetic weights (no checkpoint).
//!
//! ```text
//! llama4-bench --synthetic scout [--layers N] [--fp8-dense] [--batches 1,8,32,64] [--contexts 1024,8192,32768]
//!              [--prompts 2048,8192,32768] [--steps 20] [--json FILE]
//! ```
//! Builds the model's weights on the device (`Model::synthetic`: the checkpoint's layouts and storage, FP8
//! routed experts by weight_prep), then measures decode at every batch x context (tokens/s of greedy steps
//! through the engine, each beside its weight-read limit at the copy ceiling measured here) and prefill (time to
//! first token) for every prompt length, with memory and a per-op breakdown. One JSON object per case goes to
//! `--json` (appended) for bench/model_report.py. Any failure is one line on stderr and exit 1 (2 for usage).

use clap::Parser;
use llama4_model::gpu::{Gpu, GpuOptions, OpTime};
use llama4_model::model::Model;
use llama4_model::perf::{self, Outcome, WeightBytes};
use llama4_model::synthetic::Preset;
use llama4_model::Error;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(name = "llama4-bench", about = "Full-size Llama 4 on one GPU with synthetic weights")]
struct Args {
    /// The released model to build: scout or maverick.
    #[arg(long, value_name = "MODEL")]
    synthetic: String,
    /// Decoder layers (default: the release's 48; fewer keep the layer pattern).
    #[arg(long)]
    layers: Option<usize>,
    /// Quantize the dense linears (attention, shared expert, dense MLP) rowwise to FP8 too.
    #[arg(long)]
    fp8_dense: bool,
    /// Run the shared expert in line instead of on its own stream beside the routed experts.
    #[arg(long)]
    no_overlap: bool,
    /// Route decode batches in one launch (router::route_fp8) instead of three (router logits, routing, FP8
    /// permute): the same bits, an A/B.
    #[arg(long)]
    fused_routing: bool,
    /// Bound the shared expert's gate_up GEMV beside the routed path to this many CTAs looping over its tiles
    /// (the same bits; Gpu::set_shared_gemv_ctas): an A/B. Absent: a CTA per 16 columns.
    #[arg(long)]
    shared_gemv_ctas: Option<u32>,
    /// With --fp8-dense: the norms write their output's FP8 copy and the FP8 linears that read it skip their
    /// quant_fp8 launch (Gpu::set_norm_fp8_copy; the same bytes): an A/B, off by default.
    #[arg(long)]
    norm_fp8: bool,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    batches: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1024,8192,32768")]
    contexts: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "2048,8192,32768")]
    prompts: Vec<usize>,
    /// Timed decode steps per case (after the warm-up).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Timed prefill runs per prompt (after one warm-up).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Most tokens in one prefill step (longer prompts take several).
    #[arg(long, default_value_t = 32768)]
    prefill_step: usize,
    /// KV slots per block.
    #[arg(long, default_value_t = 64)]
    block_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Which cases: decode, prefill or both.
    #[arg(long, value_delimiter = ',', default_value = "decode,prefill")]
    cases: Vec<String>,
    /// Append one JSON object per case to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or("bad arguments").to_string();
            eprintln!("llama4-bench: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llama4-bench: error: {e}");
            ExitCode::from(1)
        }
    }
}

fn gb(b: usize) -> f64 {
    b as f64 / 1e9
}

fn run(args: &Args) -> Result<(), Error> {
    for c in &args.cases {
        if c != "decode" && c != "prefill" {
            return Err(Error::Input(format!("--cases: `{c}` is neither decode nor prefill")));
        }
    }
    if args.steps == 0 || args.block_size == 0 {
        return Err(Error::Input("--steps and --block-size must be positive".into()));
    }
    let mut json = match &args.json {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| Error::Input(format!("--json {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let preset = Preset::parse(&args.synthetic)?;
    let config = preset.config(args.layers)?;
    let recipe = if args.fp8_dense { "fp8-dense" } else { "meta" };
    let gpu = Gpu::new(GpuOptions { device: 0, fp8_dense: args.fp8_dense })?;
    gpu.set_overlap_shared_expert(!args.no_overlap);
    gpu.set_fused_routing(args.fused_routing);
    gpu.set_shared_gemv_ctas(args.shared_gemv_ctas);
    gpu.set_norm_fp8_copy(args.norm_fp8);
    let device = gpu.describe();
    println!("device: {device}");
    let pdl = llama4_kernels::device::pdl_enabled();
    println!(
        "launches: programmatic dependent launch {}",
        if pdl { "on (L4K_PDL=0 turns it off)" } else { "off (L4K_PDL=0)" }
    );
    let copy_gbps = gpu.copy_ceiling_gbps()?;
    println!("copy ceiling: {copy_gbps:.0} GB/s (read + write, measured now)");

    let t0 = Instant::now();
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("weights {bar:40} {pos}/{len} eta {eta}").expect("static template"),
    );
    let model = Model::synthetic(config, gpu, args.seed, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let wb = WeightBytes::of(&model);
    let (free, total) = model.backend.mem_info()?;
    println!(
        "{} ({recipe}): {} layers, weights {:.2} GB (routed experts {:.2}, other {:.2}, embedding {:.2}) built in \
         {:.1} s; {:.1} of {:.1} GB free",
        args.synthetic,
        model.config.num_hidden_layers,
        gb(wb.total()),
        gb(wb.experts),
        gb(wb.dense),
        gb(wb.embedding),
        t0.elapsed().as_secs_f64(),
        gb(free),
        gb(total)
    );
    let base = format!(
        r#""ours":"llama4-kernels","model":"{}","layers":{},"recipe":"{recipe}","overlap":{},"fused_routing":{},"shared_gemv_ctas":{},"norm_fp8":{},"pdl":{pdl},"device":{:?},"copy_gbps":{copy_gbps:.1},"weight_bytes":{}"#,
        args.synthetic,
        model.config.num_hidden_layers,
        !args.no_overlap,
        args.fused_routing,
        args.shared_gemv_ctas.unwrap_or(0),
        args.fp8_dense && args.norm_fp8,
        device,
        wb.total()
    );
    let mut emit = |line: String| -> Result<(), Error> {
        if let Some(f) = json.as_mut() {
            writeln!(f, "{{{base},{line}}}").map_err(|e| Error::Input(format!("--json: {e}")))?;
        }
        Ok(())
    };
    if args.cases.iter().any(|c| c == "decode") {
        println!("\ndecode (greedy steps through the engine, graph replays)");
        println!(
            "{:>5} {:>7} | {:>9} {:>9} {:>9} | {:>8} {:>9} {:>6} | {:>7} {:>7}",
            "batch", "context", "ms/step", "min", "max", "tok/s", "limit ms", "frac", "KV GB", "ws GB"
        );
        for &ctx in &args.contexts {
            for &b in &args.batches {
                let out = perf::decode(&model, &wb, copy_gbps, b, ctx, args.steps, args.block_size)?;
                report(&out, &format!("{b:>5} {ctx:>7}"));
                emit(outcome_json("decode", b, ctx, &out))?;
            }
        }
    }
    if args.cases.iter().any(|c| c == "prefill") {
        println!("\nprefill (time to first token, one sequence)");
        println!(
            "{:>5} {:>7} | {:>9} {:>9} {:>9} | {:>8} | {:>7} {:>7}",
            "batch", "prompt", "ms", "min", "max", "tok/s", "KV GB", "ws GB"
        );
        for &p in &args.prompts {
            let out = perf::prefill(&model, p, args.prefill_step, args.runs, args.block_size)?;
            report(&out, &format!("{:>5} {p:>7}", 1));
            emit(outcome_json("prefill", 1, p, &out))?;
        }
    }
    Ok(())
}

fn report(out: &Outcome, case: &str) {
    match out {
        Outcome::Ran { time, tokens_per_s, kv_bytes, workspace_bytes, limit_ms, profile, timeline, .. } => {
            let frac = if *limit_ms > 0.0 { format!("{:>5.0}%", 100.0 * limit_ms / time.median_ms) } else { "".into() };
            let limit = if *limit_ms > 0.0 { format!("{limit_ms:>9.3}") } else { format!("{:>9}", "") };
            println!(
                "{case} | {:>9.3} {:>9.3} {:>9.3} | {tokens_per_s:>8.1} {limit} {frac:>6} | {:>7.2} {:>7.2}",
                time.median_ms,
                time.min_ms,
                time.max_ms,
                gb(*kv_bytes),
                gb(*workspace_bytes)
            );
            println!("      {}", breakdown(profile));
            if let Some((layer, ops)) = timeline {
                println!("      {}", timeline_line(*layer, ops));
            }
        }
        Outcome::NoFit { kv_bytes, free_bytes } => {
            println!(
                "{case} | does not fit: its KV cache needs {:.1} GB, {:.1} GB free",
                gb(*kv_bytes),
                gb(*free_bytes)
            )
        }
    }
}

/// "op 31% (n), ..." by share of the profiled step, largest first.
fn breakdown(p: &[OpTime]) -> String {
    let total: f64 = p.iter().map(|o| o.ms).sum();
    let mut v: Vec<&OpTime> = p.iter().collect();
    v.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    let parts: Vec<String> = v.iter().map(|o| format!("{} {:.1}%", o.label, 100.0 * o.ms / total.max(1e-12))).collect();
    format!("eager step {total:.3} ms: {}", parts.join(", "))
}

/// "layer L in a replayed step X us: op a us, ..." in the step's order.
fn timeline_line(layer: usize, ops: &[OpTime]) -> String {
    let total: f64 = ops.iter().map(|o| o.ms).sum();
    let parts: Vec<String> = ops.iter().map(|o| format!("{} {:.1}", o.label, 1e3 * o.ms)).collect();
    format!("layer {layer} in a replayed step {:.1} us: {}", 1e3 * total, parts.join(", "))
}

fn outcome_json(case: &str, batch: usize, tokens: usize, out: &Outcome) -> String {
    let key = if case == "decode" { "context" } else { "prompt" };
    match out {
        Outcome::Ran {
            time,
            tokens_per_s,
            kv_bytes,
            workspace_bytes,
            read_bytes,
            limit_ms,
            flops,
            profile,
            timeline,
        } => {
            let prof: Vec<String> = profile
                .iter()
                .map(|o| format!(r#"{{"op":"{}","ms":{:.4},"calls":{}}}"#, o.label, o.ms, o.calls))
                .collect();
            let tl = match timeline {
                Some((layer, ops)) => {
                    let ops: Vec<String> =
                        ops.iter().map(|o| format!(r#"{{"op":"{}","us":{:.2}}}"#, o.label, 1e3 * o.ms)).collect();
                    format!(r#","timeline":{{"layer":{layer},"ops":[{}]}}"#, ops.join(","))
                }
                None => String::new(),
            };
            format!(
                r#""case":"{case}","batch":{batch},"{key}":{tokens},"ms":{:.4},"min_ms":{:.4},"max_ms":{:.4},"samples":{},"tokens_per_s":{tokens_per_s:.2},"kv_bytes":{kv_bytes},"workspace_bytes":{workspace_bytes},"read_bytes":{read_bytes},"limit_ms":{limit_ms:.4},"flops":{},"fp8_flops":{},"profile":[{}]{tl}"#,
                time.median_ms,
                time.min_ms,
                time.max_ms,
                time.samples,
                flops.total,
                flops.fp8,
                prof.join(",")
            )
        }
        Outcome::NoFit { kv_bytes, free_bytes } => {
            format!(
                r#""case":"{case}","batch":{batch},"{key}":{tokens},"skipped":"does not fit","kv_bytes":{kv_bytes},"free_bytes":{free_bytes}"#
            )
        }
    }
}
