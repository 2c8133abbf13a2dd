//! Drives the real `ferrotron` binary with the local backend: JSON report, store rows and
//! artifacts must agree; broken formulas must fail with one clear line.

mod common;

use std::path::{Path, PathBuf};

use common::{ferrotron, json_run};
use ferrotron::store::Store;

#[tokio::test]
async fn two_results_agree_across_json_store_and_artifacts() {
    let data = tempfile::tempdir().unwrap();
    let (out, v) = json_run(
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
    // result_worst over a FAILED result: the task ran to its end, exit 1.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["state"], "finished");
    assert_eq!(v["exit_code"], 1);
    assert_eq!(v["backend"], "local");
    assert_eq!(v["item"], "bash-5.2-1.fc41");
    assert_eq!(v["type"], "koji_build");

    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["checkname"], "fixture.two-results");
    assert_eq!(results[0]["outcome"], "PASSED");
    assert_eq!(results[0]["data"]["arch"][0], "x86_64");
    assert_eq!(results[0]["data"]["score"][0], "10");
    assert_eq!(results[1]["checkname"], "fixture.second");
    assert_eq!(results[1]["outcome"], "FAILED");
    assert_eq!(results[1]["artifact"], "detail.log");
    assert_eq!(results[1]["data"]["tags"], serde_json::json!(["a", "b"]));

    let phase_names: Vec<&str> = v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        phase_names,
        [
            "clone",
            "boot",
            "upload",
            "action produce",
            "action report",
            "action decide",
            "collect",
            "destroy"
        ]
    );

    // The artifact came back, and the live output went to stderr (stdout is the JSON).
    let artifacts = PathBuf::from(v["artifacts_dir"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(artifacts.join("detail.log")).unwrap(),
        "detail for bash-5.2-1.fc41\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[produce] checking bash-5.2-1.fc41 on x86_64"),
        "{stderr}"
    );
    assert!(stderr.contains("[produce] to stderr"), "{stderr}");
    let log = std::fs::read_to_string(v["log"].as_str().unwrap()).unwrap();
    assert!(
        log.contains("[produce] checking bash-5.2-1.fc41 on x86_64"),
        "{log}"
    );

    // The store holds the same run and results.
    let db = format!("sqlite://{}", data.path().join("ferrotron.db").display());
    let store = Store::open(&db).await.unwrap();
    let uuid: uuid::Uuid = v["uuid"].as_str().unwrap().parse().unwrap();
    let run = store.run(uuid).await.unwrap().expect("run stored");
    assert_eq!(run.state.as_str(), "finished");
    assert_eq!(run.exit_code, Some(1));
    assert_eq!(run.phases.len(), 8);
    let stored = store.run_results(uuid).await.unwrap();
    assert_eq!(stored.len(), 2);
    let failed = stored.iter().find(|r| r.outcome == "FAILED").unwrap();
    assert_eq!(failed.testcase, "fixture.second");
    assert_eq!(failed.groups, vec![uuid.to_string()]);
    assert_eq!(failed.data["item"], vec!["bash-5.2-1.fc41".to_string()]);
    let url = failed.ref_url.as_deref().unwrap();
    assert!(
        url.starts_with("file://") && url.ends_with("/task/detail.log"),
        "{url}"
    );
    assert!(Path::new(url.trim_start_matches("file://")).is_file());

    // The local "instance" is gone.
    let local = data.path().join("local");
    assert_eq!(std::fs::read_dir(&local).map(|d| d.count()).unwrap_or(0), 0);
}

#[test]
fn example_tasks_pass() {
    let data = tempfile::tempdir().unwrap();
    for (task, args, expect_outcomes) in [
        (
            "tasks/python-unittest",
            vec!["-t", "python_package", "-i", "sample"],
            vec!["PASSED"],
        ),
        (
            "tasks/sha256-manifest",
            vec!["-t", "compose", "-i", "payload"],
            vec!["PASSED"],
        ),
        // cleanup.sh carries deliberate findings; backup.sh is clean.
        (
            "tasks/shell-lint",
            vec!["-t", "file", "-i", "scripts"],
            vec!["PASSED", "FAILED"],
        ),
    ] {
        let mut all = args.clone();
        all.push(task);
        let (out, v) = json_run(data.path(), &all);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{task}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let outcomes: Vec<&str> = v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, expect_outcomes, "{task}");
    }
}

#[test]
fn broken_formulas_fail_with_one_clear_line() {
    let data = tempfile::tempdir().unwrap();
    for (file, expect) in [
        ("indentation.yml", "indentation.yml:"),
        ("unknown-directive.yml", "koji"),
        ("unknown-variable.yml", "nosuchvar"),
        ("missing-key.yml", "maintainer"),
    ] {
        let path = format!("tests/fixtures/broken/{file}");
        let out = ferrotron(data.path(), &["run", &path]);
        assert_eq!(out.status.code(), Some(2), "{file}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{file}: expected one line, got:\n{stderr}");
        assert!(lines[0].starts_with("error: "), "{file}: {stderr}");
        assert!(lines[0].contains(file), "{file}: names the file: {stderr}");
        assert!(
            lines[0].contains(expect),
            "{file}: names the cause: {stderr}"
        );
        // A place: file:line:col
        assert!(
            lines[0]
                .split(file)
                .nth(1)
                .is_some_and(|rest| rest.starts_with(':')
                    && rest[1..].chars().next().is_some_and(|c| c.is_ascii_digit())),
            "{file}: names a line: {stderr}"
        );
        // Nothing ran: no run directory was created.
        assert!(!data.path().join("artifacts").exists(), "{file}");
    }
}

