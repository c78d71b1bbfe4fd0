//! What a PostgreSQL server sends back: framed messages, error fields, transaction status.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlswitch_protocol::fuzzing::pg_backend;

fuzz_target!(|data: &[u8]| pg_backend(data));
