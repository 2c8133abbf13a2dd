//! Sessions on an instance: the one place that runs commands where the task lives.
//!
//! A [`Session`] has a single verb, [`Session::exec`]. Moving files (upload of the task,
//! collection of artifacts, reading a results file) is built once on top of it in
//! [`transfer`], as tar streams over the same channel, so the local backend and SSH guests
//! share every byte of that logic, including its safety checks.

pub mod keys;
pub mod known_hosts;
pub mod local;
pub mod ssh;
pub mod transfer;

use async_trait::async_trait;

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A shell command to run on the instance.
#[derive(Debug, Clone, Default)]
pub struct Command {
    /// Run by `/bin/sh -c`.
    pub script: String,
    /// Working directory on the instance.
    pub cwd: String,
    /// Bytes fed to the command's stdin, then closed.
    pub stdin: Vec<u8>,
}

impl Command {
    pub fn new(script: impl Into<String>, cwd: impl Into<String>) -> Self {
        Command {
            script: script.into(),
            cwd: cwd.into(),
            stdin: Vec::new(),
        }
    }

    pub fn with_stdin(mut self, stdin: Vec<u8>) -> Self {
        self.stdin = stdin;
        self
    }
}

/// Receives output as it arrives. Returning an error stops the command (used to enforce
/// size caps on downloads).
pub type OutputSink<'a> = dyn FnMut(Stream, &[u8]) -> Result<(), GuestError> + Send + 'a;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not reach {target}: {reason}")]
    Unreachable { target: String, reason: String },
    #[error("host key of {target} does not match the pinned key (expected {expected})")]
    HostKeyMismatch { target: String, expected: String },
    /// `--ssh`: the server's key is in no entry of the known_hosts file. Nothing was sent
    /// to it; `help` says how to vouch for the key.
    #[error("host key of {target} is not known: {file} {why}\n{help}")]
    HostKeyUnknown {
        target: String,
        file: String,
        why: String,
        help: String,
    },
    /// `--ssh`: the file holds another key of the same type for this host, or revokes this
    /// one. Never learned over: someone may be in the middle.
    #[error("host key of {target} REFUSED: {file}:{line} {why}\n{help}")]
    HostKeyChanged {
        target: String,
        file: String,
        line: usize,
        why: String,
        help: String,
    },
    #[error("connection to {target} lost: {reason}")]
    Disconnected { target: String, reason: String },
    #[error("{0}")]
    Transfer(String),
    /// The guest sent more than a cap allows (artifacts, an export, a results file). The
    /// task controls the guest, so this is the task's failure, not the machine's.
    #[error("{0}")]
    OverCap(String),
    #[error("`{what}` exited with status {status}: {stderr}")]
    Remote {
        what: String,
        status: i32,
        stderr: String,
    },
}

impl GuestError {
    /// Whether trying again (another spawn attempt) cannot change the answer: the host key
    /// was refused by the user's known_hosts, which only the user can change.
    pub fn retrying_cannot_help(&self) -> bool {
        matches!(
            self,
            GuestError::HostKeyUnknown { .. } | GuestError::HostKeyChanged { .. }
        )
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> GuestError {
        let context = context.into();
        move |source| GuestError::Io { context, source }
    }
}

/// A connection to one instance, made by `runner::connect` from its `Access`.
///
/// The one verb is `exec`: upload, download and file reads are built on it once
/// (`transfer`), so every kind of session behaves alike, download safety rules included.
/// Everything that comes back is the guest's and is treated as hostile: output is capped
/// and split into lines by the caller, never interpreted by a shell on this host.
#[async_trait]
pub trait Session: Send + Sync {
    /// Directory on the instance that holds this run's files (task, artifacts, internals).
    fn root(&self) -> &str;

    /// What to show a person for this session (`local`, `root@127.0.0.1:40022`).
    fn describe(&self) -> String;

    /// Runs `cmd`, streaming output into `out`, and returns its exit status (128+N when the
    /// command was killed by signal N). Dropping the future stops the command.
    async fn exec(&self, cmd: &Command, out: &mut OutputSink<'_>) -> Result<i32, GuestError>;

    /// What connecting did that the person running the task must hear of (a host key
    /// added to their known_hosts).
    fn notices(&self) -> Vec<String> {
        Vec::new()
    }
}

pub use crate::util::shell_quote;

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quoting_survives_quotes_and_metacharacters() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }
}
