//! One run: parameters, state, phase timeline, results by outcome, the log (live over SSE
//! while the run goes), the artifacts with downloads, and the command that reproduces it.

use std::fmt::Write as _;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tower_http::services::ServeFile;
use uuid::Uuid;

use super::{error_page, esc, layout, outcome_badge, outcome_class, seg, svg, when};
use crate::web::WebState;
use crate::web::error::ApiError;
use crate::web::files;
use crate::web::runs_api::reproduce_command;

/// Most of a finished log inlined in the page; the rest is one click away.
const LOG_INLINE_MAX: u64 = 2 * 1024 * 1024;

fn not_a_run(s: &str) -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        &format!("no run `{s}`: not a run uuid"),
    )
}

pub async fn page(State(st): State<WebState>, Path(uuid): Path<String>) -> Response {
    let Ok(uuid) = Uuid::parse_str(&uuid) else {
        return not_a_run(&uuid);
    };
    let run = match st.store.run(uuid).await {
        Ok(Some(r)) => r,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("no run {uuid}")),
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let results = st.store.run_results(uuid).await.unwrap_or_default();
    let cancel = st
        .store
        .cancel_requested(uuid)
        .await
        .ok()
        .flatten()
        .unwrap_or(false);
    let live = !run.state.is_terminal();

    let mut b = String::with_capacity(32 * 1024);
    let _ = write!(
        b,
        "<h1>{task} on {item}</h1><p><span class=\"badge s-{st}\" id=\"run-state\">{st}</span> \
         <span class=\"muted\">{uuid}</span>{cancel}</p>",
        task = esc(&run.task),
        item = esc(&run.item),
        st = run.state.as_str(),
        cancel = if cancel {
            " <span class=\"badge s-cancelled\">cancel requested</span>"
        } else {
            ""
        },
    );
    if let Some(e) = &run.error {
        let _ = write!(b, "<p class=\"error\">{}</p>", esc(e));
    }
    if st.farm.is_some() {
        // Forms, not scripts: a browser without the token is asked for it (HTTP Basic).
        b.push_str("<p class=\"actions\">");
        if live && !cancel {
            let _ = write!(
                b,
                "<form class=\"inline\" method=\"post\" action=\"/api/v1/runs/{uuid}/cancel\">\
                 <button type=\"submit\" id=\"cancel\">cancel</button></form> "
            );
        }
        let _ = write!(
            b,
            "<form class=\"inline\" method=\"post\" action=\"/api/v1/runs/{uuid}/rerun\">\
             <button type=\"submit\" id=\"rerun\">rerun</button></form></p>"
        );
    }

    if let Ok(Some(h)) = st.store.hold_of_run(uuid).await {
        let now = time::OffsetDateTime::now_utc();
        let status = h.status(now);
        let _ = write!(
            b,
            "<h2>Held</h2><p id=\"hold\"><span class=\"badge\">{status}</span> hold {id} on \
             {task}{until}{reason}</p>",
            id = h.id,
            task = esc(&h.task),
            until = h
                .expires_at
                .map(|t| format!(", until {}", when(t)))
                .unwrap_or_default(),
            reason = if h.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", esc(&h.reason))
            },
        );
        if status == "active" {
            let _ = write!(
                b,
                "<p>Its instance is kept; log in from the farm's host with:</p>\
                 <code class=\"cmd\" id=\"hold-login\">{}</code>",
                esc(h.login.as_deref().unwrap_or(""))
            );
            if st.farm.is_some() {
                let _ = write!(
                    b,
                    "<p class=\"actions\"><form class=\"inline\" method=\"post\" \
                     action=\"/api/v1/holds/{}/release\"><button type=\"submit\" \
                     id=\"release\">release</button></form></p>",
                    h.id
                );
            }
        }
    }

    b.push_str("<h2>Parameters</h2><dl class=\"kv\">");
    let mut kv = |k: &str, v: String| {
        let _ = write!(b, "<dt>{}</dt><dd>{v}</dd>", esc(k));
    };
    kv(
        "task",
        format!(
            "<a href=\"/tasks/{}\">{}</a>",
            seg(&run.task),
            esc(&run.task)
        ),
    );
    kv(
        "item",
        format!(
            "<a href=\"/items/{}\">{}</a>",
            seg(&run.item),
            esc(&run.item)
        ),
    );
    kv("type", esc(&run.item_type));
    kv("arch", esc(&run.arch));
    kv("backend", esc(&run.backend));
    kv("owner", esc(run.owner.as_deref().unwrap_or("")));
    kv("created", when(run.created_at));
    kv("started", run.started_at.map(when).unwrap_or_default());
    kv("finished", run.finished_at.map(when).unwrap_or_default());
    kv(
        "exit code",
        run.exit_code.map(|c| c.to_string()).unwrap_or_default(),
    );
    if let Some(obj) = crate::store::RunParams::from_value(&run.params)
        .to_value()
        .as_object()
    {
        for (k, v) in obj {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            kv(k, esc(&text));
        }
    }
    b.push_str("</dl>");
    let _ = write!(
        b,
        "<h2>Reproduce locally</h2><code class=\"cmd\" id=\"reproduce\">{}</code>\
         <p><a href=\"/compare?a={uuid}\" id=\"compare\">compare with the last passing run \
         of this task on this item</a></p>",
        esc(&reproduce_command(&run))
    );

    if !run.phases.is_empty() {
        b.push_str("<h2>Phases</h2>");
        b.push_str(&svg::timeline(&run.phases));
    }
    if run.attempts.len() > 1 || run.attempts.iter().any(|a| a.error.is_some()) {
        b.push_str("<h2>Attempts</h2><ul>");
        for a in &run.attempts {
            let _ = write!(
                b,
                "<li>#{} at {}: {}</li>",
                a.attempt,
                when(a.started_at),
                esc(a.error.as_deref().unwrap_or("ok"))
            );
        }
        b.push_str("</ul>");
    }

    let _ = write!(b, "<h2>Results ({})</h2>", results.len());
    if results.is_empty() {
        b.push_str("<p class=\"muted\">No results stored (yet).</p>");
    } else {
        b.push_str(
            "<div class=\"scroll\"><table class=\"results\"><thead><tr><th>outcome</th><th>check</th>\
             <th>item</th><th>note</th><th>data</th></tr></thead><tbody>",
        );
        for r in &results {
            let data: Vec<String> = r
                .data
                .iter()
                .filter(|(k, _)| k.as_str() != "item")
                .map(|(k, v)| format!("{}={}", esc(k), esc(&v.join(","))))
                .collect();
            let _ = write!(
                b,
                "<tr class=\"result {}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                outcome_class(&r.outcome),
                outcome_badge(&r.outcome),
                esc(&r.testcase),
                esc(&r.data.get("item").map(|v| v.join(",")).unwrap_or_default()),
                esc(r.note.as_deref().unwrap_or("")),
                data.join(" ")
            );
        }
        b.push_str("</tbody></table></div>");
    }

    b.push_str("<h2>Log</h2>");
    let log_path = files::log_path(&st, uuid);
    if live {
        let _ = write!(
            b,
            "<p class=\"muted\"><span id=\"log-status\">live: lines appear as the run writes them</span> · \
             <a href=\"/runs/{uuid}/log\">plain text</a></p>\
             <pre class=\"log\" id=\"log\" data-stream=\"/runs/{uuid}/log/stream\"></pre>"
        );
    } else {
        match read_head(&log_path, LOG_INLINE_MAX).await {
            Some((text, truncated)) => {
                let _ = write!(
                    b,
                    "<p class=\"muted\"><a href=\"/runs/{uuid}/log\">plain text</a>{}</p><pre class=\"log\" id=\"log\">{}</pre>",
                    if truncated {
                        " (shown: the first 2 MiB)"
                    } else {
                        ""
                    },
                    esc(&text)
                );
            }
            None => b.push_str("<p class=\"muted\">No log kept (pruned or never written).</p>"),
        }
    }

    b.push_str("<h2>Artifacts</h2>");
    let root = files::artifacts_root(&st, uuid);
    let listed = tokio::task::spawn_blocking(move || files::list_artifacts(&root))
        .await
        .unwrap_or_default();
    if listed.is_empty() {
        b.push_str("<p class=\"muted\">No artifacts.</p>");
    } else {
        artifact_table(&mut b, uuid, &listed);
    }
    layout(&format!("{} on {}", run.task, run.item), &b).into_response()
}

