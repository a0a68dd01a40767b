//! argmax/greedy/<rows>x202048: greedy sampling over Llama 4's vocabulary from f32 logits (one row per decoding
//! sequence). Bytes = the logits read + the ids written.
mod common;
use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use llama4_kernels::argmax::argmax;
use llama4_kernels::{Tensor, TensorMut};
use rand::{Rng, SeedableRng};

const VOCAB: usize = 202048;

fn bench(c: &mut Criterion) {
    let mut r = rand::rngs::StdRng::seed_from_u64(3);
    for rows in [1usize, 8, 64, 256] {
        let n = rows * VOCAB;
        let sets = rotation(4 * n);
        let logits: Vec<_> = (0..sets)
            .map(|_| stream().clone_htod(&(0..n).map(|_| r.gen_range(-20.0f32..20.0)).collect::<Vec<_>>()).unwrap())
            .collect();
        let mut out = zeros::<i32>(rows);
        run_case(c, "argmax", "greedy", &format!("{rows}x{VOCAB}"), rows, 4 * n + 4 * rows, |i| {
            argmax(
                stream(),
                &Tensor::of(&logits[i % sets], [rows, VOCAB]).unwrap(),
                &mut TensorMut::of(&mut out, [rows]).unwrap(),
            )
            .unwrap()
        });
    }
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
