//! The daemon's configuration: one YAML file (plus the rules files it includes), typed, with
//! documented defaults; every setting can be overridden from the environment.
//!
//! Environment overrides name the setting's path in upper case, parts joined by `__`, after
//! `FERROTRON__`: `FERROTRON__DAEMON__LISTEN=0.0.0.0:8080`, `FERROTRON__BUS__AMQP__URL=…`,
//! `FERROTRON__PROVIDERS__0__MAX_INSTANCES=8` (list entries by index). The value is read as a
//! YAML scalar (`8` is a number, `true` a boolean). Overrides are applied before the file is
//! checked, so they are checked like the file.
//!
//! `ferrotron.example.yaml` at the repository root documents every key.

mod env;
pub mod fedora_messaging;
mod schema;
#[cfg(test)]
mod tests;

use env::apply_override;
pub use env::env_overrides;
pub use schema::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_norway::Value;

use crate::provider::Spec;
use crate::trigger::{Rule, RuleError, RuleSet};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "FERROTRON__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Rules {
        path: PathBuf,
        #[source]
        source: RuleError,
    },
}

/// A public URL is a base the farm's links are made from: `http(s)://host[:port][/prefix]`,
/// nothing after the path (links append `/runs/…` to it).
pub fn check_public_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err("has no host".into());
    }
    if let Some(c) = u
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "?#\"<>".contains(*c))
    {
        return Err(format!(
            "must not contain {c:?} (a base URL has no query or fragment)"
        ));
    }
    Ok(())
}

fn invalid(path: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A rules-only file: what `include:` names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rules: Vec<Rule>,
}

/// Reads a YAML file into a value, with environment overrides applied when `env` is given.
fn read_value(path: &Path, env: Option<&[(String, String)]>) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut value: Value =
        serde_norway::from_str(&text).map_err(|e| invalid(path, e.to_string()))?;
    if value.is_null() {
        value = Value::Mapping(Default::default());
    }
    if let Some(env) = env {
        for (key, raw) in env {
            apply_override(&mut value, key, raw).map_err(|m| invalid(path, m))?;
        }
    }
    Ok(value)
}

/// Reads every provider entry on its own, so that an error (an unknown key, a kind that
/// does not exist) names the entry: `providers[1]: unknown field `urii`, expected one of …`.
fn check_providers(value: &Value) -> Result<(), String> {
    let Some(list) = value.get("providers").and_then(Value::as_sequence) else {
        return Ok(());
    };
    for (i, entry) in list.iter().enumerate() {
        let p: ProviderConfig =
            serde_norway::from_value(entry.clone()).map_err(|e| format!("providers[{i}]: {e}"))?;
        p.spec.check().map_err(|e| format!("providers[{i}].{e}"))?;
    }
    Ok(())
}

/// Reads the fedora-messaging file the AMQP settings name, makes paths absolute and checks
/// that the URL and the TLS files are usable.
fn resolve_amqp(a: &mut AmqpConfig, base: &Path) -> Result<(), String> {
    let rel = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    if let Some(tls) = a.tls.as_mut() {
        for p in [&mut tls.ca_cert, &mut tls.certfile, &mut tls.keyfile]
            .into_iter()
            .flatten()
        {
            rel(p);
        }
    }
    if let Some(mut fm) = a.fedora_messaging_config.clone() {
        rel(&mut fm);
        fedora_messaging::apply(a, &fm)
            .map_err(|e| format!("bus.amqp.fedora_messaging_config: {e}"))?;
        a.fedora_messaging_config = Some(fm);
    }
    if a.url.is_empty() {
        return Err(
            "bus.amqp.url: needed (or an amqp_url in bus.amqp.fedora_messaging_config)".into(),
        );
    }
    if !(a.url.starts_with("amqp://") || a.url.starts_with("amqps://")) {
        return Err(format!(
            "bus.amqp.url: `{}` must start with amqp:// or amqps://",
            crate::util::redact_url(&a.url)
        ));
    }
    if let Some(tls) = &a.tls {
        if tls.certfile.is_some() != tls.keyfile.is_some() {
            return Err("bus.amqp.tls: certfile and keyfile go together".into());
        }
        for (key, p) in [
            ("ca_cert", &tls.ca_cert),
            ("certfile", &tls.certfile),
            ("keyfile", &tls.keyfile),
        ] {
            if let Some(p) = p
                && let Err(e) = std::fs::metadata(p)
            {
                return Err(format!("bus.amqp.tls.{key}: {}: {e}", p.display()));
            }
        }
    }
    Ok(())
}

