//! A node's configuration: from flags, from a TOML file, or both (flags win).
//!
//! Membership is static: the file or the flags name every member and its address. Every
//! limit carries its unit in its name and a reason for its default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use quorumkv_client::codec::DEFAULT_MAX_FRAME_BYTES;
use quorumkv_client::protocol::DEFAULT_CLUSTER;
use quorumkv_client::NodeId;
use serde::Deserialize;

use crate::ring::DEFAULT_PARTITIONS;

/// Three copies survive one failure with a quorum of two still reachable.
pub const DEFAULT_REPLICAS: usize = 3;
/// Twice per second: a dead peer is noticed within a couple of seconds at a cost of a
/// few tiny frames per second per peer.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 500;
/// Four missed heartbeats: long enough to ride out a GC-like pause or a slow core on a
/// loaded two-core machine, short enough that clients see Unavailable quickly.
pub const DEFAULT_FAILURE_TIMEOUT_MS: u64 = 2_000;
/// How long a coordinator waits for replicas before answering Timeout.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 2_000;
/// Under `sync = interval`: at most this much acknowledged writing is lost in a power
/// failure, and one fsync per interval costs little even on a slow disk.
pub const DEFAULT_SYNC_INTERVAL_MS: u64 = 10;
/// 64 MiB segments: few enough files for a large store, small enough that compacting one
/// copies little at a time.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Segment offsets are kept in 32 bits in the index; a segment may pass its size by one
/// batch and one record, so the size itself stays well below 4 GiB.
pub const MAX_SEGMENT_BYTES: u64 = 1024 * 1024 * 1024;
/// Compact once half of the sealed segments' bytes are overwritten or deleted records:
/// the disk then holds at most about twice the live data, and each byte copied frees one.
pub const DEFAULT_COMPACT_DEAD_RATIO: f64 = 0.5;
/// Three hours, as in Cassandra: covers a restart, a deploy or a night's outage. A replica
/// down longer than this gets no hints and is brought back by anti-entropy instead.
pub const DEFAULT_HINT_WINDOW_MS: u64 = 3 * 60 * 60 * 1000;
/// 256 MiB of pending hints per node: hours of writes to one dead peer at moderate load,
/// and a bound on what a long outage can take of the holder's memory and disk.
pub const DEFAULT_HINT_STORAGE_BYTES: u64 = 256 * 1024 * 1024;
/// Pending hints are offered to targets that came back this often.
pub const DEFAULT_HANDOFF_INTERVAL_MS: u64 = 1_000;
/// Every 10 s a node compares its hash trees with one peer; with S nodes each pair meets
/// about every 10*(S-1) s, while an idle exchange costs one small frame per shared partition.
pub const DEFAULT_ANTI_ENTROPY_INTERVAL_MS: u64 = 10_000;
/// A tombstone is purged only after it stood unchanged this long: one hint window plus an
/// hour of margin for clock skew between nodes (see `tombstones`).
pub const DEFAULT_TOMBSTONE_GRACE_MS: u64 = DEFAULT_HINT_WINDOW_MS + 60 * 60 * 1000;

/// Where a node keeps its replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// The durable log-structured store in `<data_dir>/log/`.
    Log,
    /// In memory only: a restart comes back empty. Tests and experiments.
    Memory,
}

/// When the log store fsyncs, which decides what a power failure can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// A write is acknowledged after the fsync that covers it (group commit).
    Always,
    /// Fsync every `sync_interval_ms`; a write is acknowledged once written.
    Interval,
    /// Never fsync (the OS writes back when it likes). Tests and benchmarks only.
    Never,
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub cluster: String,
    pub node_id: NodeId,
    pub listen: String,
    /// Every member, this node included, with the address peers dial.
    pub members: BTreeMap<NodeId, String>,
    pub replicas: usize,
    pub partitions: u32,
    pub data_dir: PathBuf,
    pub heartbeat_interval: Duration,
    pub failure_timeout: Duration,
    pub request_timeout: Duration,
    pub max_frame_bytes: usize,
    /// Repair stale replicas found by reads. Off only to show, in tests and the
    /// simulator, that replicas then stay apart.
    pub read_repair: bool,
    pub storage: StorageKind,
    pub sync: SyncPolicy,
    pub sync_interval: Duration,
    pub segment_bytes: u64,
    pub compact_dead_ratio: f64,
    /// Store hints for home replicas that miss a write, and hand them off later.
    pub hints: bool,
    /// Hints older than this are dropped (anti-entropy repairs what they carried).
    pub hint_window: Duration,
    pub hint_storage_bytes: u64,
    pub handoff_interval: Duration,
    /// Zero turns anti-entropy off (only to show, in tests, what it repairs).
    pub anti_entropy_interval: Duration,
    /// How long a tombstone stands unchanged before it may be purged; never below the
    /// hint window plus the request timeout (see `tombstones`).
    pub tombstone_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Flags of `quorumkv-node`. Each may also be set in the file given by `--config`.
