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
use super::{WebState, auth, base_url};
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
        .route("/api/v2.0/testcases/{name}", get(one_testcase))
        .route("/api/v2.0/testcases/{name}/results", get(testcase_results))
}

async fn index(headers: HeaderMap) -> Json<Value> {
    let b = format!("{}{BASE}", base_url(&headers));
    Json(json!({
        "results": format!("{b}/results"),
        "groups": format!("{b}/groups"),
        "testcases": format!("{b}/testcases"),
        "healthcheck": format!("{b}/healthcheck"),
    }))
}

async fn healthcheck(State(st): State<WebState>) -> ApiResult<Json<Value>> {
    sqlx::query("SELECT 1")
        .execute(st.store.pool())
        .await
        .map_err(|e| ApiError::status(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}")))?;
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
        "href": format!("{base}{BASE}/testcases/{}", params::encode(name)),
    })
}

fn group_json(g: &GroupRow, base: &str) -> Value {
    json!({
        "uuid": g.uuid,
        "description": g.description,
        "ref_url": g.ref_url,
        "results": format!("{base}{BASE}/results?groups={}", g.uuid),
        "results_count": g.results_count,
        "href": format!("{base}{BASE}/groups/{}", g.uuid),
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
                        return Err(ApiError::bad_request(format!(
                            "outcome: unknown outcome `{o}` (expected one of {})",
                            Outcome::ALL.map(|o| o.as_str()).join(", ")
                        )));
                    }
                    f.outcomes.push(o);
                }
            }
            "groups" => f.groups.extend(csv(v)),
            "testcases" => f.testcases.extend(csv(v)),
            "testcases:like" => f.testcases_like.extend(csv(v)),
            "_sort" => {
                f.ascending = match v.trim() {
                    "desc:submit_time" | "" => false,
                    "asc:submit_time" => true,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "_sort: `{other}` is not supported (use desc:submit_time or asc:submit_time)"
                        )));
                    }
                }
            }
            key if key.starts_with('_') => {
                return Err(ApiError::bad_request(format!(
                    "{key}: unknown parameter (parameters starting with `_` are reserved)"
                )));
            }
            key => {
                let (key, like) = match key.split_once(':') {
                    None => (key, false),
                    Some((k, "like")) => (k, true),
                    Some((_, op)) => {
                        return Err(ApiError::bad_request(format!(
                            "{key}: unknown operator `{op}` (only `KEY:like` is supported)"
                        )));
                    }
                };
                if key.is_empty() {
                    return Err(ApiError::bad_request(format!("`{k}`: empty data key")));
                }
                let values = csv(v);
                if values.is_empty() {
                    return Err(ApiError::bad_request(format!("{k}: no value given")));
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
    let base = base_url(headers);
    let url = format!("{base}{BASE}{path}");
    Ok(page_json(rows, |r| result_json(r, &base), &url, pairs, p))
}

async fn latest_results(
    State(st): State<WebState>,
    headers: HeaderMap,
    q: Result<Query<Pairs>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let pairs = params::pairs(q)?;
    let f = result_filter(&pairs)?;
    let distinct_on: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "_distinct_on")
        .flat_map(|(_, v)| csv(v))
        .collect();
    if let Some(bad) = distinct_on.iter().find(|k| k.contains(':')) {
        return Err(ApiError::bad_request(format!(
            "_distinct_on: `{bad}` is not a data key"
        )));
    }
    if !distinct_on.is_empty() && f.is_empty() {
        return Err(ApiError::bad_request(
            "_distinct_on: give at least one other filter (e.g. item=…) besides _distinct_on",
        ));
    }
    let rows = st.store.latest_results(&f, &distinct_on).await?;
    let base = base_url(&headers);
    Ok(Json(json!({
        "data": rows.iter().map(|r| result_json(r, &base)).collect::<Vec<_>>(),
    })))
}

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
    Ok(Json(result_json(&r, &base_url(&headers))))
}

/// The JSON body of a POST, with its token taken out.
fn json_body(body: &Bytes) -> ApiResult<(Map<String, Value>, Option<String>)> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not JSON: {e}")))?;
    let Value::Object(mut m) = v else {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    };
    let token = match m.remove("_auth_token") {
        Some(Value::String(t)) => Some(t),
        _ => None,
    };
    Ok((m, token))
}

fn opt_str(m: &Map<String, Value>, key: &str) -> ApiResult<Option<String>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::bad_request(format!(
            "{key}: expected a string, got {other}"
        ))),
    }
}

