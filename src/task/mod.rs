//! Tasks: the formula that describes one (runtask.yml) and the `${var}` templates in it.

mod formula;
mod vars;
pub(crate) mod yaml;

pub use formula::{
    Action, DIRECTIVES, Directive, ExitMode, Formula, FormulaError, FormulaErrorKind, ResultsSource,
};
pub use vars::{Template, VarError, Vars, is_identifier};
pub use yaml::LineCol;
