//! Fleet mode helpers: instances of one fleet in this process, their config, and waits on
//! what they report.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::connect;
use crate::pg::{Topology, APP};
use crate::proxy::{config_text, PG_REPLICATION};

/// The fleet's lease time in these tests (etcd's shortest is about 1.5 s).
pub const TTL: Duration = Duration::from_secs(3);

/// Config text for instance `name` of a fleet under `prefix`, listening on `listen`.
pub fn config(topo: &Topology, etcd: &str, prefix: &str, name: &str, listen: &str, socket: &str) -> String {
    // Held writes of a fenced instance are refused after connect_timeout.
    let extra = format!("{PG_REPLICATION}\nconnect_timeout = \"1s\"\nmonitor_interval = \"200ms\"");
    let text = config_text(topo, "app", listen, "127.0.0.1:0", None, &extra)
        .replace("socket = \"/tmp/sqlswitch-test.sock\"", &format!("socket = \"{socket}\""));
    format!(
        "{text}\n[fleet]\netcd = [\"{etcd}\"]\nprefix = \"{prefix}\"\nttl = \"{}s\"\ninstance = \"{name}\"\n",
        TTL.as_secs()
    )
}

/// etcd keys of this test's own.
pub fn prefix() -> String {
    format!("/sqlswitch-test-{}-{}", std::process::id(), Instant::now().elapsed().as_nanos() ^ u128::from(rand_u32()))
}

/// A number that differs from call to call.
pub fn rand_u32() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
}

/// An instance in this process.
pub async fn instance(topo: &Topology, etcd: &str, prefix: &str, name: &str) -> sqlswitch::Daemon {
    launch(&config(topo, etcd, prefix, name, "127.0.0.1:0", "/tmp/unused.sock")).await
}

/// An instance in this process, from config `text`.
pub async fn launch(text: &str) -> sqlswitch::Daemon {
    let config = sqlswitch_config::Config::parse(text, std::path::Path::new("<test>"), |_| None).unwrap();
    sqlswitch::Daemon::launch(config, false, 1).await.unwrap()
}

/// The fleet part of a daemon's `status`.
pub fn fleet_of(status: &Value) -> Value {
    status["clusters"][0]["fleet"].clone()
}

/// Waits until `what` holds, or fails naming it.
pub async fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `daemon` has joined a fleet of `n` live instances.
pub async fn joined(daemon: &sqlswitch::Daemon, n: usize) {
    until(&format!("joined a fleet of {n}"), Duration::from_secs(20), || {
        let f = fleet_of(&daemon.control.status());
        f["fenced"] == false && f["instances"].as_array().is_some_and(|i| i.len() == n)
    })
    .await;
}

pub async fn switchover(daemon: &sqlswitch::Daemon, target: &str) -> Result<Value, String> {
    let how = sqlswitch::switchover::How::promoting(Duration::from_secs(30));
    sqlswitch::switchover::run(&daemon.control, "app", target, how, &mut |_| {}).await.map_err(|e| e.to_string())
}

/// Where a write through `port` lands (the server's cluster_name), or its error.
pub async fn write_through(port: u16) -> Result<String, tokio_postgres::Error> {
    let client = connect(port, APP).await?;
    let row = client
        .query_one("INSERT INTO items (note) VALUES ('fleet') RETURNING current_setting('cluster_name')", &[])
        .await?;
    Ok(row.get(0))
}

pub fn port_of(daemon: &sqlswitch::Daemon) -> u16 {
    daemon.addr("app", false).unwrap().port()
}
