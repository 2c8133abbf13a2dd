//! HTTP for reviewing results: the ResultsDB v2.0 API, the runs API, and the HTML pages.
//!
//! [`router`] gives one `axum::Router` that `ferrotron web` serves alone and `ferrotron serve`
//! merges into its own. Handlers stay a screen long: parsing in [`params`], queries in the
//! store, markup in [`pages`]. Files (logs, artifacts) are only ever read below
//! `<data-dir>/artifacts/<uuid>/` ([`files`]).

pub mod auth;
pub mod error;
pub mod farm;
pub mod files;
pub mod holds_api;
pub mod jobs_api;
pub mod pages;
pub mod params;
pub mod pyrepr;
pub mod resultsdb;
pub mod runs_api;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;

use crate::store::Store;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct WebState {
    pub store: Store,
    /// Runs' logs and artifacts live in `<data_dir>/artifacts/<uuid>/`.
    pub data_dir: PathBuf,
    /// Tokens accepted on POSTs. Empty: the server is read-only and refuses every write.
    pub tokens: Arc<[String]>,
    /// The farm daemon of this process (`ferrotron serve`); `None` in `ferrotron web`.
    pub farm: Option<Arc<dyn farm::FarmControl>>,
    pub limits: Limits,
    /// One permit per open live-log stream ([`Limits::live_logs`] in all).
    pub live_logs: Arc<tokio::sync::Semaphore>,
    /// Where this server is reached from outside (`--public-url`, `daemon.public_url`): the
    /// base of every absolute URL it answers with. Unset: the request's `Host`.
    pub public_url: Option<String>,
    /// Whether `X-Forwarded-Host`/`-Proto` are believed when there is no public URL: only
    /// behind a proxy that sets them, as anyone else can.
    pub trust_forwarded: bool,
}

/// Bounds on what one request may cost the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most rows in one `/results/latest` answer.
    pub latest_max: u32,
    /// Most live-log (server-sent events) streams open at once; more get a 503.
    pub live_logs: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            latest_max: resultsdb::LATEST_MAX,
            live_logs: files::MAX_LIVE_LOGS,
        }
    }
}

impl WebState {
    pub fn new(store: Store, data_dir: PathBuf, tokens: Vec<String>) -> WebState {
        WebState {
            store,
            data_dir,
            tokens: tokens.into(),
            farm: None,
            limits: Limits::default(),
            live_logs: Arc::new(tokio::sync::Semaphore::new(files::MAX_LIVE_LOGS)),
            public_url: None,
            trust_forwarded: false,
        }
    }

    /// The base of absolute URLs: the public URL, or where the request was sent.
    pub fn with_public_url(mut self, public_url: Option<String>, trust_forwarded: bool) -> Self {
        self.public_url = public_url.map(|u| u.trim_end_matches('/').to_string());
        self.trust_forwarded = trust_forwarded;
        self
    }

    /// `scheme://host` for the absolute URLs ResultsDB clients expect: the public URL when
    /// one is set, else the request's (`X-Forwarded-*` only when trusted).
    pub fn base_url(&self, headers: &HeaderMap) -> String {
        match &self.public_url {
            Some(u) => u.clone(),
            None => request_base_url(headers, self.trust_forwarded),
        }
    }

    /// The same, with the controls of the farm daemon that runs in this process.
    pub fn with_farm(mut self, farm: Arc<dyn farm::FarmControl>) -> WebState {
        self.farm = Some(farm);
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> WebState {
        self.limits = limits;
        self.live_logs = Arc::new(tokio::sync::Semaphore::new(limits.live_logs));
        self
    }
}

/// Every route of the review UI and APIs. Any other path answers ResultsDB's JSON 404
/// (`{"message": "Not found"}`): clients of the API parse every error body as JSON.
pub fn router(state: WebState) -> Router {
    Router::new()
        .merge(resultsdb::routes())
        .merge(runs_api::routes())
        .merge(jobs_api::routes())
        .merge(holds_api::routes())
        .merge(pages::routes())
        .fallback(error::not_found_fallback)
        .with_state(state)
}

/// `app` with one info line per request on the `ferrotron::access` target: method, path
/// (without the query, which may carry tokens), status, duration. `serve` logs them by
/// default; `ferrotron web` with `FERROTRON_LOG=ferrotron::access=info`.
pub fn with_access_log(app: Router) -> Router {
    app.layer(axum::middleware::from_fn(access_log))
}

async fn access_log(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(
        target: "ferrotron::access",
        %method,
        path = %path.escape_debug(),
        status,
        ms,
        "{method} {} {status} {ms:.1}ms",
        path.escape_debug()
    );
    resp
}

/// `scheme://host` the request was sent to. A client can send any `X-Forwarded-*`, so they
/// count only when `trust_forwarded` (a proxy in front that sets them).
fn request_base_url(headers: &HeaderMap, trust_forwarded: bool) -> String {
    let forwarded = |name: &str| {
        headers
            .get(name)
            .filter(|_| trust_forwarded)
            .and_then(|h| h.to_str().ok())
    };
    let host = forwarded("x-forwarded-host")
        .or_else(|| {
            headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b'/'))
        .unwrap_or("localhost");
    let scheme = match forwarded("x-forwarded-proto") {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}
