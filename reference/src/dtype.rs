//! Where the model rounds. The reference computes in f32 and rounds to the activation dtype exactly where the
//! PyTorch model does (`.to(dtype)`, `.type_as(x)`, a bf16 x bf16 product), so a bf16 kernel can be held to the
//! bf16 model and an f32 run to the f32 model.

/// The activation dtype a computation is modelled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Activations stay f32: every "round back" is the identity.
    F32,
    /// Activations are bf16: every "round back" rounds to nearest even on bf16.
    Bf16,
}

impl Precision {
    /// Rounds `x` to this dtype and returns it as f32.
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::F32 => x,
            Precision::Bf16 => round_bf16(x),
        }
    }
}

/// Round-to-nearest-even onto bf16, returned as f32 (NaN stays NaN).
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
        assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(Precision::F32.round(1.0 + 2f32.powi(-8)), 1.0 + 2f32.powi(-8));
    }
}
