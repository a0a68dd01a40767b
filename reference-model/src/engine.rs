//! What an inference engine drives: sequences, steps and greedy generation over one [`Model`], once for
//! every backend.
//!
//! An [`Engine`] owns the backend state planned from its [`Limits`], the block pools and each sequence's
//! block tables. [`Engine::step`] takes several sequences, each with its new tokens (a fresh prefill, a
//! continued prefill, or a decode of one or a few tokens), builds the step's metadata on the host once,
//! uploads it once, runs the decoder, and returns per sequence the greedy token of each logit row it asked
//! for (argmax on the device) and, only when asked, the logits themselves. A step whose sequences all decode
//! one token runs as a recorded graph per batch-size bucket where the backend records graphs.

use crate::backend::{Backend, KvKind, Limits, Plan, StepMeta, StepShape};
use crate::config::MAX_POSITION;
use crate::error::{Error, Result};
use crate::kv_cache::{first_visible, pool_blocks, BlockPool, BlockTable};
use crate::model::Model;
use ndarray::{s, Array2, ArrayView1};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// A sequence of an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqId(u64);

/// Which rows of a sequence's new tokens get logits (and greedy tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (a prefill piece that is not the prompt's last).
    None,
    /// Only the last token's row (all that greedy decoding needs).
    Last,
    /// One row per new token.
    All,
}

/// One sequence's part of a step.
#[derive(Clone, Copy, Debug)]
pub struct SeqStep<'a> {
    pub seq: SeqId,
    pub tokens: &'a [u32],
    pub logits: Logits,
}

/// What a step gives one sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqOut {
    /// The argmax of each logit row, in row order (the last one is the greedy next token).
    pub tokens: Vec<u32>,
    /// `[rows, V]`, when the step was asked to return logits.
    pub logits: Option<Array2<f32>>,
}

#[derive(Clone, Debug, Default)]
struct SeqState {
    len: usize,
    tables: [BlockTable; 2],
}

pub struct Engine<'m, B: Backend> {
    model: &'m Model<B>,
    limits: Limits,
    state: B::State,
    pools: [BlockPool; 2],
    seqs: BTreeMap<SeqId, SeqState>,
    next_id: u64,
    graphs: HashMap<StepShape, B::Graph>,
    /// Replay decode steps from recorded graphs where the backend records them (on by default).
    pub use_graphs: bool,
    meta: StepMeta,
    max_blocks: usize,
    /// The sequence [`Engine::forward`] runs (created on first use).
    default_seq: Option<SeqId>,
    /// Whether a kind's pool exists (some layer uses it).
    kinds_used: [bool; 2],
}

impl<'m, B: Backend> Engine<'m, B> {
    pub fn new(model: &'m Model<B>, limits: Limits) -> Result<Self> {
        let l = limits;
        if l.max_tokens == 0 || l.max_seqs == 0 || l.max_context == 0 || l.block_size == 0 {
            return Err(Error::Input(format!("limits must be positive: {l:?}")));
        }
        if l.max_context.max(l.max_tokens) > MAX_POSITION as usize {
            return Err(Error::Input(format!(
                "limits out of range: {l:?} (positions and rows are at most {MAX_POSITION})"
            )));
        }
        if l.max_tokens < l.max_seqs || l.max_logit_rows < l.max_seqs {
            return Err(Error::Input(format!(
                "max_tokens ({}) and max_logit_rows ({}) must cover max_seqs ({}): a decode step has a token and a \
                 logit row per sequence",
                l.max_tokens, l.max_logit_rows, l.max_seqs
            )));
        }
        let plan = Self::plan(model, limits);
        let mut kinds_used = [false; 2];
        for spec in model.layer_specs() {
            kinds_used[spec.kv as usize] = true;
        }
        let (blocks, max_blocks) = (plan.blocks, plan.max_blocks);
        let state = model.backend.plan(&model.config, &plan)?;
        Ok(Engine {
            model,
            limits,
            state,
            pools: blocks.map(BlockPool::new),
            seqs: BTreeMap::new(),
            next_id: 0,
            graphs: HashMap::new(),
            use_graphs: true,
            meta: StepMeta::default(),
            max_blocks,
            default_seq: None,
            kinds_used,
        })
    }

