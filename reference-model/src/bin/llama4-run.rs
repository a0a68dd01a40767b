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
//! stderr and a non-zero exit: 2 for usage (checked before anything is loaded), 1 for everything else. When
//! stdout's reader leaves (`| head`), nothing more is printed and the run ends quietly.

use clap::error::ErrorKind;
use clap::{ArgGroup, Parser, ValueEnum};
use llama4_model::backend::Backend;
use llama4_model::config::MAX_POSITION;
use llama4_model::cpu::Cpu;
use llama4_model::engine::GenOptions;
use llama4_model::error::one_line;
use llama4_model::model::Model;
use llama4_model::{host_memory, logits_file, Error};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "llama4-run", about = "Prefill and greedy decoding of a Llama 4 checkpoint directory")]
#[command(group(ArgGroup::new("prompt").required(true).args(["tokens", "text"])))]
struct Args {
    /// The checkpoint: config.json and model.safetensors (or an index and its shards).
    #[arg(value_name = "CHECKPOINT_DIR")]
    dir: PathBuf,
    /// The prompt as token ids, separated by commas or spaces.
    #[arg(long, value_name = "ID,ID,...", value_parser = parse_ids)]
    tokens: Option<Ids>,
    /// The prompt as text, through the checkpoint's tokenizer.json (needs the `tokenizer` feature).
    #[arg(long, value_name = "TEXT")]
    text: Option<String>,
    /// Tokens to generate.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u64).range(..=MAX_POSITION as u64))]
    max_new: u64,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Write the logits of every position run to FILE (safetensors, tensor "logits" [T, vocab]).
    #[arg(long, value_name = "FILE")]
    save_logits: Option<PathBuf>,
    /// Prefill all but the last K prompt tokens, then feed those K one at a time through decode steps.
    #[arg(long, value_name = "K", default_value_t = 0)]
    teacher_force: usize,
    /// Dense linears in FP8 too (--device cuda).
    #[arg(long)]
    fp8_dense: bool,
    /// Run decode steps directly instead of replaying recorded CUDA graphs.
    #[arg(long)]
    no_graphs: bool,
    /// Longest prefill step in tokens (0: the whole prompt at once).
    #[arg(long, value_name = "N", default_value_t = 0)]
    prefill_chunk: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Device {
    Cpu,
    Cuda,
}

#[derive(Clone, Debug)]
struct Ids(Vec<u32>);

fn parse_ids(s: &str) -> Result<Ids, String> {
    let ids = s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().map_err(|_| format!("`{t}` is not a token id")))
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Err("no token ids".into());
    }
    Ok(Ids(ids))
}

/// A usage error: exit 2.
struct Usage(String);

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = write!(std::io::stdout(), "{}", e.render());
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(2, &clap_line(&e)),
    };
    let mut out = Out::default();
    match check(&args).map_err(|u| (2, u.0)).and_then(|()| run(&args, &mut out).map_err(|e| (1, e.to_string()))) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, m)) => fail(code, &m),
    }
}

/// One line on stderr (a failure to write even that is ignored: there is nowhere left to say it).
fn fail(code: u8, msg: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "llama4-run: error: {}", one_line(msg));
    ExitCode::from(code)
}

/// clap's message without its tip, usage and help paragraphs, on one line.
fn clap_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    let end = ["\n\n  tip:", "\n\nUsage:", "\n\nFor more information"].iter().filter_map(|m| text.find(m)).min();
    let msg = text[..end.unwrap_or(text.len())].trim_end().replace("\n  ", " ");
    format!("{msg} (see --help)")
}

/// What the arguments alone can tell, before anything is loaded.
fn check(args: &Args) -> Result<(), Usage> {
    if let Some(Ids(ids)) = &args.tokens {
        if ids.len() as u64 + args.max_new.max(1) > MAX_POSITION as u64 {
            return Err(Usage(format!(
                "--max-new {}: with the {}-token prompt that exceeds the {MAX_POSITION} positions a sequence can hold",
                args.max_new,
                ids.len()
            )));
        }
    }
    Ok(())
}

