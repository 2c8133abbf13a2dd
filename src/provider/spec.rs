//! Which backend, with which settings: the one typed description of a provider that the
//! command line and the daemon's `providers:` entries both produce, and the one constructor
//! that turns it into a [`Provider`].
//!
//! Every settings struct refuses keys it does not know, so the daemon's config gets its
//! unknown-key errors from these types rather than from a hand-kept list.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::libvirt::{LibvirtConfig, LibvirtProvider, Network};
use super::local::LocalProvider;
use super::openstack::config::AddressKind;
use super::openstack::{OpenStackProvider, Overrides};
use super::sim::{SimConfig, SimProvider};
use super::ssh::SshProvider;
use super::{HostKey, Provider, ProviderError};

/// A provider, as configured. `kind` names the backend in YAML and JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Spec {
    /// Disposable libvirt domains cloned from a base image file.
    Libvirt(LibvirtSpec),
    /// Disposable Nova servers booted from Glance images.
    Openstack(OpenStackSpec),
    /// An existing machine the user names; nothing is created or destroyed.
    Ssh(SshSpec),
    /// This host, no isolation (developer mode).
    Local(LocalSpec),
    /// Simulated instances (a latency and failure model; runs happen in a directory).
    Sim(SimSpec),
}

/// Which accelerator libvirt domains use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when a real probe boots a kernel under it, else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// The libvirt connection URI used when none is given.
pub const DEFAULT_LIBVIRT_URI: &str = "qemu:///system";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibvirtSpec {
    /// `qemu:///system`, or another host's libvirt (`qemu+ssh://root@HOST/system`), which
    /// needs `storage_pool`.
    #[serde(default = "default_libvirt_uri")]
    pub uri: String,
    /// A storage pool (on libvirt's host) that holds the base images and gets each run's
    /// overlay and seed as volumes, made and deleted through libvirt. Unset: files in this
    /// host's data directory.
    #[serde(default)]
    pub storage_pool: Option<String>,
    /// Where guests are reached: the address passt's port forward binds on libvirt's host
    /// [default: the URI's host, or 127.0.0.1 for this one].
    #[serde(default)]
    pub address: Option<String>,
    /// Base image: a file, a recipe name, or DISTRO-RELEASE-FLAVOR[-ARCH] [default: tiny].
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub accel: Accel,
    /// `passt` (user networking, loopback port forward) or a libvirt network's name.
    #[serde(default = "default_network")]
    pub network: String,
    /// Storage pools finished base images are registered with (`image build --pool`).
    #[serde(default)]
    pub storage_pools: Vec<String>,
    /// Most instances at once [default: 64].
    #[serde(default)]
    pub max_instances: Option<usize>,
}

