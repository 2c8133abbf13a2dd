//! OpenSSH known_hosts files: what a file says about a host's key, and adding one.
//!
//! Our own reader rather than russh's helpers: those count line numbers without the
//! comments (so "the old key is at line N" would point at the wrong line), split on single
//! spaces only, ignore `@revoked`, and fail the whole file on one malformed entry. OpenSSH
//! skips lines it cannot read; so does this.
//!
//! Host patterns follow sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT": comma-separated, `*` and `?`
//! wildcards, `!` negation, hashed `|1|salt|hmac` entries, and `[host]:port` for any port
//! but 22.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::{Algorithm, PublicKey};

/// The name a host is recorded under: `host` on port 22, else `[host]:port`.
pub fn host_entry_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// What a known_hosts file says about the key a server offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An entry for this host holds this key.
    Known { line: usize },
    /// An entry for this host holds another key of the same type: the key changed.
    Changed { line: usize },
    /// A `@revoked` entry names this key.
    Revoked { line: usize },
    /// No entry holds a key of this type for the host; `others` are the lines (and key
    /// types) the host is known by otherwise.
    Unknown { others: Vec<(usize, String)> },
}

struct Entry<'a> {
    line: usize,
    marker: Option<&'a str>,
    patterns: &'a str,
    key: PublicKey,
}

/// The entries of `text` that parse, with 1-based line numbers of the file as it is.
fn entries(text: &str) -> impl Iterator<Item = Entry<'_>> {
    text.lines().enumerate().filter_map(|(i, raw)| {
        let mut fields = raw.split_ascii_whitespace();
        let first = fields.next()?;
        if first.starts_with('#') {
            return None;
        }
        let (marker, patterns) = if first.starts_with('@') {
            (Some(first), fields.next()?)
        } else {
            (None, first)
        };
        let (kind, blob) = (fields.next()?, fields.next()?);
        let key = PublicKey::from_openssh(&format!("{kind} {blob}")).ok()?;
        Some(Entry {
            line: i + 1,
            marker,
            patterns,
            key,
        })
    })
}

/// Checks `key`, offered by `host:port`, against the known_hosts text.
pub fn check(text: &str, host: &str, port: u16, key: &PublicKey) -> Verdict {
    let name = host_entry_name(host, port);
    let mut known = None;
    let mut changed = None;
    let mut others = Vec::new();
    for e in entries(text).filter(|e| matches_host(e.patterns, &name)) {
        let same_key = e.key.key_data() == key.key_data();
        match e.marker {
            Some("@revoked") if same_key => return Verdict::Revoked { line: e.line },
            // Certificate authorities vouch for certificates, which we never accept.
            Some(_) => {}
            None if same_key => known = known.or(Some(e.line)),
            None if e.key.algorithm() == key.algorithm() => changed = changed.or(Some(e.line)),
            None => others.push((e.line, e.key.algorithm().as_str().to_string())),
        }
    }
    // As OpenSSH: one entry with the key is enough, whatever other lines say.
    match (known, changed) {
        (Some(line), _) => Verdict::Known { line },
        (None, Some(line)) => Verdict::Changed { line },
        (None, None) => Verdict::Unknown { others },
    }
}

/// The key types the file records for the host, so the client can ask for one of those
/// first (OpenSSH does the same): a host known by its ECDSA key must not be called unknown
/// because we happened to prefer Ed25519.
pub fn known_types(text: &str, host: &str, port: u16) -> Vec<Algorithm> {
    let name = host_entry_name(host, port);
    let mut out: Vec<Algorithm> = Vec::new();
    for e in entries(text).filter(|e| e.marker.is_none() && matches_host(e.patterns, &name)) {
        if !out.contains(&e.key.algorithm()) {
            out.push(e.key.algorithm());
        }
    }
    out
}

/// OpenSSH's rule: a negated pattern that matches rules the line out, else any match counts.
fn matches_host(patterns: &str, name: &str) -> bool {
    let mut hit = false;
    for p in patterns.split(',') {
        if let Some(neg) = p.strip_prefix('!') {
            if glob(&neg.to_ascii_lowercase(), name) {
                return false;
            }
        } else if p.starts_with("|1|") {
            hit |= hashed_matches(p, name);
        } else {
            hit |= glob(&p.to_ascii_lowercase(), name);
        }
    }
    hit
}

