//! The connection phase: the server's HandshakeV10, the client's HandshakeResponse41, and
//! AuthSwitchRequest. Both sides are here because the proxy is a server to clients and a client
//! to backends. The auth arithmetic (scrambles) is `mysql_common`'s, in the daemon.

use super::caps;
use super::response::lenenc;
use crate::pg::frame::Fields;
use crate::ProtocolError;

/// A server's initial handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHandshake {
    /// Server version string.
    pub version: String,
    /// Connection id.
    pub connection_id: u32,
    /// The 20-byte scramble.
    pub nonce: Vec<u8>,
    /// Capability flags.
    pub caps: u32,
    /// MariaDB's extended capabilities ([`caps::ext`]); 0 from a server that sets
    /// `CLIENT_MYSQL`.
    pub ext: u32,
    /// Default collation id.
    pub charset: u8,
    /// Status flags.
    pub status: u16,
    /// Default auth plugin.
    pub plugin: String,
}

/// A client's handshake response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientResponse {
    /// Capability flags the client wants.
    pub caps: u32,
    /// MariaDB extended capabilities the client wants ([`caps::ext`]); sent only to a server
    /// whose handshake offered them.
    pub ext: u32,
    /// Maximum packet size.
    pub max_packet: u32,
    /// Collation id.
    pub charset: u8,
    /// Login name.
    pub user: String,
    /// Auth plugin response.
    pub auth: Vec<u8>,
    /// Initial database.
    pub database: Option<String>,
    /// Auth plugin the response is for.
    pub plugin: Option<String>,
    /// Connection attributes, as sent (without their length prefix).
    pub attrs: Vec<u8>,
}

const MALFORMED: ProtocolError = ProtocolError::Malformed { what: "handshake" };

impl ServerHandshake {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(96);
        p.push(10);
        p.extend_from_slice(self.version.as_bytes());
        p.push(0);
        p.extend_from_slice(&self.connection_id.to_le_bytes());
        let (part1, part2) = self.nonce.split_at(self.nonce.len().min(8));
        p.extend_from_slice(part1);
        p.push(0);
        p.extend_from_slice(&(self.caps as u16).to_le_bytes());
        p.push(self.charset);
        p.extend_from_slice(&self.status.to_le_bytes());
        p.extend_from_slice(&((self.caps >> 16) as u16).to_le_bytes());
        p.push(u8::try_from(self.nonce.len() + 1).unwrap_or(21));
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(&reserved_ext(self.caps, self.ext).to_le_bytes());
        p.extend_from_slice(part2);
        p.push(0);
        p.extend_from_slice(self.plugin.as_bytes());
        p.push(0);
        p
    }

    /// Parses a server's handshake payload.
    ///
    /// # Errors
    /// Not a protocol 10 handshake, or truncated.
    pub fn parse(p: &[u8]) -> Result<Self, ProtocolError> {
        let mut f = Fields::new(p);
        if f.bytes(1, "handshake")? != [10] {
            return Err(ProtocolError::Malformed { what: "handshake (protocol version is not 10)" });
        }
        let version = f.cstr("server version")?.to_owned();
        let connection_id = u32::from_le_bytes(f.bytes(4, "connection id")?.try_into().map_err(|_| MALFORMED)?);
        let mut nonce = f.bytes(8, "scramble")?.to_vec();
        f.bytes(1, "filler")?;
        let low = u16::from_le_bytes(f.bytes(2, "capabilities")?.try_into().map_err(|_| MALFORMED)?);
        let charset = f.byte("charset")?;
        let status = u16::from_le_bytes(f.bytes(2, "status")?.try_into().map_err(|_| MALFORMED)?);
        let high = u16::from_le_bytes(f.bytes(2, "capabilities")?.try_into().map_err(|_| MALFORMED)?);
        let caps = u32::from(low) | u32::from(high) << 16;
        let data_len = usize::from(f.byte("scramble length")?);
        let reserved = f.bytes(10, "reserved")?;
        let ext = ext_in(caps, reserved.get(6..).unwrap_or_default());
        let part2 = data_len.saturating_sub(8).max(13);
        let rest = f.bytes(part2.min(f.rest().len()), "scramble")?;
        nonce.extend_from_slice(rest.strip_suffix(&[0]).unwrap_or(rest));
        let plugin = if caps & caps::PLUGIN_AUTH != 0 {
            std::str::from_utf8(f.rest().split(|&b| b == 0).next().unwrap_or_default())
                .map_err(|_| MALFORMED)?
                .to_owned()
        } else {
            "mysql_native_password".to_owned()
        };
        Ok(Self { version, connection_id, nonce, caps, ext, charset, status, plugin })
    }
}

