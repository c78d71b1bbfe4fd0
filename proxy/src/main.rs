//! The `sqlswitch` command: `run`, `check` and `ctl`.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sqlswitch::Daemon;
use sqlswitch_config::Config;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

/// A read/write-splitting SQL proxy: applications connect to sqlswitch instead of their
/// database; reads go to healthy replicas, writes and transactions to the primary, and the
/// primary can be switched with no client errors.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground. SIGTERM stops gracefully (sessions finish their
    /// transaction, up to `shutdown_grace`), SIGINT stops at once, SIGHUP reloads the config
    /// (replicas added or removed, weights, max_replica_lag, users and read_only_users apply
    /// live, TLS certificate and key files are read again; other changes are refused and the
    /// running config stays).
    Run {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Session threads: each runs its own event loop and keeps the sessions dealt to it for
        /// their whole life. Default: half the cores, rounded up (a proxy usually shares its
        /// machine); on a host of its own, use one per core.
        #[arg(long)]
        threads: Option<usize>,
        /// Log lines as text for people, or as one JSON object per line for log shippers (the
        /// same fields; every switchover step, failover, mode change, role change and backend
        /// up or down is one event with its fields).
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate a config file: exit 0, or exit 1 listing every problem with its key.
    Check {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Send an admin command to a running daemon over its Unix socket: status,
    /// switchover CLUSTER BACKEND [promote] [no_repoint] [force] [reverse] [timeout=30s],
    /// upgrade-check CLUSTER BACKEND (before a cutover to a logical-replication subscriber),
    /// failover CLUSTER [BACKEND] [no_repoint] [timeout=30s], pause CLUSTER [timeout=10s],
    /// resume CLUSTER, mode CLUSTER read-only|read-write, detach CLUSTER, attach CLUSTER, drain CLUSTER BACKEND,
    /// enable CLUSTER BACKEND, rejoin CLUSTER BACKEND (re-admit a deposed primary), unfence CLUSTER BACKEND (lift a
    /// fence left by a crash mid-switchover), fleet-resolve CLUSTER BACKEND (end a stuck fleet
    /// change of primary), reload; `status --watch` for a live view. Exit 0 when the daemon answers ok, 1 when it refuses, 2 when it
    /// cannot be reached.
    Ctl {
        /// The admin socket (`[admin] socket` in the config). Default: /run/sqlswitch/admin.sock
        /// when /run/sqlswitch exists (systemd's RuntimeDirectory), else /tmp/sqlswitch.sock; the
        /// daemon's own default is the same.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the daemon's JSON answer as it is, for scripts.
        #[arg(long)]
        json: bool,
        /// With `status`: a live view, redrawn every second (statements per second per
        /// backend), until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// The command and its arguments, for example `status`.
        #[arg(required = true)]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                if let Some(warning) = readable_by_others(&config) {
                    eprintln!("{warning}");
                }
                for advice in c.advice() {
                    eprintln!("warning: {advice}");
                }
                let listeners: usize = c.clusters.iter().map(|c| 1 + usize::from(c.read_only_listen.is_some())).sum();
                use std::io::Write as _;
                let line =
                    format!("{}: ok ({} cluster(s), {listeners} listener(s))", config.display(), c.clusters.len());
                let _ = writeln!(std::io::stdout().lock(), "{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, threads, log_format } => {
            run(config, threads.unwrap_or_else(sqlswitch::workers::default_threads), log_format)
        }
        Command::Ctl { socket, json, watch, command } => {
            let socket = socket.unwrap_or_else(sqlswitch_config::default_socket);
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let answer = if watch && command == ["status"] && !json {
                runtime.block_on(sqlswitch::ctl::watch(&socket, std::time::Duration::from_secs(1)))
            } else if watch {
                eprintln!("sqlswitch ctl: --watch goes with `status` (and not with --json)");
                return ExitCode::from(2);
            } else {
                runtime.block_on(sqlswitch::ctl::ctl(&socket, &command.join(" "), json))
            };
            match answer {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("sqlswitch ctl: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Text for people.
    Text,
    /// One JSON object per line.
    Json,
}

fn run(path: PathBuf, threads: usize, log_format: LogFormat) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match log_format {
        LogFormat::Text => {
            // Colour only for a person at a terminal: a file, a pipe or journald gets plain text.
            use std::io::IsTerminal as _;
            let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            tracing_subscriber::fmt().with_ansi(ansi).with_env_filter(filter).init();
        }
        LogFormat::Json => {
            tracing_subscriber::fmt().json().flatten_event(true).with_current_span(false).with_env_filter(filter).init()
        }
    }
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(warning) = readable_by_others(&path) {
        warn!("{warning}");
    }
    for advice in config.advice() {
        warn!(event = "config_advice", "{advice}");
    }
    let clients: usize = config.clusters.iter().map(|c| c.max_client_connections).sum();
    open_files_limit(clients);
    // The control plane (accept, monitor, admin, metrics) on this thread; sessions on their own.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, path, threads)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sqlswitch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, path: PathBuf, threads: usize) -> anyhow::Result<()> {
    let grace = config.shutdown_grace;
    info!(version = env!("CARGO_PKG_VERSION"), config = %path.display(), "sqlswitch starting");
    let daemon = Daemon::launch(config, true, threads).await?;
    daemon.control.set_config_path(path);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => {
                info!(grace = ?grace, "SIGTERM: no new connections; sessions end at their next transaction boundary (a second SIGTERM or SIGINT stops now)");
                tokio::select! {
                    done = daemon.shutdown(grace) => if !done {
                        warn!("shutdown grace period over; closing the remaining sessions");
                    },
                    _ = term.recv() => warn!("a second SIGTERM: stopping now"),
                    _ = int.recv() => warn!("SIGINT during the grace period: stopping now"),
                }
                return Ok(());
            }
            _ = int.recv() => {
                info!("SIGINT: stopping now");
                return Ok(());
            }
            _ = hup.recv() => match daemon.control.reload() {
                Ok(v) => info!(result = %v, "SIGHUP: config reloaded"),
                Err(e) => warn!(error = %e, "SIGHUP: reload refused"),
            },
        }
    }
}

/// Raises the soft limit on open files to the hard one (a default soft limit of 1,024 makes
/// accepts fail at a few hundred clients), and warns when it stays below what `clients`
/// clients need: each takes a socket, and its session up to two backend connections.
fn open_files_limit(clients: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let before = getrlimit(Resource::Nofile);
    let mut raised = before;
    raised.current = before.maximum;
    if raised.current != before.current {
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            warn!(error = %e, "could not raise the open-files limit");
        }
    }
    let now = getrlimit(Resource::Nofile).current;
    let shown = |l: Option<u64>| l.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    info!(event = "open_files", before = %shown(before.current), now = %shown(now), "open-files limit");
    let needed = u64::try_from(clients).unwrap_or(u64::MAX).saturating_mul(3);
    if let Some(now) = now.filter(|n| *n < needed) {
        warn!(
            event = "open_files_low",
            limit = now,
            needed,
            "the open-files limit ({now}) is below 3 x max_client_connections ({needed}): clients will be \
             refused before that many connect; raise it (ulimit -n, systemd LimitNOFILE) or lower \
             max_client_connections"
        );
    }
}

/// A warning when the config file, which holds passwords, can be read by users other than its
/// owner and group.
fn readable_by_others(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    // A file whose passwords all come from the environment or files holds none to protect.
    let text = std::fs::read_to_string(path).ok()?;
    let inline = text.lines().map(|l| l.split('#').next().unwrap_or_default()).any(|l| {
        l.match_indices("password")
            .any(|(at, _)| l.get(at + "password".len()..).is_some_and(|r| r.trim_start().starts_with('=')))
    });
    if !inline {
        return None;
    }
    (mode & 0o004 != 0).then(|| {
        format!(
            "warning: {} is readable by every user (mode {:o}) and may hold passwords; chmod 600 it \
             or use password_env / password_file",
            path.display(),
            mode & 0o777
        )
    })
}
