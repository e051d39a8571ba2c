//! Config trees (JSON values parsed from YAML) and the operations composition is made of: reading
//! and writing dotted keys, Hydra's merge (maps merge recursively, the last scalar wins, lists are
//! replaced), overrides, `${a.b}` and `${oc.env:VAR,default}` interpolation, and the nearest-key
//! suggestion for typos.

use serde_json::{Map, Value};

use super::overrides::{Override, OverrideKind, OverrideValue};
use super::ConfigError;

/// The tree with its secrets (`server.api_key`) replaced by [`super::settings::REDACTED`]: what
/// results files store and `xbench config show` prints.
pub fn redacted(tree: &Value) -> Value {
    let mut tree = tree.clone();
    if let Some(key) = tree.get_mut("server").and_then(|s| s.get_mut("api_key")) {
        if !key.is_null() {
            *key = Value::String(super::settings::REDACTED.into());
        }
    }
    tree
}

/// A command-line override as results files record it: the value of a secret's override
/// (`server.api_key=...`) replaced by [`super::settings::REDACTED`].
pub fn redacted_override(text: &str) -> String {
    let body = text.trim_start_matches(['+', '~']);
    match body.split_once('=') {
        Some((key, _)) if key.trim() == "server.api_key" => {
            let prefix = &text[..text.len() - body.len()];
            format!("{prefix}{key}={}", super::settings::REDACTED)
        }
        _ => text.to_string(),
    }
}

/// The value at a dotted key; a numeric segment indexes a list (`model_pool.instances.0.name`).
pub fn get<'a>(tree: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(tree, |node, seg| match node {
        Value::Array(items) => items.get(seg.parse::<usize>().ok()?),
        other => other.as_object()?.get(seg),
    })
}

/// Sets a dotted key, creating the maps on the way; a numeric segment indexes an existing list
/// element.
pub fn set(tree: &mut Value, key: &str, value: Value) -> Result<(), ConfigError> {
    let segments: Vec<&str> = key.split('.').collect();
    let not_a_map = |upto: usize| ConfigError::NotAMap {
        key: segments[..upto].join("."),
        wanted: key.to_string(),
    };
    let mut node = tree;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if node.is_null() {
            *node = Value::Object(Map::new());
        }
        let slot = match node {
            Value::Object(map) if last => {
                map.insert(seg.to_string(), value);
                return Ok(());
            }
            Value::Object(map) => map
                .entry(seg.to_string())
                .or_insert_with(|| Value::Object(Map::new())),
            Value::Array(items) => seg
                .parse::<usize>()
                .ok()
                .and_then(|n| items.get_mut(n))
                .ok_or_else(|| not_a_map(i))?,
            _ => return Err(not_a_map(i)),
        };
        if last {
            *slot = value;
            return Ok(());
        }
        node = slot;
    }
    unreachable!("the loop returns at the last segment. This is a bug.")
}

/// Removes a dotted key; returns what was there.
pub fn delete(tree: &mut Value, key: &str) -> Option<Value> {
    let (parent, last) = match key.rsplit_once('.') {
        Some((p, l)) => (p, l),
        None => ("", key),
    };
    let node = if parent.is_empty() {
        tree
    } else {
        parent
            .split('.')
            .try_fold(tree, |node, seg| node.as_object_mut()?.get_mut(seg))?
    };
    node.as_object_mut()?.shift_remove(last)
}