impl LibvirtSpec {
    /// The defaults for everything but the URI.
    pub fn new(uri: impl Into<String>) -> Self {
        LibvirtSpec {
            uri: uri.into(),
            image: None,
            storage_pool: None,
            address: None,
            accel: Accel::Auto,
            network: default_network(),
            storage_pools: Vec::new(),
            max_instances: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OpenStackSpec {
    /// The cloud's entry in clouds.yaml [default: $OS_CLOUD].
    #[serde(default)]
    pub cloud: Option<String>,
    /// These override the cloud's `ferrotron:` settings of the same name.
    #[serde(default)]
    pub flavor: Option<String>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    /// `fixed` or `floating`.
    #[serde(default)]
    pub address: Option<AddressKind>,
    #[serde(default)]
    pub max_instances: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSpec {
    /// `user@host[:port]`.
    pub target: String,
    /// The private key to log in with.
    #[serde(default)]
    pub identity: Option<PathBuf>,
    /// The OpenSSH known_hosts file the machine's host key must be in [default:
    /// ~/.ssh/known_hosts of the user running ferrotron].
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// Add the machine's host key to `known_hosts` when the file has none for it. A key
    /// that differs from the recorded one is refused all the same.
    #[serde(default)]
    pub learn_host_key: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LocalSpec {
    /// Most runs at once [default: 64].
    #[serde(default)]
    pub max_instances: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SimSpec {
    #[serde(default)]
    pub create_ms: u64,
    #[serde(default)]
    pub delete_ms: u64,
    #[serde(default)]
    pub jitter_ms: u64,
    /// Probability (0–1) that a create fails.
    #[serde(default)]
    pub failure_rate: f64,
    #[serde(default)]
    pub max_instances: Option<usize>,
}

fn default_libvirt_uri() -> String {
    DEFAULT_LIBVIRT_URI.into()
}
fn default_network() -> String {
    "passt".into()
}

/// Instances at once when a spec does not say (`ferrotron run` and friends).
const DEFAULT_MAX_INSTANCES: usize = 64;

/// Where a provider keeps its files on this host.
#[derive(Debug, Clone)]
pub struct Context {
    /// The data directory: instance files go below it.
    pub data_dir: PathBuf,
    /// The provider's configured name (simulated instances live in `sim/<name>`).
    pub name: String,
    /// Largest serial console log kept per instance, in bytes, by backends that keep one
    /// (libvirt); `None`: the backend's default. The guest writes it, so it is capped.
    pub console_cap: Option<u64>,
}

impl Context {
    pub fn new(data_dir: &Path) -> Self {
        Context {
            data_dir: data_dir.to_path_buf(),
            name: String::new(),
            console_cap: None,
        }
    }
}

impl Spec {
    /// The backend's name, as in `kind:`.
    pub fn kind(&self) -> &'static str {
        match self {
            Spec::Libvirt(_) => "libvirt",
            Spec::Openstack(_) => "openstack",
            Spec::Ssh(_) => "ssh",
            Spec::Local(_) => "local",
            Spec::Sim(_) => "sim",
        }
    }

    /// The configured instance limit, when the spec sets one.
    pub fn max_instances(&self) -> Option<usize> {
        match self {
            Spec::Libvirt(s) => s.max_instances,
            Spec::Openstack(s) => s.max_instances,
            Spec::Local(s) => s.max_instances,
            Spec::Sim(s) => s.max_instances,
            Spec::Ssh(_) => Some(1),
        }
    }

    /// Sets the instance limit when the spec leaves it out.
    pub fn default_max_instances(&mut self, n: usize) {
        let slot = match self {
            Spec::Libvirt(s) => &mut s.max_instances,
            Spec::Openstack(s) => &mut s.max_instances,
            Spec::Local(s) => &mut s.max_instances,
            Spec::Sim(s) => &mut s.max_instances,
            Spec::Ssh(_) => return,
        };
        slot.get_or_insert(n);
    }

    /// Whether a task runs inside a machine of its own, away from the host that runs
    /// ferrotron. Not for `local`: its tasks run as this process's user, on this host.
    pub fn isolates(&self) -> bool {
        !matches!(self, Spec::Local(_))
    }

    /// The image the spec names for its runs, if any.
    pub fn image(&self) -> Option<&str> {
        match self {
            Spec::Libvirt(s) => s.image.as_deref(),
            Spec::Openstack(s) => s.image.as_deref(),
            Spec::Ssh(_) | Spec::Local(_) | Spec::Sim(_) => None,
        }
    }

    /// Checks values serde cannot: the error is `field: why`.
    pub fn check(&self) -> Result<(), String> {
        if self.max_instances() == Some(0) {
            return Err("max_instances: must be at least 1".into());
        }
        match self {
            Spec::Sim(s) if !(0.0..=1.0).contains(&s.failure_rate) => Err(format!(
                "failure_rate: {} is not between 0 and 1",
                s.failure_rate
            )),
            Spec::Libvirt(s) if s.network.is_empty() => {
                Err("network: `passt` or a libvirt network's name".into())
            }
            Spec::Libvirt(s) if s.storage_pool.is_none() && remote_host(&s.uri).is_some() => {
                Err(format!(
                    "uri: `{}` names another host ({}), so runs' disks cannot be files of this \
                     one: set storage_pool to a libvirt storage pool on that host that holds \
                     the base images (README: Pools across backends and hosts)",
                    s.uri,
                    remote_host(&s.uri).unwrap_or_default()
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The host a libvirt URI connects to, when it is not this one (`qemu+ssh://HOST/system`).
fn remote_host(uri: &str) -> Option<&str> {
    let rest = uri.split_once("://")?.1;
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    (!host.is_empty() && host != "localhost").then_some(host)
}

/// `~/.ssh/known_hosts` of the user running ferrotron: `$HOME`, else their passwd entry
/// (a daemon's service manager may not set HOME).
fn default_known_hosts() -> Result<PathBuf, ProviderError> {
    match std::env::home_dir().filter(|h| !h.as_os_str().is_empty()) {
        Some(home) => Ok(home.join(".ssh").join("known_hosts")),
        None => Err(ProviderError::Permanent(
            "ssh: no home directory (HOME unset, no passwd entry), so no ~/.ssh/known_hosts \
             to check the host key against; name a file with --known-hosts (known_hosts: in \
             a providers: entry)"
                .into(),
        )),
    }
}

/// Builds the provider `spec` describes: the only place that names backend types.
///
/// Nothing is contacted yet (libvirt connects per call, OpenStack authenticates on first
/// use); configuration files (clouds.yaml) are read and checked here.
pub async fn build(spec: &Spec, cx: &Context) -> Result<Arc<dyn Provider>, ProviderError> {
    spec.check().map_err(ProviderError::Permanent)?;
    let max = spec.max_instances().unwrap_or(DEFAULT_MAX_INSTANCES);
    Ok(match spec {
        Spec::Libvirt(s) => {
            let network = match s.network.as_str() {
                "passt" => Network::Passt,
                name => Network::Libvirt(name.to_string()),
            };
            let mut p = LibvirtProvider::new(LibvirtConfig {
                max_instances: max,
                accel: s.accel,
                network,
                storage_pool: s.storage_pool.clone(),
                address: s
                    .address
                    .clone()
                    .or_else(|| remote_host(&s.uri).map(str::to_string))
                    .unwrap_or_else(|| "127.0.0.1".into()),
                ..LibvirtConfig::new(s.uri.clone(), cx.data_dir.join("instances"))
            })
            .with_pools(s.storage_pools.clone());
            if let Some(cap) = cx.console_cap {
                p = p.with_console_cap(cap);
            }
            Arc::new(p)
        }
        Spec::Openstack(s) => Arc::new(OpenStackProvider::connect(
            s.cloud.as_deref(),
            Overrides {
                flavor: s.flavor.clone(),
                network: s.network.clone(),
                image: s.image.clone(),
                address: s.address,
                max_instances: s.max_instances,
            },
        )?),
        Spec::Ssh(s) => {
            let known_hosts = match &s.known_hosts {
                Some(file) => file.clone(),
                None => default_known_hosts()?,
            };
            Arc::new(SshProvider::parse(
                &s.target,
                s.identity.clone(),
                HostKey::KnownHosts {
                    file: known_hosts,
                    learn: s.learn_host_key,
                },
            )?)
        }
        Spec::Local(_) => Arc::new(LocalProvider::new(cx.data_dir.join("local"), max)),
        Spec::Sim(s) => Arc::new(SimProvider::new(SimConfig {
            root: cx.data_dir.join("sim").join(&cx.name),
            max_instances: max,
            create_latency: Duration::from_millis(s.create_ms),
            delete_latency: Duration::from_millis(s.delete_ms),
            jitter: Duration::from_millis(s.jitter_ms),
            failure_rate: s.failure_rate,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_libvirt_uris_need_a_storage_pool_and_name_the_host() {
        let e = parse("{kind: libvirt, uri: 'qemu+ssh://root@host-b/system'}")
            .unwrap()
            .check()
            .unwrap_err();
        assert!(
            e.starts_with("uri: `qemu+ssh://root@host-b/system` names another host (host-b)"),
            "{e}"
        );
        for local in [
            "qemu:///system",
            "qemu+unix:///system",
            "qemu://localhost/system",
        ] {
            let spec = parse(&format!("{{kind: libvirt, uri: '{local}'}}")).unwrap();
            assert_eq!(spec.check(), Ok(()), "{local}");
        }
        assert!(e.contains("set storage_pool"), "{e}");
        // With a pool there, the disks are made there.
        let spec = parse("{kind: libvirt, uri: 'qemu+ssh://root@host-b/system', storage_pool: p}")
            .unwrap();
        assert_eq!(spec.check(), Ok(()));
        assert_eq!(
            remote_host("qemu+ssh://u@[fd00::2]:2222/system"),
            Some("fd00::2")
        );
    }

    fn parse(yaml: &str) -> Result<Spec, String> {
        serde_norway::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn each_kind_refuses_keys_it_does_not_know() {
        let s = parse("{kind: libvirt, uri: 'qemu:///session', accel: tcg}").unwrap();
        assert_eq!(
            s,
            Spec::Libvirt(LibvirtSpec {
                uri: "qemu:///session".into(),
                accel: Accel::Tcg,
                ..LibvirtSpec::new("")
            })
        );
        let e = parse("{kind: sim, uri: x}").unwrap_err();
        assert!(e.contains("unknown field `uri`"), "{e}");
        assert!(e.contains("create_ms"), "the known keys are listed: {e}");
        let s =
            parse("{kind: ssh, target: me@box, known_hosts: /k, learn_host_key: true}").unwrap();
        assert_eq!(
            s,
            Spec::Ssh(SshSpec {
                target: "me@box".into(),
                identity: None,
                known_hosts: Some("/k".into()),
                learn_host_key: true,
            })
        );
        let e = parse("{kind: ssh, target: box, known_host: /k}").unwrap_err();
        assert!(e.contains("unknown field `known_host`"), "{e}");
        let e = parse("{kind: cloud}").unwrap_err();
        assert!(e.contains("cloud") && e.contains("openstack"), "{e}");
    }

    #[test]
    fn values_serde_cannot_check() {
        let s = parse("{kind: sim, failure_rate: 2}").unwrap();
        assert!(s.check().unwrap_err().starts_with("failure_rate"));
        let s = parse("{kind: local, max_instances: 0}").unwrap();
        assert!(s.check().unwrap_err().starts_with("max_instances"));
        let e = parse("{kind: openstack, address: public}").unwrap_err();
        assert!(e.contains("fixed") && e.contains("floating"), "{e}");
    }

    #[tokio::test]
    async fn builds_what_the_spec_names() {
        let d = tempfile::tempdir().unwrap();
        let cx = Context::new(d.path());
        let p = build(&Spec::Local(LocalSpec::default()), &cx)
            .await
            .unwrap();
        assert_eq!(p.kind(), "local");
        assert!(!p.capabilities().isolated);
        let mut spec = parse("{kind: sim}").unwrap();
        spec.default_max_instances(3);
        let p = build(&spec, &cx).await.unwrap();
        assert_eq!(p.capacity().await.unwrap().max_instances, 3);
        let e = build(
            &Spec::Ssh(SshSpec {
                target: "root@".into(),
                identity: None,
                known_hosts: None,
                learn_host_key: false,
            }),
            &cx,
        )
        .await
        .err()
        .unwrap();
        assert!(e.to_string().contains("user@host"), "{e}");
    }
}
