//! Expert weight preparation: checkpoint expert weights W [E, K, N] (as used in `x @ W`: gate_up [E, H, 2I],
//! down [E, I, H]) become the grouped GEMM's operand B [E, N, K] (each expert's weight as nn.Linear [out, in])
//! quantized rowwise to FP8 E4M3 with one f32 scale per (expert, output column) (model contract, "FP8").
//!
//! Written as the two steps it is: transpose each expert's [K, N] matrix to [N, K], then
//! [`crate::fp8::quantize_rowwise`] (scale = max(amax, 1e-12) / 448, q = e4m3(w * (1 / scale))).

use crate::fp8::quantize_rowwise;
use ndarray::{Array2, Array3, ArrayView3, Axis};

/// Where output row `n` of a gate_up weight with `cols` output rows (gate = the first half, up = the second)
/// goes when gate and up rows are interleaved for the grouped GEMM's SwiGLU epilogue: gate j to row 2j, up j
/// to row 2j + 1.
pub fn gate_up_interleaved_row(n: usize, cols: usize) -> usize {
    let half = cols / 2;
    if n < half {
        2 * n
    } else {
        2 * (n - half) + 1
    }
}

/// [`quantize_expert_weights`] of a gate_up weight w [E, K, N] (N even), output rows interleaved by
/// [`gate_up_interleaved_row`]: row 2j of expert e is gate column j, row 2j + 1 up column j (scales alike).
pub fn quantize_gate_up_interleaved(w: ArrayView3<f32>) -> (Array3<u8>, Array2<f32>) {
    let (e, k, n) = w.dim();
    assert!(n % 2 == 0, "weight_prep: gate_up interleaving needs an even N (got {n})");
    let (q, s) = quantize_expert_weights(w);
    let mut qi = Array3::zeros((e, n, k));
    let mut si = Array2::zeros((e, n));
    for g in 0..e {
        for r in 0..n {
            let to = gate_up_interleaved_row(r, n);
            qi.index_axis_mut(Axis(0), g).row_mut(to).assign(&q.index_axis(Axis(0), g).row(r));
            si[[g, to]] = s[[g, r]];
        }
    }
    (qi, si)
}

/// Returns (q [E, N, K], scales [E, N]) for w [E, K, N].
pub fn quantize_expert_weights(w: ArrayView3<f32>) -> (Array3<u8>, Array2<f32>) {
    let (e, k, n) = w.dim();
    let mut q = Array3::zeros((e, n, k));
    let mut scales = Array2::zeros((e, n));
    for g in 0..e {
        let transposed = w.index_axis(Axis(0), g).reversed_axes(); // [N, K] view
        let (qg, sg) = quantize_rowwise(transposed);
        q.index_axis_mut(Axis(0), g).assign(&qg);
        scales.row_mut(g).assign(&sg);
    }
    (q, scales)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fp8::{dequantize_rowwise, e4m3_from_f32, E4M3_NAN, MIN_AMAX};
    use ndarray::array;

    #[test]
    fn columns_become_rows_with_their_own_scales() {
        // Expert 0: column 0 has amax 4, column 1 is all zeros, column 2 holds a NaN (ignored by its amax).
        // Expert 1: column 0 holds an infinity (scale inf, every byte NaN as x * 0 is NaN only for inf).
        let w = array![[[1.0f32, 0.0, f32::NAN], [-4.0, 0.0, 2.0]], [[f32::INFINITY, 1.0, -1.0], [3.0, -0.5, 0.25]],];
        let (q, s) = quantize_expert_weights(w.view());
        assert_eq!(q.dim(), (2, 3, 2));
        assert_eq!(s.dim(), (2, 3));
        assert_eq!(s[[0, 0]], 4.0 / 448.0);
        assert_eq!(q[[0, 0, 1]], e4m3_from_f32(-448.0));
        assert_eq!(q[[0, 0, 0]], e4m3_from_f32(1.0 * (1.0 / (4.0 / 448.0))));
        assert_eq!(s[[0, 1]], MIN_AMAX / 448.0);
        assert_eq!((q[[0, 1, 0]], q[[0, 1, 1]]), (0, 0));
        assert_eq!(s[[0, 2]], 2.0 / 448.0);
        assert_eq!((q[[0, 2, 0]], q[[0, 2, 1]]), (E4M3_NAN, e4m3_from_f32(448.0)));
        assert_eq!(s[[1, 0]], f32::INFINITY);
        assert_eq!((q[[1, 0, 0]], q[[1, 0, 1]]), (E4M3_NAN, 0));
        assert_eq!(s[[1, 1]], 1.0 / 448.0);
        // Dequantized rows are the transposed columns, to E4M3 precision.
        let d =
            dequantize_rowwise(q.index_axis(Axis(0), 1).slice(ndarray::s![1.., ..]), s.row(1).slice(ndarray::s![1..]));
        assert_eq!(d, array![[1.0f32, -0.5], [-1.0, 0.25]]);
    }

    #[test]
    fn interleaving_pairs_each_gate_row_with_its_up_row() {
        // Two experts, K = 2, N = 4: gate columns 0, 1 and up columns 2, 3.
        let w = Array3::from_shape_fn((2, 2, 4), |(g, k, n)| (1 + g * 100 + k * 10 + n) as f32);
        let (q, s) = quantize_expert_weights(w.view());
        let (qi, si) = quantize_gate_up_interleaved(w.view());
        for (from, to) in [(0, 0), (2, 1), (1, 2), (3, 3)] {
            assert_eq!(gate_up_interleaved_row(from, 4), to);
            for g in 0..2 {
                assert_eq!(qi.index_axis(Axis(0), g).row(to), q.index_axis(Axis(0), g).row(from));
                assert_eq!(si[[g, to]], s[[g, from]]);
            }
        }
    }

    #[test]
    fn empty_k_gives_the_scales_of_empty_rows() {
        let (q, s) = quantize_expert_weights(Array3::<f32>::zeros((2, 0, 3)).view());
        assert_eq!(q.dim(), (2, 3, 0));
        assert!(s.iter().all(|&v| v == MIN_AMAX / 448.0));
    }
}
