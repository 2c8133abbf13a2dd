//! The queue over HTTP: `GET /api/v1/jobs` (queued and in-flight jobs, each with why it
//! waits), `GET /api/v1/jobs/UUID`, `POST /api/v1/jobs/UUID/cancel`, and
//! `POST /api/v1/runs/UUID/rerun` (a new job with the run's task, item, type, arch and
//! image). Writes need a token; cancel and rerun from the run page are HTML forms, so a
//! browser is asked for the token by HTTP Basic auth and sent back to a page.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::error::{ApiError, ApiResult};
use super::farm::ProviderStatus;
use super::params::{self, Pairs, csv, fmt_time};
use super::{WebState, auth};
use crate::store::{Job, JobFilter, NewJob, RunState};

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/api/v1/jobs", get(list))
        .route("/api/v1/jobs/{uuid}", get(one))
        .route("/api/v1/jobs/{uuid}/cancel", post(cancel))
        .route("/api/v1/runs/{uuid}/rerun", post(rerun))
}

/// Why a queued job is not running yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    /// `backoff` (retry later), `capacity` (its pool's providers are full), `breaker` (they
    /// keep failing and rest), `no_provider` (nothing here serves its pool), `dispatch`
    /// (room exists: the next claim round takes it), `unknown` (no daemon in this process).
    pub reason: &'static str,
    pub detail: String,
}

/// Why `job` waits, from its row and (in a daemon) the providers' live state.
pub fn wait_reason(
    job: &Job,
    providers: Option<&[ProviderStatus]>,
    now: OffsetDateTime,
) -> Option<Wait> {
    if job.state != RunState::Queued {
        return None;
    }
    if job.not_before > now {
        return Some(Wait {
            reason: "backoff",
            detail: format!(
                "retry {} of {} not before {}{}",
                job.attempts + 1,
                job.max_attempts,
                fmt_time(job.not_before),
                job.error
                    .as_deref()
                    .map(|e| format!(" (last attempt: {e})"))
                    .unwrap_or_default()
            ),
        });
    }
    let Some(providers) = providers else {
        return Some(Wait {
            reason: "unknown",
            detail: format!("waits for a daemon serving pool `{}`", job.pool),
        });
    };
    let pool: Vec<&ProviderStatus> = providers.iter().filter(|p| p.pool == job.pool).collect();
    if pool.is_empty() {
        return Some(Wait {
            reason: "no_provider",
            detail: format!("no provider of this daemon serves pool `{}`", job.pool),
        });
    }
    let states: Vec<String> = pool
        .iter()
        .map(|p| {
            format!(
                "{}: {} of {} in flight, breaker {}",
                p.name, p.in_flight, p.max_instances, p.breaker
            )
        })
        .collect();
    let detail = states.join("; ");
    let reason = if pool.iter().any(|p| p.breaker != "open" && p.has_room()) {
        "dispatch"
    } else if pool.iter().all(|p| p.breaker == "open") {
        "breaker"
    } else {
        "capacity"
    };
    Some(Wait { reason, detail })
}

/// The job list's filters: `state` (comma list; default queued and in flight), `task`,
/// `pool`, `limit` (default 200).
pub fn job_filter(pairs: &Pairs) -> ApiResult<JobFilter> {
    let mut f = JobFilter {
        limit: 200,
        ..JobFilter::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "state" => {
                for s in csv(v) {
                    f.states.push(
                        s.parse::<RunState>()
                            .map_err(|e| ApiError::bad_request(format!("state: {e}")))?,
                    );
                }
            }
            "task" => f.task = Some(v.trim().to_string()).filter(|s| !s.is_empty()),
            "pool" => f.pool = Some(v.trim().to_string()).filter(|s| !s.is_empty()),
            "limit" => {
                f.limit = v
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=params::MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit: `{v}` is not a number from 1 to {}",
                            params::MAX_LIMIT
                        ))
                    })?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "{other}: unknown parameter (jobs filter on state, task, pool, limit)"
                )));
            }
        }
    }
    Ok(f)
}

pub fn job_json(j: &Job, wait: Option<&Wait>, base: &str) -> Value {
    let run = j.current_run();
    json!({
        "uuid": j.uuid,
        "task": j.task,
        "item": j.item,
        "type": j.item_type,
        "arch": j.arch,
        "pool": j.pool,
        "provider": j.provider,
        "state": j.state,
        "priority": j.priority,
        "attempts": j.attempts,
        "max_attempts": j.max_attempts,
        "claimed_by": j.claimed_by,
        "received_at": fmt_time(j.received_at),
        "claimed_at": j.claimed_at.map(fmt_time),
        "finished_at": j.finished_at.map(fmt_time),
        "next_retry": (j.state == RunState::Queued && j.attempts > 0).then(|| fmt_time(j.not_before)),
        "waiting": wait.map(|w| json!({"reason": w.reason, "detail": w.detail})),
        "error": j.error,
        "outcome": j.outcome,
        "image": j.image,
        "message_id": j.message_id,
        "run": run,
        "run_html": run.map(|r| format!("{base}/runs/{r}")),
        "href": format!("{base}/api/v1/jobs/{}", j.uuid),
    })
}

