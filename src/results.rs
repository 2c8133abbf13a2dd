//! ResultsYAML: what a task reports. Parsing, validation and normalisation live here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::outcome::Outcome;

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
pub struct ResultsContext<'a> { pub source: &'a str, pub default_checkname: Option<&'a str>, pub artifacts_dir: Option<&'a str> }
#[derive(Debug, thiserror::Error)] #[error("x")] pub struct ResultsError;
pub fn parse_results(_t: &str, _c: &ResultsContext) -> Result<Vec<CheckResult>, ResultsError> { todo!() }
pub fn worst(_r: &[CheckResult]) -> Option<Outcome> { None }
pub fn last(_r: &[CheckResult]) -> Option<Outcome> { None }
