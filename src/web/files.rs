//! A run's files: its log and its artifacts, only ever below `<data-dir>/artifacts/<uuid>/`
//! (never the paths recorded in the database, never `<data-dir>/keys`), with symlinks and
//! `..` refused, and a live tail of the log as server-sent events.

use std::convert::Infallible;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use axum::response::sse::Event;
use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use uuid::Uuid;

use super::WebState;
use crate::store::Store;

/// `<data-dir>/artifacts/<uuid>`.
pub fn run_dir(st: &WebState, uuid: Uuid) -> PathBuf {
    st.data_dir.join("artifacts").join(uuid.to_string())
}

/// The run log (written by the runner as `Event::line()`s).
pub fn log_path(st: &WebState, uuid: Uuid) -> PathBuf {
    run_dir(st, uuid).join("ferrotron.log")
}

/// Where the task's artifacts are collected.
pub fn artifacts_root(st: &WebState, uuid: Uuid) -> PathBuf {
    run_dir(st, uuid).join("task")
}

/// `rel` (URL path below the artifacts root) as a path that stays inside the root: no `..`,
/// no absolute parts, and no symlink anywhere on the way (checked on the real file system).
pub fn resolve_artifact(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    // The root itself must be a real directory, not a link planted by a task.
    if std::fs::symlink_metadata(root)
        .ok()?
        .file_type()
        .is_symlink()
    {
        return None;
    }
    for part in Path::new(rel).components() {
        match part {
            Component::Normal(p) => {
                path.push(p);
                let meta = std::fs::symlink_metadata(&path).ok()?;
                if meta.file_type().is_symlink() {
                    return None;
                }
            }
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(path)
}

/// One file under the artifacts root.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Artifact {
    /// Relative to the artifacts root, `/`-separated.
    pub path: String,
    pub size: u64,
}

/// Most entries listed for one run.
pub const MAX_LISTED: usize = 5_000;

/// Every regular file under `root` (symlinks are skipped, never followed), sorted by path.
pub fn list_artifacts(root: &Path) -> Vec<Artifact> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    if std::fs::symlink_metadata(root).is_ok_and(|m| m.file_type().is_symlink()) {
        return out;
    }
    while let Some((dir, prefix)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if out.len() >= MAX_LISTED {
                break;
            }
            let Ok(ft) = e.file_type() else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if ft.is_dir() {
                stack.push((e.path(), rel));
            } else if ft.is_file() {
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push(Artifact { path: rel, size });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// How often the tail looks for new log lines and for the run's end.
const POLL: Duration = Duration::from_millis(200);

/// The log's lines as SSE `data` events, from the start, then new lines as they are
/// appended, until the run is terminal and the file is read to its end; then one `end`
/// event. A partial last line waits for its newline (or for the run's end).
pub fn log_events(
    store: Store,
    path: PathBuf,
    uuid: Uuid,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream(move |tx| async move {
        let mut offset = 0u64;
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let finished = match store.run(uuid).await {
                Ok(Some(r)) => r.state.is_terminal(),
                _ => true,
            };
            // Read what is there now (after checking the state: a run that ended has
            // written everything before its state changed).
            if let Ok(mut f) = tokio::fs::File::open(&path).await
                && f.seek(std::io::SeekFrom::Start(offset)).await.is_ok()
            {
                let mut buf = Vec::new();
                if let Ok(n) = f.read_to_end(&mut buf).await {
                    offset += n as u64;
                    pending.extend_from_slice(&buf);
                }
            }
            let mut start = 0;
            while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&pending[start..start + pos]).into_owned();
                start += pos + 1;
                if tx.send(Event::default().data(line)).await.is_err() {
                    return;
                }
            }
            pending.drain(..start);
            if finished {
                if !pending.is_empty() {
                    let line = String::from_utf8_lossy(&pending).into_owned();
                    let _ = tx.send(Event::default().data(line)).await;
                }
                // Non-empty data: browsers do not dispatch an event whose data is empty.
                let _ = tx.send(Event::default().event("end").data("end")).await;
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    })
}

/// A stream fed by a producer task through a small channel (ends when the producer does or
/// the client goes away).
fn async_stream<F, Fut>(producer: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(producer(tx));
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_paths_stay_inside_and_refuse_links() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("task");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.txt"), "a").unwrap();
        std::fs::write(d.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(d.path(), root.join("dirlink")).unwrap();

        assert_eq!(
            resolve_artifact(&root, "sub/a.txt"),
            Some(root.join("sub/a.txt"))
        );
        assert_eq!(
            resolve_artifact(&root, "./sub/a.txt"),
            Some(root.join("sub/a.txt"))
        );
        for bad in [
            "../secret",
            "sub/../../secret",
            "/etc/passwd",
            "link",
            "dirlink/secret",
            "missing",
        ] {
            assert_eq!(resolve_artifact(&root, bad), None, "{bad}");
        }
        let listed = list_artifacts(&root);
        assert_eq!(
            listed,
            vec![Artifact {
                path: "sub/a.txt".into(),
                size: 1
            }]
        );
    }
}
