//! Finds and destroys leaked instances: those whose run is no longer live.
//!
//! Leaks are found by the metadata every instance carries, compared with the store's live
//! runs, never by anything a process remembers, so a reaper started after a crash (or on
//! another host) sees exactly what the crashed process left.

use std::collections::HashSet;

use crate::provider::{Listed, Provider};
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its run is still live: not ours to touch.
    Live,
    /// Its run is over or unknown: a leak.
    Leaked,
    /// Its metadata cannot be read: reported, never destroyed automatically.
    Unattributed,
    /// Owned by someone the caller excluded.
    Foreign,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub instance: Listed,
    pub verdict: Verdict,
    /// Set when destroying it was attempted and failed.
    pub error: Option<String>,
}

/// Classifies every instance `provider` can see. `owner`, when given, limits leaks to
/// instances that owner created (one farm must not reap another's machines).
pub async fn survey(
    provider: &dyn Provider,
    store: &Store,
    owner: Option<&str>,
) -> Result<Vec<Finding>, String> {
    let listed = provider.list().await.map_err(|e| e.to_string())?;
    let live: HashSet<uuid::Uuid> = store
        .live_runs()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    Ok(listed
        .into_iter()
        .map(|instance| {
            let verdict = match &instance.meta {
                None => Verdict::Unattributed,
                Some(m) if owner.is_some_and(|o| o != m.owner) => Verdict::Foreign,
                Some(m) if live.contains(&m.run_uuid) => Verdict::Live,
                Some(_) => Verdict::Leaked,
            };
            Finding {
                instance,
                verdict,
                error: None,
            }
        })
        .collect())
}

/// Destroys the leaked instances among `findings` (unless `dry_run`), recording failures.
pub async fn reap(provider: &dyn Provider, findings: &mut [Finding], dry_run: bool) {
    if dry_run {
        return;
    }
    for f in findings.iter_mut().filter(|f| f.verdict == Verdict::Leaked) {
        if let Err(e) = provider.delete(&f.instance.id).await {
            f.error = Some(e.to_string());
        }
    }
}
