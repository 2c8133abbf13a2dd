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

pub mod fedora_messaging;

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub bus: BusConfig,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    #[serde(default)]
    pub guest: GuestConfig,
    /// Where runs happen. At least one.
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    /// Tasks the rules may name, by name.
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskConfig>,
    /// Trigger rules written in this file.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Rules files (relative to this file) whose `rules:` are added after these.
    #[serde(default)]
    pub include: Vec<PathBuf>,
    /// The file this was read from.
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// This daemon's name, unique in the farm; the owner of its claims and instances.
    /// Default: the host name.
    pub id: Option<String>,
    /// The farm's name: instances are tagged `FARM/ID`, and the reaper only touches the
    /// farm's own. Default `ferrotron`.
    pub farm: String,
    /// Runs, artifacts, logs. Default: the global `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// Database URL. Default: the global `--db` (SQLite in the data dir).
    pub db: Option<String>,
    /// HTTP listen address. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Where the farm is reached from outside (`https://ferrotron.example.org`): the base of
    /// the run URLs in result messages, of results' `ref_url` (the run page, its artifacts)
    /// and of the absolute URLs the APIs answer with. Default `http://LISTEN` for messages
    /// and links, the request's Host for API answers.
    pub public_url: Option<String>,
    /// Believe `X-Forwarded-Host`/`-Proto` when `public_url` is unset; only behind a proxy
    /// that sets them. Default false.
    pub trust_forwarded: bool,
    /// Allow providers whose tasks run on this host, unisolated (`kind: local`). Default
    /// false: a farm runs what messages from outside ask for.
    pub allow_local_provider: bool,
    /// Bearer token for `POST /api/v1/messages`; unset disables the endpoint.
    pub api_token: Option<String>,
    /// A file holding the token instead (first line).
    pub api_token_file: Option<PathBuf>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            id: None,
            farm: "ferrotron".into(),
            data_dir: None,
            db: None,
            listen: "127.0.0.1:8080".into(),
            public_url: None,
            trust_forwarded: false,
            allow_local_provider: false,
            api_token: None,
            api_token_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// AMQP 0-9-1 (fedora-messaging) consumer and result publisher; unset: none.
    pub amqp: Option<AmqpConfig>,
    /// Largest accepted message body, bytes (AMQP and HTTP). Default 1 MiB.
    pub max_body_bytes: Option<usize>,
    /// How long message ids are remembered for de-duplication, hours. Default 168 (a week).
    pub dedup_hours: Option<u64>,
    /// Most jobs one message may create (rules × tasks × arches); a message that would make
    /// more creates none and is logged. Default 100.
    pub max_jobs_per_message: Option<usize>,
}

impl BusConfig {
    pub fn max_body(&self) -> usize {
        self.max_body_bytes.unwrap_or(1 << 20)
    }
    pub fn max_jobs(&self) -> usize {
        self.max_jobs_per_message.unwrap_or(100).max(1)
    }
}

/// Client certificate and CA for AMQP over TLS (fedora-messaging's `[tls]` names).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AmqpTls {
    /// PEM file of the CA(s) that signed the broker's certificate (trusted besides the
    /// system's roots).
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate.
    pub certfile: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub keyfile: Option<PathBuf>,
}

