//! safetensors files through the `safetensors` crate, which decides what a valid header is: tensors in data
//! order must cover the data section exactly (no gap, no overlap, nothing after), each one's byte range must
//! match its dtype and shape, nothing may overflow. On top of the crate: every name at most once (the JSON
//! header could otherwise repeat one and the last copy would silently win), caps on the header size, the
//! tensor count and the rank so that no input makes the reader allocate more than a small multiple of its own
//! size, shapes that ndarray can hold, and errors that name the tensor at fault. Files are memory-mapped;
//! tensors are copied out in their stored dtype.

use crate::error::{Error, Result};
use crate::host_tensor::{HostData, HostTensor};
use memmap2::Mmap;
use ndarray::ArrayD;
use safetensors::tensor::{Metadata, TensorInfo as StInfo};
use serde::de::{DeserializeSeed, Error as _, MapAccess, Visitor};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Largest header accepted. Real Llama 4 shards have headers of tens of KiB; a single-file checkpoint with
/// every expert unfused stays under 2 MiB.
pub const MAX_HEADER_BYTES: usize = 16 << 20;
/// Most tensors one file may declare (the per-expert Maverick layout has about 10,000 in all its shards).
pub const MAX_TENSORS: usize = 1 << 18;
/// Highest rank accepted; the model uses 1 to 3.
pub const MAX_RANK: usize = 8;

/// Element types. Only the three float types can be read as weights; the others (any dtype the format
/// defines) are kept by name so that a file holding, say, integer vision buffers still opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
    Other(String),
}

impl Dtype {
    fn of(d: safetensors::Dtype) -> Dtype {
        match d {
            safetensors::Dtype::F32 => Dtype::F32,
            safetensors::Dtype::BF16 => Dtype::Bf16,
            safetensors::Dtype::F16 => Dtype::F16,
            d => Dtype::Other(d.to_string()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Dtype::F32 => "F32",
            Dtype::Bf16 => "BF16",
            Dtype::F16 => "F16",
            Dtype::Other(s) => s,
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
    let entries = entries(text).map_err(err)?;
    let mut tensors = entries.tensors;
    tensors.sort_by_key(|(_, t)| t.data_offsets);
    // The crate's validation; its errors are explained per tensor.
    let meta = match Metadata::new(entries.metadata, tensors.clone()) {
        Ok(m) => m,
        Err(e) => return Err(err(explain(&tensors, &e))),
    };
    let covered = meta.data_len();
    if covered > data_len {
        return Err(err(format!(
            "truncated: the tensors need {covered} data bytes but the file holds only {data_len}"
        )));
    }
    if covered < data_len {
        return Err(err(format!(
            "the tensors cover {covered} data bytes but the file holds {data_len}: the header length or the \
             offsets are wrong (every data byte must belong to exactly one tensor)"
        )));
    }
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        if t.shape.len() > MAX_RANK {
            return Err(err(format!("tensor `{name}`: rank {} exceeds {MAX_RANK}", t.shape.len())));
        }
        // ndarray bounds the product of the non-zero axes by isize::MAX, even for an empty tensor.
        let nonzero = t.shape.iter().filter(|&&d| d != 0).try_fold(1usize, |a, &d| a.checked_mul(d));
        if nonzero.is_none_or(|p| p > isize::MAX as usize) {
            return Err(err(format!("tensor `{name}`: shape {:?} overflows", t.shape)));
        }
        let (start, end) = t.data_offsets;
        out.insert(name, TensorInfo { dtype: Dtype::of(t.dtype), shape: t.shape, start, end });
    }
    Ok(Header { tensors: out, data_offset: 8 + n })
}

/// The header's entries, each name once, each tensor's entry typed by the crate.
struct Entries {
    metadata: Option<HashMap<String, String>>,
    tensors: Vec<(String, StInfo)>,
}

fn entries(text: &[u8]) -> std::result::Result<Entries, String> {
    let mut current = None;
    let mut de = serde_json::Deserializer::from_slice(text);
    let parsed = EntriesSeed { current: &mut current }.deserialize(&mut de).and_then(|e| de.end().map(|()| e));
    parsed.map_err(|e| match current {
        Some(name) if name == "__metadata__" => format!("`__metadata__` must map strings to strings: {e}"),
        Some(name) => format!("tensor `{name}`: {e}"),
        None => format!("header is not a JSON object of tensor entries: {e}"),
    })
}

/// Reads the header object, remembering the name being read so that an error can name it.
struct EntriesSeed<'a> {
    current: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = Entries;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Entries, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = Entries;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Entries, A::Error> {
        let mut out = Entries { metadata: None, tensors: Vec::new() };
        let mut seen = HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            *self.current = Some(name.clone());
            if !seen.insert(name.clone()) {
                return Err(A::Error::custom("listed twice"));
            }
            if seen.len() > MAX_TENSORS + 1 {
                return Err(A::Error::custom(format!("over the limit of {MAX_TENSORS} tensors")));
            }
            match name.as_str() {
                "__metadata__" => out.metadata = Some(map.next_value()?),
                _ => out.tensors.push((name, map.next_value()?)),
            }
        }
        *self.current = None;
        Ok(out)
    }
}

