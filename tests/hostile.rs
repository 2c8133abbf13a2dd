//! The guest is hostile: the task runs as root in it and controls everything ferrotron calls
//! there (its `tar`, its shell, its output, its power button). These tests drive the real
//! binary; the VM ones boot the tiny image under real libvirtd + qemu, where the task
//! replaces the guest's own `tar`. After each: the run ended as the task's failure (or
//! cleanly), nothing was written outside the run directory, no domain or instance file left.
//!
//! VM tests need FERROTRON_TEST_LIBVIRT=1 (provisioning/test.sh); without it they say
//! SKIPPED and pass. The local ones always run.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{command, json_run, parse_report, reachable_tempdir, stderr};
use serde_json::Value;

fn vm_enabled() -> bool {
    let on = std::env::var("FERROTRON_TEST_LIBVIRT").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("SKIPPED: FERROTRON_TEST_LIBVIRT=1 not set (provisioning/test.sh sets it)");
    }
    on
}

fn task(dir: &Path, formula: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("runtask.yml"), formula).unwrap();
    dir.display().to_string()
}

const VM: [&str; 4] = ["--backend", "libvirt", "--image", "tiny"];

/// The run's domain is gone and its instance files with it.
fn assert_no_leak(data: &Path, uuid: &str) {
    let name = format!("ferrotron-{uuid}");
    let st = std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "domstate", &name])
        .output()
        .unwrap();
    assert!(!st.status.success(), "domain {name} still exists");
    assert!(
        !data.join("instances").join(&name).exists(),
        "instance files of {name} left behind"
    );
}

/// Everything under `root`, not following links.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            }
            found.push(e.path());
        }
    }
    found
}

/// Replaces the guest's login shell (through which ferrotron runs everything, `tar` for
/// collection included) with one that runs `body` instead of the collection's `tar -c`.
/// Replacing /bin/tar alone is not enough: busybox's shell runs its own applets first.
fn replace_tar(body: &str) -> String {
    format!(
        "      - |\n        cat > /bin/evilsh <<'EOF'\n        #!/bin/busybox sh\n        \
         case \"$2\" in *\"tar -cf - -C\"*) {body};; esac\n        \
         exec /bin/busybox sh \"$@\"\n        EOF\n        chmod 755 /bin/evilsh\n        \
         rm /bin/sh && mv /bin/evilsh /bin/sh\n"
    )
}

/// The archive: `a -> .`, then `a/a/c -> ../..` (two levels above the destination
/// once `a` resolves), then files under `c/`; plus plain escapes for good measure.
fn crafted_archive() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut raw = |kind: tar::EntryType, name: &str, link: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    raw(tar::EntryType::Symlink, "a", ".", b"");
    raw(tar::EntryType::Symlink, "a/a/c", "../..", b"");
    raw(
        tar::EntryType::Regular,
        "c/escaped.txt",
        "",
        b"written through c?",
    );
    raw(
        tar::EntryType::Regular,
        "a/a/c/deeper.txt",
        "",
        b"written through a?",
    );
    raw(tar::EntryType::Regular, "../up.txt", "", b"evil");
    raw(tar::EntryType::Symlink, "etc", "/etc", b"");
    raw(tar::EntryType::Regular, "etc/evil", "", b"evil");
    raw(tar::EntryType::Regular, "kept.txt", "", b"fine");
    b.into_inner().unwrap()
}

