//! Full-size speed on the GPU, measured the way a user would see it: decode steps driven through
//! [`Engine::step`] (graph replays, one host round trip per generated token for the greedy ids), prefill as
//! time to first token, each beside its limit. Used by `llama4-bench` and bench/model.rs.
//!
//! Limits. A decode step must at least read every weight it touches once and each sequence's visible KV
//! (global layers: all positions; chunked layers: the current chunk's): those bytes over the device's copy
//! bandwidth measured in the same process ([`Gpu::copy_ceiling_gbps`]) are its weight-read limit. Routed experts
//! count as touched with the expectation under uniform routing, `E (1 - (1 - 1/E)^(B k))` per MoE layer (one
//! at batch 1, nearly all at 32 and more).
//!
//! Work. [`step_flops`] counts a step's matrix FLOPs and the part of them the recipe runs in FP8, so a case can
//! also be held to the tensor-core ceilings (bench/report.py draws every case on one roofline).

use crate::backend::Limits;
use crate::config::{Ffn, TextConfig};
use crate::engine::{Engine, Logits, SeqId, SeqStep};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuWeight, OpTime};
use crate::model::Model;
use crate::weights::Role;
use llama4_contract::Mask;
use std::time::Instant;

/// Bytes of device memory left free beside a case's KV cache (cuBLASLt, CUDA graphs, fragmentation).
const HEADROOM: usize = 3 << 30;

/// Timings of one case, milliseconds per step.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub samples: usize,
}

impl Timing {
    fn of(mut ms: Vec<f64>) -> Timing {
        ms.sort_by(f64::total_cmp);
        Timing { median_ms: ms[ms.len() / 2], min_ms: ms[0], max_ms: ms[ms.len() - 1], samples: ms.len() }
    }
}

/// What one decode or prefill case measured.
#[derive(Clone, Debug)]
pub enum Outcome {
    Ran {
        time: Timing,
        /// Generated (decode) or prompt (prefill) tokens per second at the median.
        tokens_per_s: f64,
        /// KV cache the engine planned, bytes.
        kv_bytes: usize,
        /// Activations, scratch and workspaces the engine planned beside the KV cache, bytes.
        workspace_bytes: usize,
        /// Decode: weight and KV bytes a step must read; its limit at the copy ceiling; the fraction reached.
        read_bytes: usize,
        limit_ms: f64,
        /// Matrix work of the case's step (decode) or of the whole prefill.
        flops: Flops,
        /// One eagerly run step, by op family.
        profile: Vec<OpTime>,
        /// Decode: one layer (its index) inside a replayed step, op by op ([`Gpu::start_timeline`]).
        timeline: Option<(usize, Vec<OpTime>)>,
    },
    /// The case's KV cache does not fit beside the weights.
    NoFit { kv_bytes: usize, free_bytes: usize },
}

/// Weight bytes a decode step of `batch` sequences reads (see the module doc).
pub fn decode_weight_bytes(model: &Model<Gpu>, weight_bytes: &WeightBytes, batch: usize) -> usize {
    let c = &model.config;
    let e = c.num_local_experts.max(1) as f64;
    let touched = e * (1.0 - (1.0 - 1.0 / e).powi((batch * c.num_experts_per_tok) as i32));
    let moe_layers = c.ffn.iter().filter(|f| **f == Ffn::Moe).count().max(1) as f64;
    let per_expert = weight_bytes.experts as f64 / moe_layers / e;
    // The embedding table is gathered by row: a decode step reads `batch` rows of it.
    let embed_rows = batch * c.hidden_size * 2;
    weight_bytes.dense + embed_rows + (per_expert * touched * moe_layers) as usize
}

/// Bytes of KV a decode step reads for `batch` sequences at `context` positions (the new token's included).
pub fn decode_kv_bytes(model: &Model<Gpu>, batch: usize, context: usize) -> usize {
    let c = &model.config;
    let row = 2 * 2 * c.num_key_value_heads * c.head_dim; // K and V, bf16
    let p = context; // the new token's position; keys 0..=p
    let keys: usize = model
        .layer_specs()
        .iter()
        .map(|s| match s.mask {
            Mask::Causal => p + 1,
            Mask::Chunked { chunk } => p % chunk + 1,
        })
        .sum();
    batch * keys * row
}

