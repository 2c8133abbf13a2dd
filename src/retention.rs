//! Retention: deletes old runs' logs and artifacts (`<data-dir>/artifacts/<uuid>/`) by age
//! (keep_days, per task or by default) and by a total size budget, oldest first. Results and
//! run records stay in the store; runs that are still going are never touched, nor anything
//! outside `<data-dir>/artifacts/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use uuid::Uuid;

use crate::store::{Store, StoreError};

/// What to keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Days a run's files are kept, unless its task says otherwise; None: forever.
    pub keep_days: Option<u32>,
    /// Per-task keep_days.
    pub task_keep_days: BTreeMap<String, u32>,
    /// Largest total size of all runs' files; the oldest finished runs go first.
    pub max_bytes: Option<u64>,
}

/// The policy file (YAML):
///
/// ```yaml
/// keep_days: 30
/// max_size: 50G
/// tasks:
///   rpmlint: { keep_days: 7 }
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    keep_days: Option<u32>,
    max_size: Option<String>,
    #[serde(default)]
    tasks: BTreeMap<String, TaskPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskPolicy {
    keep_days: u32,
}

impl Policy {
    pub fn from_yaml(text: &str) -> Result<Policy, String> {
        let f: PolicyFile = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        Ok(Policy {
            keep_days: f.keep_days,
            task_keep_days: f.tasks.into_iter().map(|(k, v)| (k, v.keep_days)).collect(),
            max_bytes: f
                .max_size
                .map(|s| parse_size(&s).map_err(|e| format!("max_size: {e}")))
                .transpose()?,
        })
    }

    fn keep_days(&self, task: &str) -> Option<u32> {
        self.task_keep_days.get(task).copied().or(self.keep_days)
    }
}

/// `1234`, `500K`, `20M`, `50G`, `1T` (binary units; a trailing `B`/`iB` is allowed).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("`{s}`: unknown unit `{c}` (use K, M, G or T)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{s}` is not a size like 500M or 50G"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Older than its task's keep_days.
    Age { keep_days: u32 },
    /// Deleted to get under the size budget.
    Budget,
}

/// One run whose files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prune {
    pub uuid: Uuid,
    pub task: String,
    pub dir: PathBuf,
    pub bytes: u64,
    pub reason: Reason,
}

/// What a pruning pass found and did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub pruned: Vec<Prune>,
    /// Bytes of all runs' files before and after.
    pub total_before: u64,
    pub total_after: u64,
}

/// Total bytes of regular files under `dir` (symlinks are not followed).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(ft) if ft.is_dir() => stack.push(e.path()),
                Ok(ft) if ft.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// Decides what to delete (`now_us`: microseconds since the epoch) and, unless `dry_run`,
