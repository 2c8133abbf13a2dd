//! The per-instance NoCloud seed: an ISO9660 volume labelled `cidata`.
//!
//! It carries the run's keys to any image that boots from it: standard `user-data` and
//! `meta-data` for stock cloud images with cloud-init, and plain files under `ferrotron/`
//! for ferrotron's own images, whose light boot unit installs them without cloud-init's
//! ~15 s of start-up under TCG.

use std::path::Path;

use super::{InstanceSpec, ProviderError};

/// The cloud-init user-data that delivers the run's keys: `spec`'s client key may log in
/// as root, and the guest's host key is the pinned pair (cloud-init generates none). Cloud
/// backends pass the same text as their user data.
pub fn user_data(spec: &InstanceSpec) -> String {
    let indent = |s: &str| {
        s.lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    };
    format!(
        "#cloud-config\n\
         disable_root: false\n\
         users: []\n\
         ssh_deletekeys: true\n\
         ssh_genkeytypes: []\n\
         ssh_authorized_keys:\n  - \"{client}\"\n\
         ssh_keys:\n    ed25519_private: |\n{pem}    ed25519_public: \"{host}\"\n",
        client = spec.client_public_key.trim(),
        pem = indent(&spec.host_private_key_openssh),
        host = spec.host_public_key.trim(),
    )
}

/// Writes the seed for `spec` to `out`, staging its files in `root` (removed afterwards,
/// since it holds the guest's private host key).
pub async fn write(root: &Path, out: &Path, spec: &InstanceSpec) -> Result<(), ProviderError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let root = root.to_path_buf();
    let fdir = root.join("ferrotron");
    // Owner-only from the start: the tree and the seed hold the guest's private host key,
    // and the instance directory is world-readable (libvirt's qemu user walks it).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&fdir)
        .map_err(ProviderError::io("creating the seed tree"))?;
    let uuid = spec.meta.run_uuid;
    let short: String = uuid.simple().to_string().chars().take(8).collect();
    let user_data = user_data(spec);
    let files = [
        (
            root.join("meta-data"),
            format!("instance-id: ferrotron-{uuid}\nlocal-hostname: ferrotron-{short}\n"),
        ),
        (root.join("user-data"), user_data),
        (
            fdir.join("authorized_keys"),
            format!("{}\n", spec.client_public_key.trim()),
        ),
        (
            fdir.join("ssh_host_ed25519_key"),
            spec.host_private_key_openssh.clone(),
        ),
        (
            fdir.join("ssh_host_ed25519_key.pub"),
            format!("{}\n", spec.host_public_key.trim()),
        ),
    ];
    for (path, content) in files {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(content.as_bytes()))
            .map_err(ProviderError::io(format!("writing {}", path.display())))?;
    }
    let r = super::run_tool(
        tokio::process::Command::new("genisoimage")
            .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
            .arg(out)
            .arg(&root),
        "genisoimage",
    )
    .await;
    // The private host key must not linger in a plain file longer than needed.
    let _ = std::fs::remove_dir_all(&root);
    r?;
    // libvirt hands the disk to its qemu user when the domain starts (dynamic ownership).
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600))
        .map_err(ProviderError::io(format!("restricting {}", out.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn the_seed_holding_the_host_key_is_owner_only() {
        if std::process::Command::new("genisoimage")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED: genisoimage not installed");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let spec = InstanceSpec {
            meta: crate::provider::InstanceMeta {
                run_uuid: uuid::Uuid::now_v7(),
                owner: "t".into(),
                image: "i".into(),
                created_at: time::OffsetDateTime::now_utc(),
            },
            // The seed only carries the keys: their text is enough here.
            client_public_key: "ssh-ed25519 AAAAC3client test".into(),
            host_private_key_openssh:
                "-----BEGIN OPENSSH PRIVATE KEY-----\nhost\n-----END OPENSSH PRIVATE KEY-----\n"
                    .into(),
            host_public_key: "ssh-ed25519 AAAAC3host test".into(),
        };
        let out = tmp.path().join("seed.iso");
        write(&tmp.path().join("seed"), &out, &spec).await.unwrap();
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "seed mode {mode:o}");
        assert!(!tmp.path().join("seed").exists(), "staging tree removed");
    }
}
