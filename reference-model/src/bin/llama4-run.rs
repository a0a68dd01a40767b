//! llama4-run: prefill + greedy decoding of a Llama 4 checkpoint directory.
//!
//! ```text
//! llama4-run DIR (--tokens 1,2,3 | --text "hello") [--max-new N] [--device cpu|cuda] [--save-logits FILE]
//!            [--teacher-force K] [--fp8-dense] [--no-graphs] [--prefill-chunk N]
//! ```
//! Prints the new tokens as they come with the time each took, then a summary. `--device cuda` runs the fused
//! kernels (routed experts FP8, the rest bf16; `--fp8-dense` makes the dense linears FP8 too), each decode step
//! replayed from a CUDA graph. `--teacher-force K` prefills all but the last K prompt tokens and feeds those K
//! one at a time through decode steps. Any failure (bad checkpoint, bad arguments, no GPU) is one line on
//! stderr and a non-zero exit: 2 for usage, 1 for everything else.

use llama4_model::backend::Backend;
use llama4_model::cpu::Cpu;
use llama4_model::engine::GenOptions;
use llama4_model::logits_file;
use llama4_model::model::Model;
use llama4_model::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: llama4-run CHECKPOINT_DIR (--tokens ID,ID,... | --text TEXT) [--max-new N] \
[--device cpu|cuda] [--save-logits FILE] [--teacher-force K] [--fp8-dense] [--no-graphs] [--prefill-chunk N]";

#[derive(Debug)]
enum Prompt {
    Ids(Vec<u32>),
    Text(String),
}

#[derive(Debug)]
struct Args {
    dir: PathBuf,
    prompt: Prompt,
    max_new: usize,
    device: String,
    save_logits: Option<PathBuf>,
    teacher_force: usize,
    fp8_dense: bool,
    graphs: bool,
    prefill_chunk: usize,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut dir, mut prompt, mut max_new, mut device, mut save) = (None, None, 16, "cpu".to_string(), None);
    let (mut teacher_force, mut fp8_dense, mut graphs, mut prefill_chunk) = (0, false, true, 0);
    let count =
        |flag: &str, v: String| v.parse::<usize>().map_err(|_| format!("{flag}: `{v}` is not a non-negative integer"));
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--tokens" => prompt = Some(Prompt::Ids(parse_ids(&value("--tokens")?)?)),
            "--text" => prompt = Some(Prompt::Text(value("--text")?)),
            "--max-new" => {
                let v = value("--max-new")?;
                max_new = v.parse().map_err(|_| format!("--max-new: `{v}` is not a non-negative integer"))?;
            }
            "--device" => device = value("--device")?,
            "--teacher-force" => teacher_force = count("--teacher-force", value("--teacher-force")?)?,
            "--prefill-chunk" => prefill_chunk = count("--prefill-chunk", value("--prefill-chunk")?)?,
            "--fp8-dense" => fp8_dense = true,
            "--no-graphs" => graphs = false,
            "--save-logits" => save = Some(PathBuf::from(value("--save-logits")?)),
            "-h" | "--help" => return Err(String::new()),
            f if f.starts_with('-') => return Err(format!("unknown option {f}")),
            d if dir.is_none() => dir = Some(PathBuf::from(d)),
            extra => return Err(format!("unexpected argument `{extra}`")),
        }
    }
    Ok(Args {
        dir: dir.ok_or("no checkpoint directory given")?,
        prompt: prompt.ok_or("give a prompt with --tokens or --text")?,
        max_new,
        device,
        save_logits: save,
        teacher_force,
        fp8_dense,
        graphs,
        prefill_chunk,
    })
}

