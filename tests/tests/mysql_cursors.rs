//! Server-side cursors (`COM_STMT_EXECUTE` with a cursor flag, then `COM_STMT_FETCH`), as
//! MariaDB Connector/Python and C clients open them, over a raw socket against real MariaDB.

use sqlswitch_protocol::mysql::caps;
use sqlswitch_tests::mysql::Topology;
use sqlswitch_tests::mysql_raw::RawConn;
use sqlswitch_tests::pg::APP;
use sqlswitch_tests::proxy::start_mysql;

/// Prepares `sql`, executes it with a read-only cursor and fetches its rows two at a time;
/// returns how many rows came.
async fn through_a_cursor(conn: &mut RawConn, sql: &str) -> usize {
    let mut prepare = vec![0x16];
    prepare.extend_from_slice(sql.as_bytes());
    conn.send(0, &prepare).await;
    let ok = conn.read().await;
    assert_eq!(ok[0], 0x00, "prepared: {ok:?}");
    let id: [u8; 4] = ok[1..5].try_into().unwrap();
    let (columns, params) = (u16::from_le_bytes([ok[5], ok[6]]), u16::from_le_bytes([ok[7], ok[8]]));
    assert_eq!(params, 0);
    // Column definitions then an EOF (no CLIENT_DEPRECATE_EOF).
    for _ in 0..=columns {
        conn.read().await;
    }
    // COM_STMT_EXECUTE: id, CURSOR_TYPE_READ_ONLY, iteration count 1.
    let mut execute = vec![0x17];
    execute.extend_from_slice(&id);
    execute.extend_from_slice(&[0x01, 1, 0, 0, 0]);
    conn.send(0, &execute).await;
    let answer = conn.read().await;
    assert_eq!(answer, [u8::try_from(columns).unwrap()], "a column count");
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
/// through sqlswitch as directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_cursors_fetch_their_rows() {
    let topo = Topology::shared();
    let daemon = start_mysql(topo, "").await.unwrap();
    let proxy = daemon.addr("app", false).unwrap().port();
    let sql = "SELECT seq FROM seq_1_to_5";
    for port in [topo.primary().port, proxy] {
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
