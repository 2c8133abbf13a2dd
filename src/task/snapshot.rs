//! A task directory as it ran: one deterministic tar archive (entries sorted, times, owners
//! and permissions beyond the executable bit left out), named by its sha256 and kept once
//! per hash in `<data-dir>/tasks/`. The runner ships exactly these bytes to the guest, and
//! `ferrotron rerun` fetches them back, so a rerun runs what the farm ran, not what a
//! checkout holds today.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A packed task directory.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub archive: Vec<u8>,
    /// Lowercase hex sha256 of `archive`.
    pub sha256: String,
}

/// Packs the contents of `dir`. The same files give the same bytes (and hash) on any host
/// and after any checkout: entries go in path order with fixed times and owners; symlinks
/// are kept as links, never followed.
pub fn pack(dir: &Path) -> std::io::Result<Snapshot> {
    let mut paths = Vec::new();
    walk(dir, Path::new(""), &mut paths)?;
    paths.sort();
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Deterministic);
    for rel in &paths {
        b.append_path_with_name(dir.join(rel), rel)
            .map_err(|e| annotate(e, &dir.join(rel)))?;
    }
    let archive = b.into_inner()?;
    let sha256 = sha256_hex(&archive);
    Ok(Snapshot { archive, sha256 })
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let here = root.join(rel);
    for entry in std::fs::read_dir(&here).map_err(|e| annotate(e, &here))? {
        let entry = entry.map_err(|e| annotate(e, &here))?;
        let rel = rel.join(entry.file_name());
        let is_dir = entry.file_type().map_err(|e| annotate(e, &here))?.is_dir();
        out.push(rel.clone());
        if is_dir {
            walk(root, &rel, out)?;
        }
    }
    Ok(())
}

fn annotate(e: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// What a directory's files look like without reading them: paths, kinds, sizes, modes,
/// inodes and modification times. The same fingerprint means the same snapshot, short of a
/// file rewritten in place with the same size within the same nanosecond.
pub fn fingerprint(dir: &Path) -> std::io::Result<u64> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut paths = Vec::new();
    walk(dir, Path::new(""), &mut paths)?;
    paths.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for rel in &paths {
        let full = dir.join(rel);
        let m = std::fs::symlink_metadata(&full).map_err(|e| annotate(e, &full))?;
        rel.hash(&mut h);
        (m.len(), m.mode(), m.ino(), m.mtime(), m.mtime_nsec()).hash(&mut h);
    }
    Ok(h.finish())
}

/// The snapshots this process made, by directory: a farm starts thousands of runs of one
/// task, and each would otherwise read and hash the same files again.
#[derive(Default)]
pub struct Cache {
    seen: std::sync::Mutex<std::collections::HashMap<PathBuf, (u64, String)>>,
}

