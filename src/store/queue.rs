//! The job queue: jobs made by trigger rules, the message ids already seen, claims with
//! leases.
//!
//! A job moves queued → provisioning → running → collecting → finished / failed / crashed /
//! cancelled (the [`RunState`] names). A daemon *claims* queued jobs (one statement; on
//! PostgreSQL `FOR UPDATE SKIP LOCKED`, so several daemons share one queue and no job is
//! claimed twice), holds them under a lease it renews with a heartbeat, and ends them. A job
//! whose lease ran out is *recovered* by whichever daemon looks first: its run is marked
//! crashed and the job requeued (bounded attempts) or crashed.
//!
//! Every attempt is its own run: [`run_uuid`] derives the run's uuid from the job's uuid and
//! the attempt number, so a daemon that finds an orphaned claim knows which run to close
//! without anything having been written after the claim.

use std::time::Duration;

use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;
use time::OffsetDateTime;
use uuid::Uuid;

use super::runs::RunState;
use super::{Dialect, Store, StoreError, col, db, from_micros, now_micros};

pub(super) const IN_FLIGHT: &str = "state IN ('provisioning', 'running', 'collecting')";

pub(super) const JOB_COLUMNS: &str = "id, uuid, message_id, topic, rule, task, item, item_type, \
    arch, pool, provider, priority, state, attempts, max_attempts, claimed_by, lease_until, \
    not_before, received_at, created_at, claimed_at, finished_at, error, outcome, lease_token, \
    image, run_uuid";

/// The run uuid of attempt `attempt` of `job` as stores before schema 14 derived it (the
/// job's uuid with the attempt folded into its low bits). Only rows claimed before that
/// migration use it; since, every claim draws its run's uuid at random
/// ([`Job::current_run`]): a job's uuid is public, and its retries' runs must not be
/// guessable from it.
fn legacy_run_uuid(job: Uuid, attempt: u32) -> Uuid {
    Uuid::from_u128(job.as_u128() ^ u128::from(attempt))
}

/// SQL that draws a random v4 uuid, per row, in each dialect.
fn random_uuid_sql(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => "CAST(gen_random_uuid() AS TEXT)",
        Dialect::Sqlite => {
            "lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || \
             substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || \
             substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))"
        }
    }
}

/// A job as the trigger rules produce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub rule: String,
    pub task: String,
    pub item: String,
    pub item_type: String,
    pub arch: String,
    /// The provider pool that may run it.
    pub pool: String,
    /// Higher runs first.
    pub priority: i32,
    pub max_attempts: u32,
}

/// What [`Store::enqueue`] did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// The message id was seen before: nothing was written.
    Duplicate,
    /// The jobs' uuids, in the order given (empty when no rule matched).
    Jobs(Vec<Uuid>),
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: i64,
    pub uuid: Uuid,
    pub message_id: Option<String>,
    pub topic: String,
    pub rule: String,
    pub task: String,
    pub item: String,
    pub item_type: String,
    pub arch: String,
    pub pool: String,
    /// The provider of the current (or last) attempt.
    pub provider: Option<String>,
    pub priority: i32,
    pub state: RunState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub claimed_by: Option<String>,
    pub lease_until: Option<OffsetDateTime>,
    pub not_before: OffsetDateTime,
    pub received_at: OffsetDateTime,
    pub created_at: OffsetDateTime,
    pub claimed_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
    pub error: Option<String>,
    /// A one-line summary of the last run's outcome.
    pub outcome: Option<String>,
    /// The image its runs are created from instead of the provider's (a rerun keeps the
    /// image of the run it repeats); `None`: the provider's configured image.
    pub image: Option<String>,
    /// The token of the current (or last) claim; `None` before the first claim and after
    /// a takeover.
    pub lease_token: Option<String>,
    /// The run of the current (or last) attempt, drawn at random by its claim.
    pub run_uuid: Option<Uuid>,
}

impl Job {
    /// The run of the current (or last) attempt; `None` before the first claim.
    pub fn current_run(&self) -> Option<Uuid> {
        self.run_uuid
            .or_else(|| (self.attempts > 0).then(|| legacy_run_uuid(self.uuid, self.attempts)))
    }

    /// What a holder of this claim presents with every write about the job.
    pub fn fence(&self) -> Option<Fence> {
        self.lease_token.as_ref().map(|t| Fence {
            job: self.id,
            token: t.clone(),
        })
    }
}

/// Proof of a claim: the job and the token its claim was given. A write that carries it
/// succeeds only while the job is in flight under exactly this claim, so a daemon whose
/// lease was taken over can no longer end, extend or record anything for the job.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    pub job: i64,
    pub token: String,
}

/// A daemon id as registered in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonRecord {
    pub id: String,
    pub instance: String,
    pub host: String,
    pub pid: u32,
    pub started_at: OffsetDateTime,
    pub seen_at: OffsetDateTime,
}

