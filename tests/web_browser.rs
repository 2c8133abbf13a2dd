//! The review UI in a real headless Chromium over WebDriver (Debian's `chromium` and
//! `chromium-driver`), against the real `ferrotron web` binary: filter the runs list, open a
//! run, watch live log lines arrive while it runs, download an artifact, see charts render,
//! and fit a phone's width. Runs when FERROTRON_TEST_BROWSER=1.

mod common;

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrotron::store::{NewGroup, NewResult, NewRun, Phase, RunState, Store};
use serde_json::{Value, json};
use uuid::Uuid;

/// Kills the child (a process this test started) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Driver {
    http: reqwest::Client,
    base: String,
}

impl Driver {
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if method != reqwest::Method::GET {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let v: Value = r.json().await.unwrap();
        if v["value"].get("error").is_some() {
            panic!("WebDriver {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    async fn js(&self, session: &str, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            &format!("/session/{session}/execute/sync"),
            json!({"script": script, "args": []}),
        )
        .await
    }

    async fn goto(&self, session: &str, url: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/session/{session}/url"),
            json!({"url": url}),
        )
        .await;
    }

    async fn find(&self, session: &str, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/session/{session}/element"),
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_string()
    }

    async fn click(&self, session: &str, css: &str) {
        let el = self.find(session, css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/session/{session}/element/{el}/click"),
            json!({}),
        )
        .await;
    }

    async fn type_into(&self, session: &str, css: &str, text: &str) {
        let el = self.find(session, css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/session/{session}/element/{el}/value"),
            json!({"text": text}),
        )
        .await;
    }

