//! `ferrotron bench boot`: how much ferrotron adds to booting a guest and reaching it.
//!
//! In one run, on the same image: a bare baseline (qemu started by hand with direct kernel
//! boot, polled with OpenSSH's `ssh true` using the same kind of key and seed) against
//! ferrotron's time from request to the task's first output line, with its phases; and the
//! cost of a clone (a qcow2 overlay) for bases of 1 GB and 20 GB virtual size.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::median;
use crate::guest::keys::RunKeys;
use crate::image::BaseImage;
use crate::provider::spec::LibvirtSpec;
use crate::provider::{self, Accel, InstanceMeta, InstanceSpec, Spec, seed};
use crate::runner::{Event, RunRequest, Runner};
use crate::store::Store;
use crate::task::Formula;

pub struct Options {
    pub image: BaseImage,
    pub rounds: usize,
    pub libvirt_uri: String,
    /// Scratch space reachable by libvirt's qemu user.
    pub work_dir: PathBuf,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub machine: String,
    pub image: String,
    pub rounds: usize,
    /// qemu start → `ssh true` succeeds, no ferrotron.
    pub baseline_s: Vec<f64>,
    /// Runner start → first line of task output.
    pub ferrotron_first_line_s: Vec<f64>,
    /// Median duration of each ferrotron phase.
    pub phases_ms: Vec<(String, f64)>,
    /// `qemu-img create -b` for a 1 GB and a 20 GB base.
    pub overlay_1g_ms: f64,
    pub overlay_20g_ms: f64,
}

impl Report {
    pub fn print(&self) {
        let b = median(&self.baseline_s);
        let f = median(&self.ferrotron_first_line_s);
        println!("machine:  {}", self.machine);
        println!("image:    {} ({} rounds, medians)", self.image, self.rounds);
        println!(
            "baseline  qemu + direct boot + `ssh true`:      {b:6.2} s  {:?}",
            self.baseline_s
        );
        println!(
            "ferrotron request → first task output line:    {f:6.2} s  {:?}",
            self.ferrotron_first_line_s
        );
        println!(
            "ratio     ferrotron / baseline:                 {:6.3}   (target ≤ 1.15)",
            if b > 0.0 { f / b } else { 0.0 }
        );
        println!("phases (median ms):");
        for (name, ms) in &self.phases_ms {
            println!("  {name:<24} {ms:9.1}");
        }
        println!(
            "clone: qcow2 overlay of a 1 GB base  {:7.2} ms",
            self.overlay_1g_ms
        );
        println!(
            "clone: qcow2 overlay of a 20 GB base {:7.2} ms   (target < 50 ms, flat)",
            self.overlay_20g_ms
        );
    }
}

