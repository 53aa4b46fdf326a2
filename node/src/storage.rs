//! Where a node keeps its replicas of keys.
//!
//! The [`Storage`] trait is what the coordinator and the replica handlers use; it hides
//! whether state lives in memory or on disk. `update` is the one way to change a key: it
//! applies a change to the key's current state atomically (no other update of the same key
//! interleaves) and returns the new state, which is durable once the future resolves (as
//! durable as the sync policy makes it). The durable store is [`crate::log_store`].

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use futures::future::{self, BoxFuture};

use crate::ring::key_hash;
use crate::versions::Versions;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The change itself declined to apply; nothing was stored.
    #[error("{0}")]
    Refused(String),
    /// A stored record failed its checksum or could not be decoded; it is never served.
    #[error("corrupt record in log segment {segment} at offset {offset}: {reason}")]
    Corrupt {
        segment: u64,
        offset: u64,
        reason: String,
    },
}

/// What one compaction did, for the operator who asked for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionStats {
    pub segments_removed: u64,
    pub segments_written: u64,
    pub records_copied: u64,
    /// Bytes of all segment files before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// A change applied to one key's state under that key's lock. It may refuse (returning
/// the reason) only before it has modified the state.
pub type Change<'a> = Box<dyn FnOnce(&mut Versions) -> Result<(), String> + Send + 'a>;

pub trait Storage: Send + Sync + 'static {
    /// The key's state, or `None` when this node holds nothing for it.
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<Option<Versions>, StorageError>>;

    /// Applies `change` to the key's state (empty if absent) and returns the result; if
    /// the change refuses, nothing is stored and the error is `Refused`.
    fn update<'a>(
        &'a self,
        key: &'a [u8],
        change: Change<'a>,
    ) -> BoxFuture<'a, Result<Versions, StorageError>>;

    /// How many keys this node holds (tombstones included).
    fn key_count(&self) -> usize;

    /// Every key held, sorted (a key whose state was emptied by a purge included).
    fn keys(&self) -> Vec<Bytes>;

    /// Rewrites what is still live to give back the space of overwritten records.
    fn compact(&self) -> BoxFuture<'_, Result<CompactionStats, StorageError>>;

    /// Makes every acknowledged write durable, whatever the sync policy (on shutdown).
    fn flush(&self) -> BoxFuture<'_, Result<(), StorageError>>;
}

/// Lock stripes: enough that concurrent writers on two cores rarely meet on one lock.
const MEMORY_SHARDS: usize = 64;

/// Keeps everything in memory; lost when the process ends. Unit tests and
/// `--storage memory`.
pub struct MemoryStore {
    // BTreeMap so that any future scan (anti-entropy, status) sees keys in one order.
    shards: Vec<Mutex<BTreeMap<Bytes, Versions>>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        let shards = (0..MEMORY_SHARDS)
            .map(|_| Mutex::new(BTreeMap::new()))
            .collect();
        MemoryStore { shards }
    }
}

impl MemoryStore {
    fn shard(&self, key: &[u8]) -> &Mutex<BTreeMap<Bytes, Versions>> {
        &self.shards[(key_hash(key) % MEMORY_SHARDS as u64) as usize]
    }
}

impl Storage for MemoryStore {
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<Option<Versions>, StorageError>> {
        let state = self
            .shard(key)
            .lock()
            .expect("shard lock")
            .get(key)
            .cloned();
        Box::pin(future::ready(Ok(state)))
    }

    fn update<'a>(
        &'a self,
        key: &'a [u8],
        change: Change<'a>,
    ) -> BoxFuture<'a, Result<Versions, StorageError>> {
        let mut shard = self.shard(key).lock().expect("shard lock");
        let result = match shard.get_mut(key) {
            Some(state) => change(state).map(|()| state.clone()),
            None => {
                let mut state = Versions::new();
                let applied = change(&mut state);
                applied.map(|()| {
                    shard.insert(Bytes::copy_from_slice(key), state.clone());
                    state
                })
            }
        };
        drop(shard);
        Box::pin(future::ready(result.map_err(StorageError::Refused)))
    }

    fn key_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("shard lock").len())
            .sum()
    }

    fn keys(&self) -> Vec<Bytes> {
        let mut keys: Vec<Bytes> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .expect("shard lock")
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        keys.sort();
        keys
    }

    /// Nothing is ever dead in memory: an overwrite replaces the state in place.
    fn compact(&self) -> BoxFuture<'_, Result<CompactionStats, StorageError>> {
        Box::pin(future::ready(Ok(CompactionStats::default())))
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(future::ready(Ok(())))
    }
}
