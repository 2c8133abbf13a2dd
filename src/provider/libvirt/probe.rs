//! Whether KVM works on libvirt's host. On these hosts /dev/kvm exists but guests die with
//! an emulation failure, so the device's presence (or libvirt's domain capabilities) proves
//! nothing: a kernel booted once under KVM must get as far as looking for its root file
//! system. `kvm_here` runs qemu on this host (cached in the state directory); `kvm_through`
//! boots a throwaway domain through libvirt, for a host that may be another machine.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use virt::connect::Connect;

use super::Accel;
use crate::base_image::BaseImage;
use crate::util::xml_escape;

/// How long a probe kernel may take to reach its root file system.
const PROBE_LIMIT: Duration = Duration::from_secs(30);

/// What a kernel prints once it runs far enough to look for its root file system.
fn reached_root(console: &str) -> bool {
    console.contains("VFS: Unable to mount root") || console.contains("Kernel panic")
}

/// Boots the image's kernel once under KVM: if it reaches the point of looking for its
/// root file system, KVM works for real. On these hosts /dev/kvm exists but guests die
/// with an emulation failure, so the device's presence proves nothing.
pub async fn kvm_here(state_dir: &Path, image: &BaseImage) -> Accel {
    let cache = state_dir.join("accel-probe");
    if let Ok(s) = std::fs::read_to_string(&cache) {
        match s.trim() {
            "kvm" => return Accel::Kvm,
            "tcg" => return Accel::Tcg,
            _ => {}
        }
    }
    let verdict = match (&image.boot.kernel, Path::new("/dev/kvm").exists()) {
        (Some(kernel), true) => {
            let run = tokio::process::Command::new("qemu-system-x86_64")
                .args(["-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults"])
                .args([
                    "-display",
                    "none",
                    "-serial",
                    "stdio",
                    "-no-reboot",
                    "-kernel",
                ])
                .arg(kernel)
                .args(["-append", "console=ttyS0 panic=-1 root=/dev/nonexistent"])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output();
            match tokio::time::timeout(Duration::from_secs(30), run).await {
                Ok(Ok(out)) => {
                    let text = String::from_utf8_lossy(&out.stdout);
                    if reached_root(&text) {
                        Accel::Kvm
                    } else {
                        Accel::Tcg
                    }
                }
                _ => Accel::Tcg,
            }
        }
        _ => Accel::Tcg,
    };
    let _ = std::fs::write(
        &cache,
        if verdict == Accel::Kvm {
            "kvm\n"
        } else {
            "tcg\n"
        },
    );
    verdict
}

/// Boots `kernel` (a path on libvirt's host) in a transient KVM domain and reads its
/// console. The domain is not named like an instance (`list` never sees it) and is
/// destroyed however the probe ends; one that hangs is stopped after [`PROBE_LIMIT`].
pub fn kvm_through(c: &Connect, uri: &str, kernel: &Path) -> Accel {
    let name = format!("ferrotron.kvm-probe-{}", uuid::Uuid::new_v4().simple());
    let xml = format!(
        "<domain type='kvm'><name>{}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel>\
         <cmdline>console=ttyS0 panic=-1 root=/dev/nonexistent</cmdline></os>\
         <cpu mode='host-passthrough' check='none'/><on_poweroff>destroy</on_poweroff>\
         <on_reboot>destroy</on_reboot><on_crash>destroy</on_crash><devices>\
         <serial type='pty'><target port='0'/></serial>\
         <console type='pty'><target type='serial' port='0'/></console>\
         <memballoon model='none'/></devices></domain>",
        xml_escape(&name),
        xml_escape(&kernel.display().to_string())
    );
    // No KVM at all: libvirt refuses the domain.
    let dom = match c.create_domain_xml(&xml, virt::sys::VIR_DOMAIN_START_PAUSED) {
        Ok(d) => d,
        Err(e) => {
            tracing::info!(
                "KVM probe through libvirt: no KVM domain starts: {}",
                e.message()
            );
            return Accel::Tcg;
        }
    };
    let verdict = (|| {
        let stream = virt::stream::Stream::new(c, 0).ok()?;
        dom.open_console(None, &stream, virt::sys::VIR_DOMAIN_CONSOLE_FORCE)
            .ok()?;
        dom.resume().ok()?;
        // recv blocks until the domain prints or ends: a watchdog of its own (its own
        // connection) ends a guest that does neither.
        let (uri, n) = (uri.to_string(), name.clone());
        let started = Instant::now();
        std::thread::spawn(move || {
            std::thread::sleep(PROBE_LIMIT);
            if let Ok(c) = Connect::open(Some(&uri))
                && let Ok(d) = c.lookup_domain_by_name(&n)
            {
                let _ = d.destroy();
            }
        });
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        while started.elapsed() < PROBE_LIMIT {
            match stream.recv(&mut buf) {
                Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n as usize]),
                _ => break,
            }
            if reached_root(&String::from_utf8_lossy(&seen)) {
                return Some(Accel::Kvm);
            }
        }
        Some(Accel::Tcg)
    })()
    .unwrap_or(Accel::Tcg);
    let _ = dom.destroy();
    tracing::info!(?verdict, "KVM probe through libvirt");
    verdict
}
