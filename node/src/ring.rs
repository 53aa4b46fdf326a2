//! The hash ring: which partition a key lives in, and which nodes hold a partition.
//!
//! The key space is cut into Q equal partitions (Q a power of two, fixed when the cluster is
//! created). A key's partition is the top log2(Q) bits of its xxh3 hash. Every partition has
//! one owner, and its preference list walks clockwise from it, taking each owner not taken
//! yet: the first N are the home replicas, the rest are fallbacks, in order.
//!
//! # How owners are chosen
//!
//! Ownership is a pure function of the member *set*, so every node that agrees on membership
//! agrees on placement without talking. Members are sorted first, and every tie is broken by
//! partition and member index, never by input order or by a `HashMap`.
//!
//! 1. **Affinity.** Each (partition, member) pair gets a score: the xxh3 hash of the member's
//!    name seeded with the partition number (highest-random-weight, or rendezvous, hashing).
//!    A member's scores do not depend on who else is in the cluster, so a join or leave only
//!    disturbs the pairs of the member that came or went.
//! 2. **Balanced greedy claim.** All pairs are visited in descending score. A pair claims its
//!    partition if the partition is free and the member is under its quota: floor(Q/S), with
//!    the first Q mod S members to reach it allowed one more. HRW alone is only balanced on
//!    average; the quota makes it exact, at the price of a short cascade on a join (members
//!    that lost more or fewer partitions to the newcomer than their quota shrank spill or
//!    take a few more), measured at 1.1-1.3x the ideal moves on its own.
//! 3. **Spread.** The first visit also refuses a pair whose member already owns a partition
//!    less than W = min(N, S) steps away (W >= 2 once S >= 2), so that W consecutive
//!    partitions tend to have W distinct owners and a partition's home replicas are simply
//!    the next W owners. That keeps each node's replica load near W * Q / S. A second visit
//!    relaxes this to "not adjacent", a third drops it, so every partition ends up owned.
//! 4. **Repair.** A partition left next to one with the same owner swaps owners with another
//!    partition. A swap keeps the balance; the one chosen removes the most clashes and, among
//!    those, gives up the least affinity, so it is the swap HRW itself would most nearly have
//!    made and tends to recur after a membership change. If swaps ever got stuck, the owners
//!    would be laid out by interleaving, which provably separates neighbours
//!    (`Layout::interleave`).
//!
//! Adjacent partitions never share an owner once S >= 2. The wider window of W distinct
//! owners is best effort: the greedy claim honours it almost everywhere (all but a few of
//! 256 windows from S = N + 2 on), while repairing every window clash too was measured to
//! cost 20-50% more moves for a slightly flatter replica load.
//!
//! Measured with Q = 256, N = 3 and S = 3..8 over 200 sets of names, a join (S -> S + 1) or
//! a leave (S + 1 -> S) moves on average about 1.4x the ideal Q/(S+1) partitions, 2.0x at
//! worst; the tests pin a bound of 2x + Q/32. Two members can only alternate, so 2 <-> 3
//! costs about 2x. A naive `p % S` ring moves S/(S+1) of all partitions.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::NodeId;

/// Partitions in a new cluster's ring. 256 gives a cluster of up to ~64 nodes at least four
/// partitions each, so a join or leave moves data in small slices.
pub const DEFAULT_PARTITIONS: u32 = 256;

/// Most partitions a ring may have. Construction sorts Q*S affinities and keeps Q*S node ids
/// of preference lists; at 4096 (16x the default) and 64 nodes that is about 15 MB and 35 ms.
pub const MAX_PARTITIONS: u32 = 4096;

/// Upper bound on repair sweeps over the ring. Each accepted swap strictly removes a clash, so
/// the sweeps end long before this in practice; the bound only turns a bug into a fallback.
const MAX_REPAIR_SWEEPS: usize = 64;

/// Marks a partition no member has claimed yet during construction.
const UNOWNED: usize = usize::MAX;

/// A key's position on the ring: xxh3, whose output is fixed by its specification, unlike
/// std's `DefaultHasher`, which may change between Rust releases and would move every key.
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// Why a ring could not be built. Every variant is a configuration mistake a caller can
/// report as is.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("partition count {partitions} is not a nonzero power of two")]
    PartitionsNotPowerOfTwo { partitions: u32 },
    #[error("partition count {partitions} exceeds the maximum of {max}")]
    TooManyPartitions { partitions: u32, max: u32 },
    #[error("a ring needs at least one member")]
    NoMembers,
    #[error("member {node} is listed more than once")]
    DuplicateMember { node: NodeId },
    #[error("replica count n must be at least 1")]
    ZeroReplicas,
}

/// Placement of Q partitions over a set of members; see the module docs for the algorithm.
#[derive(Clone, Debug)]
pub struct Ring {
    partitions: u32,
    replicas: usize,
    members: Vec<NodeId>,
    /// Index into `members` of each partition's owner.
    owners: Vec<usize>,
    /// One row of `members.len()` node ids per partition, precomputed because every request
    /// needs its preference list.
    preferences: Vec<NodeId>,
}

