//! The first step of a build: the recipe's source becomes `source.qcow2` (+ `source.vmlinux`,
//! `source.initrd` for direct boot) in the build's staging directory.
//!
//! - `file`: a local qcow2/raw image, checked against its sha256 when the recipe gives one;
//! - `url`: downloaded into the cache under its sha256 (progress bar, resumed with `Range`
//!   after an interruption, verified before use; a mismatch deletes the download);
//! - `debootstrap`: provisioning/build-debian.sh, offline from Debian's packages (its trees
//!   are cached in the cache directory);
//! - `script`: the recipe's own script.
//!
//! Scripts run in their own process group with live output; when the build is stopped they
//! get SIGTERM (their traps unmount and clean up) and are waited for.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::ctl::Ctl;
use super::recipe::{Recipe, Source};
use super::{BaseImage, ImageError, newest};
use crate::guest::Stream;
use crate::runner::event::{Event, LineBuffer};

/// What the source step produced, inside the staging directory.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub disk: PathBuf,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// The kernel command line the source's own sidecar gave, if any.
    pub cmdline: Option<String>,
    /// sha256 of the source as obtained: the downloaded or given file, or the built disk.
    pub sha256: String,
    /// Where it came from, for the sidecar.
    pub origin: String,
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// sha256 of a file, in lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn sha256_blocking(path: &Path) -> Result<String, ImageError> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || sha256_file(&p))
        .await
        .map_err(|e| ImageError::Build(format!("hashing worker failed: {e}")))?
        .map_err(io_err(format!("hashing {}", path.display())))
}

