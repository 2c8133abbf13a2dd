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
    /// The pinned host public key (OpenSSH line); `None` means trust-on-first-use, which
    /// only `--ssh` to a machine the user names may use.
    pub host_key: Option<String>,
    /// A private key file to log in with instead of the run's own key (`--ssh` machines
    /// do not know the run's key).
    pub identity: Option<PathBuf>,
}
