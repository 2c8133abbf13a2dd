//! Holds over HTTP (Zuul's autohold): `POST /api/v1/holds` keeps the instance of the next
//! failing run of a task for a while, so someone can log in and look;
//! `GET /api/v1/holds` lists them with their state and login;
//! `POST /api/v1/holds/ID/release` (also a button on the run page) gives the instance back
//! to the reaper. Writes need the
//! token, and only the farm daemon takes holds (`ferrotron web` has no scheduler).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::WebState;
use super::error::{ApiError, ApiResult};
use super::jobs_api::{from_form, refuse};
use crate::store::{Hold, NewHold, hold_duration};

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/api/v1/holds", get(list).post(create))
        .route("/api/v1/holds/{id}/release", post(release))
}

fn view(h: &Hold, now: OffsetDateTime) -> Value {
    let mut v = serde_json::to_value(h).unwrap_or_default();
    v["status"] = json!(h.status(now));
    v
}

async fn list(State(st): State<WebState>) -> ApiResult<Json<Value>> {
    let now = OffsetDateTime::now_utc();
    let holds = st.store.holds(false).await?;
    Ok(Json(json!({
        "data": holds.iter().map(|h| view(h, now)).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldRequest {
    task: String,
    /// How long the instance is kept once a failing run took the hold.
    hours: f64,
    #[serde(default)]
    reason: String,
    /// The token may come in the body (as ResultsDB's `_auth_token`).
    #[serde(default, rename = "_auth_token")]
    _auth_token: Option<String>,
}

async fn create(
    State(st): State<WebState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refuse(&st, &headers, &body) {
        return r;
    }
    match create_hold(&st, &body).await {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn create_hold(st: &WebState, body: &[u8]) -> ApiResult<Value> {
    let Some(farm) = &st.farm else {
        return Err(ApiError::status(
            StatusCode::FORBIDDEN,
            "holds are kept by the farm daemon: use `ferrotron serve`'s address \
             (`ferrotron web` only views the store)",
        ));
    };
    let req: HoldRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("hold request: {e}")))?;
    if farm.task_settings(&req.task).is_none() {
        return Err(ApiError::invalid(
            "task",
            format!(
                "task `{}` is not configured in this daemon: a hold names one of its `tasks:`",
                req.task
            ),
        ));
    }
    let hold = hold_duration(req.hours).map_err(|m| ApiError::invalid("hours", m))?;
    if req.reason.len() > 1000 {
        return Err(ApiError::invalid("reason", "reason: at most 1000 bytes"));
    }
    let h = st
        .store
        .create_hold(&NewHold {
            task: req.task,
            hold,
            reason: req.reason,
        })
        .await?;
    Ok(view(&h, OffsetDateTime::now_utc()))
}

async fn release(
    State(st): State<WebState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refuse(&st, &headers, &body) {
        return r;
    }
    let res: ApiResult<Value> = async {
        let id: i64 = id
            .parse()
            .map_err(|_| ApiError::not_found(format!("Hold not found: {id}")))?;
        let h = st
            .store
            .release_hold(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("Hold not found: {id}")))?;
        Ok(view(&h, OffsetDateTime::now_utc()))
    }
    .await;
    match res {
        Ok(v) if from_form(&headers) => match v["run_uuid"].as_str() {
            Some(run) => Redirect::to(&format!("/runs/{run}")).into_response(),
            None => Redirect::to("/jobs").into_response(),
        },
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
