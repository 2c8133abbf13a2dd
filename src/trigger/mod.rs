//! Trigger rules: which jobs a bus message makes.
//!
//! A rule matches a message by topic (AMQP topic patterns: words split on `.`, `*` is one
//! word, `#` is zero or more, so a rule's topics are also the queue's bindings) and by
//! conditions on body fields named by dotted paths (`equals`, `one_of`, `regex`). A matching
//! rule makes one job per task × arch, with item, type and arches templated from the body
//! (`{name}-{version}-{release}`). Rules are compiled once, at start-up, with errors naming
//! the rule and the field; evaluating a message never panics, whatever the body holds.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

pub use crate::bus::MAX_TOPIC;

/// A rule as written in YAML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    /// Topic patterns; any may match.
    pub topics: Vec<String>,
    /// All must hold.
    #[serde(default)]
    pub when: Vec<Condition>,
    /// Item template, e.g. `{name}-{version}-{release}`.
    pub item: String,
    /// Item type template, e.g. `koji_build`.
    #[serde(rename = "type")]
    pub item_type: String,
    /// Arch templates. A template that is exactly `{field}` naming a list expands to each
    /// entry. Default `[noarch]`.
    #[serde(default = "default_arches")]
    pub arches: Vec<String>,
    /// Task names (keys of the config's `tasks:`).
    pub tasks: Vec<String>,
    /// Overrides the tasks' priority for jobs this rule makes.
    #[serde(default)]
    pub priority: Option<i32>,
}

fn default_arches() -> Vec<String> {
    vec!["noarch".into()]
}

/// One condition on a body field; exactly one of `equals`, `one_of`, `regex`, `exists`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Dotted path into the body: `new`, `build.owner`, `builds.0.nvr`.
    pub field: String,
    #[serde(default)]
    pub equals: Option<Value>,
    #[serde(default)]
    pub one_of: Option<Vec<Value>>,
    /// Matched against the field's text (a number's decimal form); anchored only if the
    /// pattern says so.
    #[serde(default)]
    pub regex: Option<String>,
    /// The field is present (true) or absent (false).
    #[serde(default)]
    pub exists: Option<bool>,
}

/// A rule that cannot work, named by index, name and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rules[{index}] ({name}).{field}: {message}")]
pub struct RuleError {
    pub index: usize,
    pub name: String,
    pub field: String,
    pub message: String,
}

#[derive(Debug)]
enum Test {
    Equals(Value),
    OneOf(Vec<Value>),
    Regex(regex::Regex),
    Exists(bool),
}

#[derive(Debug)]
struct CompiledCondition {
    path: Vec<String>,
    field: String,
    test: Test,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Field(Vec<String>),
}

#[derive(Debug, Clone)]
struct Template(Vec<Piece>);

#[derive(Debug)]
struct CompiledRule {
    name: String,
    topics: Vec<Vec<String>>,
    conditions: Vec<CompiledCondition>,
    item: Template,
    item_type: Template,
    arches: Vec<Template>,
    tasks: Vec<String>,
    priority: Option<i32>,
}

/// A job a message makes, before the store gives it a uuid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct JobSpec {
    pub rule: String,
    pub task: String,
    pub item: String,
    #[serde(rename = "type")]
    pub item_type: String,
    pub arch: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

/// What the rules make of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Evaluation {
    pub jobs: Vec<JobSpec>,
    /// Rules whose topic and conditions matched but whose templates could not be filled
    /// (a missing field): the reason, for the log.
    pub skipped: Vec<String>,
}

/// The compiled rules of one configuration.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<CompiledRule>,
}

