//! The outbox: bus messages written in the same transaction as what they announce, drained
//! by a publisher after commit.
//!
//! A row is committed with the result (or the job end) it announces, so a daemon killed
//! between the commit and the publish loses nothing: whichever publisher looks next sends
//! it. Each row carries the message id it will be published under, so a message sent twice
//! (a publisher killed after the broker confirmed, before the row was deleted) is the same
//! message, which fedora-messaging consumers de-duplicate by id.
//!
//! Publishers *claim* rows for a short lease (several daemons may drain one database), delete
//! them once the broker confirmed, and on failure push them back with a backoff.
//!
//! The store only writes rows when the process announces ([`Store::with_outbox`]): a store
//! nobody drains (a laptop's `ferrotron run`) must not grow a table forever.

use std::time::Duration;

use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Store, StoreError, col, db, duration_micros, from_micros, now_micros};

/// What a row announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// A stored result (ResultsDB's `result.new`); the payload is the result id.
    Result,
    /// A run's end (ferrotron's own result message); the payload is its JSON body.
    Run,
}

impl OutboxKind {
    fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Result => "result",
            OutboxKind::Run => "run",
        }
    }

    fn parse(s: &str) -> Option<OutboxKind> {
        match s {
            "result" => Some(OutboxKind::Result),
            "run" => Some(OutboxKind::Run),
            _ => None,
        }
    }
}

/// Which kinds this process writes rows for (none by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxPolicy {
    pub results: bool,
    pub runs: bool,
}

impl OutboxPolicy {
    pub(crate) fn wants(self, kind: OutboxKind) -> bool {
        match kind {
            OutboxKind::Result => self.results,
            OutboxKind::Run => self.runs,
        }
    }
}

/// One row claimed for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: i64,
    pub kind: OutboxKind,
    pub payload: String,
    pub message_id: String,
    pub created_at: OffsetDateTime,
    pub attempts: u32,
}

/// Inserts one row inside the caller's transaction.
pub(crate) async fn insert(
    conn: &mut sqlx::AnyConnection,
    kind: OutboxKind,
    payload: &str,
) -> Result<(), sqlx::Error> {
    let now = now_micros();
    sqlx::query(
        "INSERT INTO outbox (kind, payload, message_id, created_at, attempts, next_at) \
         VALUES ($1, $2, $3, $4, 0, $4)",
    )
    .bind(kind.as_str())
    .bind(payload)
    .bind(Uuid::new_v4().to_string())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn entry(row: &AnyRow) -> Result<OutboxEntry, String> {
    let kind: String = col(row, "kind")?;
    Ok(OutboxEntry {
        id: col(row, "id")?,
        kind: OutboxKind::parse(&kind).ok_or_else(|| format!("unknown outbox kind `{kind}`"))?,
        payload: col(row, "payload")?,
        message_id: col(row, "message_id")?,
        created_at: from_micros(col(row, "created_at")?)?,
        attempts: u32::try_from(col::<i64>(row, "attempts")?).unwrap_or(0),
    })
}

impl Store {
    /// The same store, writing outbox rows for the kinds `policy` names.
    pub fn with_outbox(mut self, policy: OutboxPolicy) -> Store {
        self.outbox = policy;
        self
    }

    /// Wakes a publisher waiting in [`Store::outbox_wait`]; called after a commit that wrote
    /// rows.
    pub(crate) fn outbox_committed(&self) {
        self.outbox_wake.notify_waiters();
    }

    /// Waits until a commit in this process wrote outbox rows, or `limit` passed (rows
    /// written by other processes are found by polling).
    pub async fn outbox_wait(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.outbox_wake.notified()).await;
    }

    /// Adds a row outside any other write (a run summary with no transaction of its own).
    pub async fn announce(&self, kind: OutboxKind, payload: &str) -> Result<(), StoreError> {
        if !self.outbox.wants(kind) {
            return Ok(());
        }
        let op = || format!("adding a {} message to the outbox", kind.as_str());
        let mut conn = self.pool.acquire().await.map_err(db(op))?;
        insert(&mut conn, kind, payload).await.map_err(db(op))?;
        self.outbox_committed();
        Ok(())
    }

    /// Claims up to `limit` due rows for `lease` under `token` (unique per publisher), oldest
    /// first. A row claimed by a publisher that died comes back when its lease ends.
    pub async fn claim_outbox(
        &self,
        token: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let op = || "claiming outbox messages".to_string();
        let now = now_micros();
        let until = now.saturating_add(duration_micros(lease));
        // The free-row condition is repeated outside the subquery: on PostgreSQL a second
        // publisher blocked on the same rows re-checks it against the first one's claim.
        let free = "next_at <= $3 AND (claim_until IS NULL OR claim_until < $3)";
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE outbox SET claimed_by = $1, claim_until = $2 WHERE {free} AND id IN \
             (SELECT id FROM outbox WHERE {free} ORDER BY next_at, id LIMIT $4)"
        )))
        .bind(token)
        .bind(until)
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(db(op))?;
        let rows = sqlx::query(
            "SELECT id, kind, payload, message_id, created_at, attempts FROM outbox \
             WHERE claimed_by = $1 AND claim_until = $2 ORDER BY id",
        )
        .bind(token)
        .bind(until)
        .fetch_all(&self.pool)
        .await
        .map_err(db(op))?;
        rows.iter()
            .map(|r| entry(r).map_err(|message| StoreError::Corrupt { op: op(), message }))
            .collect()
    }

    /// Frees the claims a previous life of this publisher held (`prefix` is its token up to
    /// the per-process part), so a restarted daemon need not wait for their leases.
    pub async fn release_outbox_claims(&self, prefix: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE outbox SET claimed_by = NULL, claim_until = NULL \
             WHERE substr(claimed_by, 1, CAST($1 AS INTEGER)) = $2",
        )
        .bind(i64::try_from(prefix.len()).unwrap_or(i64::MAX))
        .bind(prefix)
        .execute(&self.pool)
        .await
        .map_err(db(|| "releasing outbox claims".to_string()))?;
        Ok(done.rows_affected())
    }

    /// The broker confirmed it: the row goes.
    pub async fn outbox_sent(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM outbox WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db(|| format!("removing sent outbox message {id}")))?;
        Ok(())
    }

    /// Publishing failed: try again after `delay`.
    pub async fn outbox_retry(
        &self,
        id: i64,
        delay: Duration,
        error: &str,
    ) -> Result<(), StoreError> {
        let next = now_micros().saturating_add(duration_micros(delay));
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, next_at = $1, last_error = $2, \
             claimed_by = NULL, claim_until = NULL WHERE id = $3",
        )
        .bind(next)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db(|| format!("rescheduling outbox message {id}")))?;
        Ok(())
    }

    /// Rows not yet sent (the `/metrics` gauge and tests).
    pub async fn outbox_len(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
            .fetch_one(&self.pool)
            .await
            .map_err(db(|| "counting outbox messages".to_string()))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
