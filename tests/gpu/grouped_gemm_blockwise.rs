//! The 128x128 blockwise-scaled grouped GEMM against llama4_reference::grouped_gemm::grouped_gemm_blockwise on
//! identical quantized inputs: activations quantized 1x128 and weights 128x128 by the reference quantizers.
use crate::common::*;
use llama4_kernels::grouped_gemm::{grouped_gemm_fp8_blockwise, workspace_size, GroupedGemmBlockwise, Schedule};
use llama4_kernels::{Error, Tensor, TensorMut, E4M3};
use llama4_reference::check::TOL_FP8_GEMM;
use llama4_reference::fp8::{quantize_experts_128x128, quantize_groups_1x128};
use llama4_reference::grouped_gemm::grouped_gemm_blockwise;
use ndarray::{s, Array2, Array3};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::Rng;

/// One grouped problem: rows of expert e start at `starts[e]`, `m[e]` of them are real (the rest padding).
struct Problem {
    experts: usize,
    n: usize,
    k: usize,
    m: Vec<usize>,
    starts: Vec<usize>,
    rows: usize,
    a: Array2<u8>,
    sa: Array2<f32>,
    b: Array3<u8>,
    sb: Array3<f32>,
}

/// Values whose magnitude changes from one block of `row_block` x 128 to the next (over 4 orders of
/// magnitude), so a scale applied to the wrong block, row or expert shows; a few outliers per block, as real
/// activations have.
fn blocky(r: &mut StdRng, (e, n, k): (usize, usize, usize), row_block: usize) -> Array3<f32> {
    let (nb, kb) = (n.div_ceil(row_block), k.div_ceil(128));
    let mag: Vec<f32> = (0..e * nb * kb).map(|_| 10f32.powf(r.gen_range(-2.0..2.0))).collect();
    Array3::from_shape_fn((e, n, k), |(g, i, j)| {
        let x = r.gen_range(-1.0f32..1.0) * mag[(g * nb + i / row_block) * kb + j / 128];
        if r.gen_bool(0.01) {
            x * 30.0
        } else {
            x
        }
    })
}

fn problem(r: &mut StdRng, experts: usize, n: usize, k: usize, m: Vec<usize>, pad: usize) -> Problem {
    let mut starts = vec![0];
    for &me in &m {
        starts.push(starts.last().unwrap() + me + if me > 0 { pad } else { 0 });
    }
    let rows = *starts.last().unwrap();
    let x = blocky(r, (1, rows, k), 1).index_axis_move(ndarray::Axis(0), 0);
    let (a, sa) = quantize_groups_1x128(x.view());
    let (b, sb) = quantize_experts_128x128(blocky(r, (experts, n, k), 128).view());
    Problem { experts, n, k, m, starts, rows, a, sa, b, sb }
}

/// Runs on the device with D poisoned; returns D and the bad-offsets flag.
fn run(p: &Problem, offsets: &[i32], counts: Option<&[i32]>, schedule: Schedule) -> (Vec<f32>, u32) {
    let up = |v: &[u8]| upload(&v.iter().map(|&b| E4M3(b)).collect::<Vec<_>>());
    let (da, db) = (up(p.a.as_slice().unwrap()), up(p.b.as_slice().unwrap()));
    let (dsa, dsb, doff) = (upload(p.sa.as_slice().unwrap()), upload(p.sb.as_slice().unwrap()), upload(offsets));
    let dcounts = counts.map(upload);
    let mut d = poison_bf16(p.rows * p.n);
    let mut ws = upload(&vec![0u8; workspace_size(p.experts).unwrap()]);
    let mut flag = upload(&[0u32]);
    let ws_len = ws.len();
    let (kb, nb) = (p.k / 128, p.n / 128);
    let (a, sa) = (Tensor::of(&da, [p.rows, p.k]).unwrap(), Tensor::of(&dsa, [p.rows, kb]).unwrap());
    let b = Tensor::of(&db, [p.experts, p.n, p.k]).unwrap();
    let sb = Tensor::of(&dsb, [p.experts, nb, kb]).unwrap();
    let off = Tensor::of(&doff, [p.experts + 1]).unwrap();
    let cnt = dcounts.as_ref().map(|c| Tensor::of(c, [p.experts]).unwrap());
    let g = GroupedGemmBlockwise { a: &a, scale_a: &sa, b: &b, scale_b: &sb, offsets: &off, counts: cnt.as_ref() };
    grouped_gemm_fp8_blockwise(
        stream(),
        &g,
        &mut TensorMut::of(&mut d, [p.rows, p.n]).unwrap(),
        &mut TensorMut::of(&mut ws, [ws_len]).unwrap(),
        Some(&mut TensorMut::of(&mut flag, [1]).unwrap()),
        schedule,
    )
    .unwrap();
    (download_bf16(&d), download(&flag)[0])
}

