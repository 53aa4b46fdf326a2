//! Node-to-node messages and the pool of connections that carries them.
//!
//! Peers speak in the same envelopes as clients, after a hello that names the sending
//! node. The pool keeps one multiplexed connection per member; a call that fails or times
//! out drops the connection, and the next call dials again (DESIGN: on a simulated network
//! a stream that lost a segment may hang forever, so a timed-out stream is never reused).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quorumkv_client::connection::Connection;
use quorumkv_client::protocol::{ErrorReply, Hello, Request, Response, Role, PROTOCOL_VERSION};
use quorumkv_client::{Error, NodeId};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::NodeConfig;
use crate::env::Env;
use crate::membership::Membership;
use crate::versions::Versions;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Liveness probe for the failure detector.
    Heartbeat,
    /// This replica's state of a key, without coordination.
    Read { key: Bytes },
    /// Merge this state into the replica's own (replication and repair). `stamp_ms` is
    /// when the sender took the state (wall clock); a replica refuses one older than
    /// the hint window.
    Replicate {
        key: Bytes,
        state: Versions,
        stamp_ms: u64,
    },
    /// A write sent by a node that is not a home replica, for a home replica to coordinate.
    Coordinate { request: Request },
    /// Keep `state` for `target` and hand it off later: this node is a fallback that
    /// takes a write on behalf of a home replica that missed it (sloppy quorum).
    Hint {
        target: NodeId,
        key: Bytes,
        state: Versions,
        stamp_ms: u64,
    },
    /// This node's hash tree roots of `partitions`, in the same order.
    TreeRoots { partitions: Vec<u32> },
    /// The bucket hashes of one partition.
    TreeBuckets { partition: u32 },
    /// The keys and state digests in some buckets of one partition: bit b of `buckets`
    /// asks for bucket b.
    TreeKeys { partition: u32, buckets: u64 },
    /// Whether this node would let the key's tombstones go: its state is exactly
    /// `state`, unchanged for the tombstone grace, and it holds no hint for the key.
    PurgeCheck { key: Bytes, state: Versions },
    /// Empty the key's state if it is still exactly `state` (a tombstone being purged).
    Purge { key: Bytes, state: Versions },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    Alive,
    State(Option<Versions>),
    Merged,
    Coordinated(Response),
    Hinted,
    Roots(Vec<u64>),
    Buckets(Vec<u64>),
    Keys(Vec<(Bytes, u64)>),
    Stable(bool),
    Purged(bool),
    Error(ErrorReply),
}

type PeerConnection = Connection<PeerRequest, PeerResponse>;

/// The shortest dial timeout, even with very fast heartbeats (tests use 100 ms).
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

struct PeerSlot {
    address: String,
    // A tokio mutex held while dialling, so that many callers waiting on one dead peer
    // cause one connect attempt, not one each.
    connection: Mutex<Option<Arc<PeerConnection>>>,
    /// After a failed dial, calls fail at once until then instead of queueing for the
    /// next attempt: a dead or hung peer must not hold a task per request.
    retry_at: std::sync::Mutex<Option<Instant>>,
}

pub struct PeerPool<E: Env> {
    env: E,
    /// Told of every answer (the peer is alive) and every refused dial (it is not), so
    /// the failure detector learns from all traffic, not only from heartbeats.
    membership: Arc<Membership>,
    hello: Hello,
    max_frame_bytes: usize,
    /// Dialling gives up after this; the peer is treated as unreachable.
    connect_timeout: Duration,
    peers: BTreeMap<NodeId, PeerSlot>,
}

impl<E: Env> PeerPool<E> {
    /// A pool for every member but this node; `ring` is this node's ring fingerprint.
    pub fn new(env: E, membership: Arc<Membership>, config: &NodeConfig, ring: u64) -> Self {
        let me = &config.node_id;
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            cluster: config.cluster.clone(),
            role: Role::Peer {
                node: me.clone(),
                ring,
            },
        };
        let peers = config
            .members
            .iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, address)| {
                let slot = PeerSlot {
                    address: address.clone(),
                    connection: Mutex::new(None),
                    retry_at: std::sync::Mutex::new(None),
                };
                (id.clone(), slot)
            })
            .collect();
        PeerPool {
            env,
            membership,
            hello,
            max_frame_bytes: config.max_frame_bytes,
            // Dialling a live peer on loopback takes microseconds; a peer that has not
            // answered within the heartbeat interval is as good as down for this attempt.
            connect_timeout: config.heartbeat_interval.max(MIN_CONNECT_TIMEOUT),
            peers,
        }
    }

    /// Sends one request to `peer` and waits at most `timeout` for the answer.
    pub async fn call(
        &self,
        peer: &NodeId,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, Error> {
        let connection = self.connect(peer).await?;
        let response = connection.call(request, timeout).await?;
        self.membership.heard_from(peer, self.env.now());
        match response {
            PeerResponse::Error(reply) => Err(reply.into()),
            response => Ok(response),
        }
    }

    /// The open connection to `peer`, dialling one if there is none.
    pub async fn connect(&self, peer: &NodeId) -> Result<Arc<PeerConnection>, Error> {
        let slot = self.peers.get(peer).ok_or_else(|| Error::Protocol {
            reason: format!("{peer} is not a member"),
        })?;
        let unreachable = || Error::ConnectionLost {
            node: peer.to_string(),
        };
        if self.should_wait(peer, slot) {
            return Err(unreachable());
        }
        let mut guard = slot.connection.lock().await;
        if let Some(connection) = guard.as_ref().filter(|c| !c.is_closed()) {
            return Ok(connection.clone());
        }
        if self.should_wait(peer, slot) {
            return Err(unreachable());
        }

        let dial = async {
            let stream = self.env.connect(&slot.address).await?;
            PeerConnection::open(stream, &slot.address, &self.hello, self.max_frame_bytes).await
        };
        let dialled = tokio::time::timeout(self.connect_timeout, dial).await;
        let (connection, node) = match dialled {
            Ok(Ok(dialled)) => dialled,
            Ok(Err(error)) => {
                self.dial_failed(peer, slot);
                return Err(error);
            }
            Err(_) => {
                self.dial_failed(peer, slot);
                return Err(unreachable());
            }
        };
        if node != *peer {
            return Err(Error::Protocol {
                reason: format!("{} answered as {node}, expected {peer}", slot.address),
            });
        }
        let connection = Arc::new(connection);
        *guard = Some(connection.clone());
        Ok(connection)
    }

    fn dial_failed(&self, peer: &NodeId, slot: &PeerSlot) {
        self.membership.lost(peer);
        let retry_at = self.env.now() + self.connect_timeout;
        *slot.retry_at.lock().expect("retry lock") = Some(retry_at);
    }
}

impl PeerSlot {
    fn backing_off(&self, now: Instant) -> bool {
        self.retry_at
            .lock()
            .expect("retry lock")
            .is_some_and(|at| now < at)
    }
}

impl<E: Env> PeerPool<E> {
    /// Skip dialling a peer that refused recently, unless it has since been heard from
    /// (it dialled us, so it is back).
    fn should_wait(&self, peer: &NodeId, slot: &PeerSlot) -> bool {
        let now = self.env.now();
        slot.backing_off(now) && !self.membership.is_up(peer, now)
    }
}
