//! Read queries for review: filtered result lists (the ResultsDB API's filters), latest per
//! testcase, groups, testcases, and the runs list with its filters.
//!
//! Every list is one id query (filters in SQL, with `limit + 1` rows so the caller knows
//! whether a next page exists) followed by the store's batched reads: a constant number of
//! statements per request, whatever the page size.

use std::collections::{BTreeMap, HashMap};

use sqlx::any::AnyRow;
use uuid::Uuid;

use super::runs::{RunRecord, RunState};
use super::sql::{Sql, like_pattern};
use super::{Store, StoreError, StoredResult, col, db, now_micros, schema};

/// How one data key is matched: any of the values (OR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataMatch {
    Exact(Vec<String>),
    /// `KEY:like=` patterns with `*` wildcards.
    Like(Vec<String>),
}

/// The filters of `GET /results` (every condition must hold; list values mean OR).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultFilter {
    /// Microseconds since the epoch: from, and optionally to (inclusive).
    pub since: Option<(i64, Option<i64>)>,
    pub outcomes: Vec<String>,
    pub groups: Vec<String>,
    pub testcases: Vec<String>,
    pub testcases_like: Vec<String>,
    pub data: Vec<(String, DataMatch)>,
    /// Oldest first (`_sort=asc:submit_time`); newest first otherwise.
    pub ascending: bool,
}

impl ResultFilter {
    pub fn is_empty(&self) -> bool {
        self.since.is_none()
            && self.outcomes.is_empty()
            && self.groups.is_empty()
            && self.testcases.is_empty()
            && self.testcases_like.is_empty()
            && self.data.is_empty()
    }

    /// `WHERE …` (or nothing) on `results r`.
    ///
    /// One exact data filter (`item` when there is one) drives the query through the
    /// `result_data_lookup` index; every other condition is checked per candidate row through
    /// primary keys (`EXISTS`), so a broad filter such as `type=koji_build` never materialises
    /// a million ids.
    fn where_sql(&self, sql: &mut Sql) {
        let conds = self.where_conds(sql);
        if !conds.is_empty() {
            sql.push(" WHERE ");
            sql.push(&conds.join(" AND "));
        }
    }

    /// The conditions of [`Self::where_sql`], to AND with others.
    fn where_conds(&self, sql: &mut Sql) -> Vec<String> {
        let mut conds: Vec<String> = Vec::new();
        let driver = self
            .data
            .iter()
            .position(|(k, m)| k == "item" && matches!(m, DataMatch::Exact(_)))
            .or_else(|| {
                self.data
                    .iter()
                    .position(|(_, m)| matches!(m, DataMatch::Exact(_)))
            });
        if let Some(i) = driver
            && let (key, DataMatch::Exact(values)) = &self.data[i]
        {
            let k = sql.arg_str(key);
            let alts: Vec<String> = values
                .iter()
                .map(|v| {
                    let v = sql.arg_str(v);
                    // The one spelling the `result_data_lookup` index serves.
                    format!(
                        "({})",
                        schema::DATA_LOOKUP_SQL
                            .replace("$1", "\u{1}")
                            .replace("$2", "\u{2}")
                            .replace('\u{1}', &k)
                            .replace('\u{2}', &v)
                    )
                })
                .collect();
            conds.push(format!(
                "r.id IN (SELECT d.result_id FROM result_data d WHERE {})",
                alts.join(" OR ")
            ));
        }
        for (i, (key, m)) in self.data.iter().enumerate() {
            if Some(i) == driver {
                continue;
            }
            let k = sql.arg_str(key);
            let test = match m {
                DataMatch::Exact(values) => format!("d.value IN {}", sql.list(values)),
                DataMatch::Like(patterns) => patterns
                    .iter()
                    .map(|p| {
                        let p = sql.arg_str(&like_pattern(p));
                        format!("d.value LIKE {p} ESCAPE '\\'")
                    })
                    .collect::<Vec<_>>()
                    .join(" OR "),
            };
            conds.push(format!(
                "EXISTS (SELECT 1 FROM result_data d WHERE d.result_id = r.id AND d.key = {k} \
                 AND ({test}))"
            ));
        }
        if !self.groups.is_empty() {
            let l = sql.list(&self.groups);
            conds.push(if driver.is_some() {
                format!(
                    "EXISTS (SELECT 1 FROM results_groups rg JOIN result_groups g ON g.id = rg.group_id \
                     WHERE rg.result_id = r.id AND g.uuid IN {l})"
                )
            } else {
                format!(
                    "r.id IN (SELECT rg.result_id FROM results_groups rg \
                     JOIN result_groups g ON g.id = rg.group_id WHERE g.uuid IN {l})"
                )
            });
        }
        let mut tc: Vec<String> = Vec::new();
        if !self.testcases.is_empty() {
            let l = sql.list(&self.testcases);
            tc.push(format!("t.name IN {l}"));
        }
        for p in &self.testcases_like {
            let p = sql.arg_str(&like_pattern(p));
            tc.push(format!("t.name LIKE {p} ESCAPE '\\'"));
        }
        if !tc.is_empty() {
            conds.push(format!(
                "r.testcase_id IN (SELECT t.id FROM testcases t WHERE {})",
                tc.join(" OR ")
            ));
        }
        if !self.outcomes.is_empty() {
            let l = sql.list(&self.outcomes);
            conds.push(format!("r.outcome IN {l}"));
        }
        if let Some((from, to)) = self.since {
            let f = sql.arg_i64(from);
            conds.push(format!("r.submit_time >= {f}"));
            if let Some(to) = to {
                let t = sql.arg_i64(to);
                conds.push(format!("r.submit_time <= {t}"));
            }
        }
        conds
    }

