//! The C entry points on the device: same validation, same kernels, same results as the safe API.
use crate::common::*;
use cudarc::driver::{CudaSlice, DevicePtr};
use llama4_kernels::attention::{default_scale, Mask, PagedKv, QueryBatch};
use llama4_kernels::attention_decode::attention_decode;
use llama4_kernels::attention_prefill::attention_prefill;
use llama4_kernels::capi;
use llama4_kernels::rmsnorm::rmsnorm;
use llama4_kernels::weight_prep::quantize_expert_weights;
use llama4_kernels::{bf16, Status, Tensor, TensorMut};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::ffi::CStr;

#[test]
#[ignore = "needs a CUDA GPU"]
fn c_rmsnorm_equals_the_safe_api() {
    let (rows, cols) = (5, 520);
    let mut r = rng(3);
    let (x, w) = (rand_bf16(&mut r, rows * cols, 2.0), rand_bf16(&mut r, cols, 1.0));
    let (dx, dw) = (upload_bf16(&x), upload_bf16(&w));
    let mut safe = poison_bf16(rows * cols);
    rmsnorm(
        stream(),
        &Tensor::of(&dx, [rows, cols]).unwrap(),
        &Tensor::of(&dw, [cols]).unwrap(),
        1e-5,
        &mut TensorMut::of(&mut safe, [rows, cols]).unwrap(),
    )
    .unwrap();
    let c_out = poison_bf16(rows * cols);
    let s = stream();
    let status = {
        let (px, _a) = dx.device_ptr(s);
        let (pw, _b) = dw.device_ptr(s);
        let (py, _c) = c_out.device_ptr(s);
        // SAFETY: device buffers of the sizes the header gives, on the stream's device, alive until synchronized.
        unsafe { capi::l4k_rmsnorm(px as _, pw as _, py as _, rows as i64, cols as i64, 1e-5, s.cu_stream()) }
    };
    // SAFETY: l4k_last_error returns a valid C string.
    let msg = unsafe { CStr::from_ptr(capi::l4k_last_error()) }.to_string_lossy().into_owned();
    assert_eq!(status, Status::Ok, "{msg}");
    assert_eq!(msg, "");
    let (a, b) = (download_bf16(&safe), download_bf16(&c_out));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "C ABI and safe API differ");
}

/// A small paged batch for the attention entry points: 3 sequences over a shuffled block table of 64-slot blocks
/// (the TMA layout of prefill), 10 query heads over 2 KV heads, head_dim 128.
struct PagedBatch {
    q: CudaSlice<bf16>,
    k: CudaSlice<bf16>,
    v: CudaSlice<bf16>,
    cu: CudaSlice<i32>,
    lens: CudaSlice<i32>,
    table: CudaSlice<i32>,
    total_q: usize,
    max_q_len: usize,
    slots: usize,
}

const HEADS: usize = 10;
const KV_HEADS: usize = 2;
const D: usize = 128;
const BLOCK: usize = 64;
const MAX_BLOCKS: usize = 4;

fn paged_batch(r: &mut StdRng, q_lens: &[usize], seq_lens: &[usize]) -> PagedBatch {
    let n_blocks = seq_lens.len() * MAX_BLOCKS;
    let mut ids: Vec<i32> = (0..n_blocks as i32).collect();
    ids.shuffle(r);
    let table: Vec<i32> =
        (0..n_blocks).map(|i| if i % MAX_BLOCKS * BLOCK < seq_lens[i / MAX_BLOCKS] { ids[i] } else { -1 }).collect();
    let slots = n_blocks * BLOCK;
    let mut cu = vec![0i32];
    for &l in q_lens {
        cu.push(cu.last().unwrap() + l as i32);
    }
    let total_q = *cu.last().unwrap() as usize;
    PagedBatch {
        q: upload_bf16(&rand_bf16(r, total_q * HEADS * D, 3.0)),
        k: upload_bf16(&rand_bf16(r, slots * KV_HEADS * D, 1.0)),
        v: upload_bf16(&rand_bf16(r, slots * KV_HEADS * D, 1.0)),
        cu: upload(&cu),
        lens: upload(&seq_lens.iter().map(|&s| s as i32).collect::<Vec<_>>()),
        table: upload(&table),
        total_q,
        max_q_len: q_lens.iter().copied().max().unwrap(),
        slots,
    }
}

