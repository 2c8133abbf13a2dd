//! `ferrotron bench api`: fills a store with N results across M items (bulk inserts), starts
//! `ferrotron web` on it as a child process, and measures the review endpoints at
//! concurrency 1 and 8, POST throughput, and the server's peak resident memory. SQLite
//! always; PostgreSQL when a URL is given.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sqlx::AssertSqlSafe;
use tokio::io::AsyncBufReadExt;
use uuid::Uuid;

use super::http::Conn;
use crate::store::{Dialect, Store};

pub struct Options {
    pub results: u64,
    pub items: u64,
    /// Requests per endpoint and concurrency level.
    pub requests: usize,
    pub posts: usize,
    pub work_dir: PathBuf,
    pub postgres: Option<String>,
    /// Keep an already generated database of the right size.
    pub reuse: bool,
}

/// Results per run (one per testcase).
const PER_RUN: u64 = 10;
const TOKEN: &str = "bench-token";
/// Run r has uuid GROUP_BASE | r (a valid v7-shaped uuid).
const GROUP_BASE: u128 = 0x0190_0000_0000_7000_8000_0000_0000_0000;

#[derive(Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub concurrency: usize,
    pub requests: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct BackendReport {
    pub backend: String,
    pub results: u64,
    pub items: u64,
    pub generate_s: f64,
    pub figures: Vec<Figure>,
    pub peak_rss_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub backends: Vec<BackendReport>,
}

impl Report {
    pub fn print(&self) {
        println!("machine: {}", self.machine);
        for b in &self.backends {
            println!(
                "\n{}: {} results across {} items (generated in {:.1} s; 0 = reused)",
                b.backend, b.results, b.items, b.generate_s
            );
            println!(
                "{:<34} {:>4} {:>8} {:>9} {:>9} {:>10}",
                "endpoint", "conc", "requests", "p50 ms", "p99 ms", "req/s"
            );
            for f in &b.figures {
                println!(
                    "{:<34} {:>4} {:>8} {:>9.3} {:>9.3} {:>10.0}",
                    f.name, f.concurrency, f.requests, f.p50_ms, f.p99_ms, f.per_sec
                );
            }
            println!("server peak RSS: {:.1} MB", b.peak_rss_mb);
        }
    }
}

pub async fn run(opts: Options) -> Result<Report> {
    std::fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("creating {}", opts.work_dir.display()))?;
    let mut backends = Vec::new();
    let sqlite = opts.work_dir.join("api-bench.sqlite");
    let mut urls = vec![(
        "sqlite".to_string(),
        format!("sqlite://{}", sqlite.display()),
    )];
    if let Some(pg) = &opts.postgres {
        urls.push(("postgresql".to_string(), pg.clone()));
    }
    for (name, url) in urls {
        eprintln!("bench api: {name}: preparing {} results", opts.results);
        let generate_s = generate(&url, &sqlite, &opts).await?;
        eprintln!("bench api: {name}: measuring");
        let (figures, peak_rss_mb) = measure(&url, &opts).await?;
        backends.push(BackendReport {
            backend: name,
            results: opts.results,
            items: opts.items,
            generate_s,
            figures,
            peak_rss_mb,
        });
    }
    Ok(Report {
        machine: super::machine(),
        backends,
    })
}

fn item_name(i: u64) -> String {
    format!("pkg{i}-1.0-1.fc41")
}

