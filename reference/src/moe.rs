//! The feed-forward blocks of the model contract:
//! - [`expert`]: one routed expert in the checkpoint layout (`gate_up_proj[e]` [H, 2I], `down_proj[e]`
//!   [I, H], used as `x @ W`), as HF's `Llama4TextExperts` computes it with `torch.bmm`;
//! - [`mlp`]: the dense FFN and the shared expert (`nn.Linear` weights), HF's `Llama4TextMLP`;
//! - [`llama4_moe`]: the whole Llama 4 MoE block, HF's `Llama4TextMoe`.
//!
//! Rounding in the activation dtype follows PyTorch: each matmul output is rounded, `silu(gate)` is
//! rounded, the product with `up` is rounded ([`crate::swiglu::swiglu`]), the routed input `y * score` is
//! rounded, and `shared + routed` is rounded.
//!
//! HF runs every expert on every token, feeding unchosen experts `y * 0` (sigmoid of -inf), whose output
//! is exactly 0, and sums over experts. Computing only the chosen expert, as here and in the kernels, is
//! bit-identical; a test below checks this against a literal transcription of HF's dense form.

use crate::dtype::Precision;
use crate::linear::{linear, matmul};
use crate::permute::{permute, unpermute};
use crate::router::route_sigmoid_topk;
use crate::swiglu::swiglu;
use ndarray::{concatenate, s, Array2, ArrayView2, ArrayView3, Axis};

/// One routed expert: `(silu(x G) * (x U)) D` with `[G | U] = gate_up` [H, 2I] (gate in the first I
/// columns) and `D = down` [I, H]. `x` is [R, H]; returns [R, H].
pub fn expert(x: ArrayView2<f32>, gate_up: ArrayView2<f32>, down: ArrayView2<f32>, p: Precision) -> Array2<f32> {
    assert_eq!(
        gate_up.ncols(),
        2 * down.nrows(),
        "expert: gate_up is {:?} but down is {:?} (want [H, 2I] and [I, H])",
        gate_up.dim(),
        down.dim()
    );
    let h = swiglu(matmul(x, gate_up, p).view(), p);
    matmul(h.view(), down, p)
}

/// Dense MLP / shared expert with `nn.Linear` weights `gate` [I, H], `up` [I, H], `down` [H, I]:
/// `down(silu(gate(y)) * up(y))`. `y` is [T, H]; returns [T, H].
pub fn mlp(
    y: ArrayView2<f32>,
    gate: ArrayView2<f32>,
    up: ArrayView2<f32>,
    down: ArrayView2<f32>,
    p: Precision,
) -> Array2<f32> {
    assert_eq!(gate.dim(), up.dim(), "mlp: gate is {:?} but up is {:?}", gate.dim(), up.dim());
    let g = linear(y, gate, p);
    let u = linear(y, up, p);
    // swiglu reads the fused [gate | up] layout; joining the halves keeps one definition of the rounding.
    let gu = concatenate(Axis(1), &[g.view(), u.view()]).expect("gate and up outputs share T rows");
    linear(swiglu(gu.view(), p).view(), down, p)
}

/// The weights of one Llama 4 MoE layer (checkpoint layouts).
#[derive(Clone, Copy, Debug)]
pub struct MoeWeights<'a> {
    /// `feed_forward.router.weight` [E, H].
    pub router: ArrayView2<'a, f32>,
    /// `feed_forward.experts.gate_up_proj` [E, H, 2I].
    pub gate_up: ArrayView3<'a, f32>,
    /// `feed_forward.experts.down_proj` [E, I, H].
    pub down: ArrayView3<'a, f32>,
    /// `feed_forward.shared_expert.gate_proj.weight` [I, H].
    pub shared_gate: ArrayView2<'a, f32>,
    /// `feed_forward.shared_expert.up_proj.weight` [I, H].
    pub shared_up: ArrayView2<'a, f32>,
    /// `feed_forward.shared_expert.down_proj.weight` [H, I].
    pub shared_down: ArrayView2<'a, f32>,
}

/// Runs expert e on rows `offsets[e]..offsets[e + 1]` of the expert-sorted `x` [R, H], for every e:
/// the grouped-GEMM view of the routed experts. Rows past `offsets[E]` (padding) come back as 0.
pub fn grouped_experts(
    x: ArrayView2<f32>,
    offsets: &[u32],
    gate_up: ArrayView3<f32>,
    down: ArrayView3<f32>,
    p: Precision,
) -> Array2<f32> {
    let n_exp = gate_up.dim().0;
    assert_eq!(offsets.len(), n_exp + 1, "grouped_experts: {} offsets for {n_exp} experts", offsets.len());
    assert_eq!(down.dim().0, n_exp, "grouped_experts: {n_exp} gate_up but {} down experts", down.dim().0);
    assert!(
        offsets.windows(2).all(|w| w[0] <= w[1]) && offsets[n_exp] as usize <= x.nrows(),
        "grouped_experts: offsets {offsets:?} are not monotone within {} rows",
        x.nrows()
    );
    let mut out = Array2::zeros((x.nrows(), down.dim().2));
    for e in 0..n_exp {
        let rows = offsets[e] as usize..offsets[e + 1] as usize;
        if rows.is_empty() {
            continue;
        }
        let y = expert(x.slice(s![rows.clone(), ..]), gate_up.index_axis(Axis(0), e), down.index_axis(Axis(0), e), p);
        out.slice_mut(s![rows, ..]).assign(&y);
    }
    out
}

