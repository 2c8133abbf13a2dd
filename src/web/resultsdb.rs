//! ResultsDB REST API v2.0 (`/api/v2.0`), as `resultsdb_api` and Greenwave-style consumers
//! use it: see shared/reference/resultsdb-api.md.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::error::{ApiError, ApiResult};
use super::params::{self, Pairs, csv, fmt_time, page_links, paging};
use super::{WebState, auth, pyrepr};
use crate::outcome::Outcome;
use crate::store::{
    DataMatch, GroupFilter, GroupRow, NewGroup, NewResult, ResultFilter, StoredResult,
    TestcaseFilter,
};

pub const BASE: &str = "/api/v2.0";

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/api/v2.0", get(index))
        .route("/api/v2.0/", get(index))
        .route("/api/v2.0/healthcheck", get(healthcheck))
        .route("/api/v2.0/results", get(list_results).post(create_result))
        .route("/api/v2.0/results/latest", get(latest_results))
        .route("/api/v2.0/results/{id}", get(one_result))
        .route("/api/v2.0/groups", get(list_groups).post(create_group))
        .route("/api/v2.0/groups/{uuid}", get(one_group))
        .route("/api/v2.0/groups/{uuid}/results", get(group_results))
        .route(
            "/api/v2.0/testcases",
            get(list_testcases).post(create_testcase),
        )
        // The rest of the path is the name: Fedora CI's names contain `/`
        // (`fedora-ci.koji-build./plans/basic.functional`) and `resultsdb_api` sends them raw.
        .route("/api/v2.0/testcases/{*name}", get(testcase_path))
}

/// The API root as ResultsDB answers it: 300 with links to the collections and the outcomes
/// it accepts.
async fn index(State(st): State<WebState>, headers: HeaderMap) -> Response {
    let b = format!("{}{BASE}", st.base_url(&headers));
    let body = json!({
        "message": "ResultsDB v2.0 API served by ferrotron: choose a collection below.",
        "documentation": "http://docs.resultsdb20.apiary.io/",
        "groups": format!("{b}/groups"),
        "results": format!("{b}/results"),
        "testcases": format!("{b}/testcases"),
        "outcomes": Outcome::ALL.map(|o| o.as_str()),
    });
    (StatusCode::MULTIPLE_CHOICES, Json(body)).into_response()
}

async fn healthcheck(State(st): State<WebState>) -> ApiResult<Json<Value>> {
    sqlx::query("SELECT 1")
        .execute(st.store.pool())
        .await
        .map_err(|e| {
            tracing::error!("healthcheck: database: {e}");
            // ResultsDB's words: monitors may match on them.
            ApiError::status(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unable to communicate with database",
            )
        })?;
    Ok(Json(json!({"message": "Health check OK"})))
}

// --- JSON shapes ---------------------------------------------------------------------------

pub fn result_json(r: &StoredResult, base: &str) -> Value {
    json!({
        "id": r.id,
        "groups": r.groups.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
        "testcase": testcase_json(&r.testcase, r.testcase_ref_url.as_deref(), base),
        "submit_time": fmt_time(r.submit_time),
        "outcome": r.outcome,
        "note": r.note,
        "ref_url": r.ref_url,
        "data": r.data,
        "href": format!("{base}{BASE}/results/{}", r.id),
    })
}

fn testcase_json(name: &str, ref_url: Option<&str>, base: &str) -> Value {
    json!({
        "name": name,
        "ref_url": ref_url,
        "href": format!("{base}{BASE}/testcases/{}", path_encode(name)),
    })
}

