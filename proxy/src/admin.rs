//! The admin socket (README, "Admin commands"): a Unix socket, created mode 0600, one command per
//! line, one JSON object per answer line. A switchover also sends one `{"progress": ...}` line
//! per step as it completes, before its answer. `sqlswitch ctl` is the client ([`crate::ctl`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::control::Control;

/// Binds the admin socket at `path`: refuses a path that a live daemon serves or that is not a
/// socket, replaces a stale socket, and makes it 0600.
///
/// # Errors
/// Any of those.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            anyhow::bail!("admin socket {}: the path exists and is not a socket", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("admin socket {}: another sqlswitch is serving it", path.display());
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path).map_err(|e| anyhow::anyhow!("admin socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves admin connections until `shutdown`, then removes the socket.
pub async fn serve(listener: UnixListener, path: PathBuf, control: Arc<Control>, shutdown: CancellationToken) {
    info!(socket = %path.display(), "admin socket ready");
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::spawn(connection(stream, Arc::clone(&control)));
    }
    let _ = std::fs::remove_file(&path);
}

async fn connection(stream: UnixStream, control: Arc<Control>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let control = Arc::clone(&control);
        let work = tokio::spawn(async move {
            let answer = execute(&control, &line, &tx).await;
            let _ = tx.send(answer.unwrap_or_else(|e| json!({ "ok": false, "error": e })));
        });
        while let Some(value) = rx.recv().await {
            let mut text = value.to_string();
            text.push('\n');
            if write.write_all(text.as_bytes()).await.is_err() {
                // The operator left; the command still runs to its end (a switchover cannot be
                // abandoned halfway, and a pause ends by its own timeout).
                break;
            }
        }
        let _ = work.await;
    }
}

/// Parses `key=value` options (`timeout=30s`) and bare flags (`promote`).
struct Args<'a> {
    positional: Vec<&'a str>,
    timeout: Option<Duration>,
    promote: bool,
    no_repoint: bool,
    force: bool,
    reverse: bool,
    /// The options and flags given, by name (`timeout`, `promote`, ...).
    given: Vec<&'static str>,
}

fn parse_args<'a>(words: &[&'a str]) -> Result<Args<'a>, String> {
    let mut args = Args {
        positional: Vec::new(),
        timeout: None,
        promote: false,
        no_repoint: false,
        force: false,
        reverse: false,
        given: Vec::new(),
    };
    for w in words {
        let name = if let Some(v) = w.strip_prefix("timeout=") {
            args.timeout = Some(humantime::parse_duration(v).map_err(|e| format!("timeout={v}: {e}"))?);
            "timeout"
        } else if *w == "promote" {
            args.promote = true;
            "promote"
        } else if *w == "no_repoint" {
            args.no_repoint = true;
            "no_repoint"
        } else if *w == "force" {
            args.force = true;
            "force"
        } else if *w == "reverse" {
            args.reverse = true;
            "reverse"
        } else {
            args.positional.push(w);
            continue;
        };
        args.given.push(name);
    }
    Ok(args)
}

/// The options and flags `command` takes; any other is refused (`pause app force` is a typo
/// or a misunderstanding, never silently ignored).
fn takes(command: &str) -> &'static [&'static str] {
    match command {
        "switchover" => &["promote", "no_repoint", "force", "reverse", "timeout"],
        "failover" => &["no_repoint", "timeout"],
        "pause" | "upgrade-check" => &["timeout"],
        _ => &[],
    }
}

const USAGE: &str = "commands: status | switchover CLUSTER BACKEND [promote] [no_repoint] [force] [reverse] [timeout=30s] | \
                     upgrade-check CLUSTER BACKEND [timeout=30s] | \
                     failover CLUSTER [BACKEND] [no_repoint] [timeout=30s] | pause CLUSTER [timeout=10s] | \
                     resume CLUSTER | mode CLUSTER read-only|read-write | detach CLUSTER | attach CLUSTER | drain CLUSTER BACKEND | enable CLUSTER BACKEND | rejoin CLUSTER BACKEND | unfence CLUSTER BACKEND | fleet-resolve CLUSTER BACKEND | reload";

