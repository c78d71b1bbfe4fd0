//! `sqlswitch-demo`: real PostgreSQL primary and replicas, sqlswitch in front, URLs printed.
fn main() {}