#[derive(Debug, Default, Parser)]
#[command(name = "quorumkv-node", version, about = "A quorumkv database node")]
pub struct NodeArgs {
    /// TOML file with any of the settings below (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Cluster name; nodes and clients of another cluster are refused.
    #[arg(long)]
    pub cluster: Option<String>,
    /// This node's id, e.g. n1.
    #[arg(long)]
    pub node_id: Option<String>,
    /// Address to listen on, host:port.
    #[arg(long)]
    pub listen: Option<String>,
    /// Another member, as ID=HOST:PORT; repeat for each.
    #[arg(long = "peer", value_name = "ID=HOST:PORT")]
    pub peers: Vec<String>,
    /// Replicas per key (N) [default: 3].
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Ring partitions (Q), a power of two fixed when the cluster is created [default: 256].
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Directory for this node's identity and data [default: data/NODE_ID].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How often each peer is probed [default: 500].
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
    /// A peer silent this long is marked down [default: 2000].
    #[arg(long)]
    pub failure_timeout_ms: Option<u64>,
    /// How long a coordinator waits for replicas before answering Timeout [default: 2000].
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// Largest frame accepted from a client or peer [default: 16 MiB].
    #[arg(long)]
    pub max_frame_bytes: Option<usize>,
    /// Repair replicas that a read found behind [default: true].
    #[arg(long, value_name = "BOOL")]
    pub read_repair: Option<bool>,
    /// Where replicas live: log (durable, in DATA_DIR/log) or memory [default: log].
    #[arg(long, value_enum)]
    pub storage: Option<StorageKind>,
    /// When the log is fsynced: always (before acknowledging), interval, or never
    /// [default: always].
    #[arg(long, value_enum)]
    pub sync: Option<SyncPolicy>,
    /// Fsync period under --sync interval [default: 10].
    #[arg(long)]
    pub sync_interval_ms: Option<u64>,
    /// A log segment is sealed once it passes this size [default: 64 MiB].
    #[arg(long)]
    pub segment_bytes: Option<u64>,
    /// Compact when this fraction of the sealed segments is dead records [default: 0.5].
    #[arg(long)]
    pub compact_dead_ratio: Option<f64>,
    /// Keep hints for home replicas that miss a write [default: true].
    #[arg(long, value_name = "BOOL")]
    pub hints: Option<bool>,
    /// Hints older than this are dropped [default: 10800000, three hours].
    #[arg(long)]
    pub hint_window_ms: Option<u64>,
    /// Most bytes of pending hints this node keeps; more are dropped [default: 256 MiB].
    #[arg(long)]
    pub hint_storage_bytes: Option<u64>,
    /// How often pending hints are offered to their targets [default: 1000].
    #[arg(long)]
    pub handoff_interval_ms: Option<u64>,
    /// How often this node compares hash trees with a peer; 0 turns anti-entropy off
    /// [default: 10000].
    #[arg(long)]
    pub anti_entropy_interval_ms: Option<u64>,
    /// A tombstone unchanged this long may be purged; at least the hint window plus the
    /// request timeout [default: the hint window plus one hour].
    #[arg(long)]
    pub tombstone_grace_ms: Option<u64>,
}

/// The same settings as they appear in a TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    cluster: Option<String>,
    node_id: Option<String>,
    listen: Option<String>,
    #[serde(default)]
    peers: BTreeMap<String, String>,
    replicas: Option<usize>,
    partitions: Option<u32>,
    data_dir: Option<PathBuf>,
    heartbeat_interval_ms: Option<u64>,
    failure_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    max_frame_bytes: Option<usize>,
    read_repair: Option<bool>,
    storage: Option<StorageKind>,
    sync: Option<SyncPolicy>,
    sync_interval_ms: Option<u64>,
    segment_bytes: Option<u64>,
    compact_dead_ratio: Option<f64>,
    hints: Option<bool>,
    hint_window_ms: Option<u64>,
    hint_storage_bytes: Option<u64>,
    handoff_interval_ms: Option<u64>,
    anti_entropy_interval_ms: Option<u64>,
    tombstone_grace_ms: Option<u64>,
}

