//! What travels on a connection.
//!
//! A connection opens with a bare [`Hello`] answered by a bare [`HelloReply`]; after that
//! every frame is an [`Envelope`] carrying a request id, so one connection carries many
//! requests at once and replies may come back in any order. Clients send [`Request`] and
//! receive [`Response`]; nodes speak their own peer messages in the same envelopes.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::consistency::Consistency;
use crate::error::Error;

/// Bumped on any change to the messages below; a node refuses other versions.
/// 2: `Request::Compact` and `Response::Compacted`.
/// 3: hints, anti-entropy and tombstone GC: `StatusReport::convergence`, peer messages.
pub const PROTOCOL_VERSION: u16 = 3;

/// The cluster name used when none is configured.
pub const DEFAULT_CLUSTER: &str = "quorumkv";

/// A node's name within its cluster (`n1`, `n2`, ...).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(name: &str) -> Self {
        NodeId(name.to_owned())
    }
}

/// The first frame on every connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u16,
    pub cluster: String,
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Client,
    /// `ring` fingerprints the sender's placement settings (members, N, Q): two nodes that
    /// place keys differently must not replicate to each other.
    Peer {
        node: NodeId,
        ring: u64,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum HelloReply {
    Welcome { node: NodeId, protocol: u16 },
    Refused { reason: String },
}

/// Every frame after the hello.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub id: u64,
    pub body: T,
}

/// The id a node uses when it must report an error about a frame it could not read.
pub const UNKNOWN_REQUEST_ID: u64 = 0;

/// The causal context of a read, handed back unchanged with the next write.
///
/// Opaque to clients: the bytes are the node's encoding of a version vector. In text
/// (CLI, JSON) it travels as URL-safe base64.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context(pub Bytes);

impl Context {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.0))
    }
}

impl FromStr for Context {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|e| Error::Rejected {
                reason: format!("context is not valid base64: {e}"),
            })?;
        Ok(Context(Bytes::from(bytes)))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    Get {
        key: Bytes,
        read: Consistency,
    },
    /// `context: None` adds a sibling; with a context the value replaces exactly the
    /// siblings that context covered.
    Put {
        key: Bytes,
        value: Bytes,
        context: Option<Context>,
        write: Consistency,
        sloppy: bool,
    },
    Delete {
        key: Bytes,
        context: Option<Context>,
        write: Consistency,
        sloppy: bool,
    },
    Status,
    Ring {
        key: Option<Bytes>,
    },
    /// The answering node's own state of a key, without asking any other replica.
    Inspect {
        key: Bytes,
    },
    /// The answering node compacts its storage now, and says what that did.
    Compact,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// Every live sibling. Empty when the key is absent or deleted; the context is still
    /// worth passing to the next write (it covers the tombstones).
    Found {
        values: Vec<Bytes>,
        context: Context,
    },
    Written,
    Status(StatusReport),
    Ring(RingReport),
    Local(LocalState),
    Compacted(CompactReport),
    Error(ErrorReply),
}

/// What one node's compaction did. A node that keeps its data in memory reports zeros.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactReport {
    pub node: NodeId,
    /// Segment files deleted after their live records were copied.
    pub segments_removed: u64,
    pub segments_written: u64,
    pub records_copied: u64,
    /// Bytes of all the node's segment files before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// One node's own copy of a key, as `inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalState {
    pub node: NodeId,
    /// Every sibling with its dot (`actor.epoch:counter`); `value: None` is a tombstone.
    pub siblings: Vec<LocalSibling>,
    /// The state's causal context, as a get would return it.
    pub context: Context,
    /// Whether the node holds anything for the key at all, tombstones included.
    pub exists: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSibling {
    pub dot: String,
    pub value: Option<Bytes>,
}

/// An error as it travels; [`Error`] is what callers see.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorReply {
    Unavailable { required: u32, alive: u32 },
    Timeout { required: u32, acknowledged: u32 },
    InvalidConsistency { reason: String },
    Rejected { reason: String },
    Server { reason: String },
    Protocol { reason: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReport {
    /// The node that answered; up and down are as this node sees them.
    pub node: NodeId,
    pub cluster: String,
    pub replicas: u32,
    pub partitions: u32,
    pub members: Vec<MemberStatus>,
    /// The answering node's own hints, anti-entropy and tombstone GC.
    pub convergence: ConvergenceStatus,
}

/// How one node is doing at bringing replicas together.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConvergenceStatus {
    /// The node's wall clock when it answered, in ms since the Unix epoch, to read the
    /// times below against.
    pub now_ms: u64,
    /// Hints waiting for delivery, per target node (targets with none are left out).
    pub hints_pending: Vec<(NodeId, u64)>,
    /// Hints dropped since the node started: older than the hint window, over the
    /// storage limit, or not storable.
    pub hints_dropped: u64,
    /// Hints delivered and acknowledged since the node started.
    pub hints_delivered: u64,
    /// When the node last completed an anti-entropy exchange with each peer, in ms since
    /// the Unix epoch; peers it never completed one with are left out.
    pub anti_entropy: Vec<(NodeId, u64)>,
    /// Keys anti-entropy found different and repaired since the node started.
    pub anti_entropy_repaired: u64,
    /// Tombstones this node purged since it started.
    pub tombstones_purged: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node: NodeId,
    pub address: String,
    pub up: bool,
    pub partitions_owned: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RingReport {
    pub partitions: u32,
    pub replicas: u32,
    /// Set when the report is for one key: the key's hash, whose top bits pick the partition.
    pub key_hash: Option<u64>,
    pub entries: Vec<RingEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RingEntry {
    pub partition: u32,
    pub owner: NodeId,
    /// The first N members of the preference list.
    pub home: Vec<NodeId>,
    /// The rest of the preference list, in the order fallbacks are tried.
    pub fallbacks: Vec<NodeId>,
}
