//! Drives `ferrotron serve` as a child process: start it, talk HTTP to it, signal it, read
//! its log; and the checks the daemon tests share (jobs done, domains left).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrotron::store::{Job, Store};
use serde_json::{Value, json};

pub const TOKEN: &str = "test-token-0123456789";

pub fn env_or_skip(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            eprintln!("SKIPPED: {var} not set (provisioning/test.sh sets it)");
            None
        }
    }
}

pub fn libvirt_or_skip() -> bool {
    let on = std::env::var("FERROTRON_TEST_LIBVIRT").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("SKIPPED: FERROTRON_TEST_LIBVIRT=1 not set (provisioning/test.sh sets it)");
    }
    on
}

pub fn uniq() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

// For the tests that glob-import this module; not every one of them binds a port.
#[allow(unused_imports)]
pub use super::free_port;

pub fn write_task(dir: &Path, name: &str, shell: &str) -> PathBuf {
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

/// A running `ferrotron serve`, its stderr collected.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    pub fn start(data: &Path, config: &Path, port: u16) -> Daemon {
        Daemon::start_with(data, config, port, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_with(data: &Path, config: &Path, port: u16, env: &[(&str, &str)]) -> Daemon {
        let mut child = super::command(data, &["serve", "--config", config.to_str().unwrap()])
            .envs(env.iter().copied())
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
        let d = Daemon { child, port, log };
        if rx.recv_timeout(Duration::from_secs(120)).is_err() {
            panic!("daemon did not start:\n{}", d.log());
        }
        d
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the AMQP consumer has declared and bound its queue: a message published
    /// before that is routed nowhere.
    pub fn wait_consuming(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log().contains("consuming from") {
            assert!(
                Instant::now() < deadline,
                "consumer never started:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn http(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        token: Option<&str>,
    ) -> (u16, String) {
        http(self.port, method, path, body, token)
    }

    pub fn submit(&self, envelope: &Value) -> (u16, Value) {
        let (status, body) = self.http(
            "POST",
            "/api/v1/messages",
            envelope.to_string().as_bytes(),
            Some(TOKEN),
        );
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    pub fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.http("GET", "/metrics", b"", None);
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse().ok()))
            .unwrap_or(-1.0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn http(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    token: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("daemon answers HTTP");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n",
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
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

pub fn koji_body(name: &str) -> Value {
    json!({"build_id": 42, "name": name, "version": "5.2.26", "release": "1.fc41",
           "epoch": null, "owner": "someone", "instance": "primary", "new": 1, "old": 0,
           "attribute": "state"})
}

pub async fn wait_jobs(store: &Store, limit: Duration, done: impl Fn(&[Job]) -> bool) -> Vec<Job> {
    let deadline = Instant::now() + limit;
    loop {
        let jobs = store.jobs(None).await.unwrap();
        if done(&jobs) || Instant::now() > deadline {
            return jobs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every job with the state and error of each of its runs, for failure messages.
pub async fn explain(store: &Store) -> String {
    let mut why = String::new();
    for j in store.jobs(None).await.unwrap_or_default() {
        why.push_str(&format!(
            "job {} {} {}: {:?}\n",
            j.uuid, j.task, j.state, j.error
        ));
        for run in store.job_runs(j.id).await.unwrap_or_default() {
            if let Ok(Some(r)) = store.run(run).await {
                why.push_str(&format!("  run {}: {} {:?}\n", r.uuid, r.state, r.error));
            }
        }
    }
    why
}

pub fn all_terminal(jobs: &[Job], n: usize) -> bool {
    jobs.len() == n && jobs.iter().all(|j| j.state.is_terminal())
}

pub fn domain_exists(name: &str) -> bool {
    std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "domstate", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The fedora-messaging publisher (Python, from PyPI) with a TOML config on the local broker.
pub fn fedora_publish(python: &str, dir: &Path, amqp: &str, topic: &str, id: &str, body: &Value) {
    let conf = dir.join("fedora-messaging.toml");
    std::fs::write(
        &conf,
        format!("amqp_url = \"{amqp}\"\npublish_exchange = \"amq.topic\"\ntopic_prefix = \"\"\n"),
    )
    .unwrap();
    let script = "import json, sys\n\
from fedora_messaging import api, message\n\
m = message.Message(topic=sys.argv[1], body=json.loads(sys.argv[2]))\n\
m.id = sys.argv[3]\n\
api.publish(m, timeout=30)\n";
    let out = std::process::Command::new(python)
        .args(["-c", script, topic, &body.to_string(), id])
        .env("FEDORA_MESSAGING_CONF", &conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fedora-messaging publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