/// A model's weight bytes on the device: routed experts, and the rest (embedding table excluded: it is read by
/// row).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WeightBytes {
    pub experts: usize,
    pub dense: usize,
    pub embedding: usize,
}

impl WeightBytes {
    /// What `model` holds on the device, by role.
    pub fn of(model: &Model<Gpu>) -> WeightBytes {
        let mut wb = WeightBytes::default();
        model.for_each_weight(&mut |role, w: &GpuWeight| match role {
            Role::ExpertsGateUp | Role::ExpertsDown => wb.experts += w.bytes(),
            Role::Embedding => wb.embedding += w.bytes(),
            _ => wb.dense += w.bytes(),
        });
        wb
    }

    pub fn total(&self) -> usize {
        self.experts + self.dense + self.embedding
    }
}

/// Matrix FLOPs of a step (a multiply-add counts 2) and the part of them run in FP8; the rest is bf16.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flops {
    pub total: usize,
    pub fp8: usize,
}

/// The matrix work of one forward step over query tokens at `positions` (any mix of sequences: a token's work
/// depends only on its position) with `logit_rows` rows of lm_head: every linear (qkv, o, router, the shared
/// expert or dense MLP, the `num_experts_per_tok` routed experts a token goes to), lm_head, and attention's
/// QK^T and PV at 4 * heads * head_dim per visible (query, key) pair, the FlashAttention convention
/// bench/attention_prefill.rs uses (chunked layers see their chunk's keys only). FP8: the routed experts, and
/// with `fp8_dense` the attention projections, shared expert and dense MLP ([`crate::gpu::GpuOptions`]).
pub fn step_flops(c: &TextConfig, fp8_dense: bool, positions: &[usize], logit_rows: usize) -> Flops {
    let (h, d, t) = (c.hidden_size, c.head_dim, positions.len());
    let (nq, nkv) = (c.num_attention_heads, c.num_key_value_heads);
    let mut dense = 0; // per token: the linears fp8_dense quantizes
    let mut experts = 0;
    let mut bf16 = 2 * h * c.vocab_size * logit_rows;
    for (i, ffn) in c.ffn.iter().enumerate() {
        dense += 2 * h * (nq + 2 * nkv) * d + 2 * nq * d * h;
        match ffn {
            Ffn::Moe => {
                dense += 6 * h * c.intermediate_size;
                experts += c.num_experts_per_tok * 6 * h * c.intermediate_size;
                bf16 += 2 * h * c.num_local_experts * t;
            }
            Ffn::Dense => dense += 6 * h * c.intermediate_size_mlp,
        }
        let chunk = match c.masks[i] {
            Mask::Chunked { chunk } => chunk,
            Mask::Causal => usize::MAX,
        };
        let keys: usize = positions.iter().map(|&p| p % chunk + 1).sum();
        bf16 += 4 * nq * d * keys;
    }
    let (dense, experts) = (dense * t, experts * t);
    let fp8 = experts + if fp8_dense { dense } else { 0 };
    Flops { total: bf16 + dense + experts, fp8 }
}

fn limits(batch: usize, tokens: usize, context: usize, block_size: usize) -> Limits {
    Limits {
        max_tokens: tokens,
        max_seqs: batch,
        max_context: context,
        max_logit_rows: batch,
        block_size,
        ..Limits::default()
    }
}

/// The engine for a case, or how much KV it would need when it does not fit.
fn engine<'m>(model: &'m Model<Gpu>, l: Limits) -> Result<std::result::Result<Engine<'m, Gpu>, (usize, usize)>> {
    let kv_bytes = kv_planned(model, l);
    let (free, _) = model.backend.mem_info()?;
    if kv_bytes + HEADROOM > free {
        return Ok(Err((kv_bytes, free)));
    }
    Ok(Ok(Engine::new(model, l)?))
}

