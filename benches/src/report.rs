//! The results table: one row per workload, the median of each target, and the ratios that
//! answer the questions (what sqlswitch costs against a direct connection, and against
//! PgBouncer).

/// The targets, in column order.
pub const TARGETS: [&str; 4] = ["direct", "PgBouncer", "sqlswitch primary-only", "sqlswitch split"];
/// Column indexes into [`TARGETS`].
pub const DIRECT: usize = 0;
/// PgBouncer.
pub const PGBOUNCER: usize = 1;
/// sqlswitch with only the primary configured: the proxy's own cost.
pub const PRIMARY_ONLY: usize = 2;
/// sqlswitch splitting reads to the replicas: what users get.
pub const SPLIT: usize = 3;

/// One workload's figures.
pub struct Row {
    /// What ran.
    pub workload: String,
    /// Unit of the figures (`tps`, `conn/s`, `bytes/conn`, ...).
    pub unit: &'static str,
    /// Median per target, when measured.
    pub values: [Option<f64>; 4],
    /// Each round's figures (empty for a single measurement): ratios are taken within a round,
    /// where the targets ran back to back on the same machine, then their median.
    pub by_round: Vec<[Option<f64>; 4]>,
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

    /// The spread of the headline ratio across rounds, for the notes.
    fn spread(&self) -> String {
        let (b, name) = if self.values[PGBOUNCER].is_some() {
            (PGBOUNCER, "primary-only / PgBouncer")
        } else {
            (DIRECT, "primary-only / direct")
        };
        match self.round_ratios(PRIMARY_ONLY, b).as_slice() {
            [lo, .., hi] => format!("{name} by round {lo:.2}–{hi:.2}"),
            _ => String::new(),
        }
    }
}

/// The table as Markdown.
pub fn markdown(rows: &[Row]) -> String {
    let mut t = String::from("| workload | unit |");
    for name in TARGETS {
        t += &format!(" {name} |");
    }
    t += " primary-only / direct | primary-only / PgBouncer | split / direct | notes |\n|---|---|";
    t += &"---:|".repeat(TARGETS.len() + 3);
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
        t += &format!(
            " {} | {} | {} | {} |\n",
            r.ratio(PRIMARY_ONLY, DIRECT),
            r.ratio(PRIMARY_ONLY, PGBOUNCER),
            r.ratio(SPLIT, DIRECT),
            notes.join("; "),
        );
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
            values: [Some(1000.0), None, Some(900.0), Some(1500.0)],
            by_round: Vec::new(),
            higher_is_better: true,
            note: String::new(),
        }];
        let md = markdown(&rows);
        let line = md.lines().nth(2).unwrap_or_default();
        assert_eq!(line, "| w | tps | 1000 | – | 900 | 1500 | 0.90 | – | 1.50 |  |");
    }

    #[test]
    fn ratios_are_taken_within_rounds() {
        // PgBouncer had a good round where sqlswitch had a bad one and the other way round:
        // the ratio of medians (1.0) hides what each round says.
        let rows = [Row {
            workload: "w".into(),
            unit: "tps",
            values: [Some(200.0), Some(100.0), Some(100.0), None],
            by_round: vec![
                [Some(200.0), Some(100.0), Some(110.0), None],
                [Some(200.0), Some(90.0), Some(100.0), None],
                [Some(200.0), Some(120.0), Some(90.0), None],
            ],
            higher_is_better: true,
            note: String::new(),
        }];
        let md = markdown(&rows);
        let line = md.lines().nth(2).unwrap_or_default();
        assert_eq!(
            line,
            "| w | tps | 200 | 100 | 100 | – | 0.50 | 1.10 | – | primary-only / PgBouncer by round 0.75–1.11 |"
        );
    }
}
