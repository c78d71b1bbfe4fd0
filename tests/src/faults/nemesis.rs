//! The faults: each applied to the running world, held for a while, healed, and recorded. A
//! change of primary leaves the topology whole again (the old primary rejoined as a replica),
//! as an operator would, so that the next fault finds a primary and two replicas.

use std::time::Duration;

use anyhow::{Context, Result};
use rand::Rng;

use super::history::Fault;
use super::world::{Servers, World, NAMES};

/// The kinds of fault, with their weights in the schedule.
const KINDS: [(&str, u32); 13] = [
    ("switchover", 3),
    ("kill-driver", 1),
    ("freeze-instance", 1),
    ("kill-instance", 1),
    ("partition-etcd", 1),
    ("kill-etcd", 1),
    ("external-promotion", 1),
    ("freeze-primary", 2),
    ("freeze-replica", 1),
    ("blackhole-primary", 2),
    ("cut-primary", 2),
    ("replica-lag", 2),
    ("pause", 1),
];

/// Picks a fault by weight (`fleet`: faults of etcd too).
pub fn pick(rng: &mut impl Rng, fleet: bool) -> &'static str {
    let kinds: Vec<(&str, u32)> = KINDS.into_iter().filter(|(n, _)| fleet || !n.ends_with("-etcd")).collect();
    let total: u32 = kinds.iter().map(|(_, w)| w).sum();
    let mut at = rng.gen_range(0..total);
    for (name, weight) in kinds {
        if at < weight {
            return name;
        }
        at -= weight;
    }
    "pause"
}

/// Applies fault `name` (to the replica `choice` picks, where it needs one), holds it for
/// `hold`, heals it; returns what happened (`None` when it
/// could not apply, as a switchover with no replica up).
///
/// # Errors
/// The harness failed to apply or heal it (not sqlswitch refusing: that is recorded).
pub async fn apply(
    world: &mut World,
    name: &'static str,
    hold: Duration,
    choice: usize,
    ms: impl Fn() -> u64,
) -> Result<Option<Fault>> {
    let (primary, replicas) = world.roles().await;
    let Some(&replica) = replicas.get(choice % replicas.len().max(1)) else { return Ok(None) };
    let instance = choice % world.instances.len().max(1);
    let started_ms = ms();
    let mut planned = false;
    let detail = match name {
        "switchover" => {
            planned = true;
            let command = format!("switchover app {} promote timeout=20s", NAMES[replica]);
            let answer = world.ctl_on(instance, &command).await;
            let healed_ms = ms();
            let mut detail =
                format!("{} -> {} on instance {instance}: {}", NAMES[primary], NAMES[replica], short(&answer));
            if answer["ok"] == true {
                rejoin(world, primary, replica).await?;
            } else if answer["error"].as_str().is_some_and(|e| e.contains("catch_up")) {
                // What the target says of its replication, to tell lag from a stalled stream.
                detail += &format!(" [{}: {}]", NAMES[replica], replication_state(world, replica));
                if let Servers::My(t) = &world.servers {
                    let sql = "SELECT GROUP_CONCAT(CONCAT_WS(' ', ID, HOST, COMMAND, STATE, TIME) SEPARATOR '; ') \
                               FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'";
                    let dumps = t.sql(&t.nodes[primary], sql).unwrap_or_else(|e| e.to_string());
                    detail += &format!(" [{} dump threads: {}]", NAMES[primary], dumps.trim());
                }
            }
            return Ok(Some(Fault { name: name.into(), detail, started_ms, healed_ms, planned }));
        }
        "kill-driver" => {
            let detail = kill_driver(world, instance, primary, replica, choice).await?;
            return Ok(Some(Fault { name: name.into(), detail, started_ms, healed_ms: ms(), planned }));
        }
        "external-promotion" => {
            let promoted = external_promotion(world, primary, replica).await?;
            let healed_ms = ms();
            if promoted {
                rejoin(world, primary, replica).await?;
            }
            let detail = if promoted {
                format!("{} -> {} by hand, the old one fenced first", NAMES[primary], NAMES[replica])
            } else {
                format!(
                    "{} -> {} by hand: not promoted, the target did not catch up in 10 s ({})",
                    NAMES[primary],
                    NAMES[replica],
                    replication_state(world, replica)
                )
            };
            return Ok(Some(Fault { name: name.into(), detail, started_ms, healed_ms, planned }));
        }
        "freeze-primary" | "freeze-replica" => {
            let node = if name == "freeze-primary" { primary } else { replica };
            signal(world, node, "-STOP")?;
            tokio::time::sleep(hold).await;
            signal(world, node, "-CONT")?;
            format!("{} SIGSTOP for {hold:?}", NAMES[node])
        }
        "blackhole-primary" => {
            world.instances[instance].relays[primary].blackhole();
            tokio::time::sleep(hold).await;
            world.instances[instance].relays[primary].heal();
            format!("instance {instance} to {} blackholed for {hold:?}", NAMES[primary])
        }
        "cut-primary" => {
            world.instances[instance].relays[primary].cut();
            format!("instance {instance}'s connections to {} reset", NAMES[primary])
        }
        "freeze-instance" => {
            let pid = world.instances[instance].pid.to_string();
            std::process::Command::new("kill").args(["-STOP", &pid]).status()?;
            tokio::time::sleep(hold).await;
            std::process::Command::new("kill").args(["-CONT", &pid]).status()?;
            format!("sqlswitch instance {instance} SIGSTOP for {hold:?}")
        }
        "kill-instance" => {
            world.restart(instance).await?;
            format!("sqlswitch instance {instance} SIGKILL, started again")
        }
        "kill-etcd" => {
            if !world.kill_etcd(hold).await? {
                return Ok(None);
            }
            format!("etcd SIGKILL, started again after {hold:?}")
        }
        "partition-etcd" => {
            let Some(relay) = world.instances[instance].etcd_relay.as_ref() else { return Ok(None) };
            relay.blackhole();
            tokio::time::sleep(hold).await;
            relay.heal();
            format!("instance {instance} to etcd blackholed for {hold:?}")
        }
        "replica-lag" => {
            replay(world, replica, false)?;
            tokio::time::sleep(hold).await;
            replay(world, replica, true)?;
            format!("{} stopped applying for {hold:?}", NAMES[replica])
        }
        _ => {
            let answer = world.ctl_on(instance, &format!("pause app timeout={}ms", hold.as_millis())).await;
            tokio::time::sleep(hold).await;
            format!("pause for {hold:?}: {}", short(&answer))
        }
    };
    Ok(Some(Fault { name: name.into(), detail, started_ms, healed_ms: ms(), planned }))
}

