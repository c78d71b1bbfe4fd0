//! The bodies of the fuzz targets (`fuzz/`, run by `scripts/fuzz`): each feeds arbitrary bytes
//! to the decoders the proxy runs on what peers send, the way the proxy uses them, and checks
//! what must hold whatever the input. Unit tests run them on the seed corpus and on every input
//! a fuzzer ever crashed (`fuzz/regressions/`), so a fixed crash stays fixed.

use bytes::BytesMut;

use crate::classify::{self, Class};
use crate::mysql::command::{self, Answer};
use crate::mysql::handshake::{parse_auth_switch, ChangeUser, ClientResponse, ServerHandshake};
use crate::mysql::response::{self, Step, Tracker};
use crate::mysql::{caps, packet};
use crate::pg::{backend, frame, frontend, startup};

/// A limit small enough that the fuzzer reaches it.
const MAX: usize = 1 << 16;

/// Client bytes: startup packets until a StartupMessage, then framed messages.
pub fn pg_frontend(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        match startup::decode(&mut buf) {
            Ok(Some(startup::StartupRequest::Startup(s))) => {
                let _ = s.param("user");
                let _ = s.protocol_options().count();
                if let Some(o) = s.param("options") {
                    let _ = startup::options_set(o, "default_transaction_read_only");
                }
                break;
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        }
    }
    while let Ok(Some(f)) = frame::decode(&mut buf, MAX) {
        assert!(f.bytes.len() <= MAX + 1, "a frame over the limit was accepted");
        let body = f.body();
        match f.tag {
            frontend::QUERY => {
                if let Ok(q) = frontend::query_text(body) {
                    let _ = classify::classify_pg(&classify::text::Text::read(q).sql);
                }
            }
            frontend::PARSE => {
                let _ = frontend::parse(body);
            }
            frontend::CLOSE => {
                let _ = frontend::close(body);
            }
            frontend::PASSWORD => {
                let _ = frontend::sasl_initial_response(body);
            }
            _ => {}
        }
    }
    // Headers alone, at every offset, as the session scans them.
    for at in 0..data.len().min(64) {
        if let Ok(Some(h)) = frame::peek_header(data.get(at..).unwrap_or_default(), MAX) {
            assert!(h.total_len >= frame::HEADER_LEN && h.total_len <= MAX + 1);
        }
    }
}

/// Server bytes: framed messages, errors and ReadyForQuery.
pub fn pg_backend(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = frame::decode(&mut buf, MAX) {
        let body = f.body();
        match f.tag {
            backend::ERROR_RESPONSE => {
                let _ = backend::is_fatal(body);
                let _ = backend::error_fields(body);
            }
            backend::READY_FOR_QUERY => {
                let _ = backend::TxStatus::from_byte(body.first().copied().unwrap_or(b'T'));
            }
            _ => {}
        }
    }
}

/// MySQL bytes: packets (with continuations), read as each of the things the proxy parses.
pub fn mysql_packets(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let mut buf = BytesMut::from(rest);
    let deprecate_eof = selector & 1 != 0;
    let answer = match selector >> 1 & 7 {
        0 => Answer::ResultSet,
        1 => Answer::Single,
        2 => Answer::Prepare,
        3 => Answer::Rows,
        4 => Answer::FieldList,
        _ => Answer::None,
    };
    let mut tracker = Tracker::new(answer, deprecate_eof);
    while let Ok(Some(p)) = packet::decode(&mut buf, MAX) {
        assert!(p.payload.len() <= MAX + packet::MAX_PAYLOAD);
        let payload = &p.payload[..];
        let _ = ServerHandshake::parse(payload);
        let _ = ClientResponse::parse(payload);
        let _ = ChangeUser::parse(payload, u32::from(selector) << 8 | caps::SECURE_CONNECTION);
        let _ = parse_auth_switch(payload);
        let _ = response::ok_status(payload);
        let _ = response::terminator_status(payload);
        let _ = command::answer(payload.first().copied().unwrap_or(0));
        if !tracker.done() {
            let seen = if payload.first().copied().is_some_and(response::needs_whole) {
                payload
            } else {
                payload.get(..payload.len().min(1)).unwrap_or_default()
            };
            match tracker.feed(payload.len(), seen) {
                Ok(Step::Done(_)) => assert!(tracker.done()),
                Ok(Step::More) | Err(_) => {}
            }
        }
    }
    for at in 0..rest.len().min(64) {
        let _ = packet::peek_header(rest.get(at..).unwrap_or_default());
    }
}

/// SQL text: both dialects. A verdict must be self-consistent: a read is a single statement
/// that pins nothing and is not known to write.
pub fn classify(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for v in [classify::classify_pg(&text), classify::classify_mysql_with(&text, &[])] {
        if v.is_read() {
            assert_eq!(v.class, Class::Read);
            assert!(!v.writes, "a read that writes: {text:?}");
            assert!(v.pin.is_none());
            assert_eq!(v.statements, 1, "a read is one statement: {text:?}");
        }
        if v.statements > 1 {
            assert_eq!(v.class, Class::Multi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs every target on every file under `fuzz/corpus/<target>` and `fuzz/regressions/<target>`.
    #[test]
    fn corpus_and_regressions_do_not_crash() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 4] = [
            ("pg_frontend", pg_frontend),
            ("pg_backend", pg_backend),
            ("mysql_packets", mysql_packets),
            ("classify", classify),
        ];
        let mut ran = 0;
        for (name, target) in targets {
            for dir in ["corpus", "regressions"] {
                let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else { continue };
                for entry in entries.flatten() {
                    let data = std::fs::read(entry.path()).unwrap_or_default();
                    target(&data);
                    ran += 1;
                }
            }
        }
        assert!(ran >= 4, "the seed corpus is missing ({ran} inputs)");
    }

    #[test]
    fn targets_survive_edge_inputs() {
        for data in [&b""[..], b"\0", b"\xff\xff\xff\xff", b"Q\x7f\xff\xff\xff", b"\x00\x00\x00\x08\x04\xd2\x16\x2f"] {
            pg_frontend(data);
            pg_backend(data);
            mysql_packets(data);
            classify(data);
        }
    }
}
