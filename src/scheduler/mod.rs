//! The scheduler: claims queued jobs within each provider's capacity, runs each through the
//! [`Runner`], ends it (finished, failed, or retried with backoff), and keeps the farm clean.
//!
//! Loops, each a task: *dispatch* (claim what fits: capacity, circuit breaker, fair share),
//! *heartbeat* (renew the leases of held jobs, write their phase states, stop runs whose job
//! another daemon took over), *maintenance* (recover jobs whose daemon lost its lease, reap
//! leaked instances, forget old message ids). At start-up this daemon first recovers the
//! claims of its own previous life and reaps; on shutdown it stops claiming, waits a grace
//! period, then cancels what still runs (the runner destroys the instances) and requeues it.
//!
//! Invariants: a job is run by the daemon whose claim it holds, and only while it holds it;
//! every attempt is its own run ([`crate::store::run_uuid`]); a failing task is final, a
//! failing infrastructure is retried with exponential backoff and jitter, a provider that
//! keeps failing is given a rest by its circuit breaker (no relaunch storm).

pub mod intake;
pub mod policy;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, watch};
use uuid::Uuid;

use crate::config::SchedulerConfig;
use crate::metrics::Metrics;
use crate::provider::Provider;
use crate::reaper::{self, Verdict};
use crate::runner::{Event, RunReport, RunRequest, Runner, RunnerError, exit};
use crate::store::{Job, JobEnd, RunState, Store, TaskLoad, run_uuid};
use crate::task::Formula;

use policy::Breaker;

/// One provider as the scheduler sees it.
pub struct ProviderSlot {
    pub name: String,
    pub pool: String,
    /// Most instances this daemon runs on it at once.
    pub max_instances: usize,
    pub provider: Arc<dyn Provider>,
    /// What runs on it are created from (passed to the provider as the instance's image).
    pub image: String,
    breaker: Mutex<Breaker>,
    in_flight: AtomicUsize,
}

impl ProviderSlot {
    pub fn new(
        name: String,
        pool: String,
        max_instances: usize,
        provider: Arc<dyn Provider>,
        image: String,
        cfg: &SchedulerConfig,
    ) -> Self {
        ProviderSlot {
            name,
            pool,
            max_instances,
            provider,
            image,
            breaker: Mutex::new(Breaker::new(
                cfg.breaker_failures,
                Duration::from_secs_f64(cfg.breaker_cooldown_s.max(0.0)),
            )),
            in_flight: AtomicUsize::new(0),
        }
    }
}

/// A task as configured for the farm.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub formula: Formula,
    pub timeout: Duration,
    pub weight: u32,
    pub spawn_attempts: u32,
    pub artifacts_cap: u64,
}

/// What a finished run tells the bus (the body of the result message).
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run: Uuid,
    pub job: Uuid,
    pub task: String,
    pub item: String,
    #[serde(rename = "type")]
    pub item_type: String,
    pub arch: String,
    /// The run's state: finished, failed, crashed, cancelled.
    pub state: String,
    /// One line: outcome counts, or the error.
    pub summary: String,
    /// Outcome → number of results.
    pub outcomes: BTreeMap<String, usize>,
    pub exit_code: Option<i32>,
    pub attempt: u32,
    /// Whether the job is over (false: it will be retried).
    pub final_attempt: bool,
    pub url: String,
    pub daemon: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CancelReason {
    Shutdown,
    LostLease,
}

struct Running {
    /// When it was launched: a heartbeat that began earlier may not have seen its claim.
    launched: Instant,
    cancel: watch::Sender<bool>,
    reason: Option<CancelReason>,
    state: RunState,
    dirty: bool,
}

