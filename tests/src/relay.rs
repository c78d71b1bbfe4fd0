//! A TCP relay in front of a server that a fault schedule can break the way networks break:
//! [`Relay::cut`] resets every connection (RST, as a firewall reject or a crashed middlebox),
//! [`Relay::blackhole`] stops forwarding without closing anything (packets dropped: the peers
//! see silence until their own timeouts), and [`Relay::heal`] ends a blackhole. One relay per
//! path (an instance to one backend), so a partition can be one-sided.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A relay from a loopback port to `127.0.0.1:target`.
pub struct Relay {
    /// The port clients connect to.
    pub port: u16,
    /// `true` while blackholed.
    silent: watch::Sender<bool>,
    /// Live connections' sockets, to reset on [`Relay::cut`].
    conns: Arc<Mutex<Vec<(u64, std::net::TcpStream)>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

impl Relay {
    /// Starts relaying to `127.0.0.1:target` from a free port.
    ///
    /// # Errors
    /// No port could be bound.
    pub async fn start(target: u16) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let (silent, _) = watch::channel(false);
        let conns: Arc<Mutex<Vec<(u64, std::net::TcpStream)>>> = Arc::default();
        let (quiet, kept) = (silent.clone(), Arc::clone(&conns));
        let accept = tokio::spawn(async move {
            let mut next = 0u64;
            while let Ok((client, _)) = listener.accept().await {
                let (quiet, kept) = (quiet.subscribe(), Arc::clone(&kept));
                next += 1;
                let id = next;
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                    let mut mine = Vec::new();
                    for s in [&client, &server] {
                        if let (Ok(clone), Ok(own)) = (socket_clone(s), socket_clone(s)) {
                            kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((id, clone));
                            mine.push(own);
                        }
                    }
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let (mut up, mut down) =
                        (tokio::spawn(pipe(cr, sw, quiet.clone())), tokio::spawn(pipe(sr, cw, quiet)));
                    let up_first = tokio::select! {
                        _ = &mut up => true,
                        _ = &mut down => false,
                    };
                    // One side closed: the connection is over for both, as over TCP a peer's
                    // close is (no protocol here half-closes). Kept open, a server writing to it
                    // (a binlog dump thread) would block until its own timeout.
                    for s in &mine {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                    }
                    let _ = if up_first { down.await } else { up.await };
                    kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|(i, _)| *i != id);
                });
            }
        });
        Ok(Self { port, silent, conns, accept })
    }

    /// Resets every live connection (RST); new ones are relayed as before.
    pub fn cut(&self) {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for (_, s) in conns {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Stops forwarding in both directions, on live and new connections, without closing any.
    pub fn blackhole(&self) {
        self.silent.send_replace(true);
    }

    /// Forwards again after [`Relay::blackhole`].
    pub fn heal(&self) {
        self.silent.send_replace(false);
    }
}

/// A second handle on the socket (to reset it from outside its task).
fn socket_clone(s: &TcpStream) -> std::io::Result<std::net::TcpStream> {
    let sock = socket2::SockRef::from(s);
    sock.try_clone().map(Into::into)
}

/// Copies `from` to `to`, holding the bytes while the relay is blackholed.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut silent: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if silent.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Read while open, dropped on the floor of a blackhole until it heals.
        if silent.wait_for(|s| !*s).await.is_err() {
            return;
        }
        if to.write_all(buf.get(..n).unwrap_or_default()).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
