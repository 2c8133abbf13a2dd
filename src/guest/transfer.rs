//! Files in and out of an instance, as tar streams over [`Session::exec`].
//!
//! Downloads are the dangerous direction: the guest is untrusted (a task may be hostile or
//! simply buggy, and as root it controls the guest's `tar` and shell). Everything that comes
//! back is spooled to a file in the run directory, then unpacked by [`unpack_safely`], which
//! refuses absolute paths, `..`, special files, links that point outside the destination and
//! any entry whose path (or link target) goes through a link of the same archive; it stops at
//! caps on bytes, entries and header sizes. Nothing is ever written outside the destination.

use std::collections::HashSet;
use std::io::{Read, Seek, Write};
use std::path::{Component, Path, PathBuf};

use super::{Command, GuestError, Session, Stream, shell_quote};

/// What a download may bring back at most. Exceeding `bytes` or `entries` stops the
/// download with [`GuestError::OverCap`]; an over-long path refuses that one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Bytes of file data.
    pub bytes: u64,
    /// Archive entries (files, directories, links, refused ones included).
    pub entries: u64,
    /// Bytes of one entry's path or link target.
    pub path_bytes: usize,
}

impl Caps {
    /// Default entry count cap: more files than any task's artifacts need.
    pub const DEFAULT_ENTRIES: u64 = 100_000;
    /// Default path length cap: Linux's PATH_MAX.
    pub const DEFAULT_PATH_BYTES: usize = 4096;

    /// `bytes` of data, with the default entry and path caps.
    pub fn bytes(bytes: u64) -> Caps {
        Caps {
            bytes,
            entries: Caps::DEFAULT_ENTRIES,
            path_bytes: Caps::DEFAULT_PATH_BYTES,
        }
    }
}

/// Refused entries listed by name at most; the rest are counted in one last line, so a
/// million refused entries cannot fill memory or the log.
const MAX_REFUSED_LISTED: usize = 100;

/// What a download brought back.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Collected {
    pub files: usize,
    pub bytes: u64,
    /// Entries that were not written, with the reason: shown to the user and logged.
    pub refused: Vec<(String, String)>,
    #[serde(skip)]
    refused_unlisted: usize,
}

impl Collected {
    fn refuse(&mut self, path: impl Into<String>, why: impl Into<String>) {
        if self.refused.len() < MAX_REFUSED_LISTED {
            self.refused.push((path.into(), why.into()));
        } else {
            self.refused_unlisted += 1;
        }
    }

    fn close(mut self) -> Collected {
        if self.refused_unlisted > 0 {
            let n = std::mem::take(&mut self.refused_unlisted);
            self.refused
                .push(("…".into(), format!("{n} more entries refused, not listed")));
        }
        self
    }
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
    put_archive(session, archive, remote).await
}

/// Unpacks the tar `archive` into `remote` (created if missing) on the guest.
pub async fn put_archive(
    session: &dyn Session,
    archive: Vec<u8>,
    remote: &str,
) -> Result<u64, GuestError> {
    let size = archive.len() as u64;
    let q = shell_quote(remote);
    let cmd = Command::new(format!("mkdir -p {q} && tar -xf - -C {q}"), "/").with_stdin(archive);
    run_checked(session, &cmd, "upload", 1 << 20).await?;
    Ok(size)
}