/// A name for a URL path: percent-encoded, but with its `/` kept (as ResultsDB's links, and
/// as the testcase route reads them).
fn path_encode(name: &str) -> String {
    name.split('/')
        .map(params::encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

fn group_json(g: &GroupRow, base: &str) -> Value {
    json!({
        "uuid": g.uuid,
        "description": g.description,
        "ref_url": g.ref_url,
        "results": format!("{base}{BASE}/results?groups={}", params::encode(&g.uuid)),
        "results_count": g.results_count,
        "href": format!("{base}{BASE}/groups/{}", params::encode_segment(&g.uuid)),
    })
}

/// `{"data": [...], "prev": …, "next": …}` from `limit + 1` fetched rows.
fn page_json<T>(
    mut rows: Vec<T>,
    to_json: impl Fn(&T) -> Value,
    url: &str,
    pairs: &Pairs,
    p: params::Paging,
) -> Json<Value> {
    let has_next = rows.len() > p.limit as usize;
    rows.truncate(p.limit as usize);
    let (prev, next) = page_links(url, pairs, p, has_next);
    Json(json!({
        "data": rows.iter().map(to_json).collect::<Vec<_>>(),
        "prev": prev,
        "next": next,
    }))
}

// --- results -------------------------------------------------------------------------------

/// The result filters in `pairs` (shared by `/results`, `/results/latest`, and the group and
/// testcase sub-collections).
pub fn result_filter(pairs: &Pairs) -> ApiResult<ResultFilter> {
    let mut f = ResultFilter::default();
    let mut data: BTreeMap<(String, bool), Vec<String>> = BTreeMap::new();
    for (k, v) in pairs {
        match k.as_str() {
            "page" | "limit" | "_distinct_on" | "_auth_token" => {}
            "since" => f.since = Some(params::since(v)?),
            "outcome" => {
                for o in csv(v) {
                    let o = o.to_uppercase();
                    if o.parse::<Outcome>().is_err() {
                        return Err(ApiError::invalid(
                            "outcome",
                            format!(
                                "outcome: unknown outcome `{o}` (expected one of {})",
                                Outcome::ALL.map(|o| o.as_str()).join(", ")
                            ),
                        ));
                    }
                    f.outcomes.push(o);
                }
            }
            "groups" => f.groups.extend(csv(v)),
            "testcases" => f.testcases.extend(csv(v)),
            "testcases:like" => f.testcases_like.extend(csv(v)),
            // Anything but `asc:submit_time` sorts newest first, as in ResultsDB (which also
            // falls back to that for a sort it does not support).
            "_sort" => f.ascending = v == "asc:submit_time",
            key if key.starts_with('_') => {
                return Err(ApiError::invalid(
                    key,
                    format!("{key}: unknown parameter (parameters starting with `_` are reserved)"),
                ));
            }
            key => {
                let (key, like) = match key.split_once(':') {
                    None => (key, false),
                    Some((k, "like")) => (k, true),
                    Some((_, op)) => {
                        return Err(ApiError::invalid(
                            key,
                            format!(
                                "{key}: unknown operator `{op}` (only `KEY:like` is supported)"
                            ),
                        ));
                    }
                };
                if key.is_empty() {
                    return Err(ApiError::invalid(k, format!("`{k}`: empty data key")));
                }
                let values = csv(v);
                if values.is_empty() {
                    return Err(ApiError::invalid(k, format!("{k}: no value given")));
                }
                data.entry((key.to_string(), like))
                    .or_default()
                    .extend(values);
            }
        }
    }
    // Exact filters first: they drive the query through the data index.
    let (exact, like): (Vec<_>, Vec<_>) = data.into_iter().partition(|((_, like), _)| !like);
    for ((k, _), vs) in exact {
        f.data.push((k, DataMatch::Exact(vs)));
    }
    for ((k, _), vs) in like {
        f.data.push((k, DataMatch::Like(vs)));
    }
    Ok(f)
}

async fn list_results(
    State(st): State<WebState>,
    headers: HeaderMap,
    q: Result<Query<Pairs>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let pairs = params::pairs(q)?;
    let p = paging(&pairs, params::DEFAULT_LIMIT)?;
    let f = result_filter(&pairs)?;
    results_page(&st, &headers, &pairs, p, &f, "/results").await
}

async fn results_page(
    st: &WebState,
    headers: &HeaderMap,
    pairs: &Pairs,
    p: params::Paging,
    f: &ResultFilter,
    path: &str,
) -> ApiResult<Json<Value>> {
    let rows = st.store.result_page(f, p.limit, p.offset()).await?;
    let base = st.base_url(headers);
    let url = format!("{base}{BASE}{path}");
    Ok(page_json(rows, |r| result_json(r, &base), &url, pairs, p))
}

async fn latest_results(
    State(st): State<WebState>,
    headers: HeaderMap,
    q: Result<Query<Pairs>, QueryRejection>,
) -> ApiResult<Response> {
    let pairs = params::pairs(q)?;
    let mut f = result_filter(&pairs)?;
    // ResultsDB's /results/latest validates `outcome` but does not filter on it (Greenwave
    // relies on getting the latest result whatever its outcome): the same here.
    f.outcomes.clear();
    let distinct_on: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "_distinct_on")
        .flat_map(|(_, v)| csv(v))
        .collect();
    if let Some(bad) = distinct_on.iter().find(|k| k.contains(':')) {
        return Err(ApiError::invalid(
            "_distinct_on",
            format!("_distinct_on: `{bad}` is not a data key"),
        ));
    }
    if !distinct_on.is_empty() && f.is_empty() {
        return Err(ApiError::bad_request(
            "_distinct_on: give at least one other filter (e.g. item=…) besides _distinct_on",
        ));
    }
    // ResultsDB answers every row (and ignores `page` and `limit` here, as ferrotron does);
    // ferrotron answers at most `latest_max` (LATEST_MAX unless configured), the newest, and
    // says so in a header when it left some out: one broad query cannot make the server
    // build an unbounded answer.
    let limit = st.limits.latest_max;
    let mut rows = st.store.latest_results(&f, &distinct_on, limit).await?;
    let truncated = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let base = st.base_url(&headers);
    let body = Json(json!({
        "data": rows.iter().map(|r| result_json(r, &base)).collect::<Vec<_>>(),
    }));
    let mut resp = body.into_response();
    if truncated {
        resp.headers_mut().insert(
            LATEST_TRUNCATED,
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

/// Most rows one `/results/latest` answer carries.
pub const LATEST_MAX: u32 = params::MAX_LIMIT;

/// Set on a `/results/latest` answer that has more rows than it carries.
pub const LATEST_TRUNCATED: &str = "x-ferrotron-truncated";

async fn one_result(
    State(st): State<WebState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("Result not found: `{id}` is not a result id")))?;
    let r = st
        .store
        .result(id)
        .await?
        .ok_or_else(|| ApiError::not_found("Result not found"))?;
    Ok(Json(result_json(&r, &st.base_url(&headers))))
}

/// The JSON body of a POST, with its token taken out.
fn json_body(body: &Bytes) -> ApiResult<(Map<String, Value>, Option<String>)> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not JSON: {e}")))?;
    let Value::Object(mut m) = v else {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    };
    // PostgreSQL's text cannot hold NUL: refuse it here, naming the field, rather than fail
    // in the store with a 500.
    if let Some(field) = m.iter().find_map(|(k, v)| has_nul(k, v).then(|| k.clone())) {
        return Err(ApiError::invalid(
            field.clone(),
            format!("{field}: contains a NUL character (\\u0000), which cannot be stored"),
        ));
    }
    let token = match m.remove("_auth_token") {
        Some(Value::String(t)) => Some(t),
        _ => None,
    };
    Ok((m, token))
}

/// Whether a key or any string inside a value holds a NUL.
fn has_nul(key: &str, v: &Value) -> bool {
    key.contains('\0')
        || match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(|x| has_nul("", x)),
            Value::Object(o) => o.iter().any(|(k, x)| has_nul(k, x)),
            _ => false,
        }
}

