//! Row gather against llama4_reference::embedding: bytes equal to the table rows, zero rows and a count for ids
//! outside the table, both access paths (16-byte rows and scalar ones), the C entry point.
use crate::common::*;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use llama4_kernels::embedding::embedding;
use llama4_kernels::{bf16, capi, Error, Status, Tensor, TensorMut};
use llama4_reference::embedding::embed;
use ndarray::Array2;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::Rng;

/// A table on the bf16 grid with the values a copy could mangle mixed in: signed zeros, infinities, subnormals.
fn table(r: &mut StdRng, rows: usize, hidden: usize) -> Vec<f32> {
    let special = [-0.0f32, f32::INFINITY, f32::NEG_INFINITY, 1e-40, -3.0e38];
    let mut t = rand_bf16(r, rows * hidden, 8.0);
    for v in t.iter_mut() {
        if r.gen_ratio(1, 50) {
            *v = bf16::from_f32(special[r.gen_range(0..special.len())]).to_f32();
        }
    }
    t
}

/// Ids mostly inside [0, rows), some just outside, some far outside.
fn ids(r: &mut StdRng, tokens: usize, rows: usize) -> Vec<i32> {
    (0..tokens)
        .map(|_| match r.gen_range(0..20) {
            0 => -1 - r.gen_range(0..3),
            1 => rows as i32 + r.gen_range(0..3),
            2 => [i32::MIN, i32::MAX][r.gen_range(0..2)],
            _ => r.gen_range(0..rows as i32),
        })
        .collect()
}

/// The reference rows as bf16 bit patterns (zeros for bad ids) and the bad-id count.
fn expected(table: &[f32], rows: usize, hidden: usize, ids: &[i32]) -> (Vec<u16>, u32) {
    let ok = |id: i32| id >= 0 && (id as usize) < rows;
    let safe: Vec<u32> = ids.iter().map(|&id| if ok(id) { id as u32 } else { 0 }).collect();
    let t = Array2::from_shape_vec((rows, hidden), table.to_vec()).unwrap();
    let mut want = embed(t.view(), &safe).unwrap();
    for (row, &id) in want.rows_mut().into_iter().zip(ids) {
        if !ok(id) {
            row.into_iter().for_each(|v| *v = 0.0);
        }
    }
    (want.iter().map(|&v| bf16::from_f32(v).to_bits()).collect(), ids.iter().filter(|&&id| !ok(id)).count() as u32)
}

fn assert_bits(what: &str, got: &[bf16], want: &[u16], hidden: usize) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, &b)| a.to_bits() != b) {
        panic!(
            "{what}: element ({}, {}) is {:#06x}, reference {:#06x}",
            i / hidden,
            i % hidden,
            got[i].to_bits(),
            want[i]
        );
    }
}

/// Runs the gather on views starting `offset` elements into their buffers (1: 2-byte aligned only, the scalar
/// path); the counter starts at 7 (the op adds to it). Returns the whole output buffer and the counter.
fn run(table: &[f32], rows: usize, hidden: usize, ids: &[i32], offset: usize) -> (Vec<bf16>, u32) {
    let t = ids.len();
    let mut host_table = vec![0.0f32; offset];
    host_table.extend_from_slice(table);
    let dt = upload_bf16(&host_table);
    let di = upload(ids);
    let mut out = poison_bf16(offset + t * hidden);
    let mut bad = upload(&[7u32]);
    embedding(
        stream(),
        &Tensor::new(dt.slice(offset..), [rows, hidden]).unwrap(),
        &Tensor::of(&di, [t]).unwrap(),
        &mut TensorMut::new(out.slice_mut(offset..), [t, hidden]).unwrap(),
        Some(&mut TensorMut::of(&mut bad, [1]).unwrap()),
    )
    .unwrap();
    (download(&out), download(&bad)[0])
}

