//! A session on an instance over SSH (russh): connect with a deadline, check the host key
//! (pinned for instances we made, the user's known_hosts for machines they name), run
//! commands with streamed output, stdin and exit status.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use russh::keys::{
    Algorithm, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate,
};
use russh::{ChannelMsg, client};

use super::known_hosts::{self, Verdict};
use super::{Command, GuestError, OutputSink, Session, Stream};
use crate::access::{HostKey, SshTarget};
use crate::util::shell_word;

/// How long a connected socket may stay silent after we spoke before we call the server not
/// ready. Port forwarders (passt, slirp) accept the TCP connection before the guest listens
/// and then hold it open: without this, one early attempt would wait out the whole
/// handshake timeout (10 s measured). The peer only speaks once we have (passt forwards
/// lazily), so this is measured from connect. It grows with every silent attempt, so a
/// guest that is merely slow to answer is still reached.
const SILENCE: Duration = Duration::from_millis(400);

/// Keepalives notice a guest that powered off under an open session (see machine-notes).
const KEEPALIVE: Duration = Duration::from_secs(5);
const KEEPALIVE_MAX: usize = 4;

/// Checks the server's key as the target's [`HostKey`] says, once the key exchange proved
/// the server holds it, and before we authenticate or run anything.
struct Verifier {
    policy: Arc<Policy>,
    /// Why the key was refused: russh itself reports only "unknown key".
    refused: Arc<Mutex<Option<GuestError>>>,
    /// What was added to the known_hosts file, said to the user.
    learned: Arc<Mutex<Option<String>>>,
}

enum Policy {
    Pinned {
        expected: PublicKey,
        line: String,
        target: String,
    },
    KnownHosts(KnownHostsCheck),
}

/// `--ssh`: the key must be in the user's known_hosts file, or be added there on request.
struct KnownHostsCheck {
    file: PathBuf,
    learn: bool,
    host: String,
    port: u16,
    target: String,
    user: String,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let verdict = match server {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.policy.check(key).await,
            // We never ask for certificates; a server that sends one anyway is not trusted.
            PublicKeyOrCertificate::Certificate(_) => Err(self.policy.not_a_key()),
        };
        match verdict {
            Ok(learned) => {
                if learned.is_some() {
                    *self.learned.lock().expect("learned lock") = learned;
                }
                Ok(true)
            }
            Err(e) => {
                *self.refused.lock().expect("refused lock") = Some(e);
                Ok(false)
            }
        }
    }
}

impl Policy {
    /// Ok with what was learned, if anything; Err with the refusal for the user.
    async fn check(&self, key: &PublicKey) -> Result<Option<String>, GuestError> {
        match self {
            Policy::Pinned { expected, .. } if key.key_data() == expected.key_data() => Ok(None),
            Policy::Pinned { .. } => Err(self.not_a_key()),
            Policy::KnownHosts(k) => k.check(key).await,
        }
    }

    fn not_a_key(&self) -> GuestError {
        match self {
            Policy::Pinned { line, target, .. } => GuestError::HostKeyMismatch {
                target: target.clone(),
                expected: line.clone(),
            },
            Policy::KnownHosts(KnownHostsCheck { target, file, .. }) => {
                GuestError::HostKeyUnknown {
                    target: target.clone(),
                    file: file.display().to_string(),
                    why: "vouches for host keys only, and the server sent a certificate".into(),
                    help: "  nothing was run there and no login was attempted".into(),
                }
            }
        }
    }
}

