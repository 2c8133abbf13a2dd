//! `ferrotron bench scheduler`: N jobs through the daemon's intake, queue, scheduler and
//! runner on the simulated provider, on SQLite and on PostgreSQL.
//!
//! Messages go in through the same handler AMQP and HTTP use (rules → jobs committed with
//! the message id), one job each; the scheduler claims them within the simulated
//! provider's capacity and runs each through the real runner (instances are directories,
//! so every run uploads, runs and collects its task). Figures: jobs dispatched (claimed and
//! handed to a runner) per second, message→claim latency percentiles, completed runs per
//! second, and peak RSS (VmHWM, reset before each backend).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use sqlx::{Connection, Executor};

use crate::bus::{Message, MessageHandler};
use crate::config::Config;
use crate::serve::{Daemon, Defaults};
use crate::store::RunState;

pub struct Options {
    pub jobs: usize,
    /// Simulated instance creation latency (runs stay in flight at least this long).
    pub create_ms: u64,
    /// Simulated capacity (instances at once).
    pub capacity: usize,
    /// PostgreSQL admin URL; a scratch database is created and dropped. `None`: SQLite only.
    pub postgres: Option<String>,
    pub work_dir: std::path::PathBuf,
}

#[derive(Debug, Serialize, Default)]
pub struct Figures {
    pub backend: String,
    pub jobs: usize,
    pub enqueue_per_s: f64,
    pub dispatched_per_s: f64,
    pub claim_latency_p50_ms: f64,
    pub claim_latency_p99_ms: f64,
    pub max_in_flight: usize,
    pub completed_per_s: f64,
    pub finished: u64,
    /// Jobs that needed more than one attempt, and why the first such attempt failed.
    pub retried: usize,
    pub retry_reason: Option<String>,
    /// Resident set when the last job was dispatched (every job in flight, at most).
    pub rss_dispatched_mib: f64,
    pub peak_rss_mib: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub figures: Vec<Figures>,
}

impl Report {
    pub fn print(&self) {
        println!("machine: {}", self.machine);
        for f in &self.figures {
            println!(
                "{:<10} {} jobs: enqueue {:.0}/s, dispatched {:.0} jobs/s, message→claim p50 {:.1} ms p99 {:.1} ms, \
                 {} in flight at most (RSS then {:.1} MiB), completed {:.0} runs/s ({} finished), peak RSS {:.1} MiB",
                f.backend,
                f.jobs,
                f.enqueue_per_s,
                f.dispatched_per_s,
                f.claim_latency_p50_ms,
                f.claim_latency_p99_ms,
                f.max_in_flight,
                f.rss_dispatched_mib,
                f.completed_per_s,
                f.finished,
                f.peak_rss_mib
            );
            if f.retried > 0 {
                println!(
                    "{:<10} {} jobs needed a second attempt; the first failed with: {}",
                    "",
                    f.retried,
                    f.retry_reason.as_deref().unwrap_or("?")
                );
            }
        }
        println!("targets: ≥ 2000 jobs/s dispatched, < 100 MiB RSS with 10,000 runs in flight");
    }
}

/// Peak resident set (VmHWM) of this process, MiB.
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