async fn execute(control: &Arc<Control>, line: &str, progress: &mpsc::UnboundedSender<Value>) -> Result<Value, String> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    let Some((&command, rest)) = words.split_first() else { return Err(format!("empty command; {USAGE}")) };
    let args = parse_args(rest)?;
    if let Some(flag) = args.given.iter().find(|f| !takes(command).contains(f)) {
        return Err(format!("{command} does not take {flag}; {USAGE}"));
    }
    let wrong = |n: usize| format!("{command}: expected {n} argument(s), got {}; {USAGE}", args.positional.len());
    let need = |n: usize| -> Result<(), String> {
        if args.positional.len() == n {
            Ok(())
        } else {
            Err(wrong(n))
        }
    };
    let one = || -> Result<&str, String> {
        match args.positional.as_slice() {
            [a] => Ok(a),
            _ => Err(wrong(1)),
        }
    };
    let two = || -> Result<(&str, &str), String> {
        match args.positional.as_slice() {
            [a, b] => Ok((a, b)),
            _ => Err(wrong(2)),
        }
    };
    match command {
        "status" => {
            need(0)?;
            Ok(control.status())
        }
        "pause" => control.pause(one()?, args.timeout.unwrap_or(Duration::from_secs(10))),
        "resume" => control.resume(one()?),
        "mode" => {
            let (cluster, mode) = two()?;
            control.mode(cluster, mode).await
        }
        "detach" | "attach" => control.detach(one()?, command == "detach").await,
        "drain" | "enable" => {
            let (cluster, backend) = two()?;
            control.set_enabled(cluster, backend, command == "enable").await
        }
        "rejoin" => {
            let (cluster, backend) = two()?;
            control.rejoin(cluster, backend)
        }
        "fleet-resolve" => {
            let (cluster, backend) = two()?;
            control.fleet_resolve(cluster, backend).await
        }
        "unfence" => {
            let (cluster, backend) = two()?;
            control.unfence(cluster, backend).await
        }
        "switchover" => {
            let (cluster, target) = two()?;
            let timeout = args.timeout.unwrap_or(Duration::from_secs(30));
            let mut report = |step: &crate::switchover::Step| {
                let _ = progress.send(step.json());
            };
            let how = crate::switchover::How {
                promote: args.promote,
                repoint: !args.no_repoint,
                timeout,
                force: args.force,
                reverse: args.reverse,
            };
            Ok(crate::switchover::run(control, cluster, target, how, &mut report).await.unwrap_or_else(|e| e.answer()))
        }
        "upgrade-check" => {
            let (cluster, target) = two()?;
            crate::switchover::upgrade_check(control, cluster, target, args.timeout.unwrap_or(Duration::from_secs(30)))
                .await
        }
        "failover" => {
            let (cluster, target) = match args.positional.as_slice() {
                [cluster] => (*cluster, None),
                [cluster, target] => (*cluster, Some(*target)),
                _ => return Err(wrong(1)),
            };
            let timeout = args.timeout.unwrap_or(Duration::from_secs(30));
            let mut report = |step: &crate::switchover::Step| {
                let _ = progress.send(step.json());
            };
            let failover = crate::failover::run(control, cluster, target, !args.no_repoint, timeout, &mut report);
            Ok(failover.await.unwrap_or_else(|e| e.answer()))
        }
        "reload" => {
            need(0)?;
            control.reload()
        }
        other => Err(format!("unknown command {other:?}; {USAGE}")),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn the_socket_is_private_and_only_a_stale_socket_is_replaced() {
        let dir = std::env::temp_dir().join(format!("sqlswitch-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.sock");

        // A regular file at the path is not ours to remove.
        std::fs::write(&path, "keep me").unwrap();
        let err = super::bind(&path).expect_err("a regular file is refused");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
        std::fs::remove_file(&path).unwrap();

        // A socket nobody serves (a daemon that crashed) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = super::bind(&path).expect("a stale socket is replaced");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        // A served socket is refused.
        let err = super::bind(&path).expect_err("a live socket is refused");
        assert!(err.to_string().contains("another sqlswitch"), "{err}");
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
