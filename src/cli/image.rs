//! `ferrotron image build | list | prune`: base images from recipes.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use uuid::Uuid;

use super::GlobalArgs;
use crate::image::build::{self, BuildOptions};
use crate::image::{self, ImageError, ImageName, prune, recipe};
use crate::provider::spec::LibvirtSpec;
use crate::provider::{self, Accel, Spec};
use crate::runner::{Event, exit};
use crate::store::{NewRun, RunState, Store};

#[derive(Args, Debug)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Build base images from recipes: source, one boot to provision, compact, publish.
    Build(BuildArgs),
    /// Every image, newest first, and the one `--image` and the scheduler pick per
    /// DISTRO-RELEASE-FLAVOR-ARCH.
    List(ListArgs),
    /// Remove old builds, keeping the newest N of every DISTRO-RELEASE-FLAVOR-ARCH.
    Prune(PruneArgs),
}

#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: 0 built (or skipped by --if-older); 2 bad recipe or \
arguments; 3 the build failed (a script, a checksum, a provisioning step); 4 infrastructure \
error (libvirt, a connection); 130 interrupted. A failed or interrupted build publishes \
nothing and leaves no instance; its log is kept in IMAGES_DIR/.failed/."
)]
pub struct BuildArgs {
    /// Recipes: files (images/NAME.yaml) or names of recipes in --recipes.
    #[arg(required = true, value_name = "RECIPE")]
    pub recipes: Vec<String>,
    /// Skip a recipe whose newest build is younger than DAYS days (for a timer).
    #[arg(long, value_name = "DAYS")]
    pub if_older: Option<f64>,
    /// libvirt storage pool to register the finished image with (repeatable).
    #[arg(
        long = "pool",
        value_name = "POOL",
        env = "FERROTRON_IMAGE_POOLS",
        value_delimiter = ','
    )]
    pub pools: Vec<String>,
    /// The libvirt whose storage pools --pool names [default: --libvirt-uri]: another
    /// host's (`qemu+ssh://root@HOST/system`), to upload the image there.
    #[arg(long, value_name = "URI", requires = "pools")]
    pub pool_uri: Option<String>,
    /// libvirt connection URI for the build instance.
    #[arg(long, env = "FERROTRON_LIBVIRT_URI", default_value = "qemu:///system")]
    pub libvirt_uri: String,
    /// Downloads and debootstrap trees kept between builds [default: DATA_DIR/cache].
    #[arg(long, env = "FERROTRON_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Directory of recipes, for recipes given by name.
    #[arg(long, env = "FERROTRON_RECIPES", default_value = "images")]
    pub recipes_dir: PathBuf,
    /// Give up on a build after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 7200)]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Directory of recipes (to show which recipe builds which image).
    #[arg(long, env = "FERROTRON_RECIPES", default_value = "images")]
    pub recipes_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Builds to keep per DISTRO-RELEASE-FLAVOR-ARCH (at least 1: the newest always stays).
    #[arg(long, value_name = "N")]
    pub keep: usize,
    /// Only say what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// libvirt connection URI, to keep images live instances use; `none` skips the check.
    #[arg(long, env = "FERROTRON_LIBVIRT_URI", default_value = "qemu:///system")]
    pub libvirt_uri: String,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

pub async fn run(global: &GlobalArgs, args: ImageArgs) -> i32 {
    match args.command {
        ImageCommand::Build(a) => build_all(global, a).await,
        ImageCommand::List(a) => list(global, a),
        ImageCommand::Prune(a) => prune_images(global, a).await,
    }
}

fn code_for(e: &ImageError) -> i32 {
    match e {
        ImageError::Invalid { .. } | ImageError::NotFound(_) => exit::USAGE,
        ImageError::Build(_) | ImageError::TimedOut(_) => exit::TASK_FAILED,
        ImageError::Io { .. } | ImageError::Infra(_) => exit::INFRA,
        ImageError::Cancelled => exit::CANCELLED,
    }
}

