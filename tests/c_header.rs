//! The C header and the exported functions cannot drift apart: every `l4k_*` prototype of
//! include/llama4_kernels.h must be a `#[no_mangle]` function of ops/ with the same parameter names and types
//! (C types mapped to their Rust mirrors) and return type, and every exported function must be declared. An
//! exported function that takes a pointer must be `unsafe`. Both files are read as text: no GPU, no compiler.

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, PartialEq)]
struct Signature {
    params: Vec<(String, String)>,
    ret: String,
    is_unsafe: bool,
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

fn strip_c_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = rest.find('/') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("//") {
            rest = tail.find('\n').map_or("", |j| &tail[j..]);
        } else if tail.starts_with("/*") {
            rest = tail.find("*/").map_or("", |j| &tail[j + 2..]);
            out.push(' ');
        } else {
            out.push('/');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The text from `open` (an opening parenthesis) to its closing one, exclusive, and the rest after it.
fn parenthesized(s: &str) -> (&str, &str) {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return (&s[1..i], &s[i + 1..]);
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses in {s:.80}");
}

/// A C type as its Rust mirror spells it: `const float*` -> `*const f32`, `l4k_blas**` -> `*mut *mut Blas`.
fn rust_type(c: &str) -> Result<String, String> {
    let depth = c.matches('*').count();
    let words: Vec<&str> = c.split(|ch: char| ch.is_whitespace() || ch == '*').filter(|w| !w.is_empty()).collect();
    let is_const = words.contains(&"const");
    let base = match words.iter().filter(|w| **w != "const").copied().collect::<Vec<_>>()[..] {
        [b] => b,
        _ => return Err(format!("cannot read the C type `{c}`")),
    };
    let rust = match base {
        "void" => "c_void",
        "char" => "c_char",
        "float" => "f32",
        "int32_t" => "i32",
        "int64_t" => "i64",
        "uint32_t" => "u32",
        "uint64_t" => "u64",
        "size_t" => "usize",
        "l4k_stream_t" => "CUstream",
        "l4k_status" => "Status",
        "l4k_llama3_scaling" => "Llama3Scaling",
        "l4k_rope_layer" => "RopeLayer",
        "l4k_blas" => "Blas",
        "l4k_ep_config" => "EpConfig",
        b => return Err(format!("C type `{b}` has no Rust mirror in tests/c_header.rs's map")),
    };
    if depth == 0 {
        return Ok(if is_const { format!("const {rust}") } else { rust.to_string() });
    }
    let inner = format!("{} {rust}", if is_const { "*const" } else { "*mut" });
    Ok("*mut ".repeat(depth - 1) + &inner)
}

/// The `l4k_*` prototypes of a C header, by name, in Rust terms.
fn header_prototypes(src: &str) -> BTreeMap<String, Result<Signature, String>> {
    let text: String =
        strip_c_comments(src).lines().filter(|l| !l.trim_start().starts_with('#')).map(|l| format!("{l}\n")).collect();
    let mut out = BTreeMap::new();
    for (i, _) in text.match_indices("l4k_") {
        if text[..i].ends_with(is_ident) {
            continue;
        }
        let name_end = i + text[i..].find(|c: char| !is_ident(c)).unwrap();
        let after = text[name_end..].trim_start();
        if !after.starts_with('(') {
            continue;
        }
        let (params, rest) = parenthesized(after);
        if !rest.trim_start().starts_with(';') {
            continue;
        }
        let start = text[..i].rfind([';', '{', '}']).map_or(0, |j| j + 1);
        let ret = text[start..i].split_whitespace().collect::<Vec<_>>().join(" ");
        let sig = (|| {
            let mut ps = Vec::new();
            if params.trim() != "void" {
                for p in params.split(',') {
                    let p = p.trim();
                    let split = p.trim_end_matches(is_ident).len();
                    let (ty, name) = (&p[..split], &p[split..]);
                    if name.is_empty() || ty.trim().is_empty() {
                        return Err(format!("cannot read the parameter `{p}`"));
                    }
                    ps.push((name.to_string(), rust_type(ty)?));
                }
            }
            Ok(Signature { params: ps, ret: rust_type(&ret)?, is_unsafe: false })
        })();
        let name = text[i..name_end].to_string();
        assert!(out.insert(name.clone(), sig).is_none(), "{name} is declared twice");
    }
    out
}

/// The `#[no_mangle]` functions of a Rust source file, by name.
fn exported_functions(src: &str) -> BTreeMap<String, Signature> {
    let mut out = BTreeMap::new();
    let attributes = src.match_indices("\n#[no_mangle]\n").map(|(i, _)| i + 1);
    for i in src.starts_with("#[no_mangle]\n").then_some(0).into_iter().chain(attributes) {
        let rest = &src[i..];
        let f = rest.find("extern \"C\" fn ").expect("an extern \"C\" fn after #[no_mangle]");
        let is_unsafe = rest[..f].contains("unsafe ");
        let rest = &rest[f + "extern \"C\" fn ".len()..];
        let name_end = rest.find('(').unwrap();
        let (params, after) = parenthesized(&rest[name_end..]);
        let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let params = params
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                let (name, ty) = p.split_once(':').unwrap();
                (norm(name), norm(ty))
            })
            .collect();
        let after = after.trim_start();
        let ret = after.strip_prefix("->").map_or("()".into(), |r| norm(&r[..r.find('{').unwrap()]));
        let name = rest[..name_end].trim().to_string();
        assert!(out.insert(name.clone(), Signature { params, ret, is_unsafe }).is_none(), "{name} exported twice");
    }
    out
}