/// Which tensor the crate's validation refused, and why, in the order it checks them.
fn explain(sorted: &[(String, StInfo)], e: &safetensors::SafeTensorError) -> String {
    let mut at = 0;
    for (name, t) in sorted {
        let (s, end) = t.data_offsets;
        if end < s {
            return format!("tensor `{name}`: data_offsets [{s}, {end}] run backwards");
        }
        if s != at {
            let how = if s < at { "overlaps the tensor before it" } else { "leaves a gap after the tensor before it" };
            return format!(
                "tensor `{name}`: data_offsets [{s}, {end}] {how} (which ends at {at}): the tensors must cover the \
                 data section exactly"
            );
        }
        at = end;
        let bits = t.shape.iter().try_fold(t.dtype.bitsize(), |a, &d| a.checked_mul(d));
        match bits {
            None => return format!("tensor `{name}`: shape {:?} overflows", t.shape),
            Some(b) if b % 8 != 0 => {
                return format!("tensor `{name}`: shape {:?} of {} is not a whole number of bytes", t.shape, t.dtype)
            }
            Some(b) if b / 8 != end - s => {
                return format!(
                    "tensor `{name}`: shape {:?} of {} needs {} bytes but data_offsets [{s}, {end}] hold {}",
                    t.shape,
                    t.dtype,
                    b / 8,
                    end - s
                )
            }
            Some(_) => {}
        }
    }
    e.to_string()
}

/// Reads a tensor of a validated header out of the file bytes, upcast to f32.
pub fn read_f32(bytes: &[u8], header: &Header, info: &TensorInfo, name: &str) -> Result<ArrayD<f32>> {
    read_host(bytes, header, info, name)?.to_f32_array().map_err(|e| e.context(&format!("tensor `{name}`")))
}

/// Reads a tensor of a validated header out of the file bytes in its stored dtype (F32, BF16 or F16): what
/// the GPU loader uploads, so no f32 copy of a bf16 checkpoint is ever made.
pub fn read_host(bytes: &[u8], header: &Header, info: &TensorInfo, name: &str) -> Result<HostTensor> {
    let range = header.data_offset + info.start..header.data_offset + info.end;
    let raw =
        bytes.get(range).ok_or_else(|| Error::Format(format!("tensor `{name}` lies outside the file (truncated?)")))?;
    let what = format!("tensor `{name}`");
    let data = match info.dtype {
        Dtype::F32 => HostData::F32(elements(raw, &what, f32::from_le_bytes)?),
        Dtype::Bf16 => HostData::Bf16(elements(raw, &what, half::bf16::from_le_bytes)?),
        Dtype::F16 => HostData::F16(elements(raw, &what, half::f16::from_le_bytes)?),
        Dtype::Other(ref d) => {
            return Err(Error::Weight(format!(
                "tensor `{name}` has dtype {d}; only F32, BF16 and F16 weights are supported"
            )))
        }
    };
    Ok(HostTensor { shape: info.shape.clone(), data })
}

/// Little-endian elements of `N` bytes, in a vector allocated only if the host can hold it.
fn elements<T, const N: usize>(raw: &[u8], what: &str, from: fn([u8; N]) -> T) -> Result<Vec<T>> {
    let mut v = crate::host_memory::with_capacity(raw.len() / N, what)?;
    v.extend(raw.chunks_exact(N).map(|c| from(c.try_into().expect("N bytes"))));
    Ok(v)
}

/// One memory-mapped safetensors file and its header.
pub struct SafeFile {
    pub path: PathBuf,
    map: Mmap,
    pub header: Header,
}

impl SafeFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = crate::files::open_regular(path)?;
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
