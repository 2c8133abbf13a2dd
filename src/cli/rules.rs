//! `ferrotron rules check|test`: trigger rules without a daemon.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::bus::Message;
use crate::config::load_rules;
use crate::runner::exit;

#[derive(Args, Debug)]
pub struct RulesArgs {
    #[command(subcommand)]
    pub which: Which,
}

#[derive(Subcommand, Debug)]
pub enum Which {
    /// Check the rules of a config file (with its includes, against its tasks) or of a
    /// rules file.
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the jobs a message would create. MESSAGE.json is the webhook's envelope:
    /// {"topic": …, "body": {…}, "headers": {…}, "id": …}.
    Test {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[arg(value_name = "MESSAGE.json")]
        message: PathBuf,
        /// Print the jobs as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: RulesArgs) -> i32 {
    match args.which {
        Which::Check { file } => match load_rules(&file) {
            Ok((set, cfg)) => {
                println!(
                    "{}: {} rule(s) OK{}",
                    file.display(),
                    set.len(),
                    if cfg.is_some() {
                        " (checked against the config's tasks)"
                    } else {
                        ""
                    }
                );
                for t in set.topics() {
                    println!("  binds {t}");
                }
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::USAGE
            }
        },
        Which::Test {
            file,
            message,
            json,
        } => {
            let (set, cfg) = match load_rules(&file) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::USAGE;
                }
            };
            let bytes = match std::fs::read(&message) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("error: {}: {e}", message.display());
                    return exit::USAGE;
                }
            };
            let msg = match Message::from_envelope_bytes(&bytes, usize::MAX) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("error: {}: {e}", message.display());
                    return exit::USAGE;
                }
            };
            let eval = set.evaluate(&msg.topic, &msg.body);
            for s in &eval.skipped {
                eprintln!("note: {s}");
            }
            if json {
                let jobs: Vec<serde_json::Value> = eval
                    .jobs
                    .iter()
                    .map(|j| {
                        let mut v = serde_json::to_value(j).unwrap_or_default();
                        if let Some(c) = &cfg {
                            v["pool"] = c.task_pool(&j.task).into();
                        }
                        v
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(jobs));
            } else if eval.jobs.is_empty() {
                println!("no jobs: no rule matches topic {}", msg.topic);
            } else {
                println!(
                    "{:<20} {:<20} {:<40} {:<14} ARCH",
                    "RULE", "TASK", "ITEM", "TYPE"
                );
                for j in &eval.jobs {
                    println!(
                        "{:<20} {:<20} {:<40} {:<14} {}",
                        j.rule, j.task, j.item, j.item_type, j.arch
                    );
                }
            }
            exit::OK
        }
    }
}
