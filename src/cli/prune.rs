//! `ferrotron prune`: apply the retention policy to runs' logs and artifacts.

use std::path::PathBuf;

use clap::Args;

use super::GlobalArgs;
use crate::retention::{Policy, Reason, parse_size, prune};
use crate::runner::exit;
use crate::store::Store;

#[derive(Args, Debug)]
#[command(
    after_help = "Results and run records stay; only files under DATA_DIR/artifacts/<uuid>/ \
of finished runs are deleted. Flags override the policy file.\n\nPolicy file (YAML):\n  \
keep_days: 30\n  max_size: 50G\n  tasks:\n    rpmlint: { keep_days: 7 }"
)]
pub struct PruneArgs {
    /// Show what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Policy file [default: DATA_DIR/retention.yaml when it exists].
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// Days to keep a run's files (all tasks without their own setting).
    #[arg(long, value_name = "DAYS")]
    pub keep_days: Option<u32>,
    /// Days to keep one task's runs: TASK=DAYS (repeatable).
    #[arg(long = "task-keep-days", value_name = "TASK=DAYS")]
    pub task_keep_days: Vec<String>,
    /// Size budget for all runs' files, e.g. 50G; the oldest finished runs go first.
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<String>,
}

pub async fn run(global: &GlobalArgs, args: PruneArgs) -> i32 {
    match inner(global, args).await {
        Ok(()) => exit::OK,
        Err((code, msg)) => {
            eprintln!("error: {msg}");
            code
        }
    }
}

async fn inner(global: &GlobalArgs, args: PruneArgs) -> Result<(), (i32, String)> {
    let data_dir = global.data_dir();
    let default_file = data_dir.join("retention.yaml");
    let file = args
        .policy
        .clone()
        .or_else(|| default_file.exists().then_some(default_file));
    let mut policy = match &file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| (exit::USAGE, format!("{}: {e}", f.display())))?;
            Policy::from_yaml(&text).map_err(|e| (exit::USAGE, format!("{}: {e}", f.display())))?
        }
        None => Policy::default(),
    };
    if let Some(d) = args.keep_days {
        policy.keep_days = Some(d);
    }
    for tk in &args.task_keep_days {
        let (task, days) = tk
            .rsplit_once('=')
            .and_then(|(t, d)| Some((t, d.trim().parse::<u32>().ok()?)))
            .filter(|(t, _)| !t.is_empty())
            .ok_or_else(|| {
                (
                    exit::USAGE,
                    format!("--task-keep-days `{tk}`: expected TASK=DAYS"),
                )
            })?;
        policy.task_keep_days.insert(task.to_string(), days);
    }
    if let Some(s) = &args.max_size {
        policy.max_bytes =
            Some(parse_size(s).map_err(|e| (exit::USAGE, format!("--max-size {e}")))?);
    }
    if policy == Policy::default() {
        return Err((
            exit::USAGE,
            "no retention policy: give --keep-days, --task-keep-days, --max-size or a policy file"
                .into(),
        ));
    }
    let store = Store::open(&global.db_url())
        .await
        .map_err(|e| (exit::INFRA, format!("opening the store: {e}")))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
    let report = prune(&store, &data_dir, &policy, now as i64, args.dry_run)
        .await
        .map_err(|e| (exit::INFRA, e.to_string()))?;
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for p in &report.pruned {
        let why = match p.reason {
            Reason::Age { keep_days } => format!("older than {keep_days} days"),
            Reason::Budget => "over the size budget".to_string(),
        };
        println!("{verb} {} ({}, {} bytes): {why}", p.uuid, p.task, p.bytes);
    }
    let freed: u64 = report.pruned.iter().map(|p| p.bytes).sum();
    println!(
        "{verb} the files of {} runs, {freed} bytes; runs' files now total {} bytes",
        report.pruned.len(),
        if args.dry_run {
            report.total_before - freed
        } else {
            report.total_after
        }
    );
    Ok(())
}
