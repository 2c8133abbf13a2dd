//! Drives the real binary against real libvirtd + qemu (TCG) on the tiny image. After every
//! run: no domain of that run is left, and no overlay or seed file.
//!
//! Needs `provisioning/test.sh` (or its set-up): libvirtd running, the tiny image built in
//! FERROTRON_TEST_IMAGES. Without FERROTRON_TEST_LIBVIRT=1 the tests say SKIPPED and pass.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{command, ferrotron, json_run, parse_report, reachable_tempdir, stderr};
use serde_json::Value;

fn enabled() -> bool {
    let on = std::env::var("FERROTRON_TEST_LIBVIRT").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("SKIPPED: FERROTRON_TEST_LIBVIRT=1 not set (provisioning/test.sh sets it)");
    }
    on
}

fn vm(args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["--backend", "libvirt", "--image", "tiny"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

fn run_vm(data: &Path, args: &[&str]) -> (std::process::Output, Value) {
    let all = vm(args);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    json_run(data, &refs)
}

/// The run's domain is gone and its files with it.
fn assert_no_leak(data: &Path, report: &Value) {
    let uuid = report["uuid"].as_str().expect("report has a uuid");
    let name = format!("ferrotron-{uuid}");
    assert!(
        !virsh(&["domstate", &name]).status.success(),
        "domain {name} still exists"
    );
    let left: Vec<String> = names_in(&data.join("instances"))
        .into_iter()
        .filter(|n| n.starts_with("ferrotron-"))
        .collect();
    assert!(left.is_empty(), "instance files left behind: {left:?}");
}

fn write_task(dir: &Path, formula: &str) -> String {
    std::fs::write(dir.join("runtask.yml"), formula).unwrap();
    dir.display().to_string()
}

#[test]
fn passing_and_failing_results_with_artifacts() {
    if !enabled() {
        return;
    }
    let data = reachable_tempdir();
    let (out, v) = run_vm(
        data.path(),
        &[
            "-i",
            "bash-5.2-1.fc41",
            "-t",
            "koji_build",
            "-a",
            "x86_64",
            "tests/fixtures/two-results",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(v["backend"], "libvirt");
    assert_eq!(v["state"], "finished");
    assert_eq!(common::outcomes(&v), ["PASSED", "FAILED"]);
    let artifacts = Path::new(v["artifacts_dir"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(artifacts.join("detail.log")).unwrap(),
        "detail for bash-5.2-1.fc41\n"
    );
    // Output streamed from the guest, stdout and stderr, prefixed like the local backend.
    let err = stderr(&out);
    assert!(
        err.contains("[produce] checking bash-5.2-1.fc41 on x86_64"),
        "{err}"
    );
    assert!(err.contains("[produce] to stderr"), "{err}");
    let phases: Vec<&str> = v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "clone",
        "boot",
        "upload",
        "action produce",
        "collect",
        "destroy",
    ] {
        assert!(phases.contains(&p), "phase {p} missing: {phases:?}");
    }
    assert_no_leak(data.path(), &v);
}

#[test]
fn failing_action_and_timeout() {
    if !enabled() {
        return;
    }
    let data = reachable_tempdir();
    let task = tempfile::tempdir().unwrap();
    let t = write_task(
        task.path(),
        "name: f\ndesc: d\nmaintainer: m\nactions:\n  - name: boom\n    shell: [\"echo before; exit 7\"]\n",
    );
    let (out, v) = run_vm(data.path(), &[&t]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(v["state"], "failed");
    assert!(v["error"].as_str().unwrap().contains("status 7"), "{v}");
    assert_no_leak(data.path(), &v);

    let slow = tempfile::tempdir().unwrap();
    let t = write_task(
        slow.path(),
        "name: s\ndesc: d\nmaintainer: m\nactions:\n  - name: nap\n    shell: [\"echo napping; sleep 600\"]\n",
    );
    let started = Instant::now();
    let (out, v) = run_vm(data.path(), &["--timeout", "25", &t]);
    assert!(started.elapsed() < Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(v["error"].as_str().unwrap().contains("timeout"), "{v}");
    assert_no_leak(data.path(), &v);
}

#[test]
fn hostile_artifacts_are_refused() {
    if !enabled() {
        return;
    }
    let data = reachable_tempdir();
    let task = tempfile::tempdir().unwrap();
    // A symlink out of the artifacts directory, and a result whose artifact climbs out.
    let t = write_task(
        task.path(),
        "name: h\ndesc: d\nmaintainer: m\nactions:\n  - name: plant\n    shell:\n      - ln -s /etc ${artifactsdir}/etc-link\n      - echo kept > ${artifactsdir}/kept.txt\n",
    );
    let (out, v) = run_vm(data.path(), &[&t]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let refused = v["refused_artifacts"].to_string();
    assert!(refused.contains("etc-link"), "{refused}");
    assert!(
        stderr(&out).contains("artifact refused: ./etc-link: symlink to absolute path /etc"),
        "{}",
        stderr(&out)
    );
    let artifacts = Path::new(v["artifacts_dir"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(artifacts.join("kept.txt")).unwrap(),
        "kept\n"
    );
    assert!(!artifacts.join("etc-link").exists());
    assert_no_leak(data.path(), &v);

    let t = write_task(
        task.path(),
        "name: h\ndesc: d\nmaintainer: m\nactions:\n  - name: report\n    resultsdb:\n      results: |\n        results:\n          - {item: x, type: t, outcome: PASSED, artifact: \"${artifactsdir}/../../../etc/passwd\"}\n",
    );
    let (out, v) = run_vm(data.path(), &[&t]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("artifact"), "{e}");
    assert_eq!(v["results"].as_array().unwrap().len(), 0);
    assert_no_leak(data.path(), &v);
}

#[test]
fn an_image_that_never_answers_is_retried_then_reported() {
    if !enabled() {
        return;
    }
    let data = reachable_tempdir();
    // The tiny image, booted with a root device that does not exist: qemu runs, SSH never
    // answers.
    let images = std::env::var("FERROTRON_TEST_IMAGES").expect("FERROTRON_TEST_IMAGES");
    let base = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with("-tiny-1-base-x86_64.qcow2"))
        .max()
        .expect("a tiny image");
    let dir = data.path().join("broken-image");
    std::fs::create_dir(&dir).unwrap();
    let stem = base.file_stem().unwrap().to_string_lossy().into_owned();
    for ext in ["qcow2", "vmlinux", "initrd"] {
        std::os::unix::fs::symlink(base.with_extension(ext), dir.join(format!("{stem}.{ext}")))
            .unwrap();
    }
    std::fs::write(
        dir.join(format!("{stem}.json")),
        format!(
            r#"{{"kernel":"{stem}.vmlinux","initrd":"{stem}.initrd","cmdline":"console=ttyS0 root=/dev/nonexistent","user":"root","timeout_s":"8","memory_mib":"256"}}"#
        ),
    )
    .unwrap();
    let image = dir.join(format!("{stem}.qcow2"));
    let (out, v) = json_run(
        data.path(),
        &[
            "--backend",
            "libvirt",
            "--image",
            image.to_str().unwrap(),
            "--attempts",
            "2",
            "tests/fixtures/two-results",
            "-t",
            "koji_build",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(v["state"], "crashed");
    assert_eq!(v["attempts"], 2);
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("after 2 attempt(s)") && e.contains("no SSH login within 8s"),
        "{e}"
    );
    assert_no_leak(data.path(), &v);
}

/// Starts `ferrotron run --format json` on a VM with a task that naps, and returns once the
/// task has printed its first line, with the child and its remaining stderr lines.
type Napping = (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
);

fn start_napping_run(data: &Path, task: &Path) -> Napping {
    start_napping_run_with(data, task, &[])
}

/// A VM run whose task sleeps, returned once the task has started; `extra` goes before
/// the task (provider flags).
fn start_napping_run_with(data: &Path, task: &Path, extra: &[&str]) -> Napping {
    let t = write_task(
        task,
        "name: s\ndesc: d\nmaintainer: m\nactions:\n  - name: nap\n    shell: [\"echo napping; sleep 600\"]\n",
    );
    let mut args = vec!["run".to_string(), "--format".into(), "json".into()];
    let mut rest: Vec<&str> = extra.to_vec();
    rest.push(&t);
    args.extend(vm(&rest));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = command(data, &refs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("[nap] napping") {
            return (child, lines);
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the task never started:\n{seen}");
}

#[test]
fn sigterm_mid_task_destroys_the_machine() {
    if !enabled() {
        return;
    }
    let data = reachable_tempdir();
    let task = tempfile::tempdir().unwrap();
    let (child, lines) = start_napping_run(data.path(), task.path());
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", rest.join("\n"));
    let v = parse_report(&out);
    assert_eq!(v["state"], "cancelled");
    assert_no_leak(data.path(), &v);
}

#[test]
fn sigkill_leaves_a_leak_that_reap_finds() {
    if !enabled() {
        return;
    }
    let data = reachable_tempdir();
    let task = tempfile::tempdir().unwrap();
    let (mut child, _lines) = start_napping_run(data.path(), task.path());
    // The run's owner is `run@HOST:PID`: other runs on this libvirtd are not ours to judge.
    let ours = format!(":{}:", child.id());
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();

    let out = ferrotron(data.path(), &["reap"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    let line = listing
        .lines()
        .find(|l| l.starts_with("libvirt") && l.contains(&ours))
        .unwrap_or_else(|| panic!("the killed run's VM is not listed:\n{listing}"));
    assert!(line.contains("LEAKED, destroyed"), "{listing}");
    let uuid = line
        .split_whitespace()
        .nth(3)
        .expect("run uuid in the listing")
        .to_string();
    assert_no_leak(data.path(), &serde_json::json!({ "uuid": uuid }));

    // The run record says what happened to it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = rt.block_on(async {
        let db = format!("sqlite://{}", data.path().join("ferrotron.db").display());
        let store = ferrotron::store::Store::open(&db).await.unwrap();
        let run = store.run(uuid.parse().unwrap()).await.unwrap().unwrap();
        (run.state.as_str().to_string(), run.error)
    });
    assert_eq!(state.0, "crashed");
    assert!(state.1.unwrap().contains("process died"));
}

#[test]
fn no_destroy_keeps_a_reachable_machine_until_reaped() {
    if !enabled() {
        return;
    }
    let data = reachable_tempdir();
    let task = tempfile::tempdir().unwrap();
    let t = write_task(
        task.path(),
        "name: k\ndesc: d\nmaintainer: m\nactions:\n  - name: mark\n    shell: [\"echo marked > /root/mark\"]\n",
    );
    let (out, v) = run_vm(data.path(), &["--no-destroy", &t]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    let cmd = err
        .lines()
        .find_map(|l| l.split("log in with: ").nth(1))
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no ssh command printed:\n{err}"))
        .to_string();
    // The printed command works with the pinned key and nothing else.
    let ssh = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{cmd} -o StrictHostKeyChecking=yes -o BatchMode=yes -o GlobalKnownHostsFile=/dev/null cat /root/mark"
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ssh.stdout),
        "marked\n",
        "{cmd}: {}",
        String::from_utf8_lossy(&ssh.stderr)
    );

    let dry = ferrotron(data.path(), &["reap", "--dry-run"]);
    let listing = String::from_utf8_lossy(&dry.stdout);
    let uuid = v["uuid"].as_str().unwrap();
    assert!(
        listing.contains(uuid) && listing.contains("would destroy"),
        "{listing}"
    );
    let reap = ferrotron(data.path(), &["reap"]);
    assert_eq!(reap.status.code(), Some(0), "{}", stderr(&reap));
    assert!(String::from_utf8_lossy(&reap.stdout).contains("destroyed"));
    assert_no_leak(data.path(), &v);
}

#[test]
fn a_stock_cloud_init_image_boots_with_the_same_seed() {
    if !enabled() {
        return;
    }
    if std::env::var("FERROTRON_TEST_CLOUDINIT").is_err() {
        eprintln!(
            "SKIPPED: FERROTRON_TEST_CLOUDINIT not set (provisioning/test.sh builds that image)"
        );
        return;
    }
    let data = reachable_tempdir();
    let task = tempfile::tempdir().unwrap();
    let t = write_task(
        task.path(),
        "name: c\ndesc: d\nmaintainer: m\nactions:\n  - name: hello\n    shell: [\"python3 -c 'print(6*7)'\", \"test -d /var/lib/cloud/instance && echo cloud-init ran\"]\n",
    );
    let (out, v) = json_run(
        data.path(),
        &["--backend", "libvirt", "--image", "debian-cloudinit", &t],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("[hello] 42"), "{err}");
    assert!(err.contains("[hello] cloud-init ran"), "{err}");
    assert_no_leak(data.path(), &v);
}

/// The files of a directory, by name.
fn names_in(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn virsh(args: &[&str]) -> std::process::Output {
    std::process::Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .unwrap()
}

/// A storage pool of the test's own, destroyed (it is transient: undefined with it) on drop.
struct Pool(String);

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = virsh(&["pool-destroy", &self.0]);
    }
}

/// libvirt on "another host": this machine's libvirtd reached over SSH (an sshd of the
/// test's own, a key made here), with a storage pool the daemon never writes to. Every disk
/// of a run is a volume made there through libvirt, and none is left after the run, or
/// after a SIGKILL and `ferrotron reap`.
#[test]
fn a_libvirt_host_over_ssh_keeps_every_disk_of_a_run_in_its_pool() {
    use common::free_port;
    use common::sshd::{SSHD, keygen, start_sshd};
    if !enabled() {
        return;
    }
    if !Path::new(SSHD).exists() {
        eprintln!("SKIPPED: {SSHD} is missing (provisioning/host-setup.sh --test installs it)");
        return;
    }
    let images = std::env::var("FERROTRON_TEST_IMAGES").expect("FERROTRON_TEST_IMAGES");
    let work = reachable_tempdir();
    let (key, host_key) = (work.path().join("id"), work.path().join("host"));
    keygen(&key);
    keygen(&host_key);
    let sshd = start_sshd(
        work.path(),
        &[&host_key],
        &key.with_extension("pub"),
        free_port(),
    );
    let uri = format!(
        "qemu+ssh://root@127.0.0.1:{}/system?keyfile={}&no_verify=1&no_tty=1",
        sshd.port,
        key.display()
    );

    // The pool holds the base image as an operator would put it there.
    let pool_dir = work.path().join("pool");
    std::fs::create_dir(&pool_dir).unwrap();
    let stem = names_in(Path::new(&images))
        .into_iter()
        .filter_map(|n| {
            n.strip_suffix("-tiny-1-base-x86_64.qcow2")
                .map(String::from)
        })
        .max()
        .expect("the tiny image is built");
    for ext in ["qcow2", "vmlinux", "initrd", "json"] {
        let f = format!("{stem}-tiny-1-base-x86_64.{ext}");
        std::fs::copy(Path::new(&images).join(&f), pool_dir.join(&f)).unwrap();
    }
    let pool = Pool(format!("ferrotron-test-{}", std::process::id()));
    let made = virsh(&[
        "pool-create-as",
        &pool.0,
        "dir",
        "--target",
        &pool_dir.display().to_string(),
    ]);
    assert!(made.status.success(), "{}", stderr(&made));
    let base_files = names_in(&pool_dir);

    // Instance state here lives in a directory libvirt's qemu user cannot even enter.
    let data = tempfile::tempdir().unwrap();
    let flags = [
        "--libvirt-uri",
        uri.as_str(),
        "--libvirt-pool",
        pool.0.as_str(),
    ];
    let mut args: Vec<&str> = flags.to_vec();
    args.extend([
        "-i",
        "bash-5.2-1.fc41",
        "-t",
        "koji_build",
        "tests/fixtures/two-results",
    ]);
    let (out, v) = run_vm(data.path(), &args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(common::outcomes(&v), ["PASSED", "FAILED"]);
    assert_eq!(names_in(&pool_dir), base_files, "a run's volume was left");
    assert_no_leak(data.path(), &v);

    // SIGKILL mid-task: the disks are volumes of the pool (the domain boots from there, and
    // this host holds none), until the reaper deletes them with the domain.
    let task = tempfile::tempdir().unwrap();
    let (mut child, _lines) = start_napping_run_with(data.path(), task.path(), &flags);
    child.kill().unwrap();
    child.wait().unwrap();
    let leaked: Vec<String> = names_in(&pool_dir)
        .difference(&base_files)
        .cloned()
        .collect();
    assert_eq!(leaked.len(), 2, "{leaked:?}");
    let instance = leaked
        .iter()
        .find_map(|n| n.strip_suffix(".qcow2"))
        .expect("an overlay volume")
        .to_string();
    assert!(
        leaked.contains(&format!("{instance}-seed.iso")),
        "{leaked:?}"
    );
    let disks = String::from_utf8_lossy(&virsh(&["domblklist", &instance]).stdout).into_owned();
    for l in &leaked {
        assert!(
            disks.contains(&pool_dir.join(l).display().to_string()),
            "{disks}"
        );
    }
    let here = names_in(&data.path().join("instances").join(&instance));
    assert!(
        here.iter()
            .all(|f| !f.ends_with(".qcow2") && !f.ends_with(".iso")),
        "disks on the daemon's host: {here:?}"
    );
    let mut reap: Vec<&str> = vec!["reap"];
    reap.extend(flags);
    let out = ferrotron(data.path(), &reap);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("LEAKED, destroyed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(names_in(&pool_dir), base_files, "the reaper left volumes");
    assert!(!virsh(&["domstate", &instance]).status.success());
    assert!(!data.path().join("instances").join(&instance).exists());
}