/// Merges `overlay` into `base`: maps recursively, anything else (lists included) replaced.
pub fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Every dotted key of the tree, maps included.
pub fn keys(tree: &Value) -> Vec<String> {
    fn walk(node: &Value, prefix: &str, out: &mut Vec<String>) {
        if let Value::Object(map) = node {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(key.clone());
                walk(v, &key, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(tree, "", &mut out);
    out
}

/// The existing key nearest to a mistyped one: same parent, small edit distance on the last
/// segment; else the nearest full key.
pub fn suggest(tree: &Value, key: &str) -> Option<String> {
    let all = keys(tree);
    let (parent, last) = key.rsplit_once('.').unwrap_or(("", key));
    let close = |a: &str, b: &str| {
        let d = strsim::damerau_levenshtein(a, b);
        d <= 2.max(a.len() / 4) && d < a.len().max(b.len())
    };
    let sibling = all
        .iter()
        .filter(|k| k.rsplit_once('.').map_or("", |(p, _)| p) == parent)
        .filter(|k| close(last, k.rsplit_once('.').map_or(k.as_str(), |(_, l)| l)))
        .min_by_key(|k| strsim::damerau_levenshtein(last, k.rsplit('.').next().unwrap_or(k)));
    sibling
        .or_else(|| {
            all.iter()
                .filter(|k| close(key, k))
                .min_by_key(|k| strsim::damerau_levenshtein(key, k))
        })
        .cloned()
}

/// Applies one key override (not a sweep; group selection is composition's job).
pub fn apply(tree: &mut Value, o: &Override) -> Result<(), ConfigError> {
    let exists = get(tree, &o.key).is_some();
    let value = match &o.value {
        OverrideValue::One(v) => Some(v.clone()),
        OverrideValue::Absent => None,
        OverrideValue::Sweep(_) => {
            return Err(ConfigError::BadOverride {
                text: o.text.clone(),
                why: "a sweep is expanded into cells before it is applied".into(),
            })
        }
    };
    match o.kind {
        OverrideKind::Change if !exists => Err(ConfigError::NoSuchKey {
            key: o.key.clone(),
            text: o.text.clone(),
            suggestion: suggest(tree, &o.key),
        }),
        OverrideKind::Add if exists => Err(ConfigError::KeyExists {
            key: o.key.clone(),
            text: o.text.clone(),
        }),
        OverrideKind::Change | OverrideKind::Add | OverrideKind::ForceAdd => set(
            tree,
            &o.key,
            value.expect("only deletes may lack a value. This is a bug."),
        ),
        OverrideKind::Delete => {
            let current = get(tree, &o.key).cloned();
            match (current, value) {
                (None, _) => Err(ConfigError::NoSuchKey {
                    key: o.key.clone(),
                    text: o.text.clone(),
                    suggestion: suggest(tree, &o.key),
                }),
                (Some(cur), Some(want)) if cur != want => Err(ConfigError::DeleteMismatch {
                    key: o.key.clone(),
                    found: cur.to_string(),
                    given: want.to_string(),
                }),
                _ => {
                    delete(tree, &o.key);
                    Ok(())
                }
            }
        }
    }
}

const MAX_DEPTH: usize = 32;

/// Resolves every `${...}` in the tree's strings. A string that is exactly one interpolation takes
/// the referenced value's type; otherwise the pieces are joined as text.
pub fn interpolate(tree: &Value) -> Result<Value, ConfigError> {
    fn walk(root: &Value, node: &Value, at: &str, depth: usize) -> Result<Value, ConfigError> {
        match node {
            Value::Object(map) => {
                let mut out = Map::new();
                for (k, v) in map {
                    let key = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    out.insert(k.clone(), walk(root, v, &key, depth)?);
                }
                Ok(Value::Object(out))
            }
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| walk(root, v, &format!("{at}[{i}]"), depth))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::String(s) if s.contains("${") => resolve_string(root, s, at, depth),
            other => Ok(other.clone()),
        }
    }
    fn resolve_string(root: &Value, s: &str, at: &str, depth: usize) -> Result<Value, ConfigError> {
        if depth > MAX_DEPTH {
            return Err(ConfigError::Interpolation {
                key: at.to_string(),
                why: "interpolations nest too deep (a cycle?)".into(),
            });
        }
        let mut pieces: Vec<Value> = Vec::new();
        let mut rest = s;
        let mut text = String::new();
        while let Some(start) = rest.find("${") {
            text.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| ConfigError::Interpolation {
                    key: at.to_string(),
                    why: format!("unterminated '${{' in \"{s}\""),
                })?
                + start;
            let expr = &rest[start + 2..end];
            let value = if let Some(arg) = expr.strip_prefix("oc.env:") {
                let (var, default) = match arg.split_once(',') {
                    Some((v, d)) => (v.trim(), Some(d.trim())),
                    None => (arg.trim(), None),
                };
                match (std::env::var(var), default) {
                    (Ok(v), _) => Value::String(v),
                    (Err(_), Some(d)) => Value::String(d.trim_matches(['\'', '"']).to_string()),
                    (Err(_), None) => {
                        return Err(ConfigError::Interpolation {
                            key: at.to_string(),
                            why: format!(
                                "environment variable {var} is not set and ${{oc.env:{var}}} has no default"
                            ),
                        })
                    }
                }
            } else {
                let target = get(root, expr.trim()).ok_or_else(|| ConfigError::Interpolation {
                    key: at.to_string(),
                    why: format!("'${{{expr}}}' refers to a key that does not exist"),
                })?;
                match target {
                    Value::String(t) if t.contains("${") => {
                        resolve_string(root, t, expr, depth + 1)?
                    }
                    other => other.clone(),
                }
            };
            if !text.is_empty() {
                pieces.push(Value::String(std::mem::take(&mut text)));
            }
            pieces.push(value);
            rest = &rest[end + 1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Value::String(text));
        }
        if pieces.len() == 1 {
            return Ok(pieces.remove(0));
        }
        Ok(Value::String(
            pieces
                .iter()
                .map(|p| match p {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
        ))
    }
    walk(tree, tree, "", 0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tree() -> Value {
        json!({
            "name": "demo",
            "batching": {"enabled": true, "max_batch_size": 32, "timeout_ms": 5.0},
            "model_pool": {"instances": [{"name": "models/demo-minilm-l6"}]},
        })
    }

    fn ov(t: &str) -> Override {
        Override::parse(t).unwrap()
    }

    #[test]
    fn merge_maps_recursively_last_scalar_wins_lists_replaced() {
        let mut base = json!({"a": {"x": 1, "y": [1, 2, 3]}, "b": 1});
        merge(
            &mut base,
            json!({"a": {"y": [9], "z": true}, "b": {"c": 2}}),
        );
        assert_eq!(
            base,
            json!({"a": {"x": 1, "y": [9], "z": true}, "b": {"c": 2}})
        );
    }

    #[test]
    fn overrides_change_add_force_and_delete() {
        let mut t = tree();
        apply(&mut t, &ov("batching.max_batch_size=64")).unwrap();
        apply(&mut t, &ov("+server.api_key=secret")).unwrap();
        apply(&mut t, &ov("++batching.enabled=false")).unwrap();
        apply(&mut t, &ov("++batching.max_batch_tokens=8192")).unwrap();
        apply(&mut t, &ov("~batching.timeout_ms")).unwrap();
        assert_eq!(
            t["batching"],
            json!({"enabled": false, "max_batch_size": 64, "max_batch_tokens": 8192})
        );
        assert_eq!(t["server"]["api_key"], json!("secret"));
        apply(&mut t, &ov("model_pool.instances.0.name=other")).unwrap();
        assert_eq!(t["model_pool"]["instances"][0]["name"], json!("other"));
        apply(&mut t, &ov("~name=demo")).unwrap();
        assert!(get(&t, "name").is_none());
    }

    #[test]
    fn override_errors_name_the_fix() {
        let msg = |o: &str| apply(&mut tree(), &ov(o)).unwrap_err().to_string();
        let m = msg("batching.max_bach_size=8");
        assert!(
            m.contains("could not override 'batching.max_bach_size': no such key"),
            "{m}"
        );
        assert!(m.contains("did you mean 'batching.max_batch_size'?"), "{m}");
        assert!(m.contains("+batching.max_bach_size=8"), "{m}");
        let m = msg("batchng.enabled=false");
        assert!(m.contains("did you mean 'batching.enabled'?"), "{m}");
        let m = msg("wholly_unrelated=1");
        assert!(!m.contains("did you mean"), "{m}");
        let m = msg("+batching.enabled=true");
        assert!(m.contains("'batching.enabled' already exists; use batching.enabled=true to change it or ++batching.enabled=true"), "{m}");
        let m = msg("~batching.max_batch_size=16");
        assert!(m.contains("has value 32, not 16"), "{m}");
        let m = msg("+name.sub=1");
        assert!(m.contains("'name' is not a map"), "{m}");
    }

    #[test]
    fn interpolation_of_keys_and_environment() {
        std::env::set_var("XBENCH_TEST_PORT", "9000");
        let t = json!({
            "a": {"b": 7, "s": "x"},
            "whole": "${a.b}",
            "text": "n=${a.b}/${a.s}",
            "chain": "${whole}",
            "env": "${oc.env:XBENCH_TEST_PORT}",
            "env_default": "${oc.env:XBENCH_SURELY_UNSET_VAR,'fallback'}",
            "list": ["${a.s}", 1],
        });
        let r = interpolate(&t).unwrap();
        assert_eq!(r["whole"], json!(7));
        assert_eq!(r["text"], json!("n=7/x"));
        assert_eq!(r["chain"], json!(7));
        assert_eq!(r["env"], json!("9000"));
        assert_eq!(r["env_default"], json!("fallback"));
        assert_eq!(r["list"], json!(["x", 1]));
        let err = |t: Value| interpolate(&t).unwrap_err().to_string();
        assert!(err(json!({"a": "${nope.x}"}))
            .contains("'${nope.x}' refers to a key that does not exist"));
        assert!(err(json!({"a": "${b}", "b": "${a}"})).contains("cycle"));
        assert!(err(json!({"a": "${oc.env:XBENCH_SURELY_UNSET_VAR}"})).contains("is not set"));
        assert!(err(json!({"a": "${b"})).contains("unterminated"));
    }

    #[test]
    fn keys_lists_every_path() {
        let k = keys(&tree());
        assert!(k.contains(&"batching.max_batch_size".to_string()));
        assert!(k.contains(&"model_pool.instances".to_string()));
    }

    #[test]
    fn secrets_are_redacted_from_trees_and_overrides() {
        let tree = json!({"server": {"api_key": "k1", "port": 1}, "name": "x"});
        assert_eq!(
            redacted(&tree),
            json!({"server": {"api_key": "<redacted>", "port": 1}, "name": "x"})
        );
        let none = json!({"server": {"api_key": null}});
        assert_eq!(redacted(&none), none);
        assert_eq!(
            redacted_override("++server.api_key=k1"),
            "++server.api_key=<redacted>"
        );
        assert_eq!(redacted_override("server.port=1"), "server.port=1");
        assert_eq!(redacted_override("~server.api_key"), "~server.api_key");
    }
}