/// What [`Store::register_daemon`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// The id is now this process's.
    Registered,
    /// Another process holds the id and renewed it within the staleness limit.
    Held(DaemonRecord),
}

/// Queued and in-flight jobs of one task in one pool (the scheduler's fair-share input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLoad {
    pub task: String,
    pub queued: u64,
    pub in_flight: u64,
    /// The best priority among its queued jobs.
    pub top_priority: i32,
}

/// How a claimed job ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// Terminal: the job will not run again.
    Done {
        state: RunState,
        outcome: Option<String>,
        error: Option<String>,
    },
    /// Back to the queue, runnable from `not_before`. `free_attempt` does not count this
    /// attempt against `max_attempts` (a graceful shutdown is not the job's fault).
    Requeue {
        not_before: OffsetDateTime,
        error: Option<String>,
        free_attempt: bool,
    },
}

fn job_from_row(row: &AnyRow) -> Result<Job, String> {
    let uuid: String = col(row, "uuid")?;
    let state: String = col(row, "state")?;
    let t = |name: &str| -> Result<OffsetDateTime, String> { from_micros(col(row, name)?) };
    let ot = |name: &str| -> Result<Option<OffsetDateTime>, String> {
        col::<Option<i64>>(row, name)?.map(from_micros).transpose()
    };
    let n = |name: &str| -> Result<u32, String> {
        let v: i64 = col(row, name)?;
        u32::try_from(v).map_err(|_| format!("column {name}: {v} out of range"))
    };
    let priority: i64 = col(row, "priority")?;
    Ok(Job {
        id: col(row, "id")?,
        uuid: Uuid::parse_str(&uuid).map_err(|e| format!("job uuid `{uuid}`: {e}"))?,
        message_id: col(row, "message_id")?,
        topic: col(row, "topic")?,
        rule: col(row, "rule")?,
        task: col(row, "task")?,
        item: col(row, "item")?,
        item_type: col(row, "item_type")?,
        arch: col(row, "arch")?,
        pool: col(row, "pool")?,
        provider: col(row, "provider")?,
        priority: i32::try_from(priority).map_err(|_| format!("priority {priority}"))?,
        state: state
            .parse()
            .map_err(|e: super::UnknownRunState| e.to_string())?,
        attempts: n("attempts")?,
        max_attempts: n("max_attempts")?,
        claimed_by: col(row, "claimed_by")?,
        lease_until: ot("lease_until")?,
        not_before: t("not_before")?,
        received_at: t("received_at")?,
        created_at: t("created_at")?,
        claimed_at: ot("claimed_at")?,
        finished_at: ot("finished_at")?,
        error: col(row, "error")?,
        outcome: col(row, "outcome")?,
        image: col(row, "image")?,
        lease_token: col(row, "lease_token")?,
        run_uuid: col::<Option<String>>(row, "run_uuid")?
            .map(|r| Uuid::parse_str(&r).map_err(|e| format!("run uuid `{r}`: {e}")))
            .transpose()?,
    })
}

pub(super) fn jobs_from_rows(rows: &[AnyRow], op: &str) -> Result<Vec<Job>, StoreError> {
    rows.iter()
        .map(job_from_row)
        .collect::<Result<_, _>>()
        .map_err(|message| StoreError::Corrupt {
            op: op.to_string(),
            message,
        })
}

fn micros_of(t: OffsetDateTime) -> i64 {
    super::micros(t)
}

fn lease_end(lease: Duration) -> i64 {
    now_micros().saturating_add(super::duration_micros(lease))
}

/// Lease tokens per heartbeat statement (well below either engine's parameter limit).
const TOKENS_PER_STATEMENT: usize = 500;

/// What [`Store::recover_job`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub end: JobEnd,
    /// The run was cut short and is now marked crashed.
    pub run_closed: bool,
}

/// The UPDATE that ends a job as `end` says, its own values bound as `$1`–`$4`; `guard`
/// (a WHERE clause) continues at `$5`. A takeover also clears the lease token, so the old
/// holder's fence no longer matches.
fn end_query<'q>(
    end: &'q JobEnd,
    take_over: bool,
    guard: &str,
) -> Result<sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>, String> {
    let token = if take_over {
        ", lease_token = NULL"
    } else {
        ""
    };
    Ok(match end {
        JobEnd::Done {
            state,
            outcome,
            error,
        } => {
            if !state.is_terminal() {
                return Err(format!("{state} is not a terminal state"));
            }
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE jobs SET state = $1, outcome = $2, error = $3, finished_at = $4, \
                 lease_until = NULL{token} {guard}"
            )))
            .bind(state.as_str())
            .bind(outcome.as_deref())
            .bind(error.as_deref())
            .bind(now_micros())
        }
        JobEnd::Requeue {
            not_before,
            error,
            free_attempt,
        } => sqlx::query(AssertSqlSafe(format!(
            "UPDATE jobs SET state = 'queued', claimed_by = NULL, lease_until = NULL, \
             not_before = $1, error = $2, max_attempts = max_attempts + $3, \
             outcome = $4{token} {guard}"
        )))
        .bind(micros_of(*not_before))
        .bind(error.as_deref())
        .bind(i64::from(*free_attempt))
        .bind(None::<String>),
    })
}