/// Runs a helper program to completion; its stderr becomes the error.
pub(crate) async fn tool(cmd: &mut tokio::process::Command, what: &str) -> Result<(), ImageError> {
    let out = cmd
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| ImageError::Infra(format!("cannot run {what}: {e} (is it installed?)")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ImageError::Build(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Prepares the recipe's source in `staging`.
pub async fn prepare(
    recipe: &Recipe,
    staging: &Path,
    cache: &Path,
    ctl: &Ctl,
) -> Result<Prepared, ImageError> {
    let disk = staging.join("source.qcow2");
    match &recipe.source {
        Source::File { path, sha256 } => {
            let file = recipe.resolve_path(path);
            ctl.note(format!("source: {}", file.display()));
            let got = ctl.stop.guard(sha256_blocking(&file)).await?;
            if let Some(want) = sha256
                && &got != want
            {
                return Err(ImageError::Build(format!(
                    "sha256 mismatch for {}: the recipe expects {want}, the file has {got}",
                    file.display()
                )));
            }
            let mut p = convert(recipe, &file, &disk, ctl).await?;
            p.sha256 = got;
            p.origin = file.display().to_string();
            Ok(p)
        }
        Source::Url { url, sha256 } => {
            let file = ctl
                .stop
                .guard(download(url, sha256, &cache.join("downloads"), ctl))
                .await?;
            let mut p = convert(recipe, &file, &disk, ctl).await?;
            p.sha256 = sha256.clone();
            p.origin = url.clone();
            Ok(p)
        }
        Source::Script { script, args } => {
            let script = recipe.resolve_path(script);
            let mut cmd = tokio::process::Command::new("bash");
            cmd.arg(&script).arg(staging.join("src")).args(args);
            run_logged(cmd, "source", ctl).await?;
            adopt(recipe, staging, &script.display().to_string(), ctl).await
        }
        Source::Debootstrap {
            suite,
            variant,
            mirror,
            packages,
        } => {
            let script = recipe.resolve_path("provisioning/build-debian.sh");
            if !script.is_file() {
                return Err(ImageError::Invalid {
                    path: recipe.path.clone(),
                    reason: format!(
                        "source.debootstrap: needs {} (debootstrap sources are built by it)",
                        script.display()
                    ),
                });
            }
            let mut cmd = tokio::process::Command::new("bash");
            cmd.arg(&script)
                .arg(staging.join("src"))
                .args(["--suite", suite, "--variant", variant])
                .args(["--release", &recipe.release, "--flavor", &recipe.flavor])
                .arg("--cache-dir")
                .arg(cache.join("debian"));
            if !packages.is_empty() {
                cmd.args(["--include", &packages.join(",")]);
            }
            if !recipe.packages.is_empty() {
                cmd.args(["--packages", &recipe.packages.join(",")]);
            }
            if let Some(m) = mirror {
                cmd.env("DEBIAN_MIRROR", m);
            }
            if let Some(size) = recipe.disk_size {
                cmd.env("DEBIAN_ROOT_SIZE", size.to_string());
            }
            if let Some(c) = &recipe.boot.cmdline {
                cmd.env("DEBIAN_CMDLINE", c);
            }
            run_logged(cmd, "debootstrap", ctl).await?;
            adopt(
                recipe,
                staging,
                &format!("debootstrap {suite} ({variant})"),
                ctl,
            )
            .await
        }
    }
}

/// Makes `src` (qcow2 or raw) the staged `source.qcow2`, grown to the recipe's disk size,
/// with the recipe's kernel and initrd beside it for direct boot.
async fn convert(
    recipe: &Recipe,
    src: &Path,
    disk: &Path,
    ctl: &Ctl,
) -> Result<Prepared, ImageError> {
    let staging = disk.parent().expect("staged disk has a directory");
    ctl.stop
        .guard(tool(
            tokio::process::Command::new("qemu-img")
                .args(["convert", "-q", "-O", "qcow2"])
                .arg(src)
                .arg(disk),
            "qemu-img convert (is the source a disk image?)",
        ))
        .await?;
    if let Some(size) = recipe.disk_size {
        let virtual_size = virtual_size(disk).await?;
        if size > virtual_size {
            tool(
                tokio::process::Command::new("qemu-img")
                    .args(["resize", "-q", "-f", "qcow2"])
                    .arg(disk)
                    .arg(size.to_string()),
                "qemu-img resize",
            )
            .await?;
        } else if size < virtual_size {
            ctl.note(format!(
                "disk_size {size} is below the source's {virtual_size} bytes; kept the source's size"
            ));
        }
    }
    let copy = |field: &Option<String>, ext: &str| -> Result<Option<PathBuf>, ImageError> {
        let Some(f) = field else { return Ok(None) };
        let to = staging.join(format!("source.{ext}"));
        std::fs::copy(recipe.resolve_path(f), &to).map_err(io_err(format!("copying {f}")))?;
        Ok(Some(to))
    };
    Ok(Prepared {
        disk: disk.to_path_buf(),
        kernel: copy(&recipe.boot.kernel, "vmlinux")?,
        initrd: copy(&recipe.boot.initrd, "initrd")?,
        cmdline: None,
        sha256: String::new(),
        origin: String::new(),
    })
}

async fn virtual_size(disk: &Path) -> Result<u64, ImageError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(disk)
        .output()
        .await
        .map_err(|e| ImageError::Infra(format!("cannot run qemu-img info: {e}")))?;
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["virtual-size"].as_u64())
        .ok_or_else(|| {
            ImageError::Build(format!(
                "qemu-img info {}: {}",
                disk.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        })
}

/// Takes the image a script wrote into `staging/src` as the staged source.
async fn adopt(
    recipe: &Recipe,
    staging: &Path,
    origin: &str,
    ctl: &Ctl,
) -> Result<Prepared, ImageError> {
    let out = staging.join("src");
    let made = newest(&out, &recipe.key()).ok_or_else(|| {
        ImageError::Build(format!(
            "{origin} succeeded but wrote no {}-*.qcow2",
            recipe.key()
        ))
    })?;
    let img = BaseImage::open(&made)?;
    let disk = staging.join("source.qcow2");
    let mv = |from: &Path, to: PathBuf| -> Result<PathBuf, ImageError> {
        std::fs::rename(from, &to).map_err(io_err(format!("moving {}", from.display())))?;
        Ok(to)
    };
    let kernel = match &img.boot.kernel {
        Some(k) => Some(mv(k, staging.join("source.vmlinux"))?),
        None => None,
    };
    let initrd = match &img.boot.initrd {
        Some(i) => Some(mv(i, staging.join("source.initrd"))?),
        None => None,
    };
    mv(&made, disk.clone())?;
    let _ = std::fs::remove_dir_all(&out);
    let sha256 = ctl.stop.guard(sha256_blocking(&disk)).await?;
    Ok(Prepared {
        disk,
        kernel,
        initrd,
        cmdline: img.boot.cmdline,
        sha256,
        origin: origin.to_string(),
    })
}

/// Runs `cmd` (a build script) with its output in the build's log as `[what] line`. A
/// stopped build sends SIGTERM to the script's process group and waits for it to clean up.
pub(crate) async fn run_logged(
    mut cmd: tokio::process::Command,
    what: &str,
    ctl: &Ctl,
) -> Result<(), ImageError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| ImageError::Infra(format!("cannot start {what}: {e}")))?;
    let pid = child.id().map(|p| p as i32);
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let pump = async {
        let (mut bo, mut be) = (LineBuffer::default(), LineBuffer::default());
        let (mut a, mut b) = (vec![0u8; 8192], vec![0u8; 8192]);
        let (mut open_o, mut open_e) = (true, true);
        while open_o || open_e {
            tokio::select! {
                r = stdout.read(&mut a), if open_o => match r {
                    Ok(0) | Err(_) => open_o = false,
                    Ok(n) => bo.push(&a[..n], |l| ctl.output(what, Stream::Stdout, l)),
                },
                r = stderr.read(&mut b), if open_e => match r {
                    Ok(0) | Err(_) => open_e = false,
                    Ok(n) => be.push(&b[..n], |l| ctl.output(what, Stream::Stderr, l)),
                },
            }
        }
        bo.finish(|l| ctl.output(what, Stream::Stdout, l));
        be.finish(|l| ctl.output(what, Stream::Stderr, l));
    };
    let run = async {
        pump.await;
        child.wait().await
    };
    tokio::pin!(run);
    let stop = tokio::select! {
        status = &mut run => {
            let status = status.map_err(|e| ImageError::Infra(format!("waiting for {what}: {e}")))?;
            return if status.success() {
                Ok(())
            } else {
                Err(ImageError::Build(format!("{what} failed ({status}); its output is above")))
            };
        }
        e = ctl.stop.stopped() => e,
    };
    if let Some(pgid) = pid {
        // SIGTERM to the whole group stops whatever the script runs (debootstrap, apt); the
        // script's trap then unmounts and cleans up. A minute for that, then SIGKILL for
        // anything left in the group.
        ctl.note(format!("stopping {what} (process group {pgid})"));
        // SAFETY: kill(2) on the process group we created; no memory involved.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let stopped = tokio::time::timeout(Duration::from_secs(60), &mut run)
            .await
            .is_ok();
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        if !stopped {
            ctl.note(format!("{what} did not stop within 60s; killed it"));
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut run).await;
        }
    }
    Err(stop)
}

