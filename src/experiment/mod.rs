//! The experiment runner: what `xbench run`, `xbench sweep` and `xbench bench` run. An
//! [`Experiment`] is a composed, validated sweep ([`crate::config::sweep`]); each of its cells
//! becomes a [`CellPlan`] (where requests go, the load, the row's labels) and runs with
//! [`run_cell`]. After every cell the results so far go to a [`Sink`] (the result files, for
//! `xbench run`), so an interrupted sweep keeps what it measured. The accuracy pass
//! (`experiment.accuracy_pairs`) runs once every cell has been measured: it loads models, which
//! would disturb the measurements.

mod accuracy;
mod cell;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use cell::{run_cell, CellPlan, CellRun, TargetPlan};

use crate::config::sweep::{self, Axis, Cell};
use crate::config::{tree, ConfigError, Override, XbenchConfig};
use crate::engine::{EngineConfig, EngineError, StartError};
use crate::loadgen::{GeneratedLengths, HttpTargetError, RunError, Workload, WorkloadError};
use crate::report::provenance::{provenance, ProvenanceError};
use crate::report::results::{CellResult, Results};
use crate::report::BenchRow;
use crate::score::ScoreError;
use crate::server::ServerError;

/// Why an experiment (or one of its cells) could not run.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("workload.input (or set workload.generate=true)")]
    Workload(#[source] WorkloadError),
    #[error("cannot start the engine")]
    Start(#[from] StartError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the cell's server")]
    Server(#[from] ServerError),
    #[error(transparent)]
    Http(#[from] HttpTargetError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("cannot record the provenance")]
    Provenance(#[from] ProvenanceError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot encode the latency histogram: {0}")]
    Histogram(String),
    #[error("a cell ran no repeat")]
    NoRepeats,
    #[error("experiment.accuracy_pairs: cannot measure cell {cell}'s accuracy")]
    Accuracy {
        cell: usize,
        #[source]
        source: ScoreError,
    },
    #[error("cannot write results into {}", .dir.display())]
    Write {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where an experiment's results go: given the results so far after each cell, and once more,
/// whole, at the end.
pub trait Sink {
    fn write(&mut self, results: &Results) -> Result<(), ExperimentError>;
}

/// Writes the result files (`<experiment>_results.{md,json,csv}`) into a directory, rewriting
/// them each time.
pub struct ResultsDir {
    pub dir: PathBuf,
    /// The files of the last write.
    pub written: Vec<PathBuf>,
}

impl ResultsDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            written: Vec::new(),
        }
    }
}

impl Sink for ResultsDir {
    fn write(&mut self, results: &Results) -> Result<(), ExperimentError> {
        self.written = results
            .write(&self.dir)
            .map_err(|source| ExperimentError::Write {
                dir: self.dir.clone(),
                source,
            })?;
        Ok(())
    }
}

/// How an experiment runs, beyond its config.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Each cell runs this many times; the row merges them, the results keep each one's figures.
    pub repeats: u32,
    /// Marks the cell with the most QPS whose p99 is within this many ms.
    pub p99_budget_ms: Option<f64>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            repeats: 1,
            p99_budget_ms: None,
        }
    }
}

/// A cell just measured, for progress reports.
pub struct CellDone<'a> {
    /// 0-based.
    pub index: usize,
    pub total: usize,
    pub cell: &'a Cell,
    pub row: &'a BenchRow,
}

/// An experiment composed from a config folder, its cells expanded and validated.
pub struct Experiment {
    /// The experiment's name (its file in `conf/experiment/`).
    pub name: String,
    /// The overrides as given (recorded, redacted, in the provenance).
    pub overrides: Vec<String>,
    pub axes: Vec<Axis>,
    pub cells: Vec<Cell>,
}

impl Experiment {
    /// Composes `name` from the config folder `conf` with Hydra-style `overrides` and expands its
    /// sweep; every cell is validated before any runs.
    pub fn compose(conf: &Path, name: &str, overrides: &[String]) -> Result<Self, ExperimentError> {
        let parsed = overrides
            .iter()
            .map(|o| Override::parse(o))
            .collect::<Result<Vec<_>, _>>()?;
        let (axes, cells) = sweep::expand(conf, Some(name), &parsed)?;
        Ok(Self {
            name: name.to_string(),
            overrides: overrides.to_vec(),
            axes,
            cells,
        })
    }

