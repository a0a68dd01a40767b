//! A weight on the host in the dtype the checkpoint stores it in (f32, bf16 or f16). The loader reads one
//! tensor at a time into one of these and hands it to the backend, which converts it the way it stores
//! weights (the CPU reference upcasts to f32; the GPU rounds to bf16 or quantizes to FP8 on the device), so
//! no f32 copy of a whole bf16 checkpoint is ever made.

use crate::error::{Error, Result};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

/// The elements, row-major, in the stored dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

/// Applies `$body` to the vector of whichever dtype `$data` holds, binding it to `$v`.
macro_rules! each_dtype {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            HostData::F32($v) => HostData::F32($body),
            HostData::Bf16($v) => HostData::Bf16($body),
            HostData::F16($v) => HostData::F16($body),
        }
    };
}

impl HostData {
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::Bf16(v) => v.len(),
            HostData::F16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype_name(&self) -> &'static str {
        match self {
            HostData::F32(_) => "F32",
            HostData::Bf16(_) => "BF16",
            HostData::F16(_) => "F16",
        }
    }

    fn element_bytes(&self) -> usize {
        match self {
            HostData::F32(_) => 4,
            _ => 2,
        }
    }

    /// Exact upcast (half's slice conversions).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            HostData::F32(v) => v.clone(),
            HostData::Bf16(v) => v.to_f32_vec(),
            HostData::F16(v) => v.to_f32_vec(),
        }
    }

    /// [`HostData::to_f32`] into a vector allocated only if the host can hold it (`what` names it).
    pub fn try_to_f32(&self, what: &str) -> Result<Vec<f32>> {
        let mut out = crate::host_memory::filled(self.len(), 0.0f32, what)?;
        match self {
            HostData::F32(v) => out.copy_from_slice(v),
            HostData::Bf16(v) => v.convert_to_f32_slice(&mut out),
            HostData::F16(v) => v.convert_to_f32_slice(&mut out),
        }
        Ok(out)
    }

    /// Rounded to bf16 to nearest even, as `tensor.to(torch.bfloat16)` (f16 goes through its exact f32 value).
    pub fn to_bf16(&self) -> Vec<bf16> {
        let mut out = vec![bf16::ZERO; self.len()];
        match self {
            HostData::F32(v) => out.convert_from_f32_slice(v),
            HostData::Bf16(v) => out.copy_from_slice(v),
            HostData::F16(v) => out.convert_from_f32_slice(&v.to_f32_vec()),
        }
        out
    }

    /// The index and value of the first NaN or infinity, if any.
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        match self {
            HostData::F32(v) => v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i])),
            HostData::Bf16(v) => v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i].to_f32())),
            HostData::F16(v) => v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i].to_f32())),
        }
    }
}

impl HostTensor {
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn nbytes(&self) -> u64 {
        (self.data.len() * self.data.element_bytes()) as u64
    }

    /// The f32 array of the tensor, allocated only if the host can hold it.
    pub fn to_f32_array(&self) -> Result<ArrayD<f32>> {
        let what = format!("an f32 copy of shape {:?}", self.shape);
        let v = self.data.try_to_f32(&what)?;
        ArrayD::from_shape_vec(IxDyn(&self.shape), v).map_err(|e| Error::Weight(format!("{what}: {e}")))
    }

    /// Fails, naming the tensor `name`, the element and its value, if the tensor holds NaN or infinity.
    pub fn check_finite(&self, name: &str) -> Result<()> {
        match self.data.first_non_finite() {
            None => Ok(()),
            Some((i, v)) => Err(Error::Weight(format!(
                "tensor `{name}` holds {v} at element {i} (of shape {:?}): weights must be finite",
                self.shape
            ))),
        }
    }

