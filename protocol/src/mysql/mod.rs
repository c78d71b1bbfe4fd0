//! The MySQL/MariaDB client/server protocol as the proxy needs it. [`packet`] frames packets
//! (3-byte length, sequence id, 16 MiB continuations); [`command`] names the commands and what
//! answer each expects; [`response`] follows an answer packet by packet to find its end and its
//! final status flags, without decoding rows. Handshake and authentication messages are
//! `mysql_common`'s, used by the daemon.

pub mod command;
pub mod handshake;
pub mod packet;
pub mod response;

/// Error codes the proxy sends itself.
pub mod code {
    /// `ER_ACCESS_DENIED_ERROR` (1045).
    pub const ACCESS_DENIED: u16 = 1045;
    /// `ER_OPTION_PREVENTS_STATEMENT` (1290): the read-only error.
    pub const OPTION_PREVENTS_STATEMENT: u16 = 1290;
    /// `ER_UNKNOWN_COM_ERROR` (1047).
    pub const UNKNOWN_COMMAND: u16 = 1047;
    /// `ER_NOT_SUPPORTED_YET` (1235).
    pub const NOT_SUPPORTED_YET: u16 = 1235;
    /// `ER_NET_PACKET_TOO_LARGE` (1153).
    pub const PACKET_TOO_LARGE: u16 = 1153;
    /// `ER_CON_COUNT_ERROR` (1040).
    pub const TOO_MANY_CONNECTIONS: u16 = 1040;
    /// `ER_HANDSHAKE_ERROR` (1043).
    pub const HANDSHAKE: u16 = 1043;
    /// ER_NO_SUCH_THREAD.
    pub const NO_SUCH_THREAD: u16 = 1094;
    /// ER_KILL_DENIED_ERROR.
    pub const KILL_DENIED: u16 = 1095;
    /// ER_CONNECTION_KILLED.
    pub const CONNECTION_KILLED: u16 = 1927;
    /// ER_SECURE_TRANSPORT_REQUIRED.
    pub const SECURE_TRANSPORT_REQUIRED: u16 = 3159;
    /// ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8): disconnected for inactivity.
    pub const CLIENT_INACTIVE: u16 = 4031;
    /// `CR_SERVER_GONE_ERROR` (2006): what a client library reports when the server closed
    /// its connection; sent when the server closed a session's connection mid-transaction.
    pub const SERVER_GONE: u16 = 2006;
    /// `CR_SERVER_LOST` style failure reported as `ER_UNKNOWN_ERROR` (1105).
    pub const UNKNOWN: u16 = 1105;
}

/// Server status flags carried by OK and EOF packets.
pub mod status {
    /// `SERVER_STATUS_IN_TRANS`.
    pub const IN_TRANS: u16 = 0x0001;
    /// `SERVER_STATUS_AUTOCOMMIT`.
    pub const AUTOCOMMIT: u16 = 0x0002;
    /// `SERVER_MORE_RESULTS_EXISTS`.
    pub const MORE_RESULTS: u16 = 0x0008;
    /// `SERVER_STATUS_CURSOR_EXISTS`: a `COM_STMT_EXECUTE` opened a cursor; its rows come with
    /// `COM_STMT_FETCH`.
    pub const CURSOR_EXISTS: u16 = 0x0040;
}