/// How the farm's queue is declared (fedora-messaging's two kinds).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueueMode {
    /// A durable queue named `queue`: messages wait while the daemon is away (a private
    /// vhost).
    #[default]
    Durable,
    /// A queue the broker names, deleted when the connection ends (what the public broker
    /// allows); re-declared and re-bound on every reconnect.
    ServerNamed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://user:pass@host:5672/%2f` or `amqps://…`; a URL without a password and a
    /// client certificate authenticate with EXTERNAL. Default: `amqp_url` of
    /// `fedora_messaging_config`.
    #[serde(default)]
    pub url: String,
    /// A fedora-messaging config file (TOML) to take `amqp_url`, `[tls]`, `[[bindings]]`,
    /// `[queues]`, `publish_exchange` and `[client_properties]` from; keys set here win.
    #[serde(default)]
    pub fedora_messaging_config: Option<PathBuf>,
    /// TLS client certificate and CA.
    #[serde(default)]
    pub tls: Option<AmqpTls>,
    /// The queue this farm consumes (durable mode). Default: the fedora-messaging file's
    /// queue, else `ferrotron`.
    #[serde(default)]
    pub queue: Option<String>,
    /// `durable` (default) or `server_named`. Default: from the fedora-messaging file's
    /// queue (`auto_delete = true` is server-named), else durable.
    #[serde(default)]
    pub queue_mode: Option<QueueMode>,
    /// The topic exchange bound to. Default `amq.topic` (fedora-messaging's).
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// The exchange messages are published to. Default: `exchange`.
    #[serde(default)]
    pub publish_exchange: Option<String>,
    /// Prepended to published topics, as fedora-messaging's `topic_prefix`
    /// (`org.fedoraproject.prod.`). Default: the fedora-messaging file's, else none.
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// Unacknowledged messages in flight per consumer. Default 64.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Extra routing keys to bind besides the rules' topics.
    #[serde(default)]
    pub bindings: Vec<String>,
    /// Publish a run message (`result_topic`) after every run. Default true.
    #[serde(default = "yes")]
    pub publish_results: bool,
    /// Topic of run messages. Default `ferrotron.result.new`.
    #[serde(default = "default_result_topic")]
    pub result_topic: String,
    /// Publish ResultsDB's `result.new` message for every stored result (what Greenwave
    /// consumes). Default true.
    #[serde(default = "yes")]
    pub publish_resultsdb: bool,
    /// Topic of those. Default `resultsdb.result.new`.
    #[serde(default = "default_resultsdb_topic")]
    pub resultsdb_topic: String,
    /// Client properties sent when connecting, besides `app`, `version`, `url`.
    #[serde(default)]
    pub client_properties: BTreeMap<String, String>,
    /// Longest wait between reconnection attempts, seconds. Default 30.
    #[serde(default = "default_reconnect")]
    pub reconnect_max_s: u64,
}

impl AmqpConfig {
    /// A config for `url` with every default (tests, tools).
    pub fn new(url: impl Into<String>) -> AmqpConfig {
        AmqpConfig {
            url: url.into(),
            fedora_messaging_config: None,
            tls: None,
            queue: None,
            queue_mode: None,
            topic_prefix: None,
            exchange: default_exchange(),
            publish_exchange: None,
            prefetch: default_prefetch(),
            bindings: Vec::new(),
            publish_results: true,
            result_topic: default_result_topic(),
            publish_resultsdb: true,
            resultsdb_topic: default_resultsdb_topic(),
            client_properties: BTreeMap::new(),
            reconnect_max_s: default_reconnect(),
        }
    }

    pub fn queue(&self) -> &str {
        self.queue.as_deref().unwrap_or("ferrotron")
    }

    pub fn queue_mode(&self) -> QueueMode {
        self.queue_mode.unwrap_or_default()
    }

    /// A published topic with the prefix.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.topic_prefix.as_deref().unwrap_or(""))
    }

    pub fn publish_exchange(&self) -> &str {
        self.publish_exchange.as_deref().unwrap_or(&self.exchange)
    }

    /// Whether anything is published.
    pub fn publishes(&self) -> bool {
        self.publish_results || self.publish_resultsdb
    }
}

fn default_exchange() -> String {
    "amq.topic".into()
}
fn default_prefetch() -> u16 {
    64
}
fn yes() -> bool {
    true
}
fn default_result_topic() -> String {
    "ferrotron.result.new".into()
}
fn default_resultsdb_topic() -> String {
    "resultsdb.result.new".into()
}
fn default_reconnect() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Lease on a claimed job, seconds; a daemon that stops renewing for this long loses its
    /// jobs to the others. Default 60.
    pub lease_s: u64,
    /// Lease renewal and job-state flush interval, seconds. Default 10.
    pub heartbeat_s: u64,
    /// How often the queue is polled when idle, milliseconds. Default 200.
    pub poll_ms: u64,
    /// Most jobs claimed by one query. Default 256.
    pub claim_batch: usize,
    /// Reaper and orphan recovery interval, seconds. Default 60.
    pub reap_interval_s: u64,
    /// Attempts per job before it is marked crashed (infrastructure failures only; a
    /// failing task is final). Default 3.
    pub max_attempts: u32,
    /// Retry backoff: base and ceiling, seconds; each retry doubles, ±50 % jitter.
    /// Defaults 10 and 600.
    pub backoff_base_s: f64,
    pub backoff_max_s: f64,
    /// Consecutive infrastructure failures that open a provider's circuit breaker. Default 5.
    pub breaker_failures: u32,
    /// How long an open breaker stops claims for the provider, seconds (doubles while it
    /// keeps failing, up to ten times). Default 30.
    pub breaker_cooldown_s: f64,
    /// On SIGTERM: how long running jobs may finish before their instances are destroyed
    /// and the jobs requeued, seconds. Default 60.
    pub shutdown_grace_s: u64,
    /// The final writes of a run (its record, the end of its job) are retried until the
    /// store answers; once the daemon is stopping, for at most this long, seconds (the
    /// lease then runs out and the next daemon to start recovers the job). Default 30.
    pub final_write_grace_s: u64,
    /// No new job is claimed while the data directory (run logs, artifacts, local overlays)
    /// has less than this free, MiB: a full disk would fail every attempt at once and pause
    /// running guests. 0 turns the check off. Default 1024.
    pub min_free_mib: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease_s: 60,
            heartbeat_s: 10,
            poll_ms: 200,
            claim_batch: 256,
            reap_interval_s: 60,
            max_attempts: 3,
            backoff_base_s: 10.0,
            backoff_max_s: 600.0,
            breaker_failures: 5,
            breaker_cooldown_s: 30.0,
            shutdown_grace_s: 60,
            final_write_grace_s: 30,
            min_free_mib: 1024,
        }
    }
}