/// deletes it.
pub async fn prune(
    store: &Store,
    data_dir: &Path,
    policy: &Policy,
    now_us: i64,
    dry_run: bool,
) -> Result<Report, StoreError> {
    let runs = store.runs_for_retention().await?;
    let data_dir = data_dir.to_path_buf();
    let policy = policy.clone();
    let work = move || {
        let base = data_dir.join("artifacts");
        let mut report = Report::default();
        // (dir, size, still there) of every run that has files, oldest first.
        let mut candidates: Vec<(Prune, bool)> = Vec::new();
        for (uuid, task, created, state) in runs {
            let dir = base.join(uuid.to_string());
            if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let bytes = dir_size(&dir);
            report.total_before += bytes;
            if !state.is_terminal() {
                continue;
            }
            let expired = policy.keep_days(&task).filter(|days| {
                let age_us = now_us.saturating_sub(created);
                age_us > i64::from(*days) * 86_400_000_000
            });
            candidates.push((
                Prune {
                    uuid,
                    task,
                    dir,
                    bytes,
                    reason: match expired {
                        Some(keep_days) => Reason::Age { keep_days },
                        None => Reason::Budget,
                    },
                },
                expired.is_some(),
            ));
        }
        let mut total = report.total_before;
        for (p, expired) in candidates {
            let over_budget = policy.max_bytes.is_some_and(|max| total > max);
            if expired || over_budget {
                total -= p.bytes;
                report.pruned.push(p);
            }
        }
        if !dry_run {
            for p in &report.pruned {
                if let Err(e) = std::fs::remove_dir_all(&p.dir) {
                    tracing::warn!("pruning {}: {e}", p.dir.display());
                    total += p.bytes;
                }
            }
        }
        report.total_after = total;
        report
    };
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Invalid {
            op: "pruning".into(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_policy_files_parse() {
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert_eq!(parse_size("2K").unwrap(), 2048);
        assert_eq!(parse_size("50GiB").unwrap(), 50 << 30);
        assert_eq!(parse_size("1 M").unwrap(), 1 << 20);
        let e = parse_size("12X").unwrap_err();
        assert!(e.contains("12X"), "{e}");
        assert!(parse_size("lots").is_err());
        let p = Policy::from_yaml("keep_days: 30\nmax_size: 1G\ntasks:\n  lint: {keep_days: 2}\n")
            .unwrap();
        assert_eq!(p.keep_days("lint"), Some(2));
        assert_eq!(p.keep_days("other"), Some(30));
        assert_eq!(p.max_bytes, Some(1 << 30));
        assert!(
            Policy::from_yaml("keep_dayz: 3")
                .unwrap_err()
                .contains("keep_dayz")
        );
    }

    /// Old runs of a short-lived task go by age, then the oldest finished runs by budget; a
    /// running run, results and everything outside artifacts/ stay; a dry run deletes nothing.
    #[tokio::test]
    async fn prunes_by_age_then_budget_and_keeps_live_runs() {
        use crate::store::{NewResult, NewRun, RunState};
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/db.sqlite", data.path().display()))
            .await
            .unwrap();
        let day: i64 = 86_400_000_000;
        let now: i64 = 1_000 * day;
        let mut runs = Vec::new();
        // (task, age in days, state, bytes)
        for (task, age, state, bytes) in [
            ("lint", 10, RunState::Finished, 100), // lint keeps 7 days: age
            ("build", 10, RunState::Finished, 300), // oldest finished build: budget
            ("build", 5, RunState::Failed, 300),   // kept: under budget after the first
            ("build", 20, RunState::Running, 500), // live: never touched
            ("lint", 1, RunState::Finished, 100),  // young: kept
        ] {
            let uuid = Uuid::now_v7();
            store
                .create_run(&NewRun {
                    uuid,
                    task: task.into(),
                    item: "i".into(),
                    item_type: "t".into(),
                    arch: "a".into(),
                    backend: "local".into(),
                    params: serde_json::json!({}),
                    log_path: String::new(),
                    artifacts_dir: String::new(),
                    owner: None,
                })
                .await
                .unwrap();
            if state.is_terminal() {
                store.finish_run(uuid, state, Some(0), None).await.unwrap();
            } else {
                store.set_run_state(uuid, state).await.unwrap();
            }
            sqlx::query("UPDATE runs SET created_at = $1 WHERE uuid = $2")
                .bind(now - age * day)
                .bind(uuid.to_string())
                .execute(store.pool())
                .await
                .unwrap();
            let dir = data
                .path()
                .join("artifacts")
                .join(uuid.to_string())
                .join("task");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("f"), vec![b'x'; bytes]).unwrap();
            store
                .create_result(&NewResult {
                    testcase: task.into(),
                    groups: vec![uuid.into()],
                    outcome: "PASSED".into(),
                    ..NewResult::default()
                })
                .await
                .unwrap();
            runs.push(uuid);
        }
        std::fs::create_dir_all(data.path().join("keys")).unwrap();
        std::fs::write(data.path().join("keys/k"), vec![b'k'; 10_000]).unwrap();
        let policy = Policy {
            keep_days: Some(30),
            task_keep_days: [("lint".to_string(), 7)].into_iter().collect(),
            max_bytes: Some(1_000),
        };

        let dry = prune(&store, data.path(), &policy, now, true)
            .await
            .unwrap();
        let gone: Vec<(Uuid, Reason)> = dry
            .pruned
            .iter()
            .map(|p| (p.uuid, p.reason.clone()))
            .collect();
        assert_eq!(
            gone,
            [
                (runs[0], Reason::Age { keep_days: 7 }),
                (runs[1], Reason::Budget)
            ]
        );
        assert_eq!(dry.total_before, 1_300);
        assert!(
            runs.iter()
                .all(|u| data.path().join("artifacts").join(u.to_string()).exists())
        );

        let done = prune(&store, data.path(), &policy, now, false)
            .await
            .unwrap();
        assert_eq!(done.pruned.len(), 2);
        assert_eq!(done.total_after, 900);
        for (i, u) in runs.iter().enumerate() {
            let exists = data.path().join("artifacts").join(u.to_string()).exists();
            assert_eq!(exists, i >= 2, "run {i}");
        }
        assert!(data.path().join("keys/k").exists());
        let results: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM results")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(results, 5, "results stay");
    }
}
