//! FP8 (E4M3) grouped GEMM: `out[m, :] = A[m, :] @ B[e]^T` for every row m of expert e's group
//! `offsets[e]..offsets[e + 1]`, with `A` [M, K] the expert-sorted activations and `B` [E, N, K] the
//! expert weights (one `[N, K]` matrix per expert, K contiguous, as `_scaled_grouped_mm` and DeepGEMM take
//! them). Two scaling recipes (model contract, "FP8"):
//! - [`grouped_gemm_rowwise`]: one scale per activation row and one per weight output channel, applied
//!   once to the whole dot product;
//! - [`grouped_gemm_blockwise`]: 1 x 128 activation groups and 128 x 128 weight blocks; each 128-wide K
//!   group's partial sum gets its own pair of scales (DeepSeek-V3 style).
//!
//! Bytes decode with [`crate::fp8::e4m3_to_f32`] (exact in f64), products and sums are f64, the result is
//! rounded once to f32. Kernels write bf16; compare them after rounding, with the contract's tolerance.
//!
//! Every row must belong to exactly one group: `offsets` has E + 1 monotone entries from 0 to M. A padded
//! layout is expressed by padding rows inside the groups (see [`crate::permute::padded_offsets`]).

use crate::dtype::{round_bf16, Precision};
use crate::fp8::{e4m3_to_f32, BLOCK};
use crate::swiglu::swiglu_quant;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayView3};

/// Rowwise-scaled grouped GEMM: `out[m, n] = (sum_k a[m, k] b[e, n, k]) * a_scale[m] * b_scale[e, n]`.
/// Shapes: `a_q` [M, K], `a_scale` [M], `b_q` [E, N, K], `b_scale` [E, N], `offsets` [E + 1]; returns
/// [M, N]. Any shape or offset inconsistency is an `Err` saying which.
pub fn grouped_gemm_rowwise(
    a_q: ArrayView2<u8>,
    a_scale: ArrayView1<f32>,
    b_q: ArrayView3<u8>,
    b_scale: ArrayView2<f32>,
    offsets: &[u32],
) -> Result<Array2<f32>, String> {
    let (m, k) = a_q.dim();
    let (e, n, bk) = b_q.dim();
    check_shapes(m, k, e, bk, offsets)?;
    expect_dim("a_scale", &[a_scale.len()], &[m])?;
    expect_dim("b_scale", &[b_scale.nrows(), b_scale.ncols()], &[e, n])?;
    let (a, b) = (decode(a_q.iter().copied()), decode(b_q.iter().copied()));
    let a_row = |r: usize| &a[r * k..(r + 1) * k];
    let b_row = |g: usize, c: usize| &b[(g * n + c) * k..(g * n + c + 1) * k];
    let mut out = Array2::zeros((m, n));
    for g in 0..e {
        for r in offsets[g] as usize..offsets[g + 1] as usize {
            for c in 0..n {
                let acc = dot(a_row(r), b_row(g, c));
                out[[r, c]] = (acc * a_scale[r] as f64 * b_scale[[g, c]] as f64) as f32;
            }
        }
    }
    Ok(out)
}

/// gate_up with the SwiGLU epilogue (kernels/grouped_gemm.cu): the rowwise GEMM against gate_up weights whose
/// rows are interleaved (row 2j = gate j, 2j + 1 = up j, [`crate::weight_prep::quantize_gate_up_interleaved`]),
/// rounded to bf16 as the plain GEMM's output is, de-interleaved to [g | u], then
/// [`crate::swiglu::swiglu_quant`] in bf16: `(q [M, N/2], scales [M])`, the down projection's FP8 input. The same
/// recipe as the unfused GEMM (plain weights) + SwiGLU + rowwise quantization.
pub fn grouped_gemm_swiglu_rowwise(
    a_q: ArrayView2<u8>,
    a_scale: ArrayView1<f32>,
    b_q_interleaved: ArrayView3<u8>,
    b_scale_interleaved: ArrayView2<f32>,
    offsets: &[u32],
) -> Result<(Array2<u8>, Array1<f32>), String> {
    let n = b_q_interleaved.dim().1;
    if n % 2 != 0 {
        return Err(format!("grouped_gemm: SwiGLU needs an even N (gate and up interleaved), got {n}"));
    }
    let d = grouped_gemm_rowwise(a_q, a_scale, b_q_interleaved, b_scale_interleaved, offsets)?;
    let half = n / 2;
    let gate_up = Array2::from_shape_fn((d.nrows(), n), |(r, c)| {
        let col = if c < half { 2 * c } else { 2 * (c - half) + 1 };
        round_bf16(d[[r, col]])
    });
    Ok(swiglu_quant(gate_up.view(), Precision::Bf16))
}

