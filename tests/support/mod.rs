//! Real `quorumkv-node` processes on free loopback ports, for end-to-end tests.
//!
//! A [`Cluster`] starts N nodes with short heartbeats so that failures are noticed within
//! a second, waits until every node sees every other up, and kills them all when dropped.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use quorumkv_client::{Client, ClientConfig};

/// Short enough that a killed node is marked down within a second, long enough that a
/// busy two-core CI machine does not mark live nodes down.
const HEARTBEAT_INTERVAL_MS: u64 = 100;
const FAILURE_TIMEOUT_MS: u64 = 800;
/// Public so that tests can derive settings the node checks against it (tombstone grace).
pub const REQUEST_TIMEOUT_MS: u64 = 1_000;
/// How long a test waits for the cluster to reach an expected view.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// The node binary of the same profile as this test, built once per test binary.
pub fn node_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| build_node().map_err(|e| format!("{e:#}")));
    built.clone().map_err(anyhow::Error::msg)
}

fn build_node() -> anyhow::Result<PathBuf> {
    // target/<profile>/deps/<test> → target/<profile>
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|p| p.parent())
        .context("test exe location")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args([
        "build",
        "--quiet",
        "-p",
        "quorumkv-node",
        "--bin",
        "quorumkv-node",
    ]);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build
        .status()
        .context("running cargo build for quorumkv-node")?;
    if !status.success() {
        bail!("cargo build of quorumkv-node failed");
    }
    Ok(profile_dir.join("quorumkv-node"))
}

/// Ports the OS just handed out; a tiny window remains in which another process could
/// take one, which start-up then reports as a bind failure.
pub fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

pub struct Cluster {
    pub addresses: Vec<String>,
    replicas: usize,
    /// Extra flags for every node; they must not repeat a flag this module sets.
    node_args: Vec<String>,
    data: tempfile::TempDir,
    children: Vec<Option<Child>>,
}

impl Cluster {
    /// Starts `nodes` nodes with N = `replicas` and waits until all see each other.
    pub async fn start(nodes: usize, replicas: usize) -> anyhow::Result<Cluster> {
        Cluster::start_with(nodes, replicas, &[]).await
    }

    /// As [`Cluster::start`], with extra flags for every node, e.g.
    /// `["--anti-entropy-interval-ms", "0"]`; restarted nodes get them too.
    pub async fn start_with(
        nodes: usize,
        replicas: usize,
        node_args: &[&str],
    ) -> anyhow::Result<Cluster> {
        let ports = free_ports(nodes)?;
        let addresses = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut cluster = Cluster {
            addresses,
            replicas,
            node_args: node_args.iter().map(|a| a.to_string()).collect(),
            data: tempfile::tempdir()?,
            children: (0..nodes).map(|_| None).collect(),
        };
        for index in 0..nodes {
            cluster.launch(index)?;
        }
        cluster.wait_for_view(nodes).await?;
        Ok(cluster)
    }

    pub fn name(index: usize) -> String {
        format!("n{}", index + 1)
    }

    /// The index of the node named `name` (`n1` is 0), as the ring and status name it.
    pub fn index_of(&self, name: &str) -> anyhow::Result<usize> {
        (0..self.addresses.len())
            .find(|&index| Cluster::name(index) == name)
            .with_context(|| format!("no node {name} in this cluster"))
    }

    fn members(&self) -> BTreeMap<String, String> {
        let names = (0..self.addresses.len()).map(Cluster::name);
        names.zip(self.addresses.iter().cloned()).collect()
    }

    fn launch(&mut self, index: usize) -> anyhow::Result<()> {
        let name = Cluster::name(index);
        let mut command = Command::new(node_binary()?);
        command
            .args(["--node-id", &name, "--listen", &self.addresses[index]])
            .arg("--data-dir")
            .arg(self.data.path().join(&name))
            .args(["--replicas", &self.replicas.to_string()])
            .args([
                "--heartbeat-interval-ms",
                &HEARTBEAT_INTERVAL_MS.to_string(),
            ])
            .args(["--failure-timeout-ms", &FAILURE_TIMEOUT_MS.to_string()])
            .args(["--request-timeout-ms", &REQUEST_TIMEOUT_MS.to_string()])
            .args(&self.node_args)
            .env("QUORUMKV_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (peer, address) in self.members() {
            if peer != name {
                command.args(["--peer", &format!("{peer}={address}")]);
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children[index] = Some(child);
        Ok(())
    }

    /// A client that knows every node.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(ClientConfig::new(&self.addresses))?)
    }

    /// A client that talks to one node only, to choose the coordinator.
    pub fn client_of(&self, index: usize) -> anyhow::Result<Client> {
        Ok(Client::new(ClientConfig::new(
            &self.addresses[index..=index],
        ))?)
    }

    /// SIGKILL, then wait until every other node has marked it down.
    pub async fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.children[index].take() {
            child.kill()?;
            child.wait()?;
        }
        let alive = self.children.iter().filter(|c| c.is_some()).count();
        self.wait_for_view(alive).await
    }

    pub async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.launch(index)?;
        let alive = self.children.iter().filter(|c| c.is_some()).count();
        self.wait_for_view(alive).await
    }

    /// SIGKILL every node at once, without waiting for anyone to notice.
    pub fn kill_all(&mut self) -> anyhow::Result<()> {
        for child in self.children.iter_mut() {
            if let Some(mut child) = child.take() {
                child.kill()?;
                child.wait()?;
            }
        }
        Ok(())
    }

    /// Starts every node that is not running and waits until all see each other.
    pub async fn restart_all(&mut self) -> anyhow::Result<()> {
        for index in 0..self.children.len() {
            if self.children[index].is_none() {
                self.launch(index)?;
            }
        }
        self.wait_for_view(self.children.len()).await
    }

    /// Removes a stopped node's data dir, as an operator replacing its disk would.
    pub fn wipe(&self, index: usize) -> anyhow::Result<()> {
        if self.children[index].is_some() {
            bail!("{} is running; kill it before wiping", Cluster::name(index));
        }
        let dir = self.data.path().join(Cluster::name(index));
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))
    }

    /// Waits until every running node sees exactly `up` members up.
    async fn wait_for_view(&self, up: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        for index in (0..self.children.len()).filter(|i| self.children[*i].is_some()) {
            let client = self.client_of(index)?;
            loop {
                let seen = match client.status().await {
                    Ok(report) => report.members.iter().filter(|m| m.up).count(),
                    Err(_) => 0,
                };
                if seen == up {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} sees {seen} nodes up, expected {up}",
                        Cluster::name(index)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
