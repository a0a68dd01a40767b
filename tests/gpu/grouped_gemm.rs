use crate::common::*;
use llama4_kernels::grouped_gemm::{grouped_gemm_fp8, workspace_size, GroupedGemm, Schedule};
use llama4_kernels::{Error, Tensor, TensorMut, E4M3};
use llama4_reference::check::TOL_FP8_GEMM;
use llama4_reference::fp8::e4m3_from_f32;
use llama4_reference::grouped_gemm::grouped_gemm_rowwise;
use ndarray::{Array1, Array2, Array3};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::Rng;

/// One grouped problem on the host: rows of expert e start at `starts[e]`, `m[e]` of them are real.
pub struct Problem {
    pub experts: usize,
    pub n: usize,
    pub k: usize,
    pub m: Vec<usize>,
    pub starts: Vec<usize>,
    pub rows: usize,
    pub a: Vec<u8>,
    pub sa: Vec<f32>,
    pub b: Vec<u8>,
    pub sb: Vec<f32>,
}

/// FP8 values of a roughly normal spread (as quantized activations and weights are), never NaN.
fn fp8_values(r: &mut StdRng, n: usize) -> Vec<u8> {
    (0..n).map(|_| e4m3_from_f32((r.gen::<f32>() + r.gen::<f32>() + r.gen::<f32>() - 1.5) * 300.0)).collect()
}

/// `pad`: extra unused rows after each expert's real rows (a padded permute layout).
pub fn problem(r: &mut StdRng, experts: usize, n: usize, k: usize, m: Vec<usize>, pad: usize) -> Problem {
    let mut starts = vec![0];
    for &me in &m {
        starts.push(starts.last().unwrap() + me + if me > 0 { pad } else { 0 });
    }
    let rows = *starts.last().unwrap();
    Problem {
        experts,
        n,
        k,
        a: fp8_values(r, rows * k),
        sa: (0..rows).map(|_| r.gen_range(1e-4f32..1e-2)).collect(),
        b: fp8_values(r, experts * n * k),
        sb: (0..experts * n).map(|_| r.gen_range(1e-4f32..1e-2)).collect(),
        m,
        starts,
        rows,
    }
}

