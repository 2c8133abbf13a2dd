//! Server-rendered HTML: plain strings with [`esc`] for every value that comes from outside,
//! one stylesheet and one small script (live log, filter form), no build step.

mod compare;
mod item;
mod jobs;
mod run;
mod runs;
pub mod svg;
mod task;

use std::fmt::Write as _;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use time::OffsetDateTime;

use super::WebState;
use crate::outcome::Outcome;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/", get(runs::page))
        .route("/runs", get(runs::page))
        .route("/runs/{uuid}", get(run::page))
        .route("/runs/{uuid}/log", get(run::log))
        .route("/runs/{uuid}/log/stream", get(run::log_stream))
        .route("/runs/{uuid}/artifacts", get(run::artifacts_index))
        .route("/runs/{uuid}/artifacts/", get(run::artifacts_index))
        .route("/runs/{uuid}/artifacts/{*path}", get(run::artifact))
        .route("/compare", get(compare::page))
        .route("/items/{item}", get(item::page))
        .route("/tasks/{task}", get(task::page))
        .route("/jobs", get(jobs::jobs))
        .route("/farm", get(jobs::farm))
        .route("/static/style.css", get(style))
        .route("/static/app.js", get(script))
}

/// HTML-escapes text for element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub use crate::web::params::seg;

/// A whole page around `body`.
pub fn layout(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} · ferrotron</title><link rel=\"stylesheet\" href=\"/static/style.css\">\
         <script src=\"/static/app.js\" defer></script></head><body>\
         <header><a class=\"brand\" href=\"/\">ferrotron</a><nav><a href=\"/\">runs</a>\
         <a href=\"/jobs\">jobs</a><a href=\"/farm\">farm</a>\
         <a href=\"/api/v2.0/\">ResultsDB API</a></nav></header><main>{body}</main></body></html>",
        t = esc(title)
    ))
}

/// An HTML error page.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<h1>{}</h1><p class=\"error\">{}</p>",
        status.as_u16(),
        esc(message)
    );
    (
        status,
        layout(status.canonical_reason().unwrap_or("error"), &body),
    )
        .into_response()
}

/// CSS class for an outcome: `o-passed`, `o-failed`, …
pub fn outcome_class(outcome: &str) -> String {
    match outcome.parse::<Outcome>() {
        Ok(o) => format!("o-{}", o.as_str().to_lowercase()),
        Err(_) => "o-unknown".into(),
    }
}

/// An outcome badge.
pub fn outcome_badge(outcome: &str) -> String {
    format!(
        "<span class=\"badge {}\">{}</span>",
        outcome_class(outcome),
        esc(outcome)
    )
}

/// `2025-01-12 11:20:35` (UTC), for people.
pub fn when(t: OffsetDateTime) -> String {
    crate::util::utc_seconds(t, ' ')
}

/// Previous/next links for a page of a list.
pub fn pager(path: &str, pairs: &super::params::Pairs, page: u64, has_next: bool) -> String {
    let (prev, next) = super::params::page_links(
        path,
        pairs,
        super::params::Paging { page, limit: 1 },
        has_next,
    );
    let mut out = String::from("<nav class=\"pager\">");
    if let Some(p) = prev {
        let _ = write!(out, "<a rel=\"prev\" href=\"{}\">← newer</a>", esc(&p));
    }
    let _ = write!(out, "<span>page {}</span>", page + 1);
    if let Some(n) = next {
        let _ = write!(out, "<a rel=\"next\" href=\"{}\">older →</a>", esc(&n));
    }
    out.push_str("</nav>");
    out
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLE,
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        SCRIPT,
    )
}

