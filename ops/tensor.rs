//! Typed, shaped views over cudarc device memory. A view's shape is checked against its buffer once, when it
//! is made; ops then only check that their operands agree with each other.

use crate::error::{ensure, Result};
use cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, DeviceSlice, SyncOnDrop,
    ValidAsZeroBits,
};
use std::sync::Arc;

pub use half::bf16;

/// One FP8 E4M3 ("e4m3fn") value, as its byte.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct E4M3(pub u8);

// SAFETY: a plain byte, valid for every bit pattern (0 is +0.0).
unsafe impl DeviceRepr for E4M3 {}
unsafe impl ValidAsZeroBits for E4M3 {}

/// Element types the ops accept, with the byte alignment a device pointer to them must have.
pub trait Element: DeviceRepr + Copy + 'static {
    const NAME: &'static str;
}
macro_rules! elements {
    ($($t:ty => $name:literal),* $(,)?) => {
        $(impl Element for $t {
            const NAME: &'static str = $name;
        })*
    };
}
elements!(bf16 => "bf16", f32 => "f32", E4M3 => "e4m3", i32 => "i32", i64 => "i64", u8 => "u8", u32 => "u32");

fn check_len(len: usize, shape: &[usize]) -> Result<()> {
    let want = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    ensure!(want == Some(len), "a view of shape {shape:?} needs {want:?} elements, the buffer has {len}");
    Ok(())
}

/// A read-only row-major tensor of rank N on the device.
pub struct Tensor<'a, T, const N: usize> {
    data: CudaView<'a, T>,
    shape: [usize; N],
}

impl<'a, T: Element, const N: usize> Tensor<'a, T, N> {
    /// A view of `data` (exactly `shape.iter().product()` elements) as `shape`.
    pub fn new(data: CudaView<'a, T>, shape: [usize; N]) -> Result<Self> {
        check_len(data.len(), &shape)?;
        Ok(Tensor { data, shape })
    }

    /// A view of a whole buffer.
    pub fn of(buf: &'a CudaSlice<T>, shape: [usize; N]) -> Result<Self> {
        Self::new(buf.as_view(), shape)
    }

    pub fn shape(&self) -> [usize; N] {
        self.shape
    }

    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        self.data.stream()
    }

    /// The same elements viewed as another shape of the same size (a dense linear weight [n, k] as the grouped
    /// GEMM's one-expert [1, n, k]).
    pub(crate) fn reshape<const M: usize>(&self, shape: [usize; M]) -> Result<Tensor<'a, T, M>> {
        Tensor::new(self.data.slice(..), shape)
    }

    /// The device address for a read on `stream`; cudarc orders it after earlier writes while the guard lives.
    pub(crate) fn ptr<'s>(&'s self, stream: &'s CudaStream) -> (u64, SyncOnDrop<'s>) {
        self.data.device_ptr(stream)
    }
}

/// A writable row-major tensor of rank N on the device.
pub struct TensorMut<'a, T, const N: usize> {
    data: CudaViewMut<'a, T>,
    shape: [usize; N],
}

impl<'a, T: Element, const N: usize> TensorMut<'a, T, N> {
    pub fn new(data: CudaViewMut<'a, T>, shape: [usize; N]) -> Result<Self> {
        check_len(data.len(), &shape)?;
        Ok(TensorMut { data, shape })
    }

    pub fn of(buf: &'a mut CudaSlice<T>, shape: [usize; N]) -> Result<Self> {
        let view = buf.as_view_mut();
        Self::new(view, shape)
    }

    pub fn shape(&self) -> [usize; N] {
        self.shape
    }

    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        self.data.stream()
    }

    pub(crate) fn ptr_mut<'s>(&'s mut self, stream: &'s CudaStream) -> (u64, SyncOnDrop<'s>) {
        self.data.device_ptr_mut(stream)
    }
}

/// Every operand must live on the stream's device; that device's context is made current on this thread, where
/// the CUDA runtime (which launches the kernels) looks for it.
pub(crate) fn same_device(stream: &CudaStream, operands: &[&Arc<CudaStream>]) -> Result<()> {
    stream.context().bind_to_thread()?;
    for s in operands {
        ensure!(
            Arc::ptr_eq(s.context(), stream.context()),
            "an operand lives on device {} but the op runs on device {}",
            s.context().ordinal(),
            stream.context().ordinal()
        );
    }
    Ok(())
}