impl NodeConfig {
    /// Reads the file named by `--config` (if any) and lays the flags over it.
    pub fn load(args: &NodeArgs) -> Result<NodeConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    /// A config for tests and the simulator: every member named, defaults elsewhere.
    pub fn for_member(
        node_id: &str,
        members: &BTreeMap<NodeId, String>,
        data_dir: &Path,
    ) -> NodeConfig {
        NodeConfig {
            cluster: DEFAULT_CLUSTER.to_owned(),
            node_id: NodeId(node_id.to_owned()),
            listen: members[&NodeId(node_id.to_owned())].clone(),
            members: members.clone(),
            replicas: DEFAULT_REPLICAS,
            partitions: DEFAULT_PARTITIONS,
            data_dir: data_dir.to_owned(),
            heartbeat_interval: Duration::from_millis(DEFAULT_HEARTBEAT_INTERVAL_MS),
            failure_timeout: Duration::from_millis(DEFAULT_FAILURE_TIMEOUT_MS),
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            read_repair: true,
            storage: StorageKind::Log,
            sync: SyncPolicy::Always,
            sync_interval: Duration::from_millis(DEFAULT_SYNC_INTERVAL_MS),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            compact_dead_ratio: DEFAULT_COMPACT_DEAD_RATIO,
            hints: true,
            hint_window: Duration::from_millis(DEFAULT_HINT_WINDOW_MS),
            hint_storage_bytes: DEFAULT_HINT_STORAGE_BYTES,
            handoff_interval: Duration::from_millis(DEFAULT_HANDOFF_INTERVAL_MS),
            anti_entropy_interval: Duration::from_millis(DEFAULT_ANTI_ENTROPY_INTERVAL_MS),
            tombstone_grace: Duration::from_millis(DEFAULT_TOMBSTONE_GRACE_MS),
        }
    }