const STYLE: &str = r#"
table.compare tr.differs td { background: var(--warnbg); }
pre.diff .del { color: var(--fail); } pre.diff .ins { color: var(--pass); }
:root { --fg:#1d2330; --muted:#5b6475; --bg:#fff; --line:#e3e6ec; --accent:#2f5fd0;
  --pass:#1f7a3a; --passbg:#e3f4e8; --fail:#b3261e; --failbg:#fbe4e2; --info:#1c5f8a; --infobg:#e2eff8;
  --warn:#8a5a00; --warnbg:#fff2d6; font-family: system-ui, sans-serif; }
* { box-sizing: border-box; }
body { margin:0; color:var(--fg); background:var(--bg); line-height:1.4; }
header { display:flex; gap:1rem; align-items:center; padding:.6rem 1rem; border-bottom:1px solid var(--line); flex-wrap:wrap; }
header .brand { font-weight:700; color:var(--fg); text-decoration:none; }
header nav a { margin-right:.8rem; }
main { padding:1rem; max-width:1200px; margin:auto; }
a { color:var(--accent); }
h1 { font-size:1.4rem; margin:.2rem 0 1rem; word-break:break-all; }
h2 { font-size:1.1rem; margin:1.5rem 0 .5rem; }
table { border-collapse:collapse; width:100%; font-size:.92rem; }
th, td { text-align:left; padding:.35rem .5rem; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
.scroll { overflow-x:auto; }
.badge { display:inline-block; padding:.05rem .45rem; border-radius:.6rem; font-size:.8rem; font-weight:600; white-space:nowrap; }
.o-passed, .o-waived { color:var(--pass); background:var(--passbg); }
.o-failed, .o-error, .o-crashed, .o-aborted { color:var(--fail); background:var(--failbg); }
.o-info { color:var(--info); background:var(--infobg); }
.o-needs_inspection, .o-unknown { color:var(--warn); background:var(--warnbg); }
tr.o-passed, tr.o-failed, tr.o-error, tr.o-info, tr.o-needs_inspection, tr.o-crashed, tr.o-aborted, tr.o-waived, tr.o-unknown { background:none; }
tr.o-failed td:first-child, tr.o-error td:first-child, tr.o-crashed td:first-child { border-left:4px solid var(--fail); }
tr.o-passed td:first-child { border-left:4px solid var(--pass); }
.s-running, .s-provisioning, .s-collecting, .s-queued { color:var(--info); background:var(--infobg); }
.s-finished { color:var(--pass); background:var(--passbg); }
.s-failed, .s-crashed { color:var(--fail); background:var(--failbg); }
.s-cancelled { color:var(--muted); background:var(--line); }
.w-capacity, .w-dispatch, .w-unknown, .b-closed { color:var(--info); background:var(--infobg); }
.w-backoff, .b-half-open { color:var(--warn); background:var(--warnbg); }
.w-breaker, .w-no_provider, .b-open { color:var(--fail); background:var(--failbg); }
form.inline { display:inline; } form.inline button { font:inherit; }
form.filters { display:grid; grid-template-columns:repeat(auto-fill, minmax(9rem, 1fr)); gap:.5rem; margin-bottom:1rem; align-items:end; }
form.filters label { display:flex; flex-direction:column; font-size:.8rem; color:var(--muted); }
form.filters input, form.filters select, form.filters button { font:inherit; padding:.3rem; }
dl.kv { display:grid; grid-template-columns:max-content 1fr; gap:.2rem 1rem; }
dl.kv dt { color:var(--muted); } dl.kv dd { margin:0; word-break:break-all; }
pre { background:#f6f7f9; border:1px solid var(--line); padding:.6rem; overflow:auto; font-size:.82rem; }
pre.log { max-height:70vh; white-space:pre-wrap; word-break:break-all; }
code.cmd { display:block; background:#f6f7f9; padding:.5rem; overflow-x:auto; white-space:pre; }
.muted { color:var(--muted); } .error { color:var(--fail); }
.pager { display:flex; gap:1rem; margin:1rem 0; }
svg.chart { width:100%; height:auto; max-width:900px; }
svg.chart text { font-size:11px; fill:var(--muted); }
.flips span { display:inline-block; width:.7rem; height:.7rem; border-radius:50%; margin-right:2px; }
@media (max-width: 640px) {
  main { padding:.5rem; }
  table.runs th:nth-child(n+5), table.runs td:nth-child(n+5) { display:none; }
  table.runs td:last-child, table.runs th:last-child { display:table-cell; }
}
"#;

const SCRIPT: &str = r#"
// Live log: append lines from the server-sent events until the run ends.
document.addEventListener('DOMContentLoaded', () => {
  const log = document.querySelector('pre.log[data-stream]');
  if (log) {
    const status = document.getElementById('log-status');
    const es = new EventSource(log.dataset.stream);
    es.onmessage = (e) => {
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 20;
      log.appendChild(document.createTextNode(e.data + '\n'));
      if (atEnd) log.scrollTop = log.scrollHeight;
    };
    es.addEventListener('end', () => {
      es.close();
      if (status) status.textContent = 'run ended: reload for results';
      log.dataset.ended = '1';
    });
  }
  // Filters: a changed select submits the form at once.
  document.querySelectorAll('form.filters select').forEach((s) =>
    s.addEventListener('change', () => s.form.requestSubmit()));
});
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        assert_eq!(outcome_class("NEEDS_INSPECTION"), "o-needs_inspection");
        assert_eq!(outcome_class("<x>"), "o-unknown");
    }
}
