//! Coordinating client requests over a key's replicas.
//!
//! Writes: a node that is not one of the key's N home replicas forwards the write to the
//! first home replica that answers; the home replica applies the write locally (issuing
//! the new dot with its own actor), then sends the resulting state to the other homes and
//! answers once W of them, itself included, hold it. Strict quorum: only home replicas
//! count, so with R + W > N every read overlaps every acknowledged write.
//!
//! Reads: any node asks R of the home replicas it believes up (itself first), more when
//! one fails or is slow, answers after R replies, and merges them.
//! Replicas among those R that were behind are repaired before the answer (so one
//! client's quorum reads never go backwards); late replies are merged and repaired in the
//! background.
//!
//! Failure reporting: `Unavailable` is decided before anything is written, from the
//! failure detector's view; `Timeout` reports the acknowledgements actually counted, and
//! for a write means the outcome is unknown.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use quorumkv_client::consistency::Access;
use quorumkv_client::protocol::{
    CompactReport, Context, ErrorReply, LocalSibling, LocalState, Request, Response,
};
use quorumkv_client::{Consistency, Error, NodeId};

use crate::env::Env;
use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};
use crate::storage::{Change, StorageError};
use crate::versions::{VersionVector, Versions};

/// Bytes a replication or reply frame needs beyond the values it carries: dots, clocks,
/// the key and the envelope. Generous, so a state that passes never fails to frame.
const FRAME_OVERHEAD_BYTES: usize = 64 * 1024;

/// A read that has not heard from R replicas by then asks the remaining home replicas too.
/// Far above a loaded loopback round trip (a few ms at p99), far below the request timeout.
const SPECULATIVE_READ_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// A write as the coordinator sees it: `value: None` is a delete.
pub(crate) struct Write {
    pub key: Bytes,
    pub value: Option<Bytes>,
    pub context: Option<Context>,
    pub level: Consistency,
    pub sloppy: bool,
}

impl Write {
    pub fn from_request(request: Request) -> Option<Write> {
        match request {
            Request::Put {
                key,
                value,
                context,
                write,
                sloppy,
            } => Some(Write {
                key,
                value: Some(value),
                context,
                level: write,
                sloppy,
            }),
            Request::Delete {
                key,
                context,
                write,
                sloppy,
            } => Some(Write {
                key,
                value: None,
                context,
                level: write,
                sloppy,
            }),
            _ => None,
        }
    }
}

impl<E: Env> Node<E> {
    /// Answers one client request.
    pub async fn handle_client(self: &Arc<Self>, request: Request) -> Response {
        let result = match request {
            Request::Get { key, read } => self.read(key, read).await.map(found),
            Request::Status => Ok(Response::Status(self.status_report())),
            Request::Ring { key } => Ok(Response::Ring(self.ring_report(key.as_deref()))),
            Request::Inspect { key } => self.inspect(&key).await.map(Response::Local),
            Request::Compact => self.compact().await.map(Response::Compacted),
            write => match Write::from_request(write) {
                Some(write) => self.write(write).await.map(|()| Response::Written),
                None => unreachable!("every other request is a write"),
            },
        };
        result.unwrap_or_else(|error| Response::Error(ErrorReply::from(&error)))
    }

    fn home_replicas(&self, key: &[u8]) -> &[NodeId] {
        self.ring.home_replicas(self.ring.partition_of(key))
    }

    /// Entry point for a write from a client: coordinate it here or forward it home.
    pub(crate) async fn write(self: &Arc<Self>, write: Write) -> Result<(), Error> {
        let homes = self.home_replicas(&write.key);
        let required = write.level.required(homes.len(), Access::Write)?;
        if write.sloppy && !self.config.hints {
            // Fallbacks keep what they take as hints; with hints off they cannot take any.
            return Err(Error::InvalidConsistency {
                reason: "sloppy quorums need hints, which are switched off on this node".into(),
            });
        }
        if homes.contains(self.id()) {
            self.coordinate_write(write, required).await
        } else {
            self.forward_write(write, required).await
        }
    }

