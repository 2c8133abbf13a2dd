//! The libvirt backend: an instance is a transient domain booted from a qcow2 overlay of a
//! base image, with a per-run NoCloud seed carrying its keys.
//!
//! libvirt's C API blocks, so every call runs on the blocking pool. Per instance, files live
//! in `<state-dir>/<name>/` (overlay, seed, console log, metadata copy); the domain itself
//! carries ferrotron metadata in libvirt's `<metadata>`, so `list` finds instances after any
//! crash, and a directory left without a domain is found too.
//!
//! With a `storage_pool`, the disks are the pool's business instead (`volumes.rs`): base
//! images are found in the pool, the overlay and seed are made there through libvirt, and
//! this host keeps only the metadata copy and the console log. That is what lets `uri`
//! name another host (`qemu+ssh://HOST/system`): nothing the guest boots from is on ours.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use virt::connect::Connect;

mod probe;
mod volumes;

use super::seed;
use super::{
    Access, Capacity, HostKey, Instance, InstanceMeta, InstanceSpec, Listed, Loss, Provider,
    ProviderError, SshTarget,
};
use crate::base_image::BaseImage;
use crate::util::xml_escape;

const NAMESPACE: &str = "https://ferrotron.dev/xmlns/libvirt/instance/1";
const PREFIX: &str = "ferrotron-";
const META_FILE: &str = "instance.json";

pub use super::spec::Accel;

/// How guests are networked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Network {
    /// passt user networking with a loopback port forward to the guest's port 22: needs no
    /// bridge, no root networking, no firewall rules.
    #[default]
    Passt,
    /// A libvirt network by name (e.g. `default`); the guest is reached at the address its
    /// DHCP lease gives it, port 22.
    Libvirt(String),
}

#[derive(Debug, Clone)]
pub struct LibvirtConfig {
    /// `qemu:///system`: this host's libvirtd (the provider's spec refuses other hosts).
    pub uri: String,
    /// Per-instance files; must be reachable by libvirt's qemu user.
    pub state_dir: PathBuf,
    pub max_instances: usize,
    pub accel: Accel,
    pub network: Network,
    /// The storage pool runs' disks are volumes of, and base images are found in; `None`:
    /// files in `state_dir`, base images by path (this host's libvirt only).
    pub storage_pool: Option<String>,
    /// The address passt's port forward binds on libvirt's host, and that guests are reached
    /// at: 127.0.0.1 for this host.
    pub address: String,
}

impl LibvirtConfig {
    /// Defaults for everything but where libvirt is and where instance files go: up to 64
    /// instances, KVM when a probe shows it works, passt networking.
    pub fn new(uri: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        LibvirtConfig {
            uri: uri.into(),
            state_dir: state_dir.into(),
            max_instances: 64,
            accel: Accel::Auto,
            network: Network::Passt,
            storage_pool: None,
            address: "127.0.0.1".into(),
        }
    }
}

pub struct LibvirtProvider {
    cfg: LibvirtConfig,
    accel: tokio::sync::OnceCell<Accel>,
    /// Storage pools finished base images are uploaded to (`upload_image`).
    pools: Vec<String>,
    /// Bytes of serial console kept per instance (`console.log`).
    console_cap: u64,
}

fn virt_err(what: &str) -> impl FnOnce(virt::error::Error) -> ProviderError + '_ {
    move |e| ProviderError::Transient(format!("libvirt: {what}: {}", e.message()))
}

impl LibvirtProvider {
    pub fn new(cfg: LibvirtConfig) -> Self {
        // libvirt prints every error to stderr by default, even those we expect and handle
        // (a domain already gone); ours carry the message instead.
        virt::error::clear_error_callback();
        LibvirtProvider {
            cfg,
            accel: tokio::sync::OnceCell::new(),
            pools: Vec::new(),
            console_cap: super::DEFAULT_CONSOLE_CAP,
        }
    }

