//! Peer of the grouped GEMM (bench/grouped_gemm.rs): cuBLASLt's FP8 GEMM called once per expert, through cudarc's
//! cuBLASLt bindings (its safe API has no FP8 path, so this uses `cudarc::cublaslt::{result, sys}`).
//!
//! Hopper cuBLASLt FP8 GEMMs take per-tensor scales (A and B scale pointers to one f32 each), not rowwise ones:
//! the loop does the same FLOPs and reads and writes the same bytes as the grouped kernel, with one scalar
//! scale per operand. FP8 on Hopper needs the "TN" form, which is our layout read column-major: per expert,
//! D^T [n, m] = W [n, k] (stored k-major: op T) x A^T [k, m] (stored k-major: op N), D^T column-major = D
//! [m, n] row-major. Accumulation is cuBLASLt's default (FAST_ACCUM off), like our promoted PREFILL path.
//!
//! libcublasLt is loaded at run time (cudarc's dynamic loading). It is not part of the CUDA toolchain this
//! project builds with; on the GPU machine PyTorch's wheels carry it and scripts/gpu-run.sh puts its directory
//! on LD_LIBRARY_PATH. Without it (or when a shape has no algorithm) the bench says so on stderr, times the
//! rest, and exits non-zero at the end: a missing peer must not look like a skipped one.
use cudarc::cublaslt::{result, sys};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use llama4_kernels::{bf16, E4M3};
use std::ffi::c_void;
use std::sync::OnceLock;

const WORKSPACE: usize = 32 << 20;

/// Whether cuBLASLt loaded: Err says why not (the library is missing from LD_LIBRARY_PATH).
pub fn available() -> Result<(), String> {
    // SAFETY: only probes whether the library can be opened.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(format!(
            "libcublasLt.so could not be loaded (LD_LIBRARY_PATH = {:?}); put the directory holding \
             libcublasLt.so.* on LD_LIBRARY_PATH (scripts/gpu-run.sh finds PyTorch's copy)",
            std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
        ))
    }
}

/// The process's cuBLASLt handle (a raw pointer, kept as an address) and its workspace. Call [`available`]
/// first.
fn handle() -> (sys::cublasLtHandle_t, u64) {
    static H: OnceLock<(usize, CudaSlice<u8>)> = OnceLock::new();
    let (h, ws) = H.get_or_init(|| {
        super::gpu().context().bind_to_thread().unwrap();
        let h = result::create_handle().expect("cublasLtCreate");
        (h as usize, super::zeros::<u8>(WORKSPACE))
    });
    let (ws_ptr, _) = ws.device_ptr(super::stream());
    (*h as sys::cublasLtHandle_t, ws_ptr)
}

/// One shape's descriptors and chosen algorithm: n x k weights, `m` rows per expert.
pub struct PerExpert {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3], // W, A, D (C = D)
    algo: sys::cublasLtMatmulAlgo_t,
    n: usize,
    k: usize,
    m: usize,
    scales_bound: Option<(u64, u64)>,
}

fn set<T>(desc: sys::cublasLtMatmulDesc_t, attr: sys::cublasLtMatmulDescAttributes_t, value: &T) {
    // SAFETY: `value` is the attribute's documented type, alive for the call (cuBLASLt copies it).
    unsafe { result::set_matmul_desc_attribute(desc, attr, value as *const T as *const c_void, size_of::<T>()) }
        .unwrap_or_else(|e| panic!("cublasLtMatmulDescSetAttribute {attr:?}: {e}"));
}

