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

mod error;
mod parse;
#[cfg(test)]
mod tests;

pub use error::{FormulaError, FormulaErrorKind};
use parse::Parser;

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
