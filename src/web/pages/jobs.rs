//! The queue and the farm: `/jobs` (queued and in-flight jobs, why each waits, a cancel
//! button) and `/farm` (each provider's capacity, in-flight count, breaker and quota).
//! Both read what `GET /api/v1/jobs` reads; without a daemon in this process (`ferrotron
//! web`) they show the store's queue and say that the live state is the daemon's.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;

use super::{error_page, esc, layout, seg, when};
use crate::store::JobFilter;
use crate::web::WebState;
use crate::web::jobs_api::wait_reason;

pub async fn jobs(State(st): State<WebState>) -> Response {
    let f = JobFilter {
        limit: 500,
        ..JobFilter::default()
    };
    let jobs = match st.store.list_jobs(&f).await {
        Ok(j) => j,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let providers = match &st.farm {
        Some(f) => Some(f.providers().await),
        None => None,
    };
    let now = OffsetDateTime::now_utc();
    let mut b = String::with_capacity(16 * 1024);
    let _ = write!(
        b,
        "<h1>Jobs</h1><p class=\"muted\">{} queued or in flight (oldest first; at most 500 \
         shown) · <a href=\"/api/v1/jobs\">JSON</a> · <a href=\"/farm\">farm</a></p>",
        jobs.len()
    );
    if jobs.is_empty() {
        b.push_str("<p class=\"muted\" id=\"no-jobs\">The queue is empty.</p>");
        return layout("Jobs", &b).into_response();
    }
    b.push_str(
        "<div class=\"scroll\"><table class=\"jobs\"><thead><tr><th>state</th><th>task</th>\
         <th>item</th><th>arch</th><th>pool</th><th class=\"num\">attempts</th>\
         <th>waiting for</th><th>received</th><th></th></tr></thead><tbody>",
    );
    for j in &jobs {
        let wait = wait_reason(j, providers.as_deref(), now);
        let waiting = match (&wait, j.current_run()) {
            (Some(w), _) => format!(
                "<span class=\"badge w-{r}\">{r}</span> <span class=\"muted\">{d}</span>",
                r = w.reason,
                d = esc(&w.detail)
            ),
            (None, Some(run)) => format!(
                "<a href=\"/runs/{run}\">run</a> on {} ({})",
                esc(j.provider.as_deref().unwrap_or("?")),
                esc(j.claimed_by.as_deref().unwrap_or("?"))
            ),
            (None, None) => String::new(),
        };
        let cancel = if st.tokens.is_empty() {
            String::new()
        } else {
            format!(
                "<form method=\"post\" action=\"/api/v1/jobs/{}/cancel\">\
                 <button type=\"submit\">cancel</button></form>",
                j.uuid
            )
        };
        let _ = write!(
            b,
            "<tr id=\"job-{u}\"><td><span class=\"badge s-{s}\">{s}</span></td><td>\
             <a href=\"/tasks/{ts}\">{t}</a></td><td><a href=\"/items/{is}\">{i}</a></td>\
             <td>{a}</td><td>{p}</td><td class=\"num\">{n} / {m}</td><td>{waiting}</td>\
             <td>{r}</td><td>{cancel}</td></tr>",
            u = j.uuid,
            s = j.state.as_str(),
            ts = seg(&j.task),
            t = esc(&j.task),
            is = seg(&j.item),
            i = esc(&j.item),
            a = esc(&j.arch),
            p = esc(&j.pool),
            n = j.attempts,
            m = j.max_attempts,
            r = when(j.received_at),
        );
    }
    b.push_str("</tbody></table></div>");
    layout("Jobs", &b).into_response()
}

pub async fn farm(State(st): State<WebState>) -> Response {
    let Some(f) = &st.farm else {
        let b = "<h1>Farm</h1><p class=\"muted\">No farm daemon runs in this process: \
                 providers, capacity and breakers are shown by <code>ferrotron serve</code> \
                 at its own address. <a href=\"/jobs\">The queue</a> is in the store.</p>";
        return layout("Farm", b).into_response();
    };
    let providers = f.providers().await;
    let mut b = String::with_capacity(8 * 1024);
    let _ = write!(
        b,
        "<h1>Farm</h1><p class=\"muted\">daemon {} · providers in the order pools fill them · \
         <a href=\"/jobs\">jobs</a></p>",
        esc(&f.daemon_id())
    );
    b.push_str(
        "<div class=\"scroll\"><table class=\"farm\"><thead><tr><th>provider</th><th>kind</th>\
         <th>pool</th><th class=\"num\">in flight</th><th class=\"num\">max</th>\
         <th>breaker</th><th>backend (in use / quota)</th></tr></thead><tbody>",
    );
    for p in &providers {
        let backend = match (&p.capacity, &p.capacity_error) {
            (Some(c), _) => format!("{} / {}", c.in_use, c.max_instances),
            (None, Some(e)) => format!("<span class=\"error\">{}</span>", esc(e)),
            (None, None) => String::new(),
        };
        let _ = write!(
            b,
            "<tr id=\"provider-{id}\"><td>{n}</td><td>{k}</td><td>{pool}</td>\
             <td class=\"num\">{f}</td><td class=\"num\">{m}</td>\
             <td><span class=\"badge b-{br}\">{br}</span></td><td>{backend}</td></tr>",
            id = seg(&p.name),
            n = esc(&p.name),
            k = esc(&p.kind),
            pool = esc(&p.pool),
            f = p.in_flight,
            m = p.max_instances,
            br = esc(&p.breaker),
        );
    }
    b.push_str("</tbody></table></div>");
    layout("Farm", &b).into_response()
}
