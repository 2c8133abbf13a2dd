//! The OpenStack backend: an instance is a Nova server booted from a Glance image, with
//! cloud-init user data carrying the run's keys and Nova metadata naming its run.
//!
//! - `config.rs`: clouds.yaml / secure.yaml / `OS_*`, read as the `openstack` CLI reads them;
//! - `auth.rs`: Keystone v3 tokens, the service catalog, and the HTTP client with retries;
//! - `nova.rs`, `glance.rs`, `network.rs`: the few calls used, thinly typed.
//!
//! Faults, as the runner sees them: quota exhausted, a server in ERROR (deleted first), a
//! server that never became ACTIVE, and 429/5xx that outlived the client's own retries are
//! [`ProviderError::Transient`]: the spawn is retried later. A bad configuration, a missing
//! image or flavor, or refused credentials are [`ProviderError::Permanent`].

pub mod auth;
pub mod config;
pub mod glance;
pub mod network;
pub mod nova;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;
use time::OffsetDateTime;

use super::{
    Access, Capacity, HostKey, Instance, InstanceMeta, InstanceSpec, Listed, Loss, Provider,
    ProviderError, SshTarget,
};
use auth::{ApiError, Client};
use config::{AddressKind, CloudConfig};
use nova::Server;

const PREFIX: &str = "ferrotron-";
/// Nova metadata keys (Nova allows 255 characters per key and value).
pub const META_RUN: &str = "ferrotron_run";
pub const META_OWNER: &str = "ferrotron_owner";
pub const META_IMAGE: &str = "ferrotron_image";
pub const META_CREATED: &str = "ferrotron_created_at";

/// Choices a provider spec (the command line, a daemon's `providers:` entry) may override
/// over the cloud's `ferrotron:` settings.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub flavor: Option<String>,
    pub network: Option<String>,
    pub image: Option<String>,
    pub address: Option<AddressKind>,
    pub max_instances: Option<usize>,
}

pub struct OpenStackProvider {
    client: Arc<Client>,
}

impl From<ApiError> for ProviderError {
    fn from(e: ApiError) -> Self {
        if e.is_quota() {
            ProviderError::Transient(format!("quota exceeded, retry later: {e}"))
        } else if e.is_transient() {
            ProviderError::Transient(e.to_string())
        } else {
            ProviderError::Permanent(e.to_string())
        }
    }
}

/// `err` about server `what`, keeping its class.
fn about(what: &str, e: ProviderError) -> ProviderError {
    match e {
        ProviderError::Transient(m) => ProviderError::Transient(format!("{what}: {m}")),
        ProviderError::Permanent(m) => ProviderError::Permanent(format!("{what}: {m}")),
        other => other,
    }
}

impl OpenStackProvider {
    /// Reads the configuration of `cloud` (else `OS_CLOUD`, …) and applies `overrides`.
    pub fn connect(cloud: Option<&str>, overrides: Overrides) -> Result<Self, ProviderError> {
        let cfg = config::load(cloud).map_err(|e| ProviderError::Permanent(e.to_string()))?;
        Self::new(cfg, overrides)
    }

