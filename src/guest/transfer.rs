//! Files in and out of an instance, as tar streams over [`Session::exec`].
//!
//! Downloads are the dangerous direction: the guest is untrusted (a task may be hostile or
//! simply buggy). Everything that comes back is unpacked by [`unpack_safely`], which refuses
//! absolute paths, `..`, links that point outside the destination and special files, and
//! stops at a size cap. Nothing is ever written outside the destination directory.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use super::{Command, GuestError, Session, Stream, shell_quote};

/// What a download brought back.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Collected {
    pub files: usize,
    pub bytes: u64,
    /// Entries that were not written, with the reason: shown to the user and logged.
    pub refused: Vec<(String, String)>,
}

/// Copies the contents of `local` into `remote` (created if missing).
pub async fn put_dir(session: &dyn Session, local: &Path, remote: &str) -> Result<u64, GuestError> {
    let local = local.to_path_buf();
    let archive = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, GuestError> {
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        b.append_dir_all(".", &local)
            .map_err(GuestError::io(format!("packing {}", local.display())))?;
        b.into_inner()
            .map_err(GuestError::io(format!("packing {}", local.display())))
    })
    .await
    .map_err(|e| GuestError::Transfer(format!("packing task: {e}")))??;
    let size = archive.len() as u64;
    let q = shell_quote(remote);
    let cmd = Command::new(format!("mkdir -p {q} && tar -xf - -C {q}"), "/").with_stdin(archive);
    run_checked(session, &cmd, "upload", 1 << 20).await?;
    Ok(size)
}

/// Copies the contents of `remote` into the fresh directory `local`, at most `cap` bytes of
/// file data. A missing `remote` directory yields an empty result.
pub async fn get_dir(
    session: &dyn Session,
    remote: &str,
    local: &Path,
    cap: u64,
) -> Result<Collected, GuestError> {
    let spool = tempfile::tempfile().map_err(GuestError::io("creating download spool"))?;
    let mut spool_w = spool
        .try_clone()
        .map_err(GuestError::io("creating download spool"))?;
    let q = shell_quote(remote);
    let cmd = Command::new(format!("[ -d {q} ] || exit 0; tar -cf - -C {q} ."), "/");
    // tar adds headers and padding; allow for them so a cap of N bytes of files works.
    let wire_cap = cap.saturating_mul(2).saturating_add(1 << 20);
    let mut received = 0u64;
    let mut stderr = Vec::new();
    let status = session
        .exec(&cmd, &mut |stream, chunk| {
            match stream {
                Stream::Stdout => {
                    received += chunk.len() as u64;
                    if received > wire_cap {
                        return Err(GuestError::Transfer(format!(
                            "artifacts exceed the size cap of {cap} bytes"
                        )));
                    }
                    spool_w
                        .write_all(chunk)
                        .map_err(GuestError::io("writing download spool"))?;
                }
                Stream::Stderr => {
                    if stderr.len() < 4096 {
                        stderr.extend_from_slice(chunk);
                    }
                }
            }
            Ok(())
        })
        .await?;
    if status != 0 {
        return Err(GuestError::Remote {
            what: format!("tar -c {remote}"),
            status,
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        });
    }
    if received == 0 {
        std::fs::create_dir_all(local)
            .map_err(GuestError::io(format!("creating {}", local.display())))?;
        return Ok(Collected::default());
    }
    let local = local.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut spool = spool;
        std::io::Seek::rewind(&mut spool).map_err(GuestError::io("rewinding download spool"))?;
        unpack_safely(spool, &local, cap)
    })
    .await
    .map_err(|e| GuestError::Transfer(format!("unpacking: {e}")))?
}

/// Reads at most `max` bytes of a file on the instance.
pub async fn read_file(session: &dyn Session, path: &str, max: u64) -> Result<Vec<u8>, GuestError> {
    let cmd = Command::new(format!("head -c {max} {}", shell_quote(path)), "/");
    run_checked(session, &cmd, &format!("read {path}"), max).await
}

/// Runs `cmd`, returning its stdout (at most `max` bytes: the guest's `head` is not trusted
/// to stop), or an error carrying its stderr.
async fn run_checked(
    session: &dyn Session,
    cmd: &Command,
    what: &str,
    max: u64,
) -> Result<Vec<u8>, GuestError> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = session
        .exec(cmd, &mut |stream, chunk| {
            match stream {
                Stream::Stdout if (out.len() + chunk.len()) as u64 > max => {
                    return Err(GuestError::Transfer(format!(
                        "{what}: more than {max} bytes of output"
                    )));
                }
                Stream::Stdout => out.extend_from_slice(chunk),
                Stream::Stderr if err.len() < 4096 => err.extend_from_slice(chunk),
                Stream::Stderr => {}
            }
            Ok(())
        })
        .await?;
    if status != 0 {
        return Err(GuestError::Remote {
            what: what.to_string(),
            status,
            stderr: String::from_utf8_lossy(&err).trim().to_string(),
        });
    }
    Ok(out)
}

