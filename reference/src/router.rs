//! Token-choice routing: which experts each token goes to, with what weight, and where each (token,
//! choice) pair lands in the expert-sorted order that grouped GEMMs consume.
//!
//! Two styles share one [`Routing`] result:
//! - [`route_sigmoid_top1`] (Llama 4, HF `Llama4Router`): top-1 on the raw logits, weight
//!   `sigmoid(logit)` computed in f32 and rounded to the activation dtype; no softmax, no renormalisation.
//! - [`route_softmax_topk`] (Mixtral / Qwen style): softmax over all E in f32, top-k of the probabilities,
//!   weights in f32, optionally renormalised so the k chosen weights sum to 1.
//!
//! Ties go to the lowest expert index (what `torch.topk` does for equal values); -0.0 ties with 0.0.
//! A +inf logit has softmax probability NaN (as in PyTorch) and ranks first.
//!
//! NaN rule (PyTorch itself would pick NaN as the largest value; a kernel should not): a NaN logit is
//! never chosen, as if it were -inf, and counts as -inf in the softmax denominator (probability 0).
//! Non-NaN experts are always preferred to NaN ones, even -inf or underflowed-to-0 ones. Only when a token
//! has fewer than k non-NaN logits do NaN experts fill the remaining choices, lowest index first:
//! - if every logit of a token is NaN it gets experts 0, 1, .., k-1 and every weight is NaN;
//! - otherwise a NaN-filled choice gets the probability of a -inf logit: 0 whenever the token has a
//!   finite largest logit (weight 0, so the fill-in contributes nothing).
//!
//! Layout: `dest[t, c]` is the row of (token t, choice c) after sorting by expert, stable in (t, c):
//! expert e owns rows `offsets[e]..offsets[e + 1]`, and within it rows follow token order, then choice
//! order. `counts` and `offsets` are exact integers that a kernel must reproduce bit for bit.

use crate::dtype::Precision;
use ndarray::{Array2, ArrayView1, ArrayView2};
use std::cmp::Ordering;

/// The routing of T tokens to E experts, k choices each.
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    /// [T, k] chosen expert ids.
    pub experts: Array2<u32>,
    /// [T, k] routing weights (sigmoid score, or softmax probability).
    pub weights: Array2<f32>,
    /// [E] assignments per expert.
    pub counts: Vec<u32>,
    /// [E + 1] exclusive prefix sum of `counts`.
    pub offsets: Vec<u32>,
    /// [T, k] row of each (token, choice) in expert-sorted order.
    pub dest: Array2<u32>,
}

impl Routing {
    /// Builds counts, offsets and the stable destination rows from chosen experts and their weights.
    ///
    /// Panics if the shapes differ or an expert id is `>= num_experts`.
    pub fn from_choices(experts: Array2<u32>, weights: Array2<f32>, num_experts: usize) -> Routing {
        assert_eq!(
            experts.dim(),
            weights.dim(),
            "routing: experts {:?} and weights {:?} differ in shape",
            experts.dim(),
            weights.dim()
        );
        let mut counts = vec![0u32; num_experts];
        for &e in &experts {
            assert!((e as usize) < num_experts, "routing: expert {e} >= {num_experts} experts");
            counts[e as usize] += 1;
        }
        let mut offsets = vec![0u32; num_experts + 1];
        for e in 0..num_experts {
            offsets[e + 1] = offsets[e] + counts[e];
        }
        // Row-major iteration over [T, k] visits (t, c) in exactly the stable order.
        let mut next = offsets[..num_experts].to_vec();
        let dest = experts.mapv(|e| {
            let row = next[e as usize];
            next[e as usize] += 1;
            row
        });
        Routing { experts, weights, counts, offsets, dest }
    }

    /// Number of experts E.
    pub fn num_experts(&self) -> usize {
        self.counts.len()
    }

    /// Total routed rows, T * k.
    pub fn num_rows(&self) -> usize {
        self.experts.len()
    }

