//! Sweeps: the cells of an experiment, the cartesian product of its axes with the first axis
//! slowest. Axes, in order: `experiment.sweep` entries (as declared), command-line sweeps
//! (`key=a,b,c`, in the order given; a group's options too), `experiment.batch_sizes` (pairs per
//! request), `experiment.concurrency_levels` (closed-loop clients). Every cell is composed and
//! validated before any runs.

use std::path::Path;

use serde_json::Value;

use super::overrides::{Override, OverrideKind, OverrideValue};
use super::{compose, tree, Composed, ConfigError, XbenchConfig};

/// One point of a sweep.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Axis key → this cell's value, in axis order.
    pub axes: Vec<(String, Value)>,
    pub composed: Composed,
    pub config: XbenchConfig,
    pub pairs_per_request: usize,
    pub concurrency: usize,
}

/// An axis: a dotted key (or a group) and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<Value>,
    /// Applied before composition (command-line overrides, groups included) or after it.
    pub on_command_line: bool,
}

/// Composes `primary` with `+experiment=NAME` (when given) and the overrides, and expands the
/// sweep into validated cells.
pub fn expand(
    root: &Path,
    experiment: Option<&str>,
    overrides: &[Override],
) -> Result<(Vec<Axis>, Vec<Cell>), ConfigError> {
    let mut fixed: Vec<Override> = Vec::new();
    if let Some(name) = experiment {
        fixed.push(Override::parse(&format!("+experiment={name}"))?);
    }
    let mut cli_axes = Vec::new();
    for o in overrides {
        match &o.value {
            OverrideValue::Sweep(values) => {
                if o.kind == OverrideKind::Delete {
                    return Err(ConfigError::BadOverride {
                        text: o.text.clone(),
                        why: "a delete cannot sweep".into(),
                    });
                }
                cli_axes.push((o.clone(), values.clone()));
            }
            _ => fixed.push(o.clone()),
        }
    }
    let pick = |o: &Override, v: &Value| Override {
        value: OverrideValue::One(v.clone()),
        ..o.clone()
    };
    // The base: every command-line axis at its first value.
    let mut base_ovs = fixed.clone();
    base_ovs.extend(cli_axes.iter().map(|(o, vs)| pick(o, &vs[0])));
    let base = compose(root, "config", &base_ovs)?;
    let base_config = XbenchConfig::from_composed(&base)?;
    let e = &base_config.experiment;

    // The command line wins: a key it sets or sweeps is no longer swept by the experiment file.
    let cli_keys: Vec<&str> = overrides.iter().map(|o| o.key.as_str()).collect();
    let mut axes: Vec<Axis> = Vec::new();
    for (key, values) in &e.sweep {
        if cli_keys.contains(&key.as_str()) {
            continue;
        }
        let Value::Array(values) = values else {
            return Err(ConfigError::Schema {
                key: format!("experiment.sweep.{key}"),
                why: "must be a list of values".into(),
                file: base.source_of("experiment.sweep").map(str::to_string),
            });
        };
        if values.is_empty() {
            return Err(ConfigError::Schema {
                key: format!("experiment.sweep.{key}"),
                why: "list at least one value".into(),
                file: base.source_of("experiment.sweep").map(str::to_string),
            });
        }
        axes.push(Axis {
            key: key.clone(),
            values: values.clone(),
            on_command_line: false,
        });
    }
    for (o, values) in &cli_axes {
        axes.push(Axis {
            key: o.key.clone(),
            values: values.clone(),
            on_command_line: true,
        });
    }
    axes.push(Axis {
        key: "pairs_per_request".into(),
        values: e.batch_sizes.iter().map(|&b| Value::from(b)).collect(),
        on_command_line: false,
    });
    let open_loop = e.rate.is_some();
    axes.push(Axis {
        key: "concurrency".into(),
        values: if open_loop {
            vec![Value::from(1)]
        } else {
            e.concurrency_levels
                .iter()
                .map(|&c| Value::from(c))
                .collect()
        },
        on_command_line: false,
    });

    let mut cells = Vec::new();
    for combo in product(&axes) {
        let mut ovs = fixed.clone();
        let mut after: Vec<(String, Value)> = Vec::new();
        let (mut pairs, mut concurrency) = (0usize, 1usize);
        for (axis, value) in axes.iter().zip(&combo) {
            match axis.key.as_str() {
                "pairs_per_request" => pairs = value.as_u64().unwrap_or(1) as usize,
                "concurrency" => concurrency = value.as_u64().unwrap_or(1) as usize,
                _ if axis.on_command_line => {
                    let (o, _) = cli_axes
                        .iter()
                        .find(|(o, _)| o.key == axis.key)
                        .expect("every command-line axis came from an override. This is a bug.");
                    ovs.push(pick(o, value));
                }
                _ => after.push((axis.key.clone(), value.clone())),
            }
        }
        let mut composed = compose(root, "config", &ovs)?;
        for (key, value) in &after {
            let o = Override {
                kind: OverrideKind::Change,
                key: key.clone(),
                value: OverrideValue::One(value.clone()),
                text: format!("{key}={value}"),
            };
            tree::apply(&mut composed.tree, &o)?;
        }
        let config = XbenchConfig::from_composed(&composed)?;
        cells.push(Cell {
            axes: axes
                .iter()
                .map(|a| a.key.clone())
                .zip(combo.iter().cloned())
                .collect(),
            composed,
            config,
            pairs_per_request: pairs,
            concurrency,
        });
    }
    Ok((axes, cells))
}

