//! expert_parallel/{pack,local_copy,unpack,combine_pack,combine_add}/<tokens>x5120 at world size 1, Maverick
//! routing (128 experts, top-1, all local), capacity = tokens (the worst case), decode (128 tokens) and prefill
//! (8192 tokens per GPU): the device work of dispatch and combine without NCCL's transport (issue 17; the
//! transport is timed by bench/peers/torch_all_to_all.py under torchrun on several GPUs). `local_copy` is the
//! world-size-1 stand-in for the exchange (one slab copied on the device). Bytes, counted honestly: pack reads
//! and writes each pair's FP8 row and scale (and reads ids, dest); unpack the same on the receiving side; combine
//! pack reads and writes one bf16 row per pair; combine add reads the returned row and the shared row and
//! writes the token's row (unpermute's bytes).
mod common;
use common::*;
use cudarc::driver::CudaSlice;
use llama4_kernels::expert_parallel::{
    combine_add, combine_pack, dispatch_pack, dispatch_unpack, exchange, Config, Grouped, Handle, Phase, Routing, Rows,
    RowsBy, Transport,
};
use llama4_kernels::{bf16, Tensor, TensorMut, E4M3};
use rand::{Rng, SeedableRng};

const EXPERTS: usize = 128;
const SHAPES: [usize; 2] = [128, 8192];

fn bench(c: &mut criterion::Criterion) {
    let h = HIDDEN;
    for t in SHAPES {
        let shape = format!("{t}x{h}");
        let config = Config::new(1, 0, EXPERTS, 1, h, t);
        // A random top-1 routing over the experts, laid out as the router would (align 1).
        let mut r = rand::rngs::StdRng::seed_from_u64(t as u64);
        let ids: Vec<i32> = (0..t).map(|_| r.gen_range(0..EXPERTS as i32)).collect();
        let mut counts = vec![0i32; EXPERTS];
        for &e in &ids {
            counts[e as usize] += 1;
        }
        let mut offsets = vec![0i32; EXPERTS + 1];
        for e in 0..EXPERTS {
            offsets[e + 1] = offsets[e] + counts[e];
        }
        let mut next = offsets.clone();
        let dest: Vec<i32> = ids
            .iter()
            .map(|&e| {
                next[e as usize] += 1;
                next[e as usize] - 1
            })
            .collect();
        let s = stream();
        let (d_ids, d_counts, d_offsets, d_dest) = (
            s.clone_htod(&ids).unwrap(),
            s.clone_htod(&counts).unwrap(),
            s.clone_htod(&offsets).unwrap(),
            s.clone_htod(&dest).unwrap(),
        );
        let row_bytes = h + 4;
        let sets = rotation(2 * t * row_bytes);
        let qs: Vec<CudaSlice<E4M3>> = (0..sets)
            .map(|i| {
                let mut r = rand::rngs::StdRng::seed_from_u64(100 + i as u64);
                s.clone_htod(&(0..t * h).map(|_| E4M3(r.gen::<u8>() & 0x7E)).collect::<Vec<_>>()).unwrap()
            })
            .collect();
        let scales: Vec<CudaSlice<f32>> = (0..sets).map(|_| s.clone_htod(&vec![0.01f32; t]).unwrap()).collect();
        let mut handle = Handle::new(s, config).unwrap();
        let rows = handle.layout().grouped_rows;
        let mut gq = zeros::<E4M3>(rows * h);
        let mut gs = zeros::<f32>(rows);
        let mut gc = zeros::<i32>(EXPERTS);
        let mut go = zeros::<i32>(EXPERTS + 1);
        let ids_t = Tensor::of(&d_ids, [t, 1]).unwrap();
        let dest_t = Tensor::of(&d_dest, [t, 1]).unwrap();
        let counts_t = Tensor::of(&d_counts, [EXPERTS]).unwrap();
        let offsets_t = Tensor::of(&d_offsets, [EXPERTS + 1]).unwrap();
        let routing = Routing { ids: &ids_t, counts: &counts_t, offsets: &offsets_t, dest: &dest_t };
        let pack = |handle: &mut Handle, i: usize| {
            let (q, sc) = (Tensor::of(&qs[i % sets], [t, h]).unwrap(), Tensor::of(&scales[i % sets], [t]).unwrap());
            dispatch_pack(s, handle, &routing, &Rows { q: &q, scales: &sc, by: RowsBy::Permuted }).unwrap()
        };
        run_case(c, "expert_parallel", "pack", &shape, t, 2 * t * row_bytes + 8 * t, |i| pack(&mut handle, i));
        let slab = handle.layout().slab_bytes;
        run_case(c, "expert_parallel", "local_copy", &shape, t, 2 * slab, |i| {
            pack(&mut handle, i);
            exchange(&Transport::Local, s, &mut handle, Phase::Dispatch).unwrap()
        });
        let mut unpack = |handle: &mut Handle| {
            let mut g = Grouped {
                q: &mut TensorMut::of(&mut gq, [rows, h]).unwrap(),
                scales: &mut TensorMut::of(&mut gs, [rows]).unwrap(),
                counts: &mut TensorMut::of(&mut gc, [EXPERTS]).unwrap(),
                offsets: &mut TensorMut::of(&mut go, [EXPERTS + 1]).unwrap(),
            };
            dispatch_unpack(s, handle, &mut g).unwrap()
        };
        // The received slabs stay put, so unpack (and what follows) can be repeated on them.
        pack(&mut handle, 0);
        exchange(&Transport::Local, s, &mut handle, Phase::Dispatch).unwrap();
        run_case(c, "expert_parallel", "unpack", &shape, t, 2 * t * row_bytes + 4 * t, |_| unpack(&mut handle));
        let ys: Vec<CudaSlice<bf16>> = (0..rotation(4 * t * h)).map(|i| rand_bf16(rows * h, 200 + i as u64)).collect();
        run_case(c, "expert_parallel", "combine_pack", &shape, t, 4 * t * h + 4 * t, |i| {
            combine_pack(s, &mut handle, &Tensor::of(&ys[i % ys.len()], [rows, h]).unwrap()).unwrap()
        });
        exchange(&Transport::Local, s, &mut handle, Phase::Combine).unwrap();
        let shared = rand_bf16(t * h, 300);
        let mut outs: Vec<CudaSlice<bf16>> = (0..rotation(6 * t * h)).map(|_| zeros(t * h)).collect();
        let n_out = outs.len();
        run_case(c, "expert_parallel", "combine_add", &shape, t, 6 * t * h + 4 * t, |i| {
            combine_add(
                s,
                &mut handle,
                None,
                Some(&Tensor::of(&shared, [t, h]).unwrap()),
                &mut TensorMut::of(&mut outs[i % n_out], [t, h]).unwrap(),
            )
            .unwrap()
        });
    }
}

criterion::criterion_group! { name = benches; config = criterion(); targets = bench }
criterion::criterion_main!(benches);
