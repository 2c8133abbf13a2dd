//! Finds and destroys leaked instances: those whose run is no longer live.
//!
//! Leaks are found by the metadata every instance carries, compared with the store's live
//! runs, never by anything a process remembers, so a reaper started after a crash (or on
//! another host) sees exactly what the crashed process left.

use crate::provider::{Listed, Provider};
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its run is still live: not ours to touch.
    Live,
    /// Its run is over: a leak.
    Leaked,
    /// Its metadata cannot be read: reported, never destroyed automatically.
    Unattributed,
    /// Its run is not in this store (another farm or another data directory shares the
    /// hypervisor), or its owner is not the one asked for: not ours to touch.
    Foreign,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub instance: Listed,
    pub verdict: Verdict,
    /// Set when destroying it was attempted and failed.
    pub error: Option<String>,
}

/// Classifies every instance `provider` can see. Only runs this store knows can leak, so
/// farms (or data directories) sharing one hypervisor never reap each other's machines;
/// `owner`, when given, narrows that further to the instances one owner created.
pub async fn survey(
    provider: &dyn Provider,
    store: &Store,
    owner: Option<&str>,
) -> Result<Vec<Finding>, String> {
    let listed = provider.list().await.map_err(|e| e.to_string())?;
    let mut findings = Vec::with_capacity(listed.len());
    for instance in listed {
        let verdict = match &instance.meta {
            None => Verdict::Unattributed,
            Some(m) if owner.is_some_and(|o| o != m.owner) => Verdict::Foreign,
            Some(m) => match store.run(m.run_uuid).await.map_err(|e| e.to_string())? {
                None => Verdict::Foreign,
                Some(run) if run.state.is_terminal() => Verdict::Leaked,
                Some(_) => Verdict::Live,
            },
        };
        findings.push(Finding {
            instance,
            verdict,
            error: None,
        });
    }
    Ok(findings)
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
