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
mod dispatch;
mod heartbeat;
pub mod intake;
mod job;
mod maintenance;
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
