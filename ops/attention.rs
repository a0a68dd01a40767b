//! What the attention ops share: the paged KV cache view, the query batch, the mask, and the validation the
//! safe API and the C ABI both go through. The kernels are in kernels/attention_prefill.cu and
//! kernels/attention_decode.cu (ops in ops/attention_prefill.rs and ops/attention_decode.rs); the contract, the
//! device-side checks included, is written once in kernels/attention_params.h. Reference:
//! llama4_reference::attention.
//!
//! Sequence `b` holds `seq_lens[b]` keys in the cache; its queries are the last `q_len(b)` of those positions,
//! so one description covers a fresh prefill, a prefill that continues a cache, and decode.

use crate::error::{ensure, Error, Result};
use crate::ffi::{check_ptr, AttentionParams};
use crate::tensor::{bf16, same_device, Tensor, TensorMut};
use cudarc::driver::CudaStream;
use std::ptr;

/// Head dims the kernels are built for.
pub const HEAD_DIMS: [usize; 2] = [64, 128];

pub use llama4_contract::Mask;

/// The kernels' encoding of a mask (`AttentionParams::chunk`): 0 for causal, C for chunked. A trait only because
/// `Mask` lives in llama4-contract, which knows nothing of the kernels.
pub(crate) trait MaskCode {
    fn encode(self, op: &str) -> Result<i32>;
}

impl MaskCode for Mask {
    fn encode(self, op: &str) -> Result<i32> {
        match self {
            Mask::Causal => Ok(0),
            Mask::Chunked { chunk } => {
                ensure!(chunk >= 1, "{op}: a chunked mask needs chunk >= 1");
                ensure!(chunk <= i32::MAX as usize, "{op}: chunk {chunk} exceeds i32");
                Ok(chunk as i32)
            }
        }
    }
}

/// A paged KV cache as the rope op writes it, with the block table of a batch of sequences.
///
/// `k`, `v`: [slots, n_kv_heads, head_dim] bf16. `block_table`: [batch, max_blocks] block ids; key position `p` of
/// sequence `b` is slot `block_table[b, p / block_size] * block_size + p % block_size`. `seq_lens`: [batch] keys
/// per sequence (its new tokens included). A contiguous cache is the identity block table.
pub struct PagedKv<'a, 'b> {
    pub k: &'b Tensor<'a, bf16, 3>,
    pub v: &'b Tensor<'a, bf16, 3>,
    pub block_table: &'b Tensor<'a, i32, 2>,
    pub seq_lens: &'b Tensor<'a, i32, 1>,
    pub block_size: usize,
}

/// The queries of a batch: `q` [total_q, n_heads, head_dim] bf16, rows `cu_seqlens[b] .. cu_seqlens[b + 1]` for
/// sequence `b` (`cu_seqlens`: [batch + 1] i32 on the device), and a host-side bound on every sequence's query
/// count (the kernels size their grids from it without a sync, and check it on the device).
pub struct QueryBatch<'a, 'b> {
    pub q: &'b Tensor<'a, bf16, 3>,
    pub cu_seqlens: &'b Tensor<'a, i32, 1>,
    pub max_q_len: usize,
}