fn opt_str(m: &Map<String, Value>, key: &str) -> ApiResult<Option<String>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::invalid(
            key,
            format!("{key}: expected a string, got {other}"),
        )),
    }
}

/// A field of a group or testcase object as ResultsDB applies it: absent leaves the stored
/// value, present (even `null`) replaces it.
fn group_field(o: &Map<String, Value>, key: &str) -> ApiResult<Option<Option<String>>> {
    match o.get(key) {
        None => Ok(None),
        Some(_) => opt_str(o, key).map(Some),
    }
}

/// A group id as ResultsDB takes it: any non-empty string, stored as sent.
fn group_id(field: &str, s: &str) -> ApiResult<String> {
    if s.is_empty() {
        return Err(ApiError::invalid(
            field,
            format!("{field}: the group id is empty"),
        ));
    }
    Ok(s.to_string())
}

/// `submit_time` as ResultsDB reads it: milliseconds since the epoch (a number, or a string
/// of digits), or an ISO 8601 time (ferrotron takes more spellings than ResultsDB's
/// `%Y-%m-%dT%H:%M:%S.%f` with `Z`, `+00` or an offset: see README's compatibility section).
/// Returns microseconds since the epoch.
fn submit_time(v: &Value) -> ApiResult<Option<i64>> {
    let ms = |ms: i64, shown: &dyn std::fmt::Display| {
        ms.checked_mul(1000).ok_or_else(|| {
            ApiError::invalid(
                "submit_time",
                format!("submit_time: `{shown}` is not a time in milliseconds"),
            )
        })
    };
    match v {
        Value::Null => Ok(None),
        Value::String(s) => match params::parse_time("submit_time", s) {
            Ok(us) => Ok(Some(us)),
            Err(e) => match s.trim().parse::<i64>() {
                Ok(n) => ms(n, s).map(Some),
                Err(_) => Err(ApiError::invalid(
                    "submit_time",
                    format!("{} (or milliseconds since the epoch)", e.message),
                )),
            },
        },
        // ResultsDB refuses fractional milliseconds too.
        Value::Number(n) => match n.as_i64() {
            Some(v) => ms(v, n).map(Some),
            None => Err(ApiError::invalid(
                "submit_time",
                format!("submit_time: `{n}` is not a whole number of milliseconds"),
            )),
        },
        other => Err(ApiError::invalid(
            "submit_time",
            format!("submit_time: expected an ISO 8601 string or milliseconds, got {other}"),
        )),
    }
}