/// Downloads `url` into `dir/<sha256>` unless it is there already, resuming a partial
/// download with `Range`, and verifies it. A mismatch deletes what was downloaded.
pub async fn download(
    url: &str,
    sha256: &str,
    dir: &Path,
    ctl: &Ctl,
) -> Result<PathBuf, ImageError> {
    let done = dir.join(sha256);
    if done.is_file() {
        ctl.note(format!("source: {url} (cached as {})", done.display()));
        return Ok(done);
    }
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let partial = dir.join(format!("{sha256}.partial"));
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| ImageError::Infra(format!("HTTP client: {e}")))?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match fetch(&client, url, &partial, ctl).await {
            Ok(()) => break,
            Err(Fetch::Retry(e)) if attempts < 4 => {
                ctl.note(format!("download interrupted ({e}); resuming"));
                tokio::time::sleep(Duration::from_secs(attempts)).await;
            }
            Err(Fetch::Retry(e) | Fetch::Fatal(e)) => {
                return Err(ImageError::Build(format!("downloading {url}: {e}")));
            }
        }
    }
    let got = sha256_blocking(&partial).await?;
    if got != sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(ImageError::Build(format!(
            "sha256 mismatch for {url}: the recipe expects {sha256}, the download has {got}; \
             the download was deleted"
        )));
    }
    std::fs::rename(&partial, &done).map_err(io_err(format!("renaming {}", partial.display())))?;
    Ok(done)
}

