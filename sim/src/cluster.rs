//! One simulated run from one seed: build the cluster, run the workload under the fault
//! schedule, heal, read everything back, and check.
//!
//! Everything random comes from the seed: turmoil's own RNG (message latency, loss, host
//! order), each node's RNG, each client's choices and the fault schedule. turmoil's epoch
//! is fixed too, never the wall clock, so a seed replays event for event.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::pending;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, UNIX_EPOCH};

use quorumkv_client::consistency::Access;
use quorumkv_client::protocol::LocalState;
use quorumkv_client::{Consistency, NodeId};
use quorumkv_node::config::{StorageKind, SyncPolicy};
use quorumkv_node::ring::{Ring, DEFAULT_PARTITIONS};
use quorumkv_node::NodeConfig;
use xxhash_rust::xxh3::Xxh3;

use crate::checker::{check, CheckInput, Violation};
use crate::env::SimEnv;
use crate::faults::{schedule, Action, FaultEvent, FaultKind};
use crate::history::{FinalRead, Op, ReplicaState};
use crate::workload::{self, sim_client, text, WorkloadConfig};

/// Node ports inside the simulation; every host has its own address, so one port serves.
pub(crate) const NODE_PORT: u16 = 7101;
/// Fixed start of simulated wall-clock time (2026-01-01), never the machine's clock.
const EPOCH_SECS: u64 = 1_767_225_600;
/// A run that has not finished within this much simulated time is a failure of its own.
const MAX_SIMULATED: Duration = Duration::from_secs(3_600);
/// After heal: time for the failure detectors to see everyone up again, for hints to be
/// handed off and for anti-entropy to meet every pair of nodes several times (each node
/// exchanges with one peer per `SIM_ANTI_ENTROPY_INTERVAL`), before replicas are inspected.
const SETTLE: Duration = Duration::from_secs(15);
/// Short convergence timers, so that a run of a few simulated seconds drops hints, runs
/// anti-entropy many times and purges tombstones: the grace is the hint window plus the
/// request timeout, the least the node accepts.
const SIM_HINT_WINDOW: Duration = Duration::from_secs(3);
const SIM_TOMBSTONE_GRACE: Duration = Duration::from_secs(4);
const SIM_HANDOFF_INTERVAL: Duration = Duration::from_millis(250);
const SIM_ANTI_ENTROPY_INTERVAL: Duration = Duration::from_millis(500);
/// Expected simulated length of the workload, over which faults are spread.
const MS_PER_OP_PER_CLIENT: u64 = 60;
/// With disk faults: the share of reads and writes that fail with EIO.
const DISK_IO_ERROR_RATE: f64 = 0.002;
/// With disk faults: the chance an unsynced write becomes durable anyway, so a crash can
/// keep part of a batch (a torn tail) instead of none of it.
const DISK_STRAY_SYNC_RATE: f64 = 0.2;
/// With `full`: per-host capacity, about twice the live data of a run (eight keys of
/// small values), so the log fills whenever dead records pile up before compaction.
const DISK_CAPACITY_BYTES: u64 = 8 * 1024;
/// Small segments, so runs roll and compact segments (and crash in the middle of it).
const SIM_SEGMENT_BYTES: u64 = 4 * 1024;
/// A node that fails to start (an I/O error while recovering) is started again after
/// this long, as a service manager would.
const RESTART_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Message latency between faults: loopback-like, but never zero, so replies interleave.
const NORMAL_MAX_LATENCY: Duration = Duration::from_millis(5);

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub replicas: usize,
    pub clients: usize,
    pub ops: usize,
    pub keys: usize,
    pub read: Consistency,
    pub write: Consistency,
    pub sloppy: bool,
    pub faults: BTreeSet<FaultKind>,
    /// Off only to plant a convergence failure (with hints and anti-entropy off too).
    pub read_repair: bool,
    pub hints: bool,
    pub anti_entropy: bool,
    pub storage: StorageKind,
    /// Anything but `always` may lose acknowledged writes in a crash, on purpose.
    pub sync: SyncPolicy,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            nodes: 5,
            replicas: 3,
            clients: 4,
            ops: 500,
            keys: 8,
            read: Consistency::Quorum,
            write: Consistency::Quorum,
            sloppy: false,
            faults: FaultKind::DEFAULT.into_iter().collect(),
            read_repair: true,
            hints: true,
            anti_entropy: true,
            storage: StorageKind::Log,
            sync: SyncPolicy::Always,
        }
    }

    /// R + W > N: the run must show no stale read.
    pub fn strict(&self) -> bool {
        let n = self.replicas.min(self.nodes);
        let r = self.read.required(n, Access::Read);
        let w = self.write.required(n, Access::Write);
        matches!((r, w), (Ok(r), Ok(w)) if r + w > n) && !self.sloppy
    }

    pub(crate) fn node_names(&self) -> Vec<String> {
        (1..=self.nodes).map(|i| format!("n{i}")).collect()
    }
}

