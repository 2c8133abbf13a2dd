//! Runs: lifecycle state, phases and attempts.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use time::OffsetDateTime;
use uuid::Uuid;

use super::queue::check_fence;
use super::{Store, StoreError, col, db, duration_micros, from_micros, micros, now_micros};
use crate::results::CheckResult;

/// What the runner knows when a run is created.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub uuid: Uuid,
    pub task: String,
    pub item: String,
    pub item_type: String,
    pub arch: String,
    pub backend: String,
    pub params: serde_json::Value,
    pub log_path: String,
    pub artifacts_dir: String,
    /// The daemon that owns the run (the reaper only touches its own), if any.
    pub owner: Option<String>,
}

/// A run's parameters, as its record keeps them (`runs.params`, JSON). The runner writes
/// them once, from its request; the runs API, the run page and the reproduce command read
/// them back. A field an older record (or an image build's) lacks reads as its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunParams {
    /// The formula file.
    pub formula: String,
    /// The caller's job id (`${jobid}`).
    pub jobid: String,
    /// What the instance booted from (an image path or name; for `--ssh`, the machine).
    pub image: String,
    pub task_timeout_s: u64,
    /// `--no-destroy`.
    pub keep_instance: bool,
    /// sha256 of the task directory as it ran (`task::snapshot`, kept in
    /// `<data-dir>/tasks/`); empty for runs made before snapshots.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub task_sha256: String,
    /// The recipe the booted base image was built from, and that recipe's hash (from the
    /// image's sidecar): what `ferrotron rerun` says to build when the image is missing.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub image_recipe: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub image_recipe_sha256: String,
    /// Whatever else a record carries (an image build's recipe), kept as it was.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl RunParams {
    /// `ferrotron run`'s defaults, which the reproduce command leaves out.
    pub const DEFAULT_JOBID: &'static str = "-1";
    pub const DEFAULT_TASK_TIMEOUT_S: u64 = 7200;
    pub const DEFAULT_SPAWN_ATTEMPTS: u32 = 3;
    pub const DEFAULT_ARTIFACTS_MIB: u64 = 1024;
    pub const DEFAULT_ARCH: &'static str = "noarch";

    /// The record's params; anything unreadable reads as the defaults.
    pub fn from_value(v: &serde_json::Value) -> RunParams {
        RunParams::deserialize(v).unwrap_or_default()
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain fields serialise")
    }
}

impl Default for RunParams {
    fn default() -> Self {
        RunParams {
            formula: String::new(),
            jobid: Self::DEFAULT_JOBID.into(),
            image: String::new(),
            task_timeout_s: Self::DEFAULT_TASK_TIMEOUT_S,
            keep_instance: false,
            task_sha256: String::new(),
            image_recipe: String::new(),
            image_recipe_sha256: String::new(),
            other: Default::default(),
        }
    }
}

/// Where a run is in its life. Stored as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Queued,
    Provisioning,
    Running,
    Collecting,
    Finished,
    Failed,
    Crashed,
    Cancelled,
}

impl RunState {
    pub const ALL: [RunState; 8] = [
        RunState::Queued,
        RunState::Provisioning,
        RunState::Running,
        RunState::Collecting,
        RunState::Finished,
        RunState::Failed,
        RunState::Crashed,
        RunState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Provisioning => "provisioning",
            RunState::Running => "running",
            RunState::Collecting => "collecting",
            RunState::Finished => "finished",
            RunState::Failed => "failed",
            RunState::Crashed => "crashed",
            RunState::Cancelled => "cancelled",
        }
    }

    /// A terminal run never changes again and has no instance.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Finished | RunState::Failed | RunState::Crashed | RunState::Cancelled
        )
    }

    /// A job in one of these states is claimed by a daemon (the queue's `IN_FLIGHT`).
    pub fn is_in_flight(self) -> bool {
        matches!(
            self,
            RunState::Provisioning | RunState::Running | RunState::Collecting
        )
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown run state `{0}` (expected one of queued, provisioning, running, collecting, finished, failed, crashed, cancelled)"
)]
pub struct UnknownRunState(pub String);

