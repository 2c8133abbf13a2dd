//! The ssh backend: an existing machine the user names (`--ssh user@host[:port]`), as
//! Taskotron's runtask allowed. Nothing is created or destroyed; each run works in its own
//! directory on the machine. Its host key must be in a known_hosts file (the user's own by
//! default), as for `ssh`; it is added there only when the user asks (`--learn-host-key`).

use std::path::PathBuf;

use async_trait::async_trait;

use super::{
    Access, Capacity, HostKey, Instance, InstanceSpec, Listed, Provider, ProviderError, SshTarget,
};

pub struct SshProvider {
    target: SshTarget,
    /// The target as the user wrote it.
    named: String,
}

impl SshProvider {
    /// Parses `user@host[:port]`; the user defaults to root and the port to 22.
    pub fn parse(
        spec: &str,
        identity: Option<PathBuf>,
        host_key: HostKey,
    ) -> Result<SshProvider, ProviderError> {
        let (user, rest) = spec.split_once('@').unwrap_or(("root", spec));
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>().map_err(|_| {
                    ProviderError::Permanent(format!("--ssh {spec}: `{p}` is not a port number"))
                })?,
            ),
            _ => (rest, 22),
        };
        if user.is_empty() || host.is_empty() {
            return Err(ProviderError::Permanent(format!(
                "--ssh {spec}: expected user@host[:port]"
            )));
        }
        Ok(SshProvider {
            named: spec.to_string(),
            target: SshTarget {
                host: host.to_string(),
                port,
                user: user.to_string(),
                host_key,
                identity,
            },
        })
    }
}

#[async_trait]
impl Provider for SshProvider {
    fn kind(&self) -> &'static str {
        "ssh"
    }

    fn capabilities(&self) -> super::Capabilities {
        // The machine is the image: runs record which one they used.
        super::Capabilities {
            isolated: true,
            images: super::Images::Fixed(self.named.clone()),
        }
    }

    async fn create(&self, spec: &InstanceSpec) -> Result<Instance, ProviderError> {
        Ok(Instance {
            id: format!("ssh-{}", spec.meta.run_uuid),
            meta: spec.meta.clone(),
            access: Access::Ssh(self.target.clone()),
            boot_timeout: std::time::Duration::from_secs(30),
        })
    }

    /// The machine is not ours to destroy.
    async fn delete(&self, _id: &str) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Listed>, ProviderError> {
        Ok(Vec::new())
    }

    async fn capacity(&self) -> Result<Capacity, ProviderError> {
        Ok(Capacity {
            max_instances: 1,
            in_use: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let kh = HostKey::KnownHosts {
            file: "/k".into(),
            learn: false,
        };
        let t = |s| {
            SshProvider::parse(s, None, kh.clone())
                .map(|p| (p.target.user, p.target.host, p.target.port))
        };
        assert_eq!(t("me@box:2222").unwrap(), ("me".into(), "box".into(), 2222));
        assert_eq!(t("box").unwrap(), ("root".into(), "box".into(), 22));
        assert_eq!(t("me@[::1]:22").unwrap(), ("me".into(), "::1".into(), 22));
        assert!(t("me@box:notaport").is_err());
        assert!(t("@box").is_err());
    }
}