fn parse_ids(s: &str) -> Result<Vec<u32>, String> {
    let ids = s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().map_err(|_| format!("--tokens: `{t}` is not a token id")))
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Err("--tokens: no token ids".into());
    }
    Ok(ids)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(m) if m.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(m) => {
            eprintln!("llama4-run: {m}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llama4-run: error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> Result<(), Error> {
    if args.fp8_dense && args.device != "cuda" {
        return Err(Error::Input("--fp8-dense applies to --device cuda only".into()));
    }
    match args.device.as_str() {
        "cpu" => run_on(args, Cpu),
        #[cfg(feature = "cuda")]
        "cuda" => {
            use llama4_model::gpu::{Gpu, GpuOptions};
            let gpu = Gpu::new(GpuOptions { device: 0, fp8_dense: args.fp8_dense })?;
            println!("device: {}", gpu.describe());
            run_on(args, gpu)
        }
        #[cfg(not(feature = "cuda"))]
        "cuda" => {
            Err(Error::Input("--device cuda: this build has no GPU backend (built without the `cuda` feature)".into()))
        }
        d => Err(Error::Input(format!("--device {d}: expected cpu or cuda"))),
    }
}

fn run_on<B: Backend>(args: &Args, backend: B) -> Result<(), Error> {
    let t = Instant::now();
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("loading {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("static template"),
    );
    let model = Model::load_with_progress(&args.dir, backend, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let c = &model.config;
    println!(
        "loaded {} on {}: {} layers ({} MoE), hidden {}, vocab {}, {} experts, in {}",
        args.dir.display(),
        model.backend.name(),
        c.num_hidden_layers,
        c.ffn.iter().filter(|f| **f == llama4_model::config::Ffn::Moe).count(),
        c.hidden_size,
        c.vocab_size,
        c.num_local_experts,
        ms(t.elapsed())
    );
    let tok = tokenizer::Tok::open(&args.dir, matches!(args.prompt, Prompt::Text(_)))?;
    let prompt = match &args.prompt {
        Prompt::Ids(ids) => ids.clone(),
        Prompt::Text(text) => tok.as_ref().map(|t| t.encode(text)).unwrap_or_else(|| Ok(Vec::new()))?,
    };
    println!("prompt: {} tokens {:?}", prompt.len(), prompt);
    let opt = GenOptions {
        keep_logits: args.save_logits.is_some(),
        teacher_force: args.teacher_force,
        max_prefill: args.prefill_chunk,
        graphs: args.graphs,
    };
    let gen = model.generate_with(&prompt, args.max_new, opt, |i, id, took| {
        let what = if i == 0 { format!("prefill of {} tokens", prompt.len()) } else { "decode".into() };
        println!("token {:>4}: {id:>7}   {} ({what})", i + 1, ms(took));
    })?;
    println!("generated: {:?}", gen.tokens);
    if let Some(t) = &tok {
        println!("text: {:?}", t.decode(&gen.tokens)?);
    }
    let per_tok = gen.prefill.as_secs_f64() * 1e3 / prompt.len() as f64;
    println!("prefill: {} tokens in {} ({per_tok:.3} ms/token)", prompt.len(), ms(gen.prefill));
    if !gen.steps.is_empty() {
        let total: Duration = gen.steps.iter().sum();
        let mean = total.as_secs_f64() * 1e3 / gen.steps.len() as f64;
        println!("decode: {} steps, {mean:.3} ms/token", gen.steps.len());
    }
    if let (Some(path), Some(logits)) = (&args.save_logits, &gen.logits) {
        logits_file::save(path, logits)?;
        println!("saved logits [{}, {}] to {}", logits.nrows(), logits.ncols(), path.display());
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// tokenizer.json support, present only with the `tokenizer` feature.
mod tokenizer {
    use super::*;

    #[cfg(feature = "tokenizer")]
    pub struct Tok(tokenizers::Tokenizer);

    #[cfg(feature = "tokenizer")]
    impl Tok {
        /// The checkpoint's tokenizer.json if there is one; `needed` makes its absence an error.
        pub fn open(dir: &Path, needed: bool) -> Result<Option<Tok>, Error> {
            let path = dir.join("tokenizer.json");
            if !path.is_file() {
                return match needed {
                    true => Err(Error::Input(format!("--text needs {}, which does not exist", path.display()))),
                    false => Ok(None),
                };
            }
            let t = tokenizers::Tokenizer::from_file(&path)
                .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
            Ok(Some(Tok(t)))
        }

        pub fn encode(&self, text: &str) -> Result<Vec<u32>, Error> {
            let enc = self.0.encode(text, true).map_err(|e| Error::Input(format!("tokenizing: {e}")))?;
            Ok(enc.get_ids().to_vec())
        }

        pub fn decode(&self, ids: &[u32]) -> Result<String, Error> {
            self.0.decode(ids, false).map_err(|e| Error::Input(format!("detokenizing: {e}")))
        }
    }

    #[cfg(not(feature = "tokenizer"))]
    pub enum Tok {}

    #[cfg(not(feature = "tokenizer"))]
    impl Tok {
        pub fn open(_dir: &Path, needed: bool) -> Result<Option<Tok>, Error> {
            match needed {
                true => Err(Error::Input(
                    "--text needs the `tokenizer` feature: rebuild with `--features tokenizer`, or pass --tokens"
                        .into(),
                )),
                false => Ok(None),
            }
        }

        pub fn encode(&self, _text: &str) -> Result<Vec<u32>, Error> {
            match *self {}
        }

        pub fn decode(&self, _ids: &[u32]) -> Result<String, Error> {
            match *self {}
        }
    }
}
