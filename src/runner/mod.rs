//! Drives one job through its phases: provision, upload, actions, collect, destroy, store.
//!
//! Invariants:
//! - an instance that was created is destroyed, whatever happens after (success, failure,
//!   timeout, cancellation, an error in ferrotron), unless the caller asked to keep it;
//! - every phase is timed and every spawn attempt recorded, on the run record and in the log;
//! - nothing the task produces is written outside `<data-dir>/artifacts/<uuid>/`.

pub mod actions;
pub mod event;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::watch;
use uuid::Uuid;

use crate::guest::keys::RunKeys;
use crate::guest::{self, Command, Session, transfer};
use crate::provider::{Access, HostKey, Instance, InstanceMeta, InstanceSpec, Provider};
use crate::results::CheckResult;
use crate::store::{Attempt, NewRun, Phase, RunCompletion, RunParams, RunState, Store};
use crate::task::{Formula, Vars, snapshot};

use actions::{ActionContext, ActionError, Layout, TaskState};
pub use event::Event;

/// Exit statuses of `ferrotron run`, shared with the daemon's run records.
pub mod exit {
    /// The task ran to its end.
    pub const OK: i32 = 0;
    /// The task ran to its end and its `exitcode` directive reported failing results.
    pub const RESULTS_FAILED: i32 = 1;
    /// Bad invocation or formula: nothing ran.
    pub const USAGE: i32 = 2;
    /// The task itself failed: an action errored or timed out.
    pub const TASK_FAILED: i32 = 3;
    /// The infrastructure failed: no machine, lost connection, a bug in ferrotron.
    pub const INFRA: i32 = 4;
    /// Interrupted by a signal.
    pub const CANCELLED: i32 = 130;
}

/// The task snapshots of this process ([`snapshot::Cache`]): a run whose task directory
/// is unchanged since the last run of it only looks at the files' metadata.
static TASK_SNAPSHOTS: std::sync::LazyLock<snapshot::Cache> =
    std::sync::LazyLock::new(snapshot::Cache::default);

/// One job, fully described.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub uuid: Uuid,
    pub formula: Formula,
    pub item: String,
    pub item_type: String,
    pub arch: String,
    pub jobid: String,
    /// Who runs it: a daemon id, or `run@HOST` for the command line.
    pub owner: String,
    pub image: String,
    pub task_timeout: Duration,
    pub spawn_attempts: u32,
    /// Bytes of artifacts collected at most.
    pub artifacts_cap: u64,
    /// What the guest may make the host keep or wait for, besides the artifacts' bytes.
    pub limits: GuestLimits,
    /// `--no-destroy`: leave the instance running and say how to reach it.
    pub keep_instance: bool,
    /// Keep it only if the task fails (a hold waits for this task's next failing run);
    /// the report says how to log in.
    pub keep_if_failed: bool,
    /// Where the farm serves this run; `None` (the command line): results link to the
    /// local artifacts directory with `file://` URLs.
    pub links: Option<RunLinks>,
}

/// Public URLs of one run, for the `ref_url` of its results (what Greenwave and Bodhi show).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLinks {
    /// The run's page: the `ref_url` of results that name no artifact.
    pub page: String,
    /// Below it, the run's artifacts as the task wrote them.
    pub artifacts: String,
}

/// Caps on what a guest can make the host store or wait for (README: "The guest
/// boundary"). The artifacts' byte cap is per task, in [`RunRequest::artifacts_cap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLimits {
    /// How long collecting the artifacts may take: a guest whose `tar` never ends must not
    /// hold the machine, the slot and the lease.
    pub collect_timeout: Duration,
    /// Bytes of run log (`ferrotron.log`) kept; task output past it is dropped, marked.
    pub log_bytes: u64,
    /// Entries an artifacts archive may hold.
    pub archive_entries: u64,
}

impl Default for GuestLimits {
    fn default() -> Self {
        GuestLimits {
            collect_timeout: Duration::from_secs(600),
            log_bytes: 100 * 1024 * 1024,
            archive_entries: transfer::Caps::DEFAULT_ENTRIES,
        }
    }
}

impl RunRequest {
    /// What the run record keeps of this request.
    pub fn params(&self) -> RunParams {
        RunParams {
            formula: self.formula.path.display().to_string(),
            jobid: self.jobid.clone(),
            image: self.image.clone(),
            task_timeout_s: self.task_timeout.as_secs(),
            keep_instance: self.keep_instance,
            other: Default::default(),
            ..Default::default()
        }
    }
}

