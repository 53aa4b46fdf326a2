//! Fault schedules drawn from the run's seed, and applying them to the simulation.
//!
//! A schedule is a list of episodes, one after another with a quiet gap between them:
//! each starts a fault and later ends it. Crashes lose whatever the node had not synced
//! (with the in-memory store, everything), and the node boots again when the episode ends.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The kinds of fault a run may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    Partition,
    Crash,
    Loss,
    Latency,
    /// A failing disk for the whole run: random I/O errors, and unsynced writes that
    /// randomly become durable (a crash keeps an arbitrary part of what was not synced).
    /// Set once, when the simulation is built.
    Disk,
    /// A disk barely larger than the live data, full whenever compaction falls behind,
    /// and sometimes for good. Not in the default set: a disk full for good stops repair,
    /// so `convergence` and `final-read` may fail; no other checker may.
    Full,
}

impl FaultKind {
    /// What a run uses unless told otherwise: every kind but `full`.
    pub const DEFAULT: [FaultKind; 5] = [
        FaultKind::Partition,
        FaultKind::Crash,
        FaultKind::Loss,
        FaultKind::Latency,
        FaultKind::Disk,
    ];

    /// Whether the kind comes and goes in episodes (the rest hold for the whole run).
    fn is_episodic(self) -> bool {
        !matches!(self, FaultKind::Disk | FaultKind::Full)
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "partition" => Ok(FaultKind::Partition),
            "crash" => Ok(FaultKind::Crash),
            "loss" => Ok(FaultKind::Loss),
            "latency" => Ok(FaultKind::Latency),
            "disk" => Ok(FaultKind::Disk),
            "full" => Ok(FaultKind::Full),
            other => Err(format!(
                "unknown fault '{other}' (expected partition, crash, loss, latency, disk or full)"
            )),
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            FaultKind::Partition => "partition",
            FaultKind::Crash => "crash",
            FaultKind::Loss => "loss",
            FaultKind::Latency => "latency",
            FaultKind::Disk => "disk",
            FaultKind::Full => "full",
        };
        f.write_str(name)
    }
}

/// One change to the simulated world.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Cut every link between the two sides, both ways.
    Partition {
        side: Vec<String>,
        rest: Vec<String>,
    },
    /// Cut the links from `from` to `to` only.
    PartitionOneWay {
        from: Vec<String>,
        to: Vec<String>,
    },
    /// Restore every link.
    HealNetwork,
    Crash {
        node: String,
    },
    /// Partition the node away, then crash it: nobody hears it die.
    SilentDeath {
        node: String,
    },
    Restart {
        node: String,
    },
    Latency {
        max_ms: u64,
    },
    NormalLatency,
    Loss {
        rate: f64,
    },
    NoLoss,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FaultEvent {
    pub at: Duration,
    pub action: Action,
}

/// How long the workload is expected to run; episodes are spread over it.
const EPISODE_MIN_MS: u64 = 300;
const EPISODE_MAX_MS: u64 = 2_500;
const GAP_MIN_MS: u64 = 100;
const GAP_MAX_MS: u64 = 800;
/// Message loss rate while a loss episode lasts. Each lost segment stalls a turmoil TCP
/// stream until the RPC times out and the connection is dialled again.
const LOSS_RATE: f64 = 0.05;
/// Worst message latency during a latency spike; above the request timeout on purpose.
const SPIKE_MAX_LATENCY_MS: u64 = 1_500;

pub fn schedule(
    seed: u64,
    kinds: &BTreeSet<FaultKind>,
    nodes: &[String],
    span: Duration,
) -> Vec<FaultEvent> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xfa17_5eed);
    let kinds: Vec<FaultKind> = kinds.iter().copied().filter(|k| k.is_episodic()).collect();
    let mut events = Vec::new();
    if kinds.is_empty() {
        return events;
    }
    let mut at = Duration::from_millis(rng.gen_range(GAP_MIN_MS..GAP_MAX_MS));
    while at < span {
        let length = Duration::from_millis(rng.gen_range(EPISODE_MIN_MS..EPISODE_MAX_MS));
        let kind = *kinds.choose(&mut rng).expect("kinds is not empty");
        let (start, end) = episode(kind, nodes, &mut rng);
        events.push(FaultEvent { at, action: start });
        events.push(FaultEvent {
            at: at + length,
            action: end,
        });
        at += length + Duration::from_millis(rng.gen_range(GAP_MIN_MS..GAP_MAX_MS));
    }
    events
}

fn episode(kind: FaultKind, nodes: &[String], rng: &mut ChaCha8Rng) -> (Action, Action) {
    match kind {
        FaultKind::Partition => {
            let mut shuffled = nodes.to_vec();
            shuffled.shuffle(rng);
            let cut = rng.gen_range(1..shuffled.len().max(2));
            let rest = shuffled.split_off(cut.min(shuffled.len()));
            let start = if rng.gen_bool(0.3) {
                Action::PartitionOneWay {
                    from: shuffled,
                    to: rest,
                }
            } else {
                Action::Partition {
                    side: shuffled,
                    rest,
                }
            };
            (start, Action::HealNetwork)
        }
        FaultKind::Crash => {
            let node = nodes.choose(rng).expect("nodes").clone();
            let start = if rng.gen_bool(0.3) {
                Action::SilentDeath { node: node.clone() }
            } else {
                Action::Crash { node: node.clone() }
            };
            (start, Action::Restart { node })
        }
        FaultKind::Loss => (Action::Loss { rate: LOSS_RATE }, Action::NoLoss),
        FaultKind::Latency => {
            let max_ms = rng.gen_range(200..SPIKE_MAX_LATENCY_MS);
            (Action::Latency { max_ms }, Action::NormalLatency)
        }
        FaultKind::Disk | FaultKind::Full => unreachable!("disk faults are not episodes"),
    }
}
