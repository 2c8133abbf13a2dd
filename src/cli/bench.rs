//! `ferrotron bench …`: benchmarks that print figures.

use clap::{Args, Subcommand};

use super::GlobalArgs;
use crate::bench;
use crate::image;
use crate::runner::exit;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: Which,
}

#[derive(Subcommand, Debug)]
pub enum Which {
    /// Boot-to-first-line against a bare qemu + ssh baseline, and clone cost by base size.
    Boot {
        /// Image to boot (as for `run --image`).
        #[arg(long, default_value = "tiny")]
        image: String,
        /// Rounds of baseline and ferrotron, alternated; medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, env = "FERROTRON_LIBVIRT_URI", default_value = "qemu:///system")]
        libvirt_uri: String,
        #[arg(long, env = "FERROTRON_RECIPES", default_value = "images")]
        recipes: std::path::PathBuf,
        /// Print the figures as JSON too.
        #[arg(long)]
        json: bool,
    },
    /// Jobs through the daemon (intake, queue, scheduler, runner) on the simulated
    /// provider, on SQLite and on PostgreSQL: dispatch rate, message→claim latency, RSS.
    Scheduler {
        /// Jobs (one message each).
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        /// Simulated instance creation latency, ms, ±25 %: long enough that every job is
        /// in flight at once, as when VMs boot.
        #[arg(long, default_value_t = 60_000)]
        create_ms: u64,
        /// Simulated capacity: instances at once.
        #[arg(long, default_value_t = 10_000)]
        capacity: usize,
        /// PostgreSQL admin URL (a scratch database is created and dropped); without it
        /// only SQLite is measured.
        #[arg(long, env = "FERROTRON_TEST_PG", value_name = "URL")]
        postgres: Option<String>,
        /// Print the figures as JSON too.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(global: &GlobalArgs, args: BenchArgs) -> i32 {
    match args.which {
        Which::Scheduler {
            jobs,
            create_ms,
            capacity,
            postgres,
            json,
        } => {
            super::raise_fd_limit();
            let opts = bench::scheduler::Options {
                jobs: jobs.max(1),
                create_ms,
                capacity: capacity.max(1),
                postgres: postgres.filter(|u| !u.is_empty()),
                work_dir: global.data_dir().join("bench"),
            };
            match bench::scheduler::run(opts).await {
                Ok(r) => {
                    r.print();
                    if json {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    }
                    exit::OK
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    exit::INFRA
                }
            }
        }
        Which::Boot {
            image: spec,
            rounds,
            libvirt_uri,
            recipes,
            json,
        } => {
            let images = global.images_dir();
            let img = match image::recipe::resolve(&spec, &recipes, &images, true) {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("error: --image {spec}: {e}");
                    return exit::USAGE;
                }
            };
            let opts = bench::boot::Options {
                image: img,
                rounds: rounds.max(1),
                libvirt_uri,
                work_dir: global.data_dir().join("bench"),
            };
            match bench::boot::run(opts).await {
                Ok(r) => {
                    r.print();
                    if json {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    }
                    exit::OK
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    exit::INFRA
                }
            }
        }
    }
}
