//! Runs API (`/api/v1/runs`): the list with filters and paging, one run with everything the
//! run page shows (also as JUnit XML), and cancel requests (recorded in the store; the owning daemon acts, at
//! once when it is this process). Reruns are in [`super::jobs_api`]: they make a job.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{ApiError, ApiResult};
use super::params::{self, Pairs, csv, fmt_time};
use super::{WebState, files, resultsdb};
use crate::outcome::Outcome;
use crate::store::{RunFilter, RunParams, RunRecord, RunState, RunSummary};
use crate::task::snapshot;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/api/v1/runs", get(list))
        .route("/api/v1/runs/{uuid}", get(one))
        .route("/api/v1/runs/{uuid}/junit.xml", get(junit))
        .route("/api/v1/runs/{uuid}/task.tar", get(task_archive))
        .route("/api/v1/runs/{uuid}/cancel", post(cancel))
}

/// The runs list's filters: `task`, `item`, `type`, `arch`, `state`, `outcome` (comma lists),
/// `from`/`to` (ISO dates or times; a bare `to` date includes that day), `q` (substring).
pub fn run_filter(pairs: &Pairs) -> ApiResult<RunFilter> {
    let mut f = RunFilter::default();
    for (k, v) in pairs {
        match k.as_str() {
            "page" | "limit" => {}
            "task" => f.task.extend(csv(v)),
            "item" => f.item.extend(csv(v)),
            "type" => f.item_type.extend(csv(v)),
            "arch" => f.arch.extend(csv(v)),
            "state" => {
                for s in csv(v) {
                    f.state.push(
                        s.parse::<RunState>()
                            .map_err(|e| ApiError::bad_request(format!("state: {e}")))?,
                    );
                }
            }
            "outcome" => {
                for o in csv(v) {
                    let o = o.to_uppercase();
                    o.parse::<Outcome>()
                        .map_err(|e| ApiError::bad_request(format!("outcome: {e}")))?;
                    f.outcome.push(o);
                }
            }
            "from" if !v.is_empty() => f.from = Some(params::parse_time("from", v)?),
            "to" if !v.is_empty() => {
                let t = params::parse_time("to", v)?;
                // A date alone means the whole day.
                let day = v.trim().len() == 10;
                f.to = Some(if day { t + 86_400_000_000 - 1 } else { t });
            }
            "from" | "to" => {}
            "q" => f.search = Some(v.trim().to_string()).filter(|s| !s.is_empty()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "{other}: unknown parameter (runs filter on task, item, type, arch, state, \
                     outcome, from, to, q)"
                )));
            }
        }
    }
    Ok(f)
}

fn opt_time(t: Option<time::OffsetDateTime>) -> Value {
    t.map_or(Value::Null, |t| Value::String(fmt_time(t)))
}

fn summary_json(s: &RunSummary, base: &str) -> Value {
    let r = &s.run;
    json!({
        "uuid": r.uuid,
        "task": r.task,
        "item": r.item,
        "type": r.item_type,
        "arch": r.arch,
        "backend": r.backend,
        "state": r.state,
        "exit_code": r.exit_code,
        "error": r.error,
        "owner": r.owner,
        "created_at": fmt_time(r.created_at),
        "started_at": opt_time(r.started_at),
        "finished_at": opt_time(r.finished_at),
        "cancel_requested": s.cancel_requested,
        "outcomes": s.outcomes,
        "href": format!("{base}/api/v1/runs/{}", r.uuid),
        "html": format!("{base}/runs/{}", r.uuid),
    })
}

async fn list(
    State(st): State<WebState>,
    headers: HeaderMap,
    q: Result<Query<Pairs>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let pairs = params::pairs(q)?;
    let p = params::paging(&pairs, params::DEFAULT_LIMIT)?;
    let f = run_filter(&pairs)?;
    let mut rows = st.store.run_page(&f, p.limit, p.offset()).await?;
    let has_next = rows.len() > p.limit as usize;
    rows.truncate(p.limit as usize);
    let base = st.base_url(&headers);
    let (prev, next) = params::page_links(&format!("{base}/api/v1/runs"), &pairs, p, has_next);
    Ok(Json(json!({
        "data": rows.iter().map(|r| summary_json(r, &base)).collect::<Vec<_>>(),
        "prev": prev,
        "next": next,
    })))
}

