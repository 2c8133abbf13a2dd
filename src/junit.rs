//! A run's results as JUnit XML, for CI tools that read it (`GET /api/v1/runs/UUID/junit.xml`,
//! `ferrotron run --junit FILE`). Rendered from what the store holds, so both give the same
//! document for the same run.
//!
//! The mapping (README "JUnit XML" says the same to users):
//! - `<testsuites>` holding one `<testsuite>` per run: `name` = the task, `tests`, `failures`,
//!   `errors`, `skipped`, `timestamp` (the run's start, else its creation; UTC, no offset, as
//!   the common JUnit schema wants), `time` (start to finish, seconds) once the run is over;
//!   the run's uuid, item, type, arch, backend, state and exit code as `<properties>`.
//! - one `<testcase>` per result: `name` = the testcase (checkname), `classname` = the
//!   result's item (what was checked: tools group by classname, and a run's results may
//!   name different items), else its type, else the task. Properties: `outcome` (so INFO and
//!   PASSED stay apart), `item`, `type`, `ref_url` (the result's link: its artifact, else
//!   the run's page) when it has one.
//! - PASSED and INFO pass, the note in `<system-out>`: INFO is information, not a finding.
//! - FAILED and NEEDS_INSPECTION are `<failure type="OUTCOME">`: ferrotron counts
//!   NEEDS_INSPECTION as failing everywhere else (`Outcome::is_failure`, the `exitcode`
//!   directive), and a CI tool must not show green where `ferrotron run` exits 1.
//! - ERROR, ABORTED, CRASHED (and an outcome ferrotron does not know) are `<error>`: the
//!   check did not come to a verdict.
//! - WAIVED is `<skipped>`: someone decided it does not count.
//! - The note goes in the `message` attribute (its first line) and in full in the element.
//! - A run that ended failed, crashed or cancelled gets one more testcase, `ferrotron.run`,
//!   with an `<error>` carrying the run's error, so a run that broke before (or after)
//!   reporting is never green; a run still going gets a `<skipped>` one saying so.
//!
//! Everything in the document but the counts comes from the task: every text is escaped
//! ([`util::xml_escape`]) and capped ([`NAME_CAP`], [`TEXT_CAP`]).

use std::fmt::Write as _;

use crate::outcome::Outcome;
use crate::store::{RunRecord, RunState, StoredResult};
use crate::util;

/// Most bytes of a name, classname, attribute or property value.
pub const NAME_CAP: usize = 1024;
/// Most bytes of a note or error in an element body.
pub const TEXT_CAP: usize = 64 * 1024;

/// The testcase that stands for the run itself when it did not end well.
pub const RUN_TESTCASE: &str = "ferrotron.run";

/// What a testcase says to a JUnit reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Failure,
    Error,
    Skipped,
}

/// The verdict for a stored outcome (see the module's mapping).
pub fn verdict(outcome: &str) -> Verdict {
    match outcome.parse::<Outcome>() {
        Ok(Outcome::Passed | Outcome::Info) => Verdict::Pass,
        Ok(Outcome::Failed | Outcome::NeedsInspection) => Verdict::Failure,
        Ok(Outcome::Waived) => Verdict::Skipped,
        Ok(Outcome::Error | Outcome::Aborted | Outcome::Crashed) | Err(_) => Verdict::Error,
    }
}

/// One `<testcase>` before it is written.
struct Case<'a> {
    name: &'a str,
    classname: &'a str,
    properties: Vec<(&'static str, &'a str)>,
    verdict: Verdict,
    /// The `type` attribute of `<failure>`/`<error>`.
    kind: &'a str,
    /// The note or error: `message` attribute and element body (or `<system-out>` on a pass).
    text: Option<&'a str>,
}