    /// Keeps at most `bytes` of each instance's serial console in its `console.log`.
    pub fn with_console_cap(mut self, bytes: u64) -> Self {
        self.console_cap = bytes.max(1);
        self
    }

    /// Storage pools (by name) that `upload_image` registers finished images with.
    pub fn with_pools(mut self, pools: Vec<String>) -> Self {
        self.pools = pools;
        self
    }

    fn instance_dir(&self, id: &str) -> Result<PathBuf, ProviderError> {
        if !id.starts_with(PREFIX) || id.contains(['/', '\\']) || id.contains("..") {
            return Err(ProviderError::Permanent(format!(
                "`{id}` is not a ferrotron instance name"
            )));
        }
        Ok(self.cfg.state_dir.join(id))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connect) -> Result<T, ProviderError> + Send + 'static,
    ) -> Result<T, ProviderError> {
        let uri = self.cfg.uri.clone();
        tokio::task::spawn_blocking(move || {
            let conn = Connect::open(Some(&uri)).map_err(|e| {
                ProviderError::Transient(format!(
                    "cannot connect to libvirt at {uri}: {} (is libvirtd running? \
                     provisioning/host-setup.sh starts it)",
                    e.message()
                ))
            })?;
            f(&conn)
        })
        .await
        .map_err(|e| ProviderError::Permanent(format!("libvirt worker failed: {e}")))?
    }

    async fn accel(&self, image: &BaseImage) -> Accel {
        *self
            .accel
            .get_or_init(|| async {
                match self.cfg.accel {
                    // Libvirt's host may be another machine: probe it through libvirt.
                    Accel::Auto if self.cfg.storage_pool.is_some() => {
                        let (uri, kernel) = (self.cfg.uri.clone(), image.boot.kernel.clone());
                        self.blocking(move |c| {
                            Ok(kernel.map_or(Accel::Tcg, |k| probe::kvm_through(c, &uri, &k)))
                        })
                        .await
                        .unwrap_or(Accel::Tcg)
                    }
                    Accel::Auto => probe::kvm_here(&self.cfg.state_dir, image).await,
                    other => other,
                }
            })
            .await
    }

    /// The base image, overlay and seed of a new instance: files made here, or volumes of
    /// the storage pool made through libvirt.
    async fn disks(
        &self,
        spec: &InstanceSpec,
        dir: &Path,
        name: &str,
    ) -> Result<(BaseImage, PathBuf, PathBuf), ProviderError> {
        let local_seed = dir.join("seed.iso");
        seed::write(&dir.join("seed"), &local_seed, spec).await?;
        let Some(pool) = self.cfg.storage_pool.clone() else {
            let image = BaseImage::open(Path::new(&spec.meta.image))
                .map_err(|e| ProviderError::Permanent(e.to_string()))?;
            check_reachable(&image.path)?;
            let overlay = dir.join("disk.qcow2");
            super::run_tool(
                tokio::process::Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                    .arg(&image.path)
                    .arg(&overlay),
                "qemu-img create",
            )
            .await?;
            return Ok((image, overlay, local_seed));
        };
        let bytes = tokio::fs::read(&local_seed)
            .await
            .map_err(ProviderError::io("reading the seed"))?;
        // The seed holds the guest's private host key: once in the pool, not kept here.
        let _ = tokio::fs::remove_file(&local_seed).await;
        let _ = tokio::fs::remove_dir_all(dir.join("seed")).await;
        let (requested, instance) = (spec.meta.image.clone(), name.to_string());
        self.blocking(move |c| {
            let image = volumes::find_image(c, &pool, &requested)?;
            let (overlay, seed) = volumes::make_run_volumes(c, &pool, &instance, &image, &bytes)?;
            Ok((image, overlay, seed))
        })
        .await
    }

    async fn create_inner(
        &self,
        spec: &InstanceSpec,
        dir: &Path,
        name: &str,
    ) -> Result<Instance, ProviderError> {
        let (image, overlay, seed) = self.disks(spec, dir, name).await?;
        let accel = self.accel(&image).await;
        let console = dir.join("console.log");
        let port = match self.cfg.network {
            Network::Passt => free_port()?,
            Network::Libvirt(_) => 22,
        };
        let xml = domain_xml(&DomainParams {
            name,
            spec,
            image: &image,
            overlay: &overlay,
            seed: &seed,
            port,
            accel,
            network: &self.cfg.network,
            address: &self.cfg.address,
        });
        tokio::fs::write(dir.join("domain.xml"), &xml)
            .await
            .map_err(ProviderError::io("writing domain.xml"))?;
        // Defined (persistent), not transient: a guest that powers itself off leaves the
        // domain shut off with the reason, so a lost session can be told from a domain
        // destroyed behind our back (`explain_loss`). `delete` undefines it.
        // Started paused so that the console copier is attached before the first byte.
        let (uri, n, cap, log) = (
            self.cfg.uri.clone(),
            name.to_string(),
            self.console_cap,
            console.clone(),
        );
        self.blocking(move |c| {
            let dom = c
                .define_domain_xml(&xml)
                .map_err(virt_err("defining the domain"))?;
            dom.create_with_flags(virt::sys::VIR_DOMAIN_START_PAUSED)
                .map_err(virt_err("starting the domain"))?;
            if let Err(e) = start_console_copier(&uri, &n, &log, cap) {
                tracing::warn!(domain = %n, "no console log: {e}");
            }
            dom.resume().map_err(virt_err("resuming the domain"))
        })
        .await?;
        let boot_timeout = Duration::from_secs(image.boot.boot_timeout_s);
        let host = match &self.cfg.network {
            Network::Passt => self.cfg.address.clone(),
            Network::Libvirt(_) => self.wait_for_lease(name, boot_timeout).await?,
        };
        Ok(Instance {
            id: name.to_string(),
            meta: spec.meta.clone(),
            access: Access::Ssh(SshTarget {
                host,
                port,
                user: image.boot.user.clone(),
                host_key: HostKey::Pinned(spec.host_public_key.clone()),
                identity: None,
            }),
            boot_timeout,
        })
    }

    /// The guest's IPv4 address from its DHCP lease on a libvirt network.
    async fn wait_for_lease(&self, name: &str, limit: Duration) -> Result<String, ProviderError> {
        let start = std::time::Instant::now();
        loop {
            let n = name.to_string();
            let addr = self
                .blocking(move |c| {
                    let dom = c
                        .lookup_domain_by_name(&n)
                        .map_err(virt_err("looking up the domain"))?;
                    let ifaces = dom
                        .interface_addresses(virt::sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
                        .unwrap_or_default();
                    Ok(ifaces
                        .into_iter()
                        .flat_map(|i| i.addrs)
                        .find(|a| a.typed == virt::sys::VIR_IP_ADDR_TYPE_IPV4 as i64)
                        .map(|a| a.addr))
                })
                .await?;
            if let Some(a) = addr {
                return Ok(a);
            }
            if start.elapsed() > limit {
                return Err(ProviderError::Transient(format!(
                    "{name} got no DHCP lease within {}s",
                    limit.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[async_trait]
impl Provider for LibvirtProvider {
    fn kind(&self) -> &'static str {
        "libvirt"
    }

    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities {
            isolated: true,
            // A pool's images are names libvirt resolves there, not files of this host.
            images: if self.cfg.storage_pool.is_some() {
                super::Images::Service { default: None }
            } else {
                super::Images::Files
            },
        }
    }

    async fn create(&self, spec: &InstanceSpec) -> Result<Instance, ProviderError> {
        let name = format!("{PREFIX}{}", spec.meta.run_uuid);
        let dir = self.instance_dir(&name)?;
        // Reach libvirtd before making any file: with it down, the cleanup below cannot
        // run either, and the next attempt would find this attempt's directory in its way.
        self.blocking(|_| Ok(())).await?;
        std::fs::create_dir_all(&self.cfg.state_dir).map_err(ProviderError::io(format!(
            "creating {}",
            self.cfg.state_dir.display()
        )))?;
        if self.cfg.storage_pool.is_none() {
            check_reachable(&self.cfg.state_dir)?;
        }
        std::fs::create_dir(&dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                ProviderError::Permanent(format!("instance {name} already exists"))
            } else {
                ProviderError::io(format!("creating {}", dir.display()))(e)
            }
        })?;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
        // The metadata copy on disk lets `list` attribute the files even if the domain
        // never started.
        let meta = serde_json::to_vec_pretty(&spec.meta).expect("metadata serialises");
        std::fs::write(dir.join(META_FILE), meta)
            .map_err(ProviderError::io(format!("writing {}", dir.display())))?;
        match self.create_inner(spec, &dir, &name).await {
            Ok(i) => Ok(i),
            Err(e) => {
                // Leave nothing half-made behind.
                let _ = self.delete(&name).await;
                Err(e)
            }
        }
    }

    async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        let dir = self.instance_dir(id)?;
        let name = id.to_string();
        self.blocking(move |c| {
            let dom = match c.lookup_domain_by_name(&name) {
                Ok(d) => d,
                Err(e)
                    if e.code()
                        == virt::error::ErrorNumberEnum::Known(
                            virt::error::ErrorNumber::NoDomain,
                        ) =>
                {
                    return Ok(());
                }
                Err(e) => return Err(virt_err("looking up the domain")(e)),
            };
            // Already stopped or already gone both count as destroyed.
            let benign = [
                virt::error::ErrorNumber::NoDomain,
                virt::error::ErrorNumber::OperationInvalid,
            ];
            if dom.is_active().unwrap_or(true)
                && let Err(e) = dom.destroy()
                && !benign
                    .into_iter()
                    .any(|b| e.code() == virt::error::ErrorNumberEnum::Known(b))
            {
                return Err(virt_err("destroying the domain")(e));
            }
            if dom.is_persistent().unwrap_or(false) {
                let _ = dom.undefine();
            }
            Ok(())
        })
        .await?;
        // The disks go after the domain that uses them; the metadata copy last, so that an
        // interrupted delete is still listed (and finished by the reaper).
        if let Some(pool) = self.cfg.storage_pool.clone() {
            let name = id.to_string();
            self.blocking(move |c| volumes::delete_run_volumes(c, &pool, &name))
                .await?;
        }
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ProviderError::io(format!("removing {}", dir.display()))(e)),
        }
    }

    async fn list(&self) -> Result<Vec<Listed>, ProviderError> {
        let mut found: Vec<Listed> = self
            .blocking(|c| {
                let doms = c.list_all_domains(0).map_err(virt_err("listing domains"))?;
                Ok(doms
                    .iter()
                    .filter_map(|d| {
                        let name = d.name().ok()?;
                        if !name.starts_with(PREFIX) {
                            return None;
                        }
                        let meta = d
                            .metadata(
                                virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                                Some(NAMESPACE),
                                0,
                            )
                            .ok()
                            .and_then(|xml| parse_metadata(&xml));
                        Some(Listed { id: name, meta })
                    })
                    .collect())
            })
            .await?;
        // Directories whose domain is gone (a crash between create and start, or a failed
        // delete) are instances too: their files leak otherwise.
        if let Ok(entries) = std::fs::read_dir(&self.cfg.state_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(PREFIX) && !found.iter().any(|l| l.id == name) {
                    let meta = std::fs::read(e.path().join(META_FILE))
                        .ok()
                        .and_then(|b| serde_json::from_slice::<InstanceMeta>(&b).ok());
                    found.push(Listed { id: name, meta });
                }
            }
        }
        // Volumes whose domain and directory are gone (a delete cut short between the two).
        if let Some(pool) = self.cfg.storage_pool.clone() {
            let with_volumes = self
                .blocking(move |c| volumes::instances_with_volumes(c, &pool))
                .await?;
            for name in with_volumes {
                if !found.iter().any(|l| l.id == name) {
                    found.push(Listed {
                        id: name,
                        meta: None,
                    });
                }
            }
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    async fn capacity(&self) -> Result<Capacity, ProviderError> {
        Ok(Capacity {
            max_instances: self.cfg.max_instances,
            in_use: self.list().await?.len(),
        })
    }

    async fn explain_loss(&self, id: &str) -> Option<Loss> {
        use virt::domain::{
            DomainPausedReason, DomainShutoffReason, DomainState, DomainStateReason,
        };
        use virt::enumutil::Enum;
        let name = id.to_string();
        let state = self
            .blocking(move |c| match c.lookup_domain_by_name(&name) {
                Ok(d) => Ok(Some(
                    d.state().map_err(virt_err("reading the domain state"))?,
                )),
                Err(e)
                    if e.code()
                        == virt::error::ErrorNumberEnum::Known(
                            virt::error::ErrorNumber::NoDomain,
                        ) =>
                {
                    Ok(None)
                }
                Err(e) => Err(virt_err("looking up the domain")(e)),
            })
            .await
            .ok()?;
        match state {
            None => Some(Loss::infra(format!(
                "domain {id} no longer exists: it was removed outside this run"
            ))),
            Some((Enum::Known(DomainState::Shutoff), reason)) => Some(match reason {
                Enum::Known(DomainStateReason::Shutoff(Enum::Known(
                    DomainShutoffReason::Shutdown,
                ))) => Loss {
                    why: format!("domain {id} is shut off: the guest powered itself off"),
                    by_guest: true,
                },
                other => Loss::infra(format!("domain {id} is shut off ({other:?})")),
            }),
            // Caught half-way through the power-off (the connection drops before qemu exits):
            // ferrotron never shuts a domain down gracefully, it destroys it, so the guest did.
            Some((Enum::Known(DomainState::Shutdown), _)) => Some(Loss {
                why: format!("domain {id} is shutting down: the guest powered itself off"),
                by_guest: true,
            }),
            Some((Enum::Known(DomainState::Running), _)) => None,
            // qemu stops a guest whose disk write failed (werror=stop) rather than corrupt it.
            Some((
                Enum::Known(DomainState::Paused),
                Enum::Known(DomainStateReason::Paused(Enum::Known(DomainPausedReason::IOError))),
            )) => Some(Loss::infra(format!(
                "domain {id} is paused: a write to its disk failed (is the filesystem of {} full?)",
                match &self.cfg.storage_pool {
                    Some(pool) => format!("storage pool `{pool}`"),
                    None => self
                        .instance_dir(id)
                        .map_or_else(|_| "its overlay".into(), |d| d.display().to_string()),
                }
            ))),
            Some((state, reason)) => Some(Loss::infra(format!(
                "domain {id} is {state:?} ({reason:?})"
            ))),
        }
    }

    async fn capture_disk(
        &self,
        id: &str,
        dest: &Path,
        grace: Duration,
    ) -> Result<(), ProviderError> {
        if let Some(pool) = &self.cfg.storage_pool {
            return Err(ProviderError::Permanent(format!(
                "image builds capture the disk on this host: build with a libvirt without \
                 `storage_pool` (here: `{pool}`) and upload the result with storage_pools"
            )));
        }
        let overlay = self.instance_dir(id)?.join("disk.qcow2");
        let deadline = std::time::Instant::now() + grace;
        loop {
            let name = id.to_string();
            // Domains are transient and destroyed on power-off: gone means off.
            let running = self
                .blocking(move |c| match c.lookup_domain_by_name(&name) {
                    Ok(d) => Ok(d.is_active().unwrap_or(false)),
                    Err(e)
                        if e.code()
                            == virt::error::ErrorNumberEnum::Known(
                                virt::error::ErrorNumber::NoDomain,
                            ) =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(virt_err("looking up the domain")(e)),
                })
                .await?;
            if !running {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(ProviderError::Permanent(format!(
                    "instance {id} did not power off within {}s",
                    grace.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // qemu-img reads the overlay through its backing chain; zstd compresses ~4x faster
        // than zlib at about the same size (QEMU >= 5.1 reads it).
        super::run_tool(
            tokio::process::Command::new("qemu-img")
                .args(["convert", "-q", "-c", "-O", "qcow2", "-o"])
                .arg("compression_type=zstd")
                .arg(&overlay)
                .arg(dest)
                .kill_on_drop(true),
            "qemu-img convert -c",
        )
        .await
    }

    async fn upload_image(&self, image: &BaseImage) -> Result<Vec<String>, ProviderError> {
        let mut files: Vec<PathBuf> = [&image.boot.initrd, &image.boot.kernel]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        files.push(image.path.with_extension("json"));
        // The disk last: a pool listing never shows it without its sidecars.
        files.push(image.path.clone());
        files.retain(|f| f.is_file());
        let mut done = Vec::new();
        for pool in &self.pools {
            let (pool, files) = (pool.clone(), files.clone());
            let placed = self
                .blocking(move |c| volumes::upload_to_pool(c, &pool, &files))
                .await?;
            done.extend(placed);
        }
        Ok(done)
    }
}

struct DomainParams<'a> {
    name: &'a str,
    spec: &'a InstanceSpec,
    image: &'a BaseImage,
    overlay: &'a Path,
    seed: &'a Path,
    port: u16,
    accel: Accel,
    network: &'a Network,
    address: &'a str,
}

fn domain_xml(p: &DomainParams<'_>) -> String {
    let e = |s: &str| xml_escape(s);
    let path = |p: &Path| xml_escape(&p.display().to_string());
    let meta = &p.spec.meta;
    let (dom_type, cpu) = match p.accel {
        Accel::Kvm => ("kvm", "<cpu mode='host-passthrough' check='none'/>"),
        _ => ("qemu", "<cpu mode='maximum' check='none'/>"),
    };
    let mut os = String::from("<type arch='x86_64' machine='pc'>hvm</type>");
    match &p.image.boot.kernel {
        Some(k) => {
            let _ = write!(os, "<kernel>{}</kernel>", path(k));
            if let Some(i) = &p.image.boot.initrd {
                let _ = write!(os, "<initrd>{}</initrd>", path(i));
            }
            if let Some(c) = &p.image.boot.cmdline {
                let _ = write!(os, "<cmdline>{}</cmdline>", e(c));
            }
        }
        None => os.push_str("<boot dev='hd'/>"),
    }
    format!(
        "<domain type='{dom_type}'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <metadata>
    <ferrotron:instance xmlns:ferrotron='{NAMESPACE}'>
      <ferrotron:run>{uuid}</ferrotron:run>
      <ferrotron:owner>{owner}</ferrotron:owner>
      <ferrotron:image>{image}</ferrotron:image>
      <ferrotron:created-at>{created}</ferrotron:created-at>
    </ferrotron:instance>
  </metadata>
  <memory unit='MiB'>{mem}</memory>
  <vcpu>{vcpus}</vcpu>
  <os>{os}</os>
  <features><acpi/></features>
  {cpu}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='unsafe'/>
      <source file='{overlay}'/>
      <backingStore type='file'><format type='qcow2'/><source file='{base}'/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{seed}'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    {interface}
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>
",
        name = e(p.name),
        uuid = meta.run_uuid,
        owner = e(&meta.owner),
        image = e(&meta.image),
        created = meta
            .created_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        mem = p.image.boot.memory_mib,
        vcpus = p.image.boot.vcpus,
        overlay = path(p.overlay),
        base = path(&p.image.path),
        seed = path(p.seed),
        interface = match p.network {
            Network::Passt => format!(
                "<interface type='user'>
      <backend type='passt'/>
      <model type='virtio'/>
      <portForward proto='tcp' address='{}'><range start='{}' to='22'/></portForward>
    </interface>",
                e(p.address),
                p.port
            ),
            Network::Libvirt(net) => format!(
                "<interface type='network'><source network='{}'/><model type='virtio'/></interface>",
                e(net)
            ),
        },
    )
}

/// Copies the domain's serial console into `log` (at most `cap` bytes, then a marked cut)
/// on a thread of its own, through libvirt's console stream: the guest decides how much it
/// prints, so libvirt never writes the file itself. The console keeps being read (and
/// dropped) past the cap so that the guest never blocks on it. The thread ends when the
/// domain stops (the stream ends) or libvirt goes away. Returns once the stream is open.
fn start_console_copier(uri: &str, name: &str, log: &Path, cap: u64) -> Result<(), String> {
    use std::io::Write;
    let conn = Connect::open(Some(uri)).map_err(|e| e.message().to_string())?;
    let dom = conn
        .lookup_domain_by_name(name)
        .map_err(|e| e.message().to_string())?;
    let stream = virt::stream::Stream::new(&conn, 0).map_err(|e| e.message().to_string())?;
    dom.open_console(None, &stream, virt::sys::VIR_DOMAIN_CONSOLE_FORCE)
        .map_err(|e| e.message().to_string())?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("opening {}: {e}", log.display()))?;
    let name = name.to_string();
    std::thread::Builder::new()
        .name(format!("console-{name}"))
        .spawn(move || {
            let _keep = (conn, dom);
            let mut buf = vec![0u8; 64 * 1024];
            let mut written = 0u64;
            let mut cut = false;
            loop {
                let n = match stream.recv(&mut buf) {
                    Ok(n) if n > 0 => n as usize,
                    _ => break,
                };
                if cut {
                    continue;
                }
                let room = cap.saturating_sub(written) as usize;
                let keep = n.min(room);
                let _ = file.write_all(&buf[..keep]);
                written += keep as u64;
                if keep < n {
                    cut = true;
                    let _ = writeln!(
                        file,
                        "\n[ferrotron: console log truncated at {cap} bytes (console_mib); \
                         the rest is not kept]"
                    );
                }
            }
            let _ = stream.finish();
            tracing::debug!(domain = %name, bytes = written, "console stream ended");
        })
        .map_err(|e| format!("starting the console thread: {e}"))?;
    Ok(())
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&apos;", "'")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// Reads our own metadata element back. libvirt returns it without our prefix (and may
/// use another one), so elements are found by local name.
fn parse_metadata(xml: &str) -> Option<InstanceMeta> {
    let field = |local: &str| -> Option<String> {
        let tag = format!("{local}>");
        let open = xml.match_indices(&tag).find_map(|(i, _)| {
            let before = xml[..i].chars().next_back()?;
            let closing = xml[..i].ends_with("</") || xml[..i].rsplit('<').next()?.starts_with('/');
            ((before == '<' || before == ':') && !closing).then_some(i + tag.len())
        })?;
        let close = xml[open..].find("</")? + open;
        Some(xml_unescape(&xml[open..close]))
    };
    Some(InstanceMeta {
        run_uuid: field("run")?.parse().ok()?,
        owner: field("owner")?,
        image: field("image")?,
        created_at: time::OffsetDateTime::parse(
            &field("created-at")?,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?,
    })
}

fn free_port() -> Result<u16, ProviderError> {
    // passt binds the port after we let it go; a race with another process is possible
    // and shows up as a failed start, which the runner retries.
    let l = TcpListener::bind("127.0.0.1:0").map_err(ProviderError::io("finding a free port"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(ProviderError::io("finding a free port"))
}

/// qemu runs as libvirt's unprivileged user, which must be able to walk to our files. Say
/// so plainly instead of letting libvirt fail with "Permission denied" later.
fn check_reachable(path: &Path) -> Result<(), ProviderError> {
    let mut cur = path.parent();
    while let Some(dir) = cur {
        if let Ok(meta) = std::fs::metadata(dir)
            && meta.permissions().mode() & 0o001 == 0
        {
            return Err(ProviderError::Permanent(format!(
                "{} is not reachable by libvirt's qemu user: {} is not world-executable \
                 (chmod o+x it, or use a data directory such as /var/lib/ferrotron)",
                path.display(),
                dir.display()
            )));
        }
        cur = dir.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_the_domain_xml() {
        let meta = InstanceMeta {
            run_uuid: uuid::Uuid::now_v7(),
            owner: "daemon <a&b>".into(),
            image: "260301_1030-tiny-1-base-x86_64.qcow2".into(),
            created_at: time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        };
        let spec = InstanceSpec {
            meta: meta.clone(),
            client_public_key: String::new(),
            host_private_key_openssh: String::new(),
            host_public_key: String::new(),
        };
        let image = BaseImage {
            path: "/img/base.qcow2".into(),
            name: None,
            boot: crate::base_image::BootInfo {
                kernel: Some("/img/k".into()),
                cmdline: Some("console=ttyS0 root=/dev/vda".into()),
                user: "root".into(),
                memory_mib: 256,
                vcpus: 1,
                boot_timeout_s: 60,
                ..Default::default()
            },
        };
        let xml = domain_xml(&DomainParams {
            name: "ferrotron-x",
            spec: &spec,
            image: &image,
            overlay: Path::new("/s/disk.qcow2"),
            seed: Path::new("/s/seed.iso"),
            port: 40022,
            accel: Accel::Tcg,
            network: &Network::Passt,
            address: "192.0.2.7",
        });
        assert!(xml.contains("<domain type='qemu'>"));
        assert!(xml.contains("<kernel>/img/k</kernel>"));
        assert!(xml.contains("address='192.0.2.7'><range start='40022' to='22'/>"));
        assert!(xml.contains("daemon &lt;a&amp;b&gt;"));
        assert_eq!(parse_metadata(&xml), Some(meta.clone()));
        // What libvirt hands back: our element, without our prefix.
        let returned = format!(
            "<instance>\n  <run>{}</run>\n  <owner>daemon &lt;a&amp;b&gt;</owner>\n  \
             <image>260301_1030-tiny-1-base-x86_64.qcow2</image>\n  \
             <created-at>2023-11-14T22:13:20Z</created-at>\n</instance>",
            meta.run_uuid
        );
        assert_eq!(parse_metadata(&returned), Some(meta));

        let on_net = domain_xml(&DomainParams {
            name: "ferrotron-x",
            spec: &spec,
            image: &image,
            overlay: Path::new("/s/disk.qcow2"),
            seed: Path::new("/s/seed.iso"),
            port: 22,
            accel: Accel::Kvm,
            network: &Network::Libvirt("default".into()),
            address: "127.0.0.1",
        });
        assert!(on_net.contains("<source network='default'/>"));
        assert!(!on_net.contains("<backend type='passt'/>"));
        assert!(on_net.contains("<domain type='kvm'>"));
    }

    #[test]
    fn instance_names_are_confined() {
        let p = LibvirtProvider::new(LibvirtConfig {
            max_instances: 1,
            accel: Accel::Tcg,
            ..LibvirtConfig::new("test:///default", "/tmp/x")
        });
        assert!(p.instance_dir("ferrotron-abc").is_ok());
        for bad in ["other", "ferrotron-../x", "ferrotron-a/b"] {
            assert!(p.instance_dir(bad).is_err(), "{bad}");
        }
    }
}
