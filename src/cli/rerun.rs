//! `ferrotron rerun URL|UUID`: runs a recorded run again on this host — the task directory
//! as it ran (its snapshot, checked by hash), its item, type, arch and parameters, on the
//! same base image when this host has it — and compares the two runs: results side by
//! side, phase timings, artifacts one run has, the log lines that differ.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::GlobalArgs;
use super::run::{self, Backend, Format, RunArgs};
use crate::compare::{self, LOG_READ, Line};
use crate::guest::transfer;
use crate::runner::exit;
use crate::store::{RunParams, RunState, Store};
use crate::task::snapshot;
use crate::web::files::list_artifacts;
use crate::web::runs_api::run_args;

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    ferrotron rerun https://farm.example.org/runs/0193d0c4-…      a farm's run, here\n  \
    ferrotron rerun 0193d0c4-… --backend local                  a run of this host's store\n  \
    ferrotron rerun URL --task ./my-task          your edited task against the farm's run\n\n\
Exit status: 0 the outcomes agree; 1 they differ; 2 bad arguments, or nothing to run it on \
(a missing image: the message says how to get it; nothing ran); 4 infrastructure error \
(the farm, the store, or the run here); 130 interrupted.")]
pub struct RerunArgs {
    /// The run: its page or API URL on a farm (http[s]://HOST/runs/UUID), or the uuid of a
    /// run in this host's store.
    #[arg(value_name = "URL|UUID")]
    pub run: String,
    /// Run it on this backend [default: the one it ran on].
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Boot this image instead of the run's own (what `ferrotron run --image` takes).
    #[arg(long)]
    pub image: Option<String>,
    /// Run this task directory instead of the run's copy of its task: your edits, compared
    /// with what the farm's run did.
    #[arg(long, value_name = "DIR")]
    pub task: Option<PathBuf>,
    /// Directory of image recipes, to say how to build a missing image.
    #[arg(long, env = "FERROTRON_RECIPES", default_value = "images")]
    pub recipes: PathBuf,
    /// How to report: text, or one JSON object on stdout (the run's live output goes to
    /// stderr).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Bytes of a farm's run document read at most.
const DOC_CAP: u64 = 16 * 1024 * 1024;
/// Bytes of a task snapshot fetched at most.
const TASK_CAP: u64 = 256 * 1024 * 1024;
/// Lines of log diff printed.
const DIFF_SHOWN: usize = 200;

pub async fn run(global: &GlobalArgs, args: RerunArgs) -> i32 {
    match rerun(global, args).await {
        Ok(code) => code,
        Err((code, msg)) => {
            eprintln!("error: {msg}");
            code
        }
    }
}

type Failure = (i32, String);

/// Where the recorded run is.
enum Source {
    /// A farm's web server: its base URL (any path prefix kept) and the run.
    Farm { base: String, uuid: Uuid },
    /// This host's store.
    Here(Uuid),
}

impl Source {
    fn parse(s: &str) -> Result<Source, String> {
        let s = s.trim();
        if let Ok(u) = Uuid::parse_str(s) {
            return Ok(Source::Here(u));
        }
        let bad = || {
            format!(
                "`{s}` is neither a run uuid nor a run's URL (http[s]://HOST/runs/UUID or \
                 http[s]://HOST/api/v1/runs/UUID)"
            )
        };
        if !(s.starts_with("http://") || s.starts_with("https://")) {
            return Err(bad());
        }
        let path_end = s.find(['?', '#']).unwrap_or(s.len());
        let path = &s[..path_end];
        for marker in ["/api/v1/runs/", "/runs/"] {
            if let Some(at) = path.find(marker) {
                let rest = &path[at + marker.len()..];
                let id = rest.split('/').next().unwrap_or("");
                let uuid = Uuid::parse_str(id)
                    .map_err(|_| format!("{}: `{id}` is not a run uuid", bad()))?;
                return Ok(Source::Farm {
                    base: path[..at].to_string(),
                    uuid,
                });
            }
        }
        Err(bad())
    }
}

/// One run, as much of it as the comparison needs.
struct Recorded {
    uuid: Uuid,
    /// Where it is shown: its page on the farm, or "this host's store".
    at: String,
    task: String,
    item: String,
    item_type: String,
    arch: String,
    backend: String,
    state: String,
    params: RunParams,
    results: BTreeMap<String, Reported>,
    /// Time per phase, in the order the run went through them.
    phases: Vec<(String, f64)>,
    artifacts: BTreeSet<String>,
    log: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
struct Reported {
    outcome: String,
    note: String,
    data: BTreeMap<String, Vec<String>>,
}

async fn rerun(global: &GlobalArgs, args: RerunArgs) -> Result<i32, Failure> {
    let source = Source::parse(&args.run).map_err(|e| (exit::USAGE, e))?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(300))
        .build()
        .map_err(|e| (exit::INFRA, format!("making an HTTP client: {e}")))?;
    let recorded = match &source {
        Source::Farm { base, uuid } => from_farm(&http, base, *uuid).await?,
        Source::Here(uuid) => {
            let store = Store::open(&global.db_url())
                .await
                .map_err(|e| (exit::INFRA, format!("opening the store: {e}")))?;
            from_store(
                &store,
                &global.data_dir(),
                *uuid,
                "this host's store".into(),
            )
            .await?
        }
    };

