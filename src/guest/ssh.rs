//! A session on an instance over SSH (russh): connect with a deadline, pin the host key,
//! run commands with streamed output, stdin and exit status.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, client};

use super::{Command, GuestError, OutputSink, Session, Stream};
use crate::access::SshTarget;

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

struct Pinned {
    expected: Option<PublicKey>,
    mismatch: Arc<Mutex<bool>>,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let Some(expected) = &self.expected else {
            return Ok(true); // --ssh to a machine the user named: they vouch for it
        };
        let ok = match server {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data() == expected.key_data(),
            PublicKeyOrCertificate::Certificate(_) => false,
        };
        if !ok {
            *self.mismatch.lock().expect("mismatch lock") = true;
        }
        Ok(ok)
    }
}

pub struct SshSession {
    handle: client::Handle<Pinned>,
    root: String,
    target: String,
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
        let expected = target
            .host_key
            .as_deref()
            .map(super::keys::parse_public)
            .transpose()?;
        let config = Arc::new(client::Config {
            keepalive_interval: Some(KEEPALIVE),
            keepalive_max: KEEPALIVE_MAX,
            nodelay: true,
            ..Default::default()
        });
        let start = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut silence = SILENCE;
        let mut last = String::from("no attempt made");
        loop {
            let remaining = deadline.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                return Err(GuestError::Unreachable {
                    target: shown,
                    reason: format!(
                        "no SSH login within {}s (last error: {last})",
                        deadline.as_secs()
                    ),
                });
            }
            let mismatch = Arc::new(Mutex::new(false));
            let handler = Pinned {
                expected: expected.clone(),
                mismatch: mismatch.clone(),
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
                    });
                }
                Ok(Some(Ok((_, false)))) => {
                    last = format!("user {} refused the run's key", target.user)
                }
                Ok(Some(Err(e))) => {
                    if *mismatch.lock().expect("mismatch lock") {
                        return Err(GuestError::HostKeyMismatch {
                            target: shown,
                            expected: target.host_key.clone().unwrap_or_default(),
                        });
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
