//! The errors a caller can act on.
//!
//! Consistency failures carry numbers so that a caller can tell "not enough replicas are
//! up, nothing was written" from "replicas did not answer in time, the write may still
//! appear". Transport failures say which node failed. Text is only made at the edges.

use std::io;

use crate::protocol::ErrorReply;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Fewer replicas are known to be up than the level requires; nothing was written.
    #[error("unavailable: {required} replicas required but only {alive} alive")]
    Unavailable { required: usize, alive: usize },

    /// Replicas did not answer in time. For a write the outcome is indeterminate: it may
    /// still appear later.
    #[error("timeout: {required} replicas required but only {acknowledged} answered in time")]
    Timeout {
        required: usize,
        acknowledged: usize,
    },

    /// A consistency level that is unknown or can never be met (R or W above N).
    #[error("invalid consistency: {reason}")]
    InvalidConsistency { reason: String },

    /// The server refused the request as malformed (bad context, oversized frame, ...).
    #[error("request rejected: {reason}")]
    Rejected { reason: String },

    /// The server could not serve the request for a reason of its own (a failing disk).
    #[error("server error: {reason}")]
    Server { reason: String },

    /// The peer broke the protocol, or speaks another version or cluster.
    #[error("protocol error: {reason}")]
    Protocol { reason: String },

    /// A request was sent and the connection failed before the answer came. For a write
    /// the outcome is indeterminate.
    #[error("connection to {node} lost before an answer: outcome unknown")]
    ConnectionLost { node: String },

    /// The request could not be sent to any of the configured nodes.
    #[error("no node reachable (tried {tried}): {last}")]
    NoNodeReachable { tried: usize, last: String },

    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl Error {
    /// True for the errors that mean "the consistency level was not met".
    pub fn is_consistency_failure(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Timeout { .. })
    }

    /// A short, stable name for counting errors by kind (import and bench summaries).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Unavailable { .. } => "unavailable",
            Error::Timeout { .. } => "timeout",
            Error::InvalidConsistency { .. } => "invalid-consistency",
            Error::Rejected { .. } => "rejected",
            Error::Server { .. } => "server",
            Error::Protocol { .. } => "protocol",
            Error::ConnectionLost { .. } => "connection-lost",
            Error::NoNodeReachable { .. } => "no-node-reachable",
            Error::Io(_) => "io",
        }
    }
}

impl From<ErrorReply> for Error {
    fn from(reply: ErrorReply) -> Self {
        match reply {
            ErrorReply::Unavailable { required, alive } => Error::Unavailable {
                required: required as usize,
                alive: alive as usize,
            },
            ErrorReply::Timeout {
                required,
                acknowledged,
            } => Error::Timeout {
                required: required as usize,
                acknowledged: acknowledged as usize,
            },
            ErrorReply::InvalidConsistency { reason } => Error::InvalidConsistency { reason },
            ErrorReply::Rejected { reason } => Error::Rejected { reason },
            ErrorReply::Server { reason } => Error::Server { reason },
            ErrorReply::Protocol { reason } => Error::Protocol { reason },
        }
    }
}

impl From<&Error> for ErrorReply {
    /// How a node reports an error to whoever asked; transport errors become `Server`.
    fn from(error: &Error) -> Self {
        match error {
            Error::Unavailable { required, alive } => ErrorReply::Unavailable {
                required: *required as u32,
                alive: *alive as u32,
            },
            Error::Timeout {
                required,
                acknowledged,
            } => ErrorReply::Timeout {
                required: *required as u32,
                acknowledged: *acknowledged as u32,
            },
            Error::InvalidConsistency { reason } => ErrorReply::InvalidConsistency {
                reason: reason.clone(),
            },
            Error::Rejected { reason } => ErrorReply::Rejected {
                reason: reason.clone(),
            },
            Error::Protocol { reason } => ErrorReply::Protocol {
                reason: reason.clone(),
            },
            other => ErrorReply::Server {
                reason: other.to_string(),
            },
        }
    }
}