impl KnownHostsCheck {
    /// Ok with what was added to the file, if anything.
    async fn check(&self, key: &PublicKey) -> Result<Option<String>, GuestError> {
        let KnownHostsCheck {
            file,
            learn,
            host,
            port,
            target,
            user,
        } = self;
        let shown = file.display().to_string();
        let text = match tokio::fs::read_to_string(file).await {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            // Not a connection problem: no retry reads it better, so refuse as unknown.
            Err(e) => {
                return Err(GuestError::HostKeyUnknown {
                    target: target.clone(),
                    file: shown.clone(),
                    why: format!("cannot be read: {e}"),
                    help: "  nothing was run there and no login was attempted: the host key \
                           cannot be checked without the file"
                        .into(),
                });
            }
        };
        let name = known_hosts::host_entry_name(host, *port);
        let kind = key.algorithm().as_str().to_string();
        let fp = key.fingerprint(HashAlg::Sha256);
        let why = match known_hosts::check(text.as_deref().unwrap_or(""), host, *port, key) {
            Verdict::Known { line } => {
                tracing::debug!(target = %target, file = %shown, line, "host key known");
                return Ok(None);
            }
            Verdict::Changed { line } => {
                return Err(GuestError::HostKeyChanged {
                    target: target.clone(),
                    file: shown.clone(),
                    line,
                    why: format!(
                        "holds a different {kind} key for {name}: the host key has CHANGED"
                    ),
                    help: changed_help(&kind, &fp, &name, &shown, line),
                });
            }
            Verdict::Revoked { line } => {
                return Err(GuestError::HostKeyChanged {
                    target: target.clone(),
                    file: shown.clone(),
                    line,
                    why: format!("revokes this {kind} key (@revoked)"),
                    help: format!(
                        "  the server offers {kind} key {fp}\n  nothing was run there \
                         and no login was attempted; a revoked key is never used"
                    ),
                });
            }
            Verdict::Unknown { .. } if text.is_none() => "does not exist".to_string(),
            Verdict::Unknown { others } if others.is_empty() => {
                format!("has no entry for {name}")
            }
            // We asked for the recorded types first and the server offers none of them: as
            // suspect as a changed key, so never learned over either.
            Verdict::Unknown { others } => {
                let (line, old) = &others[0];
                return Err(GuestError::HostKeyChanged {
                    target: target.clone(),
                    file: shown.clone(),
                    line: *line,
                    why: format!(
                        "holds a {old} key for {name}, and the server no longer offers one \
                         (it offers {kind}): the host key has CHANGED"
                    ),
                    help: changed_help(&kind, &fp, &name, &shown, *line),
                });
            }
        };
        if !*learn {
            return Err(GuestError::HostKeyUnknown {
                target: target.clone(),
                file: shown.clone(),
                why,
                help: unknown_help(&kind, &fp, host, *port, user, &shown),
            });
        }
        known_hosts::append(file, host, *port, key).map_err(GuestError::io(format!(
            "adding the host key of {target} to {shown}"
        )))?;
        Ok(Some(format!(
            "--learn-host-key: added the host key of {target} ({kind} {fp}) to {shown} \
             as `{name}`"
        )))
    }
}

/// How a person gets out of "unknown host", for the terminal.
fn unknown_help(
    kind: &str,
    fp: &impl std::fmt::Display,
    host: &str,
    port: u16,
    user: &str,
    file: &str,
) -> String {
    let (h, f, login) = (
        shell_word(host),
        shell_word(file),
        shell_word(&format!("{user}@{host}")),
    );
    format!(
        "  the server offers {kind} key {fp}\n  \
         nothing was run there and no login was attempted. If that is the machine's key (its \
         owner can check with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub`), either\n  \
         - run again with --learn-host-key (`learn_host_key: true` in a serve provider) to \
         add it to {file}, or\n  \
         - add it yourself: `ssh-keyscan -p {port} {h} >> {f}`, or log in once with \
         `ssh -p {port} -o UserKnownHostsFile={f} {login}`"
    )
}

fn changed_help(
    kind: &str,
    fp: &impl std::fmt::Display,
    name: &str,
    file: &str,
    line: usize,
) -> String {
    format!(
        "  the server now offers {kind} key {fp}\n  \
         someone may be intercepting the connection, or the machine was reinstalled. Nothing \
         was run there and no login was attempted; --learn-host-key never replaces a key.\n  \
         if the machine's owner confirms the new key, remove the old entry (line {line}, or \
         `ssh-keygen -R {} -f {}`) and add the new one",
        shell_word(name),
        shell_word(file)
    )
}

/// The host key algorithms to ask for: those the known_hosts file records for the host
/// first, so a host known by one key type is not refused as unknown under another.
fn preferred_for(text: &str, host: &str, port: u16) -> russh::Preferred {
    let known = known_hosts::known_types(text, host, port);
    // One RSA key serves all three RSA signature algorithms.
    fn family(a: &Algorithm) -> &str {
        if matches!(a, Algorithm::Rsa { .. }) {
            "ssh-rsa"
        } else {
            a.as_str()
        }
    }
    let is_known = |a: &Algorithm| known.iter().any(|k| family(k) == family(a));
    let default = russh::Preferred::DEFAULT;
    let (mut order, rest): (Vec<Algorithm>, Vec<Algorithm>) =
        default.key.iter().cloned().partition(is_known);
    order.extend(rest);
    russh::Preferred {
        key: order.into(),
        ..default
    }
}

