//! ResultsYAML: what a task reports. Parsing, validation and normalisation live here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::outcome::{Outcome, UnknownOutcome};
use crate::task::LineCol;
use crate::task::yaml::{self, Kind, Node, one_line};

/// One normalised result, ready to be stored in the ResultsDB model.
///
/// `data` holds every non-reserved key of the ResultsYAML entry, each value as a list
/// (ResultsDB's data is multi-valued); `item` and `type` are stored as data too, but kept
/// here as fields because everything downstream filters on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub checkname: String,
    pub item: String,
    #[serde(rename = "type")]
    pub item_type: String,
    pub outcome: Outcome,
    pub note: Option<String>,
    /// Path relative to the run's artifacts directory, never absolute, never escaping it.
    pub artifact: Option<String>,
    pub data: BTreeMap<String, Vec<String>>,
}

/// What `parse_results` needs to know besides the text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResultsContext<'a> {
    /// Names the text in messages: a file path, or e.g. "resultsdb directive in action
    /// `report`".
    pub source: &'a str,
    /// The task's `namespace.name`, for entries without a `checkname`.
    pub default_checkname: Option<&'a str>,
    /// The artifacts directory as the task saw it (possibly a path on the guest), against
    /// which `artifact` paths are resolved and checked.
    pub artifacts_dir: Option<&'a str>,
}

/// Keys with a meaning of their own; every other key of an entry is data.
pub const RESERVED_KEYS: [&str; 8] = [
    "item",
    "type",
    "outcome",
    "note",
    "results",
    "checkname",
    "artifact",
    "_internal",
];

/// ResultsYAML that cannot be stored, with the place that says why.
///
/// Displays as one line: `source:line:column: field: cause`, leaving out what is unknown.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.render())]
pub struct ResultsError {
    /// The context's `source`.
    pub origin: String,
    pub at: Option<LineCol>,
    /// Where in the document, e.g. `results[2].outcome`; empty for the document as a whole.
    pub field: String,
    pub kind: ResultsErrorKind,
}

impl ResultsError {
    fn render(&self) -> String {
        let mut out = self.origin.clone();
        if let Some(at) = self.at {
            out.push_str(&format!(":{at}"));
        }
        out.push_str(": ");
        if !self.field.is_empty() {
            out.push_str(&self.field);
            out.push_str(": ");
        }
        out.push_str(&self.kind.to_string());
        one_line(&out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultsErrorKind {
    #[error("invalid YAML: {message}")]
    Syntax { message: String },
    #[error("no results: expected a mapping with a `results:` list")]
    EmptyDocument,
    #[error("expected {expected}, found {found}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    #[error("missing `results:` list")]
    MissingResults,
    #[error("unknown key `{key}` (ResultsYAML has only `results` at the top)")]
    UnknownTopLevelKey { key: String },
    #[error("missing required key `{key}`")]
    Missing { key: &'static str },
    #[error("missing `checkname`, and no task name is known to use instead")]
    MissingCheckname,
    #[error("must not be empty")]
    Empty,
    #[error("{}", UnknownOutcome(.value.clone()))]
    UnknownOutcome { value: String },
    #[error("`results` inside a result is not allowed: results do not nest")]
    NestedResults,
    #[error("key `{key}` contains `:`, which ResultsDB does not allow in data keys")]
    ColonInKey { key: String },
    #[error("keys must be non-empty strings")]
    BadKey,
    #[error(
        "value of `{key}` contains {found}; data values must be strings, numbers, booleans or lists of them"
    )]
    NestedData { key: String, found: &'static str },
    #[error("artifact `{path}`: {problem}")]
    Artifact {
        path: String,
        problem: ArtifactProblem,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactProblem {
    #[error("the path is empty")]
    Empty,
    #[error("`..` leads out of the artifacts directory")]
    Escapes,
    #[error("not inside the artifacts directory `{dir}`")]
    Outside { dir: String },
    #[error(
        "an absolute path needs a known artifacts directory to be stored; give it relative to the artifacts directory"
    )]
    AbsoluteWithoutDir,
}

/// Parses ResultsYAML into normalised results, in document order.
pub fn parse_results(text: &str, ctx: &ResultsContext) -> Result<Vec<CheckResult>, ResultsError> {
    Parser { text, ctx }.document()
}

/// The most severe outcome (first of equals), for `exitcode: {result_worst: ...}`.
pub fn worst(results: &[CheckResult]) -> Option<Outcome> {
    results
        .iter()
        .map(|r| r.outcome)
        .fold(None, |worst, o| match worst {
            Some(w) if w.severity() >= o.severity() => Some(w),
            _ => Some(o),
        })
}

/// The outcome of the last result, for `exitcode: {result_last: ...}`.
pub fn last(results: &[CheckResult]) -> Option<Outcome> {
    results.last().map(|r| r.outcome)
}

/// `artifact` as a path relative to `artifacts_dir`, judged on the text alone: the files may
/// live on a machine that is already gone, and a lexical check cannot be fooled by what the
/// filesystem holds now. Returns `.` for the directory itself.
pub fn artifact_relative(
    artifact: &str,
    artifacts_dir: Option<&str>,
) -> Result<String, ArtifactProblem> {
    if artifact.trim().is_empty() {
        return Err(ArtifactProblem::Empty);
    }
    let parts = normalise(artifact).ok_or(ArtifactProblem::Escapes)?;
    let relative = if artifact.starts_with('/') {
        let dir = artifacts_dir.ok_or(ArtifactProblem::AbsoluteWithoutDir)?;
        let outside = || ArtifactProblem::Outside {
            dir: dir.to_string(),
        };
        if !dir.starts_with('/') {
            return Err(outside());
        }
        let base = normalise(dir).ok_or_else(outside)?;
        parts
            .strip_prefix(base.as_slice())
            .ok_or_else(outside)?
            .to_vec()
    } else {
        parts
    };
    Ok(if relative.is_empty() {
        ".".to_string()
    } else {
        relative.join("/")
    })
}

/// Path components with `.` and empty ones dropped and `..` applied; `None` if `..` climbs
/// above the start.
fn normalise(path: &str) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts)
}

struct Parser<'a> {
    text: &'a str,
    ctx: &'a ResultsContext<'a>,
}