/// Runs on the device with D poisoned; returns D and the bad-offsets flag.
fn run(p: &Problem, offsets: &[i32], counts: Option<&[i32]>, schedule: Schedule) -> (Vec<f32>, u32) {
    let up = |v: &[u8]| upload(&v.iter().map(|&b| E4M3(b)).collect::<Vec<_>>());
    let (da, db) = (up(&p.a), up(&p.b));
    let (dsa, dsb, doff) = (upload(&p.sa), upload(&p.sb), upload(offsets));
    let dcounts = counts.map(upload);
    let mut d = poison_bf16(p.rows * p.n);
    let mut ws = upload(&vec![0u8; workspace_size(p.experts).unwrap()]);
    let mut flag = upload(&[0u32]);
    let ws_len = ws.len();
    let (a, sa) = (Tensor::of(&da, [p.rows, p.k]).unwrap(), Tensor::of(&dsa, [p.rows]).unwrap());
    let (b, sb) = (Tensor::of(&db, [p.experts, p.n, p.k]).unwrap(), Tensor::of(&dsb, [p.experts, p.n]).unwrap());
    let off = Tensor::of(&doff, [p.experts + 1]).unwrap();
    let cnt = dcounts.as_ref().map(|c| Tensor::of(c, [p.experts]).unwrap());
    let g = GroupedGemm { a: &a, scale_a: &sa, b: &b, scale_b: &sb, offsets: &off, counts: cnt.as_ref() };
    grouped_gemm_fp8(
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

/// Expected D rows of every expert (padding rows are not part of the result).
fn reference(p: &Problem) -> Vec<(usize, Vec<f32>)> {
    let mut out = vec![];
    for e in 0..p.experts {
        let (s, m) = (p.starts[e], p.m[e]);
        if m == 0 {
            continue;
        }
        let a = Array2::from_shape_vec((m, p.k), p.a[s * p.k..(s + m) * p.k].to_vec()).unwrap();
        let b = Array3::from_shape_vec((1, p.n, p.k), p.b[e * p.n * p.k..(e + 1) * p.n * p.k].to_vec()).unwrap();
        let sa = Array1::from(p.sa[s..s + m].to_vec());
        let sb = Array2::from_shape_vec((1, p.n), p.sb[e * p.n..(e + 1) * p.n].to_vec()).unwrap();
        let d = grouped_gemm_rowwise(a.view(), sa.view(), b.view(), sb.view(), &[0, m as u32]).unwrap();
        for r in 0..m {
            out.push((s + r, d.row(r).to_vec()));
        }
    }
    out
}

fn check(p: &Problem, d: &[f32], what: &str) {
    let want = reference(p);
    let (mut got, mut exp) = (vec![], vec![]);
    let mut real = vec![false; p.rows];
    for (r, row) in &want {
        real[*r] = true;
        got.extend_from_slice(&d[r * p.n..(r + 1) * p.n]);
        exp.extend_from_slice(row);
    }
    llama4_reference::check::assert_close(what, &got, &exp, TOL_FP8_GEMM);
    for (r, is_real) in real.iter().enumerate() {
        if !is_real {
            assert!(d[r * p.n..(r + 1) * p.n].iter().all(|v| v.is_nan()), "{what}: padding row {r} was written");
        }
    }
}

fn schedules() -> impl Strategy<Value = Schedule> {
    prop::sample::select(vec![
        Schedule::Auto,
        Schedule::Prefill,
        Schedule::Decode,
        Schedule::PrefillFastAccum,
        Schedule::Gemv,
    ])
}

proptest! {
    #![proptest_config(cases(16))]

    /// Random groups including empty ones, rows per group that are no multiple of any tile, n and k at and
    /// near the alignment limits, every schedule. n = 384 and 760 take the promoted prefill's 128x192 tiles
    /// (760: a partial one) when the experts average more than 128 rows (max_m = 400 makes that common), the
    /// others its 128x128 tiles. The GEMV runs 8-row passes (max_m 150, 400: many of them) over 16-row CTAs
    /// (n = 8, 24, 136, 264, 760: the last CTA half empty).
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn grouped_gemm_matches_reference(
        experts in prop::sample::select(vec![1usize, 3, 16]),
        n in prop::sample::select(vec![8usize, 24, 136, 264, 384, 760]),
        k in prop::sample::select(vec![16usize, 48, 128, 272, 528]),
        max_m in prop::sample::select(vec![1usize, 9, 40, 150, 400]),
        schedule in schedules(),
        seed: u64,
    ) {
        let mut r = rng(seed);
        let m: Vec<usize> = (0..experts).map(|_| if r.gen_bool(0.25) { 0 } else { r.gen_range(0..=max_m) }).collect();
        let p = problem(&mut r, experts, n, k, m, 0);
        let offsets: Vec<i32> = p.starts.iter().map(|&s| s as i32).collect();
        let (d, flag) = run(&p, &offsets, None, schedule);
        prop_assert_eq!(flag, 0);
        check(&p, &d, &format!("grouped_gemm {schedule:?} E={experts} n={n} k={k}"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn padded_layout_writes_only_counted_rows() {
    let mut r = rng(21);
    let p = problem(&mut r, 5, 64, 256, vec![3, 0, 70, 1, 129], 7);
    let offsets: Vec<i32> = p.starts.iter().map(|&s| s as i32).collect();
    let counts: Vec<i32> = p.m.iter().map(|&m| m as i32).collect();
    for schedule in [Schedule::Prefill, Schedule::Decode, Schedule::Gemv] {
        let (d, flag) = run(&p, &offsets, Some(&counts), schedule);
        assert_eq!(flag, 0);
        check(&p, &d, &format!("padded {schedule:?}"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn wide_prefill_tiles_with_many_rows_per_expert() {
    // More than 128 rows per expert on average and n within 2% of a multiple of 192: the 128x192 tiles, the
    // last one partial (n = 760), an empty expert and M tiles cut short; fast accumulation's 256x128 tiles.
    let mut r = rng(760);
    let p = problem(&mut r, 3, 760, 272, vec![300, 0, 211], 0);
    let offsets: Vec<i32> = p.starts.iter().map(|&s| s as i32).collect();
    for schedule in [Schedule::Auto, Schedule::Prefill, Schedule::PrefillFastAccum] {
        let (d, flag) = run(&p, &offsets, None, schedule);
        assert_eq!(flag, 0);
        check(&p, &d, &format!("wide tiles {schedule:?}"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn model_sized_k_stays_accurate() {
    // k of Scout's gate_up (5120) and down (8192) projections: where accumulation error would show.
    for (k, schedule) in [
        (5120, Schedule::Prefill),
        (8192, Schedule::Prefill),
        (8192, Schedule::PrefillFastAccum),
        (8192, Schedule::Decode),
        (5120, Schedule::Gemv),
        (8192, Schedule::Gemv),
    ] {
        let mut r = rng(k as u64);
        let p = problem(&mut r, 3, 256, k, vec![130, 0, 67], 0);
        let offsets: Vec<i32> = p.starts.iter().map(|&s| s as i32).collect();
        let (d, _) = run(&p, &offsets, None, schedule);
        check(&p, &d, &format!("k={k} {schedule:?}"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn inconsistent_offsets_raise_the_flag_and_write_nothing() {
    let mut r = rng(5);
    let p = problem(&mut r, 3, 16, 32, vec![4, 4, 4], 0);
    for schedule in [Schedule::Prefill, Schedule::Gemv] {
        for bad in [vec![0, 8, 4, 12], vec![0, 4, 8, 13], vec![-1, 4, 8, 12]] {
            let (d, flag) = run(&p, &bad, None, schedule);
            assert_eq!(flag, 1, "{schedule:?} offsets {bad:?}");
            assert!(d.iter().all(|v| v.is_nan()), "{schedule:?} offsets {bad:?}: rows were written");
        }
    }
    let offsets: Vec<i32> = p.starts.iter().map(|&s| s as i32).collect();
    for schedule in [Schedule::Decode, Schedule::Gemv] {
        let (d, flag) = run(&p, &offsets, Some(&[4, 5, 4]), schedule);
        assert_eq!(flag, 1, "{schedule:?}: a count larger than its range");
        assert!(d.iter().all(|v| v.is_nan()), "{schedule:?}: rows were written");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gemv_at_decode_shapes_matches_the_decode_tiles() {
    // Batch 1-8 at top-1 over 16 experts at Scout's widths (scaled down in n): one row per touched expert, the
    // rest empty; and all 8 rows in one expert (one full 8-row pass). Both schedules against the reference.
    // n = 5144 (> 5120, the last CTA half empty) takes the GEMV's wide configuration, the others its narrow one.
    for (n, k) in [(1024, 5120), (640, 8192), (5144, 1040)] {
        for m in [vec![1], vec![1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 1, 0], vec![0, 0, 0, 8]] {
            let mut r = rng(n as u64 + m.len() as u64);
            let experts = m.len();
            let p = problem(&mut r, experts, n, k, m, 0);
            let offsets: Vec<i32> = p.starts.iter().map(|&s| s as i32).collect();
            for schedule in [Schedule::Gemv, Schedule::Decode, Schedule::Auto] {
                let (d, flag) = run(&p, &offsets, None, schedule);
                assert_eq!(flag, 0);
                check(&p, &d, &format!("decode shape n={n} k={k} E={experts} {schedule:?}"));
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_shapes_are_clear_errors() {
    let da = upload(&[E4M3(0x38); 4 * 24]);
    let db = upload(&vec![E4M3(0x38); 2 * 8 * 24]);
    let (dsa, dsb, doff) = (upload(&[1.0f32; 4]), upload(&[1.0f32; 16]), upload(&[0i32, 2, 4]));
    let mut d = poison_bf16(4 * 8);
    let mut ws = upload(&vec![0u8; workspace_size(2).unwrap()]);
    let wl = ws.len();
    let (a, sa) = (Tensor::of(&da, [4, 24]).unwrap(), Tensor::of(&dsa, [4]).unwrap());
    let (b, sb) = (Tensor::of(&db, [2, 8, 24]).unwrap(), Tensor::of(&dsb, [2, 8]).unwrap());
    let off = Tensor::of(&doff, [3]).unwrap();
    let g = GroupedGemm { a: &a, scale_a: &sa, b: &b, scale_b: &sb, offsets: &off, counts: None };
    let e = grouped_gemm_fp8(
        stream(),
        &g,
        &mut TensorMut::of(&mut d, [4, 8]).unwrap(),
        &mut TensorMut::of(&mut ws, [wl]).unwrap(),
        None,
        Schedule::Auto,
    )
    .unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("multiple of 16")), "{e}");
    let off3 = Tensor::of(&doff, [3]).unwrap();
    let b1 = Tensor::new(db.slice(..8 * 24), [1, 8, 24]).unwrap();
    let g = GroupedGemm { b: &b1, offsets: &off3, ..g };
    let e = grouped_gemm_fp8(
        stream(),
        &g,
        &mut TensorMut::of(&mut d, [4, 8]).unwrap(),
        &mut TensorMut::of(&mut ws, [wl]).unwrap(),
        None,
        Schedule::Auto,
    )
    .unwrap_err();
    assert!(e.to_string().contains("scale_b"), "expert count mismatch: {e}");
}
