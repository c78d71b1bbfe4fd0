//! Runs sysbench oltp_read_write straight against a fresh MariaDB primary: the baseline that
//! the proxy's figures are compared with.
fn main() -> anyhow::Result<()> {
    let topo = sqlswitch_tests::mysql::Topology::start(2)?;
    let port = topo.primary().port.to_string();
    let args = |extra: &[&str]| {
        let mut v: Vec<String> = [
            "oltp_read_write",
            "--db-driver=mysql",
            "--mysql-host=127.0.0.1",
            "--mysql-db=app",
            "--mysql-user=app",
            "--mysql-password=app",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        v.push(format!("--mysql-port={port}"));
        v.extend(std::env::args().skip(1));
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    std::process::Command::new("sysbench").args(args(&["prepare"])).output()?;
    let out = std::process::Command::new("sysbench").args(args(&["--threads=8", "--time=5", "run"])).output()?;
    for line in
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("transactions:") || l.contains("errors:"))
    {
        println!("{line}");
    }
    Ok(())
}
