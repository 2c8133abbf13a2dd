//! Storage-pool volumes, through libvirt's API only, so that the host libvirt runs on may be
//! another machine: base images found in a pool (with their sidecars), a run's overlay
//! (a qcow2 volume backed by the base image's) and NoCloud seed (uploaded), their removal,
//! and the upload of finished base images (`image build --pool`).
//!
//! A run's volumes are named after its instance (`ferrotron-UUID.qcow2`,
//! `ferrotron-UUID-seed.iso`), so that `list` and `delete` find them by name after any crash.

use std::io::Read;
use std::path::{Path, PathBuf};

use virt::connect::Connect;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

use super::{PREFIX, virt_err};
use crate::base_image::{self, BaseImage, ImageName};
use crate::provider::ProviderError;
use crate::util::xml_escape;

/// Bytes of an image sidecar read from a pool at most.
const SIDECAR_CAP: u64 = 256 * 1024;

pub fn overlay_name(instance: &str) -> String {
    format!("{instance}.qcow2")
}

pub fn seed_name(instance: &str) -> String {
    format!("{instance}-seed.iso")
}

/// The instance a run volume belongs to, from the volume's name.
pub fn instance_of(volume: &str) -> Option<&str> {
    let stem = volume
        .strip_suffix("-seed.iso")
        .or_else(|| volume.strip_suffix(".qcow2"))?;
    stem.starts_with(PREFIX).then_some(stem)
}

/// The pool, active and refreshed (files placed by hand show up).
pub fn open_pool(c: &Connect, pool: &str) -> Result<StoragePool, ProviderError> {
    let p = c.lookup_storage_pool_by_name(pool).map_err(|e| {
        ProviderError::Permanent(format!("libvirt storage pool `{pool}`: {}", e.message()))
    })?;
    if !p.is_active().unwrap_or(false) {
        return Err(ProviderError::Permanent(format!(
            "libvirt storage pool `{pool}` is not active (virsh pool-start {pool})"
        )));
    }
    let _ = p.refresh(0);
    Ok(p)
}

/// The base image `requested` names in the pool: a volume's file name or stem, or a
/// DISTRO[-RELEASE…] prefix of ferrotron's image names (newest wins); its boot settings
/// from the `.json` sidecar volume beside it, the kernel and initrd it names as volumes.
pub fn find_image(c: &Connect, pool: &str, requested: &str) -> Result<BaseImage, ProviderError> {
    let p = open_pool(c, pool)?;
    let names = p
        .list_volumes()
        .map_err(virt_err("listing the pool's volumes"))?;
    let wanted = requested.strip_suffix(".qcow2").unwrap_or(requested);
    let chosen = names
        .iter()
        .filter_map(|n| Some((ImageName::parse(n)?, n)))
        .filter(|(img, _)| {
            img.stem() == wanted
                || img.key() == wanted
                || img.key().starts_with(&format!("{wanted}-"))
        })
        .max_by(|a, b| a.0.stamp.cmp(&b.0.stamp))
        .ok_or_else(|| {
            ProviderError::Permanent(format!(
                "libvirt storage pool `{pool}` has no base image `{requested}` (its images: \
                 {}); upload one with `ferrotron image build --pool {pool}`",
                listed(&names)
            ))
        })?;
    let (name, volume) = (chosen.0, chosen.1);
    let vol_path = |n: &str| -> Option<PathBuf> {
        p.lookup_storage_vol_by_name(n)
            .ok()?
            .path()
            .ok()
            .map(PathBuf::from)
    };
    let path = vol_path(volume).ok_or_else(|| {
        ProviderError::Transient(format!("pool `{pool}`: volume {volume} went away"))
    })?;
    let sidecar = format!("{}.json", name.stem());
    let boot = match p.lookup_storage_vol_by_name(&sidecar) {
        Ok(v) => {
            let text = download(c, &v, SIDECAR_CAP)?;
            let text = String::from_utf8_lossy(&text);
            let origin = Path::new(&sidecar);
            base_image::parse_sidecar(&text, origin, |n| vol_path(n))
                .map_err(|e| ProviderError::Permanent(format!("pool `{pool}`: {e}")))?
        }
        Err(_) => base_image::default_boot(),
    };
    Ok(BaseImage {
        path,
        name: Some(name),
        boot,
    })
}

fn listed(names: &[String]) -> String {
    let images: Vec<&str> = names
        .iter()
        .filter(|n| ImageName::parse(n).is_some())
        .map(String::as_str)
        .collect();
    if images.is_empty() {
        "none".into()
    } else {
        images.join(", ")
    }
}

/// Makes the run's overlay (backed by `base`) and seed (`seed`'s bytes) as volumes of the
/// pool and returns their paths on libvirt's host. What was made is deleted on failure.
pub fn make_run_volumes(
    c: &Connect,
    pool: &str,
    instance: &str,
    base: &BaseImage,
    seed: &[u8],
) -> Result<(PathBuf, PathBuf), ProviderError> {
    let p = open_pool(c, pool)?;
    let base_vol = p
        .lookup_storage_vol_by_name(
            &base
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )
        .map_err(virt_err("looking up the base image's volume"))?;
    let capacity = base_vol
        .info()
        .map_err(virt_err("reading the base image's size"))?
        .capacity;
    let overlay_xml = format!(
        "<volume><name>{}</name><capacity unit='bytes'>{capacity}</capacity>\
         <target><format type='qcow2'/><permissions><mode>0600</mode></permissions></target>\
         <backingStore><path>{}</path><format type='qcow2'/></backingStore></volume>",
        xml_escape(&overlay_name(instance)),
        xml_escape(&base.path.display().to_string())
    );
    let overlay = StorageVol::create_xml(&p, &overlay_xml, 0)
        .map_err(virt_err("creating the overlay volume"))?;
    let made = (|| {
        let seed_vol = create_raw(&p, &seed_name(instance), seed.len() as u64)?;
        if let Err(e) = upload(c, &seed_vol, &mut &seed[..], seed.len() as u64) {
            let _ = seed_vol.delete(0);
            return Err(e);
        }
        let path = |v: &StorageVol| {
            v.path()
                .map(PathBuf::from)
                .map_err(virt_err("reading a volume's path"))
        };
        Ok((path(&overlay)?, path(&seed_vol)?))
    })();
    if made.is_err() {
        let _ = overlay.delete(0);
    }
    made
}

