//! Drives `ferrotron serve` as a real process: messages in over HTTP and AMQP (the real
//! RabbitMQ, the real fedora-messaging publisher), jobs in SQLite or PostgreSQL, runs on the
//! simulated provider or on libvirt with the tiny image.
//!
//! Services come from `provisioning/test.sh`. A test whose service variable is unset
//! (FERROTRON_TEST_AMQP, FERROTRON_TEST_PG, FERROTRON_TEST_PYTHON, FERROTRON_TEST_LIBVIRT)
//! says SKIPPED and passes; with the variable set it must work.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ferrotron::store::{Job, RunState, Store};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};
use sqlx::{Connection as _, Executor};

use common::daemon::*;

/// Tests that boot VMs take turns: several TCG guests at once on a small machine miss their
/// boot deadline.
static VMS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The broker-restart test holds this for writing; every other test that talks to RabbitMQ
/// holds it for reading, so no one publishes into a restart.
static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A fresh PostgreSQL database under FERROTRON_TEST_PG, dropped by `drop_pg`.
async fn fresh_pg(admin: &str) -> (String, String) {
    sqlx::any::install_default_drivers();
    let name = format!("ferrotron_test_{}", uuid::Uuid::new_v4().simple());
    let mut c = sqlx::AnyConnection::connect(admin).await.unwrap();
    c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    (
        ferrotron::bench::scheduler::with_database(admin, &name),
        name,
    )
}

async fn drop_pg(admin: &str, name: &str) {
    if let Ok(mut c) = sqlx::AnyConnection::connect(admin).await {
        let _ = c
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .await;
    }
}

async fn amqp_channel(url: &str) -> (Connection, lapin::Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect to FERROTRON_TEST_AMQP");
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, ch)
}

async fn publish(ch: &lapin::Channel, topic: &str, id: &str, body: &[u8]) {
    ch.basic_publish(
        "amq.topic".into(),
        topic.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default()
            .with_message_id(id.into())
            .with_delivery_mode(2)
            .with_content_type("application/json".into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

async fn delete_queue(url: &str, queue: &str) {
    if let Ok(conn) = Connection::connect(url, ConnectionProperties::default()).await
        && let Ok(ch) = conn.create_channel().await
    {
        let _ = ch
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
        let _ = conn.close(200, "bye".into()).await;
    }
}

/// `(ready, unacknowledged)` of a queue, from rabbitmqctl.
fn queue_counts(queue: &str) -> Option<(u64, u64)> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 3 && f[0] == queue {
            Some((f[1].parse().ok()?, f[2].parse().ok()?))
        } else {
            None
        }
    })
}

struct Setup {
    data: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    db: String,
}

