//! Dense projections with `nn.Linear` weights [out, in]: `y = x w^T` (attention q/k/v/o, the shared expert,
//! the router, lm_head). Reference: llama4_reference::linear::linear (bf16), and
//! llama4_reference::grouped_gemm::grouped_gemm_rowwise with one group (FP8).
//!
//! - [`Blas::linear_bf16`]: bf16 inputs, f32 accumulation, output bf16 (rounded once from the f32 sum, as
//!   PyTorch's bf16 matmul) or f32 (lm_head logits for sampling), on one of two schedules ([`LinearSchedule`]):
//!   our streaming GEMV (kernels/linear.cu) at one row where it measured faster ([`gemv_is_faster`]), cuBLASLt
//!   (CUBLAS_COMPUTE_32F) otherwise. The GEMV sums k in its own fixed order, so the two agree to rounding, not
//!   bit for bit; each is deterministic. cuBLASLt: row-major through
//!   the column-major identity: Y^T [n, m] = W^T (W [n, k] row-major is k x n column-major, op T) times
//!   X^T (X [m, k] row-major is k x m column-major, op N), and Y^T column-major is Y [m, n] row-major.
//!   cudarc's high-level Matmul would allocate a workspace and ask the heuristic on every call; here the
//!   descriptors, layouts and the heuristic's algorithm are made once per shape and cached in the [`Blas`]
//!   ("plans"), and a call only enqueues cublasLtMatmul on the caller's stream with the caller's workspace:
//!   no allocation, no sync, capturable in a CUDA graph once the shape has been seen (make one eager call of
//!   each shape before capturing: the heuristic is host work that queries the device).
//! - [`linear_fp8`]: the FP8 rowwise linear is the routed experts' grouped GEMM with one expert
//!   ([`crate::grouped_gemm::grouped_gemm_fp8`], its constraints: k % 16 == 0, n % 8 == 0).
//!
//! libcublasLt is loaded at run time (cudarc's dynamic loading) and is not part of the toolkit this crate builds
//! with: [`Blas::new`] says so (`Error::NoDevice`) when it cannot be loaded.

use crate::error::{ensure, Error, Result};
use crate::ffi::{self, check_ptr, launched, LinearParams};
use crate::grouped_gemm::{grouped_gemm_fp8, GroupedGemm, Schedule};
use crate::tensor::{bf16, same_device, Element, Tensor, TensorMut, E4M3};
use cudarc::cublaslt::{result, sys};
use cudarc::driver::sys::CUstream;
use cudarc::driver::{CudaContext, CudaStream};
use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr;
use std::sync::{Arc, Mutex};

const OP: &str = "linear";

pub use crate::ffi::LINEAR_WORKSPACE_BYTES;

/// Plans a [`Blas`] keeps; one more shape starts the cache over (a model has a few dozen shapes, so only a
/// caller sweeping token counts gets here).
pub const MAX_CACHED_PLANS: usize = 4096;

pub use crate::ffi::{LINEAR_OUT_BF16, LINEAR_OUT_F32};

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::bf16 {}
    impl Sealed for f32 {}
}

/// Output element types of [`Blas::linear_bf16`]: bf16 or f32.
pub trait LinearOut: Element + sealed::Sealed {
    #[doc(hidden)]
    const CODE: i32;
}
impl LinearOut for bf16 {
    const CODE: i32 = LINEAR_OUT_BF16;
}
impl LinearOut for f32 {
    const CODE: i32 = LINEAR_OUT_F32;
}

fn out_type(code: i32) -> Result<(sys::cudaDataType, usize, &'static str)> {
    match code {
        LINEAR_OUT_BF16 => Ok((sys::cudaDataType::CUDA_R_16BF, 2, "bf16")),
        LINEAR_OUT_F32 => Ok((sys::cudaDataType::CUDA_R_32F, 4, "f32")),
        c => Err(Error::InvalidArgument(format!("{OP}: unknown output dtype {c}"))),
    }
}