    /// The inverse of `dest`: for each expert-sorted row, its (token, choice).
    pub fn sources(&self) -> Vec<(usize, usize)> {
        let mut src = vec![(0, 0); self.num_rows()];
        for ((t, c), &row) in self.dest.indexed_iter() {
            src[row as usize] = (t, c);
        }
        src
    }
}

/// `1 / (1 + exp(-x))` in f32, as `torch.sigmoid` on a float tensor.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The k best experts of one token by `key`, best first: larger key wins, ties to the lower index, and
/// every expert whose `logit` is NaN ranks after every other expert (then by index). A NaN key (the
/// softmax of a +inf logit, or of a row with no finite logit) ranks as +inf.
fn top_k(logits: ArrayView1<f32>, key: &[f32], k: usize) -> Vec<u32> {
    // -0.0 == 0.0 as in PyTorch, so compare as floats (not bit patterns); NaN keys were mapped away.
    let rank = |x: f32| if x.is_nan() { f32::INFINITY } else { x };
    let mut order: Vec<usize> = (0..key.len()).collect();
    // A stable sort keeps ascending index among equals, which is the tie rule.
    order.sort_by(|&a, &b| {
        let (nan_a, nan_b) = (logits[a].is_nan(), logits[b].is_nan());
        nan_a.cmp(&nan_b).then_with(|| {
            if nan_a {
                Ordering::Equal
            } else {
                rank(key[b]).partial_cmp(&rank(key[a])).expect("ranks are never NaN")
            }
        })
    });
    order[..k].iter().map(|&e| e as u32).collect()
}

/// Llama 4 routing: expert `argmax logits[t]` (ties to the lowest index, NaN never chosen unless all are),
/// weight `round_p(sigmoid(logit))` computed in f32. `logits` is [T, E] as the router linear produced it
/// (already in the activation dtype).
///
/// Panics if E is 0.
pub fn route_sigmoid_top1(logits: ArrayView2<f32>, p: Precision) -> Routing {
    route_sigmoid_topk(logits, 1, p)
}

/// Llama 4's router with `num_experts_per_tok = k`: the k largest raw logits (ties to the lowest index, NaN
/// never before a number), each weighted by its own sigmoid, rounded by `p`. transformers computes exactly
/// this (a -inf score, sigmoid 0, for every expert not chosen).
///
/// Panics if `k` is 0 or larger than E.
pub fn route_sigmoid_topk(logits: ArrayView2<f32>, k: usize, p: Precision) -> Routing {
    let (t, e) = logits.dim();
    assert!(k >= 1 && k <= e, "route_sigmoid_topk: k = {k} with {e} experts");
    let mut experts = Array2::zeros((t, k));
    let mut weights = Array2::zeros((t, k));
    for (ti, row) in logits.rows().into_iter().enumerate() {
        for (c, best) in top_k(row, &row.to_vec(), k).into_iter().enumerate() {
            experts[[ti, c]] = best;
            // sigmoid(NaN) is NaN: the all-NaN token gets weight NaN as documented.
            weights[[ti, c]] = p.round(sigmoid(row[best as usize]));
        }
    }
    Routing::from_choices(experts, weights, e)
}

/// Softmax-style routing: `probs = softmax(logits[t])` over all E in f32 (NaN logits as -inf), the k
/// largest probabilities (ties to the lowest index), weights in f32, divided by their f32 sum when
/// `renormalize`.
///
/// Panics if `k` is 0 or larger than E.
pub fn route_softmax_topk(logits: ArrayView2<f32>, k: usize, renormalize: bool) -> Routing {
    let (t, e) = logits.dim();
    assert!(k >= 1 && k <= e, "route_softmax_topk: k = {k} with {e} experts");
    let mut experts = Array2::zeros((t, k));
    let mut weights = Array2::zeros((t, k));
    for (ti, row) in logits.rows().into_iter().enumerate() {
        let all_nan = row.iter().all(|x| x.is_nan());
        let probs = softmax_nan_as_neg_inf(row);
        let chosen = top_k(row, &probs, k);
        let sum: f32 = chosen.iter().map(|&c| probs[c as usize]).sum();
        for (c, &ex) in chosen.iter().enumerate() {
            let w = probs[ex as usize];
            experts[[ti, c]] = ex;
            weights[[ti, c]] = if all_nan {
                f32::NAN
            } else if renormalize {
                w / sum
            } else {
                w
            };
        }
    }
    Routing::from_choices(experts, weights, e)
}

