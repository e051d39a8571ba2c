//! DeBERTa-v2/v3's disentangled attention (transformers' `models/deberta_v2/modeling_deberta_v2.py`)
//! on the shared encoder: a layer's attention scores add, to `q_i · k_j`, the content→position
//! term `q_i · Pk[δ(i, j)]` (c2p) and the position→content term `k_j · Pq[δ(i, j)]` (p2c), all
//! divided by `sqrt(d · (1 + terms))`, where `Pk` and `Pq` are the layer's key and query
//! projections of the shared relative embeddings (LayerNorm'd when `norm_rel_ebd` says so) and
//! `δ(i, j)` the relative position `i - j` in log buckets past `position_buckets / 2`, shifted
//! and clamped into the table. What the rest of the layer computes is BERT's ([`super::encoder`]).

use std::path::Path;

use serde::Deserialize;

use super::encoder::EncoderConfig;
use super::{parse_json, ModelError};

/// How scores see relative positions.
#[derive(Debug, Clone, PartialEq)]
pub struct Relative {
    /// Half the relative embeddings' rows: `position_buckets`, else `max_relative_positions`.
    pub span: usize,
    /// `position_buckets` (log buckets past half of it) and the `max_relative_positions` they
    /// reach, when buckets are on.
    pub buckets: Option<(usize, usize)>,
    /// Content→position and position→content terms.
    pub c2p: bool,
    pub p2c: bool,
    /// The relative embeddings go through the encoder's LayerNorm (`norm_rel_ebd: layer_norm`).
    pub norm: bool,
}

impl Relative {
    /// What the scores are divided by, times `sqrt(head_dim)`: `sqrt(1 + terms)`.
    pub fn scale_factor(&self) -> usize {
        1 + usize::from(self.c2p) + usize::from(self.p2c)
    }

    /// The row of the relative embeddings for query `i` and key `j`: `δ(i, j)`, as transformers
    /// computes it (`make_log_bucket_position` in f32, then `clamp(rel + span, 0, 2 span - 1)`).
    pub fn index(&self, i: usize, j: usize) -> usize {
        let rel = i as i64 - j as i64;
        let bucketed = match self.buckets {
            None => rel,
            Some((size, max_position)) => log_bucket(rel, size as i64, max_position as i64),
        };
        (bucketed + self.span as i64).clamp(0, 2 * self.span as i64 - 1) as usize
    }
}

/// transformers' `make_log_bucket_position` for one relative position, in f32 as torch computes
/// it.
fn log_bucket(rel: i64, bucket_size: i64, max_position: i64) -> i64 {
    let mid = bucket_size / 2;
    if rel < mid && rel > -mid {
        return rel;
    }
    let abs = rel.abs();
    if abs <= mid {
        return rel;
    }
    let ratio = (abs as f32 / mid as f32).ln();
    let span = (((max_position - 1) as f64 / mid as f64) as f32).ln();
    let log_pos = (ratio / span * (mid - 1) as f32).ceil() + mid as f32;
    log_pos as i64 * rel.signum()
}

/// The keys of a DeBERTa-v2 `config.json` beside BERT's, with transformers' defaults.
#[derive(Debug, Deserialize)]
struct DebertaKeys {
    #[serde(default)]
    relative_attention: bool,
    #[serde(default = "minus_one")]
    max_relative_positions: i64,
    #[serde(default = "minus_one")]
    position_buckets: i64,
    #[serde(default)]
    norm_rel_ebd: Option<String>,
    #[serde(default)]
    share_att_key: Option<bool>,
    #[serde(default)]
    pos_att_type: Option<PosAttType>,
    #[serde(default = "yes")]
    position_biased_input: bool,
    #[serde(default)]
    type_vocab_size: Option<usize>,
    #[serde(default)]
    layer_norm_eps: Option<f64>,
    #[serde(default)]
    pooler_hidden_size: Option<usize>,
    #[serde(default)]
    pooler_hidden_act: Option<String>,
    #[serde(default)]
    conv_kernel_size: Option<usize>,
    #[serde(default)]
    embedding_size: Option<usize>,
    #[serde(default)]
    attention_head_size: Option<usize>,
}