    fn merge(args: &NodeArgs, file: FileConfig) -> Result<NodeConfig, ConfigError> {
        let node_id = args.node_id.clone().or(file.node_id);
        let node_id = node_id.ok_or_else(|| invalid("--node-id is required"))?;
        let listen = args.listen.clone().or(file.listen);
        let listen = listen.ok_or_else(|| invalid("--listen is required"))?;

        let mut members = BTreeMap::new();
        for (id, address) in file.peers {
            members.insert(NodeId(id), address);
        }
        for peer in &args.peers {
            let (id, address) = parse_peer(peer)?;
            members.insert(id, address);
        }
        let me = NodeId(node_id.clone());
        if members.get(&me).is_some_and(|address| *address != listen) {
            return Err(invalid(&format!(
                "{node_id} is listed as its own peer with address {}, but listens on {listen}",
                members[&me]
            )));
        }
        members.insert(me, listen.clone());

        let millis = |flag: Option<u64>, file: Option<u64>, default: u64| {
            Duration::from_millis(flag.or(file).unwrap_or(default))
        };
        let config = NodeConfig {
            cluster: args
                .cluster
                .clone()
                .or(file.cluster)
                .unwrap_or(DEFAULT_CLUSTER.into()),
            node_id: NodeId(node_id.clone()),
            listen,
            members,
            replicas: args.replicas.or(file.replicas).unwrap_or(DEFAULT_REPLICAS),
            partitions: args
                .partitions
                .or(file.partitions)
                .unwrap_or(DEFAULT_PARTITIONS),
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("data").join(&node_id)),
            heartbeat_interval: millis(
                args.heartbeat_interval_ms,
                file.heartbeat_interval_ms,
                DEFAULT_HEARTBEAT_INTERVAL_MS,
            ),
            failure_timeout: millis(
                args.failure_timeout_ms,
                file.failure_timeout_ms,
                DEFAULT_FAILURE_TIMEOUT_MS,
            ),
            request_timeout: millis(
                args.request_timeout_ms,
                file.request_timeout_ms,
                DEFAULT_REQUEST_TIMEOUT_MS,
            ),
            max_frame_bytes: args
                .max_frame_bytes
                .or(file.max_frame_bytes)
                .unwrap_or(DEFAULT_MAX_FRAME_BYTES),
            read_repair: args.read_repair.or(file.read_repair).unwrap_or(true),
            storage: args.storage.or(file.storage).unwrap_or(StorageKind::Log),
            sync: args.sync.or(file.sync).unwrap_or(SyncPolicy::Always),
            sync_interval: millis(
                args.sync_interval_ms,
                file.sync_interval_ms,
                DEFAULT_SYNC_INTERVAL_MS,
            ),
            segment_bytes: args
                .segment_bytes
                .or(file.segment_bytes)
                .unwrap_or(DEFAULT_SEGMENT_BYTES),
            compact_dead_ratio: args
                .compact_dead_ratio
                .or(file.compact_dead_ratio)
                .unwrap_or(DEFAULT_COMPACT_DEAD_RATIO),
            hints: args.hints.or(file.hints).unwrap_or(true),
            hint_window: millis(
                args.hint_window_ms,
                file.hint_window_ms,
                DEFAULT_HINT_WINDOW_MS,
            ),
            hint_storage_bytes: args
                .hint_storage_bytes
                .or(file.hint_storage_bytes)
                .unwrap_or(DEFAULT_HINT_STORAGE_BYTES),
            handoff_interval: millis(
                args.handoff_interval_ms,
                file.handoff_interval_ms,
                DEFAULT_HANDOFF_INTERVAL_MS,
            ),
            anti_entropy_interval: millis(
                args.anti_entropy_interval_ms,
                file.anti_entropy_interval_ms,
                DEFAULT_ANTI_ENTROPY_INTERVAL_MS,
            ),
            tombstone_grace: Duration::ZERO,
        };
        // The grace follows a configured hint window unless it is set itself.
        let grace = args.tombstone_grace_ms.or(file.tombstone_grace_ms);
        let default_grace = config.hint_window + Duration::from_secs(60 * 60);
        let config = NodeConfig {
            tombstone_grace: grace.map_or(default_grace, Duration::from_millis),
            ..config
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster.is_empty() || self.node_id.0.is_empty() {
            return Err(invalid("cluster and node id must not be empty"));
        }
        if self.replicas == 0 {
            return Err(invalid("replicas must be at least 1"));
        }
        if self.partitions == 0 || !self.partitions.is_power_of_two() {
            return Err(invalid("partitions must be a power of two"));
        }
        if self.max_frame_bytes < 1024 {
            return Err(invalid("max-frame-bytes must be at least 1024"));
        }
        if self.failure_timeout <= self.heartbeat_interval {
            return Err(invalid(
                "failure-timeout-ms must exceed heartbeat-interval-ms",
            ));
        }
        self.validate_storage()
    }

    fn validate_storage(&self) -> Result<(), ConfigError> {
        if self.sync_interval.is_zero() {
            return Err(invalid("sync-interval-ms must be at least 1"));
        }
        if self.segment_bytes == 0 || self.segment_bytes > MAX_SEGMENT_BYTES {
            return Err(invalid(&format!(
                "segment-bytes must be between 1 and {MAX_SEGMENT_BYTES}"
            )));
        }
        // Written as a negation so that NaN is refused too.
        if !(self.compact_dead_ratio > 0.0 && self.compact_dead_ratio < 1.0) {
            return Err(invalid("compact-dead-ratio must be above 0 and below 1"));
        }
        self.validate_convergence()
    }

    fn validate_convergence(&self) -> Result<(), ConfigError> {
        if self.handoff_interval.is_zero() {
            return Err(invalid("handoff-interval-ms must be at least 1"));
        }
        // A hint may carry a value that a tombstone superseded; purging the tombstone
        // while such a hint can still be delivered would bring the value back.
        // A hint is stored up to a request timeout after the state it carries was read.
        if self.tombstone_grace < self.hint_window + self.request_timeout {
            return Err(invalid(
                "tombstone-grace-ms must be at least hint-window-ms plus request-timeout-ms",
            ));
        }
        Ok(())
    }