/// What happened, for the terminal, `--format json` and the caller's exit status.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub uuid: Uuid,
    pub task: String,
    pub item: String,
    #[serde(rename = "type")]
    pub item_type: String,
    pub arch: String,
    pub backend: String,
    pub state: RunState,
    pub exit_code: i32,
    pub error: Option<String>,
    pub phases: Vec<PhaseReport>,
    pub attempts: usize,
    pub results: Vec<CheckResult>,
    pub artifacts_dir: PathBuf,
    pub log: PathBuf,
    pub refused_artifacts: Vec<(String, String)>,
    /// Set when the instance was kept (`--no-destroy`, or a failing run with
    /// `keep_if_failed`), with how to log in to it.
    pub kept_instance: Option<Instance>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_login: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PhaseReport {
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub duration_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The request cannot run as given; nothing was created.
    #[error("{0}")]
    Invalid(String),
    /// The run panicked (a ferrotron bug); caught by the scheduler's guard.
    #[error("{0}")]
    Panicked(String),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    /// The run ended (its instance is gone) but the store refused or missed its final
    /// record; `completion` is what to write again once the store is back.
    #[error("the run ended ({}) but its end was not recorded: {source}", report.state)]
    Unrecorded {
        report: Box<RunReport>,
        completion: Box<crate::store::RunCompletion>,
        #[source]
        source: crate::store::StoreError,
    },
    #[error("generating the run's SSH keys: {0}")]
    Keys(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;

/// How long the informational state writes of a run may wait for the store.
const STATE_WRITE_LIMIT: Duration = Duration::from_secs(5);

/// How long the run's final record may wait for the store before the caller gets it back
/// to write again ([`RunnerError::Unrecorded`]); longer than the pool's acquire timeout.
const FINAL_WRITE_LIMIT: Duration = Duration::from_secs(40);

/// Runs one [`RunRequest`] through its phases: record the run, take an instance from the
/// provider (spawn retries), connect, upload the task, run its actions with live output,
/// collect artifacts and results, destroy the instance, and record how it ended.
///
/// Contract: `run` returns a report however the task ended (an `Err` is an invalid request,
/// keys that cannot be made, or a store write that failed); the
/// instance is destroyed in every outcome unless `keep_instance`; the run's state changes
/// go to the store and, as [`Event::State`], to the sink, which is how the scheduler learns
/// them. Cancel it through the `watch` channel; teardown still runs.
pub struct Runner {
    pub provider: Arc<dyn Provider>,
    pub store: Store,
    /// Runs keep artifacts and logs in `<data-dir>/artifacts/<uuid>/`, kept instances'
    /// keys in `<data-dir>/keys/`.
    pub data_dir: PathBuf,
    pub sink: EventSink,
    /// Set by the daemon: a run stopped while its instance was still being made ends at
    /// once, and a task of its own (holding this, the run's capacity slot) waits for the
    /// creation and destroys what it made. Unset (the CLI, which exits after the run),
    /// teardown waits for the creation itself.
    pub cleanup_slot: Option<CleanupSlot>,
}

/// Whatever must outlive a run until every instance it made is gone; dropped when it is.
pub type CleanupSlot = Arc<dyn std::any::Any + Send + Sync>;

/// How the run ended before collection and teardown.
enum Ending {
    Completed,
    TaskFailed(String),
    Infra(String),
    TimedOut(Duration),
    Cancelled,
}

/// How collecting the artifacts ended.
enum Collect {
    /// Collected, or nothing to collect.
    Done,
    /// The guest sent more than its caps or took longer than the deadline: the task's doing.
    TaskFault(String),
    /// ferrotron or the machine failed underneath.
    Failed(String),
}

impl std::fmt::Display for Collect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Collect::Done => f.write_str("collected"),
            Collect::TaskFault(e) | Collect::Failed(e) => f.write_str(e),
        }
    }
}

/// The run log, cut at a cap. Task output stops at the cap less a reserve; ferrotron's own
/// lines (phases, notices, the final state) still fit in the reserve, so the end of a
/// flooded run is still explained, and the file never exceeds the cap.
struct RunLog {
    file: std::fs::File,
    written: u64,
    cap: u64,
    truncated: bool,
}

impl RunLog {
    /// Room kept for ferrotron's lines once task output has filled the log.
    const RESERVE: u64 = 256 * 1024;

    fn write(&mut self, event: &Event) {
        let Some(line) = event.line() else { return };
        let len = line.len() as u64 + 1;
        let from_task = matches!(event, Event::Output { .. });
        let limit = if from_task {
            self.cap.saturating_sub(Self::RESERVE)
        } else {
            self.cap
        };
        if self.written + len > limit {
            if from_task && !self.truncated {
                self.truncated = true;
                let mark = format!(
                    "ferrotron: run log truncated: task output past {} bytes is not kept \
                     (guest.log_mib)",
                    limit
                );
                self.put(&mark);
            }
            return;
        }
        self.put(&line);
    }

    fn put(&mut self, line: &str) {
        // A full disk must not stop the run; the terminal still shows the line.
        if writeln!(self.file, "{line}").is_ok() {
            self.written += line.len() as u64 + 1;
        }
    }
}

/// Mutable state of one run, kept outside the body future so that a timeout or a signal
/// (which drops the body) cannot lose the instance or the phases measured so far.
type Creation = tokio::task::JoinHandle<Result<Instance, crate::provider::ProviderError>>;

/// How long teardown waits for an interrupted creation to finish, to destroy its instance;
/// past it the instance (it carries the run's metadata) is left to the reaper.
const CREATION_DRAIN: Duration = Duration::from_secs(300);

struct RunCtx {
    log: Mutex<RunLog>,
    sink: EventSink,
    phases: Mutex<Vec<Phase>>,
    instance: Mutex<Option<Instance>>,
    /// An instance being made. Its creation runs as a task of its own, so a run cancelled
    /// (or timed out) half-way through it does not drop a creation that carries on below
    /// (libvirt's calls run on blocking threads, a cloud keeps building): teardown waits for
    /// it and destroys what it made.
    creating: tokio::sync::Mutex<Option<Creation>>,
    session: Mutex<Option<Arc<dyn Session>>>,
    task: Mutex<TaskState>,
    attempts: Mutex<usize>,
    keys: RunKeys,
    /// The task's snapshot (`task::snapshot`): what the upload ships.
    task_archive: PathBuf,
}