impl Ring {
    /// A hash of what decides placement: Q, N and the members. Nodes with different
    /// fingerprints would disagree on every key's home replicas.
    pub fn fingerprint(&self) -> u64 {
        let mut text = format!("{} {}", self.partitions, self.replicas);
        for member in &self.members {
            text.push(' ');
            text.push_str(&member.0);
        }
        key_hash(text.as_bytes())
    }

    /// Builds the ring for `members` (in any order) with `partitions` partitions and `n`
    /// replicas per key.
    pub fn new(members: &[NodeId], partitions: u32, n: usize) -> Result<Ring, RingError> {
        let members = sorted_members(members)?;
        check_shape(partitions, n)?;

        let mut layout = Layout::new(&members, partitions as usize, n);
        layout.claim_greedily();
        layout.separate_neighbours();

        let preferences = layout.preference_lists(&members);
        Ok(Ring {
            partitions,
            replicas: n,
            members,
            owners: layout.owners,
            preferences,
        })
    }

    /// Q, the number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// N, the number of home replicas each key wants (fewer exist when S < N).
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The members, sorted.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// The partition holding `key`: the top log2(Q) bits of its hash, so partition p covers
    /// one contiguous arc of the hash space.
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        let bits = self.partitions.trailing_zeros();

        // With Q = 1 the shift would be 64, which `>>` rejects; everything is partition 0.
        let top = key_hash(key).checked_shr(64 - bits).unwrap_or(0);
        u32::try_from(top).expect("a shifted hash has only log2(Q) <= 12 bits")
    }

    /// The member that owns `partition`. Panics if `partition >= partitions()`.
    pub fn owner(&self, partition: u32) -> &NodeId {
        &self.members[self.owners[self.index(partition)]]
    }

    /// Every member exactly once, in the order that serves `partition`: its owner, then each
    /// new owner met walking clockwise, then members owning nothing (possible only when
    /// Q < S), by affinity. Panics if `partition >= partitions()`.
    pub fn preference_list(&self, partition: u32) -> &[NodeId] {
        let width = self.members.len();
        let start = self.index(partition) * width;
        &self.preferences[start..start + width]
    }

    /// The first min(N, S) entries of the preference list: the replicas that store the
    /// partition's keys and count toward a strict quorum.
    pub fn home_replicas(&self, partition: u32) -> &[NodeId] {
        &self.preference_list(partition)[..self.home_count()]
    }

    /// The rest of the preference list, in the order a sloppy quorum should try them.
    pub fn fallbacks(&self, partition: u32) -> &[NodeId] {
        &self.preference_list(partition)[self.home_count()..]
    }

    /// The partitions `node` owns, ascending; empty for a non-member.
    pub fn owned_partitions(&self, node: &NodeId) -> Vec<u32> {
        let Ok(member) = self.members.binary_search(node) else {
            return Vec::new();
        };
        (0..self.partitions)
            .filter(|&p| self.owners[p as usize] == member)
            .collect()
    }

    /// Whether `node` is one of `partition`'s home replicas.
    pub fn is_home(&self, partition: u32, node: &NodeId) -> bool {
        self.home_replicas(partition).contains(node)
    }

    fn home_count(&self) -> usize {
        self.replicas.min(self.members.len())
    }

    fn index(&self, partition: u32) -> usize {
        assert!(
            partition < self.partitions,
            "partition {partition} out of range for a ring of {}",
            self.partitions
        );
        partition as usize
    }
}

/// Sorts the members so placement depends only on the set, rejecting an empty or repeated one.
fn sorted_members(members: &[NodeId]) -> Result<Vec<NodeId>, RingError> {
    let mut sorted = members.to_vec();
    sorted.sort();

    if sorted.is_empty() {
        return Err(RingError::NoMembers);
    }
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(RingError::DuplicateMember {
            node: pair[0].clone(),
        });
    }
    Ok(sorted)
}

fn check_shape(partitions: u32, n: usize) -> Result<(), RingError> {
    // A power of two lets a key's partition be the top bits of its hash, so every partition
    // covers exactly the same share of the hash space.
    if !partitions.is_power_of_two() {
        return Err(RingError::PartitionsNotPowerOfTwo { partitions });
    }
    if partitions > MAX_PARTITIONS {
        return Err(RingError::TooManyPartitions {
            partitions,
            max: MAX_PARTITIONS,
        });
    }
    if n == 0 {
        return Err(RingError::ZeroReplicas);
    }
    Ok(())
}

/// How much `member` wants `partition`: independent of every other member, which is what
/// keeps placement stable when others come and go.
fn affinity(member: &NodeId, partition: usize) -> u64 {
    xxh3_64_with_seed(member.0.as_bytes(), partition as u64)
}