    let backend = match args.backend {
        Some(b) => backend_name(b).to_string(),
        None => match recorded.backend.as_str() {
            "local" | "libvirt" | "openstack" => recorded.backend.clone(),
            other => {
                return Err((
                    exit::USAGE,
                    format!(
                        "run {} ran on the `{other}` backend, which `ferrotron run` has not: \
                         pass --backend local, libvirt or openstack",
                        recorded.uuid
                    ),
                ));
            }
        },
    };
    let image = image_here(&recorded, &backend, &args, global)?;
    let task_dir = match &args.task {
        Some(dir) => dir.clone(),
        None => task_snapshot(&source, &http, &recorded, global).await?,
    };

    let mut params = recorded.params.clone();
    params.image = image.unwrap_or_default();
    params.keep_instance = false;
    // With --format json the run's live output goes to stderr, as `run --format json` does.
    let mut words: Vec<String> = match args.format {
        Format::Json => vec!["--format".into(), "json".into()],
        Format::Text => Vec::new(),
    };
    words.extend(run_args(
        &recorded.item,
        &recorded.item_type,
        &recorded.arch,
        &backend,
        &params,
        &task_dir.display().to_string(),
    ));
    let run_args = AsRun::try_parse_from(&words)
        .map_err(|e| {
            (
                exit::USAGE,
                format!("the run's parameters make no `ferrotron run`: {e}"),
            )
        })?
        .run;
    eprintln!(
        "rerunning run {} ({}): {} on `{}`, backend {backend}{}",
        recorded.uuid,
        recorded.at,
        recorded.task,
        recorded.item,
        if params.image.is_empty() || backend == "local" {
            String::new()
        } else {
            format!(", image {}", params.image)
        }
    );
    let (report, store) = run::execute(global, run_args).await?;
    let here = from_store(
        &store,
        &global.data_dir(),
        report.uuid,
        "this host's store".into(),
    )
    .await?;

    let differing = compare::differing_cases(&outcomes(&recorded), &outcomes(&here));
    let (la, lb) = same_image_same_name(&recorded, &here);
    let diff = compare::diff_lines(&la, &lb);
    if args.format == Format::Json {
        let doc = json_report(&recorded, &here, &differing, &diff);
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("a report serialises")
        );
    } else {
        print_report(&recorded, &here, &differing, &diff);
    }
    Ok(match report.state {
        RunState::Cancelled => exit::CANCELLED,
        RunState::Crashed => exit::INFRA,
        _ if differing.is_empty() => exit::OK,
        _ => 1,
    })
}