/// Greedy decode steps of `batch` sequences at about `context` positions, for timing: the sequences are made
/// with [`Engine::skip_prefill`] and made again at `context` when they reach the engine's planned length, so a
/// case can run any number of steps.
pub struct DecodeCase<'m> {
    eng: Engine<'m, Gpu>,
    seqs: Vec<SeqId>,
    next: Vec<u32>,
    context: usize,
    room: usize,
}

impl<'m> DecodeCase<'m> {
    /// The case, or `Err((kv_bytes, free_bytes))` when its KV cache does not fit; `room` steps run before the
    /// sequences are made again.
    pub fn new(
        model: &'m Model<Gpu>,
        batch: usize,
        context: usize,
        room: usize,
        block_size: usize,
    ) -> Result<std::result::Result<Self, (usize, usize)>> {
        let l = limits(batch, batch, context + room.max(1) + 1, block_size);
        let eng = match engine(model, l)? {
            Ok(e) => e,
            Err(no_fit) => return Ok(Err(no_fit)),
        };
        let vocab = model.config.vocab_size as u32;
        let next = (0..batch as u32).map(|b| (b * 7919 + 11) % vocab).collect();
        let mut case = DecodeCase { eng, seqs: Vec::new(), next, context, room: room.max(1) };
        case.reset()?;
        Ok(Ok(case))
    }

    fn reset(&mut self) -> Result<()> {
        for s in self.seqs.drain(..) {
            self.eng.free(s);
        }
        for _ in 0..self.next.len() {
            let s = self.eng.add_sequence();
            self.eng.skip_prefill(s, self.context)?;
            self.seqs.push(s);
        }
        Ok(())
    }

    /// Replays decode steps from recorded graphs (the default) or launches them eagerly.
    pub fn use_graphs(&mut self, on: bool) {
        self.eng.use_graphs = on;
    }

    /// One greedy step of every sequence; returns its wall-clock milliseconds (the step's one host round trip
    /// included).
    pub fn step(&mut self) -> Result<f64> {
        if self.eng.seq_len(self.seqs[0]) >= Some(self.context + self.room) {
            self.reset()?;
        }
        let batch: Vec<SeqStep> = self
            .seqs
            .iter()
            .zip(&self.next)
            .map(|(&seq, t)| SeqStep { seq, tokens: std::slice::from_ref(t), logits: Logits::Last })
            .collect();
        let t0 = Instant::now();
        let out = self.eng.step(&batch, false)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        for (n, o) in self.next.iter_mut().zip(out) {
            *n = o.tokens[0];
        }
        Ok(ms)
    }
}

/// Decode: `batch` sequences holding `context` positions each ([`Engine::skip_prefill`]), `steps` timed greedy
/// steps after a warm-up (the first captures the batch's graph).
pub fn decode(
    model: &Model<Gpu>,
    weights: &WeightBytes,
    copy_gbps: f64,
    batch: usize,
    context: usize,
    steps: usize,
    block_size: usize,
) -> Result<Outcome> {
    let (warmup, timeline_steps) = (3, 3);
    // Room for every step: the eager warm-up and profiled ones, the graph warm-up, the timed ones, the timeline's.
    let mut case = match DecodeCase::new(model, batch, context, 2 + warmup + steps + timeline_steps, block_size)? {
        Ok(c) => c,
        Err((kv_bytes, free_bytes)) => return Ok(Outcome::NoFit { kv_bytes, free_bytes }),
    };
    // The profiled step runs eagerly, before the graph exists (same positions as a replayed one, two later),
    // after one eager step that pays the first-launch costs (module loading, cuBLASLt planning of the batch's
    // shapes), which would otherwise land on whichever op first launches a new kernel.
    case.use_graphs(false);
    case.step()?;
    model.backend.start_profile();
    let profiled = case.step();
    let profile = model.backend.finish_profile()?;
    profiled?;
    case.use_graphs(true);
    for _ in 0..warmup {
        case.step()?;
    }
    let ms = (0..steps).map(|_| case.step()).collect::<Result<Vec<_>>>()?;
    // Then the middle layer inside a replayed step (its own graph, with event nodes; dropped after).
    let layer = model.config.num_hidden_layers / 2;
    let mut timeline = None;
    if layer + 1 < model.config.num_hidden_layers {
        model.backend.start_timeline(layer);
        case.eng.drop_graphs();
        let ran_steps = (0..timeline_steps).try_for_each(|_| case.step().map(|_| ()));
        let got = model.backend.finish_timeline();
        case.eng.drop_graphs();
        ran_steps?;
        timeline = Some((layer, got?));
    }
    let read_bytes = decode_weight_bytes(model, weights, batch) + decode_kv_bytes(model, batch, context);
    let limit_ms = read_bytes as f64 / (copy_gbps * 1e9) * 1e3;
    let flops = decode_flops(model, batch, context);
    let mut out = ran(model, &case.eng, ms, batch, read_bytes, limit_ms, flops, profile);
    if let Outcome::Ran { timeline: t, .. } = &mut out {
        *t = timeline;
    }
    Ok(out)
}