/// 128 x 128 blockwise-scaled grouped GEMM: `out[m, n] = sum_j (sum_{k in group j} a[m, k] b[e, n, k]) *
/// a_scale[m, j] * b_scale[e, n / 128, j]` over the K groups `j` (the last may be narrower).
/// Shapes: `a_q` [M, K], `a_scale` [M, ceil(K/128)], `b_q` [E, N, K], `b_scale`
/// [E, ceil(N/128), ceil(K/128)], `offsets` [E + 1]; returns [M, N]. Inconsistencies are an `Err`.
pub fn grouped_gemm_blockwise(
    a_q: ArrayView2<u8>,
    a_scale: ArrayView2<f32>,
    b_q: ArrayView3<u8>,
    b_scale: ArrayView3<f32>,
    offsets: &[u32],
) -> Result<Array2<f32>, String> {
    let (m, k) = a_q.dim();
    let (e, n, bk) = b_q.dim();
    check_shapes(m, k, e, bk, offsets)?;
    let kg = k.div_ceil(BLOCK);
    expect_dim("a_scale", &[a_scale.nrows(), a_scale.ncols()], &[m, kg])?;
    let (s0, s1, s2) = b_scale.dim();
    expect_dim("b_scale", &[s0, s1, s2], &[e, n.div_ceil(BLOCK), kg])?;
    let (a, b) = (decode(a_q.iter().copied()), decode(b_q.iter().copied()));
    let mut out = Array2::zeros((m, n));
    for g in 0..e {
        for r in offsets[g] as usize..offsets[g + 1] as usize {
            for c in 0..n {
                let b_row = &b[(g * n + c) * k..(g * n + c + 1) * k];
                let a_row = &a[r * k..(r + 1) * k];
                let mut acc = 0.0f64;
                for j in 0..kg {
                    let span = j * BLOCK..((j + 1) * BLOCK).min(k);
                    let partial = dot(&a_row[span.clone()], &b_row[span]);
                    acc += partial * a_scale[[r, j]] as f64 * b_scale[[g, c / BLOCK, j]] as f64;
                }
                out[[r, c]] = acc as f32;
            }
        }
    }
    Ok(out)
}

/// Decodes E4M3 bytes (in the iterator's order, row-major for a standard view) to f64.
fn decode(bytes: impl Iterator<Item = u8>) -> Vec<f64> {
    let table: Vec<f64> = (0..=255u8).map(|b| e4m3_to_f32(b) as f64).collect();
    bytes.map(|b| table[b as usize]).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn expect_dim(what: &str, got: &[usize], want: &[usize]) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("grouped_gemm: {what} has shape {got:?}, want {want:?}"))
    }
}

