//! The SQL classifier, both dialects, on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlswitch_protocol::fuzzing::classify;

fuzz_target!(|data: &[u8]| classify(data));
