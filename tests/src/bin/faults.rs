//! `scripts/faults`: the randomized fault loop against real servers and the sqlswitch binary,
//! or the checker's self-test. The last line is `faults: N operations, M faults, K anomalies`
//! (exit 0 only when K is 0), or `checker self-test: planted P, found F`.

use std::path::PathBuf;

use sqlswitch_tests::faults::{self, Options, Protocol};

const USAGE: &str = "usage: faults [--protocol postgres|mysql] [--fleet N] [--seed S] [--seconds T] [--clients N] [--out DIR]\n       faults --self-test";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--self-test") {
        let (planted, found, log) = faults::checker::self_test();
        for line in log {
            println!("{line}");
        }
        println!("checker self-test: planted {planted}, found {found}");
        std::process::exit(i32::from(planted != found));
    }
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    match runtime.block_on(faults::run(&opts)) {
        Ok(summary) => {
            let mut report = String::new();
            for a in &summary.anomalies {
                report.push_str(&format!("ANOMALY {}: {}\n", a.invariant, a.detail));
            }
            let _ = std::fs::write(opts.out.join("anomalies.txt"), &report);
            // The first ones on the terminal; all of them in the file.
            for line in report.lines().take(30) {
                println!("{line}");
            }
            if summary.anomalies.len() > 30 {
                println!("... {} more in {}", summary.anomalies.len() - 30, opts.out.join("anomalies.txt").display());
            }
            if !summary.anomalies.is_empty() {
                println!(
                    "seed {} found anomalies; the history is in {}; run the same schedule again with: scripts/faults --protocol {} --fleet {} --seed {} --seconds {}",
                    opts.seed,
                    opts.out.display(),
                    name(opts.protocol),
                    opts.instances,
                    opts.seed,
                    opts.seconds
                );
            }
            println!(
                "faults: {} operations, {} faults, {} anomalies",
                summary.operations,
                summary.faults,
                summary.anomalies.len()
            );
            std::process::exit(i32::from(!summary.anomalies.is_empty()));
        }
        Err(e) => {
            eprintln!("the fault loop could not run: {e:#}");
            println!("faults: 0 operations, 0 faults, 1 anomalies");
            std::process::exit(1);
        }
    }
}

fn name(p: Protocol) -> &'static str {
    match p {
        Protocol::Postgres => "postgres",
        Protocol::Mysql => "mysql",
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut protocol = Protocol::Postgres;
    let (mut seed, mut seconds, mut clients, mut out, mut instances) = (1u64, 60u64, 6u32, None, 1usize);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--protocol" => {
                protocol = match value()?.as_str() {
                    "postgres" => Protocol::Postgres,
                    "mysql" => Protocol::Mysql,
                    other => return Err(format!("unknown protocol {other:?}")),
                }
            }
            "--seed" => seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--seconds" => seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--clients" => clients = value()?.parse().map_err(|e| format!("--clients: {e}"))?,
            "--out" => out = Some(PathBuf::from(value()?)),
            "--fleet" => instances = value()?.parse().map_err(|e| format!("--fleet: {e}"))?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let fleet = if instances > 1 { format!("-fleet{instances}") } else { String::new() };
    let out = out.unwrap_or_else(|| PathBuf::from(format!("target/faults/{}{fleet}-{seed}", name(protocol))));
    Ok(Options { protocol, seed, seconds, clients, instances, out })
}
