//! FP8 E4M3 ("e4m3fn"): 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities; 0x7F / 0xFF are NaN; the
//! largest finite value is 448 (0x7E). Conversion clamps to [-448, 448] first and rounds to nearest even, like
//! the CUDA `__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)` the kernels use. NaN encodes as 0x7F.
//!
//! Quantization recipes (model contract, "FP8"):
//! - rowwise: one f32 scale per row, `scale = max(amax, MIN_AMAX) / 448`, `q = e4m3(x * (1 / scale))`;
//! - blockwise: one scale per 1 x 128 group along K (activations) or per 128 x 128 block (weights).
//!
//! `1 / scale` is one correctly rounded f32 division per group and `x * (1 / scale)` one f32 product per element
//! (as vLLM's quantizers do), so a kernel reproduces these bytes exactly without a division per element. It
//! differs from `x / scale` only when the two land on opposite sides of an E4M3 rounding boundary.

use ndarray::{Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, Axis};

/// Largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;
/// Floor on a group's absolute maximum before it becomes a scale, so an all-zero group gets a finite, positive
/// scale (its values all quantize to 0). The same constant is used by the kernels.
pub const MIN_AMAX: f32 = 1e-12;
/// The canonical NaN encoding.
pub const E4M3_NAN: u8 = 0x7F;
/// K extent of one blockwise-scaling group (DeepSeek-V3 style).
pub const BLOCK: usize = 128;

