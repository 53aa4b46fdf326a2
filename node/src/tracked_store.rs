//! The store as the node uses it: every change also updates the partition's hash tree
//! (for anti-entropy) and the ages of tombstones (for their purge).
//!
//! The tree must say exactly what the store holds, or anti-entropy would chase phantom
//! differences or miss real ones. So a key's change and its tree update happen under one
//! lock stripe of this layer: two updates of a key cannot reach the tree in an order
//! other than the store's. Reads go straight to the store.
//!
//! A purged key keeps an empty state in the store (the log store has no removal record;
//! an empty state merges like an absent one) and is absent from the tree and from every
//! answer this layer gives.
//!
//! Known shortcomings (TODO): the trees hold every key and a digest in memory, next to
//! the store's own index (roughly doubling per-key memory), and are rebuilt on start by
//! reading every state; persisting them, or the digest in the store's index, would make
//! start-up read only the index. A purged key's empty record and index entry stay until a
//! removal record exists that compaction can drop safely.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use quorumkv_client::NodeId;
use tokio::time::Instant;

use crate::env::Env;
use crate::hash_tree::HashTrees;
use crate::ring::{key_hash, Ring};
use crate::storage::{Change, CompactionStats, Storage, StorageError};
use crate::versions::Versions;

/// Lock stripes for ordering tree updates; as in the log store, far more than the updates
/// a node has in flight, so two keys rarely share one.
const STRIPES: usize = 1024;

pub struct TrackedStore<E: Env> {
    env: E,
    inner: Box<dyn Storage>,
    ring: Ring,
    me: NodeId,
    stripes: Box<[tokio::sync::Mutex<()>]>,
    trees: Mutex<HashTrees>,
    /// Keys whose state is tombstones only, with the time of their last change. In
    /// memory only: a restart starts every grace again, which only delays a purge.
    tombstones: Mutex<BTreeMap<Bytes, Instant>>,
}

impl<E: Env> TrackedStore<E> {
    /// Wraps `inner`, building the trees from every state it holds.
    pub async fn open(
        env: E,
        inner: Box<dyn Storage>,
        ring: Ring,
        me: NodeId,
    ) -> Result<Self, StorageError> {
        let store = TrackedStore {
            env,
            inner,
            ring,
            me,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            trees: Mutex::new(HashTrees::default()),
            tombstones: Mutex::new(BTreeMap::new()),
        };
        for key in store.inner.keys() {
            // A record that cannot be read stays out of the tree; anti-entropy then sees
            // the key as missing here and brings a good copy from a peer.
            if let Ok(Some(state)) = store.inner.get(&key).await {
                store.track(&key, &state);
            }
        }
        Ok(store)
    }