    /// Polls `script` (a JS expression) until it is truthy; returns its value.
    async fn wait_for(&self, session: &str, script: &str, what: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.js(session, &format!("return {script};")).await;
            let truthy =
                !matches!(v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs of two tasks, with results, phases, logs and an artifact.
async fn seed(data: &Path) -> (Uuid, Uuid) {
    let store = Store::open(&format!("sqlite://{}/ferrotron.db", data.display()))
        .await
        .unwrap();
    let make = |task: &'static str, item: &'static str| {
        let store = store.clone();
        async move {
            let uuid = Uuid::now_v7();
            let dir = data.join("artifacts").join(uuid.to_string());
            std::fs::create_dir_all(dir.join("task")).unwrap();
            std::fs::write(
                dir.join("ferrotron.log"),
                "ferrotron: run starts\n[lint] first line\n",
            )
            .unwrap();
            std::fs::write(dir.join("task/report.txt"), format!("report of {uuid}\n")).unwrap();
            store
                .create_run(&NewRun {
                    uuid,
                    task: task.into(),
                    item: item.into(),
                    item_type: "koji_build".into(),
                    arch: "x86_64".into(),
                    backend: "local".into(),
                    params: json!({"formula": format!("tasks/{task}/runtask.yml"), "jobid": "-1", "image": "local"}),
                    log_path: String::new(),
                    artifacts_dir: String::new(),
                    owner: None,
                })
                .await
                .unwrap();
            store.set_run_state(uuid, RunState::Running).await.unwrap();
            let now = time::OffsetDateTime::now_utc();
            store
                .record_phases(
                    uuid,
                    &[
                        Phase {
                            name: "boot".into(),
                            started_at: now,
                            duration: Duration::from_millis(900),
                        },
                        Phase {
                            name: "action lint".into(),
                            started_at: now + Duration::from_millis(900),
                            duration: Duration::from_millis(2100),
                        },
                    ],
                )
                .await
                .unwrap();
            uuid
        }
    };
    // Older runs of shell-lint whose check flips: a flaky check and a pass-rate series.
    for outcome in ["PASSED", "FAILED", "PASSED"] {
        let u = make("shell-lint", "bash-5.2").await;
        result(&store, u, "shell-lint.syntax", outcome).await;
        store
            .finish_run(u, RunState::Finished, Some(0), None)
            .await
            .unwrap();
    }
    let done = make("shell-lint", "bash-5.2").await;
    result(&store, done, "shell-lint.syntax", "PASSED").await;
    result(&store, done, "shell-lint.style", "FAILED").await;
    store
        .finish_run(done, RunState::Finished, Some(1), None)
        .await
        .unwrap();
    let live = make("rpmlint", "zsh-5.9").await;
    (done, live)
}

async fn result(store: &Store, run: Uuid, check: &str, outcome: &str) {
    store
        .create_result(&NewResult {
            testcase: check.into(),
            groups: vec![NewGroup::from(run)],
            outcome: outcome.into(),
            data: [
                ("item".to_string(), vec!["bash-5.2".to_string()]),
                ("type".to_string(), vec!["koji_build".to_string()]),
            ]
            .into_iter()
            .collect(),
            ..NewResult::default()
        })
        .await
        .unwrap();
}

fn start_web(data: &Path) -> (Proc, String) {
    let mut child = common::command(data, &["web", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ferrotron web starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .last()
        .filter(|u| u.starts_with("http://"))
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    (Proc(child), url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_ui_in_headless_chromium() {
    if std::env::var("FERROTRON_TEST_BROWSER").as_deref() != Ok("1") {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: FERROTRON_TEST_BROWSER=1 not set"
        );
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let (done, live) = seed(data.path()).await;
    let (_web, url) = start_web(data.path());

    let port = free_port();
    let _driver = Proc(
        Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let d = Driver {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while d
        .http
        .get(format!("{}/status", d.base))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = tempfile::tempdir().unwrap();
    let downloads: PathBuf = data.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
        "binary": "/usr/bin/chromium",
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900",
                 format!("--user-data-dir={}", profile.path().display())],
        "prefs": {"download.default_directory": downloads.display().to_string(),
                  "download.prompt_for_download": false}
    }}}});
    let v = d.call(reqwest::Method::POST, "/session", caps).await;
    let s = v["sessionId"].as_str().expect("a session").to_string();

    // 1. Filter the runs list by task.
    d.goto(&s, &format!("{url}/")).await;
    let rows = d
        .js(&s, "return document.querySelectorAll('tr.run').length;")
        .await;
    assert_eq!(rows, 5);
    d.type_into(&s, "input[name=task]", "rpmlint").await;
    d.click(&s, "form.filters button").await;
    d.wait_for(
        &s,
        "location.search.includes('task=rpmlint')",
        "the filtered page",
    )
    .await;
    let uuids = d
        .js(
            &s,
            "return [...document.querySelectorAll('tr.run')].map(r => r.dataset.uuid);",
        )
        .await;
    assert_eq!(uuids, json!([live.to_string()]));
    // A select submits on change: state=finished shows no rpmlint run.
    d.js(&s, "const e = document.querySelector('select[name=state]'); e.value = 'finished'; e.dispatchEvent(new Event('change')); return 1;").await;
    d.wait_for(&s, "document.getElementById('no-runs')", "the empty result")
        .await;

    // 2. Open a run from the list; results are colour-coded by outcome.
    d.goto(&s, &format!("{url}/?task=shell-lint")).await;
    d.click(&s, &format!("tr.run[data-uuid='{done}'] td a"))
        .await;
    d.wait_for(
        &s,
        &format!("location.pathname == '/runs/{done}'"),
        "the run page",
    )
    .await;
    let h1 = d
        .js(&s, "return document.querySelector('h1').textContent;")
        .await;
    assert_eq!(h1, "shell-lint on bash-5.2");
    let failed = d
        .js(
            &s,
            "return getComputedStyle(document.querySelector('tr.result.o-failed .badge')).color;",
        )
        .await;
    assert_eq!(failed, "rgb(179, 38, 30)", "FAILED is red");
    let passed = d
        .js(
            &s,
            "return getComputedStyle(document.querySelector('tr.result.o-passed .badge')).color;",
        )
        .await;
    assert_eq!(passed, "rgb(31, 122, 58)", "PASSED is green");
    let cmd = d
        .js(
            &s,
            "return document.getElementById('reproduce').textContent;",
        )
        .await;
    assert_eq!(
        cmd,
        "ferrotron run -i bash-5.2 -t koji_build -a x86_64 tasks/shell-lint"
    );
    let timeline = d
        .js(
            &s,
            "return document.querySelectorAll('#timeline rect').length;",
        )
        .await;
    assert_eq!(timeline, 2);

    // 3. Download an artifact.
    d.click(&s, "a.download").await;
    let file = downloads.join("report.txt");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&file).ok().as_deref() != Some(&format!("report of {done}\n")) {
        assert!(
            Instant::now() < deadline,
            "no download in {}",
            downloads.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 4. Live log: lines appear while the run is running, then the stream ends.
    d.goto(&s, &format!("{url}/runs/{live}")).await;
    d.wait_for(
        &s,
        "document.getElementById('log').textContent.includes('[lint] first line')",
        "the log so far",
    )
    .await;
    let log = data.path().join(format!("artifacts/{live}/ferrotron.log"));
    for i in 0..3 {
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        writeln!(f, "[lint] live line {i}").unwrap();
        drop(f);
        d.wait_for(
            &s,
            &format!("document.getElementById('log').textContent.includes('[lint] live line {i}')"),
            "an appended line",
        )
        .await;
    }
    let store = Store::open(&format!("sqlite://{}/ferrotron.db", data.path().display()))
        .await
        .unwrap();
    store
        .finish_run(live, RunState::Finished, Some(0), None)
        .await
        .unwrap();
    d.wait_for(
        &s,
        "document.getElementById('log').dataset.ended == '1'",
        "the end of the stream",
    )
    .await;
    let text = d
        .js(&s, "return document.getElementById('log').textContent;")
        .await;
    assert_eq!(
        text,
        "ferrotron: run starts\n[lint] first line\n[lint] live line 0\n[lint] live line 1\n[lint] live line 2\n",
        "every line exactly once, in order"
    );

    // 5. Charts on the task page: drawn, visible, with one point per day and one flaky check.
    d.goto(&s, &format!("{url}/tasks/shell-lint")).await;
    let width = d
        .js(
            &s,
            "return document.getElementById('pass-rate').getBoundingClientRect().width;",
        )
        .await;
    assert!(
        width.as_f64().unwrap() > 200.0,
        "pass-rate chart width {width}"
    );
    let points = d
        .js(
            &s,
            "return document.querySelectorAll('#pass-rate circle').length;",
        )
        .await;
    assert_eq!(points, 1);
    let bars = d
        .js(
            &s,
            "return document.querySelectorAll('#phase-durations rect').length;",
        )
        .await;
    assert_eq!(bars, 2 * 3 + 3, "two phases × p50/p90/p99 + legend");
    let flaky = d.js(&s, "return [...document.querySelectorAll('table.flaky td')].slice(0, 3).map(t => t.textContent);").await;
    assert_eq!(flaky, json!(["shell-lint.syntax", "bash-5.2", "2"]));

    // 6. A phone's width: the runs list fits without sideways scrolling.
    d.call(
        reqwest::Method::POST,
        &format!("/session/{s}/window/rect"),
        json!({"width": 390, "height": 844}),
    )
    .await;
    d.goto(&s, &format!("{url}/")).await;
    let fits = d
        .js(
            &s,
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
        )
        .await;
    assert_eq!(fits, true, "the runs list is wider than a phone");

    d.call(reqwest::Method::DELETE, &format!("/session/{s}"), json!({}))
        .await;
}