impl RuleSet {
    /// Compiles `rules`. When `known_tasks` is not empty, every task a rule names must be in
    /// it.
    pub fn compile(rules: &[Rule], known_tasks: &[&str]) -> Result<RuleSet, RuleError> {
        let mut names = HashSet::new();
        let mut out = Vec::with_capacity(rules.len());
        for (index, r) in rules.iter().enumerate() {
            let err = |field: &str, message: String| RuleError {
                index,
                name: r.name.clone(),
                field: field.to_string(),
                message,
            };
            if r.name.trim().is_empty() {
                return Err(err("name", "must not be empty".into()));
            }
            if !names.insert(r.name.as_str()) {
                return Err(err(
                    "name",
                    format!("`{}` is used by an earlier rule", r.name),
                ));
            }
            if r.topics.is_empty() {
                return Err(err("topics", "needs at least one topic pattern".into()));
            }
            let mut topics = Vec::new();
            for (i, t) in r.topics.iter().enumerate() {
                check_pattern(t).map_err(|m| err(&format!("topics[{i}]"), m))?;
                topics.push(t.split('.').map(String::from).collect());
            }
            let mut conditions = Vec::new();
            for (i, c) in r.when.iter().enumerate() {
                let f = format!("when[{i}]");
                let path = parse_path(&c.field).map_err(|m| err(&format!("{f}.field"), m))?;
                let mut tests = Vec::new();
                if let Some(v) = &c.equals {
                    tests.push(Test::Equals(v.clone()));
                }
                if let Some(v) = &c.one_of {
                    if v.is_empty() {
                        return Err(err(
                            &format!("{f}.one_of"),
                            "must list at least one value".into(),
                        ));
                    }
                    tests.push(Test::OneOf(v.clone()));
                }
                if let Some(re) = &c.regex {
                    let compiled = regex::RegexBuilder::new(re)
                        .size_limit(1 << 20)
                        .build()
                        .map_err(|e| {
                            err(&format!("{f}.regex"), format!("invalid regex `{re}`: {e}"))
                        })?;
                    tests.push(Test::Regex(compiled));
                }
                if let Some(b) = c.exists {
                    tests.push(Test::Exists(b));
                }
                if tests.len() != 1 {
                    return Err(err(
                        &f,
                        format!(
                            "give exactly one of equals, one_of, regex, exists (found {})",
                            tests.len()
                        ),
                    ));
                }
                conditions.push(CompiledCondition {
                    path,
                    field: c.field.clone(),
                    test: tests.pop().expect("one test"),
                });
            }
            let item = parse_template(&r.item).map_err(|m| err("item", m))?;
            let item_type = parse_template(&r.item_type).map_err(|m| err("type", m))?;
            if r.arches.is_empty() {
                return Err(err(
                    "arches",
                    "needs at least one arch (default: [noarch])".into(),
                ));
            }
            let arches = r
                .arches
                .iter()
                .enumerate()
                .map(|(i, a)| parse_template(a).map_err(|m| err(&format!("arches[{i}]"), m)))
                .collect::<Result<_, _>>()?;
            if r.tasks.is_empty() {
                return Err(err("tasks", "needs at least one task".into()));
            }
            for (i, t) in r.tasks.iter().enumerate() {
                if !known_tasks.is_empty() && !known_tasks.contains(&t.as_str()) {
                    return Err(err(
                        &format!("tasks[{i}]"),
                        format!("unknown task `{t}` (tasks: {})", known_tasks.join(", ")),
                    ));
                }
            }
            out.push(CompiledRule {
                name: r.name.clone(),
                topics,
                conditions,
                item,
                item_type,
                arches,
                tasks: r.tasks.clone(),
                priority: r.priority,
            });
        }
        Ok(RuleSet { rules: out })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every topic pattern of every rule, de-duplicated (the AMQP bindings).
    pub fn topics(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.rules
            .iter()
            .flat_map(|r| r.topics.iter().map(|t| t.join(".")))
            .filter(|t| seen.insert(t.clone()))
            .collect()
    }

    /// The jobs `topic` + `body` make, in rule order, without duplicates.
    pub fn evaluate(&self, topic: &str, body: &Value) -> Evaluation {
        let mut eval = Evaluation::default();
        let words: Vec<&str> = topic.split('.').collect();
        let mut seen = HashSet::new();
        for rule in &self.rules {
            if !rule.topics.iter().any(|p| topic_matches(p, &words)) {
                continue;
            }
            if !rule.conditions.iter().all(|c| c.holds(body)) {
                continue;
            }
            let filled = (|| {
                let item = rule
                    .item
                    .render(body)
                    .map_err(|f| format!("item needs {f}"))?;
                let item_type = rule
                    .item_type
                    .render(body)
                    .map_err(|f| format!("type needs {f}"))?;
                let mut arches = Vec::new();
                for a in &rule.arches {
                    arches.extend(
                        a.render_list(body)
                            .map_err(|f| format!("arches need {f}"))?,
                    );
                }
                Ok::<_, String>((item, item_type, arches))
            })();
            let (item, item_type, arches) = match filled {
                Ok(v) => v,
                Err(why) => {
                    eval.skipped.push(format!("rule {}: {why}", rule.name));
                    continue;
                }
            };
            for (what, v) in [("item", &item), ("type", &item_type)] {
                if let Err(why) = check_value(v) {
                    eval.skipped
                        .push(format!("rule {}: {what} {why}", rule.name));
                }
            }
            if eval
                .skipped
                .iter()
                .any(|s| s.starts_with(&format!("rule {}:", rule.name)))
            {
                continue;
            }
            for arch in &arches {
                if let Err(why) = check_value(arch) {
                    eval.skipped.push(format!("rule {}: arch {why}", rule.name));
                    continue;
                }
                for task in &rule.tasks {
                    let job = JobSpec {
                        rule: rule.name.clone(),
                        task: task.clone(),
                        item: item.clone(),
                        item_type: item_type.clone(),
                        arch: arch.clone(),
                        priority: rule.priority,
                    };
                    let key = (
                        job.task.clone(),
                        job.item.clone(),
                        job.item_type.clone(),
                        job.arch.clone(),
                    );
                    if seen.insert(key) {
                        eval.jobs.push(job);
                    }
                }
            }
        }
        eval
    }
}

/// Items, types and arches must be non-empty, one line, and of sane length.
fn check_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("is empty".into());
    }
    if v.len() > 1024 {
        return Err(format!("is {} bytes long (at most 1024)", v.len()));
    }
    if v.chars().any(char::is_control) {
        return Err(format!(
            "`{}` contains control characters",
            v.escape_debug()
        ));
    }
    Ok(())
}

