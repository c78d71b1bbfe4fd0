//! `sqlswitch-regress` (run by `scripts/regress`): PostgreSQL's own regression suite, run with
//! `pg_regress` against a real primary with two streaming replicas, directly and through
//! sqlswitch (with replicas, primary-only, and in transaction pooling with `pool_shuffle`), and
//! each result file compared with the direct run's. Expected-file mismatches (locale, version)
//! are the same in every run and cancel out: what differs is the proxy's. Writes `report.txt` (tests, differing, and the diff of each)
//! in the output directory and exits 1 when any test differs.
//!
//! Usage: `sqlswitch-regress REGRESS_DIR DLPATH OUTDIR [SCHEDULE]`, where `REGRESS_DIR` is
//! `src/test/regress` of the installed server's source and `DLPATH` holds its `regress.so`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sqlswitch_tests::pg::Topology;
use sqlswitch_tests::proxy::{config_text, without_backend};

/// The superuser the suite runs as, and the password the proxy knows it by (the servers trust
/// it from 127.0.0.1).
const SUPERUSER: (&str, &str) = ("postgres", "postgres");

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--mysql") {
        return mysql::main(args.get(2..).unwrap_or_default());
    }
    let [_, regress_dir, dlpath, outdir, rest @ ..] = args.as_slice() else {
        bail!("usage: sqlswitch-regress REGRESS_DIR DLPATH OUTDIR [SCHEDULE]");
    };
    let regress_dir = std::fs::canonicalize(regress_dir).context("REGRESS_DIR")?;
    let schedule = rest.first().map_or_else(|| regress_dir.join("parallel_schedule"), PathBuf::from);
    let outdir = PathBuf::from(outdir);
    std::fs::create_dir_all(&outdir)?;
    let pg_regress = find_pg_regress()?;

    eprintln!("starting a PostgreSQL primary and two streaming replicas...");
    let topo = Topology::start(2)?;
    // The server loads regress.so itself: it must be where the postgres OS user can read it.
    let lib = topo.dir.join("regress-lib");
    std::fs::create_dir_all(&lib)?;
    std::fs::copy(Path::new(dlpath).join("regress.so"), lib.join("regress.so")).context("DLPATH/regress.so")?;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // Cluster keys to add, for a run in another mode (`pool_mode = "transaction"`).
    let extra = std::env::var("SQLSWITCH_REGRESS_CLUSTER").unwrap_or_default();
    let full = config_text(&topo, "app", "127.0.0.1:0", "127.0.0.1:0", None, &extra)
        + &format!("\n[[cluster.user]]\nname = \"{}\"\npassword = \"{}\"\n", SUPERUSER.0, SUPERUSER.1);
    let mut primary_only = full.clone();
    for r in topo.replicas() {
        primary_only = without_backend(&primary_only, &r.name);
    }
    // Transaction pooling with replicas, each transaction on another connection whenever the
    // pool can give one (`pool_shuffle`): sessions must keep their state across connections.
    let pooled = config_text(
        &topo,
        "app",
        "127.0.0.1:0",
        "127.0.0.1:0",
        None,
        &format!("{extra}\npool_mode = \"transaction\"\npool_shuffle = true"),
    ) + &format!("\n[[cluster.user]]\nname = \"{}\"\npassword = \"{}\"\n", SUPERUSER.0, SUPERUSER.1);
    let runs: [(&str, Option<&str>); 4] = [
        ("direct", None),
        ("replicas", Some(full.as_str())),
        ("primary-only", Some(primary_only.as_str())),
        ("transaction", Some(pooled.as_str())),
    ];
    for (label, config) in runs {
        let daemon = match config {
            Some(text) => Some(runtime.block_on(sqlswitch_tests::proxy::start_text(text))?),
            None => None,
        };
        let port = match &daemon {
            Some(d) => d.addr("app", false).context("the proxy's address")?.port(),
            None => topo.primary().port,
        };
        // The servers write and read files there (COPY TO, lo_export), as the postgres user.
        let results = outdir.join(label).join("results");
        std::fs::create_dir_all(&results)?;
        for dir in [outdir.as_path(), &outdir.join(label), &results] {
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
        }
        eprintln!("running the suite {label} (port {port})...");
        let started = std::time::Instant::now();
        let status = Command::new(&pg_regress)
            .arg(format!("--inputdir={}", regress_dir.display()))
            .arg(format!("--outputdir={}", outdir.join(label).display()))
            .arg(format!("--dlpath={}", lib.display()))
            .arg(format!("--schedule={}", schedule.display()))
            .args(["--host=127.0.0.1", &format!("--port={port}"), &format!("--user={}", SUPERUSER.0)])
            .arg(format!("--bindir={}", find_bindir()?.display()))
            .env("PGPASSWORD", SUPERUSER.1)
            .stdout(std::fs::File::create(outdir.join(format!("{label}.log")))?)
            .status()
            .context("pg_regress")?;
        eprintln!("  {label}: pg_regress exited {status} after {:.0?}", started.elapsed());
        drop(daemon);
    }
    drop(runtime);
    let report = compare(&outdir, &["replicas", "primary-only", "transaction"])?;
    std::fs::write(outdir.join("report.txt"), &report.text)?;
    print!("{}", report.summary);
    // The plain closing line test runners are read by.
    let listed = report.differing - report.unlisted;
    println!(
        "regress: {} passed, {} failed, {listed} known differences",
        report.compared - report.differing,
        report.unlisted
    );
    topo.stop();
    if report.unlisted > 0 {
        std::process::exit(1);
    }
    Ok(())
}

