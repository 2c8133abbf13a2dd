//! One task: pass rate over time, duration percentiles per phase (server-drawn SVG), and
//! flaky checks (the outcome of a check flipped for the same item).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{error_page, esc, layout, outcome_class, seg, svg, when};
use crate::outcome::Outcome;
use crate::web::WebState;

/// Runs looked at (the newest ones).
const WINDOW: u32 = 500;

/// The `q`-quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Checks whose outcome changed between consecutive results for the same item: (check,
/// item, number of flips, the outcomes in order). Most flips first.
pub fn flaky(rows: &[(String, String, String)]) -> Vec<(String, String, usize, Vec<String>)> {
    let mut seqs: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for (check, item, outcome) in rows {
        seqs.entry((check, item)).or_default().push(outcome);
    }
    let mut out: Vec<_> = seqs
        .into_iter()
        .filter_map(|((c, i), seq)| {
            let flips = seq.windows(2).filter(|w| w[0] != w[1]).count();
            (flips > 0).then(|| {
                (
                    c.to_string(),
                    i.to_string(),
                    flips,
                    seq.iter().map(|s| s.to_string()).collect(),
                )
            })
        })
        .collect();
    out.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    out
}

pub async fn page(State(st): State<WebState>, Path(task): Path<String>) -> Response {
    let (runs, phases) = match st.store.task_history(&task, WINDOW).await {
        Ok(x) => x,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    if runs.is_empty() {
        return error_page(StatusCode::NOT_FOUND, &format!("no runs of task `{task}`"));
    }
    let outcomes = st
        .store
        .task_outcomes(&task, WINDOW)
        .await
        .unwrap_or_default();

    // Pass rate per day (UTC) of the results of the task's runs.
    let mut days: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for s in &runs {
        let day = when(s.run.created_at)[..10].to_string();
        let e = days.entry(day).or_default();
        for (o, n) in &s.outcomes {
            let passed = o.parse::<Outcome>().is_ok_and(|o| !o.is_failure());
            e.0 += if passed { *n as u64 } else { 0 };
            e.1 += *n as u64;
        }
    }
    let points: Vec<(String, f64)> = days
        .into_iter()
        .filter(|(_, (_, total))| *total > 0)
        .map(|(d, (p, t))| (d, p as f64 / t as f64))
        .collect();

    // Duration percentiles per phase, in the order phases first appear.
    let mut order: Vec<String> = Vec::new();
    let mut by_phase: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (name, us) in &phases {
        if !by_phase.contains_key(name) {
            order.push(name.clone());
        }
        by_phase
            .entry(name.clone())
            .or_default()
            .push(*us as f64 / 1e6);
    }
    let groups: Vec<(String, Vec<f64>)> = order
        .iter()
        .map(|name| {
            let mut v = by_phase.remove(name).unwrap_or_default();
            v.sort_by(f64::total_cmp);
            (
                name.clone(),
                vec![quantile(&v, 0.5), quantile(&v, 0.9), quantile(&v, 0.99)],
            )
        })
        .collect();

    let mut b = format!(
        "<h1>Task {}</h1><p class=\"muted\">The newest {} runs. <a href=\"/?task={}\">all runs</a></p>",
        esc(&task),
        runs.len(),
        seg(&task)
    );
    b.push_str("<h2>Pass rate per day</h2>");
    if points.is_empty() {
        b.push_str("<p class=\"muted\">No results yet.</p>");
    } else {
        b.push_str(&svg::percent_line("pass-rate", &points));
    }
    b.push_str("<h2>Phase durations (p50, p90, p99)</h2>");
    if groups.is_empty() {
        b.push_str("<p class=\"muted\">No phases recorded.</p>");
    } else {
        b.push_str(&svg::grouped_bars(
            "phase-durations",
            &["p50", "p90", "p99"],
            &groups,
        ));
    }
    b.push_str("<h2>Flaky checks</h2>");
    let flips = flaky(&outcomes);
    if flips.is_empty() {
        b.push_str("<p class=\"muted\" id=\"no-flaky\">No check changed its outcome for the same item.</p>");
    } else {
        b.push_str(
            "<div class=\"scroll\"><table class=\"flaky\"><thead><tr><th>check</th><th>item</th>\
             <th class=\"num\">flips</th><th>outcomes, oldest first</th></tr></thead><tbody>",
        );
        for (check, item, n, seq) in flips.iter().take(100) {
            let dots: String = seq
                .iter()
                .map(|o| {
                    format!(
                        "<span class=\"{}\" title=\"{}\"></span>",
                        outcome_class(o),
                        esc(o)
                    )
                })
                .collect();
            let _ = write!(
                b,
                "<tr><td>{}</td><td><a href=\"/items/{}\">{}</a></td><td class=\"num\">{n}</td>\
                 <td class=\"flips\">{dots}</td></tr>",
                esc(check),
                seg(item),
                esc(item)
            );
        }
        b.push_str("</tbody></table></div>");
    }
    layout(&format!("Task {task}"), &b).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[3.0], 0.9), 3.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn flips_are_counted_per_check_and_item() {
        let r = |c: &str, i: &str, o: &str| (c.to_string(), i.to_string(), o.to_string());
        let rows = vec![
            r("a", "x", "PASSED"),
            r("a", "x", "FAILED"),
            r("a", "y", "PASSED"),
            r("a", "x", "PASSED"),
            r("b", "x", "FAILED"),
            r("b", "x", "FAILED"),
            r("a", "y", "PASSED"),
        ];
        let f = flaky(&rows);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].0, "a");
        assert_eq!(f[0].1, "x");
        assert_eq!(f[0].2, 2);
        assert_eq!(f[0].3, ["PASSED", "FAILED", "PASSED"]);
    }
}
