//! The versions of one key: a dotted-version-vector set (DVV set).
//!
//! # Model
//!
//! A key's state, [`Versions`], is a causal context (the *clock*, a [`VersionVector`]) plus a
//! list of *siblings*. Each sibling is one write: the [`Dot`] that names the write and an
//! optional value, where `None` is a tombstone left by a delete. The clock says which writes
//! the state has seen; a write it has seen but no longer holds was superseded by a write it
//! does hold (or by one that superseded that, and so on).
//!
//! A dot `(actor, n)` is the n-th write that `actor` coordinated for this key. An actor issues
//! its dots for a key in order, each from a state that has seen all the earlier ones, so a clock
//! entry `actor -> n` can stand for "dots 1..=n of `actor`" without listing them.
//!
//! Why dots rather than one plain vector clock per sibling: with plain clocks, two clients that
//! write through the same coordinator with the same stale context get clocks where the second
//! dominates the first, and the first write is silently lost. A dot names the single event,
//! apart from the context the client read, so the second write cannot cover the first one.
//!
//! # How requests use it
//!
//! - A get merges the replicas' states and returns every sibling plus [`Versions::context`],
//!   which the client keeps as opaque bytes ([`VersionVector::encode`]).
//! - A put or delete decodes that context and calls [`Versions::write`] on the coordinator's
//!   own state, then ships the whole new state to the other replicas, which
//!   [`Versions::merge`] it into theirs. A delete is a write of `None`.
//! - Read repair, hinted handoff and anti-entropy only ever merge whole states.
//!
//! # What the caller must guarantee
//!
//! An actor must never issue the same dot twice: a replica that already holds a dot treats a
//! second write with that dot as seen and may drop it (the Riak KV679 data-loss bugs). `write`
//! issues one above the larger of the coordinator's clock and the client's context, which is
//! safe as long as the coordinator never lost a write it coordinated for the key. A node that
//! starts with a new or lost data dir therefore takes a new epoch, and the coordinator uses
//! [`Versions::write_above`] with the highest counter it issued in this epoch, which keeps
//! dots unique for a key whose history it no longer holds (a purged tombstone).

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};

use crate::NodeId;

/// Most actors a context handed in by a client may name. A cluster has at most a few hundred
/// nodes and a node takes a new epoch only when it lost its data, so a longer context is
/// garbage or hostile; the bound caps the work of every comparison made against it.
pub const MAX_CONTEXT_ACTORS: usize = 1024;

/// Who issues dots: one node in one incarnation of its data.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Actor {
    pub node: NodeId,
    /// Raised each time the node starts with a new or lost data dir, so it never issues a dot
    /// that an earlier incarnation may have issued already.
    pub epoch: u64,
}

impl Actor {
    pub fn new(node: NodeId, epoch: u64) -> Actor {
        Actor { node, epoch }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node, self.epoch)
    }
}

/// One write: the `counter`-th write that `actor` coordinated for a key. Counters start at 1.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub actor: Actor,
    pub counter: u64,
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.actor, self.counter)
    }
}

/// Why a context handed in by a client was refused.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("malformed version context: {source}")]
    Malformed { source: rmp_serde::decode::Error },
    #[error("version context has {trailing} bytes after its end")]
    TrailingBytes { trailing: usize },
    #[error("version context names {actors} actors, more than the limit of {max}")]
    TooManyActors { actors: usize, max: usize },
}

/// A set of seen dots, summarized per actor: `actor -> n` means dots 1..=n of that actor.
///
/// Canonical form: an actor with nothing seen has no entry, so equal sets compare equal. It is
/// serialized as a sorted sequence of `(actor, counter)` pairs, which any format can carry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(from = "Vec<(Actor, u64)>")]
pub struct VersionVector {
    seen: BTreeMap<Actor, u64>,
}

impl VersionVector {
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// How many dots of `actor` this vector has seen (0 if none).
    pub fn get(&self, actor: &Actor) -> u64 {
        self.seen.get(actor).copied().unwrap_or(0)
    }

