//! A real etcd (Debian's `etcd-server`) on free loopback ports, for fleet mode's tests; and a
//! TCP relay in front of it that a test can cut.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One etcd member with its data directory; stopped (and the directory removed) on drop, or by
/// a reaper if the test process dies first.
pub struct Etcd {
    /// Client port on 127.0.0.1.
    pub port: u16,
    peer: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    ///
    /// # Errors
    /// etcd is not installed, or did not start.
    pub fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("sqlswitch-etcd-{}-{}", std::process::id(), crate::pg::unique()));
        std::fs::create_dir_all(&dir)?;
        let ports = crate::pg::free_ports(2)?;
        let etcd = Self { port: ports[0], peer: ports[1], dir, child: Mutex::new(None) };
        crate::pg::spawn_detached(&format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; pkill -f 'etcd --data-dir {d}'; rm -rf {d}",
            pid = std::process::id(),
            d = etcd.dir.display()
        ))?;
        etcd.resume()?;
        Ok(etcd)
    }

    /// The endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it again after [`Etcd::stop`] (same data, same ports), and waits until it answers.
    ///
    /// # Errors
    /// It did not start.
    pub fn resume(&self) -> Result<()> {
        let client = format!("http://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::File::create(self.dir.join("etcd.log"))?;
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--name", "test", "--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd (Debian's etcd-server; scripts/test installs it)")?;
        *self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let health = std::net::TcpStream::connect(("127.0.0.1", self.port)).and_then(|mut s| {
                use std::io::{Read, Write};
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                write!(s, "GET /health HTTP/1.0\r\nHost: x\r\n\r\n")?;
                let mut answer = String::new();
                s.read_to_string(&mut answer)?;
                Ok(answer)
            });
            if health.is_ok_and(|a| a.contains("\"health\":\"true\"")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
                bail!(
                    "etcd did not become healthy in 20 s: {}",
                    log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it (SIGKILL: as a crash, or a lost machine, would).
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP relay on a free loopback port to `target`: [`Relay::cut`] closes it and every
/// connection through it (a network partition, as the relayed side sees it).
pub struct Relay {
    /// The relay's port.
    pub port: u16,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    /// Starts relaying to `127.0.0.1:target`.
    ///
    /// # Errors
    /// No port could be bound.
    pub async fn start(target: u16) -> Result<Self> {
        Self::start_on(0, target).await
    }

    /// As [`Relay::start`], on `port` (0: any free one): a cut relay is mended by starting
    /// one again on its port.
    ///
    /// # Errors
    /// The port could not be bound.
    pub async fn start_on(port: u16, target: u16) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        let tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let inner = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(conn);
            }
        });
        tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(accept);
        Ok(Self { port, tasks })
    }

    /// The endpoint through the relay.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes the relay and every connection through it.
    pub fn cut(&self) {
        for task in self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            task.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}
