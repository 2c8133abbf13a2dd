//! Two runs of a task side by side, in the terms the compare page and `ferrotron rerun`
//! share: which testcases differ in outcome, and which lines of their logs differ once what
//! always differs between runs (run ids, times, durations) is normalised away.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

/// Bytes of each log read for a diff: logs are capped far above this, a diff is not.
pub const LOG_READ: u64 = 1024 * 1024;
/// Lines of each log compared (the diff's table is their product).
pub const LOG_LINES: usize = 1500;

/// The start of the log file at `path` (at most [`LOG_READ`] bytes), as [`log_lines`]; a
/// missing or unreadable file reads as empty. Blocking.
pub fn read_log(path: &std::path::Path) -> Vec<String> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(LOG_READ).read_to_end(&mut buf);
    }
    log_lines(&String::from_utf8_lossy(&buf))
}

/// The first [`LOG_LINES`] lines of a log, normalised for comparing.
pub fn log_lines(text: &str) -> Vec<String> {
    text.lines().take(LOG_LINES).map(normalise).collect()
}

/// A run's results: testcase → (outcome, note).
pub type Outcomes = BTreeMap<String, (String, String)>;

/// What tells one result of a run from another: its testcase, and the item it is about
/// when it names one (a task may report one result per file, package or image).
pub fn result_key(testcase: &str, data: &BTreeMap<String, Vec<String>>) -> String {
    match data.get("item").map(Vec::as_slice) {
        Some([item]) if !item.is_empty() => format!("{testcase} [{item}]"),
        _ => testcase.to_string(),
    }
}

/// The testcases of either run whose outcome differs (or that one run lacks), in name order.
pub fn differing_cases(a: &Outcomes, b: &Outcomes) -> Vec<String> {
    let cases: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    cases
        .into_iter()
        .filter(|c| a.get(*c).map(|x| &x.0) != b.get(*c).map(|x| &x.0))
        .cloned()
        .collect()
}

static NOISE: LazyLock<[(regex::Regex, &'static str); 3]> = LazyLock::new(|| {
    [
        (
            regex::Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
                .expect("uuid pattern"),
            "<uuid>",
        ),
        (
            regex::Regex::new(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?")
                .expect("time pattern"),
            "<time>",
        ),
        (
            regex::Regex::new(r"\b\d+(\.\d+)?(ms|s|m\d\ds)\b").expect("duration pattern"),
            "<duration>",
        ),
    ]
});

/// What of a line two runs of the same task may differ in without meaning anything.
pub fn normalise(line: &str) -> String {
    let mut s = line.to_string();
    for (re, with) in NOISE.iter() {
        s = re.replace_all(&s, *with).into_owned();
    }
    s
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    Same(&'a str),
    OnlyA(&'a str),
    OnlyB(&'a str),
}

/// A line diff by longest common subsequence (inputs are capped: the table is `a × b`).
pub fn diff_lines<'a>(a: &'a [String], b: &'a [String]) -> Vec<Line<'a>> {
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![0u16; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] = if a[i] == b[j] {
                lcs[at(i + 1, j + 1)].saturating_add(1)
            } else {
                lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::with_capacity(n.max(m)));
    while i < n && j < m {
        if a[i] == b[j] {
            out.push(Line::Same(&a[i]));
            i += 1;
            j += 1;
        } else if lcs[at(i + 1, j)] >= lcs[at(i, j + 1)] {
            out.push(Line::OnlyA(&a[i]));
            i += 1;
        } else {
            out.push(Line::OnlyB(&b[j]));
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|s| Line::OnlyA(s)));
    out.extend(b[j..].iter().map(|s| Line::OnlyB(s)));
    out
}

/// The changed lines with `k` lines of context around each; `None` marks a cut.
pub fn context<'a, 'b>(diff: &'b [Line<'a>], k: usize) -> Vec<Option<&'b Line<'a>>> {
    let keep: Vec<bool> = (0..diff.len())
        .map(|i| {
            let lo = i.saturating_sub(k);
            let hi = (i + k + 1).min(diff.len());
            diff[lo..hi].iter().any(|l| !matches!(l, Line::Same(_)))
        })
        .collect();
    let mut out = Vec::new();
    let mut cut = false;
    for (l, keep) in diff.iter().zip(keep) {
        if keep {
            out.push(Some(l));
            cut = false;
        } else if !cut {
            out.push(None);
            cut = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(normalise).collect()
    }

    #[test]
    fn run_ids_times_and_durations_do_not_count_as_differences() {
        let a = lines(
            "run 0190a4c8-0000-7000-8000-000000000001 at 2026-12-04T05:00:01Z\n\
             [work] took 1.25s\nsame\n",
        );
        let b = lines(
            "run 0190a4c8-0000-7000-8000-0000000000ff at 2026-12-04 06:10:59\n\
             [work] took 3.5s\nsame\n",
        );
        assert!(
            diff_lines(&a, &b)
                .iter()
                .all(|l| matches!(l, Line::Same(_)))
        );
    }

    #[test]
    fn a_changed_line_shows_on_both_sides() {
        let (a, b) = (lines("one\ntwo\nthree\n"), lines("one\n2\nthree\nfour\n"));
        assert_eq!(
            diff_lines(&a, &b),
            [
                Line::Same("one"),
                Line::OnlyA("two"),
                Line::OnlyB("2"),
                Line::Same("three"),
                Line::OnlyB("four")
            ]
        );
    }

    #[test]
    fn context_cuts_long_runs_of_equal_lines() {
        let a: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        let mut b = a.clone();
        b[10] = "x".into();
        let d = diff_lines(&a, &b);
        let c = context(&d, 2);
        // A cut, two lines before, the change (two lines), two after, a cut.
        assert_eq!(c.len(), 1 + 2 + 2 + 2 + 1, "{c:?}");
        assert!(c[0].is_none() && c[c.len() - 1].is_none());
    }
}
