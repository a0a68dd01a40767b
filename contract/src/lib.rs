//! The plain types of the Llama 4 text model contract (`shared/spec/llama4-text.md`, "Attention"), defined once
//! for the kernels (`llama4-kernels`), the oracle (`llama4-reference`) and the model (`llama4-model`). Data
//! only: what each op computes from them lives with the op, and each crate validates them on its own terms (the
//! kernels return errors, the oracle panics).

/// Which keys a query may attend to, on absolute 0-based positions (spec, "Attention" step 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mask {
    /// Global causal attention (NoPE layers): key `k` is visible from query `q` iff `k <= q`.
    Causal,
    /// Chunked causal attention (RoPE layers, `attention_chunk_size` C): additionally `k / C == q / C`, so the
    /// first token of a chunk sees only itself and a query never needs more than C - 1 earlier keys. A chunk of
    /// 0 is invalid; every op refuses it.
    Chunked { chunk: usize },
}

/// llama3 frequency scaling of the RoPE frequencies (`rope_scaling` with rope_type "llama3"; spec, "Attention"
/// step 2). `#[repr(C)]`: it is `l4k_llama3_scaling` of the C ABI (include/llama4_kernels.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: f32,
}

/// Head counts and size of one layer's attention: query head `h` reads KV head `h / (n_heads / n_kv_heads)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeadLayout {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// NoPE-layer query temperature at absolute position p: `log(floor((p + 1) / floor_scale) + 1) * attn_scale + 1`
/// (spec, "Attention" step 4; transformers' defaults are floor_scale 8192, attn_scale 0.1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Temperature {
    pub floor_scale: f32,
    pub attn_scale: f32,
}

/// What a layer does to its q and k projections before attention.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerKind {
    /// RoPE layer (chunked attention): rotate q and k on adjacent pairs by `pos * inv_freq[j]`, j < head_dim / 2
    /// (spec step 2); `qk_norm: Some(eps)` then RMS-normalises every head of q and k without a weight (step 3,
    /// `use_qk_norm`, eps = rms_norm_eps).
    Rope { inv_freq: Vec<f32>, qk_norm: Option<f32> },
    /// NoPE layer (global attention): q scaled by the temperature when `attn_temperature_tuning` is on (step 4).
    NoPe { temperature: Option<Temperature> },
}

/// The RoPE frequencies `inv_freq[j]`, j < head_dim / 2, in f32 exactly as transformers computes them (spec,
/// "Attention" step 2), so that the kernels and the oracle share one derivation of the contract's numbers.
/// transformers' expression, op by op in PyTorch's f32 semantics:
/// - `1.0 / theta ** (arange(0, d, 2) / d)`: the exponent an f32 division, `theta ** x` f32 pow, then the
///   reciprocal;
/// - llama3 scaling: `wavelen = 2 * pi / inv_freq`, where PyTorch evaluates `scalar / tensor` as
///   `tensor.reciprocal() * scalar` (two roundings, with the scalar 2 pi rounded to f32), likewise
///   `original_max_position_embeddings / wavelen`; the band limits `orig / low` and `orig / high` are Python
///   (f64) divisions rounded to f32 when compared; `smooth = (orig / wavelen - low) / (high - low)` and
///   `(1 - smooth) * inv / factor + smooth * inv`, left to right, no fused multiply-add.
///
/// The caller checks the arguments (head_dim even and positive, theta > 1, scaling factors positive and
/// `high >= low`). With `high == low` the smooth band is empty (transformers would divide by zero at a
/// wavelength exactly on the limit) and such a frequency is kept unscaled.
pub fn rope_inv_freq(theta: f32, head_dim: usize, scaling: Option<Llama3Scaling>) -> Vec<f32> {
    rope_inv_freq_with_pow(theta, head_dim, scaling, f32::powf)
}

/// [`rope_inv_freq`] with another f32 `pow(theta, x)` (ours is correctly rounded; PyTorch's CPU pow is SLEEF's,
/// accurate to 1 ulp): what a test uses to show that the rest of the expression matches op for op.
pub fn rope_inv_freq_with_pow(
    theta: f32,
    head_dim: usize,
    scaling: Option<Llama3Scaling>,
    pow: impl Fn(f32, f32) -> f32,
) -> Vec<f32> {
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    (0..head_dim / 2)
        .map(|j| {
            let inv = 1.0f32 / pow(theta, (2 * j) as f32 / head_dim as f32);
            let Some(s) = scaling else { return inv };
            let orig = s.original_max_position_embeddings;
            let low_wl = (orig as f64 / s.low_freq_factor as f64) as f32;
            let high_wl = (orig as f64 / s.high_freq_factor as f64) as f32;
            let wl = (1.0f32 / inv) * two_pi;
            // torch.where(wavelen > low_wl, inv / factor, inv), then the smooth band in between.
            let llama = if wl > low_wl { inv / s.factor } else { inv };
            let medium = !(wl < high_wl) && !(wl > low_wl);
            if !medium || s.high_freq_factor == s.low_freq_factor {
                return llama;
            }
            let band = (s.high_freq_factor as f64 - s.low_freq_factor as f64) as f32;
            let smooth = ((1.0f32 / wl) * orig - s.low_freq_factor) / band;
            (1.0 - smooth) * llama / s.factor + smooth * llama
        })
        .collect()
}
