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
pub mod jobs_api;
pub mod pages;
pub mod params;
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
}

impl WebState {
    pub fn new(store: Store, data_dir: PathBuf, tokens: Vec<String>) -> WebState {
        WebState {
            store,
            data_dir,
            tokens: tokens.into(),
            farm: None,
        }
    }

    /// The same, with the controls of the farm daemon that runs in this process.
    pub fn with_farm(mut self, farm: Arc<dyn farm::FarmControl>) -> WebState {
        self.farm = Some(farm);
        self
    }
}

/// Every route of the review UI and APIs.
pub fn router(state: WebState) -> Router {
    Router::new()
        .merge(resultsdb::routes())
        .merge(runs_api::routes())
        .merge(jobs_api::routes())
        .merge(pages::routes())
        .with_state(state)
}

/// `scheme://host` of the request, for the absolute URLs ResultsDB clients expect.
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(axum::http::header::HOST))
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}
