//! Environment overrides: `FERROTRON__A__B__0__C=value` sets the setting at a.b[0].c.

use super::*;

/// The `FERROTRON__…` variables of this process, sorted.
pub fn env_overrides() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.len() > ENV_PREFIX.len())
        .collect();
    v.sort();
    v
}

/// Sets the value at `FERROTRON__A__B__0__C` (path a.b[0].c) to `raw` read as YAML.
pub(super) fn apply_override(root: &mut Value, key: &str, raw: &str) -> Result<(), String> {
    let parts: Vec<String> = key[ENV_PREFIX.len()..]
        .split("__")
        .map(|p| p.to_ascii_lowercase())
        .collect();
    if parts.iter().any(String::is_empty) {
        return Err(format!(
            "environment variable {key}: empty part in the setting's path"
        ));
    }
    let parsed: Value = serde_norway::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()));
    let parsed = if parsed.is_null()
        && !raw.trim().is_empty()
        && raw.trim() != "null"
        && raw.trim() != "~"
    {
        Value::String(raw.into())
    } else {
        parsed
    };
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if cur.is_null() {
            *cur = if part.parse::<usize>().is_ok() {
                Value::Sequence(Vec::new())
            } else {
                Value::Mapping(Default::default())
            };
        }
        let next = match cur {
            Value::Mapping(m) => {
                let k = Value::String(part.clone());
                if !m.contains_key(&k) {
                    m.insert(k.clone(), Value::Null);
                }
                m.get_mut(&k).expect("just inserted")
            }
            Value::Sequence(s) => {
                let idx: usize = part.parse().map_err(|_| {
                    format!("environment variable {key}: `{part}` must be a list index here")
                })?;
                if idx > s.len() {
                    return Err(format!(
                        "environment variable {key}: index {idx} is past the end of a list of {}",
                        s.len()
                    ));
                }
                if idx == s.len() {
                    s.push(Value::Null);
                }
                &mut s[idx]
            }
            _ => {
                return Err(format!(
                    "environment variable {key}: `{}` is not a mapping or list in the file",
                    parts[..i].join(".")
                ));
            }
        };
        if last {
            *next = parsed.clone();
            return Ok(());
        }
        cur = next;
    }
    Ok(())
}