    /// Whether the write named by `dot` is among the seen ones.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(&dot.actor) >= dot.counter
    }

    /// Pointwise maximum: the least vector that has seen what both have seen. Commutative,
    /// associative and idempotent, which `Versions::merge` builds on.
    pub fn join(&mut self, other: &VersionVector) {
        for (actor, &counter) in &other.seen {
            self.raise(actor, counter);
        }
    }

    /// Whether this vector has seen everything `other` has seen.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other
            .seen
            .iter()
            .all(|(actor, &counter)| self.get(actor) >= counter)
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The entries in actor order (deterministic, for hashing and logs).
    pub fn iter(&self) -> impl Iterator<Item = (&Actor, u64)> + '_ {
        self.seen.iter().map(|(actor, &counter)| (actor, counter))
    }

    /// The opaque context a client carries from a get to its next put or delete.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("a version vector always serializes to MessagePack")
    }

    /// Reads a context back from a client. The bytes come from outside, so every defect is an
    /// error: bad MessagePack, a wrong shape, bytes after the end, or too many actors.
    pub fn decode(bytes: &[u8]) -> Result<VersionVector, VersionError> {
        let mut deserializer = rmp_serde::Deserializer::new(bytes);
        let vector = VersionVector::deserialize(&mut deserializer)
            .map_err(|source| VersionError::Malformed { source })?;

        let trailing = deserializer.get_ref().len();
        if trailing > 0 {
            return Err(VersionError::TrailingBytes { trailing });
        }

        let actors = vector.seen.len();
        if actors > MAX_CONTEXT_ACTORS {
            return Err(VersionError::TooManyActors {
                actors,
                max: MAX_CONTEXT_ACTORS,
            });
        }
        Ok(vector)
    }

    /// Marks dots 1..=counter of `actor` as seen. A zero adds no entry (canonical form).
    fn raise(&mut self, actor: &Actor, counter: u64) {
        if counter == 0 {
            return;
        }
        match self.seen.get_mut(actor) {
            Some(seen) => *seen = (*seen).max(counter),
            None => {
                self.seen.insert(actor.clone(), counter);
            }
        }
    }

    /// Issues the next dot of `actor` and marks it as seen.
    fn next_dot(&mut self, actor: &Actor) -> Dot {
        let counter = self
            .get(actor)
            .checked_add(1)
            .expect("the coordinator refuses to write for an actor whose counter is exhausted");
        self.raise(actor, counter);
        Dot {
            actor: actor.clone(),
            counter,
        }
    }
}

impl Serialize for VersionVector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.seen.iter())
    }
}

/// Rebuilds canonical form from pairs read off the wire: duplicates keep their maximum and
/// zeros are dropped, so a decoded vector compares equal to one built by hand.
impl From<Vec<(Actor, u64)>> for VersionVector {
    fn from(pairs: Vec<(Actor, u64)>) -> VersionVector {
        let mut vector = VersionVector::new();
        for (actor, counter) in &pairs {
            vector.raise(actor, *counter);
        }
        vector
    }
}

/// One concurrent version of a key: the write that made it and its value (`None` = deleted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    pub dot: Dot,
    pub value: Option<Bytes>,
}

impl Sibling {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// The state of one key on one replica: what it has seen and the writes still standing.
///
/// Invariants, kept by every method and restored on deserialization: the clock covers every
/// sibling's dot, siblings are sorted by dot, and no dot appears twice. With the clock's own
/// canonical form this makes the derived `PartialEq` mean "same state", which read repair uses
/// to tell whether a replica is behind.
///
/// # Sibling bound
///
/// With C clients that each run read-modify-write cycles, where every read includes the
/// client's own previous write (strict quorum, R + W > N), a key holds at most C siblings:
/// each write supersedes everything its read saw, the client's own previous write included,
/// so only the latest write of each client can still stand. The tests check C = 2, with
/// stale reads that miss the other client's writes: at most 2 siblings, on every replica and
/// in every read. Writes without a context, or reads that can miss the client's own last
/// write (R + W <= N), add siblings without bound: that is the price of never dropping a
/// concurrent write, and why clients should always write back the context they read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RawVersions")]
pub struct Versions {
    clock: VersionVector,
    siblings: Vec<Sibling>,
}

/// `Versions` as read from disk or a peer, before its invariants are checked.
#[derive(Deserialize)]
struct RawVersions {
    clock: VersionVector,
    siblings: Vec<Sibling>,
}

/// Bytes from a disk or a peer may break the invariants; restoring them here keeps `merge`
/// and `PartialEq` right for every state, instead of trusting the sender.
impl From<RawVersions> for Versions {
    fn from(raw: RawVersions) -> Versions {
        let mut clock = raw.clock;
        for sibling in &raw.siblings {
            clock.raise(&sibling.dot.actor, sibling.dot.counter);
        }
        Versions {
            clock,
            siblings: canonical(raw.siblings),
        }
    }
}

impl Versions {
    /// The state of a key never seen: no siblings, empty clock.
    pub fn new() -> Versions {
        Versions::default()
    }