/// Checks that the operands agree with each other and returns the parameters without pointers (the caller fills
/// them in). `out_shape` is the output's shape, which must equal q's.
pub(crate) fn params(
    op: &str,
    queries: &QueryBatch,
    kv: &PagedKv,
    out_shape: [usize; 3],
    mask: Mask,
    softmax_scale: f32,
) -> Result<AttentionParams> {
    let [total_q, n_heads, head_dim] = queries.q.shape();
    let [slots, n_kv_heads, kd] = kv.k.shape();
    ensure!(kv.v.shape() == kv.k.shape(), "{op}: v cache {:?} != k cache {:?}", kv.v.shape(), kv.k.shape());
    ensure!(kd == head_dim, "{op}: q head_dim {head_dim} but the cache's is {kd}");
    ensure!(out_shape == queries.q.shape(), "{op}: out {out_shape:?}, want q's shape {:?}", queries.q.shape());
    if !HEAD_DIMS.contains(&head_dim) {
        return Err(Error::Unsupported(format!("{op}: head_dim {head_dim} (built for {HEAD_DIMS:?})")));
    }
    ensure!(n_heads >= 1 && n_kv_heads >= 1, "{op}: head counts must be positive ({n_heads} q, {n_kv_heads} kv)");
    ensure!(n_heads % n_kv_heads == 0, "{op}: {n_heads} query heads are not a multiple of {n_kv_heads} kv heads");
    let [cu] = queries.cu_seqlens.shape();
    ensure!(cu >= 1, "{op}: cu_seqlens needs batch + 1 >= 1 entries");
    let batch = cu - 1;
    let [tb, max_blocks] = kv.block_table.shape();
    ensure!(tb == batch, "{op}: block_table has {tb} rows for {batch} sequences");
    ensure!(kv.seq_lens.shape() == [batch], "{op}: seq_lens {:?} for {batch} sequences", kv.seq_lens.shape());
    ensure!(kv.block_size >= 1, "{op}: block_size must be positive");
    ensure!(
        slots % kv.block_size == 0,
        "{op}: {slots} cache slots are not a whole number of {}-slot blocks",
        kv.block_size
    );
    ensure!(
        max_blocks.checked_mul(kv.block_size).is_some_and(|n| n <= i32::MAX as usize),
        "{op}: {max_blocks} blocks of {} slots exceed i32 positions",
        kv.block_size
    );
    ensure!(queries.max_q_len <= i32::MAX as usize, "{op}: max_q_len {} exceeds i32", queries.max_q_len);
    ensure!(batch <= i32::MAX as usize && total_q <= i32::MAX as usize, "{op}: batch or total_q exceeds i32");
    ensure!(
        softmax_scale.is_finite() && softmax_scale > 0.0,
        "{op}: softmax_scale {softmax_scale} must be finite and positive"
    );
    Ok(AttentionParams {
        q: ptr::null(),
        k_cache: ptr::null(),
        v_cache: ptr::null(),
        cu_seqlens_q: ptr::null(),
        seq_lens_k: ptr::null(),
        block_table: ptr::null(),
        out: ptr::null_mut(),
        bad_seqs: ptr::null_mut(),
        workspace: ptr::null_mut(),
        workspace_bytes: 0,
        total_q: total_q as i64,
        slots: slots as i64,
        batch: batch as i32,
        max_blocks: max_blocks as i32,
        block_size: kv.block_size as i32,
        n_heads: n_heads as i32,
        n_kv_heads: n_kv_heads as i32,
        head_dim: head_dim as i32,
        chunk: mask.encode(op)?,
        max_q_len: queries.max_q_len as i32,
        softmax_scale,
        _pad: 0,
    })
}

/// The operands of one call: checks them against each other ([`params`]), checks that they live on `stream`'s
/// device, fills in their device addresses and the workspace, and runs `launch` on the finished parameters while
/// cudarc's per-buffer guards are alive (they order the launch after earlier writes and record its use).
#[allow(clippy::too_many_arguments)]
pub(crate) fn bind_and_launch(
    op: &str,
    stream: &CudaStream,
    queries: &QueryBatch,
    kv: &PagedKv,
    mask: Mask,
    softmax_scale: f32,
    out: &mut TensorMut<bf16, 3>,
    workspace: Option<&mut TensorMut<u8, 1>>,
    bad_seqs: Option<&mut TensorMut<u32, 1>>,
    launch: impl FnOnce(&AttentionParams) -> Result<()>,
) -> Result<()> {
    let mut p = params(op, queries, kv, out.shape(), mask, softmax_scale)?;
    if let Some(c) = &bad_seqs {
        ensure!(c.shape() == [1], "{op}: bad_seqs must hold one counter (got {:?})", c.shape());
    }
    let mut streams = vec![
        queries.q.stream(),
        queries.cu_seqlens.stream(),
        kv.k.stream(),
        kv.v.stream(),
        kv.block_table.stream(),
        kv.seq_lens.stream(),
        out.stream(),
    ];
    streams.extend(workspace.as_ref().map(|w| w.stream()));
    streams.extend(bad_seqs.as_ref().map(|c| c.stream()));
    same_device(stream, &streams)?;
    let (pq, _gq) = queries.q.ptr(stream);
    let (pcu, _gcu) = queries.cu_seqlens.ptr(stream);
    let (pk, _gk) = kv.k.ptr(stream);
    let (pv, _gv) = kv.v.ptr(stream);
    let (pt, _gt) = kv.block_table.ptr(stream);
    let (ps, _gs) = kv.seq_lens.ptr(stream);
    let (po, _go) = out.ptr_mut(stream);
    let ws_bytes = workspace.as_ref().map_or(0, |w| w.shape()[0]);
    let mut workspace = workspace;
    let ws = workspace.as_mut().map(|w| w.ptr_mut(stream));
    let mut bad_seqs = bad_seqs;
    let bad = bad_seqs.as_mut().map(|c| c.ptr_mut(stream));
    p.q = pq as _;
    p.cu_seqlens_q = pcu as _;
    p.k_cache = pk as _;
    p.v_cache = pv as _;
    p.block_table = pt as _;
    p.seq_lens_k = ps as _;
    p.out = po as _;
    p.workspace = ws.as_ref().map_or(ptr::null_mut(), |w| w.0 as _);
    p.workspace_bytes = ws_bytes as i64;
    p.bad_seqs = bad.as_ref().map_or(ptr::null_mut(), |b| b.0 as _);
    launch(&p)
}