fn status_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn reset_peak_rss() {
    // Linux: writing 5 to clear_refs resets VmHWM to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// `postgres://u:p@h:5432/db?x` with the database replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after = base.find("://").map_or(0, |i| i + 3);
    let end = base[after..].find('/').map_or(base.len(), |i| after + i);
    let mut out = format!("{}/{name}", &base[..end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

pub async fn run(opts: Options) -> Result<Report> {
    std::fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("creating {}", opts.work_dir.display()))?;
    let mut figures = Vec::new();
    let dir = tempfile::tempdir_in(&opts.work_dir)?;
    let sqlite = format!("sqlite://{}/bench.db", dir.path().display());
    figures.push(one(&opts, "sqlite", &sqlite, dir.path()).await?);
    if let Some(admin) = &opts.postgres {
        sqlx::any::install_default_drivers();
        let name = format!("ferrotron_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::AnyConnection::connect(admin)
            .await
            .context("connecting to PostgreSQL")?;
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        let pg_dir = tempfile::tempdir_in(&opts.work_dir)?;
        let r = one(
            &opts,
            "postgresql",
            &with_database(admin, &name),
            pg_dir.path(),
        )
        .await;
        let _ = conn
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .await;
        figures.push(r?);
    }
    Ok(Report {
        machine: super::machine(),
        figures,
    })
}

async fn one(opts: &Options, backend: &str, db: &str, dir: &std::path::Path) -> Result<Figures> {
    let task = dir.join("task");
    std::fs::create_dir_all(&task)?;
    std::fs::write(
        task.join("runtask.yml"),
        "name: bench\ndesc: scheduler benchmark\nmaintainer: ferrotron\nactions:\n  - name: pass\n    dummy: {result: PASS}\n",
    )?;
    let cfg_path = dir.join("bench.yaml");
    std::fs::write(
        &cfg_path,
        format!(
            "daemon: {{id: bench, data_dir: '{data}', db: '{db}', listen: '127.0.0.1:0'}}\n\
             scheduler: {{claim_batch: 1000, poll_ms: 20, heartbeat_s: 5, lease_s: 600}}\n\
             providers:\n  - {{name: sim, kind: sim, max_instances: {cap}, create_ms: {create}, jitter_ms: {jit}}}\n\
             tasks:\n  bench: {{path: task, timeout_s: 600}}\n\
             rules:\n  - {{name: all, topics: [bench.job], item: '{{n}}', type: bench, tasks: [bench]}}\n",
            data = dir.join("data").display(),
            cap = opts.capacity,
            create = opts.create_ms,
            jit = opts.create_ms / 4,
        ),
    )?;
    let config = Config::load_with_env(&cfg_path, &[]).map_err(|e| anyhow!("{e}"))?;
    let defaults = Defaults {
        data_dir: dir.join("data"),
        db_url: db.to_string(),
        images_dir: dir.join("images"),
        recipes_dir: dir.join("recipes"),
    };
    reset_peak_rss();
    let daemon = Arc::new(Daemon::build(config, &defaults).await?);
    let loops = daemon
        .scheduler
        .start()
        .await
        .map_err(|e| anyhow::anyhow!(e))?;

    let t0 = Instant::now();
    let producer = {
        let d = daemon.clone();
        let n = opts.jobs;
        tokio::spawn(async move {
            // Four producers, like a few consumer channels.
            let mut set = tokio::task::JoinSet::new();
            for p in 0..4 {
                let d = d.clone();
                set.spawn(async move {
                    for i in (p..n).step_by(4) {
                        let msg = Message::new(
                            Some(format!("bench-{i}")),
                            "bench.job".into(),
                            serde_json::json!({ "n": i }),
                            Default::default(),
                        )
                        .expect("valid message");
                        let mut tries = 0;
                        while d.intake.handle(&msg).await.is_err() && tries < 50 {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                });
            }
            while set.join_next().await.is_some() {}
        })
    };
    let mut enqueued_at = None;
    let mut dispatched_at = None;
    let mut max_in_flight = 0;
    let mut rss_dispatched = 0.0;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut finished;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        max_in_flight = max_in_flight.max(daemon.scheduler.in_flight());
        if enqueued_at.is_none() && producer.is_finished() {
            enqueued_at = Some(t0.elapsed());
        }
        let claims = daemon.metrics.claims_total();
        if dispatched_at.is_none() && claims >= opts.jobs as u64 {
            dispatched_at = Some(t0.elapsed());
            rss_dispatched = status_mib("VmRSS:");
        }
        finished = daemon.metrics.runs_total();
        if finished >= opts.jobs as u64 || Instant::now() > deadline {
            break;
        }
    }
    let completed = t0.elapsed();
    let peak = peak_rss_mib();
    daemon.scheduler.shutdown(Duration::from_secs(5)).await;
    loops.abort();

    let jobs = daemon.store.jobs(None).await?;
    // Latency of first claims only: a retried job's claim time is its last claim's.
    let mut lat: Vec<f64> = jobs
        .iter()
        .filter(|j| j.attempts == 1)
        .filter_map(|j| {
            j.claimed_at
                .map(|c| (c - j.received_at).as_seconds_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let done = jobs
        .iter()
        .filter(|j| j.state == RunState::Finished)
        .count();
    if done < opts.jobs {
        tracing::warn!("{backend}: only {done} of {} jobs finished", opts.jobs);
    }
    let retried: Vec<&crate::store::Job> = jobs.iter().filter(|j| j.attempts > 1).collect();
    let mut retry_reason = None;
    if let Some(j) = retried.first()
        && let Ok(Some(run)) = daemon.store.run(j.current_run().unwrap_or_default()).await
    {
        retry_reason = run.error;
    }
    daemon.store.close().await;
    let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    Ok(Figures {
        backend: backend.into(),
        jobs: opts.jobs,
        enqueue_per_s: opts.jobs as f64 / secs(enqueued_at),
        dispatched_per_s: opts.jobs as f64 / secs(dispatched_at),
        claim_latency_p50_ms: percentile(&lat, 0.50),
        claim_latency_p99_ms: percentile(&lat, 0.99),
        max_in_flight,
        completed_per_s: finished as f64 / completed.as_secs_f64(),
        finished,
        retried: retried.len(),
        retry_reason,
        rss_dispatched_mib: rss_dispatched,
        peak_rss_mib: peak,
    })
}