    /// Stacks tensors along their first axis (q, k, v into one projection; gate and up into one). Tensors of
    /// different dtypes are upcast to f32 first (exact), so nothing is rounded here.
    pub fn concat_rows(parts: Vec<HostTensor>, what: &str) -> Result<HostTensor> {
        let first = parts.first().ok_or_else(|| Error::Weight(format!("{what}: nothing to stack")))?;
        let tail = first.shape[1..].to_vec();
        if let Some(p) = parts.iter().find(|p| p.shape.is_empty() || p.shape[1..] != tail[..]) {
            return Err(Error::Weight(format!("{what}: shapes {:?} and {:?} do not stack", first.shape, p.shape)));
        }
        let rows = parts.iter().map(|p| p.shape[0]).sum();
        let total: usize = parts.iter().map(|p| p.data.len()).sum();
        let same = parts.iter().all(|p| std::mem::discriminant(&p.data) == std::mem::discriminant(&first.data));
        // Every piece in one allocation, made only if the host can hold it.
        macro_rules! join {
            ($variant:ident) => {{
                let mut v = crate::host_memory::with_capacity(total, what)?;
                for p in &parts {
                    if let HostData::$variant(x) = &p.data {
                        v.extend_from_slice(x);
                    }
                }
                HostData::$variant(v)
            }};
        }
        let data = if same {
            match first.data {
                HostData::F32(_) => join!(F32),
                HostData::Bf16(_) => join!(Bf16),
                HostData::F16(_) => join!(F16),
            }
        } else {
            let mut v = crate::host_memory::with_capacity(total, what)?;
            for p in &parts {
                v.extend(p.data.try_to_f32(what)?);
            }
            HostData::F32(v)
        };
        let mut shape = vec![rows];
        shape.extend(tail);
        Ok(HostTensor { shape, data })
    }

    /// The transpose of a matrix `[r, c]` -> `[c, r]`, in its dtype.
    pub fn transpose2(&self) -> HostTensor {
        let (r, c) = (self.shape[0], self.shape[1]);
        fn t<T: Copy>(v: &[T], r: usize, c: usize) -> Vec<T> {
            (0..c * r).map(|i| v[(i % r) * c + i / r]).collect()
        }
        HostTensor { shape: vec![c, r], data: each_dtype!(&self.data, v => t(v, r, c)) }
    }

    /// Stacks matrices of equal shape along a new first axis: `E x [a, b]` -> `[E, a, b]`.
    pub fn stack(parts: Vec<HostTensor>, what: &str) -> Result<HostTensor> {
        let inner = parts.first().map(|p| p.shape.clone()).unwrap_or_default();
        let n = parts.len();
        let mut t = HostTensor::concat_rows(parts, what)?;
        let mut shape = vec![n];
        shape.extend(inner);
        t.shape = shape;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacking_keeps_the_dtype_and_mixed_dtypes_upcast() {
        let a = HostTensor { shape: vec![1, 2], data: HostData::Bf16(vec![bf16::ONE, bf16::ZERO]) };
        let b = HostTensor { shape: vec![2, 2], data: HostData::Bf16(vec![bf16::ZERO; 4]) };
        let s = HostTensor::concat_rows(vec![a.clone(), b], "t").unwrap();
        assert_eq!(s.shape, [3, 2]);
        assert!(matches!(s.data, HostData::Bf16(_)));
        let c = HostTensor { shape: vec![1, 2], data: HostData::F32(vec![0.5, 2.0]) };
        let m = HostTensor::concat_rows(vec![a, c], "t").unwrap();
        assert_eq!(m.data, HostData::F32(vec![1.0, 0.0, 0.5, 2.0]));
        let bad = HostTensor { shape: vec![1, 3], data: HostData::F32(vec![0.0; 3]) };
        assert!(HostTensor::concat_rows(vec![m, bad], "t").is_err());
    }

    #[test]
    fn transpose_moves_every_element() {
        let t = HostTensor { shape: vec![2, 3], data: HostData::F32(vec![0., 1., 2., 3., 4., 5.]) };
        assert_eq!(t.transpose2(), HostTensor { shape: vec![3, 2], data: HostData::F32(vec![0., 3., 1., 4., 2., 5.]) });
    }
}