/// The safe API's output for this batch (decode when `workspace` is given, prefill otherwise).
fn safe_attention(b: &PagedBatch, mask: Mask, decode: bool) -> Vec<f32> {
    let batch = b.lens.len();
    let (qt, cut) = (Tensor::of(&b.q, [b.total_q, HEADS, D]).unwrap(), Tensor::of(&b.cu, [batch + 1]).unwrap());
    let (kt, vt) =
        (Tensor::of(&b.k, [b.slots, KV_HEADS, D]).unwrap(), Tensor::of(&b.v, [b.slots, KV_HEADS, D]).unwrap());
    let (tt, lt) = (Tensor::of(&b.table, [batch, MAX_BLOCKS]).unwrap(), Tensor::of(&b.lens, [batch]).unwrap());
    let queries = QueryBatch { q: &qt, cu_seqlens: &cut, max_q_len: b.max_q_len };
    let kv = PagedKv { k: &kt, v: &vt, block_table: &tt, seq_lens: &lt, block_size: BLOCK };
    let mut out = poison_bf16(b.total_q * HEADS * D);
    let mut o = TensorMut::of(&mut out, [b.total_q, HEADS, D]).unwrap();
    if decode {
        let n = decode_workspace(b, mask);
        let mut ws = upload(&vec![0u8; n.max(1)]);
        let mut w = TensorMut::of(&mut ws, [n.max(1)]).unwrap();
        attention_decode(stream(), &queries, &kv, mask, default_scale(D), &mut o, &mut w, None).unwrap();
    } else {
        attention_prefill(stream(), &queries, &kv, mask, default_scale(D), &mut o, None).unwrap();
    }
    download_bf16(&out)
}

fn decode_workspace(b: &PagedBatch, mask: Mask) -> usize {
    let chunk = match mask {
        Mask::Causal => 0,
        Mask::Chunked { chunk } => chunk as i32,
    };
    let mut n = 0usize;
    // SAFETY: a valid pointer to a size_t.
    let status = unsafe {
        capi::l4k_attention_decode_workspace_size(
            b.lens.len() as i32,
            HEADS as i32,
            KV_HEADS as i32,
            D as i32,
            b.max_q_len as i32,
            (MAX_BLOCKS * BLOCK) as i32,
            chunk,
            &mut n,
        )
    };
    assert_eq!(status, Status::Ok);
    n
}

