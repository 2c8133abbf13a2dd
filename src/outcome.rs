//! The outcome of one check, as ResultsDB and ResultsYAML spell it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Outcomes ResultsDB accepts. The first four are Taskotron's; the rest were seen in the wild
/// and ResultsDB deployments configure them as extras.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    Passed,
    Info,
    Failed,
    NeedsInspection,
    Error,
    Waived,
    Aborted,
    Crashed,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Passed,
        Outcome::Info,
        Outcome::Failed,
        Outcome::NeedsInspection,
        Outcome::Error,
        Outcome::Waived,
        Outcome::Aborted,
        Outcome::Crashed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "PASSED",
            Outcome::Info => "INFO",
            Outcome::Failed => "FAILED",
            Outcome::NeedsInspection => "NEEDS_INSPECTION",
            Outcome::Error => "ERROR",
            Outcome::Waived => "WAIVED",
            Outcome::Aborted => "ABORTED",
            Outcome::Crashed => "CRASHED",
        }
    }

    /// Whether this outcome counts as a failure for the `exitcode` directive and summaries.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::Failed
                | Outcome::NeedsInspection
                | Outcome::Error
                | Outcome::Aborted
                | Outcome::Crashed
        )
    }

    /// Severity order used by `result_worst`: a higher number is worse.
    pub fn severity(self) -> u8 {
        match self {
            Outcome::Passed | Outcome::Waived => 0,
            Outcome::Info => 1,
            Outcome::NeedsInspection => 2,
            Outcome::Failed => 3,
            Outcome::Aborted => 4,
            Outcome::Error => 5,
            Outcome::Crashed => 6,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown outcome `{0}` (expected one of PASSED, INFO, FAILED, NEEDS_INSPECTION, ERROR, WAIVED, ABORTED, CRASHED)"
)]
pub struct UnknownOutcome(pub String);

impl FromStr for Outcome {
    type Err = UnknownOutcome;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| UnknownOutcome(s.to_string()))
    }
}
