//! Results in the ResultsDB model: testcases, groups, results, multi-valued data.

use std::collections::{BTreeMap, HashMap};

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AssertSqlSafe};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{OutboxKind, Store, StoreError, col, db, from_micros, micros, now_micros};
use crate::results::CheckResult;

/// A group named by a POSTed result; created when missing. As in ResultsDB, the id is any
/// string (runs' groups are their uuids), and a field that is `Some` is written to the group
/// even when it exists (`Some(None)` clears it); `None` leaves it as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGroup {
    pub uuid: String,
    pub description: Option<Option<String>>,
    pub ref_url: Option<Option<String>>,
}

impl From<Uuid> for NewGroup {
    fn from(uuid: Uuid) -> Self {
        NewGroup::from(uuid.to_string())
    }
}

impl From<String> for NewGroup {
    fn from(uuid: String) -> Self {
        NewGroup {
            uuid,
            description: None,
            ref_url: None,
        }
    }
}

impl NewGroup {
    fn updates(&self) -> bool {
        self.description.is_some() || self.ref_url.is_some()
    }
}

/// The generic ResultsDB `POST /results` body, validated by the caller (outcome spelling,
/// data keys without colons).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewResult {
    /// Testcase name; the testcase is created when missing.
    pub testcase: String,
    /// When `Some`, becomes the testcase's ref_url (created or updated; `Some(None)` clears
    /// it, as a `"ref_url": null` does in ResultsDB); `None` leaves it.
    pub testcase_ref_url: Option<Option<String>>,
    pub groups: Vec<NewGroup>,
    pub outcome: String,
    pub note: Option<String>,
    pub ref_url: Option<String>,
    /// Defaults to now.
    pub submit_time: Option<OffsetDateTime>,
    pub data: BTreeMap<String, Vec<String>>,
}

/// A result as stored and served. Times are UTC, truncated to microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResult {
    pub id: i64,
    pub testcase: String,
    pub testcase_ref_url: Option<String>,
    /// Group ids (uuids for runs' groups; any string a client POSTed otherwise).
    pub groups: Vec<String>,
    pub outcome: String,
    pub note: Option<String>,
    pub ref_url: Option<String>,
    pub submit_time: OffsetDateTime,
    pub data: BTreeMap<String, Vec<String>>,
}