fn check_pattern(t: &str) -> Result<(), String> {
    if t.is_empty() || t.len() > MAX_TOPIC {
        return Err(format!("topic pattern must have 1 to {MAX_TOPIC} bytes"));
    }
    for w in t.split('.') {
        if w.is_empty() {
            return Err(format!(
                "`{t}` has an empty word (two dots, or a dot at an end)"
            ));
        }
        if (w.contains('*') || w.contains('#')) && w.len() > 1 {
            return Err(format!(
                "`{t}`: `*` and `#` stand for whole words (`org.*.buildsys.#`), not parts of one"
            ));
        }
    }
    Ok(())
}

/// AMQP topic matching: `*` is exactly one word, `#` zero or more.
pub fn topic_matches(pattern: &[String], words: &[&str]) -> bool {
    // dp[j]: pattern[..i] matches words[..j].
    let mut dp = vec![false; words.len() + 1];
    dp[0] = true;
    for p in pattern {
        let mut next = vec![false; words.len() + 1];
        match p.as_str() {
            "#" => {
                let mut any = false;
                for j in 0..=words.len() {
                    any |= dp[j];
                    next[j] = any;
                }
            }
            "*" => {
                next[1..].copy_from_slice(&dp[..words.len()]);
            }
            lit => {
                for j in 1..=words.len() {
                    next[j] = dp[j - 1] && words[j - 1] == lit;
                }
            }
        }
        dp = next;
    }
    dp[words.len()]
}

fn parse_path(field: &str) -> Result<Vec<String>, String> {
    if field.is_empty() || field.split('.').any(str::is_empty) {
        return Err(format!("`{field}` is not a dotted path like `build.owner`"));
    }
    Ok(field.split('.').map(String::from).collect())
}

fn lookup<'a>(body: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = body;
    for part in path {
        cur = match cur {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// A scalar's text: strings as they are, numbers and booleans in JSON form.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// JSON equality where numbers compare by value (YAML `1` equals JSON `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

impl CompiledCondition {
    fn holds(&self, body: &Value) -> bool {
        let v = lookup(body, &self.path);
        match (&self.test, v) {
            (Test::Exists(want), v) => v.is_some() == *want,
            (_, None) => false,
            (Test::Equals(want), Some(v)) => same(want, v),
            (Test::OneOf(wants), Some(v)) => wants.iter().any(|w| same(w, v)),
            (Test::Regex(re), Some(v)) => scalar_text(v).is_some_and(|t| re.is_match(&t)),
        }
    }
}

impl fmt::Display for CompiledCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.field)
    }
}

