//! The CPU backend: every op is a call into `llama4-reference` at [`Precision::F32`], so the model run on it
//! is the oracle that the GPU backend will be held to.

use crate::backend::{AttnMask, Backend, Heads, MoeRef};
use crate::error::{Error, Result};
use llama4_reference::attention::{attention, Mask};
use llama4_reference::embedding::embed;
use llama4_reference::linear::linear;
use llama4_reference::moe::{llama4_moe_topk, mlp, MoeWeights};
use llama4_reference::rmsnorm::rmsnorm;
use llama4_reference::rope::{prepare_qkv, LayerKind};
use llama4_reference::Precision;
use ndarray::{s, Array2, Array3, ArrayD, ArrayView, ArrayView1, ArrayView2, ArrayView3, Dimension, Ix1, Ix2, Ix3};

const P: Precision = Precision::F32;

/// The plain-Rust reference backend, f32 activations.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// One layer's cache: keys and values as flat rows of `Hkv * D` values, oldest first.
#[derive(Clone, Debug, Default)]
pub struct CpuKv {
    k: Vec<f32>,
    v: Vec<f32>,
    row: usize,
}

impl CpuKv {
    pub fn len(&self) -> usize {
        self.k.len() / self.row.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.k.is_empty()
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

/// `[T, H D]` viewed as `[T, H, D]`.
fn heads3(x: &Array2<f32>, h: usize, d: usize) -> Result<ArrayView3<'_, f32>> {
    x.view()
        .into_shape_with_order((x.nrows(), h, d))
        .map_err(|e| Error::Backend(format!("activation {:?} is not [T, {h} x {d}]: {e}", x.dim())))
}

/// `[T, H, D]` flattened to `[T, H D]`.
fn flat(x: Array3<f32>) -> Result<Array2<f32>> {
    let (t, h, d) = x.dim();
    x.as_standard_layout().into_owned().into_shape_with_order((t, h * d)).map_err(|e| Error::Backend(e.to_string()))
}

impl Backend for Cpu {
    type Weight = ArrayD<f32>;
    type Act = Array2<f32>;
    type Kv = CpuKv;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn upload(&self, w: ArrayD<f32>) -> Result<ArrayD<f32>> {
        Ok(w)
    }

    fn embed(&self, table: &ArrayD<f32>, ids: &[u32]) -> Result<Array2<f32>> {
        embed(v2(table, "embed")?, ids).map_err(Error::Input)
    }

    fn rmsnorm(&self, x: &Array2<f32>, w: &ArrayD<f32>, eps: f32) -> Result<Array2<f32>> {
        Ok(rmsnorm(x.view(), v1(w, "rmsnorm")?, eps, P))
    }

    fn linear(&self, x: &Array2<f32>, w: &ArrayD<f32>) -> Result<Array2<f32>> {
        Ok(linear(x.view(), v2(w, "linear")?, P))
    }

    fn add_assign(&self, x: &mut Array2<f32>, y: &Array2<f32>) -> Result<()> {
        if x.dim() != y.dim() {
            return Err(Error::Backend(format!("add: {:?} + {:?}", x.dim(), y.dim())));
        }
        *x += y;
        Ok(())
    }

    fn last_row(&self, x: &Array2<f32>) -> Result<Array2<f32>> {
        let t = x.nrows();
        if t == 0 {
            return Err(Error::Backend("last_row of an empty activation".into()));
        }
        Ok(x.slice(s![t - 1.., ..]).to_owned())
    }

    fn prepare_qkv(
        &self,
        qkv: &Array2<f32>,
        pos: &[u32],
        h: Heads,
        kind: &LayerKind,
    ) -> Result<(Array2<f32>, Array2<f32>, Array2<f32>)> {
        let (q, k, v) = prepare_qkv(qkv.view(), pos, h.n_heads, h.n_kv_heads, h.head_dim, kind, P);
        Ok((flat(q)?, flat(k)?, flat(v)?))
    }

    fn kv_new(&self, h: Heads) -> Result<CpuKv> {
        Ok(CpuKv { k: Vec::new(), v: Vec::new(), row: h.n_kv_heads * h.head_dim })
    }

    fn kv_append(&self, kv: &mut CpuKv, k: &Array2<f32>, v: &Array2<f32>) -> Result<()> {
        if k.ncols() != kv.row || v.dim() != k.dim() {
            return Err(Error::Backend(format!("kv_append: k {:?}, v {:?}, rows of {}", k.dim(), v.dim(), kv.row)));
        }
        kv.k.extend(k.iter());
        kv.v.extend(v.iter());
        Ok(())
    }

    fn kv_drop_front(&self, kv: &mut CpuKv, n: usize) -> Result<()> {
        let n = (n * kv.row).min(kv.k.len());
        kv.k.drain(..n);
        kv.v.drain(..n);
        Ok(())
    }

    fn attention(
        &self,
        q: &Array2<f32>,
        kv: &CpuKv,
        q_pos: &[usize],
        k_pos: &[usize],
        h: Heads,
        mask: AttnMask,
    ) -> Result<Array2<f32>> {
        let s = kv.len();
        if k_pos.len() != s || q_pos.len() != q.nrows() {
            return Err(Error::Backend(format!(
                "attention: {s} cached keys with {} positions, {} queries with {} positions",
                k_pos.len(),
                q.nrows(),
                q_pos.len()
            )));
        }
        let shape = (s, h.n_kv_heads, h.head_dim);
        let k = ArrayView3::from_shape(shape, &kv.k).map_err(|e| Error::Backend(e.to_string()))?;
        let v = ArrayView3::from_shape(shape, &kv.v).map_err(|e| Error::Backend(e.to_string()))?;
        let mask = match mask {
            AttnMask::Causal => Mask::Causal,
            AttnMask::Chunked(chunk) => Mask::Chunked { chunk },
        };
        let q3 = heads3(q, h.n_heads, h.head_dim)?;
        flat(attention(q3, k, v, q_pos, k_pos, mask, P))
    }

    fn mlp(&self, y: &Array2<f32>, gate: &ArrayD<f32>, up: &ArrayD<f32>, down: &ArrayD<f32>) -> Result<Array2<f32>> {
        Ok(mlp(y.view(), v2(gate, "mlp gate")?, v2(up, "mlp up")?, v2(down, "mlp down")?, P))
    }

    fn moe(&self, y: &Array2<f32>, w: MoeRef<'_, ArrayD<f32>>) -> Result<Array2<f32>> {
        let top_k = w.top_k;
        let w = MoeWeights {
            router: v2(w.router, "router")?,
            gate_up: v3(w.gate_up, "experts.gate_up_proj")?,
            down: v3(w.down, "experts.down_proj")?,
            shared_gate: v2(w.shared_gate, "shared gate")?,
            shared_up: v2(w.shared_up, "shared up")?,
            shared_down: v2(w.shared_down, "shared down")?,
        };
        Ok(llama4_moe_topk(y.view(), &w, top_k, P))
    }

    fn to_host(&self, x: &Array2<f32>) -> Result<Array2<f32>> {
        Ok(x.clone())
    }
}
