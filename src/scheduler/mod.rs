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
//! Invariants: a job is run by the daemon whose claim it holds, and only while it holds it
//! (every write about it carries the claim's lease token, [`Fence`]; the heartbeat renews
//! exactly the claims this daemon still works on); a job ends exactly once, its final writes
//! retried until the store answers; one daemon id is one live process;
//! every attempt is its own run (a uuid its claim draws at random); a failing task is final, a
//! failing infrastructure is retried with exponential backoff and jitter, a provider that
//! keeps failing is given a rest by its circuit breaker (no relaunch storm).

mod control;
pub mod intake;
pub mod policy;

pub use control::SlotStatus;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::config::SchedulerConfig;
use crate::metrics::Metrics;
use crate::provider::Provider;
use crate::reaper::{self, Verdict};
use crate::runner::{Event, RunReport, RunRequest, Runner, RunnerError, exit};
use crate::store::{
    DaemonRecord, Fence, Job, JobEnd, Registration, RunState, Store, StoreError, TaskLoad,
};
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

/// One of a provider's instances counted as in flight, from a job's launch until the last
/// instance its run made is gone (which may be after the run ended: see
/// `Runner::cleanup_slot`).
struct InFlight(Arc<ProviderSlot>);

impl InFlight {
    fn take(slot: &Arc<ProviderSlot>) -> Arc<InFlight> {
        slot.in_flight.fetch_add(1, Ordering::SeqCst);
        Arc::new(InFlight(slot.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
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
    pub limits: crate::runner::GuestLimits,
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
    /// Someone asked over the API (or on the page) to cancel the job or its run.
    Requested,
}

/// A claimed job, from its launch until its end is in the store (or given up on).
struct Running {
    /// When it was launched: a heartbeat that began earlier may not have seen its claim.
    launched: Instant,
    /// The job's uuid and the run of this attempt (cancel requests name either).
    job: Uuid,
    run: Uuid,
    fence: Fence,
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
    public_url: String,
    dedup_horizon: Duration,
    running: Mutex<HashMap<i64, Running>>,
    /// Jobs launched and not yet ended in the store.
    active: AtomicUsize,
    stopping: AtomicBool,
    /// Whether the last dispatch round found the data directory short of space (logged
    /// when it changes, not every round).
    disk_low: AtomicBool,
    /// Tasks with a hold waiting for their next failing run (refreshed each heartbeat): a
    /// run of one of them keeps its instance if the task fails.
    pending_holds: Mutex<HashSet<String>>,
    stop: watch::Sender<bool>,
    ended: Notify,
    /// This process's registration of `daemon_id` (see [`Store::register_daemon`]).
    instance: String,
    /// Set when this daemon must stop on its own (its id was taken over).
    fatal: watch::Sender<Option<String>>,
}

/// How long one store call of the scheduler may take before it counts as failed: a
/// connection that went silent (a network cut, not a refused connection) would otherwise
/// hold a loop forever. Longer than the pool's own 30 s acquire timeout.
const STORE_CALL: Duration = Duration::from_secs(40);

/// Fault injection for tests/faults.rs: when this variable names a phase (`clone`, `boot`,
/// `upload`, `action`, `collect`, `destroy`), the daemon SIGKILLs itself as a run enters it.
pub const FAULT_KILL_AT: &str = "FERROTRON_FAULT_KILL_AT";

/// The same bound for the calls a stopping daemon makes on its way out.
const STORE_CALL_STOPPING: Duration = Duration::from_secs(5);

/// Why a durable write stopped trying.
#[derive(Debug)]
enum GaveUp {
    /// The claim on the job is someone else's now.
    Lost,
    /// The store refused the write (not an outage): trying again cannot help.
    Refused(String),
    /// The daemon is stopping and the store stayed away for `final_write_grace_s`.
    Stopping(String),
}

/// Whether the end of a run is in the store.
enum Recorded {
    /// Yes (or there was nothing to record): what the runner said.
    Yes(Box<Result<RunReport, RunnerError>>),
    /// The claim was taken over: this daemon may write nothing more about the job.
    Lost,
    /// Not, and this daemon stopped trying: the job is left to its lease.
    Abandoned(String),
}

/// `d` ± 25 %, so that many writers do not come back at the same instant.
fn jittered(d: Duration) -> Duration {
    use rand::RngExt;
    d.mul_f64(rand::rng().random_range(0.75..1.25))
}

/// Whether process `pid` on this host is a live ferrotron (not this process: after a crash
/// in a container the new life may well get the old pid).
fn ferrotron_alive(pid: u32) -> bool {
    pid != std::process::id()
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim().starts_with("ferrotron"))
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
            public_url: parts.public_url.trim_end_matches('/').to_string(),
            dedup_horizon: parts.dedup_horizon,
            running: Mutex::default(),
            active: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            disk_low: AtomicBool::new(false),
            pending_holds: Mutex::default(),
            stop,
            ended: Notify::new(),
            instance: Uuid::new_v4().to_string(),
            fatal: watch::channel(None).0,
        })
    }

    /// Turns `Some(reason)` when the daemon must stop on its own: another process took its
    /// daemon id over (it thought this one dead and recovered its jobs).
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    pub fn daemon_id(&self) -> &str {
        &self.daemon_id
    }

    /// Jobs this daemon runs now.
    pub fn in_flight(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Registers the daemon id (refusing an id another live process holds), recovers this
    /// daemon's previous life's claims and reaps, then starts the loops.
    pub async fn start(self: &Arc<Self>) -> Result<Loops, String> {
        self.register().await?;
        self.recover(Some(&self.daemon_id)).await;
        self.reap().await;
        let mut handles = Vec::new();
        let me = self.clone();
        handles.push(tokio::spawn(async move { me.dispatch_loop().await }));
        let me = self.clone();
        handles.push(tokio::spawn(async move { me.heartbeat_loop().await }));
        let me = self.clone();
        handles.push(tokio::spawn(async move { me.maintenance_loop().await }));
        Ok(Loops { handles })
    }

    /// Makes the daemon id this process's. Another process holds it when its registration
    /// is younger than a lease: on this host, whether it lives is seen at once (its pid); on
    /// another host it is live if it renews the registration within two heartbeats.
    async fn register(&self) -> Result<(), String> {
        let host = crate::util::hostname();
        let now = OffsetDateTime::now_utc();
        let me = DaemonRecord {
            id: self.daemon_id.clone(),
            instance: self.instance.clone(),
            host: host.clone(),
            pid: std::process::id(),
            started_at: now,
            seen_at: now,
        };
        let mut dead: Option<String> = None;
        let mut watched: Option<(DaemonRecord, Instant)> = None;
        let patience = self.cfg.heartbeat() * 2 + Duration::from_secs(1);
        loop {
            let held = match self
                .store
                .register_daemon(&me, self.cfg.lease(), dead.as_deref())
                .await
            {
                Ok(Registration::Registered) => return Ok(()),
                Ok(Registration::Held(other)) => other,
                Err(e) => return Err(format!("registering daemon id `{}`: {e}", self.daemon_id)),
            };
            let duplicate = |why: &str| {
                let ago = (OffsetDateTime::now_utc() - held.seen_at)
                    .whole_seconds()
                    .max(0);
                format!(
                    "daemon id `{}` is in use by another live daemon (pid {} on host {}, \
                     started {}, last seen {ago} s ago; {why}): give every daemon its own \
                     daemon.id, or stop the other one first",
                    self.daemon_id,
                    held.pid,
                    held.host,
                    held.started_at
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                )
            };
            if held.host == host {
                if ferrotron_alive(held.pid) {
                    return Err(duplicate("its process is running on this host"));
                }
                tracing::info!(
                    pid = held.pid,
                    "the previous holder of this daemon id is gone: taking the id over"
                );
                dead = Some(held.instance);
                continue;
            }
            match &watched {
                Some((first, _))
                    if first.instance != held.instance || held.seen_at > first.seen_at =>
                {
                    return Err(duplicate(
                        "it renewed its registration while this daemon waited",
                    ));
                }
                Some((_, since)) if since.elapsed() >= patience => {
                    tracing::info!(
                        host = %held.host,
                        "the previous holder of this daemon id stopped renewing it: taking it over"
                    );
                    dead = Some(held.instance);
                    continue;
                }
                Some(_) => {}
                None => {
                    tracing::info!(
                        host = %held.host,
                        "daemon id registered recently by another host: waiting up to {}s to see whether it is alive",
                        patience.as_secs()
                    );
                    watched = Some((held, Instant::now()));
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
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
        // Teardown (instances destroyed) and then the final writes, which give up after
        // `final_write_grace_s` of a store that does not answer.
        let teardown = Instant::now() + Duration::from_secs(120) + self.cfg.final_write_grace();
        while self.in_flight() > 0 && Instant::now() < teardown {
            let _ = tokio::time::timeout(Duration::from_millis(200), self.ended.notified()).await;
        }
        if self.in_flight() > 0 {
            tracing::warn!(
                running = self.in_flight(),
                "stopping with jobs not ended in the store; their leases run out and the next daemon recovers them"
            );
        }
        self.flush_states(STORE_CALL_STOPPING).await;
        match tokio::time::timeout(
            STORE_CALL_STOPPING,
            self.store.release_daemon(&self.daemon_id, &self.instance),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("releasing the daemon id: {e}"),
            Err(_) => tracing::warn!("releasing the daemon id: the store did not answer"),
        }
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
        if !self.disk_has_room() {
            return Ok(0);
        }
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
                let mut l = tokio::time::timeout(STORE_CALL, self.store.task_loads(&slot.pool))
                    .await
                    .map_err(|_| "the store did not answer".to_string())?
                    .map_err(|e| e.to_string())?;
                // Jobs of tasks this daemon does not know are left for a daemon that does.
                l.retain(|t| self.tasks.contains_key(&t.task));
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

    /// Whether the data directory has `scheduler.min_free_mib` free. A run started on a full
    /// disk fails in seconds, and its retries with it, burning every attempt of the job on
    /// a condition that an operator clears in minutes: the jobs wait in the queue instead.
    fn disk_has_room(&self) -> bool {
        let want = self.cfg.min_free_mib << 20;
        if want == 0 {
            return true;
        }
        let free = match crate::util::free_bytes(&self.data_dir) {
            Ok(f) => f,
            Err(e) => {
                // Not knowing is no reason to stop the farm; the runs will say what is wrong.
                tracing::debug!(dir = %self.data_dir.display(), "free space: {e}");
                return true;
            }
        };
        let low = free < want;
        if self.disk_low.swap(low, Ordering::SeqCst) != low {
            if low {
                tracing::warn!(
                    dir = %self.data_dir.display(),
                    free_mib = free >> 20,
                    min_free_mib = self.cfg.min_free_mib,
                    "data directory is short of space: no new job is claimed until it has \
                     scheduler.min_free_mib free"
                );
            } else {
                tracing::info!(
                    dir = %self.data_dir.display(),
                    free_mib = free >> 20,
                    "data directory has room again: claiming jobs"
                );
            }
        }
        !low
    }

    fn launch(self: &Arc<Self>, slot: Arc<ProviderSlot>, job: Job) {
        let Some(fence) = job.fence() else {
            tracing::error!(job = %job.uuid, "claimed job without a lease token: left to run out");
            return;
        };
        let held = InFlight::take(&slot);
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
                job: job.uuid,
                run: job.current_run().unwrap_or_default(),
                fence: fence.clone(),
                cancel: tx,
                reason: None,
                state: RunState::Provisioning,
                dirty: false,
            },
        );
        let me = self.clone();
        tokio::spawn(async move {
            me.run_job(slot, held, job, fence, rx).await;
        });
    }

    // --- one job --------------------------------------------------------------------------

    async fn run_job(
        self: Arc<Self>,
        slot: Arc<ProviderSlot>,
        held: Arc<InFlight>,
        job: Job,
        fence: Fence,
        cancel: watch::Receiver<bool>,
    ) {
        // Drawn by the claim; never missing on a claimed job.
        let run = job.current_run().unwrap_or_default();
        // Every write the runner makes about this run carries the claim.
        let store = self.store.fenced(fence.clone());
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
                    // A rerun repeats its run's image; other jobs take the provider's.
                    image: job.image.clone().unwrap_or_else(|| slot.image.clone()),
                    task_timeout: task.timeout,
                    spawn_attempts: task.spawn_attempts.max(1),
                    artifacts_cap: task.artifacts_cap,
                    limits: task.limits,
                    keep_instance: false,
                    keep_if_failed: self
                        .pending_holds
                        .lock()
                        .expect("holds lock")
                        .contains(&job.task),
                    links: Some(crate::runner::RunLinks {
                        page: format!("{}/runs/{run}", self.public_url),
                        artifacts: format!("{}/runs/{run}/artifacts", self.public_url),
                    }),
                };
                let runner = Runner {
                    provider: slot.provider.clone(),
                    store: store.clone(),
                    data_dir: self.data_dir.clone(),
                    sink: self.sink(job.id, &slot.name),
                    cleanup_slot: Some(held.clone()),
                };
                match guarded(async move { runner.run(req, cancel).await }).await {
                    Ok(r) => r,
                    Err(why) => {
                        // Close the run so that the reaper may destroy its instance.
                        let _ = self
                            .store
                            .finish_run(run, RunState::Crashed, Some(exit::INFRA), Some(&why))
                            .await;
                        Err(RunnerError::Panicked(why))
                    }
                }
            }
            // Not claimed by dispatch (it claims only tasks it knows); kept for safety.
            None => Err(RunnerError::Invalid(format!(
                "task `{}` is not configured in this daemon",
                job.task
            ))),
        };
        if let Ok(report) = &result
            && let Some(kept) = &report.kept_instance
        {
            self.hand_to_hold(&slot, &job.task, run, kept, report.kept_login.as_deref())
                .await;
        }
        // Capacity comes back once the run's instances are gone (see `Runner::cleanup_slot`).
        drop(held);

        // A run whose end the store missed is recorded before the job may end.
        let recorded = match result {
            Err(RunnerError::Unrecorded {
                report,
                completion,
                source,
            }) => {
                if source.is_fenced() {
                    Recorded::Lost
                } else {
                    tracing::warn!(job = %job.uuid, run = %run, "recording the end of the run: {source}; retrying until the store answers");
                    match self
                        .durably(&job, "recording the end of the run", || {
                            store.complete_run(&completion)
                        })
                        .await
                    {
                        Ok(()) => Recorded::Yes(Box::new(Ok(*report))),
                        Err(GaveUp::Lost) => Recorded::Lost,
                        Err(GaveUp::Refused(e) | GaveUp::Stopping(e)) => Recorded::Abandoned(e),
                    }
                }
            }
            Err(RunnerError::Store(e)) if e.is_fenced() => Recorded::Lost,
            other => Recorded::Yes(Box::new(other)),
        };
        let reason = self
            .running
            .lock()
            .expect("running lock")
            .get(&job.id)
            .and_then(|r| r.reason);
        match recorded {
            Recorded::Yes(_) | Recorded::Lost if reason == Some(CancelReason::LostLease) => {
                // The daemon that took the job over closes this run and tells the bus.
                tracing::warn!(job = %job.uuid, "job was taken over by another daemon; run {run} stopped");
                slot.breaker.lock().expect("breaker").inconclusive();
            }
            Recorded::Lost => {
                tracing::warn!(job = %job.uuid, "job was taken over by another daemon; nothing recorded for run {run}");
                slot.breaker.lock().expect("breaker").inconclusive();
            }
            Recorded::Abandoned(e) => {
                tracing::error!(job = %job.uuid, run = %run, "the end of the run could not be recorded ({e}); the job is left to its lease, and the daemon that recovers it marks the run crashed");
                slot.breaker.lock().expect("breaker").inconclusive();
            }
            Recorded::Yes(result) => {
                let (end, summary) = self.decide(&slot, &job, run, &result, reason);
                // The run message is committed with the job's end (the store's outbox), so
                // it goes out exactly when the end is recorded, even across a restart.
                let body = summary.as_ref().and_then(|s| serde_json::to_string(s).ok());
                if self.end_durably(&job, &fence, &end, body.as_deref()).await
                    && let Some(summary) = summary
                {
                    self.metrics.run_ended(&summary.state);
                }
            }
        }
        // Only now: until here the heartbeat kept the claim alive and recovery left it alone.
        self.running.lock().expect("running lock").remove(&job.id);
        self.active.fetch_sub(1, Ordering::SeqCst);
        self.ended.notify_waiters();
        self.wake.notify_one();
    }

    /// A failing run kept its instance because a hold was pending on its task: the hold
    /// takes it (its login and expiry recorded, the reaper leaves it alone until then), or,
    /// when no hold is left for it (another run took it first, or it was released), the
    /// instance is destroyed now.
    async fn hand_to_hold(
        &self,
        slot: &ProviderSlot,
        task: &str,
        run: Uuid,
        kept: &crate::provider::Instance,
        login: Option<&str>,
    ) {
        let login = login.unwrap_or("(no login recorded)");
        let taken = match self.store.pending_hold(task).await {
            Ok(Some(h)) => match self.store.take_hold(h.id, run, login).await {
                Ok(true) => Some(h),
                Ok(false) => None,
                Err(e) => {
                    tracing::warn!(run = %run, "taking hold {}: {e}", h.id);
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(run = %run, "reading the holds of {task}: {e}");
                None
            }
        };
        match taken {
            Some(h) => {
                self.pending_holds.lock().expect("holds lock").remove(task);
                tracing::info!(run = %run, instance = %kept.id, hold = h.id, "held for {}: log in with: {login}", crate::util::human_duration(Duration::from_secs(h.hold_s)));
            }
            None => {
                if let Err(e) = slot.provider.delete(&kept.id).await {
                    tracing::warn!(run = %run, instance = %kept.id, "destroying an instance no hold took: {e}; the reaper will remove it");
                }
            }
        }
    }

    /// Which tasks have a hold waiting for a failing run, for the runs that start next.
    async fn refresh_pending_holds(&self) {
        match self.store.holds(true).await {
            Ok(holds) => {
                *self.pending_holds.lock().expect("holds lock") = holds
                    .into_iter()
                    .filter(|h| h.run_uuid.is_none())
                    .map(|h| h.task)
                    .collect();
            }
            Err(e) => tracing::debug!("reading holds: {e}"),
        }
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
                slot.breaker.lock().expect("breaker").inconclusive();
                return (
                    JobEnd::Done {
                        state: RunState::Failed,
                        outcome: None,
                        error: Some(m.clone()),
                    },
                    None,
                );
            }
            Err(e) => {
                // This host's trouble (store, keys, disk), not the provider's: a probe that
                // ends here says nothing about the provider.
                slot.breaker.lock().expect("breaker").inconclusive();
                return (retry(format!("ferrotron could not run the job: {e}")), None);
            }
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
            RunState::Cancelled if reason == Some(CancelReason::Shutdown) => {
                slot.breaker.lock().expect("breaker").inconclusive();
                JobEnd::Requeue {
                    not_before: OffsetDateTime::now_utc(),
                    error: Some("requeued: the daemon shut down during the run".into()),
                    free_attempt: true,
                }
            }
            RunState::Cancelled => {
                slot.breaker.lock().expect("breaker").inconclusive();
                JobEnd::Done {
                    state: RunState::Cancelled,
                    outcome: None,
                    error: if reason == Some(CancelReason::Requested) {
                        Some("cancelled on request".into())
                    } else {
                        report.error.clone()
                    },
                }
            }
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

    /// Ends the job in the store, retrying while the store is away. True: it ended here
    /// (and only then may the run be announced).
    async fn end_durably(
        &self,
        job: &Job,
        fence: &Fence,
        end: &JobEnd,
        announce: Option<&str>,
    ) -> bool {
        match self
            .durably(job, "recording the end of the job", || {
                self.store.end_job_announcing(fence, end, announce)
            })
            .await
        {
            Ok(true) => true,
            Ok(false) | Err(GaveUp::Lost) => {
                tracing::warn!(job = %job.uuid, "job was taken over by another daemon before it ended here");
                false
            }
            Err(GaveUp::Refused(e)) => {
                tracing::error!(job = %job.uuid, "the store refused the end of the job ({e}); it is left to its lease");
                false
            }
            Err(GaveUp::Stopping(e)) => {
                tracing::warn!(job = %job.uuid, "stopping while the store is away ({e}): the end of the job is left to its lease and the next daemon's recovery");
                false
            }
        }
    }

    /// Runs `op` until it succeeds, trying again while the store is unreachable: 0.2 s,
    /// doubling up to 30 s, jittered, each try bounded by [`STORE_CALL`]. Gives up when the
    /// write is refused (not an outage), when the claim on the job is lost, or once the
    /// daemon is stopping and the store stayed away for `final_write_grace_s` more.
    async fn durably<T, F, Fut>(&self, job: &Job, what: &str, mut op: F) -> Result<T, GaveUp>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut wait = Duration::from_millis(200);
        let mut stopping_since: Option<Instant> = None;
        let mut stop = self.stop.subscribe();
        let mut failures = 0u32;
        loop {
            // A stopping daemon gives each try less time: its shutdown is bounded.
            let limit = if self.stopping.load(Ordering::SeqCst) {
                STORE_CALL_STOPPING
            } else {
                STORE_CALL
            };
            let err = match tokio::time::timeout(limit, op()).await {
                Ok(Ok(v)) => {
                    if failures > 0 {
                        tracing::info!(job = %job.uuid, "{what}: done after {failures} failed tries");
                    }
                    return Ok(v);
                }
                Ok(Err(e)) if e.is_fenced() => return Err(GaveUp::Lost),
                Ok(Err(e)) if !e.is_transient() => return Err(GaveUp::Refused(e.to_string())),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("the store did not answer within {} s", limit.as_secs()),
            };
            failures += 1;
            if self.claim_lost(job.id) {
                return Err(GaveUp::Lost);
            }
            if self.stopping.load(Ordering::SeqCst) {
                let since = *stopping_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.cfg.final_write_grace() {
                    return Err(GaveUp::Stopping(err));
                }
            }
            tracing::warn!(job = %job.uuid, "{what}: {err}; trying again in {:.1} s", wait.as_secs_f64());
            tokio::select! {
                _ = tokio::time::sleep(jittered(wait)) => {}
                // A shutdown starts the bounded part at once.
                _ = stop.changed() => {}
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }

    /// Whether the heartbeat found the claim on `job_id` taken over.
    fn claim_lost(&self, job_id: i64) -> bool {
        self.running
            .lock()
            .expect("running lock")
            .get(&job_id)
            .is_some_and(|r| r.reason == Some(CancelReason::LostLease))
    }

    /// The runner's event sink for one job: the run's state → the job's, instance gauge.
    fn sink(self: &Arc<Self>, job_id: i64, provider: &str) -> crate::runner::EventSink {
        let me = Arc::downgrade(self);
        let provider = provider.to_string();
        let kill_at = std::env::var(FAULT_KILL_AT).ok().filter(|p| !p.is_empty());
        Arc::new(move |e: &Event| {
            if let (Some(at), Event::PhaseStarted { name }) = (&kill_at, e)
                && (name == at || name.strip_prefix("action ").is_some() && at == "action")
            {
                // Fault injection (tests/faults.rs): the daemon dies here like a crash would,
                // with no chance to clean up anything.
                tracing::error!("{FAULT_KILL_AT}={at}: killing this daemon with SIGKILL");
                // SAFETY: kill(2) on this very process.
                unsafe { libc::kill(std::process::id() as i32, libc::SIGKILL) };
            }
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
            self.flush_states(STORE_CALL).await;
            let _ = tokio::time::timeout(STORE_CALL, self.act_on_cancel_requests()).await;
            let _ = tokio::time::timeout(STORE_CALL, self.refresh_pending_holds()).await;
            match tokio::time::timeout(
                STORE_CALL,
                self.store.renew_daemon(&self.daemon_id, &self.instance),
            )
            .await
            {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    let why = format!(
                        "daemon id `{}` was taken over by another process (it found this one silent for longer than a lease and recovered its jobs): stopping",
                        self.daemon_id
                    );
                    tracing::error!("{why}");
                    self.stopping.store(true, Ordering::SeqCst);
                    let _ = self.stop.send(true);
                    self.fatal.send_replace(Some(why));
                }
                Ok(Err(e)) => tracing::warn!("renewing the daemon id: {e}"),
                Err(_) => tracing::warn!("renewing the daemon id: the store did not answer"),
            }
            // Exactly the claims this daemon still works on, ending ones included.
            let asked = Instant::now();
            let fences: Vec<Fence> = self
                .running
                .lock()
                .expect("running lock")
                .values()
                .map(|r| r.fence.clone())
                .collect();
            if fences.is_empty() {
                continue;
            }
            let held: HashSet<Fence> = match tokio::time::timeout(
                STORE_CALL,
                self.store
                    .heartbeat(&self.daemon_id, &fences, self.cfg.lease()),
            )
            .await
            {
                Ok(Ok(held)) => held.into_iter().collect(),
                Ok(Err(e)) => {
                    tracing::warn!("renewing leases: {e}");
                    continue;
                }
                Err(_) => {
                    tracing::warn!("renewing leases: the store did not answer");
                    continue;
                }
            };
            let mut running = self.running.lock().expect("running lock");
            for (id, r) in running.iter_mut() {
                // A job launched after the renewal began was claimed after it, or while
                // it ran: its absence from the answer proves nothing.
                if !held.contains(&r.fence)
                    && r.reason != Some(CancelReason::LostLease)
                    && r.launched < asked
                {
                    tracing::warn!(job_id = id, "lost the claim on a running job: stopping it");
                    r.reason = Some(CancelReason::LostLease);
                    let _ = r.cancel.send(true);
                }
            }
        }
    }

    async fn flush_states(&self, limit: Duration) {
        let batch: Vec<(Fence, RunState)> = {
            let mut running = self.running.lock().expect("running lock");
            running
                .values_mut()
                .filter(|r| r.dirty)
                .map(|r| {
                    r.dirty = false;
                    (r.fence.clone(), r.state)
                })
                .collect()
        };
        match tokio::time::timeout(limit, self.store.set_job_states(&batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("recording job states: {e}"),
            Err(_) => tracing::warn!("recording job states: the store did not answer"),
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
    /// short, it is requeued (bounded attempts) and the run marked crashed. Each takeover is
    /// one transaction that also revokes the old claim's token.
    pub async fn recover(&self, previous_self: Option<&str>) -> usize {
        let jobs =
            match tokio::time::timeout(STORE_CALL, self.store.orphaned_jobs(previous_self)).await {
                Ok(Ok(j)) => j,
                Ok(Err(e)) => {
                    tracing::warn!("looking for orphaned jobs: {e}");
                    return 0;
                }
                Err(_) => {
                    tracing::warn!("looking for orphaned jobs: the store did not answer");
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
            let owner = job.claimed_by.clone().unwrap_or_default();
            let why = format!("daemon {owner} stopped renewing its lease during the run");
            let decide = |cur: &Job, run_state: Option<(RunState, Option<String>)>| match run_state
            {
                Some((s @ (RunState::Finished | RunState::Failed), error)) => JobEnd::Done {
                    state: s,
                    outcome: None,
                    error,
                },
                _ if cur.attempts < cur.max_attempts => JobEnd::Requeue {
                    not_before: OffsetDateTime::now_utc(),
                    error: Some(format!("{why}; requeued")),
                    free_attempt: false,
                },
                _ => JobEnd::Done {
                    state: RunState::Crashed,
                    outcome: None,
                    error: Some(format!(
                        "{why} (attempt {} of {})",
                        cur.attempts, cur.max_attempts
                    )),
                },
            };
            let took = tokio::time::timeout(
                STORE_CALL,
                self.store
                    .recover_job(&job, previous_self, decide, exit::INFRA, &why),
            )
            .await;
            match took {
                Ok(Ok(Some(done))) => {
                    recovered += 1;
                    self.metrics.recovered_jobs.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(job = %job.uuid, run = ?job.current_run(), "recovered an orphaned job: {:?}", done.end);
                    if done.run_closed {
                        self.metrics.run_ended("crashed");
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(job = %job.uuid, "recovering: {e}"),
                Err(_) => tracing::warn!(job = %job.uuid, "recovering: the store did not answer"),
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
            // A run this daemon is still ending may have just kept its instance for a hold.
            let ending: HashSet<Uuid> = self
                .running
                .lock()
                .expect("running lock")
                .values()
                .map(|r| r.run)
                .collect();
            for f in &mut findings {
                if f.verdict == Verdict::Leaked
                    && f.instance
                        .meta
                        .as_ref()
                        .is_some_and(|m| ending.contains(&m.run_uuid))
                {
                    f.verdict = Verdict::Live;
                }
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
/// Runs `fut` as a task of its own, so that a panic in one run (a bug, a value nobody
/// foresaw) ends that run as a crash the scheduler ends and retries, instead of leaving its
/// job claimed forever with the heartbeat renewing the lease.
async fn guarded<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    tokio::spawn(fut).await.map_err(|e| {
        let why = if e.is_panic() {
            let p = e.into_panic();
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into())
        } else {
            e.to_string()
        };
        format!("ferrotron bug: the run panicked: {why}")
    })
}

#[cfg(test)]
mod guard {
    #[tokio::test]
    async fn a_panicking_run_becomes_an_error() {
        assert_eq!(super::guarded(async { 7 }).await, Ok(7));
        let err = super::guarded(async {
            if std::hint::black_box(true) {
                panic!("boom at {}", 3);
            }
            1
        })
        .await
        .unwrap_err();
        assert!(err.contains("the run panicked: boom at 3"), "{err}");
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
                    cleanup_slot: None,
                };
                let req = crate::runner::RunRequest { uuid: uuid::Uuid::now_v7(), formula, item: String::new(), item_type: String::new(), arch: String::new(), jobid: String::new(), owner: String::new(), image: String::new(), task_timeout: std::time::Duration::from_secs(1), spawn_attempts: 1, artifacts_cap: 1, limits: Default::default(), keep_instance: false, keep_if_failed: false, links: None };
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
