//! Server-side cursors (`COM_STMT_EXECUTE` with a cursor flag, then `COM_STMT_FETCH`), session
//! tracking, `COM_CHANGE_USER` and MariaDB's extended capabilities (bulk execution, extended
//! type info), as MariaDB Connector/Python and C clients use them, over a raw socket against
//! real MariaDB.

use sqlswitch_protocol::mysql::caps;
use sqlswitch_tests::mysql::Topology;
use sqlswitch_tests::mysql_raw::RawConn;
use sqlswitch_tests::pg::APP;
use sqlswitch_tests::proxy::start_mysql;

/// Prepares `sql`, executes it with a read-only cursor and fetches its rows two at a time;
/// returns how many rows came.
async fn through_a_cursor(conn: &mut RawConn, sql: &str) -> usize {
    let (id, defs) = prepare(conn, sql).await;
    let columns = u8::try_from(defs.len()).unwrap();
    // COM_STMT_EXECUTE: id, CURSOR_TYPE_READ_ONLY, iteration count 1.
    let mut execute = vec![0x17];
    execute.extend_from_slice(&id);
    execute.extend_from_slice(&[0x01, 1, 0, 0, 0]);
    conn.send(0, &execute).await;
    let answer = conn.read().await;
    assert_eq!(answer, [columns], "a column count");
    let defs = conn.until_eof().await;
    assert_eq!(defs.len(), usize::from(columns) + 1, "definitions then EOF: {defs:?}");
    let eof = defs.last().unwrap();
    assert!(u16::from_le_bytes([eof[3], eof[4]]) & 0x0040 != 0, "a cursor exists: {eof:?}");
    let mut rows = 0;
    loop {
        // COM_STMT_FETCH: id, two rows.
        let mut fetch = vec![0x1c];
        fetch.extend_from_slice(&id);
        fetch.extend_from_slice(&2u32.to_le_bytes());
        conn.send(0, &fetch).await;
        let answer = conn.until_eof().await;
        let end = answer.last().unwrap();
        assert_eq!(end[0], 0xFE, "{answer:?}");
        rows += answer.len() - 1;
        if u16::from_le_bytes([end[3], end[4]]) & 0x0080 != 0 {
            return rows; // SERVER_STATUS_LAST_ROW_SENT
        }
    }
}

/// Two cursors one after the other, then a plain query: the session answers all of them,
/// through sqlswitch as directly; also in transaction pooling, where a cursor keeps its
/// session's connection between the fetches (one statement each, no transaction open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_cursors_fetch_their_rows() {
    let topo = Topology::shared();
    let daemon = start_mysql(topo, "").await.unwrap();
    let proxy = daemon.addr("app", false).unwrap().port();
    let pooling = start_mysql(topo, "pool_mode = \"transaction\"\npool_shuffle = true").await.unwrap();
    let pooled = pooling.addr("app", false).unwrap().port();
    let sql = "SELECT seq FROM seq_1_to_5";
    for port in [topo.primary().port, proxy, pooled] {
        let mut conn = RawConn::login(port, APP, caps::MULTI_RESULTS).await;
        assert_eq!(conn.login.last().unwrap()[0], 0x00, "logged in: {:?}", conn.login);
        assert_eq!(through_a_cursor(&mut conn, sql).await, 5, "port {port}");
        assert_eq!(through_a_cursor(&mut conn, sql).await, 5, "a second cursor, port {port}");
        conn.send(0, b"\x03SELECT 1").await;
        let answer = conn.until_eof().await;
        assert_eq!(answer[0], [1], "the session still answers: {answer:?}");
    }
}

/// A client that asks for `CLIENT_SESSION_TRACK` gets the server's session-state changes in
/// its OK packets, as directly: after `USE`, the new schema (MariaDB Connector/Python reads its
/// current database from it), also after a read moved the session to a replica and back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tracking_reports_a_schema_change() {
    let topo = Topology::shared();
    let daemon = start_mysql(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let mut conn = RawConn::login(port, APP, caps::SESSION_TRACK).await;
    conn.send(0, b"\x03SELECT 1").await;
    conn.until_eof().await;
    conn.until_eof().await;
    conn.send(0, b"\x03USE information_schema").await;
    let ok = conn.read().await;
    assert_eq!(ok.first(), Some(&0x00), "OK: {ok:?}");
    let status = sqlswitch_protocol::mysql::response::ok_status(&ok).unwrap();
    assert_ne!(status & 0x4000, 0, "SERVER_SESSION_STATE_CHANGED: {ok:?}");
    assert!(ok.windows(18).any(|w| w == b"information_schema"), "the schema is in the OK packet: {ok:?}");
}

/// `COM_CHANGE_USER` with the response computed from the connection's first scramble, as
/// MariaDB Connector/C sends it (and answers an auth switch with it again): accepted at once,
/// as the server does (Connector/Python's `test_conpy279` was denied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_user_is_checked_against_the_first_scramble() {
    let topo = Topology::shared();
    let daemon = start_mysql(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let mut conn = RawConn::login(port, APP, 0).await;
    let auth =
        mysql_common::auth::plugins::mysql_native_password::scramble_native(&conn.scramble, APP.1.as_bytes()).unwrap();
    let mut request = vec![0x11];
    request.extend_from_slice(b"app\0");
    request.push(20);
    request.extend_from_slice(&auth);
    request.extend_from_slice(b"app\0");
    request.extend_from_slice(&45u16.to_le_bytes());
    request.extend_from_slice(b"mysql_native_password\0");
    conn.send(0, &request).await;
    let answer = conn.read().await;
    assert_eq!(<[u8]>::first(&answer), Some(&0x00), "OK at once, no auth switch: {answer:?}");
    conn.send(0, b"\x03SET @changed = 1").await;
    let answer = conn.read().await;
    assert_eq!(<[u8]>::first(&answer), Some(&0x00), "the session goes on: {answer:?}");
}