#[test]
fn crafted_archive_in_place_of_tar_cannot_escape() {
    if !vm_enabled() {
        return;
    }
    let data = reachable_tempdir();
    let t = data.path().join("task");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join("evil.tar"), crafted_archive()).unwrap();
    let formula = format!(
        "name: crafted-tar\nnamespace: hostile\ndesc: serves a crafted archive as tar output\n\
         maintainer: tests\nactions:\n  - name: replace tar\n    shell:\n{}",
        replace_tar("exec /bin/busybox cat ${workdir}/evil.tar")
    );
    let t = task(&t, &formula);
    let mut args: Vec<&str> = VM.to_vec();
    args.push(&t);
    let (out, v) = json_run(data.path(), &args);
    assert_eq!(v["state"], "finished", "{}", stderr(&out));
    let uuid = v["uuid"].as_str().unwrap();
    let refused: Vec<&str> = v["refused_artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    for r in ["a/a/c", "a/a/c/deeper.txt", "../up.txt", "etc", "etc/evil"] {
        assert!(refused.contains(&r), "{r} not refused: {refused:?}");
    }
    let artifacts = PathBuf::from(v["artifacts_dir"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(artifacts.join("kept.txt")).unwrap(),
        "fine"
    );
    // Nothing outside the run directory, and nothing inside resolves to outside it.
    let run_dir = artifacts.parent().unwrap().canonicalize().unwrap();
    for p in walk(data.path()) {
        let real = std::fs::canonicalize(&p).unwrap_or(p.clone());
        let name = p.file_name().unwrap().to_string_lossy();
        assert!(
            !matches!(
                name.as_ref(),
                "escaped.txt" | "deeper.txt" | "up.txt" | "evil"
            ) || real.starts_with(&run_dir),
            "{p:?} written outside the run directory"
        );
        if p.starts_with(&artifacts) {
            assert!(real.starts_with(&run_dir), "{p:?} resolves to {real:?}");
        }
    }
    assert_no_leak(data.path(), uuid);
}

/// Runs ferrotron with stdout and stderr drained by threads (the output may be a flood),
/// calling `on_line` for each stderr line with the child's pid, sampling its RSS and the
/// size of the instance's console log every 100 ms.
struct Watched {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr_tail: String,
    stderr_bytes: u64,
    peak_rss_kib: u64,
    peak_console_bytes: u64,
    elapsed: Duration,
}

fn run_watched(
    data: &Path,
    args: &[&str],
    uuid: &str,
    on_line: impl FnMut(&str, u32) + Send + 'static,
) -> Watched {
    let t0 = Instant::now();
    let mut child = command(data, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).unwrap();
        v
    });
    let tail = Arc::new(Mutex::new((String::new(), 0u64)));
    let t2 = tail.clone();
    let stderr_thread = std::thread::spawn(move || {
        let mut on_line = on_line;
        let mut r = BufReader::new(err);
        let mut line = Vec::new();
        while r
            .read_until(b'\n', &mut line)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            let s = String::from_utf8_lossy(&line).into_owned();
            on_line(&s, pid);
            let mut t = t2.lock().unwrap();
            t.1 += line.len() as u64;
            // Keep ferrotron's own lines and a short tail of the rest.
            if s.starts_with("ferrotron:") || t.0.len() < 64 * 1024 {
                t.0.push_str(&s);
            }
            line.clear();
        }
    });
    let console = data
        .join("instances")
        .join(format!("ferrotron-{uuid}"))
        .join("console.log");
    let (mut peak_rss, mut peak_console) = (0u64, 0u64);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(kib) = s
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        {
            peak_rss = peak_rss.max(kib);
        }
        if let Ok(m) = std::fs::metadata(&console) {
            peak_console = peak_console.max(m.len());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().unwrap();
    stderr_thread.join().unwrap();
    let (stderr_tail, stderr_bytes) = tail.lock().unwrap().clone();
    Watched {
        status,
        stdout,
        stderr_tail,
        stderr_bytes,
        peak_rss_kib: peak_rss,
        peak_console_bytes: peak_console,
        elapsed: t0.elapsed(),
    }
}

fn report(w: &Watched) -> Value {
    serde_json::from_slice(&w.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}); stderr:\n{}",
            w.stderr_tail
        )
    })
}

#[test]
fn hanging_tar_hits_the_collection_deadline() {
    if !vm_enabled() {
        return;
    }
    let data = reachable_tempdir();
    let formula = format!(
        "name: hanging-tar\nnamespace: hostile\ndesc: a tar that never ends\n\
         maintainer: tests\nactions:\n  - name: replace tar\n    shell:\n{}",
        replace_tar("echo partial; exec /bin/busybox sleep 100000")
    );
    let t = task(&data.path().join("task"), &formula);
    let uuid = uuid::Uuid::new_v4().to_string();
    let mut args = vec!["run", "--format", "json", "--uuid", &uuid];
    args.extend(VM);
    args.extend(["--collect-timeout", "15", &t]);
    let w = run_watched(data.path(), &args, &uuid, |_, _| {});
    let v = report(&w);
    assert_eq!(w.status.code(), Some(3), "{}", w.stderr_tail);
    assert_eq!(v["state"], "failed", "{}", w.stderr_tail);
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("collect_timeout_s"), "{error}");
    let collect = v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "collect")
        .expect("collect phase recorded");
    let ms = collect["duration_ms"].as_f64().unwrap();
    assert!((15_000.0..60_000.0).contains(&ms), "collect took {ms} ms");
    assert_no_leak(data.path(), &uuid);
}