/// Which kernel serves a bf16 linear.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinearSchedule {
    /// The GEMV where [`gemv_is_faster`] and it can serve the call ([`gemv_can_serve`]), else cuBLASLt.
    #[default]
    Auto,
    /// cuBLASLt (any shape).
    Blas,
    /// The streaming GEMV (kernels/linear.cu): k % 8 == 0 and x, w 16-byte aligned, any m (a pass per 8 rows,
    /// each re-reading the weights). A call it cannot serve is `Unsupported`.
    Gemv,
    /// The GEMV on at most `ctas` CTAs, each looping over tiles of 16 output columns (the same bits as
    /// [`LinearSchedule::Gemv`]): for a GEMV that runs beside another kernel, as the shared expert beside the
    /// routed experts, so that the other kernel finds CTA slots free instead of waiting for this grid to drain.
    /// `ctas` >= 1; besides the GEMV's limits it refuses shapes whose k the GEMV splits over a cluster
    /// ([`gemv_splits_k`]).
    GemvBounded { ctas: u32 },
}

/// Whether the GEMV splits each tile's k over a cluster of CTAs, where a bounded grid
/// ([`LinearSchedule::GemvBounded`]) is refused: kernels/linear.cuh's rule (asked of it), at most 8 rows and
/// 64 / tiles >= 2 for tiles of 16 columns, so n <= 512.
pub fn gemv_splits_k(m: usize, n: usize) -> bool {
    let clamp = |v: usize| v.min(i64::MAX as usize) as i64;
    // SAFETY: host code reading two integers.
    unsafe { ffi::l4k_internal_linear_splits(clamp(m), clamp(n)) > 1 }
}

/// Token rows one GEMV pass multiplies (the mma's N).
pub const GEMV_MAX_ROWS: usize = 8;

/// Where Auto takes the GEMV, by measurement on the H200 (kernels/NOTES.md, "linear GEMV"): one row and
/// 2048 ..= 16384 output columns, or at most 128 (the routers: Scout's 16 experts, Maverick's 128). In the decode
/// graph it reads at cuBLASLt's rate or better and, being PDL-launched with its weights prefetched ahead of the
/// wait, overlaps the kernels around it (Scout Meta batch 1: 9.60 -> 8.76 ms a step); at 8 rows the model step
/// was 9% slower than on cuBLASLt, lm_head's 202048 columns 3% slower (495.7 vs 479.0 us). Below 1024 columns
/// the kernel splits k over a cluster of CTAs per 16 columns (one CTA per 16 would leave HBM idle); between 129
/// and 2047 columns nothing has been measured, so cuBLASLt keeps them.
pub fn gemv_is_faster(m: usize, n: usize) -> bool {
    m == 1 && ((1..=128).contains(&n) || (2048..=16384).contains(&n))
}

/// Whether the GEMV can serve these operands: k a multiple of 8 and x and w 16-byte aligned (its lanes load 16
/// bytes of a row at a time).
pub fn gemv_can_serve(k: usize, x: *const c_void, w: *const c_void) -> bool {
    k % 8 == 0 && x as usize % 16 == 0 && w as usize % 16 == 0
}

/// One call's raw operands (device addresses), shared by the safe API and the C ABI.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinearArgs {
    pub x: *const c_void,
    pub w: *const c_void,
    pub y: *mut c_void,
    pub out: i32,
    pub m: i64,
    pub n: i64,
    pub k: i64,
    pub workspace: *mut c_void,
    pub workspace_bytes: usize,
    pub schedule: LinearSchedule,
}

/// What a plan depends on: the shape, the output type, and each matrix pointer's alignment (the heuristic may
/// pick a kernel that needs 16-byte or wider alignment; cudarc allocations are 256-byte aligned, a sub-view may
/// not be).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    m: i64,
    n: i64,
    k: i64,
    out: i32,
    align: [u32; 3], // W (cuBLASLt's A), X (B), Y (C = D)
}

/// Alignment in bytes cuBLASLt may assume of `p`: its largest power-of-two divisor, at most 256.
fn alignment(p: *const c_void) -> u32 {
    1u32 << (p as usize).trailing_zeros().min(8)
}

/// The descriptors and algorithm of one shape. Read-only once made.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3], // W, X, Y (C and D)
    algo: sys::cublasLtMatmulAlgo_t,
}

// SAFETY: cuBLASLt descriptors are host objects that cublasLtMatmul only reads; a plan is never modified after
// it is made, so several threads may use it at once.
unsafe impl Send for Plan {}
unsafe impl Sync for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created by Plan::new and destroyed once. GEMMs already enqueued (or captured) do not refer to
        // the descriptors: cuBLASLt reads them while enqueueing.
        unsafe {
            for l in self.layouts {
                if !l.is_null() {
                    let _ = result::destroy_matrix_layout(l);
                }
            }
            if !self.desc.is_null() {
                let _ = result::destroy_matmul_desc(self.desc);
            }
        }
    }
}