async fn build_all(global: &GlobalArgs, args: BuildArgs) -> i32 {
    // Every recipe is checked before anything is built.
    let mut recipes = Vec::new();
    for spec in &args.recipes {
        match recipe::find(spec, &args.recipes_dir).and_then(|r| r.check_files().map(|()| r)) {
            Ok(r) => recipes.push(r),
            Err(e) => {
                eprintln!("error: {e}");
                return code_for(&e);
            }
        }
    }
    let data_dir = global.data_dir();
    let images_dir = global.images_dir();
    let store = match Store::open(&global.db_url()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: opening the store: {e}");
            return exit::INFRA;
        }
    };
    // Image builds capture a disk, which only libvirt can do.
    let spec = Spec::Libvirt(LibvirtSpec {
        storage_pools: args.pools.clone(),
        ..LibvirtSpec::new(args.libvirt_uri.clone())
    });
    let cx = provider::Context::new(&data_dir);
    let provider = match provider::build(&spec, &cx).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    // The pools may be on another host: a provider of their own, used only to upload.
    let registrar = match (&args.pool_uri, args.pools.is_empty()) {
        (_, true) => None,
        (None, false) => Some(provider.clone()),
        (Some(uri), false) => {
            let spec = Spec::Libvirt(LibvirtSpec {
                storage_pools: args.pools.clone(),
                // Uploading needs no disks of its own there; the pool is only named so
                // that a remote URI is accepted.
                storage_pool: args.pools.first().cloned(),
                ..LibvirtSpec::new(uri.clone())
            });
            match provider::build(&spec, &cx).await {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("error: --pool-uri {uri}: {e}");
                    return exit::USAGE;
                }
            }
        }
    };
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(super::run::forward_signals(cancel_tx));
    let sink = Arc::new(|e: &Event| {
        if let Some(line) = e.line() {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
    });
    let mut code = exit::OK;
    for r in recipes {
        if *cancel_rx.borrow() {
            return exit::CANCELLED;
        }
        if let Some(days) = args.if_older
            && let Some(newest) = image::newest(&images_dir, &r.key())
            && let Some(age) =
                ImageName::parse(&newest.file_name().unwrap_or_default().to_string_lossy())
                    .and_then(|n| n.built_at())
                    .map(|t| time::OffsetDateTime::now_utc() - t)
            && age.as_seconds_f64() < days * 86400.0
        {
            println!(
                "ferrotron: {}: skipped, the newest build {} is {:.1} days old (--if-older {days})",
                r.name,
                newest.display(),
                age.as_seconds_f64() / 86400.0
            );
            continue;
        }
        let build_id = Uuid::now_v7();
        let owner = crate::reaper::process_owner("image-build");
        // The build instance is a run as far as the reaper is concerned: live while it builds.
        let record = store
            .create_run(&NewRun {
                uuid: build_id,
                task: "image-build".into(),
                item: r.name.clone(),
                item_type: "image_recipe".into(),
                arch: r.arch.clone(),
                backend: provider.kind().into(),
                params: serde_json::json!({"recipe": r.path, "images_dir": images_dir}),
                log_path: images_dir.display().to_string(),
                artifacts_dir: images_dir.display().to_string(),
                owner: Some(owner.clone()),
            })
            .await;
        if let Err(e) = record {
            eprintln!("error: recording the build: {e}");
            return exit::INFRA;
        }
        let _ = store.set_run_state(build_id, RunState::Running).await;
        let opts = BuildOptions {
            images_dir: images_dir.clone(),
            cache_dir: args
                .cache_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("cache")),
            provider: provider.clone(),
            owner,
            build_id,
            timeout: Duration::from_secs(args.timeout.max(60)),
            register: registrar.clone(),
            sink: sink.clone(),
        };
        let result = build::build(&r, &opts, cancel_rx.clone()).await;
        let (state, rc, err) = match &result {
            Ok(_) => (RunState::Finished, exit::OK, None),
            Err(ImageError::Cancelled) => (
                RunState::Cancelled,
                exit::CANCELLED,
                Some("interrupted".to_string()),
            ),
            Err(e) => (RunState::Failed, code_for(e), Some(e.to_string())),
        };
        let _ = store
            .finish_run(build_id, state, Some(rc), err.as_deref())
            .await;
        match result {
            Ok(b) => {
                println!("\nimage:   {}", b.image.display());
                println!(
                    "size:    {:.1} MiB, {} packages",
                    b.disk_bytes as f64 / 1048576.0,
                    b.packages
                );
                let phases: Vec<String> = b
                    .phases
                    .iter()
                    .map(|(n, s)| format!("{n} {s:.1}s"))
                    .collect();
                println!("phases:  {}", phases.join(" · "));
                println!("log:     {}", b.log.display());
                for r in &b.registered {
                    println!("registered: {r}");
                }
            }
            Err(e) => {
                eprintln!("error: {}: {e}", r.name);
                code = rc;
                if matches!(e, ImageError::Cancelled) {
                    return code;
                }
            }
        }
    }
    code
}