fn artifact_table(b: &mut String, uuid: Uuid, listed: &[files::Artifact]) {
    b.push_str(
        "<div class=\"scroll\"><table class=\"artifacts\"><thead><tr><th>file</th>\
         <th class=\"num\">size</th><th></th></tr></thead><tbody>",
    );
    for a in listed {
        let href = format!(
            "/runs/{uuid}/artifacts/{}",
            a.path.split('/').map(seg).collect::<Vec<_>>().join("/")
        );
        let name = a.path.rsplit('/').next().unwrap_or(&a.path);
        let _ = write!(
            b,
            "<tr><td><a href=\"{h}\">{p}</a></td><td class=\"num\">{s}</td>\
             <td><a class=\"download\" href=\"{h}?download=1\" download=\"{n}\">download</a></td></tr>",
            h = esc(&href),
            p = esc(&a.path),
            s = human_size(a.size),
            n = esc(name),
        );
    }
    if listed.len() >= files::MAX_LISTED {
        let _ = write!(
            b,
            "<tr><td colspan=\"3\" class=\"muted\">only the first {} files are listed</td></tr>",
            files::MAX_LISTED
        );
    }
    b.push_str("</tbody></table></div>");
}

pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The first `max` bytes of a file as text, and whether there was more.
async fn read_head(path: &std::path::Path, max: u64) -> Option<(String, bool)> {
    use tokio::io::AsyncReadExt;
    let f = tokio::fs::File::open(path).await.ok()?;
    let len = f.metadata().await.ok()?.len();
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).await.ok()?;
    Some((String::from_utf8_lossy(&buf).into_owned(), len > max))
}

