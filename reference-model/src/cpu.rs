//! The CPU backend: every op is a call into `llama4-reference` at [`Precision::F32`], over the same step
//! metadata and the same paged KV cache (block tables, slots, recycled chunk blocks) as the GPU, so the model
//! run on it is the oracle the GPU backend is held to, and the engine's batching is checked on it too.

use crate::backend::{Act, Backend, LayerSpec, MoeRef, Plan, StepMeta};
use crate::config::TextConfig;
use crate::error::{Error, Result};
use crate::host_memory::filled;
use crate::host_tensor::HostTensor;
use crate::kv_cache::first_visible;
use crate::weights::Role;
use llama4_contract::HeadLayout;
use llama4_reference::attention::attention;
use llama4_reference::linear::linear;
use llama4_reference::moe::{llama4_moe_topk, MoeWeights};
use llama4_reference::rmsnorm::rmsnorm;
use llama4_reference::rope::prepare_qkv;
use llama4_reference::swiglu::swiglu;
use llama4_reference::Precision;
use ndarray::{
    s, Array2, Array3, ArrayD, ArrayView, ArrayView1, ArrayView2, ArrayView3, Axis, Dimension, Ix1, Ix2, Ix3,
};

const P: Precision = Precision::F32;

/// The plain-Rust reference backend, f32 activations.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// Activations, the step's metadata and the KV pools, f32.
pub struct CpuState {
    meta: StepMeta,
    heads: HeadLayout,
    block_size: usize,
    acts: [Array2<f32>; 5],
    /// q of the layer in flight, [T, Hq, D].
    q: Array3<f32>,
    /// Per layer: K and V pools, [blocks * block_size, Hkv, D] flattened.
    kv: Vec<(Vec<f32>, Vec<f32>)>,
    logits: Array2<f32>,
    tokens: Vec<i32>,
}

impl CpuState {
    fn act(&self, a: Act) -> &Array2<f32> {
        &self.acts[a as usize]
    }

    fn set(&mut self, a: Act, v: Array2<f32>) {
        self.acts[a as usize] = v;
    }
}

fn view<'a, D: Dimension>(w: &'a ArrayD<f32>, what: &str) -> Result<ArrayView<'a, f32, D>> {
    w.view().into_dimensionality::<D>().map_err(|_| Error::Backend(format!("{what}: weight of shape {:?}", w.shape())))
}
fn v1<'a>(w: &'a ArrayD<f32>, what: &str) -> Result<ArrayView1<'a, f32>> {
    view::<Ix1>(w, what)
}
fn v2<'a>(w: &'a ArrayD<f32>, what: &str) -> Result<ArrayView2<'a, f32>> {
    view::<Ix2>(w, what)
}
fn v3<'a>(w: &'a ArrayD<f32>, what: &str) -> Result<ArrayView3<'a, f32>> {
    view::<Ix3>(w, what)
}

fn rows(meta: &StepMeta) -> usize {
    meta.shape().tokens
}

impl Backend for Cpu {
    type Weight = ArrayD<f32>;
    type State = CpuState;
    type Graph = ();

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn check_config(&self, _config: &TextConfig) -> Result<()> {
        Ok(())
    }

    fn upload(&self, _role: Role, name: &str, t: HostTensor) -> Result<ArrayD<f32>> {
        t.to_f32_array().map_err(|e| e.context(&format!("tensor `{name}`")))
    }

    fn plan(&self, c: &TextConfig, plan: &Plan) -> Result<CpuState> {
        let heads = c.head_layout();
        let bs = plan.limits.block_size;
        let row = heads.n_kv_heads * heads.head_dim;
        let kv = (plan.layers.iter().enumerate())
            .map(|(i, l)| {
                let slots = plan.blocks[l.kv as usize].saturating_mul(bs);
                let n = slots.saturating_mul(row);
                let what = format!("layer {i}'s KV cache ({slots} slots)");
                Ok((filled(n, 0.0, &what)?, filled(n, 0.0, &what)?))
            })
            .collect::<Result<_>>()?;
        let empty = || Array2::zeros((0, 0));
        Ok(CpuState {
            meta: StepMeta::default(),
            heads,
            block_size: bs,
            acts: [empty(), empty(), empty(), empty(), empty()],
            q: Array3::zeros((0, 0, 0)),
            kv,
            logits: empty(),
            tokens: Vec::new(),
        })
    }