    /// What an engine of these limits plans: the block pools and tables (to size a KV cache before making one).
    pub fn plan(model: &Model<B>, l: Limits) -> Plan {
        let chunk = model.config.attention_chunk_size;
        let used = |k: KvKind| model.layer_specs().iter().any(|s| s.kv == k);
        let blocks = [KvKind::Global, KvKind::Chunked].map(|k| match used(k) {
            true => pool_blocks(k, chunk, l.max_seqs, l.max_context, l.max_tokens, l.block_size),
            false => 0,
        });
        let max_blocks = l.max_context.div_ceil(l.block_size);
        Plan { limits: l, blocks, max_blocks, layers: model.layer_specs().to_vec() }
    }

    /// The backend's planned buffers (for memory figures).
    pub fn backend_state(&self) -> &B::State {
        &self.state
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn model(&self) -> &'m Model<B> {
        self.model
    }

    /// A new, empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.seqs.insert(id, SeqState::default());
        id
    }

    /// Ends a sequence and returns its blocks to the pools.
    pub fn free(&mut self, id: SeqId) {
        if let Some(mut s) = self.seqs.remove(&id) {
            for (t, pool) in s.tables.iter_mut().zip(&mut self.pools) {
                t.release_all(pool);
            }
        }
        if self.default_seq == Some(id) {
            self.default_seq = None;
        }
    }

    /// For benchmarks at long contexts: makes the new, empty sequence `id` hold `len` positions without running
    /// them, its blocks reserved and released as a prefill of `len` tokens would leave them. Later steps' attention
    /// reads those blocks at full cost, whatever the pools hold there (zeros after planning, or keys of freed
    /// sequences): the timing is the real one, the logits are not those of any prompt.
    pub fn skip_prefill(&mut self, id: SeqId, len: usize) -> Result<()> {
        let bs = self.limits.block_size;
        if len > self.limits.max_context {
            return Err(Error::Input(format!(
                "{len} positions; the engine was planned for {}",
                self.limits.max_context
            )));
        }
        let mask = self.model.layer_specs().iter().map(|l| l.mask).find(|&m| KvKind::of(m) == KvKind::Chunked);
        let st = self.seqs.get_mut(&id).ok_or_else(|| Error::Input(format!("sequence {id:?} does not exist")))?;
        if st.len != 0 {
            return Err(Error::Input(format!("sequence {id:?} already holds {} positions", st.len)));
        }
        for k in [KvKind::Global, KvKind::Chunked] {
            if !self.kinds_used[k as usize] {
                continue;
            }
            let lo = match (k, mask) {
                (KvKind::Chunked, Some(m)) => first_visible(m, len),
                _ => 0,
            };
            st.tables[k as usize].reserve(&mut self.pools[k as usize], k, bs, lo, len)?;
        }
        st.len = len;
        Ok(())
    }

    /// Positions a sequence holds.
    pub fn seq_len(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).map(|s| s.len)
    }

    /// Blocks a sequence holds in one pool.
    pub fn held_blocks(&self, id: SeqId, kind: KvKind) -> usize {
        self.seqs.get(&id).map_or(0, |s| s.tables[kind as usize].held())
    }

    /// Free blocks of one pool.
    pub fn free_blocks(&self, kind: KvKind) -> usize {
        self.pools[kind as usize].free_blocks()
    }

    /// Recorded decode graphs so far (one per batch-size bucket used).
    pub fn graphs(&self) -> usize {
        self.graphs.len()
    }

    /// Forgets the recorded decode graphs: the next graphed step of each bucket records its graph again.
    pub fn drop_graphs(&mut self) {
        self.graphs.clear();
    }

    /// Runs one step; `return_logits` brings the logit rows back to the host.
    pub fn step(&mut self, batch: &[SeqStep], return_logits: bool) -> Result<Vec<SeqOut>> {
        let shape = self.check(batch)?;
        let graphed = self.use_graphs && batch.iter().all(|s| s.tokens.len() == 1 && s.logits != Logits::None);
        let shape = if graphed { bucket(shape, self.limits.max_seqs) } else { shape };
        for s in batch {
            let st = self.seqs.get_mut(&s.seq).expect("checked");
            let (lo, hi) = (st.len, st.len + s.tokens.len());
            for k in [KvKind::Global, KvKind::Chunked] {
                if self.kinds_used[k as usize] {
                    st.tables[k as usize].reserve(&mut self.pools[k as usize], k, self.limits.block_size, lo, hi)?;
                }
            }
        }
        self.build_meta(batch, shape);
        let (model, st) = (self.model, &mut self.state);
        model.backend.set_step(st, &self.meta)?;
        if graphed {
            if !self.graphs.contains_key(&shape) {
                match model.backend.capture(st, &mut |st| model.run_step(st))? {
                    Some(g) => {
                        self.graphs.insert(shape, g);
                    }
                    None => model.run_step(st)?,
                }
            }
            if let Some(g) = self.graphs.get(&shape) {
                model.backend.replay(st, g)?;
            }
        } else {
            model.run_step(st)?;
        }
        let tokens = model.backend.tokens(st)?;
        let logits = match return_logits {
            true => Some(model.backend.read_logits(st)?),
            false => None,
        };
        // The step ran: commit the new positions and free the chunked blocks now behind every chunk.
        let mask = model.layer_specs().iter().map(|l| l.mask).find(|&m| KvKind::of(m) == KvKind::Chunked);
        for s in batch {
            let st = self.seqs.get_mut(&s.seq).expect("checked");
            st.len += s.tokens.len();
            if let Some(m) = mask {
                let pool = &mut self.pools[KvKind::Chunked as usize];
                st.tables[KvKind::Chunked as usize].release_before(
                    pool,
                    self.limits.block_size,
                    first_visible(m, st.len),
                );
            }
        }
        self.outputs(batch, &tokens, logits)
    }

    /// Validates a step against the limits; returns its exact shape.
    fn check(&self, batch: &[SeqStep]) -> Result<StepShape> {
        let l = &self.limits;
        if batch.is_empty() {
            return Err(Error::Input("a step needs at least one sequence".into()));
        }
        if batch.len() > l.max_seqs {
            return Err(Error::Input(format!(
                "{} sequences in a step; the engine was planned for {}",
                batch.len(),
                l.max_seqs
            )));
        }
        let vocab = self.model.config.vocab_size;
        let (mut tokens, mut rows, mut max_q) = (0, 0, 0);
        for (i, s) in batch.iter().enumerate() {
            let Some(st) = self.seqs.get(&s.seq) else {
                return Err(Error::Input(format!("sequence {:?} does not exist (freed?)", s.seq)));
            };
            if batch[..i].iter().any(|o| o.seq == s.seq) {
                return Err(Error::Input(format!("sequence {:?} appears twice in one step", s.seq)));
            }
            if s.tokens.is_empty() {
                return Err(Error::Input(format!("sequence {:?} brings no tokens", s.seq)));
            }
            if let Some(&bad) = s.tokens.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::Input(format!("token id {bad} is out of range for vocab_size {vocab}")));
            }
            let end = st.len + s.tokens.len();
            if end > l.max_context || end > i32::MAX as usize {
                return Err(Error::Input(format!(
                    "sequence {:?} would reach {end} positions; the engine was planned for {}",
                    s.seq, l.max_context
                )));
            }
            tokens += s.tokens.len();
            max_q = max_q.max(s.tokens.len());
            rows += match s.logits {
                Logits::None => 0,
                Logits::Last => 1,
                Logits::All => s.tokens.len(),
            };
        }
        if tokens > l.max_tokens {
            return Err(Error::Input(format!(
                "{tokens} tokens in a step; the engine was planned for {}",
                l.max_tokens
            )));
        }
        if rows > l.max_logit_rows {
            return Err(Error::Input(format!(
                "{rows} logit rows in a step; the engine was planned for {}",
                l.max_logit_rows
            )));
        }
        Ok(StepShape { tokens, seqs: batch.len(), max_q_len: max_q, logit_rows: rows })
    }

    /// The step's metadata into the reused host buffers (padding rows and sequences up to `shape`).
    fn build_meta(&mut self, batch: &[SeqStep], shape: StepShape) {
        let bs = self.limits.block_size;
        let mb = self.max_blocks;
        let m = &mut self.meta;
        m.shape = Some(shape);
        m.max_blocks = mb;
        for v in [&mut m.ids, &mut m.pos, &mut m.cu_seqlens, &mut m.seq_lens, &mut m.logit_rows] {
            v.clear();
        }
        for k in 0..2 {
            m.slots[k].clear();
            m.block_tables[k].clear();
            m.block_tables[k].resize(shape.seqs * mb, -1);
        }
        m.cu_seqlens.push(0);
        for (b, s) in batch.iter().enumerate() {
            let st = &self.seqs[&s.seq];
            let first_row = m.ids.len();
            for (i, &id) in s.tokens.iter().enumerate() {
                let p = st.len + i;
                m.ids.push(id as i32);
                m.pos.push(p as i32);
                for k in 0..2 {
                    let t = &st.tables[k];
                    m.slots[k].push(if self.kinds_used[k] { t.slot(bs, p) } else { -1 });
                }
            }
            m.cu_seqlens.push(m.ids.len() as i32);
            m.seq_lens.push((st.len + s.tokens.len()) as i32);
            for k in 0..2 {
                let t = &st.tables[k].blocks;
                m.block_tables[k][b * mb..b * mb + t.len()].copy_from_slice(t);
            }
            match s.logits {
                Logits::None => {}
                Logits::Last => m.logit_rows.push(m.ids.len() as i32 - 1),
                Logits::All => m.logit_rows.extend(first_row as i32..m.ids.len() as i32),
            }
        }
        // Padding of a graph bucket: tokens that write nothing and belong to no sequence, sequences with no
        // queries and no keys, logit rows that read the padding rows (and are ignored).
        let real = m.ids.len() as i32;
        while m.ids.len() < shape.tokens {
            m.logit_rows.push(m.ids.len() as i32);
            m.ids.push(0);
            m.pos.push(0);
            m.slots[0].push(-1);
            m.slots[1].push(-1);
        }
        m.logit_rows.truncate(shape.logit_rows);
        while m.seq_lens.len() < shape.seqs {
            m.cu_seqlens.push(real);
            m.seq_lens.push(0);
        }
    }

    fn outputs(&self, batch: &[SeqStep], tokens: &[i32], logits: Option<Array2<f32>>) -> Result<Vec<SeqOut>> {
        let mut row = 0;
        let mut out = Vec::with_capacity(batch.len());
        for s in batch {
            let n = match s.logits {
                Logits::None => 0,
                Logits::Last => 1,
                Logits::All => s.tokens.len(),
            };
            let ids = tokens.get(row..row + n).ok_or_else(|| Error::Backend("too few argmax rows".into()))?;
            // The sequence's positions are committed: its rows are the last n positions.
            let pos = |r: usize| self.seqs.get(&s.seq).map_or(0, |st| st.len) - n + r;
            let non_finite = |r: usize, what: String| {
                Error::Backend(format!(
                    "the logits of sequence {:?} at position {} hold {what}: the model computed NaN or infinity",
                    s.seq,
                    pos(r)
                ))
            };
            let ids = (ids.iter().enumerate())
                .map(|(r, &t)| u32::try_from(t).map_err(|_| non_finite(r, "NaN or infinity (no greedy token)".into())))
                .collect::<Result<Vec<u32>>>()?;
            let l = logits.as_ref().map(|l| l.slice(s![row..row + n, ..]).to_owned());
            if let Some(l) = &l {
                if let Some(((r, j), v)) = l.indexed_iter().find(|(_, v)| !v.is_finite()) {
                    return Err(non_finite(r, format!("{v} at vocab id {j}")));
                }
            }
            out.push(SeqOut { tokens: ids, logits: l });
            row += n;
        }
        Ok(out)
    }

    /// Runs `ids` on this engine's default sequence, at the positions following what it already holds;
    /// returns the logits of the rows `which` asks for.
    pub fn forward(&mut self, ids: &[u32], which: Logits) -> Result<Array2<f32>> {
        let seq = match self.default_seq {
            Some(s) => s,
            None => {
                let s = self.add_sequence();
                self.default_seq = Some(s);
                s
            }
        };
        let out = self.step(&[SeqStep { seq, tokens: ids, logits: which }], true)?;
        Ok(out.into_iter().next().and_then(|o| o.logits).expect("one sequence, logits asked for"))
    }

    /// Positions the default sequence holds.
    pub fn next_pos(&self) -> usize {
        self.default_seq.and_then(|s| self.seq_len(s)).unwrap_or(0)
    }

    /// The default sequence (for block counts in tests).
    pub fn default_sequence(&self) -> Option<SeqId> {
        self.default_seq
    }
}