impl ClientResponse {
    /// Encodes the payload (HandshakeResponse41).
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(64 + self.attrs.len());
        p.extend_from_slice(&self.caps.to_le_bytes());
        p.extend_from_slice(&self.max_packet.to_le_bytes());
        p.push(self.charset);
        p.extend_from_slice(&[0; 19]);
        p.extend_from_slice(&reserved_ext(self.caps, self.ext).to_le_bytes());
        p.extend_from_slice(self.user.as_bytes());
        p.push(0);
        if self.caps & caps::PLUGIN_AUTH_LENENC != 0 {
            push_lenenc(&mut p, self.auth.len() as u64);
            p.extend_from_slice(&self.auth);
        } else {
            p.push(u8::try_from(self.auth.len()).unwrap_or(0));
            p.extend_from_slice(self.auth.get(..self.auth.len().min(255)).unwrap_or_default());
        }
        if self.caps & caps::CONNECT_WITH_DB != 0 {
            p.extend_from_slice(self.database.as_deref().unwrap_or("").as_bytes());
            p.push(0);
        }
        if self.caps & caps::PLUGIN_AUTH != 0 {
            p.extend_from_slice(self.plugin.as_deref().unwrap_or("mysql_native_password").as_bytes());
            p.push(0);
        }
        if self.caps & caps::CONNECT_ATTRS != 0 {
            push_lenenc(&mut p, self.attrs.len() as u64);
            p.extend_from_slice(&self.attrs);
        }
        p
    }

    /// Encodes the SSLRequest a client sends before its TLS handshake: the response's first
    /// 32 bytes, with `CLIENT_SSL` set.
    pub fn ssl_request(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(32);
        p.extend_from_slice(&(self.caps | caps::SSL).to_le_bytes());
        p.extend_from_slice(&self.max_packet.to_le_bytes());
        p.push(self.charset);
        // A MariaDB server takes the extended capabilities from this packet.
        p.extend_from_slice(&[0; 19]);
        p.extend_from_slice(&reserved_ext(self.caps, self.ext).to_le_bytes());
        p
    }

    /// Parses a client's handshake response.
    ///
    /// # Errors
    /// Pre-4.1 clients, a TLS request (not offered), or a truncated packet.
    pub fn parse(p: &[u8]) -> Result<Self, ProtocolError> {
        let mut f = Fields::new(p);
        let caps = u32::from_le_bytes(f.bytes(4, "client capabilities")?.try_into().map_err(|_| MALFORMED)?);
        if caps & caps::PROTOCOL_41 == 0 {
            return Err(ProtocolError::Malformed { what: "handshake response (pre-4.1 clients are not supported)" });
        }
        if caps & caps::SSL != 0 && p.len() <= 32 {
            return Err(ProtocolError::Malformed { what: "TLS request (TLS is not configured)" });
        }
        let max_packet = u32::from_le_bytes(f.bytes(4, "max packet")?.try_into().map_err(|_| MALFORMED)?);
        let charset = f.byte("charset")?;
        let filler = f.bytes(23, "filler")?;
        let ext = ext_in(caps, filler.get(19..).unwrap_or_default());
        let user = f.cstr("user")?.to_owned();
        let auth = if caps & caps::PLUGIN_AUTH_LENENC != 0 {
            let (len, n) = lenenc(f.rest()).ok_or(MALFORMED)?;
            f.bytes(n, "auth length")?;
            f.bytes(usize::try_from(len).map_err(|_| MALFORMED)?, "auth response")?.to_vec()
        } else {
            let len = usize::from(f.byte("auth length")?);
            f.bytes(len, "auth response")?.to_vec()
        };
        let database = if caps & caps::CONNECT_WITH_DB != 0 && !f.rest().is_empty() {
            Some(f.cstr("database")?.to_owned()).filter(|d| !d.is_empty())
        } else {
            None
        };
        let plugin = if caps & caps::PLUGIN_AUTH != 0 && !f.rest().is_empty() {
            Some(f.cstr("plugin")?.to_owned())
        } else {
            None
        };
        let attrs = if caps & caps::CONNECT_ATTRS != 0 && !f.rest().is_empty() {
            let (len, n) = lenenc(f.rest()).ok_or(MALFORMED)?;
            f.bytes(n, "attrs length")?;
            f.bytes(usize::try_from(len).map_err(|_| MALFORMED)?, "attrs")?.to_vec()
        } else {
            Vec::new()
        };
        Ok(Self { caps, ext, max_packet, charset, user, auth, database, plugin, attrs })
    }
}

