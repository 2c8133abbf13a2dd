//! Farm control over the queue: the jobs list the jobs page reads, cancelling a queued job,
//! enqueueing a rerun, and holds (Zuul's autohold: keep the instance of the next failing
//! run of a task for a while, so someone can log in and look).
//!
//! A hold is *pending* until a failing run takes it (`run_uuid` set, `expires_at` set), then
//! *active* until it expires or is released. The reaper leaves the instances of active holds
//! alone ([`Store::held_runs`]) and destroys them like any other leak afterwards.

use std::time::Duration;

use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;
use time::OffsetDateTime;
use uuid::Uuid;

use super::queue::{IN_FLIGHT, JOB_COLUMNS, jobs_from_rows};
use super::{Job, NewJob, RunState, Store, StoreError, col, db, from_micros, micros, now_micros};

/// Which jobs the jobs list shows.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Empty: queued and in flight.
    pub states: Vec<RunState>,
    pub task: Option<String>,
    pub pool: Option<String>,
    pub limit: u32,
}

/// The longest hold one may ask for: a forgotten hold costs a machine that long.
pub const MAX_HOLD: Duration = Duration::from_secs(7 * 24 * 3600);

/// `hours` as a duration: positive, finite, at most [`MAX_HOLD`].
pub fn hold_duration(hours: f64) -> Result<Duration, String> {
    if !hours.is_finite() || hours <= 0.0 {
        return Err(format!(
            "hours: `{hours}` is not a positive number of hours"
        ));
    }
    let d = Duration::from_secs_f64((hours * 3600.0).min(MAX_HOLD.as_secs_f64() + 1.0));
    if d > MAX_HOLD {
        return Err(format!(
            "hours: {hours} is longer than the longest hold, {} hours",
            MAX_HOLD.as_secs() / 3600
        ));
    }
    Ok(d.max(Duration::from_secs(1)))
}

/// A hold request as the API or the config makes it.
#[derive(Debug, Clone)]
pub struct NewHold {
    pub task: String,
    pub hold: Duration,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hold {
    pub id: i64,
    pub task: String,
    pub hold_s: u64,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The failing run whose instance is kept; `None` while the hold waits for one.
    pub run_uuid: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// How to log in (`ssh -i … -p … user@host`).
    pub login: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub released_at: Option<OffsetDateTime>,
}

impl Hold {
    /// `pending`, `active`, `expired` or `released`.
    pub fn status(&self, now: OffsetDateTime) -> &'static str {
        match (self.released_at, self.expires_at) {
            (Some(_), _) => "released",
            (None, None) => "pending",
            (None, Some(t)) if t > now => "active",
            (None, Some(_)) => "expired",
        }
    }
}

const HOLD_COLUMNS: &str =
    "id, task, hold_s, reason, created_at, run_uuid, expires_at, login, released_at";

fn hold_from_row(row: &AnyRow) -> Result<Hold, String> {
    let ot = |name: &str| -> Result<Option<OffsetDateTime>, String> {
        col::<Option<i64>>(row, name)?.map(from_micros).transpose()
    };
    let run: Option<String> = col(row, "run_uuid")?;
    let hold_s: i64 = col(row, "hold_s")?;
    Ok(Hold {
        id: col(row, "id")?,
        task: col(row, "task")?,
        hold_s: hold_s.max(0) as u64,
        reason: col(row, "reason")?,
        created_at: from_micros(col(row, "created_at")?)?,
        run_uuid: run
            .map(|r| Uuid::parse_str(&r).map_err(|e| format!("hold run uuid `{r}`: {e}")))
            .transpose()?,
        expires_at: ot("expires_at")?,
        login: col(row, "login")?,
        released_at: ot("released_at")?,
    })
}

fn holds_from_rows(rows: &[AnyRow], op: &str) -> Result<Vec<Hold>, StoreError> {
    rows.iter()
        .map(hold_from_row)
        .collect::<Result<_, _>>()
        .map_err(|message| StoreError::Corrupt {
            op: op.to_string(),
            message,
        })
}

impl Store {
    /// Jobs for the jobs page, oldest first. One statement.
    pub async fn list_jobs(&self, f: &JobFilter) -> Result<Vec<Job>, StoreError> {
        let op = "listing the queue";
        let states = if f.states.is_empty() {
            format!("(state = 'queued' OR {IN_FLIGHT})")
        } else {
            // RunState names are fixed identifiers, never outside text.
            let names: Vec<String> = f
                .states
                .iter()
                .map(|s| format!("'{}'", s.as_str()))
                .collect();
            format!("state IN ({})", names.join(", "))
        };
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE {states} \
             AND ($1 = '' OR task = $1) AND ($2 = '' OR pool = $2) ORDER BY id LIMIT $3"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(f.task.clone().unwrap_or_default())
            .bind(f.pool.clone().unwrap_or_default())
            .bind(i64::from(f.limit.max(1)))
            .fetch_all(&self.pool)
            .await
            .map_err(db(|| op.to_string()))?;
        jobs_from_rows(&rows, op)
    }

