//! The `sqlswitch` command line: `check` on good, bad and exposed config files.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const CONFIG: &str = r#"
[admin]
socket = "/tmp/sqlswitch-cli-test.sock"

[[cluster]]
name = "app"
protocol = "postgres"
listen = "127.0.0.1:0"

[[cluster.user]]
name = "app"
password = "secret-password"

[[cluster.backend]]
name = "primary"
address = "127.0.0.1:5432"
role = "primary"
"#;

fn check(text: &str, mode: u32) -> (bool, String, String) {
    let dir = std::env::temp_dir().join(format!("sqlswitch-cli-{}-{mode:o}-{}", std::process::id(), text.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sqlswitch.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sqlswitch")).args(["check", "--config"]).arg(&path).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_a_good_config_and_warns_when_others_can_read_it() {
    let (ok, stdout, stderr) = check(CONFIG, 0o600);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ok (1 cluster(s), 1 listener(s))"), "{stdout}");
    assert!(stderr.is_empty(), "no warning for a private file: {stderr}");
    let (ok, _, stderr) = check(CONFIG, 0o644);
    assert!(ok, "a warning, not a failure");
    assert!(stderr.contains("readable by every user"), "{stderr}");
    assert!(!stderr.contains("secret-password"), "never the password itself");
}

#[test]
fn check_names_the_file_and_key_of_every_problem() {
    let bad = CONFIG.replace("protocol = \"postgres\"", "protocol = \"oracle\"").replace("127.0.0.1:0", "nowhere");
    let (ok, _, stderr) = check(&bad, 0o600);
    assert!(!ok);
    assert!(stderr.contains("sqlswitch.toml"), "{stderr}");
    assert!(stderr.contains("key `cluster.protocol`"), "{stderr}");
    assert!(!stderr.contains("secret-password"), "{stderr}");
}

/// A daemon run from the command line with `args`, over a backend that is not there; its
/// admin socket is `dir/admin.sock`.
fn daemon(dir: &std::path::Path, args: &[&str]) -> std::process::Child {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("sqlswitch.toml");
    let text = CONFIG
        .replace("/tmp/sqlswitch-cli-test.sock", &dir.join("admin.sock").display().to_string())
        .replace("127.0.0.1:5432", "127.0.0.1:1")
        .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nmonitor = { user = \"m\", password = \"m\" }");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    Command::new(env!("CARGO_BIN_EXE_sqlswitch"))
        .arg("run")
        .args(args)
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn interrupt(child: &std::process::Child) {
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
}

/// `run --log-format json`: one JSON object per line, each event with its fields (here the
/// monitor finding a backend down), and SIGINT stops it.
#[test]
fn run_logs_json_lines_with_event_fields() {
    let dir = std::env::temp_dir().join(format!("sqlswitch-cli-json-{}", std::process::id()));
    let child = daemon(&dir, &["--log-format", "json"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let logs = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let down = lines.iter().find(|l| l["event"] == "backend_down").unwrap_or_else(|| panic!("{logs}"));
    assert_eq!(down["cluster"], "app");
    assert_eq!(down["backend"], "primary");
    assert_eq!(down["level"], "WARN");
    assert!(down["error"].as_str().is_some_and(|e| !e.is_empty()), "{down}");
    assert!(lines.iter().any(|l| l["message"] == "listening"), "{logs}");
}

/// `ctl status --watch` redraws the status every second, with statements per second per
/// backend, and ends cleanly on Ctrl-C (SIGINT).
#[test]
fn ctl_status_watch_redraws_until_interrupted() {
    let dir = std::env::temp_dir().join(format!("sqlswitch-cli-watch-{}", std::process::id()));
    let mut run = daemon(&dir, &[]);
    let socket = dir.join("admin.sock");
    for _ in 0..50 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let watch = Command::new(env!("CARGO_BIN_EXE_sqlswitch"))
        .args(["ctl", "--socket"])
        .arg(&socket)
        .args(["status", "--watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    interrupt(&watch);
    let out = watch.wait_with_output().unwrap();
    interrupt(&run);
    let _ = run.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}: {text}", out.status);
    let frames = text.matches("\x1b[H\x1b[2J").count();
    assert!((2..=4).contains(&frames), "{frames} frames in 2.5 s: {text}");
    assert!(text.contains("stmt/s") && text.contains("p50 ms") && text.contains("p99 ms"), "{text}");
    assert!(text.contains("cluster app") && text.contains("primary"), "{text}");
    assert!(text.contains("Ctrl-C ends"), "{text}");
}
