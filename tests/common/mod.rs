//! Shared by the integration tests: drive the real binary, read its JSON report.
#![allow(dead_code)] // each test binary uses a different subset

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod daemon;
pub mod proxy;
pub mod sshd;

use serde_json::Value;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary under test: FERROTRON_TEST_BIN when set (a copy that other builds sharing the
/// target directory cannot replace mid-run), else the one cargo built.
pub fn binary() -> PathBuf {
    std::env::var_os("FERROTRON_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ferrotron")))
}

pub fn command(data: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(binary());
    c.args(args)
        .env("FERROTRON_DATA_DIR", data)
        .env_remove("FERROTRON_DB")
        .current_dir(repo());
    if let Some(images) = std::env::var_os("FERROTRON_TEST_IMAGES") {
        c.env("FERROTRON_IMAGES", images);
    }
    c
}

pub fn ferrotron(data: &Path, args: &[&str]) -> Output {
    command(data, args).output().expect("ferrotron runs")
}

pub fn parse_report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `ferrotron run --format json ARGS…`
pub fn json_run(data: &Path, args: &[&str]) -> (Output, Value) {
    let mut all = vec!["run", "--format", "json"];
    all.extend_from_slice(args);
    let out = ferrotron(data, &all);
    let v = parse_report(&out);
    (out, v)
}

/// A fresh directory that libvirt's qemu user can reach (tempdirs are 0700 under /tmp).
pub fn reachable_tempdir() -> tempfile::TempDir {
    std::fs::create_dir_all("/var/tmp/ferrotron-tests").unwrap();
    let d = tempfile::Builder::new()
        .prefix("t-")
        .tempdir_in("/var/tmp/ferrotron-tests")
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// `ferrotron web --listen 127.0.0.1:0 EXTRA…` over `data`, killed on drop; `url` is the
/// address it said it listens on.
pub struct WebProcess {
    child: std::process::Child,
    pub url: String,
}

impl WebProcess {
    pub fn start(data: &Path, extra: &[&str]) -> WebProcess {
        use std::io::BufRead as _;
        let mut args = vec!["web", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = command(data, &args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("ferrotron web starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("ferrotron web says where it listens");
        let url = line.split_whitespace().last().unwrap_or("").to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{line}");
        WebProcess { child, url }
    }
}

impl Drop for WebProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The outcomes of a run report's results, in order.
pub fn outcomes(report: &Value) -> Vec<&str> {
    report["results"]
        .as_array()
        .map(|rs| rs.iter().filter_map(|r| r["outcome"].as_str()).collect())
        .unwrap_or_default()
}

/// A free TCP port on 127.0.0.1 (free when asked: whoever binds it next may race).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh PostgreSQL database under the server named by `FERROTRON_TEST_PG`, dropped when
/// this value is; None (the caller prints SKIPPED) when the variable is unset.
pub struct PgDb {
    pub url: String,
    admin: String,
    name: String,
}

impl PgDb {
    pub async fn create() -> Option<PgDb> {
        use sqlx::{Connection, Executor};
        let admin = std::env::var("FERROTRON_TEST_PG").ok()?;
        sqlx::any::install_default_drivers();
        let name = format!("ferrotron_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::AnyConnection::connect(&admin)
            .await
            .expect("connect to FERROTRON_TEST_PG");
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create test database");
        let (base, query) = match admin.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (admin.as_str(), None),
        };
        let after_scheme = base.find("://").map_or(0, |i| i + 3);
        let host_end = base[after_scheme..]
            .find('/')
            .map_or(base.len(), |i| after_scheme + i);
        let mut url = format!("{}/{name}", &base[..host_end]);
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        Some(PgDb { url, admin, name })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        // Dropped from sync code: a short-lived thread with its own runtime.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                use sqlx::{Connection, Executor};
                let mut c = sqlx::AnyConnection::connect(&admin).await.ok()?;
                c.execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await
                .ok()
            })
        })
        .join();
    }
}