/// Which results a batch read loads.
enum Which<'a> {
    One(i64),
    Group(&'a str),
    Ids(&'a [i64]),
}

impl Which<'_> {
    /// SQL yielding the result ids, for `… IN (here)`.
    fn ids_sql(&self) -> String {
        match self {
            Which::One(_) => "$1".to_string(),
            Which::Group(_) => "SELECT rg0.result_id FROM results_groups rg0 \
                 JOIN result_groups g0 ON g0.id = rg0.group_id WHERE g0.uuid = $1"
                .to_string(),
            Which::Ids(ids) => (1..=ids.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    fn bind<'q>(&self, mut q: Query<'q, Any, AnyArguments>) -> Query<'q, Any, AnyArguments> {
        match self {
            Which::One(id) => q.bind(*id),
            Which::Group(uuid) => q.bind(uuid.to_string()),
            Which::Ids(ids) => {
                for id in *ids {
                    q = q.bind(*id);
                }
                q
            }
        }
    }
}

/// At most this many ids per IN list (SQLite allows 32766 parameters, PostgreSQL 65535).
const IDS_PER_QUERY: usize = 1000;
/// Rows per multi-row INSERT of result data (4 parameters each).
const DATA_ROWS_PER_INSERT: usize = 250;
/// Rows per multi-row INSERT into results_groups (2 parameters each).
const LINKS_PER_INSERT: usize = 500;

impl Store {
    /// Stores the results of a run in ONE transaction: testcases are created as needed, every
    /// result goes into the run's group, `ref_url` is `ref_url_base/artifact` (the
    /// artifact's path percent-encoded) when both are set,
    /// and the data rows are `CheckResult::data` plus `item` and `type` (from the fields, which
    /// win over data keys of the same name). All results get the same submit_time (now).
    /// Returns the new ids in the order of `results`. On any error nothing is stored.
    pub async fn store_results(
        &self,
        run: Uuid,
        results: &[CheckResult],
        ref_url_base: Option<&str>,
    ) -> Result<Vec<i64>, StoreError> {
        let op = || format!("storing {} results of run {run}", results.len());
        let mut tx = self.begin().await.map_err(db(op))?;
        let ids = insert_run_results(&mut tx, run, results, ref_url_base, None).await?;
        let announced = self.announce_results(&mut tx, &ids).await.map_err(db(op))?;
        tx.commit().await.map_err(db(op))?;
        if announced {
            self.outbox_committed();
        }
        Ok(ids)
    }

    /// The generic ResultsDB POST: creates the testcase and the groups when missing, the
    /// result and its data, in one transaction, and returns the result as a read would.
    /// Data keys with no values are dropped (they would not read back); a group named twice
    /// counts once, with the fields of its later mentions winning (ResultsDB applies them in
    /// order).
    pub async fn create_result(&self, new: &NewResult) -> Result<StoredResult, StoreError> {
        let op = || format!("creating a result of testcase {}", new.testcase);
        let mut groups: Vec<NewGroup> = Vec::with_capacity(new.groups.len());
        for g in &new.groups {
            match groups.iter_mut().find(|seen| seen.uuid == g.uuid) {
                Some(seen) => {
                    if g.description.is_some() {
                        seen.description.clone_from(&g.description);
                    }
                    if g.ref_url.is_some() {
                        seen.ref_url.clone_from(&g.ref_url);
                    }
                }
                None => groups.push(g.clone()),
            }
        }

        // Look the testcase and groups up before the write transaction: they almost always
        // exist, and on SQLite this keeps the database's one write lock held for less time.
        // (Rows of both are never deleted, so ids read here stay valid inside the transaction.)
        let mut conn = self.pool.acquire().await.map_err(db(op))?;
        let testcase = find_testcase(&mut conn, &new.testcase)
            .await
            .map_err(db(op))?;
        let known_groups = find_groups(&mut conn, &groups).await.map_err(db(op))?;

        let mut tx = super::begin_on(&mut conn, self.dialect)
            .await
            .map_err(db(op))?;
        let tc_ref_url = new.testcase_ref_url.as_ref().map(Option::as_deref);
        let (testcase_id, testcase_ref_url) = match testcase {
            Some(found) => update_testcase_ref_url(&mut tx, found, tc_ref_url)
                .await
                .map_err(db(op))?,
            None => ensure_testcase(&mut tx, &new.testcase, tc_ref_url)
                .await
                .map_err(db(op))?,
        };
        let mut group_ids = Vec::with_capacity(groups.len());
        for g in &groups {
            let id = match known_groups.get(&g.uuid) {
                Some(&id) if !g.updates() => id,
                _ => ensure_group(&mut tx, g).await.map_err(db(op))?,
            };
            group_ids.push((id, g.uuid.clone()));
        }
        // Reads list a result's groups in group id order: return them the same way.
        group_ids.sort_unstable();
        let groups: Vec<String> = group_ids.iter().map(|(_, uuid)| uuid.clone()).collect();

        let submit_time = new.submit_time.map_or_else(now_micros, micros);
        let id = insert_result(
            &mut tx,
            testcase_id,
            &new.outcome,
            new.note.as_deref(),
            new.ref_url.as_deref(),
            submit_time,
        )
        .await
        .map_err(db(op))?;

        let links: Vec<(i64, i64)> = group_ids.iter().map(|&(g, _)| (id, g)).collect();
        insert_links(&mut tx, &links).await.map_err(db(op))?;
        let data_rows: Vec<(i64, &str, i64, &str)> = new
            .data
            .iter()
            .flat_map(|(key, values)| {
                (0_i64..)
                    .zip(values)
                    .map(move |(ord, v)| (id, key.as_str(), ord, v.as_str()))
            })
            .collect();
        insert_data(&mut tx, &data_rows).await.map_err(db(op))?;
        let announced = self
            .announce_results(&mut tx, &[id])
            .await
            .map_err(db(op))?;
        tx.commit().await.map_err(db(op))?;
        if announced {
            self.outbox_committed();
        }

        Ok(StoredResult {
            id,
            testcase: new.testcase.clone(),
            testcase_ref_url,
            groups,
            outcome: new.outcome.clone(),
            note: new.note.clone(),
            ref_url: new.ref_url.clone(),
            submit_time: from_micros(submit_time)
                .map_err(|message| StoreError::Invalid { op: op(), message })?,
            data: new
                .data
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    /// Adds a `result.new` outbox row per result, in the results' transaction, when this
    /// store announces results. True when it wrote any.
    pub(crate) async fn announce_results(
        &self,
        conn: &mut AnyConnection,
        ids: &[i64],
    ) -> Result<bool, sqlx::Error> {
        if !self.outbox.wants(OutboxKind::Result) || ids.is_empty() {
            return Ok(false);
        }
        for id in ids {
            super::outbox::insert(conn, OutboxKind::Result, &id.to_string()).await?;
        }
        Ok(true)
    }

    /// One result, or None (three queries).
    pub async fn result(&self, id: i64) -> Result<Option<StoredResult>, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db(|| format!("reading result {id}")))?;
        let found = load(&mut conn, &Which::One(id))
            .await
            .map_err(|e| e.context(|| format!("reading result {id}")))?;
        Ok(found.into_iter().next())
    }

    /// The results of a run (its group), in id order (three queries).
    pub async fn run_results(&self, uuid: Uuid) -> Result<Vec<StoredResult>, StoreError> {
        let op = || format!("reading results of run {uuid}");
        let mut conn = self.pool.acquire().await.map_err(db(op))?;
        let key = uuid.to_string();
        load(&mut conn, &Which::Group(&key))
            .await
            .map_err(|e| e.context(op))
    }

    /// The results with these ids, in the order given (unknown ids are skipped, repeats
    /// count once): three queries per 1000 ids. For pages whose ids another query chose.
    pub async fn results_by_ids(&self, ids: &[i64]) -> Result<Vec<StoredResult>, StoreError> {
        let op = || format!("reading {} results", ids.len());
        let mut unique = Vec::with_capacity(ids.len());
        for &id in ids {
            if !unique.contains(&id) {
                unique.push(id);
            }
        }
        if unique.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.acquire().await.map_err(db(op))?;
        let mut by_id: HashMap<i64, StoredResult> = HashMap::with_capacity(unique.len());
        for chunk in unique.chunks(IDS_PER_QUERY) {
            for r in load(&mut conn, &Which::Ids(chunk))
                .await
                .map_err(|e| e.context(op))?
            {
                by_id.insert(r.id, r);
            }
        }
        Ok(unique.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    /// Ids of the results with data `key` = `value`, newest (highest id) first: the
    /// `/results?item=X` path, served by the `result_data_lookup` index.
    pub async fn result_ids_with_data(
        &self,
        key: &str,
        value: &str,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar(concat!(
            "SELECT DISTINCT d.result_id FROM result_data d WHERE ",
            data_lookup_sql!(),
            " ORDER BY d.result_id DESC LIMIT $3 OFFSET $4"
        ))
        .bind(key)
        .bind(value)
        .bind(i64::from(limit))
        .bind(i64::from(offset))
        .fetch_all(&self.pool)
        .await
        .map_err(db(|| format!("finding results with {key}={value}")))
    }
}

/// Loads results with their testcases, groups and data: exactly three queries.
/// [`Store::store_results`] inside the caller's transaction.
pub(crate) async fn insert_run_results(
    tx: &mut AnyConnection,
    run: Uuid,
    results: &[CheckResult],
    ref_url_base: Option<&str>,
    page_url: Option<&str>,
) -> Result<Vec<i64>, StoreError> {
    let op = || format!("storing {} results of run {run}", results.len());
    let group_id: i64 = sqlx::query_scalar("SELECT id FROM result_groups WHERE uuid = $1")
        .bind(run.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db(op))?
        .ok_or_else(|| StoreError::NotFound {
            what: "result group of run",
            key: run.to_string(),
        })?;

    let now = now_micros();
    let mut testcases: HashMap<&str, i64> = HashMap::new();
    let mut ids = Vec::with_capacity(results.len());
    let mut data_rows: Vec<(i64, &str, i64, &str)> = Vec::new();
    for r in results {
        let testcase_id = match testcases.get(r.checkname.as_str()) {
            Some(&id) => id,
            None => {
                let (id, _) = ensure_testcase(&mut *tx, &r.checkname, None)
                    .await
                    .map_err(db(op))?;
                testcases.insert(&r.checkname, id);
                id
            }
        };
        let ref_url = match (ref_url_base, r.artifact.as_deref()) {
            (Some(base), Some(artifact)) => Some(format!(
                "{}/{}",
                base.trim_end_matches('/'),
                crate::util::percent_encode(artifact.trim_start_matches('/'), b"/")
            )),
            _ => page_url.map(str::to_string),
        };
        let id = insert_result(
            &mut *tx,
            testcase_id,
            r.outcome.as_str(),
            r.note.as_deref(),
            ref_url.as_deref(),
            now,
        )
        .await
        .map_err(db(op))?;
        ids.push(id);

        data_rows.push((id, "item", 0, r.item.as_str()));
        data_rows.push((id, "type", 0, r.item_type.as_str()));
        for (key, values) in &r.data {
            if key == "item" || key == "type" {
                continue;
            }
            for (ord, value) in (0_i64..).zip(values) {
                data_rows.push((id, key.as_str(), ord, value.as_str()));
            }
        }
    }
    let links: Vec<(i64, i64)> = ids.iter().map(|&id| (id, group_id)).collect();
    insert_links(&mut *tx, &links).await.map_err(db(op))?;
    insert_data(&mut *tx, &data_rows).await.map_err(db(op))?;
    Ok(ids)
}

async fn load(conn: &mut AnyConnection, which: &Which<'_>) -> Result<Vec<StoredResult>, Failure> {
    let ids = which.ids_sql();
    let rows = which
        .bind(sqlx::query(AssertSqlSafe(format!(
            "SELECT r.id, r.outcome, r.note, r.ref_url, r.submit_time, \
             t.name AS testcase, t.ref_url AS testcase_ref_url \
             FROM results r JOIN testcases t ON t.id = r.testcase_id \
             WHERE r.id IN ({ids}) ORDER BY r.id"
        ))))
        .fetch_all(&mut *conn)
        .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut results = Vec::with_capacity(rows.len());
    let mut index = HashMap::with_capacity(rows.len());
    for row in &rows {
        let r = result_from_row(row)?;
        index.insert(r.id, results.len());
        results.push(r);
    }

    let groups = which
        .bind(sqlx::query(AssertSqlSafe(format!(
            "SELECT rg.result_id, g.uuid FROM results_groups rg \
             JOIN result_groups g ON g.id = rg.group_id \
             WHERE rg.result_id IN ({ids}) ORDER BY rg.result_id, g.id"
        ))))
        .fetch_all(&mut *conn)
        .await?;
    for row in &groups {
        let id: i64 = col(row, "result_id")?;
        let uuid: String = col(row, "uuid")?;
        // Rows of results committed after the first query are not ours: skip them.
        if let Some(&i) = index.get(&id) {
            results[i].groups.push(uuid);
        }
    }

    let data = which
        .bind(sqlx::query(AssertSqlSafe(format!(
            "SELECT d.result_id, d.key, d.value FROM result_data d \
             WHERE d.result_id IN ({ids}) ORDER BY d.result_id, d.key, d.ord"
        ))))
        .fetch_all(&mut *conn)
        .await?;
    for row in &data {
        let id: i64 = col(row, "result_id")?;
        if let Some(&i) = index.get(&id) {
            results[i]
                .data
                .entry(col(row, "key")?)
                .or_default()
                .push(col(row, "value")?);
        }
    }
    Ok(results)
}

/// What `load` can fail with, before the caller names the operation.
enum Failure {
    Db(sqlx::Error),
    Corrupt(String),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Db(e)
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Corrupt(message)
    }
}

impl Failure {
    fn context(self, op: impl FnOnce() -> String) -> StoreError {
        match self {
            Failure::Db(source) => StoreError::Db { op: op(), source },
            Failure::Corrupt(message) => StoreError::Corrupt { op: op(), message },
        }
    }
}

pub(super) fn result_from_row(row: &AnyRow) -> Result<StoredResult, String> {
    Ok(StoredResult {
        id: col(row, "id")?,
        testcase: col(row, "testcase")?,
        testcase_ref_url: col(row, "testcase_ref_url")?,
        groups: Vec::new(),
        outcome: col(row, "outcome")?,
        note: col(row, "note")?,
        ref_url: col(row, "ref_url")?,
        submit_time: from_micros(col(row, "submit_time")?)?,
        data: BTreeMap::new(),
    })
}

async fn find_testcase(
    conn: &mut AnyConnection,
    name: &str,
) -> Result<Option<(i64, Option<String>)>, sqlx::Error> {
    sqlx::query_as("SELECT id, ref_url FROM testcases WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await
}

/// Sets an existing testcase's ref_url when `ref_url` is given and differs (ResultsDB does the
/// same on POST; `Some(None)` clears it); returns the id and the resulting ref_url.
async fn update_testcase_ref_url(
    conn: &mut AnyConnection,
    (id, current): (i64, Option<String>),
    ref_url: Option<Option<&str>>,
) -> Result<(i64, Option<String>), sqlx::Error> {
    match ref_url {
        Some(new) if current.as_deref() != new => {
            sqlx::query("UPDATE testcases SET ref_url = $1 WHERE id = $2")
                .bind(new)
                .bind(id)
                .execute(&mut *conn)
                .await?;
            Ok((id, new.map(str::to_string)))
        }
        _ => Ok((id, current)),
    }
}

/// The testcase's id and (resulting) ref_url; creates it when missing, and updates its
/// ref_url like [`update_testcase_ref_url`].
async fn ensure_testcase(
    conn: &mut AnyConnection,
    name: &str,
    ref_url: Option<Option<&str>>,
) -> Result<(i64, Option<String>), sqlx::Error> {
    if let Some(found) = find_testcase(conn, name).await? {
        return update_testcase_ref_url(conn, found, ref_url).await;
    }
    // A concurrent transaction may create it between our SELECT and INSERT: then the INSERT
    // does nothing and the second SELECT (a new snapshot under READ COMMITTED) finds it.
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO testcases (name, ref_url) VALUES ($1, $2) \
         ON CONFLICT (name) DO NOTHING RETURNING id",
    )
    .bind(name)
    .bind(ref_url.flatten())
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = inserted {
        return Ok((id, ref_url.flatten().map(str::to_string)));
    }
    match find_testcase(conn, name).await? {
        Some(found) => update_testcase_ref_url(conn, found, ref_url).await,
        // Only under an isolation level stricter than READ COMMITTED.
        None => Err(sqlx::Error::RowNotFound),
    }
}

/// Ids of those of `groups` that exist (one query).
async fn find_groups(
    conn: &mut AnyConnection,
    groups: &[NewGroup],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    if groups.is_empty() {
        return Ok(HashMap::new());
    }
    let placeholders = (1..=groups.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut q = sqlx::query_as::<_, (i64, String)>(AssertSqlSafe(format!(
        "SELECT id, uuid FROM result_groups WHERE uuid IN ({placeholders})"
    )));
    for g in groups {
        q = q.bind(g.uuid.as_str());
    }
    Ok(q.fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(id, uuid)| (uuid, id))
        .collect())
}

/// The group's id; creates it when missing, and writes the fields `group` sets (a group
/// object in a POSTed result updates an existing group, as in ResultsDB).
async fn ensure_group(conn: &mut AnyConnection, group: &NewGroup) -> Result<i64, sqlx::Error> {
    let existing: Option<i64> = sqlx::query_scalar("SELECT id FROM result_groups WHERE uuid = $1")
        .bind(group.uuid.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    let id = match existing {
        Some(id) => id,
        None => {
            let inserted: Option<i64> = sqlx::query_scalar(
                "INSERT INTO result_groups (uuid, description, ref_url) VALUES ($1, $2, $3) \
                 ON CONFLICT (uuid) DO NOTHING RETURNING id",
            )
            .bind(group.uuid.as_str())
            .bind(group.description.clone().flatten())
            .bind(group.ref_url.clone().flatten())
            .fetch_optional(&mut *conn)
            .await?;
            match inserted {
                Some(id) => return Ok(id),
                // Created meanwhile by a concurrent POST: update it below like any other.
                None => {
                    sqlx::query_scalar("SELECT id FROM result_groups WHERE uuid = $1")
                        .bind(group.uuid.as_str())
                        .fetch_one(&mut *conn)
                        .await?
                }
            }
        }
    };
    for (column, value) in [
        ("description", &group.description),
        ("ref_url", &group.ref_url),
    ] {
        if let Some(value) = value {
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE result_groups SET {column} = $1 WHERE id = $2"
            )))
            .bind(value.clone())
            .bind(id)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(id)
}

async fn insert_result(
    conn: &mut AnyConnection,
    testcase_id: i64,
    outcome: &str,
    note: Option<&str>,
    ref_url: Option<&str>,
    submit_time: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO results (testcase_id, outcome, note, ref_url, submit_time) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(testcase_id)
    .bind(outcome)
    .bind(note)
    .bind(ref_url)
    .bind(submit_time)
    .fetch_one(&mut *conn)
    .await
}

/// `VALUES ($1, $2), ($3, $4), …` for `rows` rows of `width` parameters.
fn values_sql(rows: usize, width: usize) -> String {
    let mut sql = String::with_capacity(rows * width * 5);
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..width {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(r * width + c + 1).to_string());
        }
        sql.push(')');
    }
    sql
}

async fn insert_links(conn: &mut AnyConnection, links: &[(i64, i64)]) -> Result<(), sqlx::Error> {
    for chunk in links.chunks(LINKS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO results_groups (result_id, group_id) VALUES {}",
            values_sql(chunk.len(), 2)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for &(result_id, group_id) in chunk {
            q = q.bind(result_id).bind(group_id);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

async fn insert_data(
    conn: &mut AnyConnection,
    rows: &[(i64, &str, i64, &str)],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(DATA_ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO result_data (result_id, key, ord, value) VALUES {}",
            values_sql(chunk.len(), 4)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for &(result_id, key, ord, value) in chunk {
            q = q.bind(result_id).bind(key).bind(ord).bind(value);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