proptest! {
    #![proptest_config(cases(24))]

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn embedding_copies_rows_exactly(rows in prop_oneof![1usize..40, 1usize..3000], tokens in 0usize..300,
                                     hidden in row_len(), misaligned: bool, seed: u64) {
        let rows = rows.min((8 << 20) / hidden).max(1);
        let mut r = rng(seed);
        let tab = table(&mut r, rows, hidden);
        let id = ids(&mut r, tokens, rows);
        let (want, bad) = expected(&tab, rows, hidden, &id);
        let offset = misaligned as usize;
        let (got, counter) = run(&tab, rows, hidden, &id, offset);
        if offset == 1 {
            prop_assert!(got[0].to_f32().is_nan(), "the element before the output view was written");
        }
        assert_bits("embedding", &got[offset..], &want, hidden);
        prop_assert_eq!(counter, 7 + bad, "bad_ids counter");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn vocabulary_sized_table_and_no_counter() {
    // Llama 4's vocabulary: ids near the end of a 202048-row table, every row length class.
    let mut r = rng(5);
    let rows = 202048;
    for hidden in [8, 64, 3] {
        let tab = table(&mut r, rows, hidden);
        let id: Vec<i32> = vec![0, rows as i32 - 1, rows as i32, 123456, -5, rows as i32 - 2];
        let (want, _) = expected(&tab, rows, hidden, &id);
        let dt = upload_bf16(&tab);
        let di = upload(&id);
        let mut out = poison_bf16(id.len() * hidden);
        embedding(
            stream(),
            &Tensor::of(&dt, [rows, hidden]).unwrap(),
            &Tensor::of(&di, [id.len()]).unwrap(),
            &mut TensorMut::of(&mut out, [id.len(), hidden]).unwrap(),
            None,
        )
        .unwrap();
        assert_bits(&format!("embedding V = {rows}, H = {hidden}"), &download(&out), &want, hidden);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn zero_tokens_write_nothing_and_bad_shapes_are_errors() {
    let dt = upload_bf16(&[1.0; 64]);
    let di: CudaSlice<i32> = upload(&[0, 1]);
    let mut out = poison_bf16(32);
    let mut bad = upload(&[3u32]);
    embedding(
        stream(),
        &Tensor::of(&dt, [4, 16]).unwrap(),
        &Tensor::new(di.slice(0..0), [0]).unwrap(),
        &mut TensorMut::new(out.slice_mut(0..0), [0, 16]).unwrap(),
        Some(&mut TensorMut::of(&mut bad, [1]).unwrap()),
    )
    .unwrap();
    assert_eq!(download(&bad), vec![3]);
    assert!(download_bf16(&out).iter().all(|v| v.is_nan()));
    let e = embedding(
        stream(),
        &Tensor::of(&dt, [2, 32]).unwrap(),
        &Tensor::of(&di, [2]).unwrap(),
        &mut TensorMut::of(&mut out, [2, 16]).unwrap(),
        None,
    )
    .unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("out [2, 16], want [2, 32]")), "{e}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn c_embedding_equals_the_safe_api() {
    let (rows, hidden) = (1000, 520);
    let mut r = rng(11);
    let tab = table(&mut r, rows, hidden);
    let id = ids(&mut r, 77, rows);
    let (safe, safe_bad) = run(&tab, rows, hidden, &id, 0);
    let dt = upload_bf16(&tab);
    let di = upload(&id);
    let mut out = poison_bf16(id.len() * hidden);
    let mut bad = upload(&[7u32]);
    let s = stream();
    let status = {
        let (pt, _a) = dt.device_ptr(s);
        let (pi, _b) = di.device_ptr(s);
        let (po, _c) = out.device_ptr_mut(s);
        let (pb, _d) = bad.device_ptr_mut(s);
        // SAFETY: device buffers of the sizes the header gives, on the stream's device, alive until synchronized.
        unsafe {
            capi::l4k_embedding(
                pt as _,
                pi as _,
                po as _,
                rows as i64,
                id.len() as i64,
                hidden as i64,
                pb as _,
                s.cu_stream(),
            )
        }
    };
    assert_eq!(status, Status::Ok);
    let c: Vec<u16> = download(&out).iter().map(|v| v.to_bits()).collect();
    assert_bits("C embedding", &safe, &c, hidden);
    assert_eq!(download(&bad)[0], safe_bad);
}
