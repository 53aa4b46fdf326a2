//! Deterministic simulation of quorumkv: the real node code on turmoil's network, clock
//! and disk, driven from one seed.
//!
//! - [`env`]: `SimEnv`, the node's `Env` inside turmoil.
//! - [`cluster`]: one run: build the cluster, workload under faults, heal, read back, check.
//! - [`workload`]: clients doing gets, read-modify-writes, blind puts and deletes.
//! - [`faults`]: fault schedules drawn from the seed.
//! - [`history`]: what each operation did and returned.
//! - [`checker`]: the guarantees, checked over the history.
//! - [`scenario`]: scripted runs for named tests of one mechanism at a time.

pub mod checker;
pub mod cluster;
pub mod env;
pub mod faults;
pub mod history;
pub mod scenario;
pub mod workload;

pub use cluster::{run, Report, SimConfig};