    fn order_sql(&self) -> &'static str {
        // The unary `+` keeps SQLite from walking the whole submit_time index in order and
        // testing every row against a selective filter; the sort is of the matching rows only.
        if self.ascending {
            " ORDER BY +r.submit_time ASC, r.id ASC"
        } else {
            " ORDER BY +r.submit_time DESC, r.id DESC"
        }
    }
}

/// A result group with its result count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    pub uuid: String,
    pub description: Option<String>,
    pub ref_url: Option<String>,
    pub results_count: i64,
}

/// The filters of `GET /groups`.
#[derive(Debug, Clone, Default)]
pub struct GroupFilter {
    pub uuids: Vec<String>,
    pub description: Vec<String>,
    pub description_like: Vec<String>,
}

/// The filters of `GET /testcases`.
#[derive(Debug, Clone, Default)]
pub struct TestcaseFilter {
    pub names: Vec<String>,
    pub name_like: Vec<String>,
}

/// The runs list's filters (all optional; list values mean OR).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub task: Vec<String>,
    pub item: Vec<String>,
    pub item_type: Vec<String>,
    pub arch: Vec<String>,
    pub state: Vec<RunState>,
    /// Runs with at least one result of one of these outcomes.
    pub outcome: Vec<String>,
    /// created_at bounds in microseconds (inclusive).
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Substring of task, item or uuid.
    pub search: Option<String>,
}

/// A run in a list: its record (no phases or attempts) and its results' outcome counts.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub run: RunRecord,
    pub outcomes: BTreeMap<String, i64>,
    pub cancel_requested: bool,
}

/// Result rows with their testcase; conditions follow as `AND …`. `CROSS JOIN` keeps SQLite
/// from driving the query from the (small) testcases table.
const RESULT_ROWS: &str = "SELECT r.id, r.outcome, r.note, r.ref_url, r.submit_time, \
    t.name AS testcase, t.ref_url AS testcase_ref_url \
    FROM results r CROSS JOIN testcases t WHERE t.id = r.testcase_id";

const RUN_COLUMNS: &str = "r.id, r.uuid, r.task, r.item, r.item_type, r.arch, r.backend, \
    r.state, r.exit_code, r.params, r.error, r.log_path, r.artifacts_dir, r.owner, \
    r.created_at, r.started_at, r.finished_at, r.cancel_requested_at";