/// W = min(N, S), but at least 2 once S >= 2 so that neighbours always differ: how many
/// consecutive partitions should have distinct owners.
///
/// With S <= N the spread does not decide anything (every member is home to every
/// partition), yet keeping W at min(N, S) there was measured to save about 20% of the moves
/// of a 3 -> 4 join with N = 3: both rings then share one structure instead of two.
fn spread_window(n: usize, members: usize) -> usize {
    n.max(2).min(members)
}

/// How many partitions each member may still claim, so that every member ends with
/// floor(Q/S) or ceil(Q/S).
struct Quota {
    base: usize,
    extra_left: usize,
    load: Vec<usize>,
}

impl Quota {
    fn new(partitions: usize, members: usize) -> Quota {
        Quota {
            base: partitions / members,
            extra_left: partitions % members,
            load: vec![0; members],
        }
    }

    fn has_room(&self, member: usize) -> bool {
        let load = self.load[member];
        load < self.base || (load == self.base && self.extra_left > 0)
    }

    fn take(&mut self, member: usize) {
        if self.load[member] == self.base {
            self.extra_left -= 1;
        }
        self.load[member] += 1;
    }
}

/// Clashes a partition has with nearby partitions of the same owner: `adjacent` at distance
/// one (forbidden), `windowed` at distance 2..W (tolerated).
#[derive(Clone, Copy, Debug, Default)]
struct Clashes {
    adjacent: usize,
    windowed: usize,
}

impl std::ops::Add for Clashes {
    type Output = Clashes;

    fn add(self, other: Clashes) -> Clashes {
        Clashes {
            adjacent: self.adjacent + other.adjacent,
            windowed: self.windowed + other.windowed,
        }
    }
}

/// A candidate repair swap; the derived `Ord` puts the most wanted first: most adjacency
/// clashes removed, then most window clashes removed, then least affinity given up, then the
/// lowest partition as a deterministic tie-break.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Swap {
    adjacent_change: isize,
    windowed_change: isize,
    affinity_lost: i128,
    partner: usize,
}

/// Ownership under construction: member indices per partition plus the affinity table.
struct Layout {
    partitions: usize,
    members: usize,
    /// W - 1 (see [`spread_window`]): how far apart two partitions of one member should be,
    /// at best.
    reach: usize,
    /// Row-major, one row of `members` affinities per partition.
    affinity: Vec<u64>,
    owners: Vec<usize>,
}

impl Layout {
    fn new(members: &[NodeId], partitions: usize, n: usize) -> Layout {
        let affinity = (0..partitions)
            .flat_map(|p| members.iter().map(move |m| affinity(m, p)))
            .collect();
        Layout {
            partitions,
            members: members.len(),
            reach: spread_window(n, members.len()) - 1,
            affinity,
            owners: vec![UNOWNED; partitions],
        }
    }

    fn affinity(&self, partition: usize, member: usize) -> u64 {
        self.affinity[partition * self.members + member]
    }

    /// Steps 2 and 3 of the module docs: claim in descending affinity, first keeping each
    /// member W apart from itself, then only apart from its neighbours, then anywhere.
    fn claim_greedily(&mut self) {
        let mut order: Vec<(u64, usize, usize)> = (0..self.partitions)
            .flat_map(|p| (0..self.members).map(move |m| (p, m)))
            .map(|(p, m)| (self.affinity(p, m), p, m))
            .collect();
        order.sort_unstable_by(|a, b| b.cmp(a));

        let mut quota = Quota::new(self.partitions, self.members);
        for spacing in [self.reach, 1.min(self.reach), 0] {
            for &(_, partition, member) in &order {
                let free = self.owners[partition] == UNOWNED;
                if free && quota.has_room(member) && !self.near(partition, member, spacing) {
                    quota.take(member);
                    self.owners[partition] = member;
                }
            }
        }
        debug_assert!(self.owners.iter().all(|&o| o != UNOWNED), "quota covers Q");
    }

    /// Whether `member` owns a partition within `spacing` steps of `partition`.
    fn near(&self, partition: usize, member: usize, spacing: usize) -> bool {
        self.neighbours(partition, spacing)
            .any(|(_, other)| self.owners[other] == member)
    }

    /// (distance, partition) for each partition within `spacing` steps either way, each
    /// listed once even on rings so small that both directions meet.
    fn neighbours(&self, partition: usize, spacing: usize) -> impl Iterator<Item = (usize, usize)> {
        let q = self.partitions;
        let spacing = spacing.min(q / 2);
        (1..=spacing).flat_map(move |d| {
            let ahead = (partition + d) % q;
            let behind = (partition + q - d) % q;
            let both_ways = (ahead != behind).then_some((d, behind));
            std::iter::once((d, ahead)).chain(both_ways)
        })
    }