/// [`step_flops`] of a decode step of `batch` sequences at `context` positions (the new token's at `context`).
pub fn decode_flops(model: &Model<Gpu>, batch: usize, context: usize) -> Flops {
    step_flops(&model.config, model.backend.options().fp8_dense, &vec![context; batch], batch)
}

/// [`step_flops`] of prefilling one `prompt`-token sequence to its first token (one logit row).
pub fn prefill_flops(model: &Model<Gpu>, prompt: usize) -> Flops {
    step_flops(&model.config, model.backend.options().fp8_dense, &(0..prompt).collect::<Vec<_>>(), 1)
}

/// The outcome of a case that ran: `tokens` per step at the median of `ms`, the engine's memory.
#[allow(clippy::too_many_arguments)]
fn ran(
    model: &Model<Gpu>,
    eng: &Engine<Gpu>,
    ms: Vec<f64>,
    tokens: usize,
    read_bytes: usize,
    limit_ms: f64,
    flops: Flops,
    profile: Vec<OpTime>,
) -> Outcome {
    let time = Timing::of(ms);
    let kv_bytes = kv_planned(model, eng.limits());
    Outcome::Ran {
        tokens_per_s: tokens as f64 / time.median_ms * 1e3,
        time,
        kv_bytes,
        workspace_bytes: eng.backend_state().bytes - kv_bytes,
        read_bytes,
        limit_ms,
        flops,
        profile,
        timeline: None,
    }
}

/// Bytes of the KV cache an engine of limits `l` plans: K and V, bf16, every layer's pool.
fn kv_planned(model: &Model<Gpu>, l: Limits) -> usize {
    let c = &model.config;
    Engine::plan(model, l).kv_slots() * 2 * 2 * c.num_key_value_heads * c.head_dim
}

/// Time to first token of one `prompt`-token sequence, prefilled in steps of at most `step_tokens` tokens.
pub struct PrefillCase<'m> {
    eng: Engine<'m, Gpu>,
    ids: Vec<u32>,
    piece: usize,
}

impl<'m> PrefillCase<'m> {
    /// The case, or `Err((kv_bytes, free_bytes))` when its KV cache does not fit.
    pub fn new(
        model: &'m Model<Gpu>,
        prompt: usize,
        step_tokens: usize,
        block_size: usize,
    ) -> Result<std::result::Result<Self, (usize, usize)>> {
        if prompt == 0 || step_tokens == 0 {
            return Err(Error::Input("a prefill needs a prompt and a step size".into()));
        }
        let piece = step_tokens.min(prompt);
        let l = Limits { max_logit_rows: 1, ..limits(1, piece, prompt + 1, block_size) };
        let eng = match engine(model, l)? {
            Ok(e) => e,
            Err(no_fit) => return Ok(Err(no_fit)),
        };
        let vocab = model.config.vocab_size as u32;
        let ids = (0..prompt as u32).map(|i| (i.wrapping_mul(2654435761) >> 7) % vocab).collect();
        Ok(Ok(PrefillCase { eng, ids, piece }))
    }