/// The cartesian product of the axes' values, first axis slowest.
fn product(axes: &[Axis]) -> Vec<Vec<Value>> {
    let mut out: Vec<Vec<Value>> = vec![Vec::new()];
    for axis in axes {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                axis.values.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push(v.clone());
                    p
                })
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn conf() -> tempfile::TempDir {
        crate::config::test_conf(&[
            ("config.yaml", "defaults:\n  - model_pool: default\n  - tokenizer_pool: default\n  - _self_\n"),
            ("model_pool/default.yaml", "instances:\n  - name: m\n"),
            ("model_pool/other.yaml", "instances:\n  - name: n\n"),
            ("tokenizer_pool/default.yaml", "workers: 1\nparallelism: false\n"),
            ("experiment/grid.yaml", "# @package _global_\nexperiment:\n  batch_sizes: [8, 32]\n  concurrency_levels: [1, 2]\n  sweep:\n    tokenizer_pool.workers: [1, 2]\n    tokenizer_pool.parallelism: [false, true]\n"),
            ("experiment/typo.yaml", "# @package _global_\nexperiment:\n  sweep:\n    tokenizer_pool.worker: [1, 2]\n"),
        ])
    }

    fn ovs(list: &[&str]) -> Vec<Override> {
        list.iter().map(|t| Override::parse(t).unwrap()).collect()
    }

    fn axis_values(cell: &Cell) -> Vec<String> {
        cell.axes.iter().map(|(_, v)| v.to_string()).collect()
    }

    #[test]
    fn the_sweep_order_is_pinned() {
        let d = conf();
        let (axes, cells) =
            expand(d.path(), Some("grid"), &ovs(&["model_pool=default,other"])).unwrap();
        let keys: Vec<&str> = axes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tokenizer_pool.workers",
                "tokenizer_pool.parallelism",
                "model_pool",
                "pairs_per_request",
                "concurrency"
            ]
        );
        assert_eq!(cells.len(), 2 * 2 * 2 * 2 * 2);
        // First axis slowest, last fastest.
        assert_eq!(
            axis_values(&cells[0]),
            ["1", "false", "\"default\"", "8", "1"]
        );
        assert_eq!(
            axis_values(&cells[1]),
            ["1", "false", "\"default\"", "8", "2"]
        );
        assert_eq!(
            axis_values(&cells[2]),
            ["1", "false", "\"default\"", "32", "1"]
        );
        assert_eq!(
            axis_values(&cells[4]),
            ["1", "false", "\"other\"", "8", "1"]
        );
        assert_eq!(
            axis_values(&cells[8]),
            ["1", "true", "\"default\"", "8", "1"]
        );
        assert_eq!(
            axis_values(&cells[31]),
            ["2", "true", "\"other\"", "32", "2"]
        );
        // Each cell's config carries its values.
        let c = &cells[31];
        assert_eq!(c.config.tokenizer_pool.workers, 2);
        assert!(c.config.tokenizer_pool.parallelism);
        assert_eq!(c.config.model_pool.instances[0].name, "n");
        assert_eq!((c.pairs_per_request, c.concurrency), (32, 2));
        assert_eq!(c.composed.tree["tokenizer_pool"]["workers"], json!(2));
    }

    #[test]
    fn the_command_line_replaces_a_file_axis_on_the_same_key() {
        let d = conf();
        let (axes, cells) = expand(
            d.path(),
            Some("grid"),
            &ovs(&["tokenizer_pool.workers=3,4,5"]),
        )
        .unwrap();
        let keys: Vec<&str> = axes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tokenizer_pool.parallelism",
                "tokenizer_pool.workers",
                "pairs_per_request",
                "concurrency"
            ]
        );
        assert_eq!(cells.len(), 2 * 3 * 2 * 2);
        assert_eq!(cells[4].config.tokenizer_pool.workers, 4);
        let (_, cells) =
            expand(d.path(), Some("grid"), &ovs(&["tokenizer_pool.workers=2"])).unwrap();
        assert_eq!(cells.len(), 2 * 2 * 2);
        assert!(cells.iter().all(|c| c.config.tokenizer_pool.workers == 2));
    }

    #[test]
    fn every_cell_is_validated_before_any_runs() {
        let d = conf();
        let err = expand(d.path(), Some("typo"), &[]).unwrap_err().to_string();
        assert!(
            err.contains("did you mean 'tokenizer_pool.workers'?"),
            "{err}"
        );
        let err = expand(
            d.path(),
            Some("grid"),
            &ovs(&["+tokenizer_pool.queue_capacity=1,0"]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("config key 'tokenizer_pool.queue_capacity' (set in the command line): must be at least 1"),
            "{err}"
        );
        let err = expand(d.path(), Some("grid"), &ovs(&["tokenizer_pool.wrkers=1"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("did you mean 'tokenizer_pool.workers'?"),
            "{err}"
        );
    }
}
