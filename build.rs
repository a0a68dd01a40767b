//! Compiles `kernels/*.cu` for Hopper (sm_90a) with nvcc into one static library and links cudart statically.
//!
//! Toolkit lookup, first hit wins: `CUDA_HOME` / `CUDA_PATH`; the directory above an `nvcc` on `PATH`; the
//! cache that `scripts/setup.sh` fills (`L4K_CUDA_CACHE`, default `~/.cache/llama4-kernels/cuda-13.0`).
//! CUTLASS headers: `CUTLASS_DIR` (a checkout or install with `include/cutlass`), else `<toolkit>/cutlass`
//! (where the setup script puts them). Nothing found is one error naming the setup script.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SETUP_HINT: &str = "run `scripts/setup.sh` (installs CUDA 13.0 + CUTLASS 4.2 headers from PyPI wheels into \
~/.cache/llama4-kernels, no GPU needed), or point CUDA_HOME at a CUDA 13 toolkit and CUTLASS_DIR at a CUTLASS 4.x checkout";

fn main() {
    for var in ["CUDA_HOME", "CUDA_PATH", "CUTLASS_DIR", "L4K_CUDA_CACHE", "PATH", "L4K_NVCC_FLAGS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    // Directories: cargo watches everything under them, subfolders (kernels/attention_prefill/) included.
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=include");

    let cuda = find_cuda().unwrap_or_else(|| fail(&format!("no CUDA toolkit (nvcc) found: {SETUP_HINT}")));
    let nvcc = cuda.join("bin").join("nvcc");
    check_version(&nvcc);
    let cutlass = find_cutlass(&cuda)
        .unwrap_or_else(|| fail(&format!("CUTLASS headers not found (no include/cutlass/cutlass.h): {SETUP_HINT}")));

    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .expect("kernels/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();

    // An object newer than its source and every project header the source includes (transitively) is reused:
    // the CUTLASS units take minutes, and a change to one kernel's headers should not rebuild the others. (Flags
    // and toolkit changes rerun via rerun-if-env.)
    let flags_stamp = out.join("nvcc-flags");
    let flags = format!("{}|{}|{}", nvcc.display(), cutlass.display(), env::var("L4K_NVCC_FLAGS").unwrap_or_default());
    let same_flags = std::fs::read_to_string(&flags_stamp).is_ok_and(|f| f == flags);
    // Each translation unit compiles on its own thread: nvcc is single-threaded and the units are independent.
    let objects: Vec<PathBuf> = std::thread::scope(|s| {
        let jobs: Vec<_> = sources
            .iter()
            .map(|src| {
                let obj = out.join(src.file_stem().unwrap()).with_extension("o");
                let (nvcc, cutlass, cuda) = (&nvcc, &cutlass, &cuda);
                let headers = newest_include(src);
                let fresh = same_flags && mtime(&obj).is_some_and(|o| Some(o) > mtime(src) && Some(o) > headers);
                s.spawn(move || {
                    if !fresh {
                        compile(nvcc, cuda, cutlass, src, &obj);
                    }
                    obj
                })
            })
            .collect();
        jobs.into_iter().map(|j| j.join().unwrap()).collect()
    });

    std::fs::write(&flags_stamp, flags).expect("writing the nvcc flags stamp");

    let lib = out.join("libl4k_kernels.a");
    let _ = std::fs::remove_file(&lib);
    let status = Command::new(env::var("AR").unwrap_or_else(|_| "ar".into()))
        .arg("crs")
        .arg(&lib)
        .args(&objects)
        .status()
        .unwrap_or_else(|e| fail(&format!("running ar: {e}")));
    if !status.success() {
        fail("ar failed to archive the kernel objects");
    }

    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=l4k_kernels");
    for dir in ["lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"] {
        let d = cuda.join(dir);
        if d.join("libcudart_static.a").exists() {
            println!("cargo:rustc-link-search=native={}", d.display());
        }
    }
    // cudart_static loads libcuda at run time with dlopen, so neither the build nor a CPU-only test run needs
    // a driver; cudarc does the same for the driver API.
    println!("cargo:rustc-link-lib=static=cudart_static");
    for sys in ["stdc++", "dl", "rt", "pthread"] {
        println!("cargo:rustc-link-lib=dylib={sys}");
    }
    println!("cargo:include={}", Path::new("include").canonicalize().unwrap().display());
}

fn compile(nvcc: &Path, cuda: &Path, cutlass: &Path, src: &Path, obj: &Path) {
    let mut cmd = Command::new(nvcc);
    cmd.args(["-std=c++17", "-O3", "-DNDEBUG", "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr"])
        // sm_90a: wgmma and setmaxnreg need the architecture-specific target; the -gencode form is the one that
        // assembles with nvcc 13.0 (see HOPPER.md). NDEBUG: with asserts on, CUTLASS serialises wgmma.
        .args(["-gencode=arch=compute_90a,code=sm_90a"])
        .arg("-Ikernels")
        .arg("-Iinclude")
        .arg(format!("-I{}", cuda.join("include").display()))
        .arg(format!("-I{}", cutlass.join("include").display()))
        .args(["-c", src.to_str().unwrap(), "-o", obj.to_str().unwrap()]);
    if let Ok(extra) = env::var("L4K_NVCC_FLAGS") {
        cmd.args(extra.split_whitespace());
    }
    let output = cmd.output().unwrap_or_else(|e| fail(&format!("running {}: {e}", nvcc.display())));
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        fail(&format!("nvcc failed on {}", src.display()));
    }
}

fn mtime(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The newest of the project files `src` includes, directly or through other project files: `#include "x"`
/// resolved like nvcc's `-Ikernels -Iinclude` (the including file's folder first), subfolders included. Quoted
/// names that resolve nowhere in the project (CUTLASS, CUDA) are not followed; their changes come with the
/// toolkit or CUTLASS path in the flags stamp.
fn newest_include(src: &Path) -> Option<std::time::SystemTime> {
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut todo = vec![src.to_path_buf()];
    while let Some(file) = todo.pop() {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        for name in text.lines().filter_map(quoted_include) {
            let found = [dir.as_path(), Path::new("kernels"), Path::new("include")]
                .iter()
                .map(|d| d.join(name))
                .find(|p| p.is_file());
            if let Some(p) = found {
                if !seen.contains(&p) {
                    seen.push(p.clone());
                    todo.push(p);
                }
            }
        }
    }
    seen.iter().filter_map(|p| mtime(p)).max()
}

/// `x` of a line `#include "x"` (spaces allowed around `#`), else None.
fn quoted_include(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start().strip_prefix("include")?.trim_start();
    let rest = rest.strip_prefix('"')?;
    rest.find('"').map(|end| &rest[..end])
}

fn find_cuda() -> Option<PathBuf> {
    let has_nvcc = |d: &Path| d.join("bin").join("nvcc").is_file();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(d) = env::var_os(var).map(PathBuf::from) {
            if has_nvcc(&d) {
                return Some(d);
            }
            fail(&format!("{var}={} has no bin/nvcc: {SETUP_HINT}", d.display()));
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            if dir.join("nvcc").is_file() {
                return dir.parent().map(Path::to_path_buf);
            }
        }
    }
    let cache = env::var_os("L4K_CUDA_CACHE")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/llama4-kernels/cuda-13.0")))?;
    has_nvcc(&cache).then_some(cache)
}

fn find_cutlass(cuda: &Path) -> Option<PathBuf> {
    let ok = |d: &Path| d.join("include/cutlass/cutlass.h").is_file();
    if let Some(d) = env::var_os("CUTLASS_DIR").map(PathBuf::from) {
        if ok(&d) {
            return Some(d);
        }
        fail(&format!("CUTLASS_DIR={} has no include/cutlass/cutlass.h", d.display()));
    }
    let bundled = cuda.join("cutlass");
    ok(&bundled).then_some(bundled)
}

/// nvcc 12.4+ assembles everything here for sm_90a; 13.0 is what the project is built and measured with.
fn check_version(nvcc: &Path) {
    let out = Command::new(nvcc)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| fail(&format!("running {} --version: {e}", nvcc.display())));
    let text = String::from_utf8_lossy(&out.stdout);
    let release = text.split("release ").nth(1).and_then(|r| r.split(',').next()).and_then(|v| {
        let mut it = v.trim().split('.').map(|x| x.parse::<u32>().ok());
        Some((it.next()??, it.next()??))
    });
    match release {
        Some(v) if v >= (12, 4) => {}
        Some((a, b)) => {
            fail(&format!("{} is CUDA {a}.{b}; sm_90a kernels need 12.4 or newer: {SETUP_HINT}", nvcc.display()))
        }
        None => fail(&format!("could not read the CUDA version from `{} --version`", nvcc.display())),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("\nerror: llama4-kernels: {msg}\n");
    println!("cargo:warning=llama4-kernels: {msg}");
    std::process::exit(1);
}