    /// Sends the write to the first home replica that takes it.
    ///
    /// Homes the failure detector believes up are tried first, in preference order. Once
    /// the write has been handed to a home it is not retried elsewhere: the first home
    /// may have applied it, and a second coordinator would add a duplicate sibling.
    ///
    /// Even a sloppy write needs a home replica to coordinate it: a dot must be issued on
    /// a state that holds every earlier dot of its actor for the key, and only a home
    /// replica keeps the key's state (a fallback keeps hints).
    async fn forward_write(self: &Arc<Self>, write: Write, required: usize) -> Result<(), Error> {
        let homes = self.home_replicas(&write.key).to_vec();
        let now = self.env.now();
        let (up, down): (Vec<&NodeId>, Vec<&NodeId>) = homes
            .iter()
            .partition(|home| self.membership.is_up(home, now));

        let request = PeerRequest::Coordinate {
            request: write.into_request(),
        };
        // Room for the home's own replica round trip (and a sloppy write's fallback round
        // trip after it) before this hop gives up.
        let timeout = self.config.request_timeout * 3;
        for home in up.into_iter().chain(down) {
            let Ok(connection) = self.peers.connect(home).await else {
                continue;
            };
            return match connection.call(&request, timeout).await {
                Ok(PeerResponse::Coordinated(Response::Written)) => Ok(()),
                Ok(PeerResponse::Coordinated(Response::Error(reply))) => Err(reply.into()),
                Ok(PeerResponse::Error(reply)) => Err(reply.into()),
                Ok(other) => Err(Error::Protocol {
                    reason: format!("unexpected answer to a forwarded write: {other:?}"),
                }),
                // Sent, but no answer: the outcome is unknown, as with any write timeout.
                Err(_) => Err(Error::Timeout {
                    required,
                    acknowledged: 0,
                }),
            };
        }
        Err(Error::Unavailable { required, alive: 0 })
    }

    /// Applies a write here (a home replica) and replicates it to the other homes.
    ///
    /// Strict: only home replicas' acknowledgements count toward W, so with R + W > N a
    /// later read overlaps them. Sloppy: once every home has answered or timed out, the
    /// state goes to as many fallbacks as homes missed it, each keeping it as a hint for
    /// one missing home, and each fallback's acknowledgement counts too (Dynamo). Either
    /// way every home that missed the write gets a hint, so it converges when back.
    pub(crate) async fn coordinate_write(
        self: &Arc<Self>,
        write: Write,
        required: usize,
    ) -> Result<(), Error> {
        let homes = self.home_replicas(&write.key).to_vec();
        self.check_available(&write, &homes, required)?;
        let context = decode_context(write.context.as_ref())?;

        // When the state was taken: copies of it that arrive anywhere later than the hint
        // window after this are refused (see `tombstones`).
        let stamp = self.env.wall_clock_millis();
        let event = self.write_event(context, write.value);
        let state = match self.store.update(&write.key, event).await {
            Ok(state) => state,
            Err(StorageError::Refused(reason)) => return Err(Error::Rejected { reason }),
            Err(error) => {
                return Err(Error::Server {
                    reason: error.to_string(),
                })
            }
        };

        // Homes the detector believes down are not dialled (dialling a dead or hung peer
        // on every write piles up tasks behind its dial): they get a hint instead.
        let now = self.env.now();
        let (up, mut missed): (Vec<NodeId>, Vec<NodeId>) = homes
            .into_iter()
            .filter(|home| home != self.id())
            .partition(|home| self.membership.is_up(home, now));
        let mut replies: FuturesUnordered<_> = up
            .into_iter()
            .map(|home| self.replicate(home, write.key.clone(), state.clone(), stamp))
            .collect();
        let mut acknowledged = 1;
        while acknowledged < required {
            match replies.next().await {
                Some((_, true)) => acknowledged += 1,
                Some((home, false)) => missed.push(home),
                None => break,
            }
        }
        if acknowledged < required && write.sloppy {
            let needed = required - acknowledged;
            acknowledged += self
                .hand_to_fallbacks(&write.key, &state, stamp, &mut missed, needed)
                .await;
        }
        self.finish_in_background(write.key, state, stamp, replies, missed);
        if acknowledged < required {
            return Err(Error::Timeout {
                required,
                acknowledged,
            });
        }
        Ok(())
    }

    /// Refuses a write that cannot reach its level with the replicas believed up.
    fn check_available(
        &self,
        write: &Write,
        homes: &[NodeId],
        required: usize,
    ) -> Result<(), Error> {
        let now = self.env.now();
        let mut alive = self.membership.count_up(homes, now);
        if write.sloppy {
            let partition = self.ring.partition_of(&write.key);
            alive += self
                .membership
                .count_up(self.ring.fallbacks(partition), now);
        }
        if alive < required {
            return Err(Error::Unavailable { required, alive });
        }
        Ok(())
    }

