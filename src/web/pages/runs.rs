//! The runs list: filters (task, item, type, arch, outcome, state, date range, search),
//! newest first, paginated.

use std::fmt::Write as _;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};

use super::{esc, layout, outcome_class, pager, seg, when};
use crate::outcome::Outcome;
use crate::store::{RunState, RunSummary};
use crate::web::WebState;
use crate::web::params::{self, Pairs};
use crate::web::runs_api::run_filter;

const PAGE_SIZE: u32 = 50;

pub async fn page(State(st): State<WebState>, q: Result<Query<Pairs>, QueryRejection>) -> Response {
    match render(&st, q).await {
        Ok(html) => html.into_response(),
        Err(e) => super::error_page(e.status, &e.message),
    }
}

async fn render(
    st: &WebState,
    q: Result<Query<Pairs>, QueryRejection>,
) -> crate::web::error::ApiResult<axum::response::Html<String>> {
    let pairs: Pairs = params::pairs(q)?
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let p = params::paging(&pairs, PAGE_SIZE)?;
    let f = run_filter(&pairs)?;
    let mut runs = st.store.run_page(&f, p.limit, p.offset()).await?;
    let has_next = runs.len() > p.limit as usize;
    runs.truncate(p.limit as usize);

    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map_or("", |(_, v)| v.as_str())
    };
    let mut body = String::with_capacity(16 * 1024);
    body.push_str("<h1>Runs</h1><form class=\"filters\" method=\"get\" action=\"/\">");
    for (name, label) in [
        ("task", "task"),
        ("item", "item"),
        ("type", "type"),
        ("arch", "arch"),
    ] {
        let _ = write!(
            body,
            "<label>{label}<input name=\"{name}\" value=\"{}\"></label>",
            esc(get(name))
        );
    }
    let select = |body: &mut String, name: &str, options: &[&str]| {
        let _ = write!(
            body,
            "<label>{name}<select name=\"{name}\"><option value=\"\">any</option>"
        );
        for o in options {
            let sel = if get(name) == *o { " selected" } else { "" };
            let _ = write!(body, "<option{sel}>{}</option>", esc(o));
        }
        body.push_str("</select></label>");
    };
    select(&mut body, "outcome", &Outcome::ALL.map(|o| o.as_str()));
    select(&mut body, "state", &RunState::ALL.map(|s| s.as_str()));
    let _ = write!(
        body,
        "<label>from<input type=\"date\" name=\"from\" value=\"{}\"></label>\
         <label>to<input type=\"date\" name=\"to\" value=\"{}\"></label>\
         <label>search<input type=\"search\" name=\"q\" value=\"{}\" placeholder=\"task, item or uuid\"></label>\
         <button type=\"submit\">Filter</button></form>",
        esc(get("from")),
        esc(get("to")),
        esc(get("q"))
    );
    if runs.is_empty() {
        body.push_str("<p class=\"muted\" id=\"no-runs\">No runs match.</p>");
    } else {
        body.push_str(
            "<div class=\"scroll\"><table class=\"runs\"><thead><tr><th>created (UTC)</th><th>task</th>\
             <th>item</th><th>state</th><th>type</th><th>arch</th><th>duration</th><th>results</th>\
             </tr></thead><tbody>",
        );
        for r in &runs {
            row(&mut body, r);
        }
        body.push_str("</tbody></table></div>");
    }
    body.push_str(&pager("/", &pairs, p.page, has_next));
    Ok(layout("Runs", &body))
}

fn row(body: &mut String, s: &RunSummary) {
    let r = &s.run;
    let duration = match (r.started_at, r.finished_at) {
        (Some(a), Some(b)) => crate::util::human_duration((b - a).unsigned_abs()),
        (Some(_), None) => "running".into(),
        _ => String::new(),
    };
    let _ = write!(
        body,
        "<tr class=\"run\" data-uuid=\"{u}\"><td><a href=\"/runs/{u}\">{created}</a></td>\
         <td><a href=\"/tasks/{ts}\">{t}</a></td><td><a href=\"/items/{is}\">{i}</a></td>\
         <td><span class=\"badge s-{st}\">{st}</span></td><td>{ty}</td><td>{a}</td><td>{duration}</td><td>",
        u = r.uuid,
        created = when(r.created_at),
        ts = seg(&r.task),
        t = esc(&r.task),
        is = seg(&r.item),
        i = esc(&r.item),
        st = r.state.as_str(),
        ty = esc(&r.item_type),
        a = esc(&r.arch),
    );
    for (outcome, n) in &s.outcomes {
        let _ = write!(
            body,
            "<span class=\"badge {}\">{} {n}</span> ",
            outcome_class(outcome),
            esc(outcome)
        );
    }
    body.push_str("</td></tr>");
}
