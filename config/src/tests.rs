use super::*;
use crate::validate::without_value;

const GOOD: &str = r#"
[admin]
socket = "/tmp/s.sock"
metrics = "127.0.0.1:9930"

[[cluster]]
name = "app"
protocol = "postgres"
listen = "127.0.0.1:6432"
read_only_listen = "127.0.0.1:6433"
read_only_users = ["anon"]
max_replica_lag = "1s"
monitor = { user = "monitor", password = "monitor" }

[[cluster.user]]
name = "app"
password = "app"

[[cluster.user]]
name = "anon"
password_env = "ANON_PW"

[[cluster.backend]]
name = "pg1"
address = "127.0.0.1:15432"
role = "primary"

[[cluster.backend]]
name = "pg2"
address = "localhost:15433"
role = "replica"
weight = 2
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("t.toml"), |v| (v == "ANON_PW").then(|| "secret".to_owned()))
}

#[test]
fn the_product_example_loads() {
    let c = parse(GOOD).unwrap();
    let cl = &c.clusters[0];
    assert_eq!(cl.max_replica_lag, Duration::from_secs(1));
    assert_eq!(cl.user("anon").unwrap().secret(), "secret");
    assert_eq!(cl.backends[1].weight, 2);
    assert_eq!(cl.primary_index(), 0);
    assert!(cl.read_your_writes);
    assert!(!format!("{cl:?}").contains("secret"), "passwords never reach Debug output");
}

#[test]
fn unknown_keys_are_errors_naming_the_key_and_line() {
    let err = parse(&GOOD.replace("weight = 2", "wieght = 2")).unwrap_err().to_string();
    assert!(err.starts_with("t.toml: "), "{err}");
    assert!(err.contains("wieght"), "{err}");
    assert!(err.contains("line 32"), "{err}");
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let bad = GOOD
        .replace("role = \"replica\"", "role = \"primary\"")
        .replace("read_only_users = [\"anon\"]", "read_only_users = [\"nobody\"]")
        .replace("password_env = \"ANON_PW\"", "password_env = \"MISSING\"")
        .replace("address = \"localhost:15433\"", "address = \"localhost\"");
    let err = parse(&bad).unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "cluster[0].user[1].password_env",
            "cluster[0].read_only_users[0]",
            "cluster[0].backend",
            "cluster[0].backend[1].address"
        ],
        "{err}"
    );
}

#[test]
fn mysql_clusters_load_and_unknown_protocols_do_not() {
    let c = parse(&GOOD.replace("protocol = \"postgres\"", "protocol = \"mysql\"")).unwrap();
    assert_eq!(c.clusters[0].protocol, Protocol::Mysql);
    assert!(parse(&GOOD.replace("protocol = \"postgres\"", "protocol = \"oracle\"")).is_err());
}

#[test]
fn bad_durations_and_addresses_are_errors() {
    assert!(parse(&GOOD.replace("\"1s\"", "\"soon\"")).is_err());
    assert!(parse(&GOOD.replace("127.0.0.1:6432", "nowhere")).is_err());
    let dup = GOOD.replace("127.0.0.1:6433", "127.0.0.1:6432");
    assert!(parse(&dup).unwrap_err().to_string().contains("cluster[0].read_only_listen"));
    // A backend's address: host:port, or the absolute path of a Unix socket.
    let unix = GOOD.replace("127.0.0.1:15432", "/run/postgresql/.s.PGSQL.5432");
    assert_eq!(parse(&unix).unwrap().clusters[0].backends[0].address, "/run/postgresql/.s.PGSQL.5432");
    let err = parse(&GOOD.replace("127.0.0.1:15432", "run/pg.sock")).unwrap_err().to_string();
    assert!(err.contains("cluster[0].backend[0].address"), "{err}");
}

