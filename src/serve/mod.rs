//! `ferrotron serve`: one process with the bus consumers, the scheduler and its runners, the
//! result publisher and the HTTP server, wired from one [`Config`].
//!
//! Shutdown order on SIGTERM/SIGINT: stop consuming (unacknowledged messages return to the
//! broker), stop claiming and give running jobs the grace period, cancel and requeue the
//! rest, publish what is left to publish, stop HTTP.

pub mod announce;
pub mod control;
pub mod http;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::sync::{Notify, watch};

use crate::bus::amqp;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::scheduler::intake::{Intake, TaskDefaults};
use crate::scheduler::{ProviderSlot, Scheduler, SchedulerParts, TaskSpec};
use crate::store::{OutboxPolicy, Store};
use crate::task::Formula;

/// Settings that come from the command line when the file leaves them out.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub data_dir: PathBuf,
    pub db_url: String,
    pub images_dir: PathBuf,
    pub recipes_dir: PathBuf,
}

/// A built daemon, ready to run.
pub struct Daemon {
    pub config: Config,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub intake: Arc<Intake>,
    pub scheduler: Arc<Scheduler>,
    pub api_token: Option<String>,
    pub max_body: usize,
    pub listen: String,
    /// Base of the URLs the daemon gives out (run pages, artifacts, API hrefs in messages).
    pub public_url: String,
    /// Runs' logs and artifacts live in `<data_dir>/artifacts/<uuid>/`.
    pub data_dir: PathBuf,
}

/// The runner's caps from the daemon's `guest:` settings.
fn guest_limits(g: &crate::config::GuestConfig) -> crate::runner::GuestLimits {
    crate::runner::GuestLimits {
        collect_timeout: g.collect_timeout(),
        log_bytes: g.log_bytes(),
        archive_entries: g.max_artifact_entries.max(1),
    }
}

impl Daemon {
    /// Opens the store, builds the providers and loads every task; errors name the file and
    /// the setting.
    pub async fn build(config: Config, defaults: &Defaults) -> Result<Daemon> {
        let cfg_path = config.path.display().to_string();
        let data_dir = config
            .daemon
            .data_dir
            .clone()
            .unwrap_or_else(|| defaults.data_dir.clone());
        let db_url = config
            .daemon
            .db
            .clone()
            .unwrap_or_else(|| defaults.db_url.clone());
        let store = Store::open(&db_url)
            .await
            .with_context(|| format!("{cfg_path}: daemon.db: opening the store"))?;
        // What the bus announces is written to the outbox with what it announces.
        let store = match &config.bus.amqp {
            Some(a) => store.with_outbox(OutboxPolicy {
                results: a.publish_resultsdb,
                runs: a.publish_results,
            }),
            None => store,
        };
        let daemon_id = config
            .daemon
            .id
            .clone()
            .unwrap_or_else(crate::util::hostname);
        if daemon_id.is_empty() || daemon_id.contains('/') {
            return Err(anyhow!(
                "{cfg_path}: daemon.id: `{daemon_id}` must be non-empty and without `/`"
            ));
        }
        let metrics = Arc::new(Metrics::default());
        let wake = Arc::new(Notify::new());

        let mut slots = Vec::new();
        for (i, p) in config.providers.iter().enumerate() {
            let at = format!("{cfg_path}: providers[{i}]");
            let cx = crate::provider::Context {
                data_dir: data_dir.clone(),
                name: p.name.clone(),
                console_cap: Some(config.guest.console_bytes()),
            };
            let provider = crate::provider::build(&p.spec, &cx)
                .await
                .with_context(|| at.clone())?;
            provider.preflight().with_context(|| at.clone())?;
            let image = crate::image::for_provider(
                &provider.capabilities().images,
                p.spec.image(),
                &defaults.recipes_dir,
                &defaults.images_dir,
            )
            .await
            .with_context(|| {
                let named = p.spec.image().unwrap_or(crate::image::DEFAULT_IMAGE);
                format!("{at}.image `{named}`")
            })?;
            slots.push(ProviderSlot::new(
                p.name.clone(),
                p.pool().to_string(),
                p.max_instances(),
                provider,
                image,
                &config.scheduler,
            ));
        }

        let mut tasks = BTreeMap::new();
        let mut defaults_by_task = BTreeMap::new();
        for (name, t) in &config.tasks {
            let formula = Formula::load(&t.path)
                .map_err(|e| anyhow!("{cfg_path}: tasks.{name}.path: {e}"))?;
            tasks.insert(
                name.clone(),
                TaskSpec {
                    formula,
                    timeout: Duration::from_secs(t.timeout_s.max(1)),
                    weight: t.weight,
                    spawn_attempts: t.spawn_attempts,
                    artifacts_cap: t.artifacts_mib.saturating_mul(1024 * 1024),
                    limits: guest_limits(&config.guest),
                },
            );
            defaults_by_task.insert(
                name.clone(),
                TaskDefaults {
                    pool: config.task_pool(name),
                    priority: t.priority,
                    max_attempts: config.scheduler.max_attempts,
                },
            );
        }

        for (name, t) in &config.tasks {
            if let Some(h) = t.hold_failed_h {
                let hold = crate::store::hold_duration(h)
                    .map_err(|e| anyhow!("{cfg_path}: tasks.{name}.hold_failed_h: {e}"))?;
                ensure_hold(&store, name, hold).await?;
            }
        }

        let rules = config.rule_set()?;
        let intake = Arc::new(Intake {
            rules,
            tasks: defaults_by_task,
            store: store.clone(),
            metrics: metrics.clone(),
            wake: wake.clone(),
            max_jobs: config.bus.max_jobs(),
        });
        let listen = config.daemon.listen.clone();
        let public_url = config
            .daemon
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_string();
        let scheduler = Scheduler::new(SchedulerParts {
            store: store.clone(),
            cfg: config.scheduler.clone(),
            daemon_id,
            farm: config.daemon.farm.clone(),
            providers: slots,
            tasks,
            data_dir: data_dir.clone(),
            metrics: metrics.clone(),
            wake,
            public_url: public_url.clone(),
            dedup_horizon: Duration::from_secs(
                config.bus.dedup_hours.unwrap_or(168).saturating_mul(3600),
            ),
        });
        let api_token = config.api_token()?;
        Ok(Daemon {
            max_body: config.bus.max_body(),
            store,
            metrics,
            intake,
            scheduler,
            api_token,
            listen,
            public_url,
            data_dir,
            config,
        })
    }