fn run(args: &Args, out: &mut Out) -> Result<(), Error> {
    if args.fp8_dense && args.device != Device::Cuda {
        return Err(Error::Input("--fp8-dense applies to --device cuda only".into()));
    }
    if let Some(path) = &args.save_logits {
        logits_file::check_writable(path)?;
    }
    match args.device {
        Device::Cpu => run_on(args, Cpu, out),
        #[cfg(feature = "cuda")]
        Device::Cuda => {
            use llama4_model::gpu::{Gpu, GpuOptions};
            let gpu = Gpu::new(GpuOptions { device: 0, fp8_dense: args.fp8_dense })?;
            out.line(format_args!("device: {}", gpu.describe()));
            run_on(args, gpu, out)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => {
            Err(Error::Input("--device cuda: this build has no GPU backend (built without the `cuda` feature)".into()))
        }
    }
}

/// stdout, written line by line: after a broken pipe (the reader left, as `| head` does) nothing more is
/// written and the run goes on quietly; any other write error ends the run with one line at the next check.
#[derive(Default)]
struct Out {
    closed: bool,
    failed: Option<std::io::Error>,
}

impl Out {
    fn line(&mut self, args: fmt::Arguments) {
        if self.closed {
            return;
        }
        if let Err(e) = writeln!(std::io::stdout().lock(), "{args}") {
            self.closed = true;
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                self.failed = Some(e);
            }
        }
    }

    fn check(&mut self) -> Result<(), Error> {
        match self.failed.take() {
            Some(e) => Err(Error::Write(format!("stdout: {e}"))),
            None => Ok(()),
        }
    }
}

fn run_on<B: Backend>(args: &Args, backend: B, out: &mut Out) -> Result<(), Error> {
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
    out.line(format_args!(
        "loaded {} on {}: {} layers ({} MoE), hidden {}, vocab {}, {} experts, in {}",
        args.dir.display(),
        model.backend.name(),
        c.num_hidden_layers,
        c.ffn.iter().filter(|f| **f == llama4_model::config::Ffn::Moe).count(),
        c.hidden_size,
        c.vocab_size,
        c.num_local_experts,
        ms(t.elapsed())
    ));
    out.check()?;
    let tok = tokenizer::Tok::open(&args.dir, args.text.is_some())?;
    let prompt = match (&args.tokens, &args.text) {
        (Some(Ids(ids)), _) => ids.clone(),
        (None, Some(text)) => tok.as_ref().map(|t| t.encode(text)).unwrap_or_else(|| Ok(Vec::new()))?,
        (None, None) => unreachable!("clap requires --tokens or --text"),
    };
    out.line(format_args!("prompt: {} tokens {:?}", prompt.len(), prompt));
    // Checked by the engine too; as usize it cannot wrap (clap bounds it by MAX_POSITION).
    let max_new = args.max_new as usize;
    if args.save_logits.is_some() {
        // Every position's row is kept, joined, then written out: three copies at the end.
        let rows = (prompt.len() + max_new.max(1) - 1) as u64;
        let bytes = rows.saturating_mul(c.vocab_size as u64 * 4).saturating_mul(3);
        host_memory::ensure(bytes, &format!("--save-logits ({rows} rows of {} logits)", c.vocab_size))?;
    }
    let opt = GenOptions {
        keep_logits: args.save_logits.is_some(),
        teacher_force: args.teacher_force,
        max_prefill: args.prefill_chunk,
        graphs: !args.no_graphs,
    };
    let gen = model.generate_with(&prompt, max_new, opt, |i, id, took| {
        let what = if i == 0 { format!("prefill of {} tokens", prompt.len()) } else { "decode".into() };
        out.line(format_args!("token {:>4}: {id:>7}   {} ({what})", i + 1, ms(took)));
    })?;
    out.check()?;
    out.line(format_args!("generated: {:?}", gen.tokens));
    if let Some(t) = &tok {
        out.line(format_args!("text: {:?}", t.decode(&gen.tokens)?));
    }
    let per_tok = gen.prefill.as_secs_f64() * 1e3 / prompt.len() as f64;
    out.line(format_args!("prefill: {} tokens in {} ({per_tok:.3} ms/token)", prompt.len(), ms(gen.prefill)));
    if !gen.steps.is_empty() {
        let total: Duration = gen.steps.iter().sum();
        let mean = total.as_secs_f64() * 1e3 / gen.steps.len() as f64;
        out.line(format_args!("decode: {} steps, {mean:.3} ms/token", gen.steps.len()));
    }
    if let (Some(path), Some(logits)) = (&args.save_logits, &gen.logits) {
        logits_file::save(path, logits)?;
        out.line(format_args!("saved logits [{}, {}] to {}", logits.nrows(), logits.ncols(), path.display()));
    }
    out.check()
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
            if std::fs::symlink_metadata(&path).is_err() {
                return match needed {
                    true => Err(Error::Input(format!("--text needs {}, which does not exist", path.display()))),
                    false => Ok(None),
                };
            }
            // Llama 4's tokenizer.json is about 27 MB.
            let text = llama4_model::files::read_capped(&path, 256 << 20)?;
            let t: tokenizers::Tokenizer =
                text.parse().map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
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
