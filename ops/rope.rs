//! Attention pre-processing of one layer, fused: split the q/k/v projection, RoPE on adjacent pairs with llama3
//! frequency scaling and per-head QK RMS norm (RoPE layers), temperature-scaled q (NoPE layers), q written
//! densely and k/v written into the KV cache. Kernel: kernels/rope.cu. Reference: llama4_reference::rope.
//!
//! KV cache layout: `[slots, n_kv_heads, head_dim]` bf16, one row per cached token, addressed by a per-token
//! slot index (`slots[t]`; -1 skips the token). A paged cache is a block table over slots
//! (`slot = block * block_size + offset`), so engines share and recycle memory by block; a chunked layer's
//! cache only needs the slots of the current chunk.

use crate::abi::c_struct;
use crate::error::{ensure, Error, Result};
use crate::ffi::{self, check_grid, check_ptr, launched, RopeParams, MAX_HEAD_DIM};
use crate::tensor::{bf16, same_device, Tensor, TensorMut};
use cudarc::driver::sys::CUstream;
use cudarc::driver::CudaStream;
use std::ptr;

const OP: &str = "rope";

c_struct! {
    /// llama3 frequency scaling (`rope_scaling.rope_type == "llama3"`), the C ABI's `l4k_llama3_scaling`.
    #[derive(PartialEq)]
    pub struct Llama3Scaling as "l4k_llama3_scaling" {
        pub factor: f32,
        pub low_freq_factor: f32,
        pub high_freq_factor: f32,
        pub original_max_position_embeddings: f32,
    }
}

/// RoPE frequencies `inv_freq[j]`, j < head_dim / 2, in f32 as transformers computes them. With low == high the
/// smooth band is empty and nothing divides by zero. Computed once per model on the host.
pub fn inv_freq(theta: f32, head_dim: usize, scaling: Option<Llama3Scaling>) -> Result<Vec<f32>> {
    ensure!(head_dim >= 2 && head_dim % 2 == 0, "{OP}: head_dim {head_dim} must be even and positive");
    ensure!(theta.is_finite() && theta > 1.0, "{OP}: rope_theta {theta} must be finite and > 1");
    if let Some(s) = scaling {
        ensure!(
            s.factor > 0.0
                && s.low_freq_factor > 0.0
                && s.high_freq_factor >= s.low_freq_factor
                && s.original_max_position_embeddings > 0.0,
            "{OP}: llama3 scaling needs factor, low_freq_factor > 0, high_freq_factor >= low_freq_factor and a \
             positive original_max_position_embeddings (got {s:?})"
        );
    }
    Ok((0..head_dim / 2)
        .map(|j| {
            let inv = 1.0f32 / theta.powf((2 * j) as f32 / head_dim as f32);
            let Some(s) = scaling else { return inv };
            let orig = s.original_max_position_embeddings;
            let wl = 2.0 * std::f32::consts::PI / inv;
            if wl > orig / s.low_freq_factor {
                inv / s.factor
            } else if wl < orig / s.high_freq_factor || s.high_freq_factor == s.low_freq_factor {
                inv
            } else {
                let smooth = (orig / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * inv / s.factor + smooth * inv
            }
        })
        .collect())
}

/// Head counts and size of one layer's attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLayout {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// NoPE-layer query temperature: `log(floor((p + 1) / floor_scale) + 1) * attn_scale + 1`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Temperature {
    pub floor_scale: f32,
    pub attn_scale: f32,
}

/// What the layer does before attention.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerKind {
    /// RoPE layer (chunked attention): rotate q and k by `inv_freq`; `qk_norm: Some(eps)` then normalises them.
    Rope { inv_freq: Vec<f32>, qk_norm: Option<f32> },
    /// NoPE layer (global attention): q optionally scaled by the temperature.
    NoPe { temperature: Option<Temperature> },
}

