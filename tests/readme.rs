//! The README's config table documents every key of the schema, and only those.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use xbench::config::{compose, XbenchConfig};

/// Leaf keys of a config value; list elements are described by their first element's keys.
fn leaves(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(child, &key, out);
            }
        }
        Value::Array(items) if items.first().is_some_and(Value::is_object) => {
            leaves(&items[0], prefix, out)
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

#[test]
fn the_readme_documents_every_config_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let composed = compose(&root.join("conf"), "config", &[]).unwrap();
    let config = XbenchConfig::from_composed(&composed).unwrap();
    let mut schema = BTreeSet::new();
    leaves(&serde_json::to_value(&config).unwrap(), "", &mut schema);

    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme.find("\n## Config\n").expect("a Config section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut documented = BTreeSet::new();
    let mut parent = String::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cell = line.split('|').nth(1).unwrap().trim();
        for key in cell.split(", ") {
            let key = key.trim_matches('`');
            if let Some(field) = key.trim_start().strip_prefix('.') {
                documented.insert(format!("{parent}.{field}"));
            } else if let Some(list) = key.strip_suffix("[]") {
                parent = list.to_string();
            } else {
                documented.insert(key.to_string());
            }
        }
    }
    let missing: Vec<_> = schema.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&schema).collect();
    assert!(
        missing.is_empty(),
        "keys missing from the README's config table: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "README documents keys the schema lacks: {extra:?}"
    );
}
