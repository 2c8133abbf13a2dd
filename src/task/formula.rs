//! The task formula (runtask.yml): what to install and which actions to run, in order.
//!
//! Parsing goes through the positioned YAML tree in [`super::yaml`] rather than typed serde
//! structs: the checks here need to name the offending key, variable or action with its line
//! and column, and to explain what would have been accepted, which derive-generated errors do
//! not do.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use super::vars::{Template, VarError, is_identifier};
use super::yaml::{self, Kind, LineCol, Node, one_line};

/// Directives ferrotron runs, in the order error messages list them.
pub const DIRECTIVES: [&str; 5] = ["shell", "python", "resultsdb", "exitcode", "dummy"];

/// Taskotron directives that need Fedora infrastructure (Koji, Bodhi, dist-git, repositories);
/// they get their own message so a ported formula explains itself.
const FEDORA_DIRECTIVES: [&str; 7] = [
    "koji",
    "bodhi",
    "distgit",
    "createrepo",
    "xunit",
    "yumrepoinfo",
    "mash",
];

const TOP_LEVEL_KEYS: &str =
    "name, namespace, desc, maintainer, input, environment, actions (or its old name task)";

#[derive(Debug, Clone, PartialEq)]
pub struct Formula {
    /// The runtask.yml file.
    pub path: PathBuf,
    /// Its directory: the task directory shipped to the machine.
    pub dir: PathBuf,
    pub name: String,
    pub namespace: Option<String>,
    pub desc: String,
    pub maintainer: String,
    /// Variables the task expects from the command line (e.g. `koji_build`, `arch`).
    pub input_args: Vec<String>,
    /// Packages the guest needs, by package manager (`rpm`, `deb`, ...).
    pub environment: BTreeMap<String, Vec<String>>,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub name: String,
    pub directive: Directive,
    /// The variable that receives this action's output.
    pub export: Option<String>,
    /// `timeout:` in seconds: the action fails when it runs longer (ferrotron's addition;
    /// the whole task has its own timeout too).
    pub timeout: Option<std::time::Duration>,
    /// Line of the action in the formula file (0 if unknown).
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Directive {
    /// Commands run in order; the first non-zero exit fails the action.
    Shell(Vec<Template>),
    Python {
        file: Template,
        callable: Template,
        kwargs: BTreeMap<String, Template>,
    },
    ResultsDb(ResultsSource),
    ExitCode {
        mode: ExitMode,
        results: Template,
    },
    Dummy {
        result: Template,
        msg: Option<Template>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultsSource {
    /// ResultsYAML given inline (usually an exported variable).
    Text(Template),
    /// A ResultsYAML file on the machine.
    File(Template),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitMode {
    /// `result_last`: the last result's outcome decides.
    Last,
    /// `result_worst`: the most severe outcome decides.
    Worst,
}

impl Directive {
    /// The YAML key that introduces this directive.
    pub fn keyword(&self) -> &'static str {
        match self {
            Directive::Shell(_) => "shell",
            Directive::Python { .. } => "python",
            Directive::ResultsDb(_) => "resultsdb",
            Directive::ExitCode { .. } => "exitcode",
            Directive::Dummy { .. } => "dummy",
        }
    }

    /// Every template in the directive with the field it came from (`python.file`,
    /// `shell[1]`, ...), in the order the fields are documented.
    pub fn templates(&self) -> Vec<(String, &Template)> {
        match self {
            Directive::Shell(commands) => commands
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("shell[{i}]"), t))
                .collect(),
            Directive::Python {
                file,
                callable,
                kwargs,
            } => {
                let mut out = vec![
                    ("python.file".to_string(), file),
                    ("python.callable".to_string(), callable),
                ];
                out.extend(kwargs.iter().map(|(k, t)| (format!("python.{k}"), t)));
                out
            }
            Directive::ResultsDb(ResultsSource::Text(t)) => vec![("resultsdb.results".into(), t)],
            Directive::ResultsDb(ResultsSource::File(t)) => vec![("resultsdb.file".into(), t)],
            Directive::ExitCode { mode, results } => {
                let key = match mode {
                    ExitMode::Last => "exitcode.result_last",
                    ExitMode::Worst => "exitcode.result_worst",
                };
                vec![(key.into(), results)]
            }
            Directive::Dummy { result, msg } => {
                let mut out = vec![("dummy.result".to_string(), result)];
                out.extend(msg.iter().map(|m| ("dummy.msg".to_string(), m)));
                out
            }
        }
    }
}

/// A formula that cannot be used, with the place that says why.
///
/// Displays as one line: `path:line:column: field: cause`, leaving out what is unknown.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.render())]
pub struct FormulaError {
    pub path: PathBuf,
    pub at: Option<LineCol>,
    /// Where in the formula's structure, e.g. ``actions[2] (`report`): python.file``; empty
    /// for the file as a whole.
    pub field: String,
    /// Boxed to keep `Result<_, FormulaError>` small on the happy path.
    pub kind: Box<FormulaErrorKind>,
}

impl FormulaError {
    fn render(&self) -> String {
        let mut out = self.path.display().to_string();
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

#[derive(Debug, thiserror::Error)]
pub enum FormulaErrorKind {
    #[error("cannot read the task formula: {0}")]
    Read(#[source] std::io::Error),
    #[error("invalid YAML: {message}{hint}")]
    Syntax { message: String, hint: &'static str },
    #[error("the file is empty: a formula needs at least name, desc, maintainer and actions")]
    EmptyFile,
    #[error("expected {expected}, found {found}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    #[error("missing required key `{key}`")]
    Missing { key: &'static str },
    #[error("must not be empty")]
    Empty,
    #[error("unknown key `{key}` (expected {expected})")]
    UnknownKey { key: String, expected: String },
    #[error(
        "both `actions` and `task` are given; `task` is the old name of `actions`, keep only one"
    )]
    ActionsAndTask,
    #[error(
        "unknown directive `{key}` (expected one of shell, python, resultsdb, exitcode, dummy; an action may also have `name`, `export` and `timeout`)"
    )]
    UnknownDirective { key: String },
    #[error(
        "directive `{directive}` is not supported: koji, bodhi, distgit, createrepo, xunit, yumrepoinfo and mash talk to Fedora services (expected one of shell, python, resultsdb, exitcode, dummy)"
    )]
    UnsupportedDirective { directive: String },
    #[error(
        "no directive: an action needs exactly one of shell, python, resultsdb, exitcode, dummy"
    )]
    NoDirective,
    #[error(
        "second directive `{second}` after `{first}`: an action runs exactly one directive, split it into two actions"
    )]
    TwoDirectives { first: String, second: String },
    #[error("needs exactly one of {options}")]
    ExactlyOne { options: &'static str },
    #[error(
        "`{value}` is not a valid variable name: use letters, digits and `_`, not starting with a digit"
    )]
    BadName { value: String },
    #[error(transparent)]
    Template(VarError),
    #[error("unknown variable `${{{name}}}` ({})", describe_known(.known, .exported_by))]
    UnknownVariable {
        name: String,
        /// Index of the action that uses it.
        action: usize,
        /// Variables that exist at that point, sorted.
        known: Vec<String>,
        /// A later action that exports this name (index, name), when one does.
        exported_by: Option<(usize, String)>,
    },
}