/// Deletes the run's volumes; those already gone are fine.
pub fn delete_run_volumes(c: &Connect, pool: &str, instance: &str) -> Result<(), ProviderError> {
    let p = open_pool(c, pool)?;
    for name in [overlay_name(instance), seed_name(instance)] {
        if let Ok(v) = p.lookup_storage_vol_by_name(&name) {
            v.delete(0).map_err(virt_err("deleting a run's volume"))?;
        }
    }
    Ok(())
}

/// The instances that have volumes in the pool.
pub fn instances_with_volumes(c: &Connect, pool: &str) -> Result<Vec<String>, ProviderError> {
    let p = open_pool(c, pool)?;
    let mut out: Vec<String> = p
        .list_volumes()
        .map_err(virt_err("listing the pool's volumes"))?
        .iter()
        .filter_map(|n| instance_of(n).map(str::to_string))
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

fn create_raw(p: &StoragePool, name: &str, size: u64) -> Result<StorageVol, ProviderError> {
    let xml = format!(
        "<volume><name>{}</name><capacity unit='bytes'>{size}</capacity>\
         <allocation unit='bytes'>0</allocation><target><format type='raw'/>\
         <permissions><mode>0600</mode></permissions></target></volume>",
        xml_escape(name)
    );
    StorageVol::create_xml(p, &xml, 0).map_err(virt_err("creating a storage volume"))
}

/// Sends `size` bytes of `from` into `vol` over a libvirt stream.
fn upload(
    c: &Connect,
    vol: &StorageVol,
    from: &mut dyn Read,
    size: u64,
) -> Result<(), ProviderError> {
    let stream = virt::stream::Stream::new(c, 0).map_err(virt_err("opening a stream"))?;
    vol.upload(&stream, 0, size, 0)
        .map_err(virt_err("starting the upload"))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = stream.abort();
                return Err(ProviderError::io("reading what is uploaded")(e));
            }
        };
        let mut off = 0;
        while off < n {
            match stream.send(&buf[off..n]) {
                Ok(sent) if sent > 0 => off += sent as usize,
                Ok(_) => {}
                Err(e) => {
                    let _ = stream.abort();
                    return Err(virt_err("uploading")(e));
                }
            }
        }
    }
    stream.finish().map_err(virt_err("finishing the upload"))
}

/// At most `cap` bytes of `vol`.
fn download(c: &Connect, vol: &StorageVol, cap: u64) -> Result<Vec<u8>, ProviderError> {
    let stream = virt::stream::Stream::new(c, 0).map_err(virt_err("opening a stream"))?;
    vol.download(&stream, 0, cap, 0)
        .map_err(virt_err("starting a download"))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.recv(&mut buf) {
            Ok(0) => break,
            Ok(n) if n > 0 => out.extend_from_slice(&buf[..n as usize]),
            Ok(_) => {}
            Err(e) => {
                let _ = stream.abort();
                return Err(virt_err("downloading")(e));
            }
        }
    }
    stream.finish().map_err(virt_err("finishing a download"))?;
    Ok(out)
}

/// Uploads `files` as volumes of the same names into storage pool `pool` (through libvirt's
/// stream API, so a remote libvirt works too). On failure the volumes made are deleted.
pub fn upload_to_pool(
    c: &Connect,
    pool: &str,
    files: &[PathBuf],
) -> Result<Vec<String>, ProviderError> {
    let p = open_pool(c, pool)?;
    let mut made: Vec<StorageVol> = Vec::new();
    let mut placed = Vec::new();
    let result = (|| {
        for f in files {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if p.lookup_storage_vol_by_name(&name).is_ok() {
                return Err(ProviderError::Permanent(format!(
                    "libvirt storage pool `{pool}` already has a volume {name}"
                )));
            }
            let size = std::fs::metadata(f)
                .map_err(ProviderError::io(format!("reading {}", f.display())))?
                .len();
            made.push(create_raw(&p, &name, size)?);
            let vol = made.last().expect("just pushed");
            let mut file = std::fs::File::open(f)
                .map_err(ProviderError::io(format!("opening {}", f.display())))?;
            upload(c, vol, &mut file, size)?;
            placed.push(format!(
                "pool {pool}: {}",
                vol.path().unwrap_or_else(|_| name.clone())
            ));
        }
        Ok(placed)
    })();
    if result.is_err() {
        for v in &made {
            let _ = v.delete(0);
        }
    }
    let _ = p.refresh(0);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_volumes_name_their_instance() {
        let i = "ferrotron-0193d0c4-0000-7000-8000-000000000001";
        assert_eq!(instance_of(&overlay_name(i)), Some(i));
        assert_eq!(instance_of(&seed_name(i)), Some(i));
        assert_eq!(instance_of("261204_0044-tiny-1-base-x86_64.qcow2"), None);
        assert_eq!(instance_of("ferrotron-x.json"), None);
    }
}
