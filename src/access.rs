//! How to reach an instance: data a provider produces and the guest module turns into a
//! session. A leaf, so that neither of the two has to know the other.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How the runner reaches an instance once it exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    /// Runs on this host, in `root`. No isolation.
    Local { root: PathBuf },
    /// An SSH endpoint whose host key is already known.
    Ssh(SshTarget),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// How the server's host key is checked, before anything is sent.
    pub host_key: HostKey,
    /// A private key file to log in with instead of the run's own key (`--ssh` machines
    /// do not know the run's key).
    pub identity: Option<PathBuf>,
}

/// How a session decides that it talks to the right machine. Data, so that the provider
/// that knows the machine states the policy and the session that sees the key applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostKey {
    /// The key the provider put on the instance (OpenSSH public key line): only it passes.
    Pinned(String),
    /// A machine the user names: its key must be in this OpenSSH known_hosts file. A key
    /// that differs from the one recorded is always refused; an unknown one is added when
    /// `learn` is set (the user asked for it), else refused.
    KnownHosts { file: PathBuf, learn: bool },
}