/// A run's uuid from the path; anything else is a 404 naming it.
pub fn parse_run_uuid(s: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(s)
        .map_err(|_| ApiError::not_found(format!("Run not found: `{s}` is not a run uuid")))
}

/// The run the path names; a 404 naming it when there is none.
async fn find_run(st: &WebState, uuid: &str) -> ApiResult<RunRecord> {
    let uuid = parse_run_uuid(uuid)?;
    st.store
        .run(uuid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Run not found: {uuid}")))
}

async fn one(
    State(st): State<WebState>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
) -> ApiResult<Json<Value>> {
    let run = find_run(&st, &uuid).await?;
    let uuid = run.uuid;
    let results = st.store.run_results(uuid).await?;
    let cancel_requested = st.store.cancel_requested(uuid).await?.unwrap_or(false);
    let base = st.base_url(&headers);
    let root = files::artifacts_root(&st, uuid);
    let artifacts = tokio::task::spawn_blocking(move || files::list_artifacts(&root))
        .await
        .unwrap_or_default();
    let mut v = summary_json(
        &RunSummary {
            run: run.clone(),
            outcomes: Default::default(),
            cancel_requested,
        },
        &base,
    );
    let m = v.as_object_mut().expect("an object");
    m.remove("outcomes");
    m.insert(
        "params".into(),
        RunParams::from_value(&run.params).to_value(),
    );
    m.insert(
        "phases".into(),
        run.phases
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "started_at": fmt_time(p.started_at),
                    "duration_ms": p.duration.as_secs_f64() * 1000.0,
                })
            })
            .collect(),
    );
    m.insert(
        "attempts".into(),
        run.attempts
            .iter()
            .map(|a| {
                json!({
                    "attempt": a.attempt,
                    "started_at": fmt_time(a.started_at),
                    "finished_at": opt_time(a.finished_at),
                    "error": a.error,
                })
            })
            .collect(),
    );
    m.insert(
        "results".into(),
        results
            .iter()
            .map(|r| resultsdb::result_json(r, &base))
            .collect(),
    );
    m.insert(
        "artifacts".into(),
        artifacts
            .iter()
            .map(|a| {
                json!({
                    "path": a.path,
                    "size": a.size,
                    "href": format!("{base}/runs/{uuid}/artifacts/{}", a.path.split('/').map(super::params::seg).collect::<Vec<_>>().join("/")),
                })
            })
            .collect(),
    );
    m.insert("log".into(), json!(format!("{base}/runs/{uuid}/log")));
    if !RunParams::from_value(&run.params).task_sha256.is_empty() {
        m.insert(
            "task_archive".into(),
            json!(format!("{base}/api/v1/runs/{uuid}/task.tar")),
        );
    }
    m.insert("command".into(), json!(reproduce_command(&run)));
    Ok(Json(v))
}

/// The run's results as JUnit XML, for CI tools ([`crate::junit`] says how they map).
async fn junit(State(st): State<WebState>, Path(uuid): Path<String>) -> ApiResult<Response> {
    let run = find_run(&st, &uuid).await?;
    let results = st.store.run_results(run.uuid).await?;
    let xml = crate::junit::render(&run, &results);
    Ok((
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        xml,
    )
        .into_response())
}

/// The task directory as the run ran it (`task::snapshot`): what `ferrotron rerun` runs.
/// Its sha256 is the run's `params.task_sha256`, also sent as `X-Ferrotron-Task-Sha256`.
async fn task_archive(State(st): State<WebState>, Path(uuid): Path<String>) -> ApiResult<Response> {
    let run = find_run(&st, &uuid).await?;
    let sha = RunParams::from_value(&run.params).task_sha256;
    let gone = |why: String| ApiError::status(StatusCode::NOT_FOUND, why);
    if sha.is_empty() {
        return Err(gone(format!(
            "run {} kept no copy of its task (it predates task snapshots)",
            run.uuid
        )));
    }
    let Some(path) = snapshot::path(&st.data_dir.join("tasks"), &sha) else {
        return Err(gone(format!("run {}: bad task hash `{sha}`", run.uuid)));
    };
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| gone(format!("run {}: task snapshot {sha}: {e}", run.uuid)))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (
                header::HeaderName::from_static("x-ferrotron-task-sha256"),
                sha,
            ),
        ],
        bytes,
    )
        .into_response())
}