/// Copies the contents of `remote` into the fresh directory `local`, within `caps`. The
/// archive is spooled beside `local` (in the run directory, never in /tmp). A missing
/// `remote` directory yields an empty result. Dropping the future stops the download.
pub async fn get_dir(
    session: &dyn Session,
    remote: &str,
    local: &Path,
    caps: &Caps,
) -> Result<Collected, GuestError> {
    let spool_dir = local.parent().unwrap_or(local);
    std::fs::create_dir_all(spool_dir)
        .map_err(GuestError::io(format!("creating {}", spool_dir.display())))?;
    let spool = tempfile::tempfile_in(spool_dir).map_err(GuestError::io(format!(
        "creating the download spool in {}",
        spool_dir.display()
    )))?;
    let mut spool_w = spool
        .try_clone()
        .map_err(GuestError::io("creating download spool"))?;
    let q = shell_quote(remote);
    let cmd = Command::new(format!("[ -d {q} ] || exit 0; tar -cf - -C {q} ."), "/");
    // tar adds a header and padding per entry (and extension headers for long names);
    // allow for them so that a cap of N bytes of files works.
    let wire_cap = caps
        .bytes
        .saturating_mul(2)
        .saturating_add(caps.entries.saturating_mul(1536))
        .saturating_add(1 << 20);
    let mut received = 0u64;
    let mut stderr = Vec::new();
    let status = session
        .exec(&cmd, &mut |stream, chunk| {
            match stream {
                Stream::Stdout => {
                    received += chunk.len() as u64;
                    if received > wire_cap {
                        return Err(GuestError::OverCap(format!(
                            "artifacts exceed the size cap of {} bytes",
                            caps.bytes
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
    let (local, caps) = (local.to_path_buf(), *caps);
    tokio::task::spawn_blocking(move || {
        let mut spool = spool;
        std::io::Seek::rewind(&mut spool).map_err(GuestError::io("rewinding download spool"))?;
        unpack_safely(spool, &local, &caps)
    })
    .await
    .map_err(|e| GuestError::Transfer(format!("unpacking: {e}")))?
}

/// Reads at most `max` bytes of a file on the instance; a longer file is
/// [`GuestError::OverCap`].
pub async fn read_file(session: &dyn Session, path: &str, max: u64) -> Result<Vec<u8>, GuestError> {
    // One byte more than allowed tells "exactly max" from "longer".
    let cmd = Command::new(
        format!("head -c {} {}", max.saturating_add(1), shell_quote(path)),
        "/",
    );
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
                    return Err(GuestError::OverCap(format!(
                        "{what}: more than {max} bytes"
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

/// The first proper ancestor of `rel` that is a link of the archive.
fn linked_ancestor<'a>(rel: &'a Path, links: &HashSet<PathBuf>) -> Option<&'a Path> {
    rel.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .find(|a| links.contains(*a))
}

/// Why a symlink at `link` (relative to the destination) pointing at `target` must not be
/// made, judged lexically against the archive's own links (`links`, every symlink entry):
/// the target must stay inside the destination and must not pass through another link on
/// its way (`a -> .` then `b -> a/a/..` would climb out through `a`). With every parent of
/// `link` a real directory, that makes the lexical verdict the real one.
fn link_refusal(link: &Path, target: &Path, links: &HashSet<PathBuf>) -> Option<String> {
    if target.is_absolute() {
        return Some(format!("symlink to absolute path {}", target.display()));
    }
    let mut at: PathBuf = link.parent().map(Path::to_path_buf).unwrap_or_default();
    let parts: Vec<Component> = target.components().collect();
    for (i, c) in parts.iter().enumerate() {
        match c {
            Component::Normal(n) => at.push(n),
            Component::CurDir => continue,
            Component::ParentDir => {
                if !at.pop() {
                    return Some(format!(
                        "symlink to {} leaves the artifacts directory",
                        target.display()
                    ));
                }
                continue;
            }
            Component::RootDir | Component::Prefix(_) => {
                return Some(format!("symlink to {}", target.display()));
            }
        }
        if i + 1 < parts.len() && links.contains(&at) {
            return Some(format!(
                "symlink to {} goes through the archive's link {}",
                target.display(),
                at.display()
            ));
        }
    }
    None
}

/// Creates the directories of `rel` under `dest` one component at a time, refusing to pass
/// through anything that is not a real directory (a symlink above all).
fn make_dirs(dest: &Path, rel: &Path) -> Result<(), String> {
    let mut at = dest.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("{} is a symlink", at.display()));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("{} is not a directory", at.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&at).map_err(|e| format!("creating {}: {e}", at.display()))?
            }
            Err(e) => return Err(format!("{}: {e}", at.display())),
        }
    }
    Ok(())
}

/// Unpacks a tar stream into `dest` (created if needed) under the rules in the module docs.
/// Links are made last and only between real directories, so no file or directory from the
/// archive is ever written through a link, and no link is resolved through another.
pub fn unpack_safely(
    mut reader: impl Read + Seek,
    dest: &Path,
    caps: &Caps,
) -> Result<Collected, GuestError> {
    check_headers(&mut reader, caps)?;
    reader
        .rewind()
        .map_err(GuestError::io("rewinding the artifacts archive"))?;
    std::fs::create_dir_all(dest)
        .map_err(GuestError::io(format!("creating {}", dest.display())))?;
    let bad = |e: std::io::Error| GuestError::Transfer(format!("reading artifacts archive: {e}"));
    let mut archive = tar::Archive::new(reader);
    let mut got = Collected::default();
    // Every symlink entry's path, made or refused: nothing may go through any of them.
    let mut link_names: HashSet<PathBuf> = HashSet::new();
    let mut links = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw_bytes = entry.path_bytes();
        let shown = String::from_utf8_lossy(&raw_bytes[..raw_bytes.len().min(256)]).into_owned();
        if raw_bytes.len() > caps.path_bytes {
            got.refuse(
                format!("{shown}…"),
                format!("path longer than {} bytes", caps.path_bytes),
            );
            continue;
        }
        let raw = entry
            .path()
            .map(|p| p.into_owned())
            .unwrap_or_else(|_| PathBuf::from("<undecodable name>"));
        let Some(rel) = clean_relative(&raw) else {
            got.refuse(shown, "path leaves the artifacts directory");
            continue;
        };
        if rel.as_os_str().is_empty() {
            continue; // the archive root itself
        }
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            link_names.insert(rel.clone());
        }
        if let Some(a) = linked_ancestor(&rel, &link_names) {
            got.refuse(
                shown,
                format!("its parent {} is a symlink in the archive", a.display()),
            );
            continue;
        }
        let target = dest.join(&rel);
        if kind.is_dir() {
            if let Err(why) = make_dirs(dest, &rel) {
                got.refuse(shown, why);
            }
        } else if kind.is_file() {
            let size = entry.size();
            if got.bytes.saturating_add(size) > caps.bytes {
                return Err(GuestError::OverCap(format!(
                    "artifacts exceed the size cap of {} bytes (at {shown})",
                    caps.bytes
                )));
            }
            if let Err(why) = make_dirs(dest, rel.parent().unwrap_or(Path::new(""))) {
                got.refuse(shown, why);
                continue;
            }
            let opened = {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o644)
                    // Never write through a link, even one this code did not make.
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
            };
            let mut f = match opened {
                Ok(f) => f,
                Err(e) => {
                    got.refuse(shown, format!("cannot create: {e}"));
                    continue;
                }
            };
            let n = std::io::copy(&mut (&mut entry).take(size), &mut f)
                .map_err(GuestError::io(format!("writing {}", target.display())))?;
            got.bytes += n;
            got.files += 1;
        } else if kind.is_symlink() {
            match entry.link_name_bytes() {
                Some(b) if b.len() > caps.path_bytes => got.refuse(
                    shown,
                    format!("symlink target longer than {} bytes", caps.path_bytes),
                ),
                _ => match entry.link_name() {
                    Ok(Some(to)) => links.push((rel, to.into_owned(), shown)),
                    _ => got.refuse(shown, "symlink without a target"),
                },
            }
        } else {
            got.refuse(shown, "not a regular file, directory or symlink");
        }
    }
    // Judged against the whole archive's links: one that came later counts too.
    for (rel, to, shown) in links {
        if let Some(a) = linked_ancestor(&rel, &link_names) {
            got.refuse(
                shown,
                format!("its parent {} is a symlink in the archive", a.display()),
            );
            continue;
        }
        if let Some(why) = link_refusal(&rel, &to, &link_names) {
            got.refuse(shown, why);
            continue;
        }
        if let Err(why) = make_dirs(dest, rel.parent().unwrap_or(Path::new(""))) {
            got.refuse(shown, why);
            continue;
        }
        if let Err(e) = std::os::unix::fs::symlink(&to, dest.join(&rel)) {
            got.refuse(shown, format!("could not create link: {e}"));
        }
    }
    Ok(got.close())
}

/// A first pass over the headers alone (data is skipped by seeking): the entry count cap,
/// and extension headers (GNU long names, pax records) no bigger than a path may be. The
/// tar crate reads an extension header whole into memory, so an unchecked one of a
/// gigabyte would be a gigabyte of RAM.
fn check_headers(reader: &mut (impl Read + Seek), caps: &Caps) -> Result<(), GuestError> {
    let bad = |e: std::io::Error| GuestError::Transfer(format!("reading artifacts archive: {e}"));
    let extension_cap = caps.path_bytes as u64 + 4096;
    let mut archive = tar::Archive::new(reader);
    let mut members = 0u64;
    for entry in archive.entries_with_seek().map_err(bad)?.raw(true) {
        let entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        let extension = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        if extension {
            if entry.size() > extension_cap {
                return Err(GuestError::OverCap(format!(
                    "artifacts archive has an extension header of {} bytes (cap {extension_cap})",
                    entry.size()
                )));
            }
        } else {
            members += 1;
            if members > caps.entries {
                return Err(GuestError::OverCap(format!(
                    "artifacts exceed the cap of {} entries",
                    caps.entries
                )));
            }
        }
    }
    Ok(())
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
        // Raw header fields: the builder refuses `..`, a hostile guest does not.
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..to.len()].copy_from_slice(to.as_bytes());
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }

    fn unpack(tar: &[u8], dest: &Path, caps: &Caps) -> Result<Collected, GuestError> {
        unpack_safely(std::io::Cursor::new(tar), dest, caps)
    }

    /// Every path under `root` that is not under `inside` (files, links, directories).
    fn outside(root: &Path, inside: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.starts_with(inside) {
                    continue;
                }
                if e.file_type().unwrap().is_dir() {
                    todo.push(p.clone());
                }
                found.push(p);
            }
        }
        found
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
        let got = unpack(&tar, &dest, &Caps::bytes(1 << 20)).unwrap();
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
        // etc/passwd goes through the archive's link `etc`: refused, though that link was.
        assert!(refused.contains(&"etc/passwd"), "{refused:?}");
        assert!(!dest.join("etc").exists());
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
        let err = unpack(&tar, tmp.path(), &Caps::bytes(1000)).unwrap_err();
        assert!(matches!(err, GuestError::OverCap(_)), "{err}");
        assert!(err.to_string().contains("size cap"), "{err}");
    }

    /// The issue's repro: `a -> .` makes `a/a` the destination itself, so `a/a/c -> ../..`
    /// looks two levels deep but lands two levels above the destination; files under `c/`
    /// would then be written there.
    #[test]
    fn chained_symlinks_cannot_climb_out() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("box/out");
        for order in [0, 1] {
            let dest = dest.join(order.to_string());
            let tar = archive(|b| {
                if order == 1 {
                    file(b, b"c/escaped.txt", b"before the links");
                }
                link(b, "a", ".");
                link(b, "a/a/c", "../..");
                link(b, "b", "a/a/a/..");
                file(b, b"c/escaped.txt", b"evil");
                file(b, b"a/a/c/deeper.txt", b"evil");
            });
            let got = unpack(&tar, &dest, &Caps::bytes(1 << 20)).unwrap();
            let refused: Vec<_> = got.refused.iter().map(|(p, _)| p.as_str()).collect();
            assert!(refused.contains(&"a/a/c"), "{order}: {refused:?}");
            assert!(
                refused.contains(&"a/a/c/deeper.txt"),
                "{order}: {refused:?}"
            );
            assert!(refused.contains(&"b"), "{order}: {refused:?}");
            // `a -> .` itself stays inside and is kept; `c` is a real directory.
            assert_eq!(std::fs::read_link(dest.join("a")).unwrap(), Path::new("."));
            assert!(!dest.join("c").is_symlink());
            assert_eq!(
                std::fs::read_to_string(dest.join("c/escaped.txt")).unwrap(),
                "evil"
            );
            for p in walk(&dest) {
                let real = std::fs::canonicalize(&p).unwrap_or(p.clone());
                assert!(
                    real.starts_with(dest.canonicalize().unwrap()),
                    "{p:?} -> {real:?}"
                );
            }
        }
        assert_eq!(outside(tmp.path(), &dest), [tmp.path().join("box")]);
    }

    /// Everything under `root`, not following links.
    fn walk(root: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    todo.push(e.path());
                }
                found.push(e.path());
            }
        }
        found
    }

    #[test]
    fn entry_and_header_caps() {
        let tmp = tempfile::tempdir().unwrap();
        let caps = Caps {
            bytes: 1 << 20,
            entries: 10,
            path_bytes: 100,
        };
        let many = archive(|b| {
            for i in 0..11 {
                file(b, format!("f{i}").as_bytes(), b"x");
            }
        });
        let err = unpack(&many, &tmp.path().join("many"), &caps).unwrap_err();
        assert!(matches!(err, GuestError::OverCap(_)), "{err}");
        assert!(err.to_string().contains("10 entries"), "{err}");
        assert!(
            !tmp.path().join("many/f0").exists(),
            "nothing is unpacked past a cap"
        );

        let long = |len: usize| {
            archive(|b| {
                let mut h = tar::Header::new_gnu();
                h.set_size(1);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                // A GNU long-name extension header carries the long path.
                b.append_data(&mut h, "d/".repeat(len / 2) + "f", &b"x"[..])
                    .unwrap();
                file(b, b"short", b"ok");
            })
        };
        let got = unpack(&long(300), &tmp.path().join("long"), &caps).unwrap();
        assert_eq!(got.files, 1);
        assert!(
            got.refused[0].1.contains("longer than 100 bytes"),
            "{got:?}"
        );
        let err = unpack(&long(1 << 20), &tmp.path().join("huge"), &caps).unwrap_err();
        assert!(err.to_string().contains("extension header"), "{err}");

        // The refused list stays short whatever the archive holds.
        let refusals = archive(|b| {
            for i in 0..500 {
                file(b, format!("/abs{i}").as_bytes(), b"x");
            }
        });
        let got = unpack(&refusals, &tmp.path().join("r"), &Caps::bytes(1 << 20)).unwrap();
        assert_eq!(got.refused.len(), MAX_REFUSED_LISTED + 1);
        assert!(
            got.refused.last().unwrap().1.contains("400 more"),
            "{got:?}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Whatever mix of links and files over a few names an archive holds, nothing is
        /// created outside the destination and nothing inside resolves to outside it.
        #[test]
        fn no_archive_of_links_escapes(
            entries in proptest::collection::vec(
                (proptest::bool::ANY,
                 proptest::collection::vec(0..5usize, 1..4),
                 proptest::collection::vec(0..5usize, 1..5)),
                1..8,
            )
        ) {
            const PARTS: [&str; 5] = ["a", "b", "c", ".", ".."];
            let join = |ix: &[usize]| ix.iter().map(|&i| PARTS[i]).collect::<Vec<_>>().join("/");
            let tmp = tempfile::tempdir().unwrap();
            let dest = tmp.path().join("x/y/out");
            let tar = archive(|b| {
                for (is_link, name, target) in &entries {
                    let name = join(name);
                    if *is_link {
                        link(b, &name, &join(target));
                    } else {
                        file(b, format!("{name}/f").as_bytes(), b"data");
                    }
                }
            });
            let _ = unpack(&tar, &dest, &Caps::bytes(1 << 20));
            let real_dest = dest.canonicalize().unwrap();
            proptest::prop_assert_eq!(outside(tmp.path(), &dest).len(), 2, "{:?}", entries);
            for p in walk(&dest) {
                if let Ok(real) = std::fs::canonicalize(&p) {
                    proptest::prop_assert!(real.starts_with(&real_dest), "{:?} -> {:?}", p, real);
                }
            }
        }
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
        let got = get_dir(&s, remote.to_str().unwrap(), &back, &Caps::bytes(1 << 20))
            .await
            .unwrap();
        assert_eq!((got.files, got.bytes), (1, 5));
        let f = remote.join("d/f.txt");
        assert_eq!(
            read_file(&s, f.to_str().unwrap(), 5).await.unwrap(),
            b"hello"
        );
        // Longer than allowed is an error the runner blames on the task, not a cut value.
        let over = read_file(&s, f.to_str().unwrap(), 4).await.unwrap_err();
        assert!(matches!(over, GuestError::OverCap(_)), "{over}");

        let none = get_dir(
            &s,
            "/nonexistent/dir",
            &tmp.path().join("none"),
            &Caps::bytes(10),
        )
        .await
        .unwrap();
        assert_eq!(none, Collected::default());
        assert!(read_file(&s, "/nonexistent/file", 3).await.is_err());
    }
}
