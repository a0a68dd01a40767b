//! The mechanical half of the C-Rust contract. Every `#[repr(C)]` struct shared with C is declared through
//! [`c_struct!`], which writes the struct and the list of its fields from one token list, and every shared
//! constant through [`c_consts!`]. kernels/abi.cu exports the C side of both: each struct's fields with their
//! offset, size and kind (its static_asserts keep each table complete), and each constant's value. The tests
//! here compare the two sides name by name, so a field swapped, retyped, added or dropped on one side only,
//! or a constant renumbered on one side only, fails `cargo test` on a machine without a GPU.
//!
//! tests/c_header.rs checks the other half: the prototypes of include/llama4_kernels.h against the
//! `#[no_mangle]` functions of ops/capi.rs.

/// One field of a struct shared with C: its name, byte offset, size and kind (`b'i'` signed integer, `b'u'`
/// unsigned integer, `b'f'` floating point, `b'p'` pointer to const, `b'm'` pointer to mutable; an array has
/// its element's kind), the letters kernels/abi.cu's `kind_of` gives the C field.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Field {
    pub name: &'static str,
    pub offset: usize,
    pub size: usize,
    pub kind: u8,
}

#[cfg(test)]
impl Field {
    pub fn of<T: CKind>(name: &'static str, offset: usize) -> Field {
        Field { name, offset, size: std::mem::size_of::<T>(), kind: T::KIND }
    }
}

/// The kind letter of a field type (see [`Field`]).
#[cfg(test)]
pub(crate) trait CKind {
    const KIND: u8;
}

#[cfg(test)]
mod kinds {
    use super::CKind;
    macro_rules! kind {
        ($k:literal: $($t:ty),*) => { $(impl CKind for $t { const KIND: u8 = $k; })* };
    }
    kind!(b'i': i8, i16, i32, i64);
    kind!(b'u': u8, u16, u32, u64, usize);
    kind!(b'f': f32, f64);
    impl<T> CKind for *const T {
        const KIND: u8 = b'p';
    }
    impl<T> CKind for *mut T {
        const KIND: u8 = b'm';
    }
    impl<T: CKind, const N: usize> CKind for [T; N] {
        const KIND: u8 = T::KIND;
    }
}

/// A Rust type that mirrors a C struct, with its fields as [`c_struct!`] declared them.
#[cfg(test)]
pub(crate) trait CStruct {
    /// The C type's name, as kernels/abi.cu's table spells it.
    const C_NAME: &'static str;
    fn c_fields() -> Vec<Field>;
}