impl FromStr for RunState {
    type Err = UnknownRunState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownRunState(s.to_string()))
    }
}

/// The states `live_runs` returns, spelled as in the `runs_live` partial index.
pub(super) const LIVE_RUNS_SQL: &str = "SELECT uuid FROM runs \
     WHERE state IN ('queued', 'provisioning', 'running', 'collecting') ORDER BY id";

/// Everything a run records when it ends, written at once by [`Store::complete_run`].
#[derive(Debug, Clone, PartialEq)]
pub struct RunCompletion {
    pub uuid: Uuid,
    pub results: Vec<CheckResult>,
    /// Results' `ref_url` is this plus their artifact (see [`Store::store_results`]).
    pub ref_url_base: Option<String>,
    /// The `ref_url` of results that name no artifact: the run's page, when it has one.
    pub page_url: Option<String>,
    pub phases: Vec<Phase>,
    pub state: RunState,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
}

/// One timed phase of a run (provision, wait-ssh, upload, run, collect, destroy, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub name: String,
    pub started_at: OffsetDateTime,
    pub duration: Duration,
}

/// One try at running the job (the scheduler retries infrastructure failures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub attempt: u32,
    pub started_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
    pub error: Option<String>,
}

/// A run as stored. Times are UTC, truncated to microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub uuid: Uuid,
    pub task: String,
    pub item: String,
    pub item_type: String,
    pub arch: String,
    pub backend: String,
    pub state: RunState,
    pub exit_code: Option<i32>,
    pub params: serde_json::Value,
    pub error: Option<String>,
    pub log_path: String,
    pub artifacts_dir: String,
    pub owner: Option<String>,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
    pub phases: Vec<Phase>,
    pub attempts: Vec<Attempt>,
}

async fn finish_run_on(
    conn: &mut sqlx::AnyConnection,
    uuid: Uuid,
    state: RunState,
    exit_code: Option<i32>,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let op = || format!("finishing run {uuid} as {state}");
    if !state.is_terminal() {
        return Err(StoreError::Invalid {
            op: op(),
            message: format!("{state} is not a terminal state"),
        });
    }
    let done = sqlx::query(
        "UPDATE runs SET state = $1, exit_code = $2, error = $3, finished_at = $4 \
         WHERE uuid = $5",
    )
    .bind(state.as_str())
    .bind(exit_code)
    .bind(error)
    .bind(now_micros())
    .bind(uuid.to_string())
    .execute(&mut *conn)
    .await
    .map_err(db(op))?;
    if done.rows_affected() == 0 {
        return Err(not_found(uuid));
    }
    Ok(())
}

