//! Greedy sampling against llama4_reference::argmax: random rows, planted exact ties (the lowest index wins),
//! NaN rows (-1), infinities and signed zeros, V from 1 to Llama 4's 202048 (one CTA per row below 32768
//! values, a cluster of CTAs above), both load paths, and the C entry point.
use crate::common::*;
use cudarc::driver::{DevicePtr, DevicePtrMut};
use llama4_kernels::argmax::argmax;
use llama4_kernels::{capi, Error, Status, Tensor, TensorMut};
use llama4_reference::argmax::argmax as reference;
use ndarray::Array2;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::Rng;

const INF: f32 = f32::INFINITY;

/// One row of `v` values of a random kind.
fn row(r: &mut StdRng, v: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..v).map(|_| r.gen_range(-30.0f32..30.0)).collect();
    let at = |r: &mut StdRng| r.gen_range(0..v);
    match r.gen_range(0..8) {
        // Exact ties of the maximum at a few places (the first of them must win), sometimes at the row's ends.
        0 | 1 => {
            let m = 31.0 + r.gen_range(0..4) as f32;
            for _ in 0..r.gen_range(2..5) {
                let i = at(r);
                x[i] = m;
            }
            if r.gen() {
                x[v - 1] = m;
            }
        }
        2 => {
            let i = at(r);
            x[i] = f32::NAN;
        }
        3 => {
            for _ in 0..r.gen_range(1..3) {
                let i = at(r);
                x[i] = INF;
            }
        }
        4 => x.iter_mut().for_each(|e| *e = -INF),
        // Few distinct values: ties everywhere.
        5 => x.iter_mut().for_each(|e| *e = r.gen_range(-2..=2) as f32),
        // Only signed zeros and negatives: -0 ties +0.
        6 => x.iter_mut().for_each(|e| *e = [-0.0f32, 0.0, -1.0][r.gen_range(0..3)]),
        _ => {}
    }
    x
}

/// Runs argmax on a view starting `offset` floats into its buffer (1: not 16-byte aligned, the scalar path).
fn device_argmax(x: &[f32], rows: usize, cols: usize, offset: usize) -> Vec<i32> {
    let mut host = vec![0.0f32; offset];
    host.extend_from_slice(x);
    let d = upload(&host);
    let mut out = upload(&vec![i32::MIN; rows]);
    argmax(
        stream(),
        &Tensor::new(d.slice(offset..), [rows, cols]).unwrap(),
        &mut TensorMut::of(&mut out, [rows]).unwrap(),
    )
    .unwrap();
    download(&out)
}

fn check(x: &[f32], rows: usize, cols: usize, offset: usize) {
    let want = reference(Array2::from_shape_vec((rows, cols), x.to_vec()).unwrap().view());
    let got = device_argmax(x, rows, cols, offset);
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!("argmax V = {cols} offset {offset}: row {i} gives {}, reference {}", got[i], want[i]);
    }
}

fn cols() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..64, 1usize..5000, Just(32767), Just(32768), 32769usize..70000, Just(202047), Just(202048)]
}

proptest! {
    #![proptest_config(cases(24))]

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn argmax_matches_reference(rows in 0usize..40, cols in cols(), misaligned: bool, seed: u64) {
        let rows = rows.min((16 << 20) / cols);
        let mut r = rng(seed);
        let x: Vec<f32> = (0..rows).flat_map(|_| row(&mut r, cols)).collect();
        check(&x, rows, cols, misaligned as usize);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ties_across_slices_and_rows_of_one() {
    // The maximum twice, in different CTAs of a cluster (each scans an eighth of the row) and in one CTA;
    // the first occurrence wins both ways. Then single-value rows and an all -inf row.
    let cols = 202048;
    let mut x = vec![-1.0f32; 3 * cols];
    x[cols - 5] = 7.0;
    x[3] = 7.0;
    x[cols + 150000] = 2.0;
    x[cols + 150001] = 2.0;
    x[cols + 100000] = 2.0;
    x[2 * cols + 202047] = INF;
    check(&x, 3, cols, 0);
    check(&x, 3, cols, 1);
    check(&[f32::NAN, -INF, 4.0, -0.0], 4, 1, 0);
    check(&vec![-INF; 40000], 1, 40000, 0);
    // A NaN in the last slice of a cluster row, with the maximum in the first.
    let mut y = vec![0.5f32; cols];
    y[0] = 9.0;
    y[cols - 1] = f32::NAN;
    check(&y, 1, cols, 0);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn many_rows_and_bad_shapes() {
    let mut r = rng(3);
    let (rows, cols) = (3000, 1000);
    let x: Vec<f32> = (0..rows).flat_map(|_| row(&mut r, cols)).collect();
    check(&x, rows, cols, 0);
    let d = upload(&x[..8]);
    let mut out = upload(&[0i32; 3]);
    let e = argmax(stream(), &Tensor::of(&d, [2, 4]).unwrap(), &mut TensorMut::of(&mut out, [3]).unwrap()).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("out [3] for 2 rows")), "{e}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn c_argmax_equals_the_safe_api() {
    let mut r = rng(12);
    let (rows, cols) = (9, 202048);
    let x: Vec<f32> = (0..rows).flat_map(|_| row(&mut r, cols)).collect();
    let safe = device_argmax(&x, rows, cols, 0);
    let d = upload(&x);
    let mut out = upload(&vec![i32::MIN; rows]);
    let s = stream();
    let status = {
        let (pl, _a) = d.device_ptr(s);
        let (po, _b) = out.device_ptr_mut(s);
        // SAFETY: device buffers of the sizes the header gives, on the stream's device, alive until synchronized.
        unsafe { capi::l4k_argmax(pl as _, po as _, rows as i64, cols as i64, s.cu_stream()) }
    };
    assert_eq!(status, Status::Ok);
    assert_eq!(download(&out), safe);
}