/// Caps on what a guest can make the daemon store or wait for (README: "The guest
/// boundary"). Per-task artifact sizes are `tasks.NAME.artifacts_mib`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestConfig {
    /// Run log (`ferrotron.log`) kept per run, MiB; task output past it is dropped and the
    /// cut is marked in the log. Default 100.
    pub log_mib: u64,
    /// How long collecting a run's artifacts may take, seconds; past it the run fails as
    /// the task's doing. Default 600.
    pub collect_timeout_s: u64,
    /// Entries (files, directories, links) an artifacts archive may hold. Default 100000.
    pub max_artifact_entries: u64,
    /// Serial console kept per libvirt instance (`console.log`), MiB; the rest is read and
    /// dropped, the cut marked. Default 100.
    pub console_mib: u64,
}

impl Default for GuestConfig {
    /// The run path's own defaults (`runner::GuestLimits::default`, which `ferrotron run`
    /// uses); serve's tests hold the two equal.
    fn default() -> Self {
        GuestConfig {
            log_mib: 100,
            collect_timeout_s: 600,
            max_artifact_entries: 100_000,
            console_mib: crate::provider::DEFAULT_CONSOLE_CAP >> 20,
        }
    }
}

impl GuestConfig {
    pub fn console_bytes(&self) -> u64 {
        self.console_mib.max(1).saturating_mul(1 << 20)
    }
    pub fn log_bytes(&self) -> u64 {
        self.log_mib.max(1).saturating_mul(1 << 20)
    }
    pub fn collect_timeout(&self) -> Duration {
        Duration::from_secs(self.collect_timeout_s.max(1))
    }
}

impl SchedulerConfig {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_s.max(2))
    }
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_s.max(1))
    }
    pub fn final_write_grace(&self) -> Duration {
        Duration::from_secs(self.final_write_grace_s)
    }
}

/// One `providers:` entry: a name and a pool for the scheduler, and the backend's
/// [`Spec`] (`kind:` and its settings) in the same mapping. The spec types refuse keys they
/// do not know; [`check_providers`] names the entry in that error.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Unique name (shows in run records and metrics).
    pub name: String,
    /// Jobs name a pool (through their task); several providers (hosts) may serve one.
    /// Default: the provider's name.
    pub pool: Option<String>,
    /// The backend; its `max_instances` (most instances this daemon runs at once on it)
    /// defaults to [`DEFAULT_MAX_INSTANCES`].
    pub spec: Spec,
}

/// Instances per provider when an entry does not say.
pub const DEFAULT_MAX_INSTANCES: usize = 2;

/// Keys of a provider entry that are the scheduler's, not the backend's.
const ENTRY_KEYS: [&str; 2] = ["name", "pool"];

impl<'de> Deserialize<'de> for ProviderConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut m = serde_norway::Mapping::deserialize(d)?;
        let mut take = |k: &str| m.remove(k).filter(|v| !v.is_null());
        let name: String = match take(ENTRY_KEYS[0]) {
            Some(v) => {
                serde_norway::from_value(v).map_err(|e| D::Error::custom(format!("name: {e}")))?
            }
            None => return Err(D::Error::missing_field("name")),
        };
        let pool: Option<String> = take(ENTRY_KEYS[1])
            .map(serde_norway::from_value)
            .transpose()
            .map_err(|e| D::Error::custom(format!("pool: {e}")))?;
        let mut spec: Spec =
            serde_norway::from_value(Value::Mapping(m)).map_err(D::Error::custom)?;
        spec.default_max_instances(DEFAULT_MAX_INSTANCES);
        Ok(ProviderConfig { name, pool, spec })
    }
}