    /// What a get hands to the client, to come back with its next put or delete.
    pub fn context(&self) -> VersionVector {
        self.clock.clone()
    }

    pub fn clock(&self) -> &VersionVector {
        &self.clock
    }

    /// Every sibling, tombstones included, sorted by dot.
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    pub fn sibling_count(&self) -> usize {
        self.siblings.len()
    }

    /// The live values, in sibling order; tombstones are left out.
    pub fn values(&self) -> Vec<&Bytes> {
        self.siblings
            .iter()
            .filter_map(|sibling| sibling.value.as_ref())
            .collect()
    }

    /// Whether nothing is known about the key at all (not even a delete).
    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty() && self.clock.is_empty()
    }

    /// Whether a reader should see "not found": only tombstones remain, or nothing.
    pub fn is_deleted(&self) -> bool {
        self.siblings.iter().all(Sibling::is_tombstone)
    }

    /// Applies a put (`Some`) or delete (`None`) on the coordinator and returns its new dot.
    ///
    /// The new sibling replaces exactly the siblings whose dots `context` covers, the ones the
    /// client saw; a concurrent write the client did not see stays as a sibling. An empty
    /// context replaces nothing. The new dot is one above both this state's and the context's
    /// count for `actor`, so it is above every dot `actor` issued that either has seen.
    pub fn write(&mut self, context: &VersionVector, value: Option<Bytes>, actor: &Actor) -> Dot {
        self.write_above(context, value, actor, 0)
    }

    /// [`Versions::write`], with the new dot's counter also above `floor`.
    ///
    /// The coordinator passes the highest counter it has issued for any key in this epoch.
    /// That keeps dots unique even for a key whose history this node no longer holds
    /// because its tombstone was purged: the purged dots are below the floor, so neither a
    /// client's old context nor a replica can mistake the new write for one of them. Per
    /// key, counters of one actor then rise with gaps, which the clock's "1..=n" reading
    /// tolerates: an actor still issues each key's dots from a state holding all earlier
    /// ones, so a clock entry covers no write of that key it has not seen.
    pub fn write_above(
        &mut self,
        context: &VersionVector,
        value: Option<Bytes>,
        actor: &Actor,
        floor: u64,
    ) -> Dot {
        self.siblings
            .retain(|sibling| !context.covers(&sibling.dot));
        self.clock.join(context);
        self.clock.raise(actor, floor);

        let dot = self.clock.next_dot(actor);
        let at = self.siblings.partition_point(|sibling| sibling.dot < dot);
        self.siblings.insert(
            at,
            Sibling {
                dot: dot.clone(),
                value,
            },
        );
        dot
    }

    /// Whether `actor` can issue no further dot for this key (its counter is at the
    /// maximum; only a forged state can get there).
    pub fn exhausted(&self, actor: &Actor) -> bool {
        self.clock.get(actor) == u64::MAX
    }

    /// The bytes of all values held, tombstones counting nothing: what a reply or a
    /// replication frame of this state will mostly consist of.
    pub fn value_bytes(&self) -> usize {
        self.siblings
            .iter()
            .filter_map(|s| s.value.as_ref())
            .map(|v| v.len())
            .sum()
    }

    /// A 64-bit hash of the whole state (clock and siblings), for anti-entropy's trees.
    /// Equal states give equal digests: both parts are kept in canonical order. Every
    /// variable-length field is length-prefixed, so no two states feed the same bytes.
    pub fn digest(&self) -> u64 {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let actor = |hasher: &mut xxhash_rust::xxh3::Xxh3, actor: &Actor, counter: u64| {
            hasher.update(&(actor.node.0.len() as u64).to_le_bytes());
            hasher.update(actor.node.0.as_bytes());
            hasher.update(&actor.epoch.to_le_bytes());
            hasher.update(&counter.to_le_bytes());
        };
        hasher.update(&(self.clock.seen.len() as u64).to_le_bytes());
        for (who, counter) in self.clock.iter() {
            actor(&mut hasher, who, counter);
        }
        for sibling in &self.siblings {
            actor(&mut hasher, &sibling.dot.actor, sibling.dot.counter);
            match &sibling.value {
                Some(value) => {
                    hasher.update(&(value.len() as u64 + 1).to_le_bytes());
                    hasher.update(value);
                }
                None => hasher.update(&0u64.to_le_bytes()),
            }
        }
        hasher.digest()
    }