#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub ops: usize,
    pub acknowledged: usize,
    pub violations: Vec<Violation>,
    pub trace: u64,
    pub simulated: Duration,
    pub history: Vec<Op>,
    pub faults: Vec<FaultEvent>,
}

static PANICS: AtomicUsize = AtomicUsize::new(0);
static PANIC_HOOK: Once = Once::new();

/// Counts panics anywhere in the process: a node task that panics is caught by tokio and
/// would otherwise go unnoticed.
fn count_panics() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

pub fn run(config: &SimConfig) -> anyhow::Result<Report> {
    count_panics();
    let panics_before = PANICS.load(Ordering::SeqCst);
    let names = config.node_names();
    let mut sim = build(config);
    for name in &names {
        add_node(&mut sim, config, name);
    }

    let history: workload::History = Rc::default();
    let clients = add_clients(&mut sim, config, &names, &history);
    let mut world = World {
        hosts: names.iter().chain(&clients).cloned().collect(),
        crashed: BTreeSet::new(),
    };
    let per_client = (config.ops / config.clients.max(1)) as u64;
    let span = Duration::from_millis(per_client * MS_PER_OP_PER_CLIENT);
    let faults = schedule(config.seed, &config.faults, &names, span);
    drive(&mut sim, &faults, &mut world)?;

    world.heal(&mut sim);
    let settle_until = sim.elapsed() + SETTLE;
    while sim.elapsed() < settle_until {
        sim.step().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let (final_reads, replicas) = read_back(&mut sim, config, &names)?;

    let history = history.borrow().clone();
    let homes = home_replicas(config, &names)?;
    let panics = PANICS.load(Ordering::SeqCst) - panics_before;
    let input = CheckInput {
        history: &history,
        final_reads: &final_reads,
        replicas: &replicas,
        homes: &homes,
        strict: config.strict(),
        panics,
    };
    let violations = check(&input);
    let trace = trace(&history, &faults, &final_reads, &replicas);
    Ok(Report {
        seed: config.seed,
        ops: history.len(),
        acknowledged: history.iter().filter(|op| op.acknowledged()).count(),
        violations,
        trace,
        simulated: sim.elapsed(),
        history,
        faults,
    })
}

pub(crate) fn build<'a>(config: &SimConfig) -> turmoil::Sim<'a> {
    let mut builder = turmoil::Builder::new();
    builder
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .rng_seed(config.seed)
        .enable_random_order()
        .simulation_duration(MAX_SIMULATED)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(NORMAL_MAX_LATENCY);
    if config.faults.contains(&FaultKind::Disk) {
        builder
            .fs()
            .io_error_probability(DISK_IO_ERROR_RATE)
            .sync_probability(DISK_STRAY_SYNC_RATE);
    }
    if config.faults.contains(&FaultKind::Full) {
        builder.fs().capacity(DISK_CAPACITY_BYTES);
    }
    builder.build()
}

pub(crate) fn node_config(config: &SimConfig, name: &str, names: &[String]) -> NodeConfig {
    let members: BTreeMap<NodeId, String> = names
        .iter()
        .map(|n| (NodeId(n.clone()), format!("{n}:{NODE_PORT}")))
        .collect();
    let mut node = NodeConfig::for_member(name, &members, format!("/data/{name}").as_ref());
    node.replicas = config.replicas;
    node.heartbeat_interval = Duration::from_millis(250);
    node.failure_timeout = Duration::from_millis(1_000);
    node.request_timeout = Duration::from_millis(1_000);
    node.read_repair = config.read_repair;
    node.hints = config.hints;
    node.hint_window = SIM_HINT_WINDOW;
    node.tombstone_grace = SIM_TOMBSTONE_GRACE;
    node.handoff_interval = SIM_HANDOFF_INTERVAL;
    node.anti_entropy_interval = if config.anti_entropy {
        SIM_ANTI_ENTROPY_INTERVAL
    } else {
        Duration::ZERO
    };
    node.segment_bytes = SIM_SEGMENT_BYTES;
    node.storage = config.storage;
    node.sync = config.sync;
    node
}

fn add_node(sim: &mut turmoil::Sim<'_>, config: &SimConfig, name: &str) {
    let node = node_config(config, name, &config.node_names());
    let torn_writes = config.faults.contains(&FaultKind::Disk);
    spawn_node(sim, config.seed, name, node, torn_writes);
}

/// A simulated host that runs the node, and starts it again after a failed start or a
/// crash (turmoil calls the closure again on `bounce`), with a new boot count each time.
pub(crate) fn spawn_node(
    sim: &mut turmoil::Sim<'_>,
    seed: u64,
    name: &str,
    node: NodeConfig,
    torn_writes: bool,
) {
    let boots = Rc::new(Cell::new(0u64));
    let name_owned = name.to_owned();
    sim.host(name, move || {
        let (boots, name, node) = (boots.clone(), name_owned.clone(), node.clone());
        async move {
            loop {
                let boot = boots.get();
                boots.set(boot + 1);
                let mut env = SimEnv::new(seed, &name, boot);
                if torn_writes {
                    env = env.with_torn_writes();
                }
                let error = match quorumkv_node::run(env, node.clone(), pending()).await {
                    Ok(()) => return Ok(()),
                    Err(error) => error,
                };
                tracing::info!(node = %name, %error, "node failed; starting it again");
                tokio::time::sleep(RESTART_AFTER_FAILURE).await;
            }
        }
    });
}

/// Starts the workload clients and returns their host names.
fn add_clients(
    sim: &mut turmoil::Sim<'_>,
    config: &SimConfig,
    names: &[String],
    history: &workload::History,
) -> Vec<String> {
    let mut hosts = Vec::new();
    let nodes: Vec<String> = names.iter().map(|n| format!("{n}:{NODE_PORT}")).collect();
    for client in 0..config.clients {
        let ops = config.ops / config.clients + usize::from(client < config.ops % config.clients);
        let workload = WorkloadConfig {
            client,
            seed: config.seed ^ ((client as u64 + 1) << 32),
            ops,
            keys: config.keys,
            read: config.read,
            write: config.write,
            sloppy: config.sloppy,
            nodes: nodes.clone(),
        };
        let host = format!("client{client}");
        sim.client(host.as_str(), workload::run(workload, history.clone()));
        hosts.push(host);
    }
    hosts
}

/// Which hosts exist and which nodes are down.
struct World {
    hosts: Vec<String>,
    crashed: BTreeSet<String>,
}

/// Steps the simulation until every client is done, applying faults when they fall due.
fn drive(
    sim: &mut turmoil::Sim<'_>,
    faults: &[FaultEvent],
    world: &mut World,
) -> anyhow::Result<()> {
    let mut next = 0;
    loop {
        while next < faults.len() && faults[next].at <= sim.elapsed() {
            world.apply(sim, &faults[next].action);
            next += 1;
        }
        if sim.step().map_err(|e| anyhow::anyhow!("{e}"))? {
            return Ok(());
        }
    }
}

impl World {
    fn apply(&mut self, sim: &mut turmoil::Sim<'_>, action: &Action) {
        tracing::debug!(?action, at = ?sim.elapsed(), "fault");
        match action {
            Action::Partition { side, rest } => cut(sim, side, rest, true),
            Action::PartitionOneWay { from, to } => cut(sim, from, to, false),
            Action::HealNetwork => self.heal_links(sim),
            Action::Crash { node } => self.crash(sim, node),
            Action::SilentDeath { node } => {
                let others: Vec<String> =
                    self.hosts.iter().filter(|h| *h != node).cloned().collect();
                cut(sim, std::slice::from_ref(node), &others, true);
                self.crash(sim, node);
            }
            Action::Restart { node } => {
                if self.crashed.remove(node) {
                    sim.bounce(node.as_str());
                }
                self.heal_links(sim);
            }
            Action::Latency { max_ms } => {
                sim.set_max_message_latency(Duration::from_millis(*max_ms))
            }
            Action::NormalLatency => sim.set_max_message_latency(NORMAL_MAX_LATENCY),
            Action::Loss { rate } => sim.set_fail_rate(*rate),
            Action::NoLoss => sim.set_fail_rate(0.0),
        }
    }

    fn crash(&mut self, sim: &mut turmoil::Sim<'_>, node: &str) {
        if self.crashed.insert(node.to_owned()) {
            sim.crash(node);
        }
    }

    fn heal_links(&self, sim: &mut turmoil::Sim<'_>) {
        for a in &self.hosts {
            for b in &self.hosts {
                if a < b {
                    sim.repair(a.as_str(), b.as_str());
                }
            }
        }
    }

    /// Ends every fault: links, loss, latency, and boots every crashed node.
    fn heal(&mut self, sim: &mut turmoil::Sim<'_>) {
        self.heal_links(sim);
        sim.set_fail_rate(0.0);
        sim.set_max_message_latency(NORMAL_MAX_LATENCY);
        for node in std::mem::take(&mut self.crashed) {
            sim.bounce(node.as_str());
        }
    }
}

fn cut(sim: &mut turmoil::Sim<'_>, from: &[String], to: &[String], both_ways: bool) {
    for a in from {
        for b in to {
            if both_ways {
                sim.partition(a.as_str(), b.as_str());
            } else {
                sim.partition_oneway(a.as_str(), b.as_str());
            }
        }
    }
}

/// After heal: every node's own copy of every key (what hints and anti-entropy left,
/// before any read repairs it), then every key read at `all` through every node.
fn read_back(
    sim: &mut turmoil::Sim<'_>,
    config: &SimConfig,
    names: &[String],
) -> anyhow::Result<(Vec<FinalRead>, Vec<ReplicaState>)> {
    let reads: Rc<RefCell<Vec<FinalRead>>> = Rc::default();
    let states: Rc<RefCell<Vec<ReplicaState>>> = Rc::default();
    let keys: Vec<String> = (0..config.keys).map(|k| format!("k{k}")).collect();
    let (names, reads_out, states_out) = (names.to_vec(), reads.clone(), states.clone());
    sim.client("checker", async move {
        for name in &names {
            let client = sim_client(vec![format!("{name}:{NODE_PORT}")]);
            for key in &keys {
                let state = retried(|| client.inspect(key.clone())).await?;
                states_out
                    .borrow_mut()
                    .push(replica_state(name, key, &state));
            }
        }
        for name in &names {
            let client = sim_client(vec![format!("{name}:{NODE_PORT}")]);
            for key in &keys {
                let read = retried(|| client.get(key.clone(), Consistency::All)).await;
                let values = match read {
                    Ok(read) => Ok(read.values.iter().map(text).collect()),
                    Err(error) => Err(error.to_string()),
                };
                let (node, key) = (name.clone(), key.clone());
                reads_out.borrow_mut().push(FinalRead { node, key, values });
            }
        }
        Ok(())
    });
    while !sim.step().map_err(|e| anyhow::anyhow!("{e}"))? {}
    let reads = reads.borrow().clone();
    let states = states.borrow().clone();
    Ok((reads, states))
}

/// Attempts of each final read: with disk faults a replica can fail a read with EIO, and
/// a client would simply ask again.
const FINAL_READ_ATTEMPTS: usize = 5;

async fn retried<T, F, Fut>(mut attempt: F) -> Result<T, quorumkv_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, quorumkv_client::Error>>,
{
    let mut last = None;
    for _ in 0..FINAL_READ_ATTEMPTS {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last.expect("at least one attempt"))
}

fn replica_state(node: &str, key: &str, state: &LocalState) -> ReplicaState {
    let mut siblings: Vec<(String, Option<String>)> = state
        .siblings
        .iter()
        .map(|s| (s.dot.clone(), s.value.as_ref().map(text)))
        .collect();
    siblings.sort();
    ReplicaState {
        node: node.to_owned(),
        key: key.to_owned(),
        siblings,
        context: state.context.to_string(),
    }
}

fn home_replicas(
    config: &SimConfig,
    names: &[String],
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let members: Vec<NodeId> = names.iter().map(|n| NodeId(n.clone())).collect();
    let ring = Ring::new(&members, DEFAULT_PARTITIONS, config.replicas)?;
    let homes = (0..config.keys).map(|k| {
        let key = format!("k{k}");
        let partition = ring.partition_of(key.as_bytes());
        let nodes = ring
            .home_replicas(partition)
            .iter()
            .map(|n| n.0.clone())
            .collect();
        (key, nodes)
    });
    Ok(homes.collect())
}

/// A hash of everything that happened: two runs with equal traces did the same things.
fn trace(
    history: &[Op],
    faults: &[FaultEvent],
    reads: &[FinalRead],
    states: &[ReplicaState],
) -> u64 {
    let mut hasher = Xxh3::new();
    for op in history {
        hasher.update(op.to_string().as_bytes());
    }
    for fault in faults {
        hasher.update(format!("{fault:?}").as_bytes());
    }
    for read in reads {
        hasher.update(format!("{read:?}").as_bytes());
    }
    for state in states {
        hasher.update(format!("{state:?}").as_bytes());
    }
    hasher.digest()
}
