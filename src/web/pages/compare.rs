//! Two runs side by side (`/compare?a=UUID&b=UUID`): results by testcase, phase timings,
//! artifacts present in one only, and the lines of their logs that differ once run ids,
//! times and durations are normalised. Without `b`, the other run is the newest passing run
//! of the same task on the same item ("compare with the last good one").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::{error_page, esc, layout, outcome_badge, when};
use crate::compare::{self, LOG_LINES, Line, context, diff_lines};
use crate::outcome::Outcome;
use crate::store::{RunFilter, RunRecord, RunState, StoredResult};
use crate::web::WebState;
use crate::web::files;
use crate::web::params::{self, Pairs, seg};

/// Lines of diff shown.
const DIFF_SHOWN: usize = 400;

pub async fn page(State(st): State<WebState>, q: Result<Query<Pairs>, QueryRejection>) -> Response {
    let pairs = match params::pairs(q) {
        Ok(p) => p,
        Err(e) => return error_page(e.status, &e.message),
    };
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let a = match get("a").map(Uuid::parse_str) {
        Some(Ok(u)) => u,
        Some(Err(_)) | None => {
            return error_page(
                StatusCode::BAD_REQUEST,
                &format!("a: `{}` is not a run uuid", get("a").unwrap_or("")),
            );
        }
    };
    let Some(ra) = load(&st, a).await else {
        return error_page(StatusCode::NOT_FOUND, &format!("no run {a}"));
    };
    let b = match get("b") {
        Some(s) => match Uuid::parse_str(s) {
            Ok(u) => u,
            Err(_) => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    &format!("b: `{s}` is not a run uuid"),
                );
            }
        },
        None => match last_passing(&st, &ra.0).await {
            Some(u) => u,
            None => {
                return error_page(
                    StatusCode::NOT_FOUND,
                    &format!(
                        "no passing run of {} on {} to compare run {a} with",
                        ra.0.task, ra.0.item
                    ),
                );
            }
        },
    };
    let Some(rb) = load(&st, b).await else {
        return error_page(StatusCode::NOT_FOUND, &format!("no run {b}"));
    };
    let body = render(&st, &ra, &rb).await;
    layout(&format!("compare {} on {}", ra.0.task, ra.0.item), &body).into_response()
}

type Loaded = (RunRecord, Vec<StoredResult>);

async fn load(st: &WebState, uuid: Uuid) -> Option<Loaded> {
    let run = st.store.run(uuid).await.ok()??;
    let results = st.store.run_results(uuid).await.unwrap_or_default();
    Some((run, results))
}

/// The newest finished run of the same task and item, other than `run`, whose results
/// include nothing failing.
async fn last_passing(st: &WebState, run: &RunRecord) -> Option<Uuid> {
    let f = RunFilter {
        task: vec![run.task.clone()],
        item: vec![run.item.clone()],
        state: vec![RunState::Finished],
        ..RunFilter::default()
    };
    let page = st.store.run_page(&f, 100, 0).await.ok()?;
    page.into_iter()
        .filter(|s| s.run.uuid != run.uuid)
        .find(|s| {
            !s.outcomes.is_empty()
                && s.outcomes.keys().all(|o| {
                    o.parse::<Outcome>()
                        .map(|o| !o.is_failure())
                        .unwrap_or(false)
                })
        })
        .map(|s| s.run.uuid)
}

