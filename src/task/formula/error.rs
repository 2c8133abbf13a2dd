//! Why a formula cannot be used, and where: one line naming file, line, column and field.

use super::*;

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