impl Cache {
    /// The sha256 of `dir` as it is now, its snapshot kept in `tasks_dir`: packed again only
    /// when the directory's fingerprint changed (or the kept file went away).
    pub fn snapshot(&self, dir: &Path, tasks_dir: &Path) -> std::io::Result<String> {
        let fp = fingerprint(dir)?;
        let known = self.seen.lock().ok().and_then(|m| m.get(dir).cloned());
        if let Some((seen_fp, sha)) = known
            && seen_fp == fp
            && path(tasks_dir, &sha).is_some_and(|p| p.is_file())
        {
            return Ok(sha);
        }
        let snap = pack(dir)?;
        keep(tasks_dir, &snap)?;
        if let Ok(mut m) = self.seen.lock() {
            m.insert(dir.to_path_buf(), (fp, snap.sha256.clone()));
        }
        Ok(snap.sha256)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `s` can name a snapshot: 64 lowercase hex digits, nothing a path could misuse.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Where the snapshot with this hash is kept below `tasks_dir`; `None` for a bad hash.
pub fn path(tasks_dir: &Path, sha256: &str) -> Option<PathBuf> {
    is_sha256(sha256).then(|| tasks_dir.join(format!("{sha256}.tar")))
}

/// Keeps `snap` in `tasks_dir` unless a snapshot of that hash is there already. Written
/// to a temporary file and renamed, so a reader never sees half an archive.
pub fn keep(tasks_dir: &Path, snap: &Snapshot) -> std::io::Result<PathBuf> {
    let dest = path(tasks_dir, &snap.sha256).expect("sha256_hex gives a valid hash");
    if dest.is_file() {
        return Ok(dest);
    }
    std::fs::create_dir_all(tasks_dir).map_err(|e| annotate(e, tasks_dir))?;
    let mut tmp = tempfile::NamedTempFile::new_in(tasks_dir).map_err(|e| annotate(e, tasks_dir))?;
    tmp.write_all(&snap.archive)
        .map_err(|e| annotate(e, tmp.path()))?;
    tmp.persist(&dest).map_err(|e| annotate(e.error, &dest))?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(dir: &Path) {
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("runtask.yml"), "name: x\n").unwrap();
        std::fs::write(dir.join("sub/b"), "b").unwrap();
        std::fs::write(dir.join("a"), "a").unwrap();
    }

    #[test]
    fn the_same_files_give_the_same_hash_whatever_their_times() {
        let (x, y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        task(x.path());
        std::thread::sleep(std::time::Duration::from_millis(20));
        task(y.path());
        let (a, b) = (pack(x.path()).unwrap(), pack(y.path()).unwrap());
        assert_eq!(a.sha256, b.sha256);
        std::fs::write(y.path().join("sub/b"), "changed").unwrap();
        assert_ne!(a.sha256, pack(y.path()).unwrap().sha256);
    }

    #[test]
    fn a_snapshot_is_kept_once_and_unpacks_to_the_task() {
        let (src, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        task(src.path());
        let snap = pack(src.path()).unwrap();
        let kept = keep(store.path(), &snap).unwrap();
        assert_eq!(kept, path(store.path(), &snap.sha256).unwrap());
        assert_eq!(keep(store.path(), &snap).unwrap(), kept);
        assert_eq!(std::fs::read_dir(store.path()).unwrap().count(), 1);
        let mut names: Vec<String> = tar::Archive::new(&std::fs::read(&kept).unwrap()[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        let sorted = {
            let mut s = names.clone();
            s.sort();
            s
        };
        assert_eq!(names, sorted);
        names.retain(|n| !n.ends_with('/'));
        assert!(names.contains(&"sub/b".to_string()), "{names:?}");
    }

    #[test]
    fn the_cache_packs_again_only_when_the_files_changed() {
        let (src, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        task(src.path());
        let cache = Cache::default();
        let first = cache.snapshot(src.path(), store.path()).unwrap();
        assert_eq!(first, pack(src.path()).unwrap().sha256);
        assert_eq!(cache.snapshot(src.path(), store.path()).unwrap(), first);
        std::fs::write(src.path().join("sub/b"), "changed").unwrap();
        let second = cache.snapshot(src.path(), store.path()).unwrap();
        assert_ne!(second, first);
        assert_eq!(second, pack(src.path()).unwrap().sha256);
        // A kept file that went away is made again.
        std::fs::remove_file(path(store.path(), &second).unwrap()).unwrap();
        assert_eq!(cache.snapshot(src.path(), store.path()).unwrap(), second);
        assert!(path(store.path(), &second).unwrap().is_file());
    }

    #[test]
    fn only_hex_hashes_name_a_file() {
        let d = Path::new("/d");
        assert!(path(d, "../../etc/passwd").is_none());
        assert!(path(d, &"A".repeat(64)).is_none());
        assert_eq!(
            path(d, &"a".repeat(64)).unwrap(),
            d.join(format!("{}.tar", "a".repeat(64)))
        );
    }
}
