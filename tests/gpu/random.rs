//! The synthetic-weight stream against llama4_reference::random: every bit equal, whole or in pieces, on both
//! access paths (16-byte stores and 2-byte ones), every element written, bad parameters refused, the C entry.
use crate::common::*;
use cudarc::driver::DevicePtr;
use llama4_kernels::random::random_uniform_bf16;
use llama4_kernels::{bf16, capi, Error, Status, TensorMut};
use llama4_reference::random::uniform_bf16;
use proptest::prelude::*;

/// Fills `n` elements starting `offset` elements into a poisoned buffer; returns the filled part as bits.
fn fill(n: usize, offset: usize, seed: u64, first: u64, bound: f32) -> Vec<u16> {
    let mut out = poison_bf16(offset + n + 3);
    random_uniform_bf16(
        stream(),
        &mut TensorMut::new(out.slice_mut(offset..offset + n), [n]).unwrap(),
        seed,
        first,
        bound,
    )
    .unwrap();
    let all = download(&out);
    // Nothing outside the view is touched.
    assert!(all[..offset].iter().chain(&all[offset + n..]).all(|v| v.to_bits() == 0x7FC0), "wrote outside out");
    all[offset..offset + n].iter().map(|v| v.to_bits()).collect()
}

fn bits(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #![proptest_config(cases(24))]
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn equals_the_reference_bit_for_bit(
        n in prop_oneof![1usize..3000, (1usize..400).prop_map(|k| 8 * k), Just(1 << 20)],
        offset in prop_oneof![Just(0usize), Just(8), 1usize..8],
        seed in any::<u64>(),
        first in prop_oneof![Just(0u64), any::<u32>().prop_map(u64::from), Just(u64::MAX - (1 << 21))],
        bound in prop_oneof![Just(0.0f32), Just(1.0), 1e-4f32..10.0],
    ) {
        let got = fill(n, offset, seed, first, bound);
        let want = bits(&uniform_bf16(n, seed, first, bound));
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!("element {i}: {:#06x}, reference {:#06x}", got[i], want[i]);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn pieces_equal_one_fill() {
    let (n, seed) = (100_003usize, 42u64);
    let whole = fill(n, 0, seed, 0, 0.25);
    let mut pieces = fill(40_001, 0, seed, 0, 0.25);
    pieces.extend(fill(n - 40_001, 3, seed, 40_001, 0.25));
    assert_eq!(whole, pieces);
    // bf16 rounding of u * bound may reach bound itself (u is never +-1, its product can round up to it).
    assert!(whole.iter().all(|&b| bf16::from_bits(b).to_f32().abs() <= 0.25), "a value outside [-bound, bound]");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn refuses_bad_parameters() {
    let mut out = poison_bf16(16);
    let mut v = TensorMut::of(&mut out, [16]).unwrap();
    for bound in [f32::NAN, f32::INFINITY, -1.0] {
        let e = random_uniform_bf16(stream(), &mut v, 1, 0, bound).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "bound {bound}: {e}");
    }
    let e = random_uniform_bf16(stream(), &mut v, 1, u64::MAX - 3, 1.0).unwrap_err();
    assert!(e.to_string().contains("overflow"), "{e}");
    assert!(download(&out).iter().all(|v| v.to_bits() == 0x7FC0), "a refused call wrote");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn c_entry_point_equals_the_reference() {
    let n = 777usize;
    let out = poison_bf16(n);
    let s = stream();
    let status = {
        let (p, _g) = out.device_ptr(s);
        // SAFETY: device buffers of the sizes the header gives, on the stream's device, alive until synchronized.
        unsafe { capi::l4k_random_uniform_bf16(p as _, n as i64, 9, 5, 2.0, s.cu_stream()) }
    };
    assert_eq!(status, Status::Ok);
    assert_eq!(bits(&download(&out)), bits(&uniform_bf16(n, 9, 5, 2.0)));
    // SAFETY: device buffers of the sizes the header gives, on the stream's device, alive until synchronized.
    let bad = unsafe { capi::l4k_random_uniform_bf16(std::ptr::null_mut(), 4, 0, 0, 1.0, s.cu_stream()) };
    assert_ne!(bad, Status::Ok, "a null output was accepted");
}