    /// The AMQP settings with the client property `url` (where this farm is) filled in.
    fn amqp_client(&self, a: &crate::config::AmqpConfig) -> crate::config::AmqpConfig {
        let mut a = a.clone();
        a.client_properties
            .entry("url".into())
            .or_insert_with(|| self.public_url.clone());
        a
    }

    /// The AMQP bindings: the rules' topics and the configured extras.
    pub fn bindings(&self) -> Vec<String> {
        let mut b = self.intake.rules.topics();
        if let Some(a) = &self.config.bus.amqp {
            for k in &a.bindings {
                if !b.contains(k) {
                    b.push(k.clone());
                }
            }
        }
        b
    }

    /// The review UI and every API of `ferrotron web` over the daemon's store (so results
    /// POSTed here are announced like the daemon's own), with its API token for writes and
    /// its farm controls (jobs, farm, cancel that acts, rerun).
    pub fn web_router(&self) -> axum::Router {
        let tokens = self.api_token.iter().cloned().collect();
        let farm = control::DaemonControl {
            scheduler: self.scheduler.clone(),
            intake: self.intake.clone(),
        };
        crate::web::router(
            crate::web::WebState::new(self.store.clone(), self.data_dir.clone(), tokens)
                .with_farm(Arc::new(farm))
                .with_public_url(
                    self.config.daemon.public_url.clone(),
                    self.config.daemon.trust_forwarded,
                ),
        )
    }

    /// Runs until SIGTERM or SIGINT (or until `stop` turns true), then shuts down in order.
    /// The HTTP server serves the daemon's own routes and the `extra` routers (`ferrotron
    /// serve` passes [`Daemon::web_router`]).
    pub async fn run(
        self: Arc<Self>,
        extra: Vec<axum::Router>,
        external_stop: Option<watch::Receiver<bool>>,
    ) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(&self.listen)
            .await
            .with_context(|| {
                format!(
                    "{}: daemon.listen: cannot listen on {}",
                    self.config.path.display(),
                    self.listen
                )
            })?;
        let local = listener.local_addr().ok();
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_signal = stop_signal(external_stop);

        let loops = self
            .scheduler
            .start()
            .await
            .map_err(|e| anyhow!("{}: {e}", self.config.path.display()))?;
        let mut fatal = self.scheduler.fatal();

        let mut bus_tasks = Vec::new();
        if let Some(a) = &self.config.bus.amqp {
            let consumer = amqp::Consumer {
                cfg: self.amqp_client(a),
                bindings: self.bindings(),
                max_body: self.max_body,
                handler: self.intake.clone(),
                metrics: self.metrics.clone(),
            };
            bus_tasks.push(tokio::spawn(consumer.run(stop_rx.clone())));
        }
        let (pub_stop_tx, pub_stop_rx) = watch::channel(false);
        let mut publisher = None;
        if let Some(a) = self.config.bus.amqp.clone().filter(|a| a.publishes()) {
            let announcer = announce::Announcer {
                store: self.store.clone(),
                cfg: self.amqp_client(&a),
                public_url: self.public_url.clone(),
                daemon_id: self.scheduler.daemon_id().to_string(),
                metrics: self.metrics.clone(),
            };
            publisher = Some(tokio::spawn(announcer.run(pub_stop_rx)));
        }