#[test]
fn task_failure_and_timeout_exit_codes() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fail.yml"),
        "name: f\ndesc: d\nmaintainer: m\nactions:\n  - name: boom\n    shell: [\"echo before; exit 7\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("slow.yml"),
        "name: s\ndesc: d\nmaintainer: m\nactions:\n  - name: nap\n    shell: [\"sleep 30\"]\n",
    )
    .unwrap();
    let fail = dir.path().join("fail.yml");
    let (out, v) = json_run(data.path(), &[fail.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(v["state"], "failed");
    assert!(v["error"].as_str().unwrap().contains("status 7"), "{v}");

    // A per-action timeout fails that action, whatever the task's timeout.
    std::fs::write(
        dir.path().join("stuck.yml"),
        "name: s\ndesc: d\nmaintainer: m\nactions:\n  - name: stuck\n    timeout: 1\n    shell: [\"sleep 30\"]\n",
    )
    .unwrap();
    let stuck = dir.path().join("stuck.yml");
    let t0 = std::time::Instant::now();
    let (out, v) = json_run(data.path(), &[stuck.to_str().unwrap()]);
    assert!(t0.elapsed().as_secs() < 20);
    assert_eq!(out.status.code(), Some(3));
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("`stuck`") && e.contains("exceeded its timeout of 1.00s"),
        "{e}"
    );

    let slow = dir.path().join("slow.yml");
    let t0 = std::time::Instant::now();
    let (out, v) = json_run(data.path(), &["--timeout", "1", slow.to_str().unwrap()]);
    assert!(t0.elapsed().as_secs() < 20);
    assert_eq!(out.status.code(), Some(3));
    assert!(v["error"].as_str().unwrap().contains("timeout"), "{v}");
    assert_eq!(
        std::fs::read_dir(data.path().join("local"))
            .unwrap()
            .count(),
        0
    );
}

/// `FILE` as Python's ElementTree reads it: `[suite attributes, [[name, classname, verdict,
/// message]…]]` for its one testsuite.
fn parse_junit(python: &str, file: &Path) -> serde_json::Value {
    let script = r#"
import json, sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
(suite,) = root.findall("testsuite")
cases = []
for c in suite.findall("testcase"):
    v = [e for e in c if e.tag in ("failure", "error", "skipped")]
    cases.append([c.get("name"), c.get("classname"), v[0].tag if v else "pass", v[0].get("message") if v else None])
json.dump([dict(suite.attrib), cases], sys.stdout)
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ElementTree refused {}:\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn junit_file_is_written_at_the_end_of_every_run() {
    let Ok(python) = std::env::var("FERROTRON_TEST_PYTHON") else {
        eprintln!("SKIPPED: FERROTRON_TEST_PYTHON not set");
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let junit = data.path().join("report.xml");
    let junit_arg = junit.to_str().unwrap();
    let (out, v) = json_run(
        data.path(),
        &[
            "--junit",
            junit_arg,
            "-i",
            "bash-5.2-1.fc41",
            "-t",
            "koji_build",
            "tests/fixtures/two-results",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    let got = parse_junit(&python, &junit);
    assert_eq!(got[0]["name"], "fixture.two-results");
    assert_eq!(
        (&got[0]["tests"], &got[0]["failures"], &got[0]["errors"]),
        (&"2".into(), &"1".into(), &"0".into())
    );
    assert_eq!(
        got[1],
        serde_json::json!([
            ["fixture.two-results", "bash-5.2-1.fc41", "pass", null],
            [
                "fixture.second",
                "bash-5.2-1.fc41",
                "failure",
                "one bad thing"
            ],
        ])
    );
    // The same document as the runs API's.
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains(&format!(r#"value="{}""#, v["uuid"].as_str().unwrap())));

    // A task that failed before reporting: the run's error as one error testcase.
    let dir = tempfile::tempdir().unwrap();
    let fail = dir.path().join("fail.yml");
    std::fs::write(
        &fail,
        "name: f\ndesc: d\nmaintainer: m\nactions:\n  - name: boom\n    shell: [\"exit 7\"]\n",
    )
    .unwrap();
    let out = ferrotron(
        data.path(),
        &["run", "--junit", junit_arg, fail.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(3), "{}", common::stderr(&out));
    let got = parse_junit(&python, &junit);
    assert_eq!(
        (&got[0]["tests"], &got[0]["errors"]),
        (&"1".into(), &"1".into())
    );
    assert_eq!(got[1][0][0], "ferrotron.run");
    assert_eq!(got[1][0][2], "error");
    assert!(got[1][0][3].as_str().unwrap().contains("status 7"), "{got}");

    // A file that cannot be written: exit 4, and the error names it.
    let bad = data.path().join("no-such-dir/report.xml");
    let out = ferrotron(
        data.path(),
        &[
            "run",
            "--junit",
            bad.to_str().unwrap(),
            fail.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", common::stderr(&out));
    let stderr = common::stderr(&out);
    assert!(
        stderr.contains(&format!("error: --junit {}: writing:", bad.display())),
        "{stderr}"
    );
}
