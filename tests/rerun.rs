//! `ferrotron rerun`: a run recorded by one data directory (the "farm", served by a real
//! `ferrotron web`) run again from another, through the runs API, and compared.
//!
//! The libvirt case needs libvirtd and the tiny image (FERROTRON_TEST_LIBVIRT=1, as in
//! tests/libvirt.rs); without them it says SKIPPED and passes.

mod common;

use std::path::Path;
use std::process::Output;

use common::{WebProcess, command, json_run, reachable_tempdir, stderr};
use serde_json::Value;

fn rerun(data: &Path, args: &[&str]) -> (Output, Option<Value>) {
    let mut all = vec!["rerun", "--format", "json"];
    all.extend_from_slice(args);
    let out = command(data, &all).output().unwrap();
    let v = serde_json::from_slice(&out.stdout).ok();
    (out, v)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn runs_in(data: &Path) -> usize {
    std::fs::read_dir(data.join("artifacts"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_farm_run_rerun_here_agrees_and_a_changed_task_shows_its_difference() {
    let (farm, here, work) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    // The farm runs a copy of the example task, which is then edited: a rerun runs the
    // task as the farm ran it, not as the directory holds it now.
    let task = work.path().join("shell-lint");
    copy_dir(&common::repo().join("tasks/shell-lint"), &task);
    let task_arg = task.display().to_string();
    let (out, report) = json_run(
        farm.path(),
        &["-i", "pkg-1.0", "-t", "koji_build", &task_arg],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let uuid = report["uuid"].as_str().unwrap().to_string();
    std::fs::write(
        task.join("scripts/cleanup.sh"),
        "#!/bin/sh\necho \"$HOME\"\n",
    )
    .unwrap();

    let web = WebProcess::start(farm.path(), &[]);
    let url = format!("{}/runs/{uuid}", web.url);
    let (out, v) = rerun(here.path(), &[&url]);
    let v = v.unwrap_or_else(|| panic!("no JSON report: {}", stderr(&out)));
    assert_eq!(out.status.code(), Some(0), "{v:#}\n{}", stderr(&out));
    assert_eq!(v["agree"], true, "{v:#}");
    assert_eq!(v["log_diff"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["recorded"]["uuid"], uuid.as_str());
    let sha = v["recorded"]["task_sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64);
    assert_eq!(v["rerun"]["task_sha256"], sha, "the rerun ran other files");
    assert!(
        here.path()
            .join("tasks")
            .join(sha)
            .join("runtask.yml")
            .is_file()
    );
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{v:#}");
    for r in results {
        assert_eq!(r["recorded"]["outcome"], r["rerun"]["outcome"], "{r}");
    }
    assert!(
        results.iter().any(|r| r["recorded"]["outcome"] == "FAILED"),
        "the example task fails one script: {v:#}"
    );
    // The farm serves the snapshot by hash; the rerun recorded its run here.
    let served = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let r = reqwest::get(format!("{}/api/v1/runs/{uuid}/task.tar", web.url))
            .await
            .unwrap();
        let sha = r.headers()["x-ferrotron-task-sha256"]
            .to_str()
            .unwrap()
            .to_string();
        (sha, r.bytes().await.unwrap().len())
    });
    assert_eq!(served.0, sha);
    assert!(served.1 > 1024, "{served:?}");
    assert_eq!(runs_in(here.path()), 1);

    // The edited task, against the farm's run: the fixed script passes now.
    let (out, v) = rerun(here.path(), &[&url, "--task", &task_arg]);
    let v = v.unwrap_or_else(|| panic!("no JSON report: {}", stderr(&out)));
    assert_eq!(out.status.code(), Some(1), "{v:#}");
    assert_eq!(v["agree"], false);
    let differing: Vec<&str> = v["differing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(
        differing,
        ["example.shell-lint [pkg-1.0/cleanup.sh]"],
        "{v:#}"
    );
    assert_ne!(v["rerun"]["task_sha256"], sha);
    let diff: Vec<&str> = v["log_diff"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(
        diff.contains(&"- [lint] cleanup.sh: FAILED (4 findings)")
            && diff.contains(&"+ [lint] cleanup.sh: PASSED (0 findings)"),
        "{diff:#?}"
    );

    // The text report says the same to a person.
    let out = command(here.path(), &["rerun", &url, "--task", &task_arg])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("outcomes differ: 1 of 2 results")
            && text.contains("≠ example.shell-lint [pkg-1.0/cleanup.sh]")
            && text.contains("task:     not the same files"),
        "{text}"
    );

    // A run of this host's own store, by uuid.
    let (out, v) = rerun(farm.path(), &[&uuid]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(v.unwrap()["agree"], true);

    // What cannot be rerun says why and runs nothing.
    let before = runs_in(here.path());
    let missing = format!("{}/runs/0193d0c4-0000-7000-8000-000000000001", web.url);
    for (arg, code, says) in [
        (missing.as_str(), 2, "Run not found"),
        ("http://127.0.0.1:9/runs/x", 2, "`x` is not a run uuid"),
        ("farm/runs/1", 2, "is neither a run uuid nor a run's URL"),
    ] {
        let (out, _) = rerun(here.path(), &[arg]);
        assert_eq!(out.status.code(), Some(code), "{arg}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{arg}: {}", stderr(&out));
    }
    assert_eq!(runs_in(here.path()), before);
}

#[test]
fn a_libvirt_run_is_rerun_on_its_image_and_a_missing_image_says_how_to_get_it() {
    if std::env::var("FERROTRON_TEST_LIBVIRT").ok().as_deref() != Some("1") {
        eprintln!("SKIPPED: FERROTRON_TEST_LIBVIRT=1 not set (provisioning/test.sh sets it)");
        return;
    }
    let images = std::env::var("FERROTRON_TEST_IMAGES").expect("FERROTRON_TEST_IMAGES");
    let (farm, here, dirs) = (
        reachable_tempdir(),
        reachable_tempdir(),
        reachable_tempdir(),
    );
    // The farm's images: links to the test image, its sidecar saying which recipe made it.
    let farm_images = dirs.path().join("farm-images");
    std::fs::create_dir(&farm_images).unwrap();
    let stem = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix("-tiny-1-base-x86_64.qcow2")
                .map(|s| format!("{s}-tiny-1-base-x86_64"))
        })
        .max()
        .expect("the tiny image is built");
    for ext in ["qcow2", "vmlinux", "initrd"] {
        std::os::unix::fs::symlink(
            Path::new(&images).join(format!("{stem}.{ext}")),
            farm_images.join(format!("{stem}.{ext}")),
        )
        .unwrap();
    }
    let mut side: Value = serde_json::from_slice(
        &std::fs::read(Path::new(&images).join(format!("{stem}.json"))).unwrap(),
    )
    .unwrap();
    side["recipe"] = "tiny".into();
    side["recipe_sha256"] = "0".repeat(64).into();
    std::fs::write(farm_images.join(format!("{stem}.json")), side.to_string()).unwrap();
    let farm_images_arg = farm_images.display().to_string();
    let (out, report) = json_run(
        farm.path(),
        &[
            "--images-dir",
            &farm_images_arg,
            "--backend",
            "libvirt",
            "--image",
            "tiny",
            "-i",
            "bash-5.2-1.fc41",
            "-t",
            "koji_build",
            "tests/fixtures/two-results",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let uuid = report["uuid"].as_str().unwrap().to_string();
    // This host has the image elsewhere, not where the farm booted it.
    let moved = dirs.path().join("moved-images");
    std::fs::rename(&farm_images, &moved).unwrap();

    let web = WebProcess::start(farm.path(), &[]);
    let url = format!("{}/runs/{uuid}", web.url);
    let empty = dirs.path().join("no-images");
    std::fs::create_dir(&empty).unwrap();
    let empty_arg = empty.display().to_string();
    let (out, _) = rerun(here.path(), &["--images-dir", &empty_arg, &url]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for says in [
        format!("booted the image {stem}.qcow2, which this host has not"),
        "nothing was run".to_string(),
        "`ferrotron image build tiny`".to_string(),
        format!("not the farm's {}", "0".repeat(64)),
        "--backend local".to_string(),
    ] {
        assert!(err.contains(&says), "missing `{says}` in:\n{err}");
    }
    assert_eq!(runs_in(here.path()), 0, "a run was made: {err}");

    // With the image where this host keeps images, the rerun boots it and agrees.
    let moved_arg = moved.display().to_string();
    let (out, v) = rerun(here.path(), &["--images-dir", &moved_arg, &url]);
    let v = v.unwrap_or_else(|| panic!("no JSON report: {}", stderr(&out)));
    assert_eq!(out.status.code(), Some(0), "{v:#}\n{}", stderr(&out));
    assert_eq!(v["agree"], true, "{v:#}");
    assert_eq!(v["log_diff"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["rerun"]["backend"], "libvirt");
    assert!(
        v["rerun"]["image"]
            .as_str()
            .unwrap()
            .starts_with(&moved_arg),
        "{v:#}"
    );
    assert_eq!(v["results"].as_array().unwrap().len(), 2, "{v:#}");
}
