//! The command-line override grammar, as Hydra 1.3 reads it: `key=value` (change an existing key,
//! or select a group's option), `+key=value` (add; the key must not exist), `++key=value` (add or
//! change), `~key` or `~key=value` (delete), and `key=a,b,c` (a sweep over the values). Values are
//! YAML: scalars (`true`, `1.5`, `null`), flow lists `[a,b]`, quoted strings (`'a,b'` is one value).

use serde_json::Value;

use super::ConfigError;

/// What an override does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideKind {
    /// `key=value`: the key must exist (or name a config group).
    Change,
    /// `+key=value`: the key must not exist.
    Add,
    /// `++key=value`: add or change.
    ForceAdd,
    /// `~key[=value]`: delete (when a value is given, only if it matches).
    Delete,
}

/// The value side of an override.
#[derive(Debug, Clone, PartialEq)]
pub enum OverrideValue {
    /// `~key` with no value.
    Absent,
    One(Value),
    /// `key=a,b,c`: one cell per value.
    Sweep(Vec<Value>),
}

/// One parsed command-line override.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub kind: OverrideKind,
    /// Dotted key (`batching.max_batch_size`) or group path (`model_pool`).
    pub key: String,
    pub value: OverrideValue,
    /// The override as written, for error messages and result files.
    pub text: String,
}

impl Override {
    /// Parses one override as written on the command line.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::BadOverride {
            text: text.to_string(),
            why: why.to_string(),
        };
        let (kind, rest) = if let Some(r) = text.strip_prefix("++") {
            (OverrideKind::ForceAdd, r)
        } else if let Some(r) = text.strip_prefix('+') {
            (OverrideKind::Add, r)
        } else if let Some(r) = text.strip_prefix('~') {
            (OverrideKind::Delete, r)
        } else {
            (OverrideKind::Change, text)
        };
        let (key, value) = match rest.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None if kind == OverrideKind::Delete => (rest, None),
            None => {
                return Err(bad(
                    "missing '='; write key=value, +key=value, ++key=value or ~key",
                ))
            }
        };
        if !valid_key(key) {
            return Err(bad(&format!(
                "'{key}' is not a valid key; keys are dotted names such as batching.max_batch_size"
            )));
        }
        let value = match value {
            None => OverrideValue::Absent,
            Some(v) => {
                let parts = split_top_level(v).map_err(|why| bad(&why))?;
                let mut values = parts
                    .iter()
                    .map(|p| parse_value(p).map_err(|why| bad(&why)))
                    .collect::<Result<Vec<_>, _>>()?;
                if values.len() == 1 {
                    OverrideValue::One(values.remove(0))
                } else if kind == OverrideKind::Delete {
                    return Err(bad("a delete takes at most one value"));
                } else {
                    OverrideValue::Sweep(values)
                }
            }
        };
        Ok(Self {
            kind,
            key: key.to_string(),
            value,
            text: text.to_string(),
        })
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.split(['.', '/']).enumerate().all(|(i, seg)| {
            // A numeric segment indexes a list (not first).
            if i > 0 && !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                return true;
            }
            let mut chars = seg.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

/// Splits at commas that are outside brackets, braces and quotes.
fn split_top_level(v: &str) -> Result<Vec<&str>, String> {
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0usize);
    let mut parts = Vec::new();
    for (i, c) in v.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unbalanced '{c}'"));
                }
            }
            (None, ',') if depth == 0 => {
                parts.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if depth != 0 {
        return Err("unbalanced brackets".into());
    }
    parts.push(&v[start..]);
    Ok(parts)
}

/// A YAML value; an empty value is the empty string (as in Hydra).
fn parse_value(v: &str) -> Result<Value, String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(Value::String(String::new()));
    }
    serde_yaml_ng::from_str::<Value>(v).map_err(|e| format!("value '{v}' is not valid YAML: {e}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn one(text: &str) -> (OverrideKind, String, Value) {
        let o = Override::parse(text).unwrap();
        match o.value {
            OverrideValue::One(v) => (o.kind, o.key, v),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn kinds_keys_and_yaml_values() {
        use OverrideKind::*;
        assert_eq!(
            one("batching.max_batch_size=64"),
            (Change, "batching.max_batch_size".into(), json!(64))
        );
        assert_eq!(
            one("+server.api_key=abc"),
            (Add, "server.api_key".into(), json!("abc"))
        );
        assert_eq!(
            one("++batching.enabled=false"),
            (ForceAdd, "batching.enabled".into(), json!(false))
        );
        assert_eq!(one("~a.b=null"), (Delete, "a.b".into(), Value::Null));
        assert_eq!(one("x=1.5"), (Change, "x".into(), json!(1.5)));
        assert_eq!(one("x=[1, 2,3]"), (Change, "x".into(), json!([1, 2, 3])));
        assert_eq!(one("x={a: 1}"), (Change, "x".into(), json!({"a": 1})));
        assert_eq!(one("x='a,b'"), (Change, "x".into(), json!("a,b")));
        assert_eq!(one("x=\"007\""), (Change, "x".into(), json!("007")));
        assert_eq!(one("x="), (Change, "x".into(), json!("")));
        assert_eq!(
            one("model_pool=int8"),
            (Change, "model_pool".into(), json!("int8"))
        );
        assert_eq!(
            one("x=cross-encoder/ms-marco-MiniLM-L-6-v2"),
            (
                Change,
                "x".into(),
                json!("cross-encoder/ms-marco-MiniLM-L-6-v2")
            )
        );
        let d = Override::parse("~batching.timeout_ms").unwrap();
        assert_eq!((d.kind, d.value), (Delete, OverrideValue::Absent));
    }

    #[test]
    fn commas_outside_brackets_and_quotes_make_a_sweep() {
        let o = Override::parse("tokenizer_pool.workers=1,2,4").unwrap();
        assert_eq!(
            o.value,
            OverrideValue::Sweep(vec![json!(1), json!(2), json!(4)])
        );
        let o = Override::parse("x=[1,2],[3],'a,b'").unwrap();
        assert_eq!(
            o.value,
            OverrideValue::Sweep(vec![json!([1, 2]), json!([3]), json!("a,b")])
        );
    }

    #[test]
    fn malformed_overrides_say_what_to_write() {
        let msg = |t: &str| Override::parse(t).unwrap_err().to_string();
        assert!(
            msg("batching.max_batch_size").contains("missing '='; write key=value"),
            "{}",
            msg("a")
        );
        assert!(msg("=3").contains("not a valid key"));
        assert!(msg("a..b=3").contains("not a valid key"));
        assert!(msg("1a=3").contains("not a valid key"));
        assert!(msg("x=[1,2").contains("unbalanced"));
        assert!(msg("x='abc").contains("unterminated quote"));
        assert!(msg("~x=1,2").contains("at most one value"));
        assert!(msg("x=a: b: c").contains("not valid YAML"));
    }
}
