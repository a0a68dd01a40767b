//! Dense matrix products, in the two weight layouts the checkpoint uses:
//! - [`linear`]: `nn.Linear` weights `[out, in]`, applied as `x @ w^T` (attention projections, router,
//!   dense MLP, shared expert, lm_head);
//! - [`matmul`]: plain `[in, out]` weights applied as `x @ w` (the routed experts' `gate_up_proj` and
//!   `down_proj`, which the checkpoint stores pre-transposed for `torch.bmm`).
//!
//! Products and sums are f64, so the oracle is at least as accurate as any kernel's f32 accumulator. The
//! sum is then rounded once to f32 (the dtype a bf16 GEMM accumulates and rounds from in PyTorch) and then
//! by `p`: in bf16 the model rounds every matmul output to bf16.

use crate::dtype::Precision;
use ndarray::{s, Array2, ArrayView2};

/// Output features handled per f64 block: bounds the f64 copy of a weight (a full f64 copy of a vocab-sized
/// lm_head would double its memory) while keeping each block large enough for a fast f64 GEMM.
const OUT_BLOCK: usize = 256;

/// `x [T, in] @ w^T` with `w` an `nn.Linear` weight `[out, in]`; returns `[T, out]` rounded by `p`.
///
/// Panics if the inner dimensions differ.
pub fn linear(x: ArrayView2<f32>, w: ArrayView2<f32>, p: Precision) -> Array2<f32> {
    assert_eq!(
        x.ncols(),
        w.ncols(),
        "linear: x is [{}, {}] but the nn.Linear weight is [out {}, in {}]",
        x.nrows(),
        x.ncols(),
        w.nrows(),
        w.ncols()
    );
    x_times_rows_t(x, w, p)
}

/// `x [T, in] @ w [in, out]` (checkpoint expert layout); returns `[T, out]` rounded by `p`.
///
/// Panics if the inner dimensions differ.
pub fn matmul(x: ArrayView2<f32>, w: ArrayView2<f32>, p: Precision) -> Array2<f32> {
    assert_eq!(
        x.ncols(),
        w.nrows(),
        "matmul: x is [{}, {}] but the weight is [in {}, out {}]",
        x.nrows(),
        x.ncols(),
        w.nrows(),
        w.ncols()
    );
    // x @ w == x @ (w^T)^T: the transposed view is [out, in], the nn.Linear layout.
    x_times_rows_t(x, w.t(), p)
}

/// `x [T, in] @ rows^T` for `rows [out, in]` (any strides), f64 throughout, one rounding to f32 then `p`.
fn x_times_rows_t(x: ArrayView2<f32>, rows: ArrayView2<f32>, p: Precision) -> Array2<f32> {
    let (t, n_out) = (x.nrows(), rows.nrows());
    let x64 = x.mapv(f64::from);
    let mut out = Array2::zeros((t, n_out));
    for start in (0..n_out).step_by(OUT_BLOCK) {
        let end = (start + OUT_BLOCK).min(n_out);
        let block64 = rows.slice(s![start..end, ..]).mapv(f64::from);
        let prod = x64.dot(&block64.t());
        out.slice_mut(s![.., start..end]).zip_mut_with(&prod, |o, &v| *o = p.round(v as f32));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::round_bf16;
    use ndarray::array;
    use proptest::prelude::*;

    /// The definition, one dot product at a time.
    fn naive_linear(x: ArrayView2<f32>, w: ArrayView2<f32>) -> Array2<f64> {
        Array2::from_shape_fn((x.nrows(), w.nrows()), |(t, o)| {
            (0..x.ncols()).map(|i| x[[t, i]] as f64 * w[[o, i]] as f64).sum()
        })
    }

    #[test]
    fn small_known_product() {
        let x = array![[1.0f32, 2.0], [3.0, 4.0]];
        let w = array![[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]]; // [out 3, in 2]
        assert_eq!(linear(x.view(), w.view(), Precision::F32), array![[1.0, 2.0, 3.0], [3.0, 4.0, 7.0]]);
        assert_eq!(matmul(x.view(), w.t(), Precision::F32), array![[1.0, 2.0, 3.0], [3.0, 4.0, 7.0]]);
    }

    #[test]
    fn empty_dimensions() {
        let x = Array2::<f32>::zeros((0, 4));
        let w = Array2::<f32>::zeros((3, 4));
        assert_eq!(linear(x.view(), w.view(), Precision::Bf16).dim(), (0, 3));
        // in == 0: an empty sum is 0.
        let x = Array2::<f32>::zeros((2, 0));
        let w = Array2::<f32>::zeros((3, 0));
        assert_eq!(linear(x.view(), w.view(), Precision::F32), Array2::zeros((2, 3)));
    }

    #[test]
    fn wide_outputs_cross_block_boundaries() {
        let (t, i, o) = (3, 5, OUT_BLOCK * 2 + 7);
        let x = Array2::from_shape_fn((t, i), |(a, b)| ((a * 7 + b) as f32 * 0.3).sin());
        let w = Array2::from_shape_fn((o, i), |(a, b)| ((a * 3 + b) as f32 * 0.11).cos());
        let got = linear(x.view(), w.view(), Precision::F32);
        let want = naive_linear(x.view(), w.view()).mapv(|v| v as f32);
        assert_eq!(got, want);
    }

    #[test]
    fn f64_accumulation_survives_cancellation() {
        // In f32, 1e8 + 1 - 1e8 loses the 1; the f64 sum keeps it exactly.
        let x = array![[1e8f32, 1.0, -1e8]];
        let w = array![[1.0f32, 1.0, 1.0]];
        assert_eq!(linear(x.view(), w.view(), Precision::F32)[[0, 0]], 1.0);
    }

    #[test]
    fn bf16_rounds_the_output_once() {
        // 1 + 3 * 2^-9 rounds to 1 + 2^-7 (a bf16 ulp at 1 is 2^-7). Rounding after every partial sum
        // would lose each 2^-9 in turn and give 1.
        let x = array![[1.0f32, 2f32.powi(-9), 2f32.powi(-9), 2f32.powi(-9)]];
        let w = array![[1.0f32, 1.0, 1.0, 1.0]];
        let y = linear(x.view(), w.view(), Precision::Bf16)[[0, 0]];
        assert_eq!(y, 1.0 + 2f32.powi(-7));
    }

    #[test]
    #[should_panic(expected = "linear: x is [1, 2]")]
    fn inner_dimension_mismatch_panics() {
        linear(Array2::zeros((1, 2)).view(), Array2::zeros((3, 4)).view(), Precision::F32);
    }

    proptest! {
        #[test]
        fn linear_and_matmul_agree_and_round(
            t in 0usize..4, i in 0usize..6, o in 0usize..5, seed in 0u32..1000
        ) {
            let f = |a: usize, b: usize, k: u32| {
                ((a * 31 + b * 17 + (seed + k) as usize) as f32).sin()
            };
            let x = Array2::from_shape_fn((t, i), |(a, b)| f(a, b, 0));
            let w = Array2::from_shape_fn((o, i), |(a, b)| f(a, b, 1));
            let w_in_out = w.t().as_standard_layout().into_owned();
            for p in [Precision::F32, Precision::Bf16] {
                let a = linear(x.view(), w.view(), p);
                let b = matmul(x.view(), w_in_out.view(), p);
                prop_assert_eq!(&a, &b);
                let want = naive_linear(x.view(), w.view()).mapv(|v| p.round(v as f32));
                prop_assert_eq!(&a, &want);
                if p == Precision::Bf16 {
                    prop_assert!(a.iter().all(|&v| round_bf16(v) == v));
                }
            }
        }
    }
}