/// Softmax of one row in f32 with NaN replaced by -inf (probability 0); the denominator is summed in
/// f64. A row with no finite maximum (all NaN / -inf) comes out NaN, like PyTorch's all -inf softmax.
fn softmax_nan_as_neg_inf(row: ArrayView1<f32>) -> Vec<f32> {
    let x: Vec<f32> = row.iter().map(|&v| if v.is_nan() { f32::NEG_INFINITY } else { v }).collect();
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = x.iter().map(|&v| (v - max).exp()).collect();
    let sum: f64 = exps.iter().map(|&v| v as f64).sum();
    exps.iter().map(|&v| (v as f64 / sum) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use proptest::prelude::*;

    const NAN: f32 = f32::NAN;

    #[test]
    fn top1_picks_the_largest_raw_logit_and_its_sigmoid() {
        let logits = array![[0.5f32, 2.0, -1.0], [3.0, 3.0, 1.0], [-5.0, -4.0, -6.0]];
        let r = route_sigmoid_top1(logits.view(), Precision::F32);
        assert_eq!(r.experts, array![[1], [0], [1]]); // the tie in row 1 goes to expert 0
        assert_eq!(r.weights[[0, 0]], sigmoid(2.0));
        assert_eq!(r.counts, vec![1, 2, 0]);
        assert_eq!(r.offsets, vec![0, 1, 3, 3]);
        // Expert 0 owns row 0 (token 1); expert 1 owns rows 1..3 (tokens 0 then 2).
        assert_eq!(r.dest, array![[1], [0], [2]]);
        assert_eq!(r.sources(), vec![(1, 0), (0, 0), (2, 0)]);
    }

    #[test]
    fn top1_sigmoid_is_rounded_in_bf16() {
        let r = route_sigmoid_top1(array![[0.3f32, 0.1]].view(), Precision::Bf16);
        assert_eq!(r.weights[[0, 0]], crate::dtype::round_bf16(sigmoid(0.3)));
        assert_ne!(r.weights[[0, 0]], sigmoid(0.3));
    }

    #[test]
    fn signed_zeros_tie() {
        let r = route_sigmoid_top1(array![[-0.0f32, 0.0]].view(), Precision::F32);
        assert_eq!(r.experts[[0, 0]], 0);
    }

    #[test]
    fn nan_is_never_chosen_over_a_number() {
        let logits = array![[NAN, -1.0, NAN], [NAN, f32::NEG_INFINITY, NAN], [NAN, NAN, NAN]];
        let r = route_sigmoid_top1(logits.view(), Precision::Bf16);
        assert_eq!(r.experts, array![[1], [1], [0]]);
        assert_eq!(r.weights[[1, 0]], 0.0);
        assert!(r.weights[[2, 0]].is_nan() && !r.weights[[0, 0]].is_nan());
    }

    #[test]
    fn softmax_topk_matches_mixtral() {
        let logits = array![[1.0f32, 3.0, 2.0, 0.0]];
        let z: f32 = [1.0f32, 3.0, 2.0, 0.0].iter().map(|&x| (x - 3.0).exp()).sum();
        let r = route_softmax_topk(logits.view(), 2, false);
        assert_eq!(r.experts, array![[1, 2]]);
        assert!((r.weights[[0, 0]] - 1.0 / z).abs() < 1e-7);
        assert!((r.weights[[0, 1]] - (-1.0f32).exp() / z).abs() < 1e-7);
        let rn = route_softmax_topk(logits.view(), 2, true);
        let s = r.weights[[0, 0]] + r.weights[[0, 1]];
        assert_eq!(rn.weights, array![[r.weights[[0, 0]] / s, r.weights[[0, 1]] / s]]);
        assert_eq!(rn.experts, r.experts);
    }

    #[test]
    fn softmax_ties_go_to_the_lowest_index() {
        let r = route_softmax_topk(array![[1.0f32, 2.0, 2.0, 2.0]].view(), 2, true);
        assert_eq!(r.experts, array![[1, 2]]);
        assert_eq!(r.weights, array![[0.5, 0.5]]);
    }

    #[test]
    fn softmax_nan_rules() {
        // NaN counts as -inf in the denominator; an underflowed expert (prob 0) still beats a NaN one.
        let r = route_softmax_topk(array![[NAN, 0.0, -200.0, NAN]].view(), 2, false);
        assert_eq!(r.experts, array![[1, 2]]);
        assert_eq!(r.weights, array![[1.0, 0.0]]);
        // Fewer non-NaN logits than k: NaN experts fill in, lowest first, with weight 0.
        let r = route_softmax_topk(array![[NAN, 0.0, NAN, NAN]].view(), 3, true);
        assert_eq!(r.experts, array![[1, 0, 2]]);
        assert_eq!(r.weights, array![[1.0, 0.0, 0.0]]);
        // All NaN: experts 0..k, weights NaN.
        let r = route_softmax_topk(array![[NAN, NAN, NAN]].view(), 2, true);
        assert_eq!(r.experts, array![[0, 1]]);
        assert!(r.weights.iter().all(|w| w.is_nan()));
    }

    #[test]
    fn no_tokens() {
        let r = route_softmax_topk(Array2::<f32>::zeros((0, 4)).view(), 2, true);
        assert_eq!((r.counts, r.offsets, r.dest.dim()), (vec![0; 4], vec![0; 5], (0, 2)));
    }

    /// Logits without ties, from a seed.
    fn distinct_logits(t: usize, e: usize, seed: u64) -> Array2<f32> {
        Array2::from_shape_fn((t, e), |(a, b)| {
            let x = ((a * e + b) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
        })
    }

    proptest! {
        #[test]
        fn layout_invariants(
            t in 0usize..20, e in 1usize..9, k_raw in 1usize..4, seed in any::<u64>()
        ) {
            let k = k_raw.min(e);
            let logits = distinct_logits(t, e, seed);
            let softmax = route_softmax_topk(logits.view(), k, true);
            let sigmoid = route_sigmoid_top1(logits.view(), Precision::Bf16);
            for r in [softmax, sigmoid] {
                let k = r.experts.ncols();
                prop_assert_eq!(r.counts.iter().sum::<u32>() as usize, t * k);
                prop_assert_eq!(r.offsets[e] as usize, t * k);
                // dest is a permutation of 0..T*k that sorts by expert, stably in (t, c).
                let src = r.sources();
                let mut seen = vec![false; t * k];
                for (&row, &ex) in r.dest.iter().zip(r.experts.iter()) {
                    prop_assert!(!seen[row as usize]);
                    seen[row as usize] = true;
                    prop_assert!(r.offsets[ex as usize] <= row && row < r.offsets[ex as usize + 1]);
                }
                for w in src.windows(2) {
                    let (e0, e1) = (r.experts[w[0]], r.experts[w[1]]);
                    prop_assert!(e0 < e1 || (e0 == e1 && w[0] < w[1]));
                }
                // Each token's choices are distinct and ordered by decreasing logit.
                for (row, ex) in logits.rows().into_iter().zip(r.experts.rows()) {
                    for c in 1..k {
                        prop_assert!(row[ex[c - 1] as usize] > row[ex[c] as usize]);
                    }
                    let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    prop_assert_eq!(row[ex[0] as usize], best);
                }
            }
        }

        #[test]
        fn renormalised_weights_sum_to_one(t in 1usize..6, e in 2usize..9, seed in any::<u64>()) {
            let r = route_softmax_topk(distinct_logits(t, e, seed).view(), 2, true);
            for w in r.weights.rows() {
                prop_assert!((w.sum() - 1.0).abs() < 1e-6);
            }
        }
    }
}