/// A switchover driven by `instance`, which is SIGKILLed after 0-1.5 s (somewhere among the
/// change's steps) and started again. Once its cluster names a primary with no problem (at most
/// 30 s), an old primary left behind rejoins as a replica; returns what happened.
async fn kill_driver(
    world: &mut World,
    instance: usize,
    primary: usize,
    replica: usize,
    choice: usize,
) -> Result<String> {
    let admin = world.admin(instance)?;
    let command = format!("switchover app {} promote timeout=20s\n", NAMES[replica]);
    let driver = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::UnixStream::connect(admin).await.ok()?;
        stream.write_all(command.as_bytes()).await.ok()?;
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer).await;
        Some(answer)
    });
    let after = Duration::from_millis(u64::try_from(choice).unwrap_or(0) * 3 / 2);
    tokio::time::sleep(after).await;
    world.restart(instance).await?;
    let _ = driver.await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut status = world.status_on(instance).await;
    while !status["primary_problem"].is_null() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = world.status_on(instance).await;
    }
    let mut now = status["primary"].as_str().and_then(|p| NAMES.iter().position(|n| *n == p));
    let mut unfenced = "";
    if !status["primary_problem"].is_null() && world.instances.len() == 1 {
        // Killed between the fence and the promotion with no fleet to finish the change: the
        // documented way back is `unfence` of the old primary, as an operator would.
        let answer = world.ctl_on(instance, &format!("unfence app {}", NAMES[primary])).await;
        unfenced = if answer["ok"] == true { ", unfenced by hand" } else { ", unfence failed" };
        now = Some(primary);
    }
    let ended = match now {
        Some(p) if p == replica => {
            rejoin(world, primary, replica).await?;
            format!("{} promoted", NAMES[replica])
        }
        Some(p) if p == primary => format!("{} still primary", NAMES[primary]),
        _ => format!("no primary: {}", status["primary_problem"]),
    };
    Ok(format!(
        "switchover {} -> {} on instance {instance}, SIGKILL after {after:?}, started again: {ended}{unfenced}",
        NAMES[primary], NAMES[replica]
    ))
}

fn short(answer: &serde_json::Value) -> String {
    match answer["ok"].as_bool() {
        Some(true) => "ok".into(),
        _ => answer["error"].as_str().unwrap_or("no answer").chars().take(300).collect(),
    }
}

fn signal(world: &World, node: usize, sig: &str) -> Result<()> {
    let pids = match &world.servers {
        Servers::Pg(t) => t.pids(&t.nodes[node])?,
        Servers::My(t) => vec![crate::mysql::Topology::pid(&t.nodes[node]).to_string()],
    };
    let status = std::process::Command::new("kill").arg(sig).args(&pids).status()?;
    anyhow::ensure!(status.success(), "kill {sig} {pids:?}");
    Ok(())
}

fn replay(world: &World, node: usize, on: bool) -> Result<()> {
    match &world.servers {
        Servers::Pg(t) => t.set_replay_paused(&t.nodes[node], !on),
        Servers::My(t) => {
            let sql = if on { "START SLAVE SQL_THREAD" } else { "STOP SLAVE SQL_THREAD" };
            t.sql(&t.nodes[node], sql).map(drop)
        }
    }
}

