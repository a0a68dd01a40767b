//! A safetensors reader that never trusts the file: `[u64 LE header length][JSON header][data]`, every
//! tensor's dtype, shape and byte range checked against each other and against the bytes actually present, with
//! explicit caps on the header size, the tensor count and the rank so that no input makes it allocate more than
//! a small multiple of its own size. Files are memory-mapped; tensors are upcast to f32 when read.
//!
//! Written here rather than taken from the `safetensors` crate so that the limits and the error text are ours
//! (and fuzzed here); the crate is still used to write files and, in tests, as a second opinion.

use crate::error::{Error, Result};
use crate::host_tensor::{HostData, HostTensor};
use memmap2::Mmap;
use ndarray::{ArrayD, IxDyn};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Largest header accepted. Real Llama 4 shards have headers of tens of KiB; a single-file checkpoint with
/// every expert unfused stays under 2 MiB.
pub const MAX_HEADER_BYTES: usize = 16 << 20;
/// Most tensors one file may declare (the per-expert Maverick layout has about 10,000 in all its shards).
pub const MAX_TENSORS: usize = 1 << 18;
/// Highest rank accepted; the model uses 1 to 3.
pub const MAX_RANK: usize = 8;

/// Element types. Only the three float types can be read as weights; the others are recognised so that a
/// file holding, say, integer vision buffers still opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
    /// Any other dtype, with its element size in bytes when the format defines one.
    Other(String, Option<usize>),
}

impl Dtype {
    fn parse(s: &str) -> Dtype {
        let size = match s {
            "F32" => return Dtype::F32,
            "BF16" => return Dtype::Bf16,
            "F16" => return Dtype::F16,
            "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => Some(1),
            "U16" | "I16" => Some(2),
            "U32" | "I32" => Some(4),
            "U64" | "I64" | "F64" | "C64" => Some(8),
            _ => None,
        };
        Dtype::Other(s.chars().take(16).collect(), size)
    }

    fn size(&self) -> Option<usize> {
        match self {
            Dtype::F32 => Some(4),
            Dtype::Bf16 | Dtype::F16 => Some(2),
            Dtype::Other(_, s) => *s,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Dtype::F32 => "F32",
            Dtype::Bf16 => "BF16",
            Dtype::F16 => "F16",
            Dtype::Other(s, _) => s,
        }
    }
}

/// One tensor's entry in a header: byte range relative to the start of the data section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// A parsed, validated header.
#[derive(Clone, Debug, Default)]
pub struct Header {
    pub tensors: BTreeMap<String, TensorInfo>,
    /// Where the data section starts in the file (8 + header length).
    pub data_offset: usize,
}

/// Parses and validates the header of the safetensors bytes `bytes` (`what` names the file in errors).
pub fn parse_header(bytes: &[u8], what: &str) -> Result<Header> {
    let err = |m: String| Error::Format(format!("{what}: {m}"));
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(err(format!("{} bytes is too short to hold the 8-byte header length", bytes.len())));
    };
    let n = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    if n > MAX_HEADER_BYTES as u64 {
        return Err(err(format!(
            "header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit (not a safetensors file?)"
        )));
    }
    let n = n as usize;
    let Some(text) = bytes.get(8..8 + n) else {
        return Err(err(format!("truncated: header needs {n} bytes but only {} follow", bytes.len() - 8)));
    };
    let data_len = bytes.len() - 8 - n;
    let v: Value = serde_json::from_slice(text).map_err(|e| err(format!("header is not JSON: {e}")))?;
    let Value::Object(map) = v else {
        return Err(err("header is not a JSON object".into()));
    };
    if map.len() > MAX_TENSORS + 1 {
        return Err(err(format!("header declares {} entries, over the limit of {MAX_TENSORS}", map.len())));
    }
    let mut tensors = BTreeMap::new();
    for (name, entry) in map {
        if name == "__metadata__" {
            continue;
        }
        let info = tensor_info(&entry).map_err(|m| err(format!("tensor `{name}`: {m}")))?;
        if info.end > data_len {
            return Err(err(format!(
                "truncated: tensor `{name}` ends at data byte {} but the file holds only {data_len} data bytes",
                info.end
            )));
        }
        tensors.insert(name, info);
    }
    Ok(Header { tensors, data_offset: 8 + n })
}

