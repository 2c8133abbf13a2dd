//! Finds and destroys leaked instances: those whose run is no longer live.
//!
//! Leaks are found by the metadata every instance carries, compared with the store's live
//! runs, never by anything a process remembers, so a reaper started after a crash (or on
//! another host) sees exactly what the crashed process left.

use crate::provider::{Listed, Provider};
use crate::store::Store;
use crate::util::hostname;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its run is still live: not ours to touch.
    Live,
    /// Its run is over, but a hold keeps it for someone to log in (until it expires or is
    /// released): not destroyed.
    Held,
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
    // Read before the runs: a hold released in between leaves its instance to the next round.
    let held = if listed.is_empty() {
        Vec::new()
    } else {
        store.held_runs().await.map_err(|e| e.to_string())?
    };
    let mut findings = Vec::with_capacity(listed.len());
    for instance in listed {
        let verdict = match &instance.meta {
            None => Verdict::Unattributed,
            Some(m) if owner.is_some_and(|o| o != m.owner) => Verdict::Foreign,
            Some(m) => match store.run(m.run_uuid).await.map_err(|e| e.to_string())? {
                None => Verdict::Foreign,
                Some(run) if run.state.is_terminal() && held.contains(&m.run_uuid) => Verdict::Held,
                Some(run) if run.state.is_terminal() => Verdict::Leaked,
                // A command-line run killed with SIGKILL never wrote its ending: its record
                // still says running, but the process that owned it is gone.
                Some(_) if owner_process_gone(&m.owner) => {
                    let _ = store
                        .finish_run(
                            m.run_uuid,
                            crate::store::RunState::Crashed,
                            None,
                            Some("its ferrotron process died (found by the reaper)"),
                        )
                        .await;
                    Verdict::Leaked
                }
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

/// The owner a command-line process writes on its runs and instances: `KIND@HOST:PID`.
pub fn process_owner(kind: &str) -> String {
    format!("{kind}@{}:{}", hostname(), std::process::id())
}

/// Whether `owner` names a ferrotron process on this host that no longer exists. Owners of
/// any other form (daemons, other hosts) are never judged here: daemons have leases.
fn owner_process_gone(owner: &str) -> bool {
    let Some((_, at)) = owner.split_once('@') else {
        return false;
    };
    let Some((host, pid)) = at.rsplit_once(':') else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if host != hostname() {
        return false;
    }
    // A reused pid that is not ferrotron does not keep a dead run alive.
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => !String::from_utf8_lossy(&cmd).contains("ferrotron"),
        Err(_) => true,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_local_processes_are_gone() {
        let me = process_owner("run");
        assert!(me.ends_with(&format!(":{}", std::process::id())));
        // The test binary's own command line names ferrotron: alive.
        assert!(!owner_process_gone(&me));
        // A pid that cannot exist.
        assert!(owner_process_gone(&format!(
            "run@{}:4294967295",
            hostname()
        )));
        // Other hosts, daemons and malformed owners are never judged.
        assert!(!owner_process_gone("run@elsewhere:1"));
        assert!(!owner_process_gone("daemon-7f3a"));
        assert!(!owner_process_gone(&format!("run@{}:notapid", hostname())));
    }
}
