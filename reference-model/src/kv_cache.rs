//! The paged KV cache's bookkeeping, on the host, once for every backend: per [`KvKind`] a pool of fixed-size
//! blocks shared by all sequences, and per sequence a block table (logical block `p / block_size` -> pool
//! block). A backend's KV tensors are `[blocks * block_size, Hkv, D]` per layer; every layer of one kind uses
//! the same table, so one allocation serves all of them.
//!
//! Policy: a global layer keeps every position. A chunked layer's attention reads only positions from the
//! start of the current chunk (`[p / C * C, p]` for a query at p), so once a step has run, the blocks that lie
//! wholly before the chunk of the sequence's next position are returned to the pool: a chunked layer's cache
//! never holds much more than one chunk, however long the sequence.

use crate::backend::KvKind;
use crate::error::{Error, Result};
use llama4_contract::Mask;

/// Free blocks of one pool.
#[derive(Clone, Debug)]
pub struct BlockPool {
    free: Vec<i32>,
    total: usize,
}

impl BlockPool {
    pub fn new(total: usize) -> Self {
        // Handed out lowest id first, which keeps a small run's slots together.
        BlockPool { free: (0..total as i32).rev().collect(), total }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    fn take(&mut self, kind: KvKind) -> Result<i32> {
        self.free.pop().ok_or_else(|| {
            Error::Input(format!(
                "the {kind:?} KV pool's {} blocks are all in use; free a sequence or plan a larger cache",
                self.total
            ))
        })
    }

    fn give(&mut self, b: i32) {
        debug_assert!(b >= 0 && (b as usize) < self.total && !self.free.contains(&b));
        self.free.push(b);
    }
}

/// One sequence's blocks of one kind: entry `j` covers positions `j * bs .. (j + 1) * bs` (-1: none held).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockTable {
    pub blocks: Vec<i32>,
}

impl BlockTable {
    pub fn held(&self) -> usize {
        self.blocks.iter().filter(|&&b| b >= 0).count()
    }

    /// Makes sure positions `lo..hi` have blocks, taking new ones from `pool`.
    pub fn reserve(&mut self, pool: &mut BlockPool, kind: KvKind, bs: usize, lo: usize, hi: usize) -> Result<()> {
        if hi <= lo {
            return Ok(());
        }
        let need = hi.div_ceil(bs);
        if self.blocks.len() < need {
            self.blocks.resize(need, -1);
        }
        for j in lo / bs..need {
            if self.blocks[j] < 0 {
                self.blocks[j] = pool.take(kind)?;
            }
        }
        Ok(())
    }

    /// Returns every block wholly before position `keep_from` to `pool`.
    pub fn release_before(&mut self, pool: &mut BlockPool, bs: usize, keep_from: usize) {
        for (j, b) in self.blocks.iter_mut().enumerate() {
            if (j + 1) * bs > keep_from {
                break;
            }
            if *b >= 0 {
                pool.give(*b);
                *b = -1;
            }
        }
    }

    pub fn release_all(&mut self, pool: &mut BlockPool) {
        for b in self.blocks.drain(..) {
            if b >= 0 {
                pool.give(b);
            }
        }
    }

    /// The slot of position `p` (its block must be held).
    pub fn slot(&self, bs: usize, p: usize) -> i64 {
        let b = self.blocks[p / bs];
        debug_assert!(b >= 0, "position {p} has no block");
        b as i64 * bs as i64 + (p % bs) as i64
    }
}

/// The first position a query at `p` can see under `mask`, which is where a kind's blocks must start.
pub fn first_visible(mask: Mask, p: usize) -> usize {
    match mask {
        Mask::Causal => 0,
        Mask::Chunked { chunk } => p / chunk * chunk,
    }
}

/// Blocks each pool needs so that `max_seqs` sequences of up to `max_context` positions fit, each bringing up
/// to `max_tokens` new tokens in a step: every position for the global kind; for the chunked kind, a chunk
/// plus a step's tokens per sequence (what a step can touch before the blocks behind the chunk are freed).
pub fn pool_blocks(
    kind: KvKind,
    chunk: Option<usize>,
    max_seqs: usize,
    max_context: usize,
    max_tokens: usize,
    bs: usize,
) -> usize {
    let all = max_seqs * max_context.div_ceil(bs);
    match (kind, chunk) {
        (KvKind::Global, _) => all,
        (KvKind::Chunked, Some(c)) => all.min(max_seqs * ((c + max_tokens).div_ceil(bs) + 1)),
        (KvKind::Chunked, None) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_tables_release_what_falls_behind_the_chunk() {
        let mut pool = BlockPool::new(8);
        let mut t = BlockTable::default();
        // Chunk 10, blocks of 4: positions 0..13 need blocks 0..3.
        t.reserve(&mut pool, KvKind::Chunked, 4, 0, 13).unwrap();
        assert_eq!((t.held(), pool.free_blocks()), (4, 4));
        assert_eq!(t.slot(4, 5), t.blocks[1] as i64 * 4 + 1);
        // Next position 13 is in chunk 1 (10..20): blocks 0 and 1 (positions 0..8) go; block 2 (8..12) holds
        // positions 10 and 11 and stays.
        t.release_before(&mut pool, 4, first_visible(Mask::Chunked { chunk: 10 }, 13));
        assert_eq!(t.blocks[..2], [-1, -1]);
        assert_eq!((t.held(), pool.free_blocks()), (2, 6));
        t.release_all(&mut pool);
        assert_eq!(pool.free_blocks(), 8);
    }

    #[test]
    fn an_exhausted_pool_is_an_error() {
        let mut pool = BlockPool::new(1);
        let mut t = BlockTable::default();
        assert!(t.reserve(&mut pool, KvKind::Global, 4, 0, 5).is_err());
    }

    #[test]
    fn pools_are_sized_for_the_worst_step() {
        assert_eq!(pool_blocks(KvKind::Global, Some(8), 2, 100, 10, 16), 14);
        assert_eq!(pool_blocks(KvKind::Chunked, Some(8), 2, 100, 10, 16), 2 * (2 + 1));
        assert_eq!(pool_blocks(KvKind::Chunked, None, 2, 100, 10, 16), 0);
    }
}