/// Declares a `#[repr(C)]` mirror of the C struct named after `as`, with its [`CStruct`] field list, so the
/// list cannot leave a field out. The struct must be added to `mirrors()` in this module's tests; a C struct
/// without a mirror there fails them.
macro_rules! c_struct {
    (
        $(#[$attr:meta])*
        $vis:vis struct $name:ident as $c_name:literal {
            $($(#[$field_attr:meta])* $field_vis:vis $field:ident: $ty:ty),* $(,)?
        }
    ) => {
        $(#[$attr])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug)]
        $vis struct $name {
            $($(#[$field_attr])* $field_vis $field: $ty),*
        }

        #[cfg(test)]
        impl $crate::abi::CStruct for $name {
            const C_NAME: &'static str = $c_name;
            fn c_fields() -> Vec<$crate::abi::Field> {
                vec![$($crate::abi::Field::of::<$ty>(stringify!($field), std::mem::offset_of!($name, $field))),*]
            }
        }
    };
}
pub(crate) use c_struct;

/// Declares integer constants that mirror C constants named `L4K_<NAME>`, and `C_CONSTANTS` listing them all
/// for the tests. One invocation per crate (ops/ffi.rs); other modules re-export what they need.
macro_rules! c_consts {
    ($($(#[$attr:meta])* $vis:vis const $name:ident: $ty:ty = $value:expr;)*) => {
        $($(#[$attr])* $vis const $name: $ty = $value;)*

        /// Every constant above, by its C name.
        #[cfg(test)]
        pub(crate) const C_CONSTANTS: &[(&str, i64)] = &[$((concat!("L4K_", stringify!($name)), $name as i64)),*];
    };
}
pub(crate) use c_consts;

/// Compares a C struct's fields with its Rust mirror's, name by name: every difference (a field missing on
/// either side, or at another offset, size or kind) is one line of the error.
#[cfg(test)]
pub(crate) fn compare_fields(c: &[Field], rust: &[Field]) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    for f in c {
        match rust.iter().find(|r| r.name == f.name) {
            None => errors.push(format!("field {} (offset {}) is missing in Rust", f.name, f.offset)),
            Some(r) if r != f => errors.push(format!(
                "field {}: C has offset {} size {} kind {}, Rust offset {} size {} kind {}",
                f.name, f.offset, f.size, f.kind as char, r.offset, r.size, r.kind as char
            )),
            Some(_) => {}
        }
    }
    for r in rust.iter().filter(|r| !c.iter().any(|f| f.name == r.name)) {
        errors.push(format!("field {} (offset {}) is in Rust only", r.name, r.offset));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The contract crate's `Llama3Scaling` is `l4k_llama3_scaling` (it is declared there, so not through
/// [`c_struct!`]): the destructuring below stops compiling if it gains or loses a field.
#[cfg(test)]
impl CStruct for llama4_contract::Llama3Scaling {
    const C_NAME: &'static str = "l4k_llama3_scaling";
    fn c_fields() -> Vec<Field> {
        use llama4_contract::Llama3Scaling as S;
        let _exhaustive = |s: S| -> [f32; 4] {
            let S { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } = s;
            [factor, low_freq_factor, high_freq_factor, original_max_position_embeddings]
        };
        vec![
            Field::of::<f32>("factor", std::mem::offset_of!(S, factor)),
            Field::of::<f32>("low_freq_factor", std::mem::offset_of!(S, low_freq_factor)),
            Field::of::<f32>("high_freq_factor", std::mem::offset_of!(S, high_freq_factor)),
            Field::of::<f32>(
                "original_max_position_embeddings",
                std::mem::offset_of!(S, original_max_position_embeddings),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::{compare_fields, CStruct, Field};
    use crate::error::Status;
    use crate::ffi::{self, launched};
    use crate::{capi, rope, Error};
    use std::collections::BTreeMap;
    use std::ffi::{c_char, c_int, CStr};
    use std::path::Path;

    /// A C struct's sizeof and fields.
    type Layout = (usize, Vec<Field>);

    struct Mirror {
        c_name: &'static str,
        size: usize,
        fields: Vec<Field>,
    }

    fn mirror<T: CStruct>() -> Mirror {
        Mirror { c_name: T::C_NAME, size: std::mem::size_of::<T>(), fields: T::c_fields() }
    }

    /// Every Rust type that mirrors a C struct.
    fn mirrors() -> Vec<Mirror> {
        vec![
            mirror::<ffi::RmsnormParams>(),
            mirror::<ffi::RopeParams>(),
            mirror::<ffi::SwigluParams>(),
            mirror::<ffi::QuantParams>(),
            mirror::<ffi::WeightPrepParams>(),
            mirror::<ffi::RouterParams>(),
            mirror::<ffi::PermuteParams>(),
            mirror::<ffi::UnpermuteParams>(),
            mirror::<ffi::UnpermuteNormParams>(),
            mirror::<ffi::EmbeddingParams>(),
            mirror::<ffi::RandomParams>(),
            mirror::<ffi::LinearParams>(),
            mirror::<ffi::ArgmaxParams>(),
            mirror::<ffi::GroupedGemmParams>(),
            mirror::<ffi::AttentionParams>(),
            mirror::<ffi::ExpertParallelParams>(),
            mirror::<crate::expert_parallel::EpConfig>(),
            mirror::<capi::RopeLayer>(),
            mirror::<rope::Llama3Scaling>(),
        ]
    }

    fn text(p: *const c_char) -> &'static str {
        // SAFETY: the tables of kernels/abi.cu hold string literals (static, NUL-terminated ASCII).
        unsafe { CStr::from_ptr(p) }.to_str().expect("ASCII names")
    }

    /// The C side's structs, by name.
    fn c_layouts() -> BTreeMap<&'static str, Layout> {
        let mut out = BTreeMap::new();
        for which in 0.. {
            let mut size = 0;
            // SAFETY: a table lookup; `size` is writable.
            let name = unsafe { ffi::l4k_internal_params_struct(which, &mut size) };
            if name.is_null() {
                break;
            }
            let mut fields = Vec::new();
            for index in 0.. {
                let (mut name, mut offset, mut size, mut kind) = (std::ptr::null(), 0, 0, 0 as c_char);
                // SAFETY: a table lookup; the outputs are writable.
                let found = unsafe {
                    ffi::l4k_internal_params_field(which, index, &mut name, &mut offset, &mut size, &mut kind)
                };
                if found != 0 {
                    break;
                }
                fields.push(Field { name: text(name), offset, size, kind: kind as u8 });
            }
            assert!(out.insert(text(name), (size, fields)).is_none(), "{} is listed twice", text(name));
        }
        out
    }

    fn c_constants() -> BTreeMap<&'static str, i64> {
        let mut out = BTreeMap::new();
        for index in 0.. {
            let mut value = 0;
            // SAFETY: a table lookup; `value` is writable.
            let name = unsafe { ffi::l4k_internal_constant(index, &mut value) };
            if name.is_null() {
                break;
            }
            assert!(out.insert(text(name), value).is_none(), "{} is listed twice", text(name));
        }
        out
    }

    /// The C ABI's status codes, each with its C name (the match makes a new variant name itself).
    fn statuses() -> Vec<(&'static str, i64)> {
        let name = |s: Status| match s {
            Status::Ok => "L4K_OK",
            Status::InvalidArgument => "L4K_ERROR_INVALID_ARGUMENT",
            Status::Unsupported => "L4K_ERROR_UNSUPPORTED",
            Status::Cuda => "L4K_ERROR_CUDA",
            Status::NoDevice => "L4K_ERROR_NO_DEVICE",
            Status::Panic => "L4K_ERROR_PANIC",
        };
        [Status::Ok, Status::InvalidArgument, Status::Unsupported, Status::Cuda, Status::NoDevice, Status::Panic]
            .map(|s| (name(s), s as i64))
            .to_vec()
    }

    /// The headers whose structs and constants the Rust side mirrors.
    fn headers() -> Vec<(String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut paths: Vec<_> = std::fs::read_dir(root.join("kernels"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "h" || x == "cuh"))
            .collect();
        paths.push(root.join("include/llama4_kernels.h"));
        paths.sort();
        paths
            .into_iter()
            .map(|p| (p.display().to_string(), strip_comments(&std::fs::read_to_string(&p).unwrap())))
            .collect()
    }

    fn strip_comments(src: &str) -> String {
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

    /// Identifiers that follow `prefix` in `src` (`typedef struct ` -> the struct tags).
    fn idents_after<'a>(src: &'a str, prefix: &str) -> Vec<&'a str> {
        src.match_indices(prefix)
            .map(|(i, _)| {
                let s = &src[i + prefix.len()..];
                &s[..s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len())]
            })
            .collect()
    }

    #[test]
    fn every_mirrored_struct_matches_its_c_layout_field_by_field() {
        let c = c_layouts();
        let rust = mirrors();
        let mut errors = Vec::new();
        for (name, (size, fields)) in &c {
            let Some(m) = rust.iter().find(|m| m.c_name == *name) else {
                errors.push(format!("{name}: no Rust mirror (declare it with c_struct! and list it in mirrors())"));
                continue;
            };
            if m.size != *size {
                errors.push(format!("{name}: sizeof {size} in C, size_of {} in Rust", m.size));
            }
            if let Err(e) = compare_fields(fields, &m.fields) {
                errors.extend(e.into_iter().map(|e| format!("{name}: {e}")));
            }
        }
        for m in rust.iter().filter(|m| !c.contains_key(m.c_name)) {
            errors.push(format!("{}: mirrored in Rust, absent from kernels/abi.cu's table", m.c_name));
        }
        assert!(errors.is_empty(), "the C and Rust layouts differ:\n{}", errors.join("\n"));
    }

    #[test]
    fn every_struct_of_the_headers_is_in_the_table() {
        let c = c_layouts();
        let mut seen = 0;
        for (path, src) in headers() {
            for tag in idents_after(&src, "typedef struct ") {
                // `typedef struct l4k_blas l4k_blas;` declares an opaque handle: nothing to lay out.
                let opaque = src.contains(&format!("typedef struct {tag} {tag};"));
                // `typedef struct CUstream_st* l4k_stream_t;` names CUDA's type.
                if opaque || tag.starts_with("CU") {
                    continue;
                }
                assert!(c.contains_key(tag), "{path}: struct {tag} has no table in kernels/abi.cu");
                seen += 1;
            }
        }
        assert_eq!(seen, c.len(), "every table names a struct of the headers, and each struct once");
    }

    #[test]
    fn every_mirrored_constant_has_the_c_value() {
        let c = c_constants();
        let rust: Vec<(&str, i64)> = ffi::C_CONSTANTS.iter().copied().chain(statuses()).collect();
        let mut errors = Vec::new();
        for (name, value) in &rust {
            match c.get(name) {
                None => errors.push(format!("{name} is mirrored in Rust, absent from kernels/abi.cu's table")),
                Some(v) if v != value => errors.push(format!("{name} = {v} in C, {value} in Rust")),
                Some(_) => {}
            }
        }
        for name in c.keys().filter(|n| !rust.iter().any(|(r, _)| r == *n)) {
            errors.push(format!("{name} has no Rust mirror (add it to c_consts! in ops/ffi.rs)"));
        }
        assert!(errors.is_empty(), "the C and Rust constants differ:\n{}", errors.join("\n"));
    }

    #[test]
    fn every_constant_of_the_headers_is_in_the_table() {
        let c = c_constants();
        let mut missing = Vec::new();
        for (path, src) in headers() {
            let enumerators = src.match_indices("L4K_").filter_map(|(i, _)| {
                let s = &src[i..];
                let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
                s[end..].trim_start().starts_with('=').then_some(&s[..end])
            });
            let defines = idents_after(&src, "#define ")
                .into_iter()
                .filter(|d| d.starts_with("L4K_") && !src.contains(&format!("#define {d}(")));
            for name in enumerators.chain(defines) {
                if !c.contains_key(name) {
                    missing.push(format!("{path}: {name}"));
                }
            }
        }
        assert!(missing.is_empty(), "constants without an entry in kernels/abi.cu's table:\n{}", missing.join("\n"));
    }

    #[test]
    fn the_comparison_catches_a_doctored_table() {
        let c = c_layouts();
        let (_, rope) = &c["L4kRopeParams"];
        let rust = mirror::<ffi::RopeParams>().fields;
        assert_eq!(compare_fields(rope, &rust), Ok(()));

        // Two int32 fields swapped in the header: the same size, the offsets exchanged.
        let mut swapped = rope.clone();
        let at = |name: &str| rope.iter().position(|f| f.name == name).unwrap();
        let (i, j) = (at("n_heads"), at("n_kv_heads"));
        let (oi, oj) = (swapped[i].offset, swapped[j].offset);
        (swapped[i].offset, swapped[j].offset) = (oj, oi);
        let e = compare_fields(&swapped, &rust).unwrap_err();
        assert!(e.len() == 2 && e[0].contains("n_heads") && e[1].contains("n_kv_heads"), "{e:?}");

        // A float field turned int32 (same size, same offset).
        let mut retyped = rope.clone();
        retyped.iter_mut().find(|f| f.name == "eps").unwrap().kind = b'i';
        let e = compare_fields(&retyped, &rust).unwrap_err();
        assert!(e.len() == 1 && e[0].contains("eps") && e[0].contains("kind i"), "{e:?}");

        // A field renamed in C: missing in Rust, and the old name in Rust only.
        let mut renamed = rope.clone();
        renamed.iter_mut().find(|f| f.name == "qk_norm").unwrap().name = "qk_norm_eps";
        let e = compare_fields(&renamed, &rust).unwrap_err();
        assert!(e.iter().any(|e| e.contains("qk_norm_eps") && e.contains("missing in Rust")), "{e:?}");
        assert!(e.iter().any(|e| e.contains("field qk_norm ") && e.contains("Rust only")), "{e:?}");

        // A field dropped from the C side.
        let dropped: Vec<Field> = rope.iter().copied().filter(|f| f.name != "_pad").collect();
        let e = compare_fields(&dropped, &rust).unwrap_err();
        assert!(e.len() == 1 && e[0].contains("_pad") && e[0].contains("Rust only"), "{e:?}");
    }

    #[test]
    fn every_launch_status_maps_to_its_own_error() {
        let statuses: Vec<(&str, c_int)> = ffi::C_CONSTANTS
            .iter()
            .filter(|(n, _)| n.starts_with("L4K_STATUS_"))
            .map(|&(n, v)| (n, c_int::try_from(v).unwrap()))
            .collect();
        assert!(statuses.len() >= 6, "{statuses:?}");
        let mut messages = Vec::new();
        for (name, code) in statuses {
            assert!(code < 0, "{name} = {code} collides with the cudaError_t codes");
            let e = launched("op", code).unwrap_err();
            assert!(!e.to_string().contains("cudaError"), "{name} is not mapped by `launched`: {e}");
            messages.push(e.to_string());
        }
        let n = messages.len();
        messages.sort();
        messages.dedup();
        assert_eq!(messages.len(), n, "two statuses share a message");
        assert_eq!(launched("op", 0), Ok(()));
        assert!(matches!(launched("op", 2), Err(Error::Cuda(m)) if m.contains("cudaError 2")));
    }
}
