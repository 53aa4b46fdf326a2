//! What the load generator asks for: the operation mix of each YCSB-style workload and the
//! key each operation touches.
//!
//! Keys are `PREFIX` followed by a zero-padded record number, so every target stores the
//! same bytes. Under `zipfian` the popular records are spread over the key space by a hash
//! (YCSB's "scrambled" zipfian), so the hot keys do not sit on one partition of the ring.

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, Zipf};

/// YCSB's skew constant: record i (by popularity) is chosen with weight 1 / i^0.99.
pub const ZIPFIAN_EXPONENT: f64 = 0.99;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Insert every record once, in order (run it before a, b, c)
    Load,
    /// 50% reads, 50% updates
    A,
    /// 95% reads, 5% updates
    B,
    /// Reads only
    C,
    /// Updates only
    W,
}

impl Workload {
    /// The share of operations that read, in percent.
    fn read_percent(self) -> u32 {
        match self {
            Workload::Load | Workload::W => 0,
            Workload::A => 50,
            Workload::B => 95,
            Workload::C => 100,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDistribution {
    Uniform,
    Zipfian,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Read,
    Write,
}

/// Draws the operations of one client task.
pub struct OpChooser {
    workload: Workload,
    records: u64,
    zipf: Option<Zipf<f64>>,
}

impl OpChooser {
    pub fn new(workload: Workload, records: u64, distribution: KeyDistribution) -> Self {
        assert!(records > 0, "the argument parser refuses zero records");
        let zipf = match distribution {
            KeyDistribution::Uniform => None,
            KeyDistribution::Zipfian => {
                Some(Zipf::new(records, ZIPFIAN_EXPONENT).expect("records > 0, exponent > 0"))
            }
        };
        OpChooser {
            workload,
            records,
            zipf,
        }
    }

    /// The next operation and its record number; `insert` is the record a `load` writes
    /// (claimed from a shared counter, so every record is inserted exactly once).
    pub fn next(&self, rng: &mut StdRng, insert: u64) -> (OpKind, u64) {
        if self.workload == Workload::Load {
            return (OpKind::Write, insert);
        }
        let kind = if rng.gen_range(0..100) < self.workload.read_percent() {
            OpKind::Read
        } else {
            OpKind::Write
        };
        (kind, self.record(rng))
    }

    fn record(&self, rng: &mut StdRng) -> u64 {
        match &self.zipf {
            None => rng.gen_range(0..self.records),
            Some(zipf) => {
                // Zipf yields a popularity rank in 1..=records; the hash scatters the ranks.
                let rank = zipf.sample(rng) as u64;
                scramble(rank) % self.records
            }
        }
    }
}

/// The key of record `number`: fixed width, so every key has the same length.
pub fn key(prefix: &str, number: u64) -> String {
    format!("{prefix}{number:012}")
}

/// A 64-bit mixing function (the splitmix64 finaliser): consecutive ranks land far apart.
fn scramble(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// How often each record is chosen in `draws` reads of workload c.
    fn counts(distribution: KeyDistribution, records: u64, draws: usize) -> Vec<u64> {
        let chooser = OpChooser::new(Workload::C, records, distribution);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = vec![0u64; records as usize];
        for _ in 0..draws {
            let (kind, record) = chooser.next(&mut rng, 0);
            assert_eq!(kind, OpKind::Read);
            counts[record as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        counts
    }

    #[test]
    fn zipfian_keys_are_skewed_and_uniform_keys_are_not() {
        // Goal: under zipfian a tenth of the records takes most of the load; under uniform
        // it takes about a tenth. Method: count 100,000 draws over 1,000 records.
        let draws = 100_000;
        let top_tenth = |counts: Vec<u64>| counts[..100].iter().sum::<u64>() as f64 / 1e5;

        let zipfian = top_tenth(counts(KeyDistribution::Zipfian, 1000, draws));
        let uniform = top_tenth(counts(KeyDistribution::Uniform, 1000, draws));
        assert!(zipfian > 0.5, "zipfian top tenth took {zipfian}");
        assert!(uniform < 0.15, "uniform top tenth took {uniform}");
    }

    #[test]
    fn the_mix_follows_the_workload() {
        // Goal: b reads about 95% of the time, w never reads, load writes its own record.
        let mut rng = StdRng::seed_from_u64(1);
        let b = OpChooser::new(Workload::B, 10, KeyDistribution::Uniform);
        let reads = (0..10_000)
            .filter(|_| b.next(&mut rng, 0).0 == OpKind::Read)
            .count();
        assert!((9_300..9_700).contains(&reads), "{reads} reads");

        let w = OpChooser::new(Workload::W, 10, KeyDistribution::Uniform);
        assert!((0..1000).all(|_| w.next(&mut rng, 0).0 == OpKind::Write));

        let load = OpChooser::new(Workload::Load, 10, KeyDistribution::Zipfian);
        assert_eq!(load.next(&mut rng, 4), (OpKind::Write, 4));
    }

    #[test]
    fn keys_have_a_fixed_width() {
        // Goal: every target stores keys of the same length, whatever the record number.
        assert_eq!(key("user", 42), "user000000000042");
        assert_eq!(key("user", 42).len(), key("user", 999_999).len());
    }
}