fn parse_uuid(field: &str, s: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(s.trim())
        .map_err(|e| ApiError::bad_request(format!("{field}: `{s}` is not a UUID ({e})")))
}

/// A data value as ResultsDB stores it: strings as they are, other scalars as their text.
fn data_value(key: &str, v: &Value) -> ApiResult<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(if *b { "True" } else { "False" }.to_string())),
        other => Err(ApiError::bad_request(format!(
            "data.{key}: values must be strings, numbers or lists of them, got {other}"
        ))),
    }
}

/// Validates a POST /results body into a NewResult.
pub fn new_result(m: &Map<String, Value>) -> ApiResult<NewResult> {
    let outcome = match m.get("outcome") {
        Some(Value::String(s)) => s.to_uppercase(),
        None | Some(Value::Null) => return Err(ApiError::bad_request("outcome: required")),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "outcome: expected a string, got {other}"
            )));
        }
    };
    outcome
        .parse::<Outcome>()
        .map_err(|e| ApiError::bad_request(format!("outcome: {e}")))?;
    let (testcase, testcase_ref_url) = match m.get("testcase") {
        Some(Value::String(s)) => (s.clone(), None),
        Some(Value::Object(t)) => match t.get("name") {
            Some(Value::String(n)) => (n.clone(), opt_str(t, "ref_url")?),
            _ => return Err(ApiError::bad_request("testcase.name: required string")),
        },
        None | Some(Value::Null) => return Err(ApiError::bad_request("testcase: required")),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "testcase: expected a name or {{name, ref_url}}, got {other}"
            )));
        }
    };
    if testcase.trim().is_empty() {
        return Err(ApiError::bad_request("testcase: the name is empty"));
    }
    let mut groups = Vec::new();
    match m.get("groups") {
        None | Some(Value::Null) => {}
        Some(Value::Array(gs)) => {
            for g in gs {
                groups.push(match g {
                    Value::String(s) => NewGroup::from(parse_uuid("groups", s)?),
                    Value::Object(o) => NewGroup {
                        uuid: match o.get("uuid") {
                            Some(Value::String(s)) => parse_uuid("groups.uuid", s)?,
                            None | Some(Value::Null) => Uuid::now_v7(),
                            Some(other) => {
                                return Err(ApiError::bad_request(format!(
                                    "groups.uuid: expected a string, got {other}"
                                )));
                            }
                        },
                        description: opt_str(o, "description")?,
                        ref_url: opt_str(o, "ref_url")?,
                    },
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "groups: expected uuids or {{uuid, description, ref_url}}, got {other}"
                        )));
                    }
                });
            }
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "groups: expected a list, got {other}"
            )));
        }
    }
    let submit_time = match m.get("submit_time") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(params::parse_time("submit_time", s)?),
        // ResultsDB takes a number as milliseconds since the epoch.
        Some(Value::Number(n)) => Some(n.as_i64().and_then(|ms| ms.checked_mul(1000)).ok_or_else(
            || ApiError::bad_request(format!("submit_time: `{n}` is not a time in milliseconds")),
        )?),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "submit_time: expected an ISO 8601 string or milliseconds, got {other}"
            )));
        }
    };
    let submit_time = submit_time
        .map(|us| {
            crate::store::from_micros(us)
                .map_err(|e| ApiError::bad_request(format!("submit_time: {e}")))
        })
        .transpose()?;
    let mut data = BTreeMap::new();
    match m.get("data") {
        None | Some(Value::Null) => {}
        Some(Value::Object(d)) => {
            for (k, v) in d {
                if k.contains(':') || k.trim().is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "data: key `{k}` must be non-empty and contain no colon"
                    )));
                }
                let values: Vec<String> = match v {
                    Value::Array(vs) => {
                        let mut out = Vec::new();
                        for x in vs {
                            out.extend(data_value(k, x)?);
                        }
                        out
                    }
                    scalar => data_value(k, scalar)?.into_iter().collect(),
                };
                if !values.is_empty() {
                    data.insert(k.clone(), values);
                }
            }
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "data: expected an object, got {other}"
            )));
        }
    }
    Ok(NewResult {
        testcase,
        testcase_ref_url,
        groups,
        outcome,
        note: opt_str(m, "note")?,
        ref_url: opt_str(m, "ref_url")?,
        submit_time,
        data,
    })
}

