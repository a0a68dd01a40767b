//! Token embedding: row `ids[t]` of `model.embed_tokens.weight` [V, H]. A lookup copies values, so there is
//! nothing to round: the table is already in the activation dtype.

use ndarray::{Array2, ArrayView2};

/// Gathers `table[ids[t]]` for every token: [V, H] -> [T, H].
///
/// An id at or past the vocabulary size is an `Err` naming the id, its position and V (PyTorch raises an
/// index error there; a kernel must not read out of bounds).
pub fn embed(table: ArrayView2<f32>, ids: &[u32]) -> Result<Array2<f32>, String> {
    let (vocab, hidden) = table.dim();
    let mut out = Array2::zeros((ids.len(), hidden));
    for (t, &id) in ids.iter().enumerate() {
        if id as usize >= vocab {
            return Err(format!("embed: token id {id} at position {t} is out of range for vocabulary size {vocab}"));
        }
        out.row_mut(t).assign(&table.row(id as usize));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn gathers_rows_in_token_order() {
        let table = array![[0.0f32, 0.5], [1.0, 1.5], [2.0, 2.5]];
        let out = embed(table.view(), &[2, 0, 2]).unwrap();
        assert_eq!(out, array![[2.0, 2.5], [0.0, 0.5], [2.0, 2.5]]);
    }

    #[test]
    fn no_tokens_gives_an_empty_batch() {
        let table = array![[1.0f32, 2.0]];
        assert_eq!(embed(table.view(), &[]).unwrap().dim(), (0, 2));
    }

    #[test]
    fn out_of_range_id_is_an_error_naming_it() {
        let table = array![[1.0f32], [2.0]];
        let err = embed(table.view(), &[1, 2]).unwrap_err();
        assert!(err.contains("token id 2") && err.contains("position 1"), "{err}");
        assert!(embed(table.view(), &[u32::MAX]).unwrap_err().contains(&u32::MAX.to_string()));
    }
}