fn parse_template(t: &str) -> Result<Template, String> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => {
                            return Err(format!(
                                "`{t}`: `{{` without its `}}` (write `{{{{` for a brace)"
                            ));
                        }
                    }
                }
                if !lit.is_empty() {
                    pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                pieces.push(Piece::Field(
                    parse_path(name.trim()).map_err(|m| format!("`{t}`: {m}"))?,
                ));
            }
            '}' => {
                return Err(format!(
                    "`{t}`: `}}` without its `{{` (write `}}}}` for a brace)"
                ));
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    if pieces.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(Template(pieces))
}

impl Template {
    /// Fills the template; `Err` names the missing or non-scalar field.
    fn render(&self, body: &Value) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Field(path) => {
                    let v = lookup(body, path).ok_or_else(|| {
                        format!("field `{}`, which the message lacks", path.join("."))
                    })?;
                    let s = scalar_text(v).ok_or_else(|| {
                        format!("field `{}` to be a string or number", path.join("."))
                    })?;
                    out.push_str(&s);
                }
            }
        }
        Ok(out)
    }

    /// Like `render`, but `{field}` alone naming a list gives one value per entry.
    fn render_list(&self, body: &Value) -> Result<Vec<String>, String> {
        if let [Piece::Field(path)] = self.0.as_slice()
            && let Some(Value::Array(items)) = lookup(body, path)
        {
            return items
                .iter()
                .map(|v| {
                    scalar_text(v)
                        .ok_or_else(|| format!("field `{}` to list strings", path.join(".")))
                })
                .collect();
        }
        Ok(vec![self.render(body)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(yaml: &str) -> Result<RuleSet, RuleError> {
        let r: Vec<Rule> = serde_norway::from_str(yaml).unwrap();
        RuleSet::compile(&r, &["rpmlint", "abicheck"])
    }

    const KOJI: &str = r#"
- name: koji
  topics: ["org.fedoraproject.*.buildsys.build.state.change"]
  when:
    - {field: new, equals: 1}
    - {field: instance, one_of: [primary]}
    - {field: name, regex: "^(bash|python3)$"}
  item: "{name}-{version}-{release}"
  type: koji_build
  arches: [x86_64, aarch64]
  tasks: [rpmlint, abicheck]
"#;

    fn koji_body(new: i64) -> Value {
        json!({"build_id": 1, "name": "bash", "version": "5.2", "release": "1.fc41", "epoch": null,
               "owner": "o", "instance": "primary", "new": new, "old": 0, "attribute": "state"})
    }

    #[test]
    fn koji_message_makes_tasks_times_arches() {
        let set = rules(KOJI).unwrap();
        let e = set.evaluate(
            "org.fedoraproject.prod.buildsys.build.state.change",
            &koji_body(1),
        );
        let got: Vec<(String, String, String)> = e
            .jobs
            .iter()
            .map(|j| (j.task.clone(), j.item.clone(), j.arch.clone()))
            .collect();
        assert_eq!(got.len(), 4, "{e:?}");
        assert!(got.contains(&("rpmlint".into(), "bash-5.2-1.fc41".into(), "x86_64".into())));
        assert!(got.contains(&(
            "abicheck".into(),
            "bash-5.2-1.fc41".into(),
            "aarch64".into()
        )));
        assert!(e.jobs.iter().all(|j| j.item_type == "koji_build"));
    }

    #[test]
    fn conditions_and_topics_filter() {
        let set = rules(KOJI).unwrap();
        let t = "org.fedoraproject.prod.buildsys.build.state.change";
        assert!(set.evaluate(t, &koji_body(0)).jobs.is_empty());
        let mut b = koji_body(1);
        b["name"] = json!("zsh");
        assert!(set.evaluate(t, &b).jobs.is_empty());
        assert!(
            set.evaluate("org.fedoraproject.prod.buildsys.tag", &koji_body(1))
                .jobs
                .is_empty()
        );
        assert!(
            set.evaluate(
                "org.fedoraproject.buildsys.build.state.change",
                &koji_body(1)
            )
            .jobs
            .is_empty()
        );
        // Floats equal to the integer still match; strings do not.
        let mut b = koji_body(1);
        b["new"] = json!(1.0);
        assert_eq!(set.evaluate(t, &b).jobs.len(), 4);
        b["new"] = json!("1");
        assert!(set.evaluate(t, &b).jobs.is_empty());
    }

    #[test]
    fn topic_globs_follow_amqp() {
        let p = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        let w = |s: &'static str| s.split('.').collect::<Vec<_>>();
        assert!(topic_matches(&p("a.#"), &w("a")));
        assert!(topic_matches(&p("a.#"), &w("a.b.c")));
        assert!(topic_matches(&p("#.c"), &w("a.b.c")));
        assert!(topic_matches(&p("#"), &w("x")));
        assert!(!topic_matches(&p("a.*"), &w("a")));
        assert!(topic_matches(&p("a.*.c"), &w("a.b.c")));
        assert!(!topic_matches(&p("a.*.c"), &w("a.b.b.c")));
        assert!(topic_matches(&p("#.b.#"), &w("a.b.c")));
    }

    #[test]
    fn missing_fields_skip_the_rule_with_a_reason() {
        let set = rules(KOJI).unwrap();
        let mut b = koji_body(1);
        b.as_object_mut().unwrap().remove("release");
        let e = set.evaluate("org.fedoraproject.prod.buildsys.build.state.change", &b);
        assert!(e.jobs.is_empty());
        assert!(e.skipped[0].contains("release"), "{:?}", e.skipped);
    }

    #[test]
    fn list_fields_expand_arches_and_duplicates_collapse() {
        let set = rules(
            "- {name: a, topics: ['#'], item: '{nvr}', type: t, arches: ['{arches}'], tasks: [rpmlint]}\n- {name: b, topics: [x], item: '{nvr}', type: t, arches: [x86_64], tasks: [rpmlint]}\n",
        )
        .unwrap();
        let e = set.evaluate(
            "x",
            &json!({"nvr": "a-1-1", "arches": ["x86_64", "ppc64le"]}),
        );
        let arches: Vec<&str> = e.jobs.iter().map(|j| j.arch.as_str()).collect();
        assert_eq!(arches, ["x86_64", "ppc64le"]);
    }

    #[test]
    fn compile_errors_name_rule_and_field() {
        let e = rules("- {name: r, topics: [a], item: x, type: t, tasks: [nope]}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "rules[0] (r).tasks[0]: unknown task `nope` (tasks: rpmlint, abicheck)"
        );
        let e = rules("- {name: r, topics: [a], when: [{field: x, regex: '('}], item: x, type: t, tasks: [rpmlint]}").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("rules[0] (r).when[0].regex: invalid regex"),
            "{e}"
        );
        let e =
            rules("- {name: r, topics: ['a.b*'], item: x, type: t, tasks: [rpmlint]}").unwrap_err();
        assert!(e.to_string().contains("topics[0]"), "{e}");
        let e =
            rules("- {name: r, topics: [a], item: '{x', type: t, tasks: [rpmlint]}").unwrap_err();
        assert!(e.to_string().contains(".item:"), "{e}");
        let e = rules("- {name: r, topics: [a], when: [{field: x, equals: 1, regex: a}], item: x, type: t, tasks: [rpmlint]}").unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
    }

    #[test]
    fn hostile_bodies_never_panic() {
        let set = rules(KOJI).unwrap();
        for body in [
            json!(null),
            json!([1, 2]),
            json!("s"),
            json!({"name": {"x": 1}}),
            json!({"new": [1]}),
        ] {
            let _ = set.evaluate("org.fedoraproject.prod.buildsys.build.state.change", &body);
        }
        let mut b = koji_body(1);
        b["release"] = json!("1\nrm -rf");
        let e = set.evaluate("org.fedoraproject.prod.buildsys.build.state.change", &b);
        assert!(e.jobs.is_empty() && !e.skipped.is_empty());
    }
}