/// Both logs, with the image path written as its file name when both runs booted a file of
/// the same name: the same build kept in another directory is no difference.
fn same_image_same_name(a: &Recorded, b: &Recorded) -> (Vec<String>, Vec<String>) {
    let name = |r: &Recorded| Path::new(&r.params.image).file_name().map(|n| n.to_owned());
    let (pa, pb) = (&a.params.image, &b.params.image);
    if pa.is_empty() || pb.is_empty() || pa == pb || name(a) != name(b) {
        return (a.log.clone(), b.log.clone());
    }
    let short = name(a).unwrap_or_default().to_string_lossy().into_owned();
    let swap = |log: &[String], path: &str| -> Vec<String> {
        log.iter().map(|l| l.replace(path, &short)).collect()
    };
    (swap(&a.log, pa), swap(&b.log, pb))
}

/// `ferrotron run`'s own flags and defaults, for a rerun made of a record's parameters.
#[derive(Parser)]
#[command(no_binary_name = true)]
struct AsRun {
    #[command(flatten)]
    run: RunArgs,
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Local => "local",
        Backend::Libvirt => "libvirt",
        Backend::Openstack => "openstack",
    }
}

fn outcomes(r: &Recorded) -> compare::Outcomes {
    r.results
        .iter()
        .map(|(k, v)| (k.clone(), (v.outcome.clone(), v.note.clone())))
        .collect()
}

/// The image to boot here, or `None` for the backend's default. A libvirt run's own image
/// is looked for where it was and in this host's images directory; when it is in neither,
/// nothing runs and the error says how to get it.
fn image_here(
    r: &Recorded,
    backend: &str,
    args: &RerunArgs,
    global: &GlobalArgs,
) -> Result<Option<String>, Failure> {
    if let Some(i) = &args.image {
        return Ok(Some(i.clone()));
    }
    if backend != r.backend || r.params.image.is_empty() {
        return Ok(None);
    }
    if backend != "libvirt" {
        return Ok(Some(r.params.image.clone()));
    }
    let there = Path::new(&r.params.image);
    let images = global.images_dir();
    let name = there.file_name().map(PathBuf::from).unwrap_or_default();
    for candidate in [there.to_path_buf(), images.join(&name)] {
        if candidate.is_file() {
            return Ok(Some(candidate.display().to_string()));
        }
    }
    Err((exit::USAGE, missing_image(r, &name, &images, &args.recipes)))
}

fn missing_image(r: &Recorded, name: &Path, images: &Path, recipes: &Path) -> String {
    let name = name.display();
    let mut m = format!(
        "run {} booted the image {name}, which this host has not (looked in {} and at {}); \
         nothing was run.\n",
        r.uuid,
        images.display(),
        r.params.image
    );
    let p = &r.params;
    m.push_str(&format!(
        "  - copy {name} and its sidecar (the .json beside it, and .vmlinux/.initrd if any) \
         from the farm's images directory into {}, or\n",
        images.display()
    ));
    if p.image_recipe.is_empty() {
        m.push_str(
            "  - build a like image from its recipe (the run did not record which: see \
             `ferrotron image list` on the farm), or\n",
        );
    } else {
        let ours = crate::image::recipe::find(&p.image_recipe, recipes)
            .and_then(|rc| crate::image::build::recipe_hash(&rc));
        let same = match &ours {
            Ok(h) if *h == p.image_recipe_sha256 => {
                "the recipe here is the farm's (same sha256)".to_string()
            }
            Ok(h) => format!(
                "the recipe here hashes to {h}, not the farm's {}: check out the revision \
                 the farm built from for the same image",
                p.image_recipe_sha256
            ),
            Err(e) => format!("no such recipe here: {e}"),
        };
        m.push_str(&format!(
            "  - build it from its recipe: `ferrotron image build {}` ({same}), then rerun \
             with --image {}, or\n",
            p.image_recipe, p.image_recipe
        ));
    }
    m.push_str("  - rerun on another image (--image) or without a VM (--backend local).");
    m
}