/// Fills the store; returns the seconds it took (0 when an existing one was reused).
async fn generate(url: &str, sqlite: &std::path::Path, opts: &Options) -> Result<f64> {
    if url.starts_with("sqlite:") && !opts.reuse {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", sqlite.display()));
        }
    }
    let store = Store::open(url).await?;
    let pool = store.pool();
    let have: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM results")
        .fetch_one(pool)
        .await?;
    if opts.reuse && have as u64 >= opts.results {
        return Ok(0.0);
    }
    if store.dialect() == Dialect::Postgres {
        sqlx::query(
            "TRUNCATE result_data, results_groups, results, result_groups, testcases, \
             run_phases, run_attempts, runs RESTART IDENTITY",
        )
        .execute(pool)
        .await?;
    }
    let started = Instant::now();
    let runs = opts.results.div_ceil(PER_RUN);
    let base_us: i64 = 1_735_689_600_000_000; // 2025-01-01
    let mut tx = pool.begin().await?;
    let tc: Vec<String> = (0..PER_RUN)
        .map(|i| format!("({}, 'bench.check{i}', NULL)", i + 1))
        .collect();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO testcases (id, name, ref_url) VALUES {}",
        tc.join(", ")
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    // Runs in batches: run r has uuid from r, item r % items, PER_RUN results.
    const RUNS_PER_BATCH: u64 = 200;
    let mut r0 = 0;
    while r0 < runs {
        let r1 = (r0 + RUNS_PER_BATCH).min(runs);
        let mut tx = pool.begin().await?;
        let mut run_rows = Vec::new();
        let mut group_rows = Vec::new();
        let mut result_rows = Vec::new();
        let mut link_rows = Vec::new();
        let mut data_rows = Vec::new();
        for r in r0..r1 {
            let uuid = Uuid::from_u128(GROUP_BASE | u128::from(r));
            let item = item_name(r % opts.items);
            let arch = if r % 2 == 0 { "x86_64" } else { "aarch64" };
            let created = base_us + r as i64 * 10_000_000;
            run_rows.push(format!(
                "({id}, '{uuid}', 'bench-task{t}', '{item}', 'koji_build', '{arch}', 'libvirt', 'finished', 0, '{{}}', NULL, '', '', 'bench', {created}, {created}, {fin})",
                id = r + 1,
                t = r % 5,
                fin = created + 60_000_000
            ));
            group_rows.push(format!("({}, '{uuid}', 'bench run', NULL)", r + 1));
            for k in 0..PER_RUN {
                let id = r * PER_RUN + k + 1;
                if id > opts.results {
                    break;
                }
                let outcome = if (r + k) % 10 == 3 {
                    "FAILED"
                } else {
                    "PASSED"
                };
                result_rows.push(format!(
                    "({id}, {tc}, '{outcome}', NULL, NULL, {t})",
                    tc = k + 1,
                    t = created + k as i64 * 1_000_000
                ));
                link_rows.push(format!("({id}, {})", r + 1));
                data_rows.push(format!("({id}, 'item', 0, '{item}')"));
                data_rows.push(format!("({id}, 'type', 0, 'koji_build')"));
                data_rows.push(format!("({id}, 'arch', 0, '{arch}')"));
            }
        }
        for (table, cols, rows) in [
            (
                "runs",
                "id, uuid, task, item, item_type, arch, backend, state, exit_code, params, error, log_path, artifacts_dir, owner, created_at, started_at, finished_at",
                &run_rows,
            ),
            (
                "result_groups",
                "id, uuid, description, ref_url",
                &group_rows,
            ),
            (
                "results",
                "id, testcase_id, outcome, note, ref_url, submit_time",
                &result_rows,
            ),
            ("results_groups", "result_id, group_id", &link_rows),
            ("result_data", "result_id, key, ord, value", &data_rows),
        ] {
            // Literal values (generated here, nothing from outside): no parameter limits.
            for chunk in rows.chunks(2000) {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {table} ({cols}) VALUES {}",
                    chunk.join(", ")
                )))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        r0 = r1;
    }
    if store.dialect() == Dialect::Postgres {
        for table in ["testcases", "result_groups", "results", "runs"] {
            sqlx::query(AssertSqlSafe(format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
            )))
            .execute(pool)
            .await?;
        }
    }
    sqlx::query("ANALYZE").execute(pool).await?;
    store.close().await;
    Ok(started.elapsed().as_secs_f64())
}