impl RunCtx {
    fn emit(&self, event: Event) {
        if let Ok(mut log) = self.log.lock() {
            log.write(&event);
        }
        (self.sink)(&event);
    }

    /// Moves the run to `state`: its record and the listeners. The record is informational: a
    /// store that is away or slow must not hold the run (and its instance), so the write is
    /// bounded and its failure ignored; the run's end is written with retries.
    async fn enter(&self, store: &Store, uuid: Uuid, state: RunState) {
        let _ = tokio::time::timeout(STATE_WRITE_LIMIT, store.set_run_state(uuid, state)).await;
        self.emit(Event::State(state));
    }

    async fn phase<T, E: std::fmt::Display>(
        &self,
        name: &str,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        self.emit(Event::PhaseStarted { name: name.into() });
        let started_at = OffsetDateTime::now_utc();
        let t0 = Instant::now();
        let r = fut.await;
        let duration = t0.elapsed();
        self.phases.lock().expect("phases lock").push(Phase {
            name: name.into(),
            started_at,
            duration,
        });
        self.emit(Event::PhaseFinished {
            name: name.into(),
            duration,
            ok: r.is_ok(),
        });
        r
    }

    fn session(&self) -> Option<Arc<dyn Session>> {
        self.session.lock().expect("session lock").clone()
    }
}