pub async fn run(opts: Options) -> anyhow::Result<Report> {
    use anyhow::Context;
    std::fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("creating {}", opts.work_dir.display()))?;
    let mut report = Report {
        machine: super::machine(),
        image: opts.image.label(),
        rounds: opts.rounds,
        ..Default::default()
    };
    let mut phases: Vec<(String, Vec<f64>)> = Vec::new();
    for round in 0..opts.rounds {
        let b = baseline(&opts).await.context("baseline")?;
        eprintln!("round {}: baseline {b:.2}s", round + 1);
        report.baseline_s.push(b);
        let (f, ph) = through_ferrotron(&opts).await.context("ferrotron run")?;
        eprintln!("round {}: ferrotron {f:.2}s", round + 1);
        report.ferrotron_first_line_s.push(f);
        for (name, ms) in ph {
            match phases.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(ms),
                None => phases.push((name, vec![ms])),
            }
        }
    }
    report.phases_ms = phases.into_iter().map(|(n, v)| (n, median(&v))).collect();
    report.overlay_1g_ms = overlay_cost(&opts.work_dir, "1G").await?;
    report.overlay_20g_ms = overlay_cost(&opts.work_dir, "20G").await?;
    Ok(report)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn baseline(opts: &Options) -> anyhow::Result<f64> {
    use anyhow::{Context, bail};
    let dir = tempfile::Builder::new()
        .prefix("bench-baseline-")
        .tempdir_in(&opts.work_dir)?;
    let keys = RunKeys::generate()?;
    let key_path = dir.path().join("key");
    keys.write_client_key(&key_path)?;
    let port = free_port()?;
    let known = dir.path().join("known_hosts");
    std::fs::write(
        &known,
        format!("[127.0.0.1]:{port} {}\n", keys.host_public()),
    )?;
    let spec = spec_for(&keys, &opts.image);
    let iso = dir.path().join("seed.iso");
    seed::write(&dir.path().join("seed"), &iso, &spec).await?;
    let overlay = dir.path().join("disk.qcow2");
    let st = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&opts.image.path)
        .arg(&overlay)
        .status()
        .await?;
    if !st.success() {
        bail!("qemu-img create failed");
    }
    let boot = &opts.image.boot;
    let kernel = boot
        .kernel
        .as_ref()
        .context("the image has no kernel for direct boot")?;
    let mut qemu = tokio::process::Command::new("qemu-system-x86_64");
    qemu.args([
        "-machine",
        "pc",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-nodefaults",
    ])
    .args(["-display", "none", "-m", &boot.memory_mib.to_string()])
    .args(["-smp", &boot.vcpus.to_string(), "-kernel"])
    .arg(kernel)
    .args([
        "-append",
        boot.cmdline.as_deref().unwrap_or("console=ttyS0"),
    ])
    .arg("-serial")
    .arg(format!("file:{}", dir.path().join("console.log").display()))
    .arg("-drive")
    .arg(format!(
        "file={},if=virtio,format=qcow2,cache=unsafe",
        overlay.display()
    ))
    .arg("-drive")
    .arg(format!(
        "file={},if=virtio,format=raw,readonly=on",
        iso.display()
    ))
    .args([
        "-netdev",
        &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22"),
    ])
    .args([
        "-device",
        "virtio-net-pci,netdev=n0",
        "-device",
        "virtio-rng-pci",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    if let Some(initrd) = &boot.initrd {
        qemu.arg("-initrd").arg(initrd);
    }
    let t0 = Instant::now();
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
    let deadline = Duration::from_secs(boot.boot_timeout_s.max(60));
    loop {
        let ok = tokio::process::Command::new("ssh")
            .args([
                "-q",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=2",
                "-i",
            ])
            .arg(&key_path)
            .args([
                "-p",
                &port.to_string(),
                &format!("{}@127.0.0.1", boot.user),
                "true",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?
            .success();
        if ok {
            break;
        }
        if t0.elapsed() > deadline {
            let _ = child.kill().await;
            bail!("the baseline guest did not answer ssh within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let _ = child.kill().await;
    Ok(elapsed)
}

fn spec_for(keys: &RunKeys, image: &BaseImage) -> InstanceSpec {
    InstanceSpec {
        meta: InstanceMeta {
            run_uuid: Uuid::now_v7(),
            owner: "bench".into(),
            image: image.path.display().to_string(),
            created_at: time::OffsetDateTime::now_utc(),
        },
        client_public_key: keys.client_public(),
        host_private_key_openssh: keys.host_private_openssh(),
        host_public_key: keys.host_public(),
    }
}

async fn through_ferrotron(opts: &Options) -> anyhow::Result<(f64, Vec<(String, f64)>)> {
    let data = tempfile::Builder::new()
        .prefix("bench-run-")
        .tempdir_in(&opts.work_dir)?;
    let task_dir = data.path().join("task");
    std::fs::create_dir_all(&task_dir)?;
    std::fs::write(
        task_dir.join("runtask.yml"),
        "name: first-line\ndesc: prints one line\nmaintainer: bench\nactions:\n  - name: hello\n    shell: [\"echo first\"]\n",
    )?;
    let formula = Formula::load(&task_dir)?;
    let store = Store::open(&format!(
        "sqlite://{}",
        data.path().join("db.sqlite").display()
    ))
    .await?;
    let first: Arc<Mutex<Option<Instant>>> = Arc::default();
    let seen = first.clone();
    let runner = Runner {
        provider: provider::build(
            &Spec::Libvirt(LibvirtSpec {
                max_instances: Some(1),
                accel: Accel::Tcg,
                ..LibvirtSpec::new(opts.libvirt_uri.clone())
            }),
            &provider::Context::new(data.path()),
        )
        .await?,
        store,
        data_dir: data.path().to_path_buf(),
        sink: Arc::new(move |e: &Event| {
            if matches!(e, Event::Output { .. }) {
                seen.lock().expect("lock").get_or_insert_with(Instant::now);
            }
        }),
        cleanup_slot: None,
    };
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let t0 = Instant::now();
    let report = runner
        .run(
            RunRequest {
                uuid: Uuid::now_v7(),
                formula,
                item: String::new(),
                item_type: String::new(),
                arch: "noarch".into(),
                jobid: "-1".into(),
                owner: "bench".into(),
                image: opts.image.path.display().to_string(),
                task_timeout: Duration::from_secs(600),
                spawn_attempts: 1,
                artifacts_cap: 1 << 20,
                limits: Default::default(),
                keep_instance: false,
                keep_if_failed: false,
                links: None,
            },
            rx,
        )
        .await?;
    if report.exit_code != 0 {
        anyhow::bail!("the bench task failed: {:?}", report.error);
    }
    let first_line = first
        .lock()
        .expect("lock")
        .map(|t| t.duration_since(t0).as_secs_f64())
        .ok_or_else(|| anyhow::anyhow!("the task printed nothing"))?;
    let phases = report
        .phases
        .iter()
        .map(|p| (p.name.clone(), p.duration_ms))
        .collect();
    Ok((first_line, phases))
}

/// Median time of `qemu-img create -b BASE` over a few tries, for a base of `size`.
async fn overlay_cost(dir: &Path, size: &str) -> anyhow::Result<f64> {
    let tmp = tempfile::Builder::new()
        .prefix("bench-clone-")
        .tempdir_in(dir)?;
    let base = tmp.path().join("base.qcow2");
    let st = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg(size)
        .status()
        .await?;
    anyhow::ensure!(st.success(), "qemu-img create {size} failed");
    let mut times = Vec::new();
    for i in 0..7 {
        let overlay = tmp.path().join(format!("o{i}.qcow2"));
        let t0 = Instant::now();
        let st = tokio::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&overlay)
            .status()
            .await?;
        anyhow::ensure!(st.success(), "qemu-img create -b failed");
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(&times))
}