fn daemon_from_row(row: &AnyRow) -> Result<DaemonRecord, String> {
    let pid: i64 = col(row, "pid")?;
    Ok(DaemonRecord {
        id: col(row, "id")?,
        instance: col(row, "instance")?,
        host: col(row, "host")?,
        pid: u32::try_from(pid).map_err(|_| format!("column pid: {pid} out of range"))?,
        started_at: from_micros(col(row, "started_at")?)?,
        seen_at: from_micros(col(row, "seen_at")?)?,
    })
}

/// Inside a write transaction: fails with [`StoreError::Fenced`] unless `fence`'s claim is
/// still in flight. On PostgreSQL the job row stays share-locked until the transaction
/// ends, so a takeover ([`Store::recover_job`]) waits for it and then sees what it wrote.
pub(crate) async fn check_fence(
    conn: &mut sqlx::AnyConnection,
    dialect: Dialect,
    fence: &Fence,
    op: &str,
) -> Result<(), StoreError> {
    let lock = match dialect {
        Dialect::Postgres => " FOR SHARE",
        Dialect::Sqlite => "",
    };
    let held = sqlx::query(AssertSqlSafe(format!(
        "SELECT id FROM jobs WHERE id = $1 AND lease_token = $2 AND {IN_FLIGHT}{lock}"
    )))
    .bind(fence.job)
    .bind(fence.token.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db(|| op.to_string()))?;
    match held {
        Some(_) => Ok(()),
        None => Err(StoreError::Fenced {
            op: op.to_string(),
            job: fence.job,
        }),
    }
}