/// Capability flags the proxy looks at.
pub mod caps {
    /// `CLIENT_FOUND_ROWS`: an UPDATE reports the rows it matched, not the rows it changed.
    pub const FOUND_ROWS: u32 = 0x0000_0002;
    /// `CLIENT_LONG_FLAG`: all column flags in result metadata.
    pub const LONG_FLAG: u32 = 0x0000_0004;
    /// `CLIENT_CONNECT_WITH_DB`.
    pub const CONNECT_WITH_DB: u32 = 0x0000_0008;
    /// `CLIENT_NO_SCHEMA`: the server refuses `database.table.column`.
    pub const NO_SCHEMA: u32 = 0x0000_0010;
    /// `CLIENT_COMPRESS`.
    pub const COMPRESS: u32 = 0x0000_0020;
    /// `CLIENT_LOCAL_FILES`.
    pub const LOCAL_FILES: u32 = 0x0000_0080;
    /// `CLIENT_IGNORE_SPACE`: function names may be followed by spaces (and become reserved).
    pub const IGNORE_SPACE: u32 = 0x0000_0100;
    /// `CLIENT_PROTOCOL_41`.
    pub const PROTOCOL_41: u32 = 0x0000_0200;
    /// `CLIENT_INTERACTIVE`: the server closes the connection after `interactive_timeout`.
    pub const INTERACTIVE: u32 = 0x0000_0400;
    /// `CLIENT_SSL`.
    pub const SSL: u32 = 0x0000_0800;
    /// `CLIENT_TRANSACTIONS`.
    pub const TRANSACTIONS: u32 = 0x0000_2000;
    /// `CLIENT_SECURE_CONNECTION`.
    pub const SECURE_CONNECTION: u32 = 0x0000_8000;
    /// `CLIENT_MULTI_STATEMENTS`.
    pub const MULTI_STATEMENTS: u32 = 0x0001_0000;
    /// `CLIENT_MULTI_RESULTS`.
    pub const MULTI_RESULTS: u32 = 0x0002_0000;
    /// `CLIENT_PS_MULTI_RESULTS`.
    pub const PS_MULTI_RESULTS: u32 = 0x0004_0000;
    /// `CLIENT_PLUGIN_AUTH`.
    pub const PLUGIN_AUTH: u32 = 0x0008_0000;
    /// `CLIENT_CONNECT_ATTRS`.
    pub const CONNECT_ATTRS: u32 = 0x0010_0000;
    /// `CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA`.
    pub const PLUGIN_AUTH_LENENC: u32 = 0x0020_0000;
    /// `CLIENT_SESSION_TRACK`.
    pub const SESSION_TRACK: u32 = 0x0080_0000;
    /// `CLIENT_DEPRECATE_EOF`.
    pub const DEPRECATE_EOF: u32 = 0x0100_0000;

    /// The flags that change what a server does or answers. The client's choice of these is
    /// part of every server connection its session uses (the pool key holds them, and a
    /// connection that did not get them all is refused), so the answers are the ones the
    /// client asked for. docs/mysql-capabilities.md lists them.
    pub const BEHAVIOUR: u32 = FOUND_ROWS
        | LONG_FLAG
        | NO_SCHEMA
        | IGNORE_SPACE
        | INTERACTIVE
        | TRANSACTIONS
        | MULTI_STATEMENTS
        | MULTI_RESULTS
        | PS_MULTI_RESULTS
        | SESSION_TRACK
        | DEPRECATE_EOF;

    /// What the proxy's own control-path logins ask for (monitor, switchover): the server's
    /// defaults, whatever clients ask.
    pub const CONTROL: u32 = CONNECT_WITH_DB
        | PROTOCOL_41
        | TRANSACTIONS
        | SECURE_CONNECTION
        | MULTI_STATEMENTS
        | MULTI_RESULTS
        | PS_MULTI_RESULTS
        | PLUGIN_AUTH
        | CONNECT_ATTRS
        | PLUGIN_AUTH_LENENC
        | DEPRECATE_EOF;

    /// MariaDB's extended capabilities: 32 more flags in the handshakes' reserved bytes, sent
    /// only when the server's handshake clears `CLIENT_MYSQL` (bit 0, as MariaDB servers do).
    pub mod ext {
        /// `MARIADB_CLIENT_PROGRESS`: progress reports inside answers.
        pub const PROGRESS: u32 = 1;
        /// `MARIADB_CLIENT_COM_MULTI`.
        pub const COM_MULTI: u32 = 2;
        /// `MARIADB_CLIENT_STMT_BULK_OPERATIONS`: `COM_STMT_BULK_EXECUTE`, one prepared
        /// statement run for many rows of parameters in one round trip.
        pub const STMT_BULK_OPERATIONS: u32 = 4;
        /// `MARIADB_CLIENT_EXTENDED_TYPE_INFO`: column definitions name extended types (`json`,
        /// `uuid`, ...).
        pub const EXTENDED_TYPE_INFO: u32 = 8;
        /// `MARIADB_CLIENT_CACHE_METADATA`: result metadata skipped when unchanged.
        pub const CACHE_METADATA: u32 = 16;
        /// What the proxy offers when every server it reached offers it too. Both change what
        /// a server answers, so they are part of the pool key like `BEHAVIOUR`. Progress
        /// reports and cached metadata are not offered: the proxy's answer tracking does not
        /// read them.
        pub const OFFERED: u32 = STMT_BULK_OPERATIONS | EXTENDED_TYPE_INFO;
    }

    /// `CLIENT_MYSQL` (historically `CLIENT_LONG_PASSWORD`): a server that sets it has no
    /// extended capabilities.
    pub const MYSQL: u32 = 0x0000_0001;

    /// What the proxy offers clients and relays faithfully: no compression, no LOCAL INFILE,
    /// (TLS is added where configured; MariaDB's extended capabilities are in [`ext`]).
    pub const OFFERED: u32 = CONTROL | BEHAVIOUR;
}
