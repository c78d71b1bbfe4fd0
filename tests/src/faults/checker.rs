//! The fault loop's checker: named invariants over a history and the final state, read after
//! every fault is healed. Offline and pure, so that `--self-test` proves it finds each kind of
//! anomaly on planted histories.

use std::collections::HashMap;

use super::history::{Fault, Kind, Mop, Op, Outcome, Row};

/// How long any operation may stay pending (a hang otherwise): the longest hold sqlswitch
/// documents (a switchover's default timeout) plus a margin.
pub const PENDING_BOUND_MS: u64 = 45_000;

/// What the world looked like once everything was healed.
#[derive(Debug, Clone)]
pub struct Final {
    /// How many times each row is on the final primary.
    pub rows: HashMap<Row, usize>,
    /// The list-append table on the final primary: key -> elements in order.
    pub lists: HashMap<u32, Vec<String>>,
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
    /// `planned-error`, `settle`, `secret`; of the list-append history `G0`, `G1c`,
    /// `G-single`, `incompatible-order`).
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
        if in_planned && op.outcome != Outcome::Ok && !server_verdict(op.error.as_deref()) {
            bad("planned-error", format!("{at}: {:?} during a planned switchover: {:?}", op.outcome, op.error));
        }
    }
    for (invariant, detail) in super::elle::check(ops, &fin.lists) {
        bad(invariant, detail);
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

/// A serializable transaction's failure the server decides on its own (a serialization
/// failure or a deadlock): not the switchover's doing.
fn server_verdict(error: Option<&str>) -> bool {
    error.is_some_and(|e| ["40001 ", "40P01 ", "(40001)", "ERROR 1205 "].iter().any(|c| e.contains(c)))
}

/// Plants one anomaly of each kind in otherwise clean synthetic histories; returns how many
/// were planted and how many the checker found (each must be found as its own invariant).
pub fn self_test() -> (usize, usize, Vec<String>) {
    let op = |client, seq, kind, outcome| Op {
        client,
        seq,
        session: 1,
        kind,
        invoked_ms: u64::from(seq) * 10,
        completed_ms: u64::from(seq) * 10 + 5,
        outcome,
        seen: (kind == Kind::ReadOwn).then_some(1),
        error: None,
        mops: Vec::new(),
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
    let (clean_lists, lists) = list_history(&op);
    let mut clean_ops = clean_ops;
    clean_ops.extend(clean_lists);
    let clean =
        Final { rows, lists, settled: Ok(()), output: "no secret here".into(), secrets: vec!["s3cr3t-pw".into()] };
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
        // Client 2 appended to key 1 before client 3 did; make key 2 the other way round.
        (
            "G0",
            Box::new(|_, _, f| {
                f.lists.insert(2, vec!["3.2".into(), "2.1".into()]);
            }),
        ),
        // Client 4 saw client 3's append to key 1; make client 2 see client 4's on key 3.
        ("G1c", Box::new(|o, _, _| set_read(o, 2, 1, 3, 1, "4.1"))),
        // Client 3's later read of key 1 misses its own append (read-your-writes broken).
        ("G-single", Box::new(|o, _, _| set_read(o, 3, 3, 1, 1, "2.1"))),
        ("incompatible-order", Box::new(|o, _, _| set_read(o, 4, 1, 1, 2, "3.2,2.1"))),
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

/// A clean list-append history: client 2 appends to keys 1 and 2, then client 3 appends to
/// keys 1 and 2, then client 4 reads key 1 (both elements) and appends to key 3, and client 3
/// reads key 3 in a later transaction of its session.
fn list_history(op: &dyn Fn(u32, u32, Kind, Outcome) -> Op) -> (Vec<Op>, HashMap<u32, Vec<String>>) {
    let append = |key| Mop { key, append: true, len: 0, hash: 0 };
    let read = |key, text: &str| Mop {
        key,
        append: false,
        len: u32::try_from(text.split(',').count()).unwrap_or(0),
        hash: super::elle::hash(text),
    };
    let with = |mut o: Op, mops: Vec<Mop>| {
        o.mops = mops;
        o
    };
    let ops = vec![
        with(op(2, 1, Kind::Append, Outcome::Ok), vec![append(1), append(2)]),
        with(op(3, 2, Kind::Append, Outcome::Ok), vec![append(1), append(2)]),
        with(op(4, 1, Kind::Append, Outcome::Ok), vec![read(1, "2.1,3.2"), append(3)]),
        with(op(3, 3, Kind::ReadKeys, Outcome::Ok), vec![read(3, "4.1")]),
    ];
    let lists = HashMap::from([
        (1, vec!["2.1".into(), "3.2".into()]),
        (2, vec!["2.1".into(), "3.2".into()]),
        (3, vec!["4.1".into()]),
    ]);
    (ops, lists)
}

/// Makes the read of `key` by client `client` seq `seq` see `text` (`len` elements).
fn set_read(ops: &mut [Op], client: u32, seq: u32, key: u32, len: u32, text: &str) {
    for o in ops.iter_mut().filter(|o| o.client == client && o.seq == seq) {
        match o.mops.iter_mut().find(|m| m.key == key && !m.append) {
            Some(m) => (m.len, m.hash) = (len, super::elle::hash(text)),
            None => o.mops.push(Mop { key, append: false, len, hash: super::elle::hash(text) }),
        }
    }
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