    /// Cancels a job that is still queued, in one statement (a daemon claiming it at the
    /// same moment wins or loses as a whole). Returns the cancelled job, or `None` when it
    /// was not queued (any more).
    pub async fn cancel_queued_job(&self, uuid: Uuid) -> Result<Option<Job>, StoreError> {
        let op = format!("cancelling job {uuid}");
        let sql = format!(
            "UPDATE jobs SET state = 'cancelled', finished_at = $1, \
             error = 'cancelled on request before it ran' \
             WHERE uuid = $2 AND state = 'queued' RETURNING {JOB_COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(now_micros())
            .bind(uuid.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db(|| op.clone()))?;
        Ok(jobs_from_rows(&rows, &op)?.into_iter().next())
    }

    /// Queues one job outside any message (a rerun), created from `image` when given.
    pub async fn enqueue_job(
        &self,
        topic: &str,
        job: &NewJob,
        image: Option<&str>,
    ) -> Result<Uuid, StoreError> {
        let uuid = Uuid::now_v7();
        let now = now_micros();
        sqlx::query(
            "INSERT INTO jobs (uuid, message_id, topic, rule, task, item, item_type, arch, \
             pool, priority, state, attempts, max_attempts, not_before, received_at, \
             created_at, image) \
             VALUES ($1, NULL, $2, $3, $4, $5, $6, $7, $8, $9, 'queued', 0, $10, $11, $11, $11, $12)",
        )
        .bind(uuid.to_string())
        .bind(topic)
        .bind(&job.rule)
        .bind(&job.task)
        .bind(&job.item)
        .bind(&job.item_type)
        .bind(&job.arch)
        .bind(&job.pool)
        .bind(i64::from(job.priority))
        .bind(i64::from(job.max_attempts.max(1)))
        .bind(now)
        .bind(image)
        .execute(&self.pool)
        .await
        .map_err(db(|| format!("queueing a job of {}", job.task)))?;
        Ok(uuid)
    }

    /// The runs among `runs` someone asked to cancel. One statement.
    pub async fn cancel_requested_among(&self, runs: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = runs.iter().map(|u| format!("'{u}'")).collect();
        // Uuids print as hex and dashes only: safe to inline.
        let sql = format!(
            "SELECT uuid FROM runs WHERE cancel_requested_at IS NOT NULL AND uuid IN ({})",
            list.join(", ")
        );
        let found: Vec<String> = sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(db(|| "reading cancel requests".to_string()))?;
        Ok(found
            .iter()
            .filter_map(|s| Uuid::parse_str(s).ok())
            .collect())
    }

    // --- holds ----------------------------------------------------------------------------

    pub async fn create_hold(&self, h: &NewHold) -> Result<Hold, StoreError> {
        let op = || format!("creating a hold on {}", h.task);
        let rows = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO holds (task, hold_s, reason, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING {HOLD_COLUMNS}"
        )))
        .bind(&h.task)
        .bind(i64::try_from(h.hold.as_secs()).unwrap_or(i64::MAX))
        .bind(&h.reason)
        .bind(now_micros())
        .fetch_all(&self.pool)
        .await
        .map_err(db(op))?;
        holds_from_rows(&rows, &op())?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Corrupt {
                op: op(),
                message: "no row returned".into(),
            })
    }

    /// Every hold, newest first (`live_only`: pending and active ones).
    pub async fn holds(&self, live_only: bool) -> Result<Vec<Hold>, StoreError> {
        let filter = if live_only {
            "WHERE released_at IS NULL AND (expires_at IS NULL OR expires_at > $1)"
        } else {
            "WHERE created_at <= $1"
        };
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {HOLD_COLUMNS} FROM holds {filter} ORDER BY id DESC LIMIT 500"
        )))
        .bind(now_micros())
        .fetch_all(&self.pool)
        .await
        .map_err(db(|| "listing holds".to_string()))?;
        holds_from_rows(&rows, "listing holds")
    }

    pub async fn hold(&self, id: i64) -> Result<Option<Hold>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {HOLD_COLUMNS} FROM holds WHERE id = $1"
        )))
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(db(|| format!("reading hold {id}")))?;
        Ok(holds_from_rows(&rows, "reading a hold")?.into_iter().next())
    }

    /// The oldest hold on `task` still waiting for a failing run.
    pub async fn pending_hold(&self, task: &str) -> Result<Option<Hold>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {HOLD_COLUMNS} FROM holds WHERE task = $1 AND run_uuid IS NULL \
             AND released_at IS NULL ORDER BY id LIMIT 1"
        )))
        .bind(task)
        .fetch_all(&self.pool)
        .await
        .map_err(db(|| format!("reading the holds of {task}")))?;
        Ok(holds_from_rows(&rows, "reading holds")?.into_iter().next())
    }

    /// A failing run takes the pending hold `id`: its instance is kept until the hold
    /// expires. False when another run took it first (that run's instance must go).
    pub async fn take_hold(&self, id: i64, run: Uuid, login: &str) -> Result<bool, StoreError> {
        let now = OffsetDateTime::now_utc();
        let done = sqlx::query(
            "UPDATE holds SET run_uuid = $1, login = $2, expires_at = $3 + hold_s * 1000000 \
             WHERE id = $4 AND run_uuid IS NULL AND released_at IS NULL",
        )
        .bind(run.to_string())
        .bind(login)
        .bind(micros(now))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db(|| format!("taking hold {id} for run {run}")))?;
        Ok(done.rows_affected() == 1)
    }

    /// Releases a hold (pending or active): its instance becomes a leak the reaper removes.
    pub async fn release_hold(&self, id: i64) -> Result<Option<Hold>, StoreError> {
        sqlx::query("UPDATE holds SET released_at = $1 WHERE id = $2 AND released_at IS NULL")
            .bind(now_micros())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db(|| format!("releasing hold {id}")))?;
        self.hold(id).await
    }

    /// Runs whose instance an active hold keeps: the reaper must leave them alone.
    pub async fn held_runs(&self) -> Result<Vec<Uuid>, StoreError> {
        let found: Vec<String> = sqlx::query_scalar(
            "SELECT run_uuid FROM holds WHERE run_uuid IS NOT NULL AND released_at IS NULL \
             AND expires_at > $1",
        )
        .bind(now_micros())
        .fetch_all(&self.pool)
        .await
        .map_err(db(|| "reading held runs".to_string()))?;
        Ok(found
            .iter()
            .filter_map(|s| Uuid::parse_str(s).ok())
            .collect())
    }

    /// The hold that kept this run's instance, if any.
    pub async fn hold_of_run(&self, run: Uuid) -> Result<Option<Hold>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {HOLD_COLUMNS} FROM holds WHERE run_uuid = $1 ORDER BY id DESC LIMIT 1"
        )))
        .bind(run.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db(|| format!("reading the hold of run {run}")))?;
        Ok(holds_from_rows(&rows, "reading a hold")?.into_iter().next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_durations_are_bounded_and_named() {
        assert_eq!(hold_duration(2.0), Ok(Duration::from_secs(7200)));
        assert_eq!(hold_duration(0.0001), Ok(Duration::from_secs(1)));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(
                hold_duration(bad).unwrap_err().starts_with("hours: "),
                "{bad}"
            );
        }
        assert!(hold_duration(24.0 * 8.0).unwrap_err().contains("168 hours"));
    }

    fn job(task: &str) -> NewJob {
        NewJob {
            rule: "rerun".into(),
            task: task.into(),
            item: "bash-5.2-1.fc41".into(),
            item_type: "koji_build".into(),
            arch: "x86_64".into(),
            pool: "default".into(),
            priority: 0,
            max_attempts: 2,
        }
    }

    #[tokio::test]
    async fn a_queued_job_is_cancelled_once_and_a_rerun_keeps_its_image() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let a = store
            .enqueue_job("rerun", &job("t"), Some("/img/x.qcow2"))
            .await
            .unwrap();
        let b = store.enqueue_job("rerun", &job("u"), None).await.unwrap();
        let listed = store
            .list_jobs(&JobFilter {
                limit: 10,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].image.as_deref(), Some("/img/x.qcow2"));
        assert_eq!(listed[1].image, None);
        let c = store.cancel_queued_job(a).await.unwrap().unwrap();
        assert_eq!(c.state, RunState::Cancelled);
        assert!(c.finished_at.is_some());
        assert!(store.cancel_queued_job(a).await.unwrap().is_none());
        // A claimed job is not queued: cancelling it here changes nothing.
        let claimed = store
            .claim("default", "u", "p", "d1", 1, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(claimed[0].uuid, b);
        assert!(store.cancel_queued_job(b).await.unwrap().is_none());
        let only_u = store
            .list_jobs(&JobFilter {
                task: Some("u".into()),
                limit: 10,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(only_u.len(), 1);
        assert_eq!(only_u[0].state, RunState::Provisioning);
    }

    #[tokio::test]
    async fn a_hold_is_taken_once_then_released() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let h = store
            .create_hold(&NewHold {
                task: "t".into(),
                hold: Duration::from_secs(3600),
                reason: "look at it".into(),
            })
            .await
            .unwrap();
        let now = OffsetDateTime::now_utc();
        assert_eq!(h.status(now), "pending");
        assert_eq!(store.pending_hold("t").await.unwrap().unwrap().id, h.id);
        assert!(store.pending_hold("other").await.unwrap().is_none());
        let (r1, r2) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(store.take_hold(h.id, r1, "ssh x").await.unwrap());
        assert!(!store.take_hold(h.id, r2, "ssh y").await.unwrap());
        assert!(store.pending_hold("t").await.unwrap().is_none());
        let got = store.hold_of_run(r1).await.unwrap().unwrap();
        assert_eq!(got.status(now), "active");
        assert!(got.expires_at.unwrap() > now + Duration::from_secs(3500));
        assert_eq!(store.held_runs().await.unwrap(), [r1]);
        let released = store.release_hold(h.id).await.unwrap().unwrap();
        assert_eq!(released.status(now), "released");
        assert!(store.held_runs().await.unwrap().is_empty());
        assert!(store.holds(true).await.unwrap().is_empty());
        assert_eq!(store.holds(false).await.unwrap().len(), 1);
    }
}
