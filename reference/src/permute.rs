//! Moving tokens into and out of expert-sorted order (the layout of a [`Routing`]).
//!
//! - [`permute`]: row `dest[t, c]` of the output is token t's activation, optionally scaled by its routing
//!   weight first. Llama 4 scales the expert INPUT: HF computes `routed_in = y * score` in the activation
//!   dtype, so the product is rounded by `p`.
//! - [`permute_fp8`]: the same rows quantized rowwise to FP8 E4M3 for an FP8 grouped GEMM.
//! - [`padded_offsets`]: expert row starts when each expert's block is padded to a tile multiple.
//! - [`unpermute`]: gathers each token's k expert outputs back, optionally weights them (Mixtral style),
//!   adds the shared expert's output, all in f32, and rounds once by `p`. For Llama 4 (top-1, unweighted)
//!   that is exactly HF's `out = shared_expert(y); out.add_(routed)`.
//! - [`unpermute_add_rmsnorm`]: that, then the decoder's next residual add and norm.

use crate::dtype::Precision;
use crate::fp8;
use crate::router::Routing;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

/// Gathers `x` [T, H] into expert-sorted rows [T * k, H]: row `dest[t, c]` is `x[t]`, times
/// `weights[t, c]` rounded by `p` when `scale_by_weight`.
///
/// Panics if `x` does not have one row per routed token.
pub fn permute(x: ArrayView2<f32>, r: &Routing, scale_by_weight: bool, p: Precision) -> Array2<f32> {
    let (t, k) = r.experts.dim();
    assert_eq!(x.nrows(), t, "permute: x has {} rows but the routing has {t} tokens", x.nrows());
    let mut out = Array2::zeros((t * k, x.ncols()));
    for ((ti, c), &row) in r.dest.indexed_iter() {
        let w = r.weights[[ti, c]];
        let src = x.row(ti);
        let mut dst = out.row_mut(row as usize);
        if scale_by_weight {
            dst.zip_mut_with(&src, |d, &v| *d = p.round(v * w));
        } else {
            dst.assign(&src);
        }
    }
    out
}

/// [`permute`], then rowwise FP8 quantization ([`fp8::quantize_rowwise`]): `(q [T * k, H], scales [T * k])`.
pub fn permute_fp8(x: ArrayView2<f32>, r: &Routing, scale_by_weight: bool, p: Precision) -> (Array2<u8>, Array1<f32>) {
    fp8::quantize_rowwise(permute(x, r, scale_by_weight, p).view())
}

/// Row start of each expert when every expert's block of rows is padded up to a multiple of `align`:
/// `[E + 1]`, starting at 0; the last entry is the padded total. An expert with no rows takes no space.
///
/// Panics if `align` is 0 or the total overflows u32.
pub fn padded_offsets(counts: &[u32], align: u32) -> Vec<u32> {
    assert!(align >= 1, "padded_offsets: align must be at least 1");
    let mut offsets = Vec::with_capacity(counts.len() + 1);
    offsets.push(0u32);
    let mut at = 0u32;
    for &c in counts {
        let padded = c.div_ceil(align).checked_mul(align);
        at = padded.and_then(|n| at.checked_add(n)).expect("padded_offsets: padded row count overflows u32");
        offsets.push(at);
    }
    offsets
}