/// `pos_att_type` as a list or as `"p2c|c2p"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PosAttType {
    List(Vec<String>),
    Text(String),
}

fn minus_one() -> i64 {
    -1
}
fn yes() -> bool {
    true
}

/// Reads a DeBERTa-v2 `config.json` into the shared encoder's config; every option that changes
/// the computation is honoured or refused by name.
pub fn read_config(path: &Path, text: &str) -> Result<EncoderConfig, ModelError> {
    let mut config: EncoderConfig = parse_json(path, text)?;
    let d: DebertaKeys = parse_json(path, text)?;
    let invalid = |message: String| ModelError::InvalidConfig {
        path: path.to_path_buf(),
        message,
    };
    // DeBERTa's defaults where BERT's differ.
    config.type_vocab_size = d.type_vocab_size.unwrap_or(0);
    config.layer_norm_eps = d.layer_norm_eps.unwrap_or(1e-7);
    config.absolute_positions = d.position_biased_input;
    if d.conv_kernel_size.unwrap_or(0) > 0 {
        return Err(invalid(
            "conv_kernel_size is set (DeBERTa-v2's convolution after the first layer), which xbench does not compute".into(),
        ));
    }
    if d.embedding_size.is_some_and(|e| e != config.hidden_size) {
        return Err(invalid(
            "embedding_size differs from hidden_size (DeBERTa's embedding projection), which xbench does not compute".into(),
        ));
    }
    let head_size = config.hidden_size / config.num_attention_heads.max(1);
    if d.attention_head_size.is_some_and(|a| a != head_size) {
        return Err(invalid(format!(
            "attention_head_size differs from hidden_size / num_attention_heads ({head_size}); not supported"
        )));
    }
    if d.pooler_hidden_size
        .is_some_and(|p| p != config.hidden_size)
    {
        return Err(invalid(
            "pooler_hidden_size differs from hidden_size; not supported".into(),
        ));
    }
    if let Some(act) = d.pooler_hidden_act.as_deref().filter(|a| *a != "gelu") {
        return Err(invalid(format!(
            "pooler_hidden_act \"{act}\" is not supported; supported: gelu"
        )));
    }
    if d.relative_attention {
        if d.share_att_key == Some(false) {
            return Err(invalid(
                "share_att_key is false (separate position projections); supported: true".into(),
            ));
        }
        let kinds: Vec<String> = match d.pos_att_type {
            Some(PosAttType::List(l)) => l,
            Some(PosAttType::Text(t)) => t.split('|').map(|s| s.trim().to_lowercase()).collect(),
            None => Vec::new(),
        };
        if let Some(other) = kinds
            .iter()
            .find(|k| !matches!(k.as_str(), "c2p" | "p2c" | ""))
        {
            return Err(invalid(format!(
                "pos_att_type \"{other}\" is not supported; supported: c2p, p2c"
            )));
        }
        let max_relative = if d.max_relative_positions < 1 {
            config.max_position_embeddings
        } else {
            d.max_relative_positions as usize
        };
        let buckets = (d.position_buckets > 0).then_some(d.position_buckets as usize);
        let norm = d
            .norm_rel_ebd
            .as_deref()
            .unwrap_or("none")
            .to_lowercase()
            .split('|')
            .any(|s| s.trim() == "layer_norm");
        config.relative = Some(Relative {
            span: buckets.unwrap_or(max_relative),
            buckets: buckets.map(|b| (b, max_relative)),
            c2p: kinds.iter().any(|k| k == "c2p"),
            p2c: kinds.iter().any(|k| k == "p2c"),
            norm,
        });
    }
    config.validate(path)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(extra: serde_json::Value) -> Result<EncoderConfig, ModelError> {
        let mut c = serde_json::json!({
            "vocab_size": 10, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 512,
            "relative_attention": true, "position_buckets": 256, "pos_att_type": "p2c|c2p",
            "norm_rel_ebd": "layer_norm", "share_att_key": true, "position_biased_input": false
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        read_config(Path::new("config.json"), &c.to_string())
    }

    /// DeBERTa-v3's config as the hub writes it, and its defaults where BERT's differ.
    #[test]
    fn a_v3_config_reads_as_transformers_does() {
        let c = read(serde_json::json!({})).unwrap();
        let r = c.relative.clone().unwrap();
        assert_eq!(
            (r.span, r.buckets, r.c2p, r.p2c, r.norm),
            (256, Some((256, 512)), true, true, true)
        );
        assert!(!c.absolute_positions);
        assert_eq!(c.type_vocab_size, 0);
        assert_eq!(c.layer_norm_eps, 1e-7);
        let listed = read(
            serde_json::json!({"pos_att_type": ["c2p"], "position_buckets": -1,
                                             "max_relative_positions": 128}),
        )
        .unwrap()
        .relative
        .unwrap();
        assert_eq!(
            (listed.span, listed.buckets, listed.c2p, listed.p2c),
            (128, None, true, false)
        );
    }

    /// What xbench does not compute is refused by name.
    #[test]
    fn options_xbench_does_not_compute_are_refused_by_name() {
        for (extra, says) in [
            (serde_json::json!({"share_att_key": false}), "share_att_key"),
            (
                serde_json::json!({"conv_kernel_size": 3}),
                "conv_kernel_size",
            ),
            (serde_json::json!({"pos_att_type": "p2p"}), "pos_att_type"),
            (serde_json::json!({"embedding_size": 4}), "embedding_size"),
            (
                serde_json::json!({"pooler_hidden_act": "tanh"}),
                "pooler_hidden_act",
            ),
            (
                serde_json::json!({"pooler_hidden_size": 16}),
                "pooler_hidden_size",
            ),
        ] {
            let err = read(extra).expect_err("refused");
            assert!(err.to_string().contains(says), "{says}: {err}");
        }
    }

    /// The buckets transformers gives DeBERTa-v3 (position_buckets 256, 512 positions) at and
    /// past the log region's edge, and its odd symmetry.
    #[test]
    fn log_buckets_are_transformers() {
        let r = Relative {
            span: 256,
            buckets: Some((256, 512)),
            c2p: true,
            p2c: true,
            norm: true,
        };
        // torch: make_log_bucket_position(tensor([0, 1, 127, 128, 129, 200, 300, 511]), 256, 512)
        // = [0, 1, 127, 128, 129, 169, 207, 255].
        for (rel, want) in [
            (0, 0),
            (1, 1),
            (127, 127),
            (128, 128),
            (129, 129),
            (200, 169),
            (300, 207),
            (511, 255),
        ] {
            assert_eq!(log_bucket(rel, 256, 512), want, "{rel}");
            assert_eq!(log_bucket(-rel, 256, 512), -want, "-{rel}");
        }
        // torch: make_log_bucket_position(arange(-64, 65), 16, 64), the tiny checkpoint's.
        let small: [i64; 129] = [
            -16, -15, -15, -15, -15, -15, -15, -15, -15, -15, -15, -15, -15, -15, -15, -15, -15,
            -15, -14, -14, -14, -14, -14, -14, -14, -14, -14, -14, -14, -14, -13, -13, -13, -13,
            -13, -13, -13, -13, -12, -12, -12, -12, -12, -12, -12, -11, -11, -11, -11, -11, -10,
            -10, -10, -10, -9, -9, -8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9,
            10, 10, 10, 10, 11, 11, 11, 11, 11, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13,
            13, 13, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15,
            15, 15, 15, 15, 15, 15, 15, 15, 15, 16,
        ];
        for (rel, want) in (-64..=64).zip(small) {
            assert_eq!(log_bucket(rel, 16, 64), want, "{rel}");
        }
        assert_eq!(r.index(0, 0), 256);
        assert_eq!(r.index(0, 511), 1);
        assert_eq!(r.index(511, 0), 511);
        assert_eq!(r.scale_factor(), 3);
    }
}