/// The extended capabilities to write in a handshake's reserved bytes: none beside
/// `CLIENT_MYSQL`, where they would be read as filler.
fn reserved_ext(caps: u32, ext: u32) -> u32 {
    if caps & caps::MYSQL == 0 {
        ext
    } else {
        0
    }
}

/// The extended capabilities in a handshake's last 4 reserved bytes (`bytes`), when `caps`
/// says they are there.
fn ext_in(caps: u32, bytes: &[u8]) -> u32 {
    match <[u8; 4]>::try_from(bytes) {
        Ok(b) if caps & caps::MYSQL == 0 => u32::from_le_bytes(b),
        _ => 0,
    }
}

/// A `COM_CHANGE_USER` request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangeUser {
    /// The new login name.
    pub user: String,
    /// Auth response (computed with the connection's first scramble).
    pub auth: Vec<u8>,
    /// The new default database (`None`: none).
    pub database: Option<String>,
    /// The new collation, when sent.
    pub charset: Option<u8>,
    /// The auth plugin the response is for, when sent.
    pub plugin: Option<String>,
}

impl ChangeUser {
    /// Parses a `COM_CHANGE_USER` payload (including its command byte) from a client that
    /// negotiated `client_caps`.
    ///
    /// # Errors
    /// A truncated or malformed packet.
    pub fn parse(p: &[u8], client_caps: u32) -> Result<Self, ProtocolError> {
        let mut f = Fields::new(p.get(1..).ok_or(MALFORMED)?);
        let user = f.cstr("user")?.to_owned();
        let auth = if client_caps & caps::SECURE_CONNECTION != 0 {
            let len = usize::from(f.byte("auth length")?);
            f.bytes(len, "auth response")?.to_vec()
        } else {
            f.cstr("auth response")?.as_bytes().to_vec()
        };
        let database = Some(f.cstr("database")?.to_owned()).filter(|d| !d.is_empty());
        let mut charset = None;
        let mut plugin = None;
        if f.rest().len() >= 2 {
            charset = f.bytes(2, "charset")?.first().copied();
            if client_caps & caps::PLUGIN_AUTH != 0 && !f.rest().is_empty() {
                plugin = Some(f.cstr("plugin")?.to_owned());
            }
        }
        Ok(Self { user, auth, database, charset, plugin })
    }
}

/// An AuthSwitchRequest payload.
pub fn auth_switch_request(plugin: &str, nonce: &[u8]) -> Vec<u8> {
    let mut p = vec![0xFE];
    p.extend_from_slice(plugin.as_bytes());
    p.push(0);
    p.extend_from_slice(nonce);
    p.push(0);
    p
}

/// Parses an AuthSwitchRequest payload (after its `0xFE`): plugin name and its data.
///
/// # Errors
/// Truncated.
pub fn parse_auth_switch(p: &[u8]) -> Result<(String, Vec<u8>), ProtocolError> {
    let mut f = Fields::new(p.get(1..).ok_or(MALFORMED)?);
    let plugin = f.cstr("auth plugin")?.to_owned();
    let data = f.rest();
    Ok((plugin, data.strip_suffix(&[0]).unwrap_or(data).to_vec()))
}

