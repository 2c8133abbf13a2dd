//! The one portable schema and the tiny migrator that applies it.
//!
//! DDL is written once for SQLite and PostgreSQL. The only dialect substitution is the
//! auto-increment primary key (`AUTO_ID` below). Times are BIGINT microseconds since the Unix
//! epoch (the `Any` driver has no timestamp type); uuids are TEXT in their hyphenated form.
//!
//! Migrations are append-only: never edit one that has shipped, add a new one.

use sqlx::AnyPool;

use super::{Dialect, StoreError, now_micros};

/// One schema version: a name and its statements (no `;` splitting needed).
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub statements: &'static [&'static str],
}

/// Token in DDL replaced by the dialect's auto-increment primary key.
const AUTO_ID: &str = "AUTO_ID";

/// Length of the prefix of `result_data.value` that the lookup index covers. PostgreSQL's
/// B-tree refuses entries larger than ~2.7 kB, so indexing the whole value would make a long
/// data value fail its insert (ResultsDB hit exactly this). Queries must repeat the expression:
/// see [`DATA_LOOKUP_SQL`].
pub const DATA_VALUE_INDEX_PREFIX: usize = 200;

/// The WHERE fragment (on `result_data d`, with `$1` = key and `$2` = value) that uses the
/// `result_data_lookup` index; rows come back in index order when sorted by `d.result_id`.
pub const DATA_LOOKUP_SQL: &str = data_lookup_sql!();

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "resultsdb model and runs",
        statements: &[
            // --- ResultsDB model -------------------------------------------------------------
            "CREATE TABLE testcases (
            id AUTO_ID,
            name TEXT NOT NULL UNIQUE CHECK (name <> ''),
            ref_url TEXT
        )",
            // A run is the group whose uuid is the run's uuid.
            "CREATE TABLE result_groups (
            id AUTO_ID,
            uuid TEXT NOT NULL UNIQUE,
            description TEXT,
            ref_url TEXT
        )",
            "CREATE TABLE results (
            id AUTO_ID,
            testcase_id BIGINT NOT NULL REFERENCES testcases (id),
            outcome TEXT NOT NULL CHECK (outcome <> ''),
            note TEXT,
            ref_url TEXT,
            submit_time BIGINT NOT NULL
        )",
            // /testcases/<name>/results, /results/latest (newest per testcase), testcases= filter.
            "CREATE INDEX results_testcase_time ON results (testcase_id, submit_time)",
            // since= filter and _sort on submit_time.
            "CREATE INDEX results_submit_time ON results (submit_time)",
            "CREATE TABLE results_groups (
            result_id BIGINT NOT NULL REFERENCES results (id) ON DELETE CASCADE,
            group_id BIGINT NOT NULL REFERENCES result_groups (id) ON DELETE CASCADE,
            PRIMARY KEY (result_id, group_id)
        )",
            // /groups/<uuid>/results, groups= filter, run_results.
            "CREATE INDEX results_groups_group ON results_groups (group_id, result_id)",
            // Multi-valued data: `ord` keeps the order of a key's values.
            "CREATE TABLE result_data (
            result_id BIGINT NOT NULL REFERENCES results (id) ON DELETE CASCADE,
            key TEXT NOT NULL CHECK (key <> ''),
            ord INTEGER NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (result_id, key, ord)
        )",
            // `results?item=X` newest first: equality on (key, value prefix), then result_id desc.
            "CREATE INDEX result_data_lookup ON result_data (key, substr(value, 1, 200), result_id)",
            // --- runs --------------------------------------------------------------------------
            "CREATE TABLE runs (
            id AUTO_ID,
            uuid TEXT NOT NULL UNIQUE,
            task TEXT NOT NULL,
            item TEXT NOT NULL,
            item_type TEXT NOT NULL,
            arch TEXT NOT NULL,
            backend TEXT NOT NULL,
            state TEXT NOT NULL,
            exit_code INTEGER,
            params TEXT NOT NULL,
            error TEXT,
            log_path TEXT NOT NULL,
            artifacts_dir TEXT NOT NULL,
            owner TEXT,
            created_at BIGINT NOT NULL,
            started_at BIGINT,
            finished_at BIGINT
        )",
            "CREATE INDEX runs_created ON runs (created_at)",
            "CREATE INDEX runs_task_created ON runs (task, created_at)",
            "CREATE INDEX runs_item_created ON runs (item, created_at)",
            // Small partial index: only live runs are in it (the reaper's question). The predicate
            // must match `runs::LIVE_PREDICATE` textually for SQLite to use it.
            "CREATE INDEX runs_live ON runs (state)
            WHERE state IN ('queued', 'provisioning', 'running', 'collecting')",
            "CREATE TABLE run_phases (
            run_id BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            name TEXT NOT NULL,
            started_at BIGINT NOT NULL,
            duration_us BIGINT NOT NULL,
            PRIMARY KEY (run_id, seq)
        )",
            "CREATE TABLE run_attempts (
            run_id BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            attempt INTEGER NOT NULL,
            started_at BIGINT NOT NULL,
            finished_at BIGINT,
            error TEXT,
            PRIMARY KEY (run_id, attempt)
        )",
        ],
    },
    // The daemon's job queue (store/queue.rs); its statements as they shipped.
    Migration {
        version: 2,
        name: "job queue and seen message ids",
        statements: &[
            "CREATE TABLE jobs (
            id AUTO_ID,
            uuid TEXT NOT NULL UNIQUE,
            message_id TEXT,
            topic TEXT NOT NULL,
            rule TEXT NOT NULL,
            task TEXT NOT NULL,
            item TEXT NOT NULL,
            item_type TEXT NOT NULL,
            arch TEXT NOT NULL,
            pool TEXT NOT NULL,
            provider TEXT,
            priority INTEGER NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            max_attempts INTEGER NOT NULL,
            claimed_by TEXT,
            lease_until BIGINT,
            not_before BIGINT NOT NULL,
            received_at BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            claimed_at BIGINT,
            finished_at BIGINT,
            error TEXT,
            outcome TEXT
        )",
            // The claim: queued jobs of one pool and task, best priority first, then oldest.
            // The predicate must match `QUEUED` textually for SQLite to use the index.
            "CREATE INDEX jobs_ready ON jobs (pool, task, priority, id) WHERE state = 'queued'",
            // Heartbeats and recovery: claimed jobs by owner and by lease.
            "CREATE INDEX jobs_claimed ON jobs (claimed_by, lease_until)
            WHERE state IN ('provisioning', 'running', 'collecting')",
            "CREATE INDEX jobs_message ON jobs (message_id)",
            "CREATE INDEX jobs_state ON jobs (state)",
            "CREATE TABLE seen_messages (
            message_id TEXT PRIMARY KEY,
            topic TEXT NOT NULL,
            received_at BIGINT NOT NULL,
            jobs INTEGER NOT NULL
        )",
            "CREATE INDEX seen_messages_received ON seen_messages (received_at)",
        ],
    },
    Migration {
        version: 3,
        name: "review: cancel requests, run list indexes",
        statements: &[
            // A cancel asked for over the API; the daemon that owns the run acts on it.
            "ALTER TABLE runs ADD COLUMN cancel_requested_at BIGINT",
            // Runs list filtered by state or arch, newest first.
            "CREATE INDEX runs_state_created ON runs (state, created_at)",
            "CREATE INDEX runs_arch_created ON runs (arch, created_at)",
        ],
    },
    // Fencing (store/queue.rs): every claim gets a token that every later write about the job
    // must present, and daemons register their id so that two live processes cannot share one.
    Migration {
        version: 4,
        name: "lease tokens and daemon registrations",
        statements: &[
            // Set by each claim, unique per claim (`CLAIM-BATCH:JOB-ID`); kept after the owner
            // ended the job (so that a retried end can tell it already landed), cleared by a
            // takeover.
            "ALTER TABLE jobs ADD COLUMN lease_token TEXT",
            "CREATE INDEX jobs_lease_token ON jobs (lease_token)",
            // One row per daemon id: the process that holds it and when it last said so.
            "CREATE TABLE daemons (
                id TEXT PRIMARY KEY,
                instance TEXT NOT NULL,
                host TEXT NOT NULL,
                pid BIGINT NOT NULL,
                started_at BIGINT NOT NULL,
                seen_at BIGINT NOT NULL
            )",
        ],
    },
    // Farm control: rerun images and holds (store/farm.rs). Numbered after its issue (11).
    Migration {
        version: 11,
        name: "farm control: rerun images, holds",
        statements: &[
            "ALTER TABLE jobs ADD COLUMN image TEXT",
            "CREATE TABLE holds (
                id AUTO_ID,
                task TEXT NOT NULL,
                hold_s BIGINT NOT NULL,
                reason TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                run_uuid TEXT,
                expires_at BIGINT,
                login TEXT,
                released_at BIGINT
            )",
            "CREATE INDEX holds_task ON holds (task)",
        ],
    },
    // Bus messages committed with what they announce (store/outbox.rs). Numbered after its
    // issue (13), so parallel branches did not collide; migrations are applied by number.
    Migration {
        version: 13,
        name: "outbox of bus messages",
        statements: &[
            "CREATE TABLE outbox (
                id AUTO_ID,
                kind TEXT NOT NULL,
                payload TEXT NOT NULL,
                message_id TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                attempts INTEGER NOT NULL,
                next_at BIGINT NOT NULL,
                claimed_by TEXT,
                claim_until BIGINT,
                last_error TEXT
            )",
            // The publisher's question: what is due, oldest first.
            "CREATE INDEX outbox_due ON outbox (next_at, id)",
        ],
    },
    // Run uuids drawn at random per claim (store/queue.rs), not derived from the job's (a
    // public value) and the attempt number; each run names the job it is an attempt of.
    Migration {
        version: 14,
        name: "random run uuids, runs of a job",
        statements: &[
            "ALTER TABLE jobs ADD COLUMN run_uuid TEXT",
            "ALTER TABLE runs ADD COLUMN job_id BIGINT",
            "CREATE INDEX runs_job ON runs (job_id)",
        ],
    },
];

