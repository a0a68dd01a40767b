//! Attention pre-processing of one layer, step by step as the model contract orders it:
//! RoPE on adjacent pairs with llama3 frequency scaling (RoPE layers), per-head QK RMS norm after RoPE
//! (RoPE layers with use_qk_norm), and temperature scaling of q by absolute position (NoPE layers with
//! attn_temperature_tuning). Every step computes in f32 and rounds back to the activation dtype.

use crate::dtype::Precision;
use crate::rmsnorm::inv_rms;
use ndarray::{s, Array3, ArrayView2};

pub use llama4_contract::{HeadLayout, LayerKind, Llama3Scaling, Temperature};

/// `inv_freq[j]` for j in 0..head_dim/2, in f32 exactly as transformers computes it: the contract's one
/// derivation, [`llama4_contract::rope_inv_freq`] (which spells out PyTorch's order of roundings).
pub fn inv_freq(theta: f32, head_dim: usize, scaling: Option<Llama3Scaling>) -> Vec<f32> {
    assert!(head_dim % 2 == 0, "rope: head_dim {head_dim} is odd");
    llama4_contract::rope_inv_freq(theta, head_dim, scaling)
}

/// Rotates every head of `x` [T, heads, D] in place: token t by angle `pos[t] * inv_freq[j]` (f32 product),
/// pair (2j, 2j+1) as the complex product `(x0 + i x1)(cos + i sin)`, rounded back.
pub fn apply_rope(x: &mut Array3<f32>, pos: &[u32], inv_freq: &[f32], p: Precision) {
    let (t, heads, d) = x.dim();
    assert_eq!(pos.len(), t, "rope: {} positions for {t} tokens", pos.len());
    assert_eq!(inv_freq.len() * 2, d, "rope: {} frequencies for head_dim {d}", inv_freq.len());
    for ti in 0..t {
        for (j, &f) in inv_freq.iter().enumerate() {
            let angle = pos[ti] as f32 * f;
            let (sin, cos) = angle.sin_cos();
            for h in 0..heads {
                let (x0, x1) = (x[[ti, h, 2 * j]], x[[ti, h, 2 * j + 1]]);
                x[[ti, h, 2 * j]] = p.round(x0 * cos - x1 * sin);
                x[[ti, h, 2 * j + 1]] = p.round(x0 * sin + x1 * cos);
            }
        }
    }
}

/// Per-head RMS norm over head_dim with no weight (Llama4TextL2Norm), in f32, rounded back.
pub fn qk_norm(x: &mut Array3<f32>, eps: f32, p: Precision) {
    for mut head in x.rows_mut() {
        let inv = inv_rms(head.iter().copied(), eps);
        head.mapv_inplace(|v| p.round(v * inv));
    }
}

/// The NoPE-layer query temperature at absolute position `pos`:
/// `log(floor((pos + 1) / floor_scale) + 1) * attn_scale + 1`, in f32 (exactly 1 below pos = floor_scale - 1).
pub fn temperature(pos: u32, floor_scale: f32, attn_scale: f32) -> f32 {
    (((pos as f32 + 1.0) / floor_scale).floor() + 1.0).ln() * attn_scale + 1.0
}

/// Multiplies every query head of token t by `temperature(pos[t])`, rounded back.
pub fn apply_temperature(q: &mut Array3<f32>, pos: &[u32], floor_scale: f32, attn_scale: f32, p: Precision) {
    for (ti, mut tok) in q.outer_iter_mut().enumerate() {
        let s = temperature(pos[ti], floor_scale, attn_scale);
        tok.mapv_inplace(|v| p.round(v * s));
    }
}