    /// Gives the state to fallbacks, one per home in `missed`, to keep as a hint for that
    /// home; returns how many acknowledged. Homes a fallback took are removed from
    /// `missed`, so the coordinator does not hint them a second time.
    async fn hand_to_fallbacks(
        self: &Arc<Self>,
        key: &Bytes,
        state: &Versions,
        stamp: u64,
        missed: &mut Vec<NodeId>,
        needed: usize,
    ) -> usize {
        let now = self.env.now();
        let partition = self.ring.partition_of(key);
        let fallbacks: Vec<NodeId> = self
            .ring
            .fallbacks(partition)
            .iter()
            .filter(|node| self.membership.is_up(node, now))
            .cloned()
            .collect();
        let timeout = self.config.request_timeout;
        let handed: Vec<(NodeId, bool)> = missed
            .iter()
            .zip(fallbacks)
            .map(|(home, fallback)| {
                let request = PeerRequest::Hint {
                    target: home.clone(),
                    key: key.clone(),
                    state: state.clone(),
                    stamp_ms: stamp,
                };
                async move {
                    let reply = self.peers.call(&fallback, &request, timeout).await;
                    (home.clone(), matches!(reply, Ok(PeerResponse::Hinted)))
                }
            })
            .collect::<FuturesUnordered<_>>()
            .collect()
            .await;
        let taken: Vec<&NodeId> = handed
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(h, _)| h)
            .collect();
        missed.retain(|home| !taken.contains(&home));
        if taken.len() < needed {
            let taken = taken.len();
            tracing::debug!(key = ?key, taken, needed, "too few fallbacks took the write");
        }
        taken.len()
    }

    /// Waits for the homes that had not answered yet, and stores a hint for every home
    /// that missed the write. Nobody waits for this.
    fn finish_in_background<F>(
        self: &Arc<Self>,
        key: Bytes,
        state: Versions,
        stamp: u64,
        mut replies: FuturesUnordered<F>,
        mut missed: Vec<NodeId>,
    ) where
        F: std::future::Future<Output = (NodeId, bool)> + Send + 'static,
    {
        let node = self.clone();
        let task = async move {
            while let Some((home, ok)) = replies.next().await {
                if !ok {
                    missed.push(home);
                }
            }
            if !node.config.hints {
                return;
            }
            for home in missed {
                if let Err(error) = node.hints.add(&home, &key, &state, stamp).await {
                    tracing::debug!(%home, %error, "no hint stored");
                }
            }
        };
        tokio::spawn(tracing::Instrument::in_current_span(task));
    }

    /// The coordinator's event on a key's state, refused when it could not be replicated
    /// or would misuse this node's dots.
    fn write_event(&self, context: VersionVector, value: Option<Bytes>) -> Change<'static> {
        let actor = self.actor.clone();
        let floor = self.dot_floor.clone();
        // Room for dots, clock and framing around the values in one replication frame.
        let limit = self
            .config
            .max_frame_bytes
            .saturating_sub(FRAME_OVERHEAD_BYTES);
        Box::new(move |state: &mut Versions| {
            // Every dot this actor issued is at or below the floor, so a context that
            // names a higher one is forged; writing on it could overflow the counter.
            let issued = floor.load(Ordering::SeqCst);
            if context.get(&actor) > issued || state.exhausted(&actor) {
                return Err(format!(
                    "context claims writes by {actor} that it never made"
                ));
            }
            let added = value.as_ref().map_or(0, Bytes::len);
            if state.value_bytes() + added > limit {
                return Err(format!(
                    "the key's versions would exceed the frame limit of {limit} bytes; \
                     resolve its siblings or write a smaller value"
                ));
            }
            let dot = state.write_above(&context, value, &actor, issued);
            floor.fetch_max(dot.counter, Ordering::SeqCst);
            Ok(())
        })
    }

    /// Sends `state`, taken at `stamp` (wall-clock ms), to a replica to merge; true when
    /// it acknowledged in time.
    fn replicate(
        self: &Arc<Self>,
        replica: NodeId,
        key: Bytes,
        state: Versions,
        stamp: u64,
    ) -> impl std::future::Future<Output = (NodeId, bool)> + Send + 'static {
        let node = self.clone();
        async move {
            if replica == *node.id() {
                let merged = node.merge_stamped(&key, state, stamp).await.is_ok();
                return (replica, merged);
            }
            let request = PeerRequest::Replicate {
                key,
                state,
                stamp_ms: stamp,
            };
            let timeout = node.config.request_timeout;
            let reply = node.peers.call(&replica, &request, timeout).await;
            (replica, matches!(reply, Ok(PeerResponse::Merged)))
        }
    }

    /// A replica's own state of a key, asked without coordination.
    fn read_replica(
        self: &Arc<Self>,
        replica: NodeId,
        key: Bytes,
    ) -> impl std::future::Future<Output = (NodeId, Option<Versions>)> + Send + 'static {
        let node = self.clone();
        async move {
            if replica == *node.id() {
                let state = node
                    .store
                    .get(&key)
                    .await
                    .ok()
                    .map(Option::unwrap_or_default);
                return (replica, state);
            }
            let request = PeerRequest::Read { key };
            let timeout = node.config.request_timeout;
            let state = match node.peers.call(&replica, &request, timeout).await {
                Ok(PeerResponse::State(state)) => Some(state.unwrap_or_default()),
                Ok(_) | Err(_) => None,
            };
            (replica, state)
        }
    }

    /// Reads a key at `level`, repairing stale replicas.
    pub(crate) async fn read(
        self: &Arc<Self>,
        key: Bytes,
        level: Consistency,
    ) -> Result<Versions, Error> {
        let homes = self.home_replicas(&key).to_vec();
        let required = level.required(homes.len(), Access::Read)?;
        let stamp = self.env.wall_clock_millis();
        let alive = self.membership.count_up(&homes, self.env.now());
        if alive < required {
            return Err(Error::Unavailable { required, alive });
        }

        // As for writes, homes believed down are not asked. Of the others, only R are
        // asked at first, this node first (its answer costs no round trip): asking all N
        // for every read tripled the work of a read at `one` for no answer it needed, and
        // replicas left behind are anti-entropy's job. A home that fails to answer is
        // replaced by a spare at once, and one that is merely slow after
        // `SPECULATIVE_READ_DELAY`, so one slow replica costs a read little latency.
        let now = self.env.now();
        let mut asked: Vec<NodeId> = homes
            .into_iter()
            .filter(|home| self.membership.is_up(home, now))
            .collect();
        if let Some(at) = asked.iter().position(|home| home == self.id()) {
            asked[..=at].rotate_right(1);
        }
        let mut spares = asked.split_off(required.min(asked.len()));
        let mut replies: FuturesUnordered<_> = asked
            .into_iter()
            .map(|home| self.read_replica(home, key.clone()))
            .collect();
        let speculate = tokio::time::sleep(SPECULATIVE_READ_DELAY);
        tokio::pin!(speculate);
        let mut answered = Vec::with_capacity(required);
        while answered.len() < required {
            tokio::select! {
                biased;
                reply = replies.next() => match reply {
                    Some((node, Some(state))) => answered.push((node, state)),
                    Some((_, None)) if !spares.is_empty() => {
                        replies.push(self.read_replica(spares.remove(0), key.clone()));
                    }
                    Some((_, None)) => {}
                    None => break,
                },
                () = &mut speculate, if !spares.is_empty() => {
                    for home in spares.drain(..) {
                        replies.push(self.read_replica(home, key.clone()));
                    }
                }
            }
        }
        if answered.len() < required {
            return Err(Error::Timeout {
                required,
                acknowledged: answered.len(),
            });
        }

        let merged = merge_all(answered.iter().map(|(_, state)| state));
        if self.config.read_repair {
            self.repair_before_answering(&key, &merged, stamp, &answered, required)
                .await?;
            self.repair_in_background(key, merged.clone(), stamp, answered, replies);
        }
        Ok(merged)
    }

    /// Brings the R replicas that answered up to the merged state.
    ///
    /// A later quorum read overlaps these R replicas, so once they all hold `merged` no
    /// quorum read can return less. If too few confirm, the read fails rather than return
    /// a state a following read might not see.
    async fn repair_before_answering(
        self: &Arc<Self>,
        key: &Bytes,
        merged: &Versions,
        stamp: u64,
        answered: &[(NodeId, Versions)],
        required: usize,
    ) -> Result<(), Error> {
        let current = answered.iter().filter(|(_, state)| state == merged).count();
        let repairs: FuturesUnordered<_> = answered
            .iter()
            .filter(|(_, state)| state != merged)
            .map(|(node, _)| self.replicate(node.clone(), key.clone(), merged.clone(), stamp))
            .collect();
        let repaired = repairs
            .filter(|(_, ok)| futures::future::ready(*ok))
            .count()
            .await;
        let confirmed = current + repaired;
        if repaired > 0 {
            tracing::debug!(key = ?key, repaired, "read repair before answering");
        }
        if confirmed < required {
            return Err(Error::Timeout {
                required,
                acknowledged: confirmed,
            });
        }
        Ok(())
    }

    /// Waits for the replies that came after R, and repairs whoever is behind.
    fn repair_in_background<F>(
        self: &Arc<Self>,
        key: Bytes,
        merged: Versions,
        stamp: u64,
        answered: Vec<(NodeId, Versions)>,
        mut late: FuturesUnordered<F>,
    ) where
        F: std::future::Future<Output = (NodeId, Option<Versions>)> + Send + 'static,
    {
        let node = self.clone();
        tokio::spawn(async move {
            let mut known: Vec<(NodeId, Versions)> = answered
                .into_iter()
                .map(|(id, _)| (id, merged.clone()))
                .collect();
            while let Some((id, state)) = late.next().await {
                if let Some(state) = state {
                    known.push((id, state));
                }
            }
            let total = merge_all(known.iter().map(|(_, state)| state));
            let repairs: FuturesUnordered<_> = known
                .into_iter()
                .filter(|(_, state)| *state != total)
                .map(|(id, _)| node.replicate(id, key.clone(), total.clone(), stamp))
                .collect();
            let repaired = repairs
                .filter(|(_, ok)| futures::future::ready(*ok))
                .count()
                .await;
            if repaired > 0 {
                tracing::debug!(key = ?key, repaired, "background read repair");
            }
        });
    }
}

