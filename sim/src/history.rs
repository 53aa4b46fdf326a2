//! What the clients did and saw: one record per operation, in simulated time.
//!
//! Writes carry what they replaced: a read-modify-write passes the context of a read, and
//! `covers` lists the values that read returned, which are exactly the siblings the write
//! may replace. A blind write covers nothing. The checkers reason only from this record.

use std::fmt;
use std::time::Duration;

use quorumkv_client::Consistency;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    Get,
    Put { value: String },
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A read that answered, with the live values it returned.
    Read { values: Vec<String> },
    /// A write that was acknowledged at its level.
    Written,
    /// Refused before anything was written (unavailable, invalid): never applied.
    Refused { kind: &'static str },
    /// Failed with an unknown outcome (timeout, lost connection): may have been applied.
    Indeterminate { kind: &'static str },
}

#[derive(Clone, Debug)]
pub struct Op {
    pub id: usize,
    pub client: usize,
    pub key: String,
    pub kind: OpKind,
    pub level: Consistency,
    pub start: Duration,
    pub end: Duration,
    pub outcome: Outcome,
    /// For writes: the values the write's context covered.
    pub covers: Vec<String>,
}

impl Op {
    pub fn is_write(&self) -> bool {
        !matches!(self.kind, OpKind::Get)
    }

    pub fn acknowledged(&self) -> bool {
        self.outcome == Outcome::Written
    }

    /// A write that may have reached some replica: acknowledged or indeterminate.
    pub fn possibly_applied(&self) -> bool {
        self.is_write() && !matches!(self.outcome, Outcome::Refused { .. })
    }

    pub fn read_values(&self) -> Option<&[String]> {
        match &self.outcome {
            Outcome::Read { values } => Some(values),
            _ => None,
        }
    }

    pub fn written_value(&self) -> Option<&str> {
        match &self.kind {
            OpKind::Put { value } => Some(value),
            _ => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            OpKind::Get => "get".to_owned(),
            OpKind::Put { value } => format!("put {value}"),
            OpKind::Delete => "delete".to_owned(),
        };
        write!(
            f,
            "op {} client {} {kind} {} at {} [{:?}..{:?}] -> {:?}",
            self.id, self.client, self.key, self.level, self.start, self.end, self.outcome
        )?;
        if !self.covers.is_empty() {
            write!(f, " covering {:?}", self.covers)?;
        }
        Ok(())
    }
}

/// The final state of one key on one node, read without coordination after heal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaState {
    pub node: String,
    pub key: String,
    /// Dots and values (None for tombstones), sorted.
    pub siblings: Vec<(String, Option<String>)>,
    pub context: String,
}

/// The final read of one key at `all` through one node.
#[derive(Clone, Debug)]
pub struct FinalRead {
    pub node: String,
    pub key: String,
    pub values: Result<Vec<String>, String>,
}
