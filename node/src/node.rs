//! A running node: its configuration, ring, store, peers and failure detector, and the
//! tasks that keep it going (the accept loop and one heartbeat loop per peer).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorumkv_client::protocol::{
    ConvergenceStatus, MemberStatus, RingEntry, RingReport, StatusReport, PROTOCOL_VERSION,
};
use quorumkv_client::NodeId;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::Instrument;

use crate::config::{NodeConfig, StorageKind};
use crate::env::Env;
use crate::hints::HintStore;
use crate::identity::take_new_epoch;
use crate::log_store::{LogOptions, LogStore, LOG_DIR};
use crate::membership::Membership;
use crate::peer::{PeerPool, PeerRequest, PeerResponse};
use crate::ring::Ring;
use crate::server;
use crate::storage::{MemoryStore, Storage};
use crate::tracked_store::TrackedStore;
use crate::versions::Actor;

pub struct Node<E: Env> {
    pub(crate) env: E,
    pub(crate) config: NodeConfig,
    pub(crate) ring: Ring,
    /// The actor this node's dots carry for as long as the process lives.
    pub(crate) actor: Actor,
    /// The highest dot counter this node has issued in this epoch, for any key: every new
    /// dot goes above it (see `Versions::write_above`).
    pub(crate) dot_floor: Arc<AtomicU64>,
    pub(crate) store: TrackedStore<E>,
    pub(crate) hints: HintStore<E>,
    pub(crate) peers: PeerPool<E>,
    pub(crate) membership: Arc<Membership>,
    pub(crate) counters: Counters,
    /// Jitter for periodic tasks, from the env's seed so simulated runs repeat.
    rng: Mutex<ChaCha8Rng>,
}

/// What the background tasks have done since the node started, for `status`.
#[derive(Default)]
pub(crate) struct Counters {
    /// Wall clock (ms) of the last completed anti-entropy exchange with each peer.
    pub exchanges: Mutex<BTreeMap<NodeId, u64>>,
    pub repaired: AtomicU64,
    pub purged: AtomicU64,
}

impl<E: Env> Node<E> {
    /// Prepares a node: takes a new epoch in the data dir and builds the ring.
    pub async fn start(env: E, config: NodeConfig) -> anyhow::Result<Arc<Self>> {
        let mut rng = ChaCha8Rng::seed_from_u64(env.rng_seed());
        let members: Vec<NodeId> = config.members.keys().cloned().collect();
        if config.replicas > members.len() {
            tracing::warn!(
                replicas = config.replicas,
                members = members.len(),
                "fewer members than replicas: each key is stored on every member"
            );
        }
        let ring = Ring::new(&members, config.partitions, config.effective_replicas())?;
        let actor = take_new_epoch(&env, &config.data_dir, &config.node_id, &mut rng).await?;
        let store = open_store(&env, &config).await?;
        let store =
            TrackedStore::open(env.clone(), store, ring.clone(), config.node_id.clone()).await?;
        let hints = HintStore::open(env.clone(), &config).await?;

        let membership = Arc::new(Membership::new(
            config.node_id.clone(),
            config.failure_timeout,
        ));
        let peers = PeerPool::new(env.clone(), membership.clone(), &config, ring.fingerprint());
        tracing::info!(
            node = %config.node_id,
            epoch = actor.epoch,
            members = members.len(),
            replicas = config.replicas,
            partitions = config.partitions,
            protocol = PROTOCOL_VERSION,
            "node starting"
        );
        Ok(Arc::new(Node {
            env,
            config,
            ring,
            actor,
            dot_floor: Arc::new(AtomicU64::new(0)),
            store,
            hints,
            peers,
            membership,
            counters: Counters::default(),
            rng: Mutex::new(rng),
        }))
    }

    pub fn id(&self) -> &NodeId {
        &self.config.node_id
    }

