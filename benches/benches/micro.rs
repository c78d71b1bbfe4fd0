//! Micro-benchmarks of the hot path's pure parts: classifying a statement, framing messages,
//! and one routing decision. `cargo bench -p sqlswitch-benches` prints ns per operation.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sqlswitch::route::{self, BackendView, SessionView, Table};
use sqlswitch_protocol::classify::classify_pg;
use sqlswitch_protocol::classify::lexer::Lexer;
use sqlswitch_protocol::pg::frame;

const STATEMENTS: &[(&str, &str)] = &[
    ("pgbench_select", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"),
    ("pgbench_update", "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;"),
    ("join_with_functions", "SELECT u.id, lower(u.name), count(*) FROM users u JOIN orders o ON o.user_id = u.id WHERE u.created_at > now() - interval '1 day' GROUP BY u.id, u.name ORDER BY 3 DESC LIMIT 20"),
    ("cte_with_comment", "/* app: listing */ WITH recent AS (SELECT * FROM events WHERE at > $1) SELECT kind, count(*) FROM recent GROUP BY kind"),
    ("nextval", "SELECT nextval('items_id_seq')"),
    ("set", "SET search_path = app, public"),
];

fn classify(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify");
    for (name, sql) in STATEMENTS {
        g.throughput(Throughput::Elements(1));
        g.bench_function(*name, |b| b.iter(|| classify_pg(black_box(sql))));
    }
    g.finish();
    // The lexer alone, to tell tokenising from classifying.
    let sql = STATEMENTS[0].1;
    c.bench_function("lex/pgbench_select", |b| b.iter(|| Lexer::new(black_box(sql)).count()));
}

fn framing(c: &mut Criterion) {
    // A pgbench -S answer: RowDescription, DataRow, CommandComplete, ReadyForQuery.
    let mut wire = Vec::new();
    for (tag, body) in [(b'T', &[0u8; 40][..]), (b'D', &[0u8; 14][..]), (b'C', b"SELECT 1\0"), (b'Z', b"I")] {
        wire.push(tag);
        wire.extend_from_slice(&i32::try_from(body.len() + 4).unwrap_or(0).to_be_bytes());
        wire.extend_from_slice(body);
    }
    c.bench_function("frame/scan_answer_headers", |b| {
        b.iter(|| {
            let mut at = 0;
            let buf = black_box(&wire[..]);
            while let Ok(Some(h)) = frame::peek_header(&buf[at..], 1 << 30) {
                at += h.total_len;
            }
            at
        })
    });
    c.bench_function("frame/decode_four_messages", |b| {
        let mut buf = BytesMut::with_capacity(wire.len());
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(&wire);
            let mut n = 0;
            while let Ok(Some(f)) = frame::decode(&mut buf, 1 << 30) {
                n += f.bytes.len();
            }
            n
        })
    });
}

fn routing(c: &mut Criterion) {
    let backends = [
        BackendView { replica: false, up: true, weight: 1, caught_up_to: 0, lag: 0 },
        BackendView { replica: true, up: true, weight: 1, caught_up_to: 9_900_000, lag: 1_000 },
        BackendView { replica: true, up: true, weight: 1, caught_up_to: 9_950_000, lag: 2_000 },
    ];
    let table = Table { backends: &backends, max_lag: 1_000_000 };
    let batch = route::Batch { read: true, begins_read_only_tx: false, session_state: false };
    let session = SessionView { last_write: Some(9_920_000), current_replica: Some(1), ..Default::default() };
    c.bench_function("route/read_with_read_your_writes", |b| {
        b.iter(|| route::route(black_box(&batch), black_box(&session), black_box(&table), 0.3))
    });
}

criterion_group!(benches, classify, framing, routing);
criterion_main!(benches);
