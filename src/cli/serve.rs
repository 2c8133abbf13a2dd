//! `ferrotron serve`: the farm daemon.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::GlobalArgs;
use crate::runner::exit;
use crate::serve::{Daemon, Defaults, load_config};

#[derive(Args, Debug)]
#[command(
    after_help = "Every setting of the file can be overridden from the environment: \
FERROTRON__DAEMON__LISTEN=0.0.0.0:8080, FERROTRON__BUS__AMQP__URL=amqp://…, \
FERROTRON__PROVIDERS__0__MAX_INSTANCES=8 (see ferrotron.example.yaml). SIGTERM or SIGINT: \
stop taking work, let running jobs finish for scheduler.shutdown_grace_s, then destroy \
their instances and requeue them."
)]
pub struct ServeArgs {
    /// The daemon's YAML configuration.
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// HTTP listen address (overrides daemon.listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory of image recipes.
    #[arg(long, env = "FERROTRON_RECIPES", default_value = "images")]
    pub recipes: PathBuf,
}

pub async fn run(global: &GlobalArgs, args: ServeArgs) -> i32 {
    super::raise_fd_limit();
    let mut config = match load_config(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    if let Some(l) = args.listen {
        config.daemon.listen = l;
    }
    let defaults = Defaults {
        data_dir: global.data_dir(),
        db_url: global.db_url(),
        images_dir: global.images_dir(),
        recipes_dir: args.recipes,
    };
    let daemon = match Daemon::build(config, &defaults).await {
        Ok(d) => Arc::new(d),
        Err(e) => {
            eprintln!("error: {}", crate::util::error_chain(e.chain()));
            return exit::USAGE;
        }
    };
    let web = daemon.web_router();
    match daemon.run(vec![web], None).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {}", crate::util::error_chain(e.chain()));
            exit::INFRA
        }
    }
}