impl Parser<'_> {
    fn err(&self, at: Option<usize>, field: &str, kind: ResultsErrorKind) -> ResultsError {
        ResultsError {
            origin: self.ctx.source.to_string(),
            at: at.map(|o| LineCol::of_offset(self.text, o)),
            field: field.to_string(),
            kind,
        }
    }

    fn document(&self) -> Result<Vec<CheckResult>, ResultsError> {
        let root = yaml::parse(self.text).map_err(|e| ResultsError {
            origin: self.ctx.source.to_string(),
            at: e.at,
            field: String::new(),
            kind: ResultsErrorKind::Syntax { message: e.message },
        })?;
        let entries = match &root.kind {
            Kind::Map(entries) => entries,
            Kind::Null => return Err(self.err(None, "", ResultsErrorKind::EmptyDocument)),
            _ => {
                return Err(self.err(
                    root.at,
                    "",
                    ResultsErrorKind::WrongType {
                        expected: "a mapping with a `results:` list",
                        found: root.describe(),
                    },
                ));
            }
        };
        let mut list = None;
        for (key, value) in entries {
            match key.scalar_text() {
                Some(k) if k == "results" => list = Some((key, value)),
                Some(k) => {
                    return Err(self.err(
                        key.at,
                        "",
                        ResultsErrorKind::UnknownTopLevelKey { key: k },
                    ));
                }
                None => return Err(self.err(key.at.or(root.at), "", ResultsErrorKind::BadKey)),
            }
        }
        let (key, list) =
            list.ok_or_else(|| self.err(root.at, "", ResultsErrorKind::MissingResults))?;
        let Kind::Seq(items) = &list.kind else {
            return Err(self.err(
                list.at.or(key.at),
                "results",
                ResultsErrorKind::WrongType {
                    expected: "a list of results",
                    found: list.describe(),
                },
            ));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| self.entry(i, item, item.at.or(list.at).or(key.at)))
            .collect()
    }

    fn entry(
        &self,
        index: usize,
        node: &Node,
        anchor: Option<usize>,
    ) -> Result<CheckResult, ResultsError> {
        let field = format!("results[{index}]");
        let Kind::Map(entries) = &node.kind else {
            return Err(self.err(
                anchor,
                &field,
                ResultsErrorKind::WrongType {
                    expected: "a mapping with item, type and outcome",
                    found: node.describe(),
                },
            ));
        };
        let mut item = None;
        let mut item_type = None;
        let mut checkname = None;
        let mut outcome = Outcome::NeedsInspection;
        let mut note = None;
        let mut artifact = None;
        let mut data: BTreeMap<String, Vec<String>> = BTreeMap::new();

        for (k, v) in entries {
            let key = match &k.kind {
                Kind::Str(_) | Kind::Number(_) | Kind::Bool(_) => {
                    k.scalar_text().unwrap_or_default()
                }
                _ => return Err(self.err(k.at.or(anchor), &field, ResultsErrorKind::BadKey)),
            };
            let sub = format!("{field}.{key}");
            let at = v.at.or(k.at).or(anchor);
            match key.as_str() {
                "item" => item = Some(self.text_value(v, at, &sub)?),
                "type" => item_type = Some(self.text_value(v, at, &sub)?),
                "checkname" => {
                    if !v.is_null() {
                        checkname = Some(self.text_value(v, at, &sub)?);
                    }
                }
                "outcome" => {
                    outcome = match &v.kind {
                        Kind::Null => Outcome::NeedsInspection,
                        Kind::Str(s) => s.parse().map_err(|_| {
                            self.err(
                                at,
                                &sub,
                                ResultsErrorKind::UnknownOutcome { value: s.clone() },
                            )
                        })?,
                        Kind::Number(_) | Kind::Bool(_) => {
                            let value = v.scalar_text().unwrap_or_default();
                            return Err(self.err(
                                at,
                                &sub,
                                ResultsErrorKind::UnknownOutcome { value },
                            ));
                        }
                        Kind::Seq(_) | Kind::Map(_) => {
                            return Err(self.err(
                                at,
                                &sub,
                                ResultsErrorKind::WrongType {
                                    expected: "an outcome such as PASSED",
                                    found: v.describe(),
                                },
                            ));
                        }
                    }
                }
                "note" => {
                    note = match &v.kind {
                        Kind::Null => None,
                        _ => Some(self.scalar(v, at, &sub)?),
                    }
                }
                "artifact" => {
                    if !v.is_null() {
                        let path = self.scalar(v, at, &sub)?;
                        let relative = artifact_relative(&path, self.ctx.artifacts_dir).map_err(
                            |problem| {
                                self.err(at, &sub, ResultsErrorKind::Artifact { path, problem })
                            },
                        )?;
                        artifact = Some(relative);
                    }
                }
                "_internal" => {}
                "results" => {
                    return Err(self.err(k.at.or(anchor), &sub, ResultsErrorKind::NestedResults));
                }
                _ => {
                    if key.is_empty() {
                        return Err(self.err(k.at.or(anchor), &field, ResultsErrorKind::BadKey));
                    }
                    if key.contains(':') {
                        return Err(self.err(
                            k.at.or(anchor),
                            &field,
                            ResultsErrorKind::ColonInKey { key },
                        ));
                    }
                    let values = self.data_values(&key, v, at, &sub)?;
                    if !values.is_empty() {
                        data.insert(key, values);
                    }
                }
            }
        }

        let entry_at = node.at.or(anchor);
        let missing = |key| self.err(entry_at, &field, ResultsErrorKind::Missing { key });
        let item = item.ok_or_else(|| missing("item"))?;
        let item_type = item_type.ok_or_else(|| missing("type"))?;
        let checkname = match checkname.or_else(|| self.ctx.default_checkname.map(str::to_string)) {
            Some(c) if !c.trim().is_empty() => c,
            _ => return Err(self.err(entry_at, &field, ResultsErrorKind::MissingCheckname)),
        };
        // PostgreSQL's text cannot hold NUL (the whole run's end would be refused, again on
        // every retry), and no reader wants one: U+FFFD takes its place, as in a lossy decode.
        let clean = |s: String| {
            if s.contains('\0') {
                s.replace('\0', "\u{FFFD}")
            } else {
                s
            }
        };
        let (checkname, item, item_type) = (clean(checkname), clean(item), clean(item_type));
        let mut data: BTreeMap<String, Vec<String>> = data
            .into_iter()
            .map(|(k, v)| (clean(k), v.into_iter().map(clean).collect()))
            .collect();
        data.insert("item".into(), vec![item.clone()]);
        data.insert("type".into(), vec![item_type.clone()]);
        Ok(CheckResult {
            checkname,
            item,
            item_type,
            outcome,
            note: note.map(clean),
            artifact: artifact.map(clean),
            data,
        })
    }

    /// A string, number or boolean as text.
    fn scalar(&self, v: &Node, at: Option<usize>, field: &str) -> Result<String, ResultsError> {
        v.scalar_text().ok_or_else(|| {
            let kind = if v.is_null() {
                ResultsErrorKind::Empty
            } else {
                ResultsErrorKind::WrongType {
                    expected: "a string",
                    found: v.describe(),
                }
            };
            self.err(at, field, kind)
        })
    }

    /// A scalar that must say something (item, type, checkname).
    fn text_value(&self, v: &Node, at: Option<usize>, field: &str) -> Result<String, ResultsError> {
        let text = self.scalar(v, at, field)?;
        if text.trim().is_empty() {
            return Err(self.err(at, field, ResultsErrorKind::Empty));
        }
        Ok(text)
    }

    /// Data values: a scalar is one value, a list of scalars several; nulls carry nothing.
    fn data_values(
        &self,
        key: &str,
        v: &Node,
        at: Option<usize>,
        field: &str,
    ) -> Result<Vec<String>, ResultsError> {
        let nested = |n: &Node, at| {
            self.err(
                at,
                field,
                ResultsErrorKind::NestedData {
                    key: key.to_string(),
                    found: n.describe(),
                },
            )
        };
        match &v.kind {
            Kind::Null => Ok(Vec::new()),
            Kind::Map(_) => Err(nested(v, at)),
            Kind::Seq(items) => items
                .iter()
                .filter(|n| !n.is_null())
                .map(|n| n.scalar_text().ok_or_else(|| nested(n, n.at.or(at))))
                .collect(),
            _ => Ok(v.scalar_text().into_iter().collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_become_replacement_characters() {
        let r = parse(
            "results:\n  - item: \"a\\0b\"\n    type: koji_build\n    outcome: PASSED\n    \
             checkname: \"c\\0\"\n    note: \"x\\0y\"\n    \"k\\0\": \"v\\0\"\n",
        )
        .unwrap();
        assert_eq!(r[0].item, "a\u{FFFD}b");
        assert_eq!(r[0].checkname, "c\u{FFFD}");
        assert_eq!(r[0].note.as_deref(), Some("x\u{FFFD}y"));
        assert_eq!(r[0].data["k\u{FFFD}"], ["v\u{FFFD}"]);
        assert!(!format!("{r:?}").contains("\\0"));
    }
    use proptest::prelude::*;

    const ARTIFACTS: &str = "/var/tmp/ferrotron/0190c3e2/artifacts";

    fn ctx() -> ResultsContext<'static> {
        ResultsContext {
            source: "artifacts/results.yml",
            default_checkname: Some("dist.rpmlint"),
            artifacts_dir: Some(ARTIFACTS),
        }
    }

    fn parse(text: &str) -> Result<Vec<CheckResult>, ResultsError> {
        parse_results(text, &ctx())
    }

    fn err(text: &str) -> ResultsError {
        match parse(text) {
            Ok(r) => panic!("expected an error, parsed {r:#?}"),
            Err(e) => e,
        }
    }

    fn at(line: usize, column: usize) -> Option<LineCol> {
        Some(LineCol { line, column })
    }

    fn data(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn formats_md_example() {
        let text = "results:
  - item: xchat-0.5-1.fc20
    type: koji_build
    checkname: dist.rpmlint
    outcome: FAILED
    note: 5 errors, 10 warnings
    artifact: xchat-0.5-1.fc20.x86_64.log    # a path inside artifactsdir
    arch: x86_64                             # any other key is data
";
        let results = parse(text).unwrap();
        assert_eq!(
            results,
            [CheckResult {
                checkname: "dist.rpmlint".into(),
                item: "xchat-0.5-1.fc20".into(),
                item_type: "koji_build".into(),
                outcome: Outcome::Failed,
                note: Some("5 errors, 10 warnings".into()),
                artifact: Some("xchat-0.5-1.fc20.x86_64.log".into()),
                data: data(&[
                    ("arch", &["x86_64"]),
                    ("item", &["xchat-0.5-1.fc20"]),
                    ("type", &["koji_build"]),
                ]),
            }]
        );
    }

    #[test]
    fn defaults_are_filled_in() {
        let results = parse("results:\n  - {item: foo-1-1, type: koji_build}\n").unwrap();
        let r = &results[0];
        assert_eq!(r.outcome, Outcome::NeedsInspection);
        assert_eq!(r.checkname, "dist.rpmlint");
        assert_eq!(r.note, None);
        assert_eq!(r.artifact, None);
        assert_eq!(
            r.data,
            data(&[("item", &["foo-1-1"]), ("type", &["koji_build"])])
        );

        let explicit_null =
            parse("results:\n  - {item: a, type: b, outcome: null, checkname: ~}\n").unwrap();
        assert_eq!(explicit_null[0].outcome, Outcome::NeedsInspection);
        assert_eq!(explicit_null[0].checkname, "dist.rpmlint");
    }

    #[test]
    fn data_values_are_stringified_and_listed() {
        let text = "results:
  - item: a
    type: b
    outcome: PASSED
    count: 3
    ratio: 1.50
    big: 1e3
    ok: true
    hex: 0x1F
    version: '1.10'
    arches: [x86_64, aarch64, 7]
    nothing:
    sparse: [one, null, two]
    _internal: {anything: [goes]}
";
        let r = &parse(text).unwrap()[0];
        assert_eq!(
            r.data,
            data(&[
                ("arches", &["x86_64", "aarch64", "7"]),
                ("big", &["1000.0"]),
                ("count", &["3"]),
                ("hex", &["31"]),
                ("item", &["a"]),
                ("ok", &["true"]),
                ("ratio", &["1.5"]),
                ("sparse", &["one", "two"]),
                ("type", &["b"]),
                ("version", &["1.10"]),
            ])
        );
    }

    #[test]
    fn several_results_keep_their_order_and_own_checknames() {
        let text = "results:
  - {item: a, type: t, outcome: PASSED}
  - {item: b, type: t, outcome: INFO, checkname: other.check}
  - {item: c, type: t, outcome: CRASHED, note: 42}
";
        let results = parse(text).unwrap();
        let items: Vec<_> = results
            .iter()
            .map(|r| (r.item.as_str(), r.checkname.as_str(), r.outcome))
            .collect();
        assert_eq!(
            items,
            [
                ("a", "dist.rpmlint", Outcome::Passed),
                ("b", "other.check", Outcome::Info),
                ("c", "dist.rpmlint", Outcome::Crashed),
            ]
        );
        assert_eq!(results[2].note.as_deref(), Some("42"));
    }

    #[test]
    fn empty_results_list_is_fine() {
        assert_eq!(parse("results: []\n").unwrap(), []);
    }

    #[test]
    fn unknown_outcome_names_index_value_and_place() {
        let e = err(
            "results:\n  - {item: a, type: t, outcome: PASSED}\n  - item: b\n    type: t\n    outcome: PASS\n",
        );
        assert_eq!(
            e.kind,
            ResultsErrorKind::UnknownOutcome {
                value: "PASS".into()
            }
        );
        assert_eq!(e.field, "results[1].outcome");
        assert_eq!(e.at, at(5, 14));
        assert_eq!(
            e.to_string(),
            "artifacts/results.yml:5:14: results[1].outcome: unknown outcome `PASS` \
             (expected one of PASSED, INFO, FAILED, NEEDS_INSPECTION, ERROR, WAIVED, ABORTED, CRASHED)"
        );
        let e = err("results:\n  - {item: a, type: t, outcome: 1}\n");
        assert_eq!(
            e.kind,
            ResultsErrorKind::UnknownOutcome { value: "1".into() }
        );
    }

    #[test]
    fn document_shape_errors() {
        let e = err("");
        assert_eq!(e.kind, ResultsErrorKind::EmptyDocument);
        assert_eq!(
            e.to_string(),
            "artifacts/results.yml: no results: expected a mapping with a `results:` list"
        );

        let e = err("- item: a\n");
        assert!(
            matches!(
                e.kind,
                ResultsErrorKind::WrongType {
                    found: "a list",
                    ..
                }
            ),
            "{e}"
        );

        let e = err("result: []\n");
        assert_eq!(
            e.kind,
            ResultsErrorKind::UnknownTopLevelKey {
                key: "result".into()
            }
        );
        assert_eq!(e.at, at(1, 1));

        let e = err("{}\n");
        assert_eq!(e.kind, ResultsErrorKind::MissingResults);

        for text in ["results:\n", "results: {item: a}\n", "results: PASSED\n"] {
            let e = err(text);
            assert!(
                matches!(
                    e.kind,
                    ResultsErrorKind::WrongType {
                        expected: "a list of results",
                        ..
                    }
                ),
                "{text:?}: {e}"
            );
            assert_eq!(e.field, "results");
        }

        let e = err("results:\n  - PASSED\n");
        assert!(
            matches!(
                e.kind,
                ResultsErrorKind::WrongType {
                    found: "a string",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.field, "results[0]");
        assert_eq!(e.at, at(2, 5));
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = err("results:\n  - item: a\n   type: b\n");
        assert!(matches!(e.kind, ResultsErrorKind::Syntax { .. }), "{e}");
        assert_eq!(e.at.map(|a| a.line), Some(3));
        assert!(e.to_string().starts_with("artifacts/results.yml:3:"), "{e}");

        let e = err("results:\n  - {item: a, type: b, item: c}\n");
        assert_eq!(
            e.kind,
            ResultsErrorKind::Syntax {
                message: "duplicate key `item`".into()
            }
        );
        assert_eq!(e.at, at(2, 24));
    }

    #[test]
    fn required_fields() {
        let e = err("results:\n  - type: koji_build\n    outcome: PASSED\n");
        assert_eq!(e.kind, ResultsErrorKind::Missing { key: "item" });
        assert_eq!(e.field, "results[0]");
        assert_eq!(e.at, at(2, 5));

        let e = err("results:\n  - {item: a}\n");
        assert_eq!(e.kind, ResultsErrorKind::Missing { key: "type" });

        let e = err("results:\n  - {item: '', type: t}\n");
        assert_eq!(e.kind, ResultsErrorKind::Empty);
        assert_eq!(e.field, "results[0].item");

        let e = err("results:\n  - {item: [a, b], type: t}\n");
        assert!(
            matches!(
                e.kind,
                ResultsErrorKind::WrongType {
                    found: "a list",
                    ..
                }
            ),
            "{e}"
        );

        let no_default = ResultsContext {
            default_checkname: None,
            ..ctx()
        };
        let e = parse_results("results:\n  - {item: a, type: t}\n", &no_default).unwrap_err();
        assert_eq!(e.kind, ResultsErrorKind::MissingCheckname);
        assert_eq!(e.field, "results[0]");
        let ok = parse_results(
            "results:\n  - {item: a, type: t, checkname: x.y}\n",
            &no_default,
        )
        .unwrap();
        assert_eq!(ok[0].checkname, "x.y");
    }

    #[test]
    fn reserved_and_forbidden_keys() {
        let e = err("results:\n  - item: a\n    type: t\n    results: []\n");
        assert_eq!(e.kind, ResultsErrorKind::NestedResults);
        assert_eq!(e.field, "results[0].results");
        assert_eq!(e.at, at(4, 5));

        let e = err("results:\n  - item: a\n    type: t\n    \"a:b\": 1\n");
        assert_eq!(e.kind, ResultsErrorKind::ColonInKey { key: "a:b".into() });
        assert_eq!(e.at, at(4, 6));

        let e = err("results:\n  - item: a\n    type: t\n    env:\n      python: 3\n");
        assert_eq!(
            e.kind,
            ResultsErrorKind::NestedData {
                key: "env".into(),
                found: "a mapping"
            }
        );
        assert_eq!(e.field, "results[0].env");
        assert_eq!(e.at, at(5, 7));
        assert!(
            e.to_string().contains("value of `env` contains a mapping"),
            "{e}"
        );

        let e = err("results:\n  - {item: a, type: t, deps: [x, [y]]}\n");
        assert_eq!(
            e.kind,
            ResultsErrorKind::NestedData {
                key: "deps".into(),
                found: "a list"
            }
        );

        let e = err("results:\n  - {item: a, type: t, note: [x]}\n");
        assert!(matches!(e.kind, ResultsErrorKind::WrongType { .. }), "{e}");

        let e = err("results:\n  - {item: a, type: t, '': x}\n");
        assert_eq!(e.kind, ResultsErrorKind::BadKey);
    }

    fn artifact(path: &str) -> Result<Option<String>, ResultsError> {
        let text = format!("results:\n  - {{item: a, type: t, artifact: '{path}'}}\n");
        parse(&text).map(|r| r[0].artifact.clone())
    }

    #[test]
    fn artifact_absolute_inside_is_made_relative() {
        assert_eq!(
            artifact(&format!("{ARTIFACTS}/logs/rpmlint.log"))
                .unwrap()
                .as_deref(),
            Some("logs/rpmlint.log")
        );
        assert_eq!(
            artifact(&format!("{ARTIFACTS}//./logs/../x.log"))
                .unwrap()
                .as_deref(),
            Some("x.log")
        );
        assert_eq!(
            artifact(&format!("{ARTIFACTS}/")).unwrap().as_deref(),
            Some(".")
        );
        assert_eq!(artifact_relative("/a/b/c", Some("/a/b/")), Ok("c".into()));
    }

    #[test]
    fn artifact_relative_is_relative_to_artifacts_dir() {
        assert_eq!(
            artifact("rpmlint.log").unwrap().as_deref(),
            Some("rpmlint.log")
        );
        assert_eq!(
            artifact("./logs/./a.log").unwrap().as_deref(),
            Some("logs/a.log")
        );
        assert_eq!(artifact("logs/../a.log").unwrap().as_deref(), Some("a.log"));
    }

    #[test]
    fn artifact_escaping_with_dotdot_is_an_error() {
        let e = artifact("../../etc/passwd").unwrap_err();
        assert_eq!(
            e.kind,
            ResultsErrorKind::Artifact {
                path: "../../etc/passwd".into(),
                problem: ArtifactProblem::Escapes
            }
        );
        assert_eq!(e.field, "results[0].artifact");
        assert_eq!(
            e.at,
            at(2, 35),
            "the path's first character, inside the quotes"
        );
        assert!(artifact("logs/../../x").is_err());
        assert!(artifact(&format!("{ARTIFACTS}/../secret")).is_err());
    }

    #[test]
    fn artifact_absolute_outside_is_an_error() {
        let e = artifact("/etc/passwd").unwrap_err();
        assert!(
            matches!(&e.kind, ResultsErrorKind::Artifact { problem: ArtifactProblem::Outside { dir }, .. } if dir == ARTIFACTS),
            "{e}"
        );
        assert!(
            e.to_string().contains("not inside the artifacts directory"),
            "{e}"
        );
        // A sibling whose name merely starts with the directory's name is outside.
        assert!(artifact(&format!("{ARTIFACTS}-evil/x")).is_err());
        assert!(artifact("/var/tmp/ferrotron/0190c3e2").is_err());
    }

    #[test]
    fn artifact_empty_is_an_error() {
        let e = artifact("").unwrap_err();
        assert!(
            matches!(
                e.kind,
                ResultsErrorKind::Artifact {
                    problem: ArtifactProblem::Empty,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(artifact_relative("  ", None), Err(ArtifactProblem::Empty));
    }

    #[test]
    fn artifact_without_artifacts_dir() {
        assert_eq!(artifact_relative("a/b.log", None), Ok("a/b.log".into()));
        assert_eq!(
            artifact_relative("../b.log", None),
            Err(ArtifactProblem::Escapes)
        );
        assert_eq!(
            artifact_relative("/tmp/b.log", None),
            Err(ArtifactProblem::AbsoluteWithoutDir)
        );
        let no_dir = ResultsContext {
            artifacts_dir: None,
            ..ctx()
        };
        let e = parse_results(
            "results:\n  - {item: a, type: t, artifact: /x/y}\n",
            &no_dir,
        )
        .unwrap_err();
        assert!(
            matches!(
                e.kind,
                ResultsErrorKind::Artifact {
                    problem: ArtifactProblem::AbsoluteWithoutDir,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            artifact_relative("/x/y", Some("relative/dir")),
            Err(ArtifactProblem::Outside {
                dir: "relative/dir".into()
            })
        );
    }

    #[test]
    fn worst_and_last() {
        let with = |outcomes: &[Outcome]| -> Vec<CheckResult> {
            outcomes
                .iter()
                .map(|&outcome| CheckResult {
                    checkname: "c".into(),
                    item: "i".into(),
                    item_type: "t".into(),
                    outcome,
                    note: None,
                    artifact: None,
                    data: BTreeMap::new(),
                })
                .collect()
        };
        assert_eq!(worst(&[]), None);
        assert_eq!(last(&[]), None);
        let r = with(&[Outcome::Passed, Outcome::Failed, Outcome::Info]);
        assert_eq!(worst(&r), Some(Outcome::Failed));
        assert_eq!(last(&r), Some(Outcome::Info));
        let r = with(&[Outcome::Waived, Outcome::Passed]);
        assert_eq!(
            worst(&r),
            Some(Outcome::Waived),
            "the first of equally severe outcomes wins"
        );
        let r = with(&[Outcome::NeedsInspection, Outcome::Crashed, Outcome::Error]);
        assert_eq!(worst(&r), Some(Outcome::Crashed));
    }

    #[test]
    fn directive_source_names_the_action() {
        let ctx = ResultsContext {
            source: "resultsdb directive in action `report`",
            ..ctx()
        };
        let e = parse_results("results:\n  - {item: a}\n", &ctx).unwrap_err();
        assert_eq!(
            e.to_string(),
            "resultsdb directive in action `report`:2:6: results[0]: missing required key `type`"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn never_panics_on_text(s in "\\PC{0,200}") {
            if let Err(e) = parse(&s) {
                prop_assert!(!e.to_string().contains('\n'), "{}", e);
            }
        }

        #[test]
        fn never_panics_on_yamlish(text in crate::task::yaml::strategies::text_from(crate::task::yaml::strategies::value())) {
            if let Err(e) = parse(&text) {
                prop_assert!(!e.to_string().contains('\n'), "{}", e);
            }
        }

        #[test]
        fn never_panics_on_results_shaped_input(
            entries in prop::collection::vec(crate::task::yaml::strategies::value(), 0..4),
            dir in prop::option::of(prop::sample::select(&["/a/b", "/", "", "rel", "/a/../b"][..])),
        ) {
            let mut root = serde_norway::Mapping::new();
            root.insert("results".into(), serde_norway::Value::Sequence(entries));
            let text = serde_norway::to_string(&root).unwrap_or_default();
            let ctx = ResultsContext { artifacts_dir: dir, ..ctx() };
            match parse_results(&text, &ctx) {
                Ok(results) => {
                    for r in &results {
                        if let Some(a) = &r.artifact {
                            prop_assert!(!a.starts_with('/') && !a.split('/').any(|p| p == ".."), "{}", a);
                        }
                        prop_assert_eq!(r.data.get("item"), Some(&vec![r.item.clone()]));
                    }
                    prop_assert_eq!(worst(&results).is_some(), !results.is_empty());
                }
                Err(e) => prop_assert!(!e.to_string().contains('\n'), "{}", e),
            }
        }

        #[test]
        fn artifact_relative_never_escapes(path in "[a./]{0,12}", dir in "[a./]{0,8}") {
            if let Ok(rel) = artifact_relative(&path, Some(&dir)) {
                prop_assert!(!rel.starts_with('/'));
                prop_assert!(!rel.split('/').any(|p| p == ".." || p.is_empty()), "{}", rel);
            }
        }
    }
}