/// Pre-processes `qkv` [T, (Hq + 2 Hkv) * D] at absolute positions `pos` [T]: writes q to `q_out` [T, Hq, D]
/// and k, v to row `slots[t]` of `k_cache` / `v_cache` [S, Hkv, D]. Slots outside [-1, S) are not written; if
/// `bad_slots` is given, the number of such tokens is added to it (on the device, no host sync).
#[allow(clippy::too_many_arguments)]
pub fn rope_qkv(
    stream: &CudaStream,
    qkv: &Tensor<bf16, 2>,
    pos: &Tensor<i32, 1>,
    slots: &Tensor<i64, 1>,
    layout: HeadLayout,
    kind: &LayerKind,
    q_out: &mut TensorMut<bf16, 3>,
    k_cache: &mut TensorMut<bf16, 3>,
    v_cache: &mut TensorMut<bf16, 3>,
    bad_slots: Option<&mut TensorMut<u32, 1>>,
) -> Result<()> {
    let HeadLayout { n_heads, n_kv_heads, head_dim } = layout;
    let [t, width] = qkv.shape();
    ensure!(
        width == (n_heads + 2 * n_kv_heads) * head_dim,
        "{OP}: qkv has {width} columns; {n_heads} q + 2 x {n_kv_heads} kv heads of {head_dim} need {}",
        (n_heads + 2 * n_kv_heads) * head_dim
    );
    ensure!(
        pos.shape() == [t] && slots.shape() == [t],
        "{OP}: pos {:?} / slots {:?} for {t} tokens",
        pos.shape(),
        slots.shape()
    );
    ensure!(
        q_out.shape() == [t, n_heads, head_dim],
        "{OP}: q_out {:?}, want [{t}, {n_heads}, {head_dim}]",
        q_out.shape()
    );
    let [cache_slots, kh, kd] = k_cache.shape();
    ensure!(
        [kh, kd] == [n_kv_heads, head_dim],
        "{OP}: k_cache {:?}, want [_, {n_kv_heads}, {head_dim}]",
        k_cache.shape()
    );
    ensure!(v_cache.shape() == k_cache.shape(), "{OP}: v_cache {:?} != k_cache {:?}", v_cache.shape(), k_cache.shape());
    if let Some(b) = &bad_slots {
        ensure!(b.shape() == [1], "{OP}: bad_slots must hold one counter");
    }
    let mut streams =
        vec![qkv.stream(), pos.stream(), slots.stream(), q_out.stream(), k_cache.stream(), v_cache.stream()];
    if let Some(b) = &bad_slots {
        streams.push(b.stream());
    }
    same_device(stream, &streams)?;

    let mut p = params(kind, layout, t as i64, cache_slots as i64)?;
    let (a, _ga) = qkv.ptr(stream);
    let (b, _gb) = pos.ptr(stream);
    let (c, _gc) = slots.ptr(stream);
    let (d, _gd) = q_out.ptr_mut(stream);
    let (e, _ge) = k_cache.ptr_mut(stream);
    let (f, _gf) = v_cache.ptr_mut(stream);
    let mut bad_guard = None;
    if let Some(bs) = bad_slots {
        let (g, guard) = bs.ptr_mut(stream);
        p.bad_slots = g as _;
        bad_guard = Some(guard);
    }
    (p.qkv, p.pos, p.slots, p.q_out, p.k_cache, p.v_cache) = (a as _, b as _, c as _, d as _, e as _, f as _);
    let r = launch(&p, stream.cu_stream());
    drop(bad_guard);
    r
}