    /// The key's state, or `None` when nothing (or only a purged, empty state) is held.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Versions>, StorageError> {
        let state = self.inner.get(key).await?;
        Ok(state.filter(|state| !state.is_empty()))
    }

    /// Applies `change` as [`Storage::update`] does, and tracks the result.
    pub async fn update(&self, key: &[u8], change: Change<'_>) -> Result<Versions, StorageError> {
        let _stripe = self.stripe(key).lock().await;
        let state = self.inner.update(key, change).await?;
        self.track(key, &state);
        Ok(state)
    }

    /// Merges `other` into the key's state.
    pub async fn merge(&self, key: &[u8], other: Versions) -> Result<Versions, StorageError> {
        // An empty state teaches nothing; storing it would add a record for a key that
        // may never have existed.
        if other.is_empty() {
            return Ok(self.get(key).await?.unwrap_or_default());
        }
        let merge = Box::new(move |mine: &mut Versions| {
            mine.merge(&other);
            Ok(())
        });
        self.update(key, merge).await
    }

    /// Empties the key's state if it is still exactly `expected`; true when it was.
    pub async fn purge_if(&self, key: &[u8], expected: &Versions) -> Result<bool, StorageError> {
        let expected = expected.clone();
        let purge = Box::new(move |mine: &mut Versions| {
            if mine.is_empty() || *mine != expected {
                return Err("changed since it was read".to_owned());
            }
            *mine = Versions::new();
            Ok(())
        });
        match self.update(key, purge).await {
            Ok(_) => Ok(true),
            Err(StorageError::Refused(_)) => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn stripe(&self, key: &[u8]) -> &tokio::sync::Mutex<()> {
        &self.stripes[(key_hash(key) % STRIPES as u64) as usize]
    }

    fn track(&self, key: &[u8], state: &Versions) {
        let partition = self.ring.partition_of(key);
        let digest = (!state.is_empty()).then(|| state.digest());
        let previous = self
            .trees
            .lock()
            .expect("trees lock")
            .set(partition, key, digest);
        let unchanged = previous == digest;

        // A merge that changed nothing (a repeated replication or repair) must not start
        // the grace again, or a key under steady repair traffic would never be purged.
        let mut tombstones = self.tombstones.lock().expect("tombstones lock");
        if !state.is_empty() && state.is_deleted() {
            if !(unchanged && tombstones.contains_key(key)) {
                tombstones.insert(Bytes::copy_from_slice(key), self.env.now());
            }
        } else {
            tombstones.remove(key);
        }
    }

    /// The hash trees, to read under their lock.
    pub fn trees(&self) -> std::sync::MutexGuard<'_, HashTrees> {
        self.trees.lock().expect("trees lock")
    }

    /// Up to `limit` keys whose first home replica is this node, with tombstones
    /// unchanged since before `cutoff`, in key order.
    pub fn purgeable(&self, cutoff: Instant, limit: usize) -> Vec<Bytes> {
        let tombstones = self.tombstones.lock().expect("tombstones lock");
        let first_home = |key: &[u8]| {
            let partition = self.ring.partition_of(key);
            self.ring.home_replicas(partition).first() == Some(&self.me)
        };
        tombstones
            .iter()
            .filter(|(key, changed)| **changed <= cutoff && first_home(key))
            .map(|(key, _)| key.clone())
            .take(limit)
            .collect()
    }

    /// Whether the key's state is tombstones only and unchanged since before `cutoff`.
    pub fn tombstone_stable(&self, key: &[u8], cutoff: Instant) -> bool {
        let tombstones = self.tombstones.lock().expect("tombstones lock");
        tombstones
            .get(key)
            .is_some_and(|changed| *changed <= cutoff)
    }

    pub fn key_count(&self) -> usize {
        self.inner.key_count()
    }

    pub async fn compact(&self) -> Result<CompactionStats, StorageError> {
        self.inner.compact().await
    }

    pub async fn flush(&self) -> Result<(), StorageError> {
        self.inner.flush().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::env::TokioEnv;
    use crate::storage::MemoryStore;
    use crate::versions::{Actor, VersionVector};

    async fn store() -> anyhow::Result<TrackedStore<TokioEnv>> {
        let me = NodeId::from("n1");
        let ring = Ring::new(std::slice::from_ref(&me), 16, 1)?;
        Ok(TrackedStore::open(TokioEnv, Box::new(MemoryStore::default()), ring, me).await?)
    }

    fn deleted() -> Versions {
        let mut state = Versions::new();
        let actor = Actor::new(NodeId::from("n1"), 1);
        let dot = state.write(&VersionVector::new(), Some(Bytes::from("v")), &actor);
        let mut context = VersionVector::new();
        context.join(&VersionVector::from(vec![(actor.clone(), dot.counter)]));
        state.write(&context, None, &actor);
        state
    }

    #[tokio::test(start_paused = true)]
    async fn a_merge_that_changes_nothing_does_not_restart_the_tombstone_grace(
    ) -> anyhow::Result<()> {
        // Goal: repeated repairs of the same tombstone leave its age alone, while a real
        // change starts it again; otherwise a key under repair traffic is never purged.
        let store = store().await?;
        store.merge(b"k", deleted()).await?;
        let written = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_secs(10)).await;
        store.merge(b"k", deleted()).await?;
        assert!(
            store.tombstone_stable(b"k", written),
            "a no-op merge restarted the grace"
        );
        assert_eq!(store.purgeable(written, 10), vec![Bytes::from_static(b"k")]);

        let mut changed = deleted();
        let other = Actor::new(NodeId::from("n2"), 1);
        changed.write(&changed.context(), None, &other);
        store.merge(b"k", changed).await?;
        assert!(
            !store.tombstone_stable(b"k", written),
            "a real change kept the old age"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_purge_empties_only_the_state_it_was_asked_for_and_creates_nothing(
    ) -> anyhow::Result<()> {
        // Goal: the conditional purge loses no write that came in between, leaves the
        // tree as if the key never existed, and a purge or empty merge of an absent key
        // stores nothing.
        let store = store().await?;
        let partition = 0;
        assert!(!store.purge_if(b"absent", &Versions::new()).await?);
        store.merge(b"absent", Versions::new()).await?;
        assert_eq!(store.key_count(), 0);

        store.merge(b"k", deleted()).await?;
        let partition_of_k = store.ring.partition_of(b"k");
        assert_ne!(store.trees().root(partition_of_k), 0);
        assert!(
            !store.purge_if(b"k", &Versions::new()).await?,
            "purged another state"
        );
        assert!(store.purge_if(b"k", &deleted()).await?);
        assert_eq!(store.get(b"k").await?, None);
        assert_eq!(store.trees().root(partition_of_k), 0);
        assert_eq!(store.trees().root(partition), 0);
        Ok(())
    }
}
