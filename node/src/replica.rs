//! What a node does when a peer asks: answer heartbeats, show its own state of a key,
//! merge a state it is sent, and coordinate a write forwarded to it.

use std::sync::Arc;

use bytes::Bytes;
use quorumkv_client::consistency::Access;
use quorumkv_client::protocol::{ErrorReply, Response};
use quorumkv_client::{Error, NodeId};

use crate::coordinator::Write;
use crate::env::Env;
use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};
use crate::versions::Versions;

impl<E: Env> Node<E> {
    pub async fn handle_peer(self: &Arc<Self>, request: PeerRequest) -> PeerResponse {
        match request {
            PeerRequest::Heartbeat => PeerResponse::Alive,
            PeerRequest::Read { key } => match self.store.get(&key).await {
                Ok(state) => PeerResponse::State(state),
                Err(error) => server_error(&error),
            },
            PeerRequest::Replicate {
                key,
                state,
                stamp_ms,
            } => match self.merge_stamped(&key, state, stamp_ms).await {
                Ok(()) => PeerResponse::Merged,
                Err(error) => PeerResponse::Error(ErrorReply::from(&error)),
            },
            PeerRequest::Coordinate { request } => {
                let response = match Write::from_request(request) {
                    Some(write) => self.coordinate_forwarded(write).await,
                    None => Err(Error::Rejected {
                        reason: "only writes are forwarded".into(),
                    }),
                };
                let response = response.map_or_else(
                    |error| Response::Error(ErrorReply::from(&error)),
                    |()| Response::Written,
                );
                PeerResponse::Coordinated(response)
            }
            PeerRequest::Hint {
                target,
                key,
                state,
                stamp_ms,
            } => match self.take_hint(&target, &key, &state, stamp_ms).await {
                Ok(()) => PeerResponse::Hinted,
                Err(error) => PeerResponse::Error(ErrorReply::from(&error)),
            },
            tree @ (PeerRequest::TreeRoots { .. }
            | PeerRequest::TreeBuckets { .. }
            | PeerRequest::TreeKeys { .. }) => self.answer_tree(tree),
            PeerRequest::PurgeCheck { key, state } => match self.may_purge(&key, &state).await {
                Ok(stable) => PeerResponse::Stable(stable),
                Err(error) => PeerResponse::Error(ErrorReply::from(&error)),
            },
            PeerRequest::Purge { key, state } => match self.store.purge_if(&key, &state).await {
                Ok(purged) => PeerResponse::Purged(purged),
                Err(error) => server_error(&error),
            },
        }
    }

    /// Merges a state another node took at `stamp` (wall-clock ms), unless it is older
    /// than the hint window. A copy that old may carry a value whose tombstone has been
    /// purged since (a replication held up in the network, a read repair that waited);
    /// merging it would bring the value back. Anti-entropy repairs whatever it held that
    /// was still current.
    pub(crate) async fn merge_stamped(
        &self,
        key: &[u8],
        state: Versions,
        stamp: u64,
    ) -> Result<(), Error> {
        self.check_fresh(stamp)?;
        self.store
            .merge(key, state)
            .await
            .map_err(|error| Error::Server {
                reason: error.to_string(),
            })?;
        Ok(())
    }

    /// Keeps a hint as a fallback for a home replica that missed a write.
    async fn take_hint(
        &self,
        target: &NodeId,
        key: &Bytes,
        state: &Versions,
        stamp: u64,
    ) -> Result<(), Error> {
        self.check_fresh(stamp)?;
        let partition = self.ring.partition_of(key);
        if target == self.id() || !self.ring.is_home(partition, target) {
            return Err(Error::Rejected {
                reason: format!("{target} is not another home replica of this key"),
            });
        }
        self.hints
            .add(target, key, state, stamp)
            .await
            .map_err(|error| Error::Server {
                reason: error.to_string(),
            })
    }

    fn check_fresh(&self, stamp: u64) -> Result<(), Error> {
        let window = self.config.hint_window.as_millis() as u64;
        if stamp.saturating_add(window) < self.env.wall_clock_millis() {
            return Err(Error::Rejected {
                reason: "the state is older than the hint window".into(),
            });
        }
        Ok(())
    }

    /// Anti-entropy's questions about this node's hash trees. Partitions and buckets out
    /// of range read as empty rather than fail: they hold nothing here.
    fn answer_tree(&self, request: PeerRequest) -> PeerResponse {
        // A request can ask for at most every partition once: more is garbage, and would
        // hold the trees' lock (which every write takes) for as long as a sender likes.
        if let PeerRequest::TreeRoots { partitions } = &request {
            if partitions.len() > self.ring.partitions() as usize {
                return PeerResponse::Error(ErrorReply::Rejected {
                    reason: format!("{} partitions asked, the ring has fewer", partitions.len()),
                });
            }
        }
        let trees = self.store.trees();
        match request {
            PeerRequest::TreeRoots { partitions } => {
                PeerResponse::Roots(partitions.iter().map(|p| trees.root(*p)).collect())
            }
            PeerRequest::TreeBuckets { partition } => {
                PeerResponse::Buckets(trees.buckets(partition))
            }
            PeerRequest::TreeKeys { partition, buckets } => {
                PeerResponse::Keys(trees.keys_in(partition, buckets))
            }
            _ => unreachable!("only tree requests are passed here"),
        }
    }

    /// A forwarded write is coordinated here, never forwarded again: membership is
    /// static, so the sender and this node agree on the home replicas, and a second hop
    /// could only loop.
    async fn coordinate_forwarded(self: &Arc<Self>, write: Write) -> Result<(), Error> {
        let partition = self.ring.partition_of(&write.key);
        if !self.ring.is_home(partition, self.id()) {
            return Err(Error::Rejected {
                reason: format!("{} is not a home replica of this key", self.id()),
            });
        }
        let homes = self.ring.home_replicas(partition).len();
        let required = write.level.required(homes, Access::Write)?;
        self.coordinate_write(write, required).await
    }
}

fn server_error(error: &dyn std::error::Error) -> PeerResponse {
    PeerResponse::Error(ErrorReply::Server {
        reason: error.to_string(),
    })
}