/// The same batch through l4k_attention_decode / l4k_attention_prefill: Ok, no bad sequence, and bit-equal to
/// the safe API (which the attention tests hold against the reference). Both outputs start as NaN, so rows the
/// C path left unwritten cannot pass for equal ones. `out_offset` elements shift the C path's output pointer (2:
/// only 4-byte aligned, which the C ABI allows and prefill's 16-byte output stores must not assume).
fn c_attention(b: &PagedBatch, mask: Mask, decode: bool, out_offset: usize) {
    let want = safe_attention(b, mask, decode);
    assert!(want.iter().all(|x| x.is_finite()), "the safe API left rows unwritten");
    let chunk = match mask {
        Mask::Causal => 0,
        Mask::Chunked { chunk } => chunk as i32,
    };
    let out = poison_bf16(b.total_q * HEADS * D + out_offset);
    let counter = upload(&[0u32]);
    let n = decode_workspace(b, mask).max(1);
    let ws = upload(&vec![0u8; n]);
    let s = stream();
    let status = {
        let (pq, _a) = b.q.device_ptr(s);
        let (pk, _b) = b.k.device_ptr(s);
        let (pv, _c) = b.v.device_ptr(s);
        let (pcu, _d) = b.cu.device_ptr(s);
        let (plen, _e) = b.lens.device_ptr(s);
        let (ptab, _f) = b.table.device_ptr(s);
        let (po, _g) = out.device_ptr(s);
        let po = po + 2 * out_offset as u64;
        let (pc, _h) = counter.device_ptr(s);
        let (pw, _i) = ws.device_ptr(s);
        let (total_q, batch, slots) = (b.total_q as i64, b.lens.len() as i32, b.slots as i64);
        let (h, kvh, d, bs, mb, mq) =
            (HEADS as i32, KV_HEADS as i32, D as i32, BLOCK as i32, MAX_BLOCKS as i32, b.max_q_len as i32);
        let scale = default_scale(D);
        if decode {
            // SAFETY: device buffers of the sizes the header gives, on the stream's device, alive until synchronized.
            unsafe {
                capi::l4k_attention_decode(
                    pq as _,
                    pk as _,
                    pv as _,
                    pcu as _,
                    plen as _,
                    ptab as _,
                    po as _,
                    total_q,
                    batch,
                    h,
                    kvh,
                    d,
                    slots,
                    bs,
                    mb,
                    mq,
                    chunk,
                    scale,
                    pw as _,
                    n,
                    pc as _,
                    s.cu_stream(),
                )
            }
        } else {
            // SAFETY: device buffers of the sizes the header gives, on the stream's device, alive until synchronized.
            unsafe {
                capi::l4k_attention_prefill(
                    pq as _,
                    pk as _,
                    pv as _,
                    pcu as _,
                    plen as _,
                    ptab as _,
                    po as _,
                    total_q,
                    batch,
                    h,
                    kvh,
                    d,
                    slots,
                    bs,
                    mb,
                    mq,
                    chunk,
                    scale,
                    pc as _,
                    s.cu_stream(),
                )
            }
        }
    };
    // SAFETY: l4k_last_error returns a valid C string.
    let msg = unsafe { CStr::from_ptr(capi::l4k_last_error()) }.to_string_lossy().into_owned();
    assert_eq!(status, Status::Ok, "{msg}");
    assert_eq!(download(&counter)[0], 0, "the C path counted a bad sequence");
    let got = &download_bf16(&out)[out_offset..];
    let same = want.iter().zip(got).all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "C ABI and safe API differ ({} {mask:?})", if decode { "decode" } else { "prefill" });
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn c_attention_decode_and_prefill_equal_the_safe_api() {
    let mut r = rng(11);
    // Prefill: a fresh sequence (q_len = seq_len), a continued one and a single token; partial last tiles.
    let prefill = paged_batch(&mut r, &[200, 70, 1], &[200, 250, 65]);
    // Decode: one token and two speculative tokens, at and past a block boundary.
    let decode = paged_batch(&mut r, &[1, 2, 1], &[64, 129, 256]);
    for mask in [Mask::Causal, Mask::Chunked { chunk: 64 }, Mask::Chunked { chunk: 7 }] {
        c_attention(&prefill, mask, false, 0);
        c_attention(&prefill, mask, false, 2);
        c_attention(&decode, mask, true, 0);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn c_quantize_expert_weights_equals_the_safe_api() {
    let (e, k, n) = (3, 320, 96);
    let mut r = rng(12);
    let w = upload_bf16(&rand_bf16(&mut r, e * k * n, 0.05));
    let (mut q_safe, mut s_safe) = (poison_e4m3(e * n * k), poison_f32(e * n));
    quantize_expert_weights(
        stream(),
        &Tensor::of(&w, [e, k, n]).unwrap(),
        &mut TensorMut::of(&mut q_safe, [e, n, k]).unwrap(),
        &mut TensorMut::of(&mut s_safe, [e, n]).unwrap(),
    )
    .unwrap();
    let (q_c, s_c) = (poison_e4m3(e * n * k), poison_f32(e * n));
    let s = stream();
    let status = {
        let (pw, _a) = w.device_ptr(s);
        let (pq, _b) = q_c.device_ptr(s);
        let (ps, _c) = s_c.device_ptr(s);
        // SAFETY: device buffers of the sizes the header gives, on the stream's device, alive until synchronized.
        unsafe {
            capi::l4k_quantize_expert_weights(pw as _, pq as _, ps as _, e as i64, k as i64, n as i64, s.cu_stream())
        }
    };
    // SAFETY: l4k_last_error returns a valid C string.
    let msg = unsafe { CStr::from_ptr(capi::l4k_last_error()) }.to_string_lossy().into_owned();
    assert_eq!(status, Status::Ok, "{msg}");
    let (sa, sb) = (download(&s_safe), download(&s_c));
    assert!(sa.iter().all(|x| x.is_finite() && *x > 0.0), "the safe API left scales unwritten");
    assert!(sa.iter().zip(&sb).all(|(a, b)| a.to_bits() == b.to_bits()), "scales differ");
    let (qa, qb) = (download(&q_safe), download(&q_c));
    assert!(qa.iter().zip(&qb).all(|(a, b)| a.0 == b.0), "FP8 bytes differ");
}