    pub fn new(mut cfg: CloudConfig, overrides: Overrides) -> Result<Self, ProviderError> {
        if let Some(f) = overrides.flavor {
            cfg.settings.flavor = Some(f);
        }
        if let Some(n) = overrides.network {
            cfg.settings.network = Some(n);
        }
        if let Some(i) = overrides.image {
            cfg.settings.image = Some(i);
        }
        if let Some(a) = overrides.address {
            cfg.settings.address = a;
        }
        if let Some(m) = overrides.max_instances {
            cfg.settings.max_instances = m;
        }
        let client = Client::new(cfg).map_err(ProviderError::Permanent)?;
        Ok(OpenStackProvider {
            client: Arc::new(client),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn cloud(&self) -> &CloudConfig {
        &self.client.cloud
    }

    /// The image the cloud's settings name, for `--image` defaults.
    pub fn default_image(&self) -> Option<&str> {
        self.cloud().settings.image.as_deref()
    }

    fn settings(&self) -> &config::Settings {
        &self.client.cloud.settings
    }

    fn permanent(&self, m: impl std::fmt::Display) -> ProviderError {
        ProviderError::Permanent(format!("cloud `{}`: {m}", self.cloud().name))
    }

    async fn flavor(&self) -> Result<nova::Flavor, ProviderError> {
        let Some(which) = self.settings().flavor.clone() else {
            return Err(self.permanent(
                "no flavor: pass --flavor or set `ferrotron: {flavor: …}` in its clouds.yaml entry",
            ));
        };
        nova::find_flavor(&self.client, &which)
            .await?
            .ok_or_else(|| self.permanent(format!("no flavor `{which}`")))
    }

    fn metadata(&self, meta: &InstanceMeta) -> Result<BTreeMap<String, String>, ProviderError> {
        let created = meta
            .created_at
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| self.permanent(e))?;
        let m: BTreeMap<String, String> = [
            (META_RUN, meta.run_uuid.to_string()),
            (META_OWNER, meta.owner.clone()),
            (META_IMAGE, meta.image.clone()),
            (META_CREATED, created),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some((k, v)) = m.iter().find(|(_, v)| v.chars().count() > 255) {
            return Err(self.permanent(format!(
                "metadata {k} is longer than Nova's 255 characters: {v}"
            )));
        }
        Ok(m)
    }

    /// Polls until the server is ACTIVE; on any failure the caller deletes it.
    async fn wait_active(&self, id: &str, what: &str) -> Result<Server, ProviderError> {
        let deadline = Instant::now() + Duration::from_secs(self.settings().active_timeout);
        loop {
            let last_status = match nova::get_server(&self.client, id).await {
                Ok(None) => {
                    return Err(ProviderError::Transient(format!(
                        "{what} vanished while building (deleted outside ferrotron?)"
                    )));
                }
                Ok(Some(s)) if s.status == "ACTIVE" => return Ok(s),
                Ok(Some(s)) if s.status == "ERROR" => {
                    return Err(ProviderError::Transient(format!(
                        "{what} went to ERROR: {}; deleted it",
                        s.fault_text()
                    )));
                }
                Ok(Some(s)) => s.status,
                // A poll that failed after the client's own retries: keep polling.
                Err(e) if e.is_transient() => format!("unknown ({e})"),
                Err(e) => return Err(e.into()),
            };
            if Instant::now() >= deadline {
                return Err(ProviderError::Transient(format!(
                    "{what} not ACTIVE within {}s (status {last_status}); deleted it",
                    self.settings().active_timeout
                )));
            }
            tokio::time::sleep(self.settings().poll()).await;
        }
    }

    async fn address(&self, server: &Server, what: &str) -> Result<String, ProviderError> {
        let s = self.settings();
        let network = s.network.as_deref();
        match s.address {
            AddressKind::Fixed => server.address("fixed", network).ok_or_else(|| {
                ProviderError::Transient(format!(
                    "{what} is ACTIVE but has no fixed address{}",
                    network
                        .map(|n| format!(" on network `{n}`"))
                        .unwrap_or_default()
                ))
            }),
            AddressKind::Floating => {
                if let Some(a) = server.address("floating", None) {
                    return Ok(a);
                }
                let Some(pool) = s.floating_network.as_deref() else {
                    return Err(self.permanent(format!(
                        "{what} has no floating address and no `floating_network` is \
                         configured to allocate one from"
                    )));
                };
                let net = network::find_network(&self.client, pool)
                    .await?
                    .ok_or_else(|| self.permanent(format!("no network `{pool}`")))?;
                Ok(network::allocate_floating_ip(&self.client, &net, &server.id).await?)
            }
        }
    }

    async fn create_in(
        &self,
        spec: &InstanceSpec,
        name: &str,
        id: &str,
    ) -> Result<Instance, ProviderError> {
        let what = format!("server {name} ({id}) on cloud `{}`", self.cloud().name);
        let server = self.wait_active(id, &what).await?;
        let host = self.address(&server, &what).await?;
        let s = self.settings();
        Ok(Instance {
            id: id.to_string(),
            meta: spec.meta.clone(),
            access: Access::Ssh(SshTarget {
                host,
                port: s.ssh_port,
                user: s.ssh_user.clone(),
                host_key: HostKey::Pinned(spec.host_public_key.clone()),
                identity: None,
            }),
            boot_timeout: Duration::from_secs(s.boot_timeout),
        })
    }

    /// Deletes `id` and waits until Nova no longer shows it.
    async fn delete_and_wait(&self, id: &str) -> Result<(), ProviderError> {
        let what = format!("server {id} on cloud `{}`", self.cloud().name);
        if self.settings().address == AddressKind::Floating
            && let Err(e) = network::release_floating_ips(&self.client, id).await
        {
            tracing::warn!("{what}: releasing its floating IPs: {e}");
        }
        nova::delete_server(&self.client, id)
            .await
            .map_err(|e| about(&what, e.into()))?;
        let deadline = Instant::now() + Duration::from_secs(self.settings().delete_timeout);
        let mut asked = Instant::now();
        loop {
            let status = match nova::get_server(&self.client, id).await {
                Ok(None) => return Ok(()),
                Ok(Some(s)) => s.status,
                Err(e) if e.is_transient() => format!("unknown ({e})"),
                Err(e) => return Err(about(&what, e.into())),
            };
            if Instant::now() >= deadline {
                return Err(ProviderError::Transient(format!(
                    "{what} still exists {}s after deletion (status {status}); \
                     `ferrotron reap` will retry",
                    self.settings().delete_timeout
                )));
            }
            // A delete that failed leaves the server in ERROR: ask again, now and then.
            if status == "ERROR" && asked.elapsed() > Duration::from_secs(10) {
                let _ = nova::delete_server(&self.client, id).await;
                asked = Instant::now();
            }
            tokio::time::sleep(self.settings().poll()).await;
        }
    }
}

#[async_trait]
impl Provider for OpenStackProvider {
    fn kind(&self) -> &'static str {
        "openstack"
    }

    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities {
            isolated: true,
            images: super::Images::Service {
                default: self.default_image().map(String::from),
            },
        }
    }

    fn preflight(&self) -> Result<(), ProviderError> {
        match self.settings().flavor {
            Some(_) => Ok(()),
            None => Err(self.permanent(
                "no flavor: pass --flavor or set `ferrotron: {flavor: …}` in its clouds.yaml entry",
            )),
        }
    }

    async fn create(&self, spec: &InstanceSpec) -> Result<Instance, ProviderError> {
        let name = format!("{PREFIX}{}", spec.meta.run_uuid);
        let flavor = self.flavor().await?;
        let image_name = &spec.meta.image;
        let image = glance::find_image(&self.client, image_name)
            .await?
            .ok_or_else(|| self.permanent(format!("no active image `{image_name}` in Glance")))?;
        let mut server = json!({
            "name": name,
            "imageRef": image.id,
            "flavorRef": flavor.id,
            "user_data": crate::util::base64_encode(super::seed::user_data(spec)),
            "metadata": self.metadata(&spec.meta)?,
        });
        if let Some(n) = &self.settings().network {
            let id = network::find_network(&self.client, n)
                .await?
                .ok_or_else(|| self.permanent(format!("no network `{n}`")))?;
            server["networks"] = json!([{ "uuid": id }]);
        }
        let id = match nova::create_server(&self.client, &json!({ "server": server })).await {
            Ok(id) => id,
            Err(e) => {
                let ambiguous = e.status.is_none_or(|s| s.is_server_error());
                // The request may have been carried out even though its answer was lost:
                // whatever carries this run's name goes.
                if ambiguous
                    && let Ok(found) =
                        nova::list_servers(&self.client, Some(&format!("^{name}$"))).await
                {
                    for s in found.into_iter().filter(|s| s.name == name) {
                        let _ = self.delete_and_wait(&s.id).await;
                    }
                }
                return Err(about(&format!("creating server {name}"), e.into()));
            }
        };
        match self.create_in(spec, &name, &id).await {
            Ok(i) => Ok(i),
            Err(e) => {
                // Leave nothing half-made behind; the error says what happened.
                if let Err(d) = self.delete_and_wait(&id).await {
                    tracing::warn!("{d}");
                }
                Err(e)
            }
        }
    }

    async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        self.delete_and_wait(id).await
    }

