//! Persistence: runs and results (the ResultsDB data model) in SQLite or PostgreSQL.
//!
//! One [`Store`] over `sqlx::AnyPool`, one portable schema ([`schema`]), SQL written once with
//! `$1, $2, …` placeholders (numbered in order of first appearance, which both backends accept
//! through `Any`). Reads of results are batched: a constant number of queries per call
//! (results + testcases, groups, data), never one query per row.

/// WHERE fragment on `result_data d` (`$1` = key, `$2` = value) that the `result_data_lookup`
/// index serves; a macro so that static SQL can `concat!` it. See `schema::DATA_LOOKUP_SQL`.
///
/// The full-value check compares `CAST(d.value AS TEXT)`, not the bare column: SQLite's
/// constant propagation would otherwise rewrite `substr(d.value, …)` into `substr($2, …)`
/// (given `d.value = $2`), the expression would no longer match the index, and the lookup
/// would scan every row of the key.
macro_rules! data_lookup_sql {
    () => {
        "d.key = $1 AND substr(d.value, 1, 200) = substr($2, 1, 200) AND CAST(d.value AS TEXT) = $2"
    };
}

mod farm;
mod outbox;
mod query;
mod queue;
mod results;
mod runs;
pub mod schema;
mod sql;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyPool, Transaction};
use time::OffsetDateTime;

pub use farm::{Hold, JobFilter, MAX_HOLD, NewHold, hold_duration};
pub use outbox::{OutboxEntry, OutboxKind, OutboxPolicy};
pub use query::{
    DataMatch, GroupFilter, GroupRow, ResultFilter, RunFilter, RunSummary, TestcaseFilter,
};
pub use queue::{
    DaemonRecord, Enqueued, Fence, Job, JobEnd, NewJob, Recovered, Registration, TaskLoad,
};
pub use results::{NewGroup, NewResult, StoredResult};
pub use runs::{
    Attempt, NewRun, Phase, RunCompletion, RunParams, RunRecord, RunState, UnknownRunState,
};
pub use sql::like_pattern;

/// Which SQL engine a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Everything that can go wrong in the store. The display names the operation and then the
/// cause (which is also the `source()`), like the rest of the crate's errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("unsupported database URL `{0}` (expected sqlite://PATH or postgres://…)")]
    UnsupportedUrl(String),
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: {source}")]
    Db {
        op: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying schema migration {version} ({name}): {source}")]
    Migration {
        version: i64,
        name: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "database schema version {found} is newer than this ferrotron knows ({known}): upgrade ferrotron"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("{what} {key} not found")]
    NotFound { what: &'static str, key: String },
    #[error("{op}: {message}")]
    Invalid { op: String, message: String },
    #[error("{op}: unreadable row: {message}")]
    Corrupt { op: String, message: String },
    #[error(
        "{op}: this daemon no longer holds job {job} (its claim was taken over by another daemon, or the job ended); nothing was written"
    )]
    Fenced { op: String, job: i64 },
    #[error("{op}: the database did not answer within {} s", after.as_secs())]
    Unanswered { op: String, after: Duration },
}

impl StoreError {
    /// True when the operation failed on a UNIQUE/PRIMARY KEY constraint (e.g. a run uuid that
    /// already exists).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Db { source: sqlx::Error::Database(e), .. } if e.is_unique_violation())
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// True when a fenced write was refused: the claim is someone else's now.
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Fenced { .. })
    }

    /// True when trying again later may succeed: the database could not be reached or the
    /// connection broke (as opposed to a refused or invalid write).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Db { source, .. } => match source {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::BeginFailed => true,
                // A server shutting down, a full disk, a lock timeout: not a refused write.
                sqlx::Error::Database(e) => e.kind() == sqlx::error::ErrorKind::Other,
                _ => false,
            },
            StoreError::Io { .. } | StoreError::Unanswered { .. } => true,
            _ => false,
        }
    }
}

/// `map_err` adapter: wraps a sqlx error with the (lazily built) operation name.
pub(crate) fn db<F: FnOnce() -> String>(op: F) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Db { op: op(), source }
}

/// Handle to the database. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// Which bus messages writes add to the outbox (none unless the process publishes).
    outbox: OutboxPolicy,
    /// Signalled after a commit that wrote outbox rows (shared by clones).
    outbox_wake: std::sync::Arc<tokio::sync::Notify>,
    /// Set on a handle made by [`Store::fenced`]: run writes check the claim first.
    fence: Option<std::sync::Arc<Fence>>,
}

