//! What a node does when a peer asks: answer heartbeats, show its own state of a key,
//! merge a state it is sent, and coordinate a write forwarded to it.

use std::sync::Arc;

use quorumkv_client::consistency::Access;
use quorumkv_client::protocol::{ErrorReply, Response};
use quorumkv_client::Error;

use crate::coordinator::Write;
use crate::env::Env;
use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};

impl<E: Env> Node<E> {
    pub async fn handle_peer(self: &Arc<Self>, request: PeerRequest) -> PeerResponse {
        match request {
            PeerRequest::Heartbeat => PeerResponse::Alive,
            PeerRequest::Read { key } => match self.store.get(&key).await {
                Ok(state) => PeerResponse::State(state),
                Err(error) => server_error(&error),
            },
            PeerRequest::Replicate { key, state } => match self.store.merge(&key, state).await {
                Ok(_) => PeerResponse::Merged,
                Err(error) => server_error(&error),
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
            PeerRequest::Hint { target, key, state } => {
                match self.hints.add(&target, &key, &state).await {
                    Ok(()) => PeerResponse::Hinted,
                    Err(error) => server_error(&error),
                }
            }
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

    /// Anti-entropy's questions about this node's hash trees. Partitions and buckets out
    /// of range read as empty rather than fail: they hold nothing here.
    fn answer_tree(&self, request: PeerRequest) -> PeerResponse {
        let trees = self.store.trees();
        match request {
            PeerRequest::TreeRoots { partitions } => {
                PeerResponse::Roots(partitions.iter().map(|p| trees.root(*p)).collect())
            }
            PeerRequest::TreeBuckets { partition } => {
                PeerResponse::Buckets(trees.buckets(partition))
            }
            PeerRequest::TreeKeys { partition, buckets } => {
                let buckets: Vec<usize> = buckets.iter().map(|b| *b as usize).collect();
                PeerResponse::Keys(trees.keys_in(partition, &buckets))
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