fn cublas(what: &str, e: result::CublasError) -> Error {
    match e.0 {
        sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED => Error::Unsupported(format!("{OP}: {what}: {e}")),
        _ => Error::Cuda(format!("{OP}: {what}: {e}")),
    }
}

fn set_desc<T>(desc: sys::cublasLtMatmulDesc_t, attr: sys::cublasLtMatmulDescAttributes_t, value: &T) -> Result<()> {
    // SAFETY: `value` has the attribute's documented type and lives for the call (cuBLASLt copies it).
    unsafe { result::set_matmul_desc_attribute(desc, attr, value as *const T as *const c_void, size_of::<T>()) }
        .map_err(|e| cublas("cublasLtMatmulDescSetAttribute", e))
}

fn set_pref<T>(
    pref: sys::cublasLtMatmulPreference_t,
    attr: sys::cublasLtMatmulPreferenceAttributes_t,
    value: &T,
) -> Result<()> {
    // SAFETY: as in set_desc.
    unsafe { result::set_matmul_pref_attribute(pref, attr, value as *const T as *const c_void, size_of::<T>()) }
        .map_err(|e| cublas("cublasLtMatmulPreferenceSetAttribute", e))
}

/// Destroys the preference descriptor however planning ends.
struct Pref(sys::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created in Plan::new, destroyed once.
        let _ = unsafe { result::destroy_matmul_pref(self.0) };
    }
}

impl Plan {
    fn new(handle: sys::cublasLtHandle_t, key: &PlanKey) -> Result<Plan> {
        use sys::cublasLtMatmulDescAttributes_t as D;
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        let (ty, _, name) = out_type(key.out)?;
        let (m, n, k) = (key.m as u64, key.n as u64, key.k as u64);
        // f32 accumulation and f32 alpha / beta, whatever the output type.
        let desc =
            result::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType::CUDA_R_32F)
                .map_err(|e| cublas("cublasLtMatmulDescCreate", e))?;
        // Owned from here: an early return destroys what was made.
        let mut plan = Plan { desc, layouts: [ptr::null_mut(); 3], algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] } };
        // cublasOperation_t as int32: 1 = CUBLAS_OP_T (the weight), 0 = CUBLAS_OP_N (the activations).
        set_desc(desc, D::CUBLASLT_MATMUL_DESC_TRANSA, &1i32)?;
        set_desc(desc, D::CUBLASLT_MATMUL_DESC_TRANSB, &0i32)?;
        let dims = [(sys::cudaDataType::CUDA_R_16BF, k, n), (sys::cudaDataType::CUDA_R_16BF, k, m), (ty, n, m)];
        for (slot, (t, rows, cols)) in plan.layouts.iter_mut().zip(dims) {
            // Column-major, densely packed: the leading dimension is the row count.
            *slot = result::create_matrix_layout(t, rows, cols, rows as i64)
                .map_err(|e| cublas("cublasLtMatrixLayoutCreate", e))?;
        }
        let pref = Pref(result::create_matmul_pref().map_err(|e| cublas("cublasLtMatmulPreferenceCreate", e))?);
        set_pref(pref.0, P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &(LINEAR_WORKSPACE_BYTES as u64))?;
        let [aw, ax, ay] = key.align;
        set_pref(pref.0, P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aw)?;
        set_pref(pref.0, P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ax)?;
        set_pref(pref.0, P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ay)?;
        set_pref(pref.0, P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ay)?;
        // Split-K partial sums stay f32 (in place, or in a compute-type workspace): the OUTPUT_TYPE scheme would
        // round every slice to bf16 before the sum, not once at the end as the contract above says.
        let f32_partials = sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_INPLACE as u32
            | sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32;
        set_pref(pref.0, P::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &f32_partials)?;
        let no_algo = || {
            Error::Unsupported(format!(
                "{OP}: cuBLASLt has no algorithm for m = {}, n = {}, k = {} (bf16 -> {name}, pointer alignment \
                 w {aw}, x {ax}, y {ay} bytes)",
                key.m, key.n, key.k
            ))
        };
        // SAFETY: zeroed is a valid bit pattern for this plain C struct; it is only read if returned.
        let mut heur: sys::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
        let mut found = 0;
        let [lw, lx, ly] = plan.layouts;
        // SAFETY: live descriptors made above; one result slot for one requested algorithm.
        let status = unsafe {
            sys::cublasLtMatmulAlgoGetHeuristic(handle, desc, lw, lx, ly, ly, pref.0, 1, &mut heur, &mut found)
        };
        match status {
            sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS => {}
            sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED => return Err(no_algo()),
            s => return Err(cublas("cublasLtMatmulAlgoGetHeuristic", result::CublasError(s))),
        }
        if found == 0 || heur.state != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(no_algo());
        }
        plan.algo = heur.algo;
        Ok(plan)
    }
}