/// Logs in through sqlswitch asking for MariaDB's bulk operations and extended type info,
/// once the proxy offers them (it does once it has reached the servers and seen them offer
/// them).
async fn login_with_extensions(port: u16) -> RawConn {
    let wanted = caps::ext::STMT_BULK_OPERATIONS | caps::ext::EXTENDED_TYPE_INFO;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let conn = RawConn::login_ext(port, APP, caps::MULTI_RESULTS, wanted).await;
        if conn.offered_ext & wanted == wanted {
            assert_eq!(conn.login.last().unwrap()[0], 0x00, "logged in: {:?}", conn.login);
            return conn;
        }
        assert!(std::time::Instant::now() < deadline, "offered {:#x}, not {wanted:#x}", conn.offered_ext);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Prepares `sql` on `conn`; returns the statement id and its column definitions.
async fn prepare(conn: &mut RawConn, sql: &str) -> ([u8; 4], Vec<Vec<u8>>) {
    let mut prepare = vec![0x16];
    prepare.extend_from_slice(sql.as_bytes());
    conn.send(0, &prepare).await;
    let ok = conn.read().await;
    assert_eq!(ok[0], 0x00, "prepared: {ok:?}");
    let id: [u8; 4] = ok[1..5].try_into().unwrap();
    let (columns, params) = (u16::from_le_bytes([ok[5], ok[6]]), u16::from_le_bytes([ok[7], ok[8]]));
    let mut defs = Vec::new();
    for count in [params, columns].into_iter().filter(|&n| n > 0) {
        let mut packets = conn.until_eof().await;
        packets.pop();
        assert_eq!(packets.len(), usize::from(count), "{packets:?}");
        defs = packets;
    }
    (id, defs)
}

/// `executemany` as MariaDB Connector/C and Connector/Python send it with
/// `MARIADB_CLIENT_STMT_BULK_OPERATIONS`: one `COM_STMT_BULK_EXECUTE` for four rows, answered
/// with the four rows' count, as directly (through a proxy that did not offer it, the connector
/// fell back and Connector/Python's `test_bulk` saw 1). With
/// `MARIADB_CLIENT_EXTENDED_TYPE_INFO`, a JSON column is described as `json` as directly (it
/// was a plain BLOB). The session then reads its own rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_bulk_execution_and_extended_type_info_as_directly() {
    let topo = Topology::shared();
    let daemon = start_mysql(topo, "").await.unwrap();
    let proxy = daemon.addr("app", false).unwrap().port();
    let mut direct = RawConn::login(topo.primary().port, APP, 0).await;
    direct.send(0, b"\x03CREATE OR REPLACE TABLE bulk_ext (n INT, doc JSON)").await;
    assert_eq!(direct.read().await[0], 0x00);
    let mut described = Vec::new();
    for port in [topo.primary().port, proxy] {
        let mut conn = if port == proxy {
            login_with_extensions(proxy).await
        } else {
            let wanted = caps::ext::STMT_BULK_OPERATIONS | caps::ext::EXTENDED_TYPE_INFO;
            RawConn::login_ext(port, APP, caps::MULTI_RESULTS, wanted).await
        };
        let (_, defs) = prepare(&mut conn, "SELECT doc FROM bulk_ext").await;
        assert!(defs[0].windows(4).any(|w| w == b"json"), "extended type info, port {port}: {:?}", defs[0]);
        described.push(defs[0].clone());
        let (id, _) = prepare(&mut conn, "INSERT INTO bulk_ext (n) VALUES (?)").await;
        // Flags: SEND_TYPES_TO_SERVER; one parameter, MYSQL_TYPE_LONG; four rows, no indicator.
        let mut bulk = vec![0xfa];
        bulk.extend_from_slice(&id);
        bulk.extend_from_slice(&128u16.to_le_bytes());
        bulk.extend_from_slice(&[3, 0]);
        for n in 1..=4i32 {
            bulk.push(0);
            bulk.extend_from_slice(&n.to_le_bytes());
        }
        conn.send(0, &bulk).await;
        let ok = conn.read().await;
        assert_eq!(&ok[..2], [0x00, 4], "OK, four rows affected, port {port}: {ok:?}");
        conn.send(0, b"\x03SELECT count(*) FROM bulk_ext").await;
        let rows = conn.until_eof().await;
        assert_eq!(rows[0], [1], "one column: {rows:?}");
        let mut rest = conn.until_eof().await;
        rest.pop();
        let expected = if port == proxy { b"\x018".as_slice() } else { b"\x014".as_slice() };
        assert_eq!(rest[0], expected, "the session reads its own rows, port {port}: {rest:?}");
    }
    assert_eq!(described[0], described[1], "the column described as directly");
}