/// The reference over the real rows of every expert (padding rows are not part of the result).
fn check(p: &Problem, d: &[f32], what: &str) {
    let (mut got, mut want) = (vec![], vec![]);
    let mut real = vec![false; p.rows];
    for e in 0..p.experts {
        let (s, m) = (p.starts[e], p.m[e]);
        if m == 0 {
            continue;
        }
        let out = grouped_gemm_blockwise(
            p.a.slice(s![s..s + m, ..]),
            p.sa.slice(s![s..s + m, ..]),
            p.b.slice(s![e..e + 1, .., ..]),
            p.sb.slice(s![e..e + 1, .., ..]),
            &[0, m as u32],
        )
        .unwrap();
        for r in 0..m {
            real[s + r] = true;
            got.extend_from_slice(&d[(s + r) * p.n..(s + r + 1) * p.n]);
            want.extend(out.row(r).iter().copied());
        }
    }
    llama4_reference::check::assert_close(what, &got, &want, TOL_FP8_GEMM);
    for (r, is_real) in real.iter().enumerate() {
        if !is_real {
            assert!(d[r * p.n..(r + 1) * p.n].iter().all(|v| v.is_nan()), "{what}: padding row {r} was written");
        }
    }
}

fn offsets_of(p: &Problem) -> Vec<i32> {
    p.starts.iter().map(|&s| s as i32).collect()
}

