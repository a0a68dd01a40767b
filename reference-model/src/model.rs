//! The Llama 4 text decoder, written once over [`Backend`]:
//! ```text
//! x = embed(ids)
//! per layer i:  x += o_proj(attention(prepare_qkv(qkv_proj(rmsnorm(x)))))   (through the KV cache)
//!               x += moe(rmsnorm(x)) or mlp(rmsnorm(x))
//! logits = lm_head(rmsnorm(x))
//! ```
//! One `forward` serves prefill (many tokens) and decode (one token): the cache remembers positions.

use crate::backend::{AttnMask, Backend, Heads, MoeRef};
use crate::checkpoint::Checkpoint;
use crate::config::{Mask, TextConfig};
use crate::error::{Error, Result};
use crate::kv_cache::{evictable, KvCache};
use crate::weights::{FfnWeights, HostWeights, Weights};
use llama4_reference::rope::LayerKind;
use ndarray::{Array2, ArrayView1};
use std::path::Path;
use std::time::{Duration, Instant};

/// Which rows of logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// One row per input token.
    All,
    /// Only the last token's row (all that greedy decoding needs).
    Last,
}

pub struct Model<B: Backend> {
    pub backend: B,
    pub config: TextConfig,
    weights: Weights<B::Weight>,
    kinds: Vec<LayerKind>,
    masks: Vec<AttnMask>,
    heads: Heads,
}

/// The result of [`Model::generate`].
pub struct Generation {
    /// The new tokens only.
    pub tokens: Vec<u32>,
    /// Logits of every token run through the model (prompt, then each fed-back token), when requested.
    pub logits: Option<Array2<f32>>,
    pub prefill: Duration,
    /// Time of each decode step (one per new token after the first).
    pub steps: Vec<Duration>,
}

impl<B: Backend> Model<B> {
    /// Opens a checkpoint directory and uploads its weights to `backend`.
    pub fn load(dir: &Path, backend: B) -> Result<Self> {
        let ck = Checkpoint::open(dir)?;
        let host = HostWeights::load(&ck)?;
        Self::new(ck.config, host, backend)
    }

    pub fn new(config: TextConfig, host: HostWeights, backend: B) -> Result<Self> {
        let weights = host.upload(|w| backend.upload(w))?;
        let kinds = (0..config.num_hidden_layers).map(|i| config.layer_kind(i)).collect();
        let masks = config
            .masks
            .iter()
            .map(|m| match (m, config.attention_chunk_size) {
                (Mask::Chunked, Some(c)) => Ok(AttnMask::Chunked(c)),
                (Mask::Full, _) => Ok(AttnMask::Causal),
                (Mask::Chunked, None) => Err(Error::Config("a chunked layer without attention_chunk_size".into())),
            })
            .collect::<Result<_>>()?;
        let heads = Heads {
            n_heads: config.num_attention_heads,
            n_kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
        };
        Ok(Model { backend, config, weights, kinds, masks, heads })
    }

    pub fn new_cache(&self) -> Result<KvCache<B>> {
        let layers = (0..self.config.num_hidden_layers).map(|_| self.backend.kv_new(self.heads));
        Ok(KvCache::new(layers.collect::<Result<_>>()?))
    }