/// The task as the run ran it, unpacked into `<data-dir>/tasks/SHA/` (made once per hash,
/// and made again if someone edited it since).
async fn task_snapshot(
    source: &Source,
    http: &reqwest::Client,
    r: &Recorded,
    global: &GlobalArgs,
) -> Result<PathBuf, Failure> {
    let sha = &r.params.task_sha256;
    if !snapshot::is_sha256(sha) {
        return Err((
            exit::USAGE,
            format!(
                "run {} kept no copy of its task (it predates task snapshots): pass --task \
                 DIR with the task to run",
                r.uuid
            ),
        ));
    }
    let tasks = global.data_dir().join("tasks");
    let unpacked = tasks.join(sha);
    let dir = unpacked.clone();
    let want = sha.clone();
    let intact = tokio::task::spawn_blocking(move || {
        dir.is_dir() && snapshot::pack(&dir).is_ok_and(|s| s.sha256 == want)
    })
    .await
    .unwrap_or(false);
    if intact {
        return Ok(unpacked);
    }
    let archive = match source {
        Source::Farm { base, uuid } => {
            let url = format!("{base}/api/v1/runs/{uuid}/task.tar");
            fetch(http, &url, TASK_CAP).await?
        }
        Source::Here(_) => {
            let path = snapshot::path(&tasks, sha).expect("checked above");
            std::fs::read(&path).map_err(|e| {
                (
                    exit::INFRA,
                    format!("the task snapshot {}: {e}", path.display()),
                )
            })?
        }
    };
    let got = snapshot::sha256_hex(&archive);
    if got != *sha {
        return Err((
            exit::INFRA,
            format!(
                "the task snapshot of run {} hashes to {got}, not the recorded {sha}: refusing \
                 to run it",
                r.uuid
            ),
        ));
    }
    let (tasks2, sha2) = (tasks.clone(), sha.clone());
    tokio::task::spawn_blocking(move || -> Result<PathBuf, String> {
        std::fs::create_dir_all(&tasks2).map_err(|e| format!("{}: {e}", tasks2.display()))?;
        let fresh = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(&tasks2)
            .map_err(|e| format!("{}: {e}", tasks2.display()))?;
        let caps = transfer::Caps::bytes(TASK_CAP);
        let got = transfer::unpack_safely(std::io::Cursor::new(archive), fresh.path(), &caps)
            .map_err(|e| format!("unpacking the task snapshot: {e}"))?;
        if let Some((path, why)) = got.refused.first() {
            return Err(format!("unpacking the task snapshot: {path}: {why}"));
        }
        let dest = tasks2.join(&sha2);
        let _ = std::fs::remove_dir_all(&dest);
        let made = fresh.keep();
        std::fs::rename(&made, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        Ok(dest)
    })
    .await
    .map_err(|e| (exit::INFRA, e.to_string()))?
    .map_err(|e| (exit::INFRA, e))
}

/// The run as a farm's runs API describes it, with the start of its log.
async fn from_farm(http: &reqwest::Client, base: &str, uuid: Uuid) -> Result<Recorded, Failure> {
    let url = format!("{base}/api/v1/runs/{uuid}");
    let body = fetch(http, &url, DOC_CAP).await?;
    let doc: RunDoc = serde_json::from_slice(&body).map_err(|e| {
        (
            exit::INFRA,
            format!("{url}: not a ferrotron runs API answer: {e}"),
        )
    })?;
    let log_url = format!("{base}/runs/{uuid}/log");
    let log = fetch(http, &log_url, LOG_READ).await?;
    Ok(Recorded {
        uuid: doc.uuid,
        at: format!("{base}/runs/{uuid}"),
        task: doc.task,
        item: doc.item,
        item_type: doc.item_type,
        arch: doc.arch,
        backend: doc.backend,
        state: doc.state,
        params: RunParams::from_value(&doc.params),
        results: doc
            .results
            .into_iter()
            .map(|r| {
                (
                    compare::result_key(&r.testcase.name, &r.data),
                    Reported {
                        outcome: r.outcome,
                        note: r.note.unwrap_or_default(),
                        data: r.data,
                    },
                )
            })
            .collect(),
        phases: sum_phases(doc.phases.iter().map(|p| (&p.name, p.duration_ms / 1000.0))),
        artifacts: doc.artifacts.into_iter().map(|a| a.path).collect(),
        log: compare::log_lines(&String::from_utf8_lossy(&log)),
    })
}

#[derive(Deserialize)]
struct RunDoc {
    uuid: Uuid,
    task: String,
    #[serde(default)]
    item: String,
    #[serde(rename = "type", default)]
    item_type: String,
    #[serde(default)]
    arch: String,
    backend: String,
    state: String,
    #[serde(default)]
    params: Value,
    #[serde(default)]
    phases: Vec<PhaseDoc>,
    #[serde(default)]
    results: Vec<ResultDoc>,
    #[serde(default)]
    artifacts: Vec<ArtifactDoc>,
}

#[derive(Deserialize)]
struct PhaseDoc {
    name: String,
    duration_ms: f64,
}

#[derive(Deserialize)]
struct ResultDoc {
    testcase: TestcaseDoc,
    outcome: String,
    note: Option<String>,
    #[serde(default)]
    data: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
struct TestcaseDoc {
    name: String,
}

#[derive(Deserialize)]
struct ArtifactDoc {
    path: String,
}

fn sum_phases<'a>(phases: impl Iterator<Item = (&'a String, f64)>) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for (name, s) in phases {
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, t)) => *t += s,
            None => out.push((name.clone(), s)),
        }
    }
    out
}