    /// Runs every cell in order, giving `sink` the results after each, then the accuracy pass;
    /// returns the results (also given to `sink` last). `on_cell` hears of each cell measured.
    pub fn run(
        &self,
        options: &RunOptions,
        sink: &mut dyn Sink,
        on_cell: &mut dyn FnMut(CellDone<'_>),
    ) -> Result<Results, ExperimentError> {
        let shown_axes: Vec<String> = self
            .axes
            .iter()
            .filter(|a| a.values.len() > 1 || a.key == "pairs_per_request")
            .map(|a| a.key.clone())
            .collect();
        let mut results = Results {
            provenance: provenance(&self.name, &self.cells, &self.overrides)?,
            axes: shown_axes,
            p99_budget_ms: options.p99_budget_ms,
            cells: Vec::new(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ExperimentError::Runtime)?;
        let mut workloads: HashMap<WorkloadKey, Workload> = HashMap::new();
        let total = self.cells.len();
        for (index, cell) in self.cells.iter().enumerate() {
            let key = WorkloadKey::of(&cell.config, cell.pairs_per_request);
            if !workloads.contains_key(&key) {
                workloads.insert(key.clone(), workload(&cell.config, cell.pairs_per_request)?);
            }
            let plan = CellPlan::new(&cell.config, cell.pairs_per_request, cell.concurrency)?;
            let run = run_cell(&plan, &workloads[&key], options.repeats, &runtime)?;
            tracing::info!(
                cell = format!("{}/{total}", index + 1),
                axes = %cell.axes.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
                qps = format!("{:.1}", run.row.qps),
                p50_ms = format!("{:.1}", run.row.latency_ms.p50),
                requests = run.row.requests,
                "cell done"
            );
            on_cell(CellDone {
                index,
                total,
                cell,
                row: &run.row,
            });
            results.cells.push(CellResult {
                axes: cell.axes.clone(),
                row: run.row,
                repeats: run.repeats,
                latency_histogram: run.latency_histogram,
                config: tree::redacted(&cell.composed.tree),
                accuracy: None,
            });
            sink.write(&results)?;
        }
        let mut references = accuracy::References::default();
        for (index, cell) in self.cells.iter().enumerate() {
            let c = &cell.config;
            if c.experiment.accuracy_pairs == 0 {
                continue;
            }
            let key = WorkloadKey::of(c, cell.pairs_per_request);
            let accuracy = accuracy::cell_accuracy(
                &EngineConfig::from_config(c),
                (&format!("{key:?}"), &workloads[&key]),
                c.experiment.accuracy_pairs,
                &mut references,
            )
            .map_err(|source| ExperimentError::Accuracy {
                cell: index + 1,
                source,
            })?;
            if let Some(a) = &accuracy {
                tracing::info!(
                    cell = index + 1,
                    max_abs_diff = a.max_abs_diff,
                    spearman = a.spearman,
                    "accuracy against fp32"
                );
            }
            results.cells[index].accuracy = accuracy;
        }
        sink.write(&results)?;
        Ok(results)
    }
}

/// What makes two cells' workloads the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WorkloadKey {
    input: String,
    generate: bool,
    seed: u64,
    pairs_per_request: usize,
}

impl WorkloadKey {
    fn of(c: &XbenchConfig, pairs_per_request: usize) -> Self {
        let w = &c.workload;
        Self {
            input: w.input.clone(),
            generate: w.generate,
            seed: w.seed,
            pairs_per_request,
        }
    }
}

/// The workload a config names, in requests of `pairs_per_request` pairs: read from
/// `workload.input`, or generated (seeded) with `workload.generate`.
pub fn workload(c: &XbenchConfig, pairs_per_request: usize) -> Result<Workload, ExperimentError> {
    let w = &c.workload;
    if w.generate {
        return Ok(Workload::generate(
            w.seed,
            GeneratedLengths::default(),
            pairs_per_request,
            64,
        ));
    }
    Workload::from_jsonl(Path::new(&w.input), pairs_per_request).map_err(ExperimentError::Workload)
}
