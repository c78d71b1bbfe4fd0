//! MySQL packets with continuations, handshakes, handshake responses, COM_CHANGE_USER and answers
//! followed by the tracker.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlswitch_protocol::fuzzing::mysql_packets;

fuzz_target!(|data: &[u8]| mysql_packets(data));