/// Both runs' phase names: the recorded run's order, then any only the rerun went through.
fn phase_names<'a>(a: &'a Recorded, b: &'a Recorded) -> Vec<&'a str> {
    let mut names: Vec<&str> = a.phases.iter().map(|(n, _)| n.as_str()).collect();
    for (n, _) in &b.phases {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    names
}

fn phase_time(r: &Recorded, name: &str) -> Option<f64> {
    r.phases.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
}

/// A run of this host's store, with the start of its log.
async fn from_store(
    store: &Store,
    data_dir: &Path,
    uuid: Uuid,
    at: String,
) -> Result<Recorded, Failure> {
    let infra = |e: crate::store::StoreError| (exit::INFRA, format!("reading run {uuid}: {e}"));
    let run = store
        .run(uuid)
        .await
        .map_err(infra)?
        .ok_or_else(|| (exit::USAGE, format!("this host's store has no run {uuid}")))?;
    let results = store.run_results(uuid).await.map_err(infra)?;
    let run_dir = data_dir.join("artifacts").join(uuid.to_string());
    let (log_path, root) = (run_dir.join("ferrotron.log"), run_dir.join("task"));
    let (log, artifacts) = tokio::task::spawn_blocking(move || {
        let files: BTreeSet<String> = list_artifacts(&root).into_iter().map(|a| a.path).collect();
        (compare::read_log(&log_path), files)
    })
    .await
    .map_err(|e| (exit::INFRA, e.to_string()))?;
    Ok(Recorded {
        uuid,
        at,
        task: run.task.clone(),
        item: run.item.clone(),
        item_type: run.item_type.clone(),
        arch: run.arch.clone(),
        backend: run.backend.clone(),
        state: run.state.as_str().to_string(),
        params: RunParams::from_value(&run.params),
        results: results
            .into_iter()
            .map(|r| {
                (
                    compare::result_key(&r.testcase, &r.data),
                    Reported {
                        outcome: r.outcome,
                        note: r.note.unwrap_or_default(),
                        data: r.data,
                    },
                )
            })
            .collect(),
        phases: sum_phases(
            run.phases
                .iter()
                .map(|p| (&p.name, p.duration.as_secs_f64())),
        ),
        artifacts,
        log,
    })
}

/// GET `url`, at most `cap` bytes of it (a longer answer is cut there); an error status
/// is an error naming the URL and what the server said.
async fn fetch(http: &reqwest::Client, url: &str, cap: u64) -> Result<Vec<u8>, Failure> {
    let fail = |e: String| (exit::INFRA, format!("{url}: {e}"));
    let mut resp = http.get(url).send().await.map_err(|e| fail(said(&e)))?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| fail(said(&e)))? {
        let room = (cap as usize).saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() as u64 >= cap {
            break;
        }
    }
    if !status.is_success() {
        let said = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
        // A run the farm does not have is the caller's mistake, not the farm's failure.
        let code = if status == reqwest::StatusCode::NOT_FOUND {
            exit::USAGE
        } else {
            exit::INFRA
        };
        return Err((code, format!("{url}: HTTP {status}: {}", said.trim())));
    }
    Ok(body)
}

