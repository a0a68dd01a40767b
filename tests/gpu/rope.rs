use crate::common::*;
use llama4_kernels::rope::{self, rope_qkv, HeadLayout, LayerKind, Llama3Scaling, Temperature};
use llama4_kernels::{Tensor, TensorMut};
use llama4_reference::check::TOL_BF16;
use llama4_reference::{rope as reference, Precision};
use ndarray::Array2;
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::Rng;

const EPS: f32 = 1e-5;

#[derive(Clone, Debug)]
struct Case {
    tokens: usize,
    n_kv: usize,
    group: usize,
    head_dim: usize,
    kind: u8, // 0 RoPE + QK norm, 1 RoPE, 2 NoPE + temperature, 3 NoPE
    scaled: bool,
    extra_slots: usize,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        0usize..24,
        prop::sample::select(vec![1usize, 2, 3, 8]),
        prop::sample::select(vec![1usize, 2, 5, 8]),
        prop::sample::select(vec![2usize, 10, 34, 64, 66, 100, 128, 256]),
        0u8..4,
        any::<bool>(),
        0usize..6,
        any::<u64>(),
    )
        .prop_map(|(tokens, n_kv, group, head_dim, kind, scaled, extra_slots, seed)| Case {
            tokens,
            n_kv,
            group,
            head_dim,
            kind,
            scaled,
            extra_slots,
            seed,
        })
}

