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