proptest! {
    #![proptest_config(cases(16))]

    /// Random groups including empty ones, rows per group that are no multiple of any tile, n and k from the
    /// alignment limit (128) up, every schedule.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn blockwise_matches_reference(
        experts in prop::sample::select(vec![1usize, 3, 16]),
        n in prop::sample::select(vec![128usize, 256, 384]),
        k in prop::sample::select(vec![128usize, 256, 640]),
        max_m in prop::sample::select(vec![1usize, 9, 40, 150]),
        schedule in prop::sample::select(vec![Schedule::Auto, Schedule::Prefill, Schedule::Decode]),
        seed: u64,
    ) {
        let mut r = rng(seed);
        let m: Vec<usize> = (0..experts).map(|_| if r.gen_bool(0.25) { 0 } else { r.gen_range(0..=max_m) }).collect();
        let p = problem(&mut r, experts, n, k, m, 0);
        let (d, flag) = run(&p, &offsets_of(&p), None, schedule);
        prop_assert_eq!(flag, 0);
        check(&p, &d, &format!("blockwise {schedule:?} E={experts} n={n} k={k}"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn blockwise_padded_layout_writes_only_counted_rows() {
    let mut r = rng(31);
    let p = problem(&mut r, 5, 256, 384, vec![3, 0, 70, 1, 129], 7);
    let counts: Vec<i32> = p.m.iter().map(|&m| m as i32).collect();
    for schedule in [Schedule::Prefill, Schedule::Decode] {
        let (d, flag) = run(&p, &offsets_of(&p), Some(&counts), schedule);
        assert_eq!(flag, 0);
        check(&p, &d, &format!("blockwise padded {schedule:?}"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn blockwise_model_sized_k_stays_accurate() {
    // k of Scout's gate_up (5120) and down (8192) projections, on both schedules.
    for (k, schedule) in [(5120, Schedule::Prefill), (8192, Schedule::Prefill), (8192, Schedule::Decode)] {
        let mut r = rng(k as u64);
        let p = problem(&mut r, 3, 256, k, vec![130, 0, 67], 0);
        let (d, _) = run(&p, &offsets_of(&p), None, schedule);
        check(&p, &d, &format!("blockwise k={k} {schedule:?}"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn blockwise_inconsistent_offsets_raise_the_flag_and_write_nothing() {
    let mut r = rng(6);
    let p = problem(&mut r, 3, 128, 128, vec![4, 4, 4], 0);
    for bad in [vec![0, 8, 4, 12], vec![0, 4, 8, 13], vec![-1, 4, 8, 12]] {
        for schedule in [Schedule::Prefill, Schedule::Decode] {
            let (d, flag) = run(&p, &bad, None, schedule);
            assert_eq!(flag, 1, "offsets {bad:?} {schedule:?}");
            assert!(d.iter().all(|v| v.is_nan()), "offsets {bad:?} {schedule:?}: rows were written");
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn blockwise_bad_arguments_are_clear_errors() {
    // (n, k, scale_a shape, scale_b shape, experts of B, schedule) -> a part of the expected message
    let call = |n: usize, k: usize, sa: [usize; 2], sb: [usize; 3], experts_b: usize, schedule: Schedule| {
        let rows = 4;
        let da = upload(&vec![E4M3(0x38); rows * k]);
        let db = upload(&vec![E4M3(0x38); experts_b * n * k]);
        let dsa = upload(&vec![1.0f32; sa[0] * sa[1]]);
        let dsb = upload(&vec![1.0f32; sb.iter().product()]);
        let doff = upload(&[0i32, 2, 4]);
        let mut d = poison_bf16(rows * n);
        let mut ws = upload(&vec![0u8; workspace_size(2).unwrap()]);
        let wl = ws.len();
        let (a, tsa) = (Tensor::of(&da, [rows, k]).unwrap(), Tensor::of(&dsa, sa).unwrap());
        let (b, tsb) = (Tensor::of(&db, [experts_b, n, k]).unwrap(), Tensor::of(&dsb, sb).unwrap());
        let off = Tensor::of(&doff, [3]).unwrap();
        let g = GroupedGemmBlockwise { a: &a, scale_a: &tsa, b: &b, scale_b: &tsb, offsets: &off, counts: None };
        let e = grouped_gemm_fp8_blockwise(
            stream(),
            &g,
            &mut TensorMut::of(&mut d, [rows, n]).unwrap(),
            &mut TensorMut::of(&mut ws, [wl]).unwrap(),
            None,
            schedule,
        );
        (e, download_bf16(&d))
    };
    // Sanity: the same call with consistent arguments runs (so the failures below are the arguments').
    let (ok, d) = call(128, 256, [4, 2], [2, 1, 2], 2, Schedule::Auto);
    ok.unwrap();
    assert!(d.iter().all(|v| v.is_finite()));
    type Case = (usize, usize, [usize; 2], [usize; 3], usize, Schedule, &'static str);
    let cases: [Case; 7] = [
        (128, 200, [4, 2], [2, 1, 2], 2, Schedule::Auto, "k = 200 must be a positive multiple of 128"),
        (136, 256, [4, 2], [2, 2, 2], 2, Schedule::Auto, "n = 136 must be a positive multiple of 128"),
        (128, 256, [4, 1], [2, 1, 2], 2, Schedule::Auto, "scale_a"),
        (128, 256, [4, 2], [2, 2, 2], 2, Schedule::Auto, "scale_b"),
        (128, 256, [4, 2], [1, 1, 2], 1, Schedule::Auto, "offsets"),
        (128, 256, [4, 2], [2, 1, 2], 2, Schedule::PrefillFastAccum, "fast-accumulation"),
        (128, 256, [4, 2], [2, 1, 2], 2, Schedule::Gemv, "rowwise scales only"),
    ];
    for (n, k, sa, sb, eb, schedule, want) in cases {
        let (e, d) = call(n, k, sa, sb, eb, schedule);
        let e = e.unwrap_err();
        assert!(e.to_string().contains(want), "n={n} k={k} {schedule:?}: {e}");
        let kind_ok = match schedule {
            Schedule::PrefillFastAccum | Schedule::Gemv => matches!(e, Error::Unsupported(_)),
            _ => matches!(e, Error::InvalidArgument(_)),
        };
        assert!(kind_ok, "{e:?}");
        assert!(d.iter().all(|v| v.is_nan()), "a rejected call wrote output");
    }
}
