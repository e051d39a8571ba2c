//! What produced a results file ([`Provenance`]): the experiment and its overrides, the git commit
//! (and whether the tree had changes), the CPU and cores, xbench's version, the sha256 of every
//! model's weights, the seed and the date.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use sha2::Digest;

use super::results::{utc_now, Provenance};
use crate::config::{sweep::Cell, tree};
use crate::model::{ModelError, ModelFiles};

#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot read {} to hash it", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The provenance of a run of `experiment` (its cells as expanded, the overrides as given).
pub fn provenance(
    experiment: &str,
    cells: &[Cell],
    overrides: &[String],
) -> Result<Provenance, ProvenanceError> {
    let mut models: Vec<(String, String)> = Vec::new();
    for cell in cells {
        for m in &cell.config.model_pool.instances {
            if !models.iter().any(|(n, _)| *n == m.name) {
                models.push((m.name.clone(), weights_sha256(&m.name)?));
            }
        }
    }
    let first = cells.first().map(|c| &c.config);
    Ok(Provenance {
        experiment: experiment.to_string(),
        name: first.map(|c| c.name.clone()).unwrap_or_default(),
        description: first.map(|c| c.description.clone()).unwrap_or_default(),
        overrides: overrides
            .iter()
            .map(|o| tree::redacted_override(o))
            .collect(),
        git_sha: git(&["rev-parse", "HEAD"]),
        // Result files that runs rewrite do not count as changes to what produced them.
        git_dirty: git(&[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)experiments/results",
        ])
        .map(|s| !s.is_empty()),
        cpu: cpu_name(),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        simd: xbench_kernels::simd().name().to_string(),
        kernels: xbench_kernels::kernels()
            .into_iter()
            .map(|(p, k)| (p.to_string(), k.to_string()))
            .collect(),
        xbench_version: env!("CARGO_PKG_VERSION").to_string(),
        models,
        seed: first.map_or(0, |c| c.workload.seed),
        date: utc_now(),
    })
}

/// sha256 of a model's weight files, in order.
fn weights_sha256(model: &str) -> Result<String, ProvenanceError> {
    let files = ModelFiles::resolve(model)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for path in &files.weights {
        let read = |source| ProvenanceError::Read {
            path: path.clone(),
            source,
        };
        let mut f = File::open(path).map_err(read)?;
        loop {
            let n = f.read(&mut buf).map_err(read)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// What `git args` prints, trimmed; `None` outside a repository or without git.
fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The CPU's model name (`/proc/cpuinfo`), else the architecture.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