async fn replace_phases(
    conn: &mut sqlx::AnyConnection,
    uuid: Uuid,
    phases: &[Phase],
) -> Result<(), StoreError> {
    let op = || format!("recording phases of run {uuid}");
    let run_id: i64 = sqlx::query_scalar("SELECT id FROM runs WHERE uuid = $1")
        .bind(uuid.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db(op))?
        .ok_or_else(|| not_found(uuid))?;
    sqlx::query("DELETE FROM run_phases WHERE run_id = $1")
        .bind(run_id)
        .execute(&mut *conn)
        .await
        .map_err(db(op))?;
    for (seq, phase) in (0_i64..).zip(phases) {
        sqlx::query(
            "INSERT INTO run_phases (run_id, seq, name, started_at, duration_us) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(run_id)
        .bind(seq)
        .bind(&phase.name)
        .bind(micros(phase.started_at))
        .bind(duration_micros(phase.duration))
        .execute(&mut *conn)
        .await
        .map_err(db(op))?;
    }
    Ok(())
}

fn not_found(uuid: Uuid) -> StoreError {
    StoreError::NotFound {
        what: "run",
        key: uuid.to_string(),
    }
}

fn opt_time(us: Option<i64>) -> Result<Option<OffsetDateTime>, String> {
    us.map(from_micros).transpose()
}

impl Store {
    /// Records a new run (state `queued`, `created_at` now) and creates its result group
    /// (same uuid, description "TASK on ITEM"; an existing group is kept). One transaction.
    pub async fn create_run(&self, run: &NewRun) -> Result<(), StoreError> {
        let op = || format!("creating run {}", run.uuid);
        let uuid = run.uuid.to_string();
        let mut tx = self.begin().await.map_err(db(op))?;
        if let Some(fence) = &self.fence {
            check_fence(&mut tx, self.dialect, fence, &op()).await?;
        }
        sqlx::query(
            "INSERT INTO result_groups (uuid, description) VALUES ($1, $2) \
             ON CONFLICT (uuid) DO NOTHING",
        )
        .bind(&uuid)
        .bind(format!("{} on {}", run.task, run.item))
        .execute(&mut *tx)
        .await
        .map_err(db(op))?;
        sqlx::query(
            "INSERT INTO runs (uuid, task, item, item_type, arch, backend, state, params, \
             log_path, artifacts_dir, owner, created_at, job_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&uuid)
        .bind(&run.task)
        .bind(&run.item)
        .bind(&run.item_type)
        .bind(&run.arch)
        .bind(&run.backend)
        .bind(RunState::Queued.as_str())
        .bind(run.params.to_string())
        .bind(&run.log_path)
        .bind(&run.artifacts_dir)
        .bind(run.owner.as_deref())
        .bind(now_micros())
        // A farm run's store handle is fenced by its job's claim: that names the job.
        .bind(self.fence.as_ref().map(|f| f.job))
        .execute(&mut *tx)
        .await
        .map_err(db(op))?;
        tx.commit().await.map_err(db(op))
    }

    /// The runs of job `job_id` (one per attempt that got as far as a run), oldest first.
    pub async fn job_runs(&self, job_id: i64) -> Result<Vec<Uuid>, StoreError> {
        let found: Vec<String> =
            sqlx::query_scalar("SELECT uuid FROM runs WHERE job_id = $1 ORDER BY id")
                .bind(job_id)
                .fetch_all(&self.pool)
                .await
                .map_err(db(|| format!("reading the runs of job {job_id}")))?;
        found
            .iter()
            .map(|u| {
                Uuid::parse_str(u).map_err(|e| StoreError::Corrupt {
                    op: format!("reading the runs of job {job_id}"),
                    message: format!("run uuid `{u}`: {e}"),
                })
            })
            .collect()
    }

    /// Moves a run to `state`. `started_at` is set (once) by the first state other than
    /// `queued`; `finished_at` is set to now by a terminal state (and cleared by a
    /// non-terminal one, so it always means "finished").
    pub async fn set_run_state(&self, uuid: Uuid, state: RunState) -> Result<(), StoreError> {
        let op = || format!("setting run {uuid} to {state}");
        let now = now_micros();
        let started = (state != RunState::Queued).then_some(now);
        let finished = state.is_terminal().then_some(now);
        let mut tx = self.begin().await.map_err(db(op))?;
        if let Some(fence) = &self.fence {
            check_fence(&mut tx, self.dialect, fence, &op()).await?;
        }
        let done = sqlx::query(
            "UPDATE runs SET state = $1, started_at = COALESCE(started_at, $2), \
             finished_at = $3 WHERE uuid = $4",
        )
        .bind(state.as_str())
        .bind(started)
        .bind(finished)
        .bind(uuid.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db(op))?;
        if done.rows_affected() == 0 {
            return Err(not_found(uuid));
        }
        tx.commit().await.map_err(db(op))
    }

    /// Ends a run: terminal `state`, exit code, error message, `finished_at` now.
    /// `started_at` stays unset for a run that never left `queued`.
    pub async fn finish_run(
        &self,
        uuid: Uuid,
        state: RunState,
        exit_code: Option<i32>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db(|| format!("finishing run {uuid}")))?;
        finish_run_on(&mut conn, uuid, state, exit_code, error).await
    }

    /// Records the end of a run in ONE transaction: its results, phases and final state (see
    /// [`Store::store_results`], [`Store::record_phases`], [`Store::finish_run`]). Safe to
    /// repeat after an error: a run already terminal is left as it is, so a retry whose first
    /// try committed without an answer stores nothing twice. On a fenced store the write
    /// fails with [`StoreError::Fenced`] once the claim was taken over.
    pub async fn complete_run(&self, c: &RunCompletion) -> Result<(), StoreError> {
        let uuid = c.uuid;
        let op = || format!("recording the end of run {uuid} ({})", c.state);
        let mut tx = self.begin().await.map_err(db(op))?;
        if let Some(fence) = &self.fence {
            check_fence(&mut tx, self.dialect, fence, &op()).await?;
        }
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM runs WHERE uuid = $1")
            .bind(uuid.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(op))?;
        let Some(state) = state else {
            return Err(not_found(uuid));
        };
        if state.parse::<RunState>().is_ok_and(RunState::is_terminal) {
            tx.rollback().await.map_err(db(op))?;
            return Ok(());
        }
        let ids = super::results::insert_run_results(
            &mut tx,
            uuid,
            &c.results,
            c.ref_url_base.as_deref(),
            c.page_url.as_deref(),
        )
        .await?;
        let announced = self.announce_results(&mut tx, &ids).await.map_err(db(op))?;
        replace_phases(&mut tx, uuid, &c.phases).await?;
        finish_run_on(&mut tx, uuid, c.state, c.exit_code, c.error.as_deref()).await?;
        tx.commit().await.map_err(db(op))?;
        if announced {
            self.outbox_committed();
        }
        Ok(())
    }

    /// Replaces the run's phases with `phases` (in order). One transaction.
    pub async fn record_phases(&self, uuid: Uuid, phases: &[Phase]) -> Result<(), StoreError> {
        let op = || format!("recording phases of run {uuid}");
        let mut tx = self.begin().await.map_err(db(op))?;
        replace_phases(&mut tx, uuid, phases).await?;
        tx.commit().await.map_err(db(op))
    }

    /// Inserts or replaces attempt number `attempt.attempt` of the run.
    pub async fn record_attempt(&self, uuid: Uuid, attempt: &Attempt) -> Result<(), StoreError> {
        // INSERT … SELECT needs its WHERE for SQLite to parse the ON CONFLICT clause.
        let done = sqlx::query(
            "INSERT INTO run_attempts (run_id, attempt, started_at, finished_at, error) \
             SELECT id, $1, $2, $3, $4 FROM runs WHERE uuid = $5 \
             ON CONFLICT (run_id, attempt) DO UPDATE SET started_at = excluded.started_at, \
             finished_at = excluded.finished_at, error = excluded.error",
        )
        .bind(i64::from(attempt.attempt))
        .bind(micros(attempt.started_at))
        .bind(attempt.finished_at.map(micros))
        .bind(attempt.error.as_deref())
        .bind(uuid.to_string())
        .execute(&self.pool)
        .await
        .map_err(db(|| {
            format!("recording attempt {} of run {uuid}", attempt.attempt)
        }))?;
        if done.rows_affected() == 0 {
            return Err(not_found(uuid));
        }
        Ok(())
    }

    /// The run with its phases and attempts (three queries), or None.
    pub async fn run(&self, uuid: Uuid) -> Result<Option<RunRecord>, StoreError> {
        let op = || format!("reading run {uuid}");
        let corrupt = |message| StoreError::Corrupt { op: op(), message };
        let mut conn = self.pool.acquire().await.map_err(db(op))?;
        let Some(row) = sqlx::query(
            "SELECT id, uuid, task, item, item_type, arch, backend, state, exit_code, params, \
             error, log_path, artifacts_dir, owner, created_at, started_at, finished_at \
             FROM runs WHERE uuid = $1",
        )
        .bind(uuid.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db(op))?
        else {
            return Ok(None);
        };
        let run_id: i64 = row.try_get("id").map_err(db(op))?;
        let mut run = run_from_row(&row).map_err(corrupt)?;

        let phases = sqlx::query(
            "SELECT name, started_at, duration_us FROM run_phases WHERE run_id = $1 ORDER BY seq",
        )
        .bind(run_id)
        .fetch_all(&mut *conn)
        .await
        .map_err(db(op))?;
        for row in phases {
            run.phases.push(phase_from_row(&row).map_err(corrupt)?);
        }

        let attempts = sqlx::query(
            "SELECT attempt, started_at, finished_at, error FROM run_attempts \
             WHERE run_id = $1 ORDER BY attempt",
        )
        .bind(run_id)
        .fetch_all(&mut *conn)
        .await
        .map_err(db(op))?;
        for row in attempts {
            run.attempts.push(attempt_from_row(&row).map_err(corrupt)?);
        }
        Ok(Some(run))
    }

    /// Uuids of the runs not in a terminal state, oldest first (the reaper keeps their
    /// instances and destroys every other).
    pub async fn live_runs(&self) -> Result<Vec<Uuid>, StoreError> {
        let op = || "listing live runs".to_string();
        let uuids: Vec<String> = sqlx::query_scalar(LIVE_RUNS_SQL)
            .fetch_all(&self.pool)
            .await
            .map_err(db(op))?;
        uuids
            .iter()
            .map(|u| Uuid::parse_str(u).map_err(|e| format!("run uuid `{u}`: {e}")))
            .collect::<Result<_, _>>()
            .map_err(|message| StoreError::Corrupt { op: op(), message })
    }
}

pub(super) fn run_from_row(row: &AnyRow) -> Result<RunRecord, String> {
    let uuid: String = col(row, "uuid")?;
    let state: String = col(row, "state")?;
    let params: String = col(row, "params")?;
    Ok(RunRecord {
        uuid: Uuid::parse_str(&uuid).map_err(|e| format!("run uuid `{uuid}`: {e}"))?,
        task: col(row, "task")?,
        item: col(row, "item")?,
        item_type: col(row, "item_type")?,
        arch: col(row, "arch")?,
        backend: col(row, "backend")?,
        state: state.parse().map_err(|e: UnknownRunState| e.to_string())?,
        exit_code: col(row, "exit_code")?,
        params: serde_json::from_str(&params).map_err(|e| format!("run params: {e}"))?,
        error: col(row, "error")?,
        log_path: col(row, "log_path")?,
        artifacts_dir: col(row, "artifacts_dir")?,
        owner: col(row, "owner")?,
        created_at: from_micros(col(row, "created_at")?)?,
        started_at: opt_time(col(row, "started_at")?)?,
        finished_at: opt_time(col(row, "finished_at")?)?,
        phases: Vec::new(),
        attempts: Vec::new(),
    })
}

fn phase_from_row(row: &AnyRow) -> Result<Phase, String> {
    let duration: i64 = col(row, "duration_us")?;
    Ok(Phase {
        name: col(row, "name")?,
        started_at: from_micros(col(row, "started_at")?)?,
        duration: Duration::from_micros(
            u64::try_from(duration).map_err(|_| format!("negative phase duration {duration}"))?,
        ),
    })
}

fn attempt_from_row(row: &AnyRow) -> Result<Attempt, String> {
    let attempt: i64 = col(row, "attempt")?;
    Ok(Attempt {
        attempt: u32::try_from(attempt).map_err(|_| format!("attempt number {attempt}"))?,
        started_at: from_micros(col(row, "started_at")?)?,
        finished_at: opt_time(col(row, "finished_at")?)?,
        error: col(row, "error")?,
    })
}

#[cfg(test)]
mod tests {
    use super::RunParams;

    #[test]
    fn params_fill_defaults_and_keep_what_they_do_not_know() {
        let p = RunParams::from_value(&serde_json::json!({
            "formula": "tasks/x/runtask.yml", "task_timeout_s": 60, "recipe": "tiny.yaml"
        }));
        assert_eq!(p.formula, "tasks/x/runtask.yml");
        assert_eq!(p.task_timeout_s, 60);
        assert_eq!(p.jobid, RunParams::DEFAULT_JOBID);
        assert!(!p.keep_instance);
        assert_eq!(p.to_value()["recipe"], "tiny.yaml");
        // A record whose params are not an object at all still reads.
        assert_eq!(
            RunParams::from_value(&serde_json::json!("junk")),
            RunParams::default()
        );
        let again = RunParams::from_value(&p.to_value());
        assert_eq!(again, p);
    }
}