/// The `data` of a POST as ResultsDB stores it: a string as it is, a list as one value per
/// element, anything else (and every non-string element) as Python's `str()` of it — `None`
/// for null, `True`, `{'k': 'v'}` for an object. `body` is the raw POST (for the order of
/// nested objects' keys).
fn new_data(m: &Map<String, Value>, body: &[u8]) -> ApiResult<BTreeMap<String, Vec<String>>> {
    let mut data = BTreeMap::new();
    match m.get("data") {
        None | Some(Value::Null) => return Ok(data),
        Some(Value::Object(_)) => {}
        Some(other) => {
            return Err(ApiError::invalid(
                "data",
                format!("data: expected an object, got {other}"),
            ));
        }
    }
    let entries = pyrepr::data_of(body)
        .map_err(|e| ApiError::invalid("data", format!("data: {e}")))?
        .unwrap_or_default();
    let bad: Vec<&str> = entries
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.contains(':') || k.is_empty())
        .collect();
    if !bad.is_empty() {
        return Err(ApiError::invalid(
            "data",
            format!("data: keys must be non-empty and contain no colon: {bad:?}"),
        ));
    }
    for (k, v) in entries {
        let values: Vec<String> = match &v.items {
            Some(items) => items.iter().map(|x| x.str().to_string()).collect(),
            None => vec![v.str().to_string()],
        };
        if !values.is_empty() {
            data.insert(k, values);
        }
    }
    Ok(data)
}