/// Scatters expert-sorted rows back to tokens and combines them:
/// `out[t] = sum_c (weights[t, c] *)? expert_out[dest[t, c]] (+ shared[t])`, summed in f32 over
/// c = 0..k in order, the shared row added last, one rounding by `p` at the end. Returns [T, H].
///
/// `expert_out` must have exactly T * k rows (use the unpadded layout); panics otherwise, or if `shared`
/// is not [T, H].
pub fn unpermute(
    expert_out: ArrayView2<f32>,
    r: &Routing,
    weight_outputs: bool,
    shared: Option<ArrayView2<f32>>,
    p: Precision,
) -> Array2<f32> {
    let (t, k) = r.experts.dim();
    let h = expert_out.ncols();
    assert_eq!(
        expert_out.nrows(),
        t * k,
        "unpermute: expert_out has {} rows, routing has {t} tokens x {k} choices",
        expert_out.nrows()
    );
    if let Some(s) = &shared {
        assert_eq!(s.dim(), (t, h), "unpermute: shared is {:?}, want ({t}, {h})", s.dim());
    }
    let mut out = Array2::zeros((t, h));
    for ti in 0..t {
        for j in 0..h {
            let mut acc = 0.0f32;
            for c in 0..k {
                let v = expert_out[[r.dest[[ti, c]] as usize, j]];
                acc += if weight_outputs { r.weights[[ti, c]] * v } else { v };
            }
            if let Some(s) = &shared {
                acc += s[[ti, j]];
            }
            out[[ti, j]] = p.round(acc);
        }
    }
    out
}

