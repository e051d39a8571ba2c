//! `xbench run`, `xbench sweep`, `xbench config show` and `xbench list`: experiments from `conf/`.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::config::{compose, sweep, tree, Override, XbenchConfig};
use crate::experiment::{self, Experiment, ResultsDir};

/// Where results go and how the best cell is chosen; shared by `run` and `sweep`.
#[derive(Debug, Clone, Args)]
pub struct RunOptions {
    /// Where the result files go.
    #[arg(long, default_value = "experiments/results")]
    pub output_dir: PathBuf,
    /// Mark the cell with the most QPS whose p99 is within this many ms.
    #[arg(long)]
    pub p99_budget_ms: Option<f64>,
    /// The config folder.
    #[arg(long, default_value = "conf")]
    pub conf: PathBuf,
    /// Run each cell this many times; the table shows mean ± standard deviation of QPS and p99.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Experiment: a file name in conf/experiment/ without .yaml.
    pub name: String,
    /// Hydra-style overrides: key=value, +key=value, ++key=value, ~key, group=option, key=a,b,c.
    pub overrides: Vec<String>,
    #[command(flatten)]
    pub options: RunOptions,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Experiments to run in order, or `all` for every file in conf/experiment/.
    #[arg(required = true)]
    pub names: Vec<String>,
    #[command(flatten)]
    pub options: RunOptions,
}

#[derive(Debug, Args)]
pub struct ConfigShowArgs {
    /// An experiment to compose (optional: the primary config alone), then overrides as for
    /// `xbench run`.
    pub args: Vec<String>,
    #[arg(long, default_value = "conf")]
    pub conf: PathBuf,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, default_value = "conf")]
    pub conf: PathBuf,
}

pub(crate) fn parse_overrides(list: &[String]) -> anyhow::Result<Vec<Override>> {
    Ok(list
        .iter()
        .map(|o| Override::parse(o))
        .collect::<Result<_, _>>()?)
}

/// Splits `[EXPERIMENT] [OVERRIDES...]`: the first word names an experiment unless it is an
/// override (`key=value`, `+key...`, `~key`).
pub(crate) fn split_experiment(args: &[String]) -> (Option<String>, Vec<String>) {
    match args.split_first() {
        Some((first, rest))
            if !first.contains('=') && !first.starts_with('~') && !first.starts_with('+') =>
        {
            (Some(first.clone()), rest.to_vec())
        }
        _ => (None, args.to_vec()),
    }
}

fn experiments(conf: &Path) -> Vec<String> {
    crate::config::compose::options(&conf.join("experiment"))
}

/// Prints the composed config as YAML.
pub fn config_show(args: ConfigShowArgs) -> anyhow::Result<()> {
    let (name, overrides) = split_experiment(&args.args);
    let mut overrides = parse_overrides(&overrides)?;
    if let Some(name) = &name {
        overrides.insert(0, Override::parse(&format!("+experiment={name}"))?);
    }
    let composed = compose(&args.conf, "config", &overrides)?;
    XbenchConfig::from_composed(&composed)?;
    print!(
        "{}",
        serde_yaml_ng::to_string(&tree::redacted(&composed.tree))?
    );
    Ok(())
}

/// Lists the experiments with their descriptions and cell counts.
pub fn list(args: ListArgs) -> anyhow::Result<()> {
    for name in experiments(&args.conf) {
        match sweep::expand(&args.conf, Some(&name), &[]) {
            Ok((_, cells)) => {
                let c = &cells[0].config;
                println!("{name:24} {:3} cells  {}", cells.len(), c.description);
            }
            Err(e) => println!("{name:24} invalid: {e}"),
        }
    }
    Ok(())
}

pub fn sweep_cmd(args: SweepArgs) -> anyhow::Result<()> {
    let names = if args.names == ["all"] {
        experiments(&args.options.conf)
    } else {
        args.names.clone()
    };
    for name in names {
        run(RunArgs {
            name,
            overrides: Vec::new(),
            options: args.options.clone(),
        })?;
    }
    Ok(())
}

/// Runs every cell of an experiment and writes its result files after each.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let opts = &args.options;
    let experiment = Experiment::compose(&opts.conf, &args.name, &args.overrides)?;
    // A progress bar on a terminal; the runner's per-cell log lines otherwise.
    let progress = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(experiment.cells.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] cell {pos}/{len}  {msg}  ETA {eta}",
        )
        .expect("a fixed template parses. This is a bug.")
        .progress_chars("=> "),
    );
    progress.set_prefix(args.name.clone());
    let mut sink = ResultsDir::new(&opts.output_dir);
    let options = experiment::RunOptions {
        repeats: opts.repeats,
        p99_budget_ms: opts.p99_budget_ms,
    };
    let results = experiment.run(&options, &mut sink, &mut |done| {
        progress.set_message(format!(
            "last: {:.1} pairs/s, p50 {:.1} ms",
            done.row.qps, done.row.latency_ms.p50
        ));
        progress.inc(1);
    });
    progress.finish_and_clear();
    let results = results?;
    println!("{}", results.markdown());
    for p in &sink.written {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}
