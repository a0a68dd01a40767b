//! SwiGLU over the gate/up halves of a fused projection: `h = silu(g) * u`, where row t of `gate_up` is
//! `[g_0 .. g_{I-1}, u_0 .. u_{I-1}]` (the checkpoint's gate_up_proj puts the gate in the first I columns).
//! Rounded as PyTorch does in the activation dtype: `silu(g)` is computed in f32 and rounded, then the product
//! of two activation-dtype tensors is rounded again.

use crate::dtype::Precision;
use crate::fp8;
use ndarray::{Array1, Array2, ArrayView2};

/// `x * sigmoid(x)` in f32.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `h[t, j] = round(round(silu(g[t, j])) * u[t, j])` for `gate_up` [T, 2I]; returns [T, I].
pub fn swiglu(gate_up: ArrayView2<f32>, p: Precision) -> Array2<f32> {
    let (t, two_i) = gate_up.dim();
    assert!(two_i % 2 == 0, "swiglu: gate_up has an odd number of columns ({two_i})");
    let i = two_i / 2;
    Array2::from_shape_fn((t, i), |(r, c)| {
        let g = gate_up[[r, c]];
        let u = gate_up[[r, c + i]];
        p.round(p.round(silu(g)) * u)
    })
}

/// SwiGLU followed by rowwise FP8 quantization of `h` (the down projection's input): `(q [T, I], scales [T])`.
pub fn swiglu_quant(gate_up: ArrayView2<f32>, p: Precision) -> (Array2<u8>, Array1<f32>) {
    fp8::quantize_rowwise(swiglu(gate_up, p).view())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn silu_known_values() {
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((silu(-20.0)).abs() < 1e-7);
    }

    #[test]
    fn gate_is_the_first_half() {
        let gu = array![[0.0f32, 10.0, 5.0, 2.0]];
        let h = swiglu(gu.view(), Precision::F32);
        assert_eq!(h[[0, 0]], 0.0); // silu(0) * 5
        assert!((h[[0, 1]] - silu(10.0) * 2.0).abs() < 1e-6);
    }
}