/// A decode step's shape padded to its batch-size bucket: the next power of two, at most `max_seqs`.
fn bucket(shape: StepShape, max_seqs: usize) -> StepShape {
    let b = shape.seqs.next_power_of_two().min(max_seqs).max(shape.seqs);
    StepShape { tokens: b, seqs: b, max_q_len: 1, logit_rows: b }
}

/// The result of [`Model::generate`].
pub struct Generation {
    /// The new tokens only.
    pub tokens: Vec<u32>,
    /// Logits of every position run (prompt, then each fed-back token), when requested.
    pub logits: Option<Array2<f32>>,
    pub prefill: Duration,
    /// Time of each decode step (one per new token after the first).
    pub steps: Vec<Duration>,
}

/// How [`Model::generate_with`] runs.
#[derive(Clone, Copy, Debug)]
pub struct GenOptions {
    /// Keep the logits of every position.
    pub keep_logits: bool,
    /// Prefill all but the last K prompt tokens, then feed those K one at a time through decode steps.
    pub teacher_force: usize,
    /// Longest prefill step (0: the whole prompt at once).
    pub max_prefill: usize,
    /// Replay decode steps from recorded graphs (where the backend records them).
    pub graphs: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions { keep_logits: false, teacher_force: 0, max_prefill: 0, graphs: true }
    }
}

