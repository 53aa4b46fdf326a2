//! Anti-entropy: replicas compare hash trees and exchange only the keys that differ.
//!
//! Every `anti_entropy_interval` a node picks the next peer in turn and, for the
//! partitions both of them replicate, descends their trees ([`crate::hash_tree`]): roots
//! of every shared partition in one message, bucket hashes of the partitions that differ,
//! then the keys of the buckets that differ. For each differing key it reads the peer's
//! state, merges it into its own, and sends the merge back when the peer lacked anything,
//! so one exchange repairs both sides. Merging is commutative and idempotent, so an
//! exchange racing a write or another exchange can only repair too much, never lose.
//!
//! This is what makes replicas converge when hints were never written, were dropped, or
//! died with their holder. After each round the node also purges the tombstones that may
//! go ([`crate::tombstones`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use quorumkv_client::{Error, NodeId};
use rand::Rng;

use crate::env::Env;
use crate::hash_tree::BUCKETS;
use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};

/// Keys repaired per exchange at most; the rest wait for the next round, so one exchange
/// after a long outage does not monopolise the node.
const MAX_KEYS_PER_EXCHANGE: usize = 4096;
/// Buckets whose keys are asked for in one message.
const BUCKETS_PER_REQUEST: usize = 16;
/// Key repairs in flight at once during an exchange.
const REPAIR_CONCURRENCY: usize = 16;

pub(crate) async fn anti_entropy_loop<E: Env>(node: Arc<Node<E>>) {
    let peers: Vec<NodeId> = node
        .config
        .members
        .keys()
        .filter(|id| *id != node.id())
        .cloned()
        .collect();
    if peers.is_empty() {
        return;
    }
    // Start at a seeded random peer, so that nodes do not all pick the same one first.
    let mut next = node.random_index(peers.len());
    loop {
        tokio::time::sleep(node.jittered(node.config.anti_entropy_interval)).await;
        // The next peer in turn that is up: a dead peer must not cost a round.
        let now = node.env.now();
        let up = (0..peers.len())
            .map(|step| (next + step) % peers.len())
            .find(|&i| node.membership.is_up(&peers[i], now));
        if let Some(index) = up {
            next = index + 1;
            let peer = &peers[index];
            match node.exchange(peer).await {
                Ok(repaired) => node.exchanged(peer, repaired),
                Err(error) => tracing::debug!(%peer, %error, "anti-entropy exchange failed"),
            }
        }
        node.purge_tombstones().await;
    }
}

impl<E: Env> Node<E> {
    fn random_index(&self, len: usize) -> usize {
        self.rng_mut().gen_range(0..len)
    }

    fn exchanged(&self, peer: &NodeId, repaired: usize) {
        let now = self.env.wall_clock_millis();
        let mut exchanges = self.counters.exchanges.lock().expect("exchanges lock");
        exchanges.insert(peer.clone(), now);
        drop(exchanges);
        self.counters
            .repaired
            .fetch_add(repaired as u64, Ordering::Relaxed);
        if repaired > 0 {
            tracing::info!(%peer, repaired, "anti-entropy repaired keys");
        }
    }

    /// One exchange with `peer`; returns how many keys differed and were repaired.
    pub(crate) async fn exchange(self: &Arc<Self>, peer: &NodeId) -> Result<usize, Error> {
        let shared: Vec<u32> = (0..self.ring.partitions())
            .filter(|&p| self.ring.is_home(p, self.id()) && self.ring.is_home(p, peer))
            .collect();
        if shared.is_empty() {
            return Ok(0);
        }
        let request = PeerRequest::TreeRoots {
            partitions: shared.clone(),
        };
        let theirs = match self.ask(peer, &request).await? {
            PeerResponse::Roots(roots) if roots.len() == shared.len() => roots,
            other => return Err(unexpected(other)),
        };
        let differing: Vec<u32> = {
            let trees = self.store.trees();
            shared
                .iter()
                .zip(theirs)
                .filter(|(p, root)| trees.root(**p) != *root)
                .map(|(p, _)| *p)
                .collect()
        };

        let mut keys = Vec::new();
        for partition in differing {
            if keys.len() >= MAX_KEYS_PER_EXCHANGE {
                break;
            }
            keys.extend(self.differing_keys(peer, partition).await?);
        }
        keys.truncate(MAX_KEYS_PER_EXCHANGE);
        let repairs = stream::iter(keys)
            .map(|key| self.repair_key(peer, key))
            .buffer_unordered(REPAIR_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let repaired = repairs.iter().filter(|result| result.is_ok()).count();
        if let Some(Err(error)) = repairs.into_iter().find(Result::is_err) {
            return Err(error);
        }
        Ok(repaired)
    }

    /// The keys of one partition whose digests differ between this node and `peer`.
    async fn differing_keys(&self, peer: &NodeId, partition: u32) -> Result<Vec<Bytes>, Error> {
        let request = PeerRequest::TreeBuckets { partition };
        let theirs = match self.ask(peer, &request).await? {
            PeerResponse::Buckets(buckets) if buckets.len() == BUCKETS => buckets,
            other => return Err(unexpected(other)),
        };
        let mine = self.store.trees().buckets(partition);
        let buckets: Vec<usize> = (0..BUCKETS).filter(|&b| mine[b] != theirs[b]).collect();

        let mut keys = Vec::new();
        for chunk in buckets.chunks(BUCKETS_PER_REQUEST) {
            let mask = chunk.iter().fold(0u64, |mask, b| mask | 1 << b);
            let request = PeerRequest::TreeKeys {
                partition,
                buckets: mask,
            };
            let theirs: BTreeMap<Bytes, u64> = match self.ask(peer, &request).await? {
                PeerResponse::Keys(keys) => keys.into_iter().collect(),
                other => return Err(unexpected(other)),
            };
            let mine: BTreeMap<Bytes, u64> = self
                .store
                .trees()
                .keys_in(partition, mask)
                .into_iter()
                .collect();
            let differ = |key: &Bytes| mine.get(key) != theirs.get(key);
            let union: std::collections::BTreeSet<&Bytes> =
                mine.keys().chain(theirs.keys()).collect();
            keys.extend(union.into_iter().filter(|key| differ(key)).cloned());
        }
        Ok(keys)
    }

    /// Merges the peer's state of `key` into this node's, and this node's into the peer's.
    async fn repair_key(&self, peer: &NodeId, key: Bytes) -> Result<(), Error> {
        let stamp = self.env.wall_clock_millis();
        let request = PeerRequest::Read { key: key.clone() };
        let theirs = match self.ask(peer, &request).await? {
            PeerResponse::State(state) => state,
            other => return Err(unexpected(other)),
        };
        let mine = match &theirs {
            Some(theirs) => self.store.merge(&key, theirs.clone()).await,
            None => self.store.get(&key).await.map(Option::unwrap_or_default),
        };
        let mine = mine.map_err(|error| Error::Server {
            reason: error.to_string(),
        })?;
        if mine.is_empty() || theirs.as_ref() == Some(&mine) {
            return Ok(());
        }
        let request = PeerRequest::Replicate {
            key,
            state: mine,
            stamp_ms: stamp,
        };
        match self.ask(peer, &request).await? {
            PeerResponse::Merged => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn ask(&self, peer: &NodeId, request: &PeerRequest) -> Result<PeerResponse, Error> {
        self.peers
            .call(peer, request, self.config.request_timeout)
            .await
    }
}

fn unexpected(response: PeerResponse) -> Error {
    Error::Protocol {
        reason: format!("unexpected anti-entropy answer: {response:?}"),
    }
}
