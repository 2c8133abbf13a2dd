//! `ferrotron image build | list | prune` against real libvirtd + qemu (TCG): images built
//! from a URL (served on loopback), a local file and debootstrap; failures and interruptions
//! that must leave nothing behind (no image files, no staging directory, no instance, no
//! domain).
//!
//! Needs `provisioning/test.sh` (or its set-up): libvirtd running, the tiny image built in
//! FERROTRON_TEST_IMAGES. Without FERROTRON_TEST_LIBVIRT=1 the tests say SKIPPED and pass.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{parse_report, reachable_tempdir, stderr};

/// `ferrotron ARGS…` with this test's own images directory (DATA/images), not the shared
/// test images.
fn command(data: &Path, args: &[&str]) -> Command {
    let mut c = common::command(data, args);
    c.env("FERROTRON_IMAGES", data.join("images"));
    c
}

fn ferrotron(data: &Path, args: &[&str]) -> std::process::Output {
    command(data, args).output().expect("ferrotron runs")
}

fn json_run(data: &Path, args: &[&str]) -> (std::process::Output, serde_json::Value) {
    let mut all = vec!["run", "--format", "json"];
    all.extend_from_slice(args);
    let out = ferrotron(data, &all);
    let v = parse_report(&out);
    (out, v)
}

fn enabled() -> bool {
    let on = std::env::var("FERROTRON_TEST_LIBVIRT").is_ok_and(|v| v == "1")
        && std::env::var_os("FERROTRON_TEST_IMAGES").is_some();
    if !on {
        eprintln!(
            "SKIPPED: FERROTRON_TEST_LIBVIRT=1 and FERROTRON_TEST_IMAGES not set \
             (provisioning/test.sh sets them)"
        );
    }
    on
}

/// The newest tiny test image: (qcow2, vmlinux, initrd).
fn tiny() -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::var("FERROTRON_TEST_IMAGES").expect("FERROTRON_TEST_IMAGES");
    let q = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with("-tiny-1-base-x86_64.qcow2"))
        .max()
        .expect("a tiny image in FERROTRON_TEST_IMAGES");
    (
        q.clone(),
        q.with_extension("vmlinux"),
        q.with_extension("initrd"),
    )
}

/// A recipe tree: ROOT/images/NAME.yaml and ROOT/provisioning/*.sh.
struct Tree {
    root: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("images")).unwrap();
        std::fs::create_dir_all(root.path().join("provisioning")).unwrap();
        Tree { root }
    }

    fn script(&self, name: &str, body: &str) {
        let p = self.root.path().join("provisioning").join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    }

    /// A tiny-based recipe (flavor FLAVOR) whose source is `source` (YAML flow mapping).
    fn recipe(&self, name: &str, flavor: &str, source: &str, provision: &[&str]) -> String {
        let (_, k, i) = tiny();
        let p = self.root.path().join("images").join(format!("{name}.yaml"));
        std::fs::write(
            &p,
            format!(
                "name: {name}\ndistro: tinytest\nrelease: \"1\"\nflavor: {flavor}\narch: x86_64\n\
                 source: {source}\nprovision: [{}]\n\
                 boot: {{mode: direct, kernel: {}, initrd: {}, \
                 cmdline: \"console=ttyS0 root=/dev/vda rw quiet cryptomgr.notests\", \
                 memory_mib: 256, timeout_s: 120}}\n",
                provision.join(", "),
                k.display(),
                i.display()
            ),
        )
        .unwrap();
        p.display().to_string()
    }
}

/// Serves `file` over HTTP on loopback (one GET at a time) until the test ends.
fn serve(file: PathBuf) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let body = std::fs::read(&file).unwrap();
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = c.write_all(&body);
        }
    });
    format!("http://{addr}")
}

/// No image files, no staging directory, no instance files and no domain of this data dir.
fn assert_nothing_left(data: &Path) {
    let images = data.join("images");
    let left: Vec<String> = std::fs::read_dir(&images)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with(".lock-") && n != ".failed")
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", images.display());
    let inst: Vec<String> = std::fs::read_dir(data.join("instances"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ferrotron-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(inst.is_empty(), "instance files left: {inst:?}");
    assert!(
        domains_using(data).is_empty(),
        "domains left: {:?}",
        domains_using(data)
    );
}

/// libvirt domains whose definition mentions `data` (their disks live there).
fn domains_using(data: &Path) -> Vec<String> {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "list", "--all", "--name"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|n| n.starts_with("ferrotron-"))
        .filter(|n| {
            Command::new("virsh")
                .args(["-c", "qemu:///system", "dumpxml", n])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains(&*data.to_string_lossy()))
                .unwrap_or(false)
        })
        .map(String::from)
        .collect()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed_log(data: &Path) -> String {
    let dir = data.join("images/.failed");
    let log = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .next()
        .expect("a failed build keeps its log")
        .path();
    std::fs::read_to_string(log).unwrap()
}