/// Which attention kernel a raw parameter set is for: the two take the same contract and differ only in the limits
/// [`validate`] lists per op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttentionOp {
    Prefill,
    Decode,
}

impl AttentionOp {
    pub(crate) fn name(self) -> &'static str {
        match self {
            AttentionOp::Prefill => "attention_prefill",
            AttentionOp::Decode => "attention_decode",
        }
    }
}

/// Query rows per prefill CTA (kernels/attention_prefill/tile.cuh kBlockM): the grid has ceil(max_q_len / 128)
/// tiles per sequence and head.
pub const PREFILL_QUERY_TILE: usize = 128;
/// Grid limits of the prefill launch: heads on x, query tiles on y, sequences on z.
const PREFILL_MAX_GRID_YZ: usize = 65535;

/// Checks raw parameters (the safe API's from [`params`], the C ABI's from its caller) against the contract of
/// kernels/attention_params.h and `op`'s own limits: the one validator both attention launchers go through, so both
/// ops refuse the same inputs with the same messages. `Ok(false)`: nothing to launch (no sequence; for decode also
/// no query row, since its grid is sized by max_q_len rows). Decode's workspace is checked by its launcher, which
/// needs the device's SM count for it.
pub(crate) fn validate(op: AttentionOp, p: &AttentionParams) -> Result<bool> {
    let name = op.name();
    ensure!(p.batch >= 0 && p.total_q >= 0 && p.slots >= 0, "{name}: batch, total_q and slots must be >= 0");
    ensure!(p.max_blocks >= 0 && p.max_q_len >= 0, "{name}: max_blocks and max_q_len must be >= 0");
    ensure!(p.block_size >= 1, "{name}: block_size must be positive (got {})", p.block_size);
    ensure!(p.slots % p.block_size as i64 == 0, "{name}: {} slots are not whole {}-slot blocks", p.slots, p.block_size);
    ensure!(
        (p.max_blocks as i64) * (p.block_size as i64) <= i32::MAX as i64,
        "{name}: {} blocks of {} slots exceed i32 positions",
        p.max_blocks,
        p.block_size
    );
    ensure!(p.total_q <= i32::MAX as i64, "{name}: total_q {} exceeds i32", p.total_q);
    ensure!(p.n_heads >= 1 && p.n_kv_heads >= 1, "{name}: head counts must be positive");
    ensure!(p.n_heads % p.n_kv_heads == 0, "{name}: {} query heads over {} kv heads", p.n_heads, p.n_kv_heads);
    ensure!(p.chunk >= 0, "{name}: chunk {} < 0", p.chunk);
    ensure!(
        p.softmax_scale.is_finite() && p.softmax_scale > 0.0,
        "{name}: softmax_scale {} must be finite and positive",
        p.softmax_scale
    );
    if !HEAD_DIMS.contains(&(p.head_dim as usize)) {
        return Err(Error::Unsupported(format!("{name}: head_dim {} (built for {HEAD_DIMS:?})", p.head_dim)));
    }
    // What one kernel is built for beyond the contract.
    match op {
        AttentionOp::Prefill => {
            if p.slots > i32::MAX as i64 {
                return Err(Error::Unsupported(format!("{name}: {} cache slots exceed i32", p.slots)));
            }
            let tiles = (p.max_q_len as usize).div_ceil(PREFILL_QUERY_TILE).max(1);
            if tiles > PREFILL_MAX_GRID_YZ
                || p.batch as usize > PREFILL_MAX_GRID_YZ
                || p.n_heads as usize > PREFILL_MAX_GRID_YZ
            {
                return Err(Error::Unsupported(format!(
                    "{name}: grid of {} heads x {tiles} query tiles x {} sequences exceeds 65535 on one axis",
                    p.n_heads, p.batch
                )));
            }
        }
        AttentionOp::Decode => {
            // The kernel indexes a sequence's (query, head) rows with int32.
            ensure!(
                p.n_heads as i64 * p.max_q_len as i64 <= i32::MAX as i64,
                "{name}: n_heads {} x max_q_len {} rows exceed i32",
                p.n_heads,
                p.max_q_len
            );
        }
    }
    if p.batch == 0 || (op == AttentionOp::Decode && (p.max_q_len == 0 || p.total_q == 0)) {
        return Ok(false);
    }
    check_ptr(name, "q", p.q, 16)?;
    // Decode writes 8-byte pieces of a row; prefill's epilogue falls back to 4-byte stores (the C ABI allows it).
    check_ptr(name, "out", p.out, if op == AttentionOp::Decode { 16 } else { 4 })?;
    check_ptr(name, "cu_seqlens_q", p.cu_seqlens_q as _, 4)?;
    check_ptr(name, "seq_lens_k", p.seq_lens_k as _, 4)?;
    if !p.bad_seqs.is_null() {
        check_ptr(name, "bad_seqs", p.bad_seqs as _, 4)?;
    }
    // Without columns the table is never read, without slots the caches never are: every sequence that would read
    // them is bad by the contract.
    if p.max_blocks > 0 {
        check_ptr(name, "block_table", p.block_table as _, 4)?;
    }
    if p.slots > 0 {
        check_ptr(name, "k_cache", p.k_cache, 16)?;
        check_ptr(name, "v_cache", p.v_cache, 16)?;
    }
    Ok(true)
}

