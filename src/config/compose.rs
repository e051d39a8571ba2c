//! Composition of a config folder as Hydra 1.3 does it, for the parts xbench uses: a primary
//! config with a defaults list of `group: option` entries (`optional`, `null`, `_self_` and its
//! position, absent `_self_` = last), `override /group: option` entries (which must come last in
//! their list), `# @package _global_` / `# @package a.b` headers (default package: the group path),
//! and command-line group selection (`group=option`, `+group=option`, `~group`). Choosing a group
//! twice without `override` is an error, as in Hydra.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::overrides::{Override, OverrideKind, OverrideValue};
use super::tree;
use super::ConfigError;

/// The composed tree, the group choices that made it, and the overrides applied.
#[derive(Debug, Clone)]
pub struct Composed {
    pub tree: Value,
    /// Group → chosen option (`None`: deselected).
    pub choices: BTreeMap<String, Option<String>>,
    /// Command-line overrides as written.
    pub overrides: Vec<String>,
    /// Dotted key → where its value was last set (a file, or "the command line").
    pub sources: BTreeMap<String, String>,
}

impl Composed {
    /// Where a key (or, failing that, its nearest parent) was set.
    pub fn source_of(&self, key: &str) -> Option<&str> {
        let mut k = key;
        loop {
            if let Some(s) = self.sources.get(k) {
                return Some(s);
            }
            k = k.rsplit_once('.')?.0;
        }
    }
}

/// One entry of a defaults list.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    SelfEntry,
    Group {
        /// Absolute group path under the config root (`model_pool`, `a/b`).
        group: String,
        option: Option<String>,
        is_override: bool,
        optional: bool,
    },
}

/// A parsed config file.
#[derive(Debug, Clone)]
struct Node {
    file: PathBuf,
    /// Dotted package its body is merged at ("" = the root).
    package: String,
    body: Value,
    defaults: Vec<Entry>,
}

/// Composes `primary` (a file name without `.yaml` under `root`) with command-line overrides.
pub fn compose(
    root: &Path,
    primary: &str,
    overrides: &[Override],
) -> Result<Composed, ConfigError> {
    let primary_node = read_node(root, &root.join(format!("{primary}.yaml")), "")?;
    let is_group = |key: &str| root.join(key).is_dir();
    let (group_ovs, key_ovs): (Vec<&Override>, Vec<&Override>) =
        overrides.iter().partition(|o| is_group(&o.key));

    // The primary's own entries, plus groups the command line adds (+group=option).
    let mut top = primary_node.defaults.clone();
    let mut cli_choices: Vec<(String, Option<String>)> = Vec::new();
    for o in &group_ovs {
        let option = match &o.value {
            OverrideValue::One(Value::Null) | OverrideValue::Absent => None,
            OverrideValue::One(Value::String(s)) => Some(s.clone()),
            OverrideValue::One(v) => Some(v.to_string()),
            OverrideValue::Sweep(_) => {
                return Err(ConfigError::BadOverride {
                    text: o.text.clone(),
                    why: "a sweep is expanded into cells before composition".into(),
                })
            }
        };
        match o.kind {
            OverrideKind::Add => {
                if top
                    .iter()
                    .any(|e| matches!(e, Entry::Group { group, .. } if *group == o.key))
                {
                    return Err(ConfigError::Compose {
                        file: primary_node.file.clone(),
                        why: format!(
                            "group '{}' is already in the defaults list; use {}={} to change it",
                            o.key,
                            o.key,
                            option.as_deref().unwrap_or("null")
                        ),
                    });
                }
                top.push(Entry::Group {
                    group: o.key.clone(),
                    option,
                    is_override: false,
                    optional: false,
                });
            }
            OverrideKind::Delete => cli_choices.push((o.key.clone(), None)),
            OverrideKind::Change | OverrideKind::ForceAdd => {
                cli_choices.push((o.key.clone(), option))
            }
        }
    }

    // Settle the choices: entries choose, `override` entries and the command line re-choose; a
    // re-chosen config may bring other defaults, so repeat until nothing changes.
    let mut choices: BTreeMap<String, Option<String>> = BTreeMap::new();
    for _ in 0..8 {
        let mut next: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut file_overrides: Vec<(String, Option<String>, PathBuf)> = Vec::new();
        collect(
            root,
            &primary_node.file,
            &top,
            &choices,
            &mut next,
            &mut file_overrides,
        )?;
        for (group, option, file) in file_overrides {
            if !next.contains_key(&group) {
                return Err(ConfigError::Compose {
                    file,
                    why: format!("could not override '{group}': no match in the defaults list"),
                });
            }
            next.insert(group, option);
        }
        for (group, option) in &cli_choices {
            if !next.contains_key(group) {
                return Err(ConfigError::Compose {
                    file: primary_node.file.clone(),
                    why: format!(
                        "could not override '{group}': no match in the defaults list; to append it, use +{group}={}",
                        option.as_deref().unwrap_or("null")
                    ),
                });
            }
            next.insert(group.clone(), option.clone());
        }
        if next == choices {
            break;
        }
        choices = next;
    }

    let mut out = Value::Object(Map::new());
    let mut sources = BTreeMap::new();
    merge_node(root, &primary_node, &top, &choices, &mut out, &mut sources)?;
    for o in key_ovs {
        tree::apply(&mut out, o)?;
        sources.insert(o.key.clone(), "the command line".to_string());
    }
    let tree = tree::interpolate(&out)?;
    Ok(Composed {
        tree,
        choices,
        overrides: overrides.iter().map(|o| o.text.clone()).collect(),
        sources,
    })
}