enum Fetch {
    Retry(String),
    Fatal(String),
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    partial: &Path,
    ctl: &Ctl,
) -> Result<(), Fetch> {
    let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = req.send().await.map_err(|e| Fetch::Retry(e.to_string()))?;
    let status = resp.status();
    let resumed = status == reqwest::StatusCode::PARTIAL_CONTENT;
    if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
        // Everything is there already (or the partial is longer than the file): the
        // checksum decides.
        return Ok(());
    }
    if !status.is_success() {
        let e = format!("HTTP {status}");
        return Err(if status.is_server_error() {
            Fetch::Retry(e)
        } else {
            Fetch::Fatal(e)
        });
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(resumed)
        .write(true)
        .truncate(!resumed)
        .open(partial)
        .map_err(|e| Fetch::Fatal(format!("opening {}: {e}", partial.display())))?;
    let start = if resumed { have } else { 0 };
    let total = resp.content_length().map(|l| l + start);
    ctl.note(format!(
        "downloading {url}{}{}",
        total
            .map(|t| format!(" ({} MiB)", t >> 20))
            .unwrap_or_default(),
        if resumed {
            format!(", resuming at {} MiB", start >> 20)
        } else {
            String::new()
        }
    ));
    let bar =
        indicatif::ProgressBar::with_draw_target(total, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(start);
    let t0 = Instant::now();
    let mut got = 0u64;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                file.write_all(&chunk)
                    .map_err(|e| Fetch::Fatal(format!("writing {}: {e}", partial.display())))?;
                got += chunk.len() as u64;
                bar.inc(chunk.len() as u64);
            }
            Ok(None) => break,
            Err(e) => {
                bar.abandon();
                return Err(Fetch::Retry(e.to_string()));
            }
        }
    }
    bar.finish_and_clear();
    file.flush()
        .map_err(|e| Fetch::Fatal(format!("writing {}: {e}", partial.display())))?;
    if let Some(t) = total
        && start + got < t
    {
        return Err(Fetch::Retry(format!(
            "connection closed after {} of {t} bytes",
            start + got
        )));
    }
    ctl.emit(Event::Notice(format!(
        "downloaded {} MiB in {:.1}s",
        got >> 20,
        t0.elapsed().as_secs_f64()
    )));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ctl::Ctl;

    async fn serve(dir: &Path) -> String {
        let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(dir));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn downloads_resume_verify_and_cache() {
        let served = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(served.path().join("disk.img"), &data).unwrap();
        let want = {
            let mut h = Sha256::new();
            h.update(&data);
            hex(&h.finalize())
        };
        let base = serve(served.path()).await;
        let url = format!("{base}/disk.img");
        let cache = tempfile::tempdir().unwrap();
        let (ctl, lines) = Ctl::for_test();

        // A partial download from an earlier, interrupted attempt is resumed.
        std::fs::write(
            cache.path().join(format!("{want}.partial")),
            &data[..1_000_000],
        )
        .unwrap();
        let got = download(&url, &want, cache.path(), &ctl).await.unwrap();
        assert_eq!(std::fs::read(&got).unwrap(), data);
        assert!(
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("resuming at 0 MiB")),
            "{:?}",
            lines.lock().unwrap()
        );
        // Cached by checksum: no second download.
        std::fs::remove_file(served.path().join("disk.img")).unwrap();
        assert_eq!(
            download(&url, &want, cache.path(), &ctl).await.unwrap(),
            got
        );

        // A wrong checksum: a clear error, and nothing kept.
        std::fs::write(served.path().join("other.img"), b"not it").unwrap();
        let wrong = "0".repeat(64);
        let e = download(&format!("{base}/other.img"), &wrong, cache.path(), &ctl)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("sha256 mismatch") && e.contains(&wrong), "{e}");
        let left: Vec<_> = std::fs::read_dir(cache.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, std::slice::from_ref(&want));

        // Not found: no retries, the status in the message.
        let e = download(&format!("{base}/missing.img"), &wrong, cache.path(), &ctl)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("404"), "{e}");
    }

    #[tokio::test]
    async fn scripts_stream_output_and_report_failure() {
        let (ctl, lines) = Ctl::for_test();
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let e = run_logged(cmd, "s", &ctl).await.unwrap_err().to_string();
        assert!(e.contains("s failed") && e.contains('3'), "{e}");
        let got = lines.lock().unwrap().clone();
        assert!(got.contains(&"[s] out".to_string()), "{got:?}");
        assert!(got.contains(&"[s] err".to_string()), "{got:?}");
    }
}