/// The Llama 4 MoE block for `y` [T, H] (the post-attention-normed activations):
/// `logits = linear(y, router)`; top-1 on raw logits with score `round(sigmoid(logit))`;
/// `routed = expert_{e*}(round(y * score))`; `out = round(shared_expert(y) + routed)`. Returns [T, H].
pub fn llama4_moe(y: ArrayView2<f32>, w: &MoeWeights, p: Precision) -> Array2<f32> {
    llama4_moe_topk(y, w, 1, p)
}

/// The Llama 4 MoE block with `num_experts_per_tok = k`: every chosen expert sees `y * sigmoid(its logit)`
/// (rounded) and the k outputs are summed with the shared expert's (f32 sum, one rounding). k = 1 is the
/// released models.
pub fn llama4_moe_topk(y: ArrayView2<f32>, w: &MoeWeights, k: usize, p: Precision) -> Array2<f32> {
    let (n_exp, hidden, two_i) = w.gate_up.dim();
    assert_eq!(y.ncols(), hidden, "llama4_moe: y has {} columns, experts take H = {hidden}", y.ncols());
    assert_eq!(w.router.dim(), (n_exp, hidden), "llama4_moe: router is {:?}", w.router.dim());
    assert_eq!(w.down.dim(), (n_exp, two_i / 2, hidden), "llama4_moe: down is {:?}", w.down.dim());

    let logits = linear(y, w.router, p);
    let routing = route_sigmoid_topk(logits.view(), k, p);
    // The score scales the expert INPUT (SiLU makes that differ from scaling the output).
    let routed_in = permute(y, &routing, true, p);
    let routed_out = grouped_experts(routed_in.view(), &routing.offsets, w.gate_up, w.down, p);
    // The shared expert sees the unscaled y.
    let shared = mlp(y, w.shared_gate, w.shared_up, w.shared_down, p);
    unpermute(routed_out.view(), &routing, false, Some(shared.view()), p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{assert_close, TOL_BF16};
    use crate::dtype::round_bf16;
    use crate::router::{route_sigmoid_top1, sigmoid};
    use crate::swiglu::silu;
    use ndarray::{Array3, Zip};

    /// Pseudo-random bf16 values in [-amp, amp), from a hash of the index (smooth functions such as
    /// sin would correlate rows and columns, and the resulting cancellation would hide real errors).
    fn noise(i: usize, seed: f32) -> f32 {
        let h = (i as u64 ^ seed.to_bits() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let h = (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        (h >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn noise2(shape: (usize, usize), seed: f32, amp: f32) -> Array2<f32> {
        Array2::from_shape_fn(shape, |(a, b)| round_bf16(noise(a * shape.1 + b, seed) * amp))
    }

    fn noise3(shape: (usize, usize, usize), seed: f32, amp: f32) -> Array3<f32> {
        let (_, n1, n2) = shape;
        Array3::from_shape_fn(shape, |(a, b, c)| round_bf16(noise((a * n1 + b) * n2 + c, seed) * amp))
    }

    struct Layer {
        router: Array2<f32>,
        gate_up: Array3<f32>,
        down: Array3<f32>,
        sg: Array2<f32>,
        su: Array2<f32>,
        sd: Array2<f32>,
    }

    impl Layer {
        fn new(e: usize, h: usize, i: usize) -> Layer {
            Layer {
                router: noise2((e, h), 0.1, 1.0),
                gate_up: noise3((e, h, 2 * i), 0.2, 0.5),
                down: noise3((e, i, h), 0.3, 0.5),
                sg: noise2((i, h), 0.4, 0.5),
                su: noise2((i, h), 0.5, 0.5),
                sd: noise2((h, i), 0.6, 0.5),
            }
        }
        fn weights(&self) -> MoeWeights<'_> {
            MoeWeights {
                router: self.router.view(),
                gate_up: self.gate_up.view(),
                down: self.down.view(),
                shared_gate: self.sg.view(),
                shared_up: self.su.view(),
                shared_down: self.sd.view(),
            }
        }
    }

    /// HF's `Llama4TextMoe.forward`, transcribed literally: scores [T, E] with -inf off the top-1,
    /// sigmoid in f32 rounded, every expert run on `y * scores[:, e]`, summed over experts, added to shared.
    fn hf_dense(y: &Array2<f32>, l: &Layer, p: Precision) -> Array2<f32> {
        let (t, h) = y.dim();
        let n_exp = l.router.nrows();
        let logits = linear(y.view(), l.router.view(), p);
        let mut sum = Array2::<f64>::zeros((t, h));
        for e in 0..n_exp {
            let mut input = y.clone();
            for ti in 0..t {
                let row = logits.row(ti);
                let best = (0..n_exp).fold(0, |b, j| if row[j] > row[b] { j } else { b });
                let score = p.round(sigmoid(if best == e { row[e] } else { f32::NEG_INFINITY }));
                input.row_mut(ti).mapv_inplace(|v| p.round(v * score));
            }
            let out = expert(input.view(), l.gate_up.index_axis(Axis(0), e), l.down.index_axis(Axis(0), e), p);
            sum.zip_mut_with(&out, |s, &o| *s += o as f64);
        }
        let routed = sum.mapv(|v| p.round(v as f32));
        let shared = mlp(y.view(), l.sg.view(), l.su.view(), l.sd.view(), p);
        Zip::from(&shared).and(&routed).map_collect(|&a, &b| p.round(a + b))
    }

    #[test]
    fn equals_hf_dense_form_bit_for_bit() {
        let (t, e, h, i) = (9, 4, 8, 6);
        let l = Layer::new(e, h, i);
        let y = noise2((t, h), 0.7, 2.0);
        for p in [Precision::F32, Precision::Bf16] {
            let got = llama4_moe(y.view(), &l.weights(), p);
            assert_eq!(got, hf_dense(&y, &l, p), "{p:?}");
        }
        // The test is only meaningful if several experts are used.
        let r = route_sigmoid_top1(linear(y.view(), l.router.view(), Precision::Bf16).view(), Precision::Bf16);
        assert!(r.counts.iter().filter(|&&c| c > 0).count() >= 2, "{:?}", r.counts);
    }

    #[test]
    fn bf16_stays_close_to_f32() {
        let l = Layer::new(3, 16, 8);
        let y = noise2((5, 16), 0.9, 1.5);
        // Same routing in both precisions, else one token's output legitimately jumps.
        let route = |p| route_sigmoid_top1(linear(y.view(), l.router.view(), p).view(), p).experts;
        assert_eq!(route(Precision::Bf16), route(Precision::F32));
        let a = llama4_moe(y.view(), &l.weights(), Precision::Bf16);
        let b = llama4_moe(y.view(), &l.weights(), Precision::F32);
        assert_close("moe bf16 vs f32", a.as_slice().unwrap(), b.as_slice().unwrap(), TOL_BF16);
    }

    #[test]
    fn score_scales_the_input_not_the_output() {
        let l = Layer::new(1, 4, 4);
        let y = noise2((1, 4), 1.3, 3.0);
        let (gu, dn) = (l.gate_up.index_axis(Axis(0), 0), l.down.index_axis(Axis(0), 0));
        let s = sigmoid(linear(y.view(), l.router.view(), Precision::F32)[[0, 0]]);
        let shared = mlp(y.view(), l.sg.view(), l.su.view(), l.sd.view(), Precision::F32);
        let on_input = expert(y.mapv(|v| v * s).view(), gu, dn, Precision::F32) + &shared;
        let on_output = expert(y.view(), gu, dn, Precision::F32) * s + &shared;
        let got = llama4_moe(y.view(), &l.weights(), Precision::F32);
        assert_eq!(got, on_input);
        assert_ne!(got, on_output);
    }

    #[test]
    fn mlp_equals_expert_with_transposed_weights() {
        let l = Layer::new(1, 8, 4);
        let y = noise2((3, 8), 2.0, 1.0);
        let gu = concatenate(Axis(1), &[l.sg.t(), l.su.t()]).unwrap();
        for p in [Precision::F32, Precision::Bf16] {
            let a = mlp(y.view(), l.sg.view(), l.su.view(), l.sd.view(), p);
            let b = expert(y.view(), gu.view(), l.sd.t(), p);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn expert_by_hand() {
        // H = 1, I = 1: gate_up = [g | u], down = [d]: out = silu(x g) * (x u) * d.
        let x = ndarray::array![[2.0f32]];
        let out =
            expert(x.view(), ndarray::array![[0.5f32, 3.0]].view(), ndarray::array![[0.25f32]].view(), Precision::F32);
        assert!((out[[0, 0]] - silu(1.0) * 6.0 * 0.25).abs() < 1e-6);
    }

    #[test]
    fn grouped_experts_zero_the_padding() {
        let l = Layer::new(2, 4, 2);
        let x = noise2((6, 4), 0.2, 1.0);
        let out = grouped_experts(x.view(), &[0, 2, 4], l.gate_up.view(), l.down.view(), Precision::F32);
        assert!(out.slice(s![4.., ..]).iter().all(|&v| v == 0.0));
        let e1 = expert(
            x.slice(s![2..4, ..]),
            l.gate_up.index_axis(Axis(0), 1),
            l.down.index_axis(Axis(0), 1),
            Precision::F32,
        );
        assert_eq!(out.slice(s![2..4, ..]), e1);
    }
}