impl<B: Backend> Model<B> {
    /// An engine for one sequence of up to `max_context` positions.
    pub fn new_cache(&self) -> Result<Engine<'_, B>> {
        Engine::new(self, Limits::default())
    }

    /// Runs `ids` after whatever `engine`'s default sequence holds; returns logits `[rows, V]`.
    pub fn forward(&self, engine: &mut Engine<'_, B>, ids: &[u32], which: Logits) -> Result<Array2<f32>> {
        engine.forward(ids, which)
    }

    /// Greedy decoding: prefill `prompt`, then `max_new` tokens, each the argmax of the previous logits.
    /// With `keep_logits`, returns the logits of every position run: prompt + max(max_new, 1) - 1 rows
    /// (the last new token is chosen, not run).
    pub fn generate(&self, prompt: &[u32], max_new: usize, keep_logits: bool) -> Result<Generation> {
        self.generate_with(prompt, max_new, GenOptions { keep_logits, ..Default::default() }, |_, _, _| {})
    }

    /// [`Model::generate`] with options, calling `on_token(index, token, time)` as each new token is chosen;
    /// the time is the step that produced its logits (the prefill for the first).
    pub fn generate_with(
        &self,
        prompt: &[u32],
        max_new: usize,
        opt: GenOptions,
        mut on_token: impl FnMut(usize, u32, Duration),
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(Error::Input("no tokens to run".into()));
        }
        if opt.teacher_force >= prompt.len() {
            return Err(Error::Input(format!(
                "--teacher-force {} needs a prompt longer than that ({} tokens): at least one token is prefilled",
                opt.teacher_force,
                prompt.len()
            )));
        }
        let context = prompt.len().checked_add(max_new.max(1)).filter(|&n| n <= MAX_POSITION as usize);
        let Some(context) = context else {
            return Err(Error::Input(format!(
                "a prompt of {} tokens and {max_new} new ones exceed the {MAX_POSITION} positions a sequence can hold",
                prompt.len()
            )));
        };
        let prefill_len = prompt.len() - opt.teacher_force;
        let piece = if opt.max_prefill == 0 { prefill_len } else { opt.max_prefill.min(prefill_len) };
        let limits = Limits {
            max_tokens: piece,
            max_seqs: 1,
            max_context: context,
            max_logit_rows: if opt.keep_logits { piece } else { 1 },
            ..Limits::default()
        };
        let mut engine = Engine::new(self, limits)?;
        engine.use_graphs = opt.graphs;
        let seq = engine.add_sequence();
        let mut kept: Vec<Array2<f32>> = Vec::new();
        let mut last = 0u32;
        let run =
            |engine: &mut Engine<B>, tokens: &[u32], logits: Logits| -> Result<(Option<u32>, Option<Array2<f32>>)> {
                let out = engine.step(&[SeqStep { seq, tokens, logits }], opt.keep_logits)?;
                let o = out.into_iter().next().expect("one sequence");
                Ok((o.tokens.last().copied(), o.logits))
            };
        let record = |(t, l): (Option<u32>, Option<Array2<f32>>), last: &mut u32, kept: &mut Vec<Array2<f32>>| {
            if let Some(t) = t {
                *last = t;
            }
            kept.extend(l);
        };
        let t0 = Instant::now();
        let pieces: Vec<&[u32]> = prompt[..prefill_len].chunks(piece).collect();
        for (i, p) in pieces.iter().enumerate() {
            let which = match (opt.keep_logits, i + 1 == pieces.len() && opt.teacher_force == 0) {
                (true, _) => Logits::All,
                (false, true) => Logits::Last,
                (false, false) => Logits::None,
            };
            record(run(&mut engine, p, which)?, &mut last, &mut kept);
        }
        for t in prefill_len..prompt.len() {
            record(run(&mut engine, &prompt[t..t + 1], Logits::Last)?, &mut last, &mut kept);
        }
        let prefill = t0.elapsed();
        let mut tokens = Vec::new();
        let mut steps = Vec::new();
        let mut took = prefill;
        while tokens.len() < max_new {
            let tok = last;
            on_token(tokens.len(), tok, took);
            tokens.push(tok);
            if tokens.len() == max_new {
                break;
            }
            let t = Instant::now();
            record(run(&mut engine, &[tok], Logits::Last)?, &mut last, &mut kept);
            took = t.elapsed();
            steps.push(took);
        }
        let logits = match opt.keep_logits {
            true => {
                let views: Vec<_> = kept.iter().map(|r| r.view()).collect();
                Some(ndarray::concatenate(ndarray::Axis(0), &views).map_err(|e| Error::Backend(e.to_string()))?)
            }
            false => None,
        };
        Ok(Generation { tokens, logits, prefill, steps })
    }
}

/// Index of the largest logit, the lowest index on ties (as `torch.argmax`); NaN or infinity is an error, not
/// a token.
pub fn argmax(row: ArrayView1<f32>) -> Result<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in row.iter().enumerate() {
        if !v.is_finite() {
            return Err(Error::Backend(format!("logit {i} is {v}")));
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32).ok_or_else(|| Error::Backend("empty logits row".into()))
}