fn said(e: &reqwest::Error) -> String {
    let first: &(dyn std::error::Error + 'static) = e;
    crate::util::error_chain(std::iter::successors(Some(first), |e| e.source()))
}

fn print_report(a: &Recorded, b: &Recorded, differing: &[String], diff: &[Line<'_>]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\nrecorded: run {} ({}, {})", a.uuid, a.at, a.state);
    let _ = writeln!(out, "rerun:    run {} (here, {})", b.uuid, b.state);
    if a.params.task_sha256 != b.params.task_sha256 {
        let _ = writeln!(
            out,
            "task:     not the same files (recorded {}, rerun {})",
            short(&a.params.task_sha256),
            short(&b.params.task_sha256)
        );
    }
    let cell = |o: Option<&Reported>| match o {
        None => "absent".to_string(),
        Some(o) if o.note.is_empty() => o.outcome.clone(),
        Some(o) => format!("{} ({})", o.outcome, crate::util::truncate_at(&o.note, 40)),
    };
    let cases: BTreeSet<&String> = a.results.keys().chain(b.results.keys()).collect();
    let w = cases.iter().map(|c| c.len()).max().unwrap_or(8).max(8);
    let _ = writeln!(out, "\n  {:<w$}  {:<32}  RERUN", "TESTCASE", "RECORDED");
    for c in &cases {
        let (x, y) = (a.results.get(*c), b.results.get(*c));
        let mark = if differing.contains(c) {
            "≠"
        } else if x.map(|o| &o.data) != y.map(|o| &o.data) {
            "~"
        } else {
            " "
        };
        let _ = writeln!(out, "{mark} {c:<w$}  {:<32}  {}", cell(x), cell(y));
    }
    if cases.is_empty() {
        let _ = writeln!(out, "  (no results on either side)");
    }
    let _ = writeln!(out, "\n  {:<w$}  {:<32}  RERUN", "PHASE", "RECORDED");
    for n in phase_names(a, b) {
        let t = |r: &Recorded| phase_time(r, n).map_or("–".into(), |s| format!("{s:.2} s"));
        let _ = writeln!(out, "  {n:<w$}  {:<32}  {}", t(a), t(b));
    }
    let only_a: Vec<&String> = a.artifacts.difference(&b.artifacts).collect();
    let only_b: Vec<&String> = b.artifacts.difference(&a.artifacts).collect();
    if only_a.is_empty() && only_b.is_empty() {
        let _ = writeln!(out, "\nartifacts: the same files");
    } else {
        for (side, only) in [("recorded", only_a), ("rerun", only_b)] {
            for p in only {
                let _ = writeln!(out, "\nartifact only in the {side} run: {p}");
            }
        }
    }
    let changed = diff.iter().filter(|l| !matches!(l, Line::Same(_))).count();
    let _ = writeln!(
        out,
        "\nlog: {changed} lines differ (run ids, times and durations normalised; the first {} \
         lines of each)",
        compare::LOG_LINES
    );
    let shown = if changed == 0 { 0 } else { DIFF_SHOWN };
    for l in compare::context(diff, 2).into_iter().take(shown) {
        let _ = match l {
            Some(Line::Same(s)) => writeln!(out, "    {s}"),
            Some(Line::OnlyA(s)) => writeln!(out, "  - {s}"),
            Some(Line::OnlyB(s)) => writeln!(out, "  + {s}"),
            None => writeln!(out, "    …"),
        };
    }
    let _ = if differing.is_empty() {
        writeln!(
            out,
            "\noutcomes agree: {} of {} results",
            cases.len(),
            cases.len()
        )
    } else {
        writeln!(
            out,
            "\noutcomes differ: {} of {} results ({})",
            differing.len(),
            cases.len(),
            differing.join(", ")
        )
    };
}

fn short(sha: &str) -> &str {
    if sha.is_empty() {
        "none"
    } else {
        &sha[..sha.len().min(12)]
    }
}

fn json_report(a: &Recorded, b: &Recorded, differing: &[String], diff: &[Line<'_>]) -> Value {
    let side = |r: &Recorded| {
        json!({
            "uuid": r.uuid,
            "at": r.at,
            "state": r.state,
            "backend": r.backend,
            "image": r.params.image,
            "task_sha256": r.params.task_sha256,
        })
    };
    let cases: BTreeSet<&String> = a.results.keys().chain(b.results.keys()).collect();
    json!({
        "recorded": side(a),
        "rerun": side(b),
        "agree": differing.is_empty(),
        "differing": differing,
        "results": cases.iter().map(|c| json!({
            "testcase": c,
            "recorded": a.results.get(*c),
            "rerun": b.results.get(*c),
            "same_outcome": !differing.contains(c),
        })).collect::<Vec<_>>(),
        "phases": phase_names(a, b).iter().map(|n| json!({
            "name": n,
            "recorded_s": phase_time(a, n),
            "rerun_s": phase_time(b, n),
        })).collect::<Vec<_>>(),
        "artifacts": {
            "recorded_only": a.artifacts.difference(&b.artifacts).collect::<Vec<_>>(),
            "rerun_only": b.artifacts.difference(&a.artifacts).collect::<Vec<_>>(),
        },
        "log_diff": diff.iter().filter_map(|l| match l {
            Line::Same(_) => None,
            Line::OnlyA(s) => Some(format!("- {s}")),
            Line::OnlyB(s) => Some(format!("+ {s}")),
        }).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_urls_and_uuids_parse_and_others_are_named() {
        let u = "0193d0c4-0000-7000-8000-000000000001";
        match Source::parse(&format!("https://farm.example/ci/runs/{u}/log?x=1")).unwrap() {
            Source::Farm { base, uuid } => {
                assert_eq!(base, "https://farm.example/ci");
                assert_eq!(uuid.to_string(), u);
            }
            Source::Here(_) => panic!("a URL is a farm's"),
        }
        match Source::parse(&format!("http://h:8080/api/v1/runs/{u}")).unwrap() {
            Source::Farm { base, .. } => assert_eq!(base, "http://h:8080"),
            Source::Here(_) => panic!("a URL is a farm's"),
        }
        assert!(matches!(Source::parse(u).unwrap(), Source::Here(_)));
        let e = Source::parse("http://h/runs/nope").err().unwrap();
        assert!(e.contains("`nope` is not a run uuid"), "{e}");
        let e = Source::parse("ftp://h/runs/x").err().unwrap();
        assert!(e.contains("`ftp://h/runs/x` is neither"), "{e}");
    }
}
