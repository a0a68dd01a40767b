//! The KV cache of a whole model: per layer, the backend's key/value storage plus the absolute position of
//! every cached entry. The eviction policy lives here, once for every backend: a chunked layer keeps only the
//! keys of the chunk the next token falls in (at most C - 1 of them), a global layer keeps everything.

use crate::backend::{AttnMask, Backend};
use crate::error::{Error, Result};
use std::collections::VecDeque;

pub struct LayerCache<K> {
    pub kv: K,
    /// Absolute position of each cached entry, oldest first (always increasing).
    pub pos: VecDeque<usize>,
}

pub struct KvCache<B: Backend> {
    pub layers: Vec<LayerCache<B::Kv>>,
    /// Absolute position of the next token to be fed.
    pub next_pos: usize,
    /// Set when a forward pass failed half way: the layers may disagree, so the cache must not be reused.
    pub(crate) poisoned: bool,
}

impl<B: Backend> KvCache<B> {
    pub fn new(layers: Vec<B::Kv>) -> Self {
        let layers = layers.into_iter().map(|kv| LayerCache { kv, pos: VecDeque::new() }).collect();
        KvCache { layers, next_pos: 0, poisoned: false }
    }

    /// Entries held by layer `i`.
    pub fn len(&self, i: usize) -> usize {
        self.layers[i].pos.len()
    }

    pub(crate) fn check_usable(&self) -> Result<()> {
        match self.poisoned {
            true => Err(Error::Input("the KV cache is unusable after a failed forward pass; start a new one".into())),
            false => Ok(()),
        }
    }
}

/// How many of the oldest entries a layer can drop once everything before `next_pos` has been processed:
/// for a chunked layer, those in chunks before the chunk of `next_pos`; for a global layer, none.
pub fn evictable(pos: &VecDeque<usize>, mask: AttnMask, next_pos: usize) -> usize {
    match mask {
        AttnMask::Causal => 0,
        AttnMask::Chunked(chunk) => pos.iter().take_while(|&&p| p / chunk < next_pos / chunk).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_layers_keep_only_the_next_tokens_chunk() {
        let pos: VecDeque<usize> = (0..10).collect();
        // Next token 10 with chunk 4 starts at 8: positions 0..8 go, 8 and 9 stay.
        assert_eq!(evictable(&pos, AttnMask::Chunked(4), 10), 8);
        // Next token 12 starts a fresh chunk: everything goes.
        assert_eq!(evictable(&pos, AttnMask::Chunked(4), 12), 10);
        // Chunk 5, next 10: a chunk boundary again, everything goes.
        assert_eq!(evictable(&pos, AttnMask::Chunked(5), 10), 10);
        assert_eq!(evictable(&pos, AttnMask::Chunked(5), 9), 5);
        assert_eq!(evictable(&pos, AttnMask::Causal, 10), 0);
    }
}
