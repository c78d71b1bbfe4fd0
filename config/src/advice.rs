//! Advice on a valid config: what it will do that its author may not expect. Printed by `check`
//! and logged at start; never a reason to refuse the config.

use crate::{Config, Protocol, Role};

impl Config {
    /// What this config does that its author may not expect, one sentence each, naming the
    /// cluster and the key.
    pub fn advice(&self) -> Vec<String> {
        let mut advice = Vec::new();
        for c in &self.clusters {
            let replicas = c.backends.iter().filter(|b| b.role == Role::Replica).count();
            if replicas > 0 && c.monitor.is_none() {
                advice.push(format!(
                    "cluster {:?} has {replicas} replica(s) and no `monitor`: replica lag and read-your-writes \
                     cannot be checked, so read-write sessions send every statement to the primary (read-only \
                     sessions still read from replicas); add `monitor = {{ user = ..., password = ... }}`",
                    c.name
                ));
            }
            let replication_password = c.replication.as_ref().is_some_and(|r| !r.password.expose().is_empty());
            if c.protocol == Protocol::Postgres && replication_password {
                advice.push(format!(
                    "cluster {:?}: `replication.password` is written into each re-pointed standby's \
                     primary_conninfo, so it is stored in postgresql.auto.conf and printed in the server log \
                     when the standby reloads; leave it out and give each standby's operating-system user a \
                     ~/.pgpass line for the replication user",
                    c.name
                ));
            }
        }
        advice
    }
}