/// A tiny deterministic generator for picking items.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The server's peak and current resident memory in MB.
fn rss_mb(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

async fn measure(url: &str, opts: &Options) -> Result<(Vec<Figure>, f64)> {
    let token_file = opts.work_dir.join("bench-tokens");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args(["web", "--listen", "127.0.0.1:0", "--token-file"])
        .arg(&token_file)
        .env("FERROTRON_DB", url)
        .env("FERROTRON_DATA_DIR", &opts.work_dir)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting `ferrotron web`")?;
    let pid = child.id().context("server pid")?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .context("server did not start in 60 s")??
        .unwrap_or_default();
    let Some(addr) = first
        .rsplit("http://")
        .next()
        .filter(|_| first.contains("http://"))
    else {
        bail!("unexpected first line from `ferrotron web`: {first}");
    };
    let addr = addr.trim().to_string();

    let items = opts.items;
    type MakeReq = fn(&mut Rng, u64) -> Req;
    let endpoints: [(&str, MakeReq); 3] = [
        ("GET /api/v2.0/results?item=X", |r, n| {
            Req::Get(format!("/api/v2.0/results?item={}", item_name(r.below(n))))
        }),
        ("GET /results/latest?item=X&_distinct_on", |r, n| {
            Req::Get(format!(
                "/api/v2.0/results/latest?item={}&type=koji_build&_distinct_on=arch",
                item_name(r.below(n))
            ))
        }),
        ("GET / (runs list page)", |_, _| Req::Get("/".to_string())),
    ];
    let mut figures = Vec::new();
    for (name, make) in endpoints {
        for conc in [1usize, 8] {
            let f = load(&addr, conc, opts.requests, move |r| make(r, items)).await?;
            figures.push(Figure {
                name: name.to_string(),
                ..f
            });
        }
    }
    let f = load(&addr, 8, opts.posts, move |r| {
        let group = Uuid::from_u128(GROUP_BASE | u128::from(r.below(1000)));
        Req::Post(format!(
            r#"{{"outcome":"PASSED","testcase":"bench.posted","groups":["{group}"],"data":{{"item":"{}","type":"koji_build","arch":"x86_64"}}}}"#,
            item_name(r.below(items))
        ))
    })
    .await?;
    figures.push(Figure {
        name: "POST /api/v2.0/results".into(),
        ..f
    });
    let (peak, _) = rss_mb(pid);
    let _ = child.start_kill();
    let _ = child.wait().await;
    Ok((figures, peak))
}

/// One request of a workload.
enum Req {
    Get(String),
    /// A JSON body for POST /api/v2.0/results.
    Post(String),
}

/// `total` requests over `conc` connections (after a warm-up of 20 on each, then all start
/// together): latency percentiles and throughput over the wall-clock time.
async fn load<F>(addr: &str, conc: usize, total: usize, make: F) -> Result<Figure>
where
    F: Fn(&mut Rng) -> Req + Send + Sync + Copy + 'static,
{
    const WARMUP: usize = 20;
    let per = total.div_ceil(conc);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(conc + 1));
    let mut tasks = Vec::new();
    for w in 0..conc {
        let addr = addr.to_string();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&addr).await?;
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1));
            let mut times = Vec::with_capacity(per);
            for i in 0..per + WARMUP {
                if i == WARMUP {
                    barrier.wait().await;
                }
                let t = Instant::now();
                let (status, want) = match make(&mut rng) {
                    Req::Get(path) => (conn.request("GET", &path, None, None).await?.0, 200),
                    Req::Post(body) => (
                        conn.request(
                            "POST",
                            "/api/v2.0/results",
                            Some(body.as_bytes()),
                            Some(TOKEN),
                        )
                        .await?
                        .0,
                        201,
                    ),
                };
                if status != want {
                    return Err(std::io::Error::other(format!(
                        "HTTP {status}, expected {want}"
                    )));
                }
                if i >= WARMUP {
                    times.push(t.elapsed());
                }
            }
            Ok::<_, std::io::Error>(times)
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await??);
    }
    let wall = started.elapsed().as_secs_f64();
    all.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let n = all.len();
    Ok(Figure {
        name: String::new(),
        concurrency: conc,
        requests: n,
        p50_ms: ms(all[n / 2]),
        p99_ms: ms(all[(n * 99 / 100).min(n - 1)]),
        per_sec: n as f64 / wall,
    })
}