fn tensor_info(entry: &Value) -> std::result::Result<TensorInfo, String> {
    let dtype = entry.get("dtype").and_then(Value::as_str).ok_or("no string `dtype`")?;
    let dtype = Dtype::parse(dtype);
    let shape = entry.get("shape").and_then(Value::as_array).ok_or("no list `shape`")?;
    if shape.len() > MAX_RANK {
        return Err(format!("rank {} exceeds {MAX_RANK}", shape.len()));
    }
    let shape: Vec<usize> = shape
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()).ok_or("shape holds a non-integer"))
        .collect::<std::result::Result<_, _>>()?;
    let offs = entry.get("data_offsets").and_then(Value::as_array).ok_or("no list `data_offsets`")?;
    let off = |i: usize| offs.get(i).and_then(Value::as_u64).and_then(|o| usize::try_from(o).ok());
    let (Some(start), Some(end), 2) = (off(0), off(1), offs.len()) else {
        return Err("`data_offsets` must be two non-negative integers".into());
    };
    if end < start {
        return Err(format!("data_offsets [{start}, {end}] run backwards"));
    }
    let elems = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("shape overflows")?;
    if let Some(size) = dtype.size() {
        let bytes = elems.checked_mul(size).ok_or("shape overflows")?;
        if bytes != end - start {
            return Err(format!(
                "shape {shape:?} of {} needs {bytes} bytes but data_offsets [{start}, {end}] hold {}",
                dtype.name(),
                end - start
            ));
        }
    }
    Ok(TensorInfo { dtype, shape, start, end })
}

/// Reads a tensor of a validated header out of the file bytes, upcast to f32.
pub fn read_f32(bytes: &[u8], header: &Header, info: &TensorInfo, name: &str) -> Result<ArrayD<f32>> {
    let range = header.data_offset + info.start..header.data_offset + info.end;
    let raw =
        bytes.get(range).ok_or_else(|| Error::Format(format!("tensor `{name}` lies outside the file (truncated?)")))?;
    let le2 = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]);
    let values: Vec<f32> = match info.dtype {
        Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::Bf16 => raw.chunks_exact(2).map(|c| half::bf16::from_bits(le2(c)).to_f32()).collect(),
        Dtype::F16 => raw.chunks_exact(2).map(|c| half::f16::from_bits(le2(c)).to_f32()).collect(),
        Dtype::Other(ref d, _) => {
            return Err(Error::Weight(format!(
                "tensor `{name}` has dtype {d}; only F32, BF16 and F16 weights are supported"
            )))
        }
    };
    ArrayD::from_shape_vec(IxDyn(&info.shape), values).map_err(|e| Error::Format(format!("tensor `{name}`: {e}")))
}

/// Reads a tensor of a validated header out of the file bytes in its stored dtype (F32, BF16 or F16): what
/// the GPU loader uploads, so no f32 copy of a bf16 checkpoint is ever made.
pub fn read_host(bytes: &[u8], header: &Header, info: &TensorInfo, name: &str) -> Result<HostTensor> {
    let range = header.data_offset + info.start..header.data_offset + info.end;
    let raw =
        bytes.get(range).ok_or_else(|| Error::Format(format!("tensor `{name}` lies outside the file (truncated?)")))?;
    let le2 = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]);
    let data = match info.dtype {
        Dtype::F32 => {
            HostData::F32(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        }
        Dtype::Bf16 => HostData::Bf16(raw.chunks_exact(2).map(|c| half::bf16::from_bits(le2(c))).collect()),
        Dtype::F16 => HostData::F16(raw.chunks_exact(2).map(|c| half::f16::from_bits(le2(c))).collect()),
        Dtype::Other(ref d, _) => {
            return Err(Error::Weight(format!(
                "tensor `{name}` has dtype {d}; only F32, BF16 and F16 weights are supported"
            )))
        }
    };
    Ok(HostTensor { shape: info.shape.clone(), data })
}

/// One memory-mapped safetensors file and its header.
pub struct SafeFile {
    pub path: PathBuf,
    map: Mmap,
    pub header: Header,
}

impl SafeFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let what = path.display().to_string();
        if len < 8 {
            return Err(Error::Format(format!("{what}: {len} bytes is too short to hold the 8-byte header length")));
        }
        // SAFETY: the map is read-only and private to this process; a file truncated by another process while
        // mapped would fault (SIGBUS), which no safe reader of a shared file can rule out.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = parse_header(&map, &what)?;
        Ok(SafeFile { path: path.to_path_buf(), map, header })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub fn read_f32(&self, name: &str) -> Result<ArrayD<f32>> {
        let info = self.header.tensors.get(name).ok_or_else(|| Error::Weight(format!("no tensor `{name}`")))?;
        read_f32(&self.map, &self.header, info, name)
    }

    pub fn read_host(&self, name: &str) -> Result<HostTensor> {
        let info = self.header.tensors.get(name).ok_or_else(|| Error::Weight(format!("no tensor `{name}`")))?;
        read_host(&self.map, &self.header, info, name)
    }
}