async fn create_result(
    State(st): State<WebState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let (m, token) = json_body(&body)?;
    auth::require_token(&st, &headers, token.as_deref())?;
    let new = new_result(&m)?;
    let stored = st.store.create_result(&new).await?;
    Ok((
        StatusCode::CREATED,
        Json(result_json(&stored, &base_url(&headers))),
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
    let base = base_url(&headers);
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
    Ok(Json(group_json(&g, &base_url(&headers))))
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
        &format!("/groups/{uuid}/results"),
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
    let uuid = match opt_str(&m, "uuid")? {
        Some(s) => parse_uuid("uuid", &s)?,
        None => Uuid::now_v7(),
    };
    let g = st
        .store
        .upsert_group(
            uuid,
            opt_str(&m, "description")?.as_deref(),
            opt_str(&m, "ref_url")?.as_deref(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(group_json(&g, &base_url(&headers))),
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
    let base = base_url(&headers);
    let url = format!("{base}{BASE}/testcases");
    Ok(page_json(
        rows,
        |(n, u)| testcase_json(n, u.as_deref(), &base),
        &url,
        &pairs,
        p,
    ))
}

async fn one_testcase(
    State(st): State<WebState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let (n, u) = find_testcase(&st, &name).await?;
    Ok(Json(testcase_json(&n, u.as_deref(), &base_url(&headers))))
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
    State(st): State<WebState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: Result<Query<Pairs>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let pairs = params::pairs(q)?;
    let p = paging(&pairs, params::DEFAULT_LIMIT)?;
    let mut f = result_filter(&pairs)?;
    find_testcase(&st, &name).await?;
    f.testcases = vec![name.clone()];
    let path = format!("/testcases/{}/results", params::encode(&name));
    results_page(&st, &headers, &pairs, p, &f, &path).await
}

async fn create_testcase(
    State(st): State<WebState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let (m, token) = json_body(&body)?;
    auth::require_token(&st, &headers, token.as_deref())?;
    let name = opt_str(&m, "name")?
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("name: required"))?;
    let (n, u) = st
        .store
        .upsert_testcase(&name, opt_str(&m, "ref_url")?.as_deref())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(testcase_json(&n, u.as_deref(), &base_url(&headers))),
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
            (("_sort", "sideways"), ["_sort", "sideways"]),
            (("_bogus", "1"), ["_bogus", "reserved"]),
            (("item:regex", "x"), ["item:regex", "regex"]),
            (("since", "notadate"), ["since", "notadate"]),
        ] {
            let e = result_filter(&pairs(&[q])).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            for w in words {
                assert!(e.message.contains(w), "{} lacks {w}", e.message);
            }
        }
    }

    #[test]
    fn post_bodies_validate() {
        let body = |v: Value| new_result(v.as_object().unwrap());
        let ok = body(json!({
            "outcome": "passed", "testcase": {"name": "t", "ref_url": "u"},
            "groups": ["0190a4c8-0000-7000-8000-000000000001", {"uuid": "0190a4c8-0000-7000-8000-000000000002", "description": "d"}],
            "data": {"item": "x", "arch": ["a", "b"], "n": 3, "skip": null},
            "submit_time": "2025-01-12T11:20:35"
        }))
        .unwrap();
        assert_eq!(ok.outcome, "PASSED");
        assert_eq!(ok.testcase_ref_url.as_deref(), Some("u"));
        assert_eq!(ok.groups.len(), 2);
        assert_eq!(ok.data["arch"], ["a", "b"]);
        assert_eq!(ok.data["n"], ["3"]);
        assert!(!ok.data.contains_key("skip"));
        for (v, word) in [
            (json!({"testcase": "t"}), "outcome"),
            (json!({"outcome": "NOPE", "testcase": "t"}), "NOPE"),
            (json!({"outcome": "PASSED"}), "testcase"),
            (
                json!({"outcome": "PASSED", "testcase": "t", "groups": ["not-a-uuid"]}),
                "not-a-uuid",
            ),
            (
                json!({"outcome": "PASSED", "testcase": "t", "data": {"a:b": "x"}}),
                "a:b",
            ),
            (
                json!({"outcome": "PASSED", "testcase": "t", "data": {"k": {"x": 1}}}),
                "data.k",
            ),
            (
                json!({"outcome": "PASSED", "testcase": "t", "submit_time": "soon"}),
                "submit_time",
            ),
        ] {
            let e = body(v).unwrap_err();
            assert!(e.message.contains(word), "{} lacks {word}", e.message);
        }
    }
}
