//! Tasks: the formula that describes one (runtask.yml), the `${var}` templates in it, and
//! the directory as it ran (`snapshot`).

mod formula;
pub mod snapshot;
mod vars;
pub(crate) mod yaml;

pub use formula::{
    Action, DIRECTIVES, Directive, ExitMode, Formula, FormulaError, FormulaErrorKind, ResultsSource,
};
pub use vars::{Template, VarError, Vars, is_identifier};
pub use yaml::LineCol;
