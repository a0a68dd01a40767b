//! The safetensors reader and the weight loader: agreement with the `safetensors` crate, upcasting, layouts.

mod common;

use common::{copy_fixture, fixtures, fixtures_root, read_entries, write_entries};
use llama4_model::cpu::Cpu;
use llama4_model::model::{Logits, Model};
use llama4_model::safetensors_file::{Dtype, SafeFile};
use safetensors::Dtype as StDtype;

/// Every tensor of every fixture file reads the same through our reader as through the crate's.
#[test]
fn reader_agrees_with_the_safetensors_crate() {
    let mut n = 0;
    for dir in fixtures() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "safetensors") {
                continue;
            }
            let ours = SafeFile::open(&p).unwrap();
            let theirs = read_entries(&p);
            assert_eq!(ours.header.tensors.len(), theirs.len(), "{}", p.display());
            for (name, (dtype, shape, bytes)) in &theirs {
                let a = ours.read_f32(name).unwrap();
                assert_eq!(a.shape(), &shape[..], "{name}");
                let want: Vec<f32> = match dtype {
                    StDtype::F32 => bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
                    StDtype::BF16 => {
                        bytes.chunks(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
                    }
                    StDtype::F16 => bytes.chunks(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                    d => panic!("unexpected dtype {d:?} in {name}"),
                };
                assert_eq!(a.iter().copied().collect::<Vec<_>>(), want, "{name}");
                n += 1;
            }
        }
    }
    assert!(n > 100, "only {n} tensors compared");
}

#[test]
fn half_precision_files_keep_their_dtype_in_the_header() {
    let bf = SafeFile::open(&fixtures_root().join("bf16_tiny/model.safetensors")).unwrap();
    assert!(bf.header.tensors.values().all(|t| t.dtype == Dtype::Bf16));
    let f16 = SafeFile::open(&fixtures_root().join("unfused_f16/model.safetensors")).unwrap();
    assert!(f16.header.tensors.values().all(|t| t.dtype == Dtype::F16));
}

/// Converting a checkpoint between layouts (fused vs per-expert, prefixed vs not, f32 vs bf16-exact) must
/// not change a single logit.
#[test]
fn per_expert_and_prefixed_layouts_load_to_the_same_model() {
    let src = fixtures_root().join("scout_tiny");
    let ids = [3u32, 1, 4, 1, 5, 9, 2, 6, 5, 3];
    let logits = |dir: &std::path::Path| {
        let m = Model::load(dir, Cpu).unwrap();
        let mut c = m.new_cache().unwrap();
        m.forward(&mut c, &ids, Logits::All).unwrap()
    };
    let want = logits(&src);

    let dir = copy_fixture("scout_tiny", "unfused_layout");
    let path = dir.join("model.safetensors");
    let fused = read_entries(&path);
    let mut out = common::Entries::new();
    for (name, (dtype, shape, bytes)) in &fused {
        let f = |b: &[u8]| -> Vec<f32> { b.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect() };
        let put = |out: &mut common::Entries, n: String, rows: usize, cols: usize, v: Vec<f32>| {
            out.insert(n, (StDtype::F32, vec![rows, cols], v.iter().flat_map(|x| x.to_le_bytes()).collect()));
        };
        if let Some(base) = name.strip_suffix("experts.gate_up_proj") {
            let (e, h, i2) = (shape[0], shape[1], shape[2]);
            let v = f(bytes);
            for j in 0..e {
                // [H, 2I] -> gate^T, up^T as nn.Linear [I, H].
                let t = |off: usize| -> Vec<f32> {
                    (0..i2 / 2)
                        .flat_map(|r| (0..h).map(move |c| (r, c)))
                        .map(|(r, c)| v[j * h * i2 + c * i2 + off + r])
                        .collect()
                };
                put(&mut out, format!("{base}experts.{j}.gate_proj.weight"), i2 / 2, h, t(0));
                put(&mut out, format!("{base}experts.{j}.up_proj.weight"), i2 / 2, h, t(i2 / 2));
            }
        } else if let Some(base) = name.strip_suffix("experts.down_proj") {
            let (e, i, h) = (shape[0], shape[1], shape[2]);
            let v = f(bytes);
            for j in 0..e {
                let t: Vec<f32> =
                    (0..h).flat_map(|r| (0..i).map(move |c| (r, c))).map(|(r, c)| v[j * i * h + c * h + r]).collect();
                put(&mut out, format!("{base}experts.{j}.down_proj.weight"), h, i, t);
            }
        } else {
            // Everything else goes under the multimodal prefix.
            out.insert(format!("language_model.{name}"), (*dtype, shape.clone(), bytes.clone()));
        }
    }
    write_entries(&path, &out);
    assert_eq!(logits(&dir), want);
}

#[test]
fn directory_of_shards_without_an_index_loads() {
    let dir = copy_fixture("multimodal_tiny", "no_index");
    std::fs::remove_file(dir.join("model.safetensors.index.json")).unwrap();
    // Without an index every *.safetensors file is a shard: the golden logits files are not.
    for f in ["logits.safetensors", "logits_bf16.safetensors", "logits_bf16_fp8.safetensors"] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    let a = Model::load(&dir, Cpu).unwrap();
    let b = Model::load(&fixtures_root().join("multimodal_tiny"), Cpu).unwrap();
    let (mut ca, mut cb) = (a.new_cache().unwrap(), b.new_cache().unwrap());
    let ids = [1u32, 2, 3, 4, 5, 6, 7];
    assert_eq!(a.forward(&mut ca, &ids, Logits::All).unwrap(), b.forward(&mut cb, &ids, Logits::All).unwrap());
}

#[test]
fn an_index_naming_a_path_outside_the_directory_is_refused() {
    let dir = copy_fixture("multimodal_tiny", "evil_index");
    let p = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&p).unwrap().replacen("\"model-0", "\"../model-0", 1);
    std::fs::write(&p, text).unwrap();
    let err = Model::load(&dir, Cpu).err().unwrap().to_string();
    assert!(err.contains("not a plain file name"), "{err}");
}

#[test]
fn a_failed_forward_pass_poisons_nothing_when_caught_early() {
    let m = Model::load(&fixtures_root().join("scout_tiny"), Cpu).unwrap();
    let mut c = m.new_cache().unwrap();
    // Rejected before any layer runs: the cache stays usable.
    assert!(m.forward(&mut c, &[1, 999], Logits::All).is_err());
    assert!(m.forward(&mut c, &[], Logits::All).is_err());
    assert_eq!(c.next_pos(), 0);
    assert!(m.forward(&mut c, &[1, 2], Logits::Last).unwrap().dim() == (1, 160));
    assert_eq!(c.next_pos(), 2);
}

#[test]
fn f64_weights_are_a_dtype_error() {
    let dir = copy_fixture("unfused_f16", "f64");
    let path = dir.join("model.safetensors");
    let mut e = read_entries(&path);
    let (dtype, shape, bytes) = e.get_mut("model.norm.weight").unwrap();
    *dtype = StDtype::F64;
    let n: usize = shape.iter().product();
    *bytes = vec![0u8; n * 8];
    write_entries(&path, &e);
    let err = Model::load(&dir, Cpu).err().unwrap().to_string();
    assert!(err.contains("model.norm.weight") && err.contains("dtype F64"), "{err}");
}
