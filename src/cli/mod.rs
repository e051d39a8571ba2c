//! The command line: one subcommand per file. Results go to stdout, logs (tracing) to stderr.

mod accuracy;
mod bench;
mod run;
mod score;
mod serve;

use clap::{Parser, Subcommand};

pub use accuracy::AccuracyArgs;
pub use bench::BenchArgs;
pub use score::ScoreArgs;

#[derive(Debug, Parser)]
#[command(
    name = "xbench",
    version,
    about = "Serve cross-encoder rerankers and measure how to serve them best"
)]
pub struct Cli {
    /// More log output on stderr (-v: debug, -vv: trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Score (query, passage) pairs from a JSON-lines file; one JSON line of scores per input line.
    Score(ScoreArgs),
    /// Score pairs at fp32 and at other precisions; report what each does to scores and rankings.
    Accuracy(AccuracyArgs),
    /// Run one cell of the in-process pipeline (tokenize, infer or full) under load; print its row.
    Bench(BenchArgs),
    /// Run one experiment of conf/experiment/ (every cell of its sweep); write its result files.
    Run(run::RunArgs),
    /// Run several experiments in order (`all`: every one in conf/experiment/).
    Sweep(run::SweepArgs),
    /// Show the composed config.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List the experiments with their descriptions and cell counts.
    List(run::ListArgs),
    /// Serve the rerank HTTP API (TEI-compatible /rerank, Cohere-compatible /v1/rerank).
    Serve(serve::ServeArgs),
    /// Show the CPU, the fused kernels' SIMD level and the kernel each precision's products run.
    Kernels(KernelsArgs),
}

#[derive(Debug, clap::Args)]
pub struct KernelsArgs {
    /// Print one JSON object instead of lines of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the composed config of an experiment (with overrides) as YAML.
    Show(run::ConfigShowArgs),
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Score(args) => score::run(args),
        Command::Accuracy(args) => accuracy::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Run(args) => run::run(args),
        Command::Sweep(args) => run::sweep_cmd(args),
        Command::Config(ConfigCommand::Show(args)) => run::config_show(args),
        Command::List(args) => run::list(args),
        Command::Serve(args) => serve::run(args),
        Command::Kernels(args) => kernels(args),
    }
}

/// `xbench kernels`: what the fused backend runs on this CPU (`XBENCH_SIMD` may lower the level).
fn kernels(args: KernelsArgs) -> anyhow::Result<()> {
    let cpu = crate::report::provenance::cpu_name();
    let level = crate::kernels::simd().name();
    let products = crate::kernels::kernels();
    if args.json {
        let products: serde_json::Map<String, serde_json::Value> = products
            .iter()
            .map(|(p, k)| (p.to_string(), serde_json::Value::from(*k)))
            .collect();
        let out = serde_json::json!({"cpu": cpu, "simd": level, "products": products});
        println!("{out}");
    } else {
        println!("cpu: {cpu}");
        println!("simd level: {level} (XBENCH_SIMD=avx2|portable lowers it)");
        for (precision, kernel) in products {
            println!("{precision}: {kernel}");
        }
    }
    Ok(())
}

/// Logs to stderr at `info` for xbench and `warn` for its dependencies, unless RUST_LOG says otherwise.
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("warn,xbench={level}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
