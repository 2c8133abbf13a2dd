//! `ferrotron image prune --keep N`: old builds go, per DISTRO-RELEASE-FLAVOR-ARCH.
//!
//! The newest build of every key always stays (it is what `--image` and the scheduler pick),
//! and so does any image a live instance was cloned from. An image goes with its sidecars
//! (`.json`, `.vmlinux`, `.initrd`, `.log`), the disk first so that a scan never sees
//! sidecars whose disk is still listed. Logs of failed builds (`.failed/`) are kept for the
//! same number of builds per key.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::build::image_files;
use super::{ImageError, ImageName, list};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Images to remove, with all their files.
    pub remove: Vec<(ImageName, Vec<PathBuf>)>,
    /// Images kept only because a live instance uses them.
    pub in_use: Vec<PathBuf>,
    /// Failed-build logs to remove.
    pub failed_logs: Vec<PathBuf>,
}

/// What `prune --keep keep` would remove from `dir`. `in_use` holds image paths live
/// instances name (compared after canonicalising).
pub fn plan(dir: &Path, keep: usize, in_use: &HashSet<PathBuf>) -> Result<Plan, ImageError> {
    if keep == 0 {
        return Err(ImageError::Invalid {
            path: dir.to_path_buf(),
            reason: "--keep must be at least 1: the newest build of an image is never removed"
                .into(),
        });
    }
    let used: HashSet<PathBuf> = in_use
        .iter()
        .map(|p| p.canonicalize().unwrap_or_else(|_| p.clone()))
        .collect();
    let mut by_key: BTreeMap<String, Vec<(ImageName, PathBuf)>> = BTreeMap::new();
    for (name, path) in list(dir) {
        by_key.entry(name.key()).or_default().push((name, path));
    }
    let mut out = Plan {
        remove: Vec::new(),
        in_use: Vec::new(),
        failed_logs: Vec::new(),
    };
    for images in by_key.values() {
        // `list` gives newest first.
        for (name, path) in images.iter().skip(keep) {
            let canon = path.canonicalize().unwrap_or_else(|_| path.clone());
            if used.contains(&canon) {
                out.in_use.push(path.clone());
            } else {
                out.remove.push((name.clone(), image_files(path)));
            }
        }
    }
    // Failed builds' logs: STEM.log in .failed/, newest `keep` per key kept.
    let mut failed: BTreeMap<String, Vec<(String, PathBuf)>> = BTreeMap::new();
    for e in std::fs::read_dir(dir.join(".failed"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let file = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = file.strip_suffix(".log")
            && let Some(n) = ImageName::parse(&format!("{stem}.qcow2"))
        {
            failed.entry(n.key()).or_default().push((n.stamp, e.path()));
        }
    }
    for mut logs in failed.into_values() {
        logs.sort_by(|a, b| b.0.cmp(&a.0));
        out.failed_logs
            .extend(logs.into_iter().skip(keep).map(|(_, p)| p));
    }
    Ok(out)
}

/// Removes what `plan` lists; returns the files removed.
pub fn execute(plan: &Plan) -> Result<Vec<PathBuf>, ImageError> {
    let mut removed = Vec::new();
    for (_, files) in &plan.remove {
        for f in files {
            match std::fs::remove_file(f) {
                Ok(()) => removed.push(f.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ImageError::Io {
                        context: format!("removing {}", f.display()),
                        source,
                    });
                }
            }
        }
    }
    for f in &plan.failed_logs {
        if std::fs::remove_file(f).is_ok() {
            removed.push(f.clone());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_per_key_and_images_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let stems = [
            "260101_0000-tiny-1-base-x86_64",
            "260201_0000-tiny-1-base-x86_64",
            "260301_0000-tiny-1-base-x86_64",
            "260401_0000-tiny-1-base-x86_64",
            "260101_0000-debian-12-cloud-x86_64",
        ];
        for s in stems {
            for ext in ["qcow2", "json", "vmlinux", "log"] {
                std::fs::write(d.join(format!("{s}.{ext}")), b"x").unwrap();
            }
        }
        std::fs::create_dir(d.join(".failed")).unwrap();
        for s in ["260101_0000", "260102_0000", "260103_0000"] {
            std::fs::write(d.join(format!(".failed/{s}-tiny-1-base-x86_64.log")), b"").unwrap();
        }
        std::fs::write(d.join("unrelated.txt"), b"").unwrap();

        assert!(plan(d, 0, &HashSet::new()).is_err());
        let used: HashSet<PathBuf> = [d.join("260101_0000-tiny-1-base-x86_64.qcow2")].into();
        let p = plan(d, 2, &used).unwrap();
        let gone: Vec<String> = p.remove.iter().map(|(n, _)| n.stem()).collect();
        assert_eq!(gone, ["260201_0000-tiny-1-base-x86_64"]);
        assert_eq!(p.in_use.len(), 1);
        assert_eq!(p.remove[0].1.len(), 4);
        assert_eq!(p.failed_logs.len(), 1);
        assert!(p.failed_logs[0].ends_with(".failed/260101_0000-tiny-1-base-x86_64.log"));

        let removed = execute(&p).unwrap();
        assert_eq!(removed.len(), 5);
        // The disk goes first.
        assert!(removed[0].extension().unwrap() == "qcow2");
        let left: Vec<_> = list(d).into_iter().map(|(n, _)| n.stem()).collect();
        assert_eq!(left.len(), 4);
        assert!(d.join("unrelated.txt").exists());

        // --keep 1: only the newest per key survives (and the one in use).
        let p = plan(d, 1, &used).unwrap();
        execute(&p).unwrap();
        let left: Vec<_> = list(d).into_iter().map(|(n, _)| n.stem()).collect();
        assert_eq!(
            left,
            [
                "260401_0000-tiny-1-base-x86_64",
                "260101_0000-debian-12-cloud-x86_64",
                "260101_0000-tiny-1-base-x86_64"
            ]
        );
    }
}