impl Write {
    fn into_request(self) -> Request {
        match self.value {
            Some(value) => Request::Put {
                key: self.key,
                value,
                context: self.context,
                write: self.level,
                sloppy: self.sloppy,
            },
            None => Request::Delete {
                key: self.key,
                context: self.context,
                write: self.level,
                sloppy: self.sloppy,
            },
        }
    }
}

impl<E: Env> Node<E> {
    /// This node's own state of a key, for `inspect` and the simulator's checkers.
    async fn inspect(&self, key: &[u8]) -> Result<LocalState, Error> {
        let state = self.store.get(key).await.map_err(|e| Error::Server {
            reason: e.to_string(),
        })?;
        let exists = state.is_some();
        let state = state.unwrap_or_default();
        let siblings = state
            .siblings()
            .iter()
            .map(|sibling| LocalSibling {
                dot: sibling.dot.to_string(),
                value: sibling.value.clone(),
            })
            .collect();
        Ok(LocalState {
            node: self.id().clone(),
            siblings,
            context: Context(Bytes::from(state.context().encode())),
            exists,
        })
    }
}

impl<E: Env> Node<E> {
    /// Compacts this node's store at an operator's request.
    async fn compact(&self) -> Result<CompactReport, Error> {
        let stats = self.store.compact().await.map_err(|e| Error::Server {
            reason: e.to_string(),
        })?;
        Ok(CompactReport {
            node: self.id().clone(),
            segments_removed: stats.segments_removed,
            segments_written: stats.segments_written,
            records_copied: stats.records_copied,
            bytes_before: stats.bytes_before,
            bytes_after: stats.bytes_after,
        })
    }
}

fn merge_all<'a>(states: impl Iterator<Item = &'a Versions>) -> Versions {
    let mut merged = Versions::new();
    for state in states {
        merged.merge(state);
    }
    merged
}

fn found(state: Versions) -> Response {
    Response::Found {
        values: state.values().into_iter().cloned().collect(),
        context: Context(Bytes::from(state.context().encode())),
    }
}

/// A client's context, or the empty one when it sent none (a blind write).
fn decode_context(context: Option<&Context>) -> Result<VersionVector, Error> {
    match context {
        None => Ok(VersionVector::new()),
        Some(context) if context.is_empty() => Ok(VersionVector::new()),
        Some(context) => VersionVector::decode(&context.0).map_err(|e| Error::Rejected {
            reason: format!("invalid context: {e}"),
        }),
    }
}
