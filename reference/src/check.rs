//! Agreement measures shared by every test: relative L2 error over a whole tensor, with NaN and Inf failing
//! outright and the worst element named so a failure points at a coordinate.

/// Thresholds from DEVELOPERS.md.
pub const TOL_F32: f64 = 1e-5;
pub const TOL_BF16: f64 = 1e-2;
pub const TOL_FP8_GEMM: f64 = 5e-3;

/// `||out - ref||_2 / ||ref||_2` in f64; `Err` names the first non-finite output or a length mismatch.
/// A zero reference compares by the absolute norm of `out`.
pub fn rel_l2(out: &[f32], reference: &[f32]) -> Result<f64, String> {
    if out.len() != reference.len() {
        return Err(format!("length {} != reference length {}", out.len(), reference.len()));
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (i, (&o, &r)) in out.iter().zip(reference).enumerate() {
        if !o.is_finite() {
            return Err(format!("non-finite output {o} at flat index {i} (reference {r})"));
        }
        let d = o as f64 - r as f64;
        num += d * d;
        den += (r as f64) * (r as f64);
    }
    Ok(if den == 0.0 { num.sqrt() } else { (num / den).sqrt() })
}

/// Asserts `rel_l2(out, reference) <= tol`, printing the worst element's index and both values on failure.
pub fn assert_close(what: &str, out: &[f32], reference: &[f32], tol: f64) {
    match rel_l2(out, reference) {
        Err(e) => panic!("{what}: {e}"),
        Ok(err) if err <= tol => {}
        Ok(err) => {
            let (i, _) = out
                .iter()
                .zip(reference)
                .map(|(&o, &r)| (o as f64 - r as f64).abs())
                .enumerate()
                .fold((0, -1.0), |best, (i, d)| if d > best.1 { (i, d) } else { best });
            panic!(
                "{what}: relative L2 error {err:.3e} > {tol:.1e}; worst at flat index {i}: got {} want {}",
                out[i], reference[i]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_never_passes() {
        assert!(rel_l2(&[f32::NAN], &[f32::NAN]).is_err());
        assert!(rel_l2(&[1.0, f32::INFINITY], &[1.0, 1.0]).is_err());
    }

    #[test]
    fn relative_error_is_scale_free() {
        let e = rel_l2(&[1.1, 2.2], &[1.0, 2.0]).unwrap();
        assert!((e - 0.1).abs() < 1e-6);
    }

    #[test]
    #[should_panic(expected = "worst at flat index 1")]
    fn failure_names_the_worst_element() {
        assert_close("t", &[1.0, 5.0], &[1.0, 2.0], 1e-3);
    }
}