/// Validates a POST /results body (`m`, parsed from `body`) into a NewResult.
pub fn new_result(m: &Map<String, Value>, body: &[u8]) -> ApiResult<NewResult> {
    // Trimmed and upper-cased, as ResultsDB does.
    let outcome = match m.get("outcome") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_uppercase(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(ApiError::invalid("outcome", "outcome: required"));
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "outcome",
                format!("outcome: expected a string, got {other}"),
            ));
        }
    };
    outcome
        .parse::<Outcome>()
        .map_err(|e| ApiError::invalid("outcome", format!("outcome: {e}")))?;
    let (testcase, testcase_ref_url) = match m.get("testcase") {
        Some(Value::String(s)) => (s.clone(), None),
        Some(Value::Object(t)) => match t.get("name") {
            // As a group's fields: absent keeps the testcase's ref_url, null clears it.
            Some(Value::String(n)) => (n.clone(), group_field(t, "ref_url")?),
            _ => {
                return Err(ApiError::invalid(
                    "testcase",
                    "testcase.name: required string",
                ));
            }
        },
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("testcase", "testcase: required"));
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "testcase",
                format!("testcase: expected a name or {{name, ref_url}}, got {other}"),
            ));
        }
    };
    if testcase.is_empty() {
        return Err(ApiError::invalid("testcase", "testcase: the name is empty"));
    }
    let mut groups = Vec::new();
    match m.get("groups") {
        None | Some(Value::Null) => {}
        Some(Value::Array(gs)) => {
            for g in gs {
                groups.push(match g {
                    Value::String(s) => NewGroup::from(group_id("groups", s)?),
                    Value::Object(o) => NewGroup {
                        uuid: match o.get("uuid") {
                            Some(Value::String(s)) => group_id("groups.uuid", s)?,
                            None | Some(Value::Null) => Uuid::now_v7().to_string(),
                            Some(other) => {
                                return Err(ApiError::invalid(
                                    "groups",
                                    format!("groups.uuid: expected a string, got {other}"),
                                ));
                            }
                        },
                        description: group_field(o, "description")?,
                        ref_url: group_field(o, "ref_url")?,
                    },
                    other => {
                        return Err(ApiError::invalid(
                            "groups",
                            format!(
                                "groups: expected ids or {{uuid, description, ref_url}}, got {other}"
                            ),
                        ));
                    }
                });
            }
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "groups",
                format!("groups: expected a list, got {other}"),
            ));
        }
    }
    let submit_time = match m.get("submit_time") {
        None => None,
        Some(v) => submit_time(v)?,
    };
    let submit_time = submit_time
        .map(|us| {
            crate::store::from_micros(us)
                .map_err(|e| ApiError::invalid("submit_time", format!("submit_time: {e}")))
        })
        .transpose()?;
    Ok(NewResult {
        testcase,
        testcase_ref_url,
        groups,
        outcome,
        note: opt_str(m, "note")?,
        ref_url: opt_str(m, "ref_url")?,
        submit_time,
        data: new_data(m, body)?,
    })
}

async fn create_result(
    State(st): State<WebState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let (m, token) = json_body(&body)?;
    auth::require_token(&st, &headers, token.as_deref())?;
    let new = new_result(&m, &body)?;
    let stored = st.store.create_result(&new).await?;
    Ok((
        StatusCode::CREATED,
        Json(result_json(&stored, &st.base_url(&headers))),
    )
        .into_response())
}

// --- groups --------------------------------------------------------------------------------

async fn list_groups(
    State(st): State<WebState>,
    headers: HeaderMap,
    q: Result<Query<Pairs>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let pairs = params::pairs(q)?;
    let p = paging(&pairs, params::DEFAULT_LIMIT)?;
    let mut f = GroupFilter::default();
    for (k, v) in &pairs {
        match k.as_str() {
            "page" | "limit" => {}
            "uuid" => f.uuids.extend(csv(v)),
            "description" => f.description.push(v.clone()),
            "description:like" => f.description_like.push(v.clone()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "{other}: unknown parameter (groups filter on uuid, description, description:like)"
                )));
            }
        }
    }
    let rows = st.store.group_page(&f, p.limit, p.offset()).await?;
    let base = st.base_url(&headers);
    let url = format!("{base}{BASE}/groups");
    Ok(page_json(rows, |g| group_json(g, &base), &url, &pairs, p))
}

async fn one_group(
    State(st): State<WebState>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
) -> ApiResult<Json<Value>> {
    let f = GroupFilter {
        uuids: vec![uuid],
        ..GroupFilter::default()
    };
    let g = st
        .store
        .group_page(&f, 1, 0)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found("Group not found"))?;
    Ok(Json(group_json(&g, &st.base_url(&headers))))
}

async fn group_results(
    State(st): State<WebState>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
    q: Result<Query<Pairs>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let pairs = params::pairs(q)?;
    let p = paging(&pairs, params::DEFAULT_LIMIT)?;
    let mut f = result_filter(&pairs)?;
    let exists = st
        .store
        .group_page(
            &GroupFilter {
                uuids: vec![uuid.clone()],
                ..GroupFilter::default()
            },
            1,
            0,
        )
        .await?;
    if exists.is_empty() {
        return Err(ApiError::not_found("Group not found"));
    }
    f.groups = vec![uuid.clone()];
    results_page(
        &st,
        &headers,
        &pairs,
        p,
        &f,
        &format!("/groups/{}/results", params::encode_segment(&uuid)),
    )
    .await
}

