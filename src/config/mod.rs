//! Hydra-style configuration: the command-line override grammar ([`overrides`]) and the tree
//! operations composition is made of ([`tree`]: merge, dotted keys, overrides, interpolation,
//! typo suggestions), and the composition of a config folder ([`compose`]: defaults lists, groups,
//! packages, command-line group selection).

pub mod compose;
pub mod overrides;
pub mod schema;
pub mod settings;
pub mod sweep;
pub mod tree;

pub use compose::{compose, Composed};
pub use overrides::{Override, OverrideKind, OverrideValue};
pub use schema::XbenchConfig;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot parse override '{text}': {why}")]
    BadOverride { text: String, why: String },
    #[error("could not override '{key}': no such key{}; to add it, use +{text}", .suggestion.as_ref().map(|s| format!(" (did you mean '{s}'?)")).unwrap_or_default())]
    NoSuchKey {
        key: String,
        text: String,
        suggestion: Option<String>,
    },
    #[error("could not add '{key}': '{key}' already exists; use {} to change it or +{text} to add or change", .text.trim_start_matches('+'))]
    KeyExists { key: String, text: String },
    #[error("could not delete '{key}': it has value {found}, not {given}")]
    DeleteMismatch {
        key: String,
        found: String,
        given: String,
    },
    #[error("cannot set '{wanted}': '{key}' is not a map")]
    NotAMap { key: String, wanted: String },
    #[error("cannot resolve the interpolation at '{key}': {why}")]
    Interpolation { key: String, why: String },
    #[error("config key '{key}'{}: {why}", .file.as_ref().map(|f| format!(" (set in {f})")).unwrap_or_default())]
    Schema {
        key: String,
        why: String,
        file: Option<String>,
    },
    #[error("{}: {why}", .file.display())]
    Compose {
        file: std::path::PathBuf,
        why: String,
    },
    #[error("unknown option '{option}' for group '{group}'; available: {}", .available.join(", "))]
    UnknownOption {
        group: String,
        option: String,
        available: Vec<String>,
    },
}

/// A config folder made of `(relative path, text)` files, for tests.
#[cfg(test)]
pub(crate) fn test_conf(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().expect("a file has a parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    dir
}
