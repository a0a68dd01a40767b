//! The llama4-run binary: the README command on a shipped fixture, --save-logits, and one-line errors.

mod common;

use common::{copy_fixture, fixtures_root};
use llama4_model::cpu::Cpu;
use llama4_model::model::{Logits, Model};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llama4-run")).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One line on stderr, starting with the program name, no panic message.
fn assert_one_error_line(out: &Output, code: i32, want: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("llama4-run: error: ") && err.contains(want), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn readme_command_generates_the_greedy_tokens() {
    let dir = fixtures_root().join("scout_tiny");
    let out = run(&[dir.to_str().unwrap(), "--tokens", "1,2,3", "--max-new", "8"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = Model::load(&dir, Cpu).unwrap().generate(&[1, 2, 3], 8, false).unwrap().tokens;
    assert!(stdout.contains(&format!("generated: {want:?}")), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("token ")).count(), 8, "{stdout}");
    assert!(stdout.contains("ms/token"), "{stdout}");
}

#[test]
fn save_logits_writes_every_position() {
    let dir = fixtures_root().join("maverick_tiny");
    let tmp = common::scratch("cli_logits");
    let file = tmp.join("logits.safetensors");
    let out =
        run(&[dir.to_str().unwrap(), "--tokens", "5 6 7 8", "--max-new", "3", "--save-logits", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let saved = llama4_model::logits_file::load(&file, "logits").unwrap();
    // 4 prompt rows and the 2 fed-back tokens; recompute them in one pass.
    let model = Model::load(&dir, Cpu).unwrap();
    let gen = model.generate(&[5, 6, 7, 8], 3, false).unwrap().tokens;
    let mut cache = model.new_cache().unwrap();
    let full = model.forward(&mut cache, &[5, 6, 7, 8, gen[0], gen[1]], Logits::All).unwrap();
    assert_eq!(saved.dim(), (6, 256));
    assert!(common::rel_l2(&saved, &full) <= 1e-6);
}

/// On a machine without a GPU (CI), `--device cuda` is one line naming what is missing; with one
/// (L4K_EXPECT_GPU=1 on the GPU machine) the tiny fixture's head_dim 16 is refused at load, naming the limit.
#[test]
fn cuda_without_a_gpu_or_with_an_unservable_config_is_one_line() {
    let dir = fixtures_root().join("scout_tiny");
    let out = run(&[dir.to_str().unwrap(), "--tokens", "1", "--device", "cuda"]);
    match std::env::var("L4K_EXPECT_GPU").as_deref() {
        _ if cfg!(not(feature = "cuda")) => assert_one_error_line(&out, 1, "--device cuda: this build has no GPU"),
        Ok("1") => assert_one_error_line(&out, 1, "head_dim 16"),
        _ => assert_one_error_line(&out, 1, "--device cuda: no usable GPU"),
    }
    let out = run(&[dir.to_str().unwrap(), "--tokens", "1", "--fp8-dense"]);
    assert_one_error_line(&out, 1, "--fp8-dense applies to --device cuda only");
}

#[test]
fn teacher_forcing_gives_the_logits_of_the_full_pass() {
    let dir = fixtures_root().join("scout_tiny");
    let tmp = common::scratch("cli_teacher");
    let file = tmp.join("logits.safetensors");
    let d = dir.to_str().unwrap();
    let out = run(&[
        d,
        "--tokens",
        "5,6,7,8,9,10",
        "--max-new",
        "1",
        "--teacher-force",
        "3",
        "--save-logits",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let saved = llama4_model::logits_file::load(&file, "logits").unwrap();
    let model = Model::load(&dir, Cpu).unwrap();
    let mut cache = model.new_cache().unwrap();
    let full = model.forward(&mut cache, &[5, 6, 7, 8, 9, 10], Logits::All).unwrap();
    assert_eq!(saved.dim(), full.dim());
    assert!(common::rel_l2(&saved, &full) <= 1e-6);
    assert_one_error_line(&run(&[d, "--tokens", "5,6", "--teacher-force", "2"]), 1, "--teacher-force 2");
}

#[test]
fn bad_checkpoints_give_one_line_and_exit_1() {
    let dir = copy_fixture("scout_tiny", "cli_bad");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    assert_one_error_line(&run(&[dir.to_str().unwrap(), "--tokens", "1,2"]), 1, "truncated");
    let missing = dir.join("nope");
    assert_one_error_line(&run(&[missing.to_str().unwrap(), "--tokens", "1"]), 1, "config.json");
    let good = fixtures_root().join("scout_tiny");
    assert_one_error_line(&run(&[good.to_str().unwrap(), "--tokens", "1,160"]), 1, "token id 160");
}

#[test]
fn usage_errors_exit_2() {
    let good = fixtures_root().join("scout_tiny");
    let g = good.to_str().unwrap();
    for args in
        [vec![], vec![g], vec![g, "--tokens", "1,x"], vec![g, "--tokens", "1", "--max-new", "-1"], vec![g, "--bogus"]]
    {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(!text(&out.stderr).contains("panicked"));
    }
}

#[cfg(not(feature = "tokenizer"))]
#[test]
fn text_without_the_tokenizer_feature_says_how_to_get_it() {
    let dir = fixtures_root().join("scout_tiny");
    assert_one_error_line(&run(&[dir.to_str().unwrap(), "--text", "hello world"]), 1, "--features tokenizer");
}

#[cfg(feature = "tokenizer")]
#[test]
fn text_prompts_go_through_tokenizer_json() {
    let dir = fixtures_root().join("scout_tiny");
    let out = run(&[dir.to_str().unwrap(), "--text", "hello world", "--max-new", "2"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // tokenizer.json of scout_tiny is word-level: "hello" and "world" are ids 44 and 45.
    assert!(stdout.contains("prompt: 2 tokens [44, 45]"), "{stdout}");
    assert!(stdout.contains("text: "), "{stdout}");
}
