//! What the fault loop records: every client operation as invoked and completed, with its
//! outcome, and every fault as applied and healed. Written as JSON lines, one record a line,
//! so a failing run can be read (and checked again) after the fact.

use serde::{Deserialize, Serialize};

/// What a client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An autocommit insert of the row `(client, seq, 'one')`.
    Insert,
    /// `BEGIN; INSERT (client, seq, 'a'); <think>; INSERT (client, seq, 'b'); COMMIT`.
    Transaction,
    /// Right after an acknowledged insert of `(client, seq)`, the same session counts it.
    ReadOwn,
}

/// How an operation ended, as the client can know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged.
    Ok,
    /// Surely not done: it failed before anything that could commit was sent (a transaction's
    /// statement before COMMIT).
    Failed,
    /// It may or may not have taken effect (an autocommit insert or a COMMIT whose answer was
    /// an error or never came).
    Unknown,
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client (one session at a time, reconnecting after errors).
    pub client: u32,
    /// The client's operation number: with `client`, the rows it writes.
    pub seq: u32,
    /// What it did.
    pub kind: Kind,
    /// When it started, in milliseconds since the run began.
    pub invoked_ms: u64,
    /// When it ended.
    pub completed_ms: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// For [`Kind::ReadOwn`]: the count the session saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<i64>,
    /// The error, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One fault, from when it was applied to when it was healed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Its name (`switchover`, `freeze-primary`, `blackhole-primary`, ...).
    pub name: String,
    /// Where and how.
    pub detail: String,
    /// When it was applied, in milliseconds since the run began.
    pub started_ms: u64,
    /// When it was healed (for an instant fault, when its command returned).
    pub healed_ms: u64,
    /// A planned change with nothing else going on: clients must see no error at all.
    pub planned: bool,
}

/// The rows a client writes for an operation: `(client, seq, part)`.
pub type Row = (u32, u32, String);