/// [`unpermute`] fed into the decoder's next residual add and norm ([`crate::rmsnorm::add_rmsnorm`]): the oracle
/// of the fused kernel. Returns `(residual + F rounded, rmsnorm of it)` with F the unpermuted rows (rounded by `p`).
#[allow(clippy::too_many_arguments)]
pub fn unpermute_add_rmsnorm(
    expert_out: ArrayView2<f32>,
    r: &Routing,
    weight_outputs: bool,
    shared: Option<ArrayView2<f32>>,
    residual: ArrayView2<f32>,
    norm_weight: ArrayView1<f32>,
    eps: f32,
    p: Precision,
) -> (Array2<f32>, Array2<f32>) {
    let f = unpermute(expert_out, r, weight_outputs, shared, p);
    crate::rmsnorm::add_rmsnorm(f.view(), residual, norm_weight, eps, p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::round_bf16;
    use crate::router::{route_sigmoid_top1, route_softmax_topk};
    use ndarray::array;
    use proptest::prelude::*;

    fn routing(experts: Array2<u32>, weights: Array2<f32>, e: usize) -> Routing {
        Routing::from_choices(experts, weights, e)
    }

    #[test]
    fn permute_sorts_rows_by_expert() {
        let x = array![[1.0f32, 10.0], [2.0, 20.0], [3.0, 30.0]];
        let r = routing(array![[1], [0], [1]], array![[0.5], [2.0], [0.25]], 2);
        let plain = permute(x.view(), &r, false, Precision::F32);
        assert_eq!(plain, array![[2.0, 20.0], [1.0, 10.0], [3.0, 30.0]]);
        let scaled = permute(x.view(), &r, true, Precision::F32);
        assert_eq!(scaled, array![[4.0, 40.0], [0.5, 5.0], [0.75, 7.5]]);
    }

    #[test]
    fn scaling_rounds_in_bf16() {
        let x = array![[1.0f32 + 2f32.powi(-7)]];
        let w = 1.0 + 2f32.powi(-7); // product 1 + 2^-6 + 2^-14 is not bf16
        let r = routing(array![[0]], array![[w]], 1);
        let y = permute(x.view(), &r, true, Precision::Bf16)[[0, 0]];
        assert_eq!(y, round_bf16((1.0 + 2f32.powi(-7)) * w));
        assert_eq!(y, 1.0 + 2f32.powi(-6));
    }

    #[test]
    fn top2_rows_appear_twice() {
        let x = array![[1.0f32], [2.0]];
        let r = routing(array![[2, 0], [0, 1]], array![[0.6, 0.4], [0.7, 0.3]], 3);
        // Expert 0: (t0, c1), (t1, c0); expert 1: (t1, c1); expert 2: (t0, c0).
        assert_eq!(r.dest, array![[3, 0], [1, 2]]);
        assert_eq!(permute(x.view(), &r, false, Precision::F32), array![[1.0], [2.0], [2.0], [1.0]]);
        let back = unpermute(array![[10.0f32], [20.0], [30.0], [40.0]].view(), &r, true, None, Precision::F32);
        assert_eq!(back, array![[0.6 * 40.0 + 0.4 * 10.0], [0.7 * 20.0 + 0.3 * 30.0]]);
    }

    #[test]
    fn unpermute_adds_shared_and_rounds_once() {
        let u = 2f32.powi(-9);
        let r = routing(array![[0, 1]], array![[1.0, 1.0]], 2);
        let e = array![[3.0 * u], [2.0 * u]];
        let shared = array![[1.0f32]];
        // One rounding of 1 + 5u gives 1 + 4u (= 1 + 2^-7). Rounding after each add would give
        // 1 + 3u -> 1 + 4u, then 1 + 6u, a tie that goes to the even 1 + 8u.
        let out = unpermute(e.view(), &r, false, Some(shared.view()), Precision::Bf16);
        assert_eq!(out[[0, 0]], 1.0 + 4.0 * u);
        let out32 = unpermute(e.view(), &r, false, Some(shared.view()), Precision::F32);
        assert_eq!(out32[[0, 0]], 1.0 + 5.0 * u);
    }

    #[test]
    fn fp8_rows_follow_the_permuted_rows() {
        let x = array![[1.0f32, -2.0], [4.0, 8.0]];
        let r = routing(array![[1], [0]], array![[1.0], [1.0]], 2);
        let (q, s) = permute_fp8(x.view(), &r, false, Precision::F32);
        assert_eq!(s, array![8.0 / 448.0, 2.0 / 448.0]);
        assert_eq!(q[[0, 1]], fp8::e4m3_from_f32(448.0));
        assert_eq!(q[[1, 1]], fp8::e4m3_from_f32(-448.0));
    }

    #[test]
    fn padding_rounds_each_expert_up() {
        assert_eq!(padded_offsets(&[3, 0, 5, 8], 4), vec![0, 4, 4, 12, 20]);
        assert_eq!(padded_offsets(&[3, 0, 5], 1), vec![0, 3, 3, 8]);
        assert_eq!(padded_offsets(&[], 128), vec![0]);
    }

    #[test]
    #[should_panic(expected = "align must be at least 1")]
    fn zero_alignment_panics() {
        padded_offsets(&[1], 0);
    }

    proptest! {
        #[test]
        fn round_trip_recovers_the_tokens(
            t in 0usize..12, e in 1usize..6, h in 1usize..5, seed in 0u32..500
        ) {
            let f = |a: usize, b: usize| ((a * 5 + b * 3 + seed as usize) as f32 * 0.7).sin();
            let logits = Array2::from_shape_fn((t, e), |(a, b)| f(a, b));
            let x = Array2::from_shape_fn((t, h), |(a, b)| f(a + 100, b));
            let r1 = route_sigmoid_top1(logits.view(), Precision::Bf16);
            let sorted = permute(x.view(), &r1, false, Precision::F32);
            let back = unpermute(sorted.view(), &r1, false, None, Precision::F32);
            prop_assert_eq!(&back, &x);
            // Top-k unweighted: each token comes back k times (exact for k = 2: x + x).
            let k = 2.min(e);
            let rk = route_softmax_topk(logits.view(), k, true);
            let sorted = permute(x.view(), &rk, false, Precision::F32);
            let back = unpermute(sorted.view(), &rk, false, None, Precision::F32);
            prop_assert_eq!(back, x.mapv(|v| v * k as f32));
        }

        #[test]
        fn padded_offsets_are_aligned_and_large_enough(
            counts in proptest::collection::vec(0u32..300, 0..10), align in 1u32..130
        ) {
            let o = padded_offsets(&counts, align);
            prop_assert_eq!(o.len(), counts.len() + 1);
            for (i, &c) in counts.iter().enumerate() {
                let span = o[i + 1] - o[i];
                prop_assert!(span >= c && span < c + align && span % align == 0);
            }
        }
    }
}