    fn clashes(&self, partition: usize) -> Clashes {
        let owner = self.owners[partition];
        let mut clashes = Clashes::default();
        for (distance, other) in self.neighbours(partition, self.reach) {
            if self.owners[other] == owner {
                match distance {
                    1 => clashes.adjacent += 1,
                    _ => clashes.windowed += 1,
                }
            }
        }
        clashes
    }

    /// Step 4 of the module docs: swap owners until no neighbours share one.
    fn separate_neighbours(&mut self) {
        if self.members < 2 {
            return;
        }
        for _ in 0..MAX_REPAIR_SWEEPS {
            if !self.repair_sweep() {
                break;
            }
        }
        if self.has_adjacent_clash() {
            self.interleave();
        }
        assert!(
            !self.has_adjacent_clash(),
            "interleaving separates neighbours"
        );
    }

    fn has_adjacent_clash(&self) -> bool {
        (0..self.partitions).any(|p| self.clashes(p).adjacent > 0)
    }

    /// One pass over the ring, swapping away each adjacency clash it meets. Returns whether
    /// any swap was made.
    fn repair_sweep(&mut self) -> bool {
        let mut swapped = false;
        for partition in 0..self.partitions {
            if self.clashes(partition).adjacent == 0 {
                continue;
            }
            if let Some(partner) = self.best_swap(partition) {
                self.owners.swap(partition, partner);
                swapped = true;
            }
        }
        swapped
    }

    /// The swap partner that removes at least one adjacency clash around `partition`, ranked
    /// as [`Swap`] says. Each accepted swap lowers the total clash count, so repair ends.
    fn best_swap(&mut self, partition: usize) -> Option<usize> {
        let mut best: Option<Swap> = None;
        for partner in 0..self.partitions {
            let candidate = self.try_swap(partition, partner);
            if candidate.is_some() && (best.is_none() || candidate < best) {
                best = candidate;
            }
        }
        best.map(|swap| swap.partner)
    }

    /// Scores swapping the owners of `a` and `b`, or `None` if it does not reduce the
    /// adjacency clashes. Swapping and swapping back is simpler than predicting the clashes.
    fn try_swap(&mut self, a: usize, b: usize) -> Option<Swap> {
        let (owner_a, owner_b) = (self.owners[a], self.owners[b]);
        if owner_a == owner_b {
            return None;
        }

        // The pair (a, b) itself never clashes, before or after, as the owners differ.
        let before = self.clashes(a) + self.clashes(b);
        self.owners.swap(a, b);
        let after = self.clashes(a) + self.clashes(b);
        self.owners.swap(a, b);
        if after.adjacent >= before.adjacent {
            return None;
        }
        let change = |after: usize, before: usize| after as isize - before as isize;

        let kept = self.affinity(a, owner_a) as i128 + self.affinity(b, owner_b) as i128;
        let traded = self.affinity(a, owner_b) as i128 + self.affinity(b, owner_a) as i128;
        Some(Swap {
            adjacent_change: change(after.adjacent, before.adjacent),
            windowed_change: change(after.windowed, before.windowed),
            affinity_lost: kept - traded,
            partner: b,
        })
    }

    /// Last resort, keeping every member's count: lay members out, most partitions first,
    /// over the even partitions and then the odd ones.
    ///
    /// Neighbours differ in parity, so a member can only sit next to itself where its run
    /// crosses from the evens to the odds. With S >= 2 and Q even, no member holds more than
    /// ceil(Q/S) <= Q/2. The first member starts at partition 0 and fits in the evens, so it
    /// never crosses. A later member crossing from even 2k (k >= 1) as far as odd 2k - 1
    /// would hold Q/2 - k + k = Q/2 partitions; then so would the first (counts are sorted),
    /// filling every even and leaving none to cross from. The last odd partition wraps to
    /// partition 0, held by the first member, which is not the last one.
    fn interleave(&mut self) {
        let mut counts = vec![0usize; self.members];
        for &owner in &self.owners {
            counts[owner] += 1;
        }
        let mut by_count: Vec<usize> = (0..self.members).collect();
        by_count.sort_by_key(|&m| (std::cmp::Reverse(counts[m]), m));

        let slots = (0..self.partitions)
            .step_by(2)
            .chain((1..self.partitions).step_by(2));
        let owners = by_count
            .iter()
            .flat_map(|&m| std::iter::repeat_n(m, counts[m]));
        for (slot, owner) in slots.zip(owners) {
            self.owners[slot] = owner;
        }
    }

    /// Every partition's preference list, flattened into rows of S node ids.
    fn preference_lists(&self, members: &[NodeId]) -> Vec<NodeId> {
        (0..self.partitions)
            .flat_map(|p| self.preference_order(p))
            .map(|m| members[m].clone())
            .collect()
    }