/// Parameters without pointers: the layer's shape and kind, validated.
pub(crate) fn params(kind: &LayerKind, l: HeadLayout, tokens: i64, cache_slots: i64) -> Result<RopeParams> {
    ensure!(l.n_heads >= 1 && l.n_kv_heads >= 1, "{OP}: head counts must be positive ({l:?})");
    ensure!(
        l.n_heads % l.n_kv_heads == 0,
        "{OP}: {} query heads are not a multiple of {} kv heads",
        l.n_heads,
        l.n_kv_heads
    );
    ensure!(l.head_dim >= 2 && l.head_dim % 2 == 0, "{OP}: head_dim {} must be even and positive", l.head_dim);
    if l.head_dim > MAX_HEAD_DIM {
        return Err(Error::Unsupported(format!("{OP}: head_dim {} > {MAX_HEAD_DIM}", l.head_dim)));
    }
    ensure!(l.n_heads + 2 * l.n_kv_heads <= 65536, "{OP}: {} heads per token is beyond any real model", l.n_heads);
    let mut p = RopeParams {
        qkv: ptr::null(),
        pos: ptr::null(),
        slots: ptr::null(),
        q_out: ptr::null_mut(),
        k_cache: ptr::null_mut(),
        v_cache: ptr::null_mut(),
        bad_slots: ptr::null_mut(),
        tokens,
        cache_slots,
        n_heads: l.n_heads as i32,
        n_kv_heads: l.n_kv_heads as i32,
        head_dim: l.head_dim as i32,
        rope: 0,
        qk_norm: 0,
        temperature: 0,
        eps: 0.0,
        floor_scale: 1.0,
        attn_scale: 0.0,
        _pad: 0,
        inv_freq: [0.0; MAX_HEAD_DIM / 2],
    };
    match kind {
        LayerKind::Rope { inv_freq, qk_norm } => {
            ensure!(
                inv_freq.len() * 2 == l.head_dim,
                "{OP}: {} frequencies for head_dim {}",
                inv_freq.len(),
                l.head_dim
            );
            ensure!(inv_freq.iter().all(|f| f.is_finite()), "{OP}: non-finite RoPE frequency");
            p.rope = 1;
            p.inv_freq[..inv_freq.len()].copy_from_slice(inv_freq);
            if let Some(eps) = qk_norm {
                ensure!(eps.is_finite() && *eps >= 0.0, "{OP}: qk_norm eps {eps} must be finite and >= 0");
                p.qk_norm = 1;
                p.eps = *eps;
            }
        }
        LayerKind::NoPe { temperature } => {
            if let Some(t) = temperature {
                ensure!(
                    t.floor_scale.is_finite() && t.floor_scale > 0.0,
                    "{OP}: floor_scale {} must be > 0",
                    t.floor_scale
                );
                ensure!(t.attn_scale.is_finite(), "{OP}: attn_scale {} must be finite", t.attn_scale);
                p.temperature = 1;
                p.floor_scale = t.floor_scale;
                p.attn_scale = t.attn_scale;
            }
        }
    }
    Ok(p)
}

pub(crate) fn launch(p: &RopeParams, stream: CUstream) -> Result<()> {
    check_grid(OP, "tokens", p.tokens)?;
    ensure!(p.cache_slots >= 0, "{OP}: cache_slots is negative ({})", p.cache_slots);
    if p.tokens == 0 {
        return Ok(());
    }
    check_ptr(OP, "qkv", p.qkv, 2)?;
    check_ptr(OP, "pos", p.pos as _, 4)?;
    check_ptr(OP, "slots", p.slots as _, 8)?;
    check_ptr(OP, "q_out", p.q_out, 2)?;
    if p.cache_slots > 0 {
        check_ptr(OP, "k_cache", p.k_cache, 2)?;
        check_ptr(OP, "v_cache", p.v_cache, 2)?;
    }
    if !p.bad_slots.is_null() {
        check_ptr(OP, "bad_slots", p.bad_slots as _, 4)?;
    }
    // SAFETY: validated above.
    launched(OP, unsafe { ffi::l4k_launch_rope(p, stream) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_rejects_bad_bands_and_keeps_low_equal_high_finite() {
        let s = Llama3Scaling {
            factor: 16.0,
            low_freq_factor: 1.0,
            high_freq_factor: 1.0,
            original_max_position_embeddings: 8192.0,
        };
        assert!(inv_freq(500000.0, 128, Some(s)).unwrap().iter().all(|f| f.is_finite() && *f > 0.0));
        let bad = Llama3Scaling { high_freq_factor: 0.5, ..s };
        assert!(matches!(inv_freq(500000.0, 128, Some(bad)), Err(Error::InvalidArgument(_))));
        assert!(inv_freq(500000.0, 7, None).is_err());
    }

    #[test]
    fn params_refuse_what_the_kernel_cannot_do() {
        let l = HeadLayout { n_heads: 40, n_kv_heads: 8, head_dim: 128 };
        let nope = LayerKind::NoPe { temperature: None };
        assert!(params(&nope, l, 1, 1).is_ok());
        assert!(matches!(params(&nope, HeadLayout { head_dim: 512, ..l }, 1, 1), Err(Error::Unsupported(_))));
        assert!(params(&nope, HeadLayout { n_kv_heads: 7, ..l }, 1, 1).is_err());
        let short = LayerKind::Rope { inv_freq: vec![1.0; 10], qk_norm: None };
        assert!(params(&short, l, 1, 1).is_err());
    }
}
