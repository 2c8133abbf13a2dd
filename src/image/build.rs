//! `ferrotron image build`: a recipe becomes `YYMMDD_HHMM-DISTRO-RELEASE-FLAVOR-ARCH.qcow2`.
//!
//! source → boot once (a disposable instance from the same provider and guest code as runs)
//! → packages and provisioning scripts over SSH, with live output → package inventory →
//! clean (cloud-init state, machine id, keys, logs) → power off → compact (the provider
//! writes the instance's disk, flattened and compressed, as a standalone qcow2) → sidecar →
//! register with the provider (optional) → publish.
//!
//! Everything is made in a staging directory `.build-STEM` inside the images directory and
//! renamed into place at the end (the qcow2 last), so a failed, interrupted or killed build
//! leaves no image behind; the next build of the same image removes a killed build's staging
//! directory. The instance is deleted in every outcome. The build log (every line shown) ends
//! beside the image as `STEM.log`, or in `.failed/` when the build fails.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::watch;
use uuid::Uuid;

use super::recipe::{BootMode, Recipe, Source};
use super::source::{self, Prepared, io_err};
use super::{BaseImage, ImageError, SIDECARS};
use crate::guest::keys::RunKeys;
use crate::guest::{Command, Session, Stream, shell_quote, transfer};
use crate::provider::{InstanceMeta, InstanceSpec, Provider};
use crate::runner::event::{Event, LineBuffer};

/// The helper scripts every build runs in the guest; part of ferrotron, not of a recipe.
const GUEST_HELPERS: [(&str, &str); 3] = [
    (
        "install-packages.sh",
        include_str!("../../provisioning/guest/install-packages.sh"),
    ),
    (
        "list-packages.sh",
        include_str!("../../provisioning/guest/list-packages.sh"),
    ),
    (
        "cleanup.sh",
        include_str!("../../provisioning/guest/cleanup.sh"),
    ),
];
/// Where the build's scripts go in the guest (removed again by cleanup.sh).
const GUEST_DIR: &str = "/var/tmp/ferrotron-build";
/// First wait between attempts at deleting the build instance (then doubled).
const DESTROY_BACKOFF: Duration = Duration::from_millis(500);
/// How long a guest may take to power itself off.
const POWEROFF_GRACE: Duration = Duration::from_secs(180);

pub use crate::runner::EventSink;

pub use super::ctl::{Ctl, Stop};

pub struct BuildOptions {
    pub images_dir: PathBuf,
    /// Downloads and debootstrap trees, kept between builds.
    pub cache_dir: PathBuf,
    pub provider: Arc<dyn Provider>,
    /// Recorded in the instance's metadata (and so seen by the reaper).
    pub owner: String,
    /// The build instance's run id.
    pub build_id: Uuid,
    pub timeout: Duration,
    /// Hand the finished image to this provider (`Provider::upload_image`): the build's own,
    /// or one on another host (its storage pools).
    pub register: Option<Arc<dyn Provider>>,
    pub sink: EventSink,
}

/// A finished build.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Built {
    pub image: PathBuf,
    pub log: PathBuf,
    pub disk_bytes: u64,
    pub seconds: f64,
    pub phases: Vec<(String, f64)>,
    pub registered: Vec<String>,
    pub packages: usize,
}

/// What the build made so far, outside the body future so that cleanup always sees it.
#[derive(Default)]
struct State {
    instance: Mutex<Option<String>>,
    phases: Mutex<Vec<(String, f64)>>,
}

