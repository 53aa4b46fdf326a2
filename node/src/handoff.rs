//! Hinted handoff: offers each pending hint to its target once the target is up again.
//!
//! The task runs on its own timer, whatever the client traffic, and also right after a
//! restart (the hints come back from their journal). A hint is deleted only after the
//! target acknowledged merging it; merging is idempotent, so a delivery whose answer was
//! lost is simply made again. Expired hints are dropped before anything is sent: a hint
//! past the window may carry a value whose tombstone was already purged.

use std::sync::Arc;

use futures::stream::{self, StreamExt};

use crate::env::Env;
use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};

/// Hints offered to one target per round: a round stays short, and a target just back is
/// not flooded while it catches up on client traffic too.
const HANDOFF_BATCH: usize = 4096;
/// Deliveries in flight to one target at once.
const HANDOFF_CONCURRENCY: usize = 16;

pub(crate) async fn handoff_loop<E: Env>(node: Arc<Node<E>>) {
    loop {
        tokio::time::sleep(node.jittered(node.config.handoff_interval)).await;
        node.hand_off().await;
    }
}

impl<E: Env> Node<E> {
    /// One round: drop expired hints, deliver to every target that is up, then write the
    /// journal's removals (and rewrite it when mostly dead).
    pub(crate) async fn hand_off(self: &Arc<Self>) {
        self.hints.expire();
        let now = self.env.now();
        for (target, _) in self.hints.pending_by_target() {
            if target != *self.id() && !self.membership.is_up(&target, now) {
                continue;
            }
            let delivered = self.deliver_to(&target).await;
            if delivered > 0 {
                tracing::debug!(%target, delivered, "hints handed off");
            }
        }
        if let Err(error) = self.hints.maintain().await {
            tracing::warn!(%error, "cannot write the hint journal");
        }
    }

    async fn deliver_to(self: &Arc<Self>, target: &quorumkv_client::NodeId) -> usize {
        let batch = self.hints.for_target(target, HANDOFF_BATCH);
        let timeout = self.config.request_timeout;
        let results: Vec<_> = stream::iter(batch)
            .map(|(key, hint)| async move {
                let ok = if target == self.id() {
                    let merged = self.merge_stamped(&key, hint.state, hint.created_ms).await;
                    merged.is_ok()
                } else {
                    let request = PeerRequest::Replicate {
                        key: key.clone(),
                        state: hint.state,
                        stamp_ms: hint.created_ms,
                    };
                    let reply = self.peers.call(target, &request, timeout).await;
                    matches!(reply, Ok(PeerResponse::Merged))
                };
                (key, hint.id, ok)
            })
            .buffer_unordered(HANDOFF_CONCURRENCY)
            .collect()
            .await;
        let mut delivered = 0;
        for (key, id, ok) in results {
            if ok {
                self.hints.delivered(target, &key, id);
                delivered += 1;
            }
        }
        delivered
    }
}