#[test]
fn cancel_stops_a_hanging_collection() {
    if !vm_enabled() {
        return;
    }
    let data = reachable_tempdir();
    let formula = format!(
        "name: hanging-tar\nnamespace: hostile\ndesc: a tar that never ends\n\
         maintainer: tests\nactions:\n  - name: replace tar\n    shell:\n{}",
        replace_tar("exec /bin/busybox sleep 100000")
    );
    let t = task(&data.path().join("task"), &formula);
    let uuid = uuid::Uuid::new_v4().to_string();
    let mut args = vec!["run", "--format", "json", "--uuid", &uuid];
    args.extend(VM);
    args.push(&t);
    let signalled = Arc::new(Mutex::new(None::<Instant>));
    let s2 = signalled.clone();
    // The default deadline (600 s) is far away: only the interrupt can end this.
    let w = run_watched(data.path(), &args, &uuid, move |line, pid| {
        if line.starts_with("ferrotron: collect ...") {
            std::thread::sleep(Duration::from_secs(3));
            // SAFETY: kill has no memory-safety preconditions; pid is our live child.
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
            *s2.lock().unwrap() = Some(Instant::now());
        }
    });
    let at = signalled.lock().unwrap().expect("collection started");
    let v = report(&w);
    assert_eq!(w.status.code(), Some(130), "{}", w.stderr_tail);
    assert_eq!(v["state"], "cancelled");
    assert!(
        at.elapsed() < Duration::from_secs(90),
        "took {:?} after the interrupt",
        at.elapsed()
    );
    assert_no_leak(data.path(), &uuid);
}

#[test]
fn guest_powering_itself_off_is_the_tasks_failure() {
    if !vm_enabled() {
        return;
    }
    let data = reachable_tempdir();
    let t = task(
        &data.path().join("task"),
        "name: poweroff\nnamespace: hostile\ndesc: the guest switches itself off\n\
         maintainer: tests\nactions:\n  - name: off\n    shell:\n      - poweroff -f\n",
    );
    let mut args: Vec<&str> = VM.to_vec();
    args.push(&t);
    let (out, v) = json_run(data.path(), &args);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(v["state"], "failed", "{}", stderr(&out));
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("powered itself off"), "{error}");
    assert_no_leak(data.path(), v["uuid"].as_str().unwrap());
}

/// A `yes` flood on stdout, a line written one byte at a time and a flood of the serial
/// console, all in one run with small caps: the run log and console log stay within their
/// caps (cut marked) and ferrotron's memory stays flat. Prints the figures.
#[test]
fn output_floods_are_capped_and_memory_stays_flat() {
    if !vm_enabled() {
        return;
    }
    let data = reachable_tempdir();
    let t = task(
        &data.path().join("task"),
        "name: floods\nnamespace: hostile\ndesc: floods every output it has\n\
         maintainer: tests\nactions:\n  - name: flood\n    shell:\n      - |\n        \
         yes console-flood-console-flood-console-flood | head -c 1600000 > /dev/ttyS0 &\n        \
         yes | head -c 60000000\n        \
         i=0; while [ $i -lt 200000 ]; do printf y; i=$((i+1)); done; echo\n        \
         wait\n",
    );
    let uuid = uuid::Uuid::new_v4().to_string();
    let mut args = vec!["run", "--format", "json", "--uuid", &uuid];
    args.extend(VM);
    args.extend(["--log-cap", "4", "--console-cap", "1", &t]);
    let w = run_watched(data.path(), &args, &uuid, |_, _| {});
    let v = report(&w);
    assert_eq!(w.status.code(), Some(0), "{}", w.stderr_tail);
    let log = PathBuf::from(v["log"].as_str().unwrap());
    let log_len = std::fs::metadata(&log).unwrap().len();
    let text = std::fs::read(&log).unwrap();
    let text = String::from_utf8_lossy(&text);
    eprintln!(
        "figures: terminal got {} MB; run log {} bytes (cap 4 MiB); console log peak {} bytes \
         (cap 1 MiB); ferrotron peak RSS {} KiB; {:.1} s",
        w.stderr_bytes / 1_000_000,
        log_len,
        w.peak_console_bytes,
        w.peak_rss_kib,
        w.elapsed.as_secs_f64()
    );
    assert!(
        w.stderr_bytes > 60_000_000,
        "the flood reached the terminal"
    );
    assert!(log_len <= 4 << 20, "run log {log_len} bytes");
    assert!(text.contains("run log truncated"), "cut not marked");
    assert!(text.contains("ferrotron: run finished") || text.contains("action flood done"));
    assert!(
        w.peak_console_bytes <= (1 << 20) + 4096,
        "console log {} bytes",
        w.peak_console_bytes
    );
    assert!(
        w.peak_console_bytes >= 1 << 20,
        "the console flood did not reach the cap ({} bytes): the test proves nothing",
        w.peak_console_bytes
    );
    // Flat: a debug build idles at ~20–40 MiB; a flood kept in memory would be 60 MB+.
    assert!(
        w.peak_rss_kib < 100 * 1024,
        "peak RSS {} KiB",
        w.peak_rss_kib
    );
    assert_no_leak(data.path(), &uuid);
}

