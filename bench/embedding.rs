//! embedding/gather/<tokens>x5120: rows of a Llama 4 vocabulary-sized table [202048, 5120] bf16 gathered by
//! random ids. Bytes = the rows read + written + the ids.
mod common;
use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use llama4_kernels::embedding::embedding;
use llama4_kernels::{bf16, Tensor, TensorMut};
use rand::{Rng, SeedableRng};

const VOCAB: usize = 202048;

fn bench(c: &mut Criterion) {
    let h = HIDDEN;
    // The table as copies of one random 32768-row block (2 GB would take minutes to draw on the host).
    let block = 32768;
    let one = rand_bf16(block * h, 1);
    let mut table = zeros::<bf16>(VOCAB * h);
    for b in (0..VOCAB).step_by(block) {
        let rows = block.min(VOCAB - b);
        stream().memcpy_dtod(&one.slice(..rows * h), &mut table.slice_mut(b * h..(b + rows) * h)).unwrap();
    }
    let mut r = rand::rngs::StdRng::seed_from_u64(2);
    for t in TOKENS {
        let ids: Vec<i32> = (0..t).map(|_| r.gen_range(0..VOCAB as i32)).collect();
        let ids = stream().clone_htod(&ids).unwrap();
        let mut out = zeros::<bf16>(t * h);
        run_case(c, "embedding", "gather", &format!("{t}x{h}"), t, 4 * t * h + 4 * t, |_| {
            embedding(
                stream(),
                &Tensor::of(&table, [VOCAB, h]).unwrap(),
                &Tensor::of(&ids, [t]).unwrap(),
                &mut TensorMut::of(&mut out, [t, h]).unwrap(),
                None,
            )
            .unwrap()
        });
    }
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