        let mut app = http::router(self.clone());
        for r in extra {
            app = app.merge(r);
        }
        let app = crate::web::with_access_log(app);
        let mut http_stop = stop_rx.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = http_stop.wait_for(|s| *s).await;
                })
                .await
        });
        // Lifecycle lines go through tracing (info by default in serve), so that they
        // follow --log-format like everything else.
        tracing::info!(
            daemon = %self.scheduler.daemon_id(),
            providers = self.config.providers.len(),
            tasks = self.config.tasks.len(),
            rules = self.config.rules.len(),
            amqp = self.config.bus.amqp.as_ref().map_or("off".to_string(), |a| crate::util::redact_url(&a.url)),
            public_url = %self.public_url,
            "ferrotron serve: daemon {} listening on {}",
            self.scheduler.daemon_id(),
            local.map_or(self.listen.clone(), |a| a.to_string())
        );
        sd_notify("READY=1\nSTATUS=serving");

        let fatal_reason = tokio::select! {
            _ = stop_signal => None,
            r = fatal.wait_for(Option::is_some) => r.ok().and_then(|r| r.clone()),
        };
        tracing::info!("ferrotron serve: shutting down: no new messages or claims");
        sd_notify("STOPPING=1\nSTATUS=shutting down");
        let _ = stop_tx.send(true);
        // A consumer stuck on a store that does not answer must not hold the shutdown.
        for t in bus_tasks {
            let _ = tokio::time::timeout(Duration::from_secs(45), t).await;
        }
        let grace = Duration::from_secs(self.config.scheduler.shutdown_grace_s);
        tracing::info!(
            "ferrotron serve: letting running jobs finish (up to {}s)",
            grace.as_secs()
        );
        self.scheduler.shutdown(grace).await;
        loops.abort();
        let _ = pub_stop_tx.send(true);
        if let Some(p) = publisher {
            let _ = tokio::time::timeout(Duration::from_secs(15), p).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        tracing::info!("ferrotron serve: stopped");
        match fatal_reason {
            Some(why) => Err(anyhow!(why)),
            None => Ok(()),
        }
    }
}

/// Tells systemd (a `Type=notify` unit) how the daemon is doing: one datagram to
/// `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Nothing without it.
pub fn sd_notify(state: &str) {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let addr = match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => SocketAddr::from_pathname(&target),
    };
    let sent = addr.and_then(|addr| {
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        tracing::warn!("NOTIFY_SOCKET {target}: cannot tell systemd `{state}`: {e}");
    }
}

/// Takes over SIGINT and SIGTERM now, and resolves when one arrives (or `external` turns
/// true). Registering before READY=1 matters: a SIGTERM that came between READY and the
/// first poll of a lazily registered handler would kill the daemon without its shutdown.
fn stop_signal(external: Option<watch::Receiver<bool>>) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(int), Ok(term)) => Some((int, term)),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("cannot handle SIGINT/SIGTERM ({e}): stop the daemon with SIGKILL");
            None
        }
    };
    async move {
        let Some((mut int, mut term)) = handlers else {
            std::future::pending::<()>().await;
            return;
        };
        wait_for_any(&mut int, &mut term, external).await;
    }
}

async fn wait_for_any(
    int: &mut tokio::signal::unix::Signal,
    term: &mut tokio::signal::unix::Signal,
    external: Option<watch::Receiver<bool>>,
) {
    let ext = async move {
        match external {
            Some(mut rx) => {
                let _ = rx.wait_for(|s| *s).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = ext => {}
    }
}

/// Loads the config for `serve`, with a message naming the file.
pub fn load_config(path: &Path) -> Result<Config> {
    Config::load(path).map_err(|e| anyhow!("{e}"))
}

/// A hold from the config (`tasks.NAME.hold_failed_h`): made unless the task already has a
/// pending or active one, so that restarting the daemon does not pile them up.
async fn ensure_hold(store: &Store, task: &str, hold: Duration) -> anyhow::Result<()> {
    let live = store
        .holds(true)
        .await
        .with_context(|| format!("reading the holds of {task}"))?;
    if live.iter().any(|h| h.task == task) {
        return Ok(());
    }
    let h = store
        .create_hold(&crate::store::NewHold {
            task: task.to_string(),
            hold,
            reason: "tasks.hold_failed_h in the daemon's config".into(),
        })
        .await
        .with_context(|| format!("making the hold of {task}"))?;
    tracing::info!(
        task,
        hold = h.id,
        "holding the next failing run of {task} for {}",
        crate::util::human_duration(hold)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_guest_defaults_of_serve_and_run_agree() {
        assert_eq!(
            super::guest_limits(&crate::config::GuestConfig::default()),
            crate::runner::GuestLimits::default()
        );
        assert_eq!(
            crate::config::GuestConfig::default().console_bytes(),
            crate::provider::DEFAULT_CONSOLE_CAP
        );
    }
}