struct Report {
    text: String,
    summary: String,
    /// Result files compared (tests times proxied runs).
    compared: usize,
    differing: usize,
    /// Differing tests not listed in the known differences.
    unlisted: usize,
}

/// The PostgreSQL regression tests that differ through sqlswitch for a stated reason
/// (`pg_regress <test>  # why` in tests/regress/known-differences.txt).
fn known_differences() -> Vec<String> {
    known_in("pg_regress")
}

/// The tests of `suite` listed in tests/regress/known-differences.txt (`<suite> <test>  # why`).
fn known_in(suite: &str) -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/regress/known-differences.txt");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut words = line.split('#').next()?.split_whitespace();
            (words.next()? == suite).then(|| words.next().map(str::to_owned)).flatten()
        })
        .collect()
}

/// Compares every result file of each run in `runs` with the direct run's.
fn compare(outdir: &Path, runs: &[&str]) -> Result<Report> {
    let direct = outdir.join("direct").join("results");
    let mut names: Vec<String> = std::fs::read_dir(&direct)
        .with_context(|| format!("{} (did the direct run start?)", direct.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".out"))
        .collect();
    names.sort();
    let mut text = String::new();
    let mut summary = String::new();
    let mut differing = 0;
    let mut unlisted = 0;
    let known = known_differences();
    for run in runs {
        let mut diff_names = Vec::new();
        for name in &names {
            // Each run writes its files under its own directory, and says so in messages.
            let read = |label: &str| {
                let text = std::fs::read_to_string(outdir.join(label).join("results").join(name)).unwrap_or_default();
                text.replace(&outdir.join(label).display().to_string(), "OUTDIR")
            };
            let (ours, theirs) = (read("direct"), read(run));
            if ours == theirs {
                continue;
            }
            let scratch = outdir.join("compare");
            std::fs::create_dir_all(&scratch)?;
            std::fs::write(scratch.join("direct"), &ours)?;
            std::fs::write(scratch.join(run), &theirs)?;
            let out = Command::new("diff").arg("-u").arg(scratch.join("direct")).arg(scratch.join(run)).output()?;
            diff_names.push(name.trim_end_matches(".out").to_owned());
            text += &format!("==== {run}: {name}\n{}\n", String::from_utf8_lossy(&out.stdout));
        }
        differing += diff_names.len();
        let listed = diff_names.iter().filter(|n| known.contains(n)).count();
        unlisted += diff_names.len() - listed;
        summary += &format!(
            "{run}: {} tests, {} differ from the direct run ({listed} listed in known-differences){}{}\n",
            names.len(),
            diff_names.len(),
            if diff_names.is_empty() { "" } else { ": " },
            diff_names.join(" ")
        );
    }
    let compared = names.len() * runs.len();
    Ok(Report { text: format!("{summary}\n{text}"), summary, compared, differing, unlisted })
}