/// Everything the scheduler is built from.
pub struct SchedulerParts {
    pub store: Store,
    pub cfg: SchedulerConfig,
    /// This daemon's id (owner of its claims).
    pub daemon_id: String,
    /// The farm's name: instances are tagged `FARM/DAEMON_ID`.
    pub farm: String,
    pub providers: Vec<ProviderSlot>,
    pub tasks: BTreeMap<String, TaskSpec>,
    pub data_dir: PathBuf,
    pub metrics: Arc<Metrics>,
    pub wake: Arc<Notify>,
    /// Where run summaries go to be published; `None`: not published.
    pub results: Option<mpsc::Sender<RunSummary>>,
    /// Base of run URLs.
    pub public_url: String,
    /// How long message ids are remembered for de-duplication.
    pub dedup_horizon: Duration,
}

/// The daemon's loop over the job queue: claims queued jobs per pool within each provider
/// slot's capacity (fair share, breaker), runs each under its lease with a [`Runner`],
/// renews leases and flushes job states on a heartbeat, ends jobs (finished, retried with
/// backoff, crashed), recovers orphans and reaps leaked instances of its farm.
///
/// It knows backends only as [`ProviderSlot`]s, and a job's state only through the run's
/// events; a job runs only while this daemon holds its claim.
pub struct Scheduler {
    store: Store,
    cfg: SchedulerConfig,
    daemon_id: String,
    instance_owner: String,
    farm_prefix: String,
    providers: Vec<Arc<ProviderSlot>>,
    tasks: BTreeMap<String, Arc<TaskSpec>>,
    data_dir: PathBuf,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    results: Option<mpsc::Sender<RunSummary>>,
    public_url: String,
    dedup_horizon: Duration,
    running: Mutex<HashMap<i64, Running>>,
    /// Jobs launched and not yet ended in the store (outlives their `running` entry).
    active: AtomicUsize,
    stopping: AtomicBool,
    stop: watch::Sender<bool>,
    ended: Notify,
}

/// Handles of the scheduler's loops.
pub struct Loops {
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Loops {
    pub fn abort(self) {
        for h in self.handles {
            h.abort();
        }
    }
}

impl Scheduler {
    pub fn new(parts: SchedulerParts) -> Arc<Scheduler> {
        let (stop, _) = watch::channel(false);
        Arc::new(Scheduler {
            instance_owner: format!("{}/{}", parts.farm, parts.daemon_id),
            farm_prefix: format!("{}/", parts.farm),
            store: parts.store,
            cfg: parts.cfg,
            daemon_id: parts.daemon_id,
            providers: parts.providers.into_iter().map(Arc::new).collect(),
            tasks: parts
                .tasks
                .into_iter()
                .map(|(k, v)| (k, Arc::new(v)))
                .collect(),
            data_dir: parts.data_dir,
            metrics: parts.metrics,
            wake: parts.wake,
            results: parts.results,
            public_url: parts.public_url.trim_end_matches('/').to_string(),
            dedup_horizon: parts.dedup_horizon,
            running: Mutex::default(),
            active: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            stop,
            ended: Notify::new(),
        })
    }

    pub fn daemon_id(&self) -> &str {
        &self.daemon_id
    }

    /// Jobs this daemon runs now.
    pub fn in_flight(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Recovers this daemon's previous life's claims and reaps, then starts the loops.
    pub async fn start(self: &Arc<Self>) -> Loops {
        self.recover(Some(&self.daemon_id)).await;
        self.reap().await;
        let mut handles = Vec::new();
        let me = self.clone();
        handles.push(tokio::spawn(async move { me.dispatch_loop().await }));
        let me = self.clone();
        handles.push(tokio::spawn(async move { me.heartbeat_loop().await }));
        let me = self.clone();
        handles.push(tokio::spawn(async move { me.maintenance_loop().await }));
        Loops { handles }
    }

    /// Stops claiming, lets running jobs finish for `grace`, then cancels the rest (their
    /// instances are destroyed, the jobs requeued) and waits for them.
    pub async fn shutdown(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
        let deadline = Instant::now() + grace;
        while self.in_flight() > 0 && Instant::now() < deadline {
            tracing::info!(
                running = self.in_flight(),
                "shutting down: waiting for running jobs"
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), self.ended.notified()).await;
        }
        {
            let mut running = self.running.lock().expect("running lock");
            if !running.is_empty() {
                tracing::warn!(
                    running = running.len(),
                    "grace period over: cancelling running jobs; their instances are destroyed and the jobs requeued"
                );
            }
            for r in running.values_mut() {
                r.reason = Some(CancelReason::Shutdown);
                let _ = r.cancel.send(true);
            }
        }
        let teardown = Instant::now() + Duration::from_secs(120);
        while self.in_flight() > 0 && Instant::now() < teardown {
            let _ = tokio::time::timeout(Duration::from_millis(200), self.ended.notified()).await;
        }
        self.flush_states().await;
    }