fn push_lenenc(p: &mut Vec<u8>, v: u64) {
    match v {
        0..=250 => p.push(v as u8),
        251..=0xFFFF => {
            p.push(0xFC);
            p.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xFF_FFFF => {
            p.push(0xFD);
            p.extend_from_slice(&v.to_le_bytes()[..3]);
        }
        _ => {
            p.push(0xFE);
            p.extend_from_slice(&v.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_request_is_the_first_32_bytes_with_ssl_set() {
        let r = ClientResponse {
            caps: caps::PROTOCOL_41 | caps::SECURE_CONNECTION,
            ext: caps::ext::EXTENDED_TYPE_INFO,
            max_packet: 1 << 24,
            charset: 45,
            user: "u".into(),
            ..ClientResponse::default()
        };
        let ssl = r.ssl_request();
        assert_eq!(ssl.len(), 32);
        let full = ClientResponse { caps: r.caps | caps::SSL, ..r.clone() }.encode();
        assert_eq!(ssl[..], full[..32]);
        // What the proxy's own server side sees: a TLS request, not a login.
        assert!(ClientResponse::parse(&ssl).is_err());
    }

    #[test]
    fn change_user_requests() {
        let mut p = vec![0x11];
        p.extend_from_slice(b"anon\0");
        p.push(3);
        p.extend_from_slice(b"abc");
        p.extend_from_slice(b"app\0");
        p.extend_from_slice(&[45, 0]);
        p.extend_from_slice(b"mysql_native_password\0");
        let c = ChangeUser::parse(&p, caps::SECURE_CONNECTION | caps::PLUGIN_AUTH).unwrap_or_default();
        assert_eq!(c.user, "anon");
        assert_eq!(c.auth, b"abc");
        assert_eq!(c.database.as_deref(), Some("app"));
        assert_eq!(c.charset, Some(45));
        assert_eq!(c.plugin.as_deref(), Some("mysql_native_password"));
        assert!(ChangeUser::parse(&[0x11, b'x'], caps::SECURE_CONNECTION).is_err(), "truncated");
        assert!(ChangeUser::parse(&[0x11, b'x', 0, 9, 1], caps::SECURE_CONNECTION).is_err(), "auth overruns");
    }

    #[test]
    fn server_handshake_round_trips() {
        let h = ServerHandshake {
            version: "10.11.0-MariaDB-sqlswitch".into(),
            connection_id: 42,
            nonce: (1..=20).collect(),
            caps: caps::OFFERED,
            ext: caps::ext::OFFERED,
            charset: 45,
            status: 2,
            plugin: "mysql_native_password".into(),
        };
        assert_eq!(ServerHandshake::parse(&h.encode()).unwrap(), h);
        // A MySQL server (CLIENT_MYSQL set) has no extended capabilities: none are written or read.
        let mysql = ServerHandshake { caps: caps::OFFERED | caps::MYSQL, ..h.clone() };
        assert_eq!(ServerHandshake::parse(&mysql.encode()).unwrap(), ServerHandshake { ext: 0, ..mysql });
    }

    #[test]
    fn client_response_round_trips_and_rejects_junk() {
        let r = ClientResponse {
            caps: caps::OFFERED,
            ext: caps::ext::EXTENDED_TYPE_INFO,
            max_packet: 1 << 24,
            charset: 45,
            user: "app".into(),
            auth: vec![7; 20],
            database: Some("app".into()),
            plugin: Some("mysql_native_password".into()),
            attrs: b"\x04_pid\x0212".to_vec(),
        };
        assert_eq!(ClientResponse::parse(&r.encode()).unwrap(), r);
        let short = ClientResponse {
            caps: caps::OFFERED & !caps::PLUGIN_AUTH_LENENC & !caps::CONNECT_ATTRS,
            attrs: vec![],
            ..r
        };
        assert_eq!(ClientResponse::parse(&short.encode()).unwrap(), short);
        let mysql = ClientResponse { caps: short.caps | caps::MYSQL, ..short.clone() };
        assert_eq!(ClientResponse::parse(&mysql.encode()).unwrap(), ClientResponse { ext: 0, ..mysql });
        assert!(ClientResponse::parse(b"\x00\x00").is_err());
        assert!(ClientResponse::parse(&[0xff; 40]).is_err());
        let mut ssl = caps::OFFERED.to_le_bytes().to_vec();
        ssl[1] |= 0x08;
        ssl.extend_from_slice(&[0; 28]);
        assert!(ClientResponse::parse(&ssl).is_err(), "a TLS request is refused while TLS is not configured");
    }

    #[test]
    fn auth_switch_round_trips() {
        let p = auth_switch_request("mysql_native_password", &[1; 20]);
        assert_eq!(parse_auth_switch(&p).unwrap(), ("mysql_native_password".into(), vec![1; 20]));
    }
}
