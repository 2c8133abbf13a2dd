//! The farm as one service: `ferrotron serve` as a real process hosts the review UI and
//! every API on its listen address (the run link of its result messages answers with the
//! run page), shows its queue and its providers, and acts on cancel and rerun.
//!
//! Services come from `provisioning/test.sh`. A test whose service variable is unset
//! (FERROTRON_TEST_AMQP, FERROTRON_TEST_LIBVIRT) says SKIPPED and passes; with the variable
//! set it must work.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferrotron::store::{Job, RunState, Store};
use serde_json::{Value, json};

const TOKEN: &str = "farm-token-0123456789";

fn env_or_skip(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            eprintln!("SKIPPED: {var} not set (provisioning/test.sh sets it)");
            None
        }
    }
}

fn uniq() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_task(dir: &Path, name: &str, shell: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("runtask.yml"),
        format!(
            "name: {name}\ndesc: d\nmaintainer: m\nactions:\n  - name: work\n    shell: [{shell:?}]\n"
        ),
    )
    .unwrap();
    d
}

use common::daemon::Daemon;

/// What these tests ask of the shared daemon harness besides starting it.
trait FarmDaemon {
    fn stop(self);
    fn get(&self, path: &str) -> (u16, String);
    fn get_json(&self, path: &str) -> (u16, Value);
    fn post(&self, path: &str, body: &Value, token: Option<&str>) -> (u16, Value);
}

