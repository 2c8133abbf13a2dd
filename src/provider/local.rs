//! The local backend: an "instance" is a fresh directory on this host.
//!
//! This is developer mode. The task runs as the invoking user with no isolation at all; the
//! runner says so. Keeping it behind the same trait means `ferrotron run` takes exactly the
//! path production takes, minus the virtual machine.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{Access, Capacity, Instance, InstanceSpec, Listed, Provider, ProviderError};

const META_FILE: &str = "ferrotron-instance.json";

pub struct LocalProvider {
    root: PathBuf,
    max_instances: usize,
}

impl LocalProvider {
    /// `root` holds one directory per instance (normally `<data-dir>/local`).
    pub fn new(root: impl Into<PathBuf>, max_instances: usize) -> Self {
        LocalProvider {
            root: root.into(),
            max_instances: max_instances.max(1),
        }
    }

    fn dir(&self, id: &str) -> Result<PathBuf, ProviderError> {
        // Ids come back from list() or from our own create(); still, never let one name a
        // path outside the root.
        if id.is_empty() || id.contains(['/', '\\']) || id == "." || id == ".." {
            return Err(ProviderError::Permanent(format!(
                "invalid local instance id `{id}`"
            )));
        }
        Ok(self.root.join(id))
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities {
            isolated: false,
            images: super::Images::Fixed("local".into()),
        }
    }

    async fn create(&self, spec: &InstanceSpec) -> Result<Instance, ProviderError> {
        let id = format!("ferrotron-{}", spec.meta.run_uuid);
        let dir = self.dir(&id)?;
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(ProviderError::io(format!(
                "creating {}",
                self.root.display()
            )))?;
        // create_dir (not _all) so that two runs with the same uuid cannot share a directory.
        tokio::fs::create_dir(&dir).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                ProviderError::Permanent(format!(
                    "{} already exists: another run with uuid {} is using it",
                    dir.display(),
                    spec.meta.run_uuid
                ))
            } else {
                ProviderError::io(format!("creating {}", dir.display()))(e)
            }
        })?;
        let meta = serde_json::to_vec_pretty(&spec.meta).expect("metadata serialises");
        tokio::fs::write(dir.join(META_FILE), meta)
            .await
            .map_err(ProviderError::io(format!(
                "writing metadata in {}",
                dir.display()
            )))?;
        Ok(Instance {
            id,
            meta: spec.meta.clone(),
            access: Access::Local { root: dir },
            boot_timeout: std::time::Duration::from_secs(1),
        })
    }

    async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        let dir = self.dir(id)?;
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ProviderError::io(format!("removing {}", dir.display()))(e)),
        }
    }

    async fn list(&self) -> Result<Vec<Listed>, ProviderError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || list_dirs(&root))
            .await
            .map_err(|e| ProviderError::Permanent(format!("listing local instances: {e}")))?
    }

    async fn capacity(&self) -> Result<Capacity, ProviderError> {
        Ok(Capacity {
            max_instances: self.max_instances,
            in_use: self.list().await?.len(),
        })
    }
}

fn list_dirs(root: &Path) -> Result<Vec<Listed>, ProviderError> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ProviderError::io(format!("reading {}", root.display()))(e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("ferrotron-") {
            continue;
        }
        let meta = std::fs::read(entry.path().join(META_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        out.push(Listed { id: name, meta });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::InstanceMeta;

    fn spec(uuid: uuid::Uuid) -> InstanceSpec {
        InstanceSpec {
            meta: InstanceMeta {
                run_uuid: uuid,
                owner: "test".into(),
                image: "local".into(),
                created_at: time::OffsetDateTime::now_utc(),
            },
            client_public_key: String::new(),
            host_private_key_openssh: String::new(),
            host_public_key: String::new(),
        }
    }

    #[tokio::test]
    async fn create_list_delete_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let p = LocalProvider::new(tmp.path().join("local"), 4);
        let u = uuid::Uuid::now_v7();
        let inst = p.create(&spec(u)).await.unwrap();
        let Access::Local { root } = &inst.access else {
            panic!("local access expected")
        };
        assert!(root.is_dir());

        let listed = p.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].meta.as_ref().unwrap().run_uuid, u);
        assert_eq!(p.capacity().await.unwrap().in_use, 1);

        // A second run with the same uuid must not share the directory.
        assert!(p.create(&spec(u)).await.is_err());

        p.delete(&inst.id).await.unwrap();
        p.delete(&inst.id).await.unwrap(); // already gone is fine
        assert!(!root.exists());
        assert!(p.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn ids_cannot_escape_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let p = LocalProvider::new(tmp.path(), 1);
        assert!(p.delete("../etc").await.is_err());
        assert!(p.delete("..").await.is_err());
    }
}
