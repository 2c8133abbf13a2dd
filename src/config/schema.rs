//! The configuration's schema: every section as a typed struct, with its defaults.

use super::*;

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
