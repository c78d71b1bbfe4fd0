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