/// Runs one case on the device and against the reference; `bad` tokens get a slot outside [-1, cache_slots).
fn check(c: &Case, bad: usize) {
    let mut r = rng(c.seed);
    let (t, hq, hkv, d) = (c.tokens, c.n_kv * c.group, c.n_kv, c.head_dim);
    let width = (hq + 2 * hkv) * d;
    let qkv = rand_bf16(&mut r, t * width, 3.0);
    // Positions up to 2^17: angles past 1e5 rad, where only an accurate sincos survives.
    let pos: Vec<i32> =
        (0..t).map(|_| if r.gen_bool(0.3) { r.gen_range(0..16) } else { r.gen_range(0..131072) }).collect();
    let cache_slots = t + c.extra_slots;
    let mut rows: Vec<i64> = (0..cache_slots as i64).collect();
    rows.shuffle(&mut r);
    let mut slots: Vec<i64> = rows[..t].iter().map(|&s| if r.gen_bool(0.15) { -1 } else { s }).collect();
    // Bad slots on both sides of [-1, cache_slots): past the end, and negative other than the padding -1.
    for (i, s) in slots.iter_mut().take(bad).enumerate() {
        *s = match i % 3 {
            0 => cache_slots as i64 + 3,
            1 => -2,
            _ => -1000 - i as i64,
        };
    }

    let theta = if r.gen_bool(0.5) { 500000.0 } else { 10000.0 };
    let scaling = c.scaled.then(|| Llama3Scaling {
        factor: r.gen_range(2.0f32..32.0),
        low_freq_factor: 1.0,
        high_freq_factor: if r.gen_bool(0.5) { 1.0 } else { 4.0 },
        original_max_position_embeddings: r.gen_range(16.0f32..8192.0),
    });
    let freqs = rope::inv_freq(theta, d, scaling).unwrap();
    let floor_scale = r.gen_range(1.0f32..64.0).floor();
    let kind = match c.kind {
        0 | 1 => LayerKind::Rope { inv_freq: freqs, qk_norm: (c.kind == 0).then_some(EPS) },
        2 => LayerKind::NoPe { temperature: Some(Temperature { floor_scale, attn_scale: 0.1 }) },
        _ => LayerKind::NoPe { temperature: None },
    };
    let layout = HeadLayout { n_heads: hq, n_kv_heads: hkv, head_dim: d };

    let (dqkv, dpos, dslots) = (upload_bf16(&qkv), upload(&pos), upload(&slots));
    let mut q = poison_bf16(t * hq * d);
    let mut kc = poison_bf16(cache_slots * hkv * d);
    let mut vc = poison_bf16(cache_slots * hkv * d);
    let mut bad_count = upload(&[0u32]);
    rope_qkv(
        stream(),
        &Tensor::of(&dqkv, [t, width]).unwrap(),
        &Tensor::of(&dpos, [t]).unwrap(),
        &Tensor::of(&dslots, [t]).unwrap(),
        layout,
        &kind,
        &mut TensorMut::of(&mut q, [t, hq, d]).unwrap(),
        &mut TensorMut::of(&mut kc, [cache_slots, hkv, d]).unwrap(),
        &mut TensorMut::of(&mut vc, [cache_slots, hkv, d]).unwrap(),
        Some(&mut TensorMut::of(&mut bad_count, [1]).unwrap()),
    )
    .unwrap();

    let upos: Vec<u32> = pos.iter().map(|&p| p as u32).collect();
    let (wq, wk, wv) = reference::prepare_qkv(
        Array2::from_shape_vec((t, width), qkv).unwrap().view(),
        &upos,
        layout,
        &kind,
        Precision::Bf16,
    );
    assert_matches("rope q", &download_bf16(&q), wq.as_slice().unwrap(), TOL_BF16, 0.99);

    // k and v land in their slots; every other cache row is untouched (still poison).
    let (kc, vc) = (download_bf16(&kc), download_bf16(&vc));
    let row = hkv * d;
    let (mut gk, mut gv, mut rk, mut rv) = (vec![], vec![], vec![], vec![]);
    let mut written = vec![false; cache_slots];
    for (ti, &s) in slots.iter().enumerate() {
        if s >= 0 && (s as usize) < cache_slots {
            let s = s as usize;
            written[s] = true;
            gk.extend_from_slice(&kc[s * row..(s + 1) * row]);
            gv.extend_from_slice(&vc[s * row..(s + 1) * row]);
            rk.extend_from_slice(&wk.as_slice().unwrap()[ti * row..(ti + 1) * row]);
            rv.extend_from_slice(&wv.as_slice().unwrap()[ti * row..(ti + 1) * row]);
        }
    }
    assert_matches("rope k", &gk, &rk, TOL_BF16, 0.99);
    assert_matches("rope v (a copy)", &gv, &rv, 0.0, 1.0);
    for (s, w) in written.iter().enumerate() {
        if !w {
            assert!(
                kc[s * row..(s + 1) * row].iter().chain(&vc[s * row..(s + 1) * row]).all(|v| v.is_nan()),
                "cache row {s} was written"
            );
        }
    }
    assert_eq!(download(&bad_count)[0] as usize, bad.min(t), "bad slot count");
}

proptest! {
    #![proptest_config(cases(48))]

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn rope_qkv_matches_reference(c in case()) {
        check(&c, 0);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn out_of_range_slots_are_counted_and_not_written() {
    let c = Case { tokens: 9, n_kv: 2, group: 5, head_dim: 128, kind: 0, scaled: true, extra_slots: 3, seed: 11 };
    check(&c, 5);
}

/// Scout's 40/8 heads of 128 at `tokens` tokens, layer kind `kind`.
fn scout_case(tokens: usize, kind: u8, extra_slots: usize, seed: u64) -> Case {
    Case { tokens, n_kv: 8, group: 5, head_dim: 128, kind, scaled: true, extra_slots, seed }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn scout_layer_shapes() {
    for kind in 0..4 {
        check(&scout_case(37, kind, 1, 5 + kind as u64), 0);
    }
}

/// From 512 tokens on (kernels/rope.cu, kSplitHeadsBelow) a CTA takes all of its token's heads in steps, instead of
/// one step of them: the other layout, with bad slots among the tokens.
#[test]
#[ignore = "needs a CUDA GPU"]
fn many_tokens_take_every_head_of_a_token_in_one_cta() {
    for kind in [0u8, 2] {
        check(&scout_case(700, kind, 2, 21 + kind as u64), 4);
    }
}