impl Store {
    /// One page of results matching `f`: `limit` rows after skipping `offset`, plus one more
    /// when there is one (so the caller can tell whether a next page exists). Two statements.
    pub async fn result_page(
        &self,
        f: &ResultFilter,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<StoredResult>, StoreError> {
        let mut sql = Sql::new(RESULT_ROWS);
        for c in f.where_conds(&mut sql) {
            sql.push(" AND ");
            sql.push(&c);
        }
        sql.push(f.order_sql());
        let l = sql.arg_i64(i64::from(limit) + 1);
        let o = sql.arg_i64(i64::try_from(offset).unwrap_or(i64::MAX));
        sql.push(&format!(" LIMIT {l} OFFSET {o}"));
        self.load_rows(&sql, || "listing results".to_string()).await
    }

    /// The newest result matching `f` per testcase, and per the first value of each of
    /// the `distinct_on` data keys (ResultsDB's `/results/latest`), newest first: at most
    /// `limit` of them, plus one more when there are more (so the caller can tell). Two
    /// statements.
    pub async fn latest_results(
        &self,
        f: &ResultFilter,
        distinct_on: &[String],
        limit: u32,
    ) -> Result<Vec<StoredResult>, StoreError> {
        let sql = latest_sql(f, distinct_on, limit);
        self.load_rows(&sql, || "listing the latest results".to_string())
            .await
    }

    /// Runs `sql` (a [`RESULT_ROWS`] query), then loads the groups and data of those results
    /// in one more statement.
    async fn load_rows(
        &self,
        sql: &Sql,
        op: impl Fn() -> String + Copy,
    ) -> Result<Vec<StoredResult>, StoreError> {
        let corrupt = |message| StoreError::Corrupt { op: op(), message };
        let mut conn = self.pool.acquire().await.map_err(db(op))?;
        let rows = sql.query().fetch_all(&mut *conn).await.map_err(db(op))?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut results = Vec::with_capacity(rows.len());
        let mut index = HashMap::with_capacity(rows.len());
        for row in &rows {
            let r = super::results::result_from_row(row).map_err(corrupt)?;
            index.insert(r.id, results.len());
            results.push(r);
        }
        let mut more = Sql::default();
        let ids: Vec<String> = results.iter().map(|r| more.arg_i64(r.id)).collect();
        let ids = ids.join(", ");
        more.push(&format!(
            "SELECT rg.result_id AS result_id, CAST(0 AS BIGINT) AS kind, g.uuid AS k, \
             CAST('' AS TEXT) AS v, g.id AS o FROM results_groups rg \
             JOIN result_groups g ON g.id = rg.group_id WHERE rg.result_id IN ({ids}) \
             UNION ALL SELECT d.result_id, CAST(1 AS BIGINT), d.key, d.value, CAST(d.ord AS BIGINT) \
             FROM result_data d WHERE d.result_id IN ({ids}) ORDER BY 1, 2, 5"
        ));
        for row in more.query().fetch_all(&mut *conn).await.map_err(db(op))? {
            let id: i64 = col(&row, "result_id").map_err(corrupt)?;
            let Some(&i) = index.get(&id) else { continue };
            let kind: i64 = col(&row, "kind").map_err(corrupt)?;
            let k: String = col(&row, "k").map_err(corrupt)?;
            if kind == 0 {
                results[i].groups.push(k);
            } else {
                let v: String = col(&row, "v").map_err(corrupt)?;
                results[i].data.entry(k).or_default().push(v);
            }
        }
        Ok(results)
    }

    /// A page of groups (`limit + 1` rows at most), newest first.
    pub async fn group_page(
        &self,
        f: &GroupFilter,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<GroupRow>, StoreError> {
        let mut sql = Sql::new(
            "SELECT g.uuid, g.description, g.ref_url, \
             (SELECT COUNT(*) FROM results_groups rg WHERE rg.group_id = g.id) AS results_count \
             FROM result_groups g",
        );
        let mut conds = Vec::new();
        if !f.uuids.is_empty() {
            conds.push(format!("g.uuid IN {}", sql.list(&f.uuids)));
        }
        let mut desc = Vec::new();
        if !f.description.is_empty() {
            desc.push(format!("g.description IN {}", sql.list(&f.description)));
        }
        for p in &f.description_like {
            let p = sql.arg_str(&like_pattern(p));
            desc.push(format!("g.description LIKE {p} ESCAPE '\\'"));
        }
        if !desc.is_empty() {
            conds.push(format!("({})", desc.join(" OR ")));
        }
        if !conds.is_empty() {
            sql.push(" WHERE ");
            sql.push(&conds.join(" AND "));
        }
        let l = sql.arg_i64(i64::from(limit) + 1);
        let o = sql.arg_i64(i64::try_from(offset).unwrap_or(i64::MAX));
        sql.push(&format!(" ORDER BY g.id DESC LIMIT {l} OFFSET {o}"));
        let rows = sql
            .query()
            .fetch_all(&self.pool)
            .await
            .map_err(db(|| "listing groups".to_string()))?;
        rows.iter()
            .map(group_from_row)
            .collect::<Result<_, _>>()
            .map_err(|message| StoreError::Corrupt {
                op: "listing groups".into(),
                message,
            })
    }

    /// Creates the group, or updates the description/ref_url given (POST /groups).
    pub async fn upsert_group(
        &self,
        uuid: &str,
        description: Option<&str>,
        ref_url: Option<&str>,
    ) -> Result<GroupRow, StoreError> {
        let op = || format!("saving group {uuid}");
        sqlx::query(
            "INSERT INTO result_groups (uuid, description, ref_url) VALUES ($1, $2, $3) \
             ON CONFLICT (uuid) DO UPDATE SET \
             description = COALESCE(excluded.description, result_groups.description), \
             ref_url = COALESCE(excluded.ref_url, result_groups.ref_url)",
        )
        .bind(uuid)
        .bind(description)
        .bind(ref_url)
        .execute(&self.pool)
        .await
        .map_err(db(op))?;
        let f = GroupFilter {
            uuids: vec![uuid.to_string()],
            ..GroupFilter::default()
        };
        self.group_page(&f, 1, 0)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::NotFound {
                what: "group",
                key: uuid.to_string(),
            })
    }

    /// A page of testcases (`limit + 1` rows at most) by name: (name, ref_url).
    pub async fn testcase_page(
        &self,
        f: &TestcaseFilter,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let mut sql = Sql::new("SELECT t.name, t.ref_url FROM testcases t");
        let mut conds = Vec::new();
        if !f.names.is_empty() {
            conds.push(format!("t.name IN {}", sql.list(&f.names)));
        }
        for p in &f.name_like {
            let p = sql.arg_str(&like_pattern(p));
            conds.push(format!("t.name LIKE {p} ESCAPE '\\'"));
        }
        if !conds.is_empty() {
            sql.push(" WHERE ");
            sql.push(&conds.join(" OR "));
        }
        let l = sql.arg_i64(i64::from(limit) + 1);
        let o = sql.arg_i64(i64::try_from(offset).unwrap_or(i64::MAX));
        sql.push(&format!(" ORDER BY t.name LIMIT {l} OFFSET {o}"));
        let rows = sql
            .query()
            .fetch_all(&self.pool)
            .await
            .map_err(db(|| "listing testcases".to_string()))?;
        rows.iter()
            .map(|r| Ok((col(r, "name")?, col(r, "ref_url")?)))
            .collect::<Result<_, String>>()
            .map_err(|message| StoreError::Corrupt {
                op: "listing testcases".into(),
                message,
            })
    }

    /// Creates the testcase or sets its ref_url (POST /testcases).
    pub async fn upsert_testcase(
        &self,
        name: &str,
        ref_url: Option<&str>,
    ) -> Result<(String, Option<String>), StoreError> {
        let op = || format!("saving testcase {name}");
        sqlx::query(
            "INSERT INTO testcases (name, ref_url) VALUES ($1, $2) ON CONFLICT (name) \
             DO UPDATE SET ref_url = COALESCE(excluded.ref_url, testcases.ref_url)",
        )
        .bind(name)
        .bind(ref_url)
        .execute(&self.pool)
        .await
        .map_err(db(op))?;
        let row: (String, Option<String>) =
            sqlx::query_as("SELECT name, ref_url FROM testcases WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await
                .map_err(db(op))?;
        Ok(row)
    }

    /// A page of runs (`limit + 1` at most), newest first, with their outcome counts:
    /// two statements.
    pub async fn run_page(
        &self,
        f: &RunFilter,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<RunSummary>, StoreError> {
        let op = || "listing runs".to_string();
        let mut sql = Sql::new(&format!("SELECT {RUN_COLUMNS} FROM runs r"));
        let mut conds = Vec::new();
        for (column, values) in [
            ("r.task", &f.task),
            ("r.item", &f.item),
            ("r.item_type", &f.item_type),
            ("r.arch", &f.arch),
        ] {
            if !values.is_empty() {
                conds.push(format!("{column} IN {}", sql.list(values)));
            }
        }
        if !f.state.is_empty() {
            let states: Vec<String> = f.state.iter().map(|s| s.as_str().to_string()).collect();
            conds.push(format!("r.state IN {}", sql.list(&states)));
        }
        if !f.outcome.is_empty() {
            let l = sql.list(&f.outcome);
            conds.push(format!(
                "EXISTS (SELECT 1 FROM result_groups g JOIN results_groups rg ON rg.group_id = g.id \
                 JOIN results res ON res.id = rg.result_id \
                 WHERE g.uuid = r.uuid AND res.outcome IN {l})"
            ));
        }
        if let Some(from) = f.from {
            conds.push(format!("r.created_at >= {}", sql.arg_i64(from)));
        }
        if let Some(to) = f.to {
            conds.push(format!("r.created_at <= {}", sql.arg_i64(to)));
        }
        if let Some(q) = f.search.as_deref().filter(|q| !q.is_empty()) {
            let p = sql.arg_str(&format!("%{}%", like_pattern(q)));
            conds.push(format!(
                "(r.task LIKE {p} ESCAPE '\\' OR r.item LIKE {p} ESCAPE '\\' OR r.uuid LIKE {p} ESCAPE '\\')"
            ));
        }
        if !conds.is_empty() {
            sql.push(" WHERE ");
            sql.push(&conds.join(" AND "));
        }
        let l = sql.arg_i64(i64::from(limit) + 1);
        let o = sql.arg_i64(i64::try_from(offset).unwrap_or(i64::MAX));
        sql.push(&format!(
            " ORDER BY r.created_at DESC, r.id DESC LIMIT {l} OFFSET {o}"
        ));
        let rows = sql.query().fetch_all(&self.pool).await.map_err(db(op))?;
        let mut runs = Vec::with_capacity(rows.len());
        for row in &rows {
            runs.push(
                summary_from_row(row)
                    .map_err(|message| StoreError::Corrupt { op: op(), message })?,
            );
        }
        self.fill_outcomes(&mut runs).await?;
        Ok(runs)
    }

    /// Outcome counts of the runs' results: one statement.
    async fn fill_outcomes(&self, runs: &mut [RunSummary]) -> Result<(), StoreError> {
        if runs.is_empty() {
            return Ok(());
        }
        let uuids: Vec<String> = runs.iter().map(|r| r.run.uuid.to_string()).collect();
        let mut sql = Sql::new(
            "SELECT g.uuid, res.outcome, COUNT(*) AS n FROM result_groups g \
             JOIN results_groups rg ON rg.group_id = g.id JOIN results res ON res.id = rg.result_id \
             WHERE g.uuid IN ",
        );
        let l = sql.list(&uuids);
        sql.push(&l);
        sql.push(" GROUP BY g.uuid, res.outcome");
        let rows = sql
            .query()
            .fetch_all(&self.pool)
            .await
            .map_err(db(|| "counting outcomes of runs".to_string()))?;
        let index: HashMap<String, usize> = uuids.into_iter().zip(0..).collect();
        for row in &rows {
            let (Ok(uuid), Ok(outcome), Ok(n)) = (
                col::<String>(row, "uuid"),
                col::<String>(row, "outcome"),
                col::<i64>(row, "n"),
            ) else {
                continue;
            };
            if let Some(&i) = index.get(&uuid) {
                runs[i].outcomes.insert(outcome, n);
            }
        }
        Ok(())
    }

    /// Records that someone asked to cancel the run (the owning daemon acts on it). Returns
    /// the run's state, or NotFound. A terminal run is left as it is.
    pub async fn request_cancel(&self, uuid: Uuid) -> Result<RunState, StoreError> {
        let op = || format!("requesting cancellation of run {uuid}");
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM runs WHERE uuid = $1")
            .bind(uuid.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db(op))?;
        let Some(state) = state else {
            return Err(StoreError::NotFound {
                what: "run",
                key: uuid.to_string(),
            });
        };
        let state: RunState =
            state
                .parse()
                .map_err(|e: super::UnknownRunState| StoreError::Corrupt {
                    op: op(),
                    message: e.to_string(),
                })?;
        if !state.is_terminal() {
            sqlx::query(
                "UPDATE runs SET cancel_requested_at = COALESCE(cancel_requested_at, $1) \
                 WHERE uuid = $2",
            )
            .bind(now_micros())
            .bind(uuid.to_string())
            .execute(&self.pool)
            .await
            .map_err(db(op))?;
        }
        Ok(state)
    }

    /// Whether a cancel was requested for the run (None: no such run).
    pub async fn cancel_requested(&self, uuid: Uuid) -> Result<Option<bool>, StoreError> {
        let v: Option<Option<i64>> =
            sqlx::query_scalar("SELECT cancel_requested_at FROM runs WHERE uuid = $1")
                .bind(uuid.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(db(|| format!("reading run {uuid}")))?;
        Ok(v.map(|t| t.is_some()))
    }

    /// Per-phase durations (µs) of the newest `limit` runs of `task`: (phase, duration),
    /// and per run: (created_at, outcome counts). For the task page.
    pub async fn task_history(
        &self,
        task: &str,
        limit: u32,
    ) -> Result<(Vec<RunSummary>, Vec<(String, i64)>), StoreError> {
        let f = RunFilter {
            task: vec![task.to_string()],
            ..RunFilter::default()
        };
        let mut runs = self.run_page(&f, limit, 0).await?;
        runs.truncate(limit as usize);
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT p.name, p.duration_us FROM run_phases p JOIN runs r ON r.id = p.run_id \
             WHERE r.id IN (SELECT r2.id FROM runs r2 WHERE r2.task = $1 \
             ORDER BY r2.created_at DESC LIMIT $2) ORDER BY p.run_id, p.seq",
        )
        .bind(task)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db(|| format!("reading phases of task {task}")))?;
        Ok((runs, rows))
    }

    /// (testcase, item, outcome, submit_time) of the results of the newest `limit` runs of
    /// `task`, oldest first: for spotting outcome flips.
    pub async fn task_outcomes(
        &self,
        task: &str,
        limit: u32,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows: Vec<(String, Option<String>, String)> = sqlx::query_as(
            "SELECT t.name, (SELECT d.value FROM result_data d WHERE d.result_id = res.id \
             AND d.key = 'item' ORDER BY d.ord LIMIT 1) AS item, res.outcome \
             FROM runs r JOIN result_groups g ON g.uuid = r.uuid \
             JOIN results_groups rg ON rg.group_id = g.id JOIN results res ON res.id = rg.result_id \
             JOIN testcases t ON t.id = res.testcase_id \
             WHERE r.id IN (SELECT r2.id FROM runs r2 WHERE r2.task = $1 \
             ORDER BY r2.created_at DESC LIMIT $2) ORDER BY res.submit_time, res.id",
        )
        .bind(task)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db(|| format!("reading outcomes of task {task}")))?;
        Ok(rows
            .into_iter()
            .map(|(t, i, o)| (t, i.unwrap_or_default(), o))
            .collect())
    }
}

impl Store {
    /// Every run as (uuid, task, created_at µs, state), oldest first: what the pruner weighs.
    pub async fn runs_for_retention(
        &self,
    ) -> Result<Vec<(Uuid, String, i64, RunState)>, StoreError> {
        let op = || "listing runs for retention".to_string();
        let rows: Vec<(String, String, i64, String)> = sqlx::query_as(
            "SELECT uuid, task, created_at, state FROM runs ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db(op))?;
        rows.into_iter()
            .map(|(u, t, c, s)| {
                let uuid = Uuid::parse_str(&u).map_err(|e| format!("run uuid `{u}`: {e}"))?;
                let state = s.parse::<RunState>().map_err(|e| e.to_string())?;
                Ok((uuid, t, c, state))
            })
            .collect::<Result<_, String>>()
            .map_err(|message| StoreError::Corrupt { op: op(), message })
    }
}

/// The statement of [`Store::latest_results`].
fn latest_sql(f: &ResultFilter, distinct_on: &[String], limit: u32) -> Sql {
    let mut sql = Sql::new(RESULT_ROWS);
    sql.push(
        " AND r.id IN (SELECT id FROM (SELECT r.id, ROW_NUMBER() OVER (PARTITION BY r.testcase_id",
    );
    for key in distinct_on {
        let k = sql.arg_str(key);
        sql.push(&format!(
            ", (SELECT dd.value FROM result_data dd WHERE dd.result_id = r.id \
             AND dd.key = {k} ORDER BY dd.ord LIMIT 1)"
        ));
    }
    sql.push(" ORDER BY r.submit_time DESC, r.id DESC) AS rn FROM results r");
    f.where_sql(&mut sql);
    // `+`: with the LIMIT, a planner could otherwise walk the whole submit_time index in
    // order, testing each result against the (small) set of latest ids.
    sql.push(") x WHERE rn = 1) ORDER BY +r.submit_time DESC, r.id DESC");
    let l = sql.arg_i64(i64::from(limit) + 1);
    sql.push(&format!(" LIMIT {l}"));
    sql
}

fn group_from_row(row: &AnyRow) -> Result<GroupRow, String> {
    Ok(GroupRow {
        uuid: col(row, "uuid")?,
        description: col(row, "description")?,
        ref_url: col(row, "ref_url")?,
        results_count: col(row, "results_count")?,
    })
}

fn summary_from_row(row: &AnyRow) -> Result<RunSummary, String> {
    let cancel: Option<i64> = col(row, "cancel_requested_at")?;
    Ok(RunSummary {
        run: super::runs::run_from_row(row)?,
        outcomes: BTreeMap::new(),
        cancel_requested: cancel.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;

    /// SQLite's plan for the id query of `f` (what `result_page` runs).
    async fn plan(store: &Store, f: &ResultFilter, latest: bool) -> String {
        let mut sql = Sql::new("EXPLAIN QUERY PLAN SELECT r.id FROM results r");
        if latest {
            sql = Sql::new(
                "EXPLAIN QUERY PLAN SELECT r.id, ROW_NUMBER() OVER (PARTITION BY r.testcase_id ORDER BY r.submit_time DESC) FROM results r",
            );
        }
        f.where_sql(&mut sql);
        sql.push(f.order_sql());
        let rows = sql.query().fetch_all(store.pool()).await.unwrap();
        rows.iter()
            .map(|r| r.try_get::<String, _>(3).unwrap())
            .collect::<Vec<_>>()
            .join("; ")
    }

    #[tokio::test]
    async fn sqlite_filters_drive_by_the_item_index_and_never_scan_results() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/p.db", dir.path().display()))
            .await
            .unwrap();
        let exact = |k: &str, v: &str| (k.to_string(), DataMatch::Exact(vec![v.to_string()]));
        let item_only = ResultFilter {
            data: vec![exact("item", "x")],
            ..ResultFilter::default()
        };
        // `arch` sorts before `item` but must not drive; `type` matches everything.
        let broad = ResultFilter {
            data: vec![
                exact("arch", "x86_64"),
                exact("item", "x"),
                exact("type", "koji_build"),
            ],
            groups: vec!["g".into()],
            outcomes: vec!["PASSED".into()],
            ..ResultFilter::default()
        };
        // The whole /results/latest statement (Greenwave's query shape): driven by the item
        // index, no scan of results in submit_time order despite its LIMIT.
        let mut latest = latest_sql(&broad, &["arch".to_string()], 10_000);
        latest.text = format!("EXPLAIN QUERY PLAN {}", latest.text);
        let rows = latest.query().fetch_all(store.pool()).await.unwrap();
        let p = rows
            .iter()
            .map(|r| r.try_get::<String, _>(3).unwrap())
            .collect::<Vec<_>>()
            .join("; ");
        assert!(p.contains("result_data_lookup (key=? AND <expr>=?)"), "{p}");
        assert!(!p.contains("SCAN r"), "{p}");
        assert!(!p.contains("results_submit_time"), "{p}");
        for (f, latest) in [(&item_only, false), (&broad, false), (&broad, true)] {
            let p = plan(&store, f, latest).await;
            assert!(p.contains("result_data_lookup (key=? AND <expr>=?)"), "{p}");
            assert!(!p.contains("SCAN r"), "{p}");
            assert_eq!(
                p.matches("LIST SUBQUERY").count(),
                1,
                "one driving list: {p}"
            );
        }
    }
}