    async fn list(&self) -> Result<Vec<Listed>, ProviderError> {
        let servers = nova::list_servers(&self.client, None)
            .await
            .map_err(|e| about("listing servers", e.into()))?;
        let mut out: Vec<Listed> = servers
            .into_iter()
            .filter(|s| s.name.starts_with(PREFIX) || s.metadata.contains_key(META_RUN))
            .map(|s| Listed {
                meta: parse_metadata(&s.metadata),
                id: s.id,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn capacity(&self) -> Result<Capacity, ProviderError> {
        let in_use = self.list().await?.len();
        let flavor = match self.settings().flavor {
            Some(_) => Some(self.flavor().await?),
            None => None,
        };
        let limits = nova::limits(&self.client).await?;
        let configured = self.settings().max_instances;
        let max_instances = match limits.headroom(flavor.as_ref()) {
            Some(h) => {
                configured.min(in_use.saturating_add(usize::try_from(h).unwrap_or(usize::MAX)))
            }
            None => configured,
        };
        Ok(Capacity {
            max_instances,
            in_use,
        })
    }

    async fn explain_loss(&self, id: &str) -> Option<Loss> {
        let what = format!("server {id} on cloud `{}`", self.cloud().name);
        match nova::get_server(&self.client, id).await {
            Ok(None) => Some(Loss::infra(format!(
                "{what} no longer exists: it was deleted outside this run"
            ))),
            Ok(Some(s))
                if s.task_state.as_deref() == Some("deleting")
                    || matches!(s.status.as_str(), "DELETED" | "SOFT_DELETED") =>
            {
                Some(Loss::infra(format!(
                    "{what} is being deleted outside this run"
                )))
            }
            // Nova marks a server whose guest powered itself off SHUTOFF.
            Ok(Some(s)) if s.status == "SHUTOFF" => Some(Loss {
                why: format!("{what} is SHUTOFF: the guest powered itself off"),
                by_guest: true,
            }),
            Ok(Some(s)) if s.status != "ACTIVE" => Some(Loss::infra(format!(
                "{what} is {}{}",
                s.status,
                s.fault
                    .as_ref()
                    .map(|_| format!(": {}", s.fault_text()))
                    .unwrap_or_default()
            ))),
            _ => None,
        }
    }
}

/// Reads ferrotron's metadata back; `None` unless all of it is there and well-formed.
pub fn parse_metadata(m: &BTreeMap<String, String>) -> Option<InstanceMeta> {
    Some(InstanceMeta {
        run_uuid: m.get(META_RUN)?.parse().ok()?,
        owner: m.get(META_OWNER)?.clone(),
        image: m.get(META_IMAGE)?.clone(),
        created_at: OffsetDateTime::parse(
            m.get(META_CREATED)?,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_partial_metadata_is_unattributed() {
        let cfg = config::load_from(
            Some("c"),
            &[],
            &[],
            &[
                ("OS_CLOUD_NAME".into(), "c".into()),
                ("OS_AUTH_URL".into(), "http://127.0.0.1:1/v3".into()),
                ("OS_USERNAME".into(), "u".into()),
                ("OS_PASSWORD".into(), "p".into()),
            ],
        )
        .unwrap();
        let p = OpenStackProvider::new(cfg, Overrides::default()).unwrap();
        let meta = InstanceMeta {
            run_uuid: uuid::Uuid::now_v7(),
            owner: "run@host".into(),
            image: "tiny".into(),
            created_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        };
        let mut m = p.metadata(&meta).unwrap();
        assert_eq!(parse_metadata(&m), Some(meta.clone()));
        m.remove(META_OWNER);
        assert_eq!(parse_metadata(&m), None);
        let long = InstanceMeta {
            owner: "x".repeat(300),
            ..meta
        };
        let e = p.metadata(&long).unwrap_err().to_string();
        assert!(
            e.contains("ferrotron_owner") && e.contains("cloud `c`"),
            "{e}"
        );
    }

    #[test]
    fn quota_is_transient_and_policy_is_permanent() {
        let e = |status: u16, message: &str| ApiError {
            cloud: "c".into(),
            method: reqwest::Method::POST,
            url: "http://n/servers".into(),
            status: Some(reqwest::StatusCode::from_u16(status).unwrap()),
            message: message.into(),
        };
        let q: ProviderError = e(403, "Quota exceeded for instances").into();
        assert!(
            q.is_transient() && q.to_string().contains("quota exceeded"),
            "{q}"
        );
        let p: ProviderError = e(403, "Policy does not allow").into();
        assert!(!p.is_transient());
        let s: ProviderError = e(503, "busy").into();
        assert!(s.is_transient());
    }
}
