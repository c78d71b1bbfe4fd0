//! `sqlswitch-instance CONFIG`: one sqlswitch daemon in a process of its own, started as
//! `sqlswitch run` starts it (the library's daemon with its admin socket), for the fleet tests
//! that stop, freeze (`SIGSTOP`) and kill instances. Logs go to stderr; SIGTERM or SIGINT stops.

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let path = std::env::args().nth(1).context("usage: sqlswitch-instance CONFIG")?;
    let config = sqlswitch_config::Config::load(std::path::Path::new(&path))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let daemon = sqlswitch::Daemon::launch(config, true, 1).await?;
        daemon.control.set_config_path(path.into());
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        drop(daemon);
        Ok(())
    })
}
