//! Where a model's files come from: a local directory in Hugging Face layout, or a hub id resolved
//! through the `hf-hub` crate into the standard Hugging Face cache (`HF_HOME`, `HF_HUB_CACHE`,
//! `HF_HUB_OFFLINE` and `HF_ENDPOINT` honoured as `huggingface_hub` does).

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use super::ModelError;

/// The files of one model, all on local disk.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// What the user named: a directory or a hub id (with `@revision` when given).
    pub name: String,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    /// One file, or the shards listed by `model.safetensors.index.json`.
    pub weights: Vec<PathBuf>,
    pub tokenizer_config: Option<PathBuf>,
    pub special_tokens_map: Option<PathBuf>,
}

const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";
const WEIGHTS: &str = "model.safetensors";
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const SPECIAL_TOKENS_MAP: &str = "special_tokens_map.json";

impl ModelFiles {
    /// Resolves `name`: an existing directory is read as a local model; a name that is clearly a path
    /// (absolute, `./`, `../`, `~`) but does not exist is an error; anything else is a hub id,
    /// optionally `org/name@revision`.
    pub fn resolve(name: &str) -> Result<Self, ModelError> {
        let path = Path::new(name);
        if path.is_dir() {
            return Self::from_dir(name, path);
        }
        if path.exists() {
            return Err(ModelError::NotADirectory(path.to_path_buf()));
        }
        if looks_like_path(name) {
            return Err(ModelError::DirNotFound(path.to_path_buf()));
        }
        Self::from_hub(name)
    }

    /// Reads a local directory in Hugging Face layout.
    pub fn from_dir(name: &str, dir: &Path) -> Result<Self, ModelError> {
        let required = |file: &str| {
            let p = dir.join(file);
            if p.is_file() {
                Ok(p)
            } else {
                Err(ModelError::MissingFile {
                    dir: dir.to_path_buf(),
                    file: file.to_string(),
                })
            }
        };
        let optional = |file: &str| Some(dir.join(file)).filter(|p| p.is_file());
        let config = required(CONFIG)?;
        let tokenizer = required(TOKENIZER)?;
        let weights = if let Some(index) = optional(WEIGHTS_INDEX) {
            shard_names(&index)?
                .into_iter()
                .map(|shard| required(&shard))
                .collect::<Result<Vec<_>, _>>()?
        } else if let Some(single) = optional(WEIGHTS) {
            vec![single]
        } else {
            let hint = if dir.join("pytorch_model.bin").is_file() {
                " (it has pytorch_model.bin only; convert it to safetensors first)"
            } else {
                ""
            };
            return Err(ModelError::MissingWeights {
                dir: dir.to_path_buf(),
                hint,
            });
        };
        Ok(Self {
            name: name.to_string(),
            config,
            tokenizer,
            weights,
            tokenizer_config: optional(TOKENIZER_CONFIG),
            special_tokens_map: optional(SPECIAL_TOKENS_MAP),
        })
    }

    /// Resolves a hub id through the HF cache, downloading what is missing unless offline.
    pub fn from_hub(name: &str) -> Result<Self, ModelError> {
        let (id, revision) = match name.split_once('@') {
            Some((id, rev)) if !id.is_empty() && !rev.is_empty() => (id, rev),
            Some(_) => {
                return Err(ModelError::BadHubId {
                    id: name.to_string(),
                })
            }
            None => (name, "main"),
        };
        let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string());
        let cache = hub_cache();
        let fetcher = if hub_offline() {
            Fetcher::Offline(cache)
        } else {
            let token = std::env::var("HF_TOKEN").ok().or_else(|| cache.token());
            let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
                .with_progress(false)
                .with_token(token)
                .with_endpoint(
                    std::env::var("HF_ENDPOINT")
                        .unwrap_or_else(|_| "https://huggingface.co".to_string()),
                )
                .build()
                .map_err(|e| ModelError::Download {
                    id: name.to_string(),
                    file: CONFIG.to_string(),
                    reason: e.to_string(),
                })?;
            Fetcher::Online(api)
        };
        let get = |file: &str| fetcher.get(name, &repo, file);
        let config = get(CONFIG)?;
        let tokenizer = get(TOKENIZER)?;
        let weights = match get(WEIGHTS_INDEX) {
            Ok(index) => shard_names(&index)?
                .iter()
                .map(|shard| get(shard))
                .collect::<Result<Vec<_>, _>>()?,
            Err(_) => vec![get(WEIGHTS)?],
        };
        Ok(Self {
            name: name.to_string(),
            config,
            tokenizer,
            weights,
            tokenizer_config: get(TOKENIZER_CONFIG).ok(),
            special_tokens_map: get(SPECIAL_TOKENS_MAP).ok(),
        })
    }
}

enum Fetcher {
    Offline(Cache),
    Online(hf_hub::api::sync::Api),
}

impl Fetcher {
    fn get(&self, name: &str, repo: &Repo, file: &str) -> Result<PathBuf, ModelError> {
        match self {
            Fetcher::Offline(cache) => {
                cache
                    .repo(repo.clone())
                    .get(file)
                    .ok_or_else(|| ModelError::NotCached {
                        id: name.to_string(),
                        file: file.to_string(),
                        cache: cache.path().clone(),
                    })
            }
            Fetcher::Online(api) => {
                api.repo(repo.clone())
                    .get(file)
                    .map_err(|e| ModelError::Download {
                        id: name.to_string(),
                        file: file.to_string(),
                        reason: e.to_string(),
                    })
            }
        }
    }
}

/// The hub cache folder: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) if !dir.is_empty() => Cache::new(PathBuf::from(dir)),
        _ => Cache::from_env(),
    }
}

/// `HF_HUB_OFFLINE` as `huggingface_hub` reads it: 1, ON, YES or TRUE (any case).
pub fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"))
        .unwrap_or(false)
}

fn looks_like_path(name: &str) -> bool {
    name.starts_with('/')
        || name.starts_with("./")
        || name.starts_with("../")
        || name.starts_with('~')
        || name == "."
        || name == ".."
        || name.matches('/').count() > 1
}

fn shard_names(index: &Path) -> Result<Vec<String>, ModelError> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::Io {
        path: index.to_path_buf(),
        source: e,
    })?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: index.to_path_buf(),
        source: e,
    })?;
    let mut shards: Vec<String> = parsed.weight_map.into_values().collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_hub_ids_are_told_apart() {
        assert!(looks_like_path("/models/x"));
        assert!(looks_like_path("./x"));
        assert!(looks_like_path("../x"));
        assert!(looks_like_path("a/b/c"));
        assert!(!looks_like_path("cross-encoder/ms-marco-MiniLM-L-6-v2"));
        assert!(!looks_like_path("bert-base-uncased"));
    }

    #[test]
    fn a_missing_absolute_directory_is_named() {
        let err = ModelFiles::resolve("/nonexistent/xbench-model").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/xbench-model"), "{msg}");
        assert!(msg.contains("does not exist"), "{msg}");
    }

    #[test]
    fn a_directory_without_config_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModelFiles::resolve(dir.path().to_str().unwrap()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("config.json"), "{msg}");
    }

    #[test]
    fn a_bad_revision_suffix_is_rejected() {
        let err = ModelFiles::from_hub("org/name@").unwrap_err();
        assert!(err.to_string().contains("org/name@"));
    }
}
