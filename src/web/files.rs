//! A run's files: its log and its artifacts, only ever below `<data-dir>/artifacts/<uuid>/`
//! (never the paths recorded in the database, never `<data-dir>/keys`), with symlinks and
//! `..` refused, and a live tail of the log as server-sent events.

use std::convert::Infallible;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use axum::response::sse::Event;
use futures_util::Stream;
use tokio::io::AsyncReadExt;
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

/// Most live-log streams open at once by default: each holds a file, a task and a database
/// query per poll. One more gets a 503.
pub const MAX_LIVE_LOGS: usize = 64;

/// Most bytes read from a log at a time: a long log is sent in pieces of this size (the
/// channel to the client bounds how many pieces wait), so a connection never holds the rest
/// of a log in memory.
pub const READ_CHUNK: usize = 64 * 1024;

/// A line longer than this is sent in pieces of this size (a guest may write no newline).
pub const MAX_LINE: usize = 16 * 1024;

/// Where a live tail is in the log, and the start of a line that has no newline yet.
#[derive(Default)]
pub struct Tail {
    file: Option<tokio::fs::File>,
    pending: Vec<u8>,
}

impl Tail {
    /// Reads at most [`READ_CHUNK`] new bytes. Returns the complete lines in them (pieces of
    /// [`MAX_LINE`] for longer ones) and whether it stopped before the end of the file.
    pub async fn read(&mut self, path: &Path) -> (Vec<String>, bool) {
        if self.file.is_none() {
            self.file = tokio::fs::File::open(path).await.ok();
        }
        let Some(f) = self.file.as_mut() else {
            return (Vec::new(), false);
        };
        let before = self.pending.len();
        let n = match f
            .take(READ_CHUNK as u64)
            .read_to_end(&mut self.pending)
            .await
        {
            Ok(n) => n,
            Err(_) => {
                self.pending.truncate(before);
                0
            }
        };
        (self.lines(), n == READ_CHUNK)
    }

    fn lines(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(pos) if pos <= MAX_LINE => {
                    out.push(String::from_utf8_lossy(&rest[..pos]).into_owned());
                    start += pos + 1;
                }
                _ if rest.len() > MAX_LINE => {
                    // Cut before a UTF-8 continuation byte, so no character is split.
                    let mut cut = MAX_LINE;
                    while cut > 0 && rest[cut] & 0xC0 == 0x80 {
                        cut -= 1;
                    }
                    let cut = if cut == 0 { MAX_LINE } else { cut };
                    out.push(String::from_utf8_lossy(&rest[..cut]).into_owned());
                    start += cut;
                }
                _ => break,
            }
        }
        self.pending.drain(..start);
        out
    }

    /// The partial last line, once nothing more will come.
    pub fn rest(&mut self) -> Option<String> {
        (!self.pending.is_empty()).then(|| {
            let line = String::from_utf8_lossy(&self.pending).into_owned();
            self.pending.clear();
            line
        })
    }
}

/// The log's lines as SSE `data` events, from the start, then new lines as they are
/// appended, until the run is terminal (or gone) and the file is read to its end; then one
/// `end` event. A partial last line waits for its newline (or for the run's end). Stops as
/// soon as the client goes away, and holds `permit` (a live-log slot) until it stops.
pub fn log_events(
    store: Store,
    path: PathBuf,
    uuid: Uuid,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream(move |tx| async move {
        let _permit = permit;
        let mut tail = Tail::default();
        loop {
            let finished = match store.run(uuid).await {
                Ok(Some(r)) => r.state.is_terminal(),
                _ => true,
            };
            // Read what is there now (after checking the state: a run that ended has
            // written everything before its state changed), a chunk at a time.
            loop {
                let (lines, more) = tail.read(&path).await;
                for line in lines {
                    if tx.send(Event::default().data(line)).await.is_err() {
                        return;
                    }
                }
                if !more {
                    break;
                }
            }
            if finished {
                if let Some(line) = tail.rest() {
                    let _ = tx.send(Event::default().data(line)).await;
                }
                // Non-empty data: browsers do not dispatch an event whose data is empty.
                let _ = tx.send(Event::default().event("end").data("end")).await;
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = tx.closed() => return,
            }
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

    #[tokio::test]
    async fn the_tail_reads_in_bounded_chunks_and_splits_long_lines() {
        use std::io::Write as _;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("log");
        // Three chunks' worth of short lines, then one line of 2.5 × MAX_LINE without newline.
        let line = "x".repeat(99);
        let n_lines = 3 * READ_CHUNK / 100;
        let mut body = format!("{line}\n").repeat(n_lines);
        body.push_str(&"é".repeat(MAX_LINE * 5 / 4));
        std::fs::write(&path, &body).unwrap();

        let mut tail = Tail::default();
        let (first, more) = tail.read(&path).await;
        assert!(more, "one read stops after READ_CHUNK bytes");
        assert_eq!(first.len(), READ_CHUNK / 100);
        assert!(tail.pending.len() < 100);
        let mut lines = first;
        loop {
            let (l, more) = tail.read(&path).await;
            assert!(tail.pending.len() <= MAX_LINE, "{}", tail.pending.len());
            lines.extend(l);
            if !more {
                break;
            }
        }
        assert!(lines[..n_lines].iter().all(|l| *l == line));
        let long: Vec<&String> = lines[n_lines..].iter().collect();
        assert_eq!(long.len(), 2, "two full pieces of the long line");
        assert!(
            long.iter()
                .all(|p| p.len() <= MAX_LINE && p.chars().all(|c| c == 'é'))
        );
        let rest = tail.rest().unwrap();
        assert_eq!(
            long.iter().map(|p| p.len()).sum::<usize>() + rest.len(),
            MAX_LINE * 5 / 4 * 2
        );
        assert!(tail.rest().is_none());
        // Appended bytes are read from where the tail stopped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"late\n")
            .unwrap();
        assert_eq!(tail.read(&path).await.0, ["late"]);
    }

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
