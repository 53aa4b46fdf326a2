//! The quorumkv server.
//!
//! Modules, in the order a request meets them:
//! - [`env`]: the seam to the world (sockets, clock, files, seed); production and the
//!   simulator each implement it.
//! - [`config`]: flags and TOML; static membership, N, Q, timeouts.
//! - [`server`]: accepts connections, checks the hello, reads frames, spawns handlers.
//! - [`coordinator`]: client requests: reads at R with read repair, writes at W,
//!   forwarding writes to a home replica.
//! - [`replica`]: peer requests: heartbeats, local reads, merges, forwarded writes.
//! - [`ring`]: partitions, ownership and each key's preference list.
//! - [`versions`]: dotted version vector sets, siblings and contexts.
//! - [`storage`]: the store behind a trait: [`log_store`] on disk (the default), or in
//!   memory for tests.
//! - [`tracked_store`]: the store as the node uses it, keeping [`hash_tree`]s and
//!   tombstone ages up to date with every change.
//! - [`hints`]: durable hints for home replicas that missed a write; [`handoff`]
//!   delivers them when the target is back.
//! - [`anti_entropy`]: periodic hash tree exchanges that repair whatever differs.
//! - [`tombstones`]: when a tombstone may be purged, and the purge.
//! - [`membership`]: heartbeats' failure detector.
//! - [`peer`]: node-to-node messages and the connection pool that carries them.
//! - [`identity`]: node id and epoch kept in the data dir.
//! - [`node`]: wires the above together and runs the background tasks.
//!
//! A client's put arriving at a node that is not a home replica: `server` →
//! `coordinator::write` → forwarded through `peer` to a home replica → its `replica`
//! handler → `coordinator::coordinate_write` → `storage` locally and `peer` to the other
//! homes → the answer travels back the same way.

pub mod anti_entropy;
pub mod config;
pub mod coordinator;
pub mod env;
pub mod handoff;
pub mod hash_tree;
pub mod hints;
pub mod identity;
pub mod log_store;
pub mod membership;
pub mod node;
pub mod peer;
pub mod replica;
pub mod ring;
pub mod server;
pub mod storage;
pub mod tombstones;
pub mod tracked_store;
pub mod versions;

pub use quorumkv_client::NodeId;

pub use config::{NodeArgs, NodeConfig};
pub use env::{Env, TokioEnv};
pub use node::{run, Node};