fn find_pg_regress() -> Result<PathBuf> {
    let dir = Path::new("/usr/lib/postgresql");
    for entry in std::fs::read_dir(dir).context("/usr/lib/postgresql (install postgresql)")? {
        let p = entry?.path().join("lib/pgxs/src/test/regress/pg_regress");
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("pg_regress not found under /usr/lib/postgresql/*/lib/pgxs (install postgresql-client)")
}

/// Where `psql` is, which pg_regress runs each test with.
fn find_bindir() -> Result<PathBuf> {
    let bin = sqlswitch_tests::pg::find_bin()?;
    Ok(if bin.join("psql").exists() { bin } else { PathBuf::from("/usr/bin") })
}

/// MariaDB's own suite (`mariadb-test-run --extern` from Debian's `mariadb-test`): the named
/// tests of `main`, directly and through sqlswitch, pass/fail compared per test.
mod mysql {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use anyhow::{bail, Context, Result};
    use sqlswitch_tests::mysql::Topology;
    use sqlswitch_tests::proxy::{mysql_config_text, without_backend};

    const MTR_DIR: &str = "/usr/share/mysql/mysql-test";
    const USER: (&str, &str) = ("mtr", "mtr");

    /// `--mysql OUTDIR TEST...`
    pub fn main(args: &[String]) -> Result<()> {
        let [outdir, tests @ ..] = args else { bail!("usage: sqlswitch-regress --mysql OUTDIR TEST...") };
        if !Path::new(MTR_DIR).join("mariadb-test-run").exists() {
            bail!("{MTR_DIR}/mariadb-test-run not found (install mariadb-test)");
        }
        let outdir = PathBuf::from(outdir);
        std::fs::create_dir_all(&outdir)?;
        eprintln!("starting a MariaDB primary and two GTID replicas...");
        let topo = Topology::start(2)?;
        topo.sql(
            topo.primary(),
            &format!(
                "CREATE USER '{u}'@'%' IDENTIFIED BY '{p}'; GRANT ALL ON *.* TO '{u}'@'%' WITH GRANT OPTION; \
                 CREATE DATABASE IF NOT EXISTS test; CREATE DATABASE IF NOT EXISTS mtr;",
                u = USER.0,
                p = USER.1
            ),
        )?;
        // As mariadb-test-run configures its own servers: functions without characteristics.
        for n in &topo.nodes {
            topo.sql(n, "SET GLOBAL log_bin_trust_function_creators = 1")?;
        }
        topo.wait_replicas_caught_up()?;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let full = mysql_config_text(&topo, "app", "")
            + &format!("\n[[cluster.user]]\nname = \"{}\"\npassword = \"{}\"\n", USER.0, USER.1);
        let mut primary_only = full.clone();
        for r in topo.replicas() {
            primary_only = without_backend(&primary_only, &r.name);
        }
        // Transaction pooling with replicas, each transaction on another connection whenever
        // the pool can give one: sessions keep their state across connections.
        let pooled = mysql_config_text(&topo, "app", "pool_mode = \"transaction\"\npool_shuffle = true")
            + &format!("\n[[cluster.user]]\nname = \"{}\"\npassword = \"{}\"\n", USER.0, USER.1);
        let runs = [
            ("direct", None),
            ("replicas", Some(&full)),
            ("primary-only", Some(&primary_only)),
            ("transaction", Some(&pooled)),
        ];
        let mut results = Vec::new();
        for (label, config) in runs {
            let daemon = match config {
                Some(text) => Some(runtime.block_on(sqlswitch_tests::proxy::start_text(text))?),
                None => None,
            };
            let port = match &daemon {
                Some(d) => d.addr("app", false).context("the proxy's address")?.port(),
                None => topo.primary().port,
            };
            eprintln!("running {} tests {label} (port {port})...", tests.len());
            let vardir = std::fs::canonicalize(&outdir)?.join(label);
            let out = Command::new("perl")
                .current_dir(MTR_DIR)
                .args(["mariadb-test-run.pl", "--force", "--max-test-fail=0", "--retry=0", "--testcase-timeout=2"])
                .arg(format!("--vardir={}", vardir.display()))
                .args(["--extern", "host=127.0.0.1", "--extern", &format!("port={port}")])
                .args(["--extern", &format!("user={}", USER.0), "--extern", &format!("password={}", USER.1)])
                // Tests' own `connect ... localhost ...` lines reach the primary's socket
                // directly: only the main connection goes through sqlswitch.
                .args([
                    "--extern",
                    &format!("socket={}", topo.dir.join(format!("{}.sock", topo.primary().name)).display()),
                ])
                .args(tests.iter().map(|t| if t.contains('.') { t.clone() } else { format!("main.{t}") }))
                .output()
                .context("mariadb-test-run")?;
            let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            std::fs::write(outdir.join(format!("{label}.log")), &log)?;
            results.push((label, statuses(&log)));
            drop(daemon);
        }
        drop(runtime);
        let (_, direct) = &results[0];
        // Listed by run: `mariadb-transaction main.x  # why` holds for the transaction run only.
        let known = |label: &str| super::known_in(&format!("mariadb-{label}"));
        let mut summary = String::new();
        let mut failed = 0;
        let mut passed = 0;
        for (label, theirs) in &results[1..] {
            let listed = known(label);
            let differing: Vec<String> = direct
                .iter()
                .filter(|(t, s)| theirs.get(*t) != Some(s))
                .map(|(t, s)| format!("{t} ({s} -> {})", theirs.get(t).map_or("missing", String::as_str)))
                .collect();
            let (known_diff, unlisted): (Vec<String>, Vec<String>) =
                differing.into_iter().partition(|d| listed.iter().any(|k| d.starts_with(&format!("{k} "))));
            failed += unlisted.len();
            passed += direct.len() - unlisted.len() - known_diff.len();
            summary += &format!(
                "{label}: {} tests ({} pass directly), {} differ ({} listed in known-differences): {}\n",
                direct.len(),
                direct.values().filter(|s| *s == "pass").count(),
                unlisted.len() + known_diff.len(),
                known_diff.len(),
                unlisted.join(" ")
            );
        }
        std::fs::write(outdir.join("report.txt"), &summary)?;
        print!("{summary}");
        println!("regress-mysql: {passed} passed, {failed} failed");
        drop(topo);
        if failed > 0 {
            std::process::exit(1);
        }
        Ok(())
    }

    /// `test -> pass | fail | skipped` from mariadb-test-run's report lines
    /// (`main.alias                               [ pass ]      5`).
    fn statuses(log: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for line in log.lines() {
            let mut words = line.split_whitespace();
            let (Some(name), Some("["), Some(status)) = (words.next(), words.next(), words.next()) else { continue };
            if name.contains('.') {
                out.insert(name.to_owned(), status.to_owned());
            }
        }
        out
    }
}
