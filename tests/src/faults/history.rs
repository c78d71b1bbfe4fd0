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
    /// A serializable transaction that appends its element `client.seq` to some keys of the
    /// list table and reads others ([`Mop`]s, checked by [`super::elle`]).
    Append,
    /// One autocommit statement reading several keys of the list table (a replica may answer).
    ReadKeys,
}

/// One step of a list-append operation: an append of the operation's element to `key`, or a
/// read of `key` that saw `len` elements whose text (`e1,e2,...`) hashes to `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mop {
    /// The key.
    pub key: u32,
    /// An append (`true`) or a read.
    pub append: bool,
    /// A read: how many elements it saw.
    #[serde(default)]
    pub len: u32,
    /// A read: [`super::elle::hash`] of what it saw.
    #[serde(default)]
    pub hash: u64,
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
    /// The client's session (it opens a new one after an error).
    #[serde(default)]
    pub session: u32,
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
    /// For [`Kind::Append`] and [`Kind::ReadKeys`]: what it did, key by key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mops: Vec<Mop>,
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