impl ProviderConfig {
    pub fn pool(&self) -> &str {
        self.pool.as_deref().unwrap_or(&self.name)
    }

    pub fn max_instances(&self) -> usize {
        self.spec.max_instances().unwrap_or(DEFAULT_MAX_INSTANCES)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// The task directory (holding runtask.yml) or formula, relative to the config file.
    pub path: PathBuf,
    /// The pool that runs it. Default: the first provider's pool.
    #[serde(default)]
    pub pool: Option<String>,
    /// Stop it after this long, seconds. Default 3600.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// Higher first. Default 0 (a rule may override).
    #[serde(default)]
    pub priority: i32,
    /// Its share of a pool against other tasks with queued jobs. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Spawn attempts inside one run (the runner's own retries). Default 2.
    #[serde(default = "default_spawn_attempts")]
    pub spawn_attempts: u32,
    /// Largest artifacts collected, MiB. Default 1024.
    #[serde(default = "default_artifacts")]
    pub artifacts_mib: u64,
    /// Keep the instance of this task's next failing run for this many hours (a hold, as
    /// `POST /api/v1/holds` makes): made at start when the task has no pending or active
    /// hold. Default: none.
    #[serde(default)]
    pub hold_failed_h: Option<f64>,
}

fn default_timeout() -> u64 {
    3600
}
fn default_weight() -> u32 {
    1
}
fn default_spawn_attempts() -> u32 {
    2
}
fn default_artifacts() -> u64 {
    1024
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

/// The `FERROTRON__…` variables of this process, sorted.
pub fn env_overrides() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.len() > ENV_PREFIX.len())
        .collect();
    v.sort();
    v
}

