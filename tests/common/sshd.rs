//! An OpenSSH server of a test's own: its own port on 127.0.0.1, host keys and
//! authorized_keys in the test's directory, no service, killed on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";

/// An sshd on 127.0.0.1:port, killed when dropped.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "ferrotron-test",
            "-f",
        ])
        .arg(path)
        .status()
        .expect("ssh-keygen runs")
        .success();
    assert!(ok, "ssh-keygen -f {}", path.display());
}

/// Starts sshd with `host_keys`, letting in the key of `authorized`.
pub fn start_sshd(dir: &Path, host_keys: &[&Path], authorized: &Path, port: u16) -> Sshd {
    // sshd's privilege separation directory; a fresh host may not have it.
    std::fs::create_dir_all("/run/sshd").unwrap();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress 127.0.0.1\n\
             {}\
             AuthorizedKeysFile {}\n\
             UsePAM no\n\
             StrictModes no\n\
             PidFile none\n\
             PermitRootLogin prohibit-password\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n",
            host_keys
                .iter()
                .map(|k| format!("HostKey {}\n", k.display()))
                .collect::<String>(),
            authorized.display()
        ),
    )
    .unwrap();
    let log = dir.join(format!("sshd-{port}.log"));
    let mut child = Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .args(["-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("sshd starts");
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "sshd exited with {status}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "sshd never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Sshd { child, port, log }
}
