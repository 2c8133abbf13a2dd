//! A session on this very host, for the local backend.

use std::process::Stdio;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Command, GuestError, OutputSink, Session, Stream};

pub struct LocalSession {
    root: String,
}

impl LocalSession {
    pub fn new(root: impl Into<String>) -> Self {
        LocalSession { root: root.into() }
    }
}

/// Kills the whole process group when dropped, so a timed-out or interrupted action takes
/// its children with it (a `sh -c` that started a test suite, say).
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: killpg has no memory-safety preconditions; a stale pgid is harmless
            // because the group was created by us and its leader is still our child.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

#[async_trait]
impl Session for LocalSession {
    fn root(&self) -> &str {
        &self.root
    }

    fn describe(&self) -> String {
        "local".to_string()
    }

    async fn exec(&self, cmd: &Command, out: &mut OutputSink<'_>) -> Result<i32, GuestError> {
        let mut child = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&cmd.script)
            .current_dir(&cmd.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(GuestError::io(format!("starting /bin/sh in {}", cmd.cwd)))?;
        let guard = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));

        let mut stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let input = cmd.stdin.clone();
        let feed = async move {
            if let Some(mut s) = stdin.take() {
                // A command that does not read its stdin closes the pipe early; that is fine.
                let _ = s.write_all(&input).await;
            }
        };
        let pump = async {
            let (mut out_open, mut err_open) = (true, true);
            let (mut ob, mut eb) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
            while out_open || err_open {
                tokio::select! {
                    r = stdout.read(&mut ob), if out_open => match r {
                        Ok(0) => out_open = false,
                        Ok(n) => out(Stream::Stdout, &ob[..n])?,
                        Err(e) => return Err(GuestError::io("reading command output")(e)),
                    },
                    r = stderr.read(&mut eb), if err_open => match r {
                        Ok(0) => err_open = false,
                        Ok(n) => out(Stream::Stderr, &eb[..n])?,
                        Err(e) => return Err(GuestError::io("reading command output")(e)),
                    },
                }
            }
            Ok(())
        };
        let ((), pumped) = tokio::join!(feed, pump);
        pumped?;
        let status = child
            .wait()
            .await
            .map_err(GuestError::io("waiting for command"))?;
        // The leader exited; its group may still hold background children the command left
        // behind. The guard kills them on return, as a destroyed VM would.
        drop(guard);
        Ok(exit_code(status))
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(script: &str, stdin: &[u8]) -> (i32, String, String) {
        let s = LocalSession::new("/tmp");
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let code = s
            .exec(
                &Command::new(script, "/tmp").with_stdin(stdin.to_vec()),
                &mut |st, b| {
                    match st {
                        Stream::Stdout => o.extend_from_slice(b),
                        Stream::Stderr => e.extend_from_slice(b),
                    }
                    Ok(())
                },
            )
            .await
            .unwrap();
        (
            code,
            String::from_utf8(o).unwrap(),
            String::from_utf8(e).unwrap(),
        )
    }

    #[tokio::test]
    async fn streams_status_and_stdin() {
        assert_eq!(
            run("echo out; echo err >&2; exit 3", b"").await,
            (3, "out\n".into(), "err\n".into())
        );
        assert_eq!(run("cat", b"fed").await.1, "fed");
        assert_eq!(run("kill -TERM $$", b"").await.0, 128 + 15);
    }

    #[tokio::test]
    async fn dropping_the_future_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let s = LocalSession::new("/tmp");
        let cmd = Command::new(script, "/tmp");
        let mut sink = |_: Stream, _: &[u8]| Ok(());
        let fut = s.exec(&cmd, &mut sink);
        let timed = tokio::time::timeout(std::time::Duration::from_millis(200), fut).await;
        assert!(timed.is_err(), "the command should still be running");
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert!(
            !marker.exists(),
            "a child of the killed command kept running"
        );
    }
}