/// Writes a config: `extra` is YAML appended (providers, tasks, rules, bus…).
fn setup(db: Option<String>, daemon_extra: &str, extra: &str) -> Setup {
    let data = common::reachable_tempdir();
    let port = free_port();
    let db = db.unwrap_or_else(|| format!("sqlite://{}/ferrotron.db", data.path().display()));
    let config = data.path().join("farm.yaml");
    std::fs::write(
        &config,
        format!(
            "daemon: {{id: d1, farm: testfarm, listen: '127.0.0.1:{port}', api_token: {TOKEN}, db: '{db}'{daemon_extra}}}\n{extra}"
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

fn sim_rules(task_dir: &Path, topic: &str) -> String {
    format!(
        "tasks:\n  t: {{path: '{}'}}\nrules:\n  - {{name: koji, topics: ['{topic}'], when: [{{field: new, equals: 1}}], item: '{{name}}-{{version}}-{{release}}', type: koji_build, arches: [x86_64, aarch64], tasks: [t]}}\n",
        task_dir.display()
    )
}

#[tokio::test]
async fn http_messages_become_jobs_runs_and_metrics() {
    let s0 = tempfile::tempdir().unwrap();
    let task = write_task(s0.path(), "quick", "echo ran ${item} on ${arch}");
    let s = setup(
        None,
        "",
        &format!(
            "providers: [{{name: sim, kind: sim, max_instances: 4, create_ms: 10}}]\n{}",
            sim_rules(&task, "org.fedoraproject.prod.buildsys.build.state.change")
        ),
    );
    let mut d = Daemon::start(s.data.path(), &s.config, s.port);
    let (st, h) = d.http("GET", "/healthz", b"", None);
    assert_eq!(st, 200, "{h}");

    let msg = json!({"topic": "org.fedoraproject.prod.buildsys.build.state.change",
                     "id": "msg-1", "body": koji_body("bash")});
    let (st, r) = d.submit(&msg);
    assert_eq!(st, 202, "{r}");
    assert_eq!(r["jobs"].as_array().unwrap().len(), 2, "{r}");
    // The same id again: nothing new.
    let (st, r) = d.submit(&msg);
    assert_eq!((st, r["duplicate"].as_bool()), (200, Some(true)), "{r}");
    // No rule matches: acknowledged (accepted), counted, no job.
    let (st, r) = d.submit(&json!({"topic": "org.fedoraproject.prod.bodhi.update", "body": {}}));
    assert_eq!(st, 202, "{r}");
    assert_eq!(r["jobs"].as_array().unwrap().len(), 0);
    // Wrong token, malformed, oversized.
    let (st, _) = d.http(
        "POST",
        "/api/v1/messages",
        msg.to_string().as_bytes(),
        Some("nope"),
    );
    assert_eq!(st, 401);
    let (st, _) = d.http("POST", "/api/v1/messages", b"{not json", Some(TOKEN));
    assert_eq!(st, 400);
    let big = json!({"topic": "a.b", "body": "x".repeat(1_100_000)}).to_string();
    let (st, _) = d.http("POST", "/api/v1/messages", big.as_bytes(), Some(TOKEN));
    assert_eq!(st, 413);

    let store = Store::open(&s.db).await.unwrap();
    let jobs = wait_jobs(&store, Duration::from_secs(60), |j| all_terminal(j, 2)).await;
    assert_eq!(jobs.len(), 2, "{}", d.log());
    let mut arches: Vec<&str> = jobs.iter().map(|j| j.arch.as_str()).collect();
    arches.sort();
    assert_eq!(arches, ["aarch64", "x86_64"]);
    for j in &jobs {
        assert_eq!(j.state, RunState::Finished, "{j:?}\n{}", d.log());
        assert_eq!(j.item, "bash-5.2.26-1.fc41");
        assert_eq!(j.item_type, "koji_build");
        assert_eq!(j.attempts, 1);
        let run = store.run(j.current_run().unwrap()).await.unwrap().unwrap();
        assert_eq!(run.state, RunState::Finished);
        assert_eq!(run.backend, "sim");
        assert_eq!(run.owner.as_deref(), Some("testfarm/d1"));
        let log = std::fs::read_to_string(&run.log_path).unwrap();
        assert!(
            log.contains(&format!("[work] ran bash-5.2.26-1.fc41 on {}", j.arch)),
            "{log}"
        );
    }
    assert_eq!(d.metric("ferrotron_messages_duplicate_total"), 1.0);
    assert_eq!(d.metric("ferrotron_messages_unmatched_total"), 1.0);
    assert_eq!(d.metric("ferrotron_messages_rejected_total"), 2.0);
    assert_eq!(d.metric("ferrotron_queue_jobs{state=\"finished\"}"), 2.0);
    assert_eq!(d.metric("ferrotron_runs_total{outcome=\"finished\"}"), 2.0);
    assert_eq!(d.metric("ferrotron_claim_latency_seconds_count"), 2.0);
    assert!(d.metric("ferrotron_phase_duration_seconds_count{phase=\"clone\"}") >= 2.0);
    assert!(d.log().contains("rejected"), "{}", d.log());

    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(30)), Some(0), "{}", d.log());
}

#[tokio::test]
async fn sigterm_destroys_running_instances_and_requeues_their_jobs() {
    let s0 = tempfile::tempdir().unwrap();
    let task = write_task(s0.path(), "slow", "echo napping; sleep 300");
    let s = setup(
        None,
        "",
        &format!(
            "scheduler: {{shutdown_grace_s: 1, heartbeat_s: 1, lease_s: 10}}\nproviders: [{{name: sim, kind: sim, max_instances: 4}}]\n{}",
            sim_rules(&task, "t.x")
        ),
    );
    let mut d = Daemon::start(s.data.path(), &s.config, s.port);
    let (st, r) = d.submit(&json!({"topic": "t.x", "id": "m", "body": koji_body("zsh")}));
    assert_eq!(st, 202, "{r}");
    let store = Store::open(&s.db).await.unwrap();
    let jobs = wait_jobs(&store, Duration::from_secs(60), |j| {
        j.len() == 2 && j.iter().all(|j| j.state == RunState::Running)
    })
    .await;
    assert!(
        jobs.iter().all(|j| j.state == RunState::Running),
        "{jobs:?}\n{}",
        d.log()
    );
    let instances = s.data.path().join("sim/sim");
    assert_eq!(std::fs::read_dir(&instances).unwrap().count(), 2);

    let t = Instant::now();
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(60)), Some(0), "{}", d.log());
    assert!(t.elapsed() < Duration::from_secs(30));
    assert_eq!(
        std::fs::read_dir(&instances).unwrap().count(),
        0,
        "instances left"
    );
    let jobs = store.jobs(None).await.unwrap();
    for j in &jobs {
        assert_eq!(j.state, RunState::Queued, "{j:?}");
        assert!(
            j.error.as_deref().unwrap_or("").contains("shut down"),
            "{j:?}"
        );
        // The interrupted attempt does not count against the job.
        assert_eq!(j.max_attempts, 4);
        let run = store.run(j.current_run().unwrap()).await.unwrap().unwrap();
        assert_eq!(run.state, RunState::Cancelled);
    }
}

#[tokio::test]
async fn a_failing_provider_is_retried_with_backoff_then_crashed() {
    let s0 = tempfile::tempdir().unwrap();
    let task = write_task(s0.path(), "quick", "true");
    let s = setup(
        None,
        "",
        &format!(
            "scheduler: {{max_attempts: 2, backoff_base_s: 0.5, backoff_max_s: 1, breaker_failures: 100}}\n\
             providers: [{{name: sim, kind: sim, max_instances: 4, failure_rate: 1.0}}]\n{}",
            sim_rules(&task, "t.x").replace("[x86_64, aarch64]", "[x86_64]")
        ),
    );
    let _d = Daemon::start(s.data.path(), &s.config, s.port);
    let (st, _) = _d.submit(&json!({"topic": "t.x", "body": koji_body("zsh")}));
    assert_eq!(st, 202);
    let store = Store::open(&s.db).await.unwrap();
    let jobs = wait_jobs(&store, Duration::from_secs(60), |j| all_terminal(j, 1)).await;
    let j = &jobs[0];
    assert_eq!(j.state, RunState::Crashed, "{j:?}\n{}", _d.log());
    assert_eq!(j.attempts, 2);
    assert!(
        j.error.as_deref().unwrap().contains("attempt 2 of 2"),
        "{j:?}"
    );
    let runs = store.job_runs(j.id).await.unwrap();
    assert_eq!(runs.len(), 2, "one run per attempt");
    assert_ne!(runs[0], runs[1]);
    for uuid in runs {
        let run = store.run(uuid).await.unwrap().unwrap();
        assert_eq!(run.state, RunState::Crashed);
    }
}