    /// Whether `context` has seen a write by `actor` that this state does not know of: the
    /// node lost its history of the key (a lost disk, a purged tombstone). The coordinator
    /// no longer needs to refuse such a write, since `write_above` with its dot floor
    /// issues a dot above every one the actor issued; this remains as a diagnostic.
    pub fn forgot_own_writes(&self, context: &VersionVector, actor: &Actor) -> bool {
        context.get(actor) > self.clock.get(actor)
    }

    /// Merges another replica's state of the same key into this one.
    ///
    /// A sibling of either side stays if the other side holds the same dot or has not seen it
    /// (its clock does not cover the dot). A sibling the other side has seen but no longer
    /// holds was superseded there, and goes. The clock becomes the pointwise maximum.
    ///
    /// Laws, for all states a, b, c (the property tests check them on states built by random
    /// histories of writes and merges between replicas):
    /// - commutative: `a.merge(b)` equals `b.merge(a)`;
    /// - associative: `(a.merge(b)).merge(c)` equals `a.merge(b.merge(c))`;
    /// - idempotent: `a.merge(a)` equals `a`.
    ///
    /// So replicas that received the same writes, in any order and any number of times, hold
    /// equal states, which is what read repair, hints and anti-entropy rely on.
    pub fn merge(&mut self, other: &Versions) {
        let theirs: Vec<Sibling> = other
            .siblings
            .iter()
            .filter(|sibling| self.lets_stand(&sibling.dot))
            .cloned()
            .collect();
        self.siblings
            .retain(|sibling| other.lets_stand(&sibling.dot));
        self.siblings.extend(theirs);

        self.siblings = canonical(std::mem::take(&mut self.siblings));
        self.clock.join(&other.clock);
    }

    /// Whether merging `other` into this state would change nothing: this clock has seen all
    /// that `other` has seen, and this state holds no sibling that `other` superseded. (Every
    /// sibling of `other` is then either here or superseded here, since its clock covers it.)
    pub fn descends(&self, other: &Versions) -> bool {
        self.clock.descends(&other.clock)
            && self
                .siblings
                .iter()
                .all(|sibling| other.lets_stand(&sibling.dot))
    }

    /// Whether a sibling with `dot`, held by another replica, survives a merge with this state:
    /// yes unless this state has seen the dot and no longer holds it.
    fn lets_stand(&self, dot: &Dot) -> bool {
        !self.clock.covers(dot) || self.holds(dot)
    }

    fn holds(&self, dot: &Dot) -> bool {
        self.siblings
            .binary_search_by(|sibling| sibling.dot.cmp(dot))
            .is_ok()
    }
}

