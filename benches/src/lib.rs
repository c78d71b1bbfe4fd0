//! Load benches for sqlswitch. `loadbench` runs `pgbench` against a direct connection to the
//! primary and through sqlswitch, alternating rounds in one run, and prints each TPS and the ratio.
#![forbid(unsafe_code)]
