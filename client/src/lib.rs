//! quorumkv's public vocabulary and its async client.
//!
//! Modules, in the order a request meets them:
//! - [`consistency`]: the per-request level (`one`, `quorum`, `all`, ...) and how it
//!   becomes a replica count for a given N.
//! - [`protocol`]: request and response types, the hello that opens a connection.
//! - [`codec`]: frames (4-byte big-endian length + MessagePack body) with a size limit.
//! - [`connection`]: one multiplexed connection; many requests in flight, matched by id.
//! - [`client`]: the library applications use; spreads requests over live nodes.
//! - [`error`]: the typed errors a caller can act on.
//!
//! The node crate reuses `codec` and `connection` for its peer links, so clients and peers
//! speak the same framing.

pub mod client;
pub mod codec;
pub mod connection;
pub mod consistency;
pub mod error;
pub mod protocol;

pub use client::{Client, ClientConfig, GetResult, WriteOptions};
pub use consistency::Consistency;
pub use error::Error;
pub use protocol::{Context, NodeId};