    /// Prefills a fresh sequence up to its first token; returns the wall-clock milliseconds.
    pub fn run(&mut self) -> Result<f64> {
        let seq = self.eng.add_sequence();
        let t0 = Instant::now();
        let pieces: Vec<&[u32]> = self.ids.chunks(self.piece).collect();
        for (i, p) in pieces.iter().enumerate() {
            let logits = if i + 1 == pieces.len() { Logits::Last } else { Logits::None };
            self.eng.step(&[SeqStep { seq, tokens: p, logits }], false)?;
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        self.eng.free(seq);
        Ok(ms)
    }
}

/// Prefill of one `prompt`-token sequence in steps of at most `step_tokens` tokens: time to first token,
/// `runs` timed runs after one warm-up (each a fresh sequence), then one profiled run.
pub fn prefill(
    model: &Model<Gpu>,
    prompt: usize,
    step_tokens: usize,
    runs: usize,
    block_size: usize,
) -> Result<Outcome> {
    let mut case = match PrefillCase::new(model, prompt, step_tokens, block_size)? {
        Ok(c) => c,
        Err((kv_bytes, free_bytes)) => return Ok(Outcome::NoFit { kv_bytes, free_bytes }),
    };
    case.run()?;
    let ms = (0..runs.max(1)).map(|_| case.run()).collect::<Result<Vec<_>>>()?;
    model.backend.start_profile();
    let profiled = case.run();
    let profile = model.backend.finish_profile()?;
    profiled?;
    Ok(ran(model, &case.eng, ms, prompt, 0, 0.0, prefill_flops(model, prompt), profile))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mask;
    use crate::synthetic::{self, Preset};

    /// Elements of the weights of `c` a token multiplies (linears, router, all experts, lm_head), from the shapes
    /// the synthetic model draws: the checkpoint's own layout, counted independently of [`step_flops`].
    fn elements(c: &TextConfig) -> (usize, usize, usize, usize) {
        let (mut linear, mut router, mut experts, mut head) = (0, 0, 0, 0);
        synthetic::weights(c, 0, &mut |role, _, shape, _| {
            let n: usize = shape.iter().product();
            match role {
                Role::Linear => linear += n,
                Role::Router => router += n,
                Role::ExpertsGateUp | Role::ExpertsDown => experts += n,
                Role::LmHead => head += n,
                Role::Embedding | Role::Norm => {}
            }
            Ok(())
        })
        .unwrap();
        (linear, router, experts, head)
    }

    #[test]
    fn a_tokens_linear_work_is_twice_the_weights_it_multiplies() {
        for preset in [Preset::Scout, Preset::Maverick] {
            let c = preset.config(Some(4)).unwrap();
            let (linear, router, experts, head) = elements(&c);
            let routed = experts / c.num_local_experts * c.num_experts_per_tok;
            // Position 0 sees one key in every layer.
            let attention = 4 * c.num_attention_heads * c.head_dim * c.num_hidden_layers;
            for fp8_dense in [false, true] {
                let f = step_flops(&c, fp8_dense, &[0], 1);
                assert_eq!(f.total, 2 * (linear + router + routed + head) + attention, "{preset:?}");
                assert_eq!(f.fp8, 2 * (routed + if fp8_dense { linear } else { 0 }), "{preset:?} {fp8_dense}");
                // Tokens add their linear work; lm_head counts the logit rows asked for.
                let two = step_flops(&c, fp8_dense, &[0, 0], 2);
                assert_eq!(two.total, 2 * f.total);
                assert_eq!(step_flops(&c, fp8_dense, &[0, 0], 1).total, two.total - 2 * head);
            }
        }
    }

    #[test]
    fn attention_work_counts_the_keys_each_layer_sees() {
        let c = Preset::Scout.config(Some(4)).unwrap();
        let chunked = Mask::Chunked { chunk: 8192 };
        assert_eq!(c.masks, vec![chunked, chunked, chunked, Mask::Causal]);
        let per_pair = 4 * c.num_attention_heads * c.head_dim;
        let at = |p: usize| step_flops(&c, false, &[p], 1).total - step_flops(&c, false, &[0], 1).total;
        // Past the first 8192-position chunk the chunked layers see only their chunk; the global layer all.
        assert_eq!(at(10000), per_pair * (3 * (10000 % 8192) + 10000));
        assert_eq!(at(8191), per_pair * 4 * 8191);
        assert_eq!(at(8192), per_pair * 8192);
    }
}
