//! `ferrotron web`: serve the review UI and the APIs for an existing store.

use std::path::PathBuf;

use clap::Args;

use super::GlobalArgs;
use crate::runner::exit;
use crate::store::Store;
use crate::web::{WebState, router};

#[derive(Args, Debug)]
#[command(
    after_help = "Read-only unless --token-file is given: then POSTs (ResultsDB results, \
groups, testcases; run cancel requests) are accepted with one of its tokens."
)]
pub struct WebArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: String,
    /// File of API tokens, one per line, that may POST.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Where users and ResultsDB clients reach this server (https://results.example.org):
    /// the base of the absolute URLs in API answers. Default: the request's Host.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Believe X-Forwarded-Host and X-Forwarded-Proto (only behind a proxy that sets them).
    #[arg(long)]
    pub trust_forwarded: bool,
}

pub async fn run(global: &GlobalArgs, args: WebArgs) -> i32 {
    // glibc gives every thread that contends its own malloc arena and keeps freed memory in
    // each: with the runtime's and SQLite's threads that is most of the resident size.
    // SAFETY: mallopt only sets an allocator tunable.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let tokens = match &args.token_file {
        None => Vec::new(),
        Some(p) => match std::fs::read_to_string(p) {
            Ok(s) => s
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect(),
            Err(e) => {
                eprintln!("error: --token-file {}: {e}", p.display());
                return exit::USAGE;
            }
        },
    };
    if args.token_file.is_some() && tokens.is_empty() {
        eprintln!("error: --token-file has no tokens");
        return exit::USAGE;
    }
    if let Some(u) = &args.public_url
        && let Err(e) = crate::config::check_public_url(u)
    {
        eprintln!("error: --public-url {u}: {e}");
        return exit::USAGE;
    }
    let store = match Store::open(&global.db_url()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: opening the store: {e}");
            return exit::INFRA;
        }
    };
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: --listen {}: {e}", args.listen);
            return exit::USAGE;
        }
    };
    let addr = listener
        .local_addr()
        .map_or_else(|_| args.listen.clone(), |a| a.to_string());
    let state = WebState::new(store, global.data_dir(), tokens)
        .with_public_url(args.public_url.clone(), args.trust_forwarded);
    let app = crate::web::with_access_log(router(state));
    println!("ferrotron web: listening on http://{addr}");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: serving: {e}");
            exit::INFRA
        }
    }
}