    fn set_step(&self, st: &mut CpuState, meta: &StepMeta) -> Result<()> {
        st.meta.clone_from(meta);
        Ok(())
    }

    fn embed(&self, st: &mut CpuState, table: &ArrayD<f32>) -> Result<()> {
        let table = v2(table, "embed")?;
        let mut x = Array2::zeros((rows(&st.meta), table.ncols()));
        for (t, &id) in st.meta.ids.iter().enumerate() {
            let row = usize::try_from(id).ok().filter(|&i| i < table.nrows());
            let row = row.ok_or_else(|| Error::Input(format!("token id {id} is out of range")))?;
            x.row_mut(t).assign(&table.row(row));
        }
        st.set(Act::X, x);
        Ok(())
    }

    fn norm(&self, st: &mut CpuState, w: &ArrayD<f32>, eps: f32, add: bool) -> Result<()> {
        if add {
            let f = st.act(Act::F).clone();
            let x = &mut st.acts[Act::X as usize];
            if x.dim() != f.dim() {
                return Err(Error::Backend(format!("add: {:?} + {:?}", x.dim(), f.dim())));
            }
            *x += &f;
        }
        let y = rmsnorm(st.act(Act::X).view(), v1(w, "rmsnorm")?, eps, P);
        st.set(Act::Y, y);
        Ok(())
    }

    fn linear(&self, st: &mut CpuState, input: Act, output: Act, w: &ArrayD<f32>) -> Result<()> {
        let y = linear(st.act(input).view(), v2(w, "linear")?, P);
        st.set(output, y);
        Ok(())
    }

    fn rope(&self, st: &mut CpuState, layer: usize, spec: &LayerSpec) -> Result<()> {
        let h = st.heads;
        let pos: Vec<u32> = st.meta.pos.iter().map(|&p| p as u32).collect();
        let (q, k, v) = prepare_qkv(st.act(Act::Qkv).view(), &pos, h, &spec.kind, P);
        let row = h.n_kv_heads * h.head_dim;
        let (kc, vc) = &mut st.kv[layer];
        for (t, &slot) in st.meta.slots[spec.kv as usize].iter().enumerate() {
            if slot < 0 {
                continue;
            }
            let at = slot as usize * row;
            let (Some(kd), Some(vd)) = (kc.get_mut(at..at + row), vc.get_mut(at..at + row)) else {
                return Err(Error::Backend(format!("slot {slot} is outside layer {layer}'s cache")));
            };
            kd.iter_mut().zip(k.slice(s![t, .., ..]).iter()).for_each(|(d, s)| *d = *s);
            vd.iter_mut().zip(v.slice(s![t, .., ..]).iter()).for_each(|(d, s)| *d = *s);
        }
        st.q = q;
        Ok(())
    }

