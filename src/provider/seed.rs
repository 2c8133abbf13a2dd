//! The per-instance NoCloud seed: an ISO9660 volume labelled `cidata`.
//!
//! It carries the run's keys to any image that boots from it: standard `user-data` and
//! `meta-data` for stock cloud images with cloud-init, and plain files under `ferrotron/`
//! for ferrotron's own images, whose light boot unit installs them without cloud-init's
//! ~15 s of start-up under TCG.

use std::path::Path;

use super::{InstanceSpec, ProviderError};

/// Writes the seed for `spec` to `out`, staging its files in `root` (removed afterwards,
/// since it holds the guest's private host key).
pub async fn write(root: &Path, out: &Path, spec: &InstanceSpec) -> Result<(), ProviderError> {
    let root = root.to_path_buf();
    let fdir = root.join("ferrotron");
    std::fs::create_dir_all(&fdir).map_err(ProviderError::io("creating the seed tree"))?;
    let uuid = spec.meta.run_uuid;
    let short: String = uuid.simple().to_string().chars().take(8).collect();
    let indent = |s: &str| {
        s.lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    };
    let user_data = format!(
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
    );
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
        std::fs::write(&path, content)
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
    r
}
