//! Per-run SSH keys: a client key that may log in, and the guest's host key, both fresh for
//! every run. The host key travels to the guest in its seed, so the client knows it before
//! the first packet and pins it: there is no trust-on-first-use for disposable instances.

use std::path::Path;
use std::sync::Arc;

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey, PublicKey};

use super::GuestError;

#[derive(Clone)]
pub struct RunKeys {
    pub client: Arc<PrivateKey>,
    pub host: Arc<PrivateKey>,
}

impl RunKeys {
    pub fn generate() -> Result<RunKeys, GuestError> {
        let gen_key = || {
            PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
                .map(Arc::new)
                .map_err(|e| GuestError::Transfer(format!("generating an ed25519 key: {e}")))
        };
        Ok(RunKeys {
            client: gen_key()?,
            host: gen_key()?,
        })
    }

    pub fn client_public(&self) -> String {
        public_line(self.client.public_key())
    }

    pub fn host_public(&self) -> String {
        public_line(self.host.public_key())
    }

    pub fn host_private_openssh(&self) -> String {
        private_pem(&self.host)
    }

    /// Writes the client key (mode 0600) where `ssh -i` can use it, for `--no-destroy`.
    pub fn write_client_key(&self, path: &Path) -> Result<(), GuestError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(GuestError::io(format!("writing {}", path.display())))?;
        f.write_all(private_pem(&self.client).as_bytes())
            .map_err(GuestError::io(format!("writing {}", path.display())))
    }
}

fn public_line(key: &PublicKey) -> String {
    // An in-memory ed25519 key always encodes.
    key.to_openssh().unwrap_or_default()
}

fn private_pem(key: &PrivateKey) -> String {
    key.to_openssh(LineEnding::LF)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// Parses an OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
pub fn parse_public(line: &str) -> Result<PublicKey, GuestError> {
    PublicKey::from_openssh(line.trim())
        .map_err(|e| GuestError::Transfer(format!("invalid public key `{}`: {e}", line.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_and_round_trip() {
        let a = RunKeys::generate().unwrap();
        let b = RunKeys::generate().unwrap();
        assert_ne!(a.host_public(), b.host_public());
        assert_ne!(a.client_public(), a.host_public());
        assert!(a.host_public().starts_with("ssh-ed25519 "));
        assert!(
            a.host_private_openssh()
                .contains("BEGIN OPENSSH PRIVATE KEY")
        );
        let parsed = parse_public(&a.host_public()).unwrap();
        assert_eq!(parsed.key_data(), a.host.public_key().key_data());
        let back = PrivateKey::from_openssh(a.host_private_openssh()).unwrap();
        assert_eq!(back.public_key().key_data(), a.host.public_key().key_data());
    }
}