async fn create_group(
    State(st): State<WebState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let (m, token) = json_body(&body)?;
    auth::require_token(&st, &headers, token.as_deref())?;
    // As ResultsDB: any string names the group (a new one when empty or missing), and only
    // a non-empty description or ref_url is written.
    let uuid = opt_str(&m, "uuid")?
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| Uuid::now_v7().to_string());
    let description = opt_str(&m, "description")?.filter(|d| !d.is_empty());
    let ref_url = opt_str(&m, "ref_url")?.filter(|u| !u.is_empty());
    let g = st
        .store
        .upsert_group(&uuid, description.as_deref(), ref_url.as_deref())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(group_json(&g, &st.base_url(&headers))),
    )
        .into_response())
}

// --- testcases -----------------------------------------------------------------------------

async fn list_testcases(
    State(st): State<WebState>,
    headers: HeaderMap,
    q: Result<Query<Pairs>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let pairs = params::pairs(q)?;
    let p = paging(&pairs, params::DEFAULT_LIMIT)?;
    let mut f = TestcaseFilter::default();
    for (k, v) in &pairs {
        match k.as_str() {
            "page" | "limit" => {}
            "name" => f.names.extend(csv(v)),
            "name:like" => f.name_like.extend(csv(v)),
            other => {
                return Err(ApiError::bad_request(format!(
                    "{other}: unknown parameter (testcases filter on name, name:like)"
                )));
            }
        }
    }
    let rows = st.store.testcase_page(&f, p.limit, p.offset()).await?;
    let base = st.base_url(&headers);
    let url = format!("{base}{BASE}/testcases");
    Ok(page_json(
        rows,
        |(n, u)| testcase_json(n, u.as_deref(), &base),
        &url,
        &pairs,
        p,
    ))
}

/// `/testcases/<name>` and `/testcases/<name>/results`, where the name may contain `/`. As
/// in ResultsDB (whose `…/results` route is the more specific one), a path ending in
/// `/results` is the results of the name before it.
async fn testcase_path(
    State(st): State<WebState>,
    headers: HeaderMap,
    Path(rest): Path<String>,
    q: Result<Query<Pairs>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    match rest.strip_suffix("/results").filter(|n| !n.is_empty()) {
        Some(name) => testcase_results(&st, &headers, name, q).await,
        None => {
            let (n, u) = find_testcase(&st, &rest).await?;
            Ok(Json(testcase_json(
                &n,
                u.as_deref(),
                &st.base_url(&headers),
            )))
        }
    }
}

async fn find_testcase(st: &WebState, name: &str) -> ApiResult<(String, Option<String>)> {
    let f = TestcaseFilter {
        names: vec![name.to_string()],
        ..TestcaseFilter::default()
    };
    st.store
        .testcase_page(&f, 1, 0)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found("Testcase not found"))
}

async fn testcase_results(
    st: &WebState,
    headers: &HeaderMap,
    name: &str,
    q: Result<Query<Pairs>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let pairs = params::pairs(q)?;
    let p = paging(&pairs, params::DEFAULT_LIMIT)?;
    let mut f = result_filter(&pairs)?;
    find_testcase(st, name).await?;
    f.testcases = vec![name.to_string()];
    let path = format!("/testcases/{}/results", path_encode(name));
    results_page(st, headers, &pairs, p, &f, &path).await
}