/// Sets the value at `FERROTRON__A__B__0__C` (path a.b[0].c) to `raw` read as YAML.
fn apply_override(root: &mut Value, key: &str, raw: &str) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const MINIMAL: &str = "providers:\n  - {name: sim, kind: sim}\ntasks:\n  t: {path: tasks/t}\nrules:\n  - {name: r, topics: [a.b], item: x, type: y, tasks: [t]}\n";

    #[test]
    fn defaults_and_relative_paths() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "c.yaml", MINIMAL);
        let c = Config::load_with_env(&p, &[]).unwrap();
        assert_eq!(c.daemon.listen, "127.0.0.1:8080");
        assert_eq!(c.scheduler.lease_s, 60);
        assert_eq!(c.tasks["t"].path, d.path().join("tasks/t"));
        assert_eq!(c.task_pool("t"), "sim");
        assert_eq!(c.providers[0].max_instances(), 2);
    }

    #[test]
    fn environment_overrides_nested_keys_and_list_entries() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "c.yaml", MINIMAL);
        let env = vec![
            (
                "FERROTRON__DAEMON__LISTEN".to_string(),
                "0.0.0.0:9".to_string(),
            ),
            (
                "FERROTRON__PROVIDERS__0__MAX_INSTANCES".to_string(),
                "7".to_string(),
            ),
            (
                "FERROTRON__SCHEDULER__LEASE_S".to_string(),
                "120".to_string(),
            ),
            (
                "FERROTRON__BUS__AMQP__URL".to_string(),
                "amqp://h/%2f".to_string(),
            ),
        ];
        let c = Config::load_with_env(&p, &env).unwrap();
        assert_eq!(c.daemon.listen, "0.0.0.0:9");
        assert_eq!(c.providers[0].max_instances(), 7);
        assert_eq!(c.scheduler.lease_s, 120);
        let amqp = c.bus.amqp.unwrap();
        assert_eq!(amqp.url, "amqp://h/%2f");
        assert_eq!(amqp.exchange, "amq.topic");
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "c.yaml",
            &MINIMAL
                .replace("max_instances", "x")
                .replace("kind: sim", "kind: sim, max_instance: 3"),
        );
        let e = Config::load_with_env(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("c.yaml") && e.contains("max_instance"), "{e}");

        let p = write(
            d.path(),
            "c2.yaml",
            &MINIMAL.replace("tasks: [t]", "tasks: [nope]"),
        );
        let e = Config::load_with_env(&p, &[]).unwrap_err().to_string();
        assert!(
            e.contains("c2.yaml") && e.contains("nope") && e.contains("rules[0]"),
            "{e}"
        );

        let env = vec![(
            "FERROTRON__SCHEDULER__LEASE_S".to_string(),
            "soon".to_string(),
        )];
        let p = write(d.path(), "c3.yaml", MINIMAL);
        let e = Config::load_with_env(&p, &env).unwrap_err().to_string();
        assert!(
            e.contains("FERROTRON__SCHEDULER__LEASE_S") && e.contains("soon"),
            "{e}"
        );

        for (url, why) in [
            ("results.example.org", "must start with http:// or https://"),
            ("https://", "has no host"),
            ("https://h/x?y=1", "must not contain '?'"),
        ] {
            let env = vec![("FERROTRON__DAEMON__PUBLIC_URL".to_string(), url.to_string())];
            let e = Config::load_with_env(&p, &env).unwrap_err().to_string();
            assert!(
                e.contains("c3.yaml") && e.contains("daemon.public_url") && e.contains(why),
                "{url}: {e}"
            );
        }
        let env = vec![(
            "FERROTRON__DAEMON__PUBLIC_URL".to_string(),
            "https://ferrotron.example.org/ci".to_string(),
        )];
        assert!(Config::load_with_env(&p, &env).is_ok());
    }

    #[test]
    fn provider_entries_are_read_by_their_spec_and_errors_name_the_entry() {
        let d = tempfile::tempdir().unwrap();
        let with = |providers: &str| {
            let p = write(
                d.path(),
                "p.yaml",
                &MINIMAL.replace("  - {name: sim, kind: sim}\n", providers),
            );
            Config::load_with_env(&p, &[]).map_err(|e| e.to_string())
        };
        let c = with(
            "  - {name: a, kind: sim, max_instances: 5}\n  - {name: b, pool: sim, kind: openstack, cloud: x, flavor: m1}\n",
        )
        .unwrap();
        assert_eq!(c.providers[0].max_instances(), 5);
        assert_eq!(c.providers[1].pool(), "sim");
        assert_eq!(c.providers[1].spec.kind(), "openstack");

        let e =
            with("  - {name: a, kind: sim}\n  - {name: b, kind: libvirt, urii: x}\n").unwrap_err();
        assert!(
            e.contains("p.yaml") && e.contains("providers[1]") && e.contains("`urii`"),
            "{e}"
        );
        assert!(
            e.contains("storage_pools"),
            "the known keys come from the spec: {e}"
        );
        let e = with("  - {name: a, kind: vmware}\n").unwrap_err();
        assert!(e.contains("providers[0]") && e.contains("vmware"), "{e}");
        let e = with("  - {name: a, kind: sim, failure_rate: 1.5}\n").unwrap_err();
        assert!(e.contains("providers[0].failure_rate: 1.5"), "{e}");
        let e = with("  - {kind: local}\n").unwrap_err();
        assert!(e.contains("providers[0]") && e.contains("name"), "{e}");
        let e = with("  - {name: here, kind: local}\n").unwrap_err();
        assert!(
            e.contains("providers[0] (`here`)") && e.contains("daemon.allow_local_provider"),
            "{e}"
        );
        let p = write(
            d.path(),
            "l.yaml",
            &MINIMAL.replace(
                "  - {name: sim, kind: sim}\n",
                "  - {name: here, kind: local}\n",
            ),
        );
        let env = vec![(
            "FERROTRON__DAEMON__ALLOW_LOCAL_PROVIDER".to_string(),
            "true".to_string(),
        )];
        assert!(Config::load_with_env(&p, &env).is_ok());
    }

    #[test]
    fn includes_add_rules_and_rules_files_load_alone() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "more.yaml",
            "rules:\n  - {name: r2, topics: ['#'], item: '{name}', type: y, tasks: [t]}\n",
        );
        let p = write(
            d.path(),
            "c.yaml",
            &format!("{MINIMAL}include: [more.yaml]\n"),
        );
        let c = Config::load_with_env(&p, &[]).unwrap();
        assert_eq!(c.rules.len(), 2);
        let (set, cfg) = load_rules(&d.path().join("more.yaml")).unwrap();
        assert!(cfg.is_none());
        assert_eq!(set.len(), 1);
    }
}