/// The same floods on the local backend (no VM): quick, and the same runner path.
#[test]
fn local_floods_are_capped_and_memory_stays_flat() {
    let data = tempfile::tempdir().unwrap();
    let t = task(
        &data.path().join("task"),
        "name: floods\nnamespace: hostile\ndesc: floods stdout\nmaintainer: tests\n\
         actions:\n  - name: flood\n    shell:\n      - |\n        \
         yes | head -c 100000000\n        \
         i=0; while [ $i -lt 200000 ]; do printf y; i=$((i+1)); done; echo\n",
    );
    let uuid = uuid::Uuid::new_v4().to_string();
    let args = [
        "run",
        "--format",
        "json",
        "--uuid",
        &uuid,
        "--log-cap",
        "2",
        &t,
    ];
    let w = run_watched(data.path(), &args, &uuid, |_, _| {});
    let v = report(&w);
    assert_eq!(w.status.code(), Some(0), "{}", w.stderr_tail);
    let log = PathBuf::from(v["log"].as_str().unwrap());
    let log_len = std::fs::metadata(&log).unwrap().len();
    eprintln!(
        "figures (local): terminal got {} MB; run log {} bytes (cap 2 MiB); peak RSS {} KiB; \
         {:.1} s",
        w.stderr_bytes / 1_000_000,
        log_len,
        w.peak_rss_kib,
        w.elapsed.as_secs_f64()
    );
    assert!(w.stderr_bytes > 100_000_000);
    assert!(log_len <= 2 << 20, "run log {log_len} bytes");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("run log truncated"), "cut not marked");
    // ferrotron's own last lines still made it into the reserve.
    assert!(
        text.contains("ferrotron: action flood done"),
        "end not logged"
    );
    assert!(
        w.peak_rss_kib < 100 * 1024,
        "peak RSS {} KiB",
        w.peak_rss_kib
    );
}

#[test]
fn artifacts_over_the_cap_are_the_tasks_failure() {
    let data = tempfile::tempdir().unwrap();
    let t = task(
        &data.path().join("task"),
        "name: big\nnamespace: hostile\ndesc: too many artifacts\nmaintainer: tests\n\
         actions:\n  - name: fill\n    shell:\n      \
         - head -c 3000000 /dev/zero > ${artifactsdir}/big\n",
    );
    let (out, v) = json_run(data.path(), &["--artifacts-cap", "1", &t]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(v["state"], "failed");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("size cap") && error.contains("the task's doing"),
        "{error}"
    );
}

#[test]
fn python_export_over_its_cap_is_the_tasks_failure() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("task");
    task(
        &dir,
        "name: big-export\nnamespace: hostile\ndesc: exports too much\nmaintainer: tests\n\
         actions:\n  - name: export\n    python: {file: big.py, callable: run}\n    \
         export: value\n",
    );
    std::fs::write(
        dir.join("big.py"),
        "def run():\n    return 'x' * (9 << 20)\n",
    )
    .unwrap();
    let t = dir.display().to_string();
    let (out, v) = json_run(data.path(), &[&t]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(v["state"], "failed");
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("more than"), "{error}");
    let _ = parse_report(&out);
}
