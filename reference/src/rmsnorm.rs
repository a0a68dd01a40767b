//! RMSNorm as the model contract states it: `n = x * rsqrt(mean(x^2) + eps)` in f32, `n` rounded to the
//! activation dtype, then multiplied by the weight in that dtype (a second rounding).

use crate::dtype::Precision;
use ndarray::{Array2, ArrayView1, ArrayView2, Zip};

/// RMSNorm of every row of `x` [rows, H] with `weight` [H].
pub fn rmsnorm(x: ArrayView2<f32>, weight: ArrayView1<f32>, eps: f32, p: Precision) -> Array2<f32> {
    assert_eq!(x.ncols(), weight.len(), "rmsnorm: x has {} columns, weight {}", x.ncols(), weight.len());
    let mut out = Array2::zeros(x.dim());
    for (row, mut o) in x.rows().into_iter().zip(out.rows_mut()) {
        let inv = inv_rms(row.iter().copied(), eps);
        Zip::from(&mut o).and(row).and(weight).for_each(|o, &v, &w| {
            *o = p.round(p.round(v * inv) * w);
        });
    }
    out
}

/// `rsqrt(mean(x^2) + eps)`: the mean accumulated in f64 (the oracle is at least as accurate as any kernel),
/// the rest in f32.
pub fn inv_rms(values: impl ExactSizeIterator<Item = f32>, eps: f32) -> f32 {
    let n = values.len();
    let ss: f64 = values.map(|v| (v as f64) * (v as f64)).sum();
    let mean = if n == 0 { 0.0 } else { (ss / n as f64) as f32 };
    1.0 / (mean + eps).sqrt()
}

/// The residual add fused in front of the norm: `sum = round(residual + x)`, `y = rmsnorm(sum)`.
/// Returns `(sum, y)`; in the decoder `sum` is the new residual stream.
pub fn add_rmsnorm(
    x: ArrayView2<f32>,
    residual: ArrayView2<f32>,
    weight: ArrayView1<f32>,
    eps: f32,
    p: Precision,
) -> (Array2<f32>, Array2<f32>) {
    assert_eq!(x.dim(), residual.dim(), "add_rmsnorm: x and residual differ in shape");
    let sum = Zip::from(&x).and(&residual).map_collect(|&a, &r| p.round(r + a));
    let y = rmsnorm(sum.view(), weight, eps, p);
    (sum, y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn unit_rows_come_back_scaled_by_the_weight() {
        let x = array![[1.0f32, -1.0, 1.0, -1.0]];
        let w = array![1.0f32, 2.0, 0.5, 1.0];
        let y = rmsnorm(x.view(), w.view(), 0.0, Precision::F32);
        assert_eq!(y, array![[1.0, -2.0, 0.5, -1.0]]);
    }

    #[test]
    fn eps_keeps_zero_rows_finite() {
        let x = Array2::<f32>::zeros((2, 8));
        let w = ndarray::Array1::from_elem(8, 1.0);
        let y = rmsnorm(x.view(), w.view(), 1e-5, Precision::Bf16);
        assert!(y.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn add_rounds_the_sum_before_normalising() {
        let x = array![[1.0f32 / 512.0, 3.0]];
        let r = array![[1.0f32, 1.0]];
        let w = array![1.0f32, 1.0];
        let (sum, _) = add_rmsnorm(x.view(), r.view(), w.view(), 1e-5, Precision::Bf16);
        // 1 + 2^-9 is below half a bf16 ulp of 1.0: it rounds away.
        assert_eq!(sum, array![[1.0, 4.0]]);
    }
}
