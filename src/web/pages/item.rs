//! One item across tasks: its runs and the results about it (history), newest first.

use std::fmt::Write as _;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};

use super::{error_page, esc, layout, outcome_badge, outcome_class, pager, seg, when};
use crate::store::{DataMatch, ResultFilter, RunFilter};
use crate::web::WebState;
use crate::web::params::{self, Pairs};

const PAGE_SIZE: u32 = 50;

pub async fn page(
    State(st): State<WebState>,
    Path(item): Path<String>,
    q: Result<Query<Pairs>, QueryRejection>,
) -> Response {
    let pairs = match params::pairs(q) {
        Ok(p) => p,
        Err(e) => return error_page(e.status, &e.message),
    };
    let p = match params::paging(&pairs, PAGE_SIZE) {
        Ok(p) => p,
        Err(e) => return error_page(e.status, &e.message),
    };
    let by_item = ResultFilter {
        data: vec![("item".into(), DataMatch::Exact(vec![item.clone()]))],
        ..ResultFilter::default()
    };
    let latest = st
        .store
        .latest_results(&by_item, &[], params::MAX_LIMIT)
        .await
        .map(|mut l| {
            l.truncate(params::MAX_LIMIT as usize);
            l
        });
    let results = st.store.result_page(&by_item, p.limit, p.offset()).await;
    let runs = st
        .store
        .run_page(
            &RunFilter {
                item: vec![item.clone()],
                ..RunFilter::default()
            },
            20,
            0,
        )
        .await;
    let (latest, mut results, mut runs) = match (latest, results, runs) {
        (Ok(l), Ok(r), Ok(u)) => (l, r, u),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return error_page(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                &e.to_string(),
            );
        }
    };
    let has_next = results.len() > p.limit as usize;
    results.truncate(p.limit as usize);
    runs.truncate(20);

    let mut b = format!("<h1>Item {}</h1>", esc(&item));
    b.push_str("<h2>Latest per check</h2>");
    if latest.is_empty() {
        b.push_str("<p class=\"muted\">No results for this item.</p>");
    } else {
        b.push_str("<p>");
        for r in &latest {
            let _ = write!(
                b,
                "<span class=\"badge {}\" title=\"{}\">{}: {}</span> ",
                outcome_class(&r.outcome),
                esc(&super::when(r.submit_time)),
                esc(&r.testcase),
                esc(&r.outcome)
            );
        }
        b.push_str("</p>");
    }
    b.push_str("<h2>Runs</h2>");
    if runs.is_empty() {
        b.push_str("<p class=\"muted\">No runs.</p>");
    } else {
        b.push_str("<ul class=\"runs\">");
        for s in &runs {
            let r = &s.run;
            let _ = write!(
                b,
                "<li><a href=\"/runs/{u}\">{c}</a> <a href=\"/tasks/{ts}\">{t}</a> \
                 <span class=\"badge s-{st}\">{st}</span></li>",
                u = r.uuid,
                c = when(r.created_at),
                ts = seg(&r.task),
                t = esc(&r.task),
                st = r.state.as_str()
            );
        }
        b.push_str("</ul>");
    }
    b.push_str(
        "<h2>History</h2><div class=\"scroll\"><table class=\"results\"><thead><tr><th>submitted (UTC)</th>\
         <th>outcome</th><th>check</th><th>type</th><th>arch</th><th>run</th></tr></thead><tbody>",
    );
    for r in &results {
        let field = |k: &str| esc(&r.data.get(k).map(|v| v.join(",")).unwrap_or_default());
        let run = r
            .groups
            .first()
            // A group POSTed by a client may be any string: only a uuid can name a run.
            .and_then(|g| uuid::Uuid::parse_str(g).ok())
            .map(|g| format!("<a href=\"/runs/{g}\">{}</a>", &g.to_string()[..8]))
            .unwrap_or_default();
        let _ = write!(
            b,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{run}</td></tr>",
            outcome_class(&r.outcome),
            when(r.submit_time),
            outcome_badge(&r.outcome),
            esc(&r.testcase),
            field("type"),
            field("arch"),
        );
    }
    b.push_str("</tbody></table></div>");
    b.push_str(&pager(
        &format!("/items/{}", seg(&item)),
        &pairs,
        p.page,
        has_next,
    ));
    layout(&format!("Item {item}"), &b).into_response()
}