/// Records the choices of `entries` (and, recursively, of the configs they choose) into `next`.
fn collect(
    root: &Path,
    file: &Path,
    entries: &[Entry],
    settled: &BTreeMap<String, Option<String>>,
    next: &mut BTreeMap<String, Option<String>>,
    overrides: &mut Vec<(String, Option<String>, PathBuf)>,
) -> Result<(), ConfigError> {
    for e in entries {
        let Entry::Group {
            group,
            option,
            is_override,
            optional,
        } = e
        else {
            continue;
        };
        if *is_override {
            overrides.push((group.clone(), option.clone(), file.to_path_buf()));
            continue;
        }
        if next.contains_key(group) {
            return Err(ConfigError::Compose {
                file: file.to_path_buf(),
                why: format!(
                    "multiple values for '{group}'; to change its option use 'override /{group}: {}'",
                    option.as_deref().unwrap_or("null")
                ),
            });
        }
        next.insert(group.clone(), option.clone());
        let chosen = settled
            .get(group)
            .cloned()
            .unwrap_or_else(|| option.clone());
        if let Some(opt) = chosen {
            if let Some(node) = load_option(root, group, &opt, *optional)? {
                collect(root, &node.file, &node.defaults, settled, next, overrides)?;
            }
        }
    }
    Ok(())
}

/// Merges `node` and the configs its `entries` choose into `out`, in defaults-list order.
fn merge_node(
    root: &Path,
    node: &Node,
    entries: &[Entry],
    choices: &BTreeMap<String, Option<String>>,
    out: &mut Value,
    sources: &mut BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let has_self = entries.contains(&Entry::SelfEntry);
    let self_entry = [Entry::SelfEntry];
    let tail: &[Entry] = if has_self { &[] } else { &self_entry };
    for e in entries.iter().chain(tail) {
        match e {
            Entry::SelfEntry => {
                let file = node.file.display().to_string();
                for key in tree::keys(&node.body) {
                    let full = if node.package.is_empty() {
                        key
                    } else {
                        format!("{}.{key}", node.package)
                    };
                    sources.insert(full, file.clone());
                }
                merge_at(out, &node.package, node.body.clone())?
            }
            Entry::Group {
                is_override: true, ..
            } => {}
            Entry::Group {
                group, optional, ..
            } => {
                let Some(Some(option)) = choices.get(group) else {
                    continue;
                };
                if let Some(child) = load_option(root, group, option, *optional)? {
                    merge_node(root, &child, &child.defaults, choices, out, sources)?;
                }
            }
        }
    }
    Ok(())
}

fn merge_at(out: &mut Value, package: &str, body: Value) -> Result<(), ConfigError> {
    if package.is_empty() {
        tree::merge(out, body);
        return Ok(());
    }
    let mut existing = tree::get(out, package).cloned().unwrap_or(Value::Null);
    if existing.is_null() {
        existing = Value::Object(Map::new());
    }
    tree::merge(&mut existing, body);
    tree::set(out, package, existing)
}