/// `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`, as `HashKnownHosts yes` writes.
fn hashed_matches(entry: &str, name: &str) -> bool {
    let mut parts = entry.split('|').skip(2);
    let (Some(salt), Some(hash)) = (parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (STANDARD.decode(salt), STANDARD.decode(hash)) else {
        return false;
    };
    let Ok(mac) = Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.chain_update(name.as_bytes())
        .verify_slice(&hash)
        .is_ok()
}

/// `*` any run of characters, `?` one; everything else literal.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Appends `host:port key` to the file, creating it (0600) and its directory (0700) as ssh
/// would. One write of one whole line, so a concurrent reader sees all of it or none.
pub fn append(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    // A hand-edited file may lack its final newline: ours must not join its last line.
    let needs_newline = match std::fs::read(path) {
        Ok(bytes) => !bytes.is_empty() && !bytes.ends_with(b"\n"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    let mut bare = key.clone();
    bare.set_comment("");
    let blob = bare
        .to_openssh()
        .map_err(|e| std::io::Error::other(format!("encoding the key: {e}")))?;
    let line = format!(
        "{}{} {}\n",
        if needs_newline { "\n" } else { "" },
        host_entry_name(host, port),
        blob.trim()
    );
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::PrivateKey;

    fn key() -> PublicKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone()
    }

    fn line(names: &str, k: &PublicKey) -> String {
        format!("{names} {}\n", k.to_openssh().unwrap())
    }

    /// `|1|salt|hash` for `name`, as `ssh-keygen -H` writes it.
    fn hashed(name: &str) -> String {
        let salt = [7u8; 20];
        let mac = Hmac::<sha1::Sha1>::new_from_slice(&salt)
            .unwrap()
            .chain_update(name.as_bytes())
            .finalize()
            .into_bytes();
        format!("|1|{}|{}", STANDARD.encode(salt), STANDARD.encode(mac))
    }

    #[test]
    fn ports_other_than_22_use_the_bracketed_name() {
        let k = key();
        let text = line("[box]:2222", &k);
        assert_eq!(check(&text, "box", 2222, &k), Verdict::Known { line: 1 });
        // The same host on port 22 is another entry altogether.
        assert!(matches!(
            check(&text, "box", 22, &k),
            Verdict::Unknown { .. }
        ));
        assert_eq!(
            check(&line("box", &k), "BOX", 22, &k),
            Verdict::Known { line: 1 }
        );
    }

    #[test]
    fn line_numbers_count_comments_and_blank_lines() {
        let (old, new) = (key(), key());
        let text = format!(
            "# my hosts\n\nother {}\nbroken line\n{}",
            old.to_openssh().unwrap(),
            line("a,box,c", &old)
        );
        assert_eq!(check(&text, "box", 22, &new), Verdict::Changed { line: 5 });
        assert_eq!(check(&text, "box", 22, &old), Verdict::Known { line: 5 });
    }

    #[test]
    fn hashed_entries_match_their_host_only() {
        let k = key();
        let text = line(&hashed("[10.0.0.5]:2222"), &k);
        assert_eq!(
            check(&text, "10.0.0.5", 2222, &k),
            Verdict::Known { line: 1 }
        );
        assert!(matches!(
            check(&text, "10.0.0.6", 2222, &k),
            Verdict::Unknown { .. }
        ));
        assert_eq!(
            check(&text, "10.0.0.5", 2222, &key()),
            Verdict::Changed { line: 1 }
        );
    }

    #[test]
    fn reads_what_ssh_keygen_hashed() {
        // `ssh-keygen -H` over `[10.0.0.5]:2222 ssh-ed25519 …` (OpenSSH 10.0).
        let text = "|1|WHPifD/i0mcJAFwAlE8830NXYQk=|9y1Yt4eNYdwzOQoRCoR5LVfBIOk= ssh-ed25519 \
                    AAAAC3NzaC1lZDI1NTE5AAAAIKCBmuRaANh3IzMbmHGMfTpdUvcqJhxkU3uV8GiLgba1\n";
        let k = PublicKey::from_openssh(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKCBmuRaANh3IzMbmHGMfTpdUvcqJhxkU3uV8GiLgba1",
        )
        .unwrap();
        assert_eq!(
            check(text, "10.0.0.5", 2222, &k),
            Verdict::Known { line: 1 }
        );
        assert!(matches!(
            check(text, "10.0.0.5", 22, &k),
            Verdict::Unknown { .. }
        ));
    }

    #[test]
    fn wildcards_and_negation() {
        let k = key();
        let text = line("*.lab,!bad.lab", &k);
        assert_eq!(check(&text, "a.lab", 22, &k), Verdict::Known { line: 1 });
        assert!(matches!(
            check(&text, "bad.lab", 22, &k),
            Verdict::Unknown { .. }
        ));
        assert!(glob("h?st*", "host-1") && !glob("h?st", "hoost"));
    }

    #[test]
    fn any_entry_with_the_key_wins_and_revoked_always_loses() {
        let (old, cur) = (key(), key());
        let text = line("box", &old) + &line("box", &cur);
        assert_eq!(check(&text, "box", 22, &cur), Verdict::Known { line: 2 });
        let revoked = format!("@revoked * {}\n", cur.to_openssh().unwrap()) + &text;
        assert_eq!(
            check(&revoked, "box", 22, &cur),
            Verdict::Revoked { line: 1 }
        );
    }

    #[test]
    fn other_key_types_are_not_a_change() {
        let ed = key();
        let ecdsa = PrivateKey::random(
            &mut rand::rng(),
            Algorithm::Ecdsa {
                curve: russh::keys::EcdsaCurve::NistP256,
            },
        )
        .unwrap()
        .public_key()
        .clone();
        let text = line("box", &ecdsa);
        assert_eq!(
            check(&text, "box", 22, &ed),
            Verdict::Unknown {
                others: vec![(1, "ecdsa-sha2-nistp256".into())]
            }
        );
        assert_eq!(known_types(&text, "box", 22), vec![ecdsa.algorithm()]);
    }

    #[test]
    fn append_creates_private_file_and_keeps_lines_whole() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ssh/known_hosts");
        let (a, b) = (key(), key());
        append(&path, "box", 2222, &a).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // A file without its final newline gets one before our line.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.pop();
        std::fs::write(&path, &text).unwrap();
        append(&path, "other", 22, &b).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert_eq!(check(&text, "box", 2222, &a), Verdict::Known { line: 1 });
        assert_eq!(check(&text, "other", 22, &b), Verdict::Known { line: 2 });
    }
}