/// Builds `recipe` into `opts.images_dir`. On any failure (or SIGINT/SIGTERM through
/// `cancel`, or the timeout) nothing is published, the instance is deleted and the staging
/// directory removed; the log is kept in `.failed/` and its path reported.
pub async fn build(
    recipe: &Recipe,
    opts: &BuildOptions,
    cancel: watch::Receiver<bool>,
) -> Result<Built, ImageError> {
    recipe.check_files()?;
    let images = &opts.images_dir;
    std::fs::create_dir_all(images).map_err(io_err(format!("creating {}", images.display())))?;
    let key = recipe.key();
    let _lock = lock(&images.join(format!(".lock-{key}")))?;
    remove_stale_staging(images, &key);

    let started_at = OffsetDateTime::now_utc();
    let stem = format!("{}-{key}", super::stamp(started_at));
    if images.join(format!("{stem}.qcow2")).exists() {
        return Err(ImageError::Build(format!(
            "{stem}.qcow2 exists already (built this minute); build again in a minute"
        )));
    }
    let staging = images.join(format!(".build-{stem}"));
    std::fs::create_dir(&staging).map_err(io_err(format!("creating {}", staging.display())))?;
    // libvirt's qemu user reads the staged source disk through this directory.
    let _ = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755));
    let log_path = staging.join("build.log");
    let log = std::fs::File::create(&log_path).map_err(io_err("creating the build log"))?;
    let ctl = Ctl::new(
        opts.sink.clone(),
        Some(log),
        Stop::new(cancel, opts.timeout),
    );
    let state = State::default();
    let t0 = Instant::now();
    ctl.note(format!(
        "building {stem} from {} ({} source), build {}",
        recipe.path.display(),
        recipe.source.kind(),
        opts.build_id
    ));

    let result = body(recipe, opts, &ctl, &state, &staging, &stem, started_at, t0).await;

    // Cleanup, whatever happened. A second signal does not interrupt it.
    let leftover = state.instance.lock().expect("instance lock").take();
    if let Some(id) = leftover {
        delete_instance(opts.provider.as_ref(), &id, &ctl).await;
    }
    match result {
        Ok(built) => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(built)
        }
        Err(e) => {
            let failed = images.join(".failed");
            let kept = std::fs::create_dir_all(&failed)
                .and_then(|()| std::fs::rename(&log_path, failed.join(format!("{stem}.log"))))
                .map(|()| failed.join(format!("{stem}.log")));
            ctl.note(format!(
                "build of {stem} {}; nothing was published{}",
                if matches!(e, ImageError::Cancelled) {
                    "interrupted".to_string()
                } else {
                    format!("failed: {e}")
                },
                match &kept {
                    Ok(p) => format!("; log: {}", p.display()),
                    Err(_) => String::new(),
                }
            ));
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn body(
    recipe: &Recipe,
    opts: &BuildOptions,
    ctl: &Ctl,
    state: &State,
    staging: &Path,
    stem: &str,
    started_at: OffsetDateTime,
    t0: Instant,
) -> Result<Built, ImageError> {
    let recipe_sha256 = recipe_hash(recipe)?;
    let src = phase(ctl, state, "source", async {
        source::prepare(recipe, staging, &opts.cache_dir, ctl).await
    })
    .await?;
    let boot = boot_sidecar(recipe, &src);
    // A first boot does more (cloud-init's first run, key generation) on a busy build host.
    let mut first_boot = boot.clone();
    first_boot["timeout_s"] = serde_json::json!(recipe.boot.timeout_s * 2);
    write_json(&staging.join("source.json"), &first_boot)?;

    let keys = RunKeys::generate().map_err(|e| ImageError::Infra(e.to_string()))?;
    let session = phase(
        ctl,
        state,
        "boot",
        boot_instance(opts, ctl, state, &src, &keys),
    )
    .await?;

    // The build's scripts, in one upload: ferrotron's helpers and the recipe's, numbered.
    let scripts = staging.join("guest");
    std::fs::create_dir(&scripts).map_err(io_err("staging the guest scripts"))?;
    let mut provision = Vec::new();
    for (name, text) in GUEST_HELPERS {
        write_script(&scripts.join(name), text.as_bytes())?;
    }
    for (i, p) in recipe.provision.iter().enumerate() {
        let from = recipe.resolve_path(p);
        let base = from.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = format!("{:02}-{}", i + 1, base.unwrap_or_else(|| "script".into()));
        let text = std::fs::read(&from).map_err(io_err(format!("reading {}", from.display())))?;
        write_script(&scripts.join(&name), &text)?;
        provision.push((p.clone(), name));
    }
    ctl.stop
        .guard(async {
            transfer::put_dir(session.as_ref(), &scripts, GUEST_DIR)
                .await
                .map_err(|e| ImageError::Infra(format!("uploading the build scripts: {e}")))
                .map(|_| ())
        })
        .await?;

    let env = [
        ("FERROTRON_IMAGE", stem.to_string()),
        ("FERROTRON_RECIPE", recipe.name.clone()),
        ("FERROTRON_RECIPE_SHA256", recipe_sha256.clone()),
        ("FERROTRON_BUILD_ID", opts.build_id.to_string()),
        ("DEBIAN_FRONTEND", "noninteractive".to_string()),
    ];
    let sudo = recipe.user != "root";
    let run = |file: &str, args: &[String]| {
        let mut cmd = format!("cd {GUEST_DIR} && ");
        if sudo {
            cmd.push_str("sudo -n ");
        }
        cmd.push_str("env");
        for (k, v) in &env {
            cmd.push_str(&format!(" {k}={}", shell_quote(v)));
        }
        cmd.push_str(&format!(" ./{}", shell_quote(file)));
        for a in args {
            cmd.push(' ');
            cmd.push_str(&shell_quote(a));
        }
        cmd
    };

    let in_chroot = matches!(recipe.source, Source::Debootstrap { .. });
    if !recipe.packages.is_empty() && !in_chroot {
        phase(ctl, state, "packages", async {
            guest_step(
                session.as_ref(),
                &run("install-packages.sh", &recipe.packages),
                "packages",
                ctl,
            )
            .await
        })
        .await?;
    }
    for (path, file) in &provision {
        let label = format!("provision {path}");
        phase(ctl, state, &label, async {
            guest_step(session.as_ref(), &run(file, &[]), &label, ctl)
                .await
                .map_err(|e| match e {
                    ImageError::Build(m) => {
                        ImageError::Build(format!("provisioning script {path}: {m}"))
                    }
                    other => other,
                })
        })
        .await?;
    }
    let packages = phase(ctl, state, "inventory", async {
        let mut out = Vec::new();
        let code = ctl
            .stop
            .guard(async {
                session
                    .exec(
                        &Command::new(run("list-packages.sh", &[]), "/"),
                        &mut |s, chunk| {
                            if s == Stream::Stdout {
                                out.extend_from_slice(chunk);
                            }
                            Ok(())
                        },
                    )
                    .await
                    .map_err(|e| ImageError::Infra(format!("listing packages: {e}")))
            })
            .await?;
        if code != 0 {
            return Err(ImageError::Build(format!(
                "listing packages exited with {code}"
            )));
        }
        Ok(parse_packages(&String::from_utf8_lossy(&out)))
    })
    .await?;
    ctl.note(format!("{} packages installed", packages.len()));
    phase(ctl, state, "clean", async {
        guest_step(session.as_ref(), &run("cleanup.sh", &[]), "clean", ctl).await
    })
    .await?;

    let disk = staging.join(format!("{stem}.qcow2"));
    phase(ctl, state, "compact", async {
        // The guest powers itself off (a clean file system); the session may die with it.
        let off = "sync; if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; \
                   then systemctl --no-block poweroff; \
                   else (sleep 1; poweroff || busybox poweroff) </dev/null >/dev/null 2>&1 & fi";
        let off = if sudo {
            format!("sudo -n sh -c {}", shell_quote(off))
        } else {
            off.to_string()
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(20),
            session.exec(&Command::new(off, "/"), &mut |_, _| Ok(())),
        )
        .await;
        drop(session);
        let id = state
            .instance
            .lock()
            .expect("instance lock")
            .clone()
            .expect("an instance exists after boot");
        ctl.stop
            .guard(async {
                opts.provider
                    .capture_disk(&id, &disk, POWEROFF_GRACE)
                    .await
                    .map_err(|e| ImageError::Infra(e.to_string()))
            })
            .await?;
        let id = state.instance.lock().expect("instance lock").take();
        if let Some(id) = id {
            delete_instance(opts.provider.as_ref(), &id, ctl).await;
        }
        Ok(())
    })
    .await?;
    let disk_bytes = std::fs::metadata(&disk)
        .map_err(io_err(format!("reading {}", disk.display())))?
        .len();

    // The image's files, under their final names, in the staging directory.
    let _ = std::fs::remove_file(&src.disk);
    let mut side = boot;
    let mut files = Vec::new();
    for (from, ext, field) in [
        (&src.kernel, "vmlinux", "kernel"),
        (&src.initrd, "initrd", "initrd"),
    ] {
        if let Some(from) = from {
            let name = format!("{stem}.{ext}");
            std::fs::rename(from, staging.join(&name)).map_err(io_err("naming the kernel"))?;
            side[field] = serde_json::json!(name);
            files.push(name);
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let phases = state.phases.lock().expect("phases lock").clone();
    let extra = serde_json::json!({
        "distro": recipe.distro,
        "release": recipe.release,
        "flavor": recipe.flavor,
        "arch": recipe.arch,
        "image": format!("{stem}.qcow2"),
        "recipe": recipe.name,
        "recipe_file": recipe.path.display().to_string(),
        "recipe_sha256": recipe_sha256,
        "source": {"kind": recipe.source.kind(), "origin": src.origin, "sha256": src.sha256},
        "packages": packages,
        "build_log": format!("{stem}.log"),
        "built_at": started_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "build_seconds": (seconds * 10.0).round() / 10.0,
        "build_phases": phases.iter().map(|(n, s)| (n.clone(), serde_json::json!((s * 10.0).round() / 10.0))).collect::<serde_json::Map<_, _>>(),
        "build_id": opts.build_id,
        "builder": opts.owner,
        "disk_bytes": disk_bytes,
    });
    for (k, v) in extra.as_object().expect("an object") {
        side[k] = v.clone();
    }
    write_json(&staging.join(format!("{stem}.json")), &side)?;
    files.push(format!("{stem}.json"));

    let mut registered = Vec::new();
    if let Some(registrar) = &opts.register {
        let image = BaseImage::open(&disk)?;
        registered = phase(ctl, state, "register", async {
            ctl.stop
                .guard(async {
                    registrar
                        .upload_image(&image)
                        .await
                        .map_err(|e| ImageError::Infra(format!("registering the image: {e}")))
                })
                .await
        })
        .await?;
        for r in &registered {
            ctl.note(format!("registered: {r}"));
        }
    }

    // Publish: sidecars first, the disk last (a scan never sees a disk without them).
    let images = &opts.images_dir;
    std::fs::File::open(&disk)
        .and_then(|f| f.sync_all())
        .map_err(io_err(format!("syncing {}", disk.display())))?;
    let log = images.join(format!("{stem}.log"));
    ctl.note(format!(
        "built {stem}.qcow2: {:.1} MiB, {} packages, in {}",
        disk_bytes as f64 / 1048576.0,
        packages.len(),
        crate::util::human_duration(t0.elapsed())
    ));
    for name in &files {
        std::fs::rename(staging.join(name), images.join(name))
            .map_err(io_err(format!("publishing {name}")))?;
    }
    std::fs::rename(staging.join("build.log"), &log).map_err(io_err("publishing the log"))?;
    let image = images.join(format!("{stem}.qcow2"));
    std::fs::rename(&disk, &image).map_err(io_err("publishing the image"))?;
    ctl.note(format!("published {}", image.display()));
    Ok(Built {
        image,
        log,
        disk_bytes,
        seconds,
        phases,
        registered,
        packages: packages.len(),
    })
}

/// Times one step, records it and reports it like a run's phases.
async fn phase<T>(
    ctl: &Ctl,
    state: &State,
    name: &str,
    fut: impl std::future::Future<Output = Result<T, ImageError>>,
) -> Result<T, ImageError> {
    ctl.emit(Event::PhaseStarted { name: name.into() });
    let t0 = Instant::now();
    let r = fut.await;
    let d = t0.elapsed();
    state
        .phases
        .lock()
        .expect("phases lock")
        .push((name.to_string(), d.as_secs_f64()));
    ctl.emit(Event::PhaseFinished {
        name: name.into(),
        duration: d,
        ok: r.is_ok(),
    });
    r
}

/// The sidecar the build instance boots from (and the base of the image's own).
fn boot_sidecar(recipe: &Recipe, src: &Prepared) -> serde_json::Value {
    let direct = recipe.boot.mode == BootMode::Direct;
    serde_json::json!({
        "kernel": src.kernel.as_ref().filter(|_| direct).map(|_| "source.vmlinux"),
        "initrd": src.initrd.as_ref().filter(|_| direct).map(|_| "source.initrd"),
        "cmdline": if direct { recipe.boot.cmdline.clone().or_else(|| src.cmdline.clone()) } else { None },
        "boot": if direct { "direct" } else { "bootloader" },
        "user": recipe.user,
        "memory_mib": recipe.boot.memory_mib,
        "vcpus": recipe.boot.vcpus,
        "timeout_s": recipe.boot.timeout_s,
    })
}

async fn boot_instance(
    opts: &BuildOptions,
    ctl: &Ctl,
    state: &State,
    src: &Prepared,
    keys: &RunKeys,
) -> Result<Arc<dyn Session>, ImageError> {
    let spec = InstanceSpec {
        meta: InstanceMeta {
            run_uuid: opts.build_id,
            owner: opts.owner.clone(),
            image: src.disk.display().to_string(),
            created_at: OffsetDateTime::now_utc(),
        },
        client_public_key: keys.client_public(),
        host_private_key_openssh: keys.host_private_openssh(),
        host_public_key: keys.host_public(),
    };
    let mut last = String::new();
    for attempt in 1..=2 {
        let created = ctl
            .stop
            .guard(async {
                opts.provider
                    .create(&spec)
                    .await
                    .map_err(|e| ImageError::Infra(e.to_string()))
            })
            .await;
        let instance = match created {
            Ok(i) => i,
            Err(ImageError::Infra(e)) => {
                last = e;
                ctl.note(format!("creating the build instance failed: {last}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        *state.instance.lock().expect("instance lock") = Some(instance.id.clone());
        ctl.note(format!(
            "build instance {} (attempt {attempt}), waiting up to {}s for SSH",
            instance.id,
            instance.boot_timeout.as_secs()
        ));
        let connected = ctl
            .stop
            .guard(async {
                crate::runner::connect(&instance, keys)
                    .await
                    .map_err(|e| ImageError::Infra(e.to_string()))
            })
            .await;
        match connected {
            Ok(s) => return Ok(s),
            Err(ImageError::Infra(e)) => {
                last = e;
                ctl.note(format!("build instance did not answer: {last}"));
                let id = state.instance.lock().expect("instance lock").take();
                if let Some(id) = id {
                    delete_instance(opts.provider.as_ref(), &id, ctl).await;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(ImageError::Infra(format!(
        "no build instance came up after 2 attempts: {last}"
    )))
}

async fn delete_instance(provider: &dyn Provider, id: &str, ctl: &Ctl) {
    let deleted = crate::util::retry(3, DESTROY_BACKOFF, DESTROY_BACKOFF * 4, || {
        provider.delete(id)
    })
    .await;
    match deleted {
        Ok(()) => ctl.note(format!("deleted build instance {id}")),
        Err(e) => ctl.note(format!(
            "could not delete build instance {id}: {e}; `ferrotron reap` will remove it"
        )),
    }
}

/// Runs one command in the guest with live output; a non-zero exit is a build failure.
async fn guest_step(
    session: &dyn Session,
    script: &str,
    label: &str,
    ctl: &Ctl,
) -> Result<(), ImageError> {
    let mut out = LineBuffer::default();
    let mut err = LineBuffer::default();
    let code = ctl
        .stop
        .guard(async {
            let r = session
                .exec(&Command::new(script, "/"), &mut |s, chunk| {
                    match s {
                        Stream::Stdout => out.push(chunk, |l| ctl.output(label, s, l)),
                        Stream::Stderr => err.push(chunk, |l| ctl.output(label, s, l)),
                    }
                    Ok(())
                })
                .await
                .map_err(|e| ImageError::Infra(format!("{label}: {e}")));
            out.finish(|l| ctl.output(label, Stream::Stdout, l));
            err.finish(|l| ctl.output(label, Stream::Stderr, l));
            r
        })
        .await?;
    if code == 0 {
        Ok(())
    } else {
        Err(ImageError::Build(format!("exited with status {code}")))
    }
}

/// `name version` lines into a map.
fn parse_packages(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?;
            Some((name.to_string(), it.next().unwrap_or("").to_string()))
        })
        .collect()
}

/// sha256 over the recipe and every file of this repository it builds with, so a changed
/// provisioning script changes the hash.
pub fn recipe_hash(recipe: &Recipe) -> Result<String, ImageError> {
    let mut h = Sha256::new();
    let mut add = |label: &str, bytes: &[u8]| {
        h.update((label.len() as u64).to_le_bytes());
        h.update(label.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    let read = |p: &Path| std::fs::read(p).map_err(io_err(format!("reading {}", p.display())));
    add("recipe", &read(&recipe.path)?);
    match &recipe.source {
        Source::Script { script, .. } => add(script, &read(&recipe.resolve_path(script))?),
        Source::Debootstrap { .. } => {
            let s = "provisioning/build-debian.sh";
            add(s, &read(&recipe.resolve_path(s))?);
        }
        Source::File { .. } | Source::Url { .. } => {}
    }
    for p in &recipe.provision {
        add(p, &read(&recipe.resolve_path(p))?);
    }
    for (name, text) in GUEST_HELPERS {
        add(name, text.as_bytes());
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn write_script(path: &Path, text: &[u8]) -> Result<(), ImageError> {
    std::fs::write(path, text).map_err(io_err(format!("writing {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err(format!("chmod {}", path.display())))
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), ImageError> {
    let mut text = serde_json::to_string_pretty(v).expect("JSON serialises");
    text.push('\n');
    std::fs::write(path, text).map_err(io_err(format!("writing {}", path.display())))?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    Ok(())
}

/// One build per image key at a time (flock; released when the process ends, however).
fn lock(path: &Path) -> Result<std::fs::File, ImageError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(ImageError::Build(format!(
            "another build of this image is running (it holds {})",
            path.display()
        )));
    }
    Ok(f)
}

/// Staging directories of this key left by a build that was killed (we hold the key's
/// lock, so none of them is live).
fn remove_stale_staging(images: &Path, key: &str) {
    for e in std::fs::read_dir(images).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".build-") && name.ends_with(&format!("-{key}")) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The files of a published image, for callers that list or remove them.
pub fn image_files(image: &Path) -> Vec<PathBuf> {
    let mut v = vec![image.to_path_buf()];
    v.extend(
        SIDECARS
            .iter()
            .map(|ext| image.with_extension(ext))
            .filter(|p| p.exists()),
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_lists_parse() {
        let p = parse_packages("bash 5.2-1\npython3 3.11.2-1\n\nbusybox\n");
        assert_eq!(p.len(), 3);
        assert_eq!(p["python3"], "3.11.2-1");
        assert_eq!(p["busybox"], "");
    }

    #[test]
    fn recipe_hashes_follow_their_scripts() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("images")).unwrap();
        std::fs::create_dir_all(tmp.path().join("provisioning")).unwrap();
        let recipe = tmp.path().join("images/r.yaml");
        std::fs::write(
            &recipe,
            "name: r\ndistro: d\nrelease: \"1\"\nflavor: f\narch: x86_64\nsource: {file: /dev/null}\nboot: {mode: bootloader}\nprovision: [provisioning/p.sh]\n",
        )
        .unwrap();
        std::fs::write(tmp.path().join("provisioning/p.sh"), "echo 1\n").unwrap();
        let r = Recipe::load(&recipe).unwrap();
        let a = recipe_hash(&r).unwrap();
        assert_eq!(a, recipe_hash(&r).unwrap());
        std::fs::write(tmp.path().join("provisioning/p.sh"), "echo 2\n").unwrap();
        assert_ne!(a, recipe_hash(&r).unwrap());
    }

    #[test]
    fn one_build_per_key() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(".lock-k");
        let held = lock(&p).unwrap();
        let e = lock(&p).unwrap_err().to_string();
        assert!(e.contains("another build"), "{e}");
        drop(held);
        assert!(lock(&p).is_ok());
    }
}
