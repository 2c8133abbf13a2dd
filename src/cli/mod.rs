//! The `ferrotron` command line: argument parsing and dispatch. Handlers stay thin; the work
//! happens in the library modules.

mod bench;
mod cloud;
mod image;
mod prune;
mod reap;
mod rerun;
mod rules;
mod run;
mod serve;
mod web;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferrotron",
    version,
    about = "Run test tasks in disposable virtual machines",
    long_about = "Run test tasks in disposable virtual machines.\n\n\
        A task is a directory with a runtask.yml formula (Taskotron compatible). \
        `ferrotron run` runs one task against one item, locally or in a fresh VM, \
        streams its output and stores the results.",
    after_help = "Examples:\n  \
        ferrotron run -i bash-5.2-1.fc41 -t koji_build tasks/rpm-checksum\n  \
        ferrotron run --format json tasks/python-unittest\n  \
        ferrotron rerun https://farm.example.org/runs/UUID"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Commands,
}

/// Settings every subcommand shares.
#[derive(Args, Clone, Debug)]
pub struct GlobalArgs {
    /// Where runs, artifacts, logs, images and the embedded database live
    /// [default: /var/lib/ferrotron as root, else ~/.local/share/ferrotron].
    #[arg(long, global = true, env = "FERROTRON_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: sqlite:///path/to/file.db or postgres://user:pass@host/db
    /// [default: sqlite://DATA_DIR/ferrotron.db]
    #[arg(long, global = true, env = "FERROTRON_DB", value_name = "URL")]
    pub db: Option<String>,
    /// Where base images are built and found [default: DATA_DIR/images].
    #[arg(long, global = true, env = "FERROTRON_IMAGES", value_name = "DIR")]
    pub images_dir: Option<PathBuf>,
    /// Diagnostics on stderr: text (colour only on a terminal) or json (one object a line,
    /// for log shippers). Levels: FERROTRON_LOG (e.g. `ferrotron=debug`).
    #[arg(
        long,
        global = true,
        env = "FERROTRON_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl GlobalArgs {
    /// The data directory: --data-dir, else /var/lib/ferrotron for root (libvirt's qemu
    /// user cannot reach into /root), else the XDG data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            // SAFETY: geteuid cannot fail and touches no memory.
            if unsafe { libc::geteuid() } == 0 {
                return PathBuf::from("/var/lib/ferrotron");
            }
            let base = std::env::var_os("XDG_DATA_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
                .unwrap_or_else(|| PathBuf::from("."));
            base.join("ferrotron")
        })
    }

    pub fn images_dir(&self) -> PathBuf {
        self.images_dir
            .clone()
            .unwrap_or_else(|| self.data_dir().join("images"))
    }

    pub fn db_url(&self) -> String {
        self.db.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                self.data_dir().join("ferrotron.db").display()
            )
        })
    }
}

#[derive(Subcommand)]
pub enum Commands {
    /// Run one task against one item and store its results (like Taskotron's runtask).
    Run(Box<run::RunArgs>),
    /// Run a recorded run again here (a farm's, by URL, or this host's, by uuid) and
    /// compare the two: results, log lines, phase timings, artifacts.
    Rerun(rerun::RerunArgs),
    /// Destroy leaked instances: those whose run is no longer live.
    Reap(reap::ReapArgs),
    /// Benchmarks that print figures.
    Bench(bench::BenchArgs),
    /// Serve the review UI and the ResultsDB/runs APIs for an existing store (read-only).
    Web(web::WebArgs),
    /// Delete old runs' artifacts and logs (per-task keep_days, a size budget); results stay.
    Prune(prune::PruneArgs),
    /// Base images: build them from recipes, list them, prune old builds.
    Image(image::ImageArgs),
    /// Run the farm daemon: bus consumers, scheduler, runners, HTTP.
    Serve(serve::ServeArgs),
    /// Check trigger rules, or show the jobs a message would create.
    Rules(rules::RulesArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon tells its operator what it does (lifecycle, HTTP access) unless told not
    // to; interactive commands stay quiet but for warnings.
    let default_filter = match cli.command {
        Commands::Serve(_) => "warn,ferrotron=info",
        _ => "warn",
    };
    init_tracing(cli.global.log_format, default_filter);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(crate::runner::exit::INFRA as u8);
        }
    };
    let code = rt.block_on(async {
        match cli.command {
            Commands::Run(args) => run::run(&cli.global, *args).await,
            Commands::Rerun(args) => rerun::run(&cli.global, args).await,
            Commands::Reap(args) => reap::run(&cli.global, args).await,
            Commands::Bench(args) => bench::run(&cli.global, args).await,
            Commands::Web(args) => web::run(&cli.global, args).await,
            Commands::Prune(args) => prune::run(&cli.global, args).await,
            Commands::Image(args) => image::run(&cli.global, args).await,
            Commands::Serve(args) => serve::run(&cli.global, args).await,
            Commands::Rules(args) => rules::run(args),
        }
    });
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn init_tracing(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERROTRON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Escape sequences only for a person at a terminal: a file, a pipe or the journal gets
    // plain text. Under systemd (JOURNAL_STREAM set) journald stamps each line itself.
    let ansi = std::io::stderr().is_terminal();
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let _ = match (format, journal) {
        (LogFormat::Json, _) => builder.json().with_ansi(false).try_init(),
        (LogFormat::Text, true) => builder.with_ansi(false).without_time().try_init(),
        (LogFormat::Text, false) => builder.with_ansi(ansi).try_init(),
    };
}

/// Every run in flight holds its log file open, and a daemon runs many: allow as many file
/// descriptors as the hard limit permits.
pub(crate) fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}
