//! `ferrotron serve`: one process with the bus consumers, the scheduler and its runners, the
//! result publisher and the HTTP server, wired from one [`Config`].
//!
//! Shutdown order on SIGTERM/SIGINT: stop consuming (unacknowledged messages return to the
//! broker), stop claiming and give running jobs the grace period, cancel and requeue the
//! rest, publish what is left to publish, stop HTTP.

pub mod http;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::sync::{Notify, mpsc, watch};

use crate::bus::amqp::{self, Outgoing};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::scheduler::intake::{Intake, TaskDefaults};
use crate::scheduler::{ProviderSlot, RunSummary, Scheduler, SchedulerParts, TaskSpec};
use crate::store::Store;
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
    results_rx: std::sync::Mutex<Option<mpsc::Receiver<RunSummary>>>,
}

/// The host name, the default daemon id.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
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
        let daemon_id = config.daemon.id.clone().unwrap_or_else(hostname);
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

        let rules = config.rule_set()?;
        let intake = Arc::new(Intake {
            rules,
            tasks: defaults_by_task,
            store: store.clone(),
            metrics: metrics.clone(),
            wake: wake.clone(),
        });
        let publish = config.bus.amqp.as_ref().is_some_and(|a| a.publish_results);
        let (results_tx, results_rx) = if publish {
            let (tx, rx) = mpsc::channel(10_000);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let listen = config.daemon.listen.clone();
        let public_url = config
            .daemon
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{listen}"));
        let scheduler = Scheduler::new(SchedulerParts {
            store: store.clone(),
            cfg: config.scheduler.clone(),
            daemon_id,
            farm: config.daemon.farm.clone(),
            providers: slots,
            tasks,
            data_dir,
            metrics: metrics.clone(),
            wake,
            results: results_tx,
            public_url,
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
            results_rx: std::sync::Mutex::new(results_rx),
            config,
        })
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

    /// Runs until SIGTERM or SIGINT (or until `stop` turns true), then shuts down in order.
    /// `extra` routers (the web UI, the ResultsDB API) are merged into the HTTP server.
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

        let loops = self.scheduler.start().await;

        let mut bus_tasks = Vec::new();
        if let Some(a) = &self.config.bus.amqp {
            let consumer = amqp::Consumer {
                cfg: a.clone(),
                bindings: self.bindings(),
                max_body: self.max_body,
                handler: self.intake.clone(),
                metrics: self.metrics.clone(),
            };
            bus_tasks.push(tokio::spawn(consumer.run(stop_rx.clone())));
        }
        let (pub_stop_tx, pub_stop_rx) = watch::channel(false);
        let mut publisher = None;
        let results_rx = self.results_rx.lock().expect("results lock").take();
        if let (Some(a), Some(mut rx)) = (self.config.bus.amqp.clone(), results_rx) {
            let (out_tx, out_rx) = mpsc::channel::<Outgoing>(10_000);
            let topic = a.result_topic.clone();
            tokio::spawn(async move {
                while let Some(s) = rx.recv().await {
                    let body = serde_json::to_value(&s).unwrap_or_default();
                    if out_tx
                        .send(Outgoing {
                            topic: topic.clone(),
                            body,
                        })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
            publisher = Some(tokio::spawn(amqp::publisher(
                a,
                out_rx,
                self.metrics.clone(),
                pub_stop_rx,
            )));
        }

        let mut app = http::router(self.clone());
        for r in extra {
            app = app.merge(r);
        }
        let mut http_stop = stop_rx.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = http_stop.wait_for(|s| *s).await;
                })
                .await
        });
        tracing::info!(
            daemon = %self.scheduler.daemon_id(),
            "serving on {}",
            local.map_or(self.listen.clone(), |a| a.to_string())
        );
        eprintln!(
            "ferrotron serve: daemon {} listening on {}",
            self.scheduler.daemon_id(),
            local.map_or(self.listen.clone(), |a| a.to_string())
        );

        wait_for_signal(external_stop).await;
        eprintln!("ferrotron serve: shutting down: no new messages or claims");
        let _ = stop_tx.send(true);
        for t in bus_tasks {
            let _ = t.await;
        }
        let grace = Duration::from_secs(self.config.scheduler.shutdown_grace_s);
        self.scheduler.shutdown(grace).await;
        loops.abort();
        let _ = pub_stop_tx.send(true);
        if let Some(p) = publisher {
            let _ = tokio::time::timeout(Duration::from_secs(15), p).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        eprintln!("ferrotron serve: stopped");
        Ok(())
    }
}

async fn wait_for_signal(external: Option<watch::Receiver<bool>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
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
