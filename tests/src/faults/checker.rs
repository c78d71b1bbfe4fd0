//! The fault loop's checker: named invariants over a history and the final state, read after
//! every fault is healed. Offline and pure, so that `--self-test` proves it finds each kind of
//! anomaly on planted histories.

use std::collections::HashMap;

use super::history::{Fault, Kind, Op, Outcome, Row};

/// How long any operation may stay pending (a hang otherwise): the longest hold sqlswitch
/// documents (a switchover's default timeout) plus a margin.
pub const PENDING_BOUND_MS: u64 = 45_000;

/// What the world looked like once everything was healed.
#[derive(Debug, Clone)]
pub struct Final {
    /// How many times each row is on the final primary.
    pub rows: HashMap<Row, usize>,
    /// `Err(why)` when sqlswitch did not settle after the last heal (servers disagreeing, a
    /// write refused, a problem reported).
    pub settled: Result<(), String>,
    /// sqlswitch's log and every `ctl` answer of the run.
    pub output: String,
    /// The configured passwords, none of which may appear in `output`.
    pub secrets: Vec<String>,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    /// Which invariant (`acknowledged`, `duplicate`, `atomic`, `read-own-write`, `hang`,
    /// `planned-error`, `settle`, `secret`).
    pub invariant: &'static str,
    /// What was found, naming the operation.
    pub detail: String,
}

fn row(op: &Op, part: &str) -> Row {
    (op.client, op.seq, part.to_owned())
}

/// Every anomaly of `ops` (with `faults`) against `fin`.
pub fn check(ops: &[Op], faults: &[Fault], fin: &Final) -> Vec<Anomaly> {
    let mut out = Vec::new();
    let mut bad = |invariant, detail: String| out.push(Anomaly { invariant, detail });
    let count = |r: &Row| fin.rows.get(r).copied().unwrap_or(0);
    for (r, n) in &fin.rows {
        if *n > 1 {
            bad("duplicate", format!("row {r:?} is on the final primary {n} times"));
        }
    }
    for op in ops {
        let at = format!("client {} seq {} ({:?}, {} ms)", op.client, op.seq, op.kind, op.invoked_ms);
        match op.kind {
            Kind::Insert if op.outcome == Outcome::Ok && count(&row(op, "one")) == 0 => {
                bad("acknowledged", format!("{at}: acknowledged, missing on the final primary"));
            }
            Kind::Transaction => {
                let (a, b) = (count(&row(op, "a")), count(&row(op, "b")));
                match op.outcome {
                    Outcome::Ok if a == 0 || b == 0 => {
                        bad("acknowledged", format!("{at}: committed, but rows a={a} b={b} on the final primary"));
                    }
                    Outcome::Failed if a + b > 0 => {
                        bad("atomic", format!("{at}: failed before COMMIT, yet rows a={a} b={b} are committed"));
                    }
                    _ if (a == 0) != (b == 0) => {
                        bad("atomic", format!("{at}: half committed (a={a} b={b}), {:?}", op.outcome));
                    }
                    _ => {}
                }
            }
            Kind::ReadOwn if op.outcome == Outcome::Ok && op.seen != Some(1) => {
                bad("read-own-write", format!("{at}: saw {:?} of its own acknowledged insert", op.seen));
            }
            _ => {}
        }
        let pending = op.completed_ms.saturating_sub(op.invoked_ms);
        if pending > PENDING_BOUND_MS {
            bad("hang", format!("{at}: pending {pending} ms (bound {PENDING_BOUND_MS} ms)"));
        }
        let in_planned =
            faults.iter().any(|f| f.planned && op.invoked_ms >= f.started_ms && op.invoked_ms <= f.healed_ms);
        if in_planned && op.outcome != Outcome::Ok {
            bad("planned-error", format!("{at}: {:?} during a planned switchover: {:?}", op.outcome, op.error));
        }
    }
    if let Err(why) = &fin.settled {
        bad("settle", why.clone());
    }
    for secret in fin.secrets.iter().filter(|s| !s.is_empty()) {
        if fin.output.contains(secret.as_str()) {
            bad("secret", format!("a configured password appears in sqlswitch's output ({} characters)", secret.len()));
        }
    }
    out
}

