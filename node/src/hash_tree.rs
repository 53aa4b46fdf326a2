//! Hash trees over a node's keys, one per partition, for anti-entropy.
//!
//! Each partition's tree has three levels: a root, [`BUCKETS`] bucket hashes, and under
//! each bucket the keys with the digest of their state. Two replicas of a partition hold
//! the same data exactly when their roots match (up to 64-bit hash collisions), so an
//! exchange sends roots first, then the buckets of partitions that differ, then the keys
//! of buckets that differ: an idle exchange costs a word per shared partition.
//!
//! A bucket's hash is the XOR of its keys' leaf hashes. XOR makes every update O(1) and
//! independent of the order writes arrive in (a replaced leaf is XORed out, the new one
//! in), which a tree hashed in key order would not give without rehashing the bucket.
//! It is no defence against a peer that forges collisions; peers are trusted members.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed, Xxh3Builder};

use crate::ring::key_hash;

/// Buckets per partition. With the default 256 partitions that is 16,384 buckets, so a
/// store of a million keys has about 60 keys per bucket: one differing key costs a
/// 64-word bucket list and a ~60-key listing to find.
pub const BUCKETS: usize = 64;
// `TreeKeys` names buckets by the bits of one u64.
const _: () = assert!(BUCKETS <= 64);

#[derive(Default)]
pub struct HashTrees {
    partitions: BTreeMap<u32, PartitionTree>,
}

/// Point lookups on every write dominate, so keys sit in hash maps, one per bucket. Their
/// order never leaves this module: listings are sorted first.
type KeyDigests = HashMap<Bytes, u64, Xxh3Builder>;

struct PartitionTree {
    buckets: [u64; BUCKETS],
    /// Each key of each bucket with its state's digest.
    keys: Vec<KeyDigests>,
    len: usize,
}

impl Default for PartitionTree {
    fn default() -> Self {
        PartitionTree {
            buckets: [0; BUCKETS],
            keys: (0..BUCKETS).map(|_| KeyDigests::default()).collect(),
            len: 0,
        }
    }
}

/// The bucket of a key: low bits of its hash (the partition took the high ones).
pub fn bucket_of(key: &[u8]) -> usize {
    (key_hash(key) as usize) & (BUCKETS - 1)
}

fn leaf(key: &[u8], digest: u64) -> u64 {
    xxh3_64_with_seed(key, digest)
}

impl HashTrees {
    /// Records that `key` (in `partition`) now has a state with `digest`, or none, and
    /// returns the digest it had before.
    pub fn set(&mut self, partition: u32, key: &[u8], digest: Option<u64>) -> Option<u64> {
        let tree = self.partitions.entry(partition).or_default();
        let bucket = bucket_of(key);
        let keys = &mut tree.keys[bucket];
        // Replacing in place: the hot path (a key written again) copies no key bytes.
        let previous = match (digest, keys.get_mut(key)) {
            (Some(digest), Some(current)) => Some(std::mem::replace(current, digest)),
            (Some(digest), None) => keys.insert(Bytes::copy_from_slice(key), digest),
            (None, _) => keys.remove(key),
        };
        if let Some(previous) = previous {
            tree.buckets[bucket] ^= leaf(key, previous);
        }
        if let Some(digest) = digest {
            tree.buckets[bucket] ^= leaf(key, digest);
        }
        match (previous, digest) {
            (None, Some(_)) => tree.len += 1,
            (Some(_), None) => tree.len -= 1,
            _ => {}
        }
        if tree.len == 0 {
            self.partitions.remove(&partition);
        }
        previous
    }

    /// The partition's root; 0 for a partition with no keys.
    pub fn root(&self, partition: u32) -> u64 {
        let Some(tree) = self.partitions.get(&partition) else {
            return 0;
        };
        let bytes: Vec<u8> = tree.buckets.iter().flat_map(|b| b.to_le_bytes()).collect();
        xxh3_64(&bytes)
    }

    /// The partition's bucket hashes, all zero when it has no keys.
    pub fn buckets(&self, partition: u32) -> Vec<u64> {
        match self.partitions.get(&partition) {
            Some(tree) => tree.buckets.to_vec(),
            None => vec![0; BUCKETS],
        }
    }

    /// The keys of the buckets whose bits are set in `mask`, with their digests, in key
    /// order. The cost is that of the keys listed, whatever the mask.
    pub fn keys_in(&self, partition: u32, mask: u64) -> Vec<(Bytes, u64)> {
        let Some(tree) = self.partitions.get(&partition) else {
            return Vec::new();
        };
        let mut keys: Vec<(Bytes, u64)> = (0..BUCKETS)
            .filter(|bucket| mask & (1 << bucket) != 0)
            .flat_map(|bucket| tree.keys[bucket].iter())
            .map(|(key, digest)| (key.clone(), *digest))
            .collect();
        keys.sort();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn equal_contents_give_equal_roots_whatever_the_order_of_updates(
            writes in prop::collection::vec((0u8..20, 0u64..4), 1..60),
        ) {
            // Goal: the tree depends on the final contents only, not on the order or the
            // number of updates that led there. Method: apply the writes in order to one
            // tree, and only each key's last digest to another, in reverse key order.
            let mut replayed = HashTrees::default();
            let mut last = BTreeMap::new();
            for (key, digest) in &writes {
                let digest = (*digest > 0).then_some(*digest);
                replayed.set(0, &[*key], digest);
                last.insert(*key, digest);
            }
            let mut direct = HashTrees::default();
            for (key, digest) in last.iter().rev() {
                if digest.is_some() {
                    direct.set(0, &[*key], *digest);
                }
            }
            prop_assert_eq!(replayed.root(0), direct.root(0));
            prop_assert_eq!(replayed.buckets(0), direct.buckets(0));
        }
    }

    #[test]
    fn one_changed_key_shows_in_its_bucket_and_its_root_only() {
        // Goal: a difference is found by descending: root, then one bucket, then the key.
        let (mut a, mut b) = (HashTrees::default(), HashTrees::default());
        for key in 0u8..100 {
            a.set(1, &[key], Some(7));
            b.set(1, &[key], Some(7));
        }
        assert_eq!(a.root(1), b.root(1));
        b.set(1, &[42], Some(8));
        assert_ne!(a.root(1), b.root(1));

        let differing: Vec<usize> = (0..BUCKETS)
            .filter(|&i| a.buckets(1)[i] != b.buckets(1)[i])
            .collect();
        assert_eq!(differing, vec![bucket_of(&[42])]);
        let keys = b.keys_in(1, 1 << bucket_of(&[42]));
        assert!(keys.contains(&(Bytes::from_static(&[42]), 8)));

        b.set(1, &[42], Some(7));
        assert_eq!(a.root(1), b.root(1), "setting it back restores the root");
        for key in 0u8..100 {
            b.set(1, &[key], None);
        }
        assert_eq!(
            b.root(1),
            0,
            "an emptied partition hashes like a missing one"
        );
    }
}