pub struct SshSession {
    handle: client::Handle<Verifier>,
    root: String,
    target: String,
    learned: Option<String>,
}

/// The hash an RSA key signs with: the best SHA-2 the server names (`server-sig-algs`),
/// SHA-512 when it names none. Never `ssh-rsa` (SHA-1), which OpenSSH itself refuses since
/// 8.8: a server that takes nothing else fails authentication with a clear error instead.
fn rsa_signature_hash(server: Option<Option<HashAlg>>) -> HashAlg {
    match server {
        Some(Some(alg)) => alg,
        Some(None) | None => HashAlg::Sha512,
    }
}

impl SshSession {
    /// Connects, retrying with backoff until `deadline` passes: a booting guest refuses
    /// connections, then accepts TCP before sshd is ready. A host key that does not match
    /// fails at once: retrying would not make it right.
    pub async fn connect(
        target: &SshTarget,
        key: Arc<PrivateKey>,
        root: String,
        deadline: Duration,
    ) -> Result<SshSession, GuestError> {
        let shown = format!("{}@{}:{}", target.user, target.host, target.port);
        let (policy, preferred) = match &target.host_key {
            HostKey::Pinned(line) => (
                Policy::Pinned {
                    expected: super::keys::parse_public(line)?,
                    line: line.clone(),
                    target: shown.clone(),
                },
                russh::Preferred::DEFAULT,
            ),
            HostKey::KnownHosts { file, learn } => {
                // Unreadable is the handler's to report; here it only orders preferences.
                let text = tokio::fs::read_to_string(file).await.unwrap_or_default();
                (
                    Policy::KnownHosts(KnownHostsCheck {
                        file: file.clone(),
                        learn: *learn,
                        host: target.host.clone(),
                        port: target.port,
                        target: shown.clone(),
                        user: target.user.clone(),
                    }),
                    preferred_for(&text, &target.host, target.port),
                )
            }
        };
        let policy = Arc::new(policy);
        let config = Arc::new(client::Config {
            keepalive_interval: Some(KEEPALIVE),
            keepalive_max: KEEPALIVE_MAX,
            nodelay: true,
            preferred,
            ..Default::default()
        });
        // Across attempts: a key learned on one whose login then failed is still news.
        let learned = Arc::new(Mutex::new(None));
        let start = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut silence = SILENCE;
        let mut last = String::from("no attempt made");
        loop {
            let remaining = deadline.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                let learned = learned.lock().expect("learned lock").take();
                return Err(GuestError::Unreachable {
                    target: shown,
                    reason: format!(
                        "no SSH login within {}s (last error: {last}){}",
                        deadline.as_secs(),
                        learned.map(|l| format!("; {l}")).unwrap_or_default()
                    ),
                });
            }
            let refused = Arc::new(Mutex::new(None));
            let handler = Verifier {
                policy: policy.clone(),
                refused: refused.clone(),
                learned: learned.clone(),
            };
            let heard = Arc::new(AtomicBool::new(false));
            let attempt = async {
                let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
                    .await
                    .map_err(russh::Error::IO)?;
                stream.set_nodelay(true).map_err(russh::Error::IO)?;
                let stream = Heard {
                    inner: stream,
                    heard: heard.clone(),
                };
                let mut h = client::connect_stream(config.clone(), stream, handler).await?;
                let hash = if key.algorithm().is_rsa() {
                    Some(rsa_signature_hash(h.best_supported_rsa_hash().await?))
                } else {
                    None
                };
                let auth = h
                    .authenticate_publickey(
                        target.user.clone(),
                        PrivateKeyWithHashAlg::new(key.clone(), hash),
                    )
                    .await?;
                Ok::<_, russh::Error>((h, auth.success()))
            };
            // A forwarder that accepted the connection for a guest that is not listening
            // yet never answers; give up on such an attempt quickly.
            let attempt = async {
                tokio::pin!(attempt);
                tokio::select! {
                    r = &mut attempt => return Some(r),
                    _ = tokio::time::sleep(silence) => {}
                }
                if heard.load(Ordering::Relaxed) {
                    Some(attempt.await)
                } else {
                    None
                }
            };
            // One slow handshake must not eat the whole deadline.
            let per_try = remaining.min(Duration::from_secs(10));
            match tokio::time::timeout(per_try, attempt).await {
                Ok(None) => {
                    last = "the port answers but the guest's SSH server does not yet".into();
                    silence = (silence + Duration::from_millis(25)).min(Duration::from_secs(2));
                }
                Ok(Some(Ok((handle, true)))) => {
                    return Ok(SshSession {
                        handle,
                        root,
                        target: shown,
                        learned: learned.lock().expect("learned lock").take(),
                    });
                }
                Ok(Some(Ok((_, false)))) => {
                    last = format!("user {} refused the run's key", target.user)
                }
                Ok(Some(Err(e))) => {
                    // A refused key fails at once: retrying would not make it right.
                    if let Some(refusal) = refused.lock().expect("refused lock").take() {
                        return Err(refusal);
                    }
                    last = e.to_string();
                }
                Err(_) => last = "handshake timed out".into(),
            }
            tracing::debug!(target = %shown, elapsed = ?start.elapsed(), error = %last, "ssh not ready");
            tokio::time::sleep(backoff.min(deadline.saturating_sub(start.elapsed()))).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    fn lost(&self, e: impl std::fmt::Display) -> GuestError {
        GuestError::Disconnected {
            target: self.target.clone(),
            reason: e.to_string(),
        }
    }
}

#[async_trait]
impl Session for SshSession {
    fn root(&self) -> &str {
        &self.root
    }

