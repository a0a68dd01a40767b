//! Several sequences in one step (mixed prefill and decode, chunk boundaries crossed, blocks freed and reused)
//! give each sequence the logits it gets alone, on the CPU reference (the GPU runs the same check in
//! tests/gpu_model.rs). The engine's pools end where they started.

mod common;

use common::{alone, fixtures, golden, jobs, rel_l2, together};
use llama4_model::backend::{KvKind, Limits};
use llama4_model::cpu::Cpu;
use llama4_model::engine::Engine;
use llama4_model::model::Model;

#[test]
fn sequences_batched_together_get_what_they_get_alone() {
    for dir in fixtures() {
        let g = golden(&dir);
        let model = Model::load(&dir, Cpu).unwrap();
        let jobs = jobs(&g.ids, 9);
        let limits = Limits {
            max_tokens: 48,
            max_seqs: 4,
            max_context: 64.max(g.ids.len()),
            max_logit_rows: 48,
            block_size: 4,
            ..Limits::default()
        };
        let mut engine = Engine::new(&model, limits).unwrap();
        let free = [KvKind::Global, KvKind::Chunked].map(|k| engine.free_blocks(k));
        let (got, mixed) = together(&mut engine, &jobs);
        assert!(mixed >= 3, "{}: only {mixed} steps mixed prefill and decode", dir.display());
        for (j, job) in jobs.iter().enumerate() {
            let want = alone(&model, job);
            let err = rel_l2(&got[j], &want);
            assert!(
                err <= 1e-5,
                "{}: job {j} ({} tokens) batched vs alone rel L2 {err:.3e}",
                dir.display(),
                job.ids.len()
            );
        }
        assert_eq!(
            [KvKind::Global, KvKind::Chunked].map(|k| engine.free_blocks(k)),
            free,
            "{}: blocks leaked",
            dir.display()
        );
    }
}

#[test]
fn engine_refuses_what_it_was_not_planned_for() {
    let model = Model::load(&common::fixtures_root().join("scout_tiny"), Cpu).unwrap();
    let limits =
        Limits { max_tokens: 8, max_seqs: 2, max_context: 12, max_logit_rows: 8, block_size: 4, ..Limits::default() };
    let mut e = Engine::new(&model, limits).unwrap();
    let (a, b, c) = (e.add_sequence(), e.add_sequence(), e.add_sequence());
    use llama4_model::engine::{Logits, SeqStep};
    let st = |seq, tokens: &'static [u32]| SeqStep { seq, tokens, logits: Logits::Last };
    let err = |r: llama4_model::Result<_>| r.err().unwrap().to_string();
    assert!(err(e.step(&[st(a, &[1; 9])], false)).contains("planned for 8"));
    assert!(err(e.step(&[st(a, &[1]), st(b, &[1]), st(c, &[1])], false)).contains("planned for 2"));
    assert!(err(e.step(&[st(a, &[1]), st(a, &[2])], false)).contains("twice"));
    assert!(err(e.step(&[st(a, &[999])], false)).contains("out of range"));
    assert!(err(e.step(&[st(a, &[])], false)).contains("no tokens"));
    e.step(&[st(a, &[1; 8])], false).unwrap();
    assert!(err(e.step(&[st(a, &[1; 5])], false)).contains("12"));
    e.free(a);
    assert!(err(e.step(&[st(a, &[1])], false)).contains("does not exist"));
    assert!(Engine::new(&model, Limits { max_tokens: 1, max_seqs: 2, ..limits }).is_err());
}
