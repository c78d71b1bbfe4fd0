//! The results table: one row per workload, the median of each target, and the ratios that
//! answer the questions (what sqlswitch costs against a direct connection, against the floor any
//! relay pays (HAProxy), against PgBouncer, and what its splitting gives against Pgpool-II's).

/// The targets, in column order.
pub const TARGETS: [&str; N] =
    ["direct", "HAProxy", "PgBouncer", "Pgpool-II", "sqlswitch primary-only", "sqlswitch split"];
/// How many targets.
pub const N: usize = 6;
/// Column indexes into [`TARGETS`].
pub const DIRECT: usize = 0;
/// HAProxy in TCP mode in front of the primary: the floor any relay pays.
pub const HAPROXY: usize = 1;
/// PgBouncer in session mode in front of the primary.
pub const PGBOUNCER: usize = 2;
/// Pgpool-II load balancing reads over the replicas: the splitting peer.
pub const PGPOOL: usize = 3;
/// sqlswitch with only the primary configured: the proxy's own cost.
pub const PRIMARY_ONLY: usize = 4;
/// sqlswitch splitting reads to the replicas: what users get.
pub const SPLIT: usize = 5;
/// The ratio columns: `a / b` under a heading.
pub const RATIOS: [(usize, usize, &str); 5] = [
    (PRIMARY_ONLY, DIRECT, "primary-only / direct"),
    (HAPROXY, DIRECT, "HAProxy / direct"),
    (PRIMARY_ONLY, PGBOUNCER, "primary-only / PgBouncer"),
    (SPLIT, DIRECT, "split / direct"),
    (SPLIT, PGPOOL, "split / Pgpool-II"),
];

/// One workload's figures.
pub struct Row {
    /// What ran.
    pub workload: String,
    /// Unit of the figures (`tps`, `conn/s`, `bytes/conn`, ...).
    pub unit: &'static str,
    /// Median per target, when measured.
    pub values: [Option<f64>; N],
    /// Each round's figures (empty for a single measurement): ratios are taken within a round,
    /// where the targets ran back to back on the same machine, then their median.
    pub by_round: Vec<[Option<f64>; N]>,
    /// Higher is better (throughput) or lower is better (memory, instructions).
    pub higher_is_better: bool,
    /// Anything else worth a reader's eye (failed transactions, errors).
    pub note: String,
}

impl Row {
    /// `a / b` per round (where both ran), sorted.
    fn round_ratios(&self, a: usize, b: usize) -> Vec<f64> {
        let mut r: Vec<f64> = self
            .by_round
            .iter()
            .filter_map(|round| match (round[a], round[b]) {
                (Some(x), Some(y)) if y > 0.0 => Some(x / y),
                _ => None,
            })
            .collect();
        r.sort_by(f64::total_cmp);
        r
    }

    /// `a / b`: the median of the within-round ratios, or the ratio of the medians.
    pub fn ratio_value(&self, a: usize, b: usize) -> Option<f64> {
        let rounds = self.round_ratios(a, b);
        if let Some(m) = rounds.get(rounds.len() / 2) {
            return Some(*m);
        }
        match (self.values.get(a).copied().flatten(), self.values.get(b).copied().flatten()) {
            (Some(x), Some(y)) if y > 0.0 => Some(x / y),
            _ => None,
        }
    }

    fn ratio(&self, a: usize, b: usize) -> String {
        self.ratio_value(a, b).map_or_else(|| "–".into(), |m| format!("{m:.2}"))
    }

    /// The spread across rounds of the headline ratio (primary-only against PgBouncer, or
    /// direct where PgBouncer did not run), and of HAProxy's and Pgpool-II's comparisons where
    /// they ran, for the notes.
    fn spread(&self) -> String {
        let headline = if self.values[PGBOUNCER].is_some() {
            (PRIMARY_ONLY, PGBOUNCER, "primary-only / PgBouncer")
        } else {
            (PRIMARY_ONLY, DIRECT, "primary-only / direct")
        };
        let peers = [(HAPROXY, DIRECT, "HAProxy / direct"), (SPLIT, PGPOOL, "split / Pgpool-II")];
        let mut out = Vec::new();
        for (a, b, name) in std::iter::once(headline).chain(peers) {
            if let [lo, .., hi] = self.round_ratios(a, b).as_slice() {
                out.push(format!("{name} by round {lo:.2}–{hi:.2}"));
            }
        }
        out.join(", ")
    }
}

/// The table as Markdown.
pub fn markdown(rows: &[Row]) -> String {
    let mut t = String::from("| workload | unit |");
    for name in TARGETS {
        t += &format!(" {name} |");
    }
    for (_, _, heading) in RATIOS {
        t += &format!(" {heading} |");
    }
    t += " notes |\n|---|---|";
    t += &"---:|".repeat(TARGETS.len() + RATIOS.len());
    t += "---|\n";
    for r in rows {
        t += &format!("| {} | {} |", r.workload, r.unit);
        for v in r.values {
            t += &match v {
                Some(v) if v >= 100.0 => format!(" {v:.0} |"),
                Some(v) => format!(" {v:.2} |"),
                None => " – |".into(),
            };
        }
        let better = if r.higher_is_better { "" } else { " (lower is better)" };
        let notes: Vec<String> =
            [r.note.clone(), r.spread(), better.trim().to_owned()].into_iter().filter(|n| !n.is_empty()).collect();
        for (a, b, _) in RATIOS {
            t += &format!(" {} |", r.ratio(a, b));
        }
        t += &format!(" {} |\n", notes.join("; "));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_missing_targets() {
        let rows = [Row {
            workload: "w".into(),
            unit: "tps",
            values: [Some(1000.0), Some(950.0), None, Some(1200.0), Some(900.0), Some(1500.0)],
            by_round: Vec::new(),
            higher_is_better: true,
            note: String::new(),
        }];
        let md = markdown(&rows);
        let line = md.lines().nth(2).unwrap_or_default();
        assert_eq!(line, "| w | tps | 1000 | 950 | – | 1200 | 900 | 1500 | 0.90 | 0.95 | – | 1.50 | 1.25 |  |");
    }

    #[test]
    fn ratios_are_taken_within_rounds() {
        // PgBouncer had a good round where sqlswitch had a bad one and the other way round:
        // the ratio of medians (1.0) hides what each round says.
        let rows = [Row {
            workload: "w".into(),
            unit: "tps",
            values: [Some(200.0), None, Some(100.0), None, Some(100.0), None],
            by_round: vec![
                [Some(200.0), None, Some(100.0), None, Some(110.0), None],
                [Some(200.0), None, Some(90.0), None, Some(100.0), None],
                [Some(200.0), None, Some(120.0), None, Some(90.0), None],
            ],
            higher_is_better: true,
            note: String::new(),
        }];
        let md = markdown(&rows);
        let line = md.lines().nth(2).unwrap_or_default();
        assert_eq!(
            line,
            "| w | tps | 200 | – | 100 | – | 100 | – | 0.50 | – | 1.10 | – | – | primary-only / PgBouncer by round 0.75–1.11 |"
        );
    }
}