    /// Listens on the configured address and serves until `shutdown` resolves.
    pub async fn serve(self: Arc<Self>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let listener = self.env.bind(&self.config.listen).await?;
        tracing::info!(node = %self.id(), listen = %self.config.listen, "listening");

        let mut tasks = Vec::new();
        for peer in self.config.members.keys().filter(|id| *id != self.id()) {
            let task = heartbeat_loop(self.clone(), peer.clone());
            tasks.push(tokio::spawn(task.in_current_span()));
        }
        let handoff = crate::handoff::handoff_loop(self.clone());
        tasks.push(tokio::spawn(handoff.in_current_span()));
        if !self.config.anti_entropy_interval.is_zero() {
            let exchanges = crate::anti_entropy::anti_entropy_loop(self.clone());
            tasks.push(tokio::spawn(exchanges.in_current_span()));
        }
        tokio::select! {
            () = server::accept_loop(self.clone(), listener) => {}
            () = shutdown => tracing::info!(node = %self.id(), "shutting down"),
        }
        for task in tasks {
            task.abort();
        }
        // Under `sync = interval` the last few milliseconds of writes are not on disk yet.
        if let Err(error) = self.store.flush().await {
            tracing::error!(node = %self.id(), %error, "cannot sync the store on shutdown");
        }
        Ok(())
    }

    /// A random fraction of `base` added to it, so that peers' timers drift apart.
    pub(crate) fn jittered(&self, base: Duration) -> Duration {
        let extra = self.rng_mut().gen_range(0.0..0.25);
        base.mul_f64(1.0 + extra)
    }

    pub(crate) fn rng_mut(&self) -> std::sync::MutexGuard<'_, ChaCha8Rng> {
        self.rng.lock().expect("rng lock")
    }
}

/// The configured store, recovered from the data dir before the node serves anything.
async fn open_store<E: Env>(env: &E, config: &NodeConfig) -> anyhow::Result<Box<dyn Storage>> {
    if config.storage == StorageKind::Memory {
        tracing::info!(node = %config.node_id, "storage in memory: a restart comes back empty");
        return Ok(Box::new(MemoryStore::default()));
    }
    let dir = config.data_dir.join(LOG_DIR);
    let options = LogOptions::from_config(config);
    let (store, recovery) = LogStore::open(env.clone(), &dir, options).await?;
    tracing::info!(
        node = %config.node_id,
        dir = %dir.display(),
        keys = recovery.keys,
        segments = recovery.segments,
        records = recovery.records,
        corrupt_records = recovery.corrupt_records,
        torn_bytes = recovery.torn_bytes,
        elapsed_ms = recovery.elapsed.as_millis() as u64,
        sync = ?config.sync,
        "log store recovered"
    );
    Ok(Box::new(store))
}

/// Probes one peer forever; any answer marks it alive.
async fn heartbeat_loop<E: Env>(node: Arc<Node<E>>, peer: NodeId) {
    loop {
        let probe = node.peers.call(
            &peer,
            &PeerRequest::Heartbeat,
            node.config.heartbeat_interval,
        );
        match probe.await {
            Ok(PeerResponse::Alive) => {}
            Ok(other) => tracing::warn!(%peer, ?other, "unexpected heartbeat answer"),
            Err(error) => tracing::trace!(%peer, %error, "heartbeat failed"),
        }
        tokio::time::sleep(node.jittered(node.config.heartbeat_interval)).await;
    }
}

/// Starts a node on `env` and serves until `shutdown`; the whole life of a process.
pub async fn run<E: Env>(
    env: E,
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let span = tracing::info_span!("node", id = %config.node_id);
    async move {
        let node = Node::start(env, config).await?;
        node.serve(shutdown).await
    }
    .instrument(span)
    .await
}

