//! Greedy sampling: the index of the largest logit of each row, as `torch.argmax(logits, dim=-1)` picks it.
//!
//! Ties go to the lowest index (-0.0 ties with 0.0; +-inf are ordinary values, so an all -inf row gives 0).
//! NaN rule (torch would return the index of a NaN, which samples garbage): a row holding any NaN gives -1,
//! which the caller reports as an error.

use ndarray::ArrayView2;

/// `argmax` of every row of `logits` [R, V]: the lowest index of the row's maximum, or -1 if the row holds a NaN.
///
/// Panics if V is 0 (torch.argmax of an empty row raises) or larger than i32::MAX.
pub fn argmax(logits: ArrayView2<f32>) -> Vec<i32> {
    let (_, v) = logits.dim();
    assert!(v >= 1 && v <= i32::MAX as usize, "argmax: rows of {v} values (need 1..=2^31-1)");
    logits
        .rows()
        .into_iter()
        .map(|row| {
            if row.iter().any(|x| x.is_nan()) {
                return -1;
            }
            // Only a strictly larger value replaces the best: the first of equal maxima stays.
            let mut best = 0;
            for (i, &x) in row.iter().enumerate() {
                if x > row[best] {
                    best = i;
                }
            }
            best as i32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array2};

    const NAN: f32 = f32::NAN;
    const INF: f32 = f32::INFINITY;

    #[test]
    fn largest_value_lowest_index() {
        let l = array![[0.5f32, 2.0, -1.0, 2.0], [3.0, 1.0, 3.0, 3.0], [-5.0, -4.0, -6.0, -4.5]];
        assert_eq!(argmax(l.view()), vec![1, 0, 1]);
    }

    #[test]
    fn signed_zeros_and_infinities() {
        let l = array![[-0.0f32, 0.0, -1.0], [-INF, -INF, -INF], [1.0, INF, INF], [-INF, -3e38, -INF]];
        assert_eq!(argmax(l.view()), vec![0, 0, 1, 1]);
    }

    #[test]
    fn any_nan_gives_minus_one() {
        let l = array![[NAN, 1.0, 2.0], [1.0, 2.0, NAN], [NAN, NAN, NAN], [INF, NAN, 0.0], [1.0, 2.0, 0.0]];
        assert_eq!(argmax(l.view()), vec![-1, -1, -1, -1, 1]);
    }

    #[test]
    fn no_rows_and_single_values() {
        assert!(argmax(Array2::<f32>::zeros((0, 7)).view()).is_empty());
        assert_eq!(argmax(array![[NAN], [-INF], [4.0]].view()), vec![-1, 0, 0]);
    }

    #[test]
    #[should_panic(expected = "argmax: rows of 0 values")]
    fn empty_rows_panic() {
        argmax(Array2::<f32>::zeros((2, 0)).view());
    }
}
