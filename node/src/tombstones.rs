//! Purging tombstones, and the rule that makes it safe.
//!
//! A delete leaves a tombstone so that replicas which missed the delete, hints and
//! anti-entropy cannot bring the deleted value back. Purging it is safe only once no copy
//! of anything it superseded can still reach a replica. The rule, checked by the key's
//! first home replica:
//!
//! 1. its own state of the key is tombstones only;
//! 2. every home replica, itself included, answers that it holds exactly that state,
//!    unchanged for the tombstone grace (by its own clock), and holds no hint for the key.
//!
//! Then each home empties the key only if its state is still exactly that one (a write
//! that came in between wins), the others first and the first home last.
//!
//! Why that is enough. A superseded value could come back from a home replica (2 rules
//! that out: each holds the tombstone state, not the value), or from a copy of an older
//! state that is still on its way: a replication or read repair held up in the network, a
//! hint, a fallback's hint. Every such copy carries a stamp, the wall-clock time its state
//! was taken from a store, and is refused by its receiver (replication, repair, handoff,
//! a fallback taking a hint) once older than the hint window; hints are dropped at that
//! age too, and a merged hint keeps its oldest stamp. A copy carrying the value was taken
//! while some home still held the value, so before that home's state last changed; with
//! grace >= window (the config asks for window + request timeout), every such copy is
//! refused by the time all homes report the grace passed. A replica that comes back after
//! a long absence is a home replica (2) or holds only hints (expired). Clock skew between
//! nodes eats into the margin: the default grace is the window plus an hour. (A breaker
//! session found the hole this closes: before the stamp, a replication stalled in the
//! network past the purge brought the value back on every replica.)
//!
//! After a purge, the key's clock is gone. Its dots stay below the coordinator's dot
//! floor (`Versions::write_above`), so a new write of the key, or one carrying an old
//! context, never reuses a purged dot or covers a new write it did not see.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use quorumkv_client::Error;

use crate::env::Env;
use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};
use crate::versions::Versions;

/// Tombstones looked at per round, so a mass delete is purged over several rounds.
const PURGE_BATCH: usize = 256;

impl<E: Env> Node<E> {
    /// Purges the tombstones that have stood long enough, where the rule allows.
    pub(crate) async fn purge_tombstones(self: &Arc<Self>) {
        let Some(cutoff) = self.env.now().checked_sub(self.config.tombstone_grace) else {
            return;
        };
        for key in self.store.purgeable(cutoff, PURGE_BATCH) {
            match self.purge(&key).await {
                Ok(true) => {
                    self.counters.purged.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(key = ?key, "tombstone purged");
                }
                Ok(false) => {}
                Err(error) => tracing::debug!(key = ?key, %error, "tombstone not purged"),
            }
        }
    }

    /// Applies the rule to one key; true when it was purged here.
    async fn purge(self: &Arc<Self>, key: &Bytes) -> Result<bool, Error> {
        let state = self.store.get(key).await.map_err(server)?;
        let Some(state) = state.filter(|state| state.is_deleted()) else {
            return Ok(false);
        };
        if !self.may_purge(key, &state).await? {
            return Ok(false);
        }
        let partition = self.ring.partition_of(key);
        let others: Vec<_> = self
            .ring
            .home_replicas(partition)
            .iter()
            .filter(|home| *home != self.id())
            .cloned()
            .collect();
        let timeout = self.config.request_timeout;

        for home in &others {
            let request = PeerRequest::PurgeCheck {
                key: key.clone(),
                state: state.clone(),
            };
            if !matches!(
                self.peers.call(home, &request, timeout).await?,
                PeerResponse::Stable(true)
            ) {
                return Ok(false);
            }
        }
        for home in &others {
            let request = PeerRequest::Purge {
                key: key.clone(),
                state: state.clone(),
            };
            // A home that did not purge keeps the tombstone; anti-entropy gives it back
            // to the others and a later round tries again. Nothing is lost either way.
            self.peers.call(home, &request, timeout).await?;
        }
        self.store.purge_if(key, &state).await.map_err(server)
    }

    /// This node's part of the rule: it holds exactly `state`, tombstones only, unchanged
    /// for the grace, and no hint for the key.
    pub(crate) async fn may_purge(&self, key: &[u8], state: &Versions) -> Result<bool, Error> {
        let Some(cutoff) = self.env.now().checked_sub(self.config.tombstone_grace) else {
            return Ok(false);
        };
        if self.hints.holds_key(key) || !self.store.tombstone_stable(key, cutoff) {
            return Ok(false);
        }
        let mine = self.store.get(key).await.map_err(server)?;
        Ok(mine.as_ref() == Some(state) && state.is_deleted())
    }
}

fn server(error: crate::storage::StorageError) -> Error {
    Error::Server {
        reason: error.to_string(),
    }
}