impl<E: Env> Node<E> {
    /// Members as this node sees them: up or down, and how many partitions each owns.
    pub fn status_report(&self) -> StatusReport {
        let now = self.env.now();
        let members = self
            .config
            .members
            .iter()
            .map(|(id, address)| MemberStatus {
                node: id.clone(),
                address: address.clone(),
                up: self.membership.is_up(id, now),
                partitions_owned: self.ring.owned_partitions(id).len() as u32,
            })
            .collect();
        StatusReport {
            node: self.id().clone(),
            cluster: self.config.cluster.clone(),
            replicas: self.ring.replicas() as u32,
            partitions: self.ring.partitions(),
            members,
            convergence: self.convergence_status(),
        }
    }

    fn convergence_status(&self) -> ConvergenceStatus {
        let exchanges = self.counters.exchanges.lock().expect("exchanges lock");
        ConvergenceStatus {
            now_ms: self.env.wall_clock_millis(),
            hints_pending: self.hints.pending_by_target(),
            hints_dropped: self.hints.dropped(),
            hints_delivered: self.hints.delivered_count(),
            anti_entropy: exchanges.iter().map(|(p, at)| (p.clone(), *at)).collect(),
            anti_entropy_repaired: self.counters.repaired.load(Ordering::Relaxed),
            tombstones_purged: self.counters.purged.load(Ordering::Relaxed),
        }
    }

    /// The partition table, or one key's partition and preference list.
    pub fn ring_report(&self, key: Option<&[u8]>) -> RingReport {
        let partitions: Vec<u32> = match key {
            Some(key) => vec![self.ring.partition_of(key)],
            None => (0..self.ring.partitions()).collect(),
        };
        let entries = partitions
            .into_iter()
            .map(|partition| RingEntry {
                partition,
                owner: self.ring.owner(partition).clone(),
                home: self.ring.home_replicas(partition).to_vec(),
                fallbacks: self.ring.fallbacks(partition).to_vec(),
            })
            .collect();
        RingReport {
            partitions: self.ring.partitions(),
            replicas: self.ring.replicas() as u32,
            key_hash: key.map(crate::ring::key_hash),
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use quorumkv_client::protocol::{Request, Response};
    use quorumkv_client::Consistency;

    use super::*;
    use crate::env::TokioEnv;

    fn config(data_dir: &std::path::Path) -> NodeConfig {
        let members = [(NodeId::from("n1"), "127.0.0.1:0".to_owned())].into();
        NodeConfig::for_member("n1", &members, data_dir)
    }

    fn put(key: &str, value: &str) -> Request {
        Request::Put {
            key: Bytes::from(key.to_owned()),
            value: Bytes::from(value.to_owned()),
            context: None,
            write: Consistency::One,
            sloppy: false,
        }
    }

    fn get(key: &str) -> Request {
        Request::Get {
            key: Bytes::from(key.to_owned()),
            read: Consistency::One,
        }
    }

    #[tokio::test]
    async fn a_restarted_node_serves_its_data_again_and_compacts_on_request() -> anyhow::Result<()>
    {
        // Goal: by default a node keeps its replicas in the log under its data dir, finds
        // them again after a restart, and compacts when a client asks.
        let dir = tempfile::tempdir()?;
        let node = Node::start(TokioEnv, config(dir.path())).await?;
        for round in 0..3 {
            for key in ["a", "b", "c"] {
                let written = node.handle_client(put(key, &format!("{key}{round}"))).await;
                assert!(matches!(written, Response::Written), "{written:?}");
            }
        }
        drop(node);

        let node = Node::start(TokioEnv, config(dir.path())).await?;
        let Response::Found { values, .. } = node.handle_client(get("b")).await else {
            anyhow::bail!("b was not found after the restart");
        };
        // Three blind puts through one coordinator: three siblings, all kept.
        assert_eq!(values.len(), 3);
        let Response::Compacted(report) = node.handle_client(Request::Compact).await else {
            anyhow::bail!("compaction was not reported");
        };
        assert_eq!(report.node, NodeId::from("n1"));
        assert!(report.segments_removed > 0, "{report:?}");
        Ok(())
    }
}