    /// Member indices in the order that serves `partition` (see [`Ring::preference_list`]).
    fn preference_order(&self, partition: usize) -> Vec<usize> {
        let mut taken = vec![false; self.members];
        let mut order = Vec::with_capacity(self.members);
        for step in 0..self.partitions {
            let owner = self.owners[(partition + step) % self.partitions];
            if !taken[owner] {
                taken[owner] = true;
                order.push(owner);
            }
            if order.len() == self.members {
                return order;
            }
        }

        let mut idle: Vec<usize> = (0..self.members).filter(|&m| !taken[m]).collect();
        idle.sort_by_key(|&m| (std::cmp::Reverse(self.affinity(partition, m)), m));
        order.extend(idle);
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Replicas per key in the move and load measurements: the usual Dynamo N.
    const N: usize = 3;

    /// Name families for the measurements, so a bound is not tuned to one lucky set of names.
    const FAMILIES: u32 = 12;

    type TestResult = Result<(), RingError>;

    fn cluster(family: u32, size: usize) -> Vec<NodeId> {
        (0..size)
            .map(|i| NodeId(format!("f{family}-node-{i}.db.internal:7400")))
            .collect()
    }

    fn node(name: &str) -> NodeId {
        NodeId(name.to_string())
    }

    /// Partitions whose owner differs between two rings with the same Q.
    fn moved(before: &Ring, after: &Ring) -> usize {
        (0..before.partitions())
            .filter(|&p| before.owner(p) != after.owner(p))
            .count()
    }

    /// Most partitions a join to, or a leave from, a ring of `larger` members may move.
    ///
    /// The ideal is Q / larger: only the newcomer's (or the leaver's) share. Measured worst
    /// cases over 200 name families with Q = 256, N = 3 and larger = 4..9 were 1.7-2.0x that,
    /// the excess being the quota cascade described in the module docs, so the bound is
    /// twice the ideal plus Q/32 of slack. A naive `p % S` ring moves S/(S+1) of all
    /// partitions, at least 3x the ideal, and fails it (see the test below).
    fn move_bound(partitions: u32, larger: usize) -> usize {
        let partitions = partitions as usize;
        2 * partitions / larger + partitions / 32
    }

    /// Partitions moved when the last of `members` joins the others.
    fn join_moves(members: &[NodeId], partitions: u32) -> Result<usize, RingError> {
        let larger = Ring::new(members, partitions, N)?;
        let smaller = Ring::new(&members[..members.len() - 1], partitions, N)?;
        Ok(moved(&smaller, &larger))
    }

    /// Partitions moved when member `gone` leaves `members`.
    fn leave_moves(members: &[NodeId], partitions: u32, gone: usize) -> Result<usize, RingError> {
        let mut rest = members.to_vec();
        rest.remove(gone);
        let larger = Ring::new(members, partitions, N)?;
        Ok(moved(&larger, &Ring::new(&rest, partitions, N)?))
    }

    /// How many partitions each member is a home replica for, in member order.
    fn replica_load(ring: &Ring) -> Vec<usize> {
        ring.members()
            .iter()
            .map(|m| {
                (0..ring.partitions())
                    .filter(|&p| ring.is_home(p, m))
                    .count()
            })
            .collect()
    }

    /// Windows of W consecutive partitions in which some owner appears twice.
    fn crowded_windows(ring: &Ring) -> usize {
        let q = ring.partitions();
        let width = ring.replicas().min(ring.members().len()).min(q as usize);
        (0..q)
            .filter(|&p| {
                let mut owners: Vec<&NodeId> =
                    (0..width as u32).map(|d| ring.owner((p + d) % q)).collect();
                owners.sort();
                owners.windows(2).any(|pair| pair[0] == pair[1])
            })
            .count()
    }

    fn assert_balanced(ring: &Ring) {
        let q = ring.partitions() as usize;
        let s = ring.members().len();
        for member in ring.members() {
            let owned = ring.owned_partitions(member).len();
            assert!(
                owned == q / s || owned == q.div_ceil(s),
                "{member} owns {owned} of {q} partitions with {s} members"
            );
        }
    }

    fn assert_neighbours_differ(ring: &Ring) {
        let q = ring.partitions();
        if ring.members().len() < 2 || q < 2 {
            return;
        }
        for p in 0..q {
            let next = (p + 1) % q;
            assert_ne!(ring.owner(p), ring.owner(next), "partitions {p} and {next}");
        }
    }

    fn assert_preference_lists_are_permutations(ring: &Ring) {
        let mut expected = ring.members().to_vec();
        expected.sort();
        for p in 0..ring.partitions() {
            let mut list = ring.preference_list(p).to_vec();
            assert_eq!(
                &list[0],
                ring.owner(p),
                "partition {p} starts with its owner"
            );
            list.sort();
            assert_eq!(list, expected, "partition {p} lists every member once");
        }
    }

    #[test]
    fn key_hash_is_xxh3_so_keys_never_move_between_builds() {
        // Goal: pin the hash to published xxh3 values, so swapping the hasher fails loudly.
        assert_eq!(key_hash(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(key_hash(b"quorumkv"), xxh3_64(b"quorumkv"));
    }

    #[test]
    fn partition_of_takes_the_top_bits_of_the_key_hash() -> TestResult {
        // Goal: a partition is a contiguous arc of hash space; check against the hash itself.
        let ring = Ring::new(&cluster(0, 3), DEFAULT_PARTITIONS, N)?;
        for key in [&b"a"[..], b"user:42", b"", &[0xff; 40]] {
            let expected = (key_hash(key) >> 56) as u32;
            assert_eq!(ring.partition_of(key), expected);
        }
        Ok(())
    }

    #[test]
    fn a_single_partition_ring_puts_every_key_in_partition_zero() -> TestResult {
        // Goal: Q = 1 must not overflow the shift; every key maps to partition 0.
        let ring = Ring::new(&cluster(0, 2), 1, N)?;
        assert_eq!(ring.partition_of(b"anything"), 0);
        assert_eq!(ring.preference_list(0).len(), 2);
        Ok(())
    }

    #[test]
    fn every_member_owns_floor_or_ceil_of_its_share() -> TestResult {
        // Goal: exact balance for many cluster sizes and partition counts, including Q < S.
        for size in 1..=24 {
            for bits in 0..=10 {
                let ring = Ring::new(&cluster(size as u32, size), 1 << bits, N)?;
                assert_balanced(&ring);
            }
        }
        Ok(())
    }

    #[test]
    fn adjacent_partitions_never_share_an_owner() -> TestResult {
        // Goal: the hard spread rule holds for every S >= 2 and every N, including N = 1.
        for size in 2..=12 {
            for n in 1..=5 {
                for bits in 1..=9 {
                    assert_neighbours_differ(&Ring::new(&cluster(7, size), 1 << bits, n)?);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn windows_of_n_partitions_mostly_have_n_distinct_owners() -> TestResult {
        // Goal: the best-effort spread holds almost everywhere once S > N. Measured worst
        // over these families with Q = 256, N = 3: 18 crowded windows at S = N + 1, where
        // the greedy claim is tightest, and at most 7 from S = N + 2 on. (At S = N every
        // member is a home replica of every partition, so crowding there costs nothing.)
        for family in 0..FAMILIES {
            for size in N + 1..=12 {
                let ring = Ring::new(&cluster(family, size), DEFAULT_PARTITIONS, N)?;
                let crowded = crowded_windows(&ring);
                let bound = if size == N + 1 { 256 / 8 } else { 256 / 16 };
                assert!(
                    crowded <= bound,
                    "S={size} family {family}: {crowded} crowded"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn home_replicas_are_distinct_and_number_min_n_s() -> TestResult {
        // Goal: a key is stored on min(N, S) different nodes, the rest are fallbacks.
        for size in 1..=8 {
            for n in 1..=5 {
                let ring = Ring::new(&cluster(1, size), 64, n)?;
                for p in 0..ring.partitions() {
                    let home = ring.home_replicas(p);
                    assert_eq!(home.len(), n.min(size));
                    assert_eq!(home.len() + ring.fallbacks(p).len(), size);
                    assert_eq!([home, ring.fallbacks(p)].concat(), ring.preference_list(p));
                }
                assert_preference_lists_are_permutations(&ring);
            }
        }
        Ok(())
    }

    #[test]
    fn preference_list_takes_new_owners_walking_clockwise() -> TestResult {
        // Goal: check the walk against a direct re-derivation from owner().
        let ring = Ring::new(&cluster(2, 6), 128, N)?;
        let q = ring.partitions();
        for p in 0..q {
            let mut walked: Vec<&NodeId> = Vec::new();
            for step in 0..q {
                let owner = ring.owner((p + step) % q);
                if !walked.contains(&owner) {
                    walked.push(owner);
                }
            }
            let listed: Vec<&NodeId> = ring.preference_list(p).iter().collect();
            assert_eq!(listed, walked, "partition {p}");
        }
        Ok(())
    }

    #[test]
    fn members_owning_nothing_still_appear_as_fallbacks() -> TestResult {
        // Goal: with Q < S some members own no partition; they must still be reachable.
        let ring = Ring::new(&cluster(3, 6), 4, N)?;
        assert_preference_lists_are_permutations(&ring);
        let idle = ring
            .members()
            .iter()
            .filter(|m| ring.owned_partitions(m).is_empty())
            .count();
        assert_eq!(idle, 2);
        Ok(())
    }

    #[test]
    fn owned_partitions_and_is_home_agree_with_the_lists() -> TestResult {
        // Goal: the convenience queries are consistent with owner() and home_replicas().
        let ring = Ring::new(&cluster(4, 5), DEFAULT_PARTITIONS, N)?;
        for member in ring.members() {
            for p in ring.owned_partitions(member) {
                assert_eq!(ring.owner(p), member);
                assert!(ring.is_home(p, member));
            }
        }
        assert!(ring.owned_partitions(&node("stranger")).is_empty());
        assert!(!ring.is_home(0, &node("stranger")));
        let total: usize = ring
            .members()
            .iter()
            .map(|m| ring.owned_partitions(m).len())
            .sum();
        assert_eq!(total, DEFAULT_PARTITIONS as usize);
        Ok(())
    }

    #[test]
    fn member_order_does_not_change_the_ring() -> TestResult {
        // Goal: placement depends only on the member set; reversing the input changes nothing.
        let members = cluster(5, 7);
        let mut reversed = members.clone();
        reversed.reverse();
        let a = Ring::new(&members, DEFAULT_PARTITIONS, N)?;
        let b = Ring::new(&reversed, DEFAULT_PARTITIONS, N)?;
        assert_eq!(a.members(), b.members());
        for p in 0..a.partitions() {
            assert_eq!(a.preference_list(p), b.preference_list(p));
        }
        Ok(())
    }

    #[test]
    fn a_join_moves_few_partitions() -> TestResult {
        // Goal: growing from S to S + 1 moves close to the newcomer's share, for S = 3..8.
        for family in 0..FAMILIES {
            for size in 4..=9 {
                let moves = join_moves(&cluster(family, size), DEFAULT_PARTITIONS)?;
                let bound = move_bound(DEFAULT_PARTITIONS, size);
                assert!(
                    moves <= bound,
                    "S={size} family {family}: {moves} > {bound}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn a_leave_moves_few_partitions() -> TestResult {
        // Goal: shrinking from S + 1 to S moves close to the leaver's share, whoever leaves.
        for family in 0..FAMILIES {
            for size in 4..=9 {
                for gone in 0..size {
                    let members = cluster(family, size);
                    let moves = leave_moves(&members, DEFAULT_PARTITIONS, gone)?;
                    let bound = move_bound(DEFAULT_PARTITIONS, size);
                    assert!(moves <= bound, "S={size} gone {gone}: {moves} > {bound}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn a_naive_modulo_ring_would_fail_the_move_bound() {
        // Goal: show the move bound has teeth: owner = p % S breaks it at every S tested.
        let q = DEFAULT_PARTITIONS;
        for size in 4..=9u32 {
            let naive = (0..q).filter(|p| p % (size - 1) != p % size).count();
            let bound = move_bound(q, size as usize);
            assert!(naive > bound, "S={size}: naive {naive} <= {bound}");
        }
    }

    #[test]
    fn replica_load_stays_near_its_share() -> TestResult {
        // Goal: each member is a home replica for about W * Q / S partitions. Measured worst
        // over these families was 5.2% off the share (6.9% up to S = 16); bound at 10%.
        for family in 0..FAMILIES {
            for size in N + 1..=12 {
                let ring = Ring::new(&cluster(family, size), DEFAULT_PARTITIONS, N)?;
                let share = (N * DEFAULT_PARTITIONS as usize) as f64 / size as f64;
                for (member, load) in ring.members().iter().zip(replica_load(&ring)) {
                    let off = (load as f64 - share).abs() / share;
                    assert!(
                        off <= 0.10,
                        "S={size} {member}: home for {load}, share {share}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn bad_shapes_are_refused_with_their_reason() {
        // Goal: each configuration mistake maps to its own variant.
        let two = cluster(0, 2);
        let cases = [
            (Ring::new(&two, 0, N), "PartitionsNotPowerOfTwo"),
            (Ring::new(&two, 96, N), "PartitionsNotPowerOfTwo"),
            (Ring::new(&two, MAX_PARTITIONS * 2, N), "TooManyPartitions"),
            (Ring::new(&[], 64, N), "NoMembers"),
            (
                Ring::new(&[node("a"), node("b"), node("a")], 64, N),
                "DuplicateMember",
            ),
            (Ring::new(&two, 64, 0), "ZeroReplicas"),
        ];
        for (result, variant) in cases {
            let error = result.expect_err(variant);
            assert!(
                format!("{error:?}").starts_with(variant),
                "{error:?} is not {variant}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn asking_for_a_partition_past_the_end_is_a_bug() {
        // Goal: an out-of-range partition is a caller bug and panics with a clear message.
        let ring = Ring::new(&cluster(0, 3), 16, N).expect("valid ring");
        ring.owner(16);
    }

    #[test]
    fn interleaving_separates_neighbours_for_any_quota_counts() {
        // Goal: the last-resort layout keeps counts and separates neighbours, even starting
        // from the worst layout (each member's partitions in one run).
        for members in 2..=9usize {
            for bits in 1..=8 {
                let q = 1usize << bits;
                let mut layout = Layout::new(&cluster(9, members), q, N);
                layout.owners = (0..q).map(|p| p * members / q).collect();
                let counts_before = owner_counts(&layout);

                layout.interleave();
                assert_eq!(owner_counts(&layout), counts_before);
                assert!(!layout.has_adjacent_clash(), "S={members} Q={q}");
            }
        }
    }

    fn owner_counts(layout: &Layout) -> Vec<usize> {
        let mut counts = vec![0; layout.members];
        for &owner in &layout.owners {
            counts[owner] += 1;
        }
        counts
    }

    #[test]
    #[ignore = "prints measurements; run with --ignored --nocapture"]
    fn print_move_counts() -> TestResult {
        // Goal: show the move counts the bounds above were chosen from.
        for partitions in [64, 256, 1024] {
            for size in 3..=12 {
                print_moves_for(partitions, size)?;
            }
        }
        Ok(())
    }

    #[test]
    #[ignore = "prints measurements; run with --ignored --nocapture"]
    fn print_spread() -> TestResult {
        // Goal: show the crowded-window and replica-load numbers the bounds were chosen from.
        for size in 2..=16 {
            let (mut crowded, mut off) = (0, 0.0f64);
            for family in 0..FAMILIES {
                let ring = Ring::new(&cluster(family, size), DEFAULT_PARTITIONS, N)?;
                crowded = crowded.max(crowded_windows(&ring));
                let share = (N.min(size) * DEFAULT_PARTITIONS as usize) as f64 / size as f64;
                for load in replica_load(&ring) {
                    off = off.max((load as f64 - share).abs() / share);
                }
            }
            println!("S={size} worst crowded windows={crowded} worst replica load off={off:.3}");
        }
        Ok(())
    }

    fn print_moves_for(partitions: u32, larger: usize) -> TestResult {
        let (mut joins, mut leaves) = (Vec::new(), Vec::new());
        for family in 0..FAMILIES {
            let members = cluster(family, larger);
            joins.push(join_moves(&members, partitions)?);
            for gone in 0..larger {
                leaves.push(leave_moves(&members, partitions, gone)?);
            }
        }
        let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len() as f64;
        let worst = |v: &[usize]| v.iter().copied().max().unwrap_or(0);
        println!(
            "Q={partitions} S={}<->{larger} ideal={:.1} join mean={:.1} worst={} \
             leave mean={:.1} worst={} bound={}",
            larger - 1,
            f64::from(partitions) / larger as f64,
            mean(&joins),
            worst(&joins),
            mean(&leaves),
            worst(&leaves),
            move_bound(partitions, larger),
        );
        Ok(())
    }

    /// 1..=10 distinct member names, in arbitrary order.
    fn member_sets() -> impl Strategy<Value = Vec<NodeId>> {
        prop::collection::btree_set("[a-z0-9.:-]{1,12}", 1..=10)
            .prop_map(|names| names.into_iter().map(NodeId).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn any_ring_is_balanced_spread_and_complete(
            members in member_sets(),
            bits in 0u32..=9,
            n in 1usize..=5,
        ) {
            // Goal: the structural promises hold for arbitrary names, sizes and N.
            let ring = Ring::new(&members, 1 << bits, n).expect("valid shape");
            assert_balanced(&ring);
            assert_neighbours_differ(&ring);
            assert_preference_lists_are_permutations(&ring);
        }

        #[test]
        fn shuffled_members_give_the_same_ring(
            members in member_sets(),
            seed in any::<u64>(),
            bits in 0u32..=8,
        ) {
            // Goal: determinism and independence from input order, for arbitrary names.
            let mut shuffled = members.clone();
            let len = shuffled.len();
            shuffled.rotate_left((seed % len as u64) as usize);
            shuffled.swap(0, (seed >> 32) as usize % len);
            let a = Ring::new(&members, 1 << bits, N).expect("valid shape");
            let b = Ring::new(&shuffled, 1 << bits, N).expect("valid shape");
            for p in 0..a.partitions() {
                prop_assert_eq!(a.preference_list(p), b.preference_list(p));
            }
        }

        #[test]
        fn arbitrary_joins_and_leaves_move_few_partitions(
            names in prop::collection::btree_set("[a-z0-9.:-]{1,12}", 4..=9),
            gone in any::<prop::sample::Index>(),
        ) {
            // Goal: the move bound is not an artefact of the fixed name families.
            let members: Vec<NodeId> = names.into_iter().map(NodeId).collect();
            let bound = move_bound(DEFAULT_PARTITIONS, members.len());
            let joined = join_moves(&members, DEFAULT_PARTITIONS).expect("valid shape");
            prop_assert!(joined <= bound, "join moved {} > {}", joined, bound);
            let gone = gone.index(members.len());
            let left = leave_moves(&members, DEFAULT_PARTITIONS, gone).expect("valid shape");
            prop_assert!(left <= bound, "leave moved {} > {}", left, bound);
        }

        #[test]
        fn partition_of_stays_in_range(key in prop::collection::vec(any::<u8>(), 0..64),
                                       bits in 0u32..=12) {
            // Goal: every key lands in 0..Q for every allowed Q.
            let ring = Ring::new(&[node("solo")], 1 << bits, 1).expect("valid shape");
            prop_assert!(ring.partition_of(&key) < ring.partitions());
        }
    }
}