/// A promotion by other tooling, done as a careful one (Patroni, orchestrator) does it: fence
/// the old primary and end its client sessions, wait until the target has everything, promote
/// it, point the other replica at it.
/// Returns whether it promoted (`false`: the target did not catch up, and the old primary was
/// unfenced again).
async fn external_promotion(world: &World, old: usize, new: usize) -> Result<bool> {
    let other = (0..NAMES.len()).find(|i| *i != old && *i != new).context("three servers")?;
    match &world.servers {
        Servers::Pg(t) => {
            let (o, n) = (&t.nodes[old], &t.nodes[new]);
            t.psql_admin(o, "ALTER SYSTEM SET default_transaction_read_only = on", "postgres")?;
            t.psql_admin(o, "SELECT pg_reload_conf()", "postgres")?;
            let end = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'faulter'";
            t.psql_admin(o, end, "postgres")?;
            let lsn = t.psql_admin(o, "SELECT pg_current_wal_lsn()", "postgres")?;
            let caught_up = format!("SELECT pg_last_wal_replay_lsn() >= '{}'", lsn.trim());
            let mut caught = false;
            for _ in 0..200 {
                caught = t.psql_admin(n, &caught_up, "postgres")?.trim() == "t";
                if caught {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !caught {
                // A careful tool does not promote a standby that lacks the primary's writes.
                t.psql_admin(o, "ALTER SYSTEM RESET default_transaction_read_only", "postgres")?;
                t.psql_admin(o, "SELECT pg_reload_conf()", "postgres")?;
                return Ok(false);
            }
            t.psql_admin(n, "SELECT pg_promote(true, 60)", "postgres")?;
            let conninfo =
                format!("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={} user=postgres'", n.port);
            t.psql_admin(&t.nodes[other], &conninfo, "postgres")?;
            t.psql_admin(&t.nodes[other], "SELECT pg_reload_conf()", "postgres")?;
        }
        Servers::My(t) => {
            let (o, n) = (&t.nodes[old], &t.nodes[new]);
            t.sql(o, "SET GLOBAL read_only = 1")?;
            let ids = t.sql(o, "SELECT GROUP_CONCAT(ID) FROM information_schema.PROCESSLIST WHERE USER = 'faulter'")?;
            for id in ids.trim().split(',').filter(|i| i.chars().all(|c| c.is_ascii_digit()) && !i.is_empty()) {
                let _ = t.sql(o, &format!("KILL CONNECTION {id}"));
            }
            let pos = t.sql(o, "SELECT @@gtid_binlog_pos")?;
            let waited = t.sql(n, &format!("SELECT MASTER_GTID_WAIT('{}', 10)", pos.trim()))?;
            if waited.trim() != "0" {
                // A careful tool does not promote a replica that lacks the primary's writes.
                t.sql(o, "SET GLOBAL read_only = 0")?;
                return Ok(false);
            }
            t.sql(n, "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0")?;
            t.sql(&t.nodes[other], &change_master(n.port))?;
        }
    }
    Ok(true)
}

fn change_master(port: u16) -> String {
    format!(
        "STOP SLAVE; CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={port}, MASTER_USER='repl', \
         MASTER_PASSWORD='repl', MASTER_USE_GTID=slave_pos; START SLAVE"
    )
}

/// The old primary becomes a replica of the new one (PostgreSQL: a fresh base backup, as
/// after `pg_rewind`; MariaDB: sqlswitch re-pointed it after a switchover, by hand otherwise).
async fn rejoin(world: &World, old: usize, new: usize) -> Result<()> {
    match &world.servers {
        Servers::Pg(t) => {
            let (o, n) = (t.nodes[old].clone(), t.nodes[new].clone());
            tokio::task::block_in_place(|| t.rebuild_standby(&o, &n))
        }
        Servers::My(t) => {
            let o = &t.nodes[old];
            if t.sql(o, "SHOW SLAVE STATUS")?.trim().is_empty() {
                t.sql(o, "SET GLOBAL read_only = 1; SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos")?;
                t.sql(o, &change_master(t.nodes[new].port))?;
            }
            Ok(())
        }
    }
}

/// What a replica says of its replication (for a fault's record when it did not catch up).
fn replication_state(world: &World, node: usize) -> String {
    let text = match &world.servers {
        Servers::Pg(t) => t
            .psql_admin(&t.nodes[node], "SELECT status, sender_port FROM pg_stat_wal_receiver", "postgres")
            .unwrap_or_else(|e| e.to_string()),
        Servers::My(t) => t.sql(&t.nodes[node], "SHOW SLAVE STATUS").unwrap_or_else(|e| e.to_string()),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(1500).collect()
}