fn describe_known(known: &[String], exported_by: &Option<(usize, String)>) -> String {
    let mut out = if known.is_empty() {
        "no variables exist here".to_string()
    } else {
        format!("known here: {}", known.join(", "))
    };
    if let Some((index, name)) = exported_by {
        out.push_str(&format!(
            "; it is exported only later, by actions[{index}] (`{name}`)"
        ));
    }
    out
}

impl Formula {
    /// Reads `path`: a task directory (its `runtask.yml`, or `runtask.yaml` if only that
    /// exists) or the formula file itself.
    pub fn load(path: &Path) -> Result<Formula, FormulaError> {
        let file = if path.is_dir() {
            let yml = path.join("runtask.yml");
            let yaml = path.join("runtask.yaml");
            if !yml.exists() && yaml.is_file() {
                yaml
            } else {
                yml
            }
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|e| FormulaError {
            path: file.clone(),
            at: None,
            field: String::new(),
            kind: Box::new(FormulaErrorKind::Read(e)),
        })?;
        Formula::parse(&text, &file)
    }

    /// Parses formula text; `path` names the file in errors and sets `dir`.
    pub fn parse(text: &str, path: &Path) -> Result<Formula, FormulaError> {
        Parser { text, path }.formula()
    }

    /// The ResultsDB testcase name: `namespace.name`, or `name` without a namespace.
    pub fn checkname(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}.{}", self.name),
            None => self.name.clone(),
        }
    }

    /// Checks every `${var}` against the variables that will exist when its action runs:
    /// `builtin` (known before any action) plus the exports of earlier actions. Reports the
    /// first unknown variable, in action order and then file order, with its place.
    pub fn check_variables(&self, builtin: &[&str]) -> Result<(), FormulaError> {
        let mut known: BTreeSet<&str> = builtin.iter().copied().collect();
        for (index, action) in self.actions.iter().enumerate() {
            let mut first: Option<(Option<LineCol>, String, &str)> = None;
            for (field, template) in action.directive.templates() {
                for (name, _, at) in template.variable_places() {
                    if known.contains(name) {
                        continue;
                    }
                    // Unplaced variables sort after placed ones: a place is what helps most.
                    let earlier = match &first {
                        None => true,
                        Some((prev, _, _)) => match (at, prev) {
                            (Some(a), Some(p)) => a < *p,
                            (Some(_), None) => true,
                            (None, _) => false,
                        },
                    };
                    if earlier {
                        first = Some((at, field.clone(), name));
                    }
                }
            }
            if let Some((at, field, name)) = first {
                let exported_by = self
                    .actions
                    .iter()
                    .enumerate()
                    .skip(index + 1)
                    .find(|(_, a)| a.export.as_deref() == Some(name))
                    .map(|(i, a)| (i, a.name.clone()));
                return Err(FormulaError {
                    path: self.path.clone(),
                    at,
                    field: format!("{}: {field}", action_label(index, &action.name)),
                    kind: Box::new(FormulaErrorKind::UnknownVariable {
                        name: name.to_string(),
                        action: index,
                        known: known.iter().map(|s| s.to_string()).collect(),
                        exported_by,
                    }),
                });
            }
            if let Some(export) = &action.export {
                known.insert(export);
            }
        }
        Ok(())
    }
}

fn action_label(index: usize, name: &str) -> String {
    format!("actions[{index}] (`{name}`)")
}

impl fmt::Display for ExitMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExitMode::Last => "result_last",
            ExitMode::Worst => "result_worst",
        })
    }
}

struct Parser<'a> {
    text: &'a str,
    path: &'a Path,
}

type Entries = [(Node, Node)];

impl<'a> Parser<'a> {
    fn err(&self, at: Option<usize>, field: &str, kind: FormulaErrorKind) -> FormulaError {
        FormulaError {
            path: self.path.to_path_buf(),
            at: at.map(|o| LineCol::of_offset(self.text, o)),
            field: field.to_string(),
            kind: Box::new(kind),
        }
    }

    fn wrong_type(
        &self,
        node: &Node,
        anchor: Option<usize>,
        field: &str,
        expected: &'static str,
    ) -> FormulaError {
        let kind = if node.is_null() {
            FormulaErrorKind::Empty
        } else {
            FormulaErrorKind::WrongType {
                expected,
                found: node.describe(),
            }
        };
        self.err(node.at.or(anchor), field, kind)
    }

    fn formula(&self) -> Result<Formula, FormulaError> {
        let root = yaml::parse(self.text).map_err(|e| self.syntax_error(e))?;
        let entries = match &root.kind {
            Kind::Map(entries) => entries,
            Kind::Null => return Err(self.err(None, "", FormulaErrorKind::EmptyFile)),
            _ => {
                return Err(self.err(
                    root.at,
                    "",
                    FormulaErrorKind::WrongType {
                        expected: "a mapping with name, desc, maintainer and actions",
                        found: root.describe(),
                    },
                ));
            }
        };

        let mut name = None;
        let mut namespace = None;
        let mut desc = None;
        let mut maintainer = None;
        let mut input_args = Vec::new();
        let mut environment = BTreeMap::new();
        let mut actions: Option<(&str, &Node, &Node)> = None;

        for (key, value) in entries {
            let key_name = self.key_name(key, None, "")?;
            match key_name.as_str() {
                "name" => name = Some(self.required_text(value, key, "name")?),
                "namespace" => {
                    if !value.is_null() {
                        namespace = Some(self.required_text(value, key, "namespace")?);
                    }
                }
                "desc" => desc = Some(self.required_text(value, key, "desc")?),
                "maintainer" => maintainer = Some(self.required_text(value, key, "maintainer")?),
                "input" => input_args = self.input(value, key)?,
                "environment" => environment = self.environment(value, key)?,
                "actions" | "task" => {
                    if actions.is_some() {
                        return Err(self.err(key.at, "", FormulaErrorKind::ActionsAndTask));
                    }
                    let list_key = if key_name == "task" {
                        "task"
                    } else {
                        "actions"
                    };
                    actions = Some((list_key, key, value));
                }
                _ => {
                    return Err(self.err(
                        key.at,
                        "",
                        FormulaErrorKind::UnknownKey {
                            key: key_name,
                            expected: TOP_LEVEL_KEYS.into(),
                        },
                    ));
                }
            }
        }

        let missing = |key| self.err(root.at, "", FormulaErrorKind::Missing { key });
        let name = name.ok_or_else(|| missing("name"))?;
        let desc = desc.ok_or_else(|| missing("desc"))?;
        let maintainer = maintainer.ok_or_else(|| missing("maintainer"))?;
        let (list_key, key, list) = actions.ok_or_else(|| missing("actions"))?;
        let actions = self.actions(list_key, key, list)?;

        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(Formula {
            path: self.path.to_path_buf(),
            dir,
            name,
            namespace,
            desc,
            maintainer,
            input_args,
            environment,
            actions,
        })
    }