async fn render(st: &WebState, a: &Loaded, b: &Loaded) -> String {
    let (ra, rb) = (&a.0, &b.0);
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<h1>{} on {}</h1><table class=\"compare\" id=\"runs\"><tr><th></th>\
         <th>A</th><th>B</th></tr>",
        esc(&ra.task),
        esc(&ra.item)
    );
    let row = |h: &mut String, k: &str, x: String, y: String| {
        let cls = if x == y { "" } else { " class=\"differs\"" };
        let _ = write!(
            h,
            "<tr{cls}><th>{}</th><td>{x}</td><td>{y}</td></tr>",
            esc(k)
        );
    };
    let link = |r: &RunRecord| format!("<a href=\"/runs/{0}\">{0}</a>", r.uuid);
    let _ = write!(
        h,
        "<tr><th>run</th><td>{}</td><td>{}</td></tr>",
        link(ra),
        link(rb)
    );
    for (k, f) in [
        (
            "task",
            (|r: &RunRecord| r.task.clone()) as fn(&RunRecord) -> String,
        ),
        ("item", |r| r.item.clone()),
        ("arch", |r| r.arch.clone()),
        ("backend", |r| r.backend.clone()),
        ("state", |r| r.state.as_str().to_string()),
        ("image", |r| {
            r.params
                .get("image")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        }),
    ] {
        row(&mut h, k, esc(&f(ra)), esc(&f(rb)));
    }
    row(&mut h, "created", when(ra.created_at), when(rb.created_at));
    h.push_str("</table>");

    // Results by testcase.
    let by_case = |rs: &[StoredResult]| -> compare::Outcomes {
        rs.iter()
            .map(|r| {
                (
                    compare::result_key(&r.testcase, &r.data),
                    (r.outcome.clone(), r.note.clone().unwrap_or_default()),
                )
            })
            .collect()
    };
    let (ca, cb) = (by_case(&a.1), by_case(&b.1));
    let cases: BTreeSet<&String> = ca.keys().chain(cb.keys()).collect();
    let differing = compare::differing_cases(&ca, &cb);
    for c in &cases {
        let cell = |m: &BTreeMap<String, (String, String)>| match m.get(*c) {
            Some((o, note)) if note.is_empty() => outcome_badge(o),
            Some((o, note)) => format!("{} {}", outcome_badge(o), esc(note)),
            None => "<span class=\"muted\">absent</span>".into(),
        };
        let same = !differing.contains(*c);
        let _ = write!(
            h,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td></tr>",
            if same { "" } else { " class=\"differs\"" },
            esc(c),
            cell(&ca),
            cell(&cb)
        );
    }
    let _ = write!(
        h,
        "</table><p id=\"results-summary\">{} of {} testcases differ in outcome</p>",
        differing.len(),
        cases.len()
    );

    // Phase timings.
    h.push_str(
        "<h2>Phases</h2><table class=\"compare\" id=\"phases\"><tr><th>phase</th><th>A</th>\
         <th>B</th></tr>",
    );
    let phases = |r: &RunRecord| -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for p in &r.phases {
            *m.entry(p.name.clone()).or_insert(0.0) += p.duration.as_secs_f64();
        }
        m
    };
    let (pa, pb) = (phases(ra), phases(rb));
    let names: BTreeSet<&String> = pa.keys().chain(pb.keys()).collect();
    for n in names {
        let t = |m: &BTreeMap<String, f64>| m.get(n).map_or("–".into(), |s| format!("{s:.2} s"));
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(n),
            t(&pa),
            t(&pb)
        );
    }
    h.push_str("</table>");

    // Artifacts present in one only.
    let list = |u: Uuid| {
        let root = files::artifacts_root(st, u);
        async move {
            tokio::task::spawn_blocking(move || files::list_artifacts(&root))
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|f| f.path)
                .collect::<BTreeSet<String>>()
        }
    };
    let (fa, fb) = (list(ra.uuid).await, list(rb.uuid).await);
    h.push_str("<h2>Artifacts in one run only</h2><ul id=\"artifacts\">");
    let mut any = false;
    for (side, only, u) in [
        ("A", fa.difference(&fb), ra.uuid),
        ("B", fb.difference(&fa), rb.uuid),
    ] {
        for p in only {
            any = true;
            let _ = write!(
                h,
                "<li>{side}: <a href=\"/runs/{u}/artifacts/{}\">{}</a></li>",
                p.split('/').map(seg).collect::<Vec<_>>().join("/"),
                esc(p)
            );
        }
    }
    if !any {
        h.push_str("<li class=\"muted\">none: both runs have the same files</li>");
    }
    h.push_str("</ul>");

    // The logs.
    let (la, lb) = (read_log(st, ra.uuid).await, read_log(st, rb.uuid).await);
    let diff = diff_lines(&la, &lb);
    let changed = diff.iter().filter(|d| !matches!(d, Line::Same(_))).count();
    let _ = write!(
        h,
        "<h2>Log differences</h2><p id=\"log-summary\">{changed} lines differ (run ids, times \
         and durations normalised; the first {LOG_LINES} lines of each log)</p>\
         <pre class=\"diff\" id=\"log-diff\">"
    );
    for l in context(&diff, 2).into_iter().take(DIFF_SHOWN) {
        match l {
            Some(Line::Same(s)) => {
                let _ = writeln!(h, "  {}", esc(s));
            }
            Some(Line::OnlyA(s)) => {
                let _ = writeln!(h, "<span class=\"del\">- {}</span>", esc(s));
            }
            Some(Line::OnlyB(s)) => {
                let _ = writeln!(h, "<span class=\"ins\">+ {}</span>", esc(s));
            }
            None => h.push_str("<span class=\"muted\">…</span>\n"),
        }
    }
    h.push_str("</pre>");
    h
}

async fn read_log(st: &WebState, uuid: Uuid) -> Vec<String> {
    let path = files::log_path(st, uuid);
    tokio::task::spawn_blocking(move || compare::read_log(&path))
        .await
        .unwrap_or_default()
}