impl Store {
    /// Records one message and the jobs it made, in one transaction. With a message id, a
    /// second call for the same id writes nothing and returns [`Enqueued::Duplicate`] (also
    /// when two daemons race on it). Messages that made no job are remembered too, so a
    /// redelivery stays a duplicate.
    pub async fn enqueue(
        &self,
        message_id: Option<&str>,
        topic: &str,
        received_at: OffsetDateTime,
        jobs: &[NewJob],
    ) -> Result<Enqueued, StoreError> {
        let op = || format!("enqueueing message {}", message_id.unwrap_or("(no id)"));
        let received = micros_of(received_at);
        let mut tx = self.begin().await.map_err(db(op))?;
        if let Some(id) = message_id {
            let done = sqlx::query(
                "INSERT INTO seen_messages (message_id, topic, received_at, jobs) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (message_id) DO NOTHING",
            )
            .bind(id)
            .bind(topic)
            .bind(received)
            .bind(jobs.len() as i64)
            .execute(&mut *tx)
            .await
            .map_err(db(op))?;
            if done.rows_affected() == 0 {
                tx.rollback().await.map_err(db(op))?;
                return Ok(Enqueued::Duplicate);
            }
        }
        let now = now_micros();
        let mut uuids = Vec::with_capacity(jobs.len());
        for job in jobs {
            let uuid = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO jobs (uuid, message_id, topic, rule, task, item, item_type, arch, \
                 pool, priority, state, attempts, max_attempts, not_before, received_at, \
                 created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'queued', 0, $11, $12, $13, $14)",
            )
            .bind(uuid.to_string())
            .bind(message_id)
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
            .bind(received)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db(op))?;
            uuids.push(uuid);
        }
        tx.commit().await.map_err(db(op))?;
        Ok(Enqueued::Jobs(uuids))
    }

    /// Per task in `pool`: queued (runnable now) and in-flight counts, and the best queued
    /// priority. One query.
    pub async fn task_loads(&self, pool: &str) -> Result<Vec<TaskLoad>, StoreError> {
        let op = || format!("reading the queue of pool {pool}");
        let rows = sqlx::query(
            "SELECT task, \
             SUM(CASE WHEN state = 'queued' AND not_before <= $1 THEN 1 ELSE 0 END) AS queued, \
             SUM(CASE WHEN state = 'queued' THEN 0 ELSE 1 END) AS in_flight, \
             MAX(CASE WHEN state = 'queued' AND not_before <= $1 THEN priority ELSE NULL END) AS top \
             FROM jobs WHERE pool = $2 AND state IN ('queued', 'provisioning', 'running', 'collecting') \
             GROUP BY task ORDER BY task",
        )
        .bind(now_micros())
        .bind(pool)
        .fetch_all(&self.pool)
        .await
        .map_err(db(op))?;
        rows.iter()
            .map(|row| {
                let queued: i64 = col(row, "queued")?;
                let in_flight: i64 = col(row, "in_flight")?;
                let top: Option<i64> = col(row, "top")?;
                Ok(TaskLoad {
                    task: col(row, "task")?,
                    queued: queued.max(0) as u64,
                    in_flight: in_flight.max(0) as u64,
                    top_priority: top.map_or(i32::MIN, |p| {
                        p.clamp(i32::MIN.into(), i32::MAX.into()) as i32
                    }),
                })
            })
            .collect::<Result<_, String>>()
            .map_err(|message| StoreError::Corrupt { op: op(), message })
    }

    /// Claims up to `n` runnable queued jobs of `task` in `pool` for `owner`, best priority
    /// first, then oldest: state `provisioning`, attempts + 1, a lease of `lease` and a fresh
    /// lease token per job ([`Job::fence`]). One statement; on PostgreSQL rows another daemon
    /// is claiming are skipped, not waited for.
    pub async fn claim(
        &self,
        pool: &str,
        task: &str,
        provider: &str,
        owner: &str,
        n: usize,
        lease: Duration,
    ) -> Result<Vec<Job>, StoreError> {
        let op = || format!("claiming jobs of {task} in pool {pool}");
        let lock = match self.dialect() {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        // One random part per statement and the job id make each token unique per claim.
        let batch = Uuid::new_v4().simple().to_string();
        let sql = format!(
            "UPDATE jobs SET state = 'provisioning', claimed_by = $1, provider = $2, \
             lease_until = $3, claimed_at = $4, attempts = attempts + 1, error = NULL, \
             lease_token = CAST($5 AS TEXT) || ':' || CAST(id AS TEXT), run_uuid = {run} \
             WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' AND pool = $6 AND task = $7 \
             AND not_before <= $4 ORDER BY priority DESC, id LIMIT $8{lock}) \
             RETURNING {JOB_COLUMNS}",
            run = random_uuid_sql(self.dialect()),
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(owner)
            .bind(provider)
            .bind(lease_end(lease))
            .bind(now_micros())
            .bind(batch)
            .bind(pool)
            .bind(task)
            .bind(n as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db(op))?;
        let mut jobs = jobs_from_rows(&rows, &op())?;
        jobs.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        Ok(jobs)
    }

    /// Renews the leases of the claims in `fences` that `owner` still holds and returns
    /// those (a claim missing from the answer was taken over: stop its run). Only the claims
    /// named are renewed, so a job this daemon no longer works on runs out of lease.
    pub async fn heartbeat(
        &self,
        owner: &str,
        fences: &[Fence],
        lease: Duration,
    ) -> Result<Vec<Fence>, StoreError> {
        let op = || format!("renewing the leases of {owner}");
        let until = lease_end(lease);
        let mut held = Vec::with_capacity(fences.len());
        for chunk in fences.chunks(TOKENS_PER_STATEMENT) {
            let list = (0..chunk.len())
                .map(|i| format!("${}", i + 3))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "UPDATE jobs SET lease_until = $1 WHERE claimed_by = $2 AND {IN_FLIGHT} \
                 AND lease_token IN ({list}) RETURNING id, lease_token"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(until).bind(owner);
            for f in chunk {
                q = q.bind(f.token.as_str());
            }
            let rows = q.fetch_all(&self.pool).await.map_err(db(op))?;
            for row in &rows {
                let fence = (|| -> Result<Fence, String> {
                    Ok(Fence {
                        job: col(row, "id")?,
                        token: col(row, "lease_token")?,
                    })
                })()
                .map_err(|message| StoreError::Corrupt { op: op(), message })?;
                held.push(fence);
            }
        }
        Ok(held)
    }

    /// Records the in-flight state of claimed jobs (runs report their phases; the scheduler
    /// writes them in batches). Claims no longer held are left alone.
    pub async fn set_job_states(&self, states: &[(Fence, RunState)]) -> Result<(), StoreError> {
        if states.is_empty() {
            return Ok(());
        }
        let op = || format!("recording the states of {} jobs", states.len());
        let mut tx = self.begin().await.map_err(db(op))?;
        let sql = format!(
            "UPDATE jobs SET state = $1 WHERE id = $2 AND lease_token = $3 AND {IN_FLIGHT}"
        );
        for (fence, state) in states {
            sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(state.as_str())
                .bind(fence.job)
                .bind(fence.token.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db(op))?;
        }
        tx.commit().await.map_err(db(op))
    }

    /// Ends the job under the claim `fence` proves. Returns false (and changes nothing) when
    /// the claim is no longer held: the job was taken over. Safe to repeat: an end whose
    /// answer was lost on the way (the commit landed, the connection did not) is found again
    /// by its token and answers true.
    pub async fn end_job(&self, fence: &Fence, end: &JobEnd) -> Result<bool, StoreError> {
        self.end_job_announcing(fence, end, None).await
    }

    /// [`Store::end_job`], adding `announce` (a run message's JSON body) to the outbox in
    /// the same transaction when this store announces runs: the message exists exactly when
    /// the end is committed (a repeated end finds it committed and adds nothing).
    pub async fn end_job_announcing(
        &self,
        fence: &Fence,
        end: &JobEnd,
        announce: Option<&str>,
    ) -> Result<bool, StoreError> {
        let op = || format!("ending job {}", fence.job);
        let q = end_query(
            end,
            false,
            &format!("WHERE id = $5 AND lease_token = $6 AND {IN_FLIGHT}"),
        )
        .map_err(|message| StoreError::Invalid { op: op(), message })?;
        let q = q.bind(fence.job).bind(fence.token.as_str());
        let ended = match announce.filter(|_| self.outbox.wants(super::OutboxKind::Run)) {
            None => q.execute(&self.pool).await.map_err(db(op))?.rows_affected() == 1,
            Some(body) => {
                let mut tx = self.begin().await.map_err(db(op))?;
                let ended = q.execute(&mut *tx).await.map_err(db(op))?.rows_affected() == 1;
                if ended {
                    super::outbox::insert(&mut tx, super::OutboxKind::Run, body)
                        .await
                        .map_err(db(op))?;
                }
                tx.commit().await.map_err(db(op))?;
                if ended {
                    self.outbox_committed();
                }
                ended
            }
        };
        if ended {
            return Ok(true);
        }
        let row = sqlx::query("SELECT state, lease_token FROM jobs WHERE id = $1")
            .bind(fence.job)
            .fetch_optional(&self.pool)
            .await
            .map_err(db(op))?;
        let Some(row) = row else { return Ok(false) };
        let state: String =
            col(&row, "state").map_err(|message| StoreError::Corrupt { op: op(), message })?;
        let token: Option<String> = col(&row, "lease_token")
            .map_err(|message| StoreError::Corrupt { op: op(), message })?;
        let in_flight = matches!(state.as_str(), "provisioning" | "running" | "collecting");
        Ok(!in_flight && token.as_deref() == Some(fence.token.as_str()))
    }

    /// Claimed jobs whose lease ran out, and (when given) every claimed job of
    /// `previous_self`: a daemon restarting under the same id owns nothing any more.
    pub async fn orphaned_jobs(&self, previous_self: Option<&str>) -> Result<Vec<Job>, StoreError> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE {IN_FLIGHT} AND (lease_until < $1 OR claimed_by = $2) ORDER BY id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(now_micros())
            .bind(previous_self.unwrap_or(""))
            .fetch_all(&self.pool)
            .await
            .map_err(db(|| "looking for orphaned jobs".to_string()))?;
        jobs_from_rows(&rows, "looking for orphaned jobs")
    }

    /// Takes over an orphaned job (as read by [`Store::orphaned_jobs`]), in one transaction:
    /// if its claim is still the one read and still orphaned (lease run out, or held by
    /// `previous_self`), reads its run's state and error, ends the job as `decide` says
    /// (clearing the lease token: the old holder's writes now fail), and marks a run that
    /// was cut short `crashed` with `crash_exit` and `crash_note`. `None`: someone renewed
    /// or ended the job meanwhile, nothing was changed.
    ///
    /// A fenced write of the old holder ([`Store::fenced`]) and this takeover exclude each
    /// other: whichever commits second sees what the first wrote.
    pub async fn recover_job(
        &self,
        job: &Job,
        previous_self: Option<&str>,
        decide: impl FnOnce(&Job, Option<(RunState, Option<String>)>) -> JobEnd,
        crash_exit: i32,
        crash_note: &str,
    ) -> Result<Option<Recovered>, StoreError> {
        let op = || format!("recovering job {}", job.uuid);
        let lock = match self.dialect() {
            Dialect::Postgres => " FOR UPDATE",
            Dialect::Sqlite => "",
        };
        let mut tx = self.begin().await.map_err(db(op))?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1{lock}"
        )))
        .bind(job.id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db(op))?;
        let Some(cur) = jobs_from_rows(&rows, &op())?.into_iter().next() else {
            return Ok(None);
        };
        let expired = cur
            .lease_until
            .is_none_or(|t| t < OffsetDateTime::now_utc());
        let previous = previous_self.is_some() && cur.claimed_by.as_deref() == previous_self;
        if !cur.state.is_in_flight()
            || cur.lease_token != job.lease_token
            || cur.attempts != job.attempts
            || !(expired || previous)
        {
            tx.rollback().await.map_err(db(op))?;
            return Ok(None);
        }
        let run = cur.current_run();
        let run_state = match run {
            Some(run) => {
                let row = sqlx::query("SELECT state, error FROM runs WHERE uuid = $1")
                    .bind(run.to_string())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db(op))?;
                match row {
                    Some(row) => {
                        let state: String = col(&row, "state")
                            .map_err(|message| StoreError::Corrupt { op: op(), message })?;
                        let state: RunState =
                            state.parse().map_err(|e: super::UnknownRunState| {
                                StoreError::Corrupt {
                                    op: op(),
                                    message: e.to_string(),
                                }
                            })?;
                        let error: Option<String> = col(&row, "error")
                            .map_err(|message| StoreError::Corrupt { op: op(), message })?;
                        Some((state, error))
                    }
                    None => None,
                }
            }
            None => None,
        };
        let end = decide(&cur, run_state.clone());
        end_query(&end, true, "WHERE id = $5")
            .map_err(|message| StoreError::Invalid { op: op(), message })?
            .bind(cur.id)
            .execute(&mut *tx)
            .await
            .map_err(db(op))?;
        let mut run_closed = false;
        if let (Some(run), Some((state, _))) = (run, &run_state)
            && !state.is_terminal()
        {
            sqlx::query(
                "UPDATE runs SET state = $1, exit_code = $2, error = $3, finished_at = $4 \
                 WHERE uuid = $5",
            )
            .bind(RunState::Crashed.as_str())
            .bind(crash_exit)
            .bind(crash_note)
            .bind(now_micros())
            .bind(run.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db(op))?;
            run_closed = true;
        }
        tx.commit().await.map_err(db(op))?;
        Ok(Some(Recovered { end, run_closed }))
    }

    // --- daemon ids ------------------------------------------------------------------------

    /// Registers `me` as the process holding daemon id `me.id`, unless another process
    /// holds it and renewed it less than `stale_after` ago; `dead` names an instance known
    /// to be gone (its process no longer exists), which is replaced whatever its age.
    pub async fn register_daemon(
        &self,
        me: &DaemonRecord,
        stale_after: Duration,
        dead: Option<&str>,
    ) -> Result<Registration, StoreError> {
        let op = || format!("registering daemon id {}", me.id);
        let lock = match self.dialect() {
            Dialect::Postgres => " FOR UPDATE",
            Dialect::Sqlite => "",
        };
        let mut tx = self.begin().await.map_err(db(op))?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, instance, host, pid, started_at, seen_at FROM daemons WHERE id = $1{lock}"
        )))
        .bind(&me.id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db(op))?;
        let now = now_micros();
        if let Some(row) = rows.first() {
            let cur = daemon_from_row(row)
                .map_err(|message| StoreError::Corrupt { op: op(), message })?;
            let stale =
                micros_of(cur.seen_at) < now.saturating_sub(super::duration_micros(stale_after));
            if cur.instance != me.instance && !stale && dead != Some(cur.instance.as_str()) {
                tx.rollback().await.map_err(db(op))?;
                return Ok(Registration::Held(cur));
            }
            sqlx::query(
                "UPDATE daemons SET instance = $1, host = $2, pid = $3, started_at = $4, \
                 seen_at = $5 WHERE id = $6",
            )
            .bind(&me.instance)
            .bind(&me.host)
            .bind(i64::from(me.pid))
            .bind(micros_of(me.started_at))
            .bind(now)
            .bind(&me.id)
            .execute(&mut *tx)
            .await
            .map_err(db(op))?;
        } else {
            let done = sqlx::query(
                "INSERT INTO daemons (id, instance, host, pid, started_at, seen_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&me.id)
            .bind(&me.instance)
            .bind(&me.host)
            .bind(i64::from(me.pid))
            .bind(micros_of(me.started_at))
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db(op))?;
            if done.rows_affected() == 0 {
                // Another process registered the id between our read and our insert.
                tx.rollback().await.map_err(db(op))?;
                return match self.daemon(&me.id).await? {
                    Some(cur) => Ok(Registration::Held(cur)),
                    None => Err(StoreError::Invalid {
                        op: op(),
                        message: "the registration vanished while it was made; try again".into(),
                    }),
                };
            }
        }
        tx.commit().await.map_err(db(op))?;
        Ok(Registration::Registered)
    }

    /// Says that `instance` still holds daemon id `id`. False: another process took the id
    /// over (this one was thought dead).
    pub async fn renew_daemon(&self, id: &str, instance: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE daemons SET seen_at = $1 WHERE id = $2 AND instance = $3")
            .bind(now_micros())
            .bind(id)
            .bind(instance)
            .execute(&self.pool)
            .await
            .map_err(db(|| format!("renewing daemon id {id}")))?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives daemon id `id` up (a clean shutdown), if `instance` still holds it.
    pub async fn release_daemon(&self, id: &str, instance: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM daemons WHERE id = $1 AND instance = $2")
            .bind(id)
            .bind(instance)
            .execute(&self.pool)
            .await
            .map_err(db(|| format!("releasing daemon id {id}")))?;
        Ok(())
    }

    /// The registration of daemon id `id`.
    pub async fn daemon(&self, id: &str) -> Result<Option<DaemonRecord>, StoreError> {
        let op = || format!("reading daemon id {id}");
        let row = sqlx::query(
            "SELECT id, instance, host, pid, started_at, seen_at FROM daemons WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db(op))?;
        row.map(|r| daemon_from_row(&r))
            .transpose()
            .map_err(|message| StoreError::Corrupt { op: op(), message })
    }

    pub async fn job(&self, uuid: Uuid) -> Result<Option<Job>, StoreError> {
        let op = format!("reading job {uuid}");
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE uuid = $1"
        )))
        .bind(uuid.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db(|| op.clone()))?;
        Ok(jobs_from_rows(&rows, &op)?.into_iter().next())
    }

    /// Every job, oldest first, optionally only those one message made.
    pub async fn jobs(&self, message_id: Option<&str>) -> Result<Vec<Job>, StoreError> {
        let op = "listing jobs";
        let rows = match message_id {
            Some(m) => {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE message_id = $1 ORDER BY id"
                )))
                .bind(m)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {JOB_COLUMNS} FROM jobs ORDER BY id"
                )))
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(db(|| op.to_string()))?;
        jobs_from_rows(&rows, op)
    }

    /// Number of jobs in each state (states without jobs are left out).
    pub async fn job_counts(&self) -> Result<Vec<(RunState, u64)>, StoreError> {
        let op = || "counting jobs".to_string();
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
            .fetch_all(&self.pool)
            .await
            .map_err(db(op))?;
        rows.iter()
            .map(|row| {
                let state: String = col(row, "state")?;
                let n: i64 = col(row, "n")?;
                Ok((
                    state
                        .parse()
                        .map_err(|e: super::UnknownRunState| e.to_string())?,
                    n.max(0) as u64,
                ))
            })
            .collect::<Result<_, String>>()
            .map_err(|message| StoreError::Corrupt { op: op(), message })
    }

    /// Forgets message ids received before `before` (their redeliveries are long over).
    pub async fn prune_seen_messages(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        sqlx::query("DELETE FROM seen_messages WHERE received_at < $1")
            .bind(micros_of(before))
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(db(|| "pruning seen message ids".to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(task: &str, priority: i32) -> NewJob {
        NewJob {
            rule: "r".into(),
            task: task.into(),
            item: "bash-5.2-1.fc41".into(),
            item_type: "koji_build".into(),
            arch: "x86_64".into(),
            pool: "vm".into(),
            priority,
            max_attempts: 2,
        }
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&format!("sqlite://{}/q.db", d.path().display()))
            .await
            .unwrap();
        (d, s)
    }

    #[tokio::test]
    async fn a_message_id_is_enqueued_once() {
        let (_d, s) = store().await;
        let now = OffsetDateTime::now_utc();
        let first = s
            .enqueue(Some("m1"), "a.b", now, &[job("t", 0), job("u", 0)])
            .await
            .unwrap();
        assert!(matches!(&first, Enqueued::Jobs(j) if j.len() == 2));
        assert_eq!(
            s.enqueue(Some("m1"), "a.b", now, &[job("t", 0)])
                .await
                .unwrap(),
            Enqueued::Duplicate
        );
        // Unmatched messages are remembered too; messages without id are never duplicates.
        assert_eq!(
            s.enqueue(Some("m2"), "a.b", now, &[]).await.unwrap(),
            Enqueued::Jobs(vec![])
        );
        assert_eq!(
            s.enqueue(Some("m2"), "a.b", now, &[job("t", 0)])
                .await
                .unwrap(),
            Enqueued::Duplicate
        );
        assert!(matches!(
            s.enqueue(None, "a.b", now, &[job("t", 0)]).await.unwrap(),
            Enqueued::Jobs(_)
        ));
        assert!(matches!(
            s.enqueue(None, "a.b", now, &[job("t", 0)]).await.unwrap(),
            Enqueued::Jobs(_)
        ));
        assert_eq!(s.jobs(None).await.unwrap().len(), 4);
        assert_eq!(s.jobs(Some("m1")).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn claims_take_the_best_priority_first_and_never_twice() {
        let (_d, s) = store().await;
        let now = OffsetDateTime::now_utc();
        s.enqueue(
            None,
            "a",
            now,
            &[job("t", 0), job("t", 5), job("t", 0), job("other", 9)],
        )
        .await
        .unwrap();
        let lease = Duration::from_secs(60);
        let got = s.claim("vm", "t", "p1", "d1", 2, lease).await.unwrap();
        assert_eq!(got.iter().map(|j| j.priority).collect::<Vec<_>>(), [5, 0]);
        assert!(
            got.iter()
                .all(|j| j.state == RunState::Provisioning && j.attempts == 1)
        );
        assert_eq!(got[0].claimed_by.as_deref(), Some("d1"));
        let rest = s.claim("vm", "t", "p1", "d2", 10, lease).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert!(
            s.claim("vm", "t", "p1", "d2", 10, lease)
                .await
                .unwrap()
                .is_empty()
        );
        let loads = s.task_loads("vm").await.unwrap();
        let t = loads.iter().find(|l| l.task == "t").unwrap();
        assert_eq!((t.queued, t.in_flight), (0, 3));
        let o = loads.iter().find(|l| l.task == "other").unwrap();
        assert_eq!((o.queued, o.top_priority), (1, 9));
    }

    #[tokio::test]
    async fn ends_need_the_claim_and_requeues_respect_not_before() {
        let (_d, s) = store().await;
        s.enqueue(None, "a", OffsetDateTime::now_utc(), &[job("t", 0)])
            .await
            .unwrap();
        let lease = Duration::from_secs(60);
        let j = s
            .claim("vm", "t", "p", "d1", 1, lease)
            .await
            .unwrap()
            .remove(0);
        let done = JobEnd::Done {
            state: RunState::Finished,
            outcome: Some("1 PASSED".into()),
            error: None,
        };
        // Not ended without this claim's token, nor with another job's.
        let forged = Fence {
            job: j.id,
            token: "forged".into(),
        };
        assert!(!s.end_job(&forged, &done).await.unwrap());
        let fence = j.fence().unwrap();
        assert!(
            !s.end_job(
                &Fence {
                    job: j.id + 1,
                    ..fence.clone()
                },
                &done
            )
            .await
            .unwrap()
        );
        let later = JobEnd::Requeue {
            not_before: OffsetDateTime::now_utc() + Duration::from_secs(3600),
            error: Some("boom".into()),
            free_attempt: false,
        };
        assert!(s.end_job(&fence, &later).await.unwrap());
        // Backing off: not claimable yet.
        assert!(
            s.claim("vm", "t", "p", "d1", 1, lease)
                .await
                .unwrap()
                .is_empty()
        );
        let j = s.job(j.uuid).await.unwrap().unwrap();
        assert_eq!(
            (j.state, j.error.as_deref()),
            (RunState::Queued, Some("boom"))
        );
        // The run of attempt 1 is the claim's, kept while the job waits, and not derivable
        // from the job's (public) uuid.
        let first = j.current_run().unwrap();
        assert_ne!(first, legacy_run_uuid(j.uuid, 1));
        assert_eq!(first.get_version_num(), 4);
        // The next claim draws another.
        let mut c = s.claim("vm", "t", "p", "d1", 1, lease).await.unwrap();
        assert!(c.is_empty(), "not before its time");
        sqlx::query("UPDATE jobs SET not_before = 0")
            .execute(&s.pool)
            .await
            .unwrap();
        c = s.claim("vm", "t", "p", "d1", 1, lease).await.unwrap();
        let second = c[0].current_run().unwrap();
        assert_eq!(c[0].attempts, 2);
        assert!(second != first && second != legacy_run_uuid(j.uuid, 2));
        assert_eq!(second.get_version_num(), 4);
    }

    #[tokio::test]
    async fn expired_and_previous_life_claims_are_recovered_once() {
        let (_d, s) = store().await;
        s.enqueue(
            None,
            "a",
            OffsetDateTime::now_utc(),
            &[job("t", 0), job("t", 0)],
        )
        .await
        .unwrap();
        // One claim with an expired lease (another daemon died), one live claim of d1.
        let dead = s
            .claim("vm", "t", "p", "d2", 1, Duration::ZERO)
            .await
            .unwrap()
            .remove(0);
        let live = s
            .claim("vm", "t", "p", "d1", 1, Duration::from_secs(60))
            .await
            .unwrap()
            .remove(0);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let orphans = s.orphaned_jobs(None).await.unwrap();
        assert_eq!(orphans.iter().map(|j| j.id).collect::<Vec<_>>(), [dead.id]);
        let requeue = |_: &Job, _: Option<(RunState, Option<String>)>| JobEnd::Requeue {
            not_before: OffsetDateTime::now_utc(),
            error: Some("lost".into()),
            free_attempt: false,
        };
        let took = s.recover_job(&orphans[0], None, requeue, 4, "lost").await;
        assert!(took.unwrap().is_some());
        let again = s.recover_job(&orphans[0], None, requeue, 4, "lost").await;
        assert!(again.unwrap().is_none());
        // A renewed lease is not an orphan.
        let live_fence = live.fence().unwrap();
        assert_eq!(
            s.heartbeat(
                "d1",
                std::slice::from_ref(&live_fence),
                Duration::from_secs(60)
            )
            .await
            .unwrap(),
            std::slice::from_ref(&live_fence)
        );
        // d1 restarted: its previous life's claims are orphans whatever their lease.
        let mine = s.orphaned_jobs(Some("d1")).await.unwrap();
        assert_eq!(mine.iter().map(|j| j.id).collect::<Vec<_>>(), [live.id]);
        let took = s
            .recover_job(&mine[0], Some("d1"), requeue, 4, "lost")
            .await;
        assert!(took.unwrap().is_some());
        assert!(
            s.heartbeat("d1", &[live_fence], Duration::from_secs(60))
                .await
                .unwrap()
                .is_empty()
        );
        let counts = s.job_counts().await.unwrap();
        assert_eq!(counts, vec![(RunState::Queued, 2)]);
    }
}