    /// N as it applies to keys: never more than the members that exist.
    pub fn effective_replicas(&self) -> usize {
        self.replicas.min(self.members.len())
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

fn parse_peer(text: &str) -> Result<(NodeId, String), ConfigError> {
    match text.split_once('=') {
        Some((id, address)) if !id.is_empty() && address.contains(':') => {
            Ok((NodeId(id.to_owned()), address.to_owned()))
        }
        _ => Err(invalid(&format!("--peer '{text}' is not ID=HOST:PORT"))),
    }
}

fn invalid(message: &str) -> ConfigError {
    ConfigError::Invalid(message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> NodeArgs {
        let base = [
            "quorumkv-node",
            "--node-id",
            "n1",
            "--listen",
            "127.0.0.1:7101",
        ];
        NodeArgs::parse_from(base.iter().chain(extra))
    }

    #[test]
    fn flags_name_every_member_including_this_node() {
        // Goal: peers given as flags plus this node make the member list.
        let config = NodeConfig::load(&args(&["--peer", "n2=127.0.0.1:7102"])).unwrap();
        assert_eq!(config.members.len(), 2);
        assert_eq!(config.members[&NodeId("n1".into())], "127.0.0.1:7101");
        assert_eq!(config.replicas, DEFAULT_REPLICAS);
    }

    #[test]
    fn flags_override_the_file() {
        // Goal: a flag wins over the same setting in the TOML file.
        let dir = std::env::temp_dir().join(format!("quorumkv-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        let toml = "cluster = \"prod\"\nreplicas = 2\n[peers]\nn2 = \"127.0.0.1:7102\"\n";
        std::fs::write(&path, toml).unwrap();

        let path_flag = path.to_str().unwrap();
        let config = NodeConfig::load(&args(&["--config", path_flag, "--replicas", "3"])).unwrap();
        assert_eq!(config.cluster, "prod");
        assert_eq!(config.replicas, 3);
        assert_eq!(config.members.len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        // Goal: a misconfiguration stops the node with a message, not a panic later.
        let error = NodeConfig::load(&args(&["--partitions", "100"])).unwrap_err();
        assert!(error.to_string().contains("power of two"));
        let error = NodeConfig::load(&args(&["--peer", "n2"])).unwrap_err();
        assert!(error.to_string().contains("ID=HOST:PORT"));
        let error = NodeConfig::load(&args(&["--compact-dead-ratio", "1.5"])).unwrap_err();
        assert!(error.to_string().contains("compact-dead-ratio"));
        let short_grace = ["--hint-window-ms", "1000", "--tombstone-grace-ms", "999"];
        let error = NodeConfig::load(&args(&short_grace)).unwrap_err();
        assert!(error.to_string().contains("tombstone-grace-ms"));
    }

    #[test]
    fn the_tombstone_grace_follows_the_hint_window_unless_set() {
        // Goal: shortening the hint window shortens the default grace with it, so a
        // test cluster can purge tombstones soon, while an explicit grace is kept as is.
        let config = NodeConfig::load(&args(&["--hint-window-ms", "5000"])).unwrap();
        assert_eq!(
            config.tombstone_grace,
            Duration::from_millis(5000 + 3_600_000)
        );
        let explicit = ["--hint-window-ms", "5000", "--tombstone-grace-ms", "8000"];
        let config = NodeConfig::load(&args(&explicit)).unwrap();
        assert_eq!(config.tombstone_grace, Duration::from_millis(8000));
        assert!(config.hints);
    }

    #[test]
    fn storage_defaults_to_the_durable_log_and_can_be_set_from_the_file() {
        // Goal: without settings a node keeps every acknowledged write; the file can
        // choose another store and sync policy, and a flag still wins.
        let config = NodeConfig::load(&args(&[])).unwrap();
        assert_eq!(config.storage, StorageKind::Log);
        assert_eq!(config.sync, SyncPolicy::Always);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let toml = "storage = \"memory\"\nsync = \"interval\"\nsync_interval_ms = 5\n";
        std::fs::write(&path, toml).unwrap();
        let path_flag = path.to_str().unwrap();
        let config = NodeConfig::load(&args(&["--config", path_flag, "--sync", "never"])).unwrap();
        assert_eq!(config.storage, StorageKind::Memory);
        assert_eq!(config.sync, SyncPolicy::Never);
        assert_eq!(config.sync_interval, Duration::from_millis(5));
    }
}
