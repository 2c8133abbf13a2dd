//! `ferrotron run --ssh` against a real OpenSSH server of the test's own (its own port, host
//! key and authorized_keys in a tempdir): the host key is checked against --known-hosts
//! before anything runs, learned only with --learn-host-key, and a changed key is refused
//! whatever the flags say.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::free_port;
use common::sshd::{SSHD, keygen, start_sshd};

/// `SHA256:…` as `ssh-keygen -lf` prints it: the fingerprint a person compares.
fn fingerprint(public: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen -lf {}", public.display());
    let text = String::from_utf8(out.stdout).unwrap();
    let fp = text.split_whitespace().nth(1).unwrap().to_string();
    assert!(fp.starts_with("SHA256:"), "{text}");
    fp
}

fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap().lines().count()
}

#[test]
fn ssh_host_keys_are_checked_against_known_hosts() {
    if !Path::new(SSHD).exists() {
        eprintln!("SKIPPED: {SSHD} is missing (provisioning/host-setup.sh --test installs it)");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: sshd must start as root to log root in; run the tests as root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = tempfile::tempdir().unwrap();
    let (host_a, host_b, client) = (d.join("host_a"), d.join("host_b"), d.join("client"));
    keygen(&host_a);
    keygen(&host_b);
    keygen(&client);
    let authorized = d.join("authorized_keys");
    std::fs::copy(client.with_extension("pub"), &authorized).unwrap();
    // The file and its directory do not exist yet: learning makes both, private.
    let known_hosts = d.join("dot-ssh/known_hosts");
    let marker = d.join("ran");
    let task = d.join("task.yml");
    std::fs::write(
        &task,
        format!(
            "name: mark\ndesc: d\nmaintainer: m\nactions:\n  - name: mark\n    shell: [\"echo ran >> {}\"]\n",
            marker.display()
        ),
    )
    .unwrap();

    let sshd = start_sshd(d, &[&host_a], &authorized, free_port());
    let target = format!("root@127.0.0.1:{}", sshd.port);
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--ssh",
            &target,
            "--ssh-privkey",
            client.to_str().unwrap(),
            "--known-hosts",
            known_hosts.to_str().unwrap(),
            "-i",
            "item-1",
            "-t",
            "koji_build",
            "-a",
            "noarch",
        ];
        args.extend_from_slice(extra);
        args.push(task.to_str().unwrap());
        common::ferrotron(data.path(), &args)
    };
    let ran = || {
        std::fs::read_to_string(&marker)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };

    // (a) Unknown host: refused before logging in, with what the person needs to decide.
    let out = run(&[]);
    let text = all_output(&out);
    eprintln!("--- unknown host:\n{text}");
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert_eq!(ran(), 0, "the task ran on an unknown host:\n{text}");
    let fp_a = fingerprint(&host_a.with_extension("pub"));
    for needle in [
        fp_a.as_str(),
        "ssh-ed25519",
        "--learn-host-key",
        "ssh-keyscan",
        known_hosts.to_str().unwrap(),
        "does not exist",
        target.as_str(),
    ] {
        assert!(text.contains(needle), "no `{needle}` in:\n{text}");
    }
    assert!(
        text.contains("not retried"),
        "a refusal is not retried:\n{text}"
    );
    assert!(!known_hosts.exists(), "nothing is learned without the flag");
    let log = std::fs::read_to_string(&sshd.log).unwrap();
    assert!(
        !log.contains("Accepted publickey"),
        "we logged in to an unknown host:\n{log}"
    );

    // A file that cannot be read is not "no entry": refused at once, learning or not.
    let mut args = vec![
        "run",
        "--ssh",
        &target,
        "--ssh-privkey",
        client.to_str().unwrap(),
        "--known-hosts",
        d.to_str().unwrap(),
        "--learn-host-key",
    ];
    args.push(task.to_str().unwrap());
    let out = common::ferrotron(data.path(), &args);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(
        text.contains("cannot be read") && text.contains("not retried"),
        "{text}"
    );
    assert_eq!(ran(), 0, "{text}");

    // (b) --learn-host-key: added (one line, the bracketed port form), said so, and run.
    let out = run(&["--learn-host-key"]);
    let text = all_output(&out);
    eprintln!("--- learned:\n{text}");
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(ran(), 1, "{text}");
    assert!(
        text.contains("added the host key") && text.contains(&fp_a),
        "the output says what was learned:\n{text}"
    );
    assert_eq!(lines(&known_hosts), 1);
    let entry = std::fs::read_to_string(&known_hosts).unwrap();
    assert!(
        entry.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", sshd.port)),
        "{entry}"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&known_hosts), 0o600);
    assert_eq!(mode(known_hosts.parent().unwrap()), 0o700);
    // OpenSSH reads what we wrote as the same key.
    let found = Command::new("ssh-keygen")
        .arg("-F")
        .arg(format!("[127.0.0.1]:{}", sshd.port))
        .arg("-f")
        .arg(&known_hosts)
        .output()
        .unwrap();
    assert!(found.status.success(), "ssh-keygen -F finds the entry");
    // The checks on sshd's log below mean something only if logins show up there.
    let log = std::fs::read_to_string(&sshd.log).unwrap();
    assert!(log.contains("Accepted publickey"), "{log}");

    // (c) Known now: runs without the flag, and the file is left alone. Hashed the way
    // Debian's ssh writes it by default (`HashKnownHosts yes`), it reads the same.
    let hashed = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&known_hosts)
        .output()
        .unwrap();
    assert!(hashed.status.success(), "ssh-keygen -H");
    let entry = std::fs::read_to_string(&known_hosts).unwrap();
    assert!(entry.starts_with("|1|"), "{entry}");
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", all_output(&out));
    assert_eq!(ran(), 2);
    assert_eq!(lines(&known_hosts), 1);

    // (d) The machine comes back with another host key: refused, flag or not, naming the
    // file and the line of the old entry; the file keeps the old key.
    let port = sshd.port;
    drop(sshd);
    let sshd = start_sshd(d, &[&host_b], &authorized, port);
    let fp_b = fingerprint(&host_b.with_extension("pub"));
    for extra in [&[][..], &["--learn-host-key"][..]] {
        let out = run(extra);
        let text = all_output(&out);
        eprintln!("--- changed key {extra:?}:\n{text}");
        assert_eq!(out.status.code(), Some(4), "{extra:?}: {text}");
        assert_eq!(ran(), 2, "the task ran despite a changed key:\n{text}");
        let at = format!("{}:1", known_hosts.display());
        for needle in [at.as_str(), "CHANGED", fp_b.as_str(), "ssh-keygen -R"] {
            assert!(
                text.contains(needle),
                "{extra:?}: no `{needle}` in:\n{text}"
            );
        }
        assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), entry);
    }

    // (e) Known only by a key type the server no longer offers (ferrotron asks for ECDSA
    // first, the server has only Ed25519): as suspect as a changed key, never learned over.
    let ecdsa = d.join("other_ecdsa");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ecdsa", "-N", "", "-f"])
        .arg(&ecdsa)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen -t ecdsa");
    let old_type = d.join("known_hosts_ecdsa");
    let public = std::fs::read_to_string(ecdsa.with_extension("pub")).unwrap();
    std::fs::write(
        &old_type,
        format!("# other type\n[127.0.0.1]:{port} {public}"),
    )
    .unwrap();
    let mut args = vec![
        "run",
        "--ssh",
        &target,
        "--ssh-privkey",
        client.to_str().unwrap(),
        "--known-hosts",
        old_type.to_str().unwrap(),
        "--learn-host-key",
    ];
    args.push(task.to_str().unwrap());
    let out = common::ferrotron(data.path(), &args);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert_eq!(ran(), 2, "{text}");
    let at = format!("{}:2", old_type.display());
    for needle in [at.as_str(), "ecdsa-sha2-nistp256", "CHANGED", fp_b.as_str()] {
        assert!(text.contains(needle), "no `{needle}` in:\n{text}");
    }
    assert_eq!(lines(&old_type), 2, "nothing learned");

    let log = std::fs::read_to_string(&sshd.log).unwrap();
    assert!(
        !log.contains("Accepted publickey"),
        "we logged in despite a changed key:\n{log}"
    );

    // (f) The same file, and the server offers that ECDSA key besides an Ed25519 one:
    // ferrotron asks for the type it knows, so the host is known, not changed.
    drop(sshd);
    let _sshd = start_sshd(d, &[&host_b, &ecdsa], &authorized, port);
    let out = common::ferrotron(data.path(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", all_output(&out));
    assert_eq!(ran(), 3);
    assert_eq!(lines(&old_type), 2, "nothing learned");
}