fn exports_of_the_crate() -> BTreeMap<String, Signature> {
    let mut all = BTreeMap::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("ops");
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "rs") {
            for (name, sig) in exported_functions(&std::fs::read_to_string(&path).unwrap()) {
                assert!(all.insert(name.clone(), sig).is_none(), "{name} exported from two files");
            }
        }
    }
    all
}

/// Every difference between the header's prototypes and the exported functions, one line each.
fn differences(
    header: &BTreeMap<String, Result<Signature, String>>,
    exports: &BTreeMap<String, Signature>,
) -> Vec<String> {
    let mut errors = Vec::new();
    for (name, c) in header {
        let c = match c {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("{name}: {e}"));
                continue;
            }
        };
        let Some(r) = exports.get(name) else {
            errors.push(format!("{name} is declared in the header but not exported (#[no_mangle]) from ops/"));
            continue;
        };
        if c.params.len() != r.params.len() {
            errors.push(format!("{name}: {} parameters in the header, {} in Rust", c.params.len(), r.params.len()));
        }
        for (k, (cp, rp)) in c.params.iter().zip(&r.params).enumerate() {
            if cp != rp {
                errors.push(format!(
                    "{name}: parameter {k} is `{}: {}` in the header, `{}: {}` in Rust",
                    cp.0, cp.1, rp.0, rp.1
                ));
            }
        }
        if c.ret != r.ret {
            errors.push(format!("{name}: returns {} in the header, {} in Rust", c.ret, r.ret));
        }
    }
    for name in exports.keys().filter(|n| !header.contains_key(*n)) {
        errors.push(format!("{name} is exported but not declared in include/llama4_kernels.h"));
    }
    for (name, r) in exports {
        if r.params.iter().any(|(_, t)| t.starts_with('*')) && !r.is_unsafe {
            errors.push(format!(
                "{name} takes a pointer: it must be `pub unsafe extern \"C\" fn` with a # Safety section"
            ));
        }
    }
    errors
}

#[test]
fn the_header_declares_exactly_the_exported_functions() {
    let header = header_prototypes(&read("include/llama4_kernels.h"));
    let exports = exports_of_the_crate();
    assert!(header.len() >= 30 && exports.len() >= 30, "{} prototypes, {} exports", header.len(), exports.len());
    let errors = differences(&header, &exports);
    assert!(errors.is_empty(), "include/llama4_kernels.h and ops/ disagree:\n{}", errors.join("\n"));

    // The parser reads what the header says: one prototype spelled out.
    let p = |n: &str, t: &str| (n.to_string(), t.to_string());
    let argmax = Signature {
        params: vec![
            p("logits", "*const f32"),
            p("out", "*mut i32"),
            p("rows", "i64"),
            p("cols", "i64"),
            p("stream", "CUstream"),
        ],
        ret: "Status".into(),
        is_unsafe: false,
    };
    assert_eq!(header["l4k_argmax"], Ok(argmax));
    assert_eq!(header["l4k_blas_create"].as_ref().unwrap().params, [p("blas", "*mut *mut Blas")]);
    assert_eq!(header["l4k_last_error"].as_ref().unwrap().ret, "*const c_char");
}

#[test]
fn the_check_catches_a_doctored_header() {
    let src = read("include/llama4_kernels.h");
    let exports = exports_of_the_crate();
    let check = |doctored: String| differences(&header_prototypes(&doctored), &exports);
    let swap = |a: &str, b: &str| {
        assert!(src.contains(a), "{a}");
        src.replace(a, b)
    };

    // Two int64 parameters swapped.
    let e = check(swap(
        "void* y, int64_t rows, int64_t cols, float eps,",
        "void* y, int64_t cols, int64_t rows, float eps,",
    ));
    assert!(e.len() == 2 && e.iter().all(|e| e.starts_with("l4k_rmsnorm: parameter")), "{e:?}");
    // A parameter's type changed, a parameter dropped, a return type changed.
    let e = check(swap("l4k_status l4k_argmax(const float* logits", "l4k_status l4k_argmax(const void* logits"));
    assert!(e.len() == 1 && e[0].contains("`logits: *const c_void` in the header"), "{e:?}");
    let e = check(swap("uint32_t* bad_ids, l4k_stream_t stream)", "l4k_stream_t stream)"));
    assert!(e.iter().any(|e| e.contains("l4k_embedding: 7 parameters in the header, 8 in Rust")), "{e:?}");
    let e = check(swap("int64_t l4k_permuted_rows(", "int32_t l4k_permuted_rows("));
    assert!(e.len() == 1 && e[0].contains("returns i32 in the header, i64 in Rust"), "{e:?}");
    // A prototype removed, or one added that nothing exports.
    let e = check(swap("const char* l4k_version(void);", ""));
    assert_eq!(e, ["l4k_version is exported but not declared in include/llama4_kernels.h"]);
    let e = check(swap("const char* l4k_version(void);", "const char* l4k_version(void);\nint32_t l4k_ghost(void);"));
    assert!(e.len() == 1 && e[0].starts_with("l4k_ghost is declared"), "{e:?}");
    // A type the map does not know.
    let e = check(swap("l4k_status l4k_argmax(const float* logits", "l4k_status l4k_argmax(const double* logits"));
    assert!(e.len() == 1 && e[0].contains("`double` has no Rust mirror"), "{e:?}");
}

#[test]
fn the_check_catches_a_safe_export_taking_a_pointer() {
    let header = header_prototypes(&read("include/llama4_kernels.h"));
    let mut exports = exports_of_the_crate();
    exports.get_mut("l4k_argmax").unwrap().is_unsafe = false;
    let e = differences(&header, &exports);
    assert!(e.len() == 1 && e[0].starts_with("l4k_argmax takes a pointer"), "{e:?}");
}
