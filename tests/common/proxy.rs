//! A TCP proxy the test controls, put between a daemon and a shared service (PostgreSQL):
//! `cut` makes the service unreachable for that daemon alone — open connections are closed
//! and new ones closed as soon as they are accepted — without touching the server the other
//! tests use; `restore` lets connections through again.
//!
//! It runs on its own thread and runtime, so a test that blocks its own thread (waiting for
//! a daemon's output) does not stall the daemon's database traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    /// Connections accepted while open, for the test's own assertions.
    pub accepted: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy binds");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (generation, _) = watch::channel(0u64);
        let (c, a, g) = (cut.clone(), accepted.clone(), generation.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    if c.load(Ordering::SeqCst) {
                        drop(client); // the service is "down"
                        continue;
                    }
                    a.fetch_add(1, Ordering::Relaxed);
                    let mut gone = g.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let mut client = client;
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = gone.changed() => {} // cut: both sockets are dropped
                        }
                    });
                }
            });
        });
        Proxy {
            addr,
            cut,
            generation,
            accepted,
        }
    }

    /// The service becomes unreachable through this proxy: every open connection is closed,
    /// new ones are closed on arrival.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// `postgres://u:p@HOST:PORT/db…` → (the address HOST:PORT, the URL with it replaced by
/// `to`).
pub fn reroute_url(url: &str, to: SocketAddr) -> (SocketAddr, String) {
    let (scheme, rest) = url.split_once("://").expect("URL with a scheme");
    let (auth_host, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (userinfo, host) = match auth_host.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, auth_host),
    };
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5432")
    };
    let target = std::net::ToSocketAddrs::to_socket_addrs(&host)
        .expect("the service's address resolves")
        .next()
        .unwrap();
    let user = userinfo.map_or(String::new(), |u| format!("{u}@"));
    (target, format!("{scheme}://{user}{to}{tail}"))
}