async fn providers(st: &WebState) -> Option<Vec<ProviderStatus>> {
    match &st.farm {
        Some(f) => Some(f.providers().await),
        None => None,
    }
}

async fn list(
    State(st): State<WebState>,
    headers: HeaderMap,
    q: Result<Query<Pairs>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let pairs = params::pairs(q)?;
    let f = job_filter(&pairs)?;
    let jobs = st.store.list_jobs(&f).await?;
    let provs = providers(&st).await;
    let now = OffsetDateTime::now_utc();
    let base = st.base_url(&headers);
    let data: Vec<Value> = jobs
        .iter()
        .map(|j| job_json(j, wait_reason(j, provs.as_deref(), now).as_ref(), &base))
        .collect();
    Ok(Json(json!({
        "data": data,
        "providers": provs,
        "daemon": st.farm.as_ref().map(|f| f.daemon_id()),
    })))
}

fn parse_job_uuid(s: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(s)
        .map_err(|_| ApiError::not_found(format!("Job not found: `{s}` is not a job uuid")))
}

async fn one(
    State(st): State<WebState>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
) -> ApiResult<Json<Value>> {
    let uuid = parse_job_uuid(&uuid)?;
    let job = st
        .store
        .job(uuid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Job not found: {uuid}")))?;
    let provs = providers(&st).await;
    let wait = wait_reason(&job, provs.as_deref(), OffsetDateTime::now_utc());
    Ok(Json(job_json(&job, wait.as_ref(), &st.base_url(&headers))))
}

/// A form post from a page (the run page's buttons) rather than an API client.
pub(crate) fn from_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// Checks the token: `Some(refusal)` without a valid one. A browser is asked for it (HTTP
/// Basic, the token as password).
pub(crate) fn refuse(st: &WebState, headers: &HeaderMap, body: &[u8]) -> Option<Response> {
    let body_token = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("_auth_token")?.as_str().map(str::to_string));
    let e = auth::require_token(st, headers, body_token.as_deref()).err()?;
    {
        let unauthorized = e.status == StatusCode::UNAUTHORIZED;
        let mut r = e.into_response();
        if unauthorized && from_form(headers) {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"ferrotron (the API token as password)\""),
            );
        }
        Some(r)
    }
}

