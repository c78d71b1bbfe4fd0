//! A MySQL client over a raw socket, packet by packet: for what the drivers the tests use do
//! not do (server-side cursors) or hide (the exact login exchange). Every read has a deadline,
//! so a missing answer fails the test instead of hanging it.

use std::time::Duration;

use bytes::BytesMut;
use sqlswitch_protocol::mysql::handshake::{ClientResponse, ServerHandshake};
use sqlswitch_protocol::mysql::{caps, packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one packet is waited for.
const PATIENCE: Duration = Duration::from_secs(5);

/// A connection after its handshake.
pub struct RawConn {
    stream: TcpStream,
    buf: BytesMut,
    /// The packets the server sent after the handshake response (an OK or ERR, preceded by
    /// `caching_sha2_password`'s fast-auth byte).
    pub login: Vec<Vec<u8>>,
    /// The scramble of the server's handshake.
    pub scramble: [u8; 20],
    /// The MariaDB extended capabilities the server's handshake offered.
    pub offered_ext: u32,
}

impl RawConn {
    /// Logs in to `port` as `user` with `caching_sha2_password` (as MySQL 8 clients do), the
    /// database `app`, with capabilities `extra` beyond protocol 4.1.
    ///
    /// # Panics
    /// The server closes the connection or stays silent.
    pub async fn login(port: u16, who: (&str, &str), extra: u32) -> Self {
        Self::login_ext(port, who, extra, 0).await
    }

    /// [`RawConn::login`], asking for MariaDB extended capabilities `ext` too (those offered).
    ///
    /// # Panics
    /// The server closes the connection or stays silent.
    pub async fn login_ext(port: u16, (user, password): (&str, &str), extra: u32, ext: u32) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut conn = Self { stream, buf: BytesMut::new(), login: Vec::new(), scramble: [0; 20], offered_ext: 0 };
        let hello = ServerHandshake::parse(&conn.read().await).unwrap();
        conn.offered_ext = hello.ext;
        let nonce: [u8; 20] = hello.nonce[..20].try_into().unwrap();
        conn.scramble = nonce;
        let auth = mysql_common::auth::plugins::caching_sha2_password::scramble_sha256(&nonce, password.as_bytes());
        let response = ClientResponse {
            caps: caps::PROTOCOL_41 | caps::SECURE_CONNECTION | caps::PLUGIN_AUTH | caps::CONNECT_WITH_DB | extra,
            ext: ext & hello.ext,
            max_packet: 1 << 24,
            charset: 45,
            user: user.to_owned(),
            auth: auth.map(|a| a.to_vec()).unwrap_or_default(),
            database: Some("app".into()),
            plugin: Some("caching_sha2_password".into()),
            attrs: Vec::new(),
        };
        conn.send(1, &response.encode()).await;
        let first = conn.read().await;
        conn.login.push(first);
        if conn.login[0].first() == Some(&0xFE) {
            // An auth switch (MariaDB itself asks for mysql_native_password): its nonce follows
            // the plugin name.
            let switch = conn.login[0].clone();
            let rest = switch.splitn(2, |&b| b == 0).nth(1).unwrap_or_default();
            let nonce = rest.strip_suffix(&[0]).unwrap_or(rest);
            let auth = mysql_common::auth::plugins::mysql_native_password::scramble_native(nonce, password.as_bytes());
            conn.send(3, &auth.map(|a| a.to_vec()).unwrap_or_default()).await;
            let ok = conn.read().await;
            conn.login.push(ok);
        } else if conn.login[0] == [0x01, 0x03] {
            let ok = conn.read().await;
            conn.login.push(ok);
        }
        conn
    }

    /// Sends one packet.
    pub async fn send(&mut self, seq: u8, payload: &[u8]) {
        let mut out = BytesMut::new();
        packet::encode(&mut out, seq, payload);
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next packet's payload.
    ///
    /// # Panics
    /// None within [`PATIENCE`], or the connection closed.
    pub async fn read(&mut self) -> Vec<u8> {
        loop {
            if let Some(p) = packet::decode(&mut self.buf, 1 << 24).unwrap() {
                return p.payload.to_vec();
            }
            let read = tokio::time::timeout(PATIENCE, self.stream.read_buf(&mut self.buf)).await;
            let n = read.unwrap_or_else(|_| panic!("no packet within {PATIENCE:?}")).unwrap();
            assert!(n > 0, "the server closed the connection");
        }
    }

    /// Whether the server closes the connection within `within`, reading (and dropping)
    /// whatever it sends meanwhile.
    pub async fn closed(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => self.buf.clear(),
            }
        }
    }

    /// Packets until an EOF (`0xFE`, under 9 bytes) or ERR; all of them.
    pub async fn until_eof(&mut self) -> Vec<Vec<u8>> {
        let mut packets = Vec::new();
        loop {
            let p = self.read().await;
            let end = matches!(p.first(), Some(0xFF)) || (p.first() == Some(&0xFE) && p.len() < 9);
            packets.push(p);
            if end {
                return packets;
            }
        }
    }
}