#[derive(serde::Serialize)]
struct Listed {
    file: String,
    key: String,
    built_at: Option<String>,
    bytes: u64,
    recipe: Option<String>,
    picked: bool,
}

fn list(global: &GlobalArgs, args: ListArgs) -> i32 {
    let images_dir = global.images_dir();
    let (recipes, _) = recipe::all(&args.recipes_dir);
    let mut recipe_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &recipes {
        recipe_of.entry(r.key()).or_default().push(r.name.clone());
    }
    let mut picked: HashSet<PathBuf> = HashSet::new();
    let rows: Vec<Listed> = image::list(&images_dir)
        .into_iter()
        .map(|(name, path)| {
            let pick = image::newest(&images_dir, &name.key()).as_deref() == Some(path.as_path());
            if pick {
                picked.insert(path.clone());
            }
            let sidecar: Option<serde_json::Value> = std::fs::read(path.with_extension("json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            Listed {
                file: path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                key: name.key(),
                built_at: name.built_at().map(|t| {
                    t.format(&time::macros::format_description!(
                        "[year]-[month]-[day] [hour]:[minute]"
                    ))
                    .unwrap_or_default()
                }),
                bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                recipe: sidecar
                    .as_ref()
                    .and_then(|s| s["recipe"].as_str().map(String::from))
                    .or_else(|| recipe_of.get(&name.key()).map(|v| v.join(","))),
                picked: pick,
            }
        })
        .collect();
    if args.format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("serialises")
        );
        return exit::OK;
    }
    println!(
        "images in {} (newest first; * = what --image and the scheduler pick)",
        images_dir.display()
    );
    if rows.is_empty() {
        println!("  none");
    }
    for r in &rows {
        println!(
            "{} {:<48} {:<16} {:>9.1} MiB  {}",
            if r.picked { "*" } else { " " },
            r.file,
            r.built_at.as_deref().unwrap_or("?"),
            r.bytes as f64 / 1048576.0,
            r.recipe.as_deref().unwrap_or("")
        );
    }
    println!("\npicked per DISTRO-RELEASE-FLAVOR-ARCH:");
    let mut keys: BTreeMap<String, Option<&Listed>> = BTreeMap::new();
    for r in &rows {
        keys.entry(r.key.clone()).or_default();
        if r.picked {
            keys.insert(r.key.clone(), Some(r));
        }
    }
    for k in recipe_of.keys() {
        keys.entry(k.clone()).or_default();
    }
    for (k, row) in keys {
        let by = recipe_of
            .get(&k)
            .map(|v| format!(" (recipe {})", v.join(", ")))
            .unwrap_or_default();
        match row {
            Some(r) => println!("  {k:<36} {}{by}", r.file),
            None => println!("  {k:<36} not built{by}"),
        }
    }
    exit::OK
}

async fn prune_images(global: &GlobalArgs, args: PruneArgs) -> i32 {
    let images_dir = global.images_dir();
    let mut in_use = HashSet::new();
    if args.libvirt_uri != "none" {
        let spec = Spec::Libvirt(LibvirtSpec {
            max_instances: Some(1),
            accel: Accel::Tcg,
            ..LibvirtSpec::new(args.libvirt_uri.clone())
        });
        let listed = match provider::build(&spec, &provider::Context::new(&global.data_dir())).await
        {
            Ok(p) => p.list().await,
            Err(e) => Err(e),
        };
        match listed {
            Ok(l) => in_use.extend(
                l.into_iter()
                    .filter_map(|i| i.meta)
                    .map(|m| PathBuf::from(m.image)),
            ),
            Err(e) => {
                eprintln!(
                    "error: listing instances (to keep images in use): {e}; --libvirt-uri none skips this"
                );
                return exit::INFRA;
            }
        }
    }
    let plan = match prune::plan(&images_dir, args.keep, &in_use) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return code_for(&e);
        }
    };
    for p in &plan.in_use {
        println!("kept (in use by an instance): {}", file_name(p));
    }
    for (name, _) in &plan.remove {
        println!(
            "{} {}.qcow2",
            if args.dry_run {
                "would remove"
            } else {
                "removing"
            },
            name.stem()
        );
    }
    if plan.remove.is_empty() && plan.failed_logs.is_empty() {
        println!("nothing to prune (keeping {} per image)", args.keep);
        return exit::OK;
    }
    if args.dry_run {
        return exit::OK;
    }
    match prune::execute(&plan) {
        Ok(files) => {
            println!(
                "removed {} images ({} files)",
                plan.remove.len(),
                files.len()
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::INFRA
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}