/// The JUnit XML document for `run` and its results.
pub fn render(run: &RunRecord, results: &[StoredResult]) -> String {
    let mut cases: Vec<Case> = results.iter().map(|r| result_case(run, r)).collect();
    cases.extend(run_case(run));
    let count = |v: Verdict| cases.iter().filter(|c| c.verdict == v).count();
    let counts = format!(
        r#"tests="{}" failures="{}" errors="{}" skipped="{}""#,
        cases.len(),
        count(Verdict::Failure),
        count(Verdict::Error),
        count(Verdict::Skipped),
    );
    let time = match (run.started_at, run.finished_at) {
        (Some(s), Some(f)) if run.state.is_terminal() => {
            format!(r#" time="{:.3}""#, (f - s).as_seconds_f64().max(0.0))
        }
        _ => String::new(),
    };
    let name = attr(&run.task);
    let mut x = String::with_capacity(512 + 256 * cases.len());
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(x, r#"<testsuites name="{name}" {counts}{time}>"#);
    let _ = writeln!(
        x,
        r#"  <testsuite name="{name}" {counts}{time} timestamp="{}">"#,
        // UTC without an offset: the form the common JUnit schema declares.
        util::utc_seconds(run.started_at.unwrap_or(run.created_at), 'T')
    );
    let uuid = run.uuid.to_string();
    let state = run.state.as_str();
    let exit = run.exit_code.map(|c| c.to_string());
    let mut props = vec![
        ("uuid", uuid.as_str()),
        ("item", run.item.as_str()),
        ("type", run.item_type.as_str()),
        ("arch", run.arch.as_str()),
        ("backend", run.backend.as_str()),
        ("state", state),
    ];
    props.extend(exit.as_deref().map(|e| ("exit_code", e)));
    write_properties(&mut x, "    ", &props);
    for c in &cases {
        write_case(&mut x, c);
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

fn result_case<'a>(run: &'a RunRecord, r: &'a StoredResult) -> Case<'a> {
    let first = |key: &str| r.data.get(key).and_then(|v| v.first()).map(String::as_str);
    let item = first("item").unwrap_or("");
    let item_type = first("type").unwrap_or("");
    let classname = [item, item_type, run.task.as_str()]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or("");
    let mut properties = vec![
        ("outcome", r.outcome.as_str()),
        ("item", item),
        ("type", item_type),
    ];
    properties.extend(r.ref_url.as_deref().map(|u| ("ref_url", u)));
    Case {
        name: &r.testcase,
        classname,
        properties,
        verdict: verdict(&r.outcome),
        kind: &r.outcome,
        text: r.note.as_deref().filter(|n| !n.is_empty()),
    }
}

/// The testcase for the run itself: an error when it ended badly, skipped while it goes.
fn run_case(run: &RunRecord) -> Option<Case<'_>> {
    let (verdict, text) = match run.state {
        RunState::Finished => return None,
        RunState::Failed | RunState::Crashed | RunState::Cancelled => (
            Verdict::Error,
            run.error
                .as_deref()
                .unwrap_or("the run ended without saying why"),
        ),
        _ => (Verdict::Skipped, "the run is not over: results may follow"),
    };
    Some(Case {
        name: RUN_TESTCASE,
        classname: [&run.item, &run.item_type, &run.task]
            .into_iter()
            .find(|s| !s.is_empty())
            .map_or("", String::as_str),
        properties: vec![("state", run.state.as_str())],
        verdict,
        kind: run.state.as_str(),
        text: Some(text),
    })
}

fn write_case(x: &mut String, c: &Case) {
    let _ = writeln!(
        x,
        r#"    <testcase name="{}" classname="{}">"#,
        attr(c.name),
        attr(c.classname)
    );
    write_properties(x, "      ", &c.properties);
    let message = c.text.map(|t| t.lines().next().unwrap_or(""));
    let body = c.text.map(text).unwrap_or_default();
    let message_attr = message.map_or(String::new(), |m| format!(r#" message="{}""#, attr(m)));
    match c.verdict {
        Verdict::Pass => {
            if c.text.is_some() {
                let _ = writeln!(x, "      <system-out>{body}</system-out>");
            }
        }
        Verdict::Skipped => {
            let _ = writeln!(x, "      <skipped{message_attr}>{body}</skipped>");
        }
        Verdict::Failure | Verdict::Error => {
            let tag = if c.verdict == Verdict::Failure {
                "failure"
            } else {
                "error"
            };
            let _ = writeln!(
                x,
                r#"      <{tag} type="{}"{message_attr}>{body}</{tag}>"#,
                attr(c.kind)
            );
        }
    }
    x.push_str("    </testcase>\n");
}

fn write_properties(x: &mut String, indent: &str, props: &[(&str, &str)]) {
    let props: Vec<_> = props.iter().filter(|(_, v)| !v.is_empty()).collect();
    if props.is_empty() {
        return;
    }
    let _ = writeln!(x, "{indent}<properties>");
    for (k, v) in props {
        let _ = writeln!(
            x,
            r#"{indent}  <property name="{}" value="{}"/>"#,
            attr(k),
            attr(v)
        );
    }
    let _ = writeln!(x, "{indent}</properties>");
}

/// `s` capped at `cap` bytes, the cut said in the text itself.
fn capped(s: &str, cap: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= cap {
        return s.into();
    }
    let kept = util::truncate_at(s, cap);
    format!("{kept}… [{} more bytes cut]", s.len() - kept.len()).into()
}

/// An attribute value: capped, escaped, and with tab and line breaks as character
/// references, which attribute-value normalisation would otherwise turn into spaces.
fn attr(s: &str) -> String {
    util::xml_escape(&capped(s, NAME_CAP))
        .replace('\t', "&#9;")
        .replace('\n', "&#10;")
        .replace('\r', "&#13;")
}

/// Element content: capped and escaped.
fn text(s: &str) -> String {
    util::xml_escape(&capped(s, TEXT_CAP))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use time::macros::datetime;
    use uuid::Uuid;

    use super::*;

    fn run(state: RunState, error: Option<&str>) -> RunRecord {
        RunRecord {
            uuid: Uuid::nil(),
            task: "dist.rpmlint".into(),
            item: "bash-5.2-1.fc41".into(),
            item_type: "koji_build".into(),
            arch: "x86_64".into(),
            backend: "local".into(),
            state,
            exit_code: state.is_terminal().then_some(1),
            params: serde_json::Value::Null,
            error: error.map(str::to_string),
            log_path: String::new(),
            artifacts_dir: String::new(),
            owner: None,
            created_at: datetime!(2026-12-04 04:00:00 UTC),
            started_at: Some(datetime!(2026-12-04 06:22:32.5 +2)),
            finished_at: state
                .is_terminal()
                .then_some(datetime!(2026-12-04 04:23:14.75 UTC)),
            phases: vec![],
            attempts: vec![],
        }
    }

    fn result(testcase: &str, outcome: &str, note: Option<&str>) -> StoredResult {
        let data = BTreeMap::from([
            ("item".to_string(), vec!["bash-5.2-1.fc41".to_string()]),
            ("type".to_string(), vec!["koji_build".to_string()]),
        ]);
        StoredResult {
            id: 1,
            testcase: testcase.into(),
            testcase_ref_url: None,
            groups: vec![],
            outcome: outcome.into(),
            note: note.map(str::to_string),
            ref_url: None,
            submit_time: datetime!(2026-12-04 04:23:00 UTC),
            data,
        }
    }

    /// The `<testcase …>…</testcase>` element of the testcase called `name`.
    fn case<'a>(xml: &'a str, name: &str) -> &'a str {
        let start = xml
            .find(&format!(r#"<testcase name="{name}""#))
            .unwrap_or_else(|| panic!("no testcase {name} in\n{xml}"));
        let len = xml[start..].find("</testcase>").unwrap();
        &xml[start..start + len]
    }

    #[test]
    fn every_outcome_maps_to_its_verdict() {
        let got: Vec<(&str, Verdict)> = Outcome::ALL
            .iter()
            .map(|o| (o.as_str(), verdict(o.as_str())))
            .collect();
        assert_eq!(
            got,
            [
                ("PASSED", Verdict::Pass),
                ("INFO", Verdict::Pass),
                ("FAILED", Verdict::Failure),
                ("NEEDS_INSPECTION", Verdict::Failure),
                ("ERROR", Verdict::Error),
                ("WAIVED", Verdict::Skipped),
                ("ABORTED", Verdict::Error),
                ("CRASHED", Verdict::Error),
            ]
        );
        assert_eq!(verdict("MEH"), Verdict::Error);
        assert_eq!(verdict("passed"), Verdict::Error, "outcomes are exact");
    }

    #[test]
    fn a_finished_run_is_one_suite_with_a_case_per_result() {
        let mut failed = result("dist.second", "FAILED", Some("2 errors\nline two"));
        failed.ref_url = Some("https://farm.example/runs/x/artifacts/a.log?x=1&y=2".into());
        let results = [
            result("dist.ok", "PASSED", None),
            result("dist.info", "INFO", Some("just so you know")),
            failed,
            result("dist.look", "NEEDS_INSPECTION", Some("look")),
            result("dist.err", "ERROR", None),
            result("dist.waived", "WAIVED", Some("ok'd by qa")),
            result("dist.abort", "ABORTED", Some("stopped")),
            result("dist.crash", "CRASHED", Some("boom")),
        ];
        let x = render(&run(RunState::Finished, None), &results);
        assert!(x.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites "));
        let counts = r#"tests="8" failures="2" errors="3" skipped="1" time="42.250""#;
        assert!(
            x.contains(&format!(
                r#"<testsuite name="dist.rpmlint" {counts} timestamp="2026-12-04T04:22:32">"#
            )),
            "{x}"
        );
        assert!(
            x.contains(r#"<property name="uuid" value="00000000-0000-0000-0000-000000000000"/>"#)
        );
        assert!(x.contains(r#"<property name="exit_code" value="1"/>"#));
        assert!(!x.contains(RUN_TESTCASE), "a finished run is its results");

        let ok = case(&x, "dist.ok");
        assert!(ok.contains(r#"classname="bash-5.2-1.fc41""#), "{ok}");
        assert!(ok.contains(r#"<property name="outcome" value="PASSED"/>"#));
        assert!(
            !ok.contains("<system-out>") && !ok.contains("<failure"),
            "{ok}"
        );
        let info = case(&x, "dist.info");
        assert!(
            info.contains("<system-out>just so you know</system-out>"),
            "{info}"
        );
        assert!(info.contains(r#"value="INFO""#));
        let second = case(&x, "dist.second");
        assert!(
            second.contains(
                r#"<failure type="FAILED" message="2 errors">2 errors
line two</failure>"#
            ),
            "{second}"
        );
        assert!(
            second.contains(r#"<property name="ref_url" value="https://farm.example/runs/x/artifacts/a.log?x=1&amp;y=2"/>"#),
            "{second}"
        );
        assert!(
            case(&x, "dist.look").contains(r#"<failure type="NEEDS_INSPECTION" message="look">"#)
        );
        assert!(case(&x, "dist.err").contains(r#"<error type="ERROR"></error>"#));
        assert!(case(&x, "dist.waived").contains(r#"<skipped message="ok&apos;d by qa">"#));
        assert!(case(&x, "dist.abort").contains(r#"<error type="ABORTED" message="stopped">"#));
        assert!(case(&x, "dist.crash").contains(r#"<error type="CRASHED" message="boom">"#));
    }

    #[test]
    fn classname_falls_back_to_the_type_then_the_task() {
        let mut no_item = result("a", "PASSED", None);
        no_item.data.insert("item".into(), vec![String::new()]);
        let mut nothing = result("b", "PASSED", None);
        nothing.data.clear();
        let x = render(&run(RunState::Finished, None), &[no_item, nothing]);
        assert!(case(&x, "a").contains(r#"classname="koji_build""#), "{x}");
        assert!(case(&x, "b").contains(r#"classname="dist.rpmlint""#), "{x}");
    }

    #[test]
    fn a_run_that_crashed_without_results_is_one_error_case() {
        let x = render(
            &run(RunState::Crashed, Some("no machine: quota exceeded <4/4>")),
            &[],
        );
        assert!(
            x.contains(r#"tests="1" failures="0" errors="1" skipped="0""#),
            "{x}"
        );
        let c = case(&x, RUN_TESTCASE);
        assert!(
            c.contains(
                r#"<error type="crashed" message="no machine: quota exceeded &lt;4/4&gt;">"#
            ),
            "{c}"
        );
        // Failed after reporting: the results and the run's error both.
        let x = render(
            &run(RunState::Failed, None),
            &[result("dist.ok", "PASSED", None)],
        );
        assert!(x.contains(r#"tests="2" failures="0" errors="1""#), "{x}");
        assert!(case(&x, RUN_TESTCASE).contains("the run ended without saying why"));
    }

    #[test]
    fn a_run_still_going_is_skipped_and_has_no_time() {
        let x = render(&run(RunState::Running, None), &[]);
        assert!(
            x.contains(r#"tests="1" failures="0" errors="0" skipped="1" timestamp"#),
            "{x}"
        );
        assert!(case(&x, RUN_TESTCASE).contains("<skipped message=\"the run is not over"));
        assert!(!x.contains("time=\""), "{x}");
    }

    #[test]
    fn hostile_text_is_escaped_and_cannot_end_markup() {
        let evil = "]]></failure><x a=\"1\">&amp; \0\x1b[31m'\u{fffe}";
        let mut r = result(evil, "FAILED", Some(evil));
        r.data.insert("item".into(), vec![evil.into()]);
        let x = render(&run(RunState::Finished, None), &[r]);
        let want = "]]&gt;&lt;/failure&gt;&lt;x a=&quot;1&quot;&gt;&amp;amp; \\x00\\x1b[31m&apos;\\u{fffe}";
        assert!(
            x.contains(&format!(r#"<testcase name="{want}" classname="{want}">"#)),
            "{x}"
        );
        assert!(
            x.contains(&format!(r#"message="{want}">{want}</failure>"#)),
            "{x}"
        );
        assert!(
            !x.contains("]]>") && !x.contains('\0') && !x.contains('\x1b'),
            "{x}"
        );
        // Line breaks survive in attributes as references, not as spaces.
        let x = render(
            &run(RunState::Finished, None),
            &[result("a\tb\r\nc", "PASSED", None)],
        );
        assert!(x.contains(r#"name="a&#9;b&#13;&#10;c""#), "{x}");
    }

    #[test]
    fn texts_are_capped_on_a_character_boundary() {
        let long_name = "é".repeat(NAME_CAP);
        let long_note = "x".repeat(TEXT_CAP * 2);
        let x = render(
            &run(RunState::Finished, None),
            &[result(&long_name, "FAILED", Some(&long_note))],
        );
        assert!(x.len() < TEXT_CAP + 4 * NAME_CAP + 4096, "{}", x.len());
        let kept = "é".repeat(NAME_CAP / 2);
        assert!(
            x.contains(&format!(r#"name="{kept}… [{} more bytes cut]""#, NAME_CAP)),
            "the name is cut"
        );
        assert!(x.contains(&format!(
            "{}… [{TEXT_CAP} more bytes cut]</failure>",
            "x".repeat(100)
        )));
    }

    /// What a conforming parser would refuse: a forbidden character, or markup in the data.
    fn well_formed_enough(x: &str) -> bool {
        x.chars().all(|c| {
            matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{fffe}' && c != '\u{ffff}')
        }) && x.matches('<').count() == x.matches('>').count()
    }

    proptest! {
        #[test]
        fn any_text_renders_without_panic_into_clean_xml(
            name in any::<String>(),
            note in proptest::option::of(any::<String>()),
            outcome in any::<String>(),
            error in proptest::option::of(any::<String>()),
        ) {
            let mut r = result(&name, &outcome, note.as_deref());
            r.ref_url = Some(name.clone());
            r.data.insert("item".into(), vec![outcome.clone()]);
            let x = render(&run(RunState::Crashed, error.as_deref()), &[r]);
            prop_assert!(well_formed_enough(&x), "{}", x);
            prop_assert_eq!(x.matches("<testcase ").count(), 2);
        }
    }
}
