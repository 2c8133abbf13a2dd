//! `ferrotron run`: one task, one item, output on the terminal, results in the store (and,
//! with `--junit`, in a JUnit XML file).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use uuid::Uuid;

use super::GlobalArgs;
use crate::image;
use crate::provider::spec::{LibvirtSpec, LocalSpec, SshSpec};
use crate::provider::{self, Spec};
use crate::runner::{Event, RunReport, RunRequest, Runner, RunnerError, exit};
use crate::store::{RunParams, Store};
use crate::task::Formula;

#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: 0 the task ran to its end; 1 its exitcode directive \
reported failing results; 2 bad arguments or formula (nothing ran); 3 the task failed \
(an action errored or timed out); 4 infrastructure error; 130 interrupted."
)]
pub struct RunArgs {
    /// The task: a directory holding runtask.yml, or a formula file.
    #[arg(value_name = "TASK")]
    pub task: PathBuf,
    /// The item to check, e.g. a Koji build NVR.
    #[arg(short, long, default_value = "")]
    pub item: String,
    /// The item's type; it also names a variable holding the item (`-t koji_build` makes ${koji_build}).
    #[arg(short = 't', long = "type", value_name = "TYPE", default_value = "")]
    pub item_type: String,
    /// Architecture the check is about.
    #[arg(short, long, default_value = RunParams::DEFAULT_ARCH)]
    pub arch: String,
    /// Job id from the caller's scheduler, available as ${jobid}.
    #[arg(short, long, default_value = RunParams::DEFAULT_JOBID)]
    pub jobid: String,
    /// Run uuid [default: a new time-ordered UUID].
    #[arg(long)]
    pub uuid: Option<Uuid>,
    /// Where the task runs: `local` on this host without isolation (developer mode),
    /// `libvirt` in a disposable VM cloned from --image, `openstack` in a disposable
    /// Nova server booted from the Glance image --image names (see --cloud).
    #[arg(long, value_enum, default_value_t = Backend::Local)]
    pub backend: Backend,
    /// Run on an existing machine over SSH instead (nothing is created or destroyed). Its
    /// host key is checked against --known-hosts first, as `ssh` does.
    #[arg(long, value_name = "USER@HOST[:PORT]", conflicts_with = "backend")]
    pub ssh: Option<String>,
    /// Private key for --ssh [default: the SSH agent is not used; ~/.ssh/id_ed25519].
    #[arg(long, value_name = "PATH", requires = "ssh")]
    pub ssh_privkey: Option<PathBuf>,
    /// The known_hosts file the --ssh machine's host key must be in, checked before logging
    /// in [default: ~/.ssh/known_hosts]. An unknown or changed key stops the run.
    #[arg(long, value_name = "FILE", requires = "ssh")]
    pub known_hosts: Option<PathBuf>,
    /// Add the --ssh machine's host key to the known_hosts file if it has none for it
    /// (check the fingerprint it prints). A key that changed is refused all the same.
    #[arg(long, requires = "ssh")]
    pub learn_host_key: bool,
    /// Base image for VM backends: an image file, a recipe name from images/ (its newest
    /// build, built on first use), or DISTRO-RELEASE-FLAVOR[-ARCH]. For openstack: a
    /// Glance image id, name, or DISTRO[-RELEASE…] prefix of ferrotron's image names
    /// (newest wins) [default: tiny, or the cloud's `ferrotron: {image}`].
    #[arg(long, env = "FERROTRON_IMAGE")]
    pub image: Option<String>,
    #[command(flatten)]
    pub cloud: super::cloud::CloudArgs,
    /// libvirt connection URI: this host's, or another's (`qemu+ssh://root@HOST/system`,
    /// which needs --libvirt-pool).
    #[arg(long, env = "FERROTRON_LIBVIRT_URI", default_value = "qemu:///system")]
    pub libvirt_uri: String,
    /// A libvirt storage pool (on libvirt's host) holding the base images: the run's overlay
    /// and seed are made in it as volumes, and --image names an image there.
    #[arg(long, env = "FERROTRON_LIBVIRT_POOL", value_name = "POOL")]
    pub libvirt_pool: Option<String>,
    /// Guest networking: `passt` (user networking with a loopback port forward; no bridge
    /// needed) or the name of a libvirt network (the guest is reached at its DHCP address).
    #[arg(long, env = "FERROTRON_LIBVIRT_NETWORK", default_value = "passt")]
    pub libvirt_network: String,
    /// Directory of image recipes.
    #[arg(long, env = "FERROTRON_RECIPES", default_value = "images")]
    pub recipes: PathBuf,
    /// Spawn attempts before a run gives up on getting a machine.
    #[arg(long, default_value_t = RunParams::DEFAULT_SPAWN_ATTEMPTS)]
    pub attempts: u32,
    /// How to report: live text, or one JSON object on stdout (live output goes to stderr).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Stop the task after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = RunParams::DEFAULT_TASK_TIMEOUT_S)]
    pub timeout: u64,
    /// Keep the machine after the run and print how to reach it.
    #[arg(long)]
    pub no_destroy: bool,
    /// Largest total size of artifacts to collect, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = RunParams::DEFAULT_ARTIFACTS_MIB)]
    pub artifacts_cap: u64,
    /// Give up collecting artifacts after this many seconds (the run fails as the task's).
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub collect_timeout: u64,
    /// Largest run log kept, in MiB; task output past it is dropped and the cut marked.
    #[arg(long, value_name = "MIB", default_value_t = 100)]
    pub log_cap: u64,
    /// Largest serial console log kept per VM (libvirt), in MiB; the rest is dropped, marked.
    #[arg(long, value_name = "MIB", default_value_t = 100)]
    pub console_cap: u64,
    /// Also write the run's results as JUnit XML to FILE at the end, whatever the ending
    /// (one testsuite for the run, one testcase per result; a run that failed or crashed
    /// also gets a `ferrotron.run` testcase with its error). Not written when nothing ran.
    /// The same document as /api/v1/runs/UUID/junit.xml; a FILE that cannot be written
    /// makes the exit status 4.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Backend {
    Local,
    Libvirt,
    Openstack,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// The provider the flags describe.
fn provider_spec(args: &RunArgs) -> Spec {
    if let Some(target) = &args.ssh {
        let identity = args
            .ssh_privkey
            .clone()
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh/id_ed25519")));
        return Spec::Ssh(SshSpec {
            target: target.clone(),
            identity,
            known_hosts: args.known_hosts.clone(),
            learn_host_key: args.learn_host_key,
        });
    }
    match args.backend {
        Backend::Local => Spec::Local(LocalSpec::default()),
        Backend::Libvirt => Spec::Libvirt(LibvirtSpec {
            image: args.image.clone(),
            network: args.libvirt_network.clone(),
            storage_pool: args.libvirt_pool.clone(),
            ..LibvirtSpec::new(args.libvirt_uri.clone())
        }),
        Backend::Openstack => args.cloud.spec(args.image.clone()),
    }
}

pub async fn run(global: &GlobalArgs, args: RunArgs) -> i32 {
    match run_inner(global, args).await {
        Ok(code) => code,
        Err((code, msg)) => {
            eprintln!("error: {msg}");
            code
        }
    }
}

async fn run_inner(global: &GlobalArgs, mut args: RunArgs) -> Result<i32, (i32, String)> {
    let junit = args.junit.take();
    let json = args.format == Format::Json;
    let (report, store) = execute(global, args).await?;
    if json {
        let s = serde_json::to_string_pretty(&report).expect("report serialises");
        println!("{s}");
    } else {
        print_summary(&report);
    }
    if let Some(path) = &junit {
        write_junit(&store, report.uuid, path)
            .await
            .map_err(|e| (exit::INFRA, format!("--junit {}: {e}", path.display())))?;
    }
    Ok(report.exit_code)
}

/// Runs what `args` describe, with live output (on stderr with `--format json`), and
/// returns the report and the store that recorded it; the summary is the caller's.
pub(super) async fn execute(
    global: &GlobalArgs,
    args: RunArgs,
) -> Result<(RunReport, Store), (i32, String)> {
    let formula = Formula::load(&args.task).map_err(|e| (exit::USAGE, e.to_string()))?;
    let data_dir = global.data_dir();
    let store = Store::open(&global.db_url())
        .await
        .map_err(|e| (exit::INFRA, format!("opening the store: {e}")))?;
    let spec = provider_spec(&args);
    let cx = provider::Context {
        console_cap: Some(args.console_cap.max(1).saturating_mul(1024 * 1024)),
        ..provider::Context::new(&data_dir)
    };
    let provider = provider::build(&spec, &cx)
        .await
        .map_err(|e| (exit::USAGE, e.to_string()))?;
    provider
        .preflight()
        .map_err(|e| (exit::USAGE, e.to_string()))?;
    let image = image::for_provider(
        &provider.capabilities().images,
        spec.image(),
        &args.recipes,
        &global.images_dir(),
    )
    .await
    .map_err(|e| {
        let named = spec.image().unwrap_or(image::DEFAULT_IMAGE);
        match e {
            image::ImageError::Infra(m) => (exit::INFRA, m),
            e => (exit::USAGE, format!("--image {named}: {e}")),
        }
    })?;
    let json = args.format == Format::Json;
    let sink = Arc::new(move |e: &Event| {
        let Some(line) = e.line() else { return };
        // With --format json, stdout carries exactly one JSON object.
        if json {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        } else {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
    });
    let runner = Runner {
        provider,
        store: store.clone(),
        data_dir: data_dir.clone(),
        sink,
        cleanup_slot: None,
    };
    let request = RunRequest {
        uuid: args.uuid.unwrap_or_else(Uuid::now_v7),
        formula,
        item: args.item,
        item_type: args.item_type,
        arch: args.arch,
        jobid: args.jobid,
        owner: crate::reaper::process_owner("run"),
        image,
        task_timeout: Duration::from_secs(args.timeout.max(1)),
        spawn_attempts: args.attempts.max(1),
        artifacts_cap: args.artifacts_cap.saturating_mul(1024 * 1024),
        limits: crate::runner::GuestLimits {
            collect_timeout: Duration::from_secs(args.collect_timeout.max(1)),
            log_bytes: args.log_cap.max(1).saturating_mul(1024 * 1024),
            ..Default::default()
        },
        keep_instance: args.no_destroy,
        keep_if_failed: false,
        links: None,
    };

    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(forward_signals(cancel_tx));
    let report = runner.run(request, cancel_rx).await.map_err(|e| match e {
        RunnerError::Invalid(m) => (exit::USAGE, m),
        other => (exit::INFRA, other.to_string()),
    })?;
    Ok((report, store))
}

/// The stored run as JUnit XML in `path`: from the store, so that it is the document the
/// runs API gives for the same run.
async fn write_junit(store: &Store, uuid: Uuid, path: &std::path::Path) -> Result<(), String> {
    let run = store
        .run(uuid)
        .await
        .map_err(|e| format!("reading run {uuid}: {e}"))?
        .ok_or_else(|| format!("run {uuid} is not in the store"))?;
    let results = store
        .run_results(uuid)
        .await
        .map_err(|e| format!("reading the results of run {uuid}: {e}"))?;
    std::fs::write(path, crate::junit::render(&run, &results)).map_err(|e| format!("writing: {e}"))
}

/// The first SIGINT/SIGTERM cancels the run (which still destroys its machine); later ones
/// only say that teardown is under way, so an impatient second Ctrl-C cannot leak a VM.
pub(super) async fn forward_signals(cancel: tokio::sync::watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    let mut seen = false;
    loop {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        if seen {
            eprintln!("ferrotron: still cleaning up; the machine is destroyed before exit");
        } else {
            eprintln!("ferrotron: interrupted; stopping the task and destroying its machine");
            seen = true;
            let _ = cancel.send(true);
        }
    }
}

fn print_summary(r: &RunReport) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out);
    if r.results.is_empty() {
        let _ = writeln!(out, "no results reported");
    } else {
        let w = r
            .results
            .iter()
            .map(|x| x.checkname.len())
            .max()
            .unwrap_or(9)
            .max(9);
        let _ = writeln!(
            out,
            "{:<16}  {:<w$}  {:<30}  NOTE",
            "OUTCOME", "CHECKNAME", "ITEM"
        );
        for x in &r.results {
            let _ = writeln!(
                out,
                "{:<16}  {:<w$}  {:<30}  {}",
                x.outcome.as_str(),
                x.checkname,
                x.item,
                x.note.as_deref().unwrap_or("")
            );
        }
    }
    let phases: Vec<String> = r
        .phases
        .iter()
        .map(|p| format!("{} {:.0}ms", p.name, p.duration_ms))
        .collect();
    let _ = writeln!(
        out,
        "\nrun:       {} ({}, exit {})",
        r.uuid,
        r.state.as_str(),
        r.exit_code
    );
    if let Some(e) = &r.error {
        let _ = writeln!(out, "error:     {e}");
    }
    let _ = writeln!(out, "phases:    {}", phases.join(" · "));
    let _ = writeln!(out, "log:       {}", r.log.display());
    let _ = writeln!(out, "artifacts: {}", r.artifacts_dir.display());
}