impl Store {
    /// Opens (and migrates) the database at `url`:
    /// - `sqlite:///abs/path/ferrotron.db`, `sqlite://rel/path.db` or `sqlite:path.db`: the file
    ///   and its parent directories are created when missing; WAL journal, foreign keys on,
    ///   5 s busy timeout, `synchronous=NORMAL` (safe with WAL; the last commits may be lost on
    ///   power failure, never corrupted). `sqlite::memory:` gives a private in-memory database.
    /// - `postgres://…` or `postgresql://…`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(crate::util::redact_url(url)));
        };

        let pool = match dialect {
            // No ping on every checkout: it is one more round trip per POST. After a server
            // restart a stale connection fails its next query once and the pool drops it.
            Dialect::Postgres => AnyPoolOptions::new()
                .test_before_acquire(false)
                .after_release(drop_if_in_transaction)
                .connect(url)
                .await
                .map_err(|e| {
                    // rustls names the failed check (UnknownIssuer, NotValidForName) and
                    // nothing else: say what to look at.
                    let hint = if e.to_string().contains("invalid peer certificate") {
                        " (TLS: the server's certificate must be signed by the CA in \
                         `sslrootcert=FILE` and name the host of the URL)"
                    } else {
                        ""
                    };
                    db(|| format!("connecting to {}{hint}", crate::util::redact_url(url)))(e)
                })?,
            Dialect::Sqlite => open_sqlite(url).await?,
        };
        schema::migrate(&pool, dialect).await?;
        Ok(Store {
            pool,
            dialect,
            outbox: OutboxPolicy::default(),
            outbox_wake: Default::default(),
            fence: None,
        })
    }

    /// The same store, with every write about a run (create, state, completion) made only
    /// while `fence`'s claim is still held: the handle a daemon gives the runner of a job,
    /// so that a daemon whose job was taken over cannot record a result for it.
    pub fn fenced(&self, fence: Fence) -> Store {
        Store {
            fence: Some(std::sync::Arc::new(fence)),
            ..self.clone()
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The underlying pool, for queries the store does not offer (the web layer's filters).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A write transaction. SQLite gets `BEGIN IMMEDIATE`: a deferred transaction that reads
    /// first and then writes fails with SQLITE_BUSY (no waiting) when another connection wrote
    /// in between, which concurrent POSTs would hit constantly.
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        begin(&self.pool, self.dialect).await
    }
}

pub(crate) async fn begin(
    pool: &AnyPool,
    dialect: Dialect,
) -> Result<Transaction<'static, Any>, sqlx::Error> {
    match dialect {
        Dialect::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
        Dialect::Postgres => pool.begin().await,
    }
}

/// [`begin`] on a connection the caller already holds.
pub(crate) async fn begin_on(
    conn: &mut sqlx::AnyConnection,
    dialect: Dialect,
) -> Result<Transaction<'_, Any>, sqlx::Error> {
    use sqlx::Connection;
    match dialect {
        Dialect::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await,
        Dialect::Postgres => conn.begin().await,
    }
}

/// A connection handed back with a transaction still open (a COMMIT that failed on a full
/// disk, a future dropped half-way) is closed, not reused: sqlx would refuse every later
/// `begin` on it ("non-zero transaction depth") and the daemon would answer 503 for good.
fn drop_if_in_transaction(
    conn: &mut sqlx::AnyConnection,
    _meta: sqlx::pool::PoolConnectionMetadata,
) -> futures_util::future::BoxFuture<'_, Result<bool, sqlx::Error>> {
    use sqlx::Connection as _;
    let keep = !conn.is_in_transaction();
    if !keep {
        tracing::debug!("closing a database connection returned inside a transaction");
    }
    Box::pin(std::future::ready(Ok(keep)))
}

async fn open_sqlite(url: &str) -> Result<AnyPool, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or_default();
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(StoreError::UnsupportedUrl(url.to_string()));
    }
    let memory = path == ":memory:";

    let mut url = url.to_string();
    if !memory {
        if let Some(parent) = Path::new(path).parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
                op: format!("creating directory {}", parent.display()),
                source,
            })?;
        }
        // Create the file when missing unless the URL says otherwise.
        if !query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("mode="))) {
            url.push(if query.is_some() { '&' } else { '?' });
            url.push_str("mode=rwc");
        }
    }

    // A local file needs no liveness ping per checkout. Four connections: SQLite has one
    // writer at a time, and every connection keeps its own page and statement caches.
    let mut options = AnyPoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .after_release(drop_if_in_transaction)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                for pragma in [
                    "PRAGMA foreign_keys = ON",
                    "PRAGMA busy_timeout = 5000",
                    "PRAGMA synchronous = NORMAL",
                    // LIKE as PostgreSQL's: case-sensitive (`:like` filters answer the same
                    // rows whatever the store).
                    "PRAGMA case_sensitive_like = ON",
                ] {
                    sqlx::query(pragma).execute(&mut *conn).await?;
                }
                Ok(())
            })
        });
    if memory {
        // Every connection to `:memory:` would be its own database: keep exactly one alive.
        options = options
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None);
    }
    let pool = options
        .connect(&url)
        .await
        .map_err(db(|| format!("opening {url}")))?;
    if !memory {
        // Persistent in the file; needs no lock when the file is already in WAL mode.
        sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&pool)
            .await
            .map_err(db(|| format!("enabling WAL on {url}")))?;
    }
    Ok(pool)
}

/// A column of `row`, with a message naming the column on failure.
pub(crate) fn col<'r, T>(row: &'r sqlx::any::AnyRow, name: &str) -> Result<T, String>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    use sqlx::Row;
    row.try_get(name).map_err(|e| format!("column {name}: {e}"))
}

/// Microseconds since the Unix epoch (the stored form of every time).
pub(crate) fn micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000)).unwrap_or(i64::MAX)
}

/// The inverse of [`micros`]; fails (with a message) outside OffsetDateTime's range (±9999 years).
pub(crate) fn from_micros(us: i64) -> Result<OffsetDateTime, String> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .map_err(|e| format!("time {us} µs out of range: {e}"))
}

pub(crate) fn now_micros() -> i64 {
    micros(OffsetDateTime::now_utc())
}

/// `t` truncated to what the store keeps (whole microseconds, UTC).
pub fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .expect("a truncated nanosecond is valid")
}

pub(crate) fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