/// Loads `root/group/option.yaml`; a missing file is an error naming the options, unless optional.
fn load_option(
    root: &Path,
    group: &str,
    option: &str,
    optional: bool,
) -> Result<Option<Node>, ConfigError> {
    let dir = root.join(group);
    let file = dir.join(format!("{option}.yaml"));
    if !file.is_file() {
        if optional {
            return Ok(None);
        }
        return Err(ConfigError::UnknownOption {
            group: group.to_string(),
            option: option.to_string(),
            available: options(&dir),
        });
    }
    read_node(root, &file, group).map(Some)
}

/// The options of a group: its `.yaml` files, sorted.
pub fn options(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".yaml").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

fn read_node(root: &Path, file: &Path, group: &str) -> Result<Node, ConfigError> {
    let fail = |why: String| ConfigError::Compose {
        file: file.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(file).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let package = text
        .lines()
        .take_while(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
        .find_map(|l| {
            l.trim_start_matches('#')
                .trim()
                .strip_prefix("@package")
                .map(|p| p.trim().to_string())
        });
    let package = match package.as_deref() {
        Some("_global_") => String::new(),
        Some("_group_") | None => group.replace('/', "."),
        Some(p) => p.to_string(),
    };
    let mut body: Value = if text.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        serde_yaml_ng::from_str(&text).map_err(|e| fail(format!("not valid YAML: {e}")))?
    };
    if body.is_null() {
        body = Value::Object(Map::new());
    }
    let Value::Object(map) = &mut body else {
        return Err(fail("a config file must be a YAML map".into()));
    };
    let defaults = match map.shift_remove("defaults") {
        None => Vec::new(),
        Some(Value::Array(items)) => parse_defaults(root, file, group, &items)?,
        Some(_) => return Err(fail("'defaults' must be a list".into())),
    };
    Ok(Node {
        file: file.to_path_buf(),
        package,
        body,
        defaults,
    })
}

fn parse_defaults(
    root: &Path,
    file: &Path,
    group: &str,
    items: &[Value],
) -> Result<Vec<Entry>, ConfigError> {
    let fail = |why: String| ConfigError::Compose {
        file: file.to_path_buf(),
        why,
    };
    let mut entries = Vec::new();
    let mut seen_override = false;
    for item in items {
        let entry = match item {
            Value::String(s) if s == "_self_" => Entry::SelfEntry,
            Value::Object(m) if m.len() == 1 => {
                let (key, value) = m.iter().next().expect("a map of one entry");
                let mut words: Vec<&str> = key.split_whitespace().collect();
                let target = words.pop().unwrap_or_default();
                let is_override = words.contains(&"override");
                let optional = words.contains(&"optional");
                if let Some(w) = words.iter().find(|w| !matches!(**w, "override" | "optional")) {
                    return Err(fail(format!("unknown keyword '{w}' in defaults entry '{key}'")));
                }
                let group = match target.strip_prefix('/') {
                    Some(abs) => abs.to_string(),
                    None if group.is_empty() => target.to_string(),
                    None => format!("{group}/{target}"),
                };
                if !root.join(&group).is_dir() {
                    return Err(fail(format!(
                        "defaults entry '{key}': no config group '{group}' under {}",
                        root.display()
                    )));
                }
                let option = match value {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    other => {
                        return Err(fail(format!(
                            "defaults entry '{key}': the option must be a name or null, not {other}"
                        )))
                    }
                };
                Entry::Group { group, option, is_override, optional }
            }
            other => {
                return Err(fail(format!(
                    "unsupported defaults entry {other}; write 'group: option', 'override /group: option' or _self_"
                )))
            }
        };
        match &entry {
            Entry::Group { is_override: true, .. } => seen_override = true,
            Entry::Group { group, .. } if seen_override => {
                return Err(fail(format!(
                    "'{group}' comes after an override entry; override entries must be at the end of the defaults list"
                )))
            }
            _ => {}
        }
        entries.push(entry);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A config folder shaped like xbench's `conf/`.
    fn conf() -> tempfile::TempDir {
        crate::config::test_conf(&[
            ("config.yaml", "defaults:\n  - model_pool: default\n  - batching: default\n  - _self_\nname: base\nbatching:\n  timeout_ms: 5.0\nport: ${oc.env:XBENCH_SURELY_UNSET_PORT,8080}\n"),
            ("model_pool/default.yaml", "instances:\n  - name: models/demo-minilm-l6\n    quantization: fp32\n"),
            ("model_pool/multi.yaml", "instances:\n  - name: models/demo-minilm-l6\n  - name: models/demo-minilm-l3\n"),
            ("batching/default.yaml", "enabled: true\nmax_batch_size: 32\ntimeout_ms: 50.0\n"),
            ("batching/off.yaml", "enabled: false\nmax_batch_size: 32\n"),
            ("experiment/multi.yaml", "# @package _global_\ndefaults:\n  - override /model_pool: multi\nname: Multi\nbatching:\n  max_batch_size: 64\nlabel: ${name}-${batching.max_batch_size}\n"),
            ("experiment/bad_order.yaml", "# @package _global_\ndefaults:\n  - override /model_pool: multi\n  - /batching: off\n"),
            ("experiment/twice.yaml", "# @package _global_\ndefaults:\n  - /model_pool: multi\n"),
            ("experiment/typo.yaml", "# @package _global_\ndefaults:\n  - override /model_pool: mutli\n"),
        ])
    }

    fn ovs(list: &[&str]) -> Vec<Override> {
        list.iter().map(|t| Override::parse(t).unwrap()).collect()
    }

    #[test]
    fn defaults_packages_and_self_position() {
        let d = conf();
        let c = compose(d.path(), "config", &[]).unwrap();
        // _self_ last: the primary's batching.timeout_ms wins over the group's.
        assert_eq!(
            c.tree["batching"],
            json!({"enabled": true, "max_batch_size": 32, "timeout_ms": 5.0})
        );
        assert_eq!(
            c.tree["model_pool"]["instances"][0]["quantization"],
            json!("fp32")
        );
        assert_eq!(c.tree["port"], json!("8080"));
        assert_eq!(c.choices["batching"], Some("default".to_string()));
    }

    #[test]
    fn an_experiment_overrides_groups_and_merges_globally() {
        let d = conf();
        let c = compose(d.path(), "config", &ovs(&["+experiment=multi"])).unwrap();
        assert_eq!(c.choices["model_pool"], Some("multi".to_string()));
        assert_eq!(
            c.tree["model_pool"]["instances"].as_array().unwrap().len(),
            2
        );
        assert_eq!(c.tree["name"], json!("Multi"));
        assert_eq!(c.tree["batching"]["max_batch_size"], json!(64));
        assert_eq!(c.tree["label"], json!("Multi-64"));
        // The command line wins over the experiment, for groups and keys.
        let c = compose(
            d.path(),
            "config",
            &ovs(&[
                "+experiment=multi",
                "model_pool=default",
                "batching.max_batch_size=8",
                "batching=off",
            ]),
        )
        .unwrap();
        assert_eq!(c.choices["model_pool"], Some("default".to_string()));
        assert_eq!(c.tree["batching"]["enabled"], json!(false));
        assert_eq!(c.tree["batching"]["max_batch_size"], json!(8));
        // ~group deselects it.
        let c = compose(d.path(), "config", &ovs(&["~model_pool"])).unwrap();
        assert!(tree::get(&c.tree, "model_pool").is_none());
    }

    #[test]
    fn composition_errors_name_the_file_and_the_fix() {
        let d = conf();
        let err = |list: &[&str]| {
            compose(d.path(), "config", &ovs(list))
                .unwrap_err()
                .to_string()
        };
        let m = err(&["model_pool=int8"]);
        assert!(
            m.contains("unknown option 'int8' for group 'model_pool'; available: default, multi"),
            "{m}"
        );
        let m = err(&["+experiment=typo"]);
        assert!(
            m.contains("unknown option 'mutli' for group 'model_pool'"),
            "{m}"
        );
        let m = err(&["+experiment=bad_order"]);
        assert!(
            m.contains("bad_order.yaml") && m.contains("override entries must be at the end"),
            "{m}"
        );
        let m = err(&["+experiment=twice"]);
        assert!(
            m.contains("twice.yaml") && m.contains("multiple values for 'model_pool'"),
            "{m}"
        );
        assert!(m.contains("override /model_pool: multi"), "{m}");
        let m = err(&["experiment=multi"]);
        assert!(
            m.contains("no match in the defaults list; to append it, use +experiment=multi"),
            "{m}"
        );
        let m = err(&["+model_pool=multi"]);
        assert!(
            m.contains("already in the defaults list; use model_pool=multi"),
            "{m}"
        );
        let m = err(&["batching.max_bach_size=3"]);
        assert!(m.contains("did you mean 'batching.max_batch_size'?"), "{m}");
        let m = err(&["experiment=a,b"]);
        assert!(m.contains("sweep"), "{m}");
    }
}