/// A cuBLASLt handle and its plan cache. Share one per device: calls from several threads and streams may run
/// at once, each with its own workspace.
pub struct Blas {
    handle: sys::cublasLtHandle_t,
    /// The device the plans are for (None: made through the C ABI on the then-current device).
    ctx: Option<Arc<CudaContext>>,
    plans: Mutex<HashMap<PlanKey, Arc<Plan>>>,
}

// SAFETY: the cuBLASLt handle may be used from several host threads at once (the stream and workspace are
// arguments of every call, not state of the handle); the plan cache is behind a mutex.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

impl Blas {
    /// A handle for the device of `stream` (any stream of that device may run its calls).
    pub fn new(stream: &Arc<CudaStream>) -> Result<Blas> {
        stream.context().bind_to_thread()?;
        let mut blas = Blas::on_current_device()?;
        blas.ctx = Some(stream.context().clone());
        Ok(blas)
    }

    /// A handle for the current device (the C ABI's l4k_blas_create).
    pub(crate) fn on_current_device() -> Result<Blas> {
        // cudarc panics on first use when the library cannot be loaded: look for it first.
        // SAFETY: only tries to dlopen libcublasLt by its usual names.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::NoDevice(format!(
                "{OP}: libcublasLt.so could not be loaded (LD_LIBRARY_PATH = {:?}); install cuBLAS (PyTorch's \
                 wheels carry it) and put its directory on LD_LIBRARY_PATH",
                std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
            )));
        }
        let handle = result::create_handle().map_err(|e| cublas("cublasLtCreate", e))?;
        Ok(Blas { handle, ctx: None, plans: Mutex::new(HashMap::new()) })
    }

    /// Shapes planned so far (each call of a new (m, n, k, output type, pointer alignment) adds one).
    pub fn cached_plans(&self) -> usize {
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// `y [m, n] = x [m, k] . w [n, k]^T`, f32 accumulation, `y` bf16 (rounded once) or f32. `workspace` holds
    /// at least [`LINEAR_WORKSPACE_BYTES`] and is 256-byte aligned. m == 0 is a no-op; any n, k >= 1. Schedule
    /// [`LinearSchedule::Auto`]. A shape cuBLASLt has no algorithm for is `Unsupported`. The first cuBLASLt call
    /// of a shape plans it (host work).
    pub fn linear_bf16<O: LinearOut>(
        &self,
        stream: &CudaStream,
        x: &Tensor<bf16, 2>,
        w: &Tensor<bf16, 2>,
        y: &mut TensorMut<O, 2>,
        workspace: &mut TensorMut<u8, 1>,
    ) -> Result<()> {
        self.linear_bf16_with(stream, x, w, y, workspace, LinearSchedule::Auto)
    }

    /// [`Blas::linear_bf16`] on a chosen schedule.
    pub fn linear_bf16_with<O: LinearOut>(
        &self,
        stream: &CudaStream,
        x: &Tensor<bf16, 2>,
        w: &Tensor<bf16, 2>,
        y: &mut TensorMut<O, 2>,
        workspace: &mut TensorMut<u8, 1>,
        schedule: LinearSchedule,
    ) -> Result<()> {
        let [m, k] = x.shape();
        let [n, wk] = w.shape();
        ensure!(wk == k, "{OP}: x [{m}, {k}] but the weight is [n {n}, k {wk}]");
        ensure!(y.shape() == [m, n], "{OP}: y {:?}, want [{m}, {n}]", y.shape());
        same_device(stream, &[x.stream(), w.stream(), y.stream(), workspace.stream()])?;
        if let Some(ctx) = &self.ctx {
            ensure!(
                Arc::ptr_eq(ctx, stream.context()),
                "{OP}: this Blas plans for device {} but the stream is on device {}",
                ctx.ordinal(),
                stream.context().ordinal()
            );
        }
        let workspace_bytes = workspace.shape()[0];
        let (px, _gx) = x.ptr(stream);
        let (pw, _gw) = w.ptr(stream);
        let (py, _gy) = y.ptr_mut(stream);
        let (pws, _gws) = workspace.ptr_mut(stream);
        let a = LinearArgs {
            x: px as _,
            w: pw as _,
            y: py as _,
            out: O::CODE,
            m: m as i64,
            n: n as i64,
            k: k as i64,
            workspace: pws as _,
            workspace_bytes,
            schedule,
        };
        self.launch(&a, stream.cu_stream())
    }

    /// Validates raw operands (the C ABI enters here too), finds or makes the plan, and enqueues the GEMM.
    pub(crate) fn launch(&self, a: &LinearArgs, stream: CUstream) -> Result<()> {
        let (_, elem, _) = out_type(a.out)?;
        // cuBLASLt takes 64-bit sizes but its kernels index in int32.
        for (name, v, min) in [("m", a.m, 0), ("n", a.n, 1), ("k", a.k, 1)] {
            ensure!((min..=i32::MAX as i64).contains(&v), "{OP}: {name} = {v} outside {min}..=2^31-1");
        }
        if a.m == 0 {
            return Ok(());
        }
        check_ptr(OP, "x", a.x, 2)?;
        check_ptr(OP, "w", a.w, 2)?;
        check_ptr(OP, "y", a.y, elem)?;
        check_ptr(OP, "workspace", a.workspace, 256)?;
        ensure!(
            a.workspace_bytes >= LINEAR_WORKSPACE_BYTES,
            "{OP}: workspace is {} bytes; linear needs LINEAR_WORKSPACE_BYTES = {LINEAR_WORKSPACE_BYTES}",
            a.workspace_bytes
        );
        // The GEMV's own limits, for the schedules that ask for it by name.
        let serves = || -> Result<()> {
            if gemv_can_serve(a.k as usize, a.x, a.w) {
                return Ok(());
            }
            Err(Error::Unsupported(format!(
                "{OP}: the GEMV schedule needs k % 8 == 0 and x, w 16-byte aligned (k = {}, x {:p}, w {:p})",
                a.k, a.x, a.w
            )))
        };
        let (gemv, max_ctas) = match a.schedule {
            LinearSchedule::Blas => (false, 0),
            LinearSchedule::Auto => {
                (gemv_is_faster(a.m as usize, a.n as usize) && gemv_can_serve(a.k as usize, a.x, a.w), 0)
            }
            LinearSchedule::Gemv => {
                serves()?;
                (true, 0)
            }
            LinearSchedule::GemvBounded { ctas } => {
                ensure!(
                    (1..=i32::MAX as u32).contains(&ctas),
                    "{OP}: GemvBounded {{ ctas: {ctas} }}: ctas must be 1..=2^31-1"
                );
                if gemv_splits_k(a.m as usize, a.n as usize) {
                    return Err(Error::Unsupported(format!(
                        "{OP}: a bounded GEMV grid needs m > 8 or n > 512 (m = {}, n = {}: k is split over a \
                         cluster of CTAs there)",
                        a.m, a.n
                    )));
                }
                serves()?;
                (true, ctas as i32)
            }
        };
        if gemv {
            let p = LinearParams { x: a.x, w: a.w, y: a.y, m: a.m, n: a.n, k: a.k, out_dtype: a.out, max_ctas };
            // SAFETY: pointers validated above (16-byte alignment of x and w by gemv_can_serve), extents the
            // caller's contract; the kernel reads x [m, k], w [n, k] and writes y [m, n] only.
            return launched(OP, unsafe { ffi::l4k_launch_linear_gemv(&p, stream) });
        }
        let key = PlanKey {
            m: a.m,
            n: a.n,
            k: a.k,
            out: a.out,
            align: [alignment(a.w), alignment(a.x), alignment(a.y as _)],
        };
        let plan = self.plan(&key)?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: pointers validated above, extents the caller's contract (checked by the safe API's views); the
        // plan's descriptors are alive (held by `plan`); beta = 0, so C (= D) is not read.
        unsafe {
            result::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                a.w,
                plan.layouts[0],
                a.x,
                plan.layouts[1],
                a.y,
                plan.layouts[2],
                a.y,
                plan.layouts[2],
                &plan.algo,
                a.workspace,
                a.workspace_bytes,
                stream as sys::cudaStream_t,
            )
        }
        .map_err(|e| cublas("cublasLtMatmul", e))
    }

    /// The cached plan of `key`, made on first use. The lock is held while planning (rare: once per shape) but
    /// not while the GEMM is enqueued: the Arc keeps an evicted plan alive until its call returns.
    fn plan(&self, key: &PlanKey) -> Result<Arc<Plan>> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = plans.get(key) {
            return Ok(p.clone());
        }
        let plan = Arc::new(Plan::new(self.handle, key)?);
        if plans.len() >= MAX_CACHED_PLANS {
            plans.clear();
        }
        plans.insert(*key, plan.clone());
        Ok(plan)
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created in on_current_device, destroyed once. Enqueued GEMMs do not use the handle.
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