/// Plants one anomaly of each kind in otherwise clean synthetic histories; returns how many
/// were planted and how many the checker found (each must be found as its own invariant).
pub fn self_test() -> (usize, usize, Vec<String>) {
    let op = |client, seq, kind, outcome| Op {
        client,
        seq,
        kind,
        invoked_ms: u64::from(seq) * 10,
        completed_ms: u64::from(seq) * 10 + 5,
        outcome,
        seen: (kind == Kind::ReadOwn).then_some(1),
        error: None,
    };
    let clean_ops = vec![
        op(1, 1, Kind::Insert, Outcome::Ok),
        op(1, 1, Kind::ReadOwn, Outcome::Ok),
        op(1, 2, Kind::Transaction, Outcome::Ok),
        op(1, 3, Kind::Transaction, Outcome::Failed),
        op(1, 4, Kind::Transaction, Outcome::Unknown),
        op(1, 5, Kind::Insert, Outcome::Unknown),
    ];
    let mut rows: HashMap<Row, usize> = HashMap::new();
    for r in [(1, 1, "one"), (1, 2, "a"), (1, 2, "b"), (1, 4, "a"), (1, 4, "b")] {
        rows.insert((r.0, r.1, r.2.to_owned()), 1);
    }
    let clean = Final { rows, settled: Ok(()), output: "no secret here".into(), secrets: vec!["s3cr3t-pw".into()] };
    let mut log = Vec::new();
    assert_clean(&clean_ops, &clean, &mut log);

    type Plant = (&'static str, Box<dyn Fn(&mut Vec<Op>, &mut Vec<Fault>, &mut Final)>);
    let plants: Vec<Plant> = vec![
        (
            "acknowledged",
            Box::new(|_, _, f| {
                f.rows.remove(&(1, 1, "one".into()));
            }),
        ),
        (
            "duplicate",
            Box::new(|_, _, f| {
                f.rows.insert((1, 5, "one".into()), 2);
            }),
        ),
        (
            "atomic",
            Box::new(|_, _, f| {
                f.rows.remove(&(1, 4, "b".into()));
            }),
        ),
        ("read-own-write", Box::new(|o, _, _| o[1].seen = Some(0))),
        ("hang", Box::new(|o, _, _| o[5].completed_ms = o[5].invoked_ms + PENDING_BOUND_MS + 1)),
        (
            "planned-error",
            Box::new(|o, fs, _| {
                fs.push(Fault {
                    name: "switchover".into(),
                    detail: String::new(),
                    started_ms: o[5].invoked_ms,
                    healed_ms: o[5].invoked_ms + 100,
                    planned: true,
                });
            }),
        ),
        ("settle", Box::new(|_, _, f| f.settled = Err("two writable servers".into()))),
        ("secret", Box::new(|_, _, f| f.output.push_str(" password=s3cr3t-pw"))),
    ];
    let mut found = 0;
    for (invariant, plant) in &plants {
        let (mut ops, mut faults, mut fin) = (clean_ops.clone(), Vec::new(), clean.clone());
        plant(&mut ops, &mut faults, &mut fin);
        let anomalies = check(&ops, &faults, &fin);
        let hit = anomalies.iter().any(|a| a.invariant == *invariant);
        log.push(format!("planted {invariant}: {}", if hit { "found" } else { "MISSED" }));
        found += usize::from(hit);
    }
    (plants.len(), found, log)
}

fn assert_clean(ops: &[Op], fin: &Final, log: &mut Vec<String>) {
    let anomalies = check(ops, &[], fin);
    log.push(format!("clean history: {} anomalies", anomalies.len()));
    for a in anomalies {
        log.push(format!("  unexpected {}: {}", a.invariant, a.detail));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_checker_finds_every_planted_anomaly_and_none_in_a_clean_history() {
        let (planted, found, log) = super::self_test();
        assert_eq!(planted, found, "{log:#?}");
        assert_eq!(log.first().map(String::as_str), Some("clean history: 0 anomalies"), "{log:#?}");
    }
}