    /// Runs `ids` at the positions following whatever `cache` already holds; returns logits `[rows, V]`.
    pub fn forward(&self, cache: &mut KvCache<B>, ids: &[u32], which: Logits) -> Result<Array2<f32>> {
        cache.check_usable()?;
        if ids.is_empty() {
            return Err(Error::Input("no tokens to run".into()));
        }
        let vocab = self.config.vocab_size;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Input(format!("token id {bad} is out of range for vocab_size {vocab}")));
        }
        let start = cache.next_pos;
        let end = start.checked_add(ids.len()).filter(|&e| e <= u32::MAX as usize);
        let end = end.ok_or_else(|| Error::Input("positions past 2^32 are not supported".into()))?;
        // From here on a failure leaves layers disagreeing about what they hold.
        cache.poisoned = true;
        let logits = self.run(cache, ids, start, end, which)?;
        cache.next_pos = end;
        cache.poisoned = false;
        Ok(logits)
    }

    fn run(&self, cache: &mut KvCache<B>, ids: &[u32], start: usize, end: usize, which: Logits) -> Result<Array2<f32>> {
        let b = &self.backend;
        let eps = self.config.rms_norm_eps;
        let pos32: Vec<u32> = (start as u32..end as u32).collect();
        let q_pos: Vec<usize> = (start..end).collect();
        let mut x = b.embed(&self.weights.embed, ids)?;
        for (i, lw) in self.weights.layers.iter().enumerate() {
            let y = b.rmsnorm(&x, &lw.input_norm, eps)?;
            let qkv = b.linear(&y, &lw.qkv)?;
            let (q, k, v) = b.prepare_qkv(&qkv, &pos32, self.heads, &self.kinds[i])?;
            let lc = &mut cache.layers[i];
            b.kv_append(&mut lc.kv, &k, &v)?;
            lc.pos.extend(start..end);
            let k_pos: Vec<usize> = lc.pos.iter().copied().collect();
            let a = b.attention(&q, &lc.kv, &q_pos, &k_pos, self.heads, self.masks[i])?;
            let drop = evictable(&lc.pos, self.masks[i], end);
            b.kv_drop_front(&mut lc.kv, drop)?;
            lc.pos.drain(..drop);
            b.add_assign(&mut x, &b.linear(&a, &lw.o)?)?;

            let y = b.rmsnorm(&x, &lw.post_norm, eps)?;
            let f = match &lw.ffn {
                FfnWeights::Dense { gate, up, down } => b.mlp(&y, gate, up, down)?,
                FfnWeights::Moe { router, gate_up, down, shared_gate, shared_up, shared_down } => {
                    let top_k = self.config.num_experts_per_tok;
                    b.moe(&y, MoeRef { router, gate_up, down, shared_gate, shared_up, shared_down, top_k })?
                }
            };
            b.add_assign(&mut x, &f)?;
        }
        if which == Logits::Last {
            x = b.last_row(&x)?;
        }
        let h = b.rmsnorm(&x, &self.weights.norm, eps)?;
        b.to_host(&b.linear(&h, &self.weights.lm_head)?)
    }

    /// Greedy decoding: prefill `prompt`, then `max_new` tokens, each the argmax of the previous logits.
    /// With `keep_logits`, returns the logits of every position run: prompt + max(max_new, 1) - 1 rows
    /// (the last new token is chosen, not run).
    pub fn generate(&self, prompt: &[u32], max_new: usize, keep_logits: bool) -> Result<Generation> {
        self.generate_with(prompt, max_new, keep_logits, |_, _, _| {})
    }

    /// [`Model::generate`], calling `on_token(index, token, time)` as each new token is chosen; the time is
    /// the forward pass that produced its logits (the prefill for the first).
    pub fn generate_with(
        &self,
        prompt: &[u32],
        max_new: usize,
        keep_logits: bool,
        mut on_token: impl FnMut(usize, u32, Duration),
    ) -> Result<Generation> {
        let mut cache = self.new_cache()?;
        let which = if keep_logits { Logits::All } else { Logits::Last };
        let t0 = Instant::now();
        let mut last = self.forward(&mut cache, prompt, which)?;
        let prefill = t0.elapsed();
        let mut kept = vec![];
        let mut tokens = Vec::with_capacity(max_new);
        let mut steps = Vec::new();
        let mut took = prefill;
        while tokens.len() < max_new {
            let tok = argmax(last.row(last.nrows() - 1))?;
            on_token(tokens.len(), tok, took);
            tokens.push(tok);
            if keep_logits {
                kept.push(last.clone());
            }
            if tokens.len() == max_new {
                break;
            }
            let t = Instant::now();
            last = self.forward(&mut cache, &[tok], Logits::All)?;
            took = t.elapsed();
            steps.push(took);
        }
        if keep_logits && max_new == 0 {
            kept.push(last);
        }
        let logits = match keep_logits {
            true => {
                let views: Vec<_> = kept.iter().map(|r| r.view()).collect();
                Some(ndarray::concatenate(ndarray::Axis(0), &views).map_err(|e| Error::Backend(e.to_string()))?)
            }
            false => None,
        };
        Ok(Generation { tokens, logits, prefill, steps })
    }
}

/// Index of the largest logit, the lowest index on ties (as `torch.argmax`); NaN is an error, not a token.
pub fn argmax(row: ArrayView1<f32>) -> Result<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in row.iter().enumerate() {
        if v.is_nan() {
            return Err(Error::Backend(format!("logit {i} is NaN")));
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32).ok_or_else(|| Error::Backend("empty logits row".into()))
}