/// The whole log as plain text.
pub async fn log(State(st): State<WebState>, Path(uuid): Path<String>) -> Response {
    let Ok(uuid) = Uuid::parse_str(&uuid) else {
        return not_a_run(&uuid);
    };
    serve_file(
        files::log_path(&st, uuid),
        false,
        Request::new(Body::empty()),
    )
    .await
}

/// The log as server-sent events: everything so far, then new lines until the run ends.
pub async fn log_stream(State(st): State<WebState>, Path(uuid): Path<String>) -> Response {
    let Ok(uuid) = Uuid::parse_str(&uuid) else {
        return not_a_run(&uuid);
    };
    match st.store.run(uuid).await {
        Ok(Some(_)) => {}
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("no run {uuid}")),
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
    // A slot per open stream: each costs a task, a file and a query per poll.
    let Ok(permit) = st.live_logs.clone().try_acquire_owned() else {
        let mut resp = ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many live logs open ({} at most): try again later, or read /runs/{uuid}/log",
                st.limits.live_logs
            ),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        return resp;
    };
    let stream = files::log_events(st.store.clone(), files::log_path(&st, uuid), uuid, permit);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub async fn artifacts_index(State(st): State<WebState>, Path(uuid): Path<String>) -> Response {
    let Ok(uuid) = Uuid::parse_str(&uuid) else {
        return not_a_run(&uuid);
    };
    let root = files::artifacts_root(&st, uuid);
    let listed = tokio::task::spawn_blocking(move || files::list_artifacts(&root))
        .await
        .unwrap_or_default();
    let mut b = format!("<h1>Artifacts of <a href=\"/runs/{uuid}\">{uuid}</a></h1>");
    if listed.is_empty() {
        b.push_str("<p class=\"muted\">No artifacts.</p>");
    } else {
        artifact_table(&mut b, uuid, &listed);
    }
    layout("Artifacts", &b).into_response()
}

#[derive(serde::Deserialize)]
pub struct DownloadQuery {
    download: Option<String>,
}

/// One artifact file (a directory shows the index). Never outside the run's artifacts.
pub async fn artifact(
    State(st): State<WebState>,
    Path((uuid, path)): Path<(String, String)>,
    Query(q): Query<DownloadQuery>,
    req: Request<Body>,
) -> Response {
    let Ok(uuid) = Uuid::parse_str(&uuid) else {
        return not_a_run(&uuid);
    };
    let root = files::artifacts_root(&st, uuid);
    let found = tokio::task::spawn_blocking(move || {
        let p = files::resolve_artifact(&root, &path)?;
        let meta = std::fs::symlink_metadata(&p).ok()?;
        Some((p, meta.is_dir()))
    })
    .await
    .ok()
    .flatten();
    match found {
        None => error_page(StatusCode::NOT_FOUND, "no such artifact"),
        Some((_, true)) => artifacts_index(State(st), Path(uuid.to_string())).await,
        Some((p, false)) => serve_file(p, q.download.is_some(), req).await,
    }
}

/// Serves a file (ranges, conditional requests) as plain text when it looks like text, else
/// as a download; never as HTML a task could use to script this site.
async fn serve_file(path: std::path::PathBuf, download: bool, req: Request<Body>) -> Response {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = is_text(&name);
    let res = match ServeFile::new(&path).try_call(req).await {
        Ok(r) => r,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    if res.status() == StatusCode::NOT_FOUND {
        return error_page(StatusCode::NOT_FOUND, "no such file");
    }
    let mut res = res.map(Body::new);
    let h = res.headers_mut();
    let ctype = if text && !download {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    if download || !text {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() && c != '"' && c != '\\' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    res
}

fn is_text(name: &str) -> bool {
    let ext = name
        .rsplit_once('.')
        .map_or("", |(_, e)| e)
        .to_ascii_lowercase();
    matches!(
        ext.as_str(),
        "log"
            | "txt"
            | "json"
            | "yml"
            | "yaml"
            | "xml"
            | "md"
            | "out"
            | "err"
            | "csv"
            | "ini"
            | "conf"
            | "sh"
            | "py"
            | "diff"
            | "patch"
    ) || !name.contains('.')
}