impl FarmDaemon for Daemon {
    /// SIGTERM, and a clean exit within a minute.
    fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let code = self.wait(Duration::from_secs(60));
        assert_eq!(code, Some(0), "{}", self.log());
    }

    fn get(&self, path: &str) -> (u16, String) {
        http(self.port, "GET", path, b"", None, "application/json")
    }

    fn get_json(&self, path: &str) -> (u16, Value) {
        let (st, body) = self.get(path);
        (st, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    fn post(&self, path: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
        let (st, body) = http(
            self.port,
            "POST",
            path,
            body.to_string().as_bytes(),
            token,
            "application/json",
        );
        (st, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

/// One HTTP/1.1 request; returns the status and the body (headers included after a NUL
/// when `content_type` is a form post, for the redirect checks).
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    token: Option<&str>,
    content_type: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("daemon answers HTTP");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {content_type}\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if content_type.starts_with("application/x-www-form-urlencoded") {
        return (status, format!("{headers}\0{body}"));
    }
    (status, body.to_string())
}

fn koji_body(name: &str) -> Value {
    json!({"build_id": 42, "name": name, "version": "5.2.26", "release": "1.fc41",
           "epoch": null, "owner": "someone", "instance": "primary", "new": 1, "old": 0,
           "attribute": "state"})
}

async fn wait_job(
    store: &Store,
    uuid: uuid::Uuid,
    limit: Duration,
    done: impl Fn(&Job) -> bool,
) -> Job {
    let deadline = Instant::now() + limit;
    loop {
        let j = store.job(uuid).await.unwrap().expect("the job exists");
        if done(&j) || Instant::now() > deadline {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Setup {
    data: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    db: String,
}

/// A config with this daemon block and `extra` YAML (providers, tasks, rules, bus).
fn setup(extra: &str) -> Setup {
    let data = common::reachable_tempdir();
    let port = free_port();
    let db = format!("sqlite://{}/ferrotron.db", data.path().display());
    let config = data.path().join("farm.yaml");
    std::fs::write(
        &config,
        format!(
            "daemon: {{id: d1, farm: farmtest, listen: '127.0.0.1:{port}', api_token: {TOKEN}, db: '{db}'}}\n\
             scheduler: {{heartbeat_s: 2, lease_s: 10, reap_interval_s: 5}}\n{extra}"
        ),
    )
    .unwrap();
    Setup {
        data,
        config,
        port,
        db,
    }
}

/// Every string in a JSON value that contains `needle`.
fn strings_with<'a>(v: &'a Value, needle: &str, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) if s.contains(needle) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| strings_with(x, needle, out)),
        Value::Object(o) => o.values().for_each(|x| strings_with(x, needle, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_run_link_of_a_result_message_answers_with_the_run_page() {
    let Some(amqp) = env_or_skip("FERROTRON_TEST_AMQP") else {
        return;
    };
    let u = uniq();
    let result_topic = format!("ferrotron.f{u}.result.new");
    let queue = format!("ferrotron-farm-{u}");
    let tasks = tempfile::tempdir().unwrap();
    let task = write_task(tasks.path(), "quick", "echo ran ${item}");
    let s = setup(&format!(
        "bus:\n  amqp: {{url: '{amqp}', queue: {queue}, result_topic: {result_topic}, reconnect_max_s: 2}}\n\
         providers: [{{name: sim, kind: sim, max_instances: 2, create_ms: 10}}]\n\
         tasks:\n  quick: {{path: '{}'}}\n\
         rules:\n  - {{name: koji, topics: ['f{u}.build'], item: '{{name}}', type: koji_build, arches: [x86_64], tasks: [quick]}}\n",
        task.display()
    ));
    // Our own queue on the result topic, bound before anything runs.
    let conn = lapin::Connection::connect(&amqp, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let results_q = format!("ferrotron-farm-results-{u}");
    ch.queue_declare(
        results_q.as_str().into(),
        lapin::options::QueueDeclareOptions::default(),
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        results_q.as_str().into(),
        "amq.topic".into(),
        result_topic.as_str().into(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();

    let d = Daemon::start(s.data.path(), &s.config, s.port);
    // One error shape everywhere: the webhook without a token, an unknown run.
    let (st, v) = d.post(
        "/api/v1/messages",
        &json!({"topic": format!("f{u}.build"), "body": koji_body("bash")}),
        None,
    );
    assert_eq!(st, 401, "{v}");
    assert!(v["message"].as_str().is_some(), "{v}");
    let (st, v) = d.get_json("/api/v1/runs/not-a-uuid");
    assert_eq!(st, 404);
    assert!(v["message"].as_str().unwrap().contains("not-a-uuid"), "{v}");

    let (st, v) = d.post(
        "/api/v1/messages",
        &json!({"topic": format!("f{u}.build"), "id": format!("m-{u}"), "body": koji_body("bash")}),
        Some(TOKEN),
    );
    assert_eq!(st, 202, "{v}");

    let mut got = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while got.is_none() && Instant::now() < deadline {
        match ch
            .basic_get(
                results_q.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            Some(m) => got = Some(m),
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let m = got.unwrap_or_else(|| panic!("no result message:\n{}", d.log()));
    let body: Value = serde_json::from_slice(&m.delivery.data).unwrap();
    let mut links = Vec::new();
    strings_with(&body, "/runs/", &mut links);
    assert!(!links.is_empty(), "no run link in {body}");
    let base = format!("http://127.0.0.1:{}", s.port);
    for link in links {
        let path = link
            .strip_prefix(&base)
            .unwrap_or_else(|| panic!("`{link}` is not on the daemon's address {base}"));
        let (st, page) = d.get(path);
        assert_eq!(st, 200, "{link}: {page}");
        assert!(page.contains("<h1>quick on bash</h1>"), "{page}");
        assert!(
            page.contains("id=\"rerun\""),
            "the daemon's run page offers a rerun"
        );
    }
    // The other APIs of `ferrotron web` on the same address.
    let (st, v) = d.get_json("/api/v2.0/results?item=bash");
    assert_eq!(st, 200, "{v}");
    let (st, v) = d.get_json("/api/v1/runs?task=quick");
    assert_eq!(
        (st, v["data"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{v}"
    );
    let (st, page) = d.get("/farm");
    assert_eq!(st, 200);
    assert!(page.contains("id=\"provider-sim\""), "{page}");

    d.stop();
    let _ = ch
        .queue_delete(results_q.as_str().into(), Default::default())
        .await;
    let _ = ch
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn jobs_wait_for_capacity_are_cancelled_and_rerun() {
    let tasks = tempfile::tempdir().unwrap();
    let slow = write_task(tasks.path(), "slow", "echo slow");
    let quick = write_task(tasks.path(), "quick", "echo quick ${item}");
    // `busy` holds its one instance in creation for ten minutes: the second job waits.
    let s = setup(&format!(
        "providers:\n  - {{name: busy, kind: sim, max_instances: 1, create_ms: 600000}}\n  \
         - {{name: fast, kind: sim, max_instances: 2, create_ms: 10}}\n\
         tasks:\n  slow: {{path: '{}', pool: busy}}\n  quick: {{path: '{}', pool: fast}}\n\
         rules:\n  - {{name: s, topics: [farm.slow], item: '{{name}}', type: koji_build, arches: [x86_64], tasks: [slow]}}\n  \
         - {{name: q, topics: [farm.quick], item: '{{name}}', type: koji_build, arches: [x86_64], tasks: [quick]}}\n",
        slow.display(),
        quick.display()
    ));
    let d = Daemon::start(s.data.path(), &s.config, s.port);
    let store = Store::open(&s.db).await.unwrap();
    let submit = |topic: &str, name: &str| {
        let (st, v) = d.post(
            "/api/v1/messages",
            &json!({"topic": topic, "body": koji_body(name)}),
            Some(TOKEN),
        );
        assert_eq!(st, 202, "{v}");
        let id = v["jobs"][0].as_str().unwrap().to_string();
        uuid::Uuid::parse_str(&id).unwrap()
    };
    let first = submit("farm.slow", "one");
    wait_job(&store, first, Duration::from_secs(30), |j| {
        j.state != RunState::Queued
    })
    .await;
    let second = submit("farm.slow", "two");

    // The queue says who runs and who waits, and why.
    let (st, v) = d.get_json("/api/v1/jobs");
    assert_eq!(st, 200, "{v}");
    let rows = v["data"].as_array().unwrap();
    let row = |u: uuid::Uuid| rows.iter().find(|r| r["uuid"] == u.to_string()).cloned();
    let r1 = row(first).expect("the first job is listed");
    assert_eq!(r1["state"], "provisioning", "{r1}");
    assert_eq!(
        (r1["pool"].as_str(), r1["provider"].as_str()),
        (Some("busy"), Some("busy"))
    );
    assert!(r1["waiting"].is_null(), "{r1}");
    let r2 = row(second).expect("the second job is listed");
    assert_eq!(r2["state"], "queued");
    assert_eq!(r2["waiting"]["reason"], "capacity", "{r2}");
    assert_eq!(r2["attempts"], 0);
    assert!(
        r2["waiting"]["detail"]
            .as_str()
            .unwrap()
            .contains("1 of 1 in flight"),
        "{r2}"
    );
    let busy = v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "busy")
        .cloned()
        .unwrap();
    assert_eq!(
        (busy["in_flight"].as_u64(), busy["breaker"].as_str()),
        (Some(1), Some("closed"))
    );
    let (st, page) = d.get("/jobs");
    assert_eq!(st, 200);
    assert!(page.contains(&format!("id=\"job-{second}\"")), "{page}");
    assert!(page.contains("w-capacity"), "{page}");

    // Cancel needs the token; a queued job is cancelled at once.
    let (st, v) = d.post(&format!("/api/v1/jobs/{second}/cancel"), &json!({}), None);
    assert_eq!(st, 401, "{v}");
    assert!(v["message"].is_string());
    let (st, v) = d.post(
        &format!("/api/v1/jobs/{second}/cancel"),
        &json!({}),
        Some(TOKEN),
    );
    assert_eq!((st, v["state"].as_str()), (202, Some("cancelled")), "{v}");
    assert_eq!(
        store.job(second).await.unwrap().unwrap().state,
        RunState::Cancelled
    );
    let (st, _) = d.post(
        &format!("/api/v1/jobs/{second}/cancel"),
        &json!({}),
        Some(TOKEN),
    );
    assert_eq!(st, 409);

    // A job in flight is stopped by its daemon: its run ends cancelled, its instance goes.
    let t0 = Instant::now();
    let (st, v) = d.post(
        &format!("/api/v1/jobs/{first}/cancel"),
        &json!({}),
        Some(TOKEN),
    );
    assert_eq!((st, v["stopping_here"].as_bool()), (202, Some(true)), "{v}");
    let j = wait_job(&store, first, Duration::from_secs(30), |j| {
        j.state.is_terminal()
    })
    .await;
    assert_eq!(j.state, RunState::Cancelled, "{j:?}\n{}", d.log());
    assert!(t0.elapsed() < Duration::from_secs(30));
    let run = store.run(j.current_run().unwrap()).await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Cancelled, "{run:?}");
    let sim_root = s.data.path().join("sim").join("busy");
    let left: Vec<_> = std::fs::read_dir(&sim_root)
        .map(|r| r.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "instances left on `busy`: {left:?}");

    // Rerun: the same task, item, type, arch and image, as a new job.
    let done = submit("farm.quick", "three");
    let j = wait_job(&store, done, Duration::from_secs(60), |j| {
        j.state.is_terminal()
    })
    .await;
    assert_eq!(j.state, RunState::Finished, "{j:?}\n{}", d.log());
    let run = j.current_run().unwrap();
    // The farm's run, run again on this host from its runs API: the same task files. A
    // backend `ferrotron run` has not is refused until another is named.
    let here = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}/runs/{run}", d.port);
    let rerun = |extra: &[&str]| {
        let mut args = vec!["rerun", "--format", "json", &url];
        args.extend_from_slice(extra);
        common::command(here.path(), &args).output().unwrap()
    };
    let out = rerun(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    assert!(common::stderr(&out).contains("ran on the `sim` backend"));
    let out = rerun(&["--backend", "local"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["agree"], true, "{v:#}");
    let sha = v["recorded"]["task_sha256"].as_str().unwrap();
    assert_eq!((sha.len(), &v["rerun"]["task_sha256"]), (64, &json!(sha)));
    let (st, v) = d.post(&format!("/api/v1/runs/{run}/rerun"), &json!({}), None);
    assert_eq!(st, 401, "{v}");
    let (st, v) = d.post(
        &format!("/api/v1/runs/{run}/rerun"),
        &json!({}),
        Some(TOKEN),
    );
    assert_eq!(st, 202, "{v}");
    let again = uuid::Uuid::parse_str(v["uuid"].as_str().unwrap()).unwrap();
    assert_ne!(again, done);
    let j2 = wait_job(&store, again, Duration::from_secs(60), |j| {
        j.state.is_terminal()
    })
    .await;
    assert_eq!(j2.state, RunState::Finished, "{j2:?}\n{}", d.log());
    assert_eq!(
        (&j2.task, &j2.item, &j2.item_type, &j2.arch, &j2.pool),
        (&j.task, &j.item, &j.item_type, &j.arch, &j.pool)
    );
    let r1 = store.run(run).await.unwrap().unwrap();
    let r2 = store.run(j2.current_run().unwrap()).await.unwrap().unwrap();
    assert_eq!(r1.params["image"], r2.params["image"]);
    assert_eq!(j2.image.as_deref(), r1.params["image"].as_str());
    // The run page's button is a form post: without a token the browser is asked for one.
    let (st, resp) = http(
        s.port,
        "POST",
        &format!("/api/v1/runs/{run}/rerun"),
        b"",
        None,
        "application/x-www-form-urlencoded",
    );
    assert_eq!(st, 401);
    assert!(
        resp.to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{resp}"
    );
    let (st, resp) = http(
        s.port,
        "POST",
        &format!("/api/v1/runs/{run}/rerun"),
        b"",
        Some(TOKEN),
        "application/x-www-form-urlencoded",
    );
    assert_eq!(st, 303, "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("location: /jobs"),
        "{resp}"
    );
    d.stop();
}

fn domain_exists(name: &str) -> bool {
    std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "domstate", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn cancelling_a_running_vm_job_destroys_its_vm_within_seconds() {
    if std::env::var("FERROTRON_TEST_LIBVIRT").ok().as_deref() != Some("1") {
        eprintln!("SKIPPED: FERROTRON_TEST_LIBVIRT=1 not set (provisioning/test.sh sets it)");
        return;
    }
    let tasks = common::reachable_tempdir();
    let task = write_task(tasks.path(), "nap", "echo napping; sleep 600; echo awake");
    let s = setup(&format!(
        "providers: [{{name: vm, kind: libvirt, uri: 'qemu:///system', image: tiny, max_instances: 1}}]\n\
         tasks:\n  nap: {{path: '{}'}}\n\
         rules:\n  - {{name: n, topics: [farm.nap], item: '{{name}}', type: koji_build, arches: [x86_64], tasks: [nap]}}\n",
        task.display()
    ));
    let d = Daemon::start(s.data.path(), &s.config, s.port);
    let (st, v) = d.post(
        "/api/v1/messages",
        &json!({"topic": "farm.nap", "body": koji_body("bash")}),
        Some(TOKEN),
    );
    assert_eq!(st, 202, "{v}");
    let job = uuid::Uuid::parse_str(v["jobs"][0].as_str().unwrap()).unwrap();
    let store = Store::open(&s.db).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let run = loop {
        let j = store.job(job).await.unwrap().unwrap();
        if let Some(run) = j.current_run()
            && let Ok(Some(rec)) = store.run(run).await
            && std::fs::read_to_string(&rec.log_path).is_ok_and(|l| l.contains("[work] napping"))
        {
            break run;
        }
        if Instant::now() > deadline {
            let rec = match j.current_run() {
                Some(r) => format!("{:?}", store.run(r).await),
                None => "no run".into(),
            };
            panic!("the task never started: {j:?}\n{rec}\n{}", d.log());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let domain = format!("ferrotron-{run}");
    assert!(domain_exists(&domain));
    // The run page's cancel (the runs API), as another process would record it, acts too.
    let t0 = Instant::now();
    let (st, v) = d.post(
        &format!("/api/v1/runs/{run}/cancel"),
        &json!({}),
        Some(TOKEN),
    );
    assert_eq!(st, 202, "{v}");
    while domain_exists(&domain) && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gone_after = t0.elapsed();
    assert!(
        !domain_exists(&domain),
        "the VM outlived the cancel:\n{}",
        d.log()
    );
    assert!(gone_after < Duration::from_secs(30), "took {gone_after:?}");
    eprintln!("cancel → VM gone in {gone_after:?}");
    let j = wait_job(&store, job, Duration::from_secs(30), |j| {
        j.state.is_terminal()
    })
    .await;
    assert_eq!(j.state, RunState::Cancelled, "{j:?}\n{}", d.log());
    assert_eq!(j.attempts, 1, "a cancelled job is not retried");
    let rec = store.run(run).await.unwrap().unwrap();
    assert_eq!(rec.state, RunState::Cancelled);
    let log = std::fs::read_to_string(&rec.log_path).unwrap();
    assert!(!log.contains("[work] awake"), "{log}");
    d.stop();
}