#[test]
fn each_group_names_one_primary_and_the_first_group_starts_active() {
    let two = format!(
        "{GOOD}\n[[cluster.backend]]\nname = \"new1\"\naddress = \"127.0.0.1:16432\"\nrole = \"primary\"\ngroup = \"pg16\"\n\
         \n[[cluster.backend]]\nname = \"new2\"\naddress = \"127.0.0.1:16433\"\nrole = \"replica\"\ngroup = \"pg16\"\n"
    );
    let c = parse(&two).unwrap();
    let cl = &c.clusters[0];
    assert_eq!(cl.groups(), ["main", "pg16"]);
    assert_eq!(cl.primary_index(), 0, "the first group listed starts active");
    assert_eq!(cl.backends[2].group, "pg16");
    assert_eq!(cl.backends[0].group, "main", "a backend that names no group is in \"main\"");

    // A new group listed first starts active.
    let first = two.replacen("name = \"pg1\"", "name = \"pg1\"\ngroup = \"old\"", 1).replacen(
        "name = \"pg2\"",
        "name = \"pg2\"\ngroup = \"old\"",
        1,
    );
    assert_eq!(parse(&first).unwrap().clusters[0].primary_index(), 0);

    // A group without its primary is named.
    let err = parse(&two.replace("role = \"primary\"\ngroup = \"pg16\"", "role = \"replica\"\ngroup = \"pg16\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("exactly one backend of group \"pg16\" must have role = \"primary\" (found 0)"), "{err}");
    let err = parse(&two.replace("group = \"pg16\"\n\n", "group = \"\"\n\n")).unwrap_err().to_string();
    assert!(err.contains("backend[2].group: must not be empty"), "{err}");
    // One group keeps the message it always had.
    let err = parse(&GOOD.replace("role = \"replica\"", "role = \"primary\"")).unwrap_err().to_string();
    assert!(err.contains("exactly one backend must have role = \"primary\" (found 2)"), "{err}");
}

#[test]
fn a_type_error_never_echoes_the_value() {
    let text = "[[cluster]]\nname = \"app\"\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:6432\"\n\
                [[cluster.user]]\nname = \"app\"\npassword = 123456\n";
    let e = Config::parse(text, Path::new("t.toml"), |_| None).unwrap_err().to_string();
    assert!(!e.contains("123456"), "{e}");
    assert!(e.contains("invalid type: integer, expected") && e.contains("password"), "{e}");
    assert_eq!(without_value("invalid value: string \"hunter2\", expected x"), "invalid value: string, expected x");
    assert_eq!(without_value("missing field `name`"), "missing field `name`");
}

#[test]
fn advice_names_the_cluster_and_the_key() {
    assert!(parse(GOOD).unwrap().advice().is_empty(), "a complete config gets no advice");
    let no_monitor = GOOD.replace("monitor = { user = \"monitor\", password = \"monitor\" }\n", "");
    let advice = parse(&no_monitor).unwrap().advice();
    assert_eq!(advice.len(), 1, "{advice:?}");
    assert!(advice[0].contains("\"app\"") && advice[0].contains("no `monitor`"), "{advice:?}");
    let with_password = GOOD.replace(
        "max_replica_lag = \"1s\"\n",
        "max_replica_lag = \"1s\"\nreplication = { user = \"repl\", password = \"r\" }\n",
    );
    let advice = parse(&with_password).unwrap().advice();
    assert!(advice.len() == 1 && advice[0].contains("replication.password"), "{advice:?}");
    let without =
        GOOD.replace("max_replica_lag = \"1s\"\n", "max_replica_lag = \"1s\"\nreplication = { user = \"repl\" }\n");
    let config = parse(&without).unwrap();
    assert!(config.advice().is_empty(), "a password left out is the advised way");
    assert_eq!(config.clusters[0].replication.as_ref().unwrap().password.expose(), "");
}

#[test]
fn every_password_may_come_from_the_environment_or_a_file() {
    let dir = std::env::temp_dir().join(format!("sqlswitch-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("monitor.pw");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let text = GOOD.replacen(
        "monitor = { user = \"monitor\", password = \"monitor\" }",
        &format!(
            "monitor = {{ user = \"m\", password_file = \"{}\" }}\n\
             replication = {{ user = \"r\", password_env = \"ANON_PW\" }}",
            file.display()
        ),
        1,
    ) + "\n[fleet]\netcd = [\"http://127.0.0.1:2379\"]\nuser = \"e\"\npassword_env = \"ANON_PW\"\n";
    let c = parse(&text).unwrap();
    let cluster = &c.clusters[0];
    assert_eq!(cluster.monitor.as_ref().unwrap().password.expose(), "from-a-file", "the trailing newline is dropped");
    assert_eq!(cluster.replication.as_ref().unwrap().password.expose(), "secret");
    assert_eq!(c.fleet.as_ref().unwrap().password.as_ref().unwrap().expose(), "secret");
    let both = text.replace("user = \"m\", password_file", "user = \"m\", password = \"x\", password_file");
    let err = parse(&both).unwrap_err();
    assert_eq!(err.problems[0].key, "cluster[0].monitor", "{err}");
    assert!(err.problems[0].message.contains("not several"), "{err}");
    let missing = text.replace("monitor.pw", "nowhere.pw");
    let err = parse(&missing).unwrap_err();
    assert_eq!(err.problems[0].key, "cluster[0].monitor.password_file", "{err}");
    let unset = text.replace("password_env = \"ANON_PW\"\n", "password_env = \"UNSET\"\n");
    let err = parse(&unset).unwrap_err();
    assert_eq!(err.problems[0].key, "fleet.password_env", "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_host_name_in_listen_gets_a_hint() {
    let err = parse(&GOOD.replace("listen = \"127.0.0.1:6432\"", "listen = \"localhost:6432\"")).unwrap_err();
    let message = &err.problems[0].message;
    assert!(message.contains("cluster.listen") && message.contains("write an IP address and a port"), "{message}");
}

/// The configs a new user copies: the README's reference block and every file of `examples/`
/// load as printed (passwords from the environment).
#[test]
fn the_readme_block_and_the_examples_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let config = readme.split("## Config").nth(1).expect("a Config section");
    let block = config.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).expect("a toml block");
    let any = |_: &str| Some("from-the-environment".to_owned());
    if let Err(e) = Config::parse(block, Path::new("README.md"), any) {
        panic!("README's config block: {e}");
    }
    let mut examples = 0;
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = Config::parse(&text, &path, any) {
                panic!("{e}");
            }
            examples += 1;
        }
    }
    assert!(examples >= 2, "examples/*.toml: {examples}");
}

