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
use crate::versions::Versions;

impl<E: Env> Node<E> {
    pub async fn handle_peer(self: &Arc<Self>, request: PeerRequest) -> PeerResponse {
        match request {
            PeerRequest::Heartbeat => PeerResponse::Alive,
            PeerRequest::Read { key } => match self.store.get(&key).await {
                Ok(state) => PeerResponse::State(state),
                Err(error) => server_error(&error),
            },
            PeerRequest::Replicate { key, state } => {
                let merge = Box::new(move |mine: &mut Versions| {
                    mine.merge(&state);
                    Ok(())
                });
                match self.store.update(&key, merge).await {
                    Ok(_) => PeerResponse::Merged,
                    Err(error) => server_error(&error),
                }
            }
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
