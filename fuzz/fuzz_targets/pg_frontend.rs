//! What a PostgreSQL client sends: startup packets, then framed messages and the bodies the
//! proxy reads (Query, Parse, Bind/Describe/Close names, SASL responses).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlswitch_protocol::fuzzing::pg_frontend;

fuzz_target!(|data: &[u8]| pg_frontend(data));
