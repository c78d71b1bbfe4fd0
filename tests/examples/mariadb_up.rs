//! Starts the MariaDB topology, prints its ports, stops it: a smoke check of the harness.
fn main() -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let topo = sqlswitch_tests::mysql::Topology::start(2)?;
    for n in &topo.nodes {
        println!("{} port {} server_id {}", n.name, n.port, n.server_id);
    }
    println!(
        "ready in {:?}; replica1 gtid: {}",
        t.elapsed(),
        topo.sql(&topo.replicas()[0], "SELECT @@gtid_slave_pos")?.trim()
    );
    Ok(())
}
