//! Session threads. Each runs its own single-threaded tokio runtime (its own epoll, no work
//! stealing), and every accepted connection lives its whole life on one of them, dealt round
//! robin. Compared with one multi-threaded runtime this saves the cross-thread wake-ups (futex)
//! and the scheduler's bookkeeping on every forwarded message; see `benches/NOTES.md`. The
//! control plane (accepting, the monitor, the admin socket, metrics) stays on the main runtime.
//!
//! A socket is registered with the reactor of the runtime that created it. Pooled backend
//! connections remember the worker they were registered on ([`current`]); a session that takes
//! one from another worker re-registers it ([`rehome`]) so that its readiness events arrive on
//! the session's own thread.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(NONE) };
}

/// The id of a thread that is not a session worker.
pub const NONE: usize = usize::MAX;

/// The session worker this thread is, or [`NONE`].
pub fn current() -> usize {
    WORKER.with(Cell::get)
}

/// Moves a socket's registration to the current runtime's reactor, in place (it may sit inside
/// a TLS stream): a duplicate of its descriptor is registered here, and the old one is
/// deregistered and closed. The connection, one open file underneath, is untouched.
///
/// # Errors
/// The descriptor could not be duplicated or registered (the socket is unchanged then).
pub fn rehome(stream: &mut TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let dup = std::net::TcpStream::from(stream.as_fd().try_clone_to_owned()?);
    dup.set_nonblocking(true)?;
    *stream = TcpStream::from_std(dup)?;
    Ok(())
}

/// [`rehome`] for a Unix socket.
///
/// # Errors
/// The descriptor could not be duplicated or registered (the socket is unchanged then).
pub fn rehome_unix(stream: &mut tokio::net::UnixStream) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let dup = std::os::unix::net::UnixStream::from(stream.as_fd().try_clone_to_owned()?);
    dup.set_nonblocking(true)?;
    *stream = tokio::net::UnixStream::from_std(dup)?;
    Ok(())
}

/// The session threads.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
}

/// How many session threads by default: half the cores, rounded up. A proxy usually shares
/// its machine with a database or an application; on the 2-core bench machine one thread spent
/// less CPU per forwarded transaction than two, and served more (`benches/NOTES.md`).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| usize::from(n).div_ceil(2))
}

impl Workers {
    /// Starts `n` (at least one) session threads.
    ///
    /// # Errors
    /// A runtime or thread could not be created.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let mut handles = Vec::new();
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new().name(format!("sqlswitch-worker-{i}")).spawn(move || {
                WORKER.with(|w| w.set(i));
                runtime.block_on(stop.cancelled());
                // Dropping the runtime drops whatever sessions are left (the daemon is stopping).
            })?;
        }
        Ok(Self { handles, next: AtomicUsize::new(0), stop })
    }

    /// Runs `task` on the next worker.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Relaxed) % self.handles.len();
        if let Some(handle) = self.handles.get(i) {
            drop(handle.spawn(task));
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_worker_threads_round_robin() {
        let workers = Workers::start(2).unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            workers.spawn(async move {
                let _ = tx.send(current());
            });
        }
        let mut seen: Vec<usize> = (0..4).filter_map(|_| rx.recv().ok()).collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 0, 1, 1]);
        assert_eq!(current(), NONE);
    }
}