    fn attention(&self, st: &mut CpuState, layer: usize, spec: &LayerSpec) -> Result<()> {
        let h = st.heads;
        let (bs, m) = (st.block_size, &st.meta);
        let row = h.n_kv_heads * h.head_dim;
        let mut out = Array3::<f32>::zeros((rows(m), h.n_heads, h.head_dim));
        let table = &m.block_tables[spec.kv as usize];
        let (kc, vc) = &st.kv[layer];
        for b in 0..m.seq_lens.len() {
            let (r0, r1) = (m.cu_seqlens[b] as usize, m.cu_seqlens[b + 1] as usize);
            if r0 == r1 {
                continue;
            }
            let seq_len = m.seq_lens[b] as usize;
            let q_pos: Vec<usize> = m.pos[r0..r1].iter().map(|&p| p as usize).collect();
            let lo = first_visible(spec.mask, q_pos[0]);
            let k_pos: Vec<usize> = (lo..seq_len).collect();
            let (mut k, mut v) = (Vec::with_capacity(k_pos.len() * row), Vec::with_capacity(k_pos.len() * row));
            for &p in &k_pos {
                let blk = table[b * m.max_blocks + p / bs];
                if blk < 0 {
                    return Err(Error::Backend(format!("layer {layer}: sequence {b} has no block for position {p}")));
                }
                let at = (blk as usize * bs + p % bs) * row;
                k.extend_from_slice(&kc[at..at + row]);
                v.extend_from_slice(&vc[at..at + row]);
            }
            let shape = (k_pos.len(), h.n_kv_heads, h.head_dim);
            let k = ArrayView3::from_shape(shape, &k).map_err(|e| Error::Backend(e.to_string()))?;
            let v = ArrayView3::from_shape(shape, &v).map_err(|e| Error::Backend(e.to_string()))?;
            let o = attention(st.q.slice(s![r0..r1, .., ..]), k, v, &q_pos, &k_pos, spec.mask, P);
            out.slice_mut(s![r0..r1, .., ..]).assign(&o);
        }
        let t = out.dim().0;
        let out = out.into_shape_with_order((t, h.n_heads * h.head_dim)).map_err(|e| Error::Backend(e.to_string()))?;
        st.set(Act::Attn, out);
        Ok(())
    }

    fn mlp(&self, st: &mut CpuState, gate_up: &ArrayD<f32>, down: &ArrayD<f32>) -> Result<()> {
        let gu = linear(st.act(Act::Y).view(), v2(gate_up, "mlp gate_up")?, P);
        let f = linear(swiglu(gu.view(), P).view(), v2(down, "mlp down")?, P);
        st.set(Act::F, f);
        Ok(())
    }

    fn moe(&self, st: &mut CpuState, w: MoeRef<'_, ArrayD<f32>>) -> Result<()> {
        let sgu = v2(w.shared_gate_up, "shared gate_up")?;
        let i = sgu.nrows() / 2;
        let mw = MoeWeights {
            router: v2(w.router, "router")?,
            gate_up: v3(w.gate_up, "experts.gate_up_proj")?,
            down: v3(w.down, "experts.down_proj")?,
            shared_gate: sgu.slice(s![..i, ..]),
            shared_up: sgu.slice(s![i.., ..]),
            shared_down: v2(w.shared_down, "shared down")?,
        };
        let f = llama4_moe_topk(st.act(Act::Y).view(), &mw, w.top_k, P);
        st.set(Act::F, f);
        Ok(())
    }

    fn logits(&self, st: &mut CpuState, lm_head: &ArrayD<f32>) -> Result<()> {
        let idx: Vec<usize> = st.meta.logit_rows.iter().map(|&r| r as usize).collect();
        let y = st.act(Act::Y).select(Axis(0), &idx);
        st.logits = linear(y.view(), v2(lm_head, "lm_head")?, P);
        st.tokens = st.logits.rows().into_iter().map(|r| crate::engine::argmax(r).map_or(-1, |t| t as i32)).collect();
        Ok(())
    }

    fn tokens(&self, st: &mut CpuState) -> Result<Vec<i32>> {
        Ok(st.tokens.clone())
    }

    fn read_logits(&self, st: &mut CpuState) -> Result<Array2<f32>> {
        Ok(st.logits.clone())
    }

    fn capture(&self, _st: &mut CpuState, _f: &mut dyn FnMut(&mut CpuState) -> Result<()>) -> Result<Option<()>> {
        Ok(None)
    }

    fn replay(&self, _st: &mut CpuState, _g: &()) -> Result<()> {
        Err(Error::Backend("the CPU backend records no graphs".into()))
    }
}