impl PerExpert {
    /// Err: cuBLASLt offers no algorithm for this shape (the bench prints it and times the rest).
    pub fn new(n: usize, k: usize, m: usize) -> Result<Self, String> {
        let (h, _) = handle();
        use sys::cublasLtMatmulDescAttributes_t as A;
        let desc =
            result::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType::CUDA_R_32F)
                .expect("cublasLtMatmulDescCreate");
        // cublasOperation_t as int32: 1 = CUBLAS_OP_T, 0 = CUBLAS_OP_N.
        set(desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &1i32);
        set(desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &0i32);
        let layout = |ty, rows: usize, cols: usize| {
            result::create_matrix_layout(ty, rows as u64, cols as u64, rows as i64).expect("cublasLtMatrixLayoutCreate")
        };
        let layouts = [
            layout(sys::cudaDataType::CUDA_R_8F_E4M3, k, n),
            layout(sys::cudaDataType::CUDA_R_8F_E4M3, k, m),
            layout(sys::cudaDataType::CUDA_R_16BF, n, m),
        ];
        let pref = result::create_matmul_pref().expect("cublasLtMatmulPreferenceCreate");
        let ws = WORKSPACE as u64;
        // SAFETY: a u64 attribute, alive for the call.
        unsafe {
            result::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                size_of::<u64>(),
            )
        }
        .expect("workspace preference");
        // The heuristic needs the scale pointers' presence, not their values: bind placeholders now, the real
        // ones in `run` (descriptor attributes are read at each cublasLtMatmul).
        let placeholder = super::zeros::<f32>(2);
        let (p0, _) = placeholder.device_ptr(super::stream());
        set(desc, A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &p0);
        set(desc, A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &(p0 + 4));
        // SAFETY: live descriptors created above.
        let heur =
            unsafe { result::get_matmul_algo_heuristic(h, desc, layouts[0], layouts[1], layouts[2], layouts[2], pref) }
                .map_err(|e| format!("cuBLASLt has no FP8 algorithm for n={n} k={k} m={m}: {e}"));
        // SAFETY: created above, no longer needed.
        unsafe { result::destroy_matmul_pref(pref) }.unwrap();
        // Owned from here: an error drops (destroys) the descriptors.
        let mut per_expert =
            PerExpert { desc, layouts, algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] }, n, k, m, scales_bound: None };
        per_expert.algo = heur?.algo;
        Ok(per_expert)
    }

    /// One untimed pass, synchronized: Err if cuBLASLt refuses or fails (then the case is not timed, which
    /// would otherwise break the graph capture).
    pub fn check(
        &mut self,
        a: &CudaSlice<E4M3>,
        w: &CudaSlice<E4M3>,
        sa: &CudaSlice<f32>,
        sb: &CudaSlice<f32>,
        d: &mut CudaSlice<bf16>,
        experts: usize,
    ) -> Result<(), String> {
        self.try_run(a, w, sa, sb, d, experts)?;
        super::stream().synchronize().map_err(|e| format!("after the cuBLASLt loop: {e}"))
    }

    /// One cuBLASLt GEMM per expert over the evenly spread rows of `a` [experts * m, k] and `w` [experts, n, k]
    /// into `d` [experts * m, n] bf16; `sa`, `sb` hold one f32 scale each. Panics on an error ([`Self::check`]
    /// first).
    pub fn run(
        &mut self,
        a: &CudaSlice<E4M3>,
        w: &CudaSlice<E4M3>,
        sa: &CudaSlice<f32>,
        sb: &CudaSlice<f32>,
        d: &mut CudaSlice<bf16>,
        experts: usize,
    ) {
        self.try_run(a, w, sa, sb, d, experts).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_run(
        &mut self,
        a: &CudaSlice<E4M3>,
        w: &CudaSlice<E4M3>,
        sa: &CudaSlice<f32>,
        sb: &CudaSlice<f32>,
        d: &mut CudaSlice<bf16>,
        experts: usize,
    ) -> Result<(), String> {
        let s = super::stream();
        let (h, ws) = handle();
        let (pa, _ga) = a.device_ptr(s);
        let (pw, _gw) = w.device_ptr(s);
        let (psa, _gsa) = sa.device_ptr(s);
        let (psb, _gsb) = sb.device_ptr(s);
        let (pd, _gd) = d.device_ptr_mut(s);
        if self.scales_bound != Some((psa, psb)) {
            use sys::cublasLtMatmulDescAttributes_t as A;
            // cuBLASLt's A is our weights, its B our activations.
            set(self.desc, A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &psb);
            set(self.desc, A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &psa);
            self.scales_bound = Some((psa, psb));
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (n, k, m) = (self.n as u64, self.k as u64, self.m as u64);
        for e in 0..experts as u64 {
            let dp = (pd + e * m * n * 2) as *mut c_void;
            // SAFETY: every pointer is inside its buffer (experts * m rows, experts weights), the descriptors
            // are alive, the workspace holds WORKSPACE bytes.
            unsafe {
                result::matmul(
                    h,
                    self.desc,
                    &alpha as *const f32 as *const c_void,
                    &beta as *const f32 as *const c_void,
                    (pw + e * n * k) as *const c_void,
                    self.layouts[0],
                    (pa + e * m * k) as *const c_void,
                    self.layouts[1],
                    dp,
                    self.layouts[2],
                    dp,
                    self.layouts[2],
                    &self.algo,
                    ws as *mut c_void,
                    WORKSPACE,
                    s.cu_stream() as sys::cudaStream_t,
                )
            }
            .map_err(|err| format!("cublasLtMatmul expert {e}: {err}"))?;
        }
        Ok(())
    }
}

impl Drop for PerExpert {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once; the stream is synchronized first so no GEMM still uses them.
        super::stream().synchronize().unwrap();
        unsafe {
            for l in self.layouts {
                result::destroy_matrix_layout(l).unwrap();
            }
            result::destroy_matmul_desc(self.desc).unwrap();
        }
    }
}
