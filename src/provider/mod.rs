//! The provider seam: where instances come from.
//!
//! A provider answers a handful of questions and nothing else (compare Nodepool's
//! state-machine adapter): create an instance from an image with metadata, delete it, list
//! the instances it can see with their metadata, and say its capacity; optionally capture an
//! instance's disk and take in finished base images (the image build). Leaks are found by
//! metadata, never by memory: every instance names the run and the daemon that own it, so a
//! reaper that just started can still tell which instances are orphans.
//!
//! Nothing outside a backend module knows which backend it is. How to *reach* an instance is
//! data ([`Access`]), and the guest module turns it into a session.

pub mod libvirt;
pub mod local;
pub mod openstack;
pub mod seed;
pub mod sim;
pub mod spec;
pub mod ssh;

pub use spec::{Accel, Context, Spec, build};

/// Default cap on the serial console log a backend keeps per instance (the guest writes it).
pub const DEFAULT_CONSOLE_CAP: u64 = 100 * 1024 * 1024;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// What every instance carries so that it can be attributed after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceMeta {
    pub run_uuid: Uuid,
    /// The ferrotron process (daemon id or `run@host`) that created it.
    pub owner: String,
    pub image: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Everything a provider needs to create one instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub meta: InstanceMeta,
    /// Public key (OpenSSH line) that may log in; unused by the local provider.
    pub client_public_key: String,
    /// The guest's host key pair, generated per run so the client can pin it.
    pub host_private_key_openssh: String,
    pub host_public_key: String,
}

pub use crate::access::{Access, HostKey, SshTarget};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The provider's own name for it (domain name, server id, directory name).
    pub id: String,
    pub meta: InstanceMeta,
    pub access: Access,
    /// How long the runner should wait for the instance to answer.
    pub boot_timeout: std::time::Duration,
}

/// An instance as `list` sees it: enough to decide whether it leaked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub id: String,
    /// `None` when the provider found the instance but its metadata could not be read;
    /// such instances are reported, never destroyed automatically.
    pub meta: Option<InstanceMeta>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub max_instances: usize,
    pub in_use: usize,
}

/// What became of an instance the runner lost touch with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// For the run's error: what the provider sees.
    pub why: String,
    /// The guest did it (it powered itself off): the task's failure, not the provider's.
    pub by_guest: bool,
}

impl Loss {
    pub fn infra(why: impl Into<String>) -> Loss {
        Loss {
            why: why.into(),
            by_guest: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying later: quota, a busy host, a spawn that did not come up.
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help: a missing image, a bad configuration.
    #[error("{0}")]
    Permanent(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ProviderError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProviderError {
        let context = context.into();
        move |source| ProviderError::Io { context, source }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Transient(_))
    }
}

/// What callers need to know about a backend, so that none of them asks for its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Whether the task is kept off this host. `false`: it runs here, as the invoking user,
    /// and the runner says so.
    pub isolated: bool,
    /// What instances boot from, which decides what `--image` means.
    pub images: Images,
}

/// Where a provider's instances come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Images {
    /// Base image files on this host: a run's image is a file, a recipe name or
    /// DISTRO-RELEASE-FLAVOR[-ARCH], resolved by `image::recipe`.
    Files,
    /// The provider's own image service resolves names; `default` is the configured one.
    Service { default: Option<String> },
    /// None: every run records `label` as its image.
    Fixed(String),
}

/// A backend. Implementations live in this module's submodules and are built only by
/// [`build`] from a [`Spec`]; everything else holds an `Arc<dyn Provider>`.
///
/// Contract: `create` either returns an instance that carries `spec.meta` (so `list` finds
/// it after any crash) or leaves nothing behind; `delete` is idempotent; errors are
/// [`ProviderError::Transient`] when a later attempt may succeed (the runner retries the
/// spawn, the scheduler backs off) and [`ProviderError::Permanent`] when it cannot.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Short name used in run records and logs (`local`, `libvirt`, …). For people only:
    /// decisions go through [`Provider::capabilities`].
    fn kind(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            isolated: true,
            images: Images::Fixed(self.kind().to_string()),
        }
    }

    /// Checks, before a run is recorded, what `create` will need and the configuration
    /// alone can tell (an OpenStack flavor, say), so a bad setting is a usage error.
    fn preflight(&self) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn create(&self, spec: &InstanceSpec) -> Result<Instance, ProviderError>;

    /// Deleting an instance that is already gone is not an error.
    async fn delete(&self, id: &str) -> Result<(), ProviderError>;

    /// Every instance this provider can see that carries ferrotron metadata.
    async fn list(&self) -> Result<Vec<Listed>, ProviderError>;

    async fn capacity(&self) -> Result<Capacity, ProviderError>;

    /// Why a connection to instance `id` may have been lost (deleted behind our back, in an
    /// error state, powered off by its guest), for the run's error; `None` when there is
    /// nothing to say.
    async fn explain_loss(&self, _id: &str) -> Option<Loss> {
        None
    }

    /// Waits (up to `grace`) for instance `id` to power itself off, then writes its disk,
    /// flattened with the base image it was cloned from and compressed, to `dest` as a
    /// standalone qcow2. The image build uses it; the instance still has to be deleted.
    async fn capture_disk(
        &self,
        _id: &str,
        _dest: &Path,
        _grace: Duration,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::Permanent(format!(
            "the {} backend cannot capture an instance's disk (image builds need libvirt)",
            self.kind()
        )))
    }

    /// Publishes a finished base image where this provider's instances can use it (libvirt
    /// storage pools, a Glance image service). Returns where it went, one entry per place.
    async fn upload_image(
        &self,
        _image: &crate::base_image::BaseImage,
    ) -> Result<Vec<String>, ProviderError> {
        Err(ProviderError::Permanent(format!(
            "the {} backend does not take uploaded images",
            self.kind()
        )))
    }
}

/// Runs a helper program (qemu-img, genisoimage) to completion; its stderr becomes the
/// error.
pub(crate) async fn run_tool(
    cmd: &mut tokio::process::Command,
    what: &str,
) -> Result<(), ProviderError> {
    let out = cmd.stdin(Stdio::null()).output().await.map_err(|e| {
        ProviderError::Permanent(format!("cannot run {what}: {e} (is it installed?)"))
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ProviderError::Transient(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