    fn syntax_error(&self, e: yaml::SyntaxError) -> FormulaError {
        // A `${var}` left unquoted inside `{...}` or `[...]` is the commonest way to break a
        // formula: `{` ends a plain scalar in flow style, and libyaml's message does not say so.
        let line_text =
            e.at.and_then(|at| self.text.lines().nth(at.line.saturating_sub(1)));
        let hint = match line_text {
            Some(line) if line.contains("${") && e.message.contains("flow") => {
                " (a `${var}` inside `{...}` or `[...]` must be quoted: \"${var}\")"
            }
            _ => "",
        };
        FormulaError {
            path: self.path.to_path_buf(),
            at: e.at,
            field: String::new(),
            kind: Box::new(FormulaErrorKind::Syntax {
                message: e.message,
                hint,
            }),
        }
    }

    /// The text of a mapping key; keys that are lists or mappings are refused.
    fn key_name(
        &self,
        key: &Node,
        anchor: Option<usize>,
        field: &str,
    ) -> Result<String, FormulaError> {
        match &key.kind {
            Kind::Seq(_) | Kind::Map(_) | Kind::Null => Err(self.err(
                key.at.or(anchor),
                field,
                FormulaErrorKind::WrongType {
                    expected: "a plain key",
                    found: key.describe(),
                },
            )),
            _ => Ok(key.scalar_text().unwrap_or_default()),
        }
    }

    /// A non-empty scalar value, as text.
    fn required_text(&self, value: &Node, key: &Node, field: &str) -> Result<String, FormulaError> {
        let text = match &value.kind {
            Kind::Str(_) | Kind::Number(_) | Kind::Bool(_) => {
                value.scalar_text().unwrap_or_default()
            }
            _ => return Err(self.wrong_type(value, key.at, field, "a string")),
        };
        if text.trim().is_empty() {
            return Err(self.err(value.at.or(key.at), field, FormulaErrorKind::Empty));
        }
        Ok(text)
    }

