//! The accuracy pass of an experiment (`experiment.accuracy_pairs`): what each cell's precision
//! does to scores against fp32, measured after every cell has run.

use std::collections::HashMap;

use crate::accuracy::{agreement, Agreement};
use crate::engine::{EngineConfig, ModelSpec};
use crate::loadgen::Workload;
use crate::model::Precision;
use crate::score::{Pair, ScoreError, Scorer};

/// fp32 scores already computed, by (model, truncation, device, backend, workload, pairs).
#[derive(Default)]
pub struct References(HashMap<String, Vec<f32>>);

/// What the cell's first model at its precision does to scores against fp32, over the first `n`
/// pairs of the cell's workload (each request is one ranking). `references` keeps the fp32 scores
/// for the cells that share them.
pub fn cell_accuracy(
    engine: &EngineConfig,
    (workload_id, workload): (&str, &Workload),
    n: usize,
    references: &mut References,
) -> Result<Option<Agreement>, ScoreError> {
    let Some(spec) = engine.models.first() else {
        return Ok(None);
    };
    let mut pairs = Vec::new();
    let mut rankings = Vec::new();
    'requests: for (r, request) in workload.requests.iter().enumerate() {
        for passage in &request.passages {
            if pairs.len() == n {
                break 'requests;
            }
            pairs.push(Pair::new(request.query.clone(), passage.clone()));
            rankings.push(r.to_string());
        }
    }
    let score = |precision: Precision| -> Result<Vec<f32>, ScoreError> {
        let scorer = Scorer::load(&ModelSpec {
            quantization: precision,
            quantization_cache: false,
            ..spec.clone()
        })?;
        scorer.score(&pairs, 32)
    };
    let id = format!(
        "{} {:?} {} {} {workload_id} {n}",
        spec.name,
        spec.max_length,
        spec.device,
        spec.backend.name()
    );
    if !references.0.contains_key(&id) {
        references.0.insert(id.clone(), score(Precision::Fp32)?);
    }
    let reference = &references.0[&id];
    // fp32 against itself is the same computation: its scores are the reference's.
    let scores = match spec.quantization {
        Precision::Fp32 => reference.clone(),
        other => score(other)?,
    };
    let rankings: Vec<&str> = rankings.iter().map(String::as_str).collect();
    Ok(Some(agreement(reference, &scores, &rankings)))
}
