//! The synthetic weights' random stream, bit for bit as kernels/random.cu draws it: element `j` of stream
//! `seed` is `u(seed, j)` in (-1, 1), the top 24 bits of splitmix64 over the Weyl sequence
//! `seed + (j + 1) * golden`, as `(2b + 1 - 2^24) / 2^24` (exact in f32, never 0 or +-1); a weight is
//! `bf16(u * bound)` with one f32 rounding of the product and round-to-nearest-even to bf16.

use half::bf16;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// `u(seed, j)` in (-1, 1).
pub fn uniform_pm1(seed: u64, j: u64) -> f32 {
    let mut z = seed.wrapping_add(j.wrapping_add(1).wrapping_mul(GOLDEN));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let b = (z >> 40) as i32;
    (2 * b + 1 - (1 << 24)) as f32 * (1.0 / (1u32 << 24) as f32)
}

/// Elements `first .. first + n` of stream `seed`, scaled by `bound` and rounded to bf16.
pub fn uniform_bf16(n: usize, seed: u64, first: u64, bound: f32) -> Vec<bf16> {
    (0..n as u64).map(|i| bf16::from_f32(uniform_pm1(seed, first + i) * bound)).collect()
}

/// A stream's seed from a name and a run seed (FNV-1a of the name, mixed with `seed`): each tensor of a
/// synthetic model draws its own stream, the same on every device.
pub fn seed_for(name: &str, seed: u64) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h ^ seed.wrapping_mul(GOLDEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_lie_strictly_inside_the_interval_and_are_centred() {
        let n = 200_000u64;
        let (mut sum, mut sq) = (0f64, 0f64);
        for j in 0..n {
            let u = uniform_pm1(7, j);
            assert!(u > -1.0 && u < 1.0 && u != 0.0, "u({j}) = {u}");
            sum += u as f64;
            sq += (u as f64) * (u as f64);
        }
        let mean = sum / n as f64;
        let var = sq / n as f64 - mean * mean;
        // A uniform on (-1, 1) has mean 0 and variance 1/3; 200k draws put the mean within ~0.004 (3 sigma).
        assert!(mean.abs() < 4e-3, "mean {mean}");
        assert!((var - 1.0 / 3.0).abs() < 4e-3, "variance {var}");
    }

    #[test]
    fn pieces_equal_the_whole_and_streams_differ() {
        let whole = uniform_bf16(1000, 3, 0, 0.5);
        let mut pieces = uniform_bf16(333, 3, 0, 0.5);
        pieces.extend(uniform_bf16(667, 3, 333, 0.5));
        assert_eq!(whole, pieces);
        assert_ne!(whole, uniform_bf16(1000, 4, 0, 0.5));
        assert_ne!(seed_for("a", 0), seed_for("b", 0));
        assert_ne!(seed_for("a", 0), seed_for("a", 1));
    }

    #[test]
    fn known_values() {
        // Pinned so that a change to the stream (which would silently change every synthetic figure) is seen.
        let bits: Vec<u16> = uniform_bf16(4, 0, 0, 1.0).iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, bits_of_first_four());
    }

    fn bits_of_first_four() -> Vec<u16> {
        // splitmix64(0)'s first outputs are 0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F,
        // 0xF88BB8A8724C81EC (the published sequence); their top 24 bits b give (2b + 1 - 2^24) / 2^24.
        [0xE220A8397B1DCDAFu64, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]
            .iter()
            .map(|&z| {
                let b = (z >> 40) as i32;
                bf16::from_f32((2 * b + 1 - (1 << 24)) as f32 / (1u32 << 24) as f32).to_bits()
            })
            .collect()
    }
}
