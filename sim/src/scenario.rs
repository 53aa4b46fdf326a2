//! Scripted runs for named tests: a simulated cluster that a test drives step by step
//! (partition this node, write these keys, wait this long, inspect that replica) instead
//! of a random workload. The nodes are the real node code on `SimEnv`, as in [`crate::cluster`],
//! with the same short timers, which a test may change per node.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use quorumkv_client::{Client, NodeId};
use quorumkv_node::ring::{Ring, DEFAULT_PARTITIONS};
use quorumkv_node::NodeConfig;

use crate::cluster::{build, node_config, spawn_node, SimConfig, NODE_PORT};
use crate::workload::sim_client;

pub struct Scenario {
    sim: turmoil::Sim<'static>,
    pub names: Vec<String>,
    ring: Ring,
    tasks: usize,
    crashed: BTreeSet<String>,
}

impl Scenario {
    /// `nodes` nodes n1..nN with N = 3, no faults, each node's config passed to `tweak`.
    pub fn new(seed: u64, nodes: usize, tweak: impl Fn(&mut NodeConfig)) -> anyhow::Result<Self> {
        let mut config = SimConfig::new(seed);
        config.nodes = nodes;
        config.faults.clear();
        let names = config.node_names();
        let mut sim = build(&config);
        for name in &names {
            let mut node = node_config(&config, name, &names);
            tweak(&mut node);
            spawn_node(&mut sim, seed, name, node, false);
        }
        let members: Vec<NodeId> = names.iter().map(|n| NodeId(n.clone())).collect();
        let ring = Ring::new(&members, DEFAULT_PARTITIONS, config.replicas.min(nodes))?;
        Ok(Scenario {
            sim,
            names,
            ring,
            tasks: 0,
            crashed: BTreeSet::new(),
        })
    }

    /// A client that talks to the given nodes only.
    pub fn client(via: &[&str]) -> Client {
        sim_client(via.iter().map(|n| format!("{n}:{NODE_PORT}")).collect())
    }

    /// Runs `task` as a simulated client until it ends, and returns what it returned.
    pub fn run<T: 'static>(
        &mut self,
        task: impl Future<Output = anyhow::Result<T>> + 'static,
    ) -> anyhow::Result<T> {
        let slot: Rc<RefCell<Option<anyhow::Result<T>>>> = Rc::default();
        let out = slot.clone();
        self.tasks += 1;
        self.sim.client(format!("task{}", self.tasks), async move {
            let result = task.await;
            *out.borrow_mut() = Some(result);
            Ok(())
        });
        while slot.borrow().is_none() {
            self.sim.step().map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        slot.take().expect("the task finished")
    }

    /// Lets simulated time pass with the cluster running.
    pub fn wait(&mut self, duration: Duration) -> anyhow::Result<()> {
        let until = self.sim.elapsed() + duration;
        while self.sim.elapsed() < until {
            self.sim.step().map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(())
    }

    pub fn elapsed(&self) -> Duration {
        self.sim.elapsed()
    }

    /// Cuts `node` off from every other node. Clients are not cut off: each task picks
    /// the nodes it talks to.
    pub fn isolate(&mut self, node: &str) {
        for other in self.hosts() {
            if other != node {
                self.sim.partition(node, other.as_str());
            }
        }
    }

    /// Cuts the two groups apart both ways.
    pub fn split(&mut self, side: &[&str], rest: &[&str]) {
        for a in side {
            for b in rest {
                self.sim.partition(*a, *b);
            }
        }
    }

    /// Holds every message between `a` and `b` (both ways) until [`Scenario::release`]:
    /// a link that stalls and later delivers what it queued, like a TCP connection whose
    /// segments sat in a buffer.
    pub fn hold(&mut self, a: &str, b: &str) {
        self.sim.hold(a, b);
    }

    /// Delivers everything held between `a` and `b`.
    pub fn release(&mut self, a: &str, b: &str) {
        self.sim.release(a, b);
    }

    pub fn heal(&mut self) {
        let hosts = self.hosts();
        for a in &hosts {
            for b in &hosts {
                if a < b {
                    self.sim.repair(a.as_str(), b.as_str());
                }
            }
        }
    }

    /// Kills the node; it loses whatever it had not synced.
    pub fn crash(&mut self, node: &str) {
        if self.crashed.insert(node.to_owned()) {
            self.sim.crash(node);
        }
    }

    pub fn restart(&mut self, node: &str) {
        if self.crashed.remove(node) {
            self.sim.bounce(node);
        }
    }

    pub fn homes(&self, key: &str) -> Vec<String> {
        let partition = self.ring.partition_of(key.as_bytes());
        let homes = self.ring.home_replicas(partition).iter();
        homes.map(|n| n.0.clone()).collect()
    }

    pub fn fallbacks(&self, key: &str) -> Vec<String> {
        let partition = self.ring.partition_of(key.as_bytes());
        let fallbacks = self.ring.fallbacks(partition).iter();
        fallbacks.map(|n| n.0.clone()).collect()
    }

    /// A key whose first home is `first` and whose first fallback is `fallback`, for
    /// scenarios that need given roles.
    pub fn key_with(&self, first: &str, fallback: &str) -> String {
        (0..100_000)
            .map(|i| format!("key-{i}"))
            .find(|key| {
                self.homes(key).first().map(String::as_str) == Some(first)
                    && self.fallbacks(key).first().map(String::as_str) == Some(fallback)
            })
            .expect("some key has every pair of roles")
    }

    fn hosts(&self) -> Vec<String> {
        self.names.clone()
    }
}