    /// A list of scalars; a single scalar is taken as a one-element list and null as none.
    fn string_list(
        &self,
        value: &Node,
        key: &Node,
        field: &str,
    ) -> Result<Vec<(String, Option<usize>)>, FormulaError> {
        match &value.kind {
            Kind::Null => Ok(Vec::new()),
            Kind::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let text = self.required_text(item, key, &format!("{field}[{i}]"))?;
                    Ok((text, item.at.or(value.at).or(key.at)))
                })
                .collect(),
            Kind::Map(_) => Err(self.wrong_type(value, key.at, field, "a list of strings")),
            _ => Ok(vec![(
                self.required_text(value, key, field)?,
                value.at.or(key.at),
            )]),
        }
    }

    fn input(&self, value: &Node, key: &Node) -> Result<Vec<String>, FormulaError> {
        let entries = match &value.kind {
            Kind::Null => return Ok(Vec::new()),
            Kind::Map(entries) => entries,
            _ => return Err(self.wrong_type(value, key.at, "input", "a mapping with `args`")),
        };
        let mut args = Vec::new();
        for (k, v) in entries {
            let name = self.key_name(k, key.at, "input")?;
            if name != "args" {
                return Err(self.err(
                    k.at.or(key.at),
                    "input",
                    FormulaErrorKind::UnknownKey {
                        key: name,
                        expected: "args".into(),
                    },
                ));
            }
            for (i, (arg, at)) in self
                .string_list(v, k, "input.args")?
                .into_iter()
                .enumerate()
            {
                if !is_identifier(&arg) {
                    return Err(self.err(
                        at,
                        &format!("input.args[{i}]"),
                        FormulaErrorKind::BadName { value: arg },
                    ));
                }
                args.push(arg);
            }
        }
        Ok(args)
    }

    fn environment(
        &self,
        value: &Node,
        key: &Node,
    ) -> Result<BTreeMap<String, Vec<String>>, FormulaError> {
        let entries = match &value.kind {
            Kind::Null => return Ok(BTreeMap::new()),
            Kind::Map(entries) => entries,
            _ => {
                return Err(self.wrong_type(
                    value,
                    key.at,
                    "environment",
                    "a mapping of package lists (rpm: [...])",
                ));
            }
        };
        let mut env = BTreeMap::new();
        for (k, v) in entries {
            let kind = self.key_name(k, key.at, "environment")?;
            let field = format!("environment.{kind}");
            let packages = self.string_list(v, k, &field)?;
            env.insert(kind, packages.into_iter().map(|(p, _)| p).collect());
        }
        Ok(env)
    }

    fn actions(
        &self,
        list_key: &str,
        key: &Node,
        list: &Node,
    ) -> Result<Vec<Action>, FormulaError> {
        let items = match &list.kind {
            Kind::Seq(items) => items,
            _ => return Err(self.wrong_type(list, key.at, list_key, "a list of actions")),
        };
        if items.is_empty() {
            return Err(self.err(key.at, list_key, FormulaErrorKind::Empty));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| self.action(list_key, i, item, key.at))
            .collect()
    }

    fn action(
        &self,
        list_key: &str,
        index: usize,
        node: &Node,
        anchor: Option<usize>,
    ) -> Result<Action, FormulaError> {
        let bare_label = format!("{list_key}[{index}]");
        let entries: &Entries = match &node.kind {
            Kind::Map(entries) => entries,
            _ => {
                return Err(self.wrong_type(
                    node,
                    anchor,
                    &bare_label,
                    "a mapping with name and one directive",
                ));
            }
        };
        let at = node.at.or(anchor);
        let name = match node.get("name") {
            Some((k, v)) => self.required_text(v, k, &format!("{bare_label}.name"))?,
            None => {
                return Err(self.err(at, &bare_label, FormulaErrorKind::Missing { key: "name" }));
            }
        };
        let label = format!("{list_key}[{index}] (`{name}`)");

        let mut export = None;
        let mut timeout = None;
        let mut directive: Option<(String, &Node, &Node)> = None;
        for (k, v) in entries {
            let key = self.key_name(k, at, &label)?;
            match key.as_str() {
                "name" => {}
                "export" => {
                    let field = format!("{label}: export");
                    let value = self.required_text(v, k, &field)?;
                    if !is_identifier(&value) {
                        return Err(self.err(
                            v.at.or(k.at),
                            &field,
                            FormulaErrorKind::BadName { value },
                        ));
                    }
                    export = Some(value);
                }
                "timeout" => {
                    let field = format!("{label}: timeout");
                    let secs = match &v.kind {
                        Kind::Number(_) => v.scalar_text().and_then(|t| t.parse::<u64>().ok()),
                        _ => None,
                    };
                    match secs {
                        Some(n) if n > 0 => timeout = Some(std::time::Duration::from_secs(n)),
                        _ => {
                            return Err(self.wrong_type(
                                v,
                                k.at,
                                &field,
                                "a whole number of seconds above 0",
                            ));
                        }
                    }
                }
                d if DIRECTIVES.contains(&d) => {
                    if let Some((first, _, _)) = &directive {
                        return Err(self.err(
                            k.at.or(at),
                            &label,
                            FormulaErrorKind::TwoDirectives {
                                first: first.clone(),
                                second: key,
                            },
                        ));
                    }
                    directive = Some((key, k, v));
                }
                d if FEDORA_DIRECTIVES.contains(&d) => {
                    return Err(self.err(
                        k.at.or(at),
                        &label,
                        FormulaErrorKind::UnsupportedDirective { directive: key },
                    ));
                }
                _ => {
                    return Err(self.err(
                        k.at.or(at),
                        &label,
                        FormulaErrorKind::UnknownDirective { key },
                    ));
                }
            }
        }
        let (keyword, k, v) =
            directive.ok_or_else(|| self.err(at, &label, FormulaErrorKind::NoDirective))?;
        let directive = self.directive(&keyword, k, v, &label)?;
        let line = at.map_or(0, |o| LineCol::of_offset(self.text, o).line);
        Ok(Action {
            name,
            directive,
            export,
            timeout,
            line,
        })
    }

    fn directive(
        &self,
        keyword: &str,
        key: &Node,
        value: &Node,
        label: &str,
    ) -> Result<Directive, FormulaError> {
        let field = format!("{label}: {keyword}");
        match keyword {
            "shell" => {
                let commands = match &value.kind {
                    Kind::Seq(items) => items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| {
                            let anchor = item.at.or(value.at).or(key.at);
                            self.template(item, anchor, &format!("{field}[{i}]"))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    Kind::Map(_) => {
                        return Err(self.wrong_type(value, key.at, &field, "a list of commands"));
                    }
                    _ => vec![self.template(value, key.at, &field)?],
                };
                if commands.is_empty() {
                    return Err(self.err(key.at, &field, FormulaErrorKind::Empty));
                }
                Ok(Directive::Shell(commands))
            }
            "python" => {
                let entries =
                    self.directive_map(value, key, &field, "a mapping with file and callable")?;
                let mut file = None;
                let mut callable = None;
                let mut kwargs = BTreeMap::new();
                for (k, v) in entries {
                    let name = self.key_name(k, key.at, &field)?;
                    let sub = format!("{field}.{name}");
                    let t = self.template(v, k.at, &sub)?;
                    match name.as_str() {
                        "file" => file = Some(t),
                        "callable" => callable = Some(t),
                        _ => {
                            kwargs.insert(name, t);
                        }
                    }
                }
                let at = value.at.or(key.at);
                Ok(Directive::Python {
                    file: file.ok_or_else(|| {
                        self.err(at, &field, FormulaErrorKind::Missing { key: "file" })
                    })?,
                    callable: callable.ok_or_else(|| {
                        self.err(at, &field, FormulaErrorKind::Missing { key: "callable" })
                    })?,
                    kwargs,
                })
            }
            "resultsdb" => {
                let (which, t) = self.one_of(
                    value,
                    key,
                    &field,
                    &["results", "file"],
                    "`results` (ResultsYAML text) or `file` (a ResultsYAML file)",
                )?;
                Ok(Directive::ResultsDb(if which == "file" {
                    ResultsSource::File(t)
                } else {
                    ResultsSource::Text(t)
                }))
            }
            "exitcode" => {
                let (which, results) = self.one_of(
                    value,
                    key,
                    &field,
                    &["result_last", "result_worst"],
                    "`result_last` or `result_worst`",
                )?;
                let mode = if which == "result_worst" {
                    ExitMode::Worst
                } else {
                    ExitMode::Last
                };
                Ok(Directive::ExitCode { mode, results })
            }
            _ => {
                let entries =
                    self.directive_map(value, key, &field, "a mapping with result (and msg)")?;
                let mut result = None;
                let mut msg = None;
                for (k, v) in entries {
                    let name = self.key_name(k, key.at, &field)?;
                    let sub = format!("{field}.{name}");
                    match name.as_str() {
                        "result" => result = Some(self.template(v, k.at, &sub)?),
                        "msg" => msg = Some(self.template(v, k.at, &sub)?),
                        _ => {
                            return Err(self.err(
                                k.at.or(key.at),
                                &field,
                                FormulaErrorKind::UnknownKey {
                                    key: name,
                                    expected: "result, msg".into(),
                                },
                            ));
                        }
                    }
                }
                let at = value.at.or(key.at);
                Ok(Directive::Dummy {
                    result: result.ok_or_else(|| {
                        self.err(at, &field, FormulaErrorKind::Missing { key: "result" })
                    })?,
                    msg,
                })
            }
        }
    }

    fn directive_map<'n>(
        &self,
        value: &'n Node,
        key: &Node,
        field: &str,
        expected: &'static str,
    ) -> Result<&'n Entries, FormulaError> {
        match &value.kind {
            Kind::Map(entries) => Ok(entries),
            _ => Err(self.wrong_type(value, key.at, field, expected)),
        }
    }

    /// A directive mapping holding exactly one of `options`, and nothing else.
    fn one_of(
        &self,
        value: &Node,
        key: &Node,
        field: &str,
        options: &[&'static str],
        described: &'static str,
    ) -> Result<(&'static str, Template), FormulaError> {
        let entries = self.directive_map(value, key, field, described)?;
        let mut found: Option<(&'static str, Template)> = None;
        for (k, v) in entries {
            let name = self.key_name(k, key.at, field)?;
            let Some(option) = options.iter().copied().find(|o| *o == name) else {
                return Err(self.err(
                    k.at.or(key.at),
                    field,
                    FormulaErrorKind::UnknownKey {
                        key: name,
                        expected: options.join(", "),
                    },
                ));
            };
            if found.is_some() {
                return Err(self.err(
                    k.at.or(key.at),
                    field,
                    FormulaErrorKind::ExactlyOne { options: described },
                ));
            }
            found = Some((option, self.template(v, k.at, &format!("{field}.{name}"))?));
        }
        found.ok_or_else(|| {
            self.err(
                value.at.or(key.at),
                field,
                FormulaErrorKind::ExactlyOne { options: described },
            )
        })
    }

    /// A scalar value as a template, each variable placed in the file.
    ///
    /// Verbatim scalars map offsets directly; for rewritten ones (escapes, block scalars) the
    /// `${name}` text is searched for from `anchor` onwards, which finds it in all but
    /// contrived cases and otherwise leaves the anchor as the place.
    fn template(
        &self,
        node: &Node,
        anchor: Option<usize>,
        field: &str,
    ) -> Result<Template, FormulaError> {
        let text = match &node.kind {
            Kind::Str(_) | Kind::Number(_) | Kind::Bool(_) => {
                node.scalar_text().unwrap_or_default()
            }
            _ => return Err(self.wrong_type(node, anchor, field, "a string, number or boolean")),
        };
        let exact_base = node.at.filter(|_| node.verbatim);
        let search_from = node.at.or(anchor);
        // The k-th `needle` in the value is taken to be the k-th one in the source after the
        // anchor, so repeated variables each get their own place.
        let place = |offset: usize, needle: &str| -> Option<usize> {
            if let Some(base) = exact_base {
                return Some(base + offset);
            }
            let from = search_from?;
            let nth = text
                .get(..offset)
                .map_or(0, |before| before.matches(needle).count());
            let found = self
                .text
                .get(from..)
                .and_then(|rest| rest.match_indices(needle).nth(nth))
                .map(|(rel, _)| from + rel);
            Some(found.unwrap_or(from))
        };
        let mut template = match Template::parse(&text) {
            Ok(t) => t,
            Err(e) => {
                let at = match &e {
                    VarError::Unterminated { offset } => place(*offset, "${"),
                    VarError::InvalidName { name, offset } => {
                        place(*offset, &format!("${{{name}}}"))
                    }
                    VarError::Unknown { .. } => search_from,
                };
                return Err(self.err(at, field, FormulaErrorKind::Template(e)));
            }
        };
        template.locate(|offset, name| {
            place(offset, &format!("${{{name}}}")).map(|o| LineCol::of_offset(self.text, o))
        });
        Ok(template)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Vars;
    use proptest::prelude::*;

    const BUILTIN: &[&str] = &[
        "workdir",
        "artifactsdir",
        "uuid",
        "arch",
        "jobid",
        "koji_build",
    ];

    /// The example from shared/reference/formats.md, verbatim.
    const FORMATS_EXAMPLE: &str = r#"name: python-versions            # required
namespace: dist                  # optional
desc: check each RPM for Python deps   # required
maintainer: someone              # required
input:
  args: [koji_build, arch]       # which variables the task expects
environment:
  rpm: [python3-dnf]             # packages the guest needs (install before actions)
actions:
  - name: run the check
    python: {file: check.py, callable: run, workdir: "${workdir}", build: "${koji_build}"}
    export: check_output         # the action's return value becomes ${check_output}
  - name: report
    resultsdb: {results: "${check_output}"}
"#;

    fn parse(text: &str) -> Result<Formula, FormulaError> {
        Formula::parse(text, Path::new("tasks/rpmlint/runtask.yml"))
    }

    fn err(text: &str) -> FormulaError {
        match parse(text) {
            Ok(f) => panic!("expected an error, parsed {f:#?}"),
            Err(e) => e,
        }
    }

    fn at(line: usize, column: usize) -> Option<LineCol> {
        Some(LineCol { line, column })
    }

    fn t(s: &str) -> Template {
        Template::parse(s).unwrap()
    }

    /// A minimal valid header, so each test shows only the actions it is about.
    fn with_actions(actions: &str) -> String {
        format!("name: rpmlint\ndesc: run rpmlint\nmaintainer: someone\nactions:\n{actions}")
    }

    #[test]
    fn formats_md_example_parses() {
        let f = parse(FORMATS_EXAMPLE).unwrap();
        assert_eq!(f.path, Path::new("tasks/rpmlint/runtask.yml"));
        assert_eq!(f.dir, Path::new("tasks/rpmlint"));
        assert_eq!(f.name, "python-versions");
        assert_eq!(f.namespace.as_deref(), Some("dist"));
        assert_eq!(f.checkname(), "dist.python-versions");
        assert_eq!(f.desc, "check each RPM for Python deps");
        assert_eq!(f.maintainer, "someone");
        assert_eq!(f.input_args, ["koji_build", "arch"]);
        assert_eq!(f.environment.get("rpm").unwrap(), &["python3-dnf"]);
        assert_eq!(f.actions.len(), 2);

        let run = &f.actions[0];
        assert_eq!(run.name, "run the check");
        assert_eq!(run.export.as_deref(), Some("check_output"));
        assert_eq!(run.line, 10);
        let Directive::Python {
            file,
            callable,
            kwargs,
        } = &run.directive
        else {
            panic!("{:?}", run.directive);
        };
        assert_eq!(file.as_source(), "check.py");
        assert_eq!(callable.as_source(), "run");
        assert_eq!(kwargs.keys().collect::<Vec<_>>(), ["build", "workdir"]);
        let vars: Vars = [("workdir", "/w"), ("koji_build", "xchat-1-1.fc40")]
            .into_iter()
            .collect();
        assert_eq!(kwargs["build"].render(&vars).unwrap(), "xchat-1-1.fc40");

        let report = &f.actions[1];
        assert_eq!(report.line, 13);
        assert_eq!(report.export, None);
        assert_eq!(
            report.directive,
            Directive::ResultsDb(ResultsSource::Text(t("${check_output}")))
        );
        f.check_variables(BUILTIN).unwrap();
    }

    #[test]
    fn no_namespace_checkname_is_name() {
        let f = parse(&with_actions("  - name: a\n    shell: [true]\n")).unwrap();
        assert_eq!(f.namespace, None);
        assert_eq!(f.checkname(), "rpmlint");
        assert_eq!(f.dir, Path::new("tasks/rpmlint"));
        assert!(f.input_args.is_empty());
        assert!(f.environment.is_empty());
        let bare = Formula::parse(
            &with_actions("  - {name: a, shell: x}\n"),
            Path::new("runtask.yml"),
        );
        assert_eq!(bare.unwrap().dir, Path::new("."));
    }

    #[test]
    fn task_is_a_synonym_of_actions() {
        let text = "name: n\ndesc: d\nmaintainer: m\ntask:\n  - name: say\n    shell: echo hi\n";
        let f = parse(text).unwrap();
        assert_eq!(f.actions[0].directive, Directive::Shell(vec![t("echo hi")]));
        assert_eq!(f.actions[0].line, 5);
    }

    #[test]
    fn task_and_actions_together_is_an_error() {
        let e = err(&format!(
            "{}task:\n  - {{name: b, shell: y}}\n",
            with_actions("  - {name: a, shell: x}\n")
        ));
        assert!(matches!(*e.kind, FormulaErrorKind::ActionsAndTask), "{e}");
        assert_eq!(e.at, at(6, 1));
    }

    #[test]
    fn every_directive() {
        let text = with_actions(
            r#"  - name: one command
    shell: make check
  - name: commands
    shell:
      - cd ${workdir}
      - ./run --arch=${arch} 2>&1 | tee $HOME/log
  - name: python
    python:
      file: check.py
      callable: run
      count: 3
      ratio: 1.5
      verbose: true
      workdir: ${workdir}
    export: out
  - name: results text
    resultsdb:
      results: ${out}
  - name: results file
    resultsdb: {file: "${artifactsdir}/results.yml"}
  - name: last
    exitcode: {result_last: "${out}"}
  - name: worst
    exitcode:
      result_worst: ${out}
  - name: dummy
    dummy: {result: PASS}
  - name: dummy with msg
    dummy: {result: FAIL, msg: "it failed on ${arch}"}
"#,
        );
        let f = parse(&text).unwrap();
        let d: Vec<&Directive> = f.actions.iter().map(|a| &a.directive).collect();
        assert_eq!(d[0], &Directive::Shell(vec![t("make check")]));
        assert_eq!(
            d[1],
            &Directive::Shell(vec![
                t("cd ${workdir}"),
                t("./run --arch=${arch} 2>&1 | tee $HOME/log")
            ])
        );
        let kwargs: BTreeMap<String, Template> = [
            ("count", "3"),
            ("ratio", "1.5"),
            ("verbose", "true"),
            ("workdir", "${workdir}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), t(v)))
        .collect();
        assert_eq!(
            d[2],
            &Directive::Python {
                file: t("check.py"),
                callable: t("run"),
                kwargs
            }
        );
        assert_eq!(f.actions[2].export.as_deref(), Some("out"));
        assert_eq!(
            d[3],
            &Directive::ResultsDb(ResultsSource::Text(t("${out}")))
        );
        assert_eq!(
            d[4],
            &Directive::ResultsDb(ResultsSource::File(t("${artifactsdir}/results.yml")))
        );
        assert_eq!(
            d[5],
            &Directive::ExitCode {
                mode: ExitMode::Last,
                results: t("${out}")
            }
        );
        assert_eq!(
            d[6],
            &Directive::ExitCode {
                mode: ExitMode::Worst,
                results: t("${out}")
            }
        );
        assert_eq!(
            d[7],
            &Directive::Dummy {
                result: t("PASS"),
                msg: None
            }
        );
        assert_eq!(
            d[8],
            &Directive::Dummy {
                result: t("FAIL"),
                msg: Some(t("it failed on ${arch}"))
            }
        );
        let keywords: Vec<_> = d.iter().map(|d| d.keyword()).collect();
        assert_eq!(
            keywords,
            [
                "shell",
                "shell",
                "python",
                "resultsdb",
                "resultsdb",
                "exitcode",
                "exitcode",
                "dummy",
                "dummy"
            ]
        );
        f.check_variables(BUILTIN).unwrap();
    }

    #[test]
    fn templates_name_their_fields() {
        let f = parse(&with_actions(
            "  - name: p\n    python: {file: f.py, callable: c, x: \"${a}\"}\n  - name: s\n    shell: [a, b]\n",
        ))
        .unwrap();
        let fields: Vec<String> = f
            .actions
            .iter()
            .flat_map(|a| a.directive.templates())
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            fields,
            [
                "python.file",
                "python.callable",
                "python.x",
                "shell[0]",
                "shell[1]"
            ]
        );
    }

    #[test]
    fn bad_indentation_is_a_syntax_error_with_place() {
        let text = "name: n\ndesc: d\nmaintainer: m\nactions:\n  - name: a\n    shell: [x]\n   export: y\n";
        let e = err(text);
        let FormulaErrorKind::Syntax { message, .. } = &*e.kind else {
            panic!("{e}");
        };
        assert!(!message.is_empty());
        assert_eq!(e.at.map(|a| a.line), Some(7), "{e}");
        let shown = e.to_string();
        assert!(shown.starts_with("tasks/rpmlint/runtask.yml:7:"), "{shown}");
        assert!(!shown.contains('\n'));
    }

    #[test]
    fn unquoted_variable_in_flow_mapping_gets_a_hint() {
        let e = err(&with_actions(
            "  - name: a\n    python: {file: f.py, callable: c, w: ${workdir}}\n",
        ));
        assert!(matches!(*e.kind, FormulaErrorKind::Syntax { .. }), "{e}");
        assert!(e.to_string().contains("must be quoted"), "{e}");
        assert_eq!(e.at.map(|a| a.line), Some(6));
    }

    #[test]
    fn block_context_errors_get_no_flow_hint() {
        let e = err(&with_actions("  - name: a\n    shell: echo ${x}: y\n"));
        assert!(
            matches!(*e.kind, FormulaErrorKind::Syntax { hint: "", .. }),
            "{e}"
        );
        assert_eq!(e.at.map(|a| a.line), Some(6));
    }

    #[test]
    fn unknown_directive_names_action_and_place() {
        let text = with_actions(
            "  - name: fetch\n    shell: [x]\n  - name: report\n    frobnicate: {x: 1}\n",
        );
        let e = err(&text);
        assert!(
            matches!(&*e.kind, FormulaErrorKind::UnknownDirective { key } if key == "frobnicate"),
            "{e}"
        );
        assert_eq!(e.field, "actions[1] (`report`)");
        assert_eq!(e.at, at(8, 5));
        assert_eq!(
            e.to_string(),
            "tasks/rpmlint/runtask.yml:8:5: actions[1] (`report`): unknown directive `frobnicate` \
             (expected one of shell, python, resultsdb, exitcode, dummy; an action may also have `name`, `export` and `timeout`)"
        );
    }

    #[test]
    fn fedora_directive_is_explained() {
        // taskotron-python-versions' runtask.yml, as published.
        let text = "name: python-versions\nnamespace: dist\ndesc: |\n  Download and check.\nmaintainer: churchyard\n\ninput:\n    args:\n        - koji_build\n\nenvironment:\n    rpm:\n        - rpm-python\n        - python2-dnf\n\nactions:\n    - name: download rpms from koji\n      koji:\n        action: download\n        koji_build: ${koji_build}\n        arch: ['all']\n        src: True\n";
        let e = err(text);
        assert!(
            matches!(&*e.kind, FormulaErrorKind::UnsupportedDirective { directive } if directive == "koji"),
            "{e}"
        );
        assert_eq!(e.at, at(18, 7));
        assert_eq!(e.field, "actions[0] (`download rpms from koji`)");
        let shown = e.to_string();
        assert!(
            shown.contains(
                "directive `koji` is not supported: koji, bodhi, distgit, createrepo, xunit"
            ),
            "{shown}"
        );
        assert!(
            shown.contains("shell, python, resultsdb, exitcode, dummy"),
            "{shown}"
        );
    }

    #[test]
    fn unknown_variable_in_shell_command() {
        let f = parse(&with_actions(
            "  - name: build\n    shell:\n      - echo ok\n      - make -C ${workdri} all\n",
        ))
        .unwrap();
        let e = f.check_variables(BUILTIN).unwrap_err();
        let FormulaErrorKind::UnknownVariable {
            name,
            action,
            known,
            exported_by,
        } = &*e.kind
        else {
            panic!("{e}");
        };
        assert_eq!(name, "workdri");
        assert_eq!(*action, 0);
        assert!(known.contains(&"workdir".to_string()));
        assert_eq!(*exported_by, None);
        assert_eq!(e.field, "actions[0] (`build`): shell[1]");
        assert_eq!(e.at, at(8, 17));
        let shown = e.to_string();
        assert!(
            shown.starts_with("tasks/rpmlint/runtask.yml:8:17: actions[0] (`build`): shell[1]: unknown variable `${workdri}` (known here: arch, artifactsdir,"),
            "{shown}"
        );
    }

    #[test]
    fn unknown_variable_in_python_kwargs() {
        let f = parse(&with_actions(
            "  - name: check\n    python:\n      file: check.py\n      callable: run\n      build: ${koji_build}\n      update: \"${bodhi_update}\"\n",
        ))
        .unwrap();
        let e = f.check_variables(BUILTIN).unwrap_err();
        assert!(
            matches!(&*e.kind, FormulaErrorKind::UnknownVariable { name, .. } if name == "bodhi_update"),
            "{e}"
        );
        assert_eq!(e.field, "actions[0] (`check`): python.update");
        assert_eq!(e.at, at(10, 16));
        // With the variable provided the same formula is fine.
        f.check_variables(&["koji_build", "bodhi_update"]).unwrap();
    }

    #[test]
    fn variable_used_before_its_export() {
        let f = parse(&with_actions(
            "  - name: report\n    resultsdb:\n      results: ${output}\n  - name: check\n    python: {file: c.py, callable: run}\n    export: output\n",
        ))
        .unwrap();
        let e = f.check_variables(BUILTIN).unwrap_err();
        let FormulaErrorKind::UnknownVariable {
            name,
            action,
            exported_by,
            ..
        } = &*e.kind
        else {
            panic!("{e}");
        };
        assert_eq!(name, "output");
        assert_eq!(*action, 0);
        assert_eq!(exported_by.as_ref(), Some(&(1, "check".to_string())));
        assert_eq!(e.at, at(7, 16));
        assert!(
            e.to_string()
                .ends_with("it is exported only later, by actions[1] (`check`))"),
            "{e}"
        );
    }

    #[test]
    fn export_is_visible_to_later_actions_only() {
        let f = parse(&with_actions(
            "  - name: check\n    python: {file: c.py, callable: run}\n    export: output\n  - name: report\n    resultsdb: {results: \"${output}\"}\n",
        ))
        .unwrap();
        f.check_variables(&[]).unwrap();
        let own = parse(&with_actions(
            "  - name: check\n    shell: [\"echo ${output}\"]\n    export: output\n",
        ))
        .unwrap();
        assert!(
            own.check_variables(&[]).is_err(),
            "an action cannot use its own export"
        );
    }

    #[test]
    fn first_unknown_variable_is_the_first_in_the_file() {
        let f = parse(&with_actions(
            "  - name: p\n    python:\n      file: ${zzz}.py\n      callable: run\n      aaa: ${aaa}\n",
        ))
        .unwrap();
        let e = f.check_variables(&[]).unwrap_err();
        assert!(
            matches!(&*e.kind, FormulaErrorKind::UnknownVariable { name, .. } if name == "zzz"),
            "{e}"
        );
        assert_eq!(e.at, at(7, 13));
    }

    #[test]
    fn variables_in_block_and_escaped_scalars_are_placed() {
        let f = parse(&with_actions(
            "  - name: s\n    shell:\n      - |\n        set -e\n        echo ${one} ${one} ${two}\n      - \"tab\\there ${three}\"\n",
        ))
        .unwrap();
        let places: Vec<(String, Option<LineCol>)> = f.actions[0]
            .directive
            .templates()
            .into_iter()
            .flat_map(|(_, t)| {
                t.variable_places()
                    .map(|(n, _, a)| (n.to_string(), a))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            places,
            [
                ("one".into(), at(9, 14)),
                ("one".into(), at(9, 21)),
                ("two".into(), at(9, 28)),
                ("three".into(), at(10, 20)),
            ]
        );
    }

    #[test]
    fn missing_required_keys() {
        for (missing, text) in [
            (
                "name",
                "desc: d\nmaintainer: m\nactions: [{name: a, shell: x}]\n",
            ),
            (
                "desc",
                "name: n\nmaintainer: m\nactions: [{name: a, shell: x}]\n",
            ),
            (
                "maintainer",
                "name: n\ndesc: d\nactions: [{name: a, shell: x}]\n",
            ),
            ("actions", "name: n\ndesc: d\nmaintainer: m\n"),
        ] {
            let e = err(text);
            assert!(
                matches!(&*e.kind, FormulaErrorKind::Missing { key } if *key == missing),
                "{missing}: {e}"
            );
            assert_eq!(e.at, at(1, 1));
            assert!(
                e.to_string()
                    .contains(&format!("missing required key `{missing}`")),
                "{e}"
            );
        }
    }

    #[test]
    fn required_key_without_value_is_empty() {
        let e = err("name: n\ndesc:\nmaintainer: m\nactions: [{name: a, shell: x}]\n");
        assert!(matches!(*e.kind, FormulaErrorKind::Empty), "{e}");
        assert_eq!(e.field, "desc");
        assert_eq!(e.at, at(2, 1));
    }

    #[test]
    fn action_without_name() {
        let e = err(&with_actions("  - name: a\n    shell: x\n  - shell: y\n"));
        assert!(
            matches!(&*e.kind, FormulaErrorKind::Missing { key } if *key == "name"),
            "{e}"
        );
        assert_eq!(e.field, "actions[1]");
        assert_eq!(e.at, at(7, 5));
    }

    #[test]
    fn two_directives_point_at_the_second() {
        let e = err(&with_actions(
            "  - name: both\n    shell: [make]\n    dummy: {result: PASS}\n",
        ));
        assert!(
            matches!(&*e.kind, FormulaErrorKind::TwoDirectives { first, second } if first == "shell" && second == "dummy"),
            "{e}"
        );
        assert_eq!(e.at, at(7, 5));
        assert_eq!(e.field, "actions[0] (`both`)");
    }

    #[test]
    fn zero_directives() {
        let e = err(&with_actions("  - name: nothing\n    export: x\n"));
        assert!(matches!(*e.kind, FormulaErrorKind::NoDirective), "{e}");
        assert_eq!(e.at, at(5, 5));
    }

    #[test]
    fn unterminated_variable_is_placed() {
        let e = err(&with_actions(
            "  - name: s\n    shell:\n      - echo ${workdir\n",
        ));
        assert!(
            matches!(
                *e.kind,
                FormulaErrorKind::Template(VarError::Unterminated { offset: 5 })
            ),
            "{e}"
        );
        assert_eq!(e.field, "actions[0] (`s`): shell[0]");
        assert_eq!(e.at, at(7, 14));
        assert!(e.to_string().contains("unterminated `${`"), "{e}");

        let e = err(&with_actions(
            "  - name: s\n    shell: |\n      echo ok\n      echo ${x} ${y\n",
        ));
        assert!(
            matches!(
                *e.kind,
                FormulaErrorKind::Template(VarError::Unterminated { .. })
            ),
            "{e}"
        );
        assert_eq!(e.at, at(8, 17));
    }

    #[test]
    fn invalid_variable_name_is_placed() {
        let e = err(&with_actions(
            "  - name: s\n    dummy: {result: \"${a b}\"}\n",
        ));
        assert!(
            matches!(&*e.kind, FormulaErrorKind::Template(VarError::InvalidName { name, .. }) if name == "a b"),
            "{e}"
        );
        assert_eq!(e.at, at(6, 22));
    }

    #[test]
    fn export_must_be_an_identifier() {
        let e = err(&with_actions(
            "  - name: s\n    shell: [x]\n    export: check-output\n",
        ));
        assert!(
            matches!(&*e.kind, FormulaErrorKind::BadName { value } if value == "check-output"),
            "{e}"
        );
        assert_eq!(e.field, "actions[0] (`s`): export");
        assert_eq!(e.at, at(7, 13));
    }

    #[test]
    fn unknown_top_level_key_lists_accepted_keys() {
        let e = err(&format!(
            "{}schedule: daily\n",
            with_actions("  - {name: a, shell: x}\n")
        ));
        assert!(
            matches!(&*e.kind, FormulaErrorKind::UnknownKey { key, .. } if key == "schedule"),
            "{e}"
        );
        assert_eq!(e.at, at(6, 1));
        assert!(
            e.to_string().contains(
                "expected name, namespace, desc, maintainer, input, environment, actions"
            ),
            "{e}"
        );
    }

    #[test]
    fn directive_argument_errors() {
        let cases: &[(&str, &str)] = &[
            (
                "  - name: p\n    python: {callable: run}\n",
                "missing required key `file`",
            ),
            (
                "  - name: p\n    python: {file: x.py}\n",
                "missing required key `callable`",
            ),
            (
                "  - name: p\n    python: {file: x.py, callable: run, opts: {a: 1}}\n",
                "expected a string, number or boolean, found a mapping",
            ),
            (
                "  - name: p\n    python: run.py\n",
                "expected a mapping with file and callable, found a string",
            ),
            (
                "  - name: r\n    resultsdb: {}\n",
                "needs exactly one of `results`",
            ),
            (
                "  - name: r\n    resultsdb: {results: a, file: b}\n",
                "needs exactly one of `results`",
            ),
            (
                "  - name: r\n    resultsdb: {result: a}\n",
                "unknown key `result` (expected results, file)",
            ),
            (
                "  - name: e\n    exitcode: {result_first: a}\n",
                "unknown key `result_first` (expected result_last, result_worst)",
            ),
            (
                "  - name: d\n    dummy: {msg: hi}\n",
                "missing required key `result`",
            ),
            (
                "  - name: d\n    dummy: {result: PASS, extra: 1}\n",
                "unknown key `extra` (expected result, msg)",
            ),
            ("  - name: s\n    shell: []\n", "must not be empty"),
            ("  - name: s\n    shell:\n", "must not be empty"),
            (
                "  - name: s\n    shell: [[nested]]\n",
                "expected a string, number or boolean, found a list",
            ),
            (
                "  - just a string\n",
                "expected a mapping with name and one directive, found a string",
            ),
        ];
        for (actions, expected) in cases {
            let e = err(&with_actions(actions));
            let shown = e.to_string();
            assert!(shown.contains(expected), "{actions:?}: {shown}");
            assert!(e.at.is_some_and(|a| a.line >= 5), "{actions:?}: {shown}");
            assert!(!shown.contains('\n'));
        }
    }

    #[test]
    fn structural_errors() {
        let e = err("");
        assert!(matches!(*e.kind, FormulaErrorKind::EmptyFile), "{e}");
        assert_eq!(
            e.to_string().split(':').next(),
            Some("tasks/rpmlint/runtask.yml")
        );

        let e = err("- a\n- b\n");
        assert!(
            matches!(
                *e.kind,
                FormulaErrorKind::WrongType {
                    found: "a list",
                    ..
                }
            ),
            "{e}"
        );

        let e = err("name: n\ndesc: d\nmaintainer: m\nactions: []\n");
        assert!(matches!(*e.kind, FormulaErrorKind::Empty), "{e}");
        assert_eq!(e.at, at(4, 1));

        let e = err("name: n\ndesc: d\nmaintainer: m\nactions: {a: 1}\n");
        assert!(
            matches!(
                *e.kind,
                FormulaErrorKind::WrongType {
                    found: "a mapping",
                    ..
                }
            ),
            "{e}"
        );

        let e = err("name: n\nname: m\n");
        assert!(
            matches!(&*e.kind, FormulaErrorKind::Syntax { message, .. } if message == "duplicate key `name`"),
            "{e}"
        );
        assert_eq!(e.at, at(2, 1));

        let e = err(&format!(
            "input:\n  args: [koji build]\n{}",
            with_actions("  - {name: a, shell: x}\n")
        ));
        assert!(
            matches!(&*e.kind, FormulaErrorKind::BadName { value } if value == "koji build"),
            "{e}"
        );
        assert_eq!(e.field, "input.args[0]");
        assert_eq!(e.at, at(2, 10));
    }

    #[test]
    fn environment_lists() {
        let f = parse(&format!(
            "environment:\n  rpm: [a, b]\n  deb: c\n  pip:\n{}",
            with_actions("  - {name: a, shell: x}\n")
        ))
        .unwrap();
        assert_eq!(f.environment["rpm"], ["a", "b"]);
        assert_eq!(f.environment["deb"], ["c"]);
        assert!(f.environment["pip"].is_empty());
    }

    #[test]
    fn load_from_directory_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("runtask.yml");
        std::fs::write(&file, FORMATS_EXAMPLE).unwrap();
        let from_dir = Formula::load(dir.path()).unwrap();
        assert_eq!(from_dir.path, file);
        assert_eq!(from_dir.dir, dir.path());
        let from_file = Formula::load(&file).unwrap();
        assert_eq!(from_dir, from_file);

        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("runtask.yaml"), FORMATS_EXAMPLE).unwrap();
        assert_eq!(Formula::load(other.path()).unwrap().name, "python-versions");

        let empty = tempfile::tempdir().unwrap();
        let e = Formula::load(empty.path()).unwrap_err();
        assert!(matches!(*e.kind, FormulaErrorKind::Read(_)), "{e}");
        let shown = e.to_string();
        assert!(
            shown.starts_with(&empty.path().join("runtask.yml").display().to_string()),
            "{shown}"
        );
        assert!(shown.contains("cannot read the task formula"), "{shown}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn parse_never_panics_on_text(s in "\\PC{0,200}") {
            if let Ok(f) = parse(&s) {
                let _ = f.check_variables(BUILTIN);
            }
        }

        #[test]
        fn parse_never_panics_on_yamlish(text in crate::task::yaml::strategies::text_from(crate::task::yaml::strategies::value())) {
            match parse(&text) {
                Ok(f) => { let _ = f.check_variables(BUILTIN); }
                Err(e) => prop_assert!(!e.to_string().contains('\n'), "{}", e),
            }
        }

        #[test]
        fn parse_never_panics_on_formula_shaped_input(
            actions in prop::collection::vec(crate::task::yaml::strategies::value(), 1..4),
            mutate in any::<bool>(),
        ) {
            let mut root = serde_norway::Mapping::new();
            for (k, v) in [("name", "n"), ("desc", "d"), ("maintainer", "m")] {
                root.insert(k.into(), v.into());
            }
            root.insert("actions".into(), serde_norway::Value::Sequence(actions));
            let mut text = serde_norway::to_string(&root).unwrap_or_default();
            if mutate {
                text = text.replacen("  ", " ", 1);
            }
            match parse(&text) {
                Ok(f) => { let _ = f.check_variables(BUILTIN); }
                Err(e) => prop_assert!(!e.to_string().contains('\n'), "{}", e),
            }
        }
    }

    #[test]
    fn action_timeouts_are_whole_seconds() {
        let ok = "name: n\ndesc: d\nmaintainer: m\nactions:\n  - name: a\n    shell: [x]\n    timeout: 30\n";
        let f = Formula::parse(ok, Path::new("t.yml")).unwrap();
        assert_eq!(
            f.actions[0].timeout,
            Some(std::time::Duration::from_secs(30))
        );
        for bad in ["0", "-1", "soon", "1.5"] {
            let text = format!(
                "name: n\ndesc: d\nmaintainer: m\nactions:\n  - name: a\n    shell: [x]\n    timeout: {bad}\n"
            );
            let e = Formula::parse(&text, Path::new("t.yml"))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("t.yml:7:") && e.contains("timeout"),
                "{bad}: {e}"
            );
        }
    }
}