/// Splits a fused projection `qkv` [T, (Hq + 2 Hkv) * D] (q heads, then k heads, then v heads) and applies the
/// layer's pre-processing. Returns `(q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D])`.
pub fn prepare_qkv(
    qkv: ArrayView2<f32>,
    pos: &[u32],
    layout: HeadLayout,
    kind: &LayerKind,
    p: Precision,
) -> (Array3<f32>, Array3<f32>, Array3<f32>) {
    let HeadLayout { n_heads, n_kv_heads, head_dim } = layout;
    let t = qkv.nrows();
    let (qw, kw) = (n_heads * head_dim, n_kv_heads * head_dim);
    assert_eq!(qkv.ncols(), qw + 2 * kw, "prepare_qkv: qkv has {} columns", qkv.ncols());
    let split = |a: usize, b: usize, h: usize| {
        qkv.slice(s![.., a..b]).to_owned().into_shape_with_order((t, h, head_dim)).expect("contiguous")
    };
    let mut q = split(0, qw, n_heads);
    let mut k = split(qw, qw + kw, n_kv_heads);
    let v = split(qw + kw, qw + 2 * kw, n_kv_heads);
    match kind {
        LayerKind::Rope { inv_freq, qk_norm: norm } => {
            apply_rope(&mut q, pos, inv_freq, p);
            apply_rope(&mut k, pos, inv_freq, p);
            if let Some(eps) = *norm {
                qk_norm(&mut q, eps, p);
                qk_norm(&mut k, eps, p);
            }
        }
        LayerKind::NoPe { temperature: Some(Temperature { floor_scale, attn_scale }) } => {
            apply_temperature(&mut q, pos, *floor_scale, *attn_scale, p)
        }
        LayerKind::NoPe { temperature: None } => {}
    }
    (q, k, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCOUT: Llama3Scaling = Llama3Scaling {
        factor: 16.0,
        low_freq_factor: 1.0,
        high_freq_factor: 1.0,
        original_max_position_embeddings: 8192.0,
    };

    #[test]
    fn unscaled_frequencies_fall_geometrically() {
        let f = inv_freq(10000.0, 8, None);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 0.1).abs() < 1e-7 && (f[2] - 0.01).abs() < 1e-8);
    }

    #[test]
    fn low_equal_high_never_makes_nan() {
        let f = inv_freq(500000.0, 128, Some(SCOUT));
        let plain = inv_freq(500000.0, 128, None);
        for (j, (&a, &b)) in f.iter().zip(&plain).enumerate() {
            assert!(a.is_finite());
            let wl = 2.0 * std::f32::consts::PI / b;
            let expect = if wl > 8192.0 { b / 16.0 } else { b };
            assert_eq!(a, expect, "j={j}");
        }
    }

    #[test]
    fn smooth_band_interpolates() {
        let sc = Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64.0,
        };
        let f = inv_freq(10000.0, 16, Some(sc));
        let plain = inv_freq(10000.0, 16, None);
        let mut saw_band = false;
        for (&a, &b) in f.iter().zip(&plain) {
            assert!(a <= b && a >= b / 8.0 * (1.0 - 1e-6));
            saw_band |= a < b && a > b / 8.0;
        }
        assert!(saw_band, "head_dim 16, orig 64 must put a frequency in the smooth band");
    }

    #[test]
    fn rope_is_adjacent_pair_rotation() {
        let mut x = Array3::from_shape_vec((1, 1, 4), vec![1.0f32, 0.0, 0.0, 1.0]).unwrap();
        apply_rope(&mut x, &[1], &[std::f32::consts::FRAC_PI_2, 0.0], Precision::F32);
        assert!((x[[0, 0, 0]]).abs() < 1e-7 && (x[[0, 0, 1]] - 1.0).abs() < 1e-7);
        assert_eq!((x[[0, 0, 2]], x[[0, 0, 3]]), (0.0, 1.0));
    }

    #[test]
    fn temperature_is_one_until_floor_scale() {
        assert_eq!(temperature(0, 8.0, 0.1), 1.0);
        assert_eq!(temperature(6, 8.0, 0.1), 1.0);
        assert!((temperature(7, 8.0, 0.1) - (1.0 + 0.1 * 2f32.ln())).abs() < 1e-7);
    }
}