    // --- dispatch -------------------------------------------------------------------------

    async fn dispatch_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let poll = Duration::from_millis(self.cfg.poll_ms.max(1));
        while !self.stopping.load(Ordering::SeqCst) {
            let claimed = match self.dispatch_round().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!("claiming jobs: {e}");
                    0
                }
            };
            if claimed == 0 {
                tokio::select! {
                    _ = self.wake.notified() => {
                        // Messages come in bursts: gather a few before the next round, so
                        // that one round claims many instead of many rounds claiming one.
                        tokio::time::sleep(poll.min(Duration::from_millis(5))).await;
                    }
                    _ = tokio::time::sleep(poll) => {}
                    _ = stop.changed() => {}
                }
            } else {
                tokio::task::yield_now().await;
            }
        }
    }

    /// One pass over the providers; returns how many jobs were claimed.
    async fn dispatch_round(self: &Arc<Self>) -> Result<usize, String> {
        let mut claimed = 0;
        let mut loads: HashMap<String, Vec<TaskLoad>> = HashMap::new();
        for slot in &self.providers {
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            let allowance = slot
                .breaker
                .lock()
                .expect("breaker")
                .allowance(Instant::now());
            let mine = slot.in_flight.load(Ordering::SeqCst);
            let mut free = slot
                .max_instances
                .saturating_sub(mine)
                .min(allowance)
                .min(self.cfg.claim_batch);
            if free == 0 {
                continue;
            }
            if !loads.contains_key(&slot.pool) {
                let l = self
                    .store
                    .task_loads(&slot.pool)
                    .await
                    .map_err(|e| e.to_string())?;
                loads.insert(slot.pool.clone(), l);
            }
            let pool_loads = loads.get_mut(&slot.pool).expect("just inserted");
            if pool_loads.iter().all(|l| l.queued == 0) {
                continue;
            }
            // The provider's own count sees instances of other daemons on the same host.
            match slot.provider.capacity().await {
                Ok(cap) => free = free.min(cap.max_instances.saturating_sub(cap.in_use)),
                Err(e) => tracing::warn!(provider = %slot.name, "capacity: {e}"),
            }
            let grants = policy::allocate(
                pool_loads,
                |t| self.tasks.get(t).map_or(1, |s| s.weight),
                free,
            );
            for (task, n) in grants {
                let jobs = self
                    .store
                    .claim(
                        &slot.pool,
                        &task,
                        &slot.name,
                        &self.daemon_id,
                        n,
                        self.cfg.lease(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                slot.breaker.lock().expect("breaker").claimed(jobs.len());
                if let Some(l) = pool_loads.iter_mut().find(|l| l.task == task) {
                    l.queued = l.queued.saturating_sub(jobs.len() as u64);
                    l.in_flight += jobs.len() as u64;
                }
                claimed += jobs.len();
                for job in jobs {
                    self.launch(slot.clone(), job);
                }
            }
        }
        Ok(claimed)
    }

    fn launch(self: &Arc<Self>, slot: Arc<ProviderSlot>, job: Job) {
        slot.in_flight.fetch_add(1, Ordering::SeqCst);
        self.active.fetch_add(1, Ordering::SeqCst);
        if job.attempts == 1
            && let Some(at) = job.claimed_at
        {
            let d = at - job.received_at;
            self.metrics
                .claim_latency(Duration::try_from(d).unwrap_or_default());
        }
        let (tx, rx) = watch::channel(false);
        self.running.lock().expect("running lock").insert(
            job.id,
            Running {
                launched: Instant::now(),
                cancel: tx,
                reason: None,
                state: RunState::Provisioning,
                dirty: false,
            },
        );
        let me = self.clone();
        tokio::spawn(async move {
            me.run_job(slot, job, rx).await;
        });
    }

    // --- one job --------------------------------------------------------------------------

    async fn run_job(
        self: Arc<Self>,
        slot: Arc<ProviderSlot>,
        job: Job,
        cancel: watch::Receiver<bool>,
    ) {
        let run = run_uuid(job.uuid, job.attempts);
        let result = match self.tasks.get(&job.task) {
            Some(task) => {
                let req = RunRequest {
                    uuid: run,
                    formula: task.formula.clone(),
                    item: job.item.clone(),
                    item_type: job.item_type.clone(),
                    arch: job.arch.clone(),
                    jobid: job.uuid.to_string(),
                    owner: self.instance_owner.clone(),
                    image: slot.image.clone(),
                    task_timeout: task.timeout,
                    spawn_attempts: task.spawn_attempts.max(1),
                    artifacts_cap: task.artifacts_cap,
                    keep_instance: false,
                };
                let runner = Runner {
                    provider: slot.provider.clone(),
                    store: self.store.clone(),
                    data_dir: self.data_dir.clone(),
                    sink: self.sink(job.id, &slot.name),
                };
                runner.run(req, cancel).await
            }
            None => Err(RunnerError::Invalid(format!(
                "task `{}` is not configured in this daemon",
                job.task
            ))),
        };
        let reason = self
            .running
            .lock()
            .expect("running lock")
            .remove(&job.id)
            .and_then(|r| r.reason);
        slot.in_flight.fetch_sub(1, Ordering::SeqCst);

        let (end, mut summary) = self.decide(&slot, &job, run, &result, reason);
        if reason == Some(CancelReason::LostLease) {
            // The daemon that took the job over closes this run and tells the bus.
            tracing::warn!(job = %job.uuid, "job was taken over by another daemon; run {run} stopped");
            summary = None;
        } else {
            self.end_with_retries(&job, &end).await;
        }
        if let Some(summary) = summary {
            self.metrics.run_ended(&summary.state);
            if let Some(tx) = &self.results
                && tx.try_send(summary).is_err()
            {
                self.metrics
                    .results_publish_failed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
        self.ended.notify_waiters();
        self.wake.notify_one();
    }

    /// How the job ends after this attempt, and what to tell the bus.
    fn decide(
        &self,
        slot: &ProviderSlot,
        job: &Job,
        run: Uuid,
        result: &Result<RunReport, RunnerError>,
        reason: Option<CancelReason>,
    ) -> (JobEnd, Option<RunSummary>) {
        let retry = |error: String| -> JobEnd {
            if job.attempts < job.max_attempts {
                let delay = policy::backoff(
                    job.attempts,
                    Duration::from_secs_f64(self.cfg.backoff_base_s.max(0.0)),
                    Duration::from_secs_f64(self.cfg.backoff_max_s.max(0.0)),
                );
                JobEnd::Requeue {
                    not_before: OffsetDateTime::now_utc() + delay,
                    error: Some(error),
                    free_attempt: false,
                }
            } else {
                JobEnd::Done {
                    state: RunState::Crashed,
                    outcome: None,
                    error: Some(format!(
                        "{error} (attempt {} of {})",
                        job.attempts, job.max_attempts
                    )),
                }
            }
        };
        let report = match result {
            Ok(r) => r,
            Err(RunnerError::Invalid(m)) => {
                return (
                    JobEnd::Done {
                        state: RunState::Failed,
                        outcome: None,
                        error: Some(m.clone()),
                    },
                    None,
                );
            }
            Err(e) => return (retry(format!("ferrotron could not run the job: {e}")), None),
        };
        for p in &report.phases {
            self.metrics
                .phase(&p.name, Duration::from_secs_f64(p.duration_ms / 1000.0));
        }
        let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
        for r in &report.results {
            *outcomes.entry(r.outcome.as_str().to_string()).or_default() += 1;
        }
        let counts = if outcomes.is_empty() {
            "no results".to_string()
        } else {
            outcomes
                .iter()
                .map(|(o, n)| format!("{n} {o}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let summary_line = match &report.error {
            Some(e) => format!("{}: {e}", report.state),
            None => counts.clone(),
        };
        let end = match report.state {
            RunState::Finished => {
                slot.breaker.lock().expect("breaker").success();
                self.metrics.breaker(&slot.name, false);
                JobEnd::Done {
                    state: RunState::Finished,
                    outcome: Some(counts),
                    error: None,
                }
            }
            RunState::Failed => {
                // The instance worked; the task did not.
                slot.breaker.lock().expect("breaker").success();
                self.metrics.breaker(&slot.name, false);
                JobEnd::Done {
                    state: RunState::Failed,
                    outcome: Some(counts),
                    error: report.error.clone(),
                }
            }
            RunState::Cancelled if reason == Some(CancelReason::Shutdown) => JobEnd::Requeue {
                not_before: OffsetDateTime::now_utc(),
                error: Some("requeued: the daemon shut down during the run".into()),
                free_attempt: true,
            },
            RunState::Cancelled => JobEnd::Done {
                state: RunState::Cancelled,
                outcome: None,
                error: report.error.clone(),
            },
            _ => {
                let opened = slot
                    .breaker
                    .lock()
                    .expect("breaker")
                    .failure(Instant::now());
                if opened {
                    self.metrics.breaker(&slot.name, true);
                    tracing::warn!(
                        provider = %slot.name,
                        "provider keeps failing: circuit breaker open, no new claims for a while"
                    );
                }
                retry(report.error.clone().unwrap_or_else(|| "crashed".into()))
            }
        };
        let final_attempt = matches!(end, JobEnd::Done { .. });
        let summary = RunSummary {
            run,
            job: job.uuid,
            task: job.task.clone(),
            item: job.item.clone(),
            item_type: job.item_type.clone(),
            arch: job.arch.clone(),
            state: report.state.as_str().to_string(),
            summary: summary_line,
            outcomes,
            exit_code: Some(report.exit_code),
            attempt: job.attempts,
            final_attempt,
            url: format!("{}/runs/{run}", self.public_url),
            daemon: self.daemon_id.clone(),
        };
        (end, Some(summary))
    }

    /// Ends the job in the store, retrying a store that is briefly away. When it stays away,
    /// the lease runs out and recovery reads the run's final state instead.
    async fn end_with_retries(&self, job: &Job, end: &JobEnd) {
        for attempt in 0..5u32 {
            match self
                .store
                .end_job(job.id, &self.daemon_id, job.attempts, end)
                .await
            {
                Ok(true) => return,
                Ok(false) => {
                    tracing::warn!(job = %job.uuid, "job was taken over by another daemon before it ended here");
                    return;
                }
                Err(e) => {
                    tracing::warn!(job = %job.uuid, "recording the end of the job: {e}");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }

    /// The runner's event sink for one job: the run's state → the job's, instance gauge.
    fn sink(self: &Arc<Self>, job_id: i64, provider: &str) -> crate::runner::EventSink {
        let me = Arc::downgrade(self);
        let provider = provider.to_string();
        Arc::new(move |e: &Event| {
            let Some(me) = me.upgrade() else { return };
            let state = match e {
                Event::State(s) => Some(*s),
                Event::Instance { held, .. } => {
                    me.metrics
                        .live_instances(&provider, if *held { 1 } else { -1 });
                    None
                }
                _ => None,
            };
            if let Some(s) = state
                && let Some(r) = me.running.lock().expect("running lock").get_mut(&job_id)
                && r.state != s
            {
                r.state = s;
                r.dirty = true;
            }
        })
    }

    // --- heartbeat ------------------------------------------------------------------------

    async fn heartbeat_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush_states().await;
            let asked = Instant::now();
            let held: HashSet<i64> = match self
                .store
                .heartbeat(&self.daemon_id, self.cfg.lease())
                .await
            {
                Ok(ids) => ids.into_iter().collect(),
                Err(e) => {
                    tracing::warn!("renewing leases: {e}");
                    continue;
                }
            };
            let mut running = self.running.lock().expect("running lock");
            for (id, r) in running.iter_mut() {
                // A job launched after the renewal began was claimed after it, or while
                // it ran: its absence from the answer proves nothing.
                if !held.contains(id) && r.reason.is_none() && r.launched < asked {
                    tracing::warn!(job_id = id, "lost the claim on a running job: stopping it");
                    r.reason = Some(CancelReason::LostLease);
                    let _ = r.cancel.send(true);
                }
            }
        }
    }

    async fn flush_states(&self) {
        let batch: Vec<(i64, RunState)> = {
            let mut running = self.running.lock().expect("running lock");
            running
                .iter_mut()
                .filter(|(_, r)| r.dirty)
                .map(|(id, r)| {
                    r.dirty = false;
                    (*id, r.state)
                })
                .collect()
        };
        if let Err(e) = self.store.set_job_states(&self.daemon_id, &batch).await {
            tracing::warn!("recording job states: {e}");
        }
    }

    // --- maintenance ----------------------------------------------------------------------

    async fn maintenance_loop(self: Arc<Self>) {
        let every = Duration::from_secs(self.cfg.reap_interval_s.max(1));
        let mut stop = self.stop.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            self.recover(None).await;
            self.reap().await;
            let horizon = OffsetDateTime::now_utc() - self.dedup_horizon;
            if let Err(e) = self.store.prune_seen_messages(horizon).await {
                tracing::warn!("pruning seen message ids: {e}");
            }
        }
    }

    /// Takes over claimed jobs whose lease ran out (and, with `previous_self`, every claim of
    /// this daemon's previous life): the job ends as its run ended, or, if the run was cut
    /// short, it is requeued (bounded attempts) and the run marked crashed.
    pub async fn recover(&self, previous_self: Option<&str>) -> usize {
        let jobs = match self.store.orphaned_jobs(previous_self).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!("looking for orphaned jobs: {e}");
                return 0;
            }
        };
        let mut recovered = 0;
        for job in jobs {
            if previous_self.is_none()
                && job.claimed_by.as_deref() == Some(self.daemon_id.as_str())
                && self
                    .running
                    .lock()
                    .expect("running lock")
                    .contains_key(&job.id)
            {
                continue; // ours and running: the heartbeat is late, not dead
            }
            let Some(run) = job.current_run() else {
                continue;
            };
            let owner = job.claimed_by.clone().unwrap_or_default();
            let run_state = match self.store.run(run).await {
                Ok(r) => r.map(|r| (r.state, r.error)),
                Err(e) => {
                    tracing::warn!(job = %job.uuid, "reading run {run}: {e}");
                    continue;
                }
            };
            let why = format!("daemon {owner} stopped renewing its lease during the run");
            let end = match run_state {
                Some((s @ (RunState::Finished | RunState::Failed), ref error)) => JobEnd::Done {
                    state: s,
                    outcome: None,
                    error: error.clone(),
                },
                _ if job.attempts < job.max_attempts => JobEnd::Requeue {
                    not_before: OffsetDateTime::now_utc(),
                    error: Some(format!("{why}; requeued")),
                    free_attempt: false,
                },
                _ => JobEnd::Done {
                    state: RunState::Crashed,
                    outcome: None,
                    error: Some(format!(
                        "{why} (attempt {} of {})",
                        job.attempts, job.max_attempts
                    )),
                },
            };
            match self.store.recover_job(&job, previous_self, &end).await {
                Ok(true) => {
                    recovered += 1;
                    self.metrics.recovered_jobs.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(job = %job.uuid, run = %run, "recovered an orphaned job: {end:?}");
                    if matches!(run_state, Some((s, _)) if !s.is_terminal()) {
                        if let Err(e) = self
                            .store
                            .finish_run(run, RunState::Crashed, Some(exit::INFRA), Some(&why))
                            .await
                        {
                            tracing::warn!(run = %run, "marking the run crashed: {e}");
                        }
                        self.metrics.run_ended("crashed");
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(job = %job.uuid, "recovering: {e}"),
            }
        }
        if recovered > 0 {
            self.wake.notify_one();
        }
        recovered
    }

    /// Destroys instances of this farm whose run is not live. Returns how many.
    pub async fn reap(&self) -> usize {
        let mut reaped = 0;
        let mut seen = HashSet::new();
        for slot in &self.providers {
            let mut findings = match reaper::survey(slot.provider.as_ref(), &self.store, None).await
            {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(provider = %slot.name, "reaper: listing instances: {e}");
                    continue;
                }
            };
            for f in &mut findings {
                let ours = f
                    .instance
                    .meta
                    .as_ref()
                    .is_some_and(|m| m.owner.starts_with(&self.farm_prefix));
                if f.verdict == Verdict::Leaked && !ours {
                    f.verdict = Verdict::Foreign;
                }
                if f.verdict == Verdict::Leaked && !seen.insert(f.instance.id.clone()) {
                    f.verdict = Verdict::Foreign; // another slot on the same backend had it
                }
            }
            reaper::reap(slot.provider.as_ref(), &mut findings, false).await;
            for f in findings.iter().filter(|f| f.verdict == Verdict::Leaked) {
                match &f.error {
                    None => {
                        reaped += 1;
                        self.metrics.reaped_leaks.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(provider = %slot.name, instance = %f.instance.id, "reaped a leaked instance");
                    }
                    Some(e) => {
                        tracing::warn!(provider = %slot.name, instance = %f.instance.id, "reaping: {e}")
                    }
                }
            }
        }
        reaped
    }
}
#[cfg(test)]
mod size {
    #[test]
    fn a_parked_run_stays_small() {
        let store_fut_size = {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let store = crate::store::Store::open("sqlite::memory:").await.unwrap();
                let tmp = tempfile::tempdir().unwrap();
                std::fs::write(tmp.path().join("runtask.yml"), "name: b\ndesc: d\nmaintainer: m\nactions:\n  - name: p\n    dummy: {result: PASS}\n").unwrap();
                let formula = crate::task::Formula::load(tmp.path()).unwrap();
                let runner = crate::runner::Runner {
                    provider: crate::provider::build(&crate::provider::Spec::Local(Default::default()), &crate::provider::Context::new(tmp.path())).await.unwrap(),
                    store,
                    data_dir: tmp.path().into(),
                    sink: std::sync::Arc::new(|_: &crate::runner::Event| {}),
                };
                let req = crate::runner::RunRequest { uuid: uuid::Uuid::now_v7(), formula, item: String::new(), item_type: String::new(), arch: String::new(), jobid: String::new(), owner: String::new(), image: String::new(), task_timeout: std::time::Duration::from_secs(1), spawn_attempts: 1, artifacts_cap: 1, keep_instance: false };
                let (_tx, rx) = tokio::sync::watch::channel(false);
                let f = runner.run(req, rx);
                std::mem::size_of_val(&f)
            })
        };
        // A daemon keeps thousands of runs parked in one phase: the runner's future must not
        // reserve room for every phase at once (it was 21 KB before its phases were boxed).
        assert!(
            store_fut_size <= 4096,
            "runner future is {store_fut_size} bytes"
        );
    }
}