/// The checks both recipes share: K agrees, E + 1 offsets, monotone, within M, covering every row.
fn check_shapes(m: usize, k: usize, e: usize, bk: usize, offsets: &[u32]) -> Result<(), String> {
    if bk != k {
        return Err(format!("grouped_gemm: A has K = {k} but B has K = {bk}"));
    }
    if offsets.len() != e + 1 {
        return Err(format!("grouped_gemm: {} offsets for {e} experts (want E + 1)", offsets.len()));
    }
    if let Some(i) = (0..e).find(|&i| offsets[i] > offsets[i + 1]) {
        return Err(format!(
            "grouped_gemm: offsets not monotone: offsets[{i}] = {} > offsets[{}] = {}",
            offsets[i],
            i + 1,
            offsets[i + 1]
        ));
    }
    let end = offsets[e] as usize;
    if end > m {
        return Err(format!("grouped_gemm: offsets[E] = {end} exceeds M = {m} rows of A"));
    }
    if offsets[0] != 0 || end != m {
        return Err(format!(
            "grouped_gemm: rows outside every group: groups cover {}..{end} of M = {m} rows",
            offsets[0]
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fp8::{
        dequantize_blocks_128x128, dequantize_groups_1x128, dequantize_rowwise, e4m3_from_f32, quantize_blocks_128x128,
        quantize_groups_1x128, quantize_rowwise,
    };
    use ndarray::{Array1, Array3, Axis};
    use proptest::prelude::*;

    fn wave(shape: (usize, usize), seed: f32) -> Array2<f32> {
        Array2::from_shape_fn(shape, |(a, b)| ((a * 13 + b * 7) as f32 * 0.29 + seed).sin() * (1 + a % 3) as f32)
    }

    /// Dequantize first, then an f64 matmul per group: must agree with the fused formula to f32 rounding.
    fn dequant_reference(a: &Array2<f32>, b: &[Array2<f32>], offsets: &[u32]) -> Array2<f64> {
        let mut out = Array2::zeros((a.nrows(), b[0].nrows()));
        for (g, bg) in b.iter().enumerate() {
            for r in offsets[g] as usize..offsets[g + 1] as usize {
                for c in 0..bg.nrows() {
                    out[[r, c]] = (0..a.ncols()).map(|i| a[[r, i]] as f64 * bg[[c, i]] as f64).sum();
                }
            }
        }
        out
    }

    fn close(got: &Array2<f32>, want: &Array2<f64>) {
        for (idx, &w) in want.indexed_iter() {
            assert!((got[idx] as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()), "{idx:?}: {} vs {w}", got[idx]);
        }
    }

    #[test]
    fn rowwise_by_hand() {
        // One expert, one row: (1 * 2 + 0.5 * 4) * 0.5 * 3 = 6.
        let a = ndarray::array![[e4m3_from_f32(1.0), e4m3_from_f32(0.5)]];
        let b = Array3::from_shape_vec((1, 1, 2), vec![e4m3_from_f32(2.0), e4m3_from_f32(4.0)]).unwrap();
        let out = grouped_gemm_rowwise(
            a.view(),
            ndarray::array![0.5f32].view(),
            b.view(),
            ndarray::array![[3.0f32]].view(),
            &[0, 1],
        )
        .unwrap();
        assert_eq!(out, ndarray::array![[6.0]]);
    }

    #[test]
    fn rowwise_matches_dequantized_product() {
        let (e, n, k) = (3, 5, 40);
        let offsets = [0u32, 2, 2, 7]; // expert 1 has no rows
        let a = wave((7, k), 0.3);
        let (a_q, a_s) = quantize_rowwise(a.view());
        let mut b_q = Array3::zeros((e, n, k));
        let mut b_s = Array2::zeros((e, n));
        let mut b_deq = Vec::new();
        for g in 0..e {
            let (q, sc) = quantize_rowwise(wave((n, k), g as f32).view());
            b_deq.push(dequantize_rowwise(q.view(), sc.view()));
            b_q.index_axis_mut(Axis(0), g).assign(&q);
            b_s.row_mut(g).assign(&sc);
        }
        let got = grouped_gemm_rowwise(a_q.view(), a_s.view(), b_q.view(), b_s.view(), &offsets).unwrap();
        close(&got, &dequant_reference(&dequantize_rowwise(a_q.view(), a_s.view()), &b_deq, &offsets));
    }

    #[test]
    fn blockwise_matches_dequantized_product_on_ragged_blocks() {
        let (e, n, k, m) = (2, 130, 300, 5); // N and K both cross a 128 boundary
        let offsets = [0u32, 3, 5];
        let a = wave((m, k), 0.5);
        let (a_q, a_s) = quantize_groups_1x128(a.view());
        let mut b_q = Array3::zeros((e, n, k));
        let mut b_s = Array3::zeros((e, 2, 3));
        let mut b_deq = Vec::new();
        for g in 0..e {
            let (q, sc) = quantize_blocks_128x128(wave((n, k), 1.0 + g as f32).view());
            b_deq.push(dequantize_blocks_128x128(q.view(), sc.view()));
            b_q.index_axis_mut(Axis(0), g).assign(&q);
            b_s.index_axis_mut(Axis(0), g).assign(&sc);
        }
        let got = grouped_gemm_blockwise(a_q.view(), a_s.view(), b_q.view(), b_s.view(), &offsets).unwrap();
        let a_deq = dequantize_groups_1x128(a_q.view(), a_s.view());
        close(&got, &dequant_reference(&a_deq, &b_deq, &offsets));
    }

    #[test]
    fn offset_and_shape_errors() {
        let a = Array2::<u8>::zeros((4, 8));
        let a_s = Array1::<f32>::ones(4);
        let b = Array3::<u8>::zeros((2, 3, 8));
        let b_s = Array2::<f32>::ones((2, 3));
        let run = |o: &[u32]| grouped_gemm_rowwise(a.view(), a_s.view(), b.view(), b_s.view(), o);
        assert!(run(&[0, 2, 4]).is_ok());
        assert!(run(&[0, 3, 2]).unwrap_err().contains("not monotone"));
        assert!(run(&[0, 2, 5]).unwrap_err().contains("exceeds M"));
        assert!(run(&[0, 2, 3]).unwrap_err().contains("rows outside every group"));
        assert!(run(&[1, 2, 4]).unwrap_err().contains("rows outside every group"));
        assert!(run(&[0, 4]).unwrap_err().contains("offsets for 2 experts"));
        let bad_k = Array3::<u8>::zeros((2, 3, 7));
        let err = grouped_gemm_rowwise(a.view(), a_s.view(), bad_k.view(), b_s.view(), &[0, 2, 4]);
        assert!(err.unwrap_err().contains("K = 8"));
        let bad_s = Array2::<f32>::ones((4, 2));
        let err = grouped_gemm_blockwise(a.view(), bad_s.view(), b.view(), Array3::ones((2, 1, 1)).view(), &[0, 2, 4]);
        assert!(err.unwrap_err().contains("a_scale"));
    }

    #[test]
    fn swiglu_epilogue_is_gemm_then_swiglu_quant_on_plain_weights() {
        let (e, n, k) = (2, 6, 24);
        let offsets = [0u32, 3, 5];
        let (a_q, a_s) = quantize_rowwise(wave((5, k), 0.7).view());
        let (mut b_q, mut b_s) = (Array3::zeros((e, n, k)), Array2::zeros((e, n)));
        let (mut bi_q, mut bi_s) = (Array3::zeros((e, n, k)), Array2::zeros((e, n)));
        for g in 0..e {
            let (q, sc) = quantize_rowwise(wave((n, k), 2.0 + g as f32).view());
            for r in 0..n {
                let to = crate::weight_prep::gate_up_interleaved_row(r, n);
                b_q.index_axis_mut(Axis(0), g).row_mut(r).assign(&q.row(r));
                bi_q.index_axis_mut(Axis(0), g).row_mut(to).assign(&q.row(r));
                b_s[[g, r]] = sc[r];
                bi_s[[g, to]] = sc[r];
            }
        }
        let (q, s) = grouped_gemm_swiglu_rowwise(a_q.view(), a_s.view(), bi_q.view(), bi_s.view(), &offsets).unwrap();
        let d = grouped_gemm_rowwise(a_q.view(), a_s.view(), b_q.view(), b_s.view(), &offsets).unwrap();
        let (want_q, want_s) = swiglu_quant(d.mapv(round_bf16).view(), Precision::Bf16);
        assert_eq!((q.dim(), s.len()), ((5, n / 2), 5));
        assert_eq!(q, want_q);
        assert_eq!(s, want_s);
        let odd = Array3::<u8>::zeros((e, 5, k));
        let err =
            grouped_gemm_swiglu_rowwise(a_q.view(), a_s.view(), odd.view(), Array2::ones((e, 5)).view(), &offsets);
        assert!(err.unwrap_err().contains("even N"));
    }

    #[test]
    fn nan_bytes_propagate() {
        let mut a = Array2::<u8>::from_elem((2, 4), e4m3_from_f32(1.0));
        a[[1, 2]] = crate::fp8::E4M3_NAN;
        let b = Array3::<u8>::from_elem((1, 2, 4), e4m3_from_f32(1.0));
        let out =
            grouped_gemm_rowwise(a.view(), Array1::ones(2).view(), b.view(), Array2::ones((1, 2)).view(), &[0, 2])
                .unwrap();
        assert_eq!(out.row(0).to_vec(), vec![4.0, 4.0]);
        assert!(out.row(1).iter().all(|v| v.is_nan()));
    }

    proptest! {
        /// With K <= 128 there is one K group, and with N <= 128 one N block, so blockwise scaling with
        /// per-row activation scales equals rowwise scaling with one weight scale per expert.
        #[test]
        fn single_block_blockwise_equals_rowwise(
            m in 0usize..6, n in 1usize..5, k in 1usize..20, cut in 0usize..6, seed in 0u32..100
        ) {
            let cut = cut.min(m) as u32;
            let offsets = [0, cut, m as u32];
            // Hashed bytes with the sign and low bit cleared: finite codes up to 0x7E (448).
            let bytes = |i: usize| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) >> 7) as u8 & 0x7E;
            let a_q = Array2::from_shape_fn((m, k), |(r, c)| bytes(r * k + c));
            let b_q =
                Array3::from_shape_fn((2, n, k), |(g, r, c)| bytes(1000 + (g * n + r) * k + c));
            let a_s = Array1::from_shape_fn(m, |r| 0.5 + r as f32);
            let b_blk = Array3::from_shape_fn((2, 1, 1), |(g, _, _)| 0.25 * (g + 1) as f32);
            let b_row = Array2::from_shape_fn((2, n), |(g, _)| 0.25 * (g + 1) as f32);
            let a_s_groups = a_s.view().insert_axis(Axis(1));
            let blk =
                grouped_gemm_blockwise(a_q.view(), a_s_groups, b_q.view(), b_blk.view(), &offsets);
            let row = grouped_gemm_rowwise(a_q.view(), a_s.view(), b_q.view(), b_row.view(), &offsets);
            let (blk, row) = (blk.unwrap(), row.unwrap());
            prop_assert_eq!(blk, row);
        }
    }
}