/// Cancels a job: a queued one at once; one in flight has its run stopped (its instance is
/// destroyed and the job ends `cancelled`) by the daemon that runs it — now when that is
/// this process, within a heartbeat otherwise.
async fn cancel(
    State(st): State<WebState>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refuse(&st, &headers, &body) {
        return r;
    }
    match cancel_job(&st, &uuid).await {
        Ok(_) if from_form(&headers) => Redirect::to("/jobs").into_response(),
        Ok(v) => (StatusCode::ACCEPTED, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn cancel_job(st: &WebState, uuid: &str) -> ApiResult<Value> {
    let uuid = parse_job_uuid(uuid)?;
    if let Some(j) = st.store.cancel_queued_job(uuid).await? {
        return Ok(json!({"uuid": j.uuid, "state": j.state, "cancelled": true}));
    }
    let job = st
        .store
        .job(uuid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Job not found: {uuid}")))?;
    if job.state.is_terminal() {
        return Err(ApiError::status(
            StatusCode::CONFLICT,
            format!("job {uuid} is already {}: nothing to cancel", job.state),
        ));
    }
    // In flight: record the request on its run (any daemon's heartbeat acts on it), and
    // stop it at once when it runs here.
    if let Some(run) = job.current_run() {
        match st.store.request_cancel(run).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {} // claimed, run record not written yet
            Err(e) => return Err(e.into()),
        }
    }
    let here = st.farm.as_ref().is_some_and(|f| f.cancel_running(uuid));
    Ok(json!({
        "uuid": uuid,
        "state": job.state,
        "cancelled": false,
        "cancel_requested": true,
        "stopping_here": here,
    }))
}

/// Queues the run's job again: same task, item, type, arch and image, in the task's pool.
async fn rerun(
    State(st): State<WebState>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refuse(&st, &headers, &body) {
        return r;
    }
    match rerun_job(&st, &uuid, &st.base_url(&headers)).await {
        Ok(_) if from_form(&headers) => Redirect::to("/jobs").into_response(),
        Ok((_, v)) => (StatusCode::ACCEPTED, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn rerun_job(st: &WebState, uuid: &str, base: &str) -> ApiResult<(Uuid, Value)> {
    let Some(farm) = &st.farm else {
        return Err(ApiError::status(
            StatusCode::FORBIDDEN,
            "reruns are queued by the farm daemon: use `ferrotron serve`'s address \
             (`ferrotron web` only views the store)",
        ));
    };
    let run_uuid = super::runs_api::parse_run_uuid(uuid)?;
    let run = st
        .store
        .run(run_uuid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Run not found: {run_uuid}")))?;
    let job = match run
        .params
        .get("jobid")
        .and_then(Value::as_str)
        .and_then(|j| Uuid::parse_str(j).ok())
    {
        Some(j) => st.store.job(j).await?,
        None => None,
    };
    let Some(job) = job else {
        return Err(ApiError::status(
            StatusCode::CONFLICT,
            format!(
                "run {run_uuid} was not run by the farm's queue (no job): run it again with \
                 the command its page shows"
            ),
        ));
    };
    let settings = farm.task_settings(&job.task).ok_or_else(|| {
        ApiError::status(
            StatusCode::CONFLICT,
            format!(
                "task `{}` is not configured in this daemon: add it under `tasks:`",
                job.task
            ),
        )
    })?;
    let image = run
        .params
        .get("image")
        .and_then(Value::as_str)
        .filter(|i| !i.is_empty())
        .map(str::to_string)
        .or(job.image.clone());
    let new = NewJob {
        rule: format!("rerun of run {run_uuid}"),
        task: job.task.clone(),
        item: job.item.clone(),
        item_type: job.item_type.clone(),
        arch: job.arch.clone(),
        pool: settings.pool,
        priority: settings.priority,
        max_attempts: settings.max_attempts,
    };
    let id = st
        .store
        .enqueue_job("ferrotron.rerun", &new, image.as_deref())
        .await?;
    farm.wake();
    let queued = st
        .store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Job not found: {id}")))?;
    Ok((id, job_json(&queued, None, base)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(name: &str, in_flight: usize, breaker: &str) -> ProviderStatus {
        ProviderStatus {
            name: name.into(),
            pool: "default".into(),
            kind: "sim".into(),
            max_instances: 2,
            in_flight,
            breaker: breaker.into(),
            capacity: None,
            capacity_error: None,
        }
    }

    fn queued() -> Job {
        let now = OffsetDateTime::now_utc();
        Job {
            id: 1,
            uuid: Uuid::now_v7(),
            message_id: None,
            topic: "t".into(),
            rule: "r".into(),
            task: "t".into(),
            item: "i".into(),
            item_type: "koji_build".into(),
            arch: "x86_64".into(),
            pool: "default".into(),
            provider: None,
            priority: 0,
            state: RunState::Queued,
            attempts: 0,
            max_attempts: 3,
            claimed_by: None,
            lease_until: None,
            not_before: now,
            received_at: now,
            created_at: now,
            claimed_at: None,
            finished_at: None,
            error: None,
            outcome: None,
            lease_token: None,
            run_uuid: None,
            image: None,
        }
    }

    #[test]
    fn a_queued_job_says_why_it_waits() {
        let j = queued();
        let now = OffsetDateTime::now_utc();
        let why = |ps: &[ProviderStatus]| wait_reason(&j, Some(ps), now).unwrap().reason;
        assert_eq!(why(&[provider("a", 2, "closed")]), "capacity");
        assert_eq!(why(&[provider("a", 0, "open")]), "breaker");
        assert_eq!(
            why(&[provider("a", 2, "closed"), provider("b", 0, "open")]),
            "capacity"
        );
        assert_eq!(why(&[provider("a", 1, "closed")]), "dispatch");
        assert_eq!(why(&[]), "no_provider");
        assert_eq!(wait_reason(&j, None, now).unwrap().reason, "unknown");
        let mut later = queued();
        later.attempts = 1;
        later.not_before = now + time::Duration::minutes(5);
        later.error = Some("libvirt said no".into());
        let w = wait_reason(&later, Some(&[provider("a", 0, "closed")]), now).unwrap();
        assert_eq!(w.reason, "backoff");
        assert!(w.detail.contains("retry 2 of 3"), "{}", w.detail);
        assert!(w.detail.contains("libvirt said no"), "{}", w.detail);
        let mut running = queued();
        running.state = RunState::Running;
        assert!(wait_reason(&running, None, now).is_none());
    }

    #[test]
    fn job_filters_name_bad_values() {
        let p = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert_eq!(
            job_filter(&p("state", "queued,running")).unwrap().states,
            [RunState::Queued, RunState::Running]
        );
        for (k, v) in [("state", "asleep"), ("limit", "0"), ("colour", "red")] {
            let e = job_filter(&p(k, v)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(k), "{}", e.message);
        }
    }
}