async fn cancel(
    State(st): State<WebState>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refusal) = super::jobs_api::refuse(&st, &headers, &body) {
        return refusal;
    }
    match cancel_run(&st, &uuid).await {
        // The run page's button: back to the page, which now says so.
        Ok((uuid, _)) if super::jobs_api::from_form(&headers) => {
            Redirect::to(&format!("/runs/{uuid}")).into_response()
        }
        Ok((uuid, state)) => (
            StatusCode::ACCEPTED,
            Json(json!({"uuid": uuid, "state": state, "cancel_requested": true})),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn cancel_run(st: &WebState, uuid: &str) -> ApiResult<(Uuid, RunState)> {
    let uuid = parse_run_uuid(uuid)?;
    let state = st.store.request_cancel(uuid).await?;
    if state.is_terminal() {
        return Err(ApiError::status(
            StatusCode::CONFLICT,
            format!("run {uuid} is already {state}: nothing to cancel"),
        ));
    }
    // A daemon in this process that runs it stops it now; any other within a heartbeat.
    if let Some(farm) = &st.farm {
        farm.cancel_running(uuid);
    }
    Ok((uuid, state))
}

use crate::util::shell_word as sh;

/// The `ferrotron run` command that runs this job again locally (same uuid omitted).
pub fn reproduce_command(run: &RunRecord) -> String {
    let p = RunParams::from_value(&run.params);
    let formula = if p.formula.is_empty() {
        &run.task
    } else {
        &p.formula
    };
    let formula = formula.strip_suffix("/runtask.yml").unwrap_or(formula);
    let words = run_args(
        &run.item,
        &run.item_type,
        &run.arch,
        &run.backend,
        &p,
        formula,
    );
    std::iter::once("ferrotron run".to_string())
        .chain(words.iter().map(|w| sh(w)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The arguments of `ferrotron run` (unquoted) that run a job like this one on `backend`:
/// flags left at their defaults are left out; `task` comes last.
pub fn run_args(
    item: &str,
    item_type: &str,
    arch: &str,
    backend: &str,
    p: &RunParams,
    task: &str,
) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut push = |flag: &str, value: &str| {
        words.push(flag.into());
        words.push(value.into());
    };
    for (flag, value) in [("-i", item), ("-t", item_type), ("-a", arch)] {
        if !value.is_empty() {
            push(flag, value);
        }
    }
    if p.jobid != RunParams::DEFAULT_JOBID {
        push("-j", &p.jobid);
    }
    match backend {
        "local" => {}
        "ssh" if !p.image.is_empty() => push("--ssh", &p.image),
        "ssh" => {}
        backend => {
            push("--backend", backend);
            if !p.image.is_empty() {
                push("--image", &p.image);
            }
        }
    }
    if p.task_timeout_s != RunParams::DEFAULT_TASK_TIMEOUT_S {
        push("--timeout", &p.task_timeout_s.to_string());
    }
    if p.keep_instance {
        words.push("--no-destroy".into());
    }
    words.push(task.into());
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_filters_parse_and_name_bad_values() {
        let pairs: Pairs = [
            ("state", "running,failed"),
            ("to", "2025-01-12"),
            ("q", " x "),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let f = run_filter(&pairs).unwrap();
        assert_eq!(f.state, [RunState::Running, RunState::Failed]);
        assert_eq!(f.to, Some(1_736_726_399_999_999));
        assert_eq!(f.search.as_deref(), Some("x"));
        for (k, v) in [
            ("state", "sleeping"),
            ("outcome", "meh"),
            ("from", "later"),
            ("colour", "red"),
        ] {
            let e = run_filter(&vec![(k.to_string(), v.to_string())]).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(k), "{}", e.message);
        }
    }
}