/// The newest schema version this binary knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

fn render(stmt: &str, dialect: Dialect) -> String {
    let id = match dialect {
        Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Dialect::Postgres => "BIGSERIAL PRIMARY KEY",
    };
    stmt.replace(AUTO_ID, id)
}

const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)";

/// Applies every migration not yet recorded in `schema_migrations`, each in its own transaction.
///
/// Safe against a concurrent migrator (two daemons starting on one PostgreSQL): the first
/// statement of each migration's transaction inserts its `schema_migrations` row, so the second
/// migrator blocks on the primary key, then sees a unique violation and skips the migration.
pub(crate) async fn migrate(pool: &AnyPool, dialect: Dialect) -> Result<(), StoreError> {
    migrate_with(pool, dialect, MIGRATIONS).await
}

pub(crate) async fn migrate_with(
    pool: &AnyPool,
    dialect: Dialect,
    migrations: &[Migration],
) -> Result<(), StoreError> {
    let op = || "create schema_migrations".to_string();
    // `CREATE TABLE IF NOT EXISTS` can still race on PostgreSQL (catalog unique violation):
    // a second try then finds the table.
    if sqlx::query(CREATE_MIGRATIONS_TABLE)
        .execute(pool)
        .await
        .is_err()
    {
        sqlx::query(CREATE_MIGRATIONS_TABLE)
            .execute(pool)
            .await
            .map_err(super::db(op))?;
    }

    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(pool)
            .await
            .map_err(super::db(|| "read schema_migrations".to_string()))?;
    let known = migrations.last().map_or(0, |m| m.version);
    if let Some(&newest) = applied.last()
        && newest > known
    {
        return Err(StoreError::SchemaTooNew {
            found: newest,
            known,
        });
    }

    for m in migrations {
        if applied.contains(&m.version) {
            continue;
        }
        let fail = |source| StoreError::Migration {
            version: m.version,
            name: m.name,
            source,
        };
        let mut tx = super::begin(pool, dialect).await.map_err(fail)?;
        let claimed = sqlx::query(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(m.version)
        .bind(m.name)
        .bind(now_micros())
        .execute(&mut *tx)
        .await;
        match claimed {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                // Another migrator applied it while we looked.
                tx.rollback().await.map_err(fail)?;
                continue;
            }
            Err(e) => return Err(fail(e)),
        }
        for stmt in m.statements {
            sqlx::query(sqlx::AssertSqlSafe(render(stmt, dialect)))
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
        }
        tx.commit().await.map_err(fail)?;
    }
    Ok(())
}
