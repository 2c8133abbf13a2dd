//! The daemon's own HTTP endpoints: `/healthz`, `/metrics` (Prometheus text) and
//! `POST /api/v1/messages` (the webhook: `{topic, body, headers?, id?}`, with the token in
//! any form `web::auth` accepts).
//!
//! [`router`] returns an `axum::Router` that `serve` merges with the web layer's (review UI,
//! ResultsDB API, runs and jobs APIs), so each part keeps its handlers in its own module.
//! Errors have the one shape of every API here: `{"message": …}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::Daemon;
use crate::bus::{HandleError, Message, Rejected};
use crate::web::error::ApiError;

pub fn router(daemon: Arc<Daemon>) -> Router {
    // Bodies up to twice the limit are read so that an oversized one is logged and counted
    // like an AMQP one; beyond that axum answers 413 without reading further.
    let limit = daemon.max_body.saturating_mul(2).max(4096);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/messages",
            post(submit).layer(DefaultBodyLimit::max(limit)),
        )
        .with_state(daemon)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::status(status, message).into_response()
}

async fn healthz(State(d): State<Arc<Daemon>>) -> Response {
    match sqlx::query("SELECT 1").execute(d.store.pool()).await {
        Ok(_) => axum::Json(json!({
            "status": "ok",
            "daemon": d.scheduler.daemon_id(),
            "running": d.scheduler.in_flight(),
        }))
        .into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store does not answer: {e}"),
        ),
    }
}

async fn metrics(State(d): State<Arc<Daemon>>) -> Response {
    let queue = match d.store.job_counts().await {
        Ok(c) => c
            .into_iter()
            .map(|(s, n)| (s.as_str().to_string(), n))
            .collect(),
        Err(e) => {
            tracing::warn!("metrics: counting jobs: {e}");
            Vec::new()
        }
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        d.metrics.render(&queue),
    )
        .into_response()
}

async fn submit(State(d): State<Arc<Daemon>>, headers: HeaderMap, body: Bytes) -> Response {
    if d.api_token.is_none() {
        return error(
            StatusCode::FORBIDDEN,
            "message submission is disabled: set daemon.api_token in the configuration",
        );
    }
    // The same token scheme as every other write of this server (bearer, HTTP Basic; the
    // envelope is not a ResultsDB body, so no `_auth_token`).
    let tokens: Vec<String> = d.api_token.iter().cloned().collect();
    if let Err(e) = crate::web::auth::check_token(&tokens, &headers, None) {
        return e.into_response();
    }
    let msg = match Message::from_envelope_bytes(&body, d.max_body) {
        Ok(m) => m,
        Err(why) => {
            use crate::bus::MessageHandler;
            d.intake.rejected("POST /api/v1/messages", &why);
            let status = match why {
                Rejected::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            return error(status, why.to_string());
        }
    };
    use crate::bus::MessageHandler;
    match d.intake.handle(&msg).await {
        Ok(h) => {
            let status = if h.duplicate {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            (
                status,
                axum::Json(json!({"id": msg.id, "duplicate": h.duplicate, "jobs": h.jobs})),
            )
                .into_response()
        }
        Err(HandleError::Retry(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not stored, try again: {e}"),
        ),
        Err(HandleError::Refused(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}
