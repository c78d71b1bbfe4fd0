//! Command bytes and what answer each command expects.

/// `COM_QUIT`.
pub const QUIT: u8 = 0x01;
/// `COM_INIT_DB`.
pub const INIT_DB: u8 = 0x02;
/// `COM_QUERY`.
pub const QUERY: u8 = 0x03;
/// `COM_FIELD_LIST`.
pub const FIELD_LIST: u8 = 0x04;
/// `COM_PING`.
pub const PING: u8 = 0x0e;
/// `COM_CHANGE_USER`.
pub const CHANGE_USER: u8 = 0x11;
/// `COM_STMT_PREPARE`.
pub const STMT_PREPARE: u8 = 0x16;
/// `COM_STMT_EXECUTE`.
pub const STMT_EXECUTE: u8 = 0x17;
/// `COM_STMT_SEND_LONG_DATA`.
pub const STMT_SEND_LONG_DATA: u8 = 0x18;
/// `COM_STMT_CLOSE`.
pub const STMT_CLOSE: u8 = 0x19;
/// `COM_STMT_RESET`.
pub const STMT_RESET: u8 = 0x1a;
/// `COM_SET_OPTION`.
pub const SET_OPTION: u8 = 0x1b;
/// `COM_STMT_FETCH`.
pub const STMT_FETCH: u8 = 0x1c;
/// `COM_RESET_CONNECTION`.
pub const RESET_CONNECTION: u8 = 0x1f;
/// `COM_STMT_BULK_EXECUTE` (MariaDB, with `MARIADB_CLIENT_STMT_BULK_OPERATIONS`): a prepared
/// statement run once per row of parameters, in one command.
pub const STMT_BULK_EXECUTE: u8 = 0xfa;

/// The shape of the answer to a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// No answer at all (`COM_STMT_CLOSE`, `COM_STMT_SEND_LONG_DATA`).
    None,
    /// One OK, ERR or EOF packet.
    Single,
    /// OK, ERR, or result sets (possibly several).
    ResultSet,
    /// Rows of an open cursor, ended by EOF/OK or ERR (`COM_STMT_FETCH`).
    Rows,
    /// The answer to `COM_STMT_PREPARE`.
    Prepare,
    /// Column definitions ended by EOF, or ERR (`COM_FIELD_LIST`).
    FieldList,
}

/// What answer command `cmd` gets; `None` for commands the proxy does not relay.
pub fn answer(cmd: u8) -> Option<Answer> {
    Some(match cmd {
        QUERY | STMT_EXECUTE | STMT_BULK_EXECUTE => Answer::ResultSet,
        INIT_DB | PING | STMT_RESET | SET_OPTION | RESET_CONNECTION => Answer::Single,
        STMT_CLOSE | STMT_SEND_LONG_DATA => Answer::None,
        STMT_PREPARE => Answer::Prepare,
        STMT_FETCH => Answer::Rows,
        FIELD_LIST => Answer::FieldList,
        _ => return None,
    })
}