/// Variables every formula may use before any action exported anything.
pub fn builtin_variables(item_type: &str) -> Vec<String> {
    let mut names: Vec<String> = [
        "workdir",
        "artifactsdir",
        "uuid",
        "arch",
        "jobid",
        "item",
        "item_type",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    if !item_type.is_empty() && !names.iter().any(|n| n == item_type) {
        names.push(item_type.to_string());
    }
    names
}

/// Checks a request against its formula before anything is created.
pub fn validate(req: &RunRequest) -> Result<(), RunnerError> {
    let builtins = builtin_variables(&req.item_type);
    if builtins[..7].iter().any(|n| n == &req.item_type) {
        return Err(RunnerError::Invalid(format!(
            "item type `{}` clashes with the built-in variable of that name; pick another -t",
            req.item_type
        )));
    }
    for arg in &req.formula.input_args {
        if !builtins.iter().any(|b| b == arg) {
            let given = if req.item_type.is_empty() {
                "no item type (-t)".to_string()
            } else {
                format!("item type `{}`", req.item_type)
            };
            return Err(RunnerError::Invalid(format!(
                "{}: task expects input `{arg}` (input.args), but this run has {given}; \
                 run it with `-t {arg} -i ITEM`",
                req.formula.path.display(),
            )));
        }
    }
    let names: Vec<&str> = builtins.iter().map(String::as_str).collect();
    req.formula
        .check_variables(&names)
        .map_err(|e| RunnerError::Invalid(e.to_string()))
}

impl Runner {
    pub async fn run(
        &self,
        req: RunRequest,
        mut cancel: watch::Receiver<bool>,
    ) -> Result<RunReport, RunnerError> {
        validate(&req)?;
        let keys = RunKeys::generate().map_err(|e| RunnerError::Keys(e.to_string()))?;
        let run_dir = self.data_dir.join("artifacts").join(req.uuid.to_string());
        let artifacts_dir = run_dir.join("task");
        let log_path = run_dir.join("ferrotron.log");
        std::fs::create_dir_all(&run_dir).map_err(|source| RunnerError::Io {
            context: format!("creating {}", run_dir.display()),
            source,
        })?;
        let log = std::fs::File::create(&log_path).map_err(|source| RunnerError::Io {
            context: format!("creating {}", log_path.display()),
            source,
        })?;
        // The task as it runs, kept by hash for reruns; the upload ships these same bytes.
        let tasks_dir = self.data_dir.join("tasks");
        let (task_dir, kept_in) = (req.formula.dir.clone(), tasks_dir.clone());
        let image = PathBuf::from(&req.image);
        let (task_archive, made) = tokio::task::spawn_blocking(move || {
            let sha = TASK_SNAPSHOTS.snapshot(&task_dir, &kept_in);
            (sha, crate::base_image::provenance(&image))
        })
        .await
        .map_err(|e| RunnerError::Io {
            context: "packing the task".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let task_archive = task_archive.map_err(|source| RunnerError::Io {
            context: format!("packing the task directory {}", req.formula.dir.display()),
            source,
        })?;
        let mut params = req.params();
        params.task_sha256 = task_archive.clone();
        if let Some(made) = made {
            params.image_recipe = made.recipe;
            params.image_recipe_sha256 = made.recipe_sha256;
        }
        self.store
            .create_run(&NewRun {
                uuid: req.uuid,
                task: req.formula.checkname(),
                item: req.item.clone(),
                item_type: req.item_type.clone(),
                arch: req.arch.clone(),
                backend: self.provider.kind().to_string(),
                params: params.to_value(),
                log_path: log_path.display().to_string(),
                artifacts_dir: artifacts_dir.display().to_string(),
                owner: Some(req.owner.clone()),
            })
            .await?;

        let cx = RunCtx {
            log: Mutex::new(RunLog {
                file: log,
                written: 0,
                cap: req.limits.log_bytes,
                truncated: false,
            }),
            sink: self.sink.clone(),
            phases: Mutex::default(),
            instance: Mutex::default(),
            creating: Default::default(),
            session: Mutex::default(),
            task: Mutex::default(),
            attempts: Mutex::new(0),
            keys,
            task_archive: snapshot::path(&tasks_dir, &task_archive).expect("a hash pack made"),
        };
        cx.emit(Event::Notice(format!(
            "run {}: {} on item `{}` (type `{}`, arch {}), backend {}, image {}",
            req.uuid,
            req.formula.checkname(),
            req.item,
            req.item_type,
            req.arch,
            self.provider.kind(),
            req.image,
        )));
        if !self.provider.capabilities().isolated {
            cx.emit(Event::Notice(format!(
                "{} backend: the task runs on this host as you, with no isolation",
                self.provider.kind()
            )));
        }

        let ending = if *cancel.borrow() {
            Ending::Cancelled
        } else {
            tokio::select! {
                // Boxed here and below: a run spends its life parked in one phase, and an
                // inline state machine would hold room for every phase at once (thousands
                // of runs are in flight in a daemon).
                e = Box::pin(self.body(&req, &cx)) => e,
                _ = tokio::time::sleep(req.task_timeout) => Ending::TimedOut(req.task_timeout),
                _ = cancel.wait_for(|c| *c) => Ending::Cancelled,
            }
        };

        let mut refused = Vec::new();
        let mut ending = ending;
        let collected = if matches!(ending, Ending::Cancelled) {
            Collect::Done
        } else {
            // Cancel still counts while collecting (the guest's tar may never end).
            tokio::select! {
                c = Box::pin(self.collect(&req, &cx, &artifacts_dir, &mut refused)) => c,
                Ok(_) = cancel.wait_for(|c| *c) => {
                    ending = Ending::Cancelled;
                    Collect::Done
                }
            }
        };
        // The task's own failure (not the infrastructure's, not a cancel): what a hold waits for.
        let task_failed = matches!(ending, Ending::TaskFailed(_) | Ending::TimedOut(_))
            || matches!(
                (&ending, &collected),
                (Ending::Completed, Collect::TaskFault(_))
            );
        let keep = req.keep_instance || (req.keep_if_failed && task_failed);
        let (kept, kept_login) = Box::pin(self.teardown(&req, &cx, keep)).await.unzip();

        let task = std::mem::take(&mut *cx.task.lock().expect("task lock"));
        let (state, exit_code, error) = match (ending, collected) {
            (Ending::Completed, Collect::Done) => {
                (RunState::Finished, task.exit_code.unwrap_or(exit::OK), None)
            }
            (Ending::Completed, Collect::TaskFault(e)) => (
                RunState::Failed,
                exit::TASK_FAILED,
                Some(format!("collecting artifacts: {e} (the task's doing)")),
            ),
            (Ending::Completed, Collect::Failed(e)) => (
                RunState::Crashed,
                exit::INFRA,
                Some(format!("collecting artifacts failed: {e}")),
            ),
            (Ending::TaskFailed(e), _) => (RunState::Failed, exit::TASK_FAILED, Some(e)),
            (Ending::TimedOut(d), _) => (
                RunState::Failed,
                exit::TASK_FAILED,
                Some(format!(
                    "task exceeded its timeout of {}",
                    event::human_duration(d)
                )),
            ),
            (Ending::Infra(e), _) => (RunState::Crashed, exit::INFRA, Some(e)),
            (Ending::Cancelled, _) => (
                RunState::Cancelled,
                exit::CANCELLED,
                Some("interrupted".to_string()),
            ),
        };
        if let Some(e) = &error {
            cx.emit(Event::Notice(format!("run {}: {e}", state.as_str())));
        }

        let phases = cx.phases.lock().expect("phases lock").clone();
        let (base, page_url) = match &req.links {
            Some(l) => (l.artifacts.clone(), Some(l.page.clone())),
            None => (format!("file://{}", artifacts_dir.display()), None),
        };
        let completion = RunCompletion {
            uuid: req.uuid,
            results: task.results.clone(),
            ref_url_base: Some(base),
            page_url,
            phases: phases.clone(),
            state,
            exit_code: Some(exit_code),
            error: error.clone(),
        };
        let report = RunReport {
            uuid: req.uuid,
            task: req.formula.checkname(),
            item: req.item.clone(),
            item_type: req.item_type.clone(),
            arch: req.arch.clone(),
            backend: self.provider.kind().to_string(),
            state,
            exit_code,
            error,
            phases: phases
                .iter()
                .map(|p| PhaseReport {
                    name: p.name.clone(),
                    started_at: p.started_at,
                    duration_ms: p.duration.as_secs_f64() * 1000.0,
                })
                .collect(),
            attempts: *cx.attempts.lock().expect("attempts lock"),
            results: task.results,
            artifacts_dir,
            log: log_path,
            refused_artifacts: refused,
            kept_instance: kept,
            kept_login,
        };
        // Results, phases and the final state go in one transaction: a store that fails
        // here leaves nothing half written, and the caller may write `completion` again.
        let written = tokio::time::timeout(FINAL_WRITE_LIMIT, self.store.complete_run(&completion))
            .await
            .unwrap_or_else(|_| {
                Err(crate::store::StoreError::Unanswered {
                    op: format!("recording the end of run {}", req.uuid),
                    after: FINAL_WRITE_LIMIT,
                })
            });
        match written {
            Ok(()) => Ok(report),
            Err(source) => Err(RunnerError::Unrecorded {
                report: Box::new(report),
                completion: Box::new(completion),
                source,
            }),
        }
    }

    /// Everything that may be cut short by a timeout or a signal.
    async fn body(&self, req: &RunRequest, cx: &RunCtx) -> Ending {
        let session = match Box::pin(self.provision(req, cx)).await {
            Ok(s) => s,
            Err(e) => return Ending::Infra(e),
        };
        cx.enter(&self.store, req.uuid, RunState::Running).await;
        let layout = Layout::under(session.root());
        let upload = async {
            let archive =
                tokio::fs::read(&cx.task_archive)
                    .await
                    .map_err(guest::GuestError::io(format!(
                        "reading the task snapshot {}",
                        cx.task_archive.display()
                    )))?;
            transfer::put_archive(session.as_ref(), archive, &layout.workdir).await?;
            let mk = format!(
                "mkdir -p {} {}",
                guest::shell_quote(&layout.artifactsdir),
                guest::shell_quote(&layout.internal)
            );
            match session
                .exec(&Command::new(mk, "/"), &mut |_, _| Ok(()))
                .await?
            {
                0 => Ok(()),
                n => Err(guest::GuestError::Transfer(format!(
                    "creating the artifacts directory exited with {n}"
                ))),
            }
        };
        if let Err(e) = cx.phase("upload", Box::pin(upload)).await {
            return self
                .lost(
                    cx,
                    format!("uploading the task: {e}"),
                    matches!(e, guest::GuestError::OverCap(_)),
                )
                .await;
        }

        let mut vars = Vars::default();
        for (k, v) in [
            ("workdir", layout.workdir.clone()),
            ("artifactsdir", layout.artifactsdir.clone()),
            ("uuid", req.uuid.to_string()),
            ("arch", req.arch.clone()),
            ("jobid", req.jobid.clone()),
            ("item", req.item.clone()),
            ("item_type", req.item_type.clone()),
        ] {
            vars.insert(k.to_string(), v);
        }
        if !req.item_type.is_empty() {
            vars.insert(req.item_type.clone(), req.item.clone());
        }
        let checkname = req.formula.checkname();
        let emit = |e: Event| cx.emit(e);
        let acx = ActionContext {
            session: session.as_ref(),
            layout: &layout,
            checkname: &checkname,
            emit: &emit,
        };
        for (i, action) in req.formula.actions.iter().enumerate() {
            let name = format!("action {}", action.name);
            let mut state = std::mem::take(&mut *cx.task.lock().expect("task lock"));
            let run = actions::run_action(&acx, i, action, &vars, &mut state);
            let r = cx
                .phase(
                    &name,
                    Box::pin(async {
                        match action.timeout {
                            None => run.await,
                            Some(limit) => {
                                tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
                                    Err(ActionError::Task(format!(
                                        "exceeded its timeout of {}",
                                        event::human_duration(limit)
                                    )))
                                })
                            }
                        }
                    }),
                )
                .await;
            *cx.task.lock().expect("task lock") = state;
            match r {
                Ok(value) => {
                    if let Some(var) = &action.export {
                        vars.insert(var.clone(), value);
                    }
                }
                Err(ActionError::Task(e)) => {
                    return Ending::TaskFailed(format!("action `{}` failed: {e}", action.name));
                }
                Err(ActionError::Guest(e)) => {
                    return self
                        .lost(cx, format!("action `{}`: {e}", action.name), false)
                        .await;
                }
            }
        }
        Ending::Completed
    }

    /// Adds the provider's word on the instance to a lost-connection error (it may have been
    /// deleted behind our back, or have powered itself off), and whether the guest did it.
    async fn explain(&self, cx: &RunCtx, error: String) -> (String, bool) {
        let id = cx
            .instance
            .lock()
            .expect("instance lock")
            .as_ref()
            .map(|i| i.id.clone());
        match id {
            Some(id) => match self.provider.explain_loss(&id).await {
                Some(loss) => (format!("{error} ({})", loss.why), loss.by_guest),
                None => (error, false),
            },
            None => (error, false),
        }
    }

    /// How the run ends when the guest failed under an action: the task's failure when the
    /// guest itself caused it (it powered off; `task_caused` for an over-cap answer), else
    /// the infrastructure's, which the scheduler retries and counts against the provider.
    async fn lost(&self, cx: &RunCtx, error: String, task_caused: bool) -> Ending {
        let (error, by_guest) = self.explain(cx, error).await;
        if task_caused || by_guest {
            Ending::TaskFailed(format!("{error}; the task's doing, not retried"))
        } else {
            Ending::Infra(error)
        }
    }

    /// Creates an instance and connects to it, retrying spawns that do not come up.
    async fn provision(&self, req: &RunRequest, cx: &RunCtx) -> Result<Arc<dyn Session>, String> {
        cx.enter(&self.store, req.uuid, RunState::Provisioning)
            .await;
        let attempts = req.spawn_attempts.max(1);
        let mut last_error = String::new();
        for attempt in 1..=attempts {
            *cx.attempts.lock().expect("attempts lock") = attempt as usize;
            let started_at = OffsetDateTime::now_utc();
            let result = Box::pin(self.spawn_once(req, cx)).await;
            let error = result.as_ref().err().map(|(e, _)| e.clone());
            let _ = self
                .store
                .record_attempt(
                    req.uuid,
                    &Attempt {
                        attempt,
                        started_at,
                        finished_at: Some(OffsetDateTime::now_utc()),
                        error: error.clone(),
                    },
                )
                .await;
            match result {
                Ok(session) => return Ok(session),
                Err((e, retry)) => {
                    // A refusal that ends the run is shown whole once, at its end.
                    let shown = if retry {
                        e.as_str()
                    } else {
                        e.lines().next().unwrap_or_default()
                    };
                    cx.emit(Event::Notice(format!(
                        "spawn attempt {attempt}/{attempts} failed: {shown}"
                    )));
                    last_error = e;
                    // A half-made instance is torn down before the next try.
                    self.destroy(cx).await;
                    if !retry {
                        return Err(format!(
                            "no usable instance (not retried, retrying cannot help): {last_error}"
                        ));
                    }
                    if attempt < attempts {
                        // Jittered, so that runs refused together do not retry together.
                        let backoff = Duration::from_secs(1 << attempt.min(5))
                            + Duration::from_millis(rand::random_range(0..1000));
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
        }
        Err(format!(
            "no usable instance after {attempts} attempt(s): {last_error}"
        ))
    }

    /// One spawn; an error says whether another attempt may help.
    async fn spawn_once(
        &self,
        req: &RunRequest,
        cx: &RunCtx,
    ) -> Result<Arc<dyn Session>, (String, bool)> {
        let spec = InstanceSpec {
            meta: InstanceMeta {
                run_uuid: req.uuid,
                owner: req.owner.clone(),
                image: req.image.clone(),
                created_at: OffsetDateTime::now_utc(),
            },
            client_public_key: cx.keys.client_public(),
            host_private_key_openssh: cx.keys.host_private_openssh(),
            host_public_key: cx.keys.host_public(),
        };
        let provider = self.provider.clone();
        let mut creating = cx.creating.lock().await;
        *creating = Some(tokio::spawn(async move { provider.create(&spec).await }));
        let instance = cx
            .phase("clone", async {
                let joined = creating.as_mut().expect("just set").await;
                // Finished: nothing left for teardown to wait for.
                *creating = None;
                joined.unwrap_or_else(|e| {
                    Err(crate::provider::ProviderError::Permanent(format!(
                        "creating the instance failed: {e}"
                    )))
                })
            })
            .await
            .map_err(|e| {
                let retry = !matches!(e, crate::provider::ProviderError::Permanent(_));
                (e.to_string(), retry)
            })?;
        drop(creating);
        *cx.instance.lock().expect("instance lock") = Some(instance.clone());
        cx.emit(Event::Instance {
            id: instance.id.clone(),
            held: true,
        });
        let session = cx
            .phase("boot", Box::pin(connect(&instance, &cx.keys)))
            .await
            .map_err(|e| (e.to_string(), !e.retrying_cannot_help()))?;
        for notice in session.notices() {
            cx.emit(Event::Notice(notice));
        }
        *cx.session.lock().expect("session lock") = Some(session.clone());
        Ok(session)
    }

    /// Downloads the artifacts directory, within the run's caps and collection deadline.
    async fn collect(
        &self,
        req: &RunRequest,
        cx: &RunCtx,
        into: &Path,
        refused: &mut Vec<(String, String)>,
    ) -> Collect {
        let Some(session) = cx.session() else {
            return Collect::Done; // nothing ran, nothing to collect
        };
        cx.enter(&self.store, req.uuid, RunState::Collecting).await;
        let remote = Layout::under(session.root()).artifactsdir;
        let caps = transfer::Caps {
            bytes: req.artifacts_cap,
            entries: req.limits.archive_entries,
            path_bytes: transfer::Caps::DEFAULT_PATH_BYTES,
        };
        let limit = req.limits.collect_timeout;
        let got = cx
            .phase("collect", async {
                match tokio::time::timeout(
                    limit,
                    transfer::get_dir(session.as_ref(), &remote, into, &caps),
                )
                .await
                {
                    Ok(r) => r.map_err(|e| match e {
                        guest::GuestError::OverCap(m) => Collect::TaskFault(m),
                        e => Collect::Failed(e.to_string()),
                    }),
                    Err(_) => Err(Collect::TaskFault(format!(
                        "the guest did not finish sending its artifacts within {} \
                         (guest.collect_timeout_s)",
                        event::human_duration(limit)
                    ))),
                }
            })
            .await;
        match got {
            Ok(c) => {
                for (path, why) in &c.refused {
                    cx.emit(Event::Notice(format!("artifact refused: {path}: {why}")));
                }
                refused.extend(c.refused);
                Collect::Done
            }
            Err(Collect::Failed(e)) => {
                let (e, by_guest) = self.explain(cx, e).await;
                cx.emit(Event::Notice(format!("collecting artifacts failed: {e}")));
                if by_guest {
                    Collect::TaskFault(e)
                } else {
                    Collect::Failed(e)
                }
            }
            Err(other) => other,
        }
    }

    /// Destroys the instance unless it is to be kept; returns the kept instance and how to
    /// log in to it.
    async fn teardown(
        &self,
        req: &RunRequest,
        cx: &RunCtx,
        keep: bool,
    ) -> Option<(Instance, String)> {
        cx.session.lock().expect("session lock").take();
        self.drain_creation(req, cx).await;
        if keep {
            let kept = cx.instance.lock().expect("instance lock").take()?;
            let how = keep_instructions(&self.data_dir, &kept, &cx.keys)
                .unwrap_or_else(|e| format!("(cannot save its login key: {e})"));
            let why = if req.keep_instance {
                "--no-destroy"
            } else {
                "held (the task failed)"
            };
            cx.emit(Event::Notice(format!(
                "{why}: keeping instance {}; log in with: {how}; \
                 remove it with `ferrotron reap` once its run is over",
                kept.id
            )));
            return Some((kept, how));
        }
        self.destroy(cx).await;
        None
    }

    /// Deals with a creation the run stopped waiting for (cancel, timeout): waits for it and
    /// takes its instance, so that teardown destroys it now instead of leaving it to the
    /// reaper; for the daemon, a task of its own does the wait and the destroy.
    async fn drain_creation(&self, req: &RunRequest, cx: &RunCtx) {
        let Some(handle) = cx.creating.lock().await.take() else {
            return;
        };
        let Some(slot) = self.cleanup_slot.clone() else {
            cx.emit(Event::Notice(
                "the run stopped while its instance was being made: waiting for that to \
                 finish, to destroy it"
                    .into(),
            ));
            match finish_creation(handle).await {
                Ok(Some(instance)) => *cx.instance.lock().expect("instance lock") = Some(instance),
                Ok(None) => {}
                Err(after) => cx.emit(Event::Notice(format!(
                    "the instance was still being made after {}: `ferrotron reap` will remove it",
                    event::human_duration(after)
                ))),
            }
            return;
        };
        cx.emit(Event::Notice(
            "the run stopped while its instance was being made: it is destroyed once made".into(),
        ));
        let (provider, run) = (self.provider.clone(), req.uuid);
        tokio::spawn(async move {
            match finish_creation(handle).await {
                Ok(Some(instance)) => {
                    if let Err(e) = destroy_with_retries(provider.as_ref(), &instance.id).await {
                        tracing::warn!(%run, instance = %instance.id, error = %e,
                            "could not destroy the instance of a stopped run: left to the reaper");
                    }
                }
                Ok(None) => {}
                Err(after) => tracing::warn!(%run, waited_s = after.as_secs(),
                    "the instance of a stopped run is still being made: left to the reaper"),
            }
            drop(slot);
        });
    }

    async fn destroy(&self, cx: &RunCtx) {
        cx.session.lock().expect("session lock").take();
        let Some(instance) = cx.instance.lock().expect("instance lock").take() else {
            return;
        };
        let r = cx
            .phase(
                "destroy",
                destroy_with_retries(self.provider.as_ref(), &instance.id),
            )
            .await;
        cx.emit(Event::Instance {
            id: instance.id.clone(),
            held: false,
        });
        if let Err(e) = r {
            // The instance carries our metadata: `ferrotron reap` will find it.
            cx.emit(Event::Notice(format!(
                "could not destroy instance {}: {e}; `ferrotron reap` will remove it",
                instance.id
            )));
        }
    }
}

/// Waits, up to [`CREATION_DRAIN`], for a creation its run stopped waiting for: the instance
/// it made, none if it failed (the provider cleaned up), or how long it was waited for.
async fn finish_creation(handle: Creation) -> Result<Option<Instance>, Duration> {
    match tokio::time::timeout(CREATION_DRAIN, handle).await {
        Ok(Ok(Ok(instance))) => Ok(Some(instance)),
        Ok(Ok(Err(_))) | Ok(Err(_)) => Ok(None),
        Err(_) => Err(CREATION_DRAIN),
    }
}

async fn destroy_with_retries(
    provider: &dyn Provider,
    id: &str,
) -> Result<(), crate::provider::ProviderError> {
    let backoff = Duration::from_millis(500);
    crate::util::retry(3, backoff, backoff * 4, || provider.delete(id)).await
}

/// Turns an instance's access data into a session, waiting up to its boot timeout.
pub async fn connect(
    instance: &Instance,
    keys: &RunKeys,
) -> Result<Arc<dyn Session>, guest::GuestError> {
    match &instance.access {
        Access::Local { root } => Ok(Arc::new(guest::local::LocalSession::new(
            root.display().to_string(),
        ))),
        Access::Ssh(target) => {
            let key = match &target.identity {
                Some(path) => Arc::new(russh::keys::load_secret_key(path, None).map_err(|e| {
                    guest::GuestError::Transfer(format!(
                        "cannot read SSH key {}: {e}",
                        path.display()
                    ))
                })?),
                None => keys.client.clone(),
            };
            let root = format!("/var/tmp/ferrotron/{}", instance.meta.run_uuid);
            let session =
                guest::ssh::SshSession::connect(target, key, root, instance.boot_timeout).await?;
            Ok(Arc::new(session))
        }
    }
}

/// Saves what a person needs to log in to a kept instance and returns the command.
fn keep_instructions(
    data_dir: &Path,
    instance: &Instance,
    keys: &RunKeys,
) -> Result<String, guest::GuestError> {
    match &instance.access {
        Access::Local { root } => Ok(format!("its files are in {}", root.display())),
        Access::Ssh(t) => {
            let dir = data_dir.join("keys");
            std::fs::create_dir_all(&dir)
                .map_err(guest::GuestError::io(format!("creating {}", dir.display())))?;
            let key = match &t.identity {
                Some(p) => p.clone(),
                None => {
                    let p = dir.join(format!("{}.key", instance.meta.run_uuid));
                    keys.write_client_key(&p)?;
                    p
                }
            };
            let mut cmd = format!("ssh -i {} -p {}", key.display(), t.port);
            let known_hosts = match &t.host_key {
                HostKey::Pinned(host_key) => {
                    let kh = dir.join(format!("{}.known_hosts", instance.meta.run_uuid));
                    std::fs::write(
                        &kh,
                        format!("[{}]:{} {}\n", t.host, t.port, host_key.trim()),
                    )
                    .map_err(guest::GuestError::io(format!("writing {}", kh.display())))?;
                    kh
                }
                // The file this run checked the key against: ssh then checks the same.
                HostKey::KnownHosts { file, .. } => file.clone(),
            };
            cmd.push_str(&format!(" -o UserKnownHostsFile={}", known_hosts.display()));
            cmd.push_str(&format!(" {}@{}", t.user, t.host));
            Ok(cmd)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::provider::{Capacity, InstanceSpec, Listed, ProviderError};

    /// The local backend, with a creation that carries on when its caller stops waiting, as
    /// libvirt's (blocking threads) and a cloud's (the server keeps building) do.
    struct Detached {
        inner: Arc<dyn Provider>,
        created: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Provider for Detached {
        fn kind(&self) -> &'static str {
            "local"
        }
        async fn create(&self, spec: &InstanceSpec) -> Result<Instance, ProviderError> {
            let (inner, spec, created) = (self.inner.clone(), spec.clone(), self.created.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(600)).await;
                let i = inner.create(&spec).await;
                created.fetch_add(1, Ordering::SeqCst);
                i
            })
            .await
            .expect("creation task")
        }
        async fn delete(&self, id: &str) -> Result<(), ProviderError> {
            self.inner.delete(id).await
        }
        async fn list(&self) -> Result<Vec<Listed>, ProviderError> {
            self.inner.list().await
        }
        async fn capacity(&self) -> Result<Capacity, ProviderError> {
            self.inner.capacity().await
        }
    }

    /// Runs a task on [`Detached`] and cancels it while its instance is being made: the
    /// report, how long the run took, how many instances were made, and the backend.
    async fn cancelled_while_creating(
        cleanup_slot: Option<CleanupSlot>,
    ) -> (RunReport, Duration, Arc<AtomicUsize>, Arc<dyn Provider>) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open("sqlite::memory:").await.unwrap();
        std::fs::write(
            tmp.path().join("runtask.yml"),
            "name: b\ndesc: d\nmaintainer: m\nactions:\n  - name: p\n    dummy: {result: PASS}\n",
        )
        .unwrap();
        let formula = crate::task::Formula::load(tmp.path()).unwrap();
        let inner = crate::provider::build(
            &crate::provider::Spec::Local(Default::default()),
            &crate::provider::Context::new(tmp.path()),
        )
        .await
        .unwrap();
        let created = Arc::new(AtomicUsize::new(0));
        let runner = Runner {
            provider: Arc::new(Detached {
                inner: inner.clone(),
                created: created.clone(),
            }),
            store,
            data_dir: tmp.path().into(),
            sink: Arc::new(|_: &Event| {}),
            cleanup_slot,
        };
        let req = RunRequest {
            uuid: Uuid::now_v7(),
            formula,
            item: "i".into(),
            item_type: "t".into(),
            arch: "noarch".into(),
            jobid: String::new(),
            owner: "test".into(),
            image: String::new(),
            task_timeout: Duration::from_secs(60),
            spawn_attempts: 1,
            artifacts_cap: 1 << 20,
            limits: GuestLimits::default(),
            keep_instance: false,
            keep_if_failed: false,
            links: None,
        };
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let _ = tx.send(true);
        });
        let t0 = std::time::Instant::now();
        let report = runner.run(req, rx).await.unwrap();
        (report, t0.elapsed(), created, inner)
    }

    #[tokio::test]
    async fn an_instance_still_being_made_when_the_run_is_cancelled_is_destroyed() {
        let (report, took, created, backend) = cancelled_while_creating(None).await;
        assert_eq!(report.state, RunState::Cancelled);
        // The run waited for the creation (600 ms) and destroyed what it made.
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert_eq!(created.load(Ordering::SeqCst), 1);
        assert!(backend.list().await.unwrap().is_empty(), "instance leaked");
    }

    #[tokio::test]
    async fn a_daemon_run_cancelled_while_creating_ends_at_once_and_its_slot_outlives_it() {
        let slot: CleanupSlot = Arc::new(());
        let (report, took, created, backend) = cancelled_while_creating(Some(slot.clone())).await;
        assert_eq!(report.state, RunState::Cancelled);
        assert!(
            took < Duration::from_millis(500),
            "the run waited: {took:?}"
        );
        // The slot is held (capacity stays taken) until the instance is made and gone.
        assert_eq!(Arc::strong_count(&slot), 2);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&slot) > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(Arc::strong_count(&slot), 1, "the cleanup never ended");
        assert_eq!(created.load(Ordering::SeqCst), 1);
        assert!(backend.list().await.unwrap().is_empty(), "instance leaked");
    }
}