impl Config {
    /// Reads `path` and its includes, applies the environment's overrides and checks it all.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, &env_overrides())
    }

    pub fn load_with_env(path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let value = read_value(path, Some(env))?;
        check_providers(&value).map_err(|m| invalid(path, m))?;
        let mut cfg: Config = if env.is_empty() {
            // From the text, so that errors carry line and column.
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            serde_norway::from_str(&text).map_err(|e| invalid(path, e.to_string()))?
        } else {
            serde_norway::from_value(value).map_err(|e| {
                let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
                invalid(
                    path,
                    format!("{e} (with environment overrides {})", names.join(", ")),
                )
            })?
        };
        cfg.path = path.to_path_buf();
        let base = path.parent().unwrap_or(Path::new("."));
        for inc in cfg.include.clone() {
            let p = base.join(&inc);
            let v = read_value(&p, None)?;
            let f: RulesFile =
                serde_norway::from_value(v).map_err(|e| invalid(&p, e.to_string()))?;
            cfg.rules.extend(f.rules);
        }
        for t in cfg.tasks.values_mut() {
            if t.path.is_relative() {
                t.path = base.join(&t.path);
            }
        }
        if let Some(a) = cfg.bus.amqp.as_mut() {
            resolve_amqp(a, base).map_err(|m| invalid(path, m))?;
        }
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let p = &self.path;
        if self.providers.is_empty() {
            return Err(invalid(p, "providers: at least one provider is needed"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, prov) in self.providers.iter().enumerate() {
            if prov.name.is_empty() || !names.insert(prov.name.as_str()) {
                return Err(invalid(
                    p,
                    format!(
                        "providers[{i}].name: `{}` is empty or used twice",
                        prov.name
                    ),
                ));
            }
            prov.spec
                .check()
                .map_err(|e| invalid(p, format!("providers[{i}].{e}")))?;
            if !prov.spec.isolates() && !self.daemon.allow_local_provider {
                return Err(invalid(
                    p,
                    format!(
                        "providers[{i}] (`{}`): kind `{}` runs the tasks of strangers' messages \
                         as this daemon's user on this host; set daemon.allow_local_provider: \
                         true if that is meant",
                        prov.name,
                        prov.spec.kind()
                    ),
                ));
            }
        }
        let pools: Vec<&str> = self.providers.iter().map(|p| p.pool()).collect();
        for (name, t) in &self.tasks {
            if let Some(pool) = &t.pool
                && !pools.contains(&pool.as_str())
            {
                return Err(invalid(
                    p,
                    format!(
                        "tasks.{name}.pool: no provider serves pool `{pool}` (pools: {})",
                        pools.join(", ")
                    ),
                ));
            }
            if t.weight == 0 {
                return Err(invalid(
                    p,
                    format!("tasks.{name}.weight: must be at least 1"),
                ));
            }
        }
        if let Some(u) = &self.daemon.public_url {
            check_public_url(u)
                .map_err(|e| invalid(p, format!("daemon.public_url: `{u}`: {e}")))?;
        }
        if let Some(token) = &self.daemon.api_token
            && token.len() < 16
        {
            return Err(invalid(p, "daemon.api_token: use at least 16 characters"));
        }
        let s = &self.scheduler;
        if s.heartbeat_s * 2 > s.lease_s {
            return Err(invalid(
                p,
                format!(
                    "scheduler.heartbeat_s ({}) must be at most half of scheduler.lease_s ({})",
                    s.heartbeat_s, s.lease_s
                ),
            ));
        }
        if s.max_attempts == 0 || s.claim_batch == 0 {
            return Err(invalid(
                p,
                "scheduler.max_attempts and scheduler.claim_batch must be at least 1",
            ));
        }
        self.rule_set()?;
        Ok(())
    }

    /// The compiled rules, checked against the tasks.
    pub fn rule_set(&self) -> Result<RuleSet, ConfigError> {
        let tasks: Vec<&str> = self.tasks.keys().map(String::as_str).collect();
        RuleSet::compile(&self.rules, &tasks).map_err(|source| ConfigError::Rules {
            path: self.path.clone(),
            source,
        })
    }

    /// The pool a task's jobs go to.
    pub fn task_pool(&self, task: &str) -> String {
        self.tasks
            .get(task)
            .and_then(|t| t.pool.clone())
            .unwrap_or_else(|| self.providers[0].pool().to_string())
    }

    /// The API token, from `api_token` or `api_token_file`.
    pub fn api_token(&self) -> Result<Option<String>, ConfigError> {
        if let Some(t) = &self.daemon.api_token {
            return Ok(Some(t.clone()));
        }
        let Some(file) = &self.daemon.api_token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            path: file.clone(),
            source,
        })?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.len() < 16 {
            return Err(invalid(
                file,
                "daemon.api_token_file: the token needs at least 16 characters",
            ));
        }
        Ok(Some(token))
    }
}

/// Loads only the rules of `path`: a config file (its own and included rules, checked
/// against its tasks) or a rules file (checked alone: any task name is accepted).
pub fn load_rules(path: &Path) -> Result<(RuleSet, Option<Config>), ConfigError> {
    let value = read_value(path, None)?;
    let is_config = value.as_mapping().is_some_and(|m| {
        ["providers", "tasks", "daemon", "bus", "include"]
            .iter()
            .any(|k| m.contains_key(*k))
    });
    if is_config {
        let cfg = Config::load(path)?;
        return Ok((cfg.rule_set()?, Some(cfg)));
    }
    let f: RulesFile = serde_norway::from_value(value).map_err(|e| invalid(path, e.to_string()))?;
    let set = RuleSet::compile(&f.rules, &[]).map_err(|source| ConfigError::Rules {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((set, None))
}