#[tokio::test]
async fn two_daemons_on_one_postgresql_share_500_jobs_none_twice() {
    let Some(admin) = env_or_skip("FERROTRON_TEST_PG") else {
        return;
    };
    let (url, name) = fresh_pg(&admin).await;
    let s0 = tempfile::tempdir().unwrap();
    let task = write_task(s0.path(), "quick", "true");
    let rules = sim_rules(&task, "t.x").replace("[x86_64, aarch64]", "[x86_64]");
    let extra = format!(
        "scheduler: {{poll_ms: 50, claim_batch: 8}}\nproviders: [{{name: sim, kind: sim, max_instances: 8, create_ms: 5}}]\n{rules}"
    );
    let a = setup(Some(url.clone()), "", &extra);
    let b = setup(Some(url.clone()), "", &extra);
    let b_config = std::fs::read_to_string(&b.config)
        .unwrap()
        .replace("id: d1", "id: d2");
    std::fs::write(&b.config, b_config).unwrap();
    let da = Daemon::start(a.data.path(), &a.config, a.port);
    let db = Daemon::start(b.data.path(), &b.config, b.port);
    for i in 0..500 {
        let d = if i % 2 == 0 { &da } else { &db };
        let (st, r) = d.submit(
            &json!({"topic": "t.x", "id": format!("m{i}"), "body": koji_body(&format!("p{i}"))}),
        );
        assert_eq!(st, 202, "{r}");
    }
    let store = Store::open(&url).await.unwrap();
    let jobs = wait_jobs(&store, Duration::from_secs(300), |j| all_terminal(j, 500)).await;
    assert_eq!(jobs.len(), 500);
    let mut by_daemon: BTreeMap<String, usize> = BTreeMap::new();
    for j in &jobs {
        assert_eq!(
            j.state,
            RunState::Finished,
            "{j:?}\nA:\n{}\nB:\n{}",
            da.log(),
            db.log()
        );
        assert_eq!(j.attempts, 1, "{j:?}");
        *by_daemon.entry(j.claimed_by.clone().unwrap()).or_default() += 1;
    }
    // Exactly one run per job: no job ran twice.
    let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(runs, 500);
    let sims = |d: &Setup| {
        std::fs::read_dir(d.data.path().join("sim/sim"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    assert_eq!(sims(&a) + sims(&b), 0, "instances left");
    assert!(
        by_daemon.len() == 2 && by_daemon.values().all(|n| *n > 0),
        "{by_daemon:?}"
    );
    store.close().await;
    drop(da);
    drop(db);
    drop_pg(&admin, &name).await;
}

fn amqp_block(url: &str, queue: &str, extra: &str) -> String {
    format!(
        "bus:\n  max_body_bytes: 65536\n  amqp: {{url: '{url}', queue: {queue}, prefetch: 32, reconnect_max_s: 2{extra}}}\n"
    )
}

#[tokio::test]
async fn malformed_and_huge_messages_are_rejected_logged_and_acked() {
    let Some(amqp) = env_or_skip("FERROTRON_TEST_AMQP") else {
        return;
    };
    let _broker = BROKER.read().await;
    let u = uniq();
    let topic = format!("org.fedoraproject.t{u}.buildsys.build.state.change");
    let queue = format!("ferrotron-test-{u}");
    let s0 = tempfile::tempdir().unwrap();
    let task = write_task(s0.path(), "quick", "true");
    let s = setup(
        None,
        "",
        &format!(
            "{}providers: [{{name: sim, kind: sim, max_instances: 2}}]\n{}",
            amqp_block(&amqp, &queue, ", publish_results: false"),
            sim_rules(&task, &topic).replace("[x86_64, aarch64]", "[x86_64]")
        ),
    );
    let mut d = Daemon::start(s.data.path(), &s.config, s.port);
    d.wait_consuming();
    let (conn, ch) = amqp_channel(&amqp).await;
    publish(&ch, &topic, "bad-json", b"{this is not json").await;
    let huge = json!({"pad": "x".repeat(2 << 20)}).to_string();
    publish(&ch, &topic, "huge", huge.as_bytes()).await;
    publish(&ch, &topic, "bad-topic-body", b"[1, 2, 3]").await; // JSON, matches no rule
    publish(
        &ch,
        &topic,
        "good",
        koji_body("bash").to_string().as_bytes(),
    )
    .await;

    let store = Store::open(&s.db).await.unwrap();
    let jobs = wait_jobs(&store, Duration::from_secs(60), |j| all_terminal(j, 1)).await;
    assert_eq!(jobs.len(), 1, "{}", d.log());
    assert_eq!(jobs[0].message_id.as_deref(), Some("good"));
    // All four acknowledged: nothing ready, nothing unacknowledged.
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue_counts(&queue) != Some((0, 0)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(queue_counts(&queue), Some((0, 0)));
    let log = d.log();
    assert!(
        log.contains("rejected") && log.contains("not JSON"),
        "{log}"
    );
    assert!(
        log.contains("larger than the limit of 65536 bytes"),
        "{log}"
    );
    assert_eq!(d.metric("ferrotron_messages_rejected_total"), 2.0);
    assert_eq!(d.metric("ferrotron_messages_unmatched_total"), 1.0);
    let (st, _) = d.http("GET", "/healthz", b"", None);
    assert_eq!(st, 200);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(30)), Some(0), "{}", d.log());
    let _ = conn.close(200, "bye".into()).await;
    delete_queue(&amqp, &queue).await;
}

#[tokio::test]
async fn broker_restart_in_the_middle_of_1000_messages_loses_none() {
    let Some(amqp) = env_or_skip("FERROTRON_TEST_AMQP") else {
        return;
    };
    let _broker = BROKER.write().await;
    let u = uniq();
    let topic = format!("org.fedoraproject.t{u}.buildsys.build.state.change");
    let queue = format!("ferrotron-test-{u}");
    let s0 = tempfile::tempdir().unwrap();
    let task = write_task(s0.path(), "quick", "true");
    // Runs are parked (the provider takes an hour per instance): this is about intake.
    let s = setup(
        None,
        "",
        &format!(
            "{}providers: [{{name: sim, kind: sim, max_instances: 1, create_ms: 3600000}}]\n{}",
            amqp_block(&amqp, &queue, ", publish_results: false"),
            sim_rules(&task, &topic).replace("[x86_64, aarch64]", "[x86_64]")
        ),
    );
    let d = Daemon::start(s.data.path(), &s.config, s.port);
    d.wait_consuming();
    let store = Store::open(&s.db).await.unwrap();
    let body = koji_body("bash").to_string();
    {
        let (conn, ch) = amqp_channel(&amqp).await;
        for i in 0..500 {
            publish(&ch, &topic, &format!("m{i}"), body.as_bytes()).await;
        }
        let _ = conn.close(200, "bye".into()).await;
    }
    wait_jobs(&store, Duration::from_secs(120), |j| j.len() >= 100).await;
    let restart = std::process::Command::new("sh")
        .arg("-c")
        .arg("rabbitmqctl -q stop_app && rabbitmqctl -q start_app && rabbitmqctl -q await_startup")
        .status()
        .unwrap();
    assert!(restart.success(), "restarting RabbitMQ");
    let before = store.jobs(None).await.unwrap().len();
    assert!(before < 1000);
    // The second half goes to the restarted broker.
    let (conn, ch) = amqp_channel(&amqp).await;
    for i in 500..1000 {
        publish(&ch, &topic, &format!("m{i}"), body.as_bytes()).await;
    }
    let _ = conn.close(200, "bye".into()).await;
    let jobs = wait_jobs(&store, Duration::from_secs(300), |j| j.len() >= 1000).await;
    // A few more seconds: anything redelivered twice would show now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let jobs2 = store.jobs(None).await.unwrap();
    assert_eq!(jobs.len(), 1000, "{}", d.log());
    assert_eq!(jobs2.len(), 1000);
    let ids: HashSet<&str> = jobs2
        .iter()
        .filter_map(|j| j.message_id.as_deref())
        .collect();
    assert_eq!(ids.len(), 1000);
    assert!(
        d.metric("ferrotron_bus_reconnects_total") >= 1.0,
        "{}",
        d.log()
    );
    drop(d);
    delete_queue(&amqp, &queue).await;
}

#[tokio::test]
async fn a_duplicate_fedora_messaging_id_creates_nothing_new() {
    let (Some(amqp), Some(python)) = (
        env_or_skip("FERROTRON_TEST_AMQP"),
        env_or_skip("FERROTRON_TEST_PYTHON"),
    ) else {
        return;
    };
    let _broker = BROKER.read().await;
    let u = uniq();
    let topic = format!("org.fedoraproject.t{u}.buildsys.build.state.change");
    let queue = format!("ferrotron-test-{u}");
    let s0 = tempfile::tempdir().unwrap();
    let task = write_task(s0.path(), "quick", "true");
    let s = setup(
        None,
        "",
        &format!(
            "{}providers: [{{name: sim, kind: sim, max_instances: 2}}]\n{}",
            amqp_block(&amqp, &queue, ", publish_results: false"),
            sim_rules(&task, &topic)
        ),
    );
    let d = Daemon::start(s.data.path(), &s.config, s.port);
    d.wait_consuming();
    let id = format!("dup-{u}");
    fedora_publish(&python, s0.path(), &amqp, &topic, &id, &koji_body("bash"));
    let store = Store::open(&s.db).await.unwrap();
    let jobs = wait_jobs(&store, Duration::from_secs(60), |j| all_terminal(j, 2)).await;
    assert_eq!(jobs.len(), 2, "{}", d.log());
    fedora_publish(&python, s0.path(), &amqp, &topic, &id, &koji_body("bash"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.metric("ferrotron_messages_duplicate_total") < 1.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        d.metric("ferrotron_messages_duplicate_total"),
        1.0,
        "{}",
        d.log()
    );
    assert_eq!(store.jobs(None).await.unwrap().len(), 2);
    drop(d);
    delete_queue(&amqp, &queue).await;
}

fn vm_farm(extra_scheduler: &str, tasks_rules: &str, bus: &str) -> Setup {
    setup(
        None,
        "",
        &format!(
            "{bus}scheduler: {{heartbeat_s: 2, lease_s: 10, reap_interval_s: 5{extra_scheduler}}}\n\
             providers: [{{name: vm, kind: libvirt, uri: 'qemu:///system', image: tiny, max_instances: 2}}]\n{tasks_rules}"
        ),
    )
}

#[tokio::test]
async fn a_fedora_messaging_message_runs_its_jobs_on_the_tiny_vm_and_publishes_results() {
    let (Some(amqp), Some(python)) = (
        env_or_skip("FERROTRON_TEST_AMQP"),
        env_or_skip("FERROTRON_TEST_PYTHON"),
    ) else {
        return;
    };
    if !libvirt_or_skip() {
        return;
    }
    let _vms = VMS.lock().await;
    let _broker = BROKER.read().await;
    let u = uniq();
    let topic = format!("org.fedoraproject.t{u}.buildsys.build.state.change");
    let result_topic = format!("ferrotron.t{u}.result.new");
    let queue = format!("ferrotron-test-{u}");
    let repo = common::repo();
    let s = vm_farm(
        "",
        &format!(
            "tasks:\n  sha256-manifest: {{path: '{0}/tasks/sha256-manifest'}}\n  shell-lint: {{path: '{0}/tasks/shell-lint'}}\n\
             rules:\n  - {{name: koji, topics: ['{topic}'], when: [{{field: new, equals: 1}}, {{field: instance, equals: primary}}], \
             item: '{{name}}-{{version}}-{{release}}', type: koji_build, arches: [x86_64], tasks: [sha256-manifest, shell-lint]}}\n",
            repo.display()
        ),
        &amqp_block(&amqp, &queue, &format!(", result_topic: {result_topic}")),
    );
    // A queue of our own bound to the result topic, declared before anything runs.
    let (conn, ch) = amqp_channel(&amqp).await;
    let results_q = format!("ferrotron-test-results-{u}");
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

    let mut d = Daemon::start(s.data.path(), &s.config, s.port);
    d.wait_consuming();
    let id = format!("koji-{u}");
    let work = tempfile::tempdir().unwrap();
    fedora_publish(&python, work.path(), &amqp, &topic, &id, &koji_body("bash"));
    // Not for us: a build that is not complete.
    let mut building = koji_body("bash");
    building["new"] = json!(0);
    fedora_publish(
        &python,
        work.path(),
        &amqp,
        &topic,
        &format!("other-{u}"),
        &building,
    );

    let store = Store::open(&s.db).await.unwrap();
    let jobs = wait_jobs(&store, Duration::from_secs(600), |j| all_terminal(j, 2)).await;
    assert_eq!(jobs.len(), 2, "{}", d.log());
    let tasks: HashSet<&str> = jobs.iter().map(|j| j.task.as_str()).collect();
    assert_eq!(tasks, HashSet::from(["sha256-manifest", "shell-lint"]));
    for j in &jobs {
        assert_eq!(j.message_id.as_deref(), Some(id.as_str()));
        assert_eq!(
            (j.item.as_str(), j.item_type.as_str(), j.arch.as_str()),
            ("bash-5.2.26-1.fc41", "koji_build", "x86_64")
        );
        assert_eq!(
            j.state,
            RunState::Finished,
            "{}\n{}",
            explain(&store).await,
            d.log()
        );
        let run = store.run(j.current_run().unwrap()).await.unwrap().unwrap();
        assert_eq!(run.backend, "libvirt");
        assert!(run.phases.iter().any(|p| p.name == "boot"), "{run:?}");
        assert!(!store.run_results(run.uuid).await.unwrap().is_empty());
        assert!(!domain_exists(&format!("ferrotron-{}", run.uuid)));
    }
    // One result message per run (a retried attempt has its own), fedora-messaging form.
    let runs: u32 = jobs.iter().map(|j| j.attempts).sum();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < runs as usize && Instant::now() < deadline {
        match ch
            .basic_get(
                results_q.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            Some(m) => got.push(m),
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert_eq!(got.len(), runs as usize, "{}", d.log());
    let mut finals = 0;
    for m in &got {
        let body: Value = serde_json::from_slice(&m.delivery.data).unwrap();
        assert_eq!(body["item"], "bash-5.2.26-1.fc41");
        assert_eq!(body["type"], "koji_build");
        if body["final_attempt"] == json!(true) {
            finals += 1;
            assert_eq!(body["state"], "finished", "{body}");
        }
        assert!(
            body["url"]
                .as_str()
                .unwrap()
                .ends_with(body["run"].as_str().unwrap())
        );
        let props = &m.delivery.properties;
        assert!(props.message_id().is_some());
        assert_eq!(
            props.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        let headers = props.headers().as_ref().unwrap().inner();
        for h in ["fedora_messaging_schema", "sent-at", "priority"] {
            assert!(headers.contains_key(h), "header {h} missing: {headers:?}");
        }
    }
    assert_eq!(finals, 2);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(60)), Some(0), "{}", d.log());
    let _ = ch
        .queue_delete(results_q.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "bye".into()).await;
    delete_queue(&amqp, &queue).await;
}

#[tokio::test]
async fn sigkill_mid_run_then_restart_leaves_no_leak_and_reruns_the_job() {
    if !libvirt_or_skip() {
        return;
    }
    let _vms = VMS.lock().await;
    let s0 = common::reachable_tempdir();
    let task = write_task(s0.path(), "nap", "echo napping; sleep 20; echo awake");
    let s = vm_farm(
        "",
        &sim_rules(&task, "t.x").replace("[x86_64, aarch64]", "[x86_64]"),
        "",
    );
    let mut d = Daemon::start(s.data.path(), &s.config, s.port);
    let (st, r) = d.submit(&json!({"topic": "t.x", "body": koji_body("bash")}));
    assert_eq!(st, 202, "{r}");
    let store = Store::open(&s.db).await.unwrap();
    // Wait until the task runs inside the VM.
    let deadline = Instant::now() + Duration::from_secs(300);
    let first_run = loop {
        let jobs = store.jobs(None).await.unwrap();
        if let Some(run) = jobs.first().and_then(Job::current_run)
            && let Ok(Some(rec)) = store.run(run).await
            && std::fs::read_to_string(&rec.log_path).is_ok_and(|l| l.contains("[work] napping"))
        {
            break run;
        }
        if Instant::now() > deadline {
            panic!("task never started:\n{}{}", explain(&store).await, d.log());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let domain = format!("ferrotron-{first_run}");
    assert!(domain_exists(&domain));
    d.signal(libc::SIGKILL);
    d.wait(Duration::from_secs(10));
    assert!(domain_exists(&domain), "the VM outlives a SIGKILLed daemon");

    // Same config, same daemon id: it recovers its previous life's claim and reaps.
    let mut d = Daemon::start(s.data.path(), &s.config, s.port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while domain_exists(&domain) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        !domain_exists(&domain),
        "leaked VM not reaped:\n{}",
        d.log()
    );
    let old = store.run(first_run).await.unwrap().unwrap();
    assert_eq!(old.state, RunState::Crashed, "{old:?}");
    let jobs = wait_jobs(&store, Duration::from_secs(300), |j| all_terminal(j, 1)).await;
    let j = &jobs[0];
    assert_eq!(j.state, RunState::Finished, "{j:?}\n{}", d.log());
    assert_eq!(j.attempts, 2);
    let second = j.current_run().unwrap();
    assert_ne!(second, first_run);
    assert!(!domain_exists(&format!("ferrotron-{second}")));
    let log = std::fs::read_to_string(store.run(second).await.unwrap().unwrap().log_path).unwrap();
    assert!(log.contains("[work] awake"), "{log}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(60)), Some(0), "{}", d.log());
}

// --- the store fails, daemons disagree ----------------------------------------------------

/// A fresh PostgreSQL database reached through a proxy the test controls: (direct URL,
/// database name, the daemon's URL through the proxy, the proxy).
async fn pg_behind_proxy(admin: &str) -> (String, String, String, common::proxy::Proxy) {
    let (url, name) = fresh_pg(admin).await;
    let (target, _) = common::proxy::reroute_url(&url, "127.0.0.1:9".parse().unwrap());
    let proxy = common::proxy::Proxy::start(target);
    let (_, via) = common::proxy::reroute_url(&url, proxy.addr);
    (url, name, via, proxy)
}

#[tokio::test]
async fn a_store_outage_while_runs_finish_ends_every_job_exactly_once() {
    let Some(admin) = env_or_skip("FERROTRON_TEST_PG") else {
        return;
    };
    let (url, name, via, proxy) = pg_behind_proxy(&admin).await;
    let s0 = tempfile::tempdir().unwrap();
    let task = write_task(s0.path(), "nap", "echo napping; sleep 6; echo awake");
    let s = setup(
        Some(via),
        "",
        &format!(
            "scheduler: {{heartbeat_s: 1, lease_s: 60, poll_ms: 100}}\n\
             providers: [{{name: sim, kind: sim, max_instances: 8, create_ms: 10}}]\n{}",
            sim_rules(&task, "t.x")
        ),
    );
    let mut d = Daemon::start(s.data.path(), &s.config, s.port);
    for i in 0..3 {
        let (st, r) = d.submit(
            &json!({"topic": "t.x", "id": format!("m{i}"), "body": koji_body(&format!("p{i}"))}),
        );
        assert_eq!(st, 202, "{r}");
    }
    let store = Store::open(&url).await.unwrap();
    let jobs = wait_jobs(&store, Duration::from_secs(60), |j| {
        j.len() == 6 && j.iter().all(|j| j.state == RunState::Running)
    })
    .await;
    assert!(
        jobs.iter().all(|j| j.state == RunState::Running),
        "{}\n{}",
        explain(&store).await,
        d.log()
    );

    // The database goes away for 15 s; every task finishes meanwhile.
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(15)).await;
    for j in store.jobs(None).await.unwrap() {
        let run = store.run(j.current_run().unwrap()).await.unwrap().unwrap();
        let log = std::fs::read_to_string(&run.log_path).unwrap();
        assert!(log.contains("[work] awake"), "task did not finish: {log}");
        assert!(
            !run.state.is_terminal() && !j.state.is_terminal(),
            "nothing can be recorded while the store is away: {j:?} {run:?}"
        );
    }
    proxy.restore();

    let jobs = wait_jobs(&store, Duration::from_secs(120), |j| all_terminal(j, 6)).await;
    for j in &jobs {
        assert_eq!(
            (j.state, j.attempts),
            (RunState::Finished, 1),
            "a finished job ends once, not rerun: {j:?}\n{}\n{}",
            explain(&store).await,
            d.log()
        );
        let run = store.run(j.current_run().unwrap()).await.unwrap().unwrap();
        assert_eq!(run.state, RunState::Finished, "{run:?}");
        assert!(run.phases.iter().any(|p| p.name == "destroy"), "{run:?}");
    }
    let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(runs, 6, "one run per job");
    assert!(d.log().contains("trying again"), "{}", d.log());
    assert_eq!(
        std::fs::read_dir(s.data.path().join("sim/sim"))
            .unwrap()
            .count(),
        0,
        "instances left"
    );
    // Healthy afterwards: a new message runs.
    let (st, r) = d.submit(&json!({"topic": "t.x", "id": "after", "body": koji_body("q")}));
    assert_eq!(st, 202, "{r}");
    let jobs = wait_jobs(&store, Duration::from_secs(60), |j| all_terminal(j, 8)).await;
    assert!(
        jobs.iter().all(|j| j.state == RunState::Finished),
        "{}",
        explain(&store).await
    );
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(60)), Some(0), "{}", d.log());
    store.close().await;
    drop_pg(&admin, &name).await;
}

#[tokio::test]
async fn sigterm_while_the_store_is_down_still_stops_the_daemon() {
    let Some(admin) = env_or_skip("FERROTRON_TEST_PG") else {
        return;
    };
    let (url, name, via, proxy) = pg_behind_proxy(&admin).await;
    let s0 = tempfile::tempdir().unwrap();
    let task = write_task(s0.path(), "slow", "echo napping; sleep 300");
    let s = setup(
        Some(via),
        "",
        &format!(
            "scheduler: {{heartbeat_s: 1, lease_s: 30, shutdown_grace_s: 1, final_write_grace_s: 5}}\n\
             providers: [{{name: sim, kind: sim, max_instances: 4, create_ms: 10}}]\n{}",
            sim_rules(&task, "t.x").replace("[x86_64, aarch64]", "[x86_64]")
        ),
    );
    let mut d = Daemon::start(s.data.path(), &s.config, s.port);
    let (st, r) = d.submit(&json!({"topic": "t.x", "id": "m", "body": koji_body("zsh")}));
    assert_eq!(st, 202, "{r}");
    let store = Store::open(&url).await.unwrap();
    let jobs = wait_jobs(&store, Duration::from_secs(60), |j| {
        j.len() == 1 && j[0].state == RunState::Running
    })
    .await;
    assert_eq!(jobs[0].state, RunState::Running, "{}", d.log());

    proxy.cut();
    let t = Instant::now();
    d.signal(libc::SIGTERM);
    let code = d.wait(Duration::from_secs(150));
    let took = t.elapsed();
    eprintln!("stopped {took:?} after SIGTERM with the store down");
    assert_eq!(code, Some(0), "did not stop:\n{}", d.log());
    // Grace 1 s, the instance destroyed, then at most final_write_grace_s (5 s) of tries of
    // at most 5 s each, after a first try bounded by the pool's 30 s acquire timeout.
    assert!(took < Duration::from_secs(90), "{took:?}\n{}", d.log());
    assert!(d.log().contains("left to its lease"), "{}", d.log());
    assert_eq!(
        std::fs::read_dir(s.data.path().join("sim/sim"))
            .unwrap()
            .count(),
        0,
        "instance left"
    );

    // The store comes back; the same daemon id starts again (its previous process is gone)
    // and recovers the claim its previous life could not end.
    proxy.restore();
    let mut d = Daemon::start(s.data.path(), &s.config, s.port);
    let jobs = wait_jobs(&store, Duration::from_secs(60), |j| {
        j[0].attempts == 2 && j[0].state == RunState::Running
    })
    .await;
    assert_eq!(
        (jobs[0].attempts, jobs[0].state),
        (2, RunState::Running),
        "{}\n{}",
        explain(&store).await,
        d.log()
    );
    let first = store
        .run(run_of(&store, &jobs[0], 1).await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.state, RunState::Crashed, "{first:?}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(60)), Some(0), "{}", d.log());
    store.close().await;
    drop_pg(&admin, &name).await;
}

async fn run_of(store: &Store, job: &Job, attempt: usize) -> uuid::Uuid {
    store.job_runs(job.id).await.unwrap()[attempt - 1]
}

#[tokio::test]
async fn jobs_of_a_task_a_daemon_does_not_know_are_left_to_one_that_does() {
    let Some(admin) = env_or_skip("FERROTRON_TEST_PG") else {
        return;
    };
    let (url, name) = fresh_pg(&admin).await;
    let s0 = tempfile::tempdir().unwrap();
    let farm = |task: &str, topic: &str| {
        let dir = write_task(s0.path(), task, "echo ran");
        format!(
            "scheduler: {{poll_ms: 50}}\nproviders: [{{name: sim, kind: sim, max_instances: 4, create_ms: 200}}]\n\
             tasks:\n  {task}: {{path: '{}'}}\n\
             rules:\n  - {{name: r, topics: ['{topic}'], item: '{{name}}', type: koji_build, arches: [x86_64], tasks: [{task}]}}\n",
            dir.display()
        )
    };
    let a = setup(Some(url.clone()), "", &farm("ta", "t.a"));
    let b = setup(Some(url.clone()), "", &farm("tb", "t.b"));
    let b_config = std::fs::read_to_string(&b.config)
        .unwrap()
        .replace("id: d1", "id: d2");
    std::fs::write(&b.config, b_config).unwrap();
    let da = Daemon::start(a.data.path(), &a.config, a.port);
    let db = Daemon::start(b.data.path(), &b.config, b.port);
    // Both daemons claim from the same pool; each message's jobs go in through the daemon
    // whose rules know its topic.
    for i in 0..10 {
        let (st, r) = db.submit(&json!({"topic": "t.b", "body": {"name": format!("b{i}")}}));
        assert_eq!(st, 202, "{r}");
        let (st, r) = da.submit(&json!({"topic": "t.a", "body": {"name": format!("a{i}")}}));
        assert_eq!(st, 202, "{r}");
    }
    let store = Store::open(&url).await.unwrap();
    let jobs = wait_jobs(&store, Duration::from_secs(120), |j| all_terminal(j, 20)).await;
    for j in &jobs {
        let want = if j.task == "ta" { "d1" } else { "d2" };
        assert_eq!(
            (j.state, j.attempts, j.claimed_by.as_deref()),
            (RunState::Finished, 1, Some(want)),
            "{j:?}\nA:\n{}\nB:\n{}",
            da.log(),
            db.log()
        );
    }
    store.close().await;
    drop(da);
    drop(db);
    drop_pg(&admin, &name).await;
}

#[tokio::test]
async fn a_second_live_daemon_with_the_same_id_refuses_to_start() {
    let s0 = tempfile::tempdir().unwrap();
    let task = write_task(s0.path(), "quick", "true");
    let s = setup(
        None,
        "",
        &format!(
            "providers: [{{name: sim, kind: sim, max_instances: 2, create_ms: 10}}]\n{}",
            sim_rules(&task, "t.x")
        ),
    );
    let mut first = Daemon::start(s.data.path(), &s.config, s.port);
    // The same id (and store) on another port.
    let port2 = free_port();
    let config2 = s.data.path().join("farm2.yaml");
    std::fs::write(
        &config2,
        std::fs::read_to_string(&s.config)
            .unwrap()
            .replace(&format!(":{}'", s.port), &format!(":{port2}'")),
    )
    .unwrap();
    let mut second = common::command(
        s.data.path(),
        &["serve", "--config", config2.to_str().unwrap()],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = second.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second daemon with the same id kept running");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    second
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("daemon id `d1` is in use by another live daemon")
            && err.contains(&format!("pid {}", first.child.id()))
            && err.contains("farm2.yaml"),
        "{err}"
    );
    // The first one is unharmed.
    assert_eq!(first.http("GET", "/healthz", b"", None).0, 200);
    // Once it is dead (no clean release), the id can be taken at once on this host.
    first.signal(libc::SIGKILL);
    first.wait(Duration::from_secs(10));
    let mut again = Daemon::start(s.data.path(), &config2, port2);
    assert_eq!(again.http("GET", "/healthz", b"", None).0, 200);
    again.signal(libc::SIGTERM);
    assert_eq!(
        again.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        again.log()
    );
}

/// PostgreSQL over TLS (FERROTRON_TEST_PG_TLS: `sslmode=verify-full` with the test CA, set
/// by provisioning/test-tls.sh): a daemon on it runs jobs with every connection encrypted,
/// and a daemon that does not trust the server's certificate refuses to start, saying so.
#[tokio::test]
async fn a_daemon_on_postgresql_over_tls_verifies_the_server() {
    let Some(admin) = env_or_skip("FERROTRON_TEST_PG_TLS") else {
        return;
    };
    let (url, name) = fresh_pg(&admin).await;
    let s0 = tempfile::tempdir().unwrap();
    let task = write_task(s0.path(), "quick", "echo over tls");
    let s = setup(
        Some(url.clone()),
        "",
        &format!(
            "providers: [{{name: sim, kind: sim, max_instances: 2, create_ms: 10}}]\n{}",
            sim_rules(&task, "t.x").replace("[x86_64, aarch64]", "[x86_64]")
        ),
    );
    let mut d = Daemon::start(s.data.path(), &s.config, s.port);
    let (st, r) = d.submit(&json!({"topic": "t.x", "body": koji_body("bash")}));
    assert_eq!(st, 202, "{r}");
    let store = Store::open(&url).await.unwrap();
    let jobs = wait_jobs(&store, Duration::from_secs(60), |j| all_terminal(j, 1)).await;
    assert_eq!(jobs[0].state, RunState::Finished, "{}", d.log());

    // The server's own view of the daemon's connections (and the test's): all encrypted.
    let mut c = sqlx::AnyConnection::connect(&admin).await.unwrap();
    let (tls, clear): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = $1",
    )
    .bind(&name)
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert!(tls >= 1 && clear == 0, "tls {tls}, clear {clear}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(30)), Some(0), "{}", d.log());

    // A CA that did not sign the server's certificate: no connection, a clear refusal.
    let config2 = s.data.path().join("untrusting.yaml");
    std::fs::write(
        &config2,
        std::fs::read_to_string(&s.config)
            .unwrap()
            .replace("/ca.pem", "/other-ca.pem"),
    )
    .unwrap();
    let out = common::command(
        s.data.path(),
        &["serve", "--config", config2.to_str().unwrap()],
    )
    .stdout(Stdio::null())
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("connecting to postgres://postgres:***@localhost")
            && err.contains("UnknownIssuer")
            && err.contains("sslrootcert=FILE")
            && !err.contains(":postgres@"),
        "{err}"
    );
    drop(store);
    drop_pg(&admin, &name).await;
}

/// A hold (Zuul's autohold) end to end on the simulated provider: made over the API, taken
/// by the next failing run of its task, whose instance then outlives reaper rounds and whose
/// page shows the login; a second failing run is not kept; released, the instance is
/// reaped. Bad requests name their field.
#[tokio::test]
async fn a_hold_keeps_the_next_failing_run_until_released() {
    let s0 = tempfile::tempdir().unwrap();
    let task = write_task(s0.path(), "broken", "echo broken; exit 3");
    let s = setup(
        None,
        "",
        &format!(
            "scheduler: {{heartbeat_s: 1, reap_interval_s: 1}}\n\
             providers: [{{name: sim, kind: sim, max_instances: 2, create_ms: 10}}]\n{}",
            sim_rules(&task, "t.x").replace("[x86_64, aarch64]", "[x86_64]")
        ),
    );
    let d = Daemon::start(s.data.path(), &s.config, s.port);
    let post = |path: &str, body: Value, token: Option<&str>| {
        let (st, b) = d.http("POST", path, body.to_string().as_bytes(), token);
        (st, serde_json::from_str::<Value>(&b).unwrap_or(Value::Null))
    };
    let (st, _) = post("/api/v1/holds", json!({"task": "t", "hours": 2}), None);
    assert_eq!(st, 401);
    let (st, e) = post(
        "/api/v1/holds",
        json!({"task": "nope", "hours": 2}),
        Some(TOKEN),
    );
    assert_eq!(st, 400, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("task `nope`"),
        "{e}"
    );
    let (st, e) = post(
        "/api/v1/holds",
        json!({"task": "t", "hours": -1}),
        Some(TOKEN),
    );
    assert!(
        st == 400 && e["message"].as_str().unwrap().starts_with("hours:"),
        "{e}"
    );
    let (st, h) = post(
        "/api/v1/holds",
        json!({"task": "t", "hours": 2, "reason": "see why it breaks"}),
        Some(TOKEN),
    );
    assert_eq!((st, h["status"].as_str()), (201, Some("pending")), "{h}");
    let id = h["id"].as_i64().unwrap();
    // The scheduler learns of pending holds at its heartbeat (1 s here).
    std::thread::sleep(Duration::from_millis(2500));

    let store = Store::open(&s.db).await.unwrap();
    let (st, r) = d.submit(&json!({"topic": "t.x", "body": koji_body("bash")}));
    assert_eq!(st, 202, "{r}");
    let jobs = wait_jobs(&store, Duration::from_secs(60), |j| all_terminal(j, 1)).await;
    assert_eq!(jobs[0].state, RunState::Failed, "{}", d.log());
    let run = jobs[0].current_run().unwrap();
    let (_, list) = d.http("GET", "/api/v1/holds", b"", None);
    let list: Value = serde_json::from_str(&list).unwrap();
    let held = &list["data"][0];
    assert_eq!(held["status"], "active", "{list}\n{}", d.log());
    assert_eq!(held["run_uuid"], run.to_string());
    let login = held["login"].as_str().unwrap().to_string();
    let dir = PathBuf::from(login.strip_prefix("its files are in ").expect(&login));
    // Several reaper rounds later it is still there.
    std::thread::sleep(Duration::from_secs(3));
    assert!(dir.is_dir(), "{} was reaped\n{}", dir.display(), d.log());
    let (st, page) = d.http("GET", &format!("/runs/{run}"), b"", None);
    assert_eq!(st, 200);
    assert!(
        page.contains("id=\"hold-login\"")
            && page.contains(&format!("/api/v1/holds/{id}/release"))
            && page.contains("see why it breaks"),
        "{page}"
    );

    // The hold is taken: the next failing run is destroyed as usual.
    let (st, r) = d.submit(&json!({"topic": "t.x", "body": koji_body("zsh")}));
    assert_eq!(st, 202, "{r}");
    let jobs = wait_jobs(&store, Duration::from_secs(60), |j| all_terminal(j, 2)).await;
    let second = jobs.iter().find(|j| j.item.starts_with("zsh")).unwrap();
    assert_eq!(second.state, RunState::Failed);
    let sim_root = dir.parent().unwrap();
    let left: Vec<_> = std::fs::read_dir(sim_root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(left, std::slice::from_ref(&dir), "{}", d.log());

    // Released: the reaper takes it within a round or two.
    let (st, r) = post(
        &format!("/api/v1/holds/{id}/release"),
        json!({}),
        Some(TOKEN),
    );
    assert_eq!((st, r["status"].as_str()), (200, Some("released")), "{r}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !dir.exists(),
        "released hold's instance not reaped\n{}",
        d.log()
    );
    let (st, _) = post("/api/v1/holds/999/release", json!({}), Some(TOKEN));
    assert_eq!(st, 404);
}

/// `tasks.NAME.hold_failed_h`: a hold made at start (once: a restart does not add a second),
/// and a value that is not a duration refused naming the key.
#[tokio::test]
async fn a_hold_from_the_config_is_made_once_and_checked() {
    let s0 = tempfile::tempdir().unwrap();
    let task = write_task(s0.path(), "broken", "exit 3");
    let tasks = format!(
        "tasks:\n  t: {{path: '{}', hold_failed_h: 4}}\n",
        task.display()
    );
    let s = setup(
        None,
        "",
        &format!("providers: [{{name: sim, kind: sim, max_instances: 1, create_ms: 10}}]\n{tasks}"),
    );
    for _ in 0..2 {
        let mut d = Daemon::start(s.data.path(), &s.config, s.port);
        let (_, list) = d.http("GET", "/api/v1/holds", b"", None);
        let list: Value = serde_json::from_str(&list).unwrap();
        let holds = list["data"].as_array().unwrap();
        assert_eq!(holds.len(), 1, "{list}");
        assert_eq!(
            (holds[0]["task"].as_str(), holds[0]["hold_s"].as_u64()),
            (Some("t"), Some(4 * 3600))
        );
        assert_eq!(holds[0]["status"], "pending");
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait(Duration::from_secs(30)), Some(0), "{}", d.log());
    }
    let bad = s.data.path().join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&s.config)
            .unwrap()
            .replace("hold_failed_h: 4", "hold_failed_h: 0"),
    )
    .unwrap();
    let out = common::command(s.data.path(), &["serve", "--config", bad.to_str().unwrap()])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bad.yaml: tasks.t.hold_failed_h: hours: `0`"),
        "{err}"
    );
}