#[test]
fn the_default_admin_socket_is_under_the_runtime_directory_when_there_is_one() {
    let dir = std::env::temp_dir().join(format!("sqlswitch-run-{}", std::process::id()));
    assert_eq!(super::default_socket_in(&dir), std::path::PathBuf::from("/tmp/sqlswitch.sock"));
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(super::default_socket_in(&dir), dir.join("admin.sock"));
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn a_scram_verifier_is_a_postgres_users_secret_and_must_be_whole() {
    let verifier = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:\
                    wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
    let with = |password: &str| GOOD.replacen("password = \"app\"", &format!("password = \"{password}\""), 1);
    let c = parse(&with(verifier)).expect("a PostgreSQL user with the server's verifier");
    assert_eq!(c.clusters[0].user("app").unwrap().secret(), verifier);
    let err = parse(&with("SCRAM-SHA-256$4096:abc$short:keys")).unwrap_err().to_string();
    assert!(err.contains("pg_authid.rolpassword"), "{err}");
    let mysql = with(verifier).replace("protocol = \"postgres\"", "protocol = \"mysql\"");
    let err = parse(&mysql).unwrap_err().to_string();
    assert!(err.contains("PostgreSQL secret"), "{err}");
}

#[test]
fn auth_user_and_per_user_pool_mode() {
    let auth = GOOD.replace(
        "max_replica_lag = \"1s\"\n",
        "max_replica_lag = \"1s\"\nauth_user = { user = \"auth\", password_env = \"ANON_PW\" }\n",
    );
    let c = parse(&auth).unwrap();
    assert_eq!(c.clusters[0].auth_user.as_ref().map(|a| a.password.expose()), Some("secret"), "password_env resolved");
    let no_placeholder =
        auth.replace("max_replica_lag = \"1s\"\n", "max_replica_lag = \"1s\"\nauth_query = \"SELECT 1\"\n");
    let err = parse(&no_placeholder).unwrap_err();
    assert_eq!(err.problems[0].key, "cluster[0].auth_query", "{err}");
    let mysql = auth.replace("protocol = \"postgres\"", "protocol = \"mysql\"");
    assert!(parse(&mysql).is_ok(), "MariaDB clusters look users up too");

    let moded = GOOD.replace("name = \"anon\"\n", "name = \"anon\"\npool_mode = \"transaction\"\n");
    let c = parse(&moded).unwrap();
    let cl = &c.clusters[0];
    assert_eq!(cl.pool_mode_of("anon"), PoolMode::Transaction);
    assert_eq!(cl.pool_mode_of("app"), PoolMode::Session, "the cluster's");
    assert!(cl.pools_transactions());
    let shuffled = moded.replace("max_replica_lag = \"1s\"\n", "max_replica_lag = \"1s\"\npool_shuffle = true\n");
    assert!(parse(&shuffled).is_ok(), "a user in transaction mode is enough for pool_shuffle");
    let shuffled = GOOD.replace("max_replica_lag = \"1s\"\n", "max_replica_lag = \"1s\"\npool_shuffle = true\n");
    assert!(parse(&shuffled).is_err(), "pool_shuffle with nothing in transaction mode");
}