async fn create_testcase(
    State(st): State<WebState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let (m, token) = json_body(&body)?;
    auth::require_token(&st, &headers, token.as_deref())?;
    let name = opt_str(&m, "name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("name: required"))?;
    let (n, u) = st
        .store
        .upsert_testcase(&name, opt_str(&m, "ref_url")?.as_deref())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(testcase_json(&n, u.as_deref(), &st.base_url(&headers))),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Pairs {
        q.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn filters_parse() {
        let f = result_filter(&pairs(&[
            ("item", "a,b"),
            ("type:like", "koji*"),
            ("outcome", "passed,FAILED"),
            ("testcases:like", "dist.*"),
            ("_sort", "asc:submit_time"),
            ("page", "2"),
        ]))
        .unwrap();
        assert_eq!(
            f.data,
            vec![
                (
                    "item".into(),
                    DataMatch::Exact(vec!["a".into(), "b".into()])
                ),
                ("type".into(), DataMatch::Like(vec!["koji*".into()])),
            ]
        );
        assert_eq!(f.outcomes, ["PASSED", "FAILED"]);
        assert!(f.ascending);
    }

    #[test]
    fn bad_filters_name_the_parameter_and_value() {
        for (q, words) in [
            (("outcome", "MAYBE"), ["outcome", "MAYBE"]),
            (("_bogus", "1"), ["_bogus", "reserved"]),
            (("item:regex", "x"), ["item:regex", "regex"]),
            (("since", "notadate"), ["since", "notadate"]),
        ] {
            let e = result_filter(&pairs(&[q])).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.field.is_some(), "{q:?} is a validation error");
            for w in words {
                assert!(e.message.contains(w), "{} lacks {w}", e.message);
            }
        }
        // An unsupported sort falls back to newest first, as in ResultsDB.
        for sort in ["sideways", "ASC:submit_time", "asc:id", "disable_sorting"] {
            assert!(!result_filter(&pairs(&[("_sort", sort)])).unwrap().ascending);
        }
    }

    #[test]
    fn post_bodies_validate() {
        let body = |v: Value| {
            let bytes = serde_json::to_vec(&v).unwrap();
            new_result(v.as_object().unwrap(), &bytes)
        };
        let ok = body(json!({
            "outcome": " passed ", "testcase": {"name": "t", "ref_url": "u"},
            "groups": ["not-a-uuid", {"uuid": "0190a4c8-0000-7000-8000-000000000002", "description": "d", "ref_url": null}],
            "data": {"item": "x", "arch": ["a", "b"], "n": 3, "skip": null, "nested": {"k": [1, true]}, "l": [null, 1.5, {"a": "b"}], "e": []},
            "submit_time": "1736680835123"
        }))
        .unwrap();
        assert_eq!(ok.outcome, "PASSED");
        assert_eq!(ok.testcase_ref_url, Some(Some("u".into())));
        assert_eq!(ok.groups[0], NewGroup::from("not-a-uuid".to_string()));
        assert_eq!(ok.groups[1].description, Some(Some("d".into())));
        assert_eq!(ok.groups[1].ref_url, Some(None));
        assert_eq!(ok.data["arch"], ["a", "b"]);
        assert_eq!(ok.data["n"], ["3"]);
        assert_eq!(ok.data["skip"], ["None"]);
        assert_eq!(ok.data["nested"], ["{'k': [1, True]}"]);
        assert_eq!(ok.data["l"], ["None", "1.5", "{'a': 'b'}"]);
        assert!(!ok.data.contains_key("e"));
        assert_eq!(
            ok.submit_time.unwrap().unix_timestamp_nanos(),
            1_736_680_835_123_000_000
        );
        for (v, word) in [
            (json!({"testcase": "t"}), "outcome"),
            (json!({"outcome": "  ", "testcase": "t"}), "outcome"),
            (json!({"outcome": "NOPE", "testcase": "t"}), "NOPE"),
            (json!({"outcome": "PASSED"}), "testcase"),
            (
                json!({"outcome": "PASSED", "testcase": "t", "groups": [""]}),
                "empty",
            ),
            (
                json!({"outcome": "PASSED", "testcase": "t", "data": {"a:b": "x"}}),
                "a:b",
            ),
            (
                json!({"outcome": "PASSED", "testcase": "t", "submit_time": "soon"}),
                "submit_time",
            ),
            (
                json!({"outcome": "PASSED", "testcase": "t", "submit_time": 1.5}),
                "submit_time",
            ),
        ] {
            let e = body(v).unwrap_err();
            assert!(e.message.contains(word), "{} lacks {word}", e.message);
            assert!(e.field.is_some(), "{}", e.message);
        }
    }
}