/// Encodes an f32 as E4M3: NaN -> 0x7F, saturates to +-448, rounds to nearest even (subnormals included).
pub fn e4m3_from_f32(x: f32) -> u8 {
    if x.is_nan() {
        return E4M3_NAN;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs().min(E4M3_MAX);
    // Below 2^-6 (the smallest normal) values are m * 2^-9 with m in 0..=8; m == 8 is the smallest normal,
    // whose encoding (exponent field 1, mantissa 0) is also 8, so the code is m itself.
    if a < 2f32.powi(-6) {
        let m = (a * 512.0).round_ties_even() as u8; // exact scaling by a power of two
        return sign | m;
    }
    // Normal: a = (1 + f) * 2^e with e in -6..=8. Scale the mantissa to 3 fractional bits and round.
    let e = (a.to_bits() >> 23) as i32 - 127;
    let scaled = a * 2f32.powi(3 - e); // in [8, 16), exact
    let mut m = scaled.round_ties_even() as u32; // in 8..=16
    let mut e = e;
    if m == 16 {
        m = 8;
        e += 1;
    }
    // Clamping to 448 = 1.75 * 2^8 keeps e <= 8 and the code <= 0x7E, never the NaN pattern.
    let code = (((e + 7) as u32) << 3) | (m - 8);
    debug_assert!(code <= 0x7E);
    sign | code as u8
}

/// Decodes an E4M3 byte to f32 (0x7F and 0xFF decode to NaN).
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((b >> 3) & 0xF) as i32;
    let man = (b & 0x7) as f32;
    if exp == 0xF && (b & 0x7) == 0x7 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man * 2f32.powi(-9)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

/// The scale of one group: `max(amax, MIN_AMAX) / 448` (NaN elements do not count towards amax).
pub fn scale_for(values: impl IntoIterator<Item = f32>) -> f32 {
    let amax = values.into_iter().fold(0.0f32, |m, v| m.max(v.abs()));
    amax.max(MIN_AMAX) / E4M3_MAX
}

/// Rowwise quantization: one scale per row.
pub fn quantize_rowwise(x: ArrayView2<f32>) -> (Array2<u8>, Array1<f32>) {
    let (rows, cols) = x.dim();
    let mut q = Array2::zeros((rows, cols));
    let mut scales = Array1::zeros(rows);
    for r in 0..rows {
        let s = scale_for(x.row(r).iter().copied());
        scales[r] = s;
        let inv = 1.0 / s;
        for c in 0..cols {
            q[[r, c]] = e4m3_from_f32(x[[r, c]] * inv);
        }
    }
    (q, scales)
}

/// Activation blockwise quantization: one scale per row and 128-wide group along K; the last group of a
/// row may be narrower. Scales are [rows, ceil(K / 128)].
pub fn quantize_groups_1x128(x: ArrayView2<f32>) -> (Array2<u8>, Array2<f32>) {
    let (rows, cols) = x.dim();
    let groups = cols.div_ceil(BLOCK);
    let mut q = Array2::zeros((rows, cols));
    let mut scales = Array2::zeros((rows, groups));
    for r in 0..rows {
        for g in 0..groups {
            let span = g * BLOCK..((g + 1) * BLOCK).min(cols);
            let s = scale_for(span.clone().map(|c| x[[r, c]]));
            scales[[r, g]] = s;
            let inv = 1.0 / s;
            for c in span {
                q[[r, c]] = e4m3_from_f32(x[[r, c]] * inv);
            }
        }
    }
    (q, scales)
}

/// Weight blockwise quantization of one [N, K] matrix: one scale per 128 x 128 block (edge blocks may be
/// smaller). Scales are [ceil(N / 128), ceil(K / 128)].
pub fn quantize_blocks_128x128(w: ArrayView2<f32>) -> (Array2<u8>, Array2<f32>) {
    let (n, k) = w.dim();
    let (bn, bk) = (n.div_ceil(BLOCK), k.div_ceil(BLOCK));
    let mut q = Array2::zeros((n, k));
    let mut scales = Array2::zeros((bn, bk));
    for i in 0..bn {
        for j in 0..bk {
            let rows = i * BLOCK..((i + 1) * BLOCK).min(n);
            let cols = j * BLOCK..((j + 1) * BLOCK).min(k);
            let s = scale_for(rows.clone().flat_map(|r| cols.clone().map(move |c| (r, c))).map(|(r, c)| w[[r, c]]));
            scales[[i, j]] = s;
            let inv = 1.0 / s;
            for r in rows.clone() {
                for c in cols.clone() {
                    q[[r, c]] = e4m3_from_f32(w[[r, c]] * inv);
                }
            }
        }
    }
    (q, scales)
}

/// [`quantize_blocks_128x128`] of every expert of stacked weights [E, N, K] (the grouped GEMM's B operand):
/// bytes [E, N, K] and scales [E, ceil(N / 128), ceil(K / 128)].
pub fn quantize_experts_128x128(w: ArrayView3<f32>) -> (Array3<u8>, Array3<f32>) {
    let (e, n, k) = w.dim();
    let mut q = Array3::zeros((e, n, k));
    let mut scales = Array3::zeros((e, n.div_ceil(BLOCK), k.div_ceil(BLOCK)));
    for g in 0..e {
        let (qg, sg) = quantize_blocks_128x128(w.index_axis(Axis(0), g));
        q.index_axis_mut(Axis(0), g).assign(&qg);
        scales.index_axis_mut(Axis(0), g).assign(&sg);
    }
    (q, scales)
}

/// `q * scale[row]` in f32.
pub fn dequantize_rowwise(q: ArrayView2<u8>, scales: ArrayView1<f32>) -> Array2<f32> {
    let mut out = q.map(|&b| e4m3_to_f32(b));
    for (mut row, &s) in out.rows_mut().into_iter().zip(scales.iter()) {
        row.mapv_inplace(|v| v * s);
    }
    out
}

/// `q * scale[row, col / 128]` in f32.
pub fn dequantize_groups_1x128(q: ArrayView2<u8>, scales: ArrayView2<f32>) -> Array2<f32> {
    Array2::from_shape_fn(q.dim(), |(r, c)| e4m3_to_f32(q[[r, c]]) * scales[[r, c / BLOCK]])
}

/// `q * scale[row / 128, col / 128]` in f32.
pub fn dequantize_blocks_128x128(q: ArrayView2<u8>, scales: ArrayView2<f32>) -> Array2<f32> {
    Array2::from_shape_fn(q.dim(), |(r, c)| e4m3_to_f32(q[[r, c]]) * scales[[r / BLOCK, c / BLOCK]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn expert_blocks_quantize_each_expert_alone() {
        let w = ndarray::Array3::from_shape_fn((3, 130, 260), |(e, n, k)| {
            ((e * 7 + n * 3 + k) as f32 * 0.37).sin() * (1 + e) as f32
        });
        let (q, s) = quantize_experts_128x128(w.view());
        assert_eq!(s.dim(), (3, 2, 3));
        for g in 0..3 {
            let (qg, sg) = quantize_blocks_128x128(w.index_axis(Axis(0), g));
            assert_eq!(q.index_axis(Axis(0), g), qg);
            assert_eq!(s.index_axis(Axis(0), g), sg);
        }
        // Different magnitudes per expert give different scales: the experts are not mixed up.
        assert!(s[[2, 0, 0]] > s[[0, 0, 0]]);
    }

    #[test]
    fn every_code_round_trips() {
        for b in 0u8..=255 {
            let v = e4m3_to_f32(b);
            if b & 0x7F == 0x7F {
                assert!(v.is_nan(), "{b:#04x}");
                continue;
            }
            let back = e4m3_from_f32(v);
            // -0.0 encodes as 0x80, +0.0 as 0x00: both round-trip bit-exactly.
            assert_eq!(back, b, "{b:#04x} -> {v} -> {back:#04x}");
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
        assert_eq!(e4m3_from_f32(1.0), 0x38);
        assert_eq!(e4m3_from_f32(-2.0), 0xC0);
        assert_eq!(e4m3_from_f32(1e9), 0x7E); // saturates, never NaN
        assert_eq!(e4m3_from_f32(-1e9), 0xFE);
        assert_eq!(e4m3_from_f32(f32::INFINITY), 0x7E);
        assert_eq!(e4m3_from_f32(f32::NAN), E4M3_NAN);
        // Halfway between 1.0 (m=0) and 1.125 (m=1): ties to even (1.0); 1.1875 is halfway to 1.25: even is 1.25.
        assert_eq!(e4m3_from_f32(1.0625), 0x38);
        assert_eq!(e4m3_from_f32(1.1875), 0x3A);
        // Halfway between the two smallest subnormals (2^-9 and 2^-8): even is 2^-8.
        assert_eq!(e4m3_from_f32(1.5 * 2f32.powi(-9)), 0x02);
        // Half the smallest subnormal rounds to zero (even).
        assert_eq!(e4m3_from_f32(0.5 * 2f32.powi(-9)), 0x00);
        // 464 is halfway between 448 and the (non-existent) 480: clamped first, so 448.
        assert_eq!(e4m3_from_f32(464.0), 0x7E);
    }

    /// Brute force: the nearest representable value, ties to the even code.
    fn nearest(x: f32) -> u8 {
        let x = x.clamp(-E4M3_MAX, E4M3_MAX);
        let mut best = 0u8;
        let mut best_d = f64::INFINITY;
        for b in 0u8..=255 {
            let v = e4m3_to_f32(b);
            if v.is_nan() || (v == 0.0 && (b & 0x80 != 0) != x.is_sign_negative()) {
                continue;
            }
            let d = (v as f64 - x as f64).abs();
            if d < best_d || (d == best_d && b & 1 == 0) {
                best = b;
                best_d = d;
            }
        }
        best
    }

    proptest! {
        #[test]
        fn matches_brute_force_nearest_even(x in -500.0f32..500.0) {
            prop_assert_eq!(e4m3_from_f32(x), nearest(x));
        }

        #[test]
        fn matches_brute_force_on_small_values(x in -0.05f32..0.05) {
            prop_assert_eq!(e4m3_from_f32(x), nearest(x));
        }
    }

    #[test]
    fn rowwise_scales_use_the_row_amax() {
        let x = ndarray::array![[1.0f32, -4.0, 2.0], [0.0, 0.0, 0.0]];
        let (q, s) = quantize_rowwise(x.view());
        assert_eq!(s[0], 4.0 / 448.0);
        assert_eq!(q[[0, 1]], e4m3_from_f32(-448.0));
        assert_eq!(s[1], MIN_AMAX / 448.0);
        assert!(q.row(1).iter().all(|&b| b == 0));
        let d = dequantize_rowwise(q.view(), s.view());
        assert!((d[[0, 1]] + 4.0).abs() < 1e-6);
    }

    #[test]
    fn blockwise_groups_cover_ragged_edges() {
        let x = Array2::from_shape_fn((3, 300), |(r, c)| ((r * 300 + c) as f32 * 0.37).sin() * (1 + c / 128) as f32);
        let (q, s) = quantize_groups_1x128(x.view());
        assert_eq!(s.dim(), (3, 3));
        let d = dequantize_groups_1x128(q.view(), s.view());
        for ((r, c), v) in x.indexed_iter() {
            assert!((d[[r, c]] - v).abs() <= s[[r, c / BLOCK]] * 16.0 + 1e-6, "{r},{c}");
        }
        let (qw, sw) = quantize_blocks_128x128(x.view());
        assert_eq!(sw.dim(), (1, 3));
        let dw = dequantize_blocks_128x128(qw.view(), sw.view());
        assert!(dw.iter().all(|v| v.is_finite()));
    }
}