/// The FP8 rowwise linear: `y [m, n] = bf16((x_q . w_q^T) * x_scales[r] * w_scales[c])`, the grouped GEMM with
/// one expert. `x_q` [m, k] and `x_scales` [m] are [`crate::quant::quant_fp8`] of the activations, `w_q` [n, k]
/// and `w_scales` [n] of the nn.Linear weight (one scale per output channel). `offsets` [2] holds [0, m] on the
/// device (the grouped GEMM reads the layout there); `workspace` holds
/// [`crate::grouped_gemm::workspace_size`]`(1)` bytes. k % 16 == 0 and n % 8 == 0 (the grouped GEMM's limits,
/// refused with its error). Schedule: Auto (decode tiles up to 32 rows).
#[allow(clippy::too_many_arguments)]
pub fn linear_fp8(
    stream: &CudaStream,
    x_q: &Tensor<E4M3, 2>,
    x_scales: &Tensor<f32, 1>,
    w_q: &Tensor<E4M3, 2>,
    w_scales: &Tensor<f32, 1>,
    offsets: &Tensor<i32, 1>,
    y: &mut TensorMut<bf16, 2>,
    workspace: &mut TensorMut<u8, 1>,
) -> Result<()> {
    let [n, k] = w_q.shape();
    ensure!(w_scales.shape() == [n], "{OP}: w_scales {:?} for {n} output channels", w_scales.shape());
    ensure!(offsets.shape() == [2], "{OP}: offsets {:?}, want [2] holding [0, m]", offsets.shape());
    let (b, scale_b) = (w_q.reshape([1, n, k])?, w_scales.reshape([1, n])?);
    let g = GroupedGemm { a: x_q, scale_a: x_scales, b: &b, scale_b: &scale_b, offsets, counts: None };
    grouped_gemm_fp8(stream, &g, y, workspace, None, Schedule::Auto)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_the_gemv_where_it_measured_faster() {
        assert!(gemv_is_faster(1, 7168) && gemv_is_faster(1, 5120) && gemv_is_faster(1, 16384));
        assert!(!gemv_is_faster(0, 5120), "m = 0 launches nothing");
        assert!(!gemv_is_faster(8, 5120), "slower in the batch-8 step");
        assert!(gemv_is_faster(1, 16) && gemv_is_faster(1, 128), "the routers: k split over a cluster");
        assert!(!gemv_is_faster(1, 129) && !gemv_is_faster(1, 2047), "not measured: cuBLASLt");
        assert!(!gemv_is_faster(2, 16), "one row only");
        assert!(!gemv_is_faster(1, 202048), "lm_head: cuBLASLt measured faster");
    }

    #[test]
    fn the_gemv_splits_k_below_513_columns_at_up_to_8_rows() {
        for m in [1usize, 2, 8] {
            assert!(gemv_splits_k(m, 1) && gemv_splits_k(m, 16) && gemv_splits_k(m, 512), "m = {m}");
            assert!(!gemv_splits_k(m, 513) && !gemv_splits_k(m, 16384), "m = {m}");
        }
        assert!(!gemv_splits_k(9, 16) && !gemv_splits_k(300, 1), "more than 8 rows: passes, no split");
        assert!(!gemv_splits_k(1, usize::MAX), "too many tiles for a split (the kernel refuses the shape)");
    }

    #[test]
    fn alignment_classes() {
        let p = |a: usize| a as *const c_void;
        assert_eq!(alignment(p(0x1000)), 256);
        assert_eq!(alignment(p(0x1002)), 2);
        assert_eq!(alignment(p(0x1010)), 16);
        assert_eq!(alignment(p(0x1080)), 128);
    }
}