/// The keys `[lo, hi)` the kernels visit for the query positions `[q_first, q_last]` under `chunk` (0: causal):
/// kernels/paged_kv.cuh's rule, the one both kernels compile, run on the host.
#[cfg(test)]
pub(crate) fn kernel_key_range(q_first: i32, q_last: i32, chunk: i32) -> (i32, i32) {
    let (mut lo, mut hi) = (0, 0);
    // SAFETY: a pure function of its arguments writing two ints.
    unsafe { crate::ffi::l4k_internal_attention_key_range(q_first, q_last, chunk, &mut lo, &mut hi) };
    (lo, hi)
}

/// Llama 4's softmax scale, `head_dim ** -0.5` as a Python float, applied in f32.
pub fn default_scale(head_dim: usize) -> f32 {
    (1.0 / (head_dim as f64).sqrt()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use llama4_reference::attention::{key_range, Mask as RefMask};
    use std::ffi::c_void;

    /// A consistent parameter set (fake, aligned addresses: the validator never dereferences them).
    fn good() -> AttentionParams {
        let at = |a: usize| a as *const c_void;
        AttentionParams {
            q: at(0x1000),
            k_cache: at(0x2000),
            v_cache: at(0x3000),
            cu_seqlens_q: at(0x4000) as _,
            seq_lens_k: at(0x5000) as _,
            block_table: at(0x6000) as _,
            out: at(0x7000) as _,
            bad_seqs: ptr::null_mut(),
            workspace: ptr::null_mut(),
            workspace_bytes: 0,
            total_q: 8,
            slots: 64,
            batch: 2,
            max_blocks: 2,
            block_size: 16,
            n_heads: 8,
            n_kv_heads: 2,
            head_dim: 128,
            chunk: 0,
            max_q_len: 4,
            softmax_scale: 0.1,
            _pad: 0,
        }
    }

    const OPS: [AttentionOp; 2] = [AttentionOp::Prefill, AttentionOp::Decode];

    #[test]
    fn both_ops_refuse_the_same_contract_violations() {
        let g = good();
        for op in OPS {
            assert_eq!(validate(op, &g), Ok(true), "{op:?}");
        }
        let bad: [(&str, AttentionParams); 16] = [
            ("negative batch", AttentionParams { batch: -1, ..g }),
            ("negative total_q", AttentionParams { total_q: -1, ..g }),
            ("negative slots", AttentionParams { slots: -16, ..g }),
            ("negative max_blocks", AttentionParams { max_blocks: -1, ..g }),
            ("negative max_q_len", AttentionParams { max_q_len: -1, ..g }),
            ("block_size 0", AttentionParams { block_size: 0, ..g }),
            ("slots not whole blocks", AttentionParams { slots: 60, ..g }),
            ("positions past i32", AttentionParams { max_blocks: i32::MAX / 8, ..g }),
            ("total_q past i32", AttentionParams { total_q: i32::MAX as i64 + 1, ..g }),
            ("no kv heads", AttentionParams { n_kv_heads: 0, ..g }),
            ("8 heads over 3", AttentionParams { n_kv_heads: 3, ..g }),
            ("negative chunk", AttentionParams { chunk: -64, ..g }),
            ("NaN scale", AttentionParams { softmax_scale: f32::NAN, ..g }),
            ("zero scale", AttentionParams { softmax_scale: 0.0, ..g }),
            ("null q", AttentionParams { q: ptr::null(), ..g }),
            ("misaligned k_cache", AttentionParams { k_cache: 0x2008 as *const c_void, ..g }),
        ];
        for (what, p) in bad {
            for op in OPS {
                let e = validate(op, &p);
                assert!(matches!(e, Err(Error::InvalidArgument(_))), "{op:?}, {what}: {e:?}");
            }
        }
        for op in OPS {
            let e = validate(op, &AttentionParams { head_dim: 96, ..g });
            assert!(matches!(e, Err(Error::Unsupported(_))), "{op:?}: {e:?}");
            // A table without columns and a cache without slots are never read: their pointers may be null.
            let empty =
                AttentionParams { max_blocks: 0, block_table: ptr::null(), slots: 0, k_cache: ptr::null(), ..g };
            assert_eq!(validate(op, &AttentionParams { v_cache: ptr::null(), ..empty }), Ok(true), "{op:?}");
            // No sequence: nothing to launch, whatever the pointers.
            assert_eq!(validate(op, &AttentionParams { batch: 0, q: ptr::null(), ..g }), Ok(false), "{op:?}");
            let e = validate(op, &AttentionParams { bad_seqs: 0x9002 as *mut u32, ..g });
            assert!(matches!(e, Err(Error::InvalidArgument(ref m)) if m.contains("bad_seqs")), "{op:?}: {e:?}");
        }
    }

    #[test]
    fn each_op_keeps_its_own_limits() {
        let g = good();
        // Prefill's grid: more than 65535 query tiles; its slots are i32.
        let e = validate(AttentionOp::Prefill, &AttentionParams { max_q_len: 65536 * 128, ..g });
        assert!(matches!(e, Err(Error::Unsupported(_))), "{e:?}");
        let e = validate(AttentionOp::Prefill, &AttentionParams { slots: 1 << 32, ..g });
        assert!(matches!(e, Err(Error::Unsupported(_))), "{e:?}");
        assert_eq!(validate(AttentionOp::Decode, &AttentionParams { slots: 1 << 32, ..g }), Ok(true));
        // Decode's rows are int32; its output is written in 8-byte pieces, prefill's may be 4-byte aligned.
        let e = validate(AttentionOp::Decode, &AttentionParams { max_q_len: i32::MAX / 4, ..g });
        assert!(matches!(e, Err(Error::InvalidArgument(ref m)) if m.contains("exceed i32")), "{e:?}");
        let out4 = AttentionParams { out: 0x7004 as *mut c_void, ..g };
        assert_eq!(validate(AttentionOp::Prefill, &out4), Ok(true));
        assert!(validate(AttentionOp::Decode, &out4).is_err());
        // Decode sizes its grid by max_q_len rows: none, nothing to run.
        assert_eq!(validate(AttentionOp::Decode, &AttentionParams { max_q_len: 0, ..g }), Ok(false));
        assert_eq!(validate(AttentionOp::Prefill, &AttentionParams { max_q_len: 0, ..g }), Ok(true));
    }

    #[test]
    fn the_kernels_key_range_is_the_union_of_the_references() {
        for chunk in [0usize, 1, 3, 64, 100, 8192] {
            let mask = if chunk == 0 { RefMask::Causal } else { RefMask::Chunked { chunk } };
            for q_first in [0usize, 1, 2, 63, 64, 99, 100, 127, 128, 8191, 8192, 10000] {
                for run in [1usize, 2, 64, 128, 200] {
                    let q_last = q_first + run - 1;
                    let lo = (q_first..=q_last).map(|q| key_range(mask, q).start).min().unwrap();
                    let hi = (q_first..=q_last).map(|q| key_range(mask, q).end).max().unwrap();
                    let got = kernel_key_range(q_first as i32, q_last as i32, chunk as i32);
                    assert_eq!(got, (lo as i32, hi as i32), "chunk {chunk}, queries {q_first}..={q_last}");
                }
            }
        }
    }
}