/// Sorts siblings by dot and keeps one per dot. Dots are unique, so a dot that comes twice
/// normally carries the same value twice; if a bug ever reused a dot, keeping the greater value
/// makes every replica keep the same one, so merge stays commutative. Counter 0 is never
/// issued, and a sibling with it is covered by every clock, so it is dropped as garbage.
fn canonical(mut siblings: Vec<Sibling>) -> Vec<Sibling> {
    siblings.retain(|sibling| sibling.dot.counter > 0);
    siblings.sort_by(|a, b| a.dot.cmp(&b.dot).then_with(|| b.value.cmp(&a.value)));
    siblings.dedup_by(|later, kept| later.dot == kept.dot);
    siblings
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection;
    use proptest::prelude::*;
    use proptest::sample::Index;

    fn actor(name: &str) -> Actor {
        Actor::new(NodeId(name.to_owned()), 0)
    }

    fn value(text: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn texts(state: &Versions) -> Vec<&[u8]> {
        let mut texts: Vec<&[u8]> = state.values().into_iter().map(|v| v.as_ref()).collect();
        texts.sort();
        texts
    }

    fn merged(a: &Versions, b: &Versions) -> Versions {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    #[test]
    fn a_new_state_is_empty_and_reads_as_not_found() {
        // Goal: a key never seen has no siblings, an empty context, and reads as deleted.
        let state = Versions::new();
        assert!(state.is_empty());
        assert!(state.is_deleted());
        assert!(state.context().is_empty());
        assert_eq!(state.sibling_count(), 0);
    }

    #[test]
    fn a_put_without_context_adds_a_sibling() {
        // Goal: a blind put never overwrites; it stands next to what is there.
        let n1 = actor("n1");
        let mut state = Versions::new();
        let first = state.write(&VersionVector::new(), value("a"), &n1);
        let second = state.write(&VersionVector::new(), value("b"), &n1);

        assert_eq!(first.counter, 1);
        assert_eq!(second.counter, 2);
        assert_eq!(texts(&state), vec![b"a".as_ref(), b"b".as_ref()]);
    }

    #[test]
    fn a_put_with_context_replaces_exactly_the_siblings_that_context_covered() {
        // Goal: the context supersedes what the client read and nothing it did not read.
        // Method: the client reads "a" on n1; "b" then arrives from n2; the client writes "c".
        let (n1, n2) = (actor("n1"), actor("n2"));
        let mut replica1 = Versions::new();
        replica1.write(&VersionVector::new(), value("a"), &n1);
        let context = replica1.context();

        let mut replica2 = Versions::new();
        replica2.write(&VersionVector::new(), value("b"), &n2);
        replica1.merge(&replica2);
        assert_eq!(replica1.sibling_count(), 2);

        replica1.write(&context, value("c"), &n1);
        assert_eq!(texts(&replica1), vec![b"b".as_ref(), b"c".as_ref()]);
    }

    #[test]
    fn concurrent_puts_with_one_context_through_one_coordinator_give_two_siblings() {
        // Goal: the case plain vector clocks get wrong; neither write may be lost, here or
        // on a replica that receives the state.
        let n1 = actor("n1");
        let mut state = Versions::new();
        state.write(&VersionVector::new(), value("old"), &n1);
        let context = state.context();

        let x = state.write(&context, value("x"), &n1);
        let y = state.write(&context, value("y"), &n1);
        assert_ne!(x, y);
        assert_eq!(texts(&state), vec![b"x".as_ref(), b"y".as_ref()]);
        let replica = merged(&Versions::new(), &state);
        assert_eq!(texts(&replica), vec![b"x".as_ref(), b"y".as_ref()]);
    }

    #[test]
    fn concurrent_puts_with_one_context_through_two_coordinators_give_two_siblings() {
        // Goal: the same conflict through different coordinators survives replication, and
        // both replicas end equal whichever way the states are exchanged.
        let (n1, n2) = (actor("n1"), actor("n2"));
        let mut replica1 = Versions::new();
        replica1.write(&VersionVector::new(), value("old"), &n1);
        let mut replica2 = replica1.clone();
        let context = replica1.context();

        replica1.write(&context, value("x"), &n1);
        replica2.write(&context, value("y"), &n2);
        let one_way = merged(&replica1, &replica2);
        let other_way = merged(&replica2, &replica1);

        assert_eq!(one_way, other_way);
        assert_eq!(texts(&one_way), vec![b"x".as_ref(), b"y".as_ref()]);
    }

    #[test]
    fn a_put_with_the_merged_context_resolves_siblings_to_one() {
        // Goal: a client that read both siblings replaces both with a single value.
        let (n1, n2) = (actor("n1"), actor("n2"));
        let mut replica1 = Versions::new();
        let mut replica2 = Versions::new();
        replica1.write(&VersionVector::new(), value("x"), &n1);
        replica2.write(&VersionVector::new(), value("y"), &n2);
        let read = merged(&replica1, &replica2);
        assert_eq!(read.sibling_count(), 2);

        replica2.write(&read.context(), value("xy"), &n2);
        replica1.merge(&replica2);
        assert_eq!(replica1, replica2);
        assert_eq!(texts(&replica1), vec![b"xy".as_ref()]);
    }

    #[test]
    fn a_delete_with_full_context_leaves_only_a_tombstone() {
        // Goal: a delete of everything read leaves one tombstone, which reads as not found.
        let n1 = actor("n1");
        let mut state = Versions::new();
        state.write(&VersionVector::new(), value("x"), &n1);
        state.write(&VersionVector::new(), value("y"), &n1);

        let dot = state.write(&state.context(), None, &n1);
        assert_eq!(state.siblings(), &[Sibling { dot, value: None }]);
        assert!(state.is_deleted());
        assert!(!state.is_empty());
        assert!(state.values().is_empty());
    }

    #[test]
    fn a_stale_replica_merging_a_tombstone_loses_the_deleted_value() {
        // Goal: a delete reaches a replica that still holds the value and the value goes,
        // whichever side merges into which, so the deleted key does not come back.
        let (n1, n2) = (actor("n1"), actor("n2"));
        let mut fresh = Versions::new();
        fresh.write(&VersionVector::new(), value("x"), &n1);
        let mut stale = fresh.clone();
        fresh.write(&fresh.context(), None, &n2);

        let pulled = merged(&stale, &fresh);
        stale.merge(&fresh);
        assert!(stale.is_deleted());
        assert_eq!(stale.sibling_count(), 1);
        assert_eq!(pulled, merged(&fresh, &pulled));
    }

    #[test]
    fn a_value_written_concurrently_with_a_delete_survives_it() {
        // Goal: a delete only removes what its client saw; a concurrent put still reads.
        let (n1, n2) = (actor("n1"), actor("n2"));
        let mut replica1 = Versions::new();
        replica1.write(&VersionVector::new(), value("x"), &n1);
        let mut replica2 = replica1.clone();

        replica1.write(&replica1.context(), None, &n1);
        replica2.write(&replica2.context(), value("y"), &n2);
        replica1.merge(&replica2);
        assert!(!replica1.is_deleted());
        assert_eq!(texts(&replica1), vec![b"y".as_ref()]);
    }

    #[test]
    fn a_new_dot_is_above_what_the_context_saw_of_its_actor() {
        // Goal: a coordinator whose state lost the key still issues a dot above the context's.
        let n1 = actor("n1");
        let mut before = Versions::new();
        before.write(&VersionVector::new(), value("x"), &n1);
        before.write(&VersionVector::new(), value("y"), &n1);

        let mut lost = Versions::new();
        assert!(lost.forgot_own_writes(&before.context(), &n1));
        let dot = lost.write(&before.context(), value("z"), &n1);
        assert_eq!(dot.counter, 3);
        assert!(!lost.forgot_own_writes(&before.context(), &n1));
    }

    #[test]
    fn two_clients_with_stale_reads_never_make_more_than_two_siblings() {
        // Goal: the sibling bound in its plainest form. Method: both clients read, then both
        // write, so each write misses the other's latest; this repeats many times.
        let n1 = actor("n1");
        let mut state = Versions::new();
        for round in 0..50 {
            let context_a = state.context();
            let context_b = state.context();
            state.write(&context_a, value(&format!("a{round}")), &n1);
            state.write(&context_b, value(&format!("b{round}")), &n1);
            assert_eq!(state.sibling_count(), 2);
        }
    }

    #[test]
    fn a_context_survives_encode_and_decode() -> Result<(), VersionError> {
        // Goal: the opaque bytes a client carries decode to the same context.
        let (n1, n2) = (actor("n1"), Actor::new(NodeId("n2".to_owned()), 7));
        let mut state = Versions::new();
        state.write(&VersionVector::new(), value("x"), &n1);
        state.write(&VersionVector::new(), value("y"), &n2);

        let context = state.context();
        assert_eq!(VersionVector::decode(&context.encode())?, context);
        assert_eq!(
            VersionVector::decode(&VersionVector::new().encode())?,
            VersionVector::new()
        );
        Ok(())
    }

    #[test]
    fn decoding_garbage_bytes_returns_an_error() {
        // Goal: every kind of bad input is refused with an error, never a panic.
        let good = {
            let mut vector = VersionVector::new();
            vector.raise(&actor("n1"), 3);
            vector.encode()
        };
        let mut trailing = good.clone();
        trailing.push(0);
        let cases: Vec<&[u8]> = vec![
            b"",
            b"\xc1",
            b"hello world",
            &good[..good.len() - 1],
            &trailing,
            // An array that claims four billion entries and holds none.
            b"\xdd\xff\xff\xff\xff",
        ];
        for bytes in cases {
            assert!(VersionVector::decode(bytes).is_err(), "decoded {bytes:?}");
        }
    }

    #[test]
    fn decoding_a_context_with_too_many_actors_is_refused() {
        // Goal: a context past MAX_CONTEXT_ACTORS is refused with the numbers in the error.
        let mut vector = VersionVector::new();
        for node in 0..=MAX_CONTEXT_ACTORS {
            vector.raise(&actor(&format!("n{node}")), 1);
        }
        let error = VersionVector::decode(&vector.encode()).expect_err("too many actors");
        assert!(matches!(
            error,
            VersionError::TooManyActors { actors, max: MAX_CONTEXT_ACTORS }
                if actors == MAX_CONTEXT_ACTORS + 1
        ));
    }

    #[test]
    fn deserializing_a_broken_state_restores_the_invariants() {
        // Goal: a state read from a peer with unsorted, duplicated or uncovered siblings is
        // put back in canonical form, so it compares and merges like a well-formed one.
        let n1 = actor("n1");
        let sibling = |counter| Sibling {
            dot: Dot {
                actor: n1.clone(),
                counter,
            },
            value: None,
        };
        let raw = RawVersions {
            clock: vec![(n1.clone(), 0)].into(),
            siblings: vec![sibling(2), sibling(1), sibling(2), sibling(0)],
        };
        let state = Versions::from(raw);

        assert_eq!(state.clock().get(&n1), 2);
        assert_eq!(state.siblings(), &[sibling(1), sibling(2)]);
    }

    // ---- Property tests over states built by random histories ----

    /// Where the context of a write comes from.
    #[derive(Clone, Debug)]
    enum ContextFrom {
        /// A blind put.
        Nothing,
        /// A fresh read of one replica (maybe not the coordinator, maybe ahead of it).
        Replica(usize),
        /// A context read earlier and held while other writes went on: a stale read.
        Earlier(Index),
    }

    #[derive(Clone, Debug)]
    enum Step {
        Write {
            coordinator: usize,
            context: ContextFrom,
            value: Option<u8>,
        },
        Merge {
            from: usize,
            to: usize,
        },
        /// The replica lost its data dir and restarts empty with a new epoch.
        Wipe {
            replica: usize,
        },
    }

    fn context_from() -> impl Strategy<Value = ContextFrom> {
        prop_oneof![
            Just(ContextFrom::Nothing),
            (0usize..4).prop_map(ContextFrom::Replica),
            any::<Index>().prop_map(ContextFrom::Earlier),
        ]
    }

    fn step() -> impl Strategy<Value = Step> {
        let write = (0usize..4, context_from(), proptest::option::of(0u8..4)).prop_map(
            |(coordinator, context, value)| Step::Write {
                coordinator,
                context,
                value,
            },
        );
        let merge = (0usize..4, 0usize..4).prop_map(|(from, to)| Step::Merge { from, to });
        let wipe = (0usize..4).prop_map(|replica| Step::Wipe { replica });
        prop_oneof![4 => write, 4 => merge, 1 => wipe]
    }

    /// A cluster of replicas of one key, one actor each, replaying a history.
    struct Cluster {
        states: Vec<Versions>,
        actors: Vec<Actor>,
        contexts: Vec<VersionVector>,
    }

    impl Cluster {
        fn new(replicas: usize) -> Cluster {
            Cluster {
                states: vec![Versions::new(); replicas],
                actors: (0..replicas).map(|r| actor(&format!("n{r}"))).collect(),
                contexts: Vec::new(),
            }
        }

        fn apply(&mut self, step: &Step) {
            let n = self.states.len();
            match step {
                Step::Write {
                    coordinator,
                    context,
                    value,
                } => {
                    let context = self.context(context);
                    let value = value.map(|v| Bytes::from(vec![v]));
                    let c = coordinator % n;
                    self.states[c].write(&context, value, &self.actors[c]);
                }
                Step::Merge { from, to } => {
                    let from = self.states[from % n].clone();
                    self.states[to % n].merge(&from);
                }
                Step::Wipe { replica } => {
                    self.states[replica % n] = Versions::new();
                    self.actors[replica % n].epoch += 1;
                }
            }
        }

        fn context(&mut self, from: &ContextFrom) -> VersionVector {
            let context = match from {
                ContextFrom::Nothing => VersionVector::new(),
                ContextFrom::Replica(r) => self.states[r % self.states.len()].context(),
                ContextFrom::Earlier(_) if self.contexts.is_empty() => VersionVector::new(),
                ContextFrom::Earlier(index) => index.get(&self.contexts).clone(),
            };
            self.contexts.push(context.clone());
            context
        }
    }

    /// Every state any replica held during a random history on 2 to 4 replicas.
    fn reachable_states() -> impl Strategy<Value = Vec<Versions>> {
        (2usize..=4, collection::vec(step(), 0..30)).prop_map(|(replicas, steps)| {
            let mut cluster = Cluster::new(replicas);
            let mut seen = cluster.states.clone();
            for step in &steps {
                cluster.apply(step);
                seen.extend(cluster.states.iter().cloned());
            }
            seen
        })
    }

    /// The sibling-bound cluster: 3 replicas, writes acknowledged by 2, reads from 2.
    struct Quorum {
        states: Vec<Versions>,
        held: [Option<VersionVector>; 2],
        writes: u32,
    }

    impl Quorum {
        fn new() -> Quorum {
            Quorum {
                states: vec![Versions::new(); 3],
                held: [None, None],
                writes: 0,
            }
        }

        /// The client reads a quorum of two replicas, or writes what it read through
        /// `first`, which replicates to `second` before the write is acknowledged.
        fn advance(&mut self, client: usize, first: usize, second: usize) -> usize {
            match self.held[client].take() {
                None => {
                    let read = merged(&self.states[first], &self.states[second]);
                    self.held[client] = Some(read.context());
                    read.sibling_count()
                }
                Some(context) => {
                    self.writes += 1;
                    let value = Some(Bytes::from(self.writes.to_be_bytes().to_vec()));
                    let coordinator = actor(&format!("n{first}"));
                    self.states[first].write(&context, value, &coordinator);
                    let written = self.states[first].clone();
                    self.states[second].merge(&written);
                    written.sibling_count()
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn merge_is_commutative(
            states in reachable_states(), a in any::<Index>(), b in any::<Index>(),
        ) {
            // Goal: the order in which two replicas exchange states does not matter.
            let (a, b) = (a.get(&states), b.get(&states));
            prop_assert_eq!(merged(a, b), merged(b, a));
        }

        #[test]
        fn merge_is_associative(
            states in reachable_states(),
            a in any::<Index>(), b in any::<Index>(), c in any::<Index>(),
        ) {
            // Goal: how merges are grouped (via hints, repair or anti-entropy) does not matter.
            let (a, b, c) = (a.get(&states), b.get(&states), c.get(&states));
            prop_assert_eq!(merged(&merged(a, b), c), merged(a, &merged(b, c)));
        }

        #[test]
        fn merge_is_idempotent(states in reachable_states(), a in any::<Index>()) {
            // Goal: receiving the same state again changes nothing.
            let a = a.get(&states);
            prop_assert_eq!(&merged(a, a), a);
        }

        #[test]
        fn descends_holds_exactly_when_a_merge_would_change_nothing(
            states in reachable_states(), a in any::<Index>(), b in any::<Index>(),
        ) {
            // Goal: read repair may trust descends to decide that a replica is not behind.
            let (a, b) = (a.get(&states), b.get(&states));
            prop_assert_eq!(a.descends(b), &merged(a, b) == a);
            prop_assert!(merged(a, b).descends(a) && merged(a, b).descends(b));
        }

        #[test]
        fn a_state_survives_serialization(states in reachable_states(), a in any::<Index>()) {
            // Goal: what a replica stores or ships reads back as the same state.
            let a = a.get(&states);
            let bytes = rmp_serde::to_vec(a).expect("serialize");
            let back: Versions = rmp_serde::from_slice(&bytes).expect("deserialize");
            prop_assert_eq!(&back, a);
            let context = VersionVector::decode(&a.context().encode()).ok();
            prop_assert_eq!(context, Some(a.context()));
        }

        #[test]
        fn decoding_random_bytes_never_panics(bytes in collection::vec(any::<u8>(), 0..64)) {
            // Goal: whatever a client sends as a context, decode answers Ok or Err.
            let _ = VersionVector::decode(&bytes);
        }

        #[test]
        fn two_clients_doing_read_modify_write_keep_at_most_two_siblings(
            steps in collection::vec((0usize..2, 0usize..3, 1usize..3, any::<bool>()), 1..80),
        ) {
            // Goal: the sibling bound of the Versions docs, with C = 2 clients. Method: N = 3,
            // R = W = 2; each step moves one client a phase on (read, then write) or runs
            // anti-entropy, so reads often miss the other client's writes.
            let mut quorum = Quorum::new();
            for (client, first, skip, anti_entropy) in steps {
                let second = (first + skip) % 3;
                if anti_entropy {
                    let from = quorum.states[first].clone();
                    quorum.states[second].merge(&from);
                    continue;
                }
                let seen = quorum.advance(client, first, second);
                prop_assert!(seen <= 2, "a read or write saw {} siblings", seen);
                for state in &quorum.states {
                    prop_assert!(state.sibling_count() <= 2);
                }
            }
        }
    }
}
