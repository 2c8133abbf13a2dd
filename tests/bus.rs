//! What the farm tells the bus, checked with the real consumers: `resultsdb.result.new` for
//! every stored result (from runs and from `POST /api/v2.0/results`) and ferrotron's run
//! message, in fedora-messaging's wire format, loaded by fedora-messaging's own
//! `get_message`; committed through the outbox, so a daemon SIGKILLed between the commit
//! and the publish sends them after its restart.
//!
//! Services come from `provisioning/test.sh` (FERROTRON_TEST_AMQP, FERROTRON_TEST_PYTHON);
//! a test whose variable is unset says SKIPPED and passes.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrotron::store::Store;
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};

const TOKEN: &str = "bus-test-token-0123456789";

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

/// A running `ferrotron serve` with its stderr collected.
struct Serve {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Serve {
    fn start(data: &Path, config: &Path, port: u16) -> Serve {
        Serve::start_with(data, config, port, &[], &[])
    }

    /// `global` goes before `serve` (e.g. `--log-format json`).
    fn start_with(
        data: &Path,
        config: &Path,
        port: u16,
        global: &[&str],
        env: &[(&str, &Path)],
    ) -> Serve {
        let mut args = global.to_vec();
        args.extend(["serve", "--config", config.to_str().unwrap()]);
        let mut cmd = common::command(data, &args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .env("FERROTRON_LOG", "ferrotron=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ferrotron serve starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let s = Serve { child, port, log };
        if rx.recv_timeout(Duration::from_secs(120)).is_err() {
            panic!("daemon did not start:\n{}", s.log());
        }
        s
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_log(&self, what: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(what) {
            assert!(
                Instant::now() < deadline,
                "no `{what}` in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn http(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("daemon answers HTTP");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Type: application/json\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: {}\r\n\r\n",
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
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_string())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Takes every message waiting in `queue` with fedora-messaging's own loader
/// (`fedora_messaging.message.get_message` on what pika received, as its consumer does) and
/// returns what it made of each: topic, id, body, severity, headers, and whether `sent-at`
/// reads back as an aware datetime.
fn fedora_consume(python: &str, amqp: &str, queue: &str, want: usize) -> Vec<Value> {
    let script = r#"
import datetime, json, sys, time
import pika
from fedora_messaging import message
url, queue, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
out, deadline = [], time.time() + 90
while len(out) < want and time.time() < deadline:
    method, props, body = ch.basic_get(queue, auto_ack=True)
    if method is None:
        time.sleep(0.3)
        continue
    m = message.get_message(method.routing_key, props, body)
    m.validate()
    sent = datetime.datetime.fromisoformat(props.headers["sent-at"])
    out.append({"topic": m.topic, "id": m.id, "body": m.body, "severity": m.severity,
                "class": type(m).__module__ + "." + type(m).__name__,
                "priority": m.priority, "headers": props.headers,
                "sent_at_aware": sent.tzinfo is not None and sent.utcoffset().total_seconds() == 0,
                "delivery_mode": props.delivery_mode, "content_type": props.content_type})
print(json.dumps(out))
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script, amqp, queue, &want.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fedora-messaging consumer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn bind_queue(amqp: &str, queue: &str, key: &str) -> Connection {
    let conn = Connection::connect(amqp, ConnectionProperties::default())
        .await
        .expect("connect to FERROTRON_TEST_AMQP");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.into(),
        "amq.topic".into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    conn
}

async fn delete_queue(conn: &Connection, queue: &str) {
    if let Ok(ch) = conn.create_channel().await {
        let _ = ch
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
}

fn farm_config(dir: &Path, port: u16, amqp: &str, u: &str, publish_exchange: &str) -> String {
    let fixture = common::repo().join("tests/fixtures/two-results");
    format!(
        "daemon: {{id: bus1, farm: busfarm, listen: '127.0.0.1:{port}', public_url: 'http://localhost', \
         api_token: {TOKEN}, db: 'sqlite://{db}'}}\n\
         bus:\n  max_jobs_per_message: 1\n  amqp: {{url: '{amqp}', queue: ferrotron-bus-{u}, reconnect_max_s: 2, \
         publish_exchange: '{publish_exchange}', result_topic: 't{u}.ferrotron.result.new', \
         resultsdb_topic: 't{u}.resultsdb.result.new'}}\n\
         providers: [{{name: sim, kind: sim, max_instances: 2}}]\n\
         tasks:\n  two: {{path: '{fixture}'}}\n\
         rules:\n  - {{name: one, topics: ['t{u}.one'], item: '{{nvr}}', type: koji_build, arches: [x86_64], tasks: [two]}}\n\
         \x20 - {{name: many, topics: ['t{u}.many'], item: '{{nvr}}', type: koji_build, arches: [x86_64, aarch64], tasks: [two]}}\n",
        db = dir.join("ferrotron.db").display(),
        fixture = fixture.display(),
    )
}

#[tokio::test]
async fn every_result_is_announced_in_fedora_messaging_form_even_across_a_sigkill() {
    let (Some(amqp), Some(python)) = (
        env_or_skip("FERROTRON_TEST_AMQP"),
        env_or_skip("FERROTRON_TEST_PYTHON"),
    ) else {
        return;
    };
    let u = uniq();
    let data = common::reachable_tempdir();
    let port = free_port();
    let config = data.path().join("farm.yaml");
    let listen = format!("ferrotron-bus-listen-{u}");
    let conn = bind_queue(&amqp, &listen, &format!("t{u}.#")).await;

    // First life: the publish exchange does not exist, so every publish fails and the
    // messages stay in the outbox.
    std::fs::write(
        &config,
        farm_config(data.path(), port, &amqp, &u, &format!("missing-{u}")),
    )
    .unwrap();
    let mut d = Serve::start(data.path(), &config, port);
    let msg = |topic: &str, id: &str| {
        json!({"topic": format!("t{u}.{topic}"), "id": id, "body": {"nvr": "bash-5.2.26-1.fc41"}})
            .to_string()
    };
    // More jobs than bus.max_jobs_per_message: refused, nothing queued.
    let (st, body) = d.http("POST", "/api/v1/messages", msg("many", "m-many").as_bytes());
    assert_eq!(st, 422, "{body}");
    assert!(body.contains("max_jobs_per_message"), "{body}");
    let (st, body) = d.http("POST", "/api/v1/messages", msg("one", "m-one").as_bytes());
    assert_eq!(st, 202, "{body}");
    let posted = json!({"outcome": "PASSED", "testcase": {"name": "external.check"},
        "data": {"item": "bash-5.2.26-1.fc41", "type": "koji_build"}, "note": "from outside"});
    let (st, body) = d.http("POST", "/api/v2.0/results", posted.to_string().as_bytes());
    assert_eq!(st, 201, "{body}");

    let store = Store::open(&format!(
        "sqlite://{}",
        data.path().join("ferrotron.db").display()
    ))
    .await
    .unwrap();
    // Two results of the run, one POSTed, one run message.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let jobs = store.jobs(None).await.unwrap();
        let ended = jobs.len() == 1 && jobs[0].state.is_terminal();
        if ended && store.outbox_len().await.unwrap() == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jobs {jobs:?}, outbox {}:\n{}",
            store.outbox_len().await.unwrap(),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    d.wait_log("retrying in", Duration::from_secs(30));
    d.wait_log("POST /api/v1/messages 422", Duration::from_secs(5));
    d.kill(libc::SIGKILL);
    assert_eq!(store.outbox_len().await.unwrap(), 4, "nothing was sent");

    // Second life, the exchange fixed: everything committed goes out.
    std::fs::write(
        &config,
        farm_config(data.path(), port, &amqp, &u, "amq.topic"),
    )
    .unwrap();
    let mut d = Serve::start(data.path(), &config, port);
    let got = fedora_consume(&python, &amqp, &listen, 4);
    assert_eq!(got.len(), 4, "{got:?}\n{}", d.log());
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.outbox_len().await.unwrap() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(store.outbox_len().await.unwrap(), 0);

    let (results, runs): (Vec<&Value>, Vec<&Value>) = got
        .iter()
        .partition(|m| m["topic"] == format!("t{u}.resultsdb.result.new"));
    assert_eq!(results.len(), 3, "{got:?}");
    assert_eq!(runs.len(), 1, "{got:?}");
    assert_eq!(runs[0]["topic"], format!("t{u}.ferrotron.result.new"));
    assert_eq!(runs[0]["body"]["item"], "bash-5.2.26-1.fc41");
    for m in &got {
        // What fedora-messaging made of it: its base class, INFO, aware UTC sent-at.
        assert_eq!(m["class"], "fedora_messaging.message.Message", "{m}");
        assert_eq!(m["severity"], 20);
        assert_eq!(m["priority"], 0);
        assert_eq!(m["delivery_mode"], 2);
        assert_eq!(m["content_type"], "application/json");
        assert_eq!(m["sent_at_aware"], true, "{m}");
        let sent = m["headers"]["sent-at"].as_str().unwrap();
        assert!(sent.ends_with("+00:00") && !sent.contains('.'), "{sent}");
        assert_eq!(m["headers"]["fedora_messaging_schema"], "base.message");
        assert_eq!(m["headers"]["fedora_messaging_rpm_bash"], true, "{m}");
        assert!(uuid::Uuid::parse_str(m["id"].as_str().unwrap()).is_ok());
    }
    // The body is the result exactly as the API serves it (what ResultsDB publishes).
    for m in &results {
        let id = m["body"]["id"].as_i64().unwrap();
        let (st, api) = d.http("GET", &format!("/api/v2.0/results/{id}"), b"");
        assert_eq!(st, 200);
        assert_eq!(m["body"], serde_json::from_str::<Value>(&api).unwrap());
    }
    // Operator logs: one access line per request, no terminal escapes into a pipe.
    let log = d.log();
    assert!(log.contains("GET /api/v2.0/results/"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "escape sequences in a piped log:\n{log}"
    );
    let names: Vec<&str> = results
        .iter()
        .map(|m| m["body"]["testcase"]["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"external.check"), "{names:?}");
    assert!(names.contains(&"fixture.second"), "{names:?}");
    // A run's results link under daemon.public_url: the artifact, else the run's page; and
    // the page and the artifact are there.
    let run = runs[0]["body"]["run"]
        .as_str()
        .unwrap_or_else(|| panic!("no run uuid in {}", runs[0]))
        .to_string();
    let ref_url = |name: &str| {
        results
            .iter()
            .find(|m| m["body"]["testcase"]["name"] == name)
            .and_then(|m| m["body"]["ref_url"].as_str())
            .map(str::to_string)
    };
    assert_eq!(
        ref_url("fixture.second").as_deref(),
        Some(format!("http://localhost/runs/{run}/artifacts/detail.log").as_str())
    );
    assert_eq!(
        ref_url("fixture.two-results").as_deref(),
        Some(format!("http://localhost/runs/{run}").as_str())
    );
    assert_eq!(
        ref_url("external.check"),
        None,
        "a POSTed result keeps its own"
    );
    let (st, body) = d.http("GET", &format!("/runs/{run}/artifacts/detail.log"), b"");
    assert_eq!(
        (st, body.as_str()),
        (200, "detail for bash-5.2.26-1.fc41\n")
    );
    d.kill(libc::SIGTERM);
    delete_queue(&conn, &listen).await;
    delete_queue(&conn, &format!("ferrotron-bus-{u}")).await;
    let _ = conn.close(200, "bye".into()).await;
}

/// `FERROTRON_TEST_TLS_DIR` and `FERROTRON_TEST_AMQPS` (provisioning/test-tls.sh).
fn tls_or_skip() -> Option<(std::path::PathBuf, String)> {
    let dir = env_or_skip("FERROTRON_TEST_TLS_DIR")?;
    let url = env_or_skip("FERROTRON_TEST_AMQPS")?;
    Some((dir.into(), url))
}

fn tls_task_config(dir: &Path, port: u16, u: &str, amqp: &str) -> String {
    let fixture = common::repo().join("tests/fixtures/two-results");
    format!(
        "daemon: {{id: tls1, farm: tlsfarm, listen: '127.0.0.1:{port}', api_token: {TOKEN}, \
         db: 'sqlite://{db}'}}\n\
         bus:\n  amqp: {amqp}\n\
         providers: [{{name: sim, kind: sim, max_instances: 2}}]\n\
         tasks:\n  two: {{path: '{fixture}'}}\n\
         rules:\n  - {{name: one, topics: ['t{u}.tls'], item: '{{nvr}}', type: koji_build, arches: [x86_64], tasks: [two]}}\n",
        db = dir.join("ferrotron.db").display(),
        fixture = fixture.display(),
    )
}

/// `rabbitmqctl list_connections` rows: user, auth mechanism, ssl, client properties.
fn broker_connections() -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_connections",
            "user",
            "auth_mechanism",
            "ssl",
            "client_properties",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn over_tls_with_a_client_certificate_the_farm_runs_what_fedora_messaging_publishes() {
    let (Some((tls, amqps)), Some(python)) = (tls_or_skip(), env_or_skip("FERROTRON_TEST_PYTHON"))
    else {
        return;
    };
    let u = uniq();
    let data = common::reachable_tempdir();
    let port = free_port();
    // The farm reads the same fedora-messaging file the publisher uses: TLS, EXTERNAL login
    // (no password in the URL), a server-named auto-delete queue, the bindings.
    let fm = data.path().join("fedora-messaging.toml");
    std::fs::write(
        &fm,
        format!(
            "amqp_url = \"{amqps}\"\npublish_exchange = \"amq.topic\"\ntopic_prefix = \"\"\n\
             [tls]\nca_cert = \"{d}/ca.pem\"\ncertfile = \"{d}/client.pem\"\nkeyfile = \"{d}/client-key.pem\"\n\
             [client_properties]\napp = \"bus test {u}\"\n\
             [queues.00000000-0000-0000-0000-000000000000]\ndurable = false\nauto_delete = true\nexclusive = true\narguments = {{}}\n\
             [[bindings]]\nqueue = \"00000000-0000-0000-0000-000000000000\"\nexchange = \"amq.topic\"\n\
             routing_keys = [\"t{u}.tls\"]\n",
            d = tls.display()
        ),
    )
    .unwrap();
    let config = data.path().join("farm.yaml");
    std::fs::write(
        &config,
        tls_task_config(
            data.path(),
            port,
            &u,
            &format!("{{fedora_messaging_config: '{}', publish_results: false, publish_resultsdb: false}}", fm.display()),
        ),
    )
    .unwrap();
    let mut d = Serve::start(data.path(), &config, port);
    d.wait_log("consuming from amqps://", Duration::from_secs(60));
    let conns = broker_connections();
    let ours = conns
        .lines()
        .find(|l| l.contains(&format!("bus test {u}")))
        .unwrap_or_else(|| panic!("no connection of the farm:\n{conns}"));
    assert!(ours.starts_with("ferrotron-test\tEXTERNAL\ttrue"), "{ours}");
    assert!(ours.contains("ferrotron"), "{ours}");

    // fedora-messaging's own publisher, over TLS with the client certificate.
    let script = "import json, sys\n\
from fedora_messaging import api, message\n\
m = message.Message(topic=sys.argv[1], body=json.loads(sys.argv[2]))\n\
m.id = sys.argv[3]\n\
api.publish(m, timeout=30)\n";
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            script,
            &format!("t{u}.tls"),
            &json!({"nvr": "bash-5.2.26-1.fc41"}).to_string(),
            &format!("tls-{u}"),
        ])
        .env("FEDORA_MESSAGING_CONF", &fm)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fedora-messaging publish over TLS failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = Store::open(&format!(
        "sqlite://{}",
        data.path().join("ferrotron.db").display()
    ))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let job = loop {
        let jobs = store.jobs(None).await.unwrap();
        if let Some(j) = jobs.first().filter(|j| j.state.is_terminal()) {
            break j.clone();
        }
        assert!(Instant::now() < deadline, "{jobs:?}\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(job.message_id.as_deref(), Some(format!("tls-{u}").as_str()));
    assert_eq!(job.item, "bash-5.2.26-1.fc41");
    assert_eq!(job.state, ferrotron::store::RunState::Finished, "{job:?}");
    d.kill(libc::SIGTERM);
}

#[tokio::test]
async fn a_tls_connection_without_a_client_certificate_is_refused_with_a_clear_error() {
    let Some((tls, amqps)) = tls_or_skip() else {
        return;
    };
    let u = uniq();
    for (tls_block, want) in [
        // The broker insists on a certificate.
        (
            format!("{{ca_cert: '{}/ca.pem'}}", tls.display()),
            "the broker wants a client certificate: set bus.amqp.tls.certfile and keyfile",
        ),
        // The broker's certificate is not signed by the CA we trust.
        (
            format!(
                "{{ca_cert: '{0}/other-ca.pem', certfile: '{0}/client.pem', keyfile: '{0}/client-key.pem'}}",
                tls.display()
            ),
            "not signed by a trusted CA: set bus.amqp.tls.ca_cert",
        ),
    ] {
        let data = common::reachable_tempdir();
        let port = free_port();
        let config = data.path().join("farm.yaml");
        std::fs::write(
            &config,
            tls_task_config(
                data.path(),
                port,
                &u,
                &format!("{{url: '{amqps}', queue: ferrotron-refused-{u}, reconnect_max_s: 1, tls: {tls_block}}}"),
            ),
        )
        .unwrap();
        // Logs for a shipper: every line one JSON object.
        let mut d = Serve::start_with(data.path(), &config, port, &["--log-format", "json"], &[]);
        d.wait_log(want, Duration::from_secs(60));
        let log = d.log();
        assert!(!log.contains("consuming from"), "{log}");
        for line in log.lines() {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(
                v["level"].is_string() && v["fields"]["message"].is_string(),
                "{line}"
            );
        }
        d.kill(libc::SIGTERM);
    }
}

#[test]
fn serve_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let data = common::reachable_tempdir();
    let port = free_port();
    let sock_path = data.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let config = data.path().join("farm.yaml");
    let task = data.path().join("t");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(
        task.join("runtask.yml"),
        "name: t\ndesc: d\nmaintainer: m\nactions:\n  - name: a\n    shell: [\"true\"]\n",
    )
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "daemon: {{id: n1, listen: '127.0.0.1:{port}', db: 'sqlite://{}/db.sqlite'}}\n\
             providers: [{{name: sim, kind: sim}}]\ntasks: {{t: {{path: '{}'}}}}\n\
             rules: [{{name: r, topics: [a.b], item: x, type: y, tasks: [t]}}]\n",
            data.path().display(),
            task.display()
        ),
    )
    .unwrap();
    let mut d = Serve::start_with(
        data.path(),
        &config,
        port,
        &[],
        &[("NOTIFY_SOCKET", sock_path.as_path())],
    );
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    // Ready means ready: the HTTP port answers.
    let (st, _) = d.http("GET", "/healthz", b"");
    assert_eq!(st, 200, "{}", d.log());
    d.kill(libc::SIGTERM);
    let n = sock.recv(&mut buf).unwrap();
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
}

/// The shipped units' command lines are ones this ferrotron accepts (clap reads every
/// argument before it acts on `--help`, so an unknown flag fails here).
#[test]
fn systemd_units_start_commands_this_binary_accepts() {
    let dir = common::repo().join("provisioning/systemd");
    let mut seen = 0;
    for unit in ["ferrotron.service", "ferrotron-image-rebuild.service"] {
        let text = std::fs::read_to_string(dir.join(unit)).unwrap();
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{unit}: no ExecStart"));
        let mut words = exec.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/ferrotron"), "{unit}");
        let mut args: Vec<&str> = words.collect();
        args.push("--help");
        let out = std::process::Command::new(common::binary())
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{unit}: {exec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        seen += 1;
    }
    let timer = std::fs::read_to_string(dir.join("ferrotron-image-rebuild.timer")).unwrap();
    assert!(timer.contains("OnCalendar="), "{timer}");
    let serve = std::fs::read_to_string(dir.join("ferrotron.service")).unwrap();
    assert!(serve.contains("Type=notify"), "{serve}");
    assert_eq!(seen, 2);
}