/// A relative path made only of normal components, or `None`.
fn clean_relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether a symlink at `link` (relative to the destination) pointing at `target` stays
/// inside the destination, judged lexically: nothing on disk is consulted.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: Vec<&std::ffi::OsStr> = link
        .parent()
        .map(|p| {
            p.components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    for c in target.components() {
        match c {
            Component::Normal(n) => depth.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Unpacks a tar stream into `dest` (created if needed) under the rules in the module docs.
pub fn unpack_safely(reader: impl Read, dest: &Path, cap: u64) -> Result<Collected, GuestError> {
    std::fs::create_dir_all(dest)
        .map_err(GuestError::io(format!("creating {}", dest.display())))?;
    let mut archive = tar::Archive::new(reader);
    let mut got = Collected::default();
    // Links are created last, so that no file written from the archive can go through one.
    let mut links = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| GuestError::Transfer(format!("reading artifacts archive: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| GuestError::Transfer(format!("reading artifacts archive: {e}")))?;
        let raw = entry
            .path()
            .map(|p| p.into_owned())
            .unwrap_or_else(|_| PathBuf::from("<undecodable name>"));
        let shown = raw.display().to_string();
        let Some(rel) = clean_relative(&raw) else {
            got.refused
                .push((shown, "path leaves the artifacts directory".into()));
            continue;
        };
        if rel.as_os_str().is_empty() {
            continue; // the archive root itself
        }
        let target = dest.join(&rel);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&target)
                .map_err(GuestError::io(format!("creating {}", target.display())))?;
        } else if kind.is_file() {
            let size = entry.header().size().unwrap_or(0);
            if got.bytes.saturating_add(size) > cap {
                return Err(GuestError::Transfer(format!(
                    "artifacts exceed the size cap of {cap} bytes (at {shown})"
                )));
            }
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(GuestError::io(format!("creating {}", parent.display())))?;
            }
            let mut f = std::fs::File::create(&target)
                .map_err(GuestError::io(format!("creating {}", target.display())))?;
            let n = std::io::copy(&mut (&mut entry).take(size), &mut f)
                .map_err(GuestError::io(format!("writing {}", target.display())))?;
            got.bytes += n;
            got.files += 1;
        } else if kind.is_symlink() {
            match entry.link_name() {
                Ok(Some(to)) if link_stays_inside(&rel, &to) => {
                    links.push((target, to.into_owned()))
                }
                Ok(Some(to)) => got.refused.push((
                    shown,
                    format!("symlink to {} leaves the artifacts directory", to.display()),
                )),
                _ => got.refused.push((shown, "symlink without a target".into())),
            }
        } else {
            got.refused
                .push((shown, "not a regular file, directory or symlink".into()));
        }
    }
    for (at, to) in links {
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent)
                .map_err(GuestError::io(format!("creating {}", parent.display())))?;
        }
        if let Err(e) = std::os::unix::fs::symlink(&to, &at) {
            got.refused.push((
                at.display().to_string(),
                format!("could not create link: {e}"),
            ));
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::local::LocalSession;

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &[u8], data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        // set_path refuses `..`, which is exactly what a hostile guest would not do.
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, name: &str, to: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, name, to).unwrap();
    }

    #[test]
    fn hostile_entries_are_refused_and_nothing_escapes() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        let tar = archive(|b| {
            file(b, b"ok.txt", b"fine");
            file(b, b"../escape.txt", b"evil");
            file(b, b"/abs.txt", b"evil");
            link(b, "etc", "/etc");
            link(b, "up", "../../x");
            link(b, "sub/inside", "../ok.txt");
            file(b, b"etc/passwd", b"through the link?");
        });
        let got = unpack_safely(&tar[..], &dest, 1 << 20).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("ok.txt")).unwrap(),
            "fine"
        );
        assert!(!tmp.path().join("escape.txt").exists());
        let refused: Vec<_> = got.refused.iter().map(|(p, _)| p.as_str()).collect();
        assert!(refused.contains(&"../escape.txt"), "{refused:?}");
        assert!(refused.contains(&"/abs.txt"), "{refused:?}");
        assert!(refused.contains(&"etc"), "{refused:?}");
        assert!(refused.contains(&"up"), "{refused:?}");
        // etc/passwd became a plain file in a real directory, not a write through /etc.
        assert!(!dest.join("etc").is_symlink());
        assert_eq!(
            std::fs::read_to_string(dest.join("etc/passwd")).unwrap(),
            "through the link?"
        );
        assert_eq!(
            std::fs::read_link(dest.join("sub/inside")).unwrap(),
            Path::new("../ok.txt")
        );
    }

    #[test]
    fn the_size_cap_stops_the_unpack() {
        let tmp = tempfile::tempdir().unwrap();
        let tar = archive(|b| {
            file(b, b"a", &[0u8; 600]);
            file(b, b"b", &[0u8; 600]);
        });
        let err = unpack_safely(&tar[..], tmp.path(), 1000).unwrap_err();
        assert!(err.to_string().contains("size cap"), "{err}");
    }

    #[tokio::test]
    async fn round_trip_through_a_session() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/f.txt"), "hello").unwrap();
        let s = LocalSession::new(tmp.path().to_str().unwrap());
        let remote = tmp.path().join("remote");
        put_dir(&s, &src, remote.to_str().unwrap()).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(remote.join("d/f.txt")).unwrap(),
            "hello"
        );

        let back = tmp.path().join("back");
        let got = get_dir(&s, remote.to_str().unwrap(), &back, 1 << 20)
            .await
            .unwrap();
        assert_eq!((got.files, got.bytes), (1, 5));
        assert_eq!(
            read_file(&s, remote.join("d/f.txt").to_str().unwrap(), 3)
                .await
                .unwrap(),
            b"hel"
        );

        let none = get_dir(&s, "/nonexistent/dir", &tmp.path().join("none"), 10)
            .await
            .unwrap();
        assert_eq!(none, Collected::default());
        assert!(read_file(&s, "/nonexistent/file", 3).await.is_err());
    }
}