    fn describe(&self) -> String {
        self.target.clone()
    }

    fn notices(&self) -> Vec<String> {
        self.learned.iter().cloned().collect()
    }

    async fn exec(&self, cmd: &Command, out: &mut OutputSink<'_>) -> Result<i32, GuestError> {
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| self.lost(e))?;
        let script = format!("cd {} && {}", super::shell_quote(&cmd.cwd), cmd.script);
        let (mut read, write) = channel.split();
        write.exec(true, script).await.map_err(|e| self.lost(e))?;
        let feed = async {
            if !cmd.stdin.is_empty() {
                write.data(&cmd.stdin[..]).await?;
            }
            write.eof().await
        };
        let pump = async {
            let mut status = None;
            while let Some(msg) = read.wait().await {
                match msg {
                    ChannelMsg::Data { data } => out(Stream::Stdout, &data)?,
                    ChannelMsg::ExtendedData { data, ext: 1 } => out(Stream::Stderr, &data)?,
                    ChannelMsg::ExitStatus { exit_status } => {
                        status = Some(i32::try_from(exit_status).unwrap_or(255));
                    }
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        status = Some(128 + signal_number(&signal_name));
                    }
                    _ => {}
                }
            }
            Ok::<_, GuestError>(status)
        };
        let (fed, pumped) = tokio::join!(feed, pump);
        let status = pumped?;
        // A command that exits without reading its stdin closes the channel under us;
        // only a missing exit status means the connection itself failed.
        match status {
            Some(s) => Ok(s),
            None => Err(self.lost(match fed {
                Err(e) => e.to_string(),
                Ok(()) => "the command ended without an exit status".to_string(),
            })),
        }
    }
}

/// A stream that notes whether the peer has said anything yet.
struct Heard {
    inner: tokio::net::TcpStream,
    heard: Arc<AtomicBool>,
}

impl tokio::io::AsyncRead for Heard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl tokio::io::AsyncWrite for Heard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn signal_number(sig: &russh::Sig) -> i32 {
    use russh::Sig;
    match sig {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_keys_never_sign_with_sha1() {
        assert_eq!(
            rsa_signature_hash(Some(Some(HashAlg::Sha256))),
            HashAlg::Sha256
        );
        assert_eq!(
            rsa_signature_hash(Some(Some(HashAlg::Sha512))),
            HashAlg::Sha512
        );
        // The server says it takes only ssh-rsa, or says nothing: SHA-2 all the same.
        assert_eq!(rsa_signature_hash(Some(None)), HashAlg::Sha512);
        assert_eq!(rsa_signature_hash(None), HashAlg::Sha512);
    }
}