/// A transient libvirt dir pool, destroyed when dropped.
struct Pool(String);

impl Pool {
    fn new(dir: &Path) -> Pool {
        let name = format!("ferrotron-test-{}", std::process::id());
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("virsh")
            .args([
                "-c",
                "qemu:///system",
                "pool-create-as",
                &name,
                "dir",
                "--target",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(ok.success(), "cannot create pool {name}");
        Pool(name)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = Command::new("virsh")
            .args(["-c", "qemu:///system", "pool-destroy", &self.0])
            .output();
    }
}

#[test]
fn url_image_is_built_provisioned_registered_used_and_pruned() {
    if !enabled() {
        return;
    }
    let data = reachable_tempdir();
    let (qcow2, _, _) = tiny();
    let sha = ferrotron::image::source::sha256_file(&qcow2).unwrap();
    let base = serve(qcow2);
    let tree = Tree::new();
    tree.script(
        "mark.sh",
        "echo \"marking $FERROTRON_IMAGE\"\necho \"$FERROTRON_RECIPE\" > /etc/ferrotron-mark",
    );
    let recipe = tree.recipe(
        "urltiny",
        "url",
        &format!("{{url: '{base}/tiny.qcow2', sha256: {sha}}}"),
        &["provisioning/mark.sh"],
    );
    let pool = Pool::new(&data.path().join("pool"));
    // The pool is reached as another host's would be: libvirt over SSH (an sshd and a key
    // of the test's own), for the upload and for the run on the image below.
    let keys = tempfile::tempdir().unwrap();
    let (key, host_key) = (keys.path().join("id"), keys.path().join("host"));
    common::sshd::keygen(&key);
    common::sshd::keygen(&host_key);
    let sshd = common::sshd::start_sshd(
        keys.path(),
        &[&host_key],
        &key.with_extension("pub"),
        common::free_port(),
    );
    let remote = format!(
        "qemu+ssh://root@127.0.0.1:{}/system?keyfile={}&no_verify=1&no_tty=1",
        sshd.port,
        key.display()
    );

    let started = Instant::now();
    let out = ferrotron(
        data.path(),
        &[
            "image",
            "build",
            "--pool",
            &pool.0,
            "--pool-uri",
            &remote,
            &recipe,
        ],
    );
    let took = started.elapsed();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    eprintln!("url build took {:.1}s", took.as_secs_f64());
    // Live output of the provisioning script, prefixed like a task's.
    assert!(
        text.contains("[provision provisioning/mark.sh] marking "),
        "{text}"
    );
    let images = data.path().join("images");
    let built = ferrotron::image::newest(&images, "tinytest-1-url-x86_64").expect("an image");
    let stem = built.file_stem().unwrap().to_string_lossy().into_owned();
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(built.with_extension("json")).unwrap()).unwrap();
    assert_eq!(side["source"]["sha256"], sha.as_str());
    assert_eq!(side["source"]["kind"], "url");
    assert_eq!(side["recipe"], "urltiny");
    assert_eq!(side["recipe_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(side["kernel"], format!("{stem}.vmlinux"));
    assert_eq!(side["timeout_s"], 120);
    for ext in ["vmlinux", "initrd", "log"] {
        assert!(built.with_extension(ext).is_file(), "{ext} missing");
    }
    assert!(
        std::fs::read_to_string(built.with_extension("log"))
            .unwrap()
            .contains("[provision provisioning/mark.sh] marking")
    );
    // Compacted into a standalone qcow2: no backing file.
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&built)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(info.get("backing-filename").is_none(), "{info}");

    // Registered with the storage pool, byte for byte.
    let vols = Command::new("virsh")
        .args(["-c", "qemu:///system", "vol-list", &pool.0])
        .output()
        .unwrap();
    let vols = stdout(&vols);
    for ext in ["qcow2", "json", "vmlinux", "initrd"] {
        assert!(vols.contains(&format!("{stem}.{ext}")), "{vols}");
    }
    assert_eq!(
        std::fs::read(data.path().join("pool").join(format!("{stem}.qcow2"))).unwrap(),
        std::fs::read(&built).unwrap()
    );

    // A timer's rebuild is skipped while the image is young.
    let again = ferrotron(data.path(), &["image", "build", "--if-older", "1", &recipe]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(stdout(&again).contains("skipped"), "{}", stdout(&again));

    // A run on the new image sees what provisioning baked in.
    let task = tempfile::tempdir().unwrap();
    std::fs::write(
        task.path().join("runtask.yml"),
        "name: m\ndesc: d\nmaintainer: m\nactions:\n  - name: mark\n    shell: [\"cat /etc/ferrotron-mark\"]\n",
    )
    .unwrap();
    let (run, v) = json_run(
        data.path(),
        &[
            "--backend",
            "libvirt",
            "--image",
            built.to_str().unwrap(),
            task.path().to_str().unwrap(),
        ],
    );
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert!(stderr(&run).contains("[mark] urltiny"), "{}", stderr(&run));
    assert_eq!(v["state"], "finished");
    // The same build, found in the pool by name and booted there over SSH.
    let (run, v) = json_run(
        data.path(),
        &[
            "--backend",
            "libvirt",
            "--libvirt-uri",
            &remote,
            "--libvirt-pool",
            &pool.0,
            "--image",
            "tinytest",
            task.path().to_str().unwrap(),
        ],
    );
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert!(stderr(&run).contains("[mark] urltiny"), "{}", stderr(&run));
    assert_eq!(v["state"], "finished");
    let pool_files = std::fs::read_dir(data.path().join("pool")).unwrap().count();
    assert_eq!(pool_files, 4, "a run's volume was left in the pool");

    // An older build of the same image goes with its sidecars; the newest stays.
    let old = "250101_0000-tinytest-1-url-x86_64";
    for ext in ["qcow2", "json", "vmlinux", "initrd", "log"] {
        std::fs::copy(
            built.with_extension(ext),
            images.join(format!("{old}.{ext}")),
        )
        .unwrap();
    }
    let list = ferrotron(data.path(), &["image", "list"]);
    let listing = stdout(&list);
    assert!(listing.contains(&format!("* {stem}.qcow2")), "{listing}");
    assert!(listing.contains(&format!("  {old}.qcow2")), "{listing}");
    let pruned = ferrotron(data.path(), &["image", "prune", "--keep", "1"]);
    assert_eq!(pruned.status.code(), Some(0), "{}", stderr(&pruned));
    let names: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(names.iter().all(|n| n.starts_with(&stem)), "{names:?}");
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(domains_using(data.path()).is_empty());
}

#[test]
fn a_wrong_sha256_fails_and_leaves_nothing() {
    if !enabled() {
        return;
    }
    let data = reachable_tempdir();
    let (qcow2, _, _) = tiny();
    let base = serve(qcow2);
    let tree = Tree::new();
    let wrong = "0123456789abcdef".repeat(4);
    let recipe = tree.recipe(
        "badsum",
        "badsum",
        &format!("{{url: '{base}/tiny.qcow2', sha256: {wrong}}}"),
        &[],
    );
    let out = ferrotron(data.path(), &["image", "build", &recipe]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("sha256 mismatch") && err.contains(&wrong),
        "{err}"
    );
    assert_nothing_left(data.path());
    // The bad download is not kept either.
    let cached: Vec<_> = std::fs::read_dir(data.path().join("cache/downloads"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(cached.is_empty(), "{cached:?}");
    assert!(failed_log(data.path()).contains("sha256 mismatch"));
}

#[test]
fn a_failing_provisioning_script_fails_the_build_and_leaves_nothing() {
    if !enabled() {
        return;
    }
    let data = reachable_tempdir();
    let (qcow2, _, _) = tiny();
    let tree = Tree::new();
    tree.script("fail.sh", "echo about to fail\nexit 7");
    let recipe = tree.recipe(
        "failing",
        "failing",
        &format!("{{file: {}}}", qcow2.display()),
        &["provisioning/fail.sh"],
    );
    let out = ferrotron(data.path(), &["image", "build", &recipe]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("[provision provisioning/fail.sh] about to fail"),
        "{text}"
    );
    let err = stderr(&out);
    assert!(
        err.contains("provisioning script provisioning/fail.sh: exited with status 7"),
        "{err}"
    );
    assert!(text.contains("deleted build instance"), "{text}");
    assert_nothing_left(data.path());
    assert!(failed_log(data.path()).contains("about to fail"));
}

#[test]
fn sigterm_during_provisioning_leaves_nothing() {
    if !enabled() {
        return;
    }
    let data = reachable_tempdir();
    let (qcow2, _, _) = tiny();
    let tree = Tree::new();
    tree.script("slow.sh", "echo provisioning slowly\nsleep 600");
    let recipe = tree.recipe(
        "slow",
        "slow",
        &format!("{{file: {}}}", qcow2.display()),
        &["provisioning/slow.sh"],
    );
    let mut child = command(data.path(), &["image", "build", &recipe])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(400);
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("provisioning slowly") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "provisioning never started:\n{seen}"
        );
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{seen}{}\n{}",
        rest.join("\n"),
        stderr(&out)
    );
    assert!(rest.iter().any(|l| l.contains("interrupted")), "{rest:?}");
    assert_nothing_left(data.path());
}

#[test]
fn sigterm_during_a_source_script_stops_it_and_leaves_nothing() {
    if !enabled() {
        return;
    }
    let data = reachable_tempdir();
    let tree = Tree::new();
    let marker = data.path().join("script-cleaned-up");
    tree.script(
        "source.sh",
        &format!(
            "trap 'echo cleaned > {}; exit 130' TERM\necho source started\nsleep 600 &\nwait",
            marker.display()
        ),
    );
    let p = tree.root.path().join("images/scripted.yaml");
    std::fs::write(
        &p,
        "name: scripted\ndistro: tinytest\nrelease: \"1\"\nflavor: scripted\narch: x86_64\nsource: {script: provisioning/source.sh}\n",
    )
    .unwrap();
    let mut child = command(data.path(), &["image", "build", p.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("[source] source started") {
            break;
        }
    }
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "cleaned\n");
    assert_nothing_left(data.path());
}

#[test]
fn debian_12_is_built_from_scratch_runs_a_task_and_is_pruned() {
    if !enabled() {
        return;
    }
    let data = reachable_tempdir();
    // debootstrap trees are cached between test runs in ferrotron's own data directory.
    let cache = std::env::var("FERROTRON_TEST_CACHE")
        .unwrap_or_else(|_| "/var/lib/ferrotron/cache".to_string());
    let started = Instant::now();
    let out = command(data.path(), &["image", "build", "images/debian-12.yaml"])
        .env("FERROTRON_CACHE_DIR", &cache)
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    eprintln!(
        "debian-12 build took {:.1}s\n{}",
        started.elapsed().as_secs_f64(),
        text.lines()
            .filter(|l| l.starts_with("phases:") || l.starts_with("size:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        text.contains("[clean] cleanup: cloud-init state cleaned"),
        "{text}"
    );
    let images = data.path().join("images");
    let built = ferrotron::image::newest(&images, "debian-12-cloud-x86_64").expect("an image");
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(built.with_extension("json")).unwrap()).unwrap();
    for pkg in ["cloud-init", "openssh-server", "python3"] {
        assert!(
            side["packages"][pkg].is_string(),
            "{pkg} not in {}",
            side["packages"]
        );
    }
    assert_eq!(side["source"]["kind"], "debootstrap");

    // A task on the fresh image: cloud-init ran for this instance (its state was cleaned at
    // build time), the build's provisioning is in, python3 works.
    let task = tempfile::tempdir().unwrap();
    std::fs::write(
        task.path().join("runtask.yml"),
        "name: d\ndesc: d\nmaintainer: m\nactions:\n  - name: check\n    shell:\n      - python3 -c 'print(6*7)'\n      - grep -q FERROTRON_RECIPE=debian-12 /etc/ferrotron-image && echo provisioned\n      - test -d /var/lib/cloud/instance && echo cloud-init ran\n",
    )
    .unwrap();
    let (run, v) = json_run(
        data.path(),
        &[
            "--backend",
            "libvirt",
            "--image",
            "debian-12",
            task.path().to_str().unwrap(),
        ],
    );
    let err = stderr(&run);
    assert_eq!(run.status.code(), Some(0), "{err}");
    for want in [
        "[check] 42",
        "[check] provisioned",
        "[check] cloud-init ran",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert_eq!(v["state"], "finished");

    // Prune keeps the newest even with --keep 1; an older copy goes.
    let old = "240101_0000-debian-12-cloud-x86_64";
    std::fs::copy(
        built.with_extension("json"),
        images.join(format!("{old}.json")),
    )
    .unwrap();
    std::fs::hard_link(&built, images.join(format!("{old}.qcow2"))).unwrap();
    let pruned = ferrotron(data.path(), &["image", "prune", "--keep", "1"]);
    assert_eq!(pruned.status.code(), Some(0), "{}", stderr(&pruned));
    assert!(stdout(&pruned).contains(&format!("removing {old}.qcow2")));
    assert!(built.is_file());
    assert!(!images.join(format!("{old}.qcow2")).exists());
    assert!(!images.join(format!("{old}.json")).exists());
}
